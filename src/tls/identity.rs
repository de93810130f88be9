//! SPIFFE identities: what a service certificate must look like, and the
//! service name read from it.
//!
//! A service's identity is the single URI SAN `spiffe://<trust-domain>/svc/<service>`
//! of its leaf certificate (SPIFFE X.509-SVID rules: exactly one URI SAN, the
//! leaf is not a CA and may not sign certificates or CRLs). These checks run
//! inside the TLS handshake (see the verifier) and again wherever a certificate
//! is judged outside a handshake (e.g. key announcements), so both agree.
//!
//! This module never trusts a certificate's *chain*: it only reads the leaf.
//! Chain, validity period and revocation are webpki's job.

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Longest service name accepted (a DNS label's length, so names stay portable).
pub const MAX_SERVICE_NAME_LEN: usize = 63;
/// Longest trust domain accepted (SPIFFE's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// The authenticated identity of a peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The full SPIFFE URI, e.g. `spiffe://example.org/svc/web`.
    pub uri: String,
    /// The trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// The service name, e.g. `web`.
    pub service: String,
}

/// Why a certificate does not carry an acceptable service identity.
///
/// The messages say what the certificate must look like instead, because the
/// person reading them usually has to re-issue it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate is not parseable X.509.
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    /// No URI SAN at all.
    #[error("certificate has no URI SAN; exactly one spiffe://<trust-domain>/svc/<service> is required")]
    NoUriSan,
    /// More than one URI SAN (SPIFFE forbids it: which one would be the identity?).
    #[error("certificate has {0} URI SANs; exactly one spiffe://<trust-domain>/svc/<service> is required")]
    ManyUriSans(usize),
    /// The URI is not `spiffe://…`.
    #[error("URI SAN {0:?} is not a spiffe:// URI; expected spiffe://<trust-domain>/svc/<service>")]
    NotSpiffe(String),
    /// The trust domain part is malformed.
    #[error("trust domain {domain:?} is invalid: {reason}")]
    BadTrustDomain {
        /// The trust domain as written.
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The trust domain is well formed but not the one this router serves.
    #[error("certificate is for trust domain {found:?}; this router accepts only {expected:?}")]
    WrongTrustDomain {
        /// The certificate's trust domain.
        found: String,
        /// The configured trust domain.
        expected: String,
    },
    /// The path is not `/svc/<service>` (e.g. the router's own `/router` identity).
    #[error("URI SAN {0:?} does not name a service; expected path /svc/<service>")]
    NotAService(String),
    /// The service name is malformed.
    #[error("service name {name:?} is invalid: {reason}")]
    BadServiceName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The leaf is a CA (basicConstraints CA=true).
    #[error("certificate is a CA (basicConstraints CA=true); a service certificate must not be")]
    IsCa,
    /// The leaf may sign certificates or CRLs.
    #[error(
        "certificate has keyUsage keyCertSign or cRLSign; a service certificate must not sign certificates"
    )]
    SignsCertificates,
}

/// Checks a service name: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
pub fn validate_service_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason| Err(IdentityError::BadServiceName { name: name.to_owned(), reason });
    let Some(first) = name.bytes().next() else {
        return bad("it is empty");
    };
    if name.len() > MAX_SERVICE_NAME_LEN {
        return bad("it is longer than 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
        return bad("only a-z, 0-9, '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks a trust domain: lowercase DNS-like labels (`a-z`, `0-9`, `-`, `_`)
/// separated by dots, e.g. `example.org`.
pub fn validate_trust_domain(domain: &str) -> Result<(), IdentityError> {
    let bad = |reason| Err(IdentityError::BadTrustDomain { domain: domain.to_owned(), reason });
    if domain.is_empty() {
        return bad("it is empty");
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return bad("it is longer than 255 characters");
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return bad("it has an empty label (leading, trailing or double dot)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with '-'");
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return bad("only lowercase a-z, 0-9, '-', '_' and '.' are allowed");
        }
    }
    Ok(())
}

/// Splits `spiffe://<trust-domain>/svc/<service>` into its trust domain and
/// service name, checking both.
///
/// Anything else is refused: other schemes, ports, user info, queries,
/// fragments, percent-encoding, and SPIFFE IDs that are not services (such as
/// the router's `spiffe://<td>/router`).
pub fn parse_spiffe_service(uri: &str) -> Result<(String, String), IdentityError> {
    let rest = uri.strip_prefix("spiffe://").ok_or_else(|| IdentityError::NotSpiffe(uri.to_owned()))?;
    let (domain, path) = rest.split_once('/').ok_or_else(|| IdentityError::NotAService(uri.to_owned()))?;
    validate_trust_domain(domain)?;
    let service = path.strip_prefix("svc/").ok_or_else(|| IdentityError::NotAService(uri.to_owned()))?;
    // Service-name validation also rejects '/', '?', '#', '%' and '.', so no
    // query, fragment, extra segment or encoded character slips through.
    validate_service_name(service)?;
    Ok((domain.to_owned(), service.to_owned()))
}

/// Reads the service identity of a leaf certificate, enforcing the SPIFFE
/// leaf rules (exactly one URI SAN naming a service, CA=false, no
/// keyCertSign/cRLSign).
///
/// This does not verify the chain or the validity period; call it only on a
/// certificate that a verifier already accepted.
pub fn identity_of_cert(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|err| IdentityError::Parse(err.to_string()))?;
    identity_of_parsed(&parsed)
}

fn identity_of_parsed(cert: &X509Certificate<'_>) -> Result<PeerIdentity, IdentityError> {
    let constraints = cert.basic_constraints().map_err(|err| IdentityError::Parse(err.to_string()))?;
    if constraints.is_some_and(|ext| ext.value.ca) {
        return Err(IdentityError::IsCa);
    }
    let usage = cert.key_usage().map_err(|err| IdentityError::Parse(err.to_string()))?;
    if usage.is_some_and(|ext| ext.value.key_cert_sign() || ext.value.crl_sign()) {
        return Err(IdentityError::SignsCertificates);
    }
    let sans = cert.subject_alternative_name().map_err(|err| IdentityError::Parse(err.to_string()))?;
    let uris: Vec<&str> = sans
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let uri = match uris.as_slice() {
        [] => return Err(IdentityError::NoUriSan),
        [one] => *one,
        many => return Err(IdentityError::ManyUriSans(many.len())),
    };
    let (trust_domain, service) = parse_spiffe_service(uri)?;
    Ok(PeerIdentity { uri: uri.to_owned(), trust_domain, service })
}

/// Like [`identity_of_cert`], and also requires the given trust domain.
pub fn identity_in_domain(
    cert: &CertificateDer<'_>,
    trust_domain: Option<&str>,
) -> Result<PeerIdentity, IdentityError> {
    let identity = identity_of_cert(cert)?;
    match trust_domain {
        Some(expected) if expected != identity.trust_domain => Err(IdentityError::WrongTrustDomain {
            found: identity.trust_domain,
            expected: expected.to_owned(),
        }),
        _ => Ok(identity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_service_uri() {
        assert_eq!(
            parse_spiffe_service("spiffe://example.org/svc/web"),
            Ok(("example.org".to_owned(), "web".to_owned()))
        );
        assert_eq!(
            parse_spiffe_service("spiffe://a-b.c_d/svc/to-do_2"),
            Ok(("a-b.c_d".to_owned(), "to-do_2".to_owned()))
        );
    }

    #[test]
    fn refuses_malformed_uris() {
        let refused = [
            "https://example.org/svc/web",
            "SPIFFE://example.org/svc/web",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/router",
            "spiffe://example.org/svc/",
            "spiffe://example.org/svc/web/extra",
            "spiffe://example.org/svc/web?x=1",
            "spiffe://example.org/svc/web#f",
            "spiffe://example.org/svc/w%65b",
            "spiffe://example.org/svc/Web",
            "spiffe://example.org/svc/-web",
            "spiffe://Example.org/svc/web",
            "spiffe://example.org:443/svc/web",
            "spiffe://user@example.org/svc/web",
            "spiffe:///svc/web",
            "spiffe://example..org/svc/web",
        ];
        for uri in refused {
            assert!(parse_spiffe_service(uri).is_err(), "{uri} was accepted");
        }
    }

    #[test]
    fn service_names() {
        for good in ["web", "todo", "a", "0", "pay-ments_v2"] {
            assert_eq!(validate_service_name(good), Ok(()), "{good}");
        }
        for bad in ["", "_x", "-x", "Web", "a.b", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_messages_say_what_is_required() {
        assert_eq!(
            IdentityError::ManyUriSans(2).to_string(),
            "certificate has 2 URI SANs; exactly one spiffe://<trust-domain>/svc/<service> is required"
        );
        let err = validate_trust_domain("Example.org").unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
}
