//! `audit verify` against real logs: it passes on an intact log and names the
//! first bad file:line for every kind of tampering.
#![allow(clippy::unwrap_used)] // Tests may unwrap.

mod audit_support;

use std::path::{Path, PathBuf};

use audit_support::*;
use exocom::audit::chain;
use exocom::audit::checkpoint::{Signer, VerifyingKey};
use exocom::audit::verify::{self, Tampered, VerifyError, VerifyOptions};

struct Log {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    path: PathBuf,
    pubkey: PathBuf,
}

async fn log(n: u64) -> Log {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (key, pubkey) = keypair(&tmp.path().join("key"));
    let path = dir.join("audit.jsonl");
    write_log(config(&path, &key), n).await;
    Log { _dir: tmp, dir, path, pubkey }
}

fn tampered(log: &Log) -> Tampered {
    match verify_dir(&log.dir, &log.pubkey) {
        Err(VerifyError::Tampered(t)) => t,
        other => panic!("expected tampering to be found, got {other:?}"),
    }
}

/// Recomputes every hash from line `from` on, as an attacker without the key can.
fn rechain(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let mut v = json(&lines[i]);
        if i > 0 {
            v["prev"] = json(&lines[i - 1])["hash"].clone();
        }
        let obj = v.as_object_mut().unwrap();
        obj.remove("hash");
        let mut buf = serde_json::to_vec(&v).unwrap();
        chain::seal(&mut buf, 0);
        lines[i] = String::from_utf8(buf).unwrap().trim_end().to_owned();
    }
}

#[tokio::test]
async fn an_intact_log_verifies() {
    let log = log(50).await;
    let v = verify_dir(&log.dir, &log.pubkey).unwrap();
    assert!(v.closed);
    assert_eq!(v.lines as usize, lines(&log.path).len());
    assert!(v.checkpoints >= 5, "{v:?}");
    assert_eq!(v.unsealed, 0);
}

#[tokio::test]
async fn a_modified_line_is_found() {
    let log = log(30).await;
    let mut l = lines(&log.path);
    l[7] = l[7].replace("\"bytes\":10", "\"bytes\":90");
    assert!(l[7].contains("\"bytes\":90"));
    write_lines(&log.path, &l);
    let t = tampered(&log);
    assert_eq!(t.line, 8);
    assert!(t.reason.contains("modified"), "{t}");
}

#[tokio::test]
async fn a_modified_line_with_a_recomputed_chain_fails_at_the_next_checkpoint() {
    let log = log(30).await;
    let mut l = lines(&log.path);
    l[7] = l[7].replace("todo", "payments");
    rechain(&mut l, 7);
    write_lines(&log.path, &l);
    let t = tampered(&log);
    let line = &l[t.line as usize - 1];
    assert!(line.contains("audit_checkpoint"), "{t}");
    assert!(t.line > 8);
    assert!(t.reason.contains("signature does not verify"), "{t}");
}

#[tokio::test]
async fn a_deleted_line_is_found() {
    let log = log(30).await;
    let mut l = lines(&log.path);
    l.remove(12);
    write_lines(&log.path, &l);
    let t = tampered(&log);
    assert_eq!(t.line, 13);
    assert!(t.reason.contains("seq jumps"), "{t}");
}

#[tokio::test]
async fn reordered_lines_are_found() {
    let log = log(30).await;
    let mut l = lines(&log.path);
    l.swap(10, 11);
    write_lines(&log.path, &l);
    let t = tampered(&log);
    assert_eq!(t.line, 11);
    assert!(t.reason.contains("seq"), "{t}");
}

#[tokio::test]
async fn a_truncated_tail_is_found() {
    let log = log(30).await;
    let l = lines(&log.path);
    // Cut inside the unsealed part: the last lines are not covered by a checkpoint.
    let cut: Vec<String> = l[..l.len() - 3].to_vec();
    write_lines(&log.path, &cut);
    let t = tampered(&log);
    assert!(t.reason.contains("not sealed") || t.reason.contains("without log_stop"), "{t}");
    // Cut exactly after a checkpoint: no log_stop.
    let last_ckpt = l[..l.len() - 2].iter().rposition(|x| x.contains("audit_checkpoint")).unwrap();
    write_lines(&log.path, &l[..=last_ckpt]);
    let t = tampered(&log);
    assert!(t.reason.contains("without log_stop"), "{t}");
    assert_eq!(t.line as usize, last_ckpt + 1);
    // With --live the same log is accepted as still being written.
    let key = VerifyingKey::from_pem_file(&log.pubkey).unwrap();
    let v = verify::verify(
        std::slice::from_ref(&log.path),
        &VerifyOptions { key: Some(key), live: true },
        &mut |_| {},
    )
    .unwrap();
    assert!(!v.closed);
}

#[tokio::test]
async fn a_torn_last_line_is_found() {
    let log = log(5).await;
    let mut text = std::fs::read_to_string(&log.path).unwrap();
    text.truncate(text.len() - 20);
    std::fs::write(&log.path, text).unwrap();
    let t = tampered(&log);
    assert!(t.reason.contains("incomplete"), "{t}");
}

#[tokio::test]
async fn a_forged_checkpoint_is_found() {
    let log = log(30).await;
    let mut l = lines(&log.path);
    // Re-sign the checkpoint after a modified line with another key.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let forger = Signer::from_pkcs8(&other.serialize_der()).unwrap();
    l[4] = l[4].replace("todos.list", "todos.drop").replace("todos.create", "todos.drop");
    rechain(&mut l, 4);
    for i in 4..l.len() {
        let mut v = json(&l[i]);
        if v["event"] == "audit_checkpoint" {
            let seq = v["seq"].as_u64().unwrap();
            let prev = chain::from_hex(v["prev"].as_str().unwrap().as_bytes()).unwrap();
            v["sig"] = forger.sign(seq, &prev, seq - 1).into();
            v["key"] = forger.key_id().into();
            l[i] = serde_json::to_string(&v).unwrap();
            rechain(&mut l, i);
        }
    }
    write_lines(&log.path, &l);
    let t = tampered(&log);
    assert!(t.reason.contains("forged checkpoint"), "{t}");
    // Same forgery keeping the real key id: the signature itself fails.
    let mut l2 = lines(&log.path);
    let real_id = VerifyingKey::from_pem_file(&log.pubkey).unwrap().key_id().to_owned();
    for line in &mut l2 {
        *line = line.replace(forger.key_id(), &real_id);
    }
    rechain(&mut l2, 0);
    write_lines(&log.path, &l2);
    let t = tampered(&log);
    assert!(t.reason.contains("signature does not verify"), "{t}");
}

#[tokio::test]
async fn without_a_key_the_result_is_cannot_verify() {
    let log = log(5).await;
    let files = exocom::audit::segment::discover(std::slice::from_ref(&log.dir)).unwrap();
    let r = verify::verify(&files, &VerifyOptions::default(), &mut |_| {});
    assert!(matches!(r, Err(VerifyError::Incomplete(_))), "{r:?}");
}

fn rotated_log_files(dir: &Path) -> Vec<PathBuf> {
    exocom::audit::segment::discover(&[dir.to_owned()]).unwrap()
}

#[tokio::test]
async fn a_removed_file_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pubkey) = keypair(&tmp.path().join("key"));
    let dir = tmp.path().join("log");
    let mut c = config(&dir.join("audit.jsonl"), &key);
    c.rotate_bytes = Some(4096);
    write_log(c, 200).await;
    let files = rotated_log_files(&dir);
    assert!(files.len() >= 4, "{files:?}");
    verify_files(&files, &pubkey).unwrap();

    let mut without_middle = files.clone();
    without_middle.remove(1);
    match verify_files(&without_middle, &pubkey) {
        Err(VerifyError::Tampered(t)) => {
            assert_eq!(t.file, files[2]);
            assert_eq!(t.line, 1);
            assert!(t.reason.contains("files or lines missing"), "{t}");
        }
        other => panic!("{other:?}"),
    }
    match verify_files(&files[1..], &pubkey) {
        Err(VerifyError::Tampered(t)) => assert!(t.reason.contains("earlier lines or files missing"), "{t}"),
        other => panic!("{other:?}"),
    }
    match verify_files(&files[..files.len() - 1], &pubkey) {
        Err(VerifyError::Tampered(t)) => assert!(t.reason.contains("without log_stop"), "{t}"),
        other => panic!("{other:?}"),
    }
}
