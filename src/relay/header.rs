//! Building the routing header of an outgoing message.
//!
//! The header is built here, completed by the payload codec (its sealing
//! fields), and encoded exactly once; those bytes are what the codec binds
//! and what the router forwards. Pure functions: no I/O, no clock (the
//! caller passes the time).

use uuid::Uuid;

use super::options::MessageOptions;
use crate::wire::{Kind, RoutingHeader};

/// What the header of one outgoing message is made of.
#[derive(Debug)]
pub(crate) struct HeaderParams<'a> {
    pub(crate) kind: Kind,
    pub(crate) name: &'a str,
    pub(crate) opts: &'a MessageOptions,
    pub(crate) expects_reply: bool,
    /// The message being handled when this one is sent from a handler: a
    /// reply answers it, a send or publish continues its activity.
    pub(crate) cause: Option<&'a RoutingHeader>,
    pub(crate) stream_seq: u64,
    pub(crate) stream_final: bool,
}

/// Who is sending: our identity as the router confirmed it, and our instance.
#[derive(Debug)]
pub(crate) struct SenderInfo<'a> {
    pub(crate) identity: &'a str,
    pub(crate) instance: &'a str,
}

/// A message id as header bytes.
pub(crate) fn id_bytes(id: Uuid) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(id.as_bytes())
}

/// The header of a new message with id `id`, sent at `now_ms` (Unix ms).
pub(crate) fn build(p: &HeaderParams<'_>, sender: &SenderInfo<'_>, id: Uuid, now_ms: u64) -> RoutingHeader {
    let own_id = id_bytes(id);
    // The activity: explicit, else the cause's, else this message starts one.
    let origin_id = match (p.opts.origin_id, p.cause) {
        (Some(origin), _) => id_bytes(origin),
        (None, Some(cause)) if !cause.origin_id.is_empty() => cause.origin_id.clone(),
        (None, Some(cause)) => cause.id.clone(),
        (None, None) => own_id.clone(),
    };
    let response_to = match (p.kind, p.cause) {
        (Kind::Reply, Some(cause)) => cause.id.clone(),
        _ => bytes::Bytes::new(),
    };
    let expires_at_ms =
        p.opts.ttl.map_or(0, |ttl| now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
    RoutingHeader {
        name: p.name.to_owned(),
        version: p.opts.version_number(),
        id: own_id,
        origin_id,
        response_to,
        kind: p.kind as i32,
        sender: sender.identity.to_owned(),
        sender_instance: sender.instance.to_owned(),
        expects_reply: p.expects_reply,
        partition_key: p.opts.partition_key.clone().unwrap_or_default(),
        expires_at_ms,
        stream_seq: p.stream_seq,
        stream_final: p.stream_final,
        ..Default::default()
    }
}

/// A 16-byte id field as a UUID; `None` when empty or malformed.
pub(crate) fn uuid_of(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::wire::frame::{decode_header, encode_header};

    const SENDER: SenderInfo<'static> =
        SenderInfo { identity: "spiffe://example.org/svc/web", instance: "i-1" };

    fn params<'a>(
        kind: Kind,
        opts: &'a MessageOptions,
        cause: Option<&'a RoutingHeader>,
    ) -> HeaderParams<'a> {
        HeaderParams {
            kind,
            name: "todos.list",
            opts,
            expects_reply: false,
            cause,
            stream_seq: 0,
            stream_final: false,
        }
    }

    #[test]
    fn a_new_command_starts_its_own_activity() {
        let opts = MessageOptions::new();
        let id = Uuid::new_v4();
        let mut p = params(Kind::Command, &opts, None);
        p.expects_reply = true;
        let h = build(&p, &SENDER, id, 1_000);
        assert_eq!(h.id.as_ref(), id.as_bytes());
        assert_eq!(h.origin_id, h.id, "origin = own id");
        assert!(h.response_to.is_empty());
        assert_eq!(h.version, 1);
        assert_eq!(h.kind, Kind::Command as i32);
        assert_eq!(h.sender, "spiffe://example.org/svc/web");
        assert_eq!(h.sender_instance, "i-1");
        assert!(h.expects_reply);
        assert_eq!(h.expires_at_ms, 0, "no ttl, no expiry");
    }

    #[test]
    fn options_set_version_partition_origin_and_expiry() {
        let origin = Uuid::new_v4();
        let opts = MessageOptions::new()
            .version(3)
            .partition_key("k")
            .origin_id(origin)
            .ttl(Duration::from_millis(1500));
        let h = build(&params(Kind::Event, &opts, None), &SENDER, Uuid::new_v4(), 10_000);
        assert_eq!(h.version, 3);
        assert_eq!(h.partition_key, "k");
        assert_eq!(h.origin_id.as_ref(), origin.as_bytes());
        assert_eq!(h.expires_at_ms, 11_500);
        assert_eq!(h.kind, Kind::Event as i32);
    }

    #[test]
    fn a_reply_answers_its_command_within_the_commands_activity() {
        let activity = Uuid::new_v4();
        let command = RoutingHeader {
            id: id_bytes(Uuid::new_v4()),
            origin_id: id_bytes(activity),
            ..Default::default()
        };
        let opts = MessageOptions::new();
        let mut p = params(Kind::Reply, &opts, Some(&command));
        p.stream_seq = 4;
        p.stream_final = true;
        let h = build(&p, &SENDER, Uuid::new_v4(), 0);
        assert_eq!(h.response_to, command.id);
        assert_eq!(h.origin_id, command.origin_id);
        assert_eq!((h.stream_seq, h.stream_final), (4, true));

        let follow_up = build(&params(Kind::Command, &opts, Some(&command)), &SENDER, Uuid::new_v4(), 0);
        assert!(follow_up.response_to.is_empty(), "a send from a handler is not a reply");
        assert_eq!(follow_up.origin_id, command.origin_id, "but it continues the activity");
    }

    #[test]
    fn encoded_header_round_trips() {
        let opts = MessageOptions::new().version(2);
        let h = build(&params(Kind::Command, &opts, None), &SENDER, Uuid::new_v4(), 0);
        let bytes = encode_header(&h);
        assert_eq!(decode_header(&bytes).unwrap(), h);
        assert_eq!(uuid_of(&h.id).map(|u| *u.as_bytes()), Some(<[u8; 16]>::try_from(&h.id[..]).unwrap()));
        assert_eq!(uuid_of(b"short"), None);
    }
}
