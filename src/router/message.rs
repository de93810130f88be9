//! An accepted message as the router holds it: the routing fields it parsed
//! from the header, and the header and payload bytes it forwards untouched.
//!
//! The payload is never looked at: it is opaque (sealed) bytes. The header
//! bytes are kept exactly as the sender encoded them, because end-to-end
//! sealing binds them as associated data; the router never re-encodes them.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use prost::Message as _;

use crate::wire::{Kind, RoutingHeaderView, decode};

/// Identifies one connection (one relay instance connection) in the router.
pub type ConnId = u64;

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header bytes are not a valid `RoutingHeader`.
    #[error("routing header does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A string field of the header is not UTF-8.
    #[error("routing header does not decode: a string field is not UTF-8")]
    Utf8,
    /// The name is empty or not dotted lowercase tokens.
    #[error("invalid message name {0:?}: expected dot-separated tokens of a-z 0-9 _ -")]
    Name(String),
    /// The id is not 16 bytes.
    #[error("message id must be 16 bytes, got {0}")]
    Id(usize),
    /// `origin_id` or `response_to` is neither empty nor 16 bytes.
    #[error("{field} must be empty or 16 bytes, got {len}")]
    Uuid {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// `kind` is not a known value.
    #[error("unknown message kind {0}")]
    Kind(i32),
    /// A reply without `response_to`, or a command/event with it.
    #[error("a reply must carry response_to, and only a reply may")]
    ReplyShape,
}

/// The sender as the router authenticated it (from its certificate).
#[derive(Clone, Debug)]
pub struct Sender {
    /// Service name from the policy.
    pub service: Arc<str>,
    /// SPIFFE URI from the certificate.
    pub identity: Arc<str>,
    /// The instance id the relay gave in `Hello`.
    pub instance: Arc<str>,
    /// The connection it came on.
    pub conn: ConnId,
}

/// An accepted message.
#[derive(Debug)]
pub struct Message {
    /// Message id.
    pub id: Uuid,
    /// Name, e.g. `todos.list`.
    pub name: Arc<str>,
    /// API version (≥ 1).
    pub version: u32,
    /// Command, event or reply.
    pub kind: Kind,
    /// The activity that caused it.
    pub origin_id: Option<Uuid>,
    /// For replies: the command answered.
    pub response_to: Option<Uuid>,
    /// A command whose sender waits for replies.
    pub expects_reply: bool,
    /// Keeps related messages on one instance, in order.
    pub partition_key: Option<Arc<str>>,
    /// Unix ms after which it must not be delivered; 0 = never.
    pub expires_at_ms: u64,
    /// Last reply of a stream.
    pub stream_final: bool,
    /// End-to-end sender key epoch (empty when the payload is not sealed).
    pub epoch: Bytes,
    /// Who sent it (authenticated).
    pub sender: Sender,
    /// When the router accepted it, Unix ms.
    pub timestamp_ms: u64,
    /// When it was parsed here (monotonic), for the routing latency metric.
    pub received: std::time::Instant,
    /// The header bytes exactly as received.
    pub header: Bytes,
    /// The payload bytes exactly as received.
    pub payload: Bytes,
}

impl Message {
    /// Parses and checks the routing header of a `Send`.
    pub fn from_send(
        header: Bytes,
        payload: Bytes,
        sender: Sender,
        now_ms: u64,
    ) -> Result<Message, HeaderError> {
        // The router's reading of the header: its strings stay slices of
        // `header` (no allocation but the name's `Arc`). The hand decoder
        // reads the plain shape; prost reads (or refuses) anything else.
        let view;
        let h = match decode::raw_header(&header) {
            Some(raw) => Fields::raw(&raw, &header),
            None => {
                view = RoutingHeaderView::decode(header.clone())?;
                Fields::view(&view)
            }
        };
        utf8(h.sender)?;
        utf8(h.sender_instance)?;
        let name = utf8(h.name)?;
        check_name(name)?;
        let id = uuid16(h.id).ok_or(HeaderError::Id(h.id.len()))?;
        let origin_id = optional_uuid(h.origin_id, "origin_id")?;
        let response_to = optional_uuid(h.response_to, "response_to")?;
        let kind = Kind::try_from(h.kind).map_err(|_| HeaderError::Kind(h.kind))?;
        if (kind == Kind::Reply) != response_to.is_some() {
            return Err(HeaderError::ReplyShape);
        }
        Ok(Message {
            id,
            name: Arc::from(name),
            version: h.version.max(1),
            kind,
            origin_id,
            response_to,
            expects_reply: h.expects_reply && kind == Kind::Command,
            partition_key: (!h.partition_key.is_empty())
                .then(|| utf8(h.partition_key).map(Arc::from))
                .transpose()?,
            expires_at_ms: h.expires_at_ms,
            stream_final: h.stream_final,
            epoch: h.epoch,
            sender,
            timestamp_ms: now_ms,
            received: std::time::Instant::now(),
            header,
            payload,
        })
    }

    /// Whether the message's time to live has run out.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms > self.expires_at_ms
    }

    /// The end-to-end epoch, if the payload is sealed.
    pub fn header_epoch(&self) -> Option<Bytes> {
        (!self.epoch.is_empty()).then(|| self.epoch.clone())
    }

    /// Size counted against queue limits and reported in the audit log.
    pub fn size(&self) -> u64 {
        (self.header.len() + self.payload.len()) as u64
    }
}

/// The header fields the router reads, borrowed from the header's bytes
/// (or from prost's view of them).
struct Fields<'a> {
    name: &'a [u8],
    version: u32,
    id: &'a [u8],
    origin_id: &'a [u8],
    response_to: &'a [u8],
    kind: i32,
    sender: &'a [u8],
    sender_instance: &'a [u8],
    expects_reply: bool,
    partition_key: &'a [u8],
    expires_at_ms: u64,
    stream_final: bool,
    epoch: Bytes,
}

impl<'a> Fields<'a> {
    fn raw(h: &decode::RawHeader, header: &'a Bytes) -> Self {
        Fields {
            name: h.name.of(header),
            version: h.version,
            id: h.id.of(header),
            origin_id: h.origin_id.of(header),
            response_to: h.response_to.of(header),
            kind: h.kind,
            sender: h.sender.of(header),
            sender_instance: h.sender_instance.of(header),
            expects_reply: h.expects_reply,
            partition_key: h.partition_key.of(header),
            expires_at_ms: h.expires_at_ms,
            stream_final: h.stream_final,
            epoch: h.epoch.share(header),
        }
    }

    fn view(h: &'a RoutingHeaderView) -> Self {
        Fields {
            name: &h.name,
            version: h.version,
            id: &h.id,
            origin_id: &h.origin_id,
            response_to: &h.response_to,
            kind: h.kind,
            sender: &h.sender,
            sender_instance: &h.sender_instance,
            expects_reply: h.expects_reply,
            partition_key: &h.partition_key,
            expires_at_ms: h.expires_at_ms,
            stream_final: h.stream_final,
            epoch: h.epoch.clone(),
        }
    }
}

/// A string field of the header, checked to be UTF-8.
fn utf8(field: &[u8]) -> Result<&str, HeaderError> {
    std::str::from_utf8(field).map_err(|_| HeaderError::Utf8)
}

/// Checks a message name: dot-separated, non-empty tokens of `a-z0-9_-`.
pub fn check_name(name: &str) -> Result<(), HeaderError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|t| {
            !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if ok { Ok(()) } else { Err(HeaderError::Name(name.to_string())) }
}

fn uuid16(bytes: &[u8]) -> Option<Uuid> {
    <[u8; 16]>::try_from(bytes).ok().map(Uuid::from_bytes)
}

fn optional_uuid(bytes: &[u8], field: &'static str) -> Result<Option<Uuid>, HeaderError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    uuid16(bytes).map(Some).ok_or(HeaderError::Uuid { field, len: bytes.len() })
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RoutingHeader;

    fn sender() -> Sender {
        Sender {
            service: "web".into(),
            identity: "spiffe://example.org/svc/web".into(),
            instance: "i".into(),
            conn: 1,
        }
    }

    fn header(f: impl FnOnce(&mut RoutingHeader)) -> Bytes {
        let mut h = RoutingHeader {
            name: "todos.list".into(),
            version: 1,
            id: Bytes::copy_from_slice(Uuid::now_v7().as_bytes()),
            ..Default::default()
        };
        f(&mut h);
        crate::wire::frame::encode_header(&h)
    }

    #[test]
    fn parses_a_command_and_keeps_the_header_bytes() {
        let bytes = header(|_| {});
        let m = Message::from_send(bytes.clone(), Bytes::from_static(b"x"), sender(), 5).unwrap();
        assert_eq!(&*m.name, "todos.list");
        assert_eq!(m.header, bytes);
        assert_eq!(m.kind, Kind::Command);
    }

    #[test]
    fn refuses_bad_headers() {
        let bad = [
            header(|h| h.name = "Todos.List".into()),
            header(|h| h.name = "todos..list".into()),
            header(|h| h.id = Bytes::from_static(b"short")),
            header(|h| h.kind = Kind::Reply as i32),
            header(|h| h.response_to = Bytes::copy_from_slice(Uuid::nil().as_bytes())),
            header(|h| h.kind = 99),
            Bytes::from_static(&[0xff, 0xff]),
        ];
        for b in bad {
            assert!(Message::from_send(b, Bytes::new(), sender(), 0).is_err());
        }
    }

    /// The router reads headers through `RoutingHeaderView`, which leaves
    /// strings as bytes: it must refuse exactly the bytes a `RoutingHeader`
    /// does not decode from, and read the same name and partition key from
    /// the others. Every byte of a header with every field set is replaced
    /// by values that break lengths, wire types, varints and UTF-8.
    #[test]
    fn the_header_view_refuses_what_the_full_header_refuses() {
        use prost::Message as _;
        let full = header(|h| {
            h.origin_id = Bytes::copy_from_slice(Uuid::now_v7().as_bytes());
            h.sender = "spiffe://example.org/svc/web".into();
            h.sender_instance = "i-1".into();
            h.expects_reply = true;
            h.partition_key = "key-7".into();
            h.expires_at_ms = 1 << 40;
            h.stream_seq = 3;
            h.seal = 1;
            h.epoch = Bytes::from_static(&[7; 16]);
            h.seq = 300;
            h.policy_serial = 9;
        });
        let (mut refused, mut read) = (0, 0);
        for at in 0..full.len() {
            for value in [0x00, 0x02, 0x07, 0x0a, 0x7f, 0x80, 0xc3, 0xff] {
                let mut bytes = full.to_vec();
                bytes[at] = value;
                let bytes = Bytes::from(bytes);
                let reference = RoutingHeader::decode(bytes.clone());
                match Message::from_send(bytes, Bytes::new(), sender(), 0) {
                    Err(HeaderError::Decode(_) | HeaderError::Utf8) => {
                        assert!(
                            reference.is_err(),
                            "byte {at} = {value:#x}: refused, but a RoutingHeader decodes"
                        );
                        refused += 1;
                    }
                    other => {
                        let h = reference.unwrap_or_else(|e| panic!("byte {at} = {value:#x}: read, but {e}"));
                        if let Ok(m) = other {
                            assert_eq!(&*m.name, h.name);
                            assert_eq!(m.partition_key.as_deref().unwrap_or(""), h.partition_key);
                            read += 1;
                        }
                    }
                }
            }
        }
        assert!(refused > 50 && read > 50, "refused {refused}, read {read}");
    }
}
