//! An in-process Kubernetes API server for the cluster-mode tests.
//!
//! No kube-apiserver can run here, and unitlet is also checked against a real
//! one, so this fixture follows the real server's rules wherever a node agent
//! can observe them, and refuses whatever the real server refuses: a
//! shortcut accepted here would hide a bug that only a real cluster shows.
//! Each rule names the Kubernetes source it follows.
//!
//! What it serves, over HTTP/1.1 on 127.0.0.1, plain ([`ApiServer::start`]:
//! no authentication) or over TLS ([`ApiServer::start_tls`]):
//! - HTTPS as a cluster serves it: a CA made at start (its PEM is
//!   [`ApiServer::ca_pem`], and kubeconfigs carry it as
//!   `certificate-authority-data`) signs a serving certificate for
//!   `127.0.0.1`, `::1` and `localhost`. A request authenticates with a
//!   client certificate the CA signed (its CN is the user, recorded in
//!   [`Recorded::user`]; [`ApiServer::write_kubeconfig_client_cert`] issues
//!   one) or with a bearer token (any token); with neither it gets 401. A
//!   client certificate from another CA fails the TLS handshake.
//! - core/v1 pods (with `/status`), nodes (with `/status`), namespaces,
//!   events, configmaps, secrets, serviceaccounts, persistentvolumes and
//!   persistentvolumeclaims (both with `/status`), and coordination.k8s.io/v1
//!   leases; `/version` and minimal discovery (`/api`, `/apis`, resource
//!   lists).
//! - certificates.k8s.io/v1 certificatesigningrequests (csr.rs), with
//!   `/status` and `/approval`, the real validation (a request that parses
//!   and verifies, signer name, usages, `expirationSeconds` of at least 600)
//!   and the requester's identity in `spec.username`/`groups`/`uid` (a
//!   client certificate's CN and organizations, or a bearer token a
//!   TokenReview would take; plain HTTP callers have none); and, once a
//!   test asks for it ([`ApiServer::auto_sign_kubelet_serving`]), an
//!   approver and signer for `kubernetes.io/kubelet-serving` with a CA of
//!   its own ([`ApiServer::kubelet_serving_ca_pem`]).
//! - the TokenRequest subresource, `POST
//!   /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, with the real
//!   server's checks (the service account, and a bound Pod, Secret or Node,
//!   must exist; a bound pod must run as that service account; a bound
//!   object's uid must match; at least ten minutes), defaults (an hour;
//!   the audience [`API_AUDIENCE`]) and claims, in a JWT signed with
//!   HMAC-SHA256 under a key made at start ([`ApiServer::verify_token`]
//!   checks one). Every token issued is recorded
//!   ([`ApiServer::token_requests`]).
//! - TokenReview and SubjectAccessReview (review.rs), for kubelets that
//!   delegate authentication and authorization: this server's service
//!   account tokens and tokens a test registers
//!   ([`ApiServer::add_static_token`]) authenticate; `system:masters` and
//!   the rules a test adds ([`ApiServer::allow`]) authorize; every review
//!   answered is recorded ([`ApiServer::access_reviews`]).
//! - the kubelet routes (kubelet.rs): `pods/<name>/log`, `exec`, `attach`,
//!   `portforward` and `nodes/<name>/proxy/...`, sent on to the pod's node
//!   as the real server sends them, as its kubelet client (a client
//!   certificate for `kube-apiserver-kubelet-client` in `system:masters`
//!   from the CA [`ApiServer::kubelet_client_ca_pem`]); upgrades (SPDY,
//!   WebSocket) are spliced through byte for byte. What was sent to a node
//!   is in [`Recorded::proxy`].
//! - get, list (label and field selectors, `limit`/`continue` over a
//!   snapshot), watch, create (POST), update (PUT), patch (JSON merge,
//!   strategic merge, JSON patch) and delete.
//! - one resourceVersion counter; uid, creationTimestamp, generateName,
//!   generation; the defaults a kubelet reads; optimistic concurrency; the
//!   status subresource split; graceful pod deletion and finalizers; the
//!   NamespaceLifecycle admission rules; watches from any resourceVersion in
//!   the last [`store::HISTORY`] changes, 410 Expired before that (or after
//!   [`ApiServer::compact`]), bookmarks every [`http::BOOKMARK_EVERY`].
//! - errors as `Status` objects with the real reasons and codes.
//!
//! Left out on purpose (and refused rather than faked where a client could
//! ask for them): server-side apply and dry runs (415 and 400), protobuf,
//! Table and PartialObjectMetadata responses (406), deletecollection (405),
//! `/binding`, `/eviction`, `pods/<name>/proxy` and other subresources (404),
//! managedFields, admission plugins other than NamespaceLifecycle (so no
//! service account, token volume or default tolerations on pods: a pod has
//! the `spec.serviceAccountName` it was created with, and a token bound to
//! it needs that name; no `kubernetes.io/pv-protection` or
//! `kubernetes.io/pvc-protection` finalizers), and the controllers: no
//! scheduler binds pods, no garbage collector acts on propagation policies,
//! no namespace controller empties and removes a deleted namespace (it stays
//! Terminating), no service account controller makes the `default` service
//! accounts, no volume controller binds claims to volumes.
//!
//! Mind that kube-rs's default client retries 429, 503 and 504 answers (up
//! to 15 times, backing off up to minutes, honouring `Retry-After`): through
//! it, [`ApiServer::fail_next`] shows as a delay and an outage from
//! [`ApiServer::set_available`] as slow calls rather than errors. The
//! agent's client turns that off: it retries inside the call only answers
//! with a `Retry-After` (429 here), and each of its callers retries the
//! rest with a bounded back-off, so through the agent they show as errors.

mod csr;
mod http;
mod kinds;
mod kubelet;
mod patch;
mod review;
mod select;
mod status;
mod store;
mod tls;
mod token;

use serde_json::Value;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use store::{DeleteOptions, Store, Sub};

/// One HTTP request the server saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The raw query string, "" if none.
    pub query: String,
    pub content_type: Option<String>,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// The HTTP status of the answer (200 for a watch that started).
    pub status: u16,
    /// Who the caller was: the common name of its client certificate (HTTPS
    /// only), or None (a bearer token, or plain HTTP).
    pub user: Option<String>,
    /// For the kubelet routes (`pods/<name>/log`, `exec`, `attach`,
    /// `portforward`, `nodes/<name>/proxy/...`): what the server sent to the
    /// node, if it got that far (not when the request was refused first).
    pub proxy: Option<Proxied>,
}

/// A request the server sent to a node on a client's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxied {
    pub method: String,
    /// `https` (the kubelet), or what a `nodes/scheme:name:port/proxy` asked.
    pub scheme: String,
    /// The node address used (by the preferred address types).
    pub host: String,
    pub port: u16,
    /// The path on the node: `/containerLogs/<ns>/<pod>/<container>`,
    /// `/exec/...`, `/attach/...`, `/portForward/<ns>/<pod>`, `/stats/summary`.
    pub path: String,
    /// The query as sent: re-encoded from the options for the pod routes
    /// (keys sorted, as url.Values.Encode), passed through for node proxy.
    pub query: String,
    /// The node's HTTP status; None when no answer came.
    pub status: Option<u16>,
    /// Why no answer came (dial, TLS or protocol failure), in Go's words
    /// where the real server shows them.
    pub error: Option<String>,
    /// Whether the node answered 101 and the connections were spliced.
    pub upgraded: bool,
}

/// The audience (and issuer) of the tokens the server issues: what a
/// TokenRequest without audiences gets, the server's `--api-audiences`.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// The subject of the client certificate the server presents to kubelets
/// (kubeadm's apiserver-kubelet-client): CN, then O.
pub const KUBELET_CLIENT_NAME: &str = "kube-apiserver-kubelet-client";
pub const KUBELET_CLIENT_GROUP: &str = "system:masters";

/// An object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    /// `Pod`, `Secret` or `Node`.
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// One token the server issued (a TokenRequest that succeeded).
#[derive(Debug, Clone)]
pub struct TokenRequestRecord {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// As issued: the requested ones, or [`API_AUDIENCE`].
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds`, as requested or defaulted (3600).
    pub expiration_seconds: i64,
    /// What `spec.boundObjectRef` named, as stored (its uid is the object's).
    pub bound: Option<BoundObject>,
    /// When it was issued (`iat`), in whole seconds.
    pub issued_at: jiff::Timestamp,
    /// `status.expirationTimestamp`: `issued_at` plus `expiration_seconds`.
    pub expiration_timestamp: jiff::Timestamp,
    /// `status.token`.
    pub token: String,
    /// The token's `jti` claim, unique to each token.
    pub jti: String,
}

impl TokenRequestRecord {
    /// The pod the token is bound to, if it is bound to one.
    pub fn bound_pod(&self) -> Option<&BoundObject> {
        self.bound.as_ref().filter(|b| b.kind == "Pod")
    }
}

/// State shared by the server thread and the handle.
struct Shared {
    store: Mutex<Store>,
    /// Bumped after every change of `store`; watches wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// The kubelet client certificate and key (PEM).
    kubelet_client: (String, String),
    /// The CA that signed it (PEM).
    kubelet_client_ca: String,
    /// The CA of the `kubernetes.io/kubelet-serving` signer.
    kubelet_serving: tls::Pki,
    /// The lifetime of the certificates the kubelet-serving signer issues,
    /// once [`ApiServer::auto_sign_kubelet_serving`] started it.
    auto_sign: Mutex<Option<std::time::Duration>>,
}

impl Shared {
    /// The store, even after a panic elsewhere left the lock poisoned (the
    /// panic fails its own test; the server keeps serving).
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A running test API server. Its methods are blocking and can be called
/// from plain `#[test]` functions; dropping it shuts the server down.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The certificates, when serving HTTPS.
    pki: Option<tls::Pki>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The server's runtime, for the fixture's controllers.
    runtime: tokio::runtime::Handle,
}

impl ApiServer {
    /// Starts a server on 127.0.0.1 on a free port, on its own thread and
    /// tokio runtime, with the namespaces of a new cluster. It serves plain
    /// HTTP and takes every request as authenticated.
    pub fn start() -> ApiServer {
        Self::launch(None)
    }

    /// Like [`ApiServer::start`], but serves HTTPS with a new CA and asks
    /// requests to authenticate (see the module documentation).
    pub fn start_tls() -> ApiServer {
        Self::launch(Some(tls::Pki::new()))
    }

    fn launch(pki: Option<tls::Pki>) -> ApiServer {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test API server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().unwrap();
        // kubeadm signs apiserver-kubelet-client with the cluster CA; a plain
        // HTTP server gets a CA of its own for it.
        let own;
        let signer = match &pki {
            Some(pki) => pki,
            None => {
                own = tls::Pki::new();
                &own
            }
        };
        let issued = signer.issue_client(KUBELET_CLIENT_NAME, KUBELET_CLIENT_GROUP);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changed: tokio::sync::watch::channel(0).0,
            kubelet_client: (issued.cert_pem, issued.key_pem),
            kubelet_client_ca: signer.ca_pem().to_string(),
            kubelet_serving: tls::Pki::new(),
            auto_sign: Mutex::new(None),
        });
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let app = http::router(shared.clone()).into_make_service_with_connect_info::<http::Peer>();
        let acceptor = pki.as_ref().map(tls::Pki::acceptor);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the test API server");
                let _ = handle_tx.send(rt.handle().clone());
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let served: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
                        match acceptor {
                            None => Box::pin(axum::serve(listener, app).into_future()),
                            Some(acceptor) => {
                                let listener = tls::TlsListener::new(listener, acceptor);
                                Box::pin(axum::serve(listener, app).into_future())
                            }
                        };
                    tokio::select! {
                        served = served => served.expect("test API server"),
                        _ = stop => {}
                    }
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .expect("spawn the test API server thread");
        let runtime = handle_rx.recv().expect("the test API server's runtime");
        ApiServer {
            shared,
            addr,
            pki,
            shutdown: Some(shutdown),
            thread: Some(thread),
            runtime,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` for
    /// [`ApiServer::start_tls`].
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) of an HTTPS server; None for plain HTTP.
    pub fn ca_pem(&self) -> Option<String> {
        self.pki.as_ref().map(|pki| pki.ca_pem().to_string())
    }

    /// Writes a kubeconfig whose current context reaches this server with
    /// the bearer token `test-token`, in namespace `default`, trusting the
    /// server's CA when it serves HTTPS.
    pub fn write_kubeconfig(&self, path: &Path) {
        self.write_kubeconfig_for(path, "    token: test-token\n");
    }

    /// Writes a kubeconfig like [`ApiServer::write_kubeconfig`], but whose
    /// user is a new client certificate for `common_name` (in organization
    /// `system:nodes`, as a kubelet's), signed by the server's CA, and no
    /// token. Panics for a plain HTTP server.
    pub fn write_kubeconfig_client_cert(&self, path: &Path, common_name: &str) {
        let pki = self
            .pki
            .as_ref()
            .expect("client certificates need a server from ApiServer::start_tls");
        let issued = pki.issue_client(common_name, "system:nodes");
        let user = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64_of(&issued.cert_pem),
            base64_of(&issued.key_pem),
        );
        self.write_kubeconfig_for(path, &user);
    }

    /// A kubeconfig for this server, with `user` (indented fields) as the user.
    fn write_kubeconfig_for(&self, path: &Path, user: &str) {
        let ca = match self.ca_pem() {
            Some(pem) => format!("    certificate-authority-data: {}\n", base64_of(&pem)),
            None => String::new(),
        };
        let config = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: unitlet-test\n  cluster:\n    server: {url}\n{ca}\
             users:\n\
             - name: unitlet-test\n  user:\n{user}\
             contexts:\n\
             - name: unitlet-test\n  context:\n    cluster: unitlet-test\n    user: unitlet-test\n    namespace: default\n\
             current-context: unitlet-test\n",
            url = self.url()
        );
        std::fs::write(path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Runs `f` on the store, then wakes the watches.
    fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.notify();
        r
    }

    /// The namespace for a direct call: the argument, else the object's.
    fn namespace_of<'a>(
        resource: &str,
        namespace: Option<&'a str>,
        obj: &'a Value,
    ) -> Option<&'a str> {
        let kind = kinds::by_plural(resource);
        if !kind.namespaced {
            return None;
        }
        let ns = namespace.or_else(|| obj.pointer("/metadata/namespace").and_then(Value::as_str));
        Some(ns.unwrap_or_else(|| panic!("{resource} are namespaced: give a namespace")))
    }

    /// Creates an object as a POST would (defaults, uid, resourceVersion,
    /// watch events). `resource` is the plural: "pods", "leases", …
    /// Panics with the server's message if the create is refused.
    pub fn create(&self, resource: &str, namespace: Option<&str>, obj: Value) -> Value {
        let kind = kinds::by_plural(resource);
        let ns = Self::namespace_of(resource, namespace, &obj).map(str::to_string);
        self.with_store(|st| st.create(kind, ns.as_deref(), obj))
            .unwrap_or_else(|e| panic!("create {resource}: {}", e.message))
    }

    /// The stored object, with kind and apiVersion, if it exists.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let kind = kinds::by_plural(resource);
        let ns = if kind.namespaced {
            Some(namespace.expect("a namespace for a namespaced resource"))
        } else {
            None
        };
        self.shared.lock().get(kind, ns, name).ok()
    }

    /// The stored objects of a resource in a namespace (None: all
    /// namespaces), with kind and apiVersion, ordered by namespace and name.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let kind = kinds::by_plural(resource);
        self.shared.lock().objects_of(kind, namespace)
    }

    /// Updates an object as a PUT to it would (not its status). The name
    /// comes from the object. Panics with the server's message if refused.
    pub fn replace(&self, resource: &str, namespace: Option<&str>, obj: Value) -> Value {
        self.put(resource, namespace, obj, Sub::Main)
    }

    /// Updates an object's status as a PUT to `/status` would.
    pub fn replace_status(&self, resource: &str, namespace: Option<&str>, obj: Value) -> Value {
        self.put(resource, namespace, obj, Sub::Status)
    }

    /// Updates a CertificateSigningRequest's conditions as a PUT to
    /// `/approval` would.
    pub fn replace_approval(&self, obj: Value) -> Value {
        self.put("certificatesigningrequests", None, obj, Sub::Approval)
    }

    fn put(&self, resource: &str, namespace: Option<&str>, obj: Value, sub: Sub) -> Value {
        let kind = kinds::by_plural(resource);
        let ns = Self::namespace_of(resource, namespace, &obj).map(str::to_string);
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .expect("metadata.name")
            .to_string();
        self.with_store(|st| st.update(kind, ns.as_deref(), &name, sub, obj))
            .map(|(obj, _)| obj)
            .unwrap_or_else(|e| panic!("replace {resource} {name}: {}", e.message))
    }

    /// Deletes as a DELETE with `gracePeriodSeconds` would: a bound, running
    /// pod is only marked; objects with finalizers are only marked.
    /// Panics with the server's message if refused (e.g. not found).
    pub fn delete(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        grace_seconds: Option<i64>,
    ) {
        let kind = kinds::by_plural(resource);
        let ns = if kind.namespaced {
            Some(namespace.expect("a namespace for a namespaced resource"))
        } else {
            None
        };
        let opts = DeleteOptions {
            grace: grace_seconds,
            ..Default::default()
        };
        self.with_store(|st| st.delete(kind, ns, name, opts))
            .unwrap_or_else(|e| panic!("delete {resource} {name}: {}", e.message));
    }

    /// `false` simulates an outage: every request answers 503 and every open
    /// watch ends. `true` serves again.
    pub fn set_available(&self, up: bool) {
        self.with_store(|st| {
            st.available = up;
            if !up {
                st.epoch += 1;
            }
        });
    }

    /// The next `n` requests answer `code` (429 comes with `Retry-After: 1`).
    pub fn fail_next(&self, n: usize, code: u16) {
        self.with_store(|st| st.fail = (n, code));
    }

    /// Forgets the watch history: a watch from any older resourceVersion now
    /// gets 410 Expired. Watches already open go on.
    pub fn compact(&self) {
        self.with_store(Store::compact);
    }

    /// Every HTTP request seen so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Every token issued so far (TokenRequests that succeeded), in order.
    /// Refused TokenRequests show in [`ApiServer::requests`] only.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.lock().token_requests.clone()
    }

    /// The claims of `token` if this server signed it (whatever its expiry
    /// and whether its objects still exist), else None.
    pub fn verify_token(&self, token: &str) -> Option<Value> {
        token::verify(&self.shared.lock().token_key, token)
    }

    /// A token with exactly these claims, signed as the server signs the
    /// tokens it issues: for tokens a TokenRequest cannot make (expired,
    /// not yet valid, bound to a stale uid). Take the claims of an issued
    /// token ([`ApiServer::verify_token`]) and change what the test needs.
    pub fn sign_token_claims(&self, claims: &Value) -> String {
        token::sign(&self.shared.lock().token_key, claims)
    }

    // ----- authentication and authorization for kubelets -----

    /// Registers a bearer token for `user` in `groups`, as a line of
    /// `--token-auth-file` would (no uid). TokenReviews authenticate it
    /// (adding `system:authenticated`) when they accept the API server's
    /// audience. The server's own authentication is unchanged: over HTTPS it
    /// takes any bearer token anyway.
    pub fn add_static_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.with_store(|st| {
            st.static_tokens.retain(|t| t.token != token);
            st.static_tokens.push(review::StaticToken {
                token: token.to_string(),
                user: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            });
        });
    }

    /// Allows `subject` (a user name, or `group:<name>`) to `verb` (`get`,
    /// `create`, …, or `*`) on `resource`, as a ClusterRole with that one
    /// rule bound by a ClusterRoleBinding would: `resource` is `nodes`,
    /// `nodes/proxy` (a subresource), `*/proxy`, `*`, `leases.coordination.k8s.io`
    /// (a group after the first dot; none is the core group), a
    /// non-resource URL starting with `/` (`/metrics`, `/logs/*`), or
    /// `nodes/*`, this fixture's shorthand for every subresource of nodes
    /// (RBAC itself has no such wildcard: a real ClusterRole lists them).
    /// Members of `system:masters` need no rule.
    pub fn allow(&self, subject: &str, verb: &str, resource: &str) {
        self.with_store(|st| {
            let rule = review::Rule::parse(st.rules.len() + 1, subject, verb, resource);
            st.rules.push(rule);
        });
    }

    /// Every SubjectAccessReview answered, in order, as answered (spec and
    /// status); refused ones (422) are not here.
    pub fn access_reviews(&self) -> Vec<Value> {
        self.shared.lock().access_reviews.clone()
    }

    // ----- the kubelet client -----

    /// The CA of the client certificate the server presents to kubelets
    /// (PEM): what a node's `--client-ca-file` must trust. For
    /// [`ApiServer::start_tls`] it is [`ApiServer::ca_pem`], as kubeadm
    /// signs both with the cluster CA.
    pub fn kubelet_client_ca_pem(&self) -> String {
        self.shared.kubelet_client_ca.clone()
    }

    /// `--kubelet-preferred-address-types`: which of a Node's
    /// `status.addresses` the server connects to, first type found first.
    /// The default is the real server's (Hostname, InternalDNS, InternalIP,
    /// ExternalDNS, ExternalIP); a Hostname rarely resolves in tests.
    pub fn set_kubelet_preferred_address_types(&self, types: &[&str]) {
        self.with_store(|st| {
            st.kubelet_address_types = types.iter().map(|t| t.to_string()).collect();
        });
    }

    /// `--kubelet-certificate-authority`: from now on kubelets' serving
    /// certificates must chain to this CA (PEM) and name the address
    /// connected to. Without it (the default) they are not checked.
    pub fn set_kubelet_ca(&self, pem: &str) {
        self.with_store(|st| st.kubelet_ca = Some(pem.to_string()));
    }

    /// The real server refuses `nodes/<name>/proxy` to a node whose address
    /// is not global unicast (400 `address not allowed`), so test nodes on
    /// 127.0.0.1 cannot be reached that way; `true` lets loopback addresses
    /// through (the log, exec, attach and port-forward routes never check).
    pub fn set_node_proxy_allows_loopback(&self, allowed: bool) {
        self.with_store(|st| st.node_proxy_loopback = allowed);
    }

    /// What the server sent to nodes, in order: [`Recorded::proxy`] of
    /// every request that got that far.
    pub fn proxied_requests(&self) -> Vec<Proxied> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter_map(|r| r.proxy.clone())
            .collect()
    }
}

impl ApiServer {
    // ----- certificate signing requests -----

    /// The CertificateSigningRequests, ordered by name.
    pub fn csrs(&self) -> Vec<Value> {
        self.list("certificatesigningrequests", None)
    }

    /// The CA (PEM) of the `kubernetes.io/kubelet-serving` signer that
    /// [`ApiServer::auto_sign_kubelet_serving`] runs: a CA of its own, not
    /// [`ApiServer::ca_pem`].
    pub fn kubelet_serving_ca_pem(&self) -> String {
        self.shared.kubelet_serving.ca_pem().to_string()
    }

    /// Plays kube-controller-manager's approver and signer for
    /// `kubernetes.io/kubelet-serving` from now on, for existing and later
    /// CSRs (on the server's runtime, after every change): a request with
    /// CN `system:node:<name>`, O `system:nodes` only, DNS or IP subject
    /// alternative names only (at least one), and usages among `digital
    /// signature`, `key encipherment` and `server auth` (which it must
    /// have) is Approved (reason `AutoApproved`) and then gets a
    /// certificate from [`ApiServer::kubelet_serving_ca_pem`] with its
    /// subject and SANs, serverAuth, valid from now for `lifetime` (or
    /// `spec.expirationSeconds` if shorter); any other is Denied (reason
    /// `AutoDenied`, the message says why). An approved request (by anyone)
    /// the signer will not sign gets a `Failed` condition. Calling it again
    /// changes the lifetime.
    pub fn auto_sign_kubelet_serving(&self, lifetime: std::time::Duration) {
        let first = {
            let mut current = self
                .shared
                .auto_sign
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let first = current.is_none();
            *current = Some(lifetime);
            first
        };
        if !first {
            return;
        }
        let shared = self.shared.clone();
        let mut changed = shared.changed.subscribe();
        self.runtime.spawn(async move {
            loop {
                changed.borrow_and_update();
                let lifetime = shared
                    .auto_sign
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .unwrap_or_default();
                let wrote =
                    csr::auto_sign_pass(&mut shared.lock(), &shared.kubelet_serving, lifetime);
                if wrote {
                    shared.notify();
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // End the watches first: they would otherwise hold connections open.
        self.with_store(|st| st.epoch += 1);
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Standard base64, as kubeconfig `*-data` fields hold it.
fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
