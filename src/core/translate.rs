//! `translate(pod, node) -> PodPlan`: the pod→units mapping, as a pure function.
//!
//! Each container becomes one `Type=exec` service in the pod's slice. Where a
//! container cannot run (an image kind unitlet does not support), the plan
//! carries the kubelet waiting reason instead of a unit, so the status shows
//! it and nothing is started.

use super::expand::expand;
use super::manifest::HOST_IMAGE;
use super::names;
use super::quantity;
use super::unit::{Property, UnitSpec};
use super::NodeFacts;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use std::collections::HashMap;

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

/// Why a container cannot be started, in kubelet terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Waiting {
    /// e.g. `ErrImagePull`, `InvalidImageName`.
    pub reason: String,
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
}

/// Everything a pod becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl PodPlan {
    /// Every unit name of the plan (slice last).
    pub fn unit_names(&self) -> impl Iterator<Item = &str> {
        self.init
            .iter()
            .chain(&self.containers)
            .map(|c| c.unit.as_str())
            .chain(std::iter::once(self.slice.as_str()))
    }

    /// Unit-file view of the whole plan.
    pub fn render(&self) -> String {
        let mut out = format!(
            "# {}\n# (made by systemd when the first container names it; no properties)\n",
            self.slice
        );
        for c in self.init.iter().chain(&self.containers) {
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

/// Checks an image reference against the distribution grammar, loosely: what
/// would be `InvalidImageName` for a container runtime.
fn image_is_valid(image: &str) -> bool {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else {
            return false;
        };
        if alg.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return false;
        }
    }
    !path.is_empty()
        && path.split('/').enumerate().all(|(i, comp)| {
            !comp.is_empty()
                && comp.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"._-".contains(&b)
                        || (i == 0 && (b.is_ascii_uppercase() || b == b':'))
                })
        })
}

fn image_waiting(image: &str) -> Option<Waiting> {
    if image == HOST_IMAGE {
        return None;
    }
    if !image_is_valid(image) {
        return Some(Waiting { reason: "InvalidImageName".into(), message: format!("Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format") });
    }
    Some(Waiting {
        reason: "ErrImagePull".into(),
        message: format!("image {image:?} cannot be pulled: unitlet supports only image: host (run a binary installed on this machine) for now"),
    })
}

/// Resolves a `fieldRef` path against the pod and node.
fn field_ref(pod: &Pod, node: &NodeFacts, path: &str) -> String {
    let meta = &pod.metadata;
    let lookup = |map: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => node.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => {
            node.host_ip.clone()
        }
        p => {
            let key = |prefix: &str| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(str::to_string)
            };
            if let Some(k) = key("metadata.labels['") {
                lookup(&meta.labels, &k)
            } else if let Some(k) = key("metadata.annotations['") {
                lookup(&meta.annotations, &k)
            } else {
                String::new()
            }
        }
    }
}

/// The container's environment in Kubernetes order, with `$(VAR)` expanded.
pub fn container_env(pod: &Pod, node: &NodeFacts, env: &[EnvVar]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for e in env {
        let value = if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            field_ref(pod, node, &f.field_path)
        } else {
            let defined = |n: &str| index.get(n).map(|&i| out[i].1.clone());
            expand(e.value.as_deref().unwrap_or(""), defined)
        };
        match index.get(&e.name) {
            Some(&i) => out[i].1 = value,
            None => {
                index.insert(e.name.clone(), out.len());
                out.push((e.name.clone(), value));
            }
        }
    }
    out
}

/// Kubelet's CPU request → cgroup v2 weight conversion (via cgroup v1 shares).
pub fn cpu_weight(millis: u64) -> u64 {
    let shares = (millis * 1024 / 1000).clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn container_plan(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
    lookup_user: &dyn Fn(u32) -> Option<HostUser>,
) -> ContainerPlan {
    let meta = &pod.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("");
    let uid = meta.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref().expect("validated pod has a spec");
    let unit = names::container_unit(ns, name, &c.name, uid);
    let image = c.image.clone().unwrap_or_default();
    if let Some(w) = image_waiting(&image) {
        return ContainerPlan {
            name: c.name.clone(),
            image,
            unit,
            spec: Err(w),
        };
    }

    let sc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
        .map(|v| v as u32);
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
        .map(|v| v as u32);
    let host_user = lookup_user(run_as_user.unwrap_or(0));

    let mut env = vec![(
        "HOME".to_string(),
        host_user
            .as_ref()
            .map(|u| u.home.clone())
            .unwrap_or_else(|| "/".into()),
    )];
    let declared = container_env(pod, node, c.env.as_deref().unwrap_or(&[]));
    for (k, v) in &declared {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    // As in the kubelet, command and args expand only the container's own
    // env list: HOME is the runtime's, so `$(HOME)` stays literal unless declared.
    let defined = |n: &str| {
        declared
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let mut argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, defined))
        .collect();

    // Dropping privileges with setpriv (from the argv, not a shell) works for
    // any numeric id, as in Kubernetes; systemd's User= needs a passwd entry.
    if run_as_user.is_some() || run_as_group.is_some() {
        let uid_n = run_as_user.unwrap_or(0);
        let gid_n = run_as_group
            .or(host_user.as_ref().map(|u| u.gid))
            .unwrap_or(0);
        let mut wrapped = vec![
            "/usr/bin/setpriv".to_string(),
            format!("--reuid={uid_n}"),
            format!("--regid={gid_n}"),
            "--clear-groups".into(),
            "--".into(),
        ];
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    let path = argv[0].clone();

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
        Property::TimeoutStopUSec(grace * 1_000_000),
        Property::StartLimitIntervalUSec(0),
        Property::Accounting(true),
    ];
    if let Some(wd) = &c.working_dir {
        props.push(Property::WorkingDirectory(wd.clone()));
    }
    let res = c.resources.as_ref();
    let get = |kind: &str, r: &str| {
        res.and_then(|x| {
            if kind == "limits" {
                x.limits.as_ref()
            } else {
                x.requests.as_ref()
            }
        })
        .and_then(|m| m.get(r))
        .map(|q| q.0.clone())
    };
    if let Some(q) = get("limits", "memory") {
        props.push(Property::MemoryMax(quantity::bytes(&q).unwrap_or(u64::MAX)));
    }
    if let Some(q) = get("limits", "cpu") {
        let m = quantity::cpu_millis(&q).unwrap_or(0);
        props.push(Property::CpuQuotaPerSecUSec((m * 1000).max(1000)));
    }
    // A request defaults to the limit, as the API server's defaulting does.
    if let Some(q) = get("requests", "cpu").or_else(|| get("limits", "cpu")) {
        props.push(Property::CpuWeight(cpu_weight(
            quantity::cpu_millis(&q).unwrap_or(0),
        )));
    }
    ContainerPlan {
        name: c.name.clone(),
        image,
        unit: unit.clone(),
        spec: Ok(UnitSpec {
            name: unit,
            properties: props,
        }),
    }
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
    let plan = |c: &Container| container_plan(pod, node, c, lookup_user);
    PodPlan {
        slice,
        init: spec.init_containers.iter().flatten().map(plan).collect(),
        containers: spec.containers.iter().map(plan).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::manifest::parse_manifest;

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node1".into(),
            host_ip: "10.1.2.3".into(),
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
    fn images_other_than_host_wait_with_a_reason() {
        let p = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - {name: xa, image: 'nginx:1.25'}\n  - {name: yb, image: 'Bad Image'}\n");
        assert_eq!(
            p.containers[0].spec.as_ref().unwrap_err().reason,
            "ErrImagePull"
        );
        assert_eq!(
            p.containers[1].spec.as_ref().unwrap_err().reason,
            "InvalidImageName"
        );
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

    #[test]
    fn weight_matches_kubelet() {
        assert_eq!(cpu_weight(1000), 39);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(256_000), 10_000);
    }
}
