//! The three patch types of the API: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902) and strategic merge patch (k8s.io/apimachinery/pkg/util/strategicpatch).
//!
//! Strategic merge patch only differs from a merge patch on lists: a list
//! whose Go field carries a `patchMergeKey` merges element by element on that
//! key, one with `patchStrategy:"merge"` and no key is a set of primitives,
//! and every other list is replaced whole. [`LIST_STRATEGIES`] lists the
//! merge lists of the kinds served, from their Go struct tags.

use super::kinds::Kind;
use super::status::ApiError;
use serde_json::{Map, Value};

/// The `Content-Type`s PATCH accepts. Server-side apply
/// (`application/apply-patch+yaml`) is not implemented and answers 415.
pub const PATCH_TYPES: [&str; 3] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// (kind or "*", list path, merge key; None = merge as a set of primitives).
/// A path descends into list elements with `[]`.
const LIST_STRATEGIES: &[(&str, &str, Option<&str>)] = &[
    // k8s.io/apimachinery/pkg/apis/meta/v1/types.go, ObjectMeta
    ("*", "metadata.finalizers", None),
    ("*", "metadata.ownerReferences", Some("uid")),
    // k8s.io/api/core/v1/types.go, PodSpec
    ("Pod", "spec.volumes", Some("name")),
    ("Pod", "spec.initContainers", Some("name")),
    ("Pod", "spec.containers", Some("name")),
    ("Pod", "spec.ephemeralContainers", Some("name")),
    ("Pod", "spec.imagePullSecrets", Some("name")),
    ("Pod", "spec.hostAliases", Some("ip")),
    ("Pod", "spec.topologySpreadConstraints", Some("topologyKey")),
    ("Pod", "spec.schedulingGates", Some("name")),
    ("Pod", "spec.resourceClaims", Some("name")),
    // Container and EphemeralContainerCommon
    ("Pod", "spec.initContainers[].ports", Some("containerPort")),
    ("Pod", "spec.initContainers[].env", Some("name")),
    (
        "Pod",
        "spec.initContainers[].volumeMounts",
        Some("mountPath"),
    ),
    (
        "Pod",
        "spec.initContainers[].volumeDevices",
        Some("devicePath"),
    ),
    ("Pod", "spec.containers[].ports", Some("containerPort")),
    ("Pod", "spec.containers[].env", Some("name")),
    ("Pod", "spec.containers[].volumeMounts", Some("mountPath")),
    ("Pod", "spec.containers[].volumeDevices", Some("devicePath")),
    (
        "Pod",
        "spec.ephemeralContainers[].ports",
        Some("containerPort"),
    ),
    ("Pod", "spec.ephemeralContainers[].env", Some("name")),
    (
        "Pod",
        "spec.ephemeralContainers[].volumeMounts",
        Some("mountPath"),
    ),
    (
        "Pod",
        "spec.ephemeralContainers[].volumeDevices",
        Some("devicePath"),
    ),
    // PodStatus. containerStatuses, initContainerStatuses and
    // ephemeralContainerStatuses have no merge key (+listType=atomic): a
    // patch replaces them whole, which is why the kubelet sends them whole.
    ("Pod", "status.conditions", Some("type")),
    ("Pod", "status.podIPs", Some("ip")),
    ("Pod", "status.hostIPs", Some("ip")),
    ("Pod", "status.resourceClaimStatuses", Some("name")),
    // NodeSpec and NodeStatus (taints, images and volumesAttached are atomic)
    ("Node", "spec.podCIDRs", None),
    ("Node", "status.conditions", Some("type")),
    ("Node", "status.addresses", Some("type")),
    // NamespaceStatus
    ("Namespace", "status.conditions", Some("type")),
    // ServiceAccount (imagePullSecrets is atomic)
    ("ServiceAccount", "secrets", Some("name")),
    // PersistentVolumeClaimStatus (PersistentVolumeSpec and
    // PersistentVolumeClaimSpec lists are atomic)
    ("PersistentVolumeClaim", "status.conditions", Some("type")),
];

/// How a list at `path` of `kind` merges: Some(Some(key)), Some(None) for a
/// set of primitives, None when it is replaced.
fn list_strategy(kind: &Kind, path: &str) -> Option<Option<&'static str>> {
    LIST_STRATEGIES
        .iter()
        .find(|(k, p, _)| (*k == "*" || *k == kind.kind) && *p == path)
        .map(|(_, _, key)| *key)
}

/// Applies a PATCH body of `content_type` to `current`.
pub fn apply(
    kind: &Kind,
    content_type: &str,
    current: &Value,
    body: &[u8],
) -> Result<Value, ApiError> {
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut doc = current.clone();
    match content_type {
        "application/merge-patch+json" => json_patch::merge(&mut doc, &patch),
        "application/json-patch+json" => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
            // apply failures are 422 in the patch handler (patch.go applyJSPatch)
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        }
        "application/strategic-merge-patch+json" => {
            let (Value::Object(orig), Value::Object(p)) = (current, &patch) else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            doc = match merge_map(kind, "", orig, p)? {
                Some(m) => Value::Object(m),
                None => Value::Object(Map::new()),
            };
        }
        other => unreachable!("content type {other} was checked by the caller"),
    }
    Ok(doc)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Patch keys that are directives rather than fields.
fn is_directive(key: &str) -> bool {
    key.starts_with('$')
}

/// A patch map with every directive removed, recursively: what a patch
/// contributes where there is nothing to merge it with.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Merges patch map `p` into `orig` at `path`; None means `$patch: delete`.
fn merge_map(
    kind: &Kind,
    path: &str,
    orig: &Map<String, Value>,
    p: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    match p.get("$patch").map(|d| d.as_str().unwrap_or("")) {
        None | Some("merge") => {}
        Some("replace") => {
            return Ok(Some(
                strip_directives(&Value::Object(p.clone()))
                    .as_object()
                    .unwrap()
                    .clone(),
            ))
        }
        Some("delete") => return Ok(None),
        Some(other) => return Err(bad(format!("Unknown patch type: {other:?} in map: {p:?}"))),
    }
    let mut out = orig.clone();
    for (key, value) in p {
        if is_directive(key) {
            continue;
        }
        let child = join(path, key);
        match value {
            Value::Null => {
                out.remove(key);
            }
            Value::Object(pm) => {
                let empty = Map::new();
                let om = out.get(key).and_then(Value::as_object).unwrap_or(&empty);
                match merge_map(kind, &child, om, pm)? {
                    Some(m) => out.insert(key.clone(), Value::Object(m)),
                    None => out.remove(key),
                };
            }
            Value::Array(pl) => {
                let ol = out
                    .get(key)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = match list_strategy(kind, &child) {
                    Some(Some(merge_key)) => merge_keyed(kind, &child, ol, pl, merge_key)?,
                    Some(None) => {
                        let mut set = ol;
                        set.extend(
                            pl.iter()
                                .filter(|v| !set.contains(v))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                        set
                    }
                    None => pl.iter().map(strip_directives).collect(),
                };
                out.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                out.insert(key.clone(), scalar.clone());
            }
        }
    }
    // Directives about lists, applied once the lists are merged.
    for (key, value) in p {
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = value
                .as_array()
                .ok_or_else(|| bad(format!("{key} must be a list")))?;
            if let Some(Value::Array(items)) = out.get_mut(list) {
                items.retain(|v| !gone.contains(v));
            }
        } else if let Some(list) = key.strip_prefix("$setElementOrder/") {
            let order = value
                .as_array()
                .ok_or_else(|| bad(format!("{key} must be a list")))?;
            let merge_key = list_strategy(kind, &join(path, list)).flatten();
            if let Some(Value::Array(items)) = out.get_mut(list) {
                *items = reorder(std::mem::take(items), order, merge_key);
            }
        } else if key == "$retainKeys" {
            let keep = value
                .as_array()
                .ok_or_else(|| bad("$retainKeys must be a list"))?;
            out.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)));
        }
    }
    Ok(Some(out))
}

/// Merges a list of objects by `merge_key`: elements with the key of an
/// existing one merge into it (or delete it with `$patch: delete`), new ones
/// are appended; a `{"$patch": "replace"}` element replaces the whole list.
fn merge_keyed(
    kind: &Kind,
    path: &str,
    orig: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
) -> Result<Vec<Value>, ApiError> {
    let is_replace = |v: &Value| v.get("$patch").and_then(Value::as_str) == Some("replace");
    if patch.iter().any(is_replace) {
        return Ok(patch
            .iter()
            .filter(|v| !is_replace(v))
            .map(strip_directives)
            .collect());
    }
    let element_path = format!("{path}[]");
    let mut out = orig;
    for item in patch {
        let Some(pm) = item.as_object() else {
            return Err(bad(format!(
                "{path}: the list is merged by {merge_key:?}, its elements must be objects"
            )));
        };
        let Some(id) = pm.get(merge_key) else {
            return Err(bad(format!(
                "map: {item} does not contain declared merge key: {merge_key}"
            )));
        };
        let existing = out.iter().position(|e| e.get(merge_key) == Some(id));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            out.retain(|e| e.get(merge_key) != Some(id));
            continue;
        }
        match existing {
            Some(i) => {
                let om = out[i].as_object().cloned().unwrap_or_default();
                match merge_map(kind, &element_path, &om, pm)? {
                    Some(m) => out[i] = Value::Object(m),
                    None => {
                        out.remove(i);
                    }
                }
            }
            None => {
                if let Some(m) = merge_map(kind, &element_path, &Map::new(), pm)? {
                    out.push(Value::Object(m));
                }
            }
        }
    }
    Ok(out)
}

/// `$setElementOrder`: the elements it names come in its order; an element it
/// does not name keeps its place after the element that preceded it.
fn reorder(items: Vec<Value>, order: &[Value], merge_key: Option<&str>) -> Vec<Value> {
    let id = |v: &Value| match merge_key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let rank = |v: &Value| order.iter().position(|o| id(o).is_some() && id(o) == id(v));
    let mut ranked: Vec<(usize, Value)> = vec![];
    let mut unranked: Vec<(Option<usize>, Value)> = vec![];
    let mut last_rank = None;
    for item in items {
        match rank(&item) {
            Some(r) => {
                last_rank = Some(r);
                ranked.push((r, item));
            }
            None => unranked.push((last_rank, item)),
        }
    }
    ranked.sort_by_key(|(r, _)| *r);
    let mut out: Vec<Value> = unranked
        .iter()
        .filter(|(after, _)| after.is_none())
        .map(|(_, v)| v.clone())
        .collect();
    for (r, item) in ranked {
        out.push(item);
        out.extend(
            unranked
                .iter()
                .filter(|(after, _)| *after == Some(r))
                .map(|(_, v)| v.clone()),
        );
    }
    out
}
