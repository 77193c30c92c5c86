//! The archive formats other than a plain tar stream, each brought back to
//! one: the safe unpacker ([`super::unpack`]) only ever sees tar, so its
//! rules (nothing outside the tree, no devices, no setuid) are the same for
//! every format and live in one place.
//!
//! Compressed tars are decompressed as they stream. A zip is spooled to an
//! anonymous file first (its directory is at its end), hashed on the way,
//! then rewritten entry by entry as a tar stream on a thread feeding the
//! unpacker. A Debian package is an `ar` archive read as it streams: only
//! its data archive is unpacked, and the unit file it ships gives the
//! image's default command (nothing is installed, no maintainer script
//! runs).

use super::store::{Hashing, StoreError};
use super::unpack::{unpack_tar, Limits, UnpackError, Unpacked};
use crate::core::image::{Digest, ImageConfig, ARTIFACT_MOUNT};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::cell::Cell;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::mpsc;

/// Why a zip or a Debian package was refused, beyond what the tar
/// unpacker says about the entries themselves.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The zip's structure is broken or uses what the zip crate cannot read.
    #[error("the zip archive cannot be read: {0}; is it a complete .zip file?")]
    Zip(#[source] zip::result::ZipError),
    /// An entry needs a password.
    #[error(
        "zip entry {entry:?} is encrypted; unitlet cannot unpack encrypted zip entries: \
         publish the archive without a password (pin it with @sha256: to protect it instead)"
    )]
    ZipEncrypted {
        /// The entry's name.
        entry: String,
    },
    /// An entry is compressed with a method other than store or deflate.
    #[error(
        "zip entry {entry:?} is compressed with {method}; unitlet unpacks stored and deflated \
         entries only: re-create the zip with deflate (the default of zip(1))"
    )]
    ZipMethod {
        /// The entry's name.
        entry: String,
        /// The method, as the zip crate names it.
        method: String,
    },
    /// An entry that cannot become a file of the tree.
    #[error("zip entry {entry:?} is refused: {why}")]
    ZipEntry {
        /// The entry's name.
        entry: String,
        /// Why.
        why: String,
    },
    /// Not an `ar` archive whose first member is `debian-binary`.
    #[error("not a Debian package: {0}")]
    NotDeb(String),
    /// A package format other than 2.x.
    #[error("the .deb is package format {0:?}; unitlet reads format 2.x, what dpkg-deb builds")]
    DebVersion(String),
    /// No `data.tar*` member: nothing to unpack.
    #[error("the .deb has no data.tar member; is it a complete Debian binary package?")]
    DebNoData,
    /// A member twice.
    #[error("the .deb has more than one {0} member; a Debian package has one")]
    DebDuplicate(String),
    /// A `control.tar*` or `data.tar*` compressed in a way this node does not read.
    #[error(
        "the .deb's {member} member is compressed in a way unitlet does not read; \
         rebuild the package with dpkg-deb -Z xz, -Z zstd or -Z gzip"
    )]
    DebCompression {
        /// The member's name.
        member: String,
    },
    /// The control archive is unreadable.
    #[error("the .deb's control archive cannot be read: {0}")]
    DebControl(#[source] io::Error),
    /// The ar structure is broken or cut short.
    #[error("the .deb cannot be read: {0}; is the download complete?")]
    DebRead(#[source] io::Error),
}

/// How a tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    /// The compression of a `.deb` member from what follows `….tar`.
    fn of_suffix(suffix: &str) -> Option<Compression> {
        match suffix {
            "" => Some(Compression::None),
            ".gz" => Some(Compression::Gzip),
            ".zst" => Some(Compression::Zstd),
            ".xz" => Some(Compression::Xz),
            _ => None,
        }
    }
}

/// The largest dictionary an `.xz` may ask for, in KiB: `xz -9` needs
/// 64 MiB, so 256 MiB admits every preset while a crafted header cannot
/// make the agent allocate gigabytes.
const XZ_MEM_LIMIT_KB: u32 = 256 * 1024;

/// A decoder's errors, prefixed with the format: "unexpected end of file"
/// alone does not tell a truncated download from a truncated zstd frame.
struct Named<R> {
    inner: R,
    what: &'static str,
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let what = self.what;
            let msg = match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    format!("the {what} stream ends early (is the download complete?): {e}")
                }
                _ => format!("{what} stream: {e}"),
            };
            io::Error::new(e.kind(), msg)
        })
    }
}

/// A decompressing reader over `raw`.
fn decoder<'a>(c: Compression, raw: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(Named {
            inner: flate2::read::GzDecoder::new(raw),
            what: "gzip",
        }),
        Compression::Zstd => Box::new(Named {
            inner: zstd::stream::read::Decoder::new(raw)?,
            what: "zstd",
        }),
        Compression::Xz => Box::new(Named {
            inner: lzma_rust2::XzReader::new_mem_limit(BufReader::new(raw), true, XZ_MEM_LIMIT_KB),
            what: "xz",
        }),
    })
}

/// Reads a decoder to its end, at most `limit` bytes. The tar reader stops
/// at the end-of-archive blocks, before the compressed stream's own
/// trailer (gzip's CRC, xz's index and footer, zstd's frame end): only
/// reading on checks it, so a download cut after the last entry is still
/// refused. The limit stops a stream that goes on decompressing forever.
fn drain_decoder(d: &mut dyn Read, limit: u64) -> Result<(), UnpackError> {
    let rest = io::copy(&mut d.take(limit.saturating_add(1)), &mut io::sink())
        .map_err(UnpackError::Read)?;
    if rest > limit {
        return Err(UnpackError::TooLarge(format!(
            "more than {limit} bytes after the end of the tar stream"
        )));
    }
    Ok(())
}

/// Unpacks the tar stream compressed as `c` in `raw` into `tree`.
pub(super) fn unpack_compressed_tar(
    c: Compression,
    raw: impl Read,
    tree: &Path,
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let mut d = decoder(c, raw).map_err(UnpackError::Read)?;
    let unpacked = unpack_tar(&mut d, tree, limits)?;
    if c != Compression::None {
        drain_decoder(&mut d, limits.max_bytes)?;
    }
    Ok(unpacked)
}

// ---------------------------------------------------------------- zip --

/// What the tar stream is sent in: big enough to keep the thread switches
/// rare, a few of them in flight at most.
const PIPE_CHUNK: usize = 64 << 10;
const PIPE_DEPTH: usize = 4;

/// Spools the zip streaming from `src` to an anonymous file in `tmp`
/// (hashed on the way, at most `limits.max_bytes`), checks the pin before
/// anything is unpacked, and unpacks its entries into `tree` through the
/// tar unpacker.
pub(super) fn unpack_zip<R: Read>(
    src: &mut Hashing<R>,
    tmp: &Path,
    want: Option<&Digest>,
    tree: &Path,
    limits: &Limits,
) -> Result<Unpacked, StoreError> {
    // O_TMPFILE: the spool has no name, so nothing is left behind whatever
    // happens, even a crash.
    let mut spool = tempfile::tempfile_in(tmp).map_err(|source| StoreError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut buf = vec![0u8; PIPE_CHUNK];
    let mut spooled = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Read(e).into()),
        };
        spooled += n as u64;
        if spooled > limits.max_bytes {
            return Err(UnpackError::TooLarge(format!(
                "the zip archive is over {} bytes",
                limits.max_bytes
            ))
            .into());
        }
        spool
            .write_all(&buf[..n])
            .map_err(|source| StoreError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
    }
    super::store::check_pin(want, &src.digest())?;
    spool.rewind().map_err(|source| StoreError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(spool)).map_err(FormatError::Zip)?;
    zip_through_tar(&mut zip, tree, limits)
}

/// Why the thread writing the tar stream stopped.
enum Producer {
    /// The unpacker stopped reading (it refused something): its error is
    /// the one to report.
    HungUp,
    /// The zip itself is at fault.
    Failed(StoreError),
}

/// Feeds `zip`'s entries as a tar stream to [`unpack_tar`].
fn zip_through_tar<F: Read + Seek + Send>(
    zip: &mut zip::ZipArchive<F>,
    tree: &Path,
    limits: &Limits,
) -> Result<Unpacked, StoreError> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let hung = Cell::new(false);
            let out = PipeWriter {
                tx,
                buf: Vec::with_capacity(PIPE_CHUNK),
                hung: &hung,
            };
            match zip_to_tar(zip, out) {
                Ok(()) => Ok(()),
                Err(_) if hung.get() => Err(Producer::HungUp),
                Err(e) => Err(Producer::Failed(e)),
            }
        });
        let mut reader = PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let consumed = unpack_tar(&mut reader, tree, limits).and_then(|u| {
            // Up to the end, so the writer is never left blocked.
            io::copy(&mut reader, &mut io::sink()).map_err(UnpackError::Read)?;
            Ok(u)
        });
        drop(reader);
        match producer.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            // The zip's own fault comes first: a tar stream cut short by it
            // may well have looked complete to the unpacker.
            Ok(Err(Producer::Failed(e))) => Err(e),
            Ok(Err(Producer::HungUp)) | Ok(Ok(())) => Ok(consumed?),
        }
    })
}

/// The writing end of the in-process pipe.
struct PipeWriter<'a> {
    tx: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    hung: &'a Cell<bool>,
}

impl PipeWriter<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
        self.tx.send(chunk).map_err(|_| {
            self.hung.set(true);
            io::Error::new(io::ErrorKind::BrokenPipe, "the unpacker stopped reading")
        })
    }
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The reading end: the stream ends when the writer is gone.
struct PipeReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

/// The longest symlink target a zip entry may hold (PATH_MAX).
const MAX_LINK: u64 = 4096;

/// Writes each entry of `zip` to `out` as a tar entry, its name, mode and
/// kind as the zip says: judging them is the unpacker's job, so nothing
/// here sanitises (the `tar` builder's own path checks are bypassed by
/// writing headers byte for byte, as unpack.rs's tests do).
fn zip_to_tar<F: Read + Seek>(
    zip: &mut zip::ZipArchive<F>,
    out: PipeWriter<'_>,
) -> Result<(), StoreError> {
    let mut tar = tar::Builder::new(out);
    for i in 0..zip.len() {
        let (name, mode, kind) = {
            let meta = zip.by_index_data(i).map_err(FormatError::Zip)?;
            let name = meta.name().map_err(FormatError::Zip)?.into_owned();
            if meta.encrypted() {
                return Err(FormatError::ZipEncrypted { entry: name }.into());
            }
            if !matches!(
                meta.compression(),
                zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated
            ) {
                return Err(FormatError::ZipMethod {
                    entry: name,
                    method: format!("{:?}", meta.compression()),
                }
                .into());
            }
            let bad = |why: &str| FormatError::ZipEntry {
                entry: name.clone(),
                why: why.to_string(),
            };
            if name.contains('\0') {
                return Err(bad("its name holds a NUL byte").into());
            }
            // The raw Unix mode, setuid bits included, so that the
            // unpacker refuses them as it refuses them in a tar (the zip
            // crate's `unix_mode` would drop them silently).
            let raw = meta.external_attributes() >> 16;
            let mode = if meta.system() == zip::System::Unix && raw != 0 {
                raw
            } else {
                meta.unix_mode().unwrap_or(0)
            };
            let kind = if meta.is_dir() || mode & S_IFMT == S_IFDIR {
                tar::EntryType::Directory
            } else {
                match mode & S_IFMT {
                    0 | S_IFREG => tar::EntryType::Regular,
                    S_IFLNK => tar::EntryType::Symlink,
                    S_IFCHR => tar::EntryType::Char,
                    S_IFBLK => tar::EntryType::Block,
                    S_IFIFO => tar::EntryType::Fifo,
                    _ => return Err(bad("it is a socket or of an unknown file type").into()),
                }
            };
            let perm = match (mode & 0o7777, kind) {
                (0, tar::EntryType::Directory) => 0o755,
                (0, _) => 0o644,
                (p, _) => p,
            };
            (name, perm, kind)
        };
        let mut file = zip.by_index(i).map_err(FormatError::Zip)?;
        let corrupt = |e: io::Error| FormatError::ZipEntry {
            entry: name.clone(),
            why: format!("its data cannot be read: {e}"),
        };
        match kind {
            tar::EntryType::Symlink => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_LINK + 1)
                    .read_to_end(&mut target)
                    .map_err(corrupt)?;
                if target.len() as u64 > MAX_LINK || target.is_empty() || target.contains(&0) {
                    return Err(FormatError::ZipEntry {
                        entry: name,
                        why: "a symlink whose target is empty, too long or holds a NUL byte".into(),
                    }
                    .into());
                }
                append(
                    &mut tar,
                    name.as_bytes(),
                    kind,
                    mode,
                    &target,
                    0,
                    io::empty(),
                )
                .map_err(corrupt)?;
            }
            tar::EntryType::Regular => {
                let size = file.size();
                let data = Exactly {
                    inner: &mut file,
                    left: size,
                };
                append(&mut tar, name.as_bytes(), kind, mode, b"", size, data).map_err(corrupt)?;
                // Reading on to the end is what checks the CRC; more data
                // than the header said is a lie about the size.
                if file.read(&mut [0u8; 1]).map_err(corrupt)? != 0 {
                    return Err(FormatError::ZipEntry {
                        entry: name,
                        why: "it holds more data than its header says".into(),
                    }
                    .into());
                }
            }
            _ => append(&mut tar, name.as_bytes(), kind, mode, b"", 0, io::empty())
                .map_err(corrupt)?,
        }
    }
    let mut out = tar.into_inner().map_err(|e| FormatError::Zip(e.into()))?;
    out.flush().map_err(|e| FormatError::Zip(e.into()))?;
    Ok(())
}

/// Exactly `left` bytes of `inner`, an error if it ends sooner: a tar
/// entry must be as long as its header says.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the entry is shorter than its header says",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Appends one tar entry with `name` and `link` as given, long ones in GNU
/// `././@LongLink` entries (which the tar reader, and so the unpacker,
/// resolves).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    link: &[u8],
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    const FIELD: usize = 100;
    for (long, value) in [
        (tar::EntryType::GNULongName, name),
        (tar::EntryType::GNULongLink, link),
    ] {
        if value.len() > FIELD {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
            h.set_entry_type(long);
            h.set_mode(0o644);
            h.set_size(value.len() as u64 + 1);
            h.set_cksum();
            tar.append(&h, value.chain(&[0u8][..]))?;
        }
    }
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(FIELD);
        g.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(FIELD);
        g.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    tar.append(&h, data)
}

// ---------------------------------------------------------------- deb --

/// A `.deb` unpacked: its data tree, and what its unit file says to run.
pub(super) struct Deb {
    pub(super) unpacked: Unpacked,
    pub(super) config: ImageConfig,
}

/// The most of `debian-binary` and of the control file read: both are a
/// few lines.
const SMALL_MEMBER: u64 = 1 << 20;

/// Unpacks the data archive of the Debian package streaming from `raw`
/// into `tree`, and finds its default command.
pub(super) fn unpack_deb(raw: impl Read, tree: &Path, limits: &Limits) -> Result<Deb, StoreError> {
    let mut ar = Ar::new(raw)?;
    let Some((first, _)) = ar.next_member()? else {
        return Err(FormatError::NotDeb("the ar archive is empty".into()).into());
    };
    if first != "debian-binary" {
        return Err(FormatError::NotDeb(format!(
            "its first member is {first:?}, not debian-binary"
        ))
        .into());
    }
    let mut version = String::new();
    (&mut ar)
        .take(64)
        .read_to_string(&mut version)
        .map_err(FormatError::DebRead)?;
    let version = version.trim();
    if !version.starts_with("2.") {
        return Err(FormatError::DebVersion(version.to_string()).into());
    }
    let mut package: Option<Option<String>> = None;
    let mut unpacked = None;
    while let Some((name, _)) = ar.next_member()? {
        let (slot_full, suffix) = if let Some(s) = name.strip_prefix("control.tar") {
            (package.is_some(), s)
        } else if let Some(s) = name.strip_prefix("data.tar") {
            (unpacked.is_some(), s)
        } else {
            // `_`-prefixed members (signatures) and anything newer: dpkg
            // skips them too.
            continue;
        };
        if slot_full {
            return Err(FormatError::DebDuplicate(name).into());
        }
        let c = Compression::of_suffix(suffix).ok_or_else(|| FormatError::DebCompression {
            member: name.clone(),
        })?;
        if name.starts_with("control") {
            package = Some(read_package(c, &mut ar, limits).map_err(FormatError::DebControl)?);
        } else {
            unpacked = Some(unpack_compressed_tar(c, &mut ar, tree, limits)?);
        }
    }
    let unpacked = unpacked.ok_or(FormatError::DebNoData)?;
    let entrypoint = default_command(tree, package.flatten().as_deref());
    Ok(Deb {
        unpacked,
        config: ImageConfig {
            entrypoint,
            ..ImageConfig::default()
        },
    })
}

/// The `Package:` field of the control archive's `control` file.
fn read_package(c: Compression, raw: impl Read, limits: &Limits) -> io::Result<Option<String>> {
    let mut d = decoder(c, raw)?;
    let mut package = None;
    {
        let mut archive = tar::Archive::new(&mut d);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let parts: Vec<_> = path
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            if entry.header().entry_type().is_file()
                && parts.len() == 1
                && parts[0].as_os_str() == "control"
                && package.is_none()
            {
                let mut text = Vec::new();
                (&mut entry).take(SMALL_MEMBER).read_to_end(&mut text)?;
                package = control_field(&String::from_utf8_lossy(&text), "Package");
            }
        }
    }
    drain_decoder(&mut d, limits.max_bytes).map_err(|e| match e {
        UnpackError::Read(e) => e,
        other => io::Error::other(other.to_string()),
    })?;
    Ok(package)
}

/// A field of a control paragraph (names are case-insensitive; only the
/// first line of a multi-line value).
fn control_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with([' ', '\t']))
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(field)
                .then(|| v.trim().to_string())
        })
        .filter(|v| !v.is_empty())
}

/// The common `ar` format as dpkg-deb writes and reads it, streamed: the
/// `ar` crate allocates a GNU name table at whatever size its header
/// claims (a crafted .deb could make the agent abort) and takes a member
/// cut short for a short member, so the few lines the format needs are
/// written out here. Reading it reads the current member.
struct Ar<R> {
    inner: R,
    /// The member being read: its name and the bytes left of it.
    name: String,
    left: u64,
    /// A member of odd size is followed by a `\n`.
    pad: bool,
}

impl<R: Read> Ar<R> {
    fn new(mut inner: R) -> Result<Self, FormatError> {
        let mut magic = [0u8; 8];
        match inner.read_exact(&mut magic) {
            Ok(()) if &magic == b"!<arch>\n" => {}
            Ok(()) => {
                return Err(FormatError::NotDeb(
                    "it does not start with the ar signature \"!<arch>\"".into(),
                ))
            }
            Err(e) => return Err(FormatError::DebRead(e)),
        }
        Ok(Ar {
            inner,
            name: String::new(),
            left: 0,
            pad: false,
        })
    }

    /// Skips what is left of the current member and reads the next one's
    /// header: its name and size.
    fn next_member(&mut self) -> Result<Option<(String, u64)>, FormatError> {
        io::copy(self, &mut io::sink()).map_err(FormatError::DebRead)?;
        if std::mem::take(&mut self.pad) {
            let mut nl = [0u8; 1];
            match self.inner.read(&mut nl).map_err(FormatError::DebRead)? {
                0 => return Ok(None),
                _ if nl[0] == b'\n' => {}
                _ => return Err(FormatError::NotDeb("a member's padding is not \\n".into())),
            }
        }
        let mut h = [0u8; 60];
        let mut got = 0;
        while got < h.len() {
            match self.inner.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(FormatError::DebRead(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "it ends inside a member header",
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::DebRead(e)),
            }
        }
        if &h[58..60] != b"`\n" {
            return Err(FormatError::NotDeb("a member header is malformed".into()));
        }
        let name = String::from_utf8_lossy(&h[..16]);
        let name = name.trim_end_matches(' ');
        // GNU ar ends names with '/'.
        let name = name.strip_suffix('/').unwrap_or(name).to_string();
        let size = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim_end_matches(' ').parse::<u64>().ok())
            .ok_or_else(|| {
                FormatError::NotDeb(format!("the size of member {name:?} is not a number"))
            })?;
        self.name.clone_from(&name);
        self.left = size;
        self.pad = size % 2 == 1;
        Ok(Some((name, size)))
    }
}

impl<R: Read> Read for Ar<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the .deb ends inside its {} member", self.name),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The units a package ships are looked for where dpkg puts them.
const UNIT_DIRS: [&str; 2] = ["lib/systemd/system", "usr/lib/systemd/system"];

/// What the package's unit file runs, its program rewritten to where the
/// tree is mounted in the container; empty when the package ships no
/// usable unit (the pod must then give `command`).
fn default_command(tree: &Path, package: Option<&str>) -> Vec<String> {
    let Ok(root) = nix::fcntl::open(
        tree,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut units = Vec::new();
    for dir in UNIT_DIRS {
        let Ok(fd) = open_in_tree(&root, dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY) else {
            continue;
        };
        // The directory as this fd opened it, whatever symlinks led there.
        let Ok(list) = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            continue;
        };
        for e in list.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".service") && !n.ends_with("@.service") {
                units.push(format!("{dir}/{n}"));
            }
        }
    }
    // By unit name first: `lib/` and `usr/lib/` are one directory on a
    // merged-/usr system, so neither should win by its path.
    let unit_name = |u: &String| u.rsplit('/').next().unwrap_or_default().to_string();
    units.sort_by(|a, b| (unit_name(a), a).cmp(&(unit_name(b), b)));
    let wanted = package.map(|p| format!("/{p}.service"));
    let Some(unit) = units
        .iter()
        .find(|u| wanted.as_ref().is_some_and(|w| u.ends_with(w.as_str())))
        .or(units.first())
    else {
        return Vec::new();
    };
    let mut text = Vec::new();
    let read = open_in_tree(&root, unit, OFlag::O_RDONLY)
        .map_err(io::Error::from)
        .and_then(|f| {
            std::fs::File::from(f)
                .take(SMALL_MEMBER)
                .read_to_end(&mut text)
        });
    if read.is_err() {
        return Vec::new();
    }
    let Some(value) = exec_start(&String::from_utf8_lossy(&text)) else {
        return Vec::new();
    };
    let mut argv = match exec_start_argv(&value) {
        Ok(argv) => argv,
        Err(why) => {
            tracing::warn!(%unit, %why, "the package's ExecStart= cannot be used as its command");
            return Vec::new();
        }
    };
    let program = argv[0].clone();
    let inside = Path::new(&program);
    if inside.is_absolute()
        && !inside
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        && open_in_tree(&root, program.trim_start_matches('/'), OFlag::O_PATH).is_ok()
    {
        argv[0] = format!("{ARTIFACT_MOUNT}{program}");
    }
    argv
}

/// Opens `rel` in the tree, symlinks resolved as if the tree were `/`:
/// as the container will see it, and never outside it.
fn open_in_tree(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), rel, how)
}

/// The `ExecStart=` in effect in a unit file's `[Service]` section: the
/// first of its list, an empty assignment clearing what came before.
fn exec_start(unit: &str) -> Option<String> {
    let mut section = String::new();
    let mut list: Vec<String> = Vec::new();
    let mut joined = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        // A comment inside a continued line is dropped, as systemd does.
        if line.starts_with(['#', ';']) {
            continue;
        }
        if !joined.is_empty() || !line.is_empty() {
            let trailing = line.len() - line.trim_end_matches('\\').len();
            if trailing % 2 == 1 {
                joined.push_str(&line[..line.len() - 1]);
                joined.push(' ');
                continue;
            }
            joined.push_str(line);
        }
        let line = std::mem::take(&mut joined);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        if section != "Service" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "ExecStart" {
            match value.trim() {
                "" => list.clear(),
                v => list.push(v.to_string()),
            }
        }
    }
    list.into_iter().next()
}

const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// Splits an `ExecStart=` value into the program and its arguments, as
/// systemd does: the `-@:+!` prefixes dropped (with `@`, the second word
/// is the process's `argv[0]`, which a container's command cannot set,
/// so it is dropped too), words split on whitespace, double and single
/// quotes anywhere in a word, C escapes (`\n`, `\x41`, `\101`, `\u00e9`,
/// `\s`, …) in and out of quotes, a lone `;` ending the command (`\;` is
/// a literal `;`), `%%` for `%`. Environment references (`$VAR`,
/// `${VAR}`) and other `%` specifiers are left as written.
pub fn exec_start_argv(value: &str) -> Result<Vec<String>, String> {
    let mut rest = value;
    let first = loop {
        match next_word(&mut rest)? {
            None => return Err("no command".into()),
            // A lone `;` before the command: an empty command, skipped.
            Some(w) if w == ";" => continue,
            Some(w) => break w,
        }
    };
    let program = first.trim_start_matches(['-', '@', ':', '+', '!']);
    let own_argv0 = first[..first.len() - program.len()].contains('@');
    if program.is_empty() {
        return Err("the command is only prefixes".into());
    }
    let mut argv = vec![percent(program)];
    loop {
        let trimmed = rest.trim_start_matches(WHITESPACE);
        if trimmed == ";" || (trimmed.starts_with(';') && trimmed[1..].starts_with(WHITESPACE)) {
            break;
        }
        if let Some(after) = trimmed.strip_prefix("\\;") {
            if after.is_empty() || after.starts_with(WHITESPACE) {
                argv.push(";".into());
                rest = after;
                continue;
            }
        }
        match next_word(&mut rest)? {
            None => break,
            Some(w) => argv.push(percent(&w)),
        }
    }
    if own_argv0 {
        if argv.len() < 2 {
            return Err("'@' needs argv[0] as the second word".into());
        }
        argv.remove(1);
    }
    Ok(argv)
}

/// `%%` is `%`; other specifiers stay as written.
fn percent(word: &str) -> String {
    word.replace("%%", "%")
}

/// The next word of `rest`, unquoted and unescaped (systemd's
/// `extract_first_word` with `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE`).
fn next_word(rest: &mut &str) -> Result<Option<String>, String> {
    let s = rest.trim_start_matches(WHITESPACE);
    if s.is_empty() {
        *rest = s;
        return Ok(None);
    }
    let mut word: Vec<u8> = Vec::new();
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices().peekable();
    let mut end = s.len();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                let Some((_, e)) = chars.next() else {
                    return Err("a trailing backslash".into());
                };
                unescape(e, &mut chars, &mut word)?;
            }
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if WHITESPACE.contains(&c) => {
                end = i;
                break;
            }
            (_, c) => {
                let mut b = [0u8; 4];
                word.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    if quote.is_some() {
        return Err("an unterminated quote".into());
    }
    *rest = &s[end..];
    let word = String::from_utf8(word).map_err(|_| "an escape that is not UTF-8".to_string())?;
    Ok(Some(word))
}

/// One C escape after its backslash (systemd's `cunescape_one`): NUL and
/// unknown escapes are errors, as systemd refuses the line for them.
fn unescape(
    e: char,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut digits = |n: usize, radix: u32| -> Result<u32, String> {
        let mut v = 0u32;
        for _ in 0..n {
            let d = chars
                .next()
                .and_then(|(_, c)| c.to_digit(radix))
                .ok_or_else(|| format!("a malformed \\{e} escape"))?;
            v = v * radix + d;
        }
        Ok(v)
    };
    let simple = match e {
        'a' => Some(0x07),
        'b' => Some(0x08),
        'f' => Some(0x0c),
        'n' => Some(b'\n'),
        'r' => Some(b'\r'),
        't' => Some(b'\t'),
        'v' => Some(0x0b),
        '\\' => Some(b'\\'),
        '"' => Some(b'"'),
        '\'' => Some(b'\''),
        's' => Some(b' '),
        _ => None,
    };
    if let Some(b) = simple {
        out.push(b);
        return Ok(());
    }
    match e {
        'x' => {
            let v = digits(2, 16)?;
            if v == 0 {
                return Err("a \\x00 escape (NUL)".into());
            }
            out.push(v as u8);
        }
        '0'..='7' => {
            let v = e.to_digit(8).expect("an octal digit") * 64 + digits(2, 8)?;
            if v == 0 || v > 255 {
                return Err("an octal escape that is NUL or over 255".into());
            }
            out.push(v as u8);
        }
        'u' | 'U' => {
            let v = digits(if e == 'u' { 4 } else { 8 }, 16)?;
            let c = char::from_u32(v)
                .filter(|c| *c != '\0')
                .ok_or_else(|| format!("\\{e}{v:x} is not a character"))?;
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
        other => return Err(format!("an unknown escape \\{other}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::ArchiveKind;
    use crate::images::store::Store;
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const KINDS: [ArchiveKind; 6] = [
        ArchiveKind::Tar,
        ArchiveKind::TarGz,
        ArchiveKind::TarZst,
        ArchiveKind::TarXz,
        ArchiveKind::Zip,
        ArchiveKind::Deb,
    ];

    const SCRIPT: &[u8] = b"#!/bin/sh\necho svc\n";

    #[derive(Clone, Copy)]
    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Sym(&'a str, &'a str),
    }

    /// Bytes that do not compress, so that half an archive is half its data.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_u32;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A tar stream written byte for byte (the tar builder refuses the
    /// hostile paths these tests need).
    fn tar(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let (path, kind, data, mode, link): (&str, _, &[u8], u32, &str) = match *e {
                E::File(p, d, m) => (p, tar::EntryType::Regular, d, m, ""),
                E::Dir(p) => (p, tar::EntryType::Directory, b"", 0o755, ""),
                E::Sym(p, t) => (p, tar::EntryType::Symlink, b"", 0o777, t),
            };
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
            Compression::Xz => {
                let dir = tempfile::tempdir().unwrap();
                let f = dir.path().join("data");
                std::fs::write(&f, data).unwrap();
                let out = Command::new("xz").arg("-c").arg(&f).output().unwrap();
                assert!(out.status.success(), "xz: {out:?}");
                out.stdout
            }
        }
    }

    fn zip_opts() -> zip::write::SimpleFileOptions {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
    }

    fn zip(entries: &[E]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for e in entries {
            match *e {
                E::File(p, d, m) => {
                    w.start_file(p, zip_opts().unix_permissions(m)).unwrap();
                    w.write_all(d).unwrap();
                }
                E::Dir(p) => w.add_directory(p, zip_opts()).unwrap(),
                E::Sym(p, t) => w.add_symlink(p, t, zip_opts()).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// A `.deb` built by hand, member by member.
    fn deb(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ar::Builder::new(Vec::new());
        for (name, data) in members {
            let h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn control_tar(package: &str) -> Vec<u8> {
        let control = format!("Package: {package}\nVersion: 1.0\nArchitecture: all\n");
        compress(
            Compression::Gzip,
            &tar(&[
                E::Dir("./"),
                E::File("./control", control.as_bytes(), 0o644),
            ]),
        )
    }

    fn archive(kind: ArchiveKind, entries: &[E]) -> Vec<u8> {
        let t = tar(entries);
        match kind {
            ArchiveKind::Tar => t,
            ArchiveKind::TarGz => compress(Compression::Gzip, &t),
            ArchiveKind::TarZst => compress(Compression::Zstd, &t),
            ArchiveKind::TarXz => compress(Compression::Xz, &t),
            ArchiveKind::Zip => zip(entries),
            ArchiveKind::Deb => deb(&[
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", &control_tar("svc")),
                ("data.tar.zst", &compress(Compression::Zstd, &t)),
            ]),
        }
    }

    fn sha(data: &[u8]) -> Digest {
        Digest::parse(&format!("sha256:{:x}", Sha256::digest(data))).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Nothing half-made, nothing stored.
    fn nothing_left(root: &Path) {
        assert_eq!(names(&root.join("tmp")), Vec::<String>::new());
        assert_eq!(names(&root.join("sha256")), Vec::<String>::new());
    }

    fn add(
        store: &Store,
        kind: ArchiveKind,
        data: &[u8],
        want: Option<&Digest>,
    ) -> Result<crate::images::store::Stored, StoreError> {
        store.add(kind, data, want, &Limits::default())
    }

    #[test]
    fn every_format_unpacks_verified_with_its_modes_and_links() {
        let big = noise(20_000);
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let a = archive(
                kind,
                &[
                    E::Dir("svc/"),
                    E::File("svc/bin/svc", SCRIPT, 0o755),
                    E::File("svc/data", &big, 0o640),
                    E::Sym("svc/current", "bin/svc"),
                ],
            );
            let s =
                add(&store, kind, &a, Some(&sha(&a))).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(s.digest, sha(&a), "{kind:?}");
            assert_eq!(s.archive_bytes, a.len() as u64, "{kind:?}");
            assert_eq!(
                s.unpacked_bytes,
                (SCRIPT.len() + big.len()) as u64,
                "{kind:?}"
            );
            assert_eq!(s.config, ImageConfig::default(), "{kind:?}");
            let svc = s.path.join("svc");
            assert_eq!(std::fs::read(svc.join("bin/svc")).unwrap(), SCRIPT);
            assert_eq!(std::fs::read(svc.join("data")).unwrap(), big);
            let mode = |p: &str| std::fs::metadata(svc.join(p)).unwrap().permissions().mode();
            assert_eq!(mode("bin/svc") & 0o7777, 0o755, "{kind:?}");
            assert_eq!(mode("data") & 0o7777, 0o640, "{kind:?}");
            assert_eq!(
                std::fs::read_link(svc.join("current")).unwrap(),
                Path::new("bin/svc"),
                "{kind:?}"
            );
            assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());
        }
    }

    #[test]
    fn every_format_refuses_mismatches_truncations_hostile_entries_and_bombs() {
        let big = noise(20_000);
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let a = archive(kind, &[E::File("f", &big, 0o644)]);
            let e = add(&store, kind, &a, Some(&sha(b"something else"))).unwrap_err();
            assert!(e.to_string().contains("digest mismatch"), "{kind:?}: {e}");
            let e = add(&store, kind, &a[..a.len() / 2], None).unwrap_err();
            assert!(!e.to_string().is_empty(), "{kind:?}");
            // Cut inside the compressed stream's trailer, after the tar's
            // end: the tar reader alone would not notice. (A plain tar cut
            // in its zero blocks is a complete tar.)
            if kind != ArchiveKind::Tar {
                let e = add(&store, kind, &a[..a.len() - 4], None)
                    .map(|s| s.path)
                    .expect_err(&format!("{kind:?} cut short by 4 bytes"));
                assert!(!e.to_string().is_empty());
            }
            for (entries, want) in [
                (vec![E::File("../x", b"x", 0o644)], "'..'"),
                (vec![E::File("a/../../x", b"x", 0o644)], "'..'"),
                (vec![E::File("/tmp/x", b"x", 0o644)], "absolute"),
                (vec![E::Sym("l", "../../etc")], "outside"),
                (vec![E::Sym("etc", "/etc")], "outside"),
                (
                    vec![E::Sym("a", "."), E::File("a/x", b"x", 0o644)],
                    "not a directory",
                ),
            ] {
                let hostile = archive(kind, &entries);
                let e = add(&store, kind, &hostile, None).unwrap_err();
                assert!(
                    e.to_string().contains(want),
                    "{kind:?}: {e} should say {want}"
                );
            }
            let small = Limits {
                max_bytes: 1000,
                max_entries: 100,
            };
            let e = store.add(kind, &a[..], None, &small).unwrap_err();
            assert!(
                e.to_string().contains("larger than allowed"),
                "{kind:?}: {e}"
            );
            nothing_left(dir.path());
            assert!(!dir.path().join("x").exists() && !dir.path().join("tmp/x").exists());
        }
    }

    #[test]
    fn zip_long_names_dos_entries_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long = format!("{}/{}", "d".repeat(80), "f".repeat(70));
        let target = format!("{}/{}", "d".repeat(80), "f".repeat(70));
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file(long.as_str(), zip_opts()).unwrap();
        w.write_all(b"long").unwrap();
        w.add_symlink("to-long", target.as_str(), zip_opts())
            .unwrap();
        w.start_file("dos.txt", zip_opts().system(zip::System::Dos))
            .unwrap();
        w.write_all(b"dos").unwrap();
        w.start_file(
            "stored",
            zip_opts().compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
        w.write_all(b"as is").unwrap();
        let a = w.finish().unwrap().into_inner();
        let s = add(&store, ArchiveKind::Zip, &a, None).unwrap();
        assert_eq!(std::fs::read(s.path.join(&long)).unwrap(), b"long");
        assert_eq!(std::fs::read(s.path.join("to-long")).unwrap(), b"long");
        assert_eq!(std::fs::read(s.path.join("dos.txt")).unwrap(), b"dos");
        assert_eq!(std::fs::read(s.path.join("stored")).unwrap(), b"as is");
        store.remove(&s.digest).unwrap();

        let one = |opts: zip::write::SimpleFileOptions| {
            let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
            w.start_file("f", opts).unwrap();
            w.write_all(b"data").unwrap();
            w.finish().unwrap().into_inner()
        };
        // The flag bits and method of the local and central headers, set
        // by hand: the zip crate here writes neither encryption nor bzip2.
        let patch = |mut z: Vec<u8>, local: usize, central: usize, value: u16| {
            z[local..local + 2].copy_from_slice(&value.to_le_bytes());
            let cd = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
            z[cd + central..cd + central + 2].copy_from_slice(&value.to_le_bytes());
            z
        };
        let plain = one(zip_opts().compression_method(zip::CompressionMethod::Stored));
        let flags = u16::from_le_bytes([plain[6], plain[7]]);
        for (a, want) in [
            (
                patch(plain.clone(), 6, 8, flags | 1),
                "zip entry \"f\" is encrypted; unitlet cannot unpack encrypted zip entries",
            ),
            (
                patch(plain.clone(), 8, 10, 12),
                "zip entry \"f\" is compressed with",
            ),
            (
                one(zip_opts().external_attributes(0o104755 << 16)),
                "setuid",
            ),
            (
                one(zip_opts().external_attributes(0o020644 << 16)),
                "device",
            ),
            (
                one(zip_opts().external_attributes(0o140755 << 16)),
                "socket",
            ),
            (
                b"PK\x03\x04 not really a zip".to_vec(),
                "the zip archive cannot be read",
            ),
        ] {
            let e = add(&store, ArchiveKind::Zip, &a, None).unwrap_err();
            assert!(e.to_string().contains(want), "{e} should say {want}");
        }
        nothing_left(dir.path());
    }

    fn unit(exec: &str) -> String {
        format!("[Unit]\nDescription=test\n\n[Service]\nType=simple\nExecStart={exec}\n\n[Install]\nWantedBy=multi-user.target\n")
    }

    #[test]
    fn a_deb_built_by_dpkg_deb_runs_its_units_exec_start_from_the_tree() {
        if Command::new("dpkg-deb").arg("--version").output().is_err() {
            eprintln!("dpkg-deb is not installed; skipped");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let pkg = src.path().join("pkg");
        let w = |rel: &str, data: &str, mode: u32| {
            let p = pkg.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        w(
            "DEBIAN/control",
            "Package: svc\nVersion: 1.4.2\nArchitecture: all\nMaintainer: Test <t@example.com>\nDescription: a test\n",
            0o644,
        );
        w("usr/bin/svc", "#!/bin/sh\necho svc\n", 0o755);
        w("etc/svc/a b.conf", "x=1\n", 0o644);
        w(
            "usr/lib/systemd/system/svc.service",
            &unit("-/usr/bin/svc --config \"/etc/svc/a b.conf\" $OPTS"),
            0o644,
        );
        // Sorted before svc.service, but not the package's own unit.
        w(
            "usr/lib/systemd/system/aaa-helper.service",
            &unit("/usr/bin/helper"),
            0o644,
        );
        w(
            "usr/lib/systemd/system/svc@.service",
            &unit("/usr/bin/svc %i"),
            0o644,
        );
        std::fs::set_permissions(&pkg, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out_deb = src.path().join("svc_1.4.2_all.deb");
        let out = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&pkg)
            .arg(&out_deb)
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg-deb: {out:?}");
        let a = std::fs::read(&out_deb).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = add(&store, ArchiveKind::Deb, &a, Some(&sha(&a))).unwrap();
        assert_eq!(s.digest, sha(&a));
        assert_eq!(s.archive_bytes, a.len() as u64);
        assert_eq!(
            s.config.entrypoint,
            [
                "/run/unitlet/image/usr/bin/svc",
                "--config",
                "/etc/svc/a b.conf",
                "$OPTS"
            ]
        );
        assert_eq!(
            ImageConfig {
                entrypoint: Vec::new(),
                ..s.config.clone()
            },
            ImageConfig::default()
        );
        assert_eq!(
            std::fs::read(s.path.join("usr/bin/svc")).unwrap(),
            b"#!/bin/sh\necho svc\n"
        );
        // Only the data archive: no control files in the tree.
        assert!(!s.path.join("DEBIAN").exists() && !s.path.join("control").exists());
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());

        let e = add(&store, ArchiveKind::Deb, &a, Some(&sha(b"other"))).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        let e = add(&store, ArchiveKind::Deb, &a[..a.len() - 1], None).unwrap_err();
        assert!(
            e.to_string().contains("ends inside its data.tar.xz member"),
            "{e}"
        );
        assert_eq!(names(&dir.path().join("tmp")), Vec::<String>::new());
    }

    #[test]
    fn a_hand_built_deb_picks_its_unit_and_rewrites_only_programs_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let aa = unit("@/opt/aa/bin/aa aa-daemon --flag");
        let zz = unit("/bin/sh -c \"exec sleep 1\"");
        let tpl = unit("/opt/aa/bin/aa %i");
        let data = tar(&[
            E::File("./opt/aa/bin/aa", SCRIPT, 0o755),
            E::File("./lib/systemd/system/zz.service", zz.as_bytes(), 0o644),
            E::File("./lib/systemd/system/aa.service", aa.as_bytes(), 0o644),
            E::File("./lib/systemd/system/aa@.service", tpl.as_bytes(), 0o644),
        ]);
        let control = compress(
            Compression::Xz,
            &tar(&[E::File("control", b"Package: other\n", 0o644)]),
        );
        let a = deb(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", &control),
            ("data.tar", &data),
            ("_gpgorigin", b"signature"),
        ]);
        let s = add(&store, ArchiveKind::Deb, &a, None).unwrap();
        // No unit named for the package: the first in sorted order.
        assert_eq!(
            s.config.entrypoint,
            ["/run/unitlet/image/opt/aa/bin/aa", "--flag"]
        );

        // A program that is not in the tree is the host's.
        let data = tar(&[E::File(
            "./usr/lib/systemd/system/zz.service",
            zz.as_bytes(),
            0o644,
        )]);
        let a = deb(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", &control_tar("zz")),
            ("data.tar.gz", &compress(Compression::Gzip, &data)),
        ]);
        let s = add(&store, ArchiveKind::Deb, &a, None).unwrap();
        assert_eq!(s.config.entrypoint, ["/bin/sh", "-c", "exec sleep 1"]);

        // No unit at all: no default command.
        let data = compress(Compression::Zstd, &tar(&[E::File("./f", b"f", 0o644)]));
        let a = deb(&[
            ("debian-binary", b"2.0\n"),
            (
                "control.tar.zst",
                &compress(
                    Compression::Zstd,
                    &tar(&[E::File("./control", b"Package: f\n", 0o644)]),
                ),
            ),
            ("data.tar.zst", &data),
        ]);
        let s = add(&store, ArchiveKind::Deb, &a, None).unwrap();
        assert_eq!(s.config, ImageConfig::default());
        for d in names(&dir.path().join("sha256")) {
            store
                .remove(&Digest::parse(&format!("sha256:{d}")).unwrap())
                .unwrap();
        }

        let ctl = control_tar("svc");
        for (a, want) in [
            (
                deb(&[("debian-binary", b"2.0\n"), ("control.tar.gz", &ctl)]),
                "the .deb has no data.tar member",
            ),
            (
                deb(&[("control.tar.gz", &ctl), ("data.tar.zst", &data)]),
                "not a Debian package: its first member is \"control.tar.gz\"",
            ),
            (
                deb(&[("debian-binary", b"3.0\n"), ("data.tar.zst", &data)]),
                "package format \"3.0\"",
            ),
            (
                deb(&[("debian-binary", b"2.0\n"), ("data.tar.bz2", b"BZh")]),
                "data.tar.bz2 member is compressed in a way unitlet does not read",
            ),
            (
                deb(&[
                    ("debian-binary", b"2.0\n"),
                    ("data.tar.zst", &data),
                    ("data.tar.zst", &data),
                ]),
                "more than one data.tar.zst member",
            ),
            (b"hello, world".to_vec(), "not a Debian package"),
            (
                deb(&[
                    ("debian-binary", b"2.0\n"),
                    ("control.tar.gz", b"not gzip"),
                    ("data.tar.zst", &data),
                ]),
                "control archive cannot be read",
            ),
        ] {
            let e = add(&store, ArchiveKind::Deb, &a, None).unwrap_err();
            assert!(e.to_string().contains(want), "{e} should say {want}");
        }
        nothing_left(dir.path());
    }

    #[test]
    fn exec_start_lines_split_as_systemd_does() {
        let ok: &[(&str, &[&str])] = &[
            ("/usr/bin/svc", &["/usr/bin/svc"]),
            (
                "  /usr/bin/svc   --a b\tc  ",
                &["/usr/bin/svc", "--a", "b", "c"],
            ),
            ("-/usr/bin/svc", &["/usr/bin/svc"]),
            ("+!!:-/usr/bin/svc x", &["/usr/bin/svc", "x"]),
            ("@/usr/bin/svc svc-name --x", &["/usr/bin/svc", "--x"]),
            ("-@/usr/bin/svc svc-name", &["/usr/bin/svc"]),
            ("\"-/usr/bin/my svc\" x", &["/usr/bin/my svc", "x"]),
            ("/bin/echo \"a b\" 'c d'", &["/bin/echo", "a b", "c d"]),
            ("/bin/echo a\"b c\"d", &["/bin/echo", "ab cd"]),
            (
                "/bin/echo \"it's\" 'say \"hi\"'",
                &["/bin/echo", "it's", "say \"hi\""],
            ),
            ("/bin/echo \"\" ''", &["/bin/echo", "", ""]),
            (
                r"/bin/echo a\tb \x41\102 \u00e9 \s",
                &["/bin/echo", "a\tb", "AB", "é", " "],
            ),
            (
                r#"/bin/echo "a\"b" 'c\'d' "\n""#,
                &["/bin/echo", "a\"b", "c'd", "\n"],
            ),
            (r"/bin/echo \\n", &["/bin/echo", "\\n"]),
            (
                "/bin/echo $HOME ${USER}x",
                &["/bin/echo", "$HOME", "${USER}x"],
            ),
            ("/bin/echo 100%% %n", &["/bin/echo", "100%", "%n"]),
            ("/bin/a x ; /bin/b y", &["/bin/a", "x"]),
            ("/bin/a x ;", &["/bin/a", "x"]),
            (
                r"/bin/find . -exec rm {} \;",
                &["/bin/find", ".", "-exec", "rm", "{}", ";"],
            ),
            ("/bin/echo a;b ';'", &["/bin/echo", "a;b", ";"]),
            ("; /bin/b", &["/bin/b"]),
        ];
        for (line, want) in ok {
            let got = exec_start_argv(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(got, *want, "{line:?}");
        }
        let bad = [
            ("", "no command"),
            ("   ", "no command"),
            ("-@", "only prefixes"),
            ("/bin/echo \"x", "unterminated"),
            ("/bin/echo 'x", "unterminated"),
            ("/bin/echo x\\", "trailing backslash"),
            (r"/bin/echo \q", "unknown escape"),
            (r"/bin/echo \x00", "NUL"),
            (r"/bin/echo \000", "NUL"),
            (r"/bin/echo \xZZ", "malformed"),
            (r"/bin/echo \ud800", "not a character"),
            (r"/bin/echo \xff", "not UTF-8"),
            ("@/bin/echo", "argv[0]"),
        ];
        for (line, want) in bad {
            let e = exec_start_argv(line).expect_err(line);
            assert!(e.contains(want), "{line:?}: {e:?} should say {want:?}");
        }
    }

    #[test]
    fn the_exec_start_in_effect_is_found_in_the_service_section() {
        let u = "[Unit]\nExecStart=/wrong\n[Service]\n# ExecStart=/commented\n; ExecStart=/too\nExecStart = /bin/a \\\n  --long \\\n# a comment inside\n  --more\n[Install]\nExecStart=/wrong2\n";
        let v = exec_start(u).unwrap();
        assert_eq!(exec_start_argv(&v).unwrap(), ["/bin/a", "--long", "--more"]);
        let reset = "[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\nExecStart=/bin/c\n";
        assert_eq!(exec_start(reset).as_deref(), Some("/bin/b"));
        assert_eq!(exec_start("[Service]\nType=oneshot\n"), None);
        assert_eq!(
            exec_start("[Service]\nExecStart=/bin/a\nExecStart=\n"),
            None
        );
        let escaped = "[Service]\nExecStart=/bin/echo a\\\\\nType=simple\n";
        assert_eq!(exec_start(escaped).as_deref(), Some("/bin/echo a\\\\"));
    }

    #[test]
    fn control_fields() {
        let c = "Source: x\nPackage: svc\nDescription: a\n multi-line\nPackage: no\n\nPackage: second\n";
        assert_eq!(control_field(c, "package").as_deref(), Some("svc"));
        assert_eq!(control_field("Version: 1\n", "Package"), None);
    }
}
