//! CPU time per unit of work: how many microseconds of CPU the server
//! process and the client side (this process) spent per message, delivery
//! or round trip of a workload (for latency workloads, per round trip,
//! warm-up included). On a machine with few cores this, not the
//! wall-clock rate alone, says where a system's time goes.
//!
//! Read from `/proc/<pid>/stat` (user + system time of the whole process, in
//! clock ticks of 1/100 s, Linux's `USER_HZ` on x86 and ARM), so a workload must run
//! for a second or more for the figure to mean much. Elsewhere it reads
//! nothing and the figures are left out.

use std::future::Future;

use crate::measure::Outcome;

/// Linux reports process times in `USER_HZ` ticks: 100 per second on x86
/// and ARM, whatever the kernel's own tick rate.
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of process `pid` so far.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it
    // start past the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// CPU microseconds per unit of work of one workload on one system.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// The server process (router, nats-server or forwarder).
    pub server: Option<f64>,
    /// This process: every client of the workload.
    pub clients: Option<f64>,
}

impl Cpu {
    /// "server 12.2 + clients 15.8" (what is known of it).
    pub fn show(&self) -> String {
        let part = |who: &str, v: Option<f64>| v.map(|us| format!("{who} {us:.1}"));
        let parts: Vec<String> =
            [part("server", self.server), part("clients", self.clients)].into_iter().flatten().collect();
        parts.join(" + ")
    }
}

/// Runs `work` and measures the CPU the server (`server_pid`, if any) and
/// this process spent per unit it did (messages, deliveries or round trips,
/// warm-up included); `None` when nothing was done or nothing could be read.
pub async fn measured(
    server_pid: Option<u32>,
    work: impl Future<Output = Outcome>,
) -> (Outcome, Option<Cpu>) {
    let server = server_pid.map(|p| p.to_string());
    let before = (server.as_deref().and_then(cpu_secs), cpu_secs("self"));
    let outcome = work.await;
    let after = (server.as_deref().and_then(cpu_secs), cpu_secs("self"));
    let units = match &outcome {
        Outcome::Rate { done, .. } => *done,
        Outcome::Latency { total, .. } => *total,
        _ => 0,
    };
    if units == 0 {
        return (outcome, None);
    }
    let per_unit = |b: Option<f64>, a: Option<f64>| Some((a? - b?) * 1e6 / units as f64);
    let cpu = Cpu { server: per_unit(before.0, after.0), clients: per_unit(before.1, after.1) };
    let known = cpu.server.is_some() || cpu.clients.is_some();
    (outcome, known.then_some(cpu))
}
