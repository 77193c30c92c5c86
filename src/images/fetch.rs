//! Fetching an artifact over HTTP(S) into the store.
//!
//! The body is unpacked while it downloads: chunks go from the connection
//! through a bounded channel to [`Store::add`] on a blocking thread, so the
//! network and the decompressor work at the same time and memory stays
//! bounded whatever the archive's size (the channel applies back-pressure
//! to the connection when unpacking falls behind). Whatever goes wrong on
//! the wire (a status, a cut connection, a short body, a stall, too many
//! bytes) is an error and never a stored tree: the unpacker only sees the
//! end of its stream when the whole body has arrived, and the store
//! commits only a verified tree.
//!
//! There is no retry here: the image manager owns back-off (it also has
//! to back off after errors that [`FetchError::is_retryable`] calls
//! permanent, as the kubelet does for `ErrImagePull`), and one place that
//! retries keeps the number of requests a node makes predictable.

use super::store::{Store, StoreError, Stored};
use super::unpack::{Limits, UnpackError};
use crate::core::image::Artifact;
use hyper::body::Bytes;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

/// A server that accepts no connection within this is as good as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A download that makes no progress for this long has stalled (a
/// total-time limit would fail large archives on slow links instead).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Release downloads redirect once or twice (GitHub: to a CDN); more is a
/// loop or a misconfiguration.
const MAX_REDIRECTS: usize = 10;
/// Chunks in flight between the connection and the unpacker. A chunk is
/// what one read of the connection gave (up to some hundred KiB), so this
/// bounds memory to a few MiB while letting the download run ahead of
/// brief unpacking stalls (a large file's `write`, a directory creation).
const CHANNEL_CHUNKS: usize = 32;
/// CA bundles as Linux distributions place them (the first present wins),
/// after `SSL_CERT_FILE`.
const CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Credentials for an artifact server (from a pull secret).
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// HTTP Basic.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

/// Never prints the secret: errors and logs carry `Debug` output.
impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            HttpAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Why an artifact was not fetched. Every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The request failed before a response: DNS, connection, TLS,
    /// redirects, or a timeout.
    #[error("GET {url}: {cause}{hint}", hint = request_hint(cause, *.connect, *.timeout))]
    Request {
        /// The URL.
        url: String,
        /// The cause, with its chain.
        cause: String,
        /// Whether it was connecting that failed.
        connect: bool,
        /// Whether it timed out.
        timeout: bool,
        /// Whether the request itself was malformed, or redirects went in
        /// a loop: not worth trying again as it is.
        permanent: bool,
    },
    /// The server answered with a status other than 2xx.
    #[error("GET {url}: {status}{hint}", hint = status_hint(*.status))]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// The body ended before the length the server announced.
    #[error("GET {url}: truncated: got {got} of {want} bytes{cause}; the connection was cut off, fetching again should complete it", cause = cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced (`Content-Length`).
        want: u64,
        /// What the connection reported, if anything.
        cause: Option<String>,
    },
    /// The body (of unknown length) broke off, or stalled past the read
    /// timeout.
    #[error("GET {url}: the download broke off after {got} bytes: {cause}")]
    Broken {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// The cause, with its chain.
        cause: String,
        /// Whether no data came for the read timeout.
        timeout: bool,
    },
    /// The archive is larger than this node accepts.
    #[error("GET {url}: the archive is over the limit of {limit} bytes ({what}); raise the limit or use a smaller archive")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
        /// How it was found out.
        what: String,
    },
    /// The archive arrived but could not be stored: a digest mismatch, a
    /// refused entry, a broken archive, or the store's disk.
    #[error("GET {url}: {source}{hint}", hint = store_hint(source))]
    Store {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

fn request_hint(cause: &str, connect: bool, timeout: bool) -> &'static str {
    if cause.contains("certificate") {
        return " (the server's certificate is not trusted here: its CA must be in the node's CA bundle, and it must name the URL's host)";
    }
    match (connect, timeout) {
        (true, true) => {
            " (no connection within 10 s: is the server up and reachable from this node?)"
        }
        (true, false) => {
            " (cannot connect: check the host name, the port and that the server is up)"
        }
        (false, true) => " (no response within 60 s)",
        (false, false) => "",
    }
}

fn status_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => " (check the pull secret's credentials for this server)",
        404 | 410 => " (check the URL: no such artifact)",
        s if s >= 500 => " (the server failed; trying again later may work)",
        _ => "",
    }
}

fn store_hint(e: &StoreError) -> &'static str {
    match e {
        StoreError::Mismatch { .. } => {
            " (the file at this URL changed since it was pinned, or the pin is wrong)"
        }
        StoreError::Unpack(UnpackError::Refused { .. }) => {
            " (the archive is refused as unsafe; it will not be unpacked)"
        }
        _ => "",
    }
}

impl FetchError {
    /// Whether trying again later may succeed: the network, the server's
    /// health or the local disk may change; a missing file, refused
    /// credentials, a wrong pin or a hostile archive will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Client(_) => false,
            FetchError::Request { permanent, .. } => !permanent,
            FetchError::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
            }
            FetchError::Truncated { .. } | FetchError::Broken { .. } => true,
            FetchError::TooLarge { .. } => false,
            FetchError::Store { source, .. } => match source {
                StoreError::Io { .. } | StoreError::Unpack(UnpackError::Write { .. }) => true,
                StoreError::Mismatch { .. } | StoreError::Unpack(_) | StoreError::Format(_) => {
                    false
                }
            },
        }
    }

    fn request(url: &str, e: reqwest::Error) -> FetchError {
        FetchError::Request {
            url: url.to_string(),
            connect: e.is_connect(),
            timeout: e.is_timeout(),
            permanent: e.is_builder() || e.is_redirect(),
            // The URL leads the message already.
            cause: chain(&e.without_url()),
        }
    }
}

/// An error and its causes, `a: b: c`, with repeats dropped: reqwest's own
/// message ("error sending request") says little, its sources say why.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

/// The innermost cause alone, where the chain would repeat what the
/// message says already ("error decoding response body: …").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// The trusted roots: the system's CA bundle (`SSL_CERT_FILE` first).
/// Without one, plain HTTP still works and HTTPS fails naming the issuer,
/// so its absence is a warning rather than a failure to start.
fn system_roots() -> rustls::RootCertStore {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(CA_BUNDLES.iter().map(std::path::PathBuf::from));
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else {
            continue;
        };
        let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        let (added, _) = roots.add_parsable_certificates(certs);
        if added > 0 {
            tracing::debug!(bundle = %path.display(), certificates = added, "trusted roots for artifacts");
            return roots;
        }
    }
    tracing::warn!(
        "no CA bundle found (install ca-certificates, or set SSL_CERT_FILE): HTTPS artifact downloads will fail"
    );
    roots
}

/// The client artifacts are fetched with: rustls with ring (the provider
/// the rest of the agent uses, so there is one crypto library in the
/// binary), the system's CA bundle, bounded connect and idle times, a few
/// redirects. Build it once and share it: it pools connections.
pub fn http_client() -> Result<reqwest::Client, FetchError> {
    client_with_roots(system_roots())
}

/// [`http_client`] trusting `roots` (the tests' own CA).
fn client_with_roots(roots: rustls::RootCertStore) -> Result<reqwest::Client, FetchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A preconfigured config is used as given: reqwest adds no ALPN, and
    // without it HTTPS servers would never be spoken to in HTTP/2.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("unitlet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(chain(&e)))
}

/// What the connection hands the unpacker.
enum Msg {
    Data(Bytes),
    /// The whole body arrived. Only this ends the unpacker's stream: a
    /// channel closed without it (the download failed or was cancelled)
    /// is an error, so no archive cut off at an entry boundary (where a
    /// plain tar looks complete) is ever taken for whole.
    End,
}

/// The body as a blocking reader, for [`Store::add`].
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download stopped before the end of the archive",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Fetches `art` into `store`, verified against its pin if it has one,
/// unpacking as it downloads; `progress` hears (bytes so far, total if
/// announced) after every chunk. A failed fetch leaves nothing behind.
pub async fn fetch_artifact(
    client: &reqwest::Client,
    art: &Artifact,
    auth: Option<&HttpAuth>,
    store: &Store,
    limits: &Limits,
    progress: Option<&(dyn Fn(u64, Option<u64>) + Send + Sync)>,
) -> Result<Stored, FetchError> {
    let url = art.url.as_str();
    let mut req = client.get(url);
    req = match auth {
        Some(HttpAuth::Basic { username, password }) => req.basic_auth(username, Some(password)),
        Some(HttpAuth::Bearer(token)) => req.bearer_auth(token),
        None => req,
    };
    let mut resp = req.send().await.map_err(|e| FetchError::request(url, e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status,
        });
    }
    let total = resp.content_length();
    let too_large = |what: String| FetchError::TooLarge {
        url: url.to_string(),
        limit: limits.max_bytes,
        what,
    };
    if let Some(n) = total.filter(|n| *n > limits.max_bytes) {
        return Err(too_large(format!("the server announces {n}")));
    }

    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let unpack = {
        let store = store.clone();
        let (kind, want, limits) = (art.kind, art.digest.clone(), *limits);
        tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                cur: Bytes::new(),
                ended: false,
            };
            store.add(kind, reader, want.as_ref(), &limits)
        })
    };

    let mut got = 0u64;
    let downloaded: Result<(), FetchError> = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                got += chunk.len() as u64;
                if got > limits.max_bytes {
                    break Err(too_large(format!(
                        "{got} bytes arrived and more were coming"
                    )));
                }
                if let Some(p) = progress {
                    p(got, total);
                }
                if tx.send(Msg::Data(chunk)).await.is_err() {
                    // The unpacker gave up; its error says why.
                    break Ok(());
                }
            }
            Ok(None) => match total {
                Some(want) if got < want => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got,
                        want,
                        cause: None,
                    })
                }
                _ => {
                    let _ = tx.send(Msg::End).await;
                    break Ok(());
                }
            },
            Err(e) => {
                break Err(match total {
                    Some(want) if got < want && !e.is_timeout() => FetchError::Truncated {
                        url: url.to_string(),
                        got,
                        want,
                        cause: Some(root_cause(&e)),
                    },
                    _ => FetchError::Broken {
                        url: url.to_string(),
                        got,
                        timeout: e.is_timeout(),
                        cause: chain(&e.without_url()),
                    },
                })
            }
        }
    };
    // Closing the channel without `End` fails the unpack; waiting for it
    // means the staging tree is gone before the caller hears of the error.
    drop(tx);
    let stored = match unpack.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Io {
            path: store.root().to_path_buf(),
            source: io::Error::other(format!("the unpacking task was cancelled: {e}")),
        }),
    };
    // A download error comes first: the unpacker's error is then only its
    // consequence ("the archive cannot be read").
    downloaded?;
    stored.map_err(|source| FetchError::Store {
        url: url.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::image::{ArchiveKind, Digest};
    use std::sync::atomic::{AtomicU64, Ordering};
    use unitlet_test_support::artifacts::{self, ArtifactServer, RequiredAuth};

    const SVC: &[u8] = b"#!/bin/sh\necho svc\n";

    fn archive() -> Vec<u8> {
        artifacts::tar_gz(&[("svc/bin/svc", SVC), ("svc/share/big", &vec![7u8; 300_000])])
    }

    fn artifact(url: String, pin: Option<&[u8]>) -> Artifact {
        Artifact {
            url,
            kind: ArchiveKind::TarGz,
            digest: pin.map(|a| Digest::parse(&artifacts::sha256(a)).unwrap()),
        }
    }

    /// A fresh store; and what it holds (trees, leftovers in tmp).
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    fn contents(dir: &tempfile::TempDir) -> (usize, usize) {
        let n = |d: &str| std::fs::read_dir(dir.path().join(d)).unwrap().count();
        (n("sha256"), n("tmp"))
    }

    async fn fetch(
        art: &Artifact,
        auth: Option<&HttpAuth>,
        store: &Store,
    ) -> Result<Stored, FetchError> {
        fetch_artifact(
            &http_client().unwrap(),
            art,
            auth,
            store,
            &Limits::default(),
            None,
        )
        .await
    }

    #[tokio::test]
    async fn a_pinned_tar_gz_is_downloaded_once_unpacked_and_reported() {
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/svc.tar.gz", a.clone());
        let (dir, store) = store();
        let art = artifact(srv.url("/svc.tar.gz"), Some(&a));
        let last = AtomicU64::new(0);
        let total = AtomicU64::new(0);
        let progress = |n: u64, t: Option<u64>| {
            last.store(n, Ordering::Relaxed);
            total.store(t.unwrap_or(0), Ordering::Relaxed);
        };
        let s = fetch_artifact(
            &http_client().unwrap(),
            &art,
            None,
            &store,
            &Limits::default(),
            Some(&progress),
        )
        .await
        .unwrap();
        assert_eq!(Some(&s.digest), art.digest.as_ref());
        assert_eq!(s.archive_bytes, a.len() as u64);
        assert_eq!(std::fs::read(s.path.join("svc/bin/svc")).unwrap(), SVC);
        assert_eq!(store.get(&s.digest), Some(s.path.clone()));
        assert_eq!(srv.requests("/svc.tar.gz"), 1);
        assert_eq!(last.load(Ordering::Relaxed), a.len() as u64);
        assert_eq!(total.load(Ordering::Relaxed), a.len() as u64);
        assert_eq!(contents(&dir), (1, 0));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_plain_tar_unpinned_works_on_a_single_threaded_runtime() {
        let srv = ArtifactServer::start();
        srv.put("/svc.tar", artifacts::tar(&[("bin/svc", SVC)]));
        let (dir, store) = store();
        let mut art = artifact(srv.url("/svc.tar"), None);
        art.kind = ArchiveKind::Tar;
        let s = fetch(&art, None, &store).await.unwrap();
        assert_eq!(std::fs::read(s.path.join("bin/svc")).unwrap(), SVC);
        assert_eq!(contents(&dir), (1, 0));
    }

    #[tokio::test]
    async fn statuses_name_the_url_and_say_whether_to_retry() {
        let srv = ArtifactServer::start();
        let (dir, store) = store();
        let e = fetch(&artifact(srv.url("/svc.tar.gz"), None), None, &store)
            .await
            .unwrap_err();
        let url = srv.url("/svc.tar.gz");
        assert!(
            e.to_string()
                .starts_with(&format!("GET {url}: 404 Not Found")),
            "{e}"
        );
        assert!(!e.is_retryable());
        srv.put("/svc.tar.gz", archive());
        srv.set_status("/svc.tar.gz", 500);
        let e = fetch(&artifact(url.clone(), None), None, &store)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("500 Internal Server Error"), "{e}");
        assert!(e.is_retryable());
        assert_eq!(srv.requests("/svc.tar.gz"), 2, "no retry inside");
        assert_eq!(contents(&dir), (0, 0));
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error_and_stores_nothing() {
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/svc.tar.gz", a.clone());
        srv.truncate_after("/svc.tar.gz", a.len() as u64 / 2);
        let (dir, store) = store();
        let e = fetch(&artifact(srv.url("/svc.tar.gz"), None), None, &store)
            .await
            .unwrap_err();
        let want = format!("truncated: got {} of {} bytes", a.len() / 2, a.len());
        assert!(e.to_string().contains(&want), "{e}");
        assert!(e.to_string().contains(&srv.url("/svc.tar.gz")), "{e}");
        assert!(e.is_retryable());
        assert_eq!(contents(&dir), (0, 0));

        // A plain tar cut exactly at an entry boundary reads as a complete
        // archive to tar; it must fail all the same.
        let t = artifacts::tar(&[("a", &[1u8; 512]), ("b", &[2u8; 512])]);
        srv.put("/cut.tar", t.clone());
        srv.truncate_after("/cut.tar", 1024);
        let mut art = artifact(srv.url("/cut.tar"), None);
        art.kind = ArchiveKind::Tar;
        let e = fetch(&art, None, &store).await.unwrap_err();
        assert!(e.to_string().contains("truncated: got 1024 of"), "{e}");
        assert_eq!(contents(&dir), (0, 0));
    }

    #[tokio::test]
    async fn a_dead_port_is_a_retryable_connection_error() {
        let (_dir, store) = store();
        let url = artifacts::dead_url("/svc.tar.gz");
        let e = fetch(&artifact(url.clone(), None), None, &store)
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with(&format!("GET {url}: ")), "{m}");
        assert!(m.contains("cannot connect"), "{m}");
        assert!(e.is_retryable());
    }

    #[tokio::test]
    async fn basic_and_bearer_credentials_are_sent_when_given() {
        let srv = ArtifactServer::start();
        srv.put("/svc.tar.gz", archive());
        let (_dir, store) = store();
        let art = artifact(srv.url("/svc.tar.gz"), None);
        srv.require_auth(Some(RequiredAuth::Basic {
            username: "u".into(),
            password: "s3cret".into(),
        }));
        let e = fetch(&art, None, &store).await.unwrap_err();
        assert!(e.to_string().contains("401 Unauthorized"), "{e}");
        assert!(e.to_string().contains("pull secret"), "{e}");
        assert!(!e.is_retryable());
        let wrong = HttpAuth::Basic {
            username: "u".into(),
            password: "nope".into(),
        };
        assert!(fetch(&art, Some(&wrong), &store).await.is_err());
        let right = HttpAuth::Basic {
            username: "u".into(),
            password: "s3cret".into(),
        };
        fetch(&art, Some(&right), &store).await.unwrap();
        assert!(!format!("{right:?}").contains("s3cret"));

        srv.require_auth(Some(RequiredAuth::Bearer("tok".into())));
        let e = fetch(&art, Some(&right), &store).await.unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
        fetch(&art, Some(&HttpAuth::Bearer("tok".into())), &store)
            .await
            .unwrap();
        assert_eq!(srv.requests("/svc.tar.gz"), 5);
    }

    #[tokio::test]
    async fn a_pin_that_does_not_match_stores_nothing() {
        let srv = ArtifactServer::start();
        srv.put("/svc.tar.gz", archive());
        let (dir, store) = store();
        let art = artifact(srv.url("/svc.tar.gz"), Some(b"another archive"));
        let e = fetch(&art, None, &store).await.unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(e.to_string().contains(&srv.url("/svc.tar.gz")), "{e}");
        assert!(!e.is_retryable());
        assert_eq!(contents(&dir), (0, 0));
    }

    #[tokio::test]
    async fn a_hostile_archive_is_refused_for_good() {
        let srv = ArtifactServer::start();
        let mut evil = Vec::new();
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        evil.extend_from_slice(h.as_bytes());
        evil.extend_from_slice(&[0; 1024]);
        srv.put("/evil.tar", evil);
        let (dir, store) = store();
        let mut art = artifact(srv.url("/evil.tar"), None);
        art.kind = ArchiveKind::Tar;
        let e = fetch(&art, None, &store).await.unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        assert!(!e.is_retryable());
        assert_eq!(contents(&dir), (0, 0));
    }

    #[tokio::test]
    async fn redirects_are_followed() {
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/cdn/svc.tar.gz", a.clone());
        srv.redirect("/releases/svc.tar.gz", 302, &srv.url("/cdn/svc.tar.gz"));
        let (_dir, store) = store();
        let s = fetch(
            &artifact(srv.url("/releases/svc.tar.gz"), Some(&a)),
            None,
            &store,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(s.path.join("svc/bin/svc")).unwrap(), SVC);
        assert_eq!(srv.requests("/releases/svc.tar.gz"), 1);
        assert_eq!(srv.requests("/cdn/svc.tar.gz"), 1);

        srv.redirect("/loop.tar.gz", 302, &srv.url("/loop.tar.gz"));
        let e = fetch(&artifact(srv.url("/loop.tar.gz"), None), None, &store)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("redirect"), "{e}");
        assert!(!e.is_retryable());
    }

    #[tokio::test]
    async fn https_needs_a_trusted_certificate() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/svc.tar.gz", a.clone());
        // TLS in front of the plain server.
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = srv.addr();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        let (dir, store) = store();
        let art = artifact(format!("https://127.0.0.1:{port}/svc.tar.gz"), Some(&a));

        let e = fetch(&art, None, &store).await.unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        assert!(e.to_string().contains("CA bundle"), "{e}");
        assert_eq!(srv.requests("/svc.tar.gz"), 0);

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = client_with_roots(roots).unwrap();
        let s = fetch_artifact(&client, &art, None, &store, &Limits::default(), None)
            .await
            .unwrap();
        assert_eq!(std::fs::read(s.path.join("svc/bin/svc")).unwrap(), SVC);
        assert_eq!(contents(&dir), (1, 0));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_off() {
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/svc.tar.gz", a.clone());
        let (dir, store) = store();
        let limits = Limits {
            max_bytes: a.len() as u64 - 1,
            max_entries: 100,
        };
        let e = fetch_artifact(
            &http_client().unwrap(),
            &artifact(srv.url("/svc.tar.gz"), None),
            None,
            &store,
            &limits,
            None,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        assert!(!e.is_retryable());
        assert_eq!(contents(&dir), (0, 0));
    }

    #[tokio::test]
    async fn a_stalled_download_unblocks_the_unpacker_when_cancelled() {
        // The caller gives up (a timeout, the pod deleted): the unpacker
        // must not wait forever nor leave its staging tree.
        let srv = ArtifactServer::start();
        let a = archive();
        srv.put("/svc.tar.gz", a.clone());
        srv.throttle("/svc.tar.gz", 100);
        let (dir, store) = store();
        let art = artifact(srv.url("/svc.tar.gz"), None);
        let r = tokio::time::timeout(Duration::from_millis(300), fetch(&art, None, &store)).await;
        assert!(r.is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while contents(&dir) != (0, 0) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(contents(&dir), (0, 0));
    }
}
