//! The router side must be unable to decrypt: `router`, `policy`, `audit`
//! and `store` never reach the end-to-end module or the AEAD/X25519 crates.
//! This reads the source, so a new `use` anywhere under those directories
//! (or a fully qualified path) fails the test.

use std::path::Path;

const ROUTER_SIDE: &[&str] = &["src/router", "src/policy", "src/audit", "src/store"];
const FORBIDDEN: &[&str] =
    &["crate::e2e", "super::e2e", "exocom::e2e", "chacha20poly1305", "x25519_dalek", "mod e2e"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn router_side_never_imports_e2e() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ROUTER_SIDE {
        let d = root.join(dir);
        assert!(d.is_dir(), "{dir} is missing; update this test if the layout changed");
        rust_files(&d, &mut files);
    }
    assert!(files.len() >= 4, "expected router-side sources, found {files:?}");
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in FORBIDDEN {
                if code.contains(f) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "the router side reaches end-to-end crypto:\n{}", hits.join("\n"));
}

#[test]
fn the_check_itself_catches_an_import() {
    let sample = "use crate::e2e::open;";
    assert!(FORBIDDEN.iter().any(|f| sample.contains(f)));
}
