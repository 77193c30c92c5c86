//! Evicting a pod for node pressure, as the kubelet's eviction manager
//! does through its pod workers: the decision is recorded with the pod
//! (so a restarted agent never starts it again), its running containers
//! are killed with the eviction's grace period (preStop hook, SIGTERM,
//! SIGKILL), and it stays admitted with phase `Failed`, reason `Evicted`
//! (see [`crate::core::eviction::amend_status`]). It is not deleted: in
//! cluster mode its controller replaces it and deletes it, in standalone
//! mode its manifest decides.

use super::*;
use crate::core::eviction::Evicted;

/// Why a pod could not be evicted.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    /// The pod is not admitted on this node (or was stopped meanwhile).
    #[error("pod {uid}: not running on this node; nothing to evict")]
    NotAdmitted {
        /// Pod UID.
        uid: String,
    },
    /// The decision could not be recorded, so the pod is left running
    /// (killing it unrecorded would let a restarted agent start it again).
    #[error("pod {pod}: cannot record the eviction; the pod keeps running: {source}")]
    Record {
        /// `namespace/name`.
        pod: String,
        /// Underlying error.
        #[source]
        source: crate::state::StateError,
    },
}

/// An admitted pod the eviction manager may choose from.
#[derive(Debug, Clone)]
pub struct ActivePod {
    /// Pod UID.
    pub uid: String,
    /// The pod as admitted.
    pub pod: Arc<Pod>,
    /// Its units and volumes.
    pub plan: Arc<PodPlan>,
}

impl Runtime {
    /// The pods that hold resources (the kubelet's active pods): admitted,
    /// not being stopped, not ended, not evicted.
    pub fn active_pods(&self) -> Vec<ActivePod> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .pods
            .iter()
            .filter(|(_, e)| !e.terminating && !e.ended && e.rec.evicted.is_none())
            .map(|(uid, e)| ActivePod {
                uid: uid.clone(),
                pod: e.rec.pod.clone(),
                plan: Arc::clone(&e.plan),
            })
            .collect()
    }

    /// Evicts pod `uid`: records the decision, reports the `Evicted`
    /// event (Warning, the kubelet's message), and queues the pod, whose
    /// pass kills its containers with `grace_s` and reports it `Failed`.
    /// Returns `Ok(false)` when the pod was evicted already or has ended.
    pub fn evict(
        &self,
        uid: &str,
        message: &str,
        grace_s: i64,
        signal: &str,
    ) -> Result<bool, EvictError> {
        let s = &self.shared;
        let (key, ns, name) = {
            let mut inner = s.inner.lock().unwrap();
            let Some(e) = inner.pods.get_mut(uid).filter(|e| !e.terminating) else {
                return Err(EvictError::NotAdmitted {
                    uid: uid.to_string(),
                });
            };
            if e.rec.evicted.is_some() || e.ended {
                return Ok(false);
            }
            let mut rec = e.rec.clone();
            rec.evicted = Some(Evicted {
                at_us: now_us(),
                message: message.to_string(),
                grace_period_s: grace_s,
                signal: signal.to_string(),
            });
            if let Err(source) = s.state.save_pod(&rec) {
                return Err(EvictError::Record {
                    pod: pod_key(&rec.pod),
                    source,
                });
            }
            e.rec = rec;
            (
                pod_key(&e.rec.pod),
                e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                e.rec.pod.metadata.name.clone().unwrap_or_default(),
            )
        };
        warn!(
            pod = key,
            uid,
            signal,
            grace_s,
            why = message,
            "evicting pod"
        );
        crate::metrics::evicted(signal);
        self.report(PodReport::Event {
            uid: uid.to_string(),
            namespace: ns,
            name,
            field_path: None,
            warning: true,
            reason: crate::core::eviction::REASON,
            message: message.to_string(),
        });
        s.pods_q.add(uid);
        Ok(true)
    }

    /// For a pod's pass: whether the pod was evicted (then nothing of it
    /// starts). Each running container instance is killed once per agent
    /// process with the eviction's grace period, so containers an earlier
    /// agent did not get to kill are killed after a restart.
    pub(super) fn evicted(&self, uid: &str) -> bool {
        let kill: Vec<(String, String, String, u64)> = {
            let mut inner = self.shared.inner.lock().unwrap();
            let inner = &mut *inner;
            let Some(e) = inner.pods.get_mut(uid) else {
                return false;
            };
            let Some(ev) = &e.rec.evicted else {
                return false;
            };
            let grace = ev.grace_period_s.max(0) as u64;
            let mut kill = Vec::new();
            for c in e.plan.all() {
                if let Instance::Running { invocation, .. } = instance(inner.units.get(&c.unit)) {
                    if e.memo.evict_killed.insert(invocation.clone()) {
                        kill.push((c.name.clone(), c.unit.clone(), invocation, grace));
                    }
                }
            }
            // Once nothing runs, its volumes go (emptyDirs free their
            // space, as the kubelet tears down a terminated pod's volumes),
            // while the pod itself stays to show its status.
            if kill.is_empty()
                && !e.memo.evict_torn_down
                && !e
                    .plan
                    .all()
                    .any(|c| matches!(instance(inner.units.get(&c.unit)), Instance::Running { .. }))
            {
                match self
                    .shared
                    .volumes
                    .teardown(&self.shared.cfg.node.pods_dir, uid)
                {
                    Ok(()) => e.memo.evict_torn_down = true,
                    Err(why) => warn!(
                        uid,
                        error = why,
                        "cannot remove the evicted pod's volumes; will retry"
                    ),
                }
            }
            kill
        };
        self.spawn_kills(uid, kill);
        true
    }
}
