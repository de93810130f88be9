//! Hot reload: parse, validate, verify, then swap the policy atomically.
//!
//! [`PolicyReloader::reload`] builds a whole new [`Policy`] (its decision
//! cache starts empty) and stores it in the shared `ArcSwap` only if it is
//! valid, correctly signed when keys are configured, and not a rollback to a
//! lower serial; otherwise the policy in force stays. [`PolicyReloader::watch`]
//! reloads on SIGHUP and when the file (or its `.sig`) changes, and reports
//! every outcome so the router can audit it. This module never decides what
//! the router does with connections that lose a permission: every check
//! reads the policy in force, so the next check sees the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use tokio::sync::mpsc;

use crate::policy::sign::{self, PublicKey};
use crate::policy::{Policy, PolicyError};
use crate::shutdown::Shutdown;

/// Quiet time after the last file event before reloading, so an editor's
/// or a deploy tool's burst of writes and renames becomes one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often the file is also polled: inotify misses changes on some mounts.
const POLL: Duration = Duration::from_secs(30);

/// What a reload did, for the audit log.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum ReloadEvent {
    /// A new policy is in force.
    Loaded {
        /// SHA-256 of its exact bytes.
        sha256: String,
        /// Its serial.
        serial: u64,
    },
    /// The file was refused; the previous policy stays in force.
    Rejected {
        /// Every diagnostic, or the signature/rollback problem.
        error: String,
    },
}

/// The result of a successful [`PolicyReloader::reload`].
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct ReloadOutcome {
    /// SHA-256 of the policy in force.
    pub sha256: String,
    /// Its serial.
    pub serial: u64,
    /// Whether it differs from the one in force before (same bytes: no swap).
    pub changed: bool,
}

/// Reloads one policy file into a shared `ArcSwap<Policy>`.
#[derive(Clone, Debug)]
pub struct PolicyReloader {
    path: PathBuf,
    keys: Arc<[PublicKey]>,
    current: Arc<ArcSwap<Policy>>,
}

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Trigger {
    Signal,
    File,
}

impl PolicyReloader {
    /// Reloads `path` into `current`. With `keys` non-empty, only files whose
    /// `.sig` verifies with one of them are accepted.
    pub fn new(path: impl Into<PathBuf>, keys: Vec<PublicKey>, current: Arc<ArcSwap<Policy>>) -> Self {
        Self { path: path.into(), keys: keys.into(), current }
    }

    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, verifies (when keys are configured) and parses the file,
    /// without swapping it in.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        if self.keys.is_empty() {
            Policy::from_file(&self.path)
        } else {
            Policy::from_file_signed(&self.path, &self.keys)
        }
    }

    /// Loads the file and, if it is valid and not a rollback, swaps it in.
    /// On error the policy in force is untouched.
    pub fn reload(&self) -> Result<ReloadOutcome, PolicyError> {
        let new = self.load()?;
        let old = self.current.load();
        if new.sha256_hex() == old.sha256_hex() {
            return Ok(ReloadOutcome { sha256: new.sha256.clone(), serial: new.serial, changed: false });
        }
        if new.serial() < old.serial() {
            return Err(PolicyError::Rollback { current: old.serial(), new: new.serial() });
        }
        let outcome = ReloadOutcome { sha256: new.sha256.clone(), serial: new.serial, changed: true };
        self.current.store(Arc::new(new));
        tracing::info!(sha256 = %outcome.sha256, serial = outcome.serial, "policy reloaded");
        Ok(outcome)
    }

    /// Reloads on SIGHUP (always reported) and on changes to the file or its
    /// signature (reported when the policy changed, or when new bytes were
    /// refused), until `shutdown`. A watcher that cannot start is logged and
    /// leaves SIGHUP and polling working.
    pub async fn watch<F>(self, mut shutdown: Shutdown, mut on_event: F)
    where
        F: FnMut(ReloadEvent) + Send,
    {
        let (tx, mut rx) = mpsc::channel::<()>(16);
        let _watcher = self.file_watcher(tx);
        let mut hup = hangup();
        let mut poll = tokio::time::interval(POLL);
        poll.tick().await;
        // Bytes last refused, so an invalid file is reported once, not on
        // every event or poll.
        let mut refused: Option<String> = None;
        loop {
            let trigger = tokio::select! {
                () = shutdown.wait() => return,
                Some(()) = rx.recv() => {
                    debounce(&mut rx).await;
                    Trigger::File
                }
                _ = poll.tick() => Trigger::File,
                () = next_hangup(&mut hup) => Trigger::Signal,
            };
            let fingerprint = self.fingerprint();
            if trigger == Trigger::File && fingerprint.is_some() && fingerprint == refused {
                continue;
            }
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.reload()).await;
            match result {
                Ok(Ok(outcome)) => {
                    refused = None;
                    if outcome.changed || trigger == Trigger::Signal {
                        on_event(ReloadEvent::Loaded { sha256: outcome.sha256, serial: outcome.serial });
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(path = %self.path.display(), "policy reload refused; the previous policy stays");
                    refused = fingerprint;
                    on_event(ReloadEvent::Rejected { error: error.to_string() });
                }
                Err(join) => {
                    on_event(ReloadEvent::Rejected { error: format!("policy reload failed: {join}") })
                }
            }
        }
    }

    /// Watches the parent directory (atomic-rename writers replace the file's
    /// inode) and signals on any change to the file or its `.sig`.
    fn file_watcher(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let names = [
            self.path.file_name().map(|n| n.to_owned()),
            sign::signature_path(&self.path).file_name().map(|n| n.to_owned()),
        ];
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let ours = event
                .paths
                .iter()
                .any(|p| names.iter().flatten().any(|n| p.file_name() == Some(n.as_os_str())));
            if ours {
                // Full means a reload is already pending.
                let _ = tx.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the policy file; reload with SIGHUP");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the policy directory; reload with SIGHUP");
            return None;
        }
        Some(watcher)
    }

    /// SHA-256 over the file's and its signature's current bytes.
    fn fingerprint(&self) -> Option<String> {
        let mut bytes = std::fs::read(&self.path).ok()?;
        bytes.extend(std::fs::read(sign::signature_path(&self.path)).unwrap_or_default());
        Some(crate::policy::parse::sha256_hex(&bytes))
    }
}

async fn debounce(rx: &mut mpsc::Receiver<()>) {
    loop {
        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup() -> Hangup {
    None
}

#[cfg(unix)]
async fn next_hangup(hup: &mut Hangup) {
    let received = match hup {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !received {
        // No handler (or it closed): never trigger.
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn next_hangup(_hup: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::sign::{SigningKey, sign_file};

    fn policy_text(serial: u64, send: &str) -> String {
        format!(
            "[meta]\ntrust_domain = \"example.org\"\nserial = {serial}\n\n[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"{send}\"]\n"
        )
    }

    fn setup(text: &str) -> (tempfile::TempDir, PathBuf, Arc<ArcSwap<Policy>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        let current = Arc::new(ArcSwap::from_pointee(Policy::from_file(&path).unwrap()));
        (dir, path, current)
    }

    #[test]
    fn reload_swaps_valid_and_keeps_old_on_invalid() {
        let (_d, path, current) = setup(&policy_text(1, "a.b"));
        let reloader = PolicyReloader::new(&path, Vec::new(), current.clone());
        assert!(!reloader.reload().unwrap().changed, "same bytes: no swap");

        std::fs::write(&path, policy_text(2, "a.c")).unwrap();
        let out = reloader.reload().unwrap();
        assert!(out.changed);
        assert_eq!(out.serial, 2);
        assert!(current.load().check_send("web", "a.c", 1).allowed);
        assert!(!current.load().check_send("web", "a.b", 1).allowed, "the old permission is gone");

        std::fs::write(&path, "[meta]\ntrust_domain = \"example.org\"\n[services.web]\nsend = [\"A.b\"]\n")
            .unwrap();
        let err = reloader.reload().unwrap_err();
        assert!(err.to_string().contains("error"), "{err}");
        assert_eq!(current.load().serial(), 2, "old policy stays in force");
        assert!(current.load().check_send("web", "a.c", 1).allowed);

        std::fs::write(&path, policy_text(1, "a.d")).unwrap();
        assert!(matches!(reloader.reload(), Err(PolicyError::Rollback { current: 2, new: 1 })));
        assert_eq!(current.load().serial(), 2);
    }

    #[test]
    fn signed_reload_refuses_unsigned_and_missigned() {
        let (_d, path, current) = setup(&policy_text(1, "a.b"));
        let key = SigningKey::from_pem(crate::policy::sign::tests::test_key_pem().as_bytes()).unwrap();
        let reloader = PolicyReloader::new(&path, vec![key.public_key()], current.clone());

        std::fs::write(&path, policy_text(2, "a.c")).unwrap();
        assert!(matches!(
            reloader.reload(),
            Err(PolicyError::Signature(sign::SignatureError::Unsigned { .. }))
        ));
        sign_file(&path, &key).unwrap();
        assert!(reloader.reload().unwrap().changed);

        std::fs::write(&path, policy_text(3, "a.d")).unwrap(); // the old .sig no longer matches
        assert!(matches!(
            reloader.reload(),
            Err(PolicyError::Signature(sign::SignatureError::Mismatch { .. }))
        ));
        assert_eq!(current.load().serial(), 2);
    }

    #[tokio::test]
    async fn watch_reloads_on_atomic_rename_and_reports_rejections() {
        let (dir, path, current) = setup(&policy_text(1, "a.b"));
        let (trigger, shutdown) = crate::shutdown::channel();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reloader = PolicyReloader::new(&path, Vec::new(), current.clone());
        let task = tokio::spawn(reloader.watch(shutdown, move |e| {
            let _ = tx.send(e);
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Write elsewhere, then rename over the policy: a new inode.
        let tmp = dir.path().join("p.toml.tmp");
        std::fs::write(&tmp, policy_text(2, "a.c")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert!(matches!(event, ReloadEvent::Loaded { serial: 2, .. }), "{event:?}");
        assert!(current.load().check_send("web", "a.c", 1).allowed);

        std::fs::write(&path, "not toml [").unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        assert!(
            matches!(&event, ReloadEvent::Rejected { error } if error.contains("p.toml:1:")),
            "{event:?}"
        );
        assert_eq!(current.load().serial(), 2);

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
