//! Detached Ed25519 signatures over the exact bytes of a policy file.
//!
//! `FILE.sig` holds one line per signature: `ed25519 <key id> <signature hex>`
//! (the key id is the first 8 bytes of SHA-256 over the raw public key, for
//! people; verification tries every configured key). Private keys are PKCS#8
//! PEM, public keys SPKI PEM. This module signs and verifies bytes; it never
//! parses the policy and never holds a key longer than a call.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw
/// 32-byte key follows it.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why signing or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file is not a usable Ed25519 key.
    #[error("{}: {reason}", path.display())]
    BadKey {
        /// The key file (or a description).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The policy has no signature file.
    #[error("policy {} is not signed: {} not found", policy.display(), sig.display())]
    Unsigned {
        /// The policy.
        policy: PathBuf,
        /// Where the signature was expected.
        sig: PathBuf,
    },
    /// The signature file cannot be read as signatures.
    #[error("{}:{line}: not a signature line (expected \"ed25519 <key id> <hex signature>\")", sig.display())]
    Malformed {
        /// The signature file.
        sig: PathBuf,
        /// The offending line, from 1.
        line: usize,
    },
    /// No signature verifies with any configured key.
    #[error("policy {} is mis-signed: no signature in {} verifies with the configured key(s) {}", policy.display(), sig.display(), key_ids.join(", "))]
    Mismatch {
        /// The policy.
        policy: PathBuf,
        /// The signature file.
        sig: PathBuf,
        /// Ids of the keys that were tried.
        key_ids: Vec<String>,
    },
    /// Signatures are required but no key is configured.
    #[error("no policy verification keys configured")]
    NoKeys,
}

/// An Ed25519 public key trusted to sign policies.
#[derive(Clone, Eq, PartialEq)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    /// Reads an SPKI PEM file (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<PublicKey, SignatureError> {
        let pem = std::fs::read(path).map_err(|source| SignatureError::Io { path: path.into(), source })?;
        Self::from_pem(&pem).map_err(|reason| SignatureError::BadKey { path: path.into(), reason })
    }

    /// Parses SPKI PEM text; the error says what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM public key (-----BEGIN PUBLIC KEY-----): {e}"))?;
        let bytes: &[u8] = der.as_ref();
        match bytes.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) => {
                let raw: [u8; 32] = raw.try_into().map_err(|_| "truncated Ed25519 public key".to_string())?;
                Ok(PublicKey { raw })
            }
            None => Err("not an Ed25519 public key".to_string()),
        }
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.raw
    }

    /// A short id for people: hex of the first 8 bytes of SHA-256(key).
    pub fn id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.raw);
        hex::encode(&digest.as_ref()[..8])
    }

    /// SPKI PEM text of this key.
    pub fn to_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem_encode("PUBLIC KEY", &der)
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.raw).verify(message, signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// An Ed25519 private key for signing policies.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, SignatureError> {
        let pem = std::fs::read(path).map_err(|source| SignatureError::Io { path: path.into(), source })?;
        Self::from_pem(&pem).map_err(|reason| SignatureError::BadKey { path: path.into(), reason })
    }

    /// Parses PKCS#8 PEM text (v1 or v2); the error says what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----): {e}"))?;
        let bytes = der.secret_pkcs8_der();
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes))
            .map_err(|e| format!("not an Ed25519 key: {e}"))?;
        Ok(SigningKey { pair })
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { raw }
    }

    /// One signature line over `message`.
    pub fn sign_line(&self, message: &[u8]) -> String {
        let sig = self.pair.sign(message);
        format!("ed25519 {} {}\n", self.public_key().id(), hex::encode(sig.as_ref()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key().id())
    }
}

/// Where the signature of `policy` lives: `policy` + `.sig`.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut s = policy.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Signs the exact bytes of `policy` and writes `policy.sig`; returns its path.
pub fn sign_file(policy: &Path, key: &SigningKey) -> Result<PathBuf, SignatureError> {
    let bytes = std::fs::read(policy).map_err(|source| SignatureError::Io { path: policy.into(), source })?;
    let sig = signature_path(policy);
    std::fs::write(&sig, key.sign_line(&bytes))
        .map_err(|source| SignatureError::Io { path: sig.clone(), source })?;
    Ok(sig)
}

/// Verifies `policy.sig` against the file's current bytes; returns the key
/// that signed it.
pub fn verify_file(policy: &Path, keys: &[PublicKey]) -> Result<PublicKey, SignatureError> {
    let bytes = std::fs::read(policy).map_err(|source| SignatureError::Io { path: policy.into(), source })?;
    verify_file_bytes(policy, &bytes, keys)
}

/// Verifies `policy.sig` against `bytes` (already read from `policy`), so
/// the bytes verified are exactly the bytes then parsed.
pub fn verify_file_bytes(
    policy: &Path,
    bytes: &[u8],
    keys: &[PublicKey],
) -> Result<PublicKey, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let sig_path = signature_path(policy);
    let text = match std::fs::read_to_string(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignatureError::Unsigned { policy: policy.into(), sig: sig_path });
        }
        Err(source) => return Err(SignatureError::Io { path: sig_path, source }),
    };
    let signatures =
        parse_signatures(&text).map_err(|line| SignatureError::Malformed { sig: sig_path.clone(), line })?;
    for sig in &signatures {
        if let Some(key) = keys.iter().find(|k| k.verifies(bytes, sig)) {
            return Ok(key.clone());
        }
    }
    Err(SignatureError::Mismatch {
        policy: policy.into(),
        sig: sig_path,
        key_ids: keys.iter().map(PublicKey::id).collect(),
    })
}

/// The signatures in a `.sig` file, or the number of the first bad line.
fn parse_signatures(text: &str) -> Result<Vec<Vec<u8>>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some("ed25519"), Some(_id), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(i + 1);
        };
        match hex::decode(sig) {
            Ok(bytes) if bytes.len() == 64 => out.push(bytes),
            _ => return Err(i + 1),
        }
    }
    if out.is_empty() {
        return Err(1);
    }
    Ok(out)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh PKCS#8 PEM Ed25519 key, made with ring.
    pub(crate) fn test_key_pem() -> String {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        pem_encode("PRIVATE KEY", doc.as_ref())
    }

    #[test]
    fn sign_then_verify_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.toml");
        std::fs::write(&policy, b"[meta]\ntrust_domain = \"example.org\"\n").unwrap();
        let key = SigningKey::from_pem(test_key_pem().as_bytes()).unwrap();
        let public = PublicKey::from_pem(key.public_key().to_pem().as_bytes()).unwrap();
        assert_eq!(public, key.public_key());

        let sig = sign_file(&policy, &key).unwrap();
        assert_eq!(sig, dir.path().join("p.toml.sig"));
        assert_eq!(verify_file(&policy, std::slice::from_ref(&public)).unwrap(), public);

        // One changed byte: refused.
        std::fs::write(&policy, b"[meta]\ntrust_domain = \"example.com\"\n").unwrap();
        let err = verify_file(&policy, std::slice::from_ref(&public)).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("mis-signed"), "{err}");
    }

    #[test]
    fn wrong_key_unsigned_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.toml");
        std::fs::write(&policy, b"x").unwrap();
        let key = SigningKey::from_pem(test_key_pem().as_bytes()).unwrap();
        let other = SigningKey::from_pem(test_key_pem().as_bytes()).unwrap().public_key();

        let err = verify_file(&policy, std::slice::from_ref(&other)).unwrap_err();
        assert!(matches!(err, SignatureError::Unsigned { .. }), "{err}");

        sign_file(&policy, &key).unwrap();
        let err = verify_file(&policy, std::slice::from_ref(&other)).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err}");
        // Either of two configured keys may have signed.
        assert!(verify_file(&policy, &[other.clone(), key.public_key()]).is_ok());
        assert!(matches!(verify_file(&policy, &[]), Err(SignatureError::NoKeys)));

        std::fs::write(signature_path(&policy), "ed25519 abc nothex\n").unwrap();
        let err = verify_file(&policy, &[key.public_key()]).unwrap_err();
        assert!(matches!(err, SignatureError::Malformed { line: 1, .. }), "{err}");
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(SigningKey::from_pem(b"hello").unwrap_err().contains("PKCS#8"));
        assert!(PublicKey::from_pem(b"hello").unwrap_err().contains("PUBLIC KEY"));
        // An ECDSA key is not Ed25519.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(SigningKey::from_pem(ec.serialize_pem().as_bytes()).unwrap_err().contains("Ed25519"));
        assert!(PublicKey::from_pem(ec.public_key_pem().as_bytes()).unwrap_err().contains("Ed25519"));
    }

    #[test]
    fn rcgen_ed25519_keys_interoperate() {
        // `exocom certs init` writes keys with rcgen; both sides must read them.
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let key = SigningKey::from_pem(kp.serialize_pem().as_bytes()).unwrap();
        let public = PublicKey::from_pem(kp.public_key_pem().as_bytes()).unwrap();
        assert_eq!(key.public_key(), public);
        assert_eq!(public.to_pem(), kp.public_key_pem());
    }
}
