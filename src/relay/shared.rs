//! State shared by the relay handle, handler tasks and the connection task,
//! and the one path every outgoing message takes: build the header, let the
//! codec seal, hand the frame to the connection task, wait for `Accepted`.
//!
//! Locks here are std mutexes held for a map lookup, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::breaker::Breakers;
use super::codec::{CodecError, Opened, PayloadCodec, ReplySealing, SealedPayload};
use super::dedup::MessageId;
use super::error::{Error, ErrorKind};
use super::header::{self, HeaderParams, SenderInfo};
use super::options::{MessageOptions, Settings};
use super::rejections::Rejections;
use super::request::ReplySink;
use crate::wire::frame::LENGTH_PREFIX;
use crate::wire::{Body, Deliver, KeyQuery, Kind, RoutingHeader};

/// How long a send waits for a key directory the codec asked for.
const KEY_WAIT: Duration = Duration::from_secs(2);
/// Pause between key queries while a send waits for keys.
const KEY_RETRY: Duration = Duration::from_millis(100);

/// What the router told us at the last `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    /// Our identity (SPIFFE URI) as the router authenticated it.
    pub(crate) identity: String,
    /// Our service name in the policy.
    pub(crate) service: String,
    /// The largest frame the router accepts.
    pub(crate) max_frame: usize,
}

/// The connection's state, published by the connection task.
#[derive(Clone, Debug, Default)]
pub(crate) struct SessionState {
    /// Set at the first `Welcome` and kept across reconnects.
    pub(crate) info: Option<Arc<SessionInfo>>,
    pub(crate) connected: bool,
    /// Why the last connection attempt or session failed.
    pub(crate) last_error: Option<(ErrorKind, String)>,
    pub(crate) closed: bool,
}

/// What the relay asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message; answer `done` with the receiver count or the refusal.
    /// With `quiet` (a request whose caller waits on its replies alone), a
    /// refusal, or an acceptance by no service, goes into the request's
    /// reply buffer instead.
    Send { sealed: SealedPayload, done: oneshot::Sender<Result<u32, Error>>, quiet: bool },
    /// Send one frame (a key query) on the current connection, if any.
    Frame(Body),
    /// A handler in a task of its own finished with a delivery.
    Handled { of: Handling, success: bool },
    /// A large delivery was opened off the connection task.
    Opened(Box<OpenedDelivery>),
}

/// The delivery a handler runs for: `tag` of connection `generation`,
/// message `id`.
#[derive(Debug)]
pub(crate) struct Handling {
    pub(crate) generation: u64,
    pub(crate) tag: u64,
    pub(crate) id: MessageId,
}

/// A delivery of connection `generation` and what opening it gave.
#[derive(Debug)]
pub(crate) struct OpenedDelivery {
    pub(crate) generation: u64,
    pub(crate) deliver: Deliver,
    pub(crate) header: RoutingHeader,
    pub(crate) id: MessageId,
    pub(crate) opened: Result<Opened, CodecError>,
}

/// One outgoing message on its way to [`Shared::submit`].
#[derive(Debug)]
pub(crate) struct Outbound<'a> {
    pub(crate) kind: Kind,
    pub(crate) name: &'a str,
    pub(crate) payload: Bytes,
    pub(crate) opts: &'a MessageOptions,
    pub(crate) expects_reply: bool,
    pub(crate) cause: Option<&'a RoutingHeader>,
    pub(crate) stream_seq: u64,
    pub(crate) stream_final: bool,
    /// For requests: where replies go, registered before the send so no
    /// early reply is missed.
    pub(crate) replies: Option<ReplySink>,
    /// For replies: the sealer the codec handed out with the command.
    pub(crate) reply_sealer: Option<&'a Mutex<Box<dyn ReplySealing>>>,
}

/// Why [`Shared::queue_now`] stopped.
enum Step<'a> {
    Failed(Error),
    /// It would have to wait: boxed, so that the common path's future
    /// stays small.
    Wait(Box<Wait<'a>>),
}

impl<'a> Step<'a> {
    fn wait(wait: Wait<'a>) -> Self {
        Step::Wait(Box::new(wait))
    }
}

/// Where [`Shared::queue_waiting`] picks up.
enum Wait<'a> {
    /// No session yet, or a receiver's key is missing: start over, waiting
    /// for what was missing.
    Start(Unsealed<'a>),
    /// Sealed, but the connection task's queue is full (or closed).
    Room(Ready<'a>),
}

/// A message not sealed yet, with the time it has.
struct Unsealed<'a> {
    out: Outbound<'a>,
    quiet: bool,
    deadline: Instant,
    timeout: Duration,
}

/// A sealed message's command for the connection task, and what its
/// sender keeps.
struct Ready<'a> {
    command: Command,
    name: &'a str,
    queued: Queued,
    /// Whether replies were registered under its id (undone if not sent).
    registered: bool,
}

/// A message sealed and queued for the connection task.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) id: Uuid,
    /// The router's answer: the receiver count or the refusal.
    pub(crate) accepted: oneshot::Receiver<Result<u32, Error>>,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
}

/// A message the router accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Submitted {
    pub(crate) id: Uuid,
    pub(crate) receivers: u32,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) instance: String,
    pub(crate) codec: Arc<dyn PayloadCodec>,
    pub(crate) rejections: Rejections,
    pub(crate) breakers: Breakers,
    pub(crate) requests: Arc<Semaphore>,
    pub(crate) pending_replies: Mutex<HashMap<MessageId, ReplySink>>,
    pub(crate) state: watch::Receiver<SessionState>,
    pub(crate) commands: mpsc::Sender<Command>,
}

impl Shared {
    /// Sends through the circuit breaker of `name`.
    pub(crate) async fn submit_guarded(&self, out: Outbound<'_>) -> Result<Submitted, Error> {
        let name = out.name;
        self.check_breaker(name)?;
        let result = self.submit(out).await;
        self.record_outcome(name, &result);
        result
    }

    pub(crate) fn check_breaker(&self, name: &str) -> Result<(), Error> {
        self.breakers.check(name).map_err(|remaining| {
            Error::new(
                ErrorKind::CircuitOpen,
                format!("circuit for {name} is open after repeated failures; retry in {remaining:?}"),
            )
        })
    }

    pub(crate) fn record_outcome<T>(&self, name: &str, result: &Result<T, Error>) {
        match result {
            Ok(_) => self.breakers.record(name, true),
            Err(e) => self.record_error(name, e),
        }
    }

    /// Records a failed call with `name`'s circuit breaker: a transient
    /// failure counts against the path, a refusal does not, and a call the
    /// open circuit itself refused is not a new outcome.
    pub(crate) fn record_error(&self, name: &str, e: &Error) {
        if e.kind() != ErrorKind::CircuitOpen {
            self.breakers.record(name, !e.is_transient());
        }
    }

    /// Builds, seals and sends one message; resolves when the router accepted it.
    pub(crate) async fn submit(&self, out: Outbound<'_>) -> Result<Submitted, Error> {
        let name = out.name;
        let queued = self.queue(out, false).await?;
        let result = match tokio::time::timeout_at(queued.deadline, queued.accepted).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(self.timeout_error(name, queued.timeout)),
        };
        if result.is_err() {
            // No-op unless replies were registered under this id.
            self.unregister_replies(queued.id.as_bytes());
        }
        result.map(|receivers| Submitted { id: queued.id, receivers })
    }

    /// Builds, seals and queues one message for the connection task, which
    /// answers through [`Queued::accepted`] (see [`Command::Send`] for
    /// `quiet`).
    ///
    /// The common path is a plain function that awaits nothing; only when
    /// it would have to wait (no session yet, a receiver's key unknown, the
    /// connection task's queue full) does a boxed future take over. So this
    /// future, which every send creates and moves, stays small.
    pub(crate) async fn queue(&self, out: Outbound<'_>, quiet: bool) -> Result<Queued, Error> {
        match self.queue_now(out, quiet) {
            Ok(queued) => Ok(queued),
            Err(Step::Failed(err)) => Err(err),
            Err(Step::Wait(wait)) => {
                let waiting = Box::pin(self.queue_waiting(*wait));
                waiting.await
            }
        }
    }

    /// [`queue`](Self::queue) as far as it goes without waiting.
    fn queue_now<'a>(&self, out: Outbound<'a>, quiet: bool) -> Result<Queued, Step<'a>> {
        validate_name(out.name).map_err(Step::Failed)?;
        let timeout = out.opts.timeout.unwrap_or(self.settings.request_timeout);
        let msg = Unsealed { out, quiet, deadline: Instant::now() + timeout, timeout };
        let info = match self.session_now() {
            Some(info) => info.map_err(Step::Failed)?,
            None => return Err(Step::wait(Wait::Start(msg))),
        };
        // One clock read for the id, the header's expiry and the codec.
        let now = now_ms();
        let id = fast_v7(now);
        let (header, None) = self.header(&msg.out, &info, id, now) else {
            return Err(Step::wait(Wait::Start(msg)));
        };
        let ready = self.seal(msg, header, info.max_frame, id, now).map_err(Step::Failed)?;
        match self.commands.try_send(ready.command) {
            Ok(()) => Ok(ready.queued),
            // Full, or closed: the waiting path sends, or fails and undoes.
            Err(mpsc::error::TrySendError::Full(command) | mpsc::error::TrySendError::Closed(command)) => {
                Err(Step::wait(Wait::Room(Ready { command, ..ready })))
            }
        }
    }

    /// [`queue`](Self::queue) from where [`queue_now`](Self::queue_now)
    /// stopped, waiting where it has to.
    async fn queue_waiting(&self, wait: Wait<'_>) -> Result<Queued, Error> {
        let Ready { command, name, queued, registered } = match wait {
            Wait::Start(msg) => {
                let info = self.wait_session(msg.deadline).await?;
                let now = now_ms();
                let id = fast_v7(now);
                let (header, now) = match self.header(&msg.out, &info, id, now) {
                    (header, None) => (header, now),
                    // Time passed while the keys were awaited.
                    (header, Some(query)) => (self.await_keys(query, header, msg.deadline).await, now_ms()),
                };
                self.seal(msg, header, info.max_frame, id, now)?
            }
            Wait::Room(ready) => ready,
        };
        let sent = match tokio::time::timeout_at(queued.deadline, self.commands.send(command)).await {
            Ok(Ok(())) => return Ok(queued),
            Ok(Err(_)) => closed(),
            Err(_) => self.timeout_error(name, queued.timeout),
        };
        if registered {
            self.unregister_replies(queued.id.as_bytes());
        }
        Err(sent)
    }

    /// The routing header of `out` sent at `now_ms` (Unix ms), and, when the
    /// codec lacks a verified key for a service that may receive it, the
    /// query for that key.
    fn header(
        &self,
        out: &Outbound<'_>,
        info: &SessionInfo,
        id: Uuid,
        now_ms: u64,
    ) -> (RoutingHeader, Option<KeyQuery>) {
        let params = HeaderParams {
            kind: out.kind,
            name: out.name,
            opts: out.opts,
            expects_reply: out.expects_reply,
            cause: out.cause,
            stream_seq: out.stream_seq,
            stream_final: out.stream_final,
        };
        let sender = SenderInfo { identity: &info.identity, instance: &self.instance };
        let header = header::build(&params, &sender, id, now_ms);
        // Replies are sealed under the request's reply key, not receive keys.
        let missing = if out.kind == Kind::Reply { None } else { self.codec.missing_keys(&header, now_ms) };
        (header, missing)
    }

    /// Seals `msg` under `header` at `now_ms` (Unix ms) into the command for
    /// the connection task, registering where its replies go (for a request).
    fn seal<'a>(
        &self,
        msg: Unsealed<'a>,
        header: RoutingHeader,
        max_frame: usize,
        id: Uuid,
        now_ms: u64,
    ) -> Result<Ready<'a>, Error> {
        let Unsealed { out, quiet, deadline, timeout } = msg;
        let (name, registered) = (out.name, out.replies.is_some());
        let (sealed, opener) = if out.kind == Kind::Reply {
            let sealed = match out.reply_sealer {
                Some(sealer) => sealer.lock().unwrap_or_else(|p| p.into_inner()).seal(header, out.payload),
                None => self.codec.seal_reply(header, out.payload),
            };
            (sealed.map_err(codec_error)?, None)
        } else {
            let sealed = self.codec.seal(header, out.payload, now_ms).map_err(codec_error)?;
            (sealed.message, sealed.replies)
        };
        check_size(&sealed, max_frame)?;
        if let Some(mut sink) = out.replies {
            sink.opener = opener;
            self.lock_replies().insert(*id.as_bytes(), sink);
        }
        let (done, accepted) = oneshot::channel();
        let queued = Queued { id, accepted, deadline, timeout };
        Ok(Ready { command: Command::Send { sealed, done, quiet }, name, queued, registered })
    }

    /// The codec lacks a verified key for a service that may receive the
    /// message (`query` asks for it): asks the router for its key directory
    /// and waits (briefly) for the answer; then the codec seals with what it
    /// has.
    async fn await_keys(
        &self,
        mut query: KeyQuery,
        header: RoutingHeader,
        deadline: Instant,
    ) -> RoutingHeader {
        let Some(mut updates) = self.codec.key_updates() else { return header };
        let until = deadline.min(Instant::now() + KEY_WAIT);
        loop {
            updates.borrow_and_update();
            if self.commands.send(Command::Frame(Body::KeyQuery(query))).await.is_err() {
                return header;
            }
            if tokio::time::timeout_at(until, updates.changed()).await.is_err() || Instant::now() >= until {
                return header;
            }
            // The receiver may be announcing right now: ask again shortly.
            tokio::time::sleep(KEY_RETRY).await;
            match self.codec.missing_keys(&header, now_ms()) {
                Some(next) => query = next,
                None => return header,
            }
        }
    }

    /// The session, once the router has welcomed us (`None` until then).
    fn session_now(&self) -> Option<Result<Arc<SessionInfo>, Error>> {
        session_of(&self.state.borrow())
    }

    /// Waits until the router has welcomed us once (so our identity is known).
    async fn wait_session(&self, deadline: Instant) -> Result<Arc<SessionInfo>, Error> {
        let mut state = self.state.clone();
        let waited =
            tokio::time::timeout_at(deadline, state.wait_for(|s| s.info.is_some() || s.closed)).await;
        match waited {
            Ok(Ok(s)) => session_of(&s).unwrap_or_else(|| Err(closed())),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(self.not_connected("the router has not welcomed this relay yet")),
        }
    }

    /// The error for an operation that ran out of time: the reason we are
    /// disconnected if we are, else a plain timeout.
    pub(crate) fn timeout_error(&self, name: &str, timeout: Duration) -> Error {
        if self.state.borrow().connected {
            Error::new(ErrorKind::Timeout, format!("the router did not accept {name} within {timeout:?}"))
        } else {
            self.not_connected(&format!("{name} not sent within {timeout:?}"))
        }
    }

    fn not_connected(&self, what: &str) -> Error {
        let state = self.state.borrow();
        if state.closed {
            return closed();
        }
        match &state.last_error {
            Some((kind, message)) => Error::new(*kind, format!("{what}: not connected: {message}")),
            None => Error::new(ErrorKind::Timeout, format!("{what}: not connected")),
        }
    }

    pub(crate) fn unregister_replies(&self, command: &MessageId) {
        self.lock_replies().remove(command);
    }

    pub(crate) fn lock_replies(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, ReplySink>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove calls), so a poisoned lock is still usable.
        self.pending_replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }
}

/// The session `s` says we have: an error once the relay is closed, `None`
/// before the router's first `Welcome`.
fn session_of(s: &SessionState) -> Option<Result<Arc<SessionInfo>, Error>> {
    if s.closed {
        return Some(Err(closed()));
    }
    s.info.clone().map(Ok)
}

fn validate_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.split('.').all(|seg| !seg.is_empty())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!(
                "invalid message name {name:?}: use dot-separated segments of letters, digits, '-' and '_'"
            ),
        ))
    }
}

fn check_size(sealed: &SealedPayload, max_frame: usize) -> Result<(), Error> {
    let blobs: usize =
        sealed.tags.iter().chain(&sealed.grants).map(|b| b.data.len() + b.service.len() + 8).sum();
    // Protobuf framing adds a few bytes per field; 64 covers it generously.
    let estimate = LENGTH_PREFIX + sealed.header.len() + sealed.payload.len() + blobs + 64;
    if estimate > max_frame {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "message of about {estimate} bytes exceeds the router's maximum frame of {max_frame} bytes"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn codec_error(err: CodecError) -> Error {
    let kind = match err {
        CodecError::Rejected { .. } => ErrorKind::Tampered,
        CodecError::Truncated(_) => ErrorKind::Truncated,
        CodecError::NoReceivers(_) => ErrorKind::NoReceivers,
        CodecError::Unsupported { .. } | CodecError::Seal(_) => ErrorKind::Codec,
    };
    Error::with_source(kind, err.to_string(), err)
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the relay is closed")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A UUIDv7 (`millis`, the Unix time in ms, then 74 random bits) from the
/// thread-local CSPRNG. `Uuid::now_v7` asks the kernel for fresh random bytes on every
/// call (a `getrandom` syscall per message); ids only need to be unique and
/// unguessable, which the seeded thread RNG gives without a syscall.
pub(crate) fn fast_v7(millis: u64) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random::<[u8; 10]>()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_ids_are_version_7_with_the_given_time_and_distinct() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let now = now_ms();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(before <= now && now <= after, "{before} {now} {after}");
        let a = fast_v7(now);
        let b = fast_v7(now);
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = a.get_timestamp().unwrap().to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, now);
        assert_ne!(a, b, "same millisecond, different random bits");
    }

    #[test]
    fn names_are_dotted_segments() {
        for ok in ["todos.list", "a", "user-created.v2", "x_y.z"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a..b", "a.", "has space", "wild.*", "a.>"] {
            assert_eq!(validate_name(bad).unwrap_err().kind(), ErrorKind::InvalidName, "{bad}");
        }
    }

    #[test]
    fn oversized_messages_are_refused_locally() {
        let sealed = SealedPayload { payload: Bytes::from(vec![0u8; 2000]), ..Default::default() };
        assert_eq!(check_size(&sealed, 1024).unwrap_err().kind(), ErrorKind::TooLarge);
        assert!(check_size(&sealed, 4096).is_ok());
    }
}
