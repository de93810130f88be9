//! Leaf certificates: what one should contain ([`LeafSpec`]) and issuing it
//! into an identity directory ([`issue_leaf`]).
//!
//! [`LeafSpec::service`] and [`LeafSpec::router`] build the certificates the
//! bus expects. Every field is public so tests can build the certificates it
//! must refuse: expired, two URI SANs, another trust domain, a CA as leaf.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::ca::{CLOCK_SKEW, Ca, random_serial};
use super::write::{Secrecy, create_dir, write_file};
use super::{CertsError, PUBLIC_ORG, check_days};
use crate::tls::{validate_service_name, validate_trust_domain};

/// What a leaf certificate contains. Built by [`LeafSpec::service`] or
/// [`LeafSpec::router`] and then adjusted field by field when a test needs a
/// certificate the router must refuse.
///
/// ```
/// use exocom::certs::LeafSpec;
/// use time::{Duration, OffsetDateTime};
///
/// // An expired certificate for "web".
/// let mut spec = LeafSpec::service("example.org", "web", 1)?;
/// spec.not_before = OffsetDateTime::now_utc() - Duration::days(10);
/// spec.not_after = OffsetDateTime::now_utc() - Duration::days(1);
/// # Ok::<(), exocom::certs::CertsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// The subject's common name (informational; identity is the URI SAN).
    pub common_name: String,
    /// URI SANs, written as given (not validated, so tests can write bad ones).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ips: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Mark the leaf as a CA (basicConstraints CA=true): only for negative tests.
    pub is_ca: bool,
    /// Extended key usage clientAuth (services).
    pub client_auth: bool,
    /// Extended key usage serverAuth (the router).
    pub server_auth: bool,
}

impl LeafSpec {
    /// A service certificate: URI SAN `spiffe://<trust_domain>/svc/<service>`,
    /// clientAuth, valid from now (minus an hour of clock skew) for `days`.
    pub fn service(trust_domain: &str, service: &str, days: u32) -> Result<Self, CertsError> {
        validate_trust_domain(trust_domain)?;
        validate_service_name(service)?;
        check_days(days)?;
        let (not_before, not_after) = validity(days);
        Ok(Self {
            common_name: service.to_owned(),
            uris: vec![format!("spiffe://{trust_domain}/svc/{service}")],
            dns_names: Vec::new(),
            ips: Vec::new(),
            not_before,
            not_after,
            is_ca: false,
            client_auth: true,
            server_auth: false,
        })
    }

    /// The router's certificate: DNS SAN `localhost`, IP SAN `127.0.0.1`,
    /// URI SAN `spiffe://<trust_domain>/router`, serverAuth.
    pub fn router(trust_domain: &str, days: u32) -> Result<Self, CertsError> {
        validate_trust_domain(trust_domain)?;
        check_days(days)?;
        let (not_before, not_after) = validity(days);
        Ok(Self {
            common_name: "router".to_owned(),
            uris: vec![format!("spiffe://{trust_domain}/router")],
            dns_names: vec!["localhost".to_owned()],
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            not_before,
            not_after,
            is_ca: false,
            client_auth: false,
            server_auth: true,
        })
    }

    fn params(&self) -> Result<CertificateParams, CertsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, PUBLIC_ORG);
        dn.push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name = dn;
        for uri in &self.uris {
            let ia5 = uri.as_str().try_into().map_err(|_| CertsError::BadSan { san: uri.clone() })?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        for name in &self.dns_names {
            let ia5 = name.as_str().try_into().map_err(|_| CertsError::BadSan { san: name.clone() })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params.subject_alt_names.extend(self.ips.iter().copied().map(SanType::IpAddress));
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.serial_number = Some(random_serial()?);
        params.is_ca =
            if self.is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if self.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// The files of one issued leaf.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    /// The identity directory.
    pub dir: PathBuf,
    /// `DIR/cert.pem`.
    pub cert: PathBuf,
    /// `DIR/key.pem` (mode 0600).
    pub key: PathBuf,
    /// `DIR/ca.pem`, a copy of the CA certificate.
    pub ca: PathBuf,
    /// The URI SANs written.
    pub uris: Vec<String>,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssuedLeaf {
    /// Every file written, in a stable order.
    pub fn files(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.ca]
    }
}

/// Issues a leaf certificate described by `spec` with the CA in `ca_dir`
/// (`ca.pem`, `ca.key`) and writes `out_dir/{cert.pem,key.pem,ca.pem}`
/// (a fresh ECDSA P-256 key). Existing files there are replaced.
pub fn issue_leaf(ca_dir: &Path, spec: &LeafSpec, out_dir: &Path) -> Result<IssuedLeaf, CertsError> {
    let ca = Ca::load(ca_dir)?;
    issue_with(&ca, spec, out_dir)
}

pub(crate) fn issue_with(ca: &Ca, spec: &LeafSpec, out_dir: &Path) -> Result<IssuedLeaf, CertsError> {
    if spec.not_after <= spec.not_before {
        return Err(CertsError::BadValidity);
    }
    let params = spec.params()?;
    let serial =
        params.serial_number.as_ref().map(|serial| hex::encode(serial.to_bytes())).unwrap_or_default();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertsError::Rcgen { what: "leaf key", source })?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertsError::Rcgen { what: "leaf certificate", source })?;
    create_dir(out_dir)?;
    let issued = IssuedLeaf {
        dir: out_dir.to_owned(),
        cert: out_dir.join("cert.pem"),
        key: out_dir.join("key.pem"),
        ca: out_dir.join("ca.pem"),
        uris: spec.uris.clone(),
        serial,
        not_after: spec.not_after,
    };
    // Key first: a directory with a certificate but no key is more confusing
    // than the reverse if writing stops halfway.
    write_file(&issued.key, key.serialize_pem().as_bytes(), Secrecy::Private)?;
    write_file(&issued.cert, cert.pem().as_bytes(), Secrecy::Public)?;
    write_file(&issued.ca, ca.cert_pem.as_bytes(), Secrecy::Public)?;
    tracing::debug!(dir = %out_dir.display(), uris = ?spec.uris, "issued leaf certificate");
    Ok(issued)
}

fn validity(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - CLOCK_SKEW, now + Duration::days(i64::from(days)))
}
