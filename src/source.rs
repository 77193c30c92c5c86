//! The standalone pod source: a directory of manifests, with kubelet
//! static-pod semantics. One Pod per `.yaml`/`.yml`/`.json` file; dot-files
//! and subdirectories are ignored; a file that does not parse is reported
//! once and skipped. inotify drives it; a periodic relist is the safety net.
//! An edit changes the pod's UID, so the pod is recreated (kubelet rule).
//!
//! In standalone mode the directory also stands in for the API objects pods
//! name: ConfigMaps, Secrets, PersistentVolumeClaims and PersistentVolumes,
//! one per file, served to the runtime by [`Objects`]. A cluster node takes
//! those from the API server and ignores them here.

use crate::core::envref::{Lookup, ObjectData, ObjectRef};
use crate::core::manifest::{
    check_manifest_size, node_static_pod, parse_document, Document, StaticPod, MAX_MANIFEST_BYTES,
};
use crate::core::volume::TokenRef;
use crate::objects::{IssuedToken, ObjectSource, TokenFor};
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
    Object(ObjectKey, Arc<ObjectData>),
    Invalid,
}

/// An object's namespace (empty for cluster-scoped kinds), kind and name.
pub type ObjectKey = (String, ObjectRef);

/// The objects of the manifest directory, as the runtime looks them up.
#[derive(Default)]
pub struct Objects {
    map: std::sync::RwLock<HashMap<ObjectKey, Arc<ObjectData>>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Objects {
    /// Replaces the objects; wakes the runtime if anything changed.
    pub fn replace(&self, new: HashMap<ObjectKey, Arc<ObjectData>>) {
        let mut map = self.map.write().unwrap();
        if *map != new {
            *map = new;
            drop(map);
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

impl ObjectSource for Objects {
    fn lookup(&self, namespace: &str, r: &ObjectRef) -> Lookup {
        let ns = match r.kind {
            crate::core::envref::RefKind::PersistentVolume => "",
            _ => namespace,
        };
        match self.map.read().unwrap().get(&(ns.to_string(), r.clone())) {
            Some(d) => Lookup::Found(Arc::clone(d)),
            None => Lookup::NotFound,
        }
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn request_token(
        &self,
        _for_pod: TokenFor,
        _token: TokenRef,
    ) -> futures_util::future::BoxFuture<'static, Result<IssuedToken, String>> {
        futures_util::future::ready(Err("service account tokens need an API server to issue them: run the pod on a cluster node (unitlet node)".to_string())).boxed()
    }
}

struct FileState {
    digest: [u8; 32],
    /// The file's inode, size and change times when it was read: the same
    /// again means the same content (a write or a rename changes them), so
    /// a relist of 2,000 unchanged manifests reads none of them.
    stamp: Stamp,
    parsed: Parsed,
}

type Stamp = (u64, u64, i64, i64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// The manifest directory and what was last read from it.
pub struct ManifestDir {
    dir: PathBuf,
    node: String,
    /// Cluster mode: pods are named `<name>-<node>`, as the kubelet does.
    cluster: bool,
    files: BTreeMap<PathBuf, FileState>,
    reported_conflicts: HashMap<PathBuf, String>,
    /// Why the directory is refused (see [`others_may_write`]), as last
    /// logged; `None` while it is trusted.
    refused: Option<String>,
    /// What was last said about the directories above it (see
    /// [`parent_open_to_others`]).
    parent_warned: Option<String>,
}

/// Why a file or directory with this metadata lets someone other than
/// root change it, if it does: the agent runs what a manifest says as
/// root, so such a manifest (or a directory where one could be put or
/// replaced) would hand that user root.
fn others_may_write(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = m.mode() & 0o7777;
    if m.uid() != 0 {
        Some(format!("owned by uid {} (mode {mode:04o})", m.uid()))
    } else if mode & 0o002 != 0 {
        Some(format!("writable by everyone (mode {mode:04o})"))
    } else if mode & 0o020 != 0 && m.gid() != 0 {
        Some(format!("writable by group {} (mode {mode:04o})", m.gid()))
    } else {
        None
    }
}

/// Why a directory above `dir` is open to others, if one is (a root-owned
/// sticky directory such as `/tmp` is not: others may add entries there
/// but not rename or remove root's). Such a directory lets its owner swap
/// the manifest directory for another; it is warned about, not refused,
/// since the directory itself is what the agent can hold to a rule.
fn parent_open_to_others(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|d| {
        let m = std::fs::metadata(d).ok()?;
        if m.uid() == 0 && m.mode() & 0o1000 != 0 {
            return None;
        }
        others_may_write(&m).map(|why| format!("{}: {why}", d.display()))
    })
}

/// The first `limit` bytes of the file at `path`.
fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
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
            refused: None,
            parent_warned: None,
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
        self.update_with(path, false)
    }

    /// Records `path` as invalid without reading it (it is read again
    /// once its stamp changes).
    fn refuse_unread(&mut self, path: &Path, stamp: Stamp) {
        self.files.insert(
            path.to_path_buf(),
            FileState {
                digest: [0; 32],
                stamp,
                parsed: Parsed::Invalid,
            },
        );
    }

    /// Re-reads one file; with `trust_stamp`, not if its stamp is the one
    /// it had when last read. Only the periodic relist trusts stamps: file
    /// times are coarse (a few ms), so two writes of the same size within
    /// one tick look alike, and the inotify event of the second must read.
    fn update_with(&mut self, path: &Path, trust_stamp: bool) {
        if !is_manifest(path) || path.parent() != Some(self.dir.as_path()) || self.refused.is_some()
        {
            return;
        }
        let mut seen = None;
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                let st = stamp(&m);
                if trust_stamp && self.files.get(path).is_some_and(|f| f.stamp == st) {
                    return;
                }
                // A permission change changes the stamp: read again then.
                if let Some(why) = others_may_write(&m) {
                    error!(file = %path.display(), reason = why, "refusing manifest: a user other than root can change it, and its pod would run as root; make it root's and not group- or world-writable (chown root:root, chmod go-w)");
                    return self.refuse_unread(path, st);
                }
                seen = Some(st);
                // Refused unread if too large, and read no further than
                // the limit if it grows meanwhile (or is a file whose size
                // says nothing, as in /proc): a hostile or mistaken file
                // of gigabytes costs no memory.
                if let Err(e) = check_manifest_size(m.len()) {
                    error!(file = %path.display(), field = e.field, error = %e, "skipping invalid manifest");
                    return self.refuse_unread(path, st);
                }
                read_at_most(path, MAX_MANIFEST_BYTES as u64 + 1)
            }
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
        let stamp = seen.unwrap_or_default();
        if let Some(f) = self.files.get_mut(path).filter(|f| f.digest == digest) {
            f.stamp = stamp;
            return;
        }
        let source = path.to_string_lossy();
        let is_json = source.ends_with(".json");
        let parsed = parse_document(&bytes, &source, &self.node, is_json).and_then(|d| match d {
            Document::Pod(p) if self.cluster => {
                node_static_pod(*p, &self.node).map(|p| Document::Pod(Box::new(p)))
            }
            d => Ok(d),
        });
        let parsed = match parsed {
            Ok(Document::Pod(p)) => Parsed::Pod(Arc::new(*p)),
            Ok(Document::Object { .. }) if self.cluster => {
                warn!(file = %path.display(), "ignoring a ConfigMap, Secret or volume object in the manifest directory: a cluster node reads them from the API server");
                Parsed::Invalid
            }
            Ok(Document::Object { namespace, r, data }) => {
                Parsed::Object((namespace, r), Arc::new(data))
            }
            Err(e) => {
                error!(file = %path.display(), field = e.field, error = %e, "skipping invalid manifest");
                Parsed::Invalid
            }
        };
        self.files.insert(
            path.to_path_buf(),
            FileState {
                digest,
                stamp,
                parsed,
            },
        );
    }

    /// Re-reads the whole directory. Fails if the directory cannot be
    /// listed, or is refused because others can change it.
    pub fn scan(&mut self) -> std::io::Result<()> {
        self.scan_with(false)
    }

    /// The periodic relist: like [`ManifestDir::scan`], but files whose
    /// stamp has not changed since they were read are not read again.
    pub fn rescan(&mut self) -> std::io::Result<()> {
        self.scan_with(true)
    }

    fn scan_with(&mut self, trust_stamps: bool) -> std::io::Result<()> {
        let refused = std::fs::metadata(&self.dir)
            .ok()
            .and_then(|m| others_may_write(&m));
        let parent = parent_open_to_others(&self.dir);
        if parent != self.parent_warned {
            if let Some(why) = &parent {
                warn!(dir = %self.dir.display(), reason = why, "a directory above the manifest directory can be changed by a user other than root, who could replace the manifest directory and have their pods run as root; make it root's and not group- or world-writable");
            }
            self.parent_warned = parent;
        }
        if refused != self.refused {
            match &refused {
                Some(why) => {
                    error!(dir = %self.dir.display(), reason = why, "refusing the manifest directory: a user other than root can put or replace manifests in it, and their pods would run as root; make it root's and not group- or world-writable")
                }
                None if self.refused.is_some() => {
                    info!(dir = %self.dir.display(), "the manifest directory is trusted again")
                }
                None => {}
            }
            self.refused = refused;
        }
        if let Some(why) = &self.refused {
            // As a directory that cannot be read: the pods stay as they
            // were (an agent starting on it stops with this error).
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{}: refused, as a user other than root can change what is in it ({why}); make it root's and not group- or world-writable", self.dir.display()),
            ));
        }
        // Names in a set of plain strings: with a list, every relist
        // compared each known file with every present one (4 million path
        // comparisons at 2,000 pods, a quarter of the idle agent's CPU), and
        // paths compare and hash component by component.
        let mut present = Vec::new();
        let mut names = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if is_manifest(&path) {
                names.insert(path.as_os_str().to_owned());
                present.push(path);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !names.contains(p.as_os_str()))
            .cloned()
            .collect();
        for p in gone {
            self.update_with(&p, trust_stamps);
        }
        for p in present {
            self.update_with(&p, trust_stamps);
        }
        Ok(())
    }

    /// The valid objects; when two files define the same one, the first file (by name) wins.
    pub fn objects(&self) -> HashMap<ObjectKey, Arc<ObjectData>> {
        let mut out = HashMap::new();
        for f in self.files.values() {
            if let Parsed::Object(k, d) = &f.parsed {
                out.entry(k.clone()).or_insert_with(|| Arc::clone(d));
            }
        }
        out
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
    objects: Option<Arc<Objects>>,
    tx: mpsc::Sender<Vec<Arc<StaticPod>>>,
) -> std::io::Result<()> {
    let publish = |src: &ManifestDir| {
        if let Some(o) = &objects {
            o.replace(src.objects());
        }
    };
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
    publish(&src);
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
                if let Err(e) = src.rescan() { warn!(error = %e, "cannot read manifest directory; keeping the current pods"); continue; }
            }
        }
        last_send = tokio::time::Instant::now();
        publish(&src);
        if tx.send(src.pods()).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(image_arg: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - {{name: c, image: host, command: [/bin/sleep, '{image_arg}']}}\n"
        )
    }

    fn arg(src: &mut ManifestDir) -> String {
        let pods = src.pods();
        let spec = pods[0].pod.spec.as_ref().unwrap();
        spec.containers[0].command.as_ref().unwrap()[1].clone()
    }

    /// Run as root (as the suite is): files and directories others can
    /// change are refused, and trusted again once fixed.
    #[test]
    fn manifests_others_can_change_are_refused() {
        use std::os::unix::fs::{chown, PermissionsExt};
        if !nix::unistd::geteuid().is_root() {
            return eprintln!("skipped: needs root to give files away");
        }
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, pod("1")).unwrap();
        chmod(&path, 0o644);
        let mut src = ManifestDir::new(dir.path(), "n");
        let count = |src: &mut ManifestDir| {
            src.rescan().unwrap();
            src.pods().len()
        };
        let refused = |src: &mut ManifestDir| src.rescan().is_err();
        assert_eq!(count(&mut src), 1);
        for (mode, owner, trusted) in [
            (0o666, (0, 0), false),
            (0o646, (0, 0), false),
            (0o664, (0, 0), true),
            (0o664, (0, 1000), false),
            (0o644, (1000, 0), false),
            (0o644, (0, 1000), true),
            (0o600, (0, 0), true),
        ] {
            chmod(&path, mode);
            chown(&path, Some(owner.0), Some(owner.1)).unwrap();
            let want = usize::from(trusted);
            assert_eq!(count(&mut src), want, "file mode {mode:o} owner {owner:?}");
        }
        chmod(&path, 0o644);
        chown(&path, Some(0), Some(0)).unwrap();
        // A refused directory fails the scan (at startup the agent stops
        // with the error) and keeps the pods as they were.
        for (mode, trusted) in [
            (0o777, false),
            (0o1777, false),
            (0o775, true),
            (0o755, true),
        ] {
            chmod(dir.path(), mode);
            assert_eq!(refused(&mut src), !trusted, "dir mode {mode:o}");
            assert_eq!(src.pods().len(), 1, "dir mode {mode:o}");
        }
        // Nothing is read from it meanwhile, by the event path either.
        chmod(dir.path(), 0o757);
        assert!(refused(&mut src));
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, pod("1").replace("name: web", "name: other")).unwrap();
        src.update(&other);
        assert_eq!(src.pods().len(), 1);
        chmod(dir.path(), 0o755);
        assert_eq!(count(&mut src), 2);
    }

    #[test]
    fn the_relist_skips_unchanged_files_and_the_event_path_reads_always() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, pod("1")).unwrap();
        let mut src = ManifestDir::new(dir.path(), "n");
        src.scan().unwrap();
        assert_eq!(arg(&mut src), "1");
        // Same size, same file: a write within one tick of the file clock
        // may keep every time stamp. The event path reads it regardless.
        std::fs::write(&path, pod("2")).unwrap();
        src.update(&path);
        assert_eq!(arg(&mut src), "2");
        // A relist reads a file whose stamp changed (here: its size).
        std::fs::write(&path, pod("33")).unwrap();
        src.rescan().unwrap();
        assert_eq!(arg(&mut src), "33");
        // And drops a file that is gone.
        std::fs::remove_file(&path).unwrap();
        src.rescan().unwrap();
        assert!(src.pods().is_empty());
    }
}
