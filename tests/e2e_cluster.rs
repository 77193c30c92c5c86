//! The end-to-end tier: the real `unitlet node` in sandbox nodes with
//! addresses of their own, joined to a real control plane (kube-apiserver,
//! kube-controller-manager and kube-scheduler from KUBEBUILDER_ASSETS), and
//! driven with kubectl as a user would. Every node runs `unitlet node
//! --kubeconfig K --node-name N` with no other flag (out of the box: a
//! self-signed serving certificate, the cluster CA trusted for the API
//! server's client certificate), unless a test says otherwise.

use unitlet_test_support as support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::control_plane::{ClusterNode, ControlPlane, Options};
use support::*;

const TOLERATE: &str =
    r#"[{"key": "unitlet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]"#;

fn tolerations() -> Value {
    serde_json::from_str(TOLERATE).unwrap()
}

/// The pods of `ns` whose labels match `selector`, as the API server has them.
fn pods(cp: &ControlPlane, selector: &str) -> Vec<Value> {
    cp.items(&["pods", "-l", selector])
}

fn node_of(p: &Value) -> &str {
    p["spec"]["nodeName"].as_str().unwrap_or("")
}

fn name_of(p: &Value) -> &str {
    p["metadata"]["name"].as_str().unwrap_or("")
}

/// `(InvocationID, MainPID)` of every unitlet container unit on `node`.
fn unit_instances(node: &Node) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = node
        .units("unitlet_*.service")
        .into_iter()
        .map(|u| {
            let p = node.show(&u, &["InvocationID", "MainPID"]);
            (u, p["InvocationID"].clone(), p["MainPID"].clone())
        })
        .collect();
    out.sort();
    out
}

fn running_units(node: &Node, prefix: &str) -> Vec<String> {
    node.units(&format!("unitlet_default_{prefix}*.service"))
        .into_iter()
        .filter(|u| node.show(u, &["ActiveState"])["ActiveState"] == "active")
        .collect()
}

#[test]
fn deployment_daemonset_and_job_across_two_nodes_then_restart_scale_down_and_drain() {
    let cp = ControlPlane::start("workloads");
    let mut a = cp.boot_node("workloads-a");
    let mut b = cp.boot_node("workloads-b");
    a.start_agent(&cp, &[]);
    b.start_agent(&cp, &[]);
    let (an, bn) = (a.name.clone(), b.name.clone());

    // Node objects as the real API server keeps them, with our addresses.
    for n in [&a, &b] {
        let node = cp.get(&["node", &n.name]).unwrap();
        assert_eq!(node["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(node["status"]["addresses"][0]["address"], n.ip.as_str());
        let lease = cp
            .get(&["lease", "-n", "kube-node-lease", &n.name])
            .expect("the node's Lease");
        assert_eq!(lease["spec"]["holderIdentity"], n.name.as_str());
    }

    let trap = "trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done";
    cp.apply(
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "tolerations": tolerations(),
                        "terminationGracePeriodSeconds": 15,
                        "topologySpreadConstraints": [{
                            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app": "web"}}
                        }],
                        "containers": [{"name": "c", "image": "host", "command": ["/bin/sh", "-c", trap]}]
                    }
                }
            }
        })
        .to_string(),
    );
    cp.apply(
        &json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {
                        "tolerations": tolerations(),
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{"name": "c", "image": "host", "command": ["/bin/sh", "-c", trap]}]
                    }
                }
            }
        })
        .to_string(),
    );
    cp.apply(
        &json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "once"},
            "spec": {
                "completions": 2, "parallelism": 2, "backoffLimit": 0,
                "template": {
                    "spec": {
                        "tolerations": tolerations(),
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "host", "command": ["/bin/sh", "-c", "echo done"]}]
                    }
                }
            }
        })
        .to_string(),
    );

    cp.wait("4 web pods available", patient(90), || {
        let d = cp.get(&["deployment", "web"])?;
        (d["status"]["availableReplicas"] == 4).then_some(())
    });
    cp.wait("the DaemonSet ready on both nodes", patient(60), || {
        let d = cp.get(&["daemonset", "agent"])?;
        (d["status"]["numberReady"] == 2 && d["status"]["desiredNumberScheduled"] == 2)
            .then_some(())
    });
    cp.wait("the Job complete", patient(90), || {
        let j = cp.get(&["job", "once"])?;
        let complete = j["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Complete" && c["status"] == "True");
        (complete && j["status"]["succeeded"] == 2).then_some(())
    });

    // Every pod runs as a unit on the node it is bound to, with that
    // node's address as hostIP and podIP.
    let web = pods(&cp, "app=web");
    assert_eq!(web.len(), 4);
    for n in [&a, &b] {
        assert!(
            web.iter().any(|p| node_of(p) == n.name),
            "no web pod on {}: the scheduler used one node",
            n.name
        );
    }
    for p in web.iter().chain(&pods(&cp, "app=agent")) {
        let n: &ClusterNode = if node_of(p) == an { &a } else { &b };
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["hostIP"], n.ip.as_str());
        assert_eq!(p["status"]["podIP"], n.ip.as_str());
        let unit = n.unit_of("default", name_of(p), "c");
        assert_eq!(n.show(&unit, &["ActiveState"])["ActiveState"], "active");
    }
    for p in pods(&cp, "job-name=once") {
        assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
        let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 0);
        assert_eq!(t["reason"], "Completed");
    }

    // kill -9 of the agent restarts nothing.
    let before = unit_instances(&a);
    let pki_before = a.sh("cat /var/lib/unitlet/pki/kubelet.crt");
    a.kill_agent_9();
    a.start_agent(&cp, &[]);
    a.wait_synced();
    std::thread::sleep(patient(5)); // a few relists
    assert_eq!(unit_instances(&a), before, "a unit was restarted or lost");
    for p in pods(&cp, "app in (web, agent)") {
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    }
    assert_eq!(
        a.sh("cat /var/lib/unitlet/pki/kubelet.crt"),
        pki_before,
        "the self-signed serving certificate is kept across restarts"
    );

    // Scale-down and graceful deletion stop the units.
    cp.kubectl_ok(&["scale", "deployment", "web", "--replicas=2"]);
    cp.wait("2 web pods left", patient(60), || {
        let left = pods(&cp, "app=web");
        let units = running_units(&a, "web-").len() + running_units(&b, "web-").len();
        (left.len() == 2 && units == 2).then_some(())
    });
    let victim = pods(&cp, "app=web")[0].clone();
    let vn: &ClusterNode = if node_of(&victim) == an { &a } else { &b };
    let unit = vn.unit_of("default", name_of(&victim), "c");
    cp.kubectl_ok(&[
        "delete",
        "pod",
        name_of(&victim),
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        vn.units(&unit).is_empty() || vn.show(&unit, &["ActiveState"])["ActiveState"] != "active",
        "the deleted pod's unit still runs"
    );
    let said = vn.sh(&format!(
        "journalctl --no-pager -o cat _SYSTEMD_UNIT={unit}"
    ));
    assert!(
        said.contains("bye"),
        "SIGTERM did not reach the container: {said:?}"
    );

    // Drain b through the Eviction API: its web pods leave (the
    // replacements land on a, b being cordoned), the DaemonSet pod stays.
    cp.wait("the replacement pod", patient(60), || {
        (cp.get(&["deployment", "web"])?["status"]["availableReplicas"] == 2).then_some(())
    });
    let out = cp.kubectl_ok(&[
        "drain",
        &bn,
        "--ignore-daemonsets",
        "--timeout=90s",
        "--grace-period=5",
    ]);
    assert!(out.contains("drained"), "{out}");
    cp.wait(
        "web pods only on a, units on b stopped",
        patient(60),
        || {
            let web = pods(&cp, "app=web");
            let on_a = web.iter().all(|p| node_of(p) == an);
            (web.len() == 2 && on_a && running_units(&b, "web-").is_empty()).then_some(())
        },
    );
    assert_eq!(
        running_units(&b, "agent-").len(),
        1,
        "the DaemonSet pod stays"
    );
    let evictions = cp.items(&["events", "--field-selector", "reason=Killing"]);
    assert!(!evictions.is_empty(), "no Killing events from the nodes");
}

/// Reads lines from a child's stdout until `pred` holds for the text so far.
fn read_until(child: &mut Child, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drain to the end even when nobody listens any more: a closed
        // pipe would kill the child (kubectl port-forward writes a line per
        // connection).
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            text.push_str(&line);
            text.push('\n');
            if pred(&text) {
                return text;
            }
        }
    }
    let _ = child.kill();
    panic!("timed out reading; got {text:?}");
}

fn talker_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {
            "tolerations": tolerations(),
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {"name": "c", "image": "host", "command": ["/bin/sh", "-c",
                    "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.3; done"]},
                {"name": "crash", "image": "host", "command": ["/bin/sh", "-c",
                    "echo instance-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1"]},
                {"name": "web", "image": "host", "command": ["/usr/bin/python3", "-m", "http.server",
                    "18080", "--bind", "127.0.0.1", "--directory", "/etc"]}
            ]
        }
    })
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// logs, exec, attach, port-forward and cp with one kubectl.
fn streams_with(cp: &ControlPlane, node: &ClusterNode, kubectl: &dyn Fn() -> Command, tag: &str) {
    let run = |args: &[&str]| kubectl().args(args).output().expect("running kubectl");

    // logs: tail, timestamps, since, previous, follow.
    let tail = ok(
        run(&["logs", "talker", "-c", "c", "--tail=2"]),
        "logs --tail",
    );
    assert_eq!(tail.lines().count(), 2, "{tag}: {tail:?}");
    assert!(
        tail.lines().all(|l| l.starts_with("line ")),
        "{tag}: {tail:?}"
    );
    let ts = ok(
        run(&["logs", "talker", "-c", "c", "--tail=1", "--timestamps"]),
        "logs --timestamps",
    );
    let stamp = ts.split_whitespace().next().unwrap_or("");
    assert!(
        stamp.parse::<jiff::Timestamp>().is_ok() && ts.contains(" line "),
        "{tag}: {ts:?}"
    );
    let all = ok(run(&["logs", "talker", "-c", "c"]), "logs");
    let recent = ok(
        run(&["logs", "talker", "-c", "c", "--since=2s"]),
        "logs --since",
    );
    assert!(
        !recent.is_empty() && recent.lines().count() < all.lines().count(),
        "{tag}: --since=2s gave {} of {} lines",
        recent.lines().count(),
        all.lines().count()
    );
    let previous = ok(
        run(&["logs", "talker", "-c", "crash", "--previous"]),
        "logs --previous",
    );
    let current = ok(run(&["logs", "talker", "-c", "crash"]), "logs");
    assert!(previous.starts_with("instance-"), "{tag}: {previous:?}");
    assert_ne!(
        previous, current,
        "{tag}: --previous shows the current instance"
    );
    let mut follow = kubectl()
        .args(["logs", "-f", "talker", "-c", "c", "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = read_until(&mut follow, patient(20), |t| t.lines().count() >= 4);
    let _ = follow.kill();
    let _ = follow.wait();
    let nums: Vec<u64> = got
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "{tag}: followed lines out of order: {got:?}"
    );

    // exec: stdin, exit code, terminal.
    let mut cat = kubectl()
        .args(["exec", "-i", "talker", "-c", "c", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = ok(cat.wait_with_output().unwrap(), "exec -i cat");
    assert_eq!(out, "through stdin\n", "{tag}");
    let code = run(&["exec", "talker", "-c", "c", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code.status.code(), Some(7), "{tag}: {code:?}");
    let prog = kubectl().get_program().to_string_lossy().into_owned();
    let kc = cp.admin_kubeconfig();
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "KUBECONFIG={} {prog} exec -it talker -c c -- sh -c 'tty; stty size'",
            kc.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let tty = ok(tty, "exec -it");
    assert!(tty.contains("/dev/pts/"), "{tag}: no terminal: {tty:?}");

    // attach: the container's output from now on.
    let mut attach = kubectl()
        .args(["attach", "talker", "-c", "c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = read_until(&mut attach, patient(20), |t| {
        t.lines().filter(|l| l.starts_with("line ")).count() >= 2
    });
    let _ = attach.kill();
    let _ = attach.wait();
    assert!(seen.contains("line "), "{tag}: {seen:?}");

    // port-forward to the pod's port (on the node's loopback).
    let mut pf = kubectl()
        .args(["port-forward", "pod/talker", ":18080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_until(&mut pf, patient(20), |t| t.contains("Forwarding from"));
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{tag}: no port in {line:?}"));
    let page = Command::new("curl")
        .args(["-sSfv", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/passwd"))
        .output()
        .unwrap();
    let _ = pf.kill();
    let pf_err = pf
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(
        page.status.success(),
        "{tag}: curl through port-forward: {}\n{}\nkubectl: {line}{pf_err:?}",
        page.status,
        String::from_utf8_lossy(&page.stderr)
    );
    assert_eq!(
        ok(page, "curl through port-forward").trim(),
        node.sh("cat /etc/passwd").trim(),
        "{tag}"
    );

    // cp both ways (tar through exec).
    let local = node.dir.join(format!("cp-{tag}.txt"));
    std::fs::write(&local, format!("copied by {tag}\n")).unwrap();
    let inside = node.path(&format!("cp-{tag}-in-pod.txt"));
    ok(
        run(&[
            "cp",
            &local.to_string_lossy(),
            &format!("talker:{inside}"),
            "-c",
            "c",
        ]),
        "cp to the pod",
    );
    assert_eq!(
        std::fs::read_to_string(&inside).unwrap(),
        format!("copied by {tag}\n")
    );
    let back = node.dir.join(format!("cp-{tag}-back.txt"));
    ok(
        run(&[
            "cp",
            "talker:/etc/passwd",
            &back.to_string_lossy(),
            "-c",
            "c",
        ]),
        "cp from the pod",
    );
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        node.sh("cat /etc/passwd")
    );
}

#[test]
fn kubectl_logs_exec_attach_port_forward_cp_stats_and_token_on_a_real_api_server() {
    let cp = ControlPlane::start("streams");
    let mut node = cp.boot_node("streams");
    node.start_agent(&cp, &[]);
    cp.apply(&talker_pod().to_string());
    cp.wait("talker running, crash restarted once", patient(60), || {
        let p = cp.get(&["pod", "talker"])?;
        let cs = p["status"]["containerStatuses"].as_array()?;
        let ready = |n: &str| {
            cs.iter()
                .any(|c| c["name"] == n && c["state"]["running"].is_object())
        };
        let crash = cs.iter().find(|c| c["name"] == "crash")?;
        (ready("c") && ready("web") && crash["restartCount"].as_i64()? >= 1).then_some(())
    });

    cp.wait("talker to have talked for a while", patient(30), || {
        let o = cp.kubectl_output(&["logs", "talker", "-c", "c"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("line 15\n")
            .then_some(())
    });
    streams_with(&cp, &node, &|| cp.kubectl(), "websocket");
    streams_with(&cp, &node, &|| cp.old_kubectl(), "spdy");

    // Stats and metrics through nodes/proxy (the node's own address).
    let name = node.name.clone();
    let raw =
        |path: &str| cp.kubectl_ok(&["get", "--raw", &format!("/api/v1/nodes/{name}/proxy{path}")]);
    let summary: Value = serde_json::from_str(&raw("/stats/summary")).unwrap();
    assert_eq!(summary["node"]["nodeName"], name.as_str());
    let talker = summary["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "talker")
        .expect("talker in the summary")
        .clone();
    let c = talker["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "web")
        .expect("container web in the summary");
    assert!(
        c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0,
        "no CPU for a running container: {c}"
    );
    assert!(
        c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 1 << 20,
        "no memory for a running python: {c}"
    );
    let resource = raw("/metrics/resource");
    assert!(
        resource
            .lines()
            .any(|l| l.starts_with("container_memory_working_set_bytes{")
                && l.contains("container=\"web\"")
                && l.contains("pod=\"talker\"")),
        "{resource}"
    );
    assert!(raw("/metrics").contains("unitlet_pods"));

    // This machine's sandbox nodes give units no memory or cpu control
    // group: the agent says so once, and on the Node as a Warning event.
    let said: Vec<String> = node
        .agent_lines()
        .into_iter()
        .filter_map(|l| l["message"].as_str().map(str::to_string))
        .filter(|m| m.contains("control group"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    let warned = cp.wait("the cgroup Warning event", patient(20), || {
        cp.items(&[
            "events",
            "--field-selector",
            "reason=CgroupControllersUnavailable",
        ])
        .into_iter()
        .find(|e| {
            e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == name.as_str()
        })
    });
    assert_eq!(warned["type"], "Warning");
    assert!(
        warned["message"].as_str().unwrap().contains("memory"),
        "{warned}"
    );
    assert_eq!(raw("/healthz"), "ok");

    // The ServiceAccount token admission injected: the API server accepts it
    // as the pod's service account, bound to the pod.
    let pod = cp.get(&["pod", "talker"]).unwrap();
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("kube-api-access-")
        })
        .expect("admission added the token volume")
        .clone();
    assert!(volume["projected"].is_object());
    let token = cp.kubectl_ok(&[
        "exec",
        "talker",
        "-c",
        "c",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    let ca = cp.kubectl_ok(&[
        "exec",
        "talker",
        "-c",
        "c",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    ]);
    assert_eq!(ca, cp.ca_pem());
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token.trim()}
    });
    let mut child = cp
        .kubectl()
        .args(["create", "-f", "-", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(review.to_string().as_bytes())
        .unwrap();
    let review: Value =
        serde_json::from_str(&ok(child.wait_with_output().unwrap(), "TokenReview")).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "talker"
    );
}

#[test]
fn static_pod_mirror_serving_certificate_from_a_csr_and_authorizer_lag() {
    // The API server verifies kubelets' serving certificates here, so logs
    // work only once the node's CSR is approved and signed.
    let cp = ControlPlane::start_with(
        "certs",
        Options {
            verify_kubelets: true,
        },
    );
    let mut node = cp.boot_node("certs");
    let manifests = node.manifests.to_string_lossy().into_owned();
    std::fs::write(
        node.dir.join("config.yaml"),
        format!("manifests: {manifests}\n"),
    )
    .unwrap();
    node.write_json_manifest(
        "static.json",
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "static", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "host",
                "command": ["/bin/sh", "-c", "echo static-up; exec sleep infinity"]}]}
        }),
    );
    let config = node.path("config.yaml");
    node.start_agent(&cp, &["--config", &config, "--rotate-server-certificates"]);
    let mirror = format!("static-{}", node.name);
    let m = cp.wait("the mirror pod running", patient(60), || {
        let p = cp.get(&["pod", &mirror])?;
        (p["status"]["phase"] == "Running").then_some(p)
    });
    assert!(m["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    assert_eq!(m["metadata"]["ownerReferences"][0]["kind"], "Node");

    // The CSR: kubelet-serving, from the node, approved by an admin.
    let csr = cp.wait("the node's serving CSR", patient(30), || {
        cp.items(&["csr"])
            .into_iter()
            .find(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving")
    });
    assert_eq!(
        csr["spec"]["username"],
        format!("system:node:{}", node.name).as_str()
    );
    let refused = cp.kubectl_output(&["logs", &mirror]);
    assert!(!refused.status.success(), "logs before the certificate");
    cp.kubectl_ok(&[
        "certificate",
        "approve",
        csr["metadata"]["name"].as_str().unwrap(),
    ]);
    let logs = cp.wait(
        "logs through a verified serving certificate",
        patient(60),
        || {
            let out = cp.kubectl_output(&["logs", &mirror]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(logs, "static-up\n");
    let pem = node.sh("cat /var/lib/unitlet/pki/kubelet-server-current.pem");
    assert!(pem.contains("BEGIN CERTIFICATE"));

    // Pods bound straight to the node, each naming a Secret and a
    // ConfigMap created just before: the Node authorizer's graph may lag
    // and answer 403 for a moment; every pod still starts, none crash-loops.
    let n = 8;
    for i in 0..n {
        cp.apply(
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("s{i}")},
                 "stringData": {"k": format!("secret-{i}")}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("m{i}")},
                 "data": {"f": format!("config-{i}")}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("bound{i}")},
                 "spec": {
                    "nodeName": node.name, "tolerations": tolerations(),
                    "volumes": [{"name": "m", "configMap": {"name": format!("m{i}")}}],
                    "containers": [{"name": "c", "image": "host",
                        "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": format!("s{i}"), "key": "k"}}}],
                        "volumeMounts": [{"name": "m", "mountPath": "/etc/unitlet-e2e-m"}],
                        "command": ["/bin/sh", "-c", "echo $S $(cat /etc/unitlet-e2e-m/f); exec sleep infinity"]}]
                 }}
            ]})
            .to_string(),
        );
    }
    for i in 0..n {
        let name = format!("bound{i}");
        let p = cp.wait(&format!("{name} running"), patient(90), || {
            let p = cp.get(&["pod", &name])?;
            (p["status"]["phase"] == "Running").then_some(p)
        });
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
        let out = cp.wait(&format!("{name}'s output"), patient(20), || {
            let o = cp.kubectl_output(&["logs", &name]);
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            (!s.is_empty()).then_some(s)
        });
        assert_eq!(out, format!("secret-{i} config-{i}\n"));
    }
    let forbidden = node
        .agent_log()
        .lines()
        .filter(|l| l.contains("403") || l.contains("Forbidden") || l.contains("forbidden"))
        .count();
    println!("agent log lines with a 403 from the API server: {forbidden}");
}

/// `(MainPID, InvocationID, NRestarts)` of a unit.
fn instance_of_unit(node: &Node, unit: &str) -> (String, String) {
    let p = node.show(unit, &["MainPID", "InvocationID"]);
    (p["MainPID"].clone(), p["InvocationID"].clone())
}

fn container_status<'a>(p: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    p["status"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn live_pods_debug_resize_pod_level_resources_and_deadline_on_a_real_api_server() {
    let cp = ControlPlane::start("live");
    let mut node = cp.boot_node("live");
    node.start_agent(&cp, &[]);
    let sized = |cpu: &str, mem: &str| json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"cpu": cpu, "memory": mem}});
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "svc", "labels": {"app": "svc"}},
            "spec": {
                "tolerations": tolerations(),
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "c", "image": "host",
                    "command": ["/bin/sh", "-c", "echo from-the-target > /data/mark; exec sleep 100000"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": sized("200m", "64Mi")
                }]
            }
        })
        .to_string(),
    );
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "capped"},
            "spec": {
                "tolerations": tolerations(),
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "100000"]}]
            }
        })
        .to_string(),
    );
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "deadline"},
            "spec": {
                "tolerations": tolerations(),
                "activeDeadlineSeconds": 4,
                "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "100000"]}]
            }
        })
        .to_string(),
    );
    cp.wait(
        "svc running with its resources in the status",
        patient(60),
        || {
            let p = cp.get(&["pod", "svc"])?;
            let c = container_status(&p, "containerStatuses", "c")?;
            (c["state"]["running"].is_object() && c["resources"]["limits"]["memory"] == "64Mi")
                .then_some(())
        },
    );
    let unit = node.unit_of("default", "svc", "c");
    let before = instance_of_unit(&node, &unit);

    // kubectl debug: the debug container sees the target's files and processes.
    cp.kubectl_ok(&[
        "debug",
        "svc",
        "--image=host",
        "--target=c",
        "--container=dbg",
        "--",
        "/bin/sh",
        "-c",
        "cat /data/mark; ps -e -o pid=,args=; exec sleep 100000",
    ]);
    let pid = before.0.clone();
    let last = std::cell::RefCell::new(String::new());
    let explain = || {
        format!(
            "last output: {}\nephemeral status: {}\nagent: {}",
            last.borrow(),
            cp.get(&["pod", "svc"])
                .map(|p| p["status"]["ephemeralContainerStatuses"].clone())
                .unwrap_or_default(),
            node.agent_log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let deadline = Instant::now() + patient(60);
    loop {
        let o = cp.kubectl_output(&["logs", "svc", "-c", "dbg"]);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if out.contains("from-the-target")
            && out.lines().any(|l| {
                l.trim_start().starts_with(&format!("{pid} ")) && l.contains("sleep 100000")
            })
        {
            break;
        }
        *last.borrow_mut() = out;
        assert!(
            Instant::now() < deadline,
            "the debug container's output: {}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    cp.wait(
        "dbg running in ephemeralContainerStatuses",
        patient(30),
        || {
            let p = cp.get(&["pod", "svc"])?;
            let c = container_status(&p, "ephemeralContainerStatuses", "dbg")?;
            c["state"]["running"].is_object().then_some(())
        },
    );
    let dbg = node.unit_of("default", "svc", "dbg");
    assert_eq!(
        node.show(&dbg, &["Slice"])["Slice"],
        node.show(&unit, &["Slice"])["Slice"],
        "in the pod's slice"
    );
    assert_eq!(
        instance_of_unit(&node, &unit),
        before,
        "the target was not touched"
    );

    // kubectl debug -it: a terminal attached to the debug container's shell.
    let kc = cp.admin_kubeconfig();
    let mut shell = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "KUBECONFIG={} kubectl debug -it svc --image=host --target=c --container=shell -- /bin/sh",
            kc.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = shell.stdin.take().unwrap();
    cp.wait("the shell container running", patient(60), || {
        let p = cp.get(&["pod", "svc"])?;
        let c = container_status(&p, "ephemeralContainerStatuses", "shell")?;
        c["state"]["running"].is_object().then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    if let Err(e) = input.write_all(b"cat /data/mark; tty; echo done-$((40+2)); exit 5\n") {
        drop(input);
        let out = shell.wait_with_output().unwrap();
        panic!(
            "kubectl debug -it ended early ({e}): {}\n{}\nagent: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node.agent_log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let typed = read_until(&mut shell, patient(30), |t| t.contains("done-42"));
    drop(input);
    let _ = shell.wait();
    assert!(typed.contains("from-the-target"), "{typed:?}");
    assert!(typed.contains("/dev/pts/"), "a terminal: {typed:?}");
    cp.wait("the shell ended with its exit code", patient(30), || {
        let p = cp.get(&["pod", "svc"])?;
        let c = container_status(&p, "ephemeralContainerStatuses", "shell")?;
        (c["state"]["terminated"]["exitCode"] == 5 && c["restartCount"] == 0).then_some(())
    });
    assert_eq!(
        instance_of_unit(&node, &unit),
        before,
        "the target was not touched"
    );

    // In-place resize, up then down: the unit's limits change, its process stays.
    let resize = |cpu: &str, mem: &str| {
        let patch = json!({"spec": {"containers": [{"name": "c", "resources": sized(cpu, mem)}]}});
        let patch = patch.to_string();
        cp.kubectl_ok(&[
            "patch",
            "pod",
            "svc",
            "--subresource",
            "resize",
            "-p",
            &patch,
        ]);
    };
    for (cpu, mem, quota, bytes) in [
        ("400m", "96Mi", "400ms", 96u64 << 20),
        ("100m", "48Mi", "100ms", 48 << 20),
    ] {
        resize(cpu, mem);
        cp.wait(&format!("{cpu}/{mem} on the unit"), patient(30), || {
            let p = node.show(&unit, &["MemoryMax", "CPUQuotaPerSecUSec"]);
            (p["MemoryMax"] == bytes.to_string() && p["CPUQuotaPerSecUSec"] == quota).then_some(())
        });
        cp.wait(&format!("{cpu}/{mem} in the status"), patient(30), || {
            let p = cp.get(&["pod", "svc"])?;
            let c = container_status(&p, "containerStatuses", "c")?;
            let done = c["resources"]["limits"]["memory"] == mem
                && c["allocatedResources"]["cpu"] == cpu
                && !p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "PodResizeInProgress");
            done.then_some(())
        });
        assert_eq!(
            instance_of_unit(&node, &unit),
            before,
            "resized without a restart"
        );
    }
    let p = cp.get(&["pod", "svc"]).unwrap();
    assert_eq!(
        container_status(&p, "containerStatuses", "c").unwrap()["restartCount"],
        0
    );
    assert_eq!(
        p["status"]["observedGeneration"],
        p["metadata"]["generation"]
    );

    // More CPU than is free beside the other pods: pending, Deferred,
    // nothing applied. (More than the node has at all is refused by the
    // API server itself since 1.36.)
    let allocatable = cp.get(&["node", &node.name]).unwrap()["status"]["allocatable"]["cpu"]
        .as_str()
        .unwrap()
        .to_string();
    let cap = unitlet::core::quantity::cpu_millis(&allocatable).unwrap();
    // capped (500m, its pod-level limit) and svc (100m) hold 600m: a pod
    // taking all but 400m of the rest leaves svc 400m to grow into.
    let hog = cap - 600 - 400;
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "hog"},
            "spec": {
                "tolerations": tolerations(),
                "containers": [{"name": "c", "image": "host", "command": ["/bin/sleep", "100000"],
                    "resources": {"requests": {"cpu": format!("{hog}m")}}}]
            }
        })
        .to_string(),
    );
    cp.wait("hog running", patient(60), || {
        let p = cp.get(&["pod", "hog"])?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    resize("600m", "48Mi");
    let cond = cp.wait("PodResizePending Deferred", patient(30), || {
        let p = cp.get(&["pod", "svc"])?;
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodResizePending" && c["reason"] == "Deferred")
            .cloned()
    });
    assert_eq!(
        cond["message"],
        format!(
            "Node didn't have enough resource: cpu, requested: 600, used: {}, capacity: {cap}",
            hog + 500
        )
        .as_str()
    );
    assert_eq!(
        node.show(&unit, &["CPUQuotaPerSecUSec"])["CPUQuotaPerSecUSec"],
        "100ms"
    );
    assert_eq!(instance_of_unit(&node, &unit), before);
    // Room made: the deferred resize goes through.
    cp.kubectl_ok(&["delete", "pod", "hog", "--wait=true", "--timeout=60s"]);
    cp.wait("the deferred resize applied", patient(30), || {
        (node.show(&unit, &["CPUQuotaPerSecUSec"])["CPUQuotaPerSecUSec"] == "600ms").then_some(())
    });
    assert_eq!(instance_of_unit(&node, &unit), before);

    // Pod-level resources on the pod's slice.
    let capped = node.unit_of("default", "capped", "c");
    let slice = node.show(&capped, &["Slice"])["Slice"].clone();
    let s = node.show(&slice, &["MemoryMax", "CPUQuotaPerSecUSec"]);
    assert_eq!(s["MemoryMax"], (128u64 << 20).to_string(), "{slice}: {s:?}");
    assert_eq!(s["CPUQuotaPerSecUSec"], "500ms", "{slice}: {s:?}");

    // activeDeadlineSeconds: Failed, DeadlineExceeded, its container stopped.
    let p = cp.wait("deadline Failed", patient(60), || {
        let p = cp.get(&["pod", "deadline"])?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(p["status"]["reason"], "DeadlineExceeded");
    assert_eq!(
        p["status"]["message"],
        unitlet::core::live::DEADLINE_MESSAGE
    );
    let d = node.unit_of("default", "deadline", "c");
    cp.wait("the deadline pod's process gone", patient(30), || {
        (node.show(&d, &["MainPID"])["MainPID"] == "0").then_some(())
    });

    // Deleting the pod stops the debug container with the rest.
    cp.kubectl_ok(&["delete", "pod", "svc", "--wait=true", "--timeout=60s"]);
    assert!(
        node.units("unitlet_default_svc_*.service")
            .iter()
            .all(|u| node.show(u, &["ActiveState"])["ActiveState"] != "active"),
        "every unit of svc stopped"
    );
}

/// Images on the real control plane: a Deployment of an OCI image from a
/// registry that needs credentials (an `imagePullSecrets` Secret) and is
/// reached over plain HTTP because the node names it insecure; the
/// kubelet's events, `imageID`, the Node's `status.images`; a rollout to a
/// new image; an image that does not exist waits in `ErrImagePull` and
/// then `ImagePullBackOff`.
#[test]
fn oci_images_pull_secrets_rollout_and_pull_errors_on_a_real_api_server() {
    use support::registry::{self, Layout, Registry};
    if !registry::missing_tools().is_empty() {
        eprintln!("skipping: {:?} not installed", registry::missing_tools());
        return;
    }
    let cp = ControlPlane::start("images");
    let ip: std::net::IpAddr = cp.host_ip().parse().unwrap();
    let reg = Registry::start_on(ip, Some(("puller".into(), "s3cret".into())));
    let layout = Layout::busybox();
    layout.whiteout();
    let d1 = reg.push(&layout.path(), "v1", "e2e/bb", "v1", &[]);
    let d2 = reg.push(&layout.path(), "v2", "e2e/bb", "v2", &[]);
    let host = reg.host();
    let mut node = cp.boot_node("images");
    node.start_agent(&cp, &["--insecure-registries", &host]);
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("puller:s3cret");
    let dockercfg = json!({"auths": {host.clone(): {"auth": auth}}}).to_string();
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred"},
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(dockercfg)}
        })
        .to_string(),
    );
    let deployment = |tag: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bb"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "bb"}},
                "template": {
                    "metadata": {"labels": {"app": "bb"}},
                    "spec": {
                        "tolerations": tolerations(),
                        "terminationGracePeriodSeconds": 2,
                        "imagePullSecrets": [{"name": "regcred"}],
                        "containers": [{
                            "name": "c", "image": format!("{host}/e2e/bb:{tag}"),
                            "args": ["echo ids=$(id -u):$(id -g); exec sleep 100000"]
                        }]
                    }
                }
            }
        })
        .to_string()
    };
    let running_with = |digest: &str| {
        let want = format!("{host}/e2e/bb@{digest}");
        cp.wait(&format!("2 pods running {want}"), patient(90), || {
            let ps = pods(&cp, "app=bb");
            let ok: Vec<&Value> = ps
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["containerStatuses"][0]["imageID"] == want.as_str()
                        && !p["status"]["containerStatuses"][0]["state"]["running"].is_null()
                })
                .collect();
            (ok.len() == 2).then(|| {
                ok.iter()
                    .map(|p| name_of(p).to_string())
                    .collect::<Vec<_>>()
            })
        })
    };
    cp.apply(&deployment("v1"));
    let first = running_with(&d1);
    let events = cp.items(&[
        "events",
        "--field-selector",
        &format!("involvedObject.name={}", first[0]),
    ]);
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    for want in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(reasons.contains(&want), "{want} in {reasons:?}");
    }
    // The node lists what it stores (its status is written every 10 s).
    let want = format!("{host}/e2e/bb@{d1}");
    cp.wait("the image in the Node's status.images", patient(30), || {
        let n = cp.get(&["node", &node.name])?;
        let images = n["status"]["images"].as_array()?.clone();
        images
            .iter()
            .any(|i| {
                i["sizeBytes"].as_i64().unwrap_or(0) > 0
                    && i["names"]
                        .as_array()
                        .is_some_and(|ns| ns.iter().any(|x| x == want.as_str()))
            })
            .then_some(())
    });

    // A rollout: new pods run the new image; the old ones go.
    cp.apply(&deployment("v2"));
    let second = running_with(&d2);
    assert!(second.iter().all(|p| !first.contains(p)));

    // An image that does not exist: ErrImagePull, then ImagePullBackOff.
    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "missing"},
            "spec": {
                "tolerations": tolerations(),
                "imagePullSecrets": [{"name": "regcred"}],
                "containers": [{"name": "c", "image": format!("{host}/e2e/nope:v1")}]
            }
        })
        .to_string(),
    );
    let mut seen = std::collections::BTreeSet::new();
    cp.wait("ErrImagePull then ImagePullBackOff", patient(60), || {
        let p = cp.get(&["pod", "missing"])?;
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        if let Some(r) = w["reason"].as_str() {
            assert!(
                r != "ImagePullBackOff" || w["message"].as_str().unwrap_or("").contains("e2e/nope"),
                "{w}"
            );
            seen.insert(r.to_string());
        }
        (seen.contains("ErrImagePull") && seen.contains("ImagePullBackOff")).then_some(())
    });
    let events = cp.items(&["events", "--field-selector", "involvedObject.name=missing"]);
    let failed = events
        .iter()
        .find(|e| {
            e["reason"] == "Failed"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Failed to pull image")
        })
        .unwrap_or_else(|| panic!("a Failed event: {events:?}"));
    assert_eq!(failed["type"], "Warning");
}
