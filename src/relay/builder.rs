//! [`RelayBuilder`]: the relay's settings and handlers, then `connect`.
//!
//! Every setting has a default that suits a service; the builder only
//! collects values, and nothing touches the network before
//! [`connect`](RelayBuilder::connect).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::breaker::{BreakerConfig, Breakers};
use super::codec::{PayloadCodec, Plain};
use super::connection::{ConnectionTask, Connector, TlsConnector};
use super::error::{BoxError, Error, ErrorKind};
use super::handler::{HandlerTable, Incoming, Responder, boxed};
use super::options::Settings;
use super::sealing::{E2e, E2eOptions};
use super::shared::{SessionState, Shared};
use super::{Inner, Relay};
use crate::shutdown;
use crate::tls::{self, IdentityDir};

/// How long `connect` waits for the first key directory of a sealing relay.
const FIRST_KEYS_WAIT: Duration = Duration::from_secs(2);

/// Configures and connects a [`Relay`]. Made by [`Relay::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use exocom::relay::{Incoming, Relay, Responder};
/// use exocom::tls::IdentityDir;
///
/// # async fn demo() -> Result<(), exocom::relay::Error> {
/// let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/todo"))
///     .server_name("localhost")
///     .request_timeout(Duration::from_secs(5))
///     .max_outstanding_requests(1024)
///     .prefetch(64)
///     .handle("todos.list", [1], |_msg: Incoming, responder: Responder| async move {
///         responder.reply("todos.listing", &["write docs", "ship"]).await
///     })
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RelayBuilder {
    addr: String,
    identity: IdentityDir,
    settings: Settings,
    handlers: HandlerTable,
    codec: Arc<dyn PayloadCodec>,
    end_to_end: Option<E2eOptions>,
    instance: String,
}

impl RelayBuilder {
    pub(crate) fn new(addr: String, identity: IdentityDir) -> Self {
        Self {
            addr,
            identity,
            settings: Settings::default(),
            handlers: HandlerTable::default(),
            codec: Arc::new(Plain),
            end_to_end: None,
            instance: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The name the router's certificate must carry (default `localhost`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.settings.server_name = name.into();
        self
    }

    /// How long a send waits to be accepted and a request waits for each
    /// reply (default 5 s). [`MessageOptions::timeout`](super::MessageOptions::timeout)
    /// overrides it per call.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// How long one connection attempt (TCP, TLS, Hello/Welcome) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// At most this many requests wait for replies at once; more fail fast
    /// with [`ErrorKind::TooManyRequests`] (default 1024).
    pub fn max_outstanding_requests(mut self, max: usize) -> Self {
        self.settings.max_outstanding_requests = max;
        self
    }

    /// At most this many deliveries are unacknowledged at this instance at
    /// once, i.e. handlers running concurrently (default 64).
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.settings.prefetch = prefetch;
        self
    }

    /// Replies buffered per request before the request is dropped as a slow
    /// consumer (default 256).
    pub fn reply_buffer(mut self, replies: usize) -> Self {
        self.settings.reply_buffer = replies.max(1);
        self
    }

    /// The duplicate filter: remember up to `capacity` handled message ids
    /// for up to `max_age` (default 10 000 ids, 10 minutes).
    pub fn dedup_window(mut self, capacity: usize, max_age: Duration) -> Self {
        self.settings.dedup_capacity = capacity;
        self.settings.dedup_max_age = max_age;
        self
    }

    /// The circuit breaker per message name: `threshold` consecutive
    /// timeouts or transient failures open it for `cool_down` (default 5,
    /// 10 s; a threshold of 0 disables it).
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.settings.breaker = BreakerConfig { threshold, cool_down };
        self
    }

    /// Reconnect delays: from `base`, doubling, jittered, capped at `cap`
    /// (default 100 ms to 10 s).
    pub fn reconnect_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.settings.reconnect_base = base;
        self.settings.reconnect_cap = cap;
        self
    }

    /// When true, [`connect`](Self::connect) returns at once and keeps trying
    /// in the background; when false (the default) it fails if the first
    /// attempt fails, so a wrong address or certificate shows up at start.
    pub fn retry_initial_connect(mut self, retry: bool) -> Self {
        self.settings.retry_initial_connect = retry;
        self
    }

    /// How long [`Relay::close`] waits for running handlers (default 5 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.settings.drain_timeout = timeout;
        self
    }

    /// How long the connection may be silent before the relay pings the
    /// router (default 15 s). Silent for twice as long, the connection is
    /// taken for dead (a router that vanished without closing it, a
    /// network that dropped it) and the relay reconnects.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.settings.keepalive = interval.max(Duration::from_millis(10));
        self
    }

    /// The payload codec (default [`Plain`]); end-to-end sealing plugs in here.
    pub fn codec(mut self, codec: Arc<dyn PayloadCodec>) -> Self {
        self.codec = codec;
        self.end_to_end = None;
        self
    }

    /// Seals every command, event and reply end to end (docs/E2E.md): only
    /// the services the trusted policy in `opts` lets receive a name, and
    /// whose key announcement verifies against the pinned CA, can read it;
    /// every delivery is opened and checked before a handler sees it. The
    /// keys are loaded at [`connect`](Self::connect); a missing or bad file
    /// is an [`ErrorKind::Config`] error there.
    ///
    /// ```no_run
    /// # use exocom::relay::{E2eOptions, Relay};
    /// # use exocom::tls::IdentityDir;
    /// # async fn demo() -> Result<(), exocom::relay::Error> {
    /// let identity = IdentityDir::new("certs-example/web");
    /// let relay = Relay::builder("127.0.0.1:7443", identity.clone())
    ///     .end_to_end(E2eOptions::new(&identity, "policy/todo.toml"))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn end_to_end(mut self, opts: E2eOptions) -> Self {
        self.end_to_end = Some(opts);
        self
    }

    /// Handles messages named `name` in `versions` (empty: every version).
    ///
    /// The handler gets the message and a [`Responder`]. Returning `Ok`
    /// acknowledges the message; `Err` or a panic has it redelivered.
    ///
    /// ```no_run
    /// use exocom::relay::{Incoming, Relay, Responder};
    /// use exocom::tls::IdentityDir;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct NewTodo { text: String }
    ///
    /// # async fn demo() -> Result<(), exocom::relay::Error> {
    /// let relay = Relay::builder("127.0.0.1:7443", IdentityDir::new("certs-example/todo"))
    ///     .handle("todos.create", [1, 2], |msg: Incoming, responder: Responder| async move {
    ///         let todo: NewTodo = msg.json()?;
    ///         responder.publish("todo.created", &todo.text).await?;
    ///         responder.reply("todos.created", &todo.text).await
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn handle<F, Fut, E>(
        mut self,
        name: impl Into<String>,
        versions: impl IntoIterator<Item = u32>,
        f: F,
    ) -> Self
    where
        F: Fn(Incoming, Responder) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.handlers.insert(name.into(), versions.into_iter().collect(), boxed(f));
        self
    }

    /// Loads the identity (cert.pem, key.pem, ca.pem), connects to the
    /// router and subscribes the handlers. With end-to-end sealing it also
    /// waits (up to 2 s) for the router's first key directory: by then our
    /// receive key is published and we know every key announced before us.
    ///
    /// Fails with [`ErrorKind::Config`] when the identity cannot be loaded,
    /// and (unless [`retry_initial_connect`](Self::retry_initial_connect))
    /// with the first attempt's error: [`ErrorKind::Unreachable`],
    /// [`ErrorKind::Certificate`], [`ErrorKind::UnknownIdentity`], [`ErrorKind::Timeout`].
    pub async fn connect(self) -> Result<Relay, Error> {
        let identity = self.identity.clone();
        let dir = identity.dir.display().to_string();
        let config = tokio::task::spawn_blocking(move || tls::client_config(&identity))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Config, "loading the identity failed", e))?
            .map_err(|e| {
                Error::with_source(ErrorKind::Config, format!("cannot load the identity in {dir}: {e}"), e)
            })?;
        let server_name =
            rustls_pki_types::ServerName::try_from(self.settings.server_name.clone()).map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!("invalid server name {:?}", self.settings.server_name),
                    e,
                )
            })?;
        let connector = TlsConnector { addr: self.addr.clone(), server_name, config };
        let mut this = self;
        if let Some(opts) = this.end_to_end.take() {
            let identity = this.identity.clone();
            let instance = this.instance.clone();
            let e2e = tokio::task::spawn_blocking(move || E2e::load(&identity, &opts, &instance))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Config, "loading end-to-end keys failed", e))??;
            this.codec = Arc::new(e2e);
        }
        let waits = !this.settings.retry_initial_connect;
        let mut keys = this.codec.key_updates().filter(|_| waits);
        let relay = this.connect_with(connector).await?;
        if let Some(keys) = &mut keys {
            // The router handles one connection's frames in order, and we
            // announce our key before asking for the directory: once its
            // answer is here, a sender that asks finds our key, and we know
            // the keys of everyone who announced before us. Without this, the
            // first messages to a service that just started could be sealed
            // before its sender learned its key, and it could not open them.
            let _ = tokio::time::timeout(FIRST_KEYS_WAIT, keys.changed()).await;
        }
        Ok(relay)
    }

    /// Connects through any [`Connector`] (the seam tests use).
    pub(crate) async fn connect_with<C: Connector>(self, connector: C) -> Result<Relay, Error> {
        let settings = self.settings;
        let (commands, commands_rx) = mpsc::channel(settings.command_buffer.max(1));
        let (state_tx, state) = watch::channel(SessionState::default());
        let (trigger, shutdown) = shutdown::channel();
        let retry = settings.retry_initial_connect;
        let shared = Arc::new(Shared {
            instance: self.instance,
            rejections: self.codec.rejections().unwrap_or_default(),
            codec: self.codec,
            breakers: Breakers::new(settings.breaker),
            requests: Arc::new(Semaphore::new(settings.max_outstanding_requests)),
            pending_replies: Mutex::new(Default::default()),
            state,
            commands,
            settings,
        });
        let task = ConnectionTask::new(
            connector,
            Arc::clone(&shared),
            Arc::new(self.handlers),
            commands_rx,
            state_tx,
            shutdown,
        );
        let handle = if retry {
            tokio::spawn(task.run(None))
        } else {
            let (first_tx, first) = oneshot::channel();
            let handle = tokio::spawn(task.run(Some(first_tx)));
            match first.await {
                Ok(Ok(())) => handle,
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(Error::new(ErrorKind::Closed, "the connection task stopped")),
            }
        };
        Ok(Relay { inner: Arc::new(Inner { shared, trigger, task: Mutex::new(Some(handle)) }) })
    }
}
