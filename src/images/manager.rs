//! The node's images: what is stored, what is being pulled, and what a
//! container asking for an image gets now — without waiting.
//!
//! The runtime asks [`Images::ensure`] on every pass of a container that
//! needs an image; the answer is immediate (ready, pulling, or why not),
//! and a pull runs in a task of its own, one per image whatever the number
//! of pods asking (one download for a hundred pods). When a pull ends,
//! [`Images::changes`] is bumped and the runtime syncs the pods that
//! wait. A failed pull is not retried before its back-off (10 s doubling
//! to 5 min, as the kubelet's image back-off) has passed.
//!
//! What is stored is described by the catalog (`<root>/meta/<hex>.json`,
//! one file per tree, written atomically beside the store's trees), which
//! holds the references that name a tree, its sizes, config and when it
//! was last used, for the pull policies, `unitlet images`, the node's
//! `status.images` and garbage collection. Fetching itself sits behind
//! [`Puller`], so the decisions here are tested without a network.

use super::store::Store;
use super::unpack::Limits;
use crate::core::image::{self, Digest, ImageConfig, ImageRef, Pulled, TreeKind};
use crate::core::translate::{WaitReason, Waiting};
use futures_util::future::BoxFuture;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tracing::{info, warn};

/// A tree that arrived in the store.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The store key (archive digest, or OCI manifest digest).
    pub digest: Digest,
    /// Artifact or OCI root.
    pub kind: TreeKind,
    /// `imageID`.
    pub id: String,
    /// How to run it.
    pub config: ImageConfig,
    /// Bytes fetched over the network (0: nothing was downloaded).
    pub fetched_bytes: u64,
    /// Bytes of the unpacked tree.
    pub size: u64,
}

/// Credentials a pod offers for its images: the `.dockerconfigjson` of
/// each of its `imagePullSecrets`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Each secret's `.dockerconfigjson` bytes.
    pub docker_configs: Vec<Vec<u8>>,
}

/// Told how a download goes: (bytes so far, total when known).
pub type Progress<'a> = dyn Fn(u64, Option<u64>) + Send + Sync + 'a;

/// One pull, as the manager asks for it.
pub struct Request<'a> {
    /// What to fetch.
    pub image: &'a ImageRef,
    /// The pod's credentials.
    pub creds: &'a Credentials,
    /// Where to.
    pub store: &'a Store,
    /// At most this much (the per-image limit, or what the store has left).
    pub limits: Limits,
    /// Told how the download goes (`unitlet pull` on a terminal).
    pub progress: Option<&'a Progress<'a>>,
}

/// The network side of pulling, behind a trait so the manager's decisions
/// are tested without one.
pub trait Puller: Send + Sync {
    /// Fetches the image into the store (nothing when it is there already).
    fn fetch<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Fetched, String>>;
}

/// One stored tree, as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The store key.
    pub digest: String,
    /// Artifact or OCI root.
    pub kind: TreeKind,
    /// `imageID`.
    pub id: String,
    /// The image strings that name it (as written, and normalised).
    pub references: BTreeSet<String>,
    /// Bytes of the unpacked tree.
    pub size: u64,
    /// How to run it.
    pub config: ImageConfig,
    /// When it was pulled, µs since the epoch.
    pub pulled_us: u64,
    /// When a container last started from it, µs since the epoch.
    pub last_used_us: u64,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// First back-off after a failed pull, µs.
    pub backoff_initial_us: u64,
    /// Longest back-off, µs.
    pub backoff_max_us: u64,
    /// Start collecting above this percentage of the store's file system.
    pub gc_high_percent: u8,
    /// Collect down to this percentage.
    pub gc_low_percent: u8,
    /// Never collect an image pulled more recently than this, µs.
    pub gc_min_age_us: u64,
    /// How often collection looks at the file system.
    pub gc_period: std::time::Duration,
    /// Largest image (unpacked) and download.
    pub image_max_bytes: u64,
    /// Largest store (every image's unpacked size together); `None`: the
    /// file system's size, with collection keeping it in bounds.
    pub store_max_bytes: Option<u64>,
}

impl Default for Config {
    /// The kubelet's defaults: image back-off 10 s to 5 min, GC at 85 %
    /// down to 80 %, images younger than 2 min kept.
    fn default() -> Self {
        Config {
            backoff_initial_us: 10_000_000,
            backoff_max_us: 300_000_000,
            gc_high_percent: 85,
            gc_low_percent: 80,
            gc_min_age_us: 120_000_000,
            gc_period: std::time::Duration::from_secs(300),
            image_max_bytes: Limits::default().max_bytes,
            store_max_bytes: None,
        }
    }
}

/// The image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Pull on every container start.
    Always,
    /// Pull when not stored.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl Policy {
    /// From `imagePullPolicy`, defaulted for `image` as the API server does.
    pub fn of(policy: Option<&str>, image: &ImageRef) -> Policy {
        match policy.unwrap_or(image::default_pull_policy(image)) {
            "Always" => Policy::Always,
            "Never" => Policy::Never,
            _ => Policy::IfNotPresent,
        }
    }
}

/// What a container asking for its image gets now.
#[derive(Debug, Clone)]
pub enum Ensure {
    /// Here it is; `pulled` says how it came (for the `Pulled` event).
    Ready {
        /// The image as the translation needs it.
        image: Arc<Pulled>,
        /// A pull finished for this request: (seconds it took, bytes).
        pulled: Option<(f64, u64)>,
    },
    /// Being pulled; the pod is synced again when it ends.
    Pulling,
    /// Cannot be had now: `ErrImagePull`, `ImagePullBackOff` (until
    /// `retry_at_us`) or `ErrImageNeverPull`.
    Waiting {
        /// Reason and message for the container's status.
        waiting: Waiting,
        /// When a new pull may start (0: never by itself).
        retry_at_us: u64,
    },
}

#[derive(Debug, Clone)]
enum PullState {
    Pulling,
    Done {
        at_us: u64,
        took_s: f64,
        bytes: u64,
        digest: String,
    },
    Failed {
        message: String,
        until_us: u64,
        delay_us: u64,
        /// The first answer after the failure (ErrImagePull) was given;
        /// later ones in the back-off say ImagePullBackOff.
        told: bool,
    },
}

#[derive(Default)]
struct State {
    pulls: HashMap<String, PullState>,
    /// Catalog by store key.
    metas: HashMap<String, Meta>,
    /// The [`Pulled`] of each key, made once (its program index reads the tree).
    pulled: HashMap<String, Arc<Pulled>>,
}

struct Inner {
    store: Store,
    puller: Arc<dyn Puller>,
    cfg: Config,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

/// The image manager; cheap to clone.
#[derive(Clone)]
pub struct Images {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("root", &self.inner.store.root())
            .finish()
    }
}

/// Why the catalog could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    /// A catalog file.
    #[error("image catalog {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn meta_dir(root: &Path) -> PathBuf {
    root.join("meta")
}

/// Reads every catalog entry whose tree exists (a tree removed by hand
/// drops out; an entry left by an interrupted removal too).
pub fn read_catalog(store: &Store) -> Result<Vec<Meta>, CatalogError> {
    let dir = meta_dir(store.root());
    std::fs::create_dir_all(&dir).map_err(|source| CatalogError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|source| CatalogError::Io {
        path: dir.clone(),
        source,
    })?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        match serde_json::from_slice::<Meta>(&bytes) {
            Ok(m) => {
                let exists = Digest::parse(&m.digest).is_some_and(|d| store.get(&d).is_some());
                if exists {
                    out.push(m);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
            Err(err) => {
                warn!(path = %p.display(), error = %err, "unreadable image catalog entry; ignoring it")
            }
        }
    }
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(out)
}

/// Writes one catalog entry atomically.
pub fn write_meta(store: &Store, m: &Meta) -> Result<(), CatalogError> {
    let dir = meta_dir(store.root());
    let hex = m.digest.trim_start_matches("sha256:");
    let path = dir.join(format!("{hex}.json"));
    // One temporary name per write: containers of one image start at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{hex}.json.{}.{seq}.tmp", std::process::id()));
    let io = |source| CatalogError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    std::fs::write(&tmp, serde_json::to_vec_pretty(m).expect("meta serialises")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Removes one catalog entry and its tree.
pub fn remove_image(store: &Store, m: &Meta) -> Result<(), CatalogError> {
    let hex = m.digest.trim_start_matches("sha256:");
    let path = meta_dir(store.root()).join(format!("{hex}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CatalogError::Io { path, source }),
    }
    if let Some(d) = Digest::parse(&m.digest) {
        store.remove(&d)?;
    }
    // The OCI puller's copy of the image config (see `super::oci`).
    let _ = std::fs::remove_file(store.root().join("oci-config").join(format!("{hex}.json")));
    Ok(())
}

/// The names an image string is known by: as written, and (for an OCI
/// reference) normalised, so `busybox` and
/// `docker.io/library/busybox:latest` find one tree.
pub fn reference_names(image: &str) -> Vec<String> {
    let mut out = vec![image.to_string()];
    if let Ok(ImageRef::Oci(r)) = image::parse(image) {
        let n = r.to_string();
        if n != image {
            out.push(n);
        }
    }
    out
}

/// The programs on an OCI root's search path (see [`Pulled::programs`]):
/// the entries of the `PATH` directories, never following a symlink out
/// of the root (names only; a link's target is resolved inside the root
/// when it runs).
fn programs(root: &Path, config: &ImageConfig) -> BTreeSet<String> {
    let path = config
        .env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::core::image_run::DEFAULT_PATH);
    let dirs: BTreeSet<&str> = path
        .split(':')
        .chain(crate::core::image_run::DEFAULT_PATH.split(':'))
        .filter(|d| d.starts_with('/') && !d.contains(".."))
        .collect();
    let mut out = BTreeSet::new();
    for d in dirs {
        // A directory that is a symlink (`/bin -> usr/bin`) is read
        // through its target inside the root, one level deep.
        let mut host = root.join(d.trim_start_matches('/'));
        if let Ok(t) = std::fs::read_link(&host) {
            let t = t.to_string_lossy().to_string();
            if t.contains("..") {
                continue;
            }
            host = if t.starts_with('/') {
                root.join(t.trim_start_matches('/'))
            } else {
                host.parent().unwrap_or(root).join(t)
            };
        }
        if let Ok(rd) = std::fs::read_dir(&host) {
            for e in rd.flatten() {
                if let Some(n) = e.file_name().to_str() {
                    out.insert(format!("{}/{n}", d.trim_end_matches('/')));
                }
            }
        }
    }
    out
}

impl Images {
    /// The manager over `store`, with the catalog read from it (the
    /// store's `tmp` is left alone: another process may be pulling).
    pub fn new(store: Store, puller: Arc<dyn Puller>, cfg: Config) -> Result<Images, CatalogError> {
        let metas = read_catalog(&store)?
            .into_iter()
            .map(|m| (m.digest.clone(), m))
            .collect();
        Ok(Images {
            inner: Arc::new(Inner {
                store,
                puller,
                cfg,
                state: Mutex::new(State {
                    metas,
                    ..Default::default()
                }),
                changes: watch::channel(0).0,
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Bumped whenever a pull ends.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The catalog now.
    pub fn list(&self) -> Vec<Meta> {
        let st = self.inner.state.lock().unwrap();
        let mut v: Vec<Meta> = st.metas.values().cloned().collect();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        v
    }

    fn stored(st: &State, image: &str) -> Option<String> {
        let names = reference_names(image);
        st.metas
            .values()
            .filter(|m| names.iter().any(|n| m.references.contains(n)))
            .max_by_key(|m| m.pulled_us)
            .map(|m| m.digest.clone())
    }

    fn pulled(&self, st: &mut State, key: &str) -> Option<Arc<Pulled>> {
        if let Some(p) = st.pulled.get(key) {
            return Some(Arc::clone(p));
        }
        let m = st.metas.get(key)?;
        let root = self.inner.store.get(&Digest::parse(&m.digest)?)?;
        let progs = match m.kind {
            TreeKind::Oci => programs(&root, &m.config),
            TreeKind::Artifact => BTreeSet::new(),
        };
        let p = Arc::new(Pulled {
            kind: m.kind,
            root: root.to_string_lossy().into_owned(),
            id: m.id.clone(),
            config: m.config.clone(),
            programs: Arc::new(progs),
            host_files: Arc::new(match m.kind {
                TreeKind::Oci => crate::core::image::HOST_FILES
                    .iter()
                    .filter(|f| {
                        std::fs::symlink_metadata(root.join(f.trim_start_matches('/')))
                            .is_ok_and(|md| md.is_file())
                    })
                    .map(|f| f.to_string())
                    .collect(),
                TreeKind::Artifact => BTreeSet::new(),
            }),
        });
        st.pulled.insert(key.to_string(), Arc::clone(&p));
        Some(p)
    }

    /// What a container that needs `image` (parsed as `r`) under `policy`
    /// gets now. `since_us`: when the container began waiting for this
    /// start — under `Always`, only a pull that ended after it will do.
    pub fn ensure(
        &self,
        image: &str,
        r: &ImageRef,
        policy: Policy,
        since_us: u64,
        now_us: u64,
        creds: &Credentials,
    ) -> Ensure {
        let mut st = self.inner.state.lock().unwrap();
        let mut stored = Self::stored(&st, image);
        if stored.is_none() {
            // `unitlet pull` (another process) may have stored it since.
            if let Ok(metas) = read_catalog(&self.inner.store) {
                for m in metas {
                    st.metas.entry(m.digest.clone()).or_insert(m);
                }
                stored = Self::stored(&st, image);
            }
        }
        // A pinned artifact is its digest: stored means current, whatever the policy.
        let pinned_artifact = matches!(r, ImageRef::Artifact(a) if a.digest.is_some());
        let fresh = match st.pulls.get(image) {
            Some(PullState::Done {
                at_us,
                took_s,
                bytes,
                digest,
            }) if *at_us >= since_us => Some((digest.clone(), *took_s, *bytes)),
            _ => None,
        };
        let ready = |me: &Self, st: &mut State, key: &str, pulled| {
            me.pulled(st, key)
                .map(|image| Ensure::Ready { image, pulled })
        };
        if let Some((key, took, bytes)) = &fresh {
            if let Some(e) = ready(self, &mut st, key, Some((*took, *bytes))) {
                return e;
            }
        }
        if let Some(key) = &stored {
            if policy != Policy::Always || pinned_artifact {
                if let Some(e) = ready(self, &mut st, key, None) {
                    return e;
                }
            }
        }
        if policy == Policy::Never {
            return Ensure::Waiting {
                waiting: Waiting {
                    reason: WaitReason::ErrImageNeverPull,
                    message: format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    ),
                },
                retry_at_us: 0,
            };
        }
        match st.pulls.get_mut(image) {
            Some(PullState::Pulling) => return Ensure::Pulling,
            Some(PullState::Failed {
                message,
                until_us,
                told,
                ..
            }) if now_us < *until_us => {
                // ErrImagePull first; the next look (soon, as the
                // kubelet's next sync) finds the back-off.
                let (reason, message, at) = if !*told {
                    *told = true;
                    let soon = now_us + (until_us.saturating_sub(now_us) / 2).min(1_000_000);
                    (WaitReason::ErrImagePull, message.clone(), soon)
                } else {
                    (
                        WaitReason::ImagePullBackOff,
                        format!("Back-off pulling image {image:?}: ErrImagePull: {message}"),
                        *until_us,
                    )
                };
                return Ensure::Waiting {
                    waiting: Waiting { reason, message },
                    retry_at_us: at,
                };
            }
            _ => {}
        }
        let prev_delay = match st.pulls.get(image) {
            Some(PullState::Failed { delay_us, .. }) => Some(*delay_us),
            _ => None,
        };
        st.pulls.insert(image.to_string(), PullState::Pulling);
        drop(st);
        self.spawn_pull(image.to_string(), r.clone(), creds.clone(), prev_delay);
        Ensure::Pulling
    }

    fn spawn_pull(&self, image: String, r: ImageRef, creds: Credentials, prev_delay: Option<u64>) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.run_pull(image, r, creds, prev_delay, None).await;
            me.inner.changes.send_modify(|n| *n += 1);
        });
    }

    /// Pulls `image` now (what `unitlet pull` does; the runtime's pulls go
    /// through [`Images::ensure`]), recording the outcome for `ensure`.
    pub async fn pull_now(
        &self,
        image: &str,
        creds: &Credentials,
        progress: Option<&Progress<'_>>,
    ) -> Result<Meta, String> {
        let r = image::parse(image).map_err(|e| e.to_string())?;
        if r == ImageRef::Host {
            return Err(
                "image: host names this machine's own programs; there is nothing to pull".into(),
            );
        }
        self.inner
            .state
            .lock()
            .unwrap()
            .pulls
            .insert(image.to_string(), PullState::Pulling);
        let out = self
            .run_pull(image.to_string(), r, creds.clone(), None, progress)
            .await;
        self.inner.changes.send_modify(|n| *n += 1);
        out
    }

    async fn run_pull(
        &self,
        image: String,
        r: ImageRef,
        creds: Credentials,
        prev_delay: Option<u64>,
        progress: Option<&Progress<'_>>,
    ) -> Result<Meta, String> {
        let me = self;
        let started = std::time::Instant::now();
        info!(image, "pulling image");
        let result = match self.limits() {
            Ok(limits) => {
                let req = Request {
                    image: &r,
                    creds: &creds,
                    store: &me.inner.store,
                    limits,
                    progress,
                };
                me.inner.puller.fetch(req).await
            }
            Err(e) => Err(e),
        };
        let took_s = started.elapsed().as_secs_f64();
        let now = crate::clock::now_us();
        let mut st = me.inner.state.lock().unwrap();
        match result {
            Ok(f) => {
                let key = f.digest.to_string();
                let mut m = st.metas.get(&key).cloned().unwrap_or(Meta {
                    digest: key.clone(),
                    kind: f.kind,
                    id: f.id.clone(),
                    references: BTreeSet::new(),
                    size: f.size,
                    config: f.config.clone(),
                    pulled_us: now,
                    last_used_us: 0,
                });
                let names = reference_names(&image);
                m.references.extend(names.iter().cloned());
                m.pulled_us = now;
                // A moved tag: the old tree no longer answers to it.
                let mut stale = Vec::new();
                for (k, other) in st.metas.iter_mut() {
                    let mut changed = false;
                    for n in &names {
                        changed |= *k != key && other.references.remove(n);
                    }
                    if changed {
                        stale.push(other.clone());
                    }
                }
                for o in &stale {
                    if let Err(e) = write_meta(&me.inner.store, o) {
                        warn!(error = %e, "cannot update the image catalog");
                    }
                }
                if let Err(e) = write_meta(&me.inner.store, &m) {
                    warn!(error = %e, "cannot update the image catalog");
                }
                info!(
                    image,
                    digest = key,
                    bytes = f.fetched_bytes,
                    took_ms = (took_s * 1000.0) as u64,
                    "pulled image"
                );
                st.metas.insert(key.clone(), m.clone());
                st.pulls.insert(
                    image,
                    PullState::Done {
                        at_us: now,
                        took_s,
                        bytes: f.size,
                        digest: key,
                    },
                );
                Ok(m)
            }
            Err(message) => {
                let delay_us = match prev_delay {
                    None => me.inner.cfg.backoff_initial_us,
                    Some(d) => (d * 2).min(me.inner.cfg.backoff_max_us),
                };
                warn!(
                    image,
                    error = message,
                    delay_s = delay_us / 1_000_000,
                    "image pull failed"
                );
                st.pulls.insert(
                    image,
                    PullState::Failed {
                        message: message.clone(),
                        until_us: now + delay_us,
                        delay_us,
                        told: false,
                    },
                );
                Err(message)
            }
        }
    }

    /// What one pull may bring: the per-image limit, within what the store
    /// has left under `store_max_bytes`.
    fn limits(&self) -> Result<Limits, String> {
        let cfg = &self.inner.cfg;
        let mut max = cfg.image_max_bytes;
        if let Some(cap) = cfg.store_max_bytes {
            let used: u64 = self.list().iter().map(|m| m.size).sum();
            let left = cap.saturating_sub(used);
            if left == 0 {
                return Err(format!("the image store is full ({used} bytes of the {cap} allowed): remove images (unitlet rmi) or raise --image-store-max-bytes"));
            }
            max = max.min(left);
        }
        Ok(Limits {
            max_bytes: max,
            ..Limits::default()
        })
    }

    /// Removes the image `image` names, unless `in_use` holds its key.
    pub fn remove(&self, image: &str, in_use: &HashSet<String>) -> Result<Meta, String> {
        let mut st = self.inner.state.lock().unwrap();
        let key = Self::stored(&st, image)
            .or_else(|| st.metas.contains_key(image).then(|| image.to_string()))
            .ok_or_else(|| format!("no stored image is named {image:?} (see unitlet images)"))?;
        if in_use.contains(&key) {
            return Err(format!(
                "image {image:?} ({key}) is used by a pod on this node; delete the pod first"
            ));
        }
        let m = st.metas.remove(&key).expect("found above");
        st.pulled.remove(&key);
        drop(st);
        remove_image(&self.inner.store, &m).map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// Notes that a container started from `image` now (for LRU collection).
    pub fn used(&self, image: &str, now_us: u64) {
        let mut st = self.inner.state.lock().unwrap();
        let Some(key) = Self::stored(&st, image) else {
            return;
        };
        if let Some(m) = st.metas.get_mut(&key) {
            m.last_used_us = now_us;
            let m = m.clone();
            drop(st);
            if let Err(e) = write_meta(&self.inner.store, &m) {
                warn!(error = %e, "cannot update the image catalog");
            }
        }
    }

    /// The store keys the given image strings name.
    pub fn keys_of<'a>(&self, images: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
        let st = self.inner.state.lock().unwrap();
        images
            .into_iter()
            .filter_map(|i| Self::stored(&st, i))
            .collect()
    }

    /// Collects images as the kubelet does: when the store's file system is
    /// above the high threshold, removes the least recently used images not
    /// in `in_use` and older than the minimum age, until below the low one.
    /// `usage` gives (used, total) bytes of the file system. Returns what
    /// was removed.
    pub fn collect(
        &self,
        in_use: &HashSet<String>,
        now_us: u64,
        usage: &dyn Fn() -> Option<(u64, u64)>,
    ) -> Vec<Meta> {
        let cfg = &self.inner.cfg;
        let Some((used, total)) = usage() else {
            return Vec::new();
        };
        if total == 0 || used * 100 <= u64::from(cfg.gc_high_percent) * total {
            return Vec::new();
        }
        let target = u64::from(cfg.gc_low_percent) * total / 100;
        let mut need = used.saturating_sub(target);
        let mut candidates: Vec<Meta> = {
            let st = self.inner.state.lock().unwrap();
            st.metas
                .values()
                .filter(|m| !in_use.contains(&m.digest))
                .filter(|m| now_us.saturating_sub(m.pulled_us) >= cfg.gc_min_age_us)
                .cloned()
                .collect()
        };
        candidates.sort_by_key(|m| (m.last_used_us.max(m.pulled_us), m.digest.clone()));
        let mut removed = Vec::new();
        for m in candidates {
            if need == 0 {
                break;
            }
            match remove_image(&self.inner.store, &m) {
                Ok(()) => {
                    info!(digest = m.digest, size = m.size, "removed unused image");
                    let mut st = self.inner.state.lock().unwrap();
                    st.metas.remove(&m.digest);
                    st.pulled.remove(&m.digest);
                    st.pulls.retain(
                        |_, p| !matches!(p, PullState::Done { digest, .. } if *digest == m.digest),
                    );
                    need = need.saturating_sub(m.size);
                    removed.push(m);
                }
                Err(e) => warn!(digest = m.digest, error = %e, "cannot remove image"),
            }
        }
        removed
    }
}

/// (used, total) bytes of the file system holding `path`.
pub fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size();
    let total = s.blocks() * frag;
    let free = s.blocks_available() * frag;
    Some((total.saturating_sub(free), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores a 10-byte tree for whatever it is asked, and says what
    /// limit it was given.
    struct TenBytes(Mutex<Vec<u64>>);

    impl Puller for TenBytes {
        fn fetch<'a>(&'a self, req: Request<'a>) -> BoxFuture<'a, Result<Fetched, String>> {
            Box::pin(async move {
                self.0.lock().unwrap().push(req.limits.max_bytes);
                if req.limits.max_bytes < 10 {
                    return Err("the archive is larger than allowed".into());
                }
                let name = match req.image {
                    ImageRef::Artifact(a) => a.url.clone(),
                    other => format!("{other:?}"),
                };
                use sha2::Digest as _;
                let hex = format!("{:x}", sha2::Sha256::digest(name.as_bytes()));
                let digest = Digest::parse(&format!("sha256:{hex}")).unwrap();
                let staging = req.store.staging().map_err(|e| e.to_string())?;
                std::fs::write(staging.tree().join("f"), b"0123456789").unwrap();
                req.store
                    .commit(staging, &digest)
                    .map_err(|e| e.to_string())?;
                Ok(Fetched {
                    id: format!("{name}@{digest}"),
                    digest,
                    kind: TreeKind::Artifact,
                    config: ImageConfig::default(),
                    fetched_bytes: 10,
                    size: 10,
                })
            })
        }
    }

    fn images(dir: &Path, cfg: Config) -> (Images, Arc<TenBytes>) {
        let p = Arc::new(TenBytes(Mutex::default()));
        let store = Store::open(dir).unwrap();
        (Images::new(store, p.clone(), cfg).unwrap(), p)
    }

    #[tokio::test]
    async fn the_store_limit_bounds_each_pull_and_refuses_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            image_max_bytes: 100,
            store_max_bytes: Some(16),
            ..Config::default()
        };
        let (im, p) = images(dir.path(), cfg.clone());
        let a = im
            .pull_now("https://h/a.tar", &Credentials::default(), None)
            .await
            .unwrap();
        assert_eq!(a.size, 10);
        // What the store has left, not the per-image limit.
        let err = im
            .pull_now("https://h/b.tar", &Credentials::default(), None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("larger than allowed"), "{err}");
        assert_eq!(*p.0.lock().unwrap(), [16, 6]);
        let dir2 = tempfile::tempdir().unwrap();
        let (full, _) = images(
            dir2.path(),
            Config {
                store_max_bytes: Some(10),
                ..cfg.clone()
            },
        );
        full.pull_now("https://h/a.tar", &Credentials::default(), None)
            .await
            .unwrap();
        let err = full
            .pull_now("https://h/b.tar", &Credentials::default(), None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("the image store is full"), "{err}");
        // The catalog survives a restart of the manager.
        let (again, _) = images(dir.path(), cfg);
        let names: Vec<String> = again
            .list()
            .into_iter()
            .flat_map(|m| m.references)
            .collect();
        assert_eq!(names, ["https://h/a.tar"]);
    }

    #[tokio::test]
    async fn collection_removes_the_least_recently_used_unused_old_images() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            gc_min_age_us: 0,
            ..Config::default()
        };
        let (im, _) = images(dir.path(), cfg);
        for n in ["a", "b", "c"] {
            im.pull_now(&format!("https://h/{n}.tar"), &Credentials::default(), None)
                .await
                .unwrap();
        }
        let now = crate::clock::now_us();
        im.used("https://h/a.tar", now);
        im.used("https://h/b.tar", now + 1);
        let in_use = im.keys_of(["https://h/b.tar"]);
        // Below the high threshold: nothing.
        assert!(im.collect(&in_use, now, &|| Some((80, 100))).is_empty());
        // 90 % used, down to 80 %: 10 bytes to free; c (never used) goes
        // first, and that is enough.
        let gone = im.collect(&in_use, now + 10, &|| Some((90, 100)));
        assert_eq!(gone.len(), 1);
        assert!(gone[0].references.contains("https://h/c.tar"));
        // Far above: every unused one, never the one in use.
        let gone = im.collect(&in_use, now + 10, &|| Some((100, 100)));
        assert_eq!(gone.len(), 1);
        assert!(gone[0].references.contains("https://h/a.tar"));
        let left: Vec<String> = im.list().into_iter().flat_map(|m| m.references).collect();
        assert_eq!(left, ["https://h/b.tar"]);
        assert!(!dir
            .path()
            .join("sha256")
            .join(gone[0].digest.trim_start_matches("sha256:"))
            .exists());
    }
}
