//! The parsed policy: services, their rules, explicit denies, per-name settings.
//!
//! A [`Policy`] is immutable once built by the parser (`parse.rs`), which
//! is the only place that constructs one; every type here can only hold
//! validated values. A reload builds a new `Policy` and swaps it whole.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use crate::policy::decide::DecisionCache;
use crate::policy::diagnostic::{Diagnostic, Location};
use crate::policy::limits::Rate;
use crate::policy::pattern::Pattern;

/// Which side of a message a rule governs.
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub enum Direction {
    /// The service emits the name (checked when it sends).
    Send,
    /// The service is handed the name (checked at every delivery).
    Receive,
}

impl Direction {
    /// `"send"` or `"receive"`, as in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Receive => "receive",
        }
    }
}

/// One allow or deny pattern and where it was written.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The pattern.
    pub pattern: Pattern,
    /// Where the pattern's string starts in the file.
    pub location: Location,
    /// The byte span of the quoted pattern in the file.
    pub span: Range<usize>,
    /// How decisions name this rule: `FILE:LINE:COL PATTERN`
    /// (or `FILE:LINE:COL deny PATTERN (reason)` for a deny).
    pub label: Arc<str>,
}

/// A service's identity and permissions.
#[derive(Clone, Debug)]
pub struct ServiceRules {
    /// The service name (the key under `[services]`).
    pub name: Arc<str>,
    /// Its identity, `spiffe://<trust_domain>/svc/<name>`.
    pub id: String,
    /// Names it may send.
    pub send: Vec<Rule>,
    /// Names it may receive.
    pub receive: Vec<Rule>,
    /// Largest payload it may send, if limited.
    pub max_size: Option<u64>,
    /// Its send rate, if limited.
    pub rate: Option<Rate>,
    /// Where `[services.<name>]` is.
    pub location: Location,
}

impl ServiceRules {
    /// The rules for one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Send => &self.send,
            Direction::Receive => &self.receive,
        }
    }
}

/// An explicit `[[deny]]`: always wins over an allow.
#[derive(Clone, Debug)]
pub struct DenyRule {
    /// Applies to every service (`"*"` in `services`).
    pub all_services: bool,
    /// The services it names (when not all).
    pub services: Vec<Arc<str>>,
    /// Services exempt from it.
    pub except: Vec<Arc<str>>,
    /// Names the services may not send.
    pub send: Vec<Rule>,
    /// Names the services may not receive.
    pub receive: Vec<Rule>,
    /// Why, for reviewers and in decisions.
    pub reason: Option<String>,
    /// Where `[[deny]]` is.
    pub location: Location,
}

impl DenyRule {
    /// Whether the deny applies to `service`.
    pub fn applies_to(&self, service: &str) -> bool {
        let named = self.all_services || self.services.iter().any(|s| &**s == service);
        named && !self.except.iter().any(|s| &**s == service)
    }

    /// The rules for one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Send => &self.send,
            Direction::Receive => &self.receive,
        }
    }
}

/// Settings for every name matching a `[messages."<pattern>"]` key.
#[derive(Clone, Debug)]
pub struct MessageSettings {
    /// The names it applies to (no version suffix).
    pub pattern: Pattern,
    /// Largest payload for these names.
    pub max_size: Option<u64>,
    /// Where the table is.
    pub location: Location,
}

/// A parsed, validated policy. Immutable; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    pub(crate) file_name: String,
    pub(crate) sha256: String,
    pub(crate) serial: u64,
    pub(crate) trust_domain: String,
    /// Sorted by name.
    pub(crate) services: Vec<ServiceRules>,
    pub(crate) by_name: HashMap<Arc<str>, usize>,
    pub(crate) by_identity: HashMap<String, usize>,
    pub(crate) denies: Vec<DenyRule>,
    pub(crate) messages: Vec<MessageSettings>,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) default_deny: Arc<str>,
    pub(crate) cache: DecisionCache,
}

impl Policy {
    /// SHA-256 of the exact file bytes, lowercase hex.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256
    }

    /// The policy's serial (`[meta] serial`, default 0).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The trust domain every identity lives in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The file name given to the parser (used in rule labels).
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// The service whose identity is `uri`, if any.
    pub fn service_for_identity(&self, uri: &str) -> Option<&str> {
        self.by_identity.get(uri).map(|&i| &*self.services[i].name)
    }

    /// Every service, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRules> {
        self.services.iter()
    }

    /// One service by name.
    pub fn service(&self, name: &str) -> Option<&ServiceRules> {
        self.service_index(name).map(|i| &self.services[i])
    }

    /// The explicit denies, in file order.
    pub fn denies(&self) -> &[DenyRule] {
        &self.denies
    }

    /// The `[messages]` settings, in file order.
    pub fn messages(&self) -> &[MessageSettings] {
        &self.messages
    }

    /// Warnings found while parsing (the policy loaded anyway).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    pub(crate) fn service_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}
