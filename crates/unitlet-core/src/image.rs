//! What a container's `image:` names, told apart without guessing.
//!
//! Four kinds: `host` (a binary already on the machine); an artifact URL
//! (`http(s)://…/x.tar.gz`, optionally pinned as `…@sha256:<hex>`, the
//! archive's digest); a Debian package URL (`….deb`, its data archive
//! unpacked like any artifact, nothing installed on the host); anything
//! else is an OCI image reference, parsed by the distribution grammar and
//! normalised as the kubelet and containerd normalise Docker Hub short
//! names (`busybox` → `docker.io/library/busybox:latest`). A string that is
//! none of these is `InvalidImageName`.
//!
//! Pure: parsing and the pull-policy default. Fetching and the store come
//! with the image support of the agent.

use std::fmt;

/// The image that means "a binary already on this machine".
pub const HOST: &str = super::rules::HOST_IMAGE;

/// Docker Hub, as references without a registry name it.
pub const DOCKER_HUB: &str = "docker.io";

/// The longest repository name (registry and path) the distribution
/// grammar allows.
const NAME_TOTAL_MAX: usize = 255;

/// An archive format of an artifact, from its URL's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveKind {
    /// `.tar`
    Tar,
    /// `.tar.gz` or `.tgz`
    TarGz,
    /// `.tar.zst`
    TarZst,
    /// `.tar.xz`
    TarXz,
    /// `.zip`
    Zip,
    /// `.deb`: its `data.tar.*` member is the tree.
    Deb,
}

impl ArchiveKind {
    /// The path suffixes of each kind, longest first within a kind.
    const SUFFIXES: [(&'static str, ArchiveKind); 7] = [
        (".tar.gz", ArchiveKind::TarGz),
        (".tgz", ArchiveKind::TarGz),
        (".tar.zst", ArchiveKind::TarZst),
        (".tar.xz", ArchiveKind::TarXz),
        (".tar", ArchiveKind::Tar),
        (".zip", ArchiveKind::Zip),
        (".deb", ArchiveKind::Deb),
    ];

    /// The kind of the file a URL path names (a name before the suffix).
    fn of_path(path: &str) -> Option<ArchiveKind> {
        let file = path.rsplit('/').next().unwrap_or("");
        Self::SUFFIXES
            .iter()
            .find(|(s, _)| file.len() > s.len() && file.ends_with(s))
            .map(|(_, k)| *k)
    }
}

/// A content digest, `sha256:<64 lowercase hex>` (the only algorithm a pin
/// may use: it is what registries and `sha256sum` give).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 hex>`.
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(s.to_string()))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An artifact: an archive (or Debian package) on an HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Artifact {
    /// The URL to fetch, without the pin.
    pub url: String,
    /// Its archive format.
    pub kind: ArchiveKind,
    /// The archive's digest, when pinned (`…@sha256:<hex>`).
    pub digest: Option<Digest>,
}

/// An OCI image reference, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciRef {
    /// Registry host (and port): `docker.io` for short names.
    pub registry: String,
    /// Repository path: `library/busybox` for `busybox`.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest is given.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<Digest>,
}

impl fmt::Display for OciRef {
    /// The fully qualified form (`docker.io/library/busybox:latest`), as
    /// the kubelet reports `image` after a pull.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// What `image:` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `host`: a binary already on the machine; nothing to fetch.
    Host,
    /// An archive or Debian package URL.
    Artifact(Artifact),
    /// An OCI image in a registry.
    Oci(OciRef),
}

/// Why an `image:` string names nothing (`InvalidImageName`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {image:?} is not a valid image: {why}")]
pub struct InvalidImage {
    /// The string as written.
    pub image: String,
    /// What is wrong with it.
    pub why: String,
}

/// Parses an `image:` string.
pub fn parse(image: &str) -> Result<ImageRef, InvalidImage> {
    let bad = |why: &str| InvalidImage {
        image: image.to_string(),
        why: why.to_string(),
    };
    if image == HOST {
        return Ok(ImageRef::Host);
    }
    if image.is_empty()
        || image
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("empty, or holds whitespace or control characters"));
    }
    let lower = image.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return parse_artifact(image)
            .map(ImageRef::Artifact)
            .map_err(|w| bad(&w));
    }
    if image.contains("://") {
        return Err(bad("only http:// and https:// URLs name artifacts"));
    }
    parse_oci(image).map(ImageRef::Oci).map_err(|w| bad(&w))
}

fn parse_artifact(image: &str) -> Result<Artifact, String> {
    // A pin is the last `@sha256:`; an `@` elsewhere would be credentials
    // in the URL, which belong in a Secret instead.
    let (url, digest) = match image.rsplit_once("@sha256:") {
        Some((u, hex)) => (
            u,
            Some(Digest::parse(&format!("sha256:{hex}")).ok_or(
                "the pin must be @sha256: followed by 64 lowercase hex digits (the archive's sha256sum)",
            )?),
        ),
        None => (image, None),
    };
    let (scheme, rest) = url.split_once("://").expect("checked by the caller");
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return Err("only http:// and https:// URLs name artifacts".into());
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("the URL names no host".into());
    }
    if authority.contains('@') {
        return Err("credentials may not be part of the URL; name a Secret instead".into());
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let kind = ArchiveKind::of_path(path).ok_or(
        "an artifact URL's path must end in .tar, .tar.gz, .tgz, .tar.zst, .tar.xz, .zip or .deb",
    )?;
    Ok(Artifact {
        url: url.to_string(),
        kind,
        digest,
    })
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let x = b[i];
        if x.is_ascii_lowercase() || x.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or a run of `-`, between alphanumerics.
        let start = i;
        match x {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start
            || !b
                .get(i)
                .is_some_and(|n| n.is_ascii_lowercase() || n.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels (letters, digits, `-`) joined by `.`, or an
/// IPv6 literal in brackets, with an optional port.
fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn parse_oci(image: &str) -> Result<OciRef, String> {
    let (named, digest) = match image.split_once('@') {
        Some((n, d)) => (
            n,
            Some(
                Digest::parse(d)
                    .ok_or("a digest must be sha256: followed by 64 lowercase hex digits")?,
            ),
        ),
        None => (image, None),
    };
    let (name, tag) = match named.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (named, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err("a tag is at most 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'".into());
        }
    }
    if name.len() > NAME_TOTAL_MAX {
        return Err(format!(
            "the repository name is over {NAME_TOTAL_MAX} characters"
        ));
    }
    // The first component is a registry if it looks like a host (a dot, a
    // port, `localhost`, or capitals), as containerd and the kubelet decide.
    let (registry, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':', '['])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if !is_domain(first) {
                return Err(format!("{first:?} is not a valid registry host"));
            }
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    if !path.split('/').all(is_path_component) {
        return Err("a repository path is lowercase letters, digits and separators ('.', '_', '__', '-') between them, in '/'-separated parts".into());
    }
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some("latest".to_string()),
        (None, Some(_)) => None,
    };
    Ok(OciRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Where an artifact's tree is mounted (read-only) in its container's
/// mount namespace: the container's default working directory, and where
/// a relative `command[0]` is looked up. One fixed path, so a unit file a
/// user writes by hand can name the same place.
pub const ARTIFACT_MOUNT: &str = "/run/unitlet/image";

/// Where the agent keeps its static `image-exec` helper on the host (on
/// tmpfs: written at every start).
pub const IMAGE_EXEC_HOST: &str = "/run/unitlet/bin/image-exec";

/// Where a unit running in an OCI image's root finds that helper: on the
/// unit's private `/run`, so the image's tree is not touched.
pub const IMAGE_EXEC: &str = "/run/unitlet/image-exec";

/// What an image says about running it: an OCI image's config
/// (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`), or for a Debian
/// package the `ExecStart=` of the unit file it ships (as `entrypoint`).
/// Plain archives say nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, `NAME=value` each, in order.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User` as written (`1000`, `1000:1000`, `name`, `name:group`).
    #[serde(default)]
    pub user: Option<String>,
    /// `User` resolved to ids against the image's own `/etc/passwd` and
    /// `/etc/group` when it was pulled (`None`: no `User`, or not found).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The group of `User` (its primary group when only a user is named).
    #[serde(default)]
    pub gid: Option<u32>,
    /// The supplementary groups of that user in the image's `/etc/group`.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// What kind of tree an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    /// An artifact (archive or Debian package): mounted read-only at
    /// [`ARTIFACT_MOUNT`], the host visible around it.
    Artifact,
    /// An OCI image's root file system: the container's root.
    Oci,
}

/// An image the node holds, as the translation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// Artifact or OCI root.
    pub kind: TreeKind,
    /// The tree's absolute path in the store.
    pub root: String,
    /// The container status's `imageID`: `<name>@sha256:<hex>` (the OCI
    /// repository and manifest digest, as the kubelet reports a pulled
    /// image; for an artifact, its URL and the archive's digest).
    pub id: String,
    /// How to run it.
    pub config: ImageConfig,
    /// The programs on the image's search path (absolute paths inside an
    /// OCI root: every entry of the `PATH` directories), so a bare
    /// `command[0]` resolves as runc would, without the translation
    /// reading the tree.
    pub programs: std::sync::Arc<std::collections::BTreeSet<String>>,
    /// Which of the files a unit binds over in an OCI root
    /// ([`HOST_FILES`]) the image has: systemd cannot bind a file where
    /// the read-only image has none.
    pub host_files: std::sync::Arc<std::collections::BTreeSet<String>>,
}

/// The host's files an OCI container sees in place of the image's, when
/// the image has them (the pod shares the host's network and names).
pub const HOST_FILES: [&str; 2] = ["/etc/resolv.conf", "/etc/hosts"];

/// `imagePullPolicy` when the pod leaves it out, as the API server
/// defaults it: `Always` for an OCI image tagged (or defaulting to)
/// `latest`, else `IfNotPresent`. An artifact URL has no tag, so it is
/// fetched once (pin it, or name each version's file, to roll out).
pub fn default_pull_policy(image: &ImageRef) -> &'static str {
    match image {
        ImageRef::Oci(r) if r.digest.is_none() && r.tag.as_deref() == Some("latest") => "Always",
        _ => "IfNotPresent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "4a8b9c0d1e2f30415263748596a7b8c9d0e1f2031425364758697a8b9cadbecf";

    fn oci(s: &str) -> String {
        match parse(s) {
            Ok(ImageRef::Oci(r)) => r.to_string(),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn oci_references_are_normalised_as_the_kubelet_does() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("me/svc:v2", "docker.io/me/svc:v2"),
            ("index.docker.io/me/svc", "docker.io/me/svc:latest"),
            ("localhost/svc", "localhost/svc:latest"),
            (
                "localhost:5000/team/svc:1.4.2",
                "localhost:5000/team/svc:1.4.2",
            ),
            ("127.0.0.1:5000/svc", "127.0.0.1:5000/svc:latest"),
            (
                "registry.example.com/a/b/c:x_y-z.1",
                "registry.example.com/a/b/c:x_y-z.1",
            ),
            ("[::1]:5000/svc", "[::1]:5000/svc:latest"),
            (
                "my-registry.local/a__b/c--d",
                "my-registry.local/a__b/c--d:latest",
            ),
        ] {
            assert_eq!(oci(given), want, "{given}");
        }
        let pinned = format!("busybox@sha256:{HEX}");
        assert_eq!(
            oci(&pinned),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
        let both = format!("quay.io/x/y:1@sha256:{HEX}");
        assert_eq!(oci(&both), format!("quay.io/x/y:1@sha256:{HEX}"));
    }

    #[test]
    fn invalid_references_are_refused() {
        for s in [
            "",
            " busybox",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "a//b",
            "a/-b",
            "a/b-",
            "a/b_",
            "a/b___c",
            "reg.io:port/x",
            "reg.io:/x",
            "ftp://host/x.tar",
            "x/y:a/b",
            &format!("a/{}", "b".repeat(300)),
        ] {
            assert!(parse(s).is_err(), "{s:?} should be refused: {:?}", parse(s));
        }
        let e = parse("Busybox").unwrap_err();
        assert_eq!(e.image, "Busybox");
    }

    #[test]
    fn artifact_urls_by_suffix_with_an_optional_pin() {
        for (url, kind) in [
            (
                "https://dl.example.com/svc-1.4.2-linux-amd64.tar.gz",
                ArchiveKind::TarGz,
            ),
            ("http://10.0.0.1:8080/svc.tgz", ArchiveKind::TarGz),
            ("https://h/x.tar", ArchiveKind::Tar),
            ("https://h/x.tar.zst", ArchiveKind::TarZst),
            ("https://h/x.tar.xz", ArchiveKind::TarXz),
            ("https://h/x.zip", ArchiveKind::Zip),
            ("https://h/pool/s/svc_1.0_amd64.deb", ArchiveKind::Deb),
            ("https://h/x.tar.gz?token=abc", ArchiveKind::TarGz),
        ] {
            let Ok(ImageRef::Artifact(a)) = parse(url) else {
                panic!("{url}: {:?}", parse(url));
            };
            assert_eq!(a.kind, kind, "{url}");
            assert_eq!(a.url, url);
            assert_eq!(a.digest, None);
        }
        let pinned = format!("https://h/svc.tar.gz@sha256:{HEX}");
        let Ok(ImageRef::Artifact(a)) = parse(&pinned) else {
            panic!("{pinned}");
        };
        assert_eq!(a.url, "https://h/svc.tar.gz");
        assert_eq!(a.digest.as_ref().map(Digest::hex), Some(HEX));
        for bad in [
            "https://h/svc",
            "https://h/svc.tar.gz.sig",
            "https:///x.tar",
            "https://user:pw@h/x.tar",
            "https://h/x.tar@sha256:ABC",
            "https://h/.tar",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}: {:?}", parse(bad));
        }
        assert!(parse("https://user:pw@h/x.tar")
            .unwrap_err()
            .to_string()
            .contains("Secret"));
    }

    #[test]
    fn pull_policy_defaults_as_the_api_server() {
        let p = |s: &str| default_pull_policy(&parse(s).unwrap());
        assert_eq!(p("busybox"), "Always");
        assert_eq!(p("busybox:latest"), "Always");
        assert_eq!(p("busybox:1.36"), "IfNotPresent");
        assert_eq!(p(&format!("busybox@sha256:{HEX}")), "IfNotPresent");
        assert_eq!(p("https://h/x.tar.gz"), "IfNotPresent");
        assert_eq!(p("host"), "IfNotPresent");
    }

    proptest! {
        /// Whatever the string, parsing never panics, and every OCI
        /// reference it accepts prints back to a reference that parses to
        /// itself.
        #[test]
        fn parsing_is_total_and_normal_forms_are_fixed_points(s in "\\PC{0,80}") {
            if let Ok(ImageRef::Oci(r)) = parse(&s) {
                let again = parse(&r.to_string());
                prop_assert_eq!(again, Ok(ImageRef::Oci(r)));
            }
        }

        #[test]
        fn generated_references_parse(
            reg in proptest::option::of("[a-z][a-z0-9]{0,8}\\.[a-z]{2,3}(:[0-9]{1,5})?"),
            // (A first part with a dot would read as a registry host.)
            path in "[a-z0-9]{1,6}([_-][a-z0-9]{1,6}){0,2}(/[a-z0-9]{1,6}([._-][a-z0-9]{1,6})?){0,2}",
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        ) {
            let mut s = match &reg { Some(r) => format!("{r}/{path}"), None => path.clone() };
            if let Some(t) = &tag { s.push(':'); s.push_str(t); }
            let parsed = parse(&s);
            prop_assert!(matches!(parsed, Ok(ImageRef::Oci(_))), "{s}: {parsed:?}");
        }
    }
}
