//! Garbage collection on a real systemd node: an ended pod gives its units
//! back to systemd (no failed unit left to degrade the host) and keeps its
//! status and logs; a crash-looping container keeps one unit and one
//! previous instance; a removed manifest takes the pod's directory and
//! volumes with it; units named as unitlet's that no pod owns are stopped
//! and named in the log, as are pod directories without a pod. Running
//! pods are never touched.

use unitlet_test_support as support;

use support::*;

fn pod(name: &str, policy: &str, script: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", {script}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes: [{{name: scratch, emptyDir: {{}}}}]
"#
    )
}

#[test]
fn ended_pods_give_their_units_back_and_keep_status_and_logs() {
    let mut node = Node::boot("gc_ended");
    node.write_manifest(
        "job.yaml",
        &pod("job", "OnFailure", "echo job-done; exit 0"),
    );
    node.write_manifest("bad.yaml", &pod("bad", "Never", "echo bad-output; exit 3"));
    node.write_manifest("web.yaml", &pod("web", "Always", "exec sleep 1000"));
    node.start_agent(&[]);
    let web = node.unit_of("default", "web", "c");
    node.wait_pod("web", "running", |p| running(p, "c"));
    let before = node.identity(&web);
    node.wait_pod("job", "Succeeded", |p| phase(p) == "Succeeded");
    node.wait_pod("bad", "Failed", |p| phase(p) == "Failed");
    // The ended pods' units are unloaded: none left failed or exited.
    node.wait_for("the ended pods' units collected", default_wait(), || {
        let left: Vec<String> = node
            .units("unitlet_*")
            .into_iter()
            .filter(|u| u.contains("_job_") || u.contains("_bad_"))
            .collect();
        left.is_empty().then_some(())
    });
    let failed = node.sh("systemctl list-units --failed --all --no-legend --plain 'unitlet*'");
    assert!(failed.trim().is_empty(), "failed units left: {failed}");
    // Status and logs come from the records and the journal now.
    let job = node.pod("default", "job").unwrap();
    assert_eq!(phase(&job), "Succeeded");
    assert_eq!(terminated(&job, "c")["exitCode"], 0, "{job}");
    let bad = node.pod("default", "bad").unwrap();
    assert_eq!(phase(&bad), "Failed");
    let t = terminated(&bad, "c");
    assert_eq!(t["exitCode"], 3, "{bad}");
    assert_eq!(t["reason"], "Error", "{bad}");
    let (out, err, ok) = node.logs(&["bad"]);
    assert!(
        ok && out.contains("bad-output"),
        "logs of a collected container: {out} {err}"
    );
    let (out, err, ok) = node.logs(&["job"]);
    assert!(ok && out.contains("job-done"), "{out} {err}");
    // Nothing ran again and the running pod was not touched.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(restarts(&node.pod("default", "bad").unwrap(), "c"), 0);
    assert_eq!(node.identity(&web), before, "the running pod was touched");
    // A restarted agent keeps it so: no unit comes back.
    node.kill_agent_9();
    node.start_agent_synced(&[]);
    assert!(
        node.units("unitlet_*").iter().all(|u| !u.contains("_bad_")),
        "a collected unit came back"
    );
    assert_eq!(phase(&node.pod("default", "bad").unwrap()), "Failed");
    assert_eq!(node.identity(&web), before, "the running pod was touched");
    // The manifest gone, so are the pod's directory and its volumes.
    let uid = uid(&node.pod("default", "bad").unwrap());
    let dir = format!("/var/lib/unitlet/pods/{uid}");
    assert_eq!(node.sh(&format!("test -d {dir} && echo yes")), "yes\n");
    node.remove_manifest("bad.yaml");
    node.wait_pod_gone("default", "bad");
    node.wait_for("the pod directory removed", default_wait(), || {
        node.sh_output(&format!("test -e {dir}"))
            .status
            .code()
            .filter(|&c| c == 1)
    });
    assert_eq!(node.identity(&web), before, "the running pod was touched");
    node.stop_agent();
}

#[test]
fn a_crash_looping_container_keeps_one_unit_and_one_previous_instance() {
    let mut node = Node::boot("gc_crashloop");
    let counter = node.path("runs");
    node.write_manifest(
        "loop.yaml",
        &pod(
            "loop",
            "Always",
            &format!(
                "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; \
                 echo run-$n; if [ $n -ge 4 ]; then exec sleep 1000; fi; exit 1"
            ),
        ),
    );
    node.start_agent(&[]);
    let p = node.wait_pod("loop", "running after three restarts", |p| {
        restarts(p, "c") == 3 && running(p, "c")
    });
    // One unit for the container, ever (re-created at each restart).
    let units = node.units("unitlet_default_loop_*");
    assert_eq!(units.len(), 1, "{units:?}");
    // Exactly one previous instance: the third run, not the older ones.
    let (prev, err, ok) = node.logs(&["loop", "--previous"]);
    assert!(ok, "{err}");
    assert!(prev.contains("run-3"), "{prev}");
    assert!(!prev.contains("run-2") && !prev.contains("run-1"), "{prev}");
    let (cur, _, _) = node.logs(&["loop"]);
    assert!(cur.contains("run-4") && !cur.contains("run-3"), "{cur}");
    assert_eq!(
        cstatus(&p, "c")["lastState"]["terminated"]["exitCode"],
        1,
        "{p}"
    );
    node.stop_agent();
}

#[test]
fn orphaned_units_and_pod_directories_are_removed_and_named() {
    let mut node = Node::boot("gc_orphans");
    // A pod directory with no pod.json (an agent killed while forgetting
    // the pod), with a volume's data in it.
    let stale = "/var/lib/unitlet/pods/0badc0de-0000-4000-8000-000000000000";
    node.sh(&format!("mkdir -p {stale}/volumes/kubernetes.io~empty-dir/x && echo data > {stale}/volumes/kubernetes.io~empty-dir/x/f"));
    node.write_manifest("web.yaml", &pod("web", "Always", "exec sleep 1000"));
    node.start_agent(&[]);
    let web = node.unit_of("default", "web", "c");
    node.wait_pod("web", "running", |p| running(p, "c"));
    let before = node.identity(&web);
    node.wait_log("the stale directory named", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("pod directory no pod owns"))
            && l["dir"].as_str() == Some(stale)
    });
    assert_eq!(node.sh(&format!("test -e {stale} || echo gone")), "gone\n");
    // A unit named as unitlet's units are, that no pod owns, started
    // behind the agent's back: stopped at the next relist, and named.
    let ghost = "unitlet_default_ghost_c_0123456789ab.service";
    node.sh(&format!(
        "systemd-run --quiet --unit {ghost} /bin/sleep 1000"
    ));
    assert_eq!(node.show_value(ghost, "ActiveState"), "active");
    node.wait_log("the orphan named", |l| {
        l["unit"].as_str() == Some(ghost)
            && l["message"] == "stopping orphaned unit: no admitted pod owns it"
    });
    node.wait_for("the orphan stopped", default_wait(), || {
        (node.show_value(ghost, "ActiveState") != "active").then_some(())
    });
    assert_eq!(node.identity(&web), before, "the running pod was touched");
    node.stop_agent();
}
