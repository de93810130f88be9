//! Replay state of a receiver: a sliding window of processed sequence
//! numbers per (sender, instance, epoch), and an inbox of processed message
//! ids. Both record a message only when it is marked *processed* (handler
//! succeeded), so a redelivery of an unacknowledged message still passes.

use std::collections::{HashSet, VecDeque};

use crate::idhash::IdHash;

/// Bits in the window: sequence numbers this far below the highest
/// processed one can still be told apart; older ones are refused.
pub const WINDOW_BITS: u64 = 4096;
/// The ring's size in bits, as an index.
const RING: usize = WINDOW_BITS as usize;
const WORDS: usize = RING / 64;

/// Highest processed sequence number plus a bitmap of the ones below it.
///
/// The bitmap is a ring (RFC 6479): sequence number `s` lives at bit
/// `s % WINDOW_BITS`, so moving the window forward clears the bits of the
/// numbers it takes in and shifts nothing; the usual step of one costs one
/// bit, not a pass over all 64 words.
#[derive(Clone, Debug)]
pub(crate) struct ReplayWindow {
    /// One more than the highest processed seq (0: nothing processed yet).
    /// Wider than a seq, so that `u64::MAX` processed is told apart from
    /// nothing above it.
    top: u128,
    /// Bit `s % WINDOW_BITS` = `s` processed, for `s` in `[top - WINDOW_BITS, top)`;
    /// bits of numbers at or above `top` are clear.
    bits: [u64; WORDS],
}

/// What the window says about a sequence number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not processed; may be processed now.
    New,
    /// Already processed.
    Processed,
    /// Below the window: cannot tell, refused.
    TooOld,
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        Self { top: 0, bits: [0; WORDS] }
    }

    pub(crate) fn check(&self, seq: u64) -> Seen {
        let seq = u128::from(seq);
        if seq >= self.top {
            return Seen::New;
        }
        if self.top - seq > u128::from(WINDOW_BITS) {
            return Seen::TooOld;
        }
        if self.bit(seq) { Seen::Processed } else { Seen::New }
    }

    pub(crate) fn mark(&mut self, seq: u64) {
        let seq = u128::from(seq);
        if seq >= self.top {
            self.advance(seq + 1);
        } else if self.top - seq > u128::from(WINDOW_BITS) {
            return;
        }
        let at = Self::position(seq);
        self.bits[at / 64] |= 1 << (at % 64);
    }

    fn bit(&self, seq: u128) -> bool {
        let at = Self::position(seq);
        self.bits[at / 64] >> (at % 64) & 1 == 1
    }

    fn position(seq: u128) -> usize {
        // Below RING: the cast cannot truncate.
        (seq % RING as u128) as usize
    }

    /// Moves `top` up to `new_top`, clearing the bits of the numbers
    /// `[top, new_top)` now inside the window (all of them at most once).
    fn advance(&mut self, new_top: u128) {
        let step = new_top - self.top;
        if step >= u128::from(WINDOW_BITS) {
            self.bits = [0; WORDS];
        } else {
            // Below WINDOW_BITS: the cast cannot truncate.
            let mut left = step as usize;
            let mut at = Self::position(self.top);
            while left > 0 {
                let bit = at % 64;
                let n = left.min(64 - bit);
                let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
                self.bits[at / 64] &= !mask;
                at = (at + n) % RING;
                left -= n;
            }
        }
        self.top = new_top;
    }
}

/// Bounded set of processed message ids (oldest forgotten first).
#[derive(Debug)]
pub(crate) struct Inbox {
    ids: HashSet<[u8; 16], IdHash>,
    order: VecDeque<[u8; 16]>,
    capacity: usize,
}

impl Inbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { ids: HashSet::with_hasher(IdHash::new()), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub(crate) fn contains(&self, id: &[u8; 16]) -> bool {
        self.ids.contains(id)
    }

    pub(crate) fn insert(&mut self, id: [u8; 16]) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn window_marks_only_processed() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(0), Seen::New);
        w.mark(0);
        assert_eq!(w.check(0), Seen::Processed);
        assert_eq!(w.check(2), Seen::New);
        w.mark(5);
        assert_eq!(w.check(0), Seen::Processed);
        for s in 1..5 {
            assert_eq!(w.check(s), Seen::New, "{s}");
        }
        assert_eq!(w.check(5), Seen::Processed);
        w.mark(3);
        assert_eq!(w.check(3), Seen::Processed);
        w.mark(70);
        assert_eq!(w.check(3), Seen::Processed);
        assert_eq!(w.check(5), Seen::Processed);
        assert_eq!(w.check(4), Seen::New);
        w.mark(5000);
        assert_eq!(w.check(70), Seen::TooOld);
        assert_eq!(w.check(5000 - 4095), Seen::New);
        assert_eq!(w.check(5000), Seen::Processed);
    }

    #[test]
    fn window_matches_a_set_model() {
        let mut w = ReplayWindow::new();
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let top = model.iter().next_back().copied().unwrap_or(0);
            let seq = (top + (x >> 33) % 300).saturating_sub(150);
            match w.check(seq) {
                Seen::New => assert!(!model.contains(&seq)),
                Seen::Processed => assert!(model.contains(&seq)),
                Seen::TooOld => assert!(seq + WINDOW_BITS <= top),
            }
            if (x >> 20).is_multiple_of(2) && w.check(seq) == Seen::New {
                w.mark(seq);
                model.insert(seq);
            }
        }
    }

    #[test]
    fn window_matches_a_set_model_across_jumps_of_every_size() {
        // Jumps of one, of a few words, of nearly and more than the whole
        // window, from every position in the ring.
        for spread in [3u64, 130, 4_000, 4_200, 9_000] {
            let mut w = ReplayWindow::new();
            let mut model = std::collections::BTreeSet::new();
            let mut x: u64 = spread;
            for _ in 0..5_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let top = model.iter().next_back().map_or(0, |t| t + 1);
                let seq = (top + (x >> 33) % spread).saturating_sub(spread / 2);
                let seen = w.check(seq);
                match seen {
                    Seen::New => assert!(!model.contains(&seq), "{spread}: {seq} processed"),
                    Seen::Processed => assert!(model.contains(&seq), "{spread}: {seq} not processed"),
                    Seen::TooOld => {
                        assert!(seq + WINDOW_BITS < top, "{spread}: {seq} in the window below {top}")
                    }
                }
                if seen == Seen::New && !(x >> 20).is_multiple_of(3) {
                    w.mark(seq);
                    model.insert(seq);
                }
            }
        }
    }

    #[test]
    fn window_tells_the_highest_seq_apart_from_nothing_above_it() {
        let mut w = ReplayWindow::new();
        w.mark(u64::MAX);
        assert_eq!(w.check(u64::MAX), Seen::Processed);
        assert_eq!(w.check(u64::MAX - 1), Seen::New);
        assert_eq!(w.check(u64::MAX - WINDOW_BITS), Seen::TooOld);
        assert_eq!(w.check(0), Seen::TooOld);
    }

    #[test]
    fn inbox_is_bounded() {
        let mut inbox = Inbox::new(2);
        inbox.insert([1; 16]);
        inbox.insert([2; 16]);
        inbox.insert([3; 16]);
        assert!(!inbox.contains(&[1; 16]));
        assert!(inbox.contains(&[2; 16]) && inbox.contains(&[3; 16]));
    }
}
