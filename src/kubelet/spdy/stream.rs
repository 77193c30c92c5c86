//! [`Stream`]: the caller's side of one stream, reading what the peer sent
//! from the session's buffers and queueing DATA frames for the driver to
//! write. Everything it does goes through the session's lock
//! ([`Shared`]); the driver task does the I/O.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::RstStatus;
use super::conn::OUT_FRAME;
use super::headers::Headers;
use super::session::{Phase, Shared};

/// One stream the peer opened, already accepted with SYN_REPLY (unless the
/// peer opened it unidirectional).
///
/// Reading and writing go through [`AsyncRead`] and [`AsyncWrite`], which
/// are implemented for both `Stream` and `&Stream`, so one task may read
/// while another writes (one reader and one writer at a time).
///
/// * `poll_write` queues at most 16 KiB per call as one DATA frame; it
///   waits while the outgoing queue is full and, with
///   [`Config::respect_peer_window`](super::Config::respect_peer_window),
///   while the peer's window is closed.
/// * `poll_flush` waits until this stream's queued frames are on the
///   transport.
/// * `poll_shutdown` sends FIN (an empty DATA frame) and flushes.
/// * Dropping the stream before `shutdown` resets it with `CANCEL`.
pub struct Stream {
    pub(super) id: u32,
    pub(super) headers: Headers,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

fn io_err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

impl Stream {
    /// The stream id the peer chose (odd, increasing).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A request header by name (any case), first value only; e.g.
    /// `streamtype`, `port`, `requestid`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// All request headers of the SYN_STREAM.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Aborts the stream with RST_STREAM `status` (unless it is already
    /// finished both ways or reset); pending and later reads and writes
    /// fail. The way to turn down a stream the driver accepted.
    pub fn reset(&self, status: RstStatus) {
        let mut g = self.shared.lock();
        let finished = g
            .streams
            .get(&self.id)
            .is_none_or(|s| s.local_reset || s.peer_reset.is_some() || (s.local_fin && s.recv_fin));
        if !finished {
            g.stream_error(self.id, status);
        }
    }

    fn read_impl(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.shared.lock();
        let g = &mut *guard;
        let open = g.is_open();
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::NotConnected,
                format!("SPDY stream {} is gone", self.id),
            )));
        };
        if s.local_reset {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionAborted,
                format!("SPDY stream {} was reset", self.id),
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if s.recv_len > 0 {
            let n = s.take_into(buf);
            g.consumed(self.id, n);
            return Poll::Ready(Ok(()));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = s.peer_reset {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionReset,
                format!("SPDY stream {} reset by peer ({status})", self.id),
            )));
        }
        if !open {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionAborted,
                "SPDY connection closed".into(),
            )));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn write_impl(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let cfg = &self.shared.cfg;
        let mut guard = self.shared.lock();
        let g = &mut *guard;
        if !g.is_open() {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::BrokenPipe,
                "SPDY connection closed".into(),
            )));
        }
        let queue_full = g.queued_data >= cfg.write_buffer;
        let conn_window = g.conn_send_window;
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::NotConnected,
                format!("SPDY stream {} is gone", self.id),
            )));
        };
        if s.local_reset || s.peer_reset.is_some() {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionReset,
                format!("SPDY stream {} was reset", self.id),
            )));
        }
        if s.local_fin {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} was shut down", self.id),
            )));
        }
        if queue_full {
            s.write_waker = Some(cx.waker().clone());
            g.writers_blocked = true;
            return Poll::Pending;
        }
        let mut n = data.len().min(OUT_FRAME);
        if cfg.respect_peer_window {
            let window = s.send_window.min(conn_window);
            if window <= 0 {
                s.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(window as usize);
            s.send_window -= n as i64;
            g.conn_send_window -= n as i64;
        }
        g.push_data(self.id, false, data[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn flush_impl(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.shared.lock();
        let g = &mut *guard;
        let closed = matches!(g.phase, Phase::Closed);
        let Some(s) = g.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if s.queued_frames == 0 {
            return Poll::Ready(Ok(()));
        }
        if closed {
            return Poll::Ready(Err(io_err(
                io::ErrorKind::BrokenPipe,
                "SPDY connection closed before the data was sent".into(),
            )));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn shutdown_impl(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut guard = self.shared.lock();
            let g = &mut *guard;
            let open = g.is_open();
            let Some(s) = g.streams.get_mut(&self.id) else {
                return Poll::Ready(Ok(()));
            };
            if s.local_reset || s.peer_reset.is_some() {
                return Poll::Ready(Err(io_err(
                    io::ErrorKind::ConnectionReset,
                    format!("SPDY stream {} was reset", self.id),
                )));
            }
            if !s.local_fin {
                if !open {
                    return Poll::Ready(Err(io_err(
                        io::ErrorKind::BrokenPipe,
                        "SPDY connection closed".into(),
                    )));
                }
                s.local_fin = true;
                g.push_data(self.id, true, Vec::new());
            }
        }
        self.flush_impl(cx)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut guard = self.shared.lock();
        let g = &mut *guard;
        let Some(s) = g.streams.get_mut(&self.id) else {
            return;
        };
        s.attached = false;
        s.read_waker = None;
        s.write_waker = None;
        let unread = s.discard();
        let abort = !s.local_done();
        if unread > 0 {
            g.consumed(self.id, unread);
        }
        if abort {
            g.stream_error(self.id, RstStatus::CANCEL);
        }
        g.maybe_remove(self.id);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read_impl(cx, buf)
    }
}

impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read_impl(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_impl(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_impl(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_impl(cx)
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_impl(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_impl(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shutdown_impl(cx)
    }
}
