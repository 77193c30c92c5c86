//! Container logs from the journal.
//!
//! A container instance is one systemd invocation; `--previous` is the
//! invocation before. journald tags each line with the
//! `_SYSTEMD_INVOCATION_ID` it finds when it *reads* the line: for output of
//! a process that has exited by then (a short-lived container, a busy or
//! paused journald) that is none, or the next invocation's. What journald
//! records reliably is the writer's `_PID` (socket credentials) and the
//! `_STREAM_ID` of the stdout/stderr connection, which systemd opens anew for
//! every start, so a stream belongs to exactly one invocation.
//! [`Attributor`] therefore gives each stream to the invocation whose main
//! PID wrote any of its lines, else to the invocation its first tagged line
//! names, else to the one systemd last reported starting before it. As that
//! needs a stream's later lines, the journal is read twice: once to decide,
//! once to print. Reading goes through `journalctl -o json`, which handles
//! rotation and journal file formats.

use crate::core::names;
use crate::core::observe::{instance, Instance};
use crate::podview::PodView;
use crate::systemd::Units;
use futures_util::StreamExt;
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A journal read failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// journalctl could not run.
    #[error("cannot run journalctl: {0}")]
    Spawn(#[source] std::io::Error),
    /// Writing the output failed.
    #[error("writing logs: {0}")]
    Write(#[source] std::io::Error),
}

/// Which lines of which container: `unitlet logs` and the kubelet API's
/// `containerLogs` both ask this way.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Container name (default: the first app container).
    pub container: Option<String>,
    /// Follow.
    pub follow: bool,
    /// Last N lines.
    pub tail: Option<u64>,
    /// Only lines at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Prefix timestamps.
    pub timestamps: bool,
    /// The previous instance.
    pub previous: bool,
}

/// Why a container's logs cannot be read: the kubelet answers the first
/// with 404 and the second with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// No such container in the pod.
    #[error("{0}")]
    NotFound(String),
    /// The container has no such instance (not started, no previous one).
    #[error("{0}")]
    Unavailable(String),
}

fn waiting_reason(view: &PodView, name: &str) -> String {
    let all = view
        .status
        .container_statuses
        .iter()
        .flatten()
        .chain(view.status.init_container_statuses.iter().flatten());
    all.filter(|c| c.name == name)
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .unwrap_or_else(|| "ContainerCreating".into())
}

/// What to read for `opts` of one container of `view` (default: the first
/// app container), as the kubelet picks the instance: the running one, or
/// with `previous` the one before it.
pub fn container_query(view: &PodView, opts: &LogOptions) -> Result<LogQuery, LogError> {
    let pod_name = view.rec.pod.metadata.name.clone().unwrap_or_default();
    let all: Vec<_> = view
        .plan
        .containers
        .iter()
        .chain(&view.plan.init)
        .chain(&view.plan.ephemeral)
        .collect();
    let c = match &opts.container {
        Some(name) => all.iter().find(|c| &c.name == name).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            LogError::NotFound(format!(
                "container {name:?} is not valid for pod {pod_name:?}; choose one of: [{}]",
                names.join(" ")
            ))
        })?,
        None => view
            .plan
            .containers
            .first()
            .ok_or_else(|| LogError::NotFound(format!("pod {pod_name:?} has no containers")))?,
    };
    let unit = view.units.get(&c.unit);
    let record = view.records.get(&c.name).cloned().unwrap_or_default();
    // An ended container whose unit was collected (see the runtime's `gc`)
    // is known by its record alone.
    let collected = record
        .finished
        .as_ref()
        .filter(|_| unit.is_none_or(|u| u.invocation_id.is_empty()))
        .and_then(|t| {
            let inv = t.container_id.strip_prefix("systemd://")?;
            (!inv.is_empty()).then(|| (inv.to_string(), t.pid, t.started_us))
        });
    let invocation = if opts.previous {
        record.previous_invocation.clone().ok_or_else(|| {
            LogError::Unavailable(format!(
                "previous terminated container {:?} in pod {pod_name:?} not found",
                c.name
            ))
        })?
    } else {
        match unit
            .map(|u| u.invocation_id.clone())
            .filter(|i| !i.is_empty())
            .or_else(|| collected.as_ref().map(|c| c.0.clone()))
        {
            Some(i) => i,
            None => {
                return Err(LogError::Unavailable(format!(
                    "container {:?} in pod {pod_name:?} is waiting to start: {}",
                    c.name,
                    waiting_reason(view, &c.name)
                )))
            }
        }
    };
    // Main PIDs of the current and the previous instance, where known (see
    // `LogQuery::main_pids`).
    let mut main_pids = Vec::new();
    if let Some(u) = unit.filter(|u| !u.invocation_id.is_empty()) {
        main_pids.push((u.invocation_id.clone(), u.exec_main_pid));
    }
    if let Some((inv, pid, _)) = &collected {
        main_pids.push((inv.clone(), *pid));
    }
    if let (Some(prev), Some(t)) = (&record.previous_invocation, &record.last_termination) {
        if t.container_id == format!("systemd://{prev}") {
            main_pids.push((prev.clone(), t.pid));
        }
    }
    // Read from a little before the instance started, so that systemd's
    // message about starting it is read too.
    let started_us = if opts.previous {
        record
            .last_termination
            .as_ref()
            .filter(|t| t.container_id == format!("systemd://{invocation}"))
            .map(|t| t.started_us)
    } else {
        unit.map(|u| u.exec_main_start_us)
            .or_else(|| collected.as_ref().map(|c| c.2))
    };
    let read_from_us = started_us
        .filter(|&s| s > 0)
        .map(|s| s.saturating_sub(10_000_000));
    let running = matches!(instance(unit), Instance::Running { invocation: ref inv, .. } if *inv == invocation);
    Ok(LogQuery {
        unit: c.unit.clone(),
        invocation,
        main_pids,
        read_from_us,
        tail: opts.tail,
        since_us: opts.since_us,
        timestamps: opts.timestamps,
        follow: opts.follow && running && !opts.previous,
    })
}

/// Resolves when a followed instance stops (never, when not following),
/// as `kubectl logs -f` ends with the container.
pub async fn until_instance_ends(sd: &dyn Units, q: &LogQuery) {
    if !q.follow {
        return std::future::pending().await;
    }
    // The unit's signals wake this; a re-check every few seconds is the
    // safety net for a watch that could not be set up or a lost signal.
    let mut stream = sd
        .watch(vec![names::unit_object_path(&q.unit)])
        .await
        .ok()
        .map(Box::pin);
    loop {
        let snap = sd.snapshot(&q.unit).await.ok().flatten();
        if !matches!(instance(snap.as_ref()), Instance::Running { invocation: ref inv, .. } if *inv == q.invocation)
        {
            return;
        }
        let recheck = tokio::time::sleep(std::time::Duration::from_secs(3));
        match stream.as_mut() {
            Some(s) => {
                tokio::select! {
                    ev = s.next() => {
                        if ev.is_none() {
                            stream = None;
                        }
                    }
                    _ = recheck => {}
                }
            }
            None => recheck.await,
        }
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Unit name.
    pub unit: String,
    /// Invocation whose lines to show.
    pub invocation: String,
    /// Last N lines only.
    pub tail: Option<u64>,
    /// Only lines at or after this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// Prefix lines with RFC 3339 timestamps (nanosecond precision, fixed width).
    pub timestamps: bool,
    /// Keep reading new lines.
    pub follow: bool,
    /// Invocations with their main PIDs, where known (the wanted one and the
    /// one before or after it): a stream the main PID wrote to is theirs.
    pub main_pids: Vec<(String, u32)>,
    /// Where reading may start (µs since the epoch): a little before the
    /// invocation started, so that systemd's own start message is included.
    pub read_from_us: Option<u64>,
}

/// One journal entry, reduced to what attribution and output need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// `__REALTIME_TIMESTAMP`.
    pub ts: u64,
    /// The message bytes.
    pub message: Vec<u8>,
    /// `_PID`.
    pub pid: u32,
    /// `_SYSTEMD_INVOCATION_ID`: the writer's invocation, where journald knew it.
    pub invocation: Option<String>,
    /// `_STREAM_ID` for stdout/stderr lines.
    pub stream: Option<String>,
    /// `INVOCATION_ID` of a message systemd (PID 1) logged about the unit.
    pub about_invocation: Option<String>,
    /// Logged by the service manager's child between fork and exec (as
    /// `systemd[<pid>]`, `systemd-executor` from v255): journald files it
    /// under the unit and the container's PID, but it is systemd's word
    /// (on the sandbox nodes' hybrid cgroups, "Failed to attach … to
    /// compat systemd cgroup"), not the container's output.
    pub from_executor: bool,
    /// `__CURSOR`, to resume after this entry.
    pub cursor: String,
}

impl Entry {
    /// Parses one `journalctl -o json` line.
    pub fn parse(line: &str) -> Option<Entry> {
        let v: Value = serde_json::from_str(line).ok()?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (ts, message) = decode_entry(line)?;
        let pid: u32 = field("_PID").and_then(|p| p.parse().ok()).unwrap_or(0);
        let from_manager = pid == 1 && field("UNIT").is_some();
        Some(Entry {
            ts,
            message,
            pid,
            invocation: field("_SYSTEMD_INVOCATION_ID").filter(|_| !from_manager),
            stream: field("_STREAM_ID"),
            about_invocation: field("INVOCATION_ID").filter(|_| from_manager),
            from_executor: field("_STREAM_ID").is_none()
                && matches!(
                    field("SYSLOG_IDENTIFIER").as_deref(),
                    Some("systemd" | "systemd-executor")
                ),
            cursor: field("__CURSOR").unwrap_or_default(),
        })
    }
}

/// Who a stream belongs to, by kind of evidence (strongest first).
#[derive(Debug, Clone, Default)]
struct StreamOwner {
    /// The invocation whose main PID wrote one of its lines.
    by_pid: Option<String>,
    /// The invocation its first tagged line names.
    by_tag: Option<String>,
    /// The invocation systemd last reported starting before its first line.
    by_order: Option<String>,
}

impl StreamOwner {
    fn owner(&self) -> Option<&String> {
        self.by_pid
            .as_ref()
            .or(self.by_tag.as_ref())
            .or(self.by_order.as_ref())
    }
}

/// Assigns a unit's entries, read in journal order, to invocations.
///
/// [`Attributor::observe`] each entry of a stretch of journal, then
/// [`Attributor::replay`] and `observe` the same stretch again, asking
/// [`Attributor::owner`] about each entry: the second time round every
/// stream's owner has seen all evidence.
#[derive(Debug, Clone, Default)]
pub struct Attributor {
    /// Known main PIDs.
    main_pids: Vec<(String, u32)>,
    /// The invocation systemd most recently logged about.
    latest: Option<String>,
    streams: std::collections::HashMap<String, StreamOwner>,
}

impl Attributor {
    /// An attributor that knows these invocations' main PIDs.
    pub fn new(main_pids: Vec<(String, u32)>) -> Self {
        Attributor {
            main_pids: main_pids.into_iter().filter(|(_, p)| *p > 1).collect(),
            ..Default::default()
        }
    }

    /// Takes in the evidence of one entry.
    pub fn observe(&mut self, e: &Entry) {
        if let Some(inv) = &e.about_invocation {
            self.latest = Some(inv.clone());
            return;
        }
        let Some(stream) = &e.stream else { return };
        let latest = self.latest.clone();
        let o = self
            .streams
            .entry(stream.clone())
            .or_insert_with(|| StreamOwner {
                by_order: latest,
                ..Default::default()
            });
        if o.by_pid.is_none() {
            o.by_pid = self
                .main_pids
                .iter()
                .find(|(_, p)| *p == e.pid)
                .map(|(inv, _)| inv.clone());
        }
        if o.by_tag.is_none() {
            o.by_tag = e.invocation.clone();
        }
    }

    /// Forgets the position in the journal (not the streams), to read the
    /// same stretch again.
    pub fn replay(&mut self) {
        self.latest = None;
    }

    /// The invocation that wrote `e` (observed last), or `None` for systemd's
    /// own messages about the unit (not container output) and lines before
    /// any start.
    pub fn owner(&self, e: &Entry) -> Option<String> {
        if e.about_invocation.is_some() || e.pid == 1 || e.from_executor {
            return None;
        }
        match &e.stream {
            Some(s) => self.streams.get(s).and_then(StreamOwner::owner).cloned(),
            // Native and syslog messages: journald's tag, read at once.
            None => e.invocation.clone().or_else(|| self.latest.clone()),
        }
    }
}

/// Formats µs since the epoch as the kubelet does (`2006-01-02T15:04:05.000000000Z`).
pub fn rfc3339_nano(us: u64) -> String {
    // The width stays fixed past year 9999 too (journald writes what the
    // clock says): such times print as the latest jiff takes in
    // microseconds, 9999-12-30T22:00:00Z.
    const MAX_US: u64 = 253_402_207_200_000_000;
    let us = us.min(MAX_US);
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(us as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:09}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        (us % 1_000_000) * 1000
    )
}

/// The message of one journal JSON entry, and its time.
pub fn decode_entry(line: &str) -> Option<(u64, Vec<u8>)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let ts = v
        .get("__REALTIME_TIMESTAMP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let msg = match v.get("MESSAGE")? {
        Value::String(s) => s.clone().into_bytes(),
        // Non-UTF-8 messages come as byte arrays.
        Value::Array(bytes) => bytes
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect(),
        _ => Vec::new(),
    };
    Some((ts, msg))
}

/// Runs journalctl over the unit's entries (its processes' and systemd's
/// messages about it) and calls `f` with each parsed entry until journalctl
/// ends, `f` returns `false` or `stop` resolves (then after a short grace, so
/// that the journal can deliver the last lines).
async fn read_entries(
    q: &LogQuery,
    after_cursor: Option<&str>,
    follow: bool,
    stop: impl std::future::Future<Output = ()>,
    mut f: impl FnMut(Entry) -> bool,
) -> Result<(), JournalError> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["-o", "json", "--all", "--no-pager", "-q"]);
    cmd.arg(format!("_SYSTEMD_UNIT={}", q.unit));
    cmd.arg("+");
    cmd.arg(format!("UNIT={}", q.unit));
    cmd.arg("_PID=1");
    match after_cursor {
        Some(c) => {
            cmd.arg(format!("--after-cursor={c}"));
        }
        None => {
            if let Some(s) = q.read_from_us {
                cmd.arg(format!("--since=@{}.{:06}", s / 1_000_000, s % 1_000_000));
            }
        }
    }
    if follow {
        cmd.arg("--follow");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(JournalError::Spawn)?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    tokio::pin!(stop);
    let mut stopping: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l,
            _ = &mut stop, if stopping.is_none() => {
                stopping = Some(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(500))));
                continue;
            }
            _ = async { stopping.as_mut().unwrap().await }, if stopping.is_some() => break,
        };
        let Ok(Some(line)) = line else { break };
        if let Some(e) = Entry::parse(&line) {
            if !f(e) {
                break;
            }
        }
    }
    let _ = child.kill().await;
    Ok(())
}

/// Writes one log line as `kubectl logs` shows it.
async fn write_line(
    out: &mut (impl AsyncWrite + Unpin),
    e: &Entry,
    timestamps: bool,
) -> Result<(), JournalError> {
    let mut buf = Vec::with_capacity(e.message.len() + 32);
    if timestamps {
        buf.extend_from_slice(format!("{} ", rfc3339_nano(e.ts)).as_bytes());
    }
    buf.extend_from_slice(&e.message);
    buf.push(b'\n');
    out.write_all(&buf).await.map_err(JournalError::Write)?;
    out.flush().await.map_err(JournalError::Write)
}

/// Streams the invocation's lines to `out`: what is in the journal now (the
/// last `tail` of it), then, when following, new lines until `stop` resolves.
pub async fn stream(
    q: &LogQuery,
    out: &mut (impl AsyncWrite + Unpin),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), JournalError> {
    let mut attr = Attributor::new(q.main_pids.clone());
    let wanted = |e: &Entry, attr: &Attributor| {
        attr.owner(e).as_deref() == Some(q.invocation.as_str())
            && q.since_us.is_none_or(|s| e.ts >= s)
    };
    // What is there now, read once to decide and once to print, up to the
    // same entry.
    let mut cursor = None;
    read_entries(q, None, false, std::future::pending(), |e| {
        attr.observe(&e);
        cursor = Some(e.cursor);
        true
    })
    .await?;
    attr.replay();
    let mut now: std::collections::VecDeque<Entry> = Default::default();
    if let Some(last) = &cursor {
        read_entries(q, None, false, std::future::pending(), |e| {
            attr.observe(&e);
            let done = e.cursor == *last;
            if wanted(&e, &attr) {
                now.push_back(e);
                if q.tail.is_some_and(|n| now.len() as u64 > n) {
                    now.pop_front();
                }
            }
            !done
        })
        .await?;
    }
    for e in &now {
        write_line(out, e, q.timestamps).await?;
    }
    if !q.follow {
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = read_entries(q, cursor.as_deref(), true, stop, move |e| {
        tx.send(e).is_ok()
    });
    let writer = async {
        while let Some(e) = rx.recv().await {
            attr.observe(&e);
            if wanted(&e, &attr) {
                write_line(out, &e, q.timestamps).await?;
            }
        }
        Ok::<_, JournalError>(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_text_and_binary_messages() {
        let (ts, m) =
            decode_entry(r#"{"__REALTIME_TIMESTAMP":"1700000000123456","MESSAGE":"hello"}"#)
                .unwrap();
        assert_eq!(
            (ts, m.as_slice()),
            (1_700_000_000_123_456, b"hello".as_slice())
        );
        let (_, m) = decode_entry(r#"{"MESSAGE":[104,255,10]}"#).unwrap();
        assert_eq!(m, vec![104, 255, 10]);
    }

    fn stream_line(pid: u32, stream: &str, inv: Option<&str>) -> Entry {
        Entry {
            pid,
            stream: Some(stream.into()),
            invocation: inv.map(str::to_string),
            ..Default::default()
        }
    }

    fn started(inv: &str) -> Entry {
        Entry {
            pid: 1,
            about_invocation: Some(inv.into()),
            ..Default::default()
        }
    }

    /// Observes `entries` twice, as `stream` does, and returns each
    /// entry's owner from the second round.
    fn owners(main_pids: &[(&str, u32)], entries: &[Entry]) -> Vec<Option<String>> {
        let mut a = Attributor::new(main_pids.iter().map(|(i, p)| (i.to_string(), *p)).collect());
        entries.iter().for_each(|e| a.observe(e));
        a.replay();
        entries
            .iter()
            .map(|e| {
                a.observe(e);
                a.owner(e)
            })
            .collect()
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn parses_manager_and_process_entries() {
        let m = Entry::parse(r#"{"MESSAGE":"Started x","_PID":"1","UNIT":"x.service","INVOCATION_ID":"a","_SYSTEMD_INVOCATION_ID":"init"}"#).unwrap();
        assert_eq!(
            (m.about_invocation.as_deref(), m.invocation),
            (Some("a"), None)
        );
        let p = Entry::parse(r#"{"MESSAGE":"hi","_PID":"40","_STREAM_ID":"s","_SYSTEMD_INVOCATION_ID":"a","__CURSOR":"c"}"#).unwrap();
        assert_eq!(
            (
                p.pid,
                p.invocation.as_deref(),
                p.stream.as_deref(),
                p.about_invocation,
                p.cursor.as_str()
            ),
            (40, Some("a"), Some("s"), None, "c")
        );
    }

    #[test]
    fn what_systemd_logs_between_fork_and_exec_is_not_output() {
        let child = |ident: &str, stream: &str| {
            Entry::parse(&format!(
                r#"{{"MESSAGE":"Failed to attach 69 to compat systemd cgroup /x.slice/x.service: No such file or directory","_PID":"69","SYSLOG_IDENTIFIER":"{ident}","_SYSTEMD_UNIT":"x.service","_SYSTEMD_INVOCATION_ID":"A"{stream}}}"#
            ))
            .unwrap()
        };
        let got = owners(
            &[("A", 69)],
            &[
                started("A"),
                child("systemd", ""),
                child("systemd-executor", ""),
                // The container's own: a native message, and a stdout line
                // (whatever the program calls itself).
                child("sh", ""),
                child("systemd", r#","_STREAM_ID":"s""#),
            ],
        );
        assert_eq!(got, vec![None, None, None, some("A"), some("A")]);
    }

    #[test]
    fn a_stream_belongs_to_the_invocation_its_first_tagged_line_names() {
        let got = owners(
            &[],
            &[
                started("A"),
                // An exited shell's line, untagged, then its child's, tagged.
                stream_line(43, "s1", None),
                stream_line(44, "s1", Some("A")),
                started("B"),
                // Read after B started, still A's stream.
                stream_line(44, "s1", None),
                // B's stream, untagged: the latest start.
                stream_line(50, "s2", None),
            ],
        );
        assert_eq!(
            got,
            vec![None, some("A"), some("A"), None, some("A"), some("B")]
        );
    }

    #[test]
    fn the_main_pid_outweighs_a_late_tag() {
        // journald was paused: it read A's lines after B had started, and
        // tagged them with B, and read them before systemd's messages.
        let got = owners(
            &[("A", 57), ("B", 60)],
            &[
                stream_line(57, "s1", Some("B")),
                stream_line(60, "s2", Some("B")),
                started("A"),
                started("B"),
            ],
        );
        assert_eq!(got, vec![some("A"), some("B"), None, None]);
        // Without the PIDs the tag is all there is.
        let got = owners(&[], &[stream_line(57, "s1", Some("B"))]);
        assert_eq!(got, vec![some("B")]);
    }

    #[test]
    fn a_later_main_pid_line_claims_the_whole_stream() {
        let got = owners(
            &[("A", 43)],
            &[
                started("A"),
                started("B"),
                stream_line(44, "s1", None),
                stream_line(43, "s1", None),
            ],
        );
        assert_eq!(got, vec![None, None, some("A"), some("A")]);
    }

    #[test]
    fn manager_messages_and_lines_before_any_start_are_not_output() {
        let own = Entry {
            pid: 1,
            ..Default::default()
        };
        let native = Entry {
            pid: 9,
            invocation: Some("Z".into()),
            ..Default::default()
        };
        let untagged = Entry {
            pid: 9,
            ..Default::default()
        };
        let got = owners(
            &[],
            &[
                stream_line(7, "s", None),
                started("A"),
                own,
                native,
                untagged,
            ],
        );
        assert_eq!(got, vec![None, None, None, some("Z"), some("A")]);
    }

    #[test]
    fn fixed_width_timestamps() {
        assert_eq!(
            rfc3339_nano(1_700_000_000_000_000),
            "2023-11-14T22:13:20.000000000Z"
        );
        assert_eq!(
            rfc3339_nano(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456000Z"
        );
        for far in [253_402_300_800_000_000, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(rfc3339_nano(far), "9999-12-30T22:00:00.000000000Z");
        }
    }
}
