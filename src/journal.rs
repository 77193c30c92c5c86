//! Container logs from the journal.
//!
//! A container instance is one systemd invocation, so its log is exactly the
//! journal entries with its `_SYSTEMD_INVOCATION_ID`; `--previous` is the
//! invocation before. Reading goes through `journalctl -o json`, which
//! handles rotation and journal file formats for us.

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
}

/// Formats µs since the epoch as the kubelet does (`2006-01-02T15:04:05.000000000Z`).
pub fn rfc3339_nano(us: u64) -> String {
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

/// Streams the matching lines to `out` until journalctl ends or `stop` resolves.
pub async fn stream(
    q: &LogQuery,
    out: &mut (impl AsyncWrite + Unpin),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), JournalError> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["-o", "json", "--all", "--no-pager", "-q"]);
    cmd.arg(format!("_SYSTEMD_UNIT={}", q.unit));
    cmd.arg(format!("_SYSTEMD_INVOCATION_ID={}", q.invocation));
    if let Some(n) = q.tail {
        cmd.arg(format!("--lines={n}"));
    }
    if let Some(s) = q.since_us {
        cmd.arg(format!("--since=@{}.{:06}", s / 1_000_000, s % 1_000_000));
    }
    if q.follow {
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
                // Give the journal a moment to deliver the last lines.
                stopping = Some(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(500))));
                continue;
            }
            _ = async { stopping.as_mut().unwrap().await }, if stopping.is_some() => break,
        };
        let Ok(Some(line)) = line else { break };
        let Some((ts, mut msg)) = decode_entry(&line) else {
            continue;
        };
        msg.push(b'\n');
        if q.timestamps {
            out.write_all(format!("{} ", rfc3339_nano(ts)).as_bytes())
                .await
                .map_err(JournalError::Write)?;
        }
        out.write_all(&msg).await.map_err(JournalError::Write)?;
        out.flush().await.map_err(JournalError::Write)?;
    }
    let _ = child.kill().await;
    Ok(())
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
    }
}
