//! Mounting volumes into a pod's directory and taking them down again.
//!
//! Binds and tmpfs mounts are idempotent (a target that is already a mount
//! point is left alone), since a pod is prepared again after every restart
//! of the agent. Mount points are read from `/proc/self/mountinfo`.
//! [`teardown`] is the only way a pod's directory is removed: it unmounts
//! everything first and then deletes only what is on the directory's own
//! filesystem, never following a symlink, so a hostPath or persistent
//! volume is never emptied.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::{errno_err, file_type, io_err, list_dir, unexpected, Result, VolumeFsError};

// ---------------------------------------------------------------------------
// Mount targets, binds and tmpfs
// ---------------------------------------------------------------------------

/// Creates an empty mount target for a directory or a file (anything that
/// is not a directory is bound onto a file), refusing a symlink so that the
/// mount cannot land somewhere else.
pub(super) fn make_mount_target(target: &Path, is_dir: bool) -> Result<()> {
    if let Some(parent) = target.parent() {
        if !parent.as_os_str().is_empty() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .map_err(io_err(parent, "create directory"))?;
        }
    }
    match fs::symlink_metadata(target) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(unexpected(
                target,
                "is a symlink; refusing to mount over it",
            ));
        }
        Ok(md) if md.is_dir() == is_dir => return Ok(()),
        Ok(_) => {
            return Err(unexpected(
                target,
                if is_dir {
                    "exists and is not a directory, but the mount's source is one"
                } else {
                    "is a directory, but the mount's source is not one"
                },
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(target, "inspect")(e)),
    }
    if is_dir {
        match fs::create_dir(target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(target, "create directory")(e)),
        }
    } else {
        OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(target)
            .map(drop)
            .map_err(io_err(target, "create file"))
    }
}

/// [`is_mount_point`], with the error the mount functions report.
pub(super) fn is_mounted(target: &Path) -> Result<bool> {
    is_mount_point(target).map_err(io_err(target, "read /proc/self/mountinfo"))
}

/// Binds `src` (a directory or a file, with everything mounted beneath it)
/// onto `target`, creating the target; a `target` that is already a mount
/// point is left as it is, so preparing a pod again is harmless.
pub fn bind(src: &Path, target: &Path) -> Result<()> {
    if is_mounted(target)? {
        return Ok(());
    }
    let md = fs::metadata(src).map_err(io_err(src, "stat the bind mount's source"))?;
    make_mount_target(target, md.is_dir())?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        unexpected(
            target,
            format!(
                "cannot bind {} onto it: {}",
                src.display(),
                io::Error::from(e)
            ),
        )
    })
}

/// [`bind`], then made read-only: an image volume, whose tree in the image
/// store is shared by every pod and must never change.
pub fn bind_read_only(src: &Path, target: &Path) -> Result<()> {
    if is_mounted(target)? {
        return Ok(());
    }
    bind(src, target)?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| {
        unexpected(
            target,
            format!(
                "cannot make the bind mount read-only: {}",
                io::Error::from(e)
            ),
        )
    })
}

/// Mounts a tmpfs on `dir` (an emptyDir with `medium: Memory`, or a
/// Secret's files, which must never reach a disk), creating `dir`. `mode`
/// is the tmpfs root's permission bits, `size_bytes` its limit (tmpfs's
/// default, half the RAM, otherwise). Already a mount point: left alone.
pub fn mount_tmpfs(dir: &Path, size_bytes: Option<u64>, mode: u32) -> Result<()> {
    if is_mounted(dir)? {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(io_err(dir, "create directory"))?;
    let mut options = format!("mode={:04o}", mode & 0o7777);
    if let Some(size) = size_bytes {
        options.push_str(&format!(",size={size}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| {
        unexpected(
            dir,
            format!(
                "cannot mount a tmpfs ({options}) on it: {}",
                io::Error::from(e)
            ),
        )
    })
}

// ---------------------------------------------------------------------------
// Mount points
// ---------------------------------------------------------------------------

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(digits) = field.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let v = digits
                        .iter()
                        .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(v) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn parse_mountinfo(text: &[u8]) -> Vec<PathBuf> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|mp| PathBuf::from(OsString::from_vec(unescape_mountinfo(mp))))
        .collect()
}

fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(parse_mountinfo(&fs::read("/proc/self/mountinfo")?))
}

/// Whether `path` (after resolving symlinks) is a mount point in this
/// process's mount namespace; a missing path is not one.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(mount_points()?.contains(&canonical))
}

/// Every mount point at or below `dir` (after resolving symlinks), deepest
/// first, the order in which they can be unmounted.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let canonical = match fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|mp| mp.starts_with(&canonical))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    found.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| b.cmp(a))
    });
    Ok(found)
}

// ---------------------------------------------------------------------------
// Teardown
// ---------------------------------------------------------------------------

/// Removes a pod's directory the kubelet's way: unmount everything in it
/// first, then delete only what lies on the directory's own filesystem,
/// never following a symlink. A hostPath or persistent volume bound inside
/// is thereby unmounted, never emptied, even if unmounting failed silently
/// or a container planted a symlink to a host directory.
pub fn teardown(dir: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, "inspect")(e)),
    };
    if md.file_type().is_symlink() {
        // Only the link is ours; what it points to is not.
        return fs::remove_file(dir).map_err(io_err(dir, "remove symlink"));
    }

    // Stacked mounts need one round each.
    for _ in 0..16 {
        let mounts = mounts_under(dir).map_err(io_err(dir, "read /proc/self/mountinfo"))?;
        if mounts.is_empty() {
            break;
        }
        for mp in mounts {
            match umount2(&mp, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(errno_err(&mp, "unmount")(e)),
            }
        }
    }
    let left = mounts_under(dir).map_err(io_err(dir, "read /proc/self/mountinfo"))?;
    if !left.is_empty() {
        return Err(VolumeFsError::Teardown {
            dir: dir.to_path_buf(),
            problems: left
                .iter()
                .map(|mp| format!("{} is still mounted", mp.display()))
                .collect(),
        });
    }

    let canonical = fs::canonicalize(dir).map_err(io_err(dir, "resolve"))?;
    let (Some(parent), Some(name)) = (canonical.parent(), canonical.file_name()) else {
        return Err(unexpected(dir, "refusing to remove a filesystem root"));
    };
    let parent_fd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(parent, "open directory"))?;
    let problems = remove_tree(&parent_fd, name, &canonical);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VolumeFsError::Teardown {
            dir: dir.to_path_buf(),
            problems,
        })
    }
}

/// A directory being emptied: its fd, its path (for messages), and the
/// names still to remove from it.
struct Frame {
    fd: OwnedFd,
    name: OsString,
    path: PathBuf,
    pending: Vec<OsString>,
}

/// Opens `parent/name` as a directory on device `dev`, without following a
/// symlink, ready to be emptied.
fn open_frame(
    parent: &OwnedFd,
    name: &OsStr,
    path: PathBuf,
    dev: Option<u64>,
) -> Result<Frame, String> {
    let fd = openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: cannot open: {}", path.display(), io::Error::from(e)))?;
    let st = fstat(&fd)
        .map_err(|e| format!("{}: cannot stat: {}", path.display(), io::Error::from(e)))?;
    if let Some(dev) = dev {
        if st.st_dev != dev {
            return Err(format!(
                "{} is on another filesystem (device {} instead of {}), not removing it",
                path.display(),
                st.st_dev,
                dev
            ));
        }
    }
    let pending =
        list_dir(&fd).map_err(|e| format!("{}: cannot read directory: {e}", path.display()))?;
    Ok(Frame {
        fd,
        name: name.to_os_string(),
        path,
        pending,
    })
}

/// Deletes `parent/name` and everything below it that is on the same
/// filesystem, holding an fd per level (no path is resolved twice, so a
/// rename or symlink planted meanwhile cannot redirect it); returns what
/// could not be removed.
fn remove_tree(parent: &OwnedFd, name: &OsStr, path: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let top = match open_frame(parent, name, path.to_path_buf(), None) {
        Ok(frame) => frame,
        Err(p) => {
            problems.push(p);
            return problems;
        }
    };
    let dev = match fstat(&top.fd) {
        Ok(st) => st.st_dev,
        Err(e) => {
            problems.push(format!(
                "{}: cannot stat: {}",
                path.display(),
                io::Error::from(e)
            ));
            return problems;
        }
    };
    let mut stack = vec![top];
    while let Some(frame) = stack.last_mut() {
        let Some(child) = frame.pending.pop() else {
            let done = stack.pop().expect("non-empty stack");
            let parent_fd = stack.last().map_or(parent, |f| &f.fd);
            match unlinkat(
                parent_fd.as_fd(),
                done.name.as_os_str(),
                UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                // What was left inside is already reported.
                Err(Errno::ENOTEMPTY) if !problems.is_empty() => {}
                Err(e) => problems.push(format!(
                    "{}: cannot remove: {}",
                    done.path.display(),
                    io::Error::from(e)
                )),
            }
            continue;
        };
        let child_path = frame.path.join(&child);
        let st = match fstatat(
            frame.fd.as_fd(),
            child.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                problems.push(format!(
                    "{}: cannot stat: {}",
                    child_path.display(),
                    io::Error::from(e)
                ));
                continue;
            }
        };
        if file_type(&st) == SFlag::S_IFDIR {
            match open_frame(&frame.fd, &child, child_path, Some(dev)) {
                Ok(next) => stack.push(next),
                Err(p) => problems.push(p),
            }
        } else {
            // Unlinking a name in a directory of our own filesystem removes
            // only that name, whatever the inode is (a hard link to a host
            // file keeps the file): no device check is needed, and
            // overlayfs reports lower layers' devices for files anyway.
            match unlinkat(
                frame.fd.as_fd(),
                child.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => problems.push(format!(
                    "{}: cannot remove: {}",
                    child_path.display(),
                    io::Error::from(e)
                )),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::volumes::fs::write_atomic;
    use std::os::unix::fs::{symlink, MetadataExt};

    #[test]
    fn tmpfs_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pod/volumes/empty-dir/cache");
        let mut guard = MountGuard::new();
        guard.watch(&dir);
        mount_tmpfs(&dir, Some(4 << 20), 0o777).unwrap();
        mount_tmpfs(&dir, Some(4 << 20), 0o777).unwrap();
        assert!(is_mount_point(&dir).unwrap());
        assert_eq!(mounts_under(&dir).unwrap().len(), 1);
        assert_eq!(mode_of(&dir), 0o777);
        assert_eq!(mode_of(&tmp.path().join("pod/volumes")), 0o750);
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .unwrap();
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        assert!(line.contains("size=4096k"), "{line}");
        // Its contents are not on the parent's filesystem.
        assert_ne!(
            fs::metadata(&dir).unwrap().dev(),
            fs::metadata(tmp.path()).unwrap().dev()
        );
    }

    #[test]
    fn mountinfo_unescapes_and_nested_order() {
        assert_eq!(
            unescape_mountinfo(br"/a\040b\011c\134d\012"),
            b"/a b\tc\\d\n"
        );
        assert_eq!(unescape_mountinfo(br"/trailing\04"), br"/trailing\04");
        let parsed = parse_mountinfo(
            b"36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n",
        );
        assert_eq!(parsed, vec![PathBuf::from("/mnt/with space")]);

        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("my dir");
        let inner = top.join("in ner");
        let mut guard = MountGuard::new();
        guard.watch(&top);
        guard.watch(&inner);
        mount_tmpfs(&top, None, 0o755).unwrap();
        mount_tmpfs(&inner, None, 0o755).unwrap();
        assert!(is_mount_point(&top).unwrap());
        assert!(is_mount_point(&inner).unwrap());
        assert!(!is_mount_point(tmp.path()).unwrap());
        assert!(!is_mount_point(&tmp.path().join("missing")).unwrap());
        let top_c = fs::canonicalize(&top).unwrap();
        assert_eq!(
            mounts_under(tmp.path()).unwrap(),
            vec![top_c.join("in ner"), top_c.clone()]
        );
        assert!(mounts_under(&tmp.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    // --- teardown ----------------------------------------------------------

    #[test]
    fn teardown_unmounts_and_spares_host_data() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir_all(host.join("deep")).unwrap();
        fs::write(host.join("keep"), "precious").unwrap();
        fs::write(host.join("deep/keep2"), "precious").unwrap();
        fs::write(tmp.path().join("hostfile"), "file").unwrap();

        let pod = tmp.path().join("pod");
        let hp = pod.join("volumes/kubernetes.io~host-path/data");
        let hpf = pod.join("volumes/kubernetes.io~host-path/file");
        let ed = pod.join("volumes/kubernetes.io~empty-dir/mem");
        let mut guard = MountGuard::new();
        for p in [&hp, &hpf, &ed] {
            guard.watch(p);
        }
        bind(&host, &hp).unwrap();
        bind(&tmp.path().join("hostfile"), &hpf).unwrap();
        mount_tmpfs(&ed, None, 0o777).unwrap();
        fs::write(ed.join("scratch"), "x").unwrap();
        write_atomic(
            &pod.join("volumes/kubernetes.io~configmap/cm"),
            &payload(&[("a/b", "1", 0o644)]),
            &no_perms,
        )
        .unwrap();
        // A link a container could plant, pointing at host data.
        symlink(&host, pod.join("link")).unwrap();
        symlink(host.join("keep"), pod.join("filelink")).unwrap();

        teardown(&pod).unwrap();
        assert!(!pod.exists());
        assert!(mounts_under(tmp.path()).unwrap().is_empty());
        assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "precious");
        assert_eq!(
            fs::read_to_string(host.join("deep/keep2")).unwrap(),
            "precious"
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("hostfile")).unwrap(),
            "file"
        );
        // Missing: nothing to do.
        teardown(&pod).unwrap();
    }

    #[test]
    fn teardown_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/f"), "keep").unwrap();
        let pod = tmp.path().join("pod");
        fs::create_dir_all(pod.join("a/b")).unwrap();
        symlink(&outside, pod.join("a/b/out")).unwrap();
        symlink("../../../outside/sub", pod.join("a/b/rel")).unwrap();
        teardown(&pod).unwrap();
        assert!(!pod.exists());
        assert_eq!(fs::read_to_string(outside.join("sub/f")).unwrap(), "keep");

        // The pod directory itself a symlink: only the link goes.
        let link = tmp.path().join("podlink");
        symlink(&outside, &link).unwrap();
        teardown(&link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read_to_string(outside.join("sub/f")).unwrap(), "keep");
    }

    #[test]
    fn removal_refuses_other_filesystems() {
        // Exercise the st_dev guard directly: a mount teardown would have
        // unmounted stays, and its contents must survive.
        let tmp = tempfile::tempdir().unwrap();
        let pod = tmp.path().join("pod");
        let mnt = pod.join("vol");
        let mut guard = MountGuard::new();
        guard.watch(&mnt);
        mount_tmpfs(&mnt, None, 0o755).unwrap();
        fs::write(mnt.join("data"), "keep").unwrap();
        fs::write(pod.join("other"), "x").unwrap();
        let parent = nix::fcntl::open(
            tmp.path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let problems = remove_tree(&parent, OsStr::new("pod"), &pod);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("another filesystem"), "{problems:?}");
        assert!(problems[0].contains(mnt.to_str().unwrap()), "{problems:?}");
        assert_eq!(fs::read_to_string(mnt.join("data")).unwrap(), "keep");
        assert!(!pod.join("other").exists());
    }
}
