//! CPU and memory as systemd applies them, and in-place resize as the
//! kubelet does it (KEP-1287, GA in 1.35).
//!
//! A container's requests and limits become `CPUWeight=`, `CPUQuota=` and
//! `MemoryMax=` on its unit; the pod's own `spec.resources` the same on its
//! slice. systemd changes all three on a running unit
//! (`SetUnitProperties`) without touching its processes, which is exactly
//! what an in-place resize needs. What is decided here, without I/O: the
//! properties for a set of resources, whether a change needs a restart
//! (the container's `resizePolicy`), and whether a resize fits the node
//! (the kubelet's `Infeasible` and `Deferred`).

use super::quantity;
use super::unit::Property;
use super::Allocatable;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// The resources in-place resize covers (the kubelet's too).
pub const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// `CPUQuotaPerSecUSec`, `MemoryMax` and `CPUWeight` at systemd's "no
/// setting" value: what a live change sets for a value that is absent.
const UNSET: u64 = u64::MAX;

fn get(r: Option<&ResourceRequirements>, limits: bool, name: &str) -> Option<String> {
    r.and_then(|x| {
        if limits {
            x.limits.as_ref()
        } else {
            x.requests.as_ref()
        }
    })
    .and_then(|m| m.get(name))
    .map(|q| q.0.clone())
}

/// Kubelet's CPU request → cgroup v2 weight conversion (via cgroup v1 shares).
pub fn cpu_weight(millis: u64) -> u64 {
    let shares = (millis * 1024 / 1000).clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The unit properties `r` asks for: a memory limit as `MemoryMax=`, a CPU
/// limit as `CPUQuota=`, the CPU request (defaulting to the limit, as the
/// API server defaults it) as `CPUWeight=`. Absent values are left out, so
/// a unit made from them keeps systemd's defaults.
pub fn properties(r: Option<&ResourceRequirements>) -> Vec<Property> {
    let mut props = Vec::new();
    if let Some(q) = get(r, true, "memory") {
        props.push(Property::MemoryMax(quantity::bytes(&q).unwrap_or(UNSET)));
    }
    if let Some(q) = get(r, true, "cpu") {
        let m = quantity::cpu_millis(&q).unwrap_or(0);
        props.push(Property::CpuQuotaPerSecUSec((m * 1000).max(1000)));
    }
    if let Some(q) = get(r, false, "cpu").or_else(|| get(r, true, "cpu")) {
        props.push(Property::CpuWeight(cpu_weight(
            quantity::cpu_millis(&q).unwrap_or(0),
        )));
    }
    props
}

/// The properties to set on a running unit so that it has exactly `r`:
/// all three, an absent value reset to systemd's default.
pub fn live_properties(r: Option<&ResourceRequirements>) -> Vec<Property> {
    let p = properties(r);
    let find = |f: fn(&Property) -> Option<u64>| p.iter().find_map(f).unwrap_or(UNSET);
    vec![
        Property::MemoryMax(find(|x| match x {
            Property::MemoryMax(v) => Some(*v),
            _ => None,
        })),
        Property::CpuQuotaPerSecUSec(find(|x| match x {
            Property::CpuQuotaPerSecUSec(v) => Some(*v),
            _ => None,
        })),
        Property::CpuWeight(find(|x| match x {
            Property::CpuWeight(v) => Some(*v),
            _ => None,
        })),
    ]
}

/// Whether `p` is one of the properties resources set (left out of a
/// container's definition digest: a resize is not a new definition).
pub fn is_resource_property(p: &Property) -> bool {
    matches!(
        p,
        Property::MemoryMax(_) | Property::CpuQuotaPerSecUSec(_) | Property::CpuWeight(_)
    )
}

/// CPU and memory requests and limits as written in the pod (quantity
/// strings): what a container or pod was given, kept in its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sizes {
    /// Requests by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Sizes {
    /// The CPU and memory of `r`, the resources unitlet applies (and resizes).
    pub fn of(r: Option<&ResourceRequirements>) -> Sizes {
        let keep = |m: Option<&BTreeMap<String, Quantity>>| {
            m.into_iter()
                .flatten()
                .filter(|(k, _)| RESIZABLE.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect()
        };
        Sizes {
            requests: keep(r.and_then(|r| r.requests.as_ref())),
            limits: keep(r.and_then(|r| r.limits.as_ref())),
        }
    }

    /// As the API's type.
    pub fn requirements(&self) -> ResourceRequirements {
        let q = |m: &BTreeMap<String, String>| {
            (!m.is_empty()).then(|| {
                m.iter()
                    .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                    .collect()
            })
        };
        ResourceRequirements {
            limits: q(&self.limits),
            requests: q(&self.requests),
            ..Default::default()
        }
    }

    /// [`live_properties`] of these sizes.
    pub fn live_properties(&self) -> Vec<Property> {
        live_properties(Some(&self.requirements()))
    }

    /// The same to systemd (`500m` is `0.5`).
    pub fn same(&self, other: &Sizes) -> bool {
        self.live_properties() == other.live_properties()
    }
}

/// Whether two sets of resources are the same to systemd (`500m` is `0.5`).
pub fn same(a: Option<&ResourceRequirements>, b: Option<&ResourceRequirements>) -> bool {
    live_properties(a) == live_properties(b)
}

/// Whether changing container `c`'s resources from `from` to `to` needs a
/// restart: a changed resource whose `resizePolicy` is `RestartContainer`
/// (the default is `NotRequired`).
pub fn needs_restart(restart_on: &[String], from: &Sizes, to: &Sizes) -> bool {
    RESIZABLE.iter().any(|name| {
        let v = |m: &BTreeMap<String, String>| m.get(*name).map(|q| canonical(name, q));
        let changed = v(&from.requests) != v(&to.requests) || v(&from.limits) != v(&to.limits);
        changed && restart_on.iter().any(|r| r == name)
    })
}

/// The resources whose change restarts container `c` (its `resizePolicy`
/// entries with `RestartContainer`; the default is `NotRequired`).
pub fn restart_on_resize(c: &Container) -> Vec<String> {
    c.resize_policy
        .iter()
        .flatten()
        .filter(|p| p.restart_policy == "RestartContainer")
        .map(|p| p.resource_name.clone())
        .collect()
}

fn canonical(name: &str, q: &str) -> u64 {
    if name == "cpu" {
        quantity::cpu_millis(q).unwrap_or(0)
    } else {
        quantity::bytes(q).unwrap_or(0)
    }
}

/// A pod's CPU (millicores) and memory (bytes) requests as the scheduler
/// and the kubelet's admission count them: the pod-level requests when
/// set; else the larger of the regular containers plus sidecars and the
/// largest init container plus the sidecars started before it.
pub fn pod_requests(pod: &Pod) -> (u64, u64) {
    let Some(spec) = &pod.spec else {
        return (0, 0);
    };
    let req = |r: Option<&ResourceRequirements>, name: &str| {
        get(r, false, name)
            .or_else(|| get(r, true, name))
            .map(|q| canonical(name, &q))
            .unwrap_or(0)
    };
    let pod_level = spec.resources.as_ref();
    let one = |name: &str| {
        if get(pod_level, false, name).is_some() || get(pod_level, true, name).is_some() {
            return req(pod_level, name);
        }
        let apps: u64 = spec
            .containers
            .iter()
            .map(|c| req(c.resources.as_ref(), name))
            .sum();
        let mut sidecars = 0u64;
        let mut init_peak = 0u64;
        for c in spec.init_containers.iter().flatten() {
            let r = req(c.resources.as_ref(), name);
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars += r;
                init_peak = init_peak.max(sidecars);
            } else {
                init_peak = init_peak.max(sidecars + r);
            }
        }
        (apps + sidecars).max(init_peak)
    };
    (one("cpu"), one("memory"))
}

/// Why a resize cannot be allocated now: the kubelet's `PodResizePending`
/// reason (`Infeasible` or `Deferred`) and message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// `Infeasible` (never fits this node) or `Deferred` (not now).
    pub reason: String,
    /// The kubelet's message.
    pub message: String,
}

/// Whether `pod`, with the resources it now asks for, fits the node beside
/// the other admitted pods (`others`: their allocated CPU and memory
/// requests, summed), by the kubelet's `canResizePod` rules and messages.
pub fn fits(pod: &Pod, others: (u64, u64), alloc: &Allocatable) -> Result<(), Pending> {
    let (cpu, mem) = pod_requests(pod);
    if cpu > alloc.cpu_millis || mem > alloc.memory_bytes {
        let what = if mem > alloc.memory_bytes {
            format!("memory, requested: {mem}, capacity: {}", alloc.memory_bytes)
        } else {
            format!("cpu, requested: {cpu}, capacity: {}", alloc.cpu_millis)
        };
        return Err(Pending {
            reason: "Infeasible".into(),
            message: format!("Node didn't have enough capacity: {what}"),
        });
    }
    for (name, want, used, cap) in [
        ("cpu", cpu, others.0, alloc.cpu_millis),
        ("memory", mem, others.1, alloc.memory_bytes),
    ] {
        if want + used > cap {
            return Err(Pending {
                reason: "Deferred".into(),
                message: format!(
                    "Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {cap}"
                ),
            });
        }
    }
    Ok(())
}

/// Copies the CPU and memory of `from`'s containers (and pod) into `to`,
/// by container name: the allocated resources over a newer spec whose
/// resize is still pending.
pub fn keep_resources(to: &mut Pod, from: &Pod) {
    let (Some(t), Some(f)) = (to.spec.as_mut(), from.spec.as_ref()) else {
        return;
    };
    let old: BTreeMap<&str, Option<&ResourceRequirements>> = f
        .init_containers
        .iter()
        .flatten()
        .chain(&f.containers)
        .map(|c| (c.name.as_str(), c.resources.as_ref()))
        .collect();
    for c in t
        .init_containers
        .iter_mut()
        .flatten()
        .chain(&mut t.containers)
    {
        if let Some(r) = old.get(c.name.as_str()) {
            c.resources = r.cloned();
        }
    }
    t.resources = f.resources.clone();
}

/// Whether the CPU and memory of `a` and `b` differ anywhere (a container's
/// or the pod's own).
pub fn differ(a: &Pod, b: &Pod) -> bool {
    let mut x = a.clone();
    keep_resources(&mut x, b);
    let sized = |p: &Pod| -> Vec<Vec<Property>> {
        let Some(s) = p.spec.as_ref() else {
            return Vec::new();
        };
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .map(|c| live_properties(c.resources.as_ref()))
            .chain(std::iter::once(live_properties(s.resources.as_ref())))
            .collect()
    };
    sized(&x) != sized(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(v: serde_json::Value) -> ResourceRequirements {
        serde_json::from_value(v).unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": v})).unwrap()
    }

    #[test]
    fn properties_follow_requests_and_limits() {
        let r = rr(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}}));
        assert_eq!(
            properties(Some(&r)),
            vec![
                Property::MemoryMax(64 << 20),
                Property::CpuQuotaPerSecUSec(500_000),
                Property::CpuWeight(cpu_weight(500)),
            ]
        );
        assert!(properties(None).is_empty());
        // A live change resets what is absent.
        let r = rr(serde_json::json!({"requests": {"cpu": "1"}}));
        assert_eq!(
            live_properties(Some(&r)),
            vec![
                Property::MemoryMax(u64::MAX),
                Property::CpuQuotaPerSecUSec(u64::MAX),
                Property::CpuWeight(cpu_weight(1000)),
            ]
        );
        assert!(same(
            Some(&rr(serde_json::json!({"limits": {"cpu": "0.5"}}))),
            Some(&rr(serde_json::json!({"limits": {"cpu": "500m"}})))
        ));
    }

    #[test]
    fn restart_follows_the_changed_resources_policy() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]
        }))
        .unwrap();
        let c = restart_on_resize(&c);
        let a = rr(serde_json::json!({"limits": {"cpu": "1", "memory": "64Mi"}}));
        let cpu = rr(serde_json::json!({"limits": {"cpu": "2", "memory": "64Mi"}}));
        let mem = rr(serde_json::json!({"limits": {"cpu": "1", "memory": "128Mi"}}));
        let same_mem = rr(serde_json::json!({"limits": {"cpu": "1000m", "memory": "67108864"}}));
        let s = |r: &ResourceRequirements| Sizes::of(Some(r));
        assert!(!needs_restart(&c, &s(&a), &s(&cpu)));
        assert!(needs_restart(&c, &s(&a), &s(&mem)));
        assert!(!needs_restart(&c, &s(&a), &s(&same_mem)));
        assert!(s(&same_mem).same(&s(&a)));
    }

    #[test]
    fn pod_requests_count_sidecars_and_inits_as_the_scheduler() {
        let p = pod(serde_json::json!({
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "big", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}
            ],
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}]
        }));
        assert_eq!(pod_requests(&p), (2100, 1 << 30));
        let p = pod(serde_json::json!({
            "resources": {"requests": {"cpu": "3"}},
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]
        }));
        assert_eq!(pod_requests(&p).0, 3000);
    }

    #[test]
    fn a_resize_is_infeasible_beyond_the_node_and_deferred_beyond_what_is_free() {
        let alloc = Allocatable {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 0,
        };
        let p = |cpu: &str| {
            pod(
                serde_json::json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}),
            )
        };
        let e = fits(&p("5"), (0, 0), &alloc).unwrap_err();
        assert_eq!(e.reason, "Infeasible");
        assert_eq!(
            e.message,
            "Node didn't have enough capacity: cpu, requested: 5000, capacity: 2000"
        );
        let e = fits(&p("1500m"), (1000, 0), &alloc).unwrap_err();
        assert_eq!(e.reason, "Deferred");
        assert_eq!(
            e.message,
            "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000"
        );
        assert!(fits(&p("1"), (1000, 0), &alloc).is_ok());
    }

    #[test]
    fn keeping_resources_undoes_only_a_resize() {
        let a = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "a", "resources": {"limits": {"cpu": "1"}}}]}),
        );
        let mut b = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "b", "resources": {"limits": {"cpu": "2"}}}]}),
        );
        assert!(differ(&a, &b));
        keep_resources(&mut b, &a);
        assert!(!differ(&a, &b));
        assert_eq!(b.spec.unwrap().containers[0].image.as_deref(), Some("b"));
    }
}
