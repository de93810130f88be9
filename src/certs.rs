//! Development certificates: a CA, the router's certificate, and one
//! certificate per service carrying its SPIFFE URI SAN (rcgen).
//!
//! For development and tests only; production certificates come from the
//! organisation's PKI. (Stub: filled in by the certificate work.)
