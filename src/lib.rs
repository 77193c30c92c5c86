//! unitlet: run Kubernetes pods as systemd units.
//!
//! Data flows one way: a pod source (`source`) produces desired pods; the
//! reconciler (`runtime`) translates them (`core::translate`) and drives
//! systemd (`systemd`) towards them, recording what systemd cannot remember
//! (`state`); status is computed from systemd's own unit state
//! (`core::observe`); logs come from the journal (`journal`). The CLI
//! (`cli`) wires these together. `sandbox` boots a throwaway systemd node
//! for tests, benchmarks and trying unitlet on hosts without systemd.
#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod eviction;
/// The pure core (its own crate, `unitlet-core`), under the path the
/// agent has always used for it.
pub use unitlet_core as core;
pub mod host;
pub mod images;
pub mod journal;
pub mod kubelet;
pub mod local;
pub mod metrics;
pub mod objects;
pub mod podview;
pub mod runtime;
pub mod sandbox;
pub mod source;
pub mod state;
pub mod systemd;
pub mod ttyhost;
pub mod volumes;
