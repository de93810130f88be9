//! The router's client-certificate verifier: webpki (chain, validity, CRLs,
//! clientAuth EKU) followed by the SPIFFE identity rules, so a certificate
//! without an acceptable service identity fails the handshake itself.
//!
//! It never relaxes webpki: the SPIFFE check runs only after webpki accepted.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};

use super::identity::identity_in_domain;

/// Wraps a webpki client verifier and additionally requires a SPIFFE service
/// identity in the configured trust domain (any trust domain when `None`).
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: Option<String>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: Option<String>) -> Self {
        Self { inner, trust_domain }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match identity_in_domain(end_entity, self.trust_domain.as_deref()) {
            Ok(_) => Ok(verified),
            Err(err) => {
                tracing::debug!(error = %err, "client certificate refused: bad identity");
                // The typed error rides inside the rustls error so that
                // `handshake_failure_reason` can name it "bad_identity".
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err)))))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
