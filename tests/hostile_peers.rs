//! Peers that get things wrong: bad certificates, unknown identities, bad
//! frames. Each is refused with a clear error, audited where it reaches the
//! router, and nobody else is affected.

mod common;

use std::time::Duration;

use common::*;
use exocom::certs::{self, LeafSpec};
use exocom::relay::ErrorKind;
use exocom::tls::IdentityDir;
use exocom::wire::*;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A healthy pair keeps working: todo answers web.
async fn healthy_pair(bus: &TestBus) -> (exocom::relay::Relay, exocom::relay::Relay) {
    let todo = bus
        .builder("todo")
        .handle("todos.list", [1], |_m, r| async move { r.reply("todos.listing", &json!([])).await })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    web.request_one("todos.list", &json!({})).await.unwrap();
    (todo, web)
}

async fn still_works(web: &exocom::relay::Relay) {
    let reply = web.request_one("todos.list", &json!({})).await.unwrap();
    assert_eq!(reply.name(), "todos.listing");
}

/// Connects with `identity` and returns what the first read says.
async fn first_read(bus: &TestBus, identity: &IdentityDir) -> std::io::Result<usize> {
    let mut stream = raw_tls(bus.addr, identity).await?;
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "x".into(), client: "test".into() };
    stream.write_all(&frame::to_bytes(&Frame { body: Some(Body::Hello(hello)) })).await?;
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("router did not answer")
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_audited() {
    let bus = TestBus::start().await;
    let (_todo, web) = healthy_pair(&bus).await;
    // A client that trusts the router but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(bus.certs().join("ca.pem")).unwrap();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(bus.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let result = async {
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(b"\0\0\0\0").await?;
        let mut buf = [0u8; 16];
        s.read(&mut buf).await
    }
    .await;
    assert!(!matches!(result, Ok(n) if n > 0), "a client without a certificate got data: {result:?}");
    let line = bus.wait_audit(|v| v["event"] == "handshake_failed").await;
    assert_eq!(line["reason"], "no_certificate");
    still_works(&web).await;
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_are_refused() {
    let bus = TestBus::start().await;
    let (_todo, web) = healthy_pair(&bus).await;

    // Another CA, same trust domain and service name.
    let other = tempfile::tempdir().unwrap();
    certs::init(other.path(), "example.org", &["web".to_string()], 30).unwrap();
    let mut foreign = IdentityDir::new(other.path().join("web"));
    // Trust the real router, present the foreign certificate.
    std::fs::copy(bus.certs().join("ca.pem"), foreign.dir.join("ca.pem")).unwrap();
    let r = first_read(&bus, &foreign).await;
    assert!(!matches!(r, Ok(n) if n > 0), "foreign certificate got data: {r:?}");
    bus.wait_audit(|v| v["event"] == "handshake_failed" && v["reason"] == "unknown_issuer").await;

    // Expired, from the right CA.
    let mut spec = LeafSpec::service("example.org", "web", 1).unwrap();
    spec.not_before = OffsetDateTime::now_utc() - time::Duration::days(10);
    spec.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired_dir = bus.dir.path().join("expired-web");
    certs::issue_leaf(&bus.certs(), &spec, &expired_dir).unwrap();
    foreign = IdentityDir::new(expired_dir);
    let r = first_read(&bus, &foreign).await;
    assert!(!matches!(r, Ok(n) if n > 0), "expired certificate got data: {r:?}");
    bus.wait_audit(|v| v["event"] == "handshake_failed" && v["reason"] == "expired").await;

    // The relay reports a certificate problem as such.
    let Err(err) = exocom::relay::Relay::builder(bus.addr.to_string(), foreign)
        .retry_initial_connect(false)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        panic!("expired certificate connected")
    };
    assert_eq!(err.kind(), ErrorKind::Certificate, "{err}");
    still_works(&web).await;
}

#[tokio::test]
async fn a_valid_certificate_not_in_the_policy_is_refused_clearly() {
    let bus = TestBus::start().await;
    let (_todo, web) = healthy_pair(&bus).await;
    let Err(err) = exocom::relay::Relay::builder(bus.addr.to_string(), bus.identity("stranger"))
        .retry_initial_connect(false)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
    else {
        panic!("an identity outside the policy connected")
    };
    assert_eq!(err.kind(), ErrorKind::UnknownIdentity, "{err}");
    assert!(err.to_string().contains("spiffe://example.org/svc/stranger"), "{err}");
    let line = bus.wait_audit(|v| v["event"] == "deny" && v["reason"] == "unknown_identity").await;
    assert_eq!(line["decision"], "deny");
    still_works(&web).await;
}

async fn expect_error_then_close(reader: &mut RawReader, code: ErrorCode) {
    match read_until(reader, |b| matches!(b, Body::Error(_))).await {
        Body::Error(e) => assert_eq!(e.code, code as i32, "{}", e.message),
        _ => unreachable!(),
    }
    let end = tokio::time::timeout(Duration::from_secs(5), reader.read_frame()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "connection stayed open: {end:?}");
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_connection() {
    let bus = TestBus::start().await;
    let (_todo, web) = healthy_pair(&bus).await;
    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd, 1 << 20);
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "bad".into(), client: "test".into() };
    wr.write_all(&frame::to_bytes(&Frame { body: Some(Body::Hello(hello)) })).await.unwrap();
    read_until(&mut reader, |b| matches!(b, Body::Welcome(_))).await;
    wr.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    expect_error_then_close(&mut reader, ErrorCode::MalformedFrame).await;
    still_works(&web).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_it_is_read() {
    let bus = TestBus::start_with(BusOptions { max_frame: Some(64 * 1024), ..Default::default() }).await;
    let (_todo, web) = healthy_pair(&bus).await;
    let (mut reader, mut writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    let header = RoutingHeader {
        name: "todos.create".into(),
        id: bytes::Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
        ..Default::default()
    };
    let send = Send {
        corr: 1,
        header: frame::encode_header(&header),
        payload: vec![b'x'; 100_000].into(),
        ..Default::default()
    };
    writer.write_frame(&Frame { body: Some(Body::Send(send)) }).await.unwrap();
    expect_error_then_close(&mut reader, ErrorCode::FrameTooLarge).await;
    still_works(&web).await;
    // The relay refuses to send what the router would refuse.
    let err = web.send("todos.create", &"y".repeat(100_000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
}

#[tokio::test]
async fn an_unknown_protocol_version_or_a_frame_before_hello_is_refused() {
    let bus = TestBus::start().await;
    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let (rd, wr) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
    let hello = Hello { protocol: 99, instance: "v99".into(), client: "future".into() };
    writer.write_frame(&Frame { body: Some(Body::Hello(hello)) }).await.unwrap();
    expect_error_then_close(&mut reader, ErrorCode::UnsupportedProtocol).await;

    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let (rd, wr) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
    writer.write_frame(&Frame { body: Some(Body::Ack(Ack { tags: vec![1] })) }).await.unwrap();
    expect_error_then_close(&mut reader, ErrorCode::ProtocolViolation).await;
}

#[tokio::test]
async fn a_bad_header_is_refused_and_the_connection_goes_on() {
    let bus = TestBus::start().await;
    let (mut reader, mut writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    let send = Send { corr: 5, header: bytes::Bytes::from_static(&[0xff, 0x01]), ..Default::default() };
    writer.write_frame(&Frame { body: Some(Body::Send(send)) }).await.unwrap();
    match read_until(&mut reader, |b| matches!(b, Body::Error(_))).await {
        Body::Error(e) => {
            assert_eq!(e.corr, 5);
            assert_eq!(e.code, ErrorCode::InvalidHeader as i32);
        }
        _ => unreachable!(),
    }
    writer.write_frame(&Frame { body: Some(Body::Ping(Ping { nonce: 42 })) }).await.unwrap();
    match read_until(&mut reader, |b| matches!(b, Body::Pong(_))).await {
        Body::Pong(p) => assert_eq!(p.nonce, 42),
        _ => unreachable!(),
    }
}
