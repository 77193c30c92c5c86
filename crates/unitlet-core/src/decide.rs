//! What to do about one container now: the reconciler's decision, as data.
//!
//! In the spirit of the kubelet's `computePodActions`: from the container's
//! plan, its record, what systemd shows of its unit and the time, a pure
//! function says which [`Action`]s to take and how the record changes; the
//! runtime carries the actions out against systemd and feeds what happened
//! back on the next pass. Keeping the decision free of I/O is what lets the
//! restart rules (policies, back-off, init containers, sidecars, changed
//! definitions) be tested as tables and properties, without a systemd.

use super::backoff::BackoffConfig;
use super::observe::{self, instance_of, ActiveState, ContainerRecord, Instance, UnitSnapshot};
use super::resources;
use super::translate::{ContainerPlan, WaitReason};
use std::collections::HashSet;

/// Where a container stands after a decision, for the pod's ordering of
/// init containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Running, starting, or waiting for something.
    Waiting,
    /// An init container that exited 0: the next one may start.
    Succeeded,
    /// Ended for good under the pod's restart policy.
    Finished,
}

/// What the pod's other containers and this agent's earlier passes say.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// An init container (`spec.initContainers`) rather than a regular one.
    pub init: bool,
    /// The pod's `restartPolicy`.
    pub policy: &'a str,
    /// Every regular container has ended for good: sidecars stop.
    pub apps_done: bool,
    /// Now, µs since the epoch.
    pub now_us: u64,
    /// When this agent started: a container started before was reported
    /// by an earlier agent.
    pub agent_started_us: u64,
    /// Restart back-off.
    pub backoff: &'a BackoffConfig,
    /// Invocations this agent asked systemd to replace already (the
    /// request is under way; asking twice would restart twice).
    pub restart_issued: &'a HashSet<String>,
    /// Invocations whose leftover processes were killed already.
    pub leftovers_killed: &'a HashSet<String>,
    /// The machine's boot ID (`/proc/sys/kernel/random/boot_id`): an
    /// instance recorded running on another boot ended with it.
    pub boot_id: &'a str,
    /// The pod starts over after such a reboot (see [`pod_restarts`]).
    pub pod_restarts: bool,
}

/// Whether a pod whose units went with an earlier boot starts over: the
/// kubelet's rule for a pod whose sandbox is gone. Not under `Never`
/// (its containers ran once), nor once every regular container has ended
/// for good (an `OnFailure` pod that succeeded).
pub fn pod_restarts<'r>(
    policy: &str,
    regular: impl IntoIterator<Item = Option<&'r ContainerRecord>>,
) -> bool {
    policy != "Never"
        && regular
            .into_iter()
            .any(|r| r.is_none_or(|r| r.finished.is_none()))
}

/// The instance `record` remembers, when its unit is gone because the
/// machine has booted since it was seen.
fn stale_run<'r>(
    record: &'r ContainerRecord,
    unit: Option<&UnitSnapshot>,
    cx: &Context<'_>,
) -> Option<&'r observe::LastRun> {
    let run = record.run.as_deref()?;
    let gone = observe::instance(unit) == Instance::Absent;
    (gone && !cx.boot_id.is_empty() && run.boot_id != cx.boot_id).then_some(run)
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Report a Kubernetes event about the container, once per `key`.
    Event {
        /// What makes it the same event on a later pass.
        key: String,
        /// A Warning rather than a Normal event.
        warning: bool,
        /// The kubelet's reason.
        reason: &'static str,
        /// The message.
        message: String,
    },
    /// The definition changed to one that cannot run: stop this
    /// invocation (it is not replaced).
    Stop {
        /// The running invocation.
        invocation: String,
    },
    /// The main process ended but the unit is active: end what it left.
    KillLeftovers {
        /// The ended invocation.
        invocation: String,
    },
    /// Make the unit (first start, or a restart of an instance that is gone).
    Create {
        /// The ended invocation this replaces, if a restart.
        restart_of: Option<String>,
    },
    /// Replace a running instance whose definition changed (a new image),
    /// or whose resize asks for a restart, counted as a restart.
    Replace {
        /// The running invocation.
        invocation: String,
    },
    /// Apply the container's CPU and memory to its running unit, live (an
    /// in-place resize whose `resizePolicy` needs no restart).
    Resize {
        /// The running invocation.
        invocation: String,
    },
    /// Restart an ended instance now that its back-off is over.
    Restart {
        /// The ended invocation.
        invocation: String,
        /// When it ended (the back-off is counted from there).
        finished_us: u64,
        /// Its unit is still active (exited with RemainAfterExit): stop it first.
        stop_first: bool,
    },
    /// A restart is put off by the back-off (the kubelet's BackOff event).
    BackOff {
        /// The ended invocation.
        invocation: String,
        /// How long after it ended the restart may happen.
        delay_us: u64,
        /// How it ended.
        exit_code: i32,
    },
    /// Look at the pod again at this time (µs since the epoch).
    WakeAt(u64),
}

/// A decision: the record as it should be, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The container's record after the decision.
    pub record: ContainerRecord,
    /// The record differs from the one passed in (persist it).
    pub changed: bool,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Where the container stands.
    pub step: Step,
}

/// Decides what to do about container `c` now.
pub fn decide(
    c: &ContainerPlan,
    record: &ContainerRecord,
    unit: Option<&UnitSnapshot>,
    cx: &Context<'_>,
) -> Decision {
    let mut d = Decision {
        record: record.clone(),
        changed: false,
        actions: Vec::new(),
        step: Step::Waiting,
    };
    let event = |d: &mut Decision, key: String, warning, reason, message: String| {
        d.actions.push(Action::Event {
            key,
            warning,
            reason,
            message,
        })
    };
    let mut inst = instance_of(unit, Some(record));
    if let Some(run) = stale_run(record, unit, cx) {
        // The unit went with an earlier boot of the machine, and with it
        // the instance the record knows. As the kubelet when the pod's
        // sandbox is gone: under `Never` nothing runs again; otherwise the
        // pod starts over (init containers anew, except under `OnFailure`
        // a regular container that succeeded), each start counted as a
        // restart of the instance the reboot ended.
        let t = match record.finished.as_deref() {
            Some(f) if f.container_id.strip_prefix("systemd://") == Some(&run.invocation) => {
                f.clone()
            }
            _ => run.lost(cx.now_us),
        };
        let again = if cx.init || c.sidecar {
            cx.pod_restarts
        } else {
            observe::should_restart(cx.policy, t.exit_code)
        };
        if !again {
            if record.finished.is_none() {
                finish(&mut d, &t);
            }
            d.step = if cx.init && !c.sidecar && t.exit_code == 0 {
                Step::Succeeded
            } else {
                Step::Finished
            };
            return d;
        }
        if record.restart_of.as_deref() != Some(run.invocation.as_str()) {
            let rec = &mut d.record;
            rec.finished = None;
            rec.restart_of = Some(run.invocation.clone());
            rec.restarting = Some(Box::new(t));
            rec.restart_at_us = cx.now_us;
            // The back-off lived in the earlier boot's kubelet.
            rec.backoff = Default::default();
            d.changed = true;
        }
        inst = Instance::Absent;
    }
    // The instance systemd shows (not one kept in the record): remembered
    // with the boot it runs in.
    let shown = match (&inst, unit) {
        (
            Instance::Running {
                invocation,
                started_us,
            },
            Some(u),
        ) => Some((invocation, *started_us, u.main_pid)),
        (Instance::Terminated(t, invocation), Some(u)) if !u.invocation_id.is_empty() => {
            Some((invocation, t.started_us, t.pid))
        }
        _ => None,
    };
    if let Some((invocation, started_us, pid)) = shown {
        let seen = d.record.run.as_deref();
        if seen.is_none_or(|r| r.invocation != *invocation || r.boot_id != cx.boot_id) {
            d.record.run = Some(Box::new(observe::LastRun {
                boot_id: cx.boot_id.to_string(),
                invocation: invocation.clone(),
                started_us,
                pid,
            }));
            d.changed = true;
        }
    }
    let spec = match &c.spec {
        Ok(spec) => spec,
        Err(w) => {
            let message = if w.reason == WaitReason::CreateContainerConfigError {
                format!("Error: {}", w.message)
            } else {
                format!(
                    "Failed to pull image {:?}: {}: {}",
                    c.image, w.reason, w.message
                )
            };
            event(&mut d, "spec".into(), true, "Failed", message);
            // The pod's image changed to one that cannot run: the
            // container of the old definition goes.
            if let Instance::Running { invocation, .. } = inst {
                if !cx.restart_issued.contains(&invocation) {
                    event(
                        &mut d,
                        format!("changed:{invocation}"),
                        false,
                        "Killing",
                        format!("Container {} definition changed, will be restarted", c.name),
                    );
                    d.actions.push(Action::Stop { invocation });
                }
            }
            return d;
        }
    };
    let digest = c.digest.as_str();
    // A unit made by an agent from before definition digests left out
    // resources: it holds the digest of the whole unit.
    if d.record.unit_digest.as_deref().is_some_and(|x| x != digest)
        && d.record.unit_digest.as_deref() == Some(spec.digest().as_str())
    {
        d.record.unit_digest = Some(digest.to_string());
        d.changed = true;
    }
    match &inst {
        // Started by this agent's doing (or while it ran): say so once.
        Instance::Running {
            started_us,
            invocation,
        } if *started_us >= cx.agent_started_us => event(
            &mut d,
            format!("started:{invocation}"),
            false,
            "Started",
            format!("Started container {}", c.name),
        ),
        Instance::Terminated(t, inv) if t.reason == "StartError" => event(
            &mut d,
            format!("failed:{inv}"),
            true,
            "Failed",
            format!("Error: {}", t.message.clone().unwrap_or_default()),
        ),
        _ => {}
    }
    // A restart asked for has happened once the unit shows another invocation.
    let current = match &inst {
        Instance::Running { invocation, .. } | Instance::Terminated(_, invocation) => {
            Some(invocation.as_str())
        }
        _ => None,
    };
    let rec = &mut d.record;
    if let (Some(old), Some(cur)) = (rec.restart_of.clone(), current) {
        if old != cur {
            rec.restart_count += 1;
            rec.previous_invocation = Some(old);
            // (A restart for a changed definition has no ended instance to show.)
            if let Some(t) = rec.restarting.take() {
                rec.last_termination = Some(t);
            }
            rec.restart_of = None;
            d.changed = true;
        }
    }
    match inst {
        Instance::Absent => {
            if let Some(old) = &d.record.restart_of {
                // The ended instance is gone: our own re-creation is under
                // way (its signals bring us back), or the unit vanished and
                // creating it, once the back-off is over, is the restart.
                if cx.restart_issued.contains(old) {
                    return d;
                }
                if cx.now_us < d.record.restart_at_us {
                    d.actions.push(Action::WakeAt(d.record.restart_at_us));
                    return d;
                }
            }
            let restart_of = d.record.restart_of.clone();
            d.actions.push(Action::Create { restart_of });
        }
        Instance::Running { invocation, .. }
            if d.record.unit_digest.as_deref().is_some_and(|x| x != digest)
                && !cx.restart_issued.contains(&invocation) =>
        {
            // The pod's definition of the container changed (a new image):
            // the kubelet kills the container and starts it anew.
            d.actions.push(Action::Replace { invocation });
        }
        Instance::Running { invocation, .. } => match &d.record.actuated {
            // Made before sizes were recorded: from the plan it runs.
            None => {
                d.record.actuated = Some(c.resources.clone());
                d.changed = true;
            }
            Some(had) if !had.same(&c.resources) && !cx.restart_issued.contains(&invocation) => {
                if resources::needs_restart(&c.restart_on_resize, had, &c.resources) {
                    d.actions.push(Action::Replace { invocation });
                } else {
                    d.actions.push(Action::Resize { invocation });
                }
            }
            Some(_) => {}
        },
        Instance::Creating => {}
        Instance::Terminated(t, inv) => {
            if d.record.finished.as_deref() == Some(&t) {
                // Ended for good once: never run again, whatever changes.
                d.step = if cx.init && !c.sidecar && t.exit_code == 0 {
                    Step::Succeeded
                } else {
                    Step::Finished
                };
                return d;
            }
            let active = unit.is_some_and(|u| u.active_state == ActiveState::Active);
            if active && !cx.leftovers_killed.contains(&inv) {
                // The main process is gone: end whatever it left behind, as
                // a container runtime does when a container's PID 1 exits.
                d.actions.push(Action::KillLeftovers {
                    invocation: inv.clone(),
                });
            }
            if cx.init && !c.sidecar && t.exit_code == 0 && d.record.restart_of.is_none() {
                finish(&mut d, &t);
                d.step = Step::Succeeded;
                return d;
            }
            let wants = if c.sidecar {
                !cx.apps_done
            } else if cx.init {
                observe::should_restart_init(cx.policy, t.exit_code)
            } else {
                observe::should_restart(cx.policy, t.exit_code)
            };
            if d.record.restart_of.as_deref() != Some(inv.as_str()) {
                if !wants {
                    finish(&mut d, &t);
                    d.step = Step::Finished;
                    return d;
                }
                let delay = d.record.backoff.delay_after(cx.backoff, t.finished_us);
                let rec = &mut d.record;
                rec.restart_of = Some(inv.clone());
                rec.restart_at_us = t.finished_us + delay;
                rec.restarting = Some(Box::new(t.clone()));
                d.changed = true;
                if delay > 0 {
                    d.actions.push(Action::BackOff {
                        invocation: inv.clone(),
                        delay_us: delay,
                        exit_code: t.exit_code,
                    });
                }
            }
            if cx.now_us < d.record.restart_at_us {
                d.actions.push(Action::WakeAt(d.record.restart_at_us));
                return d;
            }
            if cx.restart_issued.contains(&inv) {
                return d; // asked already; the new invocation's signal brings us back
            }
            d.actions.push(Action::Restart {
                invocation: inv,
                finished_us: t.finished_us,
                stop_first: active,
            });
        }
    }
    d
}

/// Records that the container ended for good.
fn finish(d: &mut Decision, t: &observe::Termination) {
    if d.record.finished.as_deref() != Some(t) {
        d.record.finished = Some(Box::new(t.clone()));
        d.changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::translate;
    use proptest::prelude::*;

    const S: u64 = 1_000_000;

    fn plan(restart_policy: &str, init: bool, sidecar: bool) -> ContainerPlan {
        let mut c = serde_json::json!({"name": "c", "image": "host", "command": ["/bin/true"]});
        if sidecar {
            c["restartPolicy"] = "Always".into();
        }
        let spec = if init {
            serde_json::json!({"restartPolicy": restart_policy, "initContainers": [c],
                "containers": [{"name": "app", "image": "host", "command": ["/bin/true"]}]})
        } else {
            serde_json::json!({"restartPolicy": restart_policy, "containers": [c]})
        };
        let doc = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"}, "spec": spec});
        let pod =
            crate::manifest::parse_manifest(&serde_json::to_vec(&doc).unwrap(), "t", "n1", true)
                .unwrap()
                .pod;
        let p = translate(&pod, &node(), &|_| None);
        if init {
            p.init[0].clone()
        } else {
            p.containers[0].clone()
        }
    }

    fn node() -> crate::NodeFacts {
        crate::NodeFacts {
            node_name: "n1".into(),
            host_ip: "10.0.0.1".into(),
            allocatable: Default::default(),
            pods_dir: "/var/lib/unitlet/pods".into(),
            hardening: Default::default(),
            agent_exe: "/usr/bin/unitlet".into(),
        }
    }

    fn running(inv: &str, started: u64) -> UnitSnapshot {
        UnitSnapshot {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            invocation_id: inv.into(),
            main_pid: 10,
            exec_main_start_us: started,
            ..Default::default()
        }
    }

    fn exited(inv: &str, code: i32, finished: u64) -> UnitSnapshot {
        UnitSnapshot {
            load_state: "loaded".into(),
            active_state: if code == 0 { "active" } else { "failed" }.into(),
            sub_state: if code == 0 { "exited" } else { "failed" }.into(),
            invocation_id: inv.into(),
            exec_main_code: 1,
            exec_main_status: code,
            exec_main_start_us: finished - S,
            exec_main_exit_us: finished,
            ..Default::default()
        }
    }

    struct Cx {
        backoff: BackoffConfig,
        issued: HashSet<String>,
        killed: HashSet<String>,
    }

    impl Cx {
        fn new() -> Cx {
            Cx {
                backoff: BackoffConfig::default(),
                issued: HashSet::new(),
                killed: HashSet::new(),
            }
        }
        fn at<'a>(&'a self, policy: &'a str, init: bool, now_us: u64) -> Context<'a> {
            Context {
                init,
                policy,
                apps_done: false,
                now_us,
                agent_started_us: 0,
                backoff: &self.backoff,
                restart_issued: &self.issued,
                leftovers_killed: &self.killed,
                boot_id: "boot-2",
                pod_restarts: policy != "Never",
            }
        }
    }

    /// A record whose instance `aa` ran on boot `boot`.
    fn ran_on(boot: &str) -> ContainerRecord {
        ContainerRecord {
            run: Some(Box::new(observe::LastRun {
                boot_id: boot.into(),
                invocation: "aa".into(),
                started_us: 50 * S,
                pid: 10,
            })),
            ..Default::default()
        }
    }

    /// (policy, init, ended for good before the reboot with exit code) →
    /// what a container whose unit went with an earlier boot gets.
    #[test]
    fn a_run_of_an_earlier_boot_ended_with_it() {
        // (policy, init, ended with, step, actions)
        type Row<'a> = (&'a str, bool, Option<i32>, Step, &'a [&'a str]);
        let table: &[Row] = &[
            ("Always", false, None, Step::Waiting, &["create-restart"]),
            ("OnFailure", false, None, Step::Waiting, &["create-restart"]),
            ("Never", false, None, Step::Finished, &[]),
            ("OnFailure", false, Some(0), Step::Finished, &[]),
            ("Never", false, Some(1), Step::Finished, &[]),
            // Init containers run again when the pod starts over.
            ("Always", true, Some(0), Step::Waiting, &["create-restart"]),
            (
                "OnFailure",
                true,
                Some(0),
                Step::Waiting,
                &["create-restart"],
            ),
            ("Never", true, Some(0), Step::Succeeded, &[]),
            ("Never", true, None, Step::Finished, &[]),
        ];
        for &(policy, init, ended, step, want) in table {
            let c = plan(policy, init, false);
            let cx = Cx::new();
            let mut rec = ran_on("boot-1");
            if let Some(code) = ended {
                let mut t = observe::instance(Some(&exited("aa", code, 60 * S)));
                if let Instance::Terminated(t, _) = &mut t {
                    rec.finished = Some(Box::new(t.clone()));
                }
            }
            let d = decide(&c, &rec, None, &cx.at(policy, init, 100 * S));
            let what = format!("{policy} init={init} ended={ended:?}");
            assert_eq!(d.step, step, "{what}");
            assert_eq!(kinds(&d), want, "{what}");
            let ended_as = match step {
                Step::Waiting => {
                    assert_eq!(d.record.restart_of.as_deref(), Some("aa"), "{what}");
                    assert!(d.record.finished.is_none(), "{what}");
                    d.record.restarting.clone()
                }
                _ => d.record.finished.clone(),
            }
            .expect(&what);
            match ended {
                Some(code) => assert_eq!(ended_as.exit_code, code, "{what}"),
                None => {
                    assert_eq!(
                        (ended_as.exit_code, ended_as.reason.as_str()),
                        (255, "Unknown"),
                        "{what}"
                    );
                    assert_eq!(ended_as.container_id, "systemd://aa", "{what}");
                }
            }
        }
    }

    #[test]
    fn a_unit_gone_on_the_same_boot_is_created_not_restarted() {
        let c = plan("Never", false, false);
        let cx = Cx::new();
        let d = decide(&c, &ran_on("boot-2"), None, &cx.at("Never", false, 100 * S));
        assert_eq!(kinds(&d), ["create"]);
        // No boot ID known: nothing is assumed.
        let mut unknown = cx.at("Never", false, 100 * S);
        unknown.boot_id = "";
        let d = decide(&c, &ran_on("boot-1"), None, &unknown);
        assert_eq!(kinds(&d), ["create"]);
    }

    #[test]
    fn the_instance_seen_is_remembered_with_its_boot() {
        let c = plan("Always", false, false);
        let cx = Cx::new();
        let d = decide(
            &c,
            &ran_on("boot-1"),
            Some(&running("bb", 90 * S)),
            &cx.at("Always", false, 100 * S),
        );
        let run = d.record.run.as_deref().unwrap();
        assert_eq!(
            (run.boot_id.as_str(), run.invocation.as_str()),
            ("boot-2", "bb")
        );
        assert_eq!((run.started_us, run.pid), (90 * S, 10));
        assert!(d.changed);
        // Seen again: nothing to write.
        let again = decide(
            &c,
            &d.record,
            Some(&running("bb", 90 * S)),
            &cx.at("Always", false, 101 * S),
        );
        assert!(!again.changed);
        // An instance seen only once it had ended is remembered too.
        let d = decide(
            &c,
            &d.record,
            Some(&exited("cc", 1, 99 * S)),
            &cx.at("Always", false, 100 * S),
        );
        assert_eq!(d.record.run.as_deref().unwrap().invocation, "cc");
    }

    fn kinds(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .map(|a| match a {
                Action::Event { reason, .. } => format!("event:{reason}"),
                Action::Stop { .. } => "stop".into(),
                Action::KillLeftovers { .. } => "kill-leftovers".into(),
                Action::Create { restart_of: None } => "create".into(),
                Action::Create {
                    restart_of: Some(_),
                } => "create-restart".into(),
                Action::Replace { .. } => "replace".into(),
                Action::Resize { .. } => "resize".into(),
                Action::Restart { .. } => "restart".into(),
                Action::BackOff { .. } => "backoff".into(),
                Action::WakeAt(_) => "wake".into(),
            })
            .collect()
    }

    /// (policy, init, exit code) → (step, what happens) for an instance that
    /// just ended, with no back-off yet: the kubelet's restart rules.
    #[test]
    fn ended_instances_by_policy() {
        let table: &[(&str, bool, i32, Step, &[&str])] = &[
            ("Always", false, 0, Step::Waiting, &["restart"]),
            ("Always", false, 1, Step::Waiting, &["restart"]),
            ("OnFailure", false, 0, Step::Finished, &[]),
            ("OnFailure", false, 1, Step::Waiting, &["restart"]),
            ("Never", false, 0, Step::Finished, &[]),
            ("Never", false, 1, Step::Finished, &[]),
            ("Always", true, 0, Step::Succeeded, &[]),
            ("Always", true, 1, Step::Waiting, &["restart"]),
            ("OnFailure", true, 1, Step::Waiting, &["restart"]),
            ("Never", true, 0, Step::Succeeded, &[]),
            ("Never", true, 1, Step::Finished, &[]),
        ];
        for &(policy, init, code, step, want) in table {
            let c = plan(policy, init, false);
            let cx = Cx::new();
            let unit = exited("aa", code, 100 * S);
            let d = decide(
                &c,
                &ContainerRecord::default(),
                Some(&unit),
                &cx.at(policy, init, 100 * S),
            );
            assert_eq!(d.step, step, "{policy} init={init} exit {code}");
            // A successful exit leaves the unit active (exited): its leftovers go.
            let mut got = kinds(&d);
            got.retain(|k| k != "kill-leftovers");
            assert_eq!(got, want, "{policy} init={init} exit {code}");
            if step != Step::Waiting {
                assert!(d.record.finished.is_some() && d.changed);
            }
        }
    }

    #[test]
    fn back_off_waits_then_restarts_once() {
        let c = plan("Always", false, false);
        let mut cx = Cx::new();
        let mut rec = ContainerRecord::default();
        rec.backoff.record_restart(&cx.backoff, 50 * S, 50 * S); // one restart so far: 10 s
        let unit = exited("bb", 1, 100 * S);
        let d = decide(&c, &rec, Some(&unit), &cx.at("Always", false, 100 * S));
        assert_eq!(kinds(&d), ["backoff", "wake"]);
        assert_eq!(d.actions.last(), Some(&Action::WakeAt(110 * S)));
        assert_eq!(d.record.restart_of.as_deref(), Some("bb"));
        // Before the time: still waiting, no second BackOff decision needed.
        let d2 = decide(&c, &d.record, Some(&unit), &cx.at("Always", false, 105 * S));
        assert_eq!(kinds(&d2), ["wake"]);
        // After it: restart, once.
        let d3 = decide(&c, &d.record, Some(&unit), &cx.at("Always", false, 110 * S));
        assert_eq!(kinds(&d3), ["restart"]);
        cx.issued.insert("bb".into());
        let d4 = decide(&c, &d.record, Some(&unit), &cx.at("Always", false, 111 * S));
        assert!(kinds(&d4).is_empty(), "asked already: {:?}", d4.actions);
        // The new invocation shows: counted once.
        let d5 = decide(
            &c,
            &d.record,
            Some(&running("cc", 111 * S)),
            &cx.at("Always", false, 112 * S),
        );
        assert_eq!(d5.record.restart_count, 1);
        assert_eq!(d5.record.previous_invocation.as_deref(), Some("bb"));
        assert_eq!(d5.record.last_termination.as_ref().unwrap().exit_code, 1);
        assert!(d5.record.restart_of.is_none());
    }

    #[test]
    fn back_off_doubles_from_10_s_to_5_min_and_resets_after_10_min_of_running() {
        let c = plan("Always", false, false);
        let cx = Cx::new();
        let mut rec = ContainerRecord::default();
        let mut now = 1000 * S;
        let mut delays = Vec::new();
        for n in 0..8 {
            // Each instance runs a second, then fails.
            let unit = exited(&format!("i{n}"), 1, now + S);
            let d = decide(&c, &rec, Some(&unit), &cx.at("Always", false, now + S));
            delays.push((d.record.restart_at_us - (now + S)) / S);
            rec = d.record;
            now = rec.restart_at_us;
            rec.backoff.record_restart(&cx.backoff, now, now);
            rec.restart_of = None;
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        // Ten minutes of running since the last restart: back to none.
        let unit = exited("long", 1, now + 601 * S);
        let d = decide(
            &c,
            &rec,
            Some(&unit),
            &cx.at("Always", false, now + 601 * S),
        );
        assert_eq!(kinds(&d), ["restart"], "no back-off after a long run");
    }

    #[test]
    fn first_start_and_changed_definition() {
        let c = plan("Always", false, false);
        let cx = Cx::new();
        let d = decide(
            &c,
            &ContainerRecord::default(),
            None,
            &cx.at("Always", false, S),
        );
        assert_eq!(kinds(&d), ["create"]);
        let rec = ContainerRecord {
            unit_digest: Some("an older definition".into()),
            ..Default::default()
        };
        let d = decide(
            &c,
            &rec,
            Some(&running("dd", S)),
            &cx.at("Always", false, 2 * S),
        );
        assert_eq!(kinds(&d), ["event:Started", "replace"]);
        // A unit made by an older agent carries the whole unit's digest:
        // the same definition, recorded anew.
        let rec = ContainerRecord {
            unit_digest: Some(c.spec.as_ref().unwrap().digest()),
            ..Default::default()
        };
        let d = decide(
            &c,
            &rec,
            Some(&running("dd", S)),
            &cx.at("Always", false, 2 * S),
        );
        assert_eq!(kinds(&d), ["event:Started"]);
        assert_eq!(d.record.unit_digest.as_deref(), Some(c.digest.as_str()));
        assert!(d.changed);
    }

    fn sized(cpu: &str, memory: &str, restart_memory: bool) -> ContainerPlan {
        let mut c = serde_json::json!({"name": "c", "image": "host", "command": ["/bin/true"],
            "resources": {"limits": {"cpu": cpu, "memory": memory}}});
        if restart_memory {
            c["resizePolicy"] = serde_json::json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
        }
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [c]}
        }))
        .unwrap();
        translate(&pod, &node(), &|_| None).containers.remove(0)
    }

    /// A resize is applied in place, unless the container's resizePolicy
    /// asks for a restart for a resource that changed; it is never a
    /// changed definition.
    #[test]
    fn resizes_apply_in_place_or_restart_by_policy() {
        let cx = Cx::new();
        let now = 2 * S;
        let old = sized("500m", "64Mi", true);
        let made = |c: &ContainerPlan| ContainerRecord {
            unit_digest: Some(c.digest.clone()),
            actuated: Some(c.resources.clone()),
            ..Default::default()
        };
        let rec = made(&old);
        let unit = running("dd", S);
        let decide_for =
            |c: &ContainerPlan| decide(c, &rec, Some(&unit), &cx.at("Always", false, now));
        // Unchanged.
        assert_eq!(kinds(&decide_for(&old)), ["event:Started"]);
        // CPU (NotRequired by default): live.
        let cpu = sized("1", "64Mi", true);
        assert_eq!(cpu.digest, old.digest, "resources are not the definition");
        assert_eq!(kinds(&decide_for(&cpu)), ["event:Started", "resize"]);
        // The same amounts written otherwise: nothing to do.
        assert_eq!(
            kinds(&decide_for(&sized("0.5", "67108864", true))),
            ["event:Started"]
        );
        // Memory with RestartContainer: the container is restarted.
        assert_eq!(
            kinds(&decide_for(&sized("500m", "128Mi", true))),
            ["event:Started", "replace"]
        );
        assert_eq!(
            kinds(&decide_for(&sized("500m", "128Mi", false))),
            ["event:Started", "resize"]
        );
        // A unit made before sizes were recorded is taken as made from the plan.
        let legacy = ContainerRecord {
            actuated: None,
            ..rec.clone()
        };
        let d = decide(&cpu, &legacy, Some(&unit), &cx.at("Always", false, now));
        assert_eq!(kinds(&d), ["event:Started"]);
        assert_eq!(d.record.actuated.as_ref(), Some(&cpu.resources));
        // Not while a restart asked for is under way.
        let mut issued = Cx::new();
        issued.issued.insert("dd".into());
        let d = decide(&cpu, &rec, Some(&unit), &issued.at("Always", false, now));
        assert_eq!(kinds(&d), ["event:Started"]);
    }

    #[test]
    fn a_finished_container_whose_unit_is_gone_stays_finished() {
        let c = plan("Never", false, false);
        let cx = Cx::new();
        let unit = exited("ee", 2, 100 * S);
        let d = decide(
            &c,
            &ContainerRecord::default(),
            Some(&unit),
            &cx.at("Never", false, 100 * S),
        );
        assert_eq!(d.step, Step::Finished);
        let later = decide(&c, &d.record, None, &cx.at("Never", false, 200 * S));
        assert_eq!(later.step, Step::Finished);
        assert!(kinds(&later).is_empty(), "{:?}", later.actions);
    }

    #[test]
    fn sidecars_restart_until_the_apps_are_done() {
        let c = plan("Never", true, true);
        let cx = Cx::new();
        let unit = exited("ff", 0, 100 * S);
        let d = decide(
            &c,
            &ContainerRecord::default(),
            Some(&unit),
            &cx.at("Never", true, 100 * S),
        );
        assert_eq!(kinds(&d).last().map(String::as_str), Some("restart"));
        let mut done = cx.at("Never", true, 100 * S);
        done.apps_done = true;
        let d = decide(&c, &ContainerRecord::default(), Some(&unit), &done);
        assert_eq!(d.step, Step::Finished);
    }

    fn arb_unit() -> impl Strategy<Value = Option<UnitSnapshot>> {
        prop_oneof![
            Just(None),
            (1u64..1000).prop_map(|t| Some(running("r1", t * S))),
            (0i32..3, 1u64..1000).prop_map(|(code, t)| Some(exited("x1", code, t * S + S))),
        ]
    }

    proptest! {
        /// Whatever the state: a container is never both started and
        /// restarted in one decision, a restart is never decided before its
        /// back-off is over or twice for one invocation, the restart count
        /// never goes down, and a finished container is never run again.
        #[test]
        fn decisions_are_consistent(
            policy in prop_oneof![Just("Always"), Just("OnFailure"), Just("Never")],
            init in any::<bool>(),
            sidecar in any::<bool>(),
            unit in arb_unit(),
            restart_of in prop_oneof![Just(None), Just(Some("x1".to_string())), Just(Some("old".to_string()))],
            restart_at in 0u64..2000,
            count in 0u32..5,
            now in 0u64..2000,
            issued in any::<bool>(),
            finished in any::<bool>(),
        ) {
            let c = plan(policy, init || sidecar, sidecar);
            let mut cx = Cx::new();
            if issued {
                cx.issued.insert("x1".into());
                cx.issued.insert("old".into());
            }
            let rec = ContainerRecord {
                restart_count: count,
                restart_of,
                restart_at_us: restart_at * S,
                finished: finished.then(|| Box::new(observe::Termination {
                    exit_code: 1, signal: None, reason: "Error".into(), message: None,
                    started_us: S, finished_us: 2 * S, container_id: "systemd://x0".into(), pid: 0,
                })),
                ..Default::default()
            };
            let d = decide(&c, &rec, unit.as_ref(), &cx.at(policy, init || sidecar, now * S));
            let k = kinds(&d);
            let starts = k.iter().filter(|a| a.starts_with("create") || *a == "restart" || *a == "replace").count();
            prop_assert!(starts <= 1, "{k:?}");
            prop_assert!(d.record.restart_count >= rec.restart_count);
            for a in &d.actions {
                match a {
                    Action::Restart { invocation, .. } => {
                        prop_assert!(now * S >= d.record.restart_at_us);
                        prop_assert!(!cx.issued.contains(invocation));
                    }
                    Action::Create { restart_of: Some(old) } => {
                        prop_assert!(now * S >= d.record.restart_at_us);
                        prop_assert!(!cx.issued.contains(old));
                    }
                    _ => {}
                }
            }
            if finished && unit.is_none() {
                prop_assert_eq!(starts, 0, "a finished container ran again: {:?}", k);
            }
            if d.step == Step::Finished {
                prop_assert!(d.record.finished.is_some());
            }
        }
    }
}
