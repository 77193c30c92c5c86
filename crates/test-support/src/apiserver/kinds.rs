//! The resource types the fixture serves and what is particular to each:
//! the flags of its registry strategy (pkg/registry/<group>/<kind>/strategy.go
//! in kubernetes/kubernetes), its defaults, its selectable fields and the part
//! of its validation a node agent can run into.
//!
//! Every body is decoded through the k8s-openapi type of its kind, as the real
//! server decodes into Go structs: a wrongly typed field is a 400, a missing
//! required one a 422, unknown fields are dropped.

use super::csr;
use super::status::{ApiError, FieldError};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Map, Value};

/// A served resource type.
pub struct Kind {
    /// The resource name in URLs: `pods`.
    pub plural: &'static str,
    pub kind: &'static str,
    /// API group, "" for core.
    pub group: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
    /// Has a `/status` subresource: writes to the object keep the old status,
    /// writes to `/status` keep everything else.
    pub has_status: bool,
    /// Pods: DELETE marks a bound, running pod and the kubelet removes it.
    pub graceful_delete: bool,
    /// `AllowCreateOnUpdate`: a PUT to a missing name creates it.
    pub create_on_update: bool,
    /// `AllowUnconditionalUpdate`: a PUT without resourceVersion overwrites.
    pub unconditional_update: bool,
    /// `ReturnDeletedObject`: DELETE answers the object, not a `Status`.
    pub returns_deleted: bool,
    /// Names are RFC 1123 labels (namespaces) rather than subdomains.
    pub label_names: bool,
    /// Field selectors: (field, JSON pointer, value when absent).
    pub fields: &'static [(&'static str, &'static str, &'static str)],
    decode: fn(Value) -> Result<Value, serde_path_to_error::Error<serde_json::Error>>,
}

const META: [(&str, &str, &str); 2] = [
    ("metadata.name", "/metadata/name", ""),
    ("metadata.namespace", "/metadata/namespace", ""),
];

/// Everything served. Flags from the strategies and storage of each kind.
pub static KINDS: [Kind; 11] = [
    Kind {
        plural: "pods",
        kind: "Pod",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: true,
        graceful_delete: true,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: true,
        label_names: false,
        // pkg/registry/core/pod/strategy.go ToSelectableFields
        fields: &[
            META[0],
            META[1],
            ("spec.nodeName", "/spec/nodeName", ""),
            ("spec.restartPolicy", "/spec/restartPolicy", ""),
            ("spec.schedulerName", "/spec/schedulerName", ""),
            ("spec.serviceAccountName", "/spec/serviceAccountName", ""),
            ("spec.hostNetwork", "/spec/hostNetwork", "false"),
            ("status.phase", "/status/phase", ""),
            ("status.podIP", "/status/podIPs/0/ip", ""),
            ("status.nominatedNodeName", "/status/nominatedNodeName", ""),
        ],
        decode: typed::<k8s_openapi::api::core::v1::Pod>,
    },
    Kind {
        plural: "nodes",
        kind: "Node",
        group: "",
        api_version: "v1",
        namespaced: false,
        has_status: true,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: false,
        label_names: false,
        fields: &[
            META[0],
            ("spec.unschedulable", "/spec/unschedulable", "false"),
        ],
        decode: typed::<k8s_openapi::api::core::v1::Node>,
    },
    Kind {
        plural: "namespaces",
        kind: "Namespace",
        group: "",
        api_version: "v1",
        namespaced: false,
        has_status: true,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: true,
        label_names: true,
        fields: &[
            META[0],
            ("status.phase", "/status/phase", ""),
            ("name", "/metadata/name", ""),
        ],
        decode: typed::<k8s_openapi::api::core::v1::Namespace>,
    },
    Kind {
        plural: "events",
        kind: "Event",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: false,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: false,
        label_names: false,
        // pkg/registry/core/event/strategy.go ToSelectableFields
        fields: &[
            META[0],
            META[1],
            ("involvedObject.kind", "/involvedObject/kind", ""),
            ("involvedObject.namespace", "/involvedObject/namespace", ""),
            ("involvedObject.name", "/involvedObject/name", ""),
            ("involvedObject.uid", "/involvedObject/uid", ""),
            (
                "involvedObject.apiVersion",
                "/involvedObject/apiVersion",
                "",
            ),
            (
                "involvedObject.resourceVersion",
                "/involvedObject/resourceVersion",
                "",
            ),
            ("involvedObject.fieldPath", "/involvedObject/fieldPath", ""),
            ("reason", "/reason", ""),
            ("reportingComponent", "/reportingComponent", ""),
            ("source", "/source/component", ""),
            ("type", "/type", ""),
        ],
        decode: typed::<k8s_openapi::api::core::v1::Event>,
    },
    Kind {
        plural: "configmaps",
        kind: "ConfigMap",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: false,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: false,
        label_names: false,
        fields: &META,
        decode: typed::<k8s_openapi::api::core::v1::ConfigMap>,
    },
    Kind {
        plural: "secrets",
        kind: "Secret",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: false,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: false,
        label_names: false,
        fields: &[META[0], META[1], ("type", "/type", "")],
        decode: typed::<k8s_openapi::api::core::v1::Secret>,
    },
    Kind {
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: false,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: true,
        label_names: false,
        fields: &META,
        decode: typed::<k8s_openapi::api::core::v1::ServiceAccount>,
    },
    // pkg/registry/core/persistentvolume/strategy.go
    Kind {
        plural: "persistentvolumes",
        kind: "PersistentVolume",
        group: "",
        api_version: "v1",
        namespaced: false,
        has_status: true,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: true,
        label_names: false,
        // PersistentVolumeToSelectableFields ("name" is a bug kept for compatibility)
        fields: &[META[0], ("name", "/metadata/name", "")],
        decode: typed::<k8s_openapi::api::core::v1::PersistentVolume>,
    },
    // pkg/registry/core/persistentvolumeclaim/strategy.go
    Kind {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        group: "",
        api_version: "v1",
        namespaced: true,
        has_status: true,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: true,
        label_names: false,
        fields: &[META[0], META[1], ("name", "/metadata/name", "")],
        decode: typed::<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    },
    Kind {
        plural: "leases",
        kind: "Lease",
        group: "coordination.k8s.io",
        api_version: "coordination.k8s.io/v1",
        namespaced: true,
        has_status: false,
        graceful_delete: false,
        // pkg/registry/coordination/lease/strategy.go: PUT may create, but an
        // update must carry a resourceVersion.
        create_on_update: true,
        unconditional_update: false,
        returns_deleted: false,
        label_names: false,
        fields: &META,
        decode: typed::<k8s_openapi::api::coordination::v1::Lease>,
    },
    // pkg/registry/certificates/certificates/strategy.go, with the
    // `/status` and `/approval` subresources (csr.rs).
    Kind {
        plural: "certificatesigningrequests",
        kind: "CertificateSigningRequest",
        group: "certificates.k8s.io",
        api_version: "certificates.k8s.io/v1",
        namespaced: false,
        has_status: true,
        graceful_delete: false,
        create_on_update: false,
        unconditional_update: true,
        returns_deleted: false,
        label_names: false,
        // SelectableFields: the object meta fields and spec.signerName.
        fields: &[META[0], ("spec.signerName", "/spec/signerName", "")],
        decode: typed::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>,
    },
];

/// The kind served at `/api/v1/<plural>` (group "") or `/apis/<group>/v1/<plural>`.
pub fn lookup(group: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

/// The kind for a plural name, for the handle's direct access.
pub fn by_plural(plural: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.plural == plural)
        .unwrap_or_else(|| panic!("the test API server does not serve {plural:?}"))
}

fn typed<T: DeserializeOwned + Serialize>(
    v: Value,
) -> Result<Value, serde_path_to_error::Error<serde_json::Error>> {
    let t: T = serde_path_to_error::deserialize(v)?;
    Ok(serde_json::to_value(t).expect("k8s-openapi types serialize"))
}

impl Kind {
    /// Decodes a request body as the real server would: `kind`/`apiVersion`
    /// may be left out (the URL says them) but must match when present.
    pub fn decode(&self, body: Value) -> Result<Value, ApiError> {
        let name = body
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !body.is_object() {
            return Err(ApiError::bad_request(format!(
                "{} in version \"v1\" cannot be handled as a {}: the body is not a JSON object",
                self.kind, self.kind
            )));
        }
        let mut obj = match (self.decode)(body) {
            Ok(v) => v,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // A missing required field decodes fine in Go and fails validation.
                if let Some(field) = inner
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    let at = if path == "." {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    };
                    return Err(ApiError::invalid_object(
                        self,
                        &name,
                        &[FieldError::required(at, "")],
                    ));
                }
                return Err(ApiError::bad_request(format!(
                    "{} in version \"v1\" cannot be handled as a {}: {path}: {inner}",
                    self.kind, self.kind
                )));
            }
        };
        strip_empty_lists(&mut obj);
        // The server keeps its own managedFields; the fixture keeps none.
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        Ok(obj)
    }

    /// Defaulting (SetDefaults_* in pkg/apis/<group>/v1/defaults.go), done on
    /// every decoded body, so on creates, updates and patch results alike.
    pub fn apply_defaults(&self, obj: &mut Value) {
        match self.kind {
            "Pod" => default_pod(obj),
            "Namespace" => {
                // The immutable name label, set on every write since 1.21.
                let name = obj["metadata"]["name"].clone();
                if name.is_string() {
                    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
                }
            }
            "Secret" => {
                default_str(obj, "/type", "Opaque");
                // stringData is write-only: the server merges it into data.
                if let Some(Value::Object(strings)) =
                    obj.as_object_mut().and_then(|m| m.remove("stringData"))
                {
                    for (key, value) in strings {
                        obj["data"][key.as_str()] =
                            json!(base64(value.as_str().unwrap_or("").as_bytes()));
                    }
                }
            }
            "Node" if obj.pointer("/status/allocatable").is_none() => {
                if let Some(cap) = obj.pointer("/status/capacity").cloned() {
                    obj["status"]["allocatable"] = cap;
                }
            }
            // SetDefaults_PersistentVolume and SetDefaults_HostPathVolumeSource.
            "PersistentVolume" if obj.is_object() => {
                default_object(obj, "/spec");
                default_object(obj, "/status");
                default_str(obj, "/status/phase", "Pending");
                default_str(obj, "/spec/persistentVolumeReclaimPolicy", "Retain");
                default_str(obj, "/spec/volumeMode", "Filesystem");
                if obj.pointer("/spec/hostPath").is_some_and(Value::is_object) {
                    default_str(obj, "/spec/hostPath/type", "");
                }
            }
            // SetDefaults_PersistentVolumeClaim and SetDefaults_PersistentVolumeClaimSpec.
            "PersistentVolumeClaim" if obj.is_object() => {
                default_object(obj, "/spec");
                default_object(obj, "/status");
                default_str(obj, "/status/phase", "Pending");
                default_str(obj, "/spec/volumeMode", "Filesystem");
            }
            _ => {}
        }
    }

    /// PrepareForCreate: what the server sets on a new object; `user` is
    /// the requester's UserInfo (JSON), if it has one.
    pub fn prepare_for_create(&self, obj: &mut Value, user: Option<&Value>) {
        match self.kind {
            "CertificateSigningRequest" => csr::prepare_for_create(obj, user),
            "Pod" => {
                let qos = pod_qos(obj);
                obj["status"] = json!({ "phase": "Pending", "qosClass": qos });
                obj["metadata"]["generation"] = json!(1);
            }
            "Namespace" => {
                obj["status"] = json!({ "phase": "Active" });
                let fins = obj["spec"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !fins.contains(&json!("kubernetes")) {
                    let mut fins = fins;
                    fins.push(json!("kubernetes"));
                    obj["spec"]["finalizers"] = Value::Array(fins);
                }
            }
            // The status is cleared; with PersistentVolumeLastPhaseTransitionTime
            // (GA, locked on) a new volume is Pending since now.
            "PersistentVolume" => {
                obj["status"] = json!({ "phase": "Pending", "lastPhaseTransitionTime": now() });
            }
            // The status is cleared, and defaulting on read makes it Pending.
            "PersistentVolumeClaim" => obj["status"] = json!({ "phase": "Pending" }),
            "ServiceAccount" => clean_secret_references(obj),
            _ => {}
        }
    }

    /// PrepareForUpdate of a write to `/status`, once the new status is in
    /// place (the status strategies).
    pub fn prepare_for_status_update(&self, new: &mut Value, old: &Value) {
        if self.kind == "CertificateSigningRequest" {
            csr::prepare_for_status_update(new, old);
        }
        if self.kind == "PersistentVolume" {
            // A phase change without a new transition time gets now; no
            // change keeps the old time unless the writer set one.
            let phase = |o: &Value| o.pointer("/status/phase").cloned();
            let old_time = old.pointer("/status/lastPhaseTransitionTime").cloned();
            let new_time = new.pointer("/status/lastPhaseTransitionTime").cloned();
            if phase(new) == phase(old) {
                if new_time.is_none() {
                    if let Some(t) = old_time {
                        new["status"]["lastPhaseTransitionTime"] = t;
                    }
                }
            } else if new_time.is_none() || new_time == old_time {
                new["status"]["lastPhaseTransitionTime"] = now();
            }
        }
    }

    /// PrepareForUpdate of a write to `/approval` (CSRs): the object stays
    /// as it was but for the conditions written.
    pub fn prepare_for_approval_update(
        &self,
        new: &mut Value,
        conditions: Option<Value>,
        old: &Value,
    ) {
        csr::prepare_for_approval_update(new, conditions, old);
    }

    /// Validation of a write to `/approval`.
    pub fn validate_approval_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        csr::validate_update(new, old, csr::Path::Approval)
    }

    /// PrepareForUpdate of a write to the object itself (not `/status`).
    pub fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        if self.has_status {
            set_or_remove(new, "status", old.get("status"));
        }
        if self.kind == "CertificateSigningRequest" {
            // Certificate requests are immutable but through subresources.
            set_or_remove(new, "spec", old.get("spec"));
        }
        if self.kind == "Namespace" {
            // Only the (unserved) /finalize subresource changes spec.finalizers.
            let fins = old.pointer("/spec/finalizers").cloned();
            match (fins, new.get_mut("spec").and_then(Value::as_object_mut)) {
                (Some(f), Some(spec)) => {
                    spec.insert("finalizers".into(), f);
                }
                (Some(f), None) => new["spec"] = json!({ "finalizers": f }),
                (None, Some(spec)) => {
                    spec.remove("finalizers");
                }
                (None, None) => {}
            }
        }
        if self.kind == "ServiceAccount" {
            clean_secret_references(new);
        }
        if self.kind == "Pod" && new.get("spec") != old.get("spec") {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
    }

    /// Validation of a new object (the part a node agent can run into).
    pub fn validate_create(&self, obj: &Value) -> Vec<FieldError> {
        let mut errs = validate_meta(self, obj);
        errs.extend(self.validate_body(obj));
        errs
    }

    /// Validation of an update to the object itself (not `/status`).
    pub fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errs = validate_meta(self, new);
        match self.kind {
            "Pod" => errs.extend(pod_spec_update(new, old)),
            "PersistentVolume" => {
                errs.extend(self.validate_body(new));
                errs.extend(pv_update(new, old));
            }
            "PersistentVolumeClaim" => {
                errs.extend(self.validate_body(new));
                errs.extend(pvc_update(new, old));
            }
            "CertificateSigningRequest" => {
                errs.extend(csr::validate_update(new, old, csr::Path::Main))
            }
            _ => errs.extend(self.validate_body(new)),
        }
        errs
    }

    /// Validation of a `/status` write (ValidatePodStatusUpdate and kin).
    pub fn validate_status_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        if self.kind == "CertificateSigningRequest" {
            return csr::validate_update(new, old, csr::Path::Status);
        }
        if self.kind != "Pod" {
            return vec![];
        }
        let policy = old
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always");
        let mut errs = state_transitions(new, old, "containerStatuses", policy, None);
        let init = old
            .pointer("/spec/initContainers")
            .cloned()
            .unwrap_or(json!([]));
        errs.extend(state_transitions(
            new,
            old,
            "initContainerStatuses",
            policy,
            Some(&init),
        ));
        errs
    }

    fn validate_body(&self, obj: &Value) -> Vec<FieldError> {
        match self.kind {
            "Pod" => validate_pod_spec(obj),
            "Lease" => validate_lease(obj),
            "Event" => validate_event(obj),
            "ConfigMap" => validate_keys(obj, &["data", "binaryData"]),
            "Secret" => validate_keys(obj, &["data"]),
            "PersistentVolume" => validate_pv(obj),
            "PersistentVolumeClaim" => validate_pvc(obj),
            "CertificateSigningRequest" => csr::validate_create(obj),
            _ => vec![],
        }
    }

    /// The value of a selectable field, or None when the kind has no such field.
    pub fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        let (_, pointer, default) = self.fields.iter().find(|(f, _, _)| *f == field)?;
        Some(match obj.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => default.to_string(),
        })
    }
}

fn set_or_remove(obj: &mut Value, key: &str, value: Option<&Value>) {
    let map = obj.as_object_mut().expect("objects are JSON objects");
    match value {
        Some(v) => map.insert(key.to_string(), v.clone()),
        None => map.remove(key),
    };
}

fn default_str(obj: &mut Value, pointer: &str, value: &str) {
    if obj.pointer(pointer).is_none_or(Value::is_null) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = if parent.is_empty() {
            Some(&mut *obj)
        } else {
            obj.pointer_mut(parent)
        };
        if let Some(Value::Object(m)) = parent {
            m.insert(key.to_string(), json!(value));
        }
    }
}

fn default_object(obj: &mut Value, pointer: &str) {
    if obj.pointer(pointer).is_none_or(Value::is_null) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = if parent.is_empty() {
            Some(&mut *obj)
        } else {
            obj.pointer_mut(parent)
        };
        if let Some(Value::Object(m)) = parent {
            m.insert(key.to_string(), json!({}));
        }
    }
}

/// metav1.Now, as JSON.
fn now() -> Value {
    json!(jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string())
}

/// cleanSecretReferences: a ServiceAccount's `secrets` keep only their names.
fn clean_secret_references(sa: &mut Value) {
    if let Some(Value::Array(secrets)) = sa.get_mut("secrets") {
        for s in secrets.iter_mut() {
            let name = s.get("name").cloned();
            *s = match name {
                Some(n) => json!({ "name": n }),
                None => json!({}),
            };
        }
    }
}

/// Go drops empty lists (`omitempty`) and compares them equal to absent ones;
/// keep stored objects in that one form.
fn strip_empty_lists(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, child| !matches!(child, Value::Array(a) if a.is_empty()));
            m.values_mut().for_each(strip_empty_lists);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_empty_lists),
        _ => {}
    }
}

/// SetDefaults_Pod, SetDefaults_PodSpec and SetDefaults_Container, reduced to
/// the fields a kubelet reads.
fn default_pod(pod: &mut Value) {
    if !pod["spec"].is_object() {
        return;
    }
    default_str(pod, "/spec/dnsPolicy", "ClusterFirst");
    default_str(pod, "/spec/restartPolicy", "Always");
    default_str(pod, "/spec/schedulerName", "default-scheduler");
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    spec.entry("securityContext").or_insert(json!({}));
    spec.entry("enableServiceLinks").or_insert(json!(true));
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else {
            continue;
        };
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            let image = c
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            c.entry("imagePullPolicy")
                .or_insert(json!(default_pull_policy(&image)));
            let resources = c.entry("resources").or_insert(json!({}));
            // Requests default to limits.
            if let Some(Value::Object(limits)) = resources.get("limits").cloned() {
                let requests = resources["requests"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let mut merged = limits;
                merged.extend(requests);
                resources["requests"] = Value::Object(merged);
            }
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert(json!("TCP"));
                }
            }
        }
    }
}

/// `Always` for `:latest` or no tag, else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// GetPodQOS over cpu and memory.
fn pod_qos(pod: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array().into_iter().flatten() {
            let get = |kind: &str, res: &str| {
                c["resources"][kind][res]
                    .as_str()
                    .and_then(quantity)
                    .filter(|q| *q > 0.0)
            };
            for res in ["cpu", "memory"] {
                let (req, lim) = (get("requests", res), get("limits", res));
                any |= req.is_some() || lim.is_some();
                guaranteed &= lim.is_some() && req == lim;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A resource.Quantity as a number, enough to compare two of them.
fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse().ok()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, of any length.
fn is_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 label: at most 63 lower-case alphanumerics and '-', alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_chars(s)
}

/// An RFC 1123 subdomain: such labels joined by dots, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_chars)
}

pub const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_label_name_part(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| ok(b) || b == b'-' || b == b'_' || b == b'.')
        && ok(s.as_bytes()[0])
        && ok(s.as_bytes()[s.len() - 1])
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty() && is_dns_subdomain(prefix) && is_label_name_part(name)
        }
        None => is_label_name_part(s),
    }
}

/// ValidateObjectMeta: name, labels and annotation keys.
fn validate_meta(kind: &Kind, obj: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if kind.kind == "CertificateSigningRequest" {
        // ValidateCertificateRequestName: "We don't care what you call
        // your certificate requests."
    } else if kind.label_names && !is_dns_label(name) {
        errs.push(FieldError::invalid("metadata.name", json!(name), LABEL_MSG));
    } else if !kind.label_names && !is_dns_subdomain(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            json!(name),
            SUBDOMAIN_MSG,
        ));
    }
    for (key, value) in obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if !is_qualified_name(key) {
            errs.push(FieldError::invalid("metadata.labels", json!(key), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        let v = value.as_str().unwrap_or("");
        if !v.is_empty() && !is_label_name_part(v) {
            errs.push(FieldError::invalid(format!("metadata.labels.{key}"), json!(v), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    for key in obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if !is_qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid("metadata.annotations", json!(key), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    errs
}

/// ValidatePodSpec, the rules a hand-written pod can break.
fn validate_pod_spec(pod: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let spec = &pod["spec"];
    if spec["containers"].as_array().is_none_or(Vec::is_empty) {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut names: Vec<&str> = vec![];
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{at}.name"), ""));
            } else if !is_dns_label(name) {
                errs.push(FieldError::invalid(
                    format!("{at}.name"),
                    json!(name),
                    LABEL_MSG,
                ));
            } else if names.contains(&name) {
                errs.push(FieldError::duplicate(format!("{at}.name"), json!(name)));
            }
            names.push(name);
            if c["image"].as_str().unwrap_or("").trim().is_empty() {
                errs.push(FieldError::required(format!("{at}.image"), ""));
            }
        }
    }
    const POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
    if let Some(p) = spec["restartPolicy"]
        .as_str()
        .filter(|p| !POLICIES.contains(p))
    {
        errs.push(FieldError::not_supported(
            "spec.restartPolicy",
            json!(p),
            POLICIES,
        ));
    }
    const DNS: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
    if let Some(p) = spec["dnsPolicy"].as_str().filter(|p| !DNS.contains(p)) {
        errs.push(FieldError::not_supported("spec.dnsPolicy", json!(p), DNS));
    }
    errs
}

/// ValidatePodUpdate: of a pod's spec only images, activeDeadlineSeconds
/// (set or shortened), added tolerations and removed scheduling gates may change.
fn pod_spec_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let (new_spec, old_spec) = (&new["spec"], &old["spec"]);
    for list in ["containers", "initContainers"] {
        let (n, o) = (new_spec[list].as_array(), old_spec[list].as_array());
        if n.map_or(0, Vec::len) != o.map_or(0, Vec::len) {
            errs.push(FieldError::forbidden(
                format!("spec.{list}"),
                "pod updates may not add or remove containers",
            ));
            return errs;
        }
        for (i, c) in n.into_iter().flatten().enumerate() {
            if c["image"].as_str().unwrap_or("").is_empty() {
                errs.push(FieldError::required(format!("spec.{list}[{i}].image"), ""));
            }
        }
    }
    let mut masked = new_spec.clone();
    for list in ["containers", "initContainers"] {
        if let Some(cs) = masked.get_mut(list).and_then(Value::as_array_mut) {
            for (i, c) in cs.iter_mut().enumerate() {
                c["image"] = old_spec[list][i]["image"].clone();
            }
        }
    }
    let (new_ads, old_ads) = (
        new_spec["activeDeadlineSeconds"].as_i64(),
        old_spec["activeDeadlineSeconds"].as_i64(),
    );
    if let Some(o) = old_ads {
        if new_ads.is_none_or(|n| n > o) {
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                json!(new_ads),
                "must be less than or equal to previous value",
            ));
        }
    }
    let old_tolerations = old_spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_tolerations = new_spec["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old_gates = old_spec["schedulingGates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let new_gates = new_spec["schedulingGates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(m) = masked.as_object_mut() {
        for (key, allowed) in [
            ("activeDeadlineSeconds", true),
            (
                "tolerations",
                old_tolerations.iter().all(|t| new_tolerations.contains(t)),
            ),
            (
                "schedulingGates",
                new_gates.iter().all(|g| old_gates.contains(g)),
            ),
        ] {
            if allowed {
                match old_spec.get(key) {
                    Some(v) => m.insert(key.to_string(), v.clone()),
                    None => m.remove(key),
                };
            }
        }
    }
    if &masked != old_spec {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    errs
}

/// ValidateContainerStateTransition / ValidateInitContainerStateTransition:
/// a container that terminated and may not restart stays terminated.
fn state_transitions(
    new: &Value,
    old: &Value,
    list: &str,
    policy: &str,
    init: Option<&Value>,
) -> Vec<FieldError> {
    let mut errs = vec![];
    if policy == "Always" {
        return errs;
    }
    let news = new["status"][list].as_array().cloned().unwrap_or_default();
    for (i, o) in old["status"][list]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(terminated) = o.pointer("/state/terminated") else {
            continue;
        };
        if terminated["exitCode"].as_i64().unwrap_or(0) != 0 && policy == "OnFailure" {
            continue;
        }
        let restartable = init
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["name"] == o["name"] && c["restartPolicy"].as_str() == Some("Always"));
        if restartable {
            continue;
        }
        if news
            .iter()
            .any(|n| n["name"] == o["name"] && n.pointer("/state/terminated").is_none())
        {
            errs.push(FieldError::forbidden(
                format!("status.{list}[{i}].state"),
                "may not be transitioned to non-terminated state",
            ));
        }
    }
    errs
}

/// ValidateLeaseSpec.
fn validate_lease(lease: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    if let Some(d) = lease["spec"]["leaseDurationSeconds"]
        .as_i64()
        .filter(|d| *d <= 0)
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            json!(d),
            "must be greater than 0",
        ));
    }
    if let Some(t) = lease["spec"]["leaseTransitions"]
        .as_i64()
        .filter(|t| *t < 0)
    {
        errs.push(FieldError::invalid(
            "spec.leaseTransitions",
            json!(t),
            "must be greater than or equal to 0",
        ));
    }
    errs
}

/// ValidateEventCreate for core/v1 events without `eventTime`: the event
/// lives in its object's namespace (or in default for cluster objects).
fn validate_event(event: &Value) -> Vec<FieldError> {
    if event.get("eventTime").is_some_and(|t| !t.is_null()) {
        return vec![];
    }
    let ns = event
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let involved = event
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let ok = if involved.is_empty() {
        ns.is_empty() || ns == "default"
    } else {
        ns == involved
    };
    if ok {
        vec![]
    } else {
        vec![FieldError::invalid(
            "involvedObject.namespace",
            json!(involved),
            "does not match event.namespace",
        )]
    }
}

/// Keys of ConfigMap and Secret data: `[-._a-zA-Z0-9]+`, not `.` or `..`.
fn validate_keys(obj: &Value, maps: &[&str]) -> Vec<FieldError> {
    let mut errs = vec![];
    let mut seen: Vec<&String> = vec![];
    for map in maps {
        for key in obj[*map].as_object().map(Map::keys).into_iter().flatten() {
            let ok = !key.is_empty()
                && key != "."
                && key != ".."
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                errs.push(FieldError::invalid(*map, json!(key), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
            }
            if seen.contains(&key) {
                errs.push(FieldError::duplicate(format!("{map}[{key}]"), json!(key)));
            }
            seen.push(key);
        }
    }
    errs
}

// ----- persistent volumes and claims (pkg/apis/core/validation) -----

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

/// The PersistentVolumeSource members, as (JSON key, the field an error
/// names: ValidatePersistentVolumeSpec's own spelling).
const PV_SOURCES: &[(&str, &str)] = &[
    ("hostPath", "hostPath"),
    ("gcePersistentDisk", "gcePersistentDisk"),
    ("awsElasticBlockStore", "awsElasticBlockStore"),
    ("glusterfs", "glusterfs"),
    ("flocker", "flocker"),
    ("nfs", "nfs"),
    ("rbd", "rbd"),
    ("quobyte", "quobyte"),
    ("cephfs", "cephFS"),
    ("iscsi", "iscsi"),
    ("cinder", "cinder"),
    ("fc", "fc"),
    ("flexVolume", "flexVolume"),
    ("azureFile", "azureFile"),
    ("vsphereVolume", "vsphereVolume"),
    ("photonPersistentDisk", "photonPersistentDisk"),
    ("portworxVolume", "portworxVolume"),
    ("azureDisk", "azureDisk"),
    ("scaleIO", "scaleIO"),
    ("local", "local"),
    ("storageos", "storageos"),
    ("csi", "csi"),
];

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The access modes of a PV or PVC spec: supported values, and
/// ReadWriteOncePod alone.
fn access_mode_errors(spec: &Value, required: &str) -> Vec<FieldError> {
    let mut errs = vec![];
    let modes: Vec<&str> = spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m.as_str().unwrap_or(""))
        .collect();
    if modes.is_empty() {
        errs.push(FieldError::required("spec.accessModes", required));
    }
    let (mut rwop, mut other) = (false, false);
    for mode in &modes {
        if !ACCESS_MODES.contains(mode) {
            errs.push(FieldError::not_supported(
                "spec.accessModes",
                json!(mode),
                ACCESS_MODES,
            ));
        } else if *mode == "ReadWriteOncePod" {
            rwop = true;
        } else {
            other = true;
        }
    }
    if rwop && other {
        errs.push(FieldError::forbidden(
            "spec.accessModes",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    errs
}

/// ValidatePositiveQuantityValue.
fn positive_quantity(value: &Value, field: &str) -> Vec<FieldError> {
    let text = value.as_str().unwrap_or("");
    if quantity(text).is_some_and(|q| q <= 0.0) {
        vec![FieldError::invalid(
            field,
            json!(text),
            "must be greater than zero",
        )]
    } else {
        vec![]
    }
}

/// validatePathNoBacksteps.
fn no_backsteps(path: &str, field: &str) -> Vec<FieldError> {
    if path.split('/').any(|part| part == "..") {
        vec![FieldError::invalid(
            field,
            json!(path),
            "must not contain '..'",
        )]
    } else {
        vec![]
    }
}

/// ValidatePersistentVolumeSpec, for a PersistentVolume object: access
/// modes, capacity, reclaim policy, exactly one volume source and the
/// sources a node mounts itself (hostPath, local, nfs, csi), volume mode.
fn validate_pv(pv: &Value) -> Vec<FieldError> {
    let spec = &pv["spec"];
    let mut errs = access_mode_errors(spec, "");
    let capacity = spec["capacity"].as_object().cloned().unwrap_or_default();
    if capacity.is_empty() {
        errs.push(FieldError::required("spec.capacity", ""));
    }
    if !capacity.contains_key("storage") || capacity.len() > 1 {
        errs.push(FieldError::not_supported(
            "spec.capacity",
            Value::Object(capacity.clone()),
            &["storage"],
        ));
    }
    for (resource, value) in &capacity {
        errs.extend(positive_quantity(
            value,
            &format!("spec.capacity[{resource}]"),
        ));
    }
    if let Some(p) = spec["persistentVolumeReclaimPolicy"]
        .as_str()
        .filter(|p| !p.is_empty() && !RECLAIM_POLICIES.contains(p))
    {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            json!(p),
            RECLAIM_POLICIES,
        ));
    }
    // validateVolumeNodeAffinity
    let affinity = spec.get("nodeAffinity").filter(|a| !a.is_null());
    if let Some(a) = affinity {
        match a.get("required").filter(|r| !r.is_null()) {
            None => errs.push(FieldError::required(
                "spec.nodeAffinity.required",
                "must specify required node constraints",
            )),
            Some(r) if r["nodeSelectorTerms"].as_array().is_none_or(Vec::is_empty) => {
                errs.push(FieldError::required(
                    "spec.nodeAffinity.required.nodeSelectorTerms",
                    "must have at least one node selector term",
                ))
            }
            Some(_) => {}
        }
    }
    let mut sources = 0;
    for (key, field) in PV_SOURCES {
        let Some(source) = spec.get(*key).filter(|v| !v.is_null()) else {
            continue;
        };
        // flexVolume is counted without the check (as upstream).
        if sources > 0 && *key != "flexVolume" {
            errs.push(FieldError::forbidden(
                format!("spec.{field}"),
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        sources += 1;
        match *key {
            "hostPath" => {
                let path = str_at(source, "/path");
                if path.is_empty() {
                    errs.push(FieldError::required("spec.hostPath.path", ""));
                } else {
                    errs.extend(no_backsteps(path, "spec.hostPath.path"));
                    let t = str_at(source, "/type");
                    if !HOST_PATH_TYPES.contains(&t) {
                        errs.push(FieldError::not_supported(
                            "spec.hostPath.type",
                            json!(t),
                            HOST_PATH_TYPES,
                        ));
                    }
                }
            }
            "local" => {
                let path = str_at(source, "/path");
                if path.is_empty() {
                    errs.push(FieldError::required("spec.local.path", ""));
                } else {
                    errs.extend(no_backsteps(path, "spec.local.path"));
                }
                if affinity.is_none() {
                    errs.push(FieldError::required(
                        "spec.nodeAffinity",
                        "Local volume requires node affinity",
                    ));
                }
            }
            "nfs" => {
                if str_at(source, "/server").is_empty() {
                    errs.push(FieldError::required("spec.nfs.server", ""));
                }
                let path = str_at(source, "/path");
                if path.is_empty() {
                    errs.push(FieldError::required("spec.nfs.path", ""));
                } else if !path.starts_with('/') {
                    errs.push(FieldError::invalid(
                        "spec.nfs.path",
                        json!(path),
                        "must be an absolute path",
                    ));
                }
            }
            "csi" => {
                if str_at(source, "/driver").is_empty() {
                    errs.push(FieldError::required("spec.csi.driver", ""));
                }
                if str_at(source, "/volumeHandle").is_empty() {
                    errs.push(FieldError::required("spec.csi.volumeHandle", ""));
                }
            }
            _ => {}
        }
    }
    if sources == 0 {
        errs.push(FieldError::required("spec", "must specify a volume type"));
    }
    let host_root = spec["hostPath"]["path"]
        .as_str()
        .is_some_and(|p| p.trim_end_matches('/').is_empty() && !p.is_empty());
    if host_root && spec["persistentVolumeReclaimPolicy"] == "Recycle" {
        errs.push(FieldError::forbidden(
            "spec.persistentVolumeReclaimPolicy",
            "may not be 'recycle' for a hostPath mount of '/'",
        ));
    }
    if let Some(m) = spec["volumeMode"]
        .as_str()
        .filter(|m| !VOLUME_MODES.contains(m))
    {
        errs.push(FieldError::not_supported(
            "spec.volumeMode",
            json!(m),
            VOLUME_MODES,
        ));
    }
    errs
}

/// ValidatePersistentVolumeUpdate: the volume source and the volume mode
/// are immutable.
fn pv_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let source = |pv: &Value| -> Vec<(&str, Value)> {
        PV_SOURCES
            .iter()
            .filter_map(|(key, _)| {
                pv["spec"]
                    .get(*key)
                    .filter(|v| !v.is_null())
                    .map(|v| (*key, v.clone()))
            })
            .collect()
    };
    if source(new) != source(old) {
        errs.push(FieldError::forbidden(
            "spec.persistentvolumesource",
            "spec.persistentvolumesource is immutable after creation",
        ));
    }
    if new["spec"]["volumeMode"] != old["spec"]["volumeMode"] {
        errs.push(FieldError::immutable(
            "volumeMode",
            new["spec"]["volumeMode"].clone(),
        ));
    }
    errs
}

/// ValidatePersistentVolumeClaimSpec: access modes, a positive storage
/// request, volume mode.
fn validate_pvc(pvc: &Value) -> Vec<FieldError> {
    let spec = &pvc["spec"];
    let mut errs = access_mode_errors(spec, "at least 1 access mode is required");
    match spec.pointer("/resources/requests/storage") {
        None => errs.push(FieldError::required("spec.resources[storage]", "")),
        Some(q) => errs.extend(positive_quantity(q, "spec.resources[storage]")),
    }
    if let Some(m) = spec["volumeMode"]
        .as_str()
        .filter(|m| !VOLUME_MODES.contains(m))
    {
        errs.push(FieldError::not_supported(
            "spec.volumeMode",
            json!(m),
            VOLUME_MODES,
        ));
    }
    errs
}

/// ValidatePersistentVolumeClaimUpdate: a claim's spec is immutable but for
/// binding it to a volume once (`volumeName`), setting a storage class it
/// had none of, and the storage request of a bound claim, which may grow
/// (or shrink back, but not to or below `status.capacity`).
fn pvc_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    let (mut n, mut o) = (new["spec"].clone(), old["spec"].clone());
    let set = |spec: &mut Value, key: &str, value: Option<Value>| {
        if let Some(m) = spec.as_object_mut() {
            match value {
                Some(v) => m.insert(key.to_string(), v),
                None => m.remove(key),
            };
        }
    };
    if str_at(&o, "/volumeName").is_empty() {
        set(&mut o, "volumeName", n.get("volumeName").cloned());
    }
    const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
    let old_annotation = old
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(BETA_CLASS))
        .and_then(Value::as_str);
    let new_class = n.get("storageClassName").and_then(Value::as_str);
    // validateStorageClassUpgradeFromNil
    let class_from_nil = o.get("storageClassName").is_none()
        && new_class.is_some()
        && (old_annotation.is_none() || old_annotation == new_class);
    if class_from_nil {
        set(&mut n, "storageClassName", None);
    }
    let bound = new.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    if bound && n.pointer("/resources/requests").is_some() {
        if let Some(q) = o.pointer("/resources/requests/storage").cloned() {
            n["resources"]["requests"]["storage"] = q;
        }
    }
    set(
        &mut n,
        "volumeAttributesClassName",
        o.get("volumeAttributesClassName").cloned(),
    );
    if n != o {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let size = |pvc: &Value, pointer: &str| {
        pvc.pointer(pointer)
            .and_then(Value::as_str)
            .and_then(quantity)
    };
    let (new_size, old_size) = (
        size(new, "/spec/resources/requests/storage"),
        size(old, "/spec/resources/requests/storage"),
    );
    // RecoverVolumeExpansionFailure (GA): shrinking is refused only to or
    // below what the volume already has.
    if let (Some(n), Some(o)) = (new_size, old_size) {
        let capacity = size(old, "/status/capacity/storage").unwrap_or(0.0);
        if n < o && n <= capacity {
            errs.push(FieldError::forbidden(
                "spec.resources.requests.storage",
                "field can not be less than status.capacity",
            ));
        }
    }
    if new["spec"]["volumeMode"] != old["spec"]["volumeMode"] {
        errs.push(FieldError::immutable(
            "volumeMode",
            new["spec"]["volumeMode"].clone(),
        ));
    }
    errs
}

/// Standard base64 with padding (what a Secret's `data` holds).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
