//! The state directory: what unitlet must remember that systemd does not.
//!
//! `<root>/pods/<uid>/pod.json` is the pod as admitted (written before any
//! unit exists, removed after the last one is gone), so a restarted agent
//! knows which units are its own without parsing their names.
//! `<root>/pods/<uid>/containers/<name>.json` holds restart bookkeeping.
//! Files are replaced atomically (write, then rename), so a `kill -9` leaves
//! either the old or the new version.

use crate::core::observe::ContainerRecord;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Default location.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/unitlet";

/// A state-directory failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("state directory: {path}: {source}")]
pub struct StateError {
    /// File or directory involved.
    pub path: PathBuf,
    /// Underlying error.
    #[source]
    pub source: io::Error,
}

/// An admitted pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// The pod as admitted (defaulted, with uid).
    pub pod: std::sync::Arc<Pod>,
    /// Where it came from (manifest path).
    pub source: String,
    /// Admission time, µs since the epoch (`status.startTime`).
    pub admitted_us: u64,
    /// What the agent decided about the pod's updates while it runs
    /// (resize, deadline, an update it cannot apply).
    #[serde(default)]
    pub live: crate::core::live::LiveState,
    /// The node evicted the pod (node pressure): it is Failed for good and
    /// never started again, also by a restarted agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<crate::core::eviction::Evicted>,
    /// The pod's termination under way: a restarted agent carries it on
    /// rather than starting it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<Stopping>,
}

/// How far a pod's termination has gone (see [`PodRecord::stopping`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// When it began, µs since the epoch: the grace period counts from
    /// here, not from when an agent restarted.
    pub since_us: u64,
    /// Units whose preStop hook has run to its end: not run again. (A hook
    /// an agent's death cut short may run again, which Kubernetes allows:
    /// hooks are delivered at least once.)
    #[serde(default)]
    pub hooks_done: Vec<String>,
}

impl PodRecord {
    /// The pod UID.
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or("")
    }
}

/// Handle on the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn ctx(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError {
        path: path.to_path_buf(),
        source,
    }
}

/// Errors name the file being replaced, not the temporary one beside it;
/// a temporary file a failed write left (a full disk) is removed.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ctx(path)(e));
    }
    std::fs::rename(&tmp, path).map_err(ctx(path))
}

impl StateDir {
    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (and creates) the state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        let pods = root.join("pods");
        std::fs::create_dir_all(&pods).map_err(ctx(&pods))?;
        Ok(StateDir { root })
    }

    /// Opens without creating (for read-only CLI use).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Records an admitted pod.
    pub fn save_pod(&self, rec: &PodRecord) -> Result<(), StateError> {
        let dir = self.pod_dir(rec.uid());
        let cdir = dir.join("containers");
        std::fs::create_dir_all(&cdir).map_err(ctx(&cdir))?;
        write_atomic(
            &dir.join("pod.json"),
            &serde_json::to_vec(rec).expect("serializable"),
        )
    }

    /// Every admitted pod; unreadable entries are reported in the second list.
    pub fn load_pods(&self) -> (Vec<PodRecord>, Vec<StateError>) {
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        let dir = self.root.join("pods");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (pods, errors),
            Err(e) => {
                errors.push(StateError {
                    path: dir,
                    source: e,
                });
                return (pods, errors);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path().join("pod.json");
            match std::fs::read(&path)
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(io::Error::other))
            {
                Ok(rec) => pods.push(rec),
                Err(e) => errors.push(StateError { path, source: e }),
            }
        }
        pods.sort_by_key(|p| p.admitted_us);
        (pods, errors)
    }

    /// Saves one container's record.
    pub fn save_container(
        &self,
        uid: &str,
        name: &str,
        rec: &ContainerRecord,
    ) -> Result<(), StateError> {
        write_atomic(
            &self
                .pod_dir(uid)
                .join("containers")
                .join(format!("{name}.json")),
            &serde_json::to_vec(rec).expect("serializable"),
        )
    }

    /// All container records of a pod, by container name.
    pub fn load_containers(&self, uid: &str) -> crate::core::observe::Records {
        let mut out = HashMap::new();
        let Ok(entries) = std::fs::read_dir(self.pod_dir(uid).join("containers")) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let (Some(name), Ok(bytes)) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    std::fs::read(&path),
                ) {
                    if let Ok(rec) = serde_json::from_slice(&bytes) {
                        out.insert(name.to_string(), rec);
                    }
                }
            }
        }
        out
    }

    /// Forgets a pod once all its units are gone (and its volumes are
    /// torn down: nothing is removed while anything is mounted below the
    /// pod's directory, so host data behind a mount is never deleted).
    pub fn remove_pod(&self, uid: &str) -> Result<(), StateError> {
        let dir = self.pod_dir(uid);
        match crate::volumes::fs::mounts_under(&dir) {
            Ok(m) if m.is_empty() => {}
            Ok(m) => {
                return Err(StateError {
                    path: m[0].clone(),
                    source: io::Error::other("still mounted; not removing the pod's directory"),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StateError {
                    path: dir,
                    source: e,
                })
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}
