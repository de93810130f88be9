//! End-to-end sealing through the real router: requests, streams, events to
//! several services, a backlog opened by a service that connects later, and
//! the marker test (the router never handles a plaintext).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::proxy::{Dir, Proxy, pass};
use common::{BusOptions, TestBus};
use exocom::relay::{ErrorKind, Incoming, Responder};
use exocom::wire::Body;
use tokio::sync::mpsc;

type Seen = mpsc::UnboundedSender<(String, serde_json::Value)>;

/// A handler that forwards (service, payload) to the test.
fn forward(
    service: &'static str,
    tx: Seen,
) -> impl Fn(Incoming, Responder) -> std::future::Ready<Result<(), exocom::relay::Error>> + Clone {
    move |msg: Incoming, _r: Responder| {
        let _ = tx.send((service.to_string(), msg.json().unwrap()));
        std::future::ready(Ok(()))
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, serde_json::Value)>) -> (String, serde_json::Value) {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("timed out").unwrap()
}

#[tokio::test]
async fn sealed_request_and_reply() {
    let bus = TestBus::start().await;
    let todo = bus
        .sealed("todo")
        .handle("todos.list", [], |msg: Incoming, r: Responder| async move {
            let who: String = msg.json()?;
            r.reply("todos.listing", &vec![format!("for {who}"), "b".into()]).await
        })
        .connect()
        .await
        .unwrap();
    let web = bus.sealed("web").connect().await.unwrap();
    let reply = web.request_one("todos.list", &"web").await.unwrap();
    assert_eq!(reply.json::<Vec<String>>().unwrap(), vec!["for web".to_string(), "b".into()]);
    assert_eq!(reply.sender(), "todo");
    assert_eq!(web.rejections().total() + todo.rejections().total(), 0);
}

#[tokio::test]
async fn sealed_streams_arrive_in_order_and_end() {
    let bus = TestBus::start().await;
    let _todo = bus
        .sealed("todo")
        .handle("todos.export", [], |_msg: Incoming, mut r: Responder| async move {
            for i in 0..3 {
                r.stream("todos.chunk", &i).await?;
            }
            r.end("todos.exported", &"done").await
        })
        .connect()
        .await
        .unwrap();
    let web = bus.sealed("web").connect().await.unwrap();
    let replies = web.request("todos.export", &()).await.unwrap().collect().await.unwrap();
    let got: Vec<(String, u64, bool)> =
        replies.iter().map(|r| (r.name().to_string(), r.stream_seq(), r.is_final())).collect();
    assert_eq!(
        got,
        vec![
            ("todos.chunk".into(), 0, false),
            ("todos.chunk".into(), 1, false),
            ("todos.chunk".into(), 2, false),
            ("todos.exported".into(), 3, true)
        ]
    );
    assert_eq!(replies[2].json::<u32>().unwrap(), 2);
}

#[tokio::test]
async fn a_sealed_event_reaches_both_services_the_policy_names() {
    let bus = TestBus::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _todo =
        bus.sealed("todo").handle("user.created", [], forward("todo", tx.clone())).connect().await.unwrap();
    let _mailer =
        bus.sealed("mailer").handle("user.created", [], forward("mailer", tx)).connect().await.unwrap();
    let web = bus.sealed("web").connect().await.unwrap();
    let sent = web.publish("user.created", &serde_json::json!({"user": "ada"})).await.unwrap();
    assert_eq!(sent.receivers, 2);
    let mut got = [next(&mut rx).await, next(&mut rx).await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0], ("mailer".into(), serde_json::json!({"user": "ada"})));
    assert_eq!(got[1], ("todo".into(), serde_json::json!({"user": "ada"})));
}

#[tokio::test]
async fn a_service_that_connects_later_opens_its_backlog() {
    let bus = TestBus::start().await;
    mailer_announces_and_leaves(&bus).await;

    let web = bus.sealed("web").connect().await.unwrap();
    for i in 0..3 {
        web.publish("user.created", &serde_json::json!({"n": i})).await.unwrap();
    }
    // A new mailer process; grants come from the queue.
    a_new_mailer_reads(&bus, &[0, 1, 2]).await;
}

#[tokio::test]
async fn without_a_verified_key_nothing_is_sent() {
    let bus = TestBus::start().await;
    // todo never connected, so it never announced a receive key.
    let web = bus.sealed("web").connect().await.unwrap();
    let err = web.send("todos.create", &"x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoReceivers, "{err}");
    assert!(err.message().contains("todo"), "{err}");
}

/// The sender works out who a name is sealed to once and keeps it while the
/// policy and the keys stay the same: a key that arrives later must still
/// be used by the next send.
#[tokio::test]
async fn a_key_that_arrives_after_a_refused_send_is_used_by_the_next_send() {
    let bus = TestBus::start().await;
    let web = bus.sealed("web").connect().await.unwrap();
    let err = web.send("todos.create", &"early").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoReceivers, "{err}");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let _todo = bus.sealed("todo").handle("todos.create", [], forward("todo", tx)).connect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    web.send("todos.create", &"later").await.unwrap();
    assert_eq!(next(&mut rx).await, ("todo".to_string(), serde_json::json!("later")));
}

#[tokio::test]
async fn a_plain_relay_cannot_read_sealed_messages_and_a_sealed_one_refuses_plain() {
    let bus = TestBus::start().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let todo = bus
        .sealed("todo")
        .handle("todos.create", [], move |_m: Incoming, _r: Responder| {
            h.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<(), exocom::relay::Error>(()))
        })
        .connect()
        .await
        .unwrap();
    // A downgrade: a plain message to a relay that expects sealed ones.
    let plain_web = bus.relay("web").await;
    plain_web.send("todos.create", &"plain").await.unwrap();
    wait_for(|| todo.rejections().get("not_sealed") == 1).await;
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

/// The marker test: payloads with a unique marker are read by their
/// receivers, while the marker is in no frame the router handles (recorded
/// by pass-through proxies in front of both relays, both directions), and
/// not in the audit log and not in the durable store's files.
#[tokio::test]
async fn the_router_never_handles_a_plaintext() {
    let bus = TestBus::start_with(BusOptions { data_dir: true, ..Default::default() }).await;
    let marker = format!("MARKER-{}", uuid::Uuid::new_v4());
    let web_proxy = Proxy::start(&bus, "web", pass()).await;
    let todo_proxy = Proxy::start(&bus, "todo", pass()).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let _todo = bus
        .sealed_at("todo", todo_proxy.addr)
        .handle("todos.list", [], move |msg: Incoming, r: Responder| {
            let tx = tx2.clone();
            async move {
                let text: String = msg.json()?;
                let _ = tx.send(("todo".to_string(), serde_json::json!(text)));
                r.reply("todos.listing", &format!("{text} back")).await
            }
        })
        .handle("user.created", [], forward("todo", tx))
        .connect()
        .await
        .unwrap();
    let web = bus.sealed_at("web", web_proxy.addr).connect().await.unwrap();

    let reply = web.request_one("todos.list", &marker).await.unwrap();
    assert_eq!(reply.json::<String>().unwrap(), format!("{marker} back"));
    assert_eq!(next(&mut rx).await.1, serde_json::json!(marker));
    web.publish("user.created", &serde_json::json!({"secret": marker})).await.unwrap();
    assert_eq!(next(&mut rx).await.1, serde_json::json!({"secret": marker}));

    let needle = marker.as_bytes();
    let mut frames = 0;
    let mut sends = 0;
    for proxy in [&web_proxy, &todo_proxy] {
        for (dir, bytes) in proxy.seen.lock().unwrap().iter() {
            frames += 1;
            assert!(!contains(bytes, needle), "marker in a frame {dir:?}");
        }
        sends += proxy.sent(Dir::ToRouter).iter().filter(|f| matches!(f.body, Some(Body::Send(_)))).count();
    }
    assert!(frames >= 8 && sends >= 3, "the proxies saw the traffic ({frames} frames, {sends} sends)");
    bus.wait_audit(|v| v["event"] == "deliver" && v["name"] == "user.created").await;
    let audit = std::fs::read(&bus.audit_path).unwrap();
    assert!(!audit.is_empty());
    assert!(!contains(&audit, needle), "marker in the audit log");
    let mut files = vec![bus.dir.path().join("data")];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            checked += bytes.len();
            assert!(!contains(&bytes, needle), "marker in store file {}", path.display());
        }
    }
    assert!(checked > 0, "the store wrote files");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn wait_for(f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn after_a_router_restart_new_messages_carry_new_grants() {
    let bus = TestBus::start().await;
    let addr = bus.addr;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = bus
        .sealed("mailer")
        .handle("user.created", [], forward("mailer", tx.clone()))
        .connect()
        .await
        .unwrap();
    let web = bus.sealed("web").connect().await.unwrap();
    web.publish("user.created", &1).await.unwrap();
    assert_eq!(next(&mut rx).await.1, serde_json::json!(1));
    first.close().await;

    // The router restarts and forgets the grants it held in memory.
    let dir = bus.stop().await;
    let bus = TestBus::start_in(dir, BusOptions::default(), Some(addr)).await;
    wait_for(|| web.is_connected()).await;
    let later =
        bus.sealed("mailer").handle("user.created", [], forward("mailer", tx)).connect().await.unwrap();
    web.publish("user.created", &2).await.unwrap();
    assert_eq!(next(&mut rx).await.1, serde_json::json!(2));
    assert_eq!(later.rejections().total(), 0, "{:?}", later.rejections().snapshot());
}

#[tokio::test]
async fn a_sealed_backlog_survives_a_router_restart() {
    let bus = TestBus::start_with(BusOptions { data_dir: true, ..Default::default() }).await;
    let addr = bus.addr;
    mailer_announces_and_leaves(&bus).await;
    let web = bus.sealed("web").connect().await.unwrap();
    for i in 0..3 {
        web.publish("user.created", &serde_json::json!({"n": i})).await.unwrap();
    }
    web.close().await;

    // The router restarts on the same data directory: queues and their grants come back.
    let dir = bus.stop().await;
    let bus = TestBus::start_in(dir, BusOptions { data_dir: true, ..Default::default() }, Some(addr)).await;
    a_new_mailer_reads(&bus, &[0, 1, 2]).await;
}

/// The router keeps its key directory in memory: after a restart it
/// lists only the services that have reconnected. A sender keeps the keys
/// it verified before (until they expire), so what it sends meanwhile stays
/// readable by a service that is offline.
#[tokio::test]
async fn a_sender_keeps_the_keys_it_verified_across_a_router_restart() {
    let bus = TestBus::start_with(BusOptions { data_dir: true, ..Default::default() }).await;
    let addr = bus.addr;
    let first = bus.sealed("mailer").connect().await.unwrap();
    first.close().await;
    let web = bus.sealed("web").connect().await.unwrap();

    let dir = bus.stop().await;
    let bus = TestBus::start_in(dir, BusOptions { data_dir: true, ..Default::default() }, Some(addr)).await;
    // web reconnects by itself; its new key directory lacks mailer.
    for _ in 0..100 {
        if web.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    web.publish("user.created", &serde_json::json!({"n": 1})).await.unwrap();

    a_new_mailer_reads(&bus, &[1]).await;
}

/// Starts a new mailer process (new instance, empty caches) and checks that
/// it reads `user.created` with these `n`s, in order, refusing nothing.
/// A relay opens large payloads off its connection task, but an epoch's
/// grant rides on its first delivery only. A backlog from two sender
/// instances, large and small messages interleaved, delivered in one burst
/// when the receiver connects, must open in full: nothing refused for want
/// of a grant, each message handled once.
#[tokio::test]
async fn a_burst_of_large_and_small_messages_from_two_senders_opens_in_full() {
    let bus = TestBus::start().await;
    mailer_announces_and_leaves(&bus).await;
    let webs = [bus.sealed("web").connect().await.unwrap(), bus.sealed("web").connect().await.unwrap()];
    let pad = "x".repeat(40_000);
    const COUNT: u64 = 60;
    for n in 0..COUNT {
        let body = match n % 3 {
            2 => serde_json::json!({ "n": n }),
            _ => serde_json::json!({ "n": n, "pad": pad }),
        };
        webs[(n % 2) as usize].publish("user.created", &body).await.unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mailer =
        bus.sealed("mailer").handle("user.created", [], forward("mailer", tx)).connect().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..COUNT {
        let (_, body) = next(&mut rx).await;
        assert!(body["n"].as_u64().unwrap() % 3 == 2 || body["pad"] == pad.as_str(), "{}", body["n"]);
        got.push(body["n"].as_u64().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..COUNT).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "a message was handled twice");
    assert_eq!(mailer.rejections().total(), 0, "{:?}", mailer.rejections().snapshot());
}

/// mailer announces its key once, then goes away (senders can seal to it,
/// and what they send waits in its queue).
async fn mailer_announces_and_leaves(bus: &TestBus) {
    let first = bus.sealed("mailer").connect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.close().await;
}

async fn a_new_mailer_reads(bus: &TestBus, ns: &[i64]) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let later =
        bus.sealed("mailer").handle("user.created", [], forward("mailer", tx)).connect().await.unwrap();
    for n in ns {
        assert_eq!(next(&mut rx).await.1, serde_json::json!({"n": n}));
    }
    assert_eq!(later.rejections().total(), 0, "{:?}", later.rejections().snapshot());
}

#[tokio::test]
async fn a_service_the_senders_policy_drops_cannot_read_later_messages() {
    let bus = TestBus::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _todo =
        bus.sealed("todo").handle("user.created", [], forward("todo", tx.clone())).connect().await.unwrap();
    let mailer =
        bus.sealed("mailer").handle("user.created", [], forward("mailer", tx)).connect().await.unwrap();
    let web_id = bus.identity("web");
    let mut opts = exocom::relay::E2eOptions::new(&web_id, bus.policy_path());
    opts.key_refresh = Duration::from_millis(200);
    let web = bus.builder("web").end_to_end(opts).connect().await.unwrap();
    web.publish("user.created", &1).await.unwrap();
    let mut first = vec![next(&mut rx).await.0, next(&mut rx).await.0];
    first.sort();
    assert_eq!(first, vec!["mailer", "todo"]);

    // The security team drops mailer from user.created. Only the sender's
    // trusted policy changes here (the router still routes to mailer), which
    // is exactly the case of a router that does not follow the policy.
    let text = std::fs::read_to_string(bus.policy_path()).unwrap();
    let mailer_rules =
        "[services.mailer]\nid = \"spiffe://example.org/svc/mailer\"\nreceive = [\"user.created\"]";
    assert!(text.contains(mailer_rules), "test policy changed shape");
    let dropped = text.replace(
        mailer_rules,
        "[services.mailer]\nid = \"spiffe://example.org/svc/mailer\"\nreceive = [\"other.event\"]",
    );
    std::fs::write(bus.policy_path(), dropped).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;

    web.publish("user.created", &2).await.unwrap();
    assert_eq!(next(&mut rx).await, ("todo".to_string(), serde_json::json!(2)));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.is_err(),
        "a service the sender's policy dropped still read a later message"
    );
    for _ in 0..50 {
        if mailer.rejections().total() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mailer did not report the message it could not open");
}
