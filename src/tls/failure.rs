//! Naming why a TLS handshake failed, as a short stable word for logs,
//! metrics and the audit log.
//!
//! The reason is found by walking the error's sources to the rustls error
//! (never by reading message text), so it survives wording changes.

use std::error::Error as StdError;

use rustls::{AlertDescription, CertificateError, PeerIncompatible};

use super::identity::IdentityError;

/// The stable reasons [`handshake_failure_reason`] returns.
pub const REASONS: &[&str] =
    &[NO_CERTIFICATE, UNKNOWN_ISSUER, EXPIRED, REVOKED, BAD_IDENTITY, PROTOCOL_VERSION, OTHER];

const NO_CERTIFICATE: &str = "no_certificate";
const UNKNOWN_ISSUER: &str = "unknown_issuer";
const EXPIRED: &str = "expired";
const REVOKED: &str = "revoked";
const BAD_IDENTITY: &str = "bad_identity";
const PROTOCOL_VERSION: &str = "protocol_version";
const OTHER: &str = "other";

/// Classifies a failed handshake into one of [`REASONS`]:
/// `no_certificate`, `unknown_issuer`, `expired`, `revoked`, `bad_identity`
/// (no acceptable SPIFFE service identity, a CA used as leaf, or a
/// certificate not meant for client auth), `protocol_version`, `other`.
///
/// Works on the server's accept error (the router's view) and on the client's
/// error after the server refused it (the alert the relay received).
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    let mut source: Option<&(dyn StdError + 'static)> =
        err.get_ref().map(|inner| inner as &(dyn StdError + 'static));
    while let Some(current) = source {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return reason_of(tls);
        }
        source = current.source();
    }
    OTHER
}

/// A one-line description of a failed handshake for logs: the identity rule
/// a certificate broke when that was the cause (rustls would only show its
/// debug form), else the error's own message.
pub fn handshake_failure_detail(err: &std::io::Error) -> String {
    let mut source: Option<&(dyn StdError + 'static)> =
        err.get_ref().map(|inner| inner as &(dyn StdError + 'static));
    while let Some(current) = source {
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            current.downcast_ref::<rustls::Error>()
            && let Some(identity) = other.0.downcast_ref::<IdentityError>()
        {
            return format!("invalid peer certificate: {identity}");
        }
        source = current.source();
    }
    err.to_string()
}

fn reason_of(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::NoCertificatesPresented => NO_CERTIFICATE,
        rustls::Error::InvalidCertificate(cert) => reason_of_certificate(cert),
        rustls::Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::Tls13RequiredForQuic,
        ) => PROTOCOL_VERSION,
        rustls::Error::AlertReceived(alert) => reason_of_alert(*alert),
        _ => OTHER,
    }
}

fn reason_of_certificate(err: &CertificateError) -> &'static str {
    match err {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => UNKNOWN_ISSUER,
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => EXPIRED,
        CertificateError::Revoked => REVOKED,
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => BAD_IDENTITY,
        CertificateError::Other(other) => {
            let inner: &(dyn StdError + 'static) = other.0.as_ref();
            if inner.downcast_ref::<IdentityError>().is_some()
                || matches!(inner.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
            {
                BAD_IDENTITY
            } else {
                OTHER
            }
        }
        _ => OTHER,
    }
}

fn reason_of_alert(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::CertificateRequired => NO_CERTIFICATE,
        AlertDescription::UnknownCA => UNKNOWN_ISSUER,
        AlertDescription::CertificateExpired => EXPIRED,
        AlertDescription::CertificateRevoked => REVOKED,
        // What rustls sends for our SPIFFE refusal, a CA leaf, or a wrong EKU.
        AlertDescription::CertificateUnknown
        | AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate => BAD_IDENTITY,
        AlertDescription::ProtocolVersion => PROTOCOL_VERSION,
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use rustls::OtherError;

    use super::*;

    fn io_err(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn names_certificate_errors() {
        let cases = [
            (rustls::Error::NoCertificatesPresented, "no_certificate"),
            (CertificateError::UnknownIssuer.into(), "unknown_issuer"),
            (CertificateError::Expired.into(), "expired"),
            (CertificateError::Revoked.into(), "revoked"),
            (
                CertificateError::Other(OtherError(Arc::new(IdentityError::ManyUriSans(2)))).into(),
                "bad_identity",
            ),
            (
                CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity))).into(),
                "bad_identity",
            ),
            (PeerIncompatible::SupportedVersionsExtensionRequired.into(), "protocol_version"),
            (rustls::Error::AlertReceived(AlertDescription::CertificateRevoked), "revoked"),
            (rustls::Error::DecryptError, "other"),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            assert_eq!(handshake_failure_reason(&io_err(err)), want, "{text}");
        }
    }

    #[test]
    fn detail_shows_the_identity_rule() {
        let err = io_err(CertificateError::Other(OtherError(Arc::new(IdentityError::ManyUriSans(2)))).into());
        assert_eq!(
            handshake_failure_detail(&err),
            "invalid peer certificate: certificate has 2 URI SANs; exactly one spiffe://<trust-domain>/svc/<service> is required"
        );
        let err = io_err(CertificateError::Revoked.into());
        assert_eq!(handshake_failure_detail(&err), err.to_string());
    }

    #[test]
    fn non_tls_errors_are_other() {
        let err = io::Error::new(io::ErrorKind::UnexpectedEof, "closed");
        assert_eq!(handshake_failure_reason(&err), "other");
        let err = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(handshake_failure_reason(&err), "other");
    }
}
