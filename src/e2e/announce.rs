//! Key announcements: a service instance states "my service's receive key is
//! X", signed with its certificate key, so that the router — which stores
//! and serves announcements — cannot substitute a key of its own.
//!
//! Canonical bytes (docs/E2E.md §Announcement):
//!
//! ```text
//! u8  version = 1          u8  sig_alg (1 ECDSA P-256 SHA-256, 2 Ed25519)
//! var spiffe_id            var instance
//! [32] x25519 public key   [8] key_id = SHA-256(public)[..8]
//! u64 not_before_ms        u64 not_after_ms
//! u8  n_certs (1..=4)      n × var cert (DER, leaf first)
//! var signature over "exocom/v1/announce\0" ‖ all bytes above
//! ```
//!
//! A peer accepts one only if the chain verifies to the pinned CA at the
//! current time, the leaf's single SPIFFE URI SAN equals `spiffe_id`, the
//! signature verifies, `key_id` matches, and the window holds
//! (at most [`MAX_VALIDITY_MS`]). Never trust an announcement that has not
//! been through [`verify_announcement`].

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;

use super::E2eError;
use super::codec::{Reader, Writer};
use super::identity::{self, MAX_CERT_BYTES, MAX_CHAIN_CERTS, SigAlg, SigningIdentity, TrustAnchors};
use super::keys::{ReceiveKey, key_id};

/// Format version of announcements.
pub const VERSION: u8 = 1;
/// Longest validity an announcement may claim: 7 days.
pub const MAX_VALIDITY_MS: u64 = 7 * 24 * 3600 * 1000;
/// Clock skew tolerated on `not_before`.
pub const SKEW_MS: u64 = 30_000;
const LABEL: &[u8] = b"exocom/v1/announce\0";
const MAX_ID: usize = 2048;
const MAX_INSTANCE: usize = 128;
const MAX_SIG: usize = 128;

/// An announcement that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedAnnouncement {
    /// The service name (from the verified SPIFFE id).
    pub service: String,
    /// The service's SPIFFE id, equal to the certificate's URI SAN.
    pub spiffe_id: String,
    /// The announcing instance.
    pub instance: String,
    /// The service's X25519 receive key.
    pub public: [u8; 32],
    /// SHA-256(public)[..8].
    pub key_id: [u8; 8],
    /// Start of validity, Unix ms.
    pub not_before_ms: u64,
    /// End of validity, Unix ms.
    pub not_after_ms: u64,
}

/// Makes a signed announcement of `receive_key`, valid from `now_ms` for
/// `validity` (at most 7 days).
pub fn announce(
    identity: &SigningIdentity,
    receive_key: &ReceiveKey,
    instance: &str,
    now_ms: u64,
    validity: Duration,
) -> Result<Bytes, E2eError> {
    let validity_ms = u64::try_from(validity.as_millis()).unwrap_or(u64::MAX);
    if validity_ms == 0 || validity_ms > MAX_VALIDITY_MS {
        return Err(E2eError::Validity("announcement validity must be 1 ms to 7 days".into()));
    }
    if instance.len() > MAX_INSTANCE {
        return Err(E2eError::Format("instance id longer than 128 bytes".into()));
    }
    let mut w = Writer::new();
    w.u8(VERSION).u8(identity.alg() as u8);
    w.var(identity.spiffe_id().as_bytes())?.var(instance.as_bytes())?;
    w.fixed(&receive_key.public()).fixed(&receive_key.key_id());
    w.u64(now_ms).u64(now_ms.saturating_add(validity_ms));
    write_chain(&mut w, identity.chain())?;
    let sig = identity.sign(&[LABEL, w.as_slice()].concat())?;
    w.var(&sig)?;
    Ok(Bytes::from(w.into_vec()))
}

/// Verifies an announcement against the pinned anchors at `now_ms`.
pub fn verify_announcement(
    bytes: &[u8],
    anchors: &TrustAnchors,
    now_ms: u64,
) -> Result<VerifiedAnnouncement, E2eError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(E2eError::Format(format!("announcement version {version}")));
    }
    let alg = SigAlg::from_byte(r.u8()?)?;
    let spiffe_id = r.text(MAX_ID)?.to_owned();
    let instance = r.text(MAX_INSTANCE)?.to_owned();
    let public: [u8; 32] = r.array()?;
    let claimed_key_id: [u8; 8] = r.array()?;
    let not_before_ms = r.u64()?;
    let not_after_ms = r.u64()?;
    let chain = read_chain(&mut r)?;
    let signed_len = r.position();
    let sig = r.var(MAX_SIG)?;
    r.finish()?;

    if claimed_key_id != key_id(&public) {
        return Err(E2eError::Format("key_id is not SHA-256(public)[..8]".into()));
    }
    if not_after_ms <= not_before_ms || not_after_ms - not_before_ms > MAX_VALIDITY_MS {
        return Err(E2eError::Validity("announcement window longer than 7 days".into()));
    }
    if now_ms.saturating_add(SKEW_MS) < not_before_ms {
        return Err(E2eError::Validity("announcement not yet valid".into()));
    }
    if now_ms >= not_after_ms {
        return Err(E2eError::Validity("announcement expired".into()));
    }
    let leaf = anchors.verify_chain(&chain, now_ms)?;
    if leaf.spiffe_id != spiffe_id {
        return Err(E2eError::Identity(format!(
            "announcement claims {spiffe_id:?}, certificate is {:?}",
            leaf.spiffe_id
        )));
    }
    identity::verify_signature(&chain[0], alg, &[LABEL, &bytes[..signed_len]].concat(), sig)?;
    Ok(VerifiedAnnouncement {
        service: leaf.id.service,
        spiffe_id,
        instance,
        public,
        key_id: claimed_key_id,
        not_before_ms,
        not_after_ms,
    })
}

/// The receivers to seal to: for each service the (trusted) policy lets
/// receive the name, its newest verified announcement. Announcements of
/// services not in `policy_receivers` are ignored, whatever the router
/// sent; a policy service without an announcement is left out (it cannot
/// be granted a key).
pub fn select_receivers(
    policy_receivers: &[String],
    announcements: &[VerifiedAnnouncement],
) -> Vec<VerifiedAnnouncement> {
    let mut seen = HashSet::new();
    policy_receivers
        .iter()
        .filter(|s| seen.insert(s.as_str()))
        .filter_map(|service| {
            announcements
                .iter()
                .filter(|a| &a.service == service)
                .max_by_key(|a| (a.not_before_ms, a.not_after_ms))
                .cloned()
        })
        .collect()
}

pub(crate) fn write_chain(w: &mut Writer, chain: &[CertificateDer<'_>]) -> Result<(), E2eError> {
    if chain.is_empty() || chain.len() > MAX_CHAIN_CERTS {
        return Err(E2eError::Certificate("certificate chain of 1 to 4 certificates".into()));
    }
    w.u8(chain.len() as u8);
    for cert in chain {
        w.var(cert)?;
    }
    Ok(())
}

pub(crate) fn read_chain(r: &mut Reader<'_>) -> Result<Vec<CertificateDer<'static>>, E2eError> {
    let n = r.u8()? as usize;
    if n == 0 || n > MAX_CHAIN_CERTS {
        return Err(E2eError::Format(format!("{n} certificates; 1 to 4 allowed")));
    }
    (0..n).map(|_| Ok(CertificateDer::from(r.var(MAX_CERT_BYTES)?.to_vec()))).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::e2e::testpki::{TestCa, now_ms};

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn setup() -> (TestCa, SigningIdentity, ReceiveKey) {
        let ca = TestCa::new("ca");
        let id = ca.identity("todos");
        (ca, id, ReceiveKey::generate().unwrap())
    }

    #[test]
    fn round_trip() {
        let (ca, id, key) = setup();
        let now = now_ms();
        let bytes = announce(&id, &key, "i-1", now, WEEK).unwrap();
        let v = verify_announcement(&bytes, &ca.anchors(), now).unwrap();
        assert_eq!(v.service, "todos");
        assert_eq!(v.spiffe_id, "spiffe://example.org/svc/todos");
        assert_eq!(v.instance, "i-1");
        assert_eq!(v.public, key.public());
        assert_eq!(v.key_id, key.key_id());
        assert!(ca.anchors().with_trust_domain("example.org").verify_chain(id.chain(), now).is_ok());
        assert!(verify_announcement(&bytes, &ca.anchors().with_trust_domain("other.org"), now).is_err());
    }

    #[test]
    fn other_ca_is_refused() {
        let (_ca, id, key) = setup();
        let other = TestCa::new("other");
        let bytes = announce(&id, &key, "i-1", now_ms(), WEEK).unwrap();
        assert!(matches!(
            verify_announcement(&bytes, &other.anchors(), now_ms()),
            Err(E2eError::Certificate(_))
        ));
    }

    #[test]
    fn expired_and_future_are_refused() {
        let (ca, id, key) = setup();
        let now = now_ms();
        let bytes = announce(&id, &key, "i-1", now, Duration::from_secs(60)).unwrap();
        assert!(matches!(
            verify_announcement(&bytes, &ca.anchors(), now + 61_000),
            Err(E2eError::Validity(_))
        ));
        let future = announce(&id, &key, "i-1", now + 3_600_000, WEEK).unwrap();
        assert!(matches!(verify_announcement(&future, &ca.anchors(), now), Err(E2eError::Validity(_))));
        assert!(announce(&id, &key, "i-1", now, WEEK + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn expired_certificate_is_refused() {
        let (ca, id, key) = setup();
        let now = now_ms();
        let bytes = announce(&id, &key, "i-1", now, WEEK).unwrap();
        // The leaf is valid for 30 days; six days later still fine, 40 days later not.
        assert!(verify_announcement(&bytes, &ca.anchors(), now + 6 * 86_400_000).is_ok());
        let late = announce(&id, &key, "i-1", now + 40 * 86_400_000, WEEK).unwrap();
        assert!(matches!(
            verify_announcement(&late, &ca.anchors(), now + 40 * 86_400_000),
            Err(E2eError::Certificate(_))
        ));
    }

    #[test]
    fn revoked_certificates_are_refused() {
        let (ca, id, key) = setup();
        let other = ca.identity("audit");
        let now = now_ms();
        let serial = |i: &SigningIdentity| {
            let (_, cert) = x509_parser::parse_x509_certificate(&i.chain()[0]).unwrap();
            cert.raw_serial().to_vec()
        };
        let anchors = ca.anchors().with_crls_pem(ca.crl_pem(&[serial(&id)]).as_bytes()).unwrap();
        let revoked = announce(&id, &key, "i-1", now, WEEK).unwrap();
        assert!(matches!(
            verify_announcement(&revoked, &anchors, now),
            Err(E2eError::Certificate(m)) if m.contains("Revoked")
        ));
        let fine = announce(&other, &key, "i-1", now, WEEK).unwrap();
        verify_announcement(&fine, &anchors, now).unwrap();
        // CRLs configured but none from this leaf's issuer: unknown status is refused.
        let foreign = TestCa::new("other");
        let anchors = ca.anchors().with_crls_pem(foreign.crl_pem(&[]).as_bytes()).unwrap();
        assert!(verify_announcement(&fine, &anchors, now).is_err());
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let (ca, id, key) = setup();
        let now = now_ms();
        let bytes = announce(&id, &key, "i-1", now, WEEK).unwrap();
        let anchors = ca.anchors();
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x01;
            assert!(verify_announcement(&bad, &anchors, now).is_err(), "byte {i} flipped was accepted");
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(verify_announcement(&long, &anchors, now).is_err());
        assert!(verify_announcement(&bytes[..bytes.len() - 1], &anchors, now).is_err());
    }

    #[test]
    fn a_claim_that_is_not_the_certificate_is_refused() {
        let (ca, id, key) = setup();
        let now = now_ms();
        // Re-sign a body that claims another service with the todos key: the
        // signature is valid but the claim is not the certificate's SAN.
        let mut w = Writer::new();
        w.u8(VERSION).u8(id.alg() as u8);
        w.var(b"spiffe://example.org/svc/payments").unwrap().var(b"i-1").unwrap();
        w.fixed(&key.public()).fixed(&key.key_id()).u64(now).u64(now + 1000);
        write_chain(&mut w, id.chain()).unwrap();
        let sig = id.sign(&[LABEL, w.as_slice()].concat()).unwrap();
        w.var(&sig).unwrap();
        assert!(matches!(verify_announcement(w.as_slice(), &ca.anchors(), now), Err(E2eError::Identity(_))));
    }

    #[test]
    fn certificates_breaking_spiffe_rules_are_refused() {
        let ca = TestCa::new("ca");
        let anchors = ca.anchors();
        let now = now_ms();
        for (uris, ca_usage) in [
            (vec!["spiffe://example.org/svc/a", "spiffe://example.org/svc/b"], false),
            (vec![], false),
            (vec!["https://example.org/svc/a"], false),
            (vec!["spiffe://example.org/router/main"], false),
            (vec!["spiffe://example.org/svc/a"], true),
        ] {
            let (cert, key) = ca.leaf_der(&uris, 30, ca_usage);
            assert!(
                matches!(
                    anchors.verify_chain(std::slice::from_ref(&cert), now),
                    Err(E2eError::Identity(_) | E2eError::Spiffe(_))
                ),
                "{uris:?} accepted"
            );
            assert!(SigningIdentity::from_der(vec![cert], &key).is_err());
        }
    }

    #[test]
    fn select_receivers_intersects_with_policy() {
        let a = |service: &str, nb: u64| VerifiedAnnouncement {
            service: service.into(),
            spiffe_id: format!("spiffe://example.org/svc/{service}"),
            instance: "i".into(),
            public: [nb as u8; 32],
            key_id: [nb as u8; 8],
            not_before_ms: nb,
            not_after_ms: nb + 10,
        };
        let anns = vec![a("todos", 1), a("todos", 5), a("evil", 1), a("audit", 2)];
        let picked =
            select_receivers(&["todos".into(), "todos".into(), "audit".into(), "gone".into()], &anns);
        let names: Vec<_> = picked.iter().map(|a| (a.service.as_str(), a.not_before_ms)).collect();
        assert_eq!(names, vec![("todos", 5), ("audit", 2)]);
    }
}
