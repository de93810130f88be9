//! Filtering a log for people: by time, sender, receiver, name pattern, event, decision.
//!
//! Reads lines in file order and hands matching ones to the caller with their
//! exact bytes (so `--json` output still carries verifiable hashes). Name
//! patterns use the policy's wildcards: `*` is one dot-separated segment, `>`
//! the rest (one or more segments). Query never checks the chain: that is
//! [`verify`](super::verify)'s job.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::record::{Decision, Entry, Event};
use super::writer::format_time;

/// Why a query cannot run.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A time bound is not RFC 3339.
    #[error("{0:?} is not an RFC 3339 time (e.g. 2026-11-22T10:00:00Z)")]
    Time(String),
    /// A name pattern is malformed.
    #[error("name pattern {0:?}: {1}")]
    Pattern(String, &'static str),
    /// An event name is unknown.
    #[error("unknown event {0:?}")]
    Event(String),
    /// A decision is neither allow nor deny.
    #[error("decision must be allow or deny, not {0:?}")]
    Decision(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is not an audit line.
    #[error("{path}:{line}: not an audit line: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// Parser message.
        reason: String,
    },
}

/// A message-name pattern with `*` (one segment) and `>` (the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern {
    segments: Vec<String>,
}

impl NamePattern {
    /// Parses `todos.*`, `payments.>`, `user.created`.
    pub fn parse(text: &str) -> Result<Self, QueryError> {
        let bad = |why| QueryError::Pattern(text.to_owned(), why);
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(bad("empty segment"));
        }
        if let Some(i) = segments.iter().position(|s| s == ">")
            && i + 1 != segments.len()
        {
            return Err(bad("'>' must be the last segment"));
        }
        if segments.iter().any(|s| s.len() > 1 && (s.contains('*') || s.contains('>'))) {
            return Err(bad("wildcards stand for whole segments"));
        }
        Ok(NamePattern { segments })
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for seg in &self.segments {
            match (seg.as_str(), parts.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (lit, Some(part)) if lit == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// What to keep. Empty fields keep everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Keep lines at or after this time.
    pub since: Option<String>,
    /// Keep lines before this time.
    pub until: Option<String>,
    /// Sending service (exact).
    pub sender: Option<String>,
    /// Receiving service (exact).
    pub receiver: Option<String>,
    /// Message-name pattern.
    pub name: Option<NamePattern>,
    /// Keep these events (any of them).
    pub events: Vec<Event>,
    /// Keep this decision.
    pub decision: Option<Decision>,
}

impl Filter {
    /// Sets `since` from RFC 3339 text.
    pub fn since(mut self, text: &str) -> Result<Self, QueryError> {
        self.since = Some(normalize_time(text)?);
        Ok(self)
    }

    /// Sets `until` from RFC 3339 text.
    pub fn until(mut self, text: &str) -> Result<Self, QueryError> {
        self.until = Some(normalize_time(text)?);
        Ok(self)
    }

    /// Whether an entry passes.
    pub fn matches(&self, e: &Entry) -> bool {
        // Log times are fixed-width UTC, so text order is time order.
        self.since.as_deref().is_none_or(|t| e.time.as_str() >= t)
            && self.until.as_deref().is_none_or(|t| e.time.as_str() < t)
            && self.sender.as_deref().is_none_or(|s| e.sender.as_deref() == Some(s))
            && self.receiver.as_deref().is_none_or(|r| e.receiver.as_deref() == Some(r))
            && self.name.as_ref().is_none_or(|p| e.name.as_deref().is_some_and(|n| p.matches(n)))
            && (self.events.is_empty() || self.events.iter().any(|ev| ev.as_str() == e.event))
            && self.decision.is_none_or(|d| e.decision.as_deref() == Some(d.as_str()))
    }
}

/// Parses an event name for `--event`.
pub fn parse_event(text: &str) -> Result<Event, QueryError> {
    Event::parse(text).ok_or_else(|| QueryError::Event(text.to_owned()))
}

/// Parses `allow` / `deny`.
pub fn parse_decision(text: &str) -> Result<Decision, QueryError> {
    match text {
        "allow" => Ok(Decision::Allow),
        "deny" => Ok(Decision::Deny),
        _ => Err(QueryError::Decision(text.to_owned())),
    }
}

/// RFC 3339 text in any offset → the log's own fixed-width UTC form.
fn normalize_time(text: &str) -> Result<String, QueryError> {
    OffsetDateTime::parse(text, &Rfc3339).map(format_time).map_err(|_| QueryError::Time(text.to_owned()))
}

/// Calls `each(raw_line, entry)` for every line of `files` that passes `filter`.
pub fn scan(
    files: &[PathBuf],
    filter: &Filter,
    each: &mut dyn FnMut(&[u8], &Entry),
) -> Result<(), QueryError> {
    for path in files {
        let io = |source| QueryError::Io { path: path.clone(), source };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let mut buf = Vec::new();
        let mut number = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
                break;
            }
            number += 1;
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if line.is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_slice(line).map_err(|e| QueryError::Line {
                path: path.clone(),
                line: number,
                reason: e.to_string(),
            })?;
            if filter.matches(&entry) {
                each(line, &entry);
            }
        }
    }
    Ok(())
}

/// Column titles of the table.
pub fn table_header() -> String {
    format!(
        "{:<30} {:>8} {:<16} {:<24} {:<28} {:<6} {:<18} {:>7}",
        "TIME", "SEQ", "EVENT", "NAME", "SENDER -> RECEIVER", "DEC", "RULE", "BYTES"
    )
}

/// One entry as a table row.
pub fn table_row(e: &Entry) -> String {
    let name = match (&e.name, e.version) {
        (Some(n), Some(v)) => format!("{n}@{v}"),
        (Some(n), None) => n.clone(),
        _ => "-".into(),
    };
    let route = match (&e.sender, &e.receiver) {
        (Some(s), Some(r)) => format!("{s} -> {r}"),
        (Some(s), None) => s.clone(),
        (None, Some(r)) => format!("-> {r}"),
        (None, None) => e.identity.clone().or_else(|| e.remote.clone()).unwrap_or_else(|| "-".into()),
    };
    let mut row = format!(
        "{:<30} {:>8} {:<16} {:<24} {:<28} {:<6} {:<18} {:>7}",
        e.time,
        e.seq,
        e.event,
        name,
        route,
        e.decision.as_deref().unwrap_or("-"),
        e.rule.as_deref().unwrap_or("-"),
        e.bytes.map_or("-".to_owned(), |b| b.to_string()),
    );
    if let Some(reason) = &e.reason {
        row.push_str("  ");
        row.push_str(reason);
    }
    row.trim_end().to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn patterns_match_like_policy_wildcards() {
        let p = NamePattern::parse("todos.*").unwrap();
        assert!(p.matches("todos.list"));
        assert!(!p.matches("todos.list.extra"));
        assert!(!p.matches("todos"));
        let p = NamePattern::parse("payments.>").unwrap();
        assert!(p.matches("payments.refund"));
        assert!(p.matches("payments.refund.partial"));
        assert!(!p.matches("payments"));
        assert!(NamePattern::parse("a.>.b").is_err());
        assert!(NamePattern::parse("a..b").is_err());
        assert!(NamePattern::parse("a.b*").is_err());
        assert!(NamePattern::parse("user.created").unwrap().matches("user.created"));
    }

    #[test]
    fn filters_combine() {
        let e = entry(
            r#"{"seq":5,"time":"2026-11-22T10:00:00.000000000Z","event":"deny","name":"payments.refund","sender":"web","decision":"deny"}"#,
        );
        let f = Filter {
            sender: Some("web".into()),
            decision: Some(Decision::Deny),
            name: Some(NamePattern::parse("payments.>").unwrap()),
            ..Filter::default()
        };
        assert!(f.matches(&e));
        assert!(!Filter { receiver: Some("todo".into()), ..f.clone() }.matches(&e));
        assert!(f.clone().since("2026-11-22T09:00:00Z").unwrap().matches(&e));
        assert!(
            !f.clone()
                .since("2026-11-22T11:00:00+01:00")
                .unwrap()
                .until("2026-11-22T10:00:00Z")
                .unwrap()
                .matches(&e)
        );
        assert!(!Filter { events: vec![Event::Send], ..Filter::default() }.matches(&e));
        assert!(Filter::default().since("yesterday").is_err());
    }

    #[test]
    fn rows_show_route_and_reason() {
        let e = entry(
            r#"{"seq":7,"time":"t","event":"handshake_failed","remote":"10.0.0.1:5000","reason":"unknown CA"}"#,
        );
        let row = table_row(&e);
        assert!(row.contains("10.0.0.1:5000"));
        assert!(row.ends_with("unknown CA"));
    }
}
