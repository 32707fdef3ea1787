//! Leader work: the singleton jobs (the reconciler's passes, lease expiry,
//! rotation schedules, purges of removed mounts) that exactly one node of
//! a shared store runs. Such a job runs inside [`scope`]; a store shared by
//! several nodes fences every commit made inside it on the epoch this node
//! leads at, and [`check`], called before each external call (a cloud
//! write, a plugin revoke), asks the store whether this node still leads.
//! Requests are not leader work: any node commits them.

use std::future::Future;
use std::sync::Arc;

use crate::Physical;

tokio::task_local! {
    static LEADER_WORK: Arc<dyn Physical>;
}

/// Runs `work` as leader work on `store` (in this task; a task it spawns
/// is not).
pub async fn scope<F: Future>(store: Arc<dyn Physical>, work: F) -> F::Output {
    LEADER_WORK.scope(store, work).await
}

/// Whether the current task runs leader work.
pub fn active() -> bool {
    LEADER_WORK.try_with(|_| ()).is_ok()
}

/// In leader work: fails with [`crate::Error::Fenced`] unless this node
/// still leads its store. Outside it: passes.
pub async fn check() -> crate::Result<()> {
    match LEADER_WORK.try_with(Arc::clone) {
        Ok(store) => store.fence_check().await,
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_scoped_task_is_leader_work() {
        let store: Arc<dyn Physical> = Arc::new(crate::RedbStore::in_memory().unwrap());
        assert!(!active());
        assert!(scope(store.clone(), async { active() && check().await.is_ok() }).await);
        let spawned = scope(store, async { tokio::spawn(async { active() }).await.unwrap() }).await;
        assert!(!spawned, "a spawned task is outside the scope");
        assert!(!active());
    }
}
