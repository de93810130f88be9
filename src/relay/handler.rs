//! Handlers: what a service registers per message name and version, what it
//! is handed ([`Incoming`]) and how it answers ([`Responder`]).
//!
//! A handler starts on the relay's connection task: its future is polled
//! there once, and a handler that finishes on that poll (one that computes
//! and answers, as most do) costs no task of its own. One that waits for
//! anything goes on in a task of its own. A handler whose first polls took
//! longer than [`INLINE_POLL_LIMIT`] [`SLOW_POLLS_TO_HEAVY`] messages in a
//! row is heavy: its messages start in tasks of their own, side by side on
//! the runtime's workers. One long poll is not enough, since on a shared
//! machine the thread may simply have been preempted mid-poll, and every
//! [`HEAVY_RETRY_EVERY`]th message of a heavy handler starts on the
//! connection task again, so a handler that was slow for a while (a cold
//! cache, a busy machine) goes back to starting inline once it is quick.
//! A heavy handler thus holds up the connection a few times at its start
//! and once per [`HEAVY_RETRY_EVERY`] messages after. The
//! relay acknowledges the delivery when the handler returns `Ok`, and asks
//! for redelivery when it returns `Err` or panics. A handler never touches
//! the connection directly.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::codec::ReplySealing;
use super::error::{BoxError, Error};
use super::header::uuid_of;
use super::options::MessageOptions;
use super::shared::{Outbound, Shared};
use crate::wire::{Kind, RoutingHeader, Subscription};

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
pub(crate) type HandlerFn = Arc<Handler>;

/// Longest first poll that lets a handler keep starting on the connection
/// task (see the module docs). The relay's own work per message is a few
/// microseconds; a handler over this is a heavy one.
pub(crate) const INLINE_POLL_LIMIT: std::time::Duration = std::time::Duration::from_micros(100);

/// First polls over [`INLINE_POLL_LIMIT`] in a row that make a handler
/// heavy. One could be the thread preempted mid-poll; three in a row,
/// microseconds apart, are the handler.
pub(crate) const SLOW_POLLS_TO_HEAVY: u32 = 3;

/// A heavy handler's every this-many-th message starts on the connection
/// task again, to see whether the handler is still heavy.
pub(crate) const HEAVY_RETRY_EVERY: u32 = 1024;

/// A user handler in the type-erased form the table stores.
pub(crate) struct Handler {
    run: Box<dyn Fn(Incoming, Responder) -> HandlerFuture + Send + Sync>,
    /// First polls over the limit in a row, up to [`SLOW_POLLS_TO_HEAVY`]
    /// (heavy).
    slow_polls: AtomicU32,
    /// Messages started while heavy, for the retry.
    heavy_starts: AtomicU32,
}

impl Handler {
    /// The handler's future for one message.
    pub(crate) fn call(&self, incoming: Incoming, responder: Responder) -> HandlerFuture {
        (self.run)(incoming, responder)
    }

    /// Whether this message starts on the connection task: always while
    /// the handler is not heavy, every [`HEAVY_RETRY_EVERY`]th message
    /// while it is.
    pub(crate) fn starts_inline(&self) -> bool {
        if self.slow_polls.load(Ordering::Relaxed) < SLOW_POLLS_TO_HEAVY {
            return true;
        }
        let started = self.heavy_starts.fetch_add(1, Ordering::Relaxed);
        started % HEAVY_RETRY_EVERY == HEAVY_RETRY_EVERY - 1
    }

    /// Records how long a first poll on the connection task took; true
    /// when this poll made the handler heavy.
    pub(crate) fn first_poll_took(&self, took: Duration) -> bool {
        let slow = self.slow_polls.load(Ordering::Relaxed);
        if took <= INLINE_POLL_LIMIT {
            if slow != 0 {
                self.slow_polls.store(0, Ordering::Relaxed);
            }
            return false;
        }
        // One connection task polls a handler's first polls, so a plain
        // load and store do; a lost update would only delay the mark.
        if slow < SLOW_POLLS_TO_HEAVY {
            self.slow_polls.store(slow + 1, Ordering::Relaxed);
        }
        slow + 1 == SLOW_POLLS_TO_HEAVY
    }
}

/// Wraps a user handler into the type-erased form the table stores.
pub(crate) fn boxed<F, Fut, E>(f: F) -> HandlerFn
where
    F: Fn(Incoming, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(Handler {
        run: Box::new(move |incoming, responder| {
            let fut = f(incoming, responder);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }),
        slow_polls: AtomicU32::new(0),
        heavy_starts: AtomicU32::new(0),
    })
}

struct Entry {
    versions: Vec<u32>,
    handler: HandlerFn,
}

/// Handlers by name; within a name, by version.
#[derive(Default)]
pub(crate) struct HandlerTable {
    by_name: HashMap<String, Vec<Entry>>,
}

impl fmt::Debug for HandlerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.subscriptions().iter().map(|s| (&s.name, &s.versions))).finish()
    }
}

impl HandlerTable {
    /// Adds a handler for `name`; empty `versions` means every version.
    pub(crate) fn insert(&mut self, name: String, versions: Vec<u32>, handler: HandlerFn) {
        self.by_name.entry(name).or_default().push(Entry { versions, handler });
    }

    /// What to tell the router: every name with the union of its versions
    /// (empty when some handler takes every version).
    pub(crate) fn subscriptions(&self) -> Vec<Subscription> {
        let mut subs: Vec<Subscription> = self
            .by_name
            .iter()
            .map(|(name, entries)| {
                let mut versions: Vec<u32> = if entries.iter().any(|e| e.versions.is_empty()) {
                    Vec::new()
                } else {
                    entries.iter().flat_map(|e| e.versions.iter().copied()).collect()
                };
                versions.sort_unstable();
                versions.dedup();
                Subscription { name: name.clone(), versions }
            })
            .collect();
        subs.sort_by(|a, b| a.name.cmp(&b.name));
        subs
    }

    /// The handler for `name` at `version` (0 is read as 1); a handler
    /// naming the version wins over one that takes every version.
    pub(crate) fn find(&self, name: &str, version: u32) -> Option<HandlerFn> {
        let version = version.max(1);
        let entries = self.by_name.get(name)?;
        entries
            .iter()
            .find(|e| e.versions.contains(&version))
            .or_else(|| entries.iter().find(|e| e.versions.is_empty()))
            .map(|e| Arc::clone(&e.handler))
    }
}

/// A message delivered to a handler.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub(crate) header: Arc<RoutingHeader>,
    pub(crate) id: Uuid,
    pub(crate) sender: String,
    pub(crate) sender_id: String,
    pub(crate) timestamp_ms: u64,
    pub(crate) attempt: u32,
    pub(crate) payload: Bytes,
}

impl Incoming {
    /// The message name.
    pub fn name(&self) -> &str {
        &self.header.name
    }

    /// The message's API version (at least 1).
    pub fn version(&self) -> u32 {
        self.header.version.max(1)
    }

    /// The message id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The activity this message belongs to, if the sender named one.
    pub fn origin_id(&self) -> Option<Uuid> {
        uuid_of(&self.header.origin_id)
    }

    /// Whether this is a command or an event.
    pub fn kind(&self) -> Kind {
        Kind::try_from(self.header.kind).unwrap_or(Kind::Command)
    }

    /// Whether the sender waits for replies (it made a request).
    pub fn expects_reply(&self) -> bool {
        self.header.expects_reply
    }

    /// The partition key, if the sender set one.
    pub fn partition_key(&self) -> Option<&str> {
        Some(self.header.partition_key.as_str()).filter(|k| !k.is_empty())
    }

    /// The sending service, as the router authenticated it from its certificate.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// The sender's identity (SPIFFE URI), as the router authenticated it.
    pub fn sender_id(&self) -> &str {
        &self.sender_id
    }

    /// When the router accepted the message.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.timestamp_ms)
    }

    /// Router time of acceptance in Unix milliseconds.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// 1 for the first delivery, higher for redeliveries.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// How a handler answers the message it was given.
///
/// Reply once with [`reply`](Self::reply), or stream with
/// [`stream`](Self::stream) and close with [`end`](Self::end). Each reply is
/// routed back only to the instance that sent the command. When the message
/// was an event or a command sent without expecting replies
/// ([`Relay::send`](super::Relay::send)), replying does nothing.
/// [`send`](Self::send) and [`publish`](Self::publish) emit new messages in
/// the same activity.
#[derive(Debug)]
pub struct Responder {
    pub(crate) shared: Arc<Shared>,
    pub(crate) command: Arc<RoutingHeader>,
    pub(crate) next_seq: u64,
    /// Seals this command's replies (end-to-end sealing), when the codec
    /// handed one out with the command.
    pub(crate) sealer: Option<Arc<Mutex<Box<dyn ReplySealing>>>>,
}

impl Responder {
    /// Sends the one and final reply.
    ///
    /// ```no_run
    /// # use exocom::relay::{Relay, Incoming, Responder};
    /// # use exocom::tls::IdentityDir;
    /// # async fn demo() -> Result<(), exocom::relay::Error> {
    /// let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/todo"))
    ///     .handle("todos.list", [1], |_msg: Incoming, responder: Responder| async move {
    ///         responder.reply("todos.listing", &["write docs"]).await
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn reply<T: Serialize + ?Sized>(mut self, name: &str, payload: &T) -> Result<(), Error> {
        self.emit(name, payload, true).await
    }

    /// Sends one reply of a stream; more follow.
    pub async fn stream<T: Serialize + ?Sized>(&mut self, name: &str, payload: &T) -> Result<(), Error> {
        self.emit(name, payload, false).await
    }

    /// Sends the last reply of a stream.
    ///
    /// ```no_run
    /// # use exocom::relay::{Relay, Incoming, Responder};
    /// # use exocom::tls::IdentityDir;
    /// # async fn demo() -> Result<(), exocom::relay::Error> {
    /// let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/todo"))
    ///     .handle("files.read", [], |_msg: Incoming, mut responder: Responder| async move {
    ///         for chunk in ["a,b", "c,d"] {
    ///             responder.stream("files.chunk", chunk).await?;
    ///         }
    ///         responder.end("files.done", &2).await
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn end<T: Serialize + ?Sized>(mut self, name: &str, payload: &T) -> Result<(), Error> {
        self.emit(name, payload, true).await
    }

    /// Sends a new command in the same activity (one-way).
    pub async fn send<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<(), Error> {
        self.follow_up(Kind::Command, name, payload).await
    }

    /// Publishes an event in the same activity.
    pub async fn publish<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<(), Error> {
        self.follow_up(Kind::Event, name, payload).await
    }

    /// Whether the sender waits for replies.
    pub fn expects_reply(&self) -> bool {
        self.command.expects_reply && self.command.kind == Kind::Command as i32
    }

    async fn emit<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        payload: &T,
        last: bool,
    ) -> Result<(), Error> {
        if !self.expects_reply() {
            tracing::debug!(name, "reply skipped: the message expects none");
            return Ok(());
        }
        let payload = Bytes::from(serde_json::to_vec(payload)?);
        let opts = MessageOptions::new();
        let seq = self.next_seq;
        self.next_seq += 1;
        let outbound = Outbound {
            kind: Kind::Reply,
            name,
            payload,
            opts: &opts,
            expects_reply: false,
            cause: Some(&self.command),
            stream_seq: seq,
            stream_final: last,
            replies: None,
            reply_sealer: self.sealer.as_deref(),
        };
        self.shared.submit(outbound).await.map(|_| ())
    }

    async fn follow_up<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        name: &str,
        payload: &T,
    ) -> Result<(), Error> {
        let payload = Bytes::from(serde_json::to_vec(payload)?);
        let opts = MessageOptions::new();
        let outbound = Outbound {
            kind,
            name,
            payload,
            opts: &opts,
            expects_reply: false,
            cause: Some(&self.command),
            stream_seq: 0,
            stream_final: false,
            replies: None,
            reply_sealer: None,
        };
        self.shared.submit_guarded(outbound).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> HandlerFn {
        boxed(|_i: Incoming, _r: Responder| async { Ok::<(), Error>(()) })
    }

    const SLOW: Duration = Duration::from_millis(1);

    /// Makes `h` heavy with slow first polls in a row.
    fn make_heavy(h: &Handler) {
        for i in 1..=SLOW_POLLS_TO_HEAVY {
            assert!(h.starts_inline());
            assert_eq!(h.first_poll_took(SLOW), i == SLOW_POLLS_TO_HEAVY, "heavy at the last one");
        }
    }

    #[test]
    fn slow_first_polls_make_a_handler_heavy_only_in_a_row() {
        let h = noop();
        for _ in 0..3 {
            for _ in 1..SLOW_POLLS_TO_HEAVY {
                assert!(h.starts_inline());
                assert!(!h.first_poll_took(SLOW));
            }
            assert!(h.starts_inline());
            assert!(!h.first_poll_took(Duration::ZERO), "a quick poll resets the count");
        }
        make_heavy(&h);
        assert!(!h.starts_inline());
    }

    #[test]
    fn a_heavy_handler_is_tried_inline_every_so_often_and_stays_inline_once_quick() {
        let h = noop();
        make_heavy(&h);
        for _ in 0..2 {
            for _ in 1..HEAVY_RETRY_EVERY {
                assert!(!h.starts_inline());
            }
            assert!(h.starts_inline(), "the retry on the {HEAVY_RETRY_EVERY}th message");
            assert!(!h.first_poll_took(SLOW), "still slow: still heavy, no new mark");
        }
        for _ in 1..HEAVY_RETRY_EVERY {
            assert!(!h.starts_inline());
        }
        assert!(h.starts_inline());
        assert!(!h.first_poll_took(Duration::ZERO));
        for _ in 0..10 {
            assert!(h.starts_inline(), "inline again");
        }
    }

    #[test]
    fn subscriptions_merge_versions_per_name() {
        let mut t = HandlerTable::default();
        t.insert("a".into(), vec![2, 1], noop());
        t.insert("a".into(), vec![3, 2], noop());
        t.insert("b".into(), vec![1], noop());
        t.insert("b".into(), vec![], noop());
        let subs = t.subscriptions();
        assert_eq!(subs.len(), 2);
        assert_eq!((subs[0].name.as_str(), subs[0].versions.as_slice()), ("a", &[1, 2, 3][..]));
        assert_eq!(
            (subs[1].name.as_str(), subs[1].versions.as_slice()),
            ("b", &[][..]),
            "b takes all versions"
        );
    }

    #[test]
    fn find_prefers_the_exact_version() {
        let mut t = HandlerTable::default();
        let v2 = noop();
        t.insert("a".into(), vec![2], Arc::clone(&v2));
        t.insert("a".into(), vec![], noop());
        t.insert("c".into(), vec![1], noop());
        assert!(Arc::ptr_eq(&t.find("a", 2).unwrap(), &v2));
        assert!(!Arc::ptr_eq(&t.find("a", 7).unwrap(), &v2), "falls back to the any-version handler");
        assert!(t.find("c", 0).is_some(), "version 0 is read as 1");
        assert!(t.find("c", 2).is_none());
        assert!(t.find("zzz", 1).is_none());
    }
}
