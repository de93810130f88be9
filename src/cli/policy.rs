//! `exocom policy …`: check, explain, diff, test, sign and verify policy
//! files. Turns arguments into [`crate::policy`] calls and prints their
//! results; every decision printed is the one the router would make.

// Printing results is this module's job; the lint guards the library.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use crate::cli::exit;
use crate::policy::sign::{self, PublicKey, SignatureError, SigningKey};
use crate::policy::{Policy, PolicyError, diff, explain, suite};

/// `exocom policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Check a policy file: print every error and warning with
    /// FILE:LINE:COLUMN, the line, a caret and a hint.
    ///
    /// Exit 0 when valid (warnings are printed), 1 on errors.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Explain what happens when SENDER sends NAME: the send decision and,
    /// for each service, whether it would receive it, each with its rule.
    ///
    /// Exit 0 when the send is allowed (and, with --receiver, delivered to
    /// that service), 3 when denied.
    // `--version` is the message's API version here, not the program's.
    #[command(disable_version_flag = true)]
    Explain {
        /// The policy file.
        file: PathBuf,
        /// The sending service.
        #[arg(long)]
        sender: String,
        /// The message name.
        #[arg(long)]
        name: String,
        /// The message's API version.
        #[arg(long, default_value_t = 1)]
        version: u32,
        /// Only this receiving service.
        #[arg(long)]
        receiver: Option<String>,
    },
    /// Show every permission gained and lost between two policies, per
    /// service and direction, with sample names, and services added or removed.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The proposed policy.
        new: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run policy tests: a *.tests.toml file, or every one in a directory.
    ///
    /// Prints each failing case with the rule that decided; exit 1 on failure.
    Test {
        /// A *.tests.toml file or a directory holding them.
        path: PathBuf,
    },
    /// Sign a policy file: writes a detached Ed25519 signature over its exact
    /// bytes to FILE.sig.
    Sign {
        /// The policy file.
        file: PathBuf,
        /// The signing key (PKCS#8 PEM, e.g. DIR/policy-signing/key.pem from
        /// `exocom certs init`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify FILE.sig against the file with trusted public keys.
    ///
    /// Exit 0 when a signature verifies with one of the keys, 1 otherwise.
    Verify {
        /// The policy file.
        file: PathBuf,
        /// A trusted public key (SPKI PEM); repeat for several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
    },
}

/// Runs an `exocom policy` subcommand.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<i32> {
    match cmd {
        PolicyCmd::Check { file } => check(&file),
        PolicyCmd::Explain { file, sender, name, version, receiver } => {
            let Some(policy) = load(&file)? else { return Ok(exit::FAILED) };
            match explain::explain(&policy, &sender, &name, version, receiver.as_deref()) {
                Ok(e) => {
                    println!("{e}");
                    let delivered = receiver.is_none() || e.deliveries.iter().all(|d| d.decision.allowed);
                    Ok(if e.send.allowed && delivered { exit::OK } else { exit::DENIED })
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    Ok(exit::USAGE)
                }
            }
        }
        PolicyCmd::Diff { old, new, json } => {
            let (Some(a), Some(b)) = (load(&old)?, load(&new)?) else { return Ok(exit::FAILED) };
            let d = diff::diff(&a, &b);
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{}", d.to_string().trim_end());
            }
            Ok(exit::OK)
        }
        PolicyCmd::Test { path } => test(&path),
        PolicyCmd::Sign { file, key } => {
            let key = SigningKey::from_pem_file(&key)?;
            let sig = sign::sign_file(&file, &key)?;
            println!("signed {} with key {}: wrote {}", file.display(), key.public_key().id(), sig.display());
            Ok(exit::OK)
        }
        PolicyCmd::Verify { file, pubkeys } => {
            let keys = pubkeys.iter().map(|p| PublicKey::from_pem_file(p)).collect::<Result<Vec<_>, _>>()?;
            match sign::verify_file(&file, &keys) {
                Ok(key) => {
                    println!("{}: signature OK (key {})", file.display(), key.id());
                    Ok(exit::OK)
                }
                Err(
                    e @ (SignatureError::Unsigned { .. }
                    | SignatureError::Mismatch { .. }
                    | SignatureError::Malformed { .. }),
                ) => {
                    eprintln!("error: {e}");
                    Ok(exit::FAILED)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn check(file: &Path) -> anyhow::Result<i32> {
    match Policy::from_file(file) {
        Ok(p) => {
            for w in p.warnings() {
                println!("{w}\n");
            }
            println!(
                "{}: OK: {} service(s), {} deny rule(s), serial {}, {} warning(s), sha256 {}",
                p.file_name(),
                p.services().count(),
                p.denies().len(),
                p.serial(),
                p.warnings().len(),
                p.sha256_hex()
            );
            Ok(exit::OK)
        }
        Err(PolicyError::Invalid { diagnostics }) => {
            print_invalid(&diagnostics);
            Ok(exit::FAILED)
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads a policy; prints its diagnostics and returns `None` when invalid.
fn load(file: &Path) -> anyhow::Result<Option<Policy>> {
    match Policy::from_file(file) {
        Ok(p) => Ok(Some(p)),
        Err(PolicyError::Invalid { diagnostics }) => {
            print_invalid(&diagnostics);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn print_invalid(diagnostics: &[crate::policy::Diagnostic]) {
    for d in diagnostics {
        println!("{d}\n");
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let file = diagnostics.first().map_or("policy", |d| d.file.as_str());
    println!("{file}: {errors} error(s), {} warning(s)", diagnostics.len() - errors);
}

fn test(path: &Path) -> anyhow::Result<i32> {
    let reports = match suite::run_path(path) {
        Ok(r) => r,
        Err(suite::SuiteError::Policy { path, source: PolicyError::Invalid { diagnostics } }) => {
            println!("{}: the policy under test is invalid:", path.display());
            print_invalid(&diagnostics);
            return Ok(exit::FAILED);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::FAILED);
        }
    };
    let mut failed = 0;
    let mut total = 0;
    for r in &reports {
        for f in &r.failures {
            println!("{f}");
        }
        let status = if r.passed() { "ok" } else { "FAILED" };
        println!(
            "{}: {status}: {} passed, {} failed (policy {})",
            r.suite.display(),
            r.cases - r.failures.len(),
            r.failures.len(),
            r.policy.display()
        );
        failed += r.failures.len();
        total += r.cases;
    }
    if reports.len() > 1 {
        println!("total: {} passed, {failed} failed", total - failed);
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn explain_takes_a_message_version() {
        let cli = Cli::try_parse_from([
            "exocom",
            "policy",
            "explain",
            "p.toml",
            "--sender",
            "web",
            "--name",
            "a.b",
            "--version",
            "3",
        ])
        .unwrap();
        let Command::Policy(PolicyCmd::Explain { version, .. }) = cli.command else { panic!("not explain") };
        assert_eq!(version, 3);
    }

    #[test]
    fn every_policy_subcommand_parses() {
        for args in [
            &["exocom", "policy", "check", "p.toml"][..],
            &["exocom", "policy", "diff", "a.toml", "b.toml", "--json"],
            &["exocom", "policy", "test", "policy/"],
            &["exocom", "policy", "sign", "p.toml", "--key", "k.pem"],
            &["exocom", "policy", "verify", "p.toml", "--pubkey", "a.pem", "--pubkey", "b.pem"],
        ] {
            Cli::try_parse_from(args).unwrap();
        }
        assert!(
            Cli::try_parse_from(["exocom", "policy", "verify", "p.toml"]).is_err(),
            "--pubkey is required"
        );
    }
}
