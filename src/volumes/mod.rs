//! The agent's side of pod volumes: preparing each volume's directory
//! before a pod's containers start, keeping ConfigMap/Secret/downward API/
//! projected files up to date while it runs, pinning `subPath`s, and
//! tearing it all down with the pod.
//!
//! As the kubelet's volume manager: a pod's containers start only once
//! every volume is ready (until then they wait in `ContainerCreating` and
//! the pod gets `FailedMount` events); later failures to refresh files
//! leave the running containers alone. Every step is idempotent, so a
//! restarted agent simply prepares again what already exists.

pub mod fs;

use crate::core::envref::{
    Lookup, ObjectRef, RefKind, Resolved, CLAIM_PHASE, CLAIM_VOLUME, PV_HOST_PATH_TYPE, PV_PATH,
    PV_SOURCE,
};
use crate::core::volume::{
    payload, pod_dir, Mount, PayloadError, PodVolume, TokenRef, VolumeKind, SUBPATHS_DIR,
    VOLUMES_DIR,
};
use crate::core::NodeFacts;
use crate::objects::{IssuedToken, ObjectSource, TokenFor};
use k8s_openapi::api::core::v1::Pod;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::{debug, info, warn};

/// What the agent knows it has done for one pod's volumes.
#[derive(Default)]
struct PodState {
    /// Volumes whose directory is made (mounted, checked, bound).
    prepared: HashSet<String>,
    /// Digest of the files last written to each payload volume.
    written: HashMap<String, [u8; 32]>,
}

/// One service account token of one pod.
#[derive(Default)]
struct TokenSlot {
    token: Option<IssuedToken>,
    issued_unix: i64,
    in_flight: bool,
    error: Option<String>,
}

/// The pods' volumes.
pub struct Volumes {
    objects: Option<Arc<dyn ObjectSource>>,
    images: Option<crate::images::manager::Images>,
    allowed_host_paths: Vec<String>,
    pods: Mutex<HashMap<String, PodState>>,
    tokens: Arc<Mutex<HashMap<(String, TokenRef), TokenSlot>>>,
    changes: tokio::sync::watch::Sender<u64>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a token issued at `issued` and expiring at `expires` is due for
/// renewal at `now`: past 80% of its lifetime or older than a day, as the
/// kubelet's token manager renews.
pub fn token_due(issued: i64, expires: i64, now: i64) -> bool {
    let ttl = (expires - issued).max(0);
    now >= issued + ttl * 8 / 10 || now >= issued + 24 * 3600
}

/// Whether `path` is allowed by the allow-list of host path prefixes
/// (whole components: `/srv` allows `/srv/x`, not `/srv2`). Empty: all.
pub fn host_path_allowed(allowed: &[String], path: &str) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|p| {
            let p = p.trim_end_matches('/');
            p.is_empty() || path == p || path.starts_with(&format!("{p}/"))
        })
}

/// The pod's `fsGroup` and whether ownership is changed only when the
/// volume's root does not match (`fsGroupChangePolicy: OnRootMismatch`).
fn fs_group(pod: &Pod) -> Option<(u32, fs::ChangePolicy)> {
    let sc = pod.spec.as_ref()?.security_context.as_ref()?;
    let gid = u32::try_from(sc.fs_group?).ok()?;
    let policy = match sc.fs_group_change_policy.as_deref() {
        Some("OnRootMismatch") => fs::ChangePolicy::OnRootMismatch,
        _ => fs::ChangePolicy::Always,
    };
    Some((gid, policy))
}

impl Volumes {
    /// A volume manager looking objects up in `objects`, allowing hostPath
    /// volumes (and hostPath/local PersistentVolumes) only below
    /// `allowed_host_paths` (empty: anywhere, as the kubelet).
    pub fn new(
        objects: Option<Arc<dyn ObjectSource>>,
        allowed_host_paths: Vec<String>,
        images: Option<crate::images::manager::Images>,
    ) -> Self {
        Volumes {
            objects,
            images,
            allowed_host_paths,
            pods: Mutex::default(),
            tokens: Arc::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }

    /// Bumped when a service account token arrives, so the pods waiting
    /// for it are synced again.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn lookup(&self, ns: &str, r: &ObjectRef) -> Lookup {
        match &self.objects {
            Some(o) => o.lookup(ns, r),
            None => Lookup::Failed(format!(
                "{} {:?}: this node has no source of API objects",
                r.kind.word(),
                r.name
            )),
        }
    }

    /// Makes every volume of `pod` ready and brings payload files up to
    /// date. `Err` is the first volume that is not ready, with the
    /// kubelet's `FailedMount` message (or `Pending` while an object or
    /// token is on its way); the others are still done.
    pub fn sync(
        &self,
        pod: &Pod,
        volumes: &[PodVolume],
        node: &NodeFacts,
    ) -> Result<(), PayloadError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut first_err = None;
        for v in volumes {
            if let Err(e) = self.sync_one(&uid, pod, v, node) {
                if let PayloadError::Failed(m) = &e {
                    debug!(uid, volume = v.name, error = m, "volume not ready");
                }
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn sync_one(
        &self,
        uid: &str,
        pod: &Pod,
        v: &PodVolume,
        node: &NodeFacts,
    ) -> Result<(), PayloadError> {
        let failed = |m: String| PayloadError::Failed(m);
        let prepared = self
            .pods
            .lock()
            .unwrap()
            .get(uid)
            .is_some_and(|p| p.prepared.contains(&v.name));
        let dir = Path::new(&v.dir);
        let group = fs_group(pod);
        let mount_err = |e: String| {
            failed(format!(
                "MountVolume.SetUp failed for volume {:?} : {e}",
                v.name
            ))
        };
        if !prepared {
            match &v.kind {
                VolumeKind::EmptyDir { memory, size_limit } => {
                    if *memory {
                        fs::mount_tmpfs(dir, *size_limit, 0o777)
                            .map_err(|e| mount_err(e.to_string()))?;
                    } else {
                        make_dir(dir, 0o777).map_err(mount_err)?;
                    }
                    if let Some((gid, policy)) = group {
                        fs::set_volume_ownership(dir, gid, false, policy)
                            .map_err(|e| mount_err(e.to_string()))?;
                    }
                }
                VolumeKind::HostPath { type_ } => {
                    if !host_path_allowed(&self.allowed_host_paths, &v.dir) {
                        return Err(mount_err(format!(
                            "hostPath {} is outside the host paths this node allows (--allowed-host-paths {})",
                            v.dir,
                            self.allowed_host_paths.join(",")
                        )));
                    }
                    let t = fs::HostPathType::parse(type_.as_deref())
                        .ok_or_else(|| mount_err(format!("unknown hostPath type {type_:?}")))?;
                    fs::check_host_path(dir, t).map_err(mount_err)?;
                }
                VolumeKind::Payload { tmpfs } => {
                    if *tmpfs {
                        // Secrets, tokens and downward API files stay off disk.
                        fs::mount_tmpfs(dir, None, 0o755).map_err(|e| mount_err(e.to_string()))?;
                    } else {
                        make_dir(dir, 0o755).map_err(mount_err)?;
                    }
                }
                VolumeKind::Image {
                    reference,
                    pull_policy,
                } => {
                    let tree = self.image_tree(pod, reference, pull_policy.as_deref())?;
                    fs::bind_read_only(Path::new(&tree), dir)
                        .map_err(|e| mount_err(e.to_string()))?;
                }
                VolumeKind::Claim { claim, read_only } => {
                    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                    let path = self.claim_path(ns, claim)?;
                    fs::bind(Path::new(&path), dir).map_err(|e| mount_err(e.to_string()))?;
                    if let Some((gid, policy)) = group {
                        fs::set_volume_ownership(dir, gid, *read_only, policy)
                            .map_err(|e| mount_err(e.to_string()))?;
                    }
                }
            }
            self.pods
                .lock()
                .unwrap()
                .entry(uid.to_string())
                .or_default()
                .prepared
                .insert(v.name.clone());
        }
        if matches!(v.kind, VolumeKind::Payload { .. }) {
            self.write_payload(uid, pod, v, node, group)?;
        }
        Ok(())
    }

    /// The tree of an image volume's image, pulled as a container's image
    /// is (one pull per image, the pod's `imagePullSecrets`, back-off);
    /// `Pending` while it is pulled (the pod is synced again when the pull
    /// ends), `Failed` with the pull's error.
    fn image_tree(
        &self,
        pod: &Pod,
        reference: &str,
        policy: Option<&str>,
    ) -> Result<String, PayloadError> {
        use crate::images::manager::{Ensure, Policy};
        let Some(images) = &self.images else {
            return Err(PayloadError::Failed(format!(
                "image volume {reference:?}: this agent runs without an image store"
            )));
        };
        let r = crate::core::image::parse(reference)
            .map_err(|e| PayloadError::Failed(e.to_string()))?;
        let creds = crate::images::puller::pod_credentials(self.objects.as_deref(), pod);
        // Pulled once for the pod (`Always` too: the volume is not made again).
        match images.ensure(
            reference,
            &r,
            Policy::of(policy, &r),
            0,
            crate::clock::now_us(),
            &creds,
        ) {
            Ensure::Ready { image, .. } => Ok(image.root.clone()),
            Ensure::Pulling => Err(PayloadError::Pending),
            Ensure::Waiting { waiting, .. } => Err(PayloadError::Failed(format!(
                "failed to pull image {reference:?}: {}: {}",
                waiting.reason, waiting.message
            ))),
        }
    }

    /// The host path of the `local` or `hostPath` PersistentVolume bound to `claim`.
    fn claim_path(&self, ns: &str, claim: &str) -> Result<String, PayloadError> {
        let failed = |m: String| Err(PayloadError::Failed(m));
        let pvc = ObjectRef {
            kind: RefKind::PersistentVolumeClaim,
            name: claim.to_string(),
        };
        let data = match self.lookup(ns, &pvc) {
            Lookup::Found(d) => d,
            Lookup::Pending => return Err(PayloadError::Pending),
            Lookup::NotFound => {
                return failed(format!("persistentvolumeclaim {claim:?} not found"))
            }
            Lookup::Failed(m) => return failed(m),
        };
        let text = |k: &str| {
            data.data
                .get(k)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let (Some(pv), Some("Bound")) = (text(CLAIM_VOLUME), text(CLAIM_PHASE).as_deref()) else {
            return failed(format!(
                "error processing PVC {ns}/{claim}: PVC is not bound"
            ));
        };
        let pv_ref = ObjectRef {
            kind: RefKind::PersistentVolume,
            name: pv.clone(),
        };
        let pv_data = match self.lookup("", &pv_ref) {
            Lookup::Found(d) => d,
            Lookup::Pending => return Err(PayloadError::Pending),
            Lookup::NotFound => {
                return failed(format!(
                    "persistentvolume {pv:?} (bound to claim {ns}/{claim}) not found"
                ))
            }
            Lookup::Failed(m) => return failed(m),
        };
        let get = |k: &str| {
            pv_data
                .data
                .get(k)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let (Some(source), Some(path)) = (get(PV_SOURCE), get(PV_PATH)) else {
            return failed(format!("PersistentVolume {pv} is neither a local nor a hostPath volume; unitlet mounts only those (no storage plugins)"));
        };
        if !host_path_allowed(&self.allowed_host_paths, &path) {
            return failed(format!(
                "PersistentVolume {pv}: {path} is outside the host paths this node allows (--allowed-host-paths {})",
                self.allowed_host_paths.join(",")
            ));
        }
        if source == "hostPath" {
            let t =
                fs::HostPathType::parse(get(PV_HOST_PATH_TYPE).as_deref()).ok_or_else(|| {
                    PayloadError::Failed(format!("PersistentVolume {pv}: unknown hostPath type"))
                })?;
            fs::check_host_path(Path::new(&path), t)
                .map_err(|e| PayloadError::Failed(format!("PersistentVolume {pv}: {e}")))?;
        } else if !Path::new(&path).is_dir() {
            return failed(format!(
                "PersistentVolume {pv}: local path {path} does not exist or is not a directory"
            ));
        }
        Ok(path)
    }

    /// Computes a payload volume's files and writes them if they changed.
    fn write_payload(
        &self,
        uid: &str,
        pod: &Pod,
        v: &PodVolume,
        node: &NodeFacts,
        group: Option<(u32, fs::ChangePolicy)>,
    ) -> Result<(), PayloadError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let resolved = Resolved(
            payload::references(&v.source)
                .into_iter()
                .map(|r| {
                    let l = self.lookup(ns, &r);
                    (r, l)
                })
                .collect(),
        );
        let mut tokens = BTreeMap::new();
        for t in payload::token_refs(&v.source) {
            if let Some(tok) = self.token(uid, pod, &t)? {
                tokens.insert(t, tok);
            }
        }
        let files = payload::payload(pod, node, &v.source, &resolved, &tokens)?;
        let mut h = Sha256::new();
        for (path, f) in &files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(f.mode.to_le_bytes());
            h.update((f.data.len() as u64).to_le_bytes());
            h.update(&f.data);
        }
        let digest: [u8; 32] = h.finalize().into();
        let same = self
            .pods
            .lock()
            .unwrap()
            .get(uid)
            .and_then(|p| p.written.get(&v.name))
            == Some(&digest);
        if same {
            return Ok(());
        }
        let set_perms = |d: &Path| match group {
            Some((gid, _)) => fs::set_volume_ownership(d, gid, true, fs::ChangePolicy::Always)
                .map_err(|e| std::io::Error::other(e.to_string())),
            None => Ok(()),
        };
        let changed = fs::write_atomic(Path::new(&v.dir), &files, &set_perms).map_err(|e| {
            PayloadError::Failed(format!(
                "MountVolume.SetUp failed for volume {:?} : {e}",
                v.name
            ))
        })?;
        if changed {
            info!(
                uid,
                volume = v.name,
                files = files.len(),
                "volume files written"
            );
        }
        self.pods
            .lock()
            .unwrap()
            .entry(uid.to_string())
            .or_default()
            .written
            .insert(v.name.clone(), digest);
        Ok(())
    }

    /// The pod's token for `t`, asking for one (or a renewal) when due.
    /// `Ok(None)` never happens with a token in hand; `Err(Pending)` while
    /// the first one is on its way.
    fn token(&self, uid: &str, pod: &Pod, t: &TokenRef) -> Result<Option<String>, PayloadError> {
        let key = (uid.to_string(), t.clone());
        let now = now_unix();
        let mut tokens = self.tokens.lock().unwrap();
        let slot = tokens.entry(key.clone()).or_default();
        let due = slot
            .token
            .as_ref()
            .is_none_or(|tok| token_due(slot.issued_unix, tok.expires_unix, now));
        if due && !slot.in_flight {
            if let Some(objects) = &self.objects {
                slot.in_flight = true;
                let for_pod = TokenFor {
                    namespace: pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    service_account: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "default".into()),
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    pod_uid: uid.to_string(),
                };
                let fut = objects.request_token(for_pod, t.clone());
                let (tokens, changes) = (Arc::clone(&self.tokens), self.changes.clone());
                tokio::spawn(async move {
                    let got = fut.await;
                    let mut all = tokens.lock().unwrap();
                    // The pod may be gone meanwhile: then the slot is too.
                    if let Some(slot) = all.get_mut(&key) {
                        slot.in_flight = false;
                        match got {
                            Ok(tok) => {
                                slot.issued_unix = now_unix();
                                slot.token = Some(tok);
                                slot.error = None;
                            }
                            Err(e) => {
                                warn!(uid = key.0, error = e, "cannot get a service account token");
                                slot.error = Some(e);
                            }
                        }
                    }
                    drop(all);
                    changes.send_modify(|n| *n += 1);
                });
            } else {
                slot.error = Some("service account tokens need an API server".into());
            }
        }
        match (&slot.token, &slot.error) {
            (Some(tok), _) => Ok(Some(tok.token.clone())),
            (None, Some(e)) => Err(PayloadError::Failed(e.clone())),
            (None, None) => Err(PayloadError::Pending),
        }
    }

    /// Pins the `subPath`s of a container's mounts (idempotent: a pin made
    /// for an earlier instance is reused, as the kubelet does). `Err` is the
    /// container's `CreateContainerConfigError` message.
    pub fn pin(&self, container: &str, mounts: &[Mount]) -> Result<(), String> {
        for m in mounts {
            let Some(sp) = &m.sub_path else { continue };
            fs::bind_subpath(Path::new(&sp.volume_dir), &sp.path, Path::new(&m.source)).map_err(
                |e| {
                    format!(
                        "failed to prepare subPath for volumeMount {:?} of container {container:?}: {e}",
                        m.volume
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Unmounts and removes everything the pod's volumes left under its
    /// directory (never anything behind a mount: hostPath and persistent
    /// volume data stay), and forgets the pod.
    pub fn teardown(&self, pods_dir: &str, uid: &str) -> Result<(), String> {
        let base = pod_dir(pods_dir, uid);
        for sub in [SUBPATHS_DIR, VOLUMES_DIR] {
            let d = format!("{base}/{sub}");
            fs::teardown(Path::new(&d)).map_err(|e| e.to_string())?;
        }
        self.pods.lock().unwrap().remove(uid);
        self.tokens.lock().unwrap().retain(|(u, _), _| u != uid);
        Ok(())
    }
}

/// Creates a volume directory with exactly `mode` (umask aside), parents too.
fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_renew_at_eighty_percent_or_a_day() {
        assert!(!token_due(1000, 1000 + 3600, 1000 + 2879));
        assert!(token_due(1000, 1000 + 3600, 1000 + 2880));
        let week = 7 * 24 * 3600;
        assert!(!token_due(0, week, 24 * 3600 - 1));
        assert!(token_due(0, week, 24 * 3600));
        // Already expired (or clock skew): renew now.
        assert!(token_due(1000, 900, 1000));
    }

    #[test]
    fn host_path_allow_list_matches_whole_components() {
        let allowed = vec!["/srv".to_string(), "/dev/disk/".to_string()];
        assert!(host_path_allowed(&allowed, "/srv"));
        assert!(host_path_allowed(&allowed, "/srv/data"));
        assert!(!host_path_allowed(&allowed, "/srv2"));
        assert!(!host_path_allowed(&allowed, "/etc"));
        assert!(host_path_allowed(&allowed, "/dev/disk/by-id/x"));
        assert!(host_path_allowed(&[], "/anything"));
    }
}
