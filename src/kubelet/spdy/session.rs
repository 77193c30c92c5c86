//! The state one SPDY session (connection) shares between its driver task
//! (`conn.rs`) and the [`Stream`](super::Stream) handles it gave out (`stream.rs`): every
//! stream's receive buffer and windows, the outgoing frame queue, and the
//! connection's own windows, all behind one mutex ([`Shared`]).
//!
//! The flow-control bookkeeping lives here because both sides move it:
//! reading a stream gives window back to the peer ([`Inner::consumed`]), the
//! writer draining the queue lets blocked writers go on
//! ([`Inner::written`]), and the reader checks whether it must stop reading
//! the transport ([`Inner::reader_must_wait`]), which is how memory stays
//! bounded against a peer that ignores windows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use tokio::io::ReadBuf;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codec::{Frame, GoAwayStatus, RstStatus, SpdyError};
use super::conn::Config;

/// The window every stream and the connection start with in SPDY/3.1, before
/// any SETTINGS or WINDOW_UPDATE.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;

/// Windows are 31-bit quantities; growing one past this is a flow-control
/// error.
pub(super) const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Control frames (PING echoes, WINDOW_UPDATEs, resets) queued by the reader
/// before it stops reading until the writer catches up: a peer that floods
/// PINGs and never reads meets TCP backpressure, not an unbounded queue.
const MAX_QUEUED_CONTROL: usize = 1024;

pub(super) type Outcome = Result<(), SpdyError>;

#[derive(Default)]
pub(super) struct Signals {
    /// Frames were queued, or the connection started closing.
    pub(super) writer: Notify,
    /// Buffers drained or the writer made progress: a paused reader may go on.
    pub(super) reader: Notify,
    /// The connection started closing.
    pub(super) closing: Notify,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) signals: Arc<Signals>,
    pub(super) cfg: Config,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge every stream of the connection.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) enum Phase {
    Open,
    /// Writing out what is queued (the GOAWAY last), then shutting down.
    Closing(Outcome),
    Closed,
}

pub(super) struct StreamState {
    /// Unread payload, in frames as they arrived.
    pub(super) recv: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already read.
    pub(super) recv_head: usize,
    pub(super) recv_len: usize,
    pub(super) recv_fin: bool,
    pub(super) peer_reset: Option<RstStatus>,
    pub(super) local_fin: bool,
    pub(super) local_reset: bool,
    /// What the peer lets us send (may go negative after SETTINGS).
    pub(super) send_window: i64,
    /// Read but not yet announced with WINDOW_UPDATE.
    pub(super) recv_unacked: u64,
    /// DATA frames of this stream in the outgoing queue (for flush).
    pub(super) queued_frames: usize,
    pub(super) read_waker: Option<Waker>,
    pub(super) write_waker: Option<Waker>,
    /// A [`Stream`](super::Stream) handle exists.
    pub(super) attached: bool,
}

impl StreamState {
    pub(super) fn new(send_window: i64, fin: bool, unidirectional: bool) -> Self {
        StreamState {
            recv: VecDeque::new(),
            recv_head: 0,
            recv_len: 0,
            recv_fin: fin,
            peer_reset: None,
            local_fin: unidirectional,
            local_reset: false,
            send_window,
            recv_unacked: 0,
            queued_frames: 0,
            read_waker: None,
            write_waker: None,
            attached: true,
        }
    }

    pub(super) fn remote_done(&self) -> bool {
        self.recv_fin || self.peer_reset.is_some() || self.local_reset
    }

    pub(super) fn local_done(&self) -> bool {
        self.local_fin || self.local_reset || self.peer_reset.is_some()
    }

    pub(super) fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }

    pub(super) fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    pub(super) fn wake(&mut self) {
        self.wake_reader();
        self.wake_writer();
    }

    pub(super) fn take_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            let Some(front) = self.recv.front() else {
                break;
            };
            let front_len = front.len();
            let avail = &front[self.recv_head..];
            let k = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..k]);
            n += k;
            self.recv_head += k;
            if self.recv_head == front_len {
                self.recv.pop_front();
                self.recv_head = 0;
            }
        }
        self.recv_len -= n;
        n
    }

    pub(super) fn discard(&mut self) -> usize {
        let n = self.recv_len;
        self.recv = VecDeque::new();
        self.recv_head = 0;
        self.recv_len = 0;
        n
    }
}

pub(super) struct Inner {
    pub(super) phase: Phase,
    pub(super) streams: HashMap<u32, StreamState>,
    pub(super) queue: VecDeque<Frame>,
    pub(super) queued_data: usize,
    pub(super) queued_control: usize,
    /// A writer waits for room in the queue.
    pub(super) writers_blocked: bool,
    pub(super) conn_send_window: i64,
    pub(super) peer_initial_window: i64,
    /// Unread bytes over all streams.
    pub(super) conn_buffered: usize,
    /// Read (or discarded) but not yet announced for stream 0.
    pub(super) conn_unacked: u64,
    pub(super) stream_window: u32,
    pub(super) conn_window: u32,
    /// The highest stream id the peer used (ids must increase).
    pub(super) last_client_id: u32,
    /// The highest stream id we accepted, for GOAWAY.
    pub(super) last_accepted_id: u32,
    pub(super) peer_goaway: bool,
    pub(super) last_activity: Instant,
    pub(super) signals: Arc<Signals>,
}

impl Inner {
    pub(super) fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    pub(super) fn push_control(&mut self, frame: Frame) {
        if !self.is_open() {
            return;
        }
        self.queued_control += 1;
        self.queue.push_back(frame);
        self.signals.writer.notify_one();
    }

    pub(super) fn push_data(&mut self, stream_id: u32, fin: bool, data: Vec<u8>) {
        if !self.is_open() {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream_id) else {
            return;
        };
        s.queued_frames += 1;
        self.queued_data += data.len();
        self.queue.push_back(Frame::Data {
            stream_id,
            fin,
            data,
        });
        self.signals.writer.notify_one();
    }

    /// Starts the end of the connection; the first reason given wins.
    pub(super) fn begin_close(&mut self, goaway: Option<GoAwayStatus>, outcome: Outcome) {
        if !self.is_open() {
            return;
        }
        if let Some(status) = goaway {
            self.queued_control += 1;
            self.queue.push_back(Frame::GoAway {
                last_good_stream_id: self.last_accepted_id,
                status,
            });
        }
        self.phase = Phase::Closing(outcome);
        for s in self.streams.values_mut() {
            s.wake();
        }
        self.signals.writer.notify_one();
        self.signals.closing.notify_one();
        self.signals.reader.notify_one();
    }

    pub(super) fn credit_conn(&mut self, n: usize) {
        self.conn_unacked += n as u64;
        if self.conn_unacked > 0 && self.conn_unacked >= u64::from(self.conn_window / 2) {
            let delta = self.conn_unacked.min(MAX_WINDOW as u64) as u32;
            self.conn_unacked -= u64::from(delta);
            self.push_control(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
    }

    pub(super) fn credit_stream(&mut self, id: u32, n: usize) {
        let threshold = u64::from(self.stream_window / 2);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // No point giving window to a stream the peer can no longer send on.
        if s.recv_fin || s.peer_reset.is_some() || s.local_reset {
            return;
        }
        s.recv_unacked += n as u64;
        if s.recv_unacked > 0 && s.recv_unacked >= threshold {
            let delta = s.recv_unacked.min(MAX_WINDOW as u64) as u32;
            s.recv_unacked -= u64::from(delta);
            self.push_control(Frame::WindowUpdate {
                stream_id: id,
                delta,
            });
        }
    }

    /// Buffered bytes left the buffers (read, or dropped unread).
    pub(super) fn consumed(&mut self, id: u32, n: usize) {
        self.conn_buffered -= n;
        self.credit_stream(id, n);
        self.credit_conn(n);
        self.signals.reader.notify_one();
    }

    /// Resets a stream from our side.
    pub(super) fn stream_error(&mut self, id: u32, status: RstStatus) {
        self.push_control(Frame::RstStream {
            stream_id: id,
            status,
        });
        let dropped = match self.streams.get_mut(&id) {
            Some(s) => {
                s.local_reset = true;
                s.wake();
                s.discard()
            }
            None => 0,
        };
        if dropped > 0 {
            self.conn_buffered -= dropped;
            self.credit_conn(dropped);
            self.signals.reader.notify_one();
        }
        self.maybe_remove(id);
    }

    /// Forgets a stream once both sides are done with it and no handle is
    /// left; ends the connection if the peer said GOAWAY and this was the
    /// last stream.
    pub(super) fn maybe_remove(&mut self, id: u32) {
        let done = self
            .streams
            .get(&id)
            .is_some_and(|s| !s.attached && s.remote_done() && s.local_done());
        if !done {
            return;
        }
        if let Some(mut s) = self.streams.remove(&id) {
            // The idle clock starts when the last stream goes, not when its
            // final frame happens to reach the transport.
            self.last_activity = Instant::now();
            let left = s.discard();
            if left > 0 {
                self.conn_buffered -= left;
                self.credit_conn(left);
                self.signals.reader.notify_one();
            }
        }
        if self.peer_goaway && self.streams.is_empty() {
            self.begin_close(Some(GoAwayStatus::OK), Ok(()));
        }
    }

    pub(super) fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            s.wake_writer();
        }
    }

    /// Bookkeeping once the writer has put a frame on the wire.
    pub(super) fn written(&mut self, frame: &Frame, write_buffer: usize) {
        if let Frame::Data {
            stream_id, data, ..
        } = frame
        {
            self.queued_data -= data.len();
            if let Some(s) = self.streams.get_mut(stream_id) {
                s.queued_frames -= 1;
                if s.queued_frames == 0 {
                    s.wake_writer();
                }
            }
            if self.writers_blocked && self.queued_data < write_buffer {
                self.writers_blocked = false;
                self.wake_writers();
            }
        } else {
            self.queued_control -= 1;
        }
    }

    /// Whether the reader must stop reading the transport for now: the
    /// peer overran a window we announced (or floods control frames while
    /// not reading ours).
    pub(super) fn reader_must_wait(&self, data_stream: Option<u32>) -> bool {
        if !self.is_open() {
            return false;
        }
        if self.queued_control > MAX_QUEUED_CONTROL
            || self.conn_buffered > self.conn_window as usize
        {
            return true;
        }
        data_stream
            .and_then(|id| self.streams.get(&id))
            .is_some_and(|s| s.recv_len > self.stream_window as usize)
    }
}
