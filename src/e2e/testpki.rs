//! A throw-away PKI for the unit tests: CAs and leaf certificates with a
//! SPIFFE URI SAN, made with rcgen. (Tests only.)

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::identity::{SigningIdentity, TrustAnchors};

/// A test CA.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Milliseconds of "now" in tests: inside every certificate's validity.
pub(crate) fn now_ms() -> u64 {
    (OffsetDateTime::now_utc().unix_timestamp() as u64) * 1000
}

impl TestCa {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// A CRL (PEM) revoking the certificates with these serial numbers.
    pub(crate) fn crl_pem(&self, serials: &[Vec<u8>]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - Duration::hours(1),
            next_update: OffsetDateTime::now_utc() + Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: OffsetDateTime::now_utc() - Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    pub(crate) fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_der(&[self.issuer.der().clone()]).unwrap()
    }

    /// A leaf for `spiffe://example.org/svc/<service>`.
    pub(crate) fn identity(&self, service: &str) -> SigningIdentity {
        self.leaf(&[&format!("spiffe://example.org/svc/{service}")], 30)
    }

    /// A leaf with these URI SANs, valid from a day ago for `days` days.
    pub(crate) fn leaf(&self, uris: &[&str], days: i64) -> SigningIdentity {
        let (cert, key) = self.leaf_der(uris, days, false);
        SigningIdentity::from_der(vec![cert], &key).unwrap()
    }

    /// The DER certificate and PKCS#8 key of a leaf, without any checks
    /// (to build certificates the verifier must refuse).
    pub(crate) fn leaf_der(
        &self,
        uris: &[&str],
        days: i64,
        key_cert_sign: bool,
    ) -> (CertificateDer<'static>, Vec<u8>) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, uris.first().copied().unwrap_or("none"));
        params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_cert_sign {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(days - 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (CertificateDer::from(cert.der().to_vec()), key.serialize_der())
    }
}
