//! Helpers the volume filesystem tests share: payloads to write, mode and
//! listing checks, and a guard that undoes test mounts.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use super::is_mount_point;
use crate::core::volume::{FileEntry, Payload};

/// Unmounts on drop, so a failing assertion never leaves a mount behind
/// (and never lets the tempdir's removal reach through a bind mount).
pub(super) struct MountGuard(Vec<PathBuf>);

impl MountGuard {
    pub(super) fn new() -> Self {
        Self(Vec::new())
    }
    pub(super) fn watch(&mut self, p: &Path) {
        self.0.push(p.to_path_buf());
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            while is_mount_point(p).unwrap_or(false) {
                if umount2(p.as_path(), MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}

pub(super) fn entry(data: &str, mode: u32) -> FileEntry {
    FileEntry {
        data: data.as_bytes().to_vec(),
        mode,
    }
}

pub(super) fn payload(items: &[(&str, &str, u32)]) -> Payload {
    items
        .iter()
        .map(|(k, d, m)| (k.to_string(), entry(d, *m)))
        .collect()
}

pub(super) fn no_perms(_: &Path) -> io::Result<()> {
    Ok(())
}

pub(super) fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}
