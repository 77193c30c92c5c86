//! From manifest bytes to an admitted Pod: parsing, strict validation and
//! static-pod defaulting.
//!
//! Strictness follows `kubectl --validate=strict`: unknown fields and wrong
//! types are errors that name the field path. Fields Kubernetes defines but
//! unitlet cannot honour yet are errors too, because silently ignoring a
//! probe or a volume is worse than refusing the pod.

pub(crate) use super::rules::is_dns_label;
pub use super::rules::{is_env_name, HOST_IMAGE, MAX_ARG_STRLEN};
use super::unit::capability_number;
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, EnvVar, Pod, PodSecurityContext, SELinuxOptions, SeccompProfile,
    SecurityContext, WindowsSecurityContextOptions,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// Budget for argv plus environment of one process; Linux allows a quarter of the stack limit (2 MiB by default).
pub const MAX_ARG_TOTAL: usize = 1536 * 1024;
/// Largest manifest file accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Most values (mappings, lists and scalars, keys included, and what
/// YAML aliases expand to) one manifest may hold. A pod with 10,000
/// environment variables holds about 50,000; the cap keeps decoding a
/// hostile file to a tenth of a second and some MiB in a release build
/// (refusing one at serde_saphyr's own default, 250,000, took 0.4 s).
pub const MAX_MANIFEST_VALUES: usize = 100_000;
/// Deepest nesting of mappings and lists in a manifest: a Pod needs about
/// a dozen levels; the cap keeps recursive decoding (and dropping) of a
/// document far from the end of a thread's stack.
pub const MAX_MANIFEST_DEPTH: usize = 64;
/// Most text (scalar bytes, with what YAML aliases expand to) a YAML
/// manifest may decode to: twice what a file of the largest size holds,
/// so aliases can share text but not multiply it.
pub const MAX_MANIFEST_TEXT: usize = 2 * MAX_MANIFEST_BYTES;

/// A manifest that cannot be admitted, with enough context for the user to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// `namespace/name` when known.
    pub pod: Option<String>,
    /// Container name when the problem is inside one container.
    pub container: Option<String>,
    /// JSON path of the offending field (empty for whole-document problems).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.pod {
            write!(f, "pod {p}: ")?;
        }
        if let Some(c) = &self.container {
            write!(f, "container {c:?}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "field {}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        pod: None,
        container: None,
        field: field.into(),
        message: message.into(),
    }
}

/// A pod this node should run (or, once its deletion is asked, stop):
/// validated, defaulted, with its UID. Static pods come from manifest files;
/// in cluster mode, pods bound to the node come from the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    /// The defaulted pod (namespace, uid and static-pod annotations set).
    pub pod: std::sync::Arc<Pod>,
    /// `metadata.uid`: derived from node, path and content for a static
    /// pod, assigned by the API server otherwise.
    pub uid: String,
    /// The API server asked for the pod's deletion (`deletionTimestamp`):
    /// stop it within this many seconds instead of running it.
    pub deletion_grace_s: Option<u64>,
    /// An update of this (running) pod that unitlet cannot apply: `pod` is
    /// the version before it, which keeps running, and this says which
    /// field and why (reported as a Warning and in the status message).
    pub update_error: Option<String>,
    /// The API server shows the pod in a terminal phase (Succeeded or
    /// Failed): it is never started here (again), and once this node has
    /// ended it too, what it held is collected. Always false for
    /// manifests.
    pub terminal: bool,
}

impl StaticPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        pod_key(&self.pod)
    }
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// What one manifest file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A Pod.
    Pod(Box<StaticPod>),
    /// A ConfigMap, Secret, PersistentVolumeClaim or PersistentVolume that
    /// standalone pods may name (the directory stands in for the API).
    Object {
        /// Its namespace (empty for a PersistentVolume).
        namespace: String,
        /// Its kind and name.
        r: super::envref::ObjectRef,
        /// What unitlet reads of it.
        data: super::envref::ObjectData,
    },
}

/// The kinds a manifest file may hold besides Pod.
const OBJECT_KINDS: [&str; 4] = [
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "PersistentVolume",
];

/// Parses one manifest file's bytes: a Pod, or an object pods may name.
/// `source` is the file path (part of a pod's UID, as for kubelet static
/// pods); `is_json` selects the JSON decoder.
pub fn parse_document(
    bytes: &[u8],
    source: &str,
    node_name: &str,
    is_json: bool,
) -> Result<Document, ManifestError> {
    let value = decode_value(bytes, is_json)?;
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if !OBJECT_KINDS.contains(&kind) {
        return pod_from_value(value, source, node_name).map(|p| Document::Pod(Box::new(p)));
    }
    parse_object(value)
}

/// Decodes an object document, strictly, as the API server would.
fn parse_object(value: Value) -> Result<Document, ManifestError> {
    use super::envref::{
        claim_data, config_map_data, secret_data, volume_data, ObjectRef, RefKind,
    };
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
        value: &Value,
    ) -> Result<T, ManifestError> {
        let t: T = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        let back = serde_json::to_value(&t).expect("an API object serializes");
        if let Some(path) = first_unknown(value, &back, String::new()) {
            return Err(err(
                path,
                "unknown field; check its spelling and indentation",
            ));
        }
        Ok(t)
    }
    if value.get("apiVersion").and_then(Value::as_str) != Some("v1") {
        return Err(err("apiVersion", "use apiVersion: v1"));
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let (meta, r_kind, data) = match kind {
        "ConfigMap" => {
            let o: ConfigMap = typed(&value)?;
            (o.metadata.clone(), RefKind::ConfigMap, config_map_data(&o))
        }
        "Secret" => {
            let mut o: Secret = typed(&value)?;
            // The API server folds `stringData` into `data`.
            for (k, v) in o.string_data.take().into_iter().flatten() {
                o.data
                    .get_or_insert_with(Default::default)
                    .insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
            (o.metadata.clone(), RefKind::Secret, secret_data(&o))
        }
        "PersistentVolumeClaim" => {
            let o: PersistentVolumeClaim = typed(&value)?;
            let mut data = claim_data(&o);
            // No controller binds claims here: one naming its volume is bound.
            if data.data.contains_key(super::envref::CLAIM_VOLUME) {
                data.data
                    .insert(super::envref::CLAIM_PHASE.into(), b"Bound".to_vec());
            }
            (o.metadata.clone(), RefKind::PersistentVolumeClaim, data)
        }
        _ => {
            let o: PersistentVolume = typed(&value)?;
            (
                o.metadata.clone(),
                RefKind::PersistentVolume,
                volume_data(&o),
            )
        }
    };
    let name = meta.name.clone().unwrap_or_default();
    if !is_dns_subdomain(&name) {
        return Err(err(
            "metadata.name",
            format!("{name:?} is not a valid name"),
        ));
    }
    let namespace = if r_kind == RefKind::PersistentVolume {
        String::new()
    } else {
        meta.namespace.clone().unwrap_or_else(|| "default".into())
    };
    Ok(Document::Object {
        namespace,
        r: ObjectRef { kind: r_kind, name },
        data,
    })
}

/// Parses one manifest file's bytes that must hold a Pod (see [`parse_document`]).
pub fn parse_manifest(
    bytes: &[u8],
    source: &str,
    node_name: &str,
    is_json: bool,
) -> Result<StaticPod, ManifestError> {
    let value = decode_value(bytes, is_json)?;
    pod_from_value(value, source, node_name)
}

/// Refuses a manifest of `len` bytes if it is over [`MAX_MANIFEST_BYTES`]
/// (the manifest directory checks a file's size before reading it).
pub fn check_manifest_size(len: u64) -> Result<(), ManifestError> {
    if len > MAX_MANIFEST_BYTES as u64 {
        return Err(err(
            "",
            format!(
                "manifest is {len} bytes, over the limit of {MAX_MANIFEST_BYTES} (4 MiB); a Pod manifest is far smaller: put large data in a file the pod mounts (hostPath) instead"
            ),
        ));
    }
    Ok(())
}

/// One document of a manifest file, as JSON.
fn decode_value(bytes: &[u8], is_json: bool) -> Result<Value, ManifestError> {
    check_manifest_size(bytes.len() as u64)?;
    let text = std::str::from_utf8(bytes).map_err(|e| not_utf8(bytes, e))?;
    let value: Value = if is_json {
        check_json_shape(text)?;
        serde_json::from_str(text).map_err(|e| err("", format!("invalid JSON: {e}")))?
    } else {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple_with_options(text, yaml_options()).map_err(yaml_error)?;
        let mut docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        match docs.len() {
            0 => return Err(err("", "manifest is empty; it must hold exactly one Pod")),
            1 => docs.remove(0),
            n => {
                return Err(err(
                    "",
                    format!("manifest holds {n} documents; put exactly one Pod in each file"),
                ))
            }
        }
    };
    Ok(value)
}

/// How manifests are read as YAML: YAML 1.1 octal (`defaultMode: 0400`),
/// as kubectl reads it, and a budget that keeps a hostile file (deep
/// nesting, alias bombs) from costing more than a few tens of MiB or
/// deep recursion: it is refused once over the budget, before it is built.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::options! {
        legacy_octal_numbers: true,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_MANIFEST_VALUES,
            max_depth: MAX_MANIFEST_DEPTH,
            flow_nesting_limit: MAX_MANIFEST_DEPTH,
            max_total_scalar_bytes: MAX_MANIFEST_TEXT,
        },
    };
    o.alias_limits.max_total_replayed_events = MAX_MANIFEST_VALUES;
    o
}

/// The error for bytes that are not UTF-8, saying where.
fn not_utf8(bytes: &[u8], e: std::str::Utf8Error) -> ManifestError {
    let good = &bytes[..e.valid_up_to()];
    let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    // The prefix is valid UTF-8: count characters, not bytes.
    let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
    err(
        "",
        format!(
            "manifest is not UTF-8 text: byte 0x{:02x} at line {line}, column {column} (byte offset {}) is not valid UTF-8; save the file as UTF-8 (e.g. iconv -t UTF-8)",
            bytes[e.valid_up_to()],
            e.valid_up_to()
        ),
    )
}

/// A YAML decoding error, with the manifest limits it ran into spelled out.
fn yaml_error(e: serde_saphyr::Error) -> ManifestError {
    use serde_saphyr::budget::BudgetBreach;
    use serde_saphyr::granit_parser::ErrorKind;
    use serde_saphyr::localizer::ExternalMessageSource;
    use serde_saphyr::Error as E;
    let mut inner = &e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let at = e
        .location()
        .map(|l| format!(" (at line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    let message = match inner {
        E::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } => too_deep(&at),
        E::ExternalMessage { source, .. }
            if matches!(&**source, ExternalMessageSource::Parser(scan) if matches!(scan.kind(), ErrorKind::RecursionLimitExceeded)) =>
        {
            too_deep(&at)
        }
        E::Budget {
            breach: BudgetBreach::Nodes { .. },
            ..
        }
        | E::AliasReplayLimitExceeded { .. } => too_many_values(&at, " (counting what YAML aliases expand to)"),
        E::Budget {
            breach: BudgetBreach::ScalarBytes { .. },
            ..
        } => format!("manifest text adds up to more than {MAX_MANIFEST_TEXT} bytes once YAML aliases are expanded{at}; a Pod needs far less: use fewer aliases (*name) to long text"),
        E::Budget {
            breach:
                BudgetBreach::Aliases { .. }
                | BudgetBreach::Anchors { .. }
                | BudgetBreach::AliasAnchorRatio { .. }
                | BudgetBreach::RecordedAnchorEvents { .. }
                | BudgetBreach::RecordedAnchorBytes { .. },
            ..
        }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => format!("manifest uses more YAML anchors and aliases than a Pod needs{at} ({}); write the values out instead", e.without_snippet()),
        _ => format!("invalid YAML: {e}"),
    };
    err("", message)
}

fn too_deep(at: &str) -> String {
    format!("mappings and lists nest more than {MAX_MANIFEST_DEPTH} levels deep{at}; a Pod needs far fewer: check the indentation and brackets")
}

fn too_many_values(at: &str, what: &str) -> String {
    format!("manifest holds more than {MAX_MANIFEST_VALUES} values{what}{at}; a Pod needs far fewer: remove what the pod does not need")
}

/// Refuses JSON that nests deeper or holds more values than a YAML
/// manifest may ([`MAX_MANIFEST_DEPTH`], [`MAX_MANIFEST_VALUES`]), in one
/// pass over the text before it is decoded: serde_json checks neither
/// (only a recursion limit of 128), and a 4 MiB file of `[0,0,…]` decodes
/// to 64 MiB.
fn check_json_shape(text: &str) -> Result<(), ManifestError> {
    let (mut depth, mut values, mut line, mut line_start) = (0usize, 1usize, 1usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        let at = || {
            let column = text[line_start..i].chars().count() + 1;
            format!(" (at line {line}, column {column})")
        };
        match b {
            b'"' => in_string = true,
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_MANIFEST_DEPTH {
                    return Err(err("", too_deep(&at())));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            // Every value but the first follows a comma or a colon.
            b',' | b':' => {
                values += 1;
                if values > MAX_MANIFEST_VALUES {
                    return Err(err("", too_many_values(&at(), "")));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A static pod from a decoded manifest document.
fn pod_from_value(value: Value, source: &str, node_name: &str) -> Result<StaticPod, ManifestError> {
    // CPU and memory are left out of the UID: a manifest whose resources
    // change is the same pod, resized in place (as `pods/resize` does in a
    // cluster), not a new one.
    let mut sizeless = value.clone();
    if let Some(spec) = sizeless.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("resources");
        for list in ["containers", "initContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(c) = c.as_object_mut() {
                    c.remove("resources");
                }
            }
        }
    }
    let canonical = serde_json::to_vec(&sizeless).expect("a JSON value serializes");
    let context = error_context(&value);
    let mut pod = decode_pod(value).map_err(context)?;
    let namespace = pod
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into())
        .clone();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    // ConfigMaps and Secrets come from the same directory in standalone
    // mode; a cluster node refuses them in static pods (`node_static_pod`).
    validate_with(&pod, true).map_err(|mut e| {
        e.pod.get_or_insert(key.clone());
        e
    })?;
    // The UID follows the kubelet's static-pod rule (node, source, content),
    // hashed over the normalized document so whitespace edits are no change.
    let mut h = Sha256::new();
    h.update(b"host:");
    h.update(node_name.as_bytes());
    h.update(b"\0file:");
    h.update(source.as_bytes());
    h.update(b"\0");
    h.update(&canonical);
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    pod.metadata.uid = Some(uid.clone());
    let ann = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.hash".into(), uid.clone());
    let spec = pod.spec.as_mut().expect("validated");
    spec.node_name = Some(node_name.to_string());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    pod.status = None;
    Ok(StaticPod {
        pod: std::sync::Arc::new(pod),
        uid,
        deletion_grace_s: None,
        update_error: None,
        terminal: false,
    })
}

/// A static pod as a cluster node runs it: named `<name>-<node>`, as the
/// kubelet names static pods and their mirror pods, so the same manifest
/// on several nodes does not collide in the API.
pub fn node_static_pod(mut p: StaticPod, node_name: &str) -> Result<StaticPod, ManifestError> {
    let name = format!(
        "{}-{}",
        p.pod.metadata.name.as_deref().unwrap_or(""),
        node_name.to_ascii_lowercase()
    );
    if !is_dns_subdomain(&name) {
        let mut e = err(
            "metadata.name",
            format!("{name:?} (the name with the node's appended, as for every static pod in cluster mode) is not a valid pod name; shorten the name"),
        );
        e.pod = Some(p.key());
        return Err(e);
    }
    validate_with(&p.pod, false).map_err(|mut e| {
        e.pod = Some(p.key());
        e
    })?;
    std::sync::Arc::make_mut(&mut p.pod).metadata.name = Some(name);
    Ok(p)
}

/// Names the pod and container of a decoding error from the raw document,
/// since the typed pod does not exist yet. Keeps the container names, not
/// a copy of the document.
fn error_context(value: &Value) -> impl FnOnce(ManifestError) -> ManifestError {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let ns = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let names = |list: &str| -> Vec<Option<String>> {
        value
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let containers = [
        ("containers", names("containers")),
        ("initContainers", names("initContainers")),
    ];
    move |mut e| {
        e.pod = name.map(|n| format!("{ns}/{n}"));
        for (list, names) in containers {
            let prefix = format!("spec.{list}[");
            let rest = e.field.replace(&format!("spec.{list}.["), &prefix);
            if let Some(idx) = rest
                .strip_prefix(&prefix)
                .and_then(|r| r.split(']').next())
                .and_then(|i| i.parse::<usize>().ok())
            {
                e.container = names.get(idx).cloned().flatten();
            }
        }
        e
    }
}

/// Decodes a JSON value into a Pod, reporting wrong types and unknown fields by path.
fn decode_pod(value: Value) -> Result<Pod, ManifestError> {
    match value.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => {}
        Some(other) => {
            return Err(err(
                "apiVersion",
                format!("{other:?} is not supported; use apiVersion: v1"),
            ))
        }
        None => return Err(err("apiVersion", "missing; use apiVersion: v1")),
    }
    match value.get("kind").and_then(Value::as_str) {
        Some("Pod") => {}
        Some(other) => {
            return Err(err(
                "kind",
                format!("{other:?} is not supported; a manifest holds one Pod, ConfigMap, Secret, PersistentVolumeClaim or PersistentVolume"),
            ))
        }
        None => return Err(err("kind", "missing; use kind: Pod")),
    }
    let pod: Pod = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        err(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })?;
    let back = serde_json::to_value(&pod).expect("a Pod serializes");
    if let Some(path) = first_unknown(&value, &back, String::new()) {
        return Err(err(
            path,
            "unknown field; check its spelling and indentation against the Pod v1 API",
        ));
    }
    Ok(pod)
}

/// The first path present in `input` but dropped by the typed round trip.
fn first_unknown(input: &Value, typed: &Value, path: String) -> Option<String> {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    None if !v.is_null() => return Some(p),
                    None => {}
                    Some(tv) => {
                        if let Some(found) = first_unknown(v, tv, p) {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(i), Value::Array(t)) => i
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(n, (a, b))| first_unknown(a, b, format!("{path}[{n}]"))),
        _ => None,
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_string(field: &str, s: &str) -> Result<(), ManifestError> {
    if s.contains('\0') {
        return Err(err(field, "contains a NUL byte, which no process argument or environment value can hold; remove it"));
    }
    Ok(())
}

/// Field paths supported by `valueFrom.fieldRef`.
pub fn field_ref_supported(path: &str) -> bool {
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.hostIP"
            | "status.hostIPs"
            | "status.podIP"
            | "status.podIPs"
    ) || ((path.starts_with("metadata.labels['") || path.starts_with("metadata.annotations['"))
        && path.ends_with("']"))
}

/// Why a static pod of a cluster node may not name API objects.
const NO_API_OBJECTS: &str = "a static pod of a cluster node may not name ConfigMaps, Secrets, service account tokens or PersistentVolumeClaims (the API server refuses its mirror pod, as for any kubelet)";

fn unsupported(field: String, what: &str) -> ManifestError {
    err(
        field,
        format!("{what} is not supported by unitlet yet; remove it from the manifest"),
    )
}

/// Checks that unitlet can run `pod` as it is: every field it does not
/// implement yet is refused, naming the field, rather than ignored. Pods
/// from the manifest directory may not name ConfigMaps or Secrets (static
/// pods may not, in Kubernetes either).
pub fn validate(pod: &Pod) -> Result<(), ManifestError> {
    validate_with(pod, false)
}

/// [`validate`] for a pod from the API server, whose env may name
/// ConfigMaps and Secrets (`api_objects`).
pub fn validate_with(pod: &Pod, api_objects: bool) -> Result<(), ManifestError> {
    let meta = &pod.metadata;
    let name = meta.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(err(
            "metadata.name",
            "required: static pods need a name (generateName is not supported)",
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(err("metadata.name", format!("{name:?} is not a valid name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")));
    }
    let ns = meta.namespace.as_deref().unwrap_or("default");
    if !is_dns_label(ns) {
        return Err(err(
            "metadata.namespace",
            format!(
                "{ns:?} is not a valid namespace: use at most 63 lowercase letters, digits and '-'"
            ),
        ));
    }
    for (field, map) in [
        ("metadata.labels", &meta.labels),
        ("metadata.annotations", &meta.annotations),
    ] {
        for (k, v) in map.iter().flatten() {
            check_string(&format!("{field}[{k:?}]"), v)?;
            if k.is_empty() || k.len() > 316 {
                return Err(err(format!("{field}[{k:?}]"), "invalid key"));
            }
        }
    }
    let Some(spec) = &pod.spec else {
        return Err(err("spec", "required"));
    };
    if spec.containers.is_empty() {
        return Err(err("spec.containers", "a pod needs at least one container"));
    }
    if let Some(p) = spec.restart_policy.as_deref() {
        if !matches!(p, "Always" | "OnFailure" | "Never") {
            return Err(err(
                "spec.restartPolicy",
                format!("{p:?} is not one of Always, OnFailure, Never"),
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            return Err(err(
                "spec.terminationGracePeriodSeconds",
                "must be zero or more",
            ));
        }
    }
    if spec.host_network == Some(false) {
        return Err(err(
            "spec.hostNetwork",
            "unitlet runs every pod in the host network; remove hostNetwork: false",
        ));
    }
    // Ephemeral containers are checked one by one when they are to run
    // (see `validate_ephemeral`): one unitlet cannot run waits with an
    // error; it never fails the pod, which runs already.
    if spec.share_process_namespace == Some(true) {
        return Err(unsupported(
            "spec.shareProcessNamespace".into(),
            "shareProcessNamespace",
        ));
    }
    if spec.active_deadline_seconds.is_some_and(|s| s <= 0) {
        return Err(err(
            "spec.activeDeadlineSeconds",
            "must be a positive number of seconds",
        ));
    }
    if spec.host_aliases.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(err(
            "spec.hostAliases",
            "unitlet pods share the host's network and its /etc/hosts, so per-pod host aliases cannot be added without changing the host; remove hostAliases (or add the entries to the host's /etc/hosts)",
        ));
    }
    if let Some(sc) = &spec.security_context {
        validate_pod_security(sc)?;
    }
    super::volume::validate_volumes(spec).map_err(|(f, m)| err(f, m))?;
    if !api_objects {
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            let uses = !super::volume::payload::references(v).is_empty()
                || !super::volume::payload::token_refs(v).is_empty()
                || v.persistent_volume_claim.is_some();
            if uses {
                return Err(err(
                    format!("spec.volumes[{i}]"),
                    format!("{NO_API_OBJECTS}; use emptyDir, hostPath or downwardAPI volumes"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let inits = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("spec.initContainers", c));
    let apps = spec.containers.iter().map(|c| ("spec.containers", c));
    let mut counters = std::collections::HashMap::new();
    for (list, c) in inits.chain(apps) {
        let idx = counters.entry(list).or_insert(0usize);
        let base = format!("{list}[{idx}]");
        *idx += 1;
        validate_container(&base, pod, c, list == "spec.initContainers", api_objects).map_err(
            |mut e| {
                if !c.name.is_empty() {
                    e.container.get_or_insert(c.name.clone());
                }
                e
            },
        )?;
        if !seen.insert(c.name.as_str()) {
            return Err(err(format!("{base}.name"), format!("duplicate container name {:?}: names must be unique across containers and initContainers", c.name)));
        }
    }
    Ok(())
}

fn check_ids(field: &str, user: Option<i64>, group: Option<i64>) -> Result<(), ManifestError> {
    for (f, v) in [("runAsUser", user), ("runAsGroup", group)] {
        if let Some(v) = v {
            if !(0..=i64::from(u32::MAX - 1)).contains(&v) {
                return Err(err(
                    format!("{field}.{f}"),
                    format!("{v} is not a valid id (0 to 4294967294)"),
                ));
            }
        }
    }
    Ok(())
}

fn check_group(field: String, v: i64) -> Result<(), ManifestError> {
    if !(0..=i64::from(u32::MAX - 1)).contains(&v) {
        return Err(err(
            field,
            format!("{v} is not a valid group id (0 to 4294967294)"),
        ));
    }
    Ok(())
}

/// The pod-level securityContext: what unitlet maps onto the unit (see
/// `translate`) is checked, what it cannot honour is refused with why.
fn validate_pod_security(sc: &PodSecurityContext) -> Result<(), ManifestError> {
    let base = "spec.securityContext";
    check_ids(base, sc.run_as_user, sc.run_as_group)?;
    if let Some(g) = sc.fs_group {
        check_group(format!("{base}.fsGroup"), g)?;
    }
    for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
        check_group(format!("{base}.supplementalGroups[{i}]"), *g)?;
    }
    if let Some(p) = sc.fs_group_change_policy.as_deref() {
        if !matches!(p, "Always" | "OnRootMismatch") {
            return Err(err(
                format!("{base}.fsGroupChangePolicy"),
                format!("{p:?} is not one of Always, OnRootMismatch"),
            ));
        }
    }
    if let Some(p) = sc.supplemental_groups_policy.as_deref() {
        if !matches!(p, "Merge" | "Strict") {
            return Err(err(
                format!("{base}.supplementalGroupsPolicy"),
                format!("{p:?} is not one of Merge, Strict"),
            ));
        }
    }
    if let Some(p) = sc.se_linux_change_policy.as_deref() {
        if !matches!(p, "MountOption" | "Recursive") {
            return Err(err(
                format!("{base}.seLinuxChangePolicy"),
                format!("{p:?} is not one of MountOption, Recursive"),
            ));
        }
    }
    if let Some(s) = sc.sysctls.as_ref().and_then(|v| v.first()) {
        return Err(err(
            format!("{base}.sysctls[0]"),
            format!("sysctl {:?} cannot be set: unitlet pods share the host's network, IPC and UTS namespaces, so a sysctl would change the whole host (the kubelet also refuses namespaced sysctls for hostNetwork pods); set it on the host instead", s.name),
        ));
    }
    validate_common_security(
        base,
        sc.seccomp_profile.as_ref(),
        sc.se_linux_options.as_ref(),
        sc.app_armor_profile.as_ref(),
        sc.windows_options.as_ref(),
    )
}

/// Fields the pod and container securityContexts share.
fn validate_common_security(
    base: &str,
    seccomp: Option<&SeccompProfile>,
    selinux: Option<&SELinuxOptions>,
    apparmor: Option<&AppArmorProfile>,
    windows: Option<&WindowsSecurityContextOptions>,
) -> Result<(), ManifestError> {
    if let Some(p) = seccomp {
        let field = format!("{base}.seccompProfile");
        match p.type_.as_str() {
            "RuntimeDefault" | "Unconfined" => {
                if p.localhost_profile.is_some() {
                    return Err(err(
                        format!("{field}.localhostProfile"),
                        "may only be set with type Localhost",
                    ));
                }
            }
            "Localhost" => return Err(err(
                format!("{field}.type"),
                "Localhost seccomp profiles are not supported: unitlet maps seccomp onto systemd's SystemCallFilter=, which cannot load an OCI seccomp profile; use RuntimeDefault or Unconfined",
            )),
            other => {
                return Err(err(
                    format!("{field}.type"),
                    format!("{other:?} is not one of RuntimeDefault, Unconfined, Localhost"),
                ))
            }
        }
    }
    if let Some(o) = selinux {
        let set = [&o.user, &o.role, &o.type_, &o.level]
            .iter()
            .any(|v| v.as_deref().is_some_and(|s| !s.is_empty()));
        if set {
            return Err(err(
                format!("{base}.seLinuxOptions"),
                "SELinux labels are not supported: unitlet runs containers as systemd units with the host's own labelling; remove seLinuxOptions",
            ));
        }
    }
    if let Some(p) = apparmor {
        match p.type_.as_str() {
            "Unconfined" => {}
            "RuntimeDefault" | "Localhost" => return Err(err(
                format!("{base}.appArmorProfile.type"),
                format!("AppArmor profile {:?} is not supported: unitlet has no container runtime profile to load; use Unconfined or remove appArmorProfile", p.type_),
            )),
            other => {
                return Err(err(
                    format!("{base}.appArmorProfile.type"),
                    format!("{other:?} is not one of RuntimeDefault, Localhost, Unconfined"),
                ))
            }
        }
    }
    if let Some(w) = windows {
        let set = w.gmsa_credential_spec.is_some()
            || w.gmsa_credential_spec_name.is_some()
            || w.host_process.is_some()
            || w.run_as_user_name.is_some();
        if set {
            return Err(err(
                format!("{base}.windowsOptions"),
                "is for Windows nodes; unitlet runs Linux pods: remove windowsOptions",
            ));
        }
    }
    Ok(())
}

/// A container's securityContext (see [`validate_pod_security`]).
fn validate_container_security(base: &str, sc: &SecurityContext) -> Result<(), ManifestError> {
    check_ids(base, sc.run_as_user, sc.run_as_group)?;
    if let Some(caps) = &sc.capabilities {
        for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
            for (i, n) in names.iter().flatten().enumerate() {
                if !n.eq_ignore_ascii_case("ALL") && capability_number(n).is_none() {
                    return Err(err(
                        format!("{base}.capabilities.{list}[{i}]"),
                        format!("{n:?} is not a Linux capability; use a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL"),
                    ));
                }
            }
        }
    }
    // The API server's own rule.
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            return Err(err(
                format!("{base}.allowPrivilegeEscalation"),
                "cannot set allowPrivilegeEscalation to false and privileged to true",
            ));
        }
        let sys_admin = sc
            .capabilities
            .iter()
            .flat_map(|c| c.add.iter().flatten())
            .any(|n| capability_number(n) == Some(21));
        if sys_admin {
            return Err(err(
                format!("{base}.allowPrivilegeEscalation"),
                "cannot set allowPrivilegeEscalation to false and capabilities.add CAP_SYS_ADMIN",
            ));
        }
    }
    match sc.proc_mount.as_deref() {
        None | Some("Default") => {}
        Some("Unmasked") => return Err(err(
            format!("{base}.procMount"),
            "Unmasked is not supported: unitlet containers share the host's PID namespace and its /proc, which systemd units cannot remount per unit; use Default",
        )),
        Some(other) => {
            return Err(err(
                format!("{base}.procMount"),
                format!("{other:?} is not one of Default, Unmasked"),
            ))
        }
    }
    validate_common_security(
        base,
        sc.seccomp_profile.as_ref(),
        sc.se_linux_options.as_ref(),
        sc.app_armor_profile.as_ref(),
        sc.windows_options.as_ref(),
    )
}

/// Checks that unitlet can run the `index`th ephemeral container of `pod`,
/// given as the [`Container`] it runs as; the error names its field.
pub fn validate_ephemeral(pod: &Pod, index: usize, c: &Container) -> Result<(), ManifestError> {
    if pod.spec.is_none() {
        return Err(err("spec", "required"));
    }
    validate_container(
        &format!("spec.ephemeralContainers[{index}]"),
        pod,
        c,
        false,
        true,
    )
    .map_err(|mut e| {
        e.pod.get_or_insert(pod_key(pod));
        e.container.get_or_insert(c.name.clone());
        e
    })
}

/// Checks one container of `pod` (whose spec is set).
fn validate_container(
    base: &str,
    pod: &Pod,
    c: &Container,
    init: bool,
    api_objects: bool,
) -> Result<(), ManifestError> {
    let pod_spec = pod.spec.as_ref().expect("checked by the caller");
    if !is_dns_label(&c.name) {
        return Err(err(format!("{base}.name"), format!("{:?} is not a valid container name: use at most 63 lowercase letters, digits and '-'", c.name)));
    }
    let image = c.image.as_deref().unwrap_or("");
    if image.trim().is_empty() {
        return Err(err(
            format!("{base}.image"),
            "required; use image: host to run a binary from this machine",
        ));
    }
    for (list, items) in [("command", &c.command), ("args", &c.args)] {
        for (i, a) in items.iter().flatten().enumerate() {
            let f = format!("{base}.{list}[{i}]");
            check_string(&f, a)?;
            if a.len() + 1 > MAX_ARG_STRLEN {
                return Err(err(
                    f,
                    format!(
                        "is {} bytes; Linux refuses a single argument over {MAX_ARG_STRLEN} bytes",
                        a.len()
                    ),
                ));
            }
        }
    }
    if image == HOST_IMAGE && c.command.as_ref().is_none_or(|v| v.is_empty()) {
        return Err(err(format!("{base}.command"), "required with image: host, which has no entrypoint; give the program to run, e.g. command: [\"/usr/bin/sleep\", \"infinity\"]"));
    }
    if let Some(first) = c.command.as_ref().and_then(|v| v.first()) {
        if first.is_empty() {
            return Err(err(
                format!("{base}.command[0]"),
                "the program to run must not be empty",
            ));
        }
    }
    if let Some(wd) = &c.working_dir {
        check_string(&format!("{base}.workingDir"), wd)?;
        if !wd.starts_with('/') {
            return Err(err(
                format!("{base}.workingDir"),
                format!("{wd:?} must be an absolute path"),
            ));
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        validate_env(&format!("{base}.env[{i}]"), e, api_objects)?;
    }
    check_arg_budget(base, pod, c)?;
    for (i, f) in c.env_from.iter().flatten().enumerate() {
        let field = format!("{base}.envFrom[{i}]");
        if !api_objects {
            return Err(err(field, format!("{NO_API_OBJECTS}; use env with value")));
        }
        let names = [
            f.config_map_ref.as_ref().map(|r| ("configMapRef", &r.name)),
            f.secret_ref.as_ref().map(|r| ("secretRef", &r.name)),
        ];
        let set: Vec<_> = names.iter().flatten().collect();
        if set.len() != 1 {
            return Err(err(
                field,
                "must name exactly one of configMapRef and secretRef",
            ));
        }
        let (which, name) = set[0];
        if !is_dns_subdomain(name) {
            return Err(err(
                format!("{field}.{which}.name"),
                format!("{name:?} is not a valid object name"),
            ));
        }
        if let Some(p) = &f.prefix {
            if !p.is_empty() && !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err(format!("{field}.prefix"), format!("{p:?} is not usable: systemd accepts environment names made of letters, digits and '_'")));
            }
        }
    }
    if let Some(r) = &c.resources {
        for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (res, q) in map.iter().flatten() {
                let f = format!("{base}.resources.{kind}.{res}");
                match res.as_str() {
                    "cpu" => {
                        super::quantity::cpu_millis(&q.0).map_err(|e| err(f, e.to_string()))?;
                    }
                    "memory" | "ephemeral-storage" => {
                        super::quantity::bytes(&q.0).map_err(|e| err(f, e.to_string()))?;
                    }
                    other => {
                        return Err(err(
                            f,
                            format!("resource {other:?} is not supported; use cpu and memory"),
                        ))
                    }
                }
            }
        }
    }
    // A native sidecar (restartPolicy Always) may have probes and hooks.
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    if init {
        if let Some(p) = c.restart_policy.as_deref().filter(|p| *p != "Always") {
            return Err(err(
                format!("{base}.restartPolicy"),
                format!("{p:?} is not supported; init containers may only set Always (a native sidecar)"),
            ));
        }
    }
    for (field, present) in [
        ("livenessProbe", c.liveness_probe.is_some()),
        ("readinessProbe", c.readiness_probe.is_some()),
        ("startupProbe", c.startup_probe.is_some()),
    ] {
        if present && init && !sidecar {
            return Err(err(
                format!("{base}.{field}"),
                "may not be set for init containers",
            ));
        }
    }
    // The probes' structure; the pod and node only fill in values when
    // translation makes them runnable, which cannot fail.
    super::probe::check_probes(c).map_err(|(field, msg)| err(format!("{base}.{field}"), msg))?;
    if c.lifecycle.is_some() && init && !sidecar {
        return Err(err(
            format!("{base}.lifecycle"),
            "may not be set for init containers",
        ));
    }
    super::probe::check_hooks(c).map_err(|(field, msg)| err(format!("{base}.{field}"), msg))?;
    // stdin, stdinOnce and tty are supported: such a container runs under
    // the agent's tty-host helper (see `crate::tty`).
    if c.volume_devices.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported(
            format!("{base}.volumeDevices"),
            "volumeDevices",
        ));
    }
    super::volume::validate_mounts(pod_spec, c, base).map_err(|(f, m)| err(f, m))?;
    if !init && c.restart_policy.is_some() {
        return Err(err(
            format!("{base}.restartPolicy"),
            "only init containers may set restartPolicy",
        ));
    }
    if let Some(sc) = &c.security_context {
        validate_container_security(&format!("{base}.securityContext"), sc)?;
    }
    Ok(())
}

fn validate_env(field: &str, e: &EnvVar, api_objects: bool) -> Result<(), ManifestError> {
    if !is_env_name(&e.name) {
        return Err(err(format!("{field}.name"), format!("{:?} is not usable: systemd accepts environment names made of letters, digits and '_' that do not start with a digit", e.name)));
    }
    let value = e.value.as_deref().unwrap_or("");
    check_string(&format!("{field}.value"), value)?;
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(err(format!("{field}.value"), "contains a control character other than tab, CR or newline, which systemd refuses in the environment"));
    }
    let size = e.name.len() + 1 + value.len() + 1;
    if size > MAX_ARG_STRLEN {
        return Err(err(format!("{field}.value"), format!("is {} bytes; Linux refuses a single environment entry over {MAX_ARG_STRLEN} bytes, so no process could start with it", value.len())));
    }
    if let Some(from) = &e.value_from {
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(err(
                format!("{field}.valueFrom"),
                "may not be set together with value",
            ));
        }
        if let Some(f) = &from.field_ref {
            if f.api_version.as_deref().is_some_and(|v| v != "v1") {
                return Err(err(
                    format!("{field}.valueFrom.fieldRef.apiVersion"),
                    "must be v1",
                ));
            }
            if !field_ref_supported(&f.field_path) {
                return Err(err(format!("{field}.valueFrom.fieldRef.fieldPath"), format!("{:?} is not supported; use metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP or status.podIP", f.field_path)));
            }
        } else if let Some(r) = &from.resource_field_ref {
            const RESOURCES: [&str; 6] = [
                "limits.cpu",
                "limits.memory",
                "limits.ephemeral-storage",
                "requests.cpu",
                "requests.memory",
                "requests.ephemeral-storage",
            ];
            if !RESOURCES.contains(&r.resource.as_str()) {
                return Err(err(
                    format!("{field}.valueFrom.resourceFieldRef.resource"),
                    format!(
                        "{:?} is not supported; use one of {}",
                        r.resource,
                        RESOURCES.join(", ")
                    ),
                ));
            }
            if let Some(d) = r
                .divisor
                .as_ref()
                .map(|q| q.0.as_str())
                .filter(|d| !d.is_empty())
            {
                // The API server's lists of valid divisors.
                let ok: &[&str] = if r.resource.ends_with(".cpu") {
                    &["1m", "1"]
                } else {
                    &[
                        "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi",
                        "1Ei",
                    ]
                };
                if !ok.contains(&d) {
                    return Err(err(
                        format!("{field}.valueFrom.resourceFieldRef.divisor"),
                        format!(
                            "{d:?} is not a valid divisor for {}; use one of {}",
                            r.resource,
                            ok.join(", ")
                        ),
                    ));
                }
            }
        } else if let Some((which, name, key)) = from
            .config_map_key_ref
            .as_ref()
            .map(|r| ("configMapKeyRef", &r.name, &r.key))
            .or(from
                .secret_key_ref
                .as_ref()
                .map(|r| ("secretKeyRef", &r.name, &r.key)))
        {
            if !api_objects {
                return Err(err(
                    format!("{field}.valueFrom"),
                    format!("{NO_API_OBJECTS}; use value or fieldRef"),
                ));
            }
            if !is_dns_subdomain(name) {
                return Err(err(
                    format!("{field}.valueFrom.{which}.name"),
                    format!("{name:?} is not a valid object name"),
                ));
            }
            if key.is_empty() {
                return Err(err(format!("{field}.valueFrom.{which}.key"), "required"));
            }
        } else {
            return Err(unsupported(
                format!("{field}.valueFrom"),
                "this valueFrom source",
            ));
        }
    }
    Ok(())
}

/// What a string costs, in bytes: as it is ([`Cost::Raw`]), or as systemd
/// writes it into a transient unit's file on the `Environment=` or
/// `ExecStart=` line (systemd 252, rounded up: quotes and backslashes
/// escaped, `%` doubled, other control characters and, in `Environment=`,
/// bytes outside ASCII written as `\ooo`; `$` as `\$\$` and `;` as `\;`
/// in `ExecStart=`, where non-ASCII is counted as in `Environment=` too).
#[derive(Clone, Copy, PartialEq)]
enum Cost {
    Raw,
    Env,
    Exec,
}

impl Cost {
    fn of(self, s: &str) -> usize {
        if self == Cost::Raw {
            return s.len();
        }
        s.bytes()
            .map(|b| match b {
                b'\\' | b'"' | b'\'' | b'%' | 0x07..=0x0d => 2,
                b'$' if self == Cost::Exec => 4,
                b';' if self == Cost::Exec => 2,
                0..=0x1f | 0x7f.. => 4,
                _ => 1,
            })
            .sum()
    }
}

/// What the `$(VAR)` expansion of `input` ([`super::expand::expand`])
/// costs, given what each defined variable's value costs: computed
/// without building the text, in one pass even over many unclosed `$(`.
fn expanded_len(input: &str, cost: Cost, var_len: impl Fn(&str) -> Option<usize>) -> usize {
    let mut n = 0usize;
    let mut rest = input;
    // Once no `)` follows, every `$(` stays as written.
    let mut may_close = true;
    while let Some(pos) = rest.find('$') {
        n = n.saturating_add(cost.of(&rest[..pos]));
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            n = n.saturating_add(cost.of("$"));
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')').filter(|_| may_close) {
                Some(end) => {
                    let name = &body[..end];
                    let len = var_len(name).unwrap_or_else(|| cost.of("$()") + cost.of(name));
                    n = n.saturating_add(len);
                    rest = &body[end + 1..];
                }
                None => {
                    may_close = false;
                    n = n.saturating_add(cost.of("$("));
                    rest = body;
                }
            }
        } else {
            n = n.saturating_add(cost.of("$"));
            rest = after;
        }
    }
    n.saturating_add(cost.of(rest))
}

/// The size of a `fieldRef`'s value ([`super::downward::field_ref`]): what
/// the pod says, or the most the node can make it.
fn field_ref_len(pod: &Pod, path: &str) -> usize {
    let meta = &pod.metadata;
    let get = |map: &Option<std::collections::BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .and_then(|k| map.as_ref()?.get(k))
            .map_or(0, String::len)
    };
    match path {
        "metadata.name" => meta.name.as_deref().map_or(0, str::len),
        "metadata.namespace" => meta.namespace.as_deref().unwrap_or("default").len(),
        "metadata.uid" => meta.uid.as_deref().map_or(36, |u| u.len().max(36)),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .map_or(0, str::len),
        // A DNS name; an IPv6 address in text.
        "spec.nodeName" => 253,
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => 45,
        p if p.starts_with("metadata.labels['") => get(&meta.labels, "metadata.labels['"),
        _ => get(&meta.annotations, "metadata.annotations['"),
    }
}

/// Longest line systemd reads back from a unit file (its LONG_LINE_MAX).
/// It writes a transient unit's whole command line on one `ExecStart=`
/// line and every variable on one `Environment=` line; a longer one makes
/// the unit fail to load at the next `systemctl daemon-reload` ("No
/// buffer space available"), with its container still running.
pub const MAX_UNIT_LINE: usize = 1024 * 1024;

/// Room left on those lines for what the agent adds (the program's path,
/// helper arguments, `HOME` and the like).
const UNIT_LINE_ROOM: usize = 16 * 1024;

/// Checks that the container's command, args and env, with `$(VAR)`
/// references expanded as translation expands them, are what Linux can
/// start a process with (no string over [`MAX_ARG_STRLEN`], all of them
/// within [`MAX_ARG_TOTAL`]) and what systemd can read back from the
/// unit's file ([`MAX_UNIT_LINE`]). Expansion can multiply text (a
/// variable of 100 KiB named ten thousand times, or each variable twice
/// its predecessor): such a pod is refused here, before translation would
/// build gigabytes. Values from ConfigMaps and Secrets are not known here
/// and count as empty; variables count on the `Environment=` line even
/// where a Secret's value will send them to an environment file instead.
fn check_arg_budget(base: &str, pod: &Pod, c: &Container) -> Result<(), ManifestError> {
    use std::collections::HashMap;
    const COSTS: [Cost; 3] = [Cost::Raw, Cost::Env, Cost::Exec];
    // Each variable's value: its size, and its size on each unit-file line.
    let mut vars: HashMap<&str, [usize; 3]> = HashMap::new();
    for (i, e) in c.env.iter().flatten().enumerate() {
        let from = e.value_from.as_ref();
        let sizes = if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            // Escaped, an annotation's bytes may take four each.
            let len = field_ref_len(pod, &f.field_path);
            [len, len.saturating_mul(4), len.saturating_mul(4)]
        } else if from.is_some_and(|f| f.resource_field_ref.is_some()) {
            [20; 3] // the digits of a u64
        } else if from.is_some() {
            [0; 3]
        } else {
            let value = e.value.as_deref().unwrap_or("");
            let size = |k: usize| expanded_len(value, COSTS[k], |n| vars.get(n).map(|s| s[k]));
            let sizes = [size(0), size(1), size(2)];
            if e.name.len() + sizes[0] + 2 > MAX_ARG_STRLEN {
                return Err(err(
                    format!("{base}.env[{i}].value"),
                    format!("is {} bytes once $(VAR) references are expanded; Linux refuses a single environment entry over {MAX_ARG_STRLEN} bytes, so no process could start with it: name fewer or shorter variables", sizes[0]),
                ));
            }
            sizes
        };
        vars.insert(&e.name, sizes);
    }
    let (mut total, mut exec_line) = (0usize, 0usize);
    let mut over = None;
    let mut last = "command";
    for (list, items) in [("command", &c.command), ("args", &c.args)] {
        for (i, a) in items.iter().flatten().enumerate() {
            let size = expanded_len(a, Cost::Raw, |n| vars.get(n).map(|s| s[0]));
            if size + 1 > MAX_ARG_STRLEN {
                return Err(err(
                    format!("{base}.{list}[{i}]"),
                    format!("is {size} bytes once $(VAR) references are expanded; Linux refuses a single argument over {MAX_ARG_STRLEN} bytes: name fewer or shorter variables"),
                ));
            }
            total = total.saturating_add(size + 1);
            if total > MAX_ARG_TOTAL {
                over.get_or_insert(list);
            }
            let escaped = expanded_len(a, Cost::Exec, |n| vars.get(n).map(|s| s[2]));
            exec_line = exec_line.saturating_add(escaped + 3);
            last = list;
        }
    }
    // A variable set twice is passed once, with its last value.
    let mut env_line = 0usize;
    for (name, sizes) in &vars {
        total = total.saturating_add(name.len() + sizes[0] + 2);
        env_line = env_line.saturating_add(name.len() + sizes[1] + 4);
    }
    if total > MAX_ARG_TOTAL {
        let list = over.unwrap_or("env");
        let n = [&c.command, &c.args]
            .iter()
            .map(|l| l.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + vars.len();
        return Err(err(
            format!("{base}.{list}"),
            format!("command, args and env ({n} strings, with $(VAR) references expanded) add up to {total} bytes, over the limit of {MAX_ARG_TOTAL}: Linux starts no process with that much (E2BIG); shorten them, or put the data in a file the container reads"),
        ));
    }
    for (field, what, line, setting) in [
        (last, "command and args", exec_line, "ExecStart="),
        ("env", "env", env_line, "Environment="),
    ] {
        if line + UNIT_LINE_ROOM > MAX_UNIT_LINE {
            return Err(err(
                format!("{base}.{field}"),
                format!("{what} take {line} bytes as systemd writes them, quoted and escaped, on the one {setting} line of the unit's file, and systemd reads back no line over {MAX_UNIT_LINE} bytes (with {UNIT_LINE_ROOM} left for unitlet's own): the unit would fail to load at the next daemon-reload; shorten them, or put the data in a file the container reads"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<StaticPod, ManifestError> {
        parse_manifest(yaml.as_bytes(), "/m/p.yaml", "node1", false)
    }

    const OK: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web.v1\nspec:\n  containers:\n  - name: c\n    image: host\n    command: [/bin/sleep, '100']\n";

    #[test]
    fn defaults() {
        let p = parse(OK).unwrap();
        assert_eq!(p.key(), "default/web.v1");
        assert_eq!(
            p.pod.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(p.pod.metadata.uid.as_deref(), Some(p.uid.as_str()));
        assert_eq!(p.uid.len(), 36);
    }

    #[test]
    fn uid_follows_content_not_formatting() {
        let a = parse(OK).unwrap().uid;
        let b = parse(&OK.replace("image: host", "image:    host"))
            .unwrap()
            .uid;
        let c = parse(&OK.replace("'100'", "'101'")).unwrap().uid;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn stdin_and_terminals_are_accepted() {
        // They run under the agent's tty-host helper (crate::tty).
        for extra in [
            "    tty: true\n",
            "    stdin: true\n",
            "    stdin: true\n    stdinOnce: true\n    tty: true\n",
        ] {
            let p = parse(&format!("{OK}{extra}")).unwrap_or_else(|e| panic!("{extra}: {e}"));
            let c = &p.pod.spec.as_ref().unwrap().containers[0];
            assert_eq!(
                (c.stdin, c.tty),
                (
                    extra.contains("stdin: true").then_some(true),
                    extra.contains("tty: true").then_some(true)
                )
            );
        }
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            (OK.replace("name: web.v1", "name: Web"), "metadata.name"),
            (OK.replace("    image: host\n", "    image: host\n    imagePolicy: x\n"), "spec.containers[0].imagePolicy"),
            (OK.replace("command: [/bin/sleep, '100']", "command: 5"), "spec.containers.[0].command"),
            (OK.replace("- name: c", "- name: c_d"), "spec.containers[0].name"),
            (OK.replace("kind: Pod", "kind: Deployment"), "kind"),
            (OK.replace("  containers:\n  - name: c\n    image: host\n    command: [/bin/sleep, '100']\n", "  containers: []\n"), "spec.containers"),
            (format!("{OK}  - name: c\n    image: host\n    command: [/bin/true]\n"), "spec.containers[1].name"),
            (format!("{OK}    env:\n    - name: A-B\n      value: x\n"), "spec.containers[0].env[0].name"),
            (format!("{OK}    env:\n    - name: A\n      value: \"a\\0b\"\n"), "spec.containers[0].env[0].value"),
            (format!("{OK}    lifecycle:\n      preStop:\n        tcpSocket:\n          port: 80\n"), "spec.containers[0].lifecycle.preStop.tcpSocket"),
            (format!("{OK}    volumeDevices:\n    - name: v\n      devicePath: /dev/xvda\n"), "spec.containers[0].volumeDevices"),
            (format!("{OK}    livenessProbe:\n      exec:\n        command: [x]\n      successThreshold: 2\n"), "spec.containers[0].livenessProbe.successThreshold"),
            (format!("{OK}    resources:\n      limits:\n        cpu: lots\n"), "spec.containers[0].resources.limits.cpu"),
        ];
        for (yaml, field) in cases {
            let e = parse(&yaml).expect_err(&yaml);
            assert!(
                e.field.replace(".[", "[") == field.replace(".[", "["),
                "want {field}, got {e}"
            );
        }
    }

    #[test]
    fn probes_and_hooks_are_checked_from_the_container_alone() {
        // Validation checks probes and hooks without a pod or node: the
        // same fields and messages as when translation makes them runnable.
        let refused = |extra: &str| {
            let e = parse(&format!(
                "{OK}    ports:\n    - name: http\n      containerPort: 8080\n{extra}"
            ))
            .expect_err(extra);
            (e.field, e.message)
        };
        let cases = [
            ("    livenessProbe:\n      httpGet:\n        port: web\n", "spec.containers[0].livenessProbe.httpGet.port", "no port of the container is named \"web\""),
            ("    readinessProbe:\n      tcpSocket:\n        port: 70000\n", "spec.containers[0].readinessProbe.tcpSocket.port", "70000 is not a port number (1-65535)"),
            ("    startupProbe: {}\n", "spec.containers[0].startupProbe", "must have exactly one handler: exec, httpGet, tcpSocket or grpc"),
            ("    livenessProbe:\n      exec:\n        command: []\n", "spec.containers[0].livenessProbe.exec.command", "required"),
            ("    readinessProbe:\n      httpGet:\n        port: http\n        httpHeaders:\n        - name: a b\n          value: v\n", "spec.containers[0].readinessProbe.httpGet.httpHeaders[0].name", "\"a b\" is not an HTTP header name"),
            ("    readinessProbe:\n      grpc:\n        port: 9\n      terminationGracePeriodSeconds: 5\n", "spec.containers[0].readinessProbe.terminationGracePeriodSeconds", "must not be set for readiness probes"),
            ("    lifecycle:\n      preStop:\n        httpGet:\n          port: web\n", "spec.containers[0].lifecycle.preStop.httpGet.port", "no port of the container is named \"web\""),
            ("    lifecycle:\n      postStart:\n        exec:\n          command: []\n", "spec.containers[0].lifecycle.postStart.exec.command", "required"),
            ("    lifecycle:\n      postStart:\n        sleep:\n          seconds: -1\n", "spec.containers[0].lifecycle.postStart.sleep.seconds", "must not be negative"),
            ("    lifecycle:\n      preStop: {}\n", "spec.containers[0].lifecycle.preStop", "must have exactly one handler: exec, httpGet or sleep"),
        ];
        for (extra, field, message) in cases {
            assert_eq!(refused(extra), (field.to_string(), message.to_string()));
        }
        // A command naming a variable from the downward API, and named
        // ports, are fine: resolving them is translation's job.
        let ok = format!(
            "{OK}    ports:\n    - name: http\n      containerPort: 8080\n    env:\n    - name: T\n      valueFrom:\n        fieldRef: {{fieldPath: status.podIP}}\n    livenessProbe:\n      exec:\n        command: [test, $(T)]\n    readinessProbe:\n      httpGet:\n        port: http\n    lifecycle:\n      preStop:\n        httpGet:\n          port: http\n"
        );
        let p = parse(&ok).expect(&ok);
        let c = &p.pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(super::super::probe::check_probes(c).map(|_| ()), Ok(()));
        // An init container that is not a sidecar may not have them.
        let init = OK.replace(
            "  containers:\n",
            "  initContainers:\n  - name: i\n    image: host\n    command: [/bin/true]\n    readinessProbe:\n      tcpSocket:\n        port: 1\n  containers:\n",
        );
        assert_eq!(
            parse(&init).unwrap_err().field,
            "spec.initContainers[0].readinessProbe"
        );
    }

    #[test]
    fn security_context_fields_are_checked_or_refused_with_why() {
        let pod_sc = |sc: &str| OK.replace("spec:\n", &format!("spec:\n  securityContext: {sc}\n"));
        let c_sc = |sc: &str| format!("{OK}    securityContext: {sc}\n");
        let c = "spec.containers[0].securityContext";
        let p = "spec.securityContext";
        let refused = [
            (
                pod_sc("{sysctls: [{name: kernel.shm_rmid_forced, value: '1'}]}"),
                format!("{p}.sysctls[0]"),
                "host",
            ),
            (
                pod_sc("{supplementalGroups: [1, -1]}"),
                format!("{p}.supplementalGroups[1]"),
                "group id",
            ),
            (
                pod_sc("{fsGroup: 4294967295}"),
                format!("{p}.fsGroup"),
                "group id",
            ),
            (
                pod_sc("{fsGroupChangePolicy: Sometimes}"),
                format!("{p}.fsGroupChangePolicy"),
                "Always",
            ),
            (
                pod_sc("{seLinuxOptions: {type: spc_t}}"),
                format!("{p}.seLinuxOptions"),
                "SELinux",
            ),
            (
                pod_sc("{windowsOptions: {hostProcess: true}}"),
                format!("{p}.windowsOptions"),
                "Windows",
            ),
            (
                pod_sc("{seccompProfile: {type: Localhost, localhostProfile: x.json}}"),
                format!("{p}.seccompProfile.type"),
                "not supported",
            ),
            (
                pod_sc("{appArmorProfile: {type: RuntimeDefault}}"),
                format!("{p}.appArmorProfile.type"),
                "AppArmor",
            ),
            (
                c_sc("{seccompProfile: {type: Bogus}}"),
                format!("{c}.seccompProfile.type"),
                "RuntimeDefault",
            ),
            (
                c_sc("{seccompProfile: {type: RuntimeDefault, localhostProfile: x}}"),
                format!("{c}.seccompProfile.localhostProfile"),
                "Localhost",
            ),
            (
                c_sc("{procMount: Unmasked}"),
                format!("{c}.procMount"),
                "not supported",
            ),
            (
                c_sc("{capabilities: {add: [NET_ADMIN, CAP_BOGUS]}}"),
                format!("{c}.capabilities.add[1]"),
                "not a Linux capability",
            ),
            (
                c_sc("{capabilities: {drop: [everything]}}"),
                format!("{c}.capabilities.drop[0]"),
                "not a Linux capability",
            ),
            (
                c_sc("{privileged: true, allowPrivilegeEscalation: false}"),
                format!("{c}.allowPrivilegeEscalation"),
                "privileged",
            ),
            (
                c_sc("{allowPrivilegeEscalation: false, capabilities: {add: [SYS_ADMIN]}}"),
                format!("{c}.allowPrivilegeEscalation"),
                "CAP_SYS_ADMIN",
            ),
            (
                c_sc("{appArmorProfile: {type: Localhost, localhostProfile: p}}"),
                format!("{c}.appArmorProfile.type"),
                "AppArmor",
            ),
            (
                OK.replace(
                    "spec:\n",
                    "spec:\n  hostAliases: [{ip: 1.2.3.4, hostnames: [a]}]\n",
                ),
                "spec.hostAliases".into(),
                "/etc/hosts",
            ),
        ];
        for (yaml, field, why) in refused {
            let e = parse(&yaml).expect_err(&yaml);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(why), "{field}: {e}");
        }
        for ok in [
            pod_sc("{runAsNonRoot: true, runAsUser: 1, supplementalGroups: [2, 3], fsGroup: 4, fsGroupChangePolicy: OnRootMismatch, supplementalGroupsPolicy: Strict, seccompProfile: {type: RuntimeDefault}, seLinuxOptions: {}, appArmorProfile: {type: Unconfined}}"),
            c_sc("{privileged: true, readOnlyRootFilesystem: true, procMount: Default, capabilities: {add: [ALL], drop: [cap_chown]}, seccompProfile: {type: Unconfined}, allowPrivilegeEscalation: true, windowsOptions: {}}"),
            c_sc("{runAsNonRoot: false, allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [net_bind_service]}}"),
        ] {
            parse(&ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    // ----- hostile input: every limit, at and beyond it -----

    /// A pod whose container `c` runs `/bin/sleep 100` with `extra` after
    /// its command (env, args).
    fn pod_with(extra: &str) -> String {
        format!("{OK}{extra}")
    }

    /// `n` environment variables `E_00000`… with values of `len` bytes.
    fn env_list(n: usize, len: usize) -> String {
        let mut s = String::from("    env:\n");
        for i in 0..n {
            s.push_str(&format!(
                "    - {{name: E_{i:05}, value: '{}'}}\n",
                "v".repeat(len)
            ));
        }
        s
    }

    #[test]
    fn names_at_253_bytes_run_and_longer_ones_are_refused() {
        let name = |n: usize| {
            let mut s = vec!["a".repeat(63); 4].join(".");
            s.truncate(n);
            s.push_str(&"b".repeat(n.saturating_sub(s.len())));
            s
        };
        let yaml = |pod: &str, ns: &str, c: &str| {
            OK.replace("name: web.v1", &format!("name: {pod}\n  namespace: {ns}"))
                .replace("- name: c\n", &format!("- name: {c}\n"))
        };
        let (n63, c63) = ("n".repeat(63), "c".repeat(63));
        assert_eq!(name(253).len(), 253);
        let p = parse(&yaml(&name(253), &n63, &c63)).unwrap();
        assert_eq!(p.key(), format!("{n63}/{}", name(253)));
        for (doc, field, limit) in [
            (
                yaml(&name(254), "default", "c"),
                "metadata.name",
                "at most 253",
            ),
            (
                yaml(&name(255), "default", "c"),
                "metadata.name",
                "at most 253",
            ),
            (
                yaml("p", &"n".repeat(64), "c"),
                "metadata.namespace",
                "at most 63",
            ),
            (
                yaml("p", "default", &"c".repeat(64)),
                "spec.containers[0].name",
                "at most 63",
            ),
        ] {
            let e = parse(&doc).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field), "{e}");
            assert!(e.message.contains(limit), "{e}");
        }
        // 253 is the name's limit, and also what a cluster node's suffix must fit in.
        let e = node_static_pod(p, "node1").unwrap_err();
        assert_eq!(e.field, "metadata.name", "{e}");
        assert!(e.message.contains("shorten the name"), "{e}");
    }

    #[test]
    fn ten_thousand_env_vars_run_within_the_limits_and_are_refused_beyond_them() {
        // systemd writes `"E_00000=<len>" ` for each, on one line of the
        // unit's file: 10,000 × (len + 11) bytes and 16 KiB of room must
        // fit in 1 MiB. So 92 bytes each fit and 93 do not.
        let fits = pod_with(&env_list(10_000, 92));
        let p = parse(&fits).unwrap();
        let env = p.pod.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap();
        assert_eq!(env.len(), 10_000);
        const { assert!(10_000 * (92 + 11) + UNIT_LINE_ROOM <= MAX_UNIT_LINE) };

        let e = parse(&pod_with(&env_list(10_000, 93))).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].env", "{e}");
        assert_eq!(
            e.to_string(),
            "pod default/web.v1: container \"c\": field spec.containers[0].env: env take 1040000 bytes as systemd writes them, quoted and escaped, on the one Environment= line of the unit's file, and systemd reads back no line over 1048576 bytes (with 16384 left for unitlet's own): the unit would fail to load at the next daemon-reload; shorten them, or put the data in a file the container reads"
        );
        // Escaped, a value takes more: 47 bytes of `%` take 94.
        let percent = env_list(10_000, 47).replace(&"v".repeat(47), &"%".repeat(47));
        let e = parse(&pod_with(&percent)).unwrap_err();
        assert!(e.message.contains("env take 1050000 bytes"), "{e}");

        // Beyond what Linux starts a process with: 15 + 10,000 × (len + 9)
        // bytes, against 1,572,864.
        let e = parse(&pod_with(&env_list(10_000, 149))).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].env", "{e}");
        assert_eq!(e.container.as_deref(), Some("c"));
        assert_eq!(e.pod.as_deref(), Some("default/web.v1"));
        assert_eq!(
            e.to_string(),
            format!("pod default/web.v1: container \"c\": field spec.containers[0].env: command, args and env (10002 strings, with $(VAR) references expanded) add up to 1580015 bytes, over the limit of {MAX_ARG_TOTAL}: Linux starts no process with that much (E2BIG); shorten them, or put the data in a file the container reads")
        );
    }

    #[test]
    fn a_one_mib_argument_and_arguments_over_the_total_are_refused() {
        let args = |list: &[usize]| {
            let items: Vec<String> = list
                .iter()
                .map(|n| format!("'{}'", "a".repeat(*n)))
                .collect();
            pod_with(&format!("    args: [{}]\n", items.join(", ")))
        };
        let e = parse(&args(&[1 << 20])).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].args[0]", "{e}");
        assert_eq!(
            e.message,
            format!(
                "is 1048576 bytes; Linux refuses a single argument over {MAX_ARG_STRLEN} bytes"
            )
        );
        // With its NUL, an argument may be MAX_ARG_STRLEN bytes in all.
        parse(&args(&[MAX_ARG_STRLEN - 1])).unwrap();
        let e = parse(&args(&[1, MAX_ARG_STRLEN])).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].args[1]", "{e}");
        // Eight of 120 KiB fit on the ExecStart= line, nine do not...
        parse(&args(&[120 << 10; 8])).unwrap();
        let e = parse(&args(&[120 << 10; 9])).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].args", "{e}");
        assert!(e.message.starts_with("command and args take 1105966 bytes as systemd writes them, quoted and escaped, on the one ExecStart= line"), "{e}");
        // ... and thirteen are more than Linux takes.
        let e = parse(&args(&[120 << 10; 13])).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].args", "{e}");
        assert!(e.message.contains("add up to 1597468 bytes"), "{e}");
        // Command and args count together; so does the environment.
        let yaml = format!(
            "{}    env:\n    - {{name: BIG, value: '{}'}}\n",
            args(&[120 << 10; 12]),
            "e".repeat(120 << 10)
        );
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].env", "{e}");
        assert!(e.message.contains("E2BIG"), "{e}");
    }

    #[test]
    fn expansion_bombs_are_refused_before_translation_builds_them() {
        use super::super::expand::expand;
        // One variable of 100 KiB, named in twenty arguments: 2 MB of argv
        // from a 100 KiB manifest.
        let wide = pod_with(&format!(
            "    args: [{}]\n    env:\n    - {{name: B, value: '{}'}}\n",
            vec!["'$(B)'"; 20].join(", "),
            "b".repeat(100 << 10)
        ));
        assert!(wide.len() < 110 << 10);
        let e = parse(&wide).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].args", "{e}");
        assert!(e.message.contains("add up to 2150438 bytes"), "{e}");
        // Each variable twice its predecessor: V30 would be a terabyte.
        let mut env = String::from("    env:\n    - {name: V0, value: '");
        env.push_str(&"x".repeat(1000));
        env.push_str("'}\n");
        for i in 1..=30 {
            env.push_str(&format!(
                "    - {{name: V{i}, value: '$(V{0})$(V{0})'}}\n",
                i - 1
            ));
        }
        let e = parse(&pod_with(&env)).unwrap_err();
        assert_eq!(e.field, "spec.containers[0].env[8].value", "{e}");
        assert!(
            e.message
                .contains("is 256000 bytes once $(VAR) references are expanded"),
            "{e}"
        );
        // A value may embed the pod's own (large) annotations.
        let ann = OK.replace(
            "  name: web.v1\n",
            &format!(
                "  name: web.v1\n  annotations: {{big: '{}'}}\n",
                "a".repeat(100 << 10)
            ),
        );
        let many = format!(
            "{ann}    env:\n    - name: A\n      valueFrom:\n        fieldRef: {{fieldPath: \"metadata.annotations['big']\"}}\n    args: [{}]\n",
            vec!["'$(A)'"; 16].join(", ")
        );
        assert_eq!(parse(&many).unwrap_err().field, "spec.containers[0].args");
        // Unclosed `$(` cost one pass, not one per `$(`, and stay as written.
        let unclosed = "$(".repeat(60_000);
        parse(&pod_with(&format!("    args: ['{unclosed}']\n"))).unwrap();
        // The size is the one expansion gives.
        let vars = |n: &str| match n {
            "A" => Some("alpha".to_string()),
            "E" => Some(String::new()),
            _ => None,
        };
        for input in [
            "",
            "$",
            "$$",
            "$$$",
            "$(A)",
            "$$(A)",
            "$$$(A)",
            "$(A",
            "$(B)",
            "x$(A)y$(E)z",
            "$(",
            "$()",
            "$(A)$(",
            "$($(A))",
            "$(A)$$(B)$",
            "a$b",
            "$(A)$(A",
            "))$((A)",
            "$(A)$(a)$(E)$$$$",
            "%$(Q)\"'\t\u{1}é;$$",
        ] {
            let expanded = expand(input, vars);
            for cost in [Cost::Raw, Cost::Env, Cost::Exec] {
                let len = |n: &str| vars(n).map(|v| cost.of(&v));
                assert_eq!(
                    expanded_len(input, cost, len),
                    cost.of(&expanded),
                    "{input:?}"
                );
            }
        }
        // As systemd 252 writes them in a transient unit's file.
        assert_eq!(
            Cost::Env.of("a$b%n\\\"'\t\né;"),
            r#"a$b%%n\\\"\'\t\n\303\251;"#.len()
        );
        assert_eq!(Cost::Exec.of("a$b%n;"), r"a\$\$b%%n\;".len());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let n = 100_000;
        let mut block_maps = String::new();
        let mut block_lists = String::new();
        for i in 0..1_000 {
            block_maps.push_str(&format!("{}a:\n", " ".repeat(i)));
            block_lists.push_str(&format!("{}-\n", " ".repeat(i)));
        }
        let yaml = [
            format!("apiVersion: v1\nkind: Pod\nx: {}", "[".repeat(n)),
            format!("{}{}", "[".repeat(n), "]".repeat(n)),
            format!("apiVersion: v1\nkind: Pod\nx: {}", "{a: ".repeat(n)),
            format!("{}x\n", "- ".repeat(n)),
            block_maps,
            block_lists,
        ];
        for doc in &yaml {
            let e = parse(doc).unwrap_err();
            assert_eq!(e.field, "", "{e}");
            assert!(
                e.message
                    .starts_with("mappings and lists nest more than 64 levels deep (at line"),
                "{e}"
            );
        }
        let json = [
            "[".repeat(n),
            format!("{}{}", "[".repeat(n), "]".repeat(n)),
            format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"x\": {}",
                "{\"a\": ".repeat(n)
            ),
        ];
        for doc in &json {
            let e = parse_manifest(doc.as_bytes(), "/m/p.json", "n", true).unwrap_err();
            assert!(
                e.message.starts_with(
                    "mappings and lists nest more than 64 levels deep (at line 1, column "
                ),
                "{e}"
            );
        }
        // Brackets inside strings are text.
        let deep_text = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "host", "command": ["/bin/echo", "[".repeat(n), "\"{:,".repeat(1000)]}]}
        });
        parse_manifest(deep_text.to_string().as_bytes(), "/m/p.json", "n", true).unwrap();
    }

    #[test]
    fn alias_bombs_are_refused_quickly_with_a_clear_error() {
        // "Billion laughs": nine levels of nine aliases, 9^9 strings.
        let mut bomb = String::from("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for w in ["a", "b", "c", "d", "e", "f", "g", "h", "i"].windows(2) {
            bomb.push_str(&format!(
                "{}: &{} [{}]\n",
                w[1],
                w[1],
                vec![format!("*{}", w[0]); 9].join(", ")
            ));
        }
        let e = parse(&bomb).unwrap_err();
        assert_eq!(e.field, "", "{e}");
        assert!(e.message.starts_with(&format!("manifest holds more than {MAX_MANIFEST_VALUES} values (counting what YAML aliases expand to) (at line ")), "{e}");
        assert!(
            e.message
                .ends_with("a Pod needs far fewer: remove what the pod does not need"),
            "{e}"
        );
        // Few values but long ones: 3 MiB of text named a thousand times.
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, annotations: {{a: &t '{}'}}}}\nx: [{}]\n",
            "t".repeat(3 << 20),
            vec!["*t"; 1000].join(",")
        );
        assert!(text.len() < MAX_MANIFEST_BYTES);
        let e = parse(&text).unwrap_err();
        assert!(e.message.starts_with(&format!("manifest text adds up to more than {MAX_MANIFEST_TEXT} bytes once YAML aliases are expanded (at line")), "{e}");
        // Anchors and aliases as people use them still work.
        let shared = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n    image: host\n    command: [/bin/true]\n    env: &env\n    - {name: A, value: '1'}\n    - {name: B, value: '2'}\n  - name: b\n    image: host\n    command: [/bin/true]\n    env: *env\n";
        let p = parse(shared).unwrap();
        let spec = p.pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[1].env, spec.containers[0].env);
    }

    #[test]
    fn too_many_values_and_too_many_bytes_are_refused() {
        let values = vec!["0"; 2_000_000].join(",");
        let json = format!("{{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"x\": [{values}]}}");
        assert!(json.len() < MAX_MANIFEST_BYTES);
        let e = parse_manifest(json.as_bytes(), "/m/p.json", "n", true).unwrap_err();
        assert!(
            e.message.starts_with(&format!(
                "manifest holds more than {MAX_MANIFEST_VALUES} values (at line 1, column "
            )),
            "{e}"
        );
        let yaml = format!("apiVersion: v1\nkind: Pod\nx: [{values}]\n");
        let e = parse(&yaml).unwrap_err();
        assert!(
            e.message.starts_with(&format!(
                "manifest holds more than {MAX_MANIFEST_VALUES} values"
            )),
            "{e}"
        );
        let big = format!("{OK}# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let e = parse(&big).unwrap_err();
        assert_eq!(e.message, format!("manifest is {} bytes, over the limit of 4194304 (4 MiB); a Pod manifest is far smaller: put large data in a file the pod mounts (hostPath) instead", big.len()));
        // Just under the limit is read (and this one runs).
        let under = format!("{OK}# {}\n", "x".repeat(MAX_MANIFEST_BYTES - OK.len() - 3));
        assert_eq!(under.len(), MAX_MANIFEST_BYTES);
        parse(&under).unwrap();
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_saying_where() {
        let mut bytes = OK.replace("'100'", "'1\u{e9}0'").into_bytes();
        // é is C3 A9; cut it in half.
        let at = bytes.iter().position(|&b| b == 0xa9).unwrap();
        bytes[at] = b'0';
        for json in [false, true] {
            let e = parse_manifest(&bytes, "/m/p.yaml", "n", json).unwrap_err();
            assert_eq!(e.field, "");
            assert_eq!(
                e.message,
                format!("manifest is not UTF-8 text: byte 0xc3 at line 9, column 29 (byte offset {}) is not valid UTF-8; save the file as UTF-8 (e.g. iconv -t UTF-8)", at - 1),
            );
        }
        // UTF-16, as some editors save: refused at its first byte.
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(OK.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let e = parse_manifest(&utf16, "/m/p.yaml", "n", false).unwrap_err();
        assert!(
            e.message.starts_with(
                "manifest is not UTF-8 text: byte 0xff at line 1, column 1 (byte offset 0)"
            ),
            "{e}"
        );
    }

    #[test]
    fn huge_env_value_is_refused_with_reason() {
        let yaml = format!(
            "{OK}    env:\n    - name: BIG\n      value: \"{}\"\n",
            "x".repeat(1 << 20)
        );
        let e = parse(&yaml).unwrap_err();
        assert!(
            e.to_string().contains("MAX_ARG_STRLEN") || e.to_string().contains("131072"),
            "{e}"
        );
    }

    #[test]
    fn volumes_are_checked_and_octal_modes_read_as_kubectl_does() {
        let with = |vols: &str, mounts: &str| {
            parse(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: v}}\nspec:\n  volumes:\n{vols}  containers:\n  - name: c\n    image: host\n    command: [/bin/true]\n    volumeMounts:\n{mounts}"
            ))
        };
        let ok = with(
            "  - {name: s, secret: {secretName: x, defaultMode: 0400}}\n",
            "    - {name: s, mountPath: /s}\n",
        )
        .unwrap();
        let vols = ok.pod.spec.clone().unwrap().volumes.unwrap();
        assert_eq!(vols[0].secret.as_ref().unwrap().default_mode, Some(0o400));
        for (vols, mounts, field) in [
            (
                "  - {name: nf, nfs: {server: s, path: /}}\n",
                "    - {name: nf, mountPath: /n}\n",
                "spec.volumes[0].nfs",
            ),
            (
                "  - {name: e, emptyDir: {}}\n",
                "    - {name: other, mountPath: /e}\n",
                "spec.containers[0].volumeMounts[0].name",
            ),
            (
                "  - {name: e, emptyDir: {}}\n",
                "    - {name: e, mountPath: /e, subPath: a/../../b}\n",
                "spec.containers[0].volumeMounts[0].subPath",
            ),
            (
                "  - {name: e, emptyDir: {}}\n",
                "    - {name: e, mountPath: /}\n",
                "spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                "  - {name: e, emptyDir: {}}\n",
                "    - {name: e, mountPath: /proc/x}\n",
                "spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                "  - {name: e, emptyDir: {}}\n  - {name: e, emptyDir: {}}\n",
                "    - {name: e, mountPath: /e}\n",
                "spec.volumes[1].name",
            ),
            (
                "  - {name: h, hostPath: {path: relative}}\n",
                "    - {name: h, mountPath: /h}\n",
                "spec.volumes[0].hostPath.path",
            ),
            (
                "  - {name: h, hostPath: {path: /x, type: Fifo}}\n",
                "    - {name: h, mountPath: /h}\n",
                "spec.volumes[0].hostPath.type",
            ),
            (
                "  - {name: m, emptyDir: {medium: HugePages}}\n",
                "    - {name: m, mountPath: /m}\n",
                "spec.volumes[0].emptyDir.medium",
            ),
            (
                "  - {name: c, configMap: {name: x, items: [{key: k, path: ../k}]}}\n",
                "    - {name: c, mountPath: /c}\n",
                "spec.volumes[0].configMap.items[0].path",
            ),
        ] {
            let e = with(vols, mounts).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        // A cluster node's static pods may not name API objects.
        let p = with(
            "  - {name: c, configMap: {name: x}}\n",
            "    - {name: c, mountPath: /c}\n",
        )
        .unwrap();
        let e = node_static_pod(p, "n1").unwrap_err();
        assert_eq!(e.field, "spec.volumes[0]", "{e}");
    }

    #[test]
    fn object_documents_are_read_as_the_api_server_stores_them() {
        use super::super::envref::RefKind;
        let doc = |y: &str| parse_document(y.as_bytes(), "/m/o.yaml", "n", false);
        let Document::Object { namespace, r, data } = doc(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\ndata: {a: aGk=}\nstringData: {b: there}\n",
        )
        .unwrap() else {
            panic!("not an object")
        };
        assert_eq!(
            (namespace.as_str(), r.kind, r.name.as_str()),
            ("ns", RefKind::Secret, "s")
        );
        assert_eq!(data.data["a"], b"hi");
        assert_eq!(data.data["b"], b"there");
        let Document::Object { data, .. } = doc(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {volumeName: pv}\n",
        )
        .unwrap() else {
            panic!("not an object")
        };
        assert_eq!(data.data["phase"], b"Bound");
        let e =
            doc("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\ndatta: {}\n")
                .unwrap_err();
        assert_eq!(e.field, "datta");
        assert!(matches!(doc(OK).unwrap(), Document::Pod(_)));
    }

    #[test]
    fn several_documents_are_refused() {
        let e = parse(&format!("{OK}---\n{OK}")).unwrap_err();
        assert!(e.message.contains("2 documents"));
    }

    #[test]
    fn api_objects_only_outside_a_cluster_node_s_static_pods() {
        let pod = |env: &str| -> Pod {
            let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns\n  uid: u\nspec:\n  containers:\n  - name: c\n    image: host\n    command: [/bin/true]\n{env}");
            serde_saphyr::from_str(&yaml).unwrap()
        };
        let key_ref = pod("    env:\n    - name: A\n      valueFrom:\n        configMapKeyRef: {name: cm, key: k}\n");
        let from = pod("    envFrom:\n    - secretRef: {name: s}\n      prefix: S_\n");
        for p in [&key_ref, &from] {
            let e = validate(p).unwrap_err();
            assert!(
                e.to_string().contains("static pod of a cluster node"),
                "{e}"
            );
            validate_with(p, true).unwrap();
        }
        let bad_prefix = pod("    envFrom:\n    - secretRef: {name: s}\n      prefix: a-b\n");
        let e = validate_with(&bad_prefix, true).unwrap_err();
        assert!(e.to_string().contains("envFrom[0].prefix"), "{e}");
        let both = pod("    envFrom:\n    - secretRef: {name: s}\n      configMapRef: {name: m}\n");
        assert!(validate_with(&both, true).is_err());
        let no_key = pod(
            "    env:\n    - name: A\n      valueFrom:\n        secretKeyRef: {name: s, key: ''}\n",
        );
        let e = validate_with(&no_key, true).unwrap_err();
        assert!(e.to_string().contains("secretKeyRef.key"), "{e}");
    }

    #[test]
    fn resource_field_refs_are_checked_as_the_api_server_does() {
        let with = |r: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: host\n    command: [/bin/true]\n    env:\n    - name: A\n      valueFrom:\n        resourceFieldRef: {r}\n")
        };
        parse(&with("{resource: limits.cpu, divisor: 1m}")).unwrap();
        parse(&with("{resource: requests.memory, divisor: 1Mi}")).unwrap();
        let e = parse(&with("{resource: limits.gpu}")).unwrap_err();
        assert!(e.to_string().contains("resourceFieldRef.resource"), "{e}");
        let e = parse(&with("{resource: limits.cpu, divisor: 2}")).unwrap_err();
        assert!(e.to_string().contains("resourceFieldRef.divisor"), "{e}");
        let e = parse(&with("{resource: limits.memory, divisor: 1m}")).unwrap_err();
        assert!(e.to_string().contains("divisor"), "{e}");
    }
}
