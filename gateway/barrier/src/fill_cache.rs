//! A cache that readers fill from the store and writers invalidate, without
//! the lost-invalidation race: a reader loads an entry, a writer commits a
//! change and invalidates, then the reader inserts what it loaded, and the
//! stale entry (a revoked token, an old policy, a rule list without the new
//! rule, an overwritten entry of the store) would outlive the change.
//!
//! A reader's miss gives it a [`Ticket`] before it reads the store; every
//! invalidation, made after its commit, advances a generation; a fill is
//! kept only if the generation has not moved since the ticket. Otherwise the
//! reader still uses what it loaded (its read may have begun before the
//! change), but the next one reads again.
//!
//! Where the entries live is a [`Slots`]: [`Counted`] (at most N entries; a
//! fill into a full cache empties it first) for the core's small caches of
//! tokens, ACLs and rules, [`Weighted`] (a byte budget with eviction) for the
//! store's entries.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

/// Where a [`FillCache`] keeps its entries.
pub trait Slots<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized;
    fn put(&mut self, key: K, value: V);
    fn forget<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized;
    fn forget_all(&mut self);
}

/// At most `max` entries: a fill into a full cache empties it first.
pub struct Counted<K, V> {
    map: HashMap<K, V>,
    max: usize,
}

impl<K: Hash + Eq, V: Clone> Slots<K, V> for Counted<K, V> {
    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).cloned()
    }
    fn put(&mut self, key: K, value: V) {
        if self.map.len() >= self.max {
            self.map.clear();
        }
        self.map.insert(key, value);
    }
    fn forget<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key);
    }
    fn forget_all(&mut self) {
        self.map.clear();
    }
}

/// Bytes an entry of [`Weighted`] is charged beyond its key and value: the
/// map slot, the two heap allocations' headers and the cache's bookkeeping.
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
pub struct ByteLen;

impl quick_cache::Weighter<String, Arc<[u8]>> for ByteLen {
    fn weight(&self, key: &String, value: &Arc<[u8]>) -> u64 {
        key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Byte strings under a budget of key, value and per-entry overhead bytes,
/// evicting the least useful (quick_cache's policy) to make room; a budget
/// of 0 caches nothing.
pub struct Weighted(quick_cache::unsync::Cache<String, Arc<[u8]>, ByteLen>);

impl Slots<String, Arc<[u8]>> for Weighted {
    fn get<Q>(&self, key: &Q) -> Option<Arc<[u8]>>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(key).cloned()
    }
    fn put(&mut self, key: String, value: Arc<[u8]>) {
        if self.0.capacity() > 0 {
            self.0.insert(key, value);
        }
    }
    fn forget<Q>(&mut self, key: &Q)
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(key);
    }
    fn forget_all(&mut self) {
        self.0.clear();
    }
}

pub struct FillCache<K, V, S = Counted<K, V>> {
    inner: RwLock<Inner<S>>,
    _entries: std::marker::PhantomData<fn(K) -> V>,
}

struct Inner<S> {
    slots: S,
    generation: u64,
}

/// The generation a load began in.
#[derive(Clone, Copy)]
pub struct Ticket(u64);

impl<K: Hash + Eq, V: Clone> FillCache<K, V> {
    /// At most `max` entries: a fill into a full cache empties it first.
    pub fn new(max: usize) -> Self {
        Self::with_slots(Counted { map: HashMap::new(), max })
    }
}

impl FillCache<String, Arc<[u8]>, Weighted> {
    /// Byte strings under a budget of `bytes` (0: cache nothing).
    pub fn weighted(bytes: usize) -> Self {
        // Entries of secrets are around a kilobyte; the estimate only sizes
        // the initial table.
        let estimate = (bytes / 1024).max(16);
        Self::with_slots(Weighted(quick_cache::unsync::Cache::with_weighter(estimate, bytes as u64, ByteLen)))
    }

    /// Bytes held (keys, values and the per-entry overhead).
    pub fn weight(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).slots.0.weight()
    }
}

impl<K, V, S: Slots<K, V>> FillCache<K, V, S> {
    fn with_slots(slots: S) -> Self {
        FillCache { inner: RwLock::new(Inner { slots, generation: 0 }), _entries: std::marker::PhantomData }
    }

    /// The cached value, or on a miss the ticket to load it with.
    pub fn lookup<Q>(&self, key: &Q) -> Result<V, Ticket>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.slots.get(key).ok_or(Ticket(inner.generation))
    }

    /// The current generation, for [`FillCache::changed_since`].
    pub fn ticket(&self) -> Ticket {
        Ticket(self.inner.read().unwrap_or_else(|p| p.into_inner()).generation)
    }

    /// Keeps `value` unless an invalidation came after `ticket`. Returns
    /// whether it was kept.
    pub fn fill(&self, ticket: Ticket, key: K, value: V) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.generation != ticket.0 {
            return false;
        }
        inner.slots.put(key, value);
        true
    }

    /// Whether an invalidation came after `ticket`.
    pub fn changed_since(&self, ticket: Ticket) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).generation != ticket.0
    }

    /// Forgets `keys`; call after the change is committed.
    pub fn remove<'a, Q>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.generation += 1;
        for k in keys {
            inner.slots.forget(k);
        }
    }

    /// Forgets everything; call after the change is committed.
    pub fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.generation += 1;
        inner.slots.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_began_before_an_invalidation_is_not_kept() {
        let cache: FillCache<String, u32> = FillCache::new(8);
        // A reader misses, takes its ticket and reads the old value...
        let ticket = cache.lookup("token").unwrap_err();
        // ...a writer commits and invalidates...
        cache.remove(["token"]);
        // ...and the reader's stale value must not be cached.
        assert!(cache.changed_since(ticket));
        assert!(!cache.fill(ticket, "token".into(), 1));
        assert!(cache.lookup("token").is_err());
        // A reader that began after the invalidation fills it.
        let ticket = cache.lookup("token").unwrap_err();
        assert!(cache.fill(ticket, "token".into(), 2));
        assert_eq!(cache.lookup("token").ok(), Some(2));
        cache.clear();
        assert!(cache.lookup("token").is_err());
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache: FillCache<u32, u32> = FillCache::new(2);
        for k in 0..3 {
            let t = cache.ticket();
            cache.fill(t, k, k);
        }
        assert_eq!((cache.lookup(&0).ok(), cache.lookup(&1).ok(), cache.lookup(&2).ok()), (None, None, Some(2)));
    }

    fn bytes(v: &[u8]) -> Arc<[u8]> {
        v.into()
    }

    fn get(cache: &FillCache<String, Arc<[u8]>, Weighted>, key: &str) -> Option<Arc<[u8]>> {
        cache.lookup(key).ok()
    }

    #[test]
    fn a_read_that_raced_a_commit_is_not_cached() {
        let cache = FillCache::weighted(1 << 20);
        let ticket = cache.ticket();
        // A commit of "k" finishes between the reader's ticket and insert:
        // what the reader read may predate it.
        cache.remove(["k"]);
        cache.fill(ticket, "k".into(), bytes(b"old"));
        assert!(get(&cache, "k").is_none());
        let ticket = cache.ticket();
        cache.fill(ticket, "k".into(), bytes(b"new"));
        assert_eq!(get(&cache, "k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_commit_removes_what_it_wrote_and_an_import_everything() {
        let cache = FillCache::weighted(1 << 20);
        for k in ["a", "b", "c"] {
            cache.fill(cache.ticket(), k.into(), bytes(k.as_bytes()));
        }
        cache.remove(["a"]);
        assert!(get(&cache, "a").is_none());
        assert!(get(&cache, "b").is_some());
        cache.clear();
        assert!(get(&cache, "b").is_none() && get(&cache, "c").is_none());
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let budget = 64 * 1024;
        let cache = FillCache::weighted(budget);
        let value = bytes(&[7u8; 1000]);
        for i in 0..1000 {
            cache.fill(cache.ticket(), format!("key/{i}"), value.clone());
        }
        assert!(cache.weight() <= budget as u64, "{} > {budget}", cache.weight());
        // It still holds what fits (about 60 entries), not nothing.
        assert!(cache.weight() > budget as u64 / 2);
    }

    #[test]
    fn a_budget_of_zero_turns_caching_off() {
        let cache = FillCache::weighted(0);
        cache.fill(cache.ticket(), "k".into(), bytes(b"v"));
        assert!(get(&cache, "k").is_none());
    }
}
