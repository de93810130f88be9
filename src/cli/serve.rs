//! `exocom serve`: run the router.
//!
//! Settings come from a TOML file (`--config`) and flags, flags winning.
//! Everything is parsed and checked before anything is bound; a bad setting
//! exits with code 64 and one line saying which and why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::admin::alerts::AlertConfig;
use crate::admin::auth::Verifier;
use crate::audit::{self, AuditConfig, AuditHandle, Event, FsyncPolicy, Record};
use crate::cli::exit;
use crate::policy::Policy;
use crate::policy::reload::{PolicyReloader, ReloadEvent};
use crate::policy::sign::PublicKey;
use crate::router::{Router, RouterConfig};
use crate::tls::{self, ServerFiles};

/// Arguments of `exocom serve`.
///
/// Example, with the development certificates and the todo policy:
///
///   exocom serve --ca certs-example/ca.pem --cert certs-example/router/cert.pem \
///     --key certs-example/router/key.pem --policy policy/todo.toml --audit-log data/audit.jsonl
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with the settings below (flags override it). Relative
    /// paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7443].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// CA bundle that client certificates must chain to.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// The router's certificate (chain).
    #[arg(long, value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The router's private key.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// A certificate revocation list; repeat for several.
    #[arg(long = "crl", value_name = "PEM")]
    pub crls: Vec<PathBuf>,
    /// The policy file.
    #[arg(long, value_name = "TOML")]
    pub policy: Option<PathBuf>,
    /// A security team's Ed25519 public key (PEM); repeat for several. When
    /// given, the router loads only a policy with a valid detached signature
    /// (`FILE.sig`, from `exocom policy sign`), at start and at every reload.
    #[arg(long = "policy-pubkey", value_name = "PEM")]
    pub policy_pubkeys: Vec<PathBuf>,
    /// Where to write the audit log (JSON lines) [default: no audit log].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Ed25519 key (PKCS#8 PEM) that signs audit checkpoints, e.g.
    /// certs-example/audit/key.pem. Without it checkpoints are unsigned.
    #[arg(long, value_name = "PEM")]
    pub audit_key: Option<PathBuf>,
    /// When the audit log is fsynced.
    #[arg(long, value_enum, value_name = "WHEN")]
    pub audit_fsync: Option<AuditFsync>,
    /// Keep routing when the audit log cannot be written (default: refuse
    /// new sends until it can). The choice is itself recorded in the log.
    #[arg(long)]
    pub audit_fail_open: bool,
    /// Directory for durable queues [default: memory only].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest frame accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<usize>,
    /// Serve the admin API (HTTPS, router certificate, token auth) on this
    /// address, e.g. 127.0.0.1:7444 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// The pinned Ed25519 public key (PEM) admin tokens must be signed with,
    /// e.g. certs-example/admin/pub.pem. Required with --admin-listen.
    #[arg(long, value_name = "PEM")]
    pub admin_pubkey: Option<PathBuf>,
    /// The issuer (`iss`) admin tokens must carry [default: exocom].
    #[arg(long, value_name = "NAME")]
    pub admin_issuer: Option<String>,
    /// Serve /metrics without a token (for a scraper on a trusted network).
    #[arg(long)]
    pub admin_metrics_public: bool,
    /// Raise an alert when one identity is denied this often within a
    /// minute; 0 turns it off [default: 20].
    #[arg(long, value_name = "N")]
    pub alert_denials_per_minute: Option<u32>,
    /// Raise an alert when one address fails this many TLS handshakes
    /// within a minute; 0 turns it off [default: 10].
    #[arg(long, value_name = "N")]
    pub alert_handshake_failures_per_minute: Option<u32>,
    /// Runtime worker threads for the connections and the routing core.
    /// The audit log writes from a thread of its own besides [default: one
    /// fewer than the CPUs, at least 1].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

/// When the audit log is fsynced.
#[derive(Clone, Copy, Debug, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AuditFsync {
    /// After every batch, before sends are acknowledged (strictest).
    Batch,
    /// Every 50 ms (default).
    Interval,
    /// Leave it to the kernel (still fsynced at rotation and shutdown).
    Never,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    crl: Vec<PathBuf>,
    policy: Option<PathBuf>,
    #[serde(default)]
    policy_pubkey: Vec<PathBuf>,
    audit_log: Option<PathBuf>,
    audit_key: Option<PathBuf>,
    audit_fsync: Option<AuditFsync>,
    #[serde(default)]
    audit_fail_open: bool,
    data_dir: Option<PathBuf>,
    max_frame: Option<usize>,
    admin_listen: Option<SocketAddr>,
    admin_pubkey: Option<PathBuf>,
    admin_issuer: Option<String>,
    #[serde(default)]
    admin_metrics_public: bool,
    alert_denials_per_minute: Option<u32>,
    alert_handshake_failures_per_minute: Option<u32>,
    workers: Option<usize>,
    #[serde(default)]
    limits: LimitSettings,
}

/// The `[limits]` table of the settings file: resource limits, each with a
/// default (see `RouterLimits` and `CoreConfig`; docs/OPERATIONS.md).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Most connections at once, handshakes included (10000).
    pub max_connections: Option<usize>,
    /// Most connections of one identity (256).
    pub max_connections_per_identity: Option<usize>,
    /// Seconds allowed for the TLS handshake (5).
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds of silence before a ping; twice that closes (60).
    pub idle_timeout_secs: Option<u64>,
    /// Seconds to complete a frame once it started (30).
    pub frame_timeout_secs: Option<u64>,
    /// Unanswered sends per connection before the router stops reading it (4096).
    pub max_in_flight: Option<usize>,
    /// Subscriptions per instance (1024).
    pub max_subscriptions: Option<usize>,
    /// Messages waiting per service queue (100000).
    pub queue_max_messages: Option<usize>,
    /// Bytes waiting per service queue (268435456).
    pub queue_max_bytes: Option<u64>,
    /// Seconds a delivery may stay unacknowledged before redelivery (60).
    pub ack_timeout_secs: Option<u64>,
    /// Deliveries of one message before it is dead-lettered (5).
    pub max_attempts: Option<u32>,
}

impl LimitSettings {
    /// Applies the limits that are set to a router configuration.
    pub fn apply(&self, config: &mut RouterConfig) {
        let secs = std::time::Duration::from_secs;
        let l = &mut config.limits;
        if let Some(v) = self.max_connections {
            l.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_identity {
            l.max_connections_per_identity = v;
        }
        if let Some(v) = self.handshake_timeout_secs {
            l.handshake_timeout = secs(v);
        }
        if let Some(v) = self.idle_timeout_secs {
            l.idle_timeout = secs(v);
        }
        if let Some(v) = self.frame_timeout_secs {
            l.frame_timeout = secs(v);
        }
        if let Some(v) = self.max_in_flight {
            l.max_in_flight = v;
        }
        if let Some(v) = self.max_subscriptions {
            l.max_subscriptions = v;
        }
        let c = &mut config.core;
        if let Some(v) = self.queue_max_messages {
            c.queue_max_messages = v;
        }
        if let Some(v) = self.queue_max_bytes {
            c.queue_max_bytes = v;
        }
        if let Some(v) = self.ack_timeout_secs {
            c.ack_timeout = secs(v);
        }
        if let Some(v) = self.max_attempts {
            c.max_attempts = v;
        }
    }
}

/// Admin API settings.
#[derive(Debug)]
pub struct AdminSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Pinned token public key.
    pub pubkey: PathBuf,
    /// Required token issuer.
    pub issuer: String,
    /// Serve /metrics without a token.
    pub metrics_public: bool,
}

/// Settings after merging file and flags.
#[derive(Debug)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// TLS files.
    pub tls: ServerFiles,
    /// Policy file.
    pub policy: PathBuf,
    /// Keys a policy must be signed with (none: signatures not required).
    pub policy_pubkeys: Vec<PathBuf>,
    /// Audit log path.
    pub audit_log: Option<PathBuf>,
    /// Audit checkpoint signing key.
    pub audit_key: Option<PathBuf>,
    /// Audit fsync policy.
    pub audit_fsync: AuditFsync,
    /// Keep routing when the audit log fails.
    pub audit_fail_open: bool,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Largest frame.
    pub max_frame: usize,
    /// Resource limits from the settings file.
    pub limits: LimitSettings,
    /// The admin API, when on.
    pub admin: Option<AdminSettings>,
    /// Traffic alert thresholds.
    pub alerts: AlertConfig,
    /// Runtime worker threads.
    pub workers: usize,
}

/// Merges the settings file and the flags; errors name the missing setting.
pub fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut f: FileSettings =
                toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            let rel = |p: &mut Option<PathBuf>| {
                if let Some(x) = p.as_mut()
                    && x.is_relative()
                {
                    *x = base.join(&*x);
                }
            };
            rel(&mut f.ca);
            rel(&mut f.cert);
            rel(&mut f.key);
            rel(&mut f.policy);
            rel(&mut f.audit_log);
            rel(&mut f.audit_key);
            rel(&mut f.data_dir);
            rel(&mut f.admin_pubkey);
            f.policy_pubkey =
                f.policy_pubkey.into_iter().map(|c| if c.is_relative() { base.join(c) } else { c }).collect();
            f.crl = f.crl.into_iter().map(|c| if c.is_relative() { base.join(c) } else { c }).collect();
            f
        }
        None => FileSettings::default(),
    };
    let need = |v: Option<PathBuf>, what: &str| {
        v.with_context(|| format!("missing setting: --{what} (or `{what}` in --config)"))
    };
    let admin = match args.admin_listen.or(file.admin_listen) {
        Some(listen) => Some(AdminSettings {
            listen,
            pubkey: args.admin_pubkey.or(file.admin_pubkey).context(
                "missing setting: --admin-pubkey (or `admin_pubkey` in --config) is required with --admin-listen",
            )?,
            issuer: args.admin_issuer.or(file.admin_issuer).unwrap_or_else(|| "exocom".into()),
            metrics_public: args.admin_metrics_public || file.admin_metrics_public,
        }),
        None => None,
    };
    let defaults = AlertConfig::default();
    let alerts = AlertConfig {
        denials_per_minute: args
            .alert_denials_per_minute
            .or(file.alert_denials_per_minute)
            .unwrap_or(defaults.denials_per_minute),
        handshake_failures_per_minute: args
            .alert_handshake_failures_per_minute
            .or(file.alert_handshake_failures_per_minute)
            .unwrap_or(defaults.handshake_failures_per_minute),
    };
    let workers = match args.workers.or(file.workers) {
        Some(0) => anyhow::bail!("--workers (or `workers` in --config) must be at least 1"),
        Some(n) => n,
        None => crate::router::default_workers(),
    };
    Ok(Settings {
        admin,
        alerts,
        workers,
        listen: args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7443))),
        tls: ServerFiles {
            ca: need(args.ca.or(file.ca), "ca")?,
            cert: need(args.cert.or(file.cert), "cert")?,
            key: need(args.key.or(file.key), "key")?,
            crls: if args.crls.is_empty() { file.crl } else { args.crls },
            trust_domain: None,
        },
        policy: need(args.policy.or(file.policy), "policy")?,
        policy_pubkeys: if args.policy_pubkeys.is_empty() { file.policy_pubkey } else { args.policy_pubkeys },
        audit_log: args.audit_log.or(file.audit_log),
        audit_key: args.audit_key.or(file.audit_key),
        audit_fsync: args.audit_fsync.or(file.audit_fsync).unwrap_or(AuditFsync::Interval),
        audit_fail_open: args.audit_fail_open || file.audit_fail_open,
        data_dir: args.data_dir.or(file.data_dir),
        max_frame: args.max_frame.or(file.max_frame).unwrap_or(crate::wire::DEFAULT_MAX_FRAME),
        limits: file.limits.clone(),
    })
}

/// Runs the router until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let settings = match settings(args) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("error: {err:#}");
            return Ok(exit::USAGE);
        }
    };
    let mut keys = Vec::new();
    for path in &settings.policy_pubkeys {
        match PublicKey::from_pem_file(path) {
            Ok(k) => keys.push(k),
            Err(err) => {
                eprintln!("error: policy key {}: {err}", path.display());
                return Ok(exit::USAGE);
            }
        }
    }
    let loaded = if keys.is_empty() {
        Policy::from_file(&settings.policy)
    } else {
        Policy::from_file_signed(&settings.policy, &keys)
    };
    let policy = match loaded {
        Ok(p) => p,
        Err(err) => {
            eprintln!("error: policy {} refused:\n{err}", settings.policy.display());
            return Ok(exit::USAGE);
        }
    };
    let mut tls_files = settings.tls.clone();
    // Only identities of the policy's trust domain may even complete a handshake.
    tls_files.trust_domain = Some(policy.trust_domain().to_string());
    let tls = match tls::server_config(&tls_files) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(exit::USAGE);
        }
    };
    let admin = match &settings.admin {
        Some(a) => match admin_config(a, &settings.tls) {
            Ok(c) => Some(c),
            Err(err) => {
                eprintln!("error: {err:#}");
                return Ok(exit::USAGE);
            }
        },
        None => None,
    };
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(settings.workers).enable_all().build()?;
    rt.block_on(serve(settings, policy, keys, tls, tls_files, admin))
}

fn admin_config(a: &AdminSettings, files: &ServerFiles) -> anyhow::Result<AdminConfig> {
    Ok(AdminConfig {
        listen: a.listen,
        tls: tls::admin_server_config(files).context("admin API TLS")?,
        verifier: Verifier::from_pem_file(&a.pubkey, &a.issuer)?,
        metrics_public: a.metrics_public,
    })
}

async fn serve(
    settings: Settings,
    policy: Policy,
    keys: Vec<PublicKey>,
    tls: Arc<rustls::ServerConfig>,
    tls_files: ServerFiles,
    admin: Option<AdminConfig>,
) -> anyhow::Result<i32> {
    let (trigger, shutdown) = crate::shutdown::channel();
    let mut config = RouterConfig::new(settings.listen, tls, policy);
    settings.limits.apply(&mut config);
    config.limits.max_frame = settings.max_frame;
    config.admin = admin;
    config.alerts = settings.alerts;
    let mut audit_task = None;
    if let Some(path) = &settings.audit_log {
        let mut ac = AuditConfig::new(path.clone());
        ac.signing_key = settings.audit_key.clone();
        ac.fail_open = settings.audit_fail_open;
        ac.fsync = match settings.audit_fsync {
            AuditFsync::Batch => FsyncPolicy::EveryBatch,
            AuditFsync::Interval => FsyncPolicy::Interval(std::time::Duration::from_millis(50)),
            AuditFsync::Never => FsyncPolicy::Never,
        };
        if ac.signing_key.is_none() {
            tracing::warn!("no --audit-key: audit checkpoints are unsigned");
        }
        match audit::start(ac, shutdown.clone()) {
            Ok((handle, task)) => {
                config.audit = handle;
                audit_task = Some(task);
            }
            Err(err) => {
                eprintln!("error: audit log {}: {err}", path.display());
                return Ok(exit::USAGE);
            }
        }
    } else {
        tracing::warn!("no --audit-log: routing is not audited");
    }
    audit_policy(
        &config.audit,
        Event::PolicyLoaded,
        config.policy.load().sha256_hex(),
        config.policy.load().serial(),
        None,
    );
    let reloader = PolicyReloader::new(settings.policy.clone(), keys, config.policy.clone());
    let reload_audit = config.audit.clone();
    let reload_policy = config.policy.clone();
    let reload_path = settings.policy.clone();
    tokio::spawn(reloader.watch(shutdown.clone(), move |event| match event {
        ReloadEvent::Loaded { sha256, serial } => {
            tracing::info!(%sha256, serial, "policy reloaded");
            audit_policy(&reload_audit, Event::PolicyLoaded, &sha256, serial, None);
        }
        ReloadEvent::Rejected { error } => {
            tracing::warn!(%error, "new policy refused; the previous one stays in force");
            // Record which bytes were refused (the file as it is now), not the policy in force.
            let sha = std::fs::read(&reload_path)
                .map(|b| hex::encode(ring::digest::digest(&ring::digest::SHA256, &b)))
                .unwrap_or_else(|_| "unreadable".into());
            let serial = reload_policy.load().serial();
            audit_policy(&reload_audit, Event::PolicyRejected, &sha, serial, Some(&error));
        }
    }));
    if let Some(dir) = &settings.data_dir {
        match crate::store::Store::open(dir) {
            Ok(store) => config.store = Arc::new(store),
            Err(err) => {
                eprintln!("error: {err}");
                return Ok(exit::ERROR);
            }
        }
    }
    let router = match Router::bind(config).await {
        Ok(r) => r,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(exit::ERROR);
        }
    };
    spawn_tls_reload(router.tls_handle(), tls_files.clone(), shutdown.clone());
    let addr = router.local_addr()?;
    tracing::info!(%addr, policy = %settings.policy.display(), "router listening");
    if let Some(p) = &settings.audit_log {
        tracing::info!(audit_log = %p.display(), "audit log");
    }
    let task = tokio::spawn(router.run(shutdown));
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    trigger.trigger();
    task.await??;
    if let Some(t) = audit_task {
        let _ = t.await;
    }
    Ok(exit::OK)
}

fn audit_policy(audit: &AuditHandle, event: Event, sha256: &str, serial: u64, error: Option<&str>) {
    let mut r = Record::new(event).policy_sha256(Arc::<str>::from(sha256)).policy_serial(serial);
    if let Some(e) = error {
        r = r.reason(Arc::<str>::from(e));
    }
    let _ = audit.note(r);
}

/// Reloads TLS files (CA bundle, router certificate and key, CRLs) on
/// SIGHUP and when one of them changes: new handshakes use the new files,
/// and open connections whose certificate a CRL now revokes are closed. A
/// file that does not load leaves the previous settings in force.
fn spawn_tls_reload(
    handle: crate::router::TlsHandle,
    files: ServerFiles,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let stamp = |files: &ServerFiles| -> Vec<Option<std::time::SystemTime>> {
        let mut paths = vec![&files.ca, &files.cert, &files.key];
        paths.extend(files.crls.iter());
        paths.iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    };
    let reload = move |files: &ServerFiles, handle: &crate::router::TlsHandle| {
        let revoked = match tls::revoked_serials(&files.crls) {
            Ok(r) => r,
            Err(err) => {
                tracing::warn!(%err, "CRLs not reloaded; the previous TLS settings stay in force");
                return;
            }
        };
        match tls::server_config(files) {
            Ok(config) => {
                tracing::info!(revoked = revoked.len(), "TLS settings reloaded");
                handle.update(config, revoked);
            }
            Err(err) => tracing::warn!(%err, "TLS files not reloaded; the previous settings stay in force"),
        }
    };
    // Serials already revoked at start (the handshake refuses them too).
    if let Ok(revoked) = tls::revoked_serials(&files.crls) {
        handle.update(handle.current(), revoked);
    }
    tokio::spawn(async move {
        let mut last = stamp(&files);
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(2));
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = hangup => reload(&files, &handle),
                _ = poll.tick() => {
                    let now = stamp(&files);
                    if now != last {
                        last = now;
                        reload(&files, &handle);
                    }
                }
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
