//! The agent is disposable: `kill -9` leaves pods running, status works
//! without it, a new agent adopts what runs (same processes, same
//! invocations) and catches up on what changed meanwhile, and units named
//! like unitlet's that no admitted pod owns are stopped.

use unitlet_test_support as support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

/// A pod `name` with one `sleep` container `c` and an environment value.
fn sleeper(name: &str, value: &str) -> String {
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
    command: ["/bin/sh", "-c", "echo \"V=$V\"; exec sleep infinity"]
    env: [{{name: V, value: "{value}"}}]
"#
    )
}

/// Three running pods survive `kill -9` of the agent untouched; a new agent
/// adopts them without restarting anything and still applies changes.
#[test]
fn kill_9_then_restart_adopts_running_pods() {
    let mut node = Node::boot("kill9_adopt");
    let counter = node.path("count");
    node.write_manifest("a.yaml", &sleeper("a", "one"));
    node.write_manifest("b.yaml", &sleeper("b", "one"));
    // c restarted once before the kill: its bookkeeping must survive too.
    node.write_manifest(
        "c.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: c}}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 1 ] && exec sleep infinity; exit 5"]
"#
        ),
    );
    node.start_agent_synced(&[]);
    for name in ["a", "b"] {
        node.wait_pod(name, "running", |p| running(p, "c"));
    }
    node.wait_pod("c", "running after one restart", |p| {
        running(p, "c") && restarts(p, "c") == 1
    });
    let before: BTreeMap<&str, (String, String)> = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n, node.identity(&node.unit_of("default", n, "c"))))
        .collect();
    let uids: BTreeMap<&str, String> = ["a", "b", "c"]
        .into_iter()
        .map(|n| (n, uid(&node.pod("default", n).unwrap())))
        .collect();

    node.kill_agent_9();
    // Status needs no agent.
    let pods = node.pods();
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(phase(p), "Running", "{p}");
        assert!(running(p, "c"), "{p}");
        assert_eq!(cstatus(p, "c")["ready"], true, "{p}");
    }
    let c = node.pod("default", "c").unwrap();
    assert_eq!(restarts(&c, "c"), 1);
    assert_eq!(cstatus(&c, "c")["lastState"]["terminated"]["exitCode"], 5);
    // Logs need no agent either.
    assert_eq!(node.logs(&["a"]).0, "V=one\n");

    node.start_agent_synced(&[]);
    let synced = node
        .agent_lines()
        .into_iter()
        .find(|l| l["message"] == "initial sync complete")
        .unwrap();
    assert_eq!(
        synced["pods"], 3,
        "the new agent adopts three pods: {synced}"
    );
    for (name, id) in &before {
        let unit = node.unit_of("default", name, "c");
        assert_eq!(
            &node.identity(&unit),
            id,
            "pod {name} was restarted by the new agent"
        );
    }
    // A relist period later, still nothing restarted and the status is unchanged.
    std::thread::sleep(Duration::from_secs(3));
    for (name, id) in &before {
        let unit = node.unit_of("default", name, "c");
        assert_eq!(&node.identity(&unit), id, "pod {name} restarted later");
        let p = node.pod("default", name).unwrap();
        assert_eq!(uid(&p), uids[name]);
        assert_eq!(restarts(&p, "c"), if *name == "c" { 1 } else { 0 }, "{p}");
    }
    assert_eq!(node.read("count"), "2\n", "c ran again");

    // The new agent still applies changes.
    let old_unit = node.unit_of("default", "a", "c");
    node.write_manifest("a.yaml", &sleeper("a", "two"));
    let p = node.wait_pod("a", "recreated with the new manifest", |p| {
        uid(p) != uids["a"] && running(p, "c")
    });
    assert_eq!(restarts(&p, "c"), 0);
    node.wait_logs(&["a"], "V=two\n");
    let new_unit = node.unit_of("default", "a", "c");
    assert_ne!(new_unit, old_unit);
    assert!(node.units(&old_unit).is_empty(), "{old_unit} still loaded");
    assert_eq!(
        node.identity(&node.unit_of("default", "b", "c")),
        before["b"],
        "an unrelated pod was touched"
    );
    node.stop_agent();
}

/// What changed while no agent ran is applied by the next one: a removed
/// manifest stops its pod, an added one starts, an edited one is recreated.
#[test]
fn changes_made_while_the_agent_is_down_are_applied_on_restart() {
    let mut node = Node::boot("changes_while_down");
    node.write_manifest("gone.yaml", &sleeper("gone", "x"));
    node.write_manifest("kept.yaml", &sleeper("kept", "x"));
    node.write_manifest("edited.yaml", &sleeper("edited", "old"));
    node.start_agent_synced(&[]);
    for name in ["gone", "kept", "edited"] {
        node.wait_pod(name, "running", |p| running(p, "c"));
    }
    let gone = node.pod("default", "gone").unwrap();
    let edited_uid = uid(&node.pod("default", "edited").unwrap());
    let kept = node.identity(&node.unit_of("default", "kept", "c"));
    node.stop_agent(); // SIGTERM: pods keep running
    assert!(node
        .agent_lines()
        .iter()
        .any(|l| l["message"] == "unitlet stopping; pods keep running"));
    node.remove_manifest("gone.yaml");
    node.write_manifest("new.yaml", &sleeper("new", "x"));
    node.write_manifest("edited.yaml", &sleeper("edited", "new"));
    // Nothing happens without an agent.
    std::thread::sleep(Duration::from_secs(1));
    assert!(node
        .pod("default", "gone")
        .is_some_and(|p| running(&p, "c")));
    assert!(node.pod("default", "new").is_none());

    node.start_agent_synced(&[]);
    node.wait_pod_gone("default", "gone");
    assert!(node.units("unitlet_default_gone_*").is_empty());
    let gone_dir = format!("/var/lib/unitlet/pods/{}", uid(&gone));
    assert!(!node
        .sh_output(&format!("test -e {gone_dir}"))
        .status
        .success());
    node.wait_pod("new", "running", |p| running(p, "c"));
    node.wait_pod("edited", "recreated", |p| {
        uid(p) != edited_uid && running(p, "c")
    });
    node.wait_logs(&["edited"], "V=new\n");
    assert_eq!(node.identity(&node.unit_of("default", "kept", "c")), kept);
    assert_eq!(node.pods().len(), 3);
    node.stop_agent();
}

/// A `systemctl daemon-reload` (which package managers run all the time)
/// reloads transient units from the files systemd wrote for them, and
/// systemd before 254 reads `$` and `;` of ExecStart back altered: a
/// container must still restart with exactly its manifest's command, which
/// here is a shell line full of both.
#[test]
fn containers_still_restart_after_daemon_reload() {
    let mut node = Node::boot("daemon_reload");
    node.write_manifest(
        "r.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: r}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "echo \"V=$V\"; exec sleep infinity"]
    env: [{name: V, value: kept}]
"#,
    );
    node.start_agent_synced(&[]);
    node.wait_pod("r", "running", |p| running(p, "c"));
    node.wait_logs(&["r"], "V=kept\n");
    let unit = node.unit_of("default", "r", "c");
    let (_, inv) = node.identity(&unit);
    node.sh("systemctl daemon-reload");
    node.sh(&format!("systemctl kill --signal=KILL '{unit}'"));
    let p = node.wait_pod("r", "restarted after the reload", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    assert_eq!(cstatus(&p, "c")["lastState"]["terminated"]["exitCode"], 137);
    let (_, new_inv) = node.identity(&unit);
    assert_ne!(new_inv, inv);
    node.wait_logs(&["r"], "V=kept\n");
    node.wait_logs(&["r", "--previous"], "V=kept\n");
    assert_eq!(node.show(&unit, &["LoadState"])["LoadState"], "loaded");
    node.stop_agent();
}

/// Units named like unitlet's that no admitted pod owns are stopped at startup.
#[test]
fn orphaned_units_are_stopped_at_startup() {
    let mut node = Node::boot("orphans");
    node.sh(
        "systemd-run --quiet --unit unitlet_default_ghost_c_000000000000.service /bin/sleep 1000",
    );
    node.sh(
        "systemd-run --quiet --unit unitlet_default_ghost2_c_000000000000.service \
         --slice unitlet-0-pod000000000000.slice /bin/sleep 1000",
    );
    // Not unitlet's: must be left alone.
    node.sh("systemd-run --quiet --unit bystander.service /bin/sleep 1000");
    assert_eq!(
        node.units("unitlet_*"),
        [
            "unitlet_default_ghost2_c_000000000000.service",
            "unitlet_default_ghost_c_000000000000.service"
        ]
    );
    assert_eq!(
        node.units("unitlet-?-pod*"),
        ["unitlet-0-pod000000000000.slice"]
    );
    node.write_manifest("real.yaml", &sleeper("real", "x"));
    node.start_agent_synced(&[]);
    for unit in [
        "unitlet_default_ghost_c_000000000000.service",
        "unitlet_default_ghost2_c_000000000000.service",
        "unitlet-0-pod000000000000.slice",
    ] {
        node.wait_log(&format!("the agent stopping {unit}"), |l| {
            l["message"] == "stopping orphaned unit: no admitted pod owns it" && l["unit"] == unit
        });
    }
    node.wait_for("the orphans to be gone", default_wait(), || {
        let left: Vec<String> = node
            .units("unitlet*")
            .into_iter()
            .filter(|u| u.contains("000000000000"))
            .collect();
        left.is_empty().then_some(())
    });
    assert_eq!(
        node.show("bystander.service", &["ActiveState"])["ActiveState"],
        "active"
    );
    // The real pod is unaffected, and the orphans never show as pods.
    node.wait_pod("real", "running", |p| running(p, "c"));
    assert_eq!(node.pods().len(), 1);
    // Bucket slices are shared, never orphans: the orphan's bucket is still
    // active, as is the real pod's.
    let real_slice = node.show(&node.unit_of("default", "real", "c"), &["Slice"])["Slice"].clone();
    let real_bucket = format!("{}.slice", &real_slice[..real_slice.rfind('-').unwrap()]);
    for bucket in ["unitlet-0.slice", real_bucket.as_str()] {
        assert_eq!(
            node.show(bucket, &["ActiveState"])["ActiveState"],
            "active",
            "{bucket}"
        );
    }
    node.stop_agent();
}

/// `unitlet pods` asks the running agent (its socket answers from memory,
/// root only) and reads systemd itself without one: both say the same.
#[test]
fn pods_answers_the_same_from_the_agent_and_without_it() {
    let mut node = Node::boot("pods_socket");
    node.write_manifest("a.yaml", &sleeper("a", "one"));
    node.write_manifest("b.yaml", &sleeper("b", "two"));
    node.start_agent_synced(&[]);
    for name in ["a", "b"] {
        node.wait_pod(name, "running", |p| running(p, "c"));
    }
    assert_eq!(
        node.sh("stat -c %a /var/lib/unitlet/agent.sock").trim(),
        "600"
    );
    let key = |p: &serde_json::Value| {
        let c = cstatus(p, "c");
        (
            p["metadata"]["name"].to_string(),
            phase(p).to_string(),
            c["ready"].clone(),
            c["restartCount"].clone(),
            c["state"].clone(),
            c["containerID"].clone(),
            p["status"]["startTime"].clone(),
        )
    };
    let from_agent: Vec<_> = node.pods().iter().map(key).collect();
    node.stop_agent();
    let from_systemd: Vec<_> = node.pods().iter().map(key).collect();
    assert_eq!(from_agent.len(), 2);
    assert_eq!(from_agent, from_systemd);
}

/// systemd re-executed (package upgrades of systemd run `daemon-reexec`)
/// and the bus daemon restarted under the agent: the agent connects again
/// where its connection closed, reads every unit afresh and goes on.
/// Nothing is restarted by either, and signals and calls work after both.
#[test]
fn the_agent_survives_daemon_reexec_and_a_bus_restart_without_restarting_anything() {
    let mut node = Node::boot("daemon_reexec");
    node.write_manifest("kept.yaml", &sleeper("kept", "x"));
    node.start_agent_synced(&[]);
    node.wait_pod("kept", "running", |p| running(p, "c"));
    let unit = node.unit_of("default", "kept", "c");
    let before = node.identity(&unit);
    node.sh("systemctl daemon-reexec");
    // systemd numbers its messages anew on its new connection: the agent
    // hears it join the bus again and stops comparing with the old numbers.
    node.wait_log("the agent seeing systemd join the bus anew", |l| {
        l["message"] == "systemd joined the bus anew; reading every unit again"
    });
    node.sh("systemctl restart dbus.service");
    node.wait_log("the agent connecting to systemd again", |l| {
        l["message"] == "connected to systemd again"
    });
    assert_eq!(node.identity(&unit), before, "nothing was restarted");
    // Signals arrive on the new connection: a crash is seen and restarted.
    node.sh(&format!("systemctl kill --signal=KILL '{unit}'"));
    node.wait_pod("kept", "restarted after the crash", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    // Calls work on it: a new pod starts.
    node.write_manifest("new.yaml", &sleeper("new", "y"));
    node.wait_pod("new", "running", |p| running(p, "c"));
    node.stop_agent();
}

/// A damaged pod record (cut short, or not JSON at all) found at startup
/// is named in the log and touches nothing: the pod's unit keeps running
/// (not stopped as an orphan, not started again), and the pod is recorded
/// anew from its manifest.
#[test]
fn a_damaged_pod_record_leaves_its_pod_running_and_is_recorded_anew() {
    let mut node = Node::boot("damaged_record");
    node.write_manifest("a.yaml", &sleeper("a", "one"));
    node.write_manifest("b.yaml", &sleeper("b", "one"));
    node.start_agent_synced(&[]);
    for name in ["a", "b"] {
        node.wait_pod(name, "running", |p| running(p, "c"));
    }
    let before: BTreeMap<&str, (String, String)> = ["a", "b"]
        .into_iter()
        .map(|n| (n, node.identity(&node.unit_of("default", n, "c"))))
        .collect();
    let files: BTreeMap<&str, String> = ["a", "b"]
        .into_iter()
        .map(|n| {
            let uid = uid(&node.pod("default", n).unwrap());
            (n, format!("/var/lib/unitlet/pods/{uid}/pod.json"))
        })
        .collect();

    node.kill_agent_9();
    node.sh(&format!(
        "head -c 100 {0} > {0}.cut && mv {0}.cut {0}",
        files["a"]
    ));
    node.sh(&format!("printf garbage > {}", files["b"]));
    node.start_agent_synced(&[]);

    let lines = node.agent_lines();
    for (name, file) in &files {
        assert!(
            lines.iter().any(|l| l["file"] == file.as_str()
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("pod record unreadable"))),
            "no warning names {file} (pod {name}):\n{lines:#?}"
        );
    }
    for (name, file) in &files {
        node.wait_for(
            &format!("{name}'s record rewritten"),
            default_wait(),
            || {
                let text = node.sh_output(&format!("cat {file}")).stdout;
                serde_json::from_slice::<serde_json::Value>(&text)
                    .ok()
                    .filter(|v| v["pod"]["metadata"]["name"] == *name)
            },
        );
    }
    // A relist period later, still nothing restarted.
    std::thread::sleep(Duration::from_secs(3));
    for (name, id) in &before {
        let unit = node.unit_of("default", name, "c");
        assert_eq!(&node.identity(&unit), id, "pod {name} was restarted");
        let p = node.pod("default", name).unwrap();
        assert!(running(&p, "c"), "{p}");
        assert_eq!(restarts(&p, "c"), 0, "{p}");
    }
    assert_eq!(node.logs(&["a"]).0, "V=one\n");
    node.stop_agent();
}
