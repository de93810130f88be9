//! The duplicate filter: message ids handled recently, so a redelivered or
//! retried message is acknowledged without running its handler again.
//!
//! Bounded twice: by count (oldest forgotten first) and by age. An id counts
//! as handled only once its handler succeeded; an id whose handler is still
//! running is "in progress", and a copy arriving meanwhile is dropped too (if
//! the first run fails, the router redelivers it). This module never touches
//! the network; the connection task owns it, so it needs no lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::idhash::IdHash;

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

    /// Checks a reply, which is consumed on receipt: a new id is remembered
    /// as handled at once (what [`begin`](Self::begin) then
    /// [`finish`](Self::finish) with success do, on one clock read).
    pub(crate) fn consume(&mut self, id: MessageId) -> Verdict {
        let now = Instant::now();
        self.expire(now);
        if self.handled.contains_key(&id) || self.in_progress.contains(&id) {
            return Verdict::Duplicate;
        }
        self.remember_at(id, now);
        Verdict::New
    }

    /// Marks an id handled at once.
    pub(crate) fn remember(&mut self, id: MessageId) {
        self.remember_at(id, Instant::now());
    }

    fn remember_at(&mut self, id: MessageId, now: Instant) {
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
    fn a_consumed_reply_is_a_duplicate_at_once() {
        let mut w = DedupWindow::new(10, Duration::from_secs(60));
        assert_eq!(w.consume(id(1)), Verdict::New);
        assert_eq!(w.consume(id(1)), Verdict::Duplicate);
        assert_eq!(w.begin(id(1)), Verdict::Duplicate, "remembered as handled");
        assert_eq!(w.begin(id(2)), Verdict::New);
        assert_eq!(w.consume(id(2)), Verdict::Duplicate, "in progress");
        assert_eq!(w.in_progress(), 1, "consuming leaves nothing in progress");
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
