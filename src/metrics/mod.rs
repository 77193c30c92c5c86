//! Prometheus metrics under the kubelet's paths and names, so that
//! dashboards and alerts written against a kubelet and its cAdvisor work
//! against unitlet unchanged.
//!
//! - `/metrics` ([`agent`]): the kubelet's own series where unitlet does
//!   the same thing (`kubelet_running_pods`, `kubelet_pod_start_duration_seconds`,
//!   …) beside unitlet's (`unitlet_reconcile_duration_seconds`, …).
//! - `/metrics/cadvisor` ([`cadvisor`]): per-container and per-pod usage
//!   with cAdvisor's names and labels, read from the control groups at
//!   scrape time (no D-Bus call: the pods come from the runtime's memory).
//! - `/metrics/probes` ([`probes`]): `prober_probe_total`.
//!
//! All in the Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
//! scraper asks for it ([`http::Format`]), written by `prometheus-client`,
//! the Prometheus project's Rust client. [`http`] answers the three paths
//! for the kubelet API (cluster mode, behind its authentication) and for
//! the standalone agent's own listener (`--metrics-bind-address`).
//!
//! The runtime reports what happens through the one-line functions here
//! ([`container_started`], [`pod_running`], …); everything that is a state
//! rather than an event (running pods, containers by state) is counted
//! from the pods at scrape time, so it cannot drift.

pub mod agent;
pub mod cadvisor;
pub mod http;
pub mod probes;

pub use agent::{
    api_error, container_start_failed, container_started, dbus_error, evicted, pod_admitted,
    pod_running, pod_worker, reconciled,
};
pub use probes::probe_result;
