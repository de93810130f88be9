//! Durable queue storage for the router. Payloads stay opaque (sealed) bytes.
//! This module must never import `e2e`. (Stub.)
