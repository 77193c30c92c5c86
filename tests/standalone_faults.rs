//! Faults of the machine under the agent (#15): what breaks must be named,
//! and no running pod may pay for it.

use unitlet_test_support as support;

use support::*;

fn sleeper(name: &str) -> String {
    shell_pod(name, "Always", "echo up; exec sleep infinity")
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
        error.contains("/var/lib/unitlet/pods/")
            && error.contains("/pod.json:")
            && error.contains("No space left on device"),
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
    let room = std::time::Instant::now();
    node.wait_pod("b", "running once there is room", |p| running(p, "c"));
    let converged_s = room.elapsed().as_secs_f64();
    node.wait_logs(&["b"], "up\n");
    let f = FaultFigures {
        fault: "state directory full (ENOSPC) while a pod is added".into(),
        injected: 1,
        pods: 2,
        lost: ["a", "b"]
            .iter()
            .filter(|p| !node.pod("default", p).is_some_and(|p| running(&p, "c")))
            .count(),
        duplicated: ["a", "b"]
            .iter()
            .filter(|p| node.units(&format!("unitlet_default_{p}_c_*")).len() > 1)
            .count(),
        restarted: usize::from(node.identity(&unit_a) != before),
        converged_s,
    };
    report_fault(&f);
    assert_eq!((f.lost, f.duplicated, f.restarted), (0, 0, 0), "{f:?}");
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
    let back = std::time::Instant::now();
    let (out, err, ok) = node.logs(&["talker"]);
    assert!(
        ok && out.starts_with("tick 1\n"),
        "logs after journald came back: {err}\n{out}"
    );
    let pod = node.pod("default", "talker").unwrap();
    let f = FaultFigures {
        fault: "journald restarted, then stopped and started".into(),
        injected: 2,
        pods: 1,
        lost: usize::from(!running(&pod, "c")),
        duplicated: usize::from(node.units("unitlet_default_talker_c_*").len() > 1),
        restarted: usize::from(node.identity(&unit) != before)
            + restarts(&pod, "c").max(0) as usize,
        converged_s: back.elapsed().as_secs_f64(),
    };
    report_fault(&f);
    assert_eq!((f.lost, f.duplicated, f.restarted), (0, 0, 0), "{f:?}");
    node.stop_agent();
}

/// A pod whose container appends a line to `<dir>/<file>` each time it
/// starts, then runs `then`.
fn counted(name: &str, policy: &str, file: &str, then: &str, dir: &str) -> String {
    shell_pod(name, policy, &format!("echo run >> {dir}/{file}; {then}"))
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
    let booted = std::time::Instant::now();
    node.start_agent_synced(&[]);

    let always = node.wait_pod("always", "running again, counted", |p| {
        running(p, "c") && restarts(p, "c") == 1
    });
    node.wait_pod("never", "Failed", |p| phase(p) == "Failed");
    let converged_s = booted.elapsed().as_secs_f64();
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
    let runs = |f: &str| node.read(f).lines().count();
    let f = FaultFigures {
        fault: "node rebooted, state directory kept (4 pods: Always, Never, OnFailure done, removed meanwhile)".into(),
        injected: 1,
        pods: 4,
        // (asserted above: each 0; counted here from the same observations)
        lost: usize::from(!running(&always, "c")),
        duplicated: ["always", "never", "done"]
            .iter()
            .filter(|p| node.units(&format!("unitlet_default_{p}_c_*")).len() > 1)
            .count(),
        restarted: runs("never-runs") - 1 + runs("done-runs") - 1 + runs("gone-runs") - 1,
        converged_s,
    };
    report_fault(&f);
    assert_eq!((f.lost, f.duplicated, f.restarted), (0, 0, 0), "{f:?}");
}

// ----- faults during a burst of pods -----

/// `n` pods `b-000`…, each one `sleep` whose argument (1,000,000 + its
/// number) tells its processes apart from every other pod's.
fn write_burst(node: &Node, n: usize) {
    for i in 0..n {
        node.write_manifest(
            &format!("b-{i:03}.yaml"),
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: b-{i:03}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sleep", "{}"]
"#,
                1_000_000 + i
            ),
        );
    }
}

/// The burst's units systemd shows running now: unit → invocation ID.
fn running_units(node: &Node) -> std::collections::BTreeMap<String, String> {
    let units = node.units("unitlet_default_b-*");
    if units.is_empty() {
        return Default::default();
    }
    let out = node.sh(&format!(
        "systemctl show -p Id,InvocationID,SubState {}",
        units.join(" ")
    ));
    let mut map = std::collections::BTreeMap::new();
    for block in out.split("\n\n") {
        let kv: std::collections::HashMap<&str, &str> =
            block.lines().filter_map(|l| l.split_once('=')).collect();
        if kv.get("SubState") == Some(&"running") {
            map.insert(kv["Id"].to_string(), kv["InvocationID"].to_string());
        }
    }
    map
}

/// What a burst came to once the faults are over: waits until every one
/// of the `n` pods is Running and Ready, then counts lost and duplicated
/// pods (by their processes) and units restarted without cause (a unit
/// seen running at a fault now shows another invocation, or a restart was
/// counted).
fn burst_outcome(
    node: &Node,
    n: usize,
    seen: &std::collections::BTreeMap<String, String>,
    fault: String,
    injected: usize,
    last_fault: std::time::Instant,
) -> FaultFigures {
    let ready = |p: &serde_json::Value| running(p, "c") && condition(p, "Ready") == "True";
    node.wait_for(
        "every pod of the burst Running and Ready",
        patient(180),
        || {
            let pods = node.pods();
            (pods.iter().filter(|p| ready(p)).count() == n).then_some(())
        },
    );
    let converged_s = last_fault.elapsed().as_secs_f64();
    let pods = node.pods();
    let now = running_units(node);
    let ps = node.sh("ps -eo args=");
    let mut instances = vec![0usize; n];
    for line in ps.lines() {
        if let Some(i) = line
            .strip_prefix("/bin/sleep 1")
            .and_then(|x| x.parse::<usize>().ok())
            .filter(|i| *i < n)
        {
            instances[i] += 1;
        }
    }
    let restarted_units = seen
        .iter()
        .filter(|(unit, inv)| now.get(*unit) != Some(*inv))
        .count();
    let counted: usize = pods.iter().map(|p| restarts(p, "c").max(0) as usize).sum();
    FaultFigures {
        fault,
        injected,
        pods: n,
        lost: instances.iter().filter(|c| **c == 0).count(),
        duplicated: instances.iter().filter(|c| **c > 1).count(),
        restarted: restarted_units.max(counted),
        converged_s,
    }
}

/// How many units of the burst systemd has been asked to create so far
/// (their transient unit files), read from the host without a call into
/// the node, so that faults can hit the burst where it is.
fn created(node: &Node) -> usize {
    let dir = format!("/proc/{}/root/run/systemd/transient", node.sandbox_pid());
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("unitlet_default_b-")
                })
                .count()
        })
        .unwrap_or(0)
}

/// `count` distinct random points of a burst of `n`, in order: when this
/// many of its units have been created, a fault hits.
fn fault_points(rng: &mut FaultRng, n: usize, count: usize) -> Vec<usize> {
    let mut points = std::collections::BTreeSet::new();
    while points.len() < count {
        points.insert(rng.between(1, n as u64) as usize);
    }
    points.into_iter().collect()
}

/// Waits until at least `point` units of the burst were created (or the
/// burst stopped growing for 30 s); returns how many there are.
fn reach(node: &Node, point: usize) -> usize {
    let deadline = std::time::Instant::now() + patient(30);
    loop {
        let c = created(node);
        if c >= point || std::time::Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `kill -9` of the agent at 10 random points of a 500-pod burst, each
/// followed at once by a new agent: afterwards exactly one instance of
/// every pod runs, none is missing, no unit that was running at a kill was
/// restarted, no restart is counted, and every pod is Ready.
#[test]
fn a_burst_survives_kill_9_at_ten_random_points() {
    const N: usize = 500;
    let mut node = Node::boot("burst_kill_9");
    let mut rng = FaultRng::new("burst_kill_9");
    write_burst(&node, N);
    let mut seen = std::collections::BTreeMap::new();
    let mut hit = Vec::new();
    node.start_agent(&[]);
    for point in fault_points(&mut rng, N, 10) {
        hit.push(reach(&node, point));
        node.kill_agent_9();
        // What runs now was started by the dead agent: it must stay.
        for (unit, inv) in running_units(&node) {
            seen.entry(unit).or_insert(inv);
        }
        node.start_agent(&[]);
    }
    let last = std::time::Instant::now();
    let f = burst_outcome(
        &node,
        N,
        &seen,
        format!("kill -9 of the agent in a {N}-pod burst (units created at the kills: {hit:?})"),
        hit.len(),
        last,
    );
    report_fault(&f);
    assert!(
        hit.iter().collect::<std::collections::HashSet<_>>().len() >= 5,
        "the kills did not hit the burst at different points: {hit:?}"
    );
    assert_eq!((f.lost, f.duplicated, f.restarted), (0, 0, 0), "{f:?}");
}

/// `daemon-reload`, `daemon-reexec` and a restart of dbus-daemon at random
/// points of a 300-pod burst: the agent reconnects and subscribes again;
/// afterwards every pod runs once, none was restarted, every one is Ready.
#[test]
fn a_burst_survives_daemon_reload_reexec_and_a_dbus_restart() {
    const N: usize = 300;
    let mut node = Node::boot("burst_reexec");
    let mut rng = FaultRng::new("burst_reexec");
    write_burst(&node, N);
    let mut seen = std::collections::BTreeMap::new();
    let mut hit = Vec::new();
    node.start_agent(&[]);
    let faults = [
        "systemctl daemon-reload",
        "systemctl daemon-reexec",
        "systemctl restart dbus",
        "systemctl daemon-reload",
        "systemctl daemon-reexec",
    ];
    for (cmd, point) in faults.iter().zip(fault_points(&mut rng, N, faults.len())) {
        hit.push(reach(&node, point));
        node.sh(cmd);
        for (unit, inv) in running_units(&node) {
            seen.entry(unit).or_insert(inv);
        }
    }
    let last = std::time::Instant::now();
    let f = burst_outcome(
        &node,
        N,
        &seen,
        format!(
            "daemon-reload, daemon-reexec, dbus restart in a {N}-pod burst (units created then: {hit:?})"
        ),
        faults.len(),
        last,
    );
    report_fault(&f);
    assert_eq!((f.lost, f.duplicated, f.restarted), (0, 0, 0), "{f:?}");
    // The agent that lived through it all is the one that started.
    assert!(node.agent_alive(), "the agent exited");
}
