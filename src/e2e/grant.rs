//! Grants: a sender key (and the receiving service's tag key) wrapped to one
//! receiving service's X25519 receive key, age-style, and signed with the
//! sender's certificate key.
//!
//! Canonical bytes (docs/E2E.md §Grant):
//!
//! ```text
//! grant_header:
//!   u8 version = 1        u8 sig_alg
//!   var sender_id         var sender_instance      var name
//!   [16] epoch            u64 created_ms
//!   var receiver_id       [8] receiver_key_id      [32] eph_pub
//! var wrapped             (exactly 80 bytes: ChaCha20-Poly1305(sk ‖ ak) + tag)
//! u8 n_certs, n × var cert (sender chain, leaf first)
//! var signature over "exocom/v1/grant\0" ‖ all bytes above
//!
//! k_wrap  = HKDF-SHA256(salt = eph_pub ‖ receiver_pub,
//!                       ikm  = X25519(eph, receiver_pub),
//!                       info = "exocom/v1/grant" ‖ grant_header)
//! wrapped = ChaCha20-Poly1305(k_wrap, nonce = 0¹², sk ‖ ak, aad = grant_header)
//! ```
//!
//! The zero nonce is safe because `k_wrap` is used once (fresh ephemeral key
//! per grant). An all-zero X25519 output aborts. The wrapped length is
//! checked before any decryption (no partitioning oracle). The signature
//! binds sender, receiver and epoch, which closes unknown key-share.
//!
//! The sender chain is verified *at `created_ms`*, not at "now", so a
//! backlog queued while the receiver was offline still opens after the
//! sender's short-lived certificate has expired; `created_ms` must lie
//! within [`OpenLimits::max_age_ms`] of now, and revocation (CRLs) still
//! applies. See docs/E2E.md for why.

use x25519_dalek::{PublicKey, StaticSecret};

use super::E2eError;
use super::announce::{VerifiedAnnouncement, read_chain, write_chain};
use super::codec::{Reader, Writer};
use super::crypto::{self, KEY_LEN};
use super::identity::{self, SigAlg, SigningIdentity, TrustAnchors};
use super::keys::ReceiveKey;
use super::spiffe::ServiceId;

/// Format version of grants.
pub const VERSION: u8 = 1;
/// Length of `wrapped`: sender key + auth key + Poly1305 tag.
pub const WRAPPED_LEN: usize = 2 * KEY_LEN + crypto::AEAD_TAG_LEN;
/// Largest grant accepted, bytes (before parsing).
pub const MAX_GRANT_BYTES: usize = 40 * 1024;
const SIGN_LABEL: &[u8] = b"exocom/v1/grant\0";
const HKDF_INFO: &[u8] = b"exocom/v1/grant";
const MAX_ID: usize = 2048;
const MAX_INSTANCE: usize = 128;
const MAX_NAME: usize = 512;
const MAX_SIG: usize = 128;

/// The secrets one grant carries.
#[derive(Clone)]
pub(crate) struct GrantSecrets {
    pub(crate) sender_key: [u8; KEY_LEN],
    pub(crate) auth_key: [u8; KEY_LEN],
}

/// Limits a receiver applies to grants.
#[derive(Clone, Copy, Debug)]
pub struct OpenLimits {
    /// Oldest grant accepted (its `created_ms` before now), ms.
    pub max_age_ms: u64,
    /// Clock skew tolerated for `created_ms` in the future, ms.
    pub skew_ms: u64,
}

/// A grant that verified and unwrapped.
#[derive(Clone)]
pub(crate) struct OpenedGrant {
    pub(crate) sender_id: String,
    pub(crate) sender: ServiceId,
    pub(crate) sender_instance: String,
    pub(crate) name: String,
    pub(crate) epoch: [u8; 16],
    pub(crate) secrets: GrantSecrets,
}

/// What a grant is about.
pub(crate) struct GrantParams<'a> {
    pub(crate) sender_instance: &'a str,
    pub(crate) name: &'a str,
    pub(crate) epoch: [u8; 16],
    pub(crate) created_ms: u64,
}

/// Wraps `secrets` to `receiver` with a fresh ephemeral key.
pub(crate) fn create(
    identity: &SigningIdentity,
    params: &GrantParams<'_>,
    receiver: &VerifiedAnnouncement,
    secrets: &GrantSecrets,
) -> Result<Vec<u8>, E2eError> {
    let eph = crypto::random::<32>().map_err(|_| E2eError::Random)?;
    create_with_ephemeral(identity, params, receiver, secrets, eph)
}

/// [`create`] with a given ephemeral secret (test vectors).
pub(crate) fn create_with_ephemeral(
    identity: &SigningIdentity,
    params: &GrantParams<'_>,
    receiver: &VerifiedAnnouncement,
    secrets: &GrantSecrets,
    eph_secret: [u8; 32],
) -> Result<Vec<u8>, E2eError> {
    if params.name.len() > MAX_NAME || params.sender_instance.len() > MAX_INSTANCE {
        return Err(E2eError::Header("name or instance too long".into()));
    }
    let eph = StaticSecret::from(eph_secret);
    let eph_pub = PublicKey::from(&eph).to_bytes();
    let mut w = Writer::new();
    w.u8(VERSION).u8(identity.alg() as u8);
    w.var(identity.spiffe_id().as_bytes())?
        .var(params.sender_instance.as_bytes())?
        .var(params.name.as_bytes())?;
    w.fixed(&params.epoch).u64(params.created_ms);
    w.var(receiver.spiffe_id.as_bytes())?;
    w.fixed(&receiver.key_id).fixed(&eph_pub);
    let header_len = w.len();

    let k_wrap = wrap_key(&eph, &eph_pub, &receiver.public, &w.as_slice()[..header_len])?;
    let mut body = Vec::with_capacity(WRAPPED_LEN);
    body.extend_from_slice(&secrets.sender_key);
    body.extend_from_slice(&secrets.auth_key);
    let key = crypto::aead_key(&k_wrap).map_err(|_| E2eError::Seal)?;
    crypto::seal(&key, [0u8; 12], &w.as_slice()[..header_len], &mut body).map_err(|_| E2eError::Seal)?;
    w.var(&body)?;
    write_chain(&mut w, identity.chain())?;
    let sig = identity.sign(&[SIGN_LABEL, w.as_slice()].concat())?;
    w.var(&sig)?;
    Ok(w.into_vec())
}

/// Verifies and unwraps a grant addressed to `my_id` under one of `keys`.
pub(crate) fn open(
    bytes: &[u8],
    keys: &[ReceiveKey],
    my_id: &str,
    anchors: &TrustAnchors,
    now_ms: u64,
    limits: OpenLimits,
) -> Result<OpenedGrant, E2eError> {
    if bytes.len() > MAX_GRANT_BYTES {
        return Err(E2eError::Format(format!("grant of {} bytes", bytes.len())));
    }
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(E2eError::Format(format!("grant version {version}")));
    }
    let alg = SigAlg::from_byte(r.u8()?)?;
    let sender_id = r.text(MAX_ID)?.to_owned();
    let sender_instance = r.text(MAX_INSTANCE)?.to_owned();
    let name = r.text(MAX_NAME)?.to_owned();
    let epoch: [u8; 16] = r.array()?;
    let created_ms = r.u64()?;
    let receiver_id = r.text(MAX_ID)?;
    let receiver_key_id: [u8; 8] = r.array()?;
    let eph_pub: [u8; 32] = r.array()?;
    let header_len = r.position();
    // Length is checked here, before any key agreement or decryption.
    let wrapped = r.var(MAX_ID)?;
    if wrapped.len() != WRAPPED_LEN {
        return Err(E2eError::Format(format!(
            "wrapped key of {} bytes; must be {WRAPPED_LEN}",
            wrapped.len()
        )));
    }
    let chain = read_chain(&mut r)?;
    let signed_len = r.position();
    let sig = r.var(MAX_SIG)?;
    r.finish()?;

    if receiver_id != my_id {
        return Err(E2eError::NotForUs(format!("addressed to {receiver_id:?}")));
    }
    let key = keys
        .iter()
        .find(|k| k.key_id() == receiver_key_id)
        .ok_or_else(|| E2eError::NotForUs(format!("unknown key id {}", hex::encode(receiver_key_id))))?;
    if created_ms > now_ms.saturating_add(limits.skew_ms) {
        return Err(E2eError::Validity("grant created in the future".into()));
    }
    if now_ms.saturating_sub(created_ms) > limits.max_age_ms {
        return Err(E2eError::Validity("grant older than the maximum age".into()));
    }
    let leaf = anchors.verify_chain(&chain, created_ms)?;
    if leaf.spiffe_id != sender_id {
        return Err(E2eError::Identity(format!(
            "grant claims sender {sender_id:?}, certificate is {:?}",
            leaf.spiffe_id
        )));
    }
    identity::verify_signature(&chain[0], alg, &[SIGN_LABEL, &bytes[..signed_len]].concat(), sig)?;

    let header = &bytes[..header_len];
    let k_wrap = unwrap_key(key, &eph_pub, header)?;
    let aead = crypto::aead_key(&k_wrap).map_err(|_| E2eError::Unwrap)?;
    let plain = crypto::open(&aead, [0u8; 12], header, wrapped).map_err(|_| E2eError::Unwrap)?;
    let mut secrets = GrantSecrets { sender_key: [0; KEY_LEN], auth_key: [0; KEY_LEN] };
    secrets.sender_key.copy_from_slice(&plain[..KEY_LEN]);
    secrets.auth_key.copy_from_slice(&plain[KEY_LEN..]);
    Ok(OpenedGrant { sender_id, sender: leaf.id, sender_instance, name, epoch, secrets })
}

fn wrap_key(
    eph: &StaticSecret,
    eph_pub: &[u8; 32],
    receiver_pub: &[u8; 32],
    header: &[u8],
) -> Result<[u8; 32], E2eError> {
    let shared = eph.diffie_hellman(&PublicKey::from(*receiver_pub));
    if !shared.was_contributory() {
        return Err(E2eError::ZeroSharedSecret);
    }
    Ok(crypto::hkdf(&[&eph_pub[..], &receiver_pub[..]].concat(), shared.as_bytes(), &[HKDF_INFO, header]))
}

fn unwrap_key(key: &ReceiveKey, eph_pub: &[u8; 32], header: &[u8]) -> Result<[u8; 32], E2eError> {
    let shared = key.secret().diffie_hellman(&PublicKey::from(*eph_pub));
    if !shared.was_contributory() {
        return Err(E2eError::ZeroSharedSecret);
    }
    Ok(crypto::hkdf(&[&eph_pub[..], &key.public()[..]].concat(), shared.as_bytes(), &[HKDF_INFO, header]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::e2e::announce::{announce, verify_announcement};
    use crate::e2e::testpki::{TestCa, now_ms};
    use std::time::Duration;

    const LIMITS: OpenLimits = OpenLimits { max_age_ms: 7 * 86_400_000, skew_ms: 30_000 };

    struct Fixture {
        ca: TestCa,
        sender: SigningIdentity,
        key: ReceiveKey,
        receiver: VerifiedAnnouncement,
    }

    fn fixture() -> Fixture {
        let ca = TestCa::new("ca");
        let sender = ca.identity("web");
        let recv_id = ca.identity("todos");
        let key = ReceiveKey::generate().unwrap();
        let now = now_ms();
        let ann = announce(&recv_id, &key, "r-1", now, Duration::from_secs(3600)).unwrap();
        let receiver = verify_announcement(&ann, &ca.anchors(), now).unwrap();
        Fixture { ca, sender, key, receiver }
    }

    fn params(now: u64) -> GrantParams<'static> {
        GrantParams { sender_instance: "s-1", name: "todos.create", epoch: [9; 16], created_ms: now }
    }

    const SECRETS: GrantSecrets = GrantSecrets { sender_key: [1; 32], auth_key: [2; 32] };

    #[test]
    fn round_trip() {
        let f = fixture();
        let now = now_ms();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let o = open(&g, std::slice::from_ref(&f.key), &f.receiver.spiffe_id, &f.ca.anchors(), now, LIMITS)
            .unwrap();
        assert_eq!(o.sender_id, "spiffe://example.org/svc/web");
        assert_eq!(o.sender.service, "web");
        assert_eq!(o.name, "todos.create");
        assert_eq!(o.epoch, [9; 16]);
        assert_eq!(o.secrets.sender_key, [1; 32]);
        assert_eq!(o.secrets.auth_key, [2; 32]);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let f = fixture();
        let now = now_ms();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let anchors = f.ca.anchors();
        for i in 0..g.len() {
            let mut bad = g.clone();
            bad[i] ^= 0x80;
            assert!(
                open(&bad, std::slice::from_ref(&f.key), &f.receiver.spiffe_id, &anchors, now, LIMITS)
                    .is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn other_receivers_and_keys_are_refused() {
        let f = fixture();
        let now = now_ms();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let anchors = f.ca.anchors();
        assert!(matches!(
            open(&g, std::slice::from_ref(&f.key), "spiffe://example.org/svc/other", &anchors, now, LIMITS),
            Err(E2eError::NotForUs(_))
        ));
        let other_key = ReceiveKey::generate().unwrap();
        assert!(matches!(
            open(&g, &[other_key], &f.receiver.spiffe_id, &anchors, now, LIMITS),
            Err(E2eError::NotForUs(_))
        ));
        // A sender from another CA.
        let evil = TestCa::new("evil").identity("web");
        let g = create(&evil, &params(now), &f.receiver, &SECRETS).unwrap();
        assert!(matches!(
            open(&g, std::slice::from_ref(&f.key), &f.receiver.spiffe_id, &anchors, now, LIMITS),
            Err(E2eError::Certificate(_))
        ));
    }

    #[test]
    fn too_old_or_future_grants_are_refused() {
        let f = fixture();
        let now = now_ms();
        let anchors = f.ca.anchors();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let later = now + LIMITS.max_age_ms + 1;
        assert!(matches!(
            open(&g, std::slice::from_ref(&f.key), &f.receiver.spiffe_id, &anchors, later, LIMITS),
            Err(E2eError::Validity(_))
        ));
        let g = create(&f.sender, &params(now + 60_000), &f.receiver, &SECRETS).unwrap();
        assert!(matches!(
            open(&g, std::slice::from_ref(&f.key), &f.receiver.spiffe_id, &anchors, now, LIMITS),
            Err(E2eError::Validity(_))
        ));
    }

    #[test]
    fn all_zero_shared_secret_aborts() {
        let f = fixture();
        let mut low_order = f.receiver.clone();
        low_order.public = [0u8; 32];
        assert!(matches!(
            create(&f.sender, &params(now_ms()), &low_order, &SECRETS),
            Err(E2eError::ZeroSharedSecret)
        ));
        // And on the receiving side: an eph_pub of zero, validly signed.
        let now = now_ms();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let eph_at = g.len() - WRAPPED_LEN - 2 - tail_len(&g) - 32;
        let mut bad = g[..eph_at].to_vec();
        bad.extend_from_slice(&[0u8; 32]);
        let header_len = bad.len();
        let mut w = Writer::new();
        w.fixed(&bad).var(&[0u8; WRAPPED_LEN]).unwrap();
        write_chain(&mut w, f.sender.chain()).unwrap();
        let sig = f.sender.sign(&[SIGN_LABEL, w.as_slice()].concat()).unwrap();
        w.var(&sig).unwrap();
        assert_eq!(header_len, eph_at + 32);
        assert!(matches!(
            open(
                w.as_slice(),
                std::slice::from_ref(&f.key),
                &f.receiver.spiffe_id,
                &f.ca.anchors(),
                now,
                LIMITS
            ),
            Err(E2eError::ZeroSharedSecret)
        ));
    }

    /// Bytes after `wrapped`: chain and signature.
    fn tail_len(g: &[u8]) -> usize {
        // Parse forward to find where `wrapped` ends.
        let mut r = Reader::new(g);
        r.u8().unwrap();
        r.u8().unwrap();
        r.var(MAX_ID).unwrap();
        r.var(MAX_INSTANCE).unwrap();
        r.var(MAX_NAME).unwrap();
        r.fixed(24).unwrap();
        r.var(MAX_ID).unwrap();
        r.fixed(40).unwrap();
        r.var(MAX_ID).unwrap();
        g.len() - r.position()
    }

    #[test]
    fn wrong_wrapped_length_is_refused_before_decrypting() {
        let f = fixture();
        let now = now_ms();
        let g = create(&f.sender, &params(now), &f.receiver, &SECRETS).unwrap();
        let tail = tail_len(&g);
        let wrapped_at = g.len() - tail - WRAPPED_LEN - 2;
        for len in [WRAPPED_LEN - 1, WRAPPED_LEN + 1, 0] {
            let mut w = Writer::new();
            w.fixed(&g[..wrapped_at]).var(&vec![0u8; len]).unwrap().fixed(&g[g.len() - tail..]);
            let err = open(
                w.as_slice(),
                std::slice::from_ref(&f.key),
                &f.receiver.spiffe_id,
                &f.ca.anchors(),
                now,
                LIMITS,
            )
            .err()
            .unwrap();
            assert!(matches!(&err, E2eError::Format(m) if m.contains("wrapped key")), "{err}");
        }
        assert!(matches!(
            open(
                &vec![1u8; MAX_GRANT_BYTES + 1],
                std::slice::from_ref(&f.key),
                "x",
                &f.ca.anchors(),
                now,
                LIMITS
            ),
            Err(E2eError::Format(_))
        ));
    }
}
