//! The server side of SPDY/3.1 as Kubernetes speaks it for `exec`, `attach`
//! and `port-forward`.
//!
//! After the HTTP/1.1 upgrade (`101 Switching Protocols`, done by the
//! caller) the API server or kubectl opens streams with SYN_STREAM frames
//! whose headers say what each stream is for (`streamtype: error`, `stdin`,
//! `stdout`, `stderr`, `resize`, `data`; `port` and `requestid` for
//! port-forward). Every Kubernetes client is built on
//! `github.com/moby/spdystream`, so this module is shaped by what that
//! library sends and expects, with the SPDY/3.1 draft filling in the rest.
//!
//! The module has two layers, each in files of its own:
//!
//! * a frame codec, which knows bytes and nothing of connections:
//!   - `codec.rs`: the frames ([`Frame`]), [`encode`], the incremental
//!     [`Decoder`] and the [`Limits`] it enforces, so that a hostile peer
//!     cannot make it allocate without bound; [`SpdyError`] says what went
//!     wrong;
//!   - `headers.rs`: header blocks ([`Headers`]) and their SPDY/3
//!     compression ([`HeaderCompressor`], [`HeaderDecompressor`]: zlib with
//!     the SPDY/3 dictionary, one context per direction for the whole
//!     connection);
//! * a connection driver, [`serve`], which hands each stream the peer opens
//!   to the caller as a [`Stream`] (an [`AsyncRead`](tokio::io::AsyncRead) +
//!   [`AsyncWrite`](tokio::io::AsyncWrite)):
//!   - `conn.rs`: [`serve`], its [`Config`], the task that reads frames,
//!     applies them and writes what is queued, and the caller's
//!     [`Connection`] handle;
//!   - `session.rs`: the state the task and the streams share (streams,
//!     buffers, windows, the outgoing queue) and the flow-control
//!     bookkeeping on it;
//!   - `stream.rs`: [`Stream`], the caller's side of one stream.
//!
//! The codec is public on its own so that it can be tested (and fuzzed)
//! without a connection: feed [`Decoder::decode`] arbitrary bytes.
//!
//! # Stream lifecycle, as the caller sees it
//!
//! * **SYN_REPLY is automatic.** The driver answers a SYN_STREAM with an
//!   (empty) SYN_REPLY at the moment it queues the [`Stream`] on the
//!   receiver, which is what Kubernetes' own server does for every stream it
//!   accepts. A stream that cannot be queued (receiver full or dropped,
//!   [`Config::max_streams`] reached, connection going away) is refused with
//!   RST_STREAM `REFUSED_STREAM` instead. A caller that dislikes a stream
//!   (unknown `streamtype`, say) calls [`Stream::reset`].
//! * **Half-close.** [`AsyncWriteExt::shutdown`](tokio::io::AsyncWriteExt::shutdown) sends an empty DATA frame
//!   with FIN; reads return end-of-file once the peer's FIN has arrived and
//!   the buffered data has been read.
//! * **Abort.** Dropping a [`Stream`] whose sending side is still open sends
//!   RST_STREAM `CANCEL`: forgetting `shutdown` is an abort, never a clean
//!   end of data. Dropping a stream after `shutdown` sends nothing; data
//!   the peer still sends on it is discarded. A reset from the peer makes
//!   writes fail; reads still return what had arrived before the reset, then
//!   end-of-file if the peer had sent FIN, otherwise a `ConnectionReset`
//!   error.
//!
//! # Flow control
//!
//! The receiving side is SPDY/3.1: every stream starts with a 64 KiB window
//! ([`Config::stream_window`]; SETTINGS announces a different one), the
//! connection with [`Config::connection_window`] (announced by a
//! WINDOW_UPDATE for stream 0), and WINDOW_UPDATE frames give the window back
//! as the caller reads. Memory is bounded without trusting the peer: when a
//! peer overruns a window (spdystream does, it implements no flow control at
//! all) the driver stops reading the transport until the caller has read
//! enough, so TCP pushes back instead of the driver buffering.
//!
//! The sending side honours the peer's windows only with
//! [`Config::respect_peer_window`]. It is off by default because spdystream
//! never sends WINDOW_UPDATE: honouring its windows would stall every stream
//! after 64 KiB (`kubectl cp` from a pod, large `exec` output). Writers are
//! still bounded by the outgoing queue ([`Config::write_buffer`]), so a slow
//! peer slows writers down rather than growing memory.
//!
//! # Connection lifecycle
//!
//! The connection ends when [`Connection::close`] is called (GOAWAY `OK`
//! after everything already queued, then the transport is shut down), when
//! the peer closes the transport, when the peer sent GOAWAY and no stream is
//! left, after [`Config::idle_timeout`] without streams and frames, on a
//! transport error, or on a protocol violation (GOAWAY `PROTOCOL_ERROR`).
//! [`Connection::closed`] reports which. Once it has ended, writes fail and
//! reads return what was buffered, then end-of-file (after a FIN) or an
//! error.

mod codec;
mod conn;
mod headers;
mod session;
mod stream;
#[cfg(test)]
mod testutil;

// Every type and function callers use is re-exported here, so paths stay
// `kubelet::spdy::X` whatever file the item lives in.
pub use codec::{
    encode, encode_into, Decoder, Frame, GoAwayStatus, Limits, RstStatus, Setting, SpdyError,
    VERSION,
};
pub use conn::{serve, Config, Connection};
pub use headers::{HeaderCompressor, HeaderDecompressor, Headers};
pub use session::DEFAULT_WINDOW;
pub use stream::Stream;
