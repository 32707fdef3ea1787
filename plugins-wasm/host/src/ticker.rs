//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] while
//! at least one call runs, and sleeps (parked, no wakeups) while none does,
//! so an idle gateway does not wake 200 times a second for its plugins.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use wasmtime::Engine;

use crate::EPOCH_TICK;

pub(crate) struct Ticker {
    /// Calls in flight.
    active: AtomicUsize,
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
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let (weak, t) = (engine.weak(), ticker.clone());
        let handle = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            while !t.stop.load(Ordering::Acquire) {
                if t.active.load(Ordering::Acquire) == 0 {
                    // `busy` unparks; a token left by an unpark that came
                    // before this park makes it return at once.
                    std::thread::park();
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
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
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
        std::thread::sleep(Duration::from_millis(30));
        let after = ticker.ticks();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ticker.ticks(), after, "the call ended: the epoch must stand still again");
        ticker.stop();
    }
}
