//! The payload seam: every payload the relay sends passes through
//! [`PayloadCodec::seal`], every payload it receives through
//! [`PayloadCodec::open`].
//!
//! [`Plain`] sends JSON bytes as they are; end-to-end sealing plugs in here
//! without touching the connection, the handlers or the router. The relay
//! encodes the routing header exactly once, and the bytes the codec sees as
//! associated data are the bytes that go on the wire. This module must never
//! look inside payloads for routing, and never log them.

use std::fmt;

use bytes::Bytes;

use crate::wire::{Deliver, RoutingHeader, ServiceBlob};

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
    /// The payload failed authentication or could not be decrypted.
    #[error("payload could not be opened: {0}")]
    Open(String),
    /// The payload could not be sealed (no key, no grant, policy expired, …).
    #[error("payload could not be sealed: {0}")]
    Seal(String),
}

/// A payload ready to send: what goes into `Send.payload`, `tags` and `grants`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SealedPayload {
    /// The bytes the router forwards (ciphertext when sealed).
    pub payload: Bytes,
    /// Per-receiving-service authentication tags.
    pub tags: Vec<ServiceBlob>,
    /// Per-receiving-service key grants.
    pub grants: Vec<ServiceBlob>,
}

/// The context of an outgoing message, handed to [`PayloadCodec::seal`].
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The routing header as it was encoded.
    pub header: &'a RoutingHeader,
    /// The exact header bytes that travel in `Send.header`: the associated data.
    pub header_bytes: &'a Bytes,
    /// For a reply: the header of the command it answers (a sealing codec
    /// finds the reply key it opened from that command by its id).
    pub command: Option<&'a RoutingHeader>,
}

/// Encodes outgoing payloads and decodes incoming ones.
///
/// Implementations keep whatever state they need (sender keys, epochs,
/// reply keys by command id) behind `&self`; the relay calls them from
/// several tasks at once.
pub trait PayloadCodec: fmt::Debug + Send + Sync + 'static {
    /// Sets the header fields the codec owns (`seal`, `epoch`, `seq`,
    /// `policy_serial`) before the header is encoded. `command` is set for
    /// replies.
    fn prepare(&self, header: &mut RoutingHeader, command: Option<&RoutingHeader>) -> Result<(), CodecError>;

    /// Turns the serialized payload into what is sent.
    fn seal(&self, outgoing: Outgoing<'_>, payload: Bytes) -> Result<SealedPayload, CodecError>;

    /// Turns a delivered payload back into the serialized payload. `header`
    /// is `deliver.header` decoded; `deliver.header` holds its exact bytes.
    fn open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError>;
}

/// No sealing: payloads travel as their JSON bytes (inside TLS only).
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// The header's `seal` value for plain payloads.
pub const SEAL_PLAIN: u32 = 0;

impl PayloadCodec for Plain {
    fn prepare(
        &self,
        header: &mut RoutingHeader,
        _command: Option<&RoutingHeader>,
    ) -> Result<(), CodecError> {
        header.seal = SEAL_PLAIN;
        Ok(())
    }

    fn seal(&self, _outgoing: Outgoing<'_>, payload: Bytes) -> Result<SealedPayload, CodecError> {
        Ok(SealedPayload { payload, tags: Vec::new(), grants: Vec::new() })
    }

    fn open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError> {
        if header.seal != SEAL_PLAIN {
            return Err(CodecError::Unsupported { seal: header.seal });
        }
        Ok(deliver.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_passes_bytes_through_and_refuses_sealed_payloads() {
        let mut header = RoutingHeader { seal: 7, ..Default::default() };
        Plain.prepare(&mut header, None).unwrap();
        assert_eq!(header.seal, SEAL_PLAIN);
        let header_bytes = crate::wire::frame::encode_header(&header);
        let sealed = Plain
            .seal(
                Outgoing { header: &header, header_bytes: &header_bytes, command: None },
                Bytes::from_static(b"{}"),
            )
            .unwrap();
        assert_eq!(sealed.payload, Bytes::from_static(b"{}"));
        assert!(sealed.tags.is_empty() && sealed.grants.is_empty());

        let deliver = Deliver { payload: Bytes::from_static(b"[1]"), ..Default::default() };
        assert_eq!(Plain.open(&deliver, &header).unwrap(), Bytes::from_static(b"[1]"));
        let sealed_header = RoutingHeader { seal: 1, ..Default::default() };
        assert!(matches!(Plain.open(&deliver, &sealed_header), Err(CodecError::Unsupported { seal: 1 })));
    }
}
