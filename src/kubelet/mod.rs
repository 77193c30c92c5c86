//! The kubelet's HTTPS API on the node (port 10250): what the API server
//! proxies `kubectl logs/exec/attach/port-forward` to, and what
//! metrics-server scrapes for `kubectl top`.

pub mod spdy;
pub mod stats;
pub mod ws;
