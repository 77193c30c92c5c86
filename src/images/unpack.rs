//! Unpacking an artifact's tar stream into a tree, safely: nothing an
//! archive holds may land outside the tree or smuggle privileges in.
//!
//! Every entry is created beneath a directory fd opened with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so neither `..`, an absolute
//! path, nor a symlink an earlier entry planted (`a -> /etc`, then
//! `a/passwd`) can take a later entry elsewhere. Symlinks themselves may
//! point only inside the tree (judged lexically from where they are), hard
//! links only at entries already unpacked inside it. Device nodes, FIFOs
//! and setuid/setgid files are refused: an artifact is a program and its
//! files, never a device or a privilege. Limits on bytes and entries stop
//! archive bombs. Any refusal leaves the half-made tree to the caller, who
//! unpacks into a private temporary directory and removes it on error.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// What an unpack may produce at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content, all entries together.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 4 GiB and a million entries: far above a release archive, far below
    /// what fills a node.
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries made.
    pub entries: u64,
}

/// Why an archive was refused, naming the entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is not a readable tar stream.
    #[error("the archive cannot be read: {0}")]
    Read(#[source] io::Error),
    /// An entry would land (or point) outside the tree, or is of a kind
    /// an artifact may not hold.
    #[error("entry {entry:?} is refused: {why}")]
    Refused {
        /// The entry's path as written in the archive.
        entry: String,
        /// Why.
        why: String,
    },
    /// A limit was reached.
    #[error("the archive is larger than allowed: {0}")]
    TooLarge(String),
    /// Writing the tree failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The entry's path in the tree.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn refused(entry: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        entry: entry.to_string(),
        why: why.into(),
    }
}

/// The entry's path as components inside the tree: `./` and empty parts
/// dropped; absolute paths and `..` refused.
fn inside(entry: &str, path: &Path) -> Result<Vec<String>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| refused(entry, "the path is not UTF-8"))?
                    .to_string(),
            ),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(entry, "absolute paths may not be unpacked"))
            }
            Component::ParentDir => return Err(refused(entry, "'..' would leave the tree")),
        }
    }
    Ok(out)
}

/// Whether a symlink at `at` (components) with target `target` stays
/// inside the tree, resolving `..` lexically from the link's directory.
fn link_stays_inside(at: &[String], target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = at.len().saturating_sub(1) as i64;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Opens directory `rel` beneath `root`, never through a symlink.
fn open_dir(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    openat2(root.as_fd(), rel, how)
}

/// The directory that will hold `parts`' last component, made as needed
/// (0755) one level at a time beneath `root`.
fn parent_dir(root: &OwnedFd, entry: &str, parts: &[String]) -> Result<OwnedFd, UnpackError> {
    let mut dir = open_dir(root, Path::new(".")).map_err(|e| refused(entry, e.desc()))?;
    for p in &parts[..parts.len().saturating_sub(1)] {
        match mkdirat(dir.as_fd(), p.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(refused(
                    entry,
                    format!("cannot make directory {p:?}: {}", e.desc()),
                ))
            }
        }
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        dir = openat2(dir.as_fd(), p.as_str(), how).map_err(|e| {
            refused(
                entry,
                format!(
                    "{p:?} is not a directory of the tree (a symlink or a file): {}",
                    e.desc()
                ),
            )
        })?;
    }
    Ok(dir)
}

/// Unpacks the tar stream `reader` into the empty directory `dest`.
pub fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Write {
        path: dest.to_path_buf(),
        source: e.into(),
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            continue;
        }
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let name = raw.to_string_lossy().into_owned();
        let parts = inside(&name, &raw)?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(UnpackError::TooLarge(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        if parts.is_empty() {
            continue; // the tree itself (`./`)
        }
        let mode = header.mode().map_err(UnpackError::Read)?;
        if mode & 0o6000 != 0 && !kind.is_dir() {
            return Err(refused(
                &name,
                "setuid and setgid files may not be unpacked",
            ));
        }
        let dir = parent_dir(&root, &name, &parts)?;
        let last = parts.last().expect("not empty").as_str();
        let at = dest.join(parts.join("/"));
        let write_err = |e: Errno| UnpackError::Write {
            path: at.clone(),
            source: e.into(),
        };
        match kind {
            tar::EntryType::Directory => {
                match mkdirat(dir.as_fd(), last, Mode::from_bits_truncate(mode & 0o777)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        // Only an existing directory (not a symlink) will do.
                        open_dir(&dir, Path::new(last)).map_err(|_| {
                            refused(
                                &name,
                                "a directory entry over something that is not a directory",
                            )
                        })?;
                    }
                    Err(e) => return Err(write_err(e)),
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().map_err(UnpackError::Read)?;
                if done.bytes + size > limits.max_bytes {
                    return Err(UnpackError::TooLarge(format!(
                        "more than {} bytes of files",
                        limits.max_bytes
                    )));
                }
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    last,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(mode & 0o777),
                )
                .map_err(|e| match e {
                    Errno::EEXIST => refused(&name, "an entry of this path was unpacked already"),
                    e => write_err(e),
                })?;
                let mut file = std::fs::File::from(fd);
                // Never more than the header says, whatever the stream holds.
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                    UnpackError::Write {
                        path: at.clone(),
                        source: e,
                    }
                })?;
                if copied != size {
                    return Err(UnpackError::Read(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {name:?} is truncated"),
                    )));
                }
                file.flush().map_err(|e| UnpackError::Write {
                    path: at.clone(),
                    source: e,
                })?;
                done.bytes += size;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&name, "a symlink without a target"))?
                    .into_owned();
                if !link_stays_inside(&parts, &target) {
                    return Err(refused(
                        &name,
                        format!(
                            "the symlink to {} would point outside the tree",
                            target.display()
                        ),
                    ));
                }
                nix::unistd::symlinkat(&target, dir.as_fd(), last).map_err(|e| match e {
                    Errno::EEXIST => refused(&name, "an entry of this path was unpacked already"),
                    e => write_err(e),
                })?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&name, "a hard link without a target"))?
                    .into_owned();
                let tparts = inside(&name, &target)?;
                if tparts.is_empty() {
                    return Err(refused(&name, "a hard link to the tree itself"));
                }
                let tdir = parent_dir(&root, &name, &tparts)?;
                let tlast = tparts.last().expect("not empty").as_str();
                // Never following a symlink: the target must be a file
                // already in the tree.
                nix::unistd::linkat(
                    tdir.as_fd(),
                    tlast,
                    dir.as_fd(),
                    last,
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(|e| {
                    refused(
                        &name,
                        format!("cannot link to {}: {}", target.display(), e.desc()),
                    )
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(refused(&name, "device nodes and FIFOs may not be unpacked"));
            }
            other => {
                return Err(refused(
                    &name,
                    format!("entries of type {other:?} are not supported"),
                ));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar header for `path` written byte for byte (the tar crate's
    /// builder refuses the hostile paths these tests need).
    fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32, link: &str) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        {
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        if !link.is_empty() {
            let l = &mut h.as_old_mut().linkname;
            l[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        h
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Mode(&'a str, u32),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dev(&'a str),
    }

    fn archive(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let (h, data): (tar::Header, &[u8]) = match e {
                E::File(p, d) => (
                    header(p, tar::EntryType::Regular, d.len() as u64, 0o644, ""),
                    d,
                ),
                E::Mode(p, m) => (header(p, tar::EntryType::Regular, 0, *m, ""), b""),
                E::Dir(p) => (header(p, tar::EntryType::Directory, 0, 0o755, ""), b""),
                E::Sym(p, t) => (header(p, tar::EntryType::Symlink, 0, 0o777, t), b""),
                E::Hard(p, t) => (header(p, tar::EntryType::Link, 0, 0o644, t), b""),
                E::Dev(p) => (header(p, tar::EntryType::Char, 0, 0o600, ""), b""),
            };
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn unpack(entries: &[E]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("tree")).unwrap();
        let r = unpack_tar(
            &archive(entries)[..],
            &outer.path().join("tree"),
            &Limits::default(),
        );
        (outer, r)
    }

    /// Nothing was written beside the tree.
    fn only_tree(outer: &tempfile::TempDir) {
        let names: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tree"]);
    }

    #[test]
    fn a_release_archive_unpacks_with_its_files_links_and_modes() {
        let (outer, r) = unpack(&[
            E::Dir("./"),
            E::Dir("./svc-1.4.2/"),
            E::File("./svc-1.4.2/bin/svc", b"#!/bin/sh\necho svc\n"),
            E::Sym("svc-1.4.2/current", "bin/svc"),
            E::Hard("svc-1.4.2/svc.hard", "svc-1.4.2/bin/svc"),
            E::Sym("svc-1.4.2/bin/up", "../current"),
        ]);
        let got = r.unwrap();
        assert_eq!(got.bytes, 19);
        let tree = outer.path().join("tree/svc-1.4.2");
        assert_eq!(
            std::fs::read_to_string(tree.join("current")).unwrap(),
            "#!/bin/sh\necho svc\n"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("svc.hard")).unwrap(),
            "#!/bin/sh\necho svc\n"
        );
        assert_eq!(
            std::fs::read_to_string(tree.join("bin/up")).unwrap(),
            "#!/bin/sh\necho svc\n"
        );
        only_tree(&outer);
    }

    #[test]
    fn escapes_devices_and_privileges_are_refused() {
        let cases: Vec<(Vec<E>, &str)> = vec![
            (vec![E::File("../evil", b"x")], "'..'"),
            (vec![E::File("a/../../evil", b"x")], "'..'"),
            (vec![E::File("/tmp/evil", b"x")], "absolute"),
            (vec![E::Sym("etc", "/etc")], "outside"),
            (vec![E::Sym("a/b", "../../x")], "outside"),
            // A symlink planted inside, then an entry through it.
            (
                vec![E::Sym("a", "."), E::File("a/x", b"x")],
                "not a directory",
            ),
            (
                vec![E::Dir("d"), E::Sym("d/up", ".."), E::File("d/up/x", b"x")],
                "not a directory",
            ),
            (vec![E::Hard("h", "../outside")], "'..'"),
            (vec![E::Hard("h", "missing")], "cannot link"),
            (
                vec![E::Sym("s", "x"), E::Hard("h", "s/y")],
                "not a directory",
            ),
            (vec![E::Dev("null")], "device"),
            (vec![E::Mode("su", 0o4755)], "setuid"),
            (vec![E::Mode("sg", 0o2755)], "setuid"),
            (
                vec![E::File("f", b"1"), E::File("f", b"2")],
                "unpacked already",
            ),
        ];
        for (entries, want) in cases {
            let (outer, r) = unpack(&entries);
            let e = r.expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
            only_tree(&outer);
        }
    }

    #[test]
    fn limits_stop_archive_bombs() {
        let outer = tempfile::tempdir().unwrap();
        let tree = outer.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let big = vec![0u8; 4096];
        let a = archive(&[E::File("a", &big), E::File("b", &big)]);
        let limits = Limits {
            max_bytes: 6000,
            max_entries: 10,
        };
        let e = unpack_tar(&a[..], &tree, &limits).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge(_)), "{e}");
        let limits = Limits {
            max_bytes: 1 << 20,
            max_entries: 1,
        };
        let tree2 = outer.path().join("tree2");
        std::fs::create_dir(&tree2).unwrap();
        let e = unpack_tar(&a[..], &tree2, &limits).unwrap_err();
        assert!(e.to_string().contains("entries"), "{e}");
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let a = archive(&[E::File("a", &[7u8; 2000])]);
        let outer = tempfile::tempdir().unwrap();
        let tree = outer.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        assert!(unpack_tar(&a[..1000], &tree, &Limits::default()).is_err());
    }
}
