//! The few primitives the scheme is built from, in one place: HKDF-SHA256,
//! ChaCha20-Poly1305 (ring, in place), SHA-256, truncated HMAC-SHA256 and
//! a constant-time compare.
//!
//! Everything here is ring except the compare (`subtle`). Nothing here
//! chooses nonces or keys; callers own those rules (see `seal.rs`).

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::{digest, hkdf, hmac};
use subtle::ConstantTimeEq;

use crate::wire::pool;

/// Bytes in a ChaCha20-Poly1305 key.
pub(crate) const KEY_LEN: usize = 32;
/// Bytes in a Poly1305 tag.
pub(crate) const AEAD_TAG_LEN: usize = 16;
/// Bytes of the per-receiving-service authentication tag.
pub(crate) const AUTH_TAG_LEN: usize = 16;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869) with `info` the concatenation of `info` parts.
pub(crate) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> [u8; N] {
    expand(&extract(salt, ikm), info)
}

fn extract(salt: &[u8], ikm: &[u8]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm)
}

fn expand<const N: usize>(prk: &hkdf::Prk, info: &[&[u8]]) -> [u8; N] {
    const { assert!(N <= 255 * 32, "HKDF-SHA256 output is at most 8160 bytes") };
    let mut out = [0u8; N];
    // expand/fill fail only for lengths over 255 * 32, ruled out above.
    if let Ok(okm) = prk.expand(info, Len(N)) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// A key and a nonce prefix from one secret: two HKDF-SHA256 outputs with
/// the same salt and input key, one extract and two expands. Byte for byte
/// `(hkdf(salt, ikm, key_info), hkdf(salt, ikm, prefix_info))`, at about
/// half the cost (the extract is most of it).
pub(crate) fn hkdf_key_and_prefix(
    salt: &[u8],
    ikm: &[u8],
    key_info: &[&[u8]],
    prefix_info: &[&[u8]],
) -> ([u8; KEY_LEN], [u8; 4]) {
    let prk = extract(salt, ikm);
    (expand(&prk, key_info), expand(&prk, prefix_info))
}

/// A ChaCha20-Poly1305 key ready for use.
pub(crate) fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, ring::error::Unspecified> {
    Ok(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key)?))
}

/// Seals `buf` in place and appends the tag.
pub(crate) fn seal(
    key: &LessSafeKey,
    nonce: [u8; 12],
    aad: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), ring::error::Unspecified> {
    let tag = key.seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        buf.as_mut_slice(),
    )?;
    buf.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Opens `ct‖tag` into a new buffer holding only the plaintext.
pub(crate) fn open(
    key: &LessSafeKey,
    nonce: [u8; 12],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, ring::error::Unspecified> {
    if sealed.len() < AEAD_TAG_LEN {
        return Err(ring::error::Unspecified);
    }
    let mut buf = pool::take(sealed.len());
    buf.extend_from_slice(sealed);
    let len = key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)?.len();
    buf.truncate(len);
    Ok(buf)
}

/// SHA-256 over the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA256 truncated to [`AUTH_TAG_LEN`] bytes.
pub(crate) fn auth_tag(key: &hmac::Key, msg: &[u8]) -> [u8; AUTH_TAG_LEN] {
    let mut out = [0u8; AUTH_TAG_LEN];
    out.copy_from_slice(&hmac::sign(key, msg).as_ref()[..AUTH_TAG_LEN]);
    out
}

/// Constant-time equality (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Fills a fresh array from the operating system's CSPRNG.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_prefix_are_the_two_separate_derivations() {
        let (salt, ikm) = ([3u8; 16], [4u8; 32]);
        let (key_info, prefix_info): (&[&[u8]], &[&[u8]]) = (&[b"enc", b"name"], &[b"nonce", b"name"]);
        let (key, prefix) = hkdf_key_and_prefix(&salt, &ikm, key_info, prefix_info);
        assert_eq!(key, hkdf::<KEY_LEN>(&salt, &ikm, key_info));
        assert_eq!(prefix, hkdf::<4>(&salt, &ikm, prefix_info));
        assert_ne!(key[..4], prefix);
    }
}
