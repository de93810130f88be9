//! `exocom audit …`. (Stub.)

/// `exocom audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {}

/// Runs an `exocom audit` subcommand.
pub fn run(cmd: AuditCmd) -> anyhow::Result<i32> {
    match cmd {}
}
