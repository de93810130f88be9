//! `exocom audit …`: verify, query and report on audit logs; make an audit
//! key; measure the writer and the verifier.
//!
//! Turns arguments into [`crate::audit`] calls and prints. Never writes to a
//! log it reads.

// Printing results is what a CLI module is for.
#![allow(clippy::print_stdout)]

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::exit;
use crate::audit::checkpoint::VerifyingKey;
use crate::audit::query::{self, Filter, NamePattern};
use crate::audit::report::{self, Status, Summary, Verdict};
use crate::audit::segment;
use crate::audit::verify::{self, VerifyError, VerifyOptions};
use crate::audit::{AuditConfig, AuditError, Decision, Event, FsyncPolicy, Record};

/// `exocom audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check hash chains and checkpoint signatures across rotated files.
    ///
    /// Exit 0: verified. 1: tampered (the first bad file:line and why are printed).
    /// 2: cannot verify (no or unreadable public key, unreadable file).
    Verify(VerifyArgs),
    /// Print the lines that match filters, as a table or as JSON lines.
    Query(QueryArgs),
    /// Write a self-contained HTML page for a reviewer.
    Report(ReportArgs),
    /// Make an Ed25519 audit key pair (DIR/key.pem, DIR/pub.pem).
    Keygen(KeygenArgs),
    /// Write synthetic records through the real writer and print lines per second.
    Bench(BenchArgs),
}

/// Arguments of `exocom audit verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Log files, or a directory holding the active file and its rotated siblings.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The audit public key (SPKI PEM), e.g. DIR/audit/pub.pem from `exocom certs init`.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// The router is still writing this log: accept unsealed lines after the
    /// last checkpoint and a missing log_stop (they are reported).
    #[arg(long)]
    pub live: bool,
}

/// Arguments of `exocom audit query`.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Log files, or a directory.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Lines at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Lines before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Sending service.
    #[arg(long)]
    pub sender: Option<String>,
    /// Receiving service.
    #[arg(long)]
    pub receiver: Option<String>,
    /// Message-name pattern (`*` one segment, `>` the rest), e.g. 'todos.*'.
    #[arg(long)]
    pub name: Option<String>,
    /// Events to keep (repeatable or comma-separated), e.g. deny,handshake_failed.
    #[arg(long, value_delimiter = ',')]
    pub event: Vec<String>,
    /// allow or deny.
    #[arg(long)]
    pub decision: Option<String>,
    /// Print the matching lines as they are in the log (JSON lines).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `exocom audit report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Log files, or a directory.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long)]
    pub html: PathBuf,
    /// The audit public key, to show a verified status.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// The log is still being written (see `verify --live`).
    #[arg(long)]
    pub live: bool,
    /// Page title.
    #[arg(long, default_value = "exocom audit report")]
    pub title: String,
}

/// Arguments of `exocom audit keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Directory to write key.pem (private, PKCS#8) and pub.pem (SPKI) into.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `exocom audit bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Directory for the log (and a fresh key in DIR/key); must not hold a log yet.
    #[arg(long)]
    pub out: PathBuf,
    /// fsync policy: every-batch, never, or an interval in milliseconds.
    #[arg(long, default_value = "50")]
    pub fsync: String,
    /// Rotate at this many MiB.
    #[arg(long)]
    pub rotate_mib: Option<u64>,
    /// Then verify the log and print how long that took.
    #[arg(long)]
    pub verify: bool,
}

/// Runs an `exocom audit` subcommand.
pub fn run(cmd: AuditCmd) -> anyhow::Result<i32> {
    match cmd {
        AuditCmd::Verify(args) => run_verify(args),
        AuditCmd::Query(args) => run_query(args),
        AuditCmd::Report(args) => run_report(args),
        AuditCmd::Keygen(args) => run_keygen(&args.out),
        AuditCmd::Bench(args) => run_bench(args),
    }
}

fn load_key(path: Option<&Path>) -> Result<Option<VerifyingKey>, i32> {
    match path {
        None => Ok(None),
        Some(p) => match VerifyingKey::from_pem_file(p) {
            Ok(key) => Ok(Some(key)),
            Err(err) => {
                eprintln!("cannot verify: {err}");
                Err(exit::ERROR)
            }
        },
    }
}

/// Verifies with a progress bar on a terminal.
fn verify_files(files: &[PathBuf], opts: &VerifyOptions) -> Result<verify::Verified, VerifyError> {
    let total = verify::total_bytes(files);
    let bar = (std::io::stderr().is_terminal() && total > 64 << 20).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let result = verify::verify(files, opts, &mut |n| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

fn run_verify(args: VerifyArgs) -> anyhow::Result<i32> {
    let files = match segment::discover(&args.paths) {
        Ok(files) => files,
        Err(err) => {
            eprintln!("cannot verify: {err}");
            return Ok(exit::ERROR);
        }
    };
    let key = match load_key(args.pubkey.as_deref()) {
        Ok(key) => key,
        Err(code) => return Ok(code),
    };
    let opts = VerifyOptions { key, live: args.live };
    let started = Instant::now();
    match verify_files(&files, &opts) {
        Ok(v) => {
            println!(
                "verified: {} lines in {} file(s), {} signed checkpoints, last seq {}{}{} ({:.2}s)",
                v.lines,
                v.files,
                v.checkpoints,
                v.last_seq,
                if v.closed { ", closed with log_stop" } else { ", still open" },
                if v.gaps > 0 { format!(", {} audit_gap record(s)", v.gaps) } else { String::new() },
                started.elapsed().as_secs_f64()
            );
            if v.unsealed > 0 {
                println!(
                    "note: {} line(s) after seq {} are not yet sealed by a checkpoint",
                    v.unsealed, v.last_checkpoint
                );
            }
            Ok(exit::OK)
        }
        Err(VerifyError::Tampered(t)) => {
            let seq = t.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
            println!("FAILED {}:{}{seq}: {}", t.file.display(), t.line, t.reason);
            Ok(exit::FAILED)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(exit::ERROR)
        }
    }
}

fn build_filter(args: &QueryArgs) -> anyhow::Result<Filter> {
    let mut filter =
        Filter { sender: args.sender.clone(), receiver: args.receiver.clone(), ..Filter::default() };
    if let Some(t) = &args.since {
        filter = filter.since(t)?;
    }
    if let Some(t) = &args.until {
        filter = filter.until(t)?;
    }
    if let Some(p) = &args.name {
        filter.name = Some(NamePattern::parse(p)?);
    }
    for e in &args.event {
        filter.events.push(query::parse_event(e)?);
    }
    if let Some(d) = &args.decision {
        filter.decision = Some(query::parse_decision(d)?);
    }
    Ok(filter)
}

fn run_query(args: QueryArgs) -> anyhow::Result<i32> {
    let filter = match build_filter(&args) {
        Ok(f) => f,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(exit::USAGE);
        }
    };
    let files = segment::discover(&args.paths)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut broken = false;
    if !args.json {
        broken |= writeln!(out, "{}", query::table_header()).is_err();
    }
    query::scan(&files, &filter, &mut |raw, entry| {
        if broken {
            return;
        }
        let written = if args.json {
            out.write_all(raw).and_then(|()| out.write_all(b"\n"))
        } else {
            writeln!(out, "{}", query::table_row(entry))
        };
        // A closed pipe (`| head`) ends the output quietly.
        broken = written.is_err();
    })?;
    let _ = out.flush();
    Ok(exit::OK)
}

fn run_report(args: ReportArgs) -> anyhow::Result<i32> {
    let files = segment::discover(&args.paths)?;
    let key = match load_key(args.pubkey.as_deref()) {
        Ok(key) => key,
        Err(code) => return Ok(code),
    };
    let opts = VerifyOptions { key, live: args.live };
    let status = match verify_files(&files, &opts) {
        Ok(v) => Status {
            verdict: Verdict::Verified,
            detail: format!(
                "hash chain and {} checkpoint signatures verified over {} lines in {} file(s); last seq {}{}",
                v.checkpoints,
                v.lines,
                v.files,
                v.last_seq,
                if v.closed { ", closed with log_stop" } else { ", log still open" }
            ),
        },
        Err(VerifyError::Tampered(t)) => Status {
            verdict: Verdict::Tampered,
            detail: format!("first problem at {}:{}: {}", t.file.display(), t.line, t.reason),
        },
        Err(err) => Status { verdict: Verdict::Unverified, detail: err.to_string() },
    };
    let mut summary = Summary::new();
    query::scan(&files, &Filter::default(), &mut |_, e| summary.add(e))?;
    let page = report::render(&summary, &status, &args.title);
    std::fs::write(&args.html, page).with_context(|| format!("writing {}", args.html.display()))?;
    println!("wrote {} ({}: {})", args.html.display(), verdict_word(status.verdict), status.detail);
    Ok(exit::OK)
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Verified => "verified",
        Verdict::Tampered => "TAMPERED",
        Verdict::Unverified => "not verified",
    }
}

fn run_keygen(out: &Path) -> anyhow::Result<i32> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generating an Ed25519 key")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let private = out.join("key.pem");
    if private.exists() {
        bail!("{} exists; not overwriting an audit key", private.display());
    }
    write_private(&private, key.serialize_pem().as_bytes())?;
    std::fs::write(out.join("pub.pem"), key.public_key_pem())
        .with_context(|| format!("writing {}", out.join("pub.pem").display()))?;
    println!("wrote {} and {}", private.display(), out.join("pub.pem").display());
    Ok(exit::OK)
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn parse_fsync(text: &str) -> anyhow::Result<FsyncPolicy> {
    Ok(match text {
        "every-batch" => FsyncPolicy::EveryBatch,
        "never" => FsyncPolicy::Never,
        ms => FsyncPolicy::Interval(Duration::from_millis(
            ms.parse().context("--fsync: every-batch, never, or milliseconds")?,
        )),
    })
}

fn run_bench(args: BenchArgs) -> anyhow::Result<i32> {
    let fsync = match parse_fsync(&args.fsync) {
        Ok(f) => f,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(exit::USAGE);
        }
    };
    let log = args.out.join("audit.jsonl");
    if log.exists() {
        bail!("{} exists; give an empty directory", log.display());
    }
    let key_dir = args.out.join("key");
    if !key_dir.join("key.pem").exists() {
        run_keygen(&key_dir)?;
    }
    let mut config = AuditConfig::new(&log);
    config.signing_key = Some(key_dir.join("key.pem"));
    config.fsync = fsync;
    config.rotate_bytes = args.rotate_mib.map(|m| m << 20);
    config.rotate_interval = None;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (elapsed, stats) = runtime.block_on(bench_writer(config, args.lines))?;
    let secs = elapsed.as_secs_f64();
    println!(
        "writer: {} records ({} lines, {:.1} MiB) in {secs:.2}s = {:.0} lines/s, {:.1} MiB/s; {} writes (avg {:.0} lines/write), {} fsyncs, {} rotations",
        stats.records,
        stats.lines,
        stats.bytes as f64 / (1 << 20) as f64,
        stats.lines as f64 / secs,
        stats.bytes as f64 / (1 << 20) as f64 / secs,
        stats.writes,
        stats.lines as f64 / stats.writes.max(1) as f64,
        stats.fsyncs,
        stats.rotations,
    );
    if args.verify {
        let files = segment::discover(std::slice::from_ref(&args.out))?;
        let key = VerifyingKey::from_pem_file(&key_dir.join("pub.pem"))?;
        let started = Instant::now();
        let v = verify_files(&files, &VerifyOptions { key: Some(key), live: false })?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "verify: {} lines in {} file(s), {} signatures, in {secs:.2}s = {:.0} lines/s",
            v.lines,
            v.files,
            v.checkpoints,
            v.lines as f64 / secs
        );
    }
    Ok(exit::OK)
}

/// Realistic-looking traffic for the benchmark (and a sample log for the report):
/// sends and deliveries between a few services, some denials, handshake
/// failures and policy loads.
struct Synthetic {
    routes: Vec<(Arc<str>, Arc<str>, Arc<str>)>,
    instance: Arc<str>,
    rule: Arc<str>,
}

impl Synthetic {
    fn new() -> Self {
        let routes = [
            ("web", "todo", "todos.list"),
            ("web", "todo", "todos.create"),
            ("todo", "web", "todos.listing"),
            ("web", "billing", "invoices.get"),
            ("billing", "ledger", "ledger.post"),
            ("todo", "notify", "todo.created"),
            ("billing", "notify", "invoice.paid"),
        ]
        .map(|(s, r, n)| (s.into(), r.into(), n.into()))
        .to_vec();
        Synthetic {
            routes,
            instance: uuid::Uuid::new_v4().to_string().into(),
            rule: "policy.toml:12:3".into(),
        }
    }

    fn record(&self, i: u64) -> Record {
        match i % 100 {
            97 => Record::new(Event::Deny)
                .id(uuid::Uuid::now_v7())
                .name(if i % 300 == 97 { "payments.refund" } else { "ledger.post" })
                .version(1u32)
                .sender("web")
                .decision(Decision::Deny)
                .rule("default")
                .reason("web may not send this name"),
            98 => Record::new(Event::HandshakeFailed)
                .remote(std::net::SocketAddr::from((
                    [10, 0, 0, (i % 7) as u8 + 2],
                    40000 + (i % 1000) as u16,
                )))
                .reason(if i % 200 == 98 { "unknown CA" } else { "certificate expired" }),
            99 if i % 5000 == 99 => Record::new(Event::PolicyLoaded)
                .policy_serial(i / 5000 + 1)
                .rule("policy/todo.toml")
                .reason("policy loaded"),
            _ => {
                let (s, r, n) = &self.routes[((i / 2) as usize) % self.routes.len()];
                let event = if i.is_multiple_of(2) { Event::Send } else { Event::Deliver };
                let mut rec = Record::new(event)
                    .id(uuid::Uuid::now_v7())
                    .name(n.clone())
                    .version(1u32)
                    .sender(s.clone())
                    .sender_instance(self.instance.clone())
                    .decision(Decision::Allow)
                    .rule(self.rule.clone())
                    .bytes(200 + i % 300);
                if event == Event::Deliver {
                    rec = rec.receiver(r.clone()).attempt(1u32);
                }
                rec
            }
        }
    }
}

async fn bench_writer(
    config: AuditConfig,
    lines: u64,
) -> anyhow::Result<(Duration, crate::audit::WriterStats)> {
    let (trigger, shutdown) = crate::shutdown::channel();
    let (handle, task) = crate::audit::start(config, shutdown)?;
    let traffic = Synthetic::new();
    let started = Instant::now();
    let mut last = None;
    let mut i = 0u64;
    while i < lines {
        let rec = traffic.record(i);
        match handle.record(rec) {
            Ok(ticket) => {
                last = Some(ticket);
                i += 1;
            }
            // The queue is full: let the writer catch up.
            Err(AuditError::Unavailable) => match last.take() {
                Some(t) => t.await?,
                None => tokio::task::yield_now().await,
            },
            Err(err) => return Err(err.into()),
        }
    }
    if let Some(t) = last {
        t.await?;
    }
    let elapsed = started.elapsed();
    trigger.trigger();
    task.await?;
    Ok((elapsed, handle.stats()))
}
