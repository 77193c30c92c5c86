//! Manifest bytes → validation → translation → rendering must never panic,
//! and an accepted pod's units must have names systemd can take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::core::manifest::parse_manifest;
use unitlet::core::names::MAX_UNIT_NAME;
use unitlet::core::translate::translate;
use unitlet::core::{Hardening, NodeFacts};

fuzz_target!(|data: &[u8]| {
    for json in [false, true] {
        let Ok(pod) = parse_manifest(data, "/m/f", "n", json) else {
            continue;
        };
        for hardening in [Hardening::Default, Hardening::Strict] {
            let node = NodeFacts {
                node_name: "n".into(),
                host_ip: "10.0.0.1".into(),
                allocatable: Default::default(),
                pods_dir: "/var/lib/unitlet/pods".into(),
                hardening,
                agent_exe: "/usr/bin/unitlet".into(),
            };
            let plan = translate(&pod.pod, &node, &|_| None);
            let _ = plan.render();
            assert!(plan.unit_names().all(|u| u.len() <= MAX_UNIT_NAME));
        }
    }
});
