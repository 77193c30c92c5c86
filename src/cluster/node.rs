//! The Node object: what this machine publishes about itself, and its
//! heartbeats (Lease renewals and status patches).
//!
//! Building the object is a pure function of the config and of facts read
//! from the host, so it is table-tested; the loops around it only decide
//! when to write.

use super::config::NodeConfig;
use crate::core::eviction::{Conditions, Pressure};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use std::collections::{BTreeMap, BTreeSet};

/// What the host is, read once at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Online CPUs.
    pub cpus: u64,
    /// Physical memory, bytes.
    pub memory_bytes: u64,
    /// Size of the file system holding the state directory, bytes.
    pub ephemeral_storage_bytes: u64,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `uname -r`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of os-release.
    pub os_image: String,
    /// Go's name for the architecture (`amd64`, `arm64`).
    pub arch: String,
    /// systemd's version string (`Manager.Version`).
    pub systemd_version: String,
}

/// Go's `GOARCH` for Rust's `std::env::consts::ARCH`.
pub fn go_arch(rust_arch: &str) -> String {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_string()
}

fn quantity_bytes(b: u64) -> Quantity {
    // Memory in Ki, as the kubelet publishes it.
    Quantity(format!("{}Ki", b / 1024))
}

fn reserved_bytes(q: &Option<String>) -> u64 {
    q.as_deref()
        .and_then(|q| crate::core::quantity::bytes(q).ok())
        .unwrap_or(0)
}

/// The node's labels: the well-known ones, then the configured ones.
pub fn labels(name: &str, cfg: &NodeConfig, facts: &HostFacts) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), facts.arch.clone());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert("beta.kubernetes.io/arch".into(), facts.arch.clone());
    l.insert("kubernetes.io/hostname".into(), name.into());
    l.insert("type".into(), "virtual-kubelet".into());
    if let Some(t) = &cfg.instance_type {
        l.insert("node.kubernetes.io/instance-type".into(), t.clone());
    }
    for (k, v) in &cfg.labels {
        l.insert(k.clone(), v.clone());
    }
    l
}

/// The Node as this agent registers it (conditions come from [`conditions`]).
pub fn node_object(name: &str, ip: &str, cfg: &NodeConfig, facts: &HostFacts) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(name, cfg, facts)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(
                cfg.taints()
                    .into_iter()
                    .map(|t| Taint {
                        key: t.key,
                        value: (!t.value.is_empty()).then_some(t.value),
                        effect: t.effect,
                        time_added: None,
                    })
                    .collect(),
            )
            .filter(|t: &Vec<Taint>| !t.is_empty()),
            ..Default::default()
        }),
        status: Some(static_status(name, ip, cfg, facts)),
    }
}

/// What pods may use: the host's resources less the reserved ones.
pub fn allocatable(cfg: &NodeConfig, facts: &HostFacts) -> crate::core::Allocatable {
    let reserved_cpu_m = cfg
        .reserved
        .cpu
        .as_deref()
        .and_then(|q| crate::core::quantity::cpu_millis(q).ok())
        .unwrap_or(0);
    crate::core::Allocatable {
        cpu_millis: (facts.cpus * 1000).saturating_sub(reserved_cpu_m),
        memory_bytes: facts
            .memory_bytes
            .saturating_sub(reserved_bytes(&cfg.reserved.memory)),
        ephemeral_storage_bytes: facts
            .ephemeral_storage_bytes
            .saturating_sub(reserved_bytes(&cfg.reserved.ephemeral_storage)),
    }
}

/// `status.images`: what the image store holds, largest first (as the
/// kubelet sorts them), each with every name it answers to and its size.
pub fn images(
    images: &crate::images::manager::Images,
) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
    let mut list: Vec<_> = images
        .list()
        .into_iter()
        .map(|m| k8s_openapi::api::core::v1::ContainerImage {
            names: Some(
                std::iter::once(m.id.clone())
                    .chain(m.references.iter().cloned())
                    .collect(),
            ),
            size_bytes: Some(m.size as i64),
        })
        .collect();
    list.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.names.cmp(&b.names)));
    list
}

/// Everything in the status but the conditions: capacity, allocatable,
/// addresses, node info, endpoints.
pub fn static_status(name: &str, ip: &str, cfg: &NodeConfig, facts: &HostFacts) -> NodeStatus {
    let alloc = allocatable(cfg, facts);
    let alloc_cpu_m = alloc.cpu_millis;
    let capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity(facts.cpus.to_string())),
        ("memory".to_string(), quantity_bytes(facts.memory_bytes)),
        (
            "ephemeral-storage".to_string(),
            quantity_bytes(facts.ephemeral_storage_bytes),
        ),
        ("pods".to_string(), Quantity(cfg.max_pods.to_string())),
    ]);
    let allocatable = BTreeMap::from([
        (
            "cpu".to_string(),
            Quantity(if alloc_cpu_m.is_multiple_of(1000) {
                (alloc_cpu_m / 1000).to_string()
            } else {
                format!("{alloc_cpu_m}m")
            }),
        ),
        ("memory".to_string(), quantity_bytes(alloc.memory_bytes)),
        (
            "ephemeral-storage".to_string(),
            quantity_bytes(alloc.ephemeral_storage_bytes),
        ),
        ("pods".to_string(), Quantity(cfg.max_pods.to_string())),
    ]);
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.into(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(cfg.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: facts.machine_id.clone(),
            system_uuid: facts.machine_id.clone(),
            boot_id: facts.boot_id.clone(),
            kernel_version: facts.kernel_version.clone(),
            os_image: facts.os_image.clone(),
            operating_system: "linux".into(),
            architecture: facts.arch.clone(),
            container_runtime_version: format!("systemd://{}", facts.systemd_version),
            kubelet_version: format!("unitlet/v{}", env!("CARGO_PKG_VERSION")),
            kube_proxy_version: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The four kubelet conditions: the pressure conditions as the eviction
/// manager sees them (with the kubelet's reasons and messages), and Ready
/// from whether systemd answers. A condition keeps its
/// `lastTransitionTime` from `previous` while its status is unchanged;
/// `lastHeartbeatTime` is `now`.
pub fn conditions(
    pressure: Conditions,
    systemd: &Result<(), String>,
    previous: &[NodeCondition],
    now: Timestamp,
) -> Vec<NodeCondition> {
    let mut out = Vec::new();
    let mut push = |kind: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let since = previous
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        out.push(NodeCondition {
            type_: kind.into(),
            status,
            reason: Some(reason.into()),
            message: Some(message),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        });
    };
    for p in Pressure::ALL {
        let on = pressure.get(p);
        push(p.type_(), on, p.reason(on), p.message(on).into());
    }
    match systemd {
        Ok(()) => push(
            "Ready",
            true,
            "KubeletReady",
            "unitlet is posting ready status; systemd answers".into(),
        ),
        Err(why) => push(
            "Ready",
            false,
            "SystemdUnreachable",
            format!("systemd does not answer over D-Bus: {why}"),
        ),
    }
    out
}

/// The node's taints with the pressure taints as `pressure` says: the
/// NoSchedule taint of each pressure that holds is added unless a taint of
/// that key is there already (the controller manager adds the same ones);
/// the taint of a pressure that no longer holds is removed only if this
/// agent added it (`ours`). Returns the taints and the keys now ours, or
/// `None` when nothing changes.
pub fn pressure_taints(
    existing: &[Taint],
    pressure: Conditions,
    ours: &BTreeSet<String>,
) -> Option<(Vec<Taint>, BTreeSet<String>)> {
    let mut taints = existing.to_vec();
    let mut mine = ours.clone();
    for p in Pressure::ALL {
        let key = p.taint_key();
        let present = taints.iter().any(|t| t.key == key);
        if pressure.get(p) {
            if !present {
                taints.push(Taint {
                    key: key.into(),
                    value: None,
                    effect: "NoSchedule".into(),
                    time_added: None,
                });
                mine.insert(key.into());
            }
        } else if mine.remove(key) {
            taints.retain(|t| !(t.key == key && t.effect == "NoSchedule"));
        }
    }
    (taints != existing).then_some((taints, mine))
}

/// Whether two condition lists differ in anything but heartbeat times.
pub fn conditions_changed(a: &[NodeCondition], b: &[NodeCondition]) -> bool {
    let key = |c: &NodeCondition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.last_transition_time.clone(),
        )
    };
    a.len() != b.len() || a.iter().zip(b).any(|(x, y)| key(x) != key(y))
}

/// Reads the host facts (files under /proc, /etc and a statvfs).
pub fn read_host_facts(state_dir: &std::path::Path, systemd_version: String) -> HostFacts {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let memory_bytes = crate::host::meminfo("MemTotal").unwrap_or(0);
    let ephemeral_storage_bytes = crate::host::storage_bytes(state_dir);
    HostFacts {
        hostname: crate::host::hostname(),
        cpus: crate::host::cpus(),
        memory_bytes,
        ephemeral_storage_bytes,
        machine_id: read("/etc/machine-id"),
        boot_id: crate::host::boot_id(),
        kernel_version: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image,
        arch: go_arch(std::env::consts::ARCH),
        systemd_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "h".into(),
            cpus: 64,
            memory_bytes: 256 << 30,
            ephemeral_storage_bytes: 1 << 40,
            machine_id: "m".into(),
            boot_id: "b".into(),
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
            systemd_version: "252.39-1~deb12u1".into(),
        }
    }

    #[test]
    fn node_publishes_capacity_allocatable_labels_and_taint() {
        let cfg = NodeConfig::parse(
            "reserved: {cpu: 1500m, memory: 2Gi}\nlabels: {rack: r7}\ninstanceType: metal\n",
        )
        .unwrap();
        let n = node_object("n1", "10.0.0.5", &cfg, &facts());
        let st = n.status.unwrap();
        let cap = st.capacity.unwrap();
        let alloc = st.allocatable.unwrap();
        assert_eq!(cap["cpu"].0, "64");
        assert_eq!(cap["memory"].0, format!("{}Ki", 256u64 << 20));
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(alloc["cpu"].0, "62500m");
        assert_eq!(alloc["memory"].0, format!("{}Ki", 254u64 << 20));
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["type"], "virtual-kubelet");
        assert_eq!(labels["rack"], "r7");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "metal");
        let taints = n.spec.unwrap().taints.unwrap();
        assert_eq!(taints[0].key, "unitlet.io/provider");
        assert_eq!(taints[0].effect, "NoSchedule");
        let addrs = st.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.0.0.5");
        assert_eq!(addrs[1].type_, "Hostname");
        let info = st.node_info.unwrap();
        assert_eq!(info.operating_system, "linux");
        assert!(info.container_runtime_version.starts_with("systemd://252"));
        assert!(info.kubelet_version.starts_with("unitlet/v"));
        assert_eq!(
            st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            10250
        );
    }

    #[test]
    fn no_taints_when_configured_empty() {
        let cfg = NodeConfig::parse("taints: []\n").unwrap();
        assert!(node_object("n", "1.2.3.4", &cfg, &facts())
            .spec
            .unwrap()
            .taints
            .is_none());
    }

    #[test]
    fn conditions_follow_pressure_and_keep_transition_times() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let t1 = Timestamp::from_second(1_000_100).unwrap();
        let calm = Conditions::default();
        let c0 = conditions(calm, &Ok(()), &[], t0);
        let kinds: Vec<_> = c0
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
                ("Ready", "True", "KubeletReady")
            ]
        );
        assert_eq!(
            c0[0].message.as_deref(),
            Some("kubelet has sufficient memory available")
        );
        // Same state later: heartbeat moves, transition does not, no change.
        let c1 = conditions(calm, &Ok(()), &c0, t1);
        assert!(!conditions_changed(&c0, &c1));
        assert_eq!(c1[3].last_transition_time, Some(Time(t0)));
        assert_eq!(c1[3].last_heartbeat_time, Some(Time(t1)));
        // systemd gone and memory pressure: both change, transition now.
        let pressed = Conditions {
            memory: true,
            ..Default::default()
        };
        let c2 = conditions(pressed, &Err("connection refused".into()), &c1, t1);
        assert!(conditions_changed(&c1, &c2));
        assert_eq!(c2[3].status, "False");
        assert_eq!(c2[3].reason.as_deref(), Some("SystemdUnreachable"));
        assert_eq!(c2[3].last_transition_time, Some(Time(t1)));
        assert_eq!(c2[0].status, "True");
        assert_eq!(
            c2[0].reason.as_deref(),
            Some("KubeletHasInsufficientMemory")
        );
        assert_eq!(
            c2[0].message.as_deref(),
            Some("kubelet has insufficient memory available")
        );
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }
    }

    #[test]
    fn pressure_taints_are_added_once_and_only_ours_removed() {
        let config = vec![taint("unitlet.io/provider")];
        let disk = Conditions {
            disk: true,
            ..Default::default()
        };
        let (t1, ours) = pressure_taints(&config, disk, &BTreeSet::new()).unwrap();
        assert_eq!(t1.len(), 2);
        assert_eq!(t1[1].key, "node.kubernetes.io/disk-pressure");
        assert!(pressure_taints(&t1, disk, &ours).is_none(), "idempotent");
        // Memory pressure tainted by the controller manager: not ours.
        let mut theirs = t1.clone();
        theirs.push(taint("node.kubernetes.io/memory-pressure"));
        let both = Conditions {
            disk: true,
            memory: true,
            ..Default::default()
        };
        assert!(pressure_taints(&theirs, both, &ours).is_none());
        // Pressure gone: our disk taint goes, theirs and the config's stay.
        let (t2, ours) = pressure_taints(&theirs, Conditions::default(), &ours).unwrap();
        let keys: Vec<&str> = t2.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            ["unitlet.io/provider", "node.kubernetes.io/memory-pressure"]
        );
        assert!(ours.is_empty());
    }

    #[test]
    fn go_arch_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }
}
