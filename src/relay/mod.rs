//! The relay: the SDK a service uses to talk to the router.
//!
//! A [`Relay`] is a cheap, cloneable handle. Behind it one connection task
//! owns the TLS connection (reconnecting with backoff and re-subscribing),
//! a handler starts on that task (one that finishes on its first poll
//! needs no task of its own; one that waits, or keeps running long, gets one;
//! see `handler.rs`), and every payload passes through a
//! [`PayloadCodec`] (plain JSON now, end-to-end sealing later) so the router
//! only ever sees opaque bytes.
//!
//! ```no_run
//! use exocom::relay::{ErrorKind, Incoming, Relay, Responder};
//! use exocom::tls::IdentityDir;
//!
//! # async fn demo() -> Result<(), exocom::relay::Error> {
//! let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/web"))
//!     .handle("todo.created", [], |msg: Incoming, _responder: Responder| async move {
//!         let text: String = msg.json()?;
//!         tracing::info!(%text, "a todo was created");
//!         Ok::<(), exocom::relay::Error>(())
//!     })
//!     .connect()
//!     .await?;
//!
//! // A command, one-way: resolves once the router accepted it.
//! match relay.send("todos.create", &serde_json::json!({"text": "write docs"})).await {
//!     Err(e) if e.kind() == ErrorKind::Denied => tracing::warn!(%e, "the policy refused it"),
//!     other => { other?; }
//! }
//! // A request: replies arrive as a stream that ends at the final reply.
//! let reply = relay.request_one("todos.list", &()).await?;
//! let todos: Vec<String> = reply.json()?;
//! relay.close().await;
//! # Ok(()) }
//! ```
//!
//! Never: log payloads, route by anything but the router's word, or let a
//! handler's failure or panic take the relay down.

mod backoff;
mod breaker;
mod builder;
mod codec;
mod connection;
mod dedup;
mod error;
mod handler;
mod header;
mod inflight;
mod options;
mod rejections;
mod request;
mod sealing;
mod shared;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use breaker::BreakerConfig;
pub use builder::RelayBuilder;
pub use codec::{
    Begun, CodecError, Opened, Opening, PayloadCodec, Plain, ReplyOpening, ReplySealing, SEAL_PLAIN, Sealed,
    SealedPayload,
};
pub use error::{BoxError, Error, ErrorKind};
pub use handler::{Incoming, Responder};
pub use options::MessageOptions;
pub use rejections::Rejections;
pub use request::{Replies, Reply};
pub use sealing::E2eOptions;

use crate::shutdown::ShutdownTrigger;
use crate::tls::IdentityDir;
use crate::wire::Kind;
use shared::{Outbound, Shared};

/// A connection to the router, shared by every clone.
///
/// Dropping the last clone shuts the connection down; [`close`](Self::close)
/// does so gracefully and waits for it.
#[derive(Clone, Debug)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// Dropping it (with the last handle) fires the shutdown.
    trigger: ShutdownTrigger,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A message the router accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message id.
    pub id: Uuid,
    /// How many services it was queued for (0: no service may or does receive it).
    pub receivers: u32,
}

impl Relay {
    /// Starts configuring a relay for the router at `addr` (host:port) with
    /// the identity in `identity` (cert.pem, key.pem, ca.pem).
    ///
    /// ```no_run
    /// # use exocom::relay::Relay;
    /// # use exocom::tls::IdentityDir;
    /// # async fn demo() -> Result<(), exocom::relay::Error> {
    /// let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/web"))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: impl Into<String>, identity: IdentityDir) -> RelayBuilder {
        RelayBuilder::new(addr.into(), identity)
    }

    /// Sends a command, one-way. Resolves once the router accepted it
    /// (policy-checked, audited, queued); a refusal is an error, e.g. kind
    /// [`ErrorKind::Denied`].
    ///
    /// ```no_run
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let sent = relay.send("todos.create", &serde_json::json!({"text": "ship it"})).await?;
    /// println!("{} queued for {} service(s)", sent.id, sent.receivers);
    /// # Ok(()) }
    /// ```
    pub async fn send<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<Sent, Error> {
        self.send_with(name, payload, &MessageOptions::new()).await
    }

    /// [`send`](Self::send) with options (version, activity, partition key, ttl, timeout).
    ///
    /// ```no_run
    /// # use exocom::relay::MessageOptions;
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let opts = MessageOptions::new().version(2).partition_key("account-7");
    /// relay.send_with("payments.transfer", &serde_json::json!({"cents": 500}), &opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_with<T: Serialize + ?Sized>(
        &self,
        name: &str,
        payload: &T,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        self.one_way(Kind::Command, name, payload, opts).await
    }

    /// Publishes an event to every service that may and does receive it.
    ///
    /// ```no_run
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// relay.publish("todo.created", &serde_json::json!({"text": "ship it"})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<Sent, Error> {
        self.publish_with(name, payload, &MessageOptions::new()).await
    }

    /// [`publish`](Self::publish) with options.
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        name: &str,
        payload: &T,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        self.one_way(Kind::Event, name, payload, opts).await
    }

    /// Sends a command whose payload is `payload` exactly as given, not
    /// JSON-encoded: for binary formats (protobuf, CBOR, files). The
    /// receiving handler reads it with [`Incoming::payload`]. Otherwise
    /// like [`send_with`](Self::send_with).
    ///
    /// ```no_run
    /// # use exocom::relay::MessageOptions;
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let record: Vec<u8> = vec![0x0a, 0x03, b'a', b'b', b'c']; // e.g. protobuf
    /// relay.send_bytes("reports.store", record, &MessageOptions::new()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_bytes(
        &self,
        name: &str,
        payload: impl Into<Bytes>,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        self.one_way_bytes(Kind::Command, name, payload.into(), opts).await
    }

    /// Publishes an event whose payload is `payload` exactly as given (see
    /// [`send_bytes`](Self::send_bytes)).
    pub async fn publish_bytes(
        &self,
        name: &str,
        payload: impl Into<Bytes>,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        self.one_way_bytes(Kind::Event, name, payload.into(), opts).await
    }

    /// Sends a command and returns its replies as a stream, once the router
    /// accepted it. The stream ends after each receiving service's final
    /// reply, and errors ([`ErrorKind::Timeout`]) when no reply comes within
    /// the request timeout (counted from the request, then from each reply).
    ///
    /// Fails fast with [`ErrorKind::TooManyRequests`] when
    /// `max_outstanding_requests` are already waiting, and with
    /// [`ErrorKind::CircuitOpen`] while the name's circuit is open.
    ///
    /// ```no_run
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let mut replies = relay.request("files.read", &"report.csv").await?;
    /// while let Some(reply) = replies.next().await {
    ///     let reply = reply?;
    ///     println!("{} #{}: {:?}", reply.name(), reply.stream_seq(), reply.payload());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn request<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<Replies, Error> {
        self.request_with(name, payload, &MessageOptions::new()).await
    }

    /// [`request`](Self::request) with options.
    pub async fn request_with<T: Serialize + ?Sized>(
        &self,
        name: &str,
        payload: &T,
        opts: &MessageOptions,
    ) -> Result<Replies, Error> {
        let (permit, sink, receiver) = self.begin_request(name)?;
        let outbound = request_outbound(name, to_json(payload)?, opts, sink);
        let submitted = self.inner.shared.submit(outbound).await;
        self.replies_after(name, opts, submitted, receiver, permit)
    }

    /// Sends a request and returns its first reply (the rest are dropped).
    /// No reply in time is [`ErrorKind::Timeout`]; a command no service
    /// receives is [`ErrorKind::Timeout`] too, at once.
    ///
    /// It waits for the reply alone, not for the router's acceptance: a
    /// reply can arrive before the acceptance does (the router routes a
    /// command at once and confirms it once its audit line is written), and
    /// it proves the router routed the command. A refusal still ends the wait
    /// with the router's reason, and a timeout before the router answered at
    /// all says so.
    ///
    /// ```no_run
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let reply = relay.request_one("todos.list", &()).await?;
    /// let todos: Vec<String> = reply.json()?;
    /// # Ok(()) }
    /// ```
    pub async fn request_one<T: Serialize + ?Sized>(&self, name: &str, payload: &T) -> Result<Reply, Error> {
        let shared = &self.inner.shared;
        let opts = MessageOptions::new();
        let (permit, sink, receiver) = self.begin_request(name)?;
        let outbound = request_outbound(name, to_json(payload)?, &opts, sink);
        // Sealed and queued; the router's answer is not awaited: the
        // connection task puts a refusal, or an acceptance by no service,
        // into the reply buffer, so this task wakes once, for the reply.
        let queued = match shared.queue(outbound, true).await {
            Ok(queued) => queued,
            Err(err) => {
                shared.record_error(name, &err);
                return Err(err);
            }
        };
        let mut replies = Replies::new(
            receiver,
            Arc::clone(shared),
            *queued.id.as_bytes(),
            name.to_owned(),
            1,
            queued.timeout,
            permit,
        );
        let first = replies.next().await;
        let mut accepted = queued.accepted;
        let answer = accepted.try_recv();
        match first {
            Some(Ok(reply)) => {
                shared.breakers.record(name, true);
                Ok(reply)
            }
            // The stream's own verdict (timeout, closed, abandoned), already
            // recorded with the breaker. A timeout before the router even
            // answered is reported as such.
            Some(Err(err)) if replies.is_finished() => {
                let unanswered = matches!(answer, Err(tokio::sync::oneshot::error::TryRecvError::Empty));
                if err.kind() == ErrorKind::Timeout && unanswered {
                    Err(shared.timeout_error(name, queued.timeout))
                } else {
                    Err(err)
                }
            }
            // Put into the buffer by the connection task: accepted by no
            // service (the path works) or refused.
            Some(Err(err)) if matches!(answer, Ok(Ok(0))) => {
                shared.breakers.record(name, true);
                Err(err)
            }
            Some(Err(err)) => {
                shared.record_error(name, &err);
                Err(err)
            }
            // A stream for one receiver ends only after yielding something.
            None => Err(Error::new(ErrorKind::Timeout, format!("no reply to {name}"))),
        }
    }

    /// Checks the circuit and takes a slot for one outstanding request.
    fn begin_request(
        &self,
        name: &str,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, request::ReplySink, request::ReplyReceiver), Error> {
        let shared = &self.inner.shared;
        shared.check_breaker(name)?;
        let permit = Arc::clone(&shared.requests).try_acquire_owned().map_err(|_| {
            Error::new(
                ErrorKind::TooManyRequests,
                format!(
                    "{} requests are already waiting for replies",
                    shared.settings.max_outstanding_requests
                ),
            )
        })?;
        let (sink, receiver) = request::reply_channel(shared.settings.reply_buffer);
        Ok((permit, sink, receiver))
    }

    /// The reply stream of a request once the router answered its send.
    fn replies_after(
        &self,
        name: &str,
        opts: &MessageOptions,
        submitted: Result<shared::Submitted, Error>,
        receiver: request::ReplyReceiver,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Replies, Error> {
        let shared = &self.inner.shared;
        if submitted.is_err() {
            shared.record_outcome(name, &submitted);
        }
        let submitted = submitted?;
        let idle = opts.timeout.unwrap_or(shared.settings.request_timeout);
        Ok(Replies::new(
            receiver,
            Arc::clone(shared),
            *submitted.id.as_bytes(),
            name.to_owned(),
            submitted.receivers,
            idle,
            permit,
        ))
    }

    /// This process's instance id (stable across reconnects).
    pub fn instance(&self) -> &str {
        &self.inner.shared.instance
    }

    /// Our service name, as the router's policy knows it (once welcomed).
    pub fn service(&self) -> Option<String> {
        self.inner.shared.state.borrow().info.as_ref().map(|i| i.service.clone())
    }

    /// Messages, replies and key announcements refused by end-to-end checks,
    /// by reason (`bad_tag`, `replay`, `bad_announcement`, …). Every refusal
    /// is also logged at `warn`; nothing refused reaches a handler.
    pub fn rejections(&self) -> &Rejections {
        &self.inner.shared.rejections
    }

    /// Whether the connection to the router is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.shared.state.borrow().connected
    }

    /// Shuts down gracefully: stops taking deliveries, waits (up to the
    /// drain timeout) for running handlers so their acknowledgements go out,
    /// and closes the connection. Every clone is closed; later calls fail
    /// with [`ErrorKind::Closed`].
    pub async fn close(&self) {
        self.inner.trigger.trigger();
        let task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn one_way<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        name: &str,
        payload: &T,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        self.one_way_bytes(kind, name, to_json(payload)?, opts).await
    }

    async fn one_way_bytes(
        &self,
        kind: Kind,
        name: &str,
        payload: Bytes,
        opts: &MessageOptions,
    ) -> Result<Sent, Error> {
        let outbound = Outbound {
            kind,
            name,
            payload,
            opts,
            expects_reply: false,
            cause: None,
            stream_seq: 0,
            stream_final: false,
            replies: None,
            reply_sealer: None,
        };
        let submitted = self.inner.shared.submit_guarded(outbound).await?;
        Ok(Sent { id: submitted.id, receivers: submitted.receivers })
    }
}

/// The outbound form of a request whose replies go to `sink`.
fn request_outbound<'a>(
    name: &'a str,
    payload: Bytes,
    opts: &'a MessageOptions,
    sink: request::ReplySink,
) -> shared::Outbound<'a> {
    shared::Outbound {
        kind: Kind::Command,
        name,
        payload,
        opts,
        expects_reply: true,
        cause: None,
        stream_seq: 0,
        stream_final: false,
        replies: Some(sink),
        reply_sealer: None,
    }
}

fn to_json<T: Serialize + ?Sized>(payload: &T) -> Result<Bytes, Error> {
    Ok(Bytes::from(serde_json::to_vec(payload)?))
}
