//! The files of ConfigMap, Secret, downward API and projected volumes.
//!
//! The kubelet computes such a volume's files afresh each time it sets the
//! volume up or refreshes it (`pkg/volume/configmap`, `secret`,
//! `downwardapi`, `projected`) and hands them to its atomic writer, which
//! refuses unsafe paths before it writes anything. unitlet does the same
//! in two steps: this module computes the files from data the agent looked
//! up ([`Resolved`], the service account tokens), and the agent writes
//! them. Keeping the computation pure lets the kubelet's corner cases
//! (optional objects, missing keys, modes, path rules, the downward API's
//! formatting) be tested as tables.

use super::{FileEntry, Payload, PayloadError, TokenRef};
use crate::downward::{field_ref, resource_field};
use crate::envref::{Lookup, ObjectRef, RefKind, Resolved};
use crate::NodeFacts;
use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection, Volume,
};
use std::collections::BTreeMap;

/// The API server's default `defaultMode` of all four volume kinds, so a
/// volume that sets none still has one.
pub const DEFAULT_MODE: u32 = 0o644;

/// The API server's default `expirationSeconds` of a projected token.
pub const DEFAULT_TOKEN_EXPIRATION: i64 = 3600;

/// The atomic writer's limits on a path and on each of its elements (bytes).
const MAX_PATH_LENGTH: usize = 4096;
const MAX_FILE_NAME_LENGTH: usize = 255;

/// The resources a volume's `resourceFieldRef` may name (the API server
/// also takes huge pages, which unitlet does not manage).
const RESOURCES: [&str; 6] = [
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

/// Whether the agent must compute the volume's files with [`payload`]
/// (and keep them up to date) rather than just make a directory.
pub fn is_payload(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// Every ConfigMap and Secret the volume names, each once, in order: the
/// objects the agent must look up (and watch) before [`payload`] can
/// answer anything but `Pending`.
pub fn references(v: &Volume) -> Vec<ObjectRef> {
    let mut out: Vec<ObjectRef> = Vec::new();
    let mut add = |kind, name: &str| {
        let r = ObjectRef {
            kind,
            name: name.to_string(),
        };
        if !out.contains(&r) {
            out.push(r);
        }
    };
    if let Some(cm) = &v.config_map {
        add(RefKind::ConfigMap, &cm.name);
    }
    if let Some(s) = &v.secret {
        add(RefKind::Secret, s.secret_name.as_deref().unwrap_or(""));
    }
    if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(s) = &src.secret {
                add(RefKind::Secret, &s.name);
            }
            if let Some(cm) = &src.config_map {
                add(RefKind::ConfigMap, &cm.name);
            }
        }
    }
    out
}

/// Every service account token the volume's projected sources ask for,
/// each once, in order: the tokens the agent must request (for the pod's
/// service account, bound to the pod) before [`payload`] can finish.
pub fn token_refs(v: &Volume) -> Vec<TokenRef> {
    let mut out: Vec<TokenRef> = Vec::new();
    let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
    for t in sources.filter_map(|s| s.service_account_token.as_ref()) {
        let r = token_ref(t);
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

fn token_ref(t: &ServiceAccountTokenProjection) -> TokenRef {
    TokenRef {
        audience: t.audience.clone().unwrap_or_default(),
        expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_EXPIRATION),
    }
}

/// Why a source could not give its files. Kept as a list so that a
/// projected volume reports every failing source at once, as the kubelet's
/// aggregated error does.
enum Trouble {
    Pending,
    Failed(Vec<String>),
}

fn failed(m: impl Into<String>) -> Trouble {
    Trouble::Failed(vec![m.into()])
}

/// The kubelet's aggregate error text: distinct messages in order, one
/// alone as it is, several as `[a, b]`.
fn aggregate(msgs: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for m in msgs {
        if !seen.contains(&m.as_str()) {
            seen.push(m);
        }
    }
    match seen.as_slice() {
        [one] => one.to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

impl From<Trouble> for PayloadError {
    fn from(t: Trouble) -> Self {
        match t {
            Trouble::Pending => PayloadError::Pending,
            Trouble::Failed(m) => PayloadError::Failed(aggregate(&m)),
        }
    }
}

/// Files in the order the kubelet adds them to its payload map: a later
/// one at the same path replaces an earlier one.
type Files = Vec<(String, FileEntry)>;

/// Permission bits only: the API server allows 0..=0o777, and nothing a
/// pod says may make a file set-user-ID.
fn mode_of(m: Option<i32>, default: u32) -> u32 {
    m.map_or(default, |m| (m & 0o777) as u32)
}

/// The files of a ConfigMap or Secret volume or projection, with the
/// kubelet's semantics (`MakePayload` and the lookup before it).
fn object_files(
    kind: RefKind,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: u32,
    resolved: &Resolved,
) -> Result<Files, Trouble> {
    let r = ObjectRef {
        kind,
        name: name.to_string(),
    };
    let empty = Default::default();
    let data = match resolved.get(&r) {
        Lookup::Found(d) => d.as_ref(),
        Lookup::NotFound if optional => &empty,
        Lookup::NotFound => {
            return Err(failed(format!(
                "{} {} not found",
                kind.word(),
                go_quote(name)
            )))
        }
        Lookup::Pending => return Err(Trouble::Pending),
        Lookup::Failed(m) => return Err(failed(m.clone())),
    };
    // Only a ConfigMap has binaryData; a Secret's data is already bytes.
    let binary = (kind == RefKind::ConfigMap).then_some(&data.binary);
    let items = items.map(Vec::as_slice).unwrap_or_default();
    let file = |bytes: &Vec<u8>, mode| FileEntry {
        data: bytes.clone(),
        mode,
    };
    if items.is_empty() {
        let all = data.data.iter().chain(binary.into_iter().flatten());
        return Ok(all
            .map(|(k, b)| (k.clone(), file(b, default_mode)))
            .collect());
    }
    let mut out = Files::new();
    for item in items {
        let bytes = data
            .data
            .get(&item.key)
            .or_else(|| binary.and_then(|b| b.get(&item.key)));
        let Some(bytes) = bytes else {
            if optional {
                continue;
            }
            return Err(failed(if kind == RefKind::ConfigMap {
                format!("configmap references non-existent config key: {}", item.key)
            } else {
                format!("references non-existent secret key: {}", item.key)
            }));
        };
        out.push((
            item.path.clone(),
            file(bytes, mode_of(item.mode, default_mode)),
        ));
    }
    Ok(out)
}

/// The downward API's files (`CollectData`): every item is tried and all
/// their errors reported together.
fn downward_files(
    pod: &Pod,
    node: &NodeFacts,
    items: Option<&Vec<DownwardAPIVolumeFile>>,
    default_mode: u32,
) -> Result<Files, Trouble> {
    let mut out = Files::new();
    let mut errors = Vec::new();
    for item in items.into_iter().flatten() {
        let value = if let Some(f) = &item.field_ref {
            volume_field(pod, node, &f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let container = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name);
            match container {
                Some(c) => resource_field(pod, node, c, r),
                None => Err(format!("container {name} not found")),
            }
        } else {
            Ok(String::new())
        };
        match value {
            Ok(v) => out.push((
                item.path.clone(),
                FileEntry {
                    data: v.into_bytes(),
                    mode: mode_of(item.mode, default_mode),
                },
            )),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Trouble::Failed(errors))
    }
}

/// `path` split as `base['key']`, the way the kubelet reads a subscripted
/// field path.
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let (base, key) = path.strip_suffix("']")?.split_once("['")?;
    (!base.is_empty()).then_some((base, key))
}

/// The value of a downward API volume's `fieldRef` (the kubelet's
/// `ExtractFieldPathAsString`): fewer paths than env may use, but the
/// whole label and annotation maps too.
fn volume_field(pod: &Pod, node: &NodeFacts, path: &str) -> Result<String, String> {
    if let Some((base, key)) = split_subscript(path) {
        let ok = match base {
            "metadata.annotations" => is_qualified_name(&key.to_lowercase()),
            "metadata.labels" => is_qualified_name(key),
            _ => {
                return Err(format!(
                    "fieldPath {} does not support subscript",
                    go_quote(path)
                ))
            }
        };
        if !ok {
            return Err(format!(
                "invalid key subscript in {path}: {key:?} is not a qualified name"
            ));
        }
        return Ok(field_ref(pod, node, path));
    }
    match path {
        "metadata.annotations" => Ok(format_map(pod.metadata.annotations.as_ref())),
        "metadata.labels" => Ok(format_map(pod.metadata.labels.as_ref())),
        "metadata.name" | "metadata.namespace" | "metadata.uid" => Ok(field_ref(pod, node, path)),
        _ => Err(format!("unsupported fieldPath: {path}")),
    }
}

/// The kubelet's rendering of a whole label or annotation map in a file:
/// one `key="value"` line per key, sorted, values quoted as Go's `%q`, no
/// newline after the last.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kubernetes' qualified name (label keys): an optional DNS subdomain
/// prefix and `/`, then 1–63 alphanumerics, `-`, `_`, `.`, starting and
/// ending alphanumeric.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    prefix_ok
        && name.len() <= 63
        && edge(name.bytes().next())
        && edge(name.bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The files a `configMap`, `secret`, `downwardAPI` or `projected` volume
/// holds now, or why they cannot be made yet. `resolved` holds the lookups
/// of [`references`], `tokens` the tokens of [`token_refs`]; a missing one
/// is `Pending`. Other volume kinds hold no files.
pub fn payload(
    pod: &Pod,
    node: &NodeFacts,
    v: &Volume,
    resolved: &Resolved,
    tokens: &BTreeMap<TokenRef, String>,
) -> Result<Payload, PayloadError> {
    let files = if let Some(cm) = &v.config_map {
        object_files(
            RefKind::ConfigMap,
            &cm.name,
            cm.items.as_ref(),
            cm.optional == Some(true),
            mode_of(cm.default_mode, DEFAULT_MODE),
            resolved,
        )?
    } else if let Some(s) = &v.secret {
        object_files(
            RefKind::Secret,
            s.secret_name.as_deref().unwrap_or(""),
            s.items.as_ref(),
            s.optional == Some(true),
            mode_of(s.default_mode, DEFAULT_MODE),
            resolved,
        )?
    } else if let Some(d) = &v.downward_api {
        downward_files(
            pod,
            node,
            d.items.as_ref(),
            mode_of(d.default_mode, DEFAULT_MODE),
        )?
    } else if let Some(p) = &v.projected {
        let mode = mode_of(p.default_mode, DEFAULT_MODE);
        let mut files = Files::new();
        let mut errors = Vec::new();
        let mut pending = false;
        for src in p.sources.iter().flatten() {
            let got = if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                object_files(
                    RefKind::Secret,
                    &s.name,
                    s.items.as_ref(),
                    optional,
                    mode,
                    resolved,
                )
            } else if let Some(cm) = &src.config_map {
                let optional = cm.optional == Some(true);
                object_files(
                    RefKind::ConfigMap,
                    &cm.name,
                    cm.items.as_ref(),
                    optional,
                    mode,
                    resolved,
                )
            } else if let Some(d) = &src.downward_api {
                downward_files(pod, node, d.items.as_ref(), mode)
            } else if let Some(t) = &src.service_account_token {
                match tokens.get(&token_ref(t)) {
                    Some(token) => Ok(vec![(
                        t.path.clone(),
                        FileEntry {
                            data: token.clone().into_bytes(),
                            mode,
                        },
                    )]),
                    None => Err(Trouble::Pending),
                }
            } else if src.cluster_trust_bundle.is_some() {
                Err(failed(UNSUPPORTED_TRUST_BUNDLE))
            } else if src.pod_certificate.is_some() {
                Err(failed(UNSUPPORTED_POD_CERTIFICATE))
            } else {
                Ok(Files::new())
            };
            match got {
                Ok(f) => files.extend(f),
                Err(Trouble::Pending) => pending = true,
                Err(Trouble::Failed(m)) => errors.extend(m),
            }
        }
        if !errors.is_empty() {
            return Err(PayloadError::Failed(aggregate(&errors)));
        }
        if pending {
            return Err(PayloadError::Pending);
        }
        files
    } else {
        Files::new()
    };
    let mut out = Payload::new();
    for (path, file) in files {
        check_path(&path).map_err(PayloadError::Failed)?;
        out.insert(clean(&path), file);
    }
    // The atomic writer would make `a` a file and need it as the directory
    // of `a/b`, and fail half-way; refuse before writing anything.
    for path in out.keys() {
        let dir = format!("{path}/");
        if let Some((below, _)) = out.range(dir.clone()..).next() {
            if below.starts_with(&dir) {
                return Err(PayloadError::Failed(format!(
                    "invalid payload: {path:?} is a file, but {below:?} needs it to be a directory"
                )));
            }
        }
    }
    Ok(out)
}

const UNSUPPORTED_TRUST_BUNDLE: &str = "clusterTrustBundle projections are not supported by unitlet; put the bundle in a ConfigMap and project that";
const UNSUPPORTED_POD_CERTIFICATE: &str = "podCertificate projections are not supported by unitlet; put the certificate in a Secret and project that";

/// The atomic writer's rules for a path in a volume (`validatePath`), in
/// its words; the result also names the path. Unitlet also refuses a path
/// that names the volume's directory itself (`.`), which the kubelet
/// would fail to write.
fn check_path(p: &str) -> Result<(), String> {
    let shown = || {
        let mut s: String = p.chars().take(80).collect();
        if s.len() < p.len() {
            s.push('…');
        }
        s
    };
    if p.is_empty() {
        return Err("invalid path: must not be empty: \"\"".into());
    }
    if p.starts_with('/') {
        return Err(format!("invalid path: must be relative path: {p}"));
    }
    if p.len() > MAX_PATH_LENGTH {
        return Err(format!(
            "invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters: {}",
            shown()
        ));
    }
    for item in p.split('/') {
        if item == ".." {
            return Err(format!("invalid path: must not contain '..': {p}"));
        }
        if item.len() > MAX_FILE_NAME_LENGTH {
            return Err(format!(
                "invalid path: filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters: {}",
                shown()
            ));
        }
    }
    if p.split('/')
        .next()
        .is_some_and(|first| first.starts_with("..") && first.len() > 2)
    {
        return Err(format!("invalid path: must not start with '..': {p}"));
    }
    if clean(p) == "." {
        return Err(format!(
            "invalid path: must name a file, not the volume's directory: {p}"
        ));
    }
    Ok(())
}

/// Go's `filepath.Clean` for the relative paths [`check_path`] lets
/// through (no `..`): empty and `.` elements dropped.
fn clean(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|e| !e.is_empty() && *e != ".")
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// A string quoted as Go's `strconv.Quote` (and `%q`) quotes it, which is
/// how the kubelet writes label and annotation values in downward API
/// files: printable characters (Go's `unicode.IsPrint`, Unicode 15.0) as
/// they are, `"` and `\` escaped, the usual C escapes, other control
/// characters as `\x..`, and other unprintable characters as `\u....` or
/// `\U........`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let n = c as u32;
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            _ if n < 0x20 || n == 0x7f => out.push_str(&format!("\\x{n:02x}")),
            _ if n < 0x10000 => out.push_str(&format!("\\u{n:04x}")),
            _ => out.push_str(&format!("\\U{n:08x}")),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols
/// and the ASCII space.
fn is_print(c: char) -> bool {
    // An odd count of bounds at or below `c` puts it inside a range.
    PRINTABLE.partition_point(|&b| b <= c as u32) % 2 == 1
}

/// Admission checks of a payload volume, as the API server makes them
/// (and the kubelet's path rules, which would otherwise fail the mount
/// later): `(field relative to the volume, message)` on the first problem.
pub fn validate(v: &Volume) -> Result<(), (String, String)> {
    let e = |f: String, m: String| Err((f, m));
    if let Some(cm) = &v.config_map {
        if cm.name.is_empty() {
            return e("configMap.name".into(), "required".into());
        }
        check_mode(cm.default_mode, "configMap.defaultMode")?;
        return check_items(cm.items.as_ref(), "configMap.items", &mut Vec::new());
    }
    if let Some(s) = &v.secret {
        if s.secret_name.as_deref().unwrap_or("").is_empty() {
            return e("secret.secretName".into(), "required".into());
        }
        check_mode(s.default_mode, "secret.defaultMode")?;
        return check_items(s.items.as_ref(), "secret.items", &mut Vec::new());
    }
    if let Some(d) = &v.downward_api {
        check_mode(d.default_mode, "downwardAPI.defaultMode")?;
        return check_downward(d.items.as_ref(), "downwardAPI.items", &mut Vec::new());
    }
    let Some(p) = &v.projected else {
        return Ok(());
    };
    check_mode(p.default_mode, "projected.defaultMode")?;
    // Item paths of all sources, for the API server's duplicate check
    // (service account token paths are not part of it).
    let mut paths = Vec::new();
    for (i, src) in p.sources.iter().flatten().enumerate() {
        let at = format!("projected.sources[{i}]");
        let kinds = [
            src.secret.is_some(),
            src.config_map.is_some(),
            src.downward_api.is_some(),
            src.service_account_token.is_some(),
            src.cluster_trust_bundle.is_some(),
            src.pod_certificate.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return e(at, "may not specify more than 1 volume type".into());
        }
        if let Some(s) = &src.secret {
            if s.name.is_empty() {
                return e(format!("{at}.secret.name"), "required".into());
            }
            check_items(s.items.as_ref(), &format!("{at}.secret.items"), &mut paths)?;
        } else if let Some(cm) = &src.config_map {
            if cm.name.is_empty() {
                return e(format!("{at}.configMap.name"), "required".into());
            }
            check_items(
                cm.items.as_ref(),
                &format!("{at}.configMap.items"),
                &mut paths,
            )?;
        } else if let Some(d) = &src.downward_api {
            check_downward(
                d.items.as_ref(),
                &format!("{at}.downwardAPI.items"),
                &mut paths,
            )?;
        } else if let Some(t) = &src.service_account_token {
            let f = format!("{at}.serviceAccountToken");
            let secs = t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_EXPIRATION);
            if secs < 600 {
                return e(
                    format!("{f}.expirationSeconds"),
                    format!("{secs}: may not specify a duration less than 10 minutes"),
                );
            }
            if secs > 1 << 32 {
                return e(
                    format!("{f}.expirationSeconds"),
                    format!("{secs}: may not specify a duration larger than 2^32 seconds"),
                );
            }
            check_path(&t.path).map_err(|m| (format!("{f}.path"), m))?;
        } else if src.cluster_trust_bundle.is_some() {
            return e(
                format!("{at}.clusterTrustBundle"),
                UNSUPPORTED_TRUST_BUNDLE.into(),
            );
        } else if src.pod_certificate.is_some() {
            return e(
                format!("{at}.podCertificate"),
                UNSUPPORTED_POD_CERTIFICATE.into(),
            );
        }
    }
    Ok(())
}

fn check_mode(m: Option<i32>, field: &str) -> Result<(), (String, String)> {
    match m {
        Some(m) if !(0..=0o777).contains(&m) => Err((
            field.to_string(),
            format!("{m} is not a file mode: must be between 0 and 0777 (octal; 511 in decimal), both inclusive"),
        )),
        _ => Ok(()),
    }
}

/// A path of an item, checked; `seen` collects a projected volume's item
/// paths, which the API server refuses to see twice.
fn check_item_path(p: &str, field: String, seen: &mut Vec<String>) -> Result<(), (String, String)> {
    check_path(p).map_err(|m| (field.clone(), m))?;
    if seen.iter().any(|s| s == p) {
        return Err((field, format!("{p:?}: conflicting duplicate paths")));
    }
    seen.push(p.to_string());
    Ok(())
}

fn check_items(
    items: Option<&Vec<KeyToPath>>,
    at: &str,
    seen: &mut Vec<String>,
) -> Result<(), (String, String)> {
    for (i, item) in items.into_iter().flatten().enumerate() {
        let f = |x: &str| format!("{at}[{i}].{x}");
        if item.key.is_empty() {
            return Err((f("key"), "required".into()));
        }
        check_item_path(&item.path, f("path"), seen)?;
        check_mode(item.mode, &f("mode"))?;
    }
    Ok(())
}

fn check_downward(
    items: Option<&Vec<DownwardAPIVolumeFile>>,
    at: &str,
    seen: &mut Vec<String>,
) -> Result<(), (String, String)> {
    for (i, item) in items.into_iter().flatten().enumerate() {
        let f = |x: &str| format!("{at}[{i}].{x}");
        check_item_path(&item.path, f("path"), seen)?;
        match (&item.field_ref, &item.resource_field_ref) {
            (Some(_), Some(_)) => {
                return Err((
                    format!("{at}[{i}]"),
                    "fieldRef and resourceFieldRef can not be specified simultaneously".into(),
                ))
            }
            (None, None) => {
                return Err((
                    format!("{at}[{i}]"),
                    "one of fieldRef and resourceFieldRef is required".into(),
                ))
            }
            (Some(r), None) => {
                if r.api_version
                    .as_deref()
                    .is_some_and(|v| !v.is_empty() && v != "v1")
                {
                    return Err((f("fieldRef.apiVersion"), "must be v1".into()));
                }
                let p = r.field_path.as_str();
                let ok = match split_subscript(p) {
                    Some(("metadata.annotations", k)) => is_qualified_name(&k.to_lowercase()),
                    Some(("metadata.labels", k)) => is_qualified_name(k),
                    Some(_) => false,
                    None => matches!(
                        p,
                        "metadata.name"
                            | "metadata.namespace"
                            | "metadata.uid"
                            | "metadata.labels"
                            | "metadata.annotations"
                    ),
                };
                if !ok {
                    return Err((f("fieldRef.fieldPath"), format!("{p:?} is not supported in a volume; use metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, or metadata.labels['<key>'] or metadata.annotations['<key>'] with a valid key")));
                }
            }
            (None, Some(r)) => {
                if r.container_name.as_deref().unwrap_or("").is_empty() {
                    return Err((
                        f("resourceFieldRef.containerName"),
                        "required in a volume, which no container owns".into(),
                    ));
                }
                if !RESOURCES.contains(&r.resource.as_str()) {
                    return Err((
                        f("resourceFieldRef.resource"),
                        format!(
                            "{:?} is not supported; use one of {}",
                            r.resource,
                            RESOURCES.join(", ")
                        ),
                    ));
                }
                let divisor = r.divisor.as_ref().map(|q| q.0.as_str()).unwrap_or("");
                let valid: &[&str] = if r.resource.ends_with(".cpu") {
                    &["1m", "1"]
                } else {
                    &[
                        "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi",
                        "1Ei",
                    ]
                };
                if !divisor.is_empty() && !valid.contains(&divisor) {
                    return Err((
                        f("resourceFieldRef.divisor"),
                        format!(
                            "{divisor:?} is not a valid divisor for {}; use one of {}",
                            r.resource,
                            valid.join(", ")
                        ),
                    ));
                }
            }
        }
        check_mode(item.mode, &f("mode"))?;
    }
    Ok(())
}

/// Go's printable characters (`unicode.IsPrint` of Go 1.21 and later,
/// Unicode 15.0.0) as sorted bounds: each pair is the first printable
/// character of a range and the first one after it. Generated from the
/// Unicode Character Database's general categories (L, M, N, P, S) plus
/// U+0020.
#[rustfmt::skip]
static PRINTABLE: [u32; 1422] = [
    0x20, 0x7f, 0xa1, 0xad, 0xae, 0x378, 0x37a, 0x380, 0x384, 0x38b, 0x38c, 0x38d, 0x38e, 0x3a2,
    0x3a3, 0x530, 0x531, 0x557, 0x559, 0x58b, 0x58d, 0x590, 0x591, 0x5c8, 0x5d0, 0x5eb, 0x5ef,
    0x5f5, 0x606, 0x61c, 0x61d, 0x6dd, 0x6de, 0x70e, 0x710, 0x74b, 0x74d, 0x7b2, 0x7c0, 0x7fb,
    0x7fd, 0x82e, 0x830, 0x83f, 0x840, 0x85c, 0x85e, 0x85f, 0x860, 0x86b, 0x870, 0x88f, 0x898,
    0x8e2, 0x8e3, 0x984, 0x985, 0x98d, 0x98f, 0x991, 0x993, 0x9a9, 0x9aa, 0x9b1, 0x9b2, 0x9b3,
    0x9b6, 0x9ba, 0x9bc, 0x9c5, 0x9c7, 0x9c9, 0x9cb, 0x9cf, 0x9d7, 0x9d8, 0x9dc, 0x9de, 0x9df,
    0x9e4, 0x9e6, 0x9ff, 0xa01, 0xa04, 0xa05, 0xa0b, 0xa0f, 0xa11, 0xa13, 0xa29, 0xa2a, 0xa31,
    0xa32, 0xa34, 0xa35, 0xa37, 0xa38, 0xa3a, 0xa3c, 0xa3d, 0xa3e, 0xa43, 0xa47, 0xa49, 0xa4b,
    0xa4e, 0xa51, 0xa52, 0xa59, 0xa5d, 0xa5e, 0xa5f, 0xa66, 0xa77, 0xa81, 0xa84, 0xa85, 0xa8e,
    0xa8f, 0xa92, 0xa93, 0xaa9, 0xaaa, 0xab1, 0xab2, 0xab4, 0xab5, 0xaba, 0xabc, 0xac6, 0xac7,
    0xaca, 0xacb, 0xace, 0xad0, 0xad1, 0xae0, 0xae4, 0xae6, 0xaf2, 0xaf9, 0xb00, 0xb01, 0xb04,
    0xb05, 0xb0d, 0xb0f, 0xb11, 0xb13, 0xb29, 0xb2a, 0xb31, 0xb32, 0xb34, 0xb35, 0xb3a, 0xb3c,
    0xb45, 0xb47, 0xb49, 0xb4b, 0xb4e, 0xb55, 0xb58, 0xb5c, 0xb5e, 0xb5f, 0xb64, 0xb66, 0xb78,
    0xb82, 0xb84, 0xb85, 0xb8b, 0xb8e, 0xb91, 0xb92, 0xb96, 0xb99, 0xb9b, 0xb9c, 0xb9d, 0xb9e,
    0xba0, 0xba3, 0xba5, 0xba8, 0xbab, 0xbae, 0xbba, 0xbbe, 0xbc3, 0xbc6, 0xbc9, 0xbca, 0xbce,
    0xbd0, 0xbd1, 0xbd7, 0xbd8, 0xbe6, 0xbfb, 0xc00, 0xc0d, 0xc0e, 0xc11, 0xc12, 0xc29, 0xc2a,
    0xc3a, 0xc3c, 0xc45, 0xc46, 0xc49, 0xc4a, 0xc4e, 0xc55, 0xc57, 0xc58, 0xc5b, 0xc5d, 0xc5e,
    0xc60, 0xc64, 0xc66, 0xc70, 0xc77, 0xc8d, 0xc8e, 0xc91, 0xc92, 0xca9, 0xcaa, 0xcb4, 0xcb5,
    0xcba, 0xcbc, 0xcc5, 0xcc6, 0xcc9, 0xcca, 0xcce, 0xcd5, 0xcd7, 0xcdd, 0xcdf, 0xce0, 0xce4,
    0xce6, 0xcf0, 0xcf1, 0xcf4, 0xd00, 0xd0d, 0xd0e, 0xd11, 0xd12, 0xd45, 0xd46, 0xd49, 0xd4a,
    0xd50, 0xd54, 0xd64, 0xd66, 0xd80, 0xd81, 0xd84, 0xd85, 0xd97, 0xd9a, 0xdb2, 0xdb3, 0xdbc,
    0xdbd, 0xdbe, 0xdc0, 0xdc7, 0xdca, 0xdcb, 0xdcf, 0xdd5, 0xdd6, 0xdd7, 0xdd8, 0xde0, 0xde6,
    0xdf0, 0xdf2, 0xdf5, 0xe01, 0xe3b, 0xe3f, 0xe5c, 0xe81, 0xe83, 0xe84, 0xe85, 0xe86, 0xe8b,
    0xe8c, 0xea4, 0xea5, 0xea6, 0xea7, 0xebe, 0xec0, 0xec5, 0xec6, 0xec7, 0xec8, 0xecf, 0xed0,
    0xeda, 0xedc, 0xee0, 0xf00, 0xf48, 0xf49, 0xf6d, 0xf71, 0xf98, 0xf99, 0xfbd, 0xfbe, 0xfcd,
    0xfce, 0xfdb, 0x1000, 0x10c6, 0x10c7, 0x10c8, 0x10cd, 0x10ce, 0x10d0, 0x1249, 0x124a, 0x124e,
    0x1250, 0x1257, 0x1258, 0x1259, 0x125a, 0x125e, 0x1260, 0x1289, 0x128a, 0x128e, 0x1290, 0x12b1,
    0x12b2, 0x12b6, 0x12b8, 0x12bf, 0x12c0, 0x12c1, 0x12c2, 0x12c6, 0x12c8, 0x12d7, 0x12d8, 0x1311,
    0x1312, 0x1316, 0x1318, 0x135b, 0x135d, 0x137d, 0x1380, 0x139a, 0x13a0, 0x13f6, 0x13f8, 0x13fe,
    0x1400, 0x1680, 0x1681, 0x169d, 0x16a0, 0x16f9, 0x1700, 0x1716, 0x171f, 0x1737, 0x1740, 0x1754,
    0x1760, 0x176d, 0x176e, 0x1771, 0x1772, 0x1774, 0x1780, 0x17de, 0x17e0, 0x17ea, 0x17f0, 0x17fa,
    0x1800, 0x180e, 0x180f, 0x181a, 0x1820, 0x1879, 0x1880, 0x18ab, 0x18b0, 0x18f6, 0x1900, 0x191f,
    0x1920, 0x192c, 0x1930, 0x193c, 0x1940, 0x1941, 0x1944, 0x196e, 0x1970, 0x1975, 0x1980, 0x19ac,
    0x19b0, 0x19ca, 0x19d0, 0x19db, 0x19de, 0x1a1c, 0x1a1e, 0x1a5f, 0x1a60, 0x1a7d, 0x1a7f, 0x1a8a,
    0x1a90, 0x1a9a, 0x1aa0, 0x1aae, 0x1ab0, 0x1acf, 0x1b00, 0x1b4d, 0x1b50, 0x1b7f, 0x1b80, 0x1bf4,
    0x1bfc, 0x1c38, 0x1c3b, 0x1c4a, 0x1c4d, 0x1c89, 0x1c90, 0x1cbb, 0x1cbd, 0x1cc8, 0x1cd0, 0x1cfb,
    0x1d00, 0x1f16, 0x1f18, 0x1f1e, 0x1f20, 0x1f46, 0x1f48, 0x1f4e, 0x1f50, 0x1f58, 0x1f59, 0x1f5a,
    0x1f5b, 0x1f5c, 0x1f5d, 0x1f5e, 0x1f5f, 0x1f7e, 0x1f80, 0x1fb5, 0x1fb6, 0x1fc5, 0x1fc6, 0x1fd4,
    0x1fd6, 0x1fdc, 0x1fdd, 0x1ff0, 0x1ff2, 0x1ff5, 0x1ff6, 0x1fff, 0x2010, 0x2028, 0x2030, 0x205f,
    0x2070, 0x2072, 0x2074, 0x208f, 0x2090, 0x209d, 0x20a0, 0x20c1, 0x20d0, 0x20f1, 0x2100, 0x218c,
    0x2190, 0x2427, 0x2440, 0x244b, 0x2460, 0x2b74, 0x2b76, 0x2b96, 0x2b97, 0x2cf4, 0x2cf9, 0x2d26,
    0x2d27, 0x2d28, 0x2d2d, 0x2d2e, 0x2d30, 0x2d68, 0x2d6f, 0x2d71, 0x2d7f, 0x2d97, 0x2da0, 0x2da7,
    0x2da8, 0x2daf, 0x2db0, 0x2db7, 0x2db8, 0x2dbf, 0x2dc0, 0x2dc7, 0x2dc8, 0x2dcf, 0x2dd0, 0x2dd7,
    0x2dd8, 0x2ddf, 0x2de0, 0x2e5e, 0x2e80, 0x2e9a, 0x2e9b, 0x2ef4, 0x2f00, 0x2fd6, 0x2ff0, 0x2ffc,
    0x3001, 0x3040, 0x3041, 0x3097, 0x3099, 0x3100, 0x3105, 0x3130, 0x3131, 0x318f, 0x3190, 0x31e4,
    0x31f0, 0x321f, 0x3220, 0xa48d, 0xa490, 0xa4c7, 0xa4d0, 0xa62c, 0xa640, 0xa6f8, 0xa700, 0xa7cb,
    0xa7d0, 0xa7d2, 0xa7d3, 0xa7d4, 0xa7d5, 0xa7da, 0xa7f2, 0xa82d, 0xa830, 0xa83a, 0xa840, 0xa878,
    0xa880, 0xa8c6, 0xa8ce, 0xa8da, 0xa8e0, 0xa954, 0xa95f, 0xa97d, 0xa980, 0xa9ce, 0xa9cf, 0xa9da,
    0xa9de, 0xa9ff, 0xaa00, 0xaa37, 0xaa40, 0xaa4e, 0xaa50, 0xaa5a, 0xaa5c, 0xaac3, 0xaadb, 0xaaf7,
    0xab01, 0xab07, 0xab09, 0xab0f, 0xab11, 0xab17, 0xab20, 0xab27, 0xab28, 0xab2f, 0xab30, 0xab6c,
    0xab70, 0xabee, 0xabf0, 0xabfa, 0xac00, 0xd7a4, 0xd7b0, 0xd7c7, 0xd7cb, 0xd7fc, 0xf900, 0xfa6e,
    0xfa70, 0xfada, 0xfb00, 0xfb07, 0xfb13, 0xfb18, 0xfb1d, 0xfb37, 0xfb38, 0xfb3d, 0xfb3e, 0xfb3f,
    0xfb40, 0xfb42, 0xfb43, 0xfb45, 0xfb46, 0xfbc3, 0xfbd3, 0xfd90, 0xfd92, 0xfdc8, 0xfdcf, 0xfdd0,
    0xfdf0, 0xfe1a, 0xfe20, 0xfe53, 0xfe54, 0xfe67, 0xfe68, 0xfe6c, 0xfe70, 0xfe75, 0xfe76, 0xfefd,
    0xff01, 0xffbf, 0xffc2, 0xffc8, 0xffca, 0xffd0, 0xffd2, 0xffd8, 0xffda, 0xffdd, 0xffe0, 0xffe7,
    0xffe8, 0xffef, 0xfffc, 0xfffe, 0x10000, 0x1000c, 0x1000d, 0x10027, 0x10028, 0x1003b, 0x1003c,
    0x1003e, 0x1003f, 0x1004e, 0x10050, 0x1005e, 0x10080, 0x100fb, 0x10100, 0x10103, 0x10107,
    0x10134, 0x10137, 0x1018f, 0x10190, 0x1019d, 0x101a0, 0x101a1, 0x101d0, 0x101fe, 0x10280,
    0x1029d, 0x102a0, 0x102d1, 0x102e0, 0x102fc, 0x10300, 0x10324, 0x1032d, 0x1034b, 0x10350,
    0x1037b, 0x10380, 0x1039e, 0x1039f, 0x103c4, 0x103c8, 0x103d6, 0x10400, 0x1049e, 0x104a0,
    0x104aa, 0x104b0, 0x104d4, 0x104d8, 0x104fc, 0x10500, 0x10528, 0x10530, 0x10564, 0x1056f,
    0x1057b, 0x1057c, 0x1058b, 0x1058c, 0x10593, 0x10594, 0x10596, 0x10597, 0x105a2, 0x105a3,
    0x105b2, 0x105b3, 0x105ba, 0x105bb, 0x105bd, 0x10600, 0x10737, 0x10740, 0x10756, 0x10760,
    0x10768, 0x10780, 0x10786, 0x10787, 0x107b1, 0x107b2, 0x107bb, 0x10800, 0x10806, 0x10808,
    0x10809, 0x1080a, 0x10836, 0x10837, 0x10839, 0x1083c, 0x1083d, 0x1083f, 0x10856, 0x10857,
    0x1089f, 0x108a7, 0x108b0, 0x108e0, 0x108f3, 0x108f4, 0x108f6, 0x108fb, 0x1091c, 0x1091f,
    0x1093a, 0x1093f, 0x10940, 0x10980, 0x109b8, 0x109bc, 0x109d0, 0x109d2, 0x10a04, 0x10a05,
    0x10a07, 0x10a0c, 0x10a14, 0x10a15, 0x10a18, 0x10a19, 0x10a36, 0x10a38, 0x10a3b, 0x10a3f,
    0x10a49, 0x10a50, 0x10a59, 0x10a60, 0x10aa0, 0x10ac0, 0x10ae7, 0x10aeb, 0x10af7, 0x10b00,
    0x10b36, 0x10b39, 0x10b56, 0x10b58, 0x10b73, 0x10b78, 0x10b92, 0x10b99, 0x10b9d, 0x10ba9,
    0x10bb0, 0x10c00, 0x10c49, 0x10c80, 0x10cb3, 0x10cc0, 0x10cf3, 0x10cfa, 0x10d28, 0x10d30,
    0x10d3a, 0x10e60, 0x10e7f, 0x10e80, 0x10eaa, 0x10eab, 0x10eae, 0x10eb0, 0x10eb2, 0x10efd,
    0x10f28, 0x10f30, 0x10f5a, 0x10f70, 0x10f8a, 0x10fb0, 0x10fcc, 0x10fe0, 0x10ff7, 0x11000,
    0x1104e, 0x11052, 0x11076, 0x1107f, 0x110bd, 0x110be, 0x110c3, 0x110d0, 0x110e9, 0x110f0,
    0x110fa, 0x11100, 0x11135, 0x11136, 0x11148, 0x11150, 0x11177, 0x11180, 0x111e0, 0x111e1,
    0x111f5, 0x11200, 0x11212, 0x11213, 0x11242, 0x11280, 0x11287, 0x11288, 0x11289, 0x1128a,
    0x1128e, 0x1128f, 0x1129e, 0x1129f, 0x112aa, 0x112b0, 0x112eb, 0x112f0, 0x112fa, 0x11300,
    0x11304, 0x11305, 0x1130d, 0x1130f, 0x11311, 0x11313, 0x11329, 0x1132a, 0x11331, 0x11332,
    0x11334, 0x11335, 0x1133a, 0x1133b, 0x11345, 0x11347, 0x11349, 0x1134b, 0x1134e, 0x11350,
    0x11351, 0x11357, 0x11358, 0x1135d, 0x11364, 0x11366, 0x1136d, 0x11370, 0x11375, 0x11400,
    0x1145c, 0x1145d, 0x11462, 0x11480, 0x114c8, 0x114d0, 0x114da, 0x11580, 0x115b6, 0x115b8,
    0x115de, 0x11600, 0x11645, 0x11650, 0x1165a, 0x11660, 0x1166d, 0x11680, 0x116ba, 0x116c0,
    0x116ca, 0x11700, 0x1171b, 0x1171d, 0x1172c, 0x11730, 0x11747, 0x11800, 0x1183c, 0x118a0,
    0x118f3, 0x118ff, 0x11907, 0x11909, 0x1190a, 0x1190c, 0x11914, 0x11915, 0x11917, 0x11918,
    0x11936, 0x11937, 0x11939, 0x1193b, 0x11947, 0x11950, 0x1195a, 0x119a0, 0x119a8, 0x119aa,
    0x119d8, 0x119da, 0x119e5, 0x11a00, 0x11a48, 0x11a50, 0x11aa3, 0x11ab0, 0x11af9, 0x11b00,
    0x11b0a, 0x11c00, 0x11c09, 0x11c0a, 0x11c37, 0x11c38, 0x11c46, 0x11c50, 0x11c6d, 0x11c70,
    0x11c90, 0x11c92, 0x11ca8, 0x11ca9, 0x11cb7, 0x11d00, 0x11d07, 0x11d08, 0x11d0a, 0x11d0b,
    0x11d37, 0x11d3a, 0x11d3b, 0x11d3c, 0x11d3e, 0x11d3f, 0x11d48, 0x11d50, 0x11d5a, 0x11d60,
    0x11d66, 0x11d67, 0x11d69, 0x11d6a, 0x11d8f, 0x11d90, 0x11d92, 0x11d93, 0x11d99, 0x11da0,
    0x11daa, 0x11ee0, 0x11ef9, 0x11f00, 0x11f11, 0x11f12, 0x11f3b, 0x11f3e, 0x11f5a, 0x11fb0,
    0x11fb1, 0x11fc0, 0x11ff2, 0x11fff, 0x1239a, 0x12400, 0x1246f, 0x12470, 0x12475, 0x12480,
    0x12544, 0x12f90, 0x12ff3, 0x13000, 0x13430, 0x13440, 0x13456, 0x14400, 0x14647, 0x16800,
    0x16a39, 0x16a40, 0x16a5f, 0x16a60, 0x16a6a, 0x16a6e, 0x16abf, 0x16ac0, 0x16aca, 0x16ad0,
    0x16aee, 0x16af0, 0x16af6, 0x16b00, 0x16b46, 0x16b50, 0x16b5a, 0x16b5b, 0x16b62, 0x16b63,
    0x16b78, 0x16b7d, 0x16b90, 0x16e40, 0x16e9b, 0x16f00, 0x16f4b, 0x16f4f, 0x16f88, 0x16f8f,
    0x16fa0, 0x16fe0, 0x16fe5, 0x16ff0, 0x16ff2, 0x17000, 0x187f8, 0x18800, 0x18cd6, 0x18d00,
    0x18d09, 0x1aff0, 0x1aff4, 0x1aff5, 0x1affc, 0x1affd, 0x1afff, 0x1b000, 0x1b123, 0x1b132,
    0x1b133, 0x1b150, 0x1b153, 0x1b155, 0x1b156, 0x1b164, 0x1b168, 0x1b170, 0x1b2fc, 0x1bc00,
    0x1bc6b, 0x1bc70, 0x1bc7d, 0x1bc80, 0x1bc89, 0x1bc90, 0x1bc9a, 0x1bc9c, 0x1bca0, 0x1cf00,
    0x1cf2e, 0x1cf30, 0x1cf47, 0x1cf50, 0x1cfc4, 0x1d000, 0x1d0f6, 0x1d100, 0x1d127, 0x1d129,
    0x1d173, 0x1d17b, 0x1d1eb, 0x1d200, 0x1d246, 0x1d2c0, 0x1d2d4, 0x1d2e0, 0x1d2f4, 0x1d300,
    0x1d357, 0x1d360, 0x1d379, 0x1d400, 0x1d455, 0x1d456, 0x1d49d, 0x1d49e, 0x1d4a0, 0x1d4a2,
    0x1d4a3, 0x1d4a5, 0x1d4a7, 0x1d4a9, 0x1d4ad, 0x1d4ae, 0x1d4ba, 0x1d4bb, 0x1d4bc, 0x1d4bd,
    0x1d4c4, 0x1d4c5, 0x1d506, 0x1d507, 0x1d50b, 0x1d50d, 0x1d515, 0x1d516, 0x1d51d, 0x1d51e,
    0x1d53a, 0x1d53b, 0x1d53f, 0x1d540, 0x1d545, 0x1d546, 0x1d547, 0x1d54a, 0x1d551, 0x1d552,
    0x1d6a6, 0x1d6a8, 0x1d7cc, 0x1d7ce, 0x1da8c, 0x1da9b, 0x1daa0, 0x1daa1, 0x1dab0, 0x1df00,
    0x1df1f, 0x1df25, 0x1df2b, 0x1e000, 0x1e007, 0x1e008, 0x1e019, 0x1e01b, 0x1e022, 0x1e023,
    0x1e025, 0x1e026, 0x1e02b, 0x1e030, 0x1e06e, 0x1e08f, 0x1e090, 0x1e100, 0x1e12d, 0x1e130,
    0x1e13e, 0x1e140, 0x1e14a, 0x1e14e, 0x1e150, 0x1e290, 0x1e2af, 0x1e2c0, 0x1e2fa, 0x1e2ff,
    0x1e300, 0x1e4d0, 0x1e4fa, 0x1e7e0, 0x1e7e7, 0x1e7e8, 0x1e7ec, 0x1e7ed, 0x1e7ef, 0x1e7f0,
    0x1e7ff, 0x1e800, 0x1e8c5, 0x1e8c7, 0x1e8d7, 0x1e900, 0x1e94c, 0x1e950, 0x1e95a, 0x1e95e,
    0x1e960, 0x1ec71, 0x1ecb5, 0x1ed01, 0x1ed3e, 0x1ee00, 0x1ee04, 0x1ee05, 0x1ee20, 0x1ee21,
    0x1ee23, 0x1ee24, 0x1ee25, 0x1ee27, 0x1ee28, 0x1ee29, 0x1ee33, 0x1ee34, 0x1ee38, 0x1ee39,
    0x1ee3a, 0x1ee3b, 0x1ee3c, 0x1ee42, 0x1ee43, 0x1ee47, 0x1ee48, 0x1ee49, 0x1ee4a, 0x1ee4b,
    0x1ee4c, 0x1ee4d, 0x1ee50, 0x1ee51, 0x1ee53, 0x1ee54, 0x1ee55, 0x1ee57, 0x1ee58, 0x1ee59,
    0x1ee5a, 0x1ee5b, 0x1ee5c, 0x1ee5d, 0x1ee5e, 0x1ee5f, 0x1ee60, 0x1ee61, 0x1ee63, 0x1ee64,
    0x1ee65, 0x1ee67, 0x1ee6b, 0x1ee6c, 0x1ee73, 0x1ee74, 0x1ee78, 0x1ee79, 0x1ee7d, 0x1ee7e,
    0x1ee7f, 0x1ee80, 0x1ee8a, 0x1ee8b, 0x1ee9c, 0x1eea1, 0x1eea4, 0x1eea5, 0x1eeaa, 0x1eeab,
    0x1eebc, 0x1eef0, 0x1eef2, 0x1f000, 0x1f02c, 0x1f030, 0x1f094, 0x1f0a0, 0x1f0af, 0x1f0b1,
    0x1f0c0, 0x1f0c1, 0x1f0d0, 0x1f0d1, 0x1f0f6, 0x1f100, 0x1f1ae, 0x1f1e6, 0x1f203, 0x1f210,
    0x1f23c, 0x1f240, 0x1f249, 0x1f250, 0x1f252, 0x1f260, 0x1f266, 0x1f300, 0x1f6d8, 0x1f6dc,
    0x1f6ed, 0x1f6f0, 0x1f6fd, 0x1f700, 0x1f777, 0x1f77b, 0x1f7da, 0x1f7e0, 0x1f7ec, 0x1f7f0,
    0x1f7f1, 0x1f800, 0x1f80c, 0x1f810, 0x1f848, 0x1f850, 0x1f85a, 0x1f860, 0x1f888, 0x1f890,
    0x1f8ae, 0x1f8b0, 0x1f8b2, 0x1f900, 0x1fa54, 0x1fa60, 0x1fa6e, 0x1fa70, 0x1fa7d, 0x1fa80,
    0x1fa89, 0x1fa90, 0x1fabe, 0x1fabf, 0x1fac6, 0x1face, 0x1fadc, 0x1fae0, 0x1fae9, 0x1faf0,
    0x1faf9, 0x1fb00, 0x1fb93, 0x1fb94, 0x1fbcb, 0x1fbf0, 0x1fbfa, 0x20000, 0x2a6e0, 0x2a700,
    0x2b73a, 0x2b740, 0x2b81e, 0x2b820, 0x2cea2, 0x2ceb0, 0x2ebe1, 0x2f800, 0x2fa1e, 0x30000,
    0x3134b, 0x31350, 0x323b0, 0xe0100, 0xe01f0
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envref::ObjectData;
    use crate::Allocatable;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node1".into(),
            host_ip: "10.0.0.1".into(),
            allocatable: Allocatable {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                ephemeral_storage_bytes: 100 << 30,
            },
            pods_dir: "/var/lib/unitlet/pods".into(),
            hardening: Default::default(),
            agent_exe: "/usr/bin/unitlet".into(),
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u-123",
                "labels": {"app": "web", "tier": "front"},
                "annotations": {
                    "note": "say \"hi\"\nbye",
                    "greek": "αβγ",
                    "bell": "ring\u{7}",
                    "tab": "a\tb",
                    "example.com/nul": "x\u{0}y\u{7f}"
                }
            },
            "spec": {
                "initContainers": [{"name": "init", "image": "host"}],
                "containers": [
                    {"name": "app", "image": "host",
                     "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                                   "requests": {"cpu": "250m"}}},
                    {"name": "side", "image": "host"}
                ]
            }
        }))
        .unwrap()
    }

    fn vol(j: Value) -> Volume {
        let mut j = j;
        j["name"] = json!("v");
        serde_json::from_value(j).unwrap()
    }

    fn found(data: &[(&str, &[u8])], binary: &[(&str, &[u8])]) -> Lookup {
        let map = |kv: &[(&str, &[u8])]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect()
        };
        Lookup::Found(Arc::new(ObjectData {
            data: map(data),
            binary: map(binary),
        }))
    }

    fn resolved(entries: Vec<(RefKind, &str, Lookup)>) -> Resolved {
        Resolved(
            entries
                .into_iter()
                .map(|(kind, name, l)| {
                    let r = ObjectRef {
                        kind,
                        name: name.into(),
                    };
                    (r, l)
                })
                .collect(),
        )
    }

    fn run(v: &Volume, r: &Resolved) -> Result<Payload, PayloadError> {
        payload(&pod(), &node(), v, r, &BTreeMap::new())
    }

    /// The payload as `(path, contents, mode)`, sorted by path.
    fn files(p: &Payload) -> Vec<(&str, String, u32)> {
        p.iter()
            .map(|(k, f)| {
                (
                    k.as_str(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                    f.mode,
                )
            })
            .collect()
    }

    fn failed(m: &str) -> Result<Payload, PayloadError> {
        Err(PayloadError::Failed(m.into()))
    }

    #[test]
    fn config_map_data_and_binary_data_become_files() {
        let v = vol(json!({"configMap": {"name": "cm", "defaultMode": 0o600}}));
        let r = resolved(vec![(
            RefKind::ConfigMap,
            "cm",
            found(&[("a.conf", b"x=1\n")], &[("blob", &[0, 159, 255])]),
        )]);
        let p = run(&v, &r).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["a.conf"],
            FileEntry {
                data: b"x=1\n".to_vec(),
                mode: 0o600
            }
        );
        assert_eq!(
            p["blob"],
            FileEntry {
                data: vec![0, 159, 255],
                mode: 0o600
            }
        );
        // Without defaultMode: 0644.
        let v = vol(json!({"configMap": {"name": "cm"}}));
        assert_eq!(run(&v, &r).unwrap()["a.conf"].mode, 0o644);
    }

    #[test]
    fn items_select_keys_with_their_own_modes() {
        let v = vol(
            json!({"configMap": {"name": "cm", "defaultMode": 0o640, "items": [
                {"key": "a", "path": "etc/a.txt", "mode": 0o400},
                {"key": "bin", "path": "b"},
                {"key": "c", "path": "./x//c/", "mode": 0o4755}
            ]}}),
        );
        let r = resolved(vec![(
            RefKind::ConfigMap,
            "cm",
            found(
                &[("a", b"A"), ("c", b"C"), ("unlisted", b"U")],
                &[("bin", b"B")],
            ),
        )]);
        assert_eq!(
            files(&run(&v, &r).unwrap()),
            vec![
                ("b", "B".into(), 0o640),
                ("etc/a.txt", "A".into(), 0o400),
                // Cleaned as the atomic writer cleans; set-user-ID dropped.
                ("x/c", "C".into(), 0o755),
            ]
        );
    }

    #[test]
    fn missing_config_maps_and_keys_follow_optional() {
        let none = resolved(vec![(RefKind::ConfigMap, "cm", Lookup::NotFound)]);
        let v = vol(json!({"configMap": {"name": "cm"}}));
        assert_eq!(run(&v, &none), failed("configmap \"cm\" not found"));
        let v = vol(json!({"configMap": {"name": "cm", "optional": true,
            "items": [{"key": "a", "path": "a"}]}}));
        assert_eq!(run(&v, &none), Ok(Payload::new()));

        let some = resolved(vec![(RefKind::ConfigMap, "cm", found(&[("a", b"1")], &[]))]);
        let items = json!([{"key": "a", "path": "a"}, {"key": "nope", "path": "n"}]);
        let v = vol(json!({"configMap": {"name": "cm", "items": items}}));
        assert_eq!(
            run(&v, &some),
            failed("configmap references non-existent config key: nope")
        );
        let v = vol(json!({"configMap": {"name": "cm", "optional": true, "items": items}}));
        assert_eq!(
            files(&run(&v, &some).unwrap()),
            vec![("a", "1".into(), 0o644)]
        );
    }

    #[test]
    fn secrets_use_their_data_and_the_kubelets_words() {
        let r = resolved(vec![(
            RefKind::Secret,
            "s",
            found(&[("token", b"t0p"), ("ca.crt", b"PEM")], &[]),
        )]);
        let v = vol(json!({"secret": {"secretName": "s", "defaultMode": 0o400}}));
        assert_eq!(
            files(&run(&v, &r).unwrap()),
            vec![
                ("ca.crt", "PEM".into(), 0o400),
                ("token", "t0p".into(), 0o400)
            ]
        );
        let v = vol(json!({"secret": {"secretName": "s", "items": [
            {"key": "token", "path": "auth/token", "mode": 0o440},
            {"key": "missing", "path": "m"}
        ]}}));
        assert_eq!(
            run(&v, &r),
            failed("references non-existent secret key: missing")
        );
        let v = vol(
            json!({"secret": {"secretName": "s", "optional": true, "items": [
                {"key": "token", "path": "auth/token", "mode": 0o440},
                {"key": "missing", "path": "m"}
            ]}}),
        );
        assert_eq!(
            files(&run(&v, &r).unwrap()),
            vec![("auth/token", "t0p".into(), 0o440)]
        );
        let gone = resolved(vec![(RefKind::Secret, "s", Lookup::NotFound)]);
        let v = vol(json!({"secret": {"secretName": "s"}}));
        assert_eq!(run(&v, &gone), failed("secret \"s\" not found"));
        let v = vol(json!({"secret": {"secretName": "s", "optional": true}}));
        assert_eq!(run(&v, &gone), Ok(Payload::new()));
    }

    #[test]
    fn pending_and_failed_lookups_propagate() {
        let v = vol(json!({"secret": {"secretName": "s", "optional": true}}));
        // Nobody looked it up yet: pending.
        assert_eq!(run(&v, &Resolved::default()), Err(PayloadError::Pending));
        let r = resolved(vec![(RefKind::Secret, "s", Lookup::Pending)]);
        assert_eq!(run(&v, &r), Err(PayloadError::Pending));
        // A failed read fails even an optional volume.
        let r = resolved(vec![(
            RefKind::Secret,
            "s",
            Lookup::Failed("secrets \"s\" is forbidden".into()),
        )]);
        assert_eq!(run(&v, &r), failed("secrets \"s\" is forbidden"));
    }

    #[test]
    fn downward_api_formats_labels_and_annotations_as_the_kubelet() {
        let v = vol(json!({"downwardAPI": {"defaultMode": 0o444, "items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}, "mode": 0o400},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "none", "fieldRef": {"fieldPath": "metadata.annotations['absent']"}}
        ]}}));
        let p = run(&v, &Resolved::default()).unwrap();
        let get = |k: &str| String::from_utf8(p[k].data.clone()).unwrap();
        assert_eq!(get("labels"), "app=\"web\"\ntier=\"front\"");
        assert_eq!(
            get("annotations"),
            concat!(
                "bell=\"ring\\a\"\n",
                "example.com/nul=\"x\\x00y\\x7f\"\n",
                "greek=\"αβγ\"\n",
                "note=\"say \\\"hi\\\"\\nbye\"\n",
                "tab=\"a\\tb\""
            )
        );
        assert_eq!(p["labels"].mode, 0o444);
        assert_eq!(p["annotations"].mode, 0o400);
        assert_eq!(get("name"), "web");
        assert_eq!(get("ns"), "shop");
        assert_eq!(get("uid"), "u-123");
        assert_eq!(get("app"), "web");
        assert_eq!(get("none"), "");
        assert_eq!(p.len(), 7);
    }

    #[test]
    fn downward_api_empty_maps_are_empty_files() {
        let mut bare = pod();
        bare.metadata.labels = None;
        let v = vol(json!({"downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
        ]}}));
        let p = payload(&bare, &node(), &v, &Resolved::default(), &BTreeMap::new()).unwrap();
        assert_eq!(p["labels"].data, b"");
        assert_eq!(p["labels"].mode, 0o644);
    }

    #[test]
    fn downward_api_resource_fields_use_the_named_container() {
        let v = vol(json!({"downwardAPI": {"items": [
            {"path": "cpu_m", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu"}},
            {"path": "req_cpu", "resourceFieldRef": {"containerName": "app", "resource": "requests.cpu", "divisor": "1m"}},
            {"path": "mem_mi", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "side_mem", "resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Gi"}},
            {"path": "init_cpu", "resourceFieldRef": {"containerName": "init", "resource": "limits.cpu", "divisor": "1m"}}
        ]}}));
        assert_eq!(
            files(&run(&v, &Resolved::default()).unwrap()),
            vec![
                ("cpu", "1".into(), 0o644), // 500m rounded up to whole cores
                ("cpu_m", "500".into(), 0o644),
                ("init_cpu", "4000".into(), 0o644), // no limit: allocatable
                ("mem_mi", "64".into(), 0o644),
                ("req_cpu", "250".into(), 0o644),
                ("side_mem", "8".into(), 0o644),
            ]
        );
        // Every item is tried; all errors are reported together.
        let v = vol(json!({"downwardAPI": {"items": [
            {"path": "a", "resourceFieldRef": {"containerName": "nope", "resource": "limits.cpu"}},
            {"path": "b", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "c", "fieldRef": {"fieldPath": "metadata.name"}}
        ]}}));
        assert_eq!(
            run(&v, &Resolved::default()),
            failed("[container nope not found, unsupported fieldPath: spec.nodeName]")
        );
    }

    fn projected_volume() -> Volume {
        vol(json!({"projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cm"}},
            {"secret": {"name": "s", "items": [{"key": "k", "path": "dup"}, {"key": "k", "path": "own", "mode": 0o400}]}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"serviceAccountToken": {"path": "token", "audience": "vault"}},
            {"serviceAccountToken": {"path": "kube/token", "expirationSeconds": 7200}}
        ]}}))
    }

    fn projected_objects() -> Resolved {
        resolved(vec![
            (
                RefKind::ConfigMap,
                "cm",
                found(&[("dup", b"from configmap"), ("ca", b"CA")], &[]),
            ),
            (RefKind::Secret, "s", found(&[("k", b"from secret")], &[])),
        ])
    }

    #[test]
    fn projected_volumes_combine_sources_and_tokens() {
        let v = projected_volume();
        let vault = TokenRef {
            audience: "vault".into(),
            expiration_seconds: 3600,
        };
        let kube = TokenRef {
            audience: String::new(),
            expiration_seconds: 7200,
        };
        assert_eq!(token_refs(&v), vec![vault.clone(), kube.clone()]);
        let tokens: BTreeMap<TokenRef, String> = [
            (vault.clone(), "jwt-vault".to_string()),
            (kube, "jwt-kube".into()),
        ]
        .into();
        let p = payload(&pod(), &node(), &v, &projected_objects(), &tokens).unwrap();
        assert_eq!(
            files(&p),
            vec![
                ("ca", "CA".into(), 0o440),
                // A later source's file replaces an earlier one's, as in
                // the kubelet's payload map.
                ("dup", "from secret".into(), 0o440),
                ("kube/token", "jwt-kube".into(), 0o440),
                ("name", "web".into(), 0o440),
                ("own", "from secret".into(), 0o400),
                ("token", "jwt-vault".into(), 0o440),
            ]
        );
        // A token not requested yet: pending.
        let some: BTreeMap<TokenRef, String> = [(vault, "jwt-vault".to_string())].into();
        assert_eq!(
            payload(&pod(), &node(), &v, &projected_objects(), &some),
            Err(PayloadError::Pending)
        );
    }

    #[test]
    fn projected_failures_are_aggregated_and_beat_pending() {
        let v = vol(json!({"projected": {"sources": [
            {"configMap": {"name": "a"}},
            {"secret": {"name": "b"}},
            {"secret": {"name": "c", "optional": true}},
            {"configMap": {"name": "a"}},
            {"serviceAccountToken": {"path": "token"}}
        ]}}));
        let r = resolved(vec![
            (RefKind::ConfigMap, "a", Lookup::NotFound),
            (RefKind::Secret, "b", Lookup::NotFound),
            (RefKind::Secret, "c", Lookup::NotFound),
        ]);
        assert_eq!(
            run(&v, &r),
            failed("[configmap \"a\" not found, secret \"b\" not found]")
        );
        let v = vol(json!({"projected": {"sources": [
            {"clusterTrustBundle": {"signerName": "example.com/x", "path": "ca.pem"}}
        ]}}));
        let Err(PayloadError::Failed(m)) = run(&v, &Resolved::default()) else {
            panic!("a trust bundle must fail");
        };
        assert!(m.contains("not supported by unitlet"), "{m}");
    }

    #[test]
    fn bad_paths_are_refused() {
        let r = resolved(vec![(RefKind::ConfigMap, "cm", found(&[("k", b"v")], &[]))]);
        let with = |path: &str| {
            let v =
                vol(json!({"configMap": {"name": "cm", "items": [{"key": "k", "path": path}]}}));
            run(&v, &r)
        };
        assert_eq!(
            with("../x"),
            failed("invalid path: must not contain '..': ../x")
        );
        assert_eq!(
            with("a/../b"),
            failed("invalid path: must not contain '..': a/../b")
        );
        assert_eq!(
            with("/etc/x"),
            failed("invalid path: must be relative path: /etc/x")
        );
        assert_eq!(
            with("..data/x"),
            failed("invalid path: must not start with '..': ..data/x")
        );
        assert_eq!(with(""), failed("invalid path: must not be empty: \"\""));
        assert_eq!(
            with("./"),
            failed("invalid path: must name a file, not the volume's directory: ./")
        );
        let long = "a".repeat(256);
        let Err(PayloadError::Failed(m)) = with(&long) else {
            panic!("a 256-byte name must fail");
        };
        assert!(
            m.starts_with(
                "invalid path: filenames must be less than or equal to 255 characters: aaaa"
            ),
            "{m}"
        );
        let deep = ["b"; 2049].join("/"); // 4097 bytes
        let Err(PayloadError::Failed(m)) = with(&deep) else {
            panic!("a 4097-byte path must fail");
        };
        assert!(
            m.starts_with("invalid path: must be less than or equal to 4096 characters: b/b/"),
            "{m}"
        );
        // Allowed: names that merely contain dots.
        assert!(with("..").is_err());
        assert_eq!(
            files(&with("a..b/.c").unwrap()),
            vec![("a..b/.c", "v".into(), 0o644)]
        );
        assert_eq!(files(&with(&"c".repeat(255)).unwrap())[0].0.len(), 255);
        // A file that another file needs as its directory.
        let v = vol(json!({"configMap": {"name": "cm", "items": [
            {"key": "k", "path": "a"}, {"key": "k", "path": "a/b"}
        ]}}));
        assert_eq!(
            run(&v, &r),
            failed("invalid payload: \"a\" is a file, but \"a/b\" needs it to be a directory")
        );
    }

    #[test]
    fn references_are_listed_once_in_order() {
        let v = projected_volume();
        let names: Vec<(RefKind, String)> = references(&v)
            .into_iter()
            .map(|r| (r.kind, r.name))
            .collect();
        assert_eq!(
            names,
            vec![
                (RefKind::ConfigMap, "cm".to_string()),
                (RefKind::Secret, "s".into())
            ]
        );
        let v = vol(json!({"projected": {"sources": [
            {"secret": {"name": "x"}}, {"configMap": {"name": "x"}}, {"secret": {"name": "x"}}
        ]}}));
        assert_eq!(references(&v).len(), 2);
        let v = vol(json!({"secret": {"secretName": "s"}}));
        assert_eq!(
            references(&v),
            vec![ObjectRef {
                kind: RefKind::Secret,
                name: "s".into()
            }]
        );
        let v = vol(json!({"emptyDir": {}}));
        assert!(references(&v).is_empty());
        assert!(token_refs(&v).is_empty());
        assert!(!is_payload(&v));
        assert_eq!(run(&v, &Resolved::default()), Ok(Payload::new()));
        for kind in [
            json!({"configMap": {"name": "x"}}),
            json!({"secret": {"secretName": "x"}}),
            json!({"downwardAPI": {}}),
            json!({"projected": {"sources": []}}),
        ] {
            assert!(is_payload(&vol(kind)));
        }
        // The same token twice is requested once.
        let v = vol(json!({"projected": {"sources": [
            {"serviceAccountToken": {"path": "a", "expirationSeconds": 3600}},
            {"serviceAccountToken": {"path": "b"}}
        ]}}));
        assert_eq!(
            token_refs(&v),
            vec![TokenRef {
                audience: String::new(),
                expiration_seconds: 3600
            }]
        );
    }

    #[test]
    fn go_quote_matches_go() {
        // Each right-hand side is what Go's strconv.Quote printed.
        let table: &[(&str, &str)] = &[
            ("", r#""""#),
            ("plain", r#""plain""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("back\\slash", r#""back\\slash""#),
            ("a\nb\tc\r", r#""a\nb\tc\r""#),
            ("\u{7}\u{8}\u{c}\u{b}", r#""\a\b\f\v""#),
            ("\u{0}\u{1b}\u{7f}", r#""\x00\x1b\x7f""#),
            ("héllo wörld ✓ 日本", "\"héllo wörld ✓ 日本\""),
            ("\u{85}", r#""\u0085""#),
            ("\u{a0}", r#""\u00a0""#),
            ("\u{ad}", r#""\u00ad""#),
            ("\u{200b}", r#""\u200b""#),
            ("\u{2028}", r#""\u2028""#),
            ("\u{feff}", r#""\ufeff""#),
            ("\u{e000}", r#""\ue000""#),
            ("\u{1f600}", "\"\u{1f600}\""),
            ("\u{e0001}", r#""\U000e0001""#),
            ("\u{10ffff}", r#""\U0010ffff""#),
            ("\u{3000}", r#""\u3000""#),
            ("e\u{301}", "\"e\u{301}\""),
            ("it's", r#""it's""#),
            ("\u{fffd}", "\"\u{fffd}\""),
            ("a b", r#""a b""#),
            // Assigned in Unicode 15.0 (Go 1.21+ prints it as it is).
            ("\u{1fae8}", "\"\u{1fae8}\""),
        ];
        for (input, want) in table {
            assert_eq!(go_quote(input), *want, "quoting {input:?}");
        }
    }

    #[test]
    fn printable_table_is_sane() {
        assert!(PRINTABLE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(PRINTABLE.len() % 2, 0);
        for c in [
            'a',
            'Z',
            '0',
            ' ',
            '~',
            'é',
            'ß',
            '日',
            '\u{10fffd}',
            '\u{1f600}',
        ] {
            assert_eq!(is_print(c), c != '\u{10fffd}', "{c:?}");
        }
        for n in 0..=0x10ffffu32 {
            let Some(c) = char::from_u32(n) else { continue };
            if c.is_control() || (c.is_whitespace() && c != ' ') {
                assert!(!is_print(c), "U+{n:04X}");
            }
        }
    }

    #[test]
    fn validation_follows_the_api_server() {
        let bad = |j: Value| validate(&vol(j)).unwrap_err();
        let field = |j: Value| bad(j).0;
        assert_eq!(validate(&projected_volume()), Ok(()));
        assert_eq!(validate(&vol(json!({"emptyDir": {}}))), Ok(()));
        assert_eq!(field(json!({"configMap": {"name": ""}})), "configMap.name");
        assert_eq!(
            field(json!({"configMap": {"name": "x", "defaultMode": 0o1777}})),
            "configMap.defaultMode"
        );
        assert_eq!(
            field(
                json!({"secret": {"secretName": "x", "items": [{"key": "k", "path": "p", "mode": -1}]}})
            ),
            "secret.items[0].mode"
        );
        assert_eq!(field(json!({"secret": {}})), "secret.secretName");
        assert_eq!(
            bad(
                json!({"configMap": {"name": "x", "items": [{"key": "a", "path": "ok"}, {"key": "k", "path": "../p"}]}})
            ),
            (
                "configMap.items[1].path".to_string(),
                "invalid path: must not contain '..': ../p".to_string()
            )
        );
        assert_eq!(
            field(json!({"configMap": {"name": "x", "items": [{"key": "", "path": "p"}]}})),
            "configMap.items[0].key"
        );
        // The downward API in a volume knows only metadata.
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "spec.nodeName"}}]}})
            ),
            "downwardAPI.items[0].fieldRef.fieldPath"
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name['x']"}}]}})
            ),
            "downwardAPI.items[0].fieldRef.fieldPath"
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.labels['-bad']"}}]}})
            ),
            "downwardAPI.items[0].fieldRef.fieldPath"
        );
        assert_eq!(
            validate(&vol(json!({"downwardAPI": {"items": [
                {"path": "l", "fieldRef": {"fieldPath": "metadata.labels['example.com/App_1']"}},
                {"path": "a", "fieldRef": {"fieldPath": "metadata.annotations['Example.COM/x']"}},
                {"path": "c", "resourceFieldRef": {"containerName": "app", "resource": "requests.memory", "divisor": "1Mi"}}
            ]}}))),
            Ok(())
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "n", "fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}]}})
            ),
            "downwardAPI.items[0].fieldRef.apiVersion"
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "c", "resourceFieldRef": {"resource": "limits.cpu"}}]}})
            ),
            "downwardAPI.items[0].resourceFieldRef.containerName"
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "c", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1Mi"}}]}})
            ),
            "downwardAPI.items[0].resourceFieldRef.divisor"
        );
        assert_eq!(
            field(
                json!({"downwardAPI": {"items": [{"path": "c", "resourceFieldRef": {"containerName": "app", "resource": "limits.hugepages-2Mi"}}]}})
            ),
            "downwardAPI.items[0].resourceFieldRef.resource"
        );
        assert_eq!(
            field(json!({"downwardAPI": {"items": [{"path": "c"}]}})),
            "downwardAPI.items[0]"
        );
        assert_eq!(
            bad(
                json!({"projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 599}}]}})
            ),
            (
                "projected.sources[0].serviceAccountToken.expirationSeconds".to_string(),
                "599: may not specify a duration less than 10 minutes".to_string()
            )
        );
        assert_eq!(
            validate(&vol(
                json!({"projected": {"sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 600}}]}})
            )),
            Ok(())
        );
        assert_eq!(
            field(json!({"projected": {"sources": [{"serviceAccountToken": {"path": "/t"}}]}})),
            "projected.sources[0].serviceAccountToken.path"
        );
        assert_eq!(
            bad(json!({"projected": {"sources": [
                {"configMap": {"name": "a", "items": [{"key": "k", "path": "same"}]}},
                {"downwardAPI": {"items": [{"path": "same", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ]}})),
            (
                "projected.sources[1].downwardAPI.items[0].path".to_string(),
                "\"same\": conflicting duplicate paths".to_string()
            )
        );
        // Token paths are not part of the API server's duplicate check.
        assert_eq!(
            validate(&vol(json!({"projected": {"sources": [
                {"configMap": {"name": "a", "items": [{"key": "k", "path": "same"}]}},
                {"serviceAccountToken": {"path": "same"}}
            ]}}))),
            Ok(())
        );
        assert_eq!(
            field(
                json!({"projected": {"sources": [{"secret": {"name": "s"}, "configMap": {"name": "c"}}]}})
            ),
            "projected.sources[0]"
        );
        assert_eq!(
            field(
                json!({"projected": {"sources": [{"clusterTrustBundle": {"signerName": "example.com/x", "path": "ca"}}]}})
            ),
            "projected.sources[0].clusterTrustBundle"
        );
    }
}
