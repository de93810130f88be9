//! `exocom send` and `exocom listen`: the relay for people and scripts.
//!
//! Both connect with a service identity, print one JSON line per message
//! on stdout, and turn relay error kinds into the shared exit codes
//! (denied, unreachable, certificate, timeout) with one line on stderr.
//! They run on a current-thread runtime; nothing here routes or decides
//! policy, it only calls the relay.

// Printing JSON lines to stdout is what these commands are for.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::exit;
use crate::relay::{
    E2eOptions, Error, ErrorKind, Incoming, MessageOptions, Relay, RelayBuilder, Reply, Responder,
};
use crate::tls::IdentityDir;

/// Arguments of `exocom send`.
#[derive(Debug, clap::Args)]
// `--version` is the message's API version here, not the program's.
#[command(disable_version_flag = true)]
pub struct SendArgs {
    /// The router's address (host:port).
    #[arg(long, env = "EXOCOM_ROUTER", default_value = "127.0.0.1:7443")]
    pub router: String,
    /// The service identity directory (cert.pem, key.pem, ca.pem).
    #[arg(long, env = "EXOCOM_IDENTITY")]
    pub identity: PathBuf,
    /// The message name, e.g. todos.list.
    #[arg(long)]
    pub name: String,
    /// The payload as JSON (default: null).
    #[arg(long)]
    pub payload: Option<String>,
    /// The message's API version.
    #[arg(long, default_value_t = 1)]
    pub version: u32,
    /// Publish an event instead of sending a command.
    #[arg(long, conflicts_with = "request")]
    pub event: bool,
    /// Send a request and print each reply as one JSON line, until the end of the stream.
    #[arg(long)]
    pub request: bool,
    /// How long to wait for acceptance and for each reply (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The name the router's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// End-to-end sealing.
    #[command(flatten, next_help_heading = "End-to-end sealing")]
    pub sealing: SealingArgs,
}

/// End-to-end sealing options shared by `send` and `listen`.
#[derive(Debug, clap::Args)]
pub struct SealingArgs {
    /// The policy this relay trusts to decide who may read what. With it,
    /// and a receive.key in the identity directory, every message is sealed
    /// end to end and every delivery opened and checked.
    #[arg(long, env = "EXOCOM_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// A security-team public key (PEM) the policy must be signed with
    /// (FILE.sig); repeat for several.
    #[arg(long, value_name = "PEM", requires = "policy")]
    pub policy_key: Vec<PathBuf>,
    /// Send and receive plain payloads (development only: the router can read them).
    #[arg(long)]
    pub plain: bool,
}

impl SealingArgs {
    /// End-to-end options, unless plain was asked for or no policy or
    /// receive key is there.
    fn options(&self, identity: &IdentityDir) -> Option<E2eOptions> {
        let policy = self.policy.as_ref().filter(|_| !self.plain)?;
        if !identity.dir.join(crate::e2e::keys::SECRET_FILE).exists() {
            tracing::warn!(dir = %identity.dir.display(), "no receive.key in the identity directory; sending plain");
            return None;
        }
        Some(E2eOptions::new(identity, policy).signed_by(self.policy_key.iter().cloned()))
    }
}

fn with_sealing(builder: RelayBuilder, identity: &IdentityDir, sealing: &SealingArgs) -> RelayBuilder {
    match sealing.options(identity) {
        Some(opts) => builder.end_to_end(opts),
        None => builder,
    }
}

/// Arguments of `exocom listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// The router's address (host:port).
    #[arg(long, env = "EXOCOM_ROUTER", default_value = "127.0.0.1:7443")]
    pub router: String,
    /// The service identity directory (cert.pem, key.pem, ca.pem).
    #[arg(long, env = "EXOCOM_IDENTITY")]
    pub identity: PathBuf,
    /// Message names to receive (repeat the flag or separate with commas); every version.
    #[arg(long, required = true, num_args = 1.., value_delimiter = ',')]
    pub name: Vec<String>,
    /// Answer each message with a final reply of this name.
    #[arg(long)]
    pub reply: Option<String>,
    /// The reply's payload as JSON (default: null).
    #[arg(long, requires = "reply")]
    pub reply_payload: Option<String>,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long; with --count, fewer messages by then is a timeout (exit 6).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The name the router's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// End-to-end sealing.
    #[command(flatten, next_help_heading = "End-to-end sealing")]
    pub sealing: SealingArgs,
}

/// Runs `exocom send`.
pub fn run_send(args: SendArgs) -> anyhow::Result<i32> {
    let payload = match parse_payload("--payload", args.payload.as_deref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(async move {
        match send(&args, &payload).await {
            Ok(code) => code,
            Err(err) => fail(&err),
        }
    }))
}

/// Runs `exocom listen`.
pub fn run_listen(args: ListenArgs) -> anyhow::Result<i32> {
    let reply_payload = match parse_payload("--reply-payload", args.reply_payload.as_deref()) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(rt.block_on(async move {
        match listen(&args, reply_payload).await {
            Ok(code) => code,
            Err(err) => fail(&err),
        }
    }))
}

async fn send(args: &SendArgs, payload: &Value) -> Result<i32, Error> {
    let identity = IdentityDir::new(args.identity.clone());
    let builder = Relay::builder(args.router.clone(), identity.clone())
        .server_name(args.server_name.clone())
        .request_timeout(args.timeout)
        .connect_timeout(args.timeout);
    let relay = with_sealing(builder, &identity, &args.sealing).connect().await?;
    let opts = MessageOptions::new().version(args.version);
    let code = if args.request {
        let mut replies = relay.request_with(&args.name, payload, &opts).await?;
        if replies.receivers() == 0 {
            eprintln!("note: no service receives {}, so no reply will come", args.name);
        }
        let mut code = exit::OK;
        while let Some(reply) = replies.next().await {
            match reply {
                Ok(reply) => {
                    // A reader that went away (`| head`) ends the stream quietly.
                    if print_line(&reply_line(&reply)).is_err() {
                        break;
                    }
                }
                Err(err) => {
                    code = fail(&err);
                    break;
                }
            }
        }
        code
    } else {
        let sent = if args.event {
            relay.publish_with(&args.name, payload, &opts).await?
        } else {
            relay.send_with(&args.name, payload, &opts).await?
        };
        println!("{}", json!({ "id": sent.id.to_string(), "receivers": sent.receivers }));
        exit::OK
    };
    relay.close().await;
    Ok(code)
}

async fn listen(args: &ListenArgs, reply_payload: Value) -> Result<i32, Error> {
    // Each line goes with a confirmation: the handler acknowledges the
    // message only once its line is printed, so a reader that went away
    // (`exocom listen … | head -1`) loses no message: the rest are requeued.
    let (lines, mut received) = mpsc::channel::<(Value, oneshot::Sender<bool>)>(64);
    let taken = Arc::new(AtomicU64::new(0));
    let reply = args.reply.clone().map(|name| Arc::new((name, reply_payload)));
    let identity = IdentityDir::new(args.identity.clone());
    let mut builder = with_sealing(
        Relay::builder(args.router.clone(), identity.clone()).server_name(args.server_name.clone()),
        &identity,
        &args.sealing,
    );
    if let Some(timeout) = args.timeout {
        builder = builder.connect_timeout(timeout);
    }
    for name in &args.name {
        let lines = lines.clone();
        let taken = Arc::clone(&taken);
        let reply = reply.clone();
        let limit = args.count;
        builder = builder.handle(name.clone(), [], move |msg: Incoming, responder: Responder| {
            let lines = lines.clone();
            let taken = Arc::clone(&taken);
            let reply = reply.clone();
            async move {
                // Past the count, hand the message back for another receiver.
                if limit.is_some_and(|n| taken.fetch_add(1, Ordering::SeqCst) >= n) {
                    return Err(Error::new(ErrorKind::Closed, "listener has its count; requeued"));
                }
                if let Some(reply) = reply.as_deref() {
                    responder.reply(&reply.0, &reply.1).await?;
                }
                let (printed, confirm) = oneshot::channel();
                if lines.send((incoming_line(&msg), printed)).await.is_err() || confirm.await != Ok(true) {
                    return Err(Error::new(ErrorKind::Closed, "listener stopped before printing; requeued"));
                }
                Ok(())
            }
        });
    }
    drop(lines);
    let relay = builder.connect().await?;

    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let code = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break exit::OK;
        }
        let line = tokio::select! {
            line = received.recv() => line,
            () = sleep_until(deadline) => {
                if let Some(n) = args.count {
                    eprintln!("error: received {seen} of {n} messages within the timeout");
                    break exit::TIMEOUT;
                }
                break exit::OK;
            }
            _ = tokio::signal::ctrl_c() => break exit::OK,
        };
        match line {
            Some((line, printed)) => {
                let ok = print_line(&line).is_ok();
                let _ = printed.send(ok);
                if !ok {
                    break exit::OK;
                }
                seen += 1;
            }
            None => break exit::ERROR,
        }
    };
    // Handlers still waiting for their line to be printed fail now (their
    // messages are requeued), so closing does not wait for them.
    drop(received);
    relay.close().await;
    Ok(code)
}

/// Prints one JSON line and flushes; fails when stdout is gone (a closed pipe).
fn print_line(line: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The JSON line printed for a reply.
fn reply_line(reply: &Reply) -> Value {
    json!({
        "name": reply.name(),
        "id": reply.id().to_string(),
        "responseTo": reply.response_to().to_string(),
        "sender": reply.sender(),
        "payload": payload_value(reply.payload()),
    })
}

/// The JSON line printed for a received message.
fn incoming_line(msg: &Incoming) -> Value {
    json!({
        "name": msg.name(),
        "version": msg.version(),
        "id": msg.id().to_string(),
        "originId": msg.origin_id().map(|o| o.to_string()),
        "responseTo": Value::Null,
        "sender": msg.sender(),
        "timestamp": rfc3339(msg.timestamp()),
        "payload": payload_value(msg.payload()),
    })
}

/// The payload as JSON, or as a string when it is not JSON.
fn payload_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn rfc3339(at: SystemTime) -> Value {
    let formatted = time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339);
    formatted.map_or(Value::Null, Value::String)
}

/// Parses a JSON argument; a bad one is a usage error (printed here).
fn parse_payload(flag: &str, text: Option<&str>) -> Result<Value, i32> {
    match text {
        None => Ok(Value::Null),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            eprintln!("error: {flag} is not valid JSON: {e}");
            exit::USAGE
        }),
    }
}

/// Prints a relay error as one line and returns its exit code.
fn fail(err: &Error) -> i32 {
    eprintln!("error: {err}");
    exit_code(err.kind())
}

/// The exit code for a relay error kind.
fn exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Denied | ErrorKind::UnknownIdentity | ErrorKind::ReplyNotAllowed => exit::DENIED,
        ErrorKind::Unreachable | ErrorKind::ConnectionLost => exit::UNREACHABLE,
        ErrorKind::Certificate | ErrorKind::Config => exit::CERTIFICATE,
        ErrorKind::Timeout => exit::TIMEOUT,
        ErrorKind::InvalidName => exit::USAGE,
        ErrorKind::Tampered | ErrorKind::Truncated | ErrorKind::NoReceivers => exit::FAILED,
        _ => exit::ERROR,
    }
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 5s, 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn error_kinds_map_to_distinct_exit_codes() {
        assert_eq!(exit_code(ErrorKind::Denied), exit::DENIED);
        assert_eq!(exit_code(ErrorKind::Unreachable), exit::UNREACHABLE);
        assert_eq!(exit_code(ErrorKind::Certificate), exit::CERTIFICATE);
        assert_eq!(exit_code(ErrorKind::Timeout), exit::TIMEOUT);
        assert_eq!(exit_code(ErrorKind::QueueFull), exit::ERROR);
    }

    #[test]
    fn payloads_print_as_json_or_text() {
        assert_eq!(payload_value(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(payload_value(b"not json"), json!("not json"));
        assert_eq!(parse_payload("--payload", None), Ok(Value::Null));
        assert_eq!(parse_payload("--payload", Some("{bad")), Err(exit::USAGE));
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "exocom",
            "send",
            "--router",
            "127.0.0.1:1",
            "--identity",
            "certs/web",
            "--name",
            "todos.list",
            "--request",
            "--timeout",
            "2s",
            "--version",
            "3",
        ])
        .unwrap();
        let crate::cli::Command::Send(send) = cli.command else { panic!("not send") };
        assert!(send.request && !send.event);
        assert_eq!(send.timeout, Duration::from_secs(2));
        assert_eq!(send.version, 3, "--version is the message version");
        let cli = crate::cli::Cli::try_parse_from([
            "exocom",
            "listen",
            "--identity",
            "certs/todo",
            "--name",
            "a.b,c.d",
            "--name",
            "e.f",
            "--reply",
            "x.y",
            "--reply-payload",
            "[1]",
            "--count",
            "2",
        ])
        .unwrap();
        let crate::cli::Command::Listen(listen) = cli.command else { panic!("not listen") };
        assert_eq!(listen.name, ["a.b", "c.d", "e.f"]);
        assert_eq!(listen.count, Some(2));
        assert!(
            crate::cli::Cli::try_parse_from([
                "exocom",
                "listen",
                "--identity",
                "d",
                "--name",
                "a",
                "--reply-payload",
                "1"
            ])
            .is_err(),
            "--reply-payload needs --reply"
        );
    }
}
