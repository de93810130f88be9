//! One relay connection: the TLS handshake, `Hello`, then reading frames
//! and handing them to the core, while a writer task batches outgoing frames.
//!
//! Everything a peer can get wrong ends here with an error frame and, where
//! the connection cannot go on, a close: a failed handshake, a missing or
//! foreign `Hello`, a malformed or oversized frame. It never panics on input
//! and never affects another connection. It checks each send against the
//! policy before the core sees it, so the core only routes.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info, info_span, warn};

use super::core::{Command, ConnHandle, Delivery, Durable, Outbound, Route};
use super::decisions::SendCache;
use super::keys::KeyDirectory;
use super::message::{Message, Sender, now_ms};
use super::metrics::Metrics;
use super::{RouterLimits, TlsHandle};
use crate::admin::alerts::Alerts;
use crate::audit::{self, AuditHandle, Event, Record};
use crate::policy::Policy;
use crate::policy::{Rate, TokenBucket};
use crate::shutdown::Shutdown;
use crate::tls;
use crate::wire::{
    self, Accepted, Body, ConnectionError, Error, ErrorCode, Frame, FrameError, FrameReader, FrameWriter,
    Kind, PROTOCOL_VERSION, Pong, Welcome,
};

/// What every connection task shares.
pub(crate) struct Shared {
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: AuditHandle,
    pub core: mpsc::Sender<Command>,
    pub limits: RouterLimits,
    pub keys: KeyDirectory,
    pub next_conn: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub alerts: Arc<Alerts>,
    /// Send-rate buckets per service, for services whose policy sets a rate.
    pub rates: std::sync::Mutex<HashMap<Arc<str>, TokenBucket>>,
    /// Open connections per identity (SPIFFE URI).
    pub per_identity: std::sync::Mutex<HashMap<Arc<str>, usize>>,
    /// Live TLS settings: revocations reach open connections through it.
    pub tls: TlsHandle,
}

/// Holds one of an identity's connection slots; gives it back on drop.
struct IdentitySlot<'a> {
    shared: &'a Shared,
    identity: Arc<str>,
}

impl<'a> IdentitySlot<'a> {
    fn take(shared: &'a Shared, identity: &str) -> Option<Self> {
        let mut map = shared.per_identity.lock().ok()?;
        let n = map.entry(Arc::from(identity)).or_insert(0);
        if *n >= shared.limits.max_connections_per_identity {
            return None;
        }
        *n += 1;
        Some(IdentitySlot { shared, identity: Arc::from(identity) })
    }
}

impl Drop for IdentitySlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shared.per_identity.lock()
            && let Some(n) = map.get_mut(&self.identity)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) {
    let span = info_span!("conn", peer.addr = %remote, peer.id = tracing::field::Empty);
    async move {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                let reason = tls::handshake_failure_reason(&err);
                warn!(reason, detail = %tls::handshake_failure_detail(&err), "TLS handshake refused");
                handshake_failed(&shared, remote, reason);
                return;
            }
            Err(_) => {
                warn!("TLS handshake timed out");
                handshake_failed(&shared, remote, "timeout");
                return;
            }
        };
        let identity = match tls::peer_identity(tls.get_ref().1) {
            Ok(id) => id,
            Err(err) => {
                warn!(error = %err, "peer identity refused");
                handshake_failed(&shared, remote, "bad_identity");
                return;
            }
        };
        tracing::Span::current().record("peer.id", identity.uri.as_str());
        let facts = match tls::leaf_facts(tls.get_ref().1) {
            Ok(f) => f,
            Err(err) => {
                warn!(error = %err, "peer certificate unreadable");
                handshake_failed(&shared, remote, "bad_identity");
                return;
            }
        };
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd, shared.limits.max_frame);
        let mut writer = FrameWriter::new(wr);
        let Some(_slot) = IdentitySlot::take(&shared, &identity.uri) else {
            warn!(identity = %identity.uri, "too many connections of this identity");
            let text = format!(
                "{} already has {} connections open, the most the router allows",
                identity.uri, shared.limits.max_connections_per_identity
            );
            let _ = writer.write_frame(&error_frame(0, ErrorCode::LimitExceeded, text)).await;
            let _ = writer.shutdown().await;
            return;
        };
        let Some(sender) = greet(&mut reader, &mut writer, &shared, &identity.uri, remote).await else {
            let _ = writer.shutdown().await;
            return;
        };
        info!(service = %sender.service, instance = %sender.instance, "connected");
        run(reader, writer, sender, remote, facts, &shared, shutdown).await;
    }
    .instrument(span)
    .await
}

fn handshake_failed(shared: &Shared, remote: SocketAddr, reason: &'static str) {
    let mut r = Record::new(Event::HandshakeFailed);
    r.remote = Some(remote);
    r.reason = Some(Arc::from(reason));
    r.decision = Some(audit::Decision::Deny);
    let _ = shared.audit.note(r);
    shared.metrics.handshake_failed(reason);
    shared.alerts.handshake_failure(remote, reason);
}

fn error_frame(corr: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame { body: Some(Body::Error(Error { corr, code: code as i32, message: message.into() })) }
}

/// Reads `Hello`, maps the certificate identity to a policy service, answers `Welcome`.
async fn greet(
    reader: &mut Reader,
    writer: &mut FrameWriter<WriteHalf<TlsStream<TcpStream>>>,
    shared: &Shared,
    uri: &str,
    remote: SocketAddr,
) -> Option<Sender> {
    let refuse = |code, text: String| error_frame(0, code, text);
    let hello = match tokio::time::timeout(shared.limits.hello_timeout, reader.read_frame()).await {
        Ok(Ok(Some(Frame { body: Some(Body::Hello(h)) }))) => h,
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(_))) => {
            let _ = writer
                .write_frame(&refuse(ErrorCode::ProtocolViolation, "the first frame must be Hello".into()))
                .await;
            return None;
        }
        Ok(Err(err)) => {
            let _ = writer.write_frame(&frame_error_reply(&err)).await;
            return None;
        }
        Err(_) => {
            debug!("no Hello in time");
            return None;
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        let text = format!(
            "protocol version {} is not supported; this router speaks {PROTOCOL_VERSION}",
            hello.protocol
        );
        let _ = writer.write_frame(&refuse(ErrorCode::UnsupportedProtocol, text)).await;
        return None;
    }
    let policy = shared.policy.load();
    let Some(service) = policy.service_for_identity(uri) else {
        warn!(identity = uri, "identity is not a service in the policy");
        let mut r = Record::new(Event::Deny);
        r.sender = Some(Arc::from(uri));
        r.remote = Some(remote);
        r.reason = Some(Arc::from("unknown_identity"));
        r.decision = Some(audit::Decision::Deny);
        let _ = shared.audit.note(r);
        shared.metrics.handshake_failed("unknown_identity");
        shared.alerts.denial(&Arc::from(uri), Some(remote));
        let text = format!("identity {uri} is not a service in the router's policy");
        let _ = writer.write_frame(&refuse(ErrorCode::UnknownIdentity, text)).await;
        return None;
    };
    let instance = if hello.instance.is_empty() || hello.instance.len() > 64 {
        uuid::Uuid::new_v4().to_string()
    } else {
        hello.instance
    };
    let sender = Sender {
        service: Arc::from(service),
        identity: Arc::from(uri),
        instance: Arc::from(instance),
        conn: shared.next_conn.fetch_add(1, Ordering::Relaxed),
    };
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        identity: uri.to_string(),
        service: service.to_string(),
        max_frame: shared.limits.max_frame as u64,
        router: format!("exocom/{}", env!("CARGO_PKG_VERSION")),
    };
    if writer.write_frame(&Frame { body: Some(Body::Welcome(welcome)) }).await.is_err() {
        return None;
    }
    Some(sender)
}

fn frame_error_reply(err: &ConnectionError) -> Frame {
    match err {
        ConnectionError::Frame(FrameError::TooLarge { .. }) => {
            error_frame(0, ErrorCode::FrameTooLarge, err.to_string())
        }
        _ => error_frame(0, ErrorCode::MalformedFrame, err.to_string()),
    }
}

async fn run(
    mut reader: Reader,
    writer: FrameWriter<WriteHalf<TlsStream<TcpStream>>>,
    sender: Sender,
    remote: SocketAddr,
    facts: tls::LeafFacts,
    shared: &Shared,
    mut shutdown: Shutdown,
) {
    let conn = sender.conn;
    let (out_tx, out_rx) = mpsc::channel(shared.limits.outbox);
    let kill = Arc::new(Notify::new());
    let mut write_task = tokio::spawn(write_loop(writer, out_rx).in_current_span());
    let handle = ConnHandle { sender: sender.clone(), remote, out: out_tx.clone(), kill: kill.clone() };
    if shared.core.send(Command::Connect(handle)).await.is_err() {
        return;
    }
    let mut r = Record::new(Event::Connect);
    r.sender = Some(sender.service.clone());
    r.sender_instance = Some(sender.instance.clone());
    r.remote = Some(remote);
    r.decision = Some(audit::Decision::Allow);
    let _ = shared.audit.note(r);

    // The certificate is checked at the handshake only; enforce its end here.
    let expiry = facts.not_after.duration_since(SystemTime::now()).unwrap_or_default();
    let expires = tokio::time::sleep(expiry.min(Duration::from_secs(400 * 24 * 3600)));
    tokio::pin!(expires);
    let mut revocations = shared.tls.revocations();
    let in_flight = Arc::new(Semaphore::new(shared.limits.max_in_flight.max(1)));
    let idle = shared.limits.idle_timeout.max(Duration::from_millis(100));
    let mut last_read = Instant::now();
    let frame_timeout = shared.limits.frame_timeout.max(Duration::from_millis(100));
    let mut partial_since: Option<Instant> = None;
    let mut idle_check = tokio::time::interval((idle / 2).min(frame_timeout / 2));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut decisions = SendCache::default();
    let reason = loop {
        tokio::select! {
            _ = shutdown.wait() => break "router shutting down",
            _ = kill.notified() => break "closed by router (not reading)",
            _ = &mut write_task => break "write side closed",
            _ = &mut expires => {
                let _ = out_tx.send(Outbound::Frame(error_frame(0, ErrorCode::Unspecified, "client certificate expired"))).await;
                break "certificate expired";
            }
            changed = revocations.changed() => {
                if changed.is_ok() && revocations.borrow_and_update().contains(&facts.serial) {
                    break "certificate revoked";
                }
            }
            _ = idle_check.tick() => {
                // A frame started but not finished: fine for a while, not forever.
                match (reader.has_partial_frame(), partial_since) {
                    (false, _) => partial_since = None,
                    (true, None) => partial_since = Some(Instant::now()),
                    (true, Some(since)) if since.elapsed() >= frame_timeout => break "frame not completed in time",
                    (true, Some(_)) => {}
                }
                let silent = last_read.elapsed();
                if silent >= idle * 2 {
                    break "idle";
                }
                if silent >= idle {
                    let ping = Frame { body: Some(Body::Ping(wire::Ping { nonce: 0 })) };
                    let _ = out_tx.try_send(Outbound::Frame(ping));
                }
            }
            frame = reader.read_frame() => match frame {
                Ok(Some(frame)) => {
                    last_read = Instant::now();
                    partial_since = None;
                    if let Err(why) = handle_frame(frame, &sender, shared, &out_tx, &in_flight, &mut decisions).await {
                        break why;
                    }
                }
                Ok(None) => break "peer closed",
                Err(ConnectionError::Io(err)) => {
                    debug!(error = %err, "read failed");
                    break "read failed";
                }
                Err(err) => {
                    warn!(error = %err, "bad frame; closing this connection");
                    let _ = out_tx.send(Outbound::Frame(frame_error_reply(&err))).await;
                    break "bad frame";
                }
            },
        }
    };
    debug!(reason, "connection ending");
    let _ = shared.core.send(Command::Disconnect { conn }).await;
    if shutdown.is_shutdown() {
        let _ = out_tx
            .send(Outbound::Frame(error_frame(0, ErrorCode::ShuttingDown, "router shutting down")))
            .await;
    }
    drop(out_tx);
    // The writer ends once the core has dropped its copy of the outbox and
    // everything queued is written; bound the wait.
    if !write_task.is_finished() {
        let _ = tokio::time::timeout(shared.limits.drain_timeout, &mut write_task).await;
        write_task.abort();
    }
    let mut r = Record::new(Event::Disconnect);
    r.sender = Some(sender.service.clone());
    r.sender_instance = Some(sender.instance.clone());
    r.remote = Some(remote);
    r.reason = Some(Arc::from(reason));
    if matches!(reason, "certificate expired" | "certificate revoked") {
        warn!(reason, "closing the connection: its certificate is no longer valid");
        r.decision = Some(audit::Decision::Deny);
    }
    let _ = shared.audit.note(r);
    info!(reason, "disconnected");
}

/// Handles one frame; `Err` closes the connection with that reason.
async fn handle_frame(
    frame: Frame,
    sender: &Sender,
    shared: &Shared,
    out: &mpsc::Sender<Outbound>,
    in_flight: &Arc<Semaphore>,
    decisions: &mut SendCache,
) -> Result<(), &'static str> {
    let conn = sender.conn;
    let cmd = match frame.body {
        Some(Body::Send(send)) => match check_send(send, sender, shared, decisions) {
            Ok(mut cmd) => {
                // Waiting here stops reading this connection until answers
                // go out: the peer's unanswered sends stay bounded.
                let permit = in_flight.clone().acquire_owned().await.map_err(|_| "closing")?;
                match &mut cmd {
                    Command::Route(Route { permit: p, .. }) | Command::Reply { permit: p, .. } => {
                        *p = Some(permit)
                    }
                    _ => {}
                }
                cmd
            }
            Err(frame) => {
                return out.send(Outbound::Frame(*frame)).await.map_err(|_| "write side closed");
            }
        },
        Some(Body::Subscribe(s)) => {
            Command::Subscribe { conn, subscriptions: s.subscriptions, prefetch: s.prefetch }
        }
        Some(Body::Ack(a)) => Command::Ack { conn, tags: a.tags },
        Some(Body::Nack(n)) => Command::Nack { conn, tag: n.tag, requeue: n.requeue },
        Some(Body::Ping(p)) => {
            let pong = Frame { body: Some(Body::Pong(Pong { nonce: p.nonce })) };
            return out.send(Outbound::Frame(pong)).await.map_err(|_| "write side closed");
        }
        Some(Body::Pong(_)) => return Ok(()),
        Some(Body::Announce(a)) => {
            shared.keys.announce(&sender.service, &sender.instance, a.announcement, &shared.audit);
            return Ok(());
        }
        Some(Body::KeyQuery(q)) => {
            let dir = shared.keys.query(&q.services);
            let frame = Frame { body: Some(Body::KeyDirectory(dir)) };
            return out.send(Outbound::Frame(frame)).await.map_err(|_| "write side closed");
        }
        _ => {
            let frame =
                error_frame(0, ErrorCode::ProtocolViolation, "this frame is not one a relay may send here");
            let _ = out.send(Outbound::Frame(frame)).await;
            return Err("protocol violation");
        }
    };
    shared.core.send(cmd).await.map_err(|_| "router core stopped")
}

/// Checks a `Send` against the header rules, the audit log's health and the
/// policy. Returns the command for the core, or the error frame to answer.
fn check_send(
    send: wire::Send,
    sender: &Sender,
    shared: &Shared,
    decisions: &mut SendCache,
) -> Result<Command, Box<Frame>> {
    let corr = send.corr;
    let msg = Message::from_send(send.header, send.payload, sender.clone(), now_ms())
        .map_err(|err| Box::new(error_frame(corr, ErrorCode::InvalidHeader, err.to_string())))?;
    if !shared.audit.is_available() {
        return Err(Box::new(error_frame(
            corr,
            ErrorCode::AuditUnavailable,
            "audit log unavailable; the router refuses new sends",
        )));
    }
    let cached = decisions.get(&shared.policy.load(), &sender.service, &msg.name, msg.version);
    let decision = &cached.decision;
    if !decision.allowed {
        super::core::audit_record(&shared.audit, Event::Deny, &msg, None, Some(&decision.rule), |_| {});
        shared.metrics.denied(&msg.name, &sender.service, "policy");
        shared.alerts.denial(&sender.service, None);
        let text =
            format!("{} may not send {} (v{}): {}", sender.service, msg.name, msg.version, decision.rule);
        return Err(Box::new(error_frame(corr, ErrorCode::Denied, text)));
    }
    if let Some(max) = cached.max_size
        && msg.payload.len() as u64 > max
    {
        super::core::audit_record(&shared.audit, Event::Deny, &msg, None, Some(&decision.rule), |r| {
            r.reason = Some(Arc::from("too_large"))
        });
        shared.metrics.denied(&msg.name, &sender.service, "too_large");
        shared.alerts.denial(&sender.service, None);
        let text =
            format!("{} bytes exceeds the policy's limit of {max} bytes for {}", msg.payload.len(), msg.name);
        return Err(Box::new(error_frame(corr, ErrorCode::MessageTooLarge, text)));
    }
    if let Some(rate) = cached.rate
        && !take_token(shared, &sender.service, rate)
    {
        super::core::audit_record(&shared.audit, Event::Deny, &msg, None, Some(&decision.rule), |r| {
            r.reason = Some(Arc::from("rate_limited"))
        });
        shared.metrics.denied(&msg.name, &sender.service, "rate_limited");
        let text = format!(
            "{} is over its send rate of {}/s (burst {})",
            sender.service, rate.per_second, rate.burst
        );
        return Err(Box::new(error_frame(corr, ErrorCode::RateLimited, text)));
    }
    let msg = Arc::new(msg);
    if msg.kind == Kind::Reply {
        return Ok(Command::Reply { msg, corr, tags: send.tags, permit: None });
    }
    let receivers = cached.receivers;
    let mut record = Record::new(Event::Send);
    fill(&mut record, &msg, &decision.rule);
    let ticket = shared.audit.record(record).map_err(|_| {
        Box::new(error_frame(
            corr,
            ErrorCode::AuditUnavailable,
            "audit log unavailable; the router refuses new sends",
        ))
    })?;
    Ok(Command::Route(Route {
        msg,
        corr,
        receivers,
        tags: send.tags,
        grants: send.grants,
        audit: Some(ticket),
        permit: None,
    }))
}

/// Takes one token from the service's bucket (made on first use, re-rated
/// when a policy reload changed the rate).
fn take_token(shared: &Shared, service: &Arc<str>, rate: Rate) -> bool {
    let now = Instant::now();
    let Ok(mut buckets) = shared.rates.lock() else { return true };
    let bucket = buckets.entry(service.clone()).or_insert_with(|| TokenBucket::new(rate, now));
    if bucket.rate() != rate {
        bucket.set_rate(rate, now);
    }
    bucket.try_take(now)
}

fn fill(r: &mut Record, msg: &Message, rule: &Arc<str>) {
    r.id = Some(msg.id);
    r.name = Some(msg.name.clone());
    r.version = Some(msg.version);
    r.origin_id = msg.origin_id;
    r.sender = Some(msg.sender.service.clone());
    r.sender_instance = Some(msg.sender.instance.clone());
    r.rule = Some(rule.clone());
    r.bytes = Some(msg.payload.len() as u64);
    r.decision = Some(audit::Decision::Allow);
}

/// An `Accepted` waiting for its send's audit and store writes. Answers go
/// out in send order, so only the oldest is polled: a later one that is
/// ready waits for it anyway.
struct PendingAccept {
    corr: u64,
    receivers: u32,
    durable: Option<Durable>,
    /// The send's in-flight slot, released once its answer is taken for writing.
    _permit: Option<OwnedSemaphorePermit>,
    hold: bool,
}

/// Longest a request's `Accepted` waits, once written to the batch, for
/// another frame to go out with (its reply, as a rule). The requester waits
/// for the reply anyway; in the same write both cost it one read.
pub(crate) const ACCEPT_HOLD: Duration = Duration::from_millis(1);

/// The answer to the oldest pending send, once its writes are done, and
/// whether it may wait for company ([`ACCEPT_HOLD`]).
fn poll_oldest(pending: &mut VecDeque<PendingAccept>, cx: &mut Context<'_>) -> Poll<(Frame, bool)> {
    let Some(oldest) = pending.front_mut() else { return Poll::Pending };
    let result = match oldest.durable.as_mut() {
        None => Ok(()),
        Some(durable) => ready!(Pin::new(durable).poll(cx)),
    };
    let Some(PendingAccept { corr, receivers, hold, .. }) = pending.pop_front() else { return Poll::Pending };
    Poll::Ready(match result {
        Ok(()) => (accepted(corr, receivers), hold),
        Err(code) => {
            (error_frame(corr, code, "the message could not be made durable; it was not accepted"), false)
        }
    })
}

/// The frames batched since the last write, and whether every one of them
/// is a request's `Accepted` that may wait for company.
struct Batch<W> {
    writer: FrameWriter<W>,
    /// Nothing but holdable `Accepted` frames since the last write (true
    /// when empty).
    holdable: bool,
}

impl<W: AsyncWrite + Unpin> Batch<W> {
    fn push(&mut self, frame: &Frame, hold: bool) {
        self.holdable &= hold;
        self.writer.push(frame);
    }

    fn push_deliver(&mut self, delivery: &Delivery) {
        self.holdable = false;
        self.writer.push_deliver(&delivery.parts());
    }

    /// Whether the batch may wait for company: it holds only requests'
    /// `Accepted` frames.
    fn may_wait(&self) -> bool {
        self.holdable && self.writer.pending() > 0
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.writer.flush().await?;
        self.holdable = true;
        Ok(())
    }
}

/// The writer: batches frames into as few writes as possible; `Accepted`
/// frames wait, in order, for their audit and store writes.
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Outbound>,
) -> Result<(), ConnectionError> {
    const BATCH_BYTES: usize = 256 * 1024;
    let mut batch = Batch { writer, holdable: true };
    let mut pending: VecDeque<PendingAccept> = VecDeque::new();
    let mut open = true;
    // Set while a batch of requests' `Accepted` frames waits for company.
    let hold_timer = tokio::time::sleep(ACCEPT_HOLD);
    tokio::pin!(hold_timer);
    let mut holding = false;
    while open || !pending.is_empty() {
        tokio::select! {
            biased;
            (frame, hold) = std::future::poll_fn(|cx| poll_oldest(&mut pending, cx)), if !pending.is_empty() => {
                batch.push(&frame, hold);
                // Accepts resolve a whole audit batch at a time: take every ready one.
                while let Poll::Ready((frame, hold)) = poll_oldest(&mut pending, &mut Context::from_waker(Waker::noop())) {
                    batch.push(&frame, hold);
                }
            }
            out = rx.recv(), if open => match out {
                Some(out) => push(&mut batch, &mut pending, out),
                None => open = false,
            },
            () = &mut hold_timer, if holding => batch.holdable = false,
        }
        drain(&mut batch, &mut pending, &mut rx, BATCH_BYTES);
        if batch.writer.pending() < BATCH_BYTES {
            // The core hands frames over one command at a time; flushing at
            // once would cost a TLS record and a syscall per frame. One yield
            // lets the producers add what they are about to send.
            tokio::task::yield_now().await;
            drain(&mut batch, &mut pending, &mut rx, BATCH_BYTES);
        }
        if open && batch.may_wait() {
            if !holding {
                holding = true;
                hold_timer.as_mut().reset(tokio::time::Instant::now() + ACCEPT_HOLD);
            }
            continue;
        }
        holding = false;
        batch.flush().await?;
    }
    // `shutdown` writes what is still batched first.
    batch.writer.shutdown().await
}

/// Moves what is already queued into the batch, up to `max` bytes.
fn drain<W: AsyncWrite + Unpin>(
    batch: &mut Batch<W>,
    pending: &mut VecDeque<PendingAccept>,
    rx: &mut mpsc::Receiver<Outbound>,
    max: usize,
) {
    while batch.writer.pending() < max {
        match rx.try_recv() {
            Ok(out) => push(batch, pending, out),
            Err(_) => break,
        }
    }
}

fn push<W: AsyncWrite + Unpin>(batch: &mut Batch<W>, pending: &mut VecDeque<PendingAccept>, out: Outbound) {
    match out {
        Outbound::Frame(frame) => batch.push(&frame, false),
        Outbound::Deliver(delivery) => batch.push_deliver(&delivery),
        // The in-flight permit is released as the answer is queued for writing.
        Outbound::Accept { corr, receivers, durable: None, hold, .. } if pending.is_empty() => {
            batch.push(&accepted(corr, receivers), hold)
        }
        Outbound::Accept { corr, receivers, durable, permit, hold } => {
            pending.push_back(PendingAccept { corr, receivers, durable, _permit: permit, hold })
        }
    }
}

fn accepted(corr: u64, receivers: u32) -> Frame {
    Frame { body: Some(Body::Accepted(Accepted { corr, receivers })) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::store::{StoreError, StoreTicket};

    fn store_write(rx: oneshot::Receiver<Result<(), StoreError>>) -> StoreTicket {
        Box::pin(
            async move { rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("writer gone".into()))) },
        )
    }

    fn answer(frame: Frame) -> (u64, Result<u32, i32>) {
        match frame.body {
            Some(Body::Accepted(a)) => (a.corr, Ok(a.receivers)),
            Some(Body::Error(e)) => (e.corr, Err(e.code)),
            other => panic!("not an answer: {other:?}"),
        }
    }

    /// Answers wait for their own writes and go out in send order, whichever
    /// write finishes first; a failed write refuses its send; each send's
    /// in-flight slot is released as its answer is taken.
    #[test]
    fn answers_go_out_in_send_order_and_a_failed_write_refuses_its_send() {
        let slots = Arc::new(Semaphore::new(3));
        let slot = || Some(Arc::clone(&slots).try_acquire_owned().unwrap());
        let ((tx1, rx1), (tx2, rx2)) = (oneshot::channel(), oneshot::channel());
        let mut pending = VecDeque::new();
        for (corr, rx) in [(1, rx1), (2, rx2)] {
            let durable = super::super::core::combine(None, vec![store_write(rx)]);
            pending.push_back(PendingAccept { corr, receivers: 1, durable, _permit: slot(), hold: false });
        }
        pending.push_back(PendingAccept {
            corr: 3,
            receivers: 0,
            durable: None,
            _permit: slot(),
            hold: false,
        });
        let cx = &mut Context::from_waker(Waker::noop());

        tx2.send(Ok(())).unwrap();
        assert!(poll_oldest(&mut pending, cx).is_pending(), "the second is durable, the first is not");
        assert_eq!(slots.available_permits(), 0);

        tx1.send(Err(StoreError::Unavailable("disk full".into()))).unwrap();
        let answers: Vec<_> = std::iter::from_fn(|| match poll_oldest(&mut pending, cx) {
            Poll::Ready((frame, _)) => Some(answer(frame)),
            Poll::Pending => None,
        })
        .collect();
        assert_eq!(
            answers,
            [(1, Err(ErrorCode::StoreUnavailable as i32)), (2, Ok(1)), (3, Ok(0))],
            "in send order; the failed write refused"
        );
        assert!(pending.is_empty());
        assert_eq!(slots.available_permits(), 3);
    }

    fn accept(corr: u64, hold: bool) -> Outbound {
        Outbound::Accept { corr, receivers: 1, durable: None, permit: None, hold }
    }

    /// A writer loop over an in-memory pipe; the test reads what it writes.
    fn writer_loop() -> (mpsc::Sender<Outbound>, FrameReader<tokio::io::DuplexStream>) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(write_loop(FrameWriter::new(ours), rx));
        (tx, FrameReader::new(theirs, 1 << 20))
    }

    async fn next(reader: &mut FrameReader<tokio::io::DuplexStream>) -> Frame {
        reader.read_frame().await.unwrap().unwrap()
    }

    // Paused time: the clock moves only when every task waits, and then
    // straight to the next timer, so how long a frame waited is exact.
    #[tokio::test(start_paused = true)]
    async fn a_requests_accepted_waits_for_company_and_no_longer_than_the_hold() {
        let (tx, mut reader) = writer_loop();

        // Alone, it goes out when the hold is over.
        let start = tokio::time::Instant::now();
        tx.send(accept(1, true)).await.unwrap();
        assert_eq!(answer(next(&mut reader).await), (1, Ok(1)));
        assert_eq!(start.elapsed(), ACCEPT_HOLD, "it waited the whole hold");

        // With the reply behind it, both go at once, the answer first.
        let start = tokio::time::Instant::now();
        tx.send(accept(2, true)).await.unwrap();
        tokio::task::yield_now().await;
        let reply = Frame { body: Some(Body::Pong(crate::wire::Pong { nonce: 7 })) };
        tx.send(Outbound::Frame(reply)).await.unwrap();
        assert_eq!(answer(next(&mut reader).await), (2, Ok(1)));
        assert_eq!(next(&mut reader).await.body, Some(Body::Pong(crate::wire::Pong { nonce: 7 })));
        assert_eq!(start.elapsed(), Duration::ZERO, "company ended the wait");

        // Any other answer goes at once.
        let start = tokio::time::Instant::now();
        tx.send(accept(3, false)).await.unwrap();
        assert_eq!(answer(next(&mut reader).await), (3, Ok(1)));
        assert_eq!(start.elapsed(), Duration::ZERO, "a send's answer does not wait");

        // A closing connection writes what it holds.
        tx.send(accept(4, true)).await.unwrap();
        drop(tx);
        assert_eq!(answer(next(&mut reader).await), (4, Ok(1)));
    }
}
