//! TLS for the bus: every rustls builder in the crate lives here.
//!
//! TLS 1.3 only, ring provider only, client certificates required, no
//! session resumption. A service's identity is the single
//! `spiffe://<trust-domain>/svc/<service>` URI SAN of its certificate, checked
//! inside the handshake, so a connection that completes always has one.
//!
//! Nothing else in the crate builds a rustls config, and nothing here may
//! relax these rules (no flag, no feature turns client authentication off).
//!
//! - [`server_config`]: the router's config (webpki + CRLs + SPIFFE check).
//! - [`admin_server_config`]: the admin API's config (server certificate
//!   only; its callers authenticate with tokens, on a port of its own).
//! - [`client_config`]: a relay's config from an identity directory.
//! - [`peer_identity`] / [`identity_of_cert`] / [`parse_spiffe_service`]:
//!   the service identity of a certificate.
//! - [`handshake_failure_reason`]: a stable word for why a handshake failed
//!   ([`handshake_failure_detail`]: the sentence for the log).

mod config;
mod failure;
mod identity;
mod revocation;
mod verifier;

use std::path::PathBuf;

pub use config::{admin_server_config, client_config, server_config};
pub use failure::{REASONS, handshake_failure_detail, handshake_failure_reason};
pub use identity::{
    IdentityError, MAX_SERVICE_NAME_LEN, MAX_TRUST_DOMAIN_LEN, PeerIdentity, identity_in_domain,
    identity_of_cert, parse_spiffe_service, validate_service_name, validate_trust_domain,
};
pub use revocation::{LeafFacts, leaf_facts, revoked_serials};

/// Why a TLS configuration or a peer identity was refused.
///
/// Each message names the file or the rule, so an operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{path} is not valid PEM: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{path} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----)")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A CRL file holds no `X509 CRL` block.
    #[error("{path} holds no PEM CRL (expected -----BEGIN X509 CRL-----)")]
    NoCrl {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate cannot be used as a trust anchor.
    #[error("{path} cannot be used as a CA: {source}")]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The private key does not fit the certificate (or is of an unsupported type).
    #[error("cannot use certificate {cert} with key {key}: {source}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The client verifier could not be built (e.g. a CRL it cannot parse).
    #[error("cannot build the client-certificate verifier from the CA and CRLs: {0}")]
    Verifier(String),
    /// A certificate carries no acceptable service identity.
    #[error(transparent)]
    BadIdentity(#[from] IdentityError),
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(rustls::Error),
}

/// Files the router serves TLS with.
#[derive(Clone, Debug, Default)]
pub struct ServerFiles {
    /// CA bundle that client certificates must chain to.
    pub ca: PathBuf,
    /// The router's certificate chain.
    pub cert: PathBuf,
    /// The router's private key.
    pub key: PathBuf,
    /// CRLs; a client certificate listed in one is refused.
    pub crls: Vec<PathBuf>,
    /// The only trust domain accepted in client identities; `None` accepts any
    /// (the CA is then the only boundary).
    pub trust_domain: Option<String>,
}

impl ServerFiles {
    /// The usual layout of `exocom certs init`: `DIR/ca.pem`,
    /// `DIR/router/cert.pem`, `DIR/router/key.pem`, no CRL, any trust domain.
    pub fn from_certs_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("router").join("cert.pem"),
            key: dir.join("router").join("key.pem"),
            crls: Vec::new(),
            trust_domain: None,
        }
    }
}

/// A service's identity directory: `cert.pem`, `key.pem`, `ca.pem`.
#[derive(Clone, Debug)]
pub struct IdentityDir {
    /// The directory.
    pub dir: PathBuf,
}

impl IdentityDir {
    /// An identity directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `DIR/cert.pem`: the service's certificate (chain).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// `DIR/key.pem`: the service's private key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// `DIR/ca.pem`: the CA the router's certificate must chain to.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

/// The identity of the peer of an established server-side connection.
///
/// With [`server_config`] a completed handshake already passed the same
/// checks; this reads the result.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Result<PeerIdentity, TlsError> {
    let leaf = conn.peer_certificates().and_then(|certs| certs.first()).ok_or(TlsError::NoPeerCertificate)?;
    Ok(identity_of_cert(leaf)?)
}
