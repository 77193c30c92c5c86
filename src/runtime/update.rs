//! Updates of a running pod: what the API server lets change on a pod that
//! runs (images, resources through `pods/resize`, ephemeral containers,
//! `activeDeadlineSeconds`, labels and annotations, tolerations) and what
//! it means for its units. Nothing here kills a container the kubelet
//! would not kill: a new image replaces that container (the kubelet's
//! rule); a resize is applied to the running units in place unless the
//! container's `resizePolicy` asks for a restart; an update unitlet cannot
//! apply is reported and the pod keeps running as it was.

use super::*;
use crate::core::live::LiveState;
use crate::core::resources;

/// The pod's status as reported: derived from its units
/// ([`observe::observe`]) with what its live state adds
/// ([`crate::core::live::amend`]).
pub(super) fn pod_status(
    e: &PodEntry,
    node: &crate::core::NodeFacts,
    units: &HashMap<String, UnitSnapshot>,
    now: u64,
) -> k8s_openapi::api::core::v1::PodStatus {
    let mut status = crate::core::live::pod_status(
        &e.rec.pod,
        &e.plan,
        node,
        units,
        &e.containers,
        e.rec.admitted_us,
        now,
        &e.rec.live,
    );
    if let Some(ev) = &e.rec.evicted {
        crate::core::eviction::amend_status(&mut status, ev);
    }
    status
}

/// The kubelet's pod worker `operation_type` of the pass about to run for
/// `uid`: `create` for a pod not admitted yet, `kill` for one being
/// stopped, `update` when its definition changed, else `sync`; `None` when
/// there is nothing to do.
pub(super) fn worker_operation(inner: &Inner, uid: &str) -> Option<&'static str> {
    let desired = inner.desired.as_ref()?.get(uid);
    let admitted = inner.pods.get(uid);
    Some(match (desired, admitted) {
        (None, None) => return None,
        (None, Some(_)) => "kill",
        (Some(d), _) if d.deletion_grace_s.is_some() => "kill",
        (Some(_), None) => "create",
        (Some(d), Some(e)) if d.pod.spec != e.rec.pod.spec => "update",
        (Some(_), Some(_)) => "sync",
    })
}

/// Queues every pod whose resize is pending, to try it again (the
/// kubelet retries them when another pod ends).
pub(super) fn retry_pending_resizes(inner: &Inner, s: &Shared) {
    for (uid, e) in &inner.pods {
        if e.rec.live.resize_pending.is_some() {
            s.pods_q.add(uid);
        }
    }
}

impl Runtime {
    /// Takes a newer version of an admitted pod. Labels and annotations
    /// refresh the downward API files (never the environment, which the
    /// kubelet sets only at a start); a changed spec is planned again, and
    /// [`decide`] replaces each container whose definition changed; new
    /// CPU and memory are allocated if they fit the node (else the resize
    /// is pending, as the kubelet's) and then applied to the running units.
    pub(super) fn update_spec(&self, uid: &str, d: &Arc<StaticPod>) {
        let s = &self.shared;
        let mut guard = s.inner.lock().unwrap();
        let inner = &mut *guard;
        let Some(e) = inner.pods.get(uid) else {
            return;
        };
        // The same desired pod as last time, and no resize waiting for
        // room: nothing to do. Every pass of every pod comes here (a relist
        // makes 2,000 of them), and the comparisons below cost clones of
        // the whole pod.
        if e.applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, d))
            && e.rec.live.resize_pending.is_none()
        {
            return;
        }
        // The other admitted pods' allocated requests, for a resize (only
        // then: summing them is a walk over every pod).
        let resizing = d.update_error.is_none() && resources::differ(&d.pod, &e.rec.pod);
        let others = if resizing {
            inner
                .pods
                .iter()
                .filter(|(u, e)| {
                    // As the kubelet's: pods that ended hold nothing.
                    u.as_str() != uid && !e.terminating && !e.ended
                })
                .map(|(_, e)| resources::pod_requests(&e.rec.pod))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        } else {
            (0, 0)
        };
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
        let now = now_us();
        let mut rec = e.rec.clone();
        let mut events: Vec<(bool, &'static str, String)> = Vec::new();
        if let Some(why) = &d.update_error {
            // What runs keeps running; the update is reported once.
            let message = format!(
                "{why}; this update cannot be applied to the running pod, which keeps running as it was"
            );
            if rec.live.update_error.as_deref() != Some(message.as_str()) {
                events.push((true, "UnsupportedPodSpec", message.clone()));
                rec.live.update_error = Some(message);
            }
        } else {
            rec.live.update_error = None;
            let pod = Arc::make_mut(&mut rec.pod);
            let (to, from) = (&mut pod.metadata, &d.pod.metadata);
            to.labels.clone_from(&from.labels);
            to.annotations.clone_from(&from.annotations);
            to.generation = from.generation;
            let mut spec = (*d.pod).clone();
            let pending = if resizing {
                match resources::fits(&d.pod, others, &s.cfg.node.allocatable) {
                    Ok(()) => {
                        rec.live.resized_us = now;
                        info!(pod = d.key(), uid, "resize allocated");
                        None
                    }
                    Err(p) => {
                        // Allocated stays as it was until the resize fits.
                        resources::keep_resources(&mut spec, &e.rec.pod);
                        Some(p)
                    }
                }
            } else {
                None
            };
            rec.live.resize_pending = match (pending, rec.live.resize_pending.take()) {
                (Some(p), Some((old, since))) if old == p => Some((old, since)),
                (Some(p), _) => {
                    info!(
                        pod = d.key(),
                        uid,
                        reason = p.reason,
                        message = p.message,
                        "resize pending"
                    );
                    Some((p, now))
                }
                (None, _) => None,
            };
            pod.spec = spec.spec;
        }
        // The record holds the desired pod itself where they are alike (a
        // restarted agent reads its own copy from disk): one copy in memory.
        if !Arc::ptr_eq(&rec.pod, &d.pod) && rec.pod == d.pod {
            rec.pod = Arc::clone(&d.pod);
        }
        let spec_changed = rec.pod.spec != e.rec.pod.spec;
        let changed =
            spec_changed || rec.pod.metadata != e.rec.pod.metadata || rec.live != e.rec.live;
        if !changed {
            e.rec.pod = rec.pod;
            e.applied = Some(Arc::clone(d));
            return;
        }
        if let Err(err) = s.state.save_pod(&rec) {
            return warn!(pod = d.key(), error = %err, "cannot record the changed pod; will retry");
        }
        e.applied = Some(Arc::clone(d));
        if spec_changed {
            info!(pod = d.key(), uid, "pod spec changed");
            e.plan = Arc::new(translate(&rec.pod, &s.cfg.node, &lookup_user));
        }
        e.rec = rec;
        let (ns, name) = (
            e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
            e.rec.pod.metadata.name.clone().unwrap_or_default(),
        );
        // New units (ephemeral containers) are the pod's too.
        let units: Vec<String> = e.plan.unit_names().map(str::to_string).collect();
        for unit in units {
            inner.owner.insert(unit, uid.to_string());
        }
        drop(guard);
        for (warning, reason, message) in events {
            self.report(PodReport::Event {
                uid: uid.to_string(),
                namespace: ns.clone(),
                name: name.clone(),
                field_path: None,
                warning,
                reason,
                message,
            });
        }
    }

    /// Saves a changed live state of pod `uid`.
    fn save_live(&self, uid: &str, f: impl FnOnce(&mut LiveState)) {
        let s = &self.shared;
        let mut inner = s.inner.lock().unwrap();
        let Some(e) = inner.pods.get_mut(uid) else {
            return;
        };
        let mut rec = e.rec.clone();
        f(&mut rec.live);
        if rec.live == e.rec.live {
            return;
        }
        if let Err(err) = s.state.save_pod(&rec) {
            warn!(uid, error = %err, "cannot record the pod's state");
        }
        e.rec = rec;
    }

    /// Gives the pod's slice its pod-level CPU and memory
    /// (`spec.resources`): made as a transient slice with them before any
    /// container names it, changed in place on a resize. Whether containers
    /// may start.
    pub(super) async fn sync_slice(&self, uid: &str, plan: &PodPlan, live: &LiveState) -> bool {
        let Some(want) = &plan.slice_resources else {
            return true;
        };
        let s = &self.shared;
        let props = want.live_properties();
        let result = match &live.slice_actuated {
            Some(had) if had.same(want) => return true,
            Some(_) => s.sd.set_properties(&plan.slice, &props).await,
            None => {
                let mut properties = vec![crate::core::unit::Property::Description(format!(
                    "unitlet pod {uid}"
                ))];
                properties.extend(resources::properties(Some(&want.requirements())));
                let spec = UnitSpec {
                    name: plan.slice.clone(),
                    properties,
                };
                match s.sd.start_transient(&spec).await {
                    // Made by an earlier agent that died before recording it.
                    Err(e) if e.is_exists() => s.sd.set_properties(&plan.slice, &props).await,
                    r => r,
                }
            }
        };
        match result {
            Ok(()) => {
                self.save_live(uid, |l| {
                    l.slice_actuated = Some(want.clone());
                    l.slice_error = None;
                });
                true
            }
            Err(e) => {
                let msg = e.to_string();
                warn!(
                    uid,
                    error = msg,
                    "cannot apply the pod's resources to its slice; retrying"
                );
                self.save_live(uid, |l| l.slice_error = Some(msg));
                self.schedule(uid, now_us() + CREATE_RETRY_US);
                live.slice_actuated.is_some()
            }
        }
    }

    /// `activeDeadlineSeconds`: whether the pod ran past it (counted from
    /// its start, as the kubelet counts from `status.startTime`). The first
    /// time, the pod is marked Failed (`DeadlineExceeded`, recorded so it
    /// stays so) and its running containers are killed with their grace
    /// period; until then, the pod is looked at again at the deadline.
    pub(super) fn deadline_exceeded(&self, uid: &str) -> bool {
        // An evicted pod is Failed too: nothing of it starts.
        if self.evicted(uid) {
            return true;
        }
        let s = &self.shared;
        let now = now_us();
        let (kill, key, ns, name) = {
            let mut inner = s.inner.lock().unwrap();
            let inner = &mut *inner;
            let Some(e) = inner.pods.get_mut(uid) else {
                return false;
            };
            if e.rec.live.deadline_exceeded_us.is_some() {
                return true;
            }
            let Some(secs) = e
                .rec
                .pod
                .spec
                .as_ref()
                .and_then(|sp| sp.active_deadline_seconds)
            else {
                return false;
            };
            let at = e.rec.admitted_us + secs.max(0) as u64 * 1_000_000;
            if now < at {
                self.schedule(uid, at);
                return false;
            }
            // A pod that completed first is not failed afterwards.
            if e.ended {
                return false;
            }
            let mut rec = e.rec.clone();
            rec.live.deadline_exceeded_us = Some(now);
            if let Err(err) = s.state.save_pod(&rec) {
                warn!(uid, error = %err, "cannot record the pod's state; will retry");
                self.schedule(uid, now + 1_000_000);
                return false;
            }
            e.rec = rec;
            let kill: Vec<(String, String, String, u64)> = e
                .plan
                .all()
                .filter_map(|c| match instance(inner.units.get(&c.unit)) {
                    Instance::Running { invocation, .. } => {
                        Some((c.name.clone(), c.unit.clone(), invocation, unit_grace_s(c)))
                    }
                    _ => None,
                })
                .collect();
            (
                kill,
                pod_key(&e.rec.pod),
                e.rec.pod.metadata.namespace.clone().unwrap_or_default(),
                e.rec.pod.metadata.name.clone().unwrap_or_default(),
            )
        };
        info!(
            pod = key,
            uid, "pod ran past activeDeadlineSeconds; stopping it"
        );
        self.report(PodReport::Event {
            uid: uid.to_string(),
            namespace: ns,
            name,
            field_path: None,
            warning: false,
            reason: "DeadlineExceeded",
            message: crate::core::live::DEADLINE_MESSAGE.into(),
        });
        self.spawn_kills(uid, kill);
        true
    }

    /// Kills each (container, unit, invocation, grace seconds) of pod
    /// `uid` off this pass (the pod's end: deadline, eviction).
    pub(super) fn spawn_kills(&self, uid: &str, kill: Vec<(String, String, String, u64)>) {
        for (container, unit, invocation, grace) in kill {
            let (me, uid) = (self.clone(), uid.to_string());
            tokio::spawn(async move {
                me.kill_container(&uid, &container, &unit, &invocation, grace)
                    .await
            });
        }
    }
}
