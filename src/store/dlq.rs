//! Dead-letter maintenance on a data dir while the router is stopped.
//!
//! Messages that ran out of delivery attempts or that a handler rejected
//! (`Nack{requeue: false}`) are kept in the store's dead-letter table with
//! the reason, the time and the attempts. [`DeadLetters`] lists, shows,
//! replays (back into the service's queue, delivered at the next start) and
//! purges them. It opens the file exclusively: while a router holds it,
//! opening fails with [`StoreError::Locked`], so the two never race.
//! Payloads stay opaque bytes; this module never tries to read them.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::codec::{self, DeadMeta};
use super::redb::{DEAD, QUEUE, open_existing};
use super::{Entry, StoreError};

/// One dead letter.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its id in the dead-letter table (what `show`, `replay`, `purge` take).
    pub id: u64,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When, Unix ms.
    pub dead_at_ms: u64,
    /// Deliveries attempted.
    pub attempts: u32,
    /// The queued copy as it was (service, seq, header, opaque payload, …).
    pub entry: Entry,
}

/// The dead-letter table of a data dir, opened for maintenance.
pub struct DeadLetters {
    db: Database,
}

impl DeadLetters {
    /// Opens `dir/queues.redb`; fails with [`StoreError::Locked`] while a
    /// router runs on it, and with [`StoreError::Open`] if there is none.
    pub fn open(dir: &Path) -> Result<DeadLetters, StoreError> {
        Ok(DeadLetters { db: open_existing(dir)? })
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = match tx.open_table(DEAD) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(unavailable)? {
            let (k, v) = row.map_err(unavailable)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// One dead letter, if there is one with that id.
    pub fn show(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = match tx.open_table(DEAD) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        match table.get(id).map_err(unavailable)? {
            Some(v) => Ok(Some(decode(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Moves a dead letter back to the end of its service's queue, with its
    /// attempts reset; returns its new position there, or `None` if there is
    /// no dead letter with that id.
    pub fn replay(&self, id: u64) -> Result<Option<u64>, StoreError> {
        let mut tx = self.db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate).map_err(unavailable)?;
        let seq = {
            let mut dead = tx.open_table(DEAD).map_err(unavailable)?;
            let mut queue = tx.open_table(QUEUE).map_err(unavailable)?;
            let Some(value) = dead.remove(id).map_err(unavailable)? else { return Ok(None) };
            let (meta, mut entry) = codec::decode_dead(value.value()).map_err(|e| corrupt(id, e))?;
            drop(value);
            let service = meta.service.as_str();
            let last = match queue.range((service, 0)..=(service, u64::MAX)).map_err(unavailable)?.next_back()
            {
                Some(row) => Some(row.map_err(unavailable)?.0.value().1),
                None => None,
            };
            let seq = last.map_or(0, |s| s + 1);
            entry.seq = seq;
            entry.attempts = 0;
            queue.insert((service, seq), codec::encode_entry(&entry).as_slice()).map_err(unavailable)?;
            seq
        };
        tx.commit().map_err(unavailable)?;
        Ok(Some(seq))
    }

    /// Deletes one dead letter; whether it existed.
    pub fn purge(&self, id: u64) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate).map_err(unavailable)?;
        let existed = tx.open_table(DEAD).map_err(unavailable)?.remove(id).map_err(unavailable)?.is_some();
        tx.commit().map_err(unavailable)?;
        Ok(existed)
    }

    /// Deletes every dead letter; how many there were.
    pub fn purge_all(&self) -> Result<u64, StoreError> {
        let mut tx = self.db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate).map_err(unavailable)?;
        let n = {
            let mut dead = tx.open_table(DEAD).map_err(unavailable)?;
            let n = dead.len().map_err(unavailable)?;
            dead.retain(|_, _| false).map_err(unavailable)?;
            n
        };
        tx.commit().map_err(unavailable)?;
        Ok(n)
    }
}

fn decode(id: u64, value: &[u8]) -> Result<DeadLetter, StoreError> {
    let (DeadMeta { dead_at_ms, attempts, reason, .. }, entry) =
        codec::decode_dead(value).map_err(|e| corrupt(id, e))?;
    Ok(DeadLetter { id, reason, dead_at_ms, attempts, entry })
}

fn corrupt(id: u64, e: codec::CodecError) -> StoreError {
    StoreError::Corrupt(format!("dead letter {id}: {e}"))
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}
