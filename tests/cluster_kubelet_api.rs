//! The kubelet HTTPS API of a real `unitlet node` in a sandbox node, called
//! with curl the way the API server and metrics-server call a kubelet:
//! TLS, client certificates against `--client-ca-file`, and what a caller
//! without credentials gets.

use unitlet_test_support as support;

use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::*;

/// A CA and one client certificate it issued, as PEM files in the node's
/// work directory.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

/// A CA of its own and one client certificate it issued (see [`client_pkis`]).
fn client_pki(node: &Node, prefix: &str, cn: &str, org: &str) -> Pki {
    client_pkis(node, prefix, &[("client", cn, org, None)])
        .pop()
        .expect("one certificate")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test API server and a booted sandbox node with a kubeconfig for it
/// (`<work dir>/kubeconfig`).
fn api_and_node(test: &str) -> (ApiServer, Node, std::path::PathBuf) {
    let api = ApiServer::start();
    let node = Node::boot(test);
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    (api, node, kc)
}

/// Starts `unitlet node` serving the kubelet API on a free port with a
/// self-signed certificate, client certificates from `ca`, and every
/// authenticated request allowed; returns the port.
fn start_with_self_signed_cert(node: &mut Node, kc: &std::path::Path, ca: &str) -> u16 {
    start_serving(node, kc, ca, &["--authorization-mode", "AlwaysAllow"])
}

/// As [`start_with_self_signed_cert`], authorization set by `extra`
/// (nothing: the default webhook, SubjectAccessReview to the API server).
fn start_serving(node: &mut Node, kc: &std::path::Path, ca: &str, extra: &[&str]) -> u16 {
    let port = free_port();
    let port_s = port.to_string();
    let mut args = vec![
        "--port",
        &port_s,
        "--self-signed-serving-cert",
        "--client-ca-file",
        ca,
    ];
    args.extend_from_slice(extra);
    node.start_node_agent(kc, &args);
    port
}

/// `curl` against the node's kubelet API: (HTTP status, body).
fn call(node: &Node, port: u16, pki: Option<&Pki>, path: &str) -> (u16, String) {
    let creds = pki
        .map(|p| format!("--cert {} --key {}", p.cert, p.key))
        .unwrap_or_default();
    let out = node.sh(&format!(
        "rm -f /tmp/body; curl -sk --max-time 20 {creds} -o /tmp/body -w '%{{http_code}}' 'https://127.0.0.1:{port}{path}'; echo; cat /tmp/body 2>/dev/null; true"
    ));
    let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Match rules the node's dbus-daemon holds for the agent's connections
/// (its `Debug.Stats` interface).
fn agent_match_rules(node: &Node) -> u32 {
    let names = node.sh("busctl --system list --unique --no-legend --no-pager");
    let agent: Vec<&str> = names
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("unitlet"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!agent.is_empty(), "the agent is not on the bus:\n{names}");
    agent
        .iter()
        .map(|name| {
            let stats = node.sh(&format!(
                "busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus.Debug.Stats GetConnectionStats s {name}"
            ));
            let words: Vec<&str> = stats.split_whitespace().collect();
            let at = words
                .iter()
                .position(|w| *w == "\"MatchRules\"")
                .unwrap_or_else(|| panic!("no MatchRules in {stats}"));
            words[at + 2].parse::<u32>().expect("a count")
        })
        .sum()
}

#[test]
fn logs_pods_and_healthz_over_tls_with_client_certificates() {
    let (api, mut node, kc) = api_and_node("kubelet_api_logs");
    let masters = client_pki(
        &node,
        "apiserver",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let stranger = client_pki(&node, "other", "intruder", "system:masters");
    let port = start_with_self_signed_cert(&mut node, &kc, &masters.ca);
    let nn = node.name.clone();
    node.wait_for("the kubelet API to listen", default_wait(), || {
        (call(&node, port, Some(&masters), "/healthz") == (200, "ok".to_string())).then_some(())
    });
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "talker", "namespace": "default"},
            "spec": {"nodeName": nn, "containers": [{
                "name": "c", "image": "host",
                "command": ["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; done; exec sleep infinity"]
            }]}
        }),
    );
    node.wait_for("the pod's three lines in its logs", default_wait(), || {
        let (code, body) = call(
            &node,
            port,
            Some(&masters),
            "/containerLogs/default/talker/c",
        );
        (code == 200 && body == "line1\nline2\nline3\n").then_some(())
    });
    let get = |path: &str| call(&node, port, Some(&masters), path);
    assert_eq!(
        get("/containerLogs/default/talker/c?tailLines=1"),
        (200, "line3\n".into())
    );
    assert_eq!(
        get("/containerLogs/default/talker/c?limitBytes=7"),
        (200, "line1\nl".into())
    );
    let (code, body) = get("/containerLogs/default/talker/c?timestamps=true&tailLines=1");
    assert_eq!(code, 200);
    let (ts, line) = body.trim_end().split_once(' ').unwrap();
    assert_eq!(line, "line3");
    assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{body}");
    // Invalid parameters: 400; unknown pod or container: 404; no previous
    // instance: 400 with the kubelet's message.
    assert_eq!(get("/containerLogs/default/talker/c?tailLines=-1").0, 400);
    assert_eq!(
        get("/containerLogs/default/talker/c?sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z").0,
        400
    );
    let (code, body) = get("/containerLogs/default/nobody/c");
    assert_eq!(
        (code, body.as_str()),
        (404, "pod \"nobody\" does not exist")
    );
    assert_eq!(get("/containerLogs/default/talker/nope").0, 404);
    let (code, body) = get("/containerLogs/default/talker/c?previous=true");
    assert_eq!(code, 400);
    assert!(body.contains("previous terminated container"), "{body}");
    // Follow streams: the first lines arrive while the stream stays open.
    let out = node.sh_output(&format!(
        "curl -sk -N --max-time 3 --cert {} --key {} 'https://127.0.0.1:{port}/containerLogs/default/talker/c?follow=true'",
        masters.cert, masters.key
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line1\nline2\nline3\n"
    );
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl timed out: the stream was still open"
    );
    // Each follow watches the unit's signals on the agent's one bus
    // connection; the bus refuses a connection its 513th match rule, so
    // followers must not leave rules behind.
    let rules = agent_match_rules(&node);
    for _ in 0..3 {
        node.sh_output(&format!(
            "curl -sk -N --max-time 1 --cert {} --key {} 'https://127.0.0.1:{port}/containerLogs/default/talker/c?follow=true'",
            masters.cert, masters.key
        ));
    }
    assert_eq!(
        agent_match_rules(&node),
        rules,
        "following logs added bus match rules"
    );

    // /pods: a PodList with the pod and its status.
    let (code, body) = get("/pods");
    assert_eq!(code, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "talker")
        .expect("talker listed");
    assert_eq!(item["status"]["phase"], "Running");

    // Usage, as metrics-server and `kubectl top` read it.
    let (code, body) = get("/stats/summary");
    assert_eq!(code, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], nn.as_str());
    let talker = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "talker")
        .unwrap_or_else(|| panic!("talker in {summary}"));
    assert_eq!(talker["podRef"]["namespace"], "default");
    assert_eq!(talker["containers"][0]["name"], "c");
    // The node's usage is read from the root control group. (A sandbox
    // node's systemd gets no CPU or memory controller for its units on this
    // cgroup-v1 host, so per-container numbers are absent here; the readers
    // are tested against cgroup trees in src/kubelet/stats.rs.)
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(
        summary["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{summary}"
    );
    let (code, body) = get("/metrics/resource");
    assert_eq!(code, 200);
    assert!(body.contains("\nnode_cpu_usage_seconds_total "), "{body}");
    assert!(body.contains("\nnode_memory_working_set_bytes "), "{body}");
    assert!(
        body.contains(
            "container_start_time_seconds{container=\"c\",namespace=\"default\",pod=\"talker\"}"
        ),
        "{body}"
    );

    // The agent's own metrics.
    let (code, body) = get("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("unitlet_pods{phase=\"Running\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("unitlet_reconcile_duration_seconds_count "),
        "{body}"
    );
    assert!(body.contains("unitlet_api_errors_total "), "{body}");
    assert!(body.contains("unitlet_dbus_errors_total "), "{body}");

    // No credentials: 401, and nothing else about the node.
    assert_eq!(
        call(&node, port, None, "/pods"),
        (401, "Unauthorized".into())
    );
    assert_eq!(call(&node, port, None, "/healthz").0, 401);
    // A certificate from another CA: the TLS handshake fails.
    assert_eq!(call(&node, port, Some(&stranger), "/healthz").0, 0);
    // Unknown paths: 404 (after authentication).
    assert_eq!(get("/nothing/here").0, 404);
    node.stop_agent();
}

/// `/metrics/cadvisor` and `/metrics/probes` go through the kubelet API's
/// authentication like everything else: refused without credentials,
/// served with them, with the pod's container and probe series.
#[test]
fn cadvisor_and_probe_metrics_need_credentials() {
    let (api, mut node, kc) = api_and_node("kubelet_api_metrics");
    let masters = client_pki(
        &node,
        "apiserver",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let port = start_with_self_signed_cert(&mut node, &kc, &masters.ca);
    let nn = node.name.clone();
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probed", "namespace": "default"},
            "spec": {"nodeName": nn, "containers": [{
                "name": "c", "image": "host",
                "command": ["/bin/sleep", "infinity"],
                "readinessProbe": {"periodSeconds": 1, "exec": {"command": ["/bin/true"]}}
            }]}
        }),
    );
    let get = |path: &str| call(&node, port, Some(&masters), path);
    let probes = node.wait_for("a probe result in /metrics/probes", default_wait(), || {
        let (code, body) = get("/metrics/probes");
        (code == 200 && body.contains("pod=\"probed\"")).then_some(body)
    });
    assert!(
        probes.contains(
            "prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"c\",pod=\"probed\",namespace=\"default\",pod_uid=\""
        ),
        "{probes}"
    );
    let (code, body) = get("/metrics/cadvisor");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(
            "container_cpu_usage_seconds_total{container=\"c\",cpu=\"total\",id=\"/unitlet.slice/"
        ),
        "{body}"
    );
    assert!(
        body.contains("namespace=\"default\",pod=\"probed\"}"),
        "{body}"
    );
    let (code, body) = get("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("kubelet_node_name{{node=\"{nn}\"}} 1\n")),
        "{body}"
    );
    for path in ["/metrics/cadvisor", "/metrics/probes", "/metrics"] {
        assert_eq!(
            call(&node, port, None, path),
            (401, "Unauthorized".into()),
            "{path}"
        );
    }
    node.stop_agent();
}

/// Accepts any server certificate (the node's is self-signed here).
#[derive(Debug)]
struct AnyServer;

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _: &tokio_rustls::rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        Ok(tokio_rustls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        Ok(tokio_rustls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        tokio_rustls::rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One exec over the WebSocket channel protocol (v5): what arrived on
/// stdout, stderr and the error channel, after sending `stdin` and the
/// close signal.
async fn ws_exec(port: u16, pki: &Pki, query: &str, stdin: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    ws_exec_sized(port, pki, query, stdin, None).await
}

/// [`ws_exec`], sending a terminal size first when given.
async fn ws_exec_sized(
    port: u16,
    pki: &Pki,
    query: &str,
    stdin: &[u8],
    size: Option<(u16, u16)>,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_rustls::rustls;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(&pki.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.key).unwrap()
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer))
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let path = if query.starts_with('/') {
        query.to_string()
    } else {
        format!("/exec/default/talker/c?{query}")
    };
    let mut req = format!("wss://localhost:{port}{path}")
        .into_client_request()
        .unwrap();
    let proto = if path.starts_with("/portForward") {
        "v4.channel.k8s.io"
    } else {
        "v5.channel.k8s.io"
    };
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", proto.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], proto);
    if let Some((w, h)) = size {
        let mut m = vec![4u8];
        m.extend_from_slice(format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes());
        ws.send(Message::binary(m)).await.unwrap();
    }
    if !stdin.is_empty() {
        let mut m = vec![0u8];
        m.extend_from_slice(stdin);
        ws.send(Message::binary(m)).await.unwrap();
        // v5: close stdin (port-forward's v4 has no such signal).
        if proto.starts_with("v5") {
            ws.send(Message::binary(vec![255u8, 0])).await.unwrap();
        }
    }
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    // Attach and port-forward run until the client leaves: read for a while.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Binary(b) = m {
            if b.is_empty() {
                continue;
            }
            // Port-forward: data on 0, errors on 1; exec: stdout 1,
            // stderr 2, status 3.
            match (proto.starts_with("v4"), b[0]) {
                (true, 0) | (false, 1) => out.extend_from_slice(&b[1..]),
                (true, 1) | (false, 2) => err.extend_from_slice(&b[1..]),
                (false, 3) => status.extend_from_slice(&b[1..]),
                _ => {}
            }
        }
    }
    (out, err, status)
}

#[test]
fn exec_runs_in_the_container_over_websocket() {
    let (api, mut node, kc) = api_and_node("kubelet_api_exec");
    let pki = client_pki(
        &node,
        "apiserver",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let port = start_with_self_signed_cert(&mut node, &kc, &pki.ca);
    let web_port = free_port();
    let nn = node.name.clone();
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "talker", "namespace": "default"},
            "spec": {"nodeName": nn,
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{
                "name": "c", "image": "host",
                "env": [{"name": "GREETING", "value": "hi"}],
                "workingDir": "/data",
                "securityContext": {"runAsUser": 4321},
                "volumeMounts": [{"name": "v", "mountPath": "/data"}],
                "command": ["/bin/sh", "-c", "echo inside > /data/mark; exec sleep infinity"]
            }, {
                "name": "ticker", "image": "host",
                "command": ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.2; done"]
            }, {
                "name": "web", "image": "host",
                "command": ["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", web_port.to_string()]
            }]}
        }),
    );
    node.wait_for("the pod running", default_wait(), || {
        let p = api.get("pods", Some("default"), "talker")?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The container's user, environment, directory and volume; stdout and
    // stderr apart; success as a Status.
    let (out, err, status) = rt.block_on(ws_exec(
        port,
        &pki,
        "command=/bin/sh&command=-c&command=id+-u;+echo+%24GREETING;+pwd;+cat+mark;+echo+oops+%3E%262&stdout=1&stderr=1",
        b"",
    ));
    assert_eq!(String::from_utf8_lossy(&out), "4321\nhi\n/data\ninside\n");
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    let st: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(st["status"], "Success", "{st}");
    // Input reaches the command; a non-zero exit is NonZeroExitCode with the code.
    let (out, _, status) = rt.block_on(ws_exec(
        port,
        &pki,
        "command=/bin/sh&command=-c&command=cat;+exit+3&stdin=1&stdout=1",
        b"typed\n",
    ));
    assert_eq!(String::from_utf8_lossy(&out), "typed\n");
    let st: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");
    // A terminal: the command sees a tty of the size the client sent.
    let (out, _, status) = rt.block_on(ws_exec_sized(
        port,
        &pki,
        "command=/bin/sh&command=-c&command=sleep+1;+test+-t+0+%26%26+stty+size&stdin=1&stdout=1&tty=1",
        b"",
        Some((100, 30)),
    ));
    assert_eq!(String::from_utf8_lossy(&out), "30 100\r\n");
    let st: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(st["status"], "Success", "{st}");
    // A command that does not exist does not report success.
    let (_, _, status) = rt.block_on(ws_exec(
        port,
        &pki,
        "command=/no/such/program&stdout=1&stderr=1",
        b"",
    ));
    let st: Value = serde_json::from_slice(&status).unwrap();
    assert_ne!(st["status"], "Success", "{st}");
    // Attach: the container's output from now on, on stdout.
    let (out, _, _) = rt.block_on(ws_exec(
        port,
        &pki,
        "/attach/default/talker/ticker?stdout=1",
        b"",
    ));
    let text = String::from_utf8_lossy(&out).into_owned();
    let ticks: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("tick")?.parse().ok())
        .collect();
    assert!(ticks.len() >= 5, "{text:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{text:?}");
    // Port-forward: a request to the pod's port over the data channel.
    node.wait_for("the web container to listen", default_wait(), || {
        std::net::TcpStream::connect(("127.0.0.1", web_port)).ok()
    });
    let (out, errors, _) = rt.block_on(ws_exec(
        port,
        &pki,
        &format!("/portForward/default/talker?ports={web_port}"),
        b"GET / HTTP/1.0\r\n\r\n",
    ));
    let text = String::from_utf8_lossy(&out);
    // The server first names the port (little-endian), then the bytes flow.
    assert_eq!(out[..2], web_port.to_le_bytes());
    assert!(text.contains("HTTP/1.0 200 OK"), "{text}");
    assert_eq!(
        errors,
        web_port.to_le_bytes(),
        "only the port on the error channel"
    );
    // Unknown container: 404; no stream asked for: 400.
    assert_eq!(
        call(
            &node,
            port,
            Some(&pki),
            "/exec/default/talker/nope?command=ls&stdout=1"
        )
        .0,
        404
    );
    assert_eq!(
        call(&node, port, Some(&pki), "/exec/default/talker/c?command=ls").0,
        400
    );
    node.stop_agent();
}

/// Debian's kubectl 1.20 (SPDY to the API server), which `.ci/run` unpacks.
const KUBECTL: &str = "/opt/kubernetes-client/usr/bin/kubectl";

/// kubectl against the test API server, which proxies to the node's
/// kubelet API as a real API server does.
fn kubectl(kc: &std::path::Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    assert!(
        std::path::Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: run .ci/run, or apt-get download kubernetes-client && dpkg-deb -x kubernetes-client_*.deb /opt/kubernetes-client"
    );
    let mut child = std::process::Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kubectl_logs_exec_and_port_forward_through_the_api_server_with_webhook_auth() {
    let api = ApiServer::start();
    api.set_kubelet_preferred_address_types(&["InternalIP"]);
    let mut node = Node::boot("kubelet_api_kubectl");
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    std::fs::write(
        node.dir.join("kubelet-client-ca.pem"),
        api.kubelet_client_ca_pem(),
    )
    .unwrap();
    let ca = node.path("kubelet-client-ca.pem");
    let port = free_port();
    let port_s = port.to_string();
    let web_port = free_port();
    // Default authorization: SubjectAccessReview against the API server.
    node.start_node_agent(
        &kc,
        &[
            "--port",
            &port_s,
            "--self-signed-serving-cert",
            "--client-ca-file",
            &ca,
        ],
    );
    let nn = node.name.clone();
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "talker", "namespace": "default"},
            "spec": {"nodeName": nn, "containers": [{
                "name": "c", "image": "host",
                "command": ["/bin/sh", "-c", "echo hello-from-c; exec /usr/bin/python3 -m http.server --bind 127.0.0.1 $PORT"],
                "env": [{"name": "PORT", "value": web_port.to_string()}]
            }]}
        }),
    );
    node.wait_for("the pod running", default_wait(), || {
        let p = api.get("pods", Some("default"), "talker")?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let kcp = kc.as_path();
    // kubectl logs.
    let out = node.wait_for("kubectl logs", default_wait(), || {
        let o = kubectl(kcp, &["logs", "talker"], b"");
        (o.status.success() && String::from_utf8_lossy(&o.stdout).contains("hello-from-c"))
            .then_some(o)
    });
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("hello-from-c")
    );
    // kubectl exec over SPDY: output, input, and the exit code.
    let o = kubectl(
        kcp,
        &[
            "exec",
            "talker",
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().next(),
        Some("err")
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = kubectl(
        kcp,
        &["exec", "-i", "talker", "--", "/bin/cat"],
        b"typed input\n",
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "typed input\n");
    // The API server's identity was checked with a SubjectAccessReview
    // carrying the kubelet's attributes.
    let reviews = api.access_reviews();
    assert!(
        reviews.iter().any(|r| {
            let a = &r["spec"]["resourceAttributes"];
            a["resource"] == "nodes"
                && a["subresource"] == "proxy"
                && a["name"] == nn.as_str()
                && a["verb"] == "create"
        }),
        "{reviews:?}"
    );
    // kubectl port-forward over SPDY.
    let local = free_port();
    let mut pf = std::process::Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kcp)
        .args(["port-forward", "pod/talker", &format!("{local}:{web_port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let got = node.try_wait_for(default_wait(), || {
        let o = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{local}/"),
            ])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&o.stdout).into_owned();
        body.contains("Directory listing").then_some(body)
    });
    let _ = pf.kill();
    let pf_out = pf.wait_with_output().unwrap();
    assert!(
        got.is_some(),
        "no page through port-forward: {}\n{}\nproxied: {:?}",
        String::from_utf8_lossy(&pf_out.stdout),
        String::from_utf8_lossy(&pf_out.stderr),
        api.proxied_requests()
    );

    // Bearer tokens: TokenReview, then SubjectAccessReview.
    api.add_static_token("reader-token", "reader", &["readers"]);
    api.add_static_token("nobody-token", "nobody", &[]);
    api.allow("reader", "get", "nodes/stats");
    let bearer = |token: &str, path: &str| -> u16 {
        node.sh(&format!(
            "curl -sk --max-time 10 -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' 'https://127.0.0.1:{port}{path}'"
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    };
    assert_eq!(bearer("reader-token", "/stats/summary"), 200);
    assert_eq!(
        bearer("reader-token", "/pods"),
        403,
        "not allowed nodes/pods or nodes/proxy"
    );
    assert_eq!(bearer("nobody-token", "/stats/summary"), 403);
    assert_eq!(bearer("made-up", "/stats/summary"), 401);
    node.stop_agent();
}

#[test]
fn hostile_clients_neither_crash_the_agent_nor_touch_pods() {
    use std::io::{Read, Write};
    let (api, mut node, kc) = api_and_node("kubelet_api_hostile");
    let pki = client_pki(
        &node,
        "apiserver",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let port = start_with_self_signed_cert(&mut node, &kc, &pki.ca);
    let nn = node.name.clone();
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "steady", "namespace": "default"},
            "spec": {"nodeName": nn, "containers": [{
                "name": "c", "image": "host", "command": ["/bin/sleep", "infinity"]
            }]}
        }),
    );
    node.wait_for("the pod running", default_wait(), || {
        let p = api.get("pods", Some("default"), "steady")?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let unit = node.unit_of("default", "steady", "c");
    let pid_before = node.show_value(&unit, "MainPID");
    // Not TLS at all, and a TLS client that stops mid-handshake.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..],
        &[0u8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(junk);
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
    }
    // Many connections at once.
    let held: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    // Huge headers, an unknown SPDY protocol, and garbage after a SPDY
    // upgrade.
    std::fs::write(
        node.dir.join("big-header"),
        format!("X-Big: {}\n", "x".repeat(200 * 1024)),
    )
    .unwrap();
    let code = node
        .sh(&format!(
            "curl -sk --max-time 20 --cert {} --key {} -o /dev/null -w '%{{http_code}}' -H @{} https://127.0.0.1:{port}/healthz || true",
            pki.cert,
            pki.key,
            node.path("big-header")
        ))
        .trim()
        .to_string();
    assert_ne!(code, "200", "a 200 KiB header is refused");
    let refused = node.sh(&format!(
        "curl -sk --http1.1 --max-time 20 --cert {} --key {} -o /dev/null -w '%{{http_code}}' -X POST -H 'Connection: Upgrade' -H 'Upgrade: SPDY/3.1' -H 'X-Stream-Protocol-Version: v1.channel.k8s.io' 'https://127.0.0.1:{port}/exec/default/steady/c?command=true&stdout=1'",
        pki.cert, pki.key
    ));
    assert_eq!(refused.trim(), "403");
    // Garbage frames on an upgraded connection: the agent drops it.
    let garbage = node.sh_output(&format!(
        "(printf 'POST /exec/default/steady/c?command=true&stdout=1 HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\nUpgrade: SPDY/3.1\\r\\nX-Stream-Protocol-Version: v4.channel.k8s.io\\r\\n\\r\\n'; sleep 1; head -c 65536 /dev/urandom; sleep 2) | timeout 20 openssl s_client -quiet -connect 127.0.0.1:{port} -cert {} -key {} 2>/dev/null | head -c 200 | od -c | head -3",
        pki.cert, pki.key
    ));
    assert!(
        String::from_utf8_lossy(&garbage.stdout).contains("1   0   1"),
        "the upgrade was answered 101 before the garbage: {garbage:?}"
    );
    drop(held);
    // The agent still answers, and the pod never noticed.
    node.wait_for("the kubelet API to answer again", default_wait(), || {
        (call(&node, port, Some(&pki), "/healthz") == (200, "ok".to_string())).then_some(())
    });
    assert_eq!(node.show_value(&unit, "MainPID"), pid_before);
    assert_eq!(
        api.get("pods", Some("default"), "steady").unwrap()["status"]["containerStatuses"][0]
            ["restartCount"],
        0
    );
    node.stop_agent();
}

#[test]
fn the_serving_certificate_comes_from_a_csr_and_is_renewed() {
    let api = ApiServer::start();
    api.set_kubelet_preferred_address_types(&["InternalIP"]);
    // The cluster approves and signs kubelet-serving CSRs, for 20 s each.
    api.auto_sign_kubelet_serving(std::time::Duration::from_secs(20));
    let mut node = Node::boot("kubelet_api_csr");
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    std::fs::write(node.dir.join("client-ca.pem"), api.kubelet_client_ca_pem()).unwrap();
    std::fs::write(
        node.dir.join("serving-ca.pem"),
        api.kubelet_serving_ca_pem(),
    )
    .unwrap();
    let (client_ca, serving_ca) = (node.path("client-ca.pem"), node.path("serving-ca.pem"));
    let port = free_port();
    let port_s = port.to_string();
    node.start_node_agent(
        &kc,
        &[
            "--port",
            &port_s,
            "--rotate-server-certificates",
            "--client-ca-file",
            &client_ca,
        ],
    );
    let nn = node.name.clone();
    let ip = node.wait_for("the node's InternalIP", default_wait(), || {
        let n = api.get("nodes", None, &nn)?;
        n["status"]["addresses"]
            .as_array()?
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str().map(str::to_string))
    });
    // The served certificate verifies against the cluster's signer for the
    // node's address (curl checks the SAN), and names the node.
    let serial = |node: &Node| -> Option<String> {
        let out = node.sh_output(&format!(
            "curl -s --max-time 5 --cacert {serving_ca} -o /dev/null -w '%{{http_code}}' https://{ip}:{port}/healthz && echo | openssl s_client -connect {ip}:{port} 2>/dev/null | openssl x509 -noout -serial -subject"
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.starts_with("401") && text.contains("system:node:"))
            .then_some(text)
    };
    let first = node.wait_for("a CSR-signed serving certificate", default_wait(), || {
        serial(&node)
    });
    assert!(
        first.contains(&format!("CN = system:node:{nn}"))
            || first.contains(&format!("CN=system:node:{nn}")),
        "{first}"
    );
    let csrs = api.csrs();
    assert_eq!(
        csrs[0]["spec"]["signerName"],
        "kubernetes.io/kubelet-serving"
    );
    // Renewed before it expires: a new serial, still verifying.
    let second = node.wait_for(
        "a renewed certificate",
        std::time::Duration::from_secs(40),
        || serial(&node).filter(|s| *s != first),
    );
    assert_ne!(first, second);
    assert!(api.csrs().len() >= 2);
    node.stop_agent();
}

/// A client certificate to issue: file name, CN, O, and validity (two
/// (year, month, day) dates; None is rcgen's default, 1975 to 4096).
type ClientSpec<'a> = (&'a str, &'a str, &'a str, Option<[(i32, u8, u8); 2]>);

/// One CA, written as `{prefix}-ca.pem`, and a client certificate it issued
/// for each of `clients`.
fn client_pkis(node: &Node, prefix: &str, clients: &[ClientSpec]) -> Vec<Pki> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{prefix} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let write = |name: &str, pem: String| {
        std::fs::write(node.dir.join(name), pem).unwrap();
        node.path(name)
    };
    let ca_path = write(&format!("{prefix}-ca.pem"), ca.pem());
    clients
        .iter()
        .map(|(file, cn, org, validity)| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *cn);
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *org);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            if let Some([(y0, m0, d0), (y1, m1, d1)]) = *validity {
                params.not_before = rcgen::date_time_ymd(y0, m0, d0);
                params.not_after = rcgen::date_time_ymd(y1, m1, d1);
            }
            let cert = params.signed_by(&key, &issuer).unwrap();
            Pki {
                ca: ca_path.clone(),
                cert: write(&format!("{prefix}-{file}-cert.pem"), cert.pem()),
                key: write(&format!("{prefix}-{file}-key.pem"), key.serialize_pem()),
            }
        })
        .collect()
}

/// What a caller of the kubelet API presents.
enum Cred<'a> {
    Nothing,
    Cert(&'a Pki),
    Token(&'a str),
}

/// One request from the host's curl (HTTP/1.1, as upgrades need): the HTTP
/// status (0: no HTTP answer at all, the TLS handshake was refused) and
/// everything that came back, headers and body.
fn kubelet_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    cred: &Cred,
    max_time: u32,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sk", "--http1.1", "-i", "--max-time"])
        .arg(max_time.to_string())
        .args(["-X", method, "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    match cred {
        Cred::Nothing => {}
        Cred::Cert(p) => {
            cmd.args(["--cert", &p.cert, "--key", &p.key]);
        }
        Cred::Token(t) => {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (got, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), got.to_string())
}

/// Issue #15, item 3: every endpoint of the kubelet API (those unitlet
/// serves and those a kubelet serves that unitlet does not), called as a
/// client would (plain, and with SPDY and WebSocket upgrades for the
/// streaming ones), with every kind of bad credential: no credentials, a
/// client certificate from a CA the agent does not trust, an expired one
/// from the CA it trusts, bearer tokens the TokenReview refuses, and a
/// certificate and a token of users the SubjectAccessReview denies. Every
/// cell is refused with the kubelet's status (401 unauthenticated, 403
/// denied; a certificate that does not verify is refused in the TLS
/// handshake, or 401 as the kubelet answers it), and nothing of the pod
/// (its output, its spec, its uid) comes back. Two authorized callers (a
/// certificate and a token) are the controls: they reach every endpoint
/// and read the pod's output.
#[test]
fn every_endpoint_refuses_every_bad_credential() {
    let started = std::time::Instant::now();
    let (api, mut node, kc) = api_and_node("kubelet_api_refusals");
    let trusted = client_pkis(
        &node,
        "trusted",
        &[
            (
                "admin",
                "kube-apiserver-kubelet-client",
                "system:masters",
                None,
            ),
            // Expired yesterday and long before: valid 2020-01-01 to 01-02.
            (
                "expired",
                "expired-admin",
                "system:masters",
                Some([(2020, 1, 1), (2020, 1, 2)]),
            ),
            ("eve", "eve", "developers", None),
        ],
    );
    let (admin, expired, eve) = (&trusted[0], &trusted[1], &trusted[2]);
    let strangers = client_pkis(
        &node,
        "stranger",
        &[(
            "admin",
            "kube-apiserver-kubelet-client",
            "system:masters",
            None,
        )],
    );
    let stranger = &strangers[0];
    // Tokens: one TokenReview authenticates into system:masters, one
    // (a user with no rules) the SubjectAccessReview denies, one no
    // authenticator knows, and a service account token this API server
    // signed that expired an hour ago.
    api.add_static_token("admin-token", "token-admin", &["system:masters"]);
    api.add_static_token("mallory-token", "mallory", &[]);
    let unknown_token = "no-authenticator-knows-this-token";
    let now = jiff::Timestamp::now().as_second();
    let expired_token = api.sign_token_claims(&json!({
        "iss": support::apiserver::API_AUDIENCE,
        "aud": [support::apiserver::API_AUDIENCE],
        "sub": "system:serviceaccount:default:default",
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
        "kubernetes.io": {"namespace": "default",
            "serviceaccount": {"name": "default", "uid": "5b0c6a48-0d7e-4d0e-9d1c-2f6b3c1f0a11"}}
    }));
    // Webhook authentication and authorization, anonymous off (the
    // defaults): TokenReview and SubjectAccessReview against the API server.
    let port = start_serving(&mut node, &kc, &admin.ca, &[]);
    let nn = node.name.clone();
    let marker = format!(
        "canary-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "leaky", "namespace": "default"},
            "spec": {"nodeName": nn, "containers": [{
                "name": "c", "image": "host",
                "env": [{"name": "MARKER", "value": marker}],
                "command": ["/bin/sh", "-c", "while :; do echo \"$MARKER\"; sleep 0.2; done"],
                "readinessProbe": {"periodSeconds": 1, "exec": {"command": ["/bin/true"]}}
            }]}
        }),
    );
    // The positive control: an authorized caller reads the marker.
    node.wait_for("the marker in the pod's logs", default_wait(), || {
        let (code, got) = kubelet_request(
            port,
            "GET",
            "/containerLogs/default/leaky/c?tailLines=5",
            &[],
            &Cred::Cert(admin),
            10,
        );
        (code == 200 && got.contains(&marker)).then_some(())
    });
    let uid = api.get("pods", Some("default"), "leaky").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing of the pod may come back to a refused caller: its output
    // and spec (the marker), its uid (stats, metrics, the pod list).
    let canaries = [marker.as_str(), uid.as_str()];

    const SPDY: &[&str] = &[
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        "X-Stream-Protocol-Version: v4.channel.k8s.io",
    ];
    const SPDY_PF: &[&str] = &[
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        "X-Stream-Protocol-Version: portforward.k8s.io",
    ];
    const WS: &[&str] = &[
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: v5.channel.k8s.io",
    ];
    const WS_PF: &[&str] = &[
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Protocol: v4.channel.k8s.io",
    ];
    let exec_q = "command=/bin/sh&command=-c&command=echo+%24MARKER&stdout=1&stderr=1";
    // (label, method, path, headers). The first group is what
    // src/kubelet/server.rs routes; the second, paths a kubelet serves that
    // unitlet does not (404 once authorized), and one no kubelet has.
    let endpoints: Vec<(&str, &str, String, &[&str])> = vec![
        ("healthz", "GET", "/healthz".into(), &[]),
        ("pods", "GET", "/pods".into(), &[]),
        ("stats/summary", "GET", "/stats/summary".into(), &[]),
        ("metrics", "GET", "/metrics".into(), &[]),
        ("metrics/cadvisor", "GET", "/metrics/cadvisor".into(), &[]),
        ("metrics/probes", "GET", "/metrics/probes".into(), &[]),
        ("metrics/resource", "GET", "/metrics/resource".into(), &[]),
        (
            "containerLogs",
            "GET",
            "/containerLogs/default/leaky/c".into(),
            &[],
        ),
        (
            "containerLogs follow",
            "GET",
            "/containerLogs/default/leaky/c?follow=true".into(),
            &[],
        ),
        (
            "exec POST plain",
            "POST",
            format!("/exec/default/leaky/c?{exec_q}"),
            &[],
        ),
        (
            "exec POST SPDY",
            "POST",
            format!("/exec/default/leaky/c?{exec_q}"),
            SPDY,
        ),
        (
            "exec GET WebSocket",
            "GET",
            format!("/exec/default/leaky/c?{exec_q}"),
            WS,
        ),
        (
            "attach POST plain",
            "POST",
            "/attach/default/leaky/c?stdout=1".into(),
            &[],
        ),
        (
            "attach POST SPDY",
            "POST",
            "/attach/default/leaky/c?stdout=1".into(),
            SPDY,
        ),
        (
            "attach GET WebSocket",
            "GET",
            "/attach/default/leaky/c?stdout=1".into(),
            WS,
        ),
        (
            "portForward POST plain",
            "POST",
            "/portForward/default/leaky".into(),
            &[],
        ),
        (
            "portForward POST SPDY",
            "POST",
            "/portForward/default/leaky".into(),
            SPDY_PF,
        ),
        (
            "portForward GET WebSocket",
            "GET",
            "/portForward/default/leaky?ports=80".into(),
            WS_PF,
        ),
        // A kubelet's, not unitlet's.
        ("runningpods", "GET", "/runningpods/".into(), &[]),
        ("logs (node)", "GET", "/logs/".into(), &[]),
        (
            "run",
            "POST",
            "/run/default/leaky/c?cmd=echo+%24MARKER".into(),
            &[],
        ),
        ("configz", "GET", "/configz".into(), &[]),
        ("debug/pprof", "GET", "/debug/pprof/".into(), &[]),
        ("debug/flags/v", "PUT", "/debug/flags/v".into(), &[]),
        (
            "checkpoint",
            "POST",
            "/checkpoint/default/leaky/c".into(),
            &[],
        ),
        ("(unknown path)", "GET", "/nothing/here".into(), &[]),
    ];
    // (column, credential, the statuses that are right). A certificate
    // that does not verify: the agent refuses the handshake (0); the
    // kubelet accepts the connection and answers 401 — either refuses.
    let bad: Vec<(&str, Cred, &[u16])> = vec![
        ("none", Cred::Nothing, &[401]),
        ("wrong-CA", Cred::Cert(stranger), &[0, 401]),
        ("expired-cert", Cred::Cert(expired), &[0, 401]),
        ("TR-unknown", Cred::Token(unknown_token), &[401]),
        ("TR-expired", Cred::Token(&expired_token), &[401]),
        ("SAR-cert", Cred::Cert(eve), &[403]),
        ("SAR-token", Cred::Token("mallory-token"), &[403]),
    ];
    let controls: Vec<(&str, Cred)> = vec![
        ("ok-cert", Cred::Cert(admin)),
        ("ok-token", Cred::Token("admin-token")),
    ];
    // Every cell of a column at once (streams an authorized caller opens
    // run until curl's time limit).
    let column = |cred: &Cred, max_time: u32| -> Vec<(u16, String)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = endpoints
                .iter()
                .map(|(_, method, path, headers)| {
                    s.spawn(move || kubelet_request(port, method, path, headers, cred, max_time))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let bad_results: Vec<Vec<(u16, String)>> =
        bad.iter().map(|(_, cred, _)| column(cred, 15)).collect();
    let control_results: Vec<Vec<(u16, String)>> =
        controls.iter().map(|(_, cred)| column(cred, 3)).collect();

    // The matrix: rows endpoints, columns credentials; TLS = handshake
    // refused; a cell marked ! has the wrong status, LEAK gave the pod away.
    let mut wrong = vec![];
    let mut leaks = vec![];
    let mut matrix = format!("{:<28}", "endpoint \\ credential");
    for (name, _, _) in &bad {
        matrix.push_str(&format!("{name:>14}"));
    }
    for (name, _) in &controls {
        matrix.push_str(&format!("{name:>10}"));
    }
    matrix.push('\n');
    for (row, (label, method, path, _)) in endpoints.iter().enumerate() {
        matrix.push_str(&format!("{label:<28}"));
        for (col, (name, _, want)) in bad.iter().enumerate() {
            let (code, got) = &bad_results[col][row];
            let mut cell = if *code == 0 {
                "TLS".to_string()
            } else {
                code.to_string()
            };
            if !want.contains(code) {
                cell.push('!');
                wrong.push(format!(
                    "{method} {path} with {name}: got {code}, want one of {want:?}: {got}"
                ));
            }
            if canaries.iter().any(|c| got.contains(c)) {
                cell.push_str(" LEAK");
                leaks.push(format!("{method} {path} with {name}: {got}"));
            }
            matrix.push_str(&format!("{cell:>14}"));
        }
        for (col, (name, _)) in controls.iter().enumerate() {
            let (code, got) = &control_results[col][row];
            let mut cell = code.to_string();
            if [0, 401, 403].contains(code) {
                cell.push('!');
                wrong.push(format!(
                    "control: {method} {path} with {name} was refused ({code}): {got}"
                ));
            }
            matrix.push_str(&format!("{cell:>10}"));
        }
        matrix.push('\n');
    }
    let cells = endpoints.len() * bad.len();
    let refused = cells - wrong.iter().filter(|w| !w.starts_with("control")).count();
    eprintln!(
        "{matrix}{cells} cells, {refused} refused with the right status, {} leaks ({:.0?})",
        leaks.len(),
        started.elapsed()
    );
    assert!(wrong.is_empty(), "wrong statuses:\n{}", wrong.join("\n"));
    assert!(leaks.is_empty(), "the pod leaked:\n{}", leaks.join("\n"));

    // The controls read the pod: its output in the logs, its spec and uid
    // in the pod list, and the exec's output over the WebSocket.
    let row = |label: &str| endpoints.iter().position(|e| e.0 == label).unwrap();
    for (col, (name, _)) in controls.iter().enumerate() {
        let (code, got) = &control_results[col][row("containerLogs")];
        assert_eq!(*code, 200, "{name}");
        assert!(got.contains(&marker), "{name}: {got}");
        let (code, got) = &control_results[col][row("pods")];
        assert_eq!(*code, 200, "{name}");
        assert!(got.contains(&marker) && got.contains(&uid), "{name}: {got}");
    }
    // The refusals came from where they should: the handshake's alerts
    // name why the certificate did not verify (when the agent refuses
    // there; over TLS 1.2, where the client hears it within the
    // handshake), TokenReviews were asked about the tokens, and
    // SubjectAccessReviews denied eve and mallory.
    for (col, pki, alert) in [
        (1, stranger, "unknown ca"),
        (2, expired, "certificate expired"),
    ] {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-tls1_2", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", &pki.cert, "-key", &pki.key])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running openssl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(alert) || bad_results[col][0].0 != 0,
            "refused without the alert {alert:?}: {err}"
        );
    }
    let reviewed: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/tokenreviews"))
        .filter_map(|r| Some(r.body.as_ref()?["spec"]["token"].as_str()?.to_string()))
        .collect();
    for token in [unknown_token, expired_token.as_str(), "mallory-token"] {
        assert!(
            reviewed.iter().any(|t| t == token),
            "no TokenReview of {token}: {reviewed:?}"
        );
    }
    let reviews = api.access_reviews();
    for user in ["eve", "mallory"] {
        let theirs: Vec<&Value> = reviews
            .iter()
            .filter(|r| r["spec"]["user"] == user)
            .collect();
        assert!(!theirs.is_empty(), "no SubjectAccessReview for {user}");
        assert!(
            theirs.iter().all(|r| r["status"]["allowed"] == false),
            "{theirs:?}"
        );
    }
    assert!(
        !reviews.iter().any(|r| r["spec"]["user"] == "expired-admin"),
        "the expired certificate's user was authenticated"
    );
    node.stop_agent();
    eprintln!(
        "every_endpoint_refuses_every_bad_credential: {:.0?}",
        started.elapsed()
    );
}
