//! Verifying a log: chains, signatures and completeness across rotated files.
//!
//! Checks, line by line and file by file (in [`segment`](super::segment) order):
//! every line's bytes match its `hash`; `prev` is the previous line's hash and
//! `seq` the previous `seq` + 1 (also across files); the log starts with
//! `log_start` at seq 1, and each later file starts with `segment_start`;
//! every checkpoint covers exactly the lines before it and carries a valid
//! Ed25519 signature of the given key; the log ends sealed (`log_stop` and a
//! checkpoint, or with `live` at least nothing worse than unsealed lines
//! after the last checkpoint). Stops at the first problem and names its
//! file, line and reason. Reads only; never repairs anything.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chain::{self, GENESIS, HASH_LEN};
use super::checkpoint::VerifyingKey;
use super::record::Event;

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The audit public key; without it signatures cannot be checked.
    pub key: Option<VerifyingKey>,
    /// The log is still being written: lines after the last checkpoint and a
    /// missing `log_stop` are reported, not failures.
    pub live: bool,
}

/// What a successful verification found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Files read.
    pub files: usize,
    /// Lines read.
    pub lines: u64,
    /// Checkpoints whose signature was checked.
    pub checkpoints: u64,
    /// `seq` of the last line.
    pub last_seq: u64,
    /// `seq` of the last checkpoint.
    pub last_checkpoint: u64,
    /// Lines after the last checkpoint (only possible with `live`).
    pub unsealed: u64,
    /// Whether the log ends with `log_stop` and its checkpoint.
    pub closed: bool,
    /// `audit_gap` lines (periods when records could not be written).
    pub gaps: u64,
}

/// The first problem found: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", file.display())]
pub struct Tampered {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// `seq` of the line, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Why verification did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The log was modified, cut or reordered (exit 1).
    #[error("{0}")]
    Tampered(Tampered),
    /// The log could not be fully verified, e.g. without a public key (exit 2).
    #[error("cannot verify: {0}")]
    Incomplete(String),
    /// A file could not be read (exit 2).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The fields verification reads; the rest of the line is covered by its hash.
#[derive(Deserialize)]
struct VLine<'a> {
    seq: u64,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    prev: &'a str,
    count: Option<u64>,
    #[serde(borrow)]
    key: Option<&'a str>,
    #[serde(borrow)]
    sig: Option<&'a str>,
}

struct State<'o> {
    opts: &'o VerifyOptions,
    out: Verified,
    head: [u8; HASH_LEN],
    prev_event: Option<Event>,
    last_event: Option<Event>,
    unsigned: u64,
}

/// Verifies the files of one log, given in reading order (see
/// [`segment::discover`](super::segment::discover)). `progress` is called
/// with the number of bytes read so far, about every megabyte.
pub fn verify(
    files: &[PathBuf],
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, VerifyError> {
    let mut st = State {
        opts,
        out: Verified::default(),
        head: GENESIS,
        prev_event: None,
        last_event: None,
        unsigned: 0,
    };
    let mut read_total = 0u64;
    let mut last_line = (PathBuf::new(), 0u64);
    for (index, path) in files.iter().enumerate() {
        let io = |source| VerifyError::Io { path: path.clone(), source };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut buf = Vec::with_capacity(1024);
        let mut number = 0u64;
        let mut since_progress = 0u64;
        st.out.files += 1;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            number += 1;
            read_total += n as u64;
            since_progress += n as u64;
            if since_progress >= 1 << 20 {
                progress(read_total);
                since_progress = 0;
            }
            let fail = |reason: String, seq: Option<u64>| {
                VerifyError::Tampered(Tampered { file: path.clone(), line: number, seq, reason })
            };
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(fail("last line is incomplete (no newline): cut or torn".into(), None));
            };
            check_line(&mut st, line, index, number == 1).map_err(|(r, seq)| fail(r, seq))?;
        }
        if number == 0 {
            return Err(VerifyError::Tampered(Tampered {
                file: path.clone(),
                line: 0,
                seq: None,
                reason: "file is empty".into(),
            }));
        }
        last_line = (path.clone(), number);
    }
    progress(read_total);
    finish(st, last_line)
}

fn check_line(
    st: &mut State<'_>,
    line: &[u8],
    file_index: usize,
    first_in_file: bool,
) -> Result<(), (String, Option<u64>)> {
    let (body, claimed) = chain::split(line).map_err(|e| (format!("malformed line: {e}"), None))?;
    let intact = chain::hash_body(body) == claimed;
    let parsed: VLine<'_> = match serde_json::from_slice(line) {
        Ok(parsed) => parsed,
        Err(_) if !intact => return Err(("line does not match its hash: modified".into(), None)),
        Err(e) => return Err((format!("malformed JSON: {e}"), None)),
    };
    let seq = parsed.seq;
    let fail = |reason: String| (reason, Some(seq));
    if !intact {
        return Err(fail("line does not match its hash: modified".into()));
    }
    let event = Event::parse(parsed.event);
    let expected = st.out.last_seq + 1;
    if st.out.lines == 0 {
        if seq != 1 || event != Some(Event::LogStart) {
            return Err(fail(format!(
                "log begins at seq {seq} ({}) instead of log_start at seq 1: earlier lines or files missing",
                parsed.event
            )));
        }
    } else if seq > expected {
        let what = if first_in_file { "files or lines missing" } else { "lines deleted" };
        return Err(fail(format!("seq jumps from {} to {seq}: {what}", st.out.last_seq)));
    } else if seq < expected {
        return Err(fail(format!(
            "seq goes back from {} to {seq}: lines reordered or duplicated",
            st.out.last_seq
        )));
    }
    let prev =
        chain::from_hex(parsed.prev.as_bytes()).ok_or_else(|| fail("prev is not 64 hex digits".into()))?;
    if prev != st.head {
        return Err(fail(
            "prev is not the hash of the line before: lines deleted, reordered or modified".into(),
        ));
    }
    if file_index > 0 && first_in_file && event != Some(Event::SegmentStart) {
        return Err(fail(format!(
            "file starts with {} instead of segment_start: not the next file of this log",
            parsed.event
        )));
    }
    if event == Some(Event::SegmentStart) && !first_in_file {
        return Err(fail("segment_start in the middle of a file".into()));
    }
    if event == Some(Event::AuditCheckpoint) {
        check_checkpoint(st, &parsed, &prev).map_err(fail)?;
    }
    if event == Some(Event::AuditGap) {
        st.out.gaps += 1;
    }
    st.head = claimed;
    st.out.last_seq = seq;
    st.out.lines += 1;
    st.prev_event = st.last_event;
    st.last_event = event;
    Ok(())
}

fn check_checkpoint(st: &mut State<'_>, line: &VLine<'_>, prev: &[u8; HASH_LEN]) -> Result<(), String> {
    let count = line.count.ok_or("checkpoint without count")?;
    if count != line.seq - 1 {
        return Err(format!("checkpoint count {count} but {} lines precede it", line.seq - 1));
    }
    match (&st.opts.key, line.sig) {
        (Some(key), Some(sig)) => {
            if line.key.is_some_and(|id| id != key.key_id()) {
                return Err(format!(
                    "checkpoint signed by key {}, not by the given key {}: forged checkpoint or wrong --pubkey",
                    line.key.unwrap_or_default(),
                    key.key_id()
                ));
            }
            if !key.verify(line.seq, prev, count, sig) {
                return Err("checkpoint signature does not verify: forged checkpoint".into());
            }
            st.out.checkpoints += 1;
        }
        (Some(_), None) => return Err("checkpoint is not signed".into()),
        (None, _) => st.unsigned += 1,
    }
    st.out.last_checkpoint = line.seq;
    Ok(())
}

fn finish(mut st: State<'_>, (file, line): (PathBuf, u64)) -> Result<Verified, VerifyError> {
    if st.out.lines == 0 {
        return Err(VerifyError::Incomplete("no audit lines given".into()));
    }
    let tail = |reason: String| {
        VerifyError::Tampered(Tampered { file: file.clone(), line, seq: Some(st.out.last_seq), reason })
    };
    st.out.unsealed = st.out.last_seq - st.out.last_checkpoint;
    st.out.closed = st.last_event == Some(Event::AuditCheckpoint) && st.prev_event == Some(Event::LogStop);
    if !st.opts.live {
        if st.out.unsealed > 0 {
            return Err(tail(format!(
                "{} lines after the last checkpoint (seq {}) are not sealed: tail cut or modified \
                 (if the router is still writing this log, use --live)",
                st.out.unsealed, st.out.last_checkpoint
            )));
        }
        if !st.out.closed {
            return Err(tail(format!(
                "log ends at seq {} without log_stop: tail cut after a checkpoint \
                 (if the router is still writing this log, use --live)",
                st.out.last_seq
            )));
        }
    }
    if st.opts.key.is_none() {
        let what = if st.unsigned > 0 && st.out.lines > 0 {
            "hash chain intact, but no --pubkey given, so checkpoint signatures were not checked"
        } else {
            "hash chain intact, but there is no checkpoint to check"
        };
        return Err(VerifyError::Incomplete(what.into()));
    }
    Ok(st.out)
}

/// Total size of `files`, for a progress bar.
pub fn total_bytes(files: &[PathBuf]) -> u64 {
    files.iter().filter_map(|p| std::fs::metadata(Path::new(p)).ok()).map(|m| m.len()).sum()
}
