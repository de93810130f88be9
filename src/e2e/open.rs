//! The receiver side: grants, per-service tags, AEAD, sender checks,
//! expiry and replay.
//!
//! One [`Opener`] per relay instance. [`Opener::open`] checks, in order:
//!
//! 1. the header decodes, is sealed (`seal = 1`) and is not a reply;
//! 2. `header.sender` equals the sender the router authenticated
//!    (`Deliver.sender_id`, and `Deliver.sender` is that id's service);
//! 3. a grant for (sender, instance, epoch) is cached, or `Deliver.grant`
//!    verifies (chain, SPIFFE id, signature, addressed to us), names this
//!    sender, instance and epoch, and the trusted policy lets that sender
//!    send the grant's name;
//! 4. `header.name` equals the grant's name;
//! 5. this service's tag `HMAC(ak, SHA-256(header ‖ payload))[..16]`
//!    (constant-time compare);
//! 6. expiry: `now ≤ expires_at_ms + skew` (0 = no expiry);
//! 7. replay: the id is not in the inbox of processed ids and `seq` is not
//!    marked processed (nor below) the window of its epoch;
//! 8. the AEAD opens (ChaCha20-Poly1305, header bytes as associated data);
//! 9. the envelope parses.
//!
//! [`Opener::begin`] does 1–4 and 6–7 (what needs the opener's state; its
//! verdict on 6–7 waits for the tag), in delivery order, since a grant
//! comes with its epoch's first delivery only; [`Unsealing::finish`] does
//! 5, 8 and 9 with the epoch's keys alone, on any thread.
//!
//! Only then does a handler see the plaintext. Nothing is recorded as seen
//! until [`Opener::mark_processed`]: a redelivery of a message whose handler
//! did not finish passes again. Errors say what failed, never key material.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::LessSafeKey;
use ring::hmac;

use super::crypto::{self, AUTH_TAG_LEN};
use super::grant::{self, OpenLimits};
use super::identity::TrustAnchors;
use super::keys::ReceiveKey;
use super::payload::{self, PayloadError};
use super::replay::{Inbox, ReplayWindow, Seen};
use super::reply::ReplyKey;
use super::seal::{message_keys, nonce};
use super::spiffe::split_service_id;
use super::{E2eError, SEAL_V1};
use crate::idhash::IdHash;
use crate::wire::{Deliver, Kind, RoutingHeader, pool};

/// Why a delivery was refused. Every variant is a reason to nack (no
/// requeue) and count; none of them reaches a handler.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The header bytes do not decode, or a field has the wrong size.
    #[error("malformed header: {0}")]
    MalformedHeader(String),
    /// The payload is not sealed (`seal` ≠ 1).
    #[error("payload is not sealed")]
    NotSealed,
    /// A reply; open it with the request's [`crate::e2e::ReplyOpener`].
    #[error("a reply; open it with the request's ReplyOpener")]
    IsReply,
    /// The sealed sender is not the sender the router authenticated.
    #[error("sealed sender {header:?} is not the authenticated sender {authenticated:?}")]
    SenderMismatch {
        /// `header.sender`.
        header: String,
        /// `Deliver.sender_id` / `Deliver.sender`.
        authenticated: String,
    },
    /// No grant for the header's epoch is known or attached.
    #[error("no key grant for this sender epoch")]
    NoGrant,
    /// The attached grant failed verification or unwrapping.
    #[error("bad key grant: {0}")]
    BadGrant(#[source] E2eError),
    /// The grant is valid but for another sender, instance, epoch or name.
    #[error("grant does not match the message: {0}")]
    GrantMismatch(&'static str),
    /// The trusted policy does not let this sender send this name.
    #[error("{sender} may not send {name}")]
    Unauthorized {
        /// The sender service.
        sender: String,
        /// The message name.
        name: String,
    },
    /// This service's authentication tag is missing or wrong.
    #[error("authentication tag does not verify")]
    BadTag,
    /// The AEAD did not open (payload or header altered, wrong key).
    #[error("payload does not decrypt")]
    BadAead,
    /// Past `expires_at_ms` plus the allowed skew.
    #[error("expired at {expires_at_ms} ms")]
    Expired {
        /// The header's expiry.
        expires_at_ms: u64,
    },
    /// Already processed (same id or same sequence number).
    #[error("replay of a processed message")]
    Replay,
    /// The sequence number is below the replay window.
    #[error("sequence number below the replay window")]
    TooOld,
    /// The opened envelope is malformed.
    #[error(transparent)]
    MalformedPayload(#[from] PayloadError),
    /// A reply to another command.
    #[error("reply to another command")]
    WrongCommand,
    /// A reply stream skipped positions.
    #[error("reply stream gap: expected {expected}, got {got}")]
    StreamGap {
        /// The next position expected.
        expected: u64,
        /// The position received.
        got: u64,
    },
    /// A reply after the stream's final one.
    #[error("reply after the end of the stream")]
    AfterFinal,
    /// The reply stream ended without its final reply.
    #[error("reply stream truncated after {received} replies (no final reply)")]
    Truncated {
        /// Replies received.
        received: u64,
    },
}

impl OpenError {
    /// A short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MalformedHeader(_) => "malformed_header",
            Self::NotSealed => "not_sealed",
            Self::IsReply => "is_reply",
            Self::SenderMismatch { .. } => "sender_mismatch",
            Self::NoGrant => "no_grant",
            Self::BadGrant(_) => "bad_grant",
            Self::GrantMismatch(_) => "grant_mismatch",
            Self::Unauthorized { .. } => "unauthorized",
            Self::BadTag => "bad_tag",
            Self::BadAead => "bad_aead",
            Self::Expired { .. } => "expired",
            Self::Replay => "replay",
            Self::TooOld => "too_old",
            Self::MalformedPayload(_) => "malformed_payload",
            Self::WrongCommand => "wrong_command",
            Self::StreamGap { .. } => "stream_gap",
            Self::AfterFinal => "after_final",
            Self::Truncated { .. } => "truncated",
        }
    }
}

/// Receiver limits.
#[derive(Clone, Copy, Debug)]
pub struct OpenerConfig {
    /// Clock skew tolerated on expiry and grant creation, ms (default 30 s).
    pub skew_ms: u64,
    /// Oldest grant accepted, ms (default 7 days: the longest a backlog may wait).
    pub max_grant_age_ms: u64,
    /// Most sender epochs kept (default 4096; the oldest is forgotten first).
    pub max_epochs: usize,
    /// Processed message ids remembered (default 100 000).
    pub inbox_capacity: usize,
}

impl Default for OpenerConfig {
    fn default() -> Self {
        Self { skew_ms: 30_000, max_grant_age_ms: 7 * 86_400_000, max_epochs: 4096, inbox_capacity: 100_000 }
    }
}

/// A delivery that passed every check.
#[derive(Debug)]
pub struct Opened {
    /// The decoded header (authenticated).
    pub header: RoutingHeader,
    /// The application payload.
    pub plaintext: Bytes,
    /// The reply key, when the sender expects replies.
    pub reply_key: Option<ReplyKey>,
    /// The sender's service name (verified).
    pub sender_service: Arc<str>,
}

/// What [`Opener::open_decoded`] gives: an [`Opened`] without the header the
/// caller already holds.
#[derive(Debug)]
pub struct OpenedPayload {
    /// The application payload.
    pub plaintext: Bytes,
    /// The reply key, when the sender expects replies.
    pub reply_key: Option<ReplyKey>,
    /// The sender's service name (verified), shared with its epoch's keys.
    pub sender_service: Arc<str>,
}

/// A delivery [`Opener::begin`] passed: what is left of opening it (5, 8,
/// 9 and the verdicts of 6–7) needs only the sender epoch's keys.
#[must_use = "a delivery is opened only by finishing it"]
pub struct Unsealing {
    keys: Arc<EpochKeys>,
    sender_service: Arc<str>,
    /// Expired or replayed, reported only once the tag verified (so a
    /// forgery is counted as one, whatever its header claims).
    after_tag: Option<OpenError>,
}

impl std::fmt::Debug for Unsealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealing").field("sender_service", &self.sender_service).finish_non_exhaustive()
    }
}

impl Unsealing {
    /// Checks the tag and opens the payload of the delivery this was begun
    /// for: `deliver` and `header` must be the ones given to
    /// [`Opener::begin`].
    pub fn finish(self, deliver: &Deliver, header: &RoutingHeader) -> Result<OpenedPayload, OpenError> {
        let keys = &*self.keys;
        let h = crypto::sha256(&[&deliver.header, &deliver.payload]);
        let expected = crypto::auth_tag(&keys.tag_key, &h);
        if deliver.auth_tag.len() != AUTH_TAG_LEN || !crypto::ct_eq(&expected, &deliver.auth_tag) {
            return Err(OpenError::BadTag);
        }
        if let Some(err) = self.after_tag {
            return Err(err);
        }
        let plain = crypto::open(
            &keys.aead,
            nonce(&keys.nonce_prefix, header.seq),
            &deliver.header,
            &deliver.payload,
        )
        .map_err(|_| OpenError::BadAead)?;
        let (reply_key, at) = payload::decode(&plain)?;
        Ok(OpenedPayload {
            plaintext: pool::freeze(plain).slice(at..),
            reply_key,
            sender_service: self.sender_service,
        })
    }
}

/// The policy question a receiver asks: may `sender_service` send `name`?
pub type MaySend = dyn Fn(&str, &str) -> bool + Send + Sync;

#[derive(Clone, Debug, PartialEq, Eq)]
struct EpochRef {
    sender_id: String,
    instance: String,
    epoch: [u8; 16],
}

impl EpochRef {
    /// Whether this is the epoch of `header`'s sender and instance (the
    /// epoch id itself is the table's key).
    fn is(&self, header: &RoutingHeader) -> bool {
        self.sender_id == header.sender && self.instance == header.sender_instance
    }
}

struct EpochState {
    name: String,
    sender_service: Arc<str>,
    keys: Arc<EpochKeys>,
    window: ReplayWindow,
}

/// What opening a delivery of one sender epoch takes, shared with the
/// [`Unsealing`]s in flight.
struct EpochKeys {
    aead: LessSafeKey,
    nonce_prefix: [u8; 4],
    tag_key: hmac::Key,
}

/// Opens deliveries for one relay instance.
pub struct Opener {
    keys: Vec<ReceiveKey>,
    my_id: String,
    anchors: TrustAnchors,
    may_send: Box<MaySend>,
    config: OpenerConfig,
    /// Sender epochs by epoch id; the few entries under one id (different
    /// senders may pick the same id) are told apart by sender and instance,
    /// so a lookup compares the header's strings instead of copying them.
    epochs: HashMap<[u8; 16], Vec<(EpochRef, EpochState)>, IdHash>,
    order: VecDeque<EpochRef>,
    inbox: Inbox,
}

impl Opener {
    /// An opener for the service `my_id` (its SPIFFE id) holding
    /// `receive_key`. `may_send(sender_service, name)` answers from the
    /// trusted policy.
    pub fn new(
        receive_key: ReceiveKey,
        my_id: impl Into<String>,
        anchors: TrustAnchors,
        may_send: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
        config: OpenerConfig,
    ) -> Self {
        Self {
            keys: vec![receive_key],
            my_id: my_id.into(),
            anchors,
            may_send: Box::new(may_send),
            config,
            epochs: HashMap::with_hasher(IdHash::new()),
            order: VecDeque::new(),
            inbox: Inbox::new(config.inbox_capacity),
        }
    }

    /// Also accept grants wrapped to `key` (the previous receive key while
    /// a rotation overlaps).
    pub fn add_receive_key(&mut self, key: ReceiveKey) {
        if !self.keys.iter().any(|k| k.key_id() == key.key_id()) {
            self.keys.push(key);
        }
    }

    /// Checks and opens one delivery (see the module docs for the order).
    pub fn open(&mut self, deliver: &Deliver, now_ms: u64) -> Result<Opened, OpenError> {
        let header = decode_header(&deliver.header)?;
        let OpenedPayload { plaintext, reply_key, sender_service } =
            self.open_decoded(deliver, &header, now_ms)?;
        Ok(Opened { header, plaintext, reply_key, sender_service })
    }

    /// [`Opener::open`] for a caller that has already decoded
    /// `deliver.header`: `header` must be exactly that decoding (the relay
    /// decodes it once to find the handler). Every check runs on `header`;
    /// the AEAD and the tag still bind the header bytes themselves.
    pub fn open_decoded(
        &mut self,
        deliver: &Deliver,
        header: &RoutingHeader,
        now_ms: u64,
    ) -> Result<OpenedPayload, OpenError> {
        self.begin(deliver, header, now_ms)?.finish(deliver, header)
    }

    /// The first half of [`Opener::open_decoded`]: every check that needs
    /// this opener's state (1–4, and 6–7 whose verdict waits for the tag).
    /// Call it in delivery order: an epoch's grant comes with its first
    /// delivery only, so a later delivery begun before it finds no grant.
    /// The rest ([`Unsealing::finish`]) needs only the epoch's keys and can
    /// run on another task while this opener takes the next delivery.
    pub fn begin(
        &mut self,
        deliver: &Deliver,
        header: &RoutingHeader,
        now_ms: u64,
    ) -> Result<Unsealing, OpenError> {
        if header.seal != SEAL_V1 {
            return Err(OpenError::NotSealed);
        }
        if header.kind == Kind::Reply as i32 {
            return Err(OpenError::IsReply);
        }
        if header.id.len() != 16 {
            return Err(OpenError::MalformedHeader("id must be 16 bytes".into()));
        }
        check_sender(header, deliver)?;
        let epoch = epoch_of(header)?;
        if self.find(header, &epoch).is_none() {
            if deliver.grant.is_empty() {
                return Err(OpenError::NoGrant);
            }
            let key = EpochRef {
                sender_id: header.sender.clone(),
                instance: header.sender_instance.clone(),
                epoch,
            };
            let state = self.accept_grant(&deliver.grant, &key, now_ms)?;
            self.insert_epoch(key, state);
        }
        let state = self.find(header, &epoch).ok_or(OpenError::NoGrant)?;
        if state.name != header.name {
            return Err(OpenError::GrantMismatch("name"));
        }
        let after_tag = if header.expires_at_ms != 0
            && now_ms > header.expires_at_ms.saturating_add(self.config.skew_ms)
        {
            Some(OpenError::Expired { expires_at_ms: header.expires_at_ms })
        } else if self.inbox.contains(&id_of(header)) {
            Some(OpenError::Replay)
        } else {
            match state.window.check(header.seq) {
                Seen::New => None,
                Seen::Processed => Some(OpenError::Replay),
                Seen::TooOld => Some(OpenError::TooOld),
            }
        };
        Ok(Unsealing {
            keys: Arc::clone(&state.keys),
            sender_service: Arc::clone(&state.sender_service),
            after_tag,
        })
    }

    /// Records a message as processed (its handler succeeded): a later copy
    /// with the same id or the same (sender, instance, epoch, seq) is a
    /// replay. Call it before acking.
    pub fn mark_processed(&mut self, header: &RoutingHeader) {
        if header.id.len() == 16 {
            self.inbox.insert(id_of(header));
        }
        let Ok(epoch) = epoch_of(header) else { return };
        if let Some(state) = self.find_mut(header, &epoch) {
            state.window.mark(header.seq);
        }
    }

    /// The epoch `header`'s sender and instance opened under `epoch`.
    fn find(&self, header: &RoutingHeader, epoch: &[u8; 16]) -> Option<&EpochState> {
        let entries = self.epochs.get(epoch)?;
        entries.iter().find(|(k, _)| k.is(header)).map(|(_, state)| state)
    }

    fn find_mut(&mut self, header: &RoutingHeader, epoch: &[u8; 16]) -> Option<&mut EpochState> {
        let entries = self.epochs.get_mut(epoch)?;
        entries.iter_mut().find(|(k, _)| k.is(header)).map(|(_, state)| state)
    }

    fn accept_grant(&self, bytes: &[u8], key: &EpochRef, now_ms: u64) -> Result<EpochState, OpenError> {
        let limits = OpenLimits { max_age_ms: self.config.max_grant_age_ms, skew_ms: self.config.skew_ms };
        let g = grant::open(bytes, &self.keys, &self.my_id, &self.anchors, now_ms, limits)
            .map_err(OpenError::BadGrant)?;
        if g.sender_id != key.sender_id {
            return Err(OpenError::GrantMismatch("sender"));
        }
        if g.sender_instance != key.instance {
            return Err(OpenError::GrantMismatch("sender instance"));
        }
        if g.epoch != key.epoch {
            return Err(OpenError::GrantMismatch("epoch"));
        }
        if !(self.may_send)(&g.sender.service, &g.name) {
            return Err(OpenError::Unauthorized { sender: g.sender.service, name: g.name });
        }
        let (aead, nonce_prefix) =
            message_keys(&g.secrets.sender_key, &g.epoch, &g.name).map_err(OpenError::BadGrant)?;
        Ok(EpochState {
            name: g.name,
            sender_service: Arc::from(g.sender.service),
            keys: Arc::new(EpochKeys {
                aead,
                nonce_prefix,
                tag_key: hmac::Key::new(hmac::HMAC_SHA256, &g.secrets.auth_key),
            }),
            window: ReplayWindow::new(),
        })
    }

    fn insert_epoch(&mut self, key: EpochRef, state: EpochState) {
        while self.order.len() >= self.config.max_epochs.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.forget(&old);
            }
        }
        self.order.push_back(key.clone());
        self.epochs.entry(key.epoch).or_default().push((key, state));
    }

    fn forget(&mut self, key: &EpochRef) {
        if let Some(entries) = self.epochs.get_mut(&key.epoch) {
            entries.retain(|(k, _)| k != key);
            if entries.is_empty() {
                self.epochs.remove(&key.epoch);
            }
        }
    }
}

pub(crate) fn decode_header(bytes: &Bytes) -> Result<RoutingHeader, OpenError> {
    crate::wire::frame::decode_header(bytes).map_err(|e| OpenError::MalformedHeader(e.to_string()))
}

pub(crate) fn epoch_of(header: &RoutingHeader) -> Result<[u8; 16], OpenError> {
    header.epoch.as_ref().try_into().map_err(|_| OpenError::MalformedHeader("epoch must be 16 bytes".into()))
}

fn id_of(header: &RoutingHeader) -> [u8; 16] {
    let mut id = [0u8; 16];
    if header.id.len() == 16 {
        id.copy_from_slice(&header.id);
    }
    id
}

/// `header.sender` must be the router-authenticated identity.
pub(crate) fn check_sender(header: &RoutingHeader, deliver: &Deliver) -> Result<(), OpenError> {
    let mismatch = || OpenError::SenderMismatch {
        header: header.sender.clone(),
        authenticated: deliver.sender_id.clone(),
    };
    if header.sender != deliver.sender_id {
        return Err(mismatch());
    }
    if !deliver.sender.is_empty() {
        let (_, service) = split_service_id(&deliver.sender_id).map_err(|_| mismatch())?;
        if service != deliver.sender {
            return Err(mismatch());
        }
    }
    Ok(())
}
