//! Who is asking and whether they may: the kubelet's rules.
//!
//! Authentication, in the kubelet's order: a client certificate the TLS
//! layer verified against `--client-ca-file` (user = CN, groups = O), else
//! a bearer token checked with a TokenReview (`--authentication-token-webhook`),
//! else anonymous if `--anonymous-auth` allows it, else 401.
//! Authorization: a SubjectAccessReview on `nodes/<node>` with the
//! kubelet's attribute mapping (pkg/kubelet/server/auth.go), unless
//! `--authorization-mode AlwaysAllow`. Both answers are cached briefly
//! (TokenReview 2 min; SubjectAccessReview 5 min allowed, 30 s denied, as
//! the kubelet's webhook defaults), bounded in size.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    /// User name (`system:node:x`, `system:serviceaccount:ns:sa`, a CN).
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// UID, when the authenticator gave one.
    pub uid: Option<String>,
    /// Extra attributes (TokenReview's `user.extra`).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl User {
    /// The anonymous user.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: None,
            extra: Default::default(),
        }
    }
}

/// What a request asks to do, in API terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete`.
    pub verb: String,
    /// Always `nodes`.
    pub resource: String,
    /// `proxy`, `stats`, `metrics`, `log`, `pods`, `healthz`.
    pub subresource: String,
    /// The node's name.
    pub name: String,
}

/// The kubelet's mapping of a request to attributes on `nodes/<node>`.
/// Fine-grained subresources (`pods`, `healthz`) come with `proxy` as the
/// fallback the kubelet also accepts (KubeletFineGrainedAuthz).
pub fn attributes(method: &str, path: &str, node: &str) -> Vec<Attributes> {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let subs: &[&str] = if under("/stats") {
        &["stats"]
    } else if under("/metrics") {
        &["metrics"]
    } else if under("/logs") {
        &["log"]
    } else if under("/pods") {
        &["pods", "proxy"]
    } else if under("/healthz") {
        &["healthz", "proxy"]
    } else {
        &["proxy"]
    };
    subs.iter()
        .map(|s| Attributes {
            verb: verb.into(),
            resource: "nodes".into(),
            subresource: (*s).into(),
            name: node.into(),
        })
        .collect()
}

/// How requests are authorized (`--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every authenticated request is allowed.
    AlwaysAllow,
    /// SubjectAccessReview.
    Webhook,
}

/// Cached answers, bounded: the oldest half is dropped when full.
struct Cache<K, V> {
    map: HashMap<K, (V, Instant)>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Cache<K, V> {
    fn new(max: usize) -> Self {
        Cache {
            map: HashMap::new(),
            max,
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        self.map
            .get(k)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    fn put(&mut self, k: K, v: V, ttl: Duration) {
        if self.map.len() >= self.max {
            let now = Instant::now();
            self.map.retain(|_, (_, until)| *until > now);
            if self.map.len() >= self.max {
                let mut ages: Vec<Instant> = self.map.values().map(|(_, u)| *u).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                self.map.retain(|_, (_, until)| *until > cut);
            }
        }
        self.map.insert(k, (v, Instant::now() + ttl));
    }
}

/// Authentication and authorization against the API server.
pub struct Auth {
    client: Option<kube::Client>,
    node: String,
    anonymous: bool,
    token_webhook: bool,
    mode: Mode,
    tokens: Mutex<Cache<[u8; 32], Option<User>>>,
    decisions: Mutex<Cache<(User, Attributes), bool>>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401.
    Unauthorized,
    /// 403, with the kubelet's message.
    Forbidden(String),
}

impl Auth {
    /// `client` answers TokenReviews and SubjectAccessReviews (cluster
    /// mode); without one only certificates (and anonymous) authenticate
    /// and only `AlwaysAllow` authorizes.
    pub fn new(
        client: Option<kube::Client>,
        node: &str,
        anonymous: bool,
        token_webhook: bool,
        mode: Mode,
    ) -> Auth {
        Auth {
            client,
            node: node.to_string(),
            anonymous,
            token_webhook,
            mode,
            tokens: Mutex::new(Cache::new(4096)),
            decisions: Mutex::new(Cache::new(4096)),
        }
    }

    /// The request's user: its verified client certificate's, its bearer
    /// token's, or anonymous (when allowed).
    pub async fn authenticate(
        &self,
        cert_user: Option<&User>,
        authorization: Option<&str>,
    ) -> Result<User, Refusal> {
        if let Some(u) = cert_user {
            return Ok(u.clone());
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let Some(token) = token {
            if !self.token_webhook {
                return Err(Refusal::Unauthorized);
            }
            return self.review_token(token).await.ok_or(Refusal::Unauthorized);
        }
        if self.anonymous {
            return Ok(User::anonymous());
        }
        Err(Refusal::Unauthorized)
    }

    async fn review_token(&self, token: &str) -> Option<User> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.tokens.lock().unwrap().get(&key) {
            return cached;
        }
        let client = self.client.clone()?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let got = Api::<TokenReview>::all(client)
            .create(&PostParams::default(), &review)
            .await;
        let user = match got {
            Ok(r) => r.status.and_then(|s| {
                if s.authenticated != Some(true) {
                    return None;
                }
                let u = s.user?;
                Some(User {
                    name: u.username.unwrap_or_default(),
                    groups: u.groups.unwrap_or_default(),
                    uid: u.uid,
                    extra: u.extra.unwrap_or_default(),
                })
            }),
            Err(e) => {
                // Not cached: the next request asks again.
                tracing::warn!(error = %e, "TokenReview failed");
                return None;
            }
        };
        self.tokens
            .lock()
            .unwrap()
            .put(key, user.clone(), Duration::from_secs(120));
        user
    }

    /// Whether `user` may make the request `method path`.
    pub async fn authorize(&self, user: &User, method: &str, path: &str) -> Result<(), Refusal> {
        let attrs = attributes(method, path, &self.node);
        if self.mode == Mode::AlwaysAllow {
            return Ok(());
        }
        for a in &attrs {
            if self.allowed(user, a).await {
                return Ok(());
            }
        }
        let a = &attrs[0];
        Err(Refusal::Forbidden(format!(
            "Forbidden (user={}, verb={}, resource={}, subresource={})",
            user.name, a.verb, a.resource, a.subresource
        )))
    }

    async fn allowed(&self, user: &User, a: &Attributes) -> bool {
        let key = (user.clone(), a.clone());
        if let Some(d) = self.decisions.lock().unwrap().get(&key) {
            return d;
        }
        let Some(client) = self.client.clone() else {
            return false;
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                uid: user.uid.clone(),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(a.verb.clone()),
                    resource: Some(a.resource.clone()),
                    subresource: Some(a.subresource.clone()),
                    name: Some(a.name.clone()),
                    version: Some("v1".into()),
                    group: Some(String::new()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let got = Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &review)
            .await;
        let allowed = match got {
            Ok(r) => r.status.is_some_and(|s| s.allowed),
            Err(e) => {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                return false;
            }
        };
        let ttl = Duration::from_secs(if allowed { 300 } else { 30 });
        self.decisions.lock().unwrap().put(key, allowed, ttl);
        allowed
    }
}

/// The user a verified client certificate names: CN, and O as groups.
pub fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User {
        name,
        groups,
        uid: None,
        extra: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(method: &str, path: &str) -> Vec<(String, String)> {
        attributes(method, path, "n1")
            .into_iter()
            .map(|a| {
                assert_eq!((a.resource.as_str(), a.name.as_str()), ("nodes", "n1"));
                (a.verb, a.subresource)
            })
            .collect()
    }

    #[test]
    fn the_kubelets_attribute_mapping() {
        let one = |v: &str, s: &str| vec![(v.to_string(), s.to_string())];
        assert_eq!(subs("GET", "/stats/summary"), one("get", "stats"));
        assert_eq!(subs("GET", "/stats"), one("get", "stats"));
        assert_eq!(subs("GET", "/statsfoo"), one("get", "proxy"));
        assert_eq!(subs("GET", "/metrics/resource"), one("get", "metrics"));
        assert_eq!(subs("GET", "/metrics"), one("get", "metrics"));
        assert_eq!(subs("GET", "/logs/syslog"), one("get", "log"));
        assert_eq!(subs("GET", "/containerLogs/ns/p/c"), one("get", "proxy"));
        assert_eq!(subs("POST", "/exec/ns/p/c"), one("create", "proxy"));
        assert_eq!(subs("GET", "/exec/ns/p/c"), one("get", "proxy"));
        assert_eq!(
            subs("GET", "/pods"),
            vec![
                ("get".into(), "pods".into()),
                ("get".into(), "proxy".into())
            ]
        );
        assert_eq!(
            subs("GET", "/healthz"),
            vec![
                ("get".into(), "healthz".into()),
                ("get".into(), "proxy".into())
            ]
        );
        assert_eq!(subs("DELETE", "/x"), one("delete", "proxy"));
    }

    #[test]
    fn caches_expire_and_stay_bounded() {
        let mut c: Cache<u32, bool> = Cache::new(4);
        c.put(1, true, Duration::from_secs(60));
        assert_eq!(c.get(&1), Some(true));
        c.put(2, false, Duration::from_millis(0));
        assert_eq!(c.get(&2), None, "expired");
        for k in 3..100 {
            c.put(k, true, Duration::from_secs(60 + k as u64));
        }
        assert!(c.map.len() <= 4, "{}", c.map.len());
        assert_eq!(c.get(&99), Some(true));
    }

    #[tokio::test]
    async fn authentication_order() {
        let a = Auth::new(None, "n1", false, true, Mode::Webhook);
        let cert = User {
            name: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
            uid: None,
            extra: Default::default(),
        };
        assert_eq!(a.authenticate(Some(&cert), None).await, Ok(cert.clone()));
        assert_eq!(a.authenticate(None, None).await, Err(Refusal::Unauthorized));
        // No API server to review it: the token does not authenticate.
        assert_eq!(
            a.authenticate(None, Some("Bearer abc")).await,
            Err(Refusal::Unauthorized)
        );
        let anon = Auth::new(None, "n1", true, false, Mode::AlwaysAllow);
        assert_eq!(anon.authenticate(None, None).await, Ok(User::anonymous()));
        assert_eq!(
            anon.authenticate(None, Some("Bearer abc")).await,
            Err(Refusal::Unauthorized),
            "a token that cannot be checked is refused, not taken as anonymous"
        );
        assert_eq!(
            anon.authorize(&User::anonymous(), "GET", "/pods").await,
            Ok(())
        );
        // Webhook mode without an API server denies.
        assert!(matches!(
            a.authorize(&cert, "GET", "/pods").await,
            Err(Refusal::Forbidden(m)) if m == "Forbidden (user=system:node:n1, verb=get, resource=nodes, subresource=pods)"
        ));
    }
}
