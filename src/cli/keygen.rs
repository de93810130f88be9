//! `exocom keygen`: a new end-to-end receive key for a service.
//!
//! Writes `DIR/receive.key` (X25519 secret, mode 0600) and `DIR/receive.pub`.
//! With `--rotate`, the current pair is kept as `receive.key.prev` /
//! `receive.pub.prev` so the relay can still open grants made for it while
//! the new key's announcement spreads (docs/E2E.md, "Rotation").

// The command line reports to the person who ran it.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::exit;
use crate::e2e::keys::{PUBLIC_FILE, SECRET_FILE};
use crate::e2e::spiffe::parse_service_id;
use crate::e2e::{E2eError, ReceiveKey};

/// Arguments of `exocom keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Directory for receive.key and receive.pub (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing key, keeping it as receive.key.prev / receive.pub.prev.
    #[arg(long)]
    pub rotate: bool,
}

/// Runs `exocom keygen`.
pub fn run(args: KeygenArgs) -> anyhow::Result<i32> {
    let result = if args.rotate {
        ReceiveKey::rotate(&args.out)
    } else {
        ReceiveKey::generate().and_then(|k| k.save(&args.out, false).map(|()| k))
    };
    let key = match result {
        Ok(key) => key,
        Err(E2eError::KeyExists(path)) => {
            eprintln!(
                "error: {} exists; use --rotate to replace it (the old key is kept as .prev)",
                path.display()
            );
            return Ok(exit::USAGE);
        }
        Err(err) => return Err(err).context("writing the receive key"),
    };
    println!("wrote {} and {}", args.out.join(SECRET_FILE).display(), args.out.join(PUBLIC_FILE).display());
    println!("key id {}", hex::encode(key.key_id()));
    Ok(exit::OK)
}

/// Creates `dir/<service>/receive.key` and `receive.pub` for `certs init`
/// and `certs issue`; refuses to overwrite an existing key.
pub fn create_service_key(dir: &Path, service: &str) -> anyhow::Result<ReceiveKey> {
    parse_service_id(&format!("spiffe://check/svc/{service}"))
        .with_context(|| format!("{service:?} is not a valid service name"))?;
    let key = ReceiveKey::generate()?;
    key.save(&dir.join(service), false).with_context(|| format!("writing the receive key of {service}"))?;
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_refuses_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("todos");
        let args = |rotate| KeygenArgs { out: out.clone(), rotate };
        assert_eq!(run(args(false)).unwrap(), exit::OK);
        let first = ReceiveKey::load(&out).unwrap();
        assert_eq!(run(args(false)).unwrap(), exit::USAGE);
        assert_eq!(ReceiveKey::load(&out).unwrap().public(), first.public());
        assert_eq!(run(args(true)).unwrap(), exit::OK);
        assert_ne!(ReceiveKey::load(&out).unwrap().public(), first.public());
        assert_eq!(ReceiveKey::load_previous(&out).unwrap().unwrap().public(), first.public());
    }

    #[test]
    fn service_keys_go_beside_the_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let key = create_service_key(dir.path(), "todos").unwrap();
        assert_eq!(ReceiveKey::load(&dir.path().join("todos")).unwrap().public(), key.public());
        assert!(create_service_key(dir.path(), "todos").is_err());
        assert!(create_service_key(dir.path(), "../etc").is_err());
    }
}
