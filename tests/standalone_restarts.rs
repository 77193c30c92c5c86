//! Restart policies, the crash-loop back-off, and how container exits
//! (codes, signals, a program that cannot start) show in the status.

use unitlet_test_support as support;

use std::time::Duration;
use support::*;

/// A script that counts its runs in `counter`, exits with `first_exit` on
/// the first run and keeps running afterwards.
fn exit_once_then_run(counter: &str, first_exit: i32) -> String {
    format!(
        "n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; \
         if [ \"$n\" -ge 1 ]; then exec sleep infinity; fi; exit {first_exit}"
    )
}

/// Always: a clean exit is restarted too; the pod stays Running.
#[test]
fn always_restarts_a_clean_exit() {
    let mut node = Node::boot("always_clean_exit");
    let counter = node.path("count");
    node.write_manifest(
        "p.yaml",
        &shell_pod("p", "Always", &exit_once_then_run(&counter, 0)),
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("p", "running again after one restart", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    assert_eq!(phase(&pod), "Running");
    assert_eq!(cstatus(&pod, "c")["ready"], true);
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 0, "{pod}");
    assert_eq!(last["reason"], "Completed", "{pod}");
    assert_ne!(
        last["containerID"],
        cstatus(&pod, "c")["containerID"],
        "a restart is a new instance"
    );
    assert_eq!(node.read("count"), "2\n");
    node.stop_agent();
}

/// OnFailure: exit 0 completes the pod (Succeeded) and nothing restarts.
#[test]
fn on_failure_clean_exit_succeeds() {
    let mut node = Node::boot("onfailure_success");
    node.write_manifest("p.yaml", &shell_pod("p", "OnFailure", "echo hi; exit 0"));
    node.start_agent(&[]);
    let pod = node.wait_pod("p", "Succeeded", |p| phase(p) == "Succeeded");
    let t = terminated(&pod, "c");
    assert_eq!(t["exitCode"], 0, "{pod}");
    assert_eq!(t["reason"], "Completed", "{pod}");
    assert_eq!(cstatus(&pod, "c")["ready"], false);
    assert_eq!(condition(&pod, "Ready"), "False");
    // Nothing restarts later either.
    std::thread::sleep(Duration::from_secs(3));
    let pod = node.pod("default", "p").unwrap();
    assert_eq!(phase(&pod), "Succeeded", "{pod}");
    assert_eq!(restarts(&pod, "c"), 0, "{pod}");
    node.stop_agent();
}

/// OnFailure: a failing exit is restarted and shows as lastState.
#[test]
fn on_failure_restarts_a_failure() {
    let mut node = Node::boot("onfailure_failure");
    let counter = node.path("count");
    node.write_manifest(
        "p.yaml",
        &shell_pod("p", "OnFailure", &exit_once_then_run(&counter, 3)),
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("p", "running after one restart", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    assert_eq!(phase(&pod), "Running");
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{pod}");
    assert_eq!(last["reason"], "Error", "{pod}");
    assert!(last["signal"].is_null(), "{pod}");
    node.stop_agent();
}

/// Never: a failure stays a failure.
#[test]
fn never_does_not_restart_a_failure() {
    let mut node = Node::boot("never_failure");
    node.write_manifest("p.yaml", &shell_pod("p", "Never", "exit 3"));
    node.start_agent(&[]);
    let pod = node.wait_pod("p", "Failed", |p| phase(p) == "Failed");
    let t = terminated(&pod, "c");
    assert_eq!(t["exitCode"], 3, "{pod}");
    assert_eq!(t["reason"], "Error", "{pod}");
    assert_eq!(restarts(&pod, "c"), 0);
    std::thread::sleep(Duration::from_secs(3));
    let pod = node.pod("default", "p").unwrap();
    assert_eq!(phase(&pod), "Failed");
    assert_eq!(restarts(&pod, "c"), 0, "Never restarted: {pod}");
    node.stop_agent();
}

/// A container that fails at once goes into CrashLoopBackOff, and the
/// restarts follow the kubelet's back-off (first at once, then base,
/// doubling up to max: here 0 s, 1 s, 2 s, 4 s, 4 s).
#[test]
fn crash_loop_back_off_doubles_up_to_the_cap() {
    let mut node = Node::boot("crash_loop");
    let starts = node.path("starts");
    node.write_manifest(
        "crash.yaml",
        &shell_pod(
            "crash",
            "Always",
            &format!("date +%s.%N >> {starts}; echo crashing; exit 1"),
        ),
    );
    node.start_agent(&[]);
    let expected = [0.0, 1.0, 2.0, 4.0, 4.0];
    let mut saw_backoff = None;
    let mut counts = vec![];
    let times = node.wait_for("six starts of the crashing container", patient(60), || {
        if let Some(pod) = node.pod("default", "crash") {
            let st = cstatus(&pod, "c");
            if st["state"]["waiting"]["reason"] == "CrashLoopBackOff" && saw_backoff.is_none() {
                saw_backoff = Some(st.clone());
            }
            counts.push(restarts(&pod, "c"));
        }
        let times: Vec<f64> = node
            .read("starts")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        (times.len() > expected.len()).then_some(times)
    });
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between starts: {gaps:.3?} (expected {expected:?})");
    for (i, (gap, want)) in gaps.iter().zip(expected).enumerate() {
        assert!(
            *gap >= 0.8 * want && *gap < want + 2.0,
            "restart {} came {gap:.2} s after the previous start; expected about {want} s (all gaps: {gaps:.2?})",
            i + 1
        );
    }

    let st = saw_backoff.expect("the status never showed CrashLoopBackOff");
    let msg = st["state"]["waiting"]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with("back-off ")
            && msg.contains("restarting failed container=c pod=crash_default("),
        "{st}"
    );
    assert_eq!(st["ready"], false);
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 1, "{st}");
    assert_eq!(st["lastState"]["terminated"]["reason"], "Error", "{st}");
    // restartCount only ever grows, and reached at least the number of restarts seen.
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let pod = node.wait_pod("crash", "restartCount catching up", |p| {
        restarts(p, "c") >= expected.len() as i64
    });
    assert_eq!(phase(&pod), "Running", "crash-looping pods stay Running");
    assert!(node
        .agent_lines()
        .iter()
        .any(|l| l["message"] == "back-off restarting failed container" && l["delay_ms"] == 4000));
    node.stop_agent();
}

/// Exit codes and signals as the kubelet reports them; a program that
/// cannot be executed is a StartError, never Completed or Running.
#[test]
fn exit_codes_signals_and_start_errors() {
    let mut node = Node::boot("exit_codes");
    node.write_manifest(
        "exits.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: exits}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  # "$$$$": Kubernetes turns "$$" into "$", so the shell sees "$$" (its own PID).
  - {name: term, image: host, command: ["/bin/sh", "-c", "kill -TERM $$$$"]}
  - {name: kill, image: host, command: ["/bin/sh", "-c", "kill -KILL $$$$"]}
  - {name: code, image: host, command: ["/bin/sh", "-c", "exit 42"]}
  - {name: missing, image: host, command: ["/no/such/program", "arg"]}
"#,
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("exits", "every container terminated", |p| {
        ["term", "kill", "code", "missing"]
            .iter()
            .all(|c| terminated(p, c).is_object())
    });
    let term = terminated(&pod, "term");
    assert_eq!(
        (term["exitCode"].as_i64(), term["signal"].as_i64()),
        (Some(143), Some(15)),
        "{pod}"
    );
    assert_eq!(term["reason"], "Error");
    let kill = terminated(&pod, "kill");
    assert_eq!(
        (kill["exitCode"].as_i64(), kill["signal"].as_i64()),
        (Some(137), Some(9)),
        "{pod}"
    );
    assert_eq!(kill["reason"], "Error");
    let code = terminated(&pod, "code");
    assert_eq!(
        (code["exitCode"].as_i64(), code["signal"].as_i64()),
        (Some(42), None),
        "{pod}"
    );
    assert_eq!(code["reason"], "Error");
    let missing = terminated(&pod, "missing");
    assert_eq!(missing["reason"], "StartError", "{pod}");
    assert_eq!(missing["exitCode"], 128, "{pod}");
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("EXEC")),
        "{pod}"
    );
    assert_eq!(phase(&pod), "Failed");
    for c in ["term", "kill", "code", "missing"] {
        assert_eq!(restarts(&pod, c), 0, "{c}");
        assert_eq!(cstatus(&pod, c)["ready"], false, "{c}");
    }
    node.stop_agent();
}
