//! Faults of the machine under the agent (#15): what breaks must be named,
//! and no running pod may pay for it.

use unitlet_test_support as support;

use support::*;

fn sleeper(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "echo up; exec sleep infinity"]
"#
    )
}

/// The state directory's file system full (a small tmpfs): a new pod is
/// not admitted, the warning names the file and the error, the running
/// pod is untouched, and once there is room again the new pod starts.
#[test]
fn a_full_state_directory_holds_new_pods_and_touches_no_running_one() {
    let mut node = Node::boot("state_enospc");
    node.sh("mkdir -p /var/lib/unitlet && mount -t tmpfs -o size=4m tmpfs /var/lib/unitlet");
    node.write_manifest("a.yaml", &sleeper("a"));
    node.start_agent_synced(&[]);
    node.wait_pod("a", "running", |p| running(p, "c"));
    let unit_a = node.unit_of("default", "a", "c");
    let before = node.identity(&unit_a);

    // Fill it (dd ends with ENOSPC).
    let _ = node.sh_output("dd if=/dev/zero of=/var/lib/unitlet/fill bs=64k");
    node.write_manifest("b.yaml", &sleeper("b"));
    let warning = node.wait_for("a warning about recording b", default_wait(), || {
        node.agent_lines().into_iter().find(|l| {
            l["message"] == "cannot record pod; will retry"
                && l["pod"].as_str().is_some_and(|p| p.ends_with("/b"))
        })
    });
    let error = warning["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/var/lib/unitlet/pods/") && error.contains("No space left on device"),
        "the error names neither the file nor the cause: {warning}"
    );
    // A relist period later: a still runs as it did, b has no unit.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(node.identity(&unit_a), before, "pod a was touched");
    assert!(
        node.units("unitlet_default_b_*").is_empty(),
        "b started without a record"
    );

    node.sh("rm /var/lib/unitlet/fill");
    node.wait_pod("b", "running once there is room", |p| running(p, "c"));
    node.wait_logs(&["b"], "up\n");
    assert_eq!(node.identity(&unit_a), before, "pod a was touched");
    node.stop_agent();
}

/// journald restarted, then stopped and started: pods keep running (same
/// process, same invocation); `logs` answers throughout from the journal
/// files, and output written after a restart is there too (journald keeps
/// its streams across a restart; a stop closes them, so output written
/// by a running process after a stop is lost: systemd's behaviour).
#[test]
fn journald_restarted_or_stopped_leaves_pods_running_and_logs_readable() {
    let mut node = Node::boot("journald_gone");
    node.write_manifest(
        "talker.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
"#,
    );
    node.start_agent_synced(&[]);
    node.wait_pod("talker", "running", |p| running(p, "c"));
    node.wait_output("talker", "c", "tick 3\n");
    let unit = node.unit_of("default", "talker", "c");
    let before = node.identity(&unit);
    let lines = |node: &Node| {
        let (out, err, ok) = node.logs(&["talker"]);
        assert!(ok, "logs failed: {err}");
        out.lines().count()
    };

    node.sh("systemctl restart systemd-journald.service");
    let seen = lines(&node);
    node.wait_for("output after journald's restart", default_wait(), || {
        (lines(&node) >= seen + 5).then_some(())
    });
    assert_eq!(node.identity(&unit), before, "restarted with journald");

    node.sh(
        "systemctl stop systemd-journald.socket systemd-journald-dev-log.socket \
         systemd-journald-audit.socket systemd-journald.service",
    );
    let (out, err, ok) = node.logs(&["talker"]);
    assert!(ok, "logs while journald is stopped: {err}");
    assert!(out.starts_with("tick 1\n"), "{out}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(node.identity(&unit), before, "stopped with journald");
    let pod = node.pod("default", "talker").unwrap();
    assert!(running(&pod, "c"), "{pod}");
    assert_eq!(restarts(&pod, "c"), 0, "{pod}");

    node.sh("systemctl start systemd-journald.socket systemd-journald.service");
    let (out, err, ok) = node.logs(&["talker"]);
    assert!(
        ok && out.starts_with("tick 1\n"),
        "logs after journald came back: {err}\n{out}"
    );
    assert_eq!(node.identity(&unit), before);
    node.stop_agent();
}

/// A pod whose container appends a line to `<dir>/<file>` each time it
/// starts, then runs `then`.
fn counted(name: &str, policy: &str, file: &str, then: &str, dir: &str) -> String {
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
    command: ["/bin/sh", "-c", "echo run >> {dir}/{file}; {then}"]
"#
    )
}

/// The node restarts with its state directory kept (bound from the work
/// directory, as a disk would keep it): the units went with the boot,
/// and each pod follows its restart policy, as the kubelet's pods do after
/// a reboot. An Always pod starts over from its init container, its
/// restart counted, its last state the reboot's (exit 255, Unknown); a
/// Never pod that ran is Failed and does not run twice; an OnFailure pod
/// that had succeeded stays Succeeded; a pod whose manifest was removed
/// while the node was down is not started, and its record goes.
#[test]
fn after_a_reboot_pods_follow_their_restart_policy_and_nothing_stale_runs() {
    let mut node = Node::boot("reboot_kept_state");
    let dir = node.dir.to_string_lossy().into_owned();
    let keep = format!(
        "mkdir -p {dir}/state /var/lib/unitlet && mount --bind {dir}/state /var/lib/unitlet"
    );
    node.sh(&keep);
    node.write_manifest(
        "always.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: always}}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: init
    image: host
    command: ["/bin/sh", "-c", "echo run >> {dir}/init-runs"]
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "echo run >> {dir}/always-runs; exec sleep infinity"]
"#
        ),
    );
    node.write_manifest(
        "never.yaml",
        &counted("never", "Never", "never-runs", "exec sleep infinity", &dir),
    );
    node.write_manifest(
        "done.yaml",
        &counted("done", "OnFailure", "done-runs", "exit 0", &dir),
    );
    node.write_manifest(
        "gone.yaml",
        &counted("gone", "Always", "gone-runs", "exec sleep infinity", &dir),
    );
    node.start_agent_synced(&[]);
    node.wait_pod("always", "running", |p| running(p, "c"));
    node.wait_pod("never", "running", |p| running(p, "c"));
    node.wait_pod("gone", "running", |p| running(p, "c"));
    node.wait_pod("done", "Succeeded", |p| phase(p) == "Succeeded");
    let gone_uid = uid(&node.pod("default", "gone").unwrap());
    let boot = |node: &Node| node.sh("cat /proc/sys/kernel/random/boot_id");
    let first_boot = boot(&node);

    node.reboot();
    node.remove_manifest("gone.yaml");
    assert_ne!(boot(&node), first_boot, "the node kept its boot ID");
    assert!(
        node.units("unitlet_*").is_empty(),
        "units survived the reboot"
    );
    node.sh(&keep);
    node.start_agent_synced(&[]);

    let always = node.wait_pod("always", "running again, counted", |p| {
        running(p, "c") && restarts(p, "c") == 1
    });
    let last = &cstatus(&always, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 255, "{always:#}");
    assert_eq!(last["reason"], "Unknown", "{always:#}");
    assert_eq!(
        node.read("init-runs").lines().count(),
        2,
        "the init container did not run again"
    );
    assert_eq!(node.read("always-runs").lines().count(), 2);

    let never = node.wait_pod("never", "Failed", |p| phase(p) == "Failed");
    let t = terminated(&never, "c");
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(255), Some("Unknown")),
        "{never:#}"
    );

    node.wait_for("gone's record removed", default_wait(), || {
        (!std::path::Path::new(&format!("{dir}/state/pods/{gone_uid}")).exists()).then_some(())
    });
    // A relist period later, nothing else has run.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(phase(&node.pod("default", "done").unwrap()), "Succeeded");
    assert!(
        node.pod("default", "gone").is_none(),
        "the removed pod is listed"
    );
    assert_eq!(
        node.read("never-runs").lines().count(),
        1,
        "a Never pod ran twice"
    );
    assert_eq!(
        node.read("done-runs").lines().count(),
        1,
        "a pod that succeeded ran again"
    );
    assert_eq!(
        node.read("gone-runs").lines().count(),
        1,
        "a removed pod ran again"
    );
    assert!(node.units("unitlet_default_gone_*").is_empty());
}
