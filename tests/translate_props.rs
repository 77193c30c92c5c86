//! Property tests of the pod→unit translation: whatever strings a manifest
//! carries, the process gets exactly the argv and environment Kubernetes
//! defines, and nothing can add a unit property or change a unit name.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
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
        agent_exe: "/usr/bin/unitlet".into(),
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
            prop_assert!(["Description", "StartLimitIntervalSec", "Slice", "Type", "RemainAfterExit", "ExecStart", "Environment", "SyslogIdentifier", "KillSignal", "KillMode", "TimeoutStopSec", "CPUAccounting", "MemoryAccounting", "TasksAccounting", "IOAccounting", "Delegate", "CapabilityBoundingSet", "NoNewPrivileges", "ProtectSystem", "SystemCallFilter", "SystemCallErrorNumber", "ReadOnlyPaths", "ProtectControlGroups", "DevicePolicy"].contains(&k), "unexpected key {k} in\n{rendered}");
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

}

#[test]
fn oversized_argument_is_refused_not_truncated() {
    let big = "x".repeat(MAX_ARG_STRLEN);
    let e = parse_manifest(manifest(&[big], "v").as_bytes(), "/m/p.json", "n", true).unwrap_err();
    assert_eq!(e.field, "spec.containers[0].args[0]");
}

// ---------------------------------------------------------------------------
// Whole pods: a generator whose pods are mostly valid, so that translation
// is what gets exercised, with a few deliberately broken ones whose refusal
// must name the broken field.
// ---------------------------------------------------------------------------

/// How a probe checks the container.
#[derive(Debug, Clone)]
enum Handler {
    Exec(Vec<String>),
    Http { port: i32, path: String },
    Tcp(i32),
    Grpc(i32),
}

#[derive(Debug, Clone)]
struct ProbeGen {
    handler: Handler,
    initial_delay: i32,
    period: i32,
    timeout: i32,
    failure: i32,
    /// Only readiness probes may ask for more than one success.
    success: i32,
}

/// Where an env var's value comes from.
#[derive(Debug, Clone)]
enum EnvSrc {
    Value(String),
    Field(&'static str),
}

#[derive(Debug, Clone)]
struct ContainerGen {
    name: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, EnvSrc)>,
    working_dir: Option<String>,
    cpu: Option<&'static str>,
    memory: Option<&'static str>,
    /// Startup, liveness, readiness; set on app containers and sidecars only.
    probes: [Option<ProbeGen>; 3],
    /// For init containers: `restartPolicy: Always`, a native sidecar.
    sidecar: bool,
}

/// One thing made wrong on purpose, and what it should do.
#[derive(Debug, Clone, Copy)]
enum Break {
    /// Refused, naming `metadata.name`.
    UpperCaseName,
    /// Refused, naming `spec.restartPolicy`.
    BadRestartPolicy,
    /// Refused, naming `spec.terminationGracePeriodSeconds`.
    NegativeGrace,
    /// Refused, naming the first app container's `command[0]`.
    EmptyProgram,
    /// Refused, naming its first env entry.
    BadEnvName,
    /// Refused, naming its cpu limit.
    BadQuantity,
    /// Refused, naming the copy's name.
    DuplicateContainer,
    /// Accepted; the container waits (image pull) instead of getting a unit.
    ForeignImage,
}

impl Break {
    /// The field validation must name, `None` when the pod is valid.
    fn field(self, apps: usize) -> Option<String> {
        Some(match self {
            Break::UpperCaseName => "metadata.name".into(),
            Break::BadRestartPolicy => "spec.restartPolicy".into(),
            Break::NegativeGrace => "spec.terminationGracePeriodSeconds".into(),
            Break::EmptyProgram => "spec.containers[0].command[0]".into(),
            Break::BadEnvName => "spec.containers[0].env[0].name".into(),
            Break::BadQuantity => "spec.containers[0].resources.limits.cpu".into(),
            Break::DuplicateContainer => format!("spec.containers[{apps}].name"),
            Break::ForeignImage => return None,
        })
    }
}

#[derive(Debug, Clone)]
struct PodGen {
    name: String,
    namespace: Option<String>,
    restart_policy: Option<&'static str>,
    grace: Option<i64>,
    init: Vec<ContainerGen>,
    apps: Vec<ContainerGen>,
    /// Parse the (JSON) text as YAML rather than as JSON.
    yaml: bool,
    broken: Option<Break>,
}

fn dns_label(max_inner: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-z0-9]([-a-z0-9]{{0,{max_inner}}}[a-z0-9])?"))
        .expect("a valid regex")
}

/// A DNS subdomain (what a pod name must be): mostly short, sometimes long
/// enough that the unit name must be shortened.
fn pod_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(dns_label(10), 1..4).prop_map(|l| l.join(".")),
        1 => prop::collection::vec(dns_label(61), 1..5)
            .prop_map(|l| {
                let mut name = l.join(".");
                name.truncate(253);
                name.trim_end_matches(['.', '-']).to_string()
            })
            .prop_filter("a subdomain", |n| !n.is_empty() && !n.contains(".-") && !n.contains("-.") && !n.contains("..")),
    ]
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,12}"
}

fn env_src() -> impl Strategy<Value = EnvSrc> {
    prop_oneof![
        4 => nasty().prop_map(EnvSrc::Value),
        1 => prop::sample::select(vec![
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "spec.nodeName",
            "status.hostIP",
            "status.podIP",
        ])
        .prop_map(EnvSrc::Field),
    ]
}

fn program() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/bin/true",
        "/usr/bin/sleep",
        "/bin/sh",
        "/usr/local/bin/app",
        "/opt/x y/run",
    ])
    .prop_map(String::from)
}

fn port() -> impl Strategy<Value = i32> {
    1..=65535i32
}

fn handler() -> impl Strategy<Value = Handler> {
    prop_oneof![
        (program(), prop::collection::vec("[ -~]{0,8}", 0..3)).prop_map(|(p, mut rest)| {
            rest.insert(0, p);
            Handler::Exec(rest)
        }),
        (port(), "(/[a-z0-9._-]{0,8}){0,3}").prop_map(|(port, path)| Handler::Http { port, path }),
        port().prop_map(Handler::Tcp),
        port().prop_map(Handler::Grpc),
    ]
}

fn probe(readiness: bool) -> impl Strategy<Value = ProbeGen> {
    let success = if readiness { 1..4i32 } else { 1..2i32 };
    (handler(), 0..30i32, 1..60i32, 1..10i32, 1..6i32, success).prop_map(
        |(handler, initial_delay, period, timeout, failure, success)| ProbeGen {
            handler,
            initial_delay,
            period,
            timeout,
            failure,
            success,
        },
    )
}

fn container() -> impl Strategy<Value = ContainerGen> {
    (
        dns_label(10),
        (program(), prop::collection::vec(nasty(), 0..3)),
        prop::collection::vec(nasty(), 0..3),
        prop::collection::vec((env_name(), env_src()), 0..4),
        prop::option::weighted(0.2, "(/[a-z0-9._-]{1,8}){1,3}"),
        prop::option::of(prop::sample::select(vec![
            "100m", "250m", "1", "2", "0.5", "1500m",
        ])),
        prop::option::of(prop::sample::select(vec![
            "64Mi", "128Mi", "1Gi", "500M", "1e9",
        ])),
        (
            prop::option::weighted(0.2, probe(false)),
            prop::option::weighted(0.3, probe(false)),
            prop::option::weighted(0.3, probe(true)),
        ),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(
                name,
                (program, rest),
                args,
                env,
                working_dir,
                cpu,
                memory,
                (startup, liveness, readiness),
                sidecar,
            )| {
                let mut command = vec![program];
                command.extend(rest);
                ContainerGen {
                    name,
                    command,
                    args,
                    env,
                    working_dir,
                    cpu,
                    memory,
                    probes: [startup, liveness, readiness],
                    sidecar,
                }
            },
        )
}

fn broken() -> impl Strategy<Value = Option<Break>> {
    prop::option::weighted(
        0.1,
        prop::sample::select(vec![
            Break::UpperCaseName,
            Break::BadRestartPolicy,
            Break::NegativeGrace,
            Break::EmptyProgram,
            Break::BadEnvName,
            Break::BadQuantity,
            Break::DuplicateContainer,
            Break::ForeignImage,
        ]),
    )
}

fn pod_gen() -> impl Strategy<Value = PodGen> {
    (
        pod_name(),
        prop::option::of(dns_label(20)),
        prop::option::of(prop::sample::select(vec!["Always", "OnFailure", "Never"])),
        prop::option::of(0i64..600),
        prop::collection::vec(container(), 0..3),
        prop::collection::vec(container(), 1..4),
        any::<bool>(),
        broken(),
    )
        .prop_map(
            |(name, namespace, restart_policy, grace, mut init, mut apps, yaml, broken)| {
                // Container names are unique across init and app containers.
                let mut seen = HashSet::new();
                for (i, c) in init.iter_mut().chain(apps.iter_mut()).enumerate() {
                    let mut name = c.name.clone();
                    let mut n = i;
                    while !seen.insert(name.clone()) {
                        name = format!("{}-{n}", c.name);
                        n += 10;
                    }
                    c.name = name;
                }
                for c in &mut apps {
                    c.sidecar = false;
                }
                PodGen {
                    name,
                    namespace,
                    restart_policy,
                    grace,
                    init,
                    apps,
                    yaml,
                    broken,
                }
            },
        )
}

fn probe_json(p: &ProbeGen) -> Value {
    let mut v = json!({
        "initialDelaySeconds": p.initial_delay,
        "periodSeconds": p.period,
        "timeoutSeconds": p.timeout,
        "failureThreshold": p.failure,
        "successThreshold": p.success,
    });
    let (key, handler) = match &p.handler {
        Handler::Exec(argv) => ("exec", json!({ "command": argv })),
        Handler::Http { port, path } => ("httpGet", json!({ "port": port, "path": path })),
        Handler::Tcp(port) => ("tcpSocket", json!({ "port": port })),
        Handler::Grpc(port) => ("grpc", json!({ "port": port })),
    };
    v[key] = handler;
    v
}

fn container_json(c: &ContainerGen, init: bool) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": "host",
        "command": c.command,
        "args": c.args,
        "env": c.env.iter().map(|(name, src)| match src {
            EnvSrc::Value(value) => json!({ "name": name, "value": value }),
            EnvSrc::Field(path) => json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } }),
        }).collect::<Vec<_>>(),
    });
    if let Some(wd) = &c.working_dir {
        v["workingDir"] = json!(wd);
    }
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = c.cpu {
        limits.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = c.memory {
        limits.insert("memory".into(), json!(memory));
    }
    if !limits.is_empty() {
        v["resources"] = json!({ "limits": limits.clone(), "requests": limits });
    }
    if init && c.sidecar {
        v["restartPolicy"] = json!("Always");
    }
    if !init || c.sidecar {
        for (key, p) in ["startupProbe", "livenessProbe", "readinessProbe"]
            .iter()
            .zip(&c.probes)
        {
            if let Some(p) = p {
                v[*key] = probe_json(p);
            }
        }
    }
    v
}

fn pod_json(g: &PodGen) -> Value {
    let mut meta = json!({ "name": g.name });
    if let Some(ns) = &g.namespace {
        meta["namespace"] = json!(ns);
    }
    let mut spec = json!({
        "containers": g.apps.iter().map(|c| container_json(c, false)).collect::<Vec<_>>(),
    });
    if !g.init.is_empty() {
        spec["initContainers"] = json!(g
            .init
            .iter()
            .map(|c| container_json(c, true))
            .collect::<Vec<_>>());
    }
    if let Some(p) = g.restart_policy {
        spec["restartPolicy"] = json!(p);
    }
    if let Some(s) = g.grace {
        spec["terminationGracePeriodSeconds"] = json!(s);
    }
    let app0 = &mut spec["containers"][0];
    match g.broken {
        None => {}
        Some(Break::UpperCaseName) => meta["name"] = json!(format!("P{}", g.name)),
        Some(Break::BadRestartPolicy) => spec["restartPolicy"] = json!("Sometimes"),
        Some(Break::NegativeGrace) => spec["terminationGracePeriodSeconds"] = json!(-1),
        Some(Break::EmptyProgram) => app0["command"][0] = json!(""),
        Some(Break::BadEnvName) => {
            let env = app0["env"].as_array_mut().unwrap();
            env.insert(0, json!({ "name": "1X", "value": "v" }));
        }
        Some(Break::BadQuantity) => app0["resources"] = json!({ "limits": { "cpu": "lots" } }),
        Some(Break::DuplicateContainer) => {
            let copy = spec["containers"][0].clone();
            spec["containers"].as_array_mut().unwrap().push(copy);
        }
        Some(Break::ForeignImage) => app0["image"] = json!("busybox:1.36"),
    }
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec })
}

/// Cases of `accepted_pods_translate` run, and those that reached translation.
static CASES: AtomicUsize = AtomicUsize::new(0);
static TRANSLATED: AtomicUsize = AtomicUsize::new(0);

fn check_plan(g: &PodGen, pod: &unitlet::core::manifest::StaticPod) -> Result<(), TestCaseError> {
    let plan = translate(&pod.pod, &node(), &root_only);
    let apps = g.apps.len() + usize::from(matches!(g.broken, Some(Break::DuplicateContainer)));
    prop_assert_eq!(plan.init.len(), g.init.len());
    prop_assert_eq!(plan.containers.len(), apps);

    let names: Vec<&str> = plan.unit_names().collect();
    prop_assert!(names.iter().all(|u| u.len() <= MAX_UNIT_NAME), "{names:?}");
    prop_assert!(
        names.iter().all(|u| u
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))),
        "{names:?}"
    );
    prop_assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        names.len(),
        "unit names collide: {:?}",
        names
    );
    prop_assert!(plan.slice.ends_with(".slice"));

    let rendered = plan.render();
    let gens = g
        .init
        .iter()
        .map(|c| (c, true))
        .chain(g.apps.iter().map(|c| (c, false)));
    for ((c, init), cp) in gens.zip(plan.init.iter().chain(&plan.containers)) {
        prop_assert_eq!(&cp.name, &c.name);
        prop_assert!(cp.unit.ends_with(".service"));
        prop_assert_eq!(cp.sidecar, init && c.sidecar);
        let foreign =
            !init && cp.name == g.apps[0].name && matches!(g.broken, Some(Break::ForeignImage));
        if foreign {
            // Planned against the image deferred: the runtime pulls it,
            // then makes the unit again with the image's tree as its root.
            prop_assert!(cp.pull.is_some());
            let spec = cp.spec.as_ref().expect("a deferred plan");
            prop_assert!(spec
                .properties
                .iter()
                .any(|p| matches!(p, Property::RootDirectory(_))));
            continue;
        }
        let spec = match &cp.spec {
            Ok(spec) => spec,
            Err(w) => return Err(TestCaseError::fail(format!("{} waits: {w:?}", c.name))),
        };
        prop_assert_eq!(&spec.name, &cp.unit);
        let probes = if !init || c.sidecar {
            c.probes.iter().flatten().count()
        } else {
            0
        };
        prop_assert_eq!(cp.probes.len(), probes);

        // The program and the argument count are the manifest's.
        let exec: Vec<_> = spec
            .properties
            .iter()
            .filter_map(|p| match p {
                Property::ExecStart { path, argv } => Some((path, argv)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(exec.len(), 1);
        let (path, argv) = exec[0];
        prop_assert_eq!(path, &c.command[0]);
        prop_assert_eq!(&argv[0], &c.command[0]);
        prop_assert_eq!(argv.len(), c.command.len() + c.args.len());

        // Every declared variable is set.
        let env = spec
            .properties
            .iter()
            .find_map(|p| match p {
                Property::Environment(e) => Some(e),
                _ => None,
            })
            .unwrap();
        for (name, _) in &c.env {
            prop_assert!(
                env.iter().any(|(k, _)| k == name),
                "{name} missing from {env:?}"
            );
        }

        let unit = spec.render();
        prop_assert_eq!(
            unit.lines().filter(|l| l.starts_with("ExecStart=")).count(),
            1,
            "{}",
            unit
        );
        prop_assert!(rendered.contains(&unit));
    }
    Ok(())
}

/// Mostly valid pods (valid names, `image: host`, absolute programs, valid
/// env names, sane quantities, init containers and sidecars, restart
/// policies, probes): every accepted pod translates with one unit per
/// container under a name systemd takes, and almost every case gets that
/// far. The few broken on purpose are refused naming the broken field.
#[test]
fn accepted_pods_translate() {
    let mut runner = TestRunner::new(Config {
        source_file: Some(file!()),
        ..Config::with_cases(512)
    });
    let result = runner.run(&pod_gen(), |g| {
        CASES.fetch_add(1, Ordering::Relaxed);
        let text = serde_json::to_string_pretty(&pod_json(&g)).unwrap();
        let source = if g.yaml { "/m/x.yaml" } else { "/m/x.json" };
        let expect = g.broken.and_then(|b| b.field(g.apps.len()));
        match parse_manifest(text.as_bytes(), source, "node-a", !g.yaml) {
            Ok(pod) => {
                prop_assert!(
                    expect.is_none(),
                    "accepted, but {:?} is broken:\n{}",
                    expect,
                    text
                );
                TRANSLATED.fetch_add(1, Ordering::Relaxed);
                check_plan(&g, &pod)?;
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert_eq!(Some(&e.field), expect.as_ref(), "refused: {}\n{}", e, text);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
    let (cases, translated) = (
        CASES.load(Ordering::Relaxed),
        TRANSLATED.load(Ordering::Relaxed),
    );
    eprintln!(
        "accepted_pods_translate: {translated} of {cases} generated pods reached translation"
    );
    assert!(
        translated * 10 >= cases * 8,
        "only {translated} of {cases} generated pods reached translation"
    );
}
