//! The key-announcement verifier on arbitrary bytes with fixed anchors.
//!
//! Input byte 0 picks the mode: even, the rest is the announcement; odd,
//! the rest are byte edits to a valid announcement, which must then be
//! refused if anything changed.
#![no_main]

use exocom::e2e::verify_announcement;
use exocom_fuzz::{fixture, mutate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let _ = verify_announcement(rest, &f.anchors, f.now_ms);
        return;
    }
    let bytes = mutate(&f.announcement, rest);
    let verdict = verify_announcement(&bytes, &f.anchors, f.now_ms);
    if bytes != f.announcement {
        assert!(verdict.is_err(), "a changed announcement verified");
    }
});
