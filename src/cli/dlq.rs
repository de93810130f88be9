//! `exocom dlq …`: list, show, replay and purge dead letters in a data dir.
//!
//! These work on the store file directly, so the router must be stopped:
//! while it runs it holds the file lock and every command here fails with
//! one line saying so. Payloads are sealed; only their size is shown.

// A CLI prints its results.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::cli::exit;
use crate::store::{DeadLetter, DeadLetters, StoreError};

/// `exocom dlq` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCmd {
    /// List dead letters, oldest first.
    List(DirArg),
    /// Show one dead letter's metadata.
    Show {
        /// Its id (from `exocom dlq list`).
        id: u64,
        #[command(flatten)]
        /// The data dir.
        dir: DirArg,
    },
    /// Put a dead letter back into its service's queue (delivered at the next start).
    Replay {
        /// Its id (from `exocom dlq list`).
        id: u64,
        #[command(flatten)]
        /// The data dir.
        dir: DirArg,
    },
    /// Delete one dead letter, or all of them with --all.
    Purge {
        /// Its id (from `exocom dlq list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        /// The data dir.
        dir: DirArg,
    },
}

/// The data dir a command works on.
#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The router's data directory (its `--data-dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

/// Runs an `exocom dlq` subcommand.
pub fn run(cmd: DlqCmd) -> anyhow::Result<i32> {
    match cmd {
        DlqCmd::List(dir) => with(&dir.data_dir, |dlq| {
            let all = dlq.list()?;
            if all.is_empty() {
                println!("no dead letters");
                return Ok(exit::OK);
            }
            println!(
                "{:>6}  {:<24}  {:<16}  {:<32}  {:>8}  {:<16}  REASON",
                "ID", "DEAD AT", "SERVICE", "NAME", "ATTEMPTS", "SENDER"
            );
            for d in &all {
                let (name, _) = name_of(d);
                println!(
                    "{:>6}  {:<24}  {:<16}  {:<32}  {:>8}  {:<16}  {}",
                    d.id,
                    time_of(d.dead_at_ms),
                    d.entry.service,
                    name,
                    d.attempts,
                    d.entry.sender,
                    d.reason
                );
            }
            println!("{} dead letter(s)", all.len());
            Ok(exit::OK)
        }),
        DlqCmd::Show { id, dir } => with(&dir.data_dir, |dlq| {
            let Some(d) = dlq.show(id)? else { return Ok(not_found(id)) };
            let (name, header) = name_of(&d);
            println!("id:           {}", d.id);
            println!("service:      {}", d.entry.service);
            println!("reason:       {}", d.reason);
            println!("dead at:      {}", time_of(d.dead_at_ms));
            println!("attempts:     {}", d.attempts);
            println!("name:         {name}");
            if let Some(h) = header {
                println!("version:      {}", h.version.max(1));
                println!("message id:   {}", uuid_text(&h.id));
                println!("origin id:    {}", uuid_text(&h.origin_id));
                println!(
                    "expires at:   {}",
                    if h.expires_at_ms == 0 { "never".into() } else { time_of(h.expires_at_ms) }
                );
            }
            println!("sender:       {} ({})", d.entry.sender, d.entry.sender_id);
            println!("instance:     {}", d.entry.sender_instance);
            println!("accepted at:  {}", time_of(d.entry.timestamp_ms));
            println!("payload:      {} bytes (sealed)", d.entry.payload.len());
            Ok(exit::OK)
        }),
        DlqCmd::Replay { id, dir } => with(&dir.data_dir, |dlq| match dlq.replay(id)? {
            Some(seq) => {
                println!(
                    "dead letter {id} is back in its queue at position {seq}; it is delivered after the router starts"
                );
                Ok(exit::OK)
            }
            None => Ok(not_found(id)),
        }),
        DlqCmd::Purge { id, all, dir } => with(&dir.data_dir, |dlq| {
            if all {
                println!("purged {} dead letter(s)", dlq.purge_all()?);
                return Ok(exit::OK);
            }
            let Some(id) = id else {
                eprintln!("error: give a dead-letter id or --all");
                return Ok(exit::USAGE);
            };
            if dlq.purge(id)? {
                println!("purged dead letter {id}");
                Ok(exit::OK)
            } else {
                Ok(not_found(id))
            }
        }),
    }
}

/// Opens the data dir for maintenance and runs `f`; store errors become one
/// line on stderr and an exit code.
fn with(dir: &Path, f: impl FnOnce(&DeadLetters) -> Result<i32, StoreError>) -> anyhow::Result<i32> {
    let result = DeadLetters::open(dir).and_then(|dlq| f(&dlq));
    match result {
        Ok(code) => Ok(code),
        Err(StoreError::Locked { path }) => {
            eprintln!(
                "error: {} is locked by a running router; stop the router for DLQ maintenance",
                path.display()
            );
            Ok(exit::ERROR)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(exit::ERROR)
        }
    }
}

fn not_found(id: u64) -> i32 {
    eprintln!("error: no dead letter with id {id} (see `exocom dlq list`)");
    exit::FAILED
}

fn name_of(d: &DeadLetter) -> (String, Option<crate::wire::RoutingHeader>) {
    match crate::wire::frame::decode_header(&d.entry.header) {
        Ok(h) => (h.name.clone(), Some(h)),
        Err(_) => ("(unreadable header)".into(), None),
    }
}

fn uuid_text(b: &[u8]) -> String {
    match <[u8; 16]>::try_from(b) {
        Ok(a) => Uuid::from_bytes(a).to_string(),
        Err(_) => "-".into(),
    }
}

fn time_of(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match t.map(|t| t.format(&time::format_description::well_known::Rfc3339)) {
        Ok(Ok(s)) => s,
        _ => format!("{ms} ms"),
    }
}
