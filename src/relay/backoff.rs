//! Reconnect delays: exponential from a base, doubling to a cap, jittered.
//!
//! Jitter keeps a fleet of relays that lost the same router from coming back
//! in lockstep. This module only computes delays; it never sleeps.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never above `cap`.
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap: cap.max(base), attempt: 0 }
    }

    /// The delay before the next attempt: the un-jittered delay times a
    /// factor in [0.5, 1.0).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        delay.mul_f64(rand::random_range(0.5..1.0))
    }

    /// After a successful connection: start from `base` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The un-jittered delay of the current attempt.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d < ceiling, "{d:?} outside [{:?}, {ceiling:?})", ceiling / 2);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5), "no overflow after many attempts");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
