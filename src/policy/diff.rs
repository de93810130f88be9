//! `diff`: what a policy change grants and takes away, semantically.
//!
//! Both policies are asked the same questions for a set of sample names and
//! versions derived from every pattern in either file (wildcards filled in,
//! version-range boundaries probed), so a reordering or a rewrite that keeps
//! meaning shows no change, and a widening shows the concrete names it lets
//! through. Samples are evidence, not a proof of equivalence: the rules added
//! and removed are listed too. Pure; never prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::policy::model::{Direction, Policy};
use crate::policy::pattern::{Pattern, Token};

/// Which policy a summary describes.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The file name.
    pub file: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its serial.
    pub serial: u64,
    /// Its trust domain.
    pub trust_domain: String,
}

/// A sample name whose decision changed, and the versions where it did.
#[derive(Clone, Debug, Eq, Ord, PartialEq, PartialOrd, Serialize)]
pub struct Sample {
    /// The message name.
    pub name: String,
    /// The sampled versions where it changed; `None`: every sampled version.
    pub versions: Option<Vec<u32>>,
    /// The rule that decides in the new policy (for gains) or decided in
    /// the old one (for losses).
    pub rule: String,
}

/// Gains and losses for one service in one direction.
#[derive(Clone, Debug, Serialize)]
pub struct PermissionChange {
    /// The service.
    pub service: String,
    /// `"send"` or `"receive"`.
    pub direction: &'static str,
    /// Names now allowed that were denied.
    pub gained: Vec<Sample>,
    /// Names now denied that were allowed.
    pub lost: Vec<Sample>,
    /// Allow patterns only in the new policy.
    pub rules_added: Vec<String>,
    /// Allow patterns only in the old policy.
    pub rules_removed: Vec<String>,
}

/// The semantic difference between two policies.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyDiff {
    /// The old policy.
    pub old: Summary,
    /// The new policy.
    pub new: Summary,
    /// Services only in the new policy.
    pub services_added: Vec<String>,
    /// Services only in the old policy.
    pub services_removed: Vec<String>,
    /// Services whose identity changed: (service, old id, new id).
    pub identities_changed: Vec<(String, String, String)>,
    /// Per service and direction, what changed.
    pub changes: Vec<PermissionChange>,
    /// Changed limits, one readable line each.
    pub limits_changed: Vec<String>,
}

impl PolicyDiff {
    /// Whether any permission, service, identity or limit changed.
    pub fn is_empty(&self) -> bool {
        self.services_added.is_empty()
            && self.services_removed.is_empty()
            && self.identities_changed.is_empty()
            && self.changes.is_empty()
            && self.limits_changed.is_empty()
    }
}

/// Compares `old` with `new`.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let old_names: BTreeSet<&str> = old.services().map(|s| &*s.name).collect();
    let new_names: BTreeSet<&str> = new.services().map(|s| &*s.name).collect();
    let all: BTreeSet<&str> = old_names.union(&new_names).copied().collect();
    let (names, versions) = samples(old, new);

    let mut changes = Vec::new();
    for service in &all {
        for direction in [Direction::Send, Direction::Receive] {
            let mut gained: BTreeMap<&str, (Vec<u32>, String)> = BTreeMap::new();
            let mut lost: BTreeMap<&str, (Vec<u32>, String)> = BTreeMap::new();
            for name in &names {
                for &v in &versions {
                    let before = old.check(direction, service, name, v);
                    let after = new.check(direction, service, name, v);
                    if !before.allowed && after.allowed {
                        gained.entry(name).or_insert_with(|| (Vec::new(), after.rule.to_string())).0.push(v);
                    } else if before.allowed && !after.allowed {
                        lost.entry(name).or_insert_with(|| (Vec::new(), before.rule.to_string())).0.push(v);
                    }
                }
            }
            let rules = |p: &Policy| -> BTreeSet<String> {
                p.service(service)
                    .map(|s| s.rules(direction).iter().map(|r| r.pattern.to_string()).collect())
                    .unwrap_or_default()
            };
            let (before, after) = (rules(old), rules(new));
            let change = PermissionChange {
                service: service.to_string(),
                direction: direction.as_str(),
                gained: to_samples(gained, versions.len()),
                lost: to_samples(lost, versions.len()),
                rules_added: after.difference(&before).cloned().collect(),
                rules_removed: before.difference(&after).cloned().collect(),
            };
            let empty = change.gained.is_empty()
                && change.lost.is_empty()
                && change.rules_added.is_empty()
                && change.rules_removed.is_empty();
            if !empty {
                changes.push(change);
            }
        }
    }

    let mut identities_changed = Vec::new();
    let mut limits_changed = Vec::new();
    for service in old_names.intersection(&new_names) {
        let (Some(a), Some(b)) = (old.service(service), new.service(service)) else { continue };
        if a.id != b.id {
            identities_changed.push((service.to_string(), a.id.clone(), b.id.clone()));
        }
        if a.max_size != b.max_size {
            limits_changed.push(format!("{service}: max_size {} -> {}", show(a.max_size), show(b.max_size)));
        }
        if a.rate != b.rate {
            let r = |r: Option<crate::policy::Rate>| {
                r.map_or("none".to_string(), |r| format!("{}/s burst {}", r.per_second, r.burst))
            };
            limits_changed.push(format!("{service}: rate {} -> {}", r(a.rate), r(b.rate)));
        }
    }
    let msg = |p: &Policy| -> BTreeMap<String, Option<u64>> {
        p.messages().iter().map(|m| (m.pattern.to_string(), m.max_size)).collect()
    };
    let (ma, mb) = (msg(old), msg(new));
    for key in ma.keys().chain(mb.keys()).collect::<BTreeSet<_>>() {
        let (a, b) = (ma.get(key).copied().flatten(), mb.get(key).copied().flatten());
        if a != b {
            limits_changed.push(format!("messages \"{key}\": max_size {} -> {}", show(a), show(b)));
        }
    }

    PolicyDiff {
        old: summary(old),
        new: summary(new),
        services_added: new_names.difference(&old_names).map(|s| s.to_string()).collect(),
        services_removed: old_names.difference(&new_names).map(|s| s.to_string()).collect(),
        identities_changed,
        changes,
        limits_changed,
    }
}

fn show(size: Option<u64>) -> String {
    size.map_or("none".to_string(), |s| format!("{s} bytes"))
}

fn summary(p: &Policy) -> Summary {
    Summary {
        file: p.file_name().to_string(),
        sha256: p.sha256_hex().to_string(),
        serial: p.serial(),
        trust_domain: p.trust_domain().to_string(),
    }
}

fn to_samples(map: BTreeMap<&str, (Vec<u32>, String)>, all: usize) -> Vec<Sample> {
    map.into_iter()
        .map(|(name, (versions, rule))| Sample {
            name: name.to_string(),
            versions: if versions.len() == all { None } else { Some(versions) },
            rule,
        })
        .collect()
}

/// Sample names and versions covering every pattern of both policies.
fn samples(old: &Policy, new: &Policy) -> (BTreeSet<String>, BTreeSet<u32>) {
    let mut patterns: Vec<&Pattern> = Vec::new();
    for p in [old, new] {
        for s in p.services() {
            patterns.extend(s.send.iter().chain(&s.receive).map(|r| &r.pattern));
        }
        for d in p.denies() {
            patterns.extend(d.send.iter().chain(&d.receive).map(|r| &r.pattern));
        }
    }
    let mut names = BTreeSet::new();
    let mut versions: BTreeSet<u32> = [0, 1, u32::MAX].into();
    for p in patterns {
        let base = p.sample_name();
        if matches!(p.tokens().last(), Some(Token::Rest)) {
            names.insert(format!("{base}.x"));
        }
        names.insert(base);
        let r = p.versions();
        if !r.is_any() {
            versions.extend([r.min.saturating_sub(1), r.min, r.max, r.max.saturating_add(1)]);
        }
    }
    (names, versions)
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.versions {
            let list: Vec<String> = v.iter().map(u32::to_string).collect();
            write!(f, " (versions {})", list.join(", "))?;
        }
        write!(f, "  [{}]", self.rule)
    }
}

impl fmt::Display for PolicyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, s) in [("old", &self.old), ("new", &self.new)] {
            writeln!(f, "{label}: {} (serial {}, sha256 {})", s.file, s.serial, s.sha256)?;
        }
        if self.old.trust_domain != self.new.trust_domain {
            writeln!(f, "trust domain: {} -> {}", self.old.trust_domain, self.new.trust_domain)?;
        }
        if self.is_empty() {
            return write!(f, "no permission changes");
        }
        for s in &self.services_added {
            writeln!(f, "service added: {s}")?;
        }
        for s in &self.services_removed {
            writeln!(f, "service removed: {s}")?;
        }
        for (s, a, b) in &self.identities_changed {
            writeln!(f, "identity changed: {s}: {a} -> {b}")?;
        }
        for c in &self.changes {
            writeln!(f, "{} {}:", c.service, c.direction)?;
            for s in &c.gained {
                writeln!(f, "  + {s}")?;
            }
            for s in &c.lost {
                writeln!(f, "  - {s}")?;
            }
            for r in &c.rules_added {
                writeln!(f, "  rule added:   \"{r}\"")?;
            }
            for r in &c.rules_removed {
                writeln!(f, "  rule removed: \"{r}\"")?;
            }
        }
        for l in &self.limits_changed {
            writeln!(f, "limit changed: {l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(body: &str, file: &str) -> Policy {
        let src = format!("[meta]\ntrust_domain = \"example.org\"\n{body}");
        Policy::parse(&src, file).unwrap()
    }

    const WEB: &str = "[services.web]\nid = \"spiffe://example.org/svc/web\"\n";
    const TODO: &str = "[services.todo]\nid = \"spiffe://example.org/svc/todo\"\n";

    #[test]
    fn same_meaning_no_changes() {
        let a = policy(&format!("{WEB}send = [\"a.b\", \"a.c\"]\n"), "a.toml");
        let b = policy(&format!("{WEB}send = [\"a.c\", \"a.b\"]\n"), "b.toml");
        let d = diff(&a, &b);
        assert!(d.is_empty(), "{d}");
        assert!(d.to_string().ends_with("no permission changes"));
    }

    #[test]
    fn gains_losses_and_services() {
        let a = policy(&format!("{WEB}send = [\"todos.*\"]\nreceive = [\"todos.listing\"]\n"), "a.toml");
        let b = policy(
            &format!(
                "{WEB}send = [\"todos.list\", \"admin.>\"]\nreceive = [\"todos.listing\"]\n{TODO}receive = [\"todos.list\"]\n"
            ),
            "b.toml",
        );
        let d = diff(&a, &b);
        assert_eq!(d.services_added, ["todo"]);
        let web_send = d.changes.iter().find(|c| c.service == "web" && c.direction == "send").unwrap();
        let gained: Vec<&str> = web_send.gained.iter().map(|s| s.name.as_str()).collect();
        let lost: Vec<&str> = web_send.lost.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(gained, ["admin.x", "admin.x.x"]);
        assert_eq!(lost, ["todos.listing", "todos.x"]);
        assert_eq!(web_send.rules_added, ["admin.>", "todos.list"]);
        assert_eq!(web_send.rules_removed, ["todos.*"]);
        let todo = d.changes.iter().find(|c| c.service == "todo").unwrap();
        assert_eq!(todo.gained[0].name, "todos.list");
        assert!(!d.changes.iter().any(|c| c.service == "web" && c.direction == "receive"));
        let text = d.to_string();
        assert!(text.contains("service added: todo"), "{text}");
        assert!(text.contains("  + admin.x  [b.toml:5:23 admin.>]"), "{text}");
        assert!(text.contains("  - todos.x  [a.toml:5:9 todos.*]"), "{text}");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["services_added"][0], "todo");
    }

    #[test]
    fn version_narrowing_and_denies() {
        let a = policy(&format!("{WEB}send = [\"a.b\"]\n"), "a.toml");
        let b = policy(
            &format!("{WEB}send = [\"a.b@2,3\"]\n[[deny]]\nservices = [\"*\"]\nsend = [\"a.b@3\"]\n"),
            "b.toml",
        );
        let d = diff(&a, &b);
        let c = &d.changes[0];
        assert!(c.gained.is_empty());
        assert_eq!(c.lost[0].name, "a.b");
        assert_eq!(c.lost[0].versions, Some(vec![0, 1, 3, 4, u32::MAX]));
    }

    #[test]
    fn limits_and_identity() {
        let a = policy(&format!("{WEB}send = [\"a.b\"]\nlimits = {{ rate = 5 }}\n"), "a.toml");
        let b = policy(
            &format!("{WEB}send = [\"a.b\"]\nlimits = {{ rate = 10, burst = 20, max_size = 100 }}\n"),
            "b.toml",
        );
        let d = diff(&a, &b);
        assert_eq!(
            d.limits_changed,
            ["web: max_size none -> 100 bytes", "web: rate 5/s burst 5 -> 10/s burst 20"]
        );
        assert!(d.changes.is_empty());
    }
}
