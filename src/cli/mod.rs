//! The `exocom` command line: one module per subcommand group.
//!
//! `main` parses, sets up tracing, and calls [`run`]; each group's module
//! turns its arguments into library calls and returns the process exit code.
//! Errors a person sees are one line on stderr.

// The command line is where the crate talks to people: printing is its job.
#![allow(clippy::print_stdout)]

pub mod audit;
pub mod certs;
pub mod dlq;
pub mod keygen;
pub mod messaging;
pub mod policy;
pub mod serve;
pub mod token;

use clap::{Parser, Subcommand};

/// Exit codes shared by every subcommand, so scripts can tell failures apart.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A check failed (policy errors, audit tampering, failed policy tests).
    pub const FAILED: i32 = 1;
    /// Generic runtime error.
    pub const ERROR: i32 = 2;
    /// The router refused a send (policy).
    pub const DENIED: i32 = 3;
    /// The router could not be reached.
    pub const UNREACHABLE: i32 = 4;
    /// A certificate problem (ours or the router's).
    pub const CERTIFICATE: i32 = 5;
    /// No reply (or not enough messages) within the timeout.
    pub const TIMEOUT: i32 = 6;
    /// Bad command-line arguments or configuration (EX_USAGE).
    pub const USAGE: i32 = 64;
}

/// exocom: an encrypted enterprise message bus.
///
/// The router authenticates services by their TLS client certificates,
/// checks every send and delivery against a policy file, forwards payloads
/// it cannot decrypt, and keeps an audit log of routing metadata.
#[derive(Debug, Parser)]
#[command(name = "exocom", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr (levels come from EXOCOM_LOG, e.g. EXOCOM_LOG=debug).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router.
    Serve(Box<serve::ServeArgs>),
    /// Create a development CA and service certificates.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Make a new end-to-end receive key for a service (key rotation).
    Keygen(keygen::KeygenArgs),
    /// Check, explain, diff, test, sign and verify policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Verify, query and report on audit logs.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Send a message (or a request, printing its replies).
    Send(messaging::SendArgs),
    /// Receive messages and print them, optionally replying.
    Listen(messaging::ListenArgs),
    /// Mint short-lived admin API tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// List, show, replay and purge dead letters (router stopped).
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Keygen(args) => keygen::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Send(args) => messaging::run_send(args),
        Command::Listen(args) => messaging::run_listen(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Dlq(cmd) => dlq::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::ERROR
        }
    }
}
