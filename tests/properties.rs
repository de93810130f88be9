//! Property tests across public APIs: frames and routing headers survive
//! encode/decode for arbitrary values and for arbitrary splits of the byte
//! stream, the hand-written encoders of `wire::encode` write exactly
//! prost's bytes, the hand-written decoders of `wire::decode` read any bytes
//! (well-formed, damaged or arbitrary) exactly as prost reads them, and a
//! whole policy decides as the obvious reference model says.
//!
//! (Pattern matching against a reference matcher lives with the matcher in
//! src/policy/pattern.rs; seal/open properties in src/e2e/tests.rs, where the
//! test PKI is.)

use bytes::{Bytes, BytesMut};
use exocom::policy::Policy;
use exocom::wire::connection::FrameReader;
use exocom::wire::decode::{self, RawHeader};
use exocom::wire::encode::{self, DeliverRef};
use exocom::wire::frame::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX, SPLIT_PAYLOAD};
use exocom::wire::messages::{
    Accepted, Ack, Announce, Body, Deliver, Error, Frame, Hello, KeyDirectory, KeyQuery, Nack, Ping, Pong,
    RoutingHeader, RoutingHeaderView, Send, ServiceBlob, Subscribe, Subscription, Welcome,
};
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use tokio::io::AsyncWriteExt;

fn bytes_(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{max}}}")).expect("regex")
}

fn blob() -> impl Strategy<Value = ServiceBlob> {
    (text(12), bytes_(48)).prop_map(|(service, data)| ServiceBlob { service, data })
}

/// 0 (a field prost leaves out), small, and up to the largest value, so
/// every varint length occurs.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..300, any::<u64>()]
}

fn number32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 0u32..300, any::<u32>()]
}

fn header() -> impl Strategy<Value = RoutingHeader> {
    (
        (text(24), number32(), bytes_(20), bytes_(20), bytes_(20), -1i32..4, text(40), text(12)),
        (any::<bool>(), text(12), number(), number(), any::<bool>(), number32(), bytes_(20)),
        (number(), number()),
    )
        .prop_map(
            |(
                (name, version, id, origin_id, response_to, kind, sender, sender_instance),
                (expects_reply, partition_key, expires_at_ms, stream_seq, stream_final, seal, epoch),
                (seq, policy_serial),
            )| RoutingHeader {
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
            },
        )
}

/// Real encoded headers half the time, arbitrary bytes otherwise.
fn header_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![header().prop_map(|h| frame::encode_header(&h)), bytes_(64)]
}

fn send() -> impl Strategy<Value = Send> {
    (number(), header_bytes(), bytes_(256), vec(blob(), 0..3), vec(blob(), 0..3))
        .prop_map(|(corr, header, payload, tags, grants)| Send { corr, header, payload, tags, grants })
}

fn deliver() -> impl Strategy<Value = Deliver> {
    (
        (number(), header_bytes(), bytes_(256), text(12), text(40)),
        (number(), number32(), bytes_(16), bytes_(64)),
    )
        .prop_map(
            |((tag, header, payload, sender, sender_id), (timestamp_ms, attempt, auth_tag, grant))| Deliver {
                tag,
                header,
                payload,
                sender,
                sender_id,
                timestamp_ms,
                attempt,
                auth_tag,
                grant,
            },
        )
}

/// Every body kind, with arbitrary field values (headers are real encoded
/// headers half the time, arbitrary bytes otherwise).
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), text(40), text(20)).prop_map(|(protocol, instance, client)| Body::Hello(Hello {
            protocol,
            instance,
            client
        })),
        (any::<u32>(), text(40), text(20), any::<u64>(), text(10)).prop_map(
            |(protocol, identity, service, max_frame, router)| Body::Welcome(Welcome {
                protocol,
                identity,
                service,
                max_frame,
                router
            })
        ),
        (vec((text(20), vec(any::<u32>(), 0..4)), 0..4), any::<u32>()).prop_map(|(subs, prefetch)| {
            Body::Subscribe(Subscribe {
                subscriptions: subs
                    .into_iter()
                    .map(|(name, versions)| Subscription { name, versions })
                    .collect(),
                prefetch,
            })
        }),
        send().prop_map(Body::Send),
        (any::<u64>(), any::<u32>())
            .prop_map(|(corr, receivers)| Body::Accepted(Accepted { corr, receivers })),
        (any::<u64>(), -1i32..17, text(60)).prop_map(|(corr, code, message)| Body::Error(Error {
            corr,
            code,
            message
        })),
        deliver().prop_map(Body::Deliver),
        vec(any::<u64>(), 0..8).prop_map(|tags| Body::Ack(Ack { tags })),
        (any::<u64>(), any::<bool>()).prop_map(|(tag, requeue)| Body::Nack(Nack { tag, requeue })),
        any::<u64>().prop_map(|nonce| Body::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Body::Pong(Pong { nonce })),
        bytes_(128).prop_map(|announcement| Body::Announce(Announce { announcement })),
        vec(text(12), 0..4).prop_map(|services| Body::KeyQuery(KeyQuery { services })),
        vec(bytes_(64), 0..4).prop_map(|announcements| Body::KeyDirectory(KeyDirectory { announcements })),
    ]
}

fn frame_() -> impl Strategy<Value = Frame> {
    body().prop_map(|b| Frame { body: Some(b) })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip(f in frame_()) {
        let mut buf = BytesMut::from(&frame::to_bytes(&f)[..]);
        prop_assert_eq!(frame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap(), Some(f));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn routing_headers_round_trip(h in header()) {
        prop_assert_eq!(frame::decode_header(&frame::encode_header(&h)).unwrap(), h);
    }

    #[test]
    fn a_frame_one_byte_too_large_is_refused(f in frame_()) {
        let bytes = frame::to_bytes(&f);
        let len = bytes.len() - frame::LENGTH_PREFIX;
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert!(frame::decode(&mut buf, len.saturating_sub(1)).is_err() || len == 0);
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert!(frame::decode(&mut buf, len).unwrap().is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A stream of frames written in arbitrary chunk sizes (1 byte and up,
    /// with yields between writes) reads back as the same frames, then a
    /// clean end of stream.
    #[test]
    fn frame_streams_survive_any_split(
        frames in vec(frame_(), 1..12),
        chunks in vec(1usize..300, 1..64),
        pipe in 1usize..512,
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            frame::encode(f, &mut wire);
        }
        let wire = wire.freeze();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(async move {
            let (mut tx, rx) = tokio::io::duplex(pipe);
            let writer = tokio::spawn(async move {
                let mut at = 0;
                let mut i = 0;
                while at < wire.len() {
                    let n = chunks[i % chunks.len()].min(wire.len() - at);
                    tx.write_all(&wire[at..at + n]).await.unwrap();
                    tokio::task::yield_now().await;
                    at += n;
                    i += 1;
                }
                tx.shutdown().await.unwrap();
            });
            let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
            let mut got = Vec::new();
            while let Some(f) = reader.read_frame().await.unwrap() {
                got.push(f);
            }
            writer.await.unwrap();
            got
        });
        prop_assert_eq!(got, frames);
    }

    /// A stream cut anywhere inside a frame is reported as truncated, never
    /// as a clean end or a panic.
    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated(f in frame_(), cut_at in any::<prop::sample::Index>()) {
        let wire = frame::to_bytes(&f);
        let cut = 1 + cut_at.index(wire.len() - 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = rt.block_on(async move {
            let (mut tx, rx) = tokio::io::duplex(64);
            let writer = tokio::spawn(async move {
                tx.write_all(&wire[..cut]).await.unwrap();
                tx.shutdown().await.unwrap();
            });
            let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
            let r = reader.read_frame().await;
            writer.await.unwrap();
            r
        });
        prop_assert!(matches!(result, Err(exocom::wire::connection::ConnectionError::Truncated)), "{:?}", result);
    }
}

// ---- the hand-written encoders write prost's bytes ------------------------

/// Payloads either side of the size from which a payload is written apart.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => bytes_(256),
        1 => (SPLIT_PAYLOAD - 2..SPLIT_PAYLOAD + 2).prop_map(|n| Bytes::from(vec![7u8; n])),
    ]
}

/// What prost writes for a `Send` or `Deliver` in a frame: all of it for a
/// small payload; for a large one, the frame without its payload, then the
/// payload's key and length (the payload itself returned, to follow).
fn prost_frame(body: Body) -> (Vec<u8>, Option<Bytes>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    // `Frame.body` field numbers of `Send` and `Deliver`; `payload` is 3 in both.
    let (body_tag, rest, payload) = match &body {
        Body::Send(m) => (4, Send { payload: Bytes::new(), ..m.clone() }.encode_to_vec(), m.payload.clone()),
        Body::Deliver(m) => {
            (7, Deliver { payload: Bytes::new(), ..m.clone() }.encode_to_vec(), m.payload.clone())
        }
        _ => unreachable!("only Send and Deliver are written by hand"),
    };
    if payload.len() < SPLIT_PAYLOAD {
        let whole = Frame { body: Some(body) }.encode_to_vec();
        let mut out = (whole.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&whole);
        return (out, None);
    }
    let message = rest.len() + key_len(3) + encoded_len_varint(payload.len() as u64) + payload.len();
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX + rest.len() + 16);
    out.extend_from_slice(
        &((key_len(body_tag) + encoded_len_varint(message as u64) + message) as u32).to_be_bytes(),
    );
    encode_key(body_tag, WireType::LengthDelimited, &mut out);
    encode_varint(message as u64, &mut out);
    out.extend_from_slice(&rest);
    encode_key(3, WireType::LengthDelimited, &mut out);
    encode_varint(payload.len() as u64, &mut out);
    (out.to_vec(), Some(payload))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_header_is_encoded_as_prost_encodes_it(h in header()) {
        prop_assert_eq!(&encode::header(&h)[..], &h.encode_to_vec()[..]);
    }

    #[test]
    fn a_deliver_is_encoded_as_prost_encodes_it(mut d in deliver(), payload in payload()) {
        d.payload = payload;
        let mut out = BytesMut::new();
        let split = encode::deliver(&DeliverRef::of(&d), &mut out);
        let (expected, expected_split) = prost_frame(Body::Deliver(d.clone()));
        prop_assert_eq!(&out[..], &expected[..]);
        prop_assert_eq!(split.is_some(), d.payload.len() >= SPLIT_PAYLOAD);
        prop_assert_eq!(split, expected_split);
    }

    #[test]
    fn a_send_is_encoded_as_prost_encodes_it(mut s in send(), payload in payload()) {
        s.payload = payload;
        let mut out = BytesMut::new();
        let split = encode::send(&s, &mut out);
        let (expected, expected_split) = prost_frame(Body::Send(s.clone()));
        prop_assert_eq!(&out[..], &expected[..]);
        prop_assert_eq!(split.is_some(), s.payload.len() >= SPLIT_PAYLOAD);
        prop_assert_eq!(split, expected_split);
    }
}

// ---- the hand-written decoders read what prost reads ---------------------

/// The frames `wire::decode` reads by hand, any field values.
fn hot_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        send().prop_map(Body::Send),
        deliver().prop_map(Body::Deliver),
        (number(), number32()).prop_map(|(corr, receivers)| Body::Accepted(Accepted { corr, receivers })),
    ]
}

/// `bytes` with up to four edits: a byte changed, inserted or removed, or
/// the rest cut off.
fn damaged(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    vec((0u8..4, any::<prop::sample::Index>(), 1u8..=255), 1..5).prop_map(move |edits| {
        let mut b = bytes.clone();
        for (op, at, byte) in edits {
            let i = at.index(b.len() + 1);
            match op {
                0 if i < b.len() => b[i] ^= byte,
                1 => b.insert(i, byte),
                2 if i < b.len() => {
                    b.remove(i);
                }
                _ => b.truncate(i),
            }
        }
        b
    })
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint as bytes: any value, canonical; padded with continuation
/// bytes (overlong, ten bytes and past); or ten bytes whose last is 0–3
/// (prost takes 0 and 1).
fn varint_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => number().prop_map(|v| {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            out
        }),
        1 => (number(), 1usize..10).prop_map(|(v, pad)| {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            for _ in 0..pad {
                if let Some(last) = out.last_mut() {
                    *last |= 0x80;
                }
                out.push(0);
            }
            out
        }),
        1 => (vec(any::<u8>(), 9), 0u8..4).prop_map(|(mut out, last)| {
            out.iter_mut().for_each(|b| *b |= 0x80);
            out.push(last);
            out
        }),
    ]
}

/// Wire types of a message's fields by number (index 0 unused): V varint, L length-delimited.
const V: u8 = 0;
const L: u8 = 2;
const HEADER_TYPES: &[u8] = &[V, L, V, L, L, L, V, L, L, V, L, V, V, V, V, L, V, V];
const SEND_TYPES: &[u8] = &[V, V, L, L, L, L];
const BLOB_TYPES: &[u8] = &[V, L, L];
const DELIVER_TYPES: &[u8] = &[V, V, L, L, L, L, V, V, L, L];
const ACCEPTED_TYPES: &[u8] = &[V, V, V];

/// Contents of a length-delimited field: text, any bytes, or (for `Send`'s
/// blobs) a nested message.
fn content(nested: bool) -> BoxedStrategy<Vec<u8>> {
    let plain = prop_oneof![text(16).prop_map(String::into_bytes), vec(any::<u8>(), 0..16)];
    if nested { prop_oneof![1 => plain, 2 => raw_message(BLOB_TYPES, false)].boxed() } else { plain.boxed() }
}

/// A message written field by field, the way a peer may write it: the
/// schema's fields mostly with their wire types, sometimes an unknown
/// number (0 included), another wire type (fixed32, fixed64, a group), a
/// field twice, in any order, with any varint encoding.
fn raw_message(types: &'static [u8], nested: bool) -> BoxedStrategy<Vec<u8>> {
    let last = types.len() as u64 - 1;
    let field = (
        prop_oneof![12 => 1..=last, 1 => 0..=last + 3],
        prop_oneof![12 => Just(None), 1 => (0u64..8).prop_map(Some)],
        varint_bytes(),
        content(nested),
    );
    vec(field, 0..8)
        .prop_map(move |fields| {
            let mut out = Vec::new();
            for (number, wire_type, value, content) in fields {
                let wire_type = wire_type.unwrap_or(u64::from(*types.get(number as usize).unwrap_or(&V)));
                put_varint(number << 3 | wire_type, &mut out);
                match wire_type {
                    0 => out.extend_from_slice(&value),
                    1 => out.extend_from_slice(&[0; 8]),
                    2 => {
                        put_varint(content.len() as u64, &mut out);
                        out.extend_from_slice(&content);
                    }
                    5 => out.extend_from_slice(&[0; 4]),
                    _ => {}
                }
            }
            out
        })
        .boxed()
}

/// A frame body written field by field: `Send`, `Deliver` or `Accepted`
/// (any number, mostly theirs), sometimes followed by another field.
fn raw_frame_body() -> impl Strategy<Value = Vec<u8>> {
    let inner = prop_oneof![
        (Just(4u64), raw_message(SEND_TYPES, true)),
        (Just(7u64), raw_message(DELIVER_TYPES, false)),
        (Just(5u64), raw_message(ACCEPTED_TYPES, false)),
        (1u64..16, raw_message(ACCEPTED_TYPES, false)),
    ];
    (inner, prop_oneof![4 => Just(Vec::new()), 1 => raw_message(ACCEPTED_TYPES, false)]).prop_map(
        |((number, message), trailer)| {
            let mut out = Vec::new();
            put_varint(number << 3 | 2, &mut out);
            put_varint(message.len() as u64, &mut out);
            out.extend_from_slice(&message);
            out.extend_from_slice(&trailer);
            out
        },
    )
}

/// A frame body: well-formed, written field by field, damaged, or arbitrary bytes.
fn frame_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => hot_body().prop_map(|b| Frame { body: Some(b) }.encode_to_vec()),
        4 => raw_frame_body(),
        2 => hot_body().prop_flat_map(|b| damaged(Frame { body: Some(b) }.encode_to_vec())),
        1 => frame_().prop_flat_map(|f| damaged(f.encode_to_vec())),
        1 => vec(any::<u8>(), 0..64),
    ]
}

/// A routing header's bytes: well-formed, written field by field, damaged, or arbitrary.
fn any_header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => header().prop_map(|h| h.encode_to_vec()),
        4 => raw_message(HEADER_TYPES, false),
        2 => header().prop_flat_map(|h| damaged(h.encode_to_vec())),
        1 => vec(any::<u8>(), 0..64),
    ]
}

/// `raw`'s fields as prost's view has them.
fn view_of(raw: &RawHeader, b: &Bytes) -> RoutingHeaderView {
    RoutingHeaderView {
        name: raw.name.share(b),
        version: raw.version,
        id: raw.id.share(b),
        origin_id: raw.origin_id.share(b),
        response_to: raw.response_to.share(b),
        kind: raw.kind,
        sender: raw.sender.share(b),
        sender_instance: raw.sender_instance.share(b),
        expects_reply: raw.expects_reply,
        partition_key: raw.partition_key.share(b),
        expires_at_ms: raw.expires_at_ms,
        stream_seq: raw.stream_seq,
        stream_final: raw.stream_final,
        seal: raw.seal,
        epoch: raw.epoch.share(b),
        seq: raw.seq,
        policy_serial: raw.policy_serial,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn a_hot_frame_is_decoded_by_hand_as_prost_decodes_it(body in hot_body()) {
        let f = Frame { body: Some(body) };
        prop_assert_eq!(decode::frame(&Bytes::from(f.encode_to_vec())), Some(f));
    }

    #[test]
    fn a_header_is_decoded_by_hand_as_prost_decodes_it(h in header()) {
        let b = Bytes::from(h.encode_to_vec());
        let raw = decode::raw_header(&b).expect("a plain header");
        prop_assert_eq!(view_of(&raw, &b), RoutingHeaderView::decode(b.clone()).unwrap());
        prop_assert_eq!(decode::header(&b), Some(h));
    }

    /// Whatever the bytes, the hand decoder gives prost's frame or leaves
    /// them to prost, and `frame::parse` (hand first, prost otherwise)
    /// accepts and refuses exactly what prost does.
    #[test]
    fn any_frame_body_is_read_as_prost_reads_it(body in frame_body()) {
        let b = Bytes::from(body);
        let prost = Frame::decode(b.clone());
        if let Some(hand) = decode::frame(&b) {
            prop_assert_eq!(Some(&hand), prost.as_ref().ok(), "the hand decoder accepted what prost reads otherwise");
        }
        match (frame::parse(b.clone()), prost) {
            (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
            (Err(_), Err(_)) => {}
            (Err(_), Ok(want)) => prop_assert!(want.body.is_none(), "refused a frame prost reads: {:?}", want),
            (Ok(got), Err(e)) => prop_assert!(false, "read {:?} where prost fails: {}", got, e),
        }
    }

    /// The same for routing headers, in both readings: the relay's (strings
    /// checked) and the router's (strings left as bytes).
    #[test]
    fn any_header_is_read_as_prost_reads_it(bytes in any_header_bytes()) {
        let b = Bytes::from(bytes);
        let prost = RoutingHeader::decode(b.clone());
        if let Some(hand) = decode::header(&b) {
            prop_assert_eq!(Some(&hand), prost.as_ref().ok());
        }
        prop_assert_eq!(frame::decode_header(&b).ok(), prost.ok());
        let view = RoutingHeaderView::decode(b.clone());
        if let Some(raw) = decode::raw_header(&b) {
            prop_assert_eq!(Some(view_of(&raw, &b)), view.ok());
        }
    }
}

// ---- policy decisions against a reference model -------------------------

/// Tokens from a small alphabet so that generated names and patterns meet.
fn token() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("a-b")]
}

fn name() -> impl Strategy<Value = Vec<&'static str>> {
    vec(token(), 1..5)
}

/// A generated pattern: its tokens and its version range, if any.
type Pat = (Vec<&'static str>, Option<(u32, u32)>);

/// A pattern: tokens or `*`, optionally ending in `>`, optionally with a
/// version range.
fn pattern() -> impl Strategy<Value = Pat> {
    (
        vec(prop_oneof![3 => token(), 1 => Just("*")], 1..4),
        any::<bool>(),
        prop::option::of((0u32..4, 0u32..4)),
    )
        .prop_map(|(mut toks, rest, versions)| {
            if rest {
                toks.push(">");
            }
            (toks, versions.map(|(a, b)| (a.min(b), a.max(b))))
        })
}

fn pattern_text((toks, versions): &(Vec<&str>, Option<(u32, u32)>)) -> String {
    let mut s = toks.join(".");
    if let Some((lo, hi)) = versions {
        s.push_str(&format!("@{lo},{hi}"));
    }
    s
}

/// The obvious matcher: recursion over tokens, then the version range.
fn reference_match((toks, versions): &(Vec<&str>, Option<(u32, u32)>), name: &[&str], version: u32) -> bool {
    fn names(p: &[&str], n: &[&str]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) => p.len() == 1,
            (Some(&"*"), Some(_)) => names(&p[1..], &n[1..]),
            (Some(a), Some(b)) => a == b && names(&p[1..], &n[1..]),
            _ => false,
        }
    }
    names(toks, name) && versions.is_none_or(|(lo, hi)| lo <= version && version <= hi)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `web` may send a name iff some send rule matches it and no deny that
    /// applies to `web` matches it (default deny, deny wins, order never
    /// matters).
    #[test]
    fn policy_decisions_agree_with_the_reference_model(
        allows in vec(pattern(), 1..4),
        denies in vec((pattern(), any::<bool>()), 0..3),
        probes in vec((name(), 0u32..5), 1..16),
    ) {
        let quote = |ps: &[&Pat]| {
            ps.iter().map(|p| format!("\"{}\"", pattern_text(p))).collect::<Vec<_>>().join(", ")
        };
        let mut src = String::from("[meta]\ntrust_domain = \"example.org\"\nserial = 1\n\n");
        src.push_str("[services.web]\nid = \"spiffe://example.org/svc/web\"\n");
        src.push_str(&format!("send = [{}]\n\n", quote(&allows.iter().collect::<Vec<_>>())));
        src.push_str("[services.other]\nid = \"spiffe://example.org/svc/other\"\nreceive = [\">\"]\n\n");
        for (p, everyone) in &denies {
            let who = if *everyone { "\"*\"" } else { "\"web\"" };
            src.push_str(&format!("[[deny]]\nservices = [{who}]\nsend = [{}]\n\n", quote(&[p])));
        }
        let policy = match Policy::parse(&src, "prop.toml") {
            Ok(p) => p,
            // A rule a deny makes useless is refused by design; such a
            // policy never loads, so there is nothing to decide.
            Err(e) if e.to_string().contains("no name can match this rule") => return Ok(()),
            Err(e) => panic!("{e}\n{src}"),
        };
        for (name, version) in &probes {
            let text = name.join(".");
            let allowed = allows.iter().any(|p| reference_match(p, name, *version))
                && !denies.iter().any(|(p, _)| reference_match(p, name, *version));
            let decision = policy.check_send("web", &text, *version);
            prop_assert_eq!(decision.allowed, allowed, "{} v{}: {}\n{}", text, version, decision.rule, src);
            // Nobody else has send rules: default deny.
            prop_assert!(!policy.check_send("other", &text, *version).allowed);
        }
    }
}
