//! The kubelet's container restart back-off, exactly: the first restart is
//! immediate; each later one waits base, 2×base, … up to max after the
//! container finished; the delay resets once a container finishes more than
//! 2×max after the previous restart (10 minutes with the defaults).

use serde::{Deserialize, Serialize};

/// Back-off parameters (kubelet: 10 s and 300 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay, in microseconds.
    pub base_us: u64,
    /// Cap, in microseconds.
    pub max_us: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_us: 10_000_000,
            max_us: 300_000_000,
        }
    }
}

/// Per-container back-off entry; `delay_us == 0` means no entry yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffState {
    /// Current delay.
    pub delay_us: u64,
    /// When the last restart happened.
    pub last_update_us: u64,
}

impl BackoffState {
    fn expired(&self, cfg: &BackoffConfig, finished_us: u64) -> bool {
        self.delay_us == 0 || finished_us.saturating_sub(self.last_update_us) > 2 * cfg.max_us
    }

    /// How long after `finished_us` the next restart may happen.
    pub fn delay_after(&self, cfg: &BackoffConfig, finished_us: u64) -> u64 {
        if self.expired(cfg, finished_us) {
            0
        } else {
            self.delay_us
        }
    }

    /// Records a restart done at `now_us` for a container that finished at `finished_us`.
    pub fn record_restart(&mut self, cfg: &BackoffConfig, finished_us: u64, now_us: u64) {
        self.delay_us = if self.expired(cfg, finished_us) {
            cfg.base_us
        } else {
            (self.delay_us * 2).min(cfg.max_us)
        };
        self.last_update_us = now_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn kubelet_sequence() {
        let cfg = BackoffConfig::default();
        let mut b = BackoffState::default();
        let mut now = 1000 * S;
        let mut delays = vec![];
        for _ in 0..8 {
            // The container crashes one second after it started.
            let finished = now + S;
            let d = b.delay_after(&cfg, finished);
            delays.push(d / S);
            now = finished + d;
            b.record_restart(&cfg, finished, now);
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn resets_after_long_run() {
        let cfg = BackoffConfig::default();
        let mut b = BackoffState::default();
        b.record_restart(&cfg, 0, 0);
        b.record_restart(&cfg, S, S);
        assert_eq!(b.delay_after(&cfg, 2 * S), 20 * S);
        assert_eq!(b.delay_after(&cfg, S + 601 * S), 0);
    }
}
