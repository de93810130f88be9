//! Durable queue storage for the router: the seam between the router's
//! in-memory queues and the disk.
//!
//! The router keeps its working set in memory and writes through to a
//! [`Store`]: every queued copy of a message is put before its send is
//! acknowledged, and removed once a receiver acknowledged it. At start the
//! router reloads what is left. Payloads stay opaque (sealed) bytes here.
//! This module must never import `e2e`.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A write the caller may wait on: resolves once the entry is durable.
pub type StoreTicket = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot write (disk full, I/O error); nothing new is accepted.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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

/// Where queued messages are kept.
#[derive(Debug, Default)]
pub enum Store {
    /// Memory only: nothing survives a restart (development, benchmarks).
    #[default]
    Memory,
}

impl Store {
    /// Makes `entry` durable; the ticket resolves when it is.
    pub fn put(&self, _entry: Entry) -> Option<StoreTicket> {
        match self {
            Store::Memory => None,
        }
    }

    /// Forgets an entry (acknowledged, expired or dead-lettered).
    pub fn remove(&self, _service: &str, _seq: u64) {}

    /// Every entry left from a previous run, in queue order per service.
    pub fn load(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }

    /// Whether a put would need the entry's bytes (memory store: no).
    pub fn is_durable(&self) -> bool {
        !matches!(self, Store::Memory)
    }
}
