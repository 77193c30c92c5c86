//! The HTTPS listener: TLS with optional client certificates, bounded
//! connections and header reads, authentication and authorization before
//! any handler runs, and the routes.

use super::auth::{cert_user, Auth, Refusal, User};
use super::logs;
use crate::runtime::Runtime;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};

/// A response body: whole, or streamed (logs, follow).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A plain-text response.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(msg.into()))
        .expect("static response parts")
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum ServingCert {
    /// `--tls-cert-file` and `--tls-private-key-file` (PEM).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate made at start (an explicit opt-in: API
    /// servers that verify kubelets will refuse it).
    SelfSigned,
    /// `--rotate-server-certificates`: from a `kubelet-serving` CSR,
    /// renewed before it expires (see [`super::cert`]).
    FromCluster,
    /// The certificate [`super::cert::bootstrap`] keeps current.
    Rotating(Arc<super::cert::Rotating>),
}

/// The kubelet API's settings, with the kubelet's flag names where there are.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (`--address`, default 0.0.0.0) and port (`--port`).
    pub listen: SocketAddr,
    /// Serving certificate.
    pub cert: ServingCert,
    /// The CAs client certificates are verified against; a verified one
    /// authenticates as CN/O.
    pub client_ca: ClientCa,
    /// `--anonymous-auth` (default false here; the kubelet's is true,
    /// which kubeadm and every hardening guide turn off).
    pub anonymous: bool,
    /// `--authentication-token-webhook`.
    pub token_webhook: bool,
    /// `--authorization-mode`.
    pub mode: super::auth::Mode,
    /// The node's name (the SubjectAccessReview's object) and addresses
    /// (the self-signed certificate's SANs).
    pub node_name: String,
    /// The node's IP.
    pub node_ip: String,
    /// Where a self-signed certificate is kept (the kubelet's `--cert-dir`).
    pub cert_dir: PathBuf,
}

/// Whose client certificates the kubelet API trusts.
#[derive(Debug, Clone)]
pub enum ClientCa {
    /// None: only bearer tokens (and anonymous, if allowed) authenticate.
    None,
    /// `--client-ca-file`.
    File(PathBuf),
    /// The cluster CA of the agent's kubeconfig (DER certificates), as
    /// kubeadm sets kubelets up: the API server's kubelet client
    /// certificate is signed by it.
    Kubeconfig(Vec<Vec<u8>>),
}

/// Most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this (slow clients).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

fn tls_config(cfg: &Config) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (certs, key) = match &cfg.cert {
        ServingCert::FromCluster => {
            return Err("the serving certificate from the cluster is not there yet".into())
        }
        ServingCert::Rotating(_) => (Vec::new(), None),
        ServingCert::Files { cert, key } => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("--tls-cert-file {}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--tls-cert-file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--tls-private-key-file {}: {e}", key.display()))?;
            (certs, Some(key))
        }
        ServingCert::SelfSigned => {
            let ck = super::cert::self_signed(
                &cfg.cert_dir,
                &cfg.node_name,
                &[cfg.node_ip.clone(), cfg.node_name.clone()],
            )?;
            return finish(
                builder_for(cfg, provider)?.with_cert_resolver(super::cert::Rotating::fixed(ck)),
            );
        }
    };
    let builder = builder_for(cfg, provider)?;
    let tls = match (&cfg.cert, key) {
        (ServingCert::Rotating(r), _) => builder.with_cert_resolver(r.clone()),
        (_, Some(key)) => builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("serving certificate: {e}"))?,
        (_, None) => return Err("no serving certificate".into()),
    };
    finish(tls)
}

fn finish(mut tls: rustls::ServerConfig) -> Result<rustls::ServerConfig, String> {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// The TLS settings up to the certificate: which client certificates are
/// verified, against which CAs.
fn builder_for(
    cfg: &Config,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let (what, cas): (String, Vec<CertificateDer<'static>>) = match &cfg.client_ca {
        ClientCa::None => return Ok(builder.with_no_client_auth()),
        ClientCa::File(ca) => {
            let what = format!("--client-ca-file {}", ca.display());
            let cas = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("{what}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{what}: {e}"))?;
            (what, cas)
        }
        ClientCa::Kubeconfig(ders) => (
            "the kubeconfig's cluster CA".into(),
            ders.iter()
                .map(|d| CertificateDer::from(d.clone()))
                .collect(),
        ),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in cas {
        roots.add(c).map_err(|e| format!("{what}: {e}"))?;
    }
    // As the kubelet: ask for a certificate, accept connections without
    // one (bearer tokens), refuse a bad one.
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
    Ok(builder.with_client_cert_verifier(verifier))
}

/// What handlers need.
pub struct State {
    /// The reconciler (pods, units).
    pub runtime: Runtime,
    /// Authentication and authorization.
    pub auth: Auth,
    /// Settings.
    pub cfg: Config,
    /// CPU counters of earlier scrapes, for `usageNanoCores`.
    pub rates: std::sync::Mutex<super::stats::Rates>,
}

/// The control group of a slice: systemd nests `a-b-c.slice` as
/// `/a.slice/a-b.slice/a-b-c.slice`.
pub fn slice_cgroup(slice: &str) -> String {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    path
}

fn timestamp_us(us: u64) -> Option<jiff::Timestamp> {
    (us > 0)
        .then(|| jiff::Timestamp::from_microsecond(us as i64).ok())
        .flatten()
}

/// Reads the node's and every running container's usage (blocking file
/// reads: run off the async threads).
fn samples(
    views: &[crate::podview::PodView],
    node_name: &str,
) -> (super::stats::NodeSample, Vec<super::stats::PodSample>) {
    use super::stats::{CgroupReader, ContainerSample, NodeSample, PodSample};
    use crate::core::observe::{instance, Instance};
    let reader = CgroupReader::detect(std::path::Path::new("/"));
    let root = reader.node();
    let node = NodeSample {
        node_name: node_name.to_string(),
        start_time: reader.boot_time(),
        cpu: root.cpu_sample(),
        memory: root.memory_sample(),
    };
    let pods = views
        .iter()
        .map(|v| {
            let slice = slice_cgroup(&v.plan.slice);
            let usage = reader.read(&slice);
            let containers = v
                .plan
                .all()
                .filter_map(|c| {
                    let snap = v.units.get(&c.unit)?;
                    if !matches!(instance(Some(snap)), Instance::Running { .. }) {
                        return None;
                    }
                    let u = reader.read(&format!("{slice}/{}", c.unit));
                    Some(ContainerSample {
                        name: c.name.clone(),
                        start_time: timestamp_us(snap.exec_main_start_us),
                        cpu: u.cpu_sample(),
                        memory: u.memory_sample(),
                    })
                })
                .collect();
            let meta = &v.rec.pod.metadata;
            PodSample {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.clone().unwrap_or_default(),
                start_time: timestamp_us(v.rec.admitted_us),
                containers,
                cpu: usage.cpu_sample(),
                memory: usage.memory_sample(),
            }
        })
        .collect();
    (node, pods)
}

/// `GET /stats/summary` and `GET /metrics/resource`.
async fn stats(state: &State, metrics: bool) -> Response<Body> {
    let views = state.runtime.pod_views();
    let node_name = state.cfg.node_name.clone();
    let Ok((mut node, mut pods)) =
        tokio::task::spawn_blocking(move || samples(&views, &node_name)).await
    else {
        return if metrics {
            Response::builder()
                .header("content-type", super::stats::RESOURCE_METRICS_CONTENT_TYPE)
                .body(full(super::stats::resource_metrics_failed()))
                .expect("static response parts")
        } else {
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read usage")
        };
    };
    if metrics {
        return Response::builder()
            .header("content-type", super::stats::RESOURCE_METRICS_CONTENT_TYPE)
            .body(full(super::stats::resource_metrics(&node, &pods)))
            .expect("static response parts");
    }
    state.rates.lock().unwrap().fill(&mut node, &mut pods);
    Response::builder()
        .header("content-type", "application/json")
        .body(full(
            serde_json::to_vec(&super::stats::summary_json(&node, &pods)).unwrap_or_default(),
        ))
        .expect("static response parts")
}

/// Serves the kubelet API until the process ends. Errors only if it cannot
/// start (certificate, port).
pub async fn serve(cfg: Config, runtime: Runtime, auth: Auth) -> Result<(), String> {
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&cfg)?));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("kubelet API: cannot listen on {}: {e}", cfg.listen))?;
    info!(address = %cfg.listen, "kubelet API listening");
    let state = Arc::new(State {
        runtime,
        auth,
        cfg,
        rates: Default::default(),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "kubelet API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| cert_user(c.as_ref()));
            let user = Arc::new(user);
            let svc = hyper::service::service_fn(move |req| {
                let (state, user) = (state.clone(), user.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(state, &user, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .max_concurrent_streams(256);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "kubelet API connection ended");
            }
        });
    }
}

async fn handle(state: Arc<State>, cert: &Option<User>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().as_str().to_string();
    let authz = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let user = match state.auth.authenticate(cert.as_ref(), authz).await {
        Ok(u) => u,
        Err(_) => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
    };
    if let Err(r) = state.auth.authorize(&user, &method, &path).await {
        let msg = match r {
            Refusal::Forbidden(m) => m,
            Refusal::Unauthorized => "Unauthorized".into(),
        };
        debug!(
            user = user.name,
            method, path, "kubelet API request refused"
        );
        return text(StatusCode::FORBIDDEN, msg);
    }
    route(&state, req, &method, &path).await
}

async fn route(state: &State, req: Request<Incoming>, method: &str, path: &str) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["healthz"]) => text(StatusCode::OK, "ok"),
        ("GET", ["pods"]) => pods(state),
        ("GET" | "POST", ["exec", ns, pod, container]) => {
            exec(state, req, ns, pod, container).await
        }
        ("GET" | "POST", ["attach", ns, pod, container]) => {
            attach(state, req, ns, pod, container).await
        }
        ("GET" | "POST", ["portForward", ns, pod]) => port_forward(state, req, ns, pod).await,
        ("GET", ["stats", "summary"]) => stats(state, false).await,
        ("GET", ["metrics", "resource"]) => stats(state, true).await,
        ("GET", ["metrics"] | ["metrics", "cadvisor"] | ["metrics", "probes"]) => {
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok());
            crate::metrics::http::respond(path, accept, &state.runtime, &state.cfg.node_name)
                .await
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "404 page not found\n"))
        }
        ("GET", ["containerLogs", ns, pod, container]) => {
            logs::handle(state, ns, pod, container, req.uri().query().unwrap_or("")).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// The unit of a running container, or the kubelet's answer.
fn running_unit(
    state: &State,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<String, Box<Response<Body>>> {
    use crate::core::observe::{instance, Instance};
    let view = find_view(state, ns, pod).ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" does not exist"),
        ))
    })?;
    let c = view
        .plan
        .all()
        .find(|c| c.name == container)
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::NOT_FOUND,
                format!("container \"{container}\" not found in pod \"{pod}\""),
            ))
        })?;
    match instance(view.units.get(&c.unit)) {
        Instance::Running { .. } => Ok(c.unit.clone()),
        _ => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        ))),
    }
}

/// `/exec/{ns}/{pod}/{container}`: the command over a WebSocket (the
/// channel protocol) or SPDY, its exit reported as a Status.
async fn exec(
    state: &State,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    use super::ws;
    let params = match super::exec::parse(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if params.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify a command");
    }
    let unit = match running_unit(state, ns, pod, container) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if super::streams::is_spdy_request(&req) {
        return spdy_exec(state, req, unit, params, None);
    }
    if !ws::is_websocket_request(&req) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: an exec request must upgrade to SPDY/3.1 or a WebSocket (v4.channel.k8s.io or v5.channel.k8s.io)",
        );
    }
    ws_exec(state, req, unit, params, None)
}

/// The newest admitted pod `ns/pod` as the agent knows it now.
pub(super) fn find_view(state: &State, ns: &str, pod: &str) -> Option<crate::podview::PodView> {
    state
        .runtime
        .pod_views()
        .into_iter()
        .filter(|v| {
            v.rec.pod.metadata.namespace.as_deref() == Some(ns)
                && v.rec.pod.metadata.name.as_deref() == Some(pod)
        })
        .max_by_key(|v| v.rec.admitted_us)
}

/// `/attach/{ns}/{pod}/{container}`. A container run with stdin or tty
/// has a tty-host (see `crate::ttyhost`): the caller's input and terminal
/// sizes go to its socket and the program's output comes back, until the
/// program exits. Any other container's output is followed in its journal
/// from now on until it stops (a unit's stdout and stderr are one journal
/// stream, so everything arrives on stdout); it has no stdin or terminal
/// to attach to.
async fn attach(
    state: &State,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    use super::attach::Target;
    use super::ws;
    let params = match super::exec::parse(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    // `kubectl debug -it` attaches as soon as it reads Running, which may
    // come before this agent's view of the new unit settles: give it a moment.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let unit = loop {
        match running_unit(state, ns, pod, container) {
            Ok(u) => break u,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(r) => return *r,
        }
    };
    let Some(view) = find_view(state, ns, pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" does not exist"),
        );
    };
    let uid = view.rec.pod.metadata.uid.as_deref().unwrap_or_default();
    let socket = std::path::PathBuf::from(crate::core::tty::attach_socket(uid, container));
    if container_flag(&view.rec.pod, container, |c| c.stdin, |c| c.stdin)
        || container_flag(&view.rec.pod, container, |c| c.tty, |c| c.tty)
    {
        // The unit runs, but its tty-host may not have made the socket yet
        // (kubectl debug -it attaches as soon as the container is running).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !super::attach::is_hosted(&socket) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let target = if super::attach::is_hosted(&socket) {
        // As containerd: input from a caller is dropped unless the
        // container itself has stdin.
        let stdin =
            params.stdin && container_flag(&view.rec.pod, container, |c| c.stdin, |c| c.stdin);
        Target::Host { socket, stdin }
    } else if params.stdin || params.tty {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} was not started with stdin or tty"),
        );
    } else {
        let opts = crate::journal::LogOptions {
            container: Some(container.to_string()),
            follow: true,
            tail: Some(0),
            ..Default::default()
        };
        match crate::journal::container_query(&view, &opts) {
            Ok(q) => Target::Journal(q),
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    };
    if super::streams::is_spdy_request(&req) {
        return spdy_exec(state, req, unit, params, Some(target));
    }
    if !ws::is_websocket_request(&req) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: an attach request must upgrade to SPDY/3.1 or a WebSocket",
        );
    }
    ws_exec(state, req, unit, params, Some(target))
}

/// Whether the pod's container (of any kind) `name` has a flag (`stdin`,
/// `tty`) set, read by `regular` from a container or `ephemeral` from an
/// ephemeral one.
fn container_flag(
    pod: &k8s_openapi::api::core::v1::Pod,
    name: &str,
    regular: fn(&k8s_openapi::api::core::v1::Container) -> Option<bool>,
    ephemeral: fn(&k8s_openapi::api::core::v1::EphemeralContainer) -> Option<bool>,
) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let found = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .map(regular);
    let eph = || {
        spec.ephemeral_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .map(ephemeral)
    };
    found.or_else(eph).flatten() == Some(true)
}

/// Exec (or, with `attach`, attach) over a WebSocket: negotiate, upgrade,
/// run, report the Status on the error channel (v4 and later).
fn ws_exec(
    state: &State,
    req: Request<Incoming>,
    unit: String,
    params: super::exec::Params,
    attach: Option<super::attach::Target>,
) -> Response<Body> {
    use super::attach::Target;
    use super::ws;
    let (head, protocol) = match ws::negotiate(&req, ws::EXEC_PROTOCOLS) {
        Ok(x) => x,
        Err(resp) => return resp.map(full),
    };
    let sd = state.runtime.systemd().clone();
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return debug!(error = %e, "exec upgrade failed"),
        };
        let layout = ws::exec_layout(params.stdin, params.stdout, params.stderr);
        let mut conn = ws::channels(io, protocol, &layout, ws::Config::default()).await;
        let _ = conn.send_exec_ready().await;
        let resize = match (params.tty, conn.reader(ws::RESIZE)) {
            (true, Some(r)) => Some(resize_channel(r)),
            _ => None,
        };
        let outcome = match attach {
            Some(Target::Journal(q)) => {
                if let Some(mut out) = conn.writer(ws::STDOUT).or_else(|| conn.writer(ws::STDERR)) {
                    let stop = crate::journal::until_instance_ends(&*sd, &q);
                    tokio::select! {
                        r = crate::journal::stream(&q, &mut out, stop) => {
                            if let Err(e) = r {
                                debug!(error = %e, "attach stream ended");
                            }
                        }
                        _ = conn.closed() => {}
                    }
                }
                super::exec::Outcome::Exited(0)
            }
            Some(Target::Host { socket, stdin }) => {
                let streams = ws_streams(&mut conn, resize);
                tokio::select! {
                    o = super::attach::run(&socket, stdin, streams) => o,
                    _ = conn.closed() => super::exec::Outcome::Exited(0),
                }
            }
            None => {
                let streams = ws_streams(&mut conn, resize);
                super::exec::run(&*sd, &unit, &params, streams).await
            }
        };
        if protocol.has_status() {
            let status = super::exec::status_json(&params.command, &outcome);
            let _ = conn.send(ws::ERROR, &status).await;
        } else if outcome != super::exec::Outcome::Exited(0) {
            let _ = conn
                .send(ws::ERROR, format!("{outcome:?}").as_bytes())
                .await;
        }
        conn.close().await;
    });
    head.map(|()| full(Bytes::new()))
}

/// The exec/attach streams of a WebSocket connection.
fn ws_streams(
    conn: &mut super::ws::ChannelConn,
    resize: Option<tokio::sync::mpsc::Receiver<super::exec::Size>>,
) -> super::exec::Streams {
    use super::ws;
    super::exec::Streams {
        stdin: conn
            .reader(ws::STDIN)
            .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        stdout: conn
            .writer(ws::STDOUT)
            .map(|w| Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stderr: conn
            .writer(ws::STDERR)
            .map(|w| Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        resize,
    }
}

/// The ports a WebSocket port-forward asks for (`port` or `ports`,
/// repeated or comma-separated, as the kubelet reads them); the error is
/// the 400 response's text.
pub fn port_forward_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::new();
    for (k, v) in super::logs::query_pairs(query) {
        if k == "ports" || k == "port" {
            for p in v.split(',').filter(|p| !p.is_empty()) {
                match p.trim().parse::<u16>() {
                    Ok(n) if n > 0 && ports.len() < 128 => ports.push(n),
                    Ok(n) if n > 0 => break,
                    _ => return Err(format!("invalid port {p:?}: must be 1 to 65535")),
                }
            }
        }
    }
    if ports.is_empty() || ports.len() > 127 {
        return Err("query parameter \"port\" is required (1 to 127 ports)".into());
    }
    Ok(ports)
}

/// `/portForward/{ns}/{pod}?ports=…`: each port's data channel spliced to
/// that port on the pod's network (the host's: pods share it), errors on
/// the port's error channel.
async fn port_forward(
    state: &State,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Response<Body> {
    use super::ws;
    if !state.runtime.pod_views().iter().any(|v| {
        v.rec.pod.metadata.namespace.as_deref() == Some(ns)
            && v.rec.pod.metadata.name.as_deref() == Some(pod)
    }) {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" does not exist"),
        );
    }
    // Over SPDY the ports come with each stream (`port` header).
    if super::streams::is_spdy_request(&req) {
        let (head, _) =
            match super::streams::spdy_negotiate(&req, &[super::streams::PORT_FORWARD_PROTOCOL]) {
                Ok(x) => x,
                Err(resp) => return (*resp).map(full),
            };
        let pod = pod.to_string();
        tokio::spawn(async move {
            let io = match hyper::upgrade::on(req).await {
                Ok(u) => TokioIo::new(u),
                Err(e) => return debug!(error = %e, "port-forward upgrade failed"),
            };
            let (conn, incoming) = super::spdy::serve(io, super::spdy::Config::default());
            super::streams::port_forward(conn, incoming, pod).await;
        });
        return super::streams::head(head);
    }
    let ports = match port_forward_ports(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    if !ws::is_websocket_request(&req) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: a port-forward request must upgrade to SPDY/3.1 or a WebSocket",
        );
    }
    let (head, protocol) = match ws::negotiate(&req, ws::PORT_FORWARD_PROTOCOLS) {
        Ok(x) => x,
        Err(resp) => return resp.map(full),
    };
    let pod = pod.to_string();
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return debug!(error = %e, "port-forward upgrade failed"),
        };
        let layout = ws::port_forward_layout(ports.len());
        let mut conn = ws::channels(io, protocol, &layout, ws::Config::default()).await;
        let _ = conn.send_port_prefixes(&ports).await;
        let mut tasks = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (data, err) = ((2 * i) as u8, (2 * i + 1) as u8);
            let (Some(mut from_client), Some(mut to_client)) =
                (conn.reader(data), conn.writer(data))
            else {
                continue;
            };
            let mut errors = conn.writer(err);
            let (port, pod) = (*port, pod.clone());
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(tcp) => {
                        let (mut r, mut w) = tcp.into_split();
                        let up = tokio::io::copy(&mut from_client, &mut w);
                        let down = tokio::io::copy(&mut r, &mut to_client);
                        let _ = tokio::join!(up, down);
                    }
                    Err(e) => {
                        if let Some(w) = errors.as_mut() {
                            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                            let _ = w.write_all(msg.as_bytes()).await;
                            let _ = w.flush().await;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        conn.close().await;
    });
    head.map(|()| full(Bytes::new()))
}

/// Exec (or, with `attach`, attach) over SPDY: negotiate, upgrade, wait
/// for the client's streams, run, report the Status on the error stream.
fn spdy_exec(
    state: &State,
    req: Request<Incoming>,
    unit: String,
    params: super::exec::Params,
    attach: Option<super::attach::Target>,
) -> Response<Body> {
    use super::attach::Target;
    use super::streams;
    let (head, _) = match streams::spdy_negotiate(&req, &streams::EXEC_PROTOCOLS) {
        Ok(x) => x,
        Err(resp) => return (*resp).map(full),
    };
    let sd = state.runtime.systemd().clone();
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return debug!(error = %e, "exec upgrade failed"),
        };
        let (conn, mut incoming) = super::spdy::serve(io, super::spdy::Config::default());
        let got = match streams::remote_streams(
            &mut incoming,
            params.stdin,
            params.stdout,
            params.stderr,
            params.tty,
        )
        .await
        {
            Ok(g) => g,
            Err(e) => {
                debug!(error = e, "exec streams");
                conn.close();
                return;
            }
        };
        let outcome = match attach {
            Some(Target::Journal(q)) => {
                if let Some(out) = got.stdout.clone().or_else(|| got.stderr.clone()) {
                    let mut out = out;
                    let stop = crate::journal::until_instance_ends(&*sd, &q);
                    if let Err(e) = crate::journal::stream(&q, &mut out, stop).await {
                        debug!(error = %e, "attach stream ended");
                    }
                }
                super::exec::Outcome::Exited(0)
            }
            Some(Target::Host { socket, stdin }) => {
                let io = spdy_streams(&got, params.tty);
                tokio::select! {
                    o = super::attach::run(&socket, stdin, io) => o,
                    _ = conn.closed() => super::exec::Outcome::Exited(0),
                }
            }
            None => {
                let io = spdy_streams(&got, params.tty);
                super::exec::run(&*sd, &unit, &params, io).await
            }
        };
        if let Some(e) = &got.error {
            use tokio::io::AsyncWriteExt;
            let mut e = e.clone();
            let _ = e
                .write_all(&super::exec::status_json(&params.command, &outcome))
                .await;
        }
        let all = [got.error, got.stdout, got.stderr, got.stdin, got.resize];
        streams::finish(all.into_iter().flatten().collect()).await;
        conn.close();
    });
    streams::head(head)
}

/// The exec/attach streams of a SPDY connection (sizes only with a
/// terminal).
fn spdy_streams(got: &super::streams::RemoteStreams, tty: bool) -> super::exec::Streams {
    use super::streams::Shared;
    let boxed_r = |s: &Option<Shared>| {
        s.clone()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)
    };
    let boxed_w = |s: &Option<Shared>| {
        s.clone()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>)
    };
    super::exec::Streams {
        stdin: boxed_r(&got.stdin),
        stdout: boxed_w(&got.stdout),
        stderr: boxed_w(&got.stderr),
        resize: got.resize.clone().filter(|_| tty).map(resize_channel),
    }
}

/// Terminal sizes read from a resize stream: one JSON object per message
/// or line.
fn resize_channel(
    mut r: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> tokio::sync::mpsc::Receiver<super::exec::Size> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 64 * 1024 {
                return;
            }
            // Objects arrive whole or split; take every complete one.
            let mut de =
                serde_json::Deserializer::from_slice(&buf).into_iter::<super::exec::Size>();
            let mut used = 0;
            while let Some(Ok(size)) = de.next() {
                used = de.byte_offset();
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            buf.drain(..used);
        }
    });
    rx
}

/// `GET /pods`: the pods this node runs, as a v1 PodList.
fn pods(state: &State) -> Response<Body> {
    let items: Vec<k8s_openapi::api::core::v1::Pod> = state
        .runtime
        .pod_views()
        .iter()
        .map(crate::podview::with_status)
        .collect();
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&list).unwrap_or_default()))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    #[test]
    fn slices_nest_by_dash() {
        assert_eq!(
            super::slice_cgroup("unitlet-3-podab.slice"),
            "/unitlet.slice/unitlet-3.slice/unitlet-3-podab.slice"
        );
        assert_eq!(super::slice_cgroup("a.slice"), "/a.slice");
    }

    #[test]
    fn port_forward_ports_as_the_kubelet_reads_them() {
        use super::port_forward_ports as ports;
        assert_eq!(ports("ports=80,443&port=8080"), Ok(vec![80, 443, 8080]));
        assert_eq!(ports("ports=%2080"), Ok(vec![80]));
        assert!(ports("").is_err());
        assert!(ports("ports=0").is_err());
        assert!(ports("ports=65536").is_err());
        assert!(ports("ports=x").is_err());
        let many = (1..=127)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(ports(&format!("ports={many}")).map(|p| p.len()), Ok(127));
        let too_many = (1..=1000)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(ports(&format!("ports={too_many}")).is_err());
    }
}
