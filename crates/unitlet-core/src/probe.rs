//! Probes as data: what to run, when, and what a run of results means.
//!
//! The agent runs probes itself (HTTP, TCP and gRPC from the agent, exec in
//! the container's context), as the kubelet's prober does; this module
//! holds the parts that are rules, not I/O: defaults and validation of the
//! probe fields, named ports, and the result state machine with the
//! kubelet's thresholds.
//!
//! Checking needs only the container ([`check_probes`], [`check_hooks`]),
//! so validation uses it without a pod or a node. Making the checked
//! probes runnable ([`Unresolved::resolve`]) needs the pod IP and the
//! container's environment, which translation supplies
//! (`translate::container_probes`, `translate::container_hooks`). This
//! module imports neither side.

use super::expand::expand;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `startupProbe`: gates the other two.
    Startup,
    /// `livenessProbe`: failing restarts the container.
    Liveness,
    /// `readinessProbe`: drives `ready`.
    Readiness,
}

impl ProbeKind {
    /// As the kubelet names it in events ("Liveness probe failed: …").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The container field.
    pub fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Liveness => "livenessProbe",
            ProbeKind::Readiness => "readinessProbe",
        }
    }

    /// The result before any probe ran: a container is not ready until its
    /// readiness probe succeeds, and alive until its liveness probe fails.
    pub fn initial(self) -> bool {
        matches!(self, ProbeKind::Liveness)
    }
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run a command in the container's context; exit 0 is success.
    Exec {
        /// argv, `$(VAR)` expanded with the container's static env.
        argv: Vec<String>,
    },
    /// An HTTP GET; 200–399 is success.
    Http {
        /// `https` or `http`.
        https: bool,
        /// Host to connect to (the pod IP unless given).
        host: String,
        /// Port.
        port: u16,
        /// Path with query, starting with `/`.
        path: String,
        /// Extra request headers, in order.
        headers: Vec<(String, String)>,
    },
    /// A TCP connect.
    Tcp {
        /// Host (the pod IP unless given).
        host: String,
        /// Port.
        port: u16,
    },
    /// The gRPC health protocol (`grpc.health.v1.Health/Check`).
    Grpc {
        /// Host (the pod IP).
        host: String,
        /// Port.
        port: u16,
        /// Service name asked about ("" for the server).
        service: String,
    },
}

/// One probe of one container, with the kubelet's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Which probe.
    pub kind: ProbeKind,
    /// What it does.
    pub action: Action,
    /// Wait after the container started before the first run.
    pub initial_delay: Duration,
    /// Between runs.
    pub period: Duration,
    /// Per run.
    pub timeout: Duration,
    /// Successes in a row that make the result success.
    pub success_threshold: u32,
    /// Failures in a row that make the result failure.
    pub failure_threshold: u32,
    /// Grace for the kill after a liveness or startup failure, overriding
    /// the pod's.
    pub termination_grace_s: Option<u64>,
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n as u16),
        IntOrString::Int(n) => Err(format!("{n} is not a port number (1-65535)")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<i32>() {
                return port(c, &IntOrString::Int(n));
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| cp.container_port as u16)
                .ok_or_else(|| format!("no port of the container is named {name:?}"))
        }
    }
}

fn seconds(v: Option<i32>, default: i32, min: i32, field: &str) -> Result<Duration, String> {
    let v = v.unwrap_or(default);
    if v < min {
        return Err(format!("{field} must be at least {min}"));
    }
    Ok(Duration::from_secs(v as u64))
}

/// Probes or hooks checked against the container alone, not yet runnable:
/// exec commands are as written (`$(VAR)` not expanded) and a host is
/// empty where the pod IP goes. [`Unresolved::resolve`] makes them runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved<T>(T);

impl Action {
    /// Fills in what the container alone does not say: the pod IP where no
    /// host is given, and `$(VAR)` in an exec command from `env`.
    fn resolve(self, pod_ip: &str, env: &dyn Fn(&str) -> Option<String>) -> Action {
        let host = |h: String| if h.is_empty() { pod_ip.to_string() } else { h };
        match self {
            // The kubelet expands `$(VAR)` with the container's own env.
            Action::Exec { argv } => Action::Exec {
                argv: argv.iter().map(|a| expand(a, env)).collect(),
            },
            Action::Http {
                https,
                host: h,
                port,
                path,
                headers,
            } => Action::Http {
                https,
                host: host(h),
                port,
                path,
                headers,
            },
            Action::Tcp { host: h, port } => Action::Tcp {
                host: host(h),
                port,
            },
            Action::Grpc {
                host: h,
                port,
                service,
            } => Action::Grpc {
                host: host(h),
                port,
                service,
            },
        }
    }
}

impl Unresolved<Vec<ProbeSpec>> {
    /// The probes as they run: hosts default to `pod_ip`, and `$(VAR)` in
    /// exec commands expands with `env` (a name it does not know stays as
    /// written). `env` is asked only for the names commands use.
    pub fn resolve(self, pod_ip: &str, env: impl Fn(&str) -> Option<String>) -> Vec<ProbeSpec> {
        self.0
            .into_iter()
            .map(|p| ProbeSpec {
                action: p.action.resolve(pod_ip, &env),
                ..p
            })
            .collect()
    }
}

impl Unresolved<Hooks> {
    /// The hooks as they run, resolved as probes are: hosts default to
    /// `pod_ip`, and `$(VAR)` in exec commands expands with `env`.
    pub fn resolve(self, pod_ip: &str, env: impl Fn(&str) -> Option<String>) -> Hooks {
        let one = |h: Option<Hook>| match h {
            Some(Hook::Action(a)) => Some(Hook::Action(a.resolve(pod_ip, &env))),
            other => other,
        };
        Hooks {
            post_start: one(self.0.post_start),
            pre_stop: one(self.0.pre_stop),
        }
    }
}

/// Checks one probe and applies the kubelet's defaults; the action is left
/// unresolved (see [`Unresolved`]). `Err` names the field (relative to the
/// probe) and what is wrong.
fn check_probe(c: &Container, kind: ProbeKind, p: &Probe) -> Result<ProbeSpec, (String, String)> {
    let bad = |f: &str, m: String| (f.to_string(), m);
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        return Err(bad(
            "",
            "must have exactly one handler: exec, httpGet, tcpSocket or grpc".into(),
        ));
    }
    // Resolution puts the pod IP where the host is empty.
    let given = |h: &Option<String>| h.clone().unwrap_or_default();
    let action = if let Some(e) = &p.exec {
        let argv = e.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return Err(bad("exec.command", "required".into()));
        }
        Action::Exec { argv }
    } else if let Some(h) = &p.http_get {
        let scheme = h.scheme.as_deref().unwrap_or("HTTP");
        if !matches!(scheme, "HTTP" | "HTTPS") {
            return Err(bad(
                "httpGet.scheme",
                format!("{scheme:?} must be HTTP or HTTPS"),
            ));
        }
        let path = h.path.clone().unwrap_or_default();
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        if path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(bad(
                "httpGet.path",
                format!("{path:?} holds spaces or control characters"),
            ));
        }
        let mut headers = Vec::new();
        for (i, hd) in h.http_headers.iter().flatten().enumerate() {
            let valid_name = !hd.name.is_empty()
                && hd
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                return Err(bad(
                    &format!("httpGet.httpHeaders[{i}].name"),
                    format!("{:?} is not an HTTP header name", hd.name),
                ));
            }
            if hd.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(bad(
                    &format!("httpGet.httpHeaders[{i}].value"),
                    "holds CR, LF or NUL".into(),
                ));
            }
            headers.push((hd.name.clone(), hd.value.clone()));
        }
        Action::Http {
            https: scheme == "HTTPS",
            host: given(&h.host),
            port: port(c, &h.port).map_err(|m| bad("httpGet.port", m))?,
            path,
            headers,
        }
    } else if let Some(t) = &p.tcp_socket {
        Action::Tcp {
            host: given(&t.host),
            port: port(c, &t.port).map_err(|m| bad("tcpSocket.port", m))?,
        }
    } else {
        let g = p.grpc.as_ref().expect("one handler");
        Action::Grpc {
            host: String::new(),
            port: port(c, &IntOrString::Int(g.port)).map_err(|m| bad("grpc.port", m))?,
            service: g.service.clone().unwrap_or_default(),
        }
    };
    let success_threshold = p.success_threshold.unwrap_or(1);
    if success_threshold < 1 {
        return Err(bad("successThreshold", "must be at least 1".into()));
    }
    if kind != ProbeKind::Readiness && success_threshold != 1 {
        return Err(bad(
            "successThreshold",
            "must be 1 for liveness and startup probes".into(),
        ));
    }
    let failure_threshold = p.failure_threshold.unwrap_or(3);
    if failure_threshold < 1 {
        return Err(bad("failureThreshold", "must be at least 1".into()));
    }
    let termination_grace_s = match p.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == ProbeKind::Readiness => {
            return Err(bad(
                "terminationGracePeriodSeconds",
                "must not be set for readiness probes".into(),
            ))
        }
        Some(g) if g < 1 => {
            return Err(bad(
                "terminationGracePeriodSeconds",
                "must be at least 1".into(),
            ))
        }
        Some(g) => Some(g as u64),
    };
    Ok(ProbeSpec {
        kind,
        action,
        initial_delay: seconds(p.initial_delay_seconds, 0, 0, "initialDelaySeconds")
            .map_err(|m| bad("initialDelaySeconds", m))?,
        period: seconds(p.period_seconds, 10, 1, "periodSeconds")
            .map_err(|m| bad("periodSeconds", m))?,
        timeout: seconds(p.timeout_seconds, 1, 1, "timeoutSeconds")
            .map_err(|m| bad("timeoutSeconds", m))?,
        success_threshold: success_threshold as u32,
        failure_threshold: failure_threshold as u32,
        termination_grace_s,
    })
}

/// Checks the container's probes, in the order startup, liveness,
/// readiness: all validation needs. `Err`: (field, message), the field from
/// the container on.
pub fn check_probes(c: &Container) -> Result<Unresolved<Vec<ProbeSpec>>, (String, String)> {
    let mut out = Vec::new();
    for (kind, p) in [
        (ProbeKind::Startup, &c.startup_probe),
        (ProbeKind::Liveness, &c.liveness_probe),
        (ProbeKind::Readiness, &c.readiness_probe),
    ] {
        if let Some(p) = p {
            let spec = check_probe(c, kind, p).map_err(|(f, m)| {
                let field = if f.is_empty() {
                    kind.field().to_string()
                } else {
                    format!("{}.{f}", kind.field())
                };
                (field, m)
            })?;
            out.push(spec);
        }
    }
    Ok(Unresolved(out))
}

/// What a lifecycle hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A probe-like action (exec, httpGet); it must succeed.
    Action(Action),
    /// Wait this long (`sleep.seconds`).
    Sleep(Duration),
}

/// A container's `postStart` and `preStop` hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run right after the container started; failing it kills the container.
    pub post_start: Option<Hook>,
    /// Run before the container is sent SIGTERM, within its grace period.
    pub pre_stop: Option<Hook>,
}

/// Checks the container's lifecycle hooks: all validation needs.
/// `Err`: (field from the container on, message).
pub fn check_hooks(c: &Container) -> Result<Unresolved<Hooks>, (String, String)> {
    let Some(l) = &c.lifecycle else {
        return Ok(Unresolved(Hooks::default()));
    };
    let one = |name: &str, h: &Option<k8s_openapi::api::core::v1::LifecycleHandler>| {
        let Some(h) = h else { return Ok(None) };
        let field = |f: &str| format!("lifecycle.{name}{f}");
        if h.tcp_socket.is_some() {
            return Err((
                field(".tcpSocket"),
                "is not supported (as by the kubelet); use exec or httpGet".into(),
            ));
        }
        let set = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err((
                field(""),
                "must have exactly one handler: exec, httpGet or sleep".into(),
            ));
        }
        if let Some(sl) = &h.sleep {
            if sl.seconds < 0 {
                return Err((field(".sleep.seconds"), "must not be negative".into()));
            }
            return Ok(Some(Hook::Sleep(Duration::from_secs(sl.seconds as u64))));
        }
        // A hook takes a probe's handler; reuse its checks and defaults.
        let probe = Probe {
            exec: h.exec.clone(),
            http_get: h.http_get.clone(),
            ..Default::default()
        };
        check_probe(c, ProbeKind::Liveness, &probe)
            .map(|p| Some(Hook::Action(p.action)))
            .map_err(|(f, m)| (field(&format!(".{f}")), m))
    };
    Ok(Unresolved(Hooks {
        post_start: one("postStart", &l.post_start)?,
        pre_stop: one("preStop", &l.pre_stop)?,
    }))
}

/// The results of one probe of one container instance, folded with the
/// kubelet's thresholds: the result changes only after `success_threshold`
/// successes or `failure_threshold` failures in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// The current result.
    pub result: bool,
    last: Option<bool>,
    run: u32,
}

impl ProbeState {
    /// Before the first run.
    pub fn new(kind: ProbeKind) -> Self {
        ProbeState {
            result: kind.initial(),
            last: None,
            run: 0,
        }
    }

    /// Folds in one run; returns the new result if it changed.
    pub fn record(&mut self, spec: &ProbeSpec, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            spec.success_threshold
        } else {
            spec.failure_threshold
        };
        if self.run >= needed && self.result != ok {
            self.result = ok;
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The pod + node entry points live with translation.
    use crate::translate::{container_hooks, container_probes};
    use crate::NodeFacts;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [container]}
        }))
        .unwrap()
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "n".into(),
            host_ip: "10.0.0.5".into(),
            allocatable: Default::default(),
            pods_dir: "/var/lib/unitlet/pods".into(),
            hardening: Default::default(),
            agent_exe: "/usr/bin/unitlet".into(),
        }
    }

    fn probes(c: serde_json::Value) -> Result<Vec<ProbeSpec>, (String, String)> {
        let p = pod(c);
        let c = &p.spec.as_ref().unwrap().containers[0];
        container_probes(&p, &node(), c)
    }

    #[test]
    fn defaults_named_ports_and_expansion() {
        let ps = probes(serde_json::json!({
            "name": "c", "image": "host",
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": [{"name": "F", "value": "/tmp/ok"}],
            "readinessProbe": {"httpGet": {"port": "http", "path": "healthz", "httpHeaders": [{"name": "X-A", "value": "1"}]}},
            "livenessProbe": {"exec": {"command": ["test", "-e", "$(F)"]}, "periodSeconds": 3, "failureThreshold": 2},
            "startupProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5}
        }))
        .unwrap();
        assert_eq!(
            ps.iter().map(|p| p.kind).collect::<Vec<_>>(),
            [
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness
            ]
        );
        assert_eq!(
            ps[0].action,
            Action::Tcp {
                host: "10.0.0.5".into(),
                port: 8080
            }
        );
        assert_eq!(ps[0].initial_delay, Duration::from_secs(5));
        assert_eq!(
            ps[1].action,
            Action::Exec {
                argv: vec!["test".into(), "-e".into(), "/tmp/ok".into()]
            }
        );
        assert_eq!(
            (ps[1].period, ps[1].failure_threshold),
            (Duration::from_secs(3), 2)
        );
        assert_eq!(
            ps[2].action,
            Action::Http {
                https: false,
                host: "10.0.0.5".into(),
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "1".into())]
            }
        );
        let r = &ps[2];
        assert_eq!(
            (
                r.period,
                r.timeout,
                r.success_threshold,
                r.failure_threshold,
                r.initial_delay
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(1),
                1,
                3,
                Duration::ZERO
            )
        );
    }

    #[test]
    fn bad_probes_name_the_field() {
        let field = |probe: serde_json::Value| {
            probes(serde_json::json!({"name": "c", "image": "host", "livenessProbe": probe}))
                .unwrap_err()
                .0
        };
        assert_eq!(
            field(serde_json::json!({"httpGet": {"port": "nope"}})),
            "livenessProbe.httpGet.port"
        );
        assert_eq!(
            field(serde_json::json!({"tcpSocket": {"port": 70000}})),
            "livenessProbe.tcpSocket.port"
        );
        assert_eq!(
            field(serde_json::json!({"exec": {"command": ["true"]}, "successThreshold": 2})),
            "livenessProbe.successThreshold"
        );
        assert_eq!(field(serde_json::json!({})), "livenessProbe");
        assert_eq!(
            field(serde_json::json!({"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}})),
            "livenessProbe"
        );
        assert_eq!(
            field(serde_json::json!({"exec": {"command": []}})),
            "livenessProbe.exec.command"
        );
        assert_eq!(
            field(
                serde_json::json!({"httpGet": {"port": 80, "httpHeaders": [{"name": "a b", "value": "v"}]}})
            ),
            "livenessProbe.httpGet.httpHeaders[0].name"
        );
        assert_eq!(
            field(serde_json::json!({"exec": {"command": ["true"]}, "periodSeconds": 0})),
            "livenessProbe.periodSeconds"
        );
    }

    #[test]
    fn checking_needs_only_the_container_and_resolving_fills_in() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "host",
            "livenessProbe": {"exec": {"command": ["test", "$(F)", "$(G)"]}},
            "readinessProbe": {"tcpSocket": {"port": 1, "host": "db"}},
            "startupProbe": {"grpc": {"port": 2}},
            "lifecycle": {"preStop": {"httpGet": {"port": 3}}}
        }))
        .unwrap();
        let checked = check_probes(&c).unwrap();
        // As written until resolved: no expansion, no pod IP.
        assert_eq!(
            checked.0[1].action,
            Action::Exec {
                argv: vec!["test".into(), "$(F)".into(), "$(G)".into()]
            }
        );
        let env = |n: &str| (n == "F").then(|| "/f".to_string());
        let ps = checked.resolve("10.0.0.5", env);
        assert_eq!(
            ps.iter().map(|p| p.action.clone()).collect::<Vec<_>>(),
            [
                Action::Grpc {
                    host: "10.0.0.5".into(),
                    port: 2,
                    service: String::new()
                },
                Action::Exec {
                    argv: vec!["test".into(), "/f".into(), "$(G)".into()]
                },
                Action::Tcp {
                    host: "db".into(),
                    port: 1
                },
            ]
        );
        let hooks = check_hooks(&c).unwrap().resolve("10.0.0.5", env);
        assert_eq!(
            hooks.pre_stop,
            Some(Hook::Action(Action::Http {
                https: false,
                host: "10.0.0.5".into(),
                port: 3,
                path: "/".into(),
                headers: Vec::new()
            }))
        );
        assert_eq!(hooks.post_start, None);
    }

    #[test]
    fn thresholds_fold_runs_as_the_kubelet() {
        let spec = |kind, s, f| ProbeSpec {
            kind,
            action: Action::Tcp {
                host: "h".into(),
                port: 1,
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: s,
            failure_threshold: f,
            termination_grace_s: None,
        };
        // Readiness starts false; two successes needed.
        let r = spec(ProbeKind::Readiness, 2, 3);
        let mut st = ProbeState::new(ProbeKind::Readiness);
        assert!(!st.result);
        assert_eq!(st.record(&r, true), None);
        assert_eq!(st.record(&r, true), Some(true));
        assert_eq!(st.record(&r, false), None);
        assert_eq!(st.record(&r, true), None); // a success breaks the failure run
        assert_eq!(st.record(&r, false), None);
        assert_eq!(st.record(&r, false), None);
        assert_eq!(st.record(&r, false), Some(false));
        // Liveness starts true; fails after the threshold, once.
        let l = spec(ProbeKind::Liveness, 1, 2);
        let mut st = ProbeState::new(ProbeKind::Liveness);
        assert!(st.result);
        assert_eq!(st.record(&l, false), None);
        assert_eq!(st.record(&l, false), Some(false));
        assert_eq!(st.record(&l, false), None);
    }

    #[test]
    fn hooks_take_exec_http_and_sleep() {
        let p = pod(serde_json::json!({
            "name": "c", "image": "host",
            "lifecycle": {
                "postStart": {"exec": {"command": ["touch", "/tmp/x"]}},
                "preStop": {"sleep": {"seconds": 2}}
            }
        }));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let h = container_hooks(&p, &node(), c).unwrap();
        assert_eq!(
            h.post_start,
            Some(Hook::Action(Action::Exec {
                argv: vec!["touch".into(), "/tmp/x".into()]
            }))
        );
        assert_eq!(h.pre_stop, Some(Hook::Sleep(Duration::from_secs(2))));
        let bad = pod(serde_json::json!({
            "name": "c", "image": "host",
            "lifecycle": {"preStop": {"httpGet": {"port": "web"}}}
        }));
        let c = &bad.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container_hooks(&bad, &node(), c).unwrap_err().0,
            "lifecycle.preStop.httpGet.port"
        );
    }
}
