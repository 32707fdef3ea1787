//! The journal: every write, delete or rotation under a rule's source is
//! announced here before it happens, so a crash never leaves a replica
//! unaware of a change. The worker drains it.

use keybridge_barrier::WriteBatch;

use crate::Result;
use crate::core::{Core, encode_json};
use crate::reconciler::{self as sync, JOURNAL, Rule};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    pub rule: String,
    pub path: String,
    pub at_ms: u64,
}

impl Core {
    // ----- the journal ------------------------------------------------------------

    /// Records, before a write to `path`, that the rules covering it must
    /// replicate it. Cheap when no rule covers the path.
    pub(crate) async fn sync_announce(&self, path: &str) -> Result<bool> {
        let rules = self.sync_rules().await?;
        let covering: Vec<&Rule> = rules.iter().filter(|r| r.covers(path)).collect();
        if covering.is_empty() {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        let at = sync::now_ms();
        for r in &covering {
            let e = JournalEntry { rule: r.name.clone(), path: path.to_string(), at_ms: at };
            batch.put(format!("{JOURNAL}{at:016}-{}", uuid::Uuid::new_v4().simple()), encode_json(&e));
            for t in &r.targets {
                if let Some(tp) = r.target_path(t, path) {
                    self.sync.set_status(r, path, &tp, "pending", String::new(), 0);
                }
            }
        }
        self.barrier.commit(batch).await?;
        Ok(true)
    }

    pub(crate) fn sync_wake(&self) {
        self.sync.notify.notify_one();
    }

    /// Runs a change other than a put (delete, undelete, destroy,
    /// restore) with the rules covering `path` journaled before it, as a put
    /// is: a journal that cannot be written stops the change (a crash after
    /// the change then never leaves a replica unaware of it). A change that
    /// fails leaves an entry the reconciler finds nothing to do for.
    pub(crate) async fn journaled<T>(
        &self,
        path: &str,
        change: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let announced = self.sync_announce(path).await?;
        let r = change.await;
        if r.is_ok() {
            self.sync.publish(path, "changed", 0, "");
        }
        if announced {
            self.sync_wake();
        }
        r
    }
}
