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

use super::unit::Property;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};

/// Under a pod's directory: one directory per volume plugin, one per
/// volume below it (the kubelet's layout).
pub const VOLUMES_DIR: &str = "volumes";
/// Under a pod's directory: the bind mounts that pin `subPath`s
/// (`volume-subpaths/<volume>/<container>/<mount index>`, the kubelet's layout).
pub const SUBPATHS_DIR: &str = "volume-subpaths";

/// What the agent does to make a volume's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// An empty directory made with the pod and removed with it; `memory`
    /// makes it a tmpfs of at most `size_limit` bytes.
    EmptyDir {
        /// `medium: Memory`.
        memory: bool,
        /// `sizeLimit` in bytes.
        size_limit: Option<u64>,
    },
    /// A path of the host, used in place; `type` is checked (and
    /// `…OrCreate` created) before the pod's containers start.
    HostPath {
        /// `type`, as written (`None` or empty: no check).
        type_: Option<String>,
    },
    /// ConfigMap, Secret, downward API or projected files, written with
    /// the atomic writer and kept up to date; `tmpfs` keeps them off disk
    /// (everything but ConfigMaps, as in the kubelet).
    Payload {
        /// On a tmpfs of its own.
        tmpfs: bool,
    },
    /// A PersistentVolumeClaim: the bound `local` or `hostPath`
    /// PersistentVolume's path, bind-mounted at the volume's directory.
    Claim {
        /// `claimName`.
        claim: String,
        /// `readOnly` of the claim reference: every mount is read-only.
        read_only: bool,
    },
    /// An image (OCI or artifact) as a read-only volume (Kubernetes
    /// 1.31+): its tree in the store, bind-mounted read-only at the
    /// volume's directory once pulled.
    Image {
        /// `image.reference`.
        reference: String,
        /// `image.pullPolicy`, as written.
        pull_policy: Option<String>,
    },
}

/// One volume of a pod, as the agent prepares it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodVolume {
    /// `volumes[].name`.
    pub name: String,
    /// What it is.
    pub kind: VolumeKind,
    /// The host directory (or file, for a hostPath) containers bind.
    pub dir: String,
    /// The volume as the pod declares it (payload volumes are computed from it).
    pub source: Volume,
}

/// A pod's own directory.
pub fn pod_dir(pods_dir: &str, uid: &str) -> String {
    format!("{pods_dir}/{uid}")
}

/// The kubelet's plugin directory name for a volume kind.
fn plugin(v: &Volume) -> &'static str {
    if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else if v.image.is_some() {
        "kubernetes.io~image"
    } else {
        "kubernetes.io~local-volume"
    }
}

/// The pod's volumes (of a validated pod), in order.
pub fn pod_volumes(pod: &Pod, pods_dir: &str) -> Vec<PodVolume> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let base = format!("{}/{VOLUMES_DIR}", pod_dir(pods_dir, uid));
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let own = || format!("{base}/{}/{}", plugin(v), v.name);
            let (kind, dir) = if let Some(e) = &v.empty_dir {
                let memory = e.medium.as_deref() == Some("Memory");
                let size_limit = e
                    .size_limit
                    .as_ref()
                    .and_then(|q| super::quantity::bytes(&q.0).ok());
                (VolumeKind::EmptyDir { memory, size_limit }, own())
            } else if let Some(h) = &v.host_path {
                let type_ = h.type_.clone().filter(|t| !t.is_empty());
                (VolumeKind::HostPath { type_ }, h.path.clone())
            } else if payload::is_payload(v) {
                let tmpfs = v.config_map.is_none();
                (VolumeKind::Payload { tmpfs }, own())
            } else if let Some(c) = &v.persistent_volume_claim {
                let kind = VolumeKind::Claim {
                    claim: c.claim_name.clone(),
                    read_only: c.read_only == Some(true),
                };
                (kind, own())
            } else if let Some(i) = &v.image {
                let kind = VolumeKind::Image {
                    reference: i.reference.clone().unwrap_or_default(),
                    pull_policy: i.pull_policy.clone(),
                };
                (kind, own())
            } else {
                return None;
            };
            Some(PodVolume {
                name: v.name.clone(),
                kind,
                dir,
                source: v.clone(),
            })
        })
        .collect()
}

/// A `subPath` the agent pins before the container's unit is created:
/// `path` resolved inside `volume_dir` (never outside it) and bind-mounted
/// at the mount's `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPath {
    /// The volume's directory.
    pub volume_dir: String,
    /// The relative path inside it (`subPath`, or `subPathExpr` expanded).
    pub path: String,
}

/// One bind of a container's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// Host path bound (the volume's directory, or the pinned subPath).
    pub source: String,
    /// `mountPath`.
    pub destination: String,
    /// Bound read-only.
    pub read_only: bool,
    /// Set for a `subPath`/`subPathExpr` mount.
    pub sub_path: Option<SubPath>,
    /// A hostPath of type `BlockDevice`/`CharDevice` under `/dev`: the unit
    /// may use the device (`DeviceAllow=`), which the default
    /// `DevicePolicy=closed` forbids. (systemd takes only device paths
    /// under `/dev` there; a device node elsewhere is mounted but stays
    /// closed.)
    pub device: bool,
}

/// Whether `p` is a relative path that stays below its base: no `..`
/// element, not absolute (the API server's `validateLocalDescendingPath`).
pub fn is_descending(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|e| e == "..")
}

/// The binds of container `c` (of a validated pod). `defined` gives the
/// container's declared env variables, which `subPathExpr` expands.
/// `Err` is the `CreateContainerConfigError` message.
pub fn container_mounts(
    pod: &Pod,
    c: &Container,
    defined: &dyn Fn(&str) -> Option<String>,
    pods_dir: &str,
) -> Result<Vec<Mount>, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let volumes = pod_volumes(pod, pods_dir);
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            return Err(format!("volume {:?} not found in the pod", m.name));
        };
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(e)) if !e.is_empty() => {
                let p = super::expand::expand(e, defined);
                if !is_descending(&p) {
                    return Err(format!(
                        "failed to prepare subPath for volumeMount {:?} of container {:?}: subPathExpr {e:?} expands to {p:?}, which is not a relative path inside the volume",
                        m.name, c.name
                    ));
                }
                Some(p)
            }
            _ => None,
        };
        let sub = sub.map(|p| p.trim_end_matches('/').to_string());
        let read_only = m.read_only == Some(true)
            || matches!(
                v.kind,
                VolumeKind::Payload { .. } | VolumeKind::Image { .. }
            )
            || matches!(
                v.kind,
                VolumeKind::Claim {
                    read_only: true,
                    ..
                }
            );
        let device = v.dir.starts_with("/dev/")
            && matches!(&v.kind, VolumeKind::HostPath { type_: Some(t) } if t == "BlockDevice" || t == "CharDevice");
        let (source, sub_path) = match sub.filter(|p| !p.is_empty()) {
            None => (v.dir.clone(), None),
            Some(path) => (
                format!(
                    "{}/{SUBPATHS_DIR}/{}/{}/{i}",
                    pod_dir(pods_dir, uid),
                    v.name,
                    c.name
                ),
                Some(SubPath {
                    volume_dir: v.dir.clone(),
                    path,
                }),
            ),
        };
        out.push(Mount {
            volume: v.name.clone(),
            source,
            destination: m.mount_path.clone(),
            read_only,
            sub_path,
            device,
        });
    }
    Ok(out)
}

/// The unit properties for a container's binds: `BindPaths=`,
/// `BindReadOnlyPaths=` (both recursive) and `DeviceAllow=` for devices.
pub fn mount_properties(mounts: &[Mount]) -> Vec<Property> {
    let binds = |ro: bool| -> Vec<(String, String)> {
        mounts
            .iter()
            .filter(|m| m.read_only == ro)
            .map(|m| (m.source.clone(), m.destination.clone()))
            .collect()
    };
    let mut out = Vec::new();
    let rw = binds(false);
    if !rw.is_empty() {
        out.push(Property::BindPaths(rw));
    }
    let ro = binds(true);
    if !ro.is_empty() {
        out.push(Property::BindReadOnlyPaths(ro));
    }
    let devices: Vec<(String, String)> = mounts
        .iter()
        .filter(|m| m.device)
        .map(|m| {
            let access = if m.read_only { "r" } else { "rw" };
            (m.source.clone(), access.to_string())
        })
        .collect();
    if !devices.is_empty() {
        out.push(Property::DeviceAllow(devices));
    }
    out
}

/// Kubernetes' own hostPath `type`s.
pub const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// Admission checks of `spec.volumes`: `(field, message)` on the first problem.
pub fn validate_volumes(spec: &PodSpec) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = |f: &str| format!("spec.volumes[{i}]{f}");
        if !super::rules::is_dns_label(&v.name) {
            return Err((at(".name"), format!("{:?} is not a valid volume name (a DNS label: lower-case letters, digits and '-', at most 63)", v.name)));
        }
        if !names.insert(v.name.clone()) {
            return Err((at(".name"), format!("duplicate volume name {:?}", v.name)));
        }
        let json = serde_json::to_value(v).unwrap_or_default();
        let sources: Vec<&String> = json
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        match sources.as_slice() {
            [] => return Err((at(""), "a volume needs a source (emptyDir, hostPath, configMap, secret, downwardAPI, projected or persistentVolumeClaim)".into())),
            [_] => {}
            more => return Err((at(""), format!("a volume has exactly one source; this one has {}", more.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")))),
        }
        if let Some(e) = &v.empty_dir {
            match e.medium.as_deref().unwrap_or("") {
                "" | "Memory" => {}
                m => {
                    return Err((
                        at(".emptyDir.medium"),
                        format!("{m:?} is not supported; use \"\" (disk) or \"Memory\" (tmpfs)"),
                    ))
                }
            }
            if let Some(q) = &e.size_limit {
                if super::quantity::bytes(&q.0).is_err() {
                    return Err((
                        at(".emptyDir.sizeLimit"),
                        format!("{:?} is not a quantity", q.0),
                    ));
                }
            }
        } else if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err((
                    at(".hostPath.path"),
                    format!("{:?} is not an absolute path", h.path),
                ));
            }
            if h.path.split('/').any(|e| e == "..") {
                return Err((at(".hostPath.path"), "must not contain '..'".into()));
            }
            let t = h.type_.as_deref().unwrap_or("");
            if !HOST_PATH_TYPES.contains(&t) {
                return Err((
                    at(".hostPath.type"),
                    format!("{t:?} is not one of {}", HOST_PATH_TYPES[1..].join(", ")),
                ));
            }
        } else if payload::is_payload(v) {
            payload::validate(v).map_err(|(f, m)| (at(&format!(".{f}")), m))?;
        } else if let Some(c) = &v.persistent_volume_claim {
            if c.claim_name.is_empty() {
                return Err((at(".persistentVolumeClaim.claimName"), "required".into()));
            }
        } else if let Some(i) = &v.image {
            let r = i.reference.as_deref().unwrap_or("");
            match super::image::parse(r) {
                Ok(super::image::ImageRef::Host) => {
                    return Err((at(".image.reference"), "an image volume needs an image to fetch (an OCI reference or an artifact URL), not host".into()))
                }
                Ok(_) => {}
                Err(e) => return Err((at(".image.reference"), e.to_string())),
            }
            if let Some(p) = i.pull_policy.as_deref() {
                if !["Always", "IfNotPresent", "Never"].contains(&p) {
                    return Err((
                        at(".image.pullPolicy"),
                        format!("{p:?} is not one of Always, IfNotPresent, Never"),
                    ));
                }
            }
        } else {
            let kind = sources.first().map(|s| s.as_str()).unwrap_or("");
            return Err((at(&format!(".{kind}")), format!("{kind} volumes are not supported by unitlet; use emptyDir, hostPath, configMap, secret, downwardAPI, projected, image, or a persistentVolumeClaim bound to a local or hostPath PersistentVolume")));
        }
    }
    Ok(())
}

/// Admission checks of one container's `volumeMounts` (`at` is the
/// container's field path): `(field, message)` on the first problem.
pub fn validate_mounts(spec: &PodSpec, c: &Container, at: &str) -> Result<(), (String, String)> {
    let mut paths = std::collections::HashSet::new();
    let privileged = c
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let f = |x: &str| format!("{at}.volumeMounts[{i}]{x}");
        if !spec.volumes.iter().flatten().any(|v| v.name == m.name) {
            return Err((
                f(".name"),
                format!("no volume {:?} in spec.volumes", m.name),
            ));
        }
        let p = &m.mount_path;
        if !p.starts_with('/') {
            return Err((f(".mountPath"), format!("{p:?} is not an absolute path")));
        }
        let clean = p.trim_end_matches('/');
        if clean.is_empty() || p.split('/').any(|e| e == "..") {
            return Err((f(".mountPath"), format!("{p:?} would cover the host's root or leave it; unitlet containers share the host's file system, so mount below a directory of your own")));
        }
        for api in ["/proc", "/sys"] {
            if clean == api || clean.starts_with(&format!("{api}/")) {
                return Err((
                    f(".mountPath"),
                    format!("{p:?} is inside {api}, which unitlet does not let a volume cover"),
                ));
            }
        }
        if !paths.insert(clean.to_string()) {
            return Err((f(".mountPath"), format!("{p:?} is mounted twice")));
        }
        let sub = m.sub_path.as_deref().unwrap_or("");
        let expr = m.sub_path_expr.as_deref().unwrap_or("");
        if !sub.is_empty() && !expr.is_empty() {
            return Err((
                f(".subPathExpr"),
                "subPathExpr and subPath are mutually exclusive".into(),
            ));
        }
        if !is_descending(sub) {
            return Err((
                f(".subPath"),
                format!("{sub:?} must be a relative path without '..'"),
            ));
        }
        if !is_descending(expr) {
            return Err((
                f(".subPathExpr"),
                format!("{expr:?} must be a relative path without '..'"),
            ));
        }
        match m.mount_propagation.as_deref().unwrap_or("None") {
            "None" | "HostToContainer" => {}
            "Bidirectional" if privileged => {
                return Err((f(".mountPropagation"), "Bidirectional propagation is not supported: systemd gives each unit a mount namespace that receives the host's mounts but does not send its own back; use HostToContainer".into()))
            }
            "Bidirectional" => {
                return Err((f(".mountPropagation"), "Bidirectional requires a privileged container".into()))
            }
            other => return Err((f(".mountPropagation"), format!("{other:?} is not one of None, HostToContainer, Bidirectional"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(volumes: serde_json::Value, mounts: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"volumes": volumes, "containers": [{
                "name": "c", "image": "host",
                "env": [{"name": "SUB", "value": "a/b"}],
                "volumeMounts": mounts
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn mounts_bind_the_volume_or_its_pinned_sub_path() {
        let p = pod(
            serde_json::json!([
                {"name": "e", "emptyDir": {}},
                {"name": "cm", "configMap": {"name": "x"}},
                {"name": "h", "hostPath": {"path": "/dev/sdb", "type": "BlockDevice"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "cl", "readOnly": true}}
            ]),
            serde_json::json!([
                {"name": "e", "mountPath": "/e"},
                {"name": "cm", "mountPath": "/cm"},
                {"name": "h", "mountPath": "/dev/x"},
                {"name": "c", "mountPath": "/c", "subPathExpr": "$(SUB)/d"}
            ]),
        );
        let env = |n: &str| (n == "SUB").then(|| "a/b".to_string());
        let m = container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &env, "/s").unwrap();
        assert_eq!(m[0].source, "/s/u-1/volumes/kubernetes.io~empty-dir/e");
        assert!(!m[0].read_only);
        assert!(m[1].read_only, "payload volumes are read-only");
        assert!(m[2].device && m[2].source == "/dev/sdb");
        assert!(m[3].read_only, "a read-only claim");
        assert_eq!(m[3].source, "/s/u-1/volume-subpaths/c/c/3");
        assert_eq!(
            m[3].sub_path,
            Some(SubPath {
                volume_dir: "/s/u-1/volumes/kubernetes.io~local-volume/c".into(),
                path: "a/b/d".into()
            })
        );
        let props = mount_properties(&m);
        assert!(props.contains(&Property::DeviceAllow(vec![(
            "/dev/sdb".into(),
            "rw".into()
        )])));
    }

    proptest! {
        /// Whatever a subPathExpr expands to, a mount binds only the
        /// volume's directory or a pin below the pod's directory, and an
        /// expansion that would climb out is an error.
        #[test]
        fn sub_paths_never_leave_the_pod(parts in proptest::collection::vec("[a-z.]{1,3}|\\.\\.|\\$\\(SUB\\)|/", 1..6)) {
            let expr: String = parts.concat();
            let p = pod(
                serde_json::json!([{"name": "e", "emptyDir": {}}]),
                serde_json::json!([{"name": "e", "mountPath": "/e", "subPathExpr": expr}]),
            );
            let env = |n: &str| (n == "SUB").then(|| "../up".to_string());
            match container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &env, "/s") {
                Ok(m) => {
                    prop_assert!(m[0].source.starts_with("/s/u-1/"));
                    if let Some(sp) = &m[0].sub_path {
                        prop_assert!(is_descending(&sp.path));
                    }
                }
                Err(e) => prop_assert!(e.contains("failed to prepare subPath")),
            }
        }
    }
}
