//! The read cache and the client-side rate limits around the AWS adapter,
//! against moto: upstream calls saved, limits respected and exceeded.

mod common;

use std::time::{Duration, Instant};

use common::{moto, store, string_of, text};
use keybridge_provider_api::cache::{CacheConfig, Cached};
use keybridge_provider_api::limits::{Limited, Limits, Rate};
use keybridge_provider_api::{Cloud, Error, Precondition, SecretStore, Selector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_secret_costs_one_upstream_call_per_ttl() {
    let m = moto();
    let s = Cached::new(store(&m).await, CacheConfig { ttl: Duration::from_secs(60), max_entries: 2 });
    s.put("kb/hot", &text("v1"), &Precondition::Absent, None).await.unwrap();
    for _ in 0..1000 {
        assert_eq!(string_of(&s.get("kb/hot", &Selector::Current).await.unwrap().value), "v1");
    }
    assert_eq!(s.counters(), (999, 1), "1,000 reads, one upstream call");
    // A write through the gateway drops the entry at once.
    s.put("kb/hot", &text("v2"), &Precondition::None, None).await.unwrap();
    assert_eq!(string_of(&s.get("kb/hot", &Selector::Current).await.unwrap().value), "v2");
    assert_eq!(s.counters(), (999, 2));
    // The size bound evicts the oldest entry.
    s.put("kb/a", &text("a"), &Precondition::Absent, None).await.unwrap();
    s.put("kb/b", &text("b"), &Precondition::Absent, None).await.unwrap();
    s.get("kb/a", &Selector::Current).await.unwrap();
    s.get("kb/b", &Selector::Current).await.unwrap();
    s.get("kb/hot", &Selector::Current).await.unwrap();
    assert_eq!(s.counters().1, 5, "kb/hot was evicted by a and b");
    // Entries expire.
    let short = Cached::new(store(&m).await, CacheConfig { ttl: Duration::from_millis(50), max_entries: 10 });
    short.get("kb/hot", &Selector::Current).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    short.get("kb/hot", &Selector::Current).await.unwrap();
    assert_eq!(short.counters(), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_rate_limit_respected_and_exceeded() {
    let m = moto();
    let mut limits = Limits::published(Cloud::Aws);
    // Respected: a burst within the quota goes through at once.
    limits.write = Rate { count: 2, period: Duration::from_secs(1) };
    let s = Limited::new(store(&m).await, limits);
    let t0 = Instant::now();
    for i in 0..2 {
        s.put(&format!("kb/burst/{i}"), &text("x"), &Precondition::Absent, None).await.unwrap();
    }
    let burst = t0.elapsed();
    // Beyond it, a call waits for its slot (one every 500 ms here; up to
    // 2 s, the default max_wait), then goes through.
    s.put("kb/burst/2", &text("x"), &Precondition::Absent, None).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "the third write did not wait for its slot (burst took {burst:?}, all {:?})",
        t0.elapsed()
    );

    // Exceeded: with no time to wait, the call fails Throttled and never
    // reaches the cloud.
    limits.write = Rate::per_second(1);
    limits.max_wait = Duration::from_millis(20);
    let tight = Limited::new(store(&m).await, limits);
    tight.put("kb/tight", &text("1"), &Precondition::Absent, None).await.unwrap();
    let e = tight.put("kb/tight", &text("2"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(&e, Error::Throttled(m) if m.contains("write rate limit")), "{e:?}");
    assert!(e.retryable());
    assert_eq!(string_of(&tight.get("kb/tight", &Selector::Current).await.unwrap().value), "1");
    assert_eq!(tight.inner().describe("kb/tight").await.unwrap().versions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reads_are_retried_then_reported() {
    // Respected: a read that keeps failing is tried exactly read_attempts
    // times, then reported; exceeded: one attempt is one call.
    for attempts in [3, 1] {
        let mut limits = Limits::published(Cloud::Aws);
        limits.read_attempts = attempts;
        let s = Limited::new(common::unreachable().await, limits);
        let e = s.get("kb/x", &Selector::Current).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert_eq!(s.calls(), u64::from(attempts), "attempts made");
        assert_eq!(s.calls_by_kind()[0], ("read_value", u64::from(attempts)));
    }
    // Writes are not retried on failure (only when throttled).
    let mut limits = Limits::published(Cloud::Aws);
    limits.read_attempts = 3;
    let s = Limited::new(common::unreachable().await, limits);
    let e = s.put("kb/x", &text("v"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert_eq!(s.calls(), 1, "a failed write is not repeated");
    assert!(
        Limits::published(Cloud::Aws)
            .with_settings(&[("rate_write".to_string(), "0".to_string())].into_iter().collect())
            .is_err()
    );
}
