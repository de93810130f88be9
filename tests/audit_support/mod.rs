//! Helpers shared by the audit tests: a key pair, a writer on a tempdir, reading lines back.
#![allow(clippy::unwrap_used)] // Tests may unwrap.
#![allow(dead_code)] // Each test file uses a part of these helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exocom::audit::checkpoint::VerifyingKey;
use exocom::audit::verify::{self, Verified, VerifyError, VerifyOptions};
use exocom::audit::{AuditConfig, AuditHandle, Decision, Event, Record, segment};

/// Writes DIR/key.pem and DIR/pub.pem.
pub fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (private, public) = (dir.join("key.pem"), dir.join("pub.pem"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private, public)
}

/// A config with a signing key, fast checkpoints and no time rotation.
pub fn config(log: &Path, key: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(log);
    c.signing_key = Some(key.to_owned());
    c.checkpoint_every = 10;
    c.rotate_interval = None;
    c
}

pub fn send(i: u64) -> Record {
    Record::new(Event::Send)
        .id(uuid::Uuid::new_v4())
        .name(if i.is_multiple_of(2) { "todos.list" } else { "todos.create" })
        .version(1u32)
        .sender("web")
        .receiver("todo")
        .decision(Decision::Allow)
        .rule("policy.toml:3:1")
        .bytes(100 + i)
}

/// Starts a writer, records `n` sends, shuts it down cleanly.
pub async fn write_log(config: AuditConfig, n: u64) {
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (handle, task) = exocom::audit::start(config, shutdown).unwrap();
    record_all(&handle, n).await;
    trigger.trigger();
    task.await.unwrap();
}

/// Records `n` sends in groups of 7, waiting for each group to be written.
pub async fn record_all(handle: &AuditHandle, n: u64) {
    let mut tickets = Vec::new();
    for i in 0..n {
        tickets.push(handle.record(send(i)).unwrap());
        if tickets.len() == 7 {
            for t in tickets.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tickets {
        t.await.unwrap();
    }
}

pub fn verify_dir(dir: &Path, pubkey: &Path) -> Result<Verified, VerifyError> {
    let files = segment::discover(&[dir.to_owned()]).unwrap();
    verify_files(&files, pubkey)
}

pub fn verify_files(files: &[PathBuf], pubkey: &Path) -> Result<Verified, VerifyError> {
    let key = VerifyingKey::from_pem_file(pubkey).unwrap();
    verify::verify(files, &VerifyOptions { key: Some(key), live: false }, &mut |_| {})
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// Polls `cond` for up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
