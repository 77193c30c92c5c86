//! The TokenRequest subresource, `POST
//! /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, as
//! pkg/registry/core/serviceaccount/storage/token.go serves it, with the
//! claims of pkg/serviceaccount/claims.go. The one difference: tokens are
//! signed with HMAC-SHA256 under a key the server makes at start
//! (`"alg": "HS256"`) where a cluster signs with its service account key.

use super::kinds::{by_plural, Kind};
use super::status::{ApiError, FieldError};
use super::store::{self, Store};
use super::{BoundObject, TokenRequestRecord, API_AUDIENCE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// ValidateTokenRequest: at least ten minutes, at most 2^32 seconds.
const MIN_EXPIRATION: i64 = 10 * 60;
const MAX_EXPIRATION: i64 = 1 << 32;
/// SetDefaults_TokenRequestSpec: an hour.
const DEFAULT_EXPIRATION: i64 = 60 * 60;
/// What the kubelet asks for its projected `kube-api-access` tokens; a
/// pod-bound token asked for with exactly this and only the API server's
/// audiences is valid for a year and only warns after this
/// (`--service-account-extend-token-expiration`, on by default).
const WARN_ONLY_EXPIRATION: i64 = 60 * 60 + 7;
const EXTENDED_EXPIRATION: i64 = 24 * 365 * 60 * 60;

const GROUP: &str = "authentication.k8s.io";
const KIND: &str = "TokenRequest";

fn invalid(name: &str, errs: &[FieldError]) -> ApiError {
    ApiError::invalid(GROUP, KIND, name, errs)
}

/// errors.NewConflict for a resource named by a Kind (token.go passes
/// `GroupResource{Group, Resource: Kind}`): `Operation cannot be fulfilled
/// on Pod "x": …`.
fn conflict(group: &str, kind: &str, name: &str, why: &str) -> ApiError {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {qualified} {name:?}: {why}"),
    );
    let mut details = json!({ "name": name, "kind": kind });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    e.details = Some(details);
    e
}

/// Decodes the body into an `authentication.k8s.io/v1` TokenRequest (400 on
/// a wrong type, kind or apiVersion) and applies its defaults.
fn decode(body: Value) -> Result<Value, ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{KIND} in version \"v1\" cannot be handled as a {KIND}: {why}"
        ))
    };
    if !body.is_object() {
        return Err(cannot("the body is not a JSON object".into()));
    }
    let typed: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            cannot(format!("{path}: {}", e.into_inner()))
        })?;
    let mut req = serde_json::to_value(typed).expect("k8s-openapi types serialize");
    if !req["spec"].is_object() {
        req["spec"] = json!({});
    }
    if req["spec"]["expirationSeconds"].is_null() {
        req["spec"]["expirationSeconds"] = json!(DEFAULT_EXPIRATION);
    }
    if !req["metadata"].is_object() {
        req["metadata"] = json!({});
    }
    Ok(req)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// What a token is bound to, besides its service account.
#[derive(Default)]
struct Bound {
    pod: Option<BoundObject>,
    secret: Option<BoundObject>,
    /// The pod's node (name, and uid when the node exists), or the node
    /// the token is bound to.
    node: Option<BoundObject>,
    /// What the request's boundObjectRef named, for the record.
    object: Option<BoundObject>,
}

fn bound_object(kind: &str, obj: &Value) -> BoundObject {
    BoundObject {
        kind: kind.to_string(),
        name: meta_str(obj, "name").to_string(),
        uid: meta_str(obj, "uid").to_string(),
    }
}

/// The object `ref` names, checked as token.go checks it.
fn resolve_bound(
    st: &Store,
    ns: &str,
    sa_name: &str,
    reference: &Value,
) -> Result<Bound, ApiError> {
    let mut bound = Bound::default();
    if !reference.is_object() {
        return Ok(bound);
    }
    let field = |f: &str| reference[f].as_str().unwrap_or("");
    let (api_version, kind, name, want_uid) = (
        field("apiVersion"),
        field("kind"),
        field("name"),
        field("uid"),
    );
    // schema.FromAPIVersionAndKind
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let get = |k: &'static Kind, ns: Option<&str>, name: &str| st.get(k, ns, name);
    let uid = match (group, kind) {
        ("", "Pod") => {
            let pod = get(by_plural("pods"), Some(ns), name)?;
            let pod_sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("");
            if pod_sa != sa_name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
                )));
            }
            // ServiceAccountTokenPodNodeInfo: the pod's node, with its uid
            // when the Node exists.
            let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
            if !node_name.is_empty() {
                let node = get(by_plural("nodes"), None, node_name).ok();
                bound.node = Some(BoundObject {
                    kind: "Node".into(),
                    name: node_name.to_string(),
                    uid: node
                        .map(|n| meta_str(&n, "uid").to_string())
                        .unwrap_or_default(),
                });
            }
            let b = bound_object("Pod", &pod);
            bound.pod = Some(b.clone());
            b
        }
        ("", "Node") => {
            let node = get(by_plural("nodes"), None, name)?;
            let b = bound_object("Node", &node);
            bound.node = Some(b.clone());
            b
        }
        ("", "Secret") => {
            let secret = get(by_plural("secrets"), Some(ns), name)?;
            let b = bound_object("Secret", &secret);
            bound.secret = Some(b.clone());
            b
        }
        _ => {
            // GroupVersionKind.String()
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    if !want_uid.is_empty() && want_uid != uid.uid {
        return Err(conflict(group, kind, name, &format!("the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated")));
    }
    bound.object = Some(uid);
    Ok(bound)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A compact JWS: base64url(header).base64url(claims).base64url(signature).
pub fn sign(key: &[u8], claims: &Value) -> String {
    let header = json!({ "alg": "HS256", "kid": "unitlet-test-apiserver" });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let signed = format!("{}.{}", part(&header), part(claims));
    let signature = hmac_sha256(key, signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Whether the signature of a compact JWS is `key`'s.
pub fn signature_ok(key: &[u8], token: &str) -> bool {
    let Some((signed, signature)) = token.rsplit_once('.') else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(signature)
        .is_ok_and(|s| s == hmac_sha256(key, signed.as_bytes()))
}

/// The claims of a token signed with `key`, None if it is not one.
pub fn verify(key: &[u8], token: &str) -> Option<Value> {
    let (signed, signature) = token.rsplit_once('.')?;
    let (_, claims) = signed.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    if signature != hmac_sha256(key, signed.as_bytes()) {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
}

fn reference(b: &BoundObject) -> Value {
    let mut r = json!({ "name": b.name });
    if !b.uid.is_empty() {
        r["uid"] = json!(b.uid);
    }
    r
}

/// TokenREST.Create, with what runs before it: decoding and defaulting the
/// body, then the NamespaceLifecycle admission plugin.
pub fn create(st: &mut Store, ns: &str, name: &str, body: Value) -> Result<Value, ApiError> {
    let mut req = decode(body)?;
    let sa_kind = by_plural("serviceaccounts");
    st.admit_create_in(sa_kind, ns, name)?;

    // The body may name the service account, but only the one of the URL.
    let given_name = meta_str(&req, "name");
    if !given_name.is_empty() && given_name != name {
        let e = FieldError::invalid(
            "metadata.name",
            json!(given_name),
            "must match the service account name if specified",
        );
        return Err(invalid(name, &[e]));
    }
    let given_ns = meta_str(&req, "namespace");
    if !given_ns.is_empty() && given_ns != ns {
        let e = FieldError::invalid(
            "metadata.namespace",
            json!(given_ns),
            "must match the service account namespace if specified",
        );
        return Err(invalid(name, &[e]));
    }

    let sa = st.get(sa_kind, Some(ns), name)?;
    let sa_uid = meta_str(&sa, "uid").to_string();
    // TokenRequestServiceAccountUIDValidation (beta, on since 1.34).
    let given_uid = meta_str(&req, "uid");
    if !given_uid.is_empty() && given_uid != sa_uid {
        return Err(conflict(
            GROUP,
            KIND,
            name,
            &format!("the UID in the token request ({given_uid}) does not match the UID of the service account ({sa_uid})"),
        ));
    }

    let audiences: Vec<String> = req["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
    req["spec"]["audiences"] = json!(audiences);
    req["metadata"]["name"] = json!(name);
    req["metadata"]["namespace"] = json!(ns);
    req["metadata"]["uid"] = json!(sa_uid);
    // Whole seconds: what `iat` and metav1.Time keep.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    req["metadata"]["creationTimestamp"] = store::timestamp(now);
    req.as_object_mut().unwrap().remove("status");

    let expiration = req["spec"]["expirationSeconds"].as_i64().unwrap_or(0);
    let mut errs = vec![];
    if expiration < MIN_EXPIRATION {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !errs.is_empty() {
        return Err(invalid("", &errs));
    }

    let bound = resolve_bound(st, ns, name, &req["spec"]["boundObjectRef"])?;

    let iat = now.as_second();
    let only_api_audiences = audiences.iter().all(|a| a == API_AUDIENCE);
    let (exp, warn_after) =
        if bound.pod.is_some() && expiration == WARN_ONLY_EXPIRATION && only_api_audiences {
            (iat + EXTENDED_EXPIRATION, Some(iat + expiration))
        } else {
            (iat + expiration, None)
        };
    let jti = store::uuid_v4();
    let mut private = json!({
        "namespace": ns,
        "serviceaccount": { "name": name, "uid": sa_uid },
    });
    if let Some(p) = &bound.pod {
        private["pod"] = reference(p);
    } else if let Some(s) = &bound.secret {
        private["secret"] = reference(s);
    }
    if let Some(n) = &bound.node {
        private["node"] = reference(n);
    }
    if let Some(w) = warn_after {
        private["warnafter"] = json!(w);
    }
    let claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": iat,
        "iss": API_AUDIENCE,
        "jti": jti,
        "kubernetes.io": private,
        "nbf": iat,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let token = sign(&st.token_key, &claims);
    let expires = now + jiff::SignedDuration::from_secs(expiration);
    req["status"] = json!({
        "token": token,
        "expirationTimestamp": store::timestamp(expires),
    });
    st.token_requests.push(TokenRequestRecord {
        namespace: ns.to_string(),
        service_account: name.to_string(),
        service_account_uid: sa_uid,
        audiences,
        expiration_seconds: expiration,
        bound: bound.object,
        issued_at: now,
        expiration_timestamp: expires,
        token,
        jti,
    });
    Ok(req)
}
