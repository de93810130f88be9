//! Reply streams: what [`Relay::request`](super::Relay::request) returns.
//!
//! The connection task pushes each reply to a request into a bounded
//! channel; [`Replies`] reads it, ends the stream when every service the
//! command reached has sent its final reply, and errors when no reply comes
//! within the timeout. A caller that stops reading does not stall the
//! connection: once the buffer is full the request is dropped and the
//! stream ends with [`ErrorKind::SlowConsumer`]. This module never touches
//! the socket.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Sleep;
use uuid::Uuid;

use super::codec::ReplyOpening;
use super::dedup::MessageId;
use super::error::{Error, ErrorKind};
use super::shared::Shared;

/// One reply to a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) id: Uuid,
    pub(crate) response_to: Uuid,
    pub(crate) sender: String,
    pub(crate) sender_id: String,
    pub(crate) timestamp_ms: u64,
    pub(crate) stream_seq: u64,
    pub(crate) stream_final: bool,
    pub(crate) payload: Bytes,
}

impl Reply {
    /// The reply's name, e.g. `todos.listing` or `transfer.insufficient-funds`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reply's API version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The reply's own message id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The id of the command this answers.
    pub fn response_to(&self) -> Uuid {
        self.response_to
    }

    /// The replying service, as the router authenticated it.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// The replying service's identity (SPIFFE URI), as the router authenticated it.
    pub fn sender_id(&self) -> &str {
        &self.sender_id
    }

    /// When the router accepted the reply.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.timestamp_ms)
    }

    /// Position in the replying service's stream, from 0.
    pub fn stream_seq(&self) -> u64 {
        self.stream_seq
    }

    /// Whether this is the replying service's last reply.
    pub fn is_final(&self) -> bool {
        self.stream_final
    }

    /// The payload bytes (JSON unless the sender chose otherwise).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// Where the connection task puts the replies to one request.
#[derive(Debug)]
pub(crate) struct ReplySink {
    pub(crate) tx: mpsc::Sender<Result<Reply, Error>>,
    /// Opens this request's replies (end-to-end sealing), set when sealed.
    pub(crate) opener: Option<Box<dyn ReplyOpening>>,
    /// Set when a reply had to be dropped because the buffer was full.
    pub(crate) overflowed: Arc<AtomicBool>,
}

/// The reading end of a request's reply buffer.
#[derive(Debug)]
pub(crate) struct ReplyReceiver {
    rx: mpsc::Receiver<Result<Reply, Error>>,
    overflowed: Arc<AtomicBool>,
}

/// A reply buffer of `capacity` replies: the sink for the connection task,
/// the receiver for [`Replies`].
pub(crate) fn reply_channel(capacity: usize) -> (ReplySink, ReplyReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    (ReplySink { tx, opener: None, overflowed: Arc::clone(&overflowed) }, ReplyReceiver { rx, overflowed })
}

/// The replies to one request, in arrival order.
///
/// Read with [`next`](Replies::next) or as a [`Stream`]. The stream yields
/// each reply, ends (`None`) after every receiving service sent its final
/// reply, and yields one `Err` (kind [`ErrorKind::Timeout`]) when no reply
/// came within the timeout, counted from the request or from the previous
/// reply. Dropping it abandons the request.
#[derive(Debug)]
pub struct Replies {
    rx: mpsc::Receiver<Result<Reply, Error>>,
    overflowed: Arc<AtomicBool>,
    shared: Arc<Shared>,
    command: MessageId,
    name: String,
    receivers: u32,
    finals: HashSet<String>,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    permit: Option<OwnedSemaphorePermit>,
    finished: bool,
}

impl Replies {
    pub(crate) fn new(
        receiver: ReplyReceiver,
        shared: Arc<Shared>,
        command: MessageId,
        name: String,
        receivers: u32,
        idle: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            rx: receiver.rx,
            overflowed: receiver.overflowed,
            shared,
            command,
            name,
            receivers,
            finals: HashSet::new(),
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            permit: Some(permit),
            finished: false,
        }
    }

    /// The id of the command these reply to.
    pub fn command_id(&self) -> Uuid {
        Uuid::from_bytes(self.command)
    }

    /// How many services the command was queued for (the stream ends after
    /// a final reply from each).
    pub fn receivers(&self) -> u32 {
        self.receivers
    }

    /// The next reply; `None` once the stream has ended.
    ///
    /// ```no_run
    /// # async fn demo(relay: exocom::relay::Relay) -> Result<(), exocom::relay::Error> {
    /// let mut replies = relay.request("files.read", &"report.csv").await?;
    /// while let Some(reply) = replies.next().await {
    ///     let reply = reply?;
    ///     println!("{} from {}", reply.name(), reply.sender());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<Result<Reply, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Every remaining reply, until the stream ends; an error if it does not
    /// end properly.
    pub async fn collect(mut self) -> Result<Vec<Reply>, Error> {
        let mut all = Vec::new();
        while let Some(reply) = self.next().await {
            all.push(reply?);
        }
        Ok(all)
    }

    /// Whether the stream has ended (and recorded its outcome with the
    /// circuit breaker).
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    fn finish(&mut self, path_healthy: bool) {
        self.finished = true;
        self.permit = None;
        self.shared.unregister_replies(&self.command);
        self.shared.breakers.record(&self.name, path_healthy);
    }
}

impl Stream for Replies {
    type Item = Result<Reply, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.receivers == 0 {
            this.finish(true);
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
            Poll::Ready(Some(Ok(reply))) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                if reply.stream_final {
                    // With one receiving service (every `request_one`) its
                    // final reply ends the request: nothing to remember.
                    let all_final = this.receivers <= 1 || {
                        this.finals.insert(reply.sender.clone());
                        this.finals.len() >= this.receivers as usize
                    };
                    if all_final {
                        this.finish(true);
                    }
                }
                return Poll::Ready(Some(Ok(reply)));
            }
            Poll::Ready(None) => {
                let err = if this.overflowed.load(Ordering::Acquire) {
                    this.finish(true);
                    Error::new(
                        ErrorKind::SlowConsumer,
                        format!("replies to {} were not read fast enough", this.name),
                    )
                } else if this.shared.is_closed() {
                    this.finish(true);
                    Error::new(ErrorKind::Closed, "the relay was closed")
                } else {
                    this.finish(false);
                    Error::new(ErrorKind::ConnectionLost, format!("the request {} was abandoned", this.name))
                };
                return Poll::Ready(Some(Err(err)));
            }
            Poll::Pending => {}
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let cut = this
                    .shared
                    .lock_replies()
                    .get(&this.command)
                    .and_then(|sink| sink.opener.as_ref().map(|o| o.finish()));
                this.finish(false);
                let err = match cut {
                    Some(Err(cut)) => {
                        this.shared.rejections.count(cut.label());
                        Error::with_source(
                            ErrorKind::Truncated,
                            format!("replies to {} stopped without a final reply: {cut}", this.name),
                            cut,
                        )
                    }
                    _ => Error::new(
                        ErrorKind::Timeout,
                        format!("no reply to {} within {:?}", this.name, this.idle),
                    ),
                };
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.unregister_replies(&self.command);
        }
    }
}
