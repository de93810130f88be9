//! End-to-end tests across the modules: a sender, two receiving services
//! and a "router" that is just these functions moving fields around, so
//! each test can play a compromised router or a compromised co-receiver.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::announce::{VerifiedAnnouncement, announce, verify_announcement};
use super::grant::{self, OpenLimits};
use super::identity::SigningIdentity;
use super::keys::ReceiveKey;
use super::open::{OpenError, Opener, OpenerConfig, decode_header};
use super::reply::{ReplyKey, ReplyOpener, ReplySealer};
use super::seal::{EpochConfig, Sealed, Sealer, message_keys, nonce};
use super::testpki::{TestCa, now_ms};
use super::{E2eError, MAX_GRANTS_PER_FRAME, crypto, payload};
use crate::wire::{Deliver, Kind, RoutingHeader};

const WEB: &str = "spiffe://example.org/svc/web";
const TODOS: &str = "spiffe://example.org/svc/todos";
const AUDIT: &str = "spiffe://example.org/svc/audit";

struct World {
    ca: TestCa,
    sealer: Sealer,
    todos_key: ReceiveKey,
    audit_key: ReceiveKey,
    todos: Opener,
    audit: Opener,
    receivers: Vec<VerifiedAnnouncement>,
}

fn receiver(ca: &TestCa, service: &str) -> (ReceiveKey, VerifiedAnnouncement, SigningIdentity) {
    let id = ca.identity(service);
    let key = ReceiveKey::generate().unwrap();
    let ann = announce(&id, &key, "r-1", now_ms(), Duration::from_secs(3600)).unwrap();
    let v = verify_announcement(&ann, &ca.anchors(), now_ms()).unwrap();
    (key, v, id)
}

fn web_may_send(sender: &str, _name: &str) -> bool {
    sender == "web"
}

fn world_with(config: EpochConfig) -> World {
    let ca = TestCa::new("ca");
    let (todos_key, todos_ann, _) = receiver(&ca, "todos");
    let (audit_key, audit_ann, _) = receiver(&ca, "audit");
    let sealer = Sealer::new(ca.identity("web"), "s-1", config);
    let todos = Opener::new(todos_key.clone(), TODOS, ca.anchors(), web_may_send, OpenerConfig::default());
    let audit = Opener::new(audit_key.clone(), AUDIT, ca.anchors(), web_may_send, OpenerConfig::default());
    World { ca, sealer, todos_key, audit_key, todos, audit, receivers: vec![todos_ann, audit_ann] }
}

fn world() -> World {
    world_with(EpochConfig::default())
}

fn header(name: &str) -> RoutingHeader {
    RoutingHeader {
        name: name.into(),
        version: 1,
        id: Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
        origin_id: Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
        kind: Kind::Command as i32,
        expires_at_ms: now_ms() + 60_000,
        ..Default::default()
    }
}

/// What an honest router hands `service`.
fn deliver(sealed: &Sealed, service: &str, with_grant: bool) -> Deliver {
    let pick = |blobs: &[crate::wire::ServiceBlob]| {
        blobs.iter().find(|b| b.service == service).map(|b| b.data.clone()).unwrap_or_default()
    };
    Deliver {
        tag: 1,
        header: sealed.header.clone(),
        payload: sealed.payload.clone(),
        sender: "web".into(),
        sender_id: WEB.into(),
        timestamp_ms: now_ms(),
        attempt: 1,
        auth_tag: pick(&sealed.tags),
        grant: if with_grant { pick(&sealed.grants) } else { Bytes::new() },
    }
}

impl World {
    fn seal(&mut self, h: RoutingHeader, plaintext: &[u8]) -> Sealed {
        self.sealer.seal(h, &self.receivers, 7, plaintext, now_ms()).unwrap()
    }
}

#[test]
fn round_trip_to_every_receiver() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"buy milk");
    assert_eq!(sealed.grants.len(), 2);
    assert_eq!(sealed.tags.len(), 2);
    assert!(!sealed.payload.windows(8).any(|x| x == b"buy milk"));
    for (opener, service) in [(&mut w.todos, "todos"), (&mut w.audit, "audit")] {
        let opened = opener.open(&deliver(&sealed, service, true), now_ms()).unwrap();
        assert_eq!(&opened.plaintext[..], b"buy milk");
        assert_eq!(&*opened.sender_service, "web");
        assert_eq!(opened.header.sender, WEB);
        assert_eq!(opened.header.policy_serial, 7);
        assert!(opened.reply_key.is_none());
    }
    // Later messages of the epoch need no grant once the epoch is known.
    let second = w.seal(header("todos.create"), b"and eggs");
    let opened = w.todos.open(&deliver(&second, "todos", false), now_ms()).unwrap();
    assert_eq!(&opened.plaintext[..], b"and eggs");
    assert_eq!(opened.header.seq, 1);
}

#[test]
fn any_bit_flip_in_payload_tag_or_header_is_rejected() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), &[0x5a; 64]);
    let good = deliver(&sealed, "todos", true);
    w.todos.open(&good, now_ms()).unwrap();
    for i in 0..good.payload.len() * 8 {
        let mut d = good.clone();
        let mut p = d.payload.to_vec();
        p[i / 8] ^= 1 << (i % 8);
        d.payload = p.into();
        assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::BadTag)), "payload bit {i}");
    }
    for i in 0..good.auth_tag.len() * 8 {
        let mut d = good.clone();
        let mut t = d.auth_tag.to_vec();
        t[i / 8] ^= 1 << (i % 8);
        d.auth_tag = t.into();
        assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::BadTag)), "tag bit {i}");
    }
    for i in 0..good.header.len() * 8 {
        let mut d = good.clone();
        let mut h = d.header.to_vec();
        h[i / 8] ^= 1 << (i % 8);
        d.header = h.into();
        assert!(w.todos.open(&d, now_ms()).is_err(), "header bit {i}");
    }
    // The untouched delivery still opens: nothing above was recorded.
    w.todos.open(&good, now_ms()).unwrap();
}

#[test]
fn rewriting_any_header_field_is_rejected() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    let good = deliver(&sealed, "todos", true);
    w.todos.open(&good, now_ms()).unwrap();
    let orig = RoutingHeader::decode(good.header.clone()).unwrap();
    type Edit = fn(&mut RoutingHeader, &mut Deliver);
    let edits: [(&str, Edit); 10] = [
        ("name", |h, _| h.name = "todos.delete".into()),
        ("version", |h, _| h.version = 2),
        ("id", |h, _| h.id = Bytes::from_static(&[1; 16])),
        ("origin_id", |h, _| h.origin_id = Bytes::from_static(&[2; 16])),
        ("response_to", |h, _| h.response_to = Bytes::from_static(&[3; 16])),
        ("sender", |h, d| {
            h.sender = AUDIT.into();
            d.sender_id = AUDIT.into();
            d.sender = "audit".into();
        }),
        ("expires_at", |h, _| h.expires_at_ms += 3_600_000),
        ("seq", |h, _| h.seq += 1),
        ("epoch", |h, _| h.epoch = Bytes::from_static(&[4; 16])),
        ("policy_serial", |h, _| h.policy_serial += 1),
    ];
    for (field, edit) in edits {
        let mut h = orig.clone();
        let mut d = good.clone();
        edit(&mut h, &mut d);
        d.header = h.encode_to_vec().into();
        let err = w.todos.open(&d, now_ms()).err();
        assert!(err.is_some(), "rewritten {field} accepted");
    }
}

#[test]
fn sender_must_be_the_authenticated_sender() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    let mut d = deliver(&sealed, "todos", true);
    d.sender_id = AUDIT.into();
    d.sender = "audit".into();
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::SenderMismatch { .. })));
    let mut d = deliver(&sealed, "todos", true);
    d.sender = "audit".into();
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::SenderMismatch { .. })));
}

#[test]
fn processed_messages_are_replays_but_unprocessed_redeliveries_pass() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    let d = deliver(&sealed, "todos", true);
    let first = w.todos.open(&d, now_ms()).unwrap();
    // Handler failed, no ack: the router redelivers; it passes again.
    let again = w.todos.open(&d, now_ms()).unwrap();
    w.todos.mark_processed(&again.header);
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::Replay)));
    assert_eq!(first.header, again.header);
    // Same bytes without the grant: still a replay.
    assert!(matches!(w.todos.open(&deliver(&sealed, "todos", false), now_ms()), Err(OpenError::Replay)));
}

/// Opening in two halves: `begin` in delivery order (the grant rides on
/// the epoch's first delivery), `finish` in any order, anywhere. A forgery
/// is still a bad tag whatever its header claims, and a replay is only
/// reported once the tag verified.
#[test]
fn begun_in_order_deliveries_finish_in_any_order() {
    let mut w = world();
    let first = w.seal(header("todos.create"), &[1; 40_000]);
    let second = w.seal(header("todos.create"), &[2; 40_000]);
    let (d1, d2) = (deliver(&first, "todos", true), deliver(&second, "todos", false));
    let (h1, h2) = (decode_header(&d1.header).unwrap(), decode_header(&d2.header).unwrap());
    // Begun out of order, the second has no grant yet.
    assert!(matches!(w.todos.begin(&d2, &h2, now_ms()), Err(OpenError::NoGrant)));
    let u1 = w.todos.begin(&d1, &h1, now_ms()).unwrap();
    let u2 = w.todos.begin(&d2, &h2, now_ms()).unwrap();
    let o2 = std::thread::spawn(move || u2.finish(&d2, &h2)).join().unwrap().unwrap();
    let o1 = u1.finish(&d1, &h1).unwrap();
    assert_eq!((&o1.plaintext[..], &o2.plaintext[..]), (&[1u8; 40_000][..], &[2u8; 40_000][..]));

    // A processed message begun again: a replay, but only behind a good tag.
    let d1 = deliver(&first, "todos", false);
    w.todos.mark_processed(&h1);
    let replayed = w.todos.begin(&d1, &h1, now_ms()).unwrap();
    assert!(matches!(replayed.finish(&d1, &h1), Err(OpenError::Replay)));
    let mut forged = d1.clone();
    let mut p = forged.payload.to_vec();
    p[100] ^= 1;
    forged.payload = p.into();
    let begun = w.todos.begin(&forged, &h1, now_ms()).unwrap();
    assert!(matches!(begun.finish(&forged, &h1), Err(OpenError::BadTag)));
}

/// The residual SECURITY.md states: replay state is per instance and in
/// memory, so a router that replays a processed message (with its grant) to
/// another instance of the service, or to the same instance after a
/// restart, gets it opened again within the message's expiry. Expiry is
/// what bounds it.
#[test]
fn replay_state_is_per_instance_and_bounded_by_expiry() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    let d = deliver(&sealed, "todos", true);
    let opened = w.todos.open(&d, now_ms()).unwrap();
    w.todos.mark_processed(&opened.header);
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::Replay)));
    let mut other_instance =
        Opener::new(w.todos_key.clone(), TODOS, w.ca.anchors(), web_may_send, OpenerConfig::default());
    assert!(
        other_instance.open(&d, now_ms()).is_ok(),
        "a second instance (or a restart) has no replay state"
    );
    let after_expiry = now_ms() + 60_000 + OpenerConfig::default().skew_ms + 1;
    let mut restarted =
        Opener::new(w.todos_key.clone(), TODOS, w.ca.anchors(), web_may_send, OpenerConfig::default());
    assert!(matches!(restarted.open(&d, after_expiry), Err(OpenError::Expired { .. })));
}

#[test]
fn replay_window_refuses_sequence_numbers_below_it() {
    let mut w = world();
    let first = w.seal(header("n.a"), b"x");
    w.todos.open(&deliver(&first, "todos", true), now_ms()).unwrap();
    w.sealer.set_next_seq("n.a", 10_000);
    let later = w.seal(header("n.a"), b"y");
    let opened = w.todos.open(&deliver(&later, "todos", false), now_ms()).unwrap();
    w.todos.mark_processed(&opened.header);
    assert!(matches!(w.todos.open(&deliver(&first, "todos", false), now_ms()), Err(OpenError::TooOld)));
}

#[test]
fn expired_messages_are_rejected() {
    let mut w = world();
    let mut h = header("todos.create");
    h.expires_at_ms = now_ms() - 60_000;
    let sealed = w.seal(h, b"x");
    assert!(matches!(
        w.todos.open(&deliver(&sealed, "todos", true), now_ms()),
        Err(OpenError::Expired { .. })
    ));
    // Within the skew it still opens.
    let mut h = header("todos.create");
    h.expires_at_ms = now_ms() - 10_000;
    let sealed = w.seal(h, b"x");
    w.todos.open(&deliver(&sealed, "todos", true), now_ms()).unwrap();
}

#[test]
fn a_co_receiver_cannot_forge_the_sender_to_another_receiver() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"real");
    let audit_grant = &sealed.grants.iter().find(|g| g.service == "audit").unwrap().data;
    // The compromised co-receiver (audit) unwraps its own grant: it knows sk and ak_audit.
    let limits = OpenLimits { max_age_ms: 86_400_000, skew_ms: 30_000 };
    let g = grant::open(
        audit_grant,
        std::slice::from_ref(&w.audit_key),
        AUDIT,
        &w.ca.anchors(),
        now_ms(),
        limits,
    )
    .unwrap();
    // With the router's help it injects a new message "from web" under sk.
    let mut h = RoutingHeader::decode(sealed.header.clone()).unwrap();
    h.seq = 99;
    h.id = Bytes::from_static(&[9; 16]);
    let header_bytes = Bytes::from(h.encode_to_vec());
    let (aead, prefix) = message_keys(&g.secrets.sender_key, &g.epoch, &g.name).unwrap();
    let mut buf = payload::encode(None, b"forged");
    crypto::seal(&aead, nonce(&prefix, 99), &header_bytes, &mut buf).unwrap();
    let digest = crypto::sha256(&[&header_bytes, &buf]);
    let audit_tag =
        crypto::auth_tag(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &g.secrets.auth_key), &digest);
    let forged = |tag: &[u8], grant: &Bytes| Deliver {
        header: header_bytes.clone(),
        payload: Bytes::from(buf.clone()),
        sender: "web".into(),
        sender_id: WEB.into(),
        auth_tag: Bytes::copy_from_slice(tag),
        grant: grant.clone(),
        ..Default::default()
    };
    // The forgery is a valid message for audit itself (the attacker really holds sk)...
    let at_audit = w.audit.open(&forged(&audit_tag, audit_grant), now_ms()).unwrap();
    assert_eq!(&at_audit.plaintext[..], b"forged");
    // ...but todos refuses it: the attacker has no ak_todos.
    let todos_grant = &sealed.grants.iter().find(|g| g.service == "todos").unwrap().data;
    assert!(matches!(w.todos.open(&forged(&audit_tag, todos_grant), now_ms()), Err(OpenError::BadTag)));
    assert!(matches!(w.todos.open(&forged(&[0; 16], todos_grant), now_ms()), Err(OpenError::BadTag)));
}

#[test]
fn grants_are_required_checked_and_policy_bound() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    assert!(matches!(w.todos.open(&deliver(&sealed, "todos", false), now_ms()), Err(OpenError::NoGrant)));
    // audit's grant given to todos: not addressed to it.
    let mut d = deliver(&sealed, "todos", false);
    d.grant = sealed.grants.iter().find(|g| g.service == "audit").unwrap().data.clone();
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::BadGrant(E2eError::NotForUs(_)))));
    // A receiver whose trusted policy does not let web send the name.
    let mut strict = Opener::new(
        w.todos_key.clone(),
        TODOS,
        w.ca.anchors(),
        |_: &str, _: &str| false,
        OpenerConfig::default(),
    );
    assert!(matches!(
        strict.open(&deliver(&sealed, "todos", true), now_ms()),
        Err(OpenError::Unauthorized { .. })
    ));
    // A grant of another epoch of the same sender does not fit this header.
    let other = w.seal(header("other.name"), b"y");
    let mut d = deliver(&sealed, "todos", false);
    d.grant = other.grants.iter().find(|g| g.service == "todos").unwrap().data.clone();
    assert!(matches!(w.todos.open(&d, now_ms()), Err(OpenError::GrantMismatch("epoch"))));
}

#[test]
fn a_previous_receive_key_still_opens_during_rotation() {
    let mut w = world();
    let sealed = w.seal(header("todos.create"), b"x");
    let new_key = ReceiveKey::generate().unwrap();
    let mut opener = Opener::new(new_key, TODOS, w.ca.anchors(), web_may_send, OpenerConfig::default());
    assert!(matches!(
        opener.open(&deliver(&sealed, "todos", true), now_ms()),
        Err(OpenError::BadGrant(E2eError::NotForUs(_)))
    ));
    opener.add_receive_key(w.todos_key.clone());
    opener.open(&deliver(&sealed, "todos", true), now_ms()).unwrap();
}

#[test]
fn grants_ride_along_until_confirmed() {
    let mut w = world();
    let a = w.seal(header("n.a"), b"1");
    let b = w.seal(header("n.a"), b"2");
    assert_eq!((a.grants.len(), b.grants.len()), (2, 2));
    assert_eq!(a.grants, b.grants);
    w.sealer.confirm_grants("n.a", &[0; 16]);
    assert_eq!(w.seal(header("n.a"), b"3").grants.len(), 2, "wrong epoch id confirmed nothing");
    w.sealer.confirm_grants("n.a", &a.epoch);
    assert!(w.seal(header("n.a"), b"4").grants.is_empty());
}

#[test]
fn epochs_rotate_on_count_age_overflow_receivers_serial_and_restart() {
    let mut w = world_with(EpochConfig { max_age_ms: 1000, max_messages: 3 });
    let now = now_ms();
    let seal_at = |w: &mut World, receivers: &[VerifiedAnnouncement], serial, at| {
        w.sealer.seal(header("n.a"), receivers, serial, b"x", at).unwrap()
    };
    let r = w.receivers.clone();
    let e: Vec<_> = (0..4).map(|_| seal_at(&mut w, &r, 1, now)).collect();
    assert_eq!(e[0].epoch, e[2].epoch);
    assert_eq!((e[0].seq, e[2].seq), (0, 2));
    assert_ne!(e[3].epoch, e[2].epoch, "count");
    assert_eq!(e[3].seq, 0);
    let aged = seal_at(&mut w, &r, 1, now + 1000);
    assert_ne!(aged.epoch, e[3].epoch, "age");
    // With no count limit, the u64 sequence itself running out ends the epoch.
    let mut w2 = world_with(EpochConfig { max_age_ms: u64::MAX, max_messages: u64::MAX });
    let r2 = w2.receivers.clone();
    let x = seal_at(&mut w2, &r2, 1, now);
    w2.sealer.set_next_seq("n.a", u64::MAX - 1);
    let y = seal_at(&mut w2, &r2, 1, now);
    assert_eq!((y.epoch, y.seq), (x.epoch, u64::MAX - 1));
    let z = seal_at(&mut w2, &r2, 1, now);
    assert_ne!(z.epoch, x.epoch, "seq overflow");
    assert_eq!(z.seq, 0);
    let serial = seal_at(&mut w2, &r2, 2, now);
    assert_ne!(serial.epoch, z.epoch, "policy serial");
    // audit leaves the receiver set: new epoch, no grant for audit, audit can't read on.
    let fewer = seal_at(&mut w2, &r2[..1], 2, now);
    assert_ne!(fewer.epoch, serial.epoch, "receiver set");
    assert!(fewer.grants.iter().all(|g| g.service == "todos"));
    assert!(w2.audit.open(&deliver(&serial, "audit", true), now).is_ok());
    assert!(matches!(w2.audit.open(&deliver(&fewer, "audit", true), now), Err(OpenError::NoGrant)));
    // A restarted sender (new Sealer) never continues an old epoch.
    let mut restarted = Sealer::new(w2.ca.identity("web"), "s-1", EpochConfig::default());
    let after = restarted.seal(header("n.a"), &r2, 2, b"x", now).unwrap();
    assert_ne!(after.epoch, fewer.epoch);
}

/// The receiver set is compared per message without being rebuilt: the same
/// receivers in another order keep the epoch; a repeated receiver in place
/// of another (as many receivers as before, each one in the set) does not,
/// and is refused; a changed receive key starts a new epoch.
#[test]
fn the_receiver_set_is_compared_as_a_set() {
    let mut w = world();
    let now = now_ms();
    let (a, b) = (w.receivers[0].clone(), w.receivers[1].clone());
    let first = w.sealer.seal(header("n.a"), &[a.clone(), b.clone()], 1, b"x", now).unwrap();
    let swapped = w.sealer.seal(header("n.a"), &[b.clone(), a.clone()], 1, b"x", now).unwrap();
    assert_eq!((swapped.epoch, swapped.seq), (first.epoch, 1), "same set, other order");
    assert!(matches!(
        w.sealer.seal(header("n.a"), &[a.clone(), a.clone()], 1, b"x", now),
        Err(E2eError::DuplicateReceiver(_))
    ));
    let mut rekeyed = b.clone();
    rekeyed.key_id[0] ^= 1;
    let after = w.sealer.seal(header("n.a"), &[a, rekeyed], 1, b"x", now).unwrap();
    assert_ne!(after.epoch, first.epoch, "a changed key id is another set");
}

#[test]
fn nonces_never_repeat() {
    let mut w = world_with(EpochConfig { max_age_ms: u64::MAX, max_messages: 5000 });
    let mut seen = HashSet::new();
    let mut epochs = HashSet::new();
    for i in 0..50_000u32 {
        let name = if i % 2 == 0 { "n.a" } else { "n.b" };
        let p = w.sealer.prepare(header(name), &w.receivers, 1, now_ms()).unwrap();
        let epoch: [u8; 16] = p.header.epoch[..].try_into().unwrap();
        epochs.insert(epoch);
        assert!(seen.insert((epoch, p.nonce)), "nonce reused at message {i}");
    }
    assert!(epochs.len() >= 10);
}

#[test]
fn grants_per_frame_are_capped_and_receivers_validated() {
    let mut w = world();
    let fake = |i: usize| VerifiedAnnouncement {
        service: format!("s{i}"),
        spiffe_id: format!("spiffe://example.org/svc/s{i}"),
        instance: "i".into(),
        public: [9; 32],
        key_id: [0; 8],
        not_before_ms: 0,
        not_after_ms: u64::MAX,
    };
    let many: Vec<_> = (0..=MAX_GRANTS_PER_FRAME).map(fake).collect();
    assert!(matches!(
        w.sealer.seal(header("n.a"), &many, 1, b"x", now_ms()),
        Err(E2eError::TooManyReceivers { .. })
    ));
    assert!(matches!(w.sealer.seal(header("n.a"), &[], 1, b"x", now_ms()), Err(E2eError::NoReceivers)));
    let dup = vec![w.receivers[0].clone(), w.receivers[0].clone()];
    assert!(matches!(
        w.sealer.seal(header("n.a"), &dup, 1, b"x", now_ms()),
        Err(E2eError::DuplicateReceiver(_))
    ));
    let mut low_order = w.receivers[0].clone();
    low_order.public = [0; 32];
    assert!(matches!(
        w.sealer.seal(header("n.a"), &[low_order], 1, b"x", now_ms()),
        Err(E2eError::ZeroSharedSecret)
    ));
    let mut bad = header("n.a");
    bad.id = Bytes::from_static(b"short");
    assert!(matches!(w.sealer.seal(bad, &w.receivers, 1, b"x", now_ms()), Err(E2eError::Header(_))));
}

/// A command expecting replies, opened at todos; returns the reply key both sides hold.
fn request(w: &mut World) -> (Sealed, RoutingHeader, ReplyKey) {
    let mut h = header("todos.list");
    h.expects_reply = true;
    let receivers = w.receivers[..1].to_vec();
    let sealed = w.sealer.seal(h, &receivers, 1, b"list please", now_ms()).unwrap();
    let opened = w.todos.open(&deliver(&sealed, "todos", true), now_ms()).unwrap();
    let key = opened.reply_key.clone().unwrap();
    assert_eq!(Some(&key), sealed.reply_key.as_ref());
    (sealed, opened.header, key)
}

fn reply_deliver(sealed: &super::reply::SealedReply) -> Deliver {
    Deliver {
        header: sealed.header.clone(),
        payload: sealed.payload.clone(),
        sender: "todos".into(),
        sender_id: TODOS.into(),
        ..Default::default()
    }
}

fn reply_header(name: &str) -> RoutingHeader {
    let mut h = header(name);
    h.kind = Kind::Reply as i32;
    h
}

#[test]
fn replies_stream_under_the_reply_key() {
    let mut w = world();
    let (cmd, cmd_header, key) = request(&mut w);
    let mut replier = ReplySealer::new(&key, &cmd_header, TODOS, "r-1").unwrap();
    let parts: Vec<_> = (0..3)
        .map(|i| replier.seal(reply_header("todos.listed"), format!("part {i}").as_bytes(), i == 2).unwrap())
        .collect();
    assert!(replier.seal(reply_header("todos.listed"), b"more", false).is_err());
    let mut requester = ReplyOpener::new(cmd.reply_key.clone().unwrap(), cmd_header.id.clone());
    assert!(matches!(requester.finish(), Err(OpenError::Truncated { received: 0 })));
    for (i, part) in parts.iter().enumerate() {
        let r = requester.open(&reply_deliver(part), now_ms()).unwrap();
        assert_eq!(r.plaintext, format!("part {i}").as_bytes());
        assert_eq!((r.stream_seq, r.last), (i as u64, i == 2));
        assert_eq!(r.header.response_to, cmd_header.id);
    }
    requester.finish().unwrap();
    assert!(matches!(requester.open(&reply_deliver(&parts[2]), now_ms()), Err(OpenError::AfterFinal)));
}

#[test]
fn cut_streams_gaps_replays_and_forged_replies_are_detected() {
    let mut w = world();
    let (cmd, cmd_header, key) = request(&mut w);
    let mut replier = ReplySealer::new(&key, &cmd_header, TODOS, "r-1").unwrap();
    let parts: Vec<_> =
        (0..3).map(|i| replier.seal(reply_header("todos.listed"), b"p", i == 2).unwrap()).collect();
    let rk = cmd.reply_key.clone().unwrap();

    // The final reply is dropped: truncation is reported.
    let mut requester = ReplyOpener::new(rk.clone(), cmd_header.id.clone());
    requester.open(&reply_deliver(&parts[0]), now_ms()).unwrap();
    requester.open(&reply_deliver(&parts[1]), now_ms()).unwrap();
    assert!(matches!(requester.open(&reply_deliver(&parts[1]), now_ms()), Err(OpenError::Replay)));
    assert!(matches!(requester.finish(), Err(OpenError::Truncated { received: 2 })));

    // A middle reply is dropped: a gap.
    let mut requester = ReplyOpener::new(rk.clone(), cmd_header.id.clone());
    requester.open(&reply_deliver(&parts[0]), now_ms()).unwrap();
    assert!(matches!(
        requester.open(&reply_deliver(&parts[2]), now_ms()),
        Err(OpenError::StreamGap { expected: 1, got: 2 })
    ));

    // A reply sealed without the reply key (a router's guess) is rejected.
    let mut forger = ReplySealer::new(&ReplyKey::from_bytes([7; 32]), &cmd_header, TODOS, "r-1").unwrap();
    let forged = forger.seal(reply_header("todos.listed"), b"fake", true).unwrap();
    let mut requester = ReplyOpener::new(rk.clone(), cmd_header.id.clone());
    assert!(matches!(requester.open(&reply_deliver(&forged), now_ms()), Err(OpenError::BadAead)));

    // A reply to another command, or from a sender other than the authenticated one.
    let mut requester = ReplyOpener::new(rk, Bytes::from_static(&[1; 16]));
    assert!(matches!(requester.open(&reply_deliver(&parts[0]), now_ms()), Err(OpenError::WrongCommand)));
    let mut requester = ReplyOpener::new(cmd.reply_key.clone().unwrap(), cmd_header.id.clone());
    let mut d = reply_deliver(&parts[0]);
    d.sender_id = AUDIT.into();
    d.sender = "audit".into();
    assert!(matches!(requester.open(&d, now_ms()), Err(OpenError::SenderMismatch { .. })));
    // Replies are not opened as commands.
    assert!(matches!(w.todos.open(&reply_deliver(&parts[0]), now_ms()), Err(OpenError::IsReply)));
}

#[test]
fn a_redelivered_command_gets_a_fresh_reply_epoch() {
    let mut w = world();
    let (_, cmd_header, key) = request(&mut w);
    let a = ReplySealer::new(&key, &cmd_header, TODOS, "r-1")
        .unwrap()
        .seal(reply_header("x.y"), b"a", true)
        .unwrap();
    let b = ReplySealer::new(&key, &cmd_header, TODOS, "r-1")
        .unwrap()
        .seal(reply_header("x.y"), b"a", true)
        .unwrap();
    let ha = RoutingHeader::decode(a.header.clone()).unwrap();
    let hb = RoutingHeader::decode(b.header.clone()).unwrap();
    assert_eq!(ha.stream_seq, hb.stream_seq);
    assert_ne!(ha.epoch, hb.epoch);
    assert_ne!(a.payload, b.payload);
}

#[test]
fn an_injected_announcement_of_an_unauthorized_service_gains_nothing() {
    let mut w = world();
    // A valid service the policy does not let receive the name; the router injects its announcement.
    let (evil_key, evil_ann, _) = receiver(&w.ca, "evil");
    let mut directory = w.receivers.clone();
    directory.push(evil_ann);
    let picked = super::select_receivers(&["todos".into(), "audit".into()], &directory);
    assert_eq!(picked, w.receivers);
    let sealed = w.sealer.seal(header("todos.create"), &picked, 1, b"secret", now_ms()).unwrap();
    assert!(sealed.grants.iter().all(|g| g.service != "evil"));
    let mut evil = Opener::new(
        evil_key,
        "spiffe://example.org/svc/evil",
        w.ca.anchors(),
        web_may_send,
        OpenerConfig::default(),
    );
    let mut d = deliver(&sealed, "todos", true);
    assert!(matches!(evil.open(&d, now_ms()), Err(OpenError::BadGrant(E2eError::NotForUs(_)))));
    d.grant = Bytes::new();
    assert!(matches!(evil.open(&d, now_ms()), Err(OpenError::NoGrant)));
}

#[test]
fn the_relay_can_share_sealer_and_opener_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Sealer>();
    send_sync::<Opener>();
    send_sync::<ReplySealer>();
    send_sync::<ReplyOpener>();
    send_sync::<super::Prepared>();
}

mod no_panic_on_input {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parsers_return_errors_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), cut in 0usize..600) {
            let ca = TestCa::new("ca");
            let _ = verify_announcement(&bytes, &ca.anchors(), now_ms());
            let limits = OpenLimits { max_age_ms: 1000, skew_ms: 0 };
            let _ = grant::open(&bytes, &[ReceiveKey::from_secret([1; 32])], TODOS, &ca.anchors(), now_ms(), limits);
            let _ = payload::decode(&bytes);
            let mut opener = Opener::new(ReceiveKey::from_secret([1; 32]), TODOS, ca.anchors(), web_may_send, OpenerConfig::default());
            let split = cut.min(bytes.len());
            let d = Deliver {
                header: Bytes::copy_from_slice(&bytes[..split]),
                payload: Bytes::copy_from_slice(&bytes[split..]),
                sender_id: WEB.into(),
                grant: Bytes::copy_from_slice(&bytes),
                auth_tag: Bytes::copy_from_slice(&bytes[..split.min(16)]),
                ..Default::default()
            };
            prop_assert!(opener.open(&d, now_ms()).is_err());
            let mut replies = ReplyOpener::new(ReplyKey::from_bytes([2; 32]), Bytes::from_static(&[0; 16]));
            prop_assert!(replies.open(&d, now_ms()).is_err());
        }
    }
}

mod seal_open_properties {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// Which part of a delivery a single-bit change hits.
    #[derive(Clone, Copy, Debug)]
    enum Part {
        Header,
        Payload,
        Tag,
    }

    /// For arbitrary names, plaintexts and header fields, every receiver
    /// opens exactly what was sealed; changing any single bit of the header,
    /// payload or tag is refused, and the untouched delivery still opens.
    /// One world (PKI, sealer, openers) serves every case: epochs and replay
    /// state carry over, as in a long-lived relay.
    #[test]
    fn seal_open_round_trips_and_any_single_bit_change_is_refused() {
        let w = std::cell::RefCell::new(world());
        let mut runner = TestRunner::new(Config::with_cases(128));
        let strategy = (
            proptest::string::string_regex("[a-z][a-z0-9_-]{0,8}(\\.[a-z0-9_-]{1,8}){0,3}").unwrap(),
            proptest::collection::vec(any::<u8>(), 0..512),
            any::<bool>(),
            "[a-z0-9]{0,12}",
            prop_oneof![Just(Part::Header), Just(Part::Payload), Just(Part::Tag)],
            any::<prop::sample::Index>(),
        );
        runner
            .run(&strategy, |(name, plaintext, expects_reply, partition_key, part, bit)| {
                let w = &mut *w.borrow_mut();
                let mut h = header(&name);
                h.expects_reply = expects_reply;
                h.partition_key = partition_key;
                let sealed = w.seal(h, &plaintext);
                let good = deliver(&sealed, "todos", true);
                let mut bad = good.clone();
                let flip = |b: &Bytes| {
                    let mut v = b.to_vec();
                    let i = bit.index(v.len() * 8);
                    v[i / 8] ^= 1 << (i % 8);
                    Bytes::from(v)
                };
                match part {
                    Part::Header => bad.header = flip(&good.header),
                    Part::Payload => bad.payload = flip(&good.payload),
                    Part::Tag => bad.auth_tag = flip(&good.auth_tag),
                }
                prop_assert!(
                    w.todos.open(&bad, now_ms()).is_err(),
                    "{:?} bit {} accepted",
                    part,
                    bit.index(8)
                );
                let opened = w.todos.open(&good, now_ms()).unwrap();
                prop_assert_eq!(&opened.plaintext[..], &plaintext[..]);
                prop_assert_eq!(&opened.header.name, &name);
                prop_assert_eq!(opened.reply_key.is_some(), expects_reply);
                w.todos.mark_processed(&opened.header);
                let other = w.audit.open(&deliver(&sealed, "audit", true), now_ms()).unwrap();
                prop_assert_eq!(&other.plaintext[..], &plaintext[..]);
                // Once processed, the same delivery is a replay.
                prop_assert!(matches!(w.todos.open(&good, now_ms()), Err(OpenError::Replay)));
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn sender_reply_and_grant_keys_have_no_path_to_disk() {
    // Sender keys, auth keys, reply keys and unwrapped grants live in these
    // modules only; none of them may touch the file system or print.
    for (file, text) in [
        ("seal.rs", include_str!("seal.rs")),
        ("open.rs", include_str!("open.rs")),
        ("grant.rs", include_str!("grant.rs")),
        ("reply.rs", include_str!("reply.rs")),
        ("crypto.rs", include_str!("crypto.rs")),
        ("payload.rs", include_str!("payload.rs")),
    ] {
        for banned in ["std::fs", "File::", "OpenOptions", "println!", "eprintln!", "dbg!"] {
            assert!(!text.contains(banned), "{file} mentions {banned}");
        }
    }
}
