//! Durable queue storage for the router: the seam between the router's
//! in-memory queues and the disk.
//!
//! The router keeps its working set in memory and writes through to a
//! [`Store`]: every queued copy of a message is put before its send is
//! acknowledged, and removed once a receiver acknowledged it (or it expired),
//! or moved to the dead-letter table. At start the router reloads what is
//! left. Payloads stay opaque (sealed) bytes here.
//!
//! Parts: [`codec`] (the versioned on-disk encoding), `redb` (the embedded
//! backend, one file per data dir), `writer` (the group-commit thread),
//! [`dlq`] (dead-letter maintenance while the router is stopped).
//! This module must never import `e2e`, and never block the async runtime
//! on the disk: writes go to the writer thread.

pub mod codec;
pub mod dlq;
mod redb;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::oneshot;

pub use self::dlq::{DeadLetter, DeadLetters};
pub use self::redb::FILE_NAME;
use self::writer::{Counters, Op};

/// A write the caller may wait on: resolves once the entry is durable.
pub type StoreTicket = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Why the store failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot write (disk full, I/O error); nothing new is accepted.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Another process (a running router) holds the store file.
    #[error("{} is in use by another process (a running router); stop the router for store maintenance", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The store file could not be opened or created.
    #[error("cannot open the store at {}: {reason}", path.display())]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
}

/// One queued copy of a message, as stored.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The receiving service.
    pub service: String,
    /// Position in that service's queue (increasing).
    pub seq: u64,
    /// The routing header bytes, verbatim.
    pub header: Bytes,
    /// The payload bytes, verbatim (opaque).
    pub payload: Bytes,
    /// The receiving service's end-to-end tag (opaque), may be empty.
    pub auth_tag: Bytes,
    /// The receiving service's end-to-end key grant for the message's epoch
    /// (opaque), may be empty; reloaded at start so a backlog stays readable.
    pub grant: Bytes,
    /// Sender service name (authenticated).
    pub sender: String,
    /// Sender SPIFFE URI (authenticated).
    pub sender_id: String,
    /// Sender instance id.
    pub sender_instance: String,
    /// When the router accepted it, Unix ms.
    pub timestamp_ms: u64,
    /// Deliveries attempted so far.
    pub attempts: u32,
}

/// What the store has done since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable transactions committed (each one fsync).
    pub commits: u64,
    /// Transactions that failed (their puts were refused).
    pub failed_commits: u64,
    /// Entries made durable.
    pub puts: u64,
    /// Removes and dead letters committed.
    pub removes: u64,
}

/// Where queued messages are kept.
#[derive(Debug, Default)]
pub enum Store {
    /// Memory only: nothing survives a restart (development, benchmarks).
    #[default]
    Memory,
    /// On disk in a data dir, with group commit.
    Durable(Durable),
}

/// The durable store: a handle on the writer thread that owns the file.
pub struct Durable {
    dir: PathBuf,
    tx: Option<SyncSender<Op>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Drop for Durable {
    /// Lets the writer commit what is queued, then waits for it, so the file
    /// lock is released when the store is dropped.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the durable store in `dir` (`dir/queues.redb`).
    /// Fails with [`StoreError::Locked`] if another process has it open.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let writer::Started { tx, thread, counters } = writer::start(dir)?;
        Ok(Store::Durable(Durable { dir: dir.to_path_buf(), tx: Some(tx), thread: Some(thread), counters }))
    }

    /// Makes `entry` durable; the ticket resolves when it is (or with
    /// [`StoreError::Unavailable`] if its commit failed). `None` for the
    /// memory store, where there is nothing to wait for.
    pub fn put(&self, entry: Entry) -> Option<StoreTicket> {
        let Store::Durable(d) = self else { return None };
        let (reply, rx) = oneshot::channel();
        if let Err(err) = d.send(Op::Put(entry, reply)) {
            return Some(Box::pin(std::future::ready(Err(err))));
        }
        Some(Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("store writer stopped".into())))
        }))
    }

    /// Forgets an entry (acknowledged or expired). Not waited on: a remove
    /// lost in a crash means at most a redelivery after restart.
    pub fn remove(&self, service: &str, seq: u64) {
        if let Store::Durable(d) = self
            && let Err(err) = d.send(Op::Remove(service.to_string(), seq))
        {
            tracing::warn!(%err, service, seq, "store remove not queued");
        }
    }

    /// Moves an entry to the dead-letter table with why, when and how many
    /// attempts were made. The memory store just forgets it.
    pub fn dead_letter(&self, service: &str, seq: u64, reason: &str, attempts: u32) {
        if let Store::Durable(d) = self {
            let op = Op::Dead {
                service: service.to_string(),
                seq,
                reason: reason.to_string(),
                attempts,
                at_ms: now_ms(),
            };
            if let Err(err) = d.send(op) {
                tracing::warn!(%err, service, seq, "store dead letter not queued");
            }
        }
    }

    /// Every entry left from a previous run, in `(service, seq)` order.
    /// Blocks until the writer has committed what was queued before it.
    pub fn load(&self) -> Result<Vec<Entry>, StoreError> {
        let Store::Durable(d) = self else { return Ok(Vec::new()) };
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        d.send(Op::Load(reply))?;
        rx.recv().unwrap_or_else(|_| Err(StoreError::Unavailable("store writer stopped".into())))
    }

    /// Resolves once everything handed to the store before it is committed
    /// (shutdown, tests). `None` for the memory store.
    pub fn flush(&self) -> Option<StoreTicket> {
        let Store::Durable(d) = self else { return None };
        let (reply, rx) = oneshot::channel();
        if let Err(err) = d.send(Op::Flush(reply)) {
            return Some(Box::pin(std::future::ready(Err(err))));
        }
        Some(Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(StoreError::Unavailable("store writer stopped".into())))
        }))
    }

    /// Whether a put would need the entry's bytes (memory store: no).
    pub fn is_durable(&self) -> bool {
        !matches!(self, Store::Memory)
    }

    /// Counters since the store was opened (all zero for the memory store).
    pub fn stats(&self) -> StoreStats {
        match self {
            Store::Memory => StoreStats::default(),
            Store::Durable(d) => d.counters.snapshot(),
        }
    }
}

impl Durable {
    /// Queues an operation. When the writer is behind by a whole channel,
    /// this waits for it: the disk's pace then holds back new sends, which
    /// bounds memory instead of refusing or dropping writes.
    fn send(&self, op: Op) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("store writer stopped".into());
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        match tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(op)) => tx.send(op).map_err(|_| stopped()),
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn entry(service: &str, seq: u64) -> Entry {
        Entry {
            service: service.into(),
            seq,
            header: Bytes::from(format!("h{seq}")),
            payload: Bytes::from(vec![seq as u8; 64]),
            auth_tag: Bytes::new(),
            grant: Bytes::new(),
            sender: "web".into(),
            sender_id: "spiffe://example.org/svc/web".into(),
            sender_instance: "i-1".into(),
            timestamp_ms: 1,
            attempts: 0,
        }
    }

    fn durable(store: &Store) -> &Durable {
        match store {
            Store::Durable(d) => d,
            Store::Memory => panic!("not durable"),
        }
    }

    fn keys(entries: &[Entry]) -> Vec<(String, u64)> {
        entries.iter().map(|e| (e.service.clone(), e.seq)).collect()
    }

    #[tokio::test]
    async fn many_puts_share_few_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = durable(&store);
        let tickets: Vec<StoreTicket> = {
            // Hold the writer while 5,000 puts queue up, as they would during a slow fsync.
            let _gate = d.counters.gate.lock().unwrap();
            (0..5000).map(|i| store.put(entry("todos", i)).unwrap()).collect()
        };
        for t in tickets {
            t.await.unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.puts, 5000);
        // At most the one batch that started before the gate, then one for the rest.
        assert!(stats.commits <= 2, "{stats:?}");
        assert_eq!(store.load().unwrap().len(), 5000);
    }

    #[tokio::test]
    async fn load_is_in_service_then_seq_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for (s, q) in [("b", 2), ("b", 0), ("a", 5), ("b", 10), ("b", 1)] {
                let _ = store.put(entry(s, q));
            }
            store.flush().unwrap().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(
            keys(&loaded),
            [("a", 5), ("b", 0), ("b", 1), ("b", 2), ("b", 10)].map(|(s, q)| (s.to_string(), q))
        );
        assert_eq!(loaded[1].payload, Bytes::from(vec![0u8; 64]));
        assert_eq!(loaded[3].header, Bytes::from("h2"));
    }

    #[tokio::test]
    async fn removed_entries_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for q in 0..4 {
                let _ = store.put(entry("todos", q));
            }
            store.remove("todos", 1);
            store.remove("todos", 3);
            store.remove("todos", 99);
            // No flush: dropping the store commits what was queued.
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(keys(&store.load().unwrap()), [("todos".to_string(), 0), ("todos".to_string(), 2)]);
    }

    #[tokio::test]
    async fn a_failed_commit_refuses_its_puts_and_retries_its_removes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put(entry("todos", 0)).unwrap().await.unwrap();
            let d = durable(&store);
            d.counters.fail.store(true, Ordering::Relaxed);
            let refused = store.put(entry("todos", 1)).unwrap().await;
            assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
            store.remove("todos", 0);
            assert!(store.flush().unwrap().await.is_err());
            assert!(store.stats().failed_commits >= 2);
            d.counters.fail.store(false, Ordering::Relaxed);
            store.put(entry("todos", 2)).unwrap().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        // 0 was removed on retry, 1 was never stored, 2 is there.
        assert_eq!(keys(&store.load().unwrap()), [("todos".to_string(), 2)]);
    }

    #[tokio::test]
    async fn dead_letters_round_trip_through_maintenance() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for q in 0..3 {
                let _ = store.put(entry("todos", q));
            }
            store.dead_letter("todos", 1, "too many delivery attempts", 5);
            store.dead_letter("todos", 42, "never stored", 1);
            store.flush().unwrap().await.unwrap();
            assert!(matches!(DeadLetters::open(dir.path()), Err(StoreError::Locked { .. })));
        }
        let dlq = DeadLetters::open(dir.path()).unwrap();
        let list = dlq.list().unwrap();
        assert_eq!(list.len(), 1);
        let dl = list[0].clone();
        assert_eq!((dl.reason.as_str(), dl.attempts), ("too many delivery attempts", 5));
        assert_eq!((dl.entry.service.as_str(), dl.entry.seq), ("todos", 1));
        assert_eq!(dl.entry.payload, Bytes::from(vec![1u8; 64]));
        assert!(dlq.show(dl.id).unwrap().is_some());
        assert!(dlq.show(dl.id + 100).unwrap().is_none());
        assert_eq!(dlq.replay(dl.id).unwrap(), Some(3));
        assert_eq!(dlq.replay(dl.id).unwrap(), None);
        assert!(dlq.list().unwrap().is_empty());
        drop(dlq);

        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(keys(&loaded), [0, 2, 3].map(|q| ("todos".to_string(), q)));
        assert_eq!(loaded[2].header, Bytes::from("h1"));
        store.dead_letter("todos", 0, "rejected by handler", 1);
        store.dead_letter("todos", 2, "rejected by handler", 1);
        drop(store);

        let dlq = DeadLetters::open(dir.path()).unwrap();
        let ids: Vec<u64> = dlq.list().unwrap().iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids[0] > dl.id, "ids are never reused: {ids:?} after {}", dl.id);
        assert!(dlq.purge(ids[0]).unwrap());
        assert!(!dlq.purge(ids[0]).unwrap());
        assert_eq!(dlq.purge_all().unwrap(), 1);
        assert!(dlq.list().unwrap().is_empty());
    }

    #[test]
    fn maintenance_needs_an_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(DeadLetters::open(dir.path()), Err(StoreError::Open { .. })));
    }

    #[tokio::test]
    async fn the_memory_store_keeps_nothing() {
        let store = Store::Memory;
        assert!(store.put(entry("todos", 0)).is_none());
        assert!(store.load().unwrap().is_empty());
        assert!(!store.is_durable());
        assert_eq!(store.stats(), StoreStats::default());
    }
}
