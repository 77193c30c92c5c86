//! Garbage collection of what pods leave behind, as the kubelet's container
//! and pod-directory collection, in systemd's terms.
//!
//! * A container keeps one unit, re-created at each restart, and its record
//!   keeps the one instance before (`previous_invocation`,
//!   `last_termination`): what `logs --previous` and `lastState` need, the
//!   kubelet's one dead container per container. Nothing to collect there.
//! * A pod that has ended (Succeeded or Failed) keeps how each container
//!   ended in its records (`finished`). Its units are then only a cost:
//!   failed ones put the host in systemd's `degraded` state and every
//!   loaded unit holds memory in PID 1. So they are stopped and reset once
//!   the records say how they ended; status and logs come from the records
//!   (and the journal, by invocation ID) from then on.
//! * In cluster mode the ended pod's volumes and environment files go once
//!   the API server shows its terminal phase (the status is written, so
//!   nothing more is read from them); the pod's record stays until the API
//!   object is deleted, so `kubectl logs` of a finished Job still answers,
//!   as the kubelet keeps a dead container until then. In standalone mode
//!   volumes go with the manifest (`terminate`).
//! * Units named as unitlet names its units that no admitted pod owns are
//!   stopped and named in the log, at start-up and at every relist.
//! * Pod directories without a `pod.json` (an agent killed while
//!   forgetting a pod) are torn down at start-up.
//!
//! Nothing a pod that may still run uses is touched: only units of ended
//! pods whose main process is gone, once their record says how they
//! ended.

use super::*;

impl Runtime {
    /// Collects an ended pod's units (and, once the API server shows it
    /// ended, its volumes). Idempotent; once per pod per process.
    pub(super) fn collect_ended(&self, uid: &str, api_terminal: bool) {
        let s = &self.shared;
        let mut units = Vec::new();
        let mut all_done = true;
        // No process of the pod runs (an evicted pod's containers may
        // still be within their grace period).
        let mut quiet = true;
        let mut want_volumes;
        let slice;
        {
            let mut inner = s.inner.lock().unwrap();
            let inner = &mut *inner;
            let Some(e) = inner.pods.get_mut(uid) else {
                return;
            };
            want_volumes = api_terminal && !e.memo.volumes_collected;
            if e.memo.units_collected && !want_volumes {
                return;
            }
            for c in e.plan.all() {
                let Some(snap) = inner.units.get(&c.unit) else {
                    continue;
                };
                quiet &= !matches!(
                    instance(Some(snap)),
                    Instance::Running { .. } | Instance::Creating
                ) && !snap.active_state.busy();
                let finished = e.containers.get(&c.name).and_then(|r| r.finished.as_ref());
                match (instance(Some(snap)), finished) {
                    (Instance::Terminated(_, inv), Some(t))
                        if t.container_id.strip_prefix("systemd://") == Some(inv.as_str()) =>
                    {
                        units.push(c.unit.clone());
                    }
                    // A container the pod's end stopped (eviction, deadline):
                    // it ended for good too, so its record says so first.
                    (Instance::Terminated(t, _), _) if !snap.active_state.busy() => {
                        let rec = e.containers.entry(c.name.clone()).or_default();
                        rec.finished = Some(Box::new(t));
                        if let Err(err) = s.state.save_container(uid, &c.name, rec) {
                            warn!(error = %err, "cannot save container record");
                            all_done = false;
                            continue;
                        }
                        units.push(c.unit.clone());
                    }
                    // Never started: nothing to collect.
                    (Instance::Absent, _) => {}
                    _ => all_done = false,
                }
            }
            // Units still stopping (a sidecar) are collected on a later pass.
            e.memo.units_collected = all_done;
            want_volumes &= quiet;
            if want_volumes {
                e.memo.volumes_collected = true;
            }
            slice = all_done.then(|| e.plan.slice.clone());
            if !units.is_empty() {
                info!(
                    pod = pod_key(&e.rec.pod),
                    uid,
                    units = units.len(),
                    "pod ended: collecting its units"
                );
            }
        }
        let (sd, volumes, pods_dir, uid) = (
            s.sd.clone(),
            want_volumes,
            s.cfg.node.pods_dir.clone(),
            uid.to_string(),
        );
        let me = self.clone();
        tokio::spawn(async move {
            for unit in &units {
                // An exited unit (RemainAfterExit) is stopped, a failed one
                // reset: either way systemd unloads it.
                if let Err(e) = sd.stop(unit).await {
                    debug!(unit, error = %e, "stopping an ended unit");
                }
                let _ = sd.reset_failed(unit).await;
            }
            if let Some(slice) = slice {
                let _ = sd.stop(&slice).await;
            }
            if volumes {
                match me.shared.volumes.teardown(&pods_dir, &uid) {
                    Ok(()) => info!(uid, "pod ended and its status is written: volumes removed"),
                    Err(e) => {
                        warn!(
                            uid,
                            error = e,
                            "cannot remove the ended pod's volumes; will retry"
                        );
                        if let Some(e) = me.shared.inner.lock().unwrap().pods.get_mut(&uid) {
                            e.memo.volumes_collected = false;
                        }
                        me.schedule(&uid, now_us() + CREATE_RETRY_US);
                    }
                }
                remove_env_files(&uid);
            }
        });
    }

    /// Stops loaded units that carry unitlet's names but belong to no
    /// admitted pod (`listing` is systemd's, taken before the lock, so a
    /// pod admitted since has no unit in it). Units already inactive are
    /// left to systemd, which unloads them; each unit is named once.
    pub(super) fn stop_orphans(&self, listing: &[crate::systemd::UnitListing]) {
        let s = &self.shared;
        let unreadable = s.unreadable.lock().unwrap().clone();
        let orphans: Vec<String> = {
            let mut inner = s.inner.lock().unwrap();
            let inner = &mut *inner;
            listing
                .iter()
                .filter(|row| {
                    !inner.owner.contains_key(&row.name)
                        && row.active_state != ActiveState::Inactive
                        && names::uid_tag_of(&row.name).is_none_or(|t| !unreadable.contains_key(t))
                })
                .map(|row| row.name.clone())
                .collect()
        };
        for unit in orphans {
            let mut reported = s.orphans_reported.lock().unwrap();
            if !reported.insert(unit.clone()) {
                continue;
            }
            drop(reported);
            warn!(unit, "stopping orphaned unit: no admitted pod owns it");
            let sd = s.sd.clone();
            tokio::spawn(async move {
                let _ = sd.stop(&unit).await;
                let _ = sd.reset_failed(&unit).await;
            });
        }
    }

    /// Tears down pod directories without a `pod.json`: an agent killed
    /// between removing the record and the directory. Mounted volumes are
    /// unmounted first; data behind a mount is never removed.
    pub(super) fn remove_orphan_dirs(&self) {
        let s = &self.shared;
        let Ok(entries) = std::fs::read_dir(s.state.root().join("pods")) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() || dir.join("pod.json").exists() {
                continue;
            }
            let uid = entry.file_name().to_string_lossy().into_owned();
            if s.inner.lock().unwrap().pods.contains_key(&uid) {
                continue;
            }
            match s
                .volumes
                .teardown(&s.cfg.node.pods_dir, &uid)
                .map_err(std::io::Error::other)
                .and_then(|()| s.state.remove_pod(&uid).map_err(std::io::Error::other))
            {
                Ok(()) => info!(dir = %dir.display(), "removed a pod directory no pod owns"),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot remove a pod directory no pod owns")
                }
            }
        }
    }
}
