//! The sender side: sender-key epochs, grants, and sealing.
//!
//! One [`Sealer`] per relay instance. Per message name it keeps one current
//! *epoch*: 16 random bytes of id, a random 32-byte sender key `sk`, and a
//! random 32-byte auth key `ak_R` per receiving service. Each message:
//!
//! ```text
//! k_enc   = HKDF-SHA256(salt = epoch, ikm = sk, info = "exocom/v1/enc"   ‖ name)
//! prefix  = HKDF-SHA256(salt = epoch, ikm = sk, info = "exocom/v1/nonce" ‖ name)[..4]
//! nonce   = prefix ‖ u64_be(seq)
//! payload = ChaCha20-Poly1305(k_enc, nonce, envelope ‖ app, aad = header_bytes) ‖ tag16
//! h       = SHA-256(header_bytes ‖ payload)
//! tag_R   = HMAC-SHA256(ak_R, h)[..16]            (one per receiving service)
//! ```
//!
//! `seq` counts from 0 within the epoch and never repeats under a key; the
//! keys live only in memory, so a restart always starts a new epoch and no
//! nonce can be reused after a crash. A new epoch starts when the epoch is
//! older than [`EpochConfig::max_age_ms`], has sent
//! [`EpochConfig::max_messages`], the sequence number would overflow, the
//! set of receivers (service + receive key) changes, or the policy serial
//! changes. This module never writes a key anywhere.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ring::aead::LessSafeKey;
use ring::hmac;

use super::announce::VerifiedAnnouncement;
use super::crypto;
use super::grant::{self, GrantParams, GrantSecrets};
use super::identity::SigningIdentity;
use super::payload;
use super::reply::ReplyKey;
use super::{E2eError, MAX_GRANTS_PER_FRAME, SEAL_V1};
use crate::wire::{Kind, RoutingHeader, ServiceBlob, pool};

const ENC_INFO: &[u8] = b"exocom/v1/enc";
const NONCE_INFO: &[u8] = b"exocom/v1/nonce";
const MAX_NAME: usize = 512;

/// When sender-key epochs end.
#[derive(Clone, Copy, Debug)]
pub struct EpochConfig {
    /// Longest life of an epoch, ms (default 1 hour).
    pub max_age_ms: u64,
    /// Most messages under one epoch (default 2²⁴).
    pub max_messages: u64,
}

impl Default for EpochConfig {
    fn default() -> Self {
        Self { max_age_ms: 3_600_000, max_messages: 1 << 24 }
    }
}

/// The keys of one epoch, shared by the sealer and in-flight [`Prepared`]s.
struct EpochKeys {
    aead: LessSafeKey,
    nonce_prefix: [u8; 4],
    /// (service, HMAC key) per receiving service.
    tag_keys: Vec<(String, hmac::Key)>,
}

struct Epoch {
    id: [u8; 16],
    /// `id` for the headers (shared, not copied per message).
    id_bytes: Bytes,
    keys: Arc<EpochKeys>,
    started_ms: u64,
    next_seq: u64,
    /// (spiffe id, key id) of every receiver, sorted: the identity of the set.
    receivers: Vec<(String, [u8; 8])>,
    policy_serial: u64,
    grants: Vec<ServiceBlob>,
    grants_confirmed: bool,
}

/// Seals messages for one relay instance.
pub struct Sealer {
    identity: SigningIdentity,
    instance: String,
    config: EpochConfig,
    epochs: HashMap<String, Epoch>,
}

/// A message with its header filled in and a nonce reserved, ready to be
/// sealed (possibly outside the lock that guards the [`Sealer`]).
pub struct Prepared {
    /// The header as it will be sent.
    pub header: RoutingHeader,
    /// Its encoding: the associated data, to be sent as `Send.header`.
    pub header_bytes: Bytes,
    /// Grants to attach to the `Send` (empty once confirmed).
    pub grants: Vec<ServiceBlob>,
    /// The reply key, when the header expects replies.
    pub reply_key: Option<ReplyKey>,
    keys: Arc<EpochKeys>,
    pub(crate) nonce: [u8; 12],
}

/// A sealed message: the fields of a `Send`.
#[derive(Debug)]
pub struct Sealed {
    /// `Send.header`.
    pub header: Bytes,
    /// `Send.payload`.
    pub payload: Bytes,
    /// `Send.tags`: one per receiving service.
    pub tags: Vec<ServiceBlob>,
    /// `Send.grants`: present until [`Sealer::confirm_grants`] is called for the epoch.
    pub grants: Vec<ServiceBlob>,
    /// Keep this to open the replies ([`crate::e2e::ReplyOpener`]).
    pub reply_key: Option<ReplyKey>,
    /// The epoch sealed under.
    pub epoch: [u8; 16],
    /// The sequence number under the epoch.
    pub seq: u64,
}

impl Sealer {
    /// A sealer for this instance. Nothing is generated until the first message.
    pub fn new(identity: SigningIdentity, instance: impl Into<String>, config: EpochConfig) -> Self {
        Self { identity, instance: instance.into(), config, epochs: HashMap::new() }
    }

    /// Fills `header`'s sender and end-to-end fields for a message to
    /// `receivers` (verified announcements, already intersected with the
    /// trusted policy) and reserves a sequence number; starts a new epoch
    /// (and makes its grants) when one of the rotation rules says so.
    pub fn prepare(
        &mut self,
        mut header: RoutingHeader,
        receivers: &[VerifiedAnnouncement],
        policy_serial: u64,
        now_ms: u64,
    ) -> Result<Prepared, E2eError> {
        check_header(&header)?;
        check_receiver_count(receivers)?;
        let config = self.config;
        let rotate = match self.epochs.get(&header.name) {
            None => true,
            Some(e) => {
                now_ms.saturating_sub(e.started_ms) >= config.max_age_ms
                    || e.next_seq >= config.max_messages
                    || e.next_seq == u64::MAX
                    || !is_set(&e.receivers, receivers)
                    || e.policy_serial != policy_serial
            }
        };
        if rotate {
            let set = receiver_set(receivers)?;
            let epoch = self.new_epoch(&header.name, receivers, set, policy_serial, now_ms)?;
            self.epochs.insert(header.name.clone(), epoch);
        }
        let epoch = self.epochs.get_mut(&header.name).ok_or_else(|| E2eError::Header("no epoch".into()))?;
        let seq = epoch.next_seq;
        epoch.next_seq += 1;

        header.seal = SEAL_V1;
        header.epoch = epoch.id_bytes.clone();
        header.seq = seq;
        header.policy_serial = policy_serial;
        // The relay built the header with these already: no copy then.
        set_str(&mut header.sender, self.identity.spiffe_id());
        set_str(&mut header.sender_instance, &self.instance);
        let reply_key = if header.expects_reply { Some(ReplyKey::generate()?) } else { None };
        let header_bytes = crate::wire::frame::encode_header(&header);
        Ok(Prepared {
            header,
            header_bytes,
            grants: if epoch.grants_confirmed { Vec::new() } else { epoch.grants.clone() },
            reply_key,
            keys: epoch.keys.clone(),
            nonce: nonce(&epoch.keys.nonce_prefix, seq),
        })
    }

    /// [`prepare`](Self::prepare) and [`Prepared::seal`] in one call.
    pub fn seal(
        &mut self,
        header: RoutingHeader,
        receivers: &[VerifiedAnnouncement],
        policy_serial: u64,
        plaintext: &[u8],
        now_ms: u64,
    ) -> Result<Sealed, E2eError> {
        self.prepare(header, receivers, policy_serial, now_ms)?.seal(plaintext)
    }

    /// The router accepted a `Send` that carried the grants of `epoch` for
    /// `name`: it stores them with each receiving queue, so later messages
    /// of the epoch go without grants. Until this is called every message
    /// carries them (a refused first `Send` must not strand the epoch).
    pub fn confirm_grants(&mut self, name: &str, epoch: &[u8]) {
        if let Some(e) = self.epochs.get_mut(name)
            && e.id[..] == *epoch
        {
            e.grants_confirmed = true;
        }
    }

    /// Ends every epoch now (e.g. a certificate was revoked): the next
    /// message of each name starts a new one.
    pub fn rotate_all(&mut self) {
        self.epochs.clear();
    }

    /// The SPIFFE id this sealer signs as.
    pub fn spiffe_id(&self) -> &str {
        self.identity.spiffe_id()
    }

    #[cfg(test)]
    pub(crate) fn set_next_seq(&mut self, name: &str, seq: u64) {
        if let Some(e) = self.epochs.get_mut(name) {
            e.next_seq = seq;
        }
    }

    fn new_epoch(
        &self,
        name: &str,
        receivers: &[VerifiedAnnouncement],
        set: Vec<(String, [u8; 8])>,
        policy_serial: u64,
        now_ms: u64,
    ) -> Result<Epoch, E2eError> {
        let id = crypto::random::<16>().map_err(|_| E2eError::Random)?;
        let sender_key = crypto::random::<32>().map_err(|_| E2eError::Random)?;
        let params = GrantParams { sender_instance: &self.instance, name, epoch: id, created_ms: now_ms };
        let mut grants = Vec::with_capacity(receivers.len());
        let mut tag_keys = Vec::with_capacity(receivers.len());
        for r in receivers {
            let auth_key = crypto::random::<32>().map_err(|_| E2eError::Random)?;
            let secrets = GrantSecrets { sender_key, auth_key };
            let data = grant::create(&self.identity, &params, r, &secrets)?;
            grants.push(ServiceBlob { service: r.service.clone(), data: Bytes::from(data) });
            tag_keys.push((r.service.clone(), hmac::Key::new(hmac::HMAC_SHA256, &auth_key)));
        }
        let (aead, nonce_prefix) = message_keys(&sender_key, &id, name)?;
        tracing::debug!(name, receivers = receivers.len(), "new sender-key epoch");
        Ok(Epoch {
            id,
            id_bytes: Bytes::copy_from_slice(&id),
            keys: Arc::new(EpochKeys { aead, nonce_prefix, tag_keys }),
            started_ms: now_ms,
            next_seq: 0,
            receivers: set,
            policy_serial,
            grants,
            grants_confirmed: false,
        })
    }
}

impl Prepared {
    /// Seals `plaintext` (the application payload).
    pub fn seal(self, plaintext: &[u8]) -> Result<Sealed, E2eError> {
        let mut buf = payload::encode(self.reply_key.as_ref(), plaintext);
        crypto::seal(&self.keys.aead, self.nonce, &self.header_bytes, &mut buf)
            .map_err(|_| E2eError::Seal)?;
        let h = crypto::sha256(&[&self.header_bytes, &buf]);
        let tags = self
            .keys
            .tag_keys
            .iter()
            .map(|(service, key)| ServiceBlob {
                service: service.clone(),
                data: Bytes::copy_from_slice(&crypto::auth_tag(key, &h)),
            })
            .collect();
        let mut epoch = [0u8; 16];
        epoch.copy_from_slice(&self.header.epoch);
        Ok(Sealed {
            header: self.header_bytes,
            payload: pool::freeze(buf),
            tags,
            grants: self.grants,
            reply_key: self.reply_key,
            epoch,
            seq: self.header.seq,
        })
    }
}

/// The AEAD key and nonce prefix of (sender key, epoch, name).
pub(crate) fn message_keys(
    sender_key: &[u8; 32],
    epoch: &[u8; 16],
    name: &str,
) -> Result<(LessSafeKey, [u8; 4]), E2eError> {
    let (k_enc, prefix) = crypto::hkdf_key_and_prefix(
        epoch,
        sender_key,
        &[ENC_INFO, name.as_bytes()],
        &[NONCE_INFO, name.as_bytes()],
    );
    Ok((crypto::aead_key(&k_enc).map_err(|_| E2eError::Seal)?, prefix))
}

/// `prefix ‖ u64_be(seq)`.
pub(crate) fn nonce(prefix: &[u8; 4], seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(prefix);
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn check_header(header: &RoutingHeader) -> Result<(), E2eError> {
    if header.name.is_empty() || header.name.len() > MAX_NAME {
        return Err(E2eError::Header("name must be 1 to 512 bytes".into()));
    }
    if header.id.len() != 16 {
        return Err(E2eError::Header("id must be 16 bytes".into()));
    }
    if header.kind == Kind::Reply as i32 {
        return Err(E2eError::Header("replies are sealed with a ReplySealer".into()));
    }
    Ok(())
}

fn check_receiver_count(receivers: &[VerifiedAnnouncement]) -> Result<(), E2eError> {
    if receivers.is_empty() {
        return Err(E2eError::NoReceivers);
    }
    if receivers.len() > MAX_GRANTS_PER_FRAME {
        return Err(E2eError::TooManyReceivers { n: receivers.len(), max: MAX_GRANTS_PER_FRAME });
    }
    Ok(())
}

/// Whether `receivers` are, in some order, exactly the (SPIFFE id, key id)
/// pairs of `set` (an epoch's, sorted and without repeats), so its epoch
/// still fits; asked per message, so it compares instead of building the
/// set again. Every receiver is in `set`, none twice, and there are as many.
fn is_set(set: &[(String, [u8; 8])], receivers: &[VerifiedAnnouncement]) -> bool {
    fn pair(r: &VerifiedAnnouncement) -> (&str, [u8; 8]) {
        (r.spiffe_id.as_str(), r.key_id)
    }
    set.len() == receivers.len()
        && receivers.iter().enumerate().all(|(i, r)| {
            set.binary_search_by(|(id, key)| (id.as_str(), *key).cmp(&pair(r))).is_ok()
                && !receivers[..i].iter().any(|q| pair(q) == pair(r))
        })
}

/// Sets `field` to `value`, reusing its buffer.
pub(super) fn set_str(field: &mut String, value: &str) {
    if field != value {
        field.clear();
        field.push_str(value);
    }
}

/// The identity of a receiver set: its (SPIFFE id, key id) pairs, sorted.
/// Refuses two receivers of one service (the count is checked before).
fn receiver_set(receivers: &[VerifiedAnnouncement]) -> Result<Vec<(String, [u8; 8])>, E2eError> {
    let mut set: Vec<_> = receivers.iter().map(|r| (r.spiffe_id.clone(), r.key_id)).collect();
    set.sort();
    let mut services: Vec<&str> = receivers.iter().map(|r| r.service.as_str()).collect();
    services.sort_unstable();
    if let Some(w) = services.windows(2).find(|w| w[0] == w[1]) {
        return Err(E2eError::DuplicateReceiver(w[0].to_owned()));
    }
    Ok(set)
}
