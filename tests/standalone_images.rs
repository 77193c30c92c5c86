//! Images on a real systemd node: an OCI image pulled from a real registry
//! (Debian's `docker-registry`, on the host's loopback, which sandbox
//! nodes share) runs its entrypoint inside its own read-only root with the
//! image's env, working directory and user; a restarted agent keeps the
//! store and re-adopts the pod without restarting it; `unitlet images`,
//! `pull` and `rmi`; garbage collection removes an unused image and keeps
//! a used one. Artifacts over HTTP are in `standalone_artifacts.rs`.

use unitlet_test_support as support;

use support::registry::{self, Layout, Registry};
use support::*;

/// Why this machine cannot run these tests, if it cannot.
fn unable() -> Option<String> {
    let missing = registry::missing_tools();
    (!missing.is_empty()).then(|| format!("{} not installed", missing.join(", ")))
}

macro_rules! require_tools {
    () => {
        if let Some(why) = unable() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn busybox_pod(name: &str, image: &str, args: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: c
    image: {image}
    args: ["{args}"]
"#
    )
}

#[test]
fn an_oci_image_runs_its_entrypoint_in_its_own_read_only_root() {
    require_tools!();
    let reg = Registry::start();
    let layout = Layout::busybox();
    let digest = reg.push(&layout.path(), "v1", "team/busybox", "v1", &[]);
    let image = format!("{}/team/busybox:v1", reg.host());
    let mut node = Node::boot("oci_image");
    // The image's entrypoint is `/bin/sh -c`: args replace its cmd.
    let mut manifest = busybox_pod(
        "bb",
        &image,
        "echo env=$A,$B; echo ids=$(id -u):$(id -g); echo groups=$(id -G); echo pwd=$(pwd); touch /probe 2>/dev/null || echo root=read-only; echo tmp=$(touch /tmp/x && echo writable); echo vol > /data/v && echo volume=$(cat /data/v); echo done; exec sleep 1000",
    );
    // A volume is bound into the image's root.
    manifest.push_str("    volumeMounts: [{name: data, mountPath: /data}]\n  volumes: [{name: data, emptyDir: {}}]\n");
    node.write_manifest("bb.yaml", &manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("bb", "running", |p| running(p, "c"));
    let st = cstatus(&pod, "c");
    assert_eq!(st["image"], image.as_str());
    assert_eq!(
        st["imageID"],
        format!("{}/team/busybox@{digest}", reg.host()).as_str(),
        "{st}"
    );
    let out = node.wait_output("bb", "c", "done");
    for want in [
        "env=1,two",
        "ids=1000:50",
        "groups=50",
        "pwd=/home/app",
        "root=read-only",
        "tmp=writable",
        "volume=vol",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let unit = node.unit_of("default", "bb", "c");
    assert!(node
        .show_value(&unit, "RootDirectory")
        .contains("/images/sha256/"));
    // The emptyDir is the pod's, on the host (fsGroup-less: 0777).
    assert_eq!(
        node.sh("cat /var/lib/unitlet/pods/*/volumes/kubernetes.io~empty-dir/data/v")
            .trim(),
        "vol"
    );
    // Kubernetes' events, as `unitlet pods` has none: the agent logs the pull.
    assert!(
        node.agent_log().contains("pulled image"),
        "{}",
        node.agent_log()
    );

    // A restarted agent finds the image stored and the unit running: same
    // instance, nothing pulled again.
    let pid = node.show_value(&unit, "MainPID");
    node.kill_agent_9();
    node.start_agent_synced(&[]);
    let pod = node.wait_pod("bb", "running after the restart", |p| running(p, "c"));
    assert_eq!(cstatus(&pod, "c")["restartCount"], 0);
    assert_eq!(node.show_value(&unit, "MainPID"), pid);
    let pulls = node.agent_log().matches("pulling image").count();
    assert_eq!(
        pulls,
        1,
        "pulled again after the restart:\n{}",
        node.agent_log()
    );

    // The store from the command line.
    let out = node.unitlet(&["images"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(&image), "{listing}");
    let out = node.unitlet(&["rmi", &image]);
    assert!(!out.status.success(), "rmi of an image in use succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("used by a pod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop_agent();
}

#[test]
fn garbage_collection_removes_unused_images_and_keeps_used_ones() {
    require_tools!();
    let reg = Registry::start();
    let layout = Layout::busybox();
    layout.whiteout();
    reg.push(&layout.path(), "v1", "gc/used", "v1", &[]);
    reg.push(&layout.path(), "v2", "gc/unused", "v2", &[]);
    let used = format!("{}/gc/used:v1", reg.host());
    let unused = format!("{}/gc/unused:v2", reg.host());
    let mut node = Node::boot("image_gc");
    // Pre-pulled, as a rollout would be: `unitlet pull`.
    let out = node.unitlet(&["pull", &unused]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.write_manifest("u.yaml", &busybox_pod("u", &used, "exec sleep 1000"));
    // Every threshold at 0: collect whatever is unused, at once.
    node.start_agent(&[
        "--image-gc-high-threshold",
        "0",
        "--image-gc-low-threshold",
        "0",
        "--image-minimum-gc-age",
        "0s",
        "--image-gc-period",
        "1s",
    ]);
    node.wait_pod("u", "running", |p| running(p, "c"));
    node.wait_for("the unused image removed", default_wait(), || {
        let out = node.unitlet(&["images"]);
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        (!listing.contains(&unused) && listing.contains(&used)).then_some(())
    });
    assert!(node.agent_log().contains("removed unused image"));
    node.stop_agent();
}
