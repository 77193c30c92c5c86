//! A pod as it stands: what was admitted, its plan, its units' state, the
//! agent's records and the status computed from them. The CLI builds it
//! from systemd and the state directory (so it works without the agent);
//! the agent's kubelet API gets it from the runtime's memory.

use crate::core::names;
use crate::core::observe::{self, UnitSnapshot};
use crate::core::translate::{translate, PodPlan};
use crate::core::NodeFacts;
use crate::runtime::{lookup_user, now_us};
use crate::state::{PodRecord, StateDir};
use crate::systemd::{Systemd, SystemdError};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::PodStatus;
use std::collections::HashMap;

/// One admitted pod with its plan and live status.
pub struct PodView {
    /// What was admitted.
    pub rec: PodRecord,
    /// Its units.
    pub plan: PodPlan,
    /// Live unit state, by unit name.
    pub units: HashMap<String, UnitSnapshot>,
    /// The agent's container records.
    pub records: HashMap<String, observe::ContainerRecord>,
    /// Computed status.
    pub status: PodStatus,
}

/// Reads every admitted pod and computes its status (one listing, then one GetAll per loaded unit, in parallel).
pub async fn collect(
    sd: &Systemd,
    state: &StateDir,
    node: &NodeFacts,
) -> Result<Vec<PodView>, SystemdError> {
    let (recs, _) = state.load_pods();
    let listing = sd.list(&names::UNIT_PATTERNS).await?;
    let loaded: std::collections::HashSet<String> = listing.into_iter().map(|r| r.name).collect();
    let plans: Vec<(PodRecord, PodPlan)> = recs
        .into_iter()
        .map(|r| {
            let p = translate(&r.pod, node, &lookup_user);
            (r, p)
        })
        .collect();
    let wanted: Vec<String> = plans
        .iter()
        .flat_map(|(_, p)| p.unit_names().map(str::to_string).collect::<Vec<_>>())
        .filter(|u| loaded.contains(u))
        .collect();
    let snaps: Vec<(String, Option<UnitSnapshot>)> = futures_util::stream::iter(wanted)
        .map(|u| async move {
            let s = sd.snapshot(&u).await.ok().flatten();
            (u, s)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let all: HashMap<String, UnitSnapshot> = snaps
        .into_iter()
        .filter_map(|(u, s)| s.map(|s| (u, s)))
        .collect();
    let now = now_us();
    Ok(plans
        .into_iter()
        .map(|(rec, plan)| {
            let units: HashMap<String, UnitSnapshot> = plan
                .unit_names()
                .filter_map(|u| all.get(u).map(|s| (u.to_string(), s.clone())))
                .collect();
            let records = state.load_containers(rec.uid());
            let status = observe::observe(
                &rec.pod,
                &plan,
                node,
                &units,
                &records,
                rec.admitted_us,
                now,
            );
            PodView {
                rec,
                plan,
                units,
                records,
                status,
            }
        })
        .collect())
}

/// The pod as `kubectl get -o json` prints it.
pub fn with_status(v: &PodView) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = v.rec.pod.clone();
    pod.status = Some(v.status.clone());
    pod
}
