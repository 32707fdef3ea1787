//! The journal: every write, delete or rotation under a rule's source is
//! announced here before it happens, so a crash never leaves a replica
//! unaware of a change. The worker drains it.

use keybridge_barrier::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::{Host, JOURNAL, Reconciler, Result, Rule, encode_json, now_ms};

/// One announced change: a rule must bring its replicas of `path` in line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalEntry {
    pub rule: String,
    pub path: String,
    pub at_ms: u64,
}

/// The journal entries an announcement wrote, to touch once the change it
/// announced happened (see [`Reconciler::touch`]).
#[derive(Default)]
pub struct Announced(Vec<(String, JournalEntry)>);

impl Announced {
    /// Whether any entry was written (then [`Reconciler::wake`] after the
    /// change).
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// Adds what a second announcement wrote.
    pub fn extend(&mut self, other: Announced) {
        self.0.extend(other.0);
    }
}

impl Reconciler {
    /// Records, before a write to `path`, that the rules covering it must
    /// replicate it. Cheap when no rule covers the path. After the write,
    /// [`Reconciler::touch`] what it returns.
    pub async fn announce(&self, host: &dyn Host, path: &str) -> Result<Announced> {
        let rules = self.rules(host).await?;
        let covering: Vec<&Rule> = rules.iter().filter(|r| r.covers(path)).collect();
        if covering.is_empty() {
            return Ok(Announced::default());
        }
        let mut batch = WriteBatch::new();
        let at = now_ms();
        let mut written = Vec::new();
        for r in &covering {
            let e = JournalEntry { rule: r.name.clone(), path: path.to_string(), at_ms: at };
            let key = format!("{JOURNAL}{at:016}-{}", uuid::Uuid::new_v4().simple());
            batch.put(key.clone(), encode_json(&e));
            written.push((key, e));
            for t in &r.targets {
                if let Some(tp) = r.target_path(t, path) {
                    self.set_status(r, path, &tp, "pending", String::new(), 0);
                }
            }
        }
        self.barrier.commit(batch).await?;
        Ok(Announced(written))
    }

    /// After the change an announcement was for: writes its entries again.
    /// A pass that read them before the change landed (another node's, or
    /// this one's while the write was slow) replicated what it read then;
    /// its removal of the entries is conditioned on what it read, so it
    /// leaves them, and a later pass replicates the change. Entries a pass
    /// removed already are written anew.
    pub async fn touch(&self, announced: &Announced) -> Result<()> {
        if !announced.any() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for (key, e) in &announced.0 {
            batch.put(key.clone(), encode_json(e));
        }
        self.barrier.commit(batch).await?;
        Ok(())
    }

    /// Has the worker run a pass soon.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Runs a change other than a put (delete, undelete, destroy,
    /// restore) with the rules covering `path` journaled before it, as a put
    /// is: a journal that cannot be written stops the change (a crash after
    /// the change then never leaves a replica unaware of it). A change that
    /// fails leaves an entry the reconciler finds nothing to do for.
    pub async fn journaled<T, E: From<crate::Error>>(
        &self,
        host: &dyn Host,
        path: &str,
        change: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E> {
        let announced = self.announce(host, path).await?;
        let r = change.await;
        if r.is_ok() {
            self.publish(path, "changed", 0, "");
        }
        if let Err(e) = self.touch(&announced).await {
            tracing::warn!(path, error = %e, "sync: cannot mark the journal after a change; the next scan finds it");
        }
        if announced.any() {
            self.wake();
        }
        r
    }
}
