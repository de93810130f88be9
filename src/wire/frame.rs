//! Length-prefixed framing: a big-endian `u32` length, then that many bytes
//! of an encoded [`Frame`].
//!
//! Decoding is two-phase, as in a sans-IO parser: [`check`] looks at the
//! length prefix without allocating and says whether a whole frame is
//! buffered, whether it is too large, or whether more bytes are needed; only
//! then [`decode`] splits the frame off the buffer (no copy) and parses it.
//! Nothing here touches a socket or a clock.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use super::decode;
use super::encode::DeliverRef;
use super::messages::{Body, Frame, RoutingHeader};

/// Bytes in the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// The default largest frame: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The frame bytes are not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The frame decoded but has no body.
    #[error("malformed frame: no body")]
    Empty,
}

/// What [`check`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// A whole frame of this many body bytes is buffered.
    Ready(usize),
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
}

/// Looks at the front of `buf` without consuming or allocating.
pub fn check(buf: &[u8], max: usize) -> Result<Check, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(Check::Incomplete(LENGTH_PREFIX));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < LENGTH_PREFIX + len {
        return Ok(Check::Incomplete(LENGTH_PREFIX + len));
    }
    Ok(Check::Ready(len))
}

/// Splits one frame off the front of `buf` and parses it, if a whole frame is
/// there. The frame's byte fields point into the split-off buffer.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match check(buf, max)? {
        Check::Incomplete(_) => Ok(None),
        Check::Ready(len) => {
            buf.advance(LENGTH_PREFIX);
            parse(buf.split_to(len).freeze()).map(Some)
        }
    }
}

/// Parses one frame's body (the bytes after its length prefix). The frame's
/// byte fields point into `body`.
pub fn parse(body: Bytes) -> Result<Frame, FrameError> {
    if let Some(frame) = decode::frame(&body) {
        return Ok(frame);
    }
    let frame = Frame::decode(body)?;
    if frame.body.is_none() {
        return Err(FrameError::Empty);
    }
    Ok(frame)
}

/// Appends `frame`, length prefix first, to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(LENGTH_PREFIX + len);
    // A frame over u32::MAX cannot be built from inputs we accept (the
    // maximum frame is checked on both sides), so the cast cannot truncate.
    out.put_u32(len as u32);
    // Encoding into a BytesMut that has reserved enough cannot fail.
    let _ = frame.encode(out);
}

/// Payloads from this size on are written from their own buffer (see
/// [`encode_split`]).
pub const SPLIT_PAYLOAD: usize = 16 * 1024;

/// [`encode`], except that the payload of a `Send` or `Deliver` of
/// [`SPLIT_PAYLOAD`] bytes or more is not copied into `out`: it is
/// returned, and the frame is `out`'s new bytes followed by it. The payload
/// field then comes last in its message instead of in field order; protobuf
/// readers take fields in any order, so the frame decodes the same (only
/// its bytes differ from [`encode`]'s). `Send` and `Deliver` are written by
/// [`encode`](super::encode), without cloning their byte fields.
pub fn encode_split(frame: &Frame, out: &mut BytesMut) -> Option<Bytes> {
    match &frame.body {
        Some(Body::Send(m)) => super::encode::send(m, out),
        Some(Body::Deliver(m)) => super::encode::deliver(&DeliverRef::of(m), out),
        _ => {
            encode(frame, out);
            None
        }
    }
}

/// Encodes one frame into a fresh buffer (tests, vectors, one-off writes).
pub fn to_bytes(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    encode(frame, &mut out);
    out.freeze()
}

/// Encodes a routing header to the bytes that travel in `Send.header`
/// (as prost would, without cloning its byte fields).
pub fn encode_header(header: &RoutingHeader) -> Bytes {
    super::encode::header(header)
}

/// Parses routing-header bytes. The bytes themselves are what gets forwarded.
pub fn decode_header(bytes: &Bytes) -> Result<RoutingHeader, prost::DecodeError> {
    match decode::header(bytes) {
        Some(header) => Ok(header),
        None => RoutingHeader::decode(bytes.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::{Body, Ping, ServiceBlob};
    use crate::wire::messages::{Deliver, Send};

    fn ping(n: u64) -> Frame {
        Frame { body: Some(Body::Ping(Ping { nonce: n })) }
    }

    #[test]
    fn round_trip_and_partial_reads() {
        let bytes = to_bytes(&ping(7));
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            assert!(decode(&mut buf, 64).unwrap().is_none(), "frame complete too early at byte {i}");
            buf.put_u8(*b);
        }
        assert_eq!(decode(&mut buf, 64).unwrap(), Some(ping(7)));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading_the_body() {
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert!(matches!(decode(&mut buf, 1024), Err(FrameError::TooLarge { len: 0x100000, max: 1024 })));
    }

    /// A large payload written after the rest of its frame: the bytes
    /// decode to the same frame, as long as `encode` makes it; small frames
    /// are encoded exactly as `encode` does.
    #[test]
    fn a_split_frame_decodes_to_the_same_frame() {
        let blob = |s: &str| ServiceBlob { service: s.into(), data: Bytes::from_static(b"0123456789abcdef") };
        let payload = Bytes::from((0..SPLIT_PAYLOAD + 7).map(|i| i as u8).collect::<Vec<u8>>());
        let send = Send {
            corr: 9,
            header: Bytes::from_static(b"header"),
            payload: payload.clone(),
            tags: vec![blob("todo"), blob("audit")],
            grants: vec![blob("todo")],
        };
        let deliver = Deliver {
            tag: 300,
            header: Bytes::from_static(b"header"),
            payload: payload.clone(),
            sender: "web".into(),
            sender_id: "spiffe://example.org/svc/web".into(),
            timestamp_ms: 1_700_000_000_000,
            attempt: 2,
            auth_tag: Bytes::from_static(b"tag"),
            grant: Bytes::from_static(b"grant"),
        };
        for frame in [Frame { body: Some(Body::Send(send)) }, Frame { body: Some(Body::Deliver(deliver)) }] {
            let mut out = BytesMut::new();
            let tail = encode_split(&frame, &mut out).expect("a large payload is split off");
            assert_eq!(tail, payload);
            assert!(out.len() < 200, "the payload was copied: {} bytes", out.len());
            out.extend_from_slice(&tail);
            assert_eq!(out.len(), to_bytes(&frame).len());
            assert_eq!(decode(&mut out, DEFAULT_MAX_FRAME).unwrap(), Some(frame));
            assert!(out.is_empty());
        }
        let mut small = Send { payload: Bytes::from_static(b"x"), ..Default::default() };
        small.corr = 1;
        let small = Frame { body: Some(Body::Send(small)) };
        let mut out = BytesMut::new();
        assert!(encode_split(&small, &mut out).is_none());
        assert_eq!(out.freeze(), to_bytes(&small));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(decode(&mut buf, 1024), Err(FrameError::Malformed(_))));
        let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(decode(&mut empty, 1024), Err(FrameError::Empty)));
    }
}
