//! Helpers the codec and connection tests share: frames and bytes to feed
//! them.

use super::codec::Frame;
use super::headers::Headers;

/// The bytes a hex dump spells (lines concatenated, two digits a byte).
pub(super) fn unhex(lines: &[&str]) -> Vec<u8> {
    let s: String = lines.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A SYN_STREAM opening `stream_id` as Kubernetes does, by `streamtype`.
pub(super) fn syn(stream_id: u32, streamtype: &str) -> Frame {
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

/// A DATA frame.
pub(super) fn data(stream_id: u32, fin: bool, bytes: &[u8]) -> Frame {
    Frame::Data {
        stream_id,
        fin,
        data: bytes.to_vec(),
    }
}

/// `len` bytes that do not repeat at any short period, so a misplaced
/// chunk shows.
pub(super) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}
