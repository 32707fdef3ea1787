//! A bounded cache of stored entries (ciphertext, as the physical store
//! holds them) in front of redb, like Vault's physical cache: a hit is a
//! hash lookup and a copy instead of a read transaction and a B-tree walk
//! through redb's page cache.
//!
//! Coherence. Every write reaches redb through the store's writer thread or
//! `import`; after a commit, and before the writer is told it is done, the
//! written keys are removed here (everything, after an import) and the
//! generation goes up, both under the cache's lock. A reader that missed
//! notes the generation before its read transaction and inserts what it read
//! only if no commit has finished since. So an entry in the cache is never
//! older than the last commit that finished: either the reader's snapshot
//! already had that commit, or the generation moved and the insert is
//! dropped. A write's own caller sees the new value on its next read.
//! Removing is always safe, so commits may finish in any order relative to
//! each other.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;

/// Bytes an entry is charged beyond its key and value: the map slot, the
/// two heap allocations' headers and the cache's bookkeeping.
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct Bytes;

impl Weighter<String, Box<[u8]>> for Bytes {
    fn weight(&self, key: &String, value: &Box<[u8]>) -> u64 {
        key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
    }
}

type Entries = quick_cache::unsync::Cache<String, Box<[u8]>, Bytes>;

pub(crate) struct EntryCache {
    /// `None`: caching is off (a budget of 0).
    entries: Option<Mutex<Entries>>,
    generation: AtomicU64,
}

/// The generation a reader saw before its read; see the module comment.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

impl EntryCache {
    /// A cache holding at most `budget` bytes of keys, values and overhead.
    pub(crate) fn new(budget: usize) -> Self {
        let entries = (budget > 0).then(|| {
            // Entries of secrets are around a kilobyte; the estimate only
            // sizes the initial table.
            let estimate = (budget / 1024).max(16);
            Mutex::new(Entries::with_weighter(estimate, budget as u64, Bytes))
        });
        Self { entries, generation: AtomicU64::new(0) }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Entries>> {
        // A panic while holding the lock cannot leave a half-updated entry
        // visible (quick_cache updates in place or not at all), and the
        // generation is bumped before entries are removed: keep serving.
        self.entries.as_ref().map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock()?.get(key).map(|v| v.to_vec())
    }

    /// Call before the read transaction whose result may be inserted.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.generation.load(Ordering::Acquire))
    }

    /// Caches what a read transaction begun after `ticket` found, unless a
    /// commit finished since.
    pub(crate) fn insert(&self, ticket: Ticket, key: &str, value: &[u8]) {
        if let Some(mut entries) = self.lock()
            && self.generation.load(Ordering::Acquire) == ticket.0
        {
            entries.insert(key.to_owned(), value.into());
        }
    }

    /// After a commit that wrote `keys`, before its callers hear of it.
    pub(crate) fn written<'a>(&self, keys: impl Iterator<Item = &'a str>) {
        let entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(mut entries) = entries {
            for key in keys {
                entries.remove(key);
            }
        }
    }

    /// After a commit that replaced everything.
    pub(crate) fn replaced(&self) {
        let entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(mut entries) = entries {
            entries.clear();
        }
    }

    /// Bytes held (keys, values and the per-entry overhead).
    #[cfg(test)]
    pub(crate) fn weight(&self) -> u64 {
        self.lock().map(|e| e.weight()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_commit_is_not_cached() {
        let cache = EntryCache::new(1 << 20);
        let ticket = cache.ticket();
        // A commit of "k" finishes between the reader's ticket and insert:
        // what the reader read may predate it.
        cache.written(["k"].into_iter());
        cache.insert(ticket, "k", b"old");
        assert!(cache.get("k").is_none());
        let ticket = cache.ticket();
        cache.insert(ticket, "k", b"new");
        assert_eq!(cache.get("k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_commit_removes_what_it_wrote_and_an_import_everything() {
        let cache = EntryCache::new(1 << 20);
        for k in ["a", "b", "c"] {
            cache.insert(cache.ticket(), k, k.as_bytes());
        }
        cache.written(["a"].into_iter());
        assert!(cache.get("a").is_none());
        assert!(cache.get("b").is_some());
        cache.replaced();
        assert!(cache.get("b").is_none() && cache.get("c").is_none());
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let budget = 64 * 1024;
        let cache = EntryCache::new(budget);
        let value = vec![7u8; 1000];
        for i in 0..1000 {
            cache.insert(cache.ticket(), &format!("key/{i}"), &value);
        }
        assert!(cache.weight() <= budget as u64, "{} > {budget}", cache.weight());
        // It still holds what fits (about 60 entries), not nothing.
        assert!(cache.weight() > budget as u64 / 2);
    }

    #[test]
    fn a_budget_of_zero_turns_caching_off() {
        let cache = EntryCache::new(0);
        cache.insert(cache.ticket(), "k", b"v");
        assert!(cache.get("k").is_none());
    }
}
