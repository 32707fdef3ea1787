//! The reconciler's operations on the core: rules (authorized like every
//! other operation), the journal, the worker that replicates and scans, and
//! status. The model and its storage layout are described in `sync.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybridge_barrier::WriteBatch;
use keybridge_provider_api::Selector;

use super::{Capability, Core, Engine, encode_json};
use crate::audit::Caller;
use crate::path::validate_folder_path;
use crate::sync::{
    self, FP_KEY, JOURNAL, JournalEntry, MARKER_TAG, OnConflict, OnDelete, RULES, Record, Rule, STATE, TargetStatus,
};
use crate::value::SecretValue;
use crate::{Error, Result, Timestamp};

/// What the reconciler asks of a rule: everything but name and paths is
/// optional.
#[derive(Clone, Debug, Default)]
pub struct RuleSpec {
    pub name: String,
    pub source: String,
    pub targets: Vec<String>,
    pub on_conflict: String,
    pub delete: String,
    pub take_over: bool,
    pub scan_interval_secs: u64,
    pub deep_scan_interval_secs: u64,
    pub coalesce_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    pub targets: Vec<TargetStatus>,
    pub pending: u64,
    /// (mount, provider, kind, calls)
    pub calls: Vec<(String, String, &'static str, u64)>,
    /// From a run: the scan it asked for has run and nothing is pending.
    pub settled: bool,
}

/// A target's current version as the reconciler compares it.
struct Current {
    id: String,
    /// Keybridge's number of the current version, when it has one.
    number: Option<u64>,
    marker: Option<String>,
    tags: BTreeMap<String, String>,
}

const JOURNAL_BATCH: usize = 512;
/// Secrets replicated at once by a scan.
const PARALLEL: usize = 8;

impl Engine<'_> {
    /// The readable current value and its version number, if any.
    pub(super) async fn read_current(&self, rel: &str) -> Result<Option<(SecretValue, u64)>> {
        let r = match self {
            Engine::Local(kv) => kv.get(rel, None).await,
            Engine::Cloud(c) => c.get(rel, &Selector::Current).await,
        };
        match r {
            Ok(r) => Ok(Some((r.value, r.version))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn current(&self, rel: &str) -> Result<Option<Current>> {
        match self {
            Engine::Local(kv) => match kv.describe(rel).await {
                Ok(m) => {
                    let id = m.current_version.to_string();
                    Ok(Some(Current {
                        marker: Some(id.clone()),
                        id,
                        number: Some(m.current_version),
                        tags: m.custom_metadata,
                    }))
                }
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            Engine::Cloud(c) => Ok(c.head(rel).await?.map(|(v, tags)| Current {
                marker: c.marker(&v),
                number: v.number,
                id: v.id,
                tags,
            })),
        }
    }

    /// Writes a replica; tags it as the rule's when it is not yet.
    async fn write_replica(
        &self,
        rel: &str,
        value: &SecretValue,
        rule_id: &str,
        existing: Option<&Current>,
    ) -> Result<(String, Option<String>)> {
        let (existing, number) = (existing.map(|c| &c.tags), existing.and_then(|c| c.number));
        match self {
            Engine::Local(kv) => {
                let (n, _) = kv.put(rel, value, None).await?;
                if existing.and_then(|t| t.get(MARKER_TAG)).map(String::as_str) != Some(rule_id) {
                    let mut tags = existing.cloned().unwrap_or_default();
                    tags.insert(MARKER_TAG.to_string(), rule_id.to_string());
                    kv.put_metadata(rel, Some(tags), None, None).await?;
                }
                Ok((n.to_string(), Some(n.to_string())))
            }
            Engine::Cloud(c) => c.write_replica(rel, value, rule_id, existing, number).await,
        }
    }

    async fn delete_replica(&self, rel: &str) -> Result<()> {
        match self {
            Engine::Local(kv) => kv.delete_all(rel).await,
            Engine::Cloud(c) => match c.delete_all(rel, false).await {
                // GCP has no recoverable deletion.
                Err(Error::Unimplemented(_)) => c.delete_all(rel, true).await,
                other => other,
            },
        }
    }

    /// Every secret below `folder` (relative, with its `/`), recursively.
    async fn list_all(&self, folder: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (keys, next) = match self {
                Engine::Local(kv) => kv.list(folder, crate::kv::MAX_PAGE_SIZE, &token, true).await?,
                Engine::Cloud(c) => c.list(folder, crate::kv::MAX_PAGE_SIZE, &token, true).await?,
            };
            out.extend(keys.into_iter().map(|k| format!("{folder}{k}")));
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }
}

impl Core {
    // ----- rules --------------------------------------------------------------

    fn rule_from(&self, spec: RuleSpec) -> Result<Rule> {
        sync::check_name(&spec.name)?;
        let table = self.loaded()?.table();
        let folder = |p: &str, what: &str| -> Result<String> {
            let f = validate_folder_path(p.trim())?;
            let Some((mount, rel)) = table.route(&f) else {
                return Err(Error::InvalidArgument(format!("{what} {f}: no mount serves it")));
            };
            // Raw cloud names are flat and authorized by what they decode
            // to, which a folder does not say: rules take Keybridge paths.
            if crate::cloud::cloud_of(&mount.kind).is_some() && rel.starts_with(crate::cloud::RAW_FOLDER) {
                return Err(Error::InvalidArgument(format!(
                    "{what} {f}: a rule replicates Keybridge paths, not a cloud's raw names under _raw/"
                )));
            }
            Ok(f)
        };
        let source = folder(&spec.source, "the source")?;
        let targets = spec.targets.iter().map(|t| folder(t, "the target")).collect::<Result<Vec<_>>>()?;
        let mounts = std::iter::once(&source)
            .chain(&targets)
            .filter_map(|f| Some((f.clone(), table.route(f)?.0.id.clone())))
            .collect();
        if spec.scan_interval_secs > 7 * 86_400 {
            return Err(Error::InvalidArgument("scan_interval may be at most 7 days".into()));
        }
        if spec.coalesce_ms > 3_600_000 {
            return Err(Error::InvalidArgument("the coalescing window may be at most one hour".into()));
        }
        Ok(Rule {
            name: spec.name,
            id: uuid::Uuid::new_v4().to_string(),
            source,
            targets,
            on_conflict: sync::OnConflict::parse(&spec.on_conflict)?,
            delete: sync::OnDelete::parse(&spec.delete)?,
            take_over: spec.take_over,
            scan_interval_secs: if spec.scan_interval_secs == 0 { 60 } else { spec.scan_interval_secs },
            deep_scan_interval_secs: spec.deep_scan_interval_secs,
            coalesce_ms: spec.coalesce_ms,
            created: Timestamp::now(),
            authorizations: Vec::new(),
            written_by: String::new(),
            mounts,
        })
    }

    /// Whether every folder of the rule still routes to the mount it did
    /// when the rule was written (rules from before this record: yes).
    pub(crate) fn rule_routes_hold(&self, rule: &Rule) -> Result<()> {
        let table = self.loaded()?.table();
        for (folder, id) in &rule.mounts {
            if table.route(folder).map(|(m, _)| &m.id) != Some(id) {
                return Err(Error::FailedPrecondition(format!(
                    "the mount serving {folder} changed since rule {:?} was written (disabled, or another mounted there); \
                     write the rule again to go on",
                    rule.name
                )));
            }
        }
        Ok(())
    }

    /// A rule acts later on its writer's behalf, so the writer must hold now
    /// what the rule will do: read and list everything below the source,
    /// create and update everything below each target; `adopt` also update
    /// on the source and read on the targets; `propagate` delete on the
    /// targets; `take_over`, `adopt` and `propagate` sudo on the rule's own
    /// path. Returns the checks made, one line each.
    async fn rule_authority(&self, id: &crate::token::Identity, rule: &Rule) -> Result<Vec<String>> {
        use Capability::*;
        let table = self.loaded()?.table();
        let folder = |p: &str, area: &str| -> Result<String> {
            let (mount, rel) =
                table.route(p).ok_or_else(|| Error::InvalidArgument(format!("{p}: no mount serves it")))?;
            Ok(format!("{}{area}/{rel}", mount.path))
        };
        let mut wanted: Vec<(String, Capability)> =
            vec![(folder(&rule.source, "data")?, Read), (folder(&rule.source, "metadata")?, List)];
        for t in &rule.targets {
            wanted.push((folder(t, "data")?, Create));
            wanted.push((folder(t, "data")?, Update));
            if rule.on_conflict == sync::OnConflict::Adopt {
                wanted.push((folder(t, "data")?, Read));
            }
            if rule.delete == sync::OnDelete::Propagate {
                wanted.push((folder(t, "metadata")?, Delete));
            }
        }
        if rule.on_conflict == sync::OnConflict::Adopt {
            wanted.push((folder(&rule.source, "data")?, Update));
        }
        let mut made = Vec::new();
        for (prefix, cap) in wanted {
            self.decide_under(id, &prefix, cap).await?;
            made.push(format!("{} on {prefix}*", cap.name()));
        }
        if rule.take_over || rule.on_conflict == sync::OnConflict::Adopt || rule.delete == sync::OnDelete::Propagate {
            let path = format!("sys/sync/rules/{}", rule.name);
            self.decide_with(id, &path, Sudo, None).await.map_err(|e| match e {
                Error::PermissionDenied(m) => {
                    Error::PermissionDenied(format!("{m} (take_over, on_conflict=adopt and delete=propagate need it)"))
                }
                e => e,
            })?;
            made.push(format!("sudo on {path}"));
        }
        Ok(made)
    }

    /// Creates or replaces a rule; refused if it would form a cycle or share
    /// a target with another rule.
    pub async fn put_sync_rule(&self, caller: &Caller, spec: RuleSpec) -> Result<Rule> {
        let id = self.authenticate(caller).await?;
        sync::check_name(&spec.name)?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{}", spec.name), Capability::Update).await?;
        let _guard = self.admin.lock().await;
        let mut rule = self.rule_from(spec)?;
        rule.authorizations = self.rule_authority(&id, &rule).await?;
        rule.written_by = format!("{} ({})", id.accessor, id.display_name);
        let rules = self.sync_rules().await?;
        if let Some(old) = rules.iter().find(|r| r.name == rule.name) {
            // Same rule, new settings: keep its id, so its records stay valid.
            rule.id = old.id.clone();
            rule.created = old.created;
        }
        sync::check_rules(&rule, &rules)?;
        let mut batch = WriteBatch::new();
        batch.put(format!("{RULES}{}", rule.name), encode_json(&rule));
        self.barrier.commit(batch).await?;
        self.sync.rules.clear();
        // A first scan soon: existing secrets replicate.
        self.sync.last_scan.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
        self.sync.notify.notify_one();
        Ok(rule)
    }

    pub async fn get_sync_rule(&self, caller: &Caller, name: &str) -> Result<Rule> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{name}"), Capability::Read).await?;
        self.sync_rules()
            .await?
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no sync rule {name:?}")))
    }

    pub async fn list_sync_rules(&self, caller: &Caller) -> Result<Vec<Rule>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/rules", Capability::List).await?;
        Ok(self.sync_rules().await?.as_ref().clone())
    }

    /// Deletes a rule and its records; replicas stay where they are.
    pub async fn delete_sync_rule(&self, caller: &Caller, name: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{name}"), Capability::Delete).await?;
        let _guard = self.admin.lock().await;
        let rules = self.sync_rules().await?;
        let Some(rule) = rules.iter().find(|r| r.name == name) else {
            return Err(Error::NotFound(format!("no sync rule {name:?}")));
        };
        let mut batch = WriteBatch::new();
        batch.delete(format!("{RULES}{name}"));
        self.barrier.commit(batch).await?;
        self.sync.rules.clear();
        self.delete_prefix(&format!("{STATE}{}/", rule.id)).await?;
        self.sync.status.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| r != name);
        Ok(())
    }

    pub(crate) async fn sync_rules(&self) -> Result<Arc<Vec<Rule>>> {
        let ticket = match self.sync.rules.lookup(&()) {
            Ok(r) => return Ok(r),
            Err(ticket) => ticket,
        };
        let mut rules = Vec::new();
        for key in self.barrier.list(RULES, None, 10_000).await? {
            let raw = self
                .barrier
                .get(&key)
                .await?
                .ok_or_else(|| Error::Corrupt { key: key.clone(), reason: "vanished".into() })?;
            let rule: Rule =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?;
            rules.push(rule);
        }
        let rules = Arc::new(rules);
        #[cfg(test)]
        self.load_hold("rules").await;
        self.sync.rules.fill(ticket, (), rules.clone());
        Ok(rules)
    }

    // ----- status ---------------------------------------------------------------

    pub async fn sync_status(&self, caller: &Caller, rule: &str) -> Result<SyncStatus> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/status", Capability::Read).await?;
        self.status_now(rule).await
    }

    async fn status_now(&self, rule: &str) -> Result<SyncStatus> {
        let rules = self.sync_rules().await?;
        if !rule.is_empty() && !rules.iter().any(|r| r.name == rule) {
            return Err(Error::NotFound(format!("no sync rule {rule:?}")));
        }
        let mut targets: BTreeMap<(String, String), TargetStatus> = self
            .sync
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| rule.is_empty() || s.rule == rule)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Replicas this process has not looked at yet (since a restart):
        // their stored records say what was last written.
        for r in rules.iter().filter(|r| rule.is_empty() || r.name == rule) {
            for (target, rec) in self.records_of(r).await? {
                targets.entry((r.name.clone(), target.clone())).or_insert_with(|| recorded_status(r, target, &rec));
            }
        }
        let targets = targets.into_values().collect();
        let pending = self.pending_entries(rule).await?;
        let table = self.loaded()?.table();
        let mut calls = Vec::new();
        for (path, stats) in self.mount_stats() {
            let kind = table.get(&path).map(|m| m.kind.clone()).unwrap_or_default();
            for (k, n) in stats.by_kind {
                calls.push((path.clone(), kind.clone(), k, n));
            }
        }
        calls.sort();
        Ok(SyncStatus { targets, pending, calls, settled: false })
    }

    async fn journaled_paths(&self, rule: &str) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        let mut start: Option<String> = None;
        loop {
            let keys = self.barrier.list(JOURNAL, start.as_deref(), JOURNAL_BATCH).await?;
            if keys.is_empty() {
                return Ok(out);
            }
            for k in &keys {
                if let Some(raw) = self.barrier.get(k).await?
                    && let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw)
                    && e.rule == rule
                {
                    out.insert(e.path);
                }
            }
            start = keys.last().map(|k| format!("{k}\0"));
        }
    }

    async fn pending_entries(&self, rule: &str) -> Result<u64> {
        let mut n = 0;
        let mut start: Option<String> = None;
        loop {
            let keys = self.barrier.list(JOURNAL, start.as_deref(), JOURNAL_BATCH).await?;
            if keys.is_empty() {
                return Ok(n);
            }
            for k in &keys {
                if rule.is_empty() {
                    n += 1;
                } else if let Some(raw) = self.barrier.get(k).await?
                    && serde_json::from_slice::<JournalEntry>(&raw).is_ok_and(|e| e.rule == rule)
                {
                    n += 1;
                }
            }
            start = keys.last().map(|k| format!("{k}\0"));
        }
    }

    /// Scans now and, with `wait`, answers when nothing is pending (or at
    /// the timeout, with what is left).
    pub async fn sync_run(&self, caller: &Caller, rule: &str, wait: bool, timeout: Duration) -> Result<SyncStatus> {
        self.sync_run_scan(caller, rule, wait, timeout, true).await
    }

    /// As [`Core::sync_run`]; `deep: false` scans as the periodic quick scan.
    pub async fn sync_run_scan(
        &self,
        caller: &Caller,
        rule: &str,
        wait: bool,
        timeout: Duration,
        deep: bool,
    ) -> Result<SyncStatus> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/run", Capability::Update).await?;
        let rules = self.sync_rules().await?;
        if !rule.is_empty() && !rules.iter().any(|r| r.name == rule) {
            return Err(Error::NotFound(format!("no sync rule {rule:?}")));
        }
        // The worker scans (one scanner at a time, and no request holds a
        // long scan); a wait follows its progress.
        let names: Vec<String> =
            rules.iter().filter(|r| rule.is_empty() || r.name == rule).map(|r| r.name.clone()).collect();
        let before: HashMap<String, u64> = {
            let done = self.sync.scans_done.lock().unwrap_or_else(|p| p.into_inner());
            names.iter().map(|n| (n.clone(), done.get(n).copied().unwrap_or(0))).collect()
        };
        {
            let mut forced = self.sync.forced.lock().unwrap_or_else(|p| p.into_inner());
            for n in &names {
                let d = forced.entry(n.clone()).or_insert(deep);
                *d |= deep;
            }
        }
        self.sync.notify.notify_one();
        let deadline = Instant::now() + timeout;
        loop {
            if wait {
                self.sync_pass().await?;
            }
            let mut status = self.status_now(rule).await?;
            let scanned = {
                let done = self.sync.scans_done.lock().unwrap_or_else(|p| p.into_inner());
                names.iter().all(|n| done.get(n).copied().unwrap_or(0) > before[n])
            };
            status.settled = scanned && status.pending == 0;
            if !wait || status.settled || Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

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

    // ----- the worker -------------------------------------------------------------

    /// Runs the reconciler until the process ends: replays the journal,
    /// replicates, scans when due. Idle while sealed.
    pub async fn sync_worker(self: Arc<Self>) {
        loop {
            let wait = match self.sync_pass().await {
                Ok(d) => d,
                Err(Error::Sealed) => Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "sync: a pass failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.sync.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: the journal, then due scans. Returns how long to sleep.
    pub(crate) async fn sync_pass(&self) -> Result<Duration> {
        self.loaded()?;
        let _one = self.sync.pass_lock.lock().await;
        let rules_seen = self.sync.rules.ticket();
        let rules = self.sync_rules().await?;
        let mut next = Duration::from_secs(1);
        // The journal, oldest first, grouped by rule and path (coalescing).
        let keys = self.barrier.list(JOURNAL, None, JOURNAL_BATCH).await?;
        let full_batch = keys.len() == JOURNAL_BATCH;
        let mut progressed = false;
        let mut groups: BTreeMap<(String, String), (u64, Vec<String>)> = BTreeMap::new();
        let mut orphans = WriteBatch::new();
        let mut orphaned = false;
        for k in keys {
            let Some(raw) = self.barrier.get(&k).await? else { continue };
            let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw) else {
                orphans.delete(k);
                orphaned = true;
                continue;
            };
            if !rules.iter().any(|r| r.name == e.rule) {
                orphans.delete(k);
                orphaned = true;
                continue;
            }
            let g = groups.entry((e.rule, e.path)).or_insert((e.at_ms, Vec::new()));
            g.0 = g.0.min(e.at_ms);
            g.1.push(k);
        }
        if orphaned {
            self.barrier.commit(orphans).await?;
        }
        for ((rule_name, path), (first, keys)) in groups {
            let Some(rule) = rules.iter().find(|r| r.name == rule_name) else { continue };
            let due = first + rule.coalesce_ms;
            let now = sync::now_ms();
            if due > now {
                next = next.min(Duration::from_millis(due - now));
                continue;
            }
            let retry_key = format!("{rule_name}\0{path}");
            if self.sync.backoff(&retry_key) {
                next = next.min(Duration::from_millis(200));
                continue;
            }
            match self.replicate(rule, &path).await {
                Ok(true) => {
                    self.sync.succeeded(&retry_key);
                    let mut batch = WriteBatch::new();
                    for k in keys {
                        batch.delete(k);
                    }
                    self.barrier.commit(batch).await?;
                    progressed = true;
                }
                Ok(false) => self.sync.failed(&retry_key),
                Err(Error::Sealed) => return Err(Error::Sealed),
                Err(e) => {
                    tracing::warn!(rule = %rule_name, path = %path, error = %e, "sync: replication failed; will retry");
                    self.sync.failed(&retry_key);
                }
            }
        }
        if full_batch && progressed {
            // More entries are waiting: come straight back.
            next = Duration::ZERO;
        }
        // Rotations in progress.
        if let Some(w) = self.rotations_pass().await? {
            next = next.min(w);
        }
        // Scans when due.
        for rule in rules.iter() {
            let due = {
                let last = self.sync.last_scan.lock().unwrap_or_else(|p| p.into_inner());
                match last.get(&rule.name) {
                    None => Duration::ZERO,
                    Some(t) => Duration::from_secs(rule.scan_interval_secs).saturating_sub(t.elapsed()),
                }
            };
            let forced = self.sync.forced.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
            if due.is_zero() || forced.is_some() {
                let deep = forced.unwrap_or(false) || {
                    let last = self.sync.last_deep_scan.lock().unwrap_or_else(|p| p.into_inner());
                    last.get(&rule.name).is_none_or(|t| t.elapsed() >= Duration::from_secs(rule.deep_interval()))
                };
                if let Err(e) = self.scan(rule, deep).await {
                    tracing::warn!(rule = %rule.name, error = %e, "sync: scan failed");
                }
                // The rules changed during this pass: this scan may have used
                // a rule's old settings, so the next pass scans it again.
                if self.sync.rules.changed_since(rules_seen) {
                    self.sync.last_scan.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
                    next = Duration::ZERO;
                }
            } else {
                next = next.min(due);
            }
        }
        Ok(next)
    }

    pub(crate) async fn fingerprint_key(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        if let Some(k) = self.barrier.get(FP_KEY).await? {
            return Ok(k);
        }
        let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let (existing, stamp) = self.barrier.get_stamped(FP_KEY).await?;
        if let Some(k) = existing {
            return Ok(k);
        }
        let mut batch = WriteBatch::new();
        batch.expect(FP_KEY, &stamp).put(FP_KEY, key.clone());
        match self.barrier.commit(batch).await {
            Ok(()) => Ok(key),
            // Another writer won: use theirs.
            Err(_) => self.barrier.get(FP_KEY).await?.ok_or_else(|| Error::Corrupt {
                key: FP_KEY.into(),
                reason: "missing after a conflicting write".into(),
            }),
        }
    }

    /// The stored records of a rule's replicas, by target path.
    async fn records_of(&self, rule: &Rule) -> Result<BTreeMap<String, Record>> {
        let prefix = format!("{STATE}{}/", rule.id);
        let mut records: BTreeMap<String, Record> = BTreeMap::new();
        let mut start: Option<String> = None;
        loop {
            let keys = self.barrier.list(&prefix, start.as_deref(), 512).await?;
            if keys.is_empty() {
                return Ok(records);
            }
            for k in &keys {
                if let Some(r) = self.record(k).await? {
                    records.insert(k[prefix.len()..].to_string(), r);
                }
            }
            start = keys.last().map(|k| format!("{k}\0"));
        }
    }

    pub(crate) async fn record(&self, key: &str) -> Result<Option<Record>> {
        match self.barrier.get(key).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() }),
        }
    }

    pub(crate) async fn save_record(&self, key: &str, r: &Record) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key.to_string(), encode_json(r));
        self.barrier.commit(batch).await.map_err(Error::from)
    }

    async fn drop_record(&self, key: &str) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key.to_string());
        self.barrier.commit(batch).await.map_err(Error::from)
    }

    /// Brings every target of `rule` in line with the source secret at
    /// `path`. `Ok(true)`: every target handled (in sync, or a conflict
    /// reported); `Ok(false)`: some target failed and will be retried.
    async fn replicate(&self, rule: &Rule, path: &str) -> Result<bool> {
        self.rule_routes_hold(rule)?;
        let table = self.loaded()?.table();
        let (src_engine, _, src_rel) = self.route(&table, path).await?;
        let source = src_engine.read_current(src_rel).await?;
        let mark = match (&src_engine, &source) {
            (_, None) => String::new(),
            (Engine::Local(_), Some((_, v))) => v.to_string(),
            (Engine::Cloud(c), Some(_)) => c.current(src_rel).await?.map(|(id, _, _)| id).unwrap_or_default(),
        };
        let fp_key = self.fingerprint_key().await?;
        let mut all = true;
        let mut adopted = false;
        for target in &rule.targets {
            let Some(tpath) = rule.target_path(target, path) else { continue };
            let r = self.replicate_target(rule, path, &tpath, (source.as_ref(), &mark), &fp_key, &mut adopted).await;
            if let Err(e) = r {
                let v = source.as_ref().map_or(0, |s| s.1);
                self.sync.set_status(rule, path, &tpath, "error", e.to_string(), v);
                all = false;
            }
        }
        Ok(all)
    }

    async fn replicate_target(
        &self,
        rule: &Rule,
        path: &str,
        tpath: &str,
        (source, mark): (Option<&(SecretValue, u64)>, &str),
        fp_key: &[u8],
        adopted: &mut bool,
    ) -> Result<()> {
        let table = self.loaded()?.table();
        let (engine, _, rel) = self.route(&table, tpath).await?;
        let _guard = self.write_lock(tpath).await;
        let key = sync::state_key(&rule.id, tpath);
        let mut rec = self.record(&key).await?;
        let cur = engine.current(rel).await?;
        // A write sent before a crash: did it land?
        if let (Some(r), Some(c)) = (rec.as_mut(), cur.as_ref())
            && r.pending
        {
            if let Some((v, _)) = engine.read_current(rel).await?
                && sync::fingerprint(fp_key, &v) == r.fingerprint
            {
                r.version_id = c.id.clone();
                r.marker = c.marker.clone();
            }
            r.pending = false;
            self.save_record(&key, r).await?;
        }
        let Some((value, sv)) = source else {
            // The source is gone.
            return match (rule.delete, rec) {
                (OnDelete::Propagate, Some(r)) if cur.as_ref().is_some_and(|c| c.id == r.version_id) => {
                    engine.delete_replica(rel).await?;
                    self.sync.publish(tpath, "deleted", 0, "");
                    self.drop_record(&key).await?;
                    self.sync.set_status(rule, path, tpath, "in_sync", "deleted with the source".into(), 0);
                    Ok(())
                }
                (OnDelete::Propagate, Some(_)) if cur.is_some() => {
                    self.sync.set_status(
                        rule,
                        path,
                        tpath,
                        "conflict",
                        "the source was deleted, but the replica was changed outside Keybridge; left as it is".into(),
                        0,
                    );
                    Ok(())
                }
                (_, Some(mut r)) => {
                    r.stale = true;
                    self.save_record(&key, &r).await?;
                    self.sync.set_status(
                        rule,
                        path,
                        tpath,
                        "stale",
                        "the source was deleted; the replica is kept".into(),
                        0,
                    );
                    Ok(())
                }
                (_, None) => Ok(()),
            };
        };
        let fp = sync::fingerprint(fp_key, value);
        let ours = cur.as_ref().is_some_and(|c| c.tags.get(MARKER_TAG) == Some(&rule.id));
        if rec.as_ref().is_some_and(|r| r.foreign) {
            rec = None;
        }
        let owned = rec.is_some() || ours;
        if cur.is_some() && !owned && !rule.take_over {
            let foreign = Record {
                source: path.to_string(),
                source_version: *sv,
                foreign: true,
                source_mark: mark.to_string(),
                ..Default::default()
            };
            self.save_record(&key, &foreign).await?;
            self.sync.set_status(
                rule,
                path,
                tpath,
                "conflict",
                "the target exists and was not written by Keybridge; left alone (set take_over to replace it)".into(),
                *sv,
            );
            return Ok(());
        }
        let (engine_r, cur_r, fp_r, key_r) = (&engine, &cur, &fp, &key);
        let write = move |message: String| async move {
            let (engine, cur, fp, key) = (engine_r, cur_r, fp_r, key_r);
            let pending = Record {
                source: path.to_string(),
                fingerprint: fp.clone(),
                version_id: cur.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                marker: None,
                source_version: *sv,
                pending: true,
                stale: false,
                foreign: false,
                source_mark: mark.to_string(),
            };
            self.save_record(key, &pending).await?;
            let (id, marker) = engine.write_replica(rel, value, &rule.id, cur.as_ref()).await?;
            self.sync.publish(tpath, "replicated", id.parse().unwrap_or(0), &id);
            let done = Record { version_id: id, marker, pending: false, ..pending };
            self.save_record(key, &done).await?;
            self.sync.set_status(rule, path, tpath, "in_sync", message, *sv);
            Ok::<_, Error>(())
        };
        match (&cur, &rec) {
            (Some(c), Some(r)) if c.id == r.version_id => {
                if r.fingerprint == fp {
                    if r.source_version != *sv || r.stale || r.source_mark != mark {
                        let mut r = r.clone();
                        r.source_version = *sv;
                        r.source_mark = mark.to_string();
                        r.stale = false;
                        self.save_record(&key, &r).await?;
                    }
                    self.sync.set_status(rule, path, tpath, "in_sync", String::new(), *sv);
                    Ok(())
                } else {
                    write(String::new()).await
                }
            }
            (Some(c), Some(r)) => {
                // Changed outside Keybridge (or only its metadata changed).
                let theirs = engine.read_current(rel).await?;
                let tfp = theirs.as_ref().map(|(v, _)| sync::fingerprint(fp_key, v));
                if tfp.as_deref() == Some(fp.as_str()) {
                    let mut r = r.clone();
                    r.version_id = c.id.clone();
                    r.marker = c.marker.clone();
                    r.fingerprint = fp;
                    r.source_version = *sv;
                    r.source_mark = mark.to_string();
                    self.save_record(&key, &r).await?;
                    self.sync.set_status(rule, path, tpath, "in_sync", String::new(), *sv);
                    return Ok(());
                }
                let what = format!("changed outside Keybridge (now version {})", c.id);
                match rule.on_conflict {
                    OnConflict::Overwrite => write(format!("{what}; restored from the source")).await,
                    OnConflict::Alert => {
                        self.sync.set_status(rule, path, tpath, "conflict", format!("{what}; left as it is"), *sv);
                        Ok(())
                    }
                    OnConflict::Adopt if r.fingerprint != fp || *adopted => {
                        // The source moved too, or another target was adopted
                        // in this pass: the source wins.
                        write(format!("{what}, while the source changed too; the source won")).await?;
                        self.sync.set_status(
                            rule,
                            path,
                            tpath,
                            "conflict",
                            format!(
                                "{what}, while the source changed too; the source won and the replica was restored"
                            ),
                            *sv,
                        );
                        Ok(())
                    }
                    OnConflict::Adopt => {
                        let Some((theirs, _)) = theirs else {
                            return write(format!("{what}; unreadable there, restored from the source")).await;
                        };
                        let tfp = tfp.unwrap_or_default();
                        *adopted = true;
                        let version = self.sync_adopt(path, tpath, &theirs).await?;
                        let mut r = r.clone();
                        r.version_id = c.id.clone();
                        r.marker = c.marker.clone();
                        r.fingerprint = tfp;
                        r.source_version = version;
                        self.save_record(&key, &r).await?;
                        self.sync.set_status(
                            rule,
                            path,
                            tpath,
                            "in_sync",
                            format!("{what}; adopted as source version {version}"),
                            version,
                        );
                        Ok(())
                    }
                }
            }
            (None, Some(_)) => match rule.on_conflict {
                OnConflict::Alert => {
                    self.sync.set_status(
                        rule,
                        path,
                        tpath,
                        "conflict",
                        "deleted outside Keybridge; left as it is".into(),
                        *sv,
                    );
                    Ok(())
                }
                _ => write("deleted outside Keybridge; recreated from the source".into()).await,
            },
            (None, None) | (Some(_), None) => write(String::new()).await,
        }
    }

    /// Writes a target's value to the source (audited, fail-closed), which
    /// announces it for replication everywhere.
    async fn sync_adopt(&self, path: &str, from: &str, value: &SecretValue) -> Result<u64> {
        let caller = sync::adopt_caller(path, from, value);
        self.audit_request(&caller, None).await;
        if caller.state().audit_failed {
            return Err(Error::AuditFailed("no audit device could record the adopt; it was not carried out".into()));
        }
        let table = self.loaded()?.table();
        let res = async {
            let (engine, _, rel) = self.route(&table, path).await?;
            self.sync_announce(path).await?;
            let v = match engine {
                Engine::Local(kv) => kv.put(rel, value, None).await?.0,
                Engine::Cloud(c) => c.put(rel, value, None).await?.0,
            };
            self.sync_wake();
            Ok(v)
        }
        .await;
        self.finish(&caller, res, |v| vec![("version".into(), crate::audit::AuditValue::plain(*v))]).await
    }

    /// Looks for changes the journal did not announce: source versions not
    /// replicated yet, sources deleted, replicas changed or deleted outside
    /// Keybridge.
    /// `deep`: also describe each replica on clouds whose listing does not
    /// tell every version apart (GCP shows none, Azure an update time in
    /// seconds); quick scans only list them.
    async fn scan(&self, rule: &Rule, deep: bool) -> Result<()> {
        self.sync.last_scan.lock().unwrap_or_else(|p| p.into_inner()).insert(rule.name.clone(), Instant::now());
        self.rule_routes_hold(rule)?;
        if deep {
            self.sync
                .last_deep_scan
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rule.name.clone(), Instant::now());
        }
        let table = self.loaded()?.table();
        let mut todo: BTreeMap<String, ()> = BTreeMap::new();
        let records = self.records_of(rule).await?;
        // Source side.
        let (src_engine, src_mount, src_rel) = self.route(&table, &rule.source).await?;
        let sources: HashSet<String> = match src_engine.list_all(src_rel).await {
            Ok(v) => v.into_iter().map(|r| format!("{}{r}", src_mount.path)).collect(),
            Err(Error::NotFound(_)) => HashSet::new(),
            Err(e) => return Err(e),
        };
        // A cloud source's listing shows AWS's current version id; other
        // clouds' sources are described one by one.
        let listed_marks = match &src_engine {
            Engine::Cloud(c) if c.stages_natively() => Some(c.list_markers(src_rel).await?),
            _ => None,
        };
        for s in &sources {
            let rel = &s[src_mount.path.len()..];
            let mark = match (&src_engine, &listed_marks) {
                (Engine::Local(kv), _) => {
                    kv.describe(rel).await.map(|m| m.current_version.to_string()).unwrap_or_default()
                }
                (Engine::Cloud(_), Some(m)) => m.get(rel).cloned().flatten().unwrap_or_default(),
                (Engine::Cloud(c), None) => c.current(rel).await?.map(|(id, _, _)| id).unwrap_or_default(),
            };
            for t in &rule.targets {
                let Some(tp) = rule.target_path(t, s) else { continue };
                match records.get(&tp) {
                    Some(r) if r.foreign && r.source_mark == mark && !rule.take_over => {}
                    Some(r) if r.source_mark == mark && !r.pending && !r.stale && !r.foreign => {}
                    _ => {
                        todo.insert(s.clone(), ());
                    }
                }
            }
        }
        for r in records.values() {
            if !sources.contains(&r.source) && !r.stale && !r.foreign {
                todo.insert(r.source.clone(), ());
            }
        }
        // Target side: one listing per target where the cloud's listing
        // carries markers, else a describe per replica.
        for t in &rule.targets {
            let (engine, mount, rel) = self.route(&table, t).await?;
            let mine: Vec<(&String, &Record)> =
                records.iter().filter(|(p, r)| p.starts_with(t.as_str()) && !r.foreign).collect();
            if mine.is_empty() {
                continue;
            }
            match &engine {
                Engine::Cloud(c) if c.markers_exact() || !deep => {
                    let listed = c.list_markers(rel).await?;
                    for (tp, r) in mine {
                        let rel_path = &tp[mount.path.len()..];
                        let why = match listed.get(rel_path) {
                            None => Some("deleted outside Keybridge"),
                            Some(m) if m.is_some() && *m != r.marker => Some("changed since Keybridge wrote it"),
                            Some(_) => None,
                        };
                        if let Some(why) = why {
                            self.sync.set_status(rule, &r.source, tp, "drifted", why.into(), r.source_version);
                            todo.insert(r.source.clone(), ());
                        }
                    }
                }
                _ => {
                    for (tp, r) in mine {
                        let now = engine.current(&tp[mount.path.len()..]).await?;
                        if now.as_ref().map(|c| &c.id) != Some(&r.version_id) {
                            let why = if now.is_none() {
                                "deleted outside Keybridge"
                            } else {
                                "changed since Keybridge wrote it"
                            };
                            self.sync.set_status(rule, &r.source, tp, "drifted", why.into(), r.source_version);
                            todo.insert(r.source.clone(), ());
                        }
                    }
                }
            }
        }
        // Changes the journal holds are the journal's (and its coalescing
        // window's) to replicate.
        let journaled = self.journaled_paths(&rule.name).await?;
        let paths: Vec<&String> = todo.keys().filter(|p| !journaled.contains(*p)).collect();
        // A few secrets at a time (each one's targets in turn).
        for chunk in paths.chunks(PARALLEL) {
            let runs = chunk.iter().map(|path| async move {
                let retry_key = format!("{}\0{path}", rule.name);
                match self.replicate(rule, path).await {
                    Ok(true) => self.sync.succeeded(&retry_key),
                    Ok(false) => self.sync.failed(&retry_key),
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, path = %path, error = %e, "sync: scan replication failed");
                        self.sync.failed(&retry_key);
                    }
                }
            });
            futures::future::join_all(runs).await;
        }
        *self.sync.scans_done.lock().unwrap_or_else(|p| p.into_inner()).entry(rule.name.clone()).or_insert(0) += 1;
        Ok(())
    }
}

/// A replica's status from its stored record alone, before this process
/// has replicated or scanned it: what was last written, said as such.
fn recorded_status(rule: &Rule, target: String, rec: &Record) -> TargetStatus {
    let (state, message) = if rec.stale {
        ("stale", "the source was deleted (as last recorded)")
    } else if rec.pending {
        ("pending", "a write was under way when the server stopped; the next pass checks it")
    } else if rec.foreign {
        ("conflict", "another tool's secret, left alone (as last recorded)")
    } else {
        ("in_sync", "as last replicated; not checked since the server started")
    };
    TargetStatus {
        rule: rule.name.clone(),
        source: rec.source.clone(),
        target,
        state,
        message: message.to_string(),
        // Unknown: the record keeps no time (shown as unset).
        updated: Timestamp::default(),
        source_version: rec.source_version,
    }
}
