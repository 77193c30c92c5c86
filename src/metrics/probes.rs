//! `/metrics/probes`: the kubelet's `prober_probe_total`, one counter per
//! container, probe type and result. The kubelet drops a container's
//! series when its probe worker stops; here they are dropped at the
//! next scrape once the pod is gone.

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::http::Format;
use crate::podview::PodView;

/// `(pod_uid, namespace, pod, container, probe_type, result)`.
type Key = (String, String, String, String, &'static str, &'static str);

static COUNTS: LazyLock<Mutex<BTreeMap<Key, u64>>> = LazyLock::new(Mutex::default);

/// Counts one probe run of container `container` of pod `namespace/pod`
/// (`uid`): `probe_type` as the kubelet writes it (`Liveness`,
/// `Readiness`, `Startup`), `ok` its result (`successful` or `failed`).
pub fn probe_result(
    probe_type: &'static str,
    ok: bool,
    container: &str,
    namespace: &str,
    pod: &str,
    uid: &str,
) {
    let result = if ok { "successful" } else { "failed" };
    let key = (
        uid.to_string(),
        namespace.to_string(),
        pod.to_string(),
        container.to_string(),
        probe_type,
        result,
    );
    let mut counts = COUNTS.lock().unwrap();
    // Pruned to the live pods at each scrape; on a node never scraped,
    // bounded by starting over (Prometheus reads a counter reset as one).
    if counts.len() >= MAX_SERIES && !counts.contains_key(&key) {
        counts.clear();
    }
    *counts.entry(key).or_default() += 1;
}

/// Most series kept between scrapes.
const MAX_SERIES: usize = 100_000;

/// The `/metrics/probes` body; forgets pods not in `views`.
pub fn render(views: &[PodView], format: Format) -> String {
    let live: HashSet<&str> = views.iter().map(|v| v.rec.uid()).collect();
    render_live(&live, format)
}

/// The body for the pods whose UIDs are `live`.
fn render_live(live: &HashSet<&str>, format: Format) -> String {
    let family: Family<[(&'static str, String); 6], Counter> = Family::default();
    {
        let mut counts = COUNTS.lock().unwrap();
        counts.retain(|k, _| live.contains(k.0.as_str()));
        for ((uid, ns, pod, container, kind, result), n) in counts.iter() {
            family
                .get_or_create(&[
                    ("probe_type", kind.to_string()),
                    ("result", result.to_string()),
                    ("container", container.clone()),
                    ("pod", pod.clone()),
                    ("namespace", ns.clone()),
                    ("pod_uid", uid.clone()),
                ])
                .inc_by(*n);
        }
    }
    let mut r = Registry::default();
    super::http::register(&mut r, "prober_probe",
        "[BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.",
        family,
    );
    super::http::encode(&r, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_result_and_forgets_gone_pods() {
        probe_result("Readiness", true, "c", "ns", "p", "uid-probes-test");
        probe_result("Readiness", true, "c", "ns", "p", "uid-probes-test");
        probe_result("Liveness", false, "c", "ns", "p", "uid-probes-test");
        let live = HashSet::from(["uid-probes-test"]);
        let text = render_live(&live, Format::Text);
        assert!(text.contains("# HELP prober_probe_total [BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.\n# TYPE prober_probe_total counter\n"), "{text}");
        assert!(text.contains("prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"c\",pod=\"p\",namespace=\"ns\",pod_uid=\"uid-probes-test\"} 2\n"), "{text}");
        assert!(text.contains("prober_probe_total{probe_type=\"Liveness\",result=\"failed\",container=\"c\",pod=\"p\",namespace=\"ns\",pod_uid=\"uid-probes-test\"} 1\n"), "{text}");
        let gone = render_live(&HashSet::new(), Format::Text);
        assert!(!gone.contains("uid-probes-test"), "{gone}");
        assert!(!render_live(&live, Format::Text).contains("uid-probes-test"));
    }
}
