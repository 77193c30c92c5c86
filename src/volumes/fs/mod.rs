//! Filesystem operations behind pod volumes, with the kubelet's semantics.
//!
//! Containers see these directories through `BindPaths=`, so every rule the
//! kubelet follows to keep a pod from reaching outside its volumes applies
//! here too: ConfigMap/Secret files change atomically (a reader never sees
//! half an update), a `subPath` is resolved once, beneath its volume, and
//! the opened file itself is bound (a symlink swapped in later cannot
//! redirect the mount), and a pod's directory is removed without ever
//! following a symlink or descending into a mount, so a bug can never delete
//! hostPath or persistent volume data.
//!
//! Everything is synchronous: these are short system calls that the agent
//! runs on a blocking thread.
//!
//! One file per concern, each with the kubelet behaviour it reproduces:
//!
//! * `atomic.rs`: [`write_atomic`], the kubelet's AtomicWriter for
//!   ConfigMap, Secret, downward API and projected volumes;
//! * `subpath.rs`: [`open_beneath`] and [`bind_subpath`], `subPath`
//!   resolved beneath its volume with `openat2` and pinned by its fd;
//! * `mounts.rs`: bind and tmpfs mounts ([`bind`], [`mount_tmpfs`]), what
//!   is mounted where ([`is_mount_point`], [`mounts_under`]), and
//!   [`teardown`], which removes a pod's directory without crossing into
//!   mounts or following symlinks;
//! * `hostpath.rs`: [`HostPathType`] and its check, [`check_host_path`];
//! * `ownership.rs`: fsGroup ownership, [`set_volume_ownership`].
//!
//! This file holds what they share: the error type, which every caller
//! reports as a `FailedMount` event, and small fd and path helpers.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};

mod atomic;
mod hostpath;
mod mounts;
mod ownership;
mod subpath;
#[cfg(test)]
mod testutil;

// The public surface, unchanged by the split into files: callers use
// `volumes::fs::X`.
pub use atomic::write_atomic;
pub use hostpath::{check_host_path, HostPathType};
pub use mounts::{bind, bind_read_only, is_mount_point, mount_tmpfs, mounts_under, teardown};
pub use ownership::{set_volume_ownership, ChangePolicy};
pub use subpath::{bind_subpath, open_beneath};

/// Why a volume's directory could not be prepared or removed. Every message
/// names the path involved, since the agent reports it as the pod's
/// `FailedMount` event, where the user has no other context.
#[derive(Debug, thiserror::Error)]
pub enum VolumeFsError {
    /// A file path of a ConfigMap/Secret/downward API/projected volume that
    /// could write outside the volume or clash with the writer's own
    /// `..`-prefixed entries.
    #[error("invalid file path {path:?} in the volume: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `subPath` that resolves (through `..` or a symlink) to something
    /// outside its volume: the kubelet refuses those, since the container
    /// would see host files.
    #[error("subPath {sub:?} escapes the volume {}", root.display())]
    Escape {
        /// The volume's directory.
        root: PathBuf,
        /// The subPath as given.
        sub: String,
    },
    /// A system call failed.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The path it was about.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The filesystem is not in a state these operations can work with.
    #[error("{}: {message}", path.display())]
    Unexpected {
        /// The path it was about.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A pod directory that could not be removed completely; what could be
    /// removed safely was.
    #[error("cannot remove {} completely: {}", dir.display(), problems.join("; "))]
    Teardown {
        /// The directory being removed.
        dir: PathBuf,
        /// One line per path left behind, with the reason.
        problems: Vec<String>,
    },
}

type Result<T, E = VolumeFsError> = std::result::Result<T, E>;

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> VolumeFsError + 'a {
    move |source| VolumeFsError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn errno_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> VolumeFsError + 'a {
    move |errno| VolumeFsError::Io {
        path: path.to_path_buf(),
        op,
        source: io::Error::from(errno),
    }
}

fn unexpected(path: &Path, message: impl Into<String>) -> VolumeFsError {
    VolumeFsError::Unexpected {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The path through which the kernel reopens (or binds, or chmods) exactly
/// the inode an fd holds, whatever happened to its name since.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// The names in the directory `fd` holds (without `.` and `..`).
fn list_dir(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    fs::read_dir(fd_path(fd))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}
