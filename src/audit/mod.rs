//! The audit log: routing metadata only, never payloads or key material.
//! This module must never import `e2e`. (Stub: filled in by the audit work.)
