//! Mirror pods: how the API server sees the static pods a cluster node
//! runs from its manifest directory. As the kubelet does, the node creates
//! one pod object per static pod (named like it, `<name>-<node>`, with the
//! `kubernetes.io/config.mirror` annotation and the Node as owner), writes
//! the static pod's status to it, re-creates it when someone deletes it, and
//! deletes mirrors whose static pod is gone or changed. Deleting a mirror
//! never stops the static pod: the manifest directory is its source.

use super::api_code;
use super::pods::{Known, MIRROR_ANNOTATION};
use crate::core::manifest::StaticPod;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The mirror pod of static pod `sp` on node `node` (UID `node_uid`).
pub fn mirror_pod(sp: &StaticPod, node: &str, node_uid: &str) -> Pod {
    let mut pod = (*sp.pod).clone();
    let meta = &mut pod.metadata;
    meta.uid = None;
    meta.resource_version = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR_ANNOTATION.into(), sp.uid.clone());
    meta.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.into());
    }
    pod.status = None;
    pod
}

/// Keeps one mirror pod per static pod until the process ends. `statics`
/// is the manifest directory's current pod set.
pub async fn run(
    client: kube::Client,
    node: String,
    node_uid: String,
    known: Known,
    mut statics: watch::Receiver<Vec<Arc<StaticPod>>>,
) {
    let mut api = known.subscribe();
    // Nothing is decided before the pod watch has listed what exists.
    if api.changed().await.is_err() {
        return;
    }
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let desired = statics.borrow_and_update().clone();
        reconcile(&client, &node, &node_uid, &known, &desired, &mut warned).await;
        tokio::select! {
            r = statics.changed() => if r.is_err() { return },
            r = api.changed() => if r.is_err() { return },
            // A safety net for calls that failed.
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn reconcile(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    known: &Known,
    desired: &[Arc<StaticPod>],
    warned: &mut HashSet<String>,
) {
    let want: HashMap<&str, &StaticPod> = desired.iter().map(|p| (p.uid.as_str(), &**p)).collect();
    for (suid, m) in known.mirrors() {
        if want.contains_key(suid.as_str()) && !m.deleting {
            continue;
        }
        // Its static pod is gone or changed, or someone deletes it: the
        // kubelet removes such a mirror at once (and re-creates a deleted
        // one for a static pod that still runs).
        let api: Api<Pod> = Api::namespaced(client.clone(), &m.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(m.api_uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&m.name, &dp).await {
            Ok(_) => info!(
                pod = format!("{}/{}", m.namespace, m.name),
                "mirror pod deleted"
            ),
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(e) => {
                warn!(pod = format!("{}/{}", m.namespace, m.name), error = %e, "cannot delete the mirror pod; will retry")
            }
        }
    }
    for (suid, sp) in want {
        if known.get(suid).is_some() {
            continue; // there, or being deleted and then re-created
        }
        let pod = mirror_pod(sp, node, node_uid);
        let key = sp.key();
        let api: Api<Pod> = Api::namespaced(
            client.clone(),
            sp.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                warned.remove(&key);
                info!(pod = key, "mirror pod created");
            }
            // An older object of that name is still there (a mirror being
            // deleted, or a pod that is no mirror): tried again on change.
            Err(e) if api_code(&e) == Some(409) => {
                if warned.insert(key.clone()) {
                    warn!(pod = key, "cannot create the mirror pod: a pod of that name exists; will retry when it is gone");
                } else {
                    debug!(pod = key, "mirror pod name still taken");
                }
            }
            Err(e) => warn!(pod = key, error = %e, "cannot create the mirror pod; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::{node_static_pod, parse_manifest};

    #[test]
    fn mirror_pods_are_named_annotated_and_owned_like_the_kubelets() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: infra\nspec:\n  containers:\n  - name: c\n    image: host\n    command: [/bin/true]\n";
        let sp =
            parse_manifest(yaml.as_bytes(), "/etc/unitlet/pods/web.yaml", "n1", false).unwrap();
        let sp = node_static_pod(sp, "n1").unwrap();
        let m = mirror_pod(&sp, "n1", "node-uid");
        assert_eq!(m.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(m.metadata.namespace.as_deref(), Some("infra"));
        assert!(m.metadata.uid.is_none());
        let ann = m.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[MIRROR_ANNOTATION], sp.uid);
        assert_eq!(ann["kubernetes.io/config.hash"], sp.uid);
        assert_eq!(ann["kubernetes.io/config.source"], "file");
        let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "n1", "node-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(m.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert!(m.status.is_none());
    }
}
