//! The routing core: one task that owns the routing state.
//!
//! Connections hand it commands over one bounded channel; it owns the
//! connected instances and their subscriptions, each service's queue, the
//! deliveries in flight, and reply tracking. It never awaits a connection:
//! frames go out with `try_send` into each connection's bounded outbox, and
//! deliveries are limited by each instance's credit (prefetch), so a slow
//! consumer holds back only its own deliveries. Owning all of this in one
//! task means no locks on the hot path.
//!
//! It must never look inside a payload.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{debug, warn};
use uuid::Uuid;

use super::decisions::ReceiveCache;
use super::introspect::Snapshot;
use super::message::{ConnId, Message, Sender, now_ms};
use super::metrics::{CoreMetrics, Metrics, ServiceCounters};
use crate::audit::{self, AuditHandle, Event, Record};
use crate::idhash::IdHash;
use crate::policy::Policy;
use crate::shutdown::Shutdown;
use crate::store::{Entry, Store, StoreTicket};
use crate::wire::{Body, Error, ErrorCode, Frame, ServiceBlob, Subscription};

/// What an accepted send waits for before its `Accepted` is written: its
/// audit line and its store writes. A future that says whether they
/// succeeded; a plain struct rather than a boxed future, so an accepted send
/// costs no allocation here.
pub struct Durable {
    audit: Option<audit::Ticket>,
    /// Awaited from the last; all must succeed, so the order is immaterial.
    store: Vec<StoreTicket>,
}

impl Future for Durable {
    type Output = Result<(), ErrorCode>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(ticket) = this.audit.as_mut() {
            if ready!(Pin::new(ticket).poll(cx)).is_err() {
                return Poll::Ready(Err(ErrorCode::AuditUnavailable));
            }
            this.audit = None;
        }
        while let Some(ticket) = this.store.last_mut() {
            if ready!(ticket.as_mut().poll(cx)).is_err() {
                return Poll::Ready(Err(ErrorCode::StoreUnavailable));
            }
            this.store.pop();
        }
        Poll::Ready(Ok(()))
    }
}

/// What a connection's writer is asked to write.
pub enum Outbound {
    /// A frame, written at once.
    Frame(Frame),
    /// A delivery, written at once, encoded from the message itself.
    Deliver(Delivery),
    /// `Accepted{corr}` once `durable` resolves (or an error frame if it fails).
    Accept {
        /// The send's correlation id.
        corr: u64,
        /// Services it was queued for.
        receivers: u32,
        /// Audit and store writes to wait for; `None` when nothing to wait for.
        durable: Option<Durable>,
        /// The send's in-flight slot, released once the answer is written.
        permit: Option<OwnedSemaphorePermit>,
        /// A request with receivers: its `Accepted` may wait (briefly) for
        /// the reply, to reach the requester in the same write.
        hold: bool,
    },
}

/// A `Deliver` frame by its parts: the connection's writer encodes it
/// straight from the message ([`wire::encode::deliver`](crate::wire::encode::deliver)),
/// so no frame, and none of its `String`s, is built per delivery.
pub struct Delivery {
    /// Delivery tag (0 for a reply).
    pub tag: u64,
    /// The message delivered.
    pub msg: Arc<Message>,
    /// 1 for the first delivery, higher for redeliveries.
    pub attempt: u32,
    /// The receiving service's authentication tag, or empty.
    pub auth_tag: Bytes,
    /// The key grant sent with this delivery, or empty.
    pub grant: Bytes,
}

impl Delivery {
    /// The frame's fields, borrowed from the delivery.
    pub fn parts(&self) -> crate::wire::encode::DeliverRef<'_> {
        let msg = &*self.msg;
        crate::wire::encode::DeliverRef {
            tag: self.tag,
            header: &msg.header,
            payload: &msg.payload,
            sender: &msg.sender.service,
            sender_id: &msg.sender.identity,
            timestamp_ms: msg.timestamp_ms,
            attempt: self.attempt,
            auth_tag: &self.auth_tag,
            grant: &self.grant,
        }
    }
}

/// A connection as the core sees it.
pub struct ConnHandle {
    /// The authenticated sender identity of this connection.
    pub sender: Sender,
    /// Peer address, for the audit log.
    pub remote: SocketAddr,
    /// The connection's bounded outbox.
    pub out: mpsc::Sender<Outbound>,
    /// Notified when the core wants the connection closed.
    pub kill: Arc<Notify>,
}

/// Commands from connections to the core.
pub enum Command {
    /// An instance connected and said Hello.
    Connect(ConnHandle),
    /// Replace an instance's subscriptions.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// Names and versions it handles.
        subscriptions: Vec<Subscription>,
        /// Its credit.
        prefetch: u32,
    },
    /// Route an accepted command or event (policy-checked by the connection).
    Route(Route),
    /// Route a reply back to its requester.
    Reply {
        /// The reply.
        msg: Arc<Message>,
        /// The send's correlation id.
        corr: u64,
        /// End-to-end tags (the requester's).
        tags: Vec<ServiceBlob>,
        /// The send's in-flight slot on its connection.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Deliveries acknowledged.
    Ack {
        /// The connection.
        conn: ConnId,
        /// Delivery tags.
        tags: Vec<u64>,
    },
    /// A delivery refused by the handler.
    Nack {
        /// The connection.
        conn: ConnId,
        /// Delivery tag.
        tag: u64,
        /// Deliver again (true) or dead-letter (false).
        requeue: bool,
    },
    /// The connection is gone.
    Disconnect {
        /// The connection.
        conn: ConnId,
    },
    /// Report the routing state (admin API, metrics scrape).
    Introspect(oneshot::Sender<Snapshot>),
}

/// An accepted command or event, ready to queue.
pub struct Route {
    /// The message.
    pub msg: Arc<Message>,
    /// The send's correlation id.
    pub corr: u64,
    /// Services the policy lets receive it.
    pub receivers: Arc<[Arc<str>]>,
    /// End-to-end tags per receiving service.
    pub tags: Vec<ServiceBlob>,
    /// End-to-end grants per receiving service.
    pub grants: Vec<ServiceBlob>,
    /// The audit write of the send record.
    pub audit: Option<audit::Ticket>,
    /// The send's in-flight slot on its connection.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Limits and defaults of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Most messages waiting in one service's queue.
    pub queue_max_messages: usize,
    /// Most bytes waiting in one service's queue.
    pub queue_max_bytes: u64,
    /// Credit for instances that ask for 0.
    pub default_prefetch: u32,
    /// The most credit an instance may ask for.
    pub max_prefetch: u32,
    /// How long replies to a command are accepted when it has no expiry.
    pub reply_window: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_attempts: u32,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_timeout: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            queue_max_messages: 100_000,
            queue_max_bytes: 256 * 1024 * 1024,
            default_prefetch: 256,
            max_prefetch: 4096,
            reply_window: Duration::from_secs(300),
            max_attempts: 5,
            ack_timeout: Duration::from_secs(60),
        }
    }
}

/// One queued copy of a message for one service.
struct Queued {
    msg: Arc<Message>,
    auth_tag: Bytes,
    attempts: u32,
    seq: u64,
}

struct Inflight {
    q: Queued,
    since_ms: u64,
}

struct Conn {
    handle: ConnHandle,
    subs: HashMap<Arc<str>, Vec<u32>>,
    prefetch: u32,
    inflight: HashMap<u64, Inflight, IdHash>,
    /// Epochs whose grant this connection has been sent.
    grants_sent: HashSet<GrantKey>,
    /// The epoch of the last delivery, when it is in `grants_sent`: a run
    /// of one sender's epoch is checked by comparison, without hashing.
    last_grant: Option<GrantKey>,
    connected_ms: u64,
}

impl Conn {
    fn handles(&self, name: &str, version: u32) -> bool {
        self.subs.get(name).is_some_and(|v| v.is_empty() || v.contains(&version))
    }

    fn has_credit(&self) -> bool {
        (self.inflight.len() as u32) < self.prefetch
    }
}

#[derive(Default)]
struct ServiceState {
    queue: VecDeque<Queued>,
    bytes: u64,
    instances: Vec<ConnId>,
    next: usize,
    partitions: HashMap<Arc<str>, ConnId>,
    /// End-to-end grants by epoch, to hand to instances with their first
    /// delivery of that epoch. Bounded: oldest epochs are dropped first.
    grants: HashMap<GrantKey, Bytes>,
    grant_order: VecDeque<GrantKey>,
    next_seq: u64,
    /// This service's counters, found once instead of per message.
    counters: ServiceCounters,
}

const MAX_GRANTS_PER_SERVICE: usize = 4096;
/// A sender epoch, scoped by the authenticated sender identity: epoch ids are
/// chosen by senders, so one sender must not be able to overwrite (and so
/// make unreadable) the grant of another's epoch.
type GrantKey = (Arc<str>, Bytes);
/// How far into a queue one dispatch pass looks for a message an instance can take.
const SCAN_LIMIT: usize = 1024;

/// An instance, named the way it survives a reconnect: its service and the
/// instance id its relay keeps for the life of the process. Scoped by
/// service, so one service can never claim another's instance.
type InstanceKey = (Arc<str>, Arc<str>);

struct ReplyRoute {
    /// The instance that sent the command; replies go to whichever
    /// connection it has now (it may have reconnected since).
    requester: InstanceKey,
    /// Services that may still reply (their stream has not ended).
    open: HashSet<Arc<str>>,
    /// Instances the command was delivered to.
    delivered_to: HashSet<InstanceKey>,
    deadline_ms: u64,
}

/// The core's state.
pub struct Core {
    policy: Arc<ArcSwap<Policy>>,
    audit: AuditHandle,
    store: Arc<Store>,
    config: CoreConfig,
    conns: HashMap<ConnId, Conn, IdHash>,
    services: HashMap<Arc<str>, ServiceState>,
    replies: HashMap<Uuid, ReplyRoute, IdHash>,
    /// The current connection of each connected instance.
    instances: HashMap<InstanceKey, ConnId>,
    next_tag: u64,
    metrics: CoreMetrics,
    receive_decisions: ReceiveCache,
}

/// Runs the core until shutdown or until every sender is gone.
pub async fn run(mut core: Core, mut rx: mpsc::Receiver<Command>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                core.handle(cmd);
                // Drain what is already queued before yielding: one wake-up, many commands.
                for _ in 0..1024 {
                    match rx.try_recv() {
                        Ok(cmd) => core.handle(cmd),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                core.sweep(now_ms());
                // Large frame blocks no longer needed go back to the allocator.
                crate::wire::pool::tidy();
            }
            _ = shutdown.wait() => break,
        }
    }
    debug!("routing core stopped");
}

impl Core {
    /// A core with empty state.
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        audit: AuditHandle,
        store: Arc<Store>,
        config: CoreConfig,
    ) -> Self {
        Core {
            policy,
            audit,
            store,
            config,
            conns: HashMap::default(),
            services: HashMap::new(),
            replies: HashMap::default(),
            instances: HashMap::new(),
            next_tag: 1,
            metrics: CoreMetrics::new(Arc::new(Metrics::new())),
            receive_decisions: ReceiveCache::default(),
        }
    }

    /// Counts into `metrics` (by default the core counts into a registry of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = CoreMetrics::new(metrics);
        self
    }

    /// Queues entries reloaded from the store (at start, before any connection).
    pub fn restore(&mut self, entries: Vec<Entry>) -> Result<usize, super::message::HeaderError> {
        let n = entries.len();
        for e in entries {
            let sender = Sender {
                service: Arc::from(e.sender),
                identity: Arc::from(e.sender_id),
                instance: Arc::from(e.sender_instance),
                conn: 0,
            };
            let msg = Arc::new(Message::from_send(e.header, e.payload, sender, e.timestamp_ms)?);
            let svc = self.services.entry(Arc::from(e.service)).or_default();
            if !e.grant.is_empty() {
                remember_grant(svc, &msg, e.grant);
            }
            svc.next_seq = svc.next_seq.max(e.seq + 1);
            svc.bytes += msg.size();
            svc.queue.push_back(Queued { msg, auth_tag: e.auth_tag, attempts: e.attempts, seq: e.seq });
        }
        Ok(n)
    }

    /// Handles one command.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Connect(handle) => self.connect(handle),
            Command::Subscribe { conn, subscriptions, prefetch } => {
                self.subscribe(conn, subscriptions, prefetch)
            }
            Command::Route(route) => self.route(route),
            Command::Reply { msg, corr, tags, permit } => self.reply(msg, corr, tags, permit),
            Command::Ack { conn, tags } => self.ack(conn, tags),
            Command::Nack { conn, tag, requeue } => self.nack(conn, tag, requeue),
            Command::Disconnect { conn } => self.disconnect(conn),
            Command::Introspect(reply) => {
                let _ = reply.send(self.snapshot(now_ms()));
            }
        }
    }

    fn connect(&mut self, handle: ConnHandle) {
        let id = handle.sender.conn;
        let service = handle.sender.service.clone();
        self.instances.insert(instance_key(&handle.sender), id);
        self.conns.insert(
            id,
            Conn {
                handle,
                subs: HashMap::new(),
                prefetch: self.config.default_prefetch,
                inflight: HashMap::default(),
                grants_sent: HashSet::new(),
                last_grant: None,
                connected_ms: now_ms(),
            },
        );
        self.services.entry(service).or_default().instances.push(id);
    }

    fn subscribe(&mut self, conn: ConnId, subscriptions: Vec<Subscription>, prefetch: u32) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.subs = subscriptions.into_iter().map(|s| (Arc::from(s.name), s.versions)).collect();
        c.prefetch = match prefetch {
            0 => self.config.default_prefetch,
            n => n.min(self.config.max_prefetch),
        };
        let service = c.handle.sender.service.clone();
        self.dispatch(&service);
    }

    fn route(&mut self, route: Route) {
        let Route { msg, corr, receivers, tags, grants, audit, permit } = route;
        let receivers = &receivers[..];
        let sender_conn = msg.sender.conn;
        let size = msg.size();
        // All or nothing: refuse before queueing anywhere if any queue is full.
        for svc in receivers {
            if let Some(s) = self.services.get(svc)
                && (s.queue.len() >= self.config.queue_max_messages
                    || s.bytes + size > self.config.queue_max_bytes)
            {
                let text = format!(
                    "queue of {svc} is full ({} messages, {} bytes); retry later",
                    s.queue.len(),
                    s.bytes
                );
                self.audit_msg(Event::Deny, &msg, Some(svc), None, |r| {
                    r.reason = Some(Arc::from("queue_full"))
                });
                self.metrics.denied(&msg.name, &msg.sender.service, "queue_full");
                self.send_error(sender_conn, corr, ErrorCode::QueueFull, text);
                return;
            }
        }
        let mut durable: Vec<StoreTicket> = Vec::new();
        for svc in receivers {
            let state = self.services.entry(svc.clone()).or_default();
            let auth_tag =
                tags.iter().find(|t| *t.service == **svc).map(|t| t.data.clone()).unwrap_or_default();
            if let Some(g) = grants.iter().find(|g| *g.service == **svc) {
                remember_grant(state, &msg, g.data.clone());
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            if self.store.is_durable() {
                // The epoch's grant goes with each stored copy: after a restart
                // it is the only way a receiver can open this backlog.
                let grant = grant_key(&msg).and_then(|k| state.grants.get(&k).cloned()).unwrap_or_default();
                if let Some(t) = self.store.put(entry_of(svc, seq, &msg, &auth_tag, grant)) {
                    durable.push(t);
                }
            }
            state.bytes += size;
            state.queue.push_back(Queued { msg: msg.clone(), auth_tag, attempts: 0, seq });
            self.metrics.routed(&msg.name, svc, &mut state.counters);
        }
        if msg.expects_reply {
            let deadline_ms = if msg.expires_at_ms != 0 {
                msg.expires_at_ms
            } else {
                msg.timestamp_ms + self.config.reply_window.as_millis() as u64
            };
            self.replies.insert(
                msg.id,
                ReplyRoute {
                    requester: instance_key(&msg.sender),
                    open: receivers.iter().cloned().collect(),
                    delivered_to: HashSet::new(),
                    deadline_ms,
                },
            );
        }
        let wait = combine(audit, durable);
        self.push(
            sender_conn,
            Outbound::Accept {
                corr,
                receivers: receivers.len() as u32,
                durable: wait,
                permit,
                hold: msg.expects_reply && !receivers.is_empty(),
            },
        );
        for svc in receivers {
            self.dispatch(svc);
        }
    }

    fn reply(
        &mut self,
        msg: Arc<Message>,
        corr: u64,
        tags: Vec<ServiceBlob>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let replier = msg.sender.conn;
        let Some(command) = msg.response_to else { return };
        let Some(route) = self.replies.get(&command) else {
            self.refuse_reply(&msg, corr, "no open command with that id (never sent, finished or expired)");
            return;
        };
        if !route.delivered_to.contains(&instance_key(&msg.sender)) {
            self.refuse_reply(&msg, corr, "the command was not delivered to this instance");
            return;
        }
        if !route.open.contains(&msg.sender.service) {
            self.refuse_reply(&msg, corr, "this service already ended its reply stream");
            return;
        }
        let Some(req) = self.instances.get(&route.requester).and_then(|c| self.conns.get(c)) else {
            // The route stays until its deadline: the requester may be reconnecting.
            self.audit_msg(Event::Drop, &msg, None, None, |r| r.reason = Some(Arc::from("requester_gone")));
            // The replier did its part; the requester is gone, so the reply is dropped, not queued.
            self.push(replier, Outbound::Accept { corr, receivers: 0, durable: None, permit, hold: false });
            return;
        };
        let req_service = req.handle.sender.service.clone();
        let policy = self.policy.load_full();
        let decision = self.receive_decisions.get(&policy, &req_service, &msg.name, msg.version);
        if !decision.allowed {
            let text = format!("{req_service} may not receive {} (reply)", msg.name);
            self.audit_msg(Event::Deny, &msg, Some(&req_service), Some(&decision.rule), |_| {});
            self.metrics.denied(&msg.name, &req_service, "policy");
            self.send_error(replier, corr, ErrorCode::Denied, text);
            return;
        }
        let auth_tag =
            tags.iter().find(|t| *t.service == *req_service).map(|t| t.data.clone()).unwrap_or_default();
        let delivery = Delivery { tag: 0, msg: Arc::clone(&msg), attempt: 1, auth_tag, grant: Bytes::new() };
        if req.handle.out.try_send(Outbound::Deliver(delivery)).is_err() {
            // The requester is not reading; tell the replier to retry rather than grow memory.
            self.send_error(
                replier,
                corr,
                ErrorCode::QueueFull,
                "the requester is not keeping up; retry".into(),
            );
            return;
        }
        self.audit_msg(Event::Reply, &msg, Some(&req_service), Some(&decision.rule), |r| {
            r.receiver_instance = Some(req.handle.sender.instance.clone())
        });
        if msg.stream_final
            && let Some(route) = self.replies.get_mut(&command)
        {
            route.open.remove(&msg.sender.service);
            if route.open.is_empty() {
                self.replies.remove(&command);
            }
        }
        self.push(replier, Outbound::Accept { corr, receivers: 1, durable: None, permit, hold: false });
    }

    fn refuse_reply(&mut self, msg: &Message, corr: u64, why: &str) {
        self.audit_msg(Event::Deny, msg, None, None, |r| r.reason = Some(Arc::from("reply_not_allowed")));
        self.metrics.denied(&msg.name, &msg.sender.service, "reply_not_allowed");
        let text = format!("{} may not reply {} to that command: {why}", msg.sender.service, msg.name);
        self.send_error(msg.sender.conn, corr, ErrorCode::ReplyNotAllowed, text);
    }

    fn ack(&mut self, conn: ConnId, tags: Vec<u64>) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let service = c.handle.sender.service.clone();
        let instance = c.handle.sender.instance.clone();
        let mut done = Vec::with_capacity(tags.len());
        for tag in tags {
            if let Some(f) = c.inflight.remove(&tag) {
                done.push(f.q);
            }
        }
        for q in done {
            self.store.remove(&service, q.seq);
            if let Some(s) = self.services.get_mut(&service) {
                s.bytes = s.bytes.saturating_sub(q.msg.size());
            }
            self.audit_msg(Event::Ack, &q.msg, Some(&service), None, |r| {
                r.receiver_instance = Some(instance.clone())
            });
        }
        self.dispatch(&service);
    }

    fn nack(&mut self, conn: ConnId, tag: u64, requeue: bool) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let service = c.handle.sender.service.clone();
        let Some(f) = c.inflight.remove(&tag) else { return };
        if requeue {
            self.requeue(&service, vec![f.q], "nack");
        } else {
            self.dead_letter(&service, f.q, "rejected by handler");
        }
        self.dispatch(&service);
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        let service = c.handle.sender.service.clone();
        if let Some(s) = self.services.get_mut(&service) {
            s.instances.retain(|i| *i != conn);
            s.partitions.retain(|_, i| *i != conn);
        }
        // Reply routes stay: the instance may reconnect before its replies come.
        let key = instance_key(&c.handle.sender);
        if self.instances.get(&key) == Some(&conn) {
            self.instances.remove(&key);
        }
        let mut back: Vec<Queued> = c.inflight.into_values().map(|f| f.q).collect();
        back.sort_by_key(|q| q.seq);
        self.requeue(&service, back, "instance disconnected");
        self.dispatch(&service);
    }

    /// Puts unacknowledged messages back at the front, oldest first, so
    /// order is kept across redelivery; dead-letters those out of attempts.
    fn requeue(&mut self, service: &Arc<str>, mut items: Vec<Queued>, why: &str) {
        items.sort_by_key(|q| std::cmp::Reverse(q.seq));
        for q in items {
            if q.attempts >= self.config.max_attempts {
                self.dead_letter(service, q, "too many delivery attempts");
                continue;
            }
            self.audit_msg(Event::Redeliver, &q.msg, Some(service), None, |r| {
                r.reason = Some(Arc::from(why))
            });
            self.metrics.redelivered(service);
            if let Some(s) = self.services.get_mut(service) {
                s.queue.push_front(q);
            }
        }
    }

    fn dead_letter(&mut self, service: &Arc<str>, q: Queued, why: &str) {
        warn!(service = %service, name = %q.msg.name, id = %q.msg.id, why, "message dead-lettered");
        self.audit_msg(Event::DeadLetter, &q.msg, Some(service), None, |r| r.reason = Some(Arc::from(why)));
        self.store.dead_letter(service, q.seq, why, q.attempts);
        if let Some(s) = self.services.get_mut(service) {
            s.bytes = s.bytes.saturating_sub(q.msg.size());
        }
    }

    /// Hands queued messages of `service` to instances that can take them.
    fn dispatch(&mut self, service: &Arc<str>) {
        let now = now_ms();
        let policy = self.policy.load_full();
        let Some(state) = self.services.get_mut(service) else { return };
        let mut i = 0;
        let mut scanned = 0;
        while i < state.queue.len() && scanned < SCAN_LIMIT {
            scanned += 1;
            if !state.instances.iter().any(|c| self.conns.get(c).is_some_and(Conn::has_credit)) {
                break;
            }
            let msg = state.queue[i].msg.clone();
            if msg.expired(now) {
                if let Some(q) = state.queue.remove(i) {
                    state.bytes = state.bytes.saturating_sub(q.msg.size());
                    self.store.remove(service, q.seq);
                    audit_record(&self.audit, Event::Expire, &q.msg, Some(service), None, |_| {});
                }
                continue;
            }
            let decision = self.receive_decisions.get(&policy, service, &msg.name, msg.version);
            if !decision.allowed {
                // The policy changed since the message was queued: revocation applies to the backlog.
                if let Some(q) = state.queue.remove(i) {
                    state.bytes = state.bytes.saturating_sub(q.msg.size());
                    self.store.remove(service, q.seq);
                    audit_record(
                        &self.audit,
                        Event::Deny,
                        &q.msg,
                        Some(service),
                        Some(&decision.rule),
                        |r| r.reason = Some(Arc::from("receive_revoked")),
                    );
                    self.metrics.denied(&q.msg.name, service, "receive_revoked");
                }
                continue;
            }
            let Some(conn_id) = pick(state, &self.conns, &msg) else {
                i += 1;
                continue;
            };
            let Some(mut q) = state.queue.remove(i) else { break };
            let Some(conn) = self.conns.get_mut(&conn_id) else { break };
            q.attempts += 1;
            let tag = self.next_tag;
            self.next_tag += 1;
            let grant = match grant_key(&q.msg) {
                Some(key) if conn.last_grant.as_ref() != Some(&key) => {
                    if conn.grants_sent.contains(&key) {
                        conn.last_grant = Some(key);
                        Bytes::new()
                    } else if let Some(g) = state.grants.get(&key) {
                        conn.grants_sent.insert(key.clone());
                        conn.last_grant = Some(key);
                        g.clone()
                    } else {
                        Bytes::new()
                    }
                }
                _ => Bytes::new(),
            };
            let delivery = Delivery {
                tag,
                msg: Arc::clone(&q.msg),
                attempt: q.attempts,
                auth_tag: q.auth_tag.clone(),
                grant,
            };
            if conn.handle.out.try_send(Outbound::Deliver(delivery)).is_err() {
                // Credit bounds what we send, so a full outbox means the peer
                // stopped reading entirely: close it; its messages come back.
                warn!(conn = conn_id, "outbox full; closing connection");
                q.attempts -= 1;
                state.queue.insert(i, q);
                conn.handle.kill.notify_one();
                break;
            }
            if let Some(route) = self.replies.get_mut(&q.msg.id) {
                route.delivered_to.insert(instance_key(&conn.handle.sender));
            }
            audit_record(&self.audit, Event::Deliver, &q.msg, Some(service), Some(&decision.rule), |r| {
                r.receiver_instance = Some(conn.handle.sender.instance.clone())
            });
            self.metrics.delivered(service, &mut state.counters);
            if q.attempts == 1 {
                self.metrics.latency(q.msg.received);
            }
            conn.inflight.insert(tag, Inflight { q, since_ms: now });
        }
    }

    /// Periodic work: expire queued messages and reply routes, redeliver
    /// deliveries whose ack timed out.
    pub fn sweep(&mut self, now: u64) {
        self.replies.retain(|_, r| r.deadline_ms > now);
        let timeout = self.config.ack_timeout.as_millis() as u64;
        let mut late: Vec<(Arc<str>, Vec<Queued>)> = Vec::new();
        for c in self.conns.values_mut() {
            let tags: Vec<u64> = c
                .inflight
                .iter()
                .filter(|(_, f)| now.saturating_sub(f.since_ms) > timeout)
                .map(|(t, _)| *t)
                .collect();
            if !tags.is_empty() {
                let items = tags.iter().filter_map(|t| c.inflight.remove(t)).map(|f| f.q).collect();
                late.push((c.handle.sender.service.clone(), items));
            }
        }
        for (service, items) in late {
            self.requeue(&service, items, "ack timeout");
        }
        let services: Vec<Arc<str>> = self.services.keys().cloned().collect();
        for service in services {
            if let Some(state) = self.services.get_mut(&service) {
                let mut expired = Vec::new();
                state.queue.retain(|q| {
                    let e = q.msg.expired(now);
                    if e {
                        expired.push((q.msg.clone(), q.seq));
                    }
                    !e
                });
                for (m, seq) in expired {
                    state.bytes = state.bytes.saturating_sub(m.size());
                    self.store.remove(&service, seq);
                    audit_record(&self.audit, Event::Expire, &m, Some(&service), None, |_| {});
                }
            }
            self.dispatch(&service);
        }
    }

    fn push(&mut self, conn: ConnId, out: Outbound) {
        if let Some(c) = self.conns.get(&conn)
            && c.handle.out.try_send(out).is_err()
        {
            warn!(conn, "outbox full (peer not reading its acknowledgements); closing connection");
            c.handle.kill.notify_one();
        }
    }

    fn send_error(&mut self, conn: ConnId, corr: u64, code: ErrorCode, message: String) {
        let frame = Frame { body: Some(Body::Error(Error { corr, code: code as i32, message })) };
        self.push(conn, Outbound::Frame(frame));
    }

    fn audit_msg(
        &self,
        event: Event,
        msg: &Message,
        receiver: Option<&Arc<str>>,
        rule: Option<&Arc<str>>,
        f: impl FnOnce(&mut Record),
    ) {
        audit_record(&self.audit, event, msg, receiver, rule, f);
    }

    /// The routing state as the admin API shows it.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        use super::introspect::{InstanceSnapshot, ServiceSnapshot, SubscriptionSnapshot};
        let mut services: Vec<ServiceSnapshot> = self
            .services
            .iter()
            .map(|(name, state)| {
                let instances: Vec<InstanceSnapshot> = state
                    .instances
                    .iter()
                    .filter_map(|id| self.conns.get(id))
                    .map(|c| InstanceSnapshot {
                        instance: c.handle.sender.instance.to_string(),
                        identity: c.handle.sender.identity.to_string(),
                        conn: c.handle.sender.conn,
                        remote: c.handle.remote,
                        connected_at_ms: c.connected_ms,
                        subscriptions: c
                            .subs
                            .iter()
                            .map(|(n, v)| SubscriptionSnapshot { name: n.to_string(), versions: v.clone() })
                            .collect(),
                        prefetch: c.prefetch,
                        in_flight: c.inflight.len(),
                    })
                    .collect();
                let oldest = state.queue.iter().map(|q| q.msg.timestamp_ms).min();
                ServiceSnapshot {
                    service: name.to_string(),
                    in_flight: instances.iter().map(|i| i.in_flight).sum(),
                    instances,
                    queue_depth: state.queue.len(),
                    queue_bytes: state.bytes,
                    oldest_queued_age_ms: oldest.map(|t| now.saturating_sub(t)),
                }
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let routes = super::introspect::routes(&self.policy.load(), &services);
        Snapshot { taken_at_ms: now, services, routes }
    }

    /// Messages waiting per service (for introspection and tests).
    pub fn queue_depths(&self) -> Vec<(Arc<str>, usize)> {
        self.services.iter().map(|(k, v)| (k.clone(), v.queue.len())).collect()
    }
}

fn instance_key(s: &Sender) -> InstanceKey {
    (s.service.clone(), s.instance.clone())
}

fn pick(state: &mut ServiceState, conns: &HashMap<ConnId, Conn, IdHash>, msg: &Message) -> Option<ConnId> {
    let eligible = |id: &ConnId| conns.get(id).is_some_and(|c| c.handles(&msg.name, msg.version));
    if let Some(key) = &msg.partition_key
        && let Some(id) = state.partitions.get(key)
        && eligible(id)
    {
        // Sticky: wait for this instance's credit rather than reorder the key.
        return conns.get(id).filter(|c| c.has_credit()).map(|_| *id);
    }
    let n = state.instances.len();
    for k in 0..n {
        let idx = (state.next + k) % n;
        let id = state.instances[idx];
        if eligible(&id) && conns.get(&id).is_some_and(Conn::has_credit) {
            state.next = (idx + 1) % n;
            if let Some(key) = &msg.partition_key {
                state.partitions.insert(key.clone(), id);
            }
            return Some(id);
        }
    }
    None
}

fn remember_grant(state: &mut ServiceState, msg: &Message, grant: Bytes) {
    let Some(key) = grant_key(msg) else { return };
    if state.grants.insert(key.clone(), grant).is_none() {
        state.grant_order.push_back(key);
        while state.grant_order.len() > MAX_GRANTS_PER_SERVICE {
            if let Some(old) = state.grant_order.pop_front() {
                state.grants.remove(&old);
            }
        }
    }
}

fn grant_key(msg: &Message) -> Option<GrantKey> {
    msg.header_epoch().map(|epoch| (msg.sender.identity.clone(), epoch))
}

fn entry_of(service: &str, seq: u64, msg: &Message, auth_tag: &Bytes, grant: Bytes) -> Entry {
    Entry {
        service: String::from(service),
        seq,
        header: msg.header.clone(),
        payload: msg.payload.clone(),
        auth_tag: auth_tag.clone(),
        grant,
        sender: String::from(&*msg.sender.service),
        sender_id: String::from(&*msg.sender.identity),
        sender_instance: String::from(&*msg.sender.instance),
        timestamp_ms: msg.timestamp_ms,
        attempts: 0,
    }
}

pub(super) fn combine(audit: Option<audit::Ticket>, store: Vec<StoreTicket>) -> Option<Durable> {
    (audit.is_some() || !store.is_empty()).then_some(Durable { audit, store })
}

/// Writes one audit record about a message. A record that cannot be queued
/// (the log failing) is logged; sends are refused separately, before routing.
pub(crate) fn audit_record(
    audit: &AuditHandle,
    event: Event,
    msg: &Message,
    receiver: Option<&Arc<str>>,
    rule: Option<&Arc<str>>,
    f: impl FnOnce(&mut Record),
) {
    let mut r = Record::new(event);
    r.id = Some(msg.id);
    r.name = Some(msg.name.clone());
    r.version = Some(msg.version);
    r.origin_id = msg.origin_id;
    r.response_to = msg.response_to;
    r.sender = Some(msg.sender.service.clone());
    r.sender_instance = Some(msg.sender.instance.clone());
    r.receiver = receiver.cloned();
    r.rule = rule.cloned();
    r.bytes = Some(msg.payload.len() as u64);
    r.decision = match event {
        Event::Deny => Some(audit::Decision::Deny),
        Event::Send | Event::Deliver | Event::Reply => Some(audit::Decision::Allow),
        _ => None,
    };
    f(&mut r);
    // Nobody waits for these lines (a send's own line is recorded by its
    // connection, and its `Accepted` waits for that one).
    if let Err(err) = audit.note(r) {
        debug!(%err, "audit record not written");
    }
}
