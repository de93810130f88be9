//! The sealed-payload opener on hostile deliveries, with a fixed PKI and
//! receive key.
//!
//! Input byte 0 picks the mode:
//! - even: the rest is a protobuf `Deliver` (arbitrary fields, grant bytes
//!   included), opened by a fresh opener (grant parsing) and by one that
//!   knows the valid epoch;
//! - odd: byte 1 picks a field of the valid delivery (header, payload, tag,
//!   grant, sender id) and the rest are byte edits to it; a changed
//!   delivery must be refused.
#![no_main]

use exocom::wire::Deliver;
use exocom_fuzz::{fixture, mutate};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(d) = Deliver::decode(rest) else { return };
        let _ = f.cold_opener().open(&d, f.now_ms);
        let _ = f.warm.lock().unwrap().open(&d, f.now_ms);
        return;
    }
    let Some((&field, edits)) = rest.split_first() else { return };
    let mut d = f.deliver.clone();
    match field % 5 {
        0 => d.header = mutate(&d.header, edits),
        1 => d.payload = mutate(&d.payload, edits),
        2 => d.auth_tag = mutate(&d.auth_tag, edits),
        3 => d.grant = mutate(&d.grant, edits),
        _ => d.sender_id = String::from_utf8_lossy(&mutate(d.sender_id.as_bytes(), edits)).into_owned(),
    }
    let changed = d != f.deliver;
    let cold = f.cold_opener().open(&d, f.now_ms);
    let warm = f.warm.lock().unwrap().open(&d, f.now_ms);
    if changed && field % 5 != 3 {
        // Only the grant may change without effect on a warm opener (it
        // already knows the epoch); everything else must be refused.
        assert!(warm.is_err(), "a changed delivery opened (field {})", field % 5);
        assert!(cold.is_err(), "a changed delivery opened cold (field {})", field % 5);
    }
    if changed && field % 5 == 3 {
        assert!(warm.is_ok(), "the warm opener needs no grant");
        assert!(cold.is_err(), "a changed grant opened");
    }
});
