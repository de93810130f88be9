//! The sends a connection has written and the router has not answered
//! yet, by correlation number.
//!
//! A connection numbers its sends upwards and the router answers them in
//! the order they came, so the oldest is almost always the one answered:
//! a queue in send order finds it at the front, where a map moved its
//! entries (each holding the whole `Send` frame) about on every insert and
//! removal. An answer out of order is still found (binary search), and
//! after a reconnect the unanswered sends are written again in their order.
//! This module never touches the network; the connection task owns it.

use std::collections::VecDeque;

/// Unanswered sends in send order, each under its correlation number.
#[derive(Debug)]
pub(crate) struct Inflight<T> {
    queue: VecDeque<(u64, T)>,
}

impl<T> Default for Inflight<T> {
    fn default() -> Self {
        Inflight { queue: VecDeque::new() }
    }
}

impl<T> Inflight<T> {
    /// Adds the send numbered `corr`. Numbers come in rising order; one that
    /// does not is put in its place all the same.
    pub(crate) fn insert(&mut self, corr: u64, send: T) {
        match self.queue.back() {
            Some(&(last, _)) if last >= corr => {
                let at = self.queue.partition_point(|&(c, _)| c < corr);
                if self.queue.get(at).is_some_and(|&(c, _)| c == corr) {
                    self.queue[at].1 = send;
                } else {
                    self.queue.insert(at, (corr, send));
                }
            }
            _ => self.queue.push_back((corr, send)),
        }
    }

    /// Takes out the send numbered `corr`, if it is waiting.
    pub(crate) fn remove(&mut self, corr: u64) -> Option<T> {
        if self.queue.front().is_some_and(|&(c, _)| c == corr) {
            return self.queue.pop_front().map(|(_, send)| send);
        }
        let at = self.queue.binary_search_by_key(&corr, |&(c, _)| c).ok()?;
        self.queue.remove(at).map(|(_, send)| send)
    }

    /// Keeps only the sends for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.queue.retain(|(_, send)| keep(send));
    }

    /// The waiting sends, oldest first.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.queue.iter().map(|(_, send)| send)
    }

    /// Takes out every waiting send, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + use<T> {
        std::mem::take(&mut self.queue).into_iter().map(|(_, send)| send)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn answers_in_order_come_off_the_front() {
        let mut f = Inflight::default();
        for corr in 1..=4 {
            f.insert(corr, corr * 10);
        }
        assert_eq!(f.remove(1), Some(10));
        assert_eq!(f.remove(2), Some(20));
        assert_eq!(f.values().copied().collect::<Vec<_>>(), [30, 40]);
    }

    #[test]
    fn answers_out_of_order_and_unknown_numbers() {
        let mut f = Inflight::default();
        for corr in [1, 2, 5, 9] {
            f.insert(corr, corr);
        }
        assert_eq!(f.remove(5), Some(5));
        assert_eq!(f.remove(5), None, "answered once");
        assert_eq!(f.remove(3), None, "never sent");
        assert_eq!(f.remove(10), None);
        f.retain(|&v| v != 2);
        assert_eq!(f.drain().collect::<Vec<_>>(), [1, 9]);
        assert_eq!(f.remove(1), None, "drained");
    }

    /// Any mix of inserts (rising numbers mostly, some not) and removals
    /// behaves as the ordered map it replaced.
    #[test]
    fn behaves_as_an_ordered_map() {
        let mut f = Inflight::default();
        let mut reference = BTreeMap::new();
        // A small deterministic generator: the test needs variety, not randomness.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = 0u64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 8 {
                0..=3 => {
                    next += 1 + x % 3;
                    let corr = if x.is_multiple_of(97) { next.saturating_sub(x % 16) } else { next };
                    f.insert(corr, step);
                    reference.insert(corr, step);
                }
                4..=5 => {
                    let oldest = reference.keys().next().copied().unwrap_or(0);
                    assert_eq!(f.remove(oldest), reference.remove(&oldest));
                }
                _ => {
                    let corr = next.saturating_sub(x % 32);
                    assert_eq!(f.remove(corr), reference.remove(&corr));
                }
            }
        }
        assert_eq!(f.drain().collect::<Vec<_>>(), reference.into_values().collect::<Vec<_>>());
    }
}
