//! `exocom audit …` as an operator runs it: exit codes and output of verify,
//! query and report on a log written by the real writer (`audit bench`).
#![allow(clippy::unwrap_used)] // Tests may unwrap.

use std::path::Path;
use std::process::{Command, Output};

fn exocom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exocom")).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn make_log(dir: &Path) {
    let out = exocom(&["audit", "bench", "--lines", "400", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("lines/s"));
}

#[test]
fn verify_exit_codes_tell_verified_tampered_and_unverifiable_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    make_log(&dir);
    let log = dir.join("audit.jsonl");
    let pubkey = dir.join("key").join("pub.pem");
    let (d, k) = (dir.to_str().unwrap(), pubkey.to_str().unwrap());

    let out = exocom(&["audit", "verify", d, "--pubkey", k]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with("verified: "));

    let out = exocom(&["audit", "verify", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no --pubkey"));

    let out = exocom(&["audit", "verify", d, "--pubkey", "/nonexistent/pub.pem"]);
    assert_eq!(out.status.code(), Some(2));

    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, original.replacen("\"bytes\":2", "\"bytes\":9", 1)).unwrap();
    let out = exocom(&["audit", "verify", d, "--pubkey", k]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("FAILED {}:", log.display())), "{stdout}");
    assert!(stdout.contains("modified"), "{stdout}");
}

#[test]
fn query_filters_and_prints_table_or_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    make_log(&dir);
    let d = dir.to_str().unwrap();
    let out = exocom(&["audit", "query", d, "--name", "todos.*", "--event", "send", "--json"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let log = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    let expected =
        log.lines().filter(|l| l.contains("\"event\":\"send\"") && l.contains("\"name\":\"todos.")).count();
    assert!(expected > 0);
    assert_eq!(lines.len(), expected);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "send");
        assert!(v["name"].as_str().unwrap().starts_with("todos."));
        assert!(v["hash"].is_string(), "lines are printed as they are in the log");
    }
    let out = exocom(&["audit", "query", d, "--event", "log_stop"]);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.starts_with("TIME"));
    let out = exocom(&["audit", "query", d, "--since", "not a time"]);
    assert_eq!(out.status.code(), Some(64));
    let out = exocom(&["audit", "query", d, "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(text(&out.stdout).lines().count(), 1, "only the header");
}

#[test]
fn report_is_self_contained_and_has_the_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    make_log(&dir);
    let html = tmp.path().join("report.html");
    let pubkey = dir.join("key").join("pub.pem");
    let out = exocom(&[
        "audit",
        "report",
        dir.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"talk-graph\""));
    assert!(page.contains("<strong>Verified</strong>"));
    for external in ["src=\"http", "href=\"http", "<script", "@import", "url(http"] {
        assert!(!page.contains(external), "page loads {external}");
    }
}
