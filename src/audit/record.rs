//! One audit event and its JSON form.
//!
//! A [`Record`] is what the router hands the writer: routing metadata only.
//! There is deliberately no field for payload bytes or key material, so
//! neither can reach the log by mistake. The writer adds `seq`, `time`,
//! `prev` and `hash`; [`Entry`] is a line read back for query and report.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happened. Serialized in snake_case (`handshake_failed`, `dead_letter`, ...).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A service instance connected (after the TLS handshake and `Hello`).
    Connect,
    /// A service instance disconnected.
    Disconnect,
    /// A TLS handshake or `Hello` failed (no certificate, unknown CA, revoked, unknown identity).
    HandshakeFailed,
    /// A message was accepted from a sender.
    Send,
    /// A message was handed to a receiving instance.
    Deliver,
    /// A receiver acknowledged a delivery.
    Ack,
    /// A receiver refused a delivery (`Nack`).
    Nack,
    /// A reply was accepted.
    Reply,
    /// A send or delivery was refused by policy.
    Deny,
    /// A message was delivered again (ack timeout or lost instance).
    Redeliver,
    /// A message expired before delivery.
    Expire,
    /// A message was given up after too many attempts.
    DeadLetter,
    /// A message was dropped (queue full, malformed, ...).
    Drop,
    /// A policy was loaded (at start or on reload).
    PolicyLoaded,
    /// A new policy was rejected; the old one stays.
    PolicyRejected,
    /// A service announced its end-to-end receive key (the key itself is not logged).
    KeyAnnounced,
    /// An administrative API call.
    AdminCall,
    /// Something an operator must look at (e.g. records refused because the audit queue was full).
    Alert,
    /// Writer only: a signed checkpoint over the chain head.
    AuditCheckpoint,
    /// Writer only: first line of a rotated-in file, linking to the previous file.
    SegmentStart,
    /// Writer only: the writer started (first line of a fresh log, or after a restart).
    LogStart,
    /// Writer only: the writer stopped cleanly.
    LogStop,
    /// Writer only: records could not be written for a while (how many, since when, why).
    AuditGap,
}

impl Event {
    /// Every event, in declaration order.
    pub const ALL: [Event; 23] = [
        Event::Connect,
        Event::Disconnect,
        Event::HandshakeFailed,
        Event::Send,
        Event::Deliver,
        Event::Ack,
        Event::Nack,
        Event::Reply,
        Event::Deny,
        Event::Redeliver,
        Event::Expire,
        Event::DeadLetter,
        Event::Drop,
        Event::PolicyLoaded,
        Event::PolicyRejected,
        Event::KeyAnnounced,
        Event::AdminCall,
        Event::Alert,
        Event::AuditCheckpoint,
        Event::SegmentStart,
        Event::LogStart,
        Event::LogStop,
        Event::AuditGap,
    ];

    /// The name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Disconnect => "disconnect",
            Event::HandshakeFailed => "handshake_failed",
            Event::Send => "send",
            Event::Deliver => "deliver",
            Event::Ack => "ack",
            Event::Nack => "nack",
            Event::Reply => "reply",
            Event::Deny => "deny",
            Event::Redeliver => "redeliver",
            Event::Expire => "expire",
            Event::DeadLetter => "dead_letter",
            Event::Drop => "drop",
            Event::PolicyLoaded => "policy_loaded",
            Event::PolicyRejected => "policy_rejected",
            Event::KeyAnnounced => "key_announced",
            Event::AdminCall => "admin_call",
            Event::Alert => "alert",
            Event::AuditCheckpoint => "audit_checkpoint",
            Event::SegmentStart => "segment_start",
            Event::LogStart => "log_start",
            Event::LogStop => "log_stop",
            Event::AuditGap => "audit_gap",
        }
    }

    /// Parses a log name (`handshake_failed`).
    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Whether only the writer may produce this event (callers get [`super::AuditError::Reserved`]).
    pub fn is_reserved(self) -> bool {
        matches!(
            self,
            Event::AuditCheckpoint | Event::SegmentStart | Event::LogStart | Event::LogStop | Event::AuditGap
        )
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy decision.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed by a rule.
    Allow,
    /// Denied (by a rule, or by default).
    Deny,
}

impl Decision {
    /// The name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One audit event as the router hands it to the writer.
///
/// Field order here is the field order in the log. Absent fields are omitted.
/// `seq`, `time`, `prev` and `hash` are added by the writer.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// What happened.
    pub event: Event,
    /// Message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Message name (`todos.list`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub name: Option<Arc<str>>,
    /// Message API version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The activity that caused the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_id: Option<Uuid>,
    /// The command a reply answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_to: Option<Uuid>,
    /// Sending service, from its certificate.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub sender: Option<Arc<str>>,
    /// Sending instance id.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub sender_instance: Option<Arc<str>>,
    /// Receiving service.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub receiver: Option<Arc<str>>,
    /// Receiving instance id.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub receiver_instance: Option<Arc<str>>,
    /// Policy decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The rule that decided (`policy.toml:12:3`), or `default` for default deny.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub rule: Option<Arc<str>>,
    /// Serial of the policy in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_serial: Option<u64>,
    /// SHA-256 (hex) of the exact policy file bytes, on `policy_loaded`/`policy_rejected`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub policy_sha256: Option<Arc<str>>,
    /// Payload size in bytes (the size only, never the contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Delivery attempt (1 for the first delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Router-local connection number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// Peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// Peer identity (SPIFFE URI) where no service name is known, e.g. a failed handshake.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub identity: Option<Arc<str>>,
    /// Human-readable cause (error, denial message, reload result).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")]
    pub reason: Option<Arc<str>>,
}

/// Serializes an optional shared string (serde's `rc` feature is not enabled).
fn opt_str<S: serde::Serializer>(value: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $field(mut self, value: impl Into<$ty>) -> Self {
                self.$field = Some(value.into());
                self
            }
        )*
    };
}

impl Record {
    /// A record of `event` with every other field absent.
    pub fn new(event: Event) -> Self {
        Record {
            event,
            id: None,
            name: None,
            version: None,
            origin_id: None,
            response_to: None,
            sender: None,
            sender_instance: None,
            receiver: None,
            receiver_instance: None,
            decision: None,
            rule: None,
            policy_serial: None,
            policy_sha256: None,
            bytes: None,
            attempt: None,
            conn: None,
            remote: None,
            identity: None,
            reason: None,
        }
    }

    setters! {
        /// Sets the message id.
        id: Uuid;
        /// Sets the message name.
        name: Arc<str>;
        /// Sets the API version.
        version: u32;
        /// Sets the origin id.
        origin_id: Uuid;
        /// Sets the id of the command replied to.
        response_to: Uuid;
        /// Sets the sending service.
        sender: Arc<str>;
        /// Sets the sending instance.
        sender_instance: Arc<str>;
        /// Sets the receiving service.
        receiver: Arc<str>;
        /// Sets the receiving instance.
        receiver_instance: Arc<str>;
        /// Sets the decision.
        decision: Decision;
        /// Sets the deciding rule.
        rule: Arc<str>;
        /// Sets the policy serial.
        policy_serial: u64;
        /// Sets the policy file's SHA-256.
        policy_sha256: Arc<str>;
        /// Sets the payload size.
        bytes: u64;
        /// Sets the delivery attempt.
        attempt: u32;
        /// Sets the connection number.
        conn: u64;
        /// Sets the peer address.
        remote: SocketAddr;
        /// Sets the peer identity.
        identity: Arc<str>;
        /// Sets the reason.
        reason: Arc<str>;
    }
}

/// Fields only the writer sets, serialized after the record's own fields.
#[derive(Debug, Default, Serialize)]
pub(crate) struct WriterFields<'a> {
    /// Segment (file) number, on `segment_start` and `log_start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<u64>,
    /// File name of the previous segment, on `segment_start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<&'a str>,
    /// Lines since the previous checkpoint, on `audit_checkpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Records not written, on `audit_gap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// When the gap began, on `audit_gap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<&'a str>,
    /// Whether the writer fails open, on `log_start`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<bool>,
    /// Id of the signing key, on `audit_checkpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// Ed25519 signature (hex), on `audit_checkpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<&'a str>,
}

/// The serialized line without its `hash` (the writer appends that).
#[derive(Serialize)]
pub(crate) struct LineOut<'a> {
    pub seq: u64,
    pub time: Plain<'a>,
    #[serde(flatten)]
    pub record: &'a Record,
    #[serde(flatten)]
    pub writer: &'a WriterFields<'a>,
    pub prev: Plain<'a>,
}

/// Text the writer made itself, ASCII by construction (a time in RFC
/// 3339, a hash in hex): written as it is, never checked again for UTF-8
/// or escapes (the hot path writes it; serde only in the tests that
/// compare the two).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plain<'a>(pub &'a [u8]);

impl Serialize for Plain<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(self.0))
    }
}

/// A line read back from the log (for query and report). Unknown fields are ignored.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 UTC time.
    pub time: String,
    /// Event name (kept as text so that newer events still read).
    pub event: String,
    /// Message id.
    pub id: Option<String>,
    /// Message name.
    pub name: Option<String>,
    /// API version.
    pub version: Option<u32>,
    /// Origin id.
    pub origin_id: Option<String>,
    /// Command replied to.
    pub response_to: Option<String>,
    /// Sending service.
    pub sender: Option<String>,
    /// Sending instance.
    pub sender_instance: Option<String>,
    /// Receiving service.
    pub receiver: Option<String>,
    /// Receiving instance.
    pub receiver_instance: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// Deciding rule.
    pub rule: Option<String>,
    /// Serial of the policy in force.
    pub policy_serial: Option<u64>,
    /// Payload size.
    pub bytes: Option<u64>,
    /// Peer address.
    pub remote: Option<String>,
    /// Peer identity.
    pub identity: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Records not written (`audit_gap`).
    pub dropped: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_through_serde_and_parse() {
        for event in Event::ALL {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{}\"", event.as_str()));
            assert_eq!(Event::parse(event.as_str()), Some(event));
        }
        assert_eq!(Event::parse("nope"), None);
    }

    #[test]
    fn absent_fields_are_omitted_and_order_is_fixed() {
        let rec =
            Record::new(Event::Send).name("todos.list").sender("web").decision(Decision::Allow).bytes(12u64);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(
            json,
            r#"{"event":"send","name":"todos.list","sender":"web","decision":"allow","bytes":12}"#
        );
    }

    #[test]
    fn only_writer_events_are_reserved() {
        assert!(Event::AuditCheckpoint.is_reserved());
        assert!(Event::LogStart.is_reserved());
        assert!(!Event::Send.is_reserved());
        assert!(!Event::Alert.is_reserved());
    }
}
