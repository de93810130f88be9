//! Signed checkpoints: Ed25519 (ring) over the chain head.
//!
//! The hash chain alone proves nothing against someone who can rewrite the
//! file, since anyone can recompute hashes. A checkpoint line carries an
//! Ed25519 signature over `(seq, prev, count)`: its own sequence number, the
//! chain head it seals (its `prev`, the hash of the line before it) and the
//! lines since the previous checkpoint. Because the head commits to every line
//! before it, a valid signature vouches for the whole log up to that point.
//! The signed message is domain-separated text (see [`message`]).
//!
//! This module only ever holds the router's audit key; it never sees any
//! other key.

use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::chain::{HASH_LEN, hash_body, to_hex};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("audit key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not the expected PEM.
    #[error("audit key {path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
}

/// The domain-separated message a checkpoint signs.
pub fn message(seq: u64, prev: &[u8; HASH_LEN], count: u64) -> Vec<u8> {
    let hex = to_hex(prev);
    let mut m = Vec::with_capacity(120);
    m.extend_from_slice(b"exocom audit checkpoint v1\nseq ");
    m.extend_from_slice(seq.to_string().as_bytes());
    m.extend_from_slice(b"\nprev ");
    m.extend_from_slice(&hex);
    m.extend_from_slice(b"\ncount ");
    m.extend_from_slice(count.to_string().as_bytes());
    m.push(b'\n');
    m
}

/// Short id of a public key: hex of the first 8 bytes of SHA-256(raw key).
pub fn key_id(public: &[u8]) -> String {
    hex::encode(&hash_body(public)[..8])
}

/// The router's checkpoint signer.
#[derive(Debug)]
pub struct Signer {
    pair: Ed25519KeyPair,
    id: String,
}

impl Signer {
    /// Loads an Ed25519 PKCS#8 PEM private key (`DIR/audit/key.pem`).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let format = |what| KeyError::Format { path: path.to_owned(), what };
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|_| format("no PKCS#8 \"PRIVATE KEY\" PEM block"))?;
        Signer::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| format("not an Ed25519 key"))
    }

    /// From PKCS#8 DER (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)?;
        let id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, id })
    }

    /// The key id written next to each signature.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs a checkpoint; returns the signature in hex.
    pub fn sign(&self, seq: u64, prev: &[u8; HASH_LEN], count: u64) -> String {
        hex::encode(self.pair.sign(&message(seq, prev, count)).as_ref())
    }
}

/// The audit public key an auditor verifies against.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    raw: [u8; 32],
    id: String,
}

impl VerifyingKey {
    /// Loads an Ed25519 SubjectPublicKeyInfo PEM (`DIR/audit/pub.pem`).
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let format = |what| KeyError::Format { path: path.to_owned(), what };
        let der = SubjectPublicKeyInfoDer::from_pem_slice(&pem)
            .map_err(|_| format("no \"PUBLIC KEY\" PEM block"))?;
        let der: &[u8] = der.as_ref();
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) => VerifyingKey::from_raw(raw).ok_or(format("not an Ed25519 public key")),
            None => Err(format("not an Ed25519 public key")),
        }
    }

    /// From the raw 32-byte public key.
    pub fn from_raw(raw: &[u8]) -> Option<Self> {
        let raw: [u8; 32] = raw.try_into().ok()?;
        Some(VerifyingKey { id: key_id(&raw), raw })
    }

    /// The key id checkpoints name.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Whether `sig_hex` is this key's signature over the checkpoint.
    pub fn verify(&self, seq: u64, prev: &[u8; HASH_LEN], count: u64, sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw).verify(&message(seq, prev, count), &sig).is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    fn pair() -> (Signer, VerifyingKey) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let signer = Signer::from_pkcs8(&key.serialize_der()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pub.pem");
        std::fs::write(&path, key.public_key_pem()).unwrap();
        (signer, VerifyingKey::from_pem_file(&path).unwrap())
    }

    #[test]
    fn a_signature_verifies_only_for_the_exact_checkpoint() {
        let (signer, key) = pair();
        assert_eq!(signer.key_id(), key.key_id());
        let head = [7u8; 32];
        let sig = signer.sign(10, &head, 9);
        assert!(key.verify(10, &head, 9, &sig));
        assert!(!key.verify(11, &head, 9, &sig));
        assert!(!key.verify(10, &[8u8; 32], 9, &sig));
        assert!(!key.verify(10, &head, 8, &sig));
        assert!(!key.verify(10, &head, 9, "zz"));
    }

    #[test]
    fn another_key_does_not_verify() {
        let (signer, _) = pair();
        let (_, other) = pair();
        let sig = signer.sign(1, &[0u8; 32], 0);
        assert!(!other.verify(1, &[0u8; 32], 0, &sig));
    }

    #[test]
    fn pem_files_load_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let priv_path = dir.path().join("key.pem");
        std::fs::write(&priv_path, key.serialize_pem()).unwrap();
        let signer = Signer::from_pem_file(&priv_path).unwrap();
        assert_eq!(signer.public_key(), key.public_key_raw());

        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let bad = dir.path().join("p256.pem");
        std::fs::write(&bad, p256.public_key_pem()).unwrap();
        assert!(matches!(VerifyingKey::from_pem_file(&bad), Err(KeyError::Format { .. })));
        assert!(matches!(Signer::from_pem_file(&dir.path().join("missing.pem")), Err(KeyError::Read { .. })));
    }
}
