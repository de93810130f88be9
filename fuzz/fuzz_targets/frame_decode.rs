//! The frame decoder on arbitrary bytes: every frame that decodes must
//! re-encode to a frame that decodes to the same value, and the routing
//! header parser must return an error, never panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use exocom::wire::frame::{self, DEFAULT_MAX_FRAME};
use exocom::wire::messages::Body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A stream of frames, as a reader would see it (small max so the
    // too-large path is reached too).
    for max in [DEFAULT_MAX_FRAME, 64] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(f)) = frame::decode(&mut buf, max) {
            let again = frame::to_bytes(&f);
            let mut again = BytesMut::from(&again[..]);
            let back = frame::decode(&mut again, usize::MAX).ok().flatten();
            assert_eq!(back.as_ref(), Some(&f), "re-encoded frame decodes differently");
            if let Some(Body::Send(send)) = &f.body {
                let _ = frame::decode_header(&send.header);
            }
            if let Some(Body::Deliver(d)) = &f.body {
                let _ = frame::decode_header(&d.header);
            }
        }
    }
    // The bytes as a bare routing header.
    if let Ok(h) = frame::decode_header(&Bytes::copy_from_slice(data)) {
        let again = frame::encode_header(&h);
        assert_eq!(frame::decode_header(&again).ok(), Some(h));
    }
});
