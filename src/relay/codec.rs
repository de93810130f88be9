//! The payload seam: every message the relay sends passes through
//! [`PayloadCodec::seal`], every payload it receives through
//! [`PayloadCodec::open`] (or, when large, its two halves
//! [`PayloadCodec::begin_open`] and [`Opening::finish`]).
//!
//! [`Plain`] sends JSON bytes as they are; end-to-end sealing
//! ([`RelayBuilder::end_to_end`](super::RelayBuilder::end_to_end)) plugs in here without touching the handlers or the
//! router. The codec owns the final encoding of the routing header: the
//! bytes it returns in [`SealedPayload::header`] are what goes on the wire
//! and, for a sealed message, exactly the AEAD associated data. Replies are
//! sealed and opened per request through [`ReplySealing`] and
//! [`ReplyOpening`], which the codec hands out with the command.
//!
//! This module must never look inside payloads for routing, and never log them.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::rejections::Rejections;
use crate::wire::frame::encode_header;
use crate::wire::{Body, Deliver, KeyDirectory, KeyQuery, RoutingHeader, ServiceBlob};

/// Why a codec refused to seal or open a payload.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message was sealed in a way this codec cannot open (e.g. a sealed
    /// message reaching a relay without end-to-end keys).
    #[error("payload encoding {seal} is not supported by this relay")]
    Unsupported {
        /// The header's `seal` value.
        seal: u32,
    },
    /// The payload failed authentication, was replayed, or could not be
    /// decrypted: somebody on the path (or a co-receiver) tampered with it.
    #[error("message rejected ({label}): {message}")]
    Rejected {
        /// A stable metric name (`bad_tag`, `replay`, …).
        label: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A reply stream ended without its final reply.
    #[error("reply stream truncated: {0}")]
    Truncated(String),
    /// No receiving service has a verified receive key (or the trusted
    /// policy lets nobody receive the name).
    #[error("{0}")]
    NoReceivers(String),
    /// The payload could not be sealed (no key, bad header, …).
    #[error("payload could not be sealed: {0}")]
    Seal(String),
}

impl CodecError {
    /// A stable metric name for the error.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unsupported { .. } => "unsupported_seal",
            Self::Rejected { label, .. } => label,
            Self::Truncated(_) => "truncated",
            Self::NoReceivers(_) => "no_receivers",
            Self::Seal(_) => "seal_failed",
        }
    }
}

/// A message ready to send: what goes into `Send.header`, `payload`, `tags`
/// and `grants`. Kept as is for re-sending after a reconnect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SealedPayload {
    /// The encoded routing header: the exact bytes the router forwards and,
    /// when sealed, the associated data.
    pub header: Bytes,
    /// The bytes the router forwards (ciphertext when sealed).
    pub payload: Bytes,
    /// Per-receiving-service authentication tags.
    pub tags: Vec<ServiceBlob>,
    /// Per-receiving-service key grants.
    pub grants: Vec<ServiceBlob>,
}

/// A sealed command or event, and for a request how to open its replies.
#[derive(Debug)]
pub struct Sealed {
    /// What is sent.
    pub message: SealedPayload,
    /// Opens the replies to this command (set when it expects replies and
    /// the codec seals replies).
    pub replies: Option<Box<dyn ReplyOpening>>,
}

/// An opened delivery.
#[derive(Debug)]
pub struct Opened {
    /// The serialized payload the handler gets.
    pub payload: Bytes,
    /// Seals the replies to this command (set when the codec seals replies
    /// and the command carried a reply key).
    pub replies: Option<Box<dyn ReplySealing>>,
}

/// The second half of opening a delivery (see [`PayloadCodec::begin_open`]).
pub trait Opening: Send + 'static {
    /// Finishes opening the delivery the opening was begun for: `deliver`
    /// and `header` must be the ones given to `begin_open`.
    fn finish(self: Box<Self>, deliver: &Deliver, header: &RoutingHeader) -> Result<Opened, CodecError>;
}

/// What [`PayloadCodec::begin_open`] gives.
pub enum Begun {
    /// Opened already (a codec with nothing costly to do).
    Opened(Opened),
    /// The rest, to finish off the connection task.
    Opening(Box<dyn Opening>),
}

impl fmt::Debug for Begun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opened(opened) => f.debug_tuple("Opened").field(opened).finish(),
            Self::Opening(_) => f.write_str("Opening(..)"),
        }
    }
}

/// Seals the replies of one handling of a command.
pub trait ReplySealing: fmt::Debug + Send + Sync + 'static {
    /// Seals one reply; the codec sets the end-to-end fields and encodes
    /// `header`.
    fn seal(&mut self, header: RoutingHeader, payload: Bytes) -> Result<SealedPayload, CodecError>;
}

/// Opens the replies to one request.
pub trait ReplyOpening: fmt::Debug + Send + Sync + 'static {
    /// Opens one delivered reply (`header` is `deliver.header` decoded).
    fn open(&mut self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError>;
    /// Whether a reply stream started but none reached its final reply
    /// ([`CodecError::Truncated`] then).
    fn finish(&self) -> Result<(), CodecError>;
}

/// Encodes outgoing payloads and decodes incoming ones.
///
/// Implementations keep whatever state they need (sender keys, epochs,
/// verified keys) behind `&self`; the relay calls them from several tasks at
/// once. Every method but [`seal`](Self::seal) and [`open`](Self::open) has
/// a do-nothing default, for codecs without keys.
pub trait PayloadCodec: fmt::Debug + Send + Sync + 'static {
    /// Seals a command or event: sets the header fields the codec owns,
    /// encodes the header once and seals the payload under those bytes.
    /// `now_ms` is the send's time (Unix ms), read once per send by the
    /// relay for the message id, the header and this.
    fn seal(&self, header: RoutingHeader, payload: Bytes, now_ms: u64) -> Result<Sealed, CodecError>;

    /// Seals a reply when the command came without a [`ReplySealing`].
    fn seal_reply(&self, header: RoutingHeader, payload: Bytes) -> Result<SealedPayload, CodecError> {
        let _ = (header, payload);
        Err(CodecError::Seal("this codec seals replies only with the command's reply key".into()))
    }

    /// Turns a delivered command or event back into the serialized payload.
    /// `header` is `deliver.header` decoded; `deliver.header` holds its exact bytes.
    fn open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Opened, CodecError>;

    /// [`open`](Self::open) in two halves, for a payload large enough to
    /// be opened off the connection task: this half runs in delivery order
    /// and does what needs the codec's state (an end-to-end grant comes
    /// with its epoch's first delivery only); [`Opening::finish`] does the
    /// rest anywhere. The default opens it all here.
    fn begin_open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Begun, CodecError> {
        self.open(deliver, header).map(Begun::Opened)
    }

    /// Opens a reply to a request that came without a [`ReplyOpening`].
    fn open_reply(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError> {
        let _ = deliver;
        Err(CodecError::Unsupported { seal: header.seal })
    }

    /// The handler of an opened delivery succeeded: from now on a copy of it
    /// is a replay.
    fn processed(&self, header: &RoutingHeader) {
        let _ = header;
    }

    /// The router accepted a message that carried key grants (they arrived
    /// and need not be sent again); `header` is the message's encoded header.
    fn accepted(&self, header: &Bytes) {
        let _ = header;
    }

    /// Frames to send after each `Welcome`, before subscribing (key
    /// announcement, key query). `instance` is this relay's instance id.
    fn session_frames(&self, instance: &str) -> Vec<Body> {
        let _ = instance;
        Vec::new()
    }

    /// Frames to send every [`refresh_interval`](Self::refresh_interval).
    fn refresh_frames(&self, instance: &str) -> Vec<Body> {
        let _ = instance;
        Vec::new()
    }

    /// How often [`refresh_frames`](Self::refresh_frames) runs (`None`: never).
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// The router sent its key directory.
    fn key_directory(&self, directory: KeyDirectory) {
        let _ = directory;
    }

    /// Before sealing at `now_ms` (Unix ms): a key query to send first,
    /// when a service that may receive `header.name` has no verified key
    /// and the keys were not asked for recently.
    fn missing_keys(&self, header: &RoutingHeader, now_ms: u64) -> Option<KeyQuery> {
        let _ = (header, now_ms);
        None
    }

    /// Changes every time a key directory was processed.
    fn key_updates(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// The counters the codec itself adds rejections to (e.g. refused key
    /// announcements); the relay counts its rejections there too.
    fn rejections(&self) -> Option<Rejections> {
        None
    }
}

/// No sealing: payloads travel as their JSON bytes (inside TLS only).
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// The header's `seal` value for plain payloads.
pub const SEAL_PLAIN: u32 = 0;

impl PayloadCodec for Plain {
    fn seal(&self, mut header: RoutingHeader, payload: Bytes, _now_ms: u64) -> Result<Sealed, CodecError> {
        header.seal = SEAL_PLAIN;
        let header = encode_header(&header);
        Ok(Sealed { message: SealedPayload { header, payload, ..Default::default() }, replies: None })
    }

    fn seal_reply(&self, header: RoutingHeader, payload: Bytes) -> Result<SealedPayload, CodecError> {
        Ok(self.seal(header, payload, 0)?.message)
    }

    fn open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Opened, CodecError> {
        Ok(Opened { payload: self.open_reply(deliver, header)?, replies: None })
    }

    fn open_reply(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError> {
        if header.seal != SEAL_PLAIN {
            return Err(CodecError::Unsupported { seal: header.seal });
        }
        Ok(deliver.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::decode_header;

    #[test]
    fn plain_passes_bytes_through_and_refuses_sealed_payloads() {
        let header = RoutingHeader { seal: 7, name: "a.b".into(), ..Default::default() };
        let sealed = Plain.seal(header, Bytes::from_static(b"{}"), 0).unwrap();
        assert_eq!(sealed.message.payload, Bytes::from_static(b"{}"));
        assert!(sealed.message.tags.is_empty() && sealed.message.grants.is_empty());
        assert!(sealed.replies.is_none());
        let on_wire = decode_header(&sealed.message.header).unwrap();
        assert_eq!((on_wire.seal, on_wire.name.as_str()), (SEAL_PLAIN, "a.b"));

        let deliver = Deliver { payload: Bytes::from_static(b"[1]"), ..Default::default() };
        assert_eq!(Plain.open(&deliver, &on_wire).unwrap().payload, Bytes::from_static(b"[1]"));
        let sealed_header = RoutingHeader { seal: 1, ..Default::default() };
        assert!(matches!(Plain.open(&deliver, &sealed_header), Err(CodecError::Unsupported { seal: 1 })));
        assert_eq!(Plain.open(&deliver, &sealed_header).unwrap_err().label(), "unsupported_seal");
    }
}
