//! A throwaway systemd node: `systemd-nspawn -D / --volatile=yes -b`.
//!
//! It boots this host's own /usr with a tmpfs root, so whatever runs inside
//! (systemd as PID 1, journald, the system bus, unitlet and its units)
//! leaves the host untouched. Host directories are bind-mounted at the same
//! path; paths under /tmp, /var/tmp and /run are refused because the node's
//! own tmpfiles rules would clean them, and that would reach the host.
//! Commands enter the node with `nsenter` into PID 1's namespaces.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where running sandboxes record their PID 1 (on the host).
pub const REGISTRY: &str = "/run/unitlet-sandbox";

/// How to boot a sandbox node.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Machine (and host) name inside.
    pub name: String,
    /// Host directories bind-mounted read-write at the same path.
    pub binds: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same path.
    pub ro_binds: Vec<PathBuf>,
    /// Where systemd-nspawn's console output goes (default: discarded).
    pub console_log: Option<PathBuf>,
    /// A network namespace to boot in (`ip netns add` makes them under
    /// /run/netns), so the node has addresses of its own; default: the
    /// host's network.
    pub network_namespace: Option<PathBuf>,
}

/// A booted node. Powered off on drop.
#[derive(Debug)]
pub struct Sandbox {
    name: String,
    init_pid: u32,
    child: Option<Child>,
}

fn check_bind(path: &Path) -> io::Result<()> {
    let bad = ["/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev"];
    if !path.is_absolute() || path == Path::new("/") || bad.iter().any(|b| path.starts_with(b)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot bind {} into a sandbox node: use an absolute directory outside /tmp, /var/tmp and /run (their contents are cleaned by the node)", path.display()),
        ));
    }
    Ok(())
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn find_init(root: u32) -> Option<u32> {
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ns_pid1 = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .is_some_and(|l| l.split_whitespace().last() == Some("1"));
        if comm.trim() == "systemd" && ns_pid1 && p != root {
            return Some(p);
        }
        stack.extend(children(p));
    }
    None
}

impl Sandbox {
    /// Boots a node and waits until its systemd reports the system running.
    pub fn boot(opts: &SandboxOptions) -> io::Result<Sandbox> {
        for p in opts.binds.iter().chain(&opts.ro_binds) {
            check_bind(p)?;
        }
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--quiet",
            "-D",
            "/",
            "--volatile=yes",
            "--register=no",
            "--keep-unit",
            "--console=passive",
        ]);
        cmd.arg(format!("--machine={}", opts.name));
        for b in &opts.binds {
            cmd.arg(format!("--bind={}", b.display()));
        }
        // The host's trust store, as a real machine has one (a volatile
        // node's /etc holds only what systemd makes): HTTPS downloads and
        // registries verify against it.
        if Path::new("/etc/ssl/certs").is_dir() {
            cmd.arg("--bind-ro=/etc/ssl");
        }
        for b in &opts.ro_binds {
            cmd.arg(format!("--bind-ro={}", b.display()));
        }
        if let Some(ns) = &opts.network_namespace {
            cmd.arg(format!("--network-namespace-path={}", ns.display()));
        }
        cmd.args(["-b", "systemd.firstboot=off"]);
        cmd.stdin(Stdio::null());
        match &opts.console_log {
            Some(p) => {
                let f = std::fs::File::create(p)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run systemd-nspawn ({e}); install the systemd-container package"),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let init_pid = loop {
            if let Some(pid) = find_init(child.id()) {
                break pid;
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "systemd-nspawn exited ({status}) before the node booted"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(io::Error::other(
                    "sandbox node did not start systemd within 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut sb = Sandbox {
            name: opts.name.clone(),
            init_pid,
            child: Some(child),
        };
        // systemctl fails until the node's bus is up; ask again until it answers.
        let state = loop {
            let out = sb
                .command("systemctl")
                .args(["is-system-running", "--wait"])
                .stderr(Stdio::null())
                .output()?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" || Instant::now() > deadline {
                break state;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if state != "running" && state != "degraded" {
            sb.shutdown();
            return Err(io::Error::other(format!(
                "sandbox node did not boot: systemd says {state:?}"
            )));
        }
        // `systemctl` talks over systemd's private socket; the agent needs
        // the system bus, whose socket a loaded machine may not have yet
        // when boot is reported done (seen once in CI: the agent could not
        // connect).
        let bus = Path::new("/proc")
            .join(init_pid.to_string())
            .join("root/run/dbus/system_bus_socket");
        while !bus.exists() {
            if Instant::now() > deadline {
                let failed = sb
                    .command("systemctl")
                    .args(["--failed", "--no-legend", "--plain"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                sb.shutdown();
                return Err(io::Error::other(format!(
                    "sandbox node booted without a system bus (failed units: {failed})"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::create_dir_all(REGISTRY);
        let _ = std::fs::write(Path::new(REGISTRY).join(&sb.name), init_pid.to_string());
        Ok(sb)
    }

    /// Attaches to a node booted by another process (`unitlet sandbox run`).
    pub fn attach(name: &str) -> io::Result<Sandbox> {
        let pid: u32 = std::fs::read_to_string(Path::new(REGISTRY).join(name))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("no sandbox node named {name:?} is running ({e})"),
                )
            })?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            != "systemd"
        {
            return Err(io::Error::other(format!("sandbox node {name:?} is gone")));
        }
        Ok(Sandbox {
            name: name.into(),
            init_pid: pid,
            child: None,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID of the node's systemd, as seen from the host.
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// A command that runs `program` inside the node.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init_pid.to_string(), "-a", "--"]);
        cmd.arg(program);
        cmd
    }

    /// Powers the node off and waits for it (killing it after 20 s).
    pub fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::fs::remove_file(Path::new(REGISTRY).join(&self.name));
        let _ = self
            .command("systemctl")
            .args(["poweroff", "--no-block"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True when systemd is PID 1 here (no sandbox needed).
pub fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}
