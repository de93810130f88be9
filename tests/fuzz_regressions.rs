//! Every input under fuzz/corpus/ (the seeds) and fuzz/regressions/ (crash
//! reproducers, once fixed) for the frame decoder and the policy parser,
//! replayed through the same checks the fuzz targets make, so a regression
//! shows up in `cargo test` without cargo-fuzz.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use exocom::policy::Policy;
use exocom::wire::frame::{self, DEFAULT_MAX_FRAME};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// What fuzz/fuzz_targets/frame_decode.rs checks.
fn frame_decode(data: &[u8]) -> usize {
    let mut frames = 0;
    for max in [DEFAULT_MAX_FRAME, 64] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(f)) = frame::decode(&mut buf, max) {
            frames += 1;
            let mut again = BytesMut::from(&frame::to_bytes(&f)[..]);
            assert_eq!(frame::decode(&mut again, usize::MAX).unwrap(), Some(f));
        }
    }
    if let Ok(h) = frame::decode_header(&Bytes::copy_from_slice(data)) {
        assert_eq!(frame::decode_header(&frame::encode_header(&h)).unwrap(), h);
    }
    frames
}

#[test]
fn frame_decoder_corpus_and_reproducers() {
    let inputs = inputs("frame_decode");
    assert!(inputs.len() >= 7, "the protocol vectors are the seeds");
    let decoded: usize = inputs.iter().map(|(_, data)| frame_decode(data)).sum();
    // Every vector but the bare routing header is a whole frame.
    assert!(decoded >= 6, "only {decoded} frames decoded from the seeds");
}

#[test]
fn policy_parser_corpus_and_reproducers() {
    let inputs = inputs("policy_parse");
    assert!(!inputs.is_empty());
    for (name, data) in inputs {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        match Policy::parse(text, "fuzz.toml") {
            Ok(p) => {
                for s in p.services() {
                    let _ = p.check_send(&s.name, "todos.list", 1);
                }
            }
            Err(e) => {
                let _ = e.to_string();
                // The seeds that are policies (not test suites) must parse.
                assert!(name.ends_with(".tests.toml") || name.contains("regressions"), "{name}: {e}");
            }
        }
    }
}
