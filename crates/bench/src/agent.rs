//! The unitlet agent under test: a `unitlet run` inside the node, its JSON
//! log read line by line, and its resource use read from the host's /proc.

use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use unitlet::sandbox::Sandbox;

/// One parsed JSON log line of the agent.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line's `timestamp`, µs since the epoch (the agent's clock is the
    /// host's: a node has no time namespace).
    pub ts_us: i64,
    /// `message`.
    pub message: String,
    /// `pod` (`namespace/name`), when present.
    pub pod: Option<String>,
    /// `phase`, when present.
    pub phase: Option<String>,
    /// `level` (`INFO`, `WARN`, …).
    pub level: String,
    /// `error`, when present.
    pub error: Option<String>,
}

enum Event {
    Line(LogLine),
    /// Output that is not a JSON log line (e.g. `error: …` before exiting).
    Text(String),
    /// stderr closed: the agent is gone.
    Eof,
}

/// A running agent.
pub struct Agent {
    /// The `nsenter` process; the agent is its only child.
    nsenter: Child,
    /// The agent's PID on the host.
    pid: u32,
    /// When it was spawned, µs since the epoch.
    pub spawned_us: i64,
    events: Receiver<Event>,
    /// Last lines seen, for error messages.
    tail: VecDeque<String>,
    /// Warnings and errors the agent logged, and the first of them: the
    /// root cause of a stall is usually there, not in the last lines.
    warnings: usize,
    first_warning: Option<String>,
}

/// The agent's resource use, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// `VmHWM`: peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// `utime + stime`, seconds.
    pub cpu_s: f64,
}

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Agent {
    /// Starts `unitlet --log-format json run` inside the node with the
    /// safety-net relist every `relist`; its stderr is parsed and, with
    /// stdout, copied to `log`.
    pub fn spawn(
        node: &Sandbox,
        exe: &Path,
        manifests: &Path,
        relist: &str,
        extra_args: &[String],
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let mut args: Vec<String> = vec!["run".into(), "--manifests".into()];
        args.push(manifests.to_string_lossy().into_owned());
        args.extend(["--relist".into(), relist.into()]);
        args.extend(extra_args.iter().cloned());
        Agent::spawn_with(node, exe, &args, log)
    }

    /// Starts `unitlet --log-format json ARGS…` inside the node (`run` or
    /// `node` and their arguments).
    pub fn spawn_with(
        node: &Sandbox,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let mut cmd = node.command(exe);
        cmd.args(["--log-format", "json"]).args(args);
        // The host environment travels through nsenter; pin what unitlet reads.
        for var in [
            "UNITLET_STATE_DIR",
            "UNITLET_MANIFESTS",
            "UNITLET_LOG_FORMAT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("UNITLET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_us = now_us();
        let mut nsenter = cmd.spawn().context("starting nsenter")?;
        let file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let (tx, events) = mpsc::channel();
        let stderr = nsenter.stderr.take().expect("piped");
        let stdout = nsenter.stdout.take().expect("piped");
        let out_file = file.try_clone()?;
        let out_tx = tx.clone();
        std::thread::spawn(move || copy_stdout(stdout, out_file, out_tx));
        std::thread::spawn(move || read_log(stderr, file, tx));
        let pid = match agent_pid(nsenter.id()) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = nsenter.kill();
                let _ = nsenter.wait();
                return Err(e);
            }
        };
        Ok(Agent {
            nsenter,
            pid,
            spawned_us,
            events,
            tail: VecDeque::new(),
            warnings: 0,
            first_warning: None,
        })
    }

    /// The agent's PID on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Next log line, or an error at `deadline` or when the agent exits.
    pub fn next_line(&mut self, deadline: Instant, waiting_for: &str) -> anyhow::Result<LogLine> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Line(l)) => {
                    let text = match (&l.pod, &l.phase, &l.error) {
                        (_, _, Some(e)) => format!("{} {}: {e}", l.level, l.message),
                        (Some(p), Some(ph), _) => format!("{} {}: {p} {ph}", l.level, l.message),
                        (Some(p), None, _) => format!("{} {}: {p}", l.level, l.message),
                        _ => format!("{} {}", l.level, l.message),
                    };
                    if l.level == "WARN" || l.level == "ERROR" {
                        self.warnings += 1;
                        self.first_warning.get_or_insert_with(|| text.clone());
                    }
                    self.remember(text);
                    return Ok(l);
                }
                Ok(Event::Text(t)) => self.remember(t),
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "agent exited while waiting for {waiting_for}; its last output:\n{}",
                        self.tail()
                    )
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "timed out waiting for {waiting_for}; the agent's last output:\n{}",
                    self.tail()
                ),
            }
        }
    }

    /// Waits for the first log line with this message.
    pub fn wait_message(&mut self, message: &str, deadline: Instant) -> anyhow::Result<LogLine> {
        loop {
            let line = self.next_line(deadline, &format!("{message:?}"))?;
            if line.message == message {
                return Ok(line);
            }
        }
    }

    fn remember(&mut self, s: String) {
        if self.tail.len() == 20 {
            self.tail.pop_front();
        }
        self.tail.push_back(s);
    }

    fn tail(&self) -> String {
        let mut out: String = self.tail.iter().map(|l| format!("  {l}\n")).collect();
        if let Some(w) = &self.first_warning {
            out.push_str(&format!(
                "the agent logged {} warnings/errors; the first:\n  {w}\n",
                self.warnings
            ));
        }
        out
    }

    /// Peak RSS and CPU time so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage(self.pid)
    }

    /// Sends `signal` to the agent and waits (up to 10 s) for it to exit.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("kill {signal} agent"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.nsenter.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.nsenter.kill();
        let _ = self.nsenter.wait();
        bail!("agent did not exit within 10 s of {signal}")
    }
}

impl Drop for Agent {
    /// An agent left behind would keep the node's poweroff waiting on nothing
    /// useful; end it (a no-op once [`Agent::stop`] has reaped it).
    fn drop(&mut self) {
        if let Ok(None) = self.nsenter.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.nsenter.kill();
            let _ = self.nsenter.wait();
        }
    }
}

/// The agent's host PID. `nsenter` must fork to enter the node's PID
/// namespace, so the agent is its only child; the name is checked so a
/// failed exec is not mistaken for the agent.
fn agent_pid(nsenter: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|s| s.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "unitlet" {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            bail!("no unitlet process appeared under nsenter (pid {nsenter}) within 5 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Peak RSS (`VmHWM`) and CPU seconds (`utime + stime`) of a host process.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm, which may itself contain spaces:
    // state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(Usage {
        peak_rss_kib,
        cpu_s: ticks as f64 / clock_ticks(),
    })
}

/// `sysconf(_SC_CLK_TCK)`, the unit of utime/stime (100 on Linux if unknown).
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64
}

fn read_log(stderr: ChildStderr, mut file: std::fs::File, tx: Sender<Event>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(file, "{line}");
        let event = parse(&line).map_or(Event::Text(line), Event::Line);
        if tx.send(event).is_err() {
            return;
        }
    }
    let _ = tx.send(Event::Eof);
}

fn copy_stdout(stdout: std::process::ChildStdout, mut file: std::fs::File, tx: Sender<Event>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(file, "stdout: {line}");
        let _ = tx.send(Event::Text(format!("stdout: {line}")));
    }
}

/// Parses one line of `tracing-subscriber`'s JSON format with flattened
/// events: `{"timestamp":"…Z","level":"INFO","message":"…","pod":"…",…}`.
fn parse(line: &str) -> Option<LogLine> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ts: jiff::Timestamp = v.get("timestamp")?.as_str()?.parse().ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    Some(LogLine {
        ts_us: ts.as_microsecond(),
        message: field("message")?,
        pod: field("pod"),
        phase: field("phase"),
        level: field("level").unwrap_or_default(),
        error: field("error"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_pod_status_line() {
        let l = parse(r#"{"timestamp":"2026-11-25T10:53:12.841743Z","level":"INFO","message":"pod status","pod":"default/bench-00001","phase":"Running","status":"Running 1/1 restarts=0 Running","target":"unitlet::runtime"}"#).unwrap();
        assert_eq!(l.message, "pod status");
        assert_eq!(l.pod.as_deref(), Some("default/bench-00001"));
        assert_eq!(l.phase.as_deref(), Some("Running"));
        assert_eq!(l.ts_us % 1_000_000, 841_743);
        assert!(parse("error: boom").is_none());
    }

    #[test]
    fn reads_own_usage() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.peak_rss_kib > 0);
        assert!(u.cpu_s >= 0.0);
    }
}
