//! A real Kubernetes control plane for the end-to-end tier: etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler from
//! `KUBEBUILDER_ASSETS` (envtest's layout; etcd from there or from PATH),
//! with a fresh PKI and etcd data directory per test, Node and RBAC
//! authorization and NodeRestriction admission, as kubeadm sets a cluster
//! up.
//!
//! The nodes are sandbox systemd nodes with addresses of their own: each
//! control plane takes a free /24 of `10.200.0.0/16` (a slot, held with a
//! lock file so parallel test processes never share one), makes a bridge on
//! the host with `.1` (where the API server, etcd, the controller manager
//! and the scheduler listen), and each node boots in a network namespace of
//! its own with a veth pair on that bridge and the next address. Nothing is
//! routed beyond the bridge and no namespace has a default route, so no
//! traffic leaves the machine. The API server reaches a node's kubelet API
//! at its InternalIP, so `nodes/proxy` works (it refuses loopback).
//!
//! Without assets, [`ControlPlane::start`] fails the test with one line
//! saying how to get them: the tier never passes as if it had run.
//! `scripts/test` leaves the tier out, saying so, when there are none.

use super::{default_wait, Node};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Debian's kubectl 1.20 (SPDY only), where `.ci/run` unpacks it.
pub const OLD_KUBECTL: &str = "/opt/kubernetes-client/usr/bin/kubectl";

/// The line printed (and the panic message) when the tier cannot run.
pub fn not_run_reason() -> Option<String> {
    match assets() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "end-to-end tier not run: {e}; get the assets with `setup-envtest use -p path` (sigs.k8s.io/controller-runtime/tools/setup-envtest) and export KUBEBUILDER_ASSETS=<that path>, plus etcd on PATH (apt-get install etcd-server)"
        )),
    }
}

/// The control plane binaries: (directory, etcd).
fn assets() -> Result<(PathBuf, PathBuf), String> {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .ok_or("KUBEBUILDER_ASSETS is not set")?;
    let dir = std::path::absolute(&dir).map_err(|e| e.to_string())?;
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        if !dir.join(b).is_file() {
            return Err(format!("KUBEBUILDER_ASSETS={} has no {b}", dir.display()));
        }
    }
    let etcd = if dir.join("etcd").is_file() {
        dir.join("etcd")
    } else {
        which("etcd").ok_or("no etcd in KUBEBUILDER_ASSETS or on PATH")?
    };
    Ok((dir, etcd))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// A certificate authority and what it signs.
struct Ca {
    pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed certificate and its key, PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).expect("self-sign the CA");
        Ca {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A certificate for `cn` in groups `orgs`; a server certificate when
    /// it has `sans`, else a client certificate.
    fn issue(&self, cn: &str, orgs: &[&str], sans: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        for o in orgs {
            dn.push(DnType::OrganizationName, *o);
        }
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        if sans.is_empty() {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.subject_alt_names = sans
                .iter()
                .map(|s| match s.parse() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*s).try_into().expect("DNS name")),
                })
                .collect();
        }
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A /24 of the test network, held for the life of a control plane.
struct Slot {
    n: u8,
    /// The lock; released (and the file left for reuse) when dropped.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Slot {
    fn take() -> Slot {
        let dir = super::target_tmp().join("e2e-net");
        std::fs::create_dir_all(&dir).expect("slot directory");
        for n in 1..=250u8 {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{n}.lock")))
                .expect("slot lock file");
            if let Ok(lock) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let slot = Slot { n, _lock: lock };
                slot.clean();
                return slot;
            }
        }
        panic!("no free network slot for a control plane (250 in use?)");
    }

    fn bridge(&self) -> String {
        format!("ulbr{}", self.n)
    }

    fn host_ip(&self) -> String {
        format!("10.200.{}.1", self.n)
    }

    /// Removes what a crashed run with this slot may have left.
    fn clean(&self) {
        let prefix = format!("ul{}n", self.n);
        let list = ip(&["netns", "list"]);
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&prefix) {
                let _ = run_ip(&["netns", "delete", ns]);
            }
        }
        let veth = format!("ulv{}n", self.n);
        let links = ip(&["-o", "link", "show"]);
        for l in links.lines().filter_map(|l| l.split(": ").nth(1)) {
            let l = l.split('@').next().unwrap_or(l);
            if l.starts_with(&veth) {
                let _ = run_ip(&["link", "delete", l]);
            }
        }
        let _ = run_ip(&["link", "delete", &self.bridge()]);
    }

    fn up(&self) {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clean();
    }
}

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (apt-get install iproute2)")
}

/// `ip ARGS`, which must succeed; its stdout.
fn ip(args: &[&str]) -> String {
    let out = run_ip(args);
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How to start a control plane.
#[derive(Default, Clone)]
pub struct Options {
    /// `--kubelet-certificate-authority`: the API server verifies kubelets'
    /// serving certificates against the cluster CA (so a self-signed one
    /// is refused).
    pub verify_kubelets: bool,
}

/// A running control plane. Stopped, with its network, when dropped.
pub struct ControlPlane {
    /// Its files: PKI, kubeconfigs, etcd data, component logs.
    pub dir: PathBuf,
    slot: Slot,
    procs: Vec<(&'static str, Child)>,
    ca: Ca,
    nodes: AtomicUsize,
}

/// A sandbox node of a control plane, in its own network namespace.
pub struct ClusterNode {
    /// The node (its agent started with [`ClusterNode::start_agent`]).
    pub node: Node,
    /// Its address on the test network (InternalIP, hostIP, podIP).
    pub ip: String,
    /// Its network namespace (removed with the control plane's slot, after
    /// the node: locals drop in reverse order).
    pub netns: String,
}

impl std::ops::Deref for ClusterNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for ClusterNode {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl ControlPlane {
    /// Starts a control plane for `test`; fails the test, saying why, when
    /// no assets are configured.
    pub fn start(test: &str) -> ControlPlane {
        ControlPlane::start_with(test, Options::default())
    }

    /// [`ControlPlane::start`] with options.
    pub fn start_with(test: &str, opts: Options) -> ControlPlane {
        if let Some(reason) = not_run_reason() {
            panic!("{reason}");
        }
        let (assets, etcd) = assets().expect("checked above");
        let slot = Slot::take();
        let dir = super::target_tmp()
            .join("control-planes")
            .join(format!("{test}-{}", slot.n));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("control plane directory");
        slot.up();
        let ca = Ca::new(&format!("unitlet-e2e-ca-{test}"));
        let mut cp = ControlPlane {
            dir,
            slot,
            procs: Vec::new(),
            ca,
            nodes: AtomicUsize::new(0),
        };
        cp.write_pki();
        let host = cp.slot.host_ip();
        let base = cp.dir.clone();
        let d = |f: &str| base.join(f).to_string_lossy().into_owned();
        cp.spawn(
            "etcd",
            Command::new(&etcd).args([
                format!("--data-dir={}", d("etcd")),
                format!("--listen-client-urls=http://{host}:2379"),
                format!("--advertise-client-urls=http://{host}:2379"),
                format!("--listen-peer-urls=http://{host}:2380"),
                format!("--initial-advertise-peer-urls=http://{host}:2380"),
                format!("--initial-cluster=default=http://{host}:2380"),
                "--unsafe-no-fsync".into(),
            ]),
        );
        let mut api = vec![
            format!("--etcd-servers=http://{host}:2379"),
            format!("--bind-address={host}"),
            format!("--advertise-address={host}"),
            "--secure-port=6443".into(),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!(
                "--kubelet-client-certificate={}",
                d("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", d("apiserver-kubelet-client.key")),
            // As kubeadm: the node's InternalIP, not its (unresolvable) name.
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            "--endpoint-reconciler-type=none".into(),
        ];
        if opts.verify_kubelets {
            api.push(format!("--kubelet-certificate-authority={}", d("ca.crt")));
        }
        cp.spawn(
            "kube-apiserver",
            Command::new(assets.join("kube-apiserver")).args(&api),
        );
        cp.wait_ready();
        cp.spawn(
            "kube-controller-manager",
            Command::new(assets.join("kube-controller-manager")).args([
                format!("--kubeconfig={}", d("controller-manager.kubeconfig")),
                "--leader-elect=false".into(),
                format!("--bind-address={host}"),
                "--secure-port=10257".into(),
                format!("--cluster-signing-cert-file={}", d("ca.crt")),
                format!("--cluster-signing-key-file={}", d("ca.key")),
                format!("--service-account-private-key-file={}", d("sa.key")),
                format!("--root-ca-file={}", d("ca.crt")),
                "--use-service-account-credentials".into(),
            ]),
        );
        cp.spawn(
            "kube-scheduler",
            Command::new(assets.join("kube-scheduler")).args([
                format!("--kubeconfig={}", d("scheduler.kubeconfig")),
                "--leader-elect=false".into(),
                format!("--bind-address={host}"),
                "--secure-port=10259".into(),
            ]),
        );
        // Pods cannot be created before the namespace's default service
        // account exists (admission), which the controller manager makes.
        cp.wait("the default ServiceAccount", default_wait() * 2, || {
            cp.kubectl_output(&["get", "serviceaccount", "default", "-o", "name"])
                .status
                .success()
                .then_some(())
        });
        cp
    }

    fn write_pki(&self) {
        let host = self.slot.host_ip();
        let put = |name: &str, text: &str| {
            std::fs::write(self.dir.join(name), text).expect("writing PKI");
        };
        put("ca.crt", &self.ca.pem);
        put("ca.key", &self.ca.key_pem);
        let serving = self.ca.issue(
            "kube-apiserver",
            &[],
            &[
                &host,
                "127.0.0.1",
                "10.96.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        );
        put("apiserver.crt", &serving.cert);
        put("apiserver.key", &serving.key);
        let kc = self
            .ca
            .issue("kube-apiserver-kubelet-client", &["system:masters"], &[]);
        put("apiserver-kubelet-client.crt", &kc.cert);
        put("apiserver-kubelet-client.key", &kc.key);
        let sa = KeyPair::generate().expect("service account key");
        put("sa.key", &sa.serialize_pem());
        put("sa.pub", &sa.public_key_pem());
        for (file, cn, orgs) in [
            (
                "admin.kubeconfig",
                "kubernetes-admin",
                &["system:masters"][..],
            ),
            (
                "controller-manager.kubeconfig",
                "system:kube-controller-manager",
                &[][..],
            ),
            ("scheduler.kubeconfig", "system:kube-scheduler", &[][..]),
        ] {
            let pair = self.ca.issue(cn, orgs, &[]);
            self.write_kubeconfig(&self.dir.join(file), &pair);
        }
    }

    /// A kubeconfig for this API server with `pair` as the user.
    fn write_kubeconfig(&self, path: &Path, pair: &Pair) {
        let b64 = |t: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(t)
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: e2e\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: e2e, namespace: default}}\ncurrent-context: e2e\n",
            self.url(),
            b64(&self.ca.pem),
            b64(&pair.cert),
            b64(&pair.key),
        );
        std::fs::write(path, text).expect("writing a kubeconfig");
    }

    /// Spawns a component, its output in `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        use std::os::unix::process::CommandExt;
        // SAFETY: only an async-signal-safe prctl between fork and exec, so
        // a test process killed by its runner takes the component with it.
        #[allow(unsafe_code)] // pre_exec is the only way to set a parent-death signal
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push((name, child));
    }

    fn wait_ready(&self) {
        self.wait("the API server's /readyz", default_wait() * 2, || {
            let out = self.kubectl_output(&["get", "--raw=/readyz"]);
            (out.status.success() && out.stdout.starts_with(b"ok")).then_some(())
        });
    }

    /// Polls `f` every 200 ms; on timeout panics with the components' log tails.
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tails of the components' logs and whether each still runs.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.procs {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name} (last 15 lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `https://<host address>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:6443", self.slot.host_ip())
    }

    /// The host's address on the test network (where the API server listens).
    pub fn host_ip(&self) -> String {
        self.slot.host_ip()
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// The admin's kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A client certificate the cluster CA signs.
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> Pair {
        self.ca.issue(cn, orgs, &[])
    }

    /// `kubectl` (the machine's current one, which speaks WebSocket) as the admin.
    pub fn kubectl(&self) -> Command {
        self.kubectl_at("kubectl")
    }

    /// Debian's kubectl 1.20 (SPDY) as the admin.
    pub fn old_kubectl(&self) -> Command {
        assert!(
            Path::new(OLD_KUBECTL).is_file(),
            "{OLD_KUBECTL} is missing: .ci/run unpacks Debian's kubernetes-client there"
        );
        self.kubectl_at(OLD_KUBECTL)
    }

    fn kubectl_at(&self, prog: &str) -> Command {
        let mut cmd = Command::new(prog);
        cmd.env("KUBECONFIG", self.admin_kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null());
        cmd
    }

    /// `kubectl ARGS` as the admin, whatever happens.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl().args(args).output().expect("running kubectl")
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a JSON or YAML text.
    pub fn apply(&self, text: &str) {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ARGS -o json`, parsed; `None` if kubectl fails (not found).
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_output(&all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl -o json"))
    }

    /// The items of `kubectl get ARGS -o json`.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.get(args)
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Boots a node in a namespace of its own on the test network, with a
    /// kubeconfig for `system:node:<name>` in its work directory.
    pub fn boot_node(&self, test: &str) -> ClusterNode {
        let i = self.nodes.fetch_add(1, Ordering::Relaxed);
        assert!(i < 200, "too many nodes");
        let netns = format!("ul{}n{i}", self.slot.n);
        let veth = format!("ulv{}n{i}", self.slot.n);
        let addr = format!("10.200.{}.{}", self.slot.n, 10 + i);
        let _ = run_ip(&["netns", "delete", &netns]);
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["link", "set", &veth, "master", &self.slot.bridge(), "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        let node = Node::boot_in(test, Some(PathBuf::from("/run/netns").join(&netns)));
        let pair = self.ca.issue(
            &format!("system:node:{}", node.name),
            &["system:nodes"],
            &[],
        );
        self.write_kubeconfig(&node.dir.join("kubeconfig"), &pair);
        ClusterNode {
            node,
            ip: addr,
            netns,
        }
    }

    /// Waits until node `name` is Ready in the API server.
    pub fn wait_node_ready(&self, name: &str) {
        self.wait(&format!("node {name} Ready"), default_wait(), || {
            let n = self.get(&["node", name])?;
            n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        });
    }
}

impl ClusterNode {
    /// Starts `unitlet node --kubeconfig K --node-name N` plus `extra` and
    /// waits until the Node is Ready.
    pub fn start_agent(&mut self, cp: &ControlPlane, extra: &[&str]) {
        let kc = self.node.dir.join("kubeconfig");
        self.node.start_node_agent(&kc, extra);
        cp.wait_node_ready(&self.node.name.clone());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, child) in self.procs.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for (_, child) in self.procs.iter_mut().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
