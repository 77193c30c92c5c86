//! `translate(pod, node) -> PodPlan`: the pod→units mapping, as a pure function.
//!
//! Each container becomes one `Type=exec` service in the pod's slice. Where a
//! container cannot run (an image kind unitlet does not support), the plan
//! carries the kubelet waiting reason instead of a unit, so the status shows
//! it and nothing is started.

use super::downward::{field_ref, resource_field};
use super::envref::{references, Lookup, ObjectRef, RefKind, Resolved};
use super::expand::expand;
use super::names;
use super::probe::{self, Hooks, ProbeSpec};
use super::rules::{is_env_name, MAX_ARG_STRLEN};
use super::unit::{capability_number, Property, UnitSpec, ALL_CAPABILITIES, CAPABILITIES};
use super::NodeFacts;
use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec, VolumeMount};
use std::collections::HashMap;
use std::sync::Arc;

/// Kubelet's floor for the stop grace period, in seconds.
pub const MIN_GRACE_SECONDS: i64 = 2;

/// What a host user looks like, looked up by the caller (the translation stays pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    /// Primary group.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The kubelet's reason a container cannot be started yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum WaitReason {
    /// The container's config (env from objects, a subPath, a user rule)
    /// cannot be made: waits until it can.
    CreateContainerConfigError,
    /// The image cannot be had.
    ErrImagePull,
    /// The image reference does not parse.
    InvalidImageName,
    /// A pull failed; it is tried again after a back-off.
    ImagePullBackOff,
    /// The image is not stored and the pull policy is `Never`.
    ErrImageNeverPull,
}

impl WaitReason {
    /// The reason as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::CreateContainerConfigError => "CreateContainerConfigError",
            WaitReason::ErrImagePull => "ErrImagePull",
            WaitReason::InvalidImageName => "InvalidImageName",
            WaitReason::ImagePullBackOff => "ImagePullBackOff",
            WaitReason::ErrImageNeverPull => "ErrImageNeverPull",
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for WaitReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a container cannot be started, in kubelet terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    /// Why, as the kubelet says it.
    pub reason: WaitReason,
    /// Human explanation naming what to change.
    pub message: String,
}

/// One container of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Image as written in the pod.
    pub image: String,
    /// Unit name (also when the container cannot start, for bookkeeping).
    pub unit: String,
    /// The unit to create, or why there is none.
    pub spec: Result<UnitSpec, Waiting>,
    /// ConfigMaps and Secrets the container's env names. When there are
    /// any, the runtime looks them up just before creating the unit and
    /// makes `spec` again with [`container_with`]; the `spec` here was
    /// made without their data.
    pub refs: Vec<ObjectRef>,
    /// Variables to be written to the file the unit's `EnvironmentFile=`
    /// names, before the unit is created: set when some come from a
    /// Secret, as `Environment=` is readable by every local user over D-Bus.
    pub env_file: Option<EnvFile>,
    /// `envFrom` keys left out because they are not usable as variable
    /// names, one message per source (the kubelet's
    /// `InvalidEnvironmentVariableNames` event).
    pub skipped_env: Vec<String>,
    /// Its probes (startup, liveness, readiness), which the agent runs.
    pub probes: Vec<ProbeSpec>,
    /// Its lifecycle hooks, which the agent runs.
    pub hooks: Hooks,
    /// A native sidecar: an init container with `restartPolicy: Always`,
    /// which keeps running (restarted whatever the pod's policy) and lets
    /// the next init container start once it has started.
    pub sidecar: bool,
    /// Its volume mounts, bound by the unit; those with a `subPath` are
    /// pinned by the agent before the unit is created.
    pub mounts: Vec<super::volume::Mount>,
    /// What tells a changed definition (a new image) from an unchanged
    /// one: a digest of the unit without what may change while the
    /// container runs — its CPU and memory (resized in place) and
    /// variables taken from labels, annotations or resources, for which
    /// the kubelet never restarts a container either.
    pub digest: String,
    /// Its CPU and memory as allocated (see [`super::resources`]).
    pub resources: super::resources::Sizes,
    /// The resources whose resize restarts it (`resizePolicy` with
    /// `RestartContainer`).
    pub restart_on_resize: Vec<String>,
    /// An ephemeral container (`kubectl debug`): run once, never restarted.
    pub ephemeral: bool,
    /// The image to pull before the unit can be made (`None` for `host`):
    /// `spec` was then planned against the image deferred (see
    /// [`super::image_run`]), and the runtime makes it again with the
    /// pulled image ([`container_with`]) just before creating the unit.
    pub pull: Option<super::image::ImageRef>,
}

/// A root-only environment file for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Absolute path, under [`SECRET_ENV_DIR`].
    pub path: String,
    /// The variables, in order (a later one wins, as in `Environment=`).
    pub vars: Vec<(String, String)>,
}

/// Where environment files with Secret values live: on tmpfs (never on
/// disk, as the kubelet keeps secrets), one directory per pod UID.
pub const SECRET_ENV_DIR: &str = "/run/unitlet/secret-env";

/// The environment file of container `container` of pod `uid`.
pub fn env_file_path(uid: &str, container: &str) -> String {
    format!("{SECRET_ENV_DIR}/{uid}/{container}.env")
}

/// Everything a pod becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    /// The pod slice's name. Nobody creates it: systemd loads a slice that
    /// has no unit file implicitly when a unit names it in `Slice=`, so the
    /// first container brings it up in the same transaction. A separate
    /// transient slice cost systemd a second unit per pod (a quarter of
    /// its per-pod work in the benchmark); stopping the slice still stops
    /// the whole pod.
    pub slice: String,
    /// Init containers, run one at a time in this order.
    pub init: Vec<ContainerPlan>,
    /// App containers, started together.
    pub containers: Vec<ContainerPlan>,
    /// The pod's volumes, which the agent prepares before any container starts.
    pub volumes: Vec<super::volume::PodVolume>,
    /// Ephemeral containers (`kubectl debug`), started once the pod's
    /// init containers are done, never restarted.
    pub ephemeral: Vec<ContainerPlan>,
    /// The pod-level `spec.resources` (CPU and memory), applied to the
    /// pod's slice; `None` without them (the slice is then made by
    /// systemd when the first container names it, at no cost).
    pub slice_resources: Option<super::resources::Sizes>,
}

impl PodPlan {
    /// Every container: init, regular, then ephemeral.
    pub fn all(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init
            .iter()
            .chain(&self.containers)
            .chain(&self.ephemeral)
    }

    /// Every unit name of the plan (slice last).
    pub fn unit_names(&self) -> impl Iterator<Item = &str> {
        self.init
            .iter()
            .chain(&self.containers)
            .chain(&self.ephemeral)
            .map(|c| c.unit.as_str())
            .chain(std::iter::once(self.slice.as_str()))
    }

    /// Unit-file view of the whole plan.
    pub fn render(&self) -> String {
        let mut out = match &self.slice_resources {
            None => format!(
                "# {}\n# (made by systemd when the first container names it; no properties)\n",
                self.slice
            ),
            Some(r) => UnitSpec {
                name: self.slice.clone(),
                properties: super::resources::properties(Some(&r.requirements())),
            }
            .render(),
        };
        for c in self.all() {
            out.push('\n');
            match &c.spec {
                Ok(spec) => out.push_str(&spec.render()),
                Err(w) => out.push_str(&format!(
                    "# {}\n# not created: {}: {}\n",
                    c.unit, w.reason, w.message
                )),
            }
        }
        out
    }
}

/// What a container's `image:` names, or why it names nothing
/// (`InvalidImageName`, with the kubelet's message).
fn image_ref(image: &str) -> Result<super::image::ImageRef, Waiting> {
    super::image::parse(image).map_err(|_| Waiting {
        reason: WaitReason::InvalidImageName,
        message: format!("Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"),
    })
}

/// A container's declared environment, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEnv {
    /// Variables in Kubernetes order, `$(VAR)` expanded.
    pub vars: Vec<(String, String)>,
    /// Some value came from a Secret.
    pub from_secret: bool,
    /// `envFrom` keys skipped as unusable names, one message per source.
    pub skipped: Vec<String>,
    /// Variables whose values come from labels, annotations or resources,
    /// which may change while the container runs (see
    /// [`ContainerPlan::digest`]).
    pub volatile: Vec<String>,
}

/// A value taken from a ConfigMap or Secret as systemd can pass it, or why
/// it cannot (systemd refuses what is not UTF-8 or holds control characters).
fn object_value(r: &ObjectRef, ns: &str, key: &str, bytes: &[u8]) -> Result<String, String> {
    let what = format!("key {key} of {} {ns}/{}", r.kind.kind(), r.name);
    let v = std::str::from_utf8(bytes).map_err(|_| {
        format!("{what} is not UTF-8 text, which systemd cannot pass in the environment; mount it as a file instead")
    })?;
    if v.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(format!("{what} holds a control character other than tab, CR or newline, which systemd refuses in the environment"));
    }
    if key.len() + v.len() + 2 > MAX_ARG_STRLEN {
        return Err(format!(
            "{what} is {} bytes; Linux refuses a single environment entry over {} bytes",
            v.len(),
            MAX_ARG_STRLEN
        ));
    }
    Ok(v.to_string())
}

/// The container's environment in Kubernetes order (`envFrom` sources, then
/// `env`), with `$(VAR)` expanded, as the kubelet's
/// `makeEnvironmentVariables` builds it. `Err` is the
/// `CreateContainerConfigError` message. Objects still pending are left
/// out (the runtime never creates a unit from such an environment).
pub fn container_env(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
    resolved: &Resolved,
) -> Result<ContainerEnv, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = ContainerEnv::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut set = |out: &mut ContainerEnv, name: &str, value: String| match index.get(name) {
        Some(&i) => out.vars[i].1 = value,
        None => {
            index.insert(name.to_string(), out.vars.len());
            out.vars.push((name.to_string(), value));
        }
    };
    // `Ok(None)`: skipped (optional and missing, or pending).
    let data = |r: &ObjectRef, optional: bool| match resolved.get(r) {
        Lookup::Found(d) => Ok(Some(Arc::clone(d))),
        Lookup::Pending => Ok(None),
        Lookup::NotFound if optional => Ok(None),
        Lookup::NotFound => Err(format!("{} {:?} not found", r.kind.word(), r.name)),
        Lookup::Failed(e) => Err(e.clone()),
    };
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.as_deref().unwrap_or("");
        let (r, optional) = if let Some(cm) = &f.config_map_ref {
            (
                ObjectRef {
                    kind: RefKind::ConfigMap,
                    name: cm.name.clone(),
                },
                cm.optional == Some(true),
            )
        } else if let Some(sr) = &f.secret_ref {
            (
                ObjectRef {
                    kind: RefKind::Secret,
                    name: sr.name.clone(),
                },
                sr.optional == Some(true),
            )
        } else {
            continue;
        };
        let Some(d) = data(&r, optional)? else {
            continue;
        };
        let mut invalid = Vec::new();
        for (k, v) in d.data.iter() {
            let name = format!("{prefix}{k}");
            if !is_env_name(&name) {
                invalid.push(name);
                continue;
            }
            let v = object_value(&r, ns, k, v)?;
            out.from_secret |= r.kind == RefKind::Secret;
            set(&mut out, &name, v);
        }
        if !invalid.is_empty() {
            out.skipped.push(format!(
                "Keys [{}] from the EnvFrom {} {ns}/{} were skipped since they are considered invalid environment variable names.",
                invalid.join(", "),
                r.kind.word(),
                r.name
            ));
        }
    }
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        let value = if let Some(f) = from.and_then(|v| v.field_ref.as_ref()) {
            if f.field_path.starts_with("metadata.labels")
                || f.field_path.starts_with("metadata.annotations")
            {
                out.volatile.push(e.name.clone());
            }
            field_ref(pod, node, &f.field_path)
        } else if let Some(r) = from.and_then(|v| v.resource_field_ref.as_ref()) {
            out.volatile.push(e.name.clone());
            resource_field(pod, node, c, r)?
        } else if let Some((r, key, optional)) = from.and_then(|v| {
            let cm = v.config_map_key_ref.as_ref().map(|k| {
                (
                    ObjectRef {
                        kind: RefKind::ConfigMap,
                        name: k.name.clone(),
                    },
                    k.key.clone(),
                    k.optional == Some(true),
                )
            });
            cm.or_else(|| {
                v.secret_key_ref.as_ref().map(|k| {
                    (
                        ObjectRef {
                            kind: RefKind::Secret,
                            name: k.name.clone(),
                        },
                        k.key.clone(),
                        k.optional == Some(true),
                    )
                })
            })
        }) {
            let Some(d) = data(&r, optional)? else {
                continue;
            };
            match d.data.get(&key) {
                Some(v) => {
                    out.from_secret |= r.kind == RefKind::Secret;
                    object_value(&r, ns, &key, v)?
                }
                None if optional => continue,
                None => {
                    return Err(format!(
                        "couldn't find key {key} in {} {ns}/{}",
                        r.kind.kind(),
                        r.name
                    ))
                }
            }
        } else {
            let defined = |n: &str| index_lookup(&out, n);
            expand(e.value.as_deref().unwrap_or(""), defined)
        };
        set(&mut out, &e.name, value);
    }
    Ok(out)
}

fn index_lookup(env: &ContainerEnv, name: &str) -> Option<String> {
    env.vars
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// What `$(VAR)` in a probe's or hook's exec command expands with: the
/// container's own environment, as the kubelet does, made without any
/// ConfigMap or Secret data (their variables are left out, and an
/// environment that cannot be made expands nothing). Made only when a
/// command names a variable, and then once.
fn command_env<'a>(
    pod: &'a Pod,
    node: &'a NodeFacts,
    c: &'a Container,
) -> impl Fn(&str) -> Option<String> + 'a {
    let env = std::cell::OnceCell::new();
    move |name| {
        let env = env
            .get_or_init(|| container_env(pod, node, c, &Resolved::default()).unwrap_or_default());
        index_lookup(env, name)
    }
}

/// The container's probes as they run, in the order startup, liveness,
/// readiness: checked ([`probe::check_probes`]), then resolved against the
/// pod IP and the container's environment. `Err`: (field, message), the
/// field from the container on (validation has refused such a pod).
pub fn container_probes(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
) -> Result<Vec<ProbeSpec>, (String, String)> {
    Ok(probe::check_probes(c)?.resolve(&node.host_ip, command_env(pod, node, c)))
}

/// The container's lifecycle hooks as they run, checked
/// ([`probe::check_hooks`]) and resolved as [`container_probes`] are.
/// `Err`: (field from the container on, message).
pub fn container_hooks(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
) -> Result<Hooks, (String, String)> {
    Ok(probe::check_hooks(c)?.resolve(&node.host_ip, command_env(pod, node, c)))
}

pub use super::resources::cpu_weight;

fn container_plan(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
    lookup_user: &dyn Fn(u32) -> Option<HostUser>,
    resolved: &Resolved,
    pulled: Option<&super::image::Pulled>,
) -> ContainerPlan {
    let meta = &pod.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("");
    let uid = meta.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref().expect("validated pod has a spec");
    let unit = names::container_unit(ns, name, &c.name, uid);
    let image = c.image.clone().unwrap_or_default();
    let refs = references(c);
    let waiting = |w: Waiting, refs: Vec<ObjectRef>| ContainerPlan {
        name: c.name.clone(),
        image: image.clone(),
        unit: unit.clone(),
        spec: Err(w),
        refs,
        env_file: None,
        skipped_env: Vec::new(),
        probes: Vec::new(),
        hooks: Default::default(),
        sidecar: c.restart_policy.as_deref() == Some("Always"),
        mounts: Vec::new(),
        digest: String::new(),
        resources: super::resources::Sizes::of(c.resources.as_ref()),
        restart_on_resize: super::resources::restart_on_resize(c),
        ephemeral: false,
        pull: None,
    };
    let image_ref = match image_ref(&image) {
        Ok(r) => r,
        Err(w) => return waiting(w, refs),
    };
    use super::image::{ImageRef, TreeKind};
    use super::image_run::{self, Use};
    let image_use = match (&image_ref, pulled) {
        (ImageRef::Host, _) => None,
        (_, Some(p)) => Some(Use::Pulled(p)),
        (ImageRef::Artifact(_), None) => Some(Use::Deferred {
            image: &image,
            kind: TreeKind::Artifact,
        }),
        (ImageRef::Oci(_), None) => Some(Use::Deferred {
            image: &image,
            kind: TreeKind::Oci,
        }),
    };
    let pull = (image_ref != ImageRef::Host).then_some(image_ref);
    let waiting = |w: Waiting, refs: Vec<ObjectRef>| ContainerPlan {
        pull: pull.clone(),
        ..waiting(w, refs)
    };
    let oci = image_use.is_some_and(|u| u.kind() == TreeKind::Oci);
    let declared = match container_env(pod, node, c, resolved) {
        Ok(d) => d,
        Err(message) => {
            let w = Waiting {
                reason: WaitReason::CreateContainerConfigError,
                message,
            };
            return waiting(w, refs);
        }
    };

    let sc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let image_user = match image_use.as_ref().map(image_run::user) {
        Some(Err(message))
            if sc
                .and_then(|s| s.run_as_user)
                .or(psc.and_then(|s| s.run_as_user))
                .is_none() =>
        {
            let w = Waiting {
                reason: WaitReason::CreateContainerConfigError,
                message,
            };
            return waiting(w, refs);
        }
        Some(Ok(u)) => u,
        _ => None,
    };
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
        .map(|v| v as u32)
        .or(image_user.map(|u| u.0));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
        .map(|v| v as u32)
        .or(image_user.and_then(|u| u.1));
    if let Some(message) = run_as_non_root_error(pod, c, run_as_user) {
        let w = Waiting {
            reason: WaitReason::CreateContainerConfigError,
            message,
        };
        return waiting(w, refs);
    }
    let host_user = lookup_user(run_as_user.unwrap_or(0));

    // In an OCI root the host's passwd means nothing: HOME is the image's
    // (from its Env) or containerd's default for the user.
    let home = if oci {
        if run_as_user.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/"
        }
        .to_string()
    } else {
        host_user
            .as_ref()
            .map(|u| u.home.clone())
            .unwrap_or_else(|| "/".into())
    };
    let mut env = vec![("HOME".to_string(), home)];
    for (k, v) in image_use.as_ref().map(image_run::env).unwrap_or_default() {
        match env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    // Secret values go to a root-only file, whole declared list with them
    // (a value may embed a secret through `$(VAR)`); it is read after
    // `Environment=`, so a declared HOME still wins, as below.
    let env_file = declared.from_secret.then(|| EnvFile {
        path: env_file_path(uid, &c.name),
        vars: declared.vars.clone(),
    });
    if env_file.is_none() {
        for (k, v) in &declared.vars {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
    }
    // As in the kubelet, command and args expand only the container's own
    // env list: HOME is the runtime's, so `$(HOME)` stays literal unless declared.
    let defined = |n: &str| {
        declared
            .vars
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let mut argv: Vec<String> = match &image_use {
        None => c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| expand(a, defined))
            .collect(),
        Some(u) => image_run::argv(
            c.command.as_deref().unwrap_or_default(),
            c.args.as_deref().unwrap_or_default(),
            u,
        )
        .into_iter()
        .map(|(a, from_pod)| if from_pod { expand(&a, defined) } else { a })
        .collect(),
    };
    let workdir = c
        .working_dir
        .clone()
        .or_else(|| image_use.as_ref().map(image_run::working_dir));
    if let (Some(u), Some(a0)) = (&image_use, argv.first_mut()) {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        match image_run::program(a0, u, path, workdir.as_deref().unwrap_or("/")) {
            Ok(p) => *a0 = p,
            Err(message) => {
                let w = Waiting {
                    reason: WaitReason::CreateContainerConfigError,
                    message,
                };
                return waiting(w, refs);
            }
        }
    }
    let mounts = match super::volume::container_mounts(pod, c, &defined, &node.pods_dir) {
        Ok(m) => m,
        Err(message) => {
            let w = Waiting {
                reason: WaitReason::CreateContainerConfigError,
                message,
            };
            return waiting(w, refs);
        }
    };

    // Dropping privileges with setpriv (from the argv, not a shell) works for
    // any numeric id, as in Kubernetes; systemd's User= needs a passwd entry
    // (and SupplementaryGroups= a group entry), so groups go there too.
    let mut groups = supplemental_groups(pod);
    let pod_user = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user));
    if let (Some(u), Some(_), None) = (&image_use, image_user, pod_user) {
        // The image's user, with the groups its /etc/group gives it.
        for g in image_run::user_groups(u) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let caps = capability_plan(c);
    // In an OCI root: root needs no switch (the unit runs as root).
    let setpriv = if oci {
        run_as_user.is_some_and(|u| u != 0)
            || run_as_group.is_some_and(|g| g != 0)
            || !groups.is_empty()
    } else {
        run_as_user.is_some() || run_as_group.is_some() || !groups.is_empty()
    };
    if setpriv && oci {
        // The image's own ids: the static helper switches to them (see
        // `super::image::IMAGE_EXEC`), then drops what the bounding set
        // kept for it.
        let uid_n = run_as_user.unwrap_or(0);
        let gid_n = run_as_group.unwrap_or(0);
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        let drop: Vec<String> = match caps {
            Some(mask) => SETPRIV_CAPS
                .iter()
                .filter(|n| mask & (1u64 << **n) == 0)
                .map(u32::to_string)
                .collect(),
            None => Vec::new(),
        };
        let mut wrapped = vec![
            super::image::IMAGE_EXEC.to_string(),
            uid_n.to_string(),
            gid_n.to_string(),
            list.join(","),
            drop.join(","),
            "--".to_string(),
        ];
        wrapped.append(&mut argv);
        argv = wrapped;
    } else if setpriv {
        let uid_n = run_as_user.unwrap_or(0);
        let gid_n = run_as_group
            .or(host_user.as_ref().map(|u| u.gid))
            .unwrap_or(0);
        let mut wrapped = vec![
            "/usr/bin/setpriv".to_string(),
            format!("--reuid={uid_n}"),
            format!("--regid={gid_n}"),
        ];
        if groups.is_empty() {
            wrapped.push("--clear-groups".into());
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            wrapped.push(format!("--groups={}", list.join(",")));
        }
        // setpriv needs these to switch ids; the unit's bounding set keeps
        // them (see below) and setpriv drops them before the program runs.
        if let Some(mask) = caps {
            let extra: Vec<String> = SETPRIV_CAPS
                .iter()
                .filter(|n| mask & (1u64 << **n) == 0)
                .map(|n| CAPABILITIES[*n as usize].to_ascii_lowercase())
                .map(|n| format!("-{n}"))
                .collect();
            if !extra.is_empty() {
                wrapped.push(format!("--bounding-set={}", extra.join(",")));
            }
        }
        wrapped.push("--".into());
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    // A container with stdin or a terminal runs under the agent's
    // tty-host, which holds them for `kubectl attach` (see `super::tty`).
    let tty_host = c.stdin == Some(true) || c.tty == Some(true);
    if tty_host && oci {
        let w = Waiting {
            reason: WaitReason::CreateContainerConfigError,
            message: format!("container {} sets stdin or tty, which unitlet does not support yet for an OCI image (its attach helper is not inside the image's root); use an artifact or host image, or drop stdin/tty", c.name),
        };
        return waiting(w, refs);
    }
    if tty_host {
        if let Some(program) = argv.first().cloned() {
            let socket = super::tty::attach_socket(uid, &c.name);
            let (_, wrapped) = super::tty::wrap(
                &program,
                &argv,
                &node.agent_exe,
                &socket,
                c.tty == Some(true),
                c.stdin == Some(true) && c.stdin_once == Some(true),
            );
            argv = wrapped;
        }
    }
    let Some(path) = argv.first().cloned() else {
        // (Validation refuses this; an ephemeral container is planned
        // before it is checked.)
        let w = Waiting {
            reason: WaitReason::CreateContainerConfigError,
            message: "no command to run".into(),
        };
        return waiting(w, refs);
    };

    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(30)
        .max(MIN_GRACE_SECONDS) as u64;
    let mut props = vec![
        Property::Description(format!("unitlet pod {ns}/{name} container {}", c.name)),
        Property::Slice(names::pod_slice(uid)),
        Property::Type("exec".into()),
        Property::RemainAfterExit(true),
        Property::ExecStart { path, argv },
        Property::Environment(env),
        Property::SyslogIdentifier(c.name.clone()),
        Property::KillSignal(15),
        // As a container runtime stops a container: the stop signal to its
        // main process (PID 1 of the container) only; what is left is
        // killed once it is gone or at the grace period. With systemd's
        // default (the whole group), a preStop-like trap's own children
        // were signalled too. Under a terminal helper, the helper passes
        // the signal on, so the program does not get it twice.
        Property::KillMode("mixed".into()),
        Property::TimeoutStopUSec(grace * 1_000_000),
        Property::StartLimitIntervalUSec(0),
        Property::Accounting(true),
        Property::Delegate(true),
    ];
    if let Some(wd) = &workdir {
        props.push(Property::WorkingDirectory(wd.clone()));
    }
    props.extend(super::resources::properties(c.resources.as_ref()));
    if let Some(f) = &env_file {
        props.push(Property::EnvironmentFile(f.path.clone()));
    }
    props.extend(super::volume::mount_properties(&mounts));
    security_properties(pod, node, c, caps, setpriv, &mut props);
    if let Some(u) = &image_use {
        let read_only = props
            .iter()
            .any(|p| matches!(p, Property::ProtectSystem(s) if s == "strict"));
        props.extend(image_run::tree_properties(u, read_only, setpriv));
    }
    let digest = definition_digest(&props, &declared.volatile);
    // Kept for the pod's life: the spare room of the pushes above was a
    // tenth of a 2,000-pod agent's heap (heaptrack).
    props.shrink_to_fit();
    ContainerPlan {
        name: c.name.clone(),
        image,
        unit: unit.clone(),
        spec: Ok(UnitSpec {
            name: unit,
            properties: props,
        }),
        refs,
        env_file,
        skipped_env: declared.skipped,
        // Validated with the pod; a probe that would not resolve here
        // (a named port gone) is not run.
        probes: container_probes(pod, node, c).unwrap_or_default(),
        hooks: container_hooks(pod, node, c).unwrap_or_default(),
        // Only init containers may set it (validated).
        sidecar: c.restart_policy.as_deref() == Some("Always"),
        mounts,
        digest,
        resources: super::resources::Sizes::of(c.resources.as_ref()),
        restart_on_resize: super::resources::restart_on_resize(c),
        ephemeral: false,
        pull,
    }
}

/// [`ContainerPlan::digest`]: the unit's properties without its CPU and
/// memory, with the values of `volatile` variables blanked.
fn definition_digest(props: &[Property], volatile: &[String]) -> String {
    let kept: Vec<Property> = props
        .iter()
        .filter(|p| !super::resources::is_resource_property(p))
        .map(|p| match p {
            Property::Environment(vars) => Property::Environment(
                vars.iter()
                    .map(|(k, v)| {
                        let v = if volatile.contains(k) { "" } else { v };
                        (k.clone(), v.to_string())
                    })
                    .collect(),
            ),
            p => p.clone(),
        })
        .collect();
    UnitSpec {
        name: String::new(),
        properties: kept,
    }
    .digest()
}

/// An ephemeral container as the [`Container`] it is run as. With a
/// `targetContainerName`, it gets the target's volume mounts besides its
/// own (its own win at the same path): unitlet containers share the
/// host's root, PID and IPC namespaces, so the target's mount namespace
/// differs from the host's only by those binds, and the debug container
/// sees the target's files where the target sees them.
fn ephemeral_as_container(spec: &PodSpec, e: &EphemeralContainer) -> Container {
    let mut mounts: Vec<VolumeMount> = e.volume_mounts.clone().unwrap_or_default();
    if let Some(target) = e.target_container_name.as_deref().and_then(|t| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == t)
    }) {
        for m in target.volume_mounts.iter().flatten() {
            if !mounts.iter().any(|x| x.mount_path == m.mount_path) {
                mounts.push(m.clone());
            }
        }
    }
    Container {
        name: e.name.clone(),
        image: e.image.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        working_dir: e.working_dir.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        ..Default::default()
    }
}

/// The plan of the `index`th ephemeral container. One that unitlet
/// cannot run waits with `CreateContainerConfigError` (never fails the
/// pod, which is running already).
fn ephemeral_plan(
    pod: &Pod,
    node: &NodeFacts,
    index: usize,
    e: &EphemeralContainer,
    lookup_user: &dyn Fn(u32) -> Option<HostUser>,
    resolved: &Resolved,
    pulled: Option<&super::image::Pulled>,
) -> ContainerPlan {
    let spec = pod.spec.as_ref().expect("validated pod has a spec");
    let c = ephemeral_as_container(spec, e);
    let mut plan = match super::manifest::validate_ephemeral(pod, index, &c) {
        Ok(()) => container_plan(pod, node, &c, lookup_user, resolved, pulled),
        // Not planned further: translation expects a valid container.
        Err(err) => {
            let bare = Container {
                name: c.name.clone(),
                image: c.image.clone(),
                ..Default::default()
            };
            let mut plan = container_plan(pod, node, &bare, lookup_user, resolved, None);
            plan.refs.clear();
            plan.spec = Err(Waiting {
                reason: WaitReason::CreateContainerConfigError,
                message: err.to_string(),
            });
            plan
        }
    };
    plan.ephemeral = true;
    plan.sidecar = false;
    plan.probes.clear();
    plan.hooks = Default::default();
    plan
}

/// The capabilities containerd gives a non-privileged container (its
/// `DefaultUnixCapabilities`, also Docker's and CRI-O's default).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Capabilities `setpriv` needs to switch ids and trim the bounding set:
/// CAP_SETGID, CAP_SETUID, CAP_SETPCAP.
const SETPRIV_CAPS: [u32; 3] = [6, 7, 8];

/// The allow-list standing in for the container runtime's default seccomp
/// profile: systemd's `@system-service` (ordinary service calls, `@setuid`,
/// `@chown`, `@process` with `unshare`/`setns`, which fail without
/// CAP_SYS_ADMIN anyway) plus memory protection keys and `chroot`
/// (CAP_SYS_CHROOT is a default capability), minus the kernel keyring
/// (not namespaced; blocked by the runtime default too). Not `ptrace` and
/// `process_vm_*`, which the runtime allows inside a PID namespace: unitlet
/// pods share the host's.
pub const RUNTIME_DEFAULT_SYSCALLS: [&str; 3] = ["@system-service", "@pkey", "chroot"];
/// Removed from [`RUNTIME_DEFAULT_SYSCALLS`].
pub const RUNTIME_DEFAULT_DENIED: [&str; 1] = ["@keyring"];

/// `EPERM`, what the runtime's default seccomp action returns.
const EPERM: i32 = 1;

fn mask_of(names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| capability_number(n))
        .fold(0, |m, n| m | (1u64 << n))
}

/// The container's capability bounding set as containerd builds it: the
/// default set, then `add: [ALL]` (everything), `drop: [ALL]` (nothing),
/// then each added name, then each dropped one. `None` for a privileged
/// container, which keeps every capability (add and drop are ignored).
pub fn capability_plan(c: &Container) -> Option<u64> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        return None;
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let add: Vec<&str> = caps
        .iter()
        .flat_map(|c| c.add.iter().flatten())
        .map(String::as_str)
        .collect();
    let drop: Vec<&str> = caps
        .iter()
        .flat_map(|c| c.drop.iter().flatten())
        .map(String::as_str)
        .collect();
    let all = |l: &[&str]| l.iter().any(|n| n.eq_ignore_ascii_case("ALL"));
    let mut mask = mask_of(&DEFAULT_CAPABILITIES);
    if all(&add) {
        mask = ALL_CAPABILITIES;
    }
    if all(&drop) {
        mask = 0;
    }
    mask |= mask_of(&add);
    mask &= !mask_of(&drop);
    Some(mask)
}

/// Supplemental groups of the pod's processes: `supplementalGroups`, then
/// `fsGroup`, each once (the kubelet adds fsGroup to the groups).
pub fn supplemental_groups(pod: &Pod) -> Vec<u32> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let mut out: Vec<u32> = Vec::new();
    let listed = psc
        .iter()
        .flat_map(|s| s.supplemental_groups.iter().flatten());
    for g in listed.chain(psc.and_then(|s| s.fs_group.as_ref())) {
        let g = *g as u32;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// The kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot`, a container
/// whose user is root (runAsUser 0, or no runAsUser: unitlet has no image
/// user, so the process would run as root) is not created. The message is
/// the kubelet's, with its `name_namespace(uid)` pod format.
fn run_as_non_root_error(pod: &Pod, c: &Container, run_as_user: Option<u32>) -> Option<String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|s| s.run_as_non_root));
    if non_root != Some(true) {
        return None;
    }
    let meta = &pod.metadata;
    let desc = format!(
        "{}_{}({})",
        meta.name.as_deref().unwrap_or(""),
        meta.namespace.as_deref().unwrap_or("default"),
        meta.uid.as_deref().unwrap_or("")
    );
    match run_as_user {
        Some(0) => Some(format!(
            "container's runAsUser breaks non-root policy (pod: {desc:?}, container: {})",
            c.name
        )),
        Some(_) => None,
        None => Some(format!(
            "container has runAsNonRoot and image will run as root (pod: {desc:?}, container: {})",
            c.name
        )),
    }
}

/// The unit properties of the container's security context and unitlet's
/// default hardening (see the README): capability bounding set,
/// NoNewPrivileges, read-only root, seccomp, kernel tunables, cgroups and
/// devices. `caps` is [`capability_plan`]; with `setpriv` in the argv, the
/// bounding set keeps what setpriv needs and setpriv drops it itself.
fn security_properties(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
    caps: Option<u64>,
    setpriv: bool,
    props: &mut Vec<Property>,
) {
    let sc = c.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let privileged = caps.is_none();
    if let Some(mask) = caps {
        let keep = if setpriv {
            SETPRIV_CAPS.iter().fold(0, |m, n| m | (1u64 << n))
        } else {
            0
        };
        props.push(Property::CapabilityBoundingSet(mask | keep));
    }
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        props.push(Property::NoNewPrivileges(true));
    }
    if sc.and_then(|s| s.read_only_root_filesystem) == Some(true) {
        props.push(Property::ProtectSystem("strict".into()));
    }
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(psc.and_then(|s| s.seccomp_profile.as_ref()));
    // containerd runs privileged containers unconfined.
    if !privileged && seccomp.is_some_and(|p| p.type_ == "RuntimeDefault") {
        props.push(Property::SystemCallFilter {
            allow: true,
            names: RUNTIME_DEFAULT_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
        props.push(Property::SystemCallFilter {
            allow: false,
            names: RUNTIME_DEFAULT_DENIED
                .iter()
                .map(|s| s.to_string())
                .collect(),
        });
        props.push(Property::SystemCallErrorNumber(EPERM));
    }
    // Not by default: a private /tmp, read-only kernel tunables and cgroup
    // tree. Each makes systemd set up a mount namespace per unit, which at
    // 100 pods starting at once made every start take seconds (measured
    // with unitlet-bench); a node opts in with `--pod-hardening strict`.
    if !privileged {
        props.push(Property::DevicePolicy("closed".into()));
        if node.hardening == super::Hardening::Strict {
            props.extend([
                Property::PrivateTmp(true),
                Property::ProtectKernelTunables(true),
                Property::ProtectKernelModules(true),
                Property::ProtectControlGroups(true),
            ]);
        }
    }
}

/// One container's plan made with the ConfigMaps and Secrets its env names
/// (see [`ContainerPlan::refs`]) and its image as pulled (see
/// [`ContainerPlan::pull`]); `None` if the pod has no such container.
pub fn container_with(
    pod: &Pod,
    node: &NodeFacts,
    container: &str,
    lookup_user: &dyn Fn(u32) -> Option<HostUser>,
    resolved: &Resolved,
    pulled: Option<&super::image::Pulled>,
) -> Option<ContainerPlan> {
    let spec = pod.spec.as_ref()?;
    if let Some((i, e)) = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, e)| e.name == container)
    {
        return Some(ephemeral_plan(
            pod,
            node,
            i,
            e,
            lookup_user,
            resolved,
            pulled,
        ));
    }
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == container)
        .map(|c| container_plan(pod, node, c, lookup_user, resolved, pulled))
}

/// Translates a validated, admitted pod into the units that run it.
pub fn translate(
    pod: &Pod,
    node: &NodeFacts,
    lookup_user: &dyn Fn(u32) -> Option<HostUser>,
) -> PodPlan {
    let meta = &pod.metadata;
    let uid = meta.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref().expect("validated pod has a spec");
    let slice = names::pod_slice(uid);
    // Objects are looked up only when a unit is about to be created.
    let plan =
        |c: &Container| container_plan(pod, node, c, lookup_user, &Resolved::default(), None);
    PodPlan {
        slice,
        init: spec.init_containers.iter().flatten().map(plan).collect(),
        containers: spec.containers.iter().map(plan).collect(),
        volumes: super::volume::pod_volumes(pod, &node.pods_dir),
        ephemeral: spec
            .ephemeral_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| ephemeral_plan(pod, node, i, e, lookup_user, &Resolved::default(), None))
            .collect(),
        slice_resources: spec
            .resources
            .as_ref()
            .map(|r| super::resources::Sizes::of(Some(r))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node1".into(),
            host_ip: "10.1.2.3".into(),
            allocatable: Default::default(),
            pods_dir: "/var/lib/unitlet/pods".into(),
            hardening: Default::default(),
            agent_exe: "/usr/bin/unitlet".into(),
        }
    }

    fn no_users(uid: u32) -> Option<HostUser> {
        (uid == 0).then(|| HostUser {
            gid: 0,
            home: "/root".into(),
        })
    }

    fn plan(yaml: &str) -> PodPlan {
        let p = parse_manifest(yaml.as_bytes(), "/m/p.yaml", "node1", false).unwrap();
        translate(&p.pod, &node(), &no_users)
    }

    fn exec_start(spec: &UnitSpec) -> (String, Vec<String>) {
        spec.properties
            .iter()
            .find_map(|p| match p {
                Property::ExecStart { path, argv } => Some((path.clone(), argv.clone())),
                _ => None,
            })
            .unwrap()
    }

    fn env_of(spec: &UnitSpec) -> Vec<(String, String)> {
        spec.properties
            .iter()
            .find_map(|p| match p {
                Property::Environment(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn expansion_and_field_refs() {
        let p = plan(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: shop}}
spec:
  containers:
  - name: c
    image: host
    command: ["/bin/echo", "$(GREETING) $(WHO)", "$$(GREETING)", "$(MISSING)", "100% $HOME", "$(HOME)"]
    env:
    - {name: WHO, value: world}
    - {name: GREETING, value: "hello $(WHO)"}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
"#,
        );
        let spec = p.containers[0].spec.as_ref().unwrap();
        let (path, argv) = exec_start(spec);
        assert_eq!(path, "/bin/echo");
        assert_eq!(
            argv,
            [
                "/bin/echo",
                "hello world world",
                "$(GREETING)",
                "$(MISSING)",
                "100% $HOME",
                "$(HOME)"
            ]
        );
        let env = env_of(spec);
        assert!(env.contains(&("POD".into(), "web".into())));
        assert!(env.contains(&("APP".into(), "shop".into())));
        assert!(env.contains(&("IP".into(), "10.1.2.3".into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
    }

    #[test]
    fn images_other_than_host_are_planned_for_a_pull() {
        let p = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - {name: xa, image: 'nginx:1.25'}\n  - {name: yb, image: 'Bad Image'}\n  - {name: zc, image: 'https://dl.example.com/svc.tar.gz', command: [bin/svc]}\n");
        assert!(matches!(
            p.containers[0].pull,
            Some(super::super::image::ImageRef::Oci(_))
        ));
        assert_eq!(
            p.containers[1].spec.as_ref().unwrap_err().reason,
            "InvalidImageName"
        );
        let art = p.containers[2].spec.as_ref().unwrap();
        assert!(art.properties.contains(&Property::BindReadOnlyPaths(vec![(
            "<tree of https://dl.example.com/svc.tar.gz>".into(),
            "/run/unitlet/image".into()
        )])));
        // Deferred, a relative program stays as written until the tree is known.
        assert!(art
            .properties
            .iter()
            .any(|p| matches!(p, Property::ExecStart { path, .. } if path == "bin/svc")));
    }

    #[test]
    fn resources_and_users() {
        let p = plan(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: r}
spec:
  terminationGracePeriodSeconds: 0
  securityContext: {runAsUser: 4242}
  containers:
  - name: c
    image: host
    command: [sleep, "1"]
    resources: {limits: {cpu: 500m, memory: 64Mi}}
"#,
        );
        let spec = p.containers[0].spec.as_ref().unwrap();
        assert!(spec.properties.contains(&Property::MemoryMax(64 << 20)));
        assert!(spec
            .properties
            .contains(&Property::CpuQuotaPerSecUSec(500_000)));
        assert!(spec
            .properties
            .contains(&Property::CpuWeight(cpu_weight(500))));
        assert!(spec
            .properties
            .contains(&Property::TimeoutStopUSec(2_000_000)));
        let (path, argv) = exec_start(spec);
        assert_eq!(path, "/usr/bin/setpriv");
        assert_eq!(
            argv[..5],
            [
                "/usr/bin/setpriv",
                "--reuid=4242",
                "--regid=0",
                "--clear-groups",
                "--"
            ]
        );
        assert_eq!(argv[5..], ["sleep", "1"]);
        assert!(env_of(spec).contains(&("HOME".into(), "/".into())));
    }

    fn sec_plan(pod_sc: &str, c_sc: &str) -> ContainerPlan {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: s, namespace: ns}}\nspec:\n  securityContext: {pod_sc}\n  containers:\n  - name: c\n    image: host\n    command: [/bin/true]\n    securityContext: {c_sc}\n"
        );
        plan(&yaml).containers.remove(0)
    }

    fn props_of(c: &ContainerPlan) -> Vec<Property> {
        c.spec.as_ref().unwrap().properties.clone()
    }

    fn bounding(c: &ContainerPlan) -> Option<u64> {
        props_of(c).into_iter().find_map(|p| match p {
            Property::CapabilityBoundingSet(m) => Some(m),
            _ => None,
        })
    }

    fn caps(names: &[&str]) -> u64 {
        names
            .iter()
            .map(|n| capability_number(n).unwrap())
            .fold(0, |m, n| m | (1 << n))
    }

    #[test]
    fn default_capabilities_and_hardening() {
        let c = sec_plan("{}", "{}");
        assert_eq!(bounding(&c), Some(caps(&DEFAULT_CAPABILITIES)));
        let props = props_of(&c);
        assert!(props.contains(&Property::DevicePolicy("closed".into())));
        assert!(!props.iter().any(|p| matches!(
            p,
            Property::ReadOnlyPaths(_) | Property::ProtectControlGroups(_)
        )));
        // Kubernetes defaults: privilege escalation allowed, unconfined
        // seccomp, writable root.
        assert!(!props.iter().any(|p| matches!(
            p,
            Property::NoNewPrivileges(_)
                | Property::SystemCallFilter { .. }
                | Property::ProtectSystem(_)
        )));
        // Root, no groups: no setpriv.
        assert_eq!(exec_start(c.spec.as_ref().unwrap()).1, ["/bin/true"]);
    }

    #[test]
    fn capabilities_add_and_drop_as_containerd() {
        let b = |sc: &str| bounding(&sec_plan("{}", sc)).unwrap();
        assert_eq!(
            b("{capabilities: {add: [NET_ADMIN, cap_sys_time], drop: [CAP_NET_RAW, kill]}}"),
            (caps(&DEFAULT_CAPABILITIES) | caps(&["NET_ADMIN", "SYS_TIME"]))
                & !caps(&["NET_RAW", "KILL"])
        );
        assert_eq!(b("{capabilities: {drop: [ALL]}}"), 0);
        assert_eq!(
            b("{capabilities: {drop: [all], add: [NET_BIND_SERVICE]}}"),
            caps(&["NET_BIND_SERVICE"])
        );
        assert_eq!(
            b("{capabilities: {add: [ALL], drop: [SYS_ADMIN]}}"),
            ALL_CAPABILITIES & !caps(&["SYS_ADMIN"])
        );
        // Privileged: every capability (no bounding set), add/drop ignored,
        // no default hardening, no seccomp even when asked.
        let c = sec_plan(
            "{seccompProfile: {type: RuntimeDefault}}",
            "{privileged: true, capabilities: {drop: [ALL]}}",
        );
        assert_eq!(bounding(&c), None);
        let props = props_of(&c);
        assert!(!props.iter().any(|p| matches!(
            p,
            Property::SystemCallFilter { .. }
                | Property::DevicePolicy(_)
                | Property::ReadOnlyPaths(_)
                | Property::ProtectControlGroups(_)
                | Property::NoNewPrivileges(_)
        )));
    }

    #[test]
    fn groups_and_ids_through_setpriv_keeping_what_it_needs() {
        let c = sec_plan(
            "{supplementalGroups: [5, 7, 5], fsGroup: 9, runAsUser: 1000}",
            "{runAsGroup: 100, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}",
        );
        let (_, argv) = exec_start(c.spec.as_ref().unwrap());
        assert_eq!(
            argv,
            [
                "/usr/bin/setpriv",
                "--reuid=1000",
                "--regid=100",
                "--groups=5,7,9",
                "--bounding-set=-setgid,-setuid,-setpcap",
                "--",
                "/bin/true"
            ]
        );
        // systemd's set keeps what setpriv needs; setpriv drops it.
        assert_eq!(
            bounding(&c),
            Some(caps(&["NET_BIND_SERVICE", "SETUID", "SETGID", "SETPCAP"]))
        );
        // Groups alone switch to root with those groups.
        let c = sec_plan("{fsGroup: 42}", "{}");
        let (_, argv) = exec_start(c.spec.as_ref().unwrap());
        assert_eq!(
            argv[..5],
            [
                "/usr/bin/setpriv",
                "--reuid=0",
                "--regid=0",
                "--groups=42",
                "--"
            ]
        );
    }

    #[test]
    fn run_as_non_root_follows_the_kubelet() {
        let p = parse_manifest(
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: s, namespace: ns}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers:\n  - {name: a, image: host, command: [/bin/true]}\n  - {name: b, image: host, command: [/bin/true], securityContext: {runAsUser: 0}}\n  - {name: c, image: host, command: [/bin/true], securityContext: {runAsUser: 7}}\n  - {name: d, image: host, command: [/bin/true], securityContext: {runAsNonRoot: false}}\n",
            "/m/p.yaml",
            "node1",
            false,
        )
        .unwrap();
        let plan = translate(&p.pod, &node(), &no_users);
        let uid = &p.uid;
        let w = plan.containers[0].spec.as_ref().unwrap_err();
        assert_eq!(w.reason, "CreateContainerConfigError");
        assert_eq!(
            w.message,
            format!("container has runAsNonRoot and image will run as root (pod: \"s_ns({uid})\", container: a)")
        );
        let w = plan.containers[1].spec.as_ref().unwrap_err();
        assert_eq!(
            w.message,
            format!(
                "container's runAsUser breaks non-root policy (pod: \"s_ns({uid})\", container: b)"
            )
        );
        assert!(plan.containers[2].spec.is_ok());
        // The container's false overrides the pod's true.
        assert!(plan.containers[3].spec.is_ok());
    }

    #[test]
    fn escalation_read_only_root_and_seccomp() {
        let c = sec_plan(
            "{seccompProfile: {type: RuntimeDefault}}",
            "{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}",
        );
        let props = props_of(&c);
        assert!(props.contains(&Property::NoNewPrivileges(true)));
        assert!(props.contains(&Property::ProtectSystem("strict".into())));
        assert!(props.contains(&Property::SystemCallFilter {
            allow: true,
            names: vec!["@system-service".into(), "@pkey".into(), "chroot".into()],
        }));
        assert!(props.contains(&Property::SystemCallFilter {
            allow: false,
            names: vec!["@keyring".into()],
        }));
        assert!(props.contains(&Property::SystemCallErrorNumber(1)));
        // The container's Unconfined overrides the pod's RuntimeDefault.
        let c = sec_plan(
            "{seccompProfile: {type: RuntimeDefault}}",
            "{seccompProfile: {type: Unconfined}, allowPrivilegeEscalation: true}",
        );
        assert!(!props_of(&c).iter().any(|p| matches!(
            p,
            Property::SystemCallFilter { .. }
                | Property::SystemCallErrorNumber(_)
                | Property::NoNewPrivileges(_)
        )));
    }

    #[test]
    fn weight_matches_kubelet() {
        assert_eq!(cpu_weight(1000), 39);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(256_000), 10_000);
    }

    fn api_pod(env: serde_json::Value, env_from: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"containers": [{
                "name": "c", "image": "host", "command": ["/bin/echo", "$(A)"],
                "env": env, "envFrom": env_from
            }]}
        }))
        .unwrap()
    }

    fn found(pairs: &[(&str, &[u8])]) -> Lookup {
        Lookup::Found(std::sync::Arc::new(crate::envref::ObjectData {
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            binary: Default::default(),
        }))
    }

    fn cm(name: &str) -> ObjectRef {
        ObjectRef {
            kind: RefKind::ConfigMap,
            name: name.into(),
        }
    }

    fn secret(name: &str) -> ObjectRef {
        ObjectRef {
            kind: RefKind::Secret,
            name: name.into(),
        }
    }

    fn env_with(pod: &Pod, resolved: &[(ObjectRef, Lookup)]) -> Result<ContainerEnv, String> {
        let r = Resolved(resolved.iter().cloned().collect());
        container_env(pod, &node(), &pod.spec.as_ref().unwrap().containers[0], &r)
    }

    #[test]
    fn env_from_comes_first_with_prefix_and_env_overrides_it() {
        let pod = api_pod(
            serde_json::json!([
                {"name": "A", "value": "declared-$(B)"},
                {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "one", "key": "B"}}}
            ]),
            serde_json::json!([
                {"configMapRef": {"name": "one"}},
                {"configMapRef": {"name": "two"}, "prefix": "P_"}
            ]),
        );
        let e = env_with(
            &pod,
            &[
                (
                    cm("one"),
                    found(&[("A", b"from-cm"), ("B", b"b"), ("x-y", b"1")]),
                ),
                (cm("two"), found(&[("A", b"2")])),
            ],
        )
        .unwrap();
        let vars: Vec<(&str, &str)> = e
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            vars,
            [("A", "declared-b"), ("B", "b"), ("P_A", "2"), ("K", "b")]
        );
        assert!(!e.from_secret);
        assert_eq!(e.skipped.len(), 1);
        assert!(
            e.skipped[0].contains("[x-y]") && e.skipped[0].contains("ns/one"),
            "{:?}",
            e.skipped
        );
        // The plan made with them: $(A) in the argv sees the env.
        let r = Resolved(
            [
                (cm("one"), found(&[("A", b"x"), ("B", b"b")])),
                (cm("two"), found(&[])),
            ]
            .into_iter()
            .collect(),
        );
        let plan = container_with(&pod, &node(), "c", &no_users, &r, None).unwrap();
        let spec = plan.spec.unwrap();
        assert_eq!(exec_start(&spec).1, ["/bin/echo", "declared-b"]);
        assert!(env_of(&spec).contains(&("K".into(), "b".into())));
        assert!(plan.env_file.is_none());
        assert_eq!(plan.refs, [cm("one"), cm("two")]);
    }

    #[test]
    fn missing_objects_and_keys_follow_optional_and_the_kubelets_messages() {
        let key_ref = |optional: bool| {
            api_pod(
                serde_json::json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": optional}}}]),
                serde_json::json!([]),
            )
        };
        assert_eq!(
            env_with(&key_ref(false), &[(secret("s"), Lookup::NotFound)]).unwrap_err(),
            "secret \"s\" not found"
        );
        assert_eq!(
            env_with(&key_ref(false), &[(secret("s"), found(&[]))]).unwrap_err(),
            "couldn't find key k in Secret ns/s"
        );
        assert!(env_with(&key_ref(true), &[(secret("s"), Lookup::NotFound)])
            .unwrap()
            .vars
            .is_empty());
        assert!(env_with(&key_ref(true), &[(secret("s"), found(&[]))])
            .unwrap()
            .vars
            .is_empty());
        // A read error is an error even for an optional reference.
        assert_eq!(
            env_with(
                &key_ref(true),
                &[(secret("s"), Lookup::Failed("forbidden".into()))]
            )
            .unwrap_err(),
            "forbidden"
        );
        let from = |optional: bool| {
            api_pod(
                serde_json::json!([]),
                serde_json::json!([{"configMapRef": {"name": "m", "optional": optional}}]),
            )
        };
        assert_eq!(
            env_with(&from(false), &[(cm("m"), Lookup::NotFound)]).unwrap_err(),
            "configmap \"m\" not found"
        );
        assert!(env_with(&from(true), &[(cm("m"), Lookup::NotFound)]).is_ok());
        // What systemd cannot carry is refused, naming the key and object.
        let e = env_with(&key_ref(false), &[(secret("s"), found(&[("k", b"\xff")]))]).unwrap_err();
        assert!(
            e.contains("key k of Secret ns/s") && e.contains("UTF-8"),
            "{e}"
        );
        let e = env_with(&key_ref(false), &[(secret("s"), found(&[("k", b"a\x01")]))]).unwrap_err();
        assert!(e.contains("control character"), "{e}");
        // The plan says why, in kubelet terms.
        let r = Resolved([(secret("s"), Lookup::NotFound)].into_iter().collect());
        let plan = container_with(&key_ref(false), &node(), "c", &no_users, &r, None).unwrap();
        assert_eq!(plan.spec.unwrap_err().reason, "CreateContainerConfigError");
    }

    #[test]
    fn secret_values_go_to_a_root_only_file_not_the_bus() {
        let pod = api_pod(
            serde_json::json!([
                {"name": "PLAIN", "value": "p"},
                {"name": "HOME", "value": "/srv"},
                {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}
            ]),
            serde_json::json!([]),
        );
        let r = Resolved(
            [(secret("s"), found(&[("t", b"hush")]))]
                .into_iter()
                .collect(),
        );
        let plan = container_with(&pod, &node(), "c", &no_users, &r, None).unwrap();
        let spec = plan.spec.unwrap();
        let f = plan.env_file.unwrap();
        assert_eq!(f.path, "/run/unitlet/secret-env/u-1/c.env");
        assert_eq!(
            f.vars,
            [
                ("PLAIN".to_string(), "p".to_string()),
                ("HOME".into(), "/srv".into()),
                ("T".into(), "hush".into())
            ]
        );
        assert!(spec
            .properties
            .contains(&Property::EnvironmentFile(f.path.clone())));
        // Only the runtime's own defaults stay in Environment=.
        assert_eq!(env_of(&spec), [("HOME".to_string(), "/root".to_string())]);
        assert!(!format!("{spec:?}").contains("hush"));
    }

    #[test]
    fn resource_field_refs_follow_the_kubelet() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [
                {"name": "c", "image": "host", "command": ["/bin/true"],
                 "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                 "env": [
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
                    {"name": "REQ_CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "OTHER_MEM", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory"}}},
                    {"name": "OTHER_REQ", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "requests.cpu"}}},
                    {"name": "DISK", "valueFrom": {"resourceFieldRef": {"resource": "limits.ephemeral-storage", "divisor": "1Gi"}}}
                 ]},
                {"name": "side", "image": "host", "command": ["/bin/true"],
                 "env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}}}]}
            ]}
        }))
        .unwrap();
        let mut n = node();
        n.allocatable = crate::Allocatable {
            cpu_millis: 3500,
            memory_bytes: 8 << 30,
            ephemeral_storage_bytes: 10 << 30,
        };
        let spec = pod.spec.as_ref().unwrap();
        let e = container_env(&pod, &n, &spec.containers[0], &Resolved::default()).unwrap();
        let got: HashMap<&str, &str> = e
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got["CPU"], "1"); // 500m rounded up to whole cores
        assert_eq!(got["CPU_M"], "500");
        assert_eq!(got["MEM_MI"], "64"); // the request defaults to the limit
        assert_eq!(got["REQ_CPU"], "500");
        assert_eq!(got["OTHER_MEM"], (8u64 << 30).to_string()); // no limit: allocatable
        assert_eq!(got["OTHER_REQ"], "0");
        assert_eq!(got["DISK"], "10");
        assert_eq!(
            container_env(&pod, &n, &spec.containers[1], &Resolved::default()).unwrap_err(),
            "container nope not found"
        );
        // In the plan that is the kubelet's CreateContainerConfigError.
        let plan = translate(&pod, &n, &no_users);
        assert_eq!(
            plan.containers[1].spec.as_ref().unwrap_err().reason,
            "CreateContainerConfigError"
        );
    }
}
