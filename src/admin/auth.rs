//! Admin API authentication: short-lived EdDSA JWTs checked against a pinned
//! public key, and scopes checked against the route.
//!
//! Rules (docs/OPERATIONS.md, "Admin API"): algorithm EdDSA only (an HS*,
//! RS*, ES* or `none` token is refused before any key is used); required
//! `exp`, `iat`, `iss` (pinned), `aud = "exocom-admin"`, `sub`; `nbf` checked
//! when present; lifetime `exp − iat` at most [`MAX_LIFETIME_SECS`]; clock
//! leeway [`LEEWAY_SECS`]. The key comes from a file read at start; nothing
//! is ever fetched. The token itself is never logged or audited, only its
//! `sub` and `jti`.

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The audience every admin token must carry.
pub const AUDIENCE: &str = "exocom-admin";
/// Longest accepted token lifetime (`exp − iat`), seconds.
pub const MAX_LIFETIME_SECS: u64 = 15 * 60;
/// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest `sub`, `jti` or scope list accepted (they go into the audit log).
const MAX_CLAIM_LEN: usize = 256;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 4096;

/// The scopes and the routes they open.
pub mod scope {
    /// `/clients`: connected services and instances.
    pub const CLIENTS_READ: &str = "clients:read";
    /// `/routes`, `/queues`: effective routes and queue depths.
    pub const ROUTES_READ: &str = "routes:read";
    /// `/audit/status`: the audit writer's state.
    pub const AUDIT_READ: &str = "audit:read";
    /// `/policy`, `/policy/explain`: the policy in force and its decisions.
    pub const POLICY_EXPLAIN: &str = "policy:explain";
    /// `/metrics` (unless metrics are served without a token).
    pub const METRICS_READ: &str = "metrics:read";
    /// Every scope a token may name.
    pub const ALL: &[&str] = &[CLIENTS_READ, ROUTES_READ, AUDIT_READ, POLICY_EXPLAIN, METRICS_READ];
}

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read admin public key {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not an Ed25519 public key in PEM (SPKI).
    #[error("{path} is not an Ed25519 public key (PEM, -----BEGIN PUBLIC KEY-----): {reason}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What jsonwebtoken said.
        reason: String,
    },
}

/// Why a request was not authorized. [`AuthError::status`] says 401 or 403.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    /// The header or token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token's algorithm is not EdDSA (HS*, RS*, ES*, `none`, ...).
    #[error("token algorithm {0:?} is not accepted; only EdDSA is")]
    Algorithm(String),
    /// The signature does not verify with the pinned key.
    #[error("token signature does not verify with the router's admin key")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("token not valid yet (nbf or iat in the future)")]
    NotYetValid,
    /// `aud` is not `exocom-admin`.
    #[error("token audience is not \"{AUDIENCE}\"")]
    Audience,
    /// `iss` is not the pinned issuer.
    #[error("token issuer is not \"{0}\"")]
    Issuer(String),
    /// A required claim is absent or of the wrong type.
    #[error("token claim `{0}` is missing or invalid")]
    Claim(String),
    /// `exp − iat` exceeds the maximum.
    #[error("token lifetime {0} s exceeds the maximum of {MAX_LIFETIME_SECS} s")]
    Lifetime(u64),
    /// The token is valid but lacks the route's scope.
    #[error("token lacks scope {0}")]
    Scope(&'static str),
}

impl AuthError {
    /// 403 for a missing scope (authenticated but not allowed), else 401.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Scope(_) => 403,
            _ => 401,
        }
    }

    /// A stable word for the JSON body and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::Algorithm(_) => "bad_algorithm",
            AuthError::Signature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Audience => "bad_audience",
            AuthError::Issuer(_) => "bad_issuer",
            AuthError::Claim(_) => "bad_claim",
            AuthError::Lifetime(_) => "lifetime_too_long",
            AuthError::Scope(_) => "missing_scope",
        }
    }
}

/// Who called, from a verified token.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Principal {
    /// `sub`: who the token was issued to.
    pub sub: String,
    /// `jti`: the token's id, when it has one.
    pub jti: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
}

/// The claims an admin token carries.
#[derive(Debug, Deserialize)]
struct Claims {
    // Defaults here let jsonwebtoken's own required-claim check name what is missing.
    #[serde(default)]
    sub: String,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    jti: Option<String>,
    /// Space-separated, as in OAuth 2.0 (`"clients:read routes:read"`).
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: serde_json::Value,
}

/// Checks admin tokens against one pinned Ed25519 key and issuer.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    issuer: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens signed by the key in `pub_pem` (SPKI PEM, as
    /// `exocom certs init` writes `DIR/admin/pub.pem`) and issued by `issuer`.
    pub fn from_pem_file(pub_pem: &Path, issuer: &str) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(pub_pem).map_err(|source| KeyError::Read { path: pub_pem.into(), source })?;
        Self::from_pem(&pem, issuer)
            .map_err(|reason| KeyError::Invalid { path: pub_pem.into(), reason: reason.to_string() })
    }

    /// Like [`Verifier::from_pem_file`], from the PEM bytes.
    pub fn from_pem(pem: &[u8], issuer: &str) -> Result<Verifier, jsonwebtoken::errors::Error> {
        super::jwt_ring::install();
        let key = DecodingKey::from_ed_pem(pem)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[issuer]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        Ok(Verifier { key, validation, issuer: issuer.to_string() })
    }

    /// Verifies the `Authorization` header value and checks `needed` is
    /// among the token's scopes.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: &'static str,
    ) -> Result<Principal, AuthError> {
        let principal = self.verify(authorization)?;
        if principal.scopes.iter().any(|s| s == needed) {
            Ok(principal)
        } else {
            Err(AuthError::Scope(needed))
        }
    }

    /// Verifies the `Authorization` header value (`Bearer <jwt>`).
    pub fn verify(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Malformed("expected `Authorization: Bearer <token>`".into()))?
            .trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed(format!("longer than {MAX_TOKEN_LEN} bytes")));
        }
        check_alg(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| self.map_error(e.into_kind()))?;
        let c = data.claims;
        let now = jsonwebtoken::get_current_timestamp();
        let iat = c.iat.ok_or_else(|| AuthError::Claim("iat".into()))?;
        if iat > now + LEEWAY_SECS {
            return Err(AuthError::NotYetValid);
        }
        let lifetime = c.exp.saturating_sub(iat);
        if lifetime > MAX_LIFETIME_SECS {
            return Err(AuthError::Lifetime(lifetime));
        }
        if c.sub.is_empty() || c.sub.len() > MAX_CLAIM_LEN || c.sub.chars().any(char::is_control) {
            return Err(AuthError::Claim("sub".into()));
        }
        if c.jti.as_ref().is_some_and(|j| j.len() > MAX_CLAIM_LEN || j.chars().any(char::is_control)) {
            return Err(AuthError::Claim("jti".into()));
        }
        if c.scope.len() > MAX_CLAIM_LEN {
            return Err(AuthError::Claim("scope".into()));
        }
        Ok(Principal {
            sub: c.sub,
            jti: c.jti,
            scopes: c.scope.split_whitespace().map(str::to_string).collect(),
        })
    }

    fn map_error(&self, kind: ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidIssuer => AuthError::Issuer(self.issuer.clone()),
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => AuthError::Claim(c),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm("?".into()),
            // Claims that do not deserialize (missing `iat`, wrong types).
            ErrorKind::Json(e) => AuthError::Claim(e.to_string()),
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }
}

/// What a new token says.
#[derive(Clone, Debug)]
pub struct TokenRequest<'a> {
    /// `sub`: who it is for (`security-reviewer`).
    pub sub: &'a str,
    /// Scopes it grants.
    pub scopes: &'a [String],
    /// Lifetime; at most [`MAX_LIFETIME_SECS`].
    pub ttl: std::time::Duration,
    /// `iss`: must match the router's pinned issuer.
    pub iss: &'a str,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The lifetime is zero or longer than the router accepts.
    #[error("lifetime must be between 1 s and {MAX_LIFETIME_SECS} s (15m)")]
    Lifetime,
    /// A scope is not one the router knows.
    #[error("unknown scope {0:?}; known: {known}", known = scope::ALL.join(", "))]
    Scope(String),
    /// The subject is empty or too long.
    #[error("sub must be 1 to {MAX_CLAIM_LEN} characters")]
    Sub,
    /// The key is not an Ed25519 private key in PEM (PKCS#8).
    #[error("the signing key is not an Ed25519 private key (PEM, -----BEGIN PRIVATE KEY-----): {0}")]
    Key(String),
}

/// Signs an admin token with the Ed25519 private key in `key_pem` (PKCS#8
/// PEM, as `exocom certs init` writes `DIR/admin/key.pem`). For development
/// and for small deployments without an identity provider.
pub fn issue(key_pem: &[u8], req: &TokenRequest<'_>) -> Result<String, IssueError> {
    let ttl = req.ttl.as_secs();
    if ttl == 0 || ttl > MAX_LIFETIME_SECS {
        return Err(IssueError::Lifetime);
    }
    if req.sub.is_empty() || req.sub.len() > MAX_CLAIM_LEN || req.sub.chars().any(char::is_control) {
        return Err(IssueError::Sub);
    }
    if let Some(bad) = req.scopes.iter().find(|s| !scope::ALL.contains(&s.as_str())) {
        return Err(IssueError::Scope(bad.clone()));
    }
    super::jwt_ring::install();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(key_pem).map_err(|e| IssueError::Key(e.to_string()))?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": req.iss,
        "sub": req.sub,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": req.scopes.join(" "),
    });
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|e| IssueError::Key(e.to_string()))
}

/// Reads the header's `alg` before anything else, so `none`, HS* and every
/// other algorithm get one clear answer and never reach a key.
fn check_alg(token: &str) -> Result<(), AuthError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("a JWT has three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    let header: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("header is not JSON with `alg`".into()))?;
    match header.alg.as_str() {
        Some("EdDSA") => Ok(()),
        Some(other) => Err(AuthError::Algorithm(other.chars().take(16).collect())),
        None => Err(AuthError::Algorithm(header.alg.to_string().chars().take(16).collect())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    /// A fresh key pair: (PKCS#8 DER private key, SPKI PEM public key).
    pub(crate) fn keypair() -> (Vec<u8>, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        // SPKI for Ed25519: a fixed 12-byte prefix and the raw key.
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        spki.extend_from_slice(&public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
        (pkcs8.as_ref().to_vec(), format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"))
    }

    fn token(key: &[u8], claims: serde_json::Value) -> String {
        super::super::jwt_ring::install();
        encode(&Header::new(Algorithm::EdDSA), &claims, &EncodingKey::from_ed_der(key)).unwrap()
    }

    fn good(now: u64) -> serde_json::Value {
        serde_json::json!({
            "sub": "security-reviewer", "iss": "exocom", "aud": AUDIENCE,
            "iat": now, "exp": now + 600, "jti": "t-1", "scope": "clients:read audit:read"
        })
    }

    fn unsigned(header: &str, claims: &serde_json::Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", e.encode(header), e.encode(claims.to_string()))
    }

    #[test]
    fn accepts_a_good_token_and_checks_each_rule() {
        let (key, pem) = keypair();
        let v = Verifier::from_pem(pem.as_bytes(), "exocom").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let bearer = |t: String| format!("Bearer {t}");
        let p = v.authorize(Some(&bearer(token(&key, good(now)))), scope::CLIENTS_READ).unwrap();
        assert_eq!(p.sub, "security-reviewer");
        assert_eq!(p.jti.as_deref(), Some("t-1"));

        let check = |claims: serde_json::Value| v.verify(Some(&bearer(token(&key, claims)))).unwrap_err();
        let mut c = good(now);
        c["aud"] = "someone-else".into();
        assert_eq!(check(c), AuthError::Audience);
        let mut c = good(now);
        c["iss"] = "elsewhere".into();
        assert_eq!(check(c), AuthError::Issuer("exocom".into()));
        let mut c = good(now);
        c["iat"] = (now - 3600).into();
        c["exp"] = (now - 600).into();
        assert_eq!(check(c), AuthError::Expired);
        let mut c = good(now);
        c["exp"] = (now + 3600).into();
        assert_eq!(check(c), AuthError::Lifetime(3600));
        let mut c = good(now);
        c.as_object_mut().unwrap().remove("iat");
        assert_eq!(check(c), AuthError::Claim("iat".into()));
        let mut c = good(now);
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(check(c), AuthError::Claim("sub".into()));
        let mut c = good(now);
        c["nbf"] = (now + 300).into();
        assert_eq!(check(c), AuthError::NotYetValid);

        let (other, _) = keypair();
        assert_eq!(check_with(&v, token(&other, good(now))), AuthError::Signature);
        assert_eq!(
            v.authorize(Some(&bearer(token(&key, good(now)))), scope::ROUTES_READ).unwrap_err().status(),
            403
        );
    }

    fn check_with(v: &Verifier, t: String) -> AuthError {
        v.verify(Some(&format!("Bearer {t}"))).unwrap_err()
    }

    #[test]
    fn refuses_other_algorithms_and_garbage() {
        let (_, pem) = keypair();
        let v = Verifier::from_pem(pem.as_bytes(), "exocom").unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let none = unsigned(r#"{"alg":"none","typ":"JWT"}"#, &good(now));
        assert_eq!(check_with(&v, none), AuthError::Algorithm("none".into()));
        let hs =
            encode(&Header::new(Algorithm::HS256), &good(now), &EncodingKey::from_secret(pem.as_bytes()));
        // The HS256 token never reaches the provider (which would refuse to make it anyway).
        if let Ok(hs) = hs {
            assert_eq!(check_with(&v, hs), AuthError::Algorithm("HS256".into()));
        }
        let forged = unsigned(r#"{"alg":"HS256"}"#, &good(now)) + "c2ln";
        assert_eq!(check_with(&v, forged), AuthError::Algorithm("HS256".into()));
        assert_eq!(v.verify(None).unwrap_err(), AuthError::Missing);
        assert!(matches!(v.verify(Some("Basic abc")).unwrap_err(), AuthError::Malformed(_)));
        assert!(matches!(check_with(&v, "a.b".into()), AuthError::Malformed(_)));
        assert!(matches!(check_with(&v, "!!.b.c".into()), AuthError::Malformed(_)));
    }
}
