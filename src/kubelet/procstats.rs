//! Per-container usage added up from a unit's processes, for hosts where
//! units get no control group of their own in the memory or cpu hierarchy
//! (the hybrid layout inside systemd-nspawn with read-only v1 controllers,
//! some LXC setups, controllers not delegated). There the control group
//! files [`super::stats::CgroupReader`] reads do not exist for a unit, and
//! without this `kubectl top` would show nothing for the node's pods.
//!
//! systemd still tracks every unit's processes in its own hierarchy (the
//! unified tree, or the v1 `name=systemd` one), controllers or not, so the
//! unit's `ControlGroup` path still names its processes: `cgroup.procs` of
//! the group and of every group below it (units are `Delegate=yes`, so a
//! container may make its own). Their `/proc/<pid>/stat` and `status` are
//! summed:
//!
//! - CPU: `utime + stime + cutime + cstime`, clock ticks turned into
//!   core-nanoseconds.
//! - Memory: `VmRSS` as both usage and working set, `RssAnon` as RSS; no
//!   limit. Page faults: `minflt + cminflt`, `majflt + cmajflt`.
//!
//! This is an approximation, and differs from the control group's figures
//! in ways a reader of `kubectl top` should know:
//!
//! - Memory shared between processes (the same file pages, shared anonymous
//!   memory, a forked child's copy-on-write pages) is counted once per
//!   process mapping it, so the sum can exceed what the group would be
//!   charged. Page cache that is not mapped (files read and written) is not
//!   counted at all, nor is kernel memory (sockets, page tables), so for
//!   I/O-heavy containers the working set is lower than the cgroup's.
//! - CPU of processes that have exited is kept only when their parent is in
//!   the group and reaped them (it moves into the parent's `cutime`/
//!   `cstime`); an exited process whose parent is outside (a
//!   double-forked daemon reparented to init, a process whose parent exited
//!   first) takes its CPU time with it, so the counter can go down. CPU
//!   time is in clock ticks (usually 10 ms): a container that has used less
//!   than a tick reads 0, and metrics-server leaves a pod with a 0 out of
//!   `kubectl top` (see [`super::stats`]).
//! - A PID read from `cgroup.procs` can exit and be reused by an unrelated
//!   process before its `/proc` files are read; processes that vanish
//!   mid-read are skipped, a reuse inside that window is not detected.
//!
//! Everything is read under a root directory so tests can point it at a
//! fake tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::stats::{cgroup_dir, CgroupMount, CgroupUsage, MemoryUsage};

/// Finds a unit's processes through systemd's process-tracking hierarchy
/// and sums their `/proc` figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcReader {
    root: PathBuf,
    /// Hierarchies that mirror systemd's unit tree, most preferred first,
    /// under the root: the unified hierarchy when it is mounted at
    /// `/sys/fs/cgroup`, other cgroup2 mounts (`/sys/fs/cgroup/unified` in
    /// the hybrid layout), then v1 `name=systemd`. A group is looked up in
    /// the first one where it exists.
    pub tracking: Vec<PathBuf>,
    /// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times
    /// (`sysconf(_SC_CLK_TCK)`).
    pub clock_ticks: u64,
}

/// The figures of one process that are summed over a unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStat {
    /// `utime + stime + cutime + cstime`, in clock ticks.
    pub cpu_ticks: u64,
    /// `minflt + cminflt`.
    pub minor_faults: u64,
    /// `majflt + cmajflt`.
    pub major_faults: u64,
}

impl ProcReader {
    /// Finds the tracking hierarchies from `<root>/proc/self/mountinfo`
    /// (or, without one, the usual mount points under `<root>`).
    pub fn detect(root: &Path) -> ProcReader {
        let mounts = fs::read_to_string(root.join("proc/self/mountinfo"))
            .ok()
            .map(|text| super::stats::cgroup_mounts(root, &text));
        ProcReader::from_mounts(root, mounts.as_deref())
    }

    /// As [`ProcReader::detect`], from mounts already parsed (`None`: no
    /// mountinfo, probe the usual places).
    pub(super) fn from_mounts(root: &Path, mounts: Option<&[CgroupMount]>) -> ProcReader {
        let mut tracking: Vec<PathBuf> = Vec::new();
        let mut add = |dir: &Path| {
            if !tracking.iter().any(|d| d == dir) {
                tracking.push(dir.to_path_buf());
            }
        };
        match mounts {
            Some(mounts) => {
                let sys = Path::new("/sys/fs/cgroup");
                mounts
                    .iter()
                    .filter(|m| m.v2 && m.mount_point == sys)
                    .for_each(|m| add(&m.dir));
                mounts.iter().filter(|m| m.v2).for_each(|m| add(&m.dir));
                mounts
                    .iter()
                    .filter(|m| !m.v2 && m.has("name=systemd"))
                    .for_each(|m| add(&m.dir));
            }
            None => {
                let base = root.join("sys/fs/cgroup");
                for (dir, marker) in [
                    (base.clone(), "cgroup.controllers"),
                    (base.join("unified"), "cgroup.controllers"),
                    (base.join("systemd"), "cgroup.procs"),
                ] {
                    if dir.join(marker).is_file() {
                        add(&dir);
                    }
                }
            }
        }
        ProcReader {
            root: root.to_path_buf(),
            tracking,
            clock_ticks: clock_ticks(),
        }
    }

    /// The PIDs in the group at `cgroup` (a `ControlGroup` path) and all
    /// groups below it, from the first tracking hierarchy that has the
    /// group; `None` when none has it.
    pub fn pids(&self, cgroup: &str) -> Option<BTreeSet<u32>> {
        // Every group has cgroup.procs: reading it is the existence check
        // (a directory without a readable one is still walked).
        self.tracking
            .iter()
            .filter_map(|mount| cgroup_dir(mount, cgroup))
            .find_map(|dir| match fs::read_to_string(dir.join("cgroup.procs")) {
                Ok(top) => Some(group_pids(&dir, Some(top))),
                Err(_) if dir.is_dir() => Some(group_pids(&dir, None)),
                Err(_) => None,
            })
    }

    /// The summed usage of the processes of the group at `cgroup`. Both
    /// parts are `None` when the group has no (readable) processes: an
    /// empty group reads as nothing, not as 0.
    pub fn read(&self, cgroup: &str) -> CgroupUsage {
        self.read_pids(self.pids(cgroup).as_ref())
    }

    /// The summed usage of `pids` (as [`ProcReader::pids`] lists them).
    pub fn read_pids(&self, pids: Option<&BTreeSet<u32>>) -> CgroupUsage {
        let stats: Vec<(ProcessStat, ProcessMemory)> = pids
            .into_iter()
            .flatten()
            .filter_map(|&pid| self.process(pid))
            .collect();
        let time = Timestamp::now();
        if stats.is_empty() {
            return CgroupUsage {
                time,
                cpu_usage_ns: None,
                memory: None,
                more: Default::default(),
            };
        }
        let mut ticks: u64 = 0;
        let mut minor: u64 = 0;
        let mut major: u64 = 0;
        let mut rss_kb: u64 = 0;
        let mut anon_kb: Option<u64> = None;
        for (s, m) in &stats {
            ticks = ticks.saturating_add(s.cpu_ticks);
            minor = minor.saturating_add(s.minor_faults);
            major = major.saturating_add(s.major_faults);
            rss_kb = rss_kb.saturating_add(m.rss_kb);
            if let Some(a) = m.anon_kb {
                anon_kb = Some(anon_kb.unwrap_or(0).saturating_add(a));
            }
        }
        let rss = rss_kb.saturating_mul(1024);
        CgroupUsage {
            time,
            cpu_usage_ns: Some(ticks_to_ns(ticks, self.clock_ticks)),
            memory: Some(MemoryUsage {
                usage_bytes: rss,
                working_set_bytes: rss,
                rss_bytes: anon_kb.map(|a| a.saturating_mul(1024)),
                limit_bytes: None,
                // Unmapped page cache is not any process's.
                cache_bytes: None,
                page_faults: Some(minor),
                major_page_faults: Some(major),
            }),
            more: Default::default(),
        }
    }

    /// Bytes `pids` caused to be read from and written to storage
    /// (`read_bytes`/`write_bytes` of `/proc/<pid>/io`, the block-layer
    /// figures, not `rchar`/`wchar`, which count page-cache hits and pipes
    /// too). What exited processes did leaves with them (the file has no
    /// children's share), so the sum can go down. `None` when no process
    /// could be read (reading it needs the agent's privileges).
    pub fn io(&self, pids: &BTreeSet<u32>) -> Option<(u64, u64)> {
        let mut got = None;
        for pid in pids {
            let path = self.root.join("proc").join(pid.to_string()).join("io");
            let Ok(text) = fs::read_to_string(path) else {
                continue;
            };
            let (r, w) = parse_io(&text)?;
            let (tr, tw) = got.unwrap_or((0u64, 0u64));
            got = Some((tr.saturating_add(r), tw.saturating_add(w)));
        }
        got
    }

    /// One process's figures; `None` when it is gone (either file missing
    /// or unparsable).
    fn process(&self, pid: u32) -> Option<(ProcessStat, ProcessMemory)> {
        let dir = self.root.join("proc").join(pid.to_string());
        let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
        let memory = parse_status(&fs::read_to_string(dir.join("status")).ok()?);
        Some((stat, memory))
    }
}

/// Resident memory of one process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ProcessMemory {
    /// `VmRSS`; kernel threads and zombies have none (0).
    rss_kb: u64,
    /// `RssAnon` (Linux 4.5+).
    anon_kb: Option<u64>,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// but may itself hold spaces and `)`, so the numeric fields are counted
/// from after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcessStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1; `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied();
    let unsigned = |n: usize| field(n)?.parse::<u64>().ok();
    // cutime and cstime are signed in the kernel (`long`).
    let signed = |n: usize| Some(field(n)?.parse::<i64>().ok()?.max(0) as u64);
    let cpu_ticks = unsigned(14)?
        .saturating_add(unsigned(15)?)
        .saturating_add(signed(16)?)
        .saturating_add(signed(17)?);
    Some(ProcessStat {
        cpu_ticks,
        minor_faults: unsigned(10)?.saturating_add(unsigned(11)?),
        major_faults: unsigned(12)?.saturating_add(unsigned(13)?),
    })
}

/// `read_bytes` and `write_bytes` of `/proc/<pid>/io`.
pub fn parse_io(text: &str) -> Option<(u64, u64)> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((get("read_bytes")?, get("write_bytes")?))
}

fn parse_status(text: &str) -> ProcessMemory {
    let kb = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
    };
    ProcessMemory {
        rss_kb: kb("VmRSS").unwrap_or(0),
        anon_kb: kb("RssAnon"),
    }
}

/// `cgroup.procs` of `dir` and every group below it. Groups that vanish
/// during the walk are skipped; cgroup file systems have no symlinks, so
/// the walk cannot loop.
fn group_pids(dir: &Path, top: Option<String>) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut top = top;
    while let Some(d) = stack.pop() {
        let procs = match top.take() {
            Some(t) => Ok(t),
            None => fs::read_to_string(d.join("cgroup.procs")),
        };
        if let Ok(text) = procs {
            // A process in another PID namespace shows as 0.
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .filter(|&p| p > 0),
            );
        }
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    pids
}

fn ticks_to_ns(ticks: u64, per_second: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(per_second.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// `sysconf(_SC_CLK_TCK)`; 100, Linux's value everywhere, if unknown.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A `stat` line as the kernel writes it, with the given command name
    /// and fields 10-17.
    fn stat_line(pid: u32, comm: &str, faults: [u64; 4], times: [i64; 4]) -> String {
        let [minflt, cminflt, majflt, cmajflt] = faults;
        let [utime, stime, cutime, cstime] = times;
        format!(
            "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 {minflt} {cminflt} {majflt} {cmajflt} \
             {utime} {stime} {cutime} {cstime} 20 0 1 0 12345 2000000 300 18446744073709551615\n"
        )
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let s = parse_stat(&stat_line(7, "a) (b ) c", [1, 2, 3, 4], [10, 20, 30, 40])).unwrap();
        assert_eq!(
            s,
            ProcessStat {
                cpu_ticks: 100,
                minor_faults: 3,
                major_faults: 7,
            }
        );
        // Negative child times (a kernel quirk) count as 0.
        let s = parse_stat(&stat_line(7, "x", [0; 4], [5, 5, -1, 0])).unwrap();
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(parse_stat("7 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parens at all"), None);
    }

    #[test]
    fn status_fields() {
        let m =
            parse_status("Name:\tx\nVmRSS:\t    2048 kB\nRssAnon:\t  1024 kB\nRssFile:\t1 kB\n");
        assert_eq!(
            m,
            ProcessMemory {
                rss_kb: 2048,
                anon_kb: Some(1024),
            }
        );
        // A kernel thread: no memory lines at all.
        assert_eq!(parse_status("Name:\tkthreadd\n"), ProcessMemory::default());
    }

    #[test]
    fn ticks_convert_to_nanoseconds() {
        assert_eq!(ticks_to_ns(150, 100), 1_500_000_000);
        assert_eq!(ticks_to_ns(3, 250), 12_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_to_ns(5, 0), 5_000_000_000);
    }

    const UNIT: &str = "/unitlet.slice/u.service";

    #[test]
    fn tracking_hierarchies_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mounts = super::super::stats::cgroup_mounts(
            root,
            "57 47 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
             54 47 0:32 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
             56 47 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup rw\n",
        );
        let r = ProcReader::from_mounts(root, Some(&mounts));
        assert_eq!(
            r.tracking,
            [
                root.join("sys/fs/cgroup/unified"),
                root.join("sys/fs/cgroup/systemd")
            ]
        );
        let mounts = super::super::stats::cgroup_mounts(
            root,
            "9 1 0:5 / /elsewhere rw - cgroup2 cgroup2 rw\n\
             10 1 0:6 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        let r = ProcReader::from_mounts(root, Some(&mounts));
        assert_eq!(
            r.tracking,
            [root.join("sys/fs/cgroup"), root.join("elsewhere")]
        );

        // The group is taken from the first hierarchy that has it.
        write(
            root,
            "sys/fs/cgroup/systemd/unitlet.slice/u.service/cgroup.procs",
            "5\n",
        );
        let mounts = super::super::stats::cgroup_mounts(
            root,
            "56 47 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup rw\n\
             57 47 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
        );
        let r = ProcReader::from_mounts(root, Some(&mounts));
        assert_eq!(r.pids(UNIT), Some(BTreeSet::from([5])));
        write(
            root,
            "sys/fs/cgroup/unified/unitlet.slice/u.service/cgroup.procs",
            "6\n",
        );
        assert_eq!(r.pids(UNIT), Some(BTreeSet::from([6])));
        assert_eq!(r.pids("/unitlet.slice/other.service"), None);
        assert_eq!(r.pids("/unitlet.slice/../.."), None);
    }

    #[test]
    fn probes_without_mountinfo() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "sys/fs/cgroup/unified/cgroup.controllers", "");
        write(root, "sys/fs/cgroup/systemd/cgroup.procs", "1\n");
        let r = ProcReader::detect(root);
        assert_eq!(
            r.tracking,
            [
                root.join("sys/fs/cgroup/unified"),
                root.join("sys/fs/cgroup/systemd")
            ]
        );
        assert!(r.clock_ticks > 0);
    }

    /// Not run by default: reads this host's real `/proc` through its
    /// tracking hierarchy (`--ignored` on the dev box).
    #[test]
    #[ignore]
    fn reads_this_host() {
        let r = ProcReader::detect(Path::new("/"));
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let group = own
            .lines()
            .find_map(|l| {
                l.strip_prefix("0::")
                    .or_else(|| l.split_once(":name=systemd:").map(|x| x.1))
            })
            .unwrap();
        let u = r.read(group);
        eprintln!(
            "{r:?}\n{group}: {u:?}\n{:?}",
            super::super::stats::CgroupSupport::detect(Path::new("/")).message()
        );
        assert!(u.memory.unwrap().working_set_bytes > 0);
    }

    #[test]
    fn sums_processes_of_the_group_and_its_children() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        let g = format!("sys/fs/cgroup{UNIT}");
        write(root, &format!("{g}/cgroup.procs"), "10\n11\n");
        write(root, &format!("{g}/payload/cgroup.procs"), "12\n10\n");
        write(root, &format!("{g}/payload/deeper/cgroup.procs"), "0\n");
        write(
            root,
            "proc/10/stat",
            &stat_line(10, "sh", [1, 0, 0, 0], [100, 50, 0, 0]),
        );
        write(root, "proc/10/status", "VmRSS:\t100 kB\nRssAnon:\t60 kB\n");
        // 11 vanished between cgroup.procs and /proc.
        write(
            root,
            "proc/12/stat",
            &stat_line(12, "x) (y", [2, 3, 1, 1], [1, 1, 4, 4]),
        );
        write(root, "proc/12/status", "VmRSS:\t20 kB\nRssAnon:\t5 kB\n");
        // 13 lost its status file mid-read: skipped entirely.
        let mut r = ProcReader::detect(root);
        r.clock_ticks = 100;
        assert_eq!(r.pids(UNIT), Some(BTreeSet::from([10, 11, 12])));
        let u = r.read(UNIT);
        assert_eq!(u.cpu_usage_ns, Some(160 * 10_000_000));
        assert_eq!(
            u.memory,
            Some(MemoryUsage {
                usage_bytes: 120 * 1024,
                working_set_bytes: 120 * 1024,
                rss_bytes: Some(65 * 1024),
                limit_bytes: None,
                cache_bytes: None,
                page_faults: Some(6),
                major_page_faults: Some(2),
            })
        );

        write(root, &format!("{g}/payload/cgroup.procs"), "13\n");
        write(root, &format!("{g}/cgroup.procs"), "");
        write(
            root,
            "proc/13/stat",
            &stat_line(13, "z", [0; 4], [1, 0, 0, 0]),
        );
        let u = r.read(UNIT);
        assert_eq!(
            (u.cpu_usage_ns, u.memory),
            (None, None),
            "no readable process"
        );
    }
}
