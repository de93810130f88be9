//! Field-by-field decoders for what every message crosses: the `Send`,
//! `Deliver` and `Accepted` frames and the routing header. They give
//! exactly what prost's decoding gives, without its generic per-field
//! machinery (a `Bytes` field cut from the input costs one reference count,
//! as with prost; the router's header view costs none).
//!
//! They never reject. On anything but the plain shape our encoders write
//! (a field number or wire type the schema does not have, a field that is
//! not repeated given twice, a malformed varint, a length past the end, a
//! string that is not UTF-8, a frame body that is not one `Send`,
//! `Deliver` or `Accepted`) they return `None`, and the caller decodes the
//! same bytes with prost, which decides, errors included. So whatever a
//! peer sends is read exactly as prost reads it;
//! tests/properties.rs checks that for any message and for arbitrary and
//! damaged bytes. This module must never panic on input, and never depend
//! on the router, the relay or `e2e`.

use std::ops::Range;

use bytes::Bytes;

use super::messages::{Accepted, Body, Deliver, Frame, RoutingHeader, Send, ServiceBlob};

/// `Frame.body` field numbers (docs/exocom.proto).
const SEND_TAG: u64 = 4;
const ACCEPTED_TAG: u64 = 5;
const DELIVER_TAG: u64 = 7;

/// One field's value, by wire type: a varint, or the range of a
/// length-delimited field's bytes.
enum Value {
    Varint(u64),
    Len(Range<usize>),
}

/// The byte range of one field in the bytes it was decoded from. Empty when
/// the field was absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// The field's bytes in `bytes` (the bytes it was decoded from; empty
    /// for any other bytes too short for it).
    pub fn of(self, bytes: &[u8]) -> &[u8] {
        bytes.get(self.start..self.end).unwrap_or_default()
    }

    /// The field's bytes as a slice of `bytes`, without copying.
    pub fn share(self, bytes: &Bytes) -> Bytes {
        if self.start < self.end && self.end <= bytes.len() {
            bytes.slice(self.start..self.end)
        } else {
            Bytes::new()
        }
    }

    /// The field's bytes as text, if they are UTF-8.
    fn text(self, bytes: &[u8]) -> Option<&str> {
        std::str::from_utf8(self.of(bytes)).ok()
    }
}

impl From<Range<usize>> for Span {
    fn from(r: Range<usize>) -> Self {
        Span { start: r.start, end: r.end }
    }
}

/// A routing header's fields as they are on the wire: numbers decoded,
/// byte and string fields as [`Span`]s of the header's bytes, strings not
/// yet checked to be UTF-8 (what the router reads, like
/// [`RoutingHeaderView`](super::RoutingHeaderView)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the fields of `RoutingHeader`, documented there
pub struct RawHeader {
    pub name: Span,
    pub version: u32,
    pub id: Span,
    pub origin_id: Span,
    pub response_to: Span,
    pub kind: i32,
    pub sender: Span,
    pub sender_instance: Span,
    pub expects_reply: bool,
    pub partition_key: Span,
    pub expires_at_ms: u64,
    pub stream_seq: u64,
    pub stream_final: bool,
    pub seal: u32,
    pub epoch: Span,
    pub seq: u64,
    pub policy_serial: u64,
}

/// Reads the varint at `*pos` in `buf`, as prost does (at most ten bytes,
/// the tenth at most 1); `None` if it is malformed or runs past the end.
#[inline]
fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    // Keys, lengths and small numbers: one byte.
    let b = *buf.get(*pos)?;
    if b < 0x80 {
        *pos += 1;
        return Some(u64::from(b));
    }
    long_varint(buf, pos)
}

fn long_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if i == 9 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Calls `f` with each field (number and value) of the message in
/// `buf[within]`; `None` as soon as a field is malformed, has a wire type
/// other than varint or length-delimited, occurs twice without being one
/// of the `repeated` (a bit per field number), or `f` gives up on it.
/// (prost lets a later occurrence replace an earlier one, but refuses a
/// string that is not UTF-8 where it meets it; leaving repeats to prost
/// lets the decoders check each string once, at the end.)
#[inline]
fn fields(
    buf: &[u8],
    within: Range<usize>,
    repeated: u64,
    mut f: impl FnMut(u64, Value) -> Option<()>,
) -> Option<()> {
    let buf = buf.get(..within.end)?;
    let mut pos = within.start;
    let mut seen = 0u64;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let value = match key & 0x07 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let start = pos;
                pos = pos.checked_add(len).filter(|&end| end <= buf.len())?;
                Value::Len(start..pos)
            }
            _ => return None,
        };
        let field = key >> 3;
        // Every field number of these messages is under 64.
        let bit = 1u64.checked_shl(u32::try_from(field).ok()?)?;
        if seen & bit & !repeated != 0 {
            return None;
        }
        seen |= bit;
        f(field, value)?;
    }
    Some(())
}

/// A frame body that is one `Send`, `Deliver` or `Accepted`, as prost
/// decodes it; `None` for anything else.
pub fn frame(body: &Bytes) -> Option<Frame> {
    let mut pos = 0;
    let key = varint(body, &mut pos)?;
    let len = usize::try_from(varint(body, &mut pos)?).ok()?;
    if key & 0x07 != 2 || pos.checked_add(len)? != body.len() {
        return None;
    }
    let within = pos..body.len();
    let body = match key >> 3 {
        SEND_TAG => Body::Send(send(body, within)?),
        DELIVER_TAG => Body::Deliver(deliver(body, within)?),
        ACCEPTED_TAG => Body::Accepted(accepted(body, within)?),
        _ => return None,
    };
    Some(Frame { body: Some(body) })
}

fn send(buf: &Bytes, within: Range<usize>) -> Option<Send> {
    let (mut corr, mut header, mut payload) = (0, Bytes::new(), Bytes::new());
    let (mut tags, mut grants) = (Vec::new(), Vec::new());
    // Fields 4 and 5 (`tags`, `grants`) repeat.
    fields(buf, within, 1 << 4 | 1 << 5, |field, value| {
        match (field, value) {
            (1, Value::Varint(v)) => corr = v,
            (2, Value::Len(r)) => header = Span::from(r).share(buf),
            (3, Value::Len(r)) => payload = Span::from(r).share(buf),
            (4, Value::Len(r)) => tags.push(blob(buf, r)?),
            (5, Value::Len(r)) => grants.push(blob(buf, r)?),
            _ => return None,
        }
        Some(())
    })?;
    // A struct literal: a field added to `Send` fails to compile here.
    Some(Send { corr, header, payload, tags, grants })
}

fn blob(buf: &Bytes, within: Range<usize>) -> Option<ServiceBlob> {
    let (mut service, mut data) = (String::new(), Bytes::new());
    fields(buf, within, 0, |field, value| {
        match (field, value) {
            (1, Value::Len(r)) => Span::from(r).text(buf)?.clone_into(&mut service),
            (2, Value::Len(r)) => data = Span::from(r).share(buf),
            _ => return None,
        }
        Some(())
    })?;
    Some(ServiceBlob { service, data })
}

fn deliver(buf: &Bytes, within: Range<usize>) -> Option<Deliver> {
    let mut d = Deliver::default();
    let (mut sender, mut sender_id) = (Span::default(), Span::default());
    fields(buf, within, 0, |field, value| {
        match (field, value) {
            (1, Value::Varint(v)) => d.tag = v,
            (2, Value::Len(r)) => d.header = Span::from(r).share(buf),
            (3, Value::Len(r)) => d.payload = Span::from(r).share(buf),
            (4, Value::Len(r)) => sender = r.into(),
            (5, Value::Len(r)) => sender_id = r.into(),
            (6, Value::Varint(v)) => d.timestamp_ms = v,
            (7, Value::Varint(v)) => d.attempt = v as u32,
            (8, Value::Len(r)) => d.auth_tag = Span::from(r).share(buf),
            (9, Value::Len(r)) => d.grant = Span::from(r).share(buf),
            _ => return None,
        }
        Some(())
    })?;
    // Destructured, so a field added to `Deliver` fails to compile here.
    let Deliver { tag, header, payload, sender: _, sender_id: _, timestamp_ms, attempt, auth_tag, grant } = d;
    Some(Deliver {
        tag,
        header,
        payload,
        sender: sender.text(buf)?.to_owned(),
        sender_id: sender_id.text(buf)?.to_owned(),
        timestamp_ms,
        attempt,
        auth_tag,
        grant,
    })
}

fn accepted(buf: &Bytes, within: Range<usize>) -> Option<Accepted> {
    let (mut corr, mut receivers) = (0, 0);
    fields(buf, within, 0, |field, value| {
        match (field, value) {
            (1, Value::Varint(v)) => corr = v,
            (2, Value::Varint(v)) => receivers = v as u32,
            _ => return None,
        }
        Some(())
    })?;
    Some(Accepted { corr, receivers })
}

/// The fields of the routing header in `bytes`, as prost decodes a
/// [`RoutingHeaderView`](super::RoutingHeaderView) (strings unchecked);
/// `None` for anything but the plain shape.
pub fn raw_header(bytes: &[u8]) -> Option<RawHeader> {
    let mut h = RawHeader::default();
    fields(bytes, 0..bytes.len(), 0, |field, value| {
        match (field, value) {
            (1, Value::Len(r)) => h.name = r.into(),
            (2, Value::Varint(v)) => h.version = v as u32,
            (3, Value::Len(r)) => h.id = r.into(),
            (4, Value::Len(r)) => h.origin_id = r.into(),
            (5, Value::Len(r)) => h.response_to = r.into(),
            (6, Value::Varint(v)) => h.kind = v as i32,
            (7, Value::Len(r)) => h.sender = r.into(),
            (8, Value::Len(r)) => h.sender_instance = r.into(),
            (9, Value::Varint(v)) => h.expects_reply = v != 0,
            (10, Value::Len(r)) => h.partition_key = r.into(),
            (11, Value::Varint(v)) => h.expires_at_ms = v,
            (12, Value::Varint(v)) => h.stream_seq = v,
            (13, Value::Varint(v)) => h.stream_final = v != 0,
            (14, Value::Varint(v)) => h.seal = v as u32,
            (15, Value::Len(r)) => h.epoch = r.into(),
            (16, Value::Varint(v)) => h.seq = v,
            (17, Value::Varint(v)) => h.policy_serial = v,
            _ => return None,
        }
        Some(())
    })?;
    Some(h)
}

/// The routing header in `bytes`, as prost decodes a [`RoutingHeader`];
/// `None` for anything but the plain shape, or a string that is not UTF-8.
pub fn header(bytes: &Bytes) -> Option<RoutingHeader> {
    let h = raw_header(bytes)?;
    // A struct literal: a field added to `RoutingHeader` fails to compile
    // here until it is read (and added to `RawHeader`).
    Some(RoutingHeader {
        name: h.name.text(bytes)?.to_owned(),
        version: h.version,
        id: h.id.share(bytes),
        origin_id: h.origin_id.share(bytes),
        response_to: h.response_to.share(bytes),
        kind: h.kind,
        sender: h.sender.text(bytes)?.to_owned(),
        sender_instance: h.sender_instance.text(bytes)?.to_owned(),
        expects_reply: h.expects_reply,
        partition_key: h.partition_key.text(bytes)?.to_owned(),
        expires_at_ms: h.expires_at_ms,
        stream_seq: h.stream_seq,
        stream_final: h.stream_final,
        seal: h.seal,
        epoch: h.epoch.share(bytes),
        seq: h.seq,
        policy_serial: h.policy_serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn varints_are_read_as_prost_reads_them() {
        let read = |b: &[u8]| varint(b, &mut 0);
        assert_eq!(read(&[0x00]), Some(0));
        assert_eq!(read(&[0x96, 0x01]), Some(150));
        assert_eq!(read(&[0x80, 0x00]), Some(0), "an overlong zero is still zero");
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&max), Some(u64::MAX));
        let mut over = max;
        over[9] = 0x02;
        assert_eq!(read(&over), None, "a tenth byte over 1 overflows");
        assert_eq!(read(&[0x80]), None, "runs past the end");
        assert_eq!(read(&[]), None);
    }

    #[test]
    fn anything_but_the_plain_shape_is_left_to_prost() {
        let send = Frame { body: Some(Body::Send(Send { corr: 7, ..Default::default() })) };
        let plain = Bytes::from(send.encode_to_vec());
        assert_eq!(frame(&plain), Some(send));
        let mut unknown = plain.to_vec();
        unknown.extend_from_slice(&[0x78, 0x01]); // field 15, a varint
        assert_eq!(frame(&Bytes::from(unknown)), None, "a second field in the body");
        let ping = Frame { body: Some(Body::Ping(super::super::Ping { nonce: 1 })) };
        assert_eq!(frame(&Bytes::from(ping.encode_to_vec())), None, "not a hot frame");
        assert_eq!(raw_header(&[0x1d, 0, 0, 0, 0]), None, "a fixed32 field");
        assert_eq!(header(&Bytes::from_static(&[0x0a, 0x01, 0xff])), None, "a name that is not UTF-8");
        assert!(raw_header(&[0x0a, 0x01, 0xff]).is_some(), "the view does not check strings");
    }
}
