//! Node-pressure eviction, as the kubelet's eviction manager decides it
//! (`pkg/kubelet/eviction`): thresholds in the kubelet's syntax, the
//! signals they watch, the node conditions they raise (with the pressure
//! transition period), which pod goes first and what its status says.
//!
//! Pure: the agent observes the node ([`Observations`]) and the pods
//! ([`Candidate`]s) and calls [`step`] with the clock; the result says what
//! to publish and whom to evict. At most one pod is evicted per step, as
//! the kubelet evicts at most one per monitoring interval, so the next
//! observation sees what that eviction freed before another pod goes.

use super::observe::{condition, time_us};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, Pod, PodStatus, ResourceRequirements,
};
use std::collections::BTreeMap;
use std::fmt;

/// The pod status reason of an evicted pod (the kubelet's `eviction.Reason`).
pub const REASON: &str = "Evicted";

/// The reason of the `DisruptionTarget` condition the kubelet adds to a
/// pod it evicts (`v1.PodReasonTerminationByKubelet`).
pub const DISRUPTION_REASON: &str = "TerminationByKubelet";

/// Priority at and above which a pod is critical (`scheduling.SystemCriticalPriority`).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Grace period of a pod evicted for a hard threshold
/// (`immediateEvictionGracePeriodSeconds`).
pub const IMMEDIATE_GRACE_SECONDS: i64 = 1;

/// The kubelet's default pressure transition period (5 minutes).
pub const DEFAULT_TRANSITION_PERIOD_US: u64 = 300_000_000;

/// The kubelet's default hard thresholds (Linux), in its flag syntax.
pub const DEFAULT_HARD: &[(&str, &str)] = &[
    ("memory.available", "100Mi"),
    ("nodefs.available", "10%"),
    ("nodefs.inodesFree", "5%"),
    ("imagefs.available", "15%"),
];

/// What an eviction threshold watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// Node memory: capacity minus the root control group's working set.
    MemoryAvailable,
    /// Free bytes of the file system holding the state directory.
    NodeFsAvailable,
    /// Free inodes of that file system.
    NodeFsInodesFree,
    /// Free bytes of the file system holding the image store.
    ImageFsAvailable,
    /// Free inodes of that file system.
    ImageFsInodesFree,
    /// `pid_max` minus the processes running.
    PidAvailable,
}

/// Every signal, in the kubelet's spelling.
pub const SIGNALS: [Signal; 6] = [
    Signal::MemoryAvailable,
    Signal::NodeFsAvailable,
    Signal::NodeFsInodesFree,
    Signal::ImageFsAvailable,
    Signal::ImageFsInodesFree,
    Signal::PidAvailable,
];

impl Signal {
    /// The kubelet's name (`memory.available`, …).
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The signal named `name`, if unitlet supports it.
    pub fn parse(name: &str) -> Option<Signal> {
        SIGNALS.into_iter().find(|s| s.name() == name)
    }

    /// The resource an eviction for this signal reclaims, as the kubelet
    /// names it in its messages (`signalToResource`).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// The node condition this signal raises (`signalToNodeCondition`).
    pub fn condition(self) -> Pressure {
        match self {
            Signal::MemoryAvailable => Pressure::Memory,
            Signal::PidAvailable => Pressure::Pid,
            _ => Pressure::Disk,
        }
    }

    /// Bytes are printed as binary quantities, counts as decimal ones (as
    /// the kubelet's `resource.Quantity`s are).
    fn is_bytes(self) -> bool {
        matches!(
            self,
            Signal::MemoryAvailable | Signal::NodeFsAvailable | Signal::ImageFsAvailable
        )
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A node pressure condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    /// `MemoryPressure`.
    Memory,
    /// `DiskPressure`.
    Disk,
    /// `PIDPressure`.
    Pid,
}

impl Pressure {
    /// All three, in the order the kubelet lists them.
    pub const ALL: [Pressure; 3] = [Pressure::Memory, Pressure::Disk, Pressure::Pid];

    /// The condition type.
    pub fn type_(self) -> &'static str {
        match self {
            Pressure::Memory => "MemoryPressure",
            Pressure::Disk => "DiskPressure",
            Pressure::Pid => "PIDPressure",
        }
    }

    /// The kubelet's reason for the condition with status `on`
    /// (`pkg/kubelet/nodestatus/setters.go`).
    pub fn reason(self, on: bool) -> &'static str {
        match (self, on) {
            (Pressure::Memory, true) => "KubeletHasInsufficientMemory",
            (Pressure::Memory, false) => "KubeletHasSufficientMemory",
            (Pressure::Disk, true) => "KubeletHasDiskPressure",
            (Pressure::Disk, false) => "KubeletHasNoDiskPressure",
            (Pressure::Pid, true) => "KubeletHasInsufficientPID",
            (Pressure::Pid, false) => "KubeletHasSufficientPID",
        }
    }

    /// The kubelet's message for the condition with status `on`.
    pub fn message(self, on: bool) -> &'static str {
        match (self, on) {
            (Pressure::Memory, true) => "kubelet has insufficient memory available",
            (Pressure::Memory, false) => "kubelet has sufficient memory available",
            (Pressure::Disk, true) => "kubelet has disk pressure",
            (Pressure::Disk, false) => "kubelet has no disk pressure",
            (Pressure::Pid, true) => "kubelet has insufficient PID available",
            (Pressure::Pid, false) => "kubelet has sufficient PID available",
        }
    }

    /// The taint a node under this pressure carries (NoSchedule), the
    /// one the controller manager's taint-by-condition adds as well.
    pub fn taint_key(self) -> &'static str {
        match self {
            Pressure::Memory => "node.kubernetes.io/memory-pressure",
            Pressure::Disk => "node.kubernetes.io/disk-pressure",
            Pressure::Pid => "node.kubernetes.io/pid-pressure",
        }
    }
}

/// The three pressure conditions of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    /// `MemoryPressure`.
    pub memory: bool,
    /// `DiskPressure`.
    pub disk: bool,
    /// `PIDPressure`.
    pub pid: bool,
}

impl Conditions {
    /// Whether `p` holds.
    pub fn get(&self, p: Pressure) -> bool {
        match p {
            Pressure::Memory => self.memory,
            Pressure::Disk => self.disk,
            Pressure::Pid => self.pid,
        }
    }

    fn set(&mut self, p: Pressure) {
        match p {
            Pressure::Memory => self.memory = true,
            Pressure::Disk => self.disk = true,
            Pressure::Pid => self.pid = true,
        }
    }
}

/// A threshold's value: an absolute amount (bytes or a count) or a
/// fraction of the signal's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Bytes, inodes or pids.
    Quantity(u64),
    /// A fraction of capacity, 0..=1 (`10%` is 0.1).
    Percentage(f64),
}

impl Value {
    /// The amount for a signal of `capacity` (`GetThresholdQuantity`).
    pub fn amount(self, capacity: u64) -> u64 {
        match self {
            Value::Quantity(q) => q,
            // As the kubelet: float32 percentage times capacity, truncated.
            Value::Percentage(p) => (capacity as f64 * p) as u64,
        }
    }
}

/// One eviction threshold (`evictionapi.Threshold`).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// What it watches.
    pub signal: Signal,
    /// Met while the signal's available amount is below this.
    pub value: Value,
    /// How long it must be met before pods are evicted; zero for a hard
    /// threshold.
    pub grace_period_us: u64,
    /// How much beyond the threshold must be free again before it stops
    /// counting as met (`--eviction-minimum-reclaim`).
    pub min_reclaim: Option<Value>,
}

impl Threshold {
    /// A hard threshold acts at once.
    pub fn is_hard(&self) -> bool {
        self.grace_period_us == 0
    }

    /// Whether `obs` meets it; with `reclaim`, the minimum reclaim is added
    /// (`thresholdsMet` with `enforceMinReclaim`).
    fn met(&self, obs: &Observation, reclaim: bool) -> bool {
        let mut quantity = self.value.amount(obs.capacity);
        if reclaim {
            if let Some(m) = self.min_reclaim {
                quantity = quantity.saturating_add(m.amount(obs.capacity));
            }
        }
        quantity > obs.available
    }
}

/// The eviction manager's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Hard thresholds first, then soft ones.
    pub thresholds: Vec<Threshold>,
    /// A pressure condition stays true this long after it was last seen
    /// (`--eviction-pressure-transition-period`).
    pub transition_period_us: u64,
    /// Grace period of pods evicted for a soft threshold
    /// (`--eviction-max-pod-grace-period`).
    pub max_pod_grace_period_s: i64,
}

impl Default for Config {
    fn default() -> Self {
        Settings::default()
            .config()
            .expect("the kubelet's defaults parse")
    }
}

/// The eviction settings as written (flags or the node config file),
/// each map from signal name to value, before [`Settings::config`] checks
/// them. A `None` map takes the kubelet's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// `--eviction-hard` / `evictionHard`; `None`: [`DEFAULT_HARD`].
    pub hard: Option<BTreeMap<String, String>>,
    /// `--eviction-soft` / `evictionSoft`.
    pub soft: BTreeMap<String, String>,
    /// `--eviction-soft-grace-period` / `evictionSoftGracePeriod` (Go durations).
    pub soft_grace_period: BTreeMap<String, String>,
    /// `--eviction-minimum-reclaim` / `evictionMinimumReclaim`.
    pub minimum_reclaim: BTreeMap<String, String>,
    /// `--eviction-pressure-transition-period` (a Go duration); `None`: 5m.
    pub pressure_transition_period: Option<String>,
    /// `--eviction-max-pod-grace-period`, seconds; `None`: 0.
    pub max_pod_grace_period: Option<i64>,
}

/// A bad eviction setting: which flag (or config key) and signal, what was
/// given and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {what}")]
pub struct ConfigError {
    /// The flag (with the config key beside it).
    pub flag: &'static str,
    /// What is wrong and what is allowed.
    pub what: String,
}

const HARD_FLAG: &str = "--eviction-hard (evictionHard)";
const SOFT_FLAG: &str = "--eviction-soft (evictionSoft)";
const GRACE_FLAG: &str = "--eviction-soft-grace-period (evictionSoftGracePeriod)";
const RECLAIM_FLAG: &str = "--eviction-minimum-reclaim (evictionMinimumReclaim)";
const TRANSITION_FLAG: &str =
    "--eviction-pressure-transition-period (evictionPressureTransitionPeriod)";
const MAX_GRACE_FLAG: &str = "--eviction-max-pod-grace-period (evictionMaxPodGracePeriod)";

fn signal_of(flag: &'static str, name: &str) -> Result<Signal, ConfigError> {
    Signal::parse(name).ok_or_else(|| ConfigError {
        flag,
        what: format!(
            "unsupported eviction signal {name:?}; supported: {}",
            SIGNALS.map(Signal::name).join(", ")
        ),
    })
}

fn percentage(flag: &'static str, signal: &str, val: &str) -> Result<f64, ConfigError> {
    let p: f64 = val.trim_end_matches('%').parse().map_err(|_| ConfigError {
        flag,
        what: format!("{signal}: {val:?} is not a percentage (like 10%)"),
    })?;
    Ok(p / 100.0)
}

fn quantity(flag: &'static str, signal: &str, val: &str) -> Result<u64, ConfigError> {
    super::quantity::bytes(val).map_err(|_| ConfigError {
        flag,
        what: format!(
            "{signal}: {val:?} is neither a quantity (like 100Mi or 1000) nor a percentage (like 10%)"
        ),
    })
}

/// One `signal<value` statement's value (`parseThresholdStatement`);
/// `None` for `0%` and `100%`, which the kubelet ignores.
fn threshold_value(
    flag: &'static str,
    signal: &str,
    val: &str,
) -> Result<Option<Value>, ConfigError> {
    if val.ends_with('%') {
        if val == "0%" || val == "100%" {
            return Ok(None);
        }
        let p = percentage(flag, signal, val)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(ConfigError {
                flag,
                what: format!(
                    "{signal}: eviction percentage threshold must be between 0% and 100%: {val}"
                ),
            });
        }
        return Ok(Some(Value::Percentage(p)));
    }
    match quantity(flag, signal, val)? {
        0 => Err(ConfigError {
            flag,
            what: format!("{signal}: eviction threshold must be positive: {val}"),
        }),
        q => Ok(Some(Value::Quantity(q))),
    }
}

/// Parses a Go duration (`300ms`, `1m30s`, `5m`, `1h`) into µs.
pub fn parse_duration_us(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "h" => 3_600_000_000.0,
            "m" => 60_000_000.0,
            "s" => 1_000_000.0,
            "ms" => 1_000.0,
            "us" | "µs" => 1.0,
            "ns" => 0.001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Some(total as u64)
}

/// Parses the kubelet's `key<value,key<value` (thresholds) or
/// `key=value,key=value` (grace periods, minimum reclaim) flag syntax into
/// a map, naming `flag` in errors.
pub fn parse_map(
    flag: &'static str,
    text: &str,
    sep: char,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once(sep) else {
            return Err(ConfigError {
                flag,
                what: format!("{part:?} is not of the form signal{sep}value (like memory.available{sep}100Mi)"),
            });
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

impl Settings {
    /// Checks the settings and builds the manager's [`Config`]
    /// (`ParseThresholdConfig`): every signal must be one unitlet observes,
    /// every soft threshold needs a grace period.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let defaults: BTreeMap<String, String> = DEFAULT_HARD
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut thresholds = Vec::new();
        for (name, val) in self.hard.as_ref().unwrap_or(&defaults) {
            let signal = signal_of(HARD_FLAG, name)?;
            if let Some(value) = threshold_value(HARD_FLAG, name, val)? {
                thresholds.push(Threshold {
                    signal,
                    value,
                    grace_period_us: 0,
                    min_reclaim: None,
                });
            }
        }
        let mut graces = BTreeMap::new();
        for (name, val) in &self.soft_grace_period {
            let signal = signal_of(GRACE_FLAG, name)?;
            let us = parse_duration_us(val).ok_or_else(|| ConfigError {
                flag: GRACE_FLAG,
                what: format!("{name}: {val:?} is not a duration (like 90s or 1m30s)"),
            })?;
            graces.insert(signal, us);
        }
        for (name, val) in &self.soft {
            let signal = signal_of(SOFT_FLAG, name)?;
            let Some(grace) = graces.get(&signal) else {
                return Err(ConfigError {
                    flag: SOFT_FLAG,
                    what: format!("grace period must be specified for the soft eviction threshold {name} (--eviction-soft-grace-period / evictionSoftGracePeriod)"),
                });
            };
            if let Some(value) = threshold_value(SOFT_FLAG, name, val)? {
                thresholds.push(Threshold {
                    signal,
                    value,
                    // A zero grace would make it hard; the kubelet's too.
                    grace_period_us: *grace,
                    min_reclaim: None,
                });
            }
        }
        for (name, val) in &self.minimum_reclaim {
            let signal = signal_of(RECLAIM_FLAG, name)?;
            let value = if val.ends_with('%') {
                let p = percentage(RECLAIM_FLAG, name, val)?;
                if p <= 0.0 {
                    return Err(ConfigError {
                        flag: RECLAIM_FLAG,
                        what: format!(
                            "{name}: eviction percentage minimum reclaim must be positive: {val}"
                        ),
                    });
                }
                Value::Percentage(p)
            } else {
                Value::Quantity(quantity(RECLAIM_FLAG, name, val)?)
            };
            for t in thresholds.iter_mut().filter(|t| t.signal == signal) {
                t.min_reclaim = Some(value);
            }
        }
        let transition_period_us = match &self.pressure_transition_period {
            None => DEFAULT_TRANSITION_PERIOD_US,
            Some(t) => parse_duration_us(t).ok_or_else(|| ConfigError {
                flag: TRANSITION_FLAG,
                what: format!("{t:?} is not a duration (like 5m or 30s)"),
            })?,
        };
        let max_pod_grace_period_s = self.max_pod_grace_period.unwrap_or(0);
        if max_pod_grace_period_s < 0 {
            return Err(ConfigError {
                flag: MAX_GRACE_FLAG,
                what: format!("{max_pod_grace_period_s} is negative; give seconds, 0 or more"),
            });
        }
        Ok(Config {
            thresholds,
            transition_period_us,
            max_pod_grace_period_s,
        })
    }
}

/// One signal's observation: how much is available of how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Available now (bytes, inodes or pids).
    pub available: u64,
    /// The total, for percentage thresholds.
    pub capacity: u64,
}

/// Observations by signal; a signal the node cannot observe is absent and
/// its thresholds are never met.
pub type Observations = BTreeMap<Signal, Observation>;

/// What one pod uses now, for ranking; `None` parts were not measurable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Working set of the pod's slice, bytes.
    pub memory_bytes: Option<u64>,
    /// Working set per container, bytes (for the message).
    pub containers_memory: BTreeMap<String, u64>,
    /// Bytes the pod writes on the node's file system (its emptyDirs).
    pub disk_bytes: Option<u64>,
    /// Inodes used there.
    pub inodes: Option<u64>,
    /// Processes of the pod's slice.
    pub pids: Option<u64>,
}

/// An active pod the manager may evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Pod UID.
    pub uid: String,
    /// `spec.priority` (or the critical classes' for a static pod that
    /// names one), 0 without.
    pub priority: i32,
    /// Never evicted (`IsCriticalPod`'s priority rule).
    pub critical: bool,
    /// The pod's memory request, bytes.
    pub memory_request: u64,
    /// The pod's ephemeral-storage request, bytes.
    pub storage_request: u64,
    /// Each container's name and its memory request as written (for the
    /// message: "request is 64Mi").
    pub containers: Vec<(String, Option<String>)>,
    /// Measured usage; `None` when the pod could not be measured at all
    /// (ranked first, as the kubelet ranks a pod without stats).
    pub usage: Option<Usage>,
}

/// The priority of a well-known class, for pods that name one without
/// an admission controller having filled `spec.priority` (static pods).
fn class_priority(name: &str) -> Option<i32> {
    match name {
        "system-node-critical" => Some(SYSTEM_CRITICAL_PRIORITY + 1000),
        "system-cluster-critical" => Some(SYSTEM_CRITICAL_PRIORITY),
        _ => None,
    }
}

fn request_of(r: Option<&ResourceRequirements>, name: &str) -> Option<String> {
    let r = r?;
    r.requests
        .as_ref()
        .and_then(|m| m.get(name))
        .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)))
        .map(|q| q.0.clone())
}

fn storage_request(pod: &Pod) -> u64 {
    let Some(spec) = &pod.spec else { return 0 };
    let of = |r: Option<&ResourceRequirements>| {
        request_of(r, "ephemeral-storage")
            .and_then(|q| super::quantity::bytes(&q).ok())
            .unwrap_or(0)
    };
    let apps: u64 = spec
        .containers
        .iter()
        .map(|c| of(c.resources.as_ref()))
        .sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| of(c.resources.as_ref()))
        .max()
        .unwrap_or(0);
    apps.max(init)
}

impl Candidate {
    /// The candidate for `pod` with its measured `usage`.
    pub fn of(pod: &Pod, usage: Option<Usage>) -> Candidate {
        let spec = pod.spec.as_ref();
        let priority = spec
            .and_then(|s| s.priority)
            .or_else(|| {
                spec.and_then(|s| s.priority_class_name.as_deref())
                    .and_then(class_priority)
            })
            .unwrap_or(0);
        let containers = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .map(|c| (c.name.clone(), request_of(c.resources.as_ref(), "memory")))
                    .collect()
            })
            .unwrap_or_default();
        Candidate {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            priority,
            critical: priority >= SYSTEM_CRITICAL_PRIORITY,
            memory_request: super::resources::pod_requests(pod).1,
            storage_request: storage_request(pod),
            containers,
            usage,
        }
    }

    /// Usage and request of the resource `signal` reclaims.
    fn used(&self, signal: Signal) -> Option<(u64, u64)> {
        let u = self.usage.as_ref()?;
        match signal {
            Signal::MemoryAvailable => u.memory_bytes.map(|m| (m, self.memory_request)),
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => {
                u.disk_bytes.map(|d| (d, self.storage_request))
            }
            // Inodes have no request: 0, as the kubelet's lookup of an
            // absent request gives.
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => u.inodes.map(|i| (i, 0)),
            Signal::PidAvailable => u.pids.map(|p| (p, 0)),
        }
    }
}

/// Orders candidates for eviction under `signal`, first to go first: for
/// memory and disk, pods using more than they requested, then lower
/// priority, then more usage above the request (`rankMemoryPressure`,
/// `rankDiskPressureFunc`); for pids, lower priority, then more processes
/// (`rankPIDPressure`). A pod that could not be measured comes first.
pub fn rank(candidates: &mut [Candidate], signal: Signal) {
    use std::cmp::Ordering;
    let unmeasured = |c: &Candidate| c.used(signal).is_none();
    candidates.sort_by(|a, b| {
        // true first
        let first = |x: bool, y: bool| y.cmp(&x);
        let by_stats = first(unmeasured(a), unmeasured(b));
        if by_stats != Ordering::Equal || unmeasured(a) {
            return by_stats;
        }
        let (ua, ra) = a.used(signal).unwrap_or_default();
        let (ub, rb) = b.used(signal).unwrap_or_default();
        let above = |u: u64, r: u64| u as i128 - r as i128;
        match signal {
            Signal::PidAvailable => a.priority.cmp(&b.priority).then(ub.cmp(&ua)),
            _ => first(ua > ra, ub > rb)
                .then(a.priority.cmp(&b.priority))
                .then(above(ub, rb).cmp(&above(ua, ra))),
        }
    });
}

/// What the manager remembers between steps (`managerImpl`'s fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// When each threshold (by index in [`Config::thresholds`]) was first
    /// seen met, µs.
    pub first_observed_us: BTreeMap<usize, u64>,
    /// When each pressure was last seen, µs.
    pub pressure_last_observed_us: BTreeMap<Pressure, u64>,
    /// Thresholds met with their grace period over at the last step; they
    /// stay met until their minimum reclaim is free again.
    pub met: Vec<usize>,
}

/// A pod to evict, with the kubelet's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// Pod UID.
    pub uid: String,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_period_s: i64,
    /// The status message, the event's message.
    pub message: String,
    /// The signal it relieves (the `eviction_signal` of `kubelet_evictions`).
    pub signal: Signal,
}

/// What one step decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The state for the next step.
    pub state: State,
    /// The pressure conditions to publish (transition period applied).
    pub conditions: Conditions,
    /// Thresholds (indices) met now, whatever their grace period: for logs.
    pub met: Vec<usize>,
    /// The signal the manager is reclaiming, if any threshold's grace is over.
    pub reclaiming: Option<Signal>,
    /// The pod to evict now, if any.
    pub evict: Option<Eviction>,
}

/// Formats bytes as Go's `resource.Quantity` with `BinarySI` does: the
/// largest binary suffix that divides exactly, else plain.
pub fn format_binary(v: u64) -> String {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if v == 0 {
        return "0".into();
    }
    let mut n = v;
    let mut i = 0;
    while n.is_multiple_of(1024) && i < SUFFIXES.len() {
        n /= 1024;
        i += 1;
    }
    if i == 0 {
        v.to_string()
    } else {
        format!("{n}{}", SUFFIXES[i - 1])
    }
}

/// Formats a count as Go's `resource.Quantity` with `DecimalSI` does.
pub fn format_decimal(v: u64) -> String {
    const SUFFIXES: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    if v == 0 {
        return "0".into();
    }
    let mut n = v;
    let mut i = 0;
    while n.is_multiple_of(1000) && i < SUFFIXES.len() {
        n /= 1000;
        i += 1;
    }
    if i == 0 {
        v.to_string()
    } else {
        format!("{n}{}", SUFFIXES[i - 1])
    }
}

fn format_amount(signal: Signal, v: u64) -> String {
    if signal.is_bytes() {
        format_binary(v)
    } else {
        format_decimal(v)
    }
}

/// The kubelet's eviction message (`evictionMessage`): the resource, the
/// threshold and what was available, then each container using more
/// memory than it requested.
pub fn message(
    signal: Signal,
    candidate: &Candidate,
    cfg: &Config,
    met: &[usize],
    obs: &Observations,
) -> String {
    let resource = signal.resource();
    let mut m = format!("The node was low on resource: {resource}. ");
    // The first met threshold of the same resource, as getThresholdMetInfo.
    if let Some((t, o)) = met
        .iter()
        .filter_map(|&i| cfg.thresholds.get(i))
        .filter(|t| t.signal.resource() == resource)
        .find_map(|t| obs.get(&t.signal).map(|o| (t, o)))
    {
        m += &format!(
            "Threshold quantity: {}, available: {}. ",
            format_amount(t.signal, t.value.amount(o.capacity)),
            format_amount(t.signal, o.available)
        );
    }
    if signal == Signal::MemoryAvailable {
        if let Some(u) = &candidate.usage {
            for (name, request) in &candidate.containers {
                let Some(&used) = u.containers_memory.get(name) else {
                    continue;
                };
                let req = request
                    .as_deref()
                    .and_then(|q| super::quantity::bytes(q).ok())
                    .unwrap_or(0);
                if used > req {
                    m += &format!(
                        "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                        format_binary(used),
                        request.as_deref().unwrap_or("0")
                    );
                }
            }
        }
    }
    m
}

/// One pass of the eviction manager (`synchronize`): which thresholds are
/// met, the pressure conditions, and the one pod to evict, if any.
/// `candidates` are the active pods (not ended, not being stopped).
pub fn step(
    cfg: &Config,
    obs: &Observations,
    prev: &State,
    now_us: u64,
    candidates: &[Candidate],
) -> Step {
    // Met now, ignoring grace periods, plus those met before whose minimum
    // reclaim is not free yet.
    let mut met: Vec<usize> = cfg
        .thresholds
        .iter()
        .enumerate()
        .filter(|(_, t)| obs.get(&t.signal).is_some_and(|o| t.met(o, false)))
        .map(|(i, _)| i)
        .collect();
    for &i in &prev.met {
        let Some(t) = cfg.thresholds.get(i) else {
            continue;
        };
        if !met.contains(&i) && obs.get(&t.signal).is_some_and(|o| t.met(o, true)) {
            met.push(i);
        }
    }
    met.sort_unstable();
    let first_observed_us: BTreeMap<usize, u64> = met
        .iter()
        .map(|&i| (i, prev.first_observed_us.get(&i).copied().unwrap_or(now_us)))
        .collect();
    // Conditions: observed now, or within the transition period.
    let mut pressure_last_observed_us = prev.pressure_last_observed_us.clone();
    for &i in &met {
        pressure_last_observed_us.insert(cfg.thresholds[i].signal.condition(), now_us);
    }
    let mut conditions = Conditions::default();
    for (&p, &at) in &pressure_last_observed_us {
        if now_us.saturating_sub(at) < cfg.transition_period_us {
            conditions.set(p);
        }
    }
    // Thresholds whose grace period is over drive eviction.
    let acting: Vec<usize> = first_observed_us
        .iter()
        .filter(|(&i, &at)| now_us.saturating_sub(at) >= cfg.thresholds[i].grace_period_us)
        .map(|(&i, _)| i)
        .collect();
    let state = State {
        first_observed_us,
        pressure_last_observed_us,
        met: acting.clone(),
    };
    // Memory first (`byEvictionPriority`), then in configuration order.
    let chosen = acting
        .iter()
        .copied()
        .find(|&i| cfg.thresholds[i].signal == Signal::MemoryAvailable)
        .or_else(|| acting.first().copied());
    let mut evict = None;
    if let Some(i) = chosen {
        let t = &cfg.thresholds[i];
        let mut ranked: Vec<Candidate> = candidates.to_vec();
        rank(&mut ranked, t.signal);
        if let Some(c) = ranked.iter().find(|c| !c.critical) {
            let grace_period_s = if t.is_hard() {
                IMMEDIATE_GRACE_SECONDS
            } else {
                cfg.max_pod_grace_period_s
            };
            evict = Some(Eviction {
                uid: c.uid.clone(),
                grace_period_s,
                message: message(t.signal, c, cfg, &acting, obs),
                signal: t.signal,
            });
        }
    }
    Step {
        state,
        conditions,
        met,
        reclaiming: chosen.map(|i| cfg.thresholds[i].signal),
        evict,
    }
}

/// The eviction decision as persisted with the pod: a restarted agent
/// never starts an evicted pod again and reports the same status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evicted {
    /// When, µs since the epoch.
    pub at_us: u64,
    /// The kubelet's message.
    pub message: String,
    /// Seconds between SIGTERM and SIGKILL for its containers.
    pub grace_period_s: i64,
    /// The signal (`memory.available`, …).
    pub signal: String,
}

/// The message of a container that never ran or was not found when its
/// pod ended (the kubelet's `ContainerStatusUnknown`).
const UNKNOWN_MESSAGE: &str = "The container could not be located when the pod was terminated";

/// Makes `status` (as observed from the units) the status of an evicted
/// pod, as the kubelet reports one: phase `Failed`, reason `Evicted`, its
/// message, the `DisruptionTarget` condition, not ready; a container that
/// never got to run is terminated (`ContainerStatusUnknown`, 137).
pub fn amend_status(status: &mut PodStatus, ev: &Evicted) {
    status.phase = Some("Failed".into());
    status.reason = Some(REASON.into());
    status.message = Some(ev.message.clone());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    for c in conditions.iter_mut() {
        if matches!(c.type_.as_str(), "Ready" | "ContainersReady") && c.status == "True" {
            *c = condition(&c.type_, false, Some("PodFailed"), None, ev.at_us);
        }
    }
    conditions.retain(|c| c.type_ != "DisruptionTarget");
    conditions.insert(
        0,
        condition(
            "DisruptionTarget",
            true,
            Some(DISRUPTION_REASON),
            Some(ev.message.clone()),
            ev.at_us,
        ),
    );
    for list in [
        status.container_statuses.as_mut(),
        status.init_container_statuses.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        for c in list.iter_mut() {
            c.ready = false;
            if c.state.as_ref().is_some_and(|s| s.waiting.is_some()) {
                c.started = Some(false);
                c.state = Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some("ContainerStatusUnknown".into()),
                        message: Some(UNKNOWN_MESSAGE.into()),
                        finished_at: Some(time_us(ev.at_us)),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;

    fn cand(uid: &str, priority: i32, mem: Option<u64>, req: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            priority,
            critical: priority >= SYSTEM_CRITICAL_PRIORITY,
            memory_request: req,
            storage_request: req,
            containers: vec![("c".into(), (req > 0).then(|| format_binary(req)))],
            usage: mem.map(|m| Usage {
                memory_bytes: Some(m),
                containers_memory: BTreeMap::from([("c".into(), m)]),
                disk_bytes: Some(m),
                inodes: Some(m / MI),
                pids: Some(m / MI),
            }),
        }
    }

    fn mem_obs(available: u64) -> Observations {
        BTreeMap::from([(
            Signal::MemoryAvailable,
            Observation {
                available,
                capacity: 8 * GI,
            },
        )])
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let c = Config::default();
        let got: Vec<(Signal, Value)> = c.thresholds.iter().map(|t| (t.signal, t.value)).collect();
        assert_eq!(
            got,
            [
                (Signal::ImageFsAvailable, Value::Percentage(0.15)),
                (Signal::MemoryAvailable, Value::Quantity(100 * MI)),
                (Signal::NodeFsAvailable, Value::Percentage(0.1)),
                (Signal::NodeFsInodesFree, Value::Percentage(0.05)),
            ]
        );
        assert!(c.thresholds.iter().all(Threshold::is_hard));
        assert_eq!(c.transition_period_us, 300_000_000);
        assert_eq!(c.max_pod_grace_period_s, 0);
    }

    #[test]
    fn flag_syntax_parses_and_errors_name_the_flag() {
        let hard = parse_map(
            "--eviction-hard",
            "memory.available<1Gi, nodefs.available<20%",
            '<',
        )
        .unwrap();
        let s = Settings {
            hard: Some(hard),
            soft: parse_map("--eviction-soft", "memory.available<2Gi", '<').unwrap(),
            soft_grace_period: parse_map("g", "memory.available=1m30s", '=').unwrap(),
            minimum_reclaim: parse_map("r", "memory.available=500Mi,nodefs.available=5%", '=')
                .unwrap(),
            pressure_transition_period: Some("30s".into()),
            max_pod_grace_period: Some(20),
        };
        let c = s.config().unwrap();
        assert_eq!(c.thresholds.len(), 3);
        assert_eq!(c.thresholds[0].value, Value::Quantity(GI));
        assert_eq!(c.thresholds[0].min_reclaim, Some(Value::Quantity(500 * MI)));
        assert_eq!(c.thresholds[1].min_reclaim, Some(Value::Percentage(0.05)));
        assert_eq!(c.thresholds[2].grace_period_us, 90_000_000);
        assert_eq!(c.transition_period_us, 30_000_000);
        assert_eq!(c.max_pod_grace_period_s, 20);

        let err = |s: Settings| s.config().unwrap_err().to_string();
        let bad_signal = Settings {
            hard: Some(BTreeMap::from([("memory.free".into(), "1Gi".into())])),
            ..Default::default()
        };
        let e = err(bad_signal);
        assert!(
            e.contains("--eviction-hard")
                && e.contains("memory.free")
                && e.contains("pid.available"),
            "{e}"
        );
        let no_grace = Settings {
            soft: BTreeMap::from([("memory.available".into(), "1Gi".into())]),
            ..Default::default()
        };
        let e = err(no_grace);
        assert!(
            e.contains("--eviction-soft") && e.contains("grace period"),
            "{e}"
        );
        let bad_value = Settings {
            hard: Some(BTreeMap::from([("nodefs.available".into(), "lots".into())])),
            ..Default::default()
        };
        assert!(err(bad_value).contains("nodefs.available: \"lots\""));
        let over = Settings {
            hard: Some(BTreeMap::from([("nodefs.available".into(), "150%".into())])),
            ..Default::default()
        };
        assert!(err(over).contains("between 0% and 100%"));
        // 0% and 100% are ignored, as the kubelet does.
        let off = Settings {
            hard: Some(BTreeMap::from([("nodefs.available".into(), "0%".into())])),
            ..Default::default()
        };
        assert!(off.config().unwrap().thresholds.is_empty());
        assert!(parse_map("--eviction-hard", "memory.available=1Gi", '<')
            .unwrap_err()
            .to_string()
            .contains("signal<value"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_us("5m"), Some(300_000_000));
        assert_eq!(parse_duration_us("1m30s"), Some(90_000_000));
        assert_eq!(parse_duration_us("1.5h"), Some(5_400_000_000));
        assert_eq!(parse_duration_us("250ms"), Some(250_000));
        assert_eq!(parse_duration_us("0"), Some(0));
        assert_eq!(parse_duration_us("5"), None);
        assert_eq!(parse_duration_us("m"), None);
        assert_eq!(parse_duration_us(""), None);
    }

    #[test]
    fn quantities_print_as_go_does() {
        assert_eq!(format_binary(100 * MI), "100Mi");
        assert_eq!(format_binary(1536), "1536");
        assert_eq!(format_binary(3 * GI), "3Gi");
        assert_eq!(format_decimal(5000), "5k");
        assert_eq!(format_decimal(1234), "1234");
    }

    #[test]
    fn memory_ranking_is_the_kubelets() {
        // (usage, request, priority)
        let mut c = vec![
            cand("under-low", -10, Some(100 * MI), 200 * MI),
            cand("over-high-small", 1000, Some(300 * MI), 200 * MI),
            cand("over-high-big", 1000, Some(900 * MI), 200 * MI),
            cand("over-low", 0, Some(250 * MI), 200 * MI),
            cand("unmeasured", 5000, None, 0),
        ];
        rank(&mut c, Signal::MemoryAvailable);
        let order: Vec<&str> = c.iter().map(|c| c.uid.as_str()).collect();
        assert_eq!(
            order,
            [
                "unmeasured",
                "over-low",
                "over-high-big",
                "over-high-small",
                "under-low"
            ]
        );
    }

    #[test]
    fn pid_ranking_is_priority_then_processes() {
        let mut c = vec![
            cand("hi", 10, Some(900 * MI), 0),
            cand("lo-few", 0, Some(2 * MI), 0),
            cand("lo-many", 0, Some(50 * MI), 0),
        ];
        rank(&mut c, Signal::PidAvailable);
        let order: Vec<&str> = c.iter().map(|c| c.uid.as_str()).collect();
        assert_eq!(order, ["lo-many", "lo-few", "hi"]);
    }

    #[test]
    fn hard_threshold_evicts_one_pod_with_the_kubelets_message() {
        let cfg = Config::default();
        let pods = [
            cand("a", 0, Some(300 * MI), 100 * MI),
            cand("b", 0, Some(50 * MI), 100 * MI),
        ];
        let s = step(&cfg, &mem_obs(50 * MI), &State::default(), 1_000, &pods);
        assert!(s.conditions.memory && !s.conditions.disk && !s.conditions.pid);
        let e = s.evict.unwrap();
        assert_eq!(e.uid, "a");
        assert_eq!(e.grace_period_s, IMMEDIATE_GRACE_SECONDS);
        assert_eq!(e.signal, Signal::MemoryAvailable);
        assert_eq!(
            e.message,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container c was using 300Mi, request is 100Mi, has larger consumption of memory. "
        );
    }

    #[test]
    fn critical_pods_are_skipped_and_nobody_else_means_no_eviction() {
        let cfg = Config::default();
        let pods = [cand("crit", SYSTEM_CRITICAL_PRIORITY, Some(GI), 0)];
        let s = step(&cfg, &mem_obs(MI), &State::default(), 0, &pods);
        assert!(s.conditions.memory);
        assert_eq!(s.reclaiming, Some(Signal::MemoryAvailable));
        assert!(s.evict.is_none());
    }

    #[test]
    fn soft_threshold_waits_for_its_grace_and_uses_the_max_pod_grace() {
        let cfg = Settings {
            hard: Some(BTreeMap::new()),
            soft: BTreeMap::from([("memory.available".into(), "1Gi".into())]),
            soft_grace_period: BTreeMap::from([("memory.available".into(), "30s".into())]),
            max_pod_grace_period: Some(15),
            ..Default::default()
        }
        .config()
        .unwrap();
        let pods = [cand("a", 0, Some(GI), 0)];
        let s0 = step(&cfg, &mem_obs(512 * MI), &State::default(), 0, &pods);
        assert!(
            s0.conditions.memory,
            "the condition does not wait for the grace period"
        );
        assert!(s0.evict.is_none());
        let s1 = step(&cfg, &mem_obs(512 * MI), &s0.state, 29_000_000, &pods);
        assert!(s1.evict.is_none());
        let s2 = step(&cfg, &mem_obs(512 * MI), &s1.state, 30_000_000, &pods);
        assert_eq!(s2.evict.unwrap().grace_period_s, 15);
        // Recovered before the grace period: the clock starts over.
        let r = step(&cfg, &mem_obs(2 * GI), &s1.state, 29_500_000, &pods);
        assert!(r.state.first_observed_us.is_empty());
        let again = step(&cfg, &mem_obs(512 * MI), &r.state, 31_000_000, &pods);
        assert!(again.evict.is_none());
    }

    #[test]
    fn pressure_stays_for_the_transition_period() {
        let cfg = Config::default();
        let s0 = step(&cfg, &mem_obs(MI), &State::default(), 0, &[]);
        assert!(s0.conditions.memory);
        let s1 = step(&cfg, &mem_obs(4 * GI), &s0.state, 299_000_000, &[]);
        assert!(s1.conditions.memory, "within 5 min of the last pressure");
        assert!(s1.evict.is_none() && s1.reclaiming.is_none());
        let s2 = step(&cfg, &mem_obs(4 * GI), &s1.state, 300_000_000, &[]);
        assert!(!s2.conditions.memory);
    }

    #[test]
    fn minimum_reclaim_keeps_a_threshold_met() {
        let cfg = Settings {
            hard: Some(BTreeMap::from([(
                "memory.available".into(),
                "100Mi".into(),
            )])),
            minimum_reclaim: BTreeMap::from([("memory.available".into(), "200Mi".into())]),
            ..Default::default()
        }
        .config()
        .unwrap();
        let pods = [cand("a", 0, Some(GI), 0)];
        let s0 = step(&cfg, &mem_obs(50 * MI), &State::default(), 0, &pods);
        assert!(s0.evict.is_some());
        // 150Mi free: above the threshold, below threshold + reclaim.
        let s1 = step(&cfg, &mem_obs(150 * MI), &s0.state, 10_000_000, &pods);
        assert!(s1.evict.is_some());
        let s2 = step(&cfg, &mem_obs(400 * MI), &s1.state, 20_000_000, &pods);
        assert!(s2.evict.is_none());
    }

    #[test]
    fn disk_pressure_from_a_percentage_and_pid_pressure() {
        let cfg = Settings {
            hard: Some(BTreeMap::from([
                ("nodefs.available".into(), "10%".into()),
                ("pid.available".into(), "1000".into()),
            ])),
            ..Default::default()
        }
        .config()
        .unwrap();
        let obs = BTreeMap::from([
            (
                Signal::NodeFsAvailable,
                Observation {
                    available: 5 * MI,
                    capacity: 100 * MI,
                },
            ),
            (
                Signal::PidAvailable,
                Observation {
                    available: 500,
                    capacity: 4_194_304,
                },
            ),
        ]);
        let pods = [
            cand("quiet", 0, Some(MI), 0),
            cand("writer", 0, Some(80 * MI), 0),
        ];
        let s = step(&cfg, &obs, &State::default(), 0, &pods);
        assert!(s.conditions.disk && s.conditions.pid && !s.conditions.memory);
        let e = s.evict.unwrap();
        assert_eq!(e.uid, "writer");
        assert_eq!(e.signal, Signal::NodeFsAvailable);
        assert_eq!(
            e.message,
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10Mi, available: 5Mi. "
        );
    }

    #[test]
    fn candidate_from_a_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"uid": "u1"},
            "spec": {
                "priorityClassName": "system-node-critical",
                "containers": [{"name": "a", "resources": {"requests": {"memory": "64Mi", "ephemeral-storage": "1Gi"}}},
                               {"name": "b"}]
            }
        }))
        .unwrap();
        let c = Candidate::of(&pod, None);
        assert!(c.critical);
        assert_eq!(c.priority, SYSTEM_CRITICAL_PRIORITY + 1000);
        assert_eq!(c.memory_request, 64 * MI);
        assert_eq!(c.storage_request, GI);
        assert_eq!(c.containers[0], ("a".into(), Some("64Mi".into())));
    }

    #[test]
    fn evicted_status_is_failed_with_the_disruption_condition() {
        let mut st: PodStatus = serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]
        }))
        .unwrap();
        let ev = Evicted {
            at_us: 1_000_000,
            message: "The node was low on resource: memory. ".into(),
            grace_period_s: 1,
            signal: "memory.available".into(),
        };
        amend_status(&mut st, &ev);
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        assert_eq!(st.reason.as_deref(), Some("Evicted"));
        let conds = st.conditions.unwrap();
        let dt = conds
            .iter()
            .find(|c| c.type_ == "DisruptionTarget")
            .unwrap();
        assert_eq!(dt.reason.as_deref(), Some("TerminationByKubelet"));
        assert_eq!(dt.message.as_deref(), Some(ev.message.as_str()));
        assert!(conds
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False"));
        let cs = st.container_statuses.unwrap();
        assert!(cs.iter().all(|c| !c.ready));
        let t = cs[1].state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (t.exit_code, t.reason.as_deref()),
            (137, Some("ContainerStatusUnknown"))
        );
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            "[a-z]{1,6}",
            prop_oneof![
                Just(0i32),
                Just(1000),
                Just(-5),
                Just(SYSTEM_CRITICAL_PRIORITY),
                Just(SYSTEM_CRITICAL_PRIORITY + 1000)
            ],
            proptest::option::of(0u64..4096),
            0u64..4096,
        )
            .prop_map(|(uid, prio, used, req)| cand(&uid, prio, used.map(|u| u * MI), req * MI))
    }

    proptest! {
        /// Whatever the pressure and the pods, a critical pod is never chosen.
        #[test]
        fn critical_pods_are_never_evicted(
            mut pods in proptest::collection::vec(arb_candidate(), 0..8),
            avail in 0u64..(200 * MI),
            signal in prop_oneof![Just(Signal::MemoryAvailable), Just(Signal::NodeFsAvailable), Just(Signal::PidAvailable)],
        ) {
            for (i, p) in pods.iter_mut().enumerate() {
                p.uid = format!("p{i}");
            }
            let cfg = Settings {
                hard: Some(BTreeMap::from([(signal.name().to_string(), "100Mi".to_string())])),
                ..Default::default()
            }.config().unwrap();
            let obs = BTreeMap::from([(signal, Observation { available: avail, capacity: 8 * GI })]);
            let s = step(&cfg, &obs, &State::default(), 0, &pods);
            if let Some(e) = s.evict {
                let c = pods.iter().find(|c| c.uid == e.uid).unwrap();
                prop_assert!(!c.critical);
                prop_assert!(avail < 100 * MI);
            } else {
                prop_assert!(avail >= 100 * MI || pods.iter().all(|c| c.critical));
            }
        }

        /// Under memory pressure a measured pod within its request never
        /// ranks before one above it.
        #[test]
        fn under_request_never_before_over_request(
            mut pods in proptest::collection::vec(arb_candidate(), 0..10),
        ) {
            rank(&mut pods, Signal::MemoryAvailable);
            let over = |c: &Candidate| c.used(Signal::MemoryAvailable).map(|(u, r)| u > r);
            for (i, a) in pods.iter().enumerate() {
                for b in &pods[i + 1..] {
                    prop_assert!(!(over(a) == Some(false) && over(b) == Some(true)));
                }
            }
        }
    }
}
