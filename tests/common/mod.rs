//! Test harness: a real router on an ephemeral port, with certificates and
//! a policy generated for each test, real TLS, the real relay.
#![allow(dead_code)]

pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use exocom::audit::{self, AuditConfig};
use exocom::policy::Policy;
use exocom::relay::{E2eOptions, Relay, RelayBuilder};
use exocom::router::{Router, RouterConfig};
use exocom::shutdown::{self, ShutdownTrigger};
use exocom::tls::{self, IdentityDir, ServerFiles};
use exocom::wire::{Body, Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The policy most tests use: web asks todo; mailer also hears user.created;
/// intruder may send todos.listing but receives nothing.
pub const POLICY: &str = r#"
[meta]
trust_domain = "example.org"

[services.web]
id = "spiffe://example.org/svc/web"
send = ["todos.list", "todos.create", "todos.export", "user.created", "jobs.run"]
receive = ["todos.listing", "todos.created", "todos.chunk", "todos.exported", "jobs.done"]

[services.todo]
id = "spiffe://example.org/svc/todo"
receive = ["todos.list", "todos.create", "todos.export", "user.created", "jobs.run"]
send = ["todos.listing", "todos.created", "todos.chunk", "todos.exported", "jobs.done"]

[services.mailer]
id = "spiffe://example.org/svc/mailer"
receive = ["user.created"]

[services.intruder]
id = "spiffe://example.org/svc/intruder"
send = ["todos.listing"]
receive = ["nothing.ever"]
"#;

/// Services that get certificates (stranger is not in the policy).
pub const SERVICES: &[&str] = &["web", "todo", "mailer", "intruder", "stranger"];

/// A running router and everything it was started with.
pub struct TestBus {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The admin API's address, with `BusOptions::admin`.
    pub admin_addr: Option<SocketAddr>,
    pub audit_path: PathBuf,
    tls: exocom::router::TlsHandle,
    trigger: Option<ShutdownTrigger>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A last change to the router's configuration before it starts.
pub type Configure = Box<dyn FnOnce(&mut RouterConfig) + Send>;

/// Options for [`TestBus::start_with`].
pub struct BusOptions {
    pub policy: String,
    pub max_frame: Option<usize>,
    pub crls: Vec<PathBuf>,
    pub data_dir: bool,
    /// Serve the admin API on 127.0.0.1:0 (router certificate, `certs/admin/pub.pem`, issuer `exocom`).
    pub admin: bool,
    pub configure: Option<Configure>,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            policy: POLICY.to_string(),
            max_frame: None,
            crls: Vec::new(),
            data_dir: false,
            admin: false,
            configure: None,
        }
    }
}

impl TestBus {
    /// A router with [`POLICY`].
    pub async fn start() -> TestBus {
        Self::start_with(BusOptions::default()).await
    }

    /// A router with the given options, on 127.0.0.1:0.
    pub async fn start_with(opts: BusOptions) -> TestBus {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
        exocom::certs::init(&certs, "example.org", &services, 30).unwrap();
        for service in SERVICES {
            // End-to-end receive keys, as `exocom certs init` writes them.
            exocom::e2e::ReceiveKey::generate().unwrap().save(&certs.join(service), false).unwrap();
        }
        Self::start_in(dir, opts, None).await
    }

    /// Starts (or restarts) a router in an existing test directory.
    pub async fn start_in(dir: tempfile::TempDir, opts: BusOptions, addr: Option<SocketAddr>) -> TestBus {
        let certs = dir.path().join("certs");
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, &opts.policy).unwrap();
        let policy = Policy::from_file(&policy_path).unwrap();
        let mut files = ServerFiles::from_certs_dir(&certs);
        files.crls = opts.crls;
        files.trust_domain = Some("example.org".into());
        let tls = tls::server_config(&files).unwrap();
        let (trigger, shutdown) = shutdown::channel();
        let audit_path = dir.path().join("audit.jsonl");
        let mut audit_cfg = AuditConfig::new(audit_path.clone());
        audit_cfg.signing_key = Some(certs.join("audit").join("key.pem"));
        let (audit, _audit_task) = audit::start(audit_cfg, shutdown.clone()).unwrap();
        let listen = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let mut config = RouterConfig::new(listen, tls, policy);
        config.audit = audit;
        if let Some(max) = opts.max_frame {
            config.limits.max_frame = max;
        }
        if opts.admin {
            config.admin = Some(exocom::admin::AdminConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: tls::admin_server_config(&files).unwrap(),
                verifier: exocom::admin::auth::Verifier::from_pem_file(
                    &certs.join("admin").join("pub.pem"),
                    "exocom",
                )
                .unwrap(),
                metrics_public: false,
            });
        }
        if opts.data_dir {
            let store = exocom::store::Store::open(&dir.path().join("data")).unwrap();
            config.store = std::sync::Arc::new(store);
        }
        if let Some(f) = opts.configure {
            f(&mut config);
        }
        let router = Router::bind(config).await.unwrap();
        let addr = router.local_addr().unwrap();
        let tls_handle = router.tls_handle();
        let admin_addr = router.admin_addr();
        let task = tokio::spawn(async move {
            router.run(shutdown).await.unwrap();
        });
        TestBus {
            dir,
            addr,
            admin_addr,
            audit_path,
            tls: tls_handle,
            trigger: Some(trigger),
            task: Some(task),
        }
    }

    /// Changes the running router's TLS settings.
    pub fn tls_handle(&self) -> exocom::router::TlsHandle {
        self.tls.clone()
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn identity(&self, service: &str) -> IdentityDir {
        IdentityDir::new(self.certs().join(service))
    }

    /// A relay builder for `service` with short timeouts suited to tests.
    pub fn builder(&self, service: &str) -> RelayBuilder {
        Relay::builder(self.addr.to_string(), self.identity(service))
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }

    /// The policy file the router runs with (relays trust it too).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    /// A relay builder for `service` at `addr` that seals end to end with
    /// the router's policy.
    pub fn sealed_at(&self, service: &str, addr: SocketAddr) -> RelayBuilder {
        let identity = self.identity(service);
        Relay::builder(addr.to_string(), identity.clone())
            .request_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .end_to_end(E2eOptions::new(&identity, self.policy_path()))
    }

    /// [`sealed_at`](Self::sealed_at) the router itself.
    pub fn sealed(&self, service: &str) -> RelayBuilder {
        self.sealed_at(service, self.addr)
    }

    pub async fn relay(&self, service: &str) -> Relay {
        self.builder(service).connect().await.unwrap()
    }

    /// Every audit line so far, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        read_audit(&self.audit_path)
    }

    /// Waits until an audit line satisfies `f` (the writer is asynchronous).
    pub async fn wait_audit(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..100 {
            if let Some(v) = self.audit().into_iter().find(|v| f(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no matching audit line; log:\n{}",
            std::fs::read_to_string(&self.audit_path).unwrap_or_default()
        );
    }

    /// Stops the router and waits for it; returns the test directory so a
    /// test can restart on the same files.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // Give the audit writer its final flush.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.trigger();
        }
    }
}

pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(text) = std::fs::read_to_string(path) else { return out };
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str(line) {
            out.push(v);
        }
    }
    out
}

pub type RawReader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
pub type RawWriter = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

/// A TLS connection speaking raw frames, for tests below the relay.
pub async fn raw_tls(addr: SocketAddr, identity: &IdentityDir) -> std::io::Result<TlsStream<TcpStream>> {
    let config = tls::client_config(identity).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// A raw connection that has said Hello and read Welcome.
pub async fn raw_hello(addr: SocketAddr, identity: &IdentityDir) -> (RawReader, RawWriter) {
    let stream = raw_tls(addr, identity).await.unwrap();
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd, 16 * 1024 * 1024);
    let mut writer = FrameWriter::new(wr);
    let hello = Hello { protocol: PROTOCOL_VERSION, instance: "raw-1".into(), client: "test".into() };
    writer.write_frame(&Frame { body: Some(Body::Hello(hello)) }).await.unwrap();
    match reader.read_frame().await.unwrap() {
        Some(Frame { body: Some(Body::Welcome(_)) }) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    (reader, writer)
}

/// Reads frames until one matches `f` (skipping others) or 5 s pass.
pub async fn read_until(reader: &mut RawReader, f: impl Fn(&Body) -> bool) -> Body {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read_frame().await {
                Ok(Some(Frame { body: Some(b) })) if f(&b) => return b,
                Ok(Some(_)) => continue,
                other => panic!("connection ended while waiting: {other:?}"),
            }
        }
    })
    .await
    .expect("timed out waiting for a frame")
}

/// The real `exocom serve` binary as a child process, for tests of what only
/// the binary does (signals, reload, restart on the same data).
pub struct ServeProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `exocom serve` with the certificates in `certs`, `policy`, and
    /// `extra` arguments, on a free port; waits until it accepts connections.
    pub async fn start(certs: &Path, policy: &Path, extra: &[&std::ffi::OsStr]) -> ServeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_exocom"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("router/cert.pem"))
            .arg("--key")
            .arg(certs.join("router/key.pem"))
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .env("EXOCOM_LOG", "warn")
            .spawn()
            .unwrap();
        // Owned by the guard from here on, so every path kills and reaps it.
        let process = ServeProcess { child, addr };
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("exocom serve did not start on {addr}");
    }

    /// Sends a signal (e.g. "HUP", "TERM", "KILL") to the router process.
    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.unwrap().success(), "kill -{sig} failed");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
