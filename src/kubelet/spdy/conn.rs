//! The connection driver: [`serve`] spawns one task per connection that
//! reads frames off the transport and applies them to the session
//! (`handle_frame`: opening, feeding and resetting streams, answering
//! pings, adjusting windows), and writes out what the session queued;
//! [`Connection`] is the caller's handle on that task. How a connection
//! behaves is its [`Config`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::codec::{
    encode_into, Decoder, Frame, GoAwayStatus, Limits, RstStatus, Setting, SpdyError,
};
use super::headers::{HeaderCompressor, Headers};
use super::session::{
    Inner, Outcome, Phase, Shared, Signals, StreamState, DEFAULT_WINDOW, MAX_WINDOW,
};
use super::stream::Stream;

/// Payload of the DATA frames the driver sends: small enough that streams
/// interleave fairly and any peer can take them.
pub(super) const OUT_FRAME: usize = 16 * 1024;
/// What the reader asks the transport for at a time.
const READ_CHUNK: usize = 16 * 1024;
/// What the writer encodes into one transport write.
const WRITE_BATCH: usize = 256 * 1024;

/// How a connection behaves; [`Config::default`] suits the kubelet.
#[derive(Debug, Clone)]
pub struct Config {
    /// Close the connection (GOAWAY `OK`) after this long with no stream
    /// open and no frame read or written; `None` never does. Default 30 s:
    /// Kubernetes opens its streams right after the upgrade and pings every
    /// few seconds, so a quiet connection without streams is abandoned.
    /// While a stream is open the connection never idles out: an
    /// interactive shell may sit silent for hours.
    pub idle_timeout: Option<Duration>,
    /// How long a closing connection may take to write out what is queued
    /// before the transport is dropped anyway (default 10 s), so that a peer
    /// that stopped reading cannot hold the connection open.
    pub close_timeout: Duration,
    /// Streams that may exist at once (default 1000), counting streams not
    /// yet taken from the receiver and closed streams whose [`Stream`] is
    /// still alive; more are refused with RST_STREAM `REFUSED_STREAM`.
    pub max_streams: usize,
    /// Streams that may wait in the receiver (default 64); more are refused
    /// with RST_STREAM `REFUSED_STREAM`.
    pub accept_backlog: usize,
    /// The receive window of each stream (default 64 KiB, the SPDY/3.1
    /// default; another value is announced with SETTINGS). Also the most a
    /// stream buffers before the driver stops reading the transport.
    pub stream_window: u32,
    /// The receive window of the whole connection (default 1 MiB; at least
    /// 64 KiB, announced with a WINDOW_UPDATE for stream 0). Also the most
    /// all streams together buffer before the driver stops reading.
    pub connection_window: u32,
    /// Make writers wait for the peer's flow-control windows. Off by
    /// default: spdystream, under every Kubernetes client, never sends
    /// WINDOW_UPDATE, so honouring its windows would stall each stream
    /// after 64 KiB. Turn it on for peers that implement SPDY/3.1 flow
    /// control.
    pub respect_peer_window: bool,
    /// Bytes of DATA queued for the transport (all streams together) beyond
    /// which writers wait (default 256 KiB).
    pub write_buffer: usize,
    /// Bounds on incoming frames.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Some(Duration::from_secs(30)),
            close_timeout: Duration::from_secs(10),
            max_streams: 1000,
            accept_backlog: 64,
            stream_window: DEFAULT_WINDOW,
            connection_window: 1024 * 1024,
            respect_peer_window: false,
            write_buffer: 256 * 1024,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Clamps values the protocol cannot express.
    fn sanitized(mut self) -> Self {
        self.stream_window = self.stream_window.clamp(1, MAX_WINDOW as u32);
        self.connection_window = self
            .connection_window
            .clamp(DEFAULT_WINDOW, MAX_WINDOW as u32);
        self.accept_backlog = self.accept_backlog.max(1);
        self.write_buffer = self.write_buffer.max(OUT_FRAME);
        self
    }
}

/// A handle on a running connection, for closing it and learning how it
/// ended. Cheap to clone; dropping it does not close the connection (the
/// idle timeout or the peer does, once no stream is left).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    done: watch::Receiver<Option<Outcome>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Ends the connection: GOAWAY `OK` goes out after every frame already
    /// queued (so data written and FINs sent before the call reach the
    /// peer), then the transport is shut down. Streams still open are cut
    /// off: their writes fail at once, their reads after what is buffered.
    /// Returns at once; [`Connection::closed`] waits for the end.
    pub fn close(&self) {
        self.shared
            .lock()
            .begin_close(Some(GoAwayStatus::OK), Ok(()));
    }

    /// Waits until the connection has ended. `Ok` for an orderly end
    /// ([`Connection::close`], the peer's GOAWAY or end of transport, the
    /// idle timeout); the error for a protocol violation by the peer (which
    /// was sent GOAWAY `PROTOCOL_ERROR`) or a transport failure.
    pub async fn closed(&self) -> Result<(), SpdyError> {
        let mut done = self.done.clone();
        let outcome = match done.wait_for(Option::is_some).await {
            Ok(outcome) => (*outcome).clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(SpdyError::from(io::Error::other(
                "SPDY connection task ended without an outcome",
            )))
        })
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.done.borrow().is_some()
    }
}

/// Serves SPDY/3.1 on an upgraded connection.
///
/// Spawns a Tokio task (so it must be called inside a runtime) that reads
/// frames, routes them to streams and writes queued frames. Every stream
/// the peer opens arrives on the receiver already accepted: the driver
/// sends SYN_REPLY when it queues the stream there. Streams that find the
/// receiver full or gone are refused. The task ends as described in the
/// [module documentation](super); the receiver then yields `None`.
pub fn serve<IO>(io: IO, cfg: Config) -> (Connection, mpsc::Receiver<Stream>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = cfg.sanitized();
    let signals = Arc::new(Signals::default());
    let mut inner = Inner {
        phase: Phase::Open,
        streams: HashMap::new(),
        queue: VecDeque::new(),
        queued_data: 0,
        queued_control: 0,
        writers_blocked: false,
        conn_send_window: i64::from(DEFAULT_WINDOW),
        peer_initial_window: i64::from(DEFAULT_WINDOW),
        conn_buffered: 0,
        conn_unacked: 0,
        stream_window: cfg.stream_window,
        conn_window: cfg.connection_window,
        last_client_id: 0,
        last_accepted_id: 0,
        peer_goaway: false,
        last_activity: Instant::now(),
        signals: signals.clone(),
    };
    if cfg.stream_window != DEFAULT_WINDOW {
        inner.push_control(Frame::Settings {
            clear: false,
            entries: vec![Setting {
                id: Setting::INITIAL_WINDOW_SIZE,
                flags: 0,
                value: cfg.stream_window,
            }],
        });
    }
    if cfg.connection_window > DEFAULT_WINDOW {
        inner.push_control(Frame::WindowUpdate {
            stream_id: 0,
            delta: cfg.connection_window - DEFAULT_WINDOW,
        });
    }
    let (tx, rx) = mpsc::channel(cfg.accept_backlog);
    let shared = Arc::new(Shared {
        inner: Mutex::new(inner),
        signals,
        cfg,
    });
    let (done_tx, done_rx) = watch::channel(None);
    tokio::spawn(drive(io, shared.clone(), tx, done_tx));
    (
        Connection {
            shared,
            done: done_rx,
        },
        rx,
    )
}

fn after(base: Instant, d: Duration) -> Instant {
    base.checked_add(d)
        .unwrap_or_else(|| base + Duration::from_secs(365 * 24 * 3600))
}

async fn drive<IO>(
    io: IO,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Stream>,
    done: watch::Sender<Option<Outcome>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let reader = read_loop(rd, shared.clone(), tx);
    let writer = write_loop(wr, shared.clone());
    tokio::pin!(reader);
    tokio::pin!(writer);
    let idle = shared.cfg.idle_timeout;
    let idle_sleep = tokio::time::sleep_until(after(Instant::now(), idle.unwrap_or(Duration::MAX)));
    tokio::pin!(idle_sleep);
    let close_sleep = tokio::time::sleep_until(after(Instant::now(), Duration::MAX));
    tokio::pin!(close_sleep);
    let mut reader_live = true;
    let mut close_armed = false;
    let writer_result = loop {
        if !close_armed && !shared.lock().is_open() {
            close_armed = true;
            close_sleep
                .as_mut()
                .reset(after(Instant::now(), shared.cfg.close_timeout));
        }
        tokio::select! {
            result = &mut reader, if reader_live => {
                reader_live = false;
                let mut g = shared.lock();
                match result {
                    Ok(()) => g.begin_close(None, Ok(())),
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY: ending the connection");
                        let goaway = match e {
                            SpdyError::Io(_) => None,
                            _ => Some(GoAwayStatus::PROTOCOL_ERROR),
                        };
                        g.begin_close(goaway, Err(e));
                    }
                }
            }
            result = &mut writer => break result,
            _ = shared.signals.closing.notified(), if !close_armed => {}
            _ = &mut close_sleep, if close_armed => {
                tracing::debug!("SPDY: peer did not take the last frames in time");
                break Ok(());
            }
            _ = &mut idle_sleep, if idle.is_some() && !close_armed => {
                let idle = idle.unwrap_or(Duration::MAX);
                let now = Instant::now();
                let mut g = shared.lock();
                let deadline = after(g.last_activity, idle);
                if g.streams.is_empty() && now >= deadline {
                    tracing::debug!("SPDY: idle timeout");
                    g.begin_close(Some(GoAwayStatus::OK), Ok(()));
                } else if g.streams.is_empty() {
                    idle_sleep.as_mut().reset(deadline);
                } else {
                    idle_sleep.as_mut().reset(after(now, idle));
                }
            }
        }
    };
    let outcome = {
        let mut g = shared.lock();
        let outcome = match std::mem::replace(&mut g.phase, Phase::Closed) {
            Phase::Closing(outcome) => outcome,
            Phase::Open => writer_result.map_err(SpdyError::from),
            Phase::Closed => Ok(()),
        };
        g.queue.clear();
        for s in g.streams.values_mut() {
            s.wake();
        }
        outcome
    };
    done.send_replace(Some(outcome));
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Stream>,
) -> Outcome {
    let mut decoder = Decoder::new(shared.cfg.limits.clone());
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        while let Some(frame) = decoder.decode(&mut buf)? {
            let data_stream = {
                let mut g = shared.lock();
                g.last_activity = Instant::now();
                handle_frame(&shared, &mut g, &tx, frame)?
            };
            // Backpressure: stop reading until the caller has read enough.
            while shared.lock().reader_must_wait(data_stream) {
                shared.signals.reader.notified().await;
            }
        }
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf = Vec::with_capacity(READ_CHUNK);
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, shared: Arc<Shared>) -> io::Result<()> {
    let mut hc = HeaderCompressor::new();
    let mut batch: Vec<Frame> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let closing = {
            let mut g = shared.lock();
            let mut bytes = 0;
            while bytes < WRITE_BATCH {
                let Some(frame) = g.queue.pop_front() else {
                    break;
                };
                bytes += 16;
                if let Frame::Data { data, .. } = &frame {
                    bytes += data.len();
                }
                batch.push(frame);
            }
            !g.is_open()
        };
        if batch.is_empty() {
            if closing {
                wr.shutdown().await?;
                return Ok(());
            }
            shared.signals.writer.notified().await;
            continue;
        }
        out.clear();
        for frame in &batch {
            encode_into(frame, &mut hc, &mut out);
        }
        wr.write_all(&out).await?;
        wr.flush().await?;
        {
            let mut g = shared.lock();
            g.last_activity = Instant::now();
            for frame in batch.drain(..) {
                g.written(&frame, shared.cfg.write_buffer);
            }
        }
        shared.signals.reader.notify_one();
        if out.capacity() > 4 * WRITE_BATCH {
            out = Vec::new();
        }
    }
}

/// Where a DATA frame goes.
enum DataFate {
    /// No such stream: never opened, or forgotten.
    Unknown,
    /// The stream was reset; frames in flight are dropped quietly.
    AfterReset,
    /// The peer already sent FIN on it.
    AfterFin,
    /// Into the stream's buffer.
    Buffer,
    /// Nobody will read it (the handle is gone); dropped, window returned.
    Discard,
}

/// Applies one frame from the peer; returns the stream a DATA frame went to
/// so the reader can check that stream's buffer.
fn handle_frame(
    shared: &Arc<Shared>,
    g: &mut Inner,
    tx: &mpsc::Sender<Stream>,
    frame: Frame,
) -> Result<Option<u32>, SpdyError> {
    if !g.is_open() {
        return Ok(None);
    }
    match frame {
        Frame::SynStream {
            stream_id,
            fin,
            unidirectional,
            headers,
            ..
        } => {
            if stream_id % 2 == 0 {
                return Err(SpdyError::Protocol("client stream ids must be odd"));
            }
            if stream_id <= g.last_client_id {
                return Err(SpdyError::Protocol("stream ids must increase"));
            }
            g.last_client_id = stream_id;
            let refused = RstStatus::REFUSED_STREAM;
            if g.peer_goaway || g.streams.len() >= shared.cfg.max_streams {
                g.push_control(Frame::RstStream {
                    stream_id,
                    status: refused,
                });
                return Ok(None);
            }
            let Ok(permit) = tx.try_reserve() else {
                g.push_control(Frame::RstStream {
                    stream_id,
                    status: refused,
                });
                return Ok(None);
            };
            g.last_accepted_id = stream_id;
            g.streams.insert(
                stream_id,
                StreamState::new(g.peer_initial_window, fin, unidirectional),
            );
            if !unidirectional {
                g.push_control(Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Headers::new(),
                });
            }
            permit.send(Stream {
                id: stream_id,
                headers,
                shared: shared.clone(),
            });
            Ok(None)
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let n = data.len();
            let fate = match g.streams.get(&stream_id) {
                None => DataFate::Unknown,
                Some(s) if s.peer_reset.is_some() || s.local_reset => DataFate::AfterReset,
                Some(s) if s.recv_fin => DataFate::AfterFin,
                Some(s) if s.attached => DataFate::Buffer,
                Some(_) => DataFate::Discard,
            };
            match fate {
                DataFate::Unknown => {
                    g.credit_conn(n);
                    if stream_id % 2 == 0 || stream_id > g.last_client_id {
                        g.push_control(Frame::RstStream {
                            stream_id,
                            status: RstStatus::INVALID_STREAM,
                        });
                    }
                    return Ok(None);
                }
                DataFate::AfterReset => {
                    g.credit_conn(n);
                    return Ok(None);
                }
                DataFate::AfterFin => {
                    g.credit_conn(n);
                    g.stream_error(stream_id, RstStatus::STREAM_ALREADY_CLOSED);
                    return Ok(None);
                }
                DataFate::Buffer => {
                    if let Some(s) = g.streams.get_mut(&stream_id) {
                        if n > 0 {
                            s.recv_len += n;
                            s.recv.push_back(data);
                        }
                        s.recv_fin |= fin;
                        s.wake_reader();
                    }
                    g.conn_buffered += n;
                }
                DataFate::Discard => {
                    g.credit_stream(stream_id, n);
                    g.credit_conn(n);
                    if let Some(s) = g.streams.get_mut(&stream_id) {
                        s.recv_fin |= fin;
                    }
                }
            }
            if fin {
                g.maybe_remove(stream_id);
            }
            Ok(Some(stream_id))
        }
        Frame::RstStream { stream_id, status } => {
            if let Some(s) = g.streams.get_mut(&stream_id) {
                s.peer_reset.get_or_insert(status);
                s.wake();
            }
            g.maybe_remove(stream_id);
            Ok(None)
        }
        Frame::Settings { entries, .. } => {
            for entry in entries {
                if entry.id != Setting::INITIAL_WINDOW_SIZE {
                    continue;
                }
                let value = i64::from(entry.value);
                if value > MAX_WINDOW {
                    return Err(SpdyError::Protocol("initial window size over 2^31 - 1"));
                }
                let delta = value - g.peer_initial_window;
                g.peer_initial_window = value;
                for s in g.streams.values_mut() {
                    s.send_window += delta;
                }
                g.wake_writers();
            }
            Ok(None)
        }
        Frame::Ping(id) => {
            // Odd ids are the client's own pings; even ones would be
            // answers to ours, and we send none.
            if id % 2 == 1 {
                g.push_control(Frame::Ping(id));
            }
            Ok(None)
        }
        Frame::GoAway { .. } => {
            g.peer_goaway = true;
            if g.streams.is_empty() {
                g.begin_close(Some(GoAwayStatus::OK), Ok(()));
            }
            Ok(None)
        }
        Frame::Headers { stream_id, fin, .. } => {
            // Extra headers mean nothing to Kubernetes; only FIN matters.
            if fin {
                if let Some(s) = g.streams.get_mut(&stream_id) {
                    s.recv_fin = true;
                    s.wake_reader();
                }
                g.maybe_remove(stream_id);
            }
            Ok(None)
        }
        Frame::WindowUpdate {
            stream_id: 0,
            delta,
        } => {
            g.conn_send_window += i64::from(delta);
            if g.conn_send_window > MAX_WINDOW {
                return Err(SpdyError::Protocol("connection window over 2^31 - 1"));
            }
            g.wake_writers();
            Ok(None)
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let overflow = match g.streams.get_mut(&stream_id) {
                Some(s) => {
                    s.send_window += i64::from(delta);
                    s.wake_writer();
                    s.send_window > MAX_WINDOW
                }
                None => false,
            };
            if overflow {
                g.stream_error(stream_id, RstStatus::FLOW_CONTROL_ERROR);
            }
            Ok(None)
        }
        Frame::SynReply { stream_id, .. } => {
            // We open no streams, so there is nothing to reply to.
            tracing::debug!(stream_id, "SPDY: ignoring SYN_REPLY from the client");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::encode;
    use super::super::testutil::{data, pattern, syn, unhex};
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::time::timeout;

    #[derive(Debug)]
    enum Next {
        Frame(Frame),
        Eof,
        Quiet,
    }

    /// A minimal SPDY client over the in-memory transport, built on the
    /// codec above.
    struct Peer {
        rd: ReadHalf<DuplexStream>,
        wr: WriteHalf<DuplexStream>,
        hc: HeaderCompressor,
        dec: Decoder,
        buf: Vec<u8>,
        /// WINDOW_UPDATE deltas the server sent, by stream (0: connection).
        granted: HashMap<u32, u64>,
    }

    const LONG: Duration = Duration::from_secs(10);

    impl Peer {
        async fn send(&mut self, frame: Frame) {
            let bytes = encode(&frame, &mut self.hc);
            self.wr
                .write_all(&bytes)
                .await
                .expect("write to the server");
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.wr.write_all(bytes).await.expect("write to the server");
        }

        /// The next frame, end of transport, or nothing within `wait`.
        async fn next(&mut self, wait: Duration) -> Next {
            loop {
                if let Some(frame) = self
                    .dec
                    .decode(&mut self.buf)
                    .expect("server frames decode")
                {
                    if let Frame::WindowUpdate { stream_id, delta } = &frame {
                        *self.granted.entry(*stream_id).or_default() += u64::from(*delta);
                    }
                    return Next::Frame(frame);
                }
                self.buf.reserve(READ_CHUNK);
                match timeout(wait, self.rd.read_buf(&mut self.buf)).await {
                    Err(_) => return Next::Quiet,
                    Ok(Ok(0)) => return Next::Eof,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("read from the server: {e}"),
                }
            }
        }

        /// The next frame that is not a WINDOW_UPDATE.
        async fn recv(&mut self) -> Frame {
            loop {
                match self.next(LONG).await {
                    Next::Frame(Frame::WindowUpdate { .. }) => {}
                    Next::Frame(frame) => return frame,
                    other => panic!("expected a frame, got {other:?}"),
                }
            }
        }

        /// Asserts that nothing but WINDOW_UPDATEs arrives for `wait`.
        async fn expect_quiet(&mut self, wait: Duration) {
            loop {
                match self.next(wait).await {
                    Next::Frame(Frame::WindowUpdate { .. }) => {}
                    Next::Quiet => return,
                    other => panic!("expected silence, got {other:?}"),
                }
            }
        }

        /// Asserts that the transport ends, allowing only WINDOW_UPDATEs
        /// before.
        async fn expect_eof(&mut self) {
            loop {
                match self.next(LONG).await {
                    Next::Frame(Frame::WindowUpdate { .. }) => {}
                    Next::Eof => return,
                    other => panic!("expected end of transport, got {other:?}"),
                }
            }
        }

        async fn open(&mut self, stream_id: u32, streamtype: &str) {
            self.send(syn(stream_id, streamtype)).await;
        }

        async fn expect_reply(&mut self, stream_id: u32) {
            assert_eq!(
                self.recv().await,
                Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Headers::new()
                }
            );
        }
    }

    fn start(cfg: Config) -> (Peer, Connection, mpsc::Receiver<Stream>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (conn, rx) = serve(server, cfg);
        let (rd, wr) = tokio::io::split(client);
        let peer = Peer {
            rd,
            wr,
            hc: HeaderCompressor::new(),
            dec: Decoder::default(),
            buf: Vec::new(),
            granted: HashMap::new(),
        };
        (peer, conn, rx)
    }

    async fn accept(rx: &mut mpsc::Receiver<Stream>) -> Stream {
        timeout(LONG, rx.recv())
            .await
            .expect("a stream in time")
            .expect("a stream")
    }

    #[tokio::test]
    async fn exec_style_streams_exchange_data_and_close() {
        let (mut peer, conn, mut rx) = start(Config::default());
        // The default connection window is announced up front.
        match peer.next(LONG).await {
            Next::Frame(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            }) => assert_eq!(delta, (1 << 20) - DEFAULT_WINDOW),
            other => panic!("expected the connection window, got {other:?}"),
        }
        peer.open(1, "error").await;
        peer.open(3, "stdout").await;
        peer.open(5, "stdin").await;
        for id in [1, 3, 5] {
            peer.expect_reply(id).await;
        }
        let error = accept(&mut rx).await;
        let mut stdout = accept(&mut rx).await;
        let stdin = accept(&mut rx).await;
        assert_eq!((error.id(), stdout.id(), stdin.id()), (1, 3, 5));
        assert_eq!(error.header("streamtype"), Some("error"));
        assert_eq!(stdout.header("StreamType"), Some("stdout"));
        assert_eq!(stdin.header("streamtype"), Some("stdin"));
        assert_eq!(stdin.header("port"), None);

        peer.send(data(5, false, b"hello ")).await;
        peer.send(data(5, true, b"world")).await;
        let mut got = String::new();
        (&stdin).read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello world");
        // Reads after the FIN keep returning end-of-file.
        assert_eq!((&stdin).read(&mut [0; 8]).await.unwrap(), 0);

        stdout.write_all(b"output").await.unwrap();
        stdout.shutdown().await.unwrap();
        assert_eq!(peer.recv().await, data(3, false, b"output"));
        assert_eq!(peer.recv().await, data(3, true, b""));
        assert!(stdout.write_all(b"late").await.is_err(), "write after FIN");

        (&error)
            .write_all(b"{\"status\":\"Success\"}")
            .await
            .unwrap();
        (&error).shutdown().await.unwrap();
        assert_eq!(
            peer.recv().await,
            data(1, false, b"{\"status\":\"Success\"}")
        );
        assert_eq!(peer.recv().await, data(1, true, b""));
        (&stdin).shutdown().await.unwrap();
        assert_eq!(peer.recv().await, data(5, true, b""));

        conn.close();
        assert_eq!(
            peer.recv().await,
            Frame::GoAway {
                last_good_stream_id: 5,
                status: GoAwayStatus::OK
            }
        );
        peer.expect_eof().await;
        timeout(LONG, conn.closed()).await.unwrap().unwrap();
        assert!(conn.is_closed());
        assert!(timeout(LONG, rx.recv()).await.unwrap().is_none());
        // Dropping streams after the end sends nothing and does not panic.
        drop((error, stdout, stdin));
    }

    #[tokio::test]
    async fn close_sends_what_was_queued_before_goaway() {
        let (mut peer, conn, mut rx) = start(Config::default());
        peer.open(1, "stdout").await;
        peer.expect_reply(1).await;
        let mut s = accept(&mut rx).await;
        let big = pattern(100_000);
        s.write_all(&big).await.unwrap();
        conn.close();
        // After close, writes fail at once.
        assert_eq!(
            s.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        let mut got = Vec::new();
        let last = loop {
            match peer.recv().await {
                Frame::Data {
                    stream_id: 1,
                    data,
                    fin: false,
                } => got.extend(data),
                other => break other,
            }
        };
        assert_eq!(got, big);
        assert!(matches!(
            last,
            Frame::GoAway {
                status: GoAwayStatus::OK,
                ..
            }
        ));
        peer.expect_eof().await;
        conn.closed().await.unwrap();
        // The stream's reads end with an error: no FIN came.
        assert!(s.read(&mut [0; 4]).await.is_err());
    }

    #[tokio::test]
    async fn server_honours_and_waits_for_the_peer_window() {
        let cfg = Config {
            respect_peer_window: true,
            ..Config::default()
        };
        let (mut peer, _conn, mut rx) = start(cfg);
        peer.open(1, "stdout").await;
        peer.expect_reply(1).await;
        let s = accept(&mut rx).await;
        let payload = pattern(300_000);
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            let mut s = s;
            s.write_all(&payload).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        let window = u64::from(DEFAULT_WINDOW);
        let (mut granted_stream, mut granted_conn) = (window, window);
        let mut received = Vec::new();
        let (mut stalls, mut slow) = (0, 0);
        loop {
            match peer.next(Duration::from_millis(300)).await {
                Next::Frame(Frame::Data {
                    stream_id: 1,
                    fin,
                    data,
                }) => {
                    received.extend(data);
                    let got = received.len() as u64;
                    assert!(got <= granted_stream, "stream window overrun: {got}");
                    assert!(got <= granted_conn, "connection window overrun: {got}");
                    if fin {
                        break;
                    }
                }
                Next::Frame(Frame::WindowUpdate { .. }) => {}
                Next::Frame(other) => panic!("unexpected {other:?}"),
                Next::Quiet if (received.len() as u64) < granted_stream.min(granted_conn) => {
                    // Window left: the server must go on (it may be slow on a
                    // loaded machine, but not stuck).
                    slow += 1;
                    assert!(slow < 30, "server stalled with window left");
                }
                Next::Quiet => {
                    slow = 0;
                    stalls += 1;
                    peer.send(Frame::WindowUpdate {
                        stream_id: 1,
                        delta: DEFAULT_WINDOW,
                    })
                    .await;
                    peer.send(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: DEFAULT_WINDOW,
                    })
                    .await;
                    granted_stream += window;
                    granted_conn += window;
                }
                Next::Eof => panic!("connection ended"),
            }
        }
        assert_eq!(received, expected);
        assert_eq!(stalls, 4, "300,000 bytes need four refills of 64 KiB");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn peer_settings_change_the_send_window() {
        let cfg = Config {
            respect_peer_window: true,
            ..Config::default()
        };
        let (mut peer, _conn, mut rx) = start(cfg);
        peer.send(Frame::Settings {
            clear: false,
            entries: vec![Setting {
                id: Setting::INITIAL_WINDOW_SIZE,
                flags: 0,
                value: 1000,
            }],
        })
        .await;
        peer.open(1, "stdout").await;
        peer.expect_reply(1).await;
        let mut s = accept(&mut rx).await;
        let payload = pattern(5000);
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            s.write_all(&payload).await.unwrap();
            s
        });
        assert_eq!(peer.recv().await, data(1, false, &expected[..1000]));
        peer.expect_quiet(Duration::from_millis(200)).await;
        peer.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 4000,
        })
        .await;
        assert_eq!(peer.recv().await, data(1, false, &expected[1000..]));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn server_replenishes_its_window_as_data_is_read() {
        let (mut peer, _conn, mut rx) = start(Config::default());
        peer.open(1, "stdin").await;
        peer.expect_reply(1).await;
        let s = accept(&mut rx).await;
        let reader = tokio::spawn(async move {
            // Let the client run into the window first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut got = Vec::new();
            (&s).read_to_end(&mut got).await.unwrap();
            got
        });
        let payload = pattern(300_000);
        let mut sent = 0usize;
        let window = i64::from(DEFAULT_WINDOW);
        let mut waits = 0;
        while sent < payload.len() {
            // Everything the server granted so far, WINDOW_UPDATEs read
            // while waiting for the SYN_REPLY included.
            let granted =
                |id: u32| i64::try_from(peer.granted.get(&id).copied().unwrap_or(0)).unwrap();
            let stream_window = window + granted(1) - sent as i64;
            let conn_window = window + granted(0) - sent as i64;
            let room = stream_window.min(conn_window).min(16 * 1024);
            if room > 0 {
                let n = (room as usize).min(payload.len() - sent);
                peer.send(data(1, false, &payload[sent..sent + n])).await;
                sent += n;
                continue;
            }
            // Out of window: only the server's WINDOW_UPDATEs can help.
            match peer.next(LONG).await {
                Next::Frame(Frame::WindowUpdate { .. }) => waits += 1,
                other => panic!("server never replenished the window: {other:?}"),
            }
        }
        peer.send(data(1, true, b"")).await;
        assert_eq!(reader.await.unwrap(), payload);
        assert!(waits >= 4, "client waited for the window {waits} times");
        let granted = peer.granted.get(&1).copied().unwrap_or(0);
        assert!(
            granted + u64::from(DEFAULT_WINDOW) >= payload.len() as u64,
            "stream window given back: {granted}"
        );
    }

    #[tokio::test]
    async fn spdystream_style_peer_without_flow_control_works_both_ways() {
        // spdystream neither sends WINDOW_UPDATE nor respects windows.
        let (mut peer, _conn, mut rx) = start(Config::default());
        peer.open(1, "stdout").await;
        peer.open(3, "stdin").await;
        peer.expect_reply(1).await;
        peer.expect_reply(3).await;
        let mut stdout = accept(&mut rx).await;
        let stdin = accept(&mut rx).await;
        let payload = pattern(300_000);
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            stdout.write_all(&payload).await.unwrap();
            stdout.shutdown().await.unwrap();
            stdout
        });
        let mut got = Vec::new();
        loop {
            match peer.recv().await {
                Frame::Data {
                    stream_id: 1,
                    fin,
                    data,
                } => {
                    got.extend(data);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, expected);
        writer.await.unwrap();

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            (&stdin).read_to_end(&mut got).await.unwrap();
            got
        });
        for chunk in expected.chunks(32 * 1024) {
            peer.send(data(3, false, chunk)).await;
        }
        peer.send(data(3, true, b"")).await;
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_peer_overrunning_the_window_is_paused_not_buffered() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_conn, mut rx) = serve(server, Config::default());
        let (rd, mut wr) = tokio::io::split(client);
        let mut peer = Peer {
            rd,
            wr: tokio::io::split(tokio::io::duplex(1).0).1,
            hc: HeaderCompressor::new(),
            dec: Decoder::default(),
            buf: Vec::new(),
            granted: HashMap::new(),
        };
        let mut hc = HeaderCompressor::new();
        let mut wire = encode(&syn(1, "stdin"), &mut hc);
        let flood = pattern(400_000);
        for chunk in flood.chunks(32 * 1024) {
            wire.extend(encode(&data(1, false, chunk), &mut hc));
        }
        wire.extend(encode(&Frame::Ping(1), &mut hc));
        let flooder = tokio::spawn(async move {
            wr.write_all(&wire).await.unwrap();
            wr
        });
        peer.expect_reply(1).await;
        let s = accept(&mut rx).await;
        // Nobody reads the stream: the server must stop reading the
        // transport (so the PING behind the data stays unanswered) instead
        // of buffering 400 KB.
        peer.expect_quiet(Duration::from_millis(300)).await;
        assert!(!flooder.is_finished(), "the server swallowed the flood");
        {
            let g = s.shared.lock();
            assert!(
                g.conn_buffered <= DEFAULT_WINDOW as usize + 32 * 1024,
                "buffered {}",
                g.conn_buffered
            );
        }
        let mut got = vec![0; flood.len()];
        (&s).read_exact(&mut got).await.unwrap();
        assert_eq!(got, flood);
        assert_eq!(peer.recv().await, Frame::Ping(1));
        flooder.await.unwrap();
    }

    #[tokio::test]
    async fn client_pings_are_echoed_and_server_parity_ones_ignored() {
        let (mut peer, conn, _rx) = start(Config::default());
        peer.send(Frame::Ping(1)).await;
        assert_eq!(peer.recv().await, Frame::Ping(1));
        peer.send(Frame::Ping(2)).await;
        peer.send(Frame::Ping(0xffff_ffff)).await;
        assert_eq!(peer.recv().await, Frame::Ping(0xffff_ffff));
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused() {
        let cfg = Config {
            max_streams: 2,
            ..Config::default()
        };
        let (mut peer, _conn, mut rx) = start(cfg);
        peer.open(1, "stdout").await;
        peer.open(3, "stderr").await;
        peer.open(5, "stdin").await;
        peer.expect_reply(1).await;
        peer.expect_reply(3).await;
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::REFUSED_STREAM
            }
        );
        let first = accept(&mut rx).await;
        let _second = accept(&mut rx).await;
        assert_eq!(first.id(), 1);
        // Dropping an unfinished stream cancels it and frees its place.
        drop(first);
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::CANCEL
            }
        );
        peer.open(7, "stdin").await;
        peer.expect_reply(7).await;
        assert_eq!(accept(&mut rx).await.id(), 7);
    }

    #[tokio::test]
    async fn resets_in_both_directions() {
        let (mut peer, conn, mut rx) = start(Config::default());
        for id in [1, 3, 5, 7] {
            peer.open(id, "data").await;
            peer.expect_reply(id).await;
        }
        let mut one = accept(&mut rx).await;
        let three = accept(&mut rx).await;
        let five = accept(&mut rx).await;
        let mut seven = accept(&mut rx).await;

        // The peer resets 1 after some data: the data is still readable,
        // then the reset shows; writes fail.
        peer.send(data(1, false, b"abc")).await;
        peer.send(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        })
        .await;
        let mut buf = [0u8; 3];
        one.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abc");
        let err = one.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            one.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        // No RST back for a stream the peer reset.
        drop(one);

        // The caller resets 3.
        three.reset(RstStatus::INTERNAL_ERROR);
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::INTERNAL_ERROR
            }
        );
        assert!((&three).read(&mut buf).await.is_err());

        // Dropping 5 unfinished cancels it.
        drop(five);
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::CANCEL
            }
        );

        // Dropping 7 after shutdown sends only the FIN; what the peer
        // still sends on it is dropped quietly.
        seven.shutdown().await.unwrap();
        drop(seven);
        assert_eq!(peer.recv().await, data(7, true, b""));
        peer.send(data(7, false, b"ignored")).await;
        peer.send(Frame::Ping(1)).await;
        assert_eq!(peer.recv().await, Frame::Ping(1));

        // DATA on a stream never opened is an INVALID_STREAM reset.
        peer.send(data(9, false, b"?")).await;
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 9,
                status: RstStatus::INVALID_STREAM
            }
        );
        // DATA after the peer's own FIN is STREAM_ALREADY_CLOSED.
        peer.open(11, "data").await;
        peer.expect_reply(11).await;
        let _eleven = accept(&mut rx).await;
        peer.send(data(11, true, b"end")).await;
        peer.send(data(11, false, b"more")).await;
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 11,
                status: RstStatus::STREAM_ALREADY_CLOSED
            }
        );
        assert!(!conn.is_closed(), "stream errors keep the connection");
    }

    async fn expect_protocol_error(
        peer: &mut Peer,
        conn: &Connection,
        last_good: u32,
    ) -> SpdyError {
        assert_eq!(
            peer.recv().await,
            Frame::GoAway {
                last_good_stream_id: last_good,
                status: GoAwayStatus::PROTOCOL_ERROR
            }
        );
        peer.expect_eof().await;
        timeout(LONG, conn.closed()).await.unwrap().unwrap_err()
    }

    #[tokio::test]
    async fn even_stream_ids_are_a_protocol_error() {
        let (mut peer, conn, _rx) = start(Config::default());
        peer.open(2, "stdin").await;
        let err = expect_protocol_error(&mut peer, &conn, 0).await;
        assert!(matches!(err, SpdyError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn decreasing_stream_ids_are_a_protocol_error() {
        let (mut peer, conn, _rx) = start(Config::default());
        peer.open(3, "stdin").await;
        peer.expect_reply(3).await;
        peer.open(1, "stdout").await;
        let err = expect_protocol_error(&mut peer, &conn, 3).await;
        assert!(matches!(err, SpdyError::Protocol(_)), "{err}");
    }

    #[tokio::test]
    async fn other_versions_end_the_connection() {
        let (mut peer, conn, _rx) = start(Config::default());
        peer.send_raw(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
            .await;
        let err = expect_protocol_error(&mut peer, &conn, 0).await;
        assert!(matches!(err, SpdyError::UnsupportedVersion(2)), "{err}");
    }

    #[tokio::test]
    async fn unknown_control_frames_do_not_disturb_the_connection() {
        let (mut peer, conn, _rx) = start(Config::default());
        peer.send_raw(&unhex(&["8003000b00000002d474"])).await;
        peer.send(Frame::Ping(5)).await;
        assert_eq!(peer.recv().await, Frame::Ping(5));
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn idle_connections_close_but_not_while_a_stream_is_open() {
        let idle = Duration::from_millis(200);
        let cfg = Config {
            idle_timeout: Some(idle),
            ..Config::default()
        };
        // With a stream open, silence is fine.
        let (mut peer, conn, mut rx) = start(cfg.clone());
        peer.open(1, "stdin").await;
        peer.expect_reply(1).await;
        let s = accept(&mut rx).await;
        peer.expect_quiet(Duration::from_millis(600)).await;
        assert!(!conn.is_closed());
        let dropped = Instant::now();
        drop(s);
        assert!(matches!(
            peer.recv().await,
            Frame::RstStream { stream_id: 1, .. }
        ));
        assert_eq!(
            peer.recv().await,
            Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK
            }
        );
        assert!(dropped.elapsed() >= idle);
        peer.expect_eof().await;
        conn.closed().await.unwrap();

        // Without streams, the timeout runs from the start.
        let started = Instant::now();
        let (mut peer, conn, _rx) = start(cfg);
        assert_eq!(
            peer.recv().await,
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::OK
            }
        );
        assert!(started.elapsed() >= idle);
        peer.expect_eof().await;
        conn.closed().await.unwrap();
    }

    #[tokio::test]
    async fn peer_goaway_refuses_new_streams_and_ends_after_the_last() {
        let (mut peer, conn, mut rx) = start(Config::default());
        peer.open(1, "data").await;
        peer.expect_reply(1).await;
        let mut s = accept(&mut rx).await;
        peer.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        })
        .await;
        peer.open(3, "data").await;
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::REFUSED_STREAM
            }
        );
        assert!(!conn.is_closed(), "stream 1 is still open");
        peer.send(data(1, true, b"last")).await;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        s.shutdown().await.unwrap();
        assert_eq!(peer.recv().await, data(1, true, b""));
        drop(s);
        // Stream 3 was refused, so the last good one is 1.
        assert_eq!(
            peer.recv().await,
            Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK
            }
        );
        peer.expect_eof().await;
        conn.closed().await.unwrap();
    }

    #[tokio::test]
    async fn peer_hanging_up_ends_the_connection_and_its_streams() {
        let (mut peer, conn, mut rx) = start(Config::default());
        peer.open(1, "stdin").await;
        peer.expect_reply(1).await;
        let mut s = accept(&mut rx).await;
        peer.send(data(1, false, b"partial")).await;
        drop(peer);
        timeout(LONG, conn.closed()).await.unwrap().unwrap();
        let mut got = [0u8; 7];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"partial");
        assert!(s.read(&mut got).await.is_err(), "no FIN came");
        assert!(s.write(b"x").await.is_err());
    }

    #[tokio::test]
    async fn streams_are_refused_once_the_receiver_is_gone() {
        let (mut peer, conn, rx) = start(Config::default());
        drop(rx);
        peer.open(1, "stdin").await;
        assert_eq!(
            peer.recv().await,
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::REFUSED_STREAM
            }
        );
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn fin_on_syn_stream_means_nothing_to_read() {
        let (mut peer, _conn, mut rx) = start(Config::default());
        peer.send(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: true,
            unidirectional: false,
            headers: Headers::new().with("streamtype", "error"),
        })
        .await;
        peer.expect_reply(1).await;
        let mut s = accept(&mut rx).await;
        assert_eq!(s.read(&mut [0; 8]).await.unwrap(), 0);
        s.write_all(b"status").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(peer.recv().await, data(1, false, b"status"));
        assert_eq!(peer.recv().await, data(1, true, b""));
    }
}
