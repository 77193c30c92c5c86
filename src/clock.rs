//! The wall clock, as unitlet records time: microseconds since the Unix
//! epoch, the unit systemd uses for its timestamps (`ExecMainExitTimestamp`
//! and friends), so that times read from units and times taken here compare
//! directly.
//!
//! A module of its own because every layer needs "now" (the reconciler, the
//! pod view, the kubelet API's log queries) and none should have to depend
//! on another for it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch, now (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
