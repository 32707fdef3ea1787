//! Admission to the instance pool, and dropping a call's store after its
//! answer has gone back.
//!
//! Dropping a store resets its pool slot: the pages the call dirtied are
//! found with `PAGEMAP_SCAN` and restored, the rest decommitted. That is
//! about 8 µs a call (docs/BENCHMARKS.md, "WASM calls: where the time
//! went"), which the caller used to wait for. A finished call's store now
//! goes on a queue, and a task of its own drops it once the serving thread
//! has moved on (the answer written), so the reset runs while the answer
//! travels.
//!
//! A store on the queue still holds its slot. So:
//! - admission counts slots itself, one permit per store from its creation
//!   to its drop. A call that finds no permit free drops a queued store
//!   itself and takes its slot; it is refused only when every slot is held
//!   by a call still running. It never waits for a queued store's task;
//!   only, when the queue is empty, for a drop already under way on another
//!   thread (a few microseconds), so that a slot on its way back is not
//!   refused.
//! - a thread's next call first drops the store of that thread's last call,
//!   if its task has not yet: a task that makes calls in a loop without
//!   yielding would otherwise leave a trail of them, and every call would
//!   get a cold slot.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;

pub(crate) const POOL_FULL: &str =
    "too many plugin calls at once: every instance slot of the server's pool is in use; retry";

pub(crate) struct Slots {
    /// One permit per slot of the pool (`max_instances`).
    free: Arc<Semaphore>,
    /// Finished calls' stores not dropped yet, oldest first, by number.
    queue: Mutex<VecDeque<(u64, Finished)>>,
    next: AtomicU64,
    /// Stores taken off the queue and being dropped.
    dropping: AtomicUsize,
}

/// A slot held from before a store is created until after it is dropped.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// A finished call's store and then its slot: dropped in that order (the
/// fields of a tuple drop in order, also while a panic unwinds).
type Finished = Box<dyn Send>;

thread_local! {
    /// The store this thread's last call queued.
    static LAST: RefCell<Option<(Weak<Slots>, u64)>> = const { RefCell::new(None) };
}

/// A store taken off the queue: dropping this drops it, gives its slot
/// back, and only then stops counting it as being dropped (`admit` relies
/// on that order), also if dropping the store panics.
struct Taken<'a> {
    slots: &'a Slots,
    finished: Option<Finished>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done(&self.slots.dropping);
        drop(self.finished.take());
    }
}

/// A queued store's ticket, held by its task: dropping it drops the store
/// unless something dropped it first (so a task dropped unrun, as at a
/// runtime's shutdown, still does).
struct Queued {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.slots.drop_queued(self.id);
    }
}

impl Slots {
    pub(crate) fn new(size: u32) -> Arc<Slots> {
        Arc::new(Slots {
            free: Arc::new(Semaphore::new(size as usize)),
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            dropping: AtomicUsize::new(0),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Finished)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the store at the position `which` finds off the queue.
    fn take(&self, which: impl FnOnce(&VecDeque<(u64, Finished)>) -> Option<usize>) -> Option<Taken<'_>> {
        let mut q = self.queue();
        let (_, finished) = which(&q).and_then(|at| q.remove(at))?;
        // Counted before the queue is let go: a caller that then finds the
        // queue empty knows this slot is on its way back.
        self.dropping.fetch_add(1, Ordering::AcqRel);
        Some(Taken { slots: self, finished: Some(finished) })
    }

    /// Drops the queued store `id`, unless something dropped it first.
    fn drop_queued(&self, id: u64) {
        drop(self.take(|q| q.iter().position(|(i, _)| *i == id)));
    }

    fn try_slot(&self) -> Option<Slot> {
        self.free.clone().try_acquire_owned().ok().map(|p| Slot { _permit: p })
    }

    /// A free slot; `None` when every slot is held by a call still running.
    pub(crate) fn admit(&self) -> Option<Slot> {
        if let Some((slots, id)) = LAST.with(|l| l.borrow_mut().take())
            && let Some(slots) = slots.upgrade()
        {
            slots.drop_queued(id);
        }
        loop {
            if let Some(slot) = self.try_slot() {
                return Some(slot);
            }
            // Full: drop the oldest finished call's store and try for its
            // slot (a call admitted meanwhile may take it: then the next).
            if let Some(oldest) = self.take(|q| (!q.is_empty()).then_some(0)) {
                drop(oldest);
                continue;
            }
            if self.dropping.load(Ordering::Acquire) == 0 {
                // A drop that ended since the first try gave its slot back
                // before it stopped counting: look once more.
                return self.try_slot();
            }
            // A store is being dropped on another thread, synchronously.
            std::thread::yield_now();
        }
    }

    /// Queues `store` (and then `slot`) to be dropped by a task of its own,
    /// or by whichever comes first of the thread's next call and a call
    /// that finds the pool full; dropped at once when there is no runtime.
    pub(crate) fn dispose<T: Send + 'static>(self: &Arc<Self>, store: Store<T>, slot: Slot) {
        let finished: Finished = Box::new((store, slot));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return drop(finished);
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.queue().push_back((id, finished));
        // The thread's earlier store, if still queued, is left to its task.
        LAST.with(|l| *l.borrow_mut() = Some((Arc::downgrade(self), id)));
        let ticket = Queued { slots: self.clone(), id };
        rt.spawn(async move {
            // After the task that made the call has finished its turn, and
            // the connection's task has written the answer.
            tokio::task::yield_now().await;
            drop(ticket);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store() -> Store<()> {
        Store::new(&wasmtime::Engine::default(), ())
    }

    fn queued(s: &Slots) -> usize {
        s.queue().len()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_is_dropped_after_the_caller_has_moved_on() {
        let slots = Slots::new(1);
        let slot = slots.admit().expect("a free slot");
        slots.dispose(store(), slot);
        // The caller goes on first: the store still holds the only slot.
        assert_eq!(queued(&slots), 1);
        assert_eq!(slots.free.available_permits(), 0);
        // Its task drops it once the caller yields.
        tokio::time::timeout(Duration::from_secs(5), async {
            while queued(&slots) > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("dropped in time");
        assert_eq!(slots.free.available_permits(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_thread_keeps_at_most_one_store_waiting() {
        let slots = Slots::new(128);
        // Calls in a loop that never yields: their tasks never run.
        for _ in 0..10 {
            let slot = slots.admit().expect("a free slot");
            slots.dispose(store(), slot);
            assert_eq!(queued(&slots), 1, "each call drops the one before it");
        }
        assert_eq!(slots.free.available_permits(), 127);
    }

    /// Queues a store from another thread, so that this thread's next call
    /// has none of its own to drop first.
    fn queue_elsewhere(slots: &Arc<Slots>, slot: Slot) {
        let (rt, other) = (tokio::runtime::Handle::current(), slots.clone());
        std::thread::spawn(move || {
            let _in = rt.enter();
            other.dispose(store(), slot);
        })
        .join()
        .expect("the other thread");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_pool_gives_a_new_call_a_finished_calls_slot_and_no_more() {
        let slots = Slots::new(2);
        let running = slots.admit().expect("first");
        let finished = slots.admit().expect("second");
        queue_elsewhere(&slots, finished);
        assert_eq!((queued(&slots), slots.free.available_permits()), (1, 0));
        // Respected: the finished call's store is dropped and its slot taken.
        let third = slots.admit();
        assert!(third.is_some(), "a slot held only by a finished call must be given, not refused");
        assert_eq!(queued(&slots), 0);
        // Exceeded: both slots held by running calls, nothing queued.
        assert!(slots.admit().is_none(), "a third running call on a pool of two must be refused");
        drop((running, third));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn calls_one_after_another_never_find_a_small_pool_full() {
        let slots = Slots::new(1);
        for i in 0..100 {
            let slot = slots.admit().unwrap_or_else(|| panic!("call {i} was refused"));
            // Half from another thread: then only the full pool's own
            // dropping makes room.
            if i % 2 == 0 {
                queue_elsewhere(&slots, slot);
            } else {
                slots.dispose(store(), slot);
            }
        }
    }

    /// A store whose drop says it has begun, takes a while, and may panic.
    struct Slow {
        begun: std::sync::mpsc::Sender<()>,
        takes: Duration,
        panics: bool,
    }

    impl Drop for Slow {
        fn drop(&mut self) {
            let _ = self.begun.send(());
            std::thread::sleep(self.takes);
            assert!(!self.panics, "this store's drop panics");
        }
    }

    /// Queues a `Slow` store from another thread and has a third thread
    /// take it off the queue and drop it; returns once that drop has begun.
    fn drop_elsewhere(slots: &Arc<Slots>, slot: Slot, takes: Duration, panics: bool) -> std::thread::JoinHandle<()> {
        let (tx, begun) = std::sync::mpsc::channel();
        let (rt, other) = (tokio::runtime::Handle::current(), slots.clone());
        std::thread::spawn(move || {
            let _in = rt.enter();
            other.dispose(Store::new(&wasmtime::Engine::default(), Slow { begun: tx, takes, panics }), slot);
        })
        .join()
        .expect("the other thread");
        let other = slots.clone();
        let dropping = std::thread::spawn(move || drop(other.take(|q| (!q.is_empty()).then_some(0))));
        begun.recv_timeout(Duration::from_secs(5)).expect("the drop began");
        dropping
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slot_being_given_back_on_another_thread_is_waited_for_not_refused() {
        let slots = Slots::new(1);
        let slot = slots.admit().expect("a free slot");
        let dropping = drop_elsewhere(&slots, slot, Duration::from_millis(200), false);
        assert_eq!(queued(&slots), 0, "the store is off the queue, its drop under way");
        assert!(slots.admit().is_some(), "the slot on its way back must be given");
        dropping.join().expect("the drop");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_whose_drop_panics_still_gives_its_slot_back() {
        let slots = Slots::new(1);
        let slot = slots.admit().expect("a free slot");
        let dropping = drop_elsewhere(&slots, slot, Duration::ZERO, true);
        assert!(dropping.join().is_err(), "the drop panicked");
        assert_eq!(slots.dropping.load(Ordering::Acquire), 0, "no longer counted as being dropped");
        let held = slots.admit();
        assert!(held.is_some(), "the slot came back");
        // Full, with nothing queued or being dropped: refused at once.
        assert!(slots.admit().is_none());
    }

    #[test]
    fn a_task_that_never_runs_still_gives_the_slot_back() {
        let slots = Slots::new(1);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let slot = slots.admit().expect("a free slot");
            slots.dispose(store(), slot);
        });
        // Shut down with the task still queued: it is dropped unrun.
        drop(rt);
        assert_eq!(queued(&slots), 0);
        assert_eq!(slots.free.available_permits(), 1);
    }

    #[test]
    fn without_a_runtime_the_store_is_dropped_at_once() {
        let slots = Slots::new(1);
        let slot = slots.admit().expect("a free slot");
        slots.dispose(store(), slot);
        assert_eq!(queued(&slots), 0);
        assert_eq!(slots.free.available_permits(), 1);
    }
}
