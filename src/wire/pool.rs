//! Large buffers kept for reuse: the blocks large frames are read into and
//! the buffers large payloads are sealed and opened in.
//!
//! A 64 KiB message passes through four fresh 64 KiB buffers (the sender's
//! envelope, the router's frame block, the receiver's frame block and its
//! opened plaintext). Returned to the allocator, such buffers went back to
//! the kernel between messages and came back as fresh pages, zeroed on
//! first touch, often as whole 2 MiB huge pages: 15,000–59,000 page faults
//! for 10,000 W5 messages (docs/PERFORMANCE-HISTORY.md, ninth round). The pool keeps a
//! bounded number of them instead. A buffer taken from it is handed out as
//! a [`Bytes`] whose owner puts the buffer back when the last reference is
//! dropped, wherever that happens.
//!
//! The pool keeps what recent traffic needed, not what a burst once did:
//! [`tidy`], which the router's core calls every half second and a relay
//! every half keepalive (7.5 s by default), releases the buffers that sat
//! unused since the previous trim (at most one trim a second), so a busy
//! process and an idle one both let them go. Taking and giving buffers
//! read no clock and release nothing.
//!
//! It must never hand out bytes the caller did not write: a reused buffer
//! is given out empty (length 0), so its old contents are only ever
//! overwritten, never read. It must never grow without bound: at most
//! [`MAX_POOLED_BYTES`] are kept; anything beyond goes back to the
//! allocator.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Buffers from this capacity on are pooled; smaller ones are cheap to
/// allocate and come from the allocator's own caches.
pub const POOLED_MIN: usize = 16 * 1024;
/// Buffers above this capacity are not pooled (one would pin a lot of
/// memory for a rare message).
pub const POOLED_MAX: usize = 1024 * 1024 + 64 * 1024;
/// Most bytes the pool keeps: about 1,900 buffers for 64 KiB messages. A
/// sender with 1,024 such messages in flight frees and takes again about
/// 1,000 envelopes in a burst; with 64 MiB the W5 benchmark still took
/// 12,000-15,000 page faults per 10,000 messages, with 128 MiB 2,000-3,000.
pub const MAX_POOLED_BYTES: usize = 128 * 1024 * 1024;
/// The shortest time between two trims.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// Capacities are rounded up to this, so buffers of nearly the same size
/// (an envelope, the frame that carries it) fit one another.
const GRANULE: usize = 4096;

/// The kept buffers. One per process ([`POOL`]); tests make their own.
struct Pool {
    /// Oldest first.
    free: Vec<Vec<u8>>,
    bytes: usize,
    /// The fewest buffers `free` held since the last trim: that many were
    /// not needed since then.
    low: usize,
    trimmed: Option<Instant>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

impl Pool {
    const fn new() -> Self {
        Pool { free: Vec::new(), bytes: 0, low: 0, trimmed: None }
    }

    /// A kept buffer with room for `capacity` bytes and at most a quarter
    /// more; the newest that fits (with messages of one size, the last one).
    fn take(&mut self, capacity: usize) -> Option<Vec<u8>> {
        let most = capacity + capacity / 4;
        let at = self.free.iter().rposition(|b| (capacity..=most).contains(&b.capacity()))?;
        let buf = self.free.remove(at);
        self.bytes -= buf.capacity();
        self.low = self.low.min(self.free.len());
        Some(buf)
    }

    /// Keeps `buf` if that stays within [`MAX_POOLED_BYTES`]; else hands it back.
    fn put(&mut self, buf: Vec<u8>) -> Option<Vec<u8>> {
        if self.bytes + buf.capacity() > MAX_POOLED_BYTES {
            return Some(buf);
        }
        self.bytes += buf.capacity();
        self.free.push(buf);
        None
    }

    /// Once per [`TRIM_EVERY`]: takes out the buffers that were not needed
    /// since the last trim (the oldest), for the caller to drop outside the lock.
    fn trim(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let Some(last) = self.trimmed else {
            self.trimmed = Some(now);
            self.low = self.free.len();
            return Vec::new();
        };
        if now.duration_since(last) < TRIM_EVERY {
            return Vec::new();
        }
        self.trimmed = Some(now);
        let unused = self.low.min(self.free.len());
        let kept = self.free.split_off(unused);
        let released = std::mem::replace(&mut self.free, kept);
        self.bytes -= released.iter().map(Vec::capacity).sum::<usize>();
        self.low = self.free.len();
        released
    }
}

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // Every method leaves the pool consistent before anything can panic.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pooled(capacity: usize) -> bool {
    (POOLED_MIN..=POOLED_MAX).contains(&capacity)
}

/// An empty buffer with room for at least `capacity` bytes: a kept one if
/// one fits (not more than a quarter larger), else a new one.
pub fn take(capacity: usize) -> Vec<u8> {
    if !pooled(capacity) {
        return Vec::with_capacity(capacity);
    }
    let found = pool().take(capacity);
    found.unwrap_or_else(|| Vec::with_capacity(capacity.div_ceil(GRANULE) * GRANULE))
}

/// `buf` as [`Bytes`], without a copy. A poolable buffer goes back to the
/// pool once the last `Bytes` that shares it is dropped.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    if pooled(buf.capacity()) { Bytes::from_owner(Kept(buf)) } else { Bytes::from(buf) }
}

/// Gives a buffer back for reuse (or to the allocator, if the pool is full
/// or the buffer is not of a pooled size).
fn give(mut buf: Vec<u8>) {
    if !pooled(buf.capacity()) {
        return;
    }
    buf.clear();
    // A refused buffer is freed after the lock is released.
    let refused = pool().put(buf);
    drop(refused);
}

/// Releases what the pool did not need since the last trim, if a trim is
/// due. For a process's periodic tasks: nothing else trims the pool.
pub fn tidy() {
    let released = pool().trim(Instant::now());
    drop(released);
}

/// Bytes of free buffers the pool holds now (a metric).
pub fn pooled_bytes() -> usize {
    pool().bytes
}

/// The owner behind a pooled [`Bytes`].
struct Kept(Vec<u8>);

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn buf(capacity: usize) -> Vec<u8> {
        Vec::with_capacity(capacity)
    }

    #[test]
    fn a_freed_buffer_comes_back_empty_once_its_last_slice_is_dropped() {
        // The process's pool: a capacity no other test uses.
        let mut first = take(300_001);
        assert!(first.capacity() >= 300_001 && first.capacity().is_multiple_of(GRANULE));
        first.extend_from_slice(&[7u8; 300_001]);
        let ptr = first.as_ptr();
        let bytes = freeze(first);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&part[..], &[7u8; 10], "a slice still shares the buffer");
        drop(part);
        let again = take(300_001);
        assert_eq!(again.as_ptr(), ptr, "the buffer came back");
        assert!(again.is_empty(), "a reused buffer is handed out empty");
    }

    #[test]
    fn small_and_huge_buffers_are_not_pooled() {
        for capacity in [POOLED_MIN - 1, POOLED_MAX + 1] {
            let b = buf(capacity);
            let exact = b.capacity();
            give(b);
            assert!(!pool().free.iter().any(|b| b.capacity() == exact), "{exact} bytes were kept");
        }
    }

    #[test]
    fn a_buffer_fits_from_its_size_to_a_quarter_more() {
        let mut pool = Pool::new();
        assert!(pool.put(buf(100_000)).is_none());
        assert!(pool.take(79_999).is_none(), "more than a quarter larger");
        assert!(pool.take(100_001).is_none(), "too small");
        assert_eq!(pool.take(80_000).map(|b| b.capacity()), Some(100_000));
        assert_eq!((pool.bytes, pool.free.len()), (0, 0));
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let mut pool = Pool::new();
        let each = 1 << 20;
        for _ in 0..MAX_POOLED_BYTES / each {
            assert!(pool.put(buf(each)).is_none());
        }
        assert!(pool.put(buf(each)).is_some(), "one more is handed back");
        assert_eq!(pool.bytes, MAX_POOLED_BYTES);
    }

    #[test]
    fn buffers_unused_for_a_second_are_released_and_needed_ones_kept() {
        let mut pool = Pool::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(pool.put(buf(64 * 1024)).is_none());
        }
        assert!(pool.trim(t0).is_empty(), "the first trim only starts the clock");
        // During the next second at most 4 of the 10 are in use at once.
        let taken: Vec<_> = (0..4).map(|_| pool.take(64 * 1024).unwrap()).collect();
        for b in taken {
            assert!(pool.put(b).is_none());
        }
        assert!(pool.trim(t0 + TRIM_EVERY / 2).is_empty(), "not due yet");
        let released = pool.trim(t0 + TRIM_EVERY);
        assert_eq!((released.len(), pool.free.len()), (6, 4), "the 6 never needed go");
        assert_eq!(pool.bytes, 4 * 64 * 1024);
        // Idle for a second: the rest go too.
        assert_eq!(pool.trim(t0 + 2 * TRIM_EVERY).len(), 4);
        assert_eq!((pool.bytes, pool.free.len()), (0, 0));
    }
}
