//! A pod as it stands: what was admitted, its plan, its units' state, the
//! agent's records and the status computed from them. The CLI builds it
//! from systemd and the state directory (so it works without the agent);
//! the agent's kubelet API gets it from the runtime's memory.

use crate::clock::now_us;
use crate::core::names;
use crate::core::observe::{self, UnitSnapshot};
use crate::core::translate::{translate, PodPlan};
use crate::core::NodeFacts;
use crate::host::lookup_user;
use crate::state::{PodRecord, StateDir};
use crate::systemd::{SystemdError, Units};
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
    pub records: observe::Records,
    /// Computed status.
    pub status: PodStatus,
}

/// Reads every admitted pod and computes its status (one listing, then one GetAll per loaded unit, in parallel).
pub async fn collect(
    sd: &dyn Units,
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
            let mut status = crate::core::live::pod_status(
                &rec.pod,
                &plan,
                node,
                &units,
                &records,
                rec.admitted_us,
                now,
                &rec.live,
            );
            if let Some(ev) = &rec.evicted {
                crate::core::eviction::amend_status(&mut status, ev);
            }
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

/// What `unitlet pods` shows of a pod: the pod with its status, and when
/// it was admitted (its age).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodRow {
    /// The pod, `status` filled in.
    pub pod: k8s_openapi::api::core::v1::Pod,
    /// When this node admitted it, µs since the epoch.
    pub admitted_us: u64,
}

impl From<PodView> for PodRow {
    fn from(v: PodView) -> Self {
        let pod = with_status(&v);
        PodRow {
            pod,
            admitted_us: v.rec.admitted_us,
        }
    }
}

/// The pod as `kubectl get -o json` prints it. A pod without a
/// `creationTimestamp` (a manifest's) was created when this node admitted
/// it; the record shares the desired pod, so it is filled in here.
pub fn with_status(v: &PodView) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = (*v.rec.pod).clone();
    pod.metadata
        .creation_timestamp
        .get_or_insert_with(|| crate::core::observe::time_us(v.rec.admitted_us));
    pod.status = Some(v.status.clone());
    pod
}

/// A one-line summary used for change logging: `Running 2/2 restarts=0 (c1 running, c2 running)`.
pub fn summary(status: &PodStatus) -> String {
    let cs = status.container_statuses.as_deref().unwrap_or(&[]);
    let ready = cs.iter().filter(|c| c.ready).count();
    let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
    format!(
        "{} {}/{} restarts={restarts} {}",
        status.phase.as_deref().unwrap_or(""),
        ready,
        cs.len(),
        kubectl_status(status, false)
    )
}

/// The STATUS column, with kubectl's rules.
pub fn kubectl_status(status: &PodStatus, deleting: bool) -> String {
    let mut reason = status
        .reason
        .clone()
        .or_else(|| status.phase.clone())
        .unwrap_or_default();
    let inits = status.init_container_statuses.as_deref().unwrap_or(&[]);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let st = c.state.clone().unwrap_or_default();
        if let Some(t) = &st.terminated {
            if t.exit_code == 0 {
                continue;
            }
            initializing = true;
            reason = match (&t.reason, t.signal) {
                (Some(r), _) if !r.is_empty() => format!("Init:{r}"),
                (_, Some(s)) if s != 0 => format!("Init:Signal:{s}"),
                _ => format!("Init:ExitCode:{}", t.exit_code),
            };
        } else if let Some(w) = st
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty() && r != "PodInitializing")
        {
            initializing = true;
            reason = format!("Init:{w}");
        } else {
            initializing = true;
            reason = format!("Init:{}/{}", i, inits.len());
        }
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in status
            .container_statuses
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .rev()
        {
            let st = c.state.clone().unwrap_or_default();
            if let Some(w) = st
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = w;
            } else if let Some(t) = &st.terminated {
                reason = match (&t.reason, t.signal) {
                    (Some(r), _) if !r.is_empty() => r.clone(),
                    (_, Some(s)) if s != 0 => format!("Signal:{s}"),
                    _ => format!("ExitCode:{}", t.exit_code),
                };
            } else if st.running.is_some() && c.ready {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if deleting {
        reason = "Terminating".into();
    }
    reason
}
