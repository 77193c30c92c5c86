//! Lifecycle hooks run by the agent: postStart after the container
//! started, preStop before it gets SIGTERM; a failing postStart kills the
//! container, which its restart policy then restarts.

use unitlet_test_support as support;

use support::*;

#[test]
fn post_start_runs_and_pre_stop_runs_before_sigterm() {
    let mut node = Node::boot("hooks_order");
    let dir = node.path("");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: c
    image: host
    command: [/bin/sh, -c, 'trap "if [ -e {dir}/prestop ]; then echo seen > {dir}/term; else echo unseen > {dir}/term; fi; exit 0" TERM; while :; do sleep 0.1; done']
    env: [{{name: WHO, value: hooked}}]
    lifecycle:
      postStart:
        exec: {{command: [/bin/sh, -c, 'echo $WHO > {dir}/poststart']}}
      preStop:
        exec: {{command: [/bin/sh, -c, 'sleep 1; touch {dir}/prestop']}}
"#
    );
    node.write_manifest("web.yaml", &manifest);
    node.start_agent(&[]);
    node.wait_pod("web", "running", |p| running(p, "c"));
    node.wait_file("the postStart hook's file", "poststart");
    assert_eq!(
        node.read("poststart"),
        "hooked\n",
        "run with the container's env"
    );
    node.remove_manifest("web.yaml");
    node.wait_file("the container's SIGTERM handler", "term");
    assert_eq!(
        node.read("term"),
        "seen\n",
        "preStop finished before SIGTERM"
    );
    node.stop_agent();
}

#[test]
fn failing_post_start_kills_and_restarts_the_container() {
    let mut node = Node::boot("hooks_post_start_fails");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: [/bin/sleep, infinity]
    lifecycle:
      postStart:
        httpGet: {port: 1, path: /}
"#;
    node.write_manifest("web.yaml", manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("web", "restarted after its postStart hook failed", |p| {
        restarts(p, "c") >= 1
    });
    assert!(
        !cstatus(&pod, "c")["lastState"]["terminated"].is_null(),
        "{pod}"
    );
    let log = node.agent_log();
    assert!(log.contains("postStart hook failed"), "{log}");
    node.stop_agent();
}
