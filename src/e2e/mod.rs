//! End-to-end encryption: sealing and opening payloads, keys, grants,
//! announcements. Used only by the relay; the router side never imports it.
//! (Stub: filled in by the end-to-end work.)
