//! Probes run by the agent: exec in the container's context, HTTP, TCP and
//! gRPC; readiness drives `ready`, liveness restarts, startup gates both.

use unitlet_test_support as support;

use std::time::Duration;
use support::*;

/// Readiness by exec: the probe runs as the container's user, with its
/// environment and working directory, inside its cgroup; `ready` and the
/// pod's Ready condition follow the probe both ways.
#[test]
fn readiness_exec_probe_runs_in_the_containers_context() {
    let mut node = Node::boot("probe_readiness_exec");
    let flag = node.path("ready-flag");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: [/bin/sleep, infinity]
    workingDir: /tmp
    env: [{{name: GREETING, value: hi}}]
    securityContext: {{runAsUser: 1234, runAsGroup: 1234}}
    readinessProbe:
      periodSeconds: 1
      failureThreshold: 1
      exec:
        command:
        - /bin/sh
        - -c
        - 'test -e {flag} && test "$(id -u):$(id -g)" = 1234:1234 && test "$GREETING" = hi && test "$PWD" = /tmp && grep -q unitlet_default_web_c /proc/self/cgroup'
"#
    );
    node.write_manifest("web.yaml", &manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("web", "running", |p| running(p, "c"));
    assert_eq!(
        cstatus(&pod, "c")["ready"],
        false,
        "ready before any probe passed"
    );
    std::thread::sleep(Duration::from_secs(2));
    let pod = node.pod("default", "web").unwrap();
    assert_eq!(
        cstatus(&pod, "c")["ready"],
        false,
        "the flag is missing: {pod}"
    );
    assert_eq!(condition(&pod, "Ready"), "False");
    assert_eq!(phase(&pod), "Running");
    std::fs::write(node.dir.join("ready-flag"), "").unwrap();
    let pod = node.wait_pod("web", "ready", |p| cstatus(p, "c")["ready"] == true);
    assert_eq!(condition(&pod, "Ready"), "True");
    assert_eq!(condition(&pod, "ContainersReady"), "True");
    std::fs::remove_file(node.dir.join("ready-flag")).unwrap();
    node.wait_pod("web", "unready again", |p| {
        cstatus(p, "c")["ready"] == false
    });
    // Readiness never restarts anything.
    assert_eq!(restarts(&node.pod("default", "web").unwrap(), "c"), 0);
    node.stop_agent();
}

/// Liveness by HTTP: once the page is gone the container is killed and
/// restarted (restartCount, lastState), under the pod's restart policy.
#[test]
fn failing_liveness_http_probe_restarts_the_container() {
    let mut node = Node::boot("probe_liveness_http");
    let www = node.path("www");
    std::fs::create_dir_all(node.dir.join("www")).unwrap();
    std::fs::write(node.dir.join("www/alive"), "ok").unwrap();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: [/usr/bin/python3, -m, http.server, "18431", --directory, {www}]
    ports: [{{name: http, containerPort: 18431}}]
    livenessProbe:
      periodSeconds: 1
      failureThreshold: 2
      httpGet: {{port: http, path: /alive, httpHeaders: [{{name: X-Probe, value: "1"}}]}}
"#
    );
    node.write_manifest("web.yaml", &manifest);
    node.start_agent(&[]);
    node.wait_pod("web", "running", |p| running(p, "c"));
    // Healthy for a while: nothing happens.
    std::thread::sleep(Duration::from_secs(3));
    let pod = node.pod("default", "web").unwrap();
    assert_eq!(restarts(&pod, "c"), 0, "{pod}");
    assert_eq!(cstatus(&pod, "c")["ready"], true);
    std::fs::remove_file(node.dir.join("www/alive")).unwrap();
    let pod = node.wait_pod("web", "restarted after failing its liveness probe", |p| {
        restarts(p, "c") >= 1
    });
    let last = &cstatus(&pod, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 143, "killed with SIGTERM: {pod}");
    let log = node.agent_log();
    assert!(
        log.contains("container failed its probe; killing it"),
        "{log}"
    );
    node.stop_agent();
}

/// A startup probe (TCP) holds `started`, and the readiness probe, until
/// the port opens; then a gRPC readiness probe decides `ready`.
#[test]
fn startup_probe_gates_readiness_and_grpc_health_is_checked() {
    let (port, serving) = grpc_health_server();
    let mut node = Node::boot("probe_startup_grpc");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: svc}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: [/usr/bin/python3, -c, "import socket,time; time.sleep(3); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 18432)); s.listen(); time.sleep(100000)"]
    startupProbe:
      periodSeconds: 1
      failureThreshold: 30
      tcpSocket: {{port: 18432}}
    readinessProbe:
      periodSeconds: 1
      failureThreshold: 1
      grpc: {{port: {port}, service: db}}
"#
    );
    node.write_manifest("svc.yaml", &manifest);
    node.start_agent(&[]);
    let pod = node.wait_pod("svc", "running", |p| running(p, "c"));
    assert_eq!(cstatus(&pod, "c")["started"], false, "{pod}");
    assert_eq!(cstatus(&pod, "c")["ready"], false, "{pod}");
    let pod = node.wait_pod("svc", "started and ready", |p| {
        cstatus(p, "c")["started"] == true && cstatus(p, "c")["ready"] == true
    });
    assert_eq!(condition(&pod, "Ready"), "True");
    // The service turns NOT_SERVING: unready.
    serving.store(false, std::sync::atomic::Ordering::SeqCst);
    node.wait_pod("svc", "unready", |p| cstatus(p, "c")["ready"] == false);
    node.stop_agent();
}

/// A gRPC health server on all addresses: `grpc.health.v1.Health/Check`
/// answers SERVING for service "db" while the flag is set, else NOT_SERVING.
fn grpc_health_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    let serving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let flag = serving.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let flag = flag.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let flag = flag.clone();
                        async move {
                            let path_ok = req.uri().path() == "/grpc.health.v1.Health/Check";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            // HealthCheckRequest{service: "db"} after the 5-byte prefix.
                            let asks_db = body.get(5..) == Some(&[0x0a, 2, b'd', b'b'][..]);
                            let status: u8 = if flag.load(std::sync::atomic::Ordering::SeqCst) && asks_db { 1 } else { 2 };
                            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                                Ok(Frame::trailers({
                                    let mut t = hyper::HeaderMap::new();
                                    t.insert("grpc-status", if path_ok { "0" } else { "12" }.parse().unwrap());
                                    t
                                })),
                            ];
                            let resp = hyper::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(StreamBody::new(futures_util::stream::iter(frames)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (port, serving)
}

/// A probe that does not answer within `timeoutSeconds` fails: a liveness
/// exec probe that hangs kills and restarts the container, and the hung
/// command does not outlive its timeout.
#[test]
fn timing_out_liveness_probe_restarts_the_container() {
    let mut node = Node::boot("probe_timeout");
    node.write_manifest(
        "slow.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: [/bin/sleep, infinity]
    livenessProbe:
      periodSeconds: 1
      timeoutSeconds: 1
      failureThreshold: 2
      exec: {command: [/bin/sleep, "30"]}
"#,
    );
    node.start_agent(&[]);
    let pod = node.wait_pod("slow", "restarted after its probe timed out", |p| {
        restarts(p, "c") >= 1
    });
    assert_eq!(
        cstatus(&pod, "c")["lastState"]["terminated"]["exitCode"],
        143,
        "{pod}"
    );
    let failures: Vec<_> = node
        .agent_lines()
        .into_iter()
        .filter(|l| l["message"] == "probe failed")
        .collect();
    assert!(
        failures
            .iter()
            .any(|l| l["error"].as_str().is_some_and(|e| e.contains("timed out"))),
        "{failures:?}"
    );
    // The timed-out commands were killed, not left running in the cgroup:
    // at most the one probe now in flight is there.
    let unit = node.unit_of("default", "slow", "c");
    let tasks = node.sh(&format!(
        "systemctl show -P ControlGroup {unit} | xargs -I{{}} cat /sys/fs/cgroup{{}}/cgroup.procs /sys/fs/cgroup/unified{{}}/cgroup.procs 2>/dev/null | sort -u | xargs -r ps -o args= -p || true"
    ));
    assert!(tasks.matches("sleep 30").count() <= 1, "{tasks}");
    node.stop_agent();
}
