//! Delivery guarantees end to end: a real router (in process, or the real
//! binary where a crash is needed), real TLS with certificates generated per
//! test, the real relay, and the durable store on disk.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use exocom::relay::{ErrorKind, MessageOptions, Relay};
use exocom::store::{DeadLetters, Store};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

type Log<T> = Arc<Mutex<Vec<T>>>;

/// Options for a router with a durable store in `<test dir>/data`.
fn durable(data: PathBuf, f: impl FnOnce(&mut exocom::router::RouterConfig) + Send + 'static) -> BusOptions {
    BusOptions {
        configure: Some(Box::new(move |c| {
            c.store = Arc::new(Store::open(&data).unwrap());
            f(c);
        })),
        ..BusOptions::default()
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The real `exocom serve` as a child process, killed with SIGKILL on drop.
struct RouterProcess(Child);

impl RouterProcess {
    fn start(dir: &Path, addr: SocketAddr) -> RouterProcess {
        let certs = dir.join("certs");
        let child = Command::new(env!("CARGO_BIN_EXE_exocom"))
            .arg("serve")
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("router/cert.pem"))
            .arg("--key")
            .arg(certs.join("router/key.pem"))
            .arg("--policy")
            .arg(dir.join("policy.toml"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        RouterProcess(child)
    }

    /// kill -9: no shutdown, no flush.
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn relay_for(dir: &Path, addr: SocketAddr, service: &str) -> exocom::relay::RelayBuilder {
    Relay::builder(addr.to_string(), exocom::tls::IdentityDir::new(dir.join("certs").join(service)))
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// A directory with certificates and the test policy for `RouterProcess`,
/// and a free port for it.
fn router_dir() -> (tempfile::TempDir, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    exocom::certs::init(&dir.path().join("certs"), "example.org", &services, 30).unwrap();
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    (dir, free_port())
}

/// Connects once the router process listens.
async fn connect_when_up(builder: impl Fn() -> exocom::relay::RelayBuilder) -> Relay {
    for _ in 0..200 {
        if let Ok(r) = builder().connect().await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("router process did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_router_loses_no_acknowledged_message() {
    const N: usize = 200;
    let (dir, addr) = router_dir();

    let router = RouterProcess::start(dir.path(), addr);
    let web = connect_when_up(|| relay_for(dir.path(), addr, "web")).await;
    for i in 0..N {
        let sent = web.send("todos.create", &json!({ "n": i })).await.unwrap();
        assert_eq!(sent.receivers, 1);
    }
    router.kill();
    drop(web);

    let _router = RouterProcess::start(dir.path(), addr);
    let got: Log<usize> = Arc::default();
    let g = got.clone();
    let _todo = connect_when_up(move || {
        let g = g.clone();
        relay_for(dir.path(), addr, "todo").handle("todos.create", [1], move |msg, _| {
            let g = g.clone();
            async move {
                let v: serde_json::Value = msg.json()?;
                g.lock().unwrap().push(v["n"].as_u64().unwrap_or(u64::MAX) as usize);
                Ok::<(), exocom::relay::Error>(())
            }
        })
    })
    .await;
    eventually("all acknowledged messages after the restart", || got.lock().unwrap().len() >= N).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = got.lock().unwrap().clone();
    // Handlers run concurrently (prefetch 256), so compare as a set.
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every acknowledged message, once");
}

#[tokio::test]
async fn unacked_messages_of_a_lost_instance_reach_another() {
    let dir = tempfile::tempdir().unwrap();
    let bus = TestBus::start_with(durable(dir.path().join("data"), |_| {})).await;
    let held = Arc::new(Notify::new());
    let held_n: Log<u64> = Arc::default();
    let (h, hn) = (held.clone(), held_n.clone());
    let a = bus
        .builder("todo")
        .prefetch(16)
        .drain_timeout(Duration::from_millis(50))
        .handle("jobs.run", [1], move |msg, _| {
            let (h, hn) = (h.clone(), hn.clone());
            async move {
                hn.lock().unwrap().push(msg.json::<serde_json::Value>()?["n"].as_u64().unwrap_or(0));
                h.notify_one();
                // Crashes before it finishes: never returns, never acks.
                std::future::pending::<()>().await;
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    for i in 0..5 {
        web.send("jobs.run", &json!({ "n": i })).await.unwrap();
    }
    eventually("instance A holds 5 deliveries", || held_n.lock().unwrap().len() == 5).await;

    let got: Log<(u64, u32)> = Arc::default();
    let g = got.clone();
    let _b = bus
        .builder("todo")
        .handle("jobs.run", [1], move |msg, _| {
            let g = g.clone();
            async move {
                let n = msg.json::<serde_json::Value>()?["n"].as_u64().unwrap_or(0);
                g.lock().unwrap().push((n, msg.attempt()));
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(got.lock().unwrap().is_empty(), "B gets nothing while A holds the messages");
    drop(a);
    eventually("B receives A's unacked messages", || got.lock().unwrap().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = got.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..5).map(|n| (n, 2)).collect::<Vec<_>>(), "each once more, as a second attempt");
    bus.wait_audit(|v| v["event"] == "redeliver").await;
}

#[tokio::test]
async fn fifo_per_sender_and_per_partition_key_across_redelivery() {
    let dir = tempfile::tempdir().unwrap();
    let bus = TestBus::start_with(durable(dir.path().join("data"), |_| {})).await;
    let web = bus.relay("web").await;
    // Queued while the receiver is offline, then delivered in order.
    for i in 0..50 {
        web.send("todos.create", &json!({ "n": i })).await.unwrap();
    }
    let got: Log<u64> = Arc::default();
    let g = got.clone();
    let _todo = bus
        .builder("todo")
        .prefetch(1)
        .handle("todos.create", [1], move |msg, _| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(msg.json::<serde_json::Value>()?["n"].as_u64().unwrap_or(0));
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    eventually("50 in order", || got.lock().unwrap().len() >= 50).await;
    assert_eq!(*got.lock().unwrap(), (0..50).collect::<Vec<_>>());

    // Two instances; each key sticks to one, and a nacked message is
    // redelivered before the next one of its key.
    let seen: Log<(String, String, u64, u32)> = Arc::default();
    let mut instances = Vec::new();
    for inst in ["A", "B"] {
        let seen = seen.clone();
        let failed_once = Arc::new(Mutex::new(false));
        let r = bus
            .builder("todo")
            .prefetch(1)
            .handle("jobs.run", [1], move |msg, _| {
                let (seen, failed_once) = (seen.clone(), failed_once.clone());
                async move {
                    let v: serde_json::Value = msg.json()?;
                    let n = v["n"].as_u64().unwrap_or(0);
                    let key = msg.partition_key().unwrap_or("").to_string();
                    if n == 3 && !std::mem::replace(&mut *failed_once.lock().unwrap(), true) {
                        return Err(exocom::relay::Error::new(ErrorKind::Io, "fails once"));
                    }
                    seen.lock().unwrap().push((inst.to_string(), key, n, msg.attempt()));
                    Ok(())
                }
            })
            .connect()
            .await
            .unwrap();
        instances.push(r);
    }
    for n in 0..10 {
        for key in ["k1", "k2", "k3"] {
            let opts = MessageOptions::new().partition_key(key);
            web.send_with("jobs.run", &json!({ "n": n }), &opts).await.unwrap();
        }
    }
    eventually("30 handled", || seen.lock().unwrap().len() >= 30).await;
    let seen = seen.lock().unwrap().clone();
    for key in ["k1", "k2", "k3"] {
        let of_key: Vec<_> = seen.iter().filter(|s| s.1 == key).collect();
        let order: Vec<u64> = of_key.iter().map(|s| s.2).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>(), "key {key} in order: {seen:?}");
        assert!(of_key.iter().all(|s| s.0 == of_key[0].0), "key {key} on one instance: {seen:?}");
    }
    assert!(seen.iter().any(|s| s.2 == 3 && s.3 == 2), "a redelivery happened: {seen:?}");
}

#[tokio::test]
async fn an_expired_message_is_dropped_and_audited_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = TestBus::start_with(durable(dir.path().join("data"), |_| {})).await;
    let web = bus.relay("web").await;
    let opts = MessageOptions::new().ttl(Duration::from_millis(100));
    let sent = web.send_with("todos.create", &json!({ "stale": true }), &opts).await.unwrap();
    web.send("todos.create", &json!({ "fresh": true })).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Log<serde_json::Value> = Arc::default();
    let g = got.clone();
    let _todo = bus
        .builder("todo")
        .handle("todos.create", [1], move |msg, _| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push(msg.json()?);
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    eventually("the fresh message", || !got.lock().unwrap().is_empty()).await;
    let expire = bus.wait_audit(|v| v["event"] == "expire").await;
    assert_eq!(expire["id"], json!(sent.id.to_string()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*got.lock().unwrap(), vec![json!({ "fresh": true })]);
}

#[tokio::test]
async fn a_full_queue_refuses_sends_with_queue_full() {
    let dir = tempfile::tempdir().unwrap();
    let bus = TestBus::start_with(durable(dir.path().join("data"), |c| {
        c.core.queue_max_messages = 5;
        c.core.queue_max_bytes = 4096;
    }))
    .await;
    let web = bus.relay("web").await;
    for i in 0..5 {
        web.send("todos.create", &json!({ "n": i })).await.unwrap();
    }
    let err = web.send("todos.create", &json!({ "n": 5 })).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull, "{err}");
    assert!(err.message().contains("full"), "{err}");
    bus.wait_audit(|v| v["event"] == "deny" && v["reason"] == "queue_full").await;

    // Exactly what was accepted is delivered; the refused send was never queued.
    let got: Log<serde_json::Value> = Arc::default();
    let todo = |got: Log<serde_json::Value>| {
        bus.builder("todo").handle("todos.create", [1], move |msg, _| {
            let g = got.clone();
            async move {
                g.lock().unwrap().push(msg.json()?);
                Ok::<(), exocom::relay::Error>(())
            }
        })
    };
    let receiver = todo(got.clone()).connect().await.unwrap();
    eventually("5 messages", || got.lock().unwrap().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ns: Vec<_> = got.lock().unwrap().iter().map(|v| v["n"].clone()).collect();
    assert_eq!(ns, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
    receiver.close().await;

    // Bytes: one 3 KB message fits in 4 KB, a second does not.
    let big = "x".repeat(3000);
    web.send("todos.create", &json!({ "pad": big })).await.unwrap();
    let err = web.send("todos.create", &json!({ "pad": big })).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QueueFull, "{err}");
    got.lock().unwrap().clear();
    let _receiver = todo(got.clone()).connect().await.unwrap();
    eventually("the big message", || !got.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    // Once drained, the queue takes sends again.
    web.send("todos.create", &json!({ "n": 6 })).await.unwrap();
}

#[tokio::test]
async fn a_slow_consumer_never_stalls_another_service() {
    let dir = tempfile::tempdir().unwrap();
    let bus = TestBus::start_with(durable(dir.path().join("data"), |_| {})).await;
    // mailer takes one message at a time and never finishes it.
    let _mailer = bus
        .builder("mailer")
        .prefetch(1)
        .drain_timeout(Duration::from_millis(50))
        .handle("user.created", [1], |_msg, _| async move {
            std::future::pending::<()>().await;
            Ok::<(), exocom::relay::Error>(())
        })
        .connect()
        .await
        .unwrap();
    let todo_seen: Log<u64> = Arc::default();
    let t = todo_seen.clone();
    let _todo = bus
        .builder("todo")
        .handle("user.created", [1], move |msg, _| {
            let t = t.clone();
            async move {
                t.lock().unwrap().push(msg.json::<serde_json::Value>()?["n"].as_u64().unwrap_or(0));
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .handle(
            "todos.list",
            [1],
            |_msg, reply| async move { reply.reply("todos.listing", &json!([])).await },
        )
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    // Events go to both services: mailer's backlog grows, todo keeps up.
    for n in 0..200 {
        web.send("user.created", &json!({ "n": n })).await.unwrap();
    }
    let reply = tokio::time::timeout(Duration::from_secs(5), web.request_one("todos.list", &json!({})))
        .await
        .expect("a request to todo is answered while mailer is stuck")
        .unwrap();
    assert_eq!(reply.name(), "todos.listing");
    eventually("todo got all 200 events", || todo_seen.lock().unwrap().len() >= 200).await;
    let delivered_to_mailer =
        bus.audit().iter().filter(|v| v["event"] == "deliver" && v["receiver"] == "mailer").count();
    assert_eq!(delivered_to_mailer, 1, "mailer was given only its credit (prefetch 1)");
}

#[tokio::test]
async fn a_reply_whose_requester_is_gone_is_dropped_and_audited() {
    let bus = TestBus::start().await;
    let go = Arc::new(Notify::new());
    let outcome: Log<bool> = Arc::default();
    let (g, o) = (go.clone(), outcome.clone());
    let (started_tx, mut started) = mpsc::channel(1);
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1], move |_msg, reply| {
            let (g, o, s) = (g.clone(), o.clone(), started_tx.clone());
            async move {
                let _ = s.send(()).await;
                g.notified().await;
                let r = reply.reply("todos.listing", &json!([])).await;
                o.lock().unwrap().push(r.is_ok());
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let w = web.clone();
    let request = tokio::spawn(async move { w.request_one("todos.list", &json!({})).await });
    started.recv().await.unwrap();
    request.abort();
    web.close().await;
    drop(web);
    bus.wait_audit(|v| v["event"] == "disconnect" && v["sender"] == "web").await;
    go.notify_one();
    let drop_line = bus.wait_audit(|v| v["event"] == "drop").await;
    assert_eq!(drop_line["reason"], "requester_gone");
    assert_eq!(drop_line["name"], "todos.listing");
    eventually("the replier's outcome", || !outcome.lock().unwrap().is_empty()).await;
    assert_eq!(*outcome.lock().unwrap(), vec![true], "the replier is not blamed");
}

#[tokio::test]
async fn dead_letters_are_kept_and_can_be_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bus = TestBus::start_with(durable(data.clone(), |c| c.core.max_attempts = 2)).await;
    let attempts: Log<u32> = Arc::default();
    let a = attempts.clone();
    let todo = bus
        .builder("todo")
        .handle("jobs.run", [1], move |msg, _| {
            let a = a.clone();
            async move {
                a.lock().unwrap().push(msg.attempt());
                Err::<(), _>(exocom::relay::Error::new(ErrorKind::Io, "always fails"))
            }
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let sent = web.send("jobs.run", &json!({ "job": "poison" })).await.unwrap();
    let dead = bus.wait_audit(|v| v["event"] == "dead_letter").await;
    assert_eq!(dead["id"], json!(sent.id.to_string()));
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    todo.close().await;
    web.close().await;
    let test_dir = bus.stop().await;

    // The router is stopped: maintenance works on its data dir.
    let dlq = DeadLetters::open(&data).unwrap();
    let list = dlq.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].attempts, 2);
    assert_eq!(list[0].reason, "too many delivery attempts");
    assert_eq!(list[0].entry.service, "todo");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_exocom"))
            .arg("dlq")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    drop(dlq);
    let listed = cli(&["list"]);
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("jobs.run"));
    let id = list[0].id.to_string();
    assert!(cli(&["replay", &id]).status.success());
    assert_eq!(cli(&["show", &id]).status.code(), Some(1), "gone from the DLQ once replayed");

    // Restarted on the same data dir, the replayed message is delivered again.
    let opts = durable(data.clone(), |_| {});
    let bus = TestBus::start_in(test_dir, opts, None).await;
    let locked = cli(&["list"]);
    assert_eq!(locked.status.code(), Some(2));
    let err = String::from_utf8_lossy(&locked.stderr).to_string();
    assert!(err.contains("stop the router for DLQ maintenance") && err.lines().count() == 1, "{err}");
    let got: Log<(String, u32)> = Arc::default();
    let g = got.clone();
    let _todo = bus
        .builder("todo")
        .handle("jobs.run", [1], move |msg, _| {
            let g = g.clone();
            async move {
                g.lock().unwrap().push((msg.id().to_string(), msg.attempt()));
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    eventually("the replayed message", || !got.lock().unwrap().is_empty()).await;
    assert_eq!(*got.lock().unwrap(), vec![(sent.id.to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let (dir, addr) = router_dir();
    let router = RouterProcess::start(dir.path(), addr);

    // A receiver that keeps consuming, and a sender that keeps sending.
    let got: Log<u64> = Arc::default();
    let g = got.clone();
    let path = dir.path().to_path_buf();
    let _todo = connect_when_up(move || {
        let g = g.clone();
        relay_for(&path, addr, "todo").handle("todos.create", [1], move |msg, _| {
            let g = g.clone();
            async move {
                let v: serde_json::Value = msg.json()?;
                g.lock().unwrap().push(v["n"].as_u64().unwrap_or(u64::MAX));
                Ok::<(), exocom::relay::Error>(())
            }
        })
    })
    .await;
    let web = connect_when_up(|| {
        relay_for(dir.path(), addr, "web").circuit_breaker(1_000_000, Duration::from_secs(1))
    })
    .await;
    let acked: Log<u64> = Arc::default();
    let a = acked.clone();
    let sender = tokio::spawn(async move {
        for n in 0..100_000u64 {
            if web.send("todos.create", &json!({ "n": n })).await.is_ok() {
                a.lock().unwrap().push(n);
            }
        }
    });
    // Kill the router in the middle of the traffic.
    eventually("traffic flowing", || acked.lock().unwrap().len() >= 300).await;
    router.kill();
    let _router = RouterProcess::start(dir.path(), addr);
    eventually("traffic flowing again after the restart", || {
        let n = acked.lock().unwrap().len();
        n >= 600
    })
    .await;
    sender.abort();
    let acked: std::collections::BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    let mut missing = Vec::new();
    for _ in 0..200 {
        let seen: std::collections::BTreeSet<u64> = got.lock().unwrap().iter().copied().collect();
        missing = acked.difference(&seen).copied().collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost across kill -9, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
