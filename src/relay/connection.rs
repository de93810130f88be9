//! The connection task: the one task that owns the connection to the router.
//!
//! It dials (through a [`Connector`]: TLS in production, an in-memory pipe
//! in tests), says `Hello`, waits for `Welcome`, subscribes with every
//! handler's names and versions, and re-sends what was in flight. Then it
//! reads frames and takes commands from the relay handle and the handler
//! tasks, and writes what they send itself: frames collect in one batch
//! that goes out whenever nothing else is ready, so a burst costs one TLS
//! record run and one syscall, with no hand-off to another task. When the
//! connection drops it reconnects with jittered exponential backoff, forever,
//! until shutdown. On shutdown it stops taking deliveries, waits (bounded)
//! for running handlers so their acks go out, and closes.
//!
//! The only user code it runs is a handler's first poll, timed: a handler
//! that finishes on it is done without a task of its own, one that waits
//! goes on in its own task, and one whose first polls keep taking longer
//! than [`INLINE_POLL_LIMIT`](super::handler::INLINE_POLL_LIMIT) starts in
//! tasks of its own (`handler.rs`). It never blocks on a channel a user
//! drains: reply buffers are written with `try_send`. Large payloads are
//! opened in tasks of their own, but only after the part of opening that
//! needs the codec's state was done here, in delivery order; the result
//! comes back here before the dedup window.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::codec::{Begun, CodecError, Opened, SealedPayload};
use super::dedup::{DedupWindow, MessageId, Verdict};
use super::error::{BoxError, Error, ErrorKind};
use super::handler::{HandlerFn, HandlerFuture, HandlerTable, Incoming, Responder};
use super::inflight::Inflight;
use super::request::Reply;
use super::shared::{Command, Handling, OpenedDelivery, SessionInfo, SessionState, Shared, codec_error};
use crate::shutdown::Shutdown;
use crate::wire::frame::decode_header;
use crate::wire::{
    Ack, Body, DEFAULT_MAX_FRAME, Deliver, Frame, FrameReader, FrameWriter, Hello, Kind, Nack,
    PROTOCOL_VERSION, Ping, Pong, RoutingHeader, Send, Subscribe, Welcome,
};

/// Most delivery tags one `Ack` frame waits to collect.
const MAX_ACK_BATCH: usize = 256;
/// Longest an `Ack` waits for another frame to go out with. Acks that
/// would go out alone wait this long for the next send, reply or batch of
/// acks, so a request/reply service writes once per message instead of
/// twice; an idle connection sends them when this passes.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(2);
/// Payloads from this size on are opened off the connection task (see
/// [`ConnectionTask::on_deliver`]): opening 64 KiB takes ~75 µs, long enough
/// for the router to queue up behind a relay that reads and opens in turn.
/// The router keeps at most `prefetch` deliveries unacknowledged, so at most
/// that many opens run at once.
const OPEN_ASIDE_BYTES: usize = 16 * 1024;

/// Opens byte streams to the router.
pub(crate) trait Connector: std::marker::Send + Sync + 'static {
    /// The stream type (a TLS stream in production).
    type Stream: AsyncRead + AsyncWrite + std::marker::Send + Unpin + 'static;

    /// Opens one stream.
    fn connect(&self) -> impl Future<Output = Result<Self::Stream, Error>> + std::marker::Send;
}

/// Dials the router over TCP and TLS 1.3 with our client certificate.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) addr: String,
    pub(crate) server_name: rustls_pki_types::ServerName<'static>,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl Connector for TlsConnector {
    type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    async fn connect(&self) -> Result<Self::Stream, Error> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Error::from_io(&format!("connecting to {}", self.addr), e))?;
        // Small frames (acks, replies) must not wait for Nagle; batching is ours.
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        tls.connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::from_io(&format!("TLS handshake with {}", self.addr), e))
    }
}

/// How a session ended.
enum SessionEnd {
    /// Shutdown: do not reconnect.
    Closed,
    /// The connection failed: reconnect.
    Lost(Error),
}

/// A connection that has been welcomed.
struct Session<S> {
    reader: FrameReader<ReadHalf<S>>,
    writer: FrameWriter<WriteHalf<S>>,
    welcome: Welcome,
}

/// A send written (or to be written) to the router, kept until answered so
/// it can be re-sent, with the same message id, after a reconnect.
struct PendingSend {
    /// The `Send` frame, built once (and written again as it is after a
    /// reconnect).
    frame: Frame,
    done: oneshot::Sender<Result<u32, Error>>,
    /// The caller waits on the request's reply buffer, not on `done`.
    quiet: bool,
}

/// The task's state.
pub(crate) struct ConnectionTask<C> {
    pub(crate) connector: C,
    pub(crate) shared: Arc<Shared>,
    pub(crate) handlers: Arc<HandlerTable>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) state: watch::Sender<SessionState>,
    pub(crate) shutdown: Shutdown,
    generation: u64,
    next_corr: u64,
    inflight: Inflight<PendingSend>,
    dedup: DedupWindow,
    backoff: Backoff,
    acks: Vec<u64>,
    /// Deliveries being opened off this task, of any connection.
    opening: usize,
}

impl<C: Connector> ConnectionTask<C> {
    pub(crate) fn new(
        connector: C,
        shared: Arc<Shared>,
        handlers: Arc<HandlerTable>,
        commands: mpsc::Receiver<Command>,
        state: watch::Sender<SessionState>,
        shutdown: Shutdown,
    ) -> Self {
        let s = &shared.settings;
        let dedup = DedupWindow::new(s.dedup_capacity, s.dedup_max_age);
        let backoff = Backoff::new(s.reconnect_base, s.reconnect_cap);
        Self {
            connector,
            shared,
            handlers,
            commands,
            state,
            shutdown,
            generation: 0,
            next_corr: 1,
            inflight: Inflight::default(),
            dedup,
            backoff,
            acks: Vec::new(),
            opening: 0,
        }
    }

    /// Runs until shutdown. `first` learns how the first attempt went (when
    /// the caller waits for it).
    pub(crate) async fn run(mut self, mut first: Option<oneshot::Sender<Result<(), Error>>>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            if shutdown.is_shutdown() {
                break;
            }
            let attempt = tokio::select! {
                attempt = self.open_session() => attempt,
                () = shutdown.wait() => break,
            };
            match attempt {
                Ok(session) => {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    let started = Instant::now();
                    match self.serve(session).await {
                        SessionEnd::Closed => break,
                        SessionEnd::Lost(err) => {
                            tracing::warn!(error = %err, "connection to the router lost; reconnecting");
                            // A session that dies at once must not reset the
                            // backoff, or a flapping router gets hammered.
                            if started.elapsed() >= Duration::from_secs(1) {
                                self.backoff.reset();
                            }
                            self.publish_down(&err);
                        }
                    }
                }
                Err(err) => {
                    if let Some(tx) = first.take() {
                        self.publish_down(&err);
                        self.close_all();
                        let _ = tx.send(Err(err));
                        return;
                    }
                    tracing::warn!(error = %err, "cannot connect to the router; retrying");
                    self.publish_down(&err);
                }
            }
            let delay = self.backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.wait() => break,
            }
        }
        self.close_all();
    }

    async fn open_session(&mut self) -> Result<Session<C::Stream>, Error> {
        let timeout = self.shared.settings.connect_timeout;
        let handshake = async {
            let stream = self.connector.connect().await?;
            let (r, w) = tokio::io::split(stream);
            let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME);
            let mut writer = FrameWriter::new(w);
            let hello = Hello {
                protocol: PROTOCOL_VERSION,
                instance: self.shared.instance.clone(),
                client: self.shared.settings.client_name.clone(),
            };
            writer
                .write_frame(&Frame { body: Some(Body::Hello(hello)) })
                .await
                .map_err(|e| Error::from_connection("sending Hello", e))?;
            let welcome = match reader.read_frame().await {
                Ok(Some(Frame { body: Some(Body::Welcome(w)) })) => w,
                Ok(Some(Frame { body: Some(Body::Error(e)) })) => {
                    return Err(Error::from_code(e.code, &e.message));
                }
                Ok(Some(_)) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "the router answered Hello with an unexpected frame",
                    ));
                }
                Ok(None) => {
                    return Err(Error::new(
                        ErrorKind::ConnectionLost,
                        "the router closed the connection during the handshake",
                    ));
                }
                Err(e) => return Err(Error::from_connection("waiting for Welcome", e)),
            };
            Ok(Session { reader, writer, welcome })
        };
        tokio::time::timeout(timeout, handshake).await.map_err(|_| {
            Error::new(ErrorKind::Timeout, format!("no Welcome from the router within {timeout:?}"))
        })?
    }

    async fn serve(&mut self, session: Session<C::Stream>) -> SessionEnd {
        self.generation += 1;
        let generation = self.generation;
        let Session { mut reader, writer, welcome } = session;
        let max_frame =
            usize::try_from(welcome.max_frame).ok().filter(|m| *m > 0).unwrap_or(DEFAULT_MAX_FRAME);
        if generation == 1 {
            tracing::debug!(identity = %welcome.identity, service = %welcome.service, "connected to the router");
        } else {
            tracing::info!(identity = %welcome.identity, service = %welcome.service, "reconnected to the router");
        }
        self.state.send_modify(|s| {
            s.info = Some(Arc::new(SessionInfo {
                identity: welcome.identity,
                service: welcome.service,
                max_frame,
            }));
            s.connected = true;
            s.last_error = None;
        });

        let mut out = Outbox { writer };
        self.resume(&mut out);

        let refresh_every = self.shared.codec.refresh_interval();
        let mut refresh = tokio::time::interval(refresh_every.unwrap_or(Duration::from_secs(3600)));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.reset();
        let mut shutdown = self.shutdown.clone();
        let mut drain_deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        // Liveness, checked twice per `keepalive`: ping after a keepalive of
        // silence, give up after twice that. A flag per frame, no clock read.
        let keepalive = self.shared.settings.keepalive;
        let (mut heard, mut silent_ticks) = (false, 0u32);
        let mut alive = tokio::time::interval(keepalive / 2);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        alive.reset();
        // Armed while acks wait for company (see `ACK_DELAY`).
        let ack_timer = tokio::time::sleep(ACK_DELAY);
        tokio::pin!(ack_timer);
        let mut ack_armed = false;
        let end = loop {
            if drain_deadline.is_some() && self.dedup.in_progress() == 0 && self.opening == 0 {
                break SessionEnd::Closed;
            }
            let draining = drain_deadline.is_some();
            let step = tokio::select! {
                biased;
                () = shutdown.wait(), if !draining => {
                    drain_deadline = Some(Box::pin(tokio::time::sleep(self.shared.settings.drain_timeout)));
                    Ok(())
                }
                () = async { if let Some(d) = drain_deadline.as_mut() { d.as_mut().await } }, if draining => {
                    tracing::warn!(running = self.dedup.in_progress(), "handlers still running at shutdown; leaving them unacknowledged");
                    break SessionEnd::Closed;
                }
                frame = reader.read_frame() => match frame {
                    Ok(Some(frame)) => {
                        heard = true;
                        self.on_frame(frame, generation, &mut out, draining)
                    }
                    Ok(None) => Err(SessionEnd::Lost(Error::new(ErrorKind::ConnectionLost, "the router closed the connection"))),
                    Err(e) => Err(SessionEnd::Lost(Error::from_connection("reading from the router", e))),
                },
                _ = alive.tick() => {
                    // Large buffers no longer needed go back to the allocator.
                    crate::wire::pool::tidy();
                    silent_ticks = if std::mem::take(&mut heard) { 0 } else { silent_ticks + 1 };
                    if silent_ticks >= 4 {
                        let text = format!("the router sent nothing for {:?} (not even a Pong)", keepalive * 2);
                        Err(SessionEnd::Lost(Error::new(ErrorKind::ConnectionLost, text)))
                    } else {
                        if silent_ticks >= 2 {
                            out.push(Body::Ping(Ping { nonce: 0 }));
                        }
                        Ok(())
                    }
                }
                () = &mut ack_timer, if ack_armed => {
                    ack_armed = false;
                    self.flush_acks(&mut out);
                    Ok(())
                }
                _ = refresh.tick(), if refresh_every.is_some() => {
                    for body in self.shared.codec.refresh_frames(&self.shared.instance) {
                        out.push(body);
                    }
                    Ok(())
                }
                // Above the high-water mark, no new work until the batch
                // is out; reading goes on, so the router never waits on us.
                command = self.commands.recv(), if out.has_room() => match command {
                    Some(command) => self.on_command(command, generation, &mut out, draining),
                    None => Err(SessionEnd::Closed),
                },
                // Last: the batch goes out when nothing else is ready, so
                // what a burst of frames and commands sends is written once.
                // No yield first: tokio's yield wakes an idle worker, which
                // then steals this task or its handlers and every hand-off
                // after it crosses threads (W1 ran 15-20 % slower with it).
                written = out.flush(), if out.writer.is_dirty() => written,
            };
            let step = match step {
                // Acks wait while more work is already queued, so one Ack
                // frame carries many tags and the router dispatches in bursts.
                Ok(())
                    if self.acks.len() < MAX_ACK_BATCH
                        && (!self.commands.is_empty() || reader.has_buffered_frame()) =>
                {
                    Ok(())
                }
                // Acks that would go out alone wait, as long as what they
                // hold back stays a small part of our prefetch credit.
                Ok(())
                    if !self.acks.is_empty()
                        && !draining
                        && !out.writer.is_dirty()
                        && self.acks.len() * 4 < self.shared.settings.prefetch as usize =>
                {
                    if !ack_armed {
                        ack_armed = true;
                        ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    Ok(())
                }
                Ok(()) => {
                    let busy = self.acks.len() >= MAX_ACK_BATCH;
                    ack_armed = false;
                    self.flush_acks(&mut out);
                    // While frames keep arriving the flush branch above may
                    // not run for a while: write what is due now, as far as
                    // the socket takes it without waiting.
                    if busy || out.writer.pending() >= FLUSH_BYTES { out.write_now() } else { Ok(()) }
                }
                Err(end) => Err(end),
            };
            if let Err(end) = step {
                break end;
            }
        };
        match end {
            SessionEnd::Closed => {
                self.flush_acks(&mut out);
                // What is batched goes out, then close_notify.
                let _ = tokio::time::timeout(Duration::from_secs(1), out.writer.shutdown()).await;
                SessionEnd::Closed
            }
            lost => lost,
        }
    }

    /// After `Welcome`: subscribe, then re-send everything still unanswered.
    fn resume<W: AsyncWrite + Unpin>(&mut self, out: &mut Outbox<W>) {
        let subscribe = Subscribe {
            subscriptions: self.handlers.subscriptions(),
            prefetch: self.shared.settings.prefetch,
        };
        // Keys first: a sender that learns we subscribed should find our key.
        for body in self.shared.codec.session_frames(&self.shared.instance) {
            out.push(body);
        }
        out.push(Body::Subscribe(subscribe));
        self.inflight.retain(|p| !p.done.is_closed());
        for p in self.inflight.values() {
            out.writer.push(&p.frame);
        }
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        generation: u64,
        out: &mut Outbox<WriteHalf<C::Stream>>,
        draining: bool,
    ) -> Result<(), SessionEnd> {
        match frame.body {
            Some(Body::Accepted(a)) => {
                if let Some(p) = self.inflight.remove(a.corr) {
                    if let Some(send) = sent(&p.frame)
                        && !send.grants.is_empty()
                    {
                        self.shared.codec.accepted(&send.header);
                    }
                    // The caller of a quiet send never polls `done`, so this
                    // wakes no one; it is answered first so that a caller woken
                    // by the reply buffer below finds it.
                    let _ = p.done.send(Ok(a.receivers));
                    if p.quiet && a.receivers == 0 {
                        self.answer_request(&p.frame, |name| {
                            Error::new(
                                ErrorKind::Timeout,
                                format!("no service received {name}, so no reply will come"),
                            )
                        });
                    }
                }
            }
            Some(Body::Error(e)) if e.corr != 0 => {
                if let Some(p) = self.inflight.remove(e.corr) {
                    let err = Error::from_code(e.code, &e.message);
                    if p.quiet {
                        self.answer_request(&p.frame, |_| err);
                    } else {
                        let _ = p.done.send(Err(err));
                    }
                }
            }
            Some(Body::Error(e)) => return Err(SessionEnd::Lost(Error::from_code(e.code, &e.message))),
            Some(Body::Deliver(d)) => self.on_deliver(d, generation, out, draining)?,
            Some(Body::Ping(p)) => out.push(Body::Pong(Pong { nonce: p.nonce })),
            Some(Body::KeyDirectory(d)) => self.shared.codec.key_directory(d),
            Some(Body::Pong(_)) => {}
            Some(_) | None => tracing::warn!("ignoring a frame the router should not send"),
        }
        Ok(())
    }

    fn on_deliver(
        &mut self,
        d: Deliver,
        generation: u64,
        out: &mut Outbox<WriteHalf<C::Stream>>,
        draining: bool,
    ) -> Result<(), SessionEnd> {
        let header = match decode_header(&d.header) {
            Ok(h) => h,
            Err(err) => {
                self.shared.rejections.count("malformed_header");
                tracing::warn!(error = %err, "dropping a delivery with an unreadable header");
                out.nack(d.tag, false);
                return Ok(());
            }
        };
        let Ok(id) = <MessageId>::try_from(&header.id[..]) else {
            self.shared.rejections.count("malformed_header");
            tracing::warn!(name = %header.name, "dropping a delivery without a valid message id");
            out.nack(d.tag, false);
            return Ok(());
        };
        if header.kind == Kind::Reply as i32 {
            // Replies are consumed on receipt: a late or duplicate one is
            // acknowledged and dropped, never redelivered. Tag 0 means the
            // router does not track the delivery, so there is nothing to ack.
            if d.tag != 0 {
                self.acks.push(d.tag);
            }
            self.on_reply(d, header, id);
            return Ok(());
        }
        if draining {
            out.nack(d.tag, true);
            return Ok(());
        }
        // Open before anything else looks at the message: a header or
        // payload the router altered must not reach the dedup window, the
        // handler lookup or the handler. A large payload is opened in a task
        // of its own, so this task reads the next frame meanwhile; what needs
        // the codec's state (a grant comes with its epoch's first delivery
        // only) is still done here, in delivery order.
        let opened = if d.payload.len() >= OPEN_ASIDE_BYTES {
            match self.shared.codec.begin_open(&d, &header) {
                Ok(Begun::Opening(opening)) => {
                    self.opening += 1;
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        let opened = opening.finish(&d, &header);
                        let delivery = OpenedDelivery { generation, deliver: d, header, id, opened };
                        let _ = shared.commands.send(Command::Opened(Box::new(delivery))).await;
                    });
                    return Ok(());
                }
                Ok(Begun::Opened(opened)) => Ok(opened),
                Err(err) => Err(err),
            }
        } else {
            self.shared.codec.open(&d, &header)
        };
        self.on_opened(d, header, id, opened, generation, out)
    }

    /// A delivery opened (or refused): past the dedup window to its handler.
    fn on_opened(
        &mut self,
        d: Deliver,
        header: RoutingHeader,
        id: MessageId,
        opened: Result<Opened, CodecError>,
        generation: u64,
        out: &mut Outbox<WriteHalf<C::Stream>>,
    ) -> Result<(), SessionEnd> {
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) => {
                let label = err.label();
                self.shared.rejections.count(label);
                tracing::warn!(name = %header.name, sender = %d.sender, reason = label, error = %err, "rejected a delivery that failed its end-to-end checks");
                if label == "replay" && self.dedup.begin(id) == Verdict::Duplicate {
                    // Already handled here (e.g. our ack was lost): drop it for good.
                    self.acks.push(d.tag);
                    return Ok(());
                }
                out.nack(d.tag, false);
                return Ok(());
            }
        };
        if self.dedup.begin(id) == Verdict::Duplicate {
            tracing::debug!(name = %header.name, attempt = d.attempt, "duplicate message id; acknowledged, not handled");
            self.acks.push(d.tag);
            return Ok(());
        }
        let Some(handler) = self.handlers.find(&header.name, header.version) else {
            self.dedup.finish(id, false);
            tracing::warn!(name = %header.name, version = header.version, "no handler for a delivered message; dead-lettering it");
            out.nack(d.tag, false);
            return Ok(());
        };
        let header = Arc::new(header);
        let incoming = Incoming {
            header: Arc::clone(&header),
            id: uuid::Uuid::from_bytes(id),
            sender: d.sender,
            sender_id: d.sender_id,
            timestamp_ms: d.timestamp_ms,
            attempt: d.attempt,
            payload: opened.payload,
        };
        let sealer = opened.replies.map(|s| Arc::new(std::sync::Mutex::new(s)));
        let responder =
            Responder { shared: Arc::clone(&self.shared), command: Arc::clone(&header), next_seq: 0, sealer };
        self.start_handler(
            handler,
            header,
            incoming,
            responder,
            Handling { generation, tag: d.tag, id },
            out,
        );
        Ok(())
    }

    /// Runs `handler` on `incoming` (whose header is `header`): its first
    /// poll here, the rest (if it waits) in a task of its own, which reports
    /// back with [`Command::Handled`].
    fn start_handler(
        &mut self,
        handler: HandlerFn,
        header: Arc<RoutingHeader>,
        incoming: Incoming,
        responder: Responder,
        of: Handling,
        out: &mut Outbox<WriteHalf<C::Stream>>,
    ) {
        if !handler.starts_inline() {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let made = make(&handler, incoming, responder);
                finish_handler(shared, made, header, of).await;
            });
            return;
        }
        let started = std::time::Instant::now();
        let polled = make(&handler, incoming, responder).map(|mut running| {
            // A noop waker is enough: a future left pending is polled again
            // at once by the task it moves into, which registers its waker.
            let poll = Pin::new(&mut running).poll(&mut Context::from_waker(Waker::noop()));
            (running, poll)
        });
        if handler.first_poll_took(started.elapsed()) {
            tracing::debug!(name = %header.name, "a handler's first polls ran long; its messages now start in tasks of their own");
        }
        let outcome = match polled {
            Ok((running, Poll::Pending)) => {
                tokio::spawn(finish_handler(Arc::clone(&self.shared), Ok(running), header, of));
                return;
            }
            Ok((_, Poll::Ready(outcome))) => outcome,
            Err(panic) => Err(panic),
        };
        self.handled(of, judge(&self.shared, &header, outcome), out);
    }

    /// A handler finished with `success`: the delivery is acked, or handed
    /// back for redelivery.
    fn handled(&mut self, of: Handling, success: bool, out: &mut Outbox<WriteHalf<C::Stream>>) {
        self.dedup.finish(of.id, success);
        if of.generation != self.generation {
            // The router redelivers what an old connection left
            // unacknowledged; the dedup window absorbs it if handled.
            return;
        }
        if success {
            self.acks.push(of.tag);
        } else {
            out.nack(of.tag, true);
        }
    }

    fn on_reply(&mut self, d: Deliver, header: RoutingHeader, id: MessageId) {
        let Ok(command) = <MessageId>::try_from(&header.response_to[..]) else {
            tracing::warn!(name = %header.name, "dropping a reply without a valid response_to");
            return;
        };
        let mut pending = self.shared.lock_replies();
        let Some(sink) = pending.get_mut(&command) else {
            tracing::debug!(name = %header.name, "reply to a request no longer waiting; dropped");
            return;
        };
        let opened = match sink.opener.as_mut() {
            Some(opener) => opener.open(&d, &header),
            None => self.shared.codec.open_reply(&d, &header),
        };
        let item = match opened {
            Ok(payload) => {
                if self.dedup.consume(id) == Verdict::Duplicate {
                    return;
                }
                Ok(Reply {
                    name: header.name,
                    version: header.version.max(1),
                    id: uuid::Uuid::from_bytes(id),
                    response_to: uuid::Uuid::from_bytes(command),
                    sender: d.sender,
                    sender_id: d.sender_id,
                    timestamp_ms: d.timestamp_ms,
                    stream_seq: header.stream_seq,
                    stream_final: header.stream_final,
                    payload,
                })
            }
            Err(err) => {
                let label = err.label();
                self.shared.rejections.count(label);
                tracing::warn!(name = %header.name, sender = %d.sender, reason = label, error = %err, "rejected a reply that failed its end-to-end checks");
                Err(codec_error(err))
            }
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = sink.tx.try_send(item) {
            tracing::warn!("a request's reply buffer is full; dropping the request (slow consumer)");
            sink.overflowed.store(true, Ordering::Release);
            pending.remove(&command);
        }
    }

    /// Puts the router's refusal of a quiet request into its reply buffer,
    /// where its caller waits.
    fn answer_request(&self, frame: &Frame, err: impl FnOnce(&str) -> Error) {
        let Some(Ok(header)) = sent(frame).map(|s| decode_header(&s.header)) else { return };
        let Ok(id) = <MessageId>::try_from(&header.id[..]) else { return };
        if let Some(sink) = self.shared.lock_replies().get(&id) {
            let _ = sink.tx.try_send(Err(err(&header.name)));
        }
    }

    fn on_command(
        &mut self,
        command: Command,
        generation: u64,
        out: &mut Outbox<WriteHalf<C::Stream>>,
        draining: bool,
    ) -> Result<(), SessionEnd> {
        match command {
            Command::Frame(body) => out.push(body),
            Command::Send { sealed, done, quiet } => {
                if done.is_closed() {
                    return Ok(());
                }
                let corr = self.next_corr;
                self.next_corr += 1;
                let frame = send_frame(corr, sealed);
                out.writer.push(&frame);
                self.inflight.insert(corr, PendingSend { frame, done, quiet });
            }
            Command::Opened(delivery) => {
                self.opening = self.opening.saturating_sub(1);
                let OpenedDelivery { generation: of, deliver, header, id, opened } = *delivery;
                if of != generation {
                    // Left unacknowledged on an old connection: redelivered.
                    return Ok(());
                }
                if draining {
                    out.nack(deliver.tag, true);
                    return Ok(());
                }
                self.on_opened(deliver, header, id, opened, generation, out)?;
            }
            Command::Handled { of, success } => self.handled(of, success, out),
        }
        Ok(())
    }

    /// Batches one `Ack` frame with the tags collected, if any.
    fn flush_acks<W: AsyncWrite + Unpin>(&mut self, out: &mut Outbox<W>) {
        if self.acks.is_empty() {
            return;
        }
        let tags = std::mem::take(&mut self.acks);
        out.push(Body::Ack(Ack { tags }));
    }

    fn publish_down(&self, err: &Error) {
        self.state.send_modify(|s| {
            s.connected = false;
            s.last_error = Some((err.kind(), err.message().to_owned()));
        });
    }

    /// Fails everything still waiting, and marks the relay closed.
    fn close_all(&mut self) {
        self.state.send_modify(|s| {
            s.connected = false;
            s.closed = true;
        });
        for p in self.inflight.drain() {
            let _ = p
                .done
                .send(Err(Error::new(ErrorKind::Closed, "the relay was closed before the router answered")));
        }
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Send { done, .. } = command {
                let _ = done.send(Err(Error::new(ErrorKind::Closed, "the relay is closed")));
            }
        }
        self.shared.lock_replies().clear();
        tracing::debug!("relay connection task stopped");
    }
}

/// A handler's future with panics caught.
type Running = futures_util::future::CatchUnwind<AssertUnwindSafe<HandlerFuture>>;

/// What a handler came to: its result, or the panic that stopped it.
type Outcome = Result<Result<(), BoxError>, Panic>;

/// A caught panic's payload.
type Panic = Box<dyn Any + std::marker::Send>;

/// The rest of a handler, in a task of its own (`made` as [`make`] gave it);
/// the outcome goes back to the connection task. A panic is caught at the
/// handler's future, so it fails that one message, never the relay.
async fn finish_handler(
    shared: Arc<Shared>,
    made: Result<Running, Panic>,
    header: Arc<RoutingHeader>,
    of: Handling,
) {
    // The handler's state is dropped with the panic; nothing shared is left half-updated.
    let outcome = match made {
        Ok(running) => running.await,
        Err(panic) => Err(panic),
    };
    let success = judge(&shared, &header, outcome);
    let _ = shared.commands.send(Command::Handled { of, success }).await;
}

/// The handler's future for `incoming`, panics caught; making it runs user
/// code too, so a panic there fails the message just the same.
fn make(handler: &HandlerFn, incoming: Incoming, responder: Responder) -> Result<Running, Panic> {
    std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(incoming, responder)))
        .map(|fut| AssertUnwindSafe(fut).catch_unwind())
}

/// Whether a handler's outcome counts as handled (logging why not).
fn judge(shared: &Shared, header: &RoutingHeader, outcome: Outcome) -> bool {
    let name = &header.name;
    match outcome {
        Ok(Ok(())) => {
            // Before the ack: from now on a copy of this message is a replay.
            shared.codec.processed(header);
            true
        }
        Ok(Err(err)) => {
            tracing::warn!(%name, error = %err, "handler failed; the message will be redelivered");
            false
        }
        Err(_) => {
            tracing::error!(%name, panicked = true, "handler did not finish; the message will be redelivered");
            false
        }
    }
}

fn send_frame(corr: u64, sealed: SealedPayload) -> Frame {
    let SealedPayload { header, payload, tags, grants } = sealed;
    Frame { body: Some(Body::Send(Send { corr, header, payload, tags, grants })) }
}

/// The `Send` inside a frame built by [`send_frame`].
fn sent(frame: &Frame) -> Option<&Send> {
    match &frame.body {
        Some(Body::Send(send)) => Some(send),
        _ => None,
    }
}

/// The batch of frames for the router, written by the connection task
/// itself. Handling a frame or a command never awaits: what it sends is
/// encoded into the batch, which the serve loop writes whenever nothing
/// else is ready. New commands wait while the batch is above
/// [`HIGH_WATER`]; frames the router's own traffic calls for (acks, nacks,
/// pongs) are bounded by the router's prefetch and pings.
struct Outbox<W> {
    writer: FrameWriter<W>,
}

/// Bytes batched before the connection task stops taking commands until the
/// batch is written.
const HIGH_WATER: usize = 256 * 1024;
/// Bytes batched from which a step writes at once instead of waiting for
/// nothing else to be ready.
const FLUSH_BYTES: usize = 32 * 1024;

impl<W: AsyncWrite + Unpin> Outbox<W> {
    fn push(&mut self, body: Body) {
        self.writer.push(&Frame { body: Some(body) });
    }

    fn nack(&mut self, tag: u64, requeue: bool) {
        self.push(Body::Nack(Nack { tag, requeue }));
    }

    fn has_room(&self) -> bool {
        self.writer.pending() < HIGH_WATER
    }

    /// Writes the batch (cancel-safe: progress stays in the batch).
    async fn flush(&mut self) -> Result<(), SessionEnd> {
        self.writer.flush().await.map_err(write_failed)
    }

    /// Writes what the socket takes without waiting; the rest stays batched
    /// for the serve loop's flush.
    fn write_now(&mut self) -> Result<(), SessionEnd> {
        match self.writer.flush().now_or_never() {
            Some(Err(e)) => Err(write_failed(e)),
            Some(Ok(())) | None => Ok(()),
        }
    }
}

fn write_failed(e: crate::wire::ConnectionError) -> SessionEnd {
    SessionEnd::Lost(Error::from_connection("writing to the router", e))
}
