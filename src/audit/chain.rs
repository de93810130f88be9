//! The hash chain: what exactly is hashed, and how a line is sealed.
//!
//! A line is `{...,"prev":"<64 hex>","hash":"<64 hex>"}`. Its *body* is every
//! byte before `,"hash":`, i.e. the line as serialized up to and including
//! `prev`. `hash = SHA-256(body)`, and `prev` is the previous line's `hash`
//! (64 zeros before the first line). Hashing the exact bytes, never a
//! re-serialization, means there is no canonical-JSON question to get wrong:
//! any change to any byte of a line changes its hash.

use ring::digest::{SHA256, digest};

/// Hash length in bytes.
pub const HASH_LEN: usize = 32;
/// The `prev` of the very first line.
pub const GENESIS: [u8; HASH_LEN] = [0; HASH_LEN];

/// What every line ends with after its body: `,"hash":"` + 64 hex + `"}`.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// Length of the sealed suffix.
pub const SUFFIX_LEN: usize = HASH_PREFIX.len() + 2 * HASH_LEN + 2;

/// The chain as the writer carries it from line to line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// `seq` of the last line written (0 before the first).
    pub seq: u64,
    /// Hash of the last line written.
    pub head: [u8; HASH_LEN],
    /// Lines since the last checkpoint (the checkpoint line itself included in the next count).
    pub since_checkpoint: u64,
}

impl ChainState {
    /// The state before the first line of a fresh log.
    pub fn genesis() -> Self {
        ChainState { seq: 0, head: GENESIS, since_checkpoint: 0 }
    }
}

/// Why a line does not have the sealed shape.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The line does not end with `,"hash":"<64 hex>"}`.
    #[error("line does not end with a \"hash\" field")]
    NoHash,
    /// The hash is not 64 lowercase hex digits.
    #[error("\"hash\" is not 64 hex digits")]
    BadHex,
}

/// SHA-256 of a body.
pub fn hash_body(body: &[u8]) -> [u8; HASH_LEN] {
    let d = digest(&SHA256, body);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex of a hash, without allocating.
pub fn to_hex(hash: &[u8; HASH_LEN]) -> [u8; 2 * HASH_LEN] {
    let mut out = [0u8; 2 * HASH_LEN];
    for (pair, byte) in out.as_chunks_mut::<2>().0.iter_mut().zip(hash) {
        *pair = HEX_PAIRS[usize::from(*byte)];
    }
    out
}

/// The two lowercase hex digits of every byte value.
pub(crate) const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

/// Decodes 64 hex digits.
pub fn from_hex(text: &[u8]) -> Option<[u8; HASH_LEN]> {
    let mut out = [0u8; HASH_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Seals the JSON object that starts at `buf[start]` and runs to the end of
/// `buf`: replaces its closing `}` by `,"hash":"…"}` and a newline. Returns the hash.
pub fn seal(buf: &mut Vec<u8>, start: usize) -> [u8; HASH_LEN] {
    if buf.last() == Some(&b'}') {
        buf.pop();
    }
    let hash = hash_body(&buf[start..]);
    buf.extend_from_slice(HASH_PREFIX);
    buf.extend_from_slice(&to_hex(&hash));
    buf.extend_from_slice(b"\"}\n");
    hash
}

/// Splits a line (without its newline) into its body and the hash it claims.
pub fn split(line: &[u8]) -> Result<(&[u8], [u8; HASH_LEN]), ChainError> {
    if line.len() < SUFFIX_LEN || !line.ends_with(b"\"}") {
        return Err(ChainError::NoHash);
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    if !suffix.starts_with(HASH_PREFIX) {
        return Err(ChainError::NoHash);
    }
    let hex = &suffix[HASH_PREFIX.len()..HASH_PREFIX.len() + 2 * HASH_LEN];
    if hex.iter().any(|b| b.is_ascii_uppercase()) {
        return Err(ChainError::BadHex);
    }
    let hash = from_hex(hex).ok_or(ChainError::BadHex)?;
    Ok((body, hash))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;

    #[test]
    fn sealed_line_splits_back_into_body_and_its_hash() {
        let mut buf = b"{\"seq\":1,\"prev\":\"00\"}".to_vec();
        let hash = seal(&mut buf, 0);
        assert_eq!(buf.last(), Some(&b'\n'));
        let line = &buf[..buf.len() - 1];
        let (body, claimed) = split(line).unwrap();
        assert_eq!(body, b"{\"seq\":1,\"prev\":\"00\"");
        assert_eq!(claimed, hash);
        assert_eq!(hash_body(body), hash);
        // The sealed line is still valid JSON.
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["hash"].as_str().unwrap(), hex::encode(hash));
    }

    #[test]
    fn one_changed_byte_changes_the_hash() {
        assert_ne!(hash_body(b"{\"seq\":1"), hash_body(b"{\"seq\":2"));
    }

    #[test]
    fn lines_without_a_well_formed_hash_are_refused() {
        assert_eq!(split(b"{\"seq\":1}"), Err(ChainError::NoHash));
        let mut buf = b"{\"a\":1}".to_vec();
        seal(&mut buf, 0);
        let mut upper = buf[..buf.len() - 1].to_vec();
        let n = upper.len();
        upper[n - 3] = b'A';
        assert!(split(&upper).is_err());
    }
}
