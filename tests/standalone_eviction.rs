//! Node-pressure eviction on a real systemd node, with real pressure made
//! inside the sandbox node only: the agent's state directory is a small
//! tmpfs mounted in the node, and a pod fills its emptyDir until
//! `nodefs.available` falls below the threshold. That pod is evicted
//! (Failed/Evicted in `unitlet pods`, its units stopped, its emptyDir
//! gone); a quiet pod and a critical static pod (which ranks first, being
//! the only one above its request) keep running, also after an agent
//! restart.

use unitlet_test_support as support;

use support::*;

/// The node's state directory: a 64 MiB tmpfs, so 30% free is 19.2 MiB.
const STATE_TMPFS_MIB: u64 = 64;

#[test]
fn a_pod_filling_the_node_file_system_is_evicted_and_the_others_keep_running() {
    let mut node = Node::boot("eviction_nodefs");
    node.sh(&format!(
        "mkdir -p /var/lib/unitlet && mount -t tmpfs -o size={STATE_TMPFS_MIB}m tmpfs /var/lib/unitlet"
    ));
    // The critical pod writes 20 MiB at once and has no request: it is the
    // only pod above its request, so it ranks first, and must be skipped.
    node.write_manifest(
        "critical.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: critical}
spec:
  priorityClassName: system-node-critical
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "head -c 20971520 /dev/zero > /data/blob && exec sleep infinity"]
    volumeMounts: [{name: data, mountPath: /data}]
"#,
    );
    node.write_manifest(
        "quiet.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: quiet}
spec:
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "echo hello > /data/note && exec sleep infinity"]
    resources: {requests: {ephemeral-storage: 1Gi}}
    volumeMounts: [{name: data, mountPath: /data}]
"#,
    );
    node.start_agent_synced(&[
        "--eviction-hard",
        "nodefs.available<30%",
        "--eviction-monitoring-interval",
        "1s",
    ]);
    node.wait_pod("critical", "running with its 20 MiB", |p| running(p, "c"));
    node.wait_pod("quiet", "running", |p| running(p, "c"));
    // Give the critical pod's write time to land, then check no pressure yet.
    node.wait_for("the critical pod's blob", default_wait(), || {
        let out = node.sh("du -sm /var/lib/unitlet/pods | cut -f1");
        (out.trim().parse::<u64>().unwrap_or(0) >= 20).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(phase(&node.pod("default", "quiet").unwrap()), "Running");
    // The filler writes 1 MiB every 100 ms, up to 30 MiB: 50 of 64 MiB.
    node.write_manifest(
        "filler.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: filler}
spec:
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "for i in $(seq 30); do head -c 1048576 /dev/zero > /data/f$i; sleep 0.1; done; exec sleep infinity"]
    resources: {requests: {ephemeral-storage: 1Gi}}
    volumeMounts: [{name: data, mountPath: /data}]
"#,
    );
    let filler_unit = node.unit_of("default", "filler", "c");
    let evicted = node.wait_pod_in("default", "filler", "Failed/Evicted", patient(60), |p| {
        phase(p) == "Failed" && p["status"]["reason"] == "Evicted"
    });
    let message = evicted["status"]["message"].as_str().unwrap();
    assert!(
        message
            .starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: "),
        "{message}"
    );
    let dt = evicted["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionTarget")
        .expect("DisruptionTarget condition");
    assert_eq!(dt["reason"], "TerminationByKubelet");
    assert_eq!(dt["message"], message);
    // Its container stops (SIGKILL after the hard eviction's 1 s, at 2 s
    // the earliest) and its emptyDir is removed.
    // (A unit stays loaded, `active (exited)` or `failed`, to keep the
    // container's exit for its status: no process runs.)
    node.wait_for("the filler's unit to stop", default_wait(), || {
        let u = node.show(&filler_unit, &["SubState", "MainPID"]);
        (u["SubState"] != "running" && u["MainPID"] == "0").then_some(())
    });
    node.wait_pod("filler", "its container terminated", |p| {
        terminated(p, "c").is_object()
    });
    let filler_uid = uid(&evicted);
    node.wait_for("the filler's emptyDir to go", default_wait(), || {
        node.sh_output(&format!(
            "test -e /var/lib/unitlet/pods/{filler_uid}/volumes/kubernetes.io~empty-dir/data"
        ))
        .status
        .success()
        .then_none()
    });
    node.wait_log("the eviction logged", |l| {
        l["message"] == "evicting pod" && l["pod"] == "default/filler"
    });
    // The space is back: nobody else is evicted.
    std::thread::sleep(std::time::Duration::from_secs(4));
    for name in ["quiet", "critical"] {
        let p = node.pod("default", name).unwrap();
        assert_eq!(phase(&p), "Running", "{name}: {p}");
        assert!(running(&p, "c"), "{name}: {p}");
    }
    let lines = node.agent_lines();
    let evictions: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "evicting pod")
        .collect();
    assert_eq!(evictions.len(), 1, "one eviction: {evictions:?}");
    // A restarted agent never starts the evicted pod again.
    node.kill_agent_9();
    node.start_agent_synced(&[
        "--eviction-hard",
        "nodefs.available<30%",
        "--eviction-monitoring-interval",
        "1s",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let p = node.pod("default", "filler").unwrap();
    assert_eq!(phase(&p), "Failed");
    assert_eq!(p["status"]["reason"], "Evicted");
    assert_ne!(node.show_value(&filler_unit, "SubState"), "running");
    assert_eq!(restarts(&p, "c"), 0);
    assert_eq!(phase(&node.pod("default", "quiet").unwrap()), "Running");
}

/// Memory pressure, real but bounded: the threshold is set 1 GiB below
/// what the node has available when the agent starts (`MemTotal` minus the
/// node's own control group's working set, as the agent computes it), and
/// a pod then holds 2 GiB (on a host with 24 GiB). It is evicted with the kubelet's memory
/// message naming its container; the quiet pod keeps running.
#[test]
fn a_pod_taking_the_nodes_memory_is_evicted() {
    let mut node = Node::boot("eviction_memory");
    let out = node.sh("u=$(cat /sys/fs/cgroup/memory/memory.usage_in_bytes); \
         i=$(sed -n 's/^total_inactive_file //p' /sys/fs/cgroup/memory/memory.stat); \
         t=$(sed -n 's/^MemTotal: *//p' /proc/meminfo); t=${t% kB}; \
         echo $((t*1024-u+i))");
    let available: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("the node's available memory: {out:?}: {e}"));
    // Memory is the host's, shared with whatever else runs (other tests'
    // nodes, builds): the margin must dwarf that noise, and the hog must
    // take twice the margin.
    let threshold = format!("memory.available<{}Ki", (available - (1 << 30)) / 1024);
    node.write_manifest(
        "quiet.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec:\n  containers:\n  - {name: c, image: host, command: [sleep, infinity]}\n",
    );
    node.start_agent_synced(&[
        "--eviction-hard",
        &threshold,
        "--eviction-monitoring-interval",
        "1s",
    ]);
    node.wait_pod("quiet", "running", |p| running(p, "c"));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        !node
            .agent_lines()
            .iter()
            .any(|l| l["message"] == "evicting pod"),
        "no pressure before the hog: {threshold}"
    );
    node.write_manifest(
        "hog.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: c
    image: host
    command: ["python3", "-c", "import time\nb = bytearray(2 << 30)\nb[::4096] = b'x' * (len(b) // 4096)\ntime.sleep(100000)"]
"#,
    );
    let evicted = node.wait_pod_in("default", "hog", "Failed/Evicted", patient(60), |p| {
        phase(p) == "Failed" && p["status"]["reason"] == "Evicted"
    });
    let message = evicted["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains("Container c was using ")
            && message.ends_with(", request is 0, has larger consumption of memory. "),
        "{message}"
    );
    let unit = node.unit_of("default", "hog", "c");
    node.wait_for("the hog's process gone", default_wait(), || {
        (node.show_value(&unit, "MainPID") == "0").then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let quiet = node.pod("default", "quiet").unwrap();
    assert_eq!(phase(&quiet), "Running", "{quiet}");
    let evictions = node
        .agent_lines()
        .iter()
        .filter(|l| l["message"] == "evicting pod")
        .count();
    assert_eq!(evictions, 1);
}

/// `bool::then_none`: `Some(())` when false.
trait ThenNone {
    fn then_none(self) -> Option<()>;
}

impl ThenNone for bool {
    fn then_none(self) -> Option<()> {
        (!self).then_some(())
    }
}
