//! What a live connection needs to know about its peer's certificate after
//! the handshake: its serial (to close it when a new CRL revokes it) and the
//! end of its validity (to close it when it expires).
//!
//! rustls checks revocation and expiry only during the handshake; these
//! facts let the router enforce both for connections that outlive it. This
//! module reads certificates and CRLs; it never decides to close anything.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;

use super::TlsError;

/// Facts about a connected peer's leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafFacts {
    /// The serial number, big-endian bytes without leading zeros.
    pub serial: Vec<u8>,
    /// The end of the validity period.
    pub not_after: SystemTime,
}

/// The leaf certificate facts of an established server-side connection.
pub fn leaf_facts(conn: &rustls::ServerConnection) -> Result<LeafFacts, TlsError> {
    let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or(TlsError::NoPeerCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::Verifier(format!("peer certificate does not parse: {e}")))?;
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok(LeafFacts {
        serial: trim(cert.raw_serial()).to_vec(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// Every serial revoked by the CRLs in these PEM files.
pub fn revoked_serials(paths: &[impl AsRef<Path>]) -> Result<HashSet<Vec<u8>>, TlsError> {
    let mut serials = HashSet::new();
    for path in paths {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
        for der in CertificateRevocationListDer::pem_slice_iter(&pem) {
            let der = der.map_err(|source| TlsError::Pem { path: path.to_owned(), source })?;
            let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| {
                TlsError::Verifier(format!("{} does not parse as a CRL: {e}", path.display()))
            })?;
            for revoked in crl.iter_revoked_certificates() {
                serials.insert(trim(revoked.raw_serial()).to_vec());
            }
        }
    }
    Ok(serials)
}

/// Serial bytes compared without DER's leading zero padding.
fn trim(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len().saturating_sub(1));
    &serial[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_without_padding() {
        assert_eq!(trim(&[0, 0, 5, 0]), &[5, 0]);
        assert_eq!(trim(&[0]), &[0]);
        assert_eq!(trim(&[]), &[] as &[u8]);
    }

    #[test]
    fn revoked_serials_of_a_real_crl() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path(), "example.org", &["web".into(), "todo".into()], 2).unwrap();
        let crl = dir.path().join("crl.pem");
        let report = crate::certs::revoke(dir.path(), &[dir.path().join("web/cert.pem")], &crl, 2).unwrap();
        let serials = revoked_serials(&[&crl]).unwrap();
        assert_eq!(serials.len(), 1, "{report:?}");
        let pem = std::fs::read(dir.path().join("web/cert.pem")).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(serials.contains(trim(cert.raw_serial())));
    }
}
