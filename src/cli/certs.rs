//! `exocom certs …`. (Stub.)

/// `exocom certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {}

/// Runs an `exocom certs` subcommand.
pub fn run(cmd: CertsCmd) -> anyhow::Result<i32> {
    match cmd {}
}
