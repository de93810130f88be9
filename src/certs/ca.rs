//! The development CA: creating it, loading it back from `ca.pem`/`ca.key`,
//! and signing leaves and CRLs with it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

use super::write::read_to_string;
use super::{CertsError, PUBLIC_ORG};

/// How far back `not_before` is set, so a peer whose clock is a little
/// behind does not see a certificate that is "not valid yet".
pub(crate) const CLOCK_SKEW: Duration = Duration::hours(1);

/// A loaded CA that can sign.
pub(crate) struct Ca {
    /// `ca.pem` as read (copied into every identity directory).
    pub(crate) cert_pem: String,
    /// The CA's subject DN, DER, to check that certificates are ours.
    pub(crate) subject_der: Vec<u8>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Makes a new self-signed CA (ECDSA P-256, keyCertSign + cRLSign,
    /// path length 0: it issues leaves directly).
    pub(crate) fn create(trust_domain: &str, days: u32) -> Result<(Self, String), CertsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CertsError::Rcgen { what: "CA key", source })?;
        let mut params = CertificateParams::default();
        let serial = random_serial()?;
        // A part of the serial in the name keeps two development CAs of one
        // trust domain apart, so a certificate of one is reported as "unknown
        // issuer" by the other rather than as a bad signature.
        let tag = hex::encode(serial.to_bytes().get(..4).unwrap_or_default());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, PUBLIC_ORG);
        dn.push(DnType::CommonName, format!("exocom development CA {trust_domain} {tag}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + Duration::days(i64::from(days));
        params.serial_number = Some(serial);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertsError::Rcgen { what: "CA certificate", source })?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let subject_der = subject_of(&cert_pem, Path::new("ca.pem"))?;
        let issuer = Issuer::new(params, key);
        Ok((Self { cert_pem, subject_der, issuer }, key_pem))
    }

    /// Loads `DIR/ca.pem` and `DIR/ca.key`.
    pub(crate) fn load(dir: &Path) -> Result<Self, CertsError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = read_to_string(&cert_path)?;
        let key_pem = read_to_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| CertsError::BadCa {
            path: key_path.clone(),
            reason: format!("not a usable private key ({err})"),
        })?;
        let subject_der = subject_of(&cert_pem, &cert_path)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|err| CertsError::BadCa {
            path: cert_path.clone(),
            reason: format!("not a usable CA certificate ({err})"),
        })?;
        if !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign) {
            return Err(CertsError::BadCa {
                path: cert_path,
                reason: "the certificate may not sign certificates (no keyCertSign)".into(),
            });
        }
        Ok(Self { cert_pem, subject_der, issuer })
    }

    /// Signs a CRL listing `serials`, valid for `days`.
    pub(crate) fn crl(&self, serials: &[Vec<u8>], days: u32) -> Result<String, CertsError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(i64::from(days)),
            // Seconds since the epoch: increases with every CRL this tool
            // writes, as RFC 5280 wants of the CRL number.
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl =
            params.signed_by(&self.issuer).map_err(|source| CertsError::Rcgen { what: "CRL", source })?;
        crl.pem().map_err(|source| CertsError::Rcgen { what: "CRL", source })
    }
}

/// A random positive 128-bit serial (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| CertsError::Random)?;
    // Clear the top bit so the DER INTEGER is positive without padding, and
    // set a low bit of the first byte so it is never shortened.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn subject_of(cert_pem: &str, path: &Path) -> Result<Vec<u8>, CertsError> {
    let der = parse_pem_cert(cert_pem, path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|err| CertsError::BadCa {
        path: path.to_owned(),
        reason: format!("not valid X.509 ({err})"),
    })?;
    Ok(cert.subject().as_raw().to_vec())
}

/// The DER of the first certificate in a PEM string.
pub(crate) fn parse_pem_cert(pem: &str, path: &Path) -> Result<Vec<u8>, CertsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map(|der| der.to_vec()).map_err(|err| {
        CertsError::BadCertificate {
            path: PathBuf::from(path),
            reason: format!("no PEM certificate ({err})"),
        }
    })
}
