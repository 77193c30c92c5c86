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

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, UnlinkatFlags};

use crate::core::volume::Payload;

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

// ---------------------------------------------------------------------------
// The atomic writer
// ---------------------------------------------------------------------------

/// The symlink readers go through; swapping it is the atomic update.
const DATA_DIR: &str = "..data";
/// Where the next `..data` is made before it is renamed over the current one.
const DATA_TMP: &str = "..data_tmp";
/// Linux's limits, which the kubelet checks up front so that a bad key
/// fails validation instead of half-way through a write.
const MAX_PATH_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 255;

/// Writes a ConfigMap/Secret/downward API/projected volume's files into
/// `dir` the way the kubelet's AtomicWriter does, so a container reading
/// the volume during an update sees either the old or the new set of files,
/// never a mix: the files live in a timestamped directory that `..data`
/// points to, and each top-level name is a symlink through `..data`, so one
/// `rename` of `..data` switches them all.
///
/// `set_perms` is called on the new timestamped directory before it becomes
/// visible (fsGroup ownership, see [`set_volume_ownership`]).
///
/// Returns whether anything changed: `false` when `..data` already holds
/// exactly `payload` (same files, contents and modes, where the bits an
/// fsGroup `set_perms` adds do not count), in which case the live files are
/// not touched (leftovers of an interrupted earlier run are still cleaned
/// up).
pub fn write_atomic(
    dir: &Path,
    payload: &Payload,
    set_perms: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<bool> {
    validate_payload(payload)?;
    ensure_volume_dir(dir)?;

    // A `..data_tmp` is only ever left by a run killed between creating it
    // and renaming it; it would make the symlink() below fail.
    let tmp_link = dir.join(DATA_TMP);
    match fs::symlink_metadata(&tmp_link) {
        Ok(_) => {
            fs::remove_file(&tmp_link).map_err(io_err(&tmp_link, "remove leftover symlink"))?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp_link, "inspect")(e)),
    }

    let current = current_data_dir(dir)?;
    let unchanged = match &current {
        Some(ts) => payload_matches(&dir.join(ts), payload)?,
        None => false,
    };

    let live = if unchanged {
        current.unwrap_or_default()
    } else {
        let ts = new_timestamped_dir(dir)?;
        let ts_path = dir.join(&ts);
        let written = write_payload(&ts_path, payload).and_then(|()| {
            set_perms(&ts_path).map_err(io_err(
                &ts_path,
                "set the volume's ownership and permissions",
            ))
        });
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&ts_path);
            return Err(e);
        }
        symlink(&ts, &tmp_link).map_err(io_err(&tmp_link, "create symlink"))?;
        let data_link = dir.join(DATA_DIR);
        fs::rename(&tmp_link, &data_link).map_err(io_err(&data_link, "replace with ..data_tmp"))?;
        ts
    };

    let top_level: BTreeSet<&str> = payload
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k))
        .collect();
    create_user_visible_links(dir, &top_level)?;
    remove_stale_entries(dir, &top_level, &live)?;
    Ok(!unchanged)
}

fn validate_payload(payload: &Payload) -> Result<()> {
    for path in payload.keys() {
        validate_payload_path(path).map_err(|reason| VolumeFsError::InvalidPath {
            path: path.clone(),
            reason: reason.to_string(),
        })?;
        // A key that is also a directory of another key cannot be written.
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            if payload.contains_key(&path[..end]) {
                return Err(VolumeFsError::InvalidPath {
                    path: path.clone(),
                    reason: format!("{:?} is also a file of the volume", &path[..end]),
                });
            }
            end += 1;
        }
    }
    Ok(())
}

fn validate_payload_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("must not be empty");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("must not be longer than 4096 bytes");
    }
    if path.contains('\0') {
        return Err("must not contain a NUL byte");
    }
    if path.starts_with('/') {
        return Err("must not be an absolute path");
    }
    for element in path.split('/') {
        if element.is_empty() {
            return Err("must not contain empty elements ('//' or a trailing '/')");
        }
        if element == ".." {
            return Err("must not contain '..'");
        }
        if element.starts_with("..") {
            // `..data` and the timestamped directories are the writer's own.
            return Err("must not have an element starting with '..'");
        }
        if element == "." {
            return Err("must not contain '.' elements");
        }
        if element.len() > MAX_NAME_LEN {
            return Err("must not have an element longer than 255 bytes");
        }
    }
    Ok(())
}

/// Creates the volume's directory (0755, so the container's users can
/// traverse it whatever the agent's umask).
fn ensure_volume_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(unexpected(dir, "is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err(dir, "create directory"))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(io_err(dir, "chmod"))
        }
        Err(e) => Err(io_err(dir, "inspect")(e)),
    }
}

/// The timestamped directory `..data` points to, if it is one the writer
/// made; a dangling or foreign `..data` is simply replaced.
fn current_data_dir(dir: &Path) -> Result<Option<OsString>> {
    let link = dir.join(DATA_DIR);
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
            return Err(unexpected(
                &link,
                "is not a symlink; the volume's directory is not the atomic writer's",
            ));
        }
        Err(e) => return Err(io_err(&link, "read symlink")(e)),
    };
    let name = target.into_os_string();
    if !is_timestamped_name(&name) {
        return Ok(None);
    }
    match fs::symlink_metadata(dir.join(&name)) {
        Ok(md) if md.is_dir() => Ok(Some(name)),
        _ => Ok(None),
    }
}

/// `..2024_01_31_12_00_00.1234`: only names of this shape are taken for
/// the writer's directories, so cleaning up never removes anything else.
fn is_timestamped_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() > 3 && b.starts_with(b"..") && b[2].is_ascii_digit() && !b[2..].contains(&b'/')
}

/// Whether the timestamped directory holds exactly `payload`.
///
/// fsGroup handling ([`set_volume_ownership`]) adds `0o440`/`0o660` to the
/// files' modes and leaves the setgid bit on the directory; such a directory
/// still matches a payload whose modes only lack those bits, otherwise every
/// sync of an fsGroup pod's volume would write a new copy.
fn payload_matches(ts_dir: &Path, payload: &Payload) -> Result<bool> {
    let root_md = fs::symlink_metadata(ts_dir).map_err(io_err(ts_dir, "inspect"))?;
    let fs_group_applied = root_md.mode() & 0o2000 != 0;

    let mut wanted_dirs = BTreeSet::new();
    for key in payload.keys() {
        let mut end = 0;
        while let Some(i) = key[end..].find('/') {
            end += i;
            wanted_dirs.insert(&key[..end]);
            end += 1;
        }
    }

    let mut found_files = 0usize;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let abs = ts_dir.join(&rel);
        for entry in fs::read_dir(&abs).map_err(io_err(&abs, "read directory"))? {
            let entry = entry.map_err(io_err(&abs, "read directory"))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Ok(false);
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(io_err(&entry.path(), "inspect"))?;
            if ft.is_dir() {
                if !wanted_dirs.contains(child.as_str()) {
                    return Ok(false);
                }
                stack.push(child);
            } else if ft.is_file() {
                let Some(want) = payload.get(&child) else {
                    return Ok(false);
                };
                let path = entry.path();
                let md = entry.metadata().map_err(io_err(&path, "inspect"))?;
                if md.len() != want.data.len() as u64
                    || !mode_matches(md.mode(), want.mode, fs_group_applied)
                {
                    return Ok(false);
                }
                let mut data = Vec::with_capacity(want.data.len());
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut data))
                    .map_err(io_err(&path, "read"))?;
                if data != want.data {
                    return Ok(false);
                }
                found_files += 1;
            } else {
                return Ok(false);
            }
        }
    }
    Ok(found_files == payload.len())
}

fn mode_matches(actual: u32, wanted: u32, fs_group_applied: bool) -> bool {
    let actual = actual & 0o7777;
    let wanted = wanted & 0o777;
    actual == wanted || (fs_group_applied && (actual == wanted | 0o440 || actual == wanted | 0o660))
}

fn new_timestamped_dir(dir: &Path) -> Result<OsString> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y_%m_%d_%H_%M_%S")
        .to_string();
    let mut last_err = None;
    for attempt in 0..100u32 {
        let name = OsString::from(format!("..{stamp}.{}", random_suffix(attempt)));
        let path = dir.join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                // Others must be able to traverse it, whatever the umask.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(&path, "chmod"))?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((path, e)),
            Err(e) => return Err(io_err(&path, "create directory")(e)),
        }
    }
    let (path, e) = last_err.expect("at least one attempt");
    Err(io_err(&path, "create directory")(e))
}

fn random_suffix(attempt: u32) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(attempt);
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish() as u32
}

fn write_payload(ts_dir: &Path, payload: &Payload) -> Result<()> {
    for (rel, entry) in payload {
        let path = ts_dir.join(rel);
        // Parent directories, one at a time so each gets 0755 whatever the umask.
        let mut end = 0;
        while let Some(i) = rel[end..].find('/') {
            end += i;
            let sub = ts_dir.join(&rel[..end]);
            match fs::create_dir(&sub) {
                Ok(()) => fs::set_permissions(&sub, fs::Permissions::from_mode(0o755))
                    .map_err(io_err(&sub, "chmod"))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&sub, "create directory")(e)),
            }
            end += 1;
        }
        let mode = entry.mode & 0o777;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(&path, "create file"))?;
        file.write_all(&entry.data)
            .map_err(io_err(&path, "write"))?;
        // The umask applied at creation; the volume asks for exactly `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&path, "chmod"))?;
    }
    Ok(())
}

fn create_user_visible_links(dir: &Path, top_level: &BTreeSet<&str>) -> Result<()> {
    for name in top_level {
        let link = dir.join(name);
        let want = Path::new(DATA_DIR).join(name);
        match fs::read_link(&link) {
            Ok(t) if t == want => {}
            Ok(_) => {
                fs::remove_file(&link).map_err(io_err(&link, "remove symlink"))?;
                symlink(&want, &link).map_err(io_err(&link, "create symlink"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                symlink(&want, &link).map_err(io_err(&link, "create symlink"))?;
            }
            Err(e) if e.raw_os_error() == Some(Errno::EINVAL as i32) => {
                return Err(unexpected(
                    &link,
                    format!("exists and is not a symlink to {}", want.display()),
                ));
            }
            Err(e) => return Err(io_err(&link, "read symlink")(e)),
        }
    }
    Ok(())
}

/// Removes what no longer belongs: user-visible symlinks of names the
/// payload dropped, and timestamped directories other than the live one
/// (the previous one, or ones an interrupted run left behind).
fn remove_stale_entries(dir: &Path, top_level: &BTreeSet<&str>, live: &OsStr) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        let entry = entry.map_err(io_err(dir, "read directory"))?;
        let name = entry.file_name();
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err(&path, "inspect"))?;
        if name.as_bytes().starts_with(b"..") {
            if ft.is_dir() && name != live && is_timestamped_name(&name) {
                fs::remove_dir_all(&path).map_err(io_err(&path, "remove old data directory"))?;
            }
        } else if ft.is_symlink() && !name.to_str().is_some_and(|n| top_level.contains(n)) {
            let target = fs::read_link(&path).map_err(io_err(&path, "read symlink"))?;
            if target.starts_with(DATA_DIR) {
                fs::remove_file(&path).map_err(io_err(&path, "remove symlink"))?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// subPath
// ---------------------------------------------------------------------------

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

/// Creates an empty mount target for a directory or a file (anything that
/// is not a directory is bound onto a file), refusing a symlink so that the
/// mount cannot land somewhere else.
fn make_mount_target(target: &Path, is_dir: bool) -> Result<()> {
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

fn is_mounted(target: &Path) -> Result<bool> {
    is_mount_point(target).map_err(io_err(target, "read /proc/self/mountinfo"))
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

// ---------------------------------------------------------------------------
// hostPath types
// ---------------------------------------------------------------------------

/// A hostPath volume's `type`: what the kubelet checks (or creates) at the
/// path before binding it, so a pod expecting a socket does not silently
/// get an empty directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// `""` or absent: no check, for compatibility with pods from before types.
    Unset,
    /// Create an empty directory (0755) if nothing is there.
    DirectoryOrCreate,
    /// A directory must exist.
    Directory,
    /// Create an empty file (0644) if nothing is there.
    FileOrCreate,
    /// A regular file must exist.
    File,
    /// A UNIX socket must exist.
    Socket,
    /// A character device must exist.
    CharDevice,
    /// A block device must exist.
    BlockDevice,
}

impl HostPathType {
    /// The Kubernetes spelling; `None` for a type this agent does not know,
    /// which the caller reports instead of mounting unchecked.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        Some(match s.unwrap_or("") {
            "" => Self::Unset,
            "DirectoryOrCreate" => Self::DirectoryOrCreate,
            "Directory" => Self::Directory,
            "FileOrCreate" => Self::FileOrCreate,
            "File" => Self::File,
            "Socket" => Self::Socket,
            "CharDevice" => Self::CharDevice,
            "BlockDevice" => Self::BlockDevice,
            _ => return None,
        })
    }
}

/// The kubelet's name for what is at a path (`os.Stat`, so symlinks are
/// followed), or its error for anything else (a FIFO).
fn host_file_type(md: &fs::Metadata) -> Result<&'static str, &'static str> {
    let ft = md.file_type();
    if ft.is_dir() {
        Ok("Directory")
    } else if ft.is_file() {
        Ok("File")
    } else if ft.is_socket() {
        Ok("Socket")
    } else if ft.is_char_device() {
        Ok("CharDevice")
    } else if ft.is_block_device() {
        Ok("BlockDevice")
    } else {
        Err("only recognise file, directory, socket, block device and character device")
    }
}

fn type_matched_or_error(path: &Path, expected: &str, description: &str) -> Result<(), String> {
    let md = match fs::metadata(path) {
        Ok(md) => md,
        Err(_) => return Err(format!("hostPath {} doesn't exist", path.display())),
    };
    match host_file_type(&md) {
        Ok(t) if t == expected => Ok(()),
        Ok(t) => Err(format!(
            "hostPath type check failed: {} is not a {description}, it's a {t}",
            path.display()
        )),
        Err(e) => Err(format!(
            "hostPath type check failed, {} is not a {description}, unable to determine its type: {e}",
            path.display()
        )),
    }
}

/// The kubelet's hostPath type check (`checkType`), with its messages, which
/// the agent reports as the pod's `FailedMount` event. The `…OrCreate`
/// types create what is missing, as the kubelet does: a directory with its
/// parents, a file without them (a missing parent is an error).
pub fn check_host_path(path: &Path, t: HostPathType) -> Result<(), String> {
    let exists = fs::metadata(path).is_ok();
    match t {
        HostPathType::Unset => Ok(()),
        HostPathType::DirectoryOrCreate => {
            if !exists {
                match DirBuilder::new().recursive(true).mode(0o755).create(path) {
                    Ok(()) => {
                        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
                        return Ok(());
                    }
                    // Something appeared (or a dangling symlink): check it below.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("mkdir {}: {e}", path.display())),
                }
            }
            type_matched_or_error(path, "Directory", "directory")
        }
        HostPathType::Directory => type_matched_or_error(path, "Directory", "directory"),
        HostPathType::FileOrCreate => {
            if !exists {
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(path)
                {
                    Ok(file) => {
                        let _ = file.set_permissions(fs::Permissions::from_mode(0o644));
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("open {}: {e}", path.display())),
                }
            }
            type_matched_or_error(path, "File", "file")
        }
        HostPathType::File => type_matched_or_error(path, "File", "file"),
        HostPathType::Socket => type_matched_or_error(path, "Socket", "socket file"),
        HostPathType::CharDevice => type_matched_or_error(path, "CharDevice", "character device"),
        HostPathType::BlockDevice => type_matched_or_error(path, "BlockDevice", "block device"),
    }
}

// ---------------------------------------------------------------------------
// fsGroup
// ---------------------------------------------------------------------------

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
    use super::*;
    use crate::core::volume::FileEntry;
    use std::os::unix::net::UnixListener;

    /// Unmounts on drop, so a failing assertion never leaves a mount behind
    /// (and never lets the tempdir's removal reach through a bind mount).
    struct MountGuard(Vec<PathBuf>);

    impl MountGuard {
        fn new() -> Self {
            Self(Vec::new())
        }
        fn watch(&mut self, p: &Path) {
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

    fn entry(data: &str, mode: u32) -> FileEntry {
        FileEntry {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(items: &[(&str, &str, u32)]) -> Payload {
        items
            .iter()
            .map(|(k, d, m)| (k.to_string(), entry(d, *m)))
            .collect()
    }

    fn no_perms(_: &Path) -> io::Result<()> {
        Ok(())
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn data_target(dir: &Path) -> String {
        fs::read_link(dir.join(DATA_DIR))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    }

    /// The names in `dir` that look like the writer's timestamped directories.
    fn ts_dirs(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| is_timestamped_name(OsStr::new(n)))
            .collect();
        v.sort();
        v
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    // --- atomic writer -----------------------------------------------------

    #[test]
    fn atomic_first_write_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol/cm");
        let p = payload(&[
            ("a", "alpha", 0o644),
            ("b", "beta", 0o600),
            // 0o666 survives only because of the chmod after writing.
            ("w", "writable", 0o666),
            ("d/e", "nested", 0o400),
        ]);
        assert!(write_atomic(&dir, &p, &no_perms).unwrap());

        assert_eq!(mode_of(&dir), 0o755);
        let ts = data_target(&dir);
        assert!(
            ts.starts_with("..") && is_timestamped_name(OsStr::new(&ts)),
            "{ts}"
        );
        // ..YYYY_MM_DD_HH_MM_SS.<random>
        let stamp = &ts[2..21];
        assert_eq!(stamp.len(), 19);
        assert_eq!(&ts[21..22], ".");
        assert!(stamp
            .bytes()
            .enumerate()
            .all(|(i, b)| if [4, 7, 10, 13, 16].contains(&i) {
                b == b'_'
            } else {
                b.is_ascii_digit()
            }));
        assert_eq!(mode_of(&dir.join(&ts)), 0o755);
        assert_eq!(
            names(&dir),
            vec![
                ts.clone(),
                "..data".into(),
                "a".into(),
                "b".into(),
                "d".into(),
                "w".into()
            ]
        );
        for k in ["a", "b", "d", "w"] {
            assert_eq!(
                fs::read_link(dir.join(k)).unwrap(),
                Path::new("..data").join(k)
            );
        }
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "alpha");
        assert_eq!(fs::read_to_string(dir.join("d/e")).unwrap(), "nested");
        assert_eq!(mode_of(&dir.join(&ts).join("a")), 0o644);
        assert_eq!(mode_of(&dir.join(&ts).join("b")), 0o600);
        assert_eq!(mode_of(&dir.join(&ts).join("w")), 0o666);
        assert_eq!(mode_of(&dir.join(&ts).join("d/e")), 0o400);
        assert_eq!(mode_of(&dir.join(&ts).join("d")), 0o755);
    }

    #[test]
    fn atomic_update_swaps_data_and_keeps_one_timestamped_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let first = payload(&[("a", "1", 0o644), ("b", "2", 0o644), ("n/x", "3", 0o644)]);
        assert!(write_atomic(&dir, &first, &no_perms).unwrap());
        let old = data_target(&dir);

        let second = payload(&[
            ("a", "changed", 0o644),
            ("c", "new", 0o640),
            ("n/y", "4", 0o644),
        ]);
        assert!(write_atomic(&dir, &second, &no_perms).unwrap());
        let new = data_target(&dir);
        assert_ne!(old, new);
        assert_eq!(ts_dirs(&dir), vec![new.clone()]);
        assert!(!dir.join(&old).exists());
        assert_eq!(
            names(&dir),
            vec![
                new.clone(),
                "..data".into(),
                "a".into(),
                "c".into(),
                "n".into()
            ]
        );
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert_eq!(fs::read_to_string(dir.join("c")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dir.join("n/y")).unwrap(), "4");
        assert!(!dir.join("n/x").exists());
        assert!(fs::symlink_metadata(dir.join("b")).is_err());
        assert_eq!(mode_of(&dir.join(&new).join("c")), 0o640);

        // A mode change alone is a change too.
        let third = payload(&[
            ("a", "changed", 0o600),
            ("c", "new", 0o640),
            ("n/y", "4", 0o644),
        ]);
        assert!(write_atomic(&dir, &third, &no_perms).unwrap());
        assert_ne!(data_target(&dir), new);
        assert_eq!(mode_of(&dir.join("..data/a")), 0o600);
        assert_eq!(ts_dirs(&dir).len(), 1);
    }

    #[test]
    fn atomic_noop_write_returns_false_and_keeps_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let p = payload(&[("a", "1", 0o644), ("x/y/z", "deep", 0o600)]);
        assert!(write_atomic(&dir, &p, &no_perms).unwrap());
        let ts = data_target(&dir);
        let ino = fs::metadata(dir.join(&ts).join("a")).unwrap().ino();
        assert!(!write_atomic(&dir, &p, &no_perms).unwrap());
        assert_eq!(data_target(&dir), ts);
        assert_eq!(fs::metadata(dir.join(&ts).join("a")).unwrap().ino(), ino);
        assert_eq!(ts_dirs(&dir), vec![ts]);
    }

    #[test]
    fn atomic_noop_with_fs_group_perms() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let p = payload(&[("a", "1", 0o644), ("x/y", "2", 0o400)]);
        let perms = |ts: &Path| {
            set_volume_ownership(ts, 4321, true, ChangePolicy::Always)
                .map_err(|e| io::Error::other(e.to_string()))
        };
        assert!(write_atomic(&dir, &p, &perms).unwrap());
        let ts = data_target(&dir);
        assert_eq!(mode_of(&dir.join(&ts).join("x/y")), 0o440);
        assert_eq!(fs::metadata(dir.join("a")).unwrap().gid(), 4321);
        // What set_perms added does not count as a difference...
        assert!(!write_atomic(&dir, &p, &perms).unwrap());
        assert_eq!(data_target(&dir), ts);
        // ...but new contents do.
        let p2 = payload(&[("a", "other", 0o644), ("x/y", "2", 0o400)]);
        assert!(write_atomic(&dir, &p2, &perms).unwrap());
        assert_ne!(data_target(&dir), ts);
    }

    #[test]
    fn atomic_set_perms_gets_new_dir_and_its_failure_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |p: &Path| {
            seen.borrow_mut().push(p.to_path_buf());
            Ok(())
        };
        let p = payload(&[("a", "1", 0o644)]);
        write_atomic(&dir, &p, &record).unwrap();
        let ts = data_target(&dir);
        assert_eq!(*seen.borrow(), vec![dir.join(&ts)]);

        let fail = |_: &Path| Err(io::Error::other("no"));
        let err = write_atomic(&dir, &payload(&[("a", "2", 0o644)]), &fail).unwrap_err();
        assert!(err.to_string().contains("no"), "{err}");
        assert_eq!(data_target(&dir), ts);
        assert_eq!(ts_dirs(&dir), vec![ts]);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    }

    #[test]
    fn atomic_nested_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let p = payload(&[
            ("a/b/c", "abc", 0o644),
            ("a/d", "ad", 0o644),
            ("e", "e", 0o644),
        ]);
        assert!(write_atomic(&dir, &p, &no_perms).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a/b/c")).unwrap(), "abc");
        assert_eq!(fs::read_to_string(dir.join("a/d")).unwrap(), "ad");
        assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        assert!(fs::symlink_metadata(dir.join("b")).is_err());
        // Dropping a/b/c but keeping a/d keeps the `a` link.
        let p2 = payload(&[("a/d", "ad", 0o644)]);
        assert!(write_atomic(&dir, &p2, &no_perms).unwrap());
        assert!(!dir.join("a/b").exists());
        assert_eq!(fs::read_to_string(dir.join("a/d")).unwrap(), "ad");
        assert!(fs::symlink_metadata(dir.join("e")).is_err());
    }

    #[test]
    fn atomic_rejects_bad_paths_without_writing() {
        let bad = [
            "", "/abs", "..", "../x", "a/../b", "..x", "a/..b", "a//b", "a/", "./a", "a/./b",
        ];
        for path in bad {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("cm");
            let p = payload(&[("ok", "1", 0o644), (path, "x", 0o644)]);
            let err = write_atomic(&dir, &p, &no_perms).unwrap_err();
            assert!(
                matches!(err, VolumeFsError::InvalidPath { .. }),
                "{path:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
            assert!(!dir.exists(), "{path:?} wrote something");
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        let clash = payload(&[("a", "1", 0o644), ("a/b", "2", 0o644)]);
        let err = write_atomic(&dir, &clash, &no_perms).unwrap_err();
        assert!(err.to_string().contains("\"a/b\""), "{err}");
        let long = "x".repeat(256);
        let err = write_atomic(&dir, &payload(&[(&long, "1", 0o644)]), &no_perms).unwrap_err();
        assert!(matches!(err, VolumeFsError::InvalidPath { .. }), "{err}");
    }

    #[test]
    fn atomic_recovers_from_interrupted_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        fs::create_dir_all(&dir).unwrap();
        // Killed after making ..data_tmp, before the first rename.
        let stale = dir.join("..2020_01_01_00_00_00.42");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("a"), "stale").unwrap();
        symlink("..2020_01_01_00_00_00.42", dir.join(DATA_TMP)).unwrap();
        let p = payload(&[("a", "fresh", 0o644)]);
        assert!(write_atomic(&dir, &p, &no_perms).unwrap());
        let ts = data_target(&dir);
        assert_eq!(names(&dir), vec![ts.clone(), "..data".into(), "a".into()]);
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "fresh");

        // Killed after the swap, before the old directory and links went.
        let stale = dir.join("..2020_01_01_00_00_00.43");
        fs::create_dir(&stale).unwrap();
        symlink("..data/gone", dir.join("gone")).unwrap();
        symlink("..2020_01_01_00_00_00.43", dir.join(DATA_TMP)).unwrap();
        fs::remove_file(dir.join("a")).unwrap();
        // Not the writer's: left alone.
        fs::write(dir.join("mine"), "x").unwrap();
        assert!(!write_atomic(&dir, &p, &no_perms).unwrap());
        assert_eq!(data_target(&dir), ts);
        assert_eq!(
            names(&dir),
            vec![ts.clone(), "..data".into(), "a".into(), "mine".into()]
        );
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "fresh");
    }

    #[test]
    fn atomic_empty_payload_and_dangling_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cm");
        assert!(write_atomic(&dir, &Payload::new(), &no_perms).unwrap());
        let ts = data_target(&dir);
        assert_eq!(names(&dir), vec![ts.clone(), "..data".into()]);
        assert!(names(&dir.join(&ts)).is_empty());
        assert!(!write_atomic(&dir, &Payload::new(), &no_perms).unwrap());

        // A ..data pointing nowhere is replaced.
        fs::remove_dir(dir.join(&ts)).unwrap();
        assert!(write_atomic(&dir, &payload(&[("k", "v", 0o644)]), &no_perms).unwrap());
        assert_eq!(fs::read_to_string(dir.join("k")).unwrap(), "v");
    }

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

    // --- hostPath types ----------------------------------------------------

    #[test]
    fn host_path_type_parse() {
        assert_eq!(HostPathType::parse(None), Some(HostPathType::Unset));
        assert_eq!(HostPathType::parse(Some("")), Some(HostPathType::Unset));
        assert_eq!(
            HostPathType::parse(Some("DirectoryOrCreate")),
            Some(HostPathType::DirectoryOrCreate)
        );
        assert_eq!(
            HostPathType::parse(Some("CharDevice")),
            Some(HostPathType::CharDevice)
        );
        assert_eq!(
            HostPathType::parse(Some("BlockDevice")),
            Some(HostPathType::BlockDevice)
        );
        assert_eq!(HostPathType::parse(Some("directory")), None);
        assert_eq!(HostPathType::parse(Some("Pipe")), None);
    }

    #[test]
    fn host_path_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let dir = t.join("dir");
        let file = t.join("file");
        fs::create_dir(&dir).unwrap();
        fs::write(&file, "x").unwrap();
        symlink(&dir, t.join("dirlink")).unwrap();
        let sock = t.join("sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let missing = t.join("missing");
        let f = |p: &Path| p.display().to_string();

        assert_eq!(check_host_path(&missing, HostPathType::Unset), Ok(()));
        assert!(!missing.exists());

        // DirectoryOrCreate
        let made = t.join("new/nested/dir");
        check_host_path(&made, HostPathType::DirectoryOrCreate).unwrap();
        assert!(made.is_dir());
        assert_eq!(mode_of(&made), 0o755);
        check_host_path(&made, HostPathType::DirectoryOrCreate).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::DirectoryOrCreate),
            Err(format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                f(&file)
            ))
        );

        // Directory
        check_host_path(&dir, HostPathType::Directory).unwrap();
        check_host_path(&t.join("dirlink"), HostPathType::Directory).unwrap();
        assert_eq!(
            check_host_path(&missing, HostPathType::Directory),
            Err(format!("hostPath {} doesn't exist", f(&missing)))
        );
        assert_eq!(
            check_host_path(&file, HostPathType::Directory),
            Err(format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                f(&file)
            ))
        );

        // FileOrCreate
        let newfile = t.join("newfile");
        check_host_path(&newfile, HostPathType::FileOrCreate).unwrap();
        let md = fs::metadata(&newfile).unwrap();
        assert!(md.is_file() && md.len() == 0);
        assert_eq!(md.mode() & 0o7777, 0o644);
        fs::write(&newfile, "kept").unwrap();
        check_host_path(&newfile, HostPathType::FileOrCreate).unwrap();
        assert_eq!(fs::read_to_string(&newfile).unwrap(), "kept");
        assert_eq!(
            check_host_path(&dir, HostPathType::FileOrCreate),
            Err(format!(
                "hostPath type check failed: {} is not a file, it's a Directory",
                f(&dir)
            ))
        );
        // Like the kubelet, no parent directories for a file.
        let orphan = t.join("noparent/file");
        let err = check_host_path(&orphan, HostPathType::FileOrCreate).unwrap_err();
        assert!(err.starts_with(&format!("open {}: ", f(&orphan))), "{err}");
        assert!(!t.join("noparent").exists());

        // File
        check_host_path(&file, HostPathType::File).unwrap();
        assert!(check_host_path(&dir, HostPathType::File).is_err());
        assert_eq!(
            check_host_path(&sock, HostPathType::File),
            Err(format!(
                "hostPath type check failed: {} is not a file, it's a Socket",
                f(&sock)
            ))
        );

        // Socket
        check_host_path(&sock, HostPathType::Socket).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::Socket),
            Err(format!(
                "hostPath type check failed: {} is not a socket file, it's a File",
                f(&file)
            ))
        );

        // CharDevice
        check_host_path(Path::new("/dev/null"), HostPathType::CharDevice).unwrap();
        assert_eq!(
            check_host_path(&file, HostPathType::CharDevice),
            Err(format!(
                "hostPath type check failed: {} is not a character device, it's a File",
                f(&file)
            ))
        );

        // BlockDevice
        assert_eq!(
            check_host_path(&file, HostPathType::BlockDevice),
            Err(format!(
                "hostPath type check failed: {} is not a block device, it's a File",
                f(&file)
            ))
        );
        assert!(check_host_path(Path::new("/dev/null"), HostPathType::BlockDevice).is_err());
        let block = fs::read_dir("/dev").ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
                .map(|e| e.path())
        });
        // Only where this machine has a block device node in /dev.
        if let Some(block) = block {
            check_host_path(&block, HostPathType::BlockDevice).unwrap();
            assert!(check_host_path(&block, HostPathType::CharDevice).is_err());
        }

        // A FIFO is none of the known types.
        let fifo = t.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let err = check_host_path(&fifo, HostPathType::File).unwrap_err();
        assert!(err.contains("unable to determine its type"), "{err}");
    }

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
