//! ConfigMap and Secret references in a container's environment.
//!
//! The kubelet resolves `envFrom` and `valueFrom.configMapKeyRef`/
//! `secretKeyRef` each time it creates a container, from the objects as they
//! are then; a change later reaches a container only when it is created
//! again (a restart). unitlet does the same: the runtime looks the objects
//! up just before it creates a container's unit and hands them to the
//! translation as data ([`Resolved`]), so the translation stays pure.
//!
//! What a missing object or key does follows the kubelet
//! (`makeEnvironmentVariables`): an `optional` reference to something
//! missing is skipped; otherwise the container waits with
//! `CreateContainerConfigError` and the kubelet's message, and is tried
//! again when the object appears.

use k8s_openapi::api::core::v1::Container;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The two kinds of object a container's env can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    /// A ConfigMap (only its `data` feeds env, as in the kubelet).
    ConfigMap,
    /// A Secret (its `data`, decoded).
    Secret,
    /// A PersistentVolumeClaim: `data` holds [`CLAIM_VOLUME`] and [`CLAIM_PHASE`].
    PersistentVolumeClaim,
    /// A PersistentVolume (cluster-scoped): `data` holds [`PV_PATH`] and
    /// [`PV_SOURCE`] (`local` or `hostPath`; absent for other sources) and
    /// [`PV_HOST_PATH_TYPE`].
    PersistentVolume,
}

/// Key of a claim's `spec.volumeName` in its [`ObjectData`].
pub const CLAIM_VOLUME: &str = "volumeName";
/// Key of a claim's `status.phase`.
pub const CLAIM_PHASE: &str = "phase";
/// Key of a PersistentVolume's path (`local.path` or `hostPath.path`).
pub const PV_PATH: &str = "path";
/// Key of the kind of a PersistentVolume's source (`local`, `hostPath`).
pub const PV_SOURCE: &str = "source";
/// Key of a hostPath PersistentVolume's `hostPath.type`.
pub const PV_HOST_PATH_TYPE: &str = "type";

impl RefKind {
    /// The kubelet's word for the kind in error messages (`configmap "x" not found`).
    pub fn word(self) -> &'static str {
        match self {
            RefKind::ConfigMap => "configmap",
            RefKind::Secret => "secret",
            RefKind::PersistentVolumeClaim => "persistentvolumeclaim",
            RefKind::PersistentVolume => "persistentvolume",
        }
    }

    /// The Kind, as in `couldn't find key k in ConfigMap ns/name`.
    pub fn kind(self) -> &'static str {
        match self {
            RefKind::ConfigMap => "ConfigMap",
            RefKind::Secret => "Secret",
            RefKind::PersistentVolumeClaim => "PersistentVolumeClaim",
            RefKind::PersistentVolume => "PersistentVolume",
        }
    }
}

/// An object named by a container's env, in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// ConfigMap or Secret.
    pub kind: RefKind,
    /// Its name.
    pub name: String,
}

/// What a lookup of one object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The object's data.
    Found(Arc<ObjectData>),
    /// The object does not exist.
    NotFound,
    /// Not known yet (its watch has not listed it); try again shortly.
    Pending,
    /// It could not be read (for example, the node may not read it): the
    /// kubelet's error even for an `optional` reference.
    Failed(String),
}

/// What unitlet reads of a ConfigMap or Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectData {
    /// ConfigMap `data` or Secret `data` (decoded), key → bytes: all that
    /// env sees.
    pub data: BTreeMap<String, Vec<u8>>,
    /// ConfigMap `binaryData`, which only volumes see.
    pub binary: BTreeMap<String, Vec<u8>>,
}

/// The objects a container's env names, looked up: the translation's input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved(pub HashMap<ObjectRef, Lookup>);

impl Resolved {
    /// The lookup of `r`; an object nobody looked up counts as pending.
    pub fn get(&self, r: &ObjectRef) -> &Lookup {
        self.0.get(r).unwrap_or(&Lookup::Pending)
    }

    /// Whether any object is still pending.
    pub fn pending(&self, refs: &[ObjectRef]) -> bool {
        refs.iter().any(|r| *self.get(r) == Lookup::Pending)
    }
}

/// Every object the container's env names, each once, in order.
pub fn references(c: &Container) -> Vec<ObjectRef> {
    let mut out: Vec<ObjectRef> = Vec::new();
    let mut add = |kind, name: &str| {
        let r = ObjectRef {
            kind,
            name: name.to_string(),
        };
        if !out.contains(&r) {
            out.push(r);
        }
    };
    for f in c.env_from.iter().flatten() {
        if let Some(cm) = &f.config_map_ref {
            add(RefKind::ConfigMap, &cm.name);
        }
        if let Some(s) = &f.secret_ref {
            add(RefKind::Secret, &s.name);
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(k) = &from.config_map_key_ref {
            add(RefKind::ConfigMap, &k.name);
        }
        if let Some(k) = &from.secret_key_ref {
            add(RefKind::Secret, &k.name);
        }
    }
    out
}

/// What unitlet reads of a ConfigMap: `data` and `binaryData`.
pub fn config_map_data(cm: &k8s_openapi::api::core::v1::ConfigMap) -> ObjectData {
    ObjectData {
        data: cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
        binary: cm
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    }
}

/// What unitlet reads of a Secret: `data`, decoded (the API server folds
/// `stringData` into it).
pub fn secret_data(s: &k8s_openapi::api::core::v1::Secret) -> ObjectData {
    ObjectData {
        data: s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
        binary: BTreeMap::new(),
    }
}

/// What unitlet reads of a PersistentVolumeClaim: the volume it is bound
/// to and its phase.
pub fn claim_data(c: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> ObjectData {
    let mut data = BTreeMap::new();
    if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.clone()) {
        data.insert(CLAIM_VOLUME.to_string(), v.into_bytes());
    }
    if let Some(p) = c.status.as_ref().and_then(|s| s.phase.clone()) {
        data.insert(CLAIM_PHASE.to_string(), p.into_bytes());
    }
    ObjectData {
        data,
        binary: BTreeMap::new(),
    }
}

/// What unitlet reads of a PersistentVolume: its path, if it is a `local`
/// or `hostPath` volume (the only kinds a node without storage plugins
/// can mount).
pub fn volume_data(v: &k8s_openapi::api::core::v1::PersistentVolume) -> ObjectData {
    let mut data = BTreeMap::new();
    let spec = v.spec.as_ref();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), v.as_bytes().to_vec());
    };
    if let Some(l) = spec.and_then(|s| s.local.as_ref()) {
        put(PV_SOURCE, "local");
        put(PV_PATH, &l.path);
    } else if let Some(h) = spec.and_then(|s| s.host_path.as_ref()) {
        put(PV_SOURCE, "hostPath");
        put(PV_PATH, &h.path);
        if let Some(t) = &h.type_ {
            put(PV_HOST_PATH_TYPE, t);
        }
    }
    ObjectData {
        data,
        binary: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_listed_once_in_order() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}],
            "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "a", "key": "k"}}},
                {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}},
                {"name": "Z", "valueFrom": {"secretKeyRef": {"name": "a", "key": "k"}}},
                {"name": "V", "value": "plain"}
            ]
        }))
        .unwrap();
        let names: Vec<(RefKind, String)> = references(&c)
            .into_iter()
            .map(|r| (r.kind, r.name))
            .collect();
        assert_eq!(
            names,
            vec![
                (RefKind::ConfigMap, "a".to_string()),
                (RefKind::Secret, "s".into()),
                (RefKind::ConfigMap, "b".into()),
                (RefKind::Secret, "a".into()),
            ]
        );
    }

    #[test]
    fn unknown_objects_are_pending() {
        let r = Resolved::default();
        let a = ObjectRef {
            kind: RefKind::Secret,
            name: "a".into(),
        };
        assert_eq!(r.get(&a), &Lookup::Pending);
        assert!(r.pending(std::slice::from_ref(&a)));
        assert!(!r.pending(&[]));
    }
}
