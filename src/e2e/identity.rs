//! Certificate identities: the signing identity of this instance (its
//! certificate chain and key) and the pinned trust anchors that
//! announcements and grants are checked against.
//!
//! Chain verification is `webpki` (the code rustls uses): chain to a pinned
//! CA at a given time, EKU clientAuth, leaf not a CA, optional CRLs for the
//! leaf's issuer (unknown status refused, expired CRLs refused). On top, the
//! SPIFFE rules: exactly one URI SAN, a service id (`spiffe://<td>/svc/<s>`),
//! the pinned trust domain if one is set, and no keyCertSign/cRLSign usage.
//! Signatures are ECDSA P-256/SHA-256 or Ed25519 with ring.
//!
//! This module never accepts an identity from anything but a verified
//! certificate, and never logs key material.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use webpki::{CertRevocationList, EndEntityCert, KeyUsage, OwnedCertRevocationList};
use x509_parser::extensions::GeneralName;

use super::E2eError;
use super::spiffe::{ServiceId, parse_service_id};

/// Largest certificate chain carried in an announcement or a grant.
pub const MAX_CHAIN_CERTS: usize = 4;
/// Largest single certificate, DER bytes.
pub const MAX_CERT_BYTES: usize = 8 * 1024;

/// Signature algorithm identifiers used in announcements and grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SigAlg {
    /// ECDSA over P-256 with SHA-256, ASN.1 DER signature (what rcgen makes by default).
    EcdsaP256Sha256 = 1,
    /// Ed25519.
    Ed25519 = 2,
}

impl SigAlg {
    pub(crate) fn from_byte(b: u8) -> Result<Self, E2eError> {
        match b {
            1 => Ok(Self::EcdsaP256Sha256),
            2 => Ok(Self::Ed25519),
            other => Err(E2eError::Format(format!("unknown signature algorithm {other}"))),
        }
    }

    fn verifier(self) -> &'static dyn SignatureVerificationAlgorithm {
        match self {
            Self::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
            Self::Ed25519 => webpki::ring::ED25519,
        }
    }
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// This instance's certificate chain and private key: signs announcements
/// and grants. Load it from the same `cert.pem`/`key.pem` the TLS client uses.
pub struct SigningIdentity {
    chain: Vec<CertificateDer<'static>>,
    signer: Signer,
    spiffe_id: String,
    service: String,
}

impl fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningIdentity").field("spiffe_id", &self.spiffe_id).finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// Loads a PEM certificate chain (leaf first) and a PEM PKCS#8 key.
    pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<Self, E2eError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| E2eError::Io { path: path.to_owned(), source })
        };
        Self::from_pem(&read(cert_pem)?, &read(key_pem)?)
    }

    /// From PEM bytes: a certificate chain (leaf first) and a PKCS#8 key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, E2eError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| E2eError::Pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| E2eError::Pem(e.to_string()))?;
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(E2eError::Key("the private key must be PKCS#8".into()));
        };
        Self::from_der(chain, pkcs8.secret_pkcs8_der())
    }

    /// From DER: a certificate chain (leaf first) and a PKCS#8 key
    /// (ECDSA P-256 or Ed25519). Checks that the key belongs to the leaf.
    pub fn from_der(chain: Vec<CertificateDer<'static>>, pkcs8: &[u8]) -> Result<Self, E2eError> {
        let leaf = chain.first().ok_or_else(|| E2eError::Certificate("empty certificate chain".into()))?;
        if chain.len() > MAX_CHAIN_CERTS || chain.iter().any(|c| c.len() > MAX_CERT_BYTES) {
            return Err(E2eError::Certificate("certificate chain too large".into()));
        }
        let rng = ring::rand::SystemRandom::new();
        let signer = match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng) {
            Ok(k) => Signer::Ecdsa(k),
            Err(_) => Signer::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|e| E2eError::Key(format!("neither ECDSA P-256 nor Ed25519 PKCS#8: {e}")))?,
            ),
        };
        let (spiffe_id, id) = leaf_service_id(leaf)?;
        let identity = Self { chain, signer, spiffe_id, service: id.service };
        // A key that does not match the certificate would produce
        // announcements every peer refuses; fail here, where it is clear.
        let probe = b"exocom/v1/key-check";
        let sig = identity.sign(probe)?;
        let ee =
            EndEntityCert::try_from(&identity.chain[0]).map_err(|e| E2eError::Certificate(e.to_string()))?;
        ee.verify_signature(identity.alg().verifier(), probe, &sig)
            .map_err(|_| E2eError::Key("the private key does not match the certificate".into()))?;
        Ok(identity)
    }

    /// The SPIFFE id of the leaf certificate.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The service name from the SPIFFE id.
    pub fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub(crate) fn alg(&self) -> SigAlg {
        match self.signer {
            Signer::Ecdsa(_) => SigAlg::EcdsaP256Sha256,
            Signer::Ed25519(_) => SigAlg::Ed25519,
        }
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, E2eError> {
        match &self.signer {
            Signer::Ecdsa(k) => k
                .sign(&ring::rand::SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| E2eError::Random),
            Signer::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

/// The pinned roots of trust: the CA bundle, optional CRLs and optionally
/// the one trust domain service ids must belong to.
#[derive(Debug)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    trust_domain: Option<String>,
}

/// What a verified certificate chain says about its leaf.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedLeaf {
    pub(crate) spiffe_id: String,
    pub(crate) id: ServiceId,
}

impl TrustAnchors {
    /// Loads the CA bundle (`ca.pem`, one or more certificates).
    pub fn load(ca_pem: &Path) -> Result<Self, E2eError> {
        let bytes =
            std::fs::read(ca_pem).map_err(|source| E2eError::Io { path: ca_pem.to_owned(), source })?;
        Self::from_pem(&bytes)
    }

    /// From PEM bytes holding one or more CA certificates.
    pub fn from_pem(ca_pem: &[u8]) -> Result<Self, E2eError> {
        let certs = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| E2eError::Pem(e.to_string()))?;
        Self::from_der(&certs)
    }

    /// From DER CA certificates.
    pub fn from_der(certs: &[CertificateDer<'_>]) -> Result<Self, E2eError> {
        if certs.is_empty() {
            return Err(E2eError::Certificate("no CA certificate".into()));
        }
        let anchors = certs
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| E2eError::Certificate(format!("CA certificate: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { anchors, crls: Vec::new(), trust_domain: None })
    }

    /// Adds CRLs (PEM). With CRLs set, a leaf whose issuer has no CRL here is
    /// refused, and so is an expired CRL.
    pub fn with_crls_pem(mut self, crl_pem: &[u8]) -> Result<Self, E2eError> {
        for der in CertificateRevocationListDer::pem_slice_iter(crl_pem) {
            let der = der.map_err(|e| E2eError::Pem(e.to_string()))?;
            let crl = OwnedCertRevocationList::from_der(&der)
                .map_err(|e| E2eError::Certificate(format!("CRL: {e}")))?;
            self.crls.push(crl.into());
        }
        Ok(self)
    }

    /// Accept only service ids in this trust domain.
    pub fn with_trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = Some(trust_domain.into());
        self
    }

    /// Verifies a chain (leaf first) at `at_ms` and returns the leaf's identity.
    pub(crate) fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        at_ms: u64,
    ) -> Result<VerifiedLeaf, E2eError> {
        let leaf = chain.first().ok_or_else(|| E2eError::Certificate("empty certificate chain".into()))?;
        let ee = EndEntityCert::try_from(leaf).map_err(|e| E2eError::Certificate(e.to_string()))?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            let builder = webpki::RevocationOptionsBuilder::new(&crl_refs)
                .map_err(|_| E2eError::Certificate("CRL list".into()))?;
            Some(
                builder
                    .with_depth(webpki::RevocationCheckDepth::EndEntity)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build(),
            )
        };
        let time = UnixTime::since_unix_epoch(Duration::from_millis(at_ms));
        ee.verify_for_usage(
            SUPPORTED_ALGS,
            &self.anchors,
            &chain[1..],
            time,
            KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map_err(|e| E2eError::Certificate(e.to_string()))?;
        let (spiffe_id, id) = leaf_service_id(leaf)?;
        if let Some(td) = &self.trust_domain
            && &id.trust_domain != td
        {
            return Err(E2eError::Identity(format!(
                "trust domain {:?} is not the pinned {td:?}",
                id.trust_domain
            )));
        }
        Ok(VerifiedLeaf { spiffe_id, id })
    }
}

/// Checks `sig` over `msg` with the leaf's public key.
pub(crate) fn verify_signature(
    leaf: &CertificateDer<'_>,
    alg: SigAlg,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), E2eError> {
    let ee = EndEntityCert::try_from(leaf).map_err(|e| E2eError::Certificate(e.to_string()))?;
    ee.verify_signature(alg.verifier(), msg, sig).map_err(|_| E2eError::Signature)
}

static SUPPORTED_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// The single SPIFFE URI SAN of a leaf, parsed as a service id, after the
/// X.509-SVID leaf rules (no CA key usages).
fn leaf_service_id(leaf: &CertificateDer<'_>) -> Result<(String, ServiceId), E2eError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| E2eError::Certificate(format!("leaf: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| E2eError::Identity(format!("subjectAltName: {e}")))?
        .ok_or_else(|| E2eError::Identity("no subjectAltName".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = match (uris.next(), uris.next()) {
        (Some(uri), None) => uri,
        (None, _) => return Err(E2eError::Identity("no URI SAN".into())),
        (Some(_), Some(_)) => return Err(E2eError::Identity("more than one URI SAN".into())),
    };
    if let Ok(Some(ku)) = cert.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(E2eError::Identity("leaf has keyCertSign or cRLSign".into()));
    }
    let id = parse_service_id(uri)?;
    Ok((uri.to_owned(), id))
}
