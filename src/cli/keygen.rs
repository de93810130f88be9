//! `exocom keygen`. (Stub.)

/// Arguments of `exocom keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {}

/// Runs `exocom keygen`.
pub fn run(_args: KeygenArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
