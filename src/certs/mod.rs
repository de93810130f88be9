//! Development certificates: a CA, the router's certificate, one certificate
//! per service carrying its SPIFFE URI SAN, CRLs, and the Ed25519 signing
//! keys of a deployment (audit checkpoints, admin tokens, policies).
//!
//! For development and tests only: production certificates come from the
//! organisation's PKI. The CA key sits in a plain file next to the
//! certificates, which is exactly what a production CA must never do.
//!
//! Layout written by [`init`] (all ECDSA P-256, private keys mode 0600):
//!
//! ```text
//! DIR/ca.pem, DIR/ca.key               the CA (keyCertSign, cRLSign)
//! DIR/trust-domain                     the trust domain, one line
//! DIR/router/{cert,key,ca}.pem         localhost, 127.0.0.1, spiffe://<td>/router, serverAuth
//! DIR/<service>/{cert,key,ca}.pem      spiffe://<td>/svc/<service>, clientAuth
//! DIR/{audit,admin,policy-signing}/{key,pub}.pem   Ed25519 (PKCS#8 / SPKI)
//! ```
//!
//! Negative test cases (expired, two URI SANs, another trust domain, a CA as
//! leaf) are made with [`LeafSpec`] and [`issue_leaf`]; revocation with
//! [`revoke`].

mod ca;
mod leaf;
mod write;

use std::path::{Path, PathBuf};

use rcgen::KeyPair;

pub use leaf::{IssuedLeaf, LeafSpec, issue_leaf};

use self::ca::{Ca, parse_pem_cert};
use self::write::{Secrecy, create_dir, read_to_string, write_file};
use crate::tls::{IdentityError, validate_service_name, validate_trust_domain};

/// The organisation name in every development certificate, so one is
/// recognisable at a glance (`openssl x509 -noout -subject`).
const PUBLIC_ORG: &str = "exocom development (not for production)";

/// Longest validity accepted, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// Directories [`init`] uses itself; a service may not be named like them.
pub const RESERVED_NAMES: &[&str] = &["router", "audit", "admin", "policy-signing"];

/// The purposes of the Ed25519 key pairs [`init`] writes, each in its own
/// directory of that name.
pub const SIGNING_KEY_PURPOSES: &[&str] = &["audit", "admin", "policy-signing"];

/// Why certificate material could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// A service name or trust domain is malformed.
    #[error(transparent)]
    Name(#[from] IdentityError),
    /// A service name collides with a directory `init` writes.
    #[error("service name {0:?} is reserved (it would share a directory with the {0} files)")]
    ReservedName(String),
    /// A service is listed twice.
    #[error("service {0:?} is listed twice")]
    DuplicateService(String),
    /// The validity is out of range.
    #[error("validity of {0} days is out of range; use 1 to 36500 days")]
    BadDays(u32),
    /// `not_after` is not after `not_before`.
    #[error("the certificate's not_after must be after its not_before")]
    BadValidity,
    /// A SAN cannot be encoded (not ASCII).
    #[error("subject alternative name {san:?} is not ASCII")]
    BadSan {
        /// The SAN as given.
        san: String,
    },
    /// `init` would overwrite an existing CA.
    #[error(
        "{0} already exists; refusing to overwrite an existing CA (every certificate it issued would stop working)"
    )]
    CaExists(PathBuf),
    /// The CA files cannot be used.
    #[error("cannot use CA {path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate to revoke cannot be used.
    #[error("cannot use certificate {path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The trust-domain file is missing its content.
    #[error("{path} is empty; it should hold the trust domain on one line")]
    NoTrustDomain {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen refused to build something.
    #[error("cannot create the {what}: {source}")]
    Rcgen {
        /// What was being made.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// An Ed25519 key pair written by [`init`].
#[derive(Clone, Debug)]
pub struct SigningKeyFiles {
    /// What it signs: `audit`, `admin` or `policy-signing`.
    pub purpose: &'static str,
    /// `DIR/<purpose>/key.pem`: PKCS#8 private key (mode 0600).
    pub private: PathBuf,
    /// `DIR/<purpose>/pub.pem`: SubjectPublicKeyInfo public key.
    pub public: PathBuf,
}

/// What [`init`] wrote.
#[derive(Clone, Debug)]
pub struct InitReport {
    /// The output directory.
    pub dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
    /// `DIR/ca.pem`.
    pub ca_cert: PathBuf,
    /// `DIR/ca.key` (mode 0600).
    pub ca_key: PathBuf,
    /// `DIR/trust-domain`.
    pub trust_domain_file: PathBuf,
    /// The router's certificate.
    pub router: IssuedLeaf,
    /// One per service, in the order given.
    pub services: Vec<IssuedLeaf>,
    /// The audit, admin and policy-signing key pairs.
    pub signing_keys: Vec<SigningKeyFiles>,
}

impl InitReport {
    /// Every file written, in a stable order.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.ca_cert.as_path(), self.ca_key.as_path(), self.trust_domain_file.as_path()];
        files.extend(self.router.files());
        for service in &self.services {
            files.extend(service.files());
        }
        for key in &self.signing_keys {
            files.push(&key.private);
            files.push(&key.public);
        }
        files
    }
}

/// What [`revoke`] wrote.
#[derive(Clone, Debug)]
pub struct RevokeReport {
    /// The CRL file.
    pub crl: PathBuf,
    /// Serials (lowercase hex) newly revoked, one per certificate given.
    pub revoked: Vec<String>,
    /// All serials the CRL lists (those of an existing CRL at the same path
    /// are kept).
    pub listed: usize,
}

/// Creates a development CA, the router's certificate, one certificate per
/// service and the signing key pairs in `out` (see the module docs for the
/// layout), each certificate valid for `days`.
///
/// Refuses if `out` already holds a CA; see [`init_overwriting`].
pub fn init(
    out: &Path,
    trust_domain: &str,
    services: &[String],
    days: u32,
) -> Result<InitReport, CertsError> {
    init_inner(out, trust_domain, services, days, false)
}

/// Like [`init`], but replaces a CA already in `out` (every certificate the
/// old CA issued stops being trusted by configurations using the new one).
pub fn init_overwriting(
    out: &Path,
    trust_domain: &str,
    services: &[String],
    days: u32,
) -> Result<InitReport, CertsError> {
    init_inner(out, trust_domain, services, days, true)
}

fn init_inner(
    out: &Path,
    trust_domain: &str,
    services: &[String],
    days: u32,
    force: bool,
) -> Result<InitReport, CertsError> {
    // Everything is checked before anything is written, so a typo in the
    // last service name does not leave half a directory behind.
    validate_trust_domain(trust_domain)?;
    check_days(days)?;
    for (i, service) in services.iter().enumerate() {
        check_service_name(service)?;
        if services[..i].contains(service) {
            return Err(CertsError::DuplicateService(service.clone()));
        }
    }
    let ca_cert = out.join("ca.pem");
    let ca_key = out.join("ca.key");
    if !force {
        for path in [&ca_cert, &ca_key] {
            if path.exists() {
                return Err(CertsError::CaExists(path.clone()));
            }
        }
    }
    let router_spec = LeafSpec::router(trust_domain, days)?;
    let service_specs = services
        .iter()
        .map(|service| LeafSpec::service(trust_domain, service, days))
        .collect::<Result<Vec<_>, _>>()?;

    create_dir(out)?;
    let (ca, ca_key_pem) = Ca::create(trust_domain, days)?;
    write_file(&ca_key, ca_key_pem.as_bytes(), Secrecy::Private)?;
    write_file(&ca_cert, ca.cert_pem.as_bytes(), Secrecy::Public)?;
    let trust_domain_file = out.join("trust-domain");
    write_file(&trust_domain_file, format!("{trust_domain}\n").as_bytes(), Secrecy::Public)?;
    let router = leaf::issue_with(&ca, &router_spec, &out.join("router"))?;
    let mut issued = Vec::with_capacity(services.len());
    for (service, spec) in services.iter().zip(&service_specs) {
        issued.push(leaf::issue_with(&ca, spec, &out.join(service))?);
    }
    let signing_keys = SIGNING_KEY_PURPOSES
        .iter()
        .map(|purpose| write_signing_key(&out.join(purpose), purpose))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::debug!(dir = %out.display(), trust_domain, services = services.len(), "created development CA");
    Ok(InitReport {
        dir: out.to_owned(),
        trust_domain: trust_domain.to_owned(),
        ca_cert,
        ca_key,
        trust_domain_file,
        router,
        services: issued,
        signing_keys,
    })
}

/// Issues a certificate for one more service with the CA in `ca_dir` (made by
/// [`init`]; its trust domain is read from `ca_dir/trust-domain`), written to
/// `out` (default `ca_dir/<service>`). Re-issuing replaces the service's
/// certificate and key there.
pub fn issue(ca_dir: &Path, service: &str, days: u32, out: Option<&Path>) -> Result<IssuedLeaf, CertsError> {
    check_service_name(service)?;
    let trust_domain = read_trust_domain(ca_dir)?;
    let spec = LeafSpec::service(&trust_domain, service, days)?;
    let out = out.map_or_else(|| ca_dir.join(service), Path::to_owned);
    issue_leaf(ca_dir, &spec, &out)
}

/// The trust domain recorded in `ca_dir/trust-domain` by [`init`].
pub fn read_trust_domain(ca_dir: &Path) -> Result<String, CertsError> {
    let path = ca_dir.join("trust-domain");
    let text = read_to_string(&path)?;
    let domain = text.trim();
    if domain.is_empty() {
        return Err(CertsError::NoTrustDomain { path });
    }
    validate_trust_domain(domain)?;
    Ok(domain.to_owned())
}

/// Writes a CRL signed by the CA in `ca_dir` to `out_crl`, revoking the
/// certificates in `certs` (PEM files). Serials already listed by a CRL at
/// `out_crl` stay listed. The CRL is valid for `days`; the router refuses
/// every client once its CRL has expired, so re-run this before then.
///
/// An empty `certs` writes a CRL that revokes nothing (or renews one).
pub fn revoke(
    ca_dir: &Path,
    certs: &[PathBuf],
    out_crl: &Path,
    days: u32,
) -> Result<RevokeReport, CertsError> {
    check_days(days)?;
    let ca = Ca::load(ca_dir)?;
    let mut serials: Vec<Vec<u8>> = match std::fs::read_to_string(out_crl) {
        Ok(pem) => existing_serials(&pem, out_crl, &ca)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(CertsError::Read { path: out_crl.to_owned(), source });
        }
    };
    let mut revoked = Vec::with_capacity(certs.len());
    for path in certs {
        let serial = serial_issued_by(&ca, path)?;
        revoked.push(hex::encode(&serial));
        if !serials.contains(&serial) {
            serials.push(serial);
        }
    }
    let pem = ca.crl(&serials, days)?;
    write_file(out_crl, pem.as_bytes(), Secrecy::Public)?;
    tracing::debug!(crl = %out_crl.display(), listed = serials.len(), "wrote CRL");
    Ok(RevokeReport { crl: out_crl.to_owned(), revoked, listed: serials.len() })
}

/// The serial of the certificate at `path`, after checking `ca` issued it.
fn serial_issued_by(ca: &Ca, path: &Path) -> Result<Vec<u8>, CertsError> {
    let bad = |reason: String| CertsError::BadCertificate { path: path.to_owned(), reason };
    let pem = read_to_string(path)?;
    let der = parse_pem_cert(&pem, path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|err| bad(format!("not valid X.509 ({err})")))?;
    if cert.issuer().as_raw() != ca.subject_der.as_slice() {
        return Err(bad(format!("it was issued by {}, not by this CA", cert.issuer())));
    }
    Ok(strip_leading_zeros(cert.raw_serial()))
}

fn existing_serials(pem: &str, path: &Path, ca: &Ca) -> Result<Vec<Vec<u8>>, CertsError> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| CertsError::BadCertificate { path: path.to_owned(), reason };
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|err| bad(format!("an existing file that is not a PEM CRL ({err})")))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
        .map_err(|err| bad(format!("an existing CRL that cannot be parsed ({err})")))?;
    if crl.issuer().as_raw() != ca.subject_der.as_slice() {
        return Err(bad("an existing CRL of another CA".into()));
    }
    Ok(crl.iter_revoked_certificates().map(|revoked| strip_leading_zeros(revoked.raw_serial())).collect())
}

fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].to_vec()
}

fn write_signing_key(dir: &Path, purpose: &'static str) -> Result<SigningKeyFiles, CertsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|source| CertsError::Rcgen { what: "Ed25519 signing key", source })?;
    create_dir(dir)?;
    let files = SigningKeyFiles { purpose, private: dir.join("key.pem"), public: dir.join("pub.pem") };
    write_file(&files.private, key.serialize_pem().as_bytes(), Secrecy::Private)?;
    write_file(&files.public, key.public_key_pem().as_bytes(), Secrecy::Public)?;
    Ok(files)
}

fn check_service_name(service: &str) -> Result<(), CertsError> {
    validate_service_name(service)?;
    if RESERVED_NAMES.contains(&service) {
        return Err(CertsError::ReservedName(service.to_owned()));
    }
    Ok(())
}

fn check_days(days: u32) -> Result<(), CertsError> {
    if days == 0 || days > MAX_DAYS {
        return Err(CertsError::BadDays(days));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::tls::identity_of_cert;

    fn services(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn init_writes_the_documented_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        let report = init(&out, "example.org", &services(&["web", "todo"]), 30).unwrap();

        for file in report.files() {
            assert!(file.is_file(), "{} missing", file.display());
        }
        assert_eq!(report.files().len(), 3 + 3 * 3 + 3 * 2);
        assert_eq!(std::fs::read_to_string(out.join("trust-domain")).unwrap(), "example.org\n");
        for service in ["web", "todo"] {
            let identity = identity_of_cert(&cert_der(&out.join(service).join("cert.pem"))).unwrap();
            assert_eq!(identity.uri, format!("spiffe://example.org/svc/{service}"));
            assert_eq!(
                std::fs::read(out.join(service).join("ca.pem")).unwrap(),
                std::fs::read(out.join("ca.pem")).unwrap()
            );
        }

        let router = cert_der(&out.join("router/cert.pem"));
        let (_, router) = x509_parser::parse_x509_certificate(&router).unwrap();
        let sans = router.subject_alternative_name().unwrap().unwrap();
        let names = &sans.value.general_names;
        assert!(names.contains(&GeneralName::DNSName("localhost")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert!(names.contains(&GeneralName::URI("spiffe://example.org/router")));
        let eku = router.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);

        let ca = cert_der(&out.join("ca.pem"));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        assert!(ca.is_ca());
        let usage = ca.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let report = init(tmp.path(), "example.org", &services(&["web"]), 1).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&report.ca_key), 0o600);
        assert_eq!(mode(&report.router.key), 0o600);
        assert_eq!(mode(&report.services[0].key), 0o600);
        for key in &report.signing_keys {
            assert_eq!(mode(&key.private), 0o600, "{}", key.purpose);
            assert_eq!(mode(&key.public), 0o644, "{}", key.purpose);
        }
        assert_eq!(mode(&report.ca_cert), 0o644);
    }

    #[test]
    fn signing_keys_are_ed25519_pairs_that_sign_and_verify() {
        use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
        let tmp = tempfile::tempdir().unwrap();
        let report = init(tmp.path(), "example.org", &[], 1).unwrap();
        let purposes: Vec<_> = report.signing_keys.iter().map(|key| key.purpose).collect();
        assert_eq!(purposes, ["audit", "admin", "policy-signing"]);
        for files in &report.signing_keys {
            let private = PrivateKeyDer::from_pem_file(&files.private).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(private.secret_der()).unwrap();
            let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_file(&files.public).unwrap();
            // An Ed25519 SPKI ends with the 32-byte raw public key.
            let raw = &spki.as_ref()[spki.as_ref().len() - 32..];
            assert_eq!(raw, pair.public_key().as_ref());
            let signature = pair.sign(b"checkpoint");
            UnparsedPublicKey::new(&ED25519, raw).verify(b"checkpoint", signature.as_ref()).unwrap();
        }
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), "example.org", &services(&["web"]), 1).unwrap();
        let before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
        let err = init(tmp.path(), "example.org", &services(&["web"]), 1).unwrap_err();
        assert!(matches!(err, CertsError::CaExists(_)), "{err}");
        assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);
        init_overwriting(tmp.path(), "example.org", &services(&["web"]), 1).unwrap();
        assert_ne!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        let cases: [(&str, &[&str], u32); 6] = [
            ("Example.org", &["web"], 1),
            ("example.org", &["web", "Todo"], 1),
            ("example.org", &["web", "router"], 1),
            ("example.org", &["web", "web"], 1),
            ("example.org", &["web"], 0),
            ("example.org", &["web"], MAX_DAYS + 1),
        ];
        for (domain, names, days) in cases {
            let result = init(&out, domain, &services(names), days);
            assert!(result.is_err(), "{domain} {names:?} {days}");
            assert!(!out.exists(), "{domain} {names:?} {days} wrote files");
        }
        let err = init(&out, "example.org", &services(&["web", "Todo"]), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service name \"Todo\" is invalid: it must start with a lowercase letter or a digit"
        );
    }

    #[test]
    fn issue_adds_a_service_in_the_recorded_trust_domain() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), "corp.example", &services(&["web"]), 1).unwrap();
        let issued = issue(tmp.path(), "billing", 7, None).unwrap();
        assert_eq!(issued.dir, tmp.path().join("billing"));
        let identity = identity_of_cert(&cert_der(&issued.cert)).unwrap();
        assert_eq!(identity.uri, "spiffe://corp.example/svc/billing");

        let elsewhere = tmp.path().join("elsewhere");
        let issued = issue(tmp.path(), "billing", 7, Some(&elsewhere)).unwrap();
        assert_eq!(issued.cert, elsewhere.join("cert.pem"));
        assert!(issue(tmp.path(), "admin", 7, None).is_err());
        assert!(issue(&tmp.path().join("nothing"), "billing", 7, None).is_err());
    }

    #[test]
    fn revoke_lists_serials_keeps_old_ones_and_refuses_foreign_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        let other = tmp.path().join("other");
        let report = init(&ca, "example.org", &services(&["web", "todo"]), 1).unwrap();
        init(&other, "example.org", &services(&["web"]), 1).unwrap();
        let crl_path = tmp.path().join("crl.pem");

        let first = revoke(&ca, &[report.services[0].cert.clone()], &crl_path, 1).unwrap();
        assert_eq!(first.revoked, [report.services[0].serial.clone()]);
        let second = revoke(&ca, &[report.services[1].cert.clone()], &crl_path, 1).unwrap();
        assert_eq!(second.listed, 2);

        let der = CertificateRevocationListDer::from_pem_file(&crl_path).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
        let listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|revoked| hex::encode(strip_leading_zeros(revoked.raw_serial())))
            .collect();
        assert_eq!(listed, [report.services[0].serial.clone(), report.services[1].serial.clone()]);

        let err = revoke(&ca, &[other.join("web/cert.pem")], &crl_path, 1).unwrap_err();
        assert!(err.to_string().contains("not by this CA"), "{err}");
        let err = revoke(&other, &[], &crl_path, 1).unwrap_err();
        assert!(err.to_string().contains("another CA"), "{err}");
    }

    #[test]
    fn leaf_spec_validity_must_be_ordered() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), "example.org", &[], 1).unwrap();
        let mut spec = LeafSpec::service("example.org", "web", 1).unwrap();
        spec.not_after = spec.not_before;
        let err = issue_leaf(tmp.path(), &spec, &tmp.path().join("web")).unwrap_err();
        assert!(matches!(err, CertsError::BadValidity), "{err}");
    }
}
