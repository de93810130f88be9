//! Replies: sealed under the reply key the requester put inside its sealed
//! command, so only the requester (and the command's receiver) can read
//! them; streams carry a position and a final flag so a cut stream shows.
//!
//! The replier picks a random 16-byte *reply epoch* per [`ReplySealer`]
//! (one per handling of a command) and puts it in `header.epoch`:
//!
//! ```text
//! k_reply = HKDF-SHA256(salt = reply_epoch, ikm = rk,
//!                       info = "exocom/v1/reply-enc"   ‖ command_id ‖ replier_id)
//! prefix  = HKDF-SHA256(same salt and ikm,
//!                       info = "exocom/v1/reply-nonce" ‖ command_id ‖ replier_id)[..4]
//! nonce   = prefix ‖ u64_be(stream_seq);  header.seq = header.stream_seq
//! payload = ChaCha20-Poly1305(k_reply, nonce, envelope ‖ app, aad = header_bytes) ‖ tag16
//! ```
//!
//! The random reply epoch matters: a command redelivered after a crash is
//! handled again and its replies start again at `stream_seq` 0; without a
//! fresh epoch that would reuse nonces under the same key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::LessSafeKey;

use super::crypto;
use super::open::{OpenError, check_sender, decode_header, epoch_of};
use super::payload;
use super::seal::{nonce, set_str};
use super::{E2eError, SEAL_V1};
use crate::wire::{Deliver, Kind, RoutingHeader, pool};

const ENC_INFO: &[u8] = b"exocom/v1/reply-enc";
const NONCE_INFO: &[u8] = b"exocom/v1/reply-nonce";
/// Most distinct reply streams one request accepts (repliers × redeliveries).
pub const MAX_STREAMS: usize = 64;

/// The 32-byte reply key of one command.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyKey([u8; 32]);

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyKey(..)")
    }
}

impl ReplyKey {
    /// A fresh random reply key.
    pub fn generate() -> Result<Self, E2eError> {
        Ok(Self(crypto::random::<32>().map_err(|_| E2eError::Random)?))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn keys(
        &self,
        reply_epoch: &[u8; 16],
        command_id: &[u8],
        replier_id: &str,
    ) -> Result<(LessSafeKey, [u8; 4]), E2eError> {
        let (k, prefix) = crypto::hkdf_key_and_prefix(
            reply_epoch,
            &self.0,
            &[ENC_INFO, command_id, replier_id.as_bytes()],
            &[NONCE_INFO, command_id, replier_id.as_bytes()],
        );
        Ok((crypto::aead_key(&k).map_err(|_| E2eError::Seal)?, prefix))
    }
}

/// A sealed reply: the fields of a `Send` (no tags, no grants).
#[derive(Debug)]
pub struct SealedReply {
    /// `Send.header`.
    pub header: Bytes,
    /// `Send.payload`.
    pub payload: Bytes,
}

/// Seals the replies of one handling of one command.
pub struct ReplySealer {
    aead: LessSafeKey,
    prefix: [u8; 4],
    /// The reply epoch, as every reply's `header.epoch` (shared, not copied per reply).
    epoch: Bytes,
    command_id: Bytes,
    sender_id: Arc<str>,
    instance: Arc<str>,
    next: u64,
    ended: bool,
}

impl ReplySealer {
    /// For replies to `command` (its opened header) with the command's
    /// `reply_key`, sent by `my_id` (this service's SPIFFE id) from `instance`.
    pub fn new(
        reply_key: &ReplyKey,
        command: &RoutingHeader,
        my_id: impl Into<Arc<str>>,
        instance: impl Into<Arc<str>>,
    ) -> Result<Self, E2eError> {
        if command.id.len() != 16 {
            return Err(E2eError::Header("command id must be 16 bytes".into()));
        }
        let epoch = crypto::random::<16>().map_err(|_| E2eError::Random)?;
        Self::with_epoch(reply_key, command, my_id, instance, epoch)
    }

    /// [`new`](Self::new) with a given reply epoch (test vectors).
    pub(crate) fn with_epoch(
        reply_key: &ReplyKey,
        command: &RoutingHeader,
        my_id: impl Into<Arc<str>>,
        instance: impl Into<Arc<str>>,
        epoch: [u8; 16],
    ) -> Result<Self, E2eError> {
        if command.id.len() != 16 {
            return Err(E2eError::Header("command id must be 16 bytes".into()));
        }
        let my_id = my_id.into();
        let (aead, prefix) = reply_key.keys(&epoch, &command.id, &my_id)?;
        Ok(Self {
            aead,
            prefix,
            epoch: Bytes::copy_from_slice(&epoch),
            command_id: command.id.clone(),
            sender_id: my_id,
            instance: instance.into(),
            next: 0,
            ended: false,
        })
    }

    /// Seals the next reply of the stream; `last` ends it. `header` carries
    /// the reply's name, version, id and expiry; this fills the rest.
    pub fn seal(
        &mut self,
        mut header: RoutingHeader,
        plaintext: &[u8],
        last: bool,
    ) -> Result<SealedReply, E2eError> {
        if self.ended {
            return Err(E2eError::Header("the reply stream has already ended".into()));
        }
        if header.id.len() != 16 || header.name.is_empty() {
            return Err(E2eError::Header("reply needs a name and a 16-byte id".into()));
        }
        let seq = self.next;
        self.next = seq.checked_add(1).ok_or_else(|| E2eError::Header("stream too long".into()))?;
        self.ended = last;
        header.kind = Kind::Reply as i32;
        header.response_to = self.command_id.clone();
        // The relay built the header with these already: no copy then.
        set_str(&mut header.sender, &self.sender_id);
        set_str(&mut header.sender_instance, &self.instance);
        header.seal = SEAL_V1;
        header.epoch = self.epoch.clone();
        header.seq = seq;
        header.stream_seq = seq;
        header.stream_final = last;
        let header_bytes = crate::wire::frame::encode_header(&header);
        let mut buf = payload::encode(None, plaintext);
        crypto::seal(&self.aead, nonce(&self.prefix, seq), &header_bytes, &mut buf)
            .map_err(|_| E2eError::Seal)?;
        Ok(SealedReply { header: header_bytes, payload: pool::freeze(buf) })
    }
}

/// A reply that passed every check.
#[derive(Debug)]
pub struct OpenedReply {
    /// The decoded header (authenticated).
    pub header: RoutingHeader,
    /// The application payload.
    pub plaintext: Bytes,
    /// Its position in its stream.
    pub stream_seq: u64,
    /// The last reply of its stream.
    pub last: bool,
}

struct Stream {
    aead: LessSafeKey,
    prefix: [u8; 4],
    next: u64,
    ended: bool,
}

/// Opens the replies to one request, on the requesting instance.
pub struct ReplyOpener {
    key: ReplyKey,
    command_id: Bytes,
    skew_ms: u64,
    streams: HashMap<(String, [u8; 16]), Stream>,
}

impl ReplyOpener {
    /// For the replies to the command with `command_id`, sealed under `key`
    /// (from [`crate::e2e::Sealed::reply_key`]).
    pub fn new(key: ReplyKey, command_id: impl Into<Bytes>) -> Self {
        Self { key, command_id: command_id.into(), skew_ms: 30_000, streams: HashMap::new() }
    }

    /// Opens one reply. Replies of a stream must arrive in order.
    pub fn open(&mut self, deliver: &Deliver, now_ms: u64) -> Result<OpenedReply, OpenError> {
        let header = decode_header(&deliver.header)?;
        let plaintext = self.open_decoded(deliver, &header, now_ms)?;
        Ok(OpenedReply { stream_seq: header.stream_seq, last: header.stream_final, header, plaintext })
    }

    /// [`ReplyOpener::open`] for a caller that has already decoded
    /// `deliver.header` (`header` must be exactly that decoding); gives the
    /// application payload.
    pub fn open_decoded(
        &mut self,
        deliver: &Deliver,
        header: &RoutingHeader,
        now_ms: u64,
    ) -> Result<Bytes, OpenError> {
        if header.seal != SEAL_V1 {
            return Err(OpenError::NotSealed);
        }
        if header.kind != Kind::Reply as i32 || header.response_to != self.command_id {
            return Err(OpenError::WrongCommand);
        }
        check_sender(header, deliver)?;
        if header.seq != header.stream_seq {
            return Err(OpenError::MalformedHeader("seq must equal stream_seq".into()));
        }
        let epoch = epoch_of(header)?;
        let slot = (header.sender.clone(), epoch);
        let (aead, prefix) = match self.streams.get(&slot) {
            Some(s) => (None, s.prefix),
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    return Err(OpenError::MalformedHeader("too many reply streams".into()));
                }
                let (a, p) =
                    self.key.keys(&epoch, &self.command_id, &header.sender).map_err(OpenError::BadGrant)?;
                (Some(a), p)
            }
        };
        let key = match (&aead, self.streams.get(&slot)) {
            (Some(a), _) => a,
            (None, Some(s)) => &s.aead,
            (None, None) => return Err(OpenError::NoGrant),
        };
        let plain = crypto::open(key, nonce(&prefix, header.seq), &deliver.header, &deliver.payload)
            .map_err(|_| OpenError::BadAead)?;
        if header.expires_at_ms != 0 && now_ms > header.expires_at_ms.saturating_add(self.skew_ms) {
            return Err(OpenError::Expired { expires_at_ms: header.expires_at_ms });
        }
        let (_, at) = payload::decode(&plain)?;
        let stream = match aead {
            Some(aead) => self.streams.entry(slot).or_insert(Stream { aead, prefix, next: 0, ended: false }),
            None => self.streams.get_mut(&slot).ok_or(OpenError::NoGrant)?,
        };
        if stream.ended {
            return Err(OpenError::AfterFinal);
        }
        if header.stream_seq < stream.next {
            return Err(OpenError::Replay);
        }
        if header.stream_seq > stream.next {
            return Err(OpenError::StreamGap { expected: stream.next, got: header.stream_seq });
        }
        stream.next += 1;
        stream.ended = header.stream_final;
        Ok(pool::freeze(plain).slice(at..))
    }

    /// Whether some replier's stream has ended with its final reply.
    pub fn is_complete(&self) -> bool {
        self.streams.values().any(|s| s.ended)
    }

    /// Call when the request is over (e.g. its timeout): an error when no
    /// stream reached its final reply, i.e. the stream was cut.
    pub fn finish(&self) -> Result<(), OpenError> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(OpenError::Truncated { received: self.streams.values().map(|s| s.next).sum() })
        }
    }
}
