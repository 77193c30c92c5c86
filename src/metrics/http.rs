//! Serving the metrics: the format a scraper asked for, the three paths
//! (shared by the kubelet API and the standalone listener), and the
//! standalone agent's own listener.
//!
//! The standalone listener (`unitlet run --metrics-bind-address`, default
//! `127.0.0.1:10255`) has no authentication: on a loopback address only
//! local users can reach it, and it speaks plain HTTP, what a local
//! Prometheus or agent expects. On any other address the metrics leave the
//! machine, so the listener speaks TLS with a self-signed certificate kept
//! in the state directory (the kubelet API's, see
//! [`crate::kubelet::cert::self_signed`]) and says so in the log: what is
//! scraped cannot be read or altered on the way, and a scraper can pin the
//! certificate file. It is still unauthenticated; a node that must
//! restrict who scrapes runs in cluster mode, where the kubelet API
//! authorizes every scrape.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::registry::Registry;
use tokio_rustls::rustls;
use tracing::{debug, info, warn};

use crate::kubelet::server::{full, text, Body};
use crate::kubelet::stats::CgroupReader;
use crate::runtime::Runtime;

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4, the default (what the kubelet answers
    /// without an `Accept`).
    Text,
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
}

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text`
    /// with a non-zero quality, else the text format (as Prometheus'
    /// `expfmt.Negotiate` falls back).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants = accept.is_some_and(|a| {
            a.split(',').any(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                let q = parts
                    .filter_map(|p| p.strip_prefix("q="))
                    .filter_map(|q| q.parse::<f32>().ok())
                    .next()
                    .unwrap_or(1.0);
                media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
            })
        });
        if wants {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Registers `metric` under `name` with `help` exactly as given:
/// `Registry::register` ends every help text with a period, which would
/// change the kubelet's and cAdvisor's texts. Families without samples are
/// left out, as Prometheus' Go client leaves them.
pub fn register<M>(registry: &mut Registry, name: &'static str, help: impl Into<String>, metric: M)
where
    M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static,
{
    registry.register_collector(Box::new(Exact {
        name,
        help: help.into(),
        metric,
    }));
}

#[derive(Debug)]
struct Exact<M> {
    name: &'static str,
    help: String,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Exact<M> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.metric.is_empty() {
            return Ok(());
        }
        let m =
            encoder.encode_descriptor(self.name, &self.help, None, self.metric.metric_type())?;
        self.metric.encode(m)
    }
}

/// Writes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
    };
    out
}

/// The host's control groups, found once: mounts do not move under a
/// running agent.
static READER: LazyLock<CgroupReader> =
    LazyLock::new(|| CgroupReader::detect(std::path::Path::new("/")));

/// The answer to a GET of `path` if it is one of the metrics paths
/// (`/metrics`, `/metrics/cadvisor`, `/metrics/probes`), else `None`.
/// Control group files are read off the async threads.
pub async fn respond(
    path: &str,
    accept: Option<&str>,
    runtime: &Runtime,
    node_name: &str,
) -> Option<Response<Body>> {
    let format = Format::negotiate(accept);
    let body = match path.trim_end_matches('/') {
        "/metrics" => super::agent::render(&runtime.pod_views(), node_name, format),
        "/metrics/probes" => super::probes::render(&runtime.pod_views(), format),
        "/metrics/cadvisor" => {
            let views = runtime.pod_views();
            match tokio::task::spawn_blocking(move || {
                super::cadvisor::render(&views, &READER, jiff::Timestamp::now(), format)
            })
            .await
            {
                Ok(b) => b,
                Err(_) => {
                    return Some(text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot read the control groups",
                    ))
                }
            }
        }
        _ => return None,
    };
    Some(
        Response::builder()
            .header("content-type", format.content_type())
            .body(full(body))
            .expect("static response parts"),
    )
}

/// Why the standalone metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is taken or not ours (logged; the listener retries).
    #[error("--metrics-bind-address {addr}: cannot listen: {source}; pick a free port, or pass --metrics-bind-address=0 to serve no metrics")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No certificate for a non-loopback address.
    #[error("--metrics-bind-address {addr}: a non-loopback address is served over TLS, but the self-signed certificate in {dir} cannot be made: {reason}")]
    Cert {
        /// The address.
        addr: SocketAddr,
        /// Where the certificate is kept.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// `--metrics-bind-address`: where the standalone listener serves, if
/// anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

/// Parses `--metrics-bind-address`: no listener for an empty value or `0`
/// (as kube-proxy's `--metrics-bind-address` and the kubelet's port flags
/// turn theirs off).
pub fn parse_bind_address(s: &str) -> Result<BindAddress, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(BindAddress(None));
    }
    s.parse::<SocketAddr>().map(|a| BindAddress(Some(a))).map_err(|e| {
        format!("{s:?}: {e}: give an address and port (127.0.0.1:10255, [::1]:10255), or 0 to turn the listener off")
    })
}

/// Serves `/metrics`, `/metrics/cadvisor`, `/metrics/probes` and
/// `/healthz` on `addr` until the process ends: plain HTTP on a loopback
/// address, TLS with the self-signed certificate kept in `cert_dir` on any
/// other (see the module's documentation). Errors only if the certificate
/// cannot be made; a taken address is retried every 5 s.
pub async fn serve(
    addr: SocketAddr,
    runtime: Runtime,
    node_name: String,
    cert_dir: PathBuf,
) -> Result<(), ServeError> {
    let tls = if addr.ip().is_loopback() {
        None
    } else {
        let mut names = vec![node_name.clone()];
        if !addr.ip().is_unspecified() {
            names.insert(0, addr.ip().to_string());
        }
        std::fs::create_dir_all(&cert_dir).map_err(|e| ServeError::Cert {
            addr,
            dir: cert_dir.clone(),
            reason: e.to_string(),
        })?;
        let ck =
            crate::kubelet::cert::self_signed(&cert_dir, &node_name, &names).map_err(|reason| {
                ServeError::Cert {
                    addr,
                    dir: cert_dir.clone(),
                    reason,
                }
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Cert {
                addr,
                dir: cert_dir.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(crate::kubelet::cert::Rotating::fixed(ck));
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    };
    // As the kubelet's healthz listener: a taken port is retried, and the
    // pods run meanwhile (they matter more than their metrics).
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(source) => {
                warn!(error = %ServeError::Bind { addr, source }, "metrics not served; retrying in 5 s");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }
    };
    if tls.is_some() {
        warn!(address = %addr, cert_dir = %cert_dir.display(), "metrics listening over HTTPS with a self-signed certificate (not a loopback address); scrapes are not authenticated");
    } else {
        info!(address = %addr, "metrics listening over HTTP (loopback only)");
    }
    let state = Arc::new((runtime, node_name));
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state.0, &state.1, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30));
            let r = match tls {
                None => http.serve_connection(TokioIo::new(tcp), svc).await,
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp));
                    match handshake.await {
                        Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), svc).await,
                        _ => return debug!(%peer, "metrics: TLS handshake failed"),
                    }
                }
            };
            if let Err(e) = r {
                debug!(%peer, error = %e, "metrics connection ended");
            }
        });
    }
}

async fn handle(runtime: &Runtime, node_name: &str, req: Request<Incoming>) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match respond(&path, accept.as_deref(), runtime, node_name).await {
        Some(r) => r,
        None => text(
            StatusCode::NOT_FOUND,
            "404 page not found: serving /metrics, /metrics/cadvisor, /metrics/probes, /healthz",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        // What Prometheus sends by default.
        let prom = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }

    #[test]
    fn bind_address() {
        assert_eq!(parse_bind_address(""), Ok(BindAddress(None)));
        assert_eq!(parse_bind_address("0"), Ok(BindAddress(None)));
        assert_eq!(
            parse_bind_address("127.0.0.1:10255"),
            Ok(BindAddress(Some("127.0.0.1:10255".parse().unwrap())))
        );
        assert!(parse_bind_address("localhost").is_err());
    }
}
