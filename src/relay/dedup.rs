//! The duplicate filter: message ids handled recently, so a redelivered or
//! retried message is acknowledged without running its handler again.
//!
//! Bounded twice: by count (oldest forgotten first) and by age. An id counts
//! as handled only once its handler succeeded; an id whose handler is still
//! running is "in progress", and a copy arriving meanwhile is dropped too (if
//! the first run fails, the router redelivers it). This module never touches
//! the network; the connection task owns it, so it needs no lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// A message id as it travels (16 bytes, a UUID).
pub(crate) type MessageId = [u8; 16];

/// What the filter says about a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// First time seen: handle it.
    New,
    /// Handled or being handled already: acknowledge and drop it.
    Duplicate,
}

/// Recently handled message ids.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    capacity: usize,
    max_age: Duration,
    handled: HashMap<MessageId, Instant, IdHash>,
    order: VecDeque<(MessageId, Instant)>,
    in_progress: HashSet<MessageId, IdHash>,
}

/// Hashes message ids for the window. Every delivery is looked up and
/// inserted, and SipHash was a visible share of the relay's time; an id is
/// 16 bytes, so two keyed multiply-folds do. The keys are random per window:
/// ids are chosen by senders, and fixed keys would let one craft collisions.
#[derive(Clone, Debug)]
struct IdHash {
    keys: [u64; 3],
}

impl IdHash {
    fn new() -> Self {
        IdHash { keys: rand::random() }
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.keys[0], keys: [self.keys[1], self.keys[2]], n: 0 }
    }
}

/// The state of one [`IdHash`] hashing.
#[derive(Debug)]
struct IdHasher {
    state: u64,
    keys: [u64; 2],
    n: usize,
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let key = self.keys[self.n % 2] | 1;
        let product = u128::from(self.state ^ word) * u128::from(key);
        self.state = (product as u64) ^ ((product >> 64) as u64);
        self.n += 1;
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

impl DedupWindow {
    /// A window of at most `capacity` ids, each remembered for `max_age`.
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            max_age,
            handled: HashMap::with_hasher(IdHash::new()),
            order: VecDeque::new(),
            in_progress: HashSet::with_hasher(IdHash::new()),
        }
    }

    /// Checks a delivery; a new id is marked in progress.
    pub(crate) fn begin(&mut self, id: MessageId) -> Verdict {
        self.expire(Instant::now());
        if self.handled.contains_key(&id) || !self.in_progress.insert(id) {
            return Verdict::Duplicate;
        }
        Verdict::New
    }

    /// The handler for `id` finished: remembered as handled on success,
    /// forgotten on failure (so the redelivery runs again).
    pub(crate) fn finish(&mut self, id: MessageId, success: bool) {
        self.in_progress.remove(&id);
        if success {
            self.remember(id);
        }
    }

    /// Marks an id handled at once (replies: consumed on receipt).
    pub(crate) fn remember(&mut self, id: MessageId) {
        let now = Instant::now();
        if self.handled.insert(id, now).is_none() {
            self.order.push_back((id, now));
        }
        while self.handled.len() > self.capacity {
            self.pop_oldest();
        }
    }

    /// Ids in progress (handlers running).
    pub(crate) fn in_progress(&self) -> usize {
        self.in_progress.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.duration_since(*at) < self.max_age {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((id, at)) = self.order.pop_front() {
            // Only forget the id if this queue entry is the one that set it.
            if self.handled.get(&id) == Some(&at) {
                self.handled.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_hash_depends_on_every_byte_and_on_the_key() {
        let build = IdHash::new();
        let base = build.hash_one(id(7));
        for i in 0..16 {
            let mut other = id(7);
            other[i] ^= 1;
            assert_ne!(build.hash_one(other), base, "byte {i}");
        }
        assert_eq!(build.hash_one(id(7)), base);
        assert_ne!(IdHash::new().hash_one(id(7)), base);
    }

    fn id(n: u8) -> MessageId {
        [n; 16]
    }

    #[test]
    fn a_handled_id_is_a_duplicate_and_a_failed_one_is_not() {
        let mut w = DedupWindow::new(10, Duration::from_secs(60));
        assert_eq!(w.begin(id(1)), Verdict::New);
        assert_eq!(w.begin(id(1)), Verdict::Duplicate, "in progress");
        w.finish(id(1), true);
        assert_eq!(w.begin(id(1)), Verdict::Duplicate, "handled");

        assert_eq!(w.begin(id(2)), Verdict::New);
        w.finish(id(2), false);
        assert_eq!(w.begin(id(2)), Verdict::New, "a failed handler must run again on redelivery");
        assert_eq!(w.in_progress(), 1);
    }

    #[test]
    fn the_window_is_bounded_by_count() {
        let mut w = DedupWindow::new(3, Duration::from_secs(60));
        for n in 0..5 {
            w.remember(id(n));
        }
        assert_eq!(w.handled.len(), 3);
        assert_eq!(w.begin(id(0)), Verdict::New, "oldest forgotten");
        assert_eq!(w.begin(id(4)), Verdict::Duplicate, "newest kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_bounded_by_age() {
        let mut w = DedupWindow::new(100, Duration::from_secs(10));
        w.remember(id(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        w.remember(id(2));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(w.begin(id(1)), Verdict::New, "expired after 10s");
        assert_eq!(w.begin(id(2)), Verdict::Duplicate, "still inside the window");
    }
}
