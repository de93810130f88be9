//! The `exocom` binary: the router, certificate, policy and audit tools, send/listen.
fn main(){}
