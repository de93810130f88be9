//! Throughput through a real router (in this process, over TLS on
//! loopback) with end-to-end sealing off and on, in one run: one sender
//! relay, one receiving relay, one-way commands of 256 B and 64 KiB.
//! Prints messages/s and MB/s for each case.
//!
//! `cargo run --release --example e2e_throughput [-- N_SMALL N_LARGE]`
//! (defaults 20000 and 1000 messages). No audit log (its cost is measured
//! in docs/AUDIT.md); the router's memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exocom::policy::Policy;
use exocom::relay::{E2eOptions, Incoming, Relay, Responder};
use exocom::router::{Router, RouterConfig};
use exocom::tls::{self, IdentityDir, ServerFiles};
use tokio::sync::Notify;

const POLICY: &str = r#"
[meta]
trust_domain = "example.org"

[services.sender]
id = "spiffe://example.org/svc/sender"
send = ["bench.put"]

[services.receiver]
id = "spiffe://example.org/svc/receiver"
receive = ["bench.put"]
"#;

/// Sends in flight at once (each waits for the router's Accepted).
const WINDOW: usize = 256;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n_small = args.first().copied().unwrap_or(20_000);
    let n_large = args.get(1).copied().unwrap_or(1_000);

    let dir = tempfile_dir()?;
    let certs = dir.join("certs");
    let services = vec!["sender".to_string(), "receiver".to_string()];
    exocom::certs::init(&certs, "example.org", &services, 2)?;
    for s in &services {
        exocom::e2e::ReceiveKey::generate()?.save(&certs.join(s), false)?;
    }
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, POLICY)?;

    let mut files = ServerFiles::from_certs_dir(&certs);
    files.trust_domain = Some("example.org".into());
    let mut config = RouterConfig::new(
        "127.0.0.1:0".parse()?,
        tls::server_config(&files)?,
        Policy::from_file(&policy_path)?,
    );
    config.core.queue_max_messages = 1 << 20;
    config.core.queue_max_bytes = 8 << 30;
    let router = Router::bind(config).await?;
    let addr = router.local_addr()?.to_string();
    let (trigger, shutdown) = exocom::shutdown::channel();
    let router_task = tokio::spawn(router.run(shutdown));

    println!("e2e_throughput: 1 sender -> router -> 1 receiver, {WINDOW} sends in flight, one-way commands");
    println!("{:<8} {:>8} {:>8} {:>12} {:>10} {:>10}", "sealing", "size", "n", "seconds", "msg/s", "MB/s");
    for (size, n) in [(256usize, n_small), (64 * 1024, n_large)] {
        for sealed in [false, true] {
            let (secs, n) = run(&addr, &certs, &policy_path, sealed, size, n).await?;
            println!(
                "{:<8} {:>8} {:>8} {:>12.3} {:>10.0} {:>10.1}",
                if sealed { "on" } else { "off" },
                size,
                n,
                secs,
                n as f64 / secs,
                (n as f64 * size as f64) / secs / 1e6
            );
        }
    }
    trigger.trigger();
    let _ = router_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn run(
    addr: &str,
    certs: &std::path::Path,
    policy: &std::path::Path,
    sealed: bool,
    size: usize,
    n: u64,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let builder = |service: &str| {
        let identity = IdentityDir::new(certs.join(service));
        let b = Relay::builder(addr.to_string(), identity.clone()).request_timeout(Duration::from_secs(60));
        if sealed { b.end_to_end(E2eOptions::new(&identity, policy)) } else { b }
    };
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (g, d) = (Arc::clone(&got), Arc::clone(&done));
    let receiver = builder("receiver")
        .prefetch(1024)
        .handle("bench.put", [], move |_m: Incoming, _r: Responder| {
            if g.fetch_add(1, Ordering::Relaxed) + 1 == n {
                d.notify_one();
            }
            std::future::ready(Ok::<(), exocom::relay::Error>(()))
        })
        .connect()
        .await?;
    let sender = builder("sender").connect().await?;
    let payload = "a".repeat(size.saturating_sub(2)); // JSON quotes make it `size` bytes
    // Warm up: keys, grants, first epoch.
    sender.send("bench.put", &payload).await?;
    while got.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    got.store(0, Ordering::Relaxed);

    let start = Instant::now();
    let per_task = n / WINDOW as u64;
    let extra = n % WINDOW as u64;
    let mut tasks = Vec::new();
    for t in 0..WINDOW as u64 {
        let sender = sender.clone();
        let payload = payload.clone();
        let count = per_task + u64::from(t < extra);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                sender.send("bench.put", &payload).await?;
            }
            Ok::<(), exocom::relay::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    tokio::time::timeout(Duration::from_secs(120), done.notified()).await?;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(receiver.rejections().total(), 0, "no message may fail its checks");
    sender.close().await;
    receiver.close().await;
    Ok((secs, n))
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("exocom-e2e-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
