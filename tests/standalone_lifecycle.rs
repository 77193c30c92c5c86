//! Pod lifecycle in a real systemd node: a multi-container pod and its
//! units, init containers, and stopping a pod when its manifest goes away.

use unitlet_test_support as support;

use std::time::{Duration, Instant};
use support::*;

/// Both containers run; status, conditions and IPs are the kubelet's; the
/// units carry the manifest's resources, grace period and environment.
#[test]
fn multi_container_pod_runs_with_manifest_properties() {
    let mut node = Node::boot("multi_container");
    node.write_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: shop}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: server
    image: host
    command: ["/bin/sleep", "infinity"]
    env:
    - {name: GREETING, value: hello}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    resources:
      limits: {cpu: 500m, memory: 64Mi}
  - name: sidecar
    image: host
    command: ["/bin/sh", "-c", "echo sidecar up; exec sleep infinity"]
"#,
    );
    node.start_agent(&["--node-ip", "10.11.12.13"]);
    let pod = node.wait_pod("web", "both containers running", |p| {
        running(p, "server") && running(p, "sidecar")
    });

    assert_eq!(phase(&pod), "Running");
    for c in ["server", "sidecar"] {
        let st = cstatus(&pod, c);
        assert_eq!(st["ready"], true, "{c}: {st}");
        assert_eq!(st["started"], true, "{c}: {st}");
        assert_eq!(st["restartCount"], 0, "{c}: {st}");
        assert_eq!(st["image"], "host");
        assert!(
            st["containerID"]
                .as_str()
                .is_some_and(|id| id.starts_with("systemd://")),
            "{c}: {st}"
        );
    }
    for cond in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
        assert_eq!(condition(&pod, cond), "True", "condition {cond}: {pod}");
    }
    let st = &pod["status"];
    assert_eq!(st["podIP"], "10.11.12.13");
    assert_eq!(st["hostIP"], "10.11.12.13");
    assert_eq!(st["podIPs"][0]["ip"], "10.11.12.13");
    assert_eq!(st["qosClass"], "Burstable");
    assert!(st["startTime"].is_string());
    assert_eq!(pod["spec"]["nodeName"], node.name.as_str());
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );

    // One unit per container, both in the pod's slice.
    let units = node.units("unitlet_*");
    assert_eq!(units.len(), 2, "{units:?}");
    let server = node.unit_of("default", "web", "server");
    let sidecar = node.unit_of("default", "web", "sidecar");
    let p = node.show(
        &server,
        &[
            "Slice",
            "Environment",
            "Type",
            "MemoryMax",
            "CPUQuotaPerSecUSec",
            "TimeoutStopUSec",
            "Description",
            "ActiveState",
            "SubState",
        ],
    );
    assert!(
        p["Slice"].starts_with("unitlet-")
            && p["Slice"][9..].starts_with("-pod")
            && p["Slice"].ends_with(".slice"),
        "{p:?}"
    );
    assert_eq!(p["Type"], "exec");
    assert_eq!(p["MemoryMax"], "67108864");
    assert_eq!(p["CPUQuotaPerSecUSec"], "500ms");
    assert_eq!(p["TimeoutStopUSec"], "5s");
    assert_eq!(p["Description"], "unitlet pod default/web container server");
    assert_eq!(p["Environment"], "HOME=/root GREETING=hello POD=web");
    assert_eq!(
        (p["ActiveState"].as_str(), p["SubState"].as_str()),
        ("active", "running")
    );
    let exec = node.show_value(&server, "ExecStart");
    assert!(
        exec.contains("path=/bin/sleep ; argv[]=/bin/sleep infinity ;"),
        "{exec}"
    );
    let q = node.show(&sidecar, &["Slice", "MemoryMax", "CPUQuotaPerSecUSec"]);
    assert_eq!(
        q["Slice"], p["Slice"],
        "containers of one pod share a slice"
    );
    assert_eq!(q["MemoryMax"], "infinity");
    assert_eq!(q["CPUQuotaPerSecUSec"], "infinity");
    // The slice is a real, active unit (made by systemd implicitly), and
    // the pod's one cgroup holds both containers.
    let slice = node.show(&p["Slice"], &["ActiveState", "ControlGroup"]);
    assert_eq!(slice["ActiveState"], "active");
    for unit in [&server, &sidecar] {
        let cg = node.show_value(unit, "ControlGroup");
        assert_eq!(cg, format!("{}/{unit}", slice["ControlGroup"]), "{unit}");
    }
    node.stop_agent();
}

/// Two init containers run one after the other, both before the app.
#[test]
fn init_containers_run_in_order_before_the_app() {
    let mut node = Node::boot("init_order");
    let trace = node.path("trace");
    node.write_manifest(
        "init.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: init}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: first
    image: host
    command: ["/bin/sh", "-c", "echo first-start >> {trace}; sleep 1; echo first-end >> {trace}"]
  - name: second
    image: host
    command: ["/bin/sh", "-c", "echo second >> {trace}"]
  containers:
  - name: app
    image: host
    command: ["/bin/sh", "-c", "echo app >> {trace}; exec sleep infinity"]
"#
        ),
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("init", "app running", |p| running(p, "app"));
    assert_eq!(
        node.read("trace"),
        "first-start\nfirst-end\nsecond\napp\n",
        "init containers must run one at a time, in order, before the app"
    );
    assert_eq!(phase(&pod), "Running");
    assert_eq!(condition(&pod, "Initialized"), "True");
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(
        inits
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["first", "second"]
    );
    for c in inits {
        let t = &c["state"]["terminated"];
        assert_eq!(t["reason"], "Completed", "{c}");
        assert_eq!(t["exitCode"], 0, "{c}");
        assert_eq!(c["ready"], true, "{c}");
        assert_eq!(c["restartCount"], 0, "{c}");
    }
    // The second started after the first finished.
    let first_done = time_secs(&inits[0]["state"]["terminated"]["finishedAt"]);
    let second_start = time_secs(&inits[1]["state"]["terminated"]["startedAt"]);
    assert!(second_start >= first_done, "{inits:?}");
    node.stop_agent();
}

/// A failing init container under restartPolicy Never fails the pod and the
/// app container never starts.
#[test]
fn failing_init_container_fails_pod_with_never() {
    let mut node = Node::boot("init_fail_never");
    let marker = node.path("app-ran");
    node.write_manifest(
        "init.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: broken}}
spec:
  restartPolicy: Never
  initContainers:
  - {{name: setup, image: host, command: ["/bin/sh", "-c", "exit 7"]}}
  containers:
  - {{name: app, image: host, command: ["/bin/touch", "{marker}"]}}
"#
        ),
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("broken", "phase Failed", |p| phase(p) == "Failed");
    let t = terminated(&pod, "setup");
    assert_eq!(t["exitCode"], 7, "{pod}");
    assert_eq!(t["reason"], "Error", "{pod}");
    assert_eq!(restarts(&pod, "setup"), 0);
    assert_eq!(
        waiting_reason(&pod, "app"),
        Some("PodInitializing"),
        "{pod}"
    );
    assert_eq!(condition(&pod, "Initialized"), "False");
    assert_eq!(condition(&pod, "Ready"), "False");
    // Give a wrong implementation time to start the app anyway.
    std::thread::sleep(Duration::from_secs(3));
    let pod = node.pod("default", "broken").unwrap();
    assert_eq!(phase(&pod), "Failed");
    assert_eq!(restarts(&pod, "setup"), 0, "Never must not retry: {pod}");
    assert!(
        node.units("unitlet_default_broken_app_*").is_empty(),
        "the app's unit must not exist"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the app container ran"
    );
    node.stop_agent();
}

/// Under OnFailure a failing init container is retried (with back-off) and
/// the pod stays Pending.
#[test]
fn failing_init_container_is_retried_with_on_failure() {
    let mut node = Node::boot("init_fail_retry");
    node.write_manifest(
        "init.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: retry}
spec:
  restartPolicy: OnFailure
  initContainers:
  - {name: setup, image: host, command: ["/bin/sh", "-c", "exit 3"]}
  containers:
  - {name: app, image: host, command: ["/bin/sleep", "infinity"]}
"#,
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("retry", "setup restarted at least twice", |p| {
        restarts(p, "setup") >= 2
    });
    assert_eq!(phase(&pod), "Pending", "{pod}");
    let last = &cstatus(&pod, "setup")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{pod}");
    assert_eq!(last["reason"], "Error", "{pod}");
    assert_eq!(
        waiting_reason(&pod, "app"),
        Some("PodInitializing"),
        "{pod}"
    );
    assert!(node.units("unitlet_default_retry_app_*").is_empty());
    node.stop_agent();
}

/// Removing a manifest sends SIGTERM, lets the container finish its trap,
/// then removes the units, the state and the pod.
#[test]
fn removing_manifest_stops_pod_gracefully() {
    let mut node = Node::boot("graceful_stop");
    let log = node.path("term.log");
    node.write_manifest(
        "graceful.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: graceful}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c"]
    args:
    - |
      trap 'echo "got TERM" >> {log}; sleep 2; echo "done" >> {log}; exit 0' TERM
      echo ready >> {log}
      while true; do sleep 0.2; done
"#
        ),
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("graceful", "running", |p| running(p, "c"));
    node.wait_for("the container's trap to be set", default_wait(), || {
        node.read("term.log").contains("ready").then_some(())
    });
    let uid = uid(&pod);
    let unit = node.unit_of("default", "graceful", "c");
    let slice = node.show(&unit, &["Slice"])["Slice"].clone();
    let state_dir = format!("/var/lib/unitlet/pods/{uid}");
    node.sh(&format!("test -d {state_dir}"));

    let t0 = Instant::now();
    node.remove_manifest("graceful.yaml");
    node.wait_pod_gone("default", "graceful");
    let took = t0.elapsed();
    assert_eq!(
        node.read("term.log"),
        "ready\ngot TERM\ndone\n",
        "the SIGTERM trap must run to completion"
    );
    assert!(
        took >= Duration::from_millis(1800),
        "the pod went away before its trap finished ({took:?})"
    );
    assert!(node.units("unitlet_*").is_empty(), "units left behind");
    assert!(
        !node.units("unitlet-?-pod*").contains(&slice),
        "slice {slice} left behind"
    );
    let gone = node.sh_output(&format!("test -e {state_dir}"));
    assert!(!gone.status.success(), "{state_dir} still exists");
    node.wait_log("the agent logging the stop", |l| {
        l["message"] == "pod stopped" && l["uid"] == uid.as_str()
    });
    node.stop_agent();
}

/// A container that ignores SIGTERM is killed once the grace period is over.
#[test]
fn ignored_sigterm_is_followed_by_sigkill_after_grace_period() {
    let mut node = Node::boot("sigkill_after_grace");
    node.write_manifest(
        "stubborn.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "trap '' TERM; echo ignoring; while true; do sleep 0.2; done"]
"#,
    );
    node.start_agent(&[]);
    node.wait_pod("stubborn", "running", |p| running(p, "c"));
    node.wait_logs(&["stubborn"], "ignoring\n");
    let t0 = Instant::now();
    node.remove_manifest("stubborn.yaml");
    node.wait_pod_gone("default", "stubborn");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "stopped before the 3 s grace period ended ({took:?}): was SIGTERM really ignored?"
    );
    assert!(
        took < patient(10),
        "not killed soon after the 3 s grace period ({took:?})"
    );
    assert!(node.units("unitlet_*").is_empty());
    node.stop_agent();
}

/// A manifest whose CPU and memory change is the same pod resized in
/// place (the UID leaves resources out): the unit's limits change, its
/// process stays; any other edit is a new pod, as the kubelet's static pods.
#[test]
fn editing_a_manifests_resources_resizes_the_running_pod_in_place() {
    let mut node = Node::boot("resize_manifest");
    let manifest = |mem: &str, cmd: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: svc}}
spec:
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "{cmd}"]
    resources:
      limits: {{cpu: 250m, memory: {mem}}}
"#
        )
    };
    node.write_manifest("svc.yaml", &manifest("64Mi", "exec sleep 100000"));
    node.start_agent(&[]);
    node.wait_pod("svc", "running", |p| running(p, "c"));
    let unit = node.unit_of("default", "svc", "c");
    let before = node.show(&unit, &["MainPID", "InvocationID", "MemoryMax"]);
    assert_eq!(before["MemoryMax"], (64u64 << 20).to_string());
    node.write_manifest("svc.yaml", &manifest("96Mi", "exec sleep 100000"));
    node.wait_for("the new limit on the unit", default_wait(), || {
        (node.show_value(&unit, "MemoryMax") == (96u64 << 20).to_string()).then_some(())
    });
    let after = node.show(&unit, &["MainPID", "InvocationID"]);
    assert_eq!(after["MainPID"], before["MainPID"], "same process");
    assert_eq!(
        after["InvocationID"], before["InvocationID"],
        "same instance"
    );
    let pod = node.wait_pod("svc", "the new size in the status", |p| {
        cstatus(p, "c")["resources"]["limits"]["memory"] == "96Mi"
    });
    assert_eq!(cstatus(&pod, "c")["restartCount"], 0);
    // Another edit is another pod.
    node.write_manifest("svc.yaml", &manifest("96Mi", "exec sleep 200000"));
    node.wait_for("the old unit gone", default_wait(), || {
        node.units("unitlet_default_svc_c_*.service")
            .iter()
            .all(|u| u != &unit || node.show_value(u, "ActiveState") != "active")
            .then_some(())
    });
}
