//! Property tests across public APIs: frames and routing headers survive
//! encode/decode for arbitrary values and for arbitrary splits of the byte
//! stream, the hand-written encoders of `wire::encode` write exactly
//! prost's bytes, and a whole policy decides as the obvious reference model
//! says.
//!
//! (Pattern matching against a reference matcher lives with the matcher in
//! src/policy/pattern.rs; seal/open properties in src/e2e/tests.rs, where the
//! test PKI is.)

use bytes::{Bytes, BytesMut};
use exocom::policy::Policy;
use exocom::wire::connection::FrameReader;
use exocom::wire::encode::{self, DeliverRef};
use exocom::wire::frame::{self, DEFAULT_MAX_FRAME, LENGTH_PREFIX, SPLIT_PAYLOAD};
use exocom::wire::messages::{
    Accepted, Ack, Announce, Body, Deliver, Error, Frame, Hello, KeyDirectory, KeyQuery, Nack, Ping, Pong,
    RoutingHeader, Send, ServiceBlob, Subscribe, Subscription, Welcome,
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
