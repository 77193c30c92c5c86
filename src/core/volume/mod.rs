//! Pod volumes and container mounts, as data.
//!
//! The kubelet prepares each volume of a pod in a directory of its own
//! (`/var/lib/kubelet/pods/<uid>/volumes/<plugin>/<name>`) and the runtime
//! bind-mounts it into containers. unitlet does the same with systemd's
//! own mechanism: the agent prepares the directories (module `volumes`)
//! and each container's unit names them in `BindPaths=`/
//! `BindReadOnlyPaths=`. Everything here is pure: what each volume is,
//! what files a ConfigMap/Secret/downward API/projected volume holds
//! ([`payload`]), and which paths each container's unit binds.

pub mod payload;

use std::collections::BTreeMap;

/// One file of a ConfigMap, Secret, downward API or projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits (`items[].mode`, else the volume's `defaultMode`).
    pub mode: u32,
}

/// The files of a ConfigMap, Secret, downward API or projected volume:
/// relative path (validated: no `..` element, not absolute) → file.
pub type Payload = BTreeMap<String, FileEntry>;

/// Why a volume's files cannot be made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// An object (or a service account token) is not known yet; try again shortly.
    Pending,
    /// The kubelet's error, e.g. `configmap "x" not found`: the pod waits
    /// in `ContainerCreating` with a `FailedMount` event and is tried again.
    Failed(String),
}

/// A service account token a projected volume asks for (`serviceAccountToken`):
/// the pod's service account, this audience, this lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenRef {
    /// `audience`; empty means the API server's own audience.
    pub audience: String,
    /// `expirationSeconds` (the API server's default is 3600).
    pub expiration_seconds: i64,
}
