//! The router's metrics registry (Prometheus/OpenMetrics text via
//! prometheus-client), served by the admin API at `/metrics`.
//!
//! Two kinds of values live here. Counters and the latency histogram are
//! bumped where things happen (connections and the routing core); the core
//! reaches them through a [`CoreMetrics`] cache of per-label handles, so its
//! hot path is one hash lookup and one atomic add, never the family lock.
//! Gauges (queue depth and age, instances, in-flight, audit writer) are not
//! kept up to date at all: [`Metrics::encode`] sets them from a core
//! snapshot and the audit handle at scrape time, so they cost nothing
//! between scrapes.
//!
//! Label values come from the policy and from senders, so every family is
//! capped ([`MAX_SERIES`]): past the cap, new names are counted under
//! `name="_other"` instead of growing memory without bound. Nothing here
//! ever sees a payload.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::introspect::Snapshot;
use crate::audit::AuditHandle;

/// Most label sets one family holds; later ones are folded into `_other`.
pub const MAX_SERIES: usize = 2048;

/// The label value used once a family is full.
const OTHER: &str = "_other";

/// `name` and `service` labels.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct NameService {
    /// Message name.
    pub name: String,
    /// Service (receiver for routed, sender for denied).
    pub service: String,
}

/// `name`, `service` and `reason` labels of a denial.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct Denial {
    /// Message name (empty when the denial is not about a message).
    pub name: String,
    /// The refused service (or identity, for an unknown identity).
    pub service: String,
    /// Why: `policy`, `too_large`, `queue_full`, `reply_not_allowed`, ...
    pub reason: String,
}

/// A `service` label.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct ServiceLabel {
    /// Service name.
    pub service: String,
}

/// A `reason` label.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct ReasonLabel {
    /// A stable word (`unknown_issuer`, `no_certificate`, `timeout`, ...).
    pub reason: String,
}

/// A `status` label (HTTP status code).
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct StatusLabel {
    /// `200`, `401`, ...
    pub status: String,
}

/// A `kind` label of an alert.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct AlertLabel {
    /// `denials` or `handshake_failures`.
    pub kind: String,
}

/// Every metric of one router.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    routed: Family<NameService, Counter>,
    denied: Family<Denial, Counter>,
    /// Label sets in `denied` (the family cannot say).
    denied_series: AtomicUsize,
    delivered: Family<ServiceLabel, Counter>,
    redelivered: Family<ServiceLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
    alerts: Family<AlertLabel, Counter>,
    admin_calls: Family<StatusLabel, Counter>,
    routing_latency: Histogram,
    connected: Family<ServiceLabel, Gauge>,
    queue_depth: Family<ServiceLabel, Gauge>,
    queue_bytes: Family<ServiceLabel, Gauge>,
    queue_age: Family<ServiceLabel, Gauge<f64, AtomicU64>>,
    in_flight: Family<ServiceLabel, Gauge>,
    audit_pending: Gauge,
    audit_records: Gauge,
    audit_failed_batches: Gauge,
    audit_available: Gauge,
    pooled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under the `exocom_` prefix.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("exocom"),
            routed: Family::default(),
            denied: Family::default(),
            denied_series: AtomicUsize::new(0),
            delivered: Family::default(),
            redelivered: Family::default(),
            handshake_failures: Family::default(),
            alerts: Family::default(),
            admin_calls: Family::default(),
            // 50 µs doubling to about 1.6 s.
            routing_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            connected: Family::default(),
            queue_depth: Family::default(),
            queue_bytes: Family::default(),
            queue_age: Family::default(),
            in_flight: Family::default(),
            audit_pending: Gauge::default(),
            audit_records: Gauge::default(),
            audit_failed_batches: Gauge::default(),
            audit_available: Gauge::default(),
            pooled: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("messages_routed", "Copies of messages queued for a receiving service", m.routed.clone());
        r.register("messages_denied", "Sends, replies and deliveries refused", m.denied.clone());
        r.register("deliveries", "Messages handed to a receiving instance", m.delivered.clone());
        r.register("redeliveries", "Messages put back for another delivery attempt", m.redelivered.clone());
        r.register(
            "handshake_failures",
            "TLS handshakes and identities refused",
            m.handshake_failures.clone(),
        );
        r.register("alerts", "Traffic alerts raised (also written to the audit log)", m.alerts.clone());
        r.register("admin_calls", "Admin API calls by HTTP status", m.admin_calls.clone());
        r.register_with_unit(
            "routing_latency",
            "Time from reading a send to handing its first delivery to a connection",
            Unit::Seconds,
            m.routing_latency.clone(),
        );
        r.register("connected_instances", "Connected instances per service", m.connected.clone());
        r.register("queue_depth", "Messages waiting per service", m.queue_depth.clone());
        r.register_with_unit(
            "queue",
            "Payload bytes waiting per service",
            Unit::Bytes,
            m.queue_bytes.clone(),
        );
        r.register_with_unit(
            "queue_oldest_age",
            "Age of the oldest waiting message per service",
            Unit::Seconds,
            m.queue_age.clone(),
        );
        r.register("in_flight", "Deliveries not yet acknowledged per service", m.in_flight.clone());
        r.register("audit_pending_records", "Records waiting for the audit writer", m.audit_pending.clone());
        r.register("audit_records_written", "Records the audit writer has written", m.audit_records.clone());
        r.register(
            "audit_failed_batches",
            "Audit batches that could not be written",
            m.audit_failed_batches.clone(),
        );
        r.register("audit_available", "1 while the audit log accepts records", m.audit_available.clone());
        r.register_with_unit(
            "buffer_pool",
            "Large frame buffers kept for reuse, free (at most 128 MiB)",
            Unit::Bytes,
            m.pooled.clone(),
        );
        m
    }

    /// Counts a refused send, reply or delivery.
    pub fn denied(&self, name: &str, service: &str, reason: &str) {
        let mut labels =
            Denial { name: name.to_string(), service: service.to_string(), reason: reason.to_string() };
        if let Some(c) = self.denied.get(&labels) {
            c.inc();
            return;
        }
        if self.denied_series.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
            labels.name = OTHER.to_string();
        }
        self.denied.get_or_create(&labels).inc();
    }

    /// Counts a refused handshake by its stable reason word.
    pub fn handshake_failed(&self, reason: &str) {
        self.handshake_failures.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Counts a raised alert.
    pub fn alert(&self, kind: &str) {
        self.alerts.get_or_create(&AlertLabel { kind: kind.to_string() }).inc();
    }

    /// Counts an admin API call by its status code.
    pub fn admin_call(&self, status: u16) {
        self.admin_calls.get_or_create(&StatusLabel { status: status.to_string() }).inc();
    }

    /// The text exposition (OpenMetrics), with the gauges set from
    /// `snapshot` and `audit` first.
    pub fn encode(&self, snapshot: &Snapshot, audit: &AuditHandle) -> Result<String, std::fmt::Error> {
        self.connected.clear();
        self.queue_depth.clear();
        self.queue_bytes.clear();
        self.queue_age.clear();
        self.in_flight.clear();
        for s in &snapshot.services {
            let l = ServiceLabel { service: s.service.clone() };
            self.connected.get_or_create(&l).set(s.instances.len() as i64);
            self.queue_depth.get_or_create(&l).set(s.queue_depth as i64);
            self.queue_bytes.get_or_create(&l).set(s.queue_bytes as i64);
            self.queue_age.get_or_create(&l).set(s.oldest_queued_age_ms.unwrap_or(0) as f64 / 1000.0);
            self.in_flight.get_or_create(&l).set(s.in_flight as i64);
        }
        let stats = audit.stats();
        self.audit_pending.set(audit.pending() as i64);
        self.audit_records.set(stats.records as i64);
        self.audit_failed_batches.set(stats.failed_batches as i64);
        self.audit_available.set(i64::from(audit.is_available()));
        self.pooled.set(i64::try_from(crate::wire::pool::pooled_bytes()).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The routing core's view of the metrics: cached per-label handles so the
/// hot path never takes a family lock. Owned by the one core task.
#[derive(Debug)]
pub struct CoreMetrics {
    metrics: Arc<Metrics>,
    /// By name, then by service: looked up by `&str`, so a hit clones no `Arc`.
    routed: HashMap<Arc<str>, HashMap<Arc<str>, Counter>>,
    /// Series in `routed`.
    routed_series: usize,
    delivered: HashMap<Arc<str>, Counter>,
    redelivered: HashMap<Arc<str>, Counter>,
}

impl CoreMetrics {
    /// A cache over `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        CoreMetrics {
            metrics,
            routed: HashMap::new(),
            routed_series: 0,
            delivered: HashMap::new(),
            redelivered: HashMap::new(),
        }
    }

    /// The registry behind this cache.
    pub fn shared(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// One copy of `name` queued for `service`, whose counters are `slot`.
    pub fn routed(&mut self, name: &Arc<str>, service: &Arc<str>, slot: &mut ServiceCounters) {
        if let Some((last, c)) = &slot.routed
            && last == name
        {
            c.inc();
            return;
        }
        let c = self.routed_counter(name, service);
        c.inc();
        slot.routed = Some((name.clone(), c));
    }

    fn routed_counter(&mut self, name: &Arc<str>, service: &Arc<str>) -> Counter {
        if let Some(c) = self.routed.get(&**name).and_then(|by_service| by_service.get(&**service)) {
            return c.clone();
        }
        let family = &self.metrics.routed;
        let mut labels = NameService { name: name.to_string(), service: service.to_string() };
        // The core is the only writer of this family, so its cache counts the series.
        if self.routed_series >= MAX_SERIES {
            labels.name = OTHER.to_string();
            return family.get_or_create_owned(&labels);
        }
        let c = family.get_or_create_owned(&labels);
        self.routed.entry(name.clone()).or_default().insert(service.clone(), c.clone());
        self.routed_series += 1;
        c
    }

    /// A delivery to an instance of `service`, whose counters are `slot`.
    pub fn delivered(&mut self, service: &Arc<str>, slot: &mut ServiceCounters) {
        if let Some(c) = &slot.delivered {
            c.inc();
            return;
        }
        let c = cached(&mut self.delivered, &self.metrics.delivered, service);
        c.inc();
        slot.delivered = Some(c);
    }

    /// A message of `service` put back for another attempt.
    pub fn redelivered(&mut self, service: &Arc<str>) {
        cached(&mut self.redelivered, &self.metrics.redelivered, service).inc();
    }

    /// A refusal decided in the core.
    pub fn denied(&self, name: &str, service: &str, reason: &str) {
        self.metrics.denied(name, service, reason);
    }

    /// Time from reading a send to its first delivery.
    pub fn latency(&self, since: std::time::Instant) {
        self.metrics.routing_latency.observe(since.elapsed().as_secs_f64());
    }
}

/// The counter of `service` in `family`, cached. Services come from the
/// policy, so this cache is bounded by it. Looked up by `&str` first: a hit
/// clones no `Arc`.
fn cached(
    cache: &mut HashMap<Arc<str>, Counter>,
    family: &Family<ServiceLabel, Counter>,
    service: &Arc<str>,
) -> Counter {
    if let Some(counter) = cache.get(&**service) {
        return counter.clone();
    }
    let counter = family.get_or_create_owned(&ServiceLabel { service: service.to_string() });
    cache.insert(service.clone(), counter.clone());
    counter
}

/// One service's counters, kept with the service's queue in the core so that
/// a message counts without a lookup by name. Empty until first used.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// The last name routed to the service, and its counter.
    routed: Option<(Arc<str>, Counter)>,
    delivered: Option<Counter>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Snapshot {
        Snapshot::default()
    }

    #[test]
    fn cached_counters_reach_the_exposition() {
        let metrics = Arc::new(Metrics::new());
        let mut core = CoreMetrics::new(metrics.clone());
        let name: Arc<str> = Arc::from("todos.list");
        let svc: Arc<str> = Arc::from("todo");
        let mut slot = ServiceCounters::default();
        core.routed(&name, &svc, &mut slot);
        core.routed(&name, &svc, &mut slot);
        core.delivered(&svc, &mut slot);
        core.delivered(&svc, &mut ServiceCounters::default());
        metrics.denied("payments.refund", "web", "policy");
        metrics.handshake_failed("unknown_issuer");
        let text = metrics.encode(&empty(), &AuditHandle::disabled()).unwrap();
        assert!(
            text.contains(r#"exocom_messages_routed_total{name="todos.list",service="todo"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"exocom_deliveries_total{service="todo"} 2"#), "{text}");
        assert!(text.contains(
            r#"exocom_messages_denied_total{name="payments.refund",service="web",reason="policy"} 1"#
        ));
        assert!(text.contains(r#"exocom_handshake_failures_total{reason="unknown_issuer"} 1"#));
        assert!(text.contains("exocom_routing_latency_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn families_stop_growing_at_the_cap() {
        let metrics = Arc::new(Metrics::new());
        for i in 0..MAX_SERIES + 10 {
            metrics.denied(&format!("n{i}"), "web", "policy");
        }
        let last = Denial { name: format!("n{MAX_SERIES}"), service: "web".into(), reason: "policy".into() };
        assert!(metrics.denied.get(&last).is_none());
        let other = Denial { name: OTHER.into(), service: "web".into(), reason: "policy".into() };
        assert_eq!(metrics.denied.get_or_create(&other).get(), 10);
    }

    #[test]
    fn the_routed_cache_counts_pairs_and_stops_at_the_cap() {
        let metrics = Arc::new(Metrics::new());
        let mut core = CoreMetrics::new(metrics.clone());
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let (mut slot_a, mut slot_b) = (ServiceCounters::default(), ServiceCounters::default());
        // One name, two services: two series, each counted on its own.
        core.routed(&Arc::from("n.x"), &a, &mut slot_a);
        core.routed(&Arc::from("n.x"), &b, &mut slot_b);
        core.routed(&Arc::from("n.x"), &b, &mut slot_b);
        // A slot that forgot its counter finds the same series again.
        core.routed(&Arc::from("n.x"), &b, &mut ServiceCounters::default());
        let series = |name: &str, service: &str| NameService { name: name.into(), service: service.into() };
        assert_eq!(metrics.routed.get_or_create(&series("n.x", "a")).get(), 1);
        assert_eq!(metrics.routed.get_or_create(&series("n.x", "b")).get(), 3);
        for i in 0..MAX_SERIES + 8 {
            core.routed(&Arc::from(format!("n{i}")), &a, &mut slot_a);
        }
        // A name past the cap, routed again: still under OTHER.
        core.routed(&Arc::from(format!("n{}", MAX_SERIES + 7)), &a, &mut slot_a);
        // Two series before the loop: the last ten names fall under OTHER.
        assert!(metrics.routed.get(&series(&format!("n{}", MAX_SERIES - 2), "a")).is_none());
        assert_eq!(metrics.routed.get_or_create(&series(&format!("n{}", MAX_SERIES - 3), "a")).get(), 1);
        assert_eq!(metrics.routed.get_or_create(&series(OTHER, "a")).get(), 11);
    }
}
