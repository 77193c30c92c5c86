//! The pure heart of unitlet: no I/O, no async, no clocks.
//!
//! Everything a reviewer needs to check Kubernetes semantics lives here as
//! functions from data to data, so it can be tested with tables, golden files
//! and property tests without a systemd in sight.

pub mod backoff;
pub mod envref;
pub mod expand;
pub mod manifest;
pub mod names;
pub mod observe;
pub mod quantity;
pub mod translate;
pub mod unit;

/// Facts about the node that the translation and status rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (`spec.nodeName`).
    pub node_name: String,
    /// The node's primary IP; every pod uses the host network, so it is also the pod IP.
    pub host_ip: String,
}
