//! The kubelet API's query strings (`/containerLogs`, `/exec`, `/attach`,
//! `/portForward`) from a hostile client: parsing never panics, and what
//! it accepts keeps the rules the handlers rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::kubelet::{exec, logs, server};

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for (k, v) in logs::query_pairs(query) {
        // Decoding only ever shortens (an escape is three bytes for one).
        assert!(k.len() + v.len() <= query.len() * 3);
    }
    for now in [0, 1_700_000_000_000_000, u64::MAX] {
        if let Ok(p) = logs::parse(query, now) {
            assert!(p.limit_bytes != Some(0));
        }
    }
    if let Ok(p) = exec::parse(query) {
        assert!(p.stdin || p.stdout || p.stderr);
        assert!(!(p.tty && p.stderr));
    }
    if let Ok(ports) = server::port_forward_ports(query) {
        assert!((1..=127).contains(&ports.len()));
        assert!(ports.iter().all(|&p| p > 0));
    }
});
