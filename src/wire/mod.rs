//! The wire protocol: frames, their encoding, and the routing header.
//!
//! A connection carries length-prefixed protobuf [`Frame`]s (schema in
//! `docs/exocom.proto`, described in docs/PROTOCOL.md). The router reads only
//! the [`RoutingHeader`]; payloads are opaque bytes it moves without copying.
//! This module must never depend on the router, the relay or `e2e`.

pub mod connection;
pub mod decode;
pub mod encode;
pub mod frame;
pub mod messages;
pub mod pool;

pub use connection::{ConnectionError, FrameReader, FrameWriter};
pub use frame::{DEFAULT_MAX_FRAME, FrameError};
pub use messages::*;
