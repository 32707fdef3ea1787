//! An optional per-mount read-through cache of values, as a `SecretStore`
//! that wraps another: entries live `ttl`, at most `max_entries` of them
//! (the oldest goes first), and any write, delete or restore through the
//! gateway drops the name's entries at once. Hits and misses are counted.
//! Changes made outside Keybridge show after at most `ttl`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::names::Cloud;
use crate::store::{
    CloudValue, Deletion, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore, Selector, VersionChange,
    VersionInfo,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: usize,
}

struct Entry {
    at: Instant,
    version: VersionInfo,
    value: CloudValue,
}

#[derive(Default)]
struct State {
    entries: HashMap<(String, SelectorKey), Entry>,
    /// Insertion order, for eviction.
    order: VecDeque<(String, SelectorKey)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SelectorKey {
    Current,
    Number(u64),
    Version(String),
    Stage(String),
}

impl From<&Selector> for SelectorKey {
    fn from(s: &Selector) -> Self {
        match s {
            Selector::Current => SelectorKey::Current,
            Selector::Number(n) => SelectorKey::Number(*n),
            Selector::Version(v) => SelectorKey::Version(v.clone()),
            Selector::Stage(s) => SelectorKey::Stage(s.clone()),
        }
    }
}

pub struct Cached<S> {
    inner: S,
    config: CacheConfig,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<S: SecretStore> Cached<S> {
    pub fn new(inner: S, config: CacheConfig) -> Cached<S> {
        Cached {
            inner,
            config,
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// (hits, misses) since the mount was loaded.
    pub fn counters(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, name: &str) {
        let mut st = self.state();
        st.entries.retain(|(n, _), _| n != name);
        st.order.retain(|(n, _)| n != name);
    }
}

#[async_trait::async_trait]
impl<S: SecretStore> SecretStore for Cached<S> {
    fn cloud(&self) -> Cloud {
        self.inner.cloud()
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        let key = (name.to_string(), SelectorKey::from(at));
        if let Some(e) = self.state().entries.get(&key)
            && e.at.elapsed() < self.config.ttl
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(SecretRead { version: e.version.clone(), value: e.value.clone() });
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let read = self.inner.get(name, at).await?;
        let mut st = self.state();
        if st.entries.remove(&key).is_some() {
            st.order.retain(|k| k != &key);
        }
        while st.entries.len() >= self.config.max_entries.max(1) {
            let Some(old) = st.order.pop_front() else { break };
            st.entries.remove(&old);
        }
        st.order.push_back(key.clone());
        st.entries.insert(key, Entry { at: Instant::now(), version: read.version.clone(), value: read.value.clone() });
        Ok(read)
    }

    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        self.forget(name);
        let r = self.inner.put(name, value, pre, tags).await;
        self.forget(name);
        r
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        self.inner.describe(name).await
    }

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        self.inner.list(page_size, page_token).await
    }

    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        self.forget(name);
        let r = self.inner.delete(name, how).await;
        self.forget(name);
        r
    }

    async fn restore(&self, name: &str) -> Result<()> {
        self.forget(name);
        let r = self.inner.restore(name).await;
        self.forget(name);
        r
    }

    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()> {
        self.forget(name);
        let r = self.inner.change_version(name, id, change).await;
        self.forget(name);
        r
    }

    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.inner.set_tags(name, tags).await
    }

    fn marker(&self, v: &VersionInfo) -> Option<String> {
        self.inner.marker(v)
    }

    async fn stage(&self, name: &str, value: &CloudValue, key: &str) -> Result<VersionInfo> {
        self.forget(name);
        let r = self.inner.stage(name, value, key).await;
        self.forget(name);
        r
    }

    async fn promote(&self, name: &str, id: &str) -> Result<()> {
        self.forget(name);
        let r = self.inner.promote(name, id).await;
        self.forget(name);
        r
    }

    async fn unstage(&self, name: &str, id: &str) -> Result<()> {
        self.forget(name);
        let r = self.inner.unstage(name, id).await;
        self.forget(name);
        r
    }

    async fn retire(&self, name: &str, id: &str) -> Result<()> {
        self.forget(name);
        let r = self.inner.retire(name, id).await;
        self.forget(name);
        r
    }

    async fn head(&self, name: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        self.inner.head(name).await
    }

    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        self.forget(name);
        let r = self.inner.put_numbered(name, value, number, tags).await;
        self.forget(name);
        r
    }
}
