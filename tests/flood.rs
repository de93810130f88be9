//! Floods on loopback against the real router: 1,000 half-open TLS
//! handshakes (TCP connections that send nothing or a partial ClientHello)
//! and slowloris connections (a full mTLS handshake, then a `Hello` frame
//! dribbled a byte at a time) are held open while an authorized service
//! keeps making requests. The service sees no error, and the router closes
//! every flood connection once its handshake or hello timeout passes.
//!
//! `flood_latency_report` (ignored; run with `--ignored --nocapture`) prints
//! request/reply latency p50/p99 with and without the flood, side by side.

mod common;

use std::time::{Duration, Instant};

use common::*;
use exocom::relay::Relay;
use exocom::wire::{Body, Frame, Hello, PROTOCOL_VERSION, frame};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The start of a TLS ClientHello record that announces 512 bytes and never
/// sends them.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

/// The soft limit on open files, from /proc (no unsafe, no extra crate).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How many half-open and slowloris connections to hold: 1,000 and 100,
/// fewer if the open-file limit would not allow both ends of each (the
/// router's side lives in this process too) plus headroom.
fn flood_size() -> (usize, usize) {
    let want = (1000usize, 100usize);
    let limit = open_files_limit().unwrap_or(1024);
    let budget = limit.saturating_sub(256) / 2;
    let sized = if want.0 + want.1 <= budget {
        want
    } else {
        let half_open = budget * 10 / 11;
        (half_open, budget - half_open)
    };
    println!("open files limit {limit}: {} half-open + {} slowloris connections", sized.0, sized.1);
    sized
}

/// Reads until the router closes the connection; true if it did in time.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Opens `n` TCP connections; every other one sends a partial ClientHello.
async fn half_open(bus: &TestBus, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut set = JoinSet::new();
        for &i in batch {
            let addr = bus.addr;
            set.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                if i % 2 == 1 {
                    s.write_all(PARTIAL_CLIENT_HELLO).await.unwrap();
                }
                s
            });
        }
        while let Some(s) = set.join_next().await {
            streams.push(s.unwrap());
        }
    }
    streams
}

/// A slowloris: full mTLS handshake as `web`, then the `Hello` frame one
/// byte per `every`. Returns how long the router let it live and whether it
/// closed the connection before the frame was complete.
async fn slowloris(
    bus_addr: std::net::SocketAddr,
    identity: exocom::tls::IdentityDir,
    every: Duration,
) -> (Duration, bool) {
    let stream = raw_tls(bus_addr, &identity).await.unwrap();
    let start = Instant::now();
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "slow".into(), client: "slowloris".into() };
    let bytes = frame::to_bytes(&Frame { body: Some(Body::Hello(hello)) });
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = [0u8; 64];
    let mut sent = 0;
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return (start.elapsed(), sent < bytes.len()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(every) => {
                if sent == bytes.len() {
                    continue;
                }
                let wrote = async {
                    wr.write_all(&bytes[sent..sent + 1]).await?;
                    wr.flush().await
                }
                .await;
                if wrote.is_err() {
                    return (start.elapsed(), true);
                }
                sent += 1;
            }
        }
    }
}

/// `todo` answers `todos.list`; `web` asks.
async fn service_pair(bus: &TestBus) -> (Relay, Relay) {
    let todo = bus
        .builder("todo")
        .handle("todos.list", [1], |_m, r| async move { r.reply("todos.listing", &json!([])).await })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    web.request_one("todos.list", &json!({})).await.unwrap();
    (todo, web)
}

/// Requests for `duration` (at least `min` of them); latencies of the
/// successes and the errors.
async fn requests(web: &Relay, duration: Duration, min: usize) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration || latencies.len() + errors.len() < min {
        let t = Instant::now();
        match web.request_one("todos.list", &json!({"n": latencies.len()})).await {
            Ok(reply) if reply.name() == "todos.listing" => latencies.push(t.elapsed()),
            Ok(reply) => errors.push(format!("unexpected reply {}", reply.name())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (latencies, errors)
}

fn bus_options(handshake: Duration, hello: Duration) -> BusOptions {
    BusOptions {
        configure: Some(Box::new(move |cfg| {
            cfg.limits.handshake_timeout = handshake;
            cfg.limits.hello_timeout = hello;
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_and_slowloris_connections_neither_disturbs_service_nor_survives() {
    let timeout = Duration::from_secs(3);
    let bus = TestBus::start_with(bus_options(timeout, timeout)).await;
    let (_todo, web) = service_pair(&bus).await;
    let (n_half, n_slow) = flood_size();

    let flood_start = Instant::now();
    let mut half = half_open(&bus, n_half).await;
    let mut slow = JoinSet::new();
    for _ in 0..n_slow {
        slow.spawn(slowloris(bus.addr, bus.identity("web"), Duration::from_millis(250)));
    }
    // The service keeps working while the flood is held open.
    let (ok, errors) = requests(&web, Duration::from_secs(2), 20).await;
    assert!(errors.is_empty(), "requests failed under the flood: {errors:?}");
    println!("{} requests during the flood, 0 errors", ok.len());

    // Every flood connection is closed by the router, soon after its timeout.
    let deadline = timeout + Duration::from_secs(10);
    let mut closed = 0;
    for s in half.iter_mut() {
        if closed_within(s, deadline.saturating_sub(flood_start.elapsed())).await {
            closed += 1;
        }
    }
    assert_eq!(closed, half.len(), "half-open connections left open past the handshake timeout");
    let mut lived = Vec::new();
    while let Some(r) = slow.join_next().await {
        let (alive, cut_short) = r.unwrap();
        assert!(cut_short, "a slowloris completed its Hello: the hello timeout did not hold");
        lived.push(alive);
    }
    let longest = lived.iter().max().copied().unwrap_or_default();
    assert!(longest < deadline, "a slowloris lived {longest:?}");
    println!(
        "closed {closed} half-open connections and {} slowloris connections (longest lived {longest:?}) in {:?}",
        lived.len(),
        flood_start.elapsed()
    );
    // And the service still works afterwards.
    let (_, errors) = requests(&web, Duration::ZERO, 5).await;
    assert!(errors.is_empty(), "{errors:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints request/reply latency p50/p99 without and with the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --test flood -- --ignored --nocapture"]
async fn flood_latency_report() {
    // Long timeouts: the flood stays up for the whole measurement.
    let bus = TestBus::start_with(bus_options(Duration::from_secs(60), Duration::from_secs(60))).await;
    let (_todo, web) = service_pair(&bus).await;
    let _ = requests(&web, Duration::from_millis(500), 50).await; // warm up
    let n = 1000;
    let (mut quiet, errors) = requests(&web, Duration::ZERO, n).await;
    assert!(errors.is_empty(), "{errors:?}");

    let (n_half, n_slow) = flood_size();
    let _half = half_open(&bus, n_half).await;
    let mut slow = JoinSet::new();
    for _ in 0..n_slow {
        slow.spawn(slowloris(bus.addr, bus.identity("web"), Duration::from_secs(1)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut flooded, errors) = requests(&web, Duration::ZERO, n).await;
    assert!(errors.is_empty(), "{errors:?}");
    slow.abort_all();

    quiet.sort();
    flooded.sort();
    println!("request/reply latency, {n} sequential requests each, loopback, router in-process");
    println!("{:<44} {:>10} {:>10}", "", "p50", "p99");
    for (label, l) in [
        ("no flood".to_string(), &quiet),
        (format!("flood ({n_half} half-open + {n_slow} slowloris)"), &flooded),
    ] {
        println!("{label:<44} {:>10.3?} {:>10.3?}", percentile(l, 0.50), percentile(l, 0.99));
    }
}
