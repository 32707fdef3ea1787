//! A scan keeps nothing per replica but a digest: the heap a deep scan adds
//! at its peak barely grows from 1,000 secrets to 10,000 (it held every
//! replication record, about 0.5 KiB each, before it streamed).
//!
//! Its own test binary: the allocator counts every thread's allocations, so
//! nothing else may run beside the measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_core::value::SecretValue;
use keybridge_core::{Caller, Core, CoreConfig, RuleSpec};

/// The system allocator, counting the bytes live now and at their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn value(i: usize) -> SecretValue {
    SecretValue::Fields([("v".to_string(), zeroize::Zeroizing::new(format!("value {i}")))].into_iter().collect())
}

#[tokio::test]
async fn a_deep_scan_holds_no_record_per_replica() {
    let core = Arc::new(Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default()));
    core.init(1, 1, Some("root-t"), true).await.unwrap();
    let t = Caller::token(Some("root-t"));
    core.enable_mount(&t, "replica/", "local", "", Default::default()).await.unwrap();
    let spec = RuleSpec {
        name: "m".into(),
        source: "secret/m/".into(),
        targets: vec!["replica/m/".into()],
        scan_interval_secs: 3600,
        ..Default::default()
    };
    core.put_sync_rule(&t, spec).await.unwrap();
    let mut added = Vec::new();
    let mut loaded = 0;
    for n in [1_000, 10_000] {
        for i in loaded..n {
            core.put(&t, &format!("secret/m/k{i:05}"), &value(i), None).await.unwrap();
        }
        loaded = n;
        assert!(core.sync_run(&t, "m", true, Duration::from_secs(120)).await.unwrap().settled);
        // A deep scan with nothing to do: the heap at its peak over the heap
        // before it (the answer, a page of at most 1,000 statuses, included).
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let st = core.sync_run(&t, "m", true, Duration::from_secs(120)).await.unwrap();
        assert!(st.settled);
        assert_eq!(st.counts.iter().map(|c| c.count).sum::<u64>(), n as u64);
        drop(st);
        added.push(PEAK.load(Ordering::Relaxed).saturating_sub(before));
    }
    eprintln!("a deep scan's peak heap: {} KiB with 1,000 secrets, {} KiB with 10,000", added[0] >> 10, added[1] >> 10);
    // The digests of 9,000 more names are about 150 KiB; the records alone
    // would be 4.5 MiB.
    assert!(
        added[1] < added[0] + 1024 * 1024,
        "a deep scan's peak heap grew from {} KiB with 1,000 secrets to {} KiB with 10,000",
        added[0] >> 10,
        added[1] >> 10
    );
}
