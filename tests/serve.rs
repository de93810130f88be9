//! What the router does as a process and under failing resources:
//! graceful stop on SIGTERM, refusing an unsigned policy when signatures are
//! required, and failing closed when the audit log's disk is full.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use exocom::audit::{self, AuditConfig};
use exocom::relay::ErrorKind;
use serde_json::json;

/// Certificates and the test policy in `dir`: what every router here starts with.
fn router_files(dir: &Path) -> (PathBuf, PathBuf) {
    let certs = dir.join("certs");
    exocom::certs::init(&certs, "example.org", &["web".into(), "todo".into()], 30).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    (certs, policy)
}

#[tokio::test]
async fn sigterm_stops_the_router_gracefully_and_closes_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, policy) = router_files(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let key = certs.join("audit/key.pem");
    let mut router = ServeProcess::start(
        &certs,
        &policy,
        &["--audit-log".as_ref(), audit.as_os_str(), "--audit-key".as_ref(), key.as_os_str()],
    )
    .await;
    let web = exocom::relay::Relay::builder(
        router.addr.to_string(),
        exocom::tls::IdentityDir::new(certs.join("web")),
    )
    .connect()
    .await
    .unwrap();
    web.send("todos.create", &json!({})).await.unwrap();
    router.signal("TERM");
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = router.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("router did not stop within 10 s of SIGTERM");
    assert!(status.success(), "router exited with {status}");
    let lines = read_audit(&audit);
    let events: Vec<&str> = lines.iter().filter_map(|v| v["event"].as_str()).collect();
    assert!(events.contains(&"log_stop"), "{events:?}");
    assert_eq!(events.last(), Some(&"audit_checkpoint"), "the log ends signed: {events:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_exocom"))
        .args(["audit", "verify"])
        .arg(&audit)
        .arg("--pubkey")
        .arg(certs.join("audit/pub.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn an_unsigned_policy_is_refused_when_signatures_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, policy) = router_files(dir.path());
    let serve = |policy: &Path| {
        Command::new(env!("CARGO_BIN_EXE_exocom"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ca"])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("router/cert.pem"))
            .arg("--key")
            .arg(certs.join("router/key.pem"))
            .arg("--policy")
            .arg(policy)
            .arg("--policy-pubkey")
            .arg(certs.join("policy-signing/pub.pem"))
            .output()
            .unwrap()
    };
    let out = serve(&policy);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Signed by the security team's key: the router starts.
    let sign = Command::new(env!("CARGO_BIN_EXE_exocom"))
        .args(["policy", "sign"])
        .arg(&policy)
        .arg("--key")
        .arg(certs.join("policy-signing/key.pem"))
        .output()
        .unwrap();
    assert!(sign.status.success(), "{}", String::from_utf8_lossy(&sign.stderr));
    let router = ServeProcess::start(
        &certs,
        &policy,
        &["--policy-pubkey".as_ref(), certs.join("policy-signing/pub.pem").as_os_str()],
    )
    .await;
    drop(router);
}

/// A tiny tmpfs for the audit log, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        Self::mount_sized(dir, "256k")
    }

    fn mount_sized(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Tmpfs {
    /// Fills the filesystem; returns the filler file to remove later.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

/// Sends padded messages until one is refused with `kind` (or `tries` run out).
async fn refused_with(web: &exocom::relay::Relay, kind: ErrorKind, pad: usize, tries: usize) -> bool {
    for _ in 0..tries {
        match web.send("todos.create", &json!({ "pad": "x".repeat(pad) })).await {
            Err(e) if e.kind() == kind => return true,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    false
}

/// Whether sends succeed again within 10 s.
async fn resumes(web: &exocom::relay::Relay) -> bool {
    for _ in 0..100 {
        if web.send("todos.create", &json!({})).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the audit writer of the test may still hold its file open.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_audit_disk_refuses_sends_and_recovers_by_itself() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(mnt.path()) else {
        eprintln!("note: cannot mount a tmpfs here (not root?); skipping the disk-full test");
        return;
    };
    let path = tmpfs.0.join("audit.jsonl");
    let audit_path = path.clone();
    let bus = TestBus::start_with(BusOptions {
        configure: Some(Box::new(move |cfg| {
            let (trigger, shutdown) = exocom::shutdown::channel();
            let mut ac = AuditConfig::new(audit_path);
            ac.fsync = audit::FsyncPolicy::EveryBatch;
            let (handle, _task) = audit::start(ac, shutdown).unwrap();
            // The writer lives as long as the test process.
            std::mem::forget(trigger);
            cfg.audit = handle;
        })),
        ..Default::default()
    })
    .await;
    let web = bus.builder("web").circuit_breaker(1000, Duration::from_secs(1)).connect().await.unwrap();
    web.send("todos.create", &json!({})).await.unwrap();

    let filler = tmpfs.fill();
    let refused = refused_with(&web, ErrorKind::AuditUnavailable, 200, 100).await;
    assert!(refused, "sends were accepted while the audit log could not be written");

    // Free the disk: the router resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    assert!(resumes(&web).await, "the router did not resume after the disk was freed");
    let lines = read_audit(&path);
    assert!(lines.iter().any(|v| v["event"] == "audit_gap"), "recovery writes an audit_gap record");
}

#[tokio::test]
async fn a_full_store_disk_refuses_sends_and_recovers_by_itself() {
    let mnt = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount_sized(mnt.path(), "8m") else {
        eprintln!("note: cannot mount a tmpfs here (not root?); skipping the disk-full test");
        return;
    };
    let data = tmpfs.0.join("data");
    let bus = TestBus::start_with(BusOptions {
        configure: Some(Box::new(move |cfg| {
            cfg.store = std::sync::Arc::new(exocom::store::Store::open(&data).unwrap());
        })),
        ..Default::default()
    })
    .await;
    let web = bus.builder("web").circuit_breaker(1_000_000, Duration::from_secs(1)).connect().await.unwrap();
    web.send("todos.create", &json!({})).await.unwrap();

    let filler = tmpfs.fill();
    let refused = refused_with(&web, ErrorKind::StoreUnavailable, 4000, 400).await;
    assert!(refused, "sends were acknowledged while the store could not write");

    std::fs::remove_file(&filler).unwrap();
    assert!(resumes(&web).await, "the store did not recover after the disk was freed");
}

#[tokio::test]
async fn limits_come_from_the_settings_file() {
    use exocom::wire::{Body, ErrorCode, Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let (certs, policy) = router_files(dir.path());
    let config = dir.path().join("router.toml");
    std::fs::write(&config, "[limits]\nmax_connections_per_identity = 1\nidle_timeout_secs = 30\n").unwrap();
    let router = ServeProcess::start(&certs, &policy, &["--config".as_ref(), config.as_os_str()]).await;
    let web = exocom::tls::IdentityDir::new(certs.join("web"));
    let _first = raw_hello(router.addr, &web).await;
    let stream = raw_tls(router.addr, &web).await.unwrap();
    let (rd, wr) = tokio::io::split(stream);
    let (mut reader, mut writer) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "second".into(), client: "test".into() };
    let _ = writer.write_frame(&Frame { body: Some(Body::Hello(hello)) }).await;
    match read_until(&mut reader, |b| matches!(b, Body::Error(_))).await {
        Body::Error(e) => assert_eq!(e.code, ErrorCode::LimitExceeded as i32, "{}", e.message),
        _ => unreachable!(),
    }

    // An unknown key is refused before anything is bound.
    std::fs::write(&config, "[limits]\nmax_conections = 1\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_exocom")).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_conections"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Threads of the router process named like tokio's runtime workers.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn the_worker_count_comes_from_the_flag_or_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, policy) = router_files(dir.path());
    let router = ServeProcess::start(&certs, &policy, &["--workers".as_ref(), "3".as_ref()]).await;
    assert_eq!(runtime_workers(router.child.id()), 3);
    drop(router);

    let config = dir.path().join("router.toml");
    std::fs::write(&config, "workers = 1\n").unwrap();
    let router = ServeProcess::start(&certs, &policy, &["--config".as_ref(), config.as_os_str()]).await;
    assert_eq!(runtime_workers(router.child.id()), 1);
    drop(router);

    // None is refused before anything is bound, with the setting named.
    let out = Command::new(env!("CARGO_BIN_EXE_exocom")).args(["serve", "--workers", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--workers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
