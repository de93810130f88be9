//! `exocom send` and `exocom listen`. (Stub.)

/// Arguments of `exocom send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {}

/// Arguments of `exocom listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {}

/// Runs `exocom send`.
pub fn run_send(_args: SendArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}

/// Runs `exocom listen`.
pub fn run_listen(_args: ListenArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
