//! Resource usage for `kubectl top`: the data behind the kubelet's
//! `GET /stats/summary` and `GET /metrics/resource`.
//!
//! metrics-server scrapes `/metrics/resource` (Prometheus text) on every
//! node; older versions and other tools read `/stats/summary` (JSON of
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1.Summary`). The kubelet fills both
//! from cAdvisor, which reads control groups; unitlet has no cAdvisor, so it
//! reads the same control group files itself, with cAdvisor's arithmetic, so
//! that the numbers mean what users of the real kubelet expect.
//!
//! Two layers, so the formatting can be tested without a host:
//!
//! - [`CgroupReader`] finds where the `cpu`/`memory` accounting lives (cgroup
//!   v2, v1, or the hybrid layout where systemd's unified tree carries no
//!   controllers) and reads a control group by the path systemd reports in a
//!   unit's `ControlGroup` property. It takes a root directory so tests can
//!   point it at a fake tree, as does [`CgroupSupport`].
//! - [`summary_json`] and [`resource_metrics`] turn [`NodeSample`] and
//!   [`PodSample`]s into the two wire formats; [`Rates`] turns cumulative CPU
//!   samples into the summary's `usageNanoCores`.
//!
//! What is measured, as the kubelet (through cAdvisor and runc's cgroup
//! library) does it:
//!
//! - CPU: cumulative core-nanoseconds of the control group: v2 `cpu.stat`
//!   `usage_usec` × 1000, v1 `cpuacct.usage`.
//! - Memory working set: usage minus inactive file pages, floored at 0: v2
//!   `memory.current` − `memory.stat` `inactive_file`, v1
//!   `memory.usage_in_bytes` − `total_inactive_file`. RSS is v2 `anon`, v1
//!   `total_rss`.
//! - The node is the root control group, not `/proc/stat` or `/proc/meminfo`:
//!   cAdvisor's root container. The v2 root has no `memory.current`; runc then
//!   takes usage as `anon + file` from the root `memory.stat`, and so do we.
//!   Node `availableBytes` is `MemTotal` − working set, as the kubelet uses
//!   the machine's capacity as the root container's limit.
//!
//! A unit only has its own control group in a hierarchy when systemd
//! accounts that resource for it (`CPUAccounting=`/`MemoryAccounting=` on
//! v1; on v2 `cpu.stat` always exists but `memory.current` needs the memory
//! controller enabled down the tree), and only when systemd may create
//! groups there at all. Some hosts never allow it: inside systemd-nspawn's
//! hybrid layout the v1 controllers are mounted read-only, LXC may not
//! delegate controllers. There `MemoryMax=`/`CPUQuota=`/`TasksMax=` are
//! silently not enforced, which [`CgroupSupport`] detects once at start so
//! the node can say so. For usage, [`CgroupReader::read`] then takes what
//! the control groups cannot give from the next best place: CPU from the
//! unified tree's `cpu.stat` (kept by the kernel for every v2 group,
//! controllers or not), else CPU and memory summed over the unit's
//! processes ([`super::procstats`], an approximation: shared memory counted
//! per process, page cache left out, CPU of some exited processes lost).
//! The control group stays the source wherever it exists, and the node is
//! always the root control group. With no source at all, reads give `None`
//! and the metric is left out, never reported as 0.
//!
//! metrics-server drops a whole pod from `kubectl top` when any of its
//! containers shows a CPU or memory value of 0 — including a container that
//! appears with only a start time — and drops the node likewise. The
//! formatters never invent values to avoid that; callers should list only
//! containers whose unit is running (the kubelet lists only containers that
//! have a control group).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value};

use super::procstats::ProcReader;

/// The `Content-Type` of [`resource_metrics`]' output: Prometheus text
/// exposition 0.0.4, what the kubelet's `promhttp` handler answers with.
pub const RESOURCE_METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Limits above this are "unlimited": the kernel rounds the v1 default
/// (`i64::MAX`) down to a page multiple, so the kubelet compares against
/// 2^62 instead of an exact value.
const MAX_MEMORY_SIZE: u64 = 1 << 62;

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

/// Where one controller's accounting lives; the file names differ per
/// version, so the version travels with the mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// A cgroup v1 hierarchy the controller is bound to, mounted here.
    V1(PathBuf),
    /// The cgroup v2 (unified) hierarchy, mounted here.
    V2(PathBuf),
}

/// Reads control groups on one host (or a fake tree under a test's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupReader {
    root: PathBuf,
    /// Where CPU usage is read; `None` when no hierarchy was found.
    pub cpu: Option<Hierarchy>,
    /// Where memory usage is read; `None` when no hierarchy was found.
    pub memory: Option<Hierarchy>,
    /// The cgroup v2 mount, also in the hybrid layout: the kernel keeps
    /// `usage_usec` in every v2 group's `cpu.stat` (Linux 4.15+) whether or
    /// not a controller is enabled there, so a unit that has no group in
    /// the v1 `cpuacct` hierarchy still has exact CPU figures here.
    pub unified: Option<PathBuf>,
    /// The last resort for a unit's usage: its processes.
    pub procs: ProcReader,
    /// Where CFS throttling is read: the v1 `cpu` controller (mounted
    /// apart from `cpuacct` on some hosts) or the v2 tree.
    pub cpu_ctl: Option<Hierarchy>,
    /// Where block I/O is read: the v1 `blkio` controller or the v2 tree.
    pub io: Option<Hierarchy>,
}

/// One reading of a control group. Each part is `None` when its files are
/// missing or unreadable, so a consumer can leave the metric out instead of
/// reporting a made-up 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupUsage {
    /// When the files were read; the samples carry it as their `time`.
    pub time: Timestamp,
    /// Cumulative CPU time, in core-nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory figures; all come from one `memory.stat` read.
    pub memory: Option<MemoryUsage>,
    /// What only cAdvisor's series need, filled by
    /// [`CgroupReader::read_full`] (left empty by the other reads, which
    /// `kubectl top` scrapes and which need none of it).
    pub more: MoreUsage,
}

/// The figures of a control group beyond CPU and memory usage, each
/// `None` when it cannot be read, so the series is left out rather than
/// reported as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoreUsage {
    /// Cumulative time the group was throttled by its CPU quota, in
    /// nanoseconds (v2 `cpu.stat` `throttled_usec`, v1 `cpu.stat`
    /// `throttled_time`).
    pub throttled_ns: Option<u64>,
    /// OOM kills inside the group (v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`).
    pub oom_events: Option<u64>,
    /// Processes in the group and the groups below it (the tracking
    /// hierarchy's `cgroup.procs`, which exists with or without
    /// controllers).
    pub processes: Option<u64>,
    /// Bytes read and written per block device.
    pub io: Option<Vec<IoBytes>>,
}

/// Block I/O of a group on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoBytes {
    /// `/dev/<name>` as cAdvisor labels it; empty when the source does
    /// not say (summed from `/proc/<pid>/io`).
    pub device: String,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// Memory of one control group, in bytes, computed as cAdvisor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryUsage {
    /// All charged memory, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file pages (floored at 0): what the kernel could
    /// not drop cheaply, and what `kubectl top` and evictions look at.
    pub working_set_bytes: u64,
    /// Anonymous memory (v2 `anon`, v1 `total_rss`), when reported.
    pub rss_bytes: Option<u64>,
    /// The limit, when one is set (the node's is `MemTotal`).
    pub limit_bytes: Option<u64>,
    /// Page cache (v2 `file`, v1 `total_cache`), when reported.
    pub cache_bytes: Option<u64>,
    /// Cumulative minor page faults, when reported.
    pub page_faults: Option<u64>,
    /// Cumulative major page faults, when reported.
    pub major_page_faults: Option<u64>,
}

impl CgroupReader {
    /// Finds the hierarchies from `<root>/proc/self/mountinfo`: a v1
    /// hierarchy carrying the controller wins (in the hybrid layout the
    /// unified tree at `/sys/fs/cgroup/unified` has no controllers), else the
    /// v2 mount. Without a readable mountinfo, falls back to the usual
    /// locations under `<root>/sys/fs/cgroup`.
    pub fn detect(root: &Path) -> CgroupReader {
        let mounts = fs::read_to_string(root.join("proc/self/mountinfo"))
            .ok()
            .map(|text| cgroup_mounts(root, &text));
        let ((cpu, memory), unified) = match &mounts {
            Some(mounts) => (
                from_mounts(mounts),
                mounts.iter().find(|m| m.v2).map(|m| m.dir.clone()),
            ),
            None => (probe(root), probe_unified(root)),
        };
        let (cpu_ctl, io) = match &mounts {
            Some(mounts) => (controller(mounts, "cpu"), controller(mounts, "blkio")),
            None => (cpu.clone(), unified.clone().map(Hierarchy::V2)),
        };
        CgroupReader {
            root: root.to_path_buf(),
            cpu,
            memory,
            unified,
            procs: ProcReader::from_mounts(root, mounts.as_deref()),
            cpu_ctl,
            io,
        }
    }

    /// Reads the control group at `cgroup`, a path as systemd's
    /// `ControlGroup` property gives it (`/unitlet.slice/…/x.service`; `/`
    /// is the root). A path that climbs out with `..` reads as nothing.
    ///
    /// Where the unit has no group of its own in a hierarchy, the part that
    /// hierarchy would give comes from elsewhere, so that `kubectl top`
    /// still shows the node's pods: CPU from the unified tree's `cpu.stat`
    /// when there is one, then CPU and memory summed over the group's
    /// processes ([`ProcReader`]; an approximation, see
    /// [`super::procstats`]). Parts the control groups give are never
    /// replaced, and the root is only ever read from its control groups:
    /// the node is the root container, not a sum of processes.
    pub fn read(&self, cgroup: &str) -> CgroupUsage {
        let mut usage = self.read_groups(cgroup);
        if !cgroup.trim_matches('/').is_empty()
            && (usage.cpu_usage_ns.is_none() || usage.memory.is_none())
        {
            let procs = self.procs.read(cgroup);
            usage.cpu_usage_ns = usage.cpu_usage_ns.or(procs.cpu_usage_ns);
            usage.memory = usage.memory.or(procs.memory);
        }
        usage
    }

    /// CPU and memory from the control groups only, the unified tree's
    /// `cpu.stat` included (no process sums).
    fn read_groups(&self, cgroup: &str) -> CgroupUsage {
        let mut usage = self.read_cgroup(cgroup);
        if usage.cpu_usage_ns.is_none() && !cgroup.trim_matches('/').is_empty() {
            if let Some(unified) = &self.unified {
                let h = Hierarchy::V2(unified.clone());
                if self.cpu.as_ref() != Some(&h) {
                    usage.cpu_usage_ns = read_cpu(&h, cgroup);
                }
            }
        }
        usage
    }

    /// [`CgroupReader::read`] plus what cAdvisor's series need
    /// ([`MoreUsage`]): throttling and OOM kills from the control groups
    /// only (a process sum cannot tell them), the process count from the
    /// tracking hierarchy, block I/O from the `io`/`blkio` controller, else
    /// summed from the processes' `/proc/<pid>/io`. The group's processes
    /// are listed once for all of it.
    pub fn read_full(&self, cgroup: &str) -> CgroupUsage {
        let mut usage = self.read_groups(cgroup);
        let pids = self.procs.pids(cgroup);
        if usage.cpu_usage_ns.is_none() || usage.memory.is_none() {
            let procs = self.procs.read_pids(pids.as_ref());
            usage.cpu_usage_ns = usage.cpu_usage_ns.or(procs.cpu_usage_ns);
            usage.memory = usage.memory.or(procs.memory);
        }
        usage.more = self.read_more(cgroup);
        usage.more.processes = pids.as_ref().map(|p| p.len() as u64);
        if usage.more.io.is_none() {
            usage.more.io = pids.as_ref().and_then(|p| {
                let (r, w) = self.procs.io(p)?;
                Some(vec![IoBytes {
                    device: String::new(),
                    read_bytes: r,
                    write_bytes: w,
                }])
            });
        }
        usage
    }

    /// As [`CgroupReader::read_full`] from the control groups alone: no
    /// process is listed or read (the parts only processes would give are
    /// `None`). For a pod's slice whose containers were just read in full,
    /// whose sums give those parts without reading every process twice.
    pub fn read_full_groups(&self, cgroup: &str) -> CgroupUsage {
        let mut usage = self.read_groups(cgroup);
        usage.more = self.read_more(cgroup);
        usage
    }

    fn read_more(&self, cgroup: &str) -> MoreUsage {
        MoreUsage {
            throttled_ns: self
                .cpu_ctl
                .as_ref()
                .and_then(|h| read_throttled(h, cgroup)),
            oom_events: self.memory.as_ref().and_then(|h| read_oom_kills(h, cgroup)),
            processes: None,
            io: self
                .io
                .as_ref()
                .and_then(|h| read_io(&self.root, h, cgroup)),
        }
    }

    /// This reader without the hierarchies in which the group `prefix`
    /// (`/unitlet.slice`) has no accounting: on a host where units get no
    /// group of their own in a controller (see [`CgroupSupport`]) every
    /// read of a unit there would be a failed lookup of a deep path, which
    /// for a scrape of a thousand containers is most of its cost. Checked
    /// once per scrape, so a controller enabled meanwhile is picked up.
    pub fn within(&self, prefix: &str) -> CgroupReader {
        let has = |h: &Option<Hierarchy>, v2_file: &str| {
            h.clone().filter(|h| match h {
                Hierarchy::V1(m) => cgroup_dir(m, prefix).is_some_and(|d| d.is_dir()),
                Hierarchy::V2(m) => {
                    cgroup_dir(m, prefix).is_some_and(|d| d.join(v2_file).is_file())
                }
            })
        };
        let mut procs = self.procs.clone();
        procs
            .tracking
            .retain(|m| cgroup_dir(m, prefix).is_some_and(|d| d.is_dir()));
        CgroupReader {
            root: self.root.clone(),
            cpu: has(&self.cpu, "cpu.stat"),
            memory: has(&self.memory, "memory.stat"),
            unified: self
                .unified
                .clone()
                .filter(|u| cgroup_dir(u, prefix).is_some_and(|d| d.join("cpu.stat").is_file())),
            procs,
            cpu_ctl: has(&self.cpu_ctl, "cpu.max"),
            io: has(&self.io, "io.stat"),
        }
    }

    /// Reads the control group at `cgroup` from the cpu and memory
    /// hierarchies only, without [`CgroupReader::read`]'s fallbacks.
    pub fn read_cgroup(&self, cgroup: &str) -> CgroupUsage {
        let cpu_usage_ns = self.cpu.as_ref().and_then(|h| read_cpu(h, cgroup));
        let memory = self.memory.as_ref().and_then(|h| read_memory(h, cgroup));
        CgroupUsage {
            time: Timestamp::now(),
            cpu_usage_ns,
            memory,
            more: MoreUsage::default(),
        }
    }

    /// Reads the root control group as the node, with `MemTotal` as the
    /// memory limit so that `availableBytes` comes out as the kubelet's
    /// (capacity minus working set).
    pub fn node(&self) -> CgroupUsage {
        let mut usage = self.read_cgroup("/");
        let total = mem_total_bytes(&self.root);
        if let Some(m) = usage.memory.as_mut() {
            m.limit_bytes = total;
        }
        usage
    }

    /// The node's boot time (`btime` in `/proc/stat`): cAdvisor dates the
    /// root container no earlier than boot, so this stands in for the
    /// summary's node `startTime`.
    pub fn boot_time(&self) -> Option<Timestamp> {
        let text = fs::read_to_string(self.root.join("proc/stat")).ok()?;
        let secs = text
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<i64>()
            .ok()?;
        Timestamp::from_second(secs).ok()
    }
}

/// `MemTotal` from `<root>/proc/meminfo`, in bytes.
pub fn mem_total_bytes(root: &Path) -> Option<u64> {
    let text = fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
    kb.checked_mul(1024)
}

impl CgroupUsage {
    /// The CPU part as a summary/metrics sample (no rate yet: see [`Rates`]).
    pub fn cpu_sample(&self) -> Option<CpuSample> {
        self.cpu_usage_ns.map(|ns| CpuSample {
            time: self.time,
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(ns),
        })
    }

    /// The memory part as a summary/metrics sample. `availableBytes` is
    /// floored at 0 where Go's unsigned subtraction would wrap.
    pub fn memory_sample(&self) -> Option<MemorySample> {
        self.memory.as_ref().map(|m| MemorySample {
            time: self.time,
            available_bytes: m.limit_bytes.map(|l| l.saturating_sub(m.working_set_bytes)),
            usage_bytes: Some(m.usage_bytes),
            working_set_bytes: Some(m.working_set_bytes),
            rss_bytes: m.rss_bytes,
            page_faults: m.page_faults,
            major_page_faults: m.major_page_faults,
        })
    }
}

/// One cgroup file system in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    /// Where it is mounted on the host.
    pub mount_point: PathBuf,
    /// The same under the reader's root.
    pub dir: PathBuf,
    /// The unified hierarchy (`cgroup2`) rather than a v1 one.
    pub v2: bool,
    /// Mounted read-only: `ro` in the mount's own options (the 6th field)
    /// or the super block's. A container runtime that withholds control
    /// of a v1 controller leaves it visible but mounted so.
    pub read_only: bool,
    /// The super block options: a v1 hierarchy's controllers and `name=`.
    pub options: Vec<String>,
}

impl CgroupMount {
    pub(super) fn has(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// The cgroup mounts in `text` (mountinfo), in order.
pub(super) fn cgroup_mounts(root: &Path, text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional…] - <fstype> <source> <super opts>"
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut pre = pre.split(' ');
        let (Some(mount_point), Some(mount_opts)) = (pre.nth(4), pre.next()) else {
            continue;
        };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let super_opts = post.nth(1).unwrap_or("");
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let mount_point = unescape_mount(mount_point);
        out.push(CgroupMount {
            dir: under(root, &mount_point),
            mount_point,
            v2,
            read_only: mount_opts
                .split(',')
                .chain(super_opts.split(','))
                .any(|o| o == "ro"),
            options: super_opts.split(',').map(str::to_string).collect(),
        });
    }
    out
}

fn from_mounts(mounts: &[CgroupMount]) -> (Option<Hierarchy>, Option<Hierarchy>) {
    let v1 = |controller: &str| {
        mounts
            .iter()
            .find(|m| !m.v2 && m.has(controller))
            .map(|m| Hierarchy::V1(m.dir.clone()))
    };
    let v2 = mounts
        .iter()
        .find(|m| m.v2)
        .map(|m| Hierarchy::V2(m.dir.clone()));
    (v1("cpuacct").or_else(|| v2.clone()), v1("memory").or(v2))
}

/// The v1 hierarchy carrying `name`, else the v2 one.
fn controller(mounts: &[CgroupMount], name: &str) -> Option<Hierarchy> {
    mounts
        .iter()
        .find(|m| !m.v2 && m.has(name))
        .map(|m| Hierarchy::V1(m.dir.clone()))
        .or_else(|| {
            mounts
                .iter()
                .find(|m| m.v2)
                .map(|m| Hierarchy::V2(m.dir.clone()))
        })
}

fn probe(root: &Path) -> (Option<Hierarchy>, Option<Hierarchy>) {
    let base = root.join("sys/fs/cgroup");
    if base.join("cgroup.controllers").is_file() {
        return (Some(Hierarchy::V2(base.clone())), Some(Hierarchy::V2(base)));
    }
    let unified = base.join("unified");
    let unified = unified
        .join("cgroup.controllers")
        .is_file()
        .then_some(unified);
    let cpu = ["cpuacct", "cpu,cpuacct"]
        .iter()
        .map(|d| base.join(d))
        .find(|d| d.join("cpuacct.usage").is_file())
        .map(Hierarchy::V1)
        .or_else(|| unified.clone().map(Hierarchy::V2));
    let memory_dir = base.join("memory");
    let memory = if memory_dir.join("memory.usage_in_bytes").is_file() {
        Some(Hierarchy::V1(memory_dir))
    } else {
        unified.map(Hierarchy::V2)
    };
    (cpu, memory)
}

fn probe_unified(root: &Path) -> Option<PathBuf> {
    let base = root.join("sys/fs/cgroup");
    [base.clone(), base.join("unified")]
        .into_iter()
        .find(|d| d.join("cgroup.controllers").is_file())
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mount(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// `abs` (an absolute path on the host) under `root`.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// The directory of `cgroup` in a hierarchy mounted at `mount`; `None` for a
/// path that is not a plain descent (`..`), which systemd never reports.
pub(super) fn cgroup_dir(mount: &Path, cgroup: &str) -> Option<PathBuf> {
    let rel = Path::new(cgroup.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(mount.join(rel))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A flat-keyed file (`memory.stat`, `cpu.stat`): `key value` per line.
/// One key of a flat-keyed file, without building the whole map (the
/// scrape of a thousand containers reads a few of these each).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read_keyed(path: &Path) -> Option<HashMap<String, u64>> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

fn read_cpu(h: &Hierarchy, cgroup: &str) -> Option<u64> {
    match h {
        Hierarchy::V1(mount) => read_u64(&cgroup_dir(mount, cgroup)?.join("cpuacct.usage")),
        Hierarchy::V2(mount) => {
            read_key(&cgroup_dir(mount, cgroup)?.join("cpu.stat"), "usage_usec")?.checked_mul(1000)
        }
    }
}

fn read_throttled(h: &Hierarchy, cgroup: &str) -> Option<u64> {
    match h {
        Hierarchy::V1(mount) => read_key(
            &cgroup_dir(mount, cgroup)?.join("cpu.stat"),
            "throttled_time",
        ),
        Hierarchy::V2(mount) => read_key(
            &cgroup_dir(mount, cgroup)?.join("cpu.stat"),
            "throttled_usec",
        )?
        .checked_mul(1000),
    }
}

fn read_oom_kills(h: &Hierarchy, cgroup: &str) -> Option<u64> {
    let (dir, file) = match h {
        Hierarchy::V1(mount) => (cgroup_dir(mount, cgroup)?, "memory.oom_control"),
        Hierarchy::V2(mount) => (cgroup_dir(mount, cgroup)?, "memory.events"),
    };
    read_key(&dir.join(file), "oom_kill")
}

/// Bytes read and written per device: v2 `io.stat` (`8:0 rbytes=… wbytes=…`),
/// v1 `blkio.throttle.io_service_bytes_recursive` (`8:0 Read …`), which
/// count also what the kernel issues for the group without a throttle set,
/// as cAdvisor reads them. Devices are named from `/sys/dev/block`.
fn read_io(root: &Path, h: &Hierarchy, cgroup: &str) -> Option<Vec<IoBytes>> {
    let mut by_dev: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    match h {
        Hierarchy::V2(mount) => {
            let text = fs::read_to_string(cgroup_dir(mount, cgroup)?.join("io.stat")).ok()?;
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let Some(dev) = parts.next() else { continue };
                let e = by_dev.entry(dev.to_string()).or_default();
                for kv in parts {
                    match kv.split_once('=') {
                        Some(("rbytes", v)) => e.0 = v.parse().unwrap_or(0),
                        Some(("wbytes", v)) => e.1 = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        Hierarchy::V1(mount) => {
            let dir = cgroup_dir(mount, cgroup)?;
            let text = fs::read_to_string(dir.join("blkio.throttle.io_service_bytes_recursive"))
                .or_else(|_| fs::read_to_string(dir.join("blkio.throttle.io_service_bytes")))
                .ok()?;
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let [dev, op, v] = f[..] else { continue };
                let v: u64 = v.parse().unwrap_or(0);
                let e = by_dev.entry(dev.to_string()).or_default();
                match op {
                    "Read" => e.0 = v,
                    "Write" => e.1 = v,
                    _ => {}
                }
            }
        }
    }
    Some(
        by_dev
            .into_iter()
            .map(|(dev, (r, w))| IoBytes {
                device: device_name(root, &dev),
                read_bytes: r,
                write_bytes: w,
            })
            .collect(),
    )
}

/// `/dev/<DEVNAME>` of a block device `major:minor`, from its `uevent`;
/// the number itself when the device is unknown.
fn device_name(root: &Path, dev: &str) -> String {
    fs::read_to_string(root.join("sys/dev/block").join(dev).join("uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(|n| format!("/dev/{}", n.trim()))
        })
        .unwrap_or_else(|| dev.to_string())
}

fn read_memory(h: &Hierarchy, cgroup: &str) -> Option<MemoryUsage> {
    let (dir, v2) = match h {
        Hierarchy::V1(mount) => (cgroup_dir(mount, cgroup)?, false),
        Hierarchy::V2(mount) => (cgroup_dir(mount, cgroup)?, true),
    };
    // runc fails the whole memory read without memory.stat, so do we.
    let stat = read_keyed(&dir.join("memory.stat"))?;
    let get = |k: &str| stat.get(k).copied();
    let (usage, inactive_file, rss, limit, cache) = if v2 {
        let usage = match read_u64(&dir.join("memory.current")) {
            Some(u) => u,
            // The root has no memory.current; runc sums anon and file.
            None if cgroup.trim_matches('/').is_empty() => {
                get("anon")?.checked_add(get("file")?)?
            }
            None => return None,
        };
        let limit = fs::read_to_string(dir.join("memory.max"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        (usage, get("inactive_file"), get("anon"), limit, get("file"))
    } else {
        let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
        let limit = read_u64(&dir.join("memory.limit_in_bytes"));
        let rss = get("total_rss").or_else(|| get("rss"));
        let cache = get("total_cache").or_else(|| get("cache"));
        (usage, get("total_inactive_file"), rss, limit, cache)
    };
    Some(MemoryUsage {
        usage_bytes: usage,
        // cAdvisor subtracts only when the key is there.
        working_set_bytes: usage.saturating_sub(inactive_file.unwrap_or(0)),
        rss_bytes: rss,
        limit_bytes: limit.filter(|&l| l <= MAX_MEMORY_SIZE),
        cache_bytes: cache,
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
    })
}

// ---------------------------------------------------------------------------
// What the node can do
// ---------------------------------------------------------------------------

/// How the host's cgroup file systems are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v2 only, mounted at `/sys/fs/cgroup`.
    Unified,
    /// v1 controller hierarchies plus systemd's v2 tree elsewhere
    /// (`/sys/fs/cgroup/unified`), which carries no controllers.
    Hybrid,
    /// v1 hierarchies only.
    Legacy,
    /// No cgroup file system found (or no mountinfo to say).
    Unknown,
}

/// Why units cannot get a control group of their own for a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lack {
    /// No v1 hierarchy is bound to the controller.
    V1NotMounted,
    /// Every v1 hierarchy bound to it is mounted read-only.
    V1ReadOnly,
    /// The unified hierarchy is mounted read-only.
    V2ReadOnly,
    /// Not in the v2 root's `cgroup.controllers`: whoever set up this
    /// system (the host of a container) did not delegate it.
    V2NotDelegated,
    /// Available but not enabled in `cgroup.subtree_control` on the way to
    /// unitlet's slice.
    V2NotEnabled,
    /// No cgroup file system at all.
    NoCgroupFs,
}

impl Lack {
    fn phrase(self) -> &'static str {
        match self {
            Lack::V1NotMounted => "cgroup v1 controllers not mounted",
            Lack::V1ReadOnly => "cgroup v1 controllers read-only",
            Lack::V2ReadOnly => "cgroup v2 mounted read-only",
            Lack::V2NotDelegated => {
                "cgroup v2 controllers missing from the root cgroup.controllers"
            }
            Lack::V2NotEnabled => "cgroup v2 controllers not enabled in cgroup.subtree_control",
            Lack::NoCgroupFs => "no cgroup file system mounted",
        }
    }
}

/// Whether units can get a control group of their own for one controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// systemd can create the unit's group, so limits apply and usage is
    /// read from it.
    Own,
    /// It cannot; see [`Lack`].
    Lost(Lack),
}

impl Support {
    /// Units get their own group for this controller.
    pub fn is_own(self) -> bool {
        self == Support::Own
    }
}

/// What the node's control groups let systemd do for unitlet's units,
/// found once at start so that a node that cannot enforce `MemoryMax=`,
/// `CPUQuota=` or `TasksMax=` says so instead of failing silently: systemd
/// accepts those properties either way and starts the unit without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSupport {
    /// The host's layout.
    pub layout: CgroupLayout,
    /// The `memory` controller (`MemoryMax=`, memory usage).
    pub memory: Support,
    /// The `cpu` controller (`CPUQuota=`, `CPUWeight=`) or, on v1, either
    /// of `cpu` and `cpuacct` (the accounting one, where usage is read).
    pub cpu: Support,
    /// The `pids` controller (`TasksMax=`).
    pub pids: Support,
    /// A v2 tree keeps per-group CPU time in `cpu.stat` without any
    /// controller (Linux 4.15+), so CPU usage stays exact even when `cpu`
    /// is lost.
    pub unified_cpu_stat: bool,
}

/// The slice all of unitlet's pods live in, below the root.
const UNITLET_SLICE: &str = "unitlet.slice";

impl CgroupSupport {
    /// Reads `<root>/proc/self/mountinfo` and, for cgroup v2, the
    /// controller files under `<root>/sys/fs/cgroup`.
    ///
    /// cgroup v2 (mounted at `/sys/fs/cgroup`): a controller is usable when
    /// the root lists it in `cgroup.controllers` and enables it in
    /// `cgroup.subtree_control`, and, once `unitlet.slice` exists, the
    /// slice has it in its `cgroup.controllers`. Below the slice systemd
    /// enables controllers itself when a unit asks for them; the slice's own
    /// `cgroup.subtree_control` is not a test of capability, as it holds
    /// only what its current children need (`cpu` only for pods with CPU
    /// requests or limits, nothing once the last pod is gone).
    ///
    /// cgroup v1 (legacy or hybrid): a hierarchy bound to the controller,
    /// mounted read-write; for CPU one of `cpu` (limits) and `cpuacct`
    /// (accounting) is enough. A v2 tree beside the v1 hierarchies in the
    /// hybrid layout does not count: systemd takes controllers from v1
    /// there.
    pub fn detect(root: &Path) -> CgroupSupport {
        let mounts = fs::read_to_string(root.join("proc/self/mountinfo"))
            .map(|text| cgroup_mounts(root, &text))
            .unwrap_or_default();
        let unified_cpu_stat = mounts.iter().filter(|m| m.v2).any(|m| {
            fs::read_dir(&m.dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().join("cpu.stat").is_file())
            })
        });
        let sys = Path::new("/sys/fs/cgroup");
        if let Some(m) = mounts.iter().find(|m| m.v2 && m.mount_point == sys) {
            let words = |path: PathBuf| -> Vec<String> {
                fs::read_to_string(path)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            };
            let available = words(m.dir.join("cgroup.controllers"));
            let enabled = words(m.dir.join("cgroup.subtree_control"));
            let slice = m.dir.join(UNITLET_SLICE);
            let in_slice = slice
                .is_dir()
                .then(|| words(slice.join("cgroup.controllers")));
            let support = |c: &str| {
                let has = |list: &[String]| list.iter().any(|w| w == c);
                if m.read_only {
                    Support::Lost(Lack::V2ReadOnly)
                } else if !has(&available) {
                    Support::Lost(Lack::V2NotDelegated)
                } else if !has(&enabled) || in_slice.as_deref().is_some_and(|l| !has(l)) {
                    Support::Lost(Lack::V2NotEnabled)
                } else {
                    Support::Own
                }
            };
            return CgroupSupport {
                layout: CgroupLayout::Unified,
                memory: support("memory"),
                cpu: support("cpu"),
                pids: support("pids"),
                unified_cpu_stat,
            };
        }
        let layout = if mounts.iter().any(|m| m.v2) {
            CgroupLayout::Hybrid
        } else if mounts.is_empty() {
            CgroupLayout::Unknown
        } else {
            CgroupLayout::Legacy
        };
        let support = |controllers: &[&str]| {
            let bound: Vec<&CgroupMount> = mounts
                .iter()
                .filter(|m| !m.v2 && controllers.iter().any(|c| m.has(c)))
                .collect();
            if bound.iter().any(|m| !m.read_only) {
                Support::Own
            } else if !bound.is_empty() {
                Support::Lost(Lack::V1ReadOnly)
            } else if layout == CgroupLayout::Unknown {
                Support::Lost(Lack::NoCgroupFs)
            } else {
                Support::Lost(Lack::V1NotMounted)
            }
        };
        CgroupSupport {
            layout,
            memory: support(&["memory"]),
            cpu: support(&["cpu", "cpuacct"]),
            pids: support(&["pids"]),
            unified_cpu_stat,
        }
    }

    /// Units get their own memory, cpu and pids groups.
    pub fn complete(&self) -> bool {
        self.memory.is_own() && self.cpu.is_own() && self.pids.is_own()
    }

    /// The controllers units cannot have, with why.
    pub fn lost(&self) -> Vec<(&'static str, Lack)> {
        [
            ("memory", self.memory),
            ("cpu", self.cpu),
            ("pids", self.pids),
        ]
        .into_iter()
        .filter_map(|(name, s)| match s {
            Support::Own => None,
            Support::Lost(why) => Some((name, why)),
        })
        .collect()
    }

    /// One line for the log saying what the node loses, or `None` when
    /// nothing is missing, e.g. "units get no memory, cpu, pids control
    /// group of their own (cgroup v1 controllers read-only):
    /// MemoryMax/CPUQuota/TasksMax limits are not enforced and
    /// per-container CPU and memory usage are approximated from the units'
    /// processes".
    pub fn message(&self) -> Option<String> {
        let lost = self.lost();
        if lost.is_empty() {
            return None;
        }
        let names: Vec<&str> = lost.iter().map(|(n, _)| *n).collect();
        let mut reasons: Vec<(Lack, Vec<&str>)> = Vec::new();
        for (name, why) in &lost {
            match reasons.iter_mut().find(|(w, _)| w == why) {
                Some((_, ns)) => ns.push(name),
                None => reasons.push((*why, vec![name])),
            }
        }
        let why = match reasons.as_slice() {
            [(only, _)] => only.phrase().to_string(),
            _ => reasons
                .iter()
                .map(|(w, ns)| format!("{}: {}", ns.join(", "), w.phrase()))
                .collect::<Vec<_>>()
                .join("; "),
        };
        let limits: Vec<&str> = names
            .iter()
            .map(|n| match *n {
                "memory" => "MemoryMax",
                "cpu" => "CPUQuota",
                _ => "TasksMax",
            })
            .collect();
        let mut approximated = Vec::new();
        if !self.cpu.is_own() && !self.unified_cpu_stat {
            approximated.push("CPU");
        }
        if !self.memory.is_own() {
            approximated.push("memory");
        }
        let usage = match approximated.as_slice() {
            [] => String::new(),
            [one] => {
                format!(" and per-container {one} usage is approximated from the units' processes")
            }
            many => format!(
                " and per-container {} usage are approximated from the units' processes",
                many.join(" and ")
            ),
        };
        Some(format!(
            "units get no {} control group of their own ({why}): {} limits are not enforced{usage}",
            names.join(", "),
            limits.join("/"),
        ))
    }
}

// ---------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------

/// `CPUStats` of the summary API; `None` fields are omitted, as Go's nil
/// pointers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSample {
    /// When the counters were read.
    pub time: Timestamp,
    /// CPU use averaged since the previous sample, in nanocores; needs two
    /// samples (see [`Rates`]).
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time, in core-nanoseconds.
    pub usage_core_nano_seconds: Option<u64>,
}

/// `MemoryStats` of the summary API; `None` fields are omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySample {
    /// When the counters were read.
    pub time: Timestamp,
    /// Limit minus working set, when there is a limit.
    pub available_bytes: Option<u64>,
    /// All charged memory.
    pub usage_bytes: Option<u64>,
    /// What `kubectl top` shows.
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory.
    pub rss_bytes: Option<u64>,
    /// Cumulative minor page faults.
    pub page_faults: Option<u64>,
    /// Cumulative major page faults.
    pub major_page_faults: Option<u64>,
}

/// The node's part of a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSample {
    /// The Node object's name.
    pub node_name: String,
    /// When node-level collection started; JSON `null` when unknown.
    pub start_time: Option<Timestamp>,
    /// The root control group's CPU.
    pub cpu: Option<CpuSample>,
    /// The root control group's memory.
    pub memory: Option<MemorySample>,
}

/// One pod of a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSample {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID: tells a recreated pod of the same name apart.
    pub uid: String,
    /// When the pod started; JSON `null` when unknown.
    pub start_time: Option<Timestamp>,
    /// Running containers only: one listed without CPU or memory makes
    /// metrics-server drop the whole pod.
    pub containers: Vec<ContainerSample>,
    /// The pod slice's CPU (containers plus anything else in the slice).
    pub cpu: Option<CpuSample>,
    /// The pod slice's memory.
    pub memory: Option<MemorySample>,
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    /// The container's name in the pod spec.
    pub name: String,
    /// When this run of the container started; metrics-server uses it to
    /// tell a restarted container's counter reset from a real decrease.
    pub start_time: Option<Timestamp>,
    /// The unit's CPU.
    pub cpu: Option<CpuSample>,
    /// The unit's memory.
    pub memory: Option<MemorySample>,
}

// ---------------------------------------------------------------------------
// Rates
// ---------------------------------------------------------------------------

/// Turns cumulative CPU counters into `usageNanoCores`.
///
/// cAdvisor derives the rate from its own housekeeping samples; unitlet
/// samples only when scraped, so this remembers a baseline per key and
/// reports the average since it. The baseline moves forward only once it
/// is older than the window, so a second scraper arriving right after the
/// first still sees a rate over a meaningful interval rather than over a
/// few milliseconds. Counters going backwards (a restarted unit has a new
/// control group) give no rate and reset the baseline.
#[derive(Debug, Clone)]
pub struct Rates {
    window: SignedDuration,
    seen: HashMap<String, Baseline>,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Baseline {
    usage_ns: u64,
    time: Timestamp,
    generation: u64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates::new(SignedDuration::from_secs(10))
    }
}

impl Rates {
    /// A tracker whose baselines advance once older than `window`
    /// (cAdvisor's housekeeping runs about every 10 s; [`Rates::default`]).
    pub fn new(window: SignedDuration) -> Rates {
        Rates {
            window,
            seen: HashMap::new(),
            generation: 0,
        }
    }

    /// The average nanocores of `key` between its baseline and `cpu`;
    /// `None` on the first sight of a key, for a sample not after the
    /// baseline, or when the counter went backwards.
    pub fn observe(&mut self, key: &str, cpu: &CpuSample) -> Option<u64> {
        let usage = cpu.usage_core_nano_seconds?;
        let generation = self.generation;
        let fresh = Baseline {
            usage_ns: usage,
            time: cpu.time,
            generation,
        };
        let Some(base) = self.seen.get_mut(key) else {
            self.seen.insert(key.to_string(), fresh);
            return None;
        };
        base.generation = generation;
        let elapsed = cpu.time.duration_since(base.time);
        if usage < base.usage_ns || elapsed.is_negative() {
            *base = fresh;
            return None;
        }
        if elapsed.is_zero() {
            return None;
        }
        let rate = u128::from(usage - base.usage_ns) * 1_000_000_000 / elapsed.as_nanos() as u128;
        if elapsed >= self.window {
            *base = fresh;
        }
        Some(u64::try_from(rate).unwrap_or(u64::MAX))
    }

    /// Sets `usage_nano_cores` on every CPU sample of a scrape, then forgets
    /// keys the scrape did not mention (pods and containers that are gone).
    pub fn fill(&mut self, node: &mut NodeSample, pods: &mut [PodSample]) {
        fn one(rates: &mut Rates, key: String, cpu: &mut Option<CpuSample>) {
            if let Some(cpu) = cpu.as_mut() {
                cpu.usage_nano_cores = rates.observe(&key, cpu);
            }
        }
        one(self, "node".to_string(), &mut node.cpu);
        for pod in pods.iter_mut() {
            one(self, format!("pod/{}", pod.uid), &mut pod.cpu);
            for c in pod.containers.iter_mut() {
                one(
                    self,
                    format!("container/{}/{}", pod.uid, c.name),
                    &mut c.cpu,
                );
            }
        }
        let generation = self.generation;
        self.seen.retain(|_, b| b.generation == generation);
        self.generation += 1;
    }
}

// ---------------------------------------------------------------------------
// /stats/summary
// ---------------------------------------------------------------------------

/// The `Summary` JSON, limited to what unitlet measures (what the kubelet
/// returns for `?only_cpu_and_memory=true`). Field names and omissions
/// follow the Go types' JSON tags; times are `metav1.Time` (RFC 3339, UTC,
/// whole seconds).
pub fn summary_json(node: &NodeSample, pods: &[PodSample]) -> Value {
    let mut n = Map::new();
    n.insert("nodeName".into(), Value::String(node.node_name.clone()));
    n.insert("startTime".into(), time_json(node.start_time));
    insert_stats(&mut n, node.cpu.as_ref(), node.memory.as_ref());

    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            let mut pod_ref = Map::new();
            pod_ref.insert("name".into(), Value::String(p.name.clone()));
            pod_ref.insert("namespace".into(), Value::String(p.namespace.clone()));
            pod_ref.insert("uid".into(), Value::String(p.uid.clone()));
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    let mut m = Map::new();
                    m.insert("name".into(), Value::String(c.name.clone()));
                    m.insert("startTime".into(), time_json(c.start_time));
                    insert_stats(&mut m, c.cpu.as_ref(), c.memory.as_ref());
                    Value::Object(m)
                })
                .collect();
            let mut m = Map::new();
            m.insert("podRef".into(), Value::Object(pod_ref));
            m.insert("startTime".into(), time_json(p.start_time));
            m.insert("containers".into(), Value::Array(containers));
            insert_stats(&mut m, p.cpu.as_ref(), p.memory.as_ref());
            Value::Object(m)
        })
        .collect();

    let mut summary = Map::new();
    summary.insert("node".into(), Value::Object(n));
    summary.insert("pods".into(), Value::Array(pods));
    Value::Object(summary)
}

fn insert_stats(
    m: &mut Map<String, Value>,
    cpu: Option<&CpuSample>,
    memory: Option<&MemorySample>,
) {
    if let Some(c) = cpu {
        let mut o = Map::new();
        o.insert("time".into(), time_json(Some(c.time)));
        put(&mut o, "usageNanoCores", c.usage_nano_cores);
        put(&mut o, "usageCoreNanoSeconds", c.usage_core_nano_seconds);
        m.insert("cpu".into(), Value::Object(o));
    }
    if let Some(mem) = memory {
        let mut o = Map::new();
        o.insert("time".into(), time_json(Some(mem.time)));
        put(&mut o, "availableBytes", mem.available_bytes);
        put(&mut o, "usageBytes", mem.usage_bytes);
        put(&mut o, "workingSetBytes", mem.working_set_bytes);
        put(&mut o, "rssBytes", mem.rss_bytes);
        put(&mut o, "pageFaults", mem.page_faults);
        put(&mut o, "majorPageFaults", mem.major_page_faults);
        m.insert("memory".into(), Value::Object(o));
    }
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<u64>) {
    if let Some(v) = v {
        m.insert(key.into(), Value::from(v));
    }
}

/// `metav1.Time`'s JSON: RFC 3339 in UTC with whole seconds; the zero time
/// (here `None`) is `null`.
fn time_json(t: Option<Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Value::Null,
    }
}

// ---------------------------------------------------------------------------
// /metrics/resource
// ---------------------------------------------------------------------------

const NODE_CPU: (&str, &str) = (
    "node_cpu_usage_seconds_total",
    "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
);
const NODE_MEMORY: (&str, &str) = (
    "node_memory_working_set_bytes",
    "[STABLE] Current working set of the node in bytes",
);
const CONTAINER_CPU: (&str, &str) = (
    "container_cpu_usage_seconds_total",
    "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
);
const CONTAINER_MEMORY: (&str, &str) = (
    "container_memory_working_set_bytes",
    "[STABLE] Current working set of the container in bytes",
);
const CONTAINER_START: (&str, &str) = (
    "container_start_time_seconds",
    "[STABLE] Start time of the container since unix epoch in seconds",
);
const POD_CPU: (&str, &str) = (
    "pod_cpu_usage_seconds_total",
    "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
);
const POD_MEMORY: (&str, &str) = (
    "pod_memory_working_set_bytes",
    "[STABLE] Current working set of the pod in bytes",
);
const SCRAPE_ERROR: (&str, &str) = (
    "resource_scrape_error",
    "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
);

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<Sample>,
}

struct Sample {
    /// Sorted by label name, as client_golang writes them.
    labels: Vec<(&'static str, String)>,
    value: f64,
    timestamp_ms: Option<i64>,
}

impl Family {
    fn new((name, help): (&'static str, &'static str), kind: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }
}

/// The kubelet's `/metrics/resource` body, byte for byte as its
/// client_golang registry writes it: families sorted by name, empty ones
/// left out, series sorted by label values, CPU in seconds and memory in
/// bytes with millisecond timestamps of their reading, Go's shortest float
/// formatting. A series whose value is `None` is left out, as the kubelet
/// does for nil stats.
///
/// The deprecated `scrape_error` is not written: it was deprecated in
/// Kubernetes 1.29 and component-base hides a metric one minor release
/// after its deprecation, so kubelets from 1.30 on emit only
/// `resource_scrape_error`. Swap metrics are not measured.
pub fn resource_metrics(node: &NodeSample, pods: &[PodSample]) -> String {
    let mut container_cpu = Family::new(CONTAINER_CPU, "counter");
    let mut container_memory = Family::new(CONTAINER_MEMORY, "gauge");
    let mut container_start = Family::new(CONTAINER_START, "gauge");
    let mut node_cpu = Family::new(NODE_CPU, "counter");
    let mut node_memory = Family::new(NODE_MEMORY, "gauge");
    let mut pod_cpu = Family::new(POD_CPU, "counter");
    let mut pod_memory = Family::new(POD_MEMORY, "gauge");
    let mut scrape_error = Family::new(SCRAPE_ERROR, "gauge");

    push(&mut node_cpu, Vec::new(), cpu_seconds(node.cpu.as_ref()));
    push(
        &mut node_memory,
        Vec::new(),
        working_set(node.memory.as_ref()),
    );
    for pod in pods {
        for c in &pod.containers {
            let labels = || {
                vec![
                    ("container", c.name.clone()),
                    ("namespace", pod.namespace.clone()),
                    ("pod", pod.name.clone()),
                ]
            };
            // The kubelet skips start times at or before the epoch.
            if let Some(t) = c.start_time.filter(|t| t.as_second() > 0) {
                container_start.samples.push(Sample {
                    labels: labels(),
                    value: t.as_nanosecond() as f64 / 1e9,
                    timestamp_ms: None,
                });
            }
            push(&mut container_cpu, labels(), cpu_seconds(c.cpu.as_ref()));
            push(
                &mut container_memory,
                labels(),
                working_set(c.memory.as_ref()),
            );
        }
        let labels = || {
            vec![
                ("namespace", pod.namespace.clone()),
                ("pod", pod.name.clone()),
            ]
        };
        push(&mut pod_cpu, labels(), cpu_seconds(pod.cpu.as_ref()));
        push(&mut pod_memory, labels(), working_set(pod.memory.as_ref()));
    }
    scrape_error.samples.push(Sample {
        labels: Vec::new(),
        value: 0.0,
        timestamp_ms: None,
    });

    render(vec![
        container_cpu,
        container_memory,
        container_start,
        node_cpu,
        node_memory,
        pod_cpu,
        pod_memory,
        scrape_error,
    ])
}

/// The body the kubelet serves when it could not collect stats at all:
/// only `resource_scrape_error 1`.
pub fn resource_metrics_failed() -> String {
    let mut scrape_error = Family::new(SCRAPE_ERROR, "gauge");
    scrape_error.samples.push(Sample {
        labels: Vec::new(),
        value: 1.0,
        timestamp_ms: None,
    });
    render(vec![scrape_error])
}

fn push(f: &mut Family, labels: Vec<(&'static str, String)>, v: Option<(f64, Timestamp)>) {
    if let Some((value, time)) = v {
        f.samples.push(Sample {
            labels,
            value,
            timestamp_ms: Some(millis(time)),
        });
    }
}

fn cpu_seconds(cpu: Option<&CpuSample>) -> Option<(f64, Timestamp)> {
    let cpu = cpu?;
    Some((cpu.usage_core_nano_seconds? as f64 / 1e9, cpu.time))
}

fn working_set(memory: Option<&MemorySample>) -> Option<(f64, Timestamp)> {
    let memory = memory?;
    Some((memory.working_set_bytes? as f64, memory.time))
}

/// Go's `t.Unix()*1000 + t.Nanosecond()/1e6`: floor division, also before
/// the epoch.
fn millis(t: Timestamp) -> i64 {
    t.as_nanosecond().div_euclid(1_000_000) as i64
}

fn render(families: Vec<Family>) -> String {
    let mut out = String::new();
    for mut f in families {
        // client_golang keeps the first of two series with equal labels and
        // reports the second as an error; the kubelet serves what it can.
        let mut seen = HashSet::new();
        f.samples.retain(|s| seen.insert(s.labels.clone()));
        if f.samples.is_empty() {
            continue;
        }
        f.samples.sort_by(|a, b| {
            let a = a.labels.iter().map(|(_, v)| v);
            let b = b.labels.iter().map(|(_, v)| v);
            a.cmp(b)
        });
        let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&go_float(s.value));
            if let Some(ms) = s.timestamp_ms {
                let _ = write!(out, " {ms}");
            }
            out.push('\n');
        }
    }
    out
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values may hold anything; the text format needs `\`, `"` and
/// newlines escaped so a value cannot end the series line early.
fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `strconv.FormatFloat(v, 'g', -1, 64)` as expfmt writes values: the
/// shortest digits that round-trip, in exponent form when the decimal
/// exponent is below -4 or at least 6 (`1e+06`, `1.6243962483020916e+09`).
fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits as Go.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        // Rust's Display never uses an exponent and has the same digits.
        return format!("{v}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    const UNIT: &str =
        "/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice/unitlet_ns_p_c_abc.service";

    /// This dev machine's layout: v1 controllers (cpu and cpuacct mounted
    /// apart), systemd's own v1 tree and an empty unified tree.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn v1_hybrid_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        let cpu = format!("sys/fs/cgroup/cpuacct{UNIT}");
        let mem = format!("sys/fs/cgroup/memory{UNIT}");
        write(root, &format!("{cpu}/cpuacct.usage"), "123456789\n");
        write(root, &format!("{mem}/memory.usage_in_bytes"), "10000\n");
        write(
            root,
            &format!("{mem}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            root,
            &format!("{mem}/memory.stat"),
            "cache 5000\nrss 40\ninactive_file 1\npgfault 7\npgmajfault 2\n\
             total_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 99\n",
        );
        // The unified tree must not be used for either controller.
        write(
            root,
            &format!("sys/fs/cgroup/unified{UNIT}/cpu.stat"),
            "usage_usec 1\n",
        );

        let r = CgroupReader::detect(root);
        assert_eq!(
            r.cpu,
            Some(Hierarchy::V1(root.join("sys/fs/cgroup/cpuacct")))
        );
        assert_eq!(
            r.memory,
            Some(Hierarchy::V1(root.join("sys/fs/cgroup/memory")))
        );
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(123456789));
        assert_eq!(
            u.memory,
            Some(MemoryUsage {
                usage_bytes: 10000,
                working_set_bytes: 7000,
                rss_bytes: Some(4000),
                limit_bytes: None,
                cache_bytes: Some(5000),
                page_faults: Some(7),
                major_page_faults: Some(2),
            })
        );
    }

    #[test]
    fn v1_comounted_cpu_cpuacct() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        write(
            root,
            "sys/fs/cgroup/cpu,cpuacct/x.service/cpuacct.usage",
            "5\n",
        );
        let r = CgroupReader::detect(root);
        assert_eq!(r.read("/x.service").cpu_usage_ns, Some(5));
        assert_eq!(r.memory, None);
        assert_eq!(r.read("/x.service").memory, None);
    }

    #[test]
    fn v2_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let dir = format!("sys/fs/cgroup{UNIT}");
        write(
            root,
            &format!("{dir}/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write(root, &format!("{dir}/memory.current"), "8192\n");
        write(root, &format!("{dir}/memory.max"), "65536\n");
        write(
            root,
            &format!("{dir}/memory.stat"),
            "anon 4096\nfile 4096\ninactive_file 1024\npgfault 3\npgmajfault 0\n",
        );
        let r = CgroupReader::detect(root);
        assert_eq!(r.cpu, Some(Hierarchy::V2(root.join("sys/fs/cgroup"))));
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(2_500_000));
        let m = u.memory.clone().unwrap();
        assert_eq!((m.usage_bytes, m.working_set_bytes), (8192, 7168));
        assert_eq!(m.rss_bytes, Some(4096));
        assert_eq!(m.limit_bytes, Some(65536));
        assert_eq!(
            u.memory_sample().unwrap().available_bytes,
            Some(65536 - 7168)
        );

        // "max" is no limit.
        write(root, &format!("{dir}/memory.max"), "max\n");
        assert_eq!(r.read(UNIT).memory.unwrap().limit_bytes, None);
    }

    #[test]
    fn unified_only_hybrid_uses_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        write(
            root,
            "sys/fs/cgroup/unified/a.slice/cpu.stat",
            "usage_usec 7\n",
        );
        let r = CgroupReader::detect(root);
        assert_eq!(r.read("/a.slice").cpu_usage_ns, Some(7000));
    }

    #[test]
    fn mount_points_are_unescaped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "1 0 0:1 / /odd\\040place rw - cgroup cgroup rw,memory\n",
        );
        let r = CgroupReader::detect(root);
        assert_eq!(r.memory, Some(Hierarchy::V1(root.join("odd place"))));
        assert_eq!(unescape_mount("/a\\011"), PathBuf::from("/a\t"));
        assert_eq!(unescape_mount("/a\\01"), PathBuf::from("/a\\01"));
    }

    #[test]
    fn detection_without_mountinfo() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        let r = CgroupReader::detect(root);
        assert_eq!(r.memory, Some(Hierarchy::V2(root.join("sys/fs/cgroup"))));

        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", "1\n");
        write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", "1\n");
        let r = CgroupReader::detect(root);
        assert_eq!(
            r.cpu,
            Some(Hierarchy::V1(root.join("sys/fs/cgroup/cpu,cpuacct")))
        );
        assert_eq!(
            r.memory,
            Some(Hierarchy::V1(root.join("sys/fs/cgroup/memory")))
        );

        let tmp = tempfile::tempdir().unwrap();
        let r = CgroupReader::detect(tmp.path());
        assert_eq!((r.cpu, r.memory), (None, None));
    }

    #[test]
    fn missing_files_read_as_none_not_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        let r = CgroupReader::detect(root);
        let u = r.read(UNIT);
        assert_eq!((u.cpu_usage_ns, u.memory.clone()), (None, None));
        assert_eq!(u.cpu_sample(), None);
        assert_eq!(u.memory_sample(), None);

        // Usage without memory.stat: runc gives up, so do we.
        let mem = format!("sys/fs/cgroup/memory{UNIT}");
        write(root, &format!("{mem}/memory.usage_in_bytes"), "10\n");
        assert_eq!(r.read(UNIT).memory, None);
        // memory.stat without usage: nothing either.
        fs::remove_file(root.join(&mem).join("memory.usage_in_bytes")).unwrap();
        write(
            root,
            &format!("{mem}/memory.stat"),
            "total_inactive_file 1\n",
        );
        assert_eq!(r.read(UNIT).memory, None);
        // Garbage is not a number.
        write(
            root,
            &format!("sys/fs/cgroup/cpuacct{UNIT}/cpuacct.usage"),
            "x\n",
        );
        assert_eq!(r.read(UNIT).cpu_usage_ns, None);
    }

    #[test]
    fn working_set_saturates_and_needs_no_inactive_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        let mem = format!("sys/fs/cgroup/memory{UNIT}");
        write(root, &format!("{mem}/memory.usage_in_bytes"), "100\n");
        write(
            root,
            &format!("{mem}/memory.stat"),
            "total_inactive_file 500\n",
        );
        let r = CgroupReader::detect(root);
        let m = r.read(UNIT).memory.unwrap();
        assert_eq!((m.usage_bytes, m.working_set_bytes), (100, 0));
        // No inactive_file at all: cAdvisor reports the usage.
        write(root, &format!("{mem}/memory.stat"), "total_rss 5\n");
        assert_eq!(r.read(UNIT).memory.unwrap().working_set_bytes, 100);
    }

    #[test]
    fn parent_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        write(root, "sys/fs/cgroup/cpuacct.usage", "1\n");
        let r = CgroupReader::detect(root);
        assert_eq!(r.read("/../cpuacct.usage/..").cpu_usage_ns, None);
        assert_eq!(r.read("/a/../..").cpu_usage_ns, None);
    }

    #[test]
    fn node_v2_root_uses_anon_plus_file_and_memtotal() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        write(root, "sys/fs/cgroup/cpu.stat", "usage_usec 1000000\n");
        write(
            root,
            "sys/fs/cgroup/memory.stat",
            "anon 3000\nfile 5000\ninactive_file 2000\n",
        );
        write(
            root,
            "proc/meminfo",
            "MemTotal:       16 kB\nMemFree:        1 kB\n",
        );
        write(
            root,
            "proc/stat",
            "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n",
        );
        let r = CgroupReader::detect(root);
        let n = r.node();
        assert_eq!(n.cpu_usage_ns, Some(1_000_000_000));
        let m = n.memory.clone().unwrap();
        assert_eq!(
            (m.usage_bytes, m.working_set_bytes, m.rss_bytes),
            (8000, 6000, Some(3000))
        );
        assert_eq!(m.limit_bytes, Some(16 * 1024));
        assert_eq!(
            n.memory_sample().unwrap().available_bytes,
            Some(16 * 1024 - 6000)
        );
        assert_eq!(r.boot_time(), Some(ts("2023-11-14T22:13:20Z")));
        // A non-root v2 group without memory.current is not summed up.
        write(
            root,
            "sys/fs/cgroup/x.slice/memory.stat",
            "anon 1\nfile 1\n",
        );
        assert_eq!(r.read("/x.slice").memory, None);
    }

    #[test]
    fn node_v1_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        write(root, "sys/fs/cgroup/cpuacct/cpuacct.usage", "42\n");
        write(root, "sys/fs/cgroup/memory/memory.usage_in_bytes", "9000\n");
        write(
            root,
            "sys/fs/cgroup/memory/memory.stat",
            "total_inactive_file 1000\ntotal_rss 10\n",
        );
        let n = CgroupReader::detect(root).node();
        assert_eq!(n.cpu_usage_ns, Some(42));
        let m = n.memory.unwrap();
        assert_eq!(m.working_set_bytes, 8000);
        // No /proc/meminfo in this tree: no limit, no availableBytes.
        assert_eq!(m.limit_bytes, None);
    }

    /// A `/proc/<pid>/stat` line with the given command name, CPU ticks
    /// (utime, stime, cutime, cstime) and no page faults.
    fn proc_stat(pid: u32, comm: &str, [u, s, cu, cs]: [u64; 4]) -> String {
        format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 {u} {s} {cu} {cs} 20 0 1 0 1 2 3\n")
    }

    fn proc_status(rss_kb: u64, anon_kb: u64) -> String {
        format!(
            "Name:\tx\nVmRSS:\t{rss_kb:>8} kB\nRssAnon:\t{anon_kb:>8} kB\nRssFile:\t       4 kB\n"
        )
    }

    const POD: &str = "/unitlet.slice/unitlet-3.slice/unitlet-3-podabc.slice";

    /// A systemd host on cgroup v2 with the controllers delegated.
    const V2_MOUNTINFO: &str = "\
22 1 0:21 / /sys fs rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn v2_host(root: &Path, subtree_control: &str) {
        write(root, "proc/self/mountinfo", V2_MOUNTINFO);
        write(
            root,
            "sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        write(
            root,
            "sys/fs/cgroup/cgroup.subtree_control",
            subtree_control,
        );
        write(root, "sys/fs/cgroup/init.scope/cpu.stat", "usage_usec 1\n");
        write(
            root,
            "sys/fs/cgroup/unitlet.slice/cgroup.controllers",
            subtree_control,
        );
        write(
            root,
            "sys/fs/cgroup/unitlet.slice/cgroup.subtree_control",
            subtree_control,
        );
    }

    #[test]
    fn support_v2_host_reads_cgroup_files_not_proc() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        v2_host(root, "cpu memory pids\n");
        let s = CgroupSupport::detect(root);
        assert_eq!(
            s,
            CgroupSupport {
                layout: CgroupLayout::Unified,
                memory: Support::Own,
                cpu: Support::Own,
                pids: Support::Own,
                unified_cpu_stat: true,
            }
        );
        assert!(s.complete());
        assert_eq!(s.lost(), []);
        assert_eq!(s.message(), None);

        let dir = format!("sys/fs/cgroup{UNIT}");
        write(
            root,
            &format!("{dir}/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\n",
        );
        write(root, &format!("{dir}/memory.current"), "8192\n");
        write(
            root,
            &format!("{dir}/memory.stat"),
            "anon 4096\nfile 4096\ninactive_file 1024\npgfault 3\npgmajfault 0\n",
        );
        write(root, &format!("{dir}/cgroup.procs"), "4242\n");
        // The process would give quite different numbers.
        write(
            root,
            "proc/4242/stat",
            &proc_stat(4242, "app", [900, 900, 0, 0]),
        );
        write(root, "proc/4242/status", &proc_status(999_999, 1));

        let mut r = CgroupReader::detect(root);
        r.procs.clock_ticks = 100;
        assert_eq!(r.unified, Some(root.join("sys/fs/cgroup")));
        assert_eq!(r.procs.tracking, [root.join("sys/fs/cgroup")]);
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(2_500_000));
        assert_eq!(
            u.memory,
            Some(MemoryUsage {
                usage_bytes: 8192,
                working_set_bytes: 7168,
                rss_bytes: Some(4096),
                limit_bytes: None,
                cache_bytes: Some(4096),
                page_faults: Some(3),
                major_page_faults: Some(0),
            })
        );
    }

    /// The sandbox node: v1 controllers mounted read-only inside the
    /// container, systemd's own trees writable.
    const HYBRID_RO_MOUNTINFO: &str = "\
47 155 0:48 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:17 - tmpfs tmpfs ro,size=4096k,nr_inodes=1024,mode=755
50 47 0:36 / /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,pids
52 47 0:30 / /sys/fs/cgroup/cpuacct ro,nosuid,nodev,noexec,relatime shared:22 - cgroup cgroup rw,cpuacct
53 47 0:29 / /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime shared:23 - cgroup cgroup rw,cpu
54 47 0:32 / /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime shared:24 - cgroup cgroup rw,memory
56 47 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:26 - cgroup2 cgroup rw
57 47 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:27 - cgroup cgroup rw,name=systemd
";

    fn hybrid_ro_node(root: &Path) {
        write(root, "proc/self/mountinfo", HYBRID_RO_MOUNTINFO);
        write(root, "sys/fs/cgroup/unified/cgroup.controllers", "");
        write(root, "sys/fs/cgroup/unified/cgroup.procs", "1\n100\n");
        let unit = format!("sys/fs/cgroup/unified{UNIT}");
        write(root, &format!("{unit}/cgroup.procs"), "100\n101\n");
        // Units are Delegate=yes: the container made a group of its own.
        write(root, &format!("{unit}/payload/cgroup.procs"), "102\n");
        // Another container of the same pod.
        write(
            root,
            &format!("sys/fs/cgroup/unified{POD}/unitlet_ns_p_d_abc.service/cgroup.procs"),
            "200\n",
        );
        write(
            root,
            "proc/1/stat",
            &proc_stat(1, "systemd", [7000, 7000, 0, 0]),
        );
        write(root, "proc/1/status", &proc_status(10_000, 5_000));
        write(
            root,
            "proc/100/stat",
            &proc_stat(100, "sh", [150, 50, 10, 5]),
        );
        write(root, "proc/100/status", &proc_status(2048, 1024));
        // 101 exited after cgroup.procs was read: no /proc/101.
        write(
            root,
            "proc/102/stat",
            &proc_stat(102, "web ) (worker) 1", [30, 5, 0, 0]),
        );
        write(root, "proc/102/status", &proc_status(512, 256));
        write(root, "proc/200/stat", &proc_stat(200, "d", [1, 1, 0, 0]));
        write(root, "proc/200/status", &proc_status(4, 0));
    }

    #[test]
    fn full_read_on_a_v2_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "proc/self/mountinfo", V2_MOUNTINFO);
        let dir = format!("sys/fs/cgroup{UNIT}");
        // As the kernel writes them (Linux 6.1, controllers delegated).
        write(
            root,
            &format!("{dir}/cpu.stat"),
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\ncore_sched.force_idle_usec 0\n\
             nr_periods 40\nnr_throttled 3\nthrottled_usec 1500\nnr_bursts 0\nburst_usec 0\n",
        );
        write(root, &format!("{dir}/memory.current"), "8192\n");
        write(root, &format!("{dir}/memory.max"), "67108864\n");
        write(
            root,
            &format!("{dir}/memory.stat"),
            "anon 4096\nfile 2048\nkernel 2048\ninactive_file 1024\npgfault 3\npgmajfault 0\n",
        );
        write(
            root,
            &format!("{dir}/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        write(
            root,
            &format!("{dir}/io.stat"),
            "253:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n\
             7:1 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        );
        write(
            root,
            "sys/dev/block/253:0/uevent",
            "MAJOR=253\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n",
        );
        write(root, &format!("{dir}/cgroup.procs"), "10\n11\n");
        write(root, &format!("{dir}/payload/cgroup.procs"), "12\n");

        let r = CgroupReader::detect(root);
        let u = r.read_full(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(2_500_000));
        assert_eq!(u.memory.as_ref().unwrap().cache_bytes, Some(2048));
        assert_eq!(
            u.more,
            MoreUsage {
                throttled_ns: Some(1_500_000),
                oom_events: Some(1),
                processes: Some(3),
                io: Some(vec![
                    IoBytes {
                        device: "/dev/vda".into(),
                        read_bytes: 4096,
                        write_bytes: 512,
                    },
                    IoBytes {
                        device: "7:1".into(),
                        read_bytes: 100,
                        write_bytes: 0,
                    },
                ]),
            }
        );
        // The summary's reads leave them out.
        assert_eq!(r.read(UNIT).more, MoreUsage::default());
        // A group the controllers do not cover: nothing, not 0.
        write(root, "sys/fs/cgroup/other.service/cgroup.procs", "");
        let o = r.read_full("/other.service");
        assert_eq!(
            (o.more.throttled_ns, o.more.oom_events, o.more.io),
            (None, None, None)
        );
        assert_eq!(o.more.processes, Some(0));
    }

    #[test]
    fn full_read_on_v1_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            &format!(
                "{HYBRID_MOUNTINFO}42 31 0:39 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio\n"
            ),
        );
        write(
            root,
            &format!("sys/fs/cgroup/cpu{UNIT}/cpu.stat"),
            "nr_periods 10\nnr_throttled 2\nthrottled_time 123456\n",
        );
        write(
            root,
            &format!("sys/fs/cgroup/memory{UNIT}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        );
        write(
            root,
            &format!("sys/fs/cgroup/blkio{UNIT}/blkio.throttle.io_service_bytes_recursive"),
            "8:0 Read 700\n8:0 Write 300\n8:0 Sync 1000\n8:0 Async 0\n8:0 Total 1000\nTotal 1000\n",
        );
        write(
            root,
            &format!("sys/fs/cgroup/systemd{UNIT}/cgroup.procs"),
            "10\n",
        );
        let r = CgroupReader::detect(root);
        let m = r.read_full(UNIT).more;
        assert_eq!(m.throttled_ns, Some(123456));
        assert_eq!(m.oom_events, Some(3));
        assert_eq!(m.processes, Some(1));
        assert_eq!(
            m.io,
            Some(vec![IoBytes {
                device: "8:0".into(),
                read_bytes: 700,
                write_bytes: 300,
            }])
        );
    }

    #[test]
    fn full_read_on_hybrid_read_only_falls_back_to_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        hybrid_ro_node(root);
        let io = |r: u64, w: u64| {
            format!("rchar: 99999\nwchar: 99999\nsyscr: 1\nsyscw: 1\nread_bytes: {r}\nwrite_bytes: {w}\ncancelled_write_bytes: 0\n")
        };
        write(root, "proc/100/io", &io(4096, 100));
        write(root, "proc/102/io", &io(1, 2));
        let r = CgroupReader::detect(root);
        let m = r.read_full(UNIT).more;
        // 101 is listed but gone: counted as listed, as cAdvisor counts
        // cgroup.procs.
        assert_eq!(m.processes, Some(3));
        assert_eq!(
            m.io,
            Some(vec![IoBytes {
                device: String::new(),
                read_bytes: 4097,
                write_bytes: 102,
            }])
        );
        // No throttling or OOM count without the controllers' groups.
        assert_eq!((m.throttled_ns, m.oom_events), (None, None));
        // Within unitlet's slice, the read-only v1 hierarchies (which have
        // no group of it) are left out, and the figures stay the same.
        // (The kernel keeps cpu.stat in every v2 group.)
        write(
            root,
            "sys/fs/cgroup/unified/unitlet.slice/cpu.stat",
            "usage_usec 1\n",
        );
        let w = r.within("/unitlet.slice");
        assert_eq!((&w.cpu, &w.memory, &w.cpu_ctl), (&None, &None, &None));
        assert_eq!(w.unified, r.unified);
        assert_eq!(w.procs.tracking, [root.join("sys/fs/cgroup/unified")]);
        let (a, b) = (r.read_full(UNIT), w.read_full(UNIT));
        assert_eq!(
            (a.cpu_usage_ns, a.memory, a.more),
            (b.cpu_usage_ns, b.memory, b.more)
        );
        // The slice from its groups alone: CPU from the unified tree, the
        // rest left to the containers' sums.
        write(
            root,
            &format!("sys/fs/cgroup/unified{POD}/cpu.stat"),
            "usage_usec 9\n",
        );
        let p = w.read_full_groups(POD);
        assert_eq!(
            (p.cpu_usage_ns, p.memory, p.more),
            (Some(9000), None, MoreUsage::default())
        );
        // No readable io file: no io series.
        assert_eq!(
            r.read_full(&format!("{POD}/unitlet_ns_p_d_abc.service"))
                .more
                .io,
            None
        );
    }

    #[test]
    fn support_hybrid_read_only_falls_back_to_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        hybrid_ro_node(root);
        let s = CgroupSupport::detect(root);
        let lost = Support::Lost(Lack::V1ReadOnly);
        assert_eq!(
            s,
            CgroupSupport {
                layout: CgroupLayout::Hybrid,
                memory: lost,
                cpu: lost,
                pids: lost,
                unified_cpu_stat: false,
            }
        );
        assert!(!s.complete());
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no memory, cpu, pids control group of their own (cgroup v1 \
                 controllers read-only): MemoryMax/CPUQuota/TasksMax limits are not enforced \
                 and per-container CPU and memory usage are approximated from the units' \
                 processes"
            )
        );

        let mut r = CgroupReader::detect(root);
        r.procs.clock_ticks = 100;
        // The readers still point at the (empty) v1 hierarchies.
        assert_eq!(
            r.memory,
            Some(Hierarchy::V1(root.join("sys/fs/cgroup/memory")))
        );
        assert_eq!(r.read_cgroup(UNIT).cpu_usage_ns, None);
        let u = r.read(UNIT);
        // (150+50+10+5) + (30+5) ticks of 10 ms.
        assert_eq!(u.cpu_usage_ns, Some(250 * 10_000_000));
        assert_eq!(
            u.memory,
            Some(MemoryUsage {
                usage_bytes: (2048 + 512) * 1024,
                working_set_bytes: (2048 + 512) * 1024,
                rss_bytes: Some((1024 + 256) * 1024),
                limit_bytes: None,
                cache_bytes: None,
                page_faults: Some(0),
                major_page_faults: Some(0),
            })
        );
        let m = u.memory_sample().unwrap();
        assert_eq!(m.available_bytes, None);

        // The pod slice covers all its containers.
        let p = r.read(POD);
        assert_eq!(p.cpu_usage_ns, Some(252 * 10_000_000));
        assert_eq!(p.memory.unwrap().working_set_bytes, (2048 + 512 + 4) * 1024);

        // The node stays the root control group, never a sum of processes.
        let n = r.node();
        assert_eq!((n.cpu_usage_ns, n.memory), (None, None));
        assert_eq!(r.read("/").cpu_usage_ns, None);

        // A unit with no processes left reads as nothing, not 0.
        write(
            root,
            &format!("sys/fs/cgroup/unified{UNIT}/cgroup.procs"),
            "",
        );
        write(
            root,
            &format!("sys/fs/cgroup/unified{UNIT}/payload/cgroup.procs"),
            "",
        );
        let u = r.read(UNIT);
        assert_eq!((u.cpu_usage_ns, u.memory), (None, None));
    }

    #[test]
    fn hybrid_cpu_from_unified_cpu_stat_before_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        hybrid_ro_node(root);
        write(
            root,
            "sys/fs/cgroup/unified/init.scope/cpu.stat",
            "usage_usec 5\n",
        );
        write(
            root,
            &format!("sys/fs/cgroup/unified{UNIT}/cpu.stat"),
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n",
        );
        let s = CgroupSupport::detect(root);
        assert!(s.unified_cpu_stat);
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no memory, cpu, pids control group of their own (cgroup v1 \
                 controllers read-only): MemoryMax/CPUQuota/TasksMax limits are not enforced \
                 and per-container memory usage is approximated from the units' processes"
            )
        );
        let mut r = CgroupReader::detect(root);
        r.procs.clock_ticks = 100;
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(1_234_567_000));
        assert_eq!(
            u.memory.unwrap().working_set_bytes,
            (2048 + 512) * 1024,
            "memory still from the processes"
        );
        // Where cpuacct has the group, it stays the source.
        write(
            root,
            &format!("sys/fs/cgroup/cpuacct{UNIT}/cpuacct.usage"),
            "42\n",
        );
        assert_eq!(r.read(UNIT).cpu_usage_ns, Some(42));
    }

    #[test]
    fn support_v2_memory_not_enabled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        v2_host(root, "cpu pids\n");
        let s = CgroupSupport::detect(root);
        assert_eq!(
            (s.memory, s.cpu, s.pids),
            (
                Support::Lost(Lack::V2NotEnabled),
                Support::Own,
                Support::Own
            )
        );
        assert_eq!(s.lost(), [("memory", Lack::V2NotEnabled)]);
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no memory control group of their own (cgroup v2 controllers not \
                 enabled in cgroup.subtree_control): MemoryMax limits are not enforced and \
                 per-container memory usage is approximated from the units' processes"
            )
        );

        // CPU from cpu.stat (always there on v2), memory from the processes.
        let dir = format!("sys/fs/cgroup{UNIT}");
        write(root, &format!("{dir}/cpu.stat"), "usage_usec 7\n");
        write(root, &format!("{dir}/cgroup.procs"), "300\n");
        write(root, "proc/300/stat", &proc_stat(300, "a", [100, 0, 0, 0]));
        write(root, "proc/300/status", &proc_status(64, 32));
        let mut r = CgroupReader::detect(root);
        r.procs.clock_ticks = 100;
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(7000));
        assert_eq!(u.memory.unwrap().working_set_bytes, 64 * 1024);
    }

    #[test]
    fn support_v2_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        v2_host(root, "cpu memory pids\n");
        // The slice's own subtree_control holds only what its children use
        // now (no pod with CPU requests): not a loss.
        write(
            root,
            "sys/fs/cgroup/unitlet.slice/cgroup.subtree_control",
            "memory pids\n",
        );
        assert_eq!(CgroupSupport::detect(root).message(), None);
        // Not delegated to this system at all, and not reaching the slice.
        write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        write(
            root,
            "sys/fs/cgroup/unitlet.slice/cgroup.controllers",
            "memory\n",
        );
        let s = CgroupSupport::detect(root);
        assert_eq!(
            s.lost(),
            [("cpu", Lack::V2NotEnabled), ("pids", Lack::V2NotDelegated)]
        );
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no cpu, pids control group of their own (cpu: cgroup v2 controllers \
                 not enabled in cgroup.subtree_control; pids: cgroup v2 controllers missing \
                 from the root cgroup.controllers): CPUQuota/TasksMax limits are not enforced"
            )
        );
        // Without unitlet.slice the root decides.
        fs::remove_dir_all(root.join("sys/fs/cgroup/unitlet.slice")).unwrap();
        assert_eq!(
            CgroupSupport::detect(root).lost(),
            [("pids", Lack::V2NotDelegated)]
        );
        // A read-only v2 mount gives nothing.
        write(
            root,
            "proc/self/mountinfo",
            "26 22 0:23 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n",
        );
        let s = CgroupSupport::detect(root);
        assert_eq!(s.memory, Support::Lost(Lack::V2ReadOnly));
        assert_eq!(s.layout, CgroupLayout::Unified);
    }

    #[test]
    fn support_v1_writable_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu ro,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup ro,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
",
        );
        let s = CgroupSupport::detect(root);
        assert_eq!(s.layout, CgroupLayout::Legacy);
        assert_eq!(s.memory, Support::Own);
        // cpuacct writable is enough for cpu.
        assert_eq!(s.cpu, Support::Own);
        // Read-only at the super block counts too.
        assert_eq!(s.pids, Support::Lost(Lack::V1ReadOnly));
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no pids control group of their own (cgroup v1 controllers \
                 read-only): TasksMax limits are not enforced"
            )
        );

        // This dev machine's hybrid layout: all writable, no pids.
        write(root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        let s = CgroupSupport::detect(root);
        assert_eq!(s.layout, CgroupLayout::Hybrid);
        assert_eq!((s.memory, s.cpu), (Support::Own, Support::Own));
        assert_eq!(s.pids, Support::Lost(Lack::V1NotMounted));

        // Nothing at all.
        let tmp = tempfile::tempdir().unwrap();
        let s = CgroupSupport::detect(tmp.path());
        assert_eq!(s.layout, CgroupLayout::Unknown);
        assert_eq!(s.cpu, Support::Lost(Lack::NoCgroupFs));
        assert_eq!(
            s.message().as_deref(),
            Some(
                "units get no memory, cpu, pids control group of their own (no cgroup file \
                 system mounted): MemoryMax/CPUQuota/TasksMax limits are not enforced and \
                 per-container CPU and memory usage are approximated from the units' processes"
            )
        );
    }

    #[test]
    fn mounts_parse_options() {
        let m = cgroup_mounts(Path::new("/r"), HYBRID_RO_MOUNTINFO);
        assert_eq!(m.len(), 6, "the tmpfs is not a cgroup mount");
        assert!(m[0].read_only && m[0].has("pids") && !m[0].v2);
        assert_eq!(m[4].dir, PathBuf::from("/r/sys/fs/cgroup/unified"));
        assert!(m[4].v2 && !m[4].read_only);
        assert!(m[5].has("name=systemd") && !m[5].read_only);
    }

    /// Not run by default: needs a host with cgroups. `--ignored` on a
    /// machine like the dev box checks the detection against reality.
    #[test]
    #[ignore]
    fn reads_this_host() {
        let r = CgroupReader::detect(Path::new("/"));
        let n = r.node();
        eprintln!("{r:?}\n{n:?}\nboot {:?}", r.boot_time());
        assert!(n.cpu_usage_ns.unwrap() > 0);
        assert!(n.memory.unwrap().working_set_bytes > 0);
    }

    fn cpu(t: &str, ns: u64) -> Option<CpuSample> {
        Some(CpuSample {
            time: ts(t),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(ns),
        })
    }

    fn mem(t: &str, ws: u64) -> Option<MemorySample> {
        Some(MemorySample {
            time: ts(t),
            available_bytes: None,
            usage_bytes: Some(ws + 100),
            working_set_bytes: Some(ws),
            rss_bytes: Some(ws / 2),
            page_faults: None,
            major_page_faults: None,
        })
    }

    const T: &str = "2021-06-22T21:11:18.302091597Z";

    fn sample_node() -> NodeSample {
        NodeSample {
            node_name: "n1".into(),
            start_time: Some(ts("2021-06-22T00:00:00Z")),
            cpu: cpu(T, 10_000_000_000),
            memory: mem(T, 1000),
        }
    }

    fn sample_pods() -> Vec<PodSample> {
        vec![
            PodSample {
                namespace: "ns-b".into(),
                name: "pod-b".into(),
                uid: "uid-b".into(),
                start_time: Some(ts("2021-06-22T21:00:00Z")),
                containers: vec![ContainerSample {
                    name: "c".into(),
                    start_time: Some(ts("2021-06-22T21:01:18.302091597Z")),
                    cpu: cpu(T, 1_500_000),
                    memory: mem(T, 123_456_789),
                }],
                cpu: cpu(T, 2_000_000),
                memory: mem(T, 123_456_889),
            },
            PodSample {
                namespace: "ns-a".into(),
                name: "pod-a".into(),
                uid: "uid-a".into(),
                start_time: None,
                containers: vec![
                    ContainerSample {
                        name: "web".into(),
                        start_time: Some(ts("2021-06-22T21:10:48.302091597Z")),
                        cpu: cpu(T, 10_000_000_000),
                        memory: None,
                    },
                    ContainerSample {
                        name: "app".into(),
                        start_time: None,
                        cpu: None,
                        memory: mem(T, 1000),
                    },
                ],
                cpu: None,
                memory: None,
            },
        ]
    }

    #[test]
    fn prometheus_text_exact() {
        let got = resource_metrics(&sample_node(), &sample_pods());
        let want = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="c",namespace="ns-b",pod="pod-b"} 0.0015 1624396278302
container_cpu_usage_seconds_total{container="web",namespace="ns-a",pod="pod-a"} 10 1624396278302
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="app",namespace="ns-a",pod="pod-a"} 1000 1624396278302
container_memory_working_set_bytes{container="c",namespace="ns-b",pod="pod-b"} 1.23456789e+08 1624396278302
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="c",namespace="ns-b",pod="pod-b"} 1.6243956783020916e+09
container_start_time_seconds{container="web",namespace="ns-a",pod="pod-a"} 1.6243962483020916e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 10 1624396278302
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1000 1624396278302
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="ns-b",pod="pod-b"} 0.002 1624396278302
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="ns-b",pod="pod-b"} 1.23456889e+08 1624396278302
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
"#;
        assert_eq!(got, want);
    }

    #[test]
    fn prometheus_empty_node_and_failure() {
        let node = NodeSample {
            node_name: "n".into(),
            start_time: None,
            cpu: None,
            memory: None,
        };
        let want = "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
                    # TYPE resource_scrape_error gauge\n";
        assert_eq!(
            resource_metrics(&node, &[]),
            format!("{want}resource_scrape_error 0\n")
        );
        assert_eq!(
            resource_metrics_failed(),
            format!("{want}resource_scrape_error 1\n")
        );
    }

    #[test]
    fn prometheus_escapes_and_dedupes() {
        let pod = |ns: &str, ws| PodSample {
            namespace: ns.into(),
            name: "p".into(),
            uid: "u".into(),
            start_time: None,
            containers: Vec::new(),
            cpu: None,
            memory: mem("1970-01-01T00:00:01.0009Z", ws),
        };
        let node = NodeSample {
            node_name: "n".into(),
            start_time: None,
            cpu: None,
            memory: None,
        };
        let out = resource_metrics(&node, &[pod("a\\b\"c\nd", 5), pod("a\\b\"c\nd", 6)]);
        assert!(
            out.contains(
                "pod_memory_working_set_bytes{namespace=\"a\\\\b\\\"c\\nd\",pod=\"p\"} 5 1000\n"
            ),
            "{out}"
        );
        assert!(
            !out.contains("} 6 "),
            "the second duplicate series is dropped: {out}"
        );
        assert_eq!(escape_help("a\\b\nc\""), "a\\\\b\\nc\"");
    }

    #[test]
    fn go_float_formatting() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (10.0, "10"),
            (0.5, "0.5"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (-2.5e-7, "-2.5e-07"),
            (1e21, "1e+21"),
            (1e100, "1e+100"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            // The kubelet's own test vector (start time 30 s before its
            // static timestamp).
            (
                1624396248302091597_i64 as f64 / 1e9,
                "1.6243962483020916e+09",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(go_float(*v), *want, "{v:?}");
        }
    }

    #[test]
    fn millis_floor_like_go() {
        assert_eq!(millis(ts(T)), 1624396278302);
        assert_eq!(millis(ts("1969-12-31T23:59:59.9995Z")), -1);
    }

    #[test]
    fn summary_json_shape() {
        let mut pods = sample_pods();
        pods.truncate(2);
        pods[1].containers.truncate(1);
        let mut node = sample_node();
        if let Some(m) = node.memory.as_mut() {
            m.available_bytes = Some(5);
            m.page_faults = Some(1);
            m.major_page_faults = Some(0);
        }
        if let Some(c) = node.cpu.as_mut() {
            c.usage_nano_cores = Some(250_000_000);
        }
        let got = summary_json(&node, &pods);
        let want = serde_json::json!({
            "node": {
                "nodeName": "n1",
                "startTime": "2021-06-22T00:00:00Z",
                "cpu": {
                    "time": "2021-06-22T21:11:18Z",
                    "usageNanoCores": 250000000u64,
                    "usageCoreNanoSeconds": 10000000000u64
                },
                "memory": {
                    "time": "2021-06-22T21:11:18Z",
                    "availableBytes": 5,
                    "usageBytes": 1100,
                    "workingSetBytes": 1000,
                    "rssBytes": 500,
                    "pageFaults": 1,
                    "majorPageFaults": 0
                }
            },
            "pods": [
                {
                    "podRef": {"name": "pod-b", "namespace": "ns-b", "uid": "uid-b"},
                    "startTime": "2021-06-22T21:00:00Z",
                    "containers": [{
                        "name": "c",
                        "startTime": "2021-06-22T21:01:18Z",
                        "cpu": {"time": "2021-06-22T21:11:18Z", "usageCoreNanoSeconds": 1500000},
                        "memory": {
                            "time": "2021-06-22T21:11:18Z",
                            "usageBytes": 123456889,
                            "workingSetBytes": 123456789,
                            "rssBytes": 61728394
                        }
                    }],
                    "cpu": {"time": "2021-06-22T21:11:18Z", "usageCoreNanoSeconds": 2000000},
                    "memory": {
                        "time": "2021-06-22T21:11:18Z",
                        "usageBytes": 123456989,
                        "workingSetBytes": 123456889,
                        "rssBytes": 61728444
                    }
                },
                {
                    "podRef": {"name": "pod-a", "namespace": "ns-a", "uid": "uid-a"},
                    "startTime": null,
                    "containers": [{
                        "name": "web",
                        "startTime": "2021-06-22T21:10:48Z",
                        "cpu": {"time": "2021-06-22T21:11:18Z", "usageCoreNanoSeconds": 10000000000u64}
                    }]
                }
            ]
        });
        assert_eq!(got, want);
        let empty = summary_json(
            &NodeSample {
                node_name: "n".into(),
                start_time: None,
                cpu: None,
                memory: None,
            },
            &[],
        );
        assert_eq!(
            empty,
            serde_json::json!({"node": {"nodeName": "n", "startTime": null}, "pods": []})
        );
    }

    #[test]
    fn rates_need_two_samples_and_survive_resets() {
        let mut r = Rates::default();
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:00Z", 1_000).unwrap()),
            None
        );
        // Same instant again: no rate, no division by zero.
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:00Z", 1_000).unwrap()),
            None
        );
        // 0.5 s of CPU over 2 s: a quarter core.
        let half = cpu("2024-01-01T00:00:02Z", 500_001_000).unwrap();
        assert_eq!(r.observe("k", &half), Some(250_000_000));
        // The baseline stays at t=0 (2 s is inside the window): 2.5 s of CPU
        // over 4 s, not 2 s over the last 2 s.
        let later = cpu("2024-01-01T00:00:04Z", 2_500_001_000).unwrap();
        assert_eq!(r.observe("k", &later), Some(625_000_000));
        // Past the window the baseline moves: 4.5 s over 12 s, then one
        // core over the second since.
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:12Z", 4_500_001_000).unwrap()),
            Some(375_000_000)
        );
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:13Z", 5_500_001_000).unwrap()),
            Some(1_000_000_000)
        );
        // The unit restarted: the counter went down.
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:14Z", 10).unwrap()),
            None
        );
        assert_eq!(
            r.observe("k", &cpu("2024-01-01T00:00:15Z", 100_000_010).unwrap()),
            Some(100_000_000)
        );
        // No cumulative value, no rate.
        let mut none = cpu("2024-01-01T00:00:16Z", 0).unwrap();
        none.usage_core_nano_seconds = None;
        assert_eq!(r.observe("other", &none), None);
    }

    #[test]
    fn rates_fill_and_forget() {
        let mut r = Rates::new(SignedDuration::from_secs(0));
        let mut node = sample_node();
        let mut pods = sample_pods();
        r.fill(&mut node, &mut pods);
        assert_eq!(node.cpu.as_ref().unwrap().usage_nano_cores, None);
        assert_eq!(r.seen.len(), 4, "{:?}", r.seen.keys());

        let later = |c: &mut Option<CpuSample>, extra: u64| {
            if let Some(c) = c.as_mut() {
                c.time = ts("2021-06-22T21:11:20.302091597Z");
                c.usage_core_nano_seconds = c.usage_core_nano_seconds.map(|u| u + extra);
            }
        };
        later(&mut node.cpu, 4_000_000_000);
        later(&mut pods[0].containers[0].cpu, 1_000_000_000);
        pods.truncate(1);
        r.fill(&mut node, &mut pods);
        assert_eq!(
            node.cpu.as_ref().unwrap().usage_nano_cores,
            Some(2_000_000_000)
        );
        assert_eq!(
            pods[0].containers[0].cpu.as_ref().unwrap().usage_nano_cores,
            Some(500_000_000)
        );
        assert_eq!(
            pods[0].cpu.as_ref().unwrap().usage_nano_cores,
            None,
            "time did not move"
        );
        let mut keys: Vec<_> = r.seen.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["container/uid-b/c", "node", "pod/uid-b"]);
    }
}
