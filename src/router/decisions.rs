//! Cached policy decisions for the hot path.
//!
//! A policy decision depends only on the policy in force and (service, name,
//! version), so the router asks the policy once per combination and keeps
//! the answer until the policy is swapped (a reload installs a new `Arc`,
//! which empties the cache). Each cache is owned by one task (a connection's
//! reader, the core), so it needs no lock. The number of entries is bounded:
//! a peer sending ever new names only makes the cache start over. In front
//! of each map sits the last answer given: a stream of one name (the common
//! case) is answered by comparing strings, without hashing them.
//!
//! It must never decide anything itself: every answer comes from the policy.

use std::collections::HashMap;
use std::sync::Arc;

use crate::last::LastAnswer;
use crate::policy::{Decision, Policy, Rate};

/// Entries kept before a cache starts over.
const MAX_ENTRIES: usize = 4096;

/// What a sender may do with one name and version.
#[derive(Clone, Debug)]
pub struct SendDecision {
    /// The policy's send decision.
    pub decision: Decision,
    /// Services the policy lets receive it.
    pub receivers: Arc<[Arc<str>]>,
    /// The policy's size limit for it.
    pub max_size: Option<u64>,
    /// The sender's rate limit.
    pub rate: Option<Rate>,
}

/// Send decisions of one sending service (one connection's reader owns it).
#[derive(Default)]
pub struct SendCache {
    policy: Option<Arc<Policy>>,
    entries: HashMap<String, Vec<(u32, SendDecision)>>,
    len: usize,
    /// The last answer given, in front of `entries`.
    last: LastAnswer<SendDecision>,
}

impl SendCache {
    /// The decision for `service` sending `name` v`version` under `policy`.
    pub fn get(&mut self, policy: &Arc<Policy>, service: &str, name: &str, version: u32) -> SendDecision {
        if reset_if_changed(&mut self.policy, policy, &mut self.entries, &mut self.len) {
            self.last.forget();
        }
        if let Some(d) = self.last.get(name, version) {
            return d.clone();
        }
        let decision = self.lookup(policy, service, name, version);
        self.last.set(name, version, decision.clone());
        decision
    }

    fn lookup(&mut self, policy: &Policy, service: &str, name: &str, version: u32) -> SendDecision {
        if let Some((_, d)) = self.entries.get(name).and_then(|v| v.iter().find(|(ver, _)| *ver == version)) {
            return d.clone();
        }
        let limits = policy.limits(service, name);
        let decision = SendDecision {
            decision: policy.check_send(service, name, version),
            receivers: policy.receivers(name, version),
            max_size: limits.max_size,
            rate: limits.rate,
        };
        self.len += 1;
        self.entries.entry(name.to_string()).or_default().push((version, decision.clone()));
        decision
    }
}

/// A receive question: service, name, version.
type ReceiveKey = (Arc<str>, Arc<str>, u32);

/// Receive decisions of the routing core, for every service.
#[derive(Default)]
pub struct ReceiveCache {
    policy: Option<Arc<Policy>>,
    entries: HashMap<ReceiveKey, Decision>,
    len: usize,
    /// The last question asked, and the answer.
    last: Option<(ReceiveKey, Decision)>,
}

impl ReceiveCache {
    /// The decision for `service` receiving `name` v`version` under `policy`.
    pub fn get(
        &mut self,
        policy: &Arc<Policy>,
        service: &Arc<str>,
        name: &Arc<str>,
        version: u32,
    ) -> Decision {
        if reset_if_changed(&mut self.policy, policy, &mut self.entries, &mut self.len) {
            self.last = None;
        }
        if let Some(((s, n, v), d)) = &self.last
            && *v == version
            && s == service
            && n == name
        {
            return d.clone();
        }
        let key = (service.clone(), name.clone(), version);
        let d = match self.entries.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = policy.check_receive(service, name, version);
                self.len += 1;
                self.entries.insert(key.clone(), d.clone());
                d
            }
        };
        self.last = Some((key, d.clone()));
        d
    }
}

/// Empties `entries` when the policy changed or the cache is full; true if it did.
fn reset_if_changed<K, V>(
    cached: &mut Option<Arc<Policy>>,
    current: &Arc<Policy>,
    entries: &mut HashMap<K, V>,
    len: &mut usize,
) -> bool {
    let same = cached.as_ref().is_some_and(|p| Arc::ptr_eq(p, current));
    if !same || *len >= MAX_ENTRIES {
        entries.clear();
        *len = 0;
        *cached = Some(current.clone());
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["todos.list"]
[services.todo]
id = "spiffe://example.org/svc/todo"
receive = ["todos.list"]
"#;

    fn policy(src: &str) -> Arc<Policy> {
        Arc::new(Policy::parse(src, "test.toml").unwrap())
    }

    #[test]
    fn answers_like_the_policy_and_follows_a_reload() {
        let p1 = policy(POLICY);
        let mut c = SendCache::default();
        assert!(c.get(&p1, "web", "todos.list", 1).decision.allowed);
        assert_eq!(&*c.get(&p1, "web", "todos.list", 1).receivers[0], "todo");
        assert!(!c.get(&p1, "web", "todos.create", 1).decision.allowed);
        let p2 = policy(&POLICY.replace("send = [\"todos.list\"]", "send = []"));
        assert!(!c.get(&p2, "web", "todos.list", 1).decision.allowed, "a reload must not serve stale allows");

        let mut r = ReceiveCache::default();
        let (todo, name): (Arc<str>, Arc<str>) = ("todo".into(), "todos.list".into());
        assert!(r.get(&p1, &todo, &name, 1).allowed);
        assert!(r.get(&p1, &todo, &name, 1).allowed);
        let p3 = policy(&POLICY.replace("receive = [\"todos.list\"]", "receive = []"));
        assert!(!r.get(&p3, &todo, &name, 1).allowed, "revocation applies at once");
    }

    #[test]
    fn the_last_answer_is_only_given_again_for_the_same_question() {
        let both = POLICY.replace("send = [\"todos.list\"]", "send = [\"todos.list@1\", \"todos.done\"]");
        let p1 = policy(&both);
        let mut c = SendCache::default();
        assert!(c.get(&p1, "web", "todos.list", 1).decision.allowed);
        assert!(!c.get(&p1, "web", "todos.list", 2).decision.allowed, "another version is another question");
        assert!(c.get(&p1, "web", "todos.list", 1).decision.allowed);
        assert!(!c.get(&p1, "web", "todos.lis", 1).decision.allowed, "another name is another question");
        assert!(c.get(&p1, "web", "todos.done", 1).decision.allowed);
        let p2 = policy(POLICY);
        assert!(
            !c.get(&p2, "web", "todos.done", 1).decision.allowed,
            "a reload must not serve the last answer"
        );

        let mut r = ReceiveCache::default();
        let (todo, web, name): (Arc<str>, Arc<str>, Arc<str>) =
            ("todo".into(), "web".into(), "todos.list".into());
        assert!(r.get(&p2, &todo, &name, 1).allowed);
        assert!(!r.get(&p2, &web, &name, 1).allowed, "another service is another question");
        assert!(r.get(&p2, &todo, &Arc::from("todos.list"), 1).allowed, "equal names are the same question");
        assert!(!r.get(&p2, &todo, &Arc::from("todos.done"), 1).allowed);
    }

    #[test]
    fn is_bounded() {
        let p = policy(POLICY);
        let mut c = SendCache::default();
        for i in 0..(MAX_ENTRIES * 2) {
            c.get(&p, "web", &format!("n.{i}"), 1);
        }
        assert!(c.len <= MAX_ENTRIES);
    }
}
