//! TokenReview and SubjectAccessReview, what a kubelet asks the API server
//! to authenticate and authorize the callers of its own API.
//!
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` is
//! pkg/registry/authentication/tokenreview/storage.go over kube-apiserver's
//! authenticator chain as far as bearer tokens go: tokens a test registered
//! (`ApiServer::add_static_token`, the
//! `--token-auth-file` authenticator, audience-agnostic), then the tokens this
//! server issued (pkg/serviceaccount/jwt.go's JWTTokenAuthenticator and
//! claims.go's validator: issuer, signature, audiences, expiry with a minute
//! of leeway, the service account and the bound secret, pod or node still
//! there with the same uid), then the AuthenticatedGroupAdder. Refusals carry
//! the chain's words, as real clusters answer them:
//! `[invalid bearer token, service account token has expired]`, or
//! `invalid bearer token` for a token no authenticator knows.
//!
//! `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` is
//! pkg/registry/authorization/subjectaccessreview/rest.go over a small
//! policy: members of `system:masters` may do anything (the privileged-group
//! authorizer, no reason given), then the rules a test added with
//! `ApiServer::allow`, matched as RBAC matches a
//! ClusterRole bound by a ClusterRoleBinding, with RBAC's reason
//! (`RBAC: allowed by ClusterRoleBinding "…" of ClusterRole "…" to User "…"`);
//! anything else is not allowed, with no reason, as when no authorizer has
//! an opinion.

use super::kinds::by_plural;
use super::status::{go_quote, ApiError, FieldError};
use super::store::Store;
use super::token;
use super::API_AUDIENCE;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

/// How long past `exp` (and before `nbf`/`iat`) a token is still taken, and
/// how long after its deletion a bound object still counts (jwt.DefaultLeeway).
const LEEWAY: f64 = 60.0;

/// The groups that may do anything (user.SystemPrivilegedGroup).
const MASTERS: &str = "system:masters";

/// One line of a token file: a token and whom it stands for.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// What a rule is about.
#[derive(Debug, Clone)]
pub enum Target {
    /// `apiGroups: [group]`, `resources: [resource]` ("*", "pods",
    /// "nodes/proxy", "*/proxy", or the fixture's "nodes/*").
    Resource { group: String, resource: String },
    /// `nonResourceURLs: [url]` ("/metrics", "/logs/*").
    NonResource(String),
}

/// A ClusterRole with one rule, bound to one subject by a ClusterRoleBinding
/// of the same name.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// `User` or `Group`.
    pub subject_kind: &'static str,
    pub subject: String,
    pub verb: String,
    pub target: Target,
}

impl Rule {
    /// The rule `ApiServer::allow` describes.
    pub fn parse(index: usize, subject: &str, verb: &str, resource: &str) -> Rule {
        let (subject_kind, subject) = match subject.strip_prefix("group:") {
            Some(group) => ("Group", group.to_string()),
            None => ("User", subject.to_string()),
        };
        let target = if resource.starts_with('/') {
            Target::NonResource(resource.to_string())
        } else {
            let (res, sub) = match resource.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (resource, None),
            };
            let (res, group) = match res.split_once('.') {
                Some((r, g)) => (r, g),
                None if res == "*" => ("*", "*"),
                None => (res, ""),
            };
            Target::Resource {
                group: group.to_string(),
                resource: match sub {
                    Some(s) => format!("{res}/{s}"),
                    None => res.to_string(),
                },
            }
        };
        Rule {
            name: format!("unitlet-test:allow:{index}"),
            subject_kind,
            subject,
            verb: verb.to_string(),
            target,
        }
    }

    fn applies_to(&self, user: &str, groups: &[String]) -> bool {
        match self.subject_kind {
            "Group" => groups.contains(&self.subject),
            _ => user == self.subject,
        }
    }

    /// rbac's RuleAllows.
    fn allows(&self, attrs: &Attributes) -> bool {
        let verb_ok = self.verb == "*" || self.verb == attrs.verb;
        match (&self.target, &attrs.resource) {
            (
                Target::Resource { group, resource },
                Some((req_group, req_resource, req_subresource)),
            ) => {
                verb_ok
                    && (group == "*" || group == req_group)
                    && resource_matches(resource, req_resource, req_subresource)
            }
            (Target::NonResource(url), None) => {
                verb_ok
                    && (url == "*"
                        || *url == attrs.path
                        || url
                            .strip_suffix('*')
                            .is_some_and(|prefix| attrs.path.starts_with(prefix)))
            }
            _ => false,
        }
    }

    /// clusterRoleBindingDescriber, with describeSubject.
    fn describe(&self) -> String {
        format!(
            "ClusterRoleBinding {} of ClusterRole {} to {} {}",
            go_quote(&self.name),
            go_quote(&self.name),
            self.subject_kind,
            go_quote(&self.subject)
        )
    }
}

/// rbac's ResourceMatches: `*`, the exact `resource[/subresource]`, or
/// `*/subresource`; and, as the fixture's shorthand (not RBAC syntax),
/// `resource/*` for every subresource of a resource.
fn resource_matches(rule: &str, resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    rule == "*"
        || rule == combined
        || (!subresource.is_empty()
            && (rule == format!("*/{subresource}") || rule == format!("{resource}/*")))
}

/// authorizer.Attributes, from a SubjectAccessReview spec.
struct Attributes {
    verb: String,
    /// (group, resource, subresource) of a resource request.
    resource: Option<(String, String, String)>,
    /// The path of a non-resource request.
    path: String,
}

// ----- TokenReview -----

/// A user an authenticator found.
struct UserInfo {
    name: String,
    uid: String,
    groups: Vec<String>,
    extra: Map<String, Value>,
}

/// What one token authenticator made of a token.
enum Outcome {
    User(UserInfo, Vec<String>),
    Error(String),
    /// Not a token this authenticator handles (no opinion, no error).
    Unknown,
}

/// Go's `%q` of a []string: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Decodes a body into a k8s-openapi `T` (400 on a wrong shape), with an
/// empty `spec` where none was given.
fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    kind: &str,
    mut body: Value,
) -> Result<Value, ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {why}"
        ))
    };
    let Some(obj) = body.as_object_mut() else {
        return Err(cannot("the body is not a JSON object".into()));
    };
    if obj.get("spec").is_none_or(Value::is_null) {
        obj.insert("spec".into(), json!({}));
    }
    let typed: T = serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        cannot(format!("{path}: {}", e.into_inner()))
    })?;
    let mut v = serde_json::to_value(typed).expect("k8s-openapi types serialize");
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    Ok(v)
}

/// The strings of a JSON array (or a lone string, as JWT `aud` may be).
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

fn intersect(a: &[String], b: &[String]) -> Vec<String> {
    a.iter().filter(|x| b.contains(x)).cloned().collect()
}

fn now() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// The `--token-auth-file` authenticator, wrapped audience-agnostic: only
/// for reviews that accept the API server's own audience.
fn static_token(st: &Store, token: &str, audiences: &[String]) -> Outcome {
    let Some(found) = st.static_tokens.iter().find(|t| t.token == token) else {
        return Outcome::Unknown;
    };
    let auds = intersect(&[API_AUDIENCE.to_string()], audiences);
    if auds.is_empty() {
        return Outcome::Unknown;
    }
    let user = UserInfo {
        name: found.user.clone(),
        uid: String::new(),
        groups: found.groups.clone(),
        extra: Map::new(),
    };
    Outcome::User(user, auds)
}

/// Deleted before the leeway: `deletionTimestamp` earlier than now - 60 s.
fn deleted_long_ago(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| (t.as_millisecond() as f64 / 1000.0) < now() - LEEWAY)
}

fn uid_of(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

/// JWTTokenAuthenticator.AuthenticateToken and validator.Validate for the
/// tokens this server signs.
fn service_account_token(st: &Store, token: &str, requested: &[String]) -> Outcome {
    // hasCorrectIssuer, then jwt.ParseSigned: anything else is not ours.
    let parts: Vec<&str> = token.split('.').collect();
    if token.trim_start().starts_with('{') || parts.len() != 3 {
        return Outcome::Unknown;
    }
    let decode_part = |p: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()
    };
    let Some(claims) = decode_part(parts[1]) else {
        return Outcome::Unknown;
    };
    if claims["iss"] != API_AUDIENCE || decode_part(parts[0]).is_none() {
        return Outcome::Unknown;
    }
    if !token::signature_ok(&st.token_key, token) {
        return Outcome::Error("go-jose/go-jose: error in cryptographic primitive".into());
    }
    let mut token_auds = strings(&claims["aud"]);
    if token_auds.is_empty() {
        token_auds = vec![API_AUDIENCE.to_string()];
    }
    let auds = intersect(&token_auds, requested);
    if auds.is_empty() {
        return Outcome::Error(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_quote_list(&token_auds),
            go_quote_list(requested)
        ));
    }
    // jwt.Claims.Validate with the default leeway.
    let t = now();
    let time = |k: &str| claims[k].as_f64();
    if time("nbf").is_some_and(|nbf| t + LEEWAY < nbf) {
        return Outcome::Error("service account token is not valid yet".into());
    }
    if time("exp").is_some_and(|exp| t - LEEWAY > exp) {
        return Outcome::Error("service account token has expired".into());
    }
    if time("iat").is_some_and(|iat| t + LEEWAY < iat) {
        return Outcome::Error("service account token is issued in the future".into());
    }

    let private = &claims["kubernetes.io"];
    let ns = private["namespace"].as_str().unwrap_or("");
    let sa_name = private["serviceaccount"]["name"].as_str().unwrap_or("");
    let sa_uid = private["serviceaccount"]["uid"].as_str().unwrap_or("");
    let invalidated = || Outcome::Error("service account token has been invalidated".into());
    let sa = match st.get(by_plural("serviceaccounts"), Some(ns), sa_name) {
        Ok(sa) => sa,
        Err(e) => return Outcome::Error(e.message),
    };
    if uid_of(&sa) != sa_uid {
        return Outcome::Error(format!(
            "service account UID ({}) does not match claim ({sa_uid})",
            uid_of(&sa)
        ));
    }
    if deleted_long_ago(&sa) {
        return Outcome::Error(format!("service account {ns}/{sa_name} has been deleted"));
    }
    let reference = |k: &str| {
        let r = &private[k];
        r.is_object().then(|| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["uid"].as_str().unwrap_or("").to_string(),
            )
        })
    };
    if let Some((name, uid)) = reference("secret") {
        let Ok(secret) = st.get(by_plural("secrets"), Some(ns), &name) else {
            return invalidated();
        };
        if uid_of(&secret) != uid {
            return Outcome::Error(format!(
                "secret UID ({}) does not match service account secret ref claim ({uid})",
                uid_of(&secret)
            ));
        }
        if deleted_long_ago(&secret) {
            return invalidated();
        }
    }
    let mut extra = Map::new();
    let pod = reference("pod");
    if let Some((name, uid)) = &pod {
        let Ok(found) = st.get(by_plural("pods"), Some(ns), name) else {
            return invalidated();
        };
        if uid_of(&found) != uid {
            return Outcome::Error(format!(
                "pod UID ({}) does not match service account pod ref claim ({uid})",
                uid_of(&found)
            ));
        }
        if deleted_long_ago(&found) {
            return invalidated();
        }
        if !name.is_empty() && !uid.is_empty() {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                json!([name]),
            );
            extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
        }
    }
    let mut node_ref = None;
    if let Some((name, uid)) = reference("node") {
        if pod.is_some() {
            // ServiceAccountTokenPodNodeInfo: the claims, unchecked.
            node_ref = Some((name, uid));
        } else {
            let Ok(node) = st.get(by_plural("nodes"), None, &name) else {
                return invalidated();
            };
            if uid_of(&node) != uid {
                return Outcome::Error(format!(
                    "node UID ({}) does not match service account node ref claim ({uid})",
                    uid_of(&node)
                ));
            }
            if deleted_long_ago(&node) {
                return invalidated();
            }
            node_ref = Some((name, uid));
        }
    }
    // ServiceAccountTokenJTI: the credential id.
    if let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    if let Some((name, uid)) = node_ref.filter(|(n, _)| !n.is_empty()) {
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            json!([name]),
        );
        if !uid.is_empty() {
            extra.insert("authentication.kubernetes.io/node-uid".into(), json!([uid]));
        }
    }
    let user = UserInfo {
        name: format!("system:serviceaccount:{ns}:{sa_name}"),
        uid: sa_uid.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
        extra,
    };
    Outcome::User(user, auds)
}

/// TokenREST.Create.
pub fn token_review(st: &Store, body: Value) -> Result<Value, ApiError> {
    let mut review =
        decode::<k8s_openapi::api::authentication::v1::TokenReview>("TokenReview", body)?;
    let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let mut audiences = strings(&review["spec"]["audiences"]);
    if audiences.is_empty() {
        audiences = vec![API_AUDIENCE.to_string()];
    }
    // The token authenticators' union: the first user wins; errors add up.
    let mut errors = vec![];
    let mut found = None;
    for outcome in [
        static_token(st, &token, &audiences),
        service_account_token(st, &token, &audiences),
    ] {
        match outcome {
            Outcome::User(user, auds) => {
                found = Some((user, auds));
                break;
            }
            Outcome::Error(e) => errors.push(e),
            Outcome::Unknown => {}
        }
    }
    review["status"] = match found {
        Some((mut user, auds)) => {
            // AuthenticatedGroupAdder.
            if !user
                .groups
                .iter()
                .any(|g| g == "system:authenticated" || g == "system:unauthenticated")
            {
                user.groups.push("system:authenticated".into());
            }
            let mut info = json!({ "username": user.name });
            if !user.uid.is_empty() {
                info["uid"] = json!(user.uid);
            }
            if !user.groups.is_empty() {
                info["groups"] = json!(user.groups);
            }
            if !user.extra.is_empty() {
                info["extra"] = Value::Object(user.extra);
            }
            json!({ "authenticated": true, "user": info, "audiences": auds })
        }
        None => {
            errors.insert(0, "invalid bearer token".into());
            errors.dedup();
            let error = if errors.len() == 1 {
                errors.remove(0)
            } else {
                format!("[{}]", errors.join(", "))
            };
            json!({ "user": {}, "error": error })
        }
    };
    Ok(review)
}

// ----- SubjectAccessReview -----

/// SubjectAccessReviewREST.Create: validate, authorize, answer, record.
pub fn subject_access_review(st: &mut Store, body: Value) -> Result<Value, ApiError> {
    let mut review = decode::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(
        "SubjectAccessReview",
        body,
    )?;
    let spec = review["spec"].clone();
    let resource = spec
        .get("resourceAttributes")
        .filter(|v| !v.is_null())
        .cloned();
    let non_resource = spec
        .get("nonResourceAttributes")
        .filter(|v| !v.is_null())
        .cloned();
    let user = spec["user"].as_str().unwrap_or("").to_string();
    let groups = strings(&spec["groups"]);
    // ValidateSubjectAccessReview.
    let mut errs = vec![];
    const ONE_OF: &str =
        "exactly one of nonResourceAttributes or resourceAttributes must be specified";
    match (&resource, &non_resource) {
        (Some(_), Some(n)) => errs.push(FieldError::invalid("spec", n.clone(), ONE_OF)),
        (None, None) => errs.push(FieldError::invalid("spec", json!("null"), ONE_OF)),
        _ => {}
    }
    if user.is_empty() && groups.is_empty() {
        errs.push(FieldError::invalid(
            "spec.user",
            json!(user),
            "at least one of user or group must be specified",
        ));
    }
    if review["metadata"]
        .as_object()
        .is_some_and(|m| m.iter().any(|(_, v)| !v.is_null()))
    {
        errs.push(FieldError::invalid(
            "metadata",
            review["metadata"].clone(),
            "must be empty",
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(
            "authorization.k8s.io",
            "SubjectAccessReview",
            "",
            &errs,
        ));
    }
    // AuthorizationAttributesFrom.
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let attrs = match (&resource, &non_resource) {
        (Some(r), _) => Attributes {
            verb: text(r, "verb"),
            resource: Some((
                text(r, "group"),
                text(r, "resource"),
                text(r, "subresource"),
            )),
            path: String::new(),
        },
        (_, Some(n)) => Attributes {
            verb: text(n, "verb"),
            resource: None,
            path: text(n, "path"),
        },
        _ => unreachable!("validated"),
    };
    let decision = if groups.iter().any(|g| g == MASTERS) {
        Some(String::new())
    } else {
        st.rules
            .iter()
            .find(|r| r.applies_to(&user, &groups) && r.allows(&attrs))
            .map(|r| format!("RBAC: allowed by {}", r.describe()))
    };
    review["status"] = match decision {
        Some(reason) if reason.is_empty() => json!({ "allowed": true }),
        Some(reason) => json!({ "allowed": true, "reason": reason }),
        None => json!({ "allowed": false }),
    };
    st.access_reviews.push(review.clone());
    Ok(review)
}
