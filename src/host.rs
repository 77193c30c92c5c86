//! Facts about this machine that both modes need: what pods may use of it.

use crate::core::Allocatable;
use std::path::Path;

/// CPUs this process may run on.
pub fn cpus() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

/// A `/proc/meminfo` value, in bytes.
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Size of the file system holding `dir`, in bytes.
pub fn storage_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

/// The whole machine, for standalone mode (nothing reserved).
pub fn allocatable(state_dir: &Path) -> Allocatable {
    Allocatable {
        cpu_millis: cpus() * 1000,
        memory_bytes: meminfo("MemTotal").unwrap_or(0),
        ephemeral_storage_bytes: storage_bytes(state_dir),
    }
}

/// Whether units here get control groups of their own for memory, cpu and
/// pids; if not, logs once what is lost and returns it (cluster mode also
/// puts it on the Node as a Warning event). A node inside a container or
/// without delegated controllers would otherwise drop limits and usage
/// without a word.
pub fn cgroup_warning() -> Option<String> {
    let lost = crate::kubelet::stats::CgroupSupport::detect(Path::new("/")).message()?;
    tracing::warn!("{lost}");
    Some(lost)
}
