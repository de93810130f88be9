//! The tamper-evident audit log: routing metadata only, never payloads or key material.
//!
//! One JSON object per line ([`record`]). Each line carries the hash of the
//! line before it and its own hash over its exact bytes ([`chain`]), so a
//! modified, deleted or reordered line breaks the chain. Signed checkpoints
//! ([`checkpoint`], Ed25519) seal the chain head at intervals, at rotation and
//! at shutdown, so only the holder of the audit key can produce a log that
//! verifies. Files rotate into numbered siblings whose chains link
//! ([`segment`]). One task writes in batches ([`writer`]); auditors use
//! [`verify`], [`query`] and [`report`].
//!
//! This module must never import `e2e`: it has no field a payload or a key
//! could go into, and the writer fails closed when the log cannot be written.
//! The format is documented field by field in `docs/AUDIT.md`.

pub mod chain;
pub mod checkpoint;
mod json;
pub mod query;
pub mod record;
pub mod report;
pub mod segment;
pub mod verify;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use record::{Decision, Event, Record};
pub use writer::{AuditHandle, Ticket, WriterStats, start};

/// When the writer calls fsync on the active file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every batch, before the batch's tickets resolve.
    EveryBatch,
    /// At most this often while there are unsynced writes (tickets resolve after write(2)).
    Interval(Duration),
    /// Never explicitly (the kernel decides); still fsynced at rotation and shutdown.
    Never,
}

/// How the audit writer behaves. [`AuditConfig::new`] gives sane defaults.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The active file, e.g. `data/audit.jsonl`; rotated files are numbered
    /// siblings (`data/audit.000001.jsonl`, ...).
    pub path: PathBuf,
    /// Ed25519 PKCS#8 PEM private key that signs checkpoints (`DIR/audit/key.pem`
    /// from `exocom certs init`). Without it checkpoints are unsigned and the
    /// log is only hash-chained, which proves nothing against someone who can
    /// rewrite the file.
    pub signing_key: Option<PathBuf>,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Write a checkpoint after this many lines.
    pub checkpoint_every: u64,
    /// Write a checkpoint at least this often, also when idle, so silence can
    /// be told apart from a truncated tail.
    pub checkpoint_interval: Duration,
    /// Rotate the active file once it is at least this large.
    pub rotate_bytes: Option<u64>,
    /// Rotate the active file once it is this old.
    pub rotate_interval: Option<Duration>,
    /// Keep accepting records when the log cannot be written (records are
    /// dropped, counted, and the drop is written as an `audit_gap` once
    /// writing works again). Off by default: the log fails closed.
    pub fail_open: bool,
    /// Most records waiting for the writer; beyond it `record` fails (closed)
    /// or drops and counts (open).
    pub queue_limit: usize,
}

impl AuditConfig {
    /// Defaults: fsync every 50 ms, checkpoint every 1,000 lines or 10 s,
    /// rotate at 1 GiB or daily, fail closed, 65,536 queued records.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            path: path.into(),
            signing_key: None,
            fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            rotate_bytes: Some(1 << 30),
            rotate_interval: Some(Duration::from_secs(24 * 3600)),
            fail_open: false,
            queue_limit: 65_536,
        }
    }
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log cannot take records now (failing closed, queue full, or shut down).
    #[error("audit unavailable")]
    Unavailable,
    /// Events such as `audit_checkpoint` or `log_start` are written by the writer only.
    #[error("event {0} is written by the audit writer itself")]
    Reserved(Event),
    /// The configured path is not usable as an audit log path.
    #[error("audit log path {0}: {1}")]
    Path(PathBuf, &'static str),
    /// Reading or writing a file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The existing log cannot be continued (its last line does not parse).
    #[error("cannot continue audit log {path}: {reason}")]
    Resume {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The signing key cannot be loaded.
    #[error(transparent)]
    Key(#[from] checkpoint::KeyError),
}
