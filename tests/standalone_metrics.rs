//! Metrics in standalone mode, scraped by a real Prometheus: a sandbox node
//! runs the agent with a pod of two containers, a Prometheus started here
//! (Debian's `prometheus`) scrapes the agent's `--metrics-bind-address`
//! (sandbox nodes share the host's network), and its HTTP API must return
//! each container's cAdvisor series with the labels dashboards join on.

use unitlet_test_support as support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on the host's loopback: (head, body).
fn get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.to_string(), body.to_string()))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with its data in `dir`, scraping the agent's three
    /// metrics paths on `target` every second.
    fn start(dir: &Path, target: u16) -> Prometheus {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let job = |name: &str, path: &str| {
            format!(
                "- job_name: {name}\n  metrics_path: {path}\n  static_configs:\n  - targets: ['127.0.0.1:{target}']\n"
            )
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}",
            job("unitlet", "/metrics"),
            job("cadvisor", "/metrics/cadvisor"),
            job("probes", "/metrics/probes"),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting /usr/bin/prometheus (Debian's prometheus package)");
        Prometheus { child, port }
    }

    /// The result vector of an instant query, or `None` on any error.
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let (_, body) = get(
            self.port,
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        )
        .ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// Waits until `q` returns a result for which `ok` holds.
    fn wait(&self, what: &str, q: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + patient(60);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(r) = self.query(q) {
                if ok(&r) {
                    return r;
                }
                last = Some(r);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("Prometheus never returned {what} for {q}; last answer: {last:?}");
    }
}

fn with_container<'a>(series: &'a [Value], container: &str) -> Option<&'a Value> {
    series
        .iter()
        .find(|s| s["metric"]["container"].as_str().unwrap_or("") == container)
}

/// The whole path: a real Prometheus scrapes the agent and answers with
/// each container's CPU and memory, labelled as cAdvisor labels them, the
/// pod's own series, the probe counter and the kubelet's pod count; the
/// format is negotiated; and a non-loopback address is served over TLS.
#[test]
fn prometheus_scrapes_the_standalone_agent() {
    let mut node = Node::boot("metrics_prometheus");
    node.write_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: host
    command: [/bin/sh, -c, 'while :; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.2; done']
    readinessProbe:
      periodSeconds: 1
      exec: {command: [/bin/true]}
  - name: side
    image: host
    command: [/bin/sleep, infinity]
"#,
    );
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    node.start_agent(&["--metrics-bind-address", &bind]);
    node.wait_pod_in(
        "shop",
        "web",
        "both containers running",
        default_wait(),
        |p| running(p, "app") && running(p, "side"),
    );

    // Negotiation, over plain HTTP on loopback.
    let (head, body) = get(port, "/metrics/cadvisor", None).unwrap();
    // Kept beside the node's logs for a failed run's diagnosis.
    std::fs::write(node.dir.join("cadvisor.txt"), &body).unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(!body.contains("# EOF"), "{body}");
    assert!(body.contains("container_cpu_usage_seconds_total{container=\"app\",cpu=\"total\""));
    let (head, body) = get(
        port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (_, health) = get(port, "/healthz", None).unwrap();
    assert_eq!(health, "ok");

    let prom = Prometheus::start(&node.dir.join("prometheus"), port);
    for metric in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        let q = format!("{metric}{{namespace=\"shop\",pod=\"web\"}}");
        let series = prom.wait(&format!("{metric} of app, side and the pod"), &q, |r| {
            ["app", "side", ""]
                .iter()
                .all(|c| with_container(r, c).is_some())
        });
        for c in ["app", "side"] {
            let m = &with_container(&series, c).unwrap()["metric"];
            assert_eq!(m["image"], "host", "{metric} {m}");
            assert_eq!(m["namespace"], "shop");
            assert_eq!(m["pod"], "web");
            let unit = node.unit_of("shop", "web", c);
            assert_eq!(m["name"], unit.as_str(), "{m}");
            assert!(
                m["id"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(".slice/{unit}")),
                "{m}"
            );
        }
        let pod = &with_container(&series, "").unwrap()["metric"];
        // Empty labels (container, image, name) are no labels to Prometheus.
        for l in ["container", "image", "name"] {
            assert_eq!(pod[l].as_str().unwrap_or(""), "", "{pod}");
        }
        assert!(
            pod["id"].as_str().unwrap().starts_with("/unitlet.slice/"),
            "{pod}"
        );
        assert!(pod["id"].as_str().unwrap().ends_with(".slice"), "{pod}");
    }
    // CPU is counted: the busy container's counter grows.
    prom.wait(
        "a growing CPU counter",
        "increase(container_cpu_usage_seconds_total{pod=\"web\",container=\"app\"}[10s])",
        |r| {
            r.first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                > Some(0.0)
        },
    );
    let probes = prom.wait(
        "the readiness probe's successes",
        "prober_probe_total{probe_type=\"Readiness\",result=\"successful\",pod=\"web\",namespace=\"shop\",container=\"app\"}",
        |r| r.len() == 1 && r[0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0),
    );
    assert!(!probes[0]["metric"]["pod_uid"].as_str().unwrap().is_empty());
    prom.wait("one running pod", "kubelet_running_pods", |r| {
        r.len() == 1 && r[0]["value"][1] == "1"
    });
    prom.wait(
        "two running containers",
        "kubelet_running_containers{container_state=\"running\"}",
        |r| r.len() == 1 && r[0]["value"][1] == "2",
    );
    drop(prom);

    // Any other address: TLS with the self-signed certificate kept in the
    // state directory, and the log says so.
    node.stop_agent();
    let port = free_port();
    let bind = format!("0.0.0.0:{port}");
    node.start_agent(&["--metrics-bind-address", &bind]);
    node.wait_log("the HTTPS notice", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("metrics listening over HTTPS"))
    });
    let out = Command::new("curl")
        .args(["-sSk", "--max-time", "20"])
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("kubelet_node_name{node="), "{text}");
    // Plain HTTP is not served there.
    assert!(
        get(port, "/metrics", None).map_or(true, |(_, body)| !body.contains("kubelet_")),
        "plain HTTP answered on a non-loopback address"
    );
    assert!(node
        .sh("cat /var/lib/unitlet/metrics/kubelet.crt")
        .contains("BEGIN CERTIFICATE"));
    node.stop_agent();
}
