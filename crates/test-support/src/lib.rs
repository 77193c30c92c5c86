//! Shared harness for the standalone integration tests.
//!
//! The host has no systemd as PID 1, so every test boots its own throwaway
//! systemd node with unitlet's own [`Sandbox`] (systemd-nspawn on / with a
//! volatile root) and runs the real `unitlet` binary inside it. A node gets a
//! work directory under `target/tmp` (never /tmp: the node's tmpfiles would
//! clean a bound /tmp directory, and that would reach the host), bound
//! read-write at the same path, so the test and the containers share files;
//! the directory holding the binary is bound read-only.
//!
//! Assertions are about what a user can observe: the pod JSON of
//! `unitlet pods`, unit properties from `systemctl show`, container output
//! from `unitlet logs`, and files the containers write. Waits poll with
//! generous deadlines (scaled by `UNITLET_TEST_PATIENCE`) and are never used
//! as performance assertions; when one runs out, the panic shows the last
//! pods JSON and the tail of the agent's log.

#![allow(missing_docs)] // a test harness: documented where a reader needs it, not item by item

pub mod apiserver;
pub mod artifacts;
pub mod control_plane;
pub mod fake_units;
pub mod registry;

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use unitlet::sandbox::{Sandbox, SandboxOptions};

/// The binary under test: `unitlet` in the target directory the test
/// binary was built into (`target/<profile>/deps/<test>` →
/// `target/<profile>/unitlet`), or where nextest says it is. This crate is
/// a library shared by every test binary, so cargo's compile-time
/// `CARGO_BIN_EXE_unitlet` is not available here.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("NEXTEST_BIN_EXE_unitlet") {
            return p;
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("a test binary lives in target/<profile>/deps");
        profile_dir.join("unitlet").to_string_lossy().into_owned()
    })
}

/// `target/tmp`: scratch space for tests that must not be under /tmp
/// (sandbox nodes clean it), as cargo's `CARGO_TARGET_TMPDIR`.
pub fn target_tmp() -> PathBuf {
    let bin = Path::new(bin());
    bin.parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>")
        .join("tmp")
}

/// PATH for everything run inside a node (its /etc is empty, so no profile sets one).
const NODE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Multiplier for every deadline, from `UNITLET_TEST_PATIENCE` (default 1).
pub fn patience() -> f64 {
    std::env::var("UNITLET_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|p| *p > 0.0)
        .unwrap_or(1.0)
}

/// `secs` seconds, scaled by [`patience`]: for deadlines only.
pub fn patient(secs: u64) -> Duration {
    Duration::from_secs_f64(secs as f64 * patience())
}

/// The default deadline of a wait.
pub fn default_wait() -> Duration {
    patient(30)
}

/// A machine name for `test`: lowercase, `[a-z0-9-]`, unique on the host
/// (process ID and a per-process count: nextest runs each test in its own
/// process, `cargo test` runs them as threads of one), within the
/// 64-character host-name limit.
fn machine_name(test: &str) -> String {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let short: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let short = short.trim_matches('-');
    let short = &short[..short.len().min(40)];
    format!(
        "ut-{}-{}-{n}",
        short.trim_end_matches('-'),
        std::process::id()
    )
}

fn boot_sandbox(opts: &SandboxOptions) -> Sandbox {
    Sandbox::boot(opts).unwrap_or_else(|e| {
        panic!(
            "cannot boot sandbox node {:?} (these tests need root and systemd-nspawn): {e}",
            opts.name
        )
    })
}

/// The running agent: the nsenter child we spawned and unitlet inside it.
struct Agent {
    /// `nsenter`, which forks because it enters a PID namespace: unitlet is its child.
    nsenter: Child,
    /// unitlet's PID as the host sees it.
    pid: i32,
}

/// A booted node with (optionally) a unitlet agent running in it.
pub struct Node {
    sb: Sandbox,
    /// How the node was booted (for [`Node::reboot`]).
    opts: SandboxOptions,
    /// Machine name, also the node's host name and unitlet's node name.
    pub name: String,
    /// Work directory, the same path inside the node and on the host.
    pub dir: PathBuf,
    /// The manifest directory the agent watches.
    pub manifests: PathBuf,
    agent: Option<Agent>,
    /// Where the current agent's log starts in `agent.log` (restarts append).
    log_offset: u64,
}

impl Node {
    /// Boots a fresh node for the test `test` (use the test function's name).
    pub fn boot(test: &str) -> Node {
        Node::boot_in(test, None)
    }

    /// Boots a fresh node in the network namespace at `netns` (its own
    /// addresses), or in the host's network.
    pub fn boot_in(test: &str, netns: Option<PathBuf>) -> Node {
        let name = machine_name(test);
        let dir = target_tmp().join("nodes").join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).expect("creating the node's work directory");
        let bin_dir = Path::new(bin()).parent().expect("binary has a directory");
        let opts = SandboxOptions {
            name: name.clone(),
            binds: vec![dir.clone()],
            ro_binds: vec![bin_dir.to_path_buf()],
            console_log: Some(dir.join("console.log")),
            network_namespace: netns,
        };
        Node {
            sb: boot_sandbox(&opts),
            opts,
            name,
            dir,
            manifests,
            agent: None,
            log_offset: 0,
        }
    }

    /// Restarts the machine: the agent, if one runs, dies with it (as
    /// in a power cut, it is not asked to stop), systemd powers the node
    /// off (stopping every unit), and the node boots again with a new boot
    /// ID. Only the work directory is kept; the volatile root is new.
    pub fn reboot(&mut self) {
        if self.agent.is_some() {
            self.kill_agent_9();
        }
        self.sb.shutdown();
        self.sb = boot_sandbox(&self.opts);
    }

    /// The node's systemd, as the host sees it (for `nsenter -t`).
    pub fn sandbox_pid(&self) -> u32 {
        self.sb.init_pid()
    }

    /// A command that runs `prog` inside the node with a clean environment.
    pub fn command(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.sb.command(prog);
        cmd.env_clear()
            .env("PATH", NODE_PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `/bin/sh -c cmd` in the node; panics unless it succeeds; returns stdout.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.sh_output(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed in node {}: {}\nstdout: {}\nstderr: {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `/bin/sh -c cmd` in the node and returns whatever happened.
    pub fn sh_output(&self, cmd: &str) -> Output {
        self.command("/bin/sh")
            .args(["-c", cmd])
            .output()
            .expect("running nsenter")
    }

    /// Runs `unitlet ARGS` in the node (a CLI call, not the agent).
    pub fn unitlet(&self, args: &[&str]) -> Output {
        self.command(bin())
            .args(args)
            .output()
            .expect("running nsenter")
    }

    // ----- the agent -----

    /// Path of the agent's log (all agents of this node append to it).
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Starts `unitlet run` on the manifest directory with short back-off and
    /// relist periods (so tests see restarts within seconds), plus `extra`.
    pub fn start_agent(&mut self, extra: &[&str]) {
        let manifests = self.manifests.to_string_lossy().into_owned();
        let mut args = vec!["run", "--manifests", &manifests];
        args.extend_from_slice(extra);
        self.spawn_agent(&args);
    }

    /// Starts `unitlet node` (cluster mode) with the kubeconfig at
    /// `kubeconfig` (a path inside the node's work directory), the node's
    /// machine name as node name, short back-off and relist periods, plus `extra`.
    pub fn start_node_agent(&mut self, kubeconfig: &Path, extra: &[&str]) {
        let kc = kubeconfig.to_string_lossy().into_owned();
        let name = self.name.clone();
        let mut args = vec!["node", "--kubeconfig", &kc, "--node-name", &name];
        args.extend_from_slice(extra);
        self.spawn_agent(&args);
    }

    /// Spawns the agent: `unitlet --log-format json ARGS… --backoff-base 1s
    /// --backoff-max 4s --relist 2s`, its output appended to `agent.log`.
    fn spawn_agent(&mut self, sub: &[&str]) {
        assert!(self.agent.is_none(), "an agent is already running");
        let log_path = self.agent_log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("opening the agent log");
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut args = vec!["--log-format", "json"];
        args.extend_from_slice(sub);
        args.extend_from_slice(&[
            "--backoff-base",
            "1s",
            "--backoff-max",
            "4s",
            "--relist",
            "2s",
        ]);
        let mut nsenter = self
            .command(bin())
            .args(&args)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawning nsenter");
        let pid = find_unitlet(&mut nsenter, &log_path);
        self.agent = Some(Agent { nsenter, pid });
    }

    /// Starts the agent and waits until it reports its initial sync.
    pub fn start_agent_synced(&mut self, extra: &[&str]) {
        self.start_agent(extra);
        self.wait_synced();
    }

    /// Waits for the current agent's "initial sync complete" log line.
    pub fn wait_synced(&self) {
        self.wait_for("the agent's initial sync", default_wait(), || {
            self.agent_lines()
                .into_iter()
                .find(|l| l["message"] == "initial sync complete")
        });
    }

    /// SIGKILLs the agent (unitlet itself: killing nsenter would leave it running).
    pub fn kill_agent_9(&mut self) {
        let mut agent = self.agent.take().expect("no agent running");
        signal(agent.pid, nix::sys::signal::Signal::SIGKILL);
        let status = agent.nsenter.wait().expect("waiting for nsenter");
        // nsenter passes on how its child ended (re-raising the signal).
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(9) || status.code() == Some(137),
            "the agent did not die of SIGKILL: {status}"
        );
        assert!(
            !Path::new(&format!("/proc/{}", agent.pid)).exists(),
            "unitlet (pid {}) survived SIGKILL",
            agent.pid
        );
    }

    /// Whether the agent started last is still running.
    pub fn agent_alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|a| matches!(a.nsenter.try_wait(), Ok(None)))
    }

    /// Stops the agent with SIGTERM (SIGKILL after 10 s).
    pub fn stop_agent(&mut self) {
        let Some(mut agent) = self.agent.take() else {
            return;
        };
        signal(agent.pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = agent.nsenter.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal(agent.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = agent.nsenter.wait();
    }

    /// The whole agent log (every agent of this node).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// The JSON lines the current agent logged.
    pub fn agent_lines(&self) -> Vec<Value> {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.agent_log_path()) {
            use std::io::Seek;
            let _ = f.seek(std::io::SeekFrom::Start(self.log_offset));
            let _ = f.read_to_string(&mut text);
        }
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a current-agent log line for which `pred` holds.
    pub fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(what, default_wait(), || {
            self.agent_lines().into_iter().find(|l| pred(l))
        })
    }

    // ----- manifests -----

    /// Writes a manifest atomically (dot-temp file, then rename), so the agent
    /// never reads half a file.
    pub fn write_manifest(&self, file: &str, text: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("writing manifest");
        std::fs::rename(&tmp, self.manifests.join(file)).expect("renaming manifest");
    }

    /// Writes a pod given as JSON (exact strings, no YAML quoting to get wrong).
    pub fn write_json_manifest(&self, file: &str, pod: &Value) {
        self.write_manifest(file, &serde_json::to_string_pretty(pod).unwrap());
    }

    /// Removes a manifest.
    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).expect("removing manifest");
    }

    /// A path in the work directory (visible to containers at the same path).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Contents of a work-directory file, empty if it does not exist.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Waits until the file `name` in the work directory exists (a
    /// container or hook wrote it) and returns its contents.
    pub fn wait_file(&self, what: &str, name: &str) -> String {
        self.wait_for(what, default_wait(), || {
            std::fs::read_to_string(self.dir.join(name)).ok()
        })
    }

    // ----- status -----

    /// Every pod from `unitlet pods -A -o json` (which works without the agent).
    pub fn pods(&self) -> Vec<Value> {
        let out = self.unitlet(&["pods", "-A", "-o", "json"]);
        assert!(
            out.status.success(),
            "unitlet pods failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).expect("pods -o json is JSON");
        assert_eq!(list["kind"], "PodList", "not a PodList: {list}");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// One pod, if listed.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Value> {
        self.pods()
            .into_iter()
            .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
    }

    /// Polls `default/name` until `pred` holds and returns it.
    pub fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_pod_in("default", name, what, default_wait(), pred)
    }

    /// Polls `ns/name` until `pred` holds, for at most `timeout`.
    pub fn wait_pod_in(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(&format!("pod {ns}/{name}: {what}"), timeout, || {
            self.pod(ns, name).filter(|p| pred(p))
        })
    }

    /// Waits until `ns/name` is no longer listed.
    pub fn wait_pod_gone(&self, ns: &str, name: &str) {
        self.wait_for(
            &format!("pod {ns}/{name} to go away"),
            default_wait(),
            || self.pod(ns, name).is_none().then_some(()),
        );
    }

    /// Polls `f` every 200 ms until it returns `Some`; on timeout, panics with
    /// `what`, the pods JSON and the tail of the agent log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
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

    /// Polls `f` every 200 ms until it returns `Some` or `timeout` passes.
    pub fn try_wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pods JSON and agent log tail, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = self.unitlet(&["pods", "-A", "-o", "json"]);
        let mut pods = String::from_utf8_lossy(&out.stdout).into_owned();
        pods.push_str(&String::from_utf8_lossy(&out.stderr));
        if pods.len() > 30_000 {
            pods.truncate(30_000);
            pods.push_str("\n…(truncated)");
        }
        let log = self.agent_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- unitlet pods -A -o json ---\n{pods}\n--- agent log (last 40 lines) ---\n{}\n--- work dir: {} ---",
            tail.join("\n"),
            self.dir.display()
        )
    }

    // ----- units -----

    /// Loaded units matching a glob (`systemctl list-units PATTERN --all`).
    pub fn units(&self, pattern: &str) -> Vec<String> {
        let out = self.sh(&format!(
            "systemctl list-units '{pattern}' --all --no-legend --plain"
        ));
        out.lines()
            .filter_map(|l| l.split_whitespace().find(|t| t.contains('.')))
            .map(str::to_string)
            .collect()
    }

    /// The unit of container `container` of pod `ns/pod`, waiting until it is loaded.
    pub fn unit_of(&self, ns: &str, pod: &str, container: &str) -> String {
        let pattern = format!("unitlet_{ns}_{pod}_{container}_*.service");
        self.wait_for(&format!("a unit {pattern}"), default_wait(), || {
            let mut units = self.units(&pattern);
            assert!(
                units.len() <= 1,
                "several units for one container: {units:?}"
            );
            units.pop()
        })
    }

    /// Unit properties from `systemctl show -p A,B` (single-line values only).
    pub fn show(&self, unit: &str, props: &[&str]) -> std::collections::BTreeMap<String, String> {
        let out = self.sh(&format!("systemctl show '{unit}' -p {}", props.join(",")));
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `MainPID` and `InvocationID` of a running unit: what stays the same
    /// while nothing restarts it.
    pub fn identity(&self, unit: &str) -> (String, String) {
        let p = self.show(unit, &["MainPID", "InvocationID"]);
        assert_ne!(p["MainPID"], "0", "{unit} has no main process");
        assert!(!p["InvocationID"].is_empty(), "{unit} has no invocation");
        (p["MainPID"].clone(), p["InvocationID"].clone())
    }

    /// One property's value (may span lines), from `systemctl show --value`.
    pub fn show_value(&self, unit: &str, prop: &str) -> String {
        let out = self.sh(&format!("systemctl show '{unit}' -p {prop} --value"));
        out.strip_suffix('\n').unwrap_or(&out).to_string()
    }

    // ----- logs -----

    /// `unitlet logs ARGS`: (stdout, stderr, success).
    pub fn logs(&self, args: &[&str]) -> (String, String, bool) {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        let out = self.unitlet(&all);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    }

    /// Waits until the logs of `container` of `default/pod` contain `want`
    /// (a container that keeps printing), and returns them.
    pub fn wait_output(&self, pod: &str, container: &str, want: &str) -> String {
        self.wait_for(
            &format!("{pod}/{container} to print {want:?}"),
            default_wait(),
            || {
                let (out, _, ok) = self.logs(&[pod, "-c", container]);
                (ok && out.contains(want)).then_some(out)
            },
        )
    }

    /// Polls `unitlet logs ARGS` until its stdout equals `want` (the journal
    /// receives a container's output asynchronously).
    pub fn wait_logs(&self, args: &[&str], want: &str) -> String {
        let deadline = Instant::now() + default_wait();
        loop {
            let (out, err, ok) = self.logs(args);
            if ok && out == want {
                return out;
            }
            if Instant::now() > deadline {
                let journal = self.sh_output(
                    "journalctl -o verbose --no-pager -u 'unitlet_*' | grep -E '^  *(MESSAGE|_PID|_SYSTEMD_INVOCATION_ID|INVOCATION_ID|_STREAM_ID)=|^[A-Z][a-z][a-z] ' | tail -120",
                );
                panic!(
                    "timed out waiting for `unitlet logs {}` to print {want:?}; last stdout {out:?}, stderr {err:?}\njournal:\n{}\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&journal.stdout),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `cmd` to completion, or returns `None` once `timeout` has passed
/// (the process is left to the node's shutdown, which ends everything in it).
pub fn output_within(mut cmd: Command, timeout: Duration) -> Option<Output> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nsenter");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(timeout)
        .ok()
        .map(|r| r.expect("waiting for a command"))
}

impl Drop for Node {
    fn drop(&mut self) {
        // The agent is not part of the node's cgroup tree; end it first. Pods
        // keep running and go down with the node when the sandbox powers off.
        if let Some(mut agent) = self.agent.take() {
            signal(agent.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = agent.nsenter.wait();
        }
        self.sb.shutdown();
        // Keep the work directory of a failed test for inspection.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Finds unitlet under the nsenter we spawned. nsenter forks when it enters a
/// PID namespace, so unitlet is normally its child; if it ever exec'd
/// directly, it is the spawned process itself.
fn find_unitlet(nsenter: &mut Child, log: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let me = nsenter.id();
        if comm(me) == "unitlet" {
            return me as i32;
        }
        let kids =
            std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
        if let Some(pid) = kids
            .split_whitespace()
            .filter_map(|s| s.parse::<u32>().ok())
            .find(|&p| comm(p) == "unitlet")
        {
            return pid as i32;
        }
        if let Ok(Some(status)) = nsenter.try_wait() {
            let out = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the agent exited at once: {status}; the end of its log:\n{}",
                tail.join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "unitlet did not appear under nsenter"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- writing pod manifests -----

/// A static pod manifest (YAML): one container `c` of `image: host`
/// running `/bin/sh -c script` (quoted as JSON, which YAML reads as is),
/// under `policy`, with a 2 s termination grace period.
pub fn shell_pod(name: &str, policy: &str, script: &str) -> String {
    let script = serde_json::to_string(script).expect("a string serializes");
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["/bin/sh", "-c", {script}]
"#
    )
}

// ----- reading pod JSON -----

/// `status.phase`.
pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

/// The status of container `name` (app or init).
pub fn cstatus<'a>(pod: &'a Value, name: &str) -> &'a Value {
    for list in ["containerStatuses", "initContainerStatuses"] {
        if let Some(found) = pod["status"][list]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
        {
            return found;
        }
    }
    &Value::Null
}

/// `restartCount` of container `name`.
pub fn restarts(pod: &Value, name: &str) -> i64 {
    cstatus(pod, name)["restartCount"].as_i64().unwrap_or(-1)
}

/// Whether container `name` is running now.
pub fn running(pod: &Value, name: &str) -> bool {
    cstatus(pod, name)["state"]["running"].is_object()
}

/// `state.terminated` of container `name` (Null if not terminated).
pub fn terminated<'a>(pod: &'a Value, name: &str) -> &'a Value {
    &cstatus(pod, name)["state"]["terminated"]
}

/// `state.waiting.reason` of container `name`.
pub fn waiting_reason<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    cstatus(pod, name)["state"]["waiting"]["reason"].as_str()
}

/// The status (`"True"`/`"False"`) of a pod condition.
pub fn condition<'a>(pod: &'a Value, kind: &str) -> &'a str {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

/// `metadata.uid`.
pub fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

/// Parses an RFC 3339 time from the pod JSON into seconds since the epoch.
pub fn time_secs(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let ts: jiff::Timestamp = s.parse().unwrap_or_else(|e| panic!("bad time {s:?}: {e}"));
    ts.as_microsecond() as f64 / 1e6
}

// ----- the fault suite's table -----

/// What one fault test measured, for the table `scripts/faults` prints:
/// each figure counted by the test from what it observed (units, processes,
/// pod status), never assumed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FaultFigures {
    /// The fault, in a few words.
    pub fault: String,
    /// How many times it was injected.
    pub injected: usize,
    /// Pods on the node when it hit.
    pub pods: usize,
    /// Pods missing afterwards (not running, or not terminated, as wanted).
    pub lost: usize,
    /// Pods with more than one instance (process) afterwards.
    pub duplicated: usize,
    /// Containers restarted without cause: a unit seen running before a
    /// fault with another invocation after it, or a restart counted.
    pub restarted: usize,
    /// Seconds from the last fault until every pod was as wanted.
    pub converged_s: f64,
}

/// Appends `f` (a JSON line) to the file `UNITLET_FAULT_TABLE` names, when
/// it names one (`scripts/faults` does), and prints it either way.
pub fn report_fault(f: &FaultFigures) {
    let line = serde_json::to_string(f).expect("serializable");
    eprintln!("fault figures: {line}");
    if let Ok(path) = std::env::var("UNITLET_FAULT_TABLE") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        writeln!(file, "{line}").expect("writing the fault table");
    }
}

/// A small deterministic random sequence (xorshift64*) for fault points,
/// seeded from `UNITLET_FAULT_SEED` or the clock; the seed is printed so a
/// failing run can be repeated.
pub struct FaultRng(u64);

impl FaultRng {
    pub fn new(test: &str) -> FaultRng {
        let seed = std::env::var("UNITLET_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            .max(1);
        eprintln!("{test}: fault points from UNITLET_FAULT_SEED={seed}");
        FaultRng(seed)
    }

    /// A number in `lo..hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo).max(1)
    }
}
