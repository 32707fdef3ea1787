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

impl Reconciler {
    /// Records, before a write to `path`, that the rules covering it must
    /// replicate it. Cheap when no rule covers the path. `true` when it
    /// wrote an entry (then [`Reconciler::wake`] after the write).
    pub async fn announce(&self, host: &dyn Host, path: &str) -> Result<bool> {
        let rules = self.rules(host).await?;
        let covering: Vec<&Rule> = rules.iter().filter(|r| r.covers(path)).collect();
        if covering.is_empty() {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        let at = now_ms();
        for r in &covering {
            let e = JournalEntry { rule: r.name.clone(), path: path.to_string(), at_ms: at };
            batch.put(format!("{JOURNAL}{at:016}-{}", uuid::Uuid::new_v4().simple()), encode_json(&e));
            for t in &r.targets {
                if let Some(tp) = r.target_path(t, path) {
                    self.set_status(r, path, &tp, "pending", String::new(), 0);
                }
            }
        }
        self.barrier.commit(batch).await?;
        Ok(true)
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
        if announced {
            self.wake();
        }
        r
    }
}
