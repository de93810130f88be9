//! The relay's error type: one [`Error`] with a machine-readable [`ErrorKind`].
//!
//! Callers (and tests) branch on [`Error::kind`], never on the message text.
//! This module only classifies; it never retries or logs. Classification of
//! transport failures walks the `source()` chain down to the rustls or I/O
//! error instead of parsing messages.

use std::fmt;

use crate::wire::ErrorCode;

/// A boxed error, for the causes the relay keeps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The identity directory or TLS configuration could not be loaded.
    Config,
    /// The router could not be reached (connection refused, no route, DNS).
    Unreachable,
    /// TLS refused a certificate: ours (unknown CA, revoked, expired,
    /// missing) or the router's.
    Certificate,
    /// The certificate is valid but its identity is not a service in the policy.
    UnknownIdentity,
    /// No answer within the allowed time.
    Timeout,
    /// The policy does not allow this send.
    Denied,
    /// A receiving service's queue is full; retry later.
    QueueFull,
    /// The router cannot write its audit log and refuses sends.
    AuditUnavailable,
    /// The router's store failed; the message was not accepted.
    StoreUnavailable,
    /// A reply to a command this instance was not given (or after its end).
    ReplyNotAllowed,
    /// The sender exceeded its rate limit.
    RateLimited,
    /// The message is larger than the router or the policy allows.
    TooLarge,
    /// The router is shutting down.
    ShuttingDown,
    /// A router limit was reached (connections of this identity, subscriptions).
    LimitExceeded,
    /// A peer broke the protocol (malformed frame, unexpected frame, bad header).
    Protocol,
    /// The router reported an internal failure.
    Router,
    /// The circuit breaker for this message name is open; the call failed fast.
    CircuitOpen,
    /// Too many requests are outstanding (`max_outstanding_requests`).
    TooManyRequests,
    /// Replies arrived faster than the caller read them; the request was dropped.
    SlowConsumer,
    /// The connection dropped; the outcome of the operation is unknown.
    ConnectionLost,
    /// The relay has been closed.
    Closed,
    /// A payload could not be serialized or deserialized as JSON.
    Serialization,
    /// The payload codec (sealing) refused a payload.
    Codec,
    /// A delivered message or reply failed its end-to-end checks (altered,
    /// replayed, forged, or sealed to someone else) and was rejected.
    Tampered,
    /// A reply stream stopped before its final reply (a frame was dropped
    /// on the way).
    Truncated,
    /// End-to-end sealing found no service that may receive the name under
    /// the trusted policy and has a verified receive key.
    NoReceivers,
    /// A message name is empty or malformed.
    InvalidName,
    /// An I/O error without a more specific classification.
    Io,
}

/// An error from the relay.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(kind: ErrorKind, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self { kind, message: message.into(), source: Some(source.into()) }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable explanation (for a `Denied`, the router's words,
    /// e.g. "web may not send payments.refund").
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Maps an `Error` frame's code and text.
    pub(crate) fn from_code(code: i32, message: &str) -> Self {
        let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified);
        let kind = match code {
            ErrorCode::Denied => ErrorKind::Denied,
            ErrorCode::QueueFull => ErrorKind::QueueFull,
            ErrorCode::AuditUnavailable => ErrorKind::AuditUnavailable,
            ErrorCode::StoreUnavailable => ErrorKind::StoreUnavailable,
            ErrorCode::ReplyNotAllowed => ErrorKind::ReplyNotAllowed,
            ErrorCode::RateLimited => ErrorKind::RateLimited,
            ErrorCode::MessageTooLarge | ErrorCode::FrameTooLarge => ErrorKind::TooLarge,
            ErrorCode::ShuttingDown => ErrorKind::ShuttingDown,
            ErrorCode::UnknownIdentity => ErrorKind::UnknownIdentity,
            ErrorCode::MalformedFrame
            | ErrorCode::UnsupportedProtocol
            | ErrorCode::InvalidHeader
            | ErrorCode::ProtocolViolation => ErrorKind::Protocol,
            ErrorCode::LimitExceeded => ErrorKind::LimitExceeded,
            ErrorCode::Internal | ErrorCode::Unspecified => ErrorKind::Router,
        };
        let message = if message.is_empty() { format!("router error {code:?}") } else { message.to_owned() };
        Self::new(kind, message)
    }

    /// Classifies a failure to connect, handshake or read: TLS alerts and
    /// certificate errors become [`ErrorKind::Certificate`], refused
    /// connections [`ErrorKind::Unreachable`], the rest by I/O kind.
    pub(crate) fn from_io(context: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        if let Some(reason) = certificate_reason(&err) {
            return Self::with_source(ErrorKind::Certificate, format!("{context}: {reason}"), err);
        }
        let kind = match err.kind() {
            Io::ConnectionRefused
            | Io::HostUnreachable
            | Io::NetworkUnreachable
            | Io::AddrNotAvailable
            | Io::NotFound => ErrorKind::Unreachable,
            Io::TimedOut => ErrorKind::Timeout,
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
                ErrorKind::ConnectionLost
            }
            _ => ErrorKind::Io,
        };
        Self::with_source(kind, format!("{context}: {err}"), err)
    }

    /// Classifies a failure to read or write frames.
    pub(crate) fn from_connection(context: &str, err: crate::wire::ConnectionError) -> Self {
        use crate::wire::ConnectionError as E;
        match err {
            E::Io(io) => Self::from_io(context, io),
            E::Truncated => Self::new(ErrorKind::ConnectionLost, format!("{context}: {err}")),
            E::Frame(_) => Self::with_source(ErrorKind::Protocol, format!("{context}: {err}"), err),
        }
    }

    /// Whether this failure says something about the health of the path to
    /// the receivers (and so counts against a circuit breaker).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Timeout
                | ErrorKind::QueueFull
                | ErrorKind::AuditUnavailable
                | ErrorKind::StoreUnavailable
                | ErrorKind::RateLimited
                | ErrorKind::ShuttingDown
                | ErrorKind::Unreachable
                | ErrorKind::ConnectionLost
                | ErrorKind::Router
        )
    }
}

/// The certificate-related reason inside an I/O error, if there is one.
fn certificate_reason(err: &std::io::Error) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::AlertReceived(alert) => match alert {
                    Alert::CertificateRequired => Some("the router requires a client certificate".into()),
                    Alert::UnknownCA => Some("the router does not trust our certificate's CA".into()),
                    Alert::CertificateRevoked => Some("the router says our certificate is revoked".into()),
                    Alert::CertificateExpired => Some("the router says our certificate has expired".into()),
                    Alert::BadCertificate
                    | Alert::UnsupportedCertificate
                    | Alert::CertificateUnknown
                    | Alert::AccessDenied
                    | Alert::HandshakeFailure => {
                        Some(format!("the router refused our certificate ({alert:?})"))
                    }
                    _ => None,
                },
                rustls::Error::InvalidCertificate(why) => {
                    Some(format!("the router's certificate is not valid: {why:?}"))
                }
                rustls::Error::NoCertificatesPresented => Some("the router presented no certificate".into()),
                _ => None,
            };
        }
        cause = e.source();
    }
    None
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::with_source(
            ErrorKind::Serialization,
            format!("payload is not valid JSON for this type: {err}"),
            err,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_io(err: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn tls_alerts_are_certificate_errors() {
        use rustls::AlertDescription as Alert;
        for alert in [
            Alert::CertificateRequired,
            Alert::UnknownCA,
            Alert::CertificateRevoked,
            Alert::BadCertificate,
            Alert::CertificateExpired,
        ] {
            let err = Error::from_io("reading Welcome", tls_io(rustls::Error::AlertReceived(alert)));
            assert_eq!(err.kind(), ErrorKind::Certificate, "{alert:?}");
        }
        let revoked = Error::from_io("x", tls_io(rustls::Error::AlertReceived(Alert::CertificateRevoked)));
        assert!(revoked.message().contains("revoked"), "{}", revoked.message());
        let server_bad = Error::from_io(
            "x",
            tls_io(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        );
        assert_eq!(server_bad.kind(), ErrorKind::Certificate);
    }

    #[test]
    fn transport_errors_are_classified_by_kind() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Error::from_io("connect", refused).kind(), ErrorKind::Unreachable);
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(Error::from_io("connect", timed_out).kind(), ErrorKind::Timeout);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(Error::from_io("read", eof).kind(), ErrorKind::ConnectionLost);
        let other_tls = tls_io(rustls::Error::DecryptError);
        assert_eq!(Error::from_io("read", other_tls).kind(), ErrorKind::Io);
    }

    #[test]
    fn error_frames_map_to_kinds_and_keep_the_routers_words() {
        let denied = Error::from_code(ErrorCode::Denied as i32, "web may not send payments.refund");
        assert_eq!(denied.kind(), ErrorKind::Denied);
        assert_eq!(denied.to_string(), "web may not send payments.refund");
        let cases = [
            (ErrorCode::QueueFull, ErrorKind::QueueFull),
            (ErrorCode::AuditUnavailable, ErrorKind::AuditUnavailable),
            (ErrorCode::ReplyNotAllowed, ErrorKind::ReplyNotAllowed),
            (ErrorCode::RateLimited, ErrorKind::RateLimited),
            (ErrorCode::MessageTooLarge, ErrorKind::TooLarge),
            (ErrorCode::ProtocolViolation, ErrorKind::Protocol),
            (ErrorCode::UnknownIdentity, ErrorKind::UnknownIdentity),
        ];
        for (code, kind) in cases {
            assert_eq!(Error::from_code(code as i32, "").kind(), kind, "{code:?}");
        }
        assert_eq!(Error::from_code(9999, "").kind(), ErrorKind::Router);
    }

    #[test]
    fn only_path_health_failures_count_against_the_breaker() {
        assert!(Error::new(ErrorKind::Timeout, "").is_transient());
        assert!(Error::new(ErrorKind::QueueFull, "").is_transient());
        assert!(!Error::new(ErrorKind::Denied, "").is_transient());
        assert!(!Error::new(ErrorKind::Serialization, "").is_transient());
    }
}
