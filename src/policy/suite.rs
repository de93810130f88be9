//! Policy tests: expected allow/deny cases kept next to the policy.
//!
//! A suite is a TOML file (by convention `NAME.tests.toml`) naming its
//! policy (relative to itself) and listing `[[case]]`s; running it asks the
//! policy exactly what the router asks. Pure apart from reading the files;
//! it never prints.
//!
//! ```toml
//! policy = "todo.toml"
//!
//! [[case]]
//! sender = "web"           # a send check
//! name = "todos.list"
//! expect = "allow"
//! receivers = ["todo"]     # optional: exactly these services get a copy
//!
//! [[case]]
//! receiver = "web"         # a receive check (both: a full delivery)
//! name = "todos.list"
//! version = 2              # optional, default 1
//! expect = "deny"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::policy::diagnostic::SourceMap;
use crate::policy::{Decision, Policy, PolicyError};

/// Why a suite could not run at all (as opposed to a failing case).
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The suite file is not valid.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The suite file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
    /// The policy under test does not load.
    #[error("{}: the policy under test is invalid:\n{source}", path.display())]
    Policy {
        /// The suite file.
        path: PathBuf,
        /// The policy's errors.
        source: PolicyError,
    },
    /// A directory holds no `*.tests.toml`.
    #[error("no *.tests.toml files in {}", .0.display())]
    Empty(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    policy: String,
    #[serde(default)]
    case: Vec<CaseFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: Spanned<String>,
    sender: Option<String>,
    receiver: Option<String>,
    version: Option<u32>,
    expect: Expect,
    receivers: Option<Vec<String>>,
    description: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// A case whose outcome differs from its expectation.
#[derive(Clone, Debug)]
pub struct CaseFailure {
    /// `SUITE:LINE` of the case's `name`.
    pub at: String,
    /// What was asked, e.g. `send todos.list@1 from web`.
    pub question: String,
    /// What was expected and what happened.
    pub message: String,
    /// The rule that decided.
    pub rule: String,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: FAIL {}: {} (rule: {})", self.at, self.question, self.message, self.rule)
    }
}

/// The outcome of one suite file.
#[derive(Clone, Debug)]
pub struct SuiteReport {
    /// The suite file.
    pub suite: PathBuf,
    /// The policy it tested.
    pub policy: PathBuf,
    /// How many cases ran.
    pub cases: usize,
    /// The failing ones.
    pub failures: Vec<CaseFailure>,
}

impl SuiteReport {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs one suite file, or every `*.tests.toml` in a directory (sorted).
pub fn run_path(path: &Path) -> Result<Vec<SuiteReport>, SuiteError> {
    if !path.is_dir() {
        return Ok(vec![run_file(path)?]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| SuiteError::Io { path: path.into(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".tests.toml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(SuiteError::Empty(path.into()));
    }
    files.iter().map(|f| run_file(f)).collect()
}

/// Runs one suite file.
pub fn run_file(path: &Path) -> Result<SuiteReport, SuiteError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SuiteError::Io { path: path.into(), source })?;
    let suite: SuiteFile = toml::from_str(&text).map_err(|e| SuiteError::Invalid {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let policy_path = path.parent().unwrap_or(Path::new("")).join(&suite.policy);
    let policy =
        Policy::from_file(&policy_path).map_err(|source| SuiteError::Policy { path: path.into(), source })?;
    let name = path.display().to_string();
    let map = SourceMap::new(&name, &text);
    let mut failures = Vec::new();
    for case in &suite.case {
        let at = format!("{name}:{}", map.location(case.name.span().start).line);
        if let Some(failure) = run_case(&policy, case, at)? {
            failures.push(failure);
        }
    }
    Ok(SuiteReport { suite: path.into(), policy: policy_path, cases: suite.case.len(), failures })
}

fn run_case(policy: &Policy, case: &CaseFile, at: String) -> Result<Option<CaseFailure>, SuiteError> {
    let name = case.name.get_ref().as_str();
    let version = case.version.unwrap_or(1);
    let invalid = |message: String| SuiteError::Invalid { path: PathBuf::from(&at), message };
    for service in case.sender.iter().chain(&case.receiver) {
        if policy.service(service).is_none() {
            return Err(invalid(format!("unknown service \"{service}\" (not in {})", policy.file_name())));
        }
    }
    let (question, decision): (String, Decision) = match (&case.sender, &case.receiver) {
        (Some(s), None) => (format!("send {name}@{version} from {s}"), policy.check_send(s, name, version)),
        (None, Some(r)) => {
            (format!("receive {name}@{version} by {r}"), policy.check_receive(r, name, version))
        }
        (Some(s), Some(r)) => {
            let send = policy.check_send(s, name, version);
            let question = format!("deliver {name}@{version} from {s} to {r}");
            if send.allowed { (question, policy.check_receive(r, name, version)) } else { (question, send) }
        }
        (None, None) => return Err(invalid("a case needs sender, receiver, or both".to_string())),
    };
    let label = case.description.as_ref().map_or(question.clone(), |d| format!("{question} ({d})"));
    let expected_allow = case.expect == Expect::Allow;
    if decision.allowed != expected_allow {
        let (want, got) = if expected_allow { ("allow", "deny") } else { ("deny", "allow") };
        return Ok(Some(CaseFailure {
            at,
            question: label,
            message: format!("expected {want}, got {got}"),
            rule: decision.rule.to_string(),
        }));
    }
    if let Some(expected) = &case.receivers {
        let actual: Vec<String> = match &case.sender {
            Some(s) if !policy.check_send(s, name, version).allowed => Vec::new(),
            _ => policy.receivers(name, version).iter().map(|r| r.to_string()).collect(),
        };
        let mut want = expected.clone();
        want.sort();
        if want != actual {
            return Ok(Some(CaseFailure {
                at,
                question: label,
                message: format!("expected receivers [{}], got [{}]", want.join(", "), actual.join(", ")),
                rule: decision.rule.to_string(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "[meta]\ntrust_domain = \"example.org\"\n\n[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"todos.list\"]\n\n[services.todo]\nid = \"spiffe://example.org/svc/todo\"\nreceive = [\"todos.list@1\"]\n";

    fn setup(cases: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.toml"), POLICY).unwrap();
        let suite = dir.path().join("p.tests.toml");
        std::fs::write(&suite, format!("policy = \"p.toml\"\n{cases}")).unwrap();
        (dir, suite)
    }

    #[test]
    fn passing_and_failing_cases() {
        let (dir, suite) = setup(
            "[[case]]\nsender = \"web\"\nname = \"todos.list\"\nexpect = \"allow\"\nreceivers = [\"todo\"]\n\n\
             [[case]]\nreceiver = \"todo\"\nname = \"todos.list\"\nversion = 2\nexpect = \"allow\"\n\n\
             [[case]]\nsender = \"todo\"\nreceiver = \"web\"\nname = \"todos.list\"\nexpect = \"deny\"\n\n\
             [[case]]\nsender = \"web\"\nname = \"todos.list\"\nexpect = \"allow\"\nreceivers = [\"web\"]\n",
        );
        let reports = run_path(dir.path()).unwrap();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.cases, 4);
        assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
        let first = r.failures[0].to_string();
        assert_eq!(
            first,
            format!(
                "{}:10: FAIL receive todos.list@2 by todo: expected allow, got deny (rule: default deny (no rule matches))",
                suite.display()
            )
        );
        assert!(
            r.failures[1].message.contains("expected receivers [web], got [todo]"),
            "{:?}",
            r.failures[1]
        );
    }

    #[test]
    fn bad_suites_are_errors() {
        let (_d, suite) = setup("[[case]]\nname = \"a.b\"\nexpect = \"allow\"\n");
        assert!(run_file(&suite).unwrap_err().to_string().contains("needs sender, receiver"));
        let (_d, suite) = setup("[[case]]\nsender = \"nobody\"\nname = \"a.b\"\nexpect = \"allow\"\n");
        assert!(run_file(&suite).unwrap_err().to_string().contains("unknown service \"nobody\""));
        let (_d, suite) = setup("[[case]]\nsender = \"web\"\nname = \"a.b\"\nexpect = \"maybe\"\n");
        assert!(matches!(run_file(&suite), Err(SuiteError::Invalid { .. })));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(run_path(empty.path()), Err(SuiteError::Empty(_))));
    }
}
