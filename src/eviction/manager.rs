//! The eviction loop: every monitoring interval (the kubelet's 10 s) it
//! observes the node, runs [`crate::core::eviction::step`], publishes the
//! pressure conditions and evicts at most one pod, then waits (up to 30 s,
//! as the kubelet's `waitForPodsCleanup`) for that pod's processes to be
//! gone before it looks again, so the next decision sees what it freed.
//!
//! A loop rather than events because the kubelet's eviction manager is
//! one: the signals (free memory, free blocks) change continuously and the
//! kernel notifies none of them cheaply for every threshold.

use super::signals::Signals;
use crate::core::eviction::{self, Candidate, Conditions, Config, Signal, State};
use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How long to wait for an evicted pod's processes to end.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look while waiting.
const CLEANUP_POLL: Duration = Duration::from_secs(1);

/// What the node status shows of the eviction manager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// The pressure conditions, transition period applied.
    pub conditions: Conditions,
    /// The signal whose threshold is being reclaimed now (the kubelet's
    /// `EvictionThresholdMet` node event).
    pub reclaiming: Option<Signal>,
}

/// The manager's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Thresholds and periods.
    pub config: Config,
    /// How often the node is observed (`--eviction-monitoring-interval`).
    pub interval: Duration,
    /// A PSI file (`/proc/pressure/memory`) whose stall trigger makes the
    /// manager look at once (see [`super::psi`]); `None`: only the interval.
    pub pressure_file: Option<std::path::PathBuf>,
}

/// Starts the eviction manager for `runtime`; the receiver follows the
/// published [`Pressure`] (the cluster's node status reads it and writes
/// a change at once).
pub fn spawn(
    runtime: Runtime,
    signals: Arc<dyn Signals>,
    opts: Options,
) -> watch::Receiver<Pressure> {
    let (tx, rx) = watch::channel(Pressure::default());
    tokio::spawn(run(runtime, signals, opts, tx));
    rx
}

async fn run(
    runtime: Runtime,
    signals: Arc<dyn Signals>,
    opts: Options,
    tx: watch::Sender<Pressure>,
) {
    let mut state = State::default();
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stalls = Arc::new(tokio::sync::Notify::new());
    if let Some(file) = &opts.pressure_file {
        if let Err(e) = super::psi::watch(file, stalls.clone()) {
            info!(file = %file.display(), error = %e, "no memory stall trigger; the eviction manager looks every interval only");
        }
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stalls.notified() => tick.reset(),
        }
        let s = signals.clone();
        let Ok(obs) = tokio::task::spawn_blocking(move || s.observe()).await else {
            continue;
        };
        let now = crate::clock::now_us();
        // Without pods first: pod usage is read only when a threshold
        // asks for reclaim (the step is pure, so the second run decides
        // the same state and conditions).
        let mut step = eviction::step(&opts.config, &obs, &state, now, &[]);
        // The pods only when reclaiming: a copy of every pod every 10 s
        // was most of an idle agent's CPU at 2,000 pods.
        let active = if step.reclaiming.is_some() {
            runtime.active_pods()
        } else {
            Vec::new()
        };
        if !active.is_empty() {
            let s = signals.clone();
            let pods = active.clone();
            let candidates = tokio::task::spawn_blocking(move || {
                pods.iter()
                    .map(|p| Candidate::of(&p.pod, s.usage(p)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            step = eviction::step(&opts.config, &obs, &state, now, &candidates);
        }
        state = step.state;
        let pressure = Pressure {
            conditions: step.conditions,
            reclaiming: step.reclaiming,
        };
        tx.send_if_modified(|p| {
            if *p == pressure {
                return false;
            }
            info!(
                memory_pressure = pressure.conditions.memory,
                disk_pressure = pressure.conditions.disk,
                pid_pressure = pressure.conditions.pid,
                reclaiming = pressure.reclaiming.map(Signal::name),
                "node pressure changed"
            );
            *p = pressure;
            true
        });
        for &i in &step.met {
            let t = &opts.config.thresholds[i];
            if let Some(o) = obs.get(&t.signal) {
                info!(
                    signal = t.signal.name(),
                    available = o.available,
                    threshold = t.value.amount(o.capacity),
                    hard = t.is_hard(),
                    "eviction threshold met"
                );
            }
        }
        if let Some(signal) = step.reclaiming {
            if step.evict.is_none() {
                warn!(
                    signal = signal.name(),
                    "eviction thresholds met, but no pod may be evicted"
                );
            }
        }
        let Some(e) = step.evict else { continue };
        match runtime.evict(&e.uid, &e.message, e.grace_period_s, e.signal.name()) {
            Ok(true) => {
                let Some(pod) = active.into_iter().find(|p| p.uid == e.uid) else {
                    continue;
                };
                let deadline = tokio::time::Instant::now() + CLEANUP_TIMEOUT;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(CLEANUP_POLL).await;
                    let (s, p) = (signals.clone(), pod.clone());
                    let left = tokio::task::spawn_blocking(move || s.usage(&p))
                        .await
                        .ok()
                        .flatten()
                        .and_then(|u| u.pids)
                        .unwrap_or(0);
                    if left == 0 {
                        break;
                    }
                }
            }
            Ok(false) => {}
            Err(err) => warn!(error = %err, "eviction failed"),
        }
    }
}
