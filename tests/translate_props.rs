//! Property tests of the pod→unit translation: whatever strings a manifest
//! carries, the process gets exactly the argv and environment Kubernetes
//! defines, and nothing can add a unit property or change a unit name.

use proptest::prelude::*;
use unitlet::core::expand::expand;
use unitlet::core::manifest::{parse_manifest, MAX_ARG_STRLEN};
use unitlet::core::names::{container_unit, MAX_UNIT_NAME};
use unitlet::core::translate::{translate, HostUser};
use unitlet::core::unit::Property;
use unitlet::core::NodeFacts;

fn node() -> NodeFacts {
    NodeFacts {
        node_name: "node-a".into(),
        host_ip: "10.0.0.7".into(),
        allocatable: Default::default(),
        pods_dir: "/var/lib/unitlet/pods".into(),
        hardening: Default::default(),
    }
}

fn root_only(uid: u32) -> Option<HostUser> {
    (uid == 0).then(|| HostUser {
        gid: 0,
        home: "/root".into(),
    })
}

/// Any string a manifest could carry in an argument or env value (no NUL,
/// which validation rejects), biased towards characters that mean something
/// to systemd, shells or unit files.
fn nasty() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("\nExecStartPre=/bin/touch /pwned\n".to_string()),
        Just("%n".to_string()),
        Just("%%".to_string()),
        Just("$HOME".to_string()),
        Just("${HOME}".to_string()),
        Just("$(A)".to_string()),
        Just("$$(A)".to_string()),
        Just("$".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just(";".to_string()),
        Just("[Service]".to_string()),
        Just("\u{1F600}".to_string()),
        "[ -~]{0,6}",
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn manifest(args: &[String], value: &str) -> String {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{
            "name": "c",
            "image": "host",
            "command": ["/bin/echo"],
            "args": args,
            "env": [{"name": "A", "value": "alpha"}, {"name": "V", "value": value}],
        }]}
    });
    pod.to_string()
}

fn lookup(name: &str, value: &str) -> Option<String> {
    match name {
        "A" => Some("alpha".into()),
        "V" => Some(expand(value, |n| (n == "A").then(|| "alpha".to_string()))),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn argv_and_env_are_exactly_the_kubernetes_ones(args in prop::collection::vec(nasty(), 0..5), value in nasty()) {
        let text = manifest(&args, &value);
        let pod = parse_manifest(text.as_bytes(), "/m/p.json", "node-a", true).expect("valid manifest");
        let plan = translate(&pod.pod, &node(), &root_only);
        let spec = plan.containers[0].spec.as_ref().unwrap();

        let exec: Vec<_> = spec.properties.iter().filter_map(|p| match p { Property::ExecStart { path, argv } => Some((path, argv)), _ => None }).collect();
        prop_assert_eq!(exec.len(), 1);
        let (path, argv) = exec[0];
        prop_assert_eq!(path.as_str(), "/bin/echo");
        let want: Vec<String> = std::iter::once("/bin/echo".to_string()).chain(args.iter().map(|a| expand(a, |n| lookup(n, &value)))).collect();
        prop_assert_eq!(argv, &want);

        let env = spec.properties.iter().find_map(|p| match p { Property::Environment(e) => Some(e), _ => None }).unwrap();
        let v = env.iter().find(|(k, _)| k == "V").map(|(_, v)| v.clone());
        prop_assert_eq!(v, Some(expand(&value, |n| (n == "A").then(|| "alpha".to_string()))));

        // The unit-file view has one ExecStart line and no line that does not
        // start with a known key, whatever the arguments contain.
        let rendered = spec.render();
        let keys: Vec<&str> = rendered.lines().filter(|l| !l.starts_with('#') && !l.starts_with('[')).map(|l| l.split('=').next().unwrap()).collect();
        prop_assert_eq!(keys.iter().filter(|k| **k == "ExecStart").count(), 1);
        for k in keys {
            prop_assert!(["Description", "StartLimitIntervalSec", "Slice", "Type", "RemainAfterExit", "ExecStart", "Environment", "SyslogIdentifier", "KillSignal", "TimeoutStopSec", "CPUAccounting", "MemoryAccounting", "TasksAccounting", "IOAccounting", "Delegate", "CapabilityBoundingSet", "NoNewPrivileges", "ProtectSystem", "SystemCallFilter", "SystemCallErrorNumber", "ReadOnlyPaths", "ProtectControlGroups", "DevicePolicy"].contains(&k), "unexpected key {k} in\n{rendered}");
        }
    }

    #[test]
    fn unit_names_fit_and_stay_distinct(
        ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
        pod in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
        c in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
        uid1 in "[0-9a-f]{8}", uid2 in "[0-9a-f]{8}",
    ) {
        let a = container_unit(&ns, &pod, &c, &uid1);
        prop_assert!(a.len() <= MAX_UNIT_NAME);
        prop_assert!(a.ends_with(".service"));
        prop_assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
        if uid1 != uid2 {
            prop_assert_ne!(a, container_unit(&ns, &pod, &c, &uid2));
        }
    }

    /// Arbitrary bytes never panic the parser; they are accepted or refused with a message.
    #[test]
    fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for json in [false, true] {
            if let Err(e) = parse_manifest(&bytes, "/m/x", "n", json) {
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    /// Structurally plausible manifests with random values: accepted pods always translate.
    #[test]
    fn accepted_pods_translate(name in "[a-zA-Z0-9.-]{0,20}", cname in "[a-z_-]{0,8}", image in "[a-zA-Z:/@.]{0,12}", grace in -5i64..100, policy in "(Always|OnFailure|Never|Sometimes)", arg in nasty()) {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name:?}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: {cname:?}\n    image: {image:?}\n    command: [/bin/true, {arg:?}]\n");
        if let Ok(pod) = parse_manifest(text.as_bytes(), "/m/x.yaml", "n", false) {
            let plan = translate(&pod.pod, &node(), &root_only);
            prop_assert_eq!(plan.containers.len(), 1);
            prop_assert!(plan.unit_names().all(|u| u.len() <= MAX_UNIT_NAME));
        }
    }
}

#[test]
fn oversized_argument_is_refused_not_truncated() {
    let big = "x".repeat(MAX_ARG_STRLEN);
    let e = parse_manifest(manifest(&[big], "v").as_bytes(), "/m/p.json", "n", true).unwrap_err();
    assert_eq!(e.field, "spec.containers[0].args[0]");
}
