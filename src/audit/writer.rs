//! The writer: the only code that appends to the audit log.
//!
//! Callers push [`Record`]s into a bounded queue through an [`AuditHandle`]
//! without blocking or awaiting (a std mutex held for a `Vec::push`, and a
//! wake-up only when the writer is idle). A record someone waits for
//! ([`AuditHandle::record`]: a send's line, which its `Accepted` follows)
//! wakes an idle writer at once; one nobody waits for
//! ([`AuditHandle::note`]: deliveries, acks, replies, connections) does
//! not while the writer lingers after a batch, and goes out with the next
//! batch, at most [`LINGER`] later. So a request/reply round trip costs
//! one batch, not one per line. The writer takes everything
//! queued, serializes it into one buffer (sequence numbers, times, hash
//! chain, checkpoints), makes one `write(2)`, fsyncs per [`FsyncPolicy`], and
//! only then resolves the batch's [`Ticket`]s. It runs on a thread of its
//! own, so file I/O never stalls the runtime and a batch costs no hand-off
//! to a pool thread and back.
//!
//! It must never let a line go missing from the chain silently: when a write
//! fails the file is cut back to the last whole batch, the batch's tickets
//! fail, new records are refused (fail closed, the default), and the task
//! retries with backoff; once writing works again it writes an `audit_gap`
//! line saying how many records were lost, since when and why, then a
//! checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::chain::{self, ChainState};
use super::checkpoint::Signer;
use super::json;
use super::record::{Event, LineOut, Plain, Record, WriterFields};
use super::segment;
use super::{AuditConfig, AuditError, FsyncPolicy};
use crate::shutdown::Shutdown;

/// First retry delay after a failed write.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How much of a file's end is read to find its last line when resuming.
const TAIL_WINDOW: u64 = 1 << 20;
/// How long after a batch the writer waits before writing records nobody
/// waits for ([`AuditHandle::note`]) on their own: the longest such a
/// record stays in memory only, on top of the write itself.
pub const LINGER: Duration = Duration::from_millis(1);

/// Starts the writer thread. Opens (or continues) the log at `config.path`,
/// writes `log_start` and a checkpoint, and returns the handle callers record
/// through and a task that ends when the writer has. On shutdown the writer
/// drains the queue, writes `log_stop` and a final checkpoint, fsyncs and
/// ends; it does the same by itself once every handle, ticket and the task
/// are dropped.
///
/// Must be called inside a Tokio runtime.
pub fn start(
    config: AuditConfig,
    shutdown: Shutdown,
) -> Result<(AuditHandle, tokio::task::JoinHandle<()>), AuditError> {
    let writer = Writer::open(&config)?;
    let shared = Arc::new(Shared::new(config.fail_open, config.queue_limit));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_shared = shared.clone();
    let interval = config.checkpoint_interval;
    std::thread::Builder::new()
        .name("exocom-audit".into())
        .spawn(move || {
            let guard = CloseOnExit(thread_shared);
            run(writer, &guard.0, interval);
            let _ = done_tx.send(());
        })
        .map_err(|e| AuditError::Io { path: config.path.clone(), source: e })?;
    // The task the caller awaits: passes the shutdown signal to the thread
    // and ends when the thread has written `log_stop` and closed.
    let stop_shared = shared.clone();
    let mut shutdown = shutdown;
    let task = tokio::spawn(async move {
        tokio::select! {
            () = shutdown.wait() => stop_shared.stop(),
            _ = &mut done_rx => return,
        }
        let _ = done_rx.await;
    });
    Ok((AuditHandle { shared: Some(shared) }, task))
}

/// Where callers send records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditHandle {
    shared: Option<Arc<Shared>>,
}

impl AuditHandle {
    /// A handle that records nothing (benchmarks with the audit log off).
    pub fn disabled() -> AuditHandle {
        AuditHandle { shared: None }
    }

    /// Queues a record. Never blocks or awaits. The ticket resolves once the
    /// batch holding it is written (and fsynced, with [`FsyncPolicy::EveryBatch`]).
    ///
    /// Fails with [`AuditError::Unavailable`] when failing closed (the log
    /// cannot be written, the queue is over its limit, or the writer has
    /// stopped), and with [`AuditError::Reserved`] for writer-only events.
    /// When failing open, a record that cannot be queued is dropped and
    /// counted, and its ticket resolves `Ok` so traffic continues; the drop
    /// is written to the log as an `audit_gap`.
    pub fn record(&self, rec: Record) -> Result<Ticket, AuditError> {
        match (self.enqueue(rec, true)?, &self.shared) {
            (Some(n), Some(shared)) => {
                Ok(Ticket { state: TicketState::Pending { n, shared: shared.clone() } })
            }
            _ => Ok(Ticket::ready(Ok(()))),
        }
    }

    /// Queues a record nobody waits for. Unlike [`AuditHandle::record`] it
    /// does not wake a writer that lingers after a batch: it is written with
    /// the next batch, at most [`LINGER`] later. Fails as `record` does.
    pub fn note(&self, rec: Record) -> Result<(), AuditError> {
        self.enqueue(rec, false).map(drop)
    }

    /// Queues `rec`; `Some` with its queue number when it was queued,
    /// `None` when there is nothing to wait for (no log, or dropped while
    /// failing open). Only [`AuditHandle::record`] makes a ticket of it, so
    /// a note costs no reference count.
    fn enqueue(&self, rec: Record, urgent: bool) -> Result<Option<u64>, AuditError> {
        if rec.event.is_reserved() {
            return Err(AuditError::Reserved(rec.event));
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        if shared.closed.load(Ordering::Acquire) {
            return Err(AuditError::Unavailable);
        }
        if !shared.available.load(Ordering::Acquire) && !shared.fail_open {
            return Err(AuditError::Unavailable);
        }
        let mut queue = lock(&shared.queue);
        if queue.records.len() >= shared.queue_limit {
            return if shared.fail_open {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                shared.wake_writer(queue, true);
                Ok(None)
            } else {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                shared.wake_writer(queue, true);
                Err(AuditError::Unavailable)
            };
        }
        let n = queue.next;
        queue.next += 1;
        queue.records.push(rec);
        shared.wake_writer(queue, urgent);
        Ok(Some(n))
    }

    /// Whether records are being accepted (false while failing closed or after shutdown).
    pub fn is_available(&self) -> bool {
        match &self.shared {
            None => true,
            Some(s) => {
                !s.closed.load(Ordering::Acquire) && (s.fail_open || s.available.load(Ordering::Acquire))
            }
        }
    }

    /// Records queued and not yet taken by the writer (its lag).
    pub fn pending(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| lock(&s.queue).records.len())
    }

    /// Counters of what the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        match &self.shared {
            None => WriterStats::default(),
            Some(s) => s.stats.snapshot(),
        }
    }
}

/// Counters of the writer, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// `write(2)` calls that succeeded (one per batch, plus rotation).
    pub writes: u64,
    /// Lines written, including the writer's own (checkpoints, ...).
    pub lines: u64,
    /// Caller records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// fsync calls.
    pub fsyncs: u64,
    /// Batches that could not be written.
    pub failed_batches: u64,
    /// Files rotated.
    pub rotations: u64,
}

/// Resolves when the batch holding a record has been written. Dropping it is fine.
#[derive(Debug)]
pub struct Ticket {
    state: TicketState,
}

#[derive(Debug)]
enum TicketState {
    Ready(Option<Result<(), AuditError>>),
    Pending { n: u64, shared: Arc<Shared> },
}

impl Ticket {
    fn ready(result: Result<(), AuditError>) -> Ticket {
        Ticket { state: TicketState::Ready(Some(result)) }
    }
}

impl std::future::Future for Ticket {
    type Output = Result<(), AuditError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            TicketState::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            TicketState::Pending { n, shared } => {
                let mut settled = lock(&shared.settled);
                if *n < settled.upto {
                    let failed = settled.failed.iter().any(|r| r.contains(n));
                    return Poll::Ready(if failed { Err(AuditError::Unavailable) } else { Ok(()) });
                }
                if settled.closed {
                    return Poll::Ready(Err(AuditError::Unavailable));
                }
                // Only the last entry is compared: every pending ticket in a
                // `FuturesUnordered` has a waker of its own, so a scan of the
                // whole list (one entry per pending ticket) found nothing and
                // made a batch of n tickets cost n² comparisons. A ticket
                // polled again before the next settle is the case this catches.
                if !settled.wakers.last().is_some_and(|w| w.will_wake(cx.waker())) {
                    settled.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// State shared by the handles and the task.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer thread waits on it (with `queue`) while idle.
    wake: Condvar,
    /// False while the log cannot be written.
    available: AtomicBool,
    /// True once the task has ended.
    closed: AtomicBool,
    fail_open: bool,
    queue_limit: usize,
    /// Fail-open records dropped at `record` and not yet reported in the log.
    dropped: AtomicU64,
    /// Fail-closed records refused for a full queue and not yet reported.
    refused: AtomicU64,
    settled: Mutex<Settled>,
    stats: Stats,
}

#[derive(Debug)]
struct Queue {
    records: Vec<Record>,
    /// Queue number of the next record pushed; a batch is a contiguous range of these.
    next: u64,
    /// The writer is waiting for work: the next record must wake it.
    idle: bool,
    /// The writer's wait ends by itself within [`LINGER`]: a record nobody
    /// waits for need not wake it.
    lingering: bool,
    /// Something was queued or counted since the writer last looked.
    woken: bool,
    /// Shutdown was asked for.
    stop: bool,
}

#[derive(Debug, Default)]
struct Settled {
    /// Every record numbered below this has been written or has failed.
    upto: u64,
    /// Numbers of records that failed (merged ranges, one per outage).
    failed: Vec<Range<u64>>,
    wakers: Vec<Waker>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Stats {
    writes: AtomicU64,
    lines: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    failed_batches: AtomicU64,
    rotations: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> WriterStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            writes: get(&self.writes),
            lines: get(&self.lines),
            records: get(&self.records),
            bytes: get(&self.bytes),
            fsyncs: get(&self.fsyncs),
            failed_batches: get(&self.failed_batches),
            rotations: get(&self.rotations),
        }
    }
}

/// Locks a mutex; a poisoned one is still consistent here (every critical section is a push or a swap).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(fail_open: bool, queue_limit: usize) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                records: Vec::new(),
                next: 0,
                idle: false,
                lingering: false,
                woken: false,
                stop: false,
            }),
            wake: Condvar::new(),
            available: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            fail_open,
            queue_limit: queue_limit.max(1),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            settled: Mutex::new(Settled::default()),
            stats: Stats::default(),
        }
    }

    /// Wakes the writer if it waits for work (then releases the queue).
    /// A busy writer takes what was queued when its batch is done, without
    /// a wake-up per record. A lingering writer is left to wake by itself
    /// unless someone waits for the record (`urgent`).
    fn wake_writer(&self, mut queue: MutexGuard<'_, Queue>, urgent: bool) {
        if queue.lingering && !urgent {
            return;
        }
        queue.woken = true;
        if queue.idle {
            queue.idle = false;
            drop(queue);
            self.wake.notify_one();
        }
    }

    /// Asks the writer to drain, write `log_stop` and end.
    fn stop(&self) {
        let mut queue = lock(&self.queue);
        queue.stop = true;
        self.wake_writer(queue, true);
    }

    /// Waits until a record is queued, a stop is asked for or `deadline`
    /// passes; returns whether to stop. With `linger`, the wait ends by
    /// then at the latest, and only records someone waits for end it sooner.
    fn wait(&self, deadline: Instant, linger: Option<Instant>) -> bool {
        let (until, lingering) = match linger {
            Some(t) if t < deadline => (t, true),
            _ => (deadline, false),
        };
        let mut queue = lock(&self.queue);
        loop {
            if queue.stop {
                return true;
            }
            let now = Instant::now();
            if std::mem::take(&mut queue.woken) || now >= until {
                return false;
            }
            queue.idle = true;
            queue.lingering = lingering;
            queue = match self.wake.wait_timeout(queue, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            queue.idle = false;
            queue.lingering = false;
        }
    }

    /// Swaps the queued records into `batch` and gives their sequence
    /// range. The previous batch, emptied, becomes the queue, so producers
    /// push into a buffer that already has room; one that grew past an
    /// ordinary batch (a burst) is let go rather than kept.
    fn take(&self, batch: &mut Vec<Record>) -> Range<u64> {
        const KEEP: usize = 4096;
        // Dropped outside the lock.
        batch.clear();
        if batch.capacity() > KEEP {
            *batch = Vec::new();
        }
        let mut queue = lock(&self.queue);
        std::mem::swap(&mut queue.records, batch);
        let end = queue.next;
        end - batch.len() as u64..end
    }

    /// Resolves the tickets of `range`.
    fn settle(&self, range: Range<u64>, ok: bool) {
        let wakers = {
            let mut settled = lock(&self.settled);
            if !ok && !range.is_empty() {
                match settled.failed.last_mut() {
                    Some(last) if last.end == range.start => last.end = range.end,
                    _ => settled.failed.push(range.clone()),
                }
            }
            settled.upto = settled.upto.max(range.end);
            std::mem::take(&mut settled.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let wakers = {
            let mut settled = lock(&self.settled);
            settled.closed = true;
            std::mem::take(&mut settled.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// What the writer thread writes in one go.
#[derive(Debug, Default)]
struct Job<'a> {
    records: &'a [Record],
    /// Write a checkpoint at the end (timer).
    checkpoint: bool,
    /// Fail-open drops to report.
    dropped: u64,
    /// Fail-closed refusals to report.
    refused: u64,
    /// Shutdown: write `log_stop` and a final checkpoint, fsync.
    stop: bool,
}

impl Job<'_> {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && !self.checkpoint && self.dropped == 0 && self.refused == 0 && !self.stop
    }
}

/// An outage in progress.
#[derive(Debug)]
struct Failure {
    since: String,
    reason: String,
    lost: u64,
}

/// The file side of the writer; lives on the blocking pool during each write.
#[derive(Debug)]
struct Writer {
    path: PathBuf,
    file: Option<File>,
    /// Length of the file after the last whole batch; a failed write is cut back to it.
    good_len: u64,
    /// Segment number of the active file.
    segment: u64,
    opened: Instant,
    chain: ChainState,
    signer: Option<Signer>,
    checkpoint_every: u64,
    fsync: FsyncPolicy,
    rotate_bytes: Option<u64>,
    rotate_interval: Option<Duration>,
    fail_open: bool,
    buf: Vec<u8>,
    last_fsync: Instant,
    unsynced: bool,
    last_checkpoint: Instant,
    /// File name of the previous segment, while the active file still lacks its `segment_start`.
    pending_segment_start: Option<String>,
    failure: Option<Failure>,
    stats: WriterStats,
    clock: Clock,
}

/// The last line of an existing file, as far as resuming needs it.
#[derive(Deserialize)]
struct TailLine {
    seq: u64,
    event: String,
}

impl Writer {
    fn open(config: &AuditConfig) -> Result<Writer, AuditError> {
        let path = config.path.clone();
        let io = |source| AuditError::Io { path: path.clone(), source };
        if path.file_name().is_none() {
            return Err(AuditError::Path(path, "not a file name"));
        }
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let signer = match &config.signing_key {
            Some(key) => Some(Signer::from_pem_file(key)?),
            None => None,
        };
        let rotated = segment::rotated(&path).map_err(io)?;
        let active_len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let mut notes = Vec::new();
        let mut pending_segment_start = None;
        let tail = if active_len > 0 {
            let (tail, torn) = read_tail(&path, true)?;
            if torn > 0 {
                notes.push(format!("cut {torn} bytes of a torn last line"));
            }
            tail
        } else if let Some((_, last)) = rotated.last() {
            pending_segment_start = last.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            read_tail(last, false)?.0
        } else {
            None
        };
        let chain = match &tail {
            Some((line, hash)) => {
                if line.event != Event::LogStop.as_str() && line.event != Event::AuditCheckpoint.as_str() {
                    notes.push("the previous run ended without log_stop".to_owned());
                }
                ChainState { seq: line.seq, head: *hash, since_checkpoint: 0 }
            }
            None => ChainState::genesis(),
        };
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let good_len = file.metadata().map_err(io)?.len();
        let now = Instant::now();
        let mut writer = Writer {
            path: path.clone(),
            file: Some(file),
            good_len,
            segment: rotated.last().map_or(1, |(n, _)| n + 1),
            opened: now,
            chain,
            signer,
            checkpoint_every: config.checkpoint_every.max(1),
            fsync: config.fsync,
            rotate_bytes: config.rotate_bytes,
            rotate_interval: config.rotate_interval,
            fail_open: config.fail_open,
            buf: Vec::with_capacity(64 * 1024),
            last_fsync: now,
            unsynced: false,
            last_checkpoint: now,
            pending_segment_start,
            failure: None,
            stats: WriterStats::default(),
            clock: Clock::default(),
        };
        let mut start = Record::new(Event::LogStart);
        if !notes.is_empty() {
            start.reason = Some(notes.join("; ").into());
        }
        writer.write_start(start).map_err(io)?;
        Ok(writer)
    }

    /// Writes `log_start` and a checkpoint (and the pending `segment_start`).
    fn write_start(&mut self, start: Record) -> std::io::Result<()> {
        let mut chain = self.chain;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.push_segment_start(&mut buf, &mut chain);
        let fields = WriterFields {
            segment: Some(self.segment),
            fail_open: Some(self.fail_open),
            ..WriterFields::default()
        };
        self.push(&mut buf, &mut chain, &start, &fields);
        self.push_checkpoint(&mut buf, &mut chain);
        let result = self.commit(&buf, chain);
        self.buf = buf;
        if result.is_ok() {
            self.pending_segment_start = None;
            self.sync()?;
        }
        result
    }

    /// Serializes one line into `buf` and advances `chain`.
    fn push(&self, buf: &mut Vec<u8>, chain: &mut ChainState, rec: &Record, fields: &WriterFields<'_>) {
        let start = buf.len();
        let mut time = [0u8; TIME_LEN];
        let time = self.clock.now(&mut time);
        let prev = chain::to_hex(&chain.head);
        let line = LineOut { seq: chain.seq + 1, time, record: rec, writer: fields, prev: Plain(&prev) };
        json::write_line(buf, &line);
        chain.head = chain::seal(buf, start);
        chain.seq += 1;
        chain.since_checkpoint += 1;
    }

    fn push_checkpoint(&self, buf: &mut Vec<u8>, chain: &mut ChainState) {
        let seq = chain.seq + 1;
        let count = chain.seq;
        let sig = self.signer.as_ref().map(|s| s.sign(seq, &chain.head, count));
        let fields = WriterFields {
            count: Some(count),
            key: self.signer.as_ref().map(Signer::key_id),
            sig: sig.as_deref(),
            ..WriterFields::default()
        };
        self.push(buf, chain, &Record::new(Event::AuditCheckpoint), &fields);
        chain.since_checkpoint = 0;
    }

    fn push_segment_start(&self, buf: &mut Vec<u8>, chain: &mut ChainState) {
        if let Some(file) = &self.pending_segment_start {
            let fields =
                WriterFields { segment: Some(self.segment), file: Some(file), ..WriterFields::default() };
            self.push(buf, chain, &Record::new(Event::SegmentStart), &fields);
        }
    }

    /// Writes a batch. On failure the file is cut back and the outage recorded.
    fn write_job(&mut self, job: &Job) -> std::io::Result<()> {
        let mut chain = self.chain;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.push_segment_start(&mut buf, &mut chain);
        let recovering = self.failure.is_some();
        if let Some(failure) = &self.failure {
            let lost = failure.lost + job.dropped;
            let mode = if self.fail_open { "fail-open" } else { "fail-closed" };
            let rec =
                Record::new(Event::AuditGap).reason(format!("{mode}: log unwritable: {}", failure.reason));
            let fields =
                WriterFields { dropped: Some(lost), since: Some(&failure.since), ..WriterFields::default() };
            self.push(&mut buf, &mut chain, &rec, &fields);
        } else if job.dropped > 0 {
            let rec = Record::new(Event::AuditGap)
                .reason("fail-open: records dropped because the audit queue was over its limit");
            let fields = WriterFields { dropped: Some(job.dropped), ..WriterFields::default() };
            self.push(&mut buf, &mut chain, &rec, &fields);
        }
        if job.refused > 0 {
            let rec = Record::new(Event::Alert).reason(format!(
                "{} records refused: audit queue over its limit (failing closed)",
                job.refused
            ));
            self.push(&mut buf, &mut chain, &rec, &WriterFields::default());
        }
        let none = WriterFields::default();
        for rec in job.records {
            self.push(&mut buf, &mut chain, rec, &none);
            if chain.since_checkpoint >= self.checkpoint_every {
                self.push_checkpoint(&mut buf, &mut chain);
            }
        }
        if job.stop {
            self.push(&mut buf, &mut chain, &Record::new(Event::LogStop), &none);
        }
        // Heartbeat checkpoints are written also when nothing happened (so silence
        // differs from a cut tail), but never twice in a row within one batch.
        let just_sealed = chain.since_checkpoint == 0 && !buf.is_empty();
        if (job.checkpoint || job.stop || recovering) && !just_sealed {
            self.push_checkpoint(&mut buf, &mut chain);
        }
        let written = self.commit(&buf, chain);
        self.buf = buf;
        match written {
            Ok(()) => {
                self.pending_segment_start = None;
                self.failure = None;
                self.stats.records += job.records.len() as u64;
            }
            Err(err) => {
                self.fail(&err, job.records.len() as u64 + job.dropped);
                return Err(err);
            }
        }
        let sync_now = match self.fsync {
            FsyncPolicy::EveryBatch => true,
            FsyncPolicy::Interval(every) => self.last_fsync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if (sync_now || job.stop)
            && let Err(err) = self.sync()
        {
            self.fail(&err, 0);
            return Err(err);
        }
        if !job.stop
            && self.rotate_due(Instant::now())
            && let Err(err) = self.rotate()
        {
            tracing::warn!(path = %self.path.display(), %err, "audit rotation failed; will retry");
        }
        Ok(())
    }

    fn fail(&mut self, err: &std::io::Error, lost: u64) {
        self.stats.failed_batches += 1;
        let failure = self.failure.get_or_insert_with(|| Failure {
            since: now_rfc3339(),
            reason: err.to_string(),
            lost: 0,
        });
        failure.lost += lost;
    }

    /// One `write(2)` of `buf`; on success `chain` becomes the writer's chain.
    fn commit(&mut self, buf: &[u8], chain: ChainState) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = self.ensure_open()?;
        let result = file.write_all(buf);
        if let Err(err) = result {
            // Cut back a partial write so the file always ends in a whole line.
            if let Some(file) = &self.file
                && let Err(trunc) = file.set_len(self.good_len)
            {
                tracing::warn!(%trunc, "audit log could not be cut back after a failed write");
                self.file = None;
            }
            return Err(err);
        }
        self.good_len += buf.len() as u64;
        let lines = chain.seq - self.chain.seq;
        // Without a checkpoint in `buf` the count since the last one only grows.
        if chain.since_checkpoint != self.chain.since_checkpoint + lines {
            self.last_checkpoint = Instant::now();
        }
        self.chain = chain;
        self.unsynced = true;
        self.stats.writes += 1;
        self.stats.lines += lines;
        self.stats.bytes += buf.len() as u64;
        Ok(())
    }

    fn ensure_open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let len = file.metadata()?.len();
            if len > self.good_len {
                file.set_len(self.good_len)?;
            }
            self.good_len = self.good_len.min(len);
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => Ok(file),
            None => Err(std::io::Error::other("audit log not open")),
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        // Also after a failed fsync, so a failing disk is retried at the interval, not in a loop.
        self.last_fsync = Instant::now();
        if let Some(file) = &self.file {
            file.sync_data()?;
            self.stats.fsyncs += 1;
        }
        self.unsynced = false;
        Ok(())
    }

    /// When an interval fsync is due, if one is pending.
    fn fsync_due(&self) -> Option<Instant> {
        match self.fsync {
            FsyncPolicy::Interval(every) if self.unsynced => Some(self.last_fsync + every),
            _ => None,
        }
    }

    fn rotate_due(&self, now: Instant) -> bool {
        self.rotate_bytes.is_some_and(|max| self.good_len >= max)
            || self.rotate_interval.is_some_and(|age| now >= self.opened + age)
    }

    /// Seals the active file with a checkpoint, renames it to its numbered
    /// name and starts the next file with `segment_start`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut chain = self.chain;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if chain.since_checkpoint > 0 {
            self.push_checkpoint(&mut buf, &mut chain);
        }
        let sealed = self.commit(&buf, chain);
        self.buf = buf;
        sealed?;
        self.sync()?;
        let target = segment::rotated_name(&self.path, self.segment);
        if target.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists", target.display()),
            ));
        }
        std::fs::rename(&self.path, &target)?;
        self.file = None;
        self.good_len = 0;
        self.segment += 1;
        self.opened = Instant::now();
        self.stats.rotations += 1;
        self.pending_segment_start = target.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        let mut chain = self.chain;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.push_segment_start(&mut buf, &mut chain);
        let started = self.commit(&buf, chain);
        self.buf = buf;
        started?;
        self.pending_segment_start = None;
        self.sync()
    }

    fn publish_stats(&mut self, stats: &Stats) {
        let s = std::mem::take(&mut self.stats);
        stats.writes.fetch_add(s.writes, Ordering::Relaxed);
        stats.lines.fetch_add(s.lines, Ordering::Relaxed);
        stats.records.fetch_add(s.records, Ordering::Relaxed);
        stats.bytes.fetch_add(s.bytes, Ordering::Relaxed);
        stats.fsyncs.fetch_add(s.fsyncs, Ordering::Relaxed);
        stats.failed_batches.fetch_add(s.failed_batches, Ordering::Relaxed);
        stats.rotations.fetch_add(s.rotations, Ordering::Relaxed);
    }
}

/// Reads the last whole line of `path` and its hash. With `repair`, a torn
/// (newline-less) tail left by a crash mid-write is cut off; returns how many bytes were cut.
#[allow(clippy::type_complexity)]
fn read_tail(path: &Path, repair: bool) -> Result<(Option<(TailLine, [u8; 32])>, u64), AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let resume = |reason: String| AuditError::Resume { path: path.to_owned(), reason };
    let mut file = OpenOptions::new().read(true).write(repair).open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let from = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io)?;
    let mut torn = 0;
    if tail.last() != Some(&b'\n') {
        let keep = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if keep == 0 && from > 0 {
            return Err(resume("last line longer than 1 MiB".into()));
        }
        if !repair {
            return Err(resume("file does not end with a whole line".into()));
        }
        torn = (tail.len() - keep) as u64;
        tail.truncate(keep);
        file.set_len(from + keep as u64).map_err(io)?;
    }
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Ok((None, torn));
    };
    let line = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    let (_, hash) = chain::split(line).map_err(|e| resume(format!("last line: {e}")))?;
    if chain::hash_body(chain::split(line).map(|(b, _)| b).unwrap_or_default()) != hash {
        return Err(resume("last line does not match its hash".into()));
    }
    let parsed: TailLine = serde_json::from_slice(line).map_err(|e| resume(format!("last line: {e}")))?;
    Ok((Some((parsed, hash)), torn))
}

/// Now as RFC 3339 UTC with nanoseconds.
pub(crate) fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// A time as RFC 3339 UTC with nine fraction digits.
pub(crate) fn format_time(t: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default()
}

/// Length of `2026-11-22T22:21:56.675954000Z`.
const TIME_LEN: usize = 30;
/// Length of its date and time up to the fraction, `2026-11-22T22:21:56.`.
const PREFIX_LEN: usize = 20;

/// Formats line times, reusing the formatted date and time of the current
/// second: every line needs one, and full calendar formatting per line was a
/// visible share of the writer's time.
#[derive(Debug, Default)]
struct Clock {
    /// The second `prefix` was formatted for, if any.
    cached: std::cell::Cell<Option<(u64, [u8; PREFIX_LEN])>>,
}

impl Clock {
    /// Now as RFC 3339 UTC with nine fraction digits, written into `out`.
    fn now<'a>(&self, out: &'a mut [u8; TIME_LEN]) -> Plain<'a> {
        let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return Self::slow(out, time::OffsetDateTime::now_utc());
        };
        let (secs, nanos) = (since.as_secs(), since.subsec_nanos());
        let prefix = match self.cached.get() {
            Some((s, prefix)) if s == secs => prefix,
            _ => {
                let Some(t) = i64::try_from(since.as_nanos())
                    .ok()
                    .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).ok())
                else {
                    return Self::slow(out, time::OffsetDateTime::now_utc());
                };
                let full = format_time(t);
                // Years past 9999 do not fit the fixed width: format those in full every time.
                let Some(prefix) =
                    full.as_bytes().get(..PREFIX_LEN).and_then(|p| <[u8; PREFIX_LEN]>::try_from(p).ok())
                else {
                    return Self::slow(out, t);
                };
                if full.len() != TIME_LEN {
                    return Self::slow(out, t);
                }
                self.cached.set(Some((secs, prefix)));
                prefix
            }
        };
        out[..PREFIX_LEN].copy_from_slice(&prefix);
        let mut n = nanos;
        for digit in out[PREFIX_LEN..TIME_LEN - 1].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out[TIME_LEN - 1] = b'Z';
        Plain(out)
    }

    /// Full formatting, for times the cache does not cover.
    fn slow(out: &mut [u8; TIME_LEN], t: time::OffsetDateTime) -> Plain<'_> {
        let full = format_time(t);
        let n = full.len().min(TIME_LEN);
        out[..n].copy_from_slice(&full.as_bytes()[..n]);
        Plain(&out[..n])
    }
}

/// Closes the log if the writer thread ends by a panic, so no ticket waits
/// forever and new records are refused.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the audit writer failed; closing the audit log");
            self.0.available.store(false, Ordering::Release);
            self.0.close();
        }
    }
}

/// The writer thread's loop, until a stop is asked for or nothing but this
/// thread holds the log any more (the runtime and every handle were dropped
/// without a shutdown): then it drains and closes as on a stop.
fn run(mut writer: Writer, shared: &Arc<Shared>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(1));
    let mut backoff = MIN_BACKOFF;
    let mut retry_at: Option<Instant> = None;
    let mut batch = Vec::new();
    // Set after a batch is written: until then, records nobody waits for
    // are left for the next batch.
    let mut linger: Option<Instant> = None;
    loop {
        let mut deadline = writer.last_checkpoint + interval;
        if let Some(t) = writer.fsync_due() {
            deadline = deadline.min(t);
        }
        if let Some(age) = writer.rotate_interval {
            deadline = deadline.min(writer.opened + age);
        }
        if let Some(t) = retry_at {
            deadline = deadline.min(t);
        }
        if shared.wait(deadline, linger.take()) || Arc::strong_count(shared) == 1 {
            break;
        }
        let now = Instant::now();
        let range = shared.take(&mut batch);
        if retry_at.is_some_and(|t| now < t) {
            // Still backing off: these records cannot be written.
            if let Some(failure) = &mut writer.failure {
                failure.lost += batch.len() as u64;
            }
            shared.settle(range, shared.fail_open);
            continue;
        }
        let job = Job {
            records: &batch,
            checkpoint: now >= writer.last_checkpoint + interval,
            dropped: shared.dropped.swap(0, Ordering::Relaxed),
            refused: shared.refused.swap(0, Ordering::Relaxed),
            stop: false,
        };
        let fsync_due = writer.fsync_due().is_some_and(|t| now >= t);
        let rotate_due = writer.rotate_due(now);
        if job.is_empty() && writer.failure.is_none() && !rotate_due {
            if fsync_due && let Err(err) = writer.sync() {
                tracing::warn!(%err, "audit fsync failed");
            }
            continue;
        }
        let recovering = writer.failure.is_some();
        let result = writer.write_job(&job);
        writer.publish_stats(&shared.stats);
        match result {
            Ok(()) => {
                shared.settle(range, true);
                if recovering {
                    tracing::warn!(path = %writer.path.display(), "audit log writable again");
                }
                shared.available.store(true, Ordering::Release);
                retry_at = None;
                backoff = MIN_BACKOFF;
                linger = Some(Instant::now() + LINGER);
            }
            Err(err) => {
                shared.refused.fetch_add(job.refused, Ordering::Relaxed);
                shared.available.store(false, Ordering::Release);
                shared.settle(range, shared.fail_open);
                tracing::error!(path = %writer.path.display(), %err, fail_open = shared.fail_open, "audit log write failed");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Shutdown: drain, log_stop, final checkpoint.
    let range = shared.take(&mut batch);
    let job = Job {
        records: &batch,
        checkpoint: true,
        dropped: shared.dropped.swap(0, Ordering::Relaxed),
        refused: shared.refused.swap(0, Ordering::Relaxed),
        stop: true,
    };
    let result = writer.write_job(&job);
    writer.publish_stats(&shared.stats);
    if let Err(err) = &result {
        tracing::error!(%err, "audit log could not be closed cleanly");
    }
    shared.settle(range, result.is_ok() || shared.fail_open);
    shared.close();
    // Records that raced the close cannot be written any more.
    let range = shared.take(&mut batch);
    shared.settle(range, false);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;
    use crate::audit::chain::GENESIS;

    #[test]
    fn times_have_nanoseconds_and_utc() {
        let t = time::macros::datetime!(2026-11-22 10:00:01.5 UTC);
        assert_eq!(format_time(t), "2026-11-22T10:00:01.500000000Z");
    }

    #[test]
    fn cached_clock_formats_as_the_full_formatter_does() {
        let clock = Clock::default();
        for _ in 0..3 {
            let mut buf = [0u8; TIME_LEN];
            let before = time::OffsetDateTime::now_utc();
            let ours = String::from_utf8(clock.now(&mut buf).0.to_vec()).unwrap();
            let after = time::OffsetDateTime::now_utc();
            assert_eq!(ours.len(), TIME_LEN, "{ours}");
            // Same text as the full formatter, and between two readings of the clock.
            let parsed =
                time::OffsetDateTime::parse(&ours, &time::format_description::well_known::Rfc3339).unwrap();
            assert_eq!(format_time(parsed), ours);
            assert!(before <= parsed && parsed <= after, "{before} {ours} {after}");
        }
        assert!(clock.cached.get().is_some());
    }

    #[tokio::test]
    async fn disabled_handle_accepts_and_records_nothing() {
        let handle = AuditHandle::disabled();
        let ticket = handle.record(Record::new(Event::Send)).unwrap();
        assert!(ticket.await.is_ok());
        assert!(handle.is_available());
        assert_eq!(handle.stats(), WriterStats::default());
    }

    #[tokio::test]
    async fn reserved_events_are_refused() {
        let handle = AuditHandle::disabled();
        assert!(matches!(
            handle.record(Record::new(Event::AuditCheckpoint)),
            Err(AuditError::Reserved(Event::AuditCheckpoint))
        ));
    }

    #[tokio::test]
    async fn resumes_the_chain_after_a_restart_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for _ in 0..2 {
            let (trigger, shutdown) = crate::shutdown::channel();
            let (handle, task) = start(AuditConfig::new(&path), shutdown).unwrap();
            handle.record(Record::new(Event::Send).name("a.b")).unwrap().await.unwrap();
            trigger.trigger();
            task.await.unwrap();
            // A crash mid-write leaves half a line.
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(b"{\"seq\":99,\"ti").unwrap();
        }
        let (_, shutdown) = crate::shutdown::channel();
        let (_handle, _task) = start(AuditConfig::new(&path), shutdown).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.ends_with("\"}")), "{text}");
        let mut prev = hex::encode(GENESIS);
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["seq"].as_u64().unwrap(), i as u64 + 1);
            assert_eq!(v["prev"].as_str().unwrap(), prev);
            prev = v["hash"].as_str().unwrap().to_owned();
        }
        assert!(text.contains("torn last line"));
    }

    /// A writer on a fresh log in `dir`: the log's path, the shutdown
    /// trigger, the handle and the writer's task.
    fn started(
        dir: &tempfile::TempDir,
    ) -> (PathBuf, crate::shutdown::ShutdownTrigger, AuditHandle, tokio::task::JoinHandle<()>) {
        let path = dir.path().join("audit.jsonl");
        let (trigger, shutdown) = crate::shutdown::channel();
        let (handle, task) = start(AuditConfig::new(&path), shutdown).unwrap();
        (path, trigger, handle, task)
    }

    /// Names of the message lines in the log, in order.
    fn names_in(path: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().map(str::to_owned)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_noted_record_is_written_without_anyone_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _trigger, handle, _task) = started(&dir);
        // After a batch (the writer lingers) and with the writer idle.
        handle.record(Record::new(Event::Send).name("first")).unwrap().await.unwrap();
        handle.note(Record::new(Event::Ack).name("noted")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.stats().records < 2 {
            assert!(Instant::now() < deadline, "the noted record was never written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(names_in(&path), ["first", "noted"]);
        tokio::time::sleep(LINGER * 5).await;
        handle.note(Record::new(Event::Ack).name("again")).unwrap();
        while handle.stats().records < 3 {
            assert!(Instant::now() < deadline, "a record noted to an idle writer was never written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(names_in(&path), ["first", "noted", "again"]);
    }

    #[test]
    fn only_a_record_someone_waits_for_wakes_a_lingering_writer() {
        let handle = AuditHandle { shared: Some(Arc::new(Shared::new(false, 100))) };
        let queue = || lock(&handle.shared.as_ref().unwrap().queue);
        let sleep = |lingering: bool| {
            let mut q = queue();
            (q.idle, q.lingering, q.woken) = (true, lingering, false);
        };
        // Lingering after a batch: a note is queued and left for the next batch.
        sleep(true);
        handle.note(Record::new(Event::Ack)).unwrap();
        let q = queue();
        assert_eq!((q.records.len(), q.idle, q.woken), (1, true, false), "a note woke the writer");
        drop(q);
        // A record whose ticket someone awaits wakes it.
        let _ticket = handle.record(Record::new(Event::Send)).unwrap();
        let q = queue();
        assert_eq!((q.records.len(), q.idle, q.woken), (2, false, true));
        drop(q);
        // Idle without a deadline of its own: a note wakes it too.
        sleep(false);
        handle.note(Record::new(Event::Ack)).unwrap();
        let q = queue();
        assert_eq!(
            (q.records.len(), q.idle, q.woken),
            (3, false, true),
            "a note was left with an idle writer"
        );
    }

    #[tokio::test]
    async fn noted_records_go_out_with_the_next_batch_in_the_order_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (path, trigger, handle, task) = started(&dir);
        handle.record(Record::new(Event::Send).name("s0")).unwrap().await.unwrap();
        let mut expected = vec!["s0".to_owned()];
        for i in 0..20 {
            let name = format!("n{i}");
            handle.note(Record::new(Event::Deliver).name(name.as_str())).unwrap();
            expected.push(name);
        }
        handle.record(Record::new(Event::Send).name("s1")).unwrap().await.unwrap();
        expected.push("s1".to_owned());
        trigger.trigger();
        task.await.unwrap();
        assert_eq!(names_in(&path), expected);
    }
}
