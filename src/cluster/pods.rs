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

/// What the watch last saw of a bound pod, for the status writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `status.phase` in the API.
    pub phase: Option<String>,
    /// `deletionTimestamp` is set.
    pub deleting: bool,
}

/// Bound pods by UID, as the watch last saw them.
#[derive(Debug, Clone, Default)]
pub struct Known(Arc<Mutex<HashMap<String, ApiPod>>>);

impl Known {
    fn get(&self, uid: &str) -> Option<ApiPod> {
        self.0.lock().unwrap().get(uid).cloned()
    }
}

fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// An API pod as the reconciler wants it, or why it cannot run here.
pub fn to_desired(pod: &Pod) -> Result<StaticPod, crate::core::manifest::ManifestError> {
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
        pod: p,
        deletion_grace_s,
    })
}

/// The status of a pod unitlet refuses to run: Failed, with the reason, as
/// the kubelet reports a pod its admission rejects.
pub fn rejected_status(message: String) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some("UnsupportedPodSpec".into()),
        message: Some(message),
        ..Default::default()
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
    reports: mpsc::UnboundedSender<PodReport>,
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
                        listed.extend(p.metadata.uid.clone());
                        accept(&p, l, &known, &reports);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(l) = listing.take() {
                        // A (re-)list is the whole truth: forget pods it lacks.
                        known
                            .0
                            .lock()
                            .unwrap()
                            .retain(|uid, _| listed.contains(uid));
                        pods = l;
                        synced = true;
                        changed = true;
                    }
                }
                Ok(Event::Apply(p)) => {
                    accept(&p, &mut pods, &known, &reports);
                    changed = true;
                }
                Ok(Event::Delete(p)) => {
                    if let Some(uid) = p.metadata.uid.as_deref() {
                        pods.remove(uid);
                        known.0.lock().unwrap().remove(uid);
                    }
                    changed = true;
                }
                Err(e) => warn!(error = %e, "pod watch failed; retrying with back-off"),
            }
        }
        if synced && changed {
            // Watch what the pods' env names before they reach the runtime.
            refs.set_wanted(super::refs::wanted(pods.values().map(|p| &p.pod)));
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

/// Records one API pod: in `known`, and in `set` if it can run here; a pod
/// that cannot is reported Failed (or, once deleted, as stopped).
fn accept(
    pod: &Pod,
    set: &mut HashMap<String, Arc<StaticPod>>,
    known: &Known,
    reports: &mpsc::UnboundedSender<PodReport>,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    known.0.lock().unwrap().insert(
        uid.clone(),
        ApiPod {
            namespace: namespace.clone(),
            name: name.clone(),
            phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        },
    );
    match to_desired(pod) {
        Ok(d) => {
            // Keep the shared copy when nothing the reconciler reads changed
            // (most updates are our own status writes).
            let same = set.get(&uid).is_some_and(|old| {
                old.deletion_grace_s == d.deletion_grace_s && old.pod.spec == d.pod.spec
            });
            if !same {
                set.insert(uid, Arc::new(d));
            }
        }
        Err(e) => {
            set.remove(&uid);
            let report = if pod.metadata.deletion_timestamp.is_some() {
                PodReport::Stopped {
                    uid,
                    namespace,
                    name,
                }
            } else {
                PodReport::Status {
                    uid,
                    namespace,
                    name,
                    status: Box::new(rejected_status(e.to_string())),
                }
            };
            let _ = reports.send(report);
        }
    }
}

/// Writes what the reconciler reports: the newest status per pod, and the
/// removal of deleted pods once stopped. Failed writes are retried with
/// back-off; a newer status replaces an unwritten older one.
pub async fn write_status(
    client: kube::Client,
    known: Known,
    mut reports: mpsc::UnboundedReceiver<PodReport>,
    events: mpsc::UnboundedSender<super::events::Record>,
) {
    let mut statuses: HashMap<String, (String, String, PodStatus)> = HashMap::new();
    let mut stops: HashMap<String, (String, String)> = HashMap::new();
    let mut written: HashMap<String, PodStatus> = HashMap::new();
    let mut backoff = Duration::from_millis(500);
    let take = |r: PodReport,
                statuses: &mut HashMap<String, (String, String, PodStatus)>,
                stops: &mut HashMap<String, (String, String)>| match r {
        PodReport::Status {
            uid,
            namespace,
            name,
            status,
        } => {
            statuses.insert(uid, (namespace, name, *status));
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
        if statuses.is_empty() && stops.is_empty() {
            match reports.recv().await {
                Some(r) => take(r, &mut statuses, &mut stops),
                None => return,
            }
        }
        while let Ok(r) = reports.try_recv() {
            take(r, &mut statuses, &mut stops);
        }
        let mut failed = false;
        for (uid, (ns, name, status)) in std::mem::take(&mut statuses) {
            match write_one(&client, &known, &written, &uid, &ns, &name, &status).await {
                Ok(true) => {
                    written.insert(uid, status);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(pod = format!("{ns}/{name}"), error = %e, "cannot write pod status; will retry");
                    statuses.entry(uid).or_insert((ns, name, status));
                    failed = true;
                }
            }
        }
        for (uid, (ns, name)) in std::mem::take(&mut stops) {
            match delete_stopped(&client, &known, &uid, &ns, &name).await {
                Ok(()) => {
                    written.remove(&uid);
                }
                Err(e) => {
                    warn!(pod = format!("{ns}/{name}"), error = %e, "cannot remove the deleted pod; will retry");
                    stops.insert(uid, (ns, name));
                    failed = true;
                }
            }
        }
        // Forget what was written for pods the API no longer has.
        written.retain(|uid, _| known.get(uid).is_some());
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(500);
        }
    }
}

/// Patches one pod's status; `Ok(false)` when there was nothing to write.
async fn write_one(
    client: &kube::Client,
    known: &Known,
    written: &HashMap<String, PodStatus>,
    uid: &str,
    ns: &str,
    name: &str,
    status: &PodStatus,
) -> Result<bool, kube::Error> {
    let Some(api_pod) = known.get(uid) else {
        return Ok(false); // gone from the API
    };
    if written.get(uid) == Some(status) {
        return Ok(false);
    }
    if is_terminal(api_pod.phase.as_deref()) && !is_terminal(status.phase.as_deref()) {
        debug!(
            pod = format!("{ns}/{name}"),
            "not moving a terminal phase backwards"
        );
        return Ok(false);
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "metadata": { "uid": uid }, "status": status });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => Ok(true),
        // Deleted: nothing to write.
        Err(e) if api_code(&e) == Some(404) => Ok(false),
        // 422: refused as invalid, which includes a UID in the patch that no
        // longer matches (a new pod of the same name); 409: conflict. Writing
        // the same again cannot succeed; the next change is tried afresh.
        Err(e) if matches!(api_code(&e), Some(409 | 422)) => {
            warn!(pod = format!("{ns}/{name}"), uid, error = %e, "pod status refused; not retrying");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes a pod whose deletion was asked and whose units have stopped.
async fn delete_stopped(
    client: &kube::Client,
    known: &Known,
    uid: &str,
    ns: &str,
    name: &str,
) -> Result<(), kube::Error> {
    if !known.get(uid).is_some_and(|p| p.deleting) {
        return Ok(());
    }
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
            serde_json::json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("prod/web"), "{msg}");
        assert!(msg.contains("volumes"), "{msg}");
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
