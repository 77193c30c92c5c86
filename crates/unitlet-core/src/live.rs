//! What a running pod's updates add to its status: in-place resize
//! (KEP-1287: `allocatedResources`, `resources`, the `PodResizePending`
//! and `PodResizeInProgress` conditions), `activeDeadlineSeconds`, an
//! update unitlet cannot apply, and `observedGeneration`.
//!
//! Kept apart from [`super::observe`], which derives a status from the
//! units alone: these come from decisions the agent made about the pod
//! (an allocation, a deadline) and recorded in its [`LiveState`].

use super::observe::{condition, UnitSnapshot};
use super::resources::{Pending, Sizes};
use super::translate::PodPlan;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::{BTreeMap, HashMap};

/// The kubelet's message for a pod past its `activeDeadlineSeconds`.
pub const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// What the agent decided about a running pod's updates; persisted with
/// the pod so a restarted agent reports the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveState {
    /// A resize that cannot be allocated now, and since when (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_pending: Option<(Pending, u64)>,
    /// When the latest resize was allocated (µs): `PodResizeInProgress`
    /// carries it until the units have it.
    #[serde(default)]
    pub resized_us: u64,
    /// The pod-level CPU and memory the pod's slice has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_actuated: Option<Sizes>,
    /// Why applying the pod-level resize to the slice failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_error: Option<String>,
    /// The pod ran past `activeDeadlineSeconds` (when, µs): it is Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_exceeded_us: Option<u64>,
    /// An update of the running pod that unitlet cannot apply (the field
    /// and why); the pod keeps running as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_error: Option<String>,
}

fn quantities(m: &BTreeMap<String, String>) -> BTreeMap<String, Quantity> {
    m.iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect()
}

/// A running (or stopped) pod's status as reported: derived from its
/// units by [`super::observe::observe`], with what `live` adds ([`amend`]).
#[allow(clippy::too_many_arguments)]
pub fn pod_status(
    pod: &Pod,
    plan: &PodPlan,
    node: &super::NodeFacts,
    units: &HashMap<String, UnitSnapshot>,
    records: &super::observe::Records,
    admitted_us: u64,
    now_us: u64,
    live: &LiveState,
) -> PodStatus {
    let mut st = super::observe::observe(pod, plan, node, units, records, admitted_us, now_us);
    amend(&mut st, pod, plan, units, records, live);
    st
}

/// Adds to `status` (from [`super::observe::observe`]) what `live` and
/// the containers' records say. `units`/`records` are keyed by unit and
/// container name.
pub fn amend(
    status: &mut PodStatus,
    pod: &Pod,
    plan: &PodPlan,
    units: &HashMap<String, UnitSnapshot>,
    records: &super::observe::Records,
    live: &LiveState,
) {
    let generation = pod.metadata.generation;
    let mut in_progress = false;
    let mut error: Option<String> = None;
    let lists = [
        (&plan.init, status.init_container_statuses.as_mut()),
        (&plan.containers, status.container_statuses.as_mut()),
    ];
    for (plans, statuses) in lists {
        let Some(statuses) = statuses else { continue };
        for st in statuses.iter_mut() {
            let Some(c) = plans.iter().find(|c| c.name == st.name) else {
                continue;
            };
            let running = st.state.as_ref().is_some_and(|s| s.running.is_some());
            let rec = records.get(&c.name);
            let actual = rec
                .and_then(|r| r.actuated.as_ref())
                .filter(|_| running && units.contains_key(&c.unit))
                .unwrap_or(&c.resources);
            if running && !actual.same(&c.resources) {
                in_progress = true;
            }
            if let Some(e) = rec
                .and_then(|r| r.resize_error.as_ref())
                .filter(|_| running)
            {
                in_progress = true;
                error.get_or_insert_with(|| e.clone());
            }
            sized(st, &c.resources, actual);
        }
    }
    if let Some(want) = &plan.slice_resources {
        let actual = live.slice_actuated.as_ref().unwrap_or(want);
        if !actual.same(want) {
            in_progress = true;
        }
        if let Some(e) = &live.slice_error {
            in_progress = true;
            error.get_or_insert_with(|| e.clone());
        }
        status.resources = Some(actual.requirements());
        status.allocated_resources = Some(quantities(&want.requests));
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some((p, since)) = &live.resize_pending {
        let mut c = condition(
            "PodResizePending",
            true,
            Some(&p.reason),
            Some(p.message.clone()),
            *since,
        );
        c.last_probe_time = None;
        conditions.push(c);
    }
    if in_progress {
        conditions.push(condition(
            "PodResizeInProgress",
            true,
            error.as_ref().map(|_| "Error"),
            error,
            live.resized_us,
        ));
    }
    if let Some(at) = live.deadline_exceeded_us {
        status.phase = Some("Failed".into());
        status.reason = Some("DeadlineExceeded".into());
        status.message = Some(DEADLINE_MESSAGE.into());
        for c in conditions.iter_mut() {
            if matches!(c.type_.as_str(), "Ready" | "ContainersReady") && c.status == "True" {
                *c = condition(&c.type_, false, Some("PodFailed"), None, at);
            }
        }
    } else if let Some(e) = &live.update_error {
        status.message = Some(e.clone());
    }
    if generation.is_some() {
        status.observed_generation = generation;
        for c in conditions.iter_mut() {
            c.observed_generation = generation;
        }
    }
}

/// `allocatedResources` (the allocated requests) and `resources` (what the
/// unit has) of one container, which tell the API server this node
/// resizes in place.
fn sized(st: &mut ContainerStatus, allocated: &Sizes, actual: &Sizes) {
    st.allocated_resources =
        (!allocated.requests.is_empty()).then(|| quantities(&allocated.requests));
    st.resources = Some(actual.requirements());
}

/// The status of a pod unitlet refuses to run: Failed, with the reason, as
/// the kubelet reports a pod its admission rejects. Only for a pod that
/// has not started: an update of a running pod that unitlet cannot apply
/// leaves it running ([`LiveState::update_error`]).
pub fn rejected_status(message: String) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some("UnsupportedPodSpec".into()),
        message: Some(message),
        ..Default::default()
    }
}
