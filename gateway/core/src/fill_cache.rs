//! A cache that readers fill from the store and writers invalidate, without
//! the lost-invalidation race: a reader loads an entry, a writer commits a
//! change and invalidates, then the reader inserts what it loaded, and the
//! stale entry (a revoked token, an old policy, a rule list without the new
//! rule) would outlive the change.
//!
//! A reader's miss gives it a [`Ticket`] before it reads the store; every
//! invalidation, made after its commit, advances a generation; a fill is
//! kept only if the generation has not moved since the ticket. Otherwise the
//! reader still uses what it loaded (its read may have begun before the
//! change), but the next one reads again.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

pub(crate) struct FillCache<K, V> {
    inner: RwLock<Inner<K, V>>,
    max: usize,
}

struct Inner<K, V> {
    map: HashMap<K, V>,
    generation: u64,
}

/// The generation a load began in.
#[derive(Clone, Copy)]
pub(crate) struct Ticket(u64);

impl<K: Hash + Eq, V: Clone> FillCache<K, V> {
    /// At most `max` entries: a fill into a full cache empties it first.
    pub(crate) fn new(max: usize) -> Self {
        FillCache { inner: RwLock::new(Inner { map: HashMap::new(), generation: 0 }), max }
    }

    /// The cached value, or on a miss the ticket to load it with.
    pub(crate) fn lookup<Q>(&self, key: &Q) -> Result<V, Ticket>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.map.get(key).cloned().ok_or(Ticket(inner.generation))
    }

    /// The current generation, for [`FillCache::changed_since`].
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.inner.read().unwrap_or_else(|p| p.into_inner()).generation)
    }

    /// Keeps `value` unless an invalidation came after `ticket`. Returns
    /// whether it was kept.
    pub(crate) fn fill(&self, ticket: Ticket, key: K, value: V) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.generation != ticket.0 {
            return false;
        }
        if inner.map.len() >= self.max {
            inner.map.clear();
        }
        inner.map.insert(key, value);
        true
    }

    /// Whether an invalidation came after `ticket`.
    pub(crate) fn changed_since(&self, ticket: Ticket) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).generation != ticket.0
    }

    /// Forgets `keys`; call after the change is committed.
    pub(crate) fn remove<'a, Q>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.generation += 1;
        for k in keys {
            inner.map.remove(k);
        }
    }

    /// Forgets everything; call after the change is committed.
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.generation += 1;
        inner.map.clear();
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
}
