//! SPDY/3 frames on the wire: the frame model ([`Frame`] and the codes it
//! carries), [`encode`], and the incremental [`Decoder`] with the
//! [`Limits`] that keep a hostile peer from making it allocate without
//! bound. Header blocks and their compression are in `headers.rs`; this
//! file only frames them.
//!
//! Nothing here knows about connections or streams: the decoder takes
//! bytes and returns frames, so it can be tested and fuzzed on its own.

use std::io;
use std::sync::Arc;

use super::headers::{HeaderCompressor, HeaderDecompressor, Headers};

/// The protocol version this module speaks; control frames of any other
/// version are a protocol error.
pub const VERSION: u16 = 3;

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
// Encoding
// ---------------------------------------------------------------------------

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends `v` big-endian, as every SPDY field is (header blocks too).
pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
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
///
/// This is the whole of the parsing a peer's bytes go through, which makes
/// [`Decoder::decode`] the entry point for fuzzing: whatever bytes it is
/// fed, in whatever pieces, it must return frames, `Ok(None)` or an error,
/// never panic, and never allocate past the limits. One decoder keeps the
/// header decompression context across frames, as a connection does, so
/// feed one decoder a whole input rather than a fresh one per frame.
///
/// ```
/// use unitlet::kubelet::spdy::{Decoder, Frame, Limits};
///
/// let mut dec = Decoder::new(Limits::default());
/// // A PING (control bit, version 3, type 6, length 4, id 1), one byte short.
/// let mut buf = vec![0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0];
/// assert_eq!(dec.decode(&mut buf).unwrap(), None);
/// buf.push(1);
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping(1)));
/// assert!(buf.is_empty());
/// ```
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

#[cfg(test)]
mod tests {
    use super::super::headers::DICTIONARY_ADLER;
    use super::super::testutil::{data, syn, unhex};
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use proptest::prelude::*;

    /// Counts this thread's heap use while a closure runs, so that tests can
    /// assert what the decoder allocates (zlib-rs allocates through Rust's
    /// allocator, so its state is counted too).
    // A counting allocator measures what decoding allocates: only a
    // `GlobalAlloc` sees every allocation, and implementing one is unsafe.
    #[allow(unsafe_code)]
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

    // -- codec -------------------------------------------------------------

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
}
