//! The node's configuration file (`unitlet node --config FILE`).
//!
//! YAML with camelCase keys, like the kubelet's own configuration file, so
//! that an admin's habits carry over. Flags given on the command line
//! (`--node-name`, `--node-ip`, `--port`) override the file. Unknown keys are
//! refused: a typo must not silently fall back to a default.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The taint every unitlet node carries unless the config says otherwise, so
/// ordinary container workloads only land here when they tolerate it.
pub const DEFAULT_TAINT_KEY: &str = "unitlet.io/provider";

/// A taint as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaintConfig {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Resources held back from pods (`allocatable = capacity - reserved`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Reserved {
    /// CPU, as a Kubernetes quantity (`500m`, `1`).
    pub cpu: Option<String>,
    /// Memory, as a Kubernetes quantity (`1Gi`).
    pub memory: Option<String>,
    /// Ephemeral storage, as a Kubernetes quantity.
    pub ephemeral_storage: Option<String>,
}

/// The whole file. Every field is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Node name (default: the host name, lower-cased).
    pub node_name: Option<String>,
    /// Extra node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints; default one `unitlet.io/provider=systemd:NoSchedule`.
    /// An empty list removes it.
    pub taints: Option<Vec<TaintConfig>>,
    /// `node.kubernetes.io/instance-type` label.
    pub instance_type: Option<String>,
    /// Pod capacity (default 110, as the kubelet's).
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// Resources held back from pods.
    #[serde(default)]
    pub reserved: Reserved,
    /// The InternalIP to publish (default: the address of the default route).
    pub node_ip: Option<String>,
    /// Port of the kubelet API published in `daemonEndpoints` (default 10250).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Directory of static pod manifests (none by default).
    pub manifests: Option<PathBuf>,
    /// `text` or `json` (the `--log-format` flag wins).
    pub log_format: Option<String>,
    /// Hard eviction thresholds (the kubelet's `evictionHard`: signal to
    /// quantity or percentage); absent: the kubelet's defaults.
    pub eviction_hard: Option<BTreeMap<String, String>>,
    /// Soft eviction thresholds (`evictionSoft`).
    #[serde(default)]
    pub eviction_soft: BTreeMap<String, String>,
    /// How long each soft threshold must hold (`evictionSoftGracePeriod`,
    /// Go durations).
    #[serde(default)]
    pub eviction_soft_grace_period: BTreeMap<String, String>,
    /// How much beyond a threshold to reclaim (`evictionMinimumReclaim`).
    #[serde(default)]
    pub eviction_minimum_reclaim: BTreeMap<String, String>,
    /// How long a pressure condition outlives its last sighting
    /// (`evictionPressureTransitionPeriod`, default 5m).
    pub eviction_pressure_transition_period: Option<String>,
    /// Grace period of pods evicted for a soft threshold, seconds
    /// (`evictionMaxPodGracePeriod`, default 0).
    pub eviction_max_pod_grace_period: Option<i64>,
    /// Lease renewal interval in seconds (default 10; the lease lasts 40).
    #[serde(default = "default_lease_renew")]
    pub lease_renew_seconds: u32,
    /// Longest time between two node status writes, in seconds (default 60).
    #[serde(default = "default_status_period")]
    pub status_update_seconds: u32,
    /// Client requests per second towards the API server (default 50).
    #[serde(default = "default_qps")]
    pub api_qps: u32,
    /// Client burst above `apiQps` (default 100).
    #[serde(default = "default_burst")]
    pub api_burst: u32,
    /// Events per second sent to the API server, on a client of their own
    /// as the kubelet's (its `eventRecordQPS`, default 50), so a burst of
    /// events never delays status writes.
    #[serde(default = "default_qps", rename = "eventRecordQPS")]
    pub event_record_qps: u32,
    /// Event burst above `eventRecordQPS` (the kubelet's `eventBurst`, default 100).
    #[serde(default = "default_burst")]
    pub event_burst: u32,
    /// Image garbage collection starts above this percentage of the image
    /// store's file system (the kubelet's field; default 85, or the flag).
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<u8>,
    /// ... down to this percentage (default 80).
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<u8>,
    /// Images pulled more recently are never collected (`2m`, `120s`;
    /// default 2 minutes).
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Option<String>,
    /// Registries reached over plain HTTP (`host[:port]`).
    pub insecure_registries: Option<Vec<String>>,
    /// Largest unpacked image, and largest download, in bytes.
    pub image_max_bytes: Option<u64>,
    /// Largest image store (all images together), in bytes.
    pub image_store_max_bytes: Option<u64>,
}

fn default_max_pods() -> u32 {
    110
}
fn default_port() -> u16 {
    10250
}
fn default_lease_renew() -> u32 {
    10
}
fn default_status_period() -> u32 {
    60
}
fn default_qps() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}

impl Default for NodeConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML for this schema.
    #[error("config file {path}: {message}; see the README's node configuration section")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field.
        message: String,
    },
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })
    }

    /// Parses config text and checks values the schema cannot.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: NodeConfig = if text.trim().is_empty() {
            NodeConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        for (i, t) in cfg.taints.iter().flatten().enumerate() {
            if !matches!(
                t.effect.as_str(),
                "NoSchedule" | "PreferNoSchedule" | "NoExecute"
            ) {
                return Err(format!(
                    "taints[{i}].effect: {:?} is not NoSchedule, PreferNoSchedule or NoExecute",
                    t.effect
                ));
            }
        }
        for (field, q) in [
            ("reserved.cpu", &cfg.reserved.cpu),
            ("reserved.memory", &cfg.reserved.memory),
            ("reserved.ephemeralStorage", &cfg.reserved.ephemeral_storage),
        ] {
            if let Some(q) = q {
                let ok = if field == "reserved.cpu" {
                    crate::core::quantity::cpu_millis(q).is_ok()
                } else {
                    crate::core::quantity::bytes(q).is_ok()
                };
                if !ok {
                    return Err(format!("{field}: {q:?} is not a Kubernetes quantity"));
                }
            }
        }
        cfg.eviction_settings()
            .config()
            .map_err(|e| e.to_string())?;
        if let Some(f) = &cfg.log_format {
            if f != "text" && f != "json" {
                return Err(format!("logFormat: {f:?} is not text or json"));
            }
        }
        if cfg.lease_renew_seconds == 0
            || cfg.status_update_seconds == 0
            || cfg.api_qps == 0
            || cfg.event_record_qps == 0
        {
            return Err(
                "leaseRenewSeconds, statusUpdateSeconds, apiQps and eventRecordQPS must be positive"
                    .into(),
            );
        }
        Ok(cfg)
    }

    /// The eviction settings of the file (flags override them).
    pub fn eviction_settings(&self) -> crate::core::eviction::Settings {
        crate::core::eviction::Settings {
            hard: self.eviction_hard.clone(),
            soft: self.eviction_soft.clone(),
            soft_grace_period: self.eviction_soft_grace_period.clone(),
            minimum_reclaim: self.eviction_minimum_reclaim.clone(),
            pressure_transition_period: self.eviction_pressure_transition_period.clone(),
            max_pod_grace_period: self.eviction_max_pod_grace_period,
        }
    }

    /// The taints to publish.
    pub fn taints(&self) -> Vec<TaintConfig> {
        self.taints.clone().unwrap_or_else(|| {
            vec![TaintConfig {
                key: DEFAULT_TAINT_KEY.into(),
                value: "systemd".into(),
                effect: "NoSchedule".into(),
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = NodeConfig::parse("").unwrap();
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.port, 10250);
        assert_eq!(c.lease_renew_seconds, 10);
        assert_eq!(c.taints()[0].key, DEFAULT_TAINT_KEY);
        assert_eq!(c.taints()[0].effect, "NoSchedule");
    }

    #[test]
    fn full_file_parses() {
        let c = NodeConfig::parse(
            "nodeName: n1\nlabels: {rack: r7}\ntaints: []\nmaxPods: 300\n\
             reserved: {cpu: 500m, memory: 1Gi}\nnodeIp: 10.0.0.5\nport: 11250\n\
             manifests: /etc/unitlet/pods\ninstanceType: bare-metal\n",
        )
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert!(c.taints().is_empty());
        assert_eq!(c.max_pods, 300);
        assert_eq!(c.reserved.memory.as_deref(), Some("1Gi"));
        assert_eq!(c.port, 11250);
    }

    #[test]
    fn mistakes_are_refused_with_the_field() {
        let e = NodeConfig::parse("maxPod: 3\n").unwrap_err();
        assert!(e.contains("maxPod"), "{e}");
        let e = NodeConfig::parse("taints: [{key: a, effect: Never}]\n").unwrap_err();
        assert!(e.contains("taints[0].effect"), "{e}");
        let e = NodeConfig::parse("reserved: {memory: lots}\n").unwrap_err();
        assert!(e.contains("reserved.memory"), "{e}");
        let e = NodeConfig::parse("thresholds: {memoryAvailable: 1Gi}\n").unwrap_err();
        assert!(e.contains("thresholds"), "the old key is gone: {e}");
        let e = NodeConfig::parse("evictionHard: {memory.free: 1Gi}\n").unwrap_err();
        assert!(
            e.contains("evictionHard") && e.contains("memory.free"),
            "{e}"
        );
        let e = NodeConfig::parse("evictionSoft: {memory.available: 1Gi}\n").unwrap_err();
        assert!(e.contains("evictionSoftGracePeriod"), "{e}");
    }

    #[test]
    fn eviction_keys_are_the_kubelets() {
        let c = NodeConfig::parse(
            "evictionHard: {memory.available: 200Mi, nodefs.available: 5%}\n\
             evictionSoft: {memory.available: 1Gi}\n\
             evictionSoftGracePeriod: {memory.available: 1m30s}\n\
             evictionMinimumReclaim: {nodefs.available: 1Gi}\n\
             evictionPressureTransitionPeriod: 30s\n\
             evictionMaxPodGracePeriod: 20\n",
        )
        .unwrap();
        let e = c.eviction_settings().config().unwrap();
        assert_eq!(e.thresholds.len(), 3);
        assert_eq!(e.transition_period_us, 30_000_000);
        assert_eq!(e.max_pod_grace_period_s, 20);
        assert!(NodeConfig::default().eviction_settings().hard.is_none());
    }
}
