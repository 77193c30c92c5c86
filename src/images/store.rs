//! The content-addressed store of unpacked artifacts: one tree per archive
//! digest, `<root>/sha256/<hex>`, never changed once made (containers will
//! get it with `BindReadOnlyPaths=`).
//!
//! An archive is unpacked while it streams in: its bytes are hashed on the
//! way to the decompressor and the unpacker ([`super::unpack`]), into a
//! private directory under `<root>/tmp`. Only when the stream has ended and
//! its digest matches the pin (if any) is the tree renamed into place, so
//! the store never holds a half-written or unverified tree, whatever
//! breaks: a mismatch, a truncated stream, a hostile entry, a full disk.
//! The same archive stored twice is one tree (the second is dropped).
//!
//! Every format ends up as a tar stream through the one unpacker; how each
//! gets there is in [`super::formats`]. The digest is always of the file
//! as fetched (a whole `.zip` or `.deb`), what `sha256sum` gives and a pin
//! names.

use super::formats::{self, Compression, FormatError};
use super::unpack::{Limits, UnpackError};
use crate::core::image::{ArchiveKind, Digest, ImageConfig};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// A tree in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The archive's digest.
    pub digest: Digest,
    /// Where its tree is.
    pub path: PathBuf,
    /// Bytes of the archive as fetched.
    pub archive_bytes: u64,
    /// Bytes of the unpacked files.
    pub unpacked_bytes: u64,
    /// What the archive says about running it: for a `.deb`, the
    /// `ExecStart=` of the unit file it ships as `entrypoint`; nothing for
    /// other archives. Computed when the archive is added, not stored.
    pub config: ImageConfig,
}

/// Why an archive did not make it into the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Its content is not what the pin says.
    #[error("digest mismatch: the archive is {got}, the image pins {want}")]
    Mismatch {
        /// The pin.
        want: Digest,
        /// What arrived.
        got: Digest,
    },
    /// It could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// Its zip or Debian package structure is unusable.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The store itself failed.
    #[error("image store {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Hashes what passes through, and counts it.
pub(super) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest of what has passed so far.
    pub(super) fn digest(&self) -> Digest {
        Digest::parse(&format!("sha256:{:x}", self.hasher.clone().finalize()))
            .expect("a sha256 is 64 hex digits")
    }
}

/// Refuses `got` unless it is the pin (if any).
pub(super) fn check_pin(want: Option<&Digest>, got: &Digest) -> Result<(), StoreError> {
    match want {
        Some(want) if want != got => Err(StoreError::Mismatch {
            want: want.clone(),
            got: got.clone(),
        }),
        _ => Ok(()),
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `root` (made as needed).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["sha256", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|source| StoreError::Io { path: p, source })?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The tree of `digest`, if stored.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.root.join("sha256").join(digest.hex());
        p.is_dir().then_some(p)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A private, empty tree under `<root>/tmp` to build an image in; it
    /// is removed when dropped unless [`Store::commit`] took it.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(|source| StoreError::Io {
                path: self.root.join("tmp"),
                source,
            })?;
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).map_err(|source| StoreError::Io {
            path: tree.clone(),
            source,
        })?;
        Ok(Staging { _dir: tmp, tree })
    }

    /// Moves a finished, verified staging tree into place as `key`'s tree.
    /// A tree stored under `key` already (by an earlier or a concurrent
    /// fetch) is kept and the staging tree dropped: trees never change.
    pub fn commit(&self, staging: Staging, key: &Digest) -> Result<PathBuf, StoreError> {
        let dest = self.root.join("sha256").join(key.hex());
        match std::fs::rename(&staging.tree, &dest) {
            Ok(()) => {}
            Err(e)
                if dest.is_dir()
                    && matches!(e.raw_os_error(), Some(c) if c == nix::libc::ENOTEMPTY || c == nix::libc::EEXIST) =>
                {}
            Err(source) => return Err(StoreError::Io { path: dest, source }),
        }
        Ok(dest)
    }

    /// Removes `key`'s tree: renamed away first (so no reader ever sees
    /// half a tree under its name), then deleted.
    pub fn remove(&self, key: &Digest) -> Result<(), StoreError> {
        let path = self.root.join("sha256").join(key.hex());
        let gone =
            self.root
                .join("tmp")
                .join(format!("remove-{}-{}", key.hex(), std::process::id()));
        match std::fs::rename(&path, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        remove_tree(&gone).map_err(|source| StoreError::Io { path: gone, source })
    }

    /// Clears what an interrupted fetch or removal left in `<root>/tmp`
    /// (call at start-up, before any fetch).
    pub fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let entries = std::fs::read_dir(&tmp).map_err(|source| StoreError::Io {
            path: tmp.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            remove_tree(&p).map_err(|source| StoreError::Io { path: p, source })?;
        }
        Ok(())
    }

    /// Unpacks the `kind` archive streaming from `reader` into the store,
    /// verifying it against `want` when pinned. Nothing is left behind
    /// when it fails, whatever the format.
    pub fn add(
        &self,
        kind: ArchiveKind,
        reader: impl Read,
        want: Option<&Digest>,
        limits: &Limits,
    ) -> Result<Stored, StoreError> {
        let staging = self.staging()?;
        let tree = staging.tree().to_path_buf();
        let mut hashing = Hashing::new(reader);
        let (unpacked, config) = match kind {
            ArchiveKind::Tar | ArchiveKind::TarGz | ArchiveKind::TarZst | ArchiveKind::TarXz => {
                let c = match kind {
                    ArchiveKind::TarGz => Compression::Gzip,
                    ArchiveKind::TarZst => Compression::Zstd,
                    ArchiveKind::TarXz => Compression::Xz,
                    _ => Compression::None,
                };
                let u = formats::unpack_compressed_tar(c, &mut hashing, &tree, limits)?;
                (u, None)
            }
            ArchiveKind::Zip => {
                let tmp = self.root.join("tmp");
                let u = formats::unpack_zip(&mut hashing, &tmp, want, &tree, limits)?;
                (u, None)
            }
            ArchiveKind::Deb => {
                let deb = formats::unpack_deb(&mut hashing, &tree, limits)?;
                (deb.unpacked, Some(deb.config))
            }
        };
        // The digest is of the whole archive, padding and trailers included.
        io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
        let got = hashing.digest();
        check_pin(want, &got)?;
        let path = self.commit(staging, &got)?;
        Ok(Stored {
            digest: got,
            path,
            archive_bytes: hashing.bytes,
            unpacked_bytes: unpacked.bytes,
            config: config.unwrap_or_default(),
        })
    }
}

/// A tree being built; see [`Store::staging`].
#[derive(Debug)]
pub struct Staging {
    _dir: tempfile::TempDir,
    tree: PathBuf,
}

impl Staging {
    /// The (initially empty) directory to build the tree in.
    pub fn tree(&self) -> &Path {
        &self.tree
    }
}

/// Removes a tree whose directories may have been left without write
/// permission by the archive (an image's read-only directories).
fn remove_tree(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // Make every directory writable, then try again.
            let mut stack = vec![path.to_path_buf()];
            while let Some(d) = stack.pop() {
                let Ok(meta) = std::fs::symlink_metadata(&d) else {
                    continue;
                };
                if meta.is_dir() {
                    let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                    if let Ok(rd) = std::fs::read_dir(&d) {
                        stack.extend(rd.flatten().map(|e| e.path()));
                    }
                }
            }
            std::fs::remove_dir_all(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, p, *d).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn sha(data: &[u8]) -> Digest {
        Digest::parse(&format!("sha256:{:x}", Sha256::digest(data))).unwrap()
    }

    fn leftovers(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_pinned_archive_is_verified_unpacked_and_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tar_gz(&[("svc/bin/svc", b"#!/bin/sh\necho hi\n")]);
        let d = sha(&a);
        let s = store
            .add(ArchiveKind::TarGz, &a[..], Some(&d), &Limits::default())
            .unwrap();
        assert_eq!(s.digest, d);
        assert_eq!(s.archive_bytes, a.len() as u64);
        assert_eq!(store.get(&d), Some(s.path.clone()));
        assert_eq!(
            std::fs::read_to_string(s.path.join("svc/bin/svc")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        // Unpinned, the same archive: the same tree, still one.
        let again = store
            .add(ArchiveKind::TarGz, &a[..], None, &Limits::default())
            .unwrap();
        assert_eq!(again.path, s.path);
        assert_eq!(
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count(),
            1
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn mismatched_truncated_and_hostile_archives_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = tar_gz(&[("f", b"data")]);
        let other = sha(b"something else");
        let e = store
            .add(ArchiveKind::TarGz, &a[..], Some(&other), &Limits::default())
            .unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(store
            .add(
                ArchiveKind::TarGz,
                &a[..a.len() / 2],
                None,
                &Limits::default()
            )
            .is_err());
        let mut evil = Vec::new();
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        evil.extend_from_slice(h.as_bytes());
        evil.extend_from_slice(&[0; 1024]);
        let e = store
            .add(ArchiveKind::Tar, &evil[..], None, &Limits::default())
            .unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count(),
            0
        );
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        assert!(!dir.path().join("escape").exists());
    }
}
