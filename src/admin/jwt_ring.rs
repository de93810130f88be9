//! A jsonwebtoken [`CryptoProvider`] backed by ring, for EdDSA (Ed25519) only.
//!
//! jsonwebtoken 11 delegates signatures to a process-wide provider and
//! panics at the first encode or decode when none is installed. Its two
//! built-in providers would bring in aws-lc or the RustCrypto RSA stack; the
//! crate already links ring (through rustls), so this provider verifies and
//! signs Ed25519 with it and refuses every other algorithm. JWK helpers are
//! left unimplemented: the router never fetches or parses JWKs.
//!
//! [`install`] must run before any token is issued or verified; the admin
//! server and `exocom token issue` call it.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result as JwtResult, new_error};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

/// The provider: Ed25519 through ring, nothing else.
pub static RING_PROVIDER: CryptoProvider =
    CryptoProvider { signer_factory, verifier_factory, key_utils: KeyUtils::new_unimplemented() };

/// Installs [`RING_PROVIDER`] as jsonwebtoken's process-wide provider.
/// Calling it again is harmless; returns false when another provider was
/// installed first (then that one is in force).
pub fn install() -> bool {
    match RING_PROVIDER.install_default() {
        Ok(()) => true,
        Err(existing) => std::ptr::eq(existing, &RING_PROVIDER),
    }
}

fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    if *alg != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    // Accepts PKCS#8 v1 (OpenSSL) and v2 (ring, rcgen) Ed25519 keys.
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    Ok(Box::new(EdSigner(pair)))
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    let raw = key.try_get_as_bytes()?;
    if raw.len() != 32 {
        return Err(new_error(ErrorKind::InvalidEddsaKey));
    }
    Ok(Box::new(EdVerifier(raw.to_vec())))
}

struct EdSigner(Ed25519KeyPair);

impl Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignatureError> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdVerifier(Vec<u8>);

impl Verifier<Vec<u8>> for EdVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(msg, signature).map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Header, Validation, decode, encode};
    use ring::signature::KeyPair;

    use super::*;

    #[test]
    fn signs_and_verifies_ed25519_and_refuses_other_algorithms() {
        assert!(install());
        assert!(install(), "installing twice is harmless");
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        let enc = EncodingKey::from_ed_der(pkcs8.as_ref());
        let dec = DecodingKey::from_ed_der(&public);
        let claims = serde_json::json!({"sub": "a", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let token = encode(&Header::new(Algorithm::EdDSA), &claims, &enc).unwrap();
        let got = decode::<serde_json::Value>(&token, &dec, &Validation::new(Algorithm::EdDSA)).unwrap();
        assert_eq!(got.claims["sub"], "a");

        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(decode::<serde_json::Value>(&tampered, &dec, &Validation::new(Algorithm::EdDSA)).is_err());

        let hs = EncodingKey::from_secret(b"secret");
        assert!(encode(&Header::new(Algorithm::HS256), &claims, &hs).is_err());
    }
}
