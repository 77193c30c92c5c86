//! The kubelet's HTTPS API on the node (port 10250): what the API server
//! proxies `kubectl logs/exec/attach/port-forward` to, and what
//! metrics-server scrapes for `kubectl top`.

pub mod attach;
pub mod auth;
pub mod cert;
pub mod exec;
pub mod logs;
pub mod procstats;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod streams;
pub mod ws;

/// How a node serves the kubelet API (the command line's choices).
#[derive(Debug, Clone)]
pub struct KubeletApi {
    /// `--address`.
    pub address: std::net::IpAddr,
    /// The serving certificate.
    pub cert: server::ServingCert,
    /// `--client-ca-file`; without it, the kubeconfig's cluster CA.
    pub client_ca: Option<std::path::PathBuf>,
    /// `--anonymous-auth`.
    pub anonymous: bool,
    /// `--authentication-token-webhook`.
    pub token_webhook: bool,
    /// `--authorization-mode`.
    pub mode: auth::Mode,
}
