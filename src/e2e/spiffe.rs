//! Parsing of service identities: `spiffe://<trust-domain>/svc/<service>`.
//!
//! The rules follow the SPIFFE ID standard: scheme `spiffe`, a trust domain
//! of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that are neither
//! empty, `.` nor `..`, no port, user info, query or fragment, at most 2048
//! bytes. exocom adds that a service identity has exactly the two segments
//! `svc/<service>`; anything else (e.g. the router's `router/...`) is not a
//! service and never gets a grant or an announcement accepted.

/// A parsed service identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    /// The trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// The service name, e.g. `todos`.
    pub service: String,
}

/// Why a string is not a service identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a service SPIFFE id ({reason}): {id:?}")]
pub struct SpiffeError {
    /// The offending input (truncated to 100 bytes).
    pub id: String,
    /// What rule it broke.
    pub reason: &'static str,
}

const MAX_LEN: usize = 2048;

/// Parses `spiffe://<td>/svc/<service>`.
pub fn parse_service_id(id: &str) -> Result<ServiceId, SpiffeError> {
    let (td, service) = split_service_id(id)?;
    Ok(ServiceId { trust_domain: td.to_owned(), service: service.to_owned() })
}

/// Checks `spiffe://<td>/svc/<service>` and borrows its trust domain and
/// service (no allocation: the relay checks every delivery's sender with it).
pub fn split_service_id(id: &str) -> Result<(&str, &str), SpiffeError> {
    let fail = |reason| SpiffeError { id: id.chars().take(100).collect(), reason };
    if id.len() > MAX_LEN {
        return Err(fail("longer than 2048 bytes"));
    }
    let rest = id.strip_prefix("spiffe://").ok_or_else(|| fail("scheme is not spiffe://"))?;
    let (td, path) = rest.split_once('/').ok_or_else(|| fail("no path after the trust domain"))?;
    if td.is_empty() {
        return Err(fail("empty trust domain"));
    }
    if !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)) {
        return Err(fail("trust domain has characters outside [a-z0-9.-_]"));
    }
    let mut segments = [""; 2];
    let mut count = 0;
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(fail("empty, '.' or '..' path segment"));
        }
        if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(fail("path has characters outside [A-Za-z0-9.-_]"));
        }
        if let Some(slot) = segments.get_mut(count) {
            *slot = seg;
        }
        count += 1;
    }
    match (count, segments) {
        (2, ["svc", service]) => Ok((td, service)),
        _ => Err(fail("path is not /svc/<service>")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn accepts_service_ids() {
        let id = parse_service_id("spiffe://example.org/svc/todos").unwrap();
        assert_eq!(id.trust_domain, "example.org");
        assert_eq!(id.service, "todos");
        assert_eq!(split_service_id("spiffe://example.org/svc/todos").unwrap(), ("example.org", "todos"));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "http://example.org/svc/todos",
            "SPIFFE://example.org/svc/todos",
            "spiffe://example.org",
            "spiffe:///svc/todos",
            "spiffe://Example.org/svc/todos",
            "spiffe://example.org:443/svc/todos",
            "spiffe://user@example.org/svc/todos",
            "spiffe://example.org/svc/todos?x=1",
            "spiffe://example.org/svc/todos#f",
            "spiffe://example.org/svc/",
            "spiffe://example.org/svc//todos",
            "spiffe://example.org/svc/../todos",
            "spiffe://example.org/router/main",
            "spiffe://example.org/svc/todos/extra",
        ] {
            assert!(parse_service_id(bad).is_err(), "{bad} was accepted");
            assert!(split_service_id(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("spiffe://example.org/svc/{}", "a".repeat(2100));
        assert!(parse_service_id(&long).is_err());
    }
}
