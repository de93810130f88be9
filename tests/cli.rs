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
