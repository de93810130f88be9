//! TLS for the bus: every rustls builder in the crate lives here.
//!
//! TLS 1.3 only, ring provider only, client certificates required. A
//! service's identity is the single `spiffe://<trust-domain>/svc/<service>`
//! URI SAN of its certificate. Nothing else in the crate builds a rustls
//! config. (Stub: filled in by the TLS work.)

use std::path::PathBuf;
use std::sync::Arc;

/// Why a TLS configuration or a peer identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Anything else (stub).
    #[error("{0}")]
    Other(String),
}

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

/// Files the router serves TLS with.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    /// CA bundle that client certificates must chain to.
    pub ca: PathBuf,
    /// The router's certificate chain.
    pub cert: PathBuf,
    /// The router's private key.
    pub key: PathBuf,
    /// CRLs; a client certificate listed in one is refused.
    pub crls: Vec<PathBuf>,
}

/// A service's identity directory: `cert.pem`, `key.pem`, `ca.pem`.
#[derive(Clone, Debug)]
pub struct IdentityDir {
    /// The directory.
    pub dir: PathBuf,
}

/// The router's TLS configuration.
pub fn server_config(_files: &ServerFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Err(TlsError::Other("not implemented".into()))
}

/// A relay's TLS configuration.
pub fn client_config(_identity: &IdentityDir) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Err(TlsError::Other("not implemented".into()))
}

/// The identity of the peer of an established server-side connection.
pub fn peer_identity(_conn: &rustls::ServerConnection) -> Result<PeerIdentity, TlsError> {
    Err(TlsError::Other("not implemented".into()))
}

/// A short, stable reason for a failed server-side handshake (stub).
pub fn handshake_failure_reason(_err: &std::io::Error) -> &'static str {
    "other"
}
