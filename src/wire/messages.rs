//! The protocol's messages, as protobuf (proto3) types.
//!
//! The schema is written out in `docs/exocom.proto`; these structs are its
//! Rust form, kept by hand so the build needs no `protoc`. Field numbers here
//! and in the `.proto` file must stay equal; `tests/protocol_vectors.rs`
//! checks the encoded bytes against the vectors in docs/PROTOCOL.md.
//!
//! Byte fields use [`bytes::Bytes`]: decoding a frame from a `Bytes` buffer
//! slices the header and payload out of it without copying.

use bytes::Bytes;

/// The protocol version this build speaks. A `Hello` with another version is
/// answered with [`ErrorCode::UnsupportedProtocol`].
pub const PROTOCOL_VERSION: u32 = 1;

/// One frame on the wire. Exactly one body is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// What the frame carries.
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
    pub body: Option<Body>,
}

/// The body of a [`Frame`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// Relay → router, first frame of a connection.
    #[prost(message, tag = "1")]
    Hello(Hello),
    /// Router → relay, answer to `Hello`.
    #[prost(message, tag = "2")]
    Welcome(Welcome),
    /// Relay → router: the names and versions this instance handles.
    #[prost(message, tag = "3")]
    Subscribe(Subscribe),
    /// Relay → router: a message to route.
    #[prost(message, tag = "4")]
    Send(Send),
    /// Router → relay: a `Send` was accepted.
    #[prost(message, tag = "5")]
    Accepted(Accepted),
    /// Either way: something was refused or went wrong.
    #[prost(message, tag = "6")]
    Error(Error),
    /// Router → relay: a message for this instance.
    #[prost(message, tag = "7")]
    Deliver(Deliver),
    /// Relay → router: deliveries handled.
    #[prost(message, tag = "8")]
    Ack(Ack),
    /// Relay → router: a delivery not handled.
    #[prost(message, tag = "9")]
    Nack(Nack),
    /// Either way: liveness probe.
    #[prost(message, tag = "10")]
    Ping(Ping),
    /// Answer to `Ping`.
    #[prost(message, tag = "11")]
    Pong(Pong),
    /// Relay → router: a signed key announcement to keep in the key directory.
    #[prost(message, tag = "12")]
    Announce(Announce),
    /// Relay → router: ask for the announcements of some services.
    #[prost(message, tag = "13")]
    KeyQuery(KeyQuery),
    /// Router → relay: announcements, answering a `KeyQuery`.
    #[prost(message, tag = "14")]
    KeyDirectory(KeyDirectory),
}

/// First frame a relay sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// This instance's id, chosen by the relay (a UUID as text). Stable
    /// across reconnects of the same process.
    #[prost(string, tag = "2")]
    pub instance: String,
    /// Free text naming the client library and version, for logs.
    #[prost(string, tag = "3")]
    pub client: String,
}

/// The router's answer to `Hello`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    /// The protocol version the router speaks.
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// The identity the router authenticated from the client certificate.
    #[prost(string, tag = "2")]
    pub identity: String,
    /// The service name that identity has in the policy.
    #[prost(string, tag = "3")]
    pub service: String,
    /// The largest frame the router accepts, in bytes.
    #[prost(uint64, tag = "4")]
    pub max_frame: u64,
    /// The router's software version, for logs.
    #[prost(string, tag = "5")]
    pub router: String,
}

/// One name an instance handles, and which versions of it.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Subscription {
    /// The message name, e.g. `todos.list`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The versions handled. Empty means every version.
    #[prost(uint32, repeated, tag = "2")]
    pub versions: Vec<u32>,
}

/// Replaces this instance's subscriptions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribe {
    /// The complete set of names this instance handles.
    #[prost(message, repeated, tag = "1")]
    pub subscriptions: Vec<Subscription>,
    /// Credit: at most this many unacknowledged deliveries are in flight to
    /// this instance. 0 means the router's default.
    #[prost(uint32, tag = "2")]
    pub prefetch: u32,
}

/// A message to route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Send {
    /// Chosen by the relay; echoed in `Accepted` or `Error`.
    #[prost(uint64, tag = "1")]
    pub corr: u64,
    /// An encoded [`RoutingHeader`]. The router parses it and forwards these
    /// exact bytes; end-to-end sealing uses them as associated data.
    #[prost(bytes = "bytes", tag = "2")]
    pub header: Bytes,
    /// The payload. Opaque to the router (sealed when end-to-end encryption is on).
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    /// Per-receiving-service authentication tags (end-to-end).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<ServiceBlob>,
    /// Per-receiving-service key grants (end-to-end), kept with the service's queue.
    #[prost(message, repeated, tag = "5")]
    pub grants: Vec<ServiceBlob>,
}

/// Opaque bytes addressed to one receiving service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceBlob {
    /// The receiving service's name.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Opaque to the router.
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
}

/// A `Send` was accepted: checked against policy, audited, queued.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Accepted {
    /// The `corr` of the `Send`.
    #[prost(uint64, tag = "1")]
    pub corr: u64,
    /// How many services the message was queued for.
    #[prost(uint32, tag = "2")]
    pub receivers: u32,
}

/// A refusal or failure. With `corr` ≠ 0 it answers that `Send`; with
/// `corr` = 0 it concerns the connection, which the router then closes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    /// The `corr` of the `Send` this answers, or 0.
    #[prost(uint64, tag = "1")]
    pub corr: u64,
    /// A stable, machine-readable code.
    #[prost(enumeration = "ErrorCode", tag = "2")]
    pub code: i32,
    /// A human-readable explanation.
    #[prost(string, tag = "3")]
    pub message: String,
}

/// A message delivered to this instance.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Deliver {
    /// Delivery tag: acknowledge with `Ack { tags: [tag] }`.
    #[prost(uint64, tag = "1")]
    pub tag: u64,
    /// The routing header, exactly as the sender encoded it.
    #[prost(bytes = "bytes", tag = "2")]
    pub header: Bytes,
    /// The payload, exactly as the sender sent it.
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    /// The sender's service name, from its certificate (never from the sender).
    #[prost(string, tag = "4")]
    pub sender: String,
    /// The sender's identity (SPIFFE URI), from its certificate.
    #[prost(string, tag = "5")]
    pub sender_id: String,
    /// When the router accepted the message, Unix time in milliseconds.
    #[prost(uint64, tag = "6")]
    pub timestamp_ms: u64,
    /// 1 for the first delivery, higher for redeliveries.
    #[prost(uint32, tag = "7")]
    pub attempt: u32,
    /// This service's authentication tag (end-to-end), if the sender sent one.
    #[prost(bytes = "bytes", tag = "8")]
    pub auth_tag: Bytes,
    /// The key grant for the header's epoch (end-to-end), sent with the
    /// first delivery of an epoch on each connection.
    #[prost(bytes = "bytes", tag = "9")]
    pub grant: Bytes,
}

/// Deliveries handled (their tags).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Delivery tags.
    #[prost(uint64, repeated, tag = "1")]
    pub tags: Vec<u64>,
}

/// A delivery not handled.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Nack {
    /// The delivery tag.
    #[prost(uint64, tag = "1")]
    pub tag: u64,
    /// true: deliver it again (preferably to another instance); false: dead-letter it.
    #[prost(bool, tag = "2")]
    pub requeue: bool,
}

/// Liveness probe.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// Echoed in `Pong`.
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// Answer to `Ping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    /// The `Ping`'s nonce.
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

/// A key announcement, opaque to the router beyond the service it claims.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Announce {
    /// The encoded, signed announcement (see docs/E2E.md).
    #[prost(bytes = "bytes", tag = "1")]
    pub announcement: Bytes,
}

/// Ask for the current announcements of these services.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyQuery {
    /// Service names; empty means all.
    #[prost(string, repeated, tag = "1")]
    pub services: Vec<String>,
}

/// Announcements the router holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyDirectory {
    /// Encoded, signed announcements; relays verify each one themselves.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub announcements: Vec<Bytes>,
}

/// The routing header: everything the router needs to route, nothing more.
///
/// Relays encode it once; the router decodes it and forwards the original
/// bytes, which end-to-end sealing binds as associated data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutingHeader {
    /// Dotted message name, e.g. `todos.list`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// API version of the message (1, 2, …). 0 is read as 1.
    #[prost(uint32, tag = "2")]
    pub version: u32,
    /// Unique message id (16 bytes, a UUID).
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    /// The activity that caused this message (16 bytes), or empty.
    #[prost(bytes = "bytes", tag = "4")]
    pub origin_id: Bytes,
    /// For a reply: the id of the command it answers. Empty otherwise.
    #[prost(bytes = "bytes", tag = "5")]
    pub response_to: Bytes,
    /// What kind of message this is.
    #[prost(enumeration = "Kind", tag = "6")]
    pub kind: i32,
    /// The sender's identity as the sender states it. The router routes by
    /// the certificate, never by this; relays compare the two.
    #[prost(string, tag = "7")]
    pub sender: String,
    /// The sending instance's id.
    #[prost(string, tag = "8")]
    pub sender_instance: String,
    /// A command that expects replies (the sender made a request).
    #[prost(bool, tag = "9")]
    pub expects_reply: bool,
    /// Messages with the same key go to the same instance, in order.
    #[prost(string, tag = "10")]
    pub partition_key: String,
    /// Unix time in ms after which the message must not be delivered; 0 = never.
    #[prost(uint64, tag = "11")]
    pub expires_at_ms: u64,
    /// For replies: position in the reply stream, from 0.
    #[prost(uint64, tag = "12")]
    pub stream_seq: u64,
    /// For replies: the last reply of the stream.
    #[prost(bool, tag = "13")]
    pub stream_final: bool,
    /// How the payload is encoded: 0 plain, 1 sealed (end-to-end, docs/E2E.md).
    #[prost(uint32, tag = "14")]
    pub seal: u32,
    /// End-to-end: the sender key epoch (16 bytes), empty when not sealed.
    #[prost(bytes = "bytes", tag = "15")]
    pub epoch: Bytes,
    /// End-to-end: message sequence number under the epoch.
    #[prost(uint64, tag = "16")]
    pub seq: u64,
    /// End-to-end: serial of the policy the sender sealed under.
    #[prost(uint64, tag = "17")]
    pub policy_serial: u64,
}

/// The router's reading of a [`RoutingHeader`]: the same fields under the
/// same tags, with the string fields left as the bytes they arrived in
/// (protobuf encodes `string` and `bytes` alike), so decoding it from a
/// `Bytes` buffer slices instead of allocating. A reader must check that
/// `name`, `sender`, `sender_instance` and `partition_key` are UTF-8, as
/// decoding a `RoutingHeader` does; every field is declared, so wire types
/// and varints are checked as they are for a `RoutingHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoutingHeaderView {
    /// [`RoutingHeader::name`], as bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    /// [`RoutingHeader::version`].
    #[prost(uint32, tag = "2")]
    pub version: u32,
    /// [`RoutingHeader::id`].
    #[prost(bytes = "bytes", tag = "3")]
    pub id: Bytes,
    /// [`RoutingHeader::origin_id`].
    #[prost(bytes = "bytes", tag = "4")]
    pub origin_id: Bytes,
    /// [`RoutingHeader::response_to`].
    #[prost(bytes = "bytes", tag = "5")]
    pub response_to: Bytes,
    /// [`RoutingHeader::kind`].
    #[prost(enumeration = "Kind", tag = "6")]
    pub kind: i32,
    /// [`RoutingHeader::sender`], as bytes.
    #[prost(bytes = "bytes", tag = "7")]
    pub sender: Bytes,
    /// [`RoutingHeader::sender_instance`], as bytes.
    #[prost(bytes = "bytes", tag = "8")]
    pub sender_instance: Bytes,
    /// [`RoutingHeader::expects_reply`].
    #[prost(bool, tag = "9")]
    pub expects_reply: bool,
    /// [`RoutingHeader::partition_key`], as bytes.
    #[prost(bytes = "bytes", tag = "10")]
    pub partition_key: Bytes,
    /// [`RoutingHeader::expires_at_ms`].
    #[prost(uint64, tag = "11")]
    pub expires_at_ms: u64,
    /// [`RoutingHeader::stream_seq`].
    #[prost(uint64, tag = "12")]
    pub stream_seq: u64,
    /// [`RoutingHeader::stream_final`].
    #[prost(bool, tag = "13")]
    pub stream_final: bool,
    /// [`RoutingHeader::seal`].
    #[prost(uint32, tag = "14")]
    pub seal: u32,
    /// [`RoutingHeader::epoch`].
    #[prost(bytes = "bytes", tag = "15")]
    pub epoch: Bytes,
    /// [`RoutingHeader::seq`].
    #[prost(uint64, tag = "16")]
    pub seq: u64,
    /// [`RoutingHeader::policy_serial`].
    #[prost(uint64, tag = "17")]
    pub policy_serial: u64,
}

/// What kind of message a header describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    /// One service is asked to do something.
    Command = 0,
    /// A fact, for zero or more subscribers.
    Event = 1,
    /// An outcome of a command, routed back to the requesting instance.
    Reply = 2,
}

/// Stable error codes. Numbers never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    /// Not set.
    Unspecified = 0,
    /// A frame could not be decoded.
    MalformedFrame = 1,
    /// A frame was larger than the maximum.
    FrameTooLarge = 2,
    /// The `Hello` named a protocol version the router does not speak.
    UnsupportedProtocol = 3,
    /// The certificate's identity is not a service in the policy.
    UnknownIdentity = 4,
    /// The policy does not allow this send.
    Denied = 5,
    /// A receiving service's queue is full; retry later.
    QueueFull = 6,
    /// The audit log cannot be written; the router refuses new sends.
    AuditUnavailable = 7,
    /// A reply to a command this instance was not given, or after its end.
    ReplyNotAllowed = 8,
    /// The sender exceeded its rate limit.
    RateLimited = 9,
    /// The message exceeds a size limit of the policy.
    MessageTooLarge = 10,
    /// The router is shutting down.
    ShuttingDown = 11,
    /// The header is missing a required field or has a bad one.
    InvalidHeader = 12,
    /// A frame arrived out of order (e.g. `Send` before `Hello`).
    ProtocolViolation = 13,
    /// The durable store failed; the message was not accepted.
    StoreUnavailable = 14,
    /// Something failed inside the router.
    Internal = 15,
    /// A router limit was reached: connections of this identity, or
    /// subscriptions of this instance.
    LimitExceeded = 16,
}
