//! Native sidecars: init containers with `restartPolicy: Always` start
//! before the rest, keep running, count for readiness, do not hold the pod
//! up once its regular containers are done, and stop after them.

use unitlet_test_support as support;

use support::*;

#[test]
fn sidecar_runs_beside_the_app_and_stops_after_it() {
    let mut node = Node::boot("sidecar_order");
    let dir = node.path("");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 10
  initContainers:
  - name: proxy
    image: host
    restartPolicy: Always
    command: [/bin/sh, -c, 'trap "if [ -e {dir}/app-term ]; then echo after > {dir}/proxy-term; else echo before > {dir}/proxy-term; fi; exit 0" TERM; while :; do sleep 0.1; done']
  - name: setup
    image: host
    command: [/bin/true]
  containers:
  - name: app
    image: host
    command: [/bin/sh, -c, 'trap "sleep 1; touch {dir}/app-term; exit 0" TERM; while :; do sleep 0.1; done']
"#
    );
    node.write_manifest("web.yaml", &manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("web", "all running and ready", |p| {
        running(p, "app") && condition(p, "Ready") == "True"
    });
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "proxy");
    assert!(inits[0]["state"]["running"].is_object(), "{pod}");
    assert_eq!(inits[0]["started"], true);
    assert_eq!(inits[0]["ready"], true);
    assert_eq!(inits[1]["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&pod, "Initialized"), "True");
    assert_eq!(phase(&pod), "Running");
    node.remove_manifest("web.yaml");
    node.wait_file("the sidecar's SIGTERM handler", "proxy-term");
    assert_eq!(
        node.read("proxy-term"),
        "after\n",
        "the sidecar stopped after the app"
    );
    node.stop_agent();
}

#[test]
fn sidecar_does_not_keep_a_finished_pod_alive() {
    let mut node = Node::boot("sidecar_job");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: logger
    image: host
    restartPolicy: Always
    command: [/bin/sleep, infinity]
  containers:
  - name: work
    image: host
    command: [/bin/sh, -c, 'sleep 1; exit 0']
"#;
    node.write_manifest("job.yaml", manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("job", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(terminated(&pod, "work")["exitCode"], 0);
    let pod = node.wait_pod("job", "the sidecar stopped", |p| {
        p["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object()
    });
    assert_eq!(phase(&pod), "Succeeded");
    assert_eq!(
        restarts(&pod, "logger"),
        0,
        "the sidecar was not restarted: {pod}"
    );
    node.stop_agent();
}
