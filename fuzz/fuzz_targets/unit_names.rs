//! Unit names and systemd's object paths: decoding a path (what systemd's
//! signals carry) never panics and accepts only the canonical spelling,
//! and every name the agent makes from hostile metadata fits systemd.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use unitlet::core::names::{
    container_unit, pod_slice, unit_from_object_path, unit_object_path, MAX_UNIT_NAME,
};

#[derive(Arbitrary, Debug)]
struct Input {
    path: String,
    namespace: String,
    pod: String,
    container: String,
    uid: String,
}

fuzz_target!(|i: Input| {
    if let Some(unit) = unit_from_object_path(&i.path) {
        assert_eq!(unit_object_path(&unit), i.path);
    }
    let direct = format!("/org/freedesktop/systemd1/unit/{}", i.path);
    if let Some(unit) = unit_from_object_path(&direct) {
        assert_eq!(unit_object_path(&unit), direct);
    }
    // Any name goes there and back.
    assert_eq!(
        unit_from_object_path(&unit_object_path(&i.path)).as_deref(),
        Some(i.path.as_str())
    );
    // Kubernetes names are ASCII (validation refuses the rest first).
    if [&i.namespace, &i.pod, &i.container]
        .iter()
        .all(|s| s.is_ascii())
    {
        let unit = container_unit(&i.namespace, &i.pod, &i.container, &i.uid);
        if i.namespace.len() + i.container.len() <= 200 {
            assert!(unit.len() <= MAX_UNIT_NAME, "{unit}");
        }
        let path = unit_object_path(&unit);
        assert_eq!(unit_from_object_path(&path), Some(unit));
    }
    let slice = pod_slice(&i.uid);
    assert!(slice.len() <= MAX_UNIT_NAME);
    assert_eq!(
        unit_from_object_path(&unit_object_path(&slice)),
        Some(slice)
    );
});
