//! Cluster mode end to end: the real `unitlet node` in a sandbox node,
//! against the test API server (tests/support/apiserver). What is asserted
//! is what a cluster sees: the Node and Lease objects, pod status written
//! back, pod objects removed after graceful deletion, and the units on the
//! node.

use unitlet_test_support as support;

use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::*;

fn cond<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn join(test: &str) -> (ApiServer, Node) {
    join_with(ApiServer::start(), test, false)
}

/// Joins over HTTPS, as a real cluster is reached: the kubeconfig trusts
/// the server's CA and authenticates with a client certificate for
/// `system:node:<node>`.
fn join_tls(test: &str) -> (ApiServer, Node) {
    join_with(ApiServer::start_tls(), test, true)
}

fn join_with(api: ApiServer, test: &str, client_cert: bool) -> (ApiServer, Node) {
    let mut node = Node::boot(test);
    let kc = node.dir.join("kubeconfig");
    if client_cert {
        api.write_kubeconfig_client_cert(&kc, &format!("system:node:{}", node.name));
    } else {
        api.write_kubeconfig(&kc);
    }
    node.start_node_agent(&kc, &[]);
    let name = node.name.clone();
    node.wait_for("the Node to be Ready", default_wait(), || {
        let n = api.get("nodes", None, &name)?;
        (cond(&n, "Ready")?["status"] == "True").then_some(())
    });
    (api, node)
}

fn sleeper(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 20,
            "containers": [{
                "name": "c",
                "image": "host",
                "command": ["/bin/sh", "-c", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"]
            }]
        }
    })
}

#[test]
fn node_registers_with_host_facts_and_renews_its_lease() {
    let (api, mut node) = join("node_registers");
    let n = api.get("nodes", None, &node.name).unwrap();
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["kubernetes.io/hostname"], node.name.as_str());
    assert_eq!(labels["type"], "virtual-kubelet");
    assert!(labels["kubernetes.io/arch"].as_str().is_some());
    let taints = n["spec"]["taints"].as_array().unwrap();
    assert!(taints
        .iter()
        .any(|t| t["key"] == "unitlet.io/provider" && t["effect"] == "NoSchedule"));
    let st = &n["status"];
    assert!(st["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
    assert_eq!(st["capacity"]["pods"], "110");
    assert!(st["allocatable"]["cpu"].as_str().is_some());
    assert_eq!(st["addresses"][0]["type"], "InternalIP");
    assert_eq!(st["addresses"][1]["type"], "Hostname");
    assert_eq!(st["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    let info = &st["nodeInfo"];
    assert_eq!(info["operatingSystem"], "linux");
    assert!(info["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("systemd://"));
    assert!(info["kubeletVersion"]
        .as_str()
        .unwrap()
        .starts_with("unitlet/"));
    assert!(!info["bootID"].as_str().unwrap().is_empty());
    for kind in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(cond(&n, kind).is_some(), "condition {kind} missing");
    }
    // Out of the box the kubelet API is served (a self-signed certificate
    // kept in the state directory); a kubeconfig without a cluster CA (this
    // one is plain HTTP) leaves it trusting no client certificate, which the
    // agent says at start.
    node.wait_log("the warning about client certificates", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("names no cluster CA") && m.contains("--client-ca-file"))
    });
    assert!(node
        .sh("cat /var/lib/unitlet/pki/kubelet.crt")
        .contains("BEGIN CERTIFICATE"));
    let node_events = |api: &ApiServer, name: &str| -> Vec<String> {
        api.list("events", Some("default"))
            .into_iter()
            .filter(|e| {
                e["involvedObject"]["kind"] == "Node" && e["involvedObject"]["name"] == name
            })
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect()
    };
    let nm = node.name.clone();
    node.wait_for("Starting and NodeReady events", default_wait(), || {
        let r = node_events(&api, &nm);
        (r.iter().any(|x| x == "Starting") && r.iter().any(|x| x == "NodeReady")).then_some(())
    });

    // The Lease: owned by the Node, renewed every 10 s.
    let name = node.name.clone();
    let first = node.wait_for("the node Lease", default_wait(), || {
        api.get("leases", Some("kube-node-lease"), &name)
    });
    assert_eq!(first["spec"]["holderIdentity"], name.as_str());
    assert_eq!(first["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(first["metadata"]["ownerReferences"][0]["kind"], "Node");
    assert_eq!(
        first["metadata"]["ownerReferences"][0]["uid"],
        n["metadata"]["uid"]
    );
    let renewed = first["spec"]["renewTime"].clone();
    node.wait_for("a Lease renewal", patient(30), || {
        let l = api.get("leases", Some("kube-node-lease"), &name)?;
        (l["spec"]["renewTime"] != renewed).then_some(())
    });

    // A restarted agent adopts the Node (same UID) rather than recreating it.
    node.stop_agent();
    let kc = node.dir.join("kubeconfig");
    let config = node.dir.join("unitlet.yaml");
    std::fs::write(&config, "statusUpdateSeconds: 2\n").unwrap();
    node.start_node_agent(&kc, &["--config", &config.to_string_lossy()]);
    node.wait_log("the agent adopting the Node", |l| {
        l["message"] == "adopting the existing Node"
    });
    let again = api.get("nodes", None, &name).unwrap();
    assert_eq!(again["metadata"]["uid"], n["metadata"]["uid"]);

    // The periodic status write is the whole status: a capacity someone
    // overwrote is put right.
    let mut tampered = api.get("nodes", None, &name).unwrap();
    tampered["status"]["capacity"]["pods"] = json!("1");
    api.replace_status("nodes", None, tampered);
    node.wait_for("the capacity repaired", default_wait(), || {
        let n = api.get("nodes", None, &name)?;
        (n["status"]["capacity"]["pods"] == "110").then_some(())
    });
    node.stop_agent();
}

#[test]
fn bound_pod_runs_reports_status_and_is_removed_after_graceful_deletion() {
    let (api, mut node) = join("bound_pod");
    let nn = node.name.clone();
    let created = api.create("pods", Some("default"), sleeper("web", &nn));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let pod = node.wait_for(
        "the pod Running and ready in the API",
        default_wait(),
        || {
            let p = api.get("pods", Some("default"), "web")?;
            let cs = &p["status"]["containerStatuses"][0];
            (p["status"]["phase"] == "Running" && cs["ready"] == true).then_some(p)
        },
    );
    assert_eq!(pod["status"]["podIP"], pod["status"]["hostIP"]);
    assert!(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
    assert_eq!(cond(&pod, "Ready").unwrap()["status"], "True");
    let unit = node.unit_of("default", "web", "c");
    assert_eq!(node.show_value(&unit, "ActiveState"), "active");
    // Every status write was a patch of the status subresource carrying the UID.
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/pods/web/status"))
        .collect();
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(w.body.as_ref().unwrap()["metadata"]["uid"], uid.as_str());
    }

    // Lifecycle events, kubelet style, about the container.
    let reasons = |api: &ApiServer| -> Vec<String> {
        api.list("events", Some("default"))
            .into_iter()
            .filter(|e| e["involvedObject"]["uid"] == uid.as_str())
            .map(|e| {
                assert_eq!(e["involvedObject"]["fieldPath"], "spec.containers{c}");
                assert_eq!(e["source"]["host"], nn.as_str());
                e["reason"].as_str().unwrap().to_string()
            })
            .collect()
    };
    node.wait_for("Pulled, Created and Started events", default_wait(), || {
        let r = reasons(&api);
        ["Pulled", "Created", "Started"]
            .iter()
            .all(|want| r.iter().any(|x| x == want))
            .then_some(())
    });

    // Graceful deletion: the container gets SIGTERM, then the agent removes
    // the object with grace 0 and a UID precondition.
    api.delete("pods", Some("default"), "web", Some(15));
    node.wait_for("the pod object to be removed", default_wait(), || {
        api.get("pods", Some("default"), "web")
            .is_none()
            .then_some(())
    });
    let del = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "DELETE" && r.path.ends_with("/pods/web"))
        .expect("the agent deleted the pod");
    let body = del.body.unwrap_or(Value::Null);
    assert_eq!(body["preconditions"]["uid"], uid.as_str());
    assert_eq!(body["gracePeriodSeconds"], 0);
    // Before that, the final status: the container ended (it exits 0 on
    // SIGTERM), so the pod is Succeeded, as the kubelet reports a deleted pod.
    let reqs = api.requests();
    let del_at = reqs
        .iter()
        .rposition(|r| r.method == "DELETE" && r.path.ends_with("/pods/web"))
        .unwrap();
    let last = reqs[..del_at]
        .iter()
        .rfind(|r| r.method == "PATCH" && r.path.ends_with("/pods/web/status"))
        .and_then(|r| r.body.clone())
        .expect("a status write before the delete");
    assert_eq!(last["status"]["phase"], "Succeeded", "{last}");
    let term = &last["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0, "{last}");
    assert_eq!(term["reason"], "Completed", "{last}");
    assert!(reasons(&api).iter().any(|r| r == "Killing"));
    node.wait_for("the unit to be gone", default_wait(), || {
        (!node
            .units("unitlet_default_web_*")
            .iter()
            .any(|u| u == &unit))
        .then_some(())
    });
    // The container was asked to stop (SIGTERM), not killed.
    node.wait_for(
        "the container's goodbye in the journal",
        default_wait(),
        || {
            node.sh(&format!("journalctl -u {unit} -o cat --no-pager"))
                .contains("bye")
                .then_some(())
        },
    );

    // A container that ignores SIGTERM is killed at the deletion grace;
    // the pod's last status says so (137, Failed).
    let mut stubborn = sleeper("stubborn", &nn);
    stubborn["spec"]["containers"][0]["command"] =
        json!(["/bin/sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]);
    api.create("pods", Some("default"), stubborn);
    wait_api_phase(&api, &node, "stubborn", "Running");
    api.delete("pods", Some("default"), "stubborn", Some(1));
    node.wait_for("the stubborn pod removed", default_wait(), || {
        api.get("pods", Some("default"), "stubborn")
            .is_none()
            .then_some(())
    });
    let last = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH" && r.path.ends_with("/pods/stubborn/status"))
        .and_then(|r| r.body)
        .unwrap();
    assert_eq!(last["status"]["phase"], "Failed", "{last}");
    let term = &last["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 137, "{last}");
    assert_eq!(term["reason"], "Error", "{last}");
    node.stop_agent();
}

#[test]
fn pod_using_unsupported_fields_is_failed_with_a_reason() {
    let (api, mut node) = join("unsupported_pod");
    let nn = node.name.clone();
    let mut pod = sleeper("vols", &nn);
    pod["spec"]["volumes"] = json!([{"name": "v", "nfs": {"server": "nfs.example", "path": "/"}}]);
    api.create("pods", Some("default"), pod);
    let p = node.wait_for("the pod Failed", default_wait(), || {
        let p = api.get("pods", Some("default"), "vols")?;
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    assert_eq!(p["status"]["reason"], "UnsupportedPodSpec");
    assert!(p["status"]["message"]
        .as_str()
        .unwrap()
        .contains("nfs volumes"));
    assert!(node.units("unitlet_default_vols_*").is_empty());
    // Deleting it needs no grace: nothing runs.
    api.delete("pods", Some("default"), "vols", Some(30));
    node.wait_for("the pod object to be removed", default_wait(), || {
        api.get("pods", Some("default"), "vols")
            .is_none()
            .then_some(())
    });
    node.stop_agent();
}

/// A pod whose container runs until the file `stop` appears in the node's
/// work directory, then exits 3 (restartPolicy Never).
fn stopper(name: &str, node: &Node) -> Value {
    let stop = node.path("stop");
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node.name,
            "restartPolicy": "Never",
            "containers": [{
                "name": "c",
                "image": "host",
                "command": ["/bin/sh", "-c", format!("while [ ! -e {stop} ]; do sleep 0.1; done; exit 3")]
            }]
        }
    })
}

fn wait_api_phase(api: &ApiServer, node: &Node, name: &str, phase: &str) -> Value {
    node.wait_for(
        &format!("pod {name} {phase} in the API"),
        default_wait(),
        || {
            let p = api.get("pods", Some("default"), name)?;
            (p["status"]["phase"] == phase).then_some(p)
        },
    )
}

#[test]
fn api_outage_and_agent_restart_restart_nothing_and_status_converges() {
    let (api, mut node) = join("outage_restart");
    let nn = node.name.clone();
    api.create("pods", Some("default"), sleeper("steady", &nn));
    api.create("pods", Some("default"), stopper("ends", &node));
    wait_api_phase(&api, &node, "steady", "Running");
    wait_api_phase(&api, &node, "ends", "Running");
    let steady = node.unit_of("default", "steady", "c");
    let pid = node.show_value(&steady, "MainPID");

    // The API server goes away; the agent is killed and started again while
    // it is away, and a container ends meanwhile.
    api.set_available(false);
    node.kill_agent_9();
    let kc = node.dir.join("kubeconfig");
    node.start_node_agent(&kc, &[]);
    std::fs::write(node.dir.join("stop"), "").unwrap();
    let ends = node.unit_of("default", "ends", "c");
    node.wait_for("the container to end", default_wait(), || {
        (node.show_value(&ends, "ExecMainStatus") == "3").then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(node.show_value(&steady, "MainPID"), pid, "a pod restarted");

    // Back: the node is Ready again and both statuses converge.
    api.set_available(true);
    let p = wait_api_phase(&api, &node, "ends", "Failed");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    let s = wait_api_phase(&api, &node, "steady", "Running");
    assert_eq!(s["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(node.show_value(&steady, "MainPID"), pid, "a pod restarted");
    node.stop_agent();
}

#[test]
fn force_deleted_pod_stops_and_a_new_pod_of_the_same_name_is_not_confused() {
    let (api, mut node) = join("force_delete");
    let nn = node.name.clone();
    let first = api.create("pods", Some("default"), sleeper("same", &nn));
    wait_api_phase(&api, &node, "same", "Running");
    let old_unit = node.unit_of("default", "same", "c");

    // Force deletion (grace 0) removes the object at once; the agent stops the units.
    api.delete("pods", Some("default"), "same", Some(0));
    assert!(api.get("pods", Some("default"), "same").is_none());
    let second = api.create("pods", Some("default"), sleeper("same", &nn));
    assert_ne!(first["metadata"]["uid"], second["metadata"]["uid"]);
    let p = wait_api_phase(&api, &node, "same", "Running");
    assert_eq!(p["metadata"]["uid"], second["metadata"]["uid"]);
    node.wait_for("the old pod's unit to be gone", default_wait(), || {
        (!node.units("unitlet_default_same_*").contains(&old_unit)).then_some(())
    });
    let units = node.units("unitlet_default_same_*");
    assert_eq!(units.len(), 1, "{units:?}");
    assert_ne!(units[0], old_unit);
    // No status write ever went to the new pod carrying the old UID.
    for r in api.requests() {
        if r.method == "PATCH" && r.path.ends_with("/pods/same/status") && r.status == 200 {
            let uid = &r.body.as_ref().unwrap()["metadata"]["uid"];
            assert!(*uid == first["metadata"]["uid"] || *uid == second["metadata"]["uid"]);
        }
    }
    node.stop_agent();
}

#[test]
fn two_nodes_side_by_side_run_only_their_own_pods() {
    let api = ApiServer::start();
    let mut nodes: Vec<Node> = ["two_nodes_a", "two_nodes_b"]
        .iter()
        .map(|t| Node::boot(t))
        .collect();
    for node in &mut nodes {
        let kc = node.dir.join("kubeconfig");
        api.write_kubeconfig(&kc);
        node.start_node_agent(&kc, &[]);
    }
    for (i, node) in nodes.iter().enumerate() {
        api.create(
            "pods",
            Some("default"),
            sleeper(&format!("p{i}"), &node.name),
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let p = wait_api_phase(&api, node, &format!("p{i}"), "Running");
        assert_eq!(p["spec"]["nodeName"], node.name.as_str());
        let name = node.name.clone();
        node.wait_for("the Node Ready", default_wait(), || {
            let n = api.get("nodes", None, &name)?;
            (cond(&n, "Ready")?["status"] == "True").then_some(())
        });
        assert!(api.get("leases", Some("kube-node-lease"), &name).is_some());
        let own = node.units("unitlet_*.service");
        assert_eq!(own.len(), 1, "{own:?}");
        assert!(own[0].starts_with(&format!("unitlet_default_p{i}_")));
    }
    for node in &mut nodes {
        node.stop_agent();
    }
}

#[test]
fn crash_looping_container_backs_off_with_aggregated_events() {
    let (api, mut node) = join("crash_loop_events");
    let nn = node.name.clone();
    let mut pod = sleeper("crashy", &nn);
    pod["spec"]["containers"][0]["command"] = json!(["/bin/sh", "-c", "exit 1"]);
    let uid = api.create("pods", Some("default"), pod)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let backoff = node.wait_for("one BackOff event counted twice", default_wait(), || {
        api.list("events", Some("default")).into_iter().find(|e| {
            e["involvedObject"]["uid"] == uid.as_str()
                && e["reason"] == "BackOff"
                && e["count"].as_i64().unwrap_or(0) >= 2
        })
    });
    assert_eq!(backoff["type"], "Warning");
    let backoffs = api
        .list("events", Some("default"))
        .into_iter()
        .filter(|e| e["involvedObject"]["uid"] == uid.as_str() && e["reason"] == "BackOff")
        .count();
    assert_eq!(backoffs, 1, "repeats are aggregated into one Event");
    let p = node.wait_for("restarts counted in the API", default_wait(), || {
        let p = api.get("pods", Some("default"), "crashy")?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 2).then_some(p)
    });
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );
    node.stop_agent();
}

#[test]
fn watch_resumes_after_410_gone_without_restarting_pods() {
    let (api, mut node) = join("watch_410");
    let nn = node.name.clone();
    api.create("pods", Some("default"), sleeper("kept", &nn));
    api.create("pods", Some("default"), sleeper("dropped", &nn));
    wait_api_phase(&api, &node, "kept", "Running");
    wait_api_phase(&api, &node, "dropped", "Running");
    let kept = node.unit_of("default", "kept", "c");
    let pid = node.show_value(&kept, "MainPID");

    // Watches break; while they are down, history is compacted and the
    // pods change: the agent's resourceVersion is now too old. Its watch
    // answers 410 Gone (or, when kube's retries of the 503s ended in a
    // fresh list, that list) and the agent must converge on the new truth
    // from a complete list, restarting nothing.
    api.set_available(false);
    api.compact();
    api.delete("pods", Some("default"), "dropped", Some(0));
    api.create("pods", Some("default"), sleeper("added", &nn));
    api.set_available(true);
    wait_api_phase(&api, &node, "added", "Running");
    node.wait_for(
        "the force-deleted pod's unit to stop",
        default_wait(),
        || {
            node.units("unitlet_default_dropped_*")
                .is_empty()
                .then_some(())
        },
    );
    assert_eq!(node.show_value(&kept, "MainPID"), pid, "a pod restarted");
    let watches = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.query.contains("watch=") && r.path.ends_with("/pods"))
        .count();
    assert!(watches >= 2, "the pod watch was re-established");
    node.stop_agent();
}

#[test]
fn client_rate_limit_from_the_config_file_is_respected() {
    let api = ApiServer::start();
    let mut node = Node::boot("rate_limit");
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    let cfg = node.dir.join("config.yaml");
    std::fs::write(
        &cfg,
        "apiQps: 1\napiBurst: 1\neventRecordQPS: 1\neventBurst: 1\nlabels: {rack: r7}\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_string_lossy().into_owned();
    node.start_node_agent(&kc, &["--config", &cfg_arg]);
    // Unthrottled, registration alone is ten requests within a second.
    node.wait_for("the first request", default_wait(), || {
        (!api.requests().is_empty()).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    // Events have a budget of their own, as the kubelet's.
    let (events, other): (Vec<_>, Vec<_>) = api
        .requests()
        .into_iter()
        .partition(|r| r.path.contains("/events"));
    assert!(
        other.len() <= 5,
        "{} requests in about 3 s at 1 per second",
        other.len()
    );
    assert!(
        events.len() <= 5,
        "{} events in about 3 s at 1 per second",
        events.len()
    );
    // Throttled, not stuck: the node still registers, with the file's label.
    let name = node.name.clone();
    let n = node.wait_for("the Node to be Ready", default_wait(), || {
        let n = api.get("nodes", None, &name)?;
        (cond(&n, "Ready")?["status"] == "True").then_some(n)
    });
    assert_eq!(n["metadata"]["labels"]["rack"], "r7");
    node.stop_agent();
}

/// The environment of a unit's running main process, from /proc.
fn environ(node: &Node, unit: &str) -> std::collections::BTreeMap<String, String> {
    let pid = node.show_value(unit, "MainPID");
    node.sh(&format!("cat /proc/{pid}/environ"))
        .split('\0')
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn configmap_and_secret_env_reach_the_container_and_secrets_stay_off_the_bus() {
    let (api, mut node) = join_tls("configmap_env");
    assert!(api.url().starts_with("https://"));
    let nn = node.name.clone();
    api.create(
        "configmaps",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app-config"},
            "data": {"GREETING": "hello $(X) `y` \"q\"", "LEVEL": "info", "bad-key": "v"}
        }),
    );
    // "s3cr3t $HOME\nline2"
    api.create(
        "secrets",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "app-secret"},
            "data": {"TOKEN": "czNjcjN0ICRIT01FCmxpbmUy"}
        }),
    );
    let mut pod = sleeper("env", &nn);
    pod["spec"]["serviceAccountName"] = json!("runner");
    let c = &mut pod["spec"]["containers"][0];
    c["command"] = json!(["/bin/sh", "-c", "while :; do sleep 1; done", "$(LEVEL)"]);
    c["envFrom"] = json!([
        {"configMapRef": {"name": "app-config"}, "prefix": "CM_"},
        {"secretRef": {"name": "app-secret"}}
    ]);
    c["env"] = json!([
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "LEVEL"}}},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
        {"name": "OPT_KEY", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "nokey", "optional": true}}},
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "COMBINED", "value": "$(LEVEL)-$(CM_LEVEL)"},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}
    ]);
    let created = api.create("pods", Some("default"), pod);
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    wait_api_phase(&api, &node, "env", "Running");
    let unit = node.unit_of("default", "env", "c");
    let env = environ(&node, &unit);
    assert_eq!(env["CM_GREETING"], "hello $(X) `y` \"q\"");
    assert_eq!(env["CM_LEVEL"], "info");
    assert_eq!(env["LEVEL"], "info");
    assert_eq!(env["TOKEN"], "s3cr3t $HOME\nline2");
    assert_eq!(env["SA"], "runner");
    assert_eq!(env["COMBINED"], "info-info");
    // No CPU limit: the downward API gives the node's allocatable CPUs.
    let node_obj = api.get("nodes", None, &nn).unwrap();
    assert_eq!(
        env["CPUS"],
        node_obj["status"]["allocatable"]["cpu"].as_str().unwrap()
    );
    for absent in ["OPT", "OPT_KEY", "CM_bad-key", "bad-key"] {
        assert!(!env.contains_key(absent), "{absent} set: {env:?}");
    }
    // $(VAR) in args sees the resolved env.
    assert!(node
        .show_value(&unit, "ExecStart")
        .contains("while :; do sleep 1; done info ;"));
    // The secret is in a root-only file on tmpfs, not in the unit's
    // properties, which any local user can read over D-Bus.
    let props = node.sh(&format!("systemctl show {unit}"));
    assert!(!props.contains("s3cr3t"), "{props}");
    let file = node.show_value(&unit, "EnvironmentFiles");
    let path = file.split_whitespace().next().unwrap().to_string();
    assert!(
        path.starts_with(&format!("/run/unitlet/secret-env/{uid}/")),
        "{file}"
    );
    assert_eq!(node.sh(&format!("stat -c %a {path}")).trim(), "600");
    assert_eq!(
        node.sh(&format!("stat -c %a /run/unitlet/secret-env/{uid}"))
            .trim(),
        "700"
    );
    // The key envFrom could not use is reported, as the kubelet does.
    node.wait_for(
        "an InvalidEnvironmentVariableNames event",
        default_wait(),
        || {
            api.list("events", Some("default"))
                .into_iter()
                .find(|e| {
                    e["involvedObject"]["uid"] == uid.as_str()
                        && e["reason"] == "InvalidEnvironmentVariableNames"
                })
                .filter(|e| e["message"].as_str().unwrap().contains("CM_bad-key"))
        },
    );

    // A container whose ConfigMap does not exist yet waits with the
    // kubelet's reason and message, and starts once it is created.
    let mut later = sleeper("later", &nn);
    later["spec"]["containers"][0]["env"] = json!([
        {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}
    ]);
    api.create("pods", Some("default"), later);
    let p = node.wait_for("CreateContainerConfigError", default_wait(), || {
        let p = api.get("pods", Some("default"), "later")?;
        (waiting_reason(&p, "c") == Some("CreateContainerConfigError")).then_some(p)
    });
    assert_eq!(
        cstatus(&p, "c")["state"]["waiting"]["message"],
        "configmap \"late\" not found"
    );
    assert_eq!(p["status"]["phase"], "Pending");
    api.create(
        "configmaps",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}, "data": {"j": "1"}}),
    );
    // The ConfigMap exists but lacks the key.
    node.wait_for("the missing key reported", default_wait(), || {
        let p = api.get("pods", Some("default"), "later")?;
        (cstatus(&p, "c")["state"]["waiting"]["message"]
            == "couldn't find key k in ConfigMap default/late")
            .then_some(())
    });
    let mut cm = api.get("configmaps", Some("default"), "late").unwrap();
    cm["data"]["k"] = json!("v1");
    api.replace("configmaps", Some("default"), cm);
    wait_api_phase(&api, &node, "later", "Running");
    let later_unit = node.unit_of("default", "later", "c");
    assert_eq!(environ(&node, &later_unit)["K"], "v1");

    // Every call came over TLS with the node's client certificate.
    let who: std::collections::BTreeSet<_> = api.requests().into_iter().map(|r| r.user).collect();
    assert_eq!(
        who,
        [Some(format!("system:node:{nn}"))].into_iter().collect()
    );

    // The environment files go with the pod.
    api.delete("pods", Some("default"), "env", Some(0));
    node.wait_for(
        "the pod's environment files removed",
        default_wait(),
        || {
            (node.sh(&format!("ls /run/unitlet/secret-env/{uid} 2>&1 || true")))
                .contains("No such file")
                .then_some(())
        },
    );
    node.stop_agent();
}

#[test]
fn static_pods_run_from_the_manifest_directory_with_mirror_pods_in_the_api() {
    let api = ApiServer::start();
    let mut node = Node::boot("static_pods");
    let nn = node.name.clone();
    let manifest = |cmd: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: web}}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: c\n    image: host\n    command: [/bin/sh, -c, '{cmd}']\n"
        )
    };
    node.write_manifest("web.yaml", &manifest("while :; do sleep 0.1; done"));
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    let config = node.dir.join("unitlet.yaml");
    std::fs::write(
        &config,
        format!("manifests: {}\n", node.manifests.display()),
    )
    .unwrap();
    node.start_node_agent(&kc, &["--config", &config.to_string_lossy()]);
    let mirror_name = format!("web-{nn}");
    let running_mirror = |api: &ApiServer, node: &Node| {
        node.wait_for("the mirror pod Running", default_wait(), || {
            let p = api.get("pods", Some("default"), &mirror_name)?;
            (p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
                .then_some(p)
        })
    };
    let m = running_mirror(&api, &node);
    let n = api.get("nodes", None, &nn).unwrap();
    let ann = &m["metadata"]["annotations"];
    let hash = ann["kubernetes.io/config.mirror"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ann["kubernetes.io/config.hash"], hash.as_str());
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    assert_eq!(m["metadata"]["labels"]["app"], "web");
    let owner = &m["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Node");
    assert_eq!(owner["name"], nn.as_str());
    assert_eq!(owner["uid"], n["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(m["spec"]["nodeName"], nn.as_str());
    assert_eq!(cstatus(&m, "c")["ready"], true);
    // One unit: the static pod's, named as the kubelet names static pods;
    // the mirror pod in the watch is not run a second time.
    let unit = node.unit_of("default", &mirror_name, "c");
    assert_eq!(node.units("unitlet_default_web*"), vec![unit.clone()]);
    let pid = node.show_value(&unit, "MainPID");
    // Status writes to the mirror carry the mirror's own UID.
    let muid = m["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(api
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(&format!("/pods/{mirror_name}/status")))
        .all(|r| r.body.as_ref().unwrap()["metadata"]["uid"] == muid.as_str()));

    // Deleting the mirror does not stop the static pod; the mirror comes back.
    api.delete("pods", Some("default"), &mirror_name, Some(30));
    node.wait_for("a new mirror pod", default_wait(), || {
        let p = api.get("pods", Some("default"), &mirror_name)?;
        (p["metadata"]["uid"] != muid.as_str()
            && p["status"]["phase"] == "Running"
            && p["metadata"]["deletionTimestamp"].is_null())
        .then_some(())
    });
    assert_eq!(
        node.show_value(&unit, "MainPID"),
        pid,
        "the static pod restarted"
    );

    // A restarted agent keeps the static pod running and its mirror.
    let current = api.get("pods", Some("default"), &mirror_name).unwrap();
    node.kill_agent_9();
    node.start_node_agent(&kc, &["--config", &config.to_string_lossy()]);
    node.wait_log("the initial sync", |l| {
        l["message"] == "initial sync complete"
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        node.show_value(&unit, "MainPID"),
        pid,
        "the static pod restarted"
    );
    let after = api.get("pods", Some("default"), &mirror_name).unwrap();
    assert_eq!(after["metadata"]["uid"], current["metadata"]["uid"]);

    // An edited manifest is a new static pod: its mirror replaces the old one.
    node.write_manifest(
        "web.yaml",
        &manifest("echo v2; while :; do sleep 0.1; done"),
    );
    node.wait_for("the mirror of the edited manifest", default_wait(), || {
        let p = api.get("pods", Some("default"), &mirror_name)?;
        let h = p["metadata"]["annotations"]["kubernetes.io/config.mirror"].as_str()?;
        (h != hash && p["status"]["phase"] == "Running").then_some(())
    });

    // A removed manifest: the pod stops and its mirror goes.
    node.remove_manifest("web.yaml");
    node.wait_for("the mirror pod removed", default_wait(), || {
        api.get("pods", Some("default"), &mirror_name)
            .is_none()
            .then_some(())
    });
    node.wait_for("the static pod's unit gone", default_wait(), || {
        node.units("unitlet_default_web*").is_empty().then_some(())
    });
    node.stop_agent();
}

#[test]
fn a_new_image_in_the_pod_spec_replaces_the_container() {
    let (api, mut node) = join("image_update");
    let nn = node.name.clone();
    let mut pod = sleeper("img", &nn);
    pod["spec"]["containers"][0]["image"] = json!("registry.example/app:1");
    api.create("pods", Some("default"), pod);
    node.wait_for("ErrImagePull", default_wait(), || {
        let p = api.get("pods", Some("default"), "img")?;
        (waiting_reason(&p, "c") == Some("ErrImagePull")).then_some(())
    });
    let set_image = |image: &str| {
        let mut p = api.get("pods", Some("default"), "img").unwrap();
        p["spec"]["containers"][0]["image"] = json!(image);
        api.replace("pods", Some("default"), p);
    };
    // Fixed: the container starts.
    set_image("host");
    wait_api_phase(&api, &node, "img", "Running");
    let unit = node.unit_of("default", "img", "c");
    assert_eq!(node.show_value(&unit, "ActiveState"), "active");
    // Changed to an image that cannot run here: the running container is
    // stopped (SIGTERM) and the pod waits for its image.
    set_image("registry.example/app:2");
    let p = node.wait_for(
        "the container stopped for the new image",
        default_wait(),
        || {
            let p = api.get("pods", Some("default"), "img")?;
            (waiting_reason(&p, "c") == Some("ErrImagePull")).then_some(p)
        },
    );
    assert_eq!(cstatus(&p, "c")["image"], "registry.example/app:2");
    node.wait_for("the unit stopped", default_wait(), || {
        (node.show_value(&unit, "ActiveState") != "active").then_some(())
    });
    assert!(api
        .list("events", Some("default"))
        .iter()
        .any(|e| e["reason"] == "Killing"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("definition changed")));
    node.stop_agent();
}

#[test]
fn volumes_from_the_api_token_claim_and_updates() {
    let (api, mut node) = join("api_volumes");
    let nn = node.name.clone();
    node.sh("mkdir -p /srv/pv1 && echo pv-data > /srv/pv1/hello");
    api.create(
        "serviceaccounts",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}),
    );
    api.create(
        "configmaps",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "one"}}),
    );
    api.create(
        "persistentvolumes",
        None,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": "/srv/pv1", "type": "Directory"}}
        }),
    );
    let claim = api.create(
        "persistentvolumeclaims",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "volumeName": "pv1"}
        }),
    );
    let mut pod = sleeper("vols", &nn);
    pod["spec"]["serviceAccountName"] = json!("runner");
    // What the ServiceAccount admission plugin adds to every pod.
    pod["spec"]["volumes"] = json!([
        {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "cfg", "items": [{"key": "k", "path": "k"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}},
        {"name": "conf", "configMap": {"name": "cfg"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "claim1"}}
    ]);
    let c = &mut pod["spec"]["containers"][0];
    c["command"] = json!(["/bin/sh", "-c", "echo from-pod > /data/out; echo token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); echo ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); echo pv=$(cat /data/hello); while :; do echo conf=$(cat /conf/k); sleep 0.5; done"]);
    c["volumeMounts"] = json!([
        {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
        {"name": "conf", "mountPath": "/conf"},
        {"name": "data", "mountPath": "/data"}
    ]);
    let created = api.create("pods", Some("default"), pod);
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    // The claim is not bound yet: the pod waits, with a FailedMount event.
    node.wait_for(
        "a FailedMount event for the unbound claim",
        default_wait(),
        || {
            api.list("events", Some("default")).into_iter().find(|e| {
                e["reason"] == "FailedMount"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("PVC is not bound"))
            })
        },
    );
    assert!(node.units("unitlet_default_vols_*").is_empty());
    let mut bound = claim.clone();
    bound["status"] = json!({"phase": "Bound"});
    api.replace_status("persistentvolumeclaims", Some("default"), bound);
    wait_api_phase(&api, &node, "vols", "Running");
    let out = node.wait_output("vols", "c", "conf=one");
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .to_string()
    };
    assert_eq!(field("ns"), "default");
    assert_eq!(field("pv"), "pv-data");
    assert_eq!(node.sh("cat /srv/pv1/out").trim(), "from-pod");
    // The token is one the API server issued for this pod and account.
    let claims = api
        .verify_token(&field("token"))
        .expect("a token the server signed");
    assert_eq!(
        claims["sub"], "system:serviceaccount:default:runner",
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        uid.as_str(),
        "{claims}"
    );
    let issued = api.token_requests();
    assert_eq!(
        issued.len(),
        1,
        "one token per pod and audience: {issued:?}"
    );
    assert_eq!(issued[0].expiration_seconds, 3607);
    assert_eq!(issued[0].bound_pod().unwrap().name, "vols");

    // A ConfigMap update reaches the running container without a restart.
    let mut cm = api.get("configmaps", Some("default"), "cfg").unwrap();
    cm["data"]["k"] = json!("two");
    api.replace("configmaps", Some("default"), cm);
    node.wait_output("vols", "c", "conf=two");
    let p = api.get("pods", Some("default"), "vols").unwrap();
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);

    // Deleting the pod removes its volumes; the persistent data stays.
    api.delete("pods", Some("default"), "vols", Some(1));
    node.wait_for("the pod object to be removed", default_wait(), || {
        api.get("pods", Some("default"), "vols")
            .is_none()
            .then_some(())
    });
    let left = node.sh(&format!("ls /var/lib/unitlet/pods/{uid} 2>&1 || true"));
    assert!(left.contains("No such file"), "{left}");
    assert_eq!(
        node.sh("cat /srv/pv1/hello /srv/pv1/out"),
        "pv-data\nfrom-pod\n"
    );
    node.stop_agent();
}

/// Node-pressure eviction in cluster mode, with real disk pressure inside
/// the sandbox node (its state directory is a 64 MiB tmpfs): DiskPressure
/// with the kubelet's reason and the NoSchedule taint reach the Node at
/// once, the pod filling its emptyDir ends Failed/Evicted with an
/// `Evicted` Warning event, and once the transition period is over the
/// condition clears and only the taint the agent added goes.
#[test]
fn disk_pressure_taints_the_node_and_evicts_the_pod_filling_the_disk() {
    let api = ApiServer::start();
    let mut node = Node::boot("evict_cluster");
    node.sh("mkdir -p /var/lib/unitlet && mount -t tmpfs -o size=64m tmpfs /var/lib/unitlet");
    let kc = node.dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    node.start_node_agent(
        &kc,
        &[
            "--eviction-hard",
            "nodefs.available<30%",
            "--eviction-monitoring-interval",
            "1s",
            "--eviction-pressure-transition-period",
            "15s",
        ],
    );
    let name = node.name.clone();
    node.wait_for("the Node Ready without pressure", default_wait(), || {
        let n = api.get("nodes", None, &name)?;
        (cond(&n, "Ready")?["status"] == "True" && cond(&n, "DiskPressure")?["status"] == "False")
            .then_some(())
    });
    let n = api.get("nodes", None, &name).unwrap();
    let dp = cond(&n, "DiskPressure").unwrap();
    assert_eq!(dp["reason"], "KubeletHasNoDiskPressure");
    assert_eq!(dp["message"], "kubelet has no disk pressure");
    let filler = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "filler", "namespace": "default"},
        "spec": {
            "nodeName": name,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "c",
                "image": "host",
                "command": ["/bin/sh", "-c", "for i in $(seq 50); do head -c 1048576 /dev/zero > /data/f$i; sleep 0.1; done; exec sleep infinity"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }]
        }
    });
    let created = api.create("pods", Some("default"), filler);
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let taint_key = "node.kubernetes.io/disk-pressure";
    let tainted = |n: &Value| {
        n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == taint_key && t["effect"] == "NoSchedule")
        })
    };
    node.wait_for(
        "DiskPressure and its taint on the Node",
        default_wait(),
        || {
            let n = api.get("nodes", None, &name)?;
            let dp = cond(&n, "DiskPressure")?;
            (dp["status"] == "True" && tainted(&n)).then_some(())
        },
    );
    let n = api.get("nodes", None, &name).unwrap();
    let dp = cond(&n, "DiskPressure").unwrap();
    assert_eq!(dp["reason"], "KubeletHasDiskPressure");
    assert_eq!(dp["message"], "kubelet has disk pressure");
    assert!(n["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "unitlet.io/provider"));
    let pod = node.wait_for("the pod Failed/Evicted in the API", default_wait(), || {
        let p = api.get("pods", Some("default"), "filler")?;
        (p["status"]["phase"] == "Failed" && p["status"]["reason"] == "Evicted").then_some(p)
    });
    let message = pod["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The node was low on resource: ephemeral-storage. "),
        "{message}"
    );
    let dt = cond(&pod, "DisruptionTarget").expect("DisruptionTarget");
    assert_eq!(dt["reason"], "TerminationByKubelet");
    node.wait_for("the Evicted event", default_wait(), || {
        api.list("events", Some("default")).into_iter().find(|e| {
            e["involvedObject"]["uid"] == uid.as_str()
                && e["reason"] == "Evicted"
                && e["type"] == "Warning"
                && e["message"] == message
        })
    });
    node.wait_for(
        "the EvictionThresholdMet node event",
        default_wait(),
        || {
            api.list("events", Some("default")).into_iter().find(|e| {
                e["involvedObject"]["kind"] == "Node"
                    && e["reason"] == "EvictionThresholdMet"
                    && e["message"] == "Attempting to reclaim ephemeral-storage"
            })
        },
    );
    // The space is back; after the transition period the condition and
    // the agent's taint go, the config's taint stays.
    node.wait_for("DiskPressure over and the taint gone", patient(60), || {
        let n = api.get("nodes", None, &name)?;
        (cond(&n, "DiskPressure")?["status"] == "False" && !tainted(&n)).then_some(n)
    });
    let n = api.get("nodes", None, &name).unwrap();
    assert!(n["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "unitlet.io/provider"));
    let p = api.get("pods", Some("default"), "filler").unwrap();
    assert_eq!(p["status"]["phase"], "Failed", "never moves backwards");
}

/// Garbage collection in cluster mode: an ended pod keeps its units and
/// volumes until its terminal status is in the API server, then gives
/// them back (its record stays, so the pod is not run again, even by a
/// restarted agent); a running pod beside it is not touched.
#[test]
fn an_ended_pod_gives_back_its_units_and_volumes_once_its_status_is_written() {
    let (api, mut node) = join("gc_ended_cluster");
    let nn = node.name.clone();
    api.create("pods", Some("default"), sleeper("steady", &nn));
    let mut job = stopper("job", &node);
    job["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "scratch", "mountPath": "/scratch"}]);
    job["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    api.create("pods", Some("default"), job);
    wait_api_phase(&api, &node, "steady", "Running");
    let p = wait_api_phase(&api, &node, "job", "Running");
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    let steady = node.unit_of("default", "steady", "c");
    let pid = node.show_value(&steady, "MainPID");
    let volumes = format!("/var/lib/unitlet/pods/{uid}/volumes");
    assert_eq!(node.sh(&format!("test -d {volumes} && echo yes")), "yes\n");
    std::fs::write(node.dir.join("stop"), "").unwrap();
    let p = wait_api_phase(&api, &node, "job", "Failed");
    node.wait_for(
        "the ended pod's units and volumes collected",
        default_wait(),
        || {
            let units = node.units("unitlet_default_job_*");
            let gone = node.sh_output(&format!("test -e {volumes}")).status.code() == Some(1);
            (units.is_empty() && gone).then_some(())
        },
    );
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    // The record stays: a restarted agent does not run it again.
    assert_eq!(
        node.sh(&format!(
            "test -f /var/lib/unitlet/pods/{uid}/pod.json && echo yes"
        )),
        "yes\n"
    );
    node.kill_agent_9();
    let kc = node.dir.join("kubeconfig");
    node.start_node_agent(&kc, &[]);
    node.wait_log("the initial sync", |l| {
        l["message"] == "initial sync complete"
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        node.units("unitlet_default_job_*").is_empty(),
        "the ended pod ran again"
    );
    let p = api.get("pods", Some("default"), "job").unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(
        node.show_value(&steady, "MainPID"),
        pid,
        "a running pod was touched"
    );
    node.stop_agent();
}

/// The API server gone for five minutes (`UNITLET_OUTAGE_SECONDS` shortens
/// it for a quick local run), then storms of 429 and 500 answers and a
/// watch history compacted away (410): no pod is restarted or killed, what
/// happened meanwhile (a container that ended, restarts of a crashing one
/// and their events) reaches the API server once it is back, the Lease,
/// the node's heartbeat and the pod watch resume, and the agent backs off
/// instead of hammering the server.
#[test]
fn an_api_server_outage_of_five_minutes_and_error_storms_restart_nothing() {
    let outage = std::time::Duration::from_secs(
        std::env::var("UNITLET_OUTAGE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let (api, mut node) = join("api_outage_5min");
    let nn = node.name.clone();
    let steady: Vec<String> = (0..5).map(|i| format!("steady-{i}")).collect();
    for name in &steady {
        api.create("pods", Some("default"), sleeper(name, &nn));
    }
    api.create("pods", Some("default"), stopper("ends", &node));
    // Crashes 5 s after each start: restarts and BackOff events during the outage.
    api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "crash", "namespace": "default"},
            "spec": {"nodeName": nn, "restartPolicy": "OnFailure", "containers": [{
                "name": "c", "image": "host", "command": ["/bin/sh", "-c", "sleep 5; exit 1"]
            }]}
        }),
    );
    for name in steady.iter().map(String::as_str).chain(["ends", "crash"]) {
        wait_api_phase(&api, &node, name, "Running");
    }
    let identity: Vec<(String, String)> = steady
        .iter()
        .map(|s| node.identity(&node.unit_of("default", s, "c")))
        .collect();

    api.set_available(false);
    let down = std::time::Instant::now();
    let down_at = jiff::Timestamp::now();
    let before = api.requests().len();
    std::thread::sleep(outage / 2);
    std::fs::write(node.dir.join("stop"), "").unwrap();
    std::thread::sleep(outage - outage / 2);
    let during = api.requests().len() - before;
    api.set_available(true);
    let up = std::time::Instant::now();
    let up_at = jiff::Timestamp::now();
    let rate = during as f64 / down.elapsed().as_secs_f64();
    // A pod bound once the server is back: the pod watch resumes. Its
    // back-off grew to 30 s during the outage, with jitter up to 60 s, as
    // client-go's reflector.
    api.create("pods", Some("default"), sleeper("after-outage", &nn));

    // Caught up: the ended pod, the crashing one's restarts and events,
    // the Lease, the node's heartbeat and a pod bound after the outage.
    let ends = wait_api_phase(&api, &node, "ends", "Failed");
    let crash_restarts = |api: &ApiServer| {
        api.get("pods", Some("default"), "crash").map(|p| {
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
        })
    };
    let expected_restarts = 3;
    node.wait_for(
        "the crashing pod's restarts in the API",
        default_wait(),
        || (crash_restarts(&api)? >= expected_restarts).then_some(()),
    );
    let after = |v: &Value, t: jiff::Timestamp| {
        v.as_str()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .is_some_and(|x| x >= t)
    };
    node.wait_for(
        "a BackOff event from during the outage",
        default_wait(),
        || {
            api.list("events", Some("default")).into_iter().find(|e| {
                e["involvedObject"]["name"] == "crash"
                    && e["reason"] == "BackOff"
                    && after(
                        &e["lastTimestamp"],
                        down_at
                            .checked_add(jiff::SignedDuration::from_secs(1))
                            .unwrap(),
                    )
            })
        },
    );
    node.wait_for("the Lease renewed after the outage", default_wait(), || {
        let l = api.get("leases", Some("kube-node-lease"), &nn)?;
        after(&l["spec"]["renewTime"], up_at).then_some(())
    });
    // The status is written at least once a minute (the default
    // `statusUpdateSeconds`): after a shorter outage it may not be due yet.
    node.wait_for("the node's heartbeat after the outage", patient(70), || {
        let n = api.get("nodes", None, &nn)?;
        let ready = cond(&n, "Ready")?;
        (ready["status"] == "True" && after(&ready["lastHeartbeatTime"], up_at)).then_some(())
    });
    node.wait_for(
        "the pod bound after the outage Running in the API",
        patient(120),
        || {
            let p = api.get("pods", Some("default"), "after-outage")?;
            (p["status"]["phase"] == "Running").then_some(())
        },
    );
    let converged_s = up.elapsed().as_secs_f64();

    // Storms: 429 (with Retry-After) and 500 answers while new pods come,
    // then a watch too old to resume (410 Gone).
    const STORM: usize = 20;
    let mut storm_rates = Vec::new();
    for (code, name) in [(429, "storm-429"), (500, "storm-500")] {
        let from = api.requests().len();
        let t = std::time::Instant::now();
        let failed = || {
            api.requests()[from..]
                .iter()
                .filter(|r| r.status == code)
                .count()
        };
        api.fail_next(STORM, code);
        api.create("pods", Some("default"), sleeper(name, &nn));
        // How long the storm lasts is the agent's to choose: a 429 asks
        // for a retry in 1 s, a 500 gets each caller's own back-off.
        node.wait_for(&format!("the {code} storm to pass"), patient(300), || {
            (failed() >= STORM).then_some(())
        });
        let storm_s = t.elapsed().as_secs_f64();
        node.wait_for(
            &format!("pod {name} Running in the API after the storm"),
            default_wait(),
            || {
                let p = api.get("pods", Some("default"), name)?;
                (p["status"]["phase"] == "Running").then_some(())
            },
        );
        storm_rates.push(STORM as f64 / storm_s);
    }
    api.set_available(false);
    api.compact();
    api.create("pods", Some("default"), sleeper("after-410", &nn));
    api.set_available(true);
    wait_api_phase(&api, &node, "after-410", "Running");

    let now: Vec<(String, String)> = steady
        .iter()
        .map(|s| node.identity(&node.unit_of("default", s, "c")))
        .collect();
    let pods: Vec<Value> = steady
        .iter()
        .filter_map(|s| api.get("pods", Some("default"), s))
        .collect();
    let figures = FaultFigures {
        fault: format!(
            "API server gone {} s ({rate:.2} requests/s meanwhile), then 429 and 500 storms ({:.1} and {:.1} failed requests/s) and a 410",
            outage.as_secs(), storm_rates[0], storm_rates[1]
        ),
        injected: 4,
        pods: steady.len() + 6,
        lost: steady.len() - pods.iter().filter(|p| p["status"]["phase"] == "Running").count()
            + usize::from(ends["status"]["phase"] != "Failed"),
        duplicated: steady
            .iter()
            .filter(|s| node.units(&format!("unitlet_default_{s}_c_*")).len() > 1)
            .count(),
        restarted: identity.iter().zip(&now).filter(|(a, b)| a != b).count()
            + pods
                .iter()
                .filter(|p| p["status"]["containerStatuses"][0]["restartCount"] != 0)
                .count(),
        converged_s,
    };
    report_fault(&figures);
    assert_eq!(
        (figures.lost, figures.duplicated, figures.restarted),
        (0, 0, 0),
        "{figures:?}"
    );
    // Backing off: the agent's renewals, status writes and watches ask a
    // server that is away a few times a minute, not many times a second.
    assert!(
        rate < 2.0,
        "{rate:.2} requests/s to an unavailable API server"
    );
    for r in &storm_rates {
        assert!(
            *r < 10.0,
            "{r:.1} failed requests/s in a storm: no back-off"
        );
    }
    node.stop_agent();
}
