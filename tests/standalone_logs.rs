//! `unitlet logs`: a container instance's journal lines, with kubectl's
//! options (`-c`, `--tail`, `--timestamps`, `--previous`, `-f`).

use unitlet_test_support as support;

use std::time::Duration;
use support::*;

/// Whether `line` starts with a kubelet-style timestamp and a space:
/// `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ ` (fixed width, nanoseconds).
fn has_timestamp_prefix(line: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd:dd.dddddddddZ ";
    line.len() > pattern.len()
        && line.bytes().zip(pattern.bytes()).all(|(c, p)| {
            if p == b'd' {
                c.is_ascii_digit()
            } else {
                c == p
            }
        })
}

/// Plain, `--tail`, `--timestamps`, `-c` and the default container.
#[test]
fn logs_show_stdout_and_stderr_with_tail_timestamps_and_container() {
    let mut node = Node::boot("logs_basic");
    node.write_manifest(
        "talk.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talk}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - {name: prep, image: host, command: ["/bin/sh", "-c", "echo preparing"]}
  containers:
  - name: main
    image: host
    command: ["/bin/sh", "-c", "echo out1; echo err1 >&2; echo 'out 2  spaced'; exec sleep infinity"]
  - name: side
    image: host
    command: ["/bin/sh", "-c", "echo side says hi; exec sleep infinity"]
"#,
    );
    node.start_agent(&[]);
    node.wait_pod("talk", "running", |p| {
        running(p, "main") && running(p, "side")
    });

    let all = node.wait_logs(&["talk", "-c", "main"], "out1\nerr1\nout 2  spaced\n");
    assert_eq!(all.lines().count(), 3);

    let (out, err, ok) = node.logs(&["talk", "-c", "main", "--tail", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "err1\nout 2  spaced\n");

    let (out, err, ok) = node.logs(&["talk", "-c", "main", "--timestamps"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (line, want) in lines.iter().zip(["out1", "err1", "out 2  spaced"]) {
        assert!(has_timestamp_prefix(line), "no timestamp: {line:?}");
        assert_eq!(&line[31..], want);
    }
    // The timestamps are the journal's, close to now.
    let first = format!("\"{}\"", &lines[0][..30]);
    let t = time_secs(&serde_json::from_str(&first).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - t).abs() < 120.0, "timestamp {first} is far from now");

    let (out, _, ok) = node.logs(&["talk", "-c", "side"]);
    assert!(ok);
    assert_eq!(out, "side says hi\n");
    let (out, _, ok) = node.logs(&["talk", "-c", "prep"]);
    assert!(ok);
    assert_eq!(out, "preparing\n", "init container logs");

    // Without -c: the first app container, with kubectl's notice on stderr.
    let (out, err, ok) = node.logs(&["talk"]);
    assert!(ok);
    assert_eq!(out, "out1\nerr1\nout 2  spaced\n");
    assert!(
        err.contains("Defaulted container \"main\" out of: main, side"),
        "{err}"
    );

    // Errors name what is wrong.
    let (_, err, ok) = node.logs(&["talk", "-c", "nope"]);
    assert!(!ok);
    assert!(err.contains("container \"nope\" is not valid"), "{err}");
    let (_, err, ok) = node.logs(&["nosuchpod"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    node.stop_agent();
}

/// `--previous` shows exactly the instance before the current one.
#[test]
fn logs_previous_shows_the_previous_instance_only() {
    let mut node = Node::boot("logs_previous");
    let counter = node.path("attempts");
    node.write_manifest(
        "count.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: count}}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c"]
    args:
    - |
      n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
      echo "attempt $n"
      if [ $n -lt 3 ]; then exit 1; fi
      echo "staying up"
      exec sleep infinity
"#
        ),
    );
    node.start_agent(&[]);
    node.wait_pod("count", "third attempt running", |p| {
        restarts(p, "c") == 2 && running(p, "c")
    });
    node.wait_logs(&["count"], "attempt 3\nstaying up\n");
    node.wait_logs(&["count", "--previous"], "attempt 2\n");
    let (out, _, ok) = node.logs(&["count", "-p", "--timestamps"]);
    assert!(ok);
    assert!(has_timestamp_prefix(&out), "{out}");
    assert!(out.ends_with(" attempt 2\n"), "{out}");
    node.stop_agent();
}

/// Output read by journald after its process has exited is still the
/// container's: journald may then tag the lines with the unit and PID but
/// no invocation ID, so logs must not select by invocation ID alone.
/// Pausing journald while a container fails and is restarted makes that
/// deterministic (under load it happens by itself to short-lived containers).
#[test]
fn logs_read_by_journald_after_the_process_exited() {
    let mut node = Node::boot("logs_after_exit");
    let counter = node.path("attempts");
    node.start_agent_synced(&[]);
    let journald = node.sh("systemctl show -p MainPID --value systemd-journald");
    let journald = journald.trim().to_string();
    node.sh(&format!("kill -STOP {journald}"));
    node.write_manifest(
        "quick.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: quick}}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", "n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; echo attempt $n; echo err $n >&2; [ $n -ge 2 ] && exec sleep infinity; exit 1"]
"#
        ),
    );
    let paused = node.wait_pod("quick", "the second attempt running", |p| {
        restarts(p, "c") == 1 && running(p, "c")
    });
    node.sh(&format!("kill -CONT {journald}"));
    assert_eq!(phase(&paused), "Running");
    node.wait_logs(&["quick", "--previous"], "attempt 1\nerr 1\n");
    node.wait_logs(&["quick"], "attempt 2\nerr 2\n");
    node.stop_agent();
}

/// `--previous` for a container that never restarted is an error.
#[test]
fn logs_previous_without_a_restart_fails() {
    let mut node = Node::boot("logs_no_previous");
    node.write_manifest(
        "once.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - {name: c, image: host, command: ["/bin/sh", "-c", "echo only; exec sleep infinity"]}
"#,
    );
    node.start_agent(&[]);
    node.wait_pod("once", "running", |p| running(p, "c"));
    node.wait_logs(&["once"], "only\n");
    let (out, err, ok) = node.logs(&["once", "--previous"]);
    assert!(!ok, "--previous succeeded: {out}");
    assert_eq!(out, "");
    assert!(
        err.contains("previous terminated container \"c\" in pod \"once\" not found"),
        "{err}"
    );
    node.stop_agent();
}

/// `-f` streams and returns by itself once the container exits.
#[test]
fn logs_follow_returns_when_the_container_exits() {
    let mut node = Node::boot("logs_follow");
    let go = node.path("go");
    node.write_manifest(
        "follow.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: follow}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c"]
    args:
    - |
      echo one
      while [ ! -e {go} ]; do sleep 0.1; done
      sleep 2
      echo two
      exit 0
"#
        ),
    );
    node.start_agent(&[]);
    node.wait_pod("follow", "running", |p| running(p, "c"));
    node.wait_logs(&["follow"], "one\n");
    let mut cmd = node.command(bin());
    cmd.args(["logs", "-f", "follow"]);
    std::fs::write(&go, "").unwrap();
    let t0 = std::time::Instant::now();
    let out = output_within(cmd, patient(20)).unwrap_or_else(|| {
        panic!(
            "logs -f did not return after the container exited\n{}",
            node.diagnostics()
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "logs -f returned before the container was done ({:?})",
        t0.elapsed()
    );
    let pod = node.wait_pod("follow", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(terminated(&pod, "c")["exitCode"], 0);
    // On a finished container, -f just prints and returns.
    let mut cmd = node.command(bin());
    cmd.args(["logs", "-f", "follow"]);
    let out = output_within(cmd, patient(10)).expect("logs -f on an exited container hung");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    node.stop_agent();
}
