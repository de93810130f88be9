//! Durable (redb) vs in-memory queues, through the real router.
//!
//! One sender service, one receiving service, real mTLS, the real relay, an
//! in-process router on 127.0.0.1 with no audit log (to measure the store).
//! For each store it sends N messages of SIZE bytes from W concurrent tasks
//! and reports send throughput (until the last `Accepted`), end-to-end
//! throughput (until the receiver handled the last one), p50/p99/max accept
//! latency, and for the durable store the commits (fsyncs) it took.
//!
//! ```text
//! cargo run --release --example store_bench -- [N] [SIZE] [W]
//! ```
//! Defaults: 50000 messages, 256 bytes, 64 concurrent senders.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exocom::policy::Policy;
use exocom::relay::Relay;
use exocom::router::{Router, RouterConfig};
use exocom::store::Store;
use exocom::tls::{self, IdentityDir, ServerFiles};
use tokio::sync::Notify;

const POLICY: &str = r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["bench.msg"]

[services.todo]
id = "spiffe://example.org/svc/todo"
receive = ["bench.msg"]
"#;

struct Figures {
    send_secs: f64,
    total_secs: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    commits: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n, size, workers) = (arg(0, 50_000), arg(1, 256), arg(2, 64));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    exocom::certs::init(&certs, "example.org", &["web".to_string(), "todo".to_string()], 1).unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, POLICY).unwrap();

    println!("store_bench: {n} messages of {size} B, {workers} concurrent senders, 1 sender -> 1 receiver");
    let memory = rt.block_on(run(dir.path(), Store::Memory, n, size, workers));
    let durable_store = Store::open(&dir.path().join("data")).unwrap();
    let durable = rt.block_on(run(dir.path(), durable_store, n, size, workers));
    println!();
    println!(
        "| store | sends/s (accepted) | msgs/s (end to end) | accept p50 | accept p99 | accept max | commits (fsyncs) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in [("memory", &memory), ("durable (redb)", &durable)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            n as f64 / f.send_secs,
            n as f64 / f.total_secs,
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            if f.commits == 0 {
                "-".to_string()
            } else {
                format!("{} ({:.0} msgs each)", f.commits, n as f64 / f.commits as f64)
            },
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(dir: &Path, store: Store, n: usize, size: usize, workers: usize) -> Figures {
    let certs = dir.join("certs");
    let mut files = ServerFiles::from_certs_dir(&certs);
    files.trust_domain = Some("example.org".into());
    let tls = tls::server_config(&files).unwrap();
    let policy = Policy::from_file(&dir.join("policy.toml")).unwrap();
    let mut config = RouterConfig::new("127.0.0.1:0".parse().unwrap(), tls, policy);
    let store = Arc::new(store);
    config.store = store.clone();
    config.core.queue_max_messages = n + 1;
    let router = Router::bind(config).await.unwrap();
    let addr = router.local_addr().unwrap().to_string();
    let (trigger, shutdown) = exocom::shutdown::channel();
    let task = tokio::spawn(router.run(shutdown));

    let received = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (r, d) = (received.clone(), done.clone());
    let receiver = Relay::builder(addr.clone(), IdentityDir::new(certs.join("todo")))
        .prefetch(1024)
        .handle("bench.msg", [1], move |_msg, _| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    d.notify_one();
                }
                Ok::<(), exocom::relay::Error>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let sender = Relay::builder(addr, IdentityDir::new(certs.join("web"))).connect().await.unwrap();
    // A JSON string of `size` bytes: quotes plus size - 2 characters.
    let payload = "x".repeat(size.saturating_sub(2));
    let before = store.stats();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (sender, payload) = (sender.clone(), payload.clone());
        let count = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            for _ in 0..count {
                let t = Instant::now();
                sender.send("bench.msg", &payload).await.expect("send accepted");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let send_secs = start.elapsed().as_secs_f64();
    if received.load(Ordering::Relaxed) < n {
        tokio::time::timeout(Duration::from_secs(120), done.notified()).await.expect("all received");
    }
    let total_secs = start.elapsed().as_secs_f64();
    let commits = store.stats().commits - before.commits;

    sender.close().await;
    receiver.close().await;
    trigger.trigger();
    let _ = task.await;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Figures { send_secs, total_secs, p50: pct(0.50), p99: pct(0.99), max: lat[lat.len() - 1], commits }
}
