//! The `exocom` binary: the router, certificate, policy and audit tools, send/listen.
//!
//! `main` does three things: parse the command line, set up tracing, and
//! hand over to the library's `cli::run`.

use clap::Parser;
use exocom::cli::{Cli, LogFormat, run};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the router and the relays allocate small
/// short-lived buffers per message, where glibc spent 8–17 % of their time
/// (docs/PERFORMANCE-HISTORY.md: the earlier profiles; third round, item 10).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("EXOCOM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    std::process::exit(run(cli));
}
