//! The server side of Kubernetes' WebSocket "channel" protocols, which
//! `kubectl exec/attach/port-forward` (through the API server's proxy) and
//! the non-Go clients (Python, JavaScript, C#) speak to the kubelet.
//!
//! Every WebSocket message carries one channel's data: a binary message is
//! `[channel, data...]`; under the base64 protocols it is a text message
//! `"<'0' + channel><base64(data)>"`. Exec/attach use channels 0 stdin,
//! 1 stdout, 2 stderr, 3 error (a `Status`) and 4 resize (`{"Width":..,
//! "Height":..}`); port-forward uses a data channel `2*i` and an error
//! channel `2*i+1` per requested port.
//!
//! The semantics follow the Go implementation the kubelet runs
//! (`k8s.io/apimachinery/pkg/util/httpstream/wsstream.Conn`, used by the
//! kubelet's `remotecommand/websocket.go` and `portforward/websocket.go`):
//!
//! * the client's order of preference picks the subprotocol; no
//!   `Sec-WebSocket-Protocol` at all selects the protocol named `""`
//!   (binary, unversioned) when the handler lists it;
//! * messages for a channel number the layout does not have, or for a
//!   channel the server does not read, are dropped; a base64 payload that
//!   does not decode drops that message only;
//! * under `v5.channel.k8s.io` the message `[255, channel]` half-closes that
//!   channel's input (its reader sees EOF); a malformed close signal or one
//!   for a channel outside the layout ends the connection;
//! * the idle timeout counts data messages in either direction, not pings,
//!   as Go's read/write deadlines do.
//!
//! Where this module departs from Go it says so at the item.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, StreamExt};
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError as WsProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// `v5.channel.k8s.io`: binary framing plus the client's stream-close
/// signal, so `kubectl exec` can end a command's stdin without ending the
/// session. Upstream kubelets leave it to the API server to translate v5
/// into SPDY; serving it here lets v5 clients reach unitlet directly.
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";
/// `v4.channel.k8s.io`: binary framing; the error channel carries a JSON
/// `Status` (exit codes) rather than plain text.
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// `v4.base64.channel.k8s.io`: as [`V4_CHANNEL`] for clients (browsers)
/// that can only handle text messages.
pub const V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";
/// `channel.k8s.io`: the original binary protocol; its error channel carries
/// the error text only.
pub const CHANNEL: &str = "channel.k8s.io";
/// `base64.channel.k8s.io`: the original protocol with base64 text framing.
pub const BASE64_CHANNEL: &str = "base64.channel.k8s.io";
/// The name that stands for "the client asked for no subprotocol"; Go's
/// kubelet accepts such clients with unversioned binary framing.
pub const NO_PROTOCOL: &str = "";

/// What the kubelet offers for exec and attach (its `createWebSocketStreams`
/// map), plus [`V5_CHANNEL`].
pub const EXEC_PROTOCOLS: &[&str] = &[
    V5_CHANNEL,
    V4_CHANNEL,
    V4_BASE64_CHANNEL,
    BASE64_CHANNEL,
    CHANNEL,
    NO_PROTOCOL,
];
/// What the kubelet offers for port-forward over WebSockets (its
/// `handleWebSocketStreams` map). `portforward.k8s.io` is a SPDY protocol
/// and the `SPDY/3.1+portforward.k8s.io` tunnel is the API server's
/// business, so neither is listed.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &[V4_CHANNEL, V4_BASE64_CHANNEL, NO_PROTOCOL];

/// Exec/attach channel of the command's standard input (client to server).
pub const STDIN: u8 = 0;
/// Exec/attach channel of the command's standard output.
pub const STDOUT: u8 = 1;
/// Exec/attach channel of the command's standard error.
pub const STDERR: u8 = 2;
/// Exec/attach channel on which the server reports the outcome (a `Status`
/// under v4/v5, plain text before v4).
pub const ERROR: u8 = 3;
/// Exec/attach channel on which the client sends terminal sizes.
pub const RESIZE: u8 = 4;
/// The first byte of a v5 stream-close signal `[255, channel]`; 255 is
/// therefore never a data channel.
pub const CLOSE_SIGNAL: u8 = 255;

/// Go's `golang.org/x/net/websocket` limit (`DefaultMaxPayloadBytes`), which
/// is what the kubelet enforces per message; kept so that clients writing a
/// large stdin chunk in one message keep working.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 << 20;
/// The kubelet's default `streamingConnectionIdleTimeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);

/// How many inbound messages may wait per channel before the connection
/// stops reading: Go hands data over through an unbuffered pipe, so a slow
/// consumer holds back the client; a little slack keeps throughput up while
/// bounding memory to a few messages per channel.
const READ_QUEUE: usize = 4;
/// Outbound messages that may be queued for the socket before writers wait.
const WRITE_QUEUE: usize = 16;
/// Messages written between two flushes of the socket.
const WRITE_BATCH: usize = 64;

/// How a protocol frames channel data, which the caller never sees but
/// tests and logs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Binary messages `[channel, data...]`.
    Binary,
    /// Text messages `'0' + channel` followed by the base64 of the data.
    Base64,
}

/// The negotiated subprotocol. The caller needs the version to pick how it
/// reports the outcome on [`ERROR`]: a JSON `Status` from v4 on, the bare
/// error message before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The name echoed in `Sec-WebSocket-Protocol`; [`NO_PROTOCOL`] when the
    /// client asked for none (no header is sent back then).
    pub name: &'static str,
    /// How channel data travels.
    pub framing: Framing,
    /// 1 for the unversioned protocols, else 4 or 5.
    pub version: u8,
}

impl Protocol {
    /// Maps a subprotocol name to its framing and version; `None` for names
    /// this module cannot serve, so that [`negotiate`] skips them.
    pub fn from_name(name: &str) -> Option<Protocol> {
        let (name, framing, version) = match name {
            V5_CHANNEL => (V5_CHANNEL, Framing::Binary, 5),
            V4_CHANNEL => (V4_CHANNEL, Framing::Binary, 4),
            V4_BASE64_CHANNEL => (V4_BASE64_CHANNEL, Framing::Base64, 4),
            CHANNEL => (CHANNEL, Framing::Binary, 1),
            BASE64_CHANNEL => (BASE64_CHANNEL, Framing::Base64, 1),
            NO_PROTOCOL => (NO_PROTOCOL, Framing::Binary, 1),
            _ => return None,
        };
        Some(Protocol {
            name,
            framing,
            version,
        })
    }

    /// Whether the client may half-close a channel with `[255, channel]`.
    pub fn has_close_signal(&self) -> bool {
        self.version >= 5
    }

    /// Whether [`ERROR`] carries a JSON `Status` (v4 and later) rather than
    /// the bare error text.
    pub fn has_status(&self) -> bool {
        self.version >= 4
    }
}

/// Whether a request asks for a WebSocket upgrade, used to route exec,
/// attach and port-forward requests to this module rather than to SPDY.
///
/// Like Go's `wsstream.IsWebSocketRequest` this looks at the headers only
/// (`Upgrade: websocket`, and `upgrade` among the `Connection` tokens); the
/// method is checked by [`negotiate`], which answers a non-GET with 405 as
/// Go does, instead of letting it fall through to the SPDY path.
pub fn is_websocket_request<B>(req: &Request<B>) -> bool {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let connection = req.headers().get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    upgrade && connection
}

/// Validates a WebSocket handshake and picks the subprotocol.
///
/// The first protocol in the client's `Sec-WebSocket-Protocol` list (all
/// header lines, comma-separated) that `supported` contains wins, as in Go;
/// names in `supported` that this module does not know are never chosen,
/// and unknown client entries (such as the
/// `base64url.bearer.authorization.k8s.io.<token>` credential some clients
/// smuggle in this header) are skipped. With no header the client is
/// treated as asking for [`NO_PROTOCOL`].
///
/// On success the caller sends the returned 101 head (body mapped to an
/// empty one), then passes the upgraded connection to [`channels`]. The
/// refusals use the status codes of Go's `x/net/websocket` server: 405 for
/// a non-GET, 400 for a missing upgrade, a missing key or a version other
/// than 13 (with `Sec-WebSocket-Version: 13`), 403 when no offered
/// subprotocol is acceptable; the body says why.
// The refusal is handed straight back as the HTTP answer, once per request;
// boxing it would only cost the caller an unwrap.
#[allow(clippy::result_large_err)]
pub fn negotiate<B>(
    req: &Request<B>,
    supported: &[&str],
) -> Result<(Response<()>, Protocol), Response<String>> {
    if req.method() != Method::GET {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("websocket upgrade needs GET, not {}", req.method()),
        ));
    }
    if !is_websocket_request(req) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "not a websocket upgrade: needs Upgrade: websocket and Connection: upgrade".into(),
        ));
    }
    let key = match req.headers().get(SEC_WEBSOCKET_KEY).map(|v| v.as_bytes()) {
        Some(key) if !key.trim_ascii().is_empty() => key.trim_ascii(),
        _ => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key".into(),
            ))
        }
    };
    let version = req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes());
    if version.map(<[u8]>::trim_ascii) != Some(b"13".as_slice()) {
        let mut resp = refuse(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: only 13 is supported".into(),
        );
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(resp);
    }

    let mut requested: Vec<String> = Vec::new();
    for value in req.headers().get_all(SEC_WEBSOCKET_PROTOCOL) {
        // Non-ASCII junk must not read as "no protocol requested".
        let value = String::from_utf8_lossy(value.as_bytes());
        requested.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    let chosen = if requested.is_empty() {
        supported
            .contains(&NO_PROTOCOL)
            .then(|| Protocol::from_name(NO_PROTOCOL))
            .flatten()
    } else {
        requested.iter().find_map(|p| {
            if supported.contains(&p.as_str()) {
                Protocol::from_name(p)
            } else {
                None
            }
        })
    };
    let Some(protocol) = chosen else {
        let offered: Vec<&str> = supported
            .iter()
            .copied()
            .filter(|p| !p.is_empty() && Protocol::from_name(p).is_some())
            .collect();
        let asked = if requested.is_empty() {
            "none".to_owned()
        } else {
            requested.join(", ")
        };
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "requested websocket protocol(s) not supported: {asked}; supported: {}",
                offered.join(", ")
            ),
        ));
    };

    let accept = match HeaderValue::try_from(derive_accept_key(key)) {
        Ok(v) => v,
        Err(_) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad Sec-WebSocket-Key".into(),
            ))
        }
    };
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if !protocol.name.is_empty() {
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol.name),
        );
    }
    Ok((resp, protocol))
}

fn refuse(status: StatusCode, reason: String) -> Response<String> {
    let mut resp = Response::new(reason);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Which way a channel carries data, as Go's `wsstream.ChannelType`: the
/// layout decides which channel numbers exist (messages beyond it are
/// dropped) and which of them get a reader or a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The channel exists but is unused: client data is dropped and no
    /// writer is handed out.
    Ignore,
    /// Client to server only.
    Read,
    /// Server to client only; client data on it is dropped.
    Write,
    /// Both ways.
    ReadWrite,
}

impl Direction {
    fn reads(self) -> bool {
        matches!(self, Direction::Read | Direction::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Direction::Write | Direction::ReadWrite)
    }
}

/// The exec/attach layout the kubelet uses: stdin readable if requested,
/// stdout/stderr writable if requested, error always writable, resize
/// always readable.
pub fn exec_layout(stdin: bool, stdout: bool, stderr: bool) -> [Direction; 5] {
    let pick = |on: bool, dir: Direction| if on { dir } else { Direction::Ignore };
    [
        pick(stdin, Direction::Read),
        pick(stdout, Direction::Write),
        pick(stderr, Direction::Write),
        Direction::Write,
        Direction::Read,
    ]
}

/// The port-forward layout: per port a read-write data channel `2*i` and a
/// write-only error channel `2*i+1`. Channel numbers are one byte and 255
/// is reserved, so at most 127 ports can be served on one connection;
/// callers should refuse more (extra ports get no channels).
pub fn port_forward_layout(ports: usize) -> Vec<Direction> {
    let mut layout = Vec::with_capacity(ports.min(127) * 2);
    for _ in 0..ports.min(127) {
        layout.push(Direction::ReadWrite);
        layout.push(Direction::Write);
    }
    layout
}

/// Limits for one connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest message (and frame) accepted from the client, channel byte
    /// included; a larger one closes the connection with 1009. Outbound
    /// writes are also cut into messages of at most this size.
    pub max_message_size: usize,
    /// Close the connection after this long without a data message either
    /// way; `None` never times out (the kubelet's `0`).
    pub idle_timeout: Option<Duration>,
    /// How long closing may take (queueing the close, the close handshake,
    /// draining the socket) before the connection is simply dropped.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a connection ended, so the handler can log it and stop the work
/// behind a connection the client has gone from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server closed it: [`ChannelConn::close`], or every writer and the
    /// [`ChannelConn`] were dropped.
    Closed,
    /// The client sent a close frame (with this code, if any).
    ClientClosed(Option<u16>),
    /// The transport failed or ended without a close frame.
    Disconnected,
    /// No data message either way for [`Config::idle_timeout`].
    IdleTimeout,
    /// The client sent a message over [`Config::max_message_size`].
    MessageTooBig,
    /// The client broke the WebSocket or channel protocol.
    ProtocolError(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed => f.write_str("closed by the server"),
            Ended::ClientClosed(Some(code)) => write!(f, "closed by the client ({code})"),
            Ended::ClientClosed(None) => f.write_str("closed by the client"),
            Ended::Disconnected => f.write_str("connection lost"),
            Ended::IdleTimeout => f.write_str("idle timeout"),
            Ended::MessageTooBig => f.write_str("message too big"),
            Ended::ProtocolError(why) => write!(f, "protocol error: {why}"),
        }
    }
}

enum Outbound {
    Data {
        msg: Message,
        ack: Option<oneshot::Sender<()>>,
    },
    Close,
}

/// A multiplexed connection after the upgrade: hands out one reader per
/// readable channel and one writer per writable channel of the layout.
///
/// The connection lives in a background task until the client closes it,
/// it fails or idles out, [`ChannelConn::close`] is called, or this value
/// and every [`ChannelWriter`] are dropped (then it closes with 1000 after
/// sending what was queued). When it ends, readers see EOF (Go's pipes are
/// closed the same way; use [`ChannelConn::closed`] to tell a client's
/// half-close from a lost connection) and writers fail with `BrokenPipe`.
///
/// Nothing is sent when the connection opens: the kubelet's initial
/// messages are the caller's to send, with [`ChannelConn::send_exec_ready`]
/// or [`ChannelConn::send_port_prefixes`].
pub struct ChannelConn {
    protocol: Protocol,
    layout: Vec<Direction>,
    max_chunk: usize,
    readers: Vec<Option<ChannelReader>>,
    writers: Vec<Option<ChannelWriter>>,
    out: mpsc::Sender<Outbound>,
    ended: watch::Receiver<Option<Ended>>,
    task: JoinHandle<()>,
    close_timeout: Duration,
}

/// Starts serving the channel protocol on an upgraded connection (for hyper:
/// `TokioIo::new(hyper::upgrade::on(req).await?)`). `layout[n]` describes
/// channel `n`; entries past 254 are ignored. Must run inside a Tokio
/// runtime, which the connection's task is spawned on.
pub async fn channels<IO>(
    io: IO,
    protocol: Protocol,
    layout: &[Direction],
    cfg: Config,
) -> ChannelConn
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let layout: Vec<Direction> = layout.iter().copied().take(255).collect();
    let max_message = cfg.max_message_size.max(2);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let max_chunk = max_chunk(protocol.framing, max_message);

    let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
    let (ended_tx, ended_rx) = watch::channel(None);
    let mut inbound = Vec::with_capacity(layout.len());
    let mut readers = Vec::with_capacity(layout.len());
    let mut writers = Vec::with_capacity(layout.len());
    for (n, dir) in layout.iter().enumerate() {
        let channel = n as u8;
        if dir.reads() {
            let (tx, rx) = mpsc::channel(READ_QUEUE);
            inbound.push(Some(tx));
            readers.push(Some(ChannelReader {
                channel,
                rx,
                buf: Bytes::new(),
            }));
        } else {
            inbound.push(None);
            readers.push(None);
        }
        writers.push(dir.writes().then(|| ChannelWriter {
            channel,
            framing: protocol.framing,
            max_chunk,
            out: out_tx.clone(),
            reserving: None,
            last_ack: None,
            shut: false,
        }));
    }
    let task = tokio::spawn(drive(ws, out_rx, inbound, protocol, cfg.clone(), ended_tx));
    ChannelConn {
        protocol,
        layout,
        max_chunk,
        readers,
        writers,
        out: out_tx,
        ended: ended_rx,
        task,
        close_timeout: cfg.close_timeout,
    }
}

fn max_chunk(framing: Framing, max_message: usize) -> usize {
    let room = max_message.saturating_sub(1);
    match framing {
        Framing::Binary => room.max(1),
        Framing::Base64 => (room / 4 * 3).max(1),
    }
}

impl ChannelConn {
    /// The negotiated protocol, for choosing the status format.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes the reader of `channel`: `None` if the layout does not read
    /// that channel or it was taken already. Data for a reader that is
    /// never taken waits in its queue and, once that fills, holds up the
    /// whole connection (as an unread pipe does in Go), so take the readers
    /// you do not use (resize without a TTY) and drop them: data for a
    /// dropped reader is discarded.
    pub fn reader(&mut self, channel: u8) -> Option<ChannelReader> {
        self.readers.get_mut(usize::from(channel))?.take()
    }

    /// Takes the writer of `channel`: `None` if the layout does not write
    /// that channel or it was taken already.
    pub fn writer(&mut self, channel: u8) -> Option<ChannelWriter> {
        self.writers.get_mut(usize::from(channel))?.take()
    }

    /// Sends `data` on `channel` as one message (several if it exceeds the
    /// message size), even when empty, and waits until it was written to
    /// the socket. Like Go, data for a channel the layout does not write is
    /// silently dropped.
    pub async fn send(&self, channel: u8, data: &[u8]) -> io::Result<()> {
        let writable = self
            .layout
            .get(usize::from(channel))
            .is_some_and(|d| d.writes());
        if !writable {
            return Ok(());
        }
        send_message(
            &self.out,
            self.protocol.framing,
            channel,
            self.max_chunk,
            data,
        )
        .await
    }

    /// The kubelet's "connection established" notice for exec/attach: one
    /// empty message on the lowest writable of stdout, stderr and error.
    /// Clients wait for it, so send it right after [`channels`].
    pub async fn send_exec_ready(&self) -> io::Result<()> {
        for channel in [STDOUT, STDERR, ERROR] {
            if self
                .layout
                .get(usize::from(channel))
                .is_some_and(|d| d.writes())
            {
                return self.send(channel, &[]).await;
            }
        }
        Ok(())
    }

    /// The kubelet's port-forward preamble: for port `i`, the port as a
    /// little-endian u16 on data channel `2*i`, then on error channel
    /// `2*i+1` (base64-encoded under the base64 protocols, like any data).
    /// Clients read these two bytes off each channel before the stream
    /// proper, so send them before anything else.
    pub async fn send_port_prefixes(&self, ports: &[u16]) -> io::Result<()> {
        for (i, port) in ports.iter().enumerate().take(127) {
            let bytes = port.to_le_bytes();
            let data = (2 * i) as u8;
            self.send(data, &bytes).await?;
            self.send(data + 1, &bytes).await?;
        }
        Ok(())
    }

    /// Waits until the connection has ended, for whatever reason; returns at
    /// once if it already has.
    pub async fn closed(&self) -> Ended {
        let mut rx = self.ended.clone();
        let ended = match rx.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone(),
            Err(_) => None,
        };
        ended.unwrap_or(Ended::Disconnected)
    }

    /// Closes the connection with 1000 after everything queued so far (from
    /// any writer) has been sent, and waits for the close handshake, bounded
    /// by [`Config::close_timeout`]. Returns why the connection ended (an
    /// earlier end, such as the client's close, wins).
    pub async fn close(self) -> Ended {
        let ChannelConn {
            out,
            ended,
            mut task,
            close_timeout,
            readers,
            writers,
            ..
        } = self;
        drop((readers, writers));
        let queued = tokio::time::timeout(close_timeout, out.send(Outbound::Close)).await;
        drop(out);
        let finished = match queued {
            Ok(_) => tokio::time::timeout(close_timeout * 2, &mut task).await,
            Err(elapsed) => Err(elapsed),
        };
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
            Err(_) => task.abort(),
        }
        let ended = ended.borrow().clone();
        ended.unwrap_or(Ended::Closed)
    }
}

impl fmt::Debug for ChannelConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelConn")
            .field("protocol", &self.protocol)
            .field("layout", &self.layout)
            .field("ended", &*self.ended.borrow())
            .finish_non_exhaustive()
    }
}

/// What the client sends on one channel. EOF comes when the client
/// half-closes the channel (v5), closes or loses the connection, or the
/// connection ends for any other reason.
pub struct ChannelReader {
    channel: u8,
    rx: mpsc::Receiver<Bytes>,
    buf: Bytes,
}

impl ChannelReader {
    /// The channel number, for logs.
    pub fn channel(&self) -> u8 {
        self.channel
    }
}

impl fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReader")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !self.buf.is_empty() {
                let n = buf.remaining().min(self.buf.len());
                buf.put_slice(&self.buf[..n]);
                self.buf = self.buf.slice(n..);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(chunk) => self.buf = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

type Reserve = Pin<
    Box<
        dyn Future<Output = Result<OwnedPermit<Outbound>, mpsc::error::SendError<()>>>
            + Send
            + Sync
            + 'static,
    >,
>;

/// What the server sends on one channel. Each `poll_write` becomes one
/// message holding what it accepted (at most the message size); an empty
/// write sends nothing, use [`ChannelWriter::send_message`] for an empty
/// message. `flush` waits until the writes so far reached the socket;
/// `shutdown` flushes and then refuses further writes, with nothing sent
/// to the client (the protocols have no server-side half-close).
pub struct ChannelWriter {
    channel: u8,
    framing: Framing,
    max_chunk: usize,
    out: mpsc::Sender<Outbound>,
    reserving: Option<Reserve>,
    last_ack: Option<oneshot::Receiver<()>>,
    shut: bool,
}

impl ChannelWriter {
    /// The channel number, for logs.
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// Sends `data` as one message (several if it exceeds the message
    /// size), even when empty, and waits until it was written to the
    /// socket.
    pub async fn send_message(&mut self, data: &[u8]) -> io::Result<()> {
        if self.shut {
            return Err(broken());
        }
        std::future::poll_fn(|cx| self.poll_flush_acks(cx)).await?;
        send_message(&self.out, self.framing, self.channel, self.max_chunk, data).await
    }

    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<OwnedPermit<Outbound>>> {
        if self.reserving.is_none() {
            match self.out.clone().try_reserve_owned() {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(mpsc::error::TrySendError::Closed(_)) => return Poll::Ready(Err(broken())),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.reserving = Some(Box::pin(self.out.clone().reserve_owned()));
                }
            }
        }
        let Some(reserving) = self.reserving.as_mut() else {
            return Poll::Ready(Err(broken()));
        };
        let res = ready!(reserving.as_mut().poll(cx));
        self.reserving = None;
        Poll::Ready(res.map_err(|_| broken()))
    }

    fn poll_flush_acks(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(ack) = self.last_ack.as_mut() {
            let res = ready!(Pin::new(ack).poll(cx));
            self.last_ack = None;
            if res.is_err() {
                return Poll::Ready(Err(broken()));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("channel", &self.channel)
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Err(broken()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let permit = ready!(this.poll_permit(cx))?;
        let n = buf.len().min(this.max_chunk);
        let (ack, acked) = oneshot::channel();
        permit.send(Outbound::Data {
            msg: encode(this.framing, this.channel, &buf[..n]),
            ack: Some(ack),
        });
        this.last_ack = Some(acked);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_acks(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = ready!(self.poll_flush_acks(cx));
        self.shut = true;
        Poll::Ready(res)
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "websocket connection closed")
}

async fn send_message(
    out: &mpsc::Sender<Outbound>,
    framing: Framing,
    channel: u8,
    max_chunk: usize,
    data: &[u8],
) -> io::Result<()> {
    let mut rest = data;
    loop {
        let (chunk, tail) = rest.split_at(rest.len().min(max_chunk));
        let (ack, acked) = oneshot::channel();
        out.send(Outbound::Data {
            msg: encode(framing, channel, chunk),
            ack: Some(ack),
        })
        .await
        .map_err(|_| broken())?;
        rest = tail;
        if rest.is_empty() {
            // The queue is FIFO: the last message written means all were.
            return acked.await.map_err(|_| broken());
        }
    }
}

fn encode(framing: Framing, channel: u8, data: &[u8]) -> Message {
    match framing {
        Framing::Binary => {
            let mut msg = Vec::with_capacity(data.len() + 1);
            msg.push(channel);
            msg.extend_from_slice(data);
            Message::Binary(msg.into())
        }
        Framing::Base64 => {
            let mut msg = String::with_capacity(data.len().div_ceil(3) * 4 + 2);
            // Go writes string('0'+num): a byte that wraps, as a code point.
            msg.push(char::from(b'0'.wrapping_add(channel)));
            base64_encode_into(&mut msg, data);
            Message::Text(msg.into())
        }
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode_into(out: &mut String, data: &[u8]) {
    for chunk in data.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(BASE64_ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
}

fn base64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes standard, padded base64 as Go's `base64.StdEncoding.Decode`
/// does: CR and LF are skipped, padding is required, non-zero bits after the
/// last byte are tolerated.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = input
        .iter()
        .copied()
        .filter(|&c| c != b'\r' && c != b'\n')
        .collect();
    if !clean.len().is_multiple_of(4) {
        return None;
    }
    let quads = clean.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in clean.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | base64_value(c)?;
        }
        n <<= 6 * pad as u32;
        let [_, a, b, c] = n.to_be_bytes();
        out.push(a);
        if pad < 2 {
            out.push(b);
        }
        if pad < 1 {
            out.push(c);
        }
    }
    Some(out)
}

struct Activity(Mutex<Instant>);

impl Activity {
    fn touch(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Instant::now();
        }
    }

    fn last(&self) -> Instant {
        match self.0.lock() {
            Ok(last) => *last,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// How the serving loops ended, and so what closing still needs.
enum Stop {
    /// Send this close frame, then wait for the client's reply unless the
    /// WebSocket reader already failed (`readable` false).
    Close {
        code: CloseCode,
        reason: &'static str,
        ended: Ended,
        readable: bool,
    },
    /// The client sent a close frame; our reply still has to go out.
    PeerClosed(Option<u16>),
    /// The transport is gone; nothing more can be said.
    Gone,
}

impl Stop {
    fn ended(&self) -> Ended {
        match self {
            Stop::Close { ended, .. } => ended.clone(),
            Stop::PeerClosed(code) => Ended::ClientClosed(*code),
            Stop::Gone => Ended::Disconnected,
        }
    }

    fn protocol_error(reason: &'static str) -> Stop {
        Stop::Close {
            code: CloseCode::Protocol,
            reason,
            ended: Ended::ProtocolError(reason.to_owned()),
            readable: true,
        }
    }
}

type WsSink<IO> = SplitSink<WebSocketStream<IO>, Message>;
type WsSource<IO> = SplitStream<WebSocketStream<IO>>;

async fn drive<IO>(
    ws: WebSocketStream<IO>,
    mut out: mpsc::Receiver<Outbound>,
    mut inbound: Vec<Option<mpsc::Sender<Bytes>>>,
    protocol: Protocol,
    cfg: Config,
    ended: watch::Sender<Option<Ended>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let activity = Activity(Mutex::new(Instant::now()));
    let stop = {
        let reading = read_loop(&mut stream, &mut inbound, protocol, &activity);
        let writing = write_loop(&mut sink, &mut out, &activity);
        let idling = idle_watch(&activity, cfg.idle_timeout);
        tokio::select! {
            stop = reading => stop,
            stop = writing => stop,
            stop = idling => stop,
        }
    };
    // Readers see EOF; queued and future writes fail.
    inbound.clear();
    out.close();
    while out.try_recv().is_ok() {}
    let why = stop.ended();
    tracing::debug!(protocol = protocol.name, ended = %why, "websocket channel connection ended");
    ended.send_replace(Some(why));
    let _ = tokio::time::timeout(cfg.close_timeout, finish(sink, stream, stop)).await;
}

async fn read_loop<IO>(
    stream: &mut WsSource<IO>,
    inbound: &mut [Option<mpsc::Sender<Bytes>>],
    protocol: Protocol,
    activity: &Activity,
) -> Stop
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let data: Bytes = match stream.next().await {
            None => return Stop::Gone,
            Some(Err(err)) => return read_error(err),
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(text))) => text.into(),
            Some(Ok(Message::Close(frame))) => {
                return Stop::PeerClosed(frame.map(|f| u16::from(f.code)))
            }
            // Pings are answered by tungstenite; neither counts as activity.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
        };
        activity.touch();
        let Some(&first) = data.first() else {
            continue;
        };
        if protocol.has_close_signal() && first == CLOSE_SIGNAL {
            if data.len() != 2 {
                return Stop::protocol_error("close signal must name exactly one channel");
            }
            let channel = usize::from(data[1]);
            match inbound.get_mut(channel) {
                Some(slot) => {
                    tracing::trace!(channel, "client half-closed channel");
                    *slot = None;
                }
                None => return Stop::protocol_error("close signal for an unknown channel"),
            }
            continue;
        }
        let channel = match protocol.framing {
            Framing::Binary => first,
            Framing::Base64 => first.wrapping_sub(b'0'),
        };
        let Some(slot) = inbound.get_mut(usize::from(channel)) else {
            tracing::trace!(channel, "dropping message for a channel outside the layout");
            continue;
        };
        let Some(tx) = slot.as_ref() else {
            continue;
        };
        let payload = match protocol.framing {
            Framing::Binary => data.slice(1..),
            Framing::Base64 => match base64_decode(&data[1..]) {
                Some(decoded) => Bytes::from(decoded),
                None => {
                    tracing::debug!(channel, "dropping message with invalid base64");
                    continue;
                }
            },
        };
        // An empty read would look like EOF to the reader.
        if payload.is_empty() {
            continue;
        }
        if tx.send(payload).await.is_err() {
            // The handler dropped the reader: drop its data from now on.
            *slot = None;
        }
    }
}

fn read_error(err: WsError) -> Stop {
    match err {
        WsError::Capacity(_) => Stop::Close {
            code: CloseCode::Size,
            reason: "message too big",
            ended: Ended::MessageTooBig,
            readable: false,
        },
        WsError::Protocol(WsProtocolError::ResetWithoutClosingHandshake) => Stop::Gone,
        WsError::Protocol(err) => Stop::Close {
            code: CloseCode::Protocol,
            reason: "protocol error",
            ended: Ended::ProtocolError(err.to_string()),
            readable: false,
        },
        WsError::Utf8(err) => Stop::Close {
            code: CloseCode::Invalid,
            reason: "invalid UTF-8 in a text message",
            ended: Ended::ProtocolError(format!("invalid UTF-8: {err}")),
            readable: false,
        },
        WsError::AttackAttempt => Stop::Close {
            code: CloseCode::Policy,
            reason: "attack attempt",
            ended: Ended::ProtocolError("attack attempt".into()),
            readable: false,
        },
        _ => Stop::Gone,
    }
}

async fn write_loop<S>(
    sink: &mut S,
    out: &mut mpsc::Receiver<Outbound>,
    activity: &Activity,
) -> Stop
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let normal = Stop::Close {
        code: CloseCode::Normal,
        reason: "",
        ended: Ended::Closed,
        readable: true,
    };
    let mut acks = Vec::new();
    loop {
        // Every sender gone: nobody can write any more, so end cleanly.
        let Some(first) = out.recv().await else {
            return normal;
        };
        let mut next = Some(first);
        let mut closing = false;
        let mut batch = 0;
        while let Some(item) = next.take() {
            match item {
                Outbound::Close => {
                    closing = true;
                    break;
                }
                Outbound::Data { msg, ack } => {
                    activity.touch();
                    if sink.feed(msg).await.is_err() {
                        return Stop::Gone;
                    }
                    acks.extend(ack);
                }
            }
            batch += 1;
            if batch < WRITE_BATCH {
                next = out.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            return Stop::Gone;
        }
        activity.touch();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closing {
            return normal;
        }
    }
}

async fn idle_watch(activity: &Activity, limit: Option<Duration>) -> Stop {
    let Some(limit) = limit.filter(|l| !l.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        let deadline = activity.last() + limit;
        if Instant::now() >= deadline {
            return Stop::Close {
                code: CloseCode::Normal,
                reason: "idle timeout",
                ended: Ended::IdleTimeout,
                readable: true,
            };
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// The close handshake, then the end of the transport. When the handshake
/// could not complete (the client's data could not be parsed any more), the
/// socket is shut down for writing and drained until the client hangs up,
/// so that unread client data cannot turn the close into a reset that
/// would discard the last messages (the close frame) on their way.
async fn finish<IO>(mut sink: WsSink<IO>, mut stream: WsSource<IO>, stop: Stop)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let completed = match stop {
        Stop::Gone => return,
        Stop::Close {
            code,
            reason,
            readable,
            ..
        } => {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            if sink.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
            // Up to the client's reply: the stream ends cleanly after it.
            readable && drain(&mut stream).await
        }
        Stop::PeerClosed(_) => {
            // Reading on sends tungstenite's queued reply.
            let _ = drain(&mut stream).await;
            let _ = sink.flush().await;
            true
        }
    };
    let Ok(mut ws) = sink.reunite(stream) else {
        return;
    };
    let io = ws.get_mut();
    let _ = io.shutdown().await;
    if !completed {
        let mut scratch = [0u8; 4096];
        while let Ok(1..) = io.read(&mut scratch).await {}
    }
}

/// Reads and discards until the stream ends; true if it ended cleanly.
async fn drain<IO>(stream: &mut WsSource<IO>) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(_)) => return false,
            None => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;
    use tokio::io::DuplexStream;
    use tokio::time::timeout;

    type Client = WebSocketStream<DuplexStream>;

    const T: Duration = Duration::from_secs(5);

    fn request(protocols: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method("GET")
            .uri("/exec/ns/pod/ctr?command=sh")
            .header("Host", "node:10250")
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13");
        if let Some(p) = protocols {
            b = b.header("Sec-WebSocket-Protocol", p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn detects_websocket_requests() {
        assert!(is_websocket_request(&request(None)));
        let plain = Request::builder().uri("/exec").body(()).unwrap();
        assert!(!is_websocket_request(&plain));
        let spdy = Request::builder()
            .header("Connection", "Upgrade")
            .header("Upgrade", "SPDY/3.1")
            .body(())
            .unwrap();
        assert!(!is_websocket_request(&spdy));
        let no_conn = Request::builder()
            .header("Upgrade", "WebSocket")
            .body(())
            .unwrap();
        assert!(!is_websocket_request(&no_conn));
    }

    #[test]
    fn negotiation_follows_client_preference() {
        let (resp, p) = negotiate(
            &request(Some("v4.channel.k8s.io, v5.channel.k8s.io")),
            EXEC_PROTOCOLS,
        )
        .unwrap();
        assert_eq!(p.name, V4_CHANNEL);
        assert_eq!(p.version, 4);
        assert_eq!(p.framing, Framing::Binary);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455's worked example.
        assert_eq!(
            resp.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(resp.headers()[SEC_WEBSOCKET_PROTOCOL], "v4.channel.k8s.io");
        assert_eq!(resp.headers()[UPGRADE], "websocket");
        assert_eq!(resp.headers()[CONNECTION], "Upgrade");

        // A bearer-token pseudo protocol first, the real ones over two lines.
        let mut req = request(Some(
            "base64url.bearer.authorization.k8s.io.dG9rZW4, v5.channel.k8s.io",
        ));
        req.headers_mut().append(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        let (_, p) = negotiate(&req, EXEC_PROTOCOLS).unwrap();
        assert_eq!(p.name, V5_CHANNEL);
        assert!(p.has_close_signal());

        let (_, p) = negotiate(&request(Some("v4.base64.channel.k8s.io")), EXEC_PROTOCOLS).unwrap();
        assert_eq!((p.framing, p.version), (Framing::Base64, 4));
        let (_, p) = negotiate(&request(Some("base64.channel.k8s.io")), EXEC_PROTOCOLS).unwrap();
        assert_eq!((p.framing, p.version), (Framing::Base64, 1));
        assert!(!p.has_status());

        // v5 is not offered for port-forward.
        let (_, p) = negotiate(
            &request(Some("v5.channel.k8s.io,v4.channel.k8s.io")),
            PORT_FORWARD_PROTOCOLS,
        )
        .unwrap();
        assert_eq!(p.name, V4_CHANNEL);
    }

    #[test]
    fn no_protocol_only_when_offered() {
        let (resp, p) = negotiate(&request(None), EXEC_PROTOCOLS).unwrap();
        assert_eq!(p, Protocol::from_name("").unwrap());
        assert_eq!((p.framing, p.version), (Framing::Binary, 1));
        assert!(resp.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());

        let err = negotiate(&request(None), &[V4_CHANNEL]).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert!(err.body().contains("none"), "{}", err.body());
    }

    #[test]
    fn negotiation_refusals() {
        let err = negotiate(&request(Some("portforward.k8s.io, x")), EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert!(
            err.body().contains("portforward.k8s.io, x"),
            "{}",
            err.body()
        );
        assert!(err.body().contains("v4.channel.k8s.io"), "{}", err.body());

        // Offered by the handler but unknown here: never chosen.
        let err = negotiate(&request(Some("foo.k8s.io")), &["foo.k8s.io"]).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);

        let mut req = request(Some(V4_CHANNEL));
        req.headers_mut().remove(SEC_WEBSOCKET_KEY);
        let err = negotiate(&req, EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.body().contains("Sec-WebSocket-Key"));

        let mut req = request(Some(V4_CHANNEL));
        req.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let err = negotiate(&req, EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.headers()[SEC_WEBSOCKET_VERSION], "13");

        let mut req = request(Some(V4_CHANNEL));
        req.headers_mut().remove(SEC_WEBSOCKET_VERSION);
        assert_eq!(
            negotiate(&req, EXEC_PROTOCOLS).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );

        let mut req = request(Some(V4_CHANNEL));
        *req.method_mut() = Method::POST;
        assert_eq!(
            negotiate(&req, EXEC_PROTOCOLS).unwrap_err().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );

        let mut req = request(Some(V4_CHANNEL));
        req.headers_mut().remove(UPGRADE);
        assert_eq!(
            negotiate(&req, EXEC_PROTOCOLS).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    async fn pair(protocol: &str, layout: &[Direction], cfg: Config) -> (ChannelConn, Client) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let conn = channels(server, Protocol::from_name(protocol).unwrap(), layout, cfg).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (conn, client)
    }

    async fn next_msg(client: &mut Client) -> Message {
        loop {
            match timeout(T, client.next()).await.expect("timed out") {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("no message: {other:?}"),
            }
        }
    }

    async fn read_some(r: &mut ChannelReader) -> Vec<u8> {
        let mut buf = vec![0; 1024];
        let n = timeout(T, r.read(&mut buf))
            .await
            .expect("timed out")
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// Skips to the server's close frame, then reads on so that the client
    /// replies and the stream ends cleanly.
    async fn expect_close(client: &mut Client) -> Option<CloseFrame> {
        let frame = loop {
            match timeout(T, client.next()).await.expect("timed out") {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        let end = timeout(T, client.next()).await.expect("timed out");
        assert!(end.is_none(), "after the close frame: {end:?}");
        frame
    }

    #[tokio::test]
    async fn binary_v4_exec_framing() {
        let (mut conn, mut client) = pair(
            V4_CHANNEL,
            &exec_layout(true, true, true),
            Config::default(),
        )
        .await;
        conn.send_exec_ready().await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::binary(vec![1u8]));

        let mut stdin = conn.reader(STDIN).unwrap();
        let mut stdout = conn.writer(STDOUT).unwrap();
        let mut stderr = conn.writer(STDERR).unwrap();
        assert!(conn.reader(STDIN).is_none(), "taken twice");
        assert!(conn.writer(STDIN).is_none(), "stdin is not writable");
        assert!(conn.reader(STDOUT).is_none(), "stdout is not readable");

        client
            .send(Message::binary(vec![0u8, b'f', b'o', b'o', b'\n']))
            .await
            .unwrap();
        assert_eq!(read_some(&mut stdin).await, b"foo\n");

        stdout.write_all(b"hello").await.unwrap();
        stdout.flush().await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01hello".to_vec())
        );
        stderr.write_all(b"oops").await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x02oops".to_vec())
        );
        conn.send(ERROR, br#"{"status":"Success"}"#).await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x03{\"status\":\"Success\"}".to_vec())
        );

        // Resize arrives on channel 4.
        let mut resize = conn.reader(RESIZE).unwrap();
        client
            .send(Message::binary(
                b"\x04{\"Width\":80,\"Height\":24}".to_vec(),
            ))
            .await
            .unwrap();
        assert_eq!(read_some(&mut resize).await, br#"{"Width":80,"Height":24}"#);

        // Not v5: [255, 0] is just a message for a channel that does not
        // exist, and stdin stays open.
        client.send(Message::binary(vec![255u8, 0])).await.unwrap();
        client.send(Message::binary(vec![0u8, b'x'])).await.unwrap();
        assert_eq!(read_some(&mut stdin).await, b"x");

        drop((stdout, stderr));
        let (ended, frame) = tokio::join!(conn.close(), expect_close(&mut client));
        assert_eq!(ended, Ended::Closed);
        assert_eq!(frame.unwrap().code, CloseCode::Normal);
        // EOF once the connection is gone.
        assert_eq!(read_some(&mut stdin).await, b"");
    }

    #[tokio::test]
    async fn exec_ready_goes_to_lowest_writable_channel() {
        for (stdout, stderr, expect) in [(false, true, 2u8), (false, false, 3u8)] {
            let (conn, mut client) = pair(
                V4_CHANNEL,
                &exec_layout(false, stdout, stderr),
                Config::default(),
            )
            .await;
            conn.send_exec_ready().await.unwrap();
            assert_eq!(next_msg(&mut client).await, Message::binary(vec![expect]));
            // Not writable: dropped like Go's IgnoreChannel.
            conn.send(STDOUT, b"dropped").await.unwrap();
            conn.send(ERROR, b"kept").await.unwrap();
            assert_eq!(
                next_msg(&mut client).await,
                Message::binary(b"\x03kept".to_vec())
            );
        }
    }

    #[tokio::test]
    async fn v5_close_signal_ends_stdin_only() {
        let (mut conn, mut client) = pair(
            V5_CHANNEL,
            &exec_layout(true, true, false),
            Config::default(),
        )
        .await;
        let mut stdin = conn.reader(STDIN).unwrap();
        let mut stdout = conn.writer(STDOUT).unwrap();
        client
            .send(Message::binary(b"\x00abc".to_vec()))
            .await
            .unwrap();
        client
            .send(Message::binary(vec![CLOSE_SIGNAL, STDIN]))
            .await
            .unwrap();
        // Data after the half-close is dropped.
        client
            .send(Message::binary(b"\x00late".to_vec()))
            .await
            .unwrap();
        let mut all = Vec::new();
        timeout(T, stdin.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all, b"abc");

        // The rest of the connection carries on.
        stdout.write_all(b"still here").await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01still here".to_vec())
        );
        // Closing an already closed or a non-read channel is harmless.
        client
            .send(Message::binary(vec![CLOSE_SIGNAL, STDIN]))
            .await
            .unwrap();
        client
            .send(Message::binary(vec![CLOSE_SIGNAL, ERROR]))
            .await
            .unwrap();
        stdout.write_all(b"!").await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01!".to_vec())
        );
        drop(stdout);
        let (ended, frame) = tokio::join!(conn.close(), expect_close(&mut client));
        assert_eq!(ended, Ended::Closed);
        assert_eq!(frame.unwrap().code, CloseCode::Normal);
    }

    #[tokio::test]
    async fn v5_bad_close_signals_end_the_connection() {
        for bad in [
            vec![CLOSE_SIGNAL],
            vec![CLOSE_SIGNAL, 0, 0],
            vec![CLOSE_SIGNAL, 9],
        ] {
            let (conn, mut client) = pair(
                V5_CHANNEL,
                &exec_layout(true, true, false),
                Config::default(),
            )
            .await;
            client.send(Message::binary(bad.clone())).await.unwrap();
            let frame = expect_close(&mut client).await.unwrap();
            assert_eq!(frame.code, CloseCode::Protocol, "{bad:?}");
            assert!(matches!(conn.closed().await, Ended::ProtocolError(_)));
            assert!(matches!(conn.close().await, Ended::ProtocolError(_)));
        }
    }

    #[tokio::test]
    async fn base64_framing_both_ways() {
        let (mut conn, mut client) = pair(
            BASE64_CHANNEL,
            &exec_layout(true, true, false),
            Config::default(),
        )
        .await;
        let mut stdin = conn.reader(STDIN).unwrap();
        let mut stdout = conn.writer(STDOUT).unwrap();
        conn.send_exec_ready().await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text("1"));

        // Go's doc example: "foo\n" on channel '0'.
        client.send(Message::text("0Zm9vCg==")).await.unwrap();
        assert_eq!(read_some(&mut stdin).await, b"foo\n");
        // Binary frames are decoded the same way; bad base64 is dropped.
        client
            .send(Message::binary(b"0!!!!".to_vec()))
            .await
            .unwrap();
        client.send(Message::text("0YWI")).await.unwrap();
        client.send(Message::text("0YWI=")).await.unwrap();
        client
            .send(Message::binary(b"0YQ==".to_vec()))
            .await
            .unwrap();
        assert_eq!(read_some(&mut stdin).await, b"ab");
        assert_eq!(read_some(&mut stdin).await, b"a");

        stdout.write_all(b"\n").await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text("1Cg=="));
        stdout.write_all(&[0, 255, 7]).await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text("1AP8H"));
        drop(stdout);
        let (ended, _) = tokio::join!(conn.close(), expect_close(&mut client));
        assert_eq!(ended, Ended::Closed);
    }

    #[tokio::test]
    async fn unknown_and_unread_channels_are_ignored() {
        let (mut conn, mut client) = pair(
            V4_CHANNEL,
            &exec_layout(true, true, false),
            Config::default(),
        )
        .await;
        let mut stdin = conn.reader(STDIN).unwrap();
        // Outside the layout, not readable, empty message, empty payload.
        for junk in [
            vec![7u8, 1, 2],
            vec![1u8, 9],
            vec![200u8],
            vec![],
            vec![0u8],
        ] {
            client.send(Message::binary(junk)).await.unwrap();
        }
        client.send(Message::text("\u{0}text frame")).await.unwrap();
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        assert_eq!(read_some(&mut stdin).await, b"text frame");
        // tungstenite answers pings on the server's behalf.
        let pong = timeout(T, client.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(pong, Message::Pong(Bytes::from_static(b"hi")));
    }

    #[tokio::test]
    async fn oversized_message_closes_with_1009() {
        let cfg = Config {
            max_message_size: 64,
            ..Config::default()
        };
        let (mut conn, mut client) = pair(V4_CHANNEL, &exec_layout(true, true, false), cfg).await;
        let mut stdin = conn.reader(STDIN).unwrap();
        let mut fits = vec![0u8];
        fits.extend([b'a'; 63]);
        client.send(Message::binary(fits)).await.unwrap();
        assert_eq!(read_some(&mut stdin).await, [b'a'; 63]);
        client.send(Message::binary(vec![0u8; 65])).await.unwrap();
        let frame = expect_close(&mut client).await.unwrap();
        assert_eq!(frame.code, CloseCode::Size);
        assert_eq!(conn.closed().await, Ended::MessageTooBig);
        assert_eq!(read_some(&mut stdin).await, b"");

        // Outbound writes are cut to fit the same limit.
        let cfg = Config {
            max_message_size: 8,
            ..Config::default()
        };
        let (conn, mut client) =
            pair(V4_CHANNEL, &exec_layout(false, true, false), cfg.clone()).await;
        conn.send(STDOUT, b"0123456789").await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x010123456".to_vec())
        );
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01789".to_vec())
        );
        let (conn, mut client) = pair(BASE64_CHANNEL, &exec_layout(false, true, false), cfg).await;
        conn.send(STDOUT, b"abcdefg").await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text("1YWJj"));
        assert_eq!(next_msg(&mut client).await, Message::text("1ZGVm"));
        assert_eq!(next_msg(&mut client).await, Message::text("1Zw=="));
    }

    #[tokio::test]
    async fn port_forward_prefixes() {
        let (mut conn, mut client) =
            pair(V4_CHANNEL, &port_forward_layout(2), Config::default()).await;
        conn.send_port_prefixes(&[8080, 443]).await.unwrap();
        for expect in [
            [0u8, 0x90, 0x1f],
            [1, 0x90, 0x1f],
            [2, 0xbb, 0x01],
            [3, 0xbb, 0x01],
        ] {
            assert_eq!(
                next_msg(&mut client).await,
                Message::binary(expect.to_vec())
            );
        }
        // Data channels read and write; error channels only write.
        let mut data = conn.reader(2).unwrap();
        assert!(conn.reader(3).is_none());
        let mut err = conn.writer(3).unwrap();
        client
            .send(Message::binary(b"\x03ignored".to_vec()))
            .await
            .unwrap();
        client
            .send(Message::binary(b"\x02GET /".to_vec()))
            .await
            .unwrap();
        assert_eq!(read_some(&mut data).await, b"GET /");
        err.write_all(b"connection refused").await.unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x03connection refused".to_vec())
        );

        let (conn, mut client) = pair(
            V4_BASE64_CHANNEL,
            &port_forward_layout(1),
            Config::default(),
        )
        .await;
        conn.send_port_prefixes(&[80]).await.unwrap();
        assert_eq!(next_msg(&mut client).await, Message::text("0UAA="));
        assert_eq!(next_msg(&mut client).await, Message::text("1UAA="));
    }

    #[tokio::test]
    async fn client_close_ends_readers_and_writers() {
        let (mut conn, mut client) = pair(
            V4_CHANNEL,
            &exec_layout(true, true, false),
            Config::default(),
        )
        .await;
        let mut stdin = conn.reader(STDIN).unwrap();
        let mut stdout = conn.writer(STDOUT).unwrap();
        client
            .send(Message::binary(b"\x00bye".to_vec()))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut all = Vec::new();
        timeout(T, stdin.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(all, b"bye");
        assert_eq!(conn.closed().await, Ended::ClientClosed(None));
        // The client got the close reply and then the end of the stream.
        assert_eq!(expect_close(&mut client).await, None);
        let err = stdout.write_all(b"late").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(conn.close().await, Ended::ClientClosed(None));
    }

    #[tokio::test]
    async fn dropping_everything_closes_normally() {
        let (mut conn, mut client) = pair(
            V4_CHANNEL,
            &exec_layout(false, true, false),
            Config::default(),
        )
        .await;
        let mut stdout = conn.writer(STDOUT).unwrap();
        drop(conn);
        stdout.write_all(b"last words").await.unwrap();
        drop(stdout);
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01last words".to_vec())
        );
        assert_eq!(
            expect_close(&mut client).await.unwrap().code,
            CloseCode::Normal
        );
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let idle = Duration::from_millis(300);
        let cfg = Config {
            idle_timeout: Some(idle),
            ..Config::default()
        };
        let (mut conn, mut client) = pair(V4_CHANNEL, &exec_layout(true, true, false), cfg).await;
        drop(conn.reader(STDIN));
        let start = std::time::Instant::now();
        let data_at = Duration::from_millis(200);
        let mut sent_data = false;
        // Pings all along do not count as activity; one stdin message does.
        let mut pings = tokio::time::interval(Duration::from_millis(50));
        let frame = loop {
            assert!(start.elapsed() < T, "never closed");
            tokio::select! {
                msg = client.next() => match msg {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(_)) => {}
                    other => panic!("{other:?}"),
                },
                _ = pings.tick() => {
                    client.send(Message::Ping(Bytes::new())).await.unwrap();
                    if !sent_data && start.elapsed() >= data_at {
                        client.send(Message::binary(b"\x00k".to_vec())).await.unwrap();
                        sent_data = true;
                    }
                }
            }
        };
        let elapsed = start.elapsed();
        assert!(sent_data);
        assert!(elapsed >= data_at + idle, "{elapsed:?}");
        let frame = frame.unwrap();
        assert_eq!(frame.code, CloseCode::Normal);
        assert_eq!(frame.reason.as_str(), "idle timeout");
        assert_eq!(conn.closed().await, Ended::IdleTimeout);
    }

    #[tokio::test]
    async fn garbage_frames_are_a_protocol_error() {
        // An unmasked frame from a client, a reserved opcode, raw junk.
        for junk in [
            &b"\x82\x02\x00a"[..],
            &b"\x83\x80\x00\x00\x00\x00"[..],
            &b"GET / HTTP/1.1\r\n\r\n"[..],
        ] {
            let (server, mut client) = tokio::io::duplex(1 << 16);
            let conn = channels(
                server,
                Protocol::from_name(V4_CHANNEL).unwrap(),
                &exec_layout(true, true, false),
                Config::default(),
            )
            .await;
            client.write_all(junk).await.unwrap();
            assert!(
                matches!(conn.closed().await, Ended::ProtocolError(_)),
                "{junk:?}"
            );
            // The server answers with a close frame (1002) before giving up.
            let mut head = [0u8; 4];
            timeout(T, client.read_exact(&mut head))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(head, [0x88, 0x10, 0x03, 0xea], "{junk:?}");
            drop(client);
            assert!(matches!(conn.close().await, Ended::ProtocolError(_)));
        }
    }

    #[tokio::test]
    async fn through_hyper_upgrade() {
        use http_body_util::Empty;
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;

        let (server_io, mut client_io) = tokio::io::duplex(1 << 16);
        let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
            let (head, protocol) = match negotiate(&req, EXEC_PROTOCOLS) {
                Ok(ok) => ok,
                Err(refusal) => {
                    return Ok::<_, std::convert::Infallible>(
                        refusal.map(|_| Empty::<Bytes>::new()),
                    )
                }
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = TokioIo::new(upgrade.await.unwrap());
                let mut conn = channels(
                    io,
                    protocol,
                    &exec_layout(true, true, false),
                    Config::default(),
                )
                .await;
                conn.send_exec_ready().await.unwrap();
                let mut stdin = conn.reader(STDIN).unwrap();
                let mut stdout = conn.writer(STDOUT).unwrap();
                tokio::io::copy(&mut stdin, &mut stdout).await.unwrap();
                stdout.flush().await.unwrap();
                conn.send(ERROR, br#"{"status":"Success"}"#).await.unwrap();
                conn.close().await
            });
            Ok(head.map(|()| Empty::<Bytes>::new()))
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service)
                .with_upgrades(),
        );

        client_io
            .write_all(
                b"GET /exec/ns/pod/c?command=cat&input=1&output=1 HTTP/1.1\r\n\
                  Host: node\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            timeout(T, client_io.read_exact(&mut byte))
                .await
                .unwrap()
                .unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-protocol: v5.channel.k8s.io\r\n"),
            "{head}"
        );
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );

        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        assert_eq!(next_msg(&mut client).await, Message::binary(vec![STDOUT]));
        client
            .send(Message::binary(b"\x00echo me".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x01echo me".to_vec())
        );
        client
            .send(Message::binary(vec![CLOSE_SIGNAL, STDIN]))
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut client).await,
            Message::binary(b"\x03{\"status\":\"Success\"}".to_vec())
        );
        assert_eq!(
            expect_close(&mut client).await.unwrap().code,
            CloseCode::Normal
        );
    }

    #[tokio::test]
    async fn refused_upgrade_is_plain_http() {
        let err = negotiate(&request(Some("nope")), PORT_FORWARD_PROTOCOLS).unwrap_err();
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(
            err.body().contains("v4.base64.channel.k8s.io"),
            "{}",
            err.body()
        );
        assert!(!err.body().contains("v5"), "{}", err.body());
    }

    #[test]
    fn base64_known_vectors() {
        let mut s = String::new();
        base64_encode_into(&mut s, b"foo\n");
        assert_eq!(s, "Zm9vCg==");
        assert_eq!(base64_decode(b"Zm9vCg==").unwrap(), b"foo\n");
        assert_eq!(base64_decode(b"Zm9v\r\nCg==").unwrap(), b"foo\n");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        // Go's StdEncoding tolerates stray low bits ("Zh==" is "f").
        assert_eq!(base64_decode(b"Zh==").unwrap(), b"f");
        for bad in [
            &b"Zm9"[..],
            b"Z===",
            b"Zg==Zg==",
            b"Zm9v!A==",
            b"Zg=a",
            b"====",
        ] {
            assert!(base64_decode(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn base64_matches_the_reference(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut ours = String::new();
            base64_encode_into(&mut ours, &data);
            let reference = base64::engine::general_purpose::STANDARD.encode(&data);
            prop_assert_eq!(&ours, &reference);
            prop_assert_eq!(base64_decode(ours.as_bytes()), Some(data));
        }

        #[test]
        fn base64_decode_never_panics(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ours = base64_decode(&input);
            if let Some(decoded) = &ours {
                // Whatever we accept re-encodes to the same length.
                let clean = input.iter().filter(|&&c| c != b'\r' && c != b'\n').count();
                prop_assert_eq!(decoded.len().div_ceil(3) * 4, clean);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            base64 in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let protocol = if base64 { V4_BASE64_CHANNEL } else { V5_CHANNEL };
                // Well-formed frames with arbitrary content first...
                let (mut conn, mut client) = pair(protocol, &exec_layout(true, true, true), Config::default()).await;
                drop(conn.reader(STDIN));
                for m in messages {
                    if client.send(Message::binary(m)).await.is_err() {
                        break;
                    }
                }
                let replies = tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
                let _ = timeout(T, conn.close()).await.expect("close hung");
                timeout(T, replies).await.expect("client hung").unwrap();
                // ...then arbitrary bytes on the wire.
                let (server, mut raw_client) = tokio::io::duplex(1 << 16);
                let conn = channels(server, Protocol::from_name(protocol).unwrap(), &exec_layout(true, true, true), Config::default()).await;
                let _ = raw_client.write_all(&raw).await;
                drop(raw_client);
                let _ = timeout(T, conn.closed()).await.expect("did not notice the end");
                let _ = timeout(T, conn.close()).await.expect("close hung");
            });
        }
    }
}
