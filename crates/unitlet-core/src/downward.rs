//! The downward API's values: a `fieldRef` path or a `resourceFieldRef`
//! resolved against the pod and the node, as the kubelet resolves them.
//! A leaf module because both the environment (translation) and downward
//! API volumes (volume payloads) need the same answers.

use super::quantity;
use super::NodeFacts;
use k8s_openapi::api::core::v1::{Container, Pod};

/// Resolves a `fieldRef` path against the pod and node.
pub fn field_ref(pod: &Pod, node: &NodeFacts, path: &str) -> String {
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

/// A `resourceFieldRef` as the kubelet resolves it: the container's limit
/// or request (a request defaults to the limit, as the API server's
/// defaulting does; a missing limit is the node's allocatable, as the
/// kubelet defaults it for the downward API), divided by the divisor
/// (default 1) and rounded up. `Err`: no such container.
pub fn resource_field(
    pod: &Pod,
    node: &NodeFacts,
    c: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, String> {
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => c,
        Some(n) => pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .find(|x| x.name == n)
            .ok_or_else(|| format!("container {n} not found"))?,
    };
    let (kind, name) = r.resource.split_once('.').unwrap_or(("", ""));
    let get = |which: &str| {
        target
            .resources
            .as_ref()
            .and_then(|x| {
                if which == "limits" {
                    x.limits.as_ref()
                } else {
                    x.requests.as_ref()
                }
            })
            .and_then(|m| m.get(name))
            .map(|q| q.0.clone())
    };
    let declared = if kind == "requests" {
        get("requests").or_else(|| get("limits"))
    } else {
        get("limits")
    };
    let divisor = r
        .divisor
        .as_ref()
        .map(|q| q.0.as_str())
        .filter(|d| !d.is_empty())
        .unwrap_or("1");
    let alloc = &node.allocatable;
    let (value, per) = if name == "cpu" {
        let v = match &declared {
            Some(q) => quantity::cpu_millis(q).unwrap_or(0),
            None if kind == "limits" => alloc.cpu_millis,
            None => 0,
        };
        (v, quantity::cpu_millis(divisor).unwrap_or(1000))
    } else {
        let v = match &declared {
            Some(q) => quantity::bytes(q).unwrap_or(0),
            None if kind == "limits" && name == "memory" => alloc.memory_bytes,
            None if kind == "limits" => alloc.ephemeral_storage_bytes,
            None => 0,
        };
        (v, quantity::bytes(divisor).unwrap_or(1))
    };
    Ok(value.div_ceil(per.max(1)).to_string())
}
