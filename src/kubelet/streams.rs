//! Getting a streaming request's streams, over either transport the API
//! server and kubectl speak to kubelets: SPDY/3.1 (what API servers send
//! kubelets today, with `X-Stream-Protocol-Version` v4/v5.channel.k8s.io
//! or `portforward.k8s.io`) or the WebSocket channel protocol. Handlers
//! then see plain byte streams, whichever it was.

use super::spdy;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The SPDY protocols exec and attach speak (v4 and later: the exit
/// status is a `Status` on the error stream).
pub const EXEC_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The SPDY protocol of port-forward.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// How long a client has to open the streams it asked for (the kubelet's
/// default stream creation timeout).
pub const CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `req` asks to upgrade to SPDY/3.1.
pub fn is_spdy_request<B>(req: &Request<B>) -> bool {
    let has = |name: &str, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(want))
    };
    has("connection", "upgrade") && has("upgrade", "SPDY/3.1")
}

/// Picks the protocol from the client's `X-Stream-Protocol-Version`s (its
/// order of preference, as `httpstream.Handshake` does) and makes the 101
/// answer; 403 with the protocols this side accepts when none fits.
pub fn spdy_negotiate<B>(
    req: &Request<B>,
    supported: &[&str],
) -> Result<(Response<()>, String), Box<Response<String>>> {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    let Some(chosen) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        let body = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
        );
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::FORBIDDEN;
        for p in supported {
            if let Ok(v) = p.parse() {
                resp.headers_mut()
                    .append("x-accepted-stream-protocol-versions", v);
            }
        }
        return Err(Box::new(resp));
    };
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", chosen.as_str())
        .body(())
        .expect("static response parts");
    Ok((resp, chosen))
}

/// A SPDY stream shared between a reader or writer handed out and the
/// handler, which half-closes it properly at the end (a dropped stream
/// would otherwise be reset).
#[derive(Clone)]
pub struct Shared(pub Arc<spdy::Stream>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut s: &spdy::Stream = &self.0;
        Pin::new(&mut s).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut s: &spdy::Stream = &self.0;
        Pin::new(&mut s).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut s: &spdy::Stream = &self.0;
        Pin::new(&mut s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut s: &spdy::Stream = &self.0;
        Pin::new(&mut s).poll_shutdown(cx)
    }
}

/// The streams of an exec or attach request over SPDY, by `streamtype`.
#[derive(Default)]
pub struct RemoteStreams {
    /// `error`: where the Status goes.
    pub error: Option<Shared>,
    /// `stdin`.
    pub stdin: Option<Shared>,
    /// `stdout`.
    pub stdout: Option<Shared>,
    /// `stderr`.
    pub stderr: Option<Shared>,
    /// `resize`.
    pub resize: Option<Shared>,
}

/// Waits for the streams an exec/attach asked for (error always; stdin,
/// stdout, stderr as asked; resize with a terminal), as the kubelet does,
/// for at most [`CREATION_TIMEOUT`].
pub async fn remote_streams(
    incoming: &mut tokio::sync::mpsc::Receiver<spdy::Stream>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<RemoteStreams, String> {
    let mut got = RemoteStreams::default();
    let complete = |g: &RemoteStreams| {
        g.error.is_some()
            && (!stdin || g.stdin.is_some())
            && (!stdout || g.stdout.is_some())
            && (!stderr || g.stderr.is_some())
            && (!tty || g.resize.is_some())
    };
    let deadline = tokio::time::Instant::now() + CREATION_TIMEOUT;
    while !complete(&got) {
        let s = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err("the connection closed before the streams were created".into()),
            Err(_) => return Err("timed out waiting for client to create streams".into()),
        };
        let kind = s.header("streamtype").unwrap_or("").to_string();
        let slot = match kind.as_str() {
            "error" => &mut got.error,
            "stdin" => &mut got.stdin,
            "stdout" => &mut got.stdout,
            "stderr" => &mut got.stderr,
            "resize" => &mut got.resize,
            _ => {
                s.reset(spdy::RstStatus::REFUSED_STREAM);
                continue;
            }
        };
        *slot = Some(Shared(Arc::new(s)));
    }
    Ok(got)
}

/// Half-closes what this side writes, and lets go.
pub async fn finish(streams: Vec<Shared>) {
    use tokio::io::AsyncWriteExt;
    for mut s in streams {
        let _ = s.shutdown().await;
    }
}

/// A whole-body response from the negotiation's parts.
pub fn head(resp: Response<()>) -> Response<super::server::Body> {
    resp.map(|()| {
        http_body_util::Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    })
}

/// Serves port-forward over SPDY: each request (`requestid`) opens an
/// `error` and a `data` stream naming a `port`; the data stream is spliced
/// to that port on 127.0.0.1 (pods share the host's network), errors are
/// written to the error stream. Ends when the client closes.
pub async fn port_forward(
    conn: spdy::Connection,
    mut incoming: tokio::sync::mpsc::Receiver<spdy::Stream>,
    pod: String,
) {
    use std::collections::HashMap;
    use tokio::io::AsyncWriteExt;
    // requestid → (error, data) until both arrived.
    let mut pending: HashMap<String, (Option<Shared>, Option<Shared>)> = HashMap::new();
    while let Some(s) = incoming.recv().await {
        let id = s.header("requestid").unwrap_or("").to_string();
        let kind = s.header("streamtype").unwrap_or("").to_string();
        let port = s.header("port").and_then(|p| p.parse::<u16>().ok());
        let s = Shared(Arc::new(s));
        let entry = pending.entry(id.clone()).or_default();
        match kind.as_str() {
            "error" => entry.0 = Some(s),
            "data" => entry.1 = Some(s),
            _ => {
                s.0.reset(spdy::RstStatus::REFUSED_STREAM);
                continue;
            }
        }
        if pending.len() > 1000 {
            // A client that never completes its pairs.
            pending.clear();
        }
        let Some((Some(err), Some(data))) = pending.get(&id).map(|(e, d)| (e.clone(), d.clone()))
        else {
            continue;
        };
        pending.remove(&id);
        let pod = pod.clone();
        tokio::spawn(async move {
            let Some(port) = port else {
                let mut e = err.clone();
                let _ = e.write_all(b"invalid or missing port").await;
                finish(vec![err, data]).await;
                return;
            };
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(tcp) => {
                    let (mut r, mut w) = tcp.into_split();
                    let (mut from, mut to) = (data.clone(), data.clone());
                    let up = async {
                        let _ = tokio::io::copy(&mut from, &mut w).await;
                        let _ = w.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut r, &mut to).await;
                    };
                    tokio::join!(up, down);
                }
                Err(e) => {
                    let mut ew = err.clone();
                    let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                    let _ = ew.write_all(msg.as_bytes()).await;
                }
            }
            finish(vec![err, data]).await;
        });
    }
    conn.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/exec/ns/p/c");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn spdy_negotiation_follows_the_clients_preference() {
        let r = req(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v5.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ]);
        assert!(is_spdy_request(&r));
        let (resp, p) = spdy_negotiate(&r, &EXEC_PROTOCOLS).unwrap();
        assert_eq!(p, "v5.channel.k8s.io");
        assert_eq!(resp.status(), 101);
        assert_eq!(
            resp.headers()["x-stream-protocol-version"],
            "v5.channel.k8s.io"
        );
        let old = req(&[(
            "X-Stream-Protocol-Version",
            "v4.channel.k8s.io, v3.channel.k8s.io",
        )]);
        assert_eq!(
            spdy_negotiate(&old, &EXEC_PROTOCOLS).unwrap().1,
            "v4.channel.k8s.io"
        );
        let none = req(&[("X-Stream-Protocol-Version", "v3.channel.k8s.io")]);
        let refused = spdy_negotiate(&none, &EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.body().contains("unable to negotiate protocol"));
        assert!(!is_spdy_request(&req(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade")
        ])));
    }
}
