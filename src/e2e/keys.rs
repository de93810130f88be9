//! Receive keys: the static X25519 key pair of a *service* (shared by its
//! instances), which grants are wrapped to.
//!
//! Files (text, one line each, so an operator can read and diff them):
//!
//! ```text
//! receive.key   exocom-receive-key-v1:<64 hex chars of the X25519 secret>
//! receive.pub   exocom-receive-pub-v1:<64 hex chars of the X25519 public key>
//! ```
//!
//! `receive.key` is written with mode 0600. The key id is the first 8 bytes
//! of SHA-256 of the public key. This module must never log or print a
//! secret, and never write one anywhere but the file it was asked to.

use std::fmt;
use std::path::{Path, PathBuf};

use x25519_dalek::{PublicKey, StaticSecret};

use super::E2eError;
use super::crypto;

/// File name of the secret key inside a key directory.
pub const SECRET_FILE: &str = "receive.key";
/// File name of the public key inside a key directory.
pub const PUBLIC_FILE: &str = "receive.pub";
/// The previous secret key, kept by a rotation while old grants may still arrive.
pub const PREVIOUS_SECRET_FILE: &str = "receive.key.prev";
/// The previous public key.
pub const PREVIOUS_PUBLIC_FILE: &str = "receive.pub.prev";

const SECRET_PREFIX: &str = "exocom-receive-key-v1:";
const PUBLIC_PREFIX: &str = "exocom-receive-pub-v1:";

/// A service's X25519 receive key pair.
#[derive(Clone)]
pub struct ReceiveKey {
    secret: StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for ReceiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveKey").field("key_id", &hex::encode(self.key_id())).finish_non_exhaustive()
    }
}

impl ReceiveKey {
    /// A new random key pair.
    pub fn generate() -> Result<Self, E2eError> {
        Ok(Self::from_secret(crypto::random::<32>().map_err(|_| E2eError::Random)?))
    }

    /// The key pair with this secret (test vectors, loading).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// Loads `dir/receive.key`.
    pub fn load(dir: &Path) -> Result<Self, E2eError> {
        Self::load_file(&dir.join(SECRET_FILE))
    }

    /// Loads a secret key file.
    pub fn load_file(path: &Path) -> Result<Self, E2eError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| E2eError::Io { path: path.to_owned(), source })?;
        let secret = parse_line(&text, SECRET_PREFIX).ok_or_else(|| E2eError::KeyFile {
            path: path.to_owned(),
            reason: "expected one line `exocom-receive-key-v1:<64 hex chars>`",
        })?;
        Ok(Self::from_secret(secret))
    }

    /// Writes `dir/receive.key` (mode 0600) and `dir/receive.pub`, creating
    /// `dir`. Refuses to overwrite an existing key unless `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), E2eError> {
        let io = |path: PathBuf| move |source| E2eError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
        let secret_path = dir.join(SECRET_FILE);
        let public_path = dir.join(PUBLIC_FILE);
        if !overwrite {
            for path in [&secret_path, &public_path] {
                if path.exists() {
                    return Err(E2eError::KeyExists(path.clone()));
                }
            }
        }
        let secret_line = format!("{SECRET_PREFIX}{}\n", hex::encode(self.secret.as_bytes()));
        write_private(&secret_path, secret_line.as_bytes()).map_err(io(secret_path.clone()))?;
        std::fs::write(&public_path, self.public_line()).map_err(io(public_path))?;
        Ok(())
    }

    /// Loads `dir/receive.key.prev` if a rotation left one.
    pub fn load_previous(dir: &Path) -> Result<Option<Self>, E2eError> {
        let path = dir.join(PREVIOUS_SECRET_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Self::load_file(&path).map(Some)
    }

    /// Rotation: moves the current pair in `dir` to `receive.key.prev` /
    /// `receive.pub.prev` (replacing an older previous pair) and writes a
    /// new pair. Returns the new key.
    pub fn rotate(dir: &Path) -> Result<Self, E2eError> {
        let io = |path: PathBuf| move |source| E2eError::Io { path, source };
        for (from, to) in [(SECRET_FILE, PREVIOUS_SECRET_FILE), (PUBLIC_FILE, PREVIOUS_PUBLIC_FILE)] {
            let from = dir.join(from);
            if from.exists() {
                std::fs::rename(&from, dir.join(to)).map_err(io(from))?;
            }
        }
        let key = Self::generate()?;
        key.save(dir, false)?;
        Ok(key)
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// First 8 bytes of SHA-256 of the public key.
    pub fn key_id(&self) -> [u8; 8] {
        key_id(&self.public)
    }

    /// The `receive.pub` line for this key.
    pub fn public_line(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", hex::encode(self.public))
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// Reads a `receive.pub` file.
pub fn load_public(path: &Path) -> Result<[u8; 32], E2eError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| E2eError::Io { path: path.to_owned(), source })?;
    parse_line(&text, PUBLIC_PREFIX).ok_or_else(|| E2eError::KeyFile {
        path: path.to_owned(),
        reason: "expected one line `exocom-receive-pub-v1:<64 hex chars>`",
    })
}

/// First 8 bytes of SHA-256 of an X25519 public key.
pub fn key_id(public: &[u8; 32]) -> [u8; 8] {
    let digest = crypto::sha256(&[public]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

fn parse_line(text: &str, prefix: &str) -> Option<[u8; 32]> {
    let hex_part = text.trim_end_matches(['\n', '\r']).strip_prefix(prefix)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReceiveKey::generate().unwrap();
        key.save(dir.path(), false).unwrap();
        let loaded = ReceiveKey::load(dir.path()).unwrap();
        assert_eq!(loaded.public(), key.public());
        assert_eq!(load_public(&dir.path().join(PUBLIC_FILE)).unwrap(), key.public());
        assert!(matches!(
            ReceiveKey::generate().unwrap().save(dir.path(), false),
            Err(E2eError::KeyExists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rotation_keeps_the_previous_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ReceiveKey::load_previous(dir.path()).unwrap().is_none());
        let old = ReceiveKey::generate().unwrap();
        old.save(dir.path(), false).unwrap();
        let new = ReceiveKey::rotate(dir.path()).unwrap();
        assert_ne!(new.public(), old.public());
        assert_eq!(ReceiveKey::load(dir.path()).unwrap().public(), new.public());
        let prev = ReceiveKey::load_previous(dir.path()).unwrap().unwrap();
        assert_eq!(prev.public(), old.public());
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        for bad in ["", "exocom-receive-key-v1:zz", "exocom-receive-pub-v1:00"] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(ReceiveKey::load(dir.path()), Err(E2eError::KeyFile { .. })));
        }
        assert!(matches!(ReceiveKey::load(&dir.path().join("missing")), Err(E2eError::Io { .. })));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ReceiveKey::from_secret([7u8; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(shown.contains(&hex::encode(key.key_id())));
    }
}
