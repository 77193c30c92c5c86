//! `/metrics`: what the agent does, under the kubelet's names, help texts
//! (with component-base's stability prefix), label names and buckets where
//! unitlet does what the kubelet does, and unitlet's own series beside
//! them.
//!
//! Events (a container started, a pod ran, a pass took so long) are
//! counted as they happen, process-wide: one set of series per agent, as
//! the kubelet keeps them in its legacy registry. States (pods running,
//! containers by state, pods by phase) are counted from the pods at scrape
//! time.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::http::Format;
use crate::core::observe::{instance, Instance};
use crate::podview::PodView;

/// Upper bounds (seconds) of the reconcile-duration histogram.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The kubelet's `podStartupDurationBuckets`.
pub const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// Prometheus' `DefBuckets`, which the kubelet's pod worker histogram uses.
pub const DEF_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Labels of a family: name and value pairs in the kubelet's order.
type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Process-wide event series.
struct Events {
    reconcile: Histogram,
    api_errors: Counter,
    dbus_errors: Counter,
    pod_start: Histogram,
    pod_worker: Histograms,
    evictions: Family<Labels, Counter>,
    started: Family<Labels, Counter>,
    start_errors: Family<Labels, Counter>,
    restarted: Family<Labels, Counter>,
    /// Pods whose start was observed (kept to the pods that exist, at
    /// each scrape), so a pod is observed once.
    ran: Mutex<HashSet<String>>,
    /// UIDs admitted by this agent, to tell a pod deleted and created
    /// again with the same UID (a static pod whose manifest came back).
    admitted: Mutex<HashSet<String>>,
}

/// Most UIDs remembered for `kubelet_restarted_pods_total` and for pod
/// starts; past it the memory is cleared (a restart across that many
/// admissions goes uncounted, a pod's start may be observed twice) so that
/// churn cannot grow the agent without bound.
const MAX_REMEMBERED: usize = 100_000;

static EVENTS: LazyLock<Events> = LazyLock::new(|| Events {
    reconcile: Histogram::new(BUCKETS),
    api_errors: Counter::default(),
    dbus_errors: Counter::default(),
    pod_start: Histogram::new(POD_START_BUCKETS),
    pod_worker: Family::new_with_constructor(|| Histogram::new(DEF_BUCKETS)),
    evictions: Family::default(),
    started: Family::default(),
    start_errors: Family::default(),
    restarted: Family::default(),
    ran: Mutex::default(),
    admitted: Mutex::default(),
});

/// Records one reconcile pass of one pod.
pub fn reconciled(took: Duration) {
    EVENTS.reconcile.observe(took.as_secs_f64());
}

/// Counts a failed API server request (an error status or no answer).
pub fn api_error() {
    EVENTS.api_errors.inc();
}

/// Counts a failed D-Bus call to systemd, passing the error on.
pub fn dbus_error<E>(e: E) -> E {
    EVENTS.dbus_errors.inc();
    e
}

/// Counts a pod evicted for `signal` (`memory.available`,
/// `nodefs.available`, …): `kubelet_evictions{eviction_signal}`.
pub fn evicted(signal: &str) {
    EVENTS
        .evictions
        .get_or_create(&vec![("eviction_signal", signal.to_string())])
        .inc();
}

/// The kubelet's `container_type` label of a container named by its field
/// path (`spec.containers{x}`, `spec.initContainers{x}`,
/// `spec.ephemeralContainers{x}`).
pub fn container_type(field_path: &str) -> &'static str {
    if field_path.starts_with("spec.initContainers") {
        "init_container"
    } else if field_path.starts_with("spec.ephemeralContainers") {
        "ephemeral_container"
    } else {
        "container"
    }
}

/// Counts a container the agent is creating (its unit), as the kubelet
/// counts before `CreateContainer`: `kubelet_started_containers_total`.
pub fn container_started(field_path: &str) {
    EVENTS
        .started
        .get_or_create(&vec![(
            "container_type",
            container_type(field_path).to_string(),
        )])
        .inc();
}

/// Counts a container whose unit systemd refused, `code` being the
/// D-Bus error name (the kubelet puts the CRI's gRPC code there):
/// `kubelet_started_containers_errors_total`.
pub fn container_start_failed(field_path: &str, e: &crate::systemd::SystemdError) {
    let code = error_code(e);
    EVENTS
        .start_errors
        .get_or_create(&vec![
            ("container_type", container_type(field_path).to_string()),
            ("code", code),
        ])
        .inc();
}

/// The `code` label of a refused unit: the D-Bus error name systemd
/// answered with (`org.freedesktop.systemd1.…`), else `Unknown` (gRPC's
/// name for an error without a code, which the kubelet writes then).
pub fn error_code(e: &crate::systemd::SystemdError) -> String {
    use crate::systemd::SystemdError;
    match e {
        SystemdError::Unit {
            source: zbus::Error::MethodError(name, _, _),
            ..
        }
        | SystemdError::Manager {
            source: zbus::Error::MethodError(name, _, _),
            ..
        } => name.to_string(),
        _ => "Unknown".into(),
    }
}

/// Records how long one pass over a pod took, by the kubelet's operation
/// types (`create`, `update`, `sync`, `kill`):
/// `kubelet_pod_worker_duration_seconds`.
pub fn pod_worker(operation: &'static str, took: Duration) {
    EVENTS
        .pod_worker
        .get_or_create(&vec![("operation_type", operation.to_string())])
        .observe(took.as_secs_f64());
}

/// A pod is Running: the first time for a pod this agent admitted (at
/// `admitted_us`, not before `agent_started_us`), records the time from
/// admission to now in `kubelet_pod_start_duration_seconds`. A pod adopted
/// from an earlier agent was already running and is not observed, as the
/// kubelet observes only a Pending pod turning Running.
pub fn pod_running(uid: &str, admitted_us: u64, agent_started_us: u64, now_us: u64) {
    if admitted_us < agent_started_us {
        return;
    }
    let mut ran = EVENTS.ran.lock().unwrap();
    if ran.contains(uid) {
        return;
    }
    // Kept to the live pods at each scrape; bounded for a node never
    // scraped.
    if ran.len() >= MAX_REMEMBERED {
        ran.clear();
    }
    ran.insert(uid.to_string());
    let secs = now_us.saturating_sub(admitted_us) as f64 / 1e6;
    EVENTS.pod_start.observe(secs);
}

/// A pod was admitted; if this agent admitted the same UID before (it was
/// deleted and created again), counts it in
/// `kubelet_restarted_pods_total{static}`.
pub fn pod_admitted(uid: &str, is_static: bool) {
    let mut seen = EVENTS.admitted.lock().unwrap();
    if seen.len() >= MAX_REMEMBERED {
        seen.clear();
    }
    if !seen.insert(uid.to_string()) {
        EVENTS
            .restarted
            .get_or_create(&vec![("static", is_static.to_string())])
            .inc();
    }
}

/// Whether a pod came from a file rather than the API server (the
/// kubelet's `IsStaticPod`): its `kubernetes.io/config.source` annotation.
pub fn is_static(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s != "api")
}

/// A counter family exposed under a name without `_total`: the kubelet's
/// `kubelet_evictions` predates the suffix rule, and Prometheus' client
/// writes it so in the text format; `prometheus-client` adds `_total` to
/// every counter, so in text 0.0.4 it is written untyped under its exact
/// name (queries join on names, not types). OpenMetrics requires the
/// suffix, and there Go's client writes `kubelet_evictions_total` too.
#[derive(Debug)]
struct Untyped(Family<Labels, Counter>);

impl EncodeMetric for Untyped {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `/metrics` body for the pods `views` on node `node_name`.
pub fn render(views: &[PodView], node_name: &str, format: Format) -> String {
    let e = &*EVENTS;
    {
        let live: HashSet<&str> = views.iter().map(|v| v.rec.uid()).collect();
        e.ran.lock().unwrap().retain(|u| live.contains(u.as_str()));
    }
    let mut r = Registry::default();
    let alpha = |h: &str| format!("[ALPHA] {h}");
    super::http::register(
        &mut r,
        "unitlet_reconcile_duration_seconds",
        "Time one reconcile pass of one pod took.",
        e.reconcile.clone(),
    );
    let phases: Family<Labels, Gauge> = Family::default();
    let mut by_phase = std::collections::BTreeMap::<String, i64>::new();
    for v in views {
        let phase = v.status.phase.clone().unwrap_or_else(|| "Pending".into());
        *by_phase.entry(phase).or_default() += 1;
    }
    for (phase, n) in by_phase {
        phases.get_or_create(&vec![("phase", phase)]).set(n);
    }
    super::http::register(
        &mut r,
        "unitlet_pods",
        "Pods this node runs, by phase.",
        phases,
    );
    super::http::register(
        &mut r,
        "unitlet_api_errors",
        "Failed requests to the API server.",
        e.api_errors.clone(),
    );
    super::http::register(
        &mut r,
        "unitlet_dbus_errors",
        "Failed D-Bus calls to systemd.",
        e.dbus_errors.clone(),
    );

    let (pods, states) = running(views);
    let running_pods: Gauge = Gauge::default();
    running_pods.set(pods);
    super::http::register(
        &mut r,
        "kubelet_running_pods",
        alpha("Number of pods that have a running pod sandbox"),
        running_pods,
    );
    let containers: Family<Labels, Gauge> = Family::default();
    for (state, n) in states {
        containers
            .get_or_create(&vec![("container_state", state.to_string())])
            .set(n);
    }
    super::http::register(
        &mut r,
        "kubelet_running_containers",
        alpha("Number of containers currently running"),
        containers,
    );
    super::http::register(&mut r, "kubelet_pod_start_duration_seconds",
        alpha("Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run"),
        e.pod_start.clone(),
    );
    super::http::register(&mut r, "kubelet_pod_worker_duration_seconds",
        alpha("Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync"),
        e.pod_worker.clone(),
    );
    let evictions_help = alpha("Cumulative number of pod evictions by eviction signal");
    match format {
        Format::Text => super::http::register(
            &mut r,
            "kubelet_evictions",
            evictions_help,
            Untyped(e.evictions.clone()),
        ),
        Format::OpenMetrics => super::http::register(
            &mut r,
            "kubelet_evictions",
            evictions_help,
            e.evictions.clone(),
        ),
    }
    let node: Family<Labels, Gauge> = Family::default();
    node.get_or_create(&vec![("node", node_name.to_string())])
        .set(1);
    super::http::register(
        &mut r,
        "kubelet_node_name",
        alpha("The node's name. The count is always 1."),
        node,
    );
    super::http::register(
        &mut r,
        "kubelet_started_containers",
        alpha("Cumulative number of containers started"),
        e.started.clone(),
    );
    super::http::register(
        &mut r,
        "kubelet_started_containers_errors",
        alpha("Cumulative number of errors when starting containers"),
        e.start_errors.clone(),
    );
    super::http::register(&mut r, "kubelet_restarted_pods",
        alpha("Number of pods that have been restarted because they were deleted and recreated with the same UID while the kubelet was watching them (common for static pods, extremely uncommon for API pods)"),
        e.restarted.clone(),
    );
    super::http::encode(&r, format)
}

/// Pods with a running container, and containers by the kubelet's
/// `container_state` (`created`: being started; `running`; `exited`: its
/// unit ended and is still loaded). Containers with no unit are not in the
/// runtime and not counted.
fn running(views: &[PodView]) -> (i64, [(&'static str, i64); 3]) {
    let (mut pods, mut created, mut run, mut exited) = (0, 0, 0, 0);
    for v in views {
        let mut any = false;
        for c in v.plan.all() {
            match instance(v.units.get(&c.unit)) {
                Instance::Running { .. } => {
                    run += 1;
                    any = true;
                }
                Instance::Creating => created += 1,
                Instance::Terminated(..) => exited += 1,
                Instance::Absent => {}
            }
        }
        pods += i64::from(any);
    }
    (
        pods,
        [("created", created), ("exited", exited), ("running", run)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let before = render(&[], "n", Format::Text);
        reconciled(Duration::from_millis(20));
        let after = render(&[], "n", Format::Text);
        let b = |t: &str, le: &str| {
            value(
                t,
                &format!("unitlet_reconcile_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b(&after, "0.01"), b(&before, "0.01"));
        assert_eq!(b(&after, "0.025"), b(&before, "0.025") + 1.0);
        assert_eq!(b(&after, "+Inf"), b(&before, "+Inf") + 1.0);
    }

    #[test]
    fn kubelet_names_and_types() {
        evicted("memory.available");
        container_started("spec.initContainers{setup}");
        container_start_failed(
            "spec.containers{app}",
            &crate::systemd::SystemdError::Refused {
                op: "start",
                unit: "u.service".into(),
                message: "no".into(),
                exists: false,
            },
        );
        pod_worker("create", Duration::from_millis(30));
        let t = render(&[], "node-a", Format::Text);
        assert!(t.contains("# TYPE kubelet_evictions untyped\n"), "{t}");
        assert!(
            value(
                &t,
                "kubelet_evictions{eviction_signal=\"memory.available\"}"
            ) >= 1.0
        );
        assert!(t.contains("# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n"), "{t}");
        assert!(t.contains("kubelet_node_name{node=\"node-a\"} 1\n"));
        assert!(t.contains("# TYPE kubelet_started_containers_total counter\n"));
        assert!(
            value(
                &t,
                "kubelet_started_containers_total{container_type=\"init_container\"}"
            ) >= 1.0
        );
        assert!(value(&t, "kubelet_started_containers_errors_total{container_type=\"container\",code=\"Unknown\"}") >= 1.0);
        assert!(
            value(
                &t,
                "kubelet_pod_worker_duration_seconds_bucket{operation_type=\"create\",le=\"0.05\"}"
            ) >= 1.0
        );
        assert!(t.contains("kubelet_pod_start_duration_seconds_bucket{le=\"3600\"}"));
        assert!(t.contains("kubelet_running_containers{container_state=\"running\"} 0\n"));
        let om = render(&[], "node-a", Format::OpenMetrics);
        assert!(om.contains("# TYPE kubelet_evictions counter\n"), "{om}");
        assert!(om.contains("kubelet_evictions_total{eviction_signal=\"memory.available\"}"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn restarted_pods_count_a_uid_admitted_again() {
        let count = |t: &str| {
            t.lines()
                .find(|l| l.starts_with("kubelet_restarted_pods_total{static=\"true\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let before = count(&render(&[], "n", Format::Text));
        pod_admitted("uid-restarted-test", true);
        assert_eq!(count(&render(&[], "n", Format::Text)), before);
        pod_admitted("uid-restarted-test", true);
        assert_eq!(count(&render(&[], "n", Format::Text)), before + 1.0);
    }

    #[test]
    fn a_pod_start_is_observed_once_and_only_if_admitted_by_this_agent() {
        let count = |t: &str| value(t, "kubelet_pod_start_duration_seconds_count");
        let before = count(&render(&[], "n", Format::Text));
        pod_running("adopted", 1_000, 2_000, 5_000_000);
        pod_running("mine", 3_000_000, 2_000, 5_000_000);
        pod_running("mine", 3_000_000, 2_000, 9_000_000);
        // Rendering with no pods forgets "mine" afterwards, not before.
        assert_eq!(count(&render(&[], "n", Format::Text)), before + 1.0);
    }
}
