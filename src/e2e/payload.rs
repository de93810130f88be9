//! The envelope inside every seal, in front of the application bytes:
//!
//! ```text
//! u8   version = 1
//! u8   flags         bit 0: a reply key follows; bits 1–7 must be 0
//! [32] reply key     only when flag bit 0 is set
//! ...  application payload (to the end)
//! ```
//!
//! It lives inside the AEAD, so the router never sees the reply key. It is
//! parsed only after the AEAD verified.

use super::crypto;
use super::reply::ReplyKey;
use crate::wire::pool;

/// Envelope version.
pub const VERSION: u8 = 1;
/// Flag: a 32-byte reply key follows the flags.
pub const FLAG_REPLY_KEY: u8 = 0x01;

/// Why an opened envelope is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than its fixed part.
    #[error("sealed payload envelope truncated")]
    Truncated,
    /// Unknown version.
    #[error("sealed payload envelope version {0}")]
    Version(u8),
    /// Unknown flag bits.
    #[error("sealed payload envelope has unknown flags {0:#04x}")]
    Flags(u8),
}

/// Writes the envelope and the application payload into a buffer with room
/// for the AEAD tag.
pub(crate) fn encode(reply_key: Option<&ReplyKey>, app: &[u8]) -> Vec<u8> {
    // Room for the sealed length: a small `Vec` whose length is its
    // capacity becomes `Bytes` without another allocation, and a large one
    // comes from the buffer pool and goes back to it (`pool::freeze`).
    let key_len = reply_key.map_or(0, |k| k.as_bytes().len());
    let mut buf = pool::take(2 + key_len + app.len() + crypto::AEAD_TAG_LEN);
    buf.push(VERSION);
    match reply_key {
        Some(k) => {
            buf.push(FLAG_REPLY_KEY);
            buf.extend_from_slice(k.as_bytes());
        }
        None => buf.push(0),
    }
    buf.extend_from_slice(app);
    buf
}

/// Splits an opened envelope; returns the reply key and the offset of the
/// application payload.
pub(crate) fn decode(plain: &[u8]) -> Result<(Option<ReplyKey>, usize), PayloadError> {
    let [version, flags, rest @ ..] = plain else {
        return Err(PayloadError::Truncated);
    };
    if *version != VERSION {
        return Err(PayloadError::Version(*version));
    }
    match *flags {
        0 => Ok((None, 2)),
        FLAG_REPLY_KEY => {
            let key: [u8; 32] =
                rest.get(..32).and_then(|k| k.try_into().ok()).ok_or(PayloadError::Truncated)?;
            Ok((Some(ReplyKey::from_bytes(key)), 34))
        }
        other => Err(PayloadError::Flags(other)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = ReplyKey::from_bytes([5; 32]);
        let buf = encode(Some(&k), b"hi");
        let (got, at) = decode(&buf).unwrap();
        assert_eq!(got.unwrap().as_bytes(), &[5; 32]);
        assert_eq!(&buf[at..], b"hi");
        let buf = encode(None, b"");
        assert_eq!(decode(&buf).unwrap().1, 2);
        assert_eq!(decode(&[1]).err(), Some(PayloadError::Truncated));
        assert_eq!(decode(&[2, 0]).err(), Some(PayloadError::Version(2)));
        assert_eq!(decode(&[1, 2]).err(), Some(PayloadError::Flags(2)));
        assert_eq!(decode(&[1, 1, 0]).err(), Some(PayloadError::Truncated));
    }
}
