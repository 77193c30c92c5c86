//! `subPath` mounts with the kubelet's protection against symlink escapes:
//! the path is resolved beneath its volume with `openat2`
//! (`RESOLVE_BENEATH`), missing directories are created one at a time
//! beneath fds obtained the same way, and what gets bound is the opened fd
//! itself, so a symlink swapped in after the check cannot redirect the
//! mount to host files.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

use super::mounts::{is_mounted, make_mount_target};
use super::{errno_err, fd_path, file_type, io_err, unexpected, Result, VolumeFsError};

fn open_dir_path(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_err(path, "open directory"))
}

/// `openat2` beneath `root_fd`, following symlinks only as long as they
/// stay inside.
fn resolve_beneath(
    root_fd: &OwnedFd,
    rel: &Path,
    flags: OFlag,
    resolve: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve | ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a concurrent rename could have let `..` escape; the kernel
    // asks to retry.
    let mut tries = 0;
    loop {
        match openat2(root_fd.as_fd(), rel, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            other => return other,
        }
    }
}

fn subpath_error(root: &Path, sub: &str, errno: Errno) -> VolumeFsError {
    match errno {
        Errno::EXDEV => VolumeFsError::Escape {
            root: root.to_path_buf(),
            sub: sub.to_string(),
        },
        Errno::ENOENT => unexpected(
            &root.join(sub),
            format!("subPath {sub:?} does not exist in the volume"),
        ),
        _ => VolumeFsError::Io {
            path: root.join(sub),
            op: "open the subPath beneath its volume",
            source: io::Error::from(errno),
        },
    }
}

/// Opens `root/sub` (as an `O_PATH` fd) the way the kubelet resolves a
/// `subPath`: symlinks inside the volume are followed (a ConfigMap key is
/// one), but nothing may resolve outside `root`, and the caller keeps the fd
/// so what it later binds is what was checked here.
///
/// With `create_dirs`, missing directories are made one at a time, each
/// beneath an fd obtained the same way, with `root`'s permission bits (the
/// kubelet's SafeMakeDir), so a symlink raced in cannot make it create
/// directories elsewhere.
pub fn open_beneath(root: &Path, sub: &str, create_dirs: bool) -> Result<OwnedFd> {
    let root_fd = open_dir_path(root)?;
    let rel = if sub.is_empty() {
        Path::new(".")
    } else {
        Path::new(sub)
    };
    match resolve_beneath(&root_fd, rel, OFlag::O_PATH, ResolveFlag::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create_dirs => {}
        Err(e) => return Err(subpath_error(root, sub, e)),
    }
    // Refuse a lexical climb out before creating anything on the way.
    let mut depth = 0usize;
    for name in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if name == ".." {
            if depth == 0 {
                return Err(VolumeFsError::Escape {
                    root: root.to_path_buf(),
                    sub: sub.to_string(),
                });
            }
            depth -= 1;
        } else {
            depth += 1;
        }
    }

    let root_st = fstat(&root_fd).map_err(errno_err(root, "stat"))?;
    let perm = Mode::from_bits_truncate(root_st.st_mode & 0o7777);
    let mut current = root_fd.try_clone().map_err(io_err(root, "duplicate fd"))?;
    let mut prefix = PathBuf::new();
    for name in sub.split('/').filter(|c| !c.is_empty() && *c != ".") {
        prefix.push(name);
        let next = match resolve_beneath(&root_fd, &prefix, OFlag::O_PATH, ResolveFlag::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let created = match mkdirat(current.as_fd(), name, perm) {
                    Ok(()) => true,
                    // Raced with someone else, or a dangling symlink (checked below).
                    Err(Errno::EEXIST) => false,
                    Err(e) => return Err(errno_err(&root.join(&prefix), "create directory")(e)),
                };
                if created {
                    // mkdirat's mode went through the umask; set it exactly,
                    // on the directory just made (no symlink may stand in).
                    let dir_fd = resolve_beneath(
                        &current,
                        Path::new(name),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                        ResolveFlag::RESOLVE_NO_SYMLINKS,
                    )
                    .map_err(errno_err(&root.join(&prefix), "open new directory"))?;
                    nix::sys::stat::fchmod(&dir_fd, perm)
                        .map_err(errno_err(&root.join(&prefix), "chmod"))?;
                }
                resolve_beneath(&root_fd, &prefix, OFlag::O_PATH, ResolveFlag::empty())
                    .map_err(|e| subpath_error(root, sub, e))?
            }
            Err(e) => return Err(subpath_error(root, sub, e)),
        };
        current = next;
    }
    Ok(current)
}

/// Binds `root/sub` onto `target` with the kubelet's subPath protection:
/// the path is resolved beneath the volume once, and the opened fd (through
/// `/proc/self/fd`) is what gets bound, so a symlink swapped in after the
/// check cannot redirect the mount. A `target` that is already a mount
/// point is left as it is: the bind outlives container restarts.
pub fn bind_subpath(root: &Path, sub: &str, target: &Path) -> Result<()> {
    if is_mounted(target)? {
        return Ok(());
    }
    let fd = open_beneath(root, sub, true)?;
    let subpath = root.join(sub);
    let st = fstat(&fd).map_err(errno_err(&subpath, "stat"))?;
    make_mount_target(target, file_type(&st) == SFlag::S_IFDIR)?;
    mount(
        Some(&fd_path(&fd)),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        unexpected(
            target,
            format!(
                "cannot bind subPath {} onto it: {}",
                subpath.display(),
                io::Error::from(e)
            ),
        )
    })?;
    // What is visible at the target must be what was opened.
    let bound = fs::metadata(target).map_err(io_err(target, "stat after mounting"))?;
    if bound.dev() != st.st_dev || bound.ino() != st.st_ino {
        let _ = umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        return Err(unexpected(
            target,
            format!(
                "the bind mount does not show subPath {}; unmounted it",
                subpath.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::volumes::fs::{bind, is_mount_point, mounts_under, write_atomic};
    use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixListener;

    // --- subPath -----------------------------------------------------------

    /// A volume with a ConfigMap-like layout, and a directory outside it.
    fn volume_fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "host data").unwrap();
        write_atomic(&root, &payload(&[("k", "value", 0o644)]), &no_perms).unwrap();
        (tmp, root, outside)
    }

    fn assert_escape(r: Result<OwnedFd>, what: &str) {
        match r {
            Err(VolumeFsError::Escape { .. }) => {}
            Err(e) => panic!("{what}: expected an escape error, got {e}"),
            Ok(fd) => panic!("{what}: opened {:?}", fs::read_link(fd_path(&fd))),
        }
    }

    #[test]
    fn open_beneath_refuses_escapes() {
        let (_tmp, root, outside) = volume_fixture();
        symlink("/etc", root.join("abs")).unwrap();
        symlink(&outside, root.join("abs_out")).unwrap();
        symlink("../../..", root.join("up")).unwrap();
        symlink("c2", root.join("c1")).unwrap();
        symlink("../outside", root.join("c2")).unwrap();

        for create in [false, true] {
            assert_escape(open_beneath(&root, "../outside", create), "../outside");
            assert_escape(open_beneath(&root, "/etc", create), "/etc");
            assert_escape(open_beneath(&root, "abs", create), "abs");
            assert_escape(open_beneath(&root, "abs/passwd", create), "abs/passwd");
            assert_escape(open_beneath(&root, "up", create), "up");
            assert_escape(open_beneath(&root, "up/etc", create), "up/etc");
            assert_escape(open_beneath(&root, "c1", create), "c1");
            assert_escape(open_beneath(&root, "c1/secret", create), "c1/secret");
        }
        // Nothing was created outside on the way.
        assert_escape(open_beneath(&root, "abs_out/new/dir", true), "abs_out/new");
        assert_escape(open_beneath(&root, "c1/new", true), "c1/new");
        assert_escape(open_beneath(&root, "fresh/../../x", true), "fresh/../..");
        assert_eq!(names(&outside), vec!["secret".to_string()]);
        assert!(!root.join("fresh").exists());

        let err = open_beneath(&root, "c1", false).unwrap_err().to_string();
        assert!(err.contains("subPath \"c1\" escapes the volume"), "{err}");
        assert!(err.contains(root.to_str().unwrap()), "{err}");
    }

    #[test]
    fn open_beneath_follows_links_inside_and_creates_dirs() {
        let (_tmp, root, _outside) = volume_fixture();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o2750)).unwrap();
        let fd = open_beneath(&root, "k", false).unwrap();
        let st = fstat(&fd).unwrap();
        let real = fs::metadata(root.join("..data/k")).unwrap();
        assert_eq!((st.st_dev, st.st_ino), (real.dev(), real.ino()));
        assert_eq!(file_type(&st), SFlag::S_IFREG);

        // A symlink that climbs but stays inside is fine.
        fs::create_dir(root.join("sub")).unwrap();
        symlink("../k", root.join("sub/back")).unwrap();
        let fd = open_beneath(&root, "sub/back", false).unwrap();
        assert_eq!(fstat(&fd).unwrap().st_ino, real.ino());

        let err = open_beneath(&root, "x/y/z", false).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let fd = open_beneath(&root, "x/y/z", true).unwrap();
        assert_eq!(file_type(&fstat(&fd).unwrap()), SFlag::S_IFDIR);
        for d in ["x", "x/y", "x/y/z"] {
            let md = fs::symlink_metadata(root.join(d)).unwrap();
            assert!(md.is_dir(), "{d}");
            assert_eq!(md.mode() & 0o7777, 0o2750, "{d}");
        }
        // Created through a link inside the volume too.
        symlink("sub", root.join("via")).unwrap();
        open_beneath(&root, "via/made", true).unwrap();
        assert!(root.join("sub/made").is_dir());

        // A dangling link cannot be created through.
        symlink("nowhere", root.join("dangling")).unwrap();
        assert!(open_beneath(&root, "dangling/x", true).is_err());
        assert!(!root.join("nowhere").exists());
    }

    #[test]
    fn bind_subpath_of_file_and_dir() {
        let (tmp, root, _outside) = volume_fixture();
        let mut guard = MountGuard::new();
        let target = tmp.path().join("subpaths/c/0");
        guard.watch(&target);
        bind_subpath(&root, "k", &target).unwrap();
        assert!(is_mount_point(&target).unwrap());
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(fs::read_to_string(&target).unwrap(), "value");
        assert_eq!(mode_of(&tmp.path().join("subpaths/c")), 0o750);
        // Idempotent: a second call finds the mount.
        bind_subpath(&root, "k", &target).unwrap();
        assert_eq!(
            mounts_under(&target).unwrap(),
            vec![fs::canonicalize(&target).unwrap()]
        );

        let dtarget = tmp.path().join("subpaths/c/1");
        guard.watch(&dtarget);
        bind_subpath(&root, "data/logs", &dtarget).unwrap();
        assert!(is_mount_point(&dtarget).unwrap());
        fs::write(dtarget.join("f"), "through").unwrap();
        assert_eq!(
            fs::read_to_string(root.join("data/logs/f")).unwrap(),
            "through"
        );
    }

    #[test]
    fn bind_subpath_refuses_escapes() {
        let (tmp, root, outside) = volume_fixture();
        let _guard = {
            let mut g = MountGuard::new();
            g.watch(&tmp.path().join("t1"));
            g.watch(&tmp.path().join("t2"));
            g
        };
        symlink(&outside, root.join("out")).unwrap();
        for (sub, target) in [("../outside", "t1"), ("out/secret", "t2")] {
            let target = tmp.path().join(target);
            let err = bind_subpath(&root, sub, &target).unwrap_err();
            assert!(matches!(err, VolumeFsError::Escape { .. }), "{sub}: {err}");
            assert!(!is_mount_point(&target).unwrap());
        }
    }

    #[test]
    fn bind_socket_and_plain_bind() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        fs::create_dir(&root).unwrap();
        let _listener = UnixListener::bind(root.join("sock")).unwrap();
        let mut guard = MountGuard::new();
        let target = tmp.path().join("t/sock");
        guard.watch(&target);
        bind_subpath(&root, "sock", &target).unwrap();
        assert!(fs::metadata(&target).unwrap().file_type().is_socket());

        let dst = tmp.path().join("pv/mount");
        guard.watch(&dst);
        bind(&root, &dst).unwrap();
        bind(&root, &dst).unwrap();
        assert!(is_mount_point(&dst).unwrap());
        assert_eq!(mounts_under(&dst).unwrap().len(), 1);
        fs::write(dst.join("f"), "x").unwrap();
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "x");
    }
}
