//! What the API server does with kubelets: it is their client for
//! `pods/<name>/log` (a fresh GET streamed back: pkg/registry/core/pod/rest
//! log.go, generic/rest's LocationStreamer), `pods/<name>/exec`, `attach` and
//! `portforward` (apimachinery's UpgradeAwareHandler with the upgrade
//! required: rest/subresources.go) and `nodes/<name>/proxy/...` (the same
//! handler as a reverse proxy, node/rest/proxy.go). Where a request goes is
//! pkg/registry/core/pod/strategy.go's LogLocation, streamLocation and
//! PortForwardLocation, and pkg/kubelet/client's GetConnectionInfo: the
//! node's first address of the preferred types
//! (`--kubelet-preferred-address-types`), at the port of
//! `status.daemonEndpoints.kubeletEndpoint` (10250 when unset).
//!
//! The connection is HTTPS (HTTP/1.1) with the client certificate kubeadm
//! gives the API server (CN `kube-apiserver-kubelet-client`, O
//! `system:masters`), and checks the kubelet's serving certificate only when
//! a CA is set (`ApiServer::set_kubelet_ca`, the real
//! `--kubelet-certificate-authority`).
//!
//! Left out: the WebSocket translation of newer servers (a `v5.channel.k8s.io`
//! exec or attach, or a tunneled port-forward, is turned into SPDY towards
//! the kubelet there; here every upgrade goes to the kubelet as the client
//! sent it), the authorization of the caller (no RBAC here), gzip of
//! streamed logs, WebSocket log streaming, HTML link rewriting and redirect
//! handling in `nodes/<name>/proxy`, the `stream` log option (alpha), node
//! name checks of serving certificates (alpha); request bodies are read
//! whole before they are sent on (answers stream). A 101's headers reach the
//! client re-serialized by hyper (lower-case names), not byte for byte;
//! transport errors are worded after Go's (`dial tcp …: connect: connection
//! refused`, `tls: failed to verify certificate: x509: …`) but not every
//! one the same.

use super::http::{error_response, Peer};
use super::kinds::by_plural;
use super::status::{go_quote, ApiError, FieldError};
use super::{Proxied, Shared};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// kube-apiserver's default `--kubelet-preferred-address-types`.
pub const DEFAULT_ADDRESS_TYPES: [&str; 5] = [
    "Hostname",
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
];

/// `--kubelet-port`'s default, for nodes that report no kubelet port.
const DEFAULT_KUBELET_PORT: u16 = 10250;

/// How long a dial may take (the kubelet client's dialer).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a kubelet's error answer to logs becomes the message
/// (GenericHttpResponseChecker's maxReadLength).
const MAX_ERROR_BODY: usize = 50_000;

/// `base64url.bearer.authorization.k8s.io.<token>`: a bearer token sent as a
/// WebSocket subprotocol (request/websocket's ProtocolAuthenticator).
pub const WEBSOCKET_BEARER_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// What a request path asks of a kubelet.
pub enum Route {
    Log {
        ns: String,
        name: String,
    },
    Stream {
        ns: String,
        name: String,
        kind: StreamKind,
    },
    NodeProxy {
        /// `name`, `name:port` or `scheme:name:port`.
        id: String,
        /// The path after `/proxy`, as sent: "", "/" or "/a/b".
        rest: String,
    },
}

#[derive(Clone, Copy, PartialEq)]
pub enum StreamKind {
    Exec,
    Attach,
    PortForward,
}

/// The kubelet routes of `path`, if it is one.
pub fn route(path: &str) -> Option<Route> {
    if let Some(after) = path.strip_prefix("/api/v1/nodes/") {
        let (id, rest) = after.split_once('/')?;
        let rest = rest.strip_prefix("proxy")?;
        if !(rest.is_empty() || rest.starts_with('/')) || id.is_empty() {
            return None;
        }
        return Some(Route::NodeProxy {
            id: id.to_string(),
            rest: rest.to_string(),
        });
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ns, name, sub) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] => (*ns, *name, *sub),
        _ => return None,
    };
    let (ns, name) = (ns.to_string(), name.to_string());
    Some(match sub {
        "log" => Route::Log { ns, name },
        "exec" => Route::Stream {
            ns,
            name,
            kind: StreamKind::Exec,
        },
        "attach" => Route::Stream {
            ns,
            name,
            kind: StreamKind::Attach,
        },
        "portforward" => Route::Stream {
            ns,
            name,
            kind: StreamKind::PortForward,
        },
        _ => return None,
    })
}

/// A request as it reached the server, for the proxies.
pub struct ProxyRequest {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client connection's upgrade, if hyper offers one.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Serves a kubelet route: the answer, and what was sent to the kubelet.
pub async fn serve(
    shared: Arc<Shared>,
    route: Route,
    req: ProxyRequest,
    peer: &Peer,
) -> (Response, Option<Proxied>) {
    let mut sent = None;
    let result = match route {
        Route::Log { ns, name } => pod_log(&shared, &ns, &name, &req, &mut sent).await,
        Route::Stream { ns, name, kind } => {
            stream(&shared, &ns, &name, kind, req, peer, &mut sent).await
        }
        Route::NodeProxy { id, rest } => {
            node_proxy(&shared, &id, &rest, req, peer, &mut sent).await
        }
    };
    (result.unwrap_or_else(|e| error_response(&e)), sent)
}

// ----- where a kubelet is -----

/// A URL on a kubelet.
#[derive(Clone)]
struct Location {
    scheme: String,
    host: String,
    port: u16,
    path: String,
    query: String,
}

impl Location {
    /// net.JoinHostPort.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme,
            self.authority(),
            self.path_and_query()
        )
    }

    fn record(&self, method: &Method) -> Proxied {
        Proxied {
            method: method.to_string(),
            scheme: self.scheme.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.path.clone(),
            query: self.query.clone(),
            status: None,
            error: None,
            upgraded: false,
        }
    }
}

/// GetConnectionInfo: the node's preferred address and kubelet port.
fn connection_info(shared: &Shared, node_name: &str) -> Result<(String, u16), ApiError> {
    let st = shared.lock();
    let node = st.get(by_plural("nodes"), None, node_name)?;
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let host = st
        .kubelet_address_types
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a["type"].as_str() == Some(kind))
                .and_then(|a| a["address"].as_str())
        })
        .map(str::to_string);
    let Some(host) = host else {
        // NoMatchError, `%v` of []v1.NodeAddress.
        let known: Vec<String> = addresses
            .iter()
            .map(|a| {
                format!(
                    "{{{} {}}}",
                    a["type"].as_str().unwrap_or(""),
                    a["address"].as_str().unwrap_or("")
                )
            })
            .collect();
        return Err(ApiError::unknown(format!(
            "no preferred addresses found; known addresses: [{}]",
            known.join(" ")
        )));
    };
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((host, port))
}

/// The pod, as the registry's getPod reads it.
fn get_pod(shared: &Shared, ns: &str, name: &str) -> Result<Value, ApiError> {
    shared.lock().get(by_plural("pods"), Some(ns), name)
}

fn container_names(pod: &Value) -> Vec<String> {
    // podutil.VisitContainers: init containers, containers, ephemeral ones.
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod["spec"][*list].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// validateContainer: the named container must exist; none named is the
/// only app container, if there is exactly one. (No default-container
/// annotation: that is kubectl's, not the server's.)
fn validate_container(container: &str, pod: &Value) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    if container.is_empty() {
        let apps = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        return match apps.len() {
            1 => Ok(apps[0]["name"].as_str().unwrap_or("").to_string()),
            0 => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            // `%s` of a []string: [a b c].
            _ => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                container_names(pod).join(" ")
            ))),
        };
    }
    if !container_names(pod).iter().any(|c| c == container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container.to_string())
}

// ----- query parameters, as the parameter codec converts them -----

/// url.ParseQuery, keeping every value of every key in order.
pub fn query_values(raw: &str) -> BTreeMap<String, Vec<String>> {
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        values.entry(unescape(k)).or_default().push(unescape(v));
    }
    values
}

/// url.QueryUnescape ('+' is a space; a bad escape is kept as it is).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.bytes().all(|c| c.is_ascii_hexdigit()) => {
                        out.push(b);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// url.QueryEscape.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// url.Values.Encode: keys sorted, each value in order.
fn encode(values: &BTreeMap<&str, Vec<String>>) -> String {
    let mut parts = vec![];
    for (k, vs) in values {
        for v in vs {
            parts.push(format!("{}={}", escape(k), escape(v)));
        }
    }
    parts.join("&")
}

/// Convert_Slice_string_To_bool: absent is false; "0" and "false" (any
/// case) are false; anything else, the empty string too, is true.
fn flag(q: &BTreeMap<String, Vec<String>>, name: &str) -> bool {
    match q.get(name).and_then(|v| v.first()) {
        None => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

/// Convert_Slice_string_To_Pointer_int64.
fn int64(q: &BTreeMap<String, Vec<String>>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(name).and_then(|v| v.first()) else {
        return Ok(None);
    };
    v.parse::<i64>().map(Some).map_err(|e| {
        let why = if matches!(
            e.kind(),
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
        ) {
            "value out of range"
        } else {
            "invalid syntax"
        };
        ApiError::bad_request(format!("strconv.ParseInt: parsing {}: {why}", go_quote(v)))
    })
}

fn first<'a>(q: &'a BTreeMap<String, Vec<String>>, name: &str) -> &'a str {
    q.get(name)
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or("")
}

// ----- the kubelet client -----

/// Accepts any serving certificate (the API server without
/// `--kubelet-certificate-authority`), still checking the handshake's
/// signatures.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How to reach a location.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    /// The kubelet transport: the client certificate, and the serving
    /// certificate checked against the kubelet CA if one is set and
    /// `verify`.
    Kubelet { verify: bool },
    /// nodes/proxy to another port over HTTPS: no client certificate, no
    /// verification.
    Https,
    /// nodes/proxy to another port over HTTP.
    Http,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

fn tls_config(shared: &Shared, transport: Transport) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let ca = match transport {
        Transport::Kubelet { verify: true } => shared.lock().kubelet_ca.clone(),
        _ => None,
    };
    let builder = match ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("kubelet CA: {e}"))?;
                roots.add(cert).map_err(|e| format!("kubelet CA: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider))),
    };
    let mut config = if let Transport::Kubelet { .. } = transport {
        let (cert, key) = &shared.kubelet_client;
        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("client cert")];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Go's words for a failed TLS handshake, where rustls has its own.
fn tls_error(e: &std::io::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer)) => {
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                .to_string()
        }
        Some(rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => {
            format!("tls: failed to verify certificate: x509: certificate is not valid for {host}")
        }
        Some(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
            "tls: failed to verify certificate: x509: certificate has expired or is not yet valid"
                .to_string()
        }
        Some(other) => format!("tls: {other}"),
        None => e.to_string(),
    }
}

/// Dials a location as Go's dialer would, in Go's words when it fails.
async fn dial(
    shared: &Shared,
    loc: &Location,
    transport: Transport,
) -> Result<Box<dyn Io>, String> {
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::net::lookup_host((loc.host.as_str(), loc.port)).await {
            Ok(a) => a.collect(),
            Err(_) => vec![],
        };
    if addrs.is_empty() {
        return Err(format!("dial tcp: lookup {}: no such host", loc.host));
    }
    let mut tcp = None;
    let mut last = String::new();
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    _ => e.to_string(),
                };
                last = format!("dial tcp {addr}: connect: {why}");
            }
            Err(_) => last = format!("dial tcp {addr}: i/o timeout"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    if transport == Transport::Http {
        return Ok(Box::new(tcp));
    }
    let config = tls_config(shared, transport)?;
    let name = match loc.host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(loc.host.clone()).map_err(|e| e.to_string())?,
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(&e, &loc.host))?;
    Ok(Box::new(tls))
}

/// Sends one request on a new connection; with `upgrades`, the connection
/// can be taken over after a 101.
async fn send(
    io: Box<dyn Io>,
    req: hyper::Request<Full<Bytes>>,
    upgrades: bool,
) -> Result<hyper::Response<Incoming>, String> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    if upgrades {
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    sender.send_request(req).await.map_err(|e| {
        if e.is_incomplete_message() {
            "EOF".to_string()
        } else {
            e.to_string()
        }
    })
}

// ----- pods/log -----

/// LogREST.Get: validate the options, find the container and its node, GET
/// the kubelet's `/containerLogs/...` and stream the answer back as
/// text/plain (flushed as it comes when following); a kubelet error becomes
/// a Status (GenericHttpResponseChecker).
async fn pod_log(
    shared: &Shared,
    ns: &str,
    name: &str,
    req: &ProxyRequest,
    sent: &mut Option<Proxied>,
) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let q = query_values(&req.query);
    let container = first(&q, "container").to_string();
    // Converted in the order of PodLogOptions' fields: the first bad one
    // is the error.
    let since_seconds = int64(&q, "sinceSeconds")?;
    // metav1.Time.UnmarshalQueryParameter: "" and "null" are the zero time.
    let since_time = match q.get("sinceTime").and_then(|v| v.first()) {
        None => None,
        Some(s) if s.is_empty() || s == "null" => Some("0001-01-01T00:00:00Z".to_string()),
        Some(s) => {
            let t: jiff::Timestamp = s.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "parsing time {} as \"2006-01-02T15:04:05Z07:00\": cannot parse {} as \"2006\"",
                    go_quote(s),
                    go_quote(s)
                ))
            })?;
            Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
    };
    let tail_lines = int64(&q, "tailLines")?;
    let limit_bytes = int64(&q, "limitBytes")?;
    // ValidatePodLogOptions.
    let mut errs = vec![];
    if let Some(t) = tail_lines.filter(|t| *t < 0) {
        errs.push(FieldError::invalid(
            "tailLines",
            t.into(),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(l) = limit_bytes.filter(|l| *l < 1) {
        errs.push(FieldError::invalid(
            "limitBytes",
            l.into(),
            "must be greater than 0",
        ));
    }
    match (since_seconds, &since_time) {
        (Some(_), Some(_)) => errs.push(FieldError::forbidden(
            "",
            "at most one of `sinceTime` or `sinceSeconds` may be specified",
        )),
        (Some(s), None) if s < 1 => errs.push(FieldError::invalid(
            "sinceSeconds",
            s.into(),
            "must be greater than 0",
        )),
        _ => {}
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid("", "PodLogOptions", name, &errs));
    }

    let pod = get_pod(shared, ns, name)?;
    let container = validate_container(&container, &pod)?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        // No location: StreamObject answers 204 with no body.
        return Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap());
    }
    let (host, port) = connection_info(shared, node)?;

    let mut params: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut set = |k, v: String| {
        params.insert(k, vec![v]);
    };
    if flag(&q, "follow") {
        set("follow", "true".into());
    }
    if flag(&q, "previous") {
        set("previous", "true".into());
    }
    if flag(&q, "timestamps") {
        set("timestamps", "true".into());
    }
    if let Some(s) = since_seconds {
        set("sinceSeconds", s.to_string());
    }
    if let Some(t) = since_time {
        set("sinceTime", t);
    }
    if let Some(t) = tail_lines {
        set("tailLines", t.to_string());
    }
    if let Some(l) = limit_bytes {
        set("limitBytes", l.to_string());
    }
    let loc = Location {
        scheme: "https".into(),
        host,
        port,
        path: format!("/containerLogs/{ns}/{name}/{container}"),
        query: encode(&params),
    };
    let verify = !flag(&q, "insecureSkipTLSVerifyBackend");
    let mut record = loc.record(&Method::GET);

    // A new GET, with none of the client's headers (LocationStreamer).
    let request = hyper::Request::get(loc.path_and_query())
        .header(header::HOST, loc.authority())
        .header(header::USER_AGENT, "Go-http-client/1.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = match dial(shared, &loc, Transport::Kubelet { verify }).await {
        Ok(io) => send(io, request, false).await,
        Err(e) => Err(e),
    };
    let resp = match answer {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e.clone());
            *sent = Some(record);
            return Err(ApiError::unknown(format!("Get \"{}\": {e}", loc.url())));
        }
    };
    let code = resp.status().as_u16();
    record.status = Some(code);
    *sent = Some(record);
    if !(200..=206).contains(&code) {
        let body = read_limited(resp.into_body(), MAX_ERROR_BODY).await;
        return Err(match code {
            500 => ApiError::internal(&body),
            400 => ApiError::bad_request(body),
            _ => ApiError::generic_server_response(code, "pods/log", name, &body),
        });
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::new(resp.into_body()))
        .unwrap())
}

/// At most `limit` bytes of a body, as text.
async fn read_limited(mut body: Incoming, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(limit);
    String::from_utf8_lossy(&bytes).into_owned()
}

// ----- pods/exec, attach, portforward -----

/// httpstream.IsUpgradeRequest: a Connection header mentioning "upgrade".
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// ExecREST, AttachREST and PortForwardREST.Connect: the location from the
/// options (re-encoded, as streamParams does), then the upgrade-aware proxy
/// with the upgrade required.
async fn stream(
    shared: &Shared,
    ns: &str,
    name: &str,
    kind: StreamKind,
    req: ProxyRequest,
    peer: &Peer,
    sent: &mut Option<Proxied>,
) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::POST {
        return Err(ApiError::method_not_allowed());
    }
    let q = query_values(&req.query);
    let mut params: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let one = || vec!["1".to_string()];
    let path = match kind {
        StreamKind::Exec | StreamKind::Attach => {
            for p in ["stdin", "stdout", "stderr", "tty"] {
                if flag(&q, p) {
                    params.insert(p, one());
                }
            }
            if kind == StreamKind::Exec {
                if let Some(command) = q.get("command") {
                    params.insert("command", command.clone());
                }
            }
            let pod = get_pod(shared, ns, name)?;
            let container = validate_container(first(&q, "container"), &pod)?;
            let node = node_of(&pod, name)?;
            let verb = if kind == StreamKind::Exec {
                "exec"
            } else {
                "attach"
            };
            (node, format!("/{verb}/{ns}/{name}/{container}"))
        }
        StreamKind::PortForward => {
            // Convert_Slice_string_To_Slice_int32, then joined with ","
            // under the `port` parameter.
            let mut ports = vec![];
            for v in q.get("ports").into_iter().flatten() {
                for p in v.split(',') {
                    let port = p.parse::<u16>().map_err(|e| {
                        let why = if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
                            "value out of range"
                        } else {
                            "invalid syntax"
                        };
                        ApiError::bad_request(format!(
                            "cannot convert to []int32: strconv.ParseUint: parsing {}: {why}",
                            go_quote(p)
                        ))
                    })?;
                    ports.push(port.to_string());
                }
            }
            if !ports.is_empty() {
                params.insert("port", vec![ports.join(",")]);
            }
            let pod = get_pod(shared, ns, name)?;
            let node = node_of(&pod, name)?;
            (node, format!("/portForward/{ns}/{name}"))
        }
    };
    let (node, path) = path;
    let (host, port) = connection_info(shared, &node)?;
    let loc = Location {
        scheme: "https".into(),
        host,
        port,
        path,
        query: encode(&params),
    };
    if !is_upgrade(&req.headers) {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    upgrade(
        shared,
        loc,
        Transport::Kubelet { verify: true },
        req,
        peer,
        sent,
    )
    .await
}

fn node_of(pod: &Value, name: &str) -> Result<String, ApiError> {
    match pod["spec"]["nodeName"].as_str().unwrap_or("") {
        "" => Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        ))),
        node => Ok(node.to_string()),
    }
}

/// The client's headers as the proxies forward them: without the bearer
/// token the request authenticated with (the authenticators remove it),
/// with the client's address appended to X-Forwarded-For.
fn forwarded_headers(headers: &HeaderMap, peer: &Peer) -> HeaderMap {
    let mut out = headers.clone();
    if peer.user.is_none() {
        let bearer = out
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split_whitespace()
                    .next()
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
            });
        if bearer {
            out.remove(header::AUTHORIZATION);
        } else {
            strip_websocket_bearer(&mut out);
        }
    }
    if let Some(addr) = peer.addr {
        let ip = addr.ip().to_string();
        let prior: Vec<String> = out
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let value = if prior.is_empty() {
            ip
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        out.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    out
}

/// The WebSocket ProtocolAuthenticator, after it authenticated a request:
/// the subprotocol with the token is gone, the others stay.
fn strip_websocket_bearer(headers: &mut HeaderMap) {
    let protocols: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    if !protocols
        .iter()
        .any(|p| p.starts_with(WEBSOCKET_BEARER_PREFIX))
    {
        return;
    }
    let kept: Vec<String> = protocols
        .into_iter()
        .filter(|p| !p.starts_with(WEBSOCKET_BEARER_PREFIX))
        .collect();
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&kept.join(",")).unwrap(),
    );
}

/// UpgradeAwareHandler.tryUpgrade: send the request on a new connection
/// with all its headers; a 101 is answered with the node's headers and the
/// two connections are spliced byte for byte until either side ends; an
/// error answer (400 and up) is passed through; anything else is a 500.
async fn upgrade(
    shared: &Shared,
    loc: Location,
    transport: Transport,
    mut req: ProxyRequest,
    peer: &Peer,
    sent: &mut Option<Proxied>,
) -> Result<Response, ApiError> {
    let mut record = loc.record(&req.method);
    let mut headers = forwarded_headers(&req.headers, peer);
    // Request.Write sends the body by its length, not these headers.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut request = hyper::Request::builder()
        .method(req.method.clone())
        .uri(loc.path_and_query())
        .body(Full::new(req.body.clone()))
        .unwrap();
    *request.headers_mut() = headers;
    if !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(&loc.authority()).unwrap(),
        );
    }
    let answer = match dial(shared, &loc, transport).await {
        Ok(io) => send(io, request, true).await,
        Err(e) => Err(e),
    };
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e.clone());
            *sent = Some(record);
            return Err(ApiError::unknown(format!("error dialing backend: {e}")));
        }
    };
    let code = resp.status().as_u16();
    record.status = Some(code);
    if code != 101 && code < 400 {
        *sent = Some(record);
        return Err(ApiError::unknown(format!(
            "invalid upgrade response: status code {code}"
        )));
    }
    if code != 101 {
        *sent = Some(record);
        let mut out = Response::builder().status(code);
        for (k, v) in resp.headers() {
            if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING {
                out = out.header(k, v);
            }
        }
        // The hijacked connection is closed after the answer.
        out = out.header(header::CONNECTION, "close");
        return Ok(out.body(Body::new(resp.into_body())).unwrap());
    }
    record.upgraded = true;
    *sent = Some(record);
    let node_side = hyper::upgrade::on(&mut resp);
    let client_side = req.upgrade.take();
    let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    tokio::spawn(async move {
        let (Some(client_side), Ok(node)) = (client_side, node_side.await) else {
            return;
        };
        let Ok(client) = client_side.await else {
            return;
        };
        splice(TokioIo::new(client), TokioIo::new(node)).await;
    });
    Ok(out.body(Body::empty()).unwrap())
}

/// Copies both ways until one direction ends, then closes both (the
/// upgrade-aware proxy's two goroutines and its deferred closes).
async fn splice<A: Io + 'static, B: Io + 'static>(client: A, node: B) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut node_read, mut node_write) = tokio::io::split(node);
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut node_write) => {}
        _ = tokio::io::copy(&mut node_read, &mut client_write) => {}
    }
    let close = async {
        let _ = client_write.shutdown().await;
        let _ = node_write.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
}

// ----- nodes/<name>/proxy -----

/// Go's path.Join of a path that starts with "/": `.`, `..` and empty
/// segments resolved; then JoinPreservingTrailingSlash's trailing slash.
fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return String::new();
    }
    let mut out: Vec<&str> = vec![];
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if p.ends_with('/') && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

/// Hop-by-hop headers, which httputil.ReverseProxy does not pass on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for h in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(h);
    }
}

/// ProxyREST.Connect for nodes (node/strategy.go's ResourceLocation, with
/// isProxyableHostname), then the upgrade-aware handler as a reverse proxy.
async fn node_proxy(
    shared: &Shared,
    id: &str,
    rest: &str,
    req: ProxyRequest,
    peer: &Peer,
    sent: &mut Option<Proxied>,
) -> Result<Response, ApiError> {
    const METHODS: [Method; 7] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    if !METHODS.contains(&req.method) {
        return Err(ApiError::method_not_allowed());
    }
    // utilnet.SplitSchemeNamePort.
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => ("", "", ""),
    };
    if name.is_empty() || !["", "http", "https"].contains(&scheme) {
        return Err(ApiError::bad_request(format!(
            "invalid node request {}",
            go_quote(id)
        )));
    }
    let (host, kubelet_port) = connection_info(shared, name)?;
    proxyable(shared, &host).await?;
    let (scheme, port, transport) = if port.is_empty() || port == kubelet_port.to_string() {
        ("https", kubelet_port, Transport::Kubelet { verify: true })
    } else {
        let port: u16 = port.parse().map_err(|_| {
            ApiError::unknown(format!("parse \"{scheme}://{host}:{port}\": invalid port"))
        })?;
        match scheme {
            "https" => ("https", port, Transport::Https),
            _ => ("http", port, Transport::Http),
        }
    };
    let loc = Location {
        scheme: scheme.into(),
        host,
        port,
        path: clean_path(rest),
        query: req.query.clone(),
    };
    if is_upgrade(&req.headers) {
        return upgrade(shared, loc, transport, req, peer, sent).await;
    }
    // An empty path is redirected to one that ends with "/".
    if loc.path.is_empty() && (req.method == Method::GET || req.method == Method::HEAD) {
        let q = if req.query.is_empty() {
            String::new()
        } else {
            format!("?{}", req.query)
        };
        return Ok(Response::builder()
            .status(StatusCode::MOVED_PERMANENTLY)
            .header(header::LOCATION, format!("{}/{q}", req.path))
            .body(Body::empty())
            .unwrap());
    }
    let mut record = loc.record(&req.method);
    let mut headers = forwarded_headers(&req.headers, peer);
    remove_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    // The rewriting transport's X-Forwarded-Uri: the path the client asked.
    let forwarded_uri = req.path.clone();
    if let Ok(v) = HeaderValue::from_str(&forwarded_uri) {
        headers.insert(HeaderName::from_static("x-forwarded-uri"), v);
    }
    let mut request = hyper::Request::builder()
        .method(req.method.clone())
        .uri(if loc.path.is_empty() {
            format!("/{}", loc.path_and_query())
        } else {
            loc.path_and_query()
        })
        .body(Full::new(req.body.clone()))
        .unwrap();
    *request.headers_mut() = headers;
    if !request.headers().contains_key(header::HOST) {
        request.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(&loc.authority()).unwrap(),
        );
    }
    let answer = match dial(shared, &loc, transport).await {
        Ok(io) => send(io, request, false).await,
        Err(e) => Err(e),
    };
    let resp = match answer {
        Ok(r) => r,
        Err(e) => {
            record.error = Some(e.clone());
            *sent = Some(record);
            return Err(ApiError::service_unavailable(format!(
                "error trying to reach service: {e}"
            )));
        }
    };
    record.status = Some(resp.status().as_u16());
    *sent = Some(record);
    let (mut parts, body) = resp.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    // corsRemovingTransport.
    for h in [
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-allow-origin",
    ] {
        parts.headers.remove(h);
    }
    let mut out = Response::builder().status(parts.status);
    for (k, v) in &parts.headers {
        out = out.header(k, v);
    }
    Ok(out.body(Body::new(body)).unwrap())
}

/// isProxyableHostname: every address of the host must be global unicast,
/// as net.IP.IsGlobalUnicast has it (not unspecified, loopback, link-local
/// or multicast), unless the test allowed loopback nodes.
async fn proxyable(shared: &Shared, host: &str) -> Result<(), ApiError> {
    let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(_) => {
            return Err(ApiError::bad_request(format!(
                "lookup {host}: no such host"
            )))
        }
    };
    if addrs.is_empty() {
        return Err(ApiError::bad_request("no addresses for hostname"));
    }
    let allow_loopback = shared.lock().node_proxy_loopback;
    let global = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified() || v6.is_loopback() || link_local || v6.is_multicast())
        }
    };
    let loopback_ok = |ip: &IpAddr| allow_loopback && ip.is_loopback();
    if addrs.iter().all(|ip| global(ip) || loopback_ok(ip)) {
        Ok(())
    } else {
        Err(ApiError::bad_request("address not allowed"))
    }
}
