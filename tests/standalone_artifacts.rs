//! Artifacts on a real systemd node, from a real HTTP server on the
//! host's loopback (sandbox nodes share the host's network): a release
//! archive runs its binary from the read-only tree; a hundred pods of one
//! uncached artifact cause one download; a Debian package runs the command
//! of the unit file it ships; a wrong digest, a 404, a `../` entry and a
//! symlink out of the tree are refused with the reason, and nothing runs.

use unitlet_test_support as support;

use serde_json::Value;
use std::time::Duration;
use support::artifacts::{sha256, tar_gz, ArtifactServer};
use support::*;

/// The release archive of a "Go service": its binary (a script here, run
/// by the host's shell: the host stays visible) and its config.
fn release() -> Vec<u8> {
    tar_gz(&[
        (
            "bin/svc",
            b"#!/bin/sh\necho \"svc $* in $(pwd)\"\ncat conf/svc.conf\necho started\nexec sleep 1000\n",
        ),
        ("conf/svc.conf", b"listen=:8080\n"),
    ])
}

fn pod(name: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: c
    image: "{image}"
    command: [bin/svc]
    args: ["--port", "8080"]
"#
    )
}

/// A tar.gz with one raw entry: `name` as written (no checks), a regular
/// file or, with `link`, a symlink to it.
fn raw_tar_gz(name: &str, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    if link.is_some() {
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
    } else {
        h.set_size(3);
    }
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    if link.is_none() {
        let mut block = [0u8; 512];
        block[..3].copy_from_slice(b"hi\n");
        raw.extend_from_slice(&block);
    }
    raw.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

fn waiting(p: &Value) -> (String, String) {
    let w = &cstatus(p, "c")["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or("").to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn a_release_archive_runs_its_binary_from_the_read_only_tree() {
    let server = ArtifactServer::start();
    let archive = release();
    let digest = sha256(&archive);
    server.put("/svc-1.4.2-linux-amd64.tar.gz", archive);
    // The server answers slowly: every pod asks while the one download runs.
    server.delay("/svc-1.4.2-linux-amd64.tar.gz", Duration::from_millis(500));
    let url = format!("{}@{digest}", server.url("/svc-1.4.2-linux-amd64.tar.gz"));
    let mut node = Node::boot("artifact");
    for i in 0..100 {
        node.write_manifest(&format!("p{i}.yaml"), &pod(&format!("p{i}"), &url));
    }
    node.start_agent(&[]);
    let p = node.wait_pod("p0", "running", |p| running(p, "c"));
    let out = node.wait_output("p0", "c", "started");
    assert!(
        out.contains("svc --port 8080 in /run/unitlet/image"),
        "{out}"
    );
    assert!(out.contains("listen=:8080"), "{out}");
    let id = cstatus(&p, "c")["imageID"].as_str().unwrap().to_string();
    assert_eq!(
        id,
        format!("{}@{digest}", server.url("/svc-1.4.2-linux-amd64.tar.gz"))
    );
    node.wait_for("all 100 pods running", patient(120), || {
        let pods = node.pods();
        (pods.len() == 100 && pods.iter().all(|p| running(p, "c"))).then_some(())
    });
    assert_eq!(
        server.requests("/svc-1.4.2-linux-amd64.tar.gz"),
        1,
        "100 pods of one image, one download"
    );
    // The tree is read-only to the container.
    let unit = node.unit_of("default", "p0", "c");
    let pid = node.show_value(&unit, "MainPID");
    let touch = node.sh(&format!(
        "nsenter -t {pid} -m sh -c 'touch /run/unitlet/image/x 2>&1 || echo read-only'"
    ));
    assert!(touch.contains("read-only"), "{touch}");
    node.stop_agent();
}

#[test]
fn bad_artifacts_are_refused_with_the_reason_and_nothing_runs() {
    let server = ArtifactServer::start();
    let good = release();
    server.put("/good.tar.gz", good);
    let wrong = "sha256:".to_string() + &"0".repeat(64);
    server.put("/dotdot.tar.gz", raw_tar_gz("../escape", None));
    server.put("/link.tar.gz", raw_tar_gz("etc", Some("/etc")));
    let mut node = Node::boot("bad_artifacts");
    let cases = [
        (
            "mismatch",
            format!("{}@{wrong}", server.url("/good.tar.gz")),
            "digest mismatch",
        ),
        ("missing", server.url("/nope.tar.gz"), "404 Not Found"),
        (
            "dotdot",
            server.url("/dotdot.tar.gz"),
            "'..' would leave the tree",
        ),
        ("link", server.url("/link.tar.gz"), "\"etc\""),
    ];
    for (name, url, _) in &cases {
        node.write_manifest(&format!("{name}.yaml"), &pod(name, url));
    }
    node.start_agent(&[]);
    for (name, url, why) in &cases {
        let p = node.wait_pod(name, "an image pull error", |p| {
            matches!(waiting(p).0.as_str(), "ErrImagePull" | "ImagePullBackOff")
        });
        let (_, message) = waiting(&p);
        assert!(message.contains(why), "{name}: {message}");
        let bare = url.split('@').next().unwrap();
        assert!(
            message.contains(bare),
            "{name}: the message names the image: {message}"
        );
        assert_eq!(phase(&p), "Pending");
    }
    // Nothing half-written stayed in the store.
    let left = node.sh("ls -A /var/lib/unitlet/images/tmp /var/lib/unitlet/images/sha256 | grep -v ':$' | grep -v '^$' || true");
    assert_eq!(left.trim(), "", "left in the store: {left}");
    node.stop_agent();
}

#[test]
fn a_debian_package_runs_the_command_of_the_unit_it_ships() {
    if std::process::Command::new("dpkg-deb")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: dpkg-deb not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pkg");
    for d in ["DEBIAN", "usr/bin", "lib/systemd/system"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: hello-svc\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: test\n",
    )
    .unwrap();
    std::fs::write(
        root.join("usr/bin/hello-svc"),
        "#!/bin/sh\necho \"hello-svc $*\"\nexec sleep 1000\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("usr/bin/hello-svc"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        root.join("lib/systemd/system/hello-svc.service"),
        "[Service]\nExecStart=/usr/bin/hello-svc --from \"the unit\"\n",
    )
    .unwrap();
    let deb = dir.path().join("hello-svc_1.0_all.deb");
    let st = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let server = ArtifactServer::start();
    server.put("/hello-svc_1.0_all.deb", std::fs::read(&deb).unwrap());
    let mut node = Node::boot("deb");
    node.write_manifest(
        "h.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: h}}\nspec:\n  containers:\n  - {{name: c, image: \"{}\"}}\n",
            server.url("/hello-svc_1.0_all.deb")
        ),
    );
    node.start_agent(&[]);
    node.wait_pod("h", "running", |p| running(p, "c"));
    let out = node.wait_output("h", "c", "hello-svc");
    assert!(out.contains("hello-svc --from the unit"), "{out}");
    // Nothing was installed on the host.
    assert!(!node
        .sh("ls /usr/bin/hello-svc 2>&1 || true")
        .contains("/usr/bin/hello-svc\n"));
    node.stop_agent();
}

#[test]
fn an_image_volume_mounts_an_artifact_read_only_with_sub_path() {
    let server = ArtifactServer::start();
    server.put(
        "/tools.tar.gz",
        tar_gz(&[
            ("bin/tool", b"#!/bin/sh\necho tool $*\n"),
            ("share/motd", b"hello from the image volume\n"),
        ]),
    );
    let mut node = Node::boot("image_volume");
    node.write_manifest(
        "v.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: v}}
spec:
  volumes:
  - name: tools
    image: {{reference: "{url}", pullPolicy: IfNotPresent}}
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "/opt/tools/bin/tool run; cat /opt/motd; touch /opt/tools/x 2>/dev/null || echo read-only; echo done; exec sleep 1000"]
    volumeMounts:
    - {{name: tools, mountPath: /opt/tools}}
    - {{name: tools, mountPath: /opt/motd, subPath: share/motd}}
"#,
            url = server.url("/tools.tar.gz")
        ),
    );
    node.start_agent(&[]);
    node.wait_pod("v", "running", |p| running(p, "c"));
    let out = node.wait_output("v", "c", "done");
    for want in ["tool run", "hello from the image volume", "read-only"] {
        assert!(out.contains(want), "{want} in {out}");
    }
    node.stop_agent();
}
