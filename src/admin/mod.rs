//! The admin API: a separate HTTPS listener (off by default) where
//! operators and security reviewers see what the router is doing without
//! shell access to its host and without client certificates of their own.
//!
//! | module | what it is |
//! |---|---|
//! | [`auth`] | EdDSA JWT verification against a pinned key, scopes |
//! | [`jwt_ring`] | the ring-backed jsonwebtoken crypto provider |
//! | [`alerts`] | denial and handshake-failure thresholds → `alert` audit records |
//! | `http` | a minimal, strict HTTP/1.1 reader and writer |
//! | `routes` | the read-only routes and their scopes |
//!
//! It is read-only: no route changes routing state, and no route returns a
//! payload, a key or a token. Tokens are never logged; each authenticated
//! call is written to the audit log as `admin_call` with the token's `sub`
//! and `jti`. It must never import `e2e`.

pub mod alerts;
pub mod auth;
mod http;
pub mod jwt_ring;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::audit::AuditHandle;
use crate::policy::Policy;
use crate::router::core::Command;
use crate::router::message::now_ms;
use crate::router::metrics::Metrics;
use crate::shutdown::Shutdown;

pub use self::routes::ROUTES;

/// Most admin connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Time allowed for an admin TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to write a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the admin listener runs. Set [`crate::router::RouterConfig::admin`]
/// to turn it on.
#[derive(Debug)]
pub struct AdminConfig {
    /// Address to listen on (loopback unless a reviewer's network needs it).
    pub listen: SocketAddr,
    /// TLS (from [`crate::tls::admin_server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// Checks tokens against the pinned admin key.
    pub verifier: auth::Verifier,
    /// Serve `/metrics` without a token (for a scraper on a trusted network).
    pub metrics_public: bool,
}

/// What the admin routes read: handles on the router's state.
pub(crate) struct AdminState {
    pub core: mpsc::Sender<Command>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: AuditHandle,
    pub metrics: Arc<Metrics>,
    pub verifier: auth::Verifier,
    pub metrics_public: bool,
    /// The policy last seen (its address) and when it was first seen: a
    /// reload swaps the pointer, so this gives its load time to within the
    /// watch interval without a hook in the reloader.
    policy_ptr: AtomicUsize,
    policy_at_ms: AtomicU64,
}

impl AdminState {
    pub(crate) fn new(
        core: mpsc::Sender<Command>,
        policy: Arc<ArcSwap<Policy>>,
        audit: AuditHandle,
        metrics: Arc<Metrics>,
        config: &AdminConfig,
    ) -> Self {
        let ptr = Arc::as_ptr(&policy.load_full()) as usize;
        AdminState {
            core,
            policy,
            audit,
            metrics,
            verifier: config.verifier.clone(),
            metrics_public: config.metrics_public,
            policy_ptr: AtomicUsize::new(ptr),
            policy_at_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Notes a policy swap.
    fn watch_policy(&self) {
        let ptr = Arc::as_ptr(&self.policy.load_full()) as usize;
        if self.policy_ptr.swap(ptr, Ordering::Relaxed) != ptr {
            self.policy_at_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// When the policy in force was loaded, Unix ms.
    pub(crate) fn policy_loaded_at_ms(&self) -> u64 {
        self.watch_policy();
        self.policy_at_ms.load(Ordering::Relaxed)
    }
}

/// Serves admin requests on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AdminState>,
    mut shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => state.watch_policy(),
            r = listener.accept() => match r {
                Ok((tcp, remote)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(%remote, "admin connection limit reached; closing");
                        continue;
                    };
                    let fut = connection(tcp, remote, acceptor.clone(), state.clone());
                    tasks.spawn(async move {
                        fut.await;
                        drop(permit);
                    });
                }
                Err(err) => {
                    warn!(error = %err, "admin accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Calls are read-only: nothing is lost by cutting them short.
    tasks.abort_all();
    debug!("admin listener stopped");
}

async fn connection(tcp: TcpStream, remote: SocketAddr, acceptor: TlsAcceptor, state: Arc<AdminState>) {
    let span = info_span!("admin", peer.addr = %remote);
    async move {
        let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                debug!(error = %err, "admin TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("admin TLS handshake timed out");
                return;
            }
        };
        let resp = match tokio::time::timeout(http::HEAD_TIMEOUT, http::read_request(&mut tls)).await {
            Ok(Ok(req)) => {
                let resp = routes::handle(&req, &state, remote).await;
                // Method, path and status only: never the query's values or the token.
                info!(method = %req.method, path = %req.path, status = resp.status, "admin call");
                resp
            }
            Ok(Err(err)) => match err.response() {
                Some(resp) => resp,
                None => return,
            },
            Err(_) => return,
        };
        state.metrics.admin_call(resp.status);
        let _ = tokio::time::timeout(WRITE_TIMEOUT, http::write_response(&mut tls, &resp)).await;
    }
    .instrument(span)
    .await
}
