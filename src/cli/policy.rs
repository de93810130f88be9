//! `exocom policy …`. (Stub.)

/// `exocom policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {}

/// Runs an `exocom policy` subcommand.
pub fn run(cmd: PolicyCmd) -> anyhow::Result<i32> {
    match cmd {}
}
