//! Facts about this machine that both modes need: what pods may use of it,
//! what it is called, where it is reached, and who its users are.
//!
//! These read the host (kernel, `/proc`, the user database) and nothing of
//! unitlet's own, so that any layer (the CLI, the cluster mode's Node
//! object, the pod view) can ask without depending on another layer.

use crate::core::translate::HostUser;
use crate::core::Allocatable;
use std::path::Path;

/// This boot of the machine (`/proc/sys/kernel/random/boot_id`; empty if
/// unreadable, which turns the reboot checks off rather than guessing).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

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

/// This host's name, lower-cased (Kubernetes node names are); `localhost`
/// when the kernel's is not valid UTF-8.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

/// The IPv4 address of the default route's interface (127.0.0.1 if none):
/// the address the API server and other nodes are most likely to reach this
/// one at, when the command line does not say.
pub fn detect_host_ip() -> String {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let iface = route
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string());
    let addrs: Vec<(String, std::net::Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| Some((a.interface_name.clone(), a.address?.as_sockaddr_in()?.ip())))
                .collect()
        })
        .unwrap_or_default();
    addrs
        .iter()
        .find(|(n, _)| Some(n) == iface.as_ref())
        .or_else(|| addrs.iter().find(|(_, ip)| !ip.is_loopback()))
        .map(|(_, ip)| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// Looks a uid up in the host's user database (for HOME and the primary
/// group). The translation of a pod stays pure by taking this as a
/// function; this is the real one.
pub fn lookup_user(uid: u32) -> Option<HostUser> {
    let u = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(HostUser {
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
    })
}

/// This program's path, for units that run its helpers (`tty-host`): the
/// binary the agent was started from.
pub fn agent_exe() -> String {
    std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/usr/bin/unitlet".into())
}
