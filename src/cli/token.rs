//! `exocom token issue`: mint a short-lived admin API token.
//!
//! For development and for deployments without an identity provider: signs
//! an EdDSA JWT with the admin key from `exocom certs init`. The token goes
//! to stdout and nowhere else.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::admin::auth::{self, TokenRequest};
use crate::cli::exit;

/// Admin token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Print a signed admin API token (EdDSA JWT) on stdout.
    ///
    /// Example: exocom token issue --key certs-example/admin/key.pem
    /// --sub security-reviewer --scope clients:read --scope routes:read --ttl 15m
    Issue(IssueArgs),
}

/// Arguments of `exocom token issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The admin signing key (Ed25519, PKCS#8 PEM), e.g. certs-example/admin/key.pem.
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
    /// Who the token is for (written to the audit log with every call).
    #[arg(long, value_name = "NAME")]
    pub sub: String,
    /// A scope to grant; repeat for several (clients:read, routes:read,
    /// audit:read, policy:explain, metrics:read).
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. 15m, 300s, 10m (at most 15m).
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub ttl: String,
    /// Issuer; must match the router's --admin-issuer.
    #[arg(long, value_name = "NAME", default_value = "exocom")]
    pub iss: String,
}

/// Runs a token command.
pub fn run(cmd: TokenCmd) -> anyhow::Result<i32> {
    match cmd {
        TokenCmd::Issue(args) => issue(args),
    }
}

fn issue(args: IssueArgs) -> anyhow::Result<i32> {
    let Some(ttl) = parse_ttl(&args.ttl) else {
        eprintln!("error: --ttl {:?}: expected a number with s or m, e.g. 15m", args.ttl);
        return Ok(exit::USAGE);
    };
    let pem = std::fs::read(&args.key).with_context(|| format!("cannot read {}", args.key.display()))?;
    let req = TokenRequest { sub: &args.sub, scopes: &args.scopes, ttl, iss: &args.iss };
    match auth::issue(&pem, &req) {
        Ok(token) => {
            println!("{token}");
            Ok(exit::OK)
        }
        Err(err @ auth::IssueError::Key(_)) => {
            eprintln!("error: {}: {err}", args.key.display());
            Ok(exit::USAGE)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(exit::USAGE)
        }
    }
}

/// `15m`, `900s`, `900` (seconds).
fn parse_ttl(s: &str) -> Option<Duration> {
    let (num, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (s.strip_suffix('s').unwrap_or(s), 1),
    };
    num.parse::<u64>().ok().map(|n| Duration::from_secs(n.saturating_mul(unit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_ttl("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_ttl("1h"), None);
        assert_eq!(parse_ttl("m"), None);
    }
}
