//! Unpacking tar streams into trees, safely, in two modes.
//!
//! [`unpack_tar`], an artifact's archive: nothing it holds may land
//! outside the tree or smuggle privileges in. Every entry is created
//! beneath a directory fd opened with `openat2` (`RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`), so neither `..`, an absolute path, nor a symlink
//! an earlier entry planted (`a -> /etc`, then `a/passwd`) can take a later
//! entry elsewhere. Symlinks themselves may point only inside the tree
//! (judged lexically from where they are), hard links only at entries
//! already unpacked inside it. Device nodes, FIFOs and setuid/setgid files
//! are refused: an artifact is a program and its files, never a device or
//! a privilege.
//!
//! [`unpack_layer`], an OCI image's layers applied in order onto one root
//! file system: whiteouts, replacements, owners and setuid bits as the
//! image says, symlinks anywhere (the root is the container's `/`), but
//! every path still resolved inside the root (`RESOLVE_IN_ROOT`).
//!
//! In both, limits on bytes and entries stop archive bombs, and any
//! refusal leaves the half-made tree to the caller, who unpacks into a
//! private temporary directory and removes it on error.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

/// An entry's path (as written, and as text for messages), counted
/// against the entry limit; `None` for the headers tar uses to carry
/// another entry's long name or attributes (the tar crate has folded them
/// into that entry).
fn counted_path<R: Read>(
    entry: &tar::Entry<R>,
    done: &mut Unpacked,
    limits: &Limits,
) -> Result<Option<(PathBuf, String)>, UnpackError> {
    if matches!(
        entry.header().entry_type(),
        tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
    ) {
        return Ok(None);
    }
    let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
    let name = raw.to_string_lossy().into_owned();
    done.entries += 1;
    if done.entries > limits.max_entries {
        return Err(UnpackError::TooLarge(format!(
            "more than {} entries",
            limits.max_entries
        )));
    }
    Ok(Some((raw, name)))
}

/// Copies a regular file's content: never more than its header says,
/// whatever the stream holds, and a short one is a truncated archive.
fn copy_entry(
    entry: &mut impl Read,
    size: u64,
    file: &mut std::fs::File,
    at: &Path,
    name: &str,
) -> Result<(), UnpackError> {
    let copied = io::copy(&mut entry.take(size), file).map_err(|e| UnpackError::Write {
        path: at.to_path_buf(),
        source: e,
    })?;
    if copied != size {
        return Err(UnpackError::Read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("entry {name:?} is truncated"),
        )));
    }
    Ok(())
}

/// The directory everything is created beneath (an `O_PATH` fd).
fn open_tree(dir: &Path) -> Result<OwnedFd, UnpackError> {
    nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Write {
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// Unpacks the tar stream `reader` into the empty directory `dest`.
pub fn unpack_tar<R: Read>(
    reader: R,
    dest: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let root = open_tree(dest)?;
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let Some((raw, name)) = counted_path(&entry, &mut done, limits)? else {
            continue;
        };
        let parts = inside(&name, &raw)?;
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
                copy_entry(&mut entry, size, &mut file, &at, &name)?;
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

/// Path resolution for the layer mode: symlinks are followed as if the
/// root were `/` (an image's `lib -> usr/lib` works, `x -> /etc` stays in
/// the image, `..` stops at the root), as containerd's `fs.RootPath` does
/// when it applies a layer. Never across a mount, never through `/proc`
/// magic links.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// Opens directory `rel` (components) of the root, resolved inside it.
fn open_in_root(root: &OwnedFd, rel: &[OsString]) -> Result<OwnedFd, Errno> {
    let mut path = PathBuf::from(".");
    path.extend(rel);
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(in_root());
    // EAGAIN: a rename elsewhere raced a `..` lookup; the kernel asks for a retry.
    let mut tries = 0;
    loop {
        match openat2(root.as_fd(), &path, how) {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

/// A layer entry's path as components: `./` and empty parts dropped,
/// absolute paths and `..` refused (no image tool writes them; accepting
/// them would only hide a broken or hostile layer). Bytes, not UTF-8:
/// images may hold any file name.
fn layer_parts(entry: &str, path: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(entry, "absolute paths may not be unpacked"))
            }
            Component::ParentDir => return Err(refused(entry, "'..' would leave the tree")),
        }
    }
    Ok(out)
}

/// The directory to hold `parts`' last component, resolved inside the
/// root and made (0755, root's) as needed when `create`; `None` when it
/// does not exist and `create` is off.
fn layer_parent(
    root: &OwnedFd,
    entry: &str,
    parts: &[OsString],
    create: bool,
) -> Result<Option<OwnedFd>, UnpackError> {
    let parent = &parts[..parts.len().saturating_sub(1)];
    let not_dir = |e: Errno| {
        refused(
            entry,
            format!("its parent is not a directory of the image: {}", e.desc()),
        )
    };
    match open_in_root(root, parent) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(not_dir(e)),
    }
    for i in 1..=parent.len() {
        match open_in_root(root, &parent[..i]) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(not_dir(e)),
        }
        let up = open_in_root(root, &parent[..i - 1]).map_err(not_dir)?;
        match mkdirat(
            up.as_fd(),
            parent[i - 1].as_os_str(),
            Mode::from_bits_truncate(0o755),
        ) {
            // EEXIST: a dangling symlink; opening it below says so.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(not_dir(e)),
        }
    }
    open_in_root(root, parent).map(Some).map_err(not_dir)
}

/// How deep a tree a whiteout may remove: far deeper than any image, and
/// a bound on the descriptors and stack the removal holds.
const MAX_REMOVE_DEPTH: usize = 256;

/// Whether `name` in `dir` is a directory (not a symlink to one).
fn is_dir_at(dir: &impl AsFd, name: &OsStr) -> Result<bool, Errno> {
    let st = nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
}

/// The names in directory `dir`. Read through `/proc/self/fd`, which
/// names exactly the directory the descriptor holds, whatever was renamed
/// or replaced around it since.
fn list_dir(dir: &impl AsFd) -> Result<Vec<OsString>, Errno> {
    use std::os::fd::AsRawFd;
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let errno = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO));
    std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(errno)?
        .map(|e| e.map(|e| e.file_name()).map_err(errno))
        .collect()
}

/// Opens directory `name` of `dir` for listing, never through a symlink.
fn open_subdir(dir: &impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Removes `name` from `dir`, a directory with all it holds; nothing
/// there is fine. Symlinks are removed, never followed.
fn remove_at(dir: &impl AsFd, name: &OsStr, depth: usize) -> Result<(), Errno> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::ELOOP);
    }
    let sub = open_subdir(dir, name)?;
    for n in list_dir(&sub)? {
        remove_at(&sub, &n, depth + 1)?;
    }
    unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir)
}

/// Empties directory `dir` of what lower layers left (an opaque
/// whiteout): everything but what this layer made, recursing into the
/// directories this layer made or merged into.
fn clear_opaque(
    dir: &impl AsFd,
    made: &HashSet<(u64, OsString)>,
    depth: usize,
) -> Result<(), Errno> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::ELOOP);
    }
    let ino = nix::sys::stat::fstat(dir.as_fd())?.st_ino;
    for n in list_dir(dir)? {
        if !made.contains(&(ino, n.clone())) {
            remove_at(dir, &n, depth + 1)?;
        } else if is_dir_at(dir, &n)? {
            clear_opaque(&open_subdir(dir, &n)?, made, depth + 1)?;
        }
    }
    Ok(())
}

/// An entry's owner and times, PAX records overriding the header's
/// fields (ids above 2^21, sub-second times).
fn owner_and_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(u32, u32, i64), UnpackError> {
    let h = entry.header();
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| {
            UnpackError::Read(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} {v} is out of range"),
            ))
        })
    };
    let mut uid = to_u32(h.uid().map_err(UnpackError::Read)?, "uid")?;
    let mut gid = to_u32(h.gid().map_err(UnpackError::Read)?, "gid")?;
    let mut mtime = i64::try_from(h.mtime().map_err(UnpackError::Read)?).unwrap_or(0);
    if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Read)? {
        for e in exts {
            let e = e.map_err(UnpackError::Read)?;
            let (Ok(k), Ok(v)) = (e.key(), e.value()) else {
                continue;
            };
            match k {
                "uid" => uid = v.parse().map_err(|_| bad_pax(k, v))?,
                "gid" => gid = v.parse().map_err(|_| bad_pax(k, v))?,
                "mtime" => {
                    let secs = v.split('.').next().unwrap_or("");
                    mtime = secs.parse().map_err(|_| bad_pax(k, v))?;
                }
                _ => {}
            }
        }
    }
    Ok((uid, gid, mtime))
}

fn bad_pax(key: &str, value: &str) -> UnpackError {
    UnpackError::Read(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the PAX record {key}={value:?} is invalid"),
    ))
}

/// Applies one OCI layer's tar stream onto the image root `root` (the
/// layers before it already applied), as the image spec's changeset rules
/// say:
///
/// - `.wh.<name>` removes `<name>` (what lower layers left), and
///   `.wh..wh..opq` empties its directory of lower-layer content; neither
///   is created.
/// - A later entry replaces what is at its path (a file over a directory
///   and the other way round); a directory over a directory merges, taking
///   the new owner and mode.
/// - Owners (`lchown`, when running as root: unprivileged, files stay the
///   caller's), modes including setuid, setgid and sticky (an image's
///   `su` or `ping` needs them; the unit decides with `NoNewPrivileges=`
///   whether they count) and mtimes are kept; xattrs are ignored (file
///   capabilities among them: systemd grants capabilities per unit).
/// - Symlinks may point anywhere: an absolute target means the image's
///   root at run time. While unpacking, a path's parent directories are
///   resolved with `openat2(RESOLVE_IN_ROOT)`, symlinks followed as if the
///   root were `/` (so `lib/x` lands in `usr/lib/x` when `lib -> usr/lib`,
///   as containerd applies it), never out of the root; the last component
///   is never followed.
/// - Hard links only to entries inside the root.
/// - Device nodes and FIFOs are skipped: the unit gets its `/dev` from
///   systemd (`MountAPIVFS=`, `PrivateDevices=`), so an image's own would
///   be hidden anyway, and a store of unprivileged trees holds none.
///
/// The limits are this layer's share: the caller passes what remains of
/// an image's budget. A refusal leaves the half-applied root to the
/// caller, who builds images in a private directory and drops it.
pub fn unpack_layer<R: Read>(
    reader: R,
    root: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let rootfd = open_tree(root)?;
    let privileged = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    // What this layer made, by (parent directory inode, name): what an
    // opaque whiteout keeps. By inode, so a path reached through a symlink
    // counts where it really is.
    let mut made: HashSet<(u64, OsString)> = HashSet::new();
    // Directories whose mtime is set at the end (their entries change it).
    let mut dir_times: Vec<(Vec<OsString>, i64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let kind = entry.header().entry_type();
        let Some((raw, name)) = counted_path(&entry, &mut done, limits)? else {
            continue;
        };
        let parts = layer_parts(&name, &raw)?;
        let Some(last) = parts.last().cloned() else {
            continue; // the root itself (`./`): its metadata is the runtime's
        };
        let at = root.join(parts.iter().collect::<PathBuf>());
        let write_err = |e: Errno| UnpackError::Write {
            path: at.clone(),
            source: e.into(),
        };
        let last_bytes = last.as_bytes();
        if let Some(hidden) = last_bytes.strip_prefix(b".wh.") {
            let opaque = hidden == b".wh..opq";
            if !opaque && matches!(hidden, b"" | b"." | b"..") {
                return Err(refused(&name, "a whiteout of no file"));
            }
            // Nothing to do when its directory is not there.
            let Some(dir) = layer_parent(&rootfd, &name, &parts, false)? else {
                continue;
            };
            if opaque {
                clear_opaque(&dir_fd(&dir).map_err(write_err)?, &made, 0).map_err(write_err)?;
            } else {
                remove_at(&dir, OsStr::from_bytes(hidden), 0).map_err(write_err)?;
            }
            continue;
        }
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        let dir = layer_parent(&rootfd, &name, &parts, true)?.expect("made as needed");
        let (uid, gid, mtime) = owner_and_mtime(&mut entry)?;
        let mode = entry.header().mode().map_err(UnpackError::Read)? & 0o7777;
        let owner = |fd: &OwnedFd| -> Result<(), Errno> {
            if privileged {
                nix::unistd::fchown(fd.as_fd(), Some(uid.into()), Some(gid.into()))?;
            }
            // After chown, which clears setuid and setgid.
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
        };
        let time = nix::sys::time::TimeSpec::new(mtime, 0);
        match kind {
            tar::EntryType::Directory => {
                if !is_dir_at(&dir, &last).unwrap_or(false) {
                    remove_at(&dir, &last, 0).map_err(write_err)?;
                    mkdirat(
                        dir.as_fd(),
                        last.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(write_err)?;
                }
                let fd = open_subdir(&dir, &last).map_err(write_err)?;
                owner(&fd).map_err(write_err)?;
                dir_times.push((parts.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if done.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(UnpackError::TooLarge(format!(
                        "more than {} bytes of files",
                        limits.max_bytes
                    )));
                }
                remove_at(&dir, &last, 0).map_err(write_err)?;
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    last.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(write_err)?;
                let mut file = std::fs::File::from(fd);
                copy_entry(&mut entry, size, &mut file, &at, &name)?;
                let fd = OwnedFd::from(file);
                owner(&fd).map_err(write_err)?;
                nix::sys::stat::futimens(fd.as_fd(), &time, &time).map_err(write_err)?;
                done.bytes += size;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&name, "a symlink without a target"))?
                    .into_owned();
                remove_at(&dir, &last, 0).map_err(write_err)?;
                nix::unistd::symlinkat(&target, dir.as_fd(), last.as_os_str())
                    .map_err(write_err)?;
                if privileged {
                    nix::unistd::fchownat(
                        dir.as_fd(),
                        last.as_os_str(),
                        Some(uid.into()),
                        Some(gid.into()),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(write_err)?;
                }
                nix::sys::stat::utimensat(
                    dir.as_fd(),
                    last.as_os_str(),
                    &time,
                    &time,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                )
                .map_err(write_err)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| refused(&name, "a hard link without a target"))?
                    .into_owned();
                let tparts = layer_parts(&name, &target)?;
                let Some(tlast) = tparts.last() else {
                    return Err(refused(&name, "a hard link to the tree itself"));
                };
                let tdir = layer_parent(&rootfd, &name, &tparts, false)?.ok_or_else(|| {
                    refused(
                        &name,
                        format!(
                            "cannot link to {}: it is not in the image",
                            target.display()
                        ),
                    )
                })?;
                let same_dir = nix::sys::stat::fstat(tdir.as_fd()).map(|s| s.st_ino)
                    == nix::sys::stat::fstat(dir.as_fd()).map(|s| s.st_ino);
                if same_dir && *tlast == last {
                    return Err(refused(&name, "a hard link to itself"));
                }
                remove_at(&dir, &last, 0).map_err(write_err)?;
                // Never following a symlink: linked is what is at the path.
                nix::unistd::linkat(
                    tdir.as_fd(),
                    tlast.as_os_str(),
                    dir.as_fd(),
                    last.as_os_str(),
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(|e| {
                    refused(
                        &name,
                        format!("cannot link to {}: {}", target.display(), e.desc()),
                    )
                })?;
            }
            other => {
                return Err(refused(
                    &name,
                    format!("entries of type {other:?} are not supported"),
                ));
            }
        }
        let parent_ino = nix::sys::stat::fstat(dir.as_fd())
            .map_err(write_err)?
            .st_ino;
        made.insert((parent_ino, last));
    }
    for (parts, mtime) in dir_times.iter().rev() {
        let Some(last) = parts.last() else { continue };
        let Ok(Some(dir)) = layer_parent(&rootfd, "", parts, false) else {
            continue;
        };
        if is_dir_at(&dir, last).unwrap_or(false) {
            let t = nix::sys::time::TimeSpec::new(*mtime, 0);
            let _ = nix::sys::stat::utimensat(
                dir.as_fd(),
                last.as_os_str(),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(done)
}

/// A listable descriptor of the `O_PATH` directory `dir`.
fn dir_fd(dir: &OwnedFd) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
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

    /// One entry of a layer: path, kind, content, link target, mode,
    /// owner, mtime.
    struct L {
        path: &'static str,
        kind: tar::EntryType,
        data: &'static [u8],
        link: &'static str,
        mode: u32,
        owner: (u64, u64),
        mtime: u64,
    }

    fn l(path: &'static str, kind: tar::EntryType) -> L {
        L {
            path,
            kind,
            data: b"",
            link: "",
            mode: if kind.is_dir() { 0o755 } else { 0o644 },
            owner: (0, 0),
            mtime: 1_600_000_000,
        }
    }
    fn file(path: &'static str, data: &'static [u8]) -> L {
        L {
            data,
            ..l(path, tar::EntryType::Regular)
        }
    }
    fn dir(path: &'static str) -> L {
        l(path, tar::EntryType::Directory)
    }
    fn sym(path: &'static str, link: &'static str) -> L {
        L {
            link,
            mode: 0o777,
            ..l(path, tar::EntryType::Symlink)
        }
    }
    fn hard(path: &'static str, link: &'static str) -> L {
        L {
            link,
            ..l(path, tar::EntryType::Link)
        }
    }
    /// A whiteout (an empty file, as image tools write them).
    fn wh(path: &'static str) -> L {
        file(path, b"")
    }

    /// A layer written with `tar::Builder`, the headers made by hand so
    /// that hostile paths get through.
    fn layer(entries: &[L]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = header(e.path, e.kind, e.data.len() as u64, e.mode, e.link);
            h.set_uid(e.owner.0);
            h.set_gid(e.owner.1);
            h.set_mtime(e.mtime);
            h.set_cksum();
            b.append(&h, e.data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A root in a private directory, with the layers applied in order.
    fn apply(layers: &[&[L]]) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        let mut r = Ok(());
        for entries in layers {
            r = unpack_layer(&layer(entries)[..], &root, &Limits::default()).map(|_| ());
            if r.is_err() {
                break;
            }
        }
        (outer, r)
    }

    fn names(p: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_replacements() {
        let (outer, r) = apply(&[
            &[
                dir("etc/"),
                file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
                file("etc/hostname", b"lower\n"),
                dir("d/"),
                file("d/a", b"a"),
                dir("d/sub/"),
                file("d/sub/c", b"c"),
                dir("e/"),
                file("e/old", b"old"),
                file("f", b"f"),
                dir("x/"),
                file("x/y", b"y"),
                file("keep", b"file"),
                dir("usr/lib/"),
                file("usr/lib/libfoo.so", b"foo"),
                sym("lib", "usr/lib"),
                file("linked", b"shared"),
                hard("linked2", "linked"),
            ],
            &[
                file("f.keep", b"unrelated"),
                wh(".wh.f"),
                wh("etc/.wh.passwd"),
                // An opaque directory: its own entries before and after the
                // marker stay, lower content goes, in merged subdirectories too.
                dir("d/"),
                file("d/new", b"new"),
                dir("d/sub/"),
                file("d/sub/new", b"new"),
                wh("d/.wh..wh..opq"),
                file("d/after", b"after"),
                wh("e/.wh..wh..opq"),
                // A file over a directory, a directory over a file.
                file("x", b"now a file"),
                dir("keep/"),
                file("keep/inside", b"in"),
                // Through the lower layer's `lib -> usr/lib`.
                file("lib/libbar.so", b"bar"),
                // A whiteout of something never there.
                wh("nowhere/.wh.nothing"),
                // Replacing one name of a hard link leaves the other.
                file("linked2", b"own"),
                file("etc/hostname", b"upper\n"),
            ],
        ]);
        r.unwrap();
        let t = outer.path().join("tree");
        assert_eq!(
            names(&t),
            ["d", "e", "etc", "f.keep", "keep", "lib", "linked", "linked2", "usr", "x"]
        );
        assert_eq!(names(&t.join("etc")), ["hostname"]);
        assert_eq!(
            std::fs::read_to_string(t.join("etc/hostname")).unwrap(),
            "upper\n"
        );
        assert_eq!(names(&t.join("d")), ["after", "new", "sub"]);
        assert_eq!(names(&t.join("d/sub")), ["new"]);
        assert!(names(&t.join("e")).is_empty());
        assert_eq!(std::fs::read_to_string(t.join("x")).unwrap(), "now a file");
        assert_eq!(names(&t.join("keep")), ["inside"]);
        assert_eq!(names(&t.join("usr/lib")), ["libbar.so", "libfoo.so"]);
        assert!(std::fs::symlink_metadata(t.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(t.join("linked")).unwrap(), "shared");
        assert_eq!(std::fs::read_to_string(t.join("linked2")).unwrap(), "own");
        assert!(!t.join("nowhere").exists());
        only_tree(&outer);
    }

    #[test]
    fn owners_modes_setuid_and_mtimes_are_kept_devices_skipped() {
        use std::os::unix::fs::MetadataExt;
        let (outer, r) = apply(&[&[
            L {
                mode: 0o750,
                owner: (1000, 1001),
                mtime: 1_500_000_000,
                ..dir("home/u/")
            },
            L {
                mode: 0o4755,
                owner: (0, 0),
                mtime: 1_400_000_000,
                ..file("bin/su", b"su")
            },
            L {
                mode: 0o2755,
                owner: (1000, 50),
                ..file("bin/sg", b"sg")
            },
            L {
                mode: 0o1777,
                ..dir("tmp/")
            },
            L {
                owner: (1000, 1001),
                ..sym("home/u/link", "/etc/passwd")
            },
            l("dev/null", tar::EntryType::Char),
            l("dev/sda", tar::EntryType::Block),
            l("run/fifo", tar::EntryType::Fifo),
            file("home/u/.profile", b"x"),
        ]]);
        r.unwrap();
        let t = outer.path().join("tree");
        let m = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap();
        assert_eq!(m("bin/su").mode() & 0o7777, 0o4755);
        assert_eq!(m("bin/sg").mode() & 0o7777, 0o2755);
        assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(m("home/u").mode() & 0o7777, 0o750);
        assert_eq!(m("bin/su").mtime(), 1_400_000_000);
        // Set at the end, after `.profile` went in.
        assert_eq!(m("home/u").mtime(), 1_500_000_000);
        assert_eq!(
            std::fs::read_link(t.join("home/u/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        if nix::unistd::geteuid().is_root() {
            assert_eq!((m("home/u").uid(), m("home/u").gid()), (1000, 1001));
            assert_eq!((m("bin/sg").uid(), m("bin/sg").gid()), (1000, 50));
            assert_eq!(
                (m("home/u/link").uid(), m("home/u/link").gid()),
                (1000, 1001)
            );
        }
        assert!(!t.join("dev").exists() && !t.join("run").exists());
        only_tree(&outer);
    }

    #[test]
    fn hostile_layer_entries_are_refused_or_stay_in_the_root() {
        // Refused outright.
        for (entries, want) in [
            (vec![file("../evil", b"x")], "'..'"),
            (vec![file("a/../../evil", b"x")], "'..'"),
            (vec![file("/evil", b"x")], "absolute"),
            (vec![hard("h", "../outside")], "'..'"),
            (vec![hard("h", "missing")], "cannot link"),
            (vec![wh("a/.wh...")], "whiteout of no file"),
            (vec![file("f", b"1"), hard("f", "f")], "itself"),
            // A hard link through a symlink to the host's /etc finds the
            // image's /etc, where no passwd is.
            (vec![sym("s", "/etc"), hard("h", "s/passwd")], "cannot link"),
        ] {
            let (outer, r) = apply(&[&entries]);
            let e = r.expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
            only_tree(&outer);
        }
        // Symlinks planted (or swapped in for a directory) and then written
        // through: resolved as if the root were `/`.
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("file"), "keep").unwrap();
        let abs = Box::leak(format!("{}/", victim.path().display()).into_boxed_str());
        let (outer, r) = apply(&[
            &[dir("a/"), file("a/x", b"x"), dir("etc/")],
            &[
                sym("a", "/"),
                file("a/escaped", b"1"),
                sym("up", "../../../.."),
                file("up/x2", b"2"),
                sym("s", "/etc"),
                file("s/passwd", b"mine\n"),
                sym("v", abs),
                wh("v/.wh.file"),
                sym("rel", "../victim"),
                wh("rel/.wh.file"),
            ],
        ]);
        r.unwrap();
        let t = outer.path().join("tree");
        assert_eq!(std::fs::read_to_string(t.join("escaped")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(t.join("x2")).unwrap(), "2");
        assert_eq!(
            std::fs::read_to_string(t.join("etc/passwd")).unwrap(),
            "mine\n"
        );
        assert_eq!(
            std::fs::read_to_string(victim.path().join("file")).unwrap(),
            "keep"
        );
        assert_ne!(std::fs::read_to_string("/etc/passwd").unwrap(), "mine\n");
        only_tree(&outer);
    }

    #[test]
    fn layer_limits_stop_bombs() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        let big: &'static [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
        let a = layer(&[file("a", big), file("b", big)]);
        let small = Limits {
            max_bytes: 6000,
            max_entries: 10,
        };
        let e = unpack_layer(&a[..], &root, &small).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge(_)), "{e}");
        let few = Limits {
            max_bytes: 1 << 20,
            max_entries: 1,
        };
        let e = unpack_layer(&a[..], &root, &few).unwrap_err();
        assert!(e.to_string().contains("entries"), "{e}");
        let got = unpack_layer(&a[..], &root, &Limits::default()).unwrap();
        assert_eq!((got.bytes, got.entries), (8192, 2));
        assert!(unpack_layer(&a[..a.len() / 2], &root, &Limits::default()).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Layers of random entries over a small vocabulary of paths and
        /// link targets (`..`, absolute, whiteouts, symlinks to `/`): each
        /// may be refused, but nothing ever lands beside the root.
        #[test]
        fn random_layers_stay_in_the_root(
            layers in proptest::collection::vec(
                proptest::collection::vec((0..7usize, 0..10usize, 0..8usize), 0..14),
                1..4,
            )
        ) {
            const PATHS: [&str; 10] =
                ["a", "a/b", "b", "a/b/c", "../x", "l/x", "/abs", "l", "a/.wh.b", "a/.wh..wh..opq"];
            const TARGETS: [&str; 8] = ["/", "..", "../..", "a", "/a/b", "x", "../../../etc", "l"];
            let built: Vec<Vec<L>> = layers
                .iter()
                .map(|entries| {
                    entries
                        .iter()
                        .map(|&(k, p, t)| {
                            let (p, t) = (PATHS[p], TARGETS[t]);
                            match k {
                                0 | 1 => file(p, b"data"),
                                2 => dir(p),
                                3 => sym(p, t),
                                4 => hard(p, t),
                                5 => wh(p),
                                _ => l(p, tar::EntryType::Fifo),
                            }
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<&[L]> = built.iter().map(|v| &v[..]).collect();
            let (outer, _) = apply(&refs);
            only_tree(&outer);
        }
    }
}
