//! Counters of messages the relay refused to hand to a handler (or to a
//! request) because end-to-end checks failed, by [`CodecError::label`]
//! (`bad_tag`, `replay`, `bad_announcement`, …).
//!
//! Shared by the codec and the connection task; read through
//! [`Relay::rejections`](super::Relay::rejections). Counting only: it never
//! logs or decides anything.
//!
//! [`CodecError::label`]: super::CodecError::label

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Rejections by label. Cheap to clone (one shared map).
#[derive(Clone, Debug, Default)]
pub struct Rejections {
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Rejections {
    /// Counts one rejection under `label`.
    pub fn count(&self, label: &'static str) {
        *self.lock().entry(label).or_insert(0) += 1;
    }

    /// How many rejections `label` counted.
    pub fn get(&self, label: &str) -> u64 {
        self.lock().get(label).copied().unwrap_or(0)
    }

    /// Every label and its count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.lock().iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    /// All rejections together.
    pub fn total(&self) -> u64 {
        self.lock().values().sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // Single increments cannot leave the map inconsistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label_across_clones() {
        let r = Rejections::default();
        let c = r.clone();
        r.count("bad_tag");
        c.count("bad_tag");
        c.count("replay");
        assert_eq!((r.get("bad_tag"), r.get("replay"), r.get("x")), (2, 1, 0));
        assert_eq!(r.total(), 3);
        assert_eq!(r.snapshot().get("bad_tag"), Some(&2));
    }
}
