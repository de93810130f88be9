//! The `exocom send` and `exocom listen` commands against a real router.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn exocom() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exocom"));
    c.kill_on_drop(true).env("EXOCOM_LOG", "warn");
    c
}

#[tokio::test]
async fn listen_replies_and_send_prints_the_reply() {
    let bus = TestBus::start().await;
    let router = bus.addr.to_string();
    let mut listen = exocom()
        .args(["listen", "--router", &router, "--identity"])
        .arg(bus.certs().join("todo"))
        .args(["--name", "todos.list", "--reply", "todos.listing", "--reply-payload", r#"["milk"]"#])
        .args(["--count", "1", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the listener is subscribed: a send before that would simply queue,
    // which is fine too, but the request must not time out first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = exocom()
        .args(["send", "--router", &router, "--identity"])
        .arg(bus.certs().join("web"))
        .args(["--name", "todos.list", "--payload", r#"{"all":true}"#, "--request", "--timeout", "10s"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "send failed: {}", String::from_utf8_lossy(&out.stderr));
    let reply: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(reply["name"], "todos.listing");
    assert_eq!(reply["sender"], "todo");
    assert_eq!(reply["payload"], serde_json::json!(["milk"]));
    assert!(reply["responseTo"].is_string());

    let stdout = listen.stdout.take().unwrap();
    let line = BufReader::new(stdout).lines().next_line().await.unwrap().unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["name"], "todos.list");
    assert_eq!(got["sender"], "web");
    assert_eq!(got["payload"], serde_json::json!({"all": true}));
    let status = tokio::time::timeout(Duration::from_secs(10), listen.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn send_exit_codes_tell_failures_apart() {
    let bus = TestBus::start().await;
    let router = bus.addr.to_string();
    let web = bus.certs().join("web");
    let run = |args: Vec<String>| {
        let mut c = exocom();
        c.args(args);
        c
    };
    let base = |router: &str, name: &str| {
        vec![
            "send".into(),
            "--router".into(),
            router.into(),
            "--identity".into(),
            web.display().to_string(),
            "--name".into(),
            name.into(),
        ]
    };
    let denied = run(base(&router, "payments.refund")).output().await.unwrap();
    assert_eq!(denied.status.code(), Some(3), "{}", String::from_utf8_lossy(&denied.stderr));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("web may not send payments.refund"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let unreachable = run(base(&closed, "todos.list")).output().await.unwrap();
    assert_eq!(unreachable.status.code(), Some(4), "{}", String::from_utf8_lossy(&unreachable.stderr));

    let mut timeout = base(&router, "todos.list");
    timeout.extend(["--request".into(), "--timeout".into(), "1s".into()]);
    let t = run(timeout).output().await.unwrap();
    assert_eq!(t.status.code(), Some(6), "{}", String::from_utf8_lossy(&t.stderr));

    let mut foreign = base(&router, "todos.list");
    foreign[4] = bus.certs().join("nowhere").display().to_string();
    let c = run(foreign).output().await.unwrap();
    assert_eq!(c.status.code(), Some(5), "{}", String::from_utf8_lossy(&c.stderr));
}

/// `exocom listen … | head -1`: once the reader is gone the listener stops
/// quietly (exit 0, no panic) and the messages it could not print are not
/// lost: they are requeued for the next listener.
#[tokio::test]
async fn a_listener_whose_reader_went_away_stops_and_loses_nothing() {
    let bus = TestBus::start().await;
    let router = bus.addr.to_string();
    let listen_args = |count: Option<&str>| {
        let mut c = exocom();
        c.args(["listen", "--router", &router, "--identity"])
            .arg(bus.certs().join("todo"))
            .args(["--name", "todos.create", "--timeout", "20s"])
            .stdout(Stdio::piped());
        if let Some(n) = count {
            c.args(["--count", n]);
        }
        c
    };
    let send = |n: u32| {
        let mut c = exocom();
        c.args(["send", "--router", &router, "--identity"]).arg(bus.certs().join("web")).args([
            "--name",
            "todos.create",
            "--payload",
            &format!(r#"{{"n":{n}}}"#),
        ]);
        c
    };
    let mut first = listen_args(None).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(send(1).output().await.unwrap().status.success());
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap()["payload"]["n"], 1);
    drop(lines); // the reader goes away, as `head -1` does

    for n in [2, 3] {
        assert!(send(n).output().await.unwrap().status.success());
    }
    let status = tokio::time::timeout(Duration::from_secs(15), first.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "the listener must stop quietly, not panic");

    let second = listen_args(Some("2")).spawn().unwrap();
    let out =
        tokio::time::timeout(Duration::from_secs(15), second.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut got: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["n"].as_i64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [2, 3]);
}
