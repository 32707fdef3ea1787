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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_in_memory() {
        crate::conformance::run(Arc::new(RedbStore::in_memory().unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run(Arc::new(RedbStore::open(&dir.path().join("db"), 1 << 20).unwrap())).await;
    }
}
