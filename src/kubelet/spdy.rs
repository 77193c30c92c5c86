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
//! The module has two layers:
//!
//! * a frame codec ([`Frame`], [`encode`], [`Decoder`]) with the header
//!   block compression of SPDY/3 ([`HeaderCompressor`],
//!   [`HeaderDecompressor`]: zlib with the SPDY/3 dictionary, one context
//!   per direction for the whole connection), bounded by [`Limits`] so that
//!   a hostile peer cannot make it allocate without bound;
//! * a connection driver, [`serve`], which hands each stream the peer opens
//!   to the caller as a [`Stream`] (an [`AsyncRead`] + [`AsyncWrite`]).
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
//! * **Half-close.** [`AsyncWriteExt::shutdown`] sends an empty DATA frame
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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// The protocol version this module speaks; control frames of any other
/// version are a protocol error.
pub const VERSION: u16 = 3;

/// The window every stream and the connection start with in SPDY/3.1, before
/// any SETTINGS or WINDOW_UPDATE.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;

/// Windows are 31-bit quantities; growing one past this is a flow-control
/// error.
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// The 24-bit length field of every frame.
const MAX_FRAME_LEN: usize = 0x00ff_ffff;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1):
/// length-prefixed header names and common values, then a run of common
/// status lines and value fragments. Built at compile time so that the
/// words stay readable; a test checks its Adler-32 against the one real
/// peers put in their zlib headers.
const DICTIONARY_WORDS: &[&[u8]] = &[
    b"options",
    b"head",
    b"post",
    b"put",
    b"delete",
    b"trace",
    b"accept",
    b"accept-charset",
    b"accept-encoding",
    b"accept-language",
    b"accept-ranges",
    b"age",
    b"allow",
    b"authorization",
    b"cache-control",
    b"connection",
    b"content-base",
    b"content-encoding",
    b"content-language",
    b"content-length",
    b"content-location",
    b"content-md5",
    b"content-range",
    b"content-type",
    b"date",
    b"etag",
    b"expect",
    b"expires",
    b"from",
    b"host",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"last-modified",
    b"location",
    b"max-forwards",
    b"pragma",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"range",
    b"referer",
    b"retry-after",
    b"server",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"user-agent",
    b"vary",
    b"via",
    b"warning",
    b"www-authenticate",
    b"method",
    b"get",
    b"status",
    b"200 OK",
    b"version",
    b"HTTP/1.1",
    b"url",
    b"public",
    b"set-cookie",
    b"keep-alive",
    b"origin",
];

const DICTIONARY_TAIL: &[u8] = b"100101201202205206300302303304305306307402405406407408409410411\
412413414415416417502504505203 Non-Authoritative Information204 No Content\
301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found\
500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 \
Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,\
application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=\
gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

const DICTIONARY_LEN: usize = dictionary_len();
static DICTIONARY: [u8; DICTIONARY_LEN] = build_dictionary();
/// What a zlib stream that uses the dictionary names it by.
const DICTIONARY_ADLER: u32 = 0xe3c6_a7c2;

const fn dictionary_len() -> usize {
    let mut len = DICTIONARY_TAIL.len();
    let mut i = 0;
    while i < DICTIONARY_WORDS.len() {
        len += 4 + DICTIONARY_WORDS[i].len();
        i += 1;
    }
    len
}

const fn build_dictionary() -> [u8; DICTIONARY_LEN] {
    let mut out = [0u8; DICTIONARY_LEN];
    let mut at = 0;
    let mut i = 0;
    while i < DICTIONARY_WORDS.len() {
        let word = DICTIONARY_WORDS[i];
        let len = (word.len() as u32).to_be_bytes();
        let mut j = 0;
        while j < 4 {
            out[at] = len[j];
            at += 1;
            j += 1;
        }
        j = 0;
        while j < word.len() {
            out[at] = word[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    let mut j = 0;
    while j < DICTIONARY_TAIL.len() {
        out[at] = DICTIONARY_TAIL[j];
        at += 1;
        j += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a frame could not be decoded or a connection ended badly.
///
/// Every variant but [`SpdyError::Io`] is the peer's fault and ends the
/// connection with GOAWAY `PROTOCOL_ERROR`; after any error the decoder's
/// compression context is unusable, so the connection cannot continue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpdyError {
    /// A control frame carried a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame's declared length exceeds [`Limits`]; refused before its
    /// payload is buffered.
    #[error("{kind} frame of {len} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// `"data"` or `"control"`.
        kind: &'static str,
        /// The declared payload length.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// A header block inflated past [`Limits::max_header_block`] (a zlib
    /// bomb, or just too many headers); inflation stops at the limit.
    #[error("header block inflates to more than {limit} bytes")]
    HeaderBlockTooLarge {
        /// The limit it broke.
        limit: usize,
    },
    /// A header block declared more name/value pairs than
    /// [`Limits::max_headers`].
    #[error("{count} headers exceed the limit of {limit}")]
    TooManyHeaders {
        /// The declared count.
        count: u32,
        /// The limit it broke.
        limit: usize,
    },
    /// A frame's layout is wrong (length, zero stream id, truncated or
    /// trailing header block data).
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// The frame type.
        frame: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The header block is not a valid zlib stream (or wants a dictionary
    /// other than SPDY/3's).
    #[error("header block decompression failed: {0}")]
    Compression(String),
    /// A well-formed frame that breaks the protocol's rules (stream ids not
    /// odd and increasing, window overflow, ...).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(Arc<io::Error>),
}

impl From<io::Error> for SpdyError {
    fn from(e: io::Error) -> Self {
        SpdyError::Io(Arc::new(e))
    }
}

fn malformed(frame: &'static str, reason: &'static str) -> SpdyError {
    SpdyError::Malformed { frame, reason }
}

// ---------------------------------------------------------------------------
// Frame model
// ---------------------------------------------------------------------------

/// An RST_STREAM status code. Kept open (a newtype, not an enum) so that
/// codes this module does not know still round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    /// The stream broke the protocol.
    pub const PROTOCOL_ERROR: RstStatus = RstStatus(1);
    /// A frame named a stream that is not open.
    pub const INVALID_STREAM: RstStatus = RstStatus(2);
    /// The stream was not accepted (limits, shutting down); safe to retry.
    pub const REFUSED_STREAM: RstStatus = RstStatus(3);
    /// The stream used a version the endpoint does not speak.
    pub const UNSUPPORTED_VERSION: RstStatus = RstStatus(4);
    /// The stream is no longer wanted.
    pub const CANCEL: RstStatus = RstStatus(5);
    /// The endpoint failed internally.
    pub const INTERNAL_ERROR: RstStatus = RstStatus(6);
    /// A window was overrun or overflowed.
    pub const FLOW_CONTROL_ERROR: RstStatus = RstStatus(7);
    /// A second SYN_REPLY arrived for a stream.
    pub const STREAM_IN_USE: RstStatus = RstStatus(8);
    /// Data arrived after the sender's FIN.
    pub const STREAM_ALREADY_CLOSED: RstStatus = RstStatus(9);
    /// A frame was too large for the receiver.
    pub const FRAME_TOO_LARGE: RstStatus = RstStatus(11);
}

impl std::fmt::Display for RstStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "PROTOCOL_ERROR",
            2 => "INVALID_STREAM",
            3 => "REFUSED_STREAM",
            4 => "UNSUPPORTED_VERSION",
            5 => "CANCEL",
            6 => "INTERNAL_ERROR",
            7 => "FLOW_CONTROL_ERROR",
            8 => "STREAM_IN_USE",
            9 => "STREAM_ALREADY_CLOSED",
            11 => "FRAME_TOO_LARGE",
            n => return write!(f, "status {n}"),
        };
        f.write_str(name)
    }
}

/// A GOAWAY status code, open for the same reason as [`RstStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    /// A normal end of the session.
    pub const OK: GoAwayStatus = GoAwayStatus(0);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: GoAwayStatus = GoAwayStatus(1);
    /// The sender failed internally.
    pub const INTERNAL_ERROR: GoAwayStatus = GoAwayStatus(2);
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Which setting (24 bits on the wire).
    pub id: u32,
    /// `FLAG_SETTINGS_PERSIST_VALUE` (1) / `FLAG_SETTINGS_PERSISTED` (2);
    /// persistence is a browser feature and ignored here.
    pub flags: u8,
    /// The value.
    pub value: u32,
}

impl Setting {
    /// How many streams the sender lets its peer open; only matters to
    /// whoever opens streams, which this server never does.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// The window every stream of the sender's peer starts with; changes
    /// the windows of streams already open by the difference.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

/// A header block: lower-cased names in wire order, each with its raw value
/// (several values are joined by NUL bytes, as on the wire).
///
/// A list rather than a map because SPDY allows repeated names and the
/// order is what the peer sent; Kubernetes' blocks hold a handful of
/// entries, so lookups by scanning are cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty block (what SYN_REPLY carries here).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; the name is lower-cased because SPDY requires lower
    /// case on the wire.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let mut name = name.into();
        name.make_ascii_lowercase();
        self.entries.push((name, value.into()));
    }

    /// Builder form of [`Headers::push`].
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    /// The first value of the first entry called `name` (compared without
    /// regard to ASCII case): the part before the first NUL separator, which
    /// is the only value for every header Kubernetes sends.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// All entries as sent: names lower-cased, values raw (NUL-joined).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n, v);
        }
        headers
    }
}

/// A SPDY/3 frame, decoded. Stream ids are 31-bit; the encoder masks the
/// top bit away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream; odd when the client opens it.
        stream_id: u32,
        /// The stream this one was pushed for (server push; 0 otherwise).
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// Credential slot (SPDY/3); 0 when unused.
        slot: u8,
        /// The opener will send nothing more on the stream.
        fin: bool,
        /// The receiver may not send on the stream (and sends no SYN_REPLY).
        unidirectional: bool,
        /// The request headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// The replier will send nothing more on the stream.
        fin: bool,
        /// The reply headers (empty here, as in Kubernetes).
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The aborted stream.
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// Connection parameters.
    Settings {
        /// `FLAG_SETTINGS_CLEAR_SETTINGS`: forget persisted settings.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// A liveness probe; the receiver echoes pings its peer initiated
    /// (odd ids come from the client).
    Ping(u32),
    /// The sender will accept no new streams.
    GoAway {
        /// The highest stream id the sender accepted.
        last_good_stream_id: u32,
        /// Why.
        status: GoAwayStatus,
    },
    /// More headers for an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// The sender will send nothing more on the stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow control: the sender has room for `delta` more bytes.
    WindowUpdate {
        /// The stream, or 0 for the connection (SPDY/3.1).
        stream_id: u32,
        /// 1 to 2^31 - 1 bytes.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// The sender will send nothing more on the stream.
        fin: bool,
        /// The payload.
        data: Vec<u8>,
    },
}

// ---------------------------------------------------------------------------
// Header compression
// ---------------------------------------------------------------------------

/// The sending half of SPDY/3 header compression: one zlib stream, primed
/// with the SPDY dictionary, for every header block a connection sends.
/// Each block is sync-flushed so the peer can decode it on its own, but the
/// context carries over, so blocks must be encoded in the order they are
/// sent.
pub struct HeaderCompressor {
    z: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    /// A fresh context, as at the start of a connection.
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream; if it did, the peer would reject
        // our blocks and say so.
        if let Err(e) = z.set_dictionary(&DICTIONARY) {
            tracing::error!(error = %e, "SPDY: setting the header dictionary failed");
        }
        HeaderCompressor { z }
    }

    /// Serializes and compresses one header block.
    pub fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let mut plain = Vec::with_capacity(
            4 + headers
                .entries
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>(),
        );
        put_u32(&mut plain, headers.entries.len() as u32);
        for (name, value) in &headers.entries {
            put_u32(&mut plain, name.len() as u32);
            plain.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
            put_u32(&mut plain, value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        let start = self.z.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let done = (self.z.total_in() - start) as usize;
            if let Err(e) = self
                .z
                .compress_vec(&plain[done..], &mut out, FlushCompress::Sync)
            {
                // Deflating memory into memory has no failure mode short of
                // a corrupted stream state; leave the block short and let
                // the peer's inflater report it.
                tracing::error!(error = %e, "SPDY: header compression failed");
                break;
            }
            let done = (self.z.total_in() - start) as usize;
            // A sync flush is complete once all input is in and deflate
            // stopped with output space to spare.
            if done == plain.len() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

/// The receiving half of SPDY/3 header compression, with a hard cap on what
/// one block may inflate to: the cap is enforced while inflating, so a zlib
/// bomb costs at most the cap in memory.
pub struct HeaderDecompressor {
    z: Decompress,
    max_block: usize,
}

impl HeaderDecompressor {
    /// A fresh context, as at the start of a connection; blocks inflating
    /// to more than `max_block` bytes are refused.
    pub fn new(max_block: usize) -> Self {
        HeaderDecompressor {
            z: Decompress::new(true),
            max_block,
        }
    }

    /// Inflates one compressed header block (all of its input must be
    /// consumed: the context continues with the next block).
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let limit = self.max_block;
        let too_large = || SpdyError::HeaderBlockTooLarge { limit };
        let mut out: Vec<u8> = Vec::new();
        let start = self.z.total_in();
        loop {
            let used = (self.z.total_in() - start) as usize;
            if out.len() == out.capacity() {
                // Grow geometrically but never past limit + 1: one byte of
                // slack tells "exactly at the limit" from "over it".
                let want = (out.capacity() * 2).clamp(1024, limit.saturating_add(1));
                if want <= out.len() {
                    return Err(too_large());
                }
                out.reserve_exact(want - out.len());
            }
            let produced_before = out.len();
            let result = self
                .z
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync);
            let used_after = (self.z.total_in() - start) as usize;
            match result {
                Ok(Status::StreamEnd) => {
                    if used_after < input.len() {
                        return Err(SpdyError::Compression(
                            "data after the end of the zlib stream".into(),
                        ));
                    }
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER) => {
                        self.z
                            .set_dictionary(&DICTIONARY)
                            .map_err(|e| SpdyError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(SpdyError::Compression(format!(
                            "unknown dictionary {other:#010x}"
                        )))
                    }
                    None => return Err(SpdyError::Compression(e.to_string())),
                },
            }
            if out.len() > limit {
                return Err(too_large());
            }
            if used_after == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if used_after == used && out.len() == produced_before {
                if used_after == input.len() {
                    return Ok(out);
                }
                return Err(SpdyError::Compression("inflate made no progress".into()));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn control_header(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) {
    assert!(
        len <= MAX_FRAME_LEN,
        "SPDY control frame payload of {len} bytes does not fit the 24-bit length"
    );
    put_u16(out, 0x8000 | VERSION);
    put_u16(out, kind);
    put_u32(out, (u32::from(flags) << 24) | len as u32);
}

/// Encodes one frame. Header blocks go through `hc`, so frames must be
/// encoded in the order they are sent.
///
/// # Panics
///
/// If a DATA payload or a compressed header block exceeds 2^24 - 1 bytes,
/// which the wire format cannot express; the driver never produces such
/// frames.
pub fn encode(frame: &Frame, hc: &mut HeaderCompressor) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(frame, hc, &mut out);
    out
}

/// [`encode`], appending to `out` so that the driver can batch frames into
/// one write.
///
/// # Panics
///
/// As [`encode`].
pub fn encode_into(frame: &Frame, hc: &mut HeaderCompressor, out: &mut Vec<u8>) {
    match frame {
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            slot,
            fin,
            unidirectional,
            headers,
        } => {
            let block = hc.compress(headers);
            let mut flags = 0;
            if *fin {
                flags |= FLAG_FIN;
            }
            if *unidirectional {
                flags |= FLAG_UNIDIRECTIONAL;
            }
            control_header(out, TYPE_SYN_STREAM, flags, 10 + block.len());
            put_u32(out, stream_id & STREAM_ID_MASK);
            put_u32(out, associated_to & STREAM_ID_MASK);
            out.push((priority & 0x07) << 5);
            out.push(*slot);
            out.extend_from_slice(&block);
        }
        Frame::SynReply {
            stream_id,
            fin,
            headers,
        }
        | Frame::Headers {
            stream_id,
            fin,
            headers,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                TYPE_SYN_REPLY
            } else {
                TYPE_HEADERS
            };
            let block = hc.compress(headers);
            let flags = if *fin { FLAG_FIN } else { 0 };
            control_header(out, kind, flags, 4 + block.len());
            put_u32(out, stream_id & STREAM_ID_MASK);
            out.extend_from_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, TYPE_RST_STREAM, 0, 8);
            put_u32(out, stream_id & STREAM_ID_MASK);
            put_u32(out, status.0);
        }
        Frame::Settings { clear, entries } => {
            let flags = if *clear { FLAG_CLEAR_SETTINGS } else { 0 };
            control_header(out, TYPE_SETTINGS, flags, 4 + 8 * entries.len());
            put_u32(out, entries.len() as u32);
            for s in entries {
                put_u32(out, (u32::from(s.flags) << 24) | (s.id & 0x00ff_ffff));
                put_u32(out, s.value);
            }
        }
        Frame::Ping(id) => {
            control_header(out, TYPE_PING, 0, 4);
            put_u32(out, *id);
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            control_header(out, TYPE_GOAWAY, 0, 8);
            put_u32(out, last_good_stream_id & STREAM_ID_MASK);
            put_u32(out, status.0);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
            put_u32(out, stream_id & STREAM_ID_MASK);
            put_u32(out, delta & 0x7fff_ffff);
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            assert!(
                data.len() <= MAX_FRAME_LEN,
                "SPDY data frame of {} bytes does not fit the 24-bit length",
                data.len()
            );
            put_u32(out, stream_id & STREAM_ID_MASK);
            let flags: u32 = if *fin { FLAG_FIN.into() } else { 0 };
            put_u32(out, (flags << 24) | data.len() as u32);
            out.extend_from_slice(data);
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Bounds on what a peer may make the decoder buffer and allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA payload accepted (default 1 MiB; spdystream sends one
    /// frame per write, and Kubernetes copies with 32 KiB buffers).
    pub max_data_frame: usize,
    /// Largest control frame payload, compressed header block included
    /// (default 64 KiB).
    pub max_control_frame: usize,
    /// Largest inflated header block (default 128 KiB; Kubernetes sends a
    /// few dozen bytes). Enforced while inflating.
    pub max_header_block: usize,
    /// Most name/value pairs in one header block (default 128).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_data_frame: 1024 * 1024,
            max_control_frame: 64 * 1024,
            max_header_block: 128 * 1024,
            max_headers: 128,
        }
    }
}

/// An incremental frame decoder for one direction of one connection.
///
/// Memory stays bounded by [`Limits`]: a frame header announcing a payload
/// over the limit is refused as soon as its 8 bytes are in, before any of
/// the payload is buffered, and nothing is preallocated from counts read off
/// the wire.
pub struct Decoder {
    hd: HeaderDecompressor,
    limits: Limits,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// A bounds-checked reader over a frame payload.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn bytes(&mut self, n: u32) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        if n > self.rest.len() {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder {
    /// A decoder with a fresh decompression context.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            hd: HeaderDecompressor::new(limits.max_header_block),
            limits,
        }
    }

    /// Takes the next complete frame off the front of `buf`, or returns
    /// `Ok(None)` (leaving `buf` alone) until one is complete. Control
    /// frames of unknown types are skipped, as SPDY requires.
    ///
    /// After an error the connection must be closed: the header
    /// decompression context may be out of step with the peer's.
    pub fn decode(&mut self, buf: &mut Vec<u8>) -> Result<Option<Frame>, SpdyError> {
        loop {
            if buf.len() < 8 {
                return Ok(None);
            }
            let word0 = be32(&buf[0..4]);
            let word1 = be32(&buf[4..8]);
            let flags = (word1 >> 24) as u8;
            let len = (word1 & 0x00ff_ffff) as usize;
            if word0 & 0x8000_0000 == 0 {
                if len > self.limits.max_data_frame {
                    return Err(SpdyError::FrameTooLarge {
                        kind: "data",
                        len,
                        limit: self.limits.max_data_frame,
                    });
                }
                let stream_id = word0 & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(malformed("DATA", "stream id 0"));
                }
                if buf.len() < 8 + len {
                    return Ok(None);
                }
                let data = buf[8..8 + len].to_vec();
                buf.drain(..8 + len);
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    data,
                }));
            }
            let version = ((word0 >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
            if len > self.limits.max_control_frame {
                return Err(SpdyError::FrameTooLarge {
                    kind: "control",
                    len,
                    limit: self.limits.max_control_frame,
                });
            }
            if buf.len() < 8 + len {
                return Ok(None);
            }
            let kind = (word0 & 0xffff) as u16;
            let frame = self.control(kind, flags, &buf[8..8 + len]);
            buf.drain(..8 + len);
            if let Some(frame) = frame? {
                return Ok(Some(frame));
            }
        }
    }

    fn control(
        &mut self,
        kind: u16,
        flags: u8,
        payload: &[u8],
    ) -> Result<Option<Frame>, SpdyError> {
        let fin = flags & FLAG_FIN != 0;
        let mut c = Cursor { rest: payload };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                const NAME: &str = "SYN_STREAM";
                if payload.len() < 10 {
                    return Err(malformed(NAME, "shorter than 10 bytes"));
                }
                let stream_id = be32(&payload[0..4]) & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(malformed(NAME, "stream id 0"));
                }
                let associated_to = be32(&payload[4..8]) & STREAM_ID_MASK;
                let headers = self.header_block(NAME, &payload[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority: payload[8] >> 5,
                    slot: payload[9],
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if payload.len() < 4 {
                    return Err(malformed(name, "shorter than 4 bytes"));
                }
                let stream_id = be32(&payload[0..4]) & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(malformed(name, "stream id 0"));
                }
                let headers = self.header_block(name, &payload[4..])?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                const NAME: &str = "RST_STREAM";
                if payload.len() != 8 {
                    return Err(malformed(NAME, "length is not 8"));
                }
                let stream_id = be32(&payload[0..4]) & STREAM_ID_MASK;
                let status = be32(&payload[4..8]);
                if stream_id == 0 {
                    return Err(malformed(NAME, "stream id 0"));
                }
                if status == 0 {
                    return Err(malformed(NAME, "status 0"));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus(status),
                }
            }
            TYPE_SETTINGS => {
                const NAME: &str = "SETTINGS";
                let count = c.u32().ok_or(malformed(NAME, "shorter than 4 bytes"))?;
                if u64::from(count) * 8 != c.rest.len() as u64 {
                    return Err(malformed(NAME, "length does not match the entry count"));
                }
                let mut entries = Vec::with_capacity(c.rest.len() / 8);
                while let Some(word) = c.u32() {
                    let value = c.u32().ok_or(malformed(NAME, "truncated entry"))?;
                    entries.push(Setting {
                        id: word & 0x00ff_ffff,
                        flags: (word >> 24) as u8,
                        value,
                    });
                }
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                if payload.len() != 4 {
                    return Err(malformed("PING", "length is not 4"));
                }
                Frame::Ping(be32(payload))
            }
            TYPE_GOAWAY => {
                if payload.len() != 8 {
                    return Err(malformed("GOAWAY", "length is not 8"));
                }
                Frame::GoAway {
                    last_good_stream_id: be32(&payload[0..4]) & STREAM_ID_MASK,
                    status: GoAwayStatus(be32(&payload[4..8])),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if payload.len() != 8 {
                    return Err(malformed("WINDOW_UPDATE", "length is not 8"));
                }
                Frame::WindowUpdate {
                    stream_id: be32(&payload[0..4]) & STREAM_ID_MASK,
                    delta: be32(&payload[4..8]) & 0x7fff_ffff,
                }
            }
            // NOOP (SPDY/2), CREDENTIAL (SPDY/3) and anything newer: the
            // draft says to ignore control frames one does not know.
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    fn header_block(
        &mut self,
        frame: &'static str,
        compressed: &[u8],
    ) -> Result<Headers, SpdyError> {
        let plain = self.hd.decompress(compressed)?;
        // An empty block (no bytes at all) is not valid SPDY, but it is
        // harmless, and being lenient costs nothing here.
        if plain.is_empty() {
            return Ok(Headers::new());
        }
        let mut c = Cursor { rest: &plain };
        let count = c.u32().ok_or(malformed(frame, "truncated header count"))?;
        if count as usize > self.limits.max_headers {
            return Err(SpdyError::TooManyHeaders {
                count,
                limit: self.limits.max_headers,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = c
                .u32()
                .and_then(|n| c.bytes(n))
                .ok_or(malformed(frame, "truncated header name"))?;
            if name.is_empty() {
                return Err(malformed(frame, "empty header name"));
            }
            let value = c
                .u32()
                .and_then(|n| c.bytes(n))
                .ok_or(malformed(frame, "truncated header value"))?;
            let mut name = String::from_utf8_lossy(name).into_owned();
            name.make_ascii_lowercase();
            entries.push((name, String::from_utf8_lossy(value).into_owned()));
        }
        if !c.rest.is_empty() {
            return Err(malformed(frame, "bytes after the last header"));
        }
        Ok(Headers { entries })
    }
}

// ---------------------------------------------------------------------------
// Connection driver
// ---------------------------------------------------------------------------

/// Payload of the DATA frames the driver sends: small enough that streams
/// interleave fairly and any peer can take them.
const OUT_FRAME: usize = 16 * 1024;
/// What the reader asks the transport for at a time.
const READ_CHUNK: usize = 16 * 1024;
/// What the writer encodes into one transport write.
const WRITE_BATCH: usize = 256 * 1024;
/// Control frames (PING echoes, WINDOW_UPDATEs, resets) queued by the reader
/// before it stops reading until the writer catches up: a peer that floods
/// PINGs and never reads meets TCP backpressure, not an unbounded queue.
const MAX_QUEUED_CONTROL: usize = 1024;

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

type Outcome = Result<(), SpdyError>;

#[derive(Default)]
struct Signals {
    /// Frames were queued, or the connection started closing.
    writer: Notify,
    /// Buffers drained or the writer made progress: a paused reader may go on.
    reader: Notify,
    /// The connection started closing.
    closing: Notify,
}

struct Shared {
    inner: Mutex<Inner>,
    signals: Arc<Signals>,
    cfg: Config,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge every stream of the connection.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Phase {
    Open,
    /// Writing out what is queued (the GOAWAY last), then shutting down.
    Closing(Outcome),
    Closed,
}

struct StreamState {
    /// Unread payload, in frames as they arrived.
    recv: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already read.
    recv_head: usize,
    recv_len: usize,
    recv_fin: bool,
    peer_reset: Option<RstStatus>,
    local_fin: bool,
    local_reset: bool,
    /// What the peer lets us send (may go negative after SETTINGS).
    send_window: i64,
    /// Read but not yet announced with WINDOW_UPDATE.
    recv_unacked: u64,
    /// DATA frames of this stream in the outgoing queue (for flush).
    queued_frames: usize,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// A [`Stream`] handle exists.
    attached: bool,
}

impl StreamState {
    fn new(send_window: i64, fin: bool, unidirectional: bool) -> Self {
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

    fn remote_done(&self) -> bool {
        self.recv_fin || self.peer_reset.is_some() || self.local_reset
    }

    fn local_done(&self) -> bool {
        self.local_fin || self.local_reset || self.peer_reset.is_some()
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn wake(&mut self) {
        self.wake_reader();
        self.wake_writer();
    }

    fn take_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
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

    fn discard(&mut self) -> usize {
        let n = self.recv_len;
        self.recv = VecDeque::new();
        self.recv_head = 0;
        self.recv_len = 0;
        n
    }
}

struct Inner {
    phase: Phase,
    streams: HashMap<u32, StreamState>,
    queue: VecDeque<Frame>,
    queued_data: usize,
    queued_control: usize,
    /// A writer waits for room in the queue.
    writers_blocked: bool,
    conn_send_window: i64,
    peer_initial_window: i64,
    /// Unread bytes over all streams.
    conn_buffered: usize,
    /// Read (or discarded) but not yet announced for stream 0.
    conn_unacked: u64,
    stream_window: u32,
    conn_window: u32,
    /// The highest stream id the peer used (ids must increase).
    last_client_id: u32,
    /// The highest stream id we accepted, for GOAWAY.
    last_accepted_id: u32,
    peer_goaway: bool,
    last_activity: Instant,
    signals: Arc<Signals>,
}

impl Inner {
    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    fn push_control(&mut self, frame: Frame) {
        if !self.is_open() {
            return;
        }
        self.queued_control += 1;
        self.queue.push_back(frame);
        self.signals.writer.notify_one();
    }

    fn push_data(&mut self, stream_id: u32, fin: bool, data: Vec<u8>) {
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
    fn begin_close(&mut self, goaway: Option<GoAwayStatus>, outcome: Outcome) {
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

    fn credit_conn(&mut self, n: usize) {
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

    fn credit_stream(&mut self, id: u32, n: usize) {
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
    fn consumed(&mut self, id: u32, n: usize) {
        self.conn_buffered -= n;
        self.credit_stream(id, n);
        self.credit_conn(n);
        self.signals.reader.notify_one();
    }

    /// Resets a stream from our side.
    fn stream_error(&mut self, id: u32, status: RstStatus) {
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
    fn maybe_remove(&mut self, id: u32) {
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

    fn wake_writers(&mut self) {
        for s in self.streams.values_mut() {
            s.wake_writer();
        }
    }

    /// Bookkeeping once the writer has put a frame on the wire.
    fn written(&mut self, frame: &Frame, write_buffer: usize) {
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
    fn reader_must_wait(&self, data_stream: Option<u32>) -> bool {
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

/// One stream the peer opened, already accepted with SYN_REPLY (unless the
/// peer opened it unidirectional).
///
/// Reading and writing go through [`AsyncRead`] and [`AsyncWrite`], which
/// are implemented for both `Stream` and `&Stream`, so one task may read
/// while another writes (one reader and one writer at a time).
///
/// * `poll_write` queues at most 16 KiB per call as one DATA frame; it
///   waits while the outgoing queue is full and, with
///   [`Config::respect_peer_window`], while the peer's window is closed.
/// * `poll_flush` waits until this stream's queued frames are on the
///   transport.
/// * `poll_shutdown` sends FIN (an empty DATA frame) and flushes.
/// * Dropping the stream before `shutdown` resets it with `CANCEL`.
pub struct Stream {
    id: u32,
    headers: Headers,
    shared: Arc<Shared>,
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
/// [module documentation](self); the receiver then yields `None`.
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
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::time::timeout;

    /// Counts this thread's heap use while a closure runs, so that tests can
    /// assert what the decoder allocates (zlib-rs allocates through Rust's
    /// allocator, so its state is counted too).
    mod alloc_probe {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        struct Probe;

        thread_local! {
            static ACTIVE: Cell<bool> = const { Cell::new(false) };
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn note(delta: isize) {
            let _ = ACTIVE.try_with(|active| {
                if active.get() {
                    LIVE.with(|live| {
                        let now = live.get() + delta;
                        live.set(now);
                        PEAK.with(|peak| peak.set(peak.get().max(now)));
                    });
                }
            });
        }

        // SAFETY: every call is forwarded unchanged to the system allocator;
        // the bookkeeping touches only const-initialised thread-locals,
        // which never allocate.
        unsafe impl GlobalAlloc for Probe {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc(layout) };
                if !p.is_null() {
                    note(layout.size() as isize);
                }
                p
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                let p = unsafe { System.alloc_zeroed(layout) };
                if !p.is_null() {
                    note(layout.size() as isize);
                }
                p
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) };
                note(-(layout.size() as isize));
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let p = unsafe { System.realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    note(new_size as isize - layout.size() as isize);
                }
                p
            }
        }

        #[global_allocator]
        static PROBE: Probe = Probe;

        /// Runs `f`; returns its result and the most bytes it had allocated
        /// at once on this thread.
        pub fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
            LIVE.with(|l| l.set(0));
            PEAK.with(|p| p.set(0));
            ACTIVE.with(|a| a.set(true));
            let r = f();
            ACTIVE.with(|a| a.set(false));
            (r, PEAK.with(|p| p.get()).max(0) as usize)
        }
    }

    fn unhex(lines: &[&str]) -> Vec<u8> {
        let s: String = lines.concat();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Decodes everything in `bytes`, fed `chunk` bytes at a time.
    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, SpdyError> {
        let mut dec = Decoder::default();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(f) = dec.decode(&mut buf)? {
                frames.push(f);
            }
        }
        assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        Ok(frames)
    }

    fn syn(stream_id: u32, streamtype: &str) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new().with("streamtype", streamtype),
        }
    }

    fn data(stream_id: u32, fin: bool, bytes: &[u8]) -> Frame {
        Frame::Data {
            stream_id,
            fin,
            data: bytes.to_vec(),
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    // -- codec -------------------------------------------------------------

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(&DICTIONARY).unwrap(), DICTIONARY_ADLER);
    }

    fn every_frame_type() -> Vec<Frame> {
        let headers = Headers::new()
            .with("streamtype", "stdout")
            .with("Port", "8080")
            .with("x-multi", "a\0b\0");
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 7,
                slot: 3,
                fin: true,
                unidirectional: true,
                headers: headers.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::RstStream {
                stream_id: 0x7fff_ffff,
                status: RstStatus::FLOW_CONTROL_ERROR,
            },
            Frame::Settings {
                clear: true,
                entries: vec![
                    Setting {
                        id: Setting::INITIAL_WINDOW_SIZE,
                        flags: 1,
                        value: 1 << 20,
                    },
                    Setting {
                        id: Setting::MAX_CONCURRENT_STREAMS,
                        flags: 0,
                        value: 100,
                    },
                ],
            },
            Frame::Settings {
                clear: false,
                entries: vec![],
            },
            Frame::Ping(0xdead_beef),
            Frame::GoAway {
                last_good_stream_id: 41,
                status: GoAwayStatus::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::WindowUpdate {
                stream_id: 5,
                delta: 1,
            },
            data(7, false, b"hello"),
            data(7, true, b""),
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = every_frame_type();
        let mut hc = HeaderCompressor::new();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f, &mut hc));
        }
        assert_eq!(decode_all(&wire, wire.len()).unwrap(), frames);
        // Byte by byte: the decoder must wait for whole frames.
        let mut hc = HeaderCompressor::new();
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f, &mut hc)).collect();
        assert_eq!(decode_all(&wire, 1).unwrap(), frames);
    }

    #[test]
    fn fixed_layouts_match_the_draft() {
        let mut hc = HeaderCompressor::new();
        assert_eq!(
            encode(&Frame::Ping(1), &mut hc),
            [0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]
        );
        assert_eq!(
            encode(
                &Frame::RstStream {
                    stream_id: 5,
                    status: RstStatus::CANCEL
                },
                &mut hc
            ),
            [0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]
        );
        assert_eq!(
            encode(&data(3, true, b"ab"), &mut hc),
            [0, 0, 0, 3, 0x01, 0, 0, 2, b'a', b'b']
        );
        let syn = encode(&syn(1, "error"), &mut hc);
        assert_eq!(&syn[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(
            syn.len() - 8,
            (u32::from_be_bytes([0, syn[5], syn[6], syn[7]])) as usize
        );
        // The first header block opens a zlib stream naming the SPDY/3
        // dictionary (FDICT set, dictionary id e3c6a7c2).
        assert_eq!(syn[18] & 0x0f, 8, "deflate");
        assert_ne!(syn[19] & 0x20, 0, "FDICT");
        assert_eq!(&syn[20..24], &DICTIONARY_ADLER.to_be_bytes());
    }

    /// A SYN_STREAM sent by spdylay (a C SPDY/3 implementation) followed by a
    /// GOAWAY, from proxygen's SPDY codec tests (`multiple_path_headers`).
    /// Its `:path` carries two NUL-separated values.
    const SPDYLAY_SYN_STREAM: &[&str] = &[
        "8003000101000113000000010000000060003830e3c6a7c200f90006ff000000",
        "08000000053a686f7374000000107777772e66616365626f6f6b2e636f6d0000",
        "00073a6d6574686f6400000003474554000000053a70617468000000352f656e",
        "6372797074656472657175657374002a232f696e7465726e2f6167656e742f73",
        "6974655f7661726961626c65732e7068703f000000073a736368656d65000000",
        "056874747073000000083a76657273696f6e00000008485454502f312e310000",
        "0006616363657074000000032a2f2a0000000f6163636570742d656e636f6469",
        "6e670000000d677a69702c206465666c6174650000000a757365722d6167656e",
        "7400000011737064796c61792f312e332e332d444556000000ffff8003000700",
        "0000080000000000000000",
    ];

    #[test]
    fn decodes_a_real_spdy3_syn_stream() {
        let wire = unhex(SPDYLAY_SYN_STREAM);
        for chunk in [wire.len(), 7, 1] {
            let frames = decode_all(&wire, chunk).unwrap();
            assert_eq!(frames.len(), 2);
            let Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                fin,
                unidirectional,
                headers,
                ..
            } = &frames[0]
            else {
                panic!("not a SYN_STREAM: {:?}", frames[0]);
            };
            assert_eq!((*stream_id, *associated_to, *priority), (1, 0, 3));
            assert!(*fin && !*unidirectional);
            assert_eq!(headers.len(), 8);
            assert_eq!(headers.get(":host"), Some("www.facebook.com"));
            assert_eq!(headers.get(":method"), Some("GET"));
            assert_eq!(headers.get("User-Agent"), Some("spdylay/1.3.3-DEV"));
            assert_eq!(headers.get(":path"), Some("/encryptedrequest"));
            let raw_path = headers.iter().find(|(n, _)| *n == ":path").unwrap().1;
            assert_eq!(
                raw_path,
                "/encryptedrequest\0*#/intern/agent/site_variables.php?"
            );
            assert_eq!(
                frames[1],
                Frame::GoAway {
                    last_good_stream_id: 0,
                    status: GoAwayStatus::OK
                }
            );
        }
    }

    /// Two port-forward SYN_STREAMs whose header blocks share one zlib
    /// context, compressed by the C zlib (1.2.13, through CPython) at level 9
    /// with the SPDY dictionary and a sync flush per block, as spdystream
    /// compresses (hence the same `78 f9` zlib header). The second block is
    /// 14 bytes: it only makes sense with the first one's history.
    const C_ZLIB_PORT_FORWARD: &[&str] = &[
        "800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a",
        "4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600",
        "000000ffff800300010000001800000003000000000000c2aa19540e2512d60b",
        "000000ffff",
    ];

    #[test]
    fn decodes_blocks_sharing_a_context_from_another_compressor() {
        let wire = unhex(C_ZLIB_PORT_FORWARD);
        let frames = decode_all(&wire, 5).unwrap();
        let expect = |stream_id, streamtype| Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new()
                .with("streamtype", streamtype)
                .with("port", "8080")
                .with("requestid", "0"),
        };
        assert_eq!(frames, vec![expect(1, "error"), expect(3, "data")]);
        // The second frame alone (a fresh context) cannot be decoded.
        let second = &wire[wire.len() - 32..];
        assert!(Decoder::default().decode(&mut second.to_vec()).is_err());
    }

    /// From proxygen's SPDY codec tests (`multiValuedHeaderAttack`): a real
    /// deflate stream (so this also checks inflating against the
    /// dictionary) of 537 bytes that inflates to 259,291: a header named
    /// with 129,536 `x` whose value is 64k NUL-separated one-byte values.
    const PROXYGEN_HEADER_DOS: &[&str] = &[
        "80030001010002110000000100000000600038eae3c6a7c2ecd4310e82401046",
        "618c851a436f694d3124da6d4fb88017008da1d030c96e0157b772184928e408",
        "efab61934dfe7db6a3c3f49cc21c84932d5afa947a89ad3c2dbdad8d4fee1e8d",
        "5d58a65d5737ff4d1b0fd8b1fc8d5cb453ff325a38df5ed72e259dc6bf0feb9b",
        "5fc2be2dca62bde6b95ff23cdff2ef81e6511fe3ab19edc48b5cb3cd271b0000",
        "000000000000000000000000000000f8b20707020000000040feaf8da0aaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac21e1c08",
        "0000000000f9bf3682aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaa0a7b70200000000000e4ffda08aaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2aecc1410100000404b05347",
        "3fe5bd1410611b000000000000000000000000000000000000f0486d7aa2aaaa",
        "aaaaaaaaaaaaaaaa7aecc201090000000090ffaf1d1155555555555555555555",
        "5555555555555555555555555555555555555555551576e1800400000000c8ff",
        "d78e88aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaa0abb70400200000000e4ff6b474455555555555555555555555555555555",
        "555555555555555555555555555555855d38a60100006018e467fe05f69f0602",
        "00000000000000000000000000000000000000bc050000ffff",
    ];

    #[test]
    fn proxygen_header_dos_is_refused_by_default_and_decodes_when_allowed() {
        let wire = unhex(PROXYGEN_HEADER_DOS);
        let (result, peak) = alloc_probe::peak(|| decode_all(&wire, wire.len()));
        assert!(
            matches!(
                result,
                Err(SpdyError::HeaderBlockTooLarge { limit: 131072 })
            ),
            "{result:?}"
        );
        assert!(peak < 512 * 1024, "peak allocation {peak}");
        // With room for it, the same bytes decode: the refusal above is the
        // limit at work, not a decoding failure.
        let mut dec = Decoder::new(Limits {
            max_header_block: 300_000,
            ..Limits::default()
        });
        let mut buf = wire.clone();
        let frame = dec.decode(&mut buf).unwrap().unwrap();
        let Frame::SynStream { headers, .. } = frame else {
            panic!("not a SYN_STREAM");
        };
        assert_eq!(headers.get(":host"), Some("www.otto.sb.facebook.com"));
        assert_eq!(headers.len(), 9);
    }

    #[test]
    fn malformed_frames_from_real_codec_tests_are_errors() {
        // All from proxygen's SPDY codec tests.
        let cases: &[(&str, &[&str])] = &[
            // SYN_STREAM whose payload is 4 bytes.
            ("shortSynStream", &["800300010100000461626364"]),
            // PING of length 5.
            ("longPing", &["80030006000000050000000000"]),
            // Header count 5, then a name length running past the block.
            (
                "invalidNumNameValuesBlock",
                &[
                    "8003000100000091000000020000000100003830e3c6a7c200770088ff000000",
                    "05000000053a686f73740000000b7777772e666f6f2e636f6d000000773a6d65",
                    "74686f6400000000000000053a706174680013001468747439733a2f2f777777",
                    "2e666f6f2e636f6d2f000000073a736368656d65000000046874747000000008",
                    "3a76657273696f6e00000008485454502f312e31000000ffff",
                ],
            ),
            // An empty header name followed by a 4 GiB value length.
            (
                "kBufBadNVBlock",
                &[
                    "800300010000001c0000000100000000000078bbe3c6a7c202a623c6ff400000",
                    "0000ffff",
                ],
            ),
        ];
        for (name, hex) in cases {
            let wire = unhex(hex);
            let mut dec = Decoder::default();
            let mut buf = wire.clone();
            let result = dec.decode(&mut buf);
            assert!(
                matches!(result, Err(SpdyError::Malformed { .. })),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut wire = unhex(&["8003000b00000002d474"]);
        let mut hc = HeaderCompressor::new();
        wire.extend(encode(&Frame::Ping(3), &mut hc));
        let mut dec = Decoder::default();
        let mut only_unknown = wire[..10].to_vec();
        assert!(dec.decode(&mut only_unknown).unwrap().is_none());
        assert!(only_unknown.is_empty(), "the unknown frame was consumed");
        assert_eq!(decode_all(&wire, 3).unwrap(), vec![Frame::Ping(3)]);
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header_alone() {
        let limits = Limits::default();
        // A DATA header announcing 16 MiB - 1 with none of the payload.
        let mut buf = vec![0, 0, 0, 1, 0x00, 0xff, 0xff, 0xff];
        let (result, peak) = alloc_probe::peak(|| Decoder::default().decode(&mut buf));
        assert!(matches!(
            result,
            Err(SpdyError::FrameTooLarge {
                kind: "data",
                len: 0xff_ffff,
                ..
            })
        ));
        assert!(peak < 256 * 1024, "peak allocation {peak}");
        // Exactly at the limit is fine (once complete).
        let mut hc = HeaderCompressor::new();
        let big = vec![1u8; limits.max_data_frame];
        let mut wire = encode(&data(1, false, &big), &mut hc);
        assert_eq!(
            Decoder::default().decode(&mut wire).unwrap(),
            Some(data(1, false, &big))
        );
        let mut over = encode(
            &data(1, false, &vec![1u8; limits.max_data_frame + 1]),
            &mut hc,
        );
        over.truncate(8);
        assert!(matches!(
            Decoder::default().decode(&mut over),
            Err(SpdyError::FrameTooLarge { kind: "data", .. })
        ));
        // Control frames: a SYN_STREAM header announcing 64 KiB + 1.
        let len = limits.max_control_frame as u32 + 1;
        let mut buf = vec![0x80, 0x03, 0x00, 0x01];
        buf.extend_from_slice(&len.to_be_bytes());
        assert!(matches!(
            Decoder::default().decode(&mut buf),
            Err(SpdyError::FrameTooLarge {
                kind: "control",
                ..
            })
        ));
    }

    #[test]
    fn other_versions_are_refused() {
        // A SPDY/2 PING.
        let mut buf = vec![0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(
            Decoder::default().decode(&mut buf),
            Err(SpdyError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn zero_stream_ids_and_bad_lengths_are_malformed() {
        let cases: Vec<Vec<u8>> = vec![
            // DATA on stream 0.
            vec![0, 0, 0, 0, 0, 0, 0, 1, 9],
            // RST_STREAM on stream 0, and with status 0.
            vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5],
            vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
            // WINDOW_UPDATE of 4 bytes.
            vec![0x80, 3, 0, 9, 0, 0, 0, 4, 0, 0, 0, 1],
            // SETTINGS claiming 2 entries but holding 1.
            vec![
                0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1,
            ],
            // GOAWAY of 4 bytes (the SPDY/2 layout).
            vec![0x80, 3, 0, 7, 0, 0, 0, 4, 0, 0, 0, 1],
        ];
        for mut case in cases {
            let shown = format!("{case:02x?}");
            let result = Decoder::default().decode(&mut case);
            assert!(
                matches!(result, Err(SpdyError::Malformed { .. })),
                "{shown}: {result:?}"
            );
        }
    }

    /// A SYN_STREAM whose header block is exactly `value_len + 13` bytes
    /// inflated (count, name length, "x", value length, value).
    fn syn_with_value(hc: &mut HeaderCompressor, value: String) -> Vec<u8> {
        let frame = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new().with("x", value),
        };
        encode(&frame, hc)
    }

    #[test]
    fn header_block_limit_is_exact() {
        let value_len = 5000;
        let block = 13 + value_len;
        let mut hc = HeaderCompressor::new();
        let wire = syn_with_value(&mut hc, "v".repeat(value_len));
        let limits = |max_header_block| Limits {
            max_header_block,
            ..Limits::default()
        };
        assert!(Decoder::new(limits(block))
            .decode(&mut wire.clone())
            .unwrap()
            .is_some());
        assert!(matches!(
            Decoder::new(limits(block - 1)).decode(&mut wire.clone()),
            Err(SpdyError::HeaderBlockTooLarge { .. })
        ));
    }

    #[test]
    fn zlib_bomb_is_refused_within_bounds() {
        // 16 MiB of one byte deflates to about 16 KiB: a ratio of 1000.
        let mut hc = HeaderCompressor::new();
        let wire = syn_with_value(&mut hc, "a".repeat(16 << 20));
        assert!(
            wire.len() < Limits::default().max_control_frame,
            "{}",
            wire.len()
        );
        let (result, peak) = alloc_probe::peak(|| decode_all(&wire, 4096));
        assert!(
            matches!(result, Err(SpdyError::HeaderBlockTooLarge { .. })),
            "{result:?}"
        );
        assert!(peak < 512 * 1024, "peak allocation {peak}");
    }

    #[test]
    fn too_many_headers_are_refused() {
        let mut hc = HeaderCompressor::new();
        let headers: Headers = (0..129).map(|i| (format!("h{i}"), "v")).collect();
        let mut wire = encode(
            &Frame::Headers {
                stream_id: 1,
                fin: false,
                headers,
            },
            &mut hc,
        );
        assert!(matches!(
            Decoder::default().decode(&mut wire),
            Err(SpdyError::TooManyHeaders {
                count: 129,
                limit: 128
            })
        ));
    }

    #[test]
    fn a_foreign_dictionary_is_refused() {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut block = Vec::with_capacity(256);
        z.compress_vec(&[0, 0, 0, 0], &mut block, FlushCompress::Sync)
            .unwrap();
        let mut wire = vec![0x80, 3, 0, 2];
        wire.extend_from_slice(&(4 + block.len() as u32).to_be_bytes());
        wire.extend_from_slice(&[0, 0, 0, 1]);
        wire.extend_from_slice(&block);
        assert!(matches!(
            Decoder::default().decode(&mut wire),
            Err(SpdyError::Compression(_))
        ));
    }

    fn arb_headers() -> impl Strategy<Value = Headers> {
        prop::collection::vec(("[a-z:][a-z0-9-]{0,15}", "[\\x00 -~]{0,24}"), 0..6)
            .prop_map(|entries| entries.into_iter().collect())
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let id = 1u32..=0x7fff_ffff;
        let any_id = 0u32..=0x7fff_ffff;
        prop_oneof![
            (
                id.clone(),
                any_id.clone(),
                0u8..8,
                any::<u8>(),
                any::<bool>(),
                any::<bool>(),
                arb_headers()
            )
                .prop_map(
                    |(stream_id, associated_to, priority, slot, fin, unidirectional, headers)| {
                        Frame::SynStream {
                            stream_id,
                            associated_to,
                            priority,
                            slot,
                            fin,
                            unidirectional,
                            headers,
                        }
                    }
                ),
            (id.clone(), any::<bool>(), arb_headers()).prop_map(|(stream_id, fin, headers)| {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            }),
            (id.clone(), 1u32..).prop_map(|(stream_id, status)| Frame::RstStream {
                stream_id,
                status: RstStatus(status),
            }),
            (
                any::<bool>(),
                prop::collection::vec((0u32..0x100_0000, any::<u8>(), any::<u32>()), 0..5)
            )
                .prop_map(|(clear, entries)| Frame::Settings {
                    clear,
                    entries: entries
                        .into_iter()
                        .map(|(id, flags, value)| Setting { id, flags, value })
                        .collect(),
                }),
            any::<u32>().prop_map(Frame::Ping),
            (any_id.clone(), any::<u32>()).prop_map(|(last_good_stream_id, status)| {
                Frame::GoAway {
                    last_good_stream_id,
                    status: GoAwayStatus(status),
                }
            }),
            (id.clone(), any::<bool>(), arb_headers()).prop_map(|(stream_id, fin, headers)| {
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }),
            (any_id.clone(), any_id)
                .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
            (
                id,
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..2048)
            )
                .prop_map(|(stream_id, fin, data)| Frame::Data {
                    stream_id,
                    fin,
                    data
                }),
        ]
    }

    /// Turns arbitrary bytes into decoder input that gets past the first
    /// checks, so the fuzzing reaches the deeper paths.
    fn shape_garbage(kind: u8, bytes: Vec<u8>) -> Vec<u8> {
        let len = |n: usize| (n as u32).to_be_bytes();
        match kind % 4 {
            0 => bytes,
            // A SYN_STREAM whose header block is a zlib stream naming the
            // SPDY dictionary, followed by garbage deflate data.
            1 => {
                let mut out = vec![0x80, 3, 0, 1];
                out.extend_from_slice(&len(16 + bytes.len()));
                out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x38, 0xea]);
                out.extend_from_slice(&DICTIONARY_ADLER.to_be_bytes());
                out.extend(bytes);
                out
            }
            // A valid header block, then garbage frames sharing the context.
            2 => {
                let mut hc = HeaderCompressor::new();
                let mut out = encode(&syn(1, "stdin"), &mut hc);
                out.extend(bytes);
                out
            }
            // Frame headers with random types and huge lengths.
            _ => {
                let mut out = Vec::new();
                for chunk in bytes.chunks(8) {
                    let mut header = [0x80, 3, 0, 0, 0, 0, 0, 0];
                    for (h, b) in header[3..].iter_mut().zip(chunk) {
                        *h = *b;
                    }
                    out.extend_from_slice(&header);
                }
                out
            }
        }
    }

    proptest! {
        #[test]
        fn frame_sequences_round_trip_with_shared_contexts(
            frames in prop::collection::vec(arb_frame(), 1..24),
            chunk in 1usize..4096,
        ) {
            let mut hc = HeaderCompressor::new();
            let mut wire = Vec::new();
            for f in &frames {
                encode_into(f, &mut hc, &mut wire);
            }
            prop_assert_eq!(decode_all(&wire, chunk).unwrap(), frames);
        }

        #[test]
        fn garbage_never_panics_nor_allocates_past_the_limits(
            kind in any::<u8>(),
            bytes in prop::collection::vec(any::<u8>(), 0..8192),
            chunk in 1usize..1024,
        ) {
            let input = shape_garbage(kind, bytes);
            let (_, peak) = alloc_probe::peak(|| {
                let mut dec = Decoder::default();
                let mut buf = Vec::with_capacity(input.len());
                for piece in input.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    loop {
                        match dec.decode(&mut buf) {
                            Ok(Some(_)) => continue,
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                }
            });
            // Inflated block (128 KiB) + strings made from it + zlib state,
            // far below the 16 MiB a frame header can claim.
            prop_assert!(peak < 1024 * 1024, "peak allocation {}", peak);
        }
    }

    // -- connection --------------------------------------------------------

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
