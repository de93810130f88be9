//! `exocom-bench`: the same workloads through our router, through
//! nats-server and through a bare TLS forwarder, side by side in one run.
//!
//! Our router and the forwarder run as child processes of this binary
//! (`serve-router`, `serve-forwarder`), nats-server as its own process; the
//! clients (relays, async-nats, raw TLS) run here. Each workload runs on the
//! three systems in turn before the next workload starts, so a noisy machine
//! hits all three alike. Every workload is bounded by `--limit-secs`.
//!
//! See docs/PERFORMANCE.md; `scripts/bench.sh` runs it.

// A command-line tool whose output is its figures (and the children's
// `LISTENING` line the parent reads).
#![allow(clippy::print_stdout)]

mod cpu;
mod fwd;
mod measure;
mod nats;
mod ours;
mod report;
mod serve;
mod setup;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use measure::{Outcome, Plan};

#[derive(Parser, Clone)]
#[command(about = "Benchmarks our router against nats-server and a bare TLS forwarder")]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Multiplies every message count (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Longest time, in seconds, one workload may run on one system.
    #[arg(long, default_value_t = 60)]
    limit_secs: u64,
    /// Where the markdown table and the SVG go.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// The nats-server executable.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Systems to run (ours, nats, fwd), comma-separated.
    #[arg(long, default_value = "ours,nats,fwd", value_delimiter = ',')]
    systems: Vec<String>,
    /// Workloads to run (w1..w6), comma-separated.
    #[arg(long, default_value = "w1,w2,w3,w4,w5,w6", value_delimiter = ',')]
    only: Vec<String>,
    /// Write our router's process id to this file (for a profiler).
    #[arg(long)]
    router_pid_file: Option<PathBuf>,
    /// Seconds to wait after writing the pid file (for a profiler to attach).
    #[arg(long, default_value_t = 0)]
    attach_wait: u64,
    /// Run our router without its audit log (to measure what the log costs).
    #[arg(long)]
    no_audit: bool,
    /// Our relays send plaintext instead of sealing end to end (to measure
    /// what sealing costs).
    #[arg(long)]
    no_seal: bool,
    /// Sends each of our sending relays keeps in flight (each resolves when
    /// the router has accepted it).
    #[arg(long, default_value_t = ours::WINDOW)]
    window: usize,
    /// Drive the workloads from the thread that blocks on the runtime
    /// instead of a task on a runtime worker (the earlier way; every
    /// hand-off then wakes another thread, see docs/PERFORMANCE.md).
    #[arg(long)]
    main_thread: bool,
    /// Runtime worker threads for the benchmark's clients (both systems'
    /// clients alike); by default one per CPU, tokio's default.
    #[arg(long)]
    client_workers: Option<std::num::NonZeroUsize>,
}

#[derive(Subcommand, Clone)]
enum Serve {
    /// Runs our router (child process of a benchmark).
    ServeRouter {
        /// The benchmark directory.
        #[arg(long)]
        dir: PathBuf,
        /// Without the audit log.
        #[arg(long)]
        no_audit: bool,
    },
    /// Runs the bare forwarder (child process of a benchmark).
    ServeForwarder {
        /// The benchmark directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// mimalloc instead of glibc malloc: the router and the relays allocate small
/// short-lived buffers per message, where glibc spent 8–17 % of their time
/// (docs/PERFORMANCE-HISTORY.md: the earlier profiles; third round, item 10).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(Serve::ServeRouter { .. }) = &cli.serve {
        // As `exocom serve` does by default.
        builder.worker_threads(exocom::router::default_workers());
    } else if let Some(n) = cli.client_workers {
        builder.worker_threads(n.get());
    }
    let rt = builder.enable_all().build();
    let result = rt.context("starting the runtime").and_then(|rt| {
        rt.block_on(async {
            match &cli.serve {
                Some(Serve::ServeRouter { dir, no_audit }) => serve::router(dir, !no_audit).await,
                Some(Serve::ServeForwarder { dir }) => serve::forwarder(dir).await,
                // The clients run in a task on a runtime worker, as a
                // service's code does, not on the thread that blocks on
                // the runtime: every hand-off to a connection task would
                // otherwise wake another thread.
                None if cli.main_thread => run(&cli).await,
                None => {
                    let cli = cli.clone();
                    let task = tokio::spawn(async move { run(&cli).await });
                    task.await.context("the benchmark task failed").and_then(|r| r)
                }
            }
        })
    });
    if let Err(e) = result {
        eprintln!("exocom-bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let plan = Plan { scale: cli.scale, limit: Duration::from_secs(cli.limit_secs) };
    let dir = std::env::temp_dir().join(format!("exocom-bench-{}", std::process::id()));
    setup::prepare(&dir)?;
    let result = run_in(cli, &plan, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(cli: &Cli, plan: &Plan, dir: &Path) -> Result<()> {
    let want = |s: &str| cli.systems.iter().any(|x| x == s);
    let exe = std::env::current_exe()?;
    let dir_s = dir.display().to_string();
    let mut router_args = vec!["serve-router", "--dir", &dir_s];
    if cli.no_audit {
        router_args.push("--no-audit");
    }
    let router = setup::Server::spawn(&exe, &router_args)?;
    if let Some(f) = &cli.router_pid_file {
        std::fs::write(f, router.pid().to_string())?;
        tokio::time::sleep(Duration::from_secs(cli.attach_wait)).await;
    }
    let forwarder = setup::Server::spawn(&exe, &["serve-forwarder", "--dir", &dir_s])?;
    let nats_server = if want("nats") { Some(nats::Nats::start(&cli.nats_server, dir).await?) } else { None };
    let ours = ours::Ours {
        addr: router.addr,
        dir: dir.to_path_buf(),
        seal: !cli.no_seal,
        window: cli.window.max(1),
    };
    let fwd = fwd::Forwarder { addr: forwarder.addr, dir: dir.to_path_buf() };
    println!(
        "exocom-bench: scale {}, limit {} s per workload and system; audit {}, sealing {}; router pid {}, forwarder pid {}{}",
        plan.scale,
        plan.limit.as_secs(),
        if cli.no_audit { "off" } else { "on" },
        if cli.no_seal { "off" } else { "on" },
        router.pid(),
        forwarder.pid(),
        nats_server.as_ref().map(|n| format!(", nats-server pid {}", n.pid())).unwrap_or_default()
    );

    let mut rows = Vec::new();
    for w in &cli.only {
        let (label, unit): (&str, &'static str) = match w.as_str() {
            "w1" => ("W1 request/reply latency", "µs"),
            "w2" => ("W2 one-way 1→1, 256 B", "msg/s"),
            "w3" => ("W3 fan-out 1→4 services", "deliveries/s"),
            "w4" => ("W4 32 in flight", "round trips/s"),
            "w5" => ("W5 one-way 64 KiB", "MB/s"),
            "w6" => ("W6 competing consumers 1→4", "msg/s"),
            other => anyhow::bail!("unknown workload {other} (w1..w6)"),
        };
        let variants: &[usize] = if w == "w4" { &[1, 4] } else { &[1] };
        for &conns in variants {
            let label = if w == "w4" { format!("{label}, {conns} conn") } else { label.to_string() };
            eprintln!("== {label}");
            let ours_pid = want("ours").then(|| router.pid());
            let (o, oc) = system("ours", ours_pid, ours_run(&ours, plan, w, conns)).await;
            let nats_pid = nats_server.as_ref().map(nats::Nats::pid);
            let nats_work = async {
                match &nats_server {
                    Some(ns) => nats_run(ns, plan, w, conns).await,
                    None => Ok(Outcome::NotApplicable("not run")),
                }
            };
            let (n, nc) = system("nats", nats_pid, nats_work).await;
            let fwd_pid = want("fwd").then(|| forwarder.pid());
            let (f, fc) = system("fwd", fwd_pid, fwd_run(&fwd, plan, w, conns)).await;
            rows.extend(report::rows(&label, unit, [&o, &n, &f], [oc, nc, fc]));
        }
    }
    drop(nats_server);
    drop(forwarder);
    drop(router);

    let table = report::markdown(&rows);
    println!("\n{table}");
    std::fs::create_dir_all(&cli.out)?;
    let title = format!("exocom vs nats-server vs bare TLS forwarder (scale {})", plan.scale);
    std::fs::write(cli.out.join("bench.md"), &table)?;
    std::fs::write(cli.out.join("bench.svg"), report::svg(&rows, &title))?;
    println!("wrote {} and {}", cli.out.join("bench.md").display(), cli.out.join("bench.svg").display());
    Ok(())
}

/// Runs one system's workload, unless it is not running (`server_pid` is
/// `None`), measures its CPU per unit and prints the line for `who`.
async fn system(
    who: &str,
    server_pid: Option<u32>,
    work: impl std::future::Future<Output = Result<Outcome>>,
) -> (Outcome, Option<cpu::Cpu>) {
    let (outcome, cpu) = match server_pid {
        Some(pid) => cpu::measured(Some(pid), async { settle(work.await) }).await,
        None => (Outcome::NotApplicable("not run"), None),
    };
    eprintln!("   {:<6}{}", format!("{who}:"), show(&outcome, cpu));
    (outcome, cpu)
}

fn settle(r: Result<Outcome>) -> Outcome {
    r.unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")))
}

fn show(o: &Outcome, cpu: Option<cpu::Cpu>) -> String {
    let cpu = cpu.map(|c| format!("; CPU µs per unit: {}", c.show())).unwrap_or_default();
    let text = match o {
        Outcome::Latency { p50, p99, p999, n, .. } => {
            format!("p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs ({n})")
        }
        Outcome::Rate { per_s, done, wanted, note } => format!("{per_s:.0}/s ({done}/{wanted}) {note}"),
        Outcome::NotApplicable(why) => format!("n/a ({why})"),
        Outcome::Failed(e) => format!("FAILED: {e}"),
    };
    format!("{}{cpu}", text.trim_end())
}

const MB: f64 = 1_000_000.0;

fn one_way(r: (u64, u64, Duration, String), len: usize) -> Outcome {
    let (done, n, elapsed, note) = r;
    match Outcome::rate(done, n, elapsed, note) {
        Outcome::Rate { per_s, done, wanted, note } if len > 256 => {
            Outcome::Rate { per_s: per_s * len as f64 / MB, done, wanted, note }
        }
        o => o,
    }
}

async fn ours_run(o: &ours::Ours, plan: &Plan, w: &str, conns: usize) -> Result<Outcome> {
    Ok(match w {
        "w1" => o.w1(plan).await?,
        "w2" => one_way(o.one_way(plan, "bench.one", 256, 1_000_000).await?, 256),
        "w3" => o.w3(plan).await?,
        "w4" => o.w4(plan, conns).await?,
        "w5" => one_way(o.one_way(plan, "bench.big", 65_536, 20_000).await?, 65_536),
        _ => o.w6(plan).await?,
    })
}

async fn nats_run(n: &nats::Nats, plan: &Plan, w: &str, conns: usize) -> Result<Outcome> {
    Ok(match w {
        "w1" => n.w1(plan).await?,
        "w2" => one_way(n.one_way(plan, "bench.one", 256, 1_000_000).await?, 256),
        "w3" => n.w3(plan).await?,
        "w4" => n.w4(plan, conns).await?,
        "w5" => one_way(n.one_way(plan, "bench.big", 65_536, 20_000).await?, 65_536),
        _ => n.w6(plan).await?,
    })
}

async fn fwd_run(f: &fwd::Forwarder, plan: &Plan, w: &str, conns: usize) -> Result<Outcome> {
    Ok(match (w, conns) {
        ("w1", _) => f.w1(plan).await?,
        ("w2", _) => one_way(f.one_way(plan, 256, 1_000_000).await?, 256),
        ("w4", 1) => f.w4(plan).await?,
        ("w5", _) => one_way(f.one_way(plan, 65_536, 20_000).await?, 65_536),
        _ => Outcome::NotApplicable("a forwarder does not route; compare with its W2 figure"),
    })
}
