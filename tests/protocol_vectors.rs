//! The hex test vectors in docs/PROTOCOL.md are what this build encodes,
//! byte for byte, and decode back to the same frames. A relay in another
//! language can test itself against the same vectors.
//!
//! `EXOCOM_PRINT_VECTORS=1 cargo test --test protocol_vectors -- --nocapture`
//! prints the vectors (to refresh the document after a deliberate change).

use bytes::{Bytes, BytesMut};
use exocom::wire::frame::{self, encode_header, to_bytes};
use exocom::wire::*;

fn id(start: u8) -> Bytes {
    Bytes::from((start..start + 16).collect::<Vec<u8>>())
}

fn header() -> RoutingHeader {
    RoutingHeader {
        name: "todos.list".into(),
        version: 1,
        id: id(1),
        origin_id: id(0x21),
        kind: Kind::Command as i32,
        sender: "spiffe://example.org/svc/web".into(),
        sender_instance: "i-1".into(),
        expects_reply: true,
        ..Default::default()
    }
}

fn vectors() -> Vec<(&'static str, Bytes)> {
    let f = |body| to_bytes(&Frame { body: Some(body) });
    vec![
        (
            "hello",
            f(Body::Hello(Hello {
                protocol: 1,
                instance: "i-1".into(),
                client: "exocom-relay/0.1.0".into(),
            })),
        ),
        ("routing-header", encode_header(&header())),
        (
            "send",
            f(Body::Send(Send {
                corr: 1,
                header: encode_header(&header()),
                payload: Bytes::from_static(b"{}"),
                ..Default::default()
            })),
        ),
        ("accepted", f(Body::Accepted(Accepted { corr: 1, receivers: 1 }))),
        (
            "error-denied",
            f(Body::Error(Error {
                corr: 2,
                code: ErrorCode::Denied as i32,
                message: "web may not send payments.refund".into(),
            })),
        ),
        (
            "deliver",
            f(Body::Deliver(Deliver {
                tag: 7,
                header: encode_header(&header()),
                payload: Bytes::from_static(b"{}"),
                sender: "web".into(),
                sender_id: "spiffe://example.org/svc/web".into(),
                timestamp_ms: 1_795_000_000_000,
                attempt: 1,
                ..Default::default()
            })),
        ),
        ("ack", f(Body::Ack(Ack { tags: vec![7, 8] }))),
    ]
}

/// Reads `<!-- vector: NAME -->` followed by a ```hex block from the doc.
fn documented() -> Vec<(String, Vec<u8>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.trim().strip_prefix("<!-- vector: ") {
            let name = rest.trim_end_matches("-->").trim().to_string();
            assert_eq!(lines.next().map(str::trim), Some("```hex"), "vector {name}: expected a ```hex block");
            let mut hex_text = String::new();
            for l in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                hex_text.push_str(l);
            }
            let clean: String = hex_text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            out.push((name, hex::decode(clean).unwrap()));
        }
    }
    out
}

#[test]
fn documented_vectors_match_this_build() {
    let ours = vectors();
    if std::env::var_os("EXOCOM_PRINT_VECTORS").is_some() {
        for (name, bytes) in &ours {
            let h = hex::encode(bytes);
            let wrapped: Vec<&str> =
                h.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
            println!("<!-- vector: {name} -->\n```hex\n{}\n```\n", wrapped.join("\n"));
        }
    }
    let docs = documented();
    assert_eq!(docs.len(), ours.len(), "docs/PROTOCOL.md should list {} vectors", ours.len());
    for ((name, bytes), (doc_name, doc_bytes)) in ours.iter().zip(&docs) {
        assert_eq!(name, doc_name);
        assert_eq!(hex::encode(bytes), hex::encode(doc_bytes), "vector {name} differs from docs/PROTOCOL.md");
    }
}

#[test]
fn documented_frames_decode_back() {
    for (name, bytes) in vectors() {
        if name == "routing-header" {
            assert_eq!(frame::decode_header(&bytes).unwrap(), header());
            continue;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = frame::decode(&mut buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(to_bytes(&frame), bytes, "{name} re-encodes differently");
        assert!(buf.is_empty());
    }
}
