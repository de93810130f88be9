//! `exocom serve`. (Stub.)

/// Arguments of `exocom serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs the router until SIGINT/SIGTERM.
pub fn run(_args: ServeArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
