//! fsGroup: giving a volume to the pod's supplementary group the way the
//! kubelet's SetVolumeOwnership does, through fds opened without following
//! symlinks, so a container renaming things in its volume meanwhile cannot
//! make the agent chown or chmod a host file.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{fchownat, Gid};

use super::{errno_err, fd_path, file_type, io_err, list_dir, Result};

/// A pod's `fsGroupChangePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangePolicy {
    /// Walk the whole volume every time it is set up.
    Always,
    /// Walk it only when its root does not look done already, which spares
    /// large volumes a full walk on every pod start.
    OnRootMismatch,
}

const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

fn fs_group_mask(read_only: bool) -> u32 {
    if read_only {
        RO_MASK
    } else {
        RW_MASK
    }
}

/// Whether the volume root already carries fsGroup's marks (the kubelet's
/// `requiresPermissionChange`).
fn root_needs_change(dir: &Path, fs_group: u32, read_only: bool) -> bool {
    let Ok(md) = fs::metadata(dir) else {
        return true;
    };
    let wanted = fs_group_mask(read_only) | EXEC_MASK;
    md.gid() != fs_group || !md.is_dir() || md.mode() & wanted != wanted || md.mode() & SETGID == 0
}

/// Gives the volume to the pod's `fsGroup` the way the kubelet's
/// SetVolumeOwnership does, so the containers' supplementary group can use
/// it: every entry's group becomes `fs_group` (owners are kept), files gain
/// group (and owner) read, and write unless `read_only`, and directories
/// also gain search and the setgid bit so files created later inherit the
/// group. Symlinks are not followed (their own group changes; their
/// targets' modes stay as the volume plugin set them).
///
/// A failed chown/chmod of one entry is logged and the walk goes on, as in
/// the kubelet (e.g. an NFS volume that squashes root); an entry that cannot
/// be read is an error.
pub fn set_volume_ownership(
    dir: &Path,
    fs_group: u32,
    read_only: bool,
    policy: ChangePolicy,
) -> Result<()> {
    if policy == ChangePolicy::OnRootMismatch && !root_needs_change(dir, fs_group, read_only) {
        return Ok(());
    }
    let mask = fs_group_mask(read_only);
    let gid = Gid::from_raw(fs_group);
    let root_fd = nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(errno_err(dir, "open"))?;

    // Each entry is opened without following symlinks (O_PATH|O_NOFOLLOW)
    // and changed through that fd, so a container renaming things in its
    // emptyDir meanwhile cannot make this chmod a host file.
    let mut stack: Vec<(OwnedFd, PathBuf)> = Vec::new();
    if let Some(dir_fd) = change_entry(root_fd, dir, gid, mask)? {
        stack.push((dir_fd, dir.to_path_buf()));
    }
    while let Some((dir_fd, path)) = stack.pop() {
        let names = list_dir(&dir_fd).map_err(io_err(&path, "read directory"))?;
        for name in names {
            let child = path.join(&name);
            let fd = match openat(
                dir_fd.as_fd(),
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(errno_err(&child, "open")(e)),
            };
            if let Some(sub) = change_entry(fd, &child, gid, mask)? {
                stack.push((sub, child));
            }
        }
    }
    Ok(())
}

/// Changes one entry (an `O_PATH` fd); returns a readable fd when it is a
/// directory to descend into.
fn change_entry(fd: OwnedFd, path: &Path, gid: Gid, mask: u32) -> Result<Option<OwnedFd>> {
    let st = fstat(&fd).map_err(errno_err(path, "stat"))?;
    if let Err(e) = fchownat(
        fd.as_fd(),
        "",
        None,
        Some(gid),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        tracing::warn!(path = %path.display(), error = %io::Error::from(e), "cannot change the group of a volume's file to the pod's fsGroup");
    }
    let kind = file_type(&st);
    if kind == SFlag::S_IFLNK {
        return Ok(None);
    }
    let is_dir = kind == SFlag::S_IFDIR;
    let mut mode = (st.st_mode & 0o7777) | mask;
    if is_dir {
        mode |= SETGID | EXEC_MASK;
    }
    // chmod through /proc/self/fd reaches exactly the inode opened above.
    if let Err(e) = fs::set_permissions(fd_path(&fd), fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot change the mode of a volume's file for the pod's fsGroup");
    }
    if !is_dir {
        return Ok(None);
    }
    let readable = openat(
        fd.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(path, "open directory"))?;
    Ok(Some(readable))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::os::unix::fs::symlink;

    // --- fsGroup -----------------------------------------------------------

    #[test]
    fn ownership_always() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        fs::write(&outside, "x").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(vol.join("d/e")).unwrap();
        fs::set_permissions(vol.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(vol.join("f"), "x").unwrap();
        fs::set_permissions(vol.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(vol.join("d/e/g"), "x").unwrap();
        fs::set_permissions(vol.join("d/e/g"), fs::Permissions::from_mode(0o4700)).unwrap();
        symlink(&outside, vol.join("link")).unwrap();
        fs::set_permissions(&vol, fs::Permissions::from_mode(0o755)).unwrap();
        let outside_gid = fs::metadata(&outside).unwrap().gid();

        set_volume_ownership(&vol, 4242, false, ChangePolicy::Always).unwrap();
        let check = |p: &Path, mode: u32| {
            let md = fs::symlink_metadata(p).unwrap();
            assert_eq!(md.gid(), 4242, "{}", p.display());
            assert_eq!(md.uid(), 0, "{}", p.display());
            if !md.file_type().is_symlink() {
                assert_eq!(md.mode() & 0o7777, mode, "{}", p.display());
            }
        };
        check(&vol, 0o2775);
        check(&vol.join("d"), 0o2770);
        check(&vol.join("d/e"), 0o2775);
        check(&vol.join("f"), 0o660);
        check(&vol.join("d/e/g"), 0o4760);
        check(&vol.join("link"), 0);
        // The link's target is not touched.
        assert_eq!(mode_of(&outside), 0o600);
        assert_eq!(fs::metadata(&outside).unwrap().gid(), outside_gid);

        // Read-only: read bits only.
        set_volume_ownership(&vol, 4343, true, ChangePolicy::Always).unwrap();
        let md = fs::metadata(vol.join("f")).unwrap();
        assert_eq!((md.gid(), md.mode() & 0o7777), (4343, 0o660));
        let ro = tmp.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(ro.join("f"), "x").unwrap();
        fs::set_permissions(ro.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        set_volume_ownership(&ro, 4343, true, ChangePolicy::Always).unwrap();
        assert_eq!(mode_of(&ro), 0o2750);
        assert_eq!(mode_of(&ro.join("f")), 0o640);
    }

    #[test]
    fn ownership_on_root_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir(&vol).unwrap();
        fs::write(vol.join("f"), "x").unwrap();
        fs::set_permissions(vol.join("f"), fs::Permissions::from_mode(0o600)).unwrap();

        // Root does not match: the whole walk happens.
        set_volume_ownership(&vol, 5000, false, ChangePolicy::OnRootMismatch).unwrap();
        assert_eq!(fs::metadata(vol.join("f")).unwrap().gid(), 5000);
        assert_eq!(mode_of(&vol.join("f")), 0o660);

        // Root matches: nothing below is looked at.
        // (chown back: the setgid directory hands its group to new files)
        fs::write(vol.join("late"), "x").unwrap();
        std::os::unix::fs::chown(vol.join("late"), None, Some(0)).unwrap();
        fs::set_permissions(vol.join("late"), fs::Permissions::from_mode(0o600)).unwrap();
        set_volume_ownership(&vol, 5000, false, ChangePolicy::OnRootMismatch).unwrap();
        let md = fs::metadata(vol.join("late")).unwrap();
        assert_eq!((md.gid(), md.mode() & 0o7777), (0, 0o600));

        // Another group, or a lost setgid bit: a mismatch again.
        set_volume_ownership(&vol, 5001, false, ChangePolicy::OnRootMismatch).unwrap();
        assert_eq!(fs::metadata(vol.join("late")).unwrap().gid(), 5001);
        fs::write(vol.join("later"), "x").unwrap();
        std::os::unix::fs::chown(vol.join("later"), None, Some(0)).unwrap();
        fs::set_permissions(&vol, fs::Permissions::from_mode(0o775)).unwrap();
        set_volume_ownership(&vol, 5001, false, ChangePolicy::OnRootMismatch).unwrap();
        assert_eq!(fs::metadata(vol.join("later")).unwrap().gid(), 5001);
        assert_eq!(mode_of(&vol), 0o2775);
        // Always walks even when the root matches.
        fs::write(vol.join("last"), "x").unwrap();
        std::os::unix::fs::chown(vol.join("last"), None, Some(0)).unwrap();
        set_volume_ownership(&vol, 5001, false, ChangePolicy::Always).unwrap();
        assert_eq!(fs::metadata(vol.join("last")).unwrap().gid(), 5001);
    }
}
