//! Decisions: may this service send / receive this name at this version?
//!
//! Deny by default; an explicit `[[deny]]` wins over any allow; rule order
//! does not matter for the outcome (the first matching rule in file order
//! names it). Decisions for a (name, version) are computed for every service
//! at once and cached inside the [`Policy`], so a reload (a new `Policy`)
//! drops the cache with it. The cache is bounded: names come from peers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::policy::limits::Limits;
use crate::policy::model::{Direction, Policy, ServiceRules};
use crate::policy::pattern::valid_name;

/// The outcome of a check, naming the rule that made it. Cheap to clone.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Decision {
    /// Whether the action is allowed.
    pub allowed: bool,
    /// The deciding rule: `FILE:LINE:COL PATTERN`, `FILE:LINE:COL deny PATTERN
    /// (reason)`, or `default deny (…)`.
    pub rule: Arc<str>,
}

/// Most distinct (name, version) pairs kept; past it the cache starts over.
const CACHE_CAPACITY: usize = 16 * 1024;

/// Everything about one (name, version), for every service (by index).
#[derive(Debug)]
struct Compiled {
    version: u32,
    send: Box<[Decision]>,
    receive: Box<[Decision]>,
    receivers: Arc<[Arc<str>]>,
}

/// Per-policy cache of compiled decisions. Reads take a shared lock only.
#[derive(Debug, Default)]
pub(crate) struct DecisionCache {
    map: RwLock<CacheMap>,
}

#[derive(Debug, Default)]
struct CacheMap {
    entries: HashMap<Box<str>, Vec<Arc<Compiled>>>,
    len: usize,
}

impl Policy {
    /// May `service` send `name` at `version`?
    pub fn check_send(&self, service: &str, name: &str, version: u32) -> Decision {
        self.check(Direction::Send, service, name, version)
    }

    /// May `service` receive `name` at `version`?
    pub fn check_receive(&self, service: &str, name: &str, version: u32) -> Decision {
        self.check(Direction::Receive, service, name, version)
    }

    /// A check in either direction.
    pub fn check(&self, direction: Direction, service: &str, name: &str, version: u32) -> Decision {
        let Some(index) = self.service_index(service) else {
            return Decision { allowed: false, rule: Arc::from("default deny (unknown service)") };
        };
        self.with_compiled(name, version, |c| match direction {
            Direction::Send => c.send[index].clone(),
            Direction::Receive => c.receive[index].clone(),
        })
    }

    /// The services allowed to receive `name` at `version`, sorted by name.
    pub fn receivers(&self, name: &str, version: u32) -> Arc<[Arc<str>]> {
        self.with_compiled(name, version, |c| c.receivers.clone())
    }

    /// The limits that apply when `service` sends `name`: the smallest
    /// `max_size` of the service and every matching `[messages]` entry, and
    /// the service's rate.
    pub fn limits(&self, service: &str, name: &str) -> Limits {
        let svc = self.service(service);
        let mut max_size = svc.and_then(|s| s.max_size);
        for m in self.messages.iter().filter(|m| m.pattern.matches_name(name)) {
            if let Some(size) = m.max_size {
                max_size = Some(max_size.map_or(size, |cur| cur.min(size)));
            }
        }
        Limits { max_size, rate: svc.and_then(|s| s.rate) }
    }

    /// Decides without the cache (also used to fill it).
    pub(crate) fn decide(
        &self,
        svc: &ServiceRules,
        direction: Direction,
        name: &str,
        version: u32,
    ) -> Decision {
        if !valid_name(name) {
            return Decision { allowed: false, rule: Arc::from("default deny (invalid message name)") };
        }
        for deny in self.denies.iter().filter(|d| d.applies_to(&svc.name)) {
            if let Some(rule) = deny.rules(direction).iter().find(|r| r.pattern.matches(name, version)) {
                return Decision { allowed: false, rule: rule.label.clone() };
            }
        }
        match svc.rules(direction).iter().find(|r| r.pattern.matches(name, version)) {
            Some(rule) => Decision { allowed: true, rule: rule.label.clone() },
            None => Decision { allowed: false, rule: self.default_deny.clone() },
        }
    }

    fn with_compiled<T>(&self, name: &str, version: u32, f: impl Fn(&Compiled) -> T) -> T {
        {
            let map = self.cache.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.entries.get(name).and_then(|v| v.iter().find(|c| c.version == version)) {
                return f(c);
            }
        }
        let compiled = self.compile(name, version);
        let out = f(&compiled);
        let mut map = self.cache.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len >= CACHE_CAPACITY {
            // Simple and bounded: a peer sending many distinct names only
            // costs recomputation, never memory.
            map.entries.clear();
            map.len = 0;
        }
        let versions = map.entries.entry(name.into()).or_default();
        if !versions.iter().any(|c| c.version == version) {
            versions.push(Arc::new(compiled));
            map.len += 1;
        }
        out
    }

    fn compile(&self, name: &str, version: u32) -> Compiled {
        let send: Box<[Decision]> =
            self.services.iter().map(|s| self.decide(s, Direction::Send, name, version)).collect();
        let receive: Box<[Decision]> =
            self.services.iter().map(|s| self.decide(s, Direction::Receive, name, version)).collect();
        let receivers: Arc<[Arc<str>]> = self
            .services
            .iter()
            .zip(receive.iter())
            .filter(|(_, d)| d.allowed)
            .map(|(s, _)| s.name.clone())
            .collect();
        Compiled { version, send, receive, receivers }
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::Policy;

    const SRC: &str = r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["todos.*", "*.reset"]
receive = ["todos.listing@1,2"]

[services.todo]
id = "spiffe://example.org/svc/todo"
send = ["todos.listing"]
receive = ["todos.>"]

[services.admin]
id = "spiffe://example.org/svc/admin"
send = ["admin.>"]
receive = ["todos.created"]
limits = { max_size = "1KiB", rate = 5 }

[messages."todos.>"]
max_size = "512"

[[deny]]
services = ["*"]
send = ["admin.>"]
except = ["admin"]
reason = "only admin may send admin.*"

[[deny]]
services = ["todo"]
receive = ["todos.secret"]
"#;

    fn policy() -> Policy {
        Policy::parse(SRC, "p.toml").unwrap()
    }

    #[test]
    fn wildcards_and_default_deny() {
        let p = policy();
        let d = p.check_send("web", "todos.list", 1);
        assert!(d.allowed);
        assert_eq!(&*d.rule, "p.toml:7:9 todos.*");
        let d = p.check_send("web", "todos.list.more", 1);
        assert!(!d.allowed);
        assert_eq!(&*d.rule, "default deny (no rule matches)");
        assert!(p.check_receive("todo", "todos.a.b.c", 9).allowed);
        assert!(!p.check_receive("todo", "todos", 9).allowed);
    }

    #[test]
    fn versions_restrict() {
        let p = policy();
        assert!(p.check_receive("web", "todos.listing", 1).allowed);
        assert!(p.check_receive("web", "todos.listing", 2).allowed);
        assert!(!p.check_receive("web", "todos.listing", 3).allowed);
        assert!(!p.check_receive("web", "todos.listing", 0).allowed);
    }

    #[test]
    fn deny_wins_and_except_exempts() {
        let p = policy();
        let d = p.check_send("web", "admin.reset", 1);
        assert!(!d.allowed);
        assert_eq!(&*d.rule, "p.toml:26:9 deny admin.> (only admin may send admin.*)");
        assert!(p.check_send("admin", "admin.reset", 1).allowed);
        let d = p.check_receive("todo", "todos.secret", 1);
        assert!(!d.allowed);
        assert!(d.rule.contains("deny todos.secret"), "{}", d.rule);
    }

    #[test]
    fn unknown_service_and_invalid_names() {
        let p = policy();
        assert_eq!(&*p.check_send("nobody", "todos.list", 1).rule, "default deny (unknown service)");
        for bad in ["", "Todos.list", "todos..list", "todos.*"] {
            let d = p.check_receive("todo", bad, 1);
            assert!(!d.allowed, "{bad}");
            assert_eq!(&*d.rule, "default deny (invalid message name)");
        }
    }

    #[test]
    fn receivers_are_sorted_and_cached() {
        let p = policy();
        let r = p.receivers("todos.created", 1);
        assert_eq!(r.iter().map(|s| &**s).collect::<Vec<_>>(), ["admin", "todo"]);
        let again = p.receivers("todos.created", 1);
        assert!(std::sync::Arc::ptr_eq(&r, &again), "second call is served from the cache");
        assert!(p.receivers("todos.secret", 1).is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let p = policy();
        for i in 0..(super::CACHE_CAPACITY + 10) {
            p.check_send("web", &format!("todos.n{i}"), 1);
        }
        let len = p.cache.map.read().unwrap().len;
        assert!(len <= super::CACHE_CAPACITY);
        assert!(p.check_send("web", "todos.n1", 1).allowed);
    }

    #[test]
    fn limits_take_the_smallest() {
        let p = policy();
        let l = p.limits("admin", "todos.created");
        assert_eq!(l.max_size, Some(512));
        assert_eq!(l.rate.map(|r| (r.per_second, r.burst)), Some((5, 5)));
        assert_eq!(p.limits("admin", "admin.reset").max_size, Some(1024));
        assert_eq!(p.limits("web", "other.thing").max_size, None);
        assert_eq!(p.limits("web", "other.thing").rate, None);
    }

    /// Prints ns/call of the hot-path checks. Run with
    /// `cargo test --lib policy::decide::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    #[allow(clippy::print_stdout)] // a benchmark's figures are its output
    fn bench_check_send() {
        let p = policy();
        let n = 2_000_000u32;
        for (label, name) in [("hit", "todos.list"), ("deny-rule hit", "admin.reset")] {
            p.check_send("web", name, 1);
            let start = std::time::Instant::now();
            let mut allowed = 0u32;
            for _ in 0..n {
                allowed += u32::from(
                    std::hint::black_box(p.check_send("web", std::hint::black_box(name), 1)).allowed,
                );
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            println!("check_send ({label}): {ns:.1} ns/call (allowed {allowed})");
        }
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(p.receivers(std::hint::black_box("todos.created"), 1));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
        println!("receivers: {ns:.1} ns/call");
        let uncached = 20_000u32;
        let svc = p.service("web").unwrap();
        let start = std::time::Instant::now();
        for _ in 0..uncached {
            std::hint::black_box(p.decide(
                svc,
                super::Direction::Send,
                std::hint::black_box("todos.list"),
                1,
            ));
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(uncached);
        println!("decide without cache: {ns:.1} ns/call");
    }
}
