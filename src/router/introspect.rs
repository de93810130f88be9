//! What the routing core reports about itself when asked
//! (`Command::Introspect`): connected instances, queues, in-flight
//! deliveries and effective routes, as plain serializable values.
//!
//! Routing metadata only: no payload, header bytes or key ever goes in here.

use std::net::SocketAddr;

use serde::Serialize;

/// The core's state at one moment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    /// When the snapshot was taken, Unix ms.
    pub taken_at_ms: u64,
    /// Every service with a connected instance or a queue, by name.
    pub services: Vec<ServiceSnapshot>,
    /// For every subscribed name and version: who the policy lets receive
    /// it and who is there to take it.
    pub routes: Vec<RouteSnapshot>,
}

/// One service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceSnapshot {
    /// Service name (from the policy).
    pub service: String,
    /// Its connected instances.
    pub instances: Vec<InstanceSnapshot>,
    /// Messages waiting for an instance.
    pub queue_depth: usize,
    /// Payload bytes waiting (queued and in flight).
    pub queue_bytes: u64,
    /// Age of the oldest waiting message, ms.
    pub oldest_queued_age_ms: Option<u64>,
    /// Deliveries to its instances not yet acknowledged.
    pub in_flight: usize,
}

/// One connected instance.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceSnapshot {
    /// The instance id its relay gave in `Hello`.
    pub instance: String,
    /// The SPIFFE identity of its certificate.
    pub identity: String,
    /// Router-local connection number.
    pub conn: u64,
    /// Peer address.
    pub remote: SocketAddr,
    /// When it connected, Unix ms.
    pub connected_at_ms: u64,
    /// Names and versions it handles (empty versions: every version).
    pub subscriptions: Vec<SubscriptionSnapshot>,
    /// Its credit (most unacknowledged deliveries).
    pub prefetch: u32,
    /// Deliveries to it not yet acknowledged.
    pub in_flight: usize,
}

/// One subscription.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionSnapshot {
    /// Message name.
    pub name: String,
    /// Versions handled; empty means every version.
    pub versions: Vec<u32>,
}

/// Where one name and version goes.
#[derive(Clone, Debug, Serialize)]
pub struct RouteSnapshot {
    /// Message name.
    pub name: String,
    /// Version; `None` when the subscribers handle every version (the
    /// policy is then asked about version 1).
    pub version: Option<u32>,
    /// Services the policy lets receive it.
    pub allowed: Vec<String>,
    /// Allowed services with a connected instance handling it: they get
    /// their copy now.
    pub delivering: Vec<String>,
    /// Allowed services with no instance handling it: their copy waits in
    /// their queue.
    pub queueing: Vec<String>,
    /// Services with instances subscribed to it that the policy does not
    /// let receive it (their subscription has no effect).
    pub subscribed_but_denied: Vec<String>,
}

/// The effective routes: for every name and version some instance
/// subscribed to, who the policy lets receive it and who is there.
pub(crate) fn routes(policy: &crate::policy::Policy, services: &[ServiceSnapshot]) -> Vec<RouteSnapshot> {
    use std::collections::{BTreeMap, BTreeSet};
    // (name, version) → services with an instance handling it.
    let mut handled: BTreeMap<(String, Option<u32>), BTreeSet<String>> = BTreeMap::new();
    for s in services {
        for i in &s.instances {
            for sub in &i.subscriptions {
                let versions: Vec<Option<u32>> = if sub.versions.is_empty() {
                    vec![None]
                } else {
                    sub.versions.iter().copied().map(Some).collect()
                };
                for v in versions {
                    handled.entry((sub.name.clone(), v)).or_default().insert(s.service.clone());
                }
            }
        }
    }
    let handles = |service: &str, name: &str, version: Option<u32>| {
        handled.get(&(name.to_string(), version)).is_some_and(|set| set.contains(service))
            || handled.get(&(name.to_string(), None)).is_some_and(|set| set.contains(service))
    };
    handled
        .iter()
        .map(|((name, version), subscribed)| {
            let allowed: Vec<String> =
                policy.receivers(name, version.unwrap_or(1)).iter().map(|s| s.to_string()).collect();
            let (delivering, queueing) =
                allowed.iter().cloned().partition(|svc: &String| handles(svc, name, *version));
            RouteSnapshot {
                name: name.clone(),
                version: *version,
                subscribed_but_denied: subscribed.iter().filter(|s| !allowed.contains(s)).cloned().collect(),
                allowed,
                delivering,
                queueing,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(subs: &[(&str, &[u32])]) -> InstanceSnapshot {
        InstanceSnapshot {
            instance: "i1".into(),
            identity: "spiffe://example.org/svc/x".into(),
            conn: 1,
            remote: "127.0.0.1:1".parse().unwrap(),
            connected_at_ms: 0,
            subscriptions: subs
                .iter()
                .map(|(n, v)| SubscriptionSnapshot { name: n.to_string(), versions: v.to_vec() })
                .collect(),
            prefetch: 1,
            in_flight: 0,
        }
    }

    fn service(name: &str, instances: Vec<InstanceSnapshot>) -> ServiceSnapshot {
        ServiceSnapshot {
            service: name.into(),
            instances,
            queue_depth: 0,
            queue_bytes: 0,
            oldest_queued_age_ms: None,
            in_flight: 0,
        }
    }

    #[test]
    fn routes_combine_policy_and_subscriptions() {
        let policy = crate::policy::Policy::parse(
            r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["user.created"]
receive = ["todos.listing"]
[services.todo]
id = "spiffe://example.org/svc/todo"
receive = ["user.created"]
[services.mailer]
id = "spiffe://example.org/svc/mailer"
receive = ["user.created"]
"#,
            "p.toml",
        )
        .unwrap();
        let services = vec![
            service("todo", vec![instance(&[("user.created", &[])])]),
            service("web", vec![instance(&[("user.created", &[2])])]),
        ];
        let routes = routes(&policy, &services);
        let any = routes.iter().find(|r| r.version.is_none()).unwrap();
        assert_eq!(any.name, "user.created");
        assert_eq!(any.delivering, ["todo"]);
        assert_eq!(any.queueing, ["mailer"]);
        let v2 = routes.iter().find(|r| r.version == Some(2)).unwrap();
        assert_eq!(v2.subscribed_but_denied, ["web"]);
        // todo handles every version, so it takes v2 as well.
        assert_eq!(v2.delivering, ["todo"]);
    }
}
