//! The router: accepts mTLS connections from relays, checks every send and
//! delivery against the policy, routes by message name, queues for offline
//! services, tracks replies, and audits routing metadata.
//!
//! Its parts: [`connection`] (handshake, `Hello`, per-connection reading and
//! batched writing, the send check), [`core`] (the one task that owns routing
//! state), [`decisions`] (cached policy answers), [`message`] (what an accepted message is), [`keys`] (the key
//! directory). It must never import `e2e`: it moves sealed payloads as opaque
//! bytes and holds no key that could open them.
//!
//! ```no_run
//! # async fn demo(config: exocom::router::RouterConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let (trigger, shutdown) = exocom::shutdown::channel();
//! let router = exocom::router::Router::bind(config).await?;
//! println!("listening on {}", router.local_addr()?);
//! tokio::spawn(router.run(shutdown));
//! // … later
//! trigger.trigger();
//! # Ok(()) }
//! ```

pub mod connection;
pub mod core;
pub mod decisions;
pub mod introspect;
pub mod keys;
pub mod message;
pub mod metrics;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::admin::AdminConfig;
use crate::admin::alerts::{AlertConfig, Alerts};
use crate::audit::AuditHandle;
use crate::policy::Policy;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::wire::DEFAULT_MAX_FRAME;

pub use self::core::CoreConfig;

/// The runtime worker threads a router starts with by default: one fewer
/// than the CPUs, at least one. The audit writer runs on a thread of its
/// own and, at high rates, keeps most of a CPU busy; on the 2-CPU
/// benchmark machine, where the clients share the CPUs too, one worker
/// routed as fast or faster than two in every workload and took 15-24 %
/// less CPU per message or round trip (docs/PERFORMANCE-HISTORY.md, ninth round).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Why the router could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be read at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored message could not be restored.
    #[error("stored message is corrupt: {0}")]
    Restore(#[from] message::HeaderError),
}

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct RouterLimits {
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// Most connections at once (handshakes included).
    pub max_connections: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed between the handshake and `Hello`.
    pub hello_timeout: Duration,
    /// Frames that may wait in one connection's outbox.
    pub outbox: usize,
    /// How long a closing connection may take to write what it has queued.
    pub drain_timeout: Duration,
    /// Commands that may wait for the routing core.
    pub core_queue: usize,
    /// Most connections of one service identity at once.
    pub max_connections_per_identity: usize,
    /// A connection silent this long is pinged; silent for twice as long, closed.
    pub idle_timeout: Duration,
    /// Time allowed to complete a frame once its first bytes arrived: a peer
    /// dribbling a frame byte by byte (slowloris) is closed after it.
    pub frame_timeout: Duration,
    /// Sends of one connection accepted by the router but not yet answered;
    /// past it the router stops reading that connection until answers go out.
    pub max_in_flight: usize,
    /// Most subscriptions (names) one instance may hold.
    pub max_subscriptions: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            outbox: 8192,
            drain_timeout: Duration::from_secs(5),
            core_queue: 8192,
            max_connections_per_identity: 256,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            max_subscriptions: 1024,
        }
    }
}

/// Everything the router runs with. Parse and check all of it before
/// binding anything.
pub struct RouterConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS (from [`crate::tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// The policy in force; swapped atomically on reload.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The audit log.
    pub audit: AuditHandle,
    /// Where queued messages are kept.
    pub store: Arc<Store>,
    /// Connection limits.
    pub limits: RouterLimits,
    /// Queue and delivery settings.
    pub core: CoreConfig,
    /// The admin API listener; `None` (the default) serves none.
    pub admin: Option<AdminConfig>,
    /// Traffic alert thresholds.
    pub alerts: AlertConfig,
    /// Where the router counts (served at the admin API's `/metrics`).
    pub metrics: Arc<metrics::Metrics>,
}

impl RouterConfig {
    /// A configuration with default limits, no audit log and a memory store.
    pub fn new(listen: SocketAddr, tls: Arc<rustls::ServerConfig>, policy: Policy) -> Self {
        RouterConfig {
            listen,
            tls,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            audit: AuditHandle::disabled(),
            store: Arc::new(Store::Memory),
            limits: RouterLimits::default(),
            core: CoreConfig::default(),
            admin: None,
            alerts: AlertConfig::default(),
            metrics: Arc::new(metrics::Metrics::new()),
        }
    }
}

/// Changes the router's TLS without a restart: a new certificate, CA
/// bundle or CRLs take effect at the next handshake, and connections whose
/// certificate a new CRL revokes are closed. Cheap to clone.
#[derive(Clone)]
pub struct TlsHandle {
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    revoked: Arc<watch::Sender<Arc<HashSet<Vec<u8>>>>>,
}

impl TlsHandle {
    fn new(config: Arc<rustls::ServerConfig>) -> Self {
        let (tx, _) = watch::channel(Arc::new(HashSet::new()));
        TlsHandle { config: Arc::new(ArcSwap::new(config)), revoked: Arc::new(tx) }
    }

    /// Uses `config` for every new handshake and closes live connections
    /// whose certificate serial is in `revoked` (from [`crate::tls::revoked_serials`]).
    pub fn update(&self, config: Arc<rustls::ServerConfig>, revoked: HashSet<Vec<u8>>) {
        self.config.store(config);
        self.revoked.send_replace(Arc::new(revoked));
    }

    /// The configuration new handshakes use now.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    pub(crate) fn revocations(&self) -> watch::Receiver<Arc<HashSet<Vec<u8>>>> {
        self.revoked.subscribe()
    }
}

/// A bound router, ready to run.
pub struct Router {
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: RouterConfig,
    tls: TlsHandle,
}

impl Router {
    /// Binds the listen address (port 0 picks a free port).
    pub async fn bind(config: RouterConfig) -> Result<Router, RouterError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| RouterError::Bind { addr: config.listen, source })?;
        let admin = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.listen)
                    .await
                    .map_err(|source| RouterError::Bind { addr: a.listen, source })?,
            ),
            None => None,
        };
        let tls = TlsHandle::new(config.tls.clone());
        Ok(Router { listener, admin, config, tls })
    }

    /// The handle that swaps TLS settings while the router runs.
    pub fn tls_handle(&self) -> TlsHandle {
        self.tls.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin API's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then stops accepting, lets connections
    /// write what they have queued, and returns.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RouterError> {
        let Router { listener, admin, config, tls } = self;
        let mut core =
            core::Core::new(config.policy.clone(), config.audit.clone(), config.store.clone(), config.core)
                .with_metrics(config.metrics.clone());
        let restored = core.restore(config.store.load()?)?;
        if restored > 0 {
            info!(messages = restored, "restored queued messages from the store");
        }
        let (core_tx, core_rx) = mpsc::channel(config.limits.core_queue);
        let core_task = tokio::spawn(core::run(core, core_rx, shutdown.clone()));
        let admin_task = match (admin, &config.admin) {
            (Some(listener), Some(ac)) => {
                let state = crate::admin::AdminState::new(
                    core_tx.clone(),
                    config.policy.clone(),
                    config.audit.clone(),
                    config.metrics.clone(),
                    ac,
                );
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "admin API listening");
                }
                Some(tokio::spawn(crate::admin::serve(
                    listener,
                    ac.tls.clone(),
                    Arc::new(state),
                    shutdown.clone(),
                )))
            }
            _ => None,
        };
        let alerts = Arc::new(Alerts::new(config.alerts, config.audit.clone(), config.metrics.clone()));
        let shared = Arc::new(connection::Shared {
            policy: config.policy,
            audit: config.audit,
            core: core_tx,
            limits: config.limits.clone(),
            keys: keys::KeyDirectory::default(),
            next_conn: AtomicU64::new(1),
            per_identity: std::sync::Mutex::new(std::collections::HashMap::new()),
            tls: tls.clone(),
            metrics: config.metrics.clone(),
            alerts,
            rates: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        let mut tasks = JoinSet::new();
        let mut stop = shutdown.clone();
        let mut backoff = Duration::from_millis(10);
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.wait() => break,
            };
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => { backoff = Duration::from_millis(10); x }
                    Err(err) => {
                        // Out of file descriptors and the like: wait, never spin or panic.
                        warn!(error = %err, "accept failed; backing off");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = stop.wait() => break,
            };
            let fut = connection::serve(tcp, remote, tls.acceptor(), shared.clone(), shutdown.clone());
            tasks.spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        info!("shutting down: no new connections; draining");
        drop(listener);
        let grace = config.limits.drain_timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            warn!("connections still open after the grace period; closing them");
            tasks.abort_all();
        }
        drop(shared);
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if let Err(err) = core_task.await {
            error!(error = %err, "routing core failed");
        }
        Ok(())
    }
}
