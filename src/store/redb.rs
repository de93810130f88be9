//! The embedded backend: one redb file, `queues.redb`, in the data dir.
//!
//! Two tables: `queue` maps `(service, seq)` to an encoded entry (see
//! [`super::codec`]), so a range scan yields each service's queue in order;
//! `dead` maps a dead-letter id (increasing) to an encoded dead letter.
//!
//! Every write goes through [`Disk::commit`]: one write transaction with
//! `Durability::Immediate` (an fsync before it returns) for a whole batch.
//! This module is blocking and must only run on the writer thread or in
//! maintenance commands, never on the async runtime's hot path. It never
//! panics on what is in the file: a bad record is a [`StoreError::Corrupt`].

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{self, DeadMeta};
use super::{Entry, StoreError};

/// Queued entries by `(service, seq)`.
pub(super) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// Dead letters by id.
pub(super) const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
/// Small counters; `next_dead` keeps dead-letter ids unique even after the
/// newest ones are replayed or purged.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_DEAD: &str = "next_dead";

/// The file name inside the data dir.
pub const FILE_NAME: &str = "queues.redb";

/// One change in a batch, applied in order within one transaction.
pub(super) enum Change<'a> {
    /// Store a queued copy.
    Put(&'a Entry),
    /// Forget a queued copy (acknowledged, expired, revoked).
    Remove(&'a str, u64),
    /// Move a queued copy into the dead-letter table.
    Dead {
        /// Its queue.
        service: &'a str,
        /// Its position there.
        seq: u64,
        /// Why.
        reason: &'a str,
        /// Deliveries attempted.
        attempts: u32,
        /// When, Unix ms.
        at_ms: u64,
    },
}

/// The database file, reopened after a failure.
pub(super) struct Disk {
    path: PathBuf,
    db: Option<Database>,
}

impl Disk {
    /// Opens (or creates) `dir/queues.redb`, creating `dir` if needed.
    pub(super) fn open(dir: &Path) -> Result<Disk, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open { path: dir.to_path_buf(), reason: e.to_string() })?;
        let path = dir.join(FILE_NAME);
        let db = create(&path)?;
        Ok(Disk { path, db: Some(db) })
    }

    /// Every queued entry, in `(service, seq)` order.
    pub(super) fn load(&mut self) -> Result<Vec<Entry>, StoreError> {
        let db = self.db()?;
        load(db)
    }

    /// Applies `changes` in one durable transaction. On failure the file is
    /// closed, and reopened by the next call, since redb refuses further
    /// writes on a handle that saw an I/O error.
    pub(super) fn commit(&mut self, changes: &[Change<'_>]) -> Result<(), StoreError> {
        let result = apply(self.db()?, changes);
        if result.is_err() {
            self.db = None;
        }
        result.map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            self.db = Some(create(&self.path)?);
        }
        self.db.as_ref().ok_or_else(|| StoreError::Unavailable("store file not open".into()))
    }
}

/// Opens or creates the file, mapping a held lock to [`StoreError::Locked`].
pub(super) fn create(path: &Path) -> Result<Database, StoreError> {
    Database::create(path).map_err(|e| open_error(path, e))
}

/// Opens an existing file (maintenance: never creates one).
pub(super) fn open_existing(dir: &Path) -> Result<Database, StoreError> {
    let path = dir.join(FILE_NAME);
    if !path.is_file() {
        return Err(StoreError::Open { path, reason: "no durable store here (file not found)".into() });
    }
    Database::open(&path).map_err(|e| open_error(&path, e))
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.to_path_buf() },
        other => StoreError::Open { path: path.to_path_buf(), reason: other.to_string() },
    }
}

fn apply(db: &Database, changes: &[Change<'_>]) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut queue = tx.open_table(QUEUE)?;
        let mut dead = tx.open_table(DEAD)?;
        let mut meta = tx.open_table(META)?;
        let first_dead = meta.get(NEXT_DEAD)?.map_or(1, |v| v.value());
        let mut next_dead = first_dead;
        for change in changes {
            match change {
                Change::Put(e) => {
                    queue.insert((e.service.as_str(), e.seq), codec::encode_entry(e).as_slice())?;
                }
                Change::Remove(service, seq) => {
                    queue.remove((*service, *seq))?;
                }
                Change::Dead { service, seq, reason, attempts, at_ms } => {
                    let Some(value) = queue.remove((*service, *seq))? else { continue };
                    let meta = DeadMeta {
                        dead_at_ms: *at_ms,
                        attempts: *attempts,
                        seq: *seq,
                        reason: reason.to_string(),
                        service: service.to_string(),
                    };
                    let record = codec::encode_dead(&meta, value.value());
                    drop(value);
                    dead.insert(next_dead, record.as_slice())?;
                    next_dead += 1;
                }
            }
        }
        if next_dead != first_dead {
            meta.insert(NEXT_DEAD, next_dead)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Reads every queued entry, in `(service, seq)` order.
pub(super) fn load(db: &Database) -> Result<Vec<Entry>, StoreError> {
    let read = |e: redb::Error| StoreError::Unavailable(e.to_string());
    let tx = db.begin_read().map_err(|e| read(e.into()))?;
    let table = match tx.open_table(QUEUE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(read(e.into())),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| read(e.into()))? {
        let (k, v) = row.map_err(|e| read(e.into()))?;
        let (service, seq) = k.value();
        let entry = codec::decode_entry(service, seq, v.value())
            .map_err(|e| StoreError::Corrupt(format!("queue entry {service}/{seq}: {e}")))?;
        out.push(entry);
    }
    Ok(out)
}
