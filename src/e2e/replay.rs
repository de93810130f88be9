//! Replay state of a receiver: a sliding window of processed sequence
//! numbers per (sender, instance, epoch), and an inbox of processed message
//! ids. Both record a message only when it is marked *processed* (handler
//! succeeded), so a redelivery of an unacknowledged message still passes.

use std::collections::{HashSet, VecDeque};

use super::idhash::IdHash;

/// Bits in the window: sequence numbers this far below the highest
/// processed one can still be told apart; older ones are refused.
pub const WINDOW_BITS: u64 = 4096;
const WORDS: usize = (WINDOW_BITS / 64) as usize;

/// Highest processed sequence number plus a bitmap of the ones below it.
#[derive(Clone, Debug)]
pub(crate) struct ReplayWindow {
    /// One more than the highest processed seq (0: nothing processed yet).
    top: u64,
    /// Bit `i` (from the least significant of word 0) = `top - 1 - i` processed.
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
        if seq >= self.top {
            return Seen::New;
        }
        let back = self.top - 1 - seq;
        if back >= WINDOW_BITS {
            return Seen::TooOld;
        }
        if self.bit(back) { Seen::Processed } else { Seen::New }
    }

    pub(crate) fn mark(&mut self, seq: u64) {
        if seq >= self.top {
            let shift = seq - self.top + 1;
            self.shift(shift);
            self.top = seq.saturating_add(1);
            self.set(0);
        } else {
            let back = self.top - 1 - seq;
            if back < WINDOW_BITS {
                self.set(back);
            }
        }
    }

    fn bit(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] >> (back % 64) & 1 == 1
    }

    fn set(&mut self, back: u64) {
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves every bit `n` places further back (older).
    fn shift(&mut self, n: u64) {
        if n >= WINDOW_BITS {
            self.bits = [0; WORDS];
            return;
        }
        let words = (n / 64) as usize;
        let bits = (n % 64) as u32;
        for i in (0..WORDS).rev() {
            let hi = if i >= words { self.bits[i - words] } else { 0 };
            let lo = if bits > 0 && i > words { self.bits[i - words - 1] >> (64 - bits) } else { 0 };
            self.bits[i] = if bits > 0 { (hi << bits) | lo } else { hi };
        }
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
    fn inbox_is_bounded() {
        let mut inbox = Inbox::new(2);
        inbox.insert([1; 16]);
        inbox.insert([2; 16]);
        inbox.insert([3; 16]);
        assert!(!inbox.contains(&[1; 16]));
        assert!(inbox.contains(&[2; 16]) && inbox.contains(&[3; 16]));
    }
}
