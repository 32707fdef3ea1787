//! The node's Prometheus metrics (`prometheus-client`): counters kept as
//! things happen, and gauges set from the node's state when scraped.
//!
//! Labels carry RPC names, mount paths, cloud and device names and fixed
//! outcome words: never a secret's path, a token, a role name or a value.

use std::collections::HashMap;

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `keybridge.v1.Secrets/Get`.
    pub rpc: String,
    /// The gRPC status code's name: `OK`, `PERMISSION_DENIED`, ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `token`, or the login method's type (`kubernetes`, `jwt`).
    pub method: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabels {
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudLabels {
    pub provider: String,
    pub operation: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every series the node exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RpcLabels, Counter>,
    pub request_seconds: Family<RpcLabels, Histogram>,
    pub auth_failures: Family<AuthLabels, Counter>,
    pub leases: Family<MountLabels, Gauge>,
    pub lease_revocations: Family<ResultLabels, Counter>,
    pub rotations: Family<ResultLabels, Counter>,
    pub journal_depth: Gauge,
    pub journal_oldest_seconds: FloatGauge,
    pub replication_lag_seconds: Family<MountLabels, FloatGauge>,
    pub cloud_calls: Family<CloudLabels, Counter>,
    pub cache_hits: Family<MountLabels, Counter>,
    pub cache_misses: Family<MountLabels, Counter>,
    pub audit_records: Family<DeviceLabels, Counter>,
    pub audit_failures: Family<DeviceLabels, Counter>,
    pub leader: Gauge,
    pub epoch: Gauge,
    pub feed_lag_seconds: FloatGauge,
    pub sealed: Gauge,
    pub initialized: Gauge,
    /// Counts kept elsewhere (mount caches, audit devices, rotations) as
    /// last seen, to add what is new.
    seen: Mutex<HashMap<(&'static str, String), u64>>,
    /// When the gauges were last read from the node's state: scrapes within
    /// [`REFRESH_EVERY`] of it share that reading, and one refresh runs at a
    /// time (a scrape needs no token, so it must stay cheap).
    refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How long one reading of the node's state serves scrapes.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("keybridge");
        let requests = Family::<RpcLabels, Counter>::default();
        r.register("requests", "gRPC requests answered, by RPC and status code", requests.clone());
        // 50 µs to ~13 s.
        let request_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 19))
        });
        r.register("request_duration_seconds", "gRPC request latency, by RPC and status code", request_seconds.clone());
        let auth_failures = Family::<AuthLabels, Counter>::default();
        r.register("auth_failures", "refused tokens and logins, by method and reason", auth_failures.clone());
        let leases = Family::<MountLabels, Gauge>::default();
        r.register("leases", "leases held, by mount", leases.clone());
        let lease_revocations = Family::<ResultLabels, Counter>::default();
        r.register("lease_revocations", "lease revocations run by this node, by result", lease_revocations.clone());
        let rotations = Family::<ResultLabels, Counter>::default();
        r.register("rotations", "coordinated rotations: started, succeeded, rolled_back", rotations.clone());
        let journal_depth = Gauge::default();
        r.register("sync_journal_depth", "changes waiting in the replication journal", journal_depth.clone());
        let journal_oldest_seconds = FloatGauge::default();
        r.register(
            "sync_journal_oldest_seconds",
            "age of the oldest change waiting in the replication journal",
            journal_oldest_seconds.clone(),
        );
        let replication_lag_seconds = Family::<MountLabels, FloatGauge>::default();
        r.register(
            "sync_replication_lag_seconds",
            "how far each replica target mount is behind its source (its oldest pending change)",
            replication_lag_seconds.clone(),
        );
        let cloud_calls = Family::<CloudLabels, Counter>::default();
        r.register(
            "cloud_calls",
            "calls to the clouds' secret stores, by provider, operation and status",
            cloud_calls.clone(),
        );
        let cache_hits = Family::<MountLabels, Counter>::default();
        r.register("cache_hits", "cloud mount read-cache hits, by mount", cache_hits.clone());
        let cache_misses = Family::<MountLabels, Counter>::default();
        r.register("cache_misses", "cloud mount read-cache misses, by mount", cache_misses.clone());
        let audit_records = Family::<DeviceLabels, Counter>::default();
        r.register("audit_records", "audit records written, by device", audit_records.clone());
        let audit_failures = Family::<DeviceLabels, Counter>::default();
        r.register("audit_failures", "audit records a device failed to write, by device", audit_failures.clone());
        let leader = Gauge::default();
        r.register("leader", "1 while this node leads the singleton work", leader.clone());
        let epoch = Gauge::default();
        r.register("leader_epoch", "the leader lease's epoch as this node last saw it", epoch.clone());
        let feed_lag_seconds = FloatGauge::default();
        r.register(
            "feed_lag_seconds",
            "from another node's newest commit to its application here",
            feed_lag_seconds.clone(),
        );
        let sealed = Gauge::default();
        r.register("sealed", "1 while the node is sealed", sealed.clone());
        let initialized = Gauge::default();
        r.register("initialized", "1 once the store is initialized", initialized.clone());
        // Outcomes exist from the start at 0, so a rate over them is defined
        // before the first event.
        for result in ["success", "failure"] {
            lease_revocations.get_or_create(&ResultLabels { result: result.into() }).inc_by(0);
        }
        for result in ["started", "succeeded", "rolled_back"] {
            rotations.get_or_create(&ResultLabels { result: result.into() }).inc_by(0);
        }
        Metrics {
            registry: r,
            requests,
            request_seconds,
            auth_failures,
            leases,
            lease_revocations,
            rotations,
            journal_depth,
            journal_oldest_seconds,
            replication_lag_seconds,
            cloud_calls,
            cache_hits,
            cache_misses,
            audit_records,
            audit_failures,
            leader,
            epoch,
            feed_lag_seconds,
            sealed,
            initialized,
            seen: Mutex::new(HashMap::new()),
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// The exposition in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The exposition in Prometheus' classic text format (0.0.4), for
    /// scrapers that do not ask for OpenMetrics (`curl`, `promtool`):
    /// counter families take their samples' `_total` name, and OpenMetrics'
    /// `# EOF` and `# UNIT` lines go.
    pub fn encode_classic(&self) -> String {
        classic(&self.encode())
    }

    pub fn request(&self, rpc: &str, code: &str, seconds: f64) {
        let l = RpcLabels { rpc: rpc.to_string(), code: code.to_string() };
        self.requests.get_or_create(&l).inc();
        self.request_seconds.get_or_create(&l).observe(seconds);
    }

    pub fn auth_failure(&self, method: &str, reason: &str) {
        self.auth_failures.get_or_create(&AuthLabels { method: method.into(), reason: reason.into() }).inc();
    }

    pub fn result(family: &Family<ResultLabels, Counter>, result: &str) {
        family.get_or_create(&ResultLabels { result: result.into() }).inc();
    }

    /// Adds to `counter` what a count kept elsewhere gained since last
    /// seen (a count that went back, after a reload, counts from zero).
    /// Drops the series of `family` (kept as `what` in `seen`) whose label
    /// is no longer in `current` (a mount or device removed).
    fn forget<M>(
        &self,
        family: &Family<MountLabels, M>,
        what: &'static str,
        current: &std::collections::HashSet<String>,
    ) where
        M: prometheus_client::metrics::TypedMetric + Default,
    {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(w, key), _| {
            let keep = *w != what || current.contains(key);
            if !keep {
                family.remove(&MountLabels { mount: key.clone() });
            }
            keep
        });
    }

    fn forget_devices(&self, current: &std::collections::HashSet<String>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|(w, key), _| {
            let keep = !matches!(*w, "audit" | "audit_failed") || current.contains(key);
            if !keep {
                self.audit_records.remove(&DeviceLabels { device: key.clone() });
                self.audit_failures.remove(&DeviceLabels { device: key.clone() });
            }
            keep
        });
    }

    fn advance(&self, counter: &Counter, what: &'static str, key: &str, now: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let was = seen.insert((what, key.to_string()), now).unwrap_or(0);
        counter.inc_by(if now >= was { now - was } else { now });
    }
}

/// OpenMetrics text as Prometheus' classic text format (see
/// [`Metrics::encode_classic`]).
fn classic(open: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl crate::Core {
    /// The node's metrics, with the gauges read from its state now: in
    /// OpenMetrics' text format, or with `classic` Prometheus' 0.0.4.
    pub async fn metrics_text(&self, classic: bool) -> String {
        // Encoded under the lock too: a refresh clears and refills families.
        let mut last = self.metrics.refreshed.lock().await;
        if last.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) {
            self.refresh_metrics().await;
            *last = Some(std::time::Instant::now());
        }
        if classic { self.metrics.encode_classic() } else { self.metrics.encode() }
    }

    /// The metrics for a caller with `read` on `sys/metrics` (the telemetry
    /// listener with `unauthenticated_metrics_access = false`).
    pub async fn metrics_for(&self, caller: &crate::audit::Caller, classic: bool) -> crate::Result<String> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/metrics", crate::core::Capability::Read).await?;
        let text = self.metrics_text(classic).await;
        self.finish(caller, Ok(text), |_| Vec::new()).await
    }

    /// The node's metrics, to add what the server measures (requests,
    /// leadership).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    async fn refresh_metrics(&self) {
        let m = &self.metrics;
        let (initialized, sealed) = match self.seal_status().await {
            Ok(s) => (s.initialized, s.sealed),
            Err(_) => (false, true),
        };
        m.initialized.set(i64::from(initialized));
        m.sealed.set(i64::from(sealed));
        let Ok(loaded) = self.unsealed() else { return };
        let table = loaded.table();
        let stats = self.mount_stats();
        let clouds: std::collections::HashSet<String> = stats.keys().cloned().collect();
        m.forget(&m.cache_hits, "hits", &clouds);
        m.forget(&m.cache_misses, "misses", &clouds);
        for (path, stats) in stats {
            m.advance(
                &m.cache_hits.get_or_create(&MountLabels { mount: path.clone() }),
                "hits",
                &path,
                stats.cache_hits,
            );
            m.advance(
                &m.cache_misses.get_or_create(&MountLabels { mount: path.clone() }),
                "misses",
                &path,
                stats.cache_misses,
            );
        }
        let tallies = loaded.audit.tallies();
        m.forget_devices(&tallies.iter().map(|(d, _, _)| d.clone()).collect());
        for (device, written, failed) in tallies {
            let l = DeviceLabels { device: device.clone() };
            m.advance(&m.audit_records.get_or_create(&l), "audit", &device, written);
            m.advance(&m.audit_failures.get_or_create(&l), "audit_failed", &device, failed);
        }
        let [started, done, rolled_back] = self.sync.rotation_counts();
        for (result, n) in [("started", started), ("succeeded", done), ("rolled_back", rolled_back)] {
            m.advance(&m.rotations.get_or_create(&ResultLabels { result: result.into() }), "rotations", result, n);
        }
        // Leases by mount: every node's count rows, summed.
        m.leases.clear();
        match self.leases.counts().await {
            Ok(counts) => {
                for e in &table.entries {
                    let n = counts.get(&e.id).copied().unwrap_or(0);
                    m.leases.get_or_create(&MountLabels { mount: e.path.clone() }).set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the lease counts"),
        }
        // The journal, and each replica target mount's lag: how old its
        // rules' oldest waiting change is.
        let now_ms = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
        )
        .unwrap_or(u64::MAX);
        let age = |at: u64| now_ms.saturating_sub(at) as f64 / 1000.0;
        match self.sync.journal_gauge().await {
            Ok(g) => {
                m.journal_depth.set(i64::try_from(g.depth).unwrap_or(i64::MAX));
                m.journal_oldest_seconds.set(g.oldest_ms.map_or(0.0, age));
                m.replication_lag_seconds.clear();
                if let Ok(rules) = self.sync_rules().await {
                    for rule in rules.iter() {
                        let lag = g.oldest_by_rule.get(&rule.name).map_or(0.0, |at| age(*at));
                        for target in &rule.targets {
                            // The mount the target folder is on: its path
                            // is the label, never the folder's.
                            let Some(mount) = table
                                .entries
                                .iter()
                                .filter(|e| target.starts_with(&e.path))
                                .max_by_key(|e| e.path.len())
                            else {
                                continue;
                            };
                            let g = m.replication_lag_seconds.get_or_create(&MountLabels { mount: mount.path.clone() });
                            if lag > g.get() {
                                g.set(lag);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the sync journal"),
        }
    }
}

impl keybridge_provider_api::limits::CallObserver for Metrics {
    fn call(&self, provider: &'static str, operation: &'static str, status: &'static str) {
        self.cloud_calls
            .get_or_create(&CloudLabels {
                provider: provider.into(),
                operation: operation.into(),
                status: status.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.request("keybridge.v1.Secrets/Get", "OK", 0.001);
        m.auth_failure("token", "invalid_token");
        let text = m.encode_classic();
        assert!(text.contains("# TYPE keybridge_requests_total counter\n"), "{text}");
        assert!(text.contains("# HELP keybridge_requests_total "), "{text}");
        assert!(text.contains("keybridge_requests_total{rpc=\"keybridge.v1.Secrets/Get\",code=\"OK\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE keybridge_request_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("# TYPE keybridge_sealed gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(m.encode().trim_end().ends_with("# EOF"));
    }

    /// A mount path may hold quotes and backslashes: escaped, a label value
    /// cannot end early and add a label or a line of its own.
    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.leases.get_or_create(&MountLabels { mount: "team-x\",evil=\"1\\/".into() }).set(1);
        let text = m.encode_classic();
        assert!(text.contains("keybridge_leases{mount=\"team-x\\\",evil=\\\"1\\\\/\"} 1\n"), "{text}");
    }
}
