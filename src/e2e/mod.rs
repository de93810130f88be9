//! End-to-end encryption: the router forwards payloads it can never read,
//! alter, replay or re-address without the receiving relay noticing.
//!
//! Used only by the relay. `router`, `policy`, `audit` and `store` must never
//! import this module, and nothing here may log a key or a plaintext.
//! docs/E2E.md is the specification (formats byte by byte, rotation, replay
//! rules); docs/SECURITY-THREATS.md maps each threat to its test.
//!
//! # Pieces
//!
//! | module | what it does |
//! |---|---|
//! | [`keys`] | a service's static X25519 receive key and its files |
//! | [`identity`] | this instance's certificate + key; pinned CA, CRLs, SPIFFE checks |
//! | [`mod@announce`] | signed key announcements: make, verify, pick receivers |
//! | [`grant`] | a sender key wrapped to one receiving service, signed |
//! | [`seal`] | the sender: epochs, sender keys, sealing, per-service tags |
//! | [`open`] | the receiver: grants, tags, AEAD, sender checks, replay, expiry |
//! | [`reply`] | replies sealed under the command's reply key; stream completeness |
//! | [`payload`] | the small envelope inside every seal (reply key + application bytes) |
//!
//! # How the relay uses it
//!
//! At start: `SigningIdentity::load(cert, key)`, `ReceiveKey::load(dir)`,
//! `TrustAnchors::load(ca)`; send [`announce::announce`]'s bytes in an
//! `Announce` frame; build one [`Sealer`] and one [`Opener`].
//!
//! To send: verify the announcements from `KeyDirectory` with
//! [`verify_announcement`], keep those of the services the policy lets
//! receive the name ([`select_receivers`]), then [`Sealer::seal`] the header
//! and payload and put the result in a `Send`. When a `Send` that carried
//! grants is `Accepted`, call [`Sealer::confirm_grants`].
//!
//! On `Deliver`: [`Opener::open`]; hand the plaintext to the handler; after
//! the handler succeeded, [`Opener::mark_processed`] and ack. A command that
//! expects replies yields a [`ReplyKey`]; replies go out through a
//! [`ReplySealer`] and come back through the requester's [`ReplyOpener`].

pub mod announce;
mod codec;
mod crypto;
pub mod grant;
pub mod identity;
pub mod keys;
pub mod open;
pub mod payload;
mod replay;
pub mod reply;
pub mod seal;
pub mod spiffe;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod testpki;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod vectors;

use std::path::PathBuf;

pub use announce::{VerifiedAnnouncement, announce, select_receivers, verify_announcement};
pub use codec::CodecError;
pub use identity::{SigningIdentity, TrustAnchors};
pub use keys::ReceiveKey;
pub use open::{OpenError, Opened, OpenedPayload, Opener, OpenerConfig, Unsealing};
pub use reply::{OpenedReply, ReplyKey, ReplyOpener, ReplySealer};
pub use seal::{EpochConfig, Prepared, Sealed, Sealer};
pub use spiffe::SpiffeError;

/// `RoutingHeader::seal` of a plain (unsealed) payload.
pub const SEAL_PLAIN: u32 = 0;
/// `RoutingHeader::seal` of a payload sealed as described in docs/E2E.md.
pub const SEAL_V1: u32 = 1;
/// Most receiving services one message (and so one `Send` frame) may have
/// grants for. Caps the work a sender does per message and the grant bytes
/// in a frame (a known denial of service against age-style formats).
pub const MAX_GRANTS_PER_FRAME: usize = 32;

/// Errors of keys, identities, announcements, grants and sealing.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file has the wrong format.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Refused to overwrite an existing key file.
    #[error("{0} exists; refusing to overwrite it")]
    KeyExists(PathBuf),
    /// PEM could not be parsed.
    #[error("PEM: {0}")]
    Pem(String),
    /// A private key was refused.
    #[error("private key: {0}")]
    Key(String),
    /// A certificate or chain was refused (webpki's reason).
    #[error("certificate: {0}")]
    Certificate(String),
    /// The certificate's identity does not satisfy the SPIFFE rules or the claim.
    #[error("identity: {0}")]
    Identity(String),
    /// A SPIFFE id could not be parsed.
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    /// A signature did not verify.
    #[error("bad signature")]
    Signature,
    /// Canonical bytes could not be parsed.
    #[error("malformed: {0}")]
    Codec(#[from] CodecError),
    /// A structurally wrong value (version, algorithm, length).
    #[error("malformed: {0}")]
    Format(String),
    /// Outside the validity window.
    #[error("not valid at this time: {0}")]
    Validity(String),
    /// An X25519 exchange gave the all-zero secret (a low-order public key).
    #[error("X25519 produced the all-zero shared secret (low-order public key)")]
    ZeroSharedSecret,
    /// A grant names another receiver or an unknown receive key.
    #[error("grant is not for us: {0}")]
    NotForUs(String),
    /// A grant's wrapped key did not decrypt.
    #[error("grant did not unwrap")]
    Unwrap,
    /// More receiving services than [`MAX_GRANTS_PER_FRAME`].
    #[error("{n} receiving services; at most {max} per message")]
    TooManyReceivers {
        /// Requested.
        n: usize,
        /// Allowed.
        max: usize,
    },
    /// No receiving service: nobody could open the message.
    #[error("no receiving service with a verified key")]
    NoReceivers,
    /// The same service appears twice among the receivers.
    #[error("service {0:?} appears twice among the receivers")]
    DuplicateReceiver(String),
    /// A header that cannot be sealed (empty name, bad ids).
    #[error("header: {0}")]
    Header(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The AEAD refused to seal (cannot happen with valid keys).
    #[error("sealing failed")]
    Seal,
}
