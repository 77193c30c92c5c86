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
use unitlet::core::volume::TokenRef;
use unitlet::core::{Allocatable, NodeFacts};
use unitlet::objects::{IssuedToken, ObjectSource, TokenFor};
use unitlet::runtime::{lookup_user, now_us, Config, PodReport, Runtime};
use unitlet::state::StateDir;
use unitlet::systemd::Units;
use unitlet_test_support::fake_units::{Call, FakeUnits, OnStop};

/// Restart back-off in these tests: 100 ms doubling to 400 ms.
const BASE_US: u64 = 100_000;
const MAX_US: u64 = 400_000;

/// One agent on a fake systemd, with everything it reported.
struct Agent {
    rt: tokio::runtime::Runtime,
    desired: mpsc::Sender<Vec<Arc<StaticPod>>>,
    reports: Arc<Mutex<Vec<PodReport>>>,
}

struct Rig {
    fake: Arc<FakeUnits>,
    dir: tempfile::TempDir,
    agent: Option<Agent>,
    objects: Option<Arc<dyn ObjectSource>>,
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
                allocatable: Allocatable::default(),
                pods_dir: self.dir.path().join("state/pods").to_string_lossy().into(),
                hardening: Default::default(),
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
        };
        let (tx, rx) = mpsc::channel(4);
        let runtime = Runtime::new(self.fake.clone(), state, cfg);
        rt.spawn(runtime.run(rx));
        tx.try_send(pods).unwrap();
        self.agent = Some(Agent {
            rt,
            desired: tx,
            reports,
        });
    }

    /// `kill -9` of the agent: its tasks end where they are.
    fn kill(&mut self) {
        if let Some(a) = self.agent.take() {
            a.rt.shutdown_background();
        }
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
