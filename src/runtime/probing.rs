//! Probes and hooks in the agent, and what they kill: postStart, the
//! probe loops per container instance, and killing a container for a
//! failed probe or hook (preStop, SIGTERM, SIGKILL after the grace).

use super::*;

/// One probe of one container instance, for [`Runtime::probe_loop`].
pub(super) struct ProbeJob {
    pub(super) uid: String,
    pub(super) container: String,
    pub(super) unit: String,
    pub(super) invocation: String,
    pub(super) started_us: u64,
    pub(super) spec: ProbeSpec,
    /// The readiness result to start from (kept across agent restarts).
    pub(super) ready: bool,
}

/// A container's stop grace in seconds (its unit's stop timeout).
pub(super) fn unit_grace_s(c: &ContainerPlan) -> u64 {
    c.spec
        .as_ref()
        .ok()
        .and_then(|sp| {
            sp.properties.iter().find_map(|p| match p {
                crate::core::unit::Property::TimeoutStopUSec(u) => Some(u / 1_000_000),
                _ => None,
            })
        })
        .unwrap_or(30)
}

/// The probes of one running container instance.
pub(super) struct Probing {
    /// What they found so far (copied into the container record).
    pub(super) record: ProbeRecord,
    pub(super) tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Probing {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Runtime {
    /// Runs the postStart hook of a container instance this agent saw
    /// start (once); if it fails, the container is killed, as the kubelet
    /// does, and restarted under the pod's policy.
    pub(super) fn post_start(
        &self,
        uid: &str,
        c: &ContainerPlan,
        inst: &Instance,
        memo: &mut Memo,
    ) {
        let Some(hook) = &c.hooks.post_start else {
            return;
        };
        let Instance::Running {
            invocation,
            started_us,
        } = inst
        else {
            return;
        };
        // An earlier agent ran it for an instance started before this one.
        if *started_us < self.shared.started_us || !memo.post_started.insert(invocation.clone()) {
            return;
        }
        let me = self.clone();
        let (hook, uid, container, unit, invocation) = (
            hook.clone(),
            uid.to_string(),
            c.name.clone(),
            c.unit.clone(),
            invocation.clone(),
        );
        let grace = unit_grace_s(c);
        tokio::spawn(async move {
            // The kubelet gives postStart no timeout of its own; the
            // container's grace bounds it here so a stuck hook cannot hold
            // the container forever.
            let limit = Duration::from_secs(grace.max(30));
            if let Err(e) = probes::run_hook(&*me.shared.sd, &unit, &hook, limit).await {
                warn!(
                    uid,
                    container,
                    error = e,
                    "postStart hook failed; killing the container"
                );
                me.container_event(
                    &uid,
                    &container,
                    true,
                    "FailedPostStartHook",
                    format!("PostStartHook failed: {e}"),
                );
                me.kill_container(&uid, &container, &unit, &invocation, grace)
                    .await;
            }
        });
    }

    /// Keeps the probes of container `c` running for its current instance
    /// (and only then), and copies what they found into its record.
    pub(super) fn sync_probes(
        &self,
        uid: &str,
        c: &ContainerPlan,
        inst: &Instance,
        rec: &mut ContainerRecord,
        pass: &mut Pass,
    ) {
        if c.probes.is_empty() {
            return;
        }
        let s = &self.shared;
        let key = (uid.to_string(), c.name.clone());
        let mut probing = s.probing.lock().unwrap();
        let Instance::Running {
            invocation,
            started_us,
        } = inst
        else {
            probing.remove(&key);
            return;
        };
        if probing
            .get(&key)
            .is_none_or(|p| p.record.invocation != *invocation)
        {
            // A restarted agent keeps what its predecessor found for the
            // same instance, so it does not turn ready pods unready; and a
            // container that started before this agent has passed its
            // startup probe (as a restarted kubelet assumes).
            let has_startup = c.probes.iter().any(|p| p.kind == ProbeKind::Startup);
            let kept = rec.probes.clone().filter(|p| p.invocation == *invocation);
            let record = ProbeRecord {
                invocation: invocation.clone(),
                started: !has_startup
                    || *started_us < s.started_us
                    || kept.as_ref().is_some_and(|p| p.started),
                ready: kept.is_some_and(|p| p.ready),
            };
            let tasks = c
                .probes
                .iter()
                .map(|spec| {
                    let me = self.clone();
                    let job = ProbeJob {
                        uid: uid.to_string(),
                        container: c.name.clone(),
                        unit: c.unit.clone(),
                        invocation: invocation.clone(),
                        started_us: *started_us,
                        spec: spec.clone(),
                        ready: record.ready,
                    };
                    tokio::spawn(async move { me.probe_loop(job).await }).abort_handle()
                })
                .collect();
            probing.insert(key.clone(), Probing { record, tasks });
        }
        let record = probing[&key].record.clone();
        if rec.probes.as_ref() != Some(&record) {
            rec.probes = Some(record);
            pass.changed.insert(c.name.clone());
        }
    }

    /// Runs one probe of one container instance until the instance ends
    /// (the task is aborted) or, for a startup probe, until it succeeds.
    pub(super) async fn probe_loop(self, job: ProbeJob) {
        let s = &self.shared;
        let spec = &job.spec;
        let key = (job.uid.clone(), job.container.clone());
        let first_at = job.started_us + spec.initial_delay.as_micros() as u64;
        let now = now_us();
        if first_at > now {
            tokio::time::sleep(Duration::from_micros(first_at - now)).await;
        }
        // The pod's namespace and name label its `prober_probe_total`.
        let (namespace, pod) = s
            .inner
            .lock()
            .unwrap()
            .pods
            .get(&job.uid)
            .map(|e| {
                let m = &e.rec.pod.metadata;
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        let mut state = ProbeState::new(spec.kind);
        if spec.kind == ProbeKind::Readiness {
            state.result = job.ready;
        }
        loop {
            let started = match s.probing.lock().unwrap().get(&key) {
                Some(p) if p.record.invocation == job.invocation => p.record.started,
                _ => return,
            };
            if spec.kind == ProbeKind::Startup && started {
                return;
            }
            // Liveness and readiness wait for the startup probe.
            if spec.kind == ProbeKind::Startup || started {
                let result = probes::run(&*s.sd, &job.unit, &spec.action, spec.timeout).await;
                crate::metrics::probe_result(
                    spec.kind.title(),
                    result.is_ok(),
                    &job.container,
                    &namespace,
                    &pod,
                    &job.uid,
                );
                if let Err(msg) = &result {
                    info!(
                        uid = job.uid,
                        container = job.container,
                        probe = spec.kind.title(),
                        error = msg,
                        "probe failed"
                    );
                    self.container_event(
                        &job.uid,
                        &job.container,
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {msg}", spec.kind.title()),
                    );
                }
                if let Some(now_ok) = state.record(spec, result.is_ok()) {
                    {
                        let mut probing = s.probing.lock().unwrap();
                        let Some(p) = probing
                            .get_mut(&key)
                            .filter(|p| p.record.invocation == job.invocation)
                        else {
                            return;
                        };
                        match spec.kind {
                            ProbeKind::Startup => p.record.started = now_ok,
                            ProbeKind::Readiness => p.record.ready = now_ok,
                            ProbeKind::Liveness => {}
                        }
                    }
                    s.pods_q.add(&job.uid);
                    if spec.kind == ProbeKind::Startup && now_ok {
                        return;
                    }
                    if !now_ok && spec.kind != ProbeKind::Readiness {
                        // Not in this task: the instance's end aborts it.
                        let me = self.clone();
                        tokio::spawn(async move { me.kill_for_probe(&job).await });
                        return;
                    }
                }
            }
            tokio::time::sleep(spec.period).await;
        }
    }

    /// Kills a container whose liveness or startup probe failed, as the
    /// kubelet does: SIGTERM, SIGKILL after the probe's (else the pod's)
    /// grace period. Its restart is the reconciler's, under the pod's
    /// restart policy and back-off.
    pub(super) async fn kill_for_probe(&self, job: &ProbeJob) {
        let s = &self.shared;
        let kind = job.spec.kind.title().to_lowercase();
        info!(
            uid = job.uid,
            container = job.container,
            probe = kind,
            "container failed its probe; killing it"
        );
        self.container_event(
            &job.uid,
            &job.container,
            false,
            "Killing",
            format!(
                "Container {} failed {kind} probe, will be restarted",
                job.container
            ),
        );
        let grace = job.spec.termination_grace_s.unwrap_or_else(|| {
            let inner = s.inner.lock().unwrap();
            inner
                .pods
                .get(&job.uid)
                .and_then(|e| e.rec.pod.spec.as_ref())
                .and_then(|sp| sp.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(crate::core::translate::MIN_GRACE_SECONDS) as u64
        });
        self.kill_container(&job.uid, &job.container, &job.unit, &job.invocation, grace)
            .await;
    }

    /// Stops one container instance as the kubelet kills a container: its
    /// preStop hook, SIGTERM, then SIGKILL once `grace` seconds are over.
    pub(super) async fn kill_container(
        &self,
        uid: &str,
        container: &str,
        unit: &str,
        invocation: &str,
        grace: u64,
    ) {
        let s = &self.shared;
        let pre_stop = {
            let inner = s.inner.lock().unwrap();
            inner.pods.get(uid).and_then(|e| {
                e.plan
                    .init
                    .iter()
                    .chain(&e.plan.containers)
                    .find(|c| c.name == container)
                    .and_then(|c| c.hooks.pre_stop.clone())
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        if let Some(hook) = pre_stop {
            if let Err(e) = probes::run_hook(&*s.sd, unit, &hook, Duration::from_secs(grace)).await
            {
                warn!(unit, error = e, "preStop hook failed");
            }
        }
        if let Err(e) = s.sd.kill_all(unit, 15).await {
            warn!(unit, error = %e, "cannot signal the container");
        }
        tokio::time::sleep_until(
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(2)),
        )
        .await;
        let still = s
            .inner
            .lock()
            .unwrap()
            .units
            .get(unit)
            .is_some_and(|u| matches!(instance(Some(u)), Instance::Running { invocation: i, .. } if i == invocation));
        if still {
            let _ = s.sd.kill_all(unit, 9).await;
        }
    }

    /// An event about a probed container (cluster mode; standalone has no
    /// event sink).
    pub(super) fn container_event(
        &self,
        uid: &str,
        container: &str,
        warning: bool,
        reason: &'static str,
        message: String,
    ) {
        let s = &self.shared;
        if s.cfg.reports.is_none() {
            return;
        }
        let (namespace, name, init) = {
            let inner = s.inner.lock().unwrap();
            let Some(e) = inner.pods.get(uid) else {
                return;
            };
            let init = e.plan.init.iter().any(|c| c.name == container);
            (
                e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                e.rec.pod.metadata.name.clone().unwrap_or_default(),
                init,
            )
        };
        self.report(PodReport::Event {
            uid: uid.to_string(),
            namespace,
            name,
            field_path: Some(format!(
                "spec.{}{{{}}}",
                if init { "initContainers" } else { "containers" },
                container
            )),
            warning,
            reason,
            message,
        });
    }
}
