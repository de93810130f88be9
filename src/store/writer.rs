//! The group-commit writer: one thread that owns the database file.
//!
//! The routing core hands it puts, removes and dead letters over a bounded
//! channel. The thread takes everything queued, writes it in one durable
//! transaction (one fsync), then resolves every put's ticket. While one
//! commit runs the next batch fills, so under load the cost of an fsync is
//! shared by many messages; when idle, a single put commits at once.
//!
//! A failed commit fails that batch's puts with [`StoreError::Unavailable`]
//! (their senders are told the message was not accepted) and keeps the
//! batch's removes for the next attempt; the thread goes on. It never
//! panics, and it never runs on the async runtime (redb blocks).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::redb::{Change, Disk};
use super::{Entry, StoreError, StoreStats};

/// Operations queued for the writer.
pub(super) enum Op {
    /// Store an entry; answer once durable.
    Put(Entry, oneshot::Sender<Result<(), StoreError>>),
    /// Forget an entry.
    Remove(String, u64),
    /// Move an entry to the dead-letter table.
    Dead { service: String, seq: u64, reason: String, attempts: u32, at_ms: u64 },
    /// Answer once everything queued before it is committed.
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Read every queued entry (at start).
    Load(std::sync::mpsc::SyncSender<Result<Vec<Entry>, StoreError>>),
}

/// Counters the writer keeps (statistics, and the test seam for group commit).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub puts: AtomicU64,
    pub removes: AtomicU64,
    /// Tests set this to make commits fail as a full disk would.
    #[cfg(test)]
    pub fail: std::sync::atomic::AtomicBool,
    /// Tests hold this to keep the writer from committing while they queue.
    #[cfg(test)]
    pub gate: std::sync::Mutex<()>,
}

impl Counters {
    pub(super) fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            removes: self.removes.load(Ordering::Relaxed),
        }
    }
}

/// Operations waiting in the channel, at most.
pub(super) const CHANNEL: usize = 65_536;
/// Operations in one transaction, at most (bounds a commit's memory).
const MAX_BATCH: usize = 16_384;
/// How often failed removes are retried when nothing else arrives.
const RETRY: Duration = Duration::from_secs(1);

/// A started writer: where to send, the thread, its counters.
pub(super) struct Started {
    pub tx: SyncSender<Op>,
    pub thread: JoinHandle<()>,
    pub counters: Arc<Counters>,
}

/// Opens the file and starts the writer thread.
pub(super) fn start(dir: &Path) -> Result<Started, StoreError> {
    let disk = Disk::open(dir)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let thread = std::thread::Builder::new()
        .name("exocom-store".into())
        .spawn(move || run(disk, rx, &c))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
    Ok(Started { tx, thread, counters })
}

fn run(mut disk: Disk, rx: Receiver<Op>, counters: &Counters) {
    // Removes and dead letters whose commit failed, retried first.
    let mut retry: Vec<Op> = Vec::new();
    loop {
        let first = if retry.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(RETRY) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Shutting down: one last attempt for what is pending.
                    let batch = std::mem::take(&mut retry);
                    commit(&mut disk, batch, counters, &mut retry);
                    break;
                }
            }
        };
        let mut batch = std::mem::take(&mut retry);
        batch.extend(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit(&mut disk, batch, counters, &mut retry);
    }
    debug!("store writer stopped");
}

fn commit(disk: &mut Disk, batch: Vec<Op>, counters: &Counters, retry: &mut Vec<Op>) {
    let mut changes = Vec::with_capacity(batch.len());
    for op in &batch {
        match op {
            Op::Put(e, _) => changes.push(Change::Put(e)),
            Op::Remove(s, seq) => changes.push(Change::Remove(s, *seq)),
            Op::Dead { service, seq, reason, attempts, at_ms } => {
                changes.push(Change::Dead { service, seq: *seq, reason, attempts: *attempts, at_ms: *at_ms })
            }
            Op::Flush(_) | Op::Load(_) => {}
        }
    }
    let result = if changes.is_empty() {
        Ok(())
    } else {
        let r = attempt(disk, &changes, counters);
        match &r {
            Ok(()) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                warn!(error = %err, ops = changes.len(), "store commit failed; sends in it are refused, removes retried");
            }
        }
        r
    };
    drop(changes);
    let failed = result.is_err();
    for op in batch {
        match op {
            Op::Put(_, reply) => {
                if !failed {
                    counters.puts.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(result.clone());
            }
            Op::Remove(..) | Op::Dead { .. } if failed => retry.push(op),
            Op::Remove(..) | Op::Dead { .. } => {
                counters.removes.fetch_add(1, Ordering::Relaxed);
            }
            Op::Flush(reply) => {
                let _ = reply.send(result.clone());
            }
            // Answered after the batch, so a load sees everything queued before it.
            Op::Load(reply) => {
                let _ = reply.send(disk.load());
            }
        }
    }
}

fn attempt(disk: &mut Disk, changes: &[Change<'_>], counters: &Counters) -> Result<(), StoreError> {
    #[cfg(test)]
    drop(counters.gate.lock());
    #[cfg(test)]
    if counters.fail.load(Ordering::Relaxed) {
        return Err(StoreError::Unavailable("injected failure (test)".into()));
    }
    let _ = counters;
    disk.commit(changes)
}
