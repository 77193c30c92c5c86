//! The runtime driven by the recording fake of systemd
//! (`unitlet_test_support::fake_units`): the reconciler's behaviour over time — start
//! order, restarts and back-off, termination, adoption — checked in
//! milliseconds, without root or a booted systemd. The same behaviours are
//! checked end to end on real systemd by the integration tests; these pin
//! down the decisions.

use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use unitlet::core::backoff::BackoffConfig;
use unitlet::core::envref::{Lookup, ObjectData, ObjectRef};
use unitlet::core::manifest::StaticPod;
use unitlet::core::translate::translate;
use unitlet::core::unit::Property;
use unitlet::core::volume::TokenRef;
use unitlet::core::{Allocatable, NodeFacts};
use unitlet::images::manager::{self, Fetched, Images, Puller};
use unitlet::images::store::Store;
use unitlet::objects::{IssuedToken, ObjectSource, TokenFor};
use unitlet::runtime::{lookup_user, now_us, Config, PodReport, Runtime};
use unitlet::state::StateDir;
use unitlet::systemd::Units;
use unitlet_test_support::fake_units::{Call, FakeUnits, OnStop};

/// Restart back-off in these tests: 100 ms doubling to 400 ms.
const BASE_US: u64 = 100_000;
const MAX_US: u64 = 400_000;

/// What the node offers pods: 4 CPUs, 8 GiB.
const ALLOCATABLE: Allocatable = Allocatable {
    cpu_millis: 4000,
    memory_bytes: 8 << 30,
    ephemeral_storage_bytes: 0,
};

/// One agent on a fake systemd, with everything it reported.
struct Agent {
    rt: tokio::runtime::Runtime,
    desired: mpsc::Sender<Vec<Arc<StaticPod>>>,
    reports: Arc<Mutex<Vec<PodReport>>>,
    runtime: Runtime,
}

struct Rig {
    fake: Arc<FakeUnits>,
    dir: tempfile::TempDir,
    agent: Option<Agent>,
    objects: Option<Arc<dyn ObjectSource>>,
    images: Option<Images>,
    /// The machine's boot ID the next agent reads.
    boot_id: String,
}

/// Every ConfigMap or Secret a pod names holds `k: v`.
struct Everything(tokio::sync::watch::Sender<u64>);

impl ObjectSource for Everything {
    fn lookup(&self, _namespace: &str, _r: &ObjectRef) -> Lookup {
        let mut data = ObjectData::default();
        data.data.insert("k".into(), b"v".to_vec());
        Lookup::Found(Arc::new(data))
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
    fn request_token(
        &self,
        _for_pod: TokenFor,
        _token: TokenRef,
    ) -> futures_util::future::BoxFuture<'static, Result<IssuedToken, String>> {
        Box::pin(async { Err("no tokens here".to_string()) })
    }
}

fn pod(name: &str, spec: serde_json::Value) -> Arc<StaticPod> {
    let doc = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    let text = serde_json::to_vec(&doc).unwrap();
    Arc::new(unitlet::core::manifest::parse_manifest(&text, name, "n1", true).expect("a valid pod"))
}

fn sh(name: &str) -> serde_json::Value {
    json!({"name": name, "image": "host", "command": ["/bin/sh", "-c", "sleep 1000"]})
}

impl Rig {
    fn new() -> Rig {
        Rig {
            fake: FakeUnits::new(),
            dir: tempfile::tempdir().unwrap(),
            agent: None,
            objects: None,
            images: None,
            boot_id: "boot-1".into(),
        }
    }

    /// Starts an agent (a new process, as far as the runtime can tell:
    /// its own tokio runtime, the state directory as left).
    fn start(&mut self, pods: Vec<Arc<StaticPod>>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (report_tx, mut report_rx) = mpsc::unbounded_channel();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        rt.spawn(async move {
            while let Some(r) = report_rx.recv().await {
                seen.lock().unwrap().push(r);
            }
        });
        let state = StateDir::open(self.dir.path().join("state")).unwrap();
        let cfg = Config {
            node: NodeFacts {
                node_name: "n1".into(),
                host_ip: "10.0.0.1".into(),
                allocatable: ALLOCATABLE,
                pods_dir: self.dir.path().join("state/pods").to_string_lossy().into(),
                hardening: Default::default(),
                agent_exe: "/usr/bin/unitlet".into(),
            },
            backoff: BackoffConfig {
                base_us: BASE_US,
                max_us: MAX_US,
            },
            relist: Duration::from_secs(3600),
            workers: 4,
            max_starting: 64,
            reports: Some(report_tx),
            objects: self.objects.clone(),
            allowed_host_paths: Vec::new(),
            images: self.images.clone(),
            boot_id: self.boot_id.clone(),
        };
        let (tx, rx) = mpsc::channel(4);
        let runtime = Runtime::new(self.fake.clone(), state, cfg);
        let handle = runtime.clone();
        rt.spawn(runtime.run(rx));
        tx.try_send(pods).unwrap();
        self.agent = Some(Agent {
            rt,
            desired: tx,
            reports,
            runtime: handle,
        });
    }

    /// `kill -9` of the agent: its tasks end where they are.
    fn kill(&mut self) {
        if let Some(a) = self.agent.take() {
            a.rt.shutdown_background();
        }
    }

    /// The machine restarts under a dead agent: its units are gone and the
    /// boot ID is new; the state directory is kept.
    fn reboot(&mut self) {
        self.kill();
        self.fake.power_cut();
        self.boot_id = format!("{}+", self.boot_id);
    }

    fn set(&self, pods: Vec<Arc<StaticPod>>) {
        self.agent.as_ref().unwrap().desired.try_send(pods).unwrap();
    }

    fn reports(&self) -> Vec<PodReport> {
        self.agent.as_ref().unwrap().reports.lock().unwrap().clone()
    }

    /// The latest status reported for pod `name`.
    fn status(&self, name: &str) -> Option<k8s_openapi::api::core::v1::PodStatus> {
        self.reports().into_iter().rev().find_map(|r| match r {
            PodReport::Status {
                name: n, status, ..
            } if n == name => Some(*status),
            _ => None,
        })
    }

    fn phase(&self, name: &str) -> String {
        self.status(name).and_then(|s| s.phase).unwrap_or_default()
    }

    /// The unit of container `c` (started or not yet) of pod `p`.
    fn unit(&self, p: &StaticPod, c: &str) -> String {
        let plan = translate(&p.pod, &node_facts(), &lookup_user);
        plan.init
            .iter()
            .chain(&plan.containers)
            .chain(&plan.ephemeral)
            .find(|x| x.name == c)
            .map(|x| x.unit.clone())
            .expect("container in the plan")
    }

    /// Waits (up to 5 s) for `what` to hold.
    fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\ncalls: {:#?}\nlast reports: {:#?}",
                self.fake.calls(),
                self.reports().iter().rev().take(3).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn starts_of(&self, unit: &str) -> Vec<u64> {
        self.fake
            .timed_calls()
            .into_iter()
            .filter_map(|(t, c)| {
                matches!(c, Call::StartTransient { unit: u, .. } if u == unit).then_some(t)
            })
            .collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node_facts() -> NodeFacts {
    NodeFacts {
        node_name: "n1".into(),
        host_ip: "10.0.0.1".into(),
        allocatable: Allocatable::default(),
        pods_dir: "/nonexistent".into(),
        hardening: Default::default(),
        agent_exe: "/usr/bin/unitlet".into(),
    }
}

#[test]
fn init_containers_run_one_at_a_time_before_the_app() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"initContainers": [sh("i1"), sh("i2")], "containers": [sh("c")]}),
    );
    let (i1, i2, c) = (rig.unit(&p, "i1"), rig.unit(&p, "i2"), rig.unit(&p, "c"));
    rig.start(vec![p]);
    rig.wait("i1 started", || rig.fake.started() == [i1.clone()]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        rig.fake.started(),
        std::slice::from_ref(&i1),
        "nothing else before i1 ends"
    );
    assert_eq!(rig.phase("p"), "Pending");
    rig.fake.exit(&i1, 0);
    rig.wait("i2 started", || {
        rig.fake.started() == [i1.clone(), i2.clone()]
    });
    rig.fake.exit(&i2, 0);
    rig.wait("c started", || rig.fake.started().last() == Some(&c));
    rig.wait("Running", || rig.phase("p") == "Running");
    assert_eq!(rig.fake.started(), [i1, i2, c], "each once, in order");
}

#[test]
fn a_failing_init_container_under_each_restart_policy() {
    for policy in ["Never", "OnFailure", "Always"] {
        let mut rig = Rig::new();
        let p = pod(
            "p",
            json!({"restartPolicy": policy, "initContainers": [sh("i")], "containers": [sh("c")]}),
        );
        let (i, c) = (rig.unit(&p, "i"), rig.unit(&p, "c"));
        rig.start(vec![p]);
        rig.wait("i started", || rig.fake.started() == [i.clone()]);
        rig.fake.exit(&i, 3);
        if policy == "Never" {
            rig.wait("Failed", || rig.phase("p") == "Failed");
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                rig.fake.started(),
                std::slice::from_ref(&i),
                "{policy}: no restart, no app"
            );
        } else {
            rig.wait("i restarted", || rig.starts_of(&i).len() == 2);
            rig.fake.exit(&i, 3);
            rig.wait("i restarted again", || rig.starts_of(&i).len() == 3);
            assert!(!rig.fake.started().contains(&c), "{policy}: the app waits");
            assert_eq!(rig.phase("p"), "Pending", "{policy}");
            rig.fake.exit(&i, 0);
            rig.wait("c started", || rig.fake.started().contains(&c));
        }
    }
}

#[test]
fn crash_loop_back_off_doubles_to_its_cap() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("c")]}));
    let c = rig.unit(&p, "c");
    rig.start(vec![p]);
    let mut exits = Vec::new();
    for n in 1..=5 {
        rig.wait("a start", || rig.starts_of(&c).len() == n);
        exits.push(now_us());
        rig.fake.exit(&c, 1);
    }
    rig.wait("the sixth start", || rig.starts_of(&c).len() == 6);
    let starts = rig.starts_of(&c);
    // Delay from each exit to the next start: the kubelet's sequence, scaled.
    let delays: Vec<u64> = exits
        .iter()
        .zip(&starts[1..])
        .map(|(e, s)| s.saturating_sub(*e))
        .collect();
    let want = [0, BASE_US, 2 * BASE_US, MAX_US, MAX_US];
    for (got, want) in delays.iter().zip(want) {
        assert!(
            *got + 20_000 >= want && *got < want + 150_000,
            "back-off delays {delays:?}, wanted about {:?}",
            [0, BASE_US, 2 * BASE_US, MAX_US, MAX_US]
        );
    }
    let st = rig.status("p").unwrap();
    let cs = &st.container_statuses.unwrap()[0];
    assert!(cs.restart_count >= 4, "{cs:?}");
}

#[test]
fn graceful_termination_runs_pre_stop_then_sigterm_then_sigkill_at_the_grace() {
    let mut rig = Rig::new();
    let mut spec = json!({"terminationGracePeriodSeconds": 30, "containers": [sh("c")]});
    spec["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 1}}});
    let p = pod("p", spec);
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("c running", || rig.fake.running().contains(&c));
    rig.fake.on_stop(&c, OnStop::Ignores);
    let mut deleting = (*p).clone();
    deleting.deletion_grace_s = Some(2);
    let asked = now_us();
    rig.set(vec![Arc::new(deleting)]);
    rig.wait("SIGKILL", || {
        rig.fake
            .calls()
            .iter()
            .any(|x| matches!(x, Call::KillAll(u, 9) if *u == c))
    });
    let calls = rig.fake.timed_calls();
    let stop = calls
        .iter()
        .find(|(_, x)| matches!(x, Call::Stop(u) if u.ends_with(".slice")))
        .expect("the pod's slice stopped");
    let kill = calls
        .iter()
        .find(|(_, x)| matches!(x, Call::KillAll(u, 9) if *u == c))
        .unwrap();
    assert!(
        stop.0 >= asked + 950_000,
        "SIGTERM came {} ms after the deletion, before preStop's 1 s",
        (stop.0 - asked) / 1000
    );
    assert!(
        kill.0 >= asked + 1_950_000 && kill.0 < asked + 3_000_000,
        "SIGKILL {} ms after the deletion, grace 2 s",
        (kill.0 - asked) / 1000
    );
    rig.wait("Stopped reported", || {
        rig.reports()
            .iter()
            .any(|r| matches!(r, PodReport::Stopped { name, .. } if name == "p"))
    });
}

#[test]
fn native_sidecars_start_first_stop_last_and_let_the_pod_complete() {
    let mut rig = Rig::new();
    let mut side = sh("side");
    side["restartPolicy"] = json!("Always");
    let p = pod(
        "p",
        json!({"restartPolicy": "Never", "initContainers": [side, sh("i")], "containers": [sh("c")]}),
    );
    let (s, i, c) = (rig.unit(&p, "side"), rig.unit(&p, "i"), rig.unit(&p, "c"));
    rig.start(vec![p]);
    rig.wait("i started beside the sidecar", || {
        rig.fake.started() == [s.clone(), i.clone()]
    });
    rig.fake.exit(&i, 0);
    rig.wait("c started", || {
        rig.fake.started() == [s.clone(), i.clone(), c.clone()]
    });
    assert!(rig.fake.running().contains(&s), "the sidecar keeps running");
    rig.fake.exit(&c, 0);
    rig.wait("the sidecar stopped once the app is done", || {
        rig.fake
            .calls()
            .iter()
            .any(|x| matches!(x, Call::KillAll(u, 15) if *u == s))
    });
    rig.wait("Succeeded", || rig.phase("p") == "Succeeded");
    assert_eq!(rig.starts_of(&s).len(), 1, "the sidecar was not restarted");
}

#[test]
fn a_restarted_agent_adopts_running_units_and_stops_orphans() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("c")]}));
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let before = rig.fake.unit(&c).unwrap();
    rig.kill();
    // A unit of ours that no admitted pod owns.
    let orphan = "unitlet_default_gone_c_0123456789ab.service";
    rig.fake.preload(
        orphan,
        "unitlet-0-pod0123456789ab.slice",
        unitlet::core::observe::UnitSnapshot {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: "ff".repeat(16),
            main_pid: 77,
            exec_main_start_us: 1,
            ..Default::default()
        },
    );
    rig.start(vec![p]);
    rig.wait("the orphan stopped", || {
        rig.fake
            .calls()
            .iter()
            .any(|x| matches!(x, Call::Stop(u) if u == orphan))
    });
    rig.wait("Running reported by the new agent", || {
        rig.phase("p") == "Running"
    });
    assert_eq!(
        rig.starts_of(&c).len(),
        1,
        "the running container was not restarted: {:#?}",
        rig.fake
            .calls()
            .iter()
            .filter(|x| !matches!(x, Call::StartTransient { .. }))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rig.fake.unit(&c).unwrap(),
        before,
        "same invocation, same process"
    );
    let st = rig.status("p").unwrap();
    assert_eq!(st.container_statuses.unwrap()[0].restart_count, 0);
}

/// A pod record the new agent cannot read is not a licence to stop the
/// pod: its unit is no orphan, and once the pod is named again it is
/// recorded anew and its running unit adopted.
#[test]
fn a_damaged_record_neither_orphans_nor_restarts_its_pod() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("c")]}));
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let before = rig.fake.unit(&c).unwrap();
    rig.kill();
    let uid = p.pod.metadata.uid.clone().unwrap();
    let record = rig.dir.path().join(format!("state/pods/{uid}/pod.json"));
    std::fs::write(&record, b"{\"pod\": {\"metadata\"").unwrap();
    // Nothing names the pod at first (its manifest is being rewritten).
    rig.start(vec![]);
    rig.wait("the initial sync", || {
        rig.agent.as_ref().unwrap().runtime.synced()
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !rig.fake.calls().iter().any(|x| matches!(x, Call::Stop(_))),
        "a unit was stopped: {:#?}",
        rig.fake.calls()
    );
    rig.set(vec![p]);
    rig.wait("Running reported by the new agent", || {
        rig.phase("p") == "Running"
    });
    assert_eq!(
        rig.starts_of(&c).len(),
        1,
        "the container was started again"
    );
    assert_eq!(rig.fake.unit(&c).unwrap(), before);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(saved["pod"]["metadata"]["uid"], uid.as_str());
}

/// The container status of `c` in the last status reported for pod `p`.
fn container(rig: &Rig, p: &str, c: &str) -> serde_json::Value {
    let status = serde_json::to_value(rig.status(p).expect("a status")).unwrap();
    status["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == c).cloned())
        .unwrap_or_else(|| panic!("no status of {p}/{c} in {status:#}"))
}

/// systemd re-executed numbers its messages from 1 again: what it says
/// afterwards is newer than anything cached before, not older.
#[test]
fn after_systemd_re_executes_its_news_is_not_taken_for_old() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"restartPolicy": "Never", "containers": [sh("c")]}),
    );
    let c = rig.unit(&p, "c");
    rig.start(vec![p]);
    rig.wait("Running", || rig.phase("p") == "Running");
    rig.fake.reexec();
    rig.fake.exit(&c, 3);
    rig.wait("Failed", || rig.phase("p") == "Failed");
    assert_eq!(
        container(&rig, "p", "c")["state"]["terminated"]["exitCode"],
        3
    );
}

#[test]
fn after_a_reboot_each_pod_follows_its_restart_policy() {
    let mut rig = Rig::new();
    let always = pod(
        "always",
        json!({"initContainers": [sh("init")], "containers": [sh("app")]}),
    );
    let never = pod(
        "never",
        json!({"restartPolicy": "Never", "containers": [sh("c")]}),
    );
    let done = pod(
        "done",
        json!({"restartPolicy": "OnFailure", "containers": [sh("c")]}),
    );
    let failing = pod(
        "failing",
        json!({"restartPolicy": "OnFailure", "containers": [sh("c")]}),
    );
    let (init, app) = (rig.unit(&always, "init"), rig.unit(&always, "app"));
    let (never_c, done_c, failing_c) = (
        rig.unit(&never, "c"),
        rig.unit(&done, "c"),
        rig.unit(&failing, "c"),
    );
    let all = vec![always.clone(), never.clone(), done.clone(), failing.clone()];
    rig.start(all.clone());
    rig.wait("the init container", || rig.fake.running().contains(&init));
    rig.fake.exit(&init, 0);
    rig.wait("everything running", || {
        let r = rig.fake.running();
        [&app, &never_c, &done_c, &failing_c]
            .iter()
            .all(|u| r.contains(u))
    });
    rig.fake.exit(&done_c, 0);
    rig.wait("Succeeded", || rig.phase("done") == "Succeeded");
    rig.wait("Running", || {
        rig.phase("always") == "Running" && rig.phase("failing") == "Running"
    });

    rig.reboot();
    rig.start(all);
    // Always: the pod starts over from its init container.
    rig.wait("the init container again", || {
        rig.fake.running().contains(&init)
    });
    assert_eq!(
        rig.starts_of(&app).len(),
        1,
        "the app started before its init container"
    );
    rig.fake.exit(&init, 0);
    rig.wait("Running again", || {
        rig.fake.running().contains(&app) && rig.phase("always") == "Running"
    });
    rig.wait("the status of the new instance", || {
        container(&rig, "always", "app")["restartCount"] == 1
    });
    let app_status = container(&rig, "always", "app");
    let last = &app_status["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 255, "{app_status:#}");
    assert_eq!(last["reason"], "Unknown", "{app_status:#}");
    // OnFailure, still running at the reboot: it ran again, counted.
    rig.wait("failing restarted", || {
        rig.fake.running().contains(&failing_c)
            && container(&rig, "failing", "c")["restartCount"] == 1
    });
    // Never: it ran once, and the reboot ended it.
    rig.wait("Failed", || rig.phase("never") == "Failed");
    let c = container(&rig, "never", "c");
    assert_eq!(c["state"]["terminated"]["exitCode"], 255, "{c:#}");
    assert_eq!(c["state"]["terminated"]["reason"], "Unknown", "{c:#}");
    // OnFailure that had succeeded stays so.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.phase("done"), "Succeeded");
    assert_eq!(rig.starts_of(&never_c).len(), 1, "a Never pod ran twice");
    assert_eq!(
        rig.starts_of(&done_c).len(),
        1,
        "a pod that succeeded ran twice"
    );
    assert_eq!(rig.starts_of(&init).len(), 2);
    assert_eq!(rig.starts_of(&app).len(), 2);
    assert_eq!(rig.starts_of(&failing_c).len(), 2);

    // An agent restarted on the same boot changes none of this.
    rig.kill();
    let calls = rig.fake.calls().len();
    rig.start(vec![always, never, done, failing]);
    rig.wait("the initial sync", || {
        rig.agent.as_ref().unwrap().runtime.synced()
    });
    std::thread::sleep(Duration::from_millis(200));
    let later: Vec<Call> = rig.fake.calls().split_off(calls);
    assert!(
        !later
            .iter()
            .any(|c| matches!(c, Call::StartTransient { .. } | Call::Stop(_))),
        "the agent restarted on the same boot acted: {later:#?}"
    );
}

#[test]
fn a_terminal_phase_never_moves_backwards() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"restartPolicy": "Never", "containers": [sh("c")]}),
    );
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("c running", || rig.fake.running().contains(&c));
    rig.fake.exit(&c, 2);
    rig.wait("Failed", || rig.phase("p") == "Failed");
    // The failed unit is reset (by an admin, or collected) and the agent
    // restarts: nothing may bring the pod back to Pending or Running.
    rig.kill();
    let reset = rig.fake.clone();
    futures_util::FutureExt::now_or_never(reset.reset_failed(&c))
        .unwrap()
        .unwrap();
    rig.start(vec![p]);
    std::thread::sleep(Duration::from_millis(500));
    let phases: Vec<String> = rig
        .reports()
        .into_iter()
        .filter_map(|r| match r {
            PodReport::Status { status, .. } => status.phase,
            _ => None,
        })
        .collect();
    assert!(
        phases.iter().all(|ph| ph == "Failed"),
        "after the restart the agent reported {phases:?}"
    );
    assert_eq!(
        rig.starts_of(&c).len(),
        1,
        "a Never pod's container is not run again"
    );
}

#[test]
fn env_from_objects_is_not_a_changed_definition() {
    // The unit made with env looked up from a ConfigMap differs from the
    // plan's; only a change of the plan may replace the container.
    let mut rig = Rig::new();
    rig.objects = Some(Arc::new(Everything(tokio::sync::watch::channel(0).0)));
    let mut c = sh("c");
    c["env"] = json!([{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}}]);
    let p = pod("p", json!({"containers": [c]}));
    let unit = rig.unit(&p, "c");
    rig.start(vec![p]);
    rig.wait("Running", || rig.phase("p") == "Running");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.starts_of(&unit).len(), 1, "{:#?}", rig.fake.calls());
    let Some(Call::StartTransient { properties, .. }) = rig.fake.calls().into_iter().next() else {
        panic!("no start");
    };
    assert!(
        format!("{properties:?}").contains("\"V\", \"v\""),
        "the looked-up value reaches the unit: {properties:?}"
    );
}

/// A newer version of `p` (same UID, as the API server's update of a
/// running pod), made by `f` on its JSON.
fn updated(p: &StaticPod, f: impl FnOnce(&mut serde_json::Value)) -> Arc<StaticPod> {
    let mut v = serde_json::to_value(&p.pod).unwrap();
    f(&mut v);
    Arc::new(StaticPod {
        pod: serde_json::from_value(v).unwrap(),
        uid: p.uid.clone(),
        deletion_grace_s: None,
        update_error: None,
        terminal: false,
    })
}

impl Rig {
    /// Calls that stop, kill or replace unit `unit`.
    fn disturbances(&self, unit: &str) -> Vec<Call> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| match c {
                Call::Stop(u) | Call::KillAll(u, _) | Call::ResetFailed(u) => u == unit,
                Call::StartTransient { unit: u, .. } => u == unit,
                _ => false,
            })
            .collect()
    }

    fn events(&self) -> Vec<(bool, String, String)> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                PodReport::Event {
                    warning,
                    reason,
                    message,
                    ..
                } => Some((warning, reason.to_string(), message)),
                _ => None,
            })
            .collect()
    }

    fn condition(
        &self,
        name: &str,
        kind: &str,
    ) -> Option<k8s_openapi::api::core::v1::PodCondition> {
        self.status(name)?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == kind)
    }
}

fn sized(name: &str, cpu: &str, memory: &str) -> serde_json::Value {
    let mut c = sh(name);
    c["resources"] = json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}});
    c
}

/// Every update the API server accepts for a running pod (labels,
/// annotations, tolerations, activeDeadlineSeconds, an ephemeral
/// container, a resize) leaves its container running: same process, no
/// stop, no kill, no second start.
#[test]
fn a_running_pod_survives_every_update_the_api_allows() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sized("c", "500m", "64Mi")]}));
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let before = rig.fake.unit(&c).unwrap();
    let mut current = p.clone();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let steps: Vec<(&str, Edit)> = vec![
        (
            "labels",
            Box::new(|v| v["metadata"]["labels"] = json!({"tier": "web"})),
        ),
        (
            "annotations",
            Box::new(|v| v["metadata"]["annotations"]["note"] = json!("x")),
        ),
        (
            "tolerations",
            Box::new(|v| v["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}])),
        ),
        (
            "activeDeadlineSeconds",
            Box::new(|v| v["spec"]["activeDeadlineSeconds"] = json!(100_000)),
        ),
        (
            "ephemeralContainers",
            Box::new(|v| {
                v["spec"]["ephemeralContainers"] = json!([
                    {"name": "debug", "image": "host", "command": ["/bin/sh", "-c", "sleep 1000"], "targetContainerName": "c"}
                ])
            }),
        ),
        (
            "resize",
            Box::new(|v| {
                v["spec"]["containers"][0]["resources"] = json!(
            {"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}})
            }),
        ),
    ];
    for (what, f) in steps {
        current = updated(&current, |v| f(v));
        rig.set(vec![current.clone()]);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            rig.disturbances(&c).len(),
            1,
            "after the {what} update, the container was disturbed: {:#?}",
            rig.disturbances(&c)
        );
        assert_eq!(
            rig.fake.unit(&c).unwrap().invocation_id,
            before.invocation_id,
            "{what}"
        );
        assert_eq!(rig.phase("p"), "Running", "{what}");
    }
    let debug = rig.unit(&current, "debug");
    assert!(
        rig.fake.running().contains(&debug),
        "the ephemeral container runs"
    );
    // The resize reached the running unit, in place.
    let set: Vec<_> = rig
        .fake
        .calls()
        .into_iter()
        .filter_map(|x| match x {
            Call::SetProperties { unit, properties } if unit == c => Some(properties),
            _ => None,
        })
        .collect();
    assert_eq!(
        set,
        [vec![
            Property::MemoryMax(128 << 20),
            Property::CpuQuotaPerSecUSec(1_000_000),
            Property::CpuWeight(unitlet::core::resources::cpu_weight(1000)),
        ]]
    );
    let st = rig.status("p").unwrap();
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.restart_count, 0);
    let res = cs.resources.as_ref().expect("status resources");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "128Mi");
    assert_eq!(cs.allocated_resources.as_ref().unwrap()["cpu"].0, "1");
    let eph = st.ephemeral_container_statuses.expect("ephemeral statuses");
    assert!(eph[0].state.as_ref().unwrap().running.is_some());
    assert!(rig.condition("p", "PodResizeInProgress").is_none());
    assert!(rig.condition("p", "PodResizePending").is_none());
}

/// A new image is a new definition: that container, and only it, is
/// restarted, as the kubelet does.
#[test]
fn a_new_image_restarts_only_its_container() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("a"), sh("b")]}));
    let (a, b) = (rig.unit(&p, "a"), rig.unit(&p, "b"));
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let next = updated(&p, |v| {
        v["spec"]["containers"][0]["command"] = json!(["/bin/sh", "-c", "sleep 2000"])
    });
    rig.set(vec![next]);
    rig.wait("a restarted", || rig.starts_of(&a).len() == 2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.disturbances(&b).len(), 1, "b untouched");
    rig.wait("restartCount 1", || {
        rig.status("p")
            .is_some_and(|s| s.container_statuses.unwrap()[0].restart_count == 1)
    });
}

/// A resize whose container asks for RestartContainer restarts that
/// container; one that does not fit the node is pending, with the
/// kubelet's reason and message, and nothing changes.
#[test]
fn resize_policies_and_pending_resizes() {
    let mut rig = Rig::new();
    let mut c = sized("c", "500m", "64Mi");
    c["resizePolicy"] = json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
    let p = pod("p", json!({"containers": [c, sized("other", "1", "1Gi")]}));
    let unit = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    // More CPU than the node has: Infeasible.
    let big = updated(
        &p,
        |v| v["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "8", "memory": "64Mi"}, "limits": {"cpu": "8", "memory": "64Mi"}}),
    );
    rig.set(vec![big]);
    rig.wait("Infeasible", || {
        rig.condition("p", "PodResizePending")
            .is_some_and(|c| c.reason.as_deref() == Some("Infeasible"))
    });
    let cond = rig.condition("p", "PodResizePending").unwrap();
    assert_eq!(cond.status, "True");
    assert_eq!(
        cond.message.as_deref(),
        Some("Node didn't have enough capacity: cpu, requested: 9000, capacity: 4000")
    );
    let st = rig.status("p").unwrap();
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        cs.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0,
        "500m",
        "still the allocated size"
    );
    assert!(!rig
        .fake
        .calls()
        .iter()
        .any(|x| matches!(x, Call::SetProperties { .. })));
    // Fits: memory changes, and memory restarts this container.
    let more = updated(
        &p,
        |v| v["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "500m", "memory": "96Mi"}, "limits": {"cpu": "500m", "memory": "96Mi"}}),
    );
    rig.set(vec![more]);
    rig.wait("c restarted for its memory", || {
        rig.starts_of(&unit).len() == 2
    });
    rig.wait("no longer pending", || {
        rig.condition("p", "PodResizePending").is_none()
    });
    let started = rig
        .fake
        .calls()
        .into_iter()
        .rev()
        .find_map(|x| match x {
            Call::StartTransient {
                unit: u,
                properties,
            } if u == unit => Some(properties),
            _ => None,
        })
        .unwrap();
    assert!(
        started.contains(&Property::MemoryMax(96 << 20)),
        "{started:?}"
    );
}

/// A resize that fits the node but not beside the other pods waits (Deferred).
#[test]
fn a_resize_beyond_what_is_free_is_deferred() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sized("c", "1", "64Mi")]}));
    let q = pod("q", json!({"containers": [sized("c", "2", "64Mi")]}));
    rig.start(vec![p.clone(), q.clone()]);
    rig.wait("Running", || {
        rig.phase("p") == "Running" && rig.phase("q") == "Running"
    });
    let big = updated(
        &p,
        |v| v["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "3", "memory": "64Mi"}, "limits": {"cpu": "3", "memory": "64Mi"}}),
    );
    rig.set(vec![big, q]);
    rig.wait("Deferred", || {
        rig.condition("p", "PodResizePending")
            .is_some_and(|c| c.reason.as_deref() == Some("Deferred"))
    });
    assert_eq!(
        rig.condition("p", "PodResizePending")
            .unwrap()
            .message
            .as_deref(),
        Some("Node didn't have enough resource: cpu, requested: 3000, used: 2000, capacity: 4000")
    );
}

/// An update unitlet cannot apply to a running pod is reported; the pod
/// keeps running as it was. The same pod never started is rejected.
#[test]
fn an_update_that_cannot_apply_leaves_the_pod_running() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("c")]}));
    let c = rig.unit(&p, "c");
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let bad = Arc::new(StaticPod {
        update_error: Some("pod default/p: spec.shareProcessNamespace: not supported".into()),
        ..(*updated(&p, |v| v["spec"]["shareProcessNamespace"] = json!(true))).clone()
    });
    rig.set(vec![bad.clone()]);
    rig.wait("the warning", || {
        rig.events()
            .iter()
            .any(|(w, r, m)| *w && r == "UnsupportedPodSpec" && m.contains("shareProcessNamespace"))
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.disturbances(&c).len(), 1, "{:#?}", rig.disturbances(&c));
    let st = rig.status("p").unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert!(st.message.unwrap_or_default().contains("keeps running"));
    // A pod that never ran is rejected instead.
    let fresh = Arc::new(StaticPod {
        uid: "another".into(),
        ..(*bad).clone()
    });
    let mut fresh_pod = (*fresh).clone();
    Arc::make_mut(&mut fresh_pod.pod).metadata.name = Some("fresh".into());
    rig.set(vec![bad, Arc::new(fresh_pod)]);
    rig.wait("fresh rejected", || rig.phase("fresh") == "Failed");
    assert_eq!(
        rig.status("fresh").unwrap().reason.as_deref(),
        Some("UnsupportedPodSpec")
    );
}

/// activeDeadlineSeconds: past it the pod is Failed (DeadlineExceeded)
/// and its containers are stopped; nothing restarts them.
#[test]
fn active_deadline_fails_the_pod_and_stops_its_containers() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"activeDeadlineSeconds": 1, "containers": [sh("c")]}),
    );
    let c = rig.unit(&p, "c");
    rig.start(vec![p]);
    rig.wait("Running", || rig.phase("p") == "Running");
    rig.wait("Failed", || rig.phase("p") == "Failed");
    let st = rig.status("p").unwrap();
    assert_eq!(st.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        st.message.as_deref(),
        Some(unitlet::core::live::DEADLINE_MESSAGE)
    );
    rig.wait("SIGTERM", || {
        rig.fake.calls().contains(&Call::KillAll(c.clone(), 15))
    });
    rig.wait("stopped", || !rig.fake.running().contains(&c));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rig.starts_of(&c).len(), 1, "not restarted");
    assert!(rig.events().iter().any(|(_, r, _)| r == "DeadlineExceeded"));
    assert_eq!(rig.phase("p"), "Failed");
}

/// An ephemeral container runs once: when it exits it shows Terminated
/// with its exit code and is never restarted, whatever the pod's policy;
/// a restarted agent adopts it like any container.
#[test]
fn ephemeral_containers_run_once_and_are_adopted() {
    let mut rig = Rig::new();
    let p = pod("p", json!({"containers": [sh("c")]}));
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let next = updated(&p, |v| {
        v["spec"]["ephemeralContainers"] = json!([
            {"name": "dbg", "image": "host", "command": ["/bin/sh", "-c", "sleep 1000"]},
            {"name": "bad", "image": "host"}
        ])
    });
    let dbg = rig.unit(&next, "dbg");
    rig.set(vec![next.clone()]);
    rig.wait("dbg running", || rig.fake.running().contains(&dbg));
    rig.kill();
    rig.start(vec![next]);
    rig.wait("Running reported by the new agent", || {
        rig.phase("p") == "Running"
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.starts_of(&dbg).len(), 1, "adopted, not restarted");
    rig.fake.exit(&dbg, 3);
    rig.wait("dbg terminated", || {
        rig.status("p")
            .and_then(|s| s.ephemeral_container_statuses)
            .is_some_and(|e| {
                e.iter().any(|x| {
                    x.name == "dbg"
                        && x.state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| t.exit_code == 3)
                })
            })
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.starts_of(&dbg).len(), 1, "never restarted");
    let st = rig.status("p").unwrap();
    assert_eq!(
        st.phase.as_deref(),
        Some("Running"),
        "an ephemeral container never fails the pod"
    );
    let bad = st
        .ephemeral_container_statuses
        .unwrap()
        .into_iter()
        .find(|x| x.name == "bad")
        .unwrap();
    let waiting = bad.state.unwrap().waiting.unwrap();
    assert_eq!(
        waiting.reason.as_deref(),
        Some("CreateContainerConfigError")
    );
    assert!(waiting
        .message
        .unwrap()
        .contains("spec.ephemeralContainers[1].command"));
}

/// Pod-level resources go on the pod's slice, made with them before any
/// container, and a resize changes the slice in place.
#[test]
fn pod_level_resources_limit_the_slice() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"resources": {"limits": {"cpu": "1", "memory": "256Mi"}}, "containers": [sh("c")]}),
    );
    let plan = translate(&p.pod, &node_facts(), &lookup_user);
    rig.start(vec![p.clone()]);
    rig.wait("Running", || rig.phase("p") == "Running");
    let calls = rig.fake.calls();
    let Some(Call::StartTransient { unit, properties }) = calls.first() else {
        panic!("{calls:?}")
    };
    assert_eq!(unit, &plan.slice, "the slice first");
    assert!(
        properties.contains(&Property::MemoryMax(256 << 20)),
        "{properties:?}"
    );
    assert!(
        properties.contains(&Property::CpuQuotaPerSecUSec(1_000_000)),
        "{properties:?}"
    );
    let next = updated(&p, |v| {
        v["spec"]["resources"] = json!({"limits": {"cpu": "2", "memory": "512Mi"}})
    });
    rig.set(vec![next]);
    rig.wait("slice resized", || {
        rig.fake.calls().iter().any(|x| {
            matches!(x, Call::SetProperties { unit, properties }
            if unit == &plan.slice && properties.contains(&Property::MemoryMax(512 << 20)))
        })
    });
    rig.wait("status resources", || {
        rig.status("p")
            .and_then(|s| s.resources)
            .and_then(|r| r.limits)
            .is_some_and(|l| l["memory"].0 == "512Mi")
    });
}

/// A registry and HTTP server in one: each image's fetch outcome is
/// scripted (failures first, then success), and every fetch is counted.
struct FakePuller {
    fetches: Mutex<Vec<String>>,
    failures: Mutex<std::collections::HashMap<String, u32>>,
    delay: Duration,
}

impl Puller for FakePuller {
    fn fetch<'a>(
        &'a self,
        req: manager::Request<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<Fetched, String>> {
        let (image, store) = (req.image, req.store);
        Box::pin(async move {
            let (name, kind) = match image {
                unitlet::core::image::ImageRef::Artifact(a) => {
                    (a.url.clone(), unitlet::core::image::TreeKind::Artifact)
                }
                unitlet::core::image::ImageRef::Oci(r) => {
                    (r.to_string(), unitlet::core::image::TreeKind::Oci)
                }
                _ => unreachable!(),
            };
            self.fetches.lock().unwrap().push(name.clone());
            tokio::time::sleep(self.delay).await;
            if let Some(n) = self.failures.lock().unwrap().get_mut(&name) {
                if *n > 0 {
                    *n -= 1;
                    return Err(format!("GET {name}: 503 Service Unavailable"));
                }
            }
            use sha2::Digest as _;
            let hex = format!("{:x}", sha2::Sha256::digest(name.as_bytes()));
            let digest = unitlet::core::image::Digest::parse(&format!("sha256:{hex}")).unwrap();
            let staging = store.staging().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(staging.tree().join("bin")).unwrap();
            std::fs::write(staging.tree().join("bin/svc"), "#!/bin/sh\n").unwrap();
            store.commit(staging, &digest).map_err(|e| e.to_string())?;
            Ok(Fetched {
                id: format!("{name}@{digest}"),
                digest,
                kind,
                config: unitlet::core::image::ImageConfig {
                    entrypoint: vec!["/bin/svc".into()],
                    cmd: vec!["--serve".into()],
                    env: vec!["PATH=/bin".into(), "MODE=image".into()],
                    ..Default::default()
                },
                fetched_bytes: 1234,
                size: 10,
            })
        })
    }
}

impl Rig {
    /// Gives the agent an image store whose pulls `puller` answers, with
    /// a 200 ms pull back-off.
    fn with_images(&mut self, puller: Arc<FakePuller>) {
        let store = Store::open(&self.dir.path().join("images")).unwrap();
        let cfg = manager::Config {
            backoff_initial_us: 200_000,
            backoff_max_us: 400_000,
            ..Default::default()
        };
        self.images = Some(Images::new(store, puller, cfg).unwrap());
    }

    fn pod_events(&self, name: &str) -> Vec<(String, String)> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                PodReport::Event {
                    name: n,
                    reason,
                    message,
                    ..
                } if n == name => Some((reason.to_string(), message)),
                _ => None,
            })
            .collect()
    }

    fn waiting_reason(&self, name: &str) -> Option<String> {
        self.status(name)?
            .container_statuses?
            .first()?
            .state
            .as_ref()?
            .waiting
            .as_ref()?
            .reason
            .clone()
    }
}

fn fake_puller(failures: &[(&str, u32)], delay_ms: u64) -> Arc<FakePuller> {
    Arc::new(FakePuller {
        fetches: Mutex::new(Vec::new()),
        failures: Mutex::new(failures.iter().map(|(k, n)| (k.to_string(), *n)).collect()),
        delay: Duration::from_millis(delay_ms),
    })
}

fn properties_of(rig: &Rig, unit: &str) -> Vec<Property> {
    rig.fake
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::StartTransient {
                unit: u,
                properties,
            } if u == unit => Some(properties),
            _ => None,
        })
        .expect("the unit was created")
}

const ARTIFACT: &str = "https://dl.example.com/svc-1.4.2.tar.gz";

#[test]
fn a_hundred_pods_of_one_uncached_image_cause_one_download() {
    let mut rig = Rig::new();
    let puller = fake_puller(&[], 100);
    rig.with_images(puller.clone());
    let pods: Vec<_> = (0..100)
        .map(|i| {
            pod(
                &format!("p{i}"),
                json!({"containers": [{"name": "c", "image": ARTIFACT, "args": ["--port", "80"]}]}),
            )
        })
        .collect();
    rig.start(pods.clone());
    rig.wait("all running", || {
        (0..100).all(|i| rig.phase(&format!("p{i}")) == "Running")
    });
    assert_eq!(puller.fetches.lock().unwrap().len(), 1);
    // The unit runs the program from the tree mounted read-only, in it.
    let props = properties_of(&rig, &rig.unit(&pods[0], "c"));
    let exec = props
        .iter()
        .find_map(|p| match p {
            Property::ExecStart { argv, .. } => Some(argv.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(exec, ["/bin/svc", "--port", "80"]);
    assert!(props.contains(&Property::WorkingDirectory("/run/unitlet/image".into())));
    assert!(props.iter().any(|p| matches!(p,
        Property::BindReadOnlyPaths(b) if b.iter().any(|(src, dst)| src.contains("/images/sha256/") && dst == "/run/unitlet/image"))));
    let status = rig.status("p0").unwrap();
    let id = &status.container_statuses.unwrap()[0].image_id;
    assert!(id.starts_with(&format!("{ARTIFACT}@sha256:")), "{id}");
    let events = rig.pod_events("p0");
    assert!(
        events.contains(&("Pulling".into(), format!("Pulling image {ARTIFACT:?}"))),
        "{events:?}"
    );
    // Pods that asked while the pull ran get it as pulled; a later pod, as present.
    assert!(
        events.iter().any(|(r, m)| r == "Pulled"
            && m.starts_with(&format!("Successfully pulled image {ARTIFACT:?} in "))),
        "{events:?}"
    );
    let later = pod(
        "late",
        json!({"containers": [{"name": "c", "image": ARTIFACT}]}),
    );
    let mut all = pods;
    all.push(later);
    rig.set(all);
    rig.wait("the late pod running", || rig.phase("late") == "Running");
    assert_eq!(
        puller.fetches.lock().unwrap().len(),
        1,
        "a cached image is not fetched again"
    );
    assert!(rig.pod_events("late").contains(&(
        "Pulled".into(),
        format!("Container image {ARTIFACT:?} already present on machine")
    )));
}

#[test]
fn a_failing_pull_backs_off_then_succeeds() {
    let mut rig = Rig::new();
    let puller = fake_puller(&[(ARTIFACT, 2)], 0);
    rig.with_images(puller.clone());
    rig.start(vec![pod(
        "p",
        json!({"containers": [{"name": "c", "image": ARTIFACT}]}),
    )]);
    let mut seen = std::collections::BTreeSet::new();
    rig.wait("running after two failures", || {
        if let Some(r) = rig.waiting_reason("p") {
            seen.insert(r);
        }
        rig.phase("p") == "Running"
    });
    assert!(seen.contains("ErrImagePull"), "{seen:?}");
    assert!(seen.contains("ImagePullBackOff"), "{seen:?}");
    assert_eq!(
        puller.fetches.lock().unwrap().len(),
        3,
        "one fetch per back-off, no tight loop"
    );
    let events = rig.pod_events("p");
    for want in ["Failed", "BackOff", "Pulled"] {
        assert!(events.iter().any(|(r, _)| r == want), "{want}: {events:?}");
    }
    assert!(
        events.iter().any(|(_, m)| m
            == &format!(
                "Failed to pull image {ARTIFACT:?}: GET {ARTIFACT}: 503 Service Unavailable"
            )),
        "{events:?}"
    );
}

#[test]
fn never_policy_waits_with_err_image_never_pull_and_oci_runs_in_its_root() {
    let mut rig = Rig::new();
    let puller = fake_puller(&[], 0);
    rig.with_images(puller.clone());
    let oci = pod(
        "o",
        json!({"containers": [{"name": "c", "image": "registry.example.com/team/svc:1.0"}]}),
    );
    rig.start(vec![
        pod(
            "n",
            json!({"containers": [{"name": "c", "image": "registry.example.com/other:2", "imagePullPolicy": "Never"}]}),
        ),
        oci.clone(),
    ]);
    rig.wait("never-pull reason", || {
        rig.waiting_reason("n").as_deref() == Some("ErrImageNeverPull")
    });
    rig.wait("the OCI pod running", || rig.phase("o") == "Running");
    let props = properties_of(&rig, &rig.unit(&oci, "c"));
    assert!(props
        .iter()
        .any(|p| matches!(p, Property::RootDirectory(r) if r.contains("/images/sha256/"))));
    assert!(props.contains(&Property::ProtectSystem("strict".into())));
    let env = props
        .iter()
        .find_map(|p| match p {
            Property::Environment(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert!(env.contains(&("MODE".into(), "image".into())), "{env:?}");
    assert_eq!(
        puller.fetches.lock().unwrap().as_slice(),
        ["registry.example.com/team/svc:1.0"]
    );
}

#[test]
fn a_rollout_to_a_new_image_replaces_the_container_with_the_new_image_id() {
    let mut rig = Rig::new();
    const V2: &str = "https://dl.example.com/svc-1.4.3.tar.gz";
    let puller = fake_puller(&[(V2, 1)], 0);
    rig.with_images(puller.clone());
    let v1 = pod(
        "p",
        json!({"containers": [{"name": "c", "image": ARTIFACT}]}),
    );
    rig.start(vec![v1.clone()]);
    rig.wait("v1 running", || rig.phase("p") == "Running");
    let unit = rig.unit(&v1, "c");
    let id = |rig: &Rig| {
        rig.status("p")
            .and_then(|s| s.container_statuses)
            .map(|c| c[0].image_id.clone())
            .unwrap_or_default()
    };
    assert!(id(&rig).starts_with(ARTIFACT));
    rig.set(vec![pod(
        "p",
        json!({"containers": [{"name": "c", "image": V2}]}),
    )]);
    rig.wait("v2 running with its image ID", || {
        rig.phase("p") == "Running" && id(&rig).starts_with(V2)
    });
    // A static pod's new spec is a new pod (its UID hashes the spec): the
    // old pod goes, the new one's unit is made once its image is here.
    let _ = unit;
    let starts = rig
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::StartTransient { .. }))
        .count();
    assert_eq!(starts, 2);
    let events = rig.pod_events("p");
    assert!(
        events.iter().any(|(r, m)| r == "Failed" && m.contains(V2)),
        "{events:?}"
    );
    assert_eq!(
        puller.fetches.lock().unwrap().len(),
        3,
        "v1 once, v2 failed once then pulled"
    );
}

/// Node-pressure eviction through the runtime: the decision is recorded,
/// the containers get SIGTERM and SIGKILL at the eviction's grace period,
/// the pod ends Failed/Evicted with the DisruptionTarget condition and an
/// Evicted event, and it is never started again, also by a new agent.
#[test]
fn an_evicted_pod_is_failed_for_good_and_never_restarted() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"terminationGracePeriodSeconds": 30, "containers": [sh("c")]}),
    );
    let q = pod("q", json!({"containers": [sh("c")]}));
    let c = rig.unit(&p, "c");
    let qc = rig.unit(&q, "c");
    rig.start(vec![p.clone(), q.clone()]);
    rig.wait("Running", || {
        rig.phase("p") == "Running" && rig.phase("q") == "Running"
    });
    rig.fake.on_stop(&c, OnStop::Ignores);
    let runtime = rig.agent.as_ref().unwrap().runtime.clone();
    let active: Vec<String> = runtime.active_pods().into_iter().map(|a| a.uid).collect();
    assert!(active.contains(&p.uid) && active.contains(&q.uid));
    let message =
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. ";
    let asked = now_us();
    assert!(runtime
        .evict(&p.uid, message, 2, "memory.available")
        .unwrap());
    assert!(
        !runtime
            .evict(&p.uid, message, 2, "memory.available")
            .unwrap(),
        "once"
    );
    rig.wait("SIGKILL", || {
        rig.fake.calls().contains(&Call::KillAll(c.clone(), 9))
    });
    let calls = rig.fake.timed_calls();
    let at = |sig: i32| {
        calls
            .iter()
            .find(|(_, x)| *x == Call::KillAll(c.clone(), sig))
            .map(|(t, _)| *t)
            .unwrap()
    };
    assert!(at(15) < asked + 500_000, "SIGTERM at once");
    assert!(
        at(9) >= asked + 1_950_000 && at(9) < asked + 3_000_000,
        "SIGKILL {} ms after the eviction, grace 2 s",
        (at(9) - asked) / 1000
    );
    rig.wait("stopped", || !rig.fake.running().contains(&c));
    // Failed from the eviction on; the container shows terminated once the
    // pass after its unit stopped has reported.
    rig.wait("Failed with the container terminated", || {
        rig.status("p").is_some_and(|st| {
            st.phase.as_deref() == Some("Failed")
                && st
                    .container_statuses
                    .iter()
                    .flatten()
                    .all(|cs| cs.state.as_ref().is_some_and(|s| s.terminated.is_some()))
        })
    });
    let st = rig.status("p").unwrap();
    assert_eq!(st.reason.as_deref(), Some("Evicted"));
    assert_eq!(st.message.as_deref(), Some(message));
    let conds = st.conditions.unwrap();
    let dt = conds
        .iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .unwrap();
    assert_eq!(
        (dt.status.as_str(), dt.reason.as_deref()),
        ("True", Some("TerminationByKubelet"))
    );
    let cs = &st.container_statuses.unwrap()[0];
    assert!(cs.state.as_ref().unwrap().terminated.is_some(), "{cs:?}");
    assert!(rig
        .events()
        .iter()
        .any(|(w, r, m)| *w && r == "Evicted" && m == message));
    assert!(!runtime.active_pods().iter().any(|a| a.uid == p.uid));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rig.starts_of(&c).len(), 1, "not restarted (policy Always)");
    assert_eq!(rig.phase("q"), "Running", "the other pod is untouched");
    // A new agent: the eviction is remembered.
    rig.kill();
    rig.start(vec![p.clone(), q.clone()]);
    rig.wait("Failed reported by the new agent", || {
        rig.phase("p") == "Failed"
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rig.starts_of(&c).len(), 1, "not started by the new agent");
    assert_eq!(rig.status("p").unwrap().reason.as_deref(), Some("Evicted"));
    assert_eq!(rig.starts_of(&qc).len(), 1);
    assert!(rig.fake.running().contains(&qc));
}

/// Made-up node figures for the eviction manager: memory is short until
/// the pod named `hog` stops being active.
struct FakeSignals {
    hog_uid: String,
    runtime: Runtime,
}

impl unitlet::eviction::Signals for FakeSignals {
    fn observe(&self) -> unitlet::core::eviction::Observations {
        use unitlet::core::eviction::{Observation, Signal};
        let hog_active = self
            .runtime
            .active_pods()
            .iter()
            .any(|p| p.uid == self.hog_uid);
        let available = if hog_active { 50 << 20 } else { 4 << 30 };
        [(
            Signal::MemoryAvailable,
            Observation {
                available,
                capacity: 8 << 30,
            },
        )]
        .into()
    }

    fn usage(&self, pod: &unitlet::runtime::ActivePod) -> Option<unitlet::core::eviction::Usage> {
        let mem: u64 = if pod.uid == self.hog_uid {
            500 << 20
        } else {
            10 << 20
        };
        Some(unitlet::core::eviction::Usage {
            memory_bytes: Some(mem),
            containers_memory: [("c".to_string(), mem)].into(),
            pids: Some(0),
            ..Default::default()
        })
    }
}

/// The eviction manager's loop on the fake: under memory pressure it
/// publishes MemoryPressure, evicts the pod using the most memory above
/// its request (one pod), and stops once the pressure is gone.
#[test]
fn the_eviction_manager_evicts_the_biggest_memory_user_once() {
    let mut rig = Rig::new();
    let hog = pod("hog", json!({"containers": [sh("c")]}));
    let calm = pod("calm", json!({"containers": [sh("c")]}));
    rig.start(vec![hog.clone(), calm.clone()]);
    rig.wait("Running", || {
        rig.phase("hog") == "Running" && rig.phase("calm") == "Running"
    });
    let agent = rig.agent.as_ref().unwrap();
    let signals = Arc::new(FakeSignals {
        hog_uid: hog.uid.clone(),
        runtime: agent.runtime.clone(),
    });
    let opts = unitlet::eviction::Options {
        config: unitlet::core::eviction::Config::default(),
        interval: Duration::from_millis(50),
        pressure_file: None,
    };
    let runtime = agent.runtime.clone();
    let pressure = agent
        .rt
        .block_on(async move { unitlet::eviction::spawn(runtime, signals, opts) });
    rig.wait("hog Failed/Evicted", || {
        rig.status("hog")
            .is_some_and(|s| s.reason.as_deref() == Some("Evicted"))
    });
    let st = rig.status("hog").unwrap();
    assert_eq!(
        st.message.as_deref(),
        Some(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container c was using 500Mi, request is 0, has larger consumption of memory. "
        )
    );
    assert!(
        pressure.borrow().conditions.memory,
        "within the transition period"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.phase("calm"), "Running");
    let evicted = rig
        .events()
        .iter()
        .filter(|(_, r, _)| r == "Evicted")
        .count();
    assert_eq!(evicted, 1);
}

/// Garbage collection of an ended pod in cluster mode: its units stay
/// while its terminal status is only reported, and are stopped and reset
/// once the API server shows the terminal phase; the status keeps how the
/// container ended, nothing runs again (a restarted agent included), and a
/// running pod beside it is not touched. A pod the API server shows ended
/// is never admitted.
#[test]
fn an_ended_pod_is_collected_once_the_api_shows_it_ended() {
    let mut rig = Rig::new();
    let p = pod(
        "p",
        json!({"restartPolicy": "Never", "containers": [sh("c")]}),
    );
    let r = pod("r", json!({"containers": [sh("c")]}));
    let (c, rc) = (rig.unit(&p, "c"), rig.unit(&r, "c"));
    rig.start(vec![p.clone(), r.clone()]);
    rig.wait("both running", || {
        let running = rig.fake.running();
        running.contains(&c) && running.contains(&rc)
    });
    rig.fake.exit(&c, 2);
    rig.wait("Failed", || rig.phase("p") == "Failed");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        rig.fake.loaded().contains(&c),
        "kept until the API server has the status"
    );
    let ended = Arc::new(StaticPod {
        terminal: true,
        ..(*p).clone()
    });
    rig.set(vec![ended.clone(), r.clone()]);
    rig.wait("the failed unit collected", || {
        !rig.fake.loaded().contains(&c)
            && rig
                .fake
                .calls()
                .iter()
                .any(|x| matches!(x, Call::ResetFailed(u) if u == &c))
    });
    std::thread::sleep(Duration::from_millis(200));
    let st = rig.status("p").unwrap();
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    let cs = &st.container_statuses.unwrap()[0];
    let t = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(t.exit_code, 2, "{cs:?}");
    assert_eq!(rig.starts_of(&c).len(), 1, "never run again");
    assert_eq!(
        rig.disturbances(&rc).len(),
        1,
        "only its start: {:#?}",
        rig.disturbances(&rc)
    );
    // A new agent: the ended pod stays ended; a pod the API server shows
    // ended that this node never ran is not admitted.
    rig.kill();
    let q = Arc::new(StaticPod {
        terminal: true,
        ..(*pod(
            "q",
            json!({"restartPolicy": "Never", "containers": [sh("c")]}),
        ))
        .clone()
    });
    let qc = rig.unit(&q, "c");
    rig.start(vec![ended, r, q]);
    rig.wait("r reported running", || rig.phase("r") == "Running");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.starts_of(&c).len(), 1, "never run again");
    assert!(
        rig.starts_of(&qc).is_empty(),
        "an ended API pod is not admitted"
    );
    assert!(rig.phase("p").is_empty() || rig.phase("p") == "Failed");
}
