//! `kubectl exec`: a command run in a container's context, its standard
//! streams (or a terminal) wired to the caller's streams, and its end
//! reported as the kubelet reports it (a `Status` on the error stream).
//!
//! The command gets what an exec probe gets (see `runtime::probes`): the
//! unit's mount namespace, user, groups, capability bounding set,
//! `no_new_privs`, environment and working directory, and it is moved
//! into the unit's cgroup before it runs. The gate that holds it until
//! then reads fd 3, not stdin, so the caller's input reaches the command
//! untouched (and a terminal echoes nothing of the gate).

use crate::runtime::probes::{exec_context_argv, exec_env};
use crate::systemd::Units;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A validated exec request (`command`, `stdin`, `stdout`, `stderr`, `tty`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// argv.
    pub command: Vec<String>,
    /// Pass the caller's input.
    pub stdin: bool,
    /// Pass the command's output.
    pub stdout: bool,
    /// Pass its error output (never with `tty`: a terminal has one output).
    pub stderr: bool,
    /// Run it on a terminal.
    pub tty: bool,
}

/// Parses the query as the kubelet does (`command` repeated; the flags as
/// booleans, also spelled `input`/`output`/`error` by old clients).
pub fn parse(query: &str) -> Result<Params, String> {
    let mut p = Params {
        command: Vec::new(),
        stdin: false,
        stdout: false,
        stderr: false,
        tty: false,
    };
    let flag = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE" | "t" | "T");
    for (k, v) in super::logs::query_pairs(query) {
        match k.as_str() {
            "command" => p.command.push(v),
            "stdin" | "input" => p.stdin = flag(&v),
            "stdout" | "output" => p.stdout = flag(&v),
            "stderr" | "error" => p.stderr = flag(&v),
            "tty" => p.tty = flag(&v),
            _ => {}
        }
    }
    if !p.stdin && !p.stdout && !p.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    if p.tty && p.stderr {
        // kubectl asks for stderr only without a terminal.
        return Err("tty and stderr cannot both be true".into());
    }
    Ok(p)
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status (a signal `n` counts as 128 + n, as a shell reports it).
    Exited(i32),
    /// It could not run.
    Failed(String),
}

/// The `Status` the kubelet writes on the error stream (protocol v4 and
/// later): success, or `NonZeroExitCode` with the code as the `ExitCode`
/// cause, which kubectl turns into its own exit status.
pub fn status_json(command: &[String], outcome: &Outcome) -> Vec<u8> {
    let v = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500
        }),
    };
    serde_json::to_vec(&v).expect("a JSON value serializes")
}

/// A terminal size (`resize` stream messages: `{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The caller's side of the streams (absent ones were not asked for).
pub struct Streams {
    /// Input for the command.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// The command's output (the terminal's, with `tty`).
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Its error output.
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal sizes, as they change.
    pub resize: Option<tokio::sync::mpsc::Receiver<Size>>,
}

fn set_size(fd: &OwnedFd, s: Size) {
    let ws = nix::libc::winsize {
        ws_row: s.height,
        ws_col: s.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    #[allow(unsafe_code)] // no safe wrapper in nix for a terminal's size
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

/// Copies `from` to `to` until EOF or an error; closes `to` at the end.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A terminal's master reads EIO once the command is gone.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => break,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Runs `p.command` in `unit`'s context with `streams`, until it ends.
pub async fn run(sd: &dyn Units, unit: &str, p: &Params, mut streams: Streams) -> Outcome {
    let ctx = match sd.exec_context(unit).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if ctx.main_pid == 0 {
        return Outcome::Failed(format!(
            "container is not running (unit {unit} has no main process)"
        ));
    }
    let (program, args) = exec_context_argv(&ctx, &p.command, true);
    let (gate_r, gate_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("pipe: {e}")),
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(exec_env(&ctx))
        .current_dir("/")
        .kill_on_drop(true);
    let gate_fd = gate_r.as_raw_fd();
    let mut master: Option<OwnedFd> = None;
    if p.tty {
        let pty = match nix::pty::openpty(None, None) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(format!("openpty: {e}")),
        };
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| -> std::io::Result<std::process::Stdio> {
            Ok(std::process::Stdio::from(fd.try_clone()?))
        };
        match (dup(&slave), dup(&slave), dup(&slave)) {
            (Ok(a), Ok(b), Ok(c)) => {
                cmd.stdin(a).stdout(b).stderr(c);
            }
            _ => return Outcome::Failed("cannot set up the terminal".into()),
        }
        // SAFETY: setsid, ioctl and dup2 are async-signal-safe.
        #[allow(unsafe_code)] // a child's session and terminal are set between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                nix::libc::setsid();
                nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0);
                if nix::libc::dup2(gate_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        master = Some(pty.master);
    } else {
        cmd.stdin(if p.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(if p.stdout {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(if p.stderr {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        // SAFETY: dup2 is async-signal-safe.
        #[allow(unsafe_code)] // the gate fd is put in place between fork and exec
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::dup2(gate_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("failed to run {:?}: {e}", p.command)),
    };
    // The parent's copies of the child's ends: a terminal's master reads
    // EOF (EIO) only once every copy of its slave is closed.
    drop(cmd);
    drop(gate_r);
    if let Some(pid) = child.id() {
        if let Err(e) = sd.attach(unit, pid).await {
            tracing::warn!(unit, error = %e, "exec runs outside the container's cgroup");
        }
    }
    // Open the gate: the command runs now, in the cgroup.
    let _ = nix::unistd::write(&gate_w, b"\n");
    drop(gate_w);

    let mut tasks = Vec::new();
    let mut resizer = None;
    if let Some(m) = master {
        let (Ok(r), Ok(w)) = (m.try_clone(), m.try_clone()) else {
            return Outcome::Failed("cannot use the terminal".into());
        };
        if let Some(mut resize) = streams.resize.take() {
            let fd = m.try_clone().ok();
            // Not waited for: the client's resize stream outlives the command.
            resizer = Some(tokio::spawn(async move {
                while let Some(s) = resize.recv().await {
                    if let Some(fd) = &fd {
                        set_size(fd, s);
                    }
                }
            }));
        }
        let reader = tokio::fs::File::from_std(std::fs::File::from(r));
        let writer = tokio::fs::File::from_std(std::fs::File::from(w));
        if let Some(out) = streams.stdout.take() {
            tasks.push(tokio::spawn(pump(reader, out)));
        }
        if let Some(input) = streams.stdin.take() {
            tokio::spawn(pump(input, writer));
        }
    } else {
        if let (Some(input), Some(pipe)) = (streams.stdin.take(), child.stdin.take()) {
            // Not awaited: the command may end without reading its input.
            tokio::spawn(pump(input, pipe));
        }
        if let (Some(out), Some(pipe)) = (streams.stdout.take(), child.stdout.take()) {
            tasks.push(tokio::spawn(pump(pipe, out)));
        }
        if let (Some(out), Some(pipe)) = (streams.stderr.take(), child.stderr.take()) {
            tasks.push(tokio::spawn(pump(pipe, out)));
        }
    }
    let status = child.wait().await;
    if let Some(r) = resizer {
        r.abort();
    }
    // Output still in the pipes reaches the caller before the status.
    for t in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    match status {
        Ok(s) => match s.code() {
            Some(c) => Outcome::Exited(c),
            None => Outcome::Exited(
                128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0),
            ),
        },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let p = parse("command=sh&command=-c&command=echo+hi&stdout=1&stderr=true").unwrap();
        assert_eq!(p.command, ["sh", "-c", "echo hi"]);
        assert!(p.stdout && p.stderr && !p.stdin && !p.tty);
        assert!(parse("command=ls").is_err(), "no stream");
        assert_eq!(
            parse("command=sh&tty=1&stderr=1&stdin=1").unwrap_err(),
            "tty and stderr cannot both be true"
        );
        let old = parse("command=ls&output=1&input=1").unwrap();
        assert!(old.stdout && old.stdin);
    }

    #[test]
    fn exit_statuses_as_the_kubelet_reports_them() {
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        let ok: serde_json::Value =
            serde_json::from_slice(&status_json(&cmd, &Outcome::Exited(0))).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value =
            serde_json::from_slice(&status_json(&cmd, &Outcome::Exited(3))).unwrap();
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        assert_eq!(
            bad["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let failed: serde_json::Value =
            serde_json::from_slice(&status_json(&cmd, &Outcome::Failed("no".into()))).unwrap();
        assert_eq!(failed["status"], "Failure");
        assert_ne!(failed["reason"], "NonZeroExitCode");
    }

    #[test]
    fn sizes_decode_from_the_resize_stream() {
        let s: Size = serde_json::from_str(r#"{"Width":120,"Height":40}"#).unwrap();
        assert_eq!(
            s,
            Size {
                width: 120,
                height: 40
            }
        );
    }
}
