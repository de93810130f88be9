//! The two servers the benchmark runs as child processes of itself, so a
//! profiler can attach to the server alone: our router (mTLS, policy, audit
//! log on) and the bare TLS forwarder (none of those).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use exocom::audit::{self, AuditConfig};
use exocom::policy::Policy;
use exocom::router::{Router, RouterConfig};
use exocom::tls::{self, ServerFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::setup::TRUST_DOMAIN;

fn server_tls(dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let mut files = ServerFiles::from_certs_dir(dir.join("certs"));
    files.trust_domain = Some(TRUST_DOMAIN.into());
    Ok(tls::server_config(&files)?)
}

/// Runs `then` on a thread of its own once standard input closes (the
/// benchmark holds its write end while it needs the server).
fn on_end_of_input(then: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        then();
    });
}

/// Our router with the benchmark policy and (unless `audit` is false) the
/// audit log in `dir`. It shuts down when its standard input closes (the
/// benchmark closes it when done), so that a profiler running it, such as
/// callgrind, sees a normal exit and writes its results.
pub async fn router(dir: &Path, audit: bool) -> Result<()> {
    let policy = Policy::from_file(&dir.join("policy.toml")).context("benchmark policy")?;
    let (trigger, shutdown) = exocom::shutdown::channel();
    on_end_of_input(move || trigger.trigger());
    let mut config = RouterConfig::new("127.0.0.1:0".parse()?, server_tls(dir)?, policy);
    if audit {
        let mut audit_cfg = AuditConfig::new(dir.join(format!("audit-{}.jsonl", std::process::id())));
        audit_cfg.signing_key = Some(dir.join("certs").join("audit").join("key.pem"));
        let (handle, _audit_task) = audit::start(audit_cfg, shutdown.clone())?;
        config.audit = handle;
    }
    let router = Router::bind(config).await?;
    println!("LISTENING {}", router.local_addr()?);
    router.run(shutdown).await?;
    Ok(())
}

/// The limit: accepts connections in pairs (the first connection of a pair
/// is side A, the second side B) and copies bytes between them in both
/// directions. Frames pass through whole and unparsed: no policy, no audit,
/// no routing, only TLS in and TLS out.
pub async fn forwarder(dir: &Path) -> Result<()> {
    // Exits when its standard input closes, as the router shuts down.
    on_end_of_input(|| std::process::exit(0));
    let acceptor = TlsAcceptor::from(server_tls(dir)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTENING {}", listener.local_addr()?);
    loop {
        let (a, _) = listener.accept().await?;
        let _ = a.set_nodelay(true);
        let Ok(a) = acceptor.accept(a).await else { continue };
        let (b, _) = listener.accept().await?;
        let _ = b.set_nodelay(true);
        let Ok(b) = acceptor.accept(b).await else { continue };
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        tokio::spawn(copy(ar, bw));
        tokio::spawn(copy(br, aw));
    }
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}
