//! `exocom certs …`: create a development CA, issue service certificates,
//! revoke certificates. Turns arguments into [`crate::certs`] calls and
//! prints every file written.

// Printing what was written is this module's job; the lint guards the library.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use crate::certs::{self, CertsError, IssuedLeaf};
use crate::cli::exit;

/// `exocom certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCmd {
    /// Create a development CA, the router's certificate and one certificate
    /// per service (for development and tests only, never production).
    ///
    /// Writes DIR/ca.pem and DIR/ca.key (the CA), DIR/trust-domain,
    /// DIR/router/{cert,key,ca}.pem (SAN localhost, 127.0.0.1),
    /// DIR/SERVICE/{cert,key,ca}.pem (URI SAN spiffe://DOMAIN/svc/SERVICE)
    /// and Ed25519 key pairs DIR/{audit,admin,policy-signing}/{key,pub}.pem.
    /// Private keys are written with mode 0600.
    Init(InitArgs),
    /// Issue a certificate for one more service with an existing CA.
    ///
    /// Writes OUT/{cert,key,ca}.pem with the URI SAN
    /// spiffe://DOMAIN/svc/SERVICE, DOMAIN being the one
    /// recorded in CA/trust-domain. Re-issuing replaces the certificate and key.
    Issue(IssueArgs),
    /// Write a CRL revoking certificates (for the router's --crl).
    ///
    /// Serials already in an existing CRL at --out stay revoked. With no
    /// CERT, writes (or renews) a CRL. The router refuses every client once
    /// its CRL has expired, so renew it before --days have passed.
    Revoke(RevokeArgs),
}

/// Arguments of `exocom certs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Trust domain of every identity, e.g. example.org (lowercase, DNS-like).
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: String,
    /// Services to issue certificates for, comma-separated, e.g. web,todo.
    /// Names: lowercase letters, digits, '_' and '-'.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub services: Vec<String>,
    /// Validity of the CA and every certificate, in days.
    #[arg(long, default_value_t = 365, value_name = "N")]
    pub days: u32,
    /// Replace a CA already in DIR (certificates it issued stop being trusted).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `exocom certs issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Directory of the CA (made by `exocom certs init`): ca.pem, ca.key, trust-domain.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The service's name (lowercase letters, digits, '_' and '-').
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_name = "N")]
    pub days: u32,
    /// Directory to write to [default: CA/SERVICE].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Arguments of `exocom certs revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Directory of the CA that issued the certificates: ca.pem, ca.key.
    #[arg(long, value_name = "DIR")]
    pub ca: PathBuf,
    /// The CRL file to write (PEM); entries of an existing CRL there are kept.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How long the CRL is valid, in days.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub days: u32,
    /// Certificates (PEM) to revoke.
    #[arg(value_name = "CERT")]
    pub certs: Vec<PathBuf>,
}

/// Runs an `exocom certs` subcommand.
pub fn run(cmd: CertsCmd) -> anyhow::Result<i32> {
    let result = match cmd {
        CertsCmd::Init(args) => run_init(&args),
        CertsCmd::Issue(args) => run_issue(&args),
        CertsCmd::Revoke(args) => run_revoke(&args).map_err(Failure::from),
    };
    match result {
        Ok(()) => Ok(exit::OK),
        Err(Failure::Key(err)) => {
            eprintln!("error: {err:#}");
            Ok(exit::ERROR)
        }
        Err(Failure::Certs(err)) => {
            let hint = match &err {
                CertsError::CaExists(_) => " (pass --force to replace it)",
                _ => "",
            };
            eprintln!("error: {err}{hint}");
            Ok(exit_code(&err))
        }
    }
}

/// Why a subcommand failed: the certificate work, or the receive key after it.
enum Failure {
    Certs(CertsError),
    Key(anyhow::Error),
}

impl From<CertsError> for Failure {
    fn from(err: CertsError) -> Self {
        Failure::Certs(err)
    }
}

/// Creates the end-to-end receive key beside a service's certificate, or
/// keeps the one already there (re-issuing a certificate must not make the
/// service's queued messages unreadable; rotate with `exocom keygen --rotate`).
fn receive_key(dir: &Path) -> Result<(), Failure> {
    if dir.join(crate::e2e::keys::SECRET_FILE).exists() {
        println!("kept {}", dir.join(crate::e2e::keys::SECRET_FILE).display());
        return Ok(());
    }
    let (Some(parent), Some(service)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        return Err(Failure::Key(anyhow::anyhow!("{} is not a service directory", dir.display())));
    };
    let key = crate::cli::keygen::create_service_key(parent, service).map_err(Failure::Key)?;
    println!(
        "wrote {} (key id {})",
        dir.join(crate::e2e::keys::SECRET_FILE).display(),
        hex::encode(key.key_id())
    );
    Ok(())
}

fn run_init(args: &InitArgs) -> Result<(), Failure> {
    let report = if args.force {
        certs::init_overwriting(&args.out, &args.trust_domain, &args.services, args.days)?
    } else {
        certs::init(&args.out, &args.trust_domain, &args.services, args.days)?
    };
    println!(
        "created a development CA for trust domain {} in {} (valid {} days; not for production)",
        report.trust_domain,
        report.dir.display(),
        args.days
    );
    for file in report.files() {
        println!("  wrote {}", file.display());
    }
    print_identity("router", &report.router);
    for service in &report.services {
        print_identity(&format!("service {}", display_dir(&service.dir)), service);
    }
    for service in &report.services {
        receive_key(&service.dir)?;
    }
    Ok(())
}

fn run_issue(args: &IssueArgs) -> Result<(), Failure> {
    let issued = certs::issue(&args.ca, &args.service, args.days, args.out.as_deref())?;
    receive_key(&issued.dir)?;
    for file in issued.files() {
        println!("wrote {}", file.display());
    }
    print_identity(&format!("service {}", args.service), &issued);
    Ok(())
}

fn run_revoke(args: &RevokeArgs) -> Result<(), CertsError> {
    let report = certs::revoke(&args.ca, &args.certs, &args.out, args.days)?;
    for (path, serial) in args.certs.iter().zip(&report.revoked) {
        println!("revoked {} (serial {serial})", path.display());
    }
    println!(
        "wrote {} ({} revoked serial(s), valid {} days)",
        report.crl.display(),
        report.listed,
        args.days
    );
    Ok(())
}

fn print_identity(label: &str, leaf: &IssuedLeaf) {
    println!("{label}: {} (serial {}, expires {})", leaf.uris.join(", "), leaf.serial, leaf.not_after.date());
}

fn display_dir(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |name| name.to_string_lossy().into_owned())
}

fn exit_code(err: &CertsError) -> i32 {
    match err {
        CertsError::Name(_)
        | CertsError::ReservedName(_)
        | CertsError::DuplicateService(_)
        | CertsError::BadDays(_) => exit::USAGE,
        CertsError::CaExists(_) => exit::FAILED,
        CertsError::BadCa { .. } | CertsError::BadCertificate { .. } => exit::CERTIFICATE,
        _ => exit::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> CertsCmd {
        let cli = Cli::try_parse_from(args).unwrap();
        match cli.command {
            Command::Certs(cmd) => cmd,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn init_parses_a_comma_separated_service_list() {
        let cmd = parse(&[
            "exocom",
            "certs",
            "init",
            "--out",
            "d",
            "--trust-domain",
            "example.org",
            "--services",
            "web,todo",
        ]);
        let CertsCmd::Init(args) = cmd else { panic!("not init") };
        assert_eq!(args.services, ["web", "todo"]);
        assert_eq!(args.days, 365);
        assert!(!args.force);
    }

    #[test]
    fn init_issue_revoke_round_trip_with_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let out_s = out.to_str().unwrap();
        let init = |extra: &[&str]| {
            let mut args = vec![
                "exocom",
                "certs",
                "init",
                "--out",
                out_s,
                "--trust-domain",
                "example.org",
                "--services",
                "web",
            ];
            args.extend_from_slice(extra);
            run(parse(&args)).unwrap()
        };
        assert_eq!(init(&[]), exit::OK);
        assert_eq!(init(&[]), exit::FAILED, "an existing CA must not be overwritten");
        assert_eq!(init(&["--force"]), exit::OK);

        let code = run(parse(&["exocom", "certs", "issue", "--ca", out_s, "--service", "todo"]));
        assert_eq!(code.unwrap(), exit::OK);
        assert!(out.join("todo/cert.pem").exists());
        let code = run(parse(&["exocom", "certs", "issue", "--ca", out_s, "--service", "Bad!"]));
        assert_eq!(code.unwrap(), exit::USAGE);

        let crl = dir.path().join("crl.pem");
        let cert = out.join("todo/cert.pem");
        let code = run(parse(&[
            "exocom",
            "certs",
            "revoke",
            "--ca",
            out_s,
            "--out",
            crl.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]));
        assert_eq!(code.unwrap(), exit::OK);
        assert!(crl.exists());
    }
}
