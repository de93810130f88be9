//! A circuit breaker per message name.
//!
//! After `threshold` consecutive transient failures (timeouts, full queues,
//! an unreachable router, …) for one name, calls for that name fail fast for
//! a cool-down instead of piling up on a path that is not working. After the
//! cool-down one call is let through (half-open): its success closes the
//! circuit, its failure opens it again. Denials do not count: they say
//! nothing about the health of the path. This module only keeps the counts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit; 0 disables the breaker.
    pub threshold: u32,
    /// How long an open circuit fails calls fast.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { threshold: 5, cool_down: Duration::from_secs(10) }
    }
}

#[derive(Debug, Default)]
struct NameState {
    failures: u32,
    open_until: Option<Instant>,
    trial_running: bool,
}

/// Breakers for every message name. A std mutex: no lock is held across an await.
#[derive(Debug)]
pub(crate) struct Breakers {
    config: BreakerConfig,
    names: Mutex<HashMap<String, NameState>>,
}

impl Breakers {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self { config, names: Mutex::new(HashMap::new()) }
    }

    /// Whether a call for `name` may go ahead now; `Err(remaining)` with the
    /// remaining cool-down when the circuit is open.
    pub(crate) fn check(&self, name: &str) -> Result<(), Duration> {
        if self.config.threshold == 0 {
            return Ok(());
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = names.get_mut(name) else { return Ok(()) };
        let Some(until) = state.open_until else { return Ok(()) };
        let now = Instant::now();
        if now < until {
            return Err(until - now);
        }
        if state.trial_running {
            return Err(Duration::ZERO);
        }
        state.trial_running = true;
        Ok(())
    }

    /// Records the outcome of a call for `name`.
    pub(crate) fn record(&self, name: &str, success: bool) {
        if self.config.threshold == 0 {
            return;
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if success {
            names.remove(name);
            return;
        }
        let state = names.entry(name.to_owned()).or_default();
        state.failures = state.failures.saturating_add(1);
        state.trial_running = false;
        if state.failures >= self.config.threshold {
            state.open_until = Some(Instant::now() + self.config.cool_down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig { threshold: 3, cool_down: Duration::from_secs(10) })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_per_name() {
        let b = breakers();
        b.record("a", false);
        b.record("a", false);
        assert!(b.check("a").is_ok());
        b.record("a", false);
        let remaining = b.check("a").unwrap_err();
        assert_eq!(remaining, Duration::from_secs(10));
        assert!(b.check("b").is_ok(), "other names are unaffected");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breakers();
        b.record("a", false);
        b.record("a", false);
        b.record("a", true);
        b.record("a", false);
        b.record("a", false);
        assert!(b.check("a").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_trial_through() {
        let b = breakers();
        for _ in 0..3 {
            b.record("a", false);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.check("a").is_ok(), "the trial call");
        assert!(b.check("a").is_err(), "only one trial at a time");
        b.record("a", false);
        assert_eq!(b.check("a").unwrap_err(), Duration::from_secs(10), "trial failed: open again");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.check("a").is_ok());
        b.record("a", true);
        assert!(b.check("a").is_ok() && b.check("a").is_ok(), "trial succeeded: closed");
    }

    #[test]
    fn threshold_zero_disables_the_breaker() {
        let b = Breakers::new(BreakerConfig { threshold: 0, cool_down: Duration::from_secs(10) });
        for _ in 0..10 {
            b.record("a", false);
        }
        assert!(b.check("a").is_ok());
    }
}
