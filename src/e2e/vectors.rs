//! Test vectors (docs/e2e-vectors.json): fixed keys, certificates, header,
//! plaintext, announcement, grant, sealed message and reply, recomputed
//! here byte for byte and opened with ring (through [`Opener`]) and with the
//! independent `chacha20poly1305` crate, so the format is pinned and a relay
//! in another language can check itself against the file.
//!
//! Regenerate (only when the format changes on purpose):
//! `cargo test --lib e2e::vectors::write_vectors -- --ignored`.

use std::time::Duration;

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value, json};
use time::macros::datetime;

use super::announce::{announce, verify_announcement};
use super::grant::{self, GrantParams, GrantSecrets, OpenLimits};
use super::identity::{SigningIdentity, TrustAnchors};
use super::keys::ReceiveKey;
use super::open::{Opener, OpenerConfig};
use super::reply::{ReplyKey, ReplyOpener, ReplySealer};
use super::seal::{message_keys, nonce};
use super::{crypto, payload};
use crate::wire::{Deliver, Kind, RoutingHeader};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/e2e-vectors.json");
/// 2026-11-22T00:00:00Z.
const NOW_MS: u64 = 1_795_305_600_000;
const WEB: &str = "spiffe://example.org/svc/web";
const TODOS: &str = "spiffe://example.org/svc/todos";

/// PKCS#8 v1 of an Ed25519 seed (RFC 8410).
fn ed25519_pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&seed);
    der
}

fn keypair(seed: u8) -> KeyPair {
    let der = ed25519_pkcs8([seed; 32]);
    KeyPair::try_from(der.as_slice()).unwrap()
}

fn certs() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "exocom vectors CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.serial_number = Some(SerialNumber::from(1u64));
    ca.not_before = datetime!(2026-01-01 0:00 UTC);
    ca.not_after = datetime!(2036-01-01 0:00 UTC);
    let issuer = CertifiedIssuer::self_signed(ca, keypair(1)).unwrap();
    let leaf = |service: &str, seed: u8| {
        let uri = format!("spiffe://example.org/svc/{service}");
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, service);
        p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from(u64::from(seed)));
        p.not_before = datetime!(2026-01-01 0:00 UTC);
        p.not_after = datetime!(2036-01-01 0:00 UTC);
        p.signed_by(&keypair(seed), &issuer).unwrap().der().to_vec()
    };
    (issuer.der().to_vec(), leaf("web", 2), leaf("todos", 3))
}

fn identity(cert: &[u8], seed: u8) -> SigningIdentity {
    SigningIdentity::from_der(vec![CertificateDer::from(cert.to_vec())], &ed25519_pkcs8([seed; 32])).unwrap()
}

fn command_header() -> RoutingHeader {
    RoutingHeader {
        name: "todos.create".into(),
        version: 1,
        id: Bytes::from_static(&[0x10; 16]),
        origin_id: Bytes::from_static(&[0x11; 16]),
        kind: Kind::Command as i32,
        sender: WEB.into(),
        sender_instance: "web-1".into(),
        expects_reply: true,
        expires_at_ms: NOW_MS + 60_000,
        seal: 1,
        epoch: Bytes::from_static(&[0x08; 16]),
        seq: 5,
        policy_serial: 3,
        ..Default::default()
    }
}

/// Every vector value, computed from the fixed inputs.
fn compute() -> Map<String, Value> {
    let h = |b: &[u8]| Value::String(hex::encode(b));
    let mut v = Map::new();
    let (ca, web_cert, todos_cert) = certs();
    let web = identity(&web_cert, 2);
    let todos = identity(&todos_cert, 3);
    let receive_key = ReceiveKey::from_secret([0x04; 32]);
    v.insert("now_ms".into(), json!(NOW_MS));
    v.insert("ca_cert".into(), h(&ca));
    v.insert("web_cert".into(), h(&web_cert));
    v.insert("web_key_ed25519_seed".into(), h(&[2; 32]));
    v.insert("todos_cert".into(), h(&todos_cert));
    v.insert("todos_key_ed25519_seed".into(), h(&[3; 32]));
    v.insert("receive_secret".into(), h(&[4; 32]));
    v.insert("receive_public".into(), h(&receive_key.public()));
    v.insert("receive_key_id".into(), h(&receive_key.key_id()));

    let ann = announce(&todos, &receive_key, "todos-1", NOW_MS, Duration::from_secs(86_400)).unwrap();
    v.insert("announcement".into(), h(&ann));

    let anchors = TrustAnchors::from_der(&[CertificateDer::from(ca.clone())]).unwrap();
    let receiver = verify_announcement(&ann, &anchors, NOW_MS).unwrap();
    let secrets = GrantSecrets { sender_key: [0x06; 32], auth_key: [0x07; 32] };
    let params =
        GrantParams { sender_instance: "web-1", name: "todos.create", epoch: [0x08; 16], created_ms: NOW_MS };
    let g = grant::create_with_ephemeral(&web, &params, &receiver, &secrets, [0x05; 32]).unwrap();
    v.insert("grant_ephemeral_secret".into(), h(&[5; 32]));
    v.insert("sender_key".into(), h(&secrets.sender_key));
    v.insert("auth_key".into(), h(&secrets.auth_key));
    v.insert("epoch".into(), h(&params.epoch));
    v.insert("grant".into(), h(&g));

    let header = command_header();
    let header_bytes = header.encode_to_vec();
    v.insert("header".into(), h(&header_bytes));
    let k_enc: [u8; 32] =
        crypto::hkdf(&params.epoch, &secrets.sender_key, &[b"exocom/v1/enc", b"todos.create"]);
    let (aead, prefix) = message_keys(&secrets.sender_key, &params.epoch, "todos.create").unwrap();
    let n = nonce(&prefix, header.seq);
    v.insert("k_enc".into(), h(&k_enc));
    v.insert("nonce".into(), h(&n));
    let reply_key = ReplyKey::from_bytes([0x09; 32]);
    v.insert("reply_key".into(), h(reply_key.as_bytes()));
    v.insert("plaintext".into(), json!("hello, todos"));
    let mut buf = payload::encode(Some(&reply_key), b"hello, todos");
    v.insert("envelope".into(), h(&buf));
    crypto::seal(&aead, n, &header_bytes, &mut buf).unwrap();
    v.insert("payload".into(), h(&buf));
    let digest = crypto::sha256(&[&header_bytes, &buf]);
    let tag = crypto::auth_tag(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secrets.auth_key), &digest);
    v.insert("auth_tag".into(), h(&tag));

    let mut replier = ReplySealer::with_epoch(&reply_key, &header, TODOS, "todos-1", [0x0a; 16]).unwrap();
    let reply_header = RoutingHeader {
        name: "todos.created".into(),
        version: 1,
        id: Bytes::from_static(&[0x12; 16]),
        ..Default::default()
    };
    let reply = replier.seal(reply_header, b"created #1", true).unwrap();
    v.insert("reply_epoch".into(), h(&[0x0a; 16]));
    v.insert("reply_plaintext".into(), json!("created #1"));
    v.insert("reply_header".into(), h(&reply.header));
    v.insert("reply_payload".into(), h(&reply.payload));
    v
}

fn bytes(v: &Map<String, Value>, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap()).unwrap()
}

#[test]
#[ignore = "writes docs/e2e-vectors.json; run on purpose when the format changes"]
fn write_vectors() {
    let text = serde_json::to_string_pretty(&Value::Object(compute())).unwrap();
    std::fs::write(FILE, text + "\n").unwrap();
}

#[test]
fn vectors_recompute_byte_for_byte() {
    let file: Map<String, Value> = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let computed = compute();
    assert_eq!(file.len(), computed.len());
    for (k, want) in &file {
        assert_eq!(Some(want), computed.get(k), "vector {k} differs");
    }
}

#[test]
fn vectors_open_with_ring_and_the_chacha20poly1305_crate() {
    let v: Map<String, Value> = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let anchors = TrustAnchors::from_der(&[CertificateDer::from(bytes(&v, "ca_cert"))]).unwrap();
    let ann = verify_announcement(&bytes(&v, "announcement"), &anchors, NOW_MS).unwrap();
    assert_eq!(ann.service, "todos");
    assert_eq!(ann.public.to_vec(), bytes(&v, "receive_public"));

    let key = ReceiveKey::from_secret(bytes(&v, "receive_secret").try_into().unwrap());
    let limits = OpenLimits { max_age_ms: 1000, skew_ms: 0 };
    let g = grant::open(&bytes(&v, "grant"), std::slice::from_ref(&key), TODOS, &anchors, NOW_MS, limits)
        .unwrap();
    assert_eq!(g.secrets.sender_key.to_vec(), bytes(&v, "sender_key"));
    assert_eq!(g.secrets.auth_key.to_vec(), bytes(&v, "auth_key"));

    // ring, through the full receiver path.
    let anchors2 = TrustAnchors::from_der(&[CertificateDer::from(bytes(&v, "ca_cert"))]).unwrap();
    let mut opener =
        Opener::new(key, TODOS, anchors2, |s: &str, _: &str| s == "web", OpenerConfig::default());
    let d = Deliver {
        header: bytes(&v, "header").into(),
        payload: bytes(&v, "payload").into(),
        sender: "web".into(),
        sender_id: WEB.into(),
        auth_tag: bytes(&v, "auth_tag").into(),
        grant: bytes(&v, "grant").into(),
        ..Default::default()
    };
    let opened = opener.open(&d, NOW_MS).unwrap();
    assert_eq!(&opened.plaintext[..], v["plaintext"].as_str().unwrap().as_bytes());
    let reply_key = opened.reply_key.unwrap();
    assert_eq!(reply_key.as_bytes().to_vec(), bytes(&v, "reply_key"));

    // The chacha20poly1305 crate, from the recorded key and nonce.
    let k: [u8; 32] = bytes(&v, "k_enc").try_into().unwrap();
    let n: [u8; 12] = bytes(&v, "nonce").try_into().unwrap();
    let cipher = ChaCha20Poly1305::new(&chacha20poly1305::Key::from(k));
    let header = bytes(&v, "header");
    let payload = bytes(&v, "payload");
    let plain =
        cipher.decrypt(&chacha20poly1305::Nonce::from(n), Payload { msg: &payload, aad: &header }).unwrap();
    assert_eq!(plain, bytes(&v, "envelope"));
    let mut other_aad = header.clone();
    other_aad[2] ^= 1;
    assert!(
        cipher
            .decrypt(&chacha20poly1305::Nonce::from(n), Payload { msg: &payload, aad: &other_aad })
            .is_err()
    );

    // The reply, with the requester's opener.
    let mut requester = ReplyOpener::new(reply_key, opened.header.id.clone());
    let r = requester
        .open(
            &Deliver {
                header: bytes(&v, "reply_header").into(),
                payload: bytes(&v, "reply_payload").into(),
                sender: "todos".into(),
                sender_id: TODOS.into(),
                ..Default::default()
            },
            NOW_MS,
        )
        .unwrap();
    assert_eq!(&r.plaintext[..], v["reply_plaintext"].as_str().unwrap().as_bytes());
    requester.finish().unwrap();
}
