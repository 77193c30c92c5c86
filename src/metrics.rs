//! The agent's own operational metrics, served on the kubelet API's
//! `/metrics` in the Prometheus text format: how long reconcile passes
//! take, API server and D-Bus errors, and (computed at scrape time) pods
//! by phase. Plain atomics: a handful of process-wide series need no
//! registry.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the reconcile-duration histogram.
pub const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

static RECONCILE_BUCKETS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];
static RECONCILE_COUNT: AtomicU64 = AtomicU64::new(0);
static RECONCILE_SUM_US: AtomicU64 = AtomicU64::new(0);
static API_ERRORS: AtomicU64 = AtomicU64::new(0);
static DBUS_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Records one reconcile pass of one pod.
pub fn reconciled(took: std::time::Duration) {
    let s = took.as_secs_f64();
    for (i, b) in BUCKETS.iter().enumerate() {
        if s <= *b {
            RECONCILE_BUCKETS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    RECONCILE_COUNT.fetch_add(1, Ordering::Relaxed);
    RECONCILE_SUM_US.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
}

/// Counts a failed API server request (an error status or no answer).
pub fn api_error() {
    API_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// Counts a failed D-Bus call to systemd, passing the error on.
pub fn dbus_error<E>(e: E) -> E {
    DBUS_ERRORS.fetch_add(1, Ordering::Relaxed);
    e
}

/// The text exposition, with `pods` as `(phase, count)` pairs.
pub fn render(pods: &[(String, usize)]) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP unitlet_reconcile_duration_seconds Time one reconcile pass of one pod took.\n",
    );
    out.push_str("# TYPE unitlet_reconcile_duration_seconds histogram\n");
    for (i, b) in BUCKETS.iter().enumerate() {
        out.push_str(&format!(
            "unitlet_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {}\n",
            RECONCILE_BUCKETS[i].load(Ordering::Relaxed)
        ));
    }
    let count = RECONCILE_COUNT.load(Ordering::Relaxed);
    out.push_str(&format!(
        "unitlet_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
    ));
    out.push_str(&format!(
        "unitlet_reconcile_duration_seconds_sum {}\n",
        RECONCILE_SUM_US.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "unitlet_reconcile_duration_seconds_count {count}\n"
    ));
    out.push_str("# HELP unitlet_pods Pods this node runs, by phase.\n# TYPE unitlet_pods gauge\n");
    for (phase, n) in pods {
        out.push_str(&format!("unitlet_pods{{phase=\"{phase}\"}} {n}\n"));
    }
    out.push_str("# HELP unitlet_api_errors_total Failed requests to the API server.\n# TYPE unitlet_api_errors_total counter\n");
    out.push_str(&format!(
        "unitlet_api_errors_total {}\n",
        API_ERRORS.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP unitlet_dbus_errors_total Failed D-Bus calls to systemd.\n# TYPE unitlet_dbus_errors_total counter\n");
    out.push_str(&format!(
        "unitlet_dbus_errors_total {}\n",
        DBUS_ERRORS.load(Ordering::Relaxed)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let before = render(&[]);
        let count = |text: &str, le: &str| -> u64 {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "unitlet_reconcile_duration_seconds_bucket{{le=\"{le}\"}}"
                    ))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap()
        };
        reconciled(std::time::Duration::from_millis(20));
        let after = render(&[("Running".into(), 3)]);
        assert_eq!(count(&after, "0.01"), count(&before, "0.01"));
        assert_eq!(count(&after, "0.025"), count(&before, "0.025") + 1);
        assert_eq!(count(&after, "+Inf"), count(&before, "+Inf") + 1);
        assert!(after.contains("unitlet_pods{phase=\"Running\"} 3\n"));
    }
}
