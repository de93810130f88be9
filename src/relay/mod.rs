//! The relay: the SDK a service uses to talk to the router. (Stub.)
