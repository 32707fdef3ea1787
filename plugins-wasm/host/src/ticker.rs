//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] while
//! calls run, and sleeps (parked, no wakeups) once none has run for
//! [`IDLE_GRACE`], so an idle gateway does not wake 200 times a second for
//! its plugins. The grace keeps a steady trickle of calls (one at a time,
//! back to back) from waking the thread for every call: that wake-up cost
//! more CPU than the call itself.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use wasmtime::Engine;

use crate::EPOCH_TICK;

/// How long the ticker keeps ticking after the last call before it parks.
pub(crate) const IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

pub(crate) struct Ticker {
    /// Calls in flight.
    active: AtomicUsize,
    /// A call started since the ticker last looked.
    touched: AtomicBool,
    /// The thread is parked (or about to): the next call wakes it.
    parked: AtomicBool,
    stop: AtomicBool,
    /// Epochs advanced so far (for tests).
    ticks: AtomicU64,
    thread: OnceLock<Thread>,
}

/// Held for the length of one call: the epoch advances while any is held.
pub(crate) struct Busy(Arc<Ticker>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ticker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Arc<Ticker>> {
        let ticker = Arc::new(Ticker {
            active: AtomicUsize::new(0),
            touched: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let (weak, t) = (engine.weak(), ticker.clone());
        let grace_ticks = (IDLE_GRACE.as_micros() / EPOCH_TICK.as_micros()).max(1) as u32;
        let handle = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            let mut idle = grace_ticks;
            while !t.stop.load(Ordering::Acquire) {
                if t.touched.swap(false, Ordering::AcqRel) || t.active.load(Ordering::Acquire) > 0 {
                    idle = 0;
                } else {
                    idle = idle.saturating_add(1);
                }
                if idle >= grace_ticks {
                    t.parked.store(true, Ordering::SeqCst);
                    // A call that started before `parked` was set is seen
                    // here; one after it unparks. A token left by an unpark
                    // that came before this park makes it return at once.
                    if t.active.load(Ordering::SeqCst) == 0 && !t.touched.load(Ordering::SeqCst) {
                        std::thread::park();
                    }
                    t.parked.store(false, Ordering::SeqCst);
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
                t.ticks.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    /// Marks a call in flight until the guard drops.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.touched.store(true, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.wake();
        }
        Busy(self.clone())
    }

    /// Ends the thread.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    #[cfg(test)]
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.epoch_interruption(true);
        Engine::new(&c).unwrap()
    }

    #[test]
    fn ticks_only_while_a_call_runs() {
        let engine = engine();
        let ticker = Ticker::start(&engine).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let idle = ticker.ticks();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticker.ticks(), idle, "no call runs: the epoch must stand still");

        let busy = ticker.busy();
        std::thread::sleep(Duration::from_millis(100));
        let during = ticker.ticks() - idle;
        assert!(during >= 5, "a call runs: the epoch must advance every 5 ms, advanced {during} times in 100 ms");

        drop(busy);
        std::thread::sleep(IDLE_GRACE * 2 + Duration::from_millis(50));
        let after = ticker.ticks();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticker.ticks(), after, "the call ended: the epoch must stand still again");
        ticker.stop();
    }

    /// Calls one after another, each short, a millisecond apart: the ticker
    /// stays awake between them (within the grace) instead of being woken
    /// for each; past the grace it sleeps.
    #[test]
    fn a_trickle_of_calls_does_not_wake_the_ticker_for_each() {
        let engine = engine();
        let ticker = Ticker::start(&engine).unwrap();
        drop(ticker.busy());
        std::thread::sleep(Duration::from_millis(20));
        let mut found_parked = 0;
        for _ in 0..100 {
            if ticker.parked.load(Ordering::SeqCst) {
                found_parked += 1;
            }
            drop(ticker.busy());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(found_parked, 0, "the ticker parked between calls a millisecond apart");
        std::thread::sleep(IDLE_GRACE * 2 + Duration::from_millis(50));
        assert!(ticker.parked.load(Ordering::SeqCst), "no call for twice the grace: the ticker must sleep");
        ticker.stop();
    }
}
