//! The on-disk encoding of queued entries and dead letters.
//!
//! A small, versioned binary format, so the file outlives changes to the
//! Rust types. The queue key `(service, seq)` is not repeated in the value.
//!
//! Entry, version 2 (integers little-endian, `bytes` = u32 length + bytes):
//!
//! ```text
//! u8 version = 2 | u32 attempts | u64 timestamp_ms
//! bytes sender | bytes sender_id | bytes sender_instance
//! bytes header | bytes auth_tag | bytes payload | bytes grant
//! ```
//!
//! Version 1 is the same without `grant` (read as empty). The grant is the
//! receiving service's end-to-end key grant for the message's epoch, kept
//! with each entry so a receiver can open its backlog after a restart.
//!
//! Dead letter, version 1:
//!
//! ```text
//! u8 version = 1 | u64 dead_at_ms | u32 attempts | u64 seq
//! bytes reason | bytes service | bytes entry (the entry encoding above)
//! ```
//!
//! Payloads stay opaque: they are copied, never parsed. Decoding never
//! panics: a short or malformed value is a [`CodecError`].

use bytes::Bytes;

use super::Entry;

const VERSION: u8 = 2;

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Written by a newer (or unknown) format version.
    #[error("unknown record version {0}")]
    Version(u8),
    /// The value ends before a field does.
    #[error("record is truncated")]
    Truncated,
    /// A text field is not UTF-8.
    #[error("record has a text field that is not UTF-8")]
    Utf8,
    /// Bytes are left over after the last field.
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes the value of a queued entry (its key holds service and seq).
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let len = 1
        + 4
        + 8
        + 6 * 4
        + e.sender.len()
        + e.sender_id.len()
        + e.sender_instance.len()
        + e.header.len()
        + e.auth_tag.len()
        + e.payload.len()
        + 4
        + e.grant.len();
    let mut out = Vec::with_capacity(len);
    out.push(VERSION);
    out.extend_from_slice(&e.attempts.to_le_bytes());
    out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
    for field in [
        e.sender.as_bytes(),
        e.sender_id.as_bytes(),
        e.sender_instance.as_bytes(),
        &e.header,
        &e.auth_tag,
        &e.payload,
        &e.grant,
    ] {
        put_bytes(&mut out, field);
    }
    out
}

/// Decodes an entry stored under `(service, seq)`.
pub fn decode_entry(service: &str, seq: u64, value: &[u8]) -> Result<Entry, CodecError> {
    let mut r = Reader(value);
    let version = r.version()?;
    let attempts = r.u32()?;
    let timestamp_ms = r.u64()?;
    let sender = r.text()?;
    let sender_id = r.text()?;
    let sender_instance = r.text()?;
    let header = Bytes::copy_from_slice(r.bytes()?);
    let auth_tag = Bytes::copy_from_slice(r.bytes()?);
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let grant = if version >= 2 { Bytes::copy_from_slice(r.bytes()?) } else { Bytes::new() };
    r.end()?;
    Ok(Entry {
        service: service.to_string(),
        seq,
        header,
        payload,
        auth_tag,
        grant,
        sender,
        sender_id,
        sender_instance,
        timestamp_ms,
        attempts,
    })
}

/// The metadata of a dead letter, stored next to its entry bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadMeta {
    /// When it was dead-lettered, Unix ms.
    pub dead_at_ms: u64,
    /// Deliveries attempted.
    pub attempts: u32,
    /// Its position in the queue it came from.
    pub seq: u64,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The service whose queue it came from.
    pub service: String,
}

/// Encodes a dead letter: its metadata and the entry value as stored.
pub fn encode_dead(meta: &DeadMeta, entry_value: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(1 + 8 + 4 + 8 + 12 + meta.reason.len() + meta.service.len() + entry_value.len());
    out.push(VERSION);
    out.extend_from_slice(&meta.dead_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.attempts.to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    put_bytes(&mut out, meta.reason.as_bytes());
    put_bytes(&mut out, meta.service.as_bytes());
    put_bytes(&mut out, entry_value);
    out
}

/// Decodes a dead letter into its metadata and entry.
pub fn decode_dead(value: &[u8]) -> Result<(DeadMeta, Entry), CodecError> {
    let mut r = Reader(value);
    r.version()?;
    let dead_at_ms = r.u64()?;
    let attempts = r.u32()?;
    let seq = r.u64()?;
    let reason = r.text()?;
    let service = r.text()?;
    let entry = r.bytes()?;
    r.end()?;
    let entry = decode_entry(&service, seq, entry)?;
    Ok((DeadMeta { dead_at_ms, attempts, seq, reason, service }, entry))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Fields are bounded by the frame size (far below 4 GiB), so the length fits.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The record's format version (1 or 2; both read).
    fn version(&mut self) -> Result<u8, CodecError> {
        match self.take(1)?[0] {
            v @ (1 | VERSION) => Ok(v),
            v => Err(CodecError::Version(v)),
        }
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map(str::to_string).map_err(|_| CodecError::Utf8)
    }

    fn end(&self) -> Result<(), CodecError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            service: "todos".into(),
            seq: 7,
            header: Bytes::from_static(b"\x0a\x03abc"),
            payload: Bytes::from(vec![0xAB; 300]),
            auth_tag: Bytes::from_static(b"tag"),
            grant: Bytes::from_static(b"grant"),
            sender: "web".into(),
            sender_id: "spiffe://example.org/svc/web".into(),
            sender_instance: "i-1".into(),
            timestamp_ms: 1_700_000_000_123,
            attempts: 2,
        }
    }

    fn same(a: &Entry, b: &Entry) {
        assert_eq!(
            (&a.service, a.seq, &a.header, &a.payload, &a.auth_tag),
            (&b.service, b.seq, &b.header, &b.payload, &b.auth_tag)
        );
        assert_eq!(
            (&a.sender, &a.sender_id, &a.sender_instance, a.timestamp_ms, a.attempts),
            (&b.sender, &b.sender_id, &b.sender_instance, b.timestamp_ms, b.attempts)
        );
    }

    #[test]
    fn entry_round_trips() {
        let e = entry();
        let back = decode_entry("todos", 7, &encode_entry(&e)).unwrap();
        same(&e, &back);
    }

    #[test]
    fn dead_letter_round_trips() {
        let e = entry();
        let meta = DeadMeta {
            dead_at_ms: 5,
            attempts: 5,
            seq: 7,
            reason: "too many delivery attempts".into(),
            service: "todos".into(),
        };
        let (m, back) = decode_dead(&encode_dead(&meta, &encode_entry(&e))).unwrap();
        assert_eq!(m, meta);
        same(&e, &back);
    }

    #[test]
    fn refuses_bad_values_without_panicking() {
        let good = encode_entry(&entry());
        for cut in 0..good.len() {
            assert!(decode_entry("s", 0, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = good.clone();
        newer[0] = 3;
        assert_eq!(decode_entry("s", 0, &newer).unwrap_err(), CodecError::Version(3));
        // Version 1 (no grant) is still read, with an empty grant.
        let mut v1 = good[..good.len() - 4 - b"grant".len()].to_vec();
        v1[0] = 1;
        let old = decode_entry("s", 0, &v1).unwrap();
        assert!(old.grant.is_empty());
        assert_eq!(old.auth_tag, entry().auth_tag);
        let mut long = good;
        long.push(0);
        assert_eq!(decode_entry("s", 0, &long).unwrap_err(), CodecError::Trailing(1));
        assert!(decode_dead(&[1, 0, 0]).is_err());
    }
}
