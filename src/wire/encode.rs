//! Field-by-field encoders for what every message crosses: the routing
//! header, `Send` and `Deliver`. Their bytes are exactly prost's (fields in
//! tag order, defaults left out; tests/properties.rs compares them with
//! prost's for any input), but byte fields are copied from slices: prost writes a
//! `Bytes` field by cloning it, and the first clone of a `Bytes` made from
//! a `Vec` allocates its shared header, so the relays paid an allocation
//! per header, payload and tag they sent. A `Deliver` is also encoded from
//! borrowed parts, so the router writes one without building the frame
//! (and its two `String`s) first.
//!
//! This module only encodes ([`decode`](super::decode) reads the same
//! messages back). It must never depend on the router, the relay or `e2e`.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::frame::{LENGTH_PREFIX, SPLIT_PAYLOAD};
use super::messages::{Deliver, RoutingHeader, Send, ServiceBlob};

/// `Frame.body` field numbers of `Send` and `Deliver`, and the field number
/// of `payload` in both (docs/exocom.proto).
const SEND_TAG: u32 = 4;
const DELIVER_TAG: u32 = 7;
const PAYLOAD_TAG: u32 = 3;

/// A `Deliver` by its parts, borrowed: what [`deliver`] writes.
#[derive(Clone, Copy, Debug)]
pub struct DeliverRef<'a> {
    /// Delivery tag.
    pub tag: u64,
    /// The routing header, as the sender encoded it.
    pub header: &'a [u8],
    /// The payload, as the sender sent it.
    pub payload: &'a Bytes,
    /// The sender's service name.
    pub sender: &'a str,
    /// The sender's identity.
    pub sender_id: &'a str,
    /// When the router accepted the message, Unix ms.
    pub timestamp_ms: u64,
    /// 1 for the first delivery, higher for redeliveries.
    pub attempt: u32,
    /// This service's authentication tag, or empty.
    pub auth_tag: &'a [u8],
    /// The key grant for the header's epoch, or empty.
    pub grant: &'a [u8],
}

impl<'a> DeliverRef<'a> {
    /// The parts of a decoded or built `Deliver`. (Destructured, so a field
    /// added to `Deliver` fails to compile here until it is encoded.)
    pub fn of(d: &'a Deliver) -> Self {
        let Deliver { tag, header, payload, sender, sender_id, timestamp_ms, attempt, auth_tag, grant } = d;
        Self {
            tag: *tag,
            header,
            payload,
            sender,
            sender_id,
            timestamp_ms: *timestamp_ms,
            attempt: *attempt,
            auth_tag,
            grant,
        }
    }

    /// Encoded length of every field but the payload.
    fn rest_len(&self) -> usize {
        varint_len(1, self.tag)
            + bytes_len(2, self.header.len())
            + bytes_len(4, self.sender.len())
            + bytes_len(5, self.sender_id.len())
            + varint_len(6, self.timestamp_ms)
            + varint_len(7, u64::from(self.attempt))
            + bytes_len(8, self.auth_tag.len())
            + bytes_len(9, self.grant.len())
    }

    /// Writes the fields in tag order; the payload only when `with_payload`.
    fn put(&self, out: &mut BytesMut, with_payload: bool) {
        put_varint(out, 1, self.tag);
        put_bytes(out, 2, self.header);
        if with_payload {
            put_bytes(out, 3, self.payload);
        }
        put_bytes(out, 4, self.sender.as_bytes());
        put_bytes(out, 5, self.sender_id.as_bytes());
        put_varint(out, 6, self.timestamp_ms);
        put_varint(out, 7, u64::from(self.attempt));
        put_bytes(out, 8, self.auth_tag);
        put_bytes(out, 9, self.grant);
    }
}

/// Appends the frame of a `Deliver`, length prefix first, to `out`, as
/// [`frame::encode_split`](super::frame::encode_split) would the same
/// `Deliver` in a `Frame`: a payload of [`SPLIT_PAYLOAD`] bytes or more is
/// not copied but returned, to be written after `out`'s new bytes.
pub fn deliver(d: &DeliverRef<'_>, out: &mut BytesMut) -> Option<Bytes> {
    let rest = d.rest_len();
    let payload = d.payload.len();
    let message = rest + bytes_len(PAYLOAD_TAG, payload);
    let split = payload >= SPLIT_PAYLOAD;
    put_frame_start(out, DELIVER_TAG, message, if split { payload } else { 0 });
    if split {
        d.put(out, false);
        put_payload_key(out, payload);
        Some(d.payload.clone())
    } else {
        d.put(out, true);
        None
    }
}

/// Appends the frame of `s`, length prefix first, to `out`, as
/// [`frame::encode_split`](super::frame::encode_split) would `s` in a
/// `Frame` (a large payload returned, not copied).
pub fn send(s: &Send, out: &mut BytesMut) -> Option<Bytes> {
    // Destructured, so a field added to `Send` fails to compile here.
    let Send { corr, header, payload: body, tags, grants } = s;
    // prost's lengths clone nothing: only its writing of `Bytes` does.
    let message = s.encoded_len();
    let payload = body.len();
    let split = payload >= SPLIT_PAYLOAD;
    put_frame_start(out, SEND_TAG, message, if split { payload } else { 0 });
    put_varint(out, 1, *corr);
    put_bytes(out, 2, header);
    if !split {
        put_bytes(out, 3, body);
    }
    for (tag, blobs) in [(4, tags), (5, grants)] {
        for b in blobs {
            // Every element is written, an empty one too.
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(b.encoded_len() as u64, out);
            // Destructured, so a field added to `ServiceBlob` fails to compile here.
            let ServiceBlob { service, data } = b;
            put_bytes(out, 1, service.as_bytes());
            put_bytes(out, 2, data);
        }
    }
    if split {
        put_payload_key(out, payload);
        return Some(body.clone());
    }
    None
}

/// Encodes a routing header to the bytes that travel in `Send.header`.
pub fn header(h: &RoutingHeader) -> Bytes {
    // Destructured, so a field added to `RoutingHeader` fails to compile here.
    let RoutingHeader {
        name,
        version,
        id,
        origin_id,
        response_to,
        kind,
        sender,
        sender_instance,
        expects_reply,
        partition_key,
        expires_at_ms,
        stream_seq,
        stream_final,
        seal,
        epoch,
        seq,
        policy_serial,
    } = h;
    // prost writes an enum as its i32 sign-extended to 64 bits.
    let kind = *kind as u64;
    let mut out = BytesMut::with_capacity(h.encoded_len());
    put_bytes(&mut out, 1, name.as_bytes());
    put_varint(&mut out, 2, u64::from(*version));
    put_bytes(&mut out, 3, id);
    put_bytes(&mut out, 4, origin_id);
    put_bytes(&mut out, 5, response_to);
    put_varint(&mut out, 6, kind);
    put_bytes(&mut out, 7, sender.as_bytes());
    put_bytes(&mut out, 8, sender_instance.as_bytes());
    put_varint(&mut out, 9, u64::from(*expects_reply));
    put_bytes(&mut out, 10, partition_key.as_bytes());
    put_varint(&mut out, 11, *expires_at_ms);
    put_varint(&mut out, 12, *stream_seq);
    put_varint(&mut out, 13, u64::from(*stream_final));
    put_varint(&mut out, 14, u64::from(*seal));
    put_bytes(&mut out, 15, epoch);
    put_varint(&mut out, 16, *seq);
    put_varint(&mut out, 17, *policy_serial);
    out.freeze()
}

/// The length prefix, the body's key and the message's length, with room
/// reserved for the frame less `left_out` bytes (a payload written apart).
fn put_frame_start(out: &mut BytesMut, body_tag: u32, message: usize, left_out: usize) {
    let frame = key_len(body_tag) + encoded_len_varint(message as u64) + message;
    out.reserve(LENGTH_PREFIX + frame - left_out);
    // A frame over u32::MAX cannot be built from inputs we accept (the
    // maximum frame is checked on both sides), so the cast cannot truncate.
    out.put_u32(frame as u32);
    encode_key(body_tag, WireType::LengthDelimited, out);
    encode_varint(message as u64, out);
}

/// The payload field's key and length, its bytes to follow apart.
fn put_payload_key(out: &mut BytesMut, len: usize) {
    encode_key(PAYLOAD_TAG, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Encoded length of a varint field (nothing when it is 0, as prost).
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v) }
}

/// Encoded length of a bytes or string field (nothing when empty, as prost).
fn bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { key_len(tag) + encoded_len_varint(len as u64) + len }
}

fn put_varint(out: &mut impl BufMut, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn put_bytes(out: &mut impl BufMut, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(b.len() as u64, out);
        out.put_slice(b);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::wire::frame;
    use crate::wire::messages::Body;

    // That the bytes are prost's, for any field values: tests/properties.rs.

    /// A whole frame reads back as what was encoded, the split payload
    /// after the rest.
    #[test]
    fn encoded_frames_read_back() {
        let d = Deliver {
            tag: 9,
            header: Bytes::from_static(b"h"),
            payload: Bytes::from(vec![1u8; SPLIT_PAYLOAD]),
            sender: "billing".into(),
            sender_id: "spiffe://exocom/billing".into(),
            timestamp_ms: 1,
            attempt: 2,
            auth_tag: Bytes::from_static(b"t"),
            grant: Bytes::new(),
        };
        let mut out = BytesMut::new();
        let payload = deliver(&DeliverRef::of(&d), &mut out).unwrap();
        out.extend_from_slice(&payload);
        let back = frame::decode(&mut out, usize::MAX).unwrap().unwrap();
        assert_eq!(back.body, Some(Body::Deliver(d)));
        assert!(out.is_empty());
    }
}
