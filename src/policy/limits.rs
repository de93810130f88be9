//! Limits a policy puts on a service: maximum message size and send rate.
//!
//! [`TokenBucket`] is the rate limiter the router keeps per service. It takes
//! the current [`Instant`] as an argument, so it is pure and testable; it
//! never reads a clock or sleeps.

use std::time::Instant;

/// The effective limits for one (service, name).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Limits {
    /// Largest payload in bytes, if limited (the smallest of the service's
    /// and every matching `[messages]` entry's).
    pub max_size: Option<u64>,
    /// The service's send rate, if limited.
    pub rate: Option<Rate>,
}

/// A send rate: `per_second` messages per second on average, with bursts of
/// up to `burst` messages.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Rate {
    /// Sustained messages per second (at least 1).
    pub per_second: u32,
    /// Largest burst (at least 1).
    pub burst: u32,
}

/// Why a size could not be parsed.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("invalid size \"{0}\": write a number of bytes, or a number with KiB, MiB or GiB (e.g. \"256KiB\")")]
pub struct SizeError(pub String);

/// Parses a size: `"1024"`, `"256KiB"`, `"1MiB"`, `"2GiB"` (also `B`, `KB`=1000).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits.parse().map_err(|_| SizeError(text.to_string()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(SizeError(text.to_string())),
    };
    number.checked_mul(factor).ok_or_else(|| SizeError(text.to_string()))
}

/// A token bucket: starts full with `burst` tokens, refills at `per_second`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    /// Tokens available, in millionths, so refills need no floating point.
    micro_tokens: u64,
    last: Instant,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    /// A full bucket for `rate` as of `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        let rate = Rate { per_second: rate.per_second.max(1), burst: rate.burst.max(1) };
        Self { rate, micro_tokens: u64::from(rate.burst) * MICRO, last: now }
    }

    /// The rate this bucket enforces.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token if available at `now`; `false` means "over the limit".
    /// A `now` earlier than the last call is treated as no time passing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// Changes the rate (after a policy reload), keeping the tokens already
    /// earned up to the new burst.
    pub fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = Rate { per_second: rate.per_second.max(1), burst: rate.burst.max(1) };
        self.micro_tokens = self.micro_tokens.min(u64::from(self.rate.burst) * MICRO);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        // Tokens in millionths: micros elapsed * per_second.
        let earned = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.rate.per_second));
        let cap = u64::from(self.rate.burst) * MICRO;
        self.micro_tokens = self.micro_tokens.saturating_add(earned).min(cap);
        if now > self.last {
            self.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("5KB"), Ok(5000));
        assert!(parse_size("").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate { per_second: 10, burst: 3 }, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0), "burst exhausted");
        // 10/s: one token every 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn time_going_backwards_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Rate { per_second: 1, burst: 1 }, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn set_rate_caps_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate { per_second: 100, burst: 100 }, t0);
        b.set_rate(Rate { per_second: 1, burst: 2 }, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
    }
}
