//! Leader work: the singleton jobs (the reconciler's passes, lease expiry,
//! rotation schedules, purges of removed mounts) that exactly one node of
//! a shared store runs. Such a job runs inside [`scope`]; a store shared by
//! several nodes fences every commit made inside it (and
//! [`crate::Barrier::fence_check`], before an external call) on the epoch
//! this node leads at. Requests are not leader work: any node commits them.

use std::future::Future;

tokio::task_local! {
    static LEADER_WORK: ();
}

/// Runs `work` as leader work (in this task; a task it spawns is not).
pub async fn scope<F: Future>(work: F) -> F::Output {
    LEADER_WORK.scope((), work).await
}

/// Whether the current task runs leader work.
pub fn active() -> bool {
    LEADER_WORK.try_with(|_| ()).is_ok()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn only_the_scoped_task_is_leader_work() {
        assert!(!super::active());
        assert!(super::scope(async { super::active() }).await);
        let spawned = super::scope(async { tokio::spawn(async { super::active() }).await.unwrap() }).await;
        assert!(!spawned, "a spawned task is outside the scope");
        assert!(!super::active());
    }
}
