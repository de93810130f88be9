//! The bus end to end: a real router on an ephemeral port, certificates
//! generated per test, real TLS, the real relay.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use exocom::relay::{ErrorKind, MessageOptions};
use serde_json::json;
use tokio::sync::mpsc;

type Seen = Arc<Mutex<Vec<String>>>;

#[tokio::test]
async fn request_and_reply() {
    let bus = TestBus::start().await;
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1], |msg, reply| async move {
            assert_eq!(msg.sender(), "web");
            assert_eq!(msg.sender_id(), "spiffe://example.org/svc/web");
            reply.reply("todos.listing", &json!(["buy milk"])).await
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let reply = web.request_one("todos.list", &json!({})).await.unwrap();
    assert_eq!(reply.name(), "todos.listing");
    assert_eq!(reply.sender(), "todo");
    let todos: Vec<String> = reply.json().unwrap();
    assert_eq!(todos, vec!["buy milk"]);
}

#[tokio::test]
async fn streaming_replies_end_with_a_final_reply() {
    let bus = TestBus::start().await;
    let _todo = bus
        .builder("todo")
        .handle("todos.export", [1], |_msg, mut reply| async move {
            for i in 0..3 {
                reply.stream("todos.chunk", &json!({ "chunk": i })).await?;
            }
            reply.end("todos.exported", &json!({ "chunks": 3 })).await
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let mut replies = web.request("todos.export", &json!({})).await.unwrap();
    let mut names = Vec::new();
    while let Some(r) = replies.next().await {
        let r = r.unwrap();
        names.push((r.name().to_string(), r.stream_seq(), r.is_final()));
    }
    assert_eq!(
        names,
        vec![
            ("todos.chunk".to_string(), 0, false),
            ("todos.chunk".to_string(), 1, false),
            ("todos.chunk".to_string(), 2, false),
            ("todos.exported".to_string(), 3, true),
        ]
    );
}

#[tokio::test]
async fn an_event_reaches_every_receiving_service() {
    let bus = TestBus::start().await;
    let (tx, mut rx) = mpsc::channel(8);
    let mut relays = Vec::new();
    for svc in ["todo", "mailer"] {
        let tx = tx.clone();
        let r = bus
            .builder(svc)
            .handle("user.created", [1], move |msg, _reply| {
                let tx = tx.clone();
                let svc = svc.to_string();
                async move {
                    tx.send((svc, msg.json::<serde_json::Value>()?)).await.ok();
                    Ok::<(), exocom::relay::Error>(())
                }
            })
            .connect()
            .await
            .unwrap();
        relays.push(r);
    }
    let web = bus.relay("web").await;
    let sent = web.publish("user.created", &json!({ "user": "ada" })).await.unwrap();
    assert_eq!(sent.receivers, 2);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap());
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got[0], ("mailer".to_string(), json!({ "user": "ada" })));
    assert_eq!(got[1], ("todo".to_string(), json!({ "user": "ada" })));
    // Exactly once per service.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err());
}

#[tokio::test]
async fn instances_of_one_service_share_the_work() {
    let bus = TestBus::start().await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut instances = Vec::new();
    for n in 0..2 {
        let seen = seen.clone();
        let r = bus
            .builder("todo")
            .handle("jobs.run", [1], move |_msg, _reply| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap().entry(format!("instance-{n}")).or_default() += 1;
                    Ok::<(), exocom::relay::Error>(())
                }
            })
            .connect()
            .await
            .unwrap();
        instances.push(r);
    }
    let web = bus.relay("web").await;
    for i in 0..40 {
        web.send("jobs.run", &json!({ "job": i })).await.unwrap();
    }
    for _ in 0..100 {
        if seen.lock().unwrap().values().sum::<usize>() == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.values().sum::<usize>(), 40, "each job handled exactly once: {seen:?}");
    assert_eq!(seen.len(), 2, "both instances took work: {seen:?}");
    assert!(seen.values().all(|n| *n >= 10), "work is shared, not piled on one: {seen:?}");
}

#[tokio::test]
async fn a_version_goes_only_to_instances_that_handle_it() {
    let bus = TestBus::start().await;
    let seen: Seen = Arc::default();
    let mut instances = Vec::new();
    for v in [1u32, 2] {
        let seen = seen.clone();
        let r = bus
            .builder("todo")
            .handle("todos.create", [v], move |msg, reply| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(format!("v{v}-instance got v{}", msg.version()));
                    reply.reply("todos.created", &json!({})).await
                }
            })
            .connect()
            .await
            .unwrap();
        instances.push(r);
    }
    let web = bus.relay("web").await;
    for _ in 0..3 {
        let mut r =
            web.request_with("todos.create", &json!({}), &MessageOptions::new().version(2)).await.unwrap();
        r.next().await.unwrap().unwrap();
        let mut r =
            web.request_with("todos.create", &json!({}), &MessageOptions::new().version(1)).await.unwrap();
        r.next().await.unwrap().unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec!["v1-instance got v1", "v2-instance got v2"]);
}

#[tokio::test]
async fn a_message_for_an_offline_service_waits_until_it_connects() {
    let bus = TestBus::start().await;
    let web = bus.relay("web").await;
    let sent = web.send("todos.create", &json!({ "text": "while you were out" })).await.unwrap();
    assert_eq!(sent.receivers, 1);
    let (tx, mut rx) = mpsc::channel(4);
    let _todo = bus
        .builder("todo")
        .handle("todos.create", [1], move |msg, _reply| {
            let tx = tx.clone();
            async move {
                tx.send(msg.json::<serde_json::Value>()?).await.ok();
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, json!({ "text": "while you were out" }));
}

#[tokio::test]
async fn a_denied_send_is_an_error_and_an_audit_line() {
    let bus = TestBus::start().await;
    let web = bus.relay("web").await;
    let err = web.send("payments.refund", &json!({ "cents": 100 })).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied, "{err}");
    assert!(err.to_string().contains("web may not send payments.refund"), "{err}");
    let line = bus.wait_audit(|v| v["event"] == "deny" && v["name"] == "payments.refund").await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["sender"], "web");
}

#[tokio::test]
async fn the_sender_is_stamped_by_the_router_not_the_client() {
    use exocom::wire::*;
    let bus = TestBus::start().await;
    let (tx, mut rx) = mpsc::channel(2);
    let _todo = bus
        .builder("todo")
        .handle("todos.create", [1], move |msg, _reply| {
            let tx = tx.clone();
            async move {
                tx.send((msg.sender().to_string(), msg.sender_id().to_string())).await.ok();
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let (mut reader, mut writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    let header = RoutingHeader {
        name: "todos.create".into(),
        version: 1,
        id: bytes::Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
        sender: "spiffe://example.org/svc/admin".into(),
        ..Default::default()
    };
    let send =
        Send { corr: 1, header: frame::encode_header(&header), payload: "{}".into(), ..Default::default() };
    writer.write_frame(&Frame { body: Some(Body::Send(send)) }).await.unwrap();
    read_until(&mut reader, |b| matches!(b, Body::Accepted(_))).await;
    let (sender, sender_id) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(sender, "web");
    assert_eq!(sender_id, "spiffe://example.org/svc/web");
}

#[tokio::test]
async fn a_reply_from_a_service_that_never_got_the_command_is_refused() {
    use exocom::wire::*;
    let bus = TestBus::start().await;
    let (id_tx, mut id_rx) = mpsc::channel(1);
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1], move |msg, _reply| {
            let id_tx = id_tx.clone();
            async move {
                // Hold the command open without replying; hand its id to the test.
                id_tx.send(msg.id()).await.ok();
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let _pending = web.request("todos.list", &json!({})).await.unwrap();
    let command_id = tokio::time::timeout(Duration::from_secs(5), id_rx.recv()).await.unwrap().unwrap();

    let (mut reader, mut writer) = raw_hello(bus.addr, &bus.identity("intruder")).await;
    let header = RoutingHeader {
        name: "todos.listing".into(),
        version: 1,
        id: bytes::Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes()),
        response_to: bytes::Bytes::copy_from_slice(command_id.as_bytes()),
        kind: Kind::Reply as i32,
        stream_final: true,
        ..Default::default()
    };
    let send =
        Send { corr: 9, header: frame::encode_header(&header), payload: "[]".into(), ..Default::default() };
    writer.write_frame(&Frame { body: Some(Body::Send(send)) }).await.unwrap();
    match read_until(&mut reader, |b| matches!(b, Body::Error(_) | Body::Accepted(_))).await {
        Body::Error(e) => {
            assert_eq!(e.corr, 9);
            assert_eq!(e.code, ErrorCode::ReplyNotAllowed as i32, "{}", e.message);
        }
        other => panic!("forged reply was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn replies_reach_a_requester_that_reconnected_meanwhile() {
    use exocom::wire::*;
    let bus = TestBus::start().await;
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1], |_msg, reply| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            reply.reply("todos.listing", &json!(["still here"])).await
        })
        .connect()
        .await
        .unwrap();
    // First connection of instance "raw-1": send the request, then vanish.
    let (mut reader, mut writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    let id = uuid::Uuid::new_v4();
    let header = RoutingHeader {
        name: "todos.list".into(),
        version: 1,
        id: bytes::Bytes::copy_from_slice(id.as_bytes()),
        expects_reply: true,
        ..Default::default()
    };
    let send =
        Send { corr: 1, header: frame::encode_header(&header), payload: "{}".into(), ..Default::default() };
    writer.write_frame(&Frame { body: Some(Body::Send(send)) }).await.unwrap();
    read_until(&mut reader, |b| matches!(b, Body::Accepted(_))).await;
    drop((reader, writer));
    // The same instance comes back on a new connection and gets the reply.
    let (mut reader, _writer) = raw_hello(bus.addr, &bus.identity("web")).await;
    match read_until(&mut reader, |b| matches!(b, Body::Deliver(_))).await {
        Body::Deliver(d) => {
            let h = frame::decode_header(&d.header).unwrap();
            assert_eq!(h.name, "todos.listing");
            assert_eq!(&h.response_to[..], id.as_bytes());
            assert_eq!(d.sender, "todo");
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn relays_reconnect_and_resubscribe_after_a_router_restart() {
    let bus = TestBus::start().await;
    let addr = bus.addr;
    let todo = bus
        .builder("todo")
        .handle("todos.list", [1], |_msg, reply| async move {
            reply.reply("todos.listing", &json!(["again"])).await
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    web.request_one("todos.list", &json!({})).await.unwrap();

    // Stop the router and start a new one on the same address.
    let dir = bus.stop().await;
    let bus = TestBus::start_in(dir, BusOptions::default(), Some(addr)).await;
    let mut ok = false;
    for _ in 0..100 {
        if todo.is_connected()
            && web.is_connected()
            && web.request_one("todos.list", &json!({})).await.is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "relays did not reconnect and re-subscribe to the restarted router");
    drop(bus);
}

/// A payload sent with `send_bytes` / `publish_bytes` arrives byte for byte,
/// not JSON-encoded (here bytes that are not JSON at all).
#[tokio::test]
async fn raw_payloads_arrive_byte_for_byte() {
    let bus = TestBus::start().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    let _todo = bus
        .builder("todo")
        .handle("todos.create", [], move |msg, _reply| {
            let _ = tx.send(msg.payload().to_vec());
            async { Ok::<(), exocom::relay::Error>(()) }
        })
        .handle("user.created", [], move |msg, _reply| {
            let _ = tx2.send(msg.payload().to_vec());
            async { Ok::<(), exocom::relay::Error>(()) }
        })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    let binary: Vec<u8> = vec![0, 159, 146, 150, b'"', 255];
    web.send_bytes("todos.create", binary.clone(), &MessageOptions::new()).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), binary);
    web.publish_bytes("user.created", &b"plain text"[..], &MessageOptions::new()).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), b"plain text");
}
