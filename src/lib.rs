//! exocom: an encrypted enterprise message bus.
//!
//! Services talk only through the **router**, which authenticates each one by
//! its TLS client certificate, checks every send and delivery against a
//! policy file, forwards payloads it cannot decrypt, and writes an audit log
//! of routing metadata. Services use the **relay** ([`relay`]) to send
//! commands, get (streaming) replies, publish events and handle messages.
//!
//! # Layout
//!
//! | module | what it is | built with feature |
//! |---|---|---|
//! | [`wire`] | frames, their encoding, the routing header | always |
//! | [`tls`] | rustls configs, SPIFFE identity from certificates | always |
//! | [`certs`] | a development CA and service certificates (rcgen) | always |
//! | [`policy`] | the policy file: parse, match, explain | always |
//! | [`e2e`] | end-to-end sealing; never used by the router side | `relay` |
//! | [`relay`] | the SDK services link against | `relay` |
//! | [`router`] | accept loop, routing, queues, reply tracking | `router` |
//! | [`store`] | durable queue storage | `router` |
//! | [`audit`] | the tamper-evident audit log | `router` |
//! | [`admin`] | the admin API: tokens, introspection, metrics, alerts | `router` |
//! | [`shutdown`] | the signal every task listens to | always |
//!
//! The one rule of the layout: `router`, `policy`, `audit` and `store` never
//! import `e2e` (checked by `tests/layering.rs`). The router cannot decrypt
//! because it has neither the code path nor the keys.
//!
//! ```text
//!  relay ──TLS──▶ router: read frame ─ parse header ─ policy ─ audit ─ store ─ queue ──TLS──▶ relay
//!                                                                  (payload: opaque bytes)
//! ```

// Library code reports through tracing and return values, never by printing;
// it never unwraps what a peer or a file controls.
#![warn(clippy::print_stdout, clippy::unwrap_used)]

pub mod certs;
#[cfg(any(feature = "relay", feature = "router"))]
pub(crate) mod idhash;
#[cfg(any(feature = "relay", feature = "router"))]
pub(crate) mod last;
pub mod policy;
pub mod shutdown;
pub mod tls;
pub mod wire;

#[cfg(feature = "relay")]
pub mod e2e;
#[cfg(feature = "relay")]
pub mod relay;

#[cfg(feature = "router")]
pub mod admin;
#[cfg(feature = "router")]
pub mod audit;
#[cfg(feature = "router")]
pub mod router;
#[cfg(feature = "router")]
pub mod store;

#[cfg(feature = "cli")]
pub mod cli;
