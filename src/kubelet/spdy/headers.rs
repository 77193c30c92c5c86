//! Header blocks: the [`Headers`] a SYN_STREAM, SYN_REPLY or HEADERS frame
//! carries, and their SPDY/3 compression.
//!
//! SPDY/3 deflates every header block of a connection through one zlib
//! stream per direction, primed with a fixed dictionary of common header
//! names and values. Blocks therefore cannot be compressed or inflated on
//! their own: [`HeaderCompressor`] and [`HeaderDecompressor`] each hold one
//! direction's context for the whole connection, and the decompressor caps
//! what one block may inflate to, since the peer controls the input.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::codec::{put_u32, SpdyError};

/// A header block: lower-cased names in wire order, each with its raw value
/// (several values are joined by NUL bytes, as on the wire).
///
/// A list rather than a map because SPDY allows repeated names and the
/// order is what the peer sent; Kubernetes' blocks hold a handful of
/// entries, so lookups by scanning are cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Read directly by the decoder, which builds blocks off the wire.
    pub(super) entries: Vec<(String, String)>,
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

// ---------------------------------------------------------------------------
// Compression
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
                let want = (out.capacity() * 2).max(1024).min(limit.saturating_add(1));
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
// The SPDY/3 dictionary
// ---------------------------------------------------------------------------

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
pub(super) const DICTIONARY_ADLER: u32 = 0xe3c6_a7c2;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(&DICTIONARY).unwrap(), DICTIONARY_ADLER);
    }
}

#[cfg(test)]
mod small_limit {
    /// A limit below 1 KiB once panicked (`clamp` with min > max): found by
    /// the spdy_frames fuzz target.
    #[test]
    fn a_small_limit_is_an_error_not_a_panic() {
        // Before the fix this call panicked; any answer is fine now.
        let _ = super::HeaderDecompressor::new(100).decompress(b"");
    }
}
