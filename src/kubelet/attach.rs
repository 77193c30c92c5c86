//! `kubectl attach` to a container run under the agent's tty-host (one
//! with `stdin` or `tty`; see `crate::ttyhost`): the caller's streams
//! relayed to the host's attach socket, which outlives any agent.

use super::exec::{Outcome, Streams};
use crate::ttyhost::{ClientInput, ClientOutput, HostMsg};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What an attach request is connected to.
pub enum Target {
    /// The container's journal, followed (containers without stdin or tty).
    Journal(crate::journal::LogQuery),
    /// The container's tty-host, attached to once the caller's streams are
    /// there (a request that fails before that must not count as a session
    /// that ended: with `stdinOnce` it would close the program's stdin).
    Host {
        /// Its attach socket.
        socket: PathBuf,
        /// Whether the caller's input goes to the program (the request
        /// asked for stdin and the container has it).
        stdin: bool,
    },
}

/// Whether a tty-host made `socket` (a container run with stdin or tty).
pub fn is_hosted(socket: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
}

/// Attaches to the tty-host on `socket` and [`relay`]s `streams`.
pub async fn run(socket: &Path, stdin: bool, streams: Streams) -> Outcome {
    match crate::ttyhost::connect(socket, stdin).await {
        Ok((input, output)) => relay(input, output, streams).await,
        // A host killed outright leaves its socket behind.
        Err(e) => Outcome::Failed(format!(
            "cannot attach to the container's stdin or terminal: {e}"
        )),
    }
}

/// Aborts a task when dropped (the relay's input side ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Relays until the program exits or the host ends the connection: the
/// caller's stdin and terminal sizes to the host, the program's output to
/// the caller (stderr to stderr without a terminal, if asked for). Like
/// the kubelet's attach, it reports success however the program ended
/// (clients learn the exit code from the pod's status). The caller's
/// connection ending is the caller's to watch: dropping this future
/// detaches.
pub async fn relay(input: ClientInput, mut output: ClientOutput, mut streams: Streams) -> Outcome {
    let mut stdin = streams.stdin.take();
    let mut resize = streams.resize.take();
    let _up = AbortOnDrop(tokio::spawn(async move {
        let mut input = input;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                r = async { stdin.as_mut().expect("guarded").read(&mut buf).await }, if stdin.is_some() => {
                    match r {
                        Ok(n) if n > 0 => {
                            if input.stdin(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        _ => {
                            stdin = None;
                            if input.close_stdin().await.is_err() {
                                break;
                            }
                        }
                    }
                }
                s = async { resize.as_mut().expect("guarded").recv().await }, if resize.is_some() => {
                    match s {
                        Some(s) => {
                            if input.resize(s.width, s.height).await.is_err() {
                                break;
                            }
                        }
                        None => resize = None,
                    }
                }
                // Nothing more to send: the connection stays open (closing
                // it would detach) until the relay ends.
                else => std::future::pending::<()>().await,
            }
        }
    }));
    loop {
        let (to, data) = match output.next().await {
            Ok(Some(HostMsg::Stdout(b))) => (streams.stdout.as_mut(), b),
            Ok(Some(HostMsg::Stderr(b))) => (streams.stderr.as_mut(), b),
            Ok(Some(HostMsg::Exit(code))) => {
                tracing::debug!(code, "attached program exited");
                break;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "attach: the host's stream broke");
                break;
            }
        };
        if let Some(to) = to {
            if write(to, &data).await.is_err() {
                break;
            }
        }
    }
    Outcome::Exited(0)
}

async fn write(to: &mut Box<dyn AsyncWrite + Send + Unpin>, data: &[u8]) -> std::io::Result<()> {
    to.write_all(data).await?;
    to.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::exec::Size;
    use crate::ttyhost::{ClientMsg, FrameReader};
    use tokio::io::AsyncReadExt;

    /// A fake host on a socket: records the client's frames, plays `script`.
    async fn fake_host(
        dir: &Path,
        script: Vec<HostMsg>,
    ) -> (std::path::PathBuf, tokio::task::JoinHandle<Vec<ClientMsg>>) {
        let path = dir.join("h.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut frames = FrameReader::new(r);
            let mut got = Vec::new();
            w.write_all(&[b'a', 0, 0, 0, 0]).await.unwrap();
            // Hello, then input "hi", its end and one size, before the script plays.
            while got.len() < 4 {
                let Some((k, p)) = frames.next().await.unwrap() else {
                    break;
                };
                got.push(ClientMsg::decode(k, p).unwrap());
            }
            for m in script {
                w.write_all(&m.encode()).await.unwrap();
            }
            got
        });
        (path, task)
    }

    #[tokio::test]
    async fn the_callers_streams_reach_the_host_and_its_output_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, host) = fake_host(
            dir.path(),
            vec![
                HostMsg::Stdout(b"out".to_vec()),
                HostMsg::Stderr(b"err".to_vec()),
                HostMsg::Exit(5),
                HostMsg::Stdout(b"after the end".to_vec()),
            ],
        )
        .await;
        let (mut caller_out, out) = tokio::io::duplex(1024);
        let (mut caller_err, err) = tokio::io::duplex(1024);
        let (size_tx, size_rx) = tokio::sync::mpsc::channel(1);
        size_tx
            .send(Size {
                width: 100,
                height: 30,
            })
            .await
            .unwrap();
        let streams = Streams {
            stdin: Some(Box::new(&b"hi"[..])),
            stdout: Some(Box::new(out)),
            stderr: Some(Box::new(err)),
            resize: Some(size_rx),
        };
        let outcome =
            tokio::time::timeout(std::time::Duration::from_secs(5), run(&path, true, streams))
                .await
                .unwrap();
        assert_eq!(outcome, Outcome::Exited(0), "attach reports success");
        let mut got = host.await.unwrap();
        assert_eq!(got.remove(0), ClientMsg::Hello { stdin: true });
        // Input and its end keep their order; the size comes when it comes.
        let resize = ClientMsg::Resize {
            cols: 100,
            rows: 30,
        };
        assert!(got.contains(&resize), "{got:?}");
        got.retain(|m| m != &resize);
        assert_eq!(
            got,
            [ClientMsg::Stdin(b"hi".to_vec()), ClientMsg::CloseStdin]
        );
        drop(size_tx);
        let (mut o, mut e) = (Vec::new(), Vec::new());
        caller_out.read_to_end(&mut o).await.unwrap();
        caller_err.read_to_end(&mut e).await.unwrap();
        assert_eq!(o, b"out", "nothing after the exit");
        assert_eq!(e, b"err");
    }

    #[tokio::test]
    async fn only_a_socket_counts_as_a_host() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_hosted(&dir.path().join("none.sock")));
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "").unwrap();
        assert!(!is_hosted(&file));
        // A socket nobody listens on any more (its host was killed): a
        // host, but attaching fails with a message rather than hanging.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(is_hosted(&stale));
        let streams = Streams {
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
        };
        match run(&stale, false, streams).await {
            Outcome::Failed(m) => assert!(m.contains("cannot attach"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
