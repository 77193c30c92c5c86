//! The ConfigMaps and Secrets that bound pods' env names, kept current by
//! one watch per object (`fieldSelector=metadata.name=…`), as the kubelet's
//! watch-based manager does: started when the first pod names an object,
//! stopped when the last such pod is gone. The node never lists or watches
//! all ConfigMaps or Secrets of the cluster.

use crate::core::envref::{config_map_data, secret_data, Lookup, ObjectData, ObjectRef, RefKind};
use crate::runtime::EnvSource;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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
    entries: Mutex<HashMap<Key, Entry>>,
    changes: watch::Sender<u64>,
}

impl RefCache {
    /// A cache watching nothing yet.
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(RefCache {
            client,
            entries: Mutex::default(),
            changes: watch::channel(0).0,
        })
    }

    /// Watches exactly the objects in `wanted`: starts the new ones'
    /// watches, stops those no pod names any more.
    pub fn set_wanted(self: &Arc<Self>, wanted: HashSet<Key>) {
        let mut entries = self.entries.lock().unwrap();
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
            if entries.contains_key(&key) {
                continue;
            }
            let me = Arc::downgrade(self);
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

impl EnvSource for RefCache {
    fn lookup(&self, namespace: &str, r: &ObjectRef) -> Lookup {
        self.entries
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), r.clone()))
            .map(|e| e.lookup.clone())
            .unwrap_or(Lookup::Pending)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
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
    }
    out
}
