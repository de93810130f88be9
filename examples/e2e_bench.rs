//! End-to-end sealing cost per message, and grant cost.
//!
//! `cargo run --release --example e2e_bench`
//!
//! Prints, for 256 B and 64 KiB payloads: the raw ChaCha20-Poly1305 seal and
//! open with ring and with the `chacha20poly1305` crate side by side, and the
//! full exocom path (`Sealer::seal`: header encode + AEAD + SHA-256 + one
//! HMAC tag; `Opener::open`: header decode + tag + AEAD). Then the cost of a
//! new epoch's grant (X25519 + HKDF + wrap + ECDSA P-256 signature) and of
//! verifying and unwrapping one (chain check + signature + X25519).
//! Each line is a timed loop of about 0.5 s; the figures are per operation.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use exocom::e2e::{
    EpochConfig, Opener, OpenerConfig, ReceiveKey, Sealer, SigningIdentity, TrustAnchors, announce,
    verify_announcement,
};
use exocom::wire::{Deliver, Kind, RoutingHeader};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls_pki_types::CertificateDer;

const RUN: Duration = Duration::from_millis(500);

fn time(label: &str, bytes: usize, mut op: impl FnMut()) {
    for _ in 0..10 {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    let rate = if bytes > 0 { format!("{:>9.0} MB/s", bytes as f64 / per / 1e6) } else { String::new() };
    println!("{label:<44} {:>12.2} µs {rate}", per * 1e6);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Pki {
    anchors_der: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        Self { anchors_der: issuer.der().clone(), issuer }
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_der(std::slice::from_ref(&self.anchors_der)).unwrap()
    }

    fn identity(&self, service: &str) -> SigningIdentity {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let uri = format!("spiffe://example.org/svc/{service}");
        p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        SigningIdentity::from_der(vec![cert.der().clone()], &key.serialize_der()).unwrap()
    }
}

fn header() -> RoutingHeader {
    RoutingHeader {
        name: "todos.create".into(),
        version: 1,
        id: Bytes::from_static(&[7; 16]),
        kind: Kind::Command as i32,
        expires_at_ms: now_ms() + 3_600_000,
        ..Default::default()
    }
}

fn main() {
    println!(
        "exocom e2e benchmark: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        if cfg!(debug_assertions) { "DEBUG build (use --release)" } else { "release build" }
    );
    let aad = [0x42u8; 80];
    let key = [9u8; 32];
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let rc = ChaCha20Poly1305::new(&chacha20poly1305::Key::from(key));

    for size in [256usize, 64 * 1024] {
        println!("\n-- payload {size} B --");
        let mut buf = vec![0u8; size];
        time("ring ChaCha20-Poly1305 seal", size, || {
            let tag = ring_key
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key([1; 12]), Aad::from(&aad), &mut buf)
                .unwrap();
            let _ = black_box(tag);
        });
        let mut sealed = vec![0u8; size];
        let tag = ring_key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key([1; 12]), Aad::from(&aad), &mut sealed)
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        time("ring ChaCha20-Poly1305 open", size, || {
            let mut b = sealed.clone();
            black_box(
                ring_key
                    .open_in_place(Nonce::assume_unique_for_key([1; 12]), Aad::from(&aad), &mut b)
                    .unwrap(),
            );
        });
        time("chacha20poly1305 crate seal", size, || {
            let tag = rc
                .encrypt_inout_detached(&chacha20poly1305::Nonce::from([1; 12]), &aad, (&mut buf[..]).into())
                .unwrap();
            black_box(tag);
        });
        let n = chacha20poly1305::Nonce::from([1; 12]);
        let mut ct = vec![0u8; size];
        let rtag = rc.encrypt_inout_detached(&n, &aad, (&mut ct[..]).into()).unwrap();
        time("chacha20poly1305 crate open", size, || {
            let mut b = ct.clone();
            rc.decrypt_inout_detached(&n, &aad, (&mut b[..]).into(), &rtag).unwrap();
            black_box(b);
        });

        let pki = Pki::new();
        let recv_identity = pki.identity("todos");
        let recv_key = ReceiveKey::generate().unwrap();
        let ann = announce(&recv_identity, &recv_key, "r-1", now_ms(), Duration::from_secs(3600)).unwrap();
        let receivers = vec![verify_announcement(&ann, &pki.anchors(), now_ms()).unwrap()];
        let mut sealer = Sealer::new(pki.identity("web"), "s-1", EpochConfig::default());
        let plaintext = vec![0x61u8; size];
        let first = sealer.seal(header(), &receivers, 1, &plaintext, now_ms()).unwrap();
        time("exocom Sealer::seal (1 receiving service)", size, || {
            black_box(sealer.seal(header(), &receivers, 1, &plaintext, now_ms()).unwrap());
        });
        let mut opener = Opener::new(
            recv_key.clone(),
            "spiffe://example.org/svc/todos",
            pki.anchors(),
            |_: &str, _: &str| true,
            OpenerConfig::default(),
        );
        let deliver = |s: &exocom::e2e::Sealed, with_grant: bool| Deliver {
            header: s.header.clone(),
            payload: s.payload.clone(),
            sender: "web".into(),
            sender_id: "spiffe://example.org/svc/web".into(),
            auth_tag: s.tags[0].data.clone(),
            grant: if with_grant { s.grants[0].data.clone() } else { Bytes::new() },
            ..Default::default()
        };
        opener.open(&deliver(&first, true), now_ms()).unwrap();
        let msg = sealer.seal(header(), &receivers, 1, &plaintext, now_ms()).unwrap();
        let d = deliver(&msg, false);
        time("exocom Opener::open (grant cached)", size, || {
            black_box(opener.open(&d, now_ms()).unwrap());
        });

        if size == 256 {
            println!("\n-- grants (1 receiving service) --");
            time("new epoch: grant create + seal", 0, || {
                sealer.rotate_all();
                black_box(sealer.seal(header(), &receivers, 1, &plaintext, now_ms()).unwrap());
            });
            let fresh = sealer.seal(header(), &receivers, 1, &plaintext, now_ms()).unwrap();
            let fd = deliver(&fresh, true);
            time("grant verify + unwrap + open", 0, || {
                let mut o = Opener::new(
                    recv_key.clone(),
                    "spiffe://example.org/svc/todos",
                    pki.anchors(),
                    |_: &str, _: &str| true,
                    OpenerConfig::default(),
                );
                black_box(o.open(&fd, now_ms()).unwrap());
            });
            time("announcement verify", 0, || {
                black_box(verify_announcement(&ann, &pki.anchors(), now_ms()).unwrap());
            });
        }
    }
}
