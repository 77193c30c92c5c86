//! Errors as the API server reports them: a `Status` object with the
//! matching HTTP code. Messages, reasons and details follow
//! k8s.io/apimachinery/pkg/api/errors so that a client's error handling is
//! exercised the way a real kube-apiserver would exercise it.

use super::kinds::Kind;
use serde_json::{json, Value};

/// A failed request: becomes a `Status` body with HTTP status `code`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after: Option<u64>,
}

/// One entry of an `Invalid` error, as in k8s.io/apimachinery's field.Error.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub enum FieldErrorKind {
    Required,
    Invalid(Value),
    /// An invalid value printed as given (Go's `%#v` of a type JSON does
    /// not show, such as `[]byte{0x2d, …}`).
    InvalidShown(String),
    Forbidden,
    NotSupported(Value, &'static [&'static str]),
    Duplicate(Value),
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::new(field, FieldErrorKind::Required, detail)
    }
    pub fn invalid(field: impl Into<String>, value: Value, detail: &str) -> Self {
        Self::new(field, FieldErrorKind::Invalid(value), detail)
    }
    pub fn invalid_shown(field: impl Into<String>, shown: String, detail: &str) -> Self {
        Self::new(field, FieldErrorKind::InvalidShown(shown), detail)
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self::new(field, FieldErrorKind::Forbidden, detail)
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: Value,
        allowed: &'static [&'static str],
    ) -> Self {
        Self::new(field, FieldErrorKind::NotSupported(value, allowed), "")
    }
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self::new(field, FieldErrorKind::Duplicate(value), "")
    }
    /// `metadata.x: Invalid value: …: field is immutable`.
    pub fn immutable(field: impl Into<String>, value: Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }
    fn new(field: impl Into<String>, kind: FieldErrorKind, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            kind,
            detail: detail.to_string(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) | FieldErrorKind::InvalidShown(_) => "FieldValueInvalid",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
        }
    }

    /// The text after the field path, e.g. `Invalid value: "x": field is immutable`.
    fn body(&self) -> String {
        let head = match &self.kind {
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::Invalid(v) => format!("Invalid value: {}", go_value(v)),
            FieldErrorKind::InvalidShown(v) => format!("Invalid value: {v}"),
            FieldErrorKind::Forbidden => "Forbidden".to_string(),
            FieldErrorKind::NotSupported(v, allowed) => {
                let quoted: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    go_value(v),
                    quoted.join(", ")
                )
            }
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {}", go_value(v)),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

/// Go's `%q` of a string, as far as messages need it: Rust's `{:?}` (the
/// two differ only in how some control and non-printing characters are
/// escaped).
pub fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// How field.Error prints a value: strings quoted, numbers bare.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// `pods` or `leases.coordination.k8s.io`, as errors name a resource.
fn qualified(kind: &Kind) -> String {
    if kind.group.is_empty() {
        kind.plural.to_string()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

fn details(kind: &Kind, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": kind.plural });
    if !kind.group.is_empty() {
        d["group"] = json!(kind.group);
    }
    d
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn not_found(kind: &Kind, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", qualified(kind)),
        );
        e.details = Some(details(kind, name));
        e
    }

    pub fn already_exists(kind: &Kind, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", qualified(kind)),
        );
        e.details = Some(details(kind, name));
        e
    }

    /// errors.NewConflict: `Operation cannot be fulfilled on pods "x": …`.
    pub fn conflict(kind: &Kind, name: &str, why: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: {why}",
            qualified(kind)
        );
        let mut e = Self::new(409, "Conflict", msg);
        e.details = Some(details(kind, name));
        e
    }

    /// The optimistic-concurrency failure of an update with a stale resourceVersion.
    pub fn stale(kind: &Kind, name: &str) -> Self {
        Self::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// errors.NewInvalid for `qualified_kind` (usually the Kind, e.g. `Pod`).
    pub fn invalid(group: &str, qualified_kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let texts: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.field, e.body()))
            .collect();
        let list = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let gk = if group.is_empty() {
            qualified_kind.to_string()
        } else {
            format!("{qualified_kind}.{group}")
        };
        let mut e = Self::new(422, "Invalid", format!("{gk} {name:?} is invalid: {list}"));
        let causes: Vec<Value> = errs
            .iter()
            .map(|f| json!({ "reason": f.reason(), "message": f.body(), "field": f.field }))
            .collect();
        let mut d = json!({ "name": name, "kind": qualified_kind, "causes": causes });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        e.details = Some(d);
        e
    }

    /// An `Invalid` error about an object of `kind`.
    pub fn invalid_object(kind: &Kind, name: &str, errs: &[FieldError]) -> Self {
        Self::invalid(kind.group, kind.kind, name, errs)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn forbidden(kind: &Kind, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            403,
            "Forbidden",
            format!("{} {name:?} is forbidden: {why}", qualified(kind)),
        );
        e.details = Some(details(kind, name));
        e
    }

    /// 410 Gone with reason Expired (a watch or continue token from before the history).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: &str) -> Self {
        let mut e = Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        e.details = Some(json!({ "causes": [{ "message": message }] }));
        e
    }

    /// 401: no client certificate the CA signed, no bearer token
    /// (what kube-apiserver answers with anonymous requests disabled).
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn path_not_found() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    pub fn not_acceptable() -> Self {
        Self::new(
            406,
            "NotAcceptable",
            "only application/json is served by the test API server",
        )
    }

    /// An error that is not a `Status` (a Go `error` from a registry or a
    /// transport): responsewriters' ErrorToAPIStatus makes it a 500 with no
    /// reason (StatusReasonUnknown is "") and the error's text.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(500, "", message)
    }

    /// errors.NewServiceUnavailable.
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// errors.NewGenericServerResponse(code, "", resource, name, body, 0,
    /// false), as GenericHttpResponseChecker makes one of a kubelet's error
    /// answer: the message for the code (the server's own words only for 403,
    /// 406, 415 and other 5xx), then ` ( <resource> <name>)` (the empty verb
    /// leaves two spaces).
    pub fn generic_server_response(code: u16, resource: &str, name: &str, body: &str) -> Self {
        let (reason, message) = match code {
            409 => ("Conflict", "the server reported a conflict".to_string()),
            404 => (
                "NotFound",
                "the server could not find the requested resource".to_string(),
            ),
            400 => (
                "BadRequest",
                "the server rejected our request for an unknown reason".to_string(),
            ),
            401 => (
                "Unauthorized",
                "the server has asked for the client to provide credentials".to_string(),
            ),
            403 => ("Forbidden", body.to_string()),
            406 => (
                "NotAcceptable",
                if body.is_empty() || body == "unknown" {
                    "the server was unable to respond with a content type that the client supports"
                        .to_string()
                } else {
                    body.to_string()
                },
            ),
            415 => ("UnsupportedMediaType", body.to_string()),
            405 => (
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".to_string(),
            ),
            422 => (
                "Invalid",
                "the server rejected our request due to an error in our request".to_string(),
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request".to_string(),
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request".to_string(),
            ),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later"
                    .to_string(),
            ),
            c if c >= 500 => (
                "InternalError",
                format!(
                    "an error on the server ({}) has prevented the request from succeeding",
                    go_quote(body)
                ),
            ),
            c => (
                "",
                format!("the server responded with the status code {c} but did not return more information"),
            ),
        };
        let mut e = Self::new(code, reason, format!("{message} ( {resource} {name})"));
        e.details = Some(json!({ "name": name, "kind": resource }));
        e
    }

    /// What `fail_next` and `set_available(false)` answer: a Status for `code`
    /// with the reason k8s.io/apimachinery gives that code.
    pub fn injected(code: u16) -> Self {
        let (reason, message) = match code {
            400 => ("BadRequest", "injected failure"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "injected failure"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => ("Conflict", "injected failure"),
            410 => ("Expired", "injected failure"),
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => ("InternalError", "Internal error occurred: injected failure"),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => ("", "injected failure"),
        };
        let mut e = Self::new(code, reason, message);
        if code == 429 {
            e.retry_after = Some(1);
            e.details = Some(json!({ "retryAfterSeconds": 1 }));
        }
        e
    }

    /// The `Status` object sent as the body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty() {
            s.as_object_mut().unwrap().remove("reason");
        }
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// The `Status` a successful DELETE answers for kinds whose storage does not
/// return the deleted object (see `Kind::returns_deleted`): registry.Store's
/// finalizeDelete.
pub fn delete_success(kind: &Kind, name: &str, uid: &str) -> Value {
    let mut d = details(kind, name);
    d["uid"] = json!(uid);
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d })
}
