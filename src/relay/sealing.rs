//! End-to-end sealing for the relay: the [`E2e`] payload codec, switched on
//! with [`RelayBuilder::end_to_end`](super::RelayBuilder::end_to_end).
//!
//! It wires `crate::e2e` into the relay's seams: at every (re)connect it
//! announces this service's receive key and asks for the key directory;
//! it verifies every announcement itself (the router's word counts for
//! nothing); it seals each command and event only to the services its
//! *trusted* policy lets receive the name and that have a verified key; it
//! opens each delivery before anything else looks at it; and it seals and
//! opens replies under the command's reply key.
//!
//! Never: trust the router's list of receivers or keys, log a key or a
//! plaintext, or let a message that failed a check reach a handler.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use super::codec::{
    Begun, CodecError, Opened, Opening, PayloadCodec, ReplyOpening, ReplySealing, Sealed, SealedPayload,
};
use super::error::{Error, ErrorKind};
use super::rejections::Rejections;
use super::shared::now_ms;
use crate::e2e::{
    EpochConfig, OpenError, Opener, OpenerConfig, ReceiveKey, ReplyOpener, ReplySealer, Sealer,
    SigningIdentity, TrustAnchors, Unsealing, VerifiedAnnouncement, announce, select_receivers,
    verify_announcement,
};
use crate::last::LastAnswer;
use crate::policy::Policy;
use crate::policy::sign::PublicKey;
use crate::tls::IdentityDir;
use crate::wire::frame::decode_header;
use crate::wire::{Announce, Body, Deliver, KeyDirectory, KeyQuery, RoutingHeader};

/// How long an announcement we make is valid.
const ANNOUNCE_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Re-announce once half of that has passed.
const REANNOUNCE_AFTER_MS: u64 = 12 * 3600 * 1000;
/// A send that lacks a key asks the router again at most this often.
const MISSING_KEY_QUERY_MS: u64 = 250;
/// Refused announcements remembered (so junk is not verified again and again).
const MAX_REFUSED: usize = 1024;
/// Verified announcements kept at most (expired ones are dropped first).
const MAX_KEYS: usize = 4096;
/// Message names whose receiver plan is kept (see [`Plans`]).
const MAX_PLANS: usize = 1024;

/// What end-to-end sealing needs besides the relay's certificate and key.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// The directory holding this service's `receive.key` (and
    /// `receive.key.prev` after a rotation), as written by `exocom keygen`
    /// or `exocom certs init`; usually the identity directory.
    pub receive_key_dir: PathBuf,
    /// The policy file this relay trusts to say who may receive what.
    pub policy: PathBuf,
    /// Ed25519 public keys (PEM) of the security team; when not empty the
    /// policy must carry a valid detached signature in `POLICY.sig`.
    pub policy_pubkeys: Vec<PathBuf>,
    /// The CA bundle announcements and grants must chain to.
    pub ca: PathBuf,
    /// How often to refresh the key directory (and re-announce when due);
    /// also how often the trusted policy file is checked for a new version.
    pub key_refresh: Duration,
}

impl E2eOptions {
    /// Options for the identity directory `dir` (receive key and CA in it)
    /// and the policy file `policy`, unsigned.
    pub fn new(dir: &IdentityDir, policy: impl Into<PathBuf>) -> Self {
        Self {
            receive_key_dir: dir.dir.clone(),
            policy: policy.into(),
            policy_pubkeys: Vec::new(),
            ca: dir.ca_path(),
            key_refresh: Duration::from_secs(60),
        }
    }

    /// Requires the policy to be signed by one of `keys` (PEM files).
    pub fn signed_by(mut self, keys: impl IntoIterator<Item = PathBuf>) -> Self {
        self.policy_pubkeys = keys.into_iter().collect();
        self
    }
}

/// The end-to-end sealing codec (see the module docs).
pub(crate) struct E2e {
    /// Shared with every reply sealer made for a handled command.
    my_id: Arc<str>,
    instance: Arc<str>,
    /// The trusted policy; replaced when its file (or signature) changes and
    /// the new one loads and verifies, so a receiver the policy drops gets no
    /// grant for the next epoch.
    policy: ArcSwap<Policy>,
    options: E2eOptions,
    policy_stamp: Mutex<Vec<Option<SystemTime>>>,
    announcer: SigningIdentity,
    receive_key: ReceiveKey,
    anchors: TrustAnchors,
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
    keys: Mutex<KeyBook>,
    /// Counts key directory answers: a new value means a new key book.
    updates: watch::Sender<u64>,
    plans: Mutex<Plans>,
    announced_ms: Mutex<u64>,
    refresh: Duration,
    rejections: Rejections,
}

/// Who one message name and version is sealed to: the services the trusted
/// policy lets receive it, and the verified key picked for each.
struct Plan {
    /// The policy's receivers.
    wanted: Vec<String>,
    /// One verified announcement per wanted service that has one.
    receivers: Vec<VerifiedAnnouncement>,
    /// Whether every wanted service has a verified key.
    complete: bool,
}

/// Plans worked out so far. They hold while the trusted policy, the key
/// book and every key's validity do; any change drops them all, so a
/// policy reload or a new key directory takes effect on the next send.
#[derive(Default)]
struct Plans {
    /// The policy they were made under (held, so its address cannot be
    /// reused by a later policy while the plans refer to it).
    policy: Option<Arc<Policy>>,
    /// Key book generation (the `updates` counter) they were made under.
    keys: u64,
    /// The first moment a key they may use expires.
    valid_until_ms: u64,
    by_name: HashMap<String, Vec<(u32, Arc<Plan>)>>,
    /// The last plan given, in front of `by_name`.
    last: LastAnswer<Arc<Plan>>,
}

/// Announcements verified so far, and what is known to be bad.
#[derive(Default)]
struct KeyBook {
    verified: HashMap<Bytes, VerifiedAnnouncement>,
    refused: HashSet<Bytes>,
    last_query_ms: u64,
    /// When the last directory arrived (0: none yet).
    answered_ms: u64,
}

impl fmt::Debug for E2e {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2e")
            .field("id", &self.my_id)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl E2e {
    /// Loads the certificate and key of `identity`, the receive key, the
    /// (signed) policy and the CA. Blocking file I/O: call it off the runtime.
    pub(crate) fn load(identity: &IdentityDir, opts: &E2eOptions, instance: &str) -> Result<Self, Error> {
        let config = |what: &str, e: &dyn fmt::Display| {
            Error::new(ErrorKind::Config, format!("end-to-end sealing: {what}: {e}"))
        };
        let policy = load_policy(opts).map_err(|e| config("policy", &e))?;
        let load_identity = || SigningIdentity::load(&identity.cert_path(), &identity.key_path());
        let announcer = load_identity().map_err(|e| config("certificate", &e))?;
        let signer = load_identity().map_err(|e| config("certificate", &e))?;
        let anchors =
            || TrustAnchors::load(&opts.ca).map(|a| a.with_trust_domain(policy.trust_domain().to_owned()));
        let receive_key = ReceiveKey::load(&opts.receive_key_dir).map_err(|e| config("receive key", &e))?;
        let my_id = announcer.spiffe_id().to_owned();
        let mut opener = Opener::new(
            receive_key.clone(),
            my_id.clone(),
            anchors().map_err(|e| config("CA", &e))?,
            // Authorization is checked per message, with its version, in `open`.
            |_, _| true,
            OpenerConfig::default(),
        );
        if let Some(previous) = ReceiveKey::load_previous(&opts.receive_key_dir)
            .map_err(|e| config("previous receive key", &e))?
        {
            opener.add_receive_key(previous);
        }
        Ok(Self {
            instance: Arc::from(instance),
            sealer: Mutex::new(Sealer::new(signer, instance, EpochConfig::default())),
            opener: Mutex::new(opener),
            anchors: anchors().map_err(|e| config("CA", &e))?,
            my_id: Arc::from(my_id),
            policy_stamp: Mutex::new(policy_stamp(opts)),
            policy: ArcSwap::from_pointee(policy),
            options: opts.clone(),
            announcer,
            receive_key,
            keys: Mutex::new(KeyBook::default()),
            updates: watch::channel(0).0,
            plans: Mutex::new(Plans::default()),
            announced_ms: Mutex::new(0),
            refresh: opts.key_refresh,
            rejections: Rejections::default(),
        })
    }

    fn announcement(&self) -> Option<Body> {
        let now = now_ms();
        match announce(&self.announcer, &self.receive_key, &self.instance, now, ANNOUNCE_VALIDITY) {
            Ok(announcement) => {
                *lock(&self.announced_ms) = now;
                Some(Body::Announce(Announce { announcement }))
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot make a key announcement; other services cannot seal to us");
                None
            }
        }
    }

    /// Who the message is sealed to, from the plans while they hold.
    fn plan(&self, header: &RoutingHeader, now: u64) -> Arc<Plan> {
        let policy = self.policy.load();
        let keys_gen = *self.updates.borrow();
        let version = header.version.max(1);
        let mut plans = lock(&self.plans);
        let names = plans.by_name.len();
        let same_policy = plans.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, &*policy));
        if !same_policy || plans.keys != keys_gen || now >= plans.valid_until_ms || names >= MAX_PLANS {
            plans.by_name.clear();
            plans.last.forget();
            plans.policy = Some(Arc::clone(&*policy));
            plans.keys = keys_gen;
            plans.valid_until_ms =
                lock(&self.keys).verified.values().map(|a| a.not_after_ms).min().unwrap_or(u64::MAX);
        }
        if let Some(plan) = plans.last.get(&header.name, version) {
            return Arc::clone(plan);
        }
        if let Some(plan) = plans
            .by_name
            .get(header.name.as_str())
            .and_then(|v| v.iter().find(|(v, _)| *v == version))
            .map(|(_, plan)| Arc::clone(plan))
        {
            plans.last.set(&header.name, version, Arc::clone(&plan));
            return plan;
        }
        let wanted: Vec<String> =
            policy.receivers(&header.name, version).iter().map(|s| s.to_string()).collect();
        let usable: Vec<VerifiedAnnouncement> =
            lock(&self.keys).verified.values().filter(|a| now < a.not_after_ms).cloned().collect();
        let complete = wanted.iter().all(|s| usable.iter().any(|a| &a.service == s));
        let receivers = select_receivers(&wanted, &usable);
        let plan = Arc::new(Plan { wanted, receivers, complete });
        plans.by_name.entry(header.name.clone()).or_default().push((version, Arc::clone(&plan)));
        plans.last.set(&header.name, version, Arc::clone(&plan));
        plan
    }
}

impl PayloadCodec for E2e {
    fn seal(&self, header: RoutingHeader, payload: Bytes, now: u64) -> Result<Sealed, CodecError> {
        let plan = self.plan(&header, now);
        if plan.wanted.is_empty() {
            return Err(CodecError::NoReceivers(format!(
                "the trusted policy lets no service receive {}",
                header.name
            )));
        }
        if plan.receivers.is_empty() {
            return Err(CodecError::NoReceivers(format!(
                "no service that may receive {} ({}) has a verified receive key",
                header.name,
                plan.wanted.join(", ")
            )));
        }
        if !plan.complete {
            tracing::debug!(name = %header.name, sealed_to = plan.receivers.len(), may_receive = plan.wanted.len(), "some receiving services have no verified key; they cannot read this message");
        }
        let command_id = header.id.clone();
        let prepared = lock(&self.sealer)
            .prepare(header, &plan.receivers, self.policy.load().serial(), now)
            .map_err(|e| CodecError::Seal(e.to_string()))?;
        // The AEAD runs outside the lock.
        let sealed = prepared.seal(&payload).map_err(|e| CodecError::Seal(e.to_string()))?;
        let replies = sealed.reply_key.map(|key| {
            Box::new(SealedReplies { opener: ReplyOpener::new(key, command_id) }) as Box<dyn ReplyOpening>
        });
        let message = SealedPayload {
            header: sealed.header,
            payload: sealed.payload,
            tags: sealed.tags,
            grants: sealed.grants,
        };
        Ok(Sealed { message, replies })
    }

    fn open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Opened, CodecError> {
        let unsealing = self.begin(deliver, header)?;
        finish_open(unsealing, deliver, header, &self.policy.load(), &self.my_id, &self.instance)
    }

    fn begin_open(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Begun, CodecError> {
        Ok(Begun::Opening(Box::new(E2eOpening {
            unsealing: self.begin(deliver, header)?,
            policy: self.policy.load_full(),
            my_id: Arc::clone(&self.my_id),
            instance: Arc::clone(&self.instance),
        })))
    }

    fn processed(&self, header: &RoutingHeader) {
        lock(&self.opener).mark_processed(header);
    }

    fn accepted(&self, header: &Bytes) {
        if let Ok(header) = decode_header(header) {
            lock(&self.sealer).confirm_grants(&header.name, &header.epoch);
        }
    }

    fn session_frames(&self, _instance: &str) -> Vec<Body> {
        // The router may have restarted and lost the grants it kept in
        // memory: new epochs carry new grants with their first messages.
        lock(&self.sealer).rotate_all();
        let mut frames: Vec<Body> = self.announcement().into_iter().collect();
        lock(&self.keys).last_query_ms = now_ms();
        frames.push(Body::KeyQuery(KeyQuery { services: Vec::new() }));
        frames
    }

    fn refresh_frames(&self, _instance: &str) -> Vec<Body> {
        self.reload_policy_if_changed();
        let mut frames = Vec::new();
        if now_ms().saturating_sub(*lock(&self.announced_ms)) >= REANNOUNCE_AFTER_MS {
            frames.extend(self.announcement());
        }
        lock(&self.keys).last_query_ms = now_ms();
        frames.push(Body::KeyQuery(KeyQuery { services: Vec::new() }));
        frames
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.refresh)
    }

    fn key_directory(&self, directory: KeyDirectory) {
        let now = now_ms();
        let mut book = lock(&self.keys);
        let mut verified = HashMap::new();
        for bytes in directory.announcements {
            if let Some(known) = book.verified.get(&bytes).filter(|a| now < a.not_after_ms) {
                verified.insert(bytes, known.clone());
                continue;
            }
            if book.refused.contains(&bytes) {
                continue;
            }
            match verify_announcement(&bytes, &self.anchors, now) {
                Ok(a) => {
                    verified.insert(bytes, a);
                }
                Err(err) => {
                    self.rejections.count("bad_announcement");
                    tracing::warn!(error = %err, "refused a key announcement from the key directory");
                    if book.refused.len() >= MAX_REFUSED {
                        book.refused.clear();
                    }
                    book.refused.insert(bytes);
                }
            }
        }
        // We always ask for every service, but an answer may lack a key we
        // verified before: the router lost its directory in a restart and
        // the service has not reconnected yet. A verified announcement stays
        // usable until it expires (a newer one of the same service wins in
        // `select_receivers`), so keep it: otherwise messages queued for an
        // offline service would be sealed without it.
        for (bytes, known) in book.verified.drain() {
            if now < known.not_after_ms && verified.len() < MAX_KEYS {
                verified.entry(bytes).or_insert(known);
            }
        }
        book.verified = verified;
        book.answered_ms = now.max(1);
        drop(book);
        self.updates.send_modify(|n| *n += 1);
    }

    fn missing_keys(&self, header: &RoutingHeader, now: u64) -> Option<KeyQuery> {
        let plan = self.plan(header, now);
        if plan.complete {
            return None;
        }
        // With no key at all the send would fail: keep asking (the caller
        // bounds the wait). With some keys, ask at most every 250 ms, so a
        // policy service that never runs costs little.
        let none = plan.receivers.is_empty();
        let mut book = lock(&self.keys);
        let outstanding = book.last_query_ms > book.answered_ms;
        if !none && !outstanding && now.saturating_sub(book.answered_ms) < MISSING_KEY_QUERY_MS {
            return None;
        }
        book.last_query_ms = now;
        Some(KeyQuery { services: Vec::new() })
    }

    fn key_updates(&self) -> Option<watch::Receiver<u64>> {
        Some(self.updates.subscribe())
    }

    fn rejections(&self) -> Option<Rejections> {
        Some(self.rejections.clone())
    }
}

/// Seals the replies of one handling of a command under its reply key.
struct SealingReplies {
    sealer: ReplySealer,
}

impl fmt::Debug for SealingReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingReplies(..)")
    }
}

impl ReplySealing for SealingReplies {
    fn seal(&mut self, header: RoutingHeader, payload: Bytes) -> Result<SealedPayload, CodecError> {
        let last = header.stream_final;
        let sealed = self.sealer.seal(header, &payload, last).map_err(|e| CodecError::Seal(e.to_string()))?;
        Ok(SealedPayload { header: sealed.header, payload: sealed.payload, ..Default::default() })
    }
}

/// Opens the replies to one sealed request.
struct SealedReplies {
    opener: ReplyOpener,
}

impl fmt::Debug for SealedReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedReplies(..)")
    }
}

impl ReplyOpening for SealedReplies {
    fn open(&mut self, deliver: &Deliver, header: &RoutingHeader) -> Result<Bytes, CodecError> {
        self.opener.open_decoded(deliver, header, now_ms()).map_err(rejected)
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.opener.finish() {
            Ok(()) | Err(OpenError::Truncated { received: 0 }) => Ok(()),
            Err(e) => Err(CodecError::Truncated(e.to_string())),
        }
    }
}

/// A delivery begun by [`E2e::begin_open`], with what finishing it needs.
struct E2eOpening {
    unsealing: Unsealing,
    policy: Arc<Policy>,
    my_id: Arc<str>,
    instance: Arc<str>,
}

impl Opening for E2eOpening {
    fn finish(self: Box<Self>, deliver: &Deliver, header: &RoutingHeader) -> Result<Opened, CodecError> {
        finish_open(self.unsealing, deliver, header, &self.policy, &self.my_id, &self.instance)
    }
}

/// Checks the tag, opens the payload, and only then asks the trusted policy
/// whether the (now verified) sender may send the name.
fn finish_open(
    unsealing: Unsealing,
    deliver: &Deliver,
    header: &RoutingHeader,
    policy: &Policy,
    my_id: &Arc<str>,
    instance: &Arc<str>,
) -> Result<Opened, CodecError> {
    let opened = unsealing.finish(deliver, header).map_err(rejected)?;
    let allowed = policy.check_send(&opened.sender_service, &header.name, header.version.max(1));
    if !allowed.allowed {
        return Err(rejected(OpenError::Unauthorized {
            sender: opened.sender_service.to_string(),
            name: header.name.clone(),
        }));
    }
    let replies = match &opened.reply_key {
        Some(key) => {
            let sealer = ReplySealer::new(key, header, Arc::clone(my_id), Arc::clone(instance))
                .map_err(|e| CodecError::Seal(e.to_string()))?;
            Some(Box::new(SealingReplies { sealer }) as Box<dyn ReplySealing>)
        }
        None => None,
    };
    Ok(Opened { payload: opened.plaintext, replies })
}

fn rejected(err: OpenError) -> CodecError {
    CodecError::Rejected { label: err.label(), message: err.to_string() }
}

impl E2e {
    /// The half of opening that needs the opener's state (in delivery order).
    fn begin(&self, deliver: &Deliver, header: &RoutingHeader) -> Result<Unsealing, CodecError> {
        lock(&self.opener).begin(deliver, header, now_ms()).map_err(rejected)
    }

    /// Re-reads the trusted policy when its file or signature changed. A file
    /// that does not load or verify, or whose serial is lower than the one in
    /// force, leaves the policy in force.
    fn reload_policy_if_changed(&self) {
        let stamp = policy_stamp(&self.options);
        let mut last = lock(&self.policy_stamp);
        if *last == stamp {
            return;
        }
        *last = stamp;
        match load_policy(&self.options) {
            Ok(p) if p.serial() >= self.policy.load().serial() => {
                tracing::info!(sha256 = p.sha256_hex(), serial = p.serial(), "trusted policy reloaded");
                self.policy.store(Arc::new(p));
            }
            Ok(p) => tracing::warn!(serial = p.serial(), "trusted policy file has a lower serial; ignored"),
            Err(err) => tracing::warn!(%err, "trusted policy file refused; the previous one stays in force"),
        }
    }
}

/// Modification times of the policy file and its signature.
fn policy_stamp(opts: &E2eOptions) -> Vec<Option<SystemTime>> {
    let sig = crate::policy::sign::signature_path(&opts.policy);
    [opts.policy.as_path(), sig.as_path()]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The trusted policy: signed by one of the configured keys when any are
/// configured, a local file otherwise.
fn load_policy(opts: &E2eOptions) -> Result<Policy, Box<dyn std::error::Error + Send + Sync>> {
    if opts.policy_pubkeys.is_empty() {
        return Ok(Policy::from_file(&opts.policy)?);
    }
    let keys =
        opts.policy_pubkeys.iter().map(|p| PublicKey::from_pem_file(p)).collect::<Result<Vec<_>, _>>()?;
    Ok(Policy::from_file_signed(&opts.policy, &keys)?)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent between calls.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
