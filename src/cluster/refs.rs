//! The ConfigMaps, Secrets and PersistentVolumeClaims that bound pods name
//! (in env or volumes), and the PersistentVolumes those claims are bound
//! to, kept current by one watch per object (`fieldSelector=metadata.name=…`),
//! as the kubelet's watch-based manager does: started when the first pod
//! names an object, stopped when the last such pod is gone. The node never
//! lists or watches all such objects of the cluster. Service account tokens
//! are asked for with TokenRequest, bound to the pod.

use crate::core::envref::{
    claim_data, config_map_data, secret_data, volume_data, Lookup, ObjectData, ObjectRef, RefKind,
    CLAIM_VOLUME,
};
use crate::core::volume::TokenRef;
use crate::objects::{IssuedToken, ObjectSource, TokenFor};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount,
};
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;
use tracing::{debug, warn};

/// An object in a namespace.
pub type Key = (String, ObjectRef);

struct Entry {
    lookup: Lookup,
    task: tokio::task::AbortHandle,
}

/// The watched objects, as last seen.
pub struct RefCache {
    client: kube::Client,
    /// Itself, to start the watch of a claim's volume on first lookup.
    me: Weak<RefCache>,
    entries: Mutex<HashMap<Key, Entry>>,
    changes: watch::Sender<u64>,
}

impl RefCache {
    /// A cache watching nothing yet.
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new_cyclic(|me| RefCache {
            client,
            me: me.clone(),
            entries: Mutex::default(),
            changes: watch::channel(0).0,
        })
    }

    /// Watches exactly the objects in `wanted`: starts the new ones'
    /// watches, stops those no pod names any more.
    pub fn set_wanted(self: &Arc<Self>, mut wanted: HashSet<Key>) {
        let mut entries = self.entries.lock().unwrap();
        // A wanted claim's volume stays watched (its watch starts at the
        // first lookup, once the claim says which volume it is).
        let volumes: Vec<Key> = wanted
            .iter()
            .filter(|k| k.1.kind == RefKind::PersistentVolumeClaim)
            .filter_map(|k| match &entries.get(k)?.lookup {
                Lookup::Found(d) => {
                    Some(String::from_utf8_lossy(d.data.get(CLAIM_VOLUME)?).into_owned())
                }
                _ => None,
            })
            .map(|name| {
                (
                    String::new(),
                    ObjectRef {
                        kind: RefKind::PersistentVolume,
                        name,
                    },
                )
            })
            .collect();
        wanted.extend(volumes);
        entries.retain(|k, e| {
            let keep = wanted.contains(k);
            if !keep {
                debug!(
                    namespace = k.0,
                    name = k.1.name,
                    "no pod names the object; stopping its watch"
                );
                e.task.abort();
            }
            keep
        });
        for key in wanted {
            self.start(&mut entries, key);
        }
    }

    /// Starts watching `key` unless it is watched already.
    fn start(&self, entries: &mut HashMap<Key, Entry>, key: Key) {
        {
            if entries.contains_key(&key) {
                return;
            }
            let me = self.me.clone();
            let (ns, r) = (&key.0, &key.1);
            let fields = format!("metadata.name={}", r.name);
            let task = match r.kind {
                RefKind::ConfigMap => tokio::spawn(watch_object(
                    me,
                    key.clone(),
                    Api::<ConfigMap>::namespaced(self.client.clone(), ns),
                    fields,
                    config_map_data,
                )),
                RefKind::Secret => tokio::spawn(watch_object(
                    me,
                    key.clone(),
                    Api::<Secret>::namespaced(self.client.clone(), ns),
                    fields,
                    secret_data,
                )),
                RefKind::PersistentVolumeClaim => tokio::spawn(watch_object(
                    me,
                    key.clone(),
                    Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns),
                    fields,
                    claim_data,
                )),
                RefKind::PersistentVolume => tokio::spawn(watch_object(
                    me,
                    key.clone(),
                    Api::<PersistentVolume>::all(self.client.clone()),
                    fields,
                    volume_data,
                )),
            };
            entries.insert(
                key,
                Entry {
                    lookup: Lookup::Pending,
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Records what the watch of `key` found; wakes waiters on a change.
    fn set(&self, key: &Key, lookup: Lookup) {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(key) else {
            return;
        };
        if e.lookup != lookup {
            e.lookup = lookup;
            drop(entries);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Marks `key` failed, unless it was read before (then its last data
    /// stays in use, as the kubelet's cache keeps serving it).
    fn fail(&self, key: &Key, why: String) {
        let pending = self
            .entries
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|e| matches!(e.lookup, Lookup::Pending | Lookup::Failed(_)));
        if pending {
            self.set(key, Lookup::Failed(why));
        }
    }
}

impl ObjectSource for RefCache {
    fn lookup(&self, namespace: &str, r: &ObjectRef) -> Lookup {
        let ns = match r.kind {
            RefKind::PersistentVolume => String::new(),
            _ => namespace.to_string(),
        };
        let key = (ns, r.clone());
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get(&key) {
            return e.lookup.clone();
        }
        // A claim's volume is known only once the claim is read.
        if r.kind == RefKind::PersistentVolume {
            self.start(&mut entries, key);
        }
        Lookup::Pending
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn request_token(
        &self,
        for_pod: TokenFor,
        token: TokenRef,
    ) -> BoxFuture<'static, Result<IssuedToken, String>> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &for_pod.namespace);
        async move {
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    // Empty: the API server's own audience.
                    audiences: Some(if token.audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![token.audience.clone()]
                    }),
                    expiration_seconds: Some(token.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(for_pod.pod.clone()),
                        uid: Some(for_pod.pod_uid.clone()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let what = format!(
                "cannot get a token for service account {}/{}",
                for_pod.namespace, for_pod.service_account
            );
            let got = api
                .create_token_request(&for_pod.service_account, &Default::default(), &req)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let status = got
                .status
                .ok_or_else(|| format!("{what}: the reply has no status"))?;
            match (status.token, status.expiration_timestamp) {
                (Some(token), Some(exp)) => Ok(IssuedToken {
                    token,
                    expires_unix: exp.0.as_second(),
                }),
                _ => Err(format!("{what}: the reply has no token or expiration")),
            }
        }
        .boxed()
    }
}

/// Follows one object until aborted.
async fn watch_object<K>(
    cache: Weak<RefCache>,
    key: Key,
    api: Api<K>,
    fields: String,
    data: fn(&K) -> ObjectData,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let cfg = watcher::Config::default().fields(&fields);
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut listing: Option<Lookup> = None;
    while let Some(ev) = stream.next().await {
        let Some(cache) = cache.upgrade() else { return };
        match ev {
            Ok(Event::Init) => listing = Some(Lookup::NotFound),
            Ok(Event::InitApply(o)) => listing = Some(Lookup::Found(Arc::new(data(&o)))),
            Ok(Event::InitDone) => cache.set(&key, listing.take().unwrap_or(Lookup::NotFound)),
            Ok(Event::Apply(o)) => cache.set(&key, Lookup::Found(Arc::new(data(&o)))),
            Ok(Event::Delete(_)) => cache.set(&key, Lookup::NotFound),
            Err(e) => {
                warn!(namespace = key.0, name = key.1.name, kind = key.1.kind.kind(), error = %e, "cannot watch the object; retrying with back-off");
                cache.fail(
                    &key,
                    format!("cannot read {} {:?}: {e}", key.1.kind.word(), key.1.name),
                );
            }
        }
    }
}

/// Every object the env of `pods` names.
pub fn wanted<'a>(pods: impl Iterator<Item = &'a k8s_openapi::api::core::v1::Pod>) -> HashSet<Key> {
    let mut out = HashSet::new();
    for pod in pods {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(spec) = &pod.spec else { continue };
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            for r in crate::core::envref::references(c) {
                out.insert((ns.clone(), r));
            }
        }
        // Registry and artifact credentials (see `images::creds`).
        for s in spec.image_pull_secrets.iter().flatten() {
            let r = ObjectRef {
                kind: RefKind::Secret,
                name: s.name.clone(),
            };
            out.insert((ns.clone(), r));
        }
        for v in spec.volumes.iter().flatten() {
            for r in crate::core::volume::payload::references(v) {
                out.insert((ns.clone(), r));
            }
            if let Some(c) = &v.persistent_volume_claim {
                let r = ObjectRef {
                    kind: RefKind::PersistentVolumeClaim,
                    name: c.claim_name.clone(),
                };
                out.insert((ns.clone(), r));
            }
        }
    }
    out
}
