//! The pure heart of unitlet: no I/O, no async, no clocks.
//!
//! Everything a reviewer needs to check Kubernetes semantics lives here as
//! functions from data to data, so it can be tested with tables, golden files
//! and property tests without a systemd in sight.

pub mod backoff;
pub mod decide;
pub mod downward;
pub mod envref;
pub mod eviction;
pub mod expand;
pub mod image;
pub mod image_run;
pub mod live;
pub mod manifest;
pub mod names;
pub mod observe;
pub mod probe;
pub mod quantity;
pub mod resources;
pub mod rules;
pub mod translate;
pub mod tty;
pub mod unit;
pub mod volume;

/// Facts about the node that the translation and status rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (`spec.nodeName`).
    pub node_name: String,
    /// The node's primary IP; every pod uses the host network, so it is also the pod IP.
    pub host_ip: String,
    /// What pods may use of the node: a container without a limit reads
    /// this as its limit through the downward API (`resourceFieldRef`).
    pub allocatable: Allocatable,
    /// Where each pod's directory (`<pods_dir>/<uid>`) lives, absolute:
    /// `<state dir>/pods`. Volume directories are made below it and
    /// containers' units bind them.
    pub pods_dir: String,
    /// The hardening every non-privileged container gets beyond its
    /// securityContext (the node's `--pod-hardening`).
    pub hardening: Hardening,
    /// The agent's own executable: a container with `stdin` or `tty` runs
    /// under its `tty-host` helper (see [`tty`]).
    pub agent_exe: String,
}

/// unitlet's hardening profiles for pods (see the README).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hardening {
    /// What a container runtime gives a container by default: Kubernetes'
    /// capability set and no device access (`DevicePolicy=closed`). Costs
    /// systemd nothing at start.
    #[default]
    Default,
    /// Also a private `/tmp`, read-only kernel tunables and cgroup tree,
    /// and no kernel module loading: each unit then gets a mount namespace
    /// of its own, which makes mass starts markedly slower.
    Strict,
}

/// A node's allocatable resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU, in millicores.
    pub cpu_millis: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Ephemeral storage, in bytes.
    pub ephemeral_storage_bytes: u64,
}
