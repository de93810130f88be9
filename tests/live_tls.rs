//! TLS facts that change while connections are open: a client certificate
//! that expires, a CRL that revokes a connected service, a router
//! certificate rotated without a restart, and limits on connections.

mod common;

use std::time::Duration;

use common::*;
use exocom::certs::{self, LeafSpec};
use exocom::tls::{self, IdentityDir, ServerFiles};
use exocom::wire::*;
use time::OffsetDateTime;

/// Waits until the raw connection is closed by the router (or 10 s pass).
async fn closed_within(reader: &mut RawReader, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match reader.read_frame().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_connection_is_closed_when_its_certificate_expires() {
    let bus = TestBus::start().await;
    let mut spec = LeafSpec::service("example.org", "web", 1).unwrap();
    spec.not_after = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let dir = bus.dir.path().join("short-web");
    certs::issue_leaf(&bus.certs(), &spec, &dir).unwrap();
    let (mut reader, _writer) = raw_hello(bus.addr, &IdentityDir::new(&dir)).await;
    assert!(closed_within(&mut reader, 10).await, "the connection outlived its certificate");
    let line = bus.wait_audit(|v| v["event"] == "disconnect" && v["reason"] == "certificate expired").await;
    assert_eq!(line["sender"], "web");
}

#[tokio::test]
async fn a_crl_that_revokes_a_connected_service_closes_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    let services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    certs::init(&certs_dir, "example.org", &services, 30).unwrap();
    let crl = dir.path().join("crl.pem");
    certs::revoke(&certs_dir, &[], &crl, 30).unwrap();
    let opts = BusOptions { crls: vec![crl.clone()], ..Default::default() };
    let bus = TestBus::start_in(dir, opts, None).await;
    let (mut web, _w) = raw_hello(bus.addr, &bus.identity("web")).await;
    let (mut todo, _t) = raw_hello(bus.addr, &bus.identity("todo")).await;

    // Revoke web, then hand the router the new CRL.
    certs::revoke(&bus.certs(), &[bus.certs().join("web/cert.pem")], &crl, 30).unwrap();
    let mut files = ServerFiles::from_certs_dir(bus.certs());
    files.crls = vec![crl.clone()];
    let revoked = tls::revoked_serials(&files.crls).unwrap();
    bus.tls_handle().update(tls::server_config(&files).unwrap(), revoked);

    assert!(closed_within(&mut web, 5).await, "the revoked service stayed connected");
    bus.wait_audit(|v| v["event"] == "disconnect" && v["reason"] == "certificate revoked").await;
    // Others are unaffected, and the revoked certificate cannot come back.
    assert!(!closed_within(&mut todo, 1).await, "an unrevoked service was disconnected");
    let again = raw_tls(bus.addr, &bus.identity("web")).await;
    if let Ok(mut stream) = again {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream.write_all(&[0, 0, 0, 0]).await;
        let mut buf = [0u8; 8];
        let r = stream.read(&mut buf).await;
        assert!(!matches!(r, Ok(n) if n > 0), "a revoked certificate connected again");
    }
    bus.wait_audit(|v| v["event"] == "handshake_failed" && v["reason"] == "revoked").await;
}

#[tokio::test]
async fn the_router_certificate_rotates_without_a_restart() {
    let bus = TestBus::start().await;
    let (mut before, _w) = raw_hello(bus.addr, &bus.identity("web")).await;
    // A new router certificate from the same CA.
    let new_dir = bus.dir.path().join("router2");
    let spec = LeafSpec::router("example.org", 30).unwrap();
    let issued = certs::issue_leaf(&bus.certs(), &spec, &new_dir).unwrap();
    let mut files = ServerFiles::from_certs_dir(bus.certs());
    files.cert = new_dir.join("cert.pem");
    files.key = new_dir.join("key.pem");
    bus.tls_handle().update(tls::server_config(&files).unwrap(), Default::default());

    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&served).unwrap();
    assert_eq!(hex::encode(cert.raw_serial()).trim_start_matches('0'), issued.serial.trim_start_matches('0'));
    // The connection made before the rotation is still served.
    assert!(!closed_within(&mut before, 1).await);
}

#[tokio::test]
async fn connections_per_identity_are_limited() {
    let bus = TestBus::start_with(BusOptions {
        configure: Some(Box::new(|cfg| cfg.limits.max_connections_per_identity = 2)),
        ..Default::default()
    })
    .await;
    let _a = raw_hello(bus.addr, &bus.identity("web")).await;
    let _b = raw_hello(bus.addr, &bus.identity("web")).await;
    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let (rd, wr) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "third".into(), client: "test".into() };
    let _ = writer.write_frame(&Frame { body: Some(Body::Hello(hello)) }).await;
    match read_until(&mut reader, |b| matches!(b, Body::Error(_))).await {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::LimitExceeded as i32, "{}", e.message),
        _ => unreachable!(),
    }
    // Another identity is not affected.
    let _todo = raw_hello(bus.addr, &bus.identity("todo")).await;
}

#[tokio::test]
async fn an_idle_connection_is_pinged_then_closed() {
    let bus = TestBus::start_with(BusOptions {
        configure: Some(Box::new(|cfg| cfg.limits.idle_timeout = Duration::from_millis(400))),
        ..Default::default()
    })
    .await;
    let (mut reader, _writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    // It gets a Ping, does not answer, and is closed.
    read_until(&mut reader, |b| matches!(b, Body::Ping(_))).await;
    assert!(closed_within(&mut reader, 5).await, "a silent connection stayed open");
    // A relay answers pings and stays connected.
    let web = bus.relay("web").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(web.is_connected());
}

#[tokio::test]
async fn the_serve_command_reloads_a_crl_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, "example.org", &["web".into(), "todo".into()], 30).unwrap();
    let crl = dir.path().join("crl.pem");
    certs::revoke(&certs_dir, &[], &crl, 30).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let router = ServeProcess::start(&certs_dir, &policy, &["--crl".as_ref(), crl.as_os_str()]).await;
    let (mut web, _w) = raw_hello(router.addr, &IdentityDir::new(certs_dir.join("web"))).await;
    let (mut todo, _t) = raw_hello(router.addr, &IdentityDir::new(certs_dir.join("todo"))).await;
    certs::revoke(&certs_dir, &[certs_dir.join("web/cert.pem")], &crl, 30).unwrap();
    router.signal("HUP");
    assert!(closed_within(&mut web, 5).await, "the revoked service stayed connected after SIGHUP");
    assert!(!closed_within(&mut todo, 1).await, "an unrevoked service was disconnected");
}

#[tokio::test]
async fn a_frame_dribbled_byte_by_byte_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let bus = TestBus::start_with(BusOptions {
        configure: Some(Box::new(|cfg| cfg.limits.frame_timeout = Duration::from_millis(500))),
        ..Default::default()
    })
    .await;
    let stream = raw_tls(bus.addr, &bus.identity("web")).await.unwrap();
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd, 1 << 20);
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "slow".into(), client: "test".into() };
    wr.write_all(&frame::to_bytes(&Frame { body: Some(Body::Hello(hello)) })).await.unwrap();
    read_until(&mut reader, |b| matches!(b, Body::Welcome(_))).await;
    let ping = frame::to_bytes(&Frame { body: Some(Body::Ping(Ping { nonce: 1 })) });
    // A slowloris: one byte every 300 ms, never a whole frame in time.
    let dribble = tokio::spawn(async move {
        for b in ping.iter().cycle().take(40) {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert!(closed_within(&mut reader, 10).await, "a dribbled frame kept the connection open");
    bus.wait_audit(|v| v["event"] == "disconnect" && v["reason"] == "frame not completed in time").await;
    dribble.abort();
}
