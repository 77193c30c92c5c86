//! The standalone pod source: a directory of manifests, with kubelet
//! static-pod semantics. One Pod per `.yaml`/`.yml`/`.json` file; dot-files
//! and subdirectories are ignored; a file that does not parse is reported
//! once and skipped. inotify drives it; a periodic relist is the safety net.
//! An edit changes the pod's UID, so the pod is recreated (kubelet rule).

use crate::core::manifest::{node_static_pod, parse_manifest, StaticPod};
use futures_util::{FutureExt, StreamExt};
use inotify::{Inotify, WatchMask};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

enum Parsed {
    Pod(Arc<StaticPod>),
    Invalid,
}

struct FileState {
    digest: [u8; 32],
    parsed: Parsed,
}

/// The manifest directory and what was last read from it.
pub struct ManifestDir {
    dir: PathBuf,
    node: String,
    /// Cluster mode: pods are named `<name>-<node>`, as the kubelet does.
    cluster: bool,
    files: BTreeMap<PathBuf, FileState>,
    reported_conflicts: HashMap<PathBuf, String>,
}

fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
}

impl ManifestDir {
    /// A source for `dir` on node `node`.
    pub fn new(dir: impl Into<PathBuf>, node: &str) -> Self {
        ManifestDir {
            dir: dir.into(),
            node: node.to_string(),
            cluster: false,
            files: BTreeMap::new(),
            reported_conflicts: HashMap::new(),
        }
    }

    /// A source for a cluster node's static pods (see [`node_static_pod`]).
    pub fn for_cluster(dir: impl Into<PathBuf>, node: &str) -> Self {
        ManifestDir {
            cluster: true,
            ..ManifestDir::new(dir, node)
        }
    }

    /// Re-reads one file (or notes that it is gone).
    pub fn update(&mut self, path: &Path) {
        if !is_manifest(path) || path.parent() != Some(self.dir.as_path()) {
            return;
        }
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => std::fs::read(path),
            Ok(_) => {
                self.files.remove(path);
                return;
            }
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(_) => {
                if self.files.remove(path).is_some() {
                    info!(file = %path.display(), "manifest removed");
                }
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if self.files.get(path).is_some_and(|f| f.digest == digest) {
            return;
        }
        let source = path.to_string_lossy();
        let is_json = source.ends_with(".json");
        let parsed = parse_manifest(&bytes, &source, &self.node, is_json).and_then(|p| {
            if self.cluster {
                node_static_pod(p, &self.node)
            } else {
                Ok(p)
            }
        });
        let parsed = match parsed {
            Ok(p) => Parsed::Pod(Arc::new(p)),
            Err(e) => {
                error!(file = %path.display(), field = e.field, error = %e, "skipping invalid manifest");
                Parsed::Invalid
            }
        };
        self.files
            .insert(path.to_path_buf(), FileState { digest, parsed });
    }

    /// Re-reads the whole directory. Fails only if the directory cannot be listed.
    pub fn scan(&mut self) -> std::io::Result<()> {
        let mut present = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if is_manifest(&path) {
                present.push(path);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            self.update(&p);
        }
        for p in present {
            self.update(&p);
        }
        Ok(())
    }

    /// The valid pods; when two files name the same pod, the first file (by name) wins.
    pub fn pods(&mut self) -> Vec<Arc<StaticPod>> {
        let mut by_key: BTreeMap<String, (&PathBuf, &Arc<StaticPod>)> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for (path, f) in &self.files {
            if let Parsed::Pod(p) = &f.parsed {
                match by_key.get(&p.key()) {
                    Some((first, _)) => conflicts.push((path.clone(), p.key(), (*first).clone())),
                    None => {
                        by_key.insert(p.key(), (path, p));
                    }
                }
            }
        }
        let pods = by_key.into_values().map(|(_, p)| Arc::clone(p)).collect();
        for (path, key, first) in conflicts {
            if self.reported_conflicts.get(&path) != Some(&key) {
                error!(file = %path.display(), pod = key, other = %first.display(), "skipping manifest: another file already defines this pod");
                self.reported_conflicts.insert(path, key);
            }
        }
        pods
    }
}

/// Shortest time between two sends of the pod set. A burst of manifest
/// writes is passed on as it arrives, not after it ends, but in batches,
/// because every send carries the whole set.
const MIN_SEND_INTERVAL: Duration = Duration::from_millis(10);

/// Watches `dir` and sends the full set of valid pods after every change.
/// `cluster`: names static pods as a cluster node does (see [`ManifestDir::for_cluster`]).
pub async fn watch(
    dir: PathBuf,
    node: String,
    cluster: bool,
    relist: Duration,
    tx: mpsc::Sender<Vec<Arc<StaticPod>>>,
) -> std::io::Result<()> {
    let mut src = if cluster {
        ManifestDir::for_cluster(dir.clone(), &node)
    } else {
        ManifestDir::new(dir.clone(), &node)
    };
    let inotify = Inotify::init()?;
    inotify.watches().add(
        &dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    let mut events = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
    src.scan()?;
    if tx.send(src.pods()).await.is_err() {
        return Ok(());
    }
    let mut last_send = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(relist);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(ev) = ev else { return Ok(()) };
                let mut names = vec![ev?.name.map(|n| dir.join(n))];
                // Take what else has arrived; right after a send, also what
                // arrives until the next send is due.
                let due = last_send + MIN_SEND_INTERVAL;
                loop {
                    let more = if tokio::time::Instant::now() < due {
                        match tokio::time::timeout_at(due, events.next()).await {
                            Ok(more) => more,
                            Err(_) => break,
                        }
                    } else {
                        match events.next().now_or_never() {
                            Some(more) => more,
                            None => break,
                        }
                    };
                    let Some(more) = more else { return Ok(()) };
                    names.push(more?.name.map(|n| dir.join(n)));
                }
                if names.iter().any(Option::is_none) {
                    warn!(dir = %dir.display(), "manifest directory itself changed; rescanning");
                    if let Err(e) = src.scan() { warn!(error = %e, "cannot read manifest directory; keeping the current pods"); continue; }
                } else {
                    for n in names.into_iter().flatten() { src.update(&n); }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = src.scan() { warn!(error = %e, "cannot read manifest directory; keeping the current pods"); continue; }
            }
        }
        last_send = tokio::time::Instant::now();
        if tx.send(src.pods()).await.is_err() {
            return Ok(());
        }
    }
}
