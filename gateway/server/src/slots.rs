//! Counted places per key (a token's uploads, a remote address's
//! connections): taken up to a maximum, given back when dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The counts, shared by every slot taken from them.
pub struct Slots<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots(Arc::new(Mutex::new(HashMap::new())))
    }
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// One more for `key`, unless it holds `max` already.
    pub fn take(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { counts: self.0.clone(), key })
    }
}

/// One place counted against its key until dropped.
pub struct Slot<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_given_back() {
        let s: Slots<u8> = Slots::default();
        let a = s.take(1, 2).unwrap();
        let _b = s.take(1, 2).unwrap();
        assert!(s.take(1, 2).is_none(), "past the maximum");
        assert!(s.take(2, 2).is_some(), "another key has its own count");
        drop(a);
        assert!(s.take(1, 2).is_some(), "a dropped slot is given back");
    }
}
