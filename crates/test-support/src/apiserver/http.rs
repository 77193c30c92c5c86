//! The HTTP side: authentication, the REST paths of core/v1 (with the
//! `serviceaccounts/<name>/token` subresource) and
//! coordination.k8s.io/v1, the verbs on them, content types, and watch
//! streams (chunked, one JSON event per line, flushed as it happens); the
//! review APIs (review.rs) and the kubelet routes (kubelet.rs).

use super::kinds::{self, Kind, KINDS};
use super::kubelet::{self, WEBSOCKET_BEARER_PREFIX};
use super::patch::PATCH_TYPES;
use super::review;
use super::select::Selector;
use super::status::{ApiError, FieldError};
use super::store::{self, DeleteOptions, ListQuery, Store, Sub};
use super::token;
use super::{Recorded, Shared};
use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a watch that allows bookmarks gets one (about a minute on a
/// real server; short here so that tests see them).
pub const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// The Kubernetes version `/version` reports: the newest k8s-openapi describes.
const VERSION: (&str, &str) = ("1", "37");

pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

/// Who is at the other end of a connection (axum's connect info: serve the
/// router with `into_make_service_with_connect_info::<Peer>()`).
#[derive(Debug, Clone)]
pub struct Peer {
    /// Whether the connection is HTTPS, where requests must authenticate.
    pub tls: bool,
    /// The common name of the client certificate the CA signed, if the
    /// client presented one.
    pub user: Option<String>,
    /// The organizations of that certificate's subject: the user's groups.
    pub groups: Vec<String>,
    /// The client's address (X-Forwarded-For of proxied requests).
    pub addr: Option<SocketAddr>,
}

/// Plain HTTP: no TLS, no client certificate.
impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer {
            tls: false,
            user: None,
            groups: vec![],
            addr: Some(*stream.remote_addr()),
        }
    }
}

/// wsstream.IsWebSocketRequest: an upgrade to `websocket`.
fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"));
    upgrade
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether a request is authenticated: over HTTPS, by a client certificate
/// (see [`Peer`]), by a bearer token (any token) or by a WebSocket's
/// `base64url.bearer.authorization.k8s.io.<token>` subprotocol next to
/// another one (the apiserver's union of authenticators, x509 first); over
/// plain HTTP, always, like the insecure port servers once had.
fn authenticated(peer: &Peer, headers: &HeaderMap) -> bool {
    let bearer = || {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|token| !token.trim().is_empty())
    };
    let websocket = || {
        let protocols: Vec<&str> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let token = protocols.iter().find_map(|p| {
            p.strip_prefix(WEBSOCKET_BEARER_PREFIX)
                .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
        });
        is_websocket(headers) && token.is_some_and(|t| !t.is_empty()) && protocols.len() > 1
    };
    !peer.tls || peer.user.is_some() || bearer() || websocket()
}

/// The requester's UserInfo (JSON: username, uid, groups), as the
/// authenticators and AuthenticatedGroupAdder make it: a client
/// certificate's CN and organizations, or the user of a bearer token that a
/// TokenReview would authenticate (a static token, a service account token
/// of this server). Any other bearer token, and every plain HTTP request,
/// has no identity here (the fixture takes them without authenticating).
fn caller(st: &Store, peer: &Peer, headers: &HeaderMap) -> Option<Value> {
    if let Some(name) = &peer.user {
        let mut groups = peer.groups.clone();
        groups.push("system:authenticated".into());
        return Some(json!({ "username": name, "groups": groups }));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())?;
    let review = review::token_review(st, json!({ "spec": { "token": token } })).ok()?;
    (review["status"]["authenticated"] == true).then(|| review["status"]["user"].clone())
}

/// Every request: record it, authenticate it, apply injected faults, serve
/// it, wake watches.
async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return error_response(&ApiError::bad_request(format!(
                "reading the request body: {e}"
            )))
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        content_type: content_type.clone(),
        body: serde_json::from_slice(&body).ok(),
        status: 0,
        user: peer.user.clone(),
        proxy: None,
    };
    // Authentication comes first in kube-apiserver's handler chain: a
    // refused request reaches no later filter, so it takes no injected fault.
    let fault = {
        let mut st = shared.lock();
        if !authenticated(&peer, &headers) {
            Some(ApiError::unauthorized())
        } else if !st.available {
            Some(ApiError::injected(503))
        } else if st.fail.0 > 0 {
            st.fail.0 -= 1;
            Some(ApiError::injected(st.fail.1))
        } else {
            None
        }
    };
    let request = Request {
        peer: &peer,
        method: &method,
        uri: &uri,
        headers: &headers,
        content_type: content_type.as_deref(),
        body: &body,
    };
    let response = match (fault, kubelet::route(uri.path())) {
        (Some(e), _) => error_response(&e),
        (None, Some(to)) => {
            let req = kubelet::ProxyRequest {
                method: method.clone(),
                path: uri.path().to_string(),
                query: uri.query().unwrap_or("").to_string(),
                headers: headers.clone(),
                body: body.clone(),
                upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
            };
            let (response, sent) = kubelet::serve(shared.clone(), to, req, &peer).await;
            record.proxy = sent;
            response
        }
        (None, None) => route(&shared, &request).unwrap_or_else(|e| error_response(&e)),
    };
    record.status = response.status().as_u16();
    shared.lock().requests.push(record);
    shared.notify();
    response
}

struct Request<'a> {
    peer: &'a Peer,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    content_type: Option<&'a str>,
    body: &'a Bytes,
}

fn json_response(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn error_response(e: &ApiError) -> Response {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(secs) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    r
}

/// What a path names.
enum Target<'a> {
    /// A collection, in a namespace or (None) across all of them.
    Collection(Option<&'a str>),
    /// An object, or its `/status` or `/approval`.
    Object(Option<&'a str>, &'a str, Sub),
    /// The `token` subresource of a ServiceAccount (namespace, name).
    Token(&'a str, &'a str),
}

fn target<'a>(group: &str, rest: &[&'a str]) -> Option<(&'static Kind, Target<'a>)> {
    let namespaced = |plural: &str| kinds::lookup(group, plural).filter(|k| k.namespaced);
    let cluster = |plural: &str| kinds::lookup(group, plural).filter(|k| !k.namespaced);
    Some(match *rest {
        [plural] => (kinds::lookup(group, plural)?, Target::Collection(None)),
        ["namespaces", ns, plural] if plural != "status" && plural != "finalize" => {
            (namespaced(plural)?, Target::Collection(Some(ns)))
        }
        ["namespaces", ns, plural, name] => (
            namespaced(plural)?,
            Target::Object(Some(ns), name, Sub::Main),
        ),
        ["namespaces", ns, "serviceaccounts", name, "token"] if group.is_empty() => {
            (namespaced("serviceaccounts")?, Target::Token(ns, name))
        }
        ["namespaces", ns, plural, name, "status"] => (
            namespaced(plural).filter(|k| k.has_status)?,
            Target::Object(Some(ns), name, Sub::Status),
        ),
        [plural, name] => (cluster(plural)?, Target::Object(None, name, Sub::Main)),
        [plural, name, "status"] => (
            cluster(plural).filter(|k| k.has_status)?,
            Target::Object(None, name, Sub::Status),
        ),
        [plural, name, "approval"] => (
            cluster(plural).filter(|k| k.kind == "CertificateSigningRequest")?,
            Target::Object(None, name, Sub::Approval),
        ),
        _ => return None,
    })
}

fn route(shared: &Arc<Shared>, req: &Request) -> Result<Response, ApiError> {
    if !accepts_json(req.headers) {
        return Err(ApiError::not_acceptable());
    }
    let path = req.uri.path().trim_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    let get = |body: Value| {
        if req.method == Method::GET {
            Ok(json_response(200, &body))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segments.as_slice() {
        ["version"] => get(version()),
        ["api"] => get(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("") }],
        })),
        ["apis"] => get(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": GROUPS.map(group_info),
        })),
        ["apis", group] if GROUPS.contains(group) => {
            let mut group = group_info(group);
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            get(group)
        }
        ["api", "v1"] => get(resource_list("")),
        ["apis", group, "v1"] if GROUPS.contains(group) => get(resource_list(group)),
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            create_only(req, |body| review::token_review(&shared.lock(), body))
        }
        ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
            create_only(req, |body| {
                review::subject_access_review(&mut shared.lock(), body)
            })
        }
        ["api", "v1", rest @ ..] => resource(shared, req, "", rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => {
            resource(shared, req, "coordination.k8s.io", rest)
        }
        ["apis", "certificates.k8s.io", "v1", rest @ ..] => {
            resource(shared, req, "certificates.k8s.io", rest)
        }
        _ => Err(ApiError::path_not_found()),
    }
}

/// The API groups served besides core/v1.
const GROUPS: [&str; 4] = [
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
];

/// A review: POST only, JSON in, the answered review out with 201.
fn create_only(
    req: &Request,
    review: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    if *req.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let q: HashMap<String, String> = Query::try_from_uri(req.uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if q.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let body = json_body(req)?;
    Ok(json_response(201, &review(body)?))
}

/// JSON is all the fixture serves: no protobuf, no Table or
/// PartialObjectMetadata conversions (406 rather than a wrong answer).
fn accepts_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return true;
    };
    accept.split(',').any(|entry| {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        (media == "application/json" || media == "*/*" || media == "application/*")
            && !parts.any(|p| p.starts_with("as="))
    })
}

fn version() -> Value {
    let (major, minor) = VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group_info(group: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{group}/v1"), "version": "v1" });
    json!({ "name": group, "versions": [gv], "preferredVersion": gv })
}

fn resource_list(group: &str) -> Value {
    let mut resources = vec![];
    let review = |plural: &str, kind: &str| json!({ "name": plural, "singularName": kind.to_lowercase(), "namespaced": false, "kind": kind, "verbs": ["create"] });
    match group {
        "authentication.k8s.io" => resources.push(review("tokenreviews", "TokenReview")),
        "authorization.k8s.io" => {
            resources.push(review("subjectaccessreviews", "SubjectAccessReview"))
        }
        _ => {}
    }
    let sub = |name: &str, namespaced: bool, kind: &str, verbs: &[&str]| json!({ "name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs });
    for k in KINDS.iter().filter(|k| k.group == group) {
        let verbs = [
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        resources.push(json!({
            "name": k.plural,
            "singularName": k.kind.to_lowercase(),
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": verbs,
        }));
        if k.has_status {
            resources.push(json!({
                "name": format!("{}/status", k.plural),
                "singularName": "",
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if k.kind == "CertificateSigningRequest" {
            resources.push(sub(
                "certificatesigningrequests/approval",
                false,
                k.kind,
                &["get", "patch", "update"],
            ));
        }
        if k.kind == "Pod" {
            resources.push(sub(
                "pods/attach",
                true,
                "PodAttachOptions",
                &["create", "get"],
            ));
            resources.push(sub("pods/exec", true, "PodExecOptions", &["create", "get"]));
            resources.push(sub("pods/log", true, "Pod", &["get"]));
            resources.push(sub(
                "pods/portforward",
                true,
                "PodPortForwardOptions",
                &["create", "get"],
            ));
        }
        if k.kind == "Node" {
            resources.push(sub(
                "nodes/proxy",
                false,
                "NodeProxyOptions",
                &["create", "delete", "get", "patch", "update"],
            ));
        }
        if k.kind == "ServiceAccount" {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources })
}

/// `true`/`1` and the other spellings Go's strconv.ParseBool accepts.
fn flag(q: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid boolean value for {name}: {other:?}"
        ))),
    }
}

fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}")))
        })
        .transpose()
}

/// The body of a POST or PUT: JSON only.
fn json_body(req: &Request) -> Result<Value, ApiError> {
    let media = req
        .content_type
        .map(|c| c.split(';').next().unwrap_or("").trim());
    if media.is_some_and(|m| m != "application/json") {
        return Err(ApiError::unsupported_media_type(
            media.unwrap(),
            &["application/json"],
        ));
    }
    serde_json::from_slice(req.body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn resource(
    shared: &Arc<Shared>,
    req: &Request,
    group: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let (kind, target) = target(group, rest).ok_or_else(ApiError::path_not_found)?;
    let q: HashMap<String, String> = Query::try_from_uri(req.uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if q.contains_key("dryRun") {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let method = req.method;
    match target {
        Target::Collection(ns) if *method == Method::GET => {
            let query = ListQuery {
                selector: Selector::parse(
                    kind,
                    q.get("labelSelector").map(String::as_str),
                    q.get("fieldSelector").map(String::as_str),
                )?,
                limit: number(&q, "limit")?.map(|l| l.max(0) as usize),
                continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
                resource_version: q.get("resourceVersion").cloned(),
                version_match: q
                    .get("resourceVersionMatch")
                    .filter(|m| !m.is_empty())
                    .cloned(),
            };
            if flag(&q, "watch")? == Some(true) {
                return watch(shared, kind, ns, query, &q);
            }
            let list = shared.lock().list(kind, ns, &query)?;
            Ok(json_response(200, &list))
        }
        Target::Collection(ns) if *method == Method::POST && ns.is_some() == kind.namespaced => {
            let body = json_body(req)?;
            let mut st = shared.lock();
            let user = caller(&st, req.peer, req.headers);
            let created = st.create_as(kind, ns, body, user.as_ref())?;
            Ok(json_response(201, &created))
        }
        Target::Object(ns, name, _) if *method == Method::GET => {
            Ok(json_response(200, &shared.lock().get(kind, ns, name)?))
        }
        Target::Object(ns, name, sub) if *method == Method::PUT => {
            let body = json_body(req)?;
            let (obj, created) = shared.lock().update(kind, ns, name, sub, body)?;
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        Target::Object(ns, name, sub) if *method == Method::PATCH => {
            let content_type = req
                .content_type
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            if !PATCH_TYPES.contains(&content_type) {
                return Err(ApiError::unsupported_media_type(content_type, &PATCH_TYPES));
            }
            let obj = shared
                .lock()
                .patch(kind, ns, name, sub, content_type, req.body)?;
            Ok(json_response(200, &obj))
        }
        Target::Token(ns, name) if *method == Method::POST => {
            let body = json_body(req)?;
            let issued = token::create(&mut shared.lock(), ns, name, body)?;
            Ok(json_response(201, &issued))
        }
        Target::Object(ns, name, Sub::Main) if *method == Method::DELETE => {
            let opts = delete_options(req, &q)?;
            Ok(json_response(
                200,
                &shared.lock().delete(kind, ns, name, opts)?,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// DeleteOptions from the body if there is one, else from the query.
fn delete_options(req: &Request, q: &HashMap<String, String>) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        grace: number(q, "gracePeriodSeconds")?,
        ..Default::default()
    };
    opts.propagation = q.get("propagationPolicy").cloned();
    opts.orphan = flag(q, "orphanDependents")?;
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(opts);
    }
    let body = json_body(req)?;
    let field = |name: &str| body.get(name).filter(|v| !v.is_null());
    let bad =
        |name: &str| ApiError::bad_request(format!("DeleteOptions: {name} has the wrong type"));
    if let Some(g) = field("gracePeriodSeconds") {
        opts.grace = Some(g.as_i64().ok_or_else(|| bad("gracePeriodSeconds"))?);
    }
    if let Some(p) = field("propagationPolicy") {
        opts.propagation = Some(
            p.as_str()
                .ok_or_else(|| bad("propagationPolicy"))?
                .to_string(),
        );
    }
    if let Some(o) = field("orphanDependents") {
        opts.orphan = Some(o.as_bool().ok_or_else(|| bad("orphanDependents"))?);
    }
    if field("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty())
    {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    let pre = body.get("preconditions");
    let pre_field = |name: &str| pre.and_then(|p| p.get(name)).filter(|v| !v.is_null());
    if let Some(uid) = pre_field("uid") {
        opts.uid = Some(
            uid.as_str()
                .ok_or_else(|| bad("preconditions.uid"))?
                .to_string(),
        );
    }
    if let Some(rv) = pre_field("resourceVersion") {
        opts.resource_version = Some(
            rv.as_str()
                .ok_or_else(|| bad("preconditions.resourceVersion"))?
                .to_string(),
        );
    }
    Ok(opts)
}

/// What a watch was asked for.
struct WatchSpec {
    kind: &'static Kind,
    ns: Option<String>,
    selector: Selector,
    bookmarks: bool,
    /// sendInitialEvents=true: end the initial events with a bookmark.
    initial_end_bookmark: bool,
    deadline: Instant,
}

/// ValidateListOptions for a watch: streaming lists (sendInitialEvents)
/// need resourceVersionMatch=NotOlderThan and bookmarks; otherwise
/// resourceVersionMatch is not for watches.
fn validate_watch(
    query: &ListQuery,
    send_initial: Option<bool>,
    bookmarks: bool,
) -> Result<(), ApiError> {
    let mut errs = vec![];
    match send_initial {
        Some(_) => {
            if query.version_match.as_deref() != Some("NotOlderThan") {
                errs.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !bookmarks {
                errs.push(FieldError::forbidden(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
        None if query.version_match.is_some() => {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        None => {}
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs))
    }
}

fn watch(
    shared: &Arc<Shared>,
    kind: &'static Kind,
    ns: Option<&str>,
    query: ListQuery,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let bookmarks = flag(q, "allowWatchBookmarks")? == Some(true);
    let send_initial = flag(q, "sendInitialEvents")?;
    validate_watch(&query, send_initial, bookmarks)?;
    let timeout = number(q, "timeoutSeconds")?
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let (start, epoch) = {
        let st = shared.lock();
        let start = st.watch_start(
            kind,
            ns,
            &query.selector,
            query.resource_version.as_deref(),
            send_initial,
        );
        (start, st.epoch)
    };
    let (initial, cursor, expired) = match start {
        Ok((objs, cursor)) => (objs, cursor, None),
        Err(e) if e.code == 410 => (vec![], 0, Some(e)),
        Err(e) => return Err(e),
    };
    let spec = WatchSpec {
        kind,
        ns: ns.map(str::to_string),
        selector: query.selector,
        bookmarks,
        initial_end_bookmark: send_initial == Some(true),
        deadline: Instant::now() + timeout.unwrap_or(Duration::from_secs(86400)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(stream_watch(
        shared.clone(),
        spec,
        initial,
        cursor,
        expired,
        epoch,
        tx,
    ));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap())
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: &Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut object = json!({
        "kind": kind.kind,
        "apiVersion": kind.api_version,
        "metadata": { "resourceVersion": rv.to_string() },
    });
    if initial_end {
        object["metadata"]["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line("BOOKMARK", &object)
}

/// Feeds one watch until its timeout, an outage, shutdown, the client
/// leaving, or its place in the history being lost (then 410, like a real
/// server's watch cache when a watcher falls too far behind).
async fn stream_watch(
    shared: Arc<Shared>,
    w: WatchSpec,
    initial: Vec<Value>,
    mut cursor: u64,
    expired: Option<ApiError>,
    epoch: u64,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    if let Some(e) = expired {
        let _ = tx.send(event_line("ERROR", &e.to_status())).await;
        return;
    }
    let mut changed = shared.changed.subscribe();
    for obj in &initial {
        if tx.send(event_line("ADDED", obj)).await.is_err() {
            return;
        }
    }
    if w.initial_end_bookmark && tx.send(bookmark(w.kind, cursor, true)).await.is_err() {
        return;
    }
    let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
    loop {
        changed.borrow_and_update();
        let mut lines = vec![];
        let mut end = false;
        {
            let st = shared.lock();
            if st.epoch != epoch {
                end = true;
            } else if let Some(changes) = st.changes_after(cursor) {
                for change in changes {
                    if let Some((kind, obj)) =
                        store::watch_event(w.kind, w.ns.as_deref(), &w.selector, change)
                    {
                        lines.push(event_line(kind, &obj));
                    }
                }
                cursor = st.resource_version();
                if w.bookmarks && Instant::now() >= next_bookmark {
                    lines.push(bookmark(w.kind, cursor, false));
                    next_bookmark = Instant::now() + BOOKMARK_EVERY;
                }
            } else {
                let gone = ApiError::expired(format!("too old resource version: {cursor}"));
                lines.push(event_line("ERROR", &gone.to_status()));
                end = true;
            }
        }
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_bookmark), if w.bookmarks => {}
            _ = tokio::time::sleep_until(w.deadline) => return,
            _ = tx.closed() => return,
        }
    }
}
