//! The running agent's answer to `unitlet pods`, over a Unix socket in the
//! state directory (`agent.sock`, root only).
//!
//! The agent has every pod's status in memory, kept by systemd's signals;
//! reading it there costs no systemd call. Without an agent, `unitlet pods`
//! reads systemd and the state directory itself, which takes a `GetAll` per
//! unit: 1.3 s at 2,000 pods, against a few milliseconds here. A connection
//! is the request; the answer is one JSON document, then the socket closes.

use crate::podview::PodRow;
use crate::runtime::Runtime;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// The socket's path in state directory `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.sock")
}

/// What a connection is answered.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Answer {
    pods: Vec<PodRow>,
}

/// Serves the pods of `rt` on `path` in a task of its own; a socket left by
/// an earlier agent is replaced. Failing to listen only costs `unitlet
/// pods` its speed: logged, not fatal.
pub fn spawn(path: PathBuf, rt: Runtime) {
    tokio::spawn(async move {
        if let Err(e) = serve(&path, rt).await {
            warn!(socket = %path.display(), error = %e, "cannot serve `unitlet pods` locally; it reads systemd instead");
        }
    });
}

async fn serve(path: &Path, rt: Runtime) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    // The statuses carry pod specs (environment values included): root only.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, socket = %path.display(), "local socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            if !rt.synced() {
                // Still adopting: closed unanswered, so the client reads
                // systemd itself rather than a partial list.
                return;
            }
            let answer = Answer {
                pods: rt.pod_views().into_iter().map(PodRow::from).collect(),
            };
            let body = match serde_json::to_vec(&answer) {
                Ok(b) => b,
                Err(e) => return warn!(error = %e, "local socket: cannot encode the pods"),
            };
            if let Err(e) = conn.write_all(&body).await {
                debug!(error = %e, "local socket: client went away");
            }
            let _ = conn.shutdown().await;
        });
    }
}

/// The running agent's pods, or `None` when no agent answers on `path`
/// (the caller then reads systemd itself).
pub async fn pods(path: &Path) -> Option<Vec<PodRow>> {
    let ask = async {
        let mut conn = tokio::net::UnixStream::connect(path).await.ok()?;
        let mut body = Vec::new();
        conn.read_to_end(&mut body).await.ok()?;
        match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => Some(a.pods),
            Err(e) => {
                debug!(error = %e, "the agent's answer is unreadable; reading systemd instead");
                None
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
}
