//! Traffic alerts: too many denials from one identity, or too many failed
//! handshakes from one address, within a minute.
//!
//! Fed from the places that audit `deny` and `handshake_failed`. Counting
//! uses fixed one-minute windows; when a key reaches its threshold within a
//! window, one `alert` audit record is written and the
//! `exocom_alerts_total{kind}` counter rises, once per key per window, so a
//! flood raises one alert a minute rather than one per attempt. Memory is
//! bounded: at most [`MAX_KEYS`] keys are tracked per window.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::audit::{AuditHandle, Event, Record};
use crate::router::metrics::Metrics;

/// Most identities (or addresses) counted in one window.
pub const MAX_KEYS: usize = 10_000;

/// Thresholds; 0 turns a check off.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct AlertConfig {
    /// Denied sends (and unknown-identity refusals) per identity per minute.
    pub denials_per_minute: u32,
    /// Failed TLS handshakes per remote IP address per minute.
    pub handshake_failures_per_minute: u32,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig { denials_per_minute: 20, handshake_failures_per_minute: 10 }
    }
}

#[derive(Debug, Default)]
struct Window {
    minute: u64,
    denials: HashMap<Arc<str>, u32>,
    handshakes: HashMap<IpAddr, u32>,
}

/// The alert counters of one router.
#[derive(Debug)]
pub struct Alerts {
    config: AlertConfig,
    audit: AuditHandle,
    metrics: Arc<Metrics>,
    window: Mutex<Window>,
}

impl Alerts {
    /// Counters that report to `audit` and `metrics`.
    pub fn new(config: AlertConfig, audit: AuditHandle, metrics: Arc<Metrics>) -> Self {
        Alerts { config, audit, metrics, window: Mutex::new(Window::default()) }
    }

    /// A send (or a connection) from `identity` was denied.
    pub fn denial(&self, identity: &Arc<str>, remote: Option<SocketAddr>) {
        self.denial_at(identity, remote, crate::router::message::now_ms());
    }

    /// A TLS handshake from `remote` failed.
    pub fn handshake_failure(&self, remote: SocketAddr, reason: &str) {
        self.handshake_failure_at(remote, reason, crate::router::message::now_ms());
    }

    fn denial_at(&self, identity: &Arc<str>, remote: Option<SocketAddr>, now_ms: u64) {
        let threshold = self.config.denials_per_minute;
        if threshold == 0 {
            return;
        }
        let count = {
            let mut w = self.window(now_ms);
            let full = w.denials.len() >= MAX_KEYS;
            match w.denials.get_mut(identity) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None if full => return,
                None => {
                    w.denials.insert(identity.clone(), 1);
                    1
                }
            }
        };
        if count == threshold {
            let reason = format!("{count} denials within a minute from {identity} (threshold {threshold})");
            warn!(identity = %identity, count, "alert: repeated denials");
            let mut r = Record::new(Event::Alert);
            r.identity = Some(identity.clone());
            r.remote = remote;
            r.reason = Some(Arc::from(reason));
            let _ = self.audit.note(r);
            self.metrics.alert("denials");
        }
    }

    fn handshake_failure_at(&self, remote: SocketAddr, why: &str, now_ms: u64) {
        let threshold = self.config.handshake_failures_per_minute;
        if threshold == 0 {
            return;
        }
        let ip = remote.ip();
        let count = {
            let mut w = self.window(now_ms);
            let full = w.handshakes.len() >= MAX_KEYS;
            match w.handshakes.get_mut(&ip) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None if full => return,
                None => {
                    w.handshakes.insert(ip, 1);
                    1
                }
            }
        };
        if count == threshold {
            let reason = format!(
                "{count} failed handshakes within a minute from {ip} (threshold {threshold}; last: {why})"
            );
            warn!(%ip, count, "alert: repeated handshake failures");
            let mut r = Record::new(Event::Alert);
            r.remote = Some(remote);
            r.reason = Some(Arc::from(reason));
            let _ = self.audit.note(r);
            self.metrics.alert("handshake_failures");
        }
    }

    /// The current window, reset when the minute has changed.
    fn window(&self, now_ms: u64) -> std::sync::MutexGuard<'_, Window> {
        // A poisoned lock only means a panic elsewhere mid-count; the counts are still usable.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let minute = now_ms / 60_000;
        if w.minute != minute {
            w.minute = minute;
            w.denials.clear();
            w.handshakes.clear();
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerts(d: u32, h: u32) -> (Alerts, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let config = AlertConfig { denials_per_minute: d, handshake_failures_per_minute: h };
        (Alerts::new(config, AuditHandle::disabled(), metrics.clone()), metrics)
    }

    fn alert_count(m: &Metrics, kind: &str) -> u64 {
        let text = m.encode(&Default::default(), &AuditHandle::disabled()).unwrap();
        let prefix = format!("exocom_alerts_total{{kind=\"{kind}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    }

    #[test]
    fn one_alert_per_identity_per_minute_at_the_threshold() {
        let (a, m) = alerts(3, 0);
        let web: Arc<str> = Arc::from("web");
        let t = 10 * 60_000;
        a.denial_at(&web, None, t);
        a.denial_at(&web, None, t + 1);
        assert_eq!(alert_count(&m, "denials"), 0);
        a.denial_at(&web, None, t + 2);
        assert_eq!(alert_count(&m, "denials"), 1);
        for i in 0..10 {
            a.denial_at(&web, None, t + 3 + i);
        }
        assert_eq!(alert_count(&m, "denials"), 1, "one alert per window");
        // Another identity has its own count.
        let other: Arc<str> = Arc::from("intruder");
        a.denial_at(&other, None, t + 100);
        assert_eq!(alert_count(&m, "denials"), 1);
        // A new minute starts over.
        for i in 0..3 {
            a.denial_at(&web, None, t + 60_000 + i);
        }
        assert_eq!(alert_count(&m, "denials"), 2);
    }

    #[test]
    fn handshake_failures_count_per_address_not_port() {
        let (a, m) = alerts(0, 2);
        let t = 5 * 60_000;
        a.handshake_failure_at("10.0.0.1:1000".parse().unwrap(), "unknown_issuer", t);
        a.handshake_failure_at("10.0.0.2:1000".parse().unwrap(), "unknown_issuer", t);
        assert_eq!(alert_count(&m, "handshake_failures"), 0);
        a.handshake_failure_at("10.0.0.1:2000".parse().unwrap(), "no_certificate", t + 5);
        assert_eq!(alert_count(&m, "handshake_failures"), 1);
        let web: Arc<str> = Arc::from("web");
        a.denial_at(&web, None, t);
        assert_eq!(alert_count(&m, "denials"), 0, "a threshold of 0 is off");
    }
}
