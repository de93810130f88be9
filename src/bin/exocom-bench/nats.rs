//! The same workloads against nats-server: TLS with client certificates
//! mapped to users (`verify_and_map`, the SPIFFE URI SAN is the user name),
//! per-user publish/subscribe permissions as tight as our policy, driven by
//! async-nats. W1/W4 use NATS request/reply, W6 a queue group.
//!
//! NATS core publishing is fire-and-forget: a publisher learns nothing about
//! acceptance. Every rate is measured at the receivers, as for our router.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::measure::{Counter, Outcome, Plan, raw_payload, sequential_latency, spread};
use crate::setup::{cert_dir, free_port, spiffe};

/// Per-user permissions: (service, may publish, may subscribe, may answer requests).
const USERS: &[(&str, &[&str], &[&str], bool)] = &[
    ("load", &["bench.echo", "bench.one", "bench.fan", "bench.big", "bench.work"], &["_INBOX.>"], false),
    ("echo", &["bench.never"], &["bench.echo"], true),
    ("sink1", &["bench.never"], &["bench.one", "bench.fan", "bench.big"], false),
    ("sink2", &["bench.never"], &["bench.fan"], false),
    ("sink3", &["bench.never"], &["bench.fan"], false),
    ("sink4", &["bench.never"], &["bench.fan"], false),
    ("worker", &["bench.never"], &["bench.work"], false),
];

/// A running nats-server.
pub struct Nats {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The server configuration for `port`, certificates under `dir`.
pub fn config(dir: &Path, port: u16) -> String {
    let router = cert_dir(dir, "router");
    let mut users = String::new();
    for (svc, publish, subscribe, responses) in USERS {
        let _ = writeln!(
            users,
            "    {{ user: \"{}\", permissions: {{ publish: {}, subscribe: {}, allow_responses: {} }} }}",
            spiffe(svc),
            list(publish),
            list(subscribe),
            responses
        );
    }
    format!(
        r#"listen: "127.0.0.1:{port}"
max_payload: 1048576
max_pending: 268435456
write_deadline: "30s"
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify_and_map: true
  timeout: 5
}}
authorization {{
  users = [
{users}  ]
}}
"#,
        cert = router.join("cert.pem").display(),
        key = router.join("key.pem").display(),
        ca = router.join("ca.pem").display(),
    )
}

impl Nats {
    /// Writes the configuration and starts `nats-server`; waits (bounded) until it listens.
    pub async fn start(exe: &Path, dir: &Path) -> Result<Nats> {
        let port = free_port()?;
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config(dir, port))?;
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let nats = Nats { addr, dir: dir.to_path_buf(), child };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nats);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not listen on {addr} within 10 s (run it by hand with -c {})", conf.display())
    }

    /// The process id (for a profiler).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn client(&self, service: &str) -> Result<Client> {
        let certs = cert_dir(&self.dir, service);
        let client = ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(certs.join("ca.pem"))
            .add_client_certificate(certs.join("cert.pem"), certs.join("key.pem"))
            // NATS core has no flow control: a subscriber whose buffer is
            // full loses messages (async-nats drops them as a slow
            // consumer). W3's four subscribers fell behind a publisher with
            // 65,536 and lost 2-3 % of the deliveries; a buffer that holds a
            // whole workload lets every run finish and be compared.
            .subscription_capacity(1 << 20)
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(format!("tls://{}", self.addr))
            .await
            .with_context(|| format!("connecting to nats-server as {service}"))?;
        Ok(client)
    }

    async fn sink(&self, service: &str, subject: &str, queue: bool, counter: &Counter) -> Result<Client> {
        let client = self.client(service).await?;
        let mut sub = if queue {
            client.queue_subscribe(subject.to_string(), "workers".to_string()).await?
        } else {
            client.subscribe(subject.to_string()).await?
        };
        let c = counter.clone();
        tokio::spawn(async move {
            while sub.next().await.is_some() {
                c.add(1);
            }
        });
        client.flush().await?;
        Ok(client)
    }

    async fn echo(&self) -> Result<Client> {
        let client = self.client("echo").await?;
        let mut sub = client.subscribe("bench.echo").await?;
        let answer = client.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = answer.publish(reply, m.payload).await;
                }
            }
        });
        client.flush().await?;
        Ok(client)
    }

    /// W1: sequential request/reply.
    pub async fn w1(&self, plan: &Plan) -> Result<Outcome> {
        let _echo = self.echo().await?;
        let load = self.client("load").await?;
        let payload = raw_payload(256);
        sequential_latency!(plan, load.request("bench.echo", payload.clone())).await
    }

    /// W2/W5: one publisher, one subscriber.
    pub async fn one_way(
        &self,
        plan: &Plan,
        subject: &str,
        len: usize,
        full: u64,
    ) -> Result<(u64, u64, Duration, String)> {
        let got = Counter::default();
        let _sink = self.sink("sink1", subject, false, &got).await?;
        let load = self.client("load").await?;
        let n = plan.n(full);
        let deadline = plan.deadline();
        let start = Instant::now();
        publish(&load, subject, raw_payload(len), n, deadline).await?;
        let done = Counter::wait_all(std::slice::from_ref(&got), n, deadline).await;
        Ok((done, n, start.elapsed(), String::new()))
    }

    /// W3: one publisher, four subscribing users.
    pub async fn w3(&self, plan: &Plan) -> Result<Outcome> {
        let counters: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let mut sinks = Vec::new();
        for (i, c) in counters.iter().enumerate() {
            sinks.push(self.sink(&format!("sink{}", i + 1), "bench.fan", false, c).await?);
        }
        let load = self.client("load").await?;
        let n = plan.n(250_000);
        let deadline = plan.deadline();
        let start = Instant::now();
        publish(&load, "bench.fan", raw_payload(256), n, deadline).await?;
        let done = Counter::wait_all(&counters, 4 * n, deadline).await;
        Ok(Outcome::rate(done, 4 * n, start.elapsed(), String::new()))
    }

    /// W4: 32 requests in flight in total, over `conns` connections.
    pub async fn w4(&self, plan: &Plan, conns: usize) -> Result<Outcome> {
        let _echo = self.echo().await?;
        let n = plan.n(50_000);
        let per_conn = n / conns as u64;
        let in_flight = 32 / conns;
        let deadline = plan.deadline();
        let mut loads = Vec::new();
        for _ in 0..conns {
            loads.push(self.client("load").await?);
        }
        let payload = raw_payload(256);
        let start = Instant::now();
        let runs = loads.iter().map(|load| {
            let payload = payload.clone();
            async move {
                let mut inflight = FuturesUnordered::new();
                let (mut issued, mut ok) = (0u64, 0u64);
                while ok < per_conn && Instant::now() < deadline {
                    while issued < per_conn && inflight.len() < in_flight {
                        inflight.push(load.request("bench.echo", payload.clone()));
                        issued += 1;
                    }
                    match inflight.next().await {
                        Some(Ok(_)) => ok += 1,
                        Some(Err(_)) | None => break,
                    }
                }
                ok
            }
        });
        let done: u64 = futures_util::future::join_all(runs).await.into_iter().sum();
        Ok(Outcome::rate(done, per_conn * conns as u64, start.elapsed(), String::new()))
    }

    /// W6: one publisher, a queue group of four.
    pub async fn w6(&self, plan: &Plan) -> Result<Outcome> {
        let counters: Vec<Counter> = (0..4).map(|_| Counter::default()).collect();
        let mut workers = Vec::new();
        for c in &counters {
            workers.push(self.sink("worker", "bench.work", true, c).await?);
        }
        let load = self.client("load").await?;
        let n = plan.n(1_000_000);
        let deadline = plan.deadline();
        let start = Instant::now();
        publish(&load, "bench.work", raw_payload(256), n, deadline).await?;
        let done = Counter::wait_all(&counters, n, deadline).await;
        let counts: Vec<u64> = counters.iter().map(Counter::get).collect();
        Ok(Outcome::rate(done, n, start.elapsed(), spread(&counts)))
    }
}

async fn publish(client: &Client, subject: &str, payload: Bytes, n: u64, deadline: Instant) -> Result<()> {
    let subject = async_nats::Subject::from(subject);
    for i in 0..n {
        client.publish(subject.clone(), payload.clone()).await?;
        if i % 4096 == 0 && Instant::now() > deadline {
            break;
        }
    }
    client.flush().await?;
    Ok(())
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
