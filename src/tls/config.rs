//! Building the rustls configurations from PEM files.
//!
//! Every rustls builder of the crate is here, so the crypto policy (ring,
//! TLS 1.3 only, client certificates required, no resumption) is decided in
//! one place. Nothing here may weaken it based on a flag.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::verifier::SpiffeClientVerifier;
use super::{IdentityDir, ServerFiles, TlsError};

/// The only provider the bus uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.3 only, on both sides, so a downgrade is impossible from either end.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The router's TLS configuration: TLS 1.3, client certificate required and
/// checked against `files.ca` (and `files.crls`), SPIFFE service identity
/// required inside the handshake, no session resumption.
pub fn server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    if let Some(domain) = &files.trust_domain {
        super::identity::validate_trust_domain(domain)?;
    }
    let roots = load_roots(&files.ca)?;
    let cert_chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut crls = Vec::new();
    for path in &files.crls {
        crls.extend(load_crls(path)?);
    }
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        // Dev and typical service CAs issue leaves directly; requiring a CRL
        // for every CA in the chain would refuse everyone when one is absent.
        .only_check_end_entity_revocation()
        // rustls accepts an expired CRL by default; a stale CRL must not
        // silently un-revoke a certificate.
        .enforce_revocation_expiration()
        .build()
        .map_err(|err| TlsError::Verifier(err.to_string()))?;
    let verifier = SpiffeClientVerifier::new(webpki, files.trust_domain.clone());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert_chain, key)
        .map_err(|source| key_mismatch(files, source))?;
    // Every connection does a full handshake, so every connection has its
    // certificate verified against the current CA and CRLs.
    no_resumption(&mut config);
    Ok(Arc::new(config))
}

/// Turns off session resumption: every connection does a full handshake.
fn no_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

fn key_mismatch(files: &ServerFiles, source: rustls::Error) -> TlsError {
    TlsError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone(), source }
}

/// The admin API's TLS configuration: the router's own certificate, TLS 1.3,
/// and no client certificate. This is the one server config without client
/// authentication, on purpose: the admin listener is a separate port whose
/// callers (operators, security reviewers) authenticate with signed tokens
/// on every request, and it never carries bus traffic.
pub fn admin_server_config(files: &ServerFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(|source| key_mismatch(files, source))?;
    no_resumption(&mut config);
    // Plain HTTP/1.1; announcing it lets ALPN-speaking clients agree on it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A relay's TLS configuration from an identity directory: presents
/// `cert.pem`/`key.pem`, trusts only `ca.pem`, TLS 1.3 only.
pub fn client_config(identity: &IdentityDir) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(&identity.ca_path())?;
    let cert_chain = load_certs(&identity.cert_path())?;
    let key = load_key(&identity.key_path())?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)
        .map_err(|source| TlsError::KeyMismatch {
            cert: identity.cert_path(),
            key: identity.key_path(),
            source,
        })?;
    // The router does not resume sessions; do not keep tickets around.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Loads every certificate of a PEM file (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned() },
        source => TlsError::Pem { path: path.to_owned(), source },
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa { path: path.to_owned(), source })?;
    }
    Ok(roots)
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: path.to_owned(), source })?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl { path: path.to_owned() });
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use rustls::pki_types::ServerName;
    use time::{Duration, OffsetDateTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::certs::{self, LeafSpec};
    use crate::tls::{PeerIdentity, handshake_failure_detail, handshake_failure_reason, peer_identity};

    /// A CA made by `certs::init` with the service "web", plus a second,
    /// unrelated CA.
    struct Pki {
        _tmp: tempfile::TempDir,
        ca: PathBuf,
        other_ca: PathBuf,
    }

    impl Pki {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let ca = tmp.path().join("ca");
            let other_ca = tmp.path().join("other");
            certs::init(&ca, "example.org", &["web".to_owned()], 1).unwrap();
            certs::init(&other_ca, "example.org", &["web".to_owned()], 1).unwrap();
            Self { _tmp: tmp, ca, other_ca }
        }

        fn server(&self) -> ServerFiles {
            ServerFiles {
                trust_domain: Some("example.org".to_owned()),
                ..ServerFiles::from_certs_dir(&self.ca)
            }
        }

        /// Issues `spec` with our CA into a fresh identity directory.
        fn identity(&self, name: &str, spec: &LeafSpec) -> IdentityDir {
            let dir = self.ca.join(name);
            certs::issue_leaf(&self.ca, spec, &dir).unwrap();
            IdentityDir::new(dir)
        }
    }

    fn web_spec() -> LeafSpec {
        LeafSpec::service("example.org", "web", 1).unwrap()
    }

    /// Runs a handshake over an in-memory pipe. Returns the server's view
    /// (the peer identity, or the accept error) and the client's (the byte
    /// the server wrote, or the error from connect or the first read: in
    /// TLS 1.3 a refused client certificate shows only there).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<PeerIdentity, io::Error>, Result<u8, io::Error>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server_side = async move {
            let mut stream = TlsAcceptor::from(server).accept(server_io).await?;
            let identity = peer_identity(stream.get_ref().1)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            stream.write_all(b"!").await?;
            stream.flush().await?;
            Ok(identity)
        };
        let client_side = async move {
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = TlsConnector::from(client).connect(name, client_io).await?;
            stream.read_u8().await
        };
        tokio::join!(server_side, client_side)
    }

    /// Asserts the server refused with `reason` and the client saw it too;
    /// returns the server's error.
    async fn assert_refused(server: Arc<ServerConfig>, client: Arc<ClientConfig>, reason: &str) -> io::Error {
        let (server_result, client_result) = handshake(server, client).await;
        let server_err = server_result.expect_err("server accepted the client");
        assert_eq!(handshake_failure_reason(&server_err), reason, "server error: {server_err}");
        let client_err = client_result.expect_err("client read data from a refused session");
        assert_eq!(handshake_failure_reason(&client_err), reason, "client error: {client_err}");
        server_err
    }

    #[tokio::test]
    async fn a_good_client_is_accepted_and_identified() {
        let pki = Pki::new();
        let server = server_config(&pki.server()).unwrap();
        let client = client_config(&IdentityDir::new(pki.ca.join("web"))).unwrap();
        let (server_result, client_result) = handshake(server, client).await;
        let identity = server_result.unwrap();
        assert_eq!(identity.uri, "spiffe://example.org/svc/web");
        assert_eq!(identity.trust_domain, "example.org");
        assert_eq!(identity.service, "web");
        assert_eq!(client_result.unwrap(), b'!');
    }

    #[tokio::test]
    async fn the_checked_in_example_certificates_work() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example");
        let files =
            ServerFiles { trust_domain: Some("example.org".to_owned()), ..ServerFiles::from_certs_dir(&dir) };
        let server = server_config(&files).unwrap();
        for service in ["web", "todo"] {
            let client = client_config(&IdentityDir::new(dir.join(service))).unwrap();
            let (server_result, _) = handshake(server.clone(), client).await;
            assert_eq!(server_result.unwrap().service, service);
        }
    }

    #[tokio::test]
    async fn no_client_certificate_is_refused() {
        let pki = Pki::new();
        let server = server_config(&pki.server()).unwrap();
        let roots = load_roots(&pki.ca.join("ca.pem")).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_refused(server, Arc::new(client), "no_certificate").await;
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let pki = Pki::new();
        let server = server_config(&pki.server()).unwrap();
        // The other CA's "web", trusting our router so only the client side is wrong.
        let dir = pki.other_ca.join("web");
        std::fs::copy(pki.ca.join("ca.pem"), dir.join("ca.pem")).unwrap();
        let client = client_config(&IdentityDir::new(dir)).unwrap();
        assert_refused(server, client, "unknown_issuer").await;
    }

    #[tokio::test]
    async fn an_expired_certificate_is_refused() {
        let pki = Pki::new();
        let mut spec = web_spec();
        spec.not_before = OffsetDateTime::now_utc() - Duration::days(10);
        spec.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        let client = client_config(&pki.identity("expired", &spec)).unwrap();
        let server = server_config(&pki.server()).unwrap();
        assert_refused(server, client, "expired").await;
    }

    #[tokio::test]
    async fn a_revoked_certificate_is_refused_and_others_still_accepted() {
        let pki = Pki::new();
        let revoked = pki.identity("revoked", &web_spec());
        let crl = pki.ca.join("crl.pem");
        certs::revoke(&pki.ca, &[revoked.cert_path()], &crl, 1).unwrap();
        let mut files = pki.server();
        files.crls.push(crl);
        let server = server_config(&files).unwrap();

        let client = client_config(&revoked).unwrap();
        assert_refused(server.clone(), client, "revoked").await;

        let good = client_config(&IdentityDir::new(pki.ca.join("web"))).unwrap();
        let (server_result, _) = handshake(server, good).await;
        assert_eq!(server_result.unwrap().service, "web");
    }

    #[tokio::test]
    async fn two_uri_sans_are_refused() {
        let pki = Pki::new();
        let mut spec = web_spec();
        spec.uris.push("spiffe://example.org/svc/admin".to_owned());
        let client = client_config(&pki.identity("two-sans", &spec)).unwrap();
        let server = server_config(&pki.server()).unwrap();
        let err = assert_refused(server, client, "bad_identity").await;
        let detail = handshake_failure_detail(&err);
        assert!(detail.contains("has 2 URI SANs"), "{detail}");
    }

    #[tokio::test]
    async fn another_trust_domain_is_refused_unless_any_is_allowed() {
        let pki = Pki::new();
        let spec = LeafSpec::service("other.org", "web", 1).unwrap();
        let identity = pki.identity("other-domain", &spec);
        let server = server_config(&pki.server()).unwrap();
        let err = assert_refused(server, client_config(&identity).unwrap(), "bad_identity").await;
        let detail = handshake_failure_detail(&err);
        assert!(detail.contains("accepts only \"example.org\""), "{detail}");

        let any_domain = server_config(&ServerFiles::from_certs_dir(&pki.ca)).unwrap();
        let (server_result, _) = handshake(any_domain, client_config(&identity).unwrap()).await;
        assert_eq!(server_result.unwrap().trust_domain, "other.org");
    }

    #[tokio::test]
    async fn a_ca_as_leaf_is_refused() {
        let pki = Pki::new();
        let mut spec = web_spec();
        spec.is_ca = true;
        let client = client_config(&pki.identity("ca-leaf", &spec)).unwrap();
        let server = server_config(&pki.server()).unwrap();
        assert_refused(server, client, "bad_identity").await;
    }

    #[tokio::test]
    async fn the_router_certificate_is_not_a_client_identity() {
        let pki = Pki::new();
        let client = client_config(&IdentityDir::new(pki.ca.join("router"))).unwrap();
        let server = server_config(&pki.server()).unwrap();
        assert_refused(server, client, "bad_identity").await;
    }

    #[test]
    fn missing_and_wrong_files_say_what_to_fix() {
        let pki = Pki::new();
        let missing = IdentityDir::new(pki.ca.join("nobody"));
        let err = client_config(&missing).unwrap_err().to_string();
        assert!(err.starts_with("cannot read "), "{err}");
        assert!(err.contains("nobody/ca.pem"), "{err}");

        let mut files = pki.server();
        files.key = pki.ca.join("web").join("key.pem");
        let err = server_config(&files).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        let mut files = pki.server();
        files.key = pki.ca.join("router").join("cert.pem");
        let err = server_config(&files).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");

        let mut files = pki.server();
        files.crls.push(pki.ca.join("ca.pem"));
        let err = server_config(&files).unwrap_err();
        assert!(matches!(err, TlsError::NoCrl { .. }), "{err}");

        let mut files = pki.server();
        files.trust_domain = Some("Example.org".to_owned());
        assert!(matches!(server_config(&files).unwrap_err(), TlsError::BadIdentity(_)));
    }

    #[tokio::test]
    async fn an_expired_crl_refuses_everyone() {
        // A CRL past its next update must not be trusted to say "not revoked".
        let pki = Pki::new();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.ca.join("ca.key")).unwrap()).unwrap();
        let ca_pem = std::fs::read_to_string(pki.ca.join("ca.pem")).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).unwrap();
        let now = OffsetDateTime::now_utc();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::days(2),
            next_update: now - Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        let path = pki.ca.join("expired-crl.pem");
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        let mut files = pki.server();
        files.crls.push(path);
        let server = server_config(&files).unwrap();
        let client = client_config(&IdentityDir::new(pki.ca.join("web"))).unwrap();
        let (server_result, client_result) = handshake(server, client).await;
        let err = server_result.expect_err("accepted under an expired CRL");
        assert!(err.to_string().contains("revocation list"), "{err}");
        assert!(client_result.is_err());
    }
}
