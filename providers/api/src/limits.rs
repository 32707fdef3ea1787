//! Client-side rate limits and retries for one mount, as a `SecretStore`
//! that wraps another.
//!
//! Calls are sorted into classes (reads of values, reads of metadata,
//! lists, writes), each with its own quota, by default the cloud's published
//! one. A call over its quota waits for a slot up to `max_wait`, then fails
//! `Throttled` (retryable: RESOURCE_EXHAUSTED at the gateway) without
//! reaching the cloud. Reads that the cloud throttles or that fail to reach
//! it are retried with exponential backoff and full jitter; writes are not
//! retried here (each SDK retries its own writes, with the same idempotency
//! token where the cloud has one).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::names::Cloud;
use crate::store::{
    CloudValue, Deletion, Error, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore, Selector,
    VersionChange, VersionInfo,
};

/// One class's quota: `count` calls per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub const fn per_second(count: u32) -> Rate {
        Rate { count, period: Duration::from_secs(1) }
    }

    fn quota(self) -> Quota {
        let count = NonZeroU32::new(self.count.max(1)).unwrap_or(NonZeroU32::MIN);
        let each = self.period / count.get();
        Quota::with_period(each.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(count)
    }
}

/// Quotas by call class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Reading a value (GetSecretValue, get secret, access version).
    pub read_value: Rate,
    /// Reading metadata (DescribeSecret, get properties).
    pub read_meta: Rate,
    pub list: Rate,
    /// Creating, writing, deleting, restoring.
    pub write: Rate,
    /// How long a call may wait for a slot before it fails `Throttled`.
    pub max_wait: Duration,
    /// Attempts for a throttled or failed read (or a throttled write), the
    /// first included.
    pub read_attempts: u32,
}

impl Limits {
    /// The cloud's published quotas.
    ///
    /// - AWS Secrets Manager: GetSecretValue and DescribeSecret 10,000/s,
    ///   ListSecrets 100/s, PutSecretValue/UpdateSecret and the other writes 50/s.
    /// - Azure Key Vault: 4,000 secret operations per 10 s per vault (300
    ///   creates per 10 s, the write class here).
    /// - GCP Secret Manager: 90,000 accesses per minute, 600 reads and 600
    ///   writes per minute per project.
    pub fn published(cloud: Cloud) -> Limits {
        let (read_value, read_meta, list, write) = match cloud {
            Cloud::Aws => {
                (Rate::per_second(10_000), Rate::per_second(10_000), Rate::per_second(100), Rate::per_second(50))
            }
            Cloud::Azure => {
                let ten = Duration::from_secs(10);
                let all = Rate { count: 4_000, period: ten };
                (all, all, all, Rate { count: 300, period: ten })
            }
            Cloud::Gcp => {
                let minute = Duration::from_secs(60);
                let admin = Rate { count: 600, period: minute };
                (Rate { count: 90_000, period: minute }, admin, admin, admin)
            }
        };
        Limits { read_value, read_meta, list, write, max_wait: Duration::from_secs(2), read_attempts: 4 }
    }

    /// Overrides from mount settings: `rate_read`, `rate_meta`, `rate_list`,
    /// `rate_write` (calls per second), `rate_max_wait` (a duration in ms).
    pub fn with_settings(mut self, s: &BTreeMap<String, String>) -> Result<Limits> {
        for (key, slot) in [
            ("rate_read", &mut self.read_value),
            ("rate_meta", &mut self.read_meta),
            ("rate_list", &mut self.list),
            ("rate_write", &mut self.write),
        ] {
            if let Some(v) = s.get(key) {
                let n: u32 = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::InvalidArgument(format!("{key} must be a positive number of calls per second, not {v:?}"))
                })?;
                *slot = Rate::per_second(n);
            }
        }
        if let Some(v) = s.get("rate_max_wait_ms") {
            let ms: u64 = v.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("rate_max_wait_ms must be a number of milliseconds, not {v:?}"))
            })?;
            self.max_wait = Duration::from_millis(ms);
        }
        Ok(self)
    }
}

pub struct Limited<S> {
    inner: S,
    pace: Arc<Pace>,
    observer: Option<Arc<dyn CallObserver>>,
}

/// Told of every attempt a [`Limited`] store sends to the cloud: the cloud
/// (`aws`, `azure`, `gcp`), the operation (`get`, `put`, ...) and its
/// outcome (`ok`, or the error's kind: `not_found`, `throttled`, ...).
pub trait CallObserver: Send + Sync {
    fn call(&self, provider: &'static str, operation: &'static str, status: &'static str);
}

/// A mount's quotas and call counters, shared by [`Limited`] and, through a
/// [`Meter`], by the adapter it wraps.
struct Pace {
    cloud: Cloud,
    limits: Limits,
    read_value: DefaultDirectRateLimiter,
    read_meta: DefaultDirectRateLimiter,
    list: DefaultDirectRateLimiter,
    write: DefaultDirectRateLimiter,
    calls: std::sync::atomic::AtomicU64,
    /// By kind: read_value, read_meta, list, write.
    by_kind: [std::sync::atomic::AtomicU64; 4],
    /// Time spent in those calls by kind (each attempt's wall time, from
    /// sending to the answer; waiting for a quota slot is not counted), ns.
    nanos_by_kind: [std::sync::atomic::AtomicU64; 4],
}

/// The kinds of call counted, in the order of [`Limited::calls_by_kind`].
pub const CALL_KINDS: [&str; 4] = ["read_value", "read_meta", "list", "write"];

/// A class of call, for a [`Meter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallClass {
    ReadValue = 0,
    ReadMeta = 1,
    List = 2,
    Write = 3,
}

/// The mount's quotas, handed to the adapter ([`SecretStore::attach_meter`])
/// for the calls it makes beyond the one [`Limited`] counted for an
/// operation: the looks while a cloud finishes an earlier operation. Each
/// takes a slot of its class, or fails `Throttled` as any call would.
#[derive(Clone)]
pub struct Meter(Arc<Pace>);

impl Meter {
    pub async fn slot(&self, class: CallClass) -> Result<()> {
        self.0.slot(class).await
    }
}

impl Pace {
    async fn slot(&self, class: CallClass) -> Result<()> {
        let (limiter, name, kind) = match class {
            CallClass::ReadValue => (&self.read_value, "read", 0),
            CallClass::ReadMeta => (&self.read_meta, "metadata", 1),
            CallClass::List => (&self.list, "list", 2),
            CallClass::Write => (&self.write, "write", 3),
        };
        match tokio::time::timeout(self.limits.max_wait, limiter.until_ready()).await {
            Ok(()) => {
                self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.by_kind[kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(_) => Err(Error::Throttled(format!(
                "{}: the mount's {name} rate limit is reached (waited {:?}); retry later or raise it",
                self.cloud.name(),
                self.limits.max_wait
            ))),
        }
    }
}

impl<S: SecretStore> Limited<S> {
    pub fn new(inner: S, limits: Limits) -> Limited<S> {
        let pace = Arc::new(Pace {
            cloud: inner.cloud(),
            read_value: RateLimiter::direct(limits.read_value.quota()),
            read_meta: RateLimiter::direct(limits.read_meta.quota()),
            list: RateLimiter::direct(limits.list.quota()),
            write: RateLimiter::direct(limits.write.quota()),
            limits,
            calls: std::sync::atomic::AtomicU64::new(0),
            by_kind: Default::default(),
            nanos_by_kind: Default::default(),
        });
        inner.attach_meter(Meter(pace.clone()));
        Limited { inner, pace, observer: None }
    }

    /// Tells `observer` of every attempt sent to the cloud.
    pub fn observed(mut self, observer: Arc<dyn CallObserver>) -> Limited<S> {
        self.observer = Some(observer);
        self
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Calls passed on to the cloud since the mount was loaded (retries
    /// and the adapter's metered looks count one each).
    pub fn calls(&self) -> u64 {
        self.pace.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls passed on to the cloud by kind ([`CALL_KINDS`]).
    pub fn calls_by_kind(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| (CALL_KINDS[i], self.pace.by_kind[i].load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Time spent in the calls passed on to the cloud, by kind
    /// ([`CALL_KINDS`]): how much of a scan the cloud's answers took.
    pub fn call_time_by_kind(&self) -> [Duration; 4] {
        std::array::from_fn(|i| {
            Duration::from_nanos(self.pace.nanos_by_kind[i].load(std::sync::atomic::Ordering::Relaxed))
        })
    }

    /// Runs a read, retrying throttled or failed attempts with backoff and
    /// full jitter (100 ms doubling, at most 2 s).
    async fn read<T, F, Fut>(&self, class: CallClass, op: &'static str, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.attempts(class, op, call, Error::retryable).await
    }

    /// Runs a write, retrying only throttled attempts: a throttled request
    /// was refused before the cloud acted on it, so sending it again cannot
    /// write twice; a write that failed otherwise may have happened.
    async fn write<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.attempts(CallClass::Write, op, call, |e| matches!(e, Error::Throttled(_))).await
    }

    async fn attempts<T, F, Fut>(
        &self,
        class: CallClass,
        op: &'static str,
        call: F,
        again: fn(&Error) -> bool,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            self.pace.slot(class).await?;
            attempt += 1;
            let sent = std::time::Instant::now();
            let answer = call().await;
            let nanos = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.pace.nanos_by_kind[class as usize].fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
            if let Some(o) = &self.observer {
                o.call(self.pace.cloud.kind(), op, answer.as_ref().map_or_else(Error::kind, |_| "ok"));
            }
            match answer {
                Err(e) if again(&e) && attempt < self.pace.limits.read_attempts.max(1) => {
                    let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(5))).min(Duration::from_secs(2));
                    let jitter = cap.mul_f64(jitter_fraction());
                    tokio::time::sleep(jitter).await;
                }
                other => return other,
            }
        }
    }
}

/// A number in [0, 1) from the clock's low bits: enough to spread retries
/// (full jitter), not for anything secret.
fn jitter_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[async_trait::async_trait]
impl<S: SecretStore> SecretStore for Limited<S> {
    fn cloud(&self) -> Cloud {
        self.inner.cloud()
    }

    async fn check(&self) -> Result<()> {
        self.read(CallClass::List, "check", || self.inner.check()).await
    }

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        self.read(CallClass::ReadValue, "get", || self.inner.get(name, at)).await
    }

    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        self.write("put", || self.inner.put(name, value, pre, tags)).await
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        self.read(CallClass::ReadMeta, "describe", || self.inner.describe(name)).await
    }

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        self.read(CallClass::List, "list", || self.inner.list(page_size, page_token)).await
    }

    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        self.write("delete", || self.inner.delete(name, how)).await
    }

    async fn restore(&self, name: &str) -> Result<()> {
        self.write("restore", || self.inner.restore(name)).await
    }

    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()> {
        self.write("change_version", || self.inner.change_version(name, id, change)).await
    }

    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.write("set_tags", || self.inner.set_tags(name, tags)).await
    }

    fn marker(&self, v: &VersionInfo) -> Option<String> {
        self.inner.marker(v)
    }

    async fn stage(&self, name: &str, value: &CloudValue, key: &str) -> Result<VersionInfo> {
        self.write("stage", || self.inner.stage(name, value, key)).await
    }

    async fn promote(&self, name: &str, id: &str) -> Result<()> {
        self.write("promote", || self.inner.promote(name, id)).await
    }

    async fn unstage(&self, name: &str, id: &str) -> Result<()> {
        self.write("unstage", || self.inner.unstage(name, id)).await
    }

    async fn retire(&self, name: &str, id: &str) -> Result<()> {
        self.write("retire", || self.inner.retire(name, id)).await
    }

    async fn head(&self, name: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        self.read(CallClass::ReadMeta, "head", || self.inner.head(name)).await
    }

    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        self.write("put_numbered", || self.inner.put_numbered(name, value, number, tags)).await
    }
}
