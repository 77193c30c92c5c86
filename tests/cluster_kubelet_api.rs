//! The kubelet HTTPS API of a real `unitlet node` in a sandbox node, called
//! with curl the way the API server and metrics-server call a kubelet:
//! TLS, client certificates against `--client-ca-file`, and what a caller
//! without credentials gets.

mod support;

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

fn client_pki(node: &Node, prefix: &str, cn: &str, org: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{prefix} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        std::fs::write(node.dir.join(name), pem).unwrap();
        node.path(name)
    };
    Pki {
        ca: write(&format!("{prefix}-ca.pem"), ca.pem()),
        cert: write(&format!("{prefix}-cert.pem"), cert.pem()),
        key: write(&format!("{prefix}-key.pem"), key.serialize_pem()),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

#[test]
fn logs_pods_and_healthz_over_tls_with_client_certificates() {
    let api = ApiServer::start();
    let mut node = Node::boot("kubelet_api_logs");
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    let masters = client_pki(
        &node,
        "apiserver",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let stranger = client_pki(&node, "other", "intruder", "system:masters");
    let port = free_port();
    let port_s = port.to_string();
    node.start_node_agent(
        &kc,
        &[
            "--port",
            &port_s,
            "--self-signed-serving-cert",
            "--client-ca-file",
            &masters.ca,
            "--authorization-mode",
            "AlwaysAllow",
        ],
    );
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
