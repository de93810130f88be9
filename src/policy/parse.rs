//! From TOML text to a validated [`Policy`], collecting every problem at once.
//!
//! The document is read with `toml`'s spanned `DeTable` and walked by hand
//! (no serde derive), so every key and value keeps its byte span and becomes
//! `FILE:LINE:COL` in a [`Diagnostic`]. This module never stops at the first
//! problem, and never accepts a file with an error in it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::policy::decide::DecisionCache;
use crate::policy::diagnostic::{Diagnostic, Severity, SourceMap, did_you_mean};
use crate::policy::limits::{Rate, parse_size};
use crate::policy::model::{DenyRule, Direction, MessageSettings, Policy, Rule, ServiceRules};
use crate::policy::pattern::{Pattern, valid_token};

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["meta", "services", "messages", "deny"];
const META_KEYS: &[&str] = &["trust_domain", "serial"];
const SERVICE_KEYS: &[&str] = &["id", "send", "receive", "limits"];
const LIMIT_KEYS: &[&str] = &["max_size", "rate", "burst"];
const MESSAGE_KEYS: &[&str] = &["max_size"];
const DENY_KEYS: &[&str] = &["services", "send", "receive", "except", "reason"];
/// Problems reported at most; the rest are counted in one last diagnostic.
const MAX_DIAGNOSTICS: usize = 100;

/// Parses and validates `source`; on failure returns every diagnostic
/// (errors and warnings), sorted by position.
pub(crate) fn parse_policy(source: &str, file_name: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut cx =
        Cx { map: SourceMap::new(file_name, source), diags: Vec::new(), omitted: 0, file: file_name };
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            let hint = if message.contains("duplicate key") {
                "each service, table and key may appear only once; merge the two"
            } else {
                "see docs/POLICY.md for the file format"
            };
            cx.error(span, message, hint);
        }
        return Err(cx.finish());
    }
    let policy = cx.policy(root.get_ref(), source, file_name);
    let diags = cx.finish();
    match policy {
        Some(mut p) if !diags.iter().any(Diagnostic::is_error) => {
            p.warnings = diags;
            Ok(p)
        }
        _ => Err(diags),
    }
}

struct Cx<'a> {
    map: SourceMap<'a>,
    diags: Vec<Diagnostic>,
    /// Problems found past [`MAX_DIAGNOSTICS`].
    omitted: usize,
    file: &'a str,
}

/// A service while it is being built, with the spans the later checks need.
struct Draft {
    rules: ServiceRules,
    id_span: Range<usize>,
    key_span: Range<usize>,
    /// Whether the table has `send` or `receive` at all (even if invalid).
    declares_rules: bool,
}

impl<'a> Cx<'a> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        self.push(Severity::Error, span, message, hint);
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        self.push(Severity::Warning, span, message, hint);
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        if self.diags.len() >= MAX_DIAGNOSTICS {
            self.omitted += 1;
            return;
        }
        let d = self.map.diagnostic(severity, span, message, hint);
        self.diags.push(d);
    }

    fn finish(mut self) -> Vec<Diagnostic> {
        self.diags.sort_by_key(|d| (d.location, d.severity));
        self.diags.dedup();
        if self.omitted > 0 {
            // Still an error: a file this broken is never accepted.
            let end = self.map.source_len();
            let more = format!("{} more problems not shown (at most {MAX_DIAGNOSTICS} are)", self.omitted);
            let d = self.map.diagnostic(
                Severity::Error,
                end..end,
                more,
                "fix the problems above and check again",
            );
            self.diags.push(d);
        }
        self.diags
    }

    fn policy(&mut self, root: &DeTable<'_>, source: &str, file_name: &str) -> Option<Policy> {
        self.unknown_keys(root, TOP_KEYS, "at the top level");
        let (trust_domain, serial) = self.meta(root)?;
        let mut drafts = self.services(root, &trust_domain);
        self.duplicate_identities(&drafts);
        let names: Vec<Arc<str>> = drafts.iter().map(|d| d.rules.name.clone()).collect();
        let messages = self.messages(root);
        let denies = self.denies(root, &names);
        for draft in &drafts {
            self.shadowed(&draft.rules, &denies);
            if !draft.declares_rules {
                self.warn(
                    draft.key_span.clone(),
                    format!(
                        "service \"{}\" has no rules: it may connect but can neither send nor receive",
                        draft.rules.name
                    ),
                    "add send/receive patterns, or remove the service",
                );
            }
        }
        drafts.sort_by(|a, b| a.rules.name.cmp(&b.rules.name));
        let services: Vec<ServiceRules> = drafts.into_iter().map(|d| d.rules).collect();
        let by_name = services.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let by_identity = services.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        Some(Policy {
            file_name: file_name.to_string(),
            sha256: sha256_hex(source.as_bytes()),
            serial,
            trust_domain,
            services,
            by_name,
            by_identity,
            denies,
            messages,
            warnings: Vec::new(),
            default_deny: Arc::from("default deny (no rule matches)"),
            cache: DecisionCache::default(),
        })
    }

    fn meta(&mut self, root: &DeTable<'_>) -> Option<(String, u64)> {
        let Some((key, value)) = root.get_key_value("meta") else {
            self.error(
                0..0,
                "missing [meta] table",
                "start the file with [meta] and trust_domain = \"example.org\"",
            );
            return None;
        };
        let table = self.table(value, "[meta]")?;
        self.unknown_keys(table, META_KEYS, "in [meta]");
        let serial = match table.get("serial") {
            Some(v) => match self.integer(v, "serial") {
                Some(n) if n >= 0 => n as u64,
                Some(_) => {
                    self.error(v.span(), "serial must not be negative", "use 0 or a positive integer");
                    0
                }
                None => 0,
            },
            None => 0,
        };
        let Some(td) = table.get("trust_domain") else {
            self.error(key.span(), "missing trust_domain in [meta]", "add trust_domain = \"example.org\"");
            return None;
        };
        let td_text = self.string(td, "trust_domain")?;
        let valid = !td_text.is_empty()
            && td_text
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-')));
        if !valid {
            self.error(
                td.span(),
                format!("invalid trust domain \"{td_text}\""),
                "a trust domain is a lowercase DNS name such as \"example.org\"",
            );
            return None;
        }
        Some((td_text.to_string(), serial))
    }

    fn services(&mut self, root: &DeTable<'_>, trust_domain: &str) -> Vec<Draft> {
        let Some(services) = root.get("services") else {
            return Vec::new();
        };
        let Some(table) = self.table(services, "[services]") else {
            return Vec::new();
        };
        let mut drafts = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if !valid_token(name) {
                let hint = if valid_token(&name.to_ascii_lowercase()) {
                    format!("service names are lowercase: write \"{}\"", name.to_ascii_lowercase())
                } else {
                    "service names use only a-z, 0-9, \"_\" and \"-\"".to_string()
                };
                self.error(key.span(), format!("invalid service name \"{name}\""), hint);
                continue;
            }
            if let Some(draft) = self.service(name, key.span(), value, trust_domain) {
                drafts.push(draft);
            }
        }
        drafts
    }

    fn service(&mut self, name: &str, key_span: Range<usize>, value: &Value<'_>, td: &str) -> Option<Draft> {
        let table = self.table(value, &format!("[services.{name}]"))?;
        self.unknown_keys(table, SERVICE_KEYS, &format!("in [services.{name}]"));
        let expected = format!("spiffe://{td}/svc/{name}");
        let (id, id_span) = match table.get("id") {
            None => {
                self.error(
                    key_span.clone(),
                    format!("service \"{name}\" has no id"),
                    format!("add id = \"{expected}\""),
                );
                return None;
            }
            Some(v) => (self.string(v, "id")?.to_string(), v.span()),
        };
        self.identity(&id, id_span.clone(), name, td, &expected);
        let send = self.rules(table.get("send"), &format!("services.{name}.send"), None);
        let receive = self.rules(table.get("receive"), &format!("services.{name}.receive"), None);
        let (max_size, rate) = match table.get("limits") {
            Some(v) => self.limits(v, name),
            None => (None, None),
        };
        let location = self.map.location(key_span.start);
        Some(Draft {
            rules: ServiceRules { name: Arc::from(name), id, send, receive, max_size, rate, location },
            id_span,
            key_span,
            declares_rules: table.contains_key("send") || table.contains_key("receive"),
        })
    }

    fn identity(&mut self, id: &str, span: Range<usize>, name: &str, td: &str, expected: &str) {
        let Some(rest) = id.strip_prefix("spiffe://") else {
            self.error(
                span,
                format!("identity \"{id}\" is not a SPIFFE id"),
                format!("write \"{expected}\""),
            );
            return;
        };
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain != td {
            self.error(
                span,
                format!("identity \"{id}\" is outside the trust domain \"{td}\""),
                format!("every identity must be spiffe://{td}/svc/<service>; write \"{expected}\""),
            );
        } else if path != format!("svc/{name}") {
            self.error(
                span,
                format!("identity \"{id}\" does not name service \"{name}\""),
                format!("write \"{expected}\""),
            );
        }
    }

    fn duplicate_identities(&mut self, drafts: &[Draft]) {
        let mut sorted: Vec<&Draft> = drafts.iter().collect();
        sorted.sort_by_key(|d| d.id_span.start);
        let mut seen: HashMap<&str, &Draft> = HashMap::new();
        for d in sorted {
            if let Some(first) = seen.get(d.rules.id.as_str()) {
                let at = self.map.location(first.id_span.start);
                self.error(
                    d.id_span.clone(),
                    format!(
                        "duplicate identity \"{}\": already used by service \"{}\" at {at}",
                        d.rules.id, first.rules.name
                    ),
                    "one identity belongs to exactly one service",
                );
            } else {
                seen.insert(&d.rules.id, d);
            }
        }
    }

    fn rules(&mut self, value: Option<&Value<'_>>, what: &str, deny_suffix: Option<&str>) -> Vec<Rule> {
        let Some(value) = value else {
            return Vec::new();
        };
        let mut rules = Vec::new();
        for (text, span) in self.strings(value, what) {
            match Pattern::parse(&text) {
                Ok(pattern) => {
                    let location = self.map.location(span.start);
                    let label = match deny_suffix {
                        Some(suffix) => format!("{}:{location} deny {pattern}{suffix}", self.file),
                        None => format!("{}:{location} {pattern}", self.file),
                    };
                    rules.push(Rule { pattern, location, span, label: Arc::from(label) });
                }
                Err(e) => self.error(span, format!("bad pattern in {what}: {}", e.message), e.hint),
            }
        }
        rules
    }

    fn limits(&mut self, value: &Value<'_>, name: &str) -> (Option<u64>, Option<Rate>) {
        let Some(table) = self.table(value, &format!("services.{name}.limits")) else {
            return (None, None);
        };
        self.unknown_keys(table, LIMIT_KEYS, &format!("in services.{name}.limits"));
        let max_size = table.get("max_size").and_then(|v| self.size(v));
        let positive = |cx: &mut Self, key: &str| -> Option<u32> {
            let v = table.get(key)?;
            let n = cx.integer(v, key)?;
            match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    cx.error(
                        v.span(),
                        format!("{key} must be between 1 and {}", u32::MAX),
                        "rate is messages per second",
                    );
                    None
                }
            }
        };
        let rate = positive(self, "rate");
        let burst = positive(self, "burst");
        let rate = match (rate, burst) {
            (Some(per_second), burst) => Some(Rate { per_second, burst: burst.unwrap_or(per_second) }),
            (None, Some(_)) => {
                if let Some(v) = table.get("burst") {
                    self.error(v.span(), "burst without rate", "add rate = <messages per second>");
                }
                None
            }
            (None, None) => None,
        };
        (max_size, rate)
    }

    fn messages(&mut self, root: &DeTable<'_>) -> Vec<MessageSettings> {
        let Some(value) = root.get("messages") else {
            return Vec::new();
        };
        let Some(table) = self.table(value, "[messages]") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in table.iter() {
            let text: &str = key.get_ref();
            let pattern = match Pattern::parse(text) {
                Ok(p) if !p.versions().is_any() => {
                    self.error(
                        key.span(),
                        format!("[messages] keys take no version: \"{text}\""),
                        "remove the @ suffix",
                    );
                    continue;
                }
                Ok(p) => p,
                Err(e) => {
                    self.error(key.span(), format!("bad pattern in [messages]: {}", e.message), e.hint);
                    continue;
                }
            };
            let Some(settings) = self.table(value, &format!("[messages.\"{text}\"]")) else {
                continue;
            };
            self.unknown_keys(settings, MESSAGE_KEYS, &format!("in [messages.\"{text}\"]"));
            let max_size = settings.get("max_size").and_then(|v| self.size(v));
            out.push(MessageSettings { pattern, max_size, location: self.map.location(key.span().start) });
        }
        out.sort_by_key(|m| m.location);
        out
    }

    fn denies(&mut self, root: &DeTable<'_>, names: &[Arc<str>]) -> Vec<DenyRule> {
        let Some(value) = root.get("deny") else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                "deny must be an array of tables",
                "write each deny as a [[deny]] table",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let Some(table) = self.table(item, "[[deny]]") else {
                continue;
            };
            self.unknown_keys(table, DENY_KEYS, "in [[deny]]");
            let location = self.map.location(item.span().start);
            let reason = table.get("reason").and_then(|v| self.string(v, "reason")).map(str::to_string);
            let suffix = reason.as_ref().map_or(String::new(), |r| format!(" ({r})"));
            let (all_services, services) = match table.get("services") {
                Some(v) => self.service_list(v, names, true, "deny.services"),
                None => {
                    self.error(
                        item.span(),
                        "[[deny]] without services",
                        "add services = [\"*\"] or a list of service names",
                    );
                    (false, Vec::new())
                }
            };
            let except = match table.get("except") {
                Some(v) => self.service_list(v, names, false, "deny.except").1,
                None => Vec::new(),
            };
            let send = self.rules(table.get("send"), "deny.send", Some(&suffix));
            let receive = self.rules(table.get("receive"), "deny.receive", Some(&suffix));
            if send.is_empty()
                && receive.is_empty()
                && !table.contains_key("send")
                && !table.contains_key("receive")
            {
                self.error(
                    item.span(),
                    "[[deny]] denies nothing",
                    "add send = [...] and/or receive = [...] patterns",
                );
            }
            out.push(DenyRule { all_services, services, except, send, receive, reason, location });
        }
        out
    }

    fn service_list(
        &mut self,
        value: &Value<'_>,
        names: &[Arc<str>],
        star: bool,
        what: &str,
    ) -> (bool, Vec<Arc<str>>) {
        let mut all = false;
        let mut out = Vec::new();
        for (text, span) in self.strings(value, what) {
            if star && text == "*" {
                all = true;
            } else if let Some(n) = names.iter().find(|n| ***n == *text) {
                out.push(n.clone());
            } else {
                let hint = match did_you_mean(&text, names.iter().map(|n| &**n)) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None if star => {
                        "use a service name from [services], or \"*\" for every service".to_string()
                    }
                    None => "use a service name from [services]".to_string(),
                };
                self.error(span, format!("unknown service \"{text}\" in {what}"), hint);
            }
        }
        (all, out)
    }

    /// Allow rules that a deny for the same service fully covers can never
    /// allow anything: almost always a mistake a reviewer must see.
    fn shadowed(&mut self, svc: &ServiceRules, denies: &[DenyRule]) {
        for direction in [Direction::Send, Direction::Receive] {
            for rule in svc.rules(direction) {
                let cover = denies
                    .iter()
                    .filter(|d| d.applies_to(&svc.name))
                    .flat_map(|d| d.rules(direction))
                    .find(|r| r.pattern.covers(&rule.pattern));
                if let Some(deny) = cover {
                    let span = rule.span.clone();
                    self.error(
                        span,
                        format!(
                            "no name can match this rule: \"{}\" in services.{}.{} is always denied by the deny at {} (\"{}\")",
                            rule.pattern,
                            svc.name,
                            direction.as_str(),
                            deny.location,
                            deny.pattern
                        ),
                        "remove the rule, or exempt the service in that deny with except = [...]",
                    );
                }
            }
        }
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], place: &str) {
        for key in table.keys() {
            let k: &str = key.get_ref();
            if known.contains(&k) {
                continue;
            }
            let hint = match did_you_mean(k, known.iter().copied()) {
                Some(s) => format!("did you mean \"{s}\"?"),
                None => format!("known keys here: {}", known.join(", ")),
            };
            self.error(key.span(), format!("unknown key \"{k}\" {place}"), hint);
        }
    }

    fn table<'v, 'i>(&mut self, value: &'v Value<'i>, what: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    value.span(),
                    format!("{what} must be a table, not a {}", other.type_str()),
                    "see docs/POLICY.md for the file format",
                );
                None
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value<'_>, what: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                self.error(
                    value.span(),
                    format!("{what} must be a string, not a {}", other.type_str()),
                    "put the value in double quotes",
                );
                None
            }
        }
    }

    fn integer(&mut self, value: &Value<'_>, what: &str) -> Option<i64> {
        match value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(value.span(), format!("{what} is out of range"), "use a smaller number");
                    None
                }
            },
            other => {
                self.error(
                    value.span(),
                    format!("{what} must be an integer, not a {}", other.type_str()),
                    "write a whole number without quotes",
                );
                None
            }
        }
    }

    fn size(&mut self, value: &Value<'_>) -> Option<u64> {
        match value.get_ref() {
            DeValue::Integer(_) => match self.integer(value, "max_size") {
                Some(n) if n > 0 => Some(n as u64),
                Some(_) => {
                    self.error(value.span(), "max_size must be positive", "write e.g. \"256KiB\"");
                    None
                }
                None => None,
            },
            DeValue::String(s) => match parse_size(s) {
                Ok(0) => {
                    self.error(value.span(), "max_size must be positive", "write e.g. \"256KiB\"");
                    None
                }
                Ok(n) => Some(n),
                Err(e) => {
                    self.error(value.span(), e.to_string(), "units: B, KiB, MiB, GiB");
                    None
                }
            },
            other => {
                self.error(
                    value.span(),
                    format!("max_size must be a size such as \"256KiB\", not a {}", other.type_str()),
                    "write e.g. \"256KiB\"",
                );
                None
            }
        }
    }

    /// An array of strings, each with its span; reports anything else.
    fn strings(&mut self, value: &Value<'_>, what: &str) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                format!("{what} must be an array of strings"),
                "write e.g. [\"todos.list\"]",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                other => self.error(
                    item.span(),
                    format!("{what} must contain only strings, not a {}", other.type_str()),
                    "put each name in double quotes",
                ),
            }
        }
        out
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
