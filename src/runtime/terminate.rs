//! Stopping a pod: preStop hooks, SIGTERM, SIGKILL at the grace period,
//! sidecars last; then the pod's last status, its volumes and its state go.

use super::*;

/// Removes the environment files of pod `uid`, if it had any.
pub(super) fn remove_env_files(uid: &str) {
    let dir = std::path::Path::new(SECRET_ENV_DIR).join(uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(uid, error = %e, "cannot remove the pod's environment files");
        }
    }
}

impl Runtime {
    /// Stops every unit of a pod (SIGTERM, SIGKILL after the grace period),
    /// then forgets it. `grace_s`, when the API server's deletion asks for a
    /// shorter grace than the pod's own, is when SIGKILL comes instead.
    pub(super) async fn terminate(&self, uid: &str, grace_s: Option<u64>) {
        let s = &self.shared;
        let mut pre_stops: Vec<(String, crate::core::probe::Hook)> = Vec::new();
        // Running sidecars stop after the other containers, as the kubelet's.
        let mut sidecars: Vec<(String, Option<crate::core::probe::Hook>)> = Vec::new();
        let mut others: Vec<String> = Vec::new();
        let mut pod_grace_s = 30;
        // Of a termination an earlier agent began: how long ago.
        let mut elapsed_s = 0;
        let (slice, units, key, first) = {
            let mut guard = s.inner.lock().unwrap();
            let inner = &mut *guard;
            let Some(e) = inner.pods.get(uid) else {
                return;
            };
            let first = !e.terminating;
            if first {
                // Stopping the slice queues a stop job for it and for each
                // of its loaded units: those count against the same window
                // as start jobs, for the same reasons (systemd runs jobs
                // only between D-Bus calls, and dbus-daemon allows it one
                // match per queued job: a burst of deletions unbounded made
                // systemd lose its bus at 1,000 pods). Without the places,
                // the pod waits, as a start does, and is synced again once
                // places are free.
                let jobs = 1 + e
                    .plan
                    .unit_names()
                    .filter(|u| inner.units.contains_key(*u))
                    .count();
                let jobs = (jobs as u32).min(s.cfg.max_starting.max(1) as u32);
                match s.start_window.clone().try_acquire_many_owned(jobs) {
                    Ok(places) => {
                        inner.waiting_for_window.remove(uid);
                        inner.stop_needs.remove(uid);
                        inner.stopping.insert(uid.to_string(), places);
                    }
                    Err(_) => {
                        inner.stop_needs.insert(uid.to_string(), jobs);
                        if inner.waiting_for_window.insert(uid.to_string()) {
                            inner.window_waiters.push_back(uid.to_string());
                        }
                        return;
                    }
                }
            }
            let Some(e) = inner.pods.get_mut(uid) else {
                return;
            };
            e.terminating = true;
            s.probing.lock().unwrap().retain(|(u, _), _| u != uid);
            let units: Vec<String> = e.plan.unit_names().map(str::to_string).collect();
            if first {
                // Kept on disk, so that an agent restarted during the
                // termination goes on with it (see `Stopping`).
                if e.rec.stopping.is_none() {
                    e.rec.stopping = Some(crate::state::Stopping {
                        since_us: now_us(),
                        hooks_done: Vec::new(),
                    });
                    if let Err(err) = s.state.save_pod(&e.rec) {
                        warn!(uid, error = %err, "cannot record that the pod is stopping; an agent restarted now would run its preStop hooks again");
                    }
                }
                let stopping = e.rec.stopping.as_ref().expect("set above");
                elapsed_s = now_us().saturating_sub(stopping.since_us) / 1_000_000;
                // The preStop hooks it saw through.
                let hooks_done = stopping.hooks_done.clone();
                pod_grace_s =
                    e.rec
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|sp| sp.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(crate::core::translate::MIN_GRACE_SECONDS) as u64;
                for c in e.plan.all() {
                    let running = inner
                        .units
                        .get(&c.unit)
                        .is_some_and(|u| matches!(instance(Some(u)), Instance::Running { .. }));
                    let hook = c
                        .hooks
                        .pre_stop
                        .clone()
                        .filter(|_| !hooks_done.contains(&c.unit));
                    if running && c.sidecar {
                        sidecars.push((c.unit.clone(), hook));
                    } else if let (true, Some(h)) = (running, hook) {
                        pre_stops.push((c.unit.clone(), h));
                    }
                    if running && !c.sidecar {
                        others.push(c.unit.clone());
                    }
                }
                let ns = e.rec.pod.metadata.namespace.clone().unwrap_or_default();
                let name = e.rec.pod.metadata.name.clone().unwrap_or_default();
                let running = |c: &&ContainerPlan| {
                    inner.units.get(&c.unit).is_some_and(|u| {
                        matches!(
                            u.active_state,
                            ActiveState::Active | ActiveState::Activating
                        )
                    })
                };
                for (kind, list) in [
                    ("initContainers", &e.plan.init),
                    ("containers", &e.plan.containers),
                    ("ephemeralContainers", &e.plan.ephemeral),
                ] {
                    for c in list.iter().filter(running) {
                        self.report(PodReport::Event {
                            uid: uid.to_string(),
                            namespace: ns.clone(),
                            name: name.clone(),
                            field_path: Some(format!("spec.{kind}{{{}}}", c.name)),
                            warning: false,
                            reason: "Killing",
                            message: format!("Stopping container {}", c.name),
                        });
                    }
                }
            }
            (e.plan.slice.clone(), units, pod_key(&e.rec.pod), first)
        };
        if first {
            info!(pod = key, uid, grace_s, "stopping pod");
            if let Some(g) = grace_s {
                // Units were created with the pod's own grace as their stop
                // timeout; a shorter one asked at deletion is enforced here.
                let sd = s.sd.clone();
                let units = units.clone();
                let g = g.saturating_sub(elapsed_s);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(g)).await;
                    for unit in &units {
                        let _ = sd.kill_all(unit, 9).await;
                    }
                });
            }
            if pre_stops.is_empty() && sidecars.is_empty() {
                if let Err(e) = s.sd.stop(&slice).await {
                    debug!(error = %e, "stopping slice");
                }
            } else {
                // preStop hooks first, within the grace period, then the
                // stop (SIGTERM); with sidecars, the other containers stop
                // first. Not in this worker, which must not wait.
                let sd = s.sd.clone();
                let within =
                    Duration::from_secs(grace_s.unwrap_or(pod_grace_s).saturating_sub(elapsed_s));
                let (me, uid) = (self.clone(), uid.to_string());
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + within;
                    let run_all = |hooks: Vec<(String, crate::core::probe::Hook)>| {
                        let (sd, me, uid) = (sd.clone(), me.clone(), uid.clone());
                        async move {
                            let runs = hooks.into_iter().map(|(unit, hook)| {
                                let (sd, me, uid) = (sd.clone(), me.clone(), uid.clone());
                                async move {
                                    if let Err(e) =
                                        probes::run_hook(&*sd, &unit, &hook, within).await
                                    {
                                        warn!(unit, error = e, "preStop hook failed");
                                    }
                                    me.pre_stop_done(&uid, unit);
                                }
                            });
                            futures_util::future::join_all(runs).await;
                        }
                    };
                    run_all(pre_stops).await;
                    if !sidecars.is_empty() {
                        for unit in &others {
                            let _ = sd.stop(unit).await;
                        }
                        // Until they are down (bounded by the grace period).
                        while tokio::time::Instant::now() < deadline {
                            let mut up = false;
                            for unit in &others {
                                if let Ok(Some(snap)) = sd.snapshot(unit).await {
                                    up |= matches!(instance(Some(&snap)), Instance::Running { .. });
                                }
                            }
                            if !up {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        run_all(
                            sidecars
                                .into_iter()
                                .filter_map(|(u, h)| h.map(|h| (u, h)))
                                .collect(),
                        )
                        .await;
                    }
                    if let Err(e) = sd.stop(&slice).await {
                        debug!(error = %e, "stopping slice");
                    }
                });
            }
        }
        // From the cache, which systemd's signals keep (the relist is its
        // safety net): reading each unit back cost a call per unit per
        // pass, and reading an unloaded one makes systemd load it again.
        let mut busy = false;
        let mut failed = Vec::new();
        let mut last: HashMap<String, UnitSnapshot> = HashMap::new();
        {
            let inner = s.inner.lock().unwrap();
            for unit in &units {
                if let Some(snap) = inner.units.get(unit) {
                    busy |= snap.active_state.busy();
                    if snap.active_state == ActiveState::Failed {
                        failed.push(unit.clone());
                    }
                    last.insert(unit.clone(), snap.clone());
                }
            }
        }
        if busy {
            return; // signals bring us back when the units stop
        }
        // Every unit is down: its stop jobs are over.
        s.inner.lock().unwrap().free_stop_places(uid, s);
        self.report_final_status(uid, last);
        // systemd keeps failed units until told; cleanly stopped ones it
        // unloads itself.
        for unit in failed {
            let _ = s.sd.reset_failed(&unit).await;
        }
        if let Err(e) = s.volumes.teardown(&s.cfg.node.pods_dir, uid) {
            warn!(
                uid,
                error = e,
                "cannot remove the pod's volumes; will retry"
            );
            return self.schedule(uid, now_us() + CREATE_RETRY_US);
        }
        if let Err(e) = s.state.remove_pod(uid) {
            return warn!(error = %e, "cannot forget stopped pod; will retry");
        }
        remove_env_files(uid);
        let stopped_pod;
        let waiting: Vec<String> = {
            let mut inner = s.inner.lock().unwrap();
            stopped_pod = inner.pods.remove(uid).map(|e| e.rec.pod);
            if inner.by_key.get(&key).is_some_and(|u| u == uid) {
                inner.by_key.remove(&key);
            }
            for unit in &units {
                inner.owner.remove(unit);
                inner.units.remove(unit);
                inner.serials.remove(unit);
                inner.free_place(unit, s);
            }
            // What it held is free: pending resizes may fit now.
            super::update::retry_pending_resizes(&inner, s);
            inner
                .desired
                .iter()
                .flat_map(|d| d.values())
                .filter(|p| p.key() == key)
                .map(|p| p.uid.clone())
                .collect()
        };
        info!(pod = key, uid, "pod stopped");
        if let Some(pod) = stopped_pod {
            self.report_stopped(uid, &pod);
        }
        for w in waiting {
            s.pods_q.add(&w);
        }
    }

    /// Records that the preStop hook of `unit` of pod `uid` has ended.
    fn pre_stop_done(&self, uid: &str, unit: String) {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
        let Some(stopping) = e.rec.stopping.as_mut() else {
            return;
        };
        stopping.hooks_done.push(unit);
        if let Err(err) = s.state.save_pod(&e.rec) {
            warn!(uid, error = %err, "cannot record that a preStop hook ran; an agent restarted now would run it again");
        }
    }

    /// Reports the last status of a pod whose units all stopped (see
    /// [`observe::observe_terminal`]); `last` holds the units still loaded.
    pub(super) fn report_final_status(&self, uid: &str, mut last: HashMap<String, UnitSnapshot>) {
        let s = &self.shared;
        if s.cfg.reports.is_none() {
            return;
        }
        let inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get(uid) else { return };
        for (unit, snap) in &e.finals {
            last.entry(unit.clone()).or_insert_with(|| snap.clone());
        }
        let mut status = observe::observe_terminal(
            &e.rec.pod,
            &e.plan,
            &s.cfg.node,
            &last,
            &e.containers,
            e.rec.admitted_us,
            now_us(),
        );
        crate::core::live::amend(
            &mut status,
            &e.rec.pod,
            &e.plan,
            &last,
            &e.containers,
            &e.rec.live,
        );
        if let Some(ev) = &e.rec.evicted {
            crate::core::eviction::amend_status(&mut status, ev);
        }
        self.report(PodReport::Status {
            uid: uid.to_string(),
            namespace: e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
            name: e.rec.pod.metadata.name.clone().unwrap_or_default(),
            status: Box::new(status),
        });
    }

    pub(super) fn report_stopped(&self, uid: &str, pod: &k8s_openapi::api::core::v1::Pod) {
        self.report(PodReport::Stopped {
            uid: uid.to_string(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        });
    }
}
