//! The writer against real files: batching, rotation, restarts, the queue
//! limit, idle checkpoints, what text can reach the log, and failing closed
//! (or open) on a real full filesystem and recovering by itself.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // Tests may unwrap and print notes.

mod audit_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use audit_support::*;
use exocom::audit::{AuditError, Decision, Event, Record};

#[tokio::test]
async fn many_records_take_few_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keypair(tmp.path());
    let mut c = config(&tmp.path().join("audit.jsonl"), &key);
    c.checkpoint_every = 1000;
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (handle, task) = exocom::audit::start(c, shutdown).unwrap();
    let before = handle.stats();
    let tickets: Vec<_> = (0..10_000).map(|i| handle.record(send(i)).unwrap()).collect();
    for t in tickets {
        t.await.unwrap();
    }
    let after = handle.stats();
    assert_eq!(after.records - before.records, 10_000);
    // The writer runs beside the producer and takes whatever queued while
    // it wrote the last batch: no syscall per record, however the two
    // threads happen to be scheduled.
    assert!(after.writes - before.writes <= 100, "{before:?} -> {after:?}");
    trigger.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn rotation_links_files_and_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pubkey) = keypair(&tmp.path().join("key"));
    let dir = tmp.path().join("log");
    let log = dir.join("audit.jsonl");
    let mut c = config(&log, &key);
    c.rotate_bytes = Some(8 * 1024);
    write_log(c.clone(), 120).await;
    write_log(c, 120).await;
    let files = exocom::audit::segment::discover(std::slice::from_ref(&dir)).unwrap();
    assert!(files.len() >= 6, "{files:?}");
    for (i, f) in files.iter().enumerate() {
        let first = json(&lines(f)[0]);
        if i == 0 {
            assert_eq!(first["event"], "log_start");
        } else {
            assert_eq!(first["event"], "segment_start", "{}", f.display());
            let before = lines(&files[i - 1]);
            assert_eq!(first["prev"], json(before.last().unwrap())["hash"]);
            assert_eq!(first["file"].as_str().unwrap(), files[i - 1].file_name().unwrap().to_str().unwrap());
        }
        if f != &log {
            let last = json(lines(f).last().unwrap());
            assert_eq!(last["event"], "audit_checkpoint", "a rotated file ends sealed");
        }
    }
    let v = verify_dir(&dir, &pubkey).unwrap();
    assert!(v.closed);
    let all: Vec<String> = files.iter().flat_map(|f| lines(f)).collect();
    assert_eq!(all.iter().filter(|l| l.contains("\"event\":\"log_start\"")).count(), 2);
    assert_eq!(all.iter().filter(|l| l.contains("\"event\":\"send\"")).count(), 240);
}

#[tokio::test]
async fn a_full_queue_fails_closed_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pubkey) = keypair(tmp.path());
    let log = tmp.path().join("log").join("audit.jsonl");
    let mut c = config(&log, &key);
    c.queue_limit = 10;
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (handle, task) = exocom::audit::start(c, shutdown).unwrap();
    // Records go in faster than the writer takes them (it swaps the whole
    // queue out at each wake-up, so ten in a row are not always ten queued):
    // the queue is over its limit within a few dozen.
    let mut tickets = Vec::new();
    let mut refused = false;
    for i in 0..100_000 {
        match handle.record(send(i)) {
            Ok(t) => tickets.push(t),
            Err(AuditError::Unavailable) => {
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(refused, "the queue never went over its limit of 10");
    for t in tickets {
        t.await.unwrap();
    }
    handle.record(send(100_001)).unwrap().await.unwrap();
    trigger.trigger();
    task.await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("1 records refused: audit queue over its limit"), "{text}");
    verify_dir(log.parent().unwrap(), &pubkey).unwrap();
}

#[tokio::test]
async fn checkpoints_are_written_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keypair(tmp.path());
    let log = tmp.path().join("audit.jsonl");
    let mut c = config(&log, &key);
    c.checkpoint_interval = Duration::from_millis(100);
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (_handle, task) = exocom::audit::start(c, shutdown).unwrap();
    // With nothing to write, heartbeats still come, every 100 ms. Wait for
    // log_start's checkpoint and three heartbeats, however slowly a loaded
    // machine schedules the writer, but not forever.
    let count = || lines(&log).iter().filter(|l| l.contains("audit_checkpoint")).count();
    let waited = std::time::Instant::now();
    while count() < 4 && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.trigger();
    task.await.unwrap();
    // log_start's checkpoint, at least three heartbeats, the final one.
    let n = count();
    assert!(n >= 5, "{n} checkpoints after {:?} idle", waited.elapsed());
}

#[tokio::test]
async fn a_marker_reaches_the_log_only_through_a_named_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keypair(tmp.path());
    let log = tmp.path().join("audit.jsonl");
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (handle, task) = exocom::audit::start(config(&log, &key), shutdown).unwrap();
    let marker = "MARKER-5b1e0c7d";
    let full = Record::new(Event::Deliver)
        .id(uuid::Uuid::new_v4())
        .name(marker)
        .version(2u32)
        .origin_id(uuid::Uuid::new_v4())
        .response_to(uuid::Uuid::new_v4())
        .sender("web")
        .sender_instance("i-1")
        .receiver("todo")
        .receiver_instance("i-2")
        .decision(Decision::Deny)
        .rule("policy.toml:9:1")
        .policy_serial(4u64)
        .policy_sha256(std::sync::Arc::<str>::from("ab12"))
        .bytes(5u64)
        .attempt(1u32)
        .conn(7u64)
        .remote("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap())
        .identity("spiffe://example.org/svc/web")
        .reason("because");
    handle.record(full).unwrap().await.unwrap();
    trigger.trigger();
    task.await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches(marker).count(), 1);
    let line = text.lines().find(|l| l.contains(marker)).unwrap();
    let v = json(line);
    assert_eq!(v["name"], marker);
    // The complete set of fields a record can produce: none can hold a payload or a key.
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let documented: BTreeSet<&str> = [
        "seq",
        "time",
        "event",
        "id",
        "name",
        "version",
        "origin_id",
        "response_to",
        "sender",
        "sender_instance",
        "receiver",
        "receiver_instance",
        "decision",
        "rule",
        "policy_serial",
        "policy_sha256",
        "bytes",
        "attempt",
        "conn",
        "remote",
        "identity",
        "reason",
        "prev",
        "hash",
    ]
    .into();
    assert_eq!(keys, documented);
}

/// A tiny tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("note: cannot mount a tmpfs here (not root?); skipping the disk-full test");
            return None;
        }
        Some(Tmpfs { dir: dir.to_owned() })
    }

    /// Fills the filesystem; returns the filler's path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = [0u8; 1024];
        while f.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

async fn disk_full(fail_open: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (key, pubkey) = keypair(&tmp.path().join("key"));
    let Some(fs) = Tmpfs::mount(&tmp.path().join("mnt")) else {
        return;
    };
    let log = fs.dir.join("audit.jsonl");
    let mut c = config(&log, &key);
    c.fail_open = fail_open;
    let (trigger, shutdown) = exocom::shutdown::channel();
    let (handle, task) = exocom::audit::start(c, shutdown).unwrap();
    record_all(&handle, 3).await;
    let filler = fs.fill();

    // Write until the full disk bites: a batch fails, its tickets fail (closed) or pass (open).
    let mut failed = false;
    for round in 0..50 {
        let tickets: Vec<_> = (0..40).filter_map(|i| handle.record(send(round * 40 + i)).ok()).collect();
        let mut results = Vec::new();
        for t in tickets {
            results.push(t.await);
        }
        if fail_open {
            assert!(results.iter().all(Result::is_ok));
            if handle.stats().failed_batches > 0 {
                failed = true;
                break;
            }
        } else if results.iter().any(Result::is_err) || !handle.is_available() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the full filesystem never made a write fail");
    if fail_open {
        assert!(handle.is_available());
        assert!(handle.record(send(9999)).is_ok(), "fail-open keeps accepting");
    } else {
        assert!(!handle.is_available());
        assert!(matches!(handle.record(send(9999)), Err(AuditError::Unavailable)));
    }
    // The file never holds half a line, even after a partial write.
    let text = std::fs::read(&log).unwrap();
    assert_eq!(text.last(), Some(&b'\n'));

    std::fs::remove_file(filler).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || handle.stats().failed_batches > 0
            && handle.is_available()
            && handle.record(send(1)).is_ok_and(|_| true))
        .await,
        "the writer did not recover"
    );
    handle.record(send(7)).unwrap().await.unwrap();
    trigger.trigger();
    task.await.unwrap();

    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(&log, copy.join("audit.jsonl")).unwrap();
    let v = verify_dir(&copy, &pubkey).unwrap();
    assert!(v.gaps >= 1, "{v:?}");
    let gap = lines(&log).into_iter().find(|l| l.contains("audit_gap")).unwrap();
    let gap = json(&gap);
    assert!(gap["dropped"].as_u64().unwrap() >= 1, "{gap}");
    let mode = if fail_open { "fail-open" } else { "fail-closed" };
    assert!(gap["reason"].as_str().unwrap().starts_with(mode), "{gap}");
    assert!(gap["since"].is_string());
    if fail_open {
        assert!(lines(&log)[0].contains("\"fail_open\":true"));
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed_and_recovers_by_itself() {
    disk_full(false).await;
}

#[tokio::test]
async fn a_full_disk_with_fail_open_keeps_accepting_and_records_the_gap() {
    disk_full(true).await;
}

#[test]
fn a_writer_left_without_shutdown_closes_the_log_by_itself() {
    // A library user may drop the runtime and every handle without
    // triggering shutdown: the writer thread must not linger, and the log
    // must still end with log_stop and a final checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keypair(tmp.path());
    let log = tmp.path().join("audit.jsonl");
    let mut c = config(&log, &key);
    c.checkpoint_interval = Duration::from_millis(50);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (_trigger, shutdown) = exocom::shutdown::channel();
        let (handle, _task) = exocom::audit::start(c, shutdown).unwrap();
        handle.record(send(1)).unwrap().await.unwrap();
    });
    drop(rt);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("\"event\":\"log_stop\"") {
            let last = text.lines().last().unwrap();
            assert!(last.contains("\"event\":\"audit_checkpoint\""), "{last}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log_stop within 10 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
