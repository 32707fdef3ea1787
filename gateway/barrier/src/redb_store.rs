//! The embedded physical store: one redb table of `&str -> &[u8]`.
//!
//! Reads run inline (a redb read is a few microseconds), through a bounded
//! cache of entries (ciphertext as stored): a hit is a hash lookup instead
//! of a read transaction and a B-tree walk. The writer thread removes what a
//! commit wrote before it answers, an import clears everything, and a read
//! that began before a commit finished is not cached ([`FillCache`]).
//!
//! Writes go to one writer thread that practises group commit: it takes
//! every batch that is waiting, applies each in the same write transaction
//! (a batch whose checks fail is skipped whole), and makes them durable
//! with a single commit.

use std::path::Path;
use std::sync::{Arc, mpsc};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::fill_cache::{FillCache, Weighted};
use crate::physical::{Batch, Op, Physical};
use crate::{Error, Result};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// Batches folded into one transaction at the most.
const MAX_GROUP: usize = 512;
/// The entry cache of an in-memory store, in bytes.
const IN_MEMORY_ENTRY_CACHE: usize = 4 << 20;

/// Entries by storage key.
type EntryCache = FillCache<String, Arc<[u8]>, Weighted>;

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<()>>,
}

pub struct RedbStore {
    db: Arc<Database>,
    cache: Arc<EntryCache>,
    kind: &'static str,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// How long opening took when the file had not been closed cleanly
    /// and redb had to check and repair it.
    repaired: Option<std::time::Duration>,
}

impl Drop for RedbStore {
    /// Stops the writer after the batches already queued, and waits for it,
    /// so the database is closed cleanly before the process exits (a clean
    /// close spares the next open its recovery pass).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. `cache_bytes` bounds the
    /// memory the store caches in: three quarters hold whole entries (a hit
    /// skips redb), one quarter is redb's page cache (B-tree branches, pages
    /// being written, entries the first part has no room for).
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let entries = cache_bytes / 4 * 3;
        let started = std::time::Instant::now();
        let repairing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = repairing.clone();
        let db = Database::builder()
            .set_cache_size(cache_bytes - entries)
            .set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed))
            .create(path)
            .map_err(Error::backend)?;
        let mut store = Self::start(db, "file", entries)?;
        if repairing.load(std::sync::atomic::Ordering::Relaxed) {
            store.repaired = Some(started.elapsed());
        }
        Ok(store)
    }

    /// Whether opening found the file not closed cleanly (the process was
    /// killed or crashed) and redb checked and repaired it, and how long
    /// that took. Committed data is intact either way; the repair costs
    /// time proportional to the file's size.
    pub fn repaired(&self) -> Option<std::time::Duration> {
        self.repaired
    }

    /// A store in memory, for dev mode and tests.
    pub fn in_memory() -> Result<Self> {
        let db =
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(Error::backend)?;
        // The same entry cache as on disk, so that dev mode and the tests
        // run the same read path.
        Self::start(db, "inmem", IN_MEMORY_ENTRY_CACHE)
    }

    fn start(db: Database, kind: &'static str, entry_cache: usize) -> Result<Self> {
        let txn = db.begin_write().map_err(Error::backend)?;
        txn.open_table(TABLE).map_err(Error::backend)?;
        txn.commit().map_err(Error::backend)?;
        let db = Arc::new(db);
        let cache = Arc::new(EntryCache::weighted(entry_cache));
        let (writer, jobs) = mpsc::channel();
        let (thread_db, thread_cache) = (db.clone(), cache.clone());
        let writer_thread = std::thread::Builder::new()
            .name("keybridge-store-writer".into())
            .spawn(move || writer_loop(&thread_db, &thread_cache, &jobs))
            .map_err(Error::Io)?;
        Ok(Self { db, cache, kind, writer: Some(writer), writer_thread: Some(writer_thread), repaired: None })
    }
}

fn writer_loop(db: &Database, cache: &EntryCache, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let batches: Vec<&Batch> = group.iter().map(|j| &j.batch).collect();
        let applied = apply_group(db, &batches);
        // Whether or not the commit went through, nothing cached for these
        // keys may outlive it (removing is always safe).
        cache.remove(batches.iter().flat_map(|b| b.ops.iter()).map(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
        }));
        match applied {
            Ok(outcomes) => {
                for (job, ok) in group.into_iter().zip(outcomes) {
                    let _ = job.done.send(if ok { Ok(()) } else { Err(Error::Conflict) });
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in group {
                    let _ = job.done.send(Err(Error::backend(std::io::Error::other(message.clone()))));
                }
            }
        }
    }
}

/// Applies each batch whose checks hold, in order, then commits once.
/// Returns, per batch, whether it was applied.
fn apply_group(db: &Database, batches: &[&Batch]) -> Result<Vec<bool>, redb::Error> {
    let txn = db.begin_write()?;
    let mut outcomes = Vec::with_capacity(batches.len());
    {
        let mut table = txn.open_table(TABLE)?;
        for batch in batches {
            let mut holds = true;
            for check in &batch.checks {
                let current = table.get(check.key.as_str())?;
                let matches = match (&current, &check.value) {
                    (None, None) => true,
                    (Some(cur), Some(want)) => cur.value() == want.as_slice(),
                    _ => false,
                };
                if !matches {
                    holds = false;
                    break;
                }
            }
            if holds {
                for op in &batch.ops {
                    match op {
                        Op::Put { key, value } => {
                            table.insert(key.as_str(), value.as_slice())?;
                        }
                        Op::Delete { key } => {
                            table.remove(key.as_str())?;
                        }
                    }
                }
            }
            outcomes.push(holds);
        }
    }
    txn.commit()?;
    Ok(outcomes)
}

#[async_trait]
impl Physical for RedbStore {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let ticket = match self.cache.lookup(key) {
            Ok(hit) => return Ok(Some(hit.to_vec())),
            Err(ticket) => ticket,
        };
        let txn = self.db.begin_read().map_err(Error::backend)?;
        let table = txn.open_table(TABLE).map_err(Error::backend)?;
        let Some(value) = table.get(key).map_err(Error::backend)? else {
            return Ok(None);
        };
        let value = value.value();
        self.cache.fill(ticket, key.to_owned(), value.into());
        Ok(Some(value.to_vec()))
    }

    async fn list(&self, prefix: &str, start: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let txn = self.db.begin_read().map_err(Error::backend)?;
        let table = txn.open_table(TABLE).map_err(Error::backend)?;
        let from = match start {
            Some(s) if s >= prefix => s,
            _ => prefix,
        };
        let mut keys = Vec::new();
        for entry in table.range(from..).map_err(Error::backend)? {
            let (k, _) = entry.map_err(Error::backend)?;
            let k = k.value();
            if !k.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            keys.push(k.to_owned());
        }
        Ok(keys)
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, result) = oneshot::channel();
        self.writer
            .as_ref()
            .ok_or_else(|| Error::backend(std::io::Error::other("the store is closing")))?
            .send(Job { batch, done })
            .map_err(|_| Error::backend(std::io::Error::other("the store's writer thread stopped")))?;
        result.await.map_err(|_| Error::backend(std::io::Error::other("the store's writer thread stopped")))?
    }

    fn export(&self, sink: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        let txn = self.db.begin_read().map_err(Error::backend)?;
        let table = txn.open_table(TABLE).map_err(Error::backend)?;
        for entry in table.iter().map_err(Error::backend)? {
            let (k, v) = entry.map_err(Error::backend)?;
            sink(k.value(), v.value())?;
        }
        Ok(())
    }

    fn import(&self, entries: &mut dyn Iterator<Item = Result<(String, Vec<u8>)>>) -> Result<u64> {
        let txn = self.db.begin_write().map_err(Error::backend)?;
        let mut count = 0;
        {
            txn.delete_table(TABLE).map_err(Error::backend)?;
            let mut table = txn.open_table(TABLE).map_err(Error::backend)?;
            for entry in entries {
                // An error drops `txn` uncommitted: nothing changes.
                let (k, v) = entry?;
                table.insert(k.as_str(), v.as_slice()).map_err(Error::backend)?;
                count += 1;
            }
        }
        let committed = txn.commit().map_err(Error::backend);
        self.cache.clear();
        committed?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physical::Check;

    fn put(k: &str, v: &[u8]) -> Op {
        Op::Put { key: k.into(), value: v.to_vec() }
    }

    #[tokio::test]
    async fn batch_applies_whole_or_not_at_all() {
        let store = RedbStore::in_memory().unwrap();
        store.commit(Batch { checks: vec![], ops: vec![put("a", b"1")] }).await.unwrap();
        // A failed check leaves every op of the batch unapplied.
        let err = store
            .commit(Batch {
                checks: vec![Check { key: "a".into(), value: Some(b"2".to_vec()) }],
                ops: vec![put("b", b"x"), put("a", b"3")],
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict));
        assert_eq!(store.get("a").await.unwrap().unwrap(), b"1");
        assert!(store.get("b").await.unwrap().is_none());
        // Absence as a precondition.
        store
            .commit(Batch { checks: vec![Check { key: "b".into(), value: None }], ops: vec![put("b", b"x")] })
            .await
            .unwrap();
        assert_eq!(store.get("b").await.unwrap().unwrap(), b"x");
    }

    #[tokio::test]
    async fn concurrent_checked_writers_see_one_winner() {
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .commit(Batch { checks: vec![Check { key: "k".into(), value: None }], ops: vec![put("k", &[i])] })
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
    }

    #[tokio::test]
    async fn list_respects_prefix_start_and_limit() {
        let store = RedbStore::in_memory().unwrap();
        let ops = ["p/a", "p/b", "p/c", "q/a", "o"].iter().map(|k| put(k, b"")).collect();
        store.commit(Batch { checks: vec![], ops }).await.unwrap();
        assert_eq!(store.list("p/", None, 10).await.unwrap(), ["p/a", "p/b", "p/c"]);
        assert_eq!(store.list("p/", Some("p/b"), 10).await.unwrap(), ["p/b", "p/c"]);
        assert_eq!(store.list("p/", None, 2).await.unwrap(), ["p/a", "p/b"]);
    }

    #[tokio::test]
    async fn reads_after_a_write_never_see_the_cached_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db"), 1 << 20).unwrap();
        store.commit(Batch { checks: vec![], ops: vec![put("k", b"1")] }).await.unwrap();
        for round in 0..3u8 {
            // Twice: the first read fills the cache, the second is a hit.
            assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&[b'1' + round][..]));
            assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&[b'1' + round][..]));
            store.commit(Batch { checks: vec![], ops: vec![put("k", &[b'2' + round])] }).await.unwrap();
        }
        store.commit(Batch { checks: vec![], ops: vec![Op::Delete { key: "k".into() }] }).await.unwrap();
        assert!(store.get("k").await.unwrap().is_none());
        // A batch whose check fails changes nothing, cached or not.
        store.commit(Batch { checks: vec![], ops: vec![put("k", b"x")] }).await.unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"x"[..]));
        let stale = Check { key: "k".into(), value: Some(b"other".to_vec()) };
        assert!(matches!(
            store.commit(Batch { checks: vec![stale], ops: vec![put("k", b"y")] }).await,
            Err(Error::Conflict)
        ));
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"x"[..]));
    }

    /// Readers racing a writer never read a value older than the last
    /// commit that returned before their read began (fails if the cache
    /// keeps what a read that raced a commit found).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_readers_never_go_back_past_a_finished_commit() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("db"), 1 << 20).unwrap());
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        store.commit(Batch { checks: vec![], ops: vec![put("k", &0u64.to_be_bytes())] }).await.unwrap();
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (store, committed, stop) = (store.clone(), committed.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let floor = committed.load(Ordering::Acquire);
                    let v = store.get("k").await.unwrap().unwrap();
                    let v = u64::from_be_bytes(v.as_slice().try_into().unwrap());
                    assert!(v >= floor, "read {v} after commit {floor} had returned");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            }));
        }
        for i in 1..=1500u64 {
            store.commit(Batch { checks: vec![], ops: vec![put("k", &i.to_be_bytes())] }).await.unwrap();
            committed.store(i, Ordering::Release);
        }
        stop.store(true, Ordering::Release);
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
    }

    #[tokio::test]
    async fn import_replaces_everything_or_nothing() {
        let store = RedbStore::in_memory().unwrap();
        store.commit(Batch { checks: vec![], ops: vec![put("old", b"1")] }).await.unwrap();
        let mut failing =
            vec![Ok(("new".to_string(), b"2".to_vec())), Err(Error::Snapshot("truncated".into()))].into_iter();
        assert!(matches!(store.import(&mut failing), Err(Error::Snapshot(m)) if m == "truncated"));
        assert!(store.get("old").await.unwrap().is_some());
        let mut good = vec![Ok(("new".to_string(), b"2".to_vec()))].into_iter();
        assert_eq!(store.import(&mut good).unwrap(), 1);
        assert!(store.get("old").await.unwrap().is_none());
        let mut seen = Vec::new();
        store
            .export(&mut |k, v| {
                seen.push((k.to_string(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![("new".to_string(), b"2".to_vec())]);
    }
}
