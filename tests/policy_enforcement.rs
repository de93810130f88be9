//! The policy in force, enforced by the running router: size and rate
//! limits, hot reload (SIGHUP), refusal of an invalid or unsigned policy,
//! and revocation applied to messages already queued.

mod common;

use std::time::Duration;

use common::*;
use exocom::relay::{ErrorKind, Relay};
use serde_json::json;

const LIMITED: &str = r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["todos.create"]
limits = { rate = 5, burst = 5, max_size = "1KiB" }

[services.todo]
id = "spiffe://example.org/svc/todo"
receive = ["todos.create"]
"#;

#[tokio::test]
async fn size_and_rate_limits_are_refused_and_audited() {
    let bus = TestBus::start_with(BusOptions { policy: LIMITED.into(), ..Default::default() }).await;
    // A high breaker threshold: this test wants to see every refusal, not a fast failure.
    let web = bus.builder("web").circuit_breaker(1000, Duration::from_secs(1)).connect().await.unwrap();
    let err = web.send("todos.create", &"x".repeat(2000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    bus.wait_audit(|v| v["event"] == "deny" && v["reason"] == "too_large").await;

    let mut limited = 0;
    for i in 0..20 {
        match web.send("todos.create", &json!({ "n": i })).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::RateLimited => limited += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(
        limited >= 10,
        "a burst of 5 at 5/s lets at most ~6 of 20 quick sends through; {limited} were limited"
    );
    bus.wait_audit(|v| v["event"] == "deny" && v["reason"] == "rate_limited").await;
}

/// `exocom serve` on a policy file the test rewrites, with an audit log.
struct Reloadable {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    policy: std::path::PathBuf,
    audit: std::path::PathBuf,
    /// The policy in force at start: web sends todos.create, todo receives it.
    both: String,
    router: ServeProcess,
}

impl Reloadable {
    async fn start() -> Reloadable {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        exocom::certs::init(&certs, "example.org", &["web".into(), "todo".into()], 30).unwrap();
        let policy = dir.path().join("policy.toml");
        let audit = dir.path().join("audit.jsonl");
        let both = LIMITED.replace("limits = { rate = 5, burst = 5, max_size = \"1KiB\" }", "");
        std::fs::write(&policy, &both).unwrap();
        let router = ServeProcess::start(&certs, &policy, &["--audit-log".as_ref(), audit.as_os_str()]).await;
        Reloadable { _dir: dir, certs, policy, audit, both, router }
    }
}

fn relay(addr: std::net::SocketAddr, certs: &std::path::Path, svc: &str) -> exocom::relay::RelayBuilder {
    Relay::builder(addr.to_string(), exocom::tls::IdentityDir::new(certs.join(svc)))
        .request_timeout(Duration::from_secs(5))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test]
async fn a_reload_swaps_the_policy_and_an_invalid_one_is_refused() {
    let Reloadable { _dir, certs, policy, audit, both, router } = Reloadable::start().await;

    let web = relay(router.addr, &certs, "web").connect().await.unwrap();
    web.send("todos.create", &json!({})).await.unwrap();

    // Revoke web's send permission and reload.
    std::fs::write(&policy, both.replace("send = [\"todos.create\"]", "send = []")).unwrap();
    router.signal("HUP");
    let mut denied = false;
    for _ in 0..50 {
        match web.send("todos.create", &json!({})).await {
            Err(e) if e.kind() == ErrorKind::Denied => {
                denied = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(denied, "the reloaded policy was not enforced");

    // An invalid file is refused; the last good policy stays in force.
    std::fs::write(&policy, "[services.web\nbroken").unwrap();
    router.signal("HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = web.send("todos.create", &json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);

    let lines = read_audit(&audit);
    let loaded: Vec<_> = lines.iter().filter(|v| v["event"] == "policy_loaded").collect();
    assert!(loaded.len() >= 2, "start and reload are both audited: {loaded:?}");
    assert_ne!(loaded[0]["policy_sha256"], loaded[loaded.len() - 1]["policy_sha256"]);
    assert!(lines.iter().any(|v| v["event"] == "policy_rejected" && v["policy_sha256"].is_string()));
}

#[tokio::test]
async fn queued_messages_a_service_may_no_longer_receive_are_not_delivered() {
    let Reloadable { _dir, certs, policy, audit, both, router } = Reloadable::start().await;
    let web = relay(router.addr, &certs, "web").connect().await.unwrap();
    web.send("todos.create", &json!({ "queued": true })).await.unwrap();

    // todo loses its receive permission while the message waits.
    std::fs::write(&policy, both.replace("receive = [\"todos.create\"]", "receive = [\"other.thing\"]"))
        .unwrap();
    router.signal("HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let _todo = relay(router.addr, &certs, "todo")
        .handle("todos.create", [1], move |_m, _r| {
            let tx = tx.clone();
            async move {
                tx.send(()).await.ok();
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.is_err(),
        "a revoked message was delivered"
    );
    for _ in 0..40 {
        if read_audit(&audit).iter().any(|v| v["event"] == "deny" && v["reason"] == "receive_revoked") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the revoked delivery was not audited");
}
