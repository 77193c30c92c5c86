//! Where the eviction signals come from: the [`Signals`] trait, and
//! [`HostSignals`], which reads them from the host as the kubelet (through
//! cAdvisor) does.

use crate::core::eviction::{Observation, Observations, Signal, Usage};
use crate::core::volume::VolumeKind;
use crate::kubelet::stats::CgroupReader;
use crate::runtime::ActivePod;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Observes the node and its pods (a trait so the manager can be driven by
/// made-up figures in tests).
pub trait Signals: Send + Sync {
    /// The node's signals now; a signal that cannot be read is left out
    /// (its thresholds are then never met).
    fn observe(&self) -> Observations;
    /// What `pod` uses now; `None` when nothing of it could be measured.
    fn usage(&self, pod: &ActivePod) -> Option<Usage>;
}

/// The host's own sources.
pub struct HostSignals {
    cgroups: CgroupReader,
    root: PathBuf,
    state_dir: PathBuf,
    image_dir: Option<PathBuf>,
}

impl HostSignals {
    /// Signals of this host: `state_dir` holds the pods' writable volumes
    /// (nodefs), `image_dir` the image store (imagefs; `None` when the
    /// node has none, and then no imagefs signal is observed).
    pub fn new(state_dir: PathBuf, image_dir: Option<PathBuf>) -> HostSignals {
        HostSignals {
            cgroups: CgroupReader::detect(Path::new("/")),
            root: PathBuf::from("/"),
            state_dir,
            image_dir,
        }
    }

    /// `memory.available` as the kubelet computes it: capacity (`MemTotal`)
    /// minus the root control group's working set; where the root group's
    /// memory accounting is not readable, `MemAvailable` of `/proc/meminfo`.
    fn memory(&self) -> Option<Observation> {
        let node = self.cgroups.node();
        if let Some(m) = node.memory {
            let capacity = m.limit_bytes?;
            return Some(Observation {
                available: capacity.saturating_sub(m.working_set_bytes),
                capacity,
            });
        }
        let meminfo = std::fs::read_to_string(self.root.join("proc/meminfo")).ok()?;
        let field = |key: &str| -> Option<u64> {
            let rest = meminfo.lines().find_map(|l| l.strip_prefix(key))?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        };
        Some(Observation {
            available: field("MemAvailable:")?,
            capacity: field("MemTotal:")?,
        })
    }

    /// `pid.available`: the kubelet's `MaxPID` (the smaller of `pid_max`
    /// and `threads-max`) minus the tasks running (`sysinfo`'s count, the
    /// second figure of `/proc/loadavg`'s fourth field).
    fn pids(&self) -> Option<Observation> {
        let read = |p: &str| -> Option<u64> {
            std::fs::read_to_string(self.root.join(p))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let max = match (
            read("proc/sys/kernel/pid_max"),
            read("proc/sys/kernel/threads-max"),
        ) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let loadavg = std::fs::read_to_string(self.root.join("proc/loadavg")).ok()?;
        let running: u64 = loadavg
            .split_whitespace()
            .nth(3)?
            .split_once('/')?
            .1
            .parse()
            .ok()?;
        Some(Observation {
            available: max.saturating_sub(running),
            capacity: max,
        })
    }
}

/// Bytes and inodes available and total of the file system holding `dir`
/// (as cAdvisor's statfs: `f_bavail` for bytes, `f_ffree` for inodes).
fn statfs(dir: &Path) -> Option<(Observation, Observation)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frsize = s.fragment_size();
    Some((
        Observation {
            available: s.blocks_available() * frsize,
            capacity: s.blocks() * frsize,
        },
        Observation {
            available: s.files_free(),
            capacity: s.files(),
        },
    ))
}

/// Bytes (allocated blocks, as `du`) and inodes used under `dir`, not
/// crossing into other file systems.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let mut bytes = top.blocks() * 512;
    let mut inodes = 1;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            bytes += md.blocks() * 512;
            inodes += 1;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

impl Signals for HostSignals {
    fn observe(&self) -> Observations {
        let mut obs = BTreeMap::new();
        if let Some(m) = self.memory() {
            obs.insert(Signal::MemoryAvailable, m);
        }
        if let Some((bytes, inodes)) = statfs(&self.state_dir) {
            obs.insert(Signal::NodeFsAvailable, bytes);
            obs.insert(Signal::NodeFsInodesFree, inodes);
        }
        if let Some((bytes, inodes)) = self.image_dir.as_deref().and_then(statfs) {
            obs.insert(Signal::ImageFsAvailable, bytes);
            obs.insert(Signal::ImageFsInodesFree, inodes);
        }
        if let Some(p) = self.pids() {
            obs.insert(Signal::PidAvailable, p);
        }
        obs
    }

    fn usage(&self, pod: &ActivePod) -> Option<Usage> {
        let slice = crate::kubelet::server::slice_cgroup(&pod.plan.slice);
        let memory_bytes = self
            .cgroups
            .read(&slice)
            .memory
            .map(|m| m.working_set_bytes);
        let containers_memory = pod
            .plan
            .all()
            .filter_map(|c| {
                let m = self.cgroups.read(&format!("{slice}/{}", c.unit)).memory?;
                Some((c.name.clone(), m.working_set_bytes))
            })
            .collect();
        let pids = self.cgroups.procs.pids(&slice).map(|p| p.len() as u64);
        // What the pod writes on the node's file system: its emptyDirs
        // (not `medium: Memory`, which counts as memory).
        let mut disk = (0, 0);
        for v in &pod.plan.volumes {
            if let VolumeKind::EmptyDir { memory: false, .. } = v.kind {
                let (b, i) = du(Path::new(&v.dir));
                disk = (disk.0 + b, disk.1 + i);
            }
        }
        Some(Usage {
            memory_bytes,
            containers_memory,
            disk_bytes: Some(disk.0),
            inodes: Some(disk.1),
            pids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_blocks_and_inodes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), vec![1u8; 64 * 1024]).unwrap();
        let (bytes, inodes) = du(d.path());
        assert_eq!(inodes, 3);
        assert!(bytes >= 64 * 1024, "{bytes}");
    }

    #[test]
    fn host_signals_observe_the_state_directory() {
        let d = tempfile::tempdir().unwrap();
        let s = HostSignals::new(d.path().to_path_buf(), None);
        let obs = s.observe();
        let fs = obs[&Signal::NodeFsAvailable];
        assert!(fs.capacity > 0 && fs.available <= fs.capacity);
        assert!(!obs.contains_key(&Signal::ImageFsAvailable));
        let m = obs[&Signal::MemoryAvailable];
        assert!(m.capacity > 0 && m.available <= m.capacity);
        let p = obs[&Signal::PidAvailable];
        assert!(p.available > 0 && p.available < p.capacity);
    }
}
