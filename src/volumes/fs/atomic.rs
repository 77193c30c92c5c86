//! The kubelet's atomic writer, for ConfigMap, Secret, downward API and
//! projected volumes: a container reading such a volume while it is
//! updated sees the old files or the new ones, never a mix, because the
//! files live in a timestamped directory that one `..data` symlink names,
//! and swapping that symlink is a single `rename`.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;

use super::{io_err, unexpected, Result, VolumeFsError};
use crate::core::volume::Payload;

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
/// visible (fsGroup ownership, see [`set_volume_ownership`](super::set_volume_ownership)).
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
/// fsGroup handling ([`set_volume_ownership`](super::set_volume_ownership)) adds `0o440`/`0o660` to the
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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::volumes::fs::{set_volume_ownership, ChangePolicy};

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
}
