//! An accepted message as the router holds it: the routing fields it parsed
//! from the header, and the header and payload bytes it forwards untouched.
//!
//! The payload is never looked at: it is opaque (sealed) bytes. The header
//! bytes are kept exactly as the sender encoded them, because end-to-end
//! sealing binds them as associated data; the router never re-encodes them.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;

use crate::wire::Kind;

/// Identifies one connection (one relay instance connection) in the router.
pub type ConnId = u64;

/// Why a header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header bytes are not a valid `RoutingHeader`.
    #[error("routing header does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
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
        let h = crate::wire::frame::decode_header(&header)?;
        check_name(&h.name)?;
        let id = uuid16(&h.id).ok_or(HeaderError::Id(h.id.len()))?;
        let origin_id = optional_uuid(&h.origin_id, "origin_id")?;
        let response_to = optional_uuid(&h.response_to, "response_to")?;
        let kind = Kind::try_from(h.kind).map_err(|_| HeaderError::Kind(h.kind))?;
        if (kind == Kind::Reply) != response_to.is_some() {
            return Err(HeaderError::ReplyShape);
        }
        Ok(Message {
            id,
            name: Arc::from(h.name),
            version: h.version.max(1),
            kind,
            origin_id,
            response_to,
            expects_reply: h.expects_reply && kind == Kind::Command,
            partition_key: (!h.partition_key.is_empty()).then(|| Arc::from(h.partition_key)),
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
}
