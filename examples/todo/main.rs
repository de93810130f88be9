//! The todo demo: the router, a todo service and a web server, wired
//! through the bus exactly as separate services would be.
//!
//! ```text
//! browser --HTTP--> web --todos.list / todos.create--> router --> todo
//!         <--HTML--     <--todos.listing / todos.created--      <--
//! ```
//!
//! Run from the repository root: `cargo run --example todo`, then open the
//! printed URL. It uses the development certificates in certs-example/ and
//! the policy in policy/todo.toml, and writes the audit log to
//! target/todo-demo/audit.jsonl. Stop it with Ctrl-C.
//!
//! Environment: `EXOCOM_DEMO_HTTP` (default 127.0.0.1:8080) and
//! `EXOCOM_DEMO_ROUTER` (default 127.0.0.1:7443).

mod service;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;

use exocom::audit::{self, AuditConfig};
use exocom::policy::Policy;
use exocom::router::{Router, RouterConfig};
use exocom::tls::{self, ServerFiles};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EXOCOM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let certs = root.join("certs-example");
    let http: SocketAddr =
        std::env::var("EXOCOM_DEMO_HTTP").unwrap_or_else(|_| "127.0.0.1:8080".into()).parse()?;
    let listen: SocketAddr =
        std::env::var("EXOCOM_DEMO_ROUTER").unwrap_or_else(|_| "127.0.0.1:7443".into()).parse()?;
    let data = root.join("target").join("todo-demo");
    std::fs::create_dir_all(&data)?;
    let audit_path = data.join("audit.jsonl");

    let (trigger, shutdown) = exocom::shutdown::channel();
    let policy = Policy::from_file(&root.join("policy/todo.toml"))?;
    let mut files = ServerFiles::from_certs_dir(&certs);
    files.trust_domain = Some("example.org".into());
    let mut config = RouterConfig::new(listen, tls::server_config(&files)?, policy);
    let mut ac = AuditConfig::new(audit_path.clone());
    ac.signing_key = Some(certs.join("audit/key.pem"));
    let (audit, audit_task) = audit::start(ac, shutdown.clone())?;
    config.audit = audit;
    let router = Router::bind(config).await?;
    let router_addr = router.local_addr()?;
    let router_task = tokio::spawn(router.run(shutdown.clone()));

    // Sealed end to end with the same policy the router enforces, unless
    // EXOCOM_DEMO_PLAIN is set (development: the router could read payloads).
    let plain = std::env::var_os("EXOCOM_DEMO_PLAIN").is_some();
    let sealing = (!plain).then(|| root.join("policy/todo.toml"));
    let todo = service::start(router_addr, certs.join("todo"), sealing.clone()).await?;
    let web = web::start(http, router_addr, certs.join("web"), sealing, shutdown.clone()).await?;

    println!("exocom todo demo");
    println!("  open         http://{}/", web.addr);
    println!("  router       {router_addr} (policy/todo.toml, certs-example/)");
    println!("  payloads     {}", if plain { "plain (EXOCOM_DEMO_PLAIN)" } else { "sealed end to end" });
    println!("  audit log    {}", audit_path.display());
    println!(
        "  verify it    cargo run -- audit verify {} --pubkey certs-example/audit/pub.pem",
        audit_path.display()
    );
    println!("Ctrl-C (or SIGTERM) stops everything and seals the audit log.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    trigger.trigger();
    todo.close().await;
    let _ = web.task.await;
    let _ = router_task.await;
    let _ = audit_task.await;
    Ok(())
}
