//! Pods bound to this node: from the API watch to the reconciler, and their
//! status back to the API server.
//!
//! The watch selects `spec.nodeName=<node>` only, never every pod of the
//! cluster. Every change sends the whole set of bound pods to the reconciler
//! (level-triggered, as the manifest directory does). Status goes back as
//! strategic-merge patches of `pods/status` that carry the pod UID, so a new
//! pod with an old one's name is never written with the old one's status;
//! a terminal phase is never moved backwards; and a pod whose deletion was
//! asked is removed (grace 0, UID precondition) only once its units stopped,
//! as the kubelet does.

use super::api_code;
use crate::core::manifest::{validate_with, StaticPod};
use crate::runtime::PodReport;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The annotation that makes a pod the mirror of a static pod; its value
/// is the static pod's UID (the kubelet's config hash).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What the watch last saw of a bound pod, for the status writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The object's UID in the API (for a mirror pod, not the UID of the
    /// static pod it mirrors).
    pub api_uid: String,
    /// A mirror pod.
    pub mirror: bool,
    /// `status.phase` in the API.
    pub phase: Option<String>,
    /// `deletionTimestamp` is set.
    pub deleting: bool,
}

/// Bound pods as the watch last saw them, by the UID the runtime knows
/// them by: their own, or for mirror pods the static pod's.
#[derive(Debug, Clone)]
pub struct Known {
    pods: Arc<Mutex<HashMap<String, ApiPod>>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Known {
    fn default() -> Self {
        Known {
            pods: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Known {
    /// The pod the runtime knows as `uid`.
    pub fn get(&self, uid: &str) -> Option<ApiPod> {
        self.pods.lock().unwrap().get(uid).cloned()
    }

    /// Mirror pods, by the static pod UID they mirror.
    pub fn mirrors(&self) -> Vec<(String, ApiPod)> {
        self.pods
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.mirror)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }

    /// Bumped after every batch of watch events.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The UID the runtime knows an API pod by.
fn runtime_uid(pod: &Pod) -> Option<String> {
    mirror_of(pod).or_else(|| pod.metadata.uid.clone())
}

/// The static pod UID a mirror pod mirrors.
fn mirror_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(MIRROR_ANNOTATION)
        .cloned()
}

fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// An API pod as the reconciler wants it, or why it cannot run here.
pub fn to_desired(pod: &Pod) -> Result<StaticPod, crate::core::manifest::ManifestError> {
    let terminal = is_terminal(pod.status.as_ref().and_then(|s| s.phase.as_deref()));
    let mut p = pod.clone();
    p.status = None;
    p.metadata.namespace.get_or_insert_with(|| "default".into());
    let key = crate::core::manifest::pod_key(&p);
    validate_with(&p, true).map_err(|mut e| {
        e.pod.get_or_insert(key);
        e
    })?;
    let deletion_grace_s = p
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|_| p.metadata.deletion_grace_period_seconds.unwrap_or(0).max(0) as u64);
    Ok(StaticPod {
        uid: p.metadata.uid.clone().unwrap_or_default(),
        pod: Arc::new(p),
        deletion_grace_s,
        update_error: None,
        terminal,
    })
}

pub use crate::core::live::rejected_status;

/// [`to_desired`], or the pod as it is with why it cannot run here: the
/// reconciler decides what that means (a pod it has not started is
/// rejected; one it runs keeps running as it was, see
/// [`StaticPod::update_error`]).
pub fn desired_or_rejected(pod: &Pod) -> StaticPod {
    match to_desired(pod) {
        Ok(d) => d,
        Err(e) => {
            let mut p = pod.clone();
            p.status = None;
            p.metadata.namespace.get_or_insert_with(|| "default".into());
            StaticPod {
                uid: p.metadata.uid.clone().unwrap_or_default(),
                deletion_grace_s: p
                    .metadata
                    .deletion_timestamp
                    .as_ref()
                    .map(|_| p.metadata.deletion_grace_period_seconds.unwrap_or(0).max(0) as u64),
                pod: Arc::new(p),
                update_error: Some(e.to_string()),
                terminal: is_terminal(pod.status.as_ref().and_then(|s| s.phase.as_deref())),
            }
        }
    }
}

/// Watches the pods bound to `node` and sends the desired set after every
/// batch of changes.
pub async fn watch(
    client: kube::Client,
    node: String,
    known: Known,
    refs: Arc<super::refs::RefCache>,
    desired: mpsc::Sender<Vec<Arc<StaticPod>>>,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut pods: HashMap<String, Arc<StaticPod>> = HashMap::new();
    let mut listing: Option<HashMap<String, Arc<StaticPod>>> = None;
    let mut listed: std::collections::HashSet<String> = Default::default();
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        let mut batch = vec![ev];
        // Take what else has arrived, so a burst is one send.
        while let Some(Some(ev)) = stream.next().now_or_never() {
            batch.push(ev);
        }
        let mut changed = false;
        for ev in batch {
            match ev {
                Ok(Event::Init) => {
                    listing = Some(HashMap::new());
                    listed.clear();
                }
                Ok(Event::InitApply(p)) => {
                    if let Some(l) = listing.as_mut() {
                        listed.extend(runtime_uid(&p));
                        accept(&p, l, &known);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        // A (re-)list is the whole truth: forget pods it lacks.
                        known
                            .pods
                            .lock()
                            .unwrap()
                            .retain(|uid, _| listed.contains(uid));
                        pods = l;
                        synced = true;
                        changed = true;
                    }
                }
                Ok(Event::Apply(p)) => {
                    accept(&p, &mut pods, &known);
                    changed = true;
                }
                Ok(Event::Delete(p)) => {
                    if let Some(uid) = runtime_uid(&p) {
                        pods.remove(&uid);
                        let mut k = known.pods.lock().unwrap();
                        // Only if it is this object (not a newer one of the same key).
                        if k.get(&uid).map(|a| a.api_uid.as_str()) == p.metadata.uid.as_deref() {
                            k.remove(&uid);
                        }
                    }
                    changed = true;
                }
                Err(e) => warn!(error = %e, "pod watch failed; retrying with back-off"),
            }
        }
        if changed {
            known.bump();
        }
        if synced && changed {
            // Watch what the pods' env names before they reach the runtime.
            refs.set_wanted(super::refs::wanted(pods.values().map(|p| &*p.pod)));
        }
        if synced
            && changed
            && desired
                .send(pods.values().cloned().collect())
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Records one API pod: in `known`, and in `set` (with why, if it cannot
/// run here: the reconciler rejects it, or keeps running what it runs).
fn accept(pod: &Pod, set: &mut HashMap<String, Arc<StaticPod>>, known: &Known) {
    let Some(api_uid) = pod.metadata.uid.clone() else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mirror = mirror_of(pod);
    let uid = mirror.clone().unwrap_or_else(|| api_uid.clone());
    known.pods.lock().unwrap().insert(
        uid.clone(),
        ApiPod {
            namespace: namespace.clone(),
            name: name.clone(),
            api_uid,
            mirror: mirror.is_some(),
            phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        },
    );
    if mirror.is_some() {
        // The static pod it mirrors runs from the manifest directory; the
        // mirror only shows it (see `super::mirror`).
        return;
    }
    let d = desired_or_rejected(pod);
    // Keep the shared copy when nothing the reconciler reads changed
    // (most updates are our own status writes).
    let same = set.get(&uid).is_some_and(|old| {
        let (a, b) = (&old.pod.metadata, &d.pod.metadata);
        old.deletion_grace_s == d.deletion_grace_s
            && old.terminal == d.terminal
            && old.update_error == d.update_error
            && old.pod.spec == d.pod.spec
            && a.labels == b.labels
            && a.annotations == b.annotations
            && a.generation == b.generation
    });
    if !same {
        set.insert(uid, Arc::new(d));
    }
}

/// The longest wait between tries to write statuses the API server did
/// not take: the kubelet's status manager tries again every 10 s.
const STATUS_RETRY_MAX: Duration = Duration::from_secs(10);

/// Writes what the reconciler reports: the newest status per pod, and the
/// removal of deleted pods once stopped. Failed writes are retried with
/// back-off; a newer status replaces an unwritten older one. The newest
/// status of every running pod is kept, so a pod that (re)appears in the
/// API later gets it written too: a static pod's mirror pod, created after
/// the static pod started or re-created after someone deleted it.
pub async fn write_status(
    client: kube::Client,
    known: Known,
    mut reports: mpsc::UnboundedReceiver<PodReport>,
    events: mpsc::UnboundedSender<super::events::Record>,
) {
    let mut latest: HashMap<String, (String, String, PodStatus)> = HashMap::new();
    let mut stops: HashMap<String, (String, String)> = HashMap::new();
    // What was written, to which object (a mirror pod may be re-created).
    let mut written: HashMap<String, (String, PodStatus)> = HashMap::new();
    let mut backoff = Duration::from_millis(500);
    let mut failed = false;
    let mut api_changed = known.subscribe();
    // When a pod's first status that is only "containers being created"
    // may be written (see [`PASSING_HOLD`]).
    let mut hold: HashMap<String, tokio::time::Instant> = HashMap::new();
    let take = |r: PodReport,
                latest: &mut HashMap<String, (String, String, PodStatus)>,
                stops: &mut HashMap<String, (String, String)>| match r {
        PodReport::Status {
            uid,
            namespace,
            name,
            status,
        } => {
            latest.insert(uid, (namespace, name, *status));
        }
        PodReport::Stopped {
            uid,
            namespace,
            name,
        } => {
            stops.insert(uid, (namespace, name));
        }
        PodReport::Event {
            uid,
            namespace,
            name,
            field_path,
            warning,
            reason,
            message,
        } => {
            let _ = events.send(super::events::Record {
                object: k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(namespace),
                    name: Some(name),
                    uid: Some(uid),
                    field_path,
                    ..Default::default()
                },
                warning,
                reason: reason.into(),
                message,
            });
        }
    };
    loop {
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(STATUS_RETRY_MAX);
        } else {
            backoff = Duration::from_millis(500);
            let next_hold = hold.values().min().copied();
            tokio::select! {
                r = reports.recv() => match r {
                    Some(r) => take(r, &mut latest, &mut stops),
                    None => return,
                },
                _ = api_changed.changed() => {}
                _ = tokio::time::sleep_until(next_hold.unwrap_or_else(tokio::time::Instant::now)), if next_hold.is_some() => {}
            }
        }
        while let Ok(r) = reports.try_recv() {
            take(r, &mut latest, &mut stops);
        }
        // Forget what was written for pods the API no longer has.
        written.retain(|uid, _| known.get(uid).is_some());
        failed = false;
        let now = tokio::time::Instant::now();
        // Held only until first written (a past instant left here would
        // wake the loop at once, again and again).
        hold.retain(|uid, _| {
            !written.contains_key(uid)
                && known.get(uid).is_some()
                && latest.get(uid).is_some_and(|(_, _, st)| passing(st))
        });
        let due: Vec<(String, (String, String, PodStatus), String)> = latest
            .iter()
            .filter_map(|(uid, entry)| {
                // Not in the API (yet, for a mirror pod): skipped.
                let api_uid = known.get(uid)?.api_uid;
                let done = written
                    .get(uid)
                    .is_some_and(|(a, w)| *a == api_uid && *w == entry.2);
                if done {
                    return None;
                }
                if !written.contains_key(uid) && passing(&entry.2) {
                    let until = *hold.entry(uid.clone()).or_insert(now + PASSING_HOLD);
                    if until > now {
                        return None;
                    }
                }
                Some((uid.clone(), entry.clone(), api_uid))
            })
            .collect();
        for (uid, _, _) in &due {
            hold.remove(uid);
        }
        // Several patches in flight (the client's QPS/burst limit still
        // applies): written one after another, each waiting for the
        // previous reply, a burst of 100 pods took 5.8 s to show Running.
        let outcomes: Vec<_> = futures_util::stream::iter(due)
            .map(|(uid, entry, api_uid)| {
                let (client, known) = (client.clone(), known.clone());
                async move {
                    let r = write_one(&client, &known, &uid, &entry.2).await;
                    (uid, entry, api_uid, r)
                }
            })
            .buffer_unordered(STATUS_WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (uid, (ns, name, status), api_uid, r) in outcomes {
            match r {
                // Written, or refused for good: not again until it changes.
                Ok(true) => {
                    written.insert(uid, (api_uid, status));
                }
                // Not in the API yet: written once it appears.
                Ok(false) => {}
                Err(e) => {
                    warn!(pod = format!("{ns}/{name}"), error = %e, "cannot write pod status; will retry");
                    failed = true;
                }
            }
        }
        for (uid, (ns, name)) in std::mem::take(&mut stops) {
            // The final status (terminated containers, terminal phase) goes
            // out before the object is removed, as the kubelet's does.
            let unwritten = latest.get(&uid).is_some_and(|(_, _, st)| {
                known.get(&uid).is_some() && written.get(&uid).is_none_or(|(_, w)| w != st)
            });
            if unwritten {
                stops.insert(uid, (ns, name));
                continue;
            }
            match delete_stopped(&client, &known, &uid).await {
                Ok(()) => {
                    latest.remove(&uid);
                    written.remove(&uid);
                }
                Err(e) => {
                    warn!(pod = format!("{ns}/{name}"), error = %e, "cannot remove the deleted pod; will retry");
                    stops.insert(uid, (ns, name));
                    failed = true;
                }
            }
        }
    }
}

/// How long a new pod's first status is held while it only says that its
/// containers are being created. Most pods run within it, and their first
/// write is then `Running`: a burst of 100 pods costs 100 writes instead of
/// 200, which fits the client's default burst, so the pods show Running in
/// the API that much sooner. A pod still being created after it (an image
/// pull, a volume waited for) shows `ContainerCreating` as before.
const PASSING_HOLD: Duration = Duration::from_secs(1);

/// Whether `status` is the passing one of a pod whose containers are all
/// being created (see [`PASSING_HOLD`]).
fn passing(status: &PodStatus) -> bool {
    let waiting_for = |reasons: &[&str]| {
        status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .all(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.as_deref())
                    .is_some_and(|r| reasons.contains(&r))
            })
    };
    status.phase.as_deref() == Some("Pending")
        && status
            .container_statuses
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        && waiting_for(&["ContainerCreating", "PodInitializing"])
}

/// Status patches sent at once (see [`write_status`]).
const STATUS_WRITES_IN_FLIGHT: usize = 16;

/// Patches one pod's status. `Ok(true)`: done with this status (written,
/// or not to be written: refused, or it would move a terminal phase back);
/// `Ok(false)`: the pod is not in the API, yet.
async fn write_one(
    client: &kube::Client,
    known: &Known,
    uid: &str,
    status: &PodStatus,
) -> Result<bool, kube::Error> {
    let Some(api_pod) = known.get(uid) else {
        return Ok(false); // not in the API (yet, for a mirror pod)
    };
    let (ns, name) = (api_pod.namespace.as_str(), api_pod.name.as_str());
    if is_terminal(api_pod.phase.as_deref()) && !is_terminal(status.phase.as_deref()) {
        debug!(
            pod = format!("{ns}/{name}"),
            "not moving a terminal phase backwards"
        );
        return Ok(true);
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "metadata": { "uid": api_pod.api_uid }, "status": status });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(true),
        // Deleted: nothing to write.
        Err(e) if api_code(&e) == Some(404) => Ok(true),
        // 422: refused as invalid, which includes a UID in the patch that no
        // longer matches (a new pod of the same name); 409: conflict. Writing
        // the same again cannot succeed; the next change is tried afresh.
        Err(e) if matches!(api_code(&e), Some(409 | 422)) => {
            warn!(pod = format!("{ns}/{name}"), uid, error = %e, "pod status refused; not retrying");
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Removes a pod whose deletion was asked and whose units have stopped.
async fn delete_stopped(
    client: &kube::Client,
    known: &Known,
    uid: &str,
) -> Result<(), kube::Error> {
    // Mirror pods are the mirror manager's.
    let Some(p) = known.get(uid).filter(|p| p.deleting && !p.mirror) else {
        return Ok(());
    };
    let (ns, name) = (p.namespace.as_str(), p.name.as_str());
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            info!(
                pod = format!("{ns}/{name}"),
                uid, "deleted pod removed from the API"
            );
            Ok(())
        }
        Err(e) if matches!(api_code(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "host", "command": ["/bin/true"]}]},
            "status": {"phase": "Running"}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn api_pod_keeps_its_uid_and_drops_the_status() {
        let d = to_desired(&pod(serde_json::json!({}))).unwrap();
        assert_eq!(d.uid, "u-1");
        assert_eq!(d.deletion_grace_s, None);
        assert!(d.pod.status.is_none());
    }

    #[test]
    fn deletion_asks_for_the_deletion_grace() {
        let d = to_desired(&pod(serde_json::json!({"metadata": {
            "deletionTimestamp": "2026-11-26T00:00:00Z", "deletionGracePeriodSeconds": 12
        }})))
        .unwrap();
        assert_eq!(d.deletion_grace_s, Some(12));
    }

    #[test]
    fn unsupported_fields_are_refused_naming_pod_and_field() {
        let e = to_desired(&pod(
            serde_json::json!({"spec": {"volumes": [{"name": "v", "nfs": {"server": "s", "path": "/"}}]}}),
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("prod/web"), "{msg}");
        assert!(msg.contains("spec.volumes[0].nfs"), "{msg}");
        let st = rejected_status(msg);
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        assert_eq!(st.reason.as_deref(), Some("UnsupportedPodSpec"));
    }

    #[test]
    fn terminal_phases() {
        assert!(is_terminal(Some("Succeeded")));
        assert!(is_terminal(Some("Failed")));
        assert!(!is_terminal(Some("Running")));
        assert!(!is_terminal(None));
    }
}
