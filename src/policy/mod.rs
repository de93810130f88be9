//! The policy file: who may send and receive which message names.
//!
//! TOML, default deny. Parsing reports errors with line and column; a parsed
//! [`Policy`] cannot represent an invalid state. This module must never
//! import `e2e`. (Stub: filled in by the policy work.)
