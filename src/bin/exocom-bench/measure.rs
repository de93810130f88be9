//! What a workload measures and how: counts, rates, latency percentiles,
//! and the time bound every workload runs under.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Message counts and the time bound of one run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Multiplies every message count (1.0 = the full workload).
    pub scale: f64,
    /// Longest time one workload may run for one system.
    pub limit: Duration,
}

impl Plan {
    /// `full` scaled, never below 100.
    pub fn n(&self, full: u64) -> u64 {
        ((full as f64 * self.scale) as u64).max(100)
    }

    /// The instant a workload started now must stop by.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.limit
    }
}

/// W1 on any system: `plan.n(1_000)` warm-up round trips, then up to
/// `plan.n(20_000)` timed ones, each awaited before the next, stopping at
/// the time bound. `$round_trip` is an expression giving a future of
/// `anyhow::Result<()>`, evaluated once per round trip.
///
/// A macro rather than a function taking an `AsyncFnMut`: the future it
/// gives must be `Send` (the workloads run in a task on a runtime worker),
/// and an async closure's future is not yet provably `Send` for every
/// lifetime it borrows.
macro_rules! sequential_latency {
    ($plan:expr, $round_trip:expr) => {
        async {
            let mut run = $crate::measure::LatencyRun::new($plan);
            while let Some(started) = run.next() {
                $round_trip.await?;
                run.record(started);
            }
            anyhow::Ok(run.outcome())
        }
    };
}
pub(crate) use sequential_latency;

/// The state of one W1 run: which round trip comes next, and the timed ones.
pub struct LatencyRun {
    deadline: Instant,
    warm_up: u64,
    n: u64,
    done: u64,
    samples: Vec<f64>,
}

impl LatencyRun {
    /// A run under `plan`; its time bound starts now.
    pub fn new(plan: &Plan) -> LatencyRun {
        let n = plan.n(20_000);
        LatencyRun {
            deadline: plan.deadline(),
            warm_up: plan.n(1_000),
            n,
            done: 0,
            samples: Vec::with_capacity(n as usize),
        }
    }

    /// When the next round trip starts, or `None` once all are done or the
    /// time bound has passed (checked after the warm-up only).
    pub fn next(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let finished =
            self.samples.len() as u64 >= self.n || (!self.samples.is_empty() && now > self.deadline);
        (!finished).then_some(now)
    }

    /// The round trip that started at `started` has completed.
    pub fn record(&mut self, started: Instant) {
        if self.done >= self.warm_up {
            self.samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        self.done += 1;
    }

    /// The percentiles of the timed round trips.
    pub fn outcome(self) -> Outcome {
        Outcome::latency(self.samples, self.done)
    }
}

/// What one workload on one system gave.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Round-trip latency percentiles, in microseconds.
    Latency {
        /// Median.
        p50: f64,
        /// 99th percentile.
        p99: f64,
        /// 99.9th percentile.
        p999: f64,
        /// Round trips measured.
        n: u64,
        /// Round trips made in all, warm-up included (what CPU time is divided by).
        total: u64,
    },
    /// A rate.
    Rate {
        /// Per second (messages, deliveries, round trips or MB).
        per_s: f64,
        /// Units done.
        done: u64,
        /// Units asked for.
        wanted: u64,
        /// Anything the reader must know (errors, spread, timeouts).
        note: String,
    },
    /// This system does not run this workload.
    NotApplicable(&'static str),
    /// The workload failed.
    Failed(String),
}

impl Outcome {
    /// A rate over `elapsed`.
    pub fn rate(done: u64, wanted: u64, elapsed: Duration, note: String) -> Outcome {
        let note = if done < wanted {
            let sep = if note.is_empty() { "" } else { "; " };
            format!("{note}{sep}incomplete: {done}/{wanted} in the time bound")
        } else {
            note
        };
        Outcome::Rate { per_s: done as f64 / elapsed.as_secs_f64().max(1e-9), done, wanted, note }
    }

    /// Percentiles of `samples` (microseconds); `total` round trips were
    /// made in all, warm-up included.
    pub fn latency(mut samples: Vec<f64>, total: u64) -> Outcome {
        if samples.is_empty() {
            return Outcome::Failed("no round trip completed".into());
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Outcome::Latency { p50: at(0.50), p99: at(0.99), p999: at(0.999), n: samples.len() as u64, total }
    }
}

/// A counter receivers bump and the driver waits on.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Counts one.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Waits until the sum of `counters` reaches `target` or `deadline`
    /// passes; returns the sum.
    pub async fn wait_all(counters: &[Counter], target: u64, deadline: Instant) -> u64 {
        loop {
            let sum: u64 = counters.iter().map(Counter::get).sum();
            if sum >= target || Instant::now() >= deadline {
                return sum;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

/// The spread of per-instance counts: "a/b/c/d, max/min = x".
pub fn spread(counts: &[u64]) -> String {
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let each: Vec<String> = counts.iter().map(u64::to_string).collect();
    let ratio = if min == 0 { "inf".to_string() } else { format!("{:.2}", max as f64 / min as f64) };
    format!("per instance {}; max/min {ratio}", each.join("/"))
}

/// A one-way payload of exactly `len` bytes, sent as they are: the same
/// bytes from our relays (`send_bytes`) and the NATS clients.
pub fn raw_payload(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

/// A payload of exactly `len` bytes as our relay sends it: a JSON string
/// (`"xxx…"`), so the bytes on the wire are the same length for every system.
pub fn json_text(len: usize) -> String {
    "x".repeat(len.saturating_sub(2))
}
