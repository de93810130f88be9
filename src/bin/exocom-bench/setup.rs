//! The benchmark's world: certificates, the policy, and the child processes
//! (our router, the bare forwarder, nats-server) it measures.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Every service the benchmark uses; each gets a certificate.
pub const SERVICES: &[&str] = &["load", "echo", "sink1", "sink2", "sink3", "sink4", "worker"];

/// The trust domain of the benchmark's certificates.
pub const TRUST_DOMAIN: &str = "example.org";

/// The policy our router runs with: each service may send and receive only
/// what its workload needs (the same permissions nats-server gets).
pub const POLICY: &str = r#"
[meta]
trust_domain = "example.org"

[services.load]
id = "spiffe://example.org/svc/load"
send = ["bench.echo", "bench.one", "bench.fan", "bench.big", "bench.work"]
receive = ["bench.echoed"]

[services.echo]
id = "spiffe://example.org/svc/echo"
send = ["bench.echoed"]
receive = ["bench.echo"]

[services.sink1]
id = "spiffe://example.org/svc/sink1"
receive = ["bench.one", "bench.fan", "bench.big"]

[services.sink2]
id = "spiffe://example.org/svc/sink2"
receive = ["bench.fan"]

[services.sink3]
id = "spiffe://example.org/svc/sink3"
receive = ["bench.fan"]

[services.sink4]
id = "spiffe://example.org/svc/sink4"
receive = ["bench.fan"]

[services.worker]
id = "spiffe://example.org/svc/worker"
receive = ["bench.work"]
"#;

/// The SPIFFE URI of a benchmark service.
pub fn spiffe(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/svc/{service}")
}

/// A fresh working directory with certificates, receive keys and the policy.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
    exocom::certs::init(&dir.join("certs"), TRUST_DOMAIN, &services, 2)
        .context("generating benchmark certificates")?;
    for service in SERVICES {
        exocom::e2e::keys::ReceiveKey::generate()?
            .save(&cert_dir(dir, service), false)
            .with_context(|| format!("writing the receive key of {service}"))?;
    }
    std::fs::write(dir.join("policy.toml"), POLICY)?;
    Ok(())
}

/// A child process that prints `LISTENING <addr>` once it serves.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    /// Closed first when the server is dropped: both servers exit on end
    /// of input (see serve.rs).
    stdin: Option<ChildStdin>,
}

impl Server {
    /// Starts `exe args…` and waits (bounded) for its `LISTENING` line.
    pub fn spawn(exe: &Path, args: &[&str]) -> Result<Server> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().context("child printed a bad address")?,
            Err(_) => {
                let _ = child.kill();
                bail!("{} did not start listening within 20 s", exe.display());
            }
        };
        Ok(Server { addr, child, stdin })
    }

    /// The child's process id (for a profiler).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // Up to 30 s to exit on end of input (under valgrind a server has
        // its results to write), then it is killed.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (for nats-server, which takes a fixed port).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Path of the certificate directory of `service` (or `router`).
pub fn cert_dir(dir: &Path, who: &str) -> PathBuf {
    dir.join("certs").join(who)
}
