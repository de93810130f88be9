//! Tests of the relay against a scripted router over in-memory pipes (no
//! TLS): handshake, send/accept/deny, deliveries and acks, duplicates,
//! handler failures and panics, streamed replies both ways, timeouts, the
//! circuit breaker, reconnects and graceful close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::connection::Connector;
use super::handler::{HEAVY_RETRY_EVERY, INLINE_POLL_LIMIT, SLOW_POLLS_TO_HEAVY};
use super::*;
use crate::tls::IdentityDir;
use crate::wire::frame::{decode_header, encode_header};
use crate::wire::{
    Accepted, Body, Deliver, Error as ErrorFrame, ErrorCode, Frame, FrameReader, FrameWriter, Kind,
    RoutingHeader, Welcome,
};

const IDENTITY: &str = "spiffe://example.org/svc/web";

/// Hands each new connection's router end to the test.
struct PipeConnector {
    peers: mpsc::Sender<DuplexStream>,
    refuse: Arc<AtomicBool>,
}

impl Connector for PipeConnector {
    type Stream = DuplexStream;

    async fn connect(&self) -> Result<DuplexStream, Error> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unreachable, "connection refused (test)"));
        }
        let (client, server) = tokio::io::duplex(256 * 1024);
        self.peers.send(server).await.map_err(|_| Error::new(ErrorKind::Unreachable, "test router gone"))?;
        Ok(client)
    }
}

/// The router's end of one connection.
struct Peer {
    reader: FrameReader<ReadHalf<DuplexStream>>,
    writer: FrameWriter<WriteHalf<DuplexStream>>,
}

impl Peer {
    fn new(stream: DuplexStream) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self { reader: FrameReader::new(r, 1 << 20), writer: FrameWriter::new(w) }
    }

    async fn expect(&mut self) -> Body {
        let frame = tokio::time::timeout(Duration::from_secs(30), self.reader.read_frame())
            .await
            .expect("the relay sent nothing")
            .expect("readable frame")
            .expect("connection open");
        frame.body.expect("body")
    }

    async fn send(&mut self, body: Body) {
        self.writer.write_frame(&Frame { body: Some(body) }).await.expect("write");
    }

    /// Hello → Welcome → Subscribe; returns the Subscribe.
    async fn handshake(&mut self) -> (crate::wire::Hello, crate::wire::Subscribe) {
        let Body::Hello(hello) = self.expect().await else { panic!("expected Hello") };
        self.send(Body::Welcome(Welcome {
            protocol: 1,
            identity: IDENTITY.into(),
            service: "web".into(),
            max_frame: 1 << 20,
            router: "test".into(),
        }))
        .await;
        let Body::Subscribe(sub) = self.expect().await else { panic!("expected Subscribe") };
        (hello, sub)
    }

    /// Expects a Send; returns its corr and decoded header.
    async fn expect_send(&mut self) -> (u64, RoutingHeader, crate::wire::Send) {
        match self.expect().await {
            Body::Send(send) => (send.corr, decode_header(&send.header).expect("header"), send),
            other => panic!("expected Send, got {other:?}"),
        }
    }

    async fn deny(&mut self, corr: u64, message: &str) {
        let code = ErrorCode::Denied as i32;
        self.send(Body::Error(ErrorFrame { corr, code, message: message.into() })).await;
    }

    async fn accept(&mut self, corr: u64, receivers: u32) {
        self.send(Body::Accepted(Accepted { corr, receivers })).await;
    }

    /// Expects `n` sends, each message id once, and accepts each for one
    /// receiver; returns the ids.
    async fn accept_each_once(
        &mut self,
        n: usize,
        check: impl Fn(&crate::wire::Send),
    ) -> std::collections::HashSet<Bytes> {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let (corr, header, send) = self.expect_send().await;
            check(&send);
            assert!(seen.insert(header.id.clone()), "a message was sent twice");
            self.accept(corr, 1).await;
        }
        seen
    }
}

struct Harness {
    peers: mpsc::Receiver<DuplexStream>,
    refuse: Arc<AtomicBool>,
}

impl Harness {
    fn new() -> (Self, PipeConnector) {
        let (tx, rx) = mpsc::channel(4);
        let refuse = Arc::new(AtomicBool::new(false));
        (Self { peers: rx, refuse: Arc::clone(&refuse) }, PipeConnector { peers: tx, refuse })
    }

    async fn next_peer(&mut self) -> Peer {
        Peer::new(self.peers.recv().await.expect("a connection"))
    }
}

fn builder() -> RelayBuilder {
    Relay::builder("unused:0", IdentityDir::new("unused")).request_timeout(Duration::from_secs(5))
}

/// Connects `builder` to a scripted router that completes the handshake.
async fn connected(builder: RelayBuilder) -> (Relay, Peer, Harness) {
    let (mut harness, connector) = Harness::new();
    let connecting = tokio::spawn(builder.connect_with(connector));
    let mut peer = harness.next_peer().await;
    peer.handshake().await;
    let relay = connecting.await.unwrap().expect("connected");
    (relay, peer, harness)
}

fn command(name: &str, expects_reply: bool) -> RoutingHeader {
    let id = Bytes::copy_from_slice(Uuid::new_v4().as_bytes());
    RoutingHeader {
        name: name.into(),
        version: 1,
        id: id.clone(),
        origin_id: id,
        kind: Kind::Command as i32,
        sender: "spiffe://example.org/svc/todo".into(),
        expects_reply,
        ..Default::default()
    }
}

fn deliver(tag: u64, header: &RoutingHeader, payload: &str) -> Body {
    Body::Deliver(Deliver {
        tag,
        header: encode_header(header),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        sender: "todo".into(),
        sender_id: "spiffe://example.org/svc/todo".into(),
        timestamp_ms: 1_700_000_000_000,
        attempt: 1,
        ..Default::default()
    })
}

fn reply_to(command: &RoutingHeader, name: &str, seq: u64, last: bool) -> RoutingHeader {
    RoutingHeader {
        name: name.into(),
        version: 1,
        id: Bytes::copy_from_slice(Uuid::new_v4().as_bytes()),
        origin_id: command.origin_id.clone(),
        response_to: command.id.clone(),
        kind: Kind::Reply as i32,
        stream_seq: seq,
        stream_final: last,
        ..Default::default()
    }
}

#[tokio::test]
async fn handshake_says_hello_and_subscribes_every_handler() {
    let b = builder()
        .prefetch(7)
        .handle("todos.list", [1], |_i: Incoming, _r: Responder| async { Ok::<_, Error>(()) })
        .handle("todos.list", [2], |_i: Incoming, _r: Responder| async { Ok::<_, Error>(()) })
        .handle("todo.created", [], |_i: Incoming, _r: Responder| async { Ok::<_, Error>(()) });
    let (mut harness, connector) = Harness::new();
    let connecting = tokio::spawn(b.connect_with(connector));
    let mut peer = harness.next_peer().await;
    let (hello, sub) = peer.handshake().await;
    let relay = connecting.await.unwrap().unwrap();
    assert_eq!(hello.protocol, crate::wire::PROTOCOL_VERSION);
    assert_eq!(hello.instance, relay.instance());
    assert_eq!(sub.prefetch, 7);
    let names: Vec<_> = sub.subscriptions.iter().map(|s| (s.name.as_str(), s.versions.clone())).collect();
    assert_eq!(names, [("todo.created", vec![]), ("todos.list", vec![1, 2])]);
    assert_eq!(relay.service().as_deref(), Some("web"));
    assert!(relay.is_connected());
}

#[tokio::test]
async fn an_unknown_identity_fails_connect_with_its_kind() {
    let (mut harness, connector) = Harness::new();
    let connecting = tokio::spawn(builder().connect_with(connector));
    let mut peer = harness.next_peer().await;
    assert!(matches!(peer.expect().await, Body::Hello(_)));
    peer.send(Body::Error(ErrorFrame {
        corr: 0,
        code: ErrorCode::UnknownIdentity as i32,
        message: "spiffe://example.org/svc/ghost is not in the policy".into(),
    }))
    .await;
    let err = connecting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownIdentity);
    assert!(err.message().contains("ghost"));
}

#[tokio::test]
async fn an_unreachable_router_fails_connect() {
    let (harness, connector) = Harness::new();
    harness.refuse.store(true, Ordering::SeqCst);
    let err = builder().connect_with(connector).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable);
}

#[tokio::test]
async fn send_resolves_on_accepted_and_a_denial_is_an_error() {
    let (relay, mut peer, _h) = connected(builder()).await;
    let r = relay.clone();
    let sending =
        tokio::spawn(async move { r.send("todos.create", &serde_json::json!({"text": "a"})).await });
    let (corr, header, send) = peer.expect_send().await;
    assert_eq!(header.name, "todos.create");
    assert_eq!(header.kind, Kind::Command as i32);
    assert_eq!(header.sender, IDENTITY);
    assert_eq!(header.sender_instance, relay.instance());
    assert!(!header.expects_reply);
    assert_eq!(header.seal, SEAL_PLAIN);
    assert_eq!(&send.payload[..], br#"{"text":"a"}"#);
    peer.accept(corr, 2).await;
    let sent = sending.await.unwrap().unwrap();
    assert_eq!(sent.receivers, 2);
    assert_eq!(sent.id.as_bytes(), &header.id[..]);

    let r = relay.clone();
    let sending = tokio::spawn(async move { r.send("payments.refund", &1).await });
    let (corr, _, _) = peer.expect_send().await;
    peer.deny(corr, "web may not send payments.refund").await;
    let err = sending.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);
    assert_eq!(err.message(), "web may not send payments.refund");

    let r = relay.clone();
    let publishing = tokio::spawn(async move { r.publish("todo.created", "a").await });
    let (corr, header, _) = peer.expect_send().await;
    assert_eq!(header.kind, Kind::Event as i32);
    peer.accept(corr, 0).await;
    assert_eq!(publishing.await.unwrap().unwrap().receivers, 0);
}

#[tokio::test]
async fn deliveries_are_acked_duplicates_dropped_failures_and_panics_nacked() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let b = builder().handle("todos.create", [1], move |msg: Incoming, _r: Responder| {
        let c = Arc::clone(&c);
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            let text: String = msg.json()?;
            assert_eq!(msg.sender(), "todo");
            match text.as_str() {
                "fail" => Err(Error::new(ErrorKind::Io, "handler failed")),
                "panic" => panic!("handler panicked on purpose"),
                _ => Ok(()),
            }
        }
    });
    let (_relay, mut peer, _h) = connected(b).await;

    let first = command("todos.create", false);
    peer.send(deliver(1, &first, r#""ok""#)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
    peer.send(deliver(2, &first, r#""ok""#)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![2] }), "duplicate acked");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "duplicate not handled again");

    peer.send(deliver(3, &command("todos.create", false), r#""fail""#)).await;
    assert_eq!(peer.expect().await, Body::Nack(crate::wire::Nack { tag: 3, requeue: true }));
    peer.send(deliver(4, &command("todos.create", false), r#""panic""#)).await;
    assert_eq!(peer.expect().await, Body::Nack(crate::wire::Nack { tag: 4, requeue: true }));
    peer.send(deliver(5, &command("todos.create", false), "not json")).await;
    assert_eq!(peer.expect().await, Body::Nack(crate::wire::Nack { tag: 5, requeue: true }));

    peer.send(deliver(6, &command("todos.create", false), r#""ok""#)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![6] }), "alive after a panic");

    let mut v9 = command("todos.create", false);
    v9.version = 9;
    peer.send(deliver(7, &v9, r#""ok""#)).await;
    assert_eq!(peer.expect().await, Body::Nack(crate::wire::Nack { tag: 7, requeue: false }), "no handler");
}

/// Payloads of 16 KiB and more go through `begin_open` (a sealing codec
/// finishes them off the connection task; this plain one opens them at
/// once); they go the same way to the handler as small ones: acked once
/// handled, a duplicate acked but not handled again, an unknown version
/// dead-lettered.
#[tokio::test]
async fn large_deliveries_are_acked_deduplicated_and_dead_lettered_like_small_ones() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let b = builder().handle("todos.create", [1], move |msg: Incoming, _r: Responder| {
        c.fetch_add(1, Ordering::SeqCst);
        let len = msg.json::<String>().map(|t| t.len());
        async move {
            assert_eq!(len?, 40_000);
            Ok::<_, Error>(())
        }
    });
    let (_relay, mut peer, _h) = connected(b).await;
    let big = format!("\"{}\"", "x".repeat(40_000));
    let first = command("todos.create", false);
    peer.send(deliver(1, &first, &big)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
    peer.send(deliver(2, &first, &big)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![2] }), "duplicate acked");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "duplicate not handled again");
    let mut v9 = command("todos.create", false);
    v9.version = 9;
    peer.send(deliver(3, &v9, &big)).await;
    assert_eq!(peer.expect().await, Body::Nack(crate::wire::Nack { tag: 3, requeue: false }), "no handler");
}

/// Sends the `files.read` request in a task of its own and collects its
/// replies until the stream ends.
fn read_request(relay: &Relay) -> tokio::task::JoinHandle<Result<Vec<Reply>, Error>> {
    let r = relay.clone();
    tokio::spawn(async move {
        let mut replies = r.request("files.read", "report.csv").await?;
        let mut got = Vec::new();
        while let Some(reply) = replies.next().await {
            got.push(reply?);
        }
        Ok(got)
    })
}

#[tokio::test]
async fn a_request_yields_streamed_replies_until_the_final_one() {
    let (relay, mut peer, _h) = connected(builder()).await;
    let requesting = read_request(&relay);
    let (corr, cmd, _) = peer.expect_send().await;
    assert!(cmd.expects_reply);
    peer.accept(corr, 1).await;
    peer.send(deliver(10, &reply_to(&cmd, "files.chunk", 0, false), r#""a,b""#)).await;
    peer.send(deliver(11, &reply_to(&cmd, "files.done", 1, true), "2")).await;
    let got = requesting.await.unwrap().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].name(), "files.chunk");
    assert_eq!(got[0].json::<String>().unwrap(), "a,b");
    assert_eq!(got[0].response_to().as_bytes(), &cmd.id[..]);
    assert_eq!(got[0].sender(), "todo");
    assert!(!got[0].is_final() && got[1].is_final());
    assert_eq!(got[1].stream_seq(), 1);
    // Both replies were acknowledged (possibly in one Ack frame).
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let Body::Ack(ack) = peer.expect().await else { panic!("expected Ack") };
        acked.extend(ack.tags);
    }
    assert_eq!(acked, [10, 11]);
}

/// A command accepted for two services ends only when both have sent their
/// final reply; a second final from the first service does not end it.
#[tokio::test]
async fn a_request_to_two_services_ends_after_both_final_replies() {
    let (relay, mut peer, _h) = connected(builder()).await;
    let requesting = read_request(&relay);
    let (corr, cmd, _) = peer.expect_send().await;
    peer.accept(corr, 2).await;
    let from = |tag: u64, service: &str, seq: u64| {
        let Body::Deliver(mut d) = deliver(tag, &reply_to(&cmd, "files.done", seq, true), "1") else {
            unreachable!()
        };
        d.sender = service.into();
        d.sender_id = format!("spiffe://example.org/svc/{service}");
        Body::Deliver(d)
    };
    peer.send(from(10, "todo", 0)).await;
    peer.send(from(11, "todo", 1)).await;
    peer.send(from(12, "archive", 0)).await;
    let got = requesting.await.unwrap().unwrap();
    let senders: Vec<&str> = got.iter().map(Reply::sender).collect();
    assert_eq!(senders, ["todo", "todo", "archive"]);
}

#[tokio::test]
async fn a_responder_streams_replies_that_answer_the_command() {
    let b = builder().handle("files.read", [], |_msg: Incoming, mut r: Responder| async move {
        r.stream("files.chunk", "a,b").await?;
        r.end("files.done", &1).await
    });
    let (_relay, mut peer, _h) = connected(b).await;
    let cmd = command("files.read", true);
    peer.send(deliver(1, &cmd, r#""x""#)).await;
    for seq in 0..2u64 {
        let (corr, header, _) = peer.expect_send().await;
        assert_eq!(header.kind, Kind::Reply as i32);
        assert_eq!(header.response_to, cmd.id);
        assert_eq!(header.origin_id, cmd.origin_id, "the reply stays in the command's activity");
        assert_eq!(header.stream_seq, seq);
        assert_eq!(header.stream_final, seq == 1);
        peer.accept(corr, 1).await;
    }
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
}

#[tokio::test]
async fn replying_to_a_one_way_command_sends_nothing() {
    let b = builder().handle("todos.create", [], |_m: Incoming, r: Responder| async move {
        r.reply("todos.created", &1).await
    });
    let (_relay, mut peer, _h) = connected(b).await;
    peer.send(deliver(1, &command("todos.create", false), "1")).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }), "no Send before the Ack");
}

#[tokio::test(start_paused = true)]
async fn silent_requests_time_out_and_open_the_circuit() {
    let b = builder().request_timeout(Duration::from_secs(2)).circuit_breaker(2, Duration::from_secs(30));
    let (relay, mut peer, _h) = connected(b).await;
    for _ in 0..2 {
        let r = relay.clone();
        let requesting = tokio::spawn(async move { r.request_one("todos.list", &()).await });
        let (corr, _, _) = peer.expect_send().await;
        peer.accept(corr, 1).await;
        let err = requesting.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
    let err = relay.request("todos.list", &()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    let err = relay.send("todos.list", &()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen, "the breaker is per name, for every call");
}

#[tokio::test(start_paused = true)]
async fn request_one_reports_a_refusal_a_missing_receiver_and_a_silent_router() {
    // request_one does not wait on the acceptance; each of these must still
    // reach it, through its reply buffer, with the router's reason.
    let b = builder().request_timeout(Duration::from_secs(2)).circuit_breaker(2, Duration::from_secs(30));
    let (relay, mut peer, _h) = connected(b).await;

    let r = relay.clone();
    let requesting = tokio::spawn(async move { r.request_one("payments.refund", &1).await });
    let (corr, _, _) = peer.expect_send().await;
    peer.deny(corr, "web may not send payments.refund").await;
    let err = requesting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Denied);
    assert_eq!(err.message(), "web may not send payments.refund");

    for _ in 0..2 {
        let r = relay.clone();
        let requesting = tokio::spawn(async move { r.request_one("todos.list", &()).await });
        let (corr, _, _) = peer.expect_send().await;
        peer.accept(corr, 0).await;
        let err = requesting.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.message().contains("no service received todos.list"), "{err}");
    }

    // Accepted by no service is not a failing path: the circuit stays closed.
    let r = relay.clone();
    let requesting = tokio::spawn(async move { r.request_one("todos.list", &()).await });
    let sent = tokio::time::timeout(Duration::from_secs(1), peer.expect_send()).await;
    assert!(sent.is_ok(), "the request was not sent: {:?}", requesting.await);
    let err = requesting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.message().contains("did not accept todos.list"), "never accepted: {err}");

    let r = relay.clone();
    let requesting = tokio::spawn(async move { r.request_one("todos.list", &()).await });
    let _ = peer.expect_send().await;
    relay.close().await;
    let err = requesting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_send_times_out() {
    let b = builder().request_timeout(Duration::from_secs(1));
    let (relay, mut peer, _h) = connected(b).await;
    let r = relay.clone();
    let sending = tokio::spawn(async move { r.send("todos.create", &1).await });
    let _ = peer.expect_send().await;
    assert_eq!(sending.await.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn outstanding_requests_are_bounded() {
    let (relay, mut peer, _h) = connected(builder().max_outstanding_requests(1)).await;
    let r = relay.clone();
    let first = tokio::spawn(async move { r.request("todos.list", &()).await });
    let (corr, _, _) = peer.expect_send().await;
    peer.accept(corr, 1).await;
    let replies = first.await.unwrap().unwrap();
    assert_eq!(relay.request("todos.list", &()).await.unwrap_err().kind(), ErrorKind::TooManyRequests);
    drop(replies);
    let r = relay.clone();
    let again = tokio::spawn(async move { r.request("todos.list", &()).await });
    let (corr, _, _) = peer.expect_send().await;
    peer.accept(corr, 1).await;
    assert!(again.await.unwrap().is_ok(), "a dropped request frees its slot");
}

#[tokio::test]
async fn reconnects_resubscribe_and_resend_unanswered_sends() {
    let b = builder().reconnect_backoff(Duration::from_millis(1), Duration::from_millis(5)).handle(
        "todos.list",
        [1],
        |_i: Incoming, _r: Responder| async { Ok::<_, Error>(()) },
    );
    let (relay, mut peer, mut harness) = connected(b).await;
    let r = relay.clone();
    let sending = tokio::spawn(async move { r.send("todos.create", &1).await });
    let (_, first_header, first) = peer.expect_send().await;
    drop(peer);

    let mut peer = harness.next_peer().await;
    let (_, sub) = peer.handshake().await;
    assert_eq!(sub.subscriptions.len(), 1, "subscriptions re-sent");
    let (corr, header, again) = peer.expect_send().await;
    assert_eq!(again.header, first.header, "the same header bytes, so the same message id");
    assert_eq!(header, first_header);
    peer.accept(corr, 1).await;
    assert_eq!(sending.await.unwrap().unwrap().receivers, 1);
}

#[tokio::test(start_paused = true)]
async fn sends_while_unreachable_fail_with_the_reason() {
    let (harness, connector) = Harness::new();
    harness.refuse.store(true, Ordering::SeqCst);
    let relay = builder()
        .retry_initial_connect(true)
        .request_timeout(Duration::from_secs(1))
        .connect_with(connector)
        .await
        .unwrap();
    let err = relay.send("todos.create", &1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    relay.close().await;
    assert_eq!(relay.send("todos.create", &1).await.unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn close_waits_for_running_handlers_and_acks_them() {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(std::sync::Mutex::new(Some(release_rx)));
    let started = Arc::new(tokio::sync::Notify::new());
    let s = Arc::clone(&started);
    let b = builder().handle("slow.job", [], move |_m: Incoming, _r: Responder| {
        let rx = release.lock().unwrap().take();
        let s = Arc::clone(&s);
        async move {
            s.notify_one();
            if let Some(rx) = rx {
                let _ = rx.await;
            }
            Ok::<_, Error>(())
        }
    });
    let (relay, mut peer, _h) = connected(b).await;
    peer.send(deliver(1, &command("slow.job", false), "1")).await;
    started.notified().await;
    let r = relay.clone();
    let closing = tokio::spawn(async move { r.close().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!closing.is_finished(), "close waits for the handler");
    release_tx.send(()).unwrap();
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
    closing.await.unwrap();
    assert!(!relay.is_connected());
}

#[tokio::test]
async fn a_slow_reader_gets_slow_consumer_not_a_stalled_connection() {
    let (relay, mut peer, _h) = connected(builder().reply_buffer(2)).await;
    let r = relay.clone();
    let requesting = tokio::spawn(async move { r.request("files.read", &()).await });
    let (corr, cmd, _) = peer.expect_send().await;
    peer.accept(corr, 1).await;
    let mut replies = requesting.await.unwrap().unwrap();
    for seq in 0..4 {
        peer.send(deliver(20 + seq, &reply_to(&cmd, "files.chunk", seq, false), "1")).await;
    }
    // The connection still works for others while the reader lags.
    let r = relay.clone();
    let sending = tokio::spawn(async move { r.send("todos.create", &1).await });
    let (corr, _, _) = loop {
        match peer.expect().await {
            Body::Send(s) => break (s.corr, (), ()),
            Body::Ack(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    peer.accept(corr, 1).await;
    sending.await.unwrap().unwrap();
    assert!(replies.next().await.unwrap().is_ok());
    assert!(replies.next().await.unwrap().is_ok());
    assert_eq!(replies.next().await.unwrap().unwrap_err().kind(), ErrorKind::SlowConsumer);
    assert!(replies.next().await.is_none());
}

/// More sends than the connection task's queue holds, while the router
/// reads nothing: the batch fills to its high-water mark, then the command
/// queue, and the sends past it wait for room (the boxed slow path of
/// `Shared::queue`). Every one is sent once and accepted.
#[tokio::test]
async fn sends_beyond_a_full_queue_wait_for_room_and_all_arrive() {
    const SENDS: usize = 6_000;
    let (relay, mut peer, _h) = connected(builder()).await;
    let r = relay.clone();
    let sending = tokio::spawn(async move {
        let opts = MessageOptions::new();
        let sends = (0..SENDS).map(|i| r.send_bytes("todos.create", Bytes::from(i.to_string()), &opts));
        futures_util::future::join_all(sends).await
    });
    // Let the batch and the command queue fill up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sending.is_finished());
    let seen = peer.accept_each_once(SENDS, |_| {}).await;
    let results = sending.await.unwrap();
    assert_eq!(results.len(), SENDS);
    for result in results {
        let sent = result.expect("accepted");
        assert_eq!(sent.receivers, 1);
        assert!(seen.contains(&sent.id.as_bytes()[..]));
    }
}

/// The router stops reading while the relay has far more to send than the
/// connection holds: the relay stops taking sends, but goes on reading what
/// the router sends, so a router whose own writes wait on this connection
/// is never stuck behind it. Once the router reads again, every send
/// arrives once.
#[tokio::test]
async fn a_relay_that_cannot_write_goes_on_reading() {
    // More frames than the command queue holds, 6 MiB in all.
    const SENDS: usize = 1_500;
    let (relay, mut peer, _h) = connected(builder()).await;
    let r = relay.clone();
    let sending = tokio::spawn(async move {
        let opts = MessageOptions::new();
        let payload = Bytes::from(vec![7u8; 4096]);
        let sends = (0..SENDS).map(|_| r.send_bytes("files.store", payload.clone(), &opts));
        futures_util::future::join_all(sends).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 6 MiB of sends against a 256 KiB pipe: the relay's writes are stuck.
    assert!(!sending.is_finished());
    // 1 MiB of late replies (consumed on receipt, tag 0: nothing to ack),
    // four times what the pipe holds: this write finishes only if the
    // relay reads while it cannot write.
    let stray = command("files.read", true);
    let replies = async {
        for seq in 0..256 {
            peer.send(deliver(0, &reply_to(&stray, "files.chunk", seq, false), &"x".repeat(4096))).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), replies).await.expect("the relay stopped reading");
    peer.accept_each_once(SENDS, |send| assert_eq!(send.payload.len(), 4096)).await;
    for result in sending.await.unwrap() {
        assert_eq!(result.expect("accepted").receivers, 1);
    }
}

/// A handler for `todos.create` that tells the test each time it has run.
fn signalling(builder: RelayBuilder) -> (RelayBuilder, mpsc::UnboundedReceiver<()>) {
    let (ran, runs) = mpsc::unbounded_channel();
    let b = builder.handle("todos.create", [1], move |_m: Incoming, _r: Responder| {
        let ran = ran.clone();
        async move {
            let _ = ran.send(());
            Ok::<(), Error>(())
        }
    });
    (b, runs)
}

// Paused time: the clock moves only when every task waits, and then straight
// to the next timer, so how long the ack waited is exact.
#[tokio::test(start_paused = true)]
async fn an_ack_waits_for_a_frame_to_go_with_and_goes_alone_after_the_ack_delay() {
    let (b, mut runs) = signalling(builder());
    let (relay, mut peer, _h) = connected(b).await;

    // Alone: nothing else to send, so it goes out when the delay is over.
    let start = tokio::time::Instant::now();
    peer.send(deliver(1, &command("todos.create", false), r#""a""#)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
    assert_eq!(start.elapsed(), super::connection::ACK_DELAY, "a lone ack waits exactly the delay");

    // With company: a send made while the ack waits carries it along, ahead
    // of the delay (an unbatched ack would arrive before the Send).
    let start = tokio::time::Instant::now();
    peer.send(deliver(2, &command("todos.create", false), r#""b""#)).await;
    runs.recv().await.expect("handler ran");
    runs.recv().await.expect("handler ran");
    let r = relay.clone();
    let sending = tokio::spawn(async move { r.send("todos.archive", &1).await });
    let (corr, header, _) = peer.expect_send().await;
    assert_eq!(header.name, "todos.archive");
    assert_eq!(
        peer.expect().await,
        Body::Ack(crate::wire::Ack { tags: vec![2] }),
        "the ack came with the send"
    );
    assert!(start.elapsed() < super::connection::ACK_DELAY, "it did not wait for the delay");
    peer.accept(corr, 1).await;
    sending.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn with_a_prefetch_of_one_an_ack_goes_out_at_once() {
    // Holding the only credit back would stall the router's next delivery.
    let (b, _runs) = signalling(builder().prefetch(1));
    let (_relay, mut peer, _h) = connected(b).await;
    let start = tokio::time::Instant::now();
    peer.send(deliver(1, &command("todos.create", false), r#""a""#)).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![1] }));
    assert_eq!(start.elapsed(), Duration::ZERO, "the ack did not wait");
}

/// Registers a `todos.create` handler that reports the task it ran in and
/// whose first poll runs far over the inline limit on the payload "slow".
fn reporting_tasks(b: RelayBuilder) -> (RelayBuilder, mpsc::UnboundedReceiver<Option<tokio::task::Id>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let b = b.handle("todos.create", [1], move |msg: Incoming, _r: Responder| {
        let task = tokio::task::try_id();
        if msg.json::<String>().ok().as_deref() == Some("slow") {
            // Before the handler's first await, so inside its first poll.
            std::thread::sleep(INLINE_POLL_LIMIT * 20);
        }
        let _ = tx.send(task);
        async { Ok::<(), Error>(()) }
    });
    (b, rx)
}

/// Delivers `payload` to `todos.create`, waits for its ack and returns the
/// task the handler ran in.
async fn handled_in(
    peer: &mut Peer,
    tasks: &mut mpsc::UnboundedReceiver<Option<tokio::task::Id>>,
    tag: u64,
    payload: &str,
) -> Option<tokio::task::Id> {
    peer.send(deliver(tag, &command("todos.create", false), &format!("{payload:?}"))).await;
    assert_eq!(peer.expect().await, Body::Ack(crate::wire::Ack { tags: vec![tag] }), "message {tag} acked");
    tasks.recv().await.expect("the handler ran")
}

/// A handler's first poll runs on the connection task, and slow first
/// polls in a row make it heavy: its messages then start in tasks of their
/// own, each its own, still acked. (The exact counting is tested in
/// `handler.rs` with given durations; here a "quick" poll can be measured
/// slow when the test machine preempts the thread, so only what holds
/// either way is asserted.)
#[tokio::test]
async fn a_handler_slow_several_times_in_a_row_starts_in_tasks_of_its_own() {
    let (b, mut tasks) = reporting_tasks(builder().prefetch(1));
    let (_relay, mut peer, _h) = connected(b).await;
    let connection_task = handled_in(&mut peer, &mut tasks, 1, "quick").await;
    let mut tag = 1;
    // A run of slow polls one short of heavy and a quick one: all inline.
    for payload in std::iter::repeat_n("slow", SLOW_POLLS_TO_HEAVY as usize - 1).chain(["quick"]) {
        tag += 1;
        let task = handled_in(&mut peer, &mut tasks, tag, payload).await;
        assert_eq!(task, connection_task, "message {tag} ({payload}) started on the connection task");
    }
    for _ in 0..SLOW_POLLS_TO_HEAVY {
        tag += 1;
        handled_in(&mut peer, &mut tasks, tag, "slow").await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        tag += 1;
        let task = handled_in(&mut peer, &mut tasks, tag, "quick").await;
        assert!(task.is_some() && task != connection_task, "message {tag} started in a task of its own");
        assert!(!seen.contains(&task), "each in a task of its own");
        seen.push(task);
    }
}

/// A heavy handler that has become quick starts on the connection task
/// again (within a few retries: a retry measured slow on a busy test
/// machine waits for the next).
#[tokio::test]
async fn a_heavy_handler_that_became_quick_starts_on_the_connection_task_again() {
    let (b, mut tasks) = reporting_tasks(builder().prefetch(1));
    let (_relay, mut peer, _h) = connected(b).await;
    let mut tag = 1;
    let connection_task = handled_in(&mut peer, &mut tasks, tag, "quick").await;
    for _ in 0..SLOW_POLLS_TO_HEAVY {
        tag += 1;
        handled_in(&mut peer, &mut tasks, tag, "slow").await;
    }
    tag += 1;
    assert_ne!(handled_in(&mut peer, &mut tasks, tag, "quick").await, connection_task, "heavy");
    let mut inline_in_a_row = 0;
    let mut sent = 0;
    while inline_in_a_row < 3 {
        tag += 1;
        sent += 1;
        assert!(sent <= 4 * HEAVY_RETRY_EVERY, "back on the connection task within four retries");
        if handled_in(&mut peer, &mut tasks, tag, "quick").await == connection_task {
            inline_in_a_row += 1;
        } else {
            inline_in_a_row = 0;
        }
    }
    assert!(sent >= HEAVY_RETRY_EVERY, "not before the first retry");
}
