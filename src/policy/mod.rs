//! The policy file: who may send and receive which message names.
//!
//! TOML, default deny, an explicit `[[deny]]` always wins, rule order never
//! matters; every [`Decision`] names the rule that made it. Parsing reports
//! every problem at once with `FILE:LINE:COL`; a parsed [`Policy`] is
//! immutable and cannot represent an invalid state. The format and matching
//! rules are documented for security teams in docs/POLICY.md.
//!
//! | module | what it is |
//! |---|---|
//! | `pattern` | names, `*`/`>` patterns, `@N,M` version ranges |
//! | `parse` | TOML with spans → validated [`Policy`] + diagnostics |
//! | `decide` | send/receive decisions and their cache |
//! | `explain`, `diff`, `suite` | the tools behind `exocom policy explain/diff/test` |
//! | `sign` | detached Ed25519 signatures over the exact file bytes |
//! | `limits` | size limits and the per-service [`TokenBucket`] |
//! | `reload` | atomic hot reload (`router` feature) |
//!
//! This module must never import `e2e`: the router side cannot decrypt.

mod decide;
mod diagnostic;
pub mod diff;
pub mod explain;
mod limits;
mod model;
mod parse;
mod pattern;
#[cfg(feature = "router")]
pub mod reload;
pub mod sign;
pub mod suite;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use decide::Decision;
pub use diagnostic::{Diagnostic, Location, Severity};
pub use limits::{Limits, Rate, SizeError, TokenBucket, parse_size};
pub use model::{DenyRule, Direction, MessageSettings, Policy, Rule, ServiceRules};
pub use pattern::{Pattern, PatternError, Token, VersionRange, check_name, valid_name};
pub use sign::SignatureError;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Io {
        /// The policy file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file has errors; `Display` lists every diagnostic.
    #[error("{}", render(diagnostics))]
    Invalid {
        /// Every error and warning, sorted by position.
        diagnostics: Vec<Diagnostic>,
    },
    /// The signature is missing or does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The new policy's serial is lower than the one in force.
    #[error("policy serial {new} is lower than the serial in force ({current}): refusing a rollback")]
    Rollback {
        /// The serial in force.
        current: u64,
        /// The serial of the refused file.
        new: u64,
    },
}

impl PolicyError {
    /// The diagnostics, when the file itself was invalid.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid { diagnostics } => diagnostics,
            _ => &[],
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let _ = writeln!(out, "{d}");
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let _ = write!(
        out,
        "{}: {errors} error(s), {warnings} warning(s)",
        diagnostics.first().map_or("policy", |d| d.file.as_str())
    );
    out
}

impl Policy {
    /// Parses and validates `source`, naming it `file_name` in diagnostics and
    /// rule labels.
    pub fn parse(source: &str, file_name: &str) -> Result<Policy, PolicyError> {
        parse::parse_policy(source, file_name).map_err(|diagnostics| PolicyError::Invalid { diagnostics })
    }

    /// Reads and parses a policy file (its path, as given, names it).
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = read(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// Like [`Policy::from_file`], but refuses the file unless `PATH.sig`
    /// holds a valid signature over its exact bytes by one of `keys`.
    pub fn from_file_signed(path: &Path, keys: &[sign::PublicKey]) -> Result<Policy, PolicyError> {
        let bytes = read(path)?;
        sign::verify_file_bytes(path, &bytes, keys)?;
        Self::from_bytes(&bytes, path)
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
        let name = path.display().to_string();
        let source = std::str::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                file: name.clone(),
                location: Location { line: 1, column: 1 },
                message: format!("the file is not UTF-8 (byte {})", e.valid_up_to()),
                hint: "save the policy as UTF-8".to_string(),
                source_line: String::new(),
                line_offset: 0,
                width: 1,
            }],
        })?;
        Self::parse(source, &name)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests;
