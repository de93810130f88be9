//! A hostile router: a proxy with full access to every frame (see
//! `common::proxy`) between the real router and a sealing relay. Each case
//! tampers with one thing; the receiving or requesting relay must detect it
//! with a clear error, count it, and hand nothing to a handler.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::TestBus;
use common::proxy::{Dir, Proxy, Tamper, pass};
use exocom::relay::{ErrorKind, Incoming, MessageOptions, Relay, Responder};
use exocom::wire::frame::{decode_header, encode_header};
use exocom::wire::{Body, Deliver, Frame, Kind, RoutingHeader};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A todo relay behind a proxy running `tamper`, counting handler calls.
async fn todo_behind(bus: &TestBus, tamper: Tamper) -> (Relay, Proxy, Arc<AtomicUsize>) {
    let proxy = Proxy::start(bus, "todo", tamper).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let relay = bus
        .sealed_at("todo", proxy.addr)
        .handle("todos.create", [], move |_m: Incoming, _r: Responder| {
            h.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<(), exocom::relay::Error>(()))
        })
        .handle("todos.export", [], |_m: Incoming, mut r: Responder| async move {
            for i in 0..3 {
                r.stream("todos.chunk", &i).await?;
            }
            r.end("todos.exported", &"done").await
        })
        .handle("todos.list", [], |_m: Incoming, r: Responder| async move {
            r.reply("todos.listing", &["a"]).await
        })
        .connect()
        .await
        .unwrap();
    (relay, proxy, handled)
}

/// Tampers with the first command delivered to the relay, once.
fn first_command(f: impl Fn(&mut Deliver) + Send + 'static) -> Tamper {
    let mut done = false;
    Box::new(move |dir, mut frame| {
        if let (false, Dir::ToRelay, Some(Body::Deliver(d))) = (done, dir, frame.body.as_mut())
            && decode_header(&d.header).unwrap().kind == Kind::Command as i32
        {
            done = true;
            f(d);
        }
        vec![(dir, frame)]
    })
}

fn rewrite_header(d: &mut Deliver, f: impl Fn(&mut RoutingHeader)) {
    let mut h = decode_header(&d.header).unwrap();
    let before = h.clone();
    f(&mut h);
    assert_ne!(h, before, "the rewrite must change the field");
    d.header = encode_header(&h);
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A payload past the size a relay opens off its connection task
/// (16 KiB): the tampering cases run with it too.
fn large() -> String {
    "x".repeat(40_000)
}

#[tokio::test]
async fn a_flipped_payload_bit_is_rejected() {
    flipped_payload_bit(String::from("x")).await;
}

#[tokio::test]
async fn a_flipped_payload_bit_in_a_large_payload_is_rejected() {
    flipped_payload_bit(large()).await;
}

async fn flipped_payload_bit(body: String) {
    let bus = TestBus::start().await;
    let tamper = first_command(|d| {
        let mut p = d.payload.to_vec();
        p[0] ^= 1;
        d.payload = Bytes::from(p);
    });
    let (todo, _proxy, handled) = todo_behind(&bus, tamper).await;
    let web = bus.sealed("web").connect().await.unwrap();
    web.send("todos.create", &body).await.unwrap();
    wait_for("bad_tag", || todo.rejections().get("bad_tag") == 1).await;
    // The next, untouched message passes: the channel itself works.
    web.send("todos.create", &body).await.unwrap();
    wait_for("handled", || handled.load(Ordering::SeqCst) == 1).await;
    assert_eq!(todo.rejections().total(), 1);
}

#[tokio::test]
async fn every_rewritten_header_field_is_rejected() {
    rewritten_header_fields(String::from("x")).await;
}

#[tokio::test]
async fn every_rewritten_header_field_of_a_large_message_is_rejected() {
    rewritten_header_fields(large()).await;
}

async fn rewritten_header_fields(body: String) {
    let bus = TestBus::start().await;
    type Rewrite = fn(&mut RoutingHeader);
    let cases: Vec<(&str, Rewrite, &str)> = vec![
        ("name", |h| h.name = "todos.list".into(), "grant_mismatch"),
        ("version", |h| h.version += 1, "bad_tag"),
        ("id", |h| h.id = Bytes::from(uuid::Uuid::new_v4().as_bytes().to_vec()), "bad_tag"),
        ("origin_id", |h| h.origin_id = Bytes::from(uuid::Uuid::new_v4().as_bytes().to_vec()), "bad_tag"),
        ("response_to", |h| h.response_to = Bytes::from(vec![7u8; 16]), "bad_tag"),
        ("sender", |h| h.sender = "spiffe://example.org/svc/mailer".into(), "sender_mismatch"),
        ("expires_at", |h| h.expires_at_ms = 4_000_000_000_000, "bad_tag"),
        ("seq", |h| h.seq += 1, "bad_tag"),
        ("epoch", |h| h.epoch = Bytes::from(vec![9u8; 16]), "grant_mismatch"),
        ("policy_serial", |h| h.policy_serial += 1, "bad_tag"),
    ];
    let mut web: Option<Relay> = None;
    for (field, rewrite, label) in cases {
        let (todo, _proxy, handled) =
            todo_behind(&bus, first_command(move |d| rewrite_header(d, rewrite))).await;
        if web.is_none() {
            // After todo announced its key (senders seal to verified keys only).
            web = Some(bus.sealed("web").connect().await.unwrap());
        }
        let web = web.as_ref().unwrap();
        web.send("todos.create", &format!("{field}{body}")).await.unwrap();
        wait_for(field, || todo.rejections().total() == 1).await;
        assert_eq!(todo.rejections().get(label), 1, "{field}: {:?}", todo.rejections().snapshot());
        assert_eq!(handled.load(Ordering::SeqCst), 0, "{field} reached the handler");
        todo.close().await;
    }
}

#[tokio::test]
async fn a_replayed_delivery_is_rejected() {
    replayed_delivery(String::from("once")).await;
}

#[tokio::test]
async fn a_replayed_large_delivery_is_rejected() {
    replayed_delivery(large()).await;
}

async fn replayed_delivery(body: String) {
    let bus = TestBus::start().await;
    let recorded: Arc<Mutex<Option<Frame>>> = Arc::default();
    let r = Arc::clone(&recorded);
    let mut replayed = false;
    let tamper: Tamper = Box::new(move |dir, frame| {
        let mut out = vec![(dir, frame.clone())];
        match (&frame.body, dir) {
            (Some(Body::Deliver(_)), Dir::ToRelay) if r.lock().unwrap().is_none() => {
                *r.lock().unwrap() = Some(frame);
            }
            (Some(Body::Ack(a)), Dir::ToRouter) if !replayed => {
                let copy = r.lock().unwrap().clone();
                let tag = match &copy {
                    Some(Frame { body: Some(Body::Deliver(d)) }) => Some(d.tag),
                    _ => None,
                };
                if let (Some(copy), Some(tag)) = (copy, tag)
                    && a.tags.contains(&tag)
                {
                    // After the relay acked it: deliver the same frame again.
                    replayed = true;
                    out.push((Dir::ToRelay, copy));
                }
            }
            _ => {}
        }
        out
    });
    let (todo, _proxy, handled) = todo_behind(&bus, tamper).await;
    let web = bus.sealed("web").connect().await.unwrap();
    web.send("todos.create", &body).await.unwrap();
    wait_for("replay", || todo.rejections().get("replay") == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "handled exactly once");
}

/// An announcement of `public` for todo's SPIFFE id, signed with the
/// router's certificate and key (docs/E2E.md §2 byte layout).
fn router_signed_announcement(bus: &TestBus, public: [u8; 32]) -> Bytes {
    let router = bus.certs().join("router");
    let cert = CertificateDer::from_pem_file(router.join("cert.pem")).unwrap();
    let PrivateKeyDer::Pkcs8(key) = PrivateKeyDer::from_pem_file(router.join("key.pem")).unwrap() else {
        panic!("router key is not PKCS#8")
    };
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_pkcs8_der(),
        &rng,
    )
    .unwrap();
    let var = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    };
    let now = exocom_now_ms();
    let mut a = vec![1u8, 1u8];
    var(&mut a, b"spiffe://example.org/svc/todo");
    var(&mut a, b"router-instance");
    a.extend_from_slice(&public);
    a.extend_from_slice(&ring::digest::digest(&ring::digest::SHA256, &public).as_ref()[..8]);
    a.extend_from_slice(&now.to_be_bytes());
    a.extend_from_slice(&(now + 3_600_000).to_be_bytes());
    a.push(1);
    var(&mut a, cert.as_ref());
    let signed = [b"exocom/v1/announce\0".as_slice(), &a].concat();
    let sig = signer.sign(&rng, &signed).unwrap();
    var(&mut a, sig.as_ref());
    Bytes::from(a)
}

fn exocom_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn swapped_key_announcements_are_refused() {
    let bus = TestBus::start().await;
    let (_todo, _p, _h) = todo_behind(&bus, pass()).await;
    let router_key = exocom::e2e::ReceiveKey::generate().unwrap();
    let forged = router_signed_announcement(&bus, router_key.public());
    let tamper: Tamper = Box::new(move |dir, mut frame| {
        if let Some(Body::KeyDirectory(d)) = frame.body.as_mut() {
            // Every real announcement with its key swapped for the router's
            // (so the signature no longer holds), plus one the router signed.
            for a in d.announcements.iter_mut() {
                let mut bytes = a.to_vec();
                let at = 2 + 2 + u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
                let at = at + 2 + u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
                bytes[at..at + 32].copy_from_slice(&router_key.public());
                *a = Bytes::from(bytes);
            }
            d.announcements.push(forged.clone());
        }
        vec![(dir, frame)]
    });
    let proxy = Proxy::start(&bus, "web", tamper).await;
    let web = bus.sealed_at("web", proxy.addr).connect().await.unwrap();
    let err = web.send("todos.create", &"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoReceivers, "{err}");
    assert!(web.rejections().get("bad_announcement") >= 3, "{:?}", web.rejections().snapshot());
    assert!(
        proxy.sent(Dir::ToRouter).iter().all(|f| !matches!(f.body, Some(Body::Send(_)))),
        "nothing was sealed to a key the router chose"
    );
}

#[tokio::test]
async fn a_valid_announcement_of_an_unauthorized_service_is_ignored() {
    let bus = TestBus::start().await;
    let (_todo, _p, handled) = todo_behind(&bus, pass()).await;
    // mailer is real and announces a valid key, but may not receive todos.create.
    let _mailer = bus.sealed("mailer").connect().await.unwrap();
    let injected: Arc<Mutex<usize>> = Arc::default();
    let seen = Arc::clone(&injected);
    let tamper: Tamper = Box::new(move |dir, frame| {
        if let Some(Body::KeyDirectory(d)) = &frame.body {
            *seen.lock().unwrap() = d.announcements.len();
        }
        vec![(dir, frame)]
    });
    let proxy = Proxy::start(&bus, "web", tamper).await;
    let web = bus.sealed_at("web", proxy.addr).connect().await.unwrap();
    let sent = web.send("todos.create", &"x").await.unwrap();
    assert_eq!(sent.receivers, 1);
    wait_for("handled", || handled.load(Ordering::SeqCst) == 1).await;
    assert!(*injected.lock().unwrap() >= 3, "the directory offered mailer's (and web's) key too");
    let sends: Vec<_> = proxy
        .sent(Dir::ToRouter)
        .into_iter()
        .filter_map(|f| match f.body {
            Some(Body::Send(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1);
    let services =
        |blobs: &[exocom::wire::ServiceBlob]| blobs.iter().map(|b| b.service.clone()).collect::<Vec<_>>();
    assert_eq!(services(&sends[0].grants), ["todo"]);
    assert_eq!(services(&sends[0].tags), ["todo"]);
}

/// Tampers with replies on their way to the requester.
fn replies(f: impl Fn(&mut Deliver) -> bool + Send + 'static) -> Tamper {
    Box::new(move |dir, mut frame| {
        if let (Dir::ToRelay, Some(Body::Deliver(d))) = (dir, frame.body.as_mut())
            && decode_header(&d.header).unwrap().kind == Kind::Reply as i32
            && !f(d)
        {
            return Vec::new();
        }
        vec![(dir, frame)]
    })
}

#[tokio::test]
async fn a_forged_reply_is_rejected() {
    let bus = TestBus::start().await;
    let (_todo, _p, _h) = todo_behind(&bus, pass()).await;
    let proxy = Proxy::start(
        &bus,
        "web",
        replies(|d| {
            // The router writes a reply of its own choosing under the real header.
            d.payload = Bytes::from(vec![0u8; d.payload.len()]);
            true
        }),
    )
    .await;
    let web = bus.sealed_at("web", proxy.addr).connect().await.unwrap();
    let err = web.request_one("todos.list", &()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tampered, "{err}");
    assert_eq!(web.rejections().get("bad_aead"), 1, "{:?}", web.rejections().snapshot());
}

#[tokio::test]
async fn a_dropped_final_reply_is_reported_as_truncation() {
    let bus = TestBus::start().await;
    let (_todo, _p, _h) = todo_behind(&bus, pass()).await;
    let proxy = Proxy::start(&bus, "web", replies(|d| !decode_header(&d.header).unwrap().stream_final)).await;
    let web = bus.sealed_at("web", proxy.addr).connect().await.unwrap();
    let opts = MessageOptions::new().timeout(Duration::from_millis(800));
    let mut stream = web.request_with("todos.export", &(), &opts).await.unwrap();
    let mut got = Vec::new();
    let err = loop {
        match stream.next().await {
            Some(Ok(r)) => got.push(r.stream_seq()),
            Some(Err(e)) => break e,
            None => panic!("the stream ended as if complete"),
        }
    };
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(err.kind(), ErrorKind::Truncated, "{err}");
    assert_eq!(web.rejections().get("truncated"), 1);
}

/// The router routes a command at once and confirms it (`Accepted`) once
/// its audit line is written, so a reply can overtake the confirmation.
/// `request_one` returns such a reply at once: here the confirmation never
/// comes at all (the proxy drops it), and the reply still arrives, while a
/// plain `send` still waits for its confirmation and times out.
#[tokio::test]
async fn request_one_returns_a_reply_that_overtakes_the_acceptance() {
    let bus = TestBus::start().await;
    let (_todo, _p, _h) = todo_behind(&bus, pass()).await;
    let no_accepts: Tamper = Box::new(|dir, frame| match (dir, &frame.body) {
        (Dir::ToRelay, Some(Body::Accepted(_))) => Vec::new(),
        _ => vec![(dir, frame)],
    });
    let proxy = Proxy::start(&bus, "web", no_accepts).await;
    let web =
        bus.sealed_at("web", proxy.addr).request_timeout(Duration::from_secs(1)).connect().await.unwrap();
    for _ in 0..3 {
        let reply = web.request_one("todos.list", &()).await.unwrap();
        assert_eq!(reply.name(), "todos.listing");
        assert_eq!(reply.json::<Vec<String>>().unwrap(), ["a"]);
    }
    let err = web.send("todos.create", &"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

/// A router that goes silent without closing the connection (a hung
/// process, a network that drops packets): the relay pings after its
/// keepalive and, with no answer, takes the connection for dead and
/// reconnects instead of waiting forever.
#[tokio::test]
async fn a_relay_notices_a_router_that_went_silent() {
    let bus = TestBus::start().await;
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Arc::clone(&silent);
    let pings = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&pings);
    let tamper: Tamper = Box::new(move |dir, frame| {
        if dir == Dir::ToRouter && matches!(frame.body, Some(Body::Ping(_))) {
            p.fetch_add(1, Ordering::SeqCst);
        }
        if dir == Dir::ToRelay && s.load(Ordering::SeqCst) {
            return Vec::new();
        }
        vec![(dir, frame)]
    });
    let proxy = Proxy::start(&bus, "web", tamper).await;
    let web = bus.sealed_at("web", proxy.addr).keepalive(Duration::from_millis(200)).connect().await.unwrap();
    // While the router answers, pings keep the idle connection up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(web.is_connected());
    assert!(pings.load(Ordering::SeqCst) >= 1, "an idle relay sends pings");

    silent.store(true, Ordering::SeqCst);
    let mut lost = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !web.is_connected() {
            lost = true;
            break;
        }
    }
    assert!(lost, "the relay still thinks a silent router is there");
}
