//! Pulling OCI images from a registry into the content-addressed store.
//!
//! An image is stored under the digest its reference names (the image
//! index's for a multi-platform image, as the kubelet reports `imageID`),
//! as its root file system: the node's platform picked from an index, each
//! layer streamed from the registry through a hash and a decompressor into
//! [`unpack_layer`], in order, in a private staging tree. Only when every
//! layer's digest matched the manifest is the tree committed, so a
//! tampered or truncated blob leaves nothing behind. The image config
//! (entrypoint, command, environment, working directory, user resolved
//! against the image's own `/etc/passwd`) is kept as JSON beside the tree,
//! in `<store>/oci-config/<hex>.json`, so that the tree stays exactly the
//! image's root and a second pull reads it without asking the registry
//! for more than the manifest.
//!
//! Registries are reached over HTTPS. Loopback registries (`localhost`,
//! `127.0.0.0/8`, `[::1]`) and those the node lists as insecure are tried
//! over HTTPS without certificate checks first and over plain HTTP when
//! they do not speak TLS, as Docker and containerd do; for the others a
//! plain-HTTP registry is an error saying so. Credentials come from the
//! pod's `kubernetes.io/dockerconfigjson` pull secrets, looked up as the
//! kubelet looks them up ([`RegistryAuth::from_dockerconfigjson`]).

use super::store::{Store, StoreError};
use super::unpack::{unpack_layer, Limits, UnpackError, Unpacked};
use crate::core::image::{Digest, ImageConfig, OciRef};
use futures_util::StreamExt;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth as ClientAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Credentials

/// Registry credentials from a pod's image pull secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The user name.
    pub username: String,
    /// The password (or token).
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    /// Never the password: these end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A pull secret that is not a valid `.dockerconfigjson`.
#[derive(Debug, thiserror::Error)]
#[error("image pull secret #{index} is not a valid .dockerconfigjson: {why}")]
pub struct AuthError {
    /// Which secret (0-based, in the order given).
    pub index: usize,
    /// What is wrong with it.
    pub why: String,
}

#[derive(serde::Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
}

#[derive(serde::Deserialize)]
struct DockerConfigEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// The kubelet's Docker Hub key: credentials under `index.docker.io` (or
/// `https://index.docker.io/v1/`, `docker login`'s) serve every Docker Hub
/// image no other key matched.
const DOCKER_HUB_KEY: &str = "index.docker.io";

impl RegistryAuth {
    /// The credentials the kubelet would use first for `image`: the
    /// image's registry, optionally followed by its repository path
    /// (`registry/repository`, as [`OciRef`] gives them; the kubelet
    /// matches keys with a path against it), looked up in the `auths` maps
    /// of `secrets` (each a `.dockerconfigjson` payload).
    ///
    /// As the kubelet's keyring: a key may carry a scheme and a path
    /// (`https://index.docker.io/v1/`; `/v1/` and `/v2/` mean no path); it
    /// matches when the hosts match label by label (`*` and `?` globs in
    /// a key's labels), the ports are equal, and the key's path is a
    /// prefix of the image's. Of several matches, the lexically greatest
    /// key wins (the most specific path), then the earliest secret. Docker
    /// Hub images with no match use the `index.docker.io` key. `auth`
    /// (base64 `user:password`) wins over `username` and `password`.
    pub fn from_dockerconfigjson(
        secrets: &[Vec<u8>],
        image: &str,
    ) -> Result<Option<RegistryAuth>, AuthError> {
        let mut keyed: Vec<(String, usize, RegistryAuth)> = Vec::new();
        for (index, raw) in secrets.iter().enumerate() {
            let bad = |why: String| AuthError { index, why };
            let cfg: DockerConfigJson =
                serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
            for (key, entry) in cfg.auths {
                let auth = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
                    Some(a) => {
                        let plain = base64_decode(a)
                            .and_then(|b| String::from_utf8(b).ok())
                            .ok_or_else(|| bad(format!("the auth of {key:?} is not base64")))?;
                        let (u, p) = plain.split_once(':').ok_or_else(|| {
                            bad(format!("the auth of {key:?} is not user:password"))
                        })?;
                        RegistryAuth {
                            username: u.to_string(),
                            password: p.to_string(),
                        }
                    }
                    None => RegistryAuth {
                        username: entry.username.unwrap_or_default(),
                        password: entry.password.unwrap_or_default(),
                    },
                };
                keyed.push((normalise_key(&key), index, auth));
            }
        }
        // Reverse lexical order of keys; stable, so secrets keep theirs.
        keyed.sort_by(|a, b| b.0.cmp(&a.0));
        if let Some((_, _, auth)) = keyed.iter().find(|(k, _, _)| url_matches(k, image)) {
            return Ok(Some(auth.clone()));
        }
        if is_docker_hub(image) {
            if let Some((_, _, auth)) = keyed.iter().find(|(k, _, _)| k == DOCKER_HUB_KEY) {
                return Ok(Some(auth.clone()));
            }
        }
        Ok(None)
    }

    /// [`Self::from_dockerconfigjson`] for an image reference.
    pub fn for_image(secrets: &[Vec<u8>], r: &OciRef) -> Result<Option<RegistryAuth>, AuthError> {
        Self::from_dockerconfigjson(secrets, &format!("{}/{}", r.registry, r.repository))
    }
}

/// A key as the kubelet keeps it: no scheme, `host` or `host/path`.
fn normalise_key(key: &str) -> String {
    let (host, path) = split_url(key);
    let path = match path.get(..4) {
        Some("/v1/" | "/v2/") => &path[3..],
        _ => path,
    };
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

/// `(host[:port], /path)` of a URL with or without a scheme.
fn split_url(s: &str) -> (&str, &str) {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// `(host, port)`; brackets of an IPv6 literal dropped.
fn split_host_port(hp: &str) -> (&str, &str) {
    if let Some(rest) = hp.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h, after.strip_prefix(':').unwrap_or(""));
        }
    }
    match hp.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p),
        _ => (hp, ""),
    }
}

/// The kubelet's `URLsMatchStr`: does key `glob` cover `target`?
fn url_matches(glob: &str, target: &str) -> bool {
    let (ghp, gpath) = split_url(glob);
    let (thp, tpath) = split_url(target);
    let (ghost, gport) = split_host_port(ghp);
    let (thost, tport) = split_host_port(thp);
    if gport != tport {
        return false;
    }
    let gparts: Vec<&str> = ghost.split('.').collect();
    let tparts: Vec<&str> = thost.split('.').collect();
    gparts.len() == tparts.len()
        && gparts
            .iter()
            .zip(&tparts)
            .all(|(g, t)| glob_match(g.as_bytes(), t.as_bytes()))
        && tpath.starts_with(gpath)
}

/// `*` (any run) and `?` (any one byte); everything else literal
/// (character classes, which no registry name needs, included).
fn glob_match(g: &[u8], t: &[u8]) -> bool {
    match g.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| glob_match(rest, &t[i..])),
        Some((b'?', rest)) => !t.is_empty() && glob_match(rest, &t[1..]),
        Some((c, rest)) => t.first() == Some(c) && glob_match(rest, &t[1..]),
    }
}

/// The kubelet's `isDefaultRegistryMatch`.
fn is_docker_hub(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some((first, _)) => {
            first == "docker.io"
                || first == DOCKER_HUB_KEY
                || (!first.is_empty() && !first.contains(['.', ':']))
        }
    }
}

/// Standard base64, padding optional (docker config files are written
/// both ways).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

// ---------------------------------------------------------------------------
// Errors

/// Why an image could not be pulled: the container's `ErrImagePull`
/// message.
#[derive(Debug, thiserror::Error)]
#[error("failed to pull image \"{image}\": {cause}")]
pub struct PullError {
    /// The image, fully qualified.
    pub image: String,
    /// Why.
    pub cause: Box<PullFailure>,
}

/// The cause of a [`PullError`].
#[derive(Debug, thiserror::Error)]
pub enum PullFailure {
    /// The registry has no such repository, tag or digest.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused the credentials, or asked for some.
    #[error("unauthorized: {0} (check the pod's imagePullSecrets)")]
    Unauthorized(String),
    /// The registry could not be reached.
    #[error("cannot reach registry {registry}: {detail}")]
    Connect {
        /// The registry.
        registry: String,
        /// What the connection said.
        detail: String,
    },
    /// The registry speaks plain HTTP, which only loopback and insecure
    /// registries may.
    #[error("registry {registry} does not speak TLS ({detail}); plain HTTP is used only for loopback registries and those the node lists as insecure")]
    TlsRequired {
        /// The registry.
        registry: String,
        /// The TLS error.
        detail: String,
    },
    /// The TLS handshake failed (an untrusted certificate, say).
    #[error("TLS with registry {registry} failed: {detail}")]
    Tls {
        /// The registry.
        registry: String,
        /// The TLS error.
        detail: String,
    },
    /// The image index has no image for this node.
    #[error("no image for this node's platform {want}; the index has {available}")]
    PlatformNotFound {
        /// The node's platform.
        want: String,
        /// The platforms the index has.
        available: String,
    },
    /// A blob is not what its digest says.
    #[error("digest mismatch: {blob} arrived as {got}")]
    DigestMismatch {
        /// Which blob (`layer sha256:…`, `config sha256:…`, `manifest …`).
        blob: String,
        /// What arrived (a digest, or how it differs).
        got: String,
    },
    /// A layer in a format this node does not unpack.
    #[error("layer {layer} has media type {media_type:?}; this node unpacks tar, tar+gzip and tar+zstd layers")]
    UnsupportedLayer {
        /// The layer's digest.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// The manifest is not a container image's (a Helm chart, say).
    #[error("not a container image: its config has media type {0:?}")]
    NotAnImage(String),
    /// A blob's download broke off.
    #[error("downloading {blob}: {detail}")]
    Download {
        /// Which blob.
        blob: String,
        /// The cause.
        detail: String,
    },
    /// A layer could not be applied.
    #[error("layer {layer}: {source}")]
    Unpack {
        /// The layer's digest.
        layer: String,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// The image config is not valid.
    #[error("the image config is invalid: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Any other registry error.
    #[error("registry error: {0}")]
    Registry(String),
    /// The HTTP client could not be set up.
    #[error("cannot set up the registry client: {0}")]
    Client(String),
}

/// The error message and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// An error and all its causes, through `source()` and into the errors
/// `io::Error`s wrap (whose `source()` skips them: the TLS error of a
/// failed handshake sits two `io::Error`s deep in hyper's).
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(c) = next {
        out.push(c);
        if out.len() > 32 {
            break;
        }
        next = match c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    out
}

/// What a failed request says, in the terms a user acts on. `tls_only`:
/// plain HTTP was not an option for this registry.
fn classify(registry: &str, e: OciDistributionError, tls_only: bool) -> PullFailure {
    use OciDistributionError as E;
    match e {
        E::RegistryError { envelope, .. } => {
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let has =
                |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
            if has(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
                OciErrorCode::BlobUnknown,
                OciErrorCode::ManifestBlobUnknown,
            ]) {
                PullFailure::NotFound(text)
            } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                PullFailure::Unauthorized(text)
            } else {
                PullFailure::Registry(text)
            }
        }
        E::UnauthorizedError { url } => {
            PullFailure::Unauthorized(format!("the registry answered 401 for {url}"))
        }
        E::AuthenticationFailure(why) => PullFailure::Unauthorized(why),
        E::ServerError { code: 404, url, .. } => PullFailure::NotFound(format!("404 for {url}")),
        E::ServerError {
            code: code @ (401 | 403),
            url,
            ..
        } => PullFailure::Unauthorized(format!("{code} for {url}")),
        E::ImageManifestNotFoundError(why) => PullFailure::NotFound(why),
        E::DigestError(d) => PullFailure::DigestMismatch {
            blob: "manifest".into(),
            got: d.to_string(),
        },
        E::RequestError(re) => {
            let detail = chain(&re);
            for c in causes(&re) {
                if let Some(io) = c.downcast_ref::<io::Error>() {
                    if io.kind() == io::ErrorKind::ConnectionRefused {
                        return PullFailure::Connect {
                            registry: registry.into(),
                            detail: "connection refused".into(),
                        };
                    }
                }
                if let Some(tls) = c.downcast_ref::<tokio_rustls::rustls::Error>() {
                    use tokio_rustls::rustls::{Error as T, InvalidMessage};
                    return match tls {
                        // A plain-HTTP answer to the TLS hello.
                        T::InvalidMessage(InvalidMessage::InvalidContentType) if tls_only => {
                            PullFailure::TlsRequired {
                                registry: registry.into(),
                                detail: tls.to_string(),
                            }
                        }
                        _ => PullFailure::Tls {
                            registry: registry.into(),
                            detail: tls.to_string(),
                        },
                    };
                }
            }
            if re.is_connect() || re.is_timeout() {
                PullFailure::Connect {
                    registry: registry.into(),
                    detail,
                }
            } else {
                PullFailure::Registry(detail)
            }
        }
        other => PullFailure::Registry(chain(&other)),
    }
}

/// Whether a failure happened before any HTTP exchange (refused, reset,
/// no TLS): what makes a plain-HTTP retry worth it.
fn is_transport(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(re) if re.is_connect())
}

// ---------------------------------------------------------------------------
// The puller

/// An OCI image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledOci {
    /// The digest the reference named when pulled (an index's for a
    /// multi-platform image): the store key.
    pub manifest_digest: Digest,
    /// The image config's digest (the image ID `crictl images` shows).
    pub config_digest: Digest,
    /// `registry/repository@manifest_digest`, the container's `imageID`.
    pub id: String,
    /// The root file system in the store.
    pub root: PathBuf,
    /// How to run it.
    pub config: ImageConfig,
    /// Bytes of the (compressed) layers, as the registry holds them.
    pub size: u64,
    /// Whether layers were downloaded (false: the store had it).
    pub downloaded: bool,
}

/// What is saved beside a tree.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    config_digest: String,
    size: u64,
    config: ImageConfig,
}

/// One client per way of reaching a registry. Clients keep credentials
/// and tokens per registry once given, so the shared set only ever pulls
/// anonymously; a pull with credentials gets a set of its own, and one
/// pod's secret never serves another pod's pull. Each is the client or why
/// it could not be made: a machine without CA certificates cannot verify
/// TLS, but still pulls from loopback and insecure registries (and the
/// agent still starts).
#[derive(Clone)]
struct Clients {
    verified: Result<Client, String>,
    unverified: Result<Client, String>,
    plain: Result<Client, String>,
}

impl Clients {
    fn new() -> Clients {
        let make = |protocol: ClientProtocol, accept_invalid_certificates: bool| {
            // oci-client 0.18 builds a default reqwest client inside
            // `try_from`, which panics on a machine without CA
            // certificates; that must not take the agent down.
            let made = std::panic::catch_unwind(|| {
                Client::try_from(ClientConfig {
                    protocol,
                    accept_invalid_certificates,
                    platform_resolver: None,
                    connect_timeout: Some(Duration::from_secs(30)),
                    read_timeout: Some(Duration::from_secs(120)),
                    user_agent: concat!("unitlet/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                })
            });
            match made {
                Ok(c) => c.map_err(|e| chain(&e)),
                Err(_) => Err("cannot make an HTTPS client: no CA certificates on this machine (install ca-certificates)".to_string()),
            }
        };
        Clients {
            verified: make(ClientProtocol::Https, false),
            unverified: make(ClientProtocol::Https, true),
            plain: make(ClientProtocol::Http, false),
        }
    }
}

/// The node's platform, as image indexes name platforms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Platform {
    arch: &'static str,
    /// Acceptable variants, best first (`None`: no variant given).
    variants: &'static [Option<&'static str>],
}

/// The OCI (Go) name of a Rust target architecture.
pub fn oci_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        other => other,
    }
}

impl Platform {
    fn node() -> Platform {
        let arch = oci_arch(std::env::consts::ARCH);
        let variants: &'static [Option<&'static str>] = match arch {
            "arm64" => &[Some("v8"), None],
            "arm" => &[Some("v7"), Some("v6"), Some("v5"), None],
            "amd64" => &[None, Some("v1")],
            _ => &[None],
        };
        Platform { arch, variants }
    }

    /// The best entry of an index for this platform.
    fn pick<'a>(&self, entries: &'a [ImageIndexEntry]) -> Option<&'a ImageIndexEntry> {
        entries
            .iter()
            .filter_map(|e| {
                let p = e.platform.as_ref()?;
                if p.os.to_string() != "linux" || p.architecture.to_string() != self.arch {
                    return None;
                }
                let rank = self
                    .variants
                    .iter()
                    .position(|v| *v == p.variant.as_deref())?;
                Some((rank, e))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, e)| e)
    }

    /// The platforms an index offers, for the error when none fits.
    fn offered(entries: &[ImageIndexEntry]) -> String {
        let list: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .filter(|p| p.os.to_string() != "unknown")
            .map(|p| {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .collect();
        if list.is_empty() {
            "no platforms".into()
        } else {
            list.join(", ")
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.arch)?;
        if let Some(Some(v)) = self.variants.first() {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Whether `registry` (`host[:port]`) is on this machine's loopback.
fn is_loopback(registry: &str) -> bool {
    let (host, _) = split_host_port(registry);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The media types of layers, by compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression_of(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

const CONFIG_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The largest image config read: real ones are a few KiB (a long
/// history makes tens).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Pulls OCI images into a [`Store`].
pub struct OciPuller {
    insecure: Vec<String>,
    platform: Platform,
    anonymous: Clients,
}

impl std::fmt::Debug for OciPuller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciPuller")
            .field("insecure", &self.insecure)
            .field("platform", &self.platform.to_string())
            .finish_non_exhaustive()
    }
}

/// The ring provider for rustls, as the rest of the agent uses, installed
/// as the process default because reqwest (built without a provider of
/// its own) builds its TLS configs from the default. Idempotent: another
/// part of the agent may have installed it first.
fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

impl OciPuller {
    /// A puller for this node's platform; `insecure` lists registries
    /// (`host[:port]`, as images name them) that may be reached without
    /// TLS or with certificates that do not verify.
    pub fn new(insecure: Vec<String>) -> Result<OciPuller, PullFailure> {
        install_crypto_provider();
        Ok(OciPuller {
            insecure,
            platform: Platform::node(),
            anonymous: Clients::new(),
        })
    }

    /// The platform images are picked for (`linux/amd64`).
    pub fn platform(&self) -> String {
        self.platform.to_string()
    }

    fn err(r: &OciRef, cause: PullFailure) -> PullError {
        PullError {
            image: r.to_string(),
            cause: Box::new(cause),
        }
    }

    /// The clients to try for a registry, in order, and whether plain
    /// HTTP is among them.
    fn candidates(
        &self,
        r: &OciRef,
        auth: Option<&RegistryAuth>,
    ) -> Result<(Vec<Client>, ClientAuth), PullError> {
        let clients = match auth {
            None => self.anonymous.clone(),
            Some(_) => Clients::new(),
        };
        let client_auth = match auth {
            None => ClientAuth::Anonymous,
            Some(a) => ClientAuth::Basic(a.username.clone(), a.password.clone()),
        };
        let lax = is_loopback(&r.registry) || self.insecure.contains(&r.registry);
        let list = if lax {
            vec![clients.unverified, clients.plain]
        } else {
            vec![clients.verified]
        };
        let usable: Vec<Client> = list
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        if usable.is_empty() {
            let why = list.into_iter().find_map(|c| c.err()).unwrap_or_default();
            return Err(Self::err(r, PullFailure::Client(why)));
        }
        let list = usable;
        Ok((list, client_auth))
    }

    /// Runs `op` with the first client that gets an HTTP answer, returning
    /// which one did.
    async fn first_reachable<T, F, Fut>(
        r: &OciRef,
        clients: &[Client],
        op: F,
    ) -> Result<(usize, T), PullError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut i = 0;
        loop {
            match op(clients[i].clone()).await {
                Ok(v) => return Ok((i, v)),
                Err(e) if i + 1 < clients.len() && is_transport(&e) => i += 1,
                Err(e) => {
                    return Err(Self::err(r, classify(&r.registry, e, clients.len() == 1)));
                }
            }
        }
    }

    fn reference(r: &OciRef) -> Reference {
        match (&r.tag, &r.digest) {
            (_, Some(d)) => {
                Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string())
            }
            (Some(t), None) => {
                Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => {
                Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into())
            }
        }
    }

    /// The digest `r` names now: its pin, or what the registry says its
    /// tag is (one `HEAD` of the manifest, nothing downloaded), to tell
    /// whether a stored image is current (`imagePullPolicy: Always`).
    pub async fn resolve(
        &self,
        r: &OciRef,
        auth: Option<&RegistryAuth>,
    ) -> Result<Digest, PullError> {
        if let Some(d) = &r.digest {
            return Ok(d.clone());
        }
        let reference = Self::reference(r);
        let (clients, cauth) = self.candidates(r, auth)?;
        let (_, digest) = Self::first_reachable(r, &clients, |c| {
            let (reference, cauth) = (&reference, &cauth);
            async move { c.fetch_manifest_digest(reference, cauth).await }
        })
        .await?;
        Digest::parse(&digest).ok_or_else(|| {
            Self::err(
                r,
                PullFailure::Registry(format!("the manifest digest {digest:?} is not sha256")),
            )
        })
    }

    /// The image `digest` names, if the store has it with its config.
    pub fn stored(&self, store: &Store, r: &OciRef, digest: &Digest) -> Option<PulledOci> {
        let root = store.get(digest)?;
        let raw = std::fs::read(config_path(store, digest)).ok()?;
        let saved: Saved = serde_json::from_slice(&raw).ok()?;
        Some(PulledOci {
            manifest_digest: digest.clone(),
            config_digest: Digest::parse(&saved.config_digest)?,
            id: format!("{}/{}@{digest}", r.registry, r.repository),
            root,
            config: saved.config,
            size: saved.size,
            downloaded: false,
        })
    }

    /// Pulls `r` into `store` unless it is there: the manifest is always
    /// asked for (a tag may have moved), layers only when the store lacks
    /// the image. `limits` bound the unpacked image, all layers together.
    pub async fn pull(
        &self,
        store: &Store,
        r: &OciRef,
        auth: Option<&RegistryAuth>,
        limits: &Limits,
    ) -> Result<PulledOci, PullError> {
        let err = |cause| Self::err(r, cause);
        let reference = Self::reference(r);
        let (clients, cauth) = self.candidates(r, auth)?;
        let (which, (manifest, digest)) = Self::first_reachable(r, &clients, |c| {
            let (reference, cauth) = (&reference, &cauth);
            async move { c.pull_manifest(reference, cauth).await }
        })
        .await?;
        let client = &clients[which];
        let tls_only = clients.len() == 1;
        let oci_err = |e| err(classify(&r.registry, e, tls_only));
        let manifest_digest = Digest::parse(&digest).ok_or_else(|| {
            err(PullFailure::Registry(format!(
                "the manifest digest {digest:?} is not sha256"
            )))
        })?;
        if let Some(p) = self.stored(store, r, &manifest_digest) {
            return Ok(p);
        }
        let image: OciImageManifest = match manifest {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let entry = self.platform.pick(&index.manifests).ok_or_else(|| {
                    err(PullFailure::PlatformNotFound {
                        want: self.platform.to_string(),
                        available: Platform::offered(&index.manifests),
                    })
                })?;
                let (m, _) = client
                    .pull_manifest(&reference.clone_with_digest(entry.digest.clone()), &cauth)
                    .await
                    .map_err(oci_err)?;
                match m {
                    OciManifest::Image(m) => m,
                    OciManifest::ImageIndex(_) => {
                        return Err(err(PullFailure::Registry(format!(
                            "the index entry {} is an index itself",
                            entry.digest
                        ))))
                    }
                }
            }
        };
        let config_type = image.config.media_type.as_str();
        if !CONFIG_MEDIA_TYPES.contains(&config_type) {
            return Err(err(PullFailure::NotAnImage(config_type.to_string())));
        }
        // Every layer's format is known before anything is downloaded.
        let mut layers = Vec::new();
        for l in &image.layers {
            let c = compression_of(&l.media_type).ok_or_else(|| {
                err(PullFailure::UnsupportedLayer {
                    layer: l.digest.clone(),
                    media_type: l.media_type.clone(),
                })
            })?;
            layers.push((l, c));
        }
        let (config_digest, raw_config) = fetch_config(client, &reference, &image.config)
            .await
            .map_err(|e| match e {
                Fetch::Oci(e) => oci_err(e),
                Fetch::Failure(f) => err(f),
            })?;
        let raw: RawImage = serde_json::from_slice(&raw_config)
            .map_err(|e| err(PullFailure::Config(e.to_string())))?;

        let staging = store.staging().map_err(|e| err(e.into()))?;
        let root = staging.tree().to_path_buf();
        let mut left = *limits;
        let mut size = 0u64;
        for (layer, compression) in layers {
            let done = apply_layer(client, &reference, layer, compression, &root, left)
                .await
                .map_err(|e| match e {
                    Fetch::Oci(e) => oci_err(e),
                    Fetch::Failure(f) => err(f),
                })?;
            left.max_bytes = left.max_bytes.saturating_sub(done.bytes);
            left.max_entries = left.max_entries.saturating_sub(done.entries);
            size += u64::try_from(layer.size).unwrap_or(0);
        }
        let config = image_config(raw.config.unwrap_or_default(), &root);
        let saved = Saved {
            config_digest: config_digest.to_string(),
            size,
            config: config.clone(),
        };
        save_config(store, &manifest_digest, &saved).map_err(|e| err(e.into()))?;
        let root = store
            .commit(staging, &manifest_digest)
            .map_err(|e| err(e.into()))?;
        Ok(PulledOci {
            id: format!("{}/{}@{manifest_digest}", r.registry, r.repository),
            manifest_digest,
            config_digest,
            root,
            config,
            size,
            downloaded: true,
        })
    }
}

/// Where the config of the image stored under `digest` is kept.
fn config_path(store: &Store, digest: &Digest) -> PathBuf {
    store
        .root()
        .join("oci-config")
        .join(format!("{}.json", digest.hex()))
}

/// Writes the config beside the tree, atomically, before the tree is
/// committed: a stored tree always has its config.
fn save_config(store: &Store, digest: &Digest, saved: &Saved) -> Result<(), StoreError> {
    let io_err = |path: PathBuf| move |source: io::Error| StoreError::Io { path, source };
    let dir = store.root().join("oci-config");
    std::fs::create_dir_all(&dir).map_err(io_err(dir.clone()))?;
    let tmp = store.root().join("tmp");
    let mut f = tempfile::NamedTempFile::new_in(&tmp).map_err(io_err(tmp.clone()))?;
    serde_json::to_writer(&mut f, saved).map_err(|e| io_err(tmp.clone())(io::Error::other(e)))?;
    let path = config_path(store, digest);
    f.persist(&path)
        .map_err(|e| io_err(path.clone())(e.error))?;
    Ok(())
}

/// A download's failure: the registry's, or ours.
enum Fetch {
    Oci(OciDistributionError),
    Failure(PullFailure),
}

impl From<OciDistributionError> for Fetch {
    fn from(e: OciDistributionError) -> Fetch {
        Fetch::Oci(e)
    }
}

/// A descriptor's digest, which must be sha256 (the store's only kind).
fn descriptor_digest(what: &str, d: &OciDescriptor) -> Result<Digest, Fetch> {
    Digest::parse(&d.digest).ok_or_else(|| {
        Fetch::Failure(PullFailure::Registry(format!(
            "the {what} digest {:?} is not sha256",
            d.digest
        )))
    })
}

fn hex_digest(h: Sha256) -> Digest {
    Digest::parse(&format!("sha256:{:x}", h.finalize())).expect("a sha256 is 64 hex digits")
}

/// The config blob, verified.
async fn fetch_config(
    client: &Client,
    reference: &Reference,
    desc: &OciDescriptor,
) -> Result<(Digest, Vec<u8>), Fetch> {
    let want = descriptor_digest("config", desc)?;
    let blob = format!("config {want}");
    if u64::try_from(desc.size).map_or(true, |s| s > MAX_CONFIG_BYTES) {
        return Err(Fetch::Failure(PullFailure::Config(format!(
            "it is {} bytes, more than the {MAX_CONFIG_BYTES} allowed",
            desc.size
        ))));
    }
    let mut stream = client.pull_blob_stream(reference, desc).await?;
    let mut data = Vec::new();
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return Err(stream_failure(&blob, &want, hasher, e)),
        };
        hasher.update(&chunk);
        data.extend_from_slice(&chunk);
        if data.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Fetch::Failure(PullFailure::DigestMismatch {
                blob,
                got: "more bytes than the manifest says".into(),
            }));
        }
    }
    let got = hex_digest(hasher);
    if got != want {
        return Err(Fetch::Failure(PullFailure::DigestMismatch {
            blob,
            got: got.to_string(),
        }));
    }
    Ok((want, data))
}

/// What a stream error means: oci-client's own digest check failing at
/// the end (a mismatch: say which digest arrived), or a broken download.
fn stream_failure(blob: &str, want: &Digest, hasher: Sha256, e: io::Error) -> Fetch {
    let is_digest = e
        .get_ref()
        .is_some_and(|i| i.is::<oci_client::errors::DigestError>());
    let got = hex_digest(hasher);
    if is_digest || got == *want {
        // (`got == want` with an error: the header digest differed.)
        Fetch::Failure(PullFailure::DigestMismatch {
            blob: blob.to_string(),
            got: if got == *want {
                chain(&e)
            } else {
                got.to_string()
            },
        })
    } else {
        Fetch::Failure(PullFailure::Download {
            blob: blob.to_string(),
            detail: chain(&e),
        })
    }
}

/// The synchronous end of a download: chunks as the async side receives
/// them.
struct ChannelReader<B> {
    rx: tokio::sync::mpsc::Receiver<B>,
    cur: Option<B>,
    pos: usize,
}

impl<B: AsRef<[u8]>> Read for ChannelReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(c) = &self.cur {
                let rest = &c.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = Some(c);
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
    }
}

/// Streams one layer from the registry into the root: hashed as it
/// arrives, decompressed and applied on a blocking thread. The digest is
/// judged on the whole blob (read to its end even when unpacking stopped
/// early), so a tampered layer is reported as such, not as whatever its
/// bytes made the unpacker say.
async fn apply_layer(
    client: &Client,
    reference: &Reference,
    layer: &OciDescriptor,
    compression: Compression,
    root: &Path,
    limits: Limits,
) -> Result<Unpacked, Fetch> {
    let want = descriptor_digest("layer", layer)?;
    let blob = format!("layer {want}");
    let size = u64::try_from(layer.size).map_err(|_| {
        Fetch::Failure(PullFailure::Registry(format!(
            "layer {want} has a negative size"
        )))
    })?;
    let mut stream = client.pull_blob_stream(reference, layer).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let dest = root.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: None,
            pos: 0,
        };
        match compression {
            Compression::None => unpack_layer(reader, &dest, &limits),
            Compression::Gzip => {
                unpack_layer(flate2::read::MultiGzDecoder::new(reader), &dest, &limits)
            }
            Compression::Zstd => {
                let d = zstd::stream::read::Decoder::new(reader).map_err(UnpackError::Read)?;
                unpack_layer(d, &dest, &limits)
            }
        }
    });
    let mut tx = Some(tx);
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                hasher.update(&c);
                received += c.len() as u64;
                if received > size {
                    failed = Some(Fetch::Failure(PullFailure::DigestMismatch {
                        blob: blob.clone(),
                        got: format!("more than the {size} bytes the manifest says"),
                    }));
                    break;
                }
                if let Some(t) = &tx {
                    if t.send(c).await.is_err() {
                        tx = None; // the unpacker is done; keep hashing
                    }
                }
            }
            Err(e) => {
                failed = Some(stream_failure(&blob, &want, hasher.clone(), e));
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker.await;
    if let Some(f) = failed {
        return Err(f);
    }
    let got = hex_digest(hasher);
    if got != want {
        return Err(Fetch::Failure(PullFailure::DigestMismatch {
            blob,
            got: got.to_string(),
        }));
    }
    match unpacked {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(source)) => Err(Fetch::Failure(PullFailure::Unpack {
            layer: want.to_string(),
            source,
        })),
        Err(join) => Err(Fetch::Failure(PullFailure::Unpack {
            layer: want.to_string(),
            source: UnpackError::Read(io::Error::other(join.to_string())),
        })),
    }
}

// ---------------------------------------------------------------------------
// The image config

#[derive(serde::Deserialize)]
struct RawImage {
    #[serde(default)]
    config: Option<RawConfig>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// The config as the translation needs it, `User` resolved against the
/// image's own user database.
fn image_config(raw: RawConfig, root: &Path) -> ImageConfig {
    let user = raw.user.filter(|u| !u.is_empty());
    let (uid, gid, groups) = match &user {
        Some(u) => {
            let passwd = read_in_root(root, "etc/passwd");
            let group = read_in_root(root, "etc/group");
            let (uid, gid) = resolve_user(u, &passwd, &group);
            let groups = uid
                .map(|n| user_groups(n, &passwd, &group))
                .unwrap_or_default();
            (uid, gid, groups)
        }
        None => (None, None, Vec::new()),
    };
    ImageConfig {
        entrypoint: raw.entrypoint.unwrap_or_default(),
        cmd: raw.cmd.unwrap_or_default(),
        env: raw.env.unwrap_or_default(),
        working_dir: raw.working_dir.filter(|w| !w.is_empty()),
        user,
        uid,
        gid,
        groups,
    }
}

/// The largest user database read.
const MAX_DB_BYTES: u64 = 4 << 20;

/// A file of the image (empty when missing or unreadable), symlinks
/// resolved inside the image (`/etc/passwd -> /usr/share/...` works, one
/// to the host's files finds the image's).
fn read_in_root(root: &Path, rel: &str) -> String {
    let read = || -> Result<String, nix::errno::Errno> {
        let dir = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let fd = openat2(&dir, rel, how)?;
        let mut s = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_DB_BYTES)
            .read_to_end(&mut s)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))?;
        Ok(String::from_utf8_lossy(&s).into_owned())
    };
    read().unwrap_or_default()
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`,
/// mixed) as runc does: a name must be in the image's `passwd` (or
/// `group`), a number need not be; a user alone brings its primary group
/// (0 for a number `passwd` does not list). `(None, None)` when a name is
/// not found: the container cannot start, which the runtime reports.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> (Option<u32>, Option<u32>) {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // name:password:uid:gid:...
    let users = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            *f.first()?,
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        ))
    });
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            users
                .clone()
                .find(|(_, uid, _)| *uid == n)
                .map_or(0, |(_, _, gid)| gid),
        ),
        Err(_) => match users.clone().find(|(name, _, _)| *name == u) {
            Some((_, uid, gid)) => (uid, gid),
            None => return (None, None),
        },
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                // name:password:gid:members
                let found = group.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (*f.first()? == g).then(|| f.get(2)?.parse::<u32>().ok())?
                });
                match found {
                    Some(n) => n,
                    None => return (None, None),
                }
            }
        },
    };
    (Some(uid), Some(gid))
}

/// The supplementary groups of user `uid` in an image: every group of
/// its `/etc/group` that lists the user's name as a member, as runc adds
/// them.
pub fn user_groups(uid: u32, passwd: &str, group: &str) -> Vec<u32> {
    let Some(name) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_string())
    }) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = group
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let gid = f.get(2)?.parse::<u32>().ok()?;
            f.get(3)?
                .split(',')
                .any(|m| m.trim() == name)
                .then_some(gid)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_users_groups_are_those_listing_it_as_a_member() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
        let group =
            "root:x:0:\napp:x:1000:\nstaff:x:50:app\nwheel:x:10:root, app\nother:x:60:bob\n";
        assert_eq!(user_groups(1000, passwd, group), [10, 50]);
        assert_eq!(user_groups(0, passwd, group), [10]);
        assert!(user_groups(4242, passwd, group).is_empty());
    }

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(entries: &[(&str, &str)]) -> Vec<u8> {
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, up)| (k.to_string(), serde_json::json!({ "auth": b64(up) })))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap()
    }

    fn lookup(secrets: &[Vec<u8>], image: &str) -> Option<String> {
        RegistryAuth::from_dockerconfigjson(secrets, image)
            .unwrap()
            .map(|a| format!("{}:{}", a.username, a.password))
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        for s in ["", "a", "ab", "abc", "user:pass", "üñï:çødé"] {
            assert_eq!(base64_decode(&b64(s)).unwrap(), s.as_bytes(), "{s}");
            assert_eq!(
                base64_decode(b64(s).trim_end_matches('=')).unwrap(),
                s.as_bytes()
            );
        }
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("ab$d").is_none());
    }

    #[test]
    fn credentials_are_looked_up_as_the_kubelet_does() {
        let hub = secret(&[("https://index.docker.io/v1/", "hub:1")]);
        let private = secret(&[
            ("registry.example.com", "host:2"),
            ("registry.example.com/team", "team:3"),
            ("https://registry.example.com:5000/v2/", "port:4"),
            ("*.corp.example", "glob:5"),
            ("127.0.0.1:5000", "local:6"),
        ]);
        let fields = serde_json::to_vec(&serde_json::json!({
            "auths": { "quay.io": { "username": "q", "password": "7", "email": "x@y" } }
        }))
        .unwrap();
        let all = [hub.clone(), private.clone(), fields.clone()];
        for (image, want) in [
            ("docker.io/library/busybox", Some("hub:1")),
            ("docker.io/me/app", Some("hub:1")),
            ("registry.example.com/team/app", Some("team:3")),
            ("registry.example.com/teamx/app", Some("team:3")), // a prefix, as the kubelet
            ("registry.example.com/other/app", Some("host:2")),
            ("registry.example.com", Some("host:2")),
            ("registry.example.com:5000/x", Some("port:4")),
            ("registry.example.com:5001/x", None),
            ("a.corp.example/x", Some("glob:5")),
            ("a.b.corp.example/x", None),
            ("corp.example/x", None),
            ("127.0.0.1:5000/busybox", Some("local:6")),
            ("127.0.0.1/busybox", None),
            ("quay.io/x/y", Some("q:7")),
            ("ghcr.io/x/y", None),
        ] {
            assert_eq!(lookup(&all, image).as_deref(), want, "{image}");
        }
        // docker.io wins over the index.docker.io fallback.
        let direct = secret(&[("docker.io", "direct:8"), ("index.docker.io", "hub:9")]);
        assert_eq!(
            lookup(&[direct], "docker.io/library/busybox").as_deref(),
            Some("direct:8")
        );
        // The same key in two secrets: the first secret's.
        let a = secret(&[("reg.io", "a:1")]);
        let b = secret(&[("reg.io", "b:2")]);
        assert_eq!(lookup(&[a, b], "reg.io/x").as_deref(), Some("a:1"));
        // A registry alone (no repository path) works too.
        assert_eq!(lookup(&all, "quay.io").as_deref(), Some("q:7"));
        assert_eq!(lookup(&[], "quay.io"), None);
    }

    #[test]
    fn malformed_secrets_are_errors_naming_the_secret() {
        let good = secret(&[("reg.io", "a:1")]);
        for (bad, want) in [
            (b"not json".to_vec(), "#1"),
            (
                serde_json::to_vec(&serde_json::json!({"auths": {"reg.io": {"auth": "!!"}}}))
                    .unwrap(),
                "not base64",
            ),
            (
                serde_json::to_vec(
                    &serde_json::json!({"auths": {"reg.io": {"auth": b64("nocolon")}}}),
                )
                .unwrap(),
                "user:password",
            ),
        ] {
            let e = RegistryAuth::from_dockerconfigjson(&[good.clone(), bad], "reg.io/x")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("#1"), "{e}");
        }
        let a = RegistryAuth {
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[test]
    fn users_resolve_against_the_images_database() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nbad line\n";
        let group = "root:x:0:\napp:x:1001:\nstaff:x:50:app\n";
        for (user, want) in [
            ("root", (Some(0), Some(0))),
            ("app", (Some(1000), Some(1001))),
            ("1000", (Some(1000), Some(1001))),
            ("4242", (Some(4242), Some(0))),
            ("app:staff", (Some(1000), Some(50))),
            ("app:7", (Some(1000), Some(7))),
            ("4242:4343", (Some(4242), Some(4343))),
            ("1000:staff", (Some(1000), Some(50))),
            ("nobody", (None, None)),
            ("app:nogroup", (None, None)),
        ] {
            assert_eq!(resolve_user(user, passwd, group), want, "{user}");
        }
    }

    #[test]
    fn node_architectures_have_their_oci_names() {
        assert_eq!(oci_arch("x86_64"), "amd64");
        assert_eq!(oci_arch("aarch64"), "arm64");
        assert_eq!(oci_arch("x86"), "386");
        assert_eq!(oci_arch("s390x"), "s390x");
        assert_eq!(oci_arch("riscv64"), "riscv64");
        assert_eq!(oci_arch("loongarch64"), "loong64");
    }

    #[test]
    fn an_index_entry_is_picked_for_the_node() {
        let entries: Vec<ImageIndexEntry> = serde_json::from_value(serde_json::json!([
            {"mediaType": "x", "digest": "sha256:1", "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
            {"mediaType": "x", "digest": "sha256:2", "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"mediaType": "x", "digest": "sha256:3", "size": 1,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "x", "digest": "sha256:4", "size": 1,
             "platform": {"os": "windows", "architecture": "amd64"}},
            {"mediaType": "x", "digest": "sha256:5", "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "x", "digest": "sha256:6", "size": 1,
             "platform": {"os": "unknown", "architecture": "unknown"}},
        ]))
        .unwrap();
        let arm = Platform {
            arch: "arm",
            variants: &[Some("v7"), Some("v6"), Some("v5"), None],
        };
        assert_eq!(arm.pick(&entries).unwrap().digest, "sha256:2");
        let arm64 = Platform {
            arch: "arm64",
            variants: &[Some("v8"), None],
        };
        assert_eq!(arm64.pick(&entries).unwrap().digest, "sha256:3");
        let amd64 = Platform {
            arch: "amd64",
            variants: &[None, Some("v1")],
        };
        assert_eq!(amd64.pick(&entries).unwrap().digest, "sha256:5");
        let s390x = Platform {
            arch: "s390x",
            variants: &[None],
        };
        assert!(s390x.pick(&entries).is_none());
        assert_eq!(
            Platform::offered(&entries),
            "linux/arm/v6, linux/arm/v7, linux/arm64/v8, windows/amd64, linux/amd64"
        );
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for (r, want) in [
            ("localhost", true),
            ("localhost:5000", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("10.0.0.1:5000", false),
            ("registry.example.com", false),
            ("localhost.example.com", false),
        ] {
            assert_eq!(is_loopback(r), want, "{r}");
        }
    }

    #[test]
    fn layer_media_types_are_known_or_refused() {
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            compression_of("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            compression_of("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            compression_of("application/vnd.wasm.content.layer.v1+wasm"),
            None
        );
    }

    #[test]
    fn the_user_database_is_read_inside_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/share")).unwrap();
        std::fs::write(
            root.path().join("usr/share/passwd"),
            "app:x:7:8::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/share/passwd", root.path().join("etc/passwd")).unwrap();
        // A link meant for the host's group file finds none in the image.
        std::os::unix::fs::symlink(
            "/etc/../../../../etc/group-host",
            root.path().join("etc/group"),
        )
        .unwrap();
        assert_eq!(
            read_in_root(root.path(), "etc/passwd"),
            "app:x:7:8::/:/bin/sh\n"
        );
        assert_eq!(read_in_root(root.path(), "etc/group"), "");
        let c = image_config(
            RawConfig {
                user: Some("app".into()),
                working_dir: Some(String::new()),
                ..RawConfig::default()
            },
            root.path(),
        );
        assert_eq!((c.uid, c.gid, c.working_dir), (Some(7), Some(8), None));
    }
}
