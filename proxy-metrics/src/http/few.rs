//! [`Few`]: the handle caches of the per-request path, keyed by what one target sees few
//! of (statuses, endpoints). A short list searched in order costs less per request than
//! hashing the key, and these lists stay short: a target answers with a handful of statuses,
//! and an endpoint serves a handful of targets.

use std::sync::Mutex;

/// Values by key, for a few keys.
#[derive(Debug)]
pub(super) struct Few<K, V> {
    entries: Mutex<Vec<(K, V)>>,
}

impl<K, V> Default for Few<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

impl<K: PartialEq + Clone, V> Few<K, V> {
    /// Calls `f` with the value of `key`, made by `make` the first time.
    pub(super) fn with<R>(&self, key: &K, make: impl FnOnce() -> V, f: impl FnOnce(&V) -> R) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = match entries.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                entries.push((key.clone(), make()));
                entries.len() - 1
            }
        };
        f(&entries[i].1)
    }

    /// The keys seen.
    pub(super) fn keys(&self) -> Vec<K> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(k, _)| k.clone()).collect()
    }

    /// How many keys are held.
    pub(super) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets every key.
    pub(super) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
