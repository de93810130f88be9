//! The router. (Stub.)
