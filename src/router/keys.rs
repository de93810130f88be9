//! The key directory: end-to-end key announcements the router keeps and
//! serves, including for services that are offline.
//!
//! The router cannot verify or mint announcements (it has no `e2e` code);
//! relays verify each one against their pinned CA. The router only files an
//! announcement under the service of the connection that sent it, so a
//! service cannot file keys under another's name, and keeps a few per
//! service so instances rotating keys overlap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::audit::{AuditHandle, Event, Record};
use crate::wire::KeyDirectory as KeyDirectoryFrame;

/// Announcements kept per service (newest first wins at the relay).
const PER_SERVICE: usize = 8;
/// Largest announcement accepted, in bytes.
pub const MAX_ANNOUNCEMENT: usize = 16 * 1024;

/// One service's announcements, newest first, with the instance that filed each.
type Filed = VecDeque<(Arc<str>, Bytes)>;

/// Announcements by service. Rarely written (at connect), so a plain mutex.
#[derive(Debug, Default, Clone)]
pub struct KeyDirectory {
    inner: Arc<Mutex<HashMap<Arc<str>, Filed>>>,
}

impl KeyDirectory {
    /// Files an announcement sent by `instance` of `service`, replacing that
    /// instance's previous one.
    pub fn announce(
        &self,
        service: &Arc<str>,
        instance: &Arc<str>,
        announcement: Bytes,
        audit: &AuditHandle,
    ) {
        if announcement.is_empty() || announcement.len() > MAX_ANNOUNCEMENT {
            return;
        }
        let bytes = announcement.len() as u64;
        if let Ok(mut map) = self.inner.lock() {
            let list = map.entry(service.clone()).or_default();
            list.retain(|(i, a)| i != instance && *a != announcement);
            list.push_front((instance.clone(), announcement));
            list.truncate(PER_SERVICE);
        }
        let mut r = Record::new(Event::KeyAnnounced);
        r.sender = Some(service.clone());
        r.sender_instance = Some(instance.clone());
        r.bytes = Some(bytes);
        let _ = audit.note(r);
    }

    /// The announcements of `services` (all when empty), newest first.
    pub fn query(&self, services: &[String]) -> KeyDirectoryFrame {
        let mut announcements = Vec::new();
        if let Ok(map) = self.inner.lock() {
            for (svc, list) in map.iter() {
                if services.is_empty() || services.iter().any(|s| **s == **svc) {
                    announcements.extend(list.iter().map(|(_, a)| a.clone()));
                }
            }
        }
        KeyDirectoryFrame { announcements }
    }
}
