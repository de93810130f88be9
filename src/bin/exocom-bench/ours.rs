//! The workloads through our router, driven by our relay exactly as a
//! service would use it.
//!
//! `Relay::send` resolves when the router has accepted the message
//! (policy-checked, audited, queued), so a sender that wants throughput keeps
//! a window of sends in flight (`--window`, default [`WINDOW`]) instead of
//! awaiting each one.
//! Receivers ask for a credit of [`PREFETCH`] deliveries. Unless the run
//! says `--no-seal`, every relay seals end to end (the benchmark policy is
//! each relay's trusted policy, the receive keys come from the certificates).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use exocom::relay::{E2eOptions, Error, ErrorKind, Incoming, MessageOptions, Relay, Responder};
use exocom::tls::IdentityDir;
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;

use crate::measure::{Counter, Outcome, Plan, json_text, raw_payload, sequential_latency, spread};
use crate::setup::cert_dir;

/// Sends in flight per sending relay in the throughput workloads.
pub const WINDOW: usize = 1024;
/// Credit each receiving relay asks for.
pub const PREFETCH: u32 = 1024;

/// Our router at `addr`, certificates under `dir`.
pub struct Ours {
    /// The router.
    pub addr: SocketAddr,
    /// The benchmark directory.
    pub dir: PathBuf,
    /// Whether the relays seal payloads end to end.
    pub seal: bool,
    /// Sends in flight per sending relay.
    pub window: usize,
}

impl Ours {
    fn builder(&self, service: &str) -> exocom::relay::RelayBuilder {
        let identity = IdentityDir::new(cert_dir(&self.dir, service));
        // No circuit breaker: `pump` answers "queue full" by sending again a
        // millisecond later, which the breaker would otherwise count as a
        // failing path and fail fast for its cool-down.
        let b = Relay::builder(self.addr.to_string(), identity.clone())
            .request_timeout(Duration::from_secs(30))
            .circuit_breaker(0, Duration::ZERO)
            .prefetch(PREFETCH);
        if self.seal { b.end_to_end(E2eOptions::new(&identity, self.dir.join("policy.toml"))) } else { b }
    }

    async fn sink(&self, service: &str, names: &[&str], counter: &Counter) -> Result<Relay> {
        let mut b = self.builder(service);
        for name in names {
            let c = counter.clone();
            b = b.handle(*name, [], move |_m: Incoming, _r: Responder| {
                let c = c.clone();
                async move {
                    c.add(1);
                    Ok::<(), Error>(())
                }
            });
        }
        Ok(b.connect().await?)
    }

    async fn echo(&self, len: usize) -> Result<Relay> {
        let text: Arc<str> = Arc::from(json_text(len));
        let relay = self
            .builder("echo")
            .handle("bench.echo", [], move |_m: Incoming, r: Responder| {
                let t = text.clone();
                async move { r.reply("bench.echoed", &*t).await }
            })
            .connect()
            .await?;
        Ok(relay)
    }

    /// W1: sequential request/reply.
    pub async fn w1(&self, plan: &Plan) -> Result<Outcome> {
        let echo = self.echo(256).await?;
        let load = self.builder("load").connect().await?;
        let text = json_text(256);
        let outcome = sequential_latency!(plan, load.request_one("bench.echo", &*text)).await;
        load.close().await;
        echo.close().await;
        outcome
    }

    /// W2 (name `bench.one`, 256 B) and W5 (`bench.big`, 64 KiB): one sender, one receiver.
    pub async fn one_way(
        &self,
        plan: &Plan,
        name: &str,
        len: usize,
        full: u64,
    ) -> Result<(u64, u64, Duration, String)> {
        let got = Counter::default();
        let sink = self.sink("sink1", &[name], &got).await?;
        let load = self.builder("load").connect().await?;
        let n = plan.n(full);
        let deadline = plan.deadline();
        let start = Instant::now();
        let errors = pump(&load, name, raw_payload(len), n, self.window, deadline, false).await;
        let done = Counter::wait_all(std::slice::from_ref(&got), n, deadline).await;
        let elapsed = start.elapsed();
        load.close().await;
        sink.close().await;
        Ok((done, n, elapsed, errors))
    }

    /// W3: one publisher, four receiving services.
    pub async fn w3(&self, plan: &Plan) -> Result<Outcome> {
        let counters: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let mut sinks = Vec::new();
        for (i, c) in counters.iter().enumerate() {
            sinks.push(self.sink(&format!("sink{}", i + 1), &["bench.fan"], c).await?);
        }
        let load = self.builder("load").connect().await?;
        let n = plan.n(250_000);
        let deadline = plan.deadline();
        let start = Instant::now();
        let mut errors = pump(&load, "bench.fan", raw_payload(256), n, self.window, deadline, true).await;
        let done = Counter::wait_all(&counters, 4 * n, deadline).await;
        let elapsed = start.elapsed();
        if done < 4 * n {
            let counts: Vec<u64> = counters.iter().map(Counter::get).collect();
            let refused: Vec<String> =
                sinks.iter().map(|s| format!("{:?}", s.rejections().snapshot())).collect();
            errors.push_str(&format!("; per sink {counts:?}; refused by the sinks {refused:?}"));
        }
        load.close().await;
        for s in sinks {
            s.close().await;
        }
        Ok(Outcome::rate(done, 4 * n, elapsed, errors))
    }

    /// W4: 32 requests in flight in total, over `conns` connections.
    pub async fn w4(&self, plan: &Plan, conns: usize) -> Result<Outcome> {
        let echo = self.echo(256).await?;
        let n = plan.n(50_000);
        let per_conn = n / conns as u64;
        let in_flight = 32 / conns;
        let deadline = plan.deadline();
        let mut loads = Vec::new();
        for _ in 0..conns {
            loads.push(self.builder("load").connect().await?);
        }
        let text = json_text(256);
        let start = Instant::now();
        let runs = loads.iter().map(|load| {
            let text = &text;
            async move {
                let mut inflight = FuturesUnordered::new();
                let (mut issued, mut ok) = (0u64, 0u64);
                while ok < per_conn && Instant::now() < deadline {
                    while issued < per_conn && inflight.len() < in_flight {
                        inflight.push(load.request_one("bench.echo", &**text));
                        issued += 1;
                    }
                    match inflight.next().await {
                        Some(Ok(_)) => ok += 1,
                        Some(Err(_)) | None => break,
                    }
                }
                ok
            }
        });
        let done: u64 = futures_util::future::join_all(runs).await.into_iter().sum();
        let elapsed = start.elapsed();
        for l in loads {
            l.close().await;
        }
        echo.close().await;
        Ok(Outcome::rate(done, per_conn * conns as u64, elapsed, String::new()))
    }

    /// W6: one sender, four instances of one service.
    pub async fn w6(&self, plan: &Plan) -> Result<Outcome> {
        let counters: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let mut workers = Vec::new();
        for c in &counters {
            workers.push(self.sink("worker", &["bench.work"], c).await?);
        }
        let load = self.builder("load").connect().await?;
        let n = plan.n(1_000_000);
        let deadline = plan.deadline();
        let start = Instant::now();
        let errors = pump(&load, "bench.work", raw_payload(256), n, self.window, deadline, false).await;
        let done = Counter::wait_all(&counters, n, deadline).await;
        let elapsed = start.elapsed();
        load.close().await;
        for w in workers {
            w.close().await;
        }
        let counts: Vec<u64> = counters.iter().map(Counter::get).collect();
        let note = if errors.is_empty() { spread(&counts) } else { format!("{}; {errors}", spread(&counts)) };
        Ok(Outcome::rate(done, n, elapsed, note))
    }
}

/// Sends `n` messages keeping `window` in flight; returns a note on errors.
/// A send the router refuses because the receiver's queue is full is sent
/// again after a millisecond, as the error asks ("retry later"): the
/// sender then runs at the receiver's pace instead of losing messages.
async fn pump(
    relay: &Relay,
    name: &str,
    payload: Bytes,
    n: u64,
    window: usize,
    deadline: Instant,
    event: bool,
) -> String {
    let opts = MessageOptions::new();
    let mut inflight = FuturesUnordered::new();
    let (mut issued, mut errors, mut retried) = (0u64, 0u64, 0u64);
    let mut first: Option<String> = None;
    while issued < n || !inflight.is_empty() {
        while issued < n && inflight.len() < window {
            inflight.push(if event {
                Either::Left(relay.publish_bytes(name, payload.clone(), &opts))
            } else {
                Either::Right(relay.send_bytes(name, payload.clone(), &opts))
            });
            issued += 1;
        }
        match inflight.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == ErrorKind::QueueFull => {
                issued -= 1;
                retried += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Some(Err(e)) => {
                errors += 1;
                first.get_or_insert_with(|| e.to_string());
            }
            None => break,
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let mut note = match first {
        None => String::new(),
        Some(e) => format!("{errors} sends refused (first: {e})"),
    };
    if retried > 0 {
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!("{note}{sep}{retried} sends retried after \"queue full\"");
    }
    note
}
