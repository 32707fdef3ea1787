//! The reconciler's worker: it drains the journal, replicates each change
//! to every target (a pending record before each replica write), and
//! reports status. The model and its storage layout are in `mod.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use keybridge_audit::Timestamp;
use keybridge_barrier::{Stamp, WriteBatch};
use keybridge_value::SecretValue;

use crate::{
    Error, FP_KEY, Host, JOURNAL, JournalEntry, MARKER_TAG, OnConflict, OnDelete, Reconciler, Record, Result, Rule,
    TargetStatus, encode_json, fingerprint, now_ms, state_key,
};

/// One mount's cloud calls of one kind: how many, and the time they took.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallCount {
    pub mount: String,
    /// The kind of mount (`aws`, ...).
    pub provider: String,
    /// read_value, read_meta, list, write.
    pub kind: &'static str,
    pub calls: u64,
    pub time: std::time::Duration,
}

/// What a status asks for: one rule's replicas or every rule's, of one
/// state or all, a page at a time.
#[derive(Clone, Debug, Default)]
pub struct StatusQuery {
    /// Empty: every rule.
    pub rule: String,
    /// Empty: every state.
    pub state: String,
    /// 0: [`DEFAULT_PAGE`]; at most [`MAX_PAGE`].
    pub page_size: u32,
    /// A `next_page` token from an earlier answer: start after it.
    pub after: String,
}

impl StatusQuery {
    /// The first page of a rule's replicas (every rule's with `rule` empty).
    pub fn of(rule: &str) -> Self {
        StatusQuery { rule: rule.to_string(), ..Default::default() }
    }
}

/// Replicas a status lists when the query names no page size.
pub const DEFAULT_PAGE: u32 = 1000;
/// The most replicas one status lists.
pub const MAX_PAGE: u32 = 10_000;
/// The states a replica can be in.
pub const STATES: [&str; 6] = ["in_sync", "pending", "drifted", "conflict", "error", "stale"];

/// How many replicas of one rule's target folder are in one state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateCount {
    pub rule: String,
    pub target: String,
    pub state: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    /// One page of the replicas asked for, by rule and target path.
    pub targets: Vec<TargetStatus>,
    /// Where the next page starts (empty after the last).
    pub next_page: String,
    /// Every replica of the rules asked for, counted by target and state
    /// (whatever the state asked for), on the first page only: later pages
    /// start at their token and stop when full.
    pub counts: Vec<StateCount>,
    pub pending: u64,
    pub calls: Vec<CallCount>,
    /// From a run: the scan it asked for has run and nothing is pending.
    pub settled: bool,
    /// From a run: given back to `run` as its `resume`, it waits for the
    /// same scan instead of asking for another.
    pub resume: String,
}

/// What a `Run` answer's resume token holds: the reconciler that made it,
/// the last scan number when the run asked, and whether it asked for deep
/// scans.
#[derive(serde::Serialize, serde::Deserialize)]
struct Resume {
    i: u64,
    n: u64,
    d: bool,
    /// The rules it waits for (a digest of their names).
    r: String,
}

/// A digest of the rules a run waits for, for its resume token.
fn rules_digest(names: &[String]) -> String {
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for n in names {
        sha2::Digest::update(&mut h, n.as_bytes());
        sha2::Digest::update(&mut h, [0u8]);
    }
    hex::encode(&sha2::Digest::finalize(h)[..8])
}

impl super::Scans {
    /// Whether a scan of `rule` numbered above `n` (a deep one, with
    /// `deep`) has finished.
    fn done_since(&self, rule: &str, n: u64, deep: bool) -> bool {
        let done = if deep { &self.done_deep } else { &self.done };
        done.get(rule).is_some_and(|d| *d > n)
    }
}

const JOURNAL_BATCH: usize = 512;
/// Journal entries a metrics reading decrypts to find each rule's oldest.
const JOURNAL_GAUGE_READS: u64 = 1024;

/// A journal entry's key, and the stamp it was read with.
type Entry = (String, Stamp);
/// Secrets replicated at once by a scan.
pub(crate) const PARALLEL: usize = 8;

impl Reconciler {
    // ----- status ---------------------------------------------------------------

    /// A page of replica statuses (`q`), every replica counted by state,
    /// the journal entries pending and the cloud calls made. Replicas are
    /// read from their records a page at a time; what this process found
    /// wrong since it started (kept in memory, only while it lasts)
    /// overrides what a record says.
    pub async fn status(&self, host: &dyn Host, q: &StatusQuery) -> Result<SyncStatus> {
        let page_size = match q.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Error::InvalidArgument(format!(
                    "page_size {n} is over the most a page holds ({MAX_PAGE})"
                )));
            }
            n => n,
        } as usize;
        if !q.state.is_empty() && !STATES.contains(&q.state.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "no replica state {:?}: one of {}",
                q.state,
                STATES.join(", ")
            )));
        }
        let after = match q.after.as_str() {
            "" => None,
            a => Some(a.split_once(':').ok_or_else(|| {
                Error::InvalidArgument(format!("page token {a:?} is not one this server gave (rule:target)"))
            })?),
        };
        let rules = self.rules(host).await?;
        if !q.rule.is_empty() && !rules.iter().any(|r| r.name == q.rule) {
            return Err(Error::NotFound(format!("no sync rule {:?}", q.rule)));
        }
        let mut rules: Vec<&Rule> = rules.iter().filter(|r| q.rule.is_empty() || r.name == q.rule).collect();
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = SyncStatus::default();
        let mut counts: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
        // Atomic only to be Send across the awaits below.
        let more = std::sync::atomic::AtomicBool::new(false);
        // The first page counts every replica (a read of every record);
        // a later one starts where the token says and stops when full.
        let counting = after.is_none();
        for rule in rules {
            if let Some((r, _)) = after
                && rule.name.as_str() < r
            {
                continue;
            }
            // Where this rule's listing starts: after the token's target.
            let from = after.filter(|(r, _)| *r == rule.name).map(|(_, t)| t.to_string());
            // What this process found wrong, by target path (a snapshot).
            let found: BTreeMap<String, TargetStatus> = self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .range((rule.name.clone(), from.clone().unwrap_or_default())..)
                .take_while(|((r, _), _)| *r == rule.name)
                .map(|((_, t), s)| (t.clone(), s.clone()))
                .collect();
            let mut found = found.into_iter().peekable();
            let mut emit = |s: TargetStatus| {
                if counting {
                    let target = rule.targets.iter().find(|t| s.target.starts_with(t.as_str())).cloned();
                    let target =
                        target.unwrap_or_else(|| s.target.split_inclusive('/').next().unwrap_or("").to_string());
                    *counts.entry((rule.name.clone(), target, s.state)).or_insert(0) += 1;
                }
                let wanted = (q.state.is_empty() || q.state == s.state)
                    && after.is_none_or(|(r, t)| (rule.name.as_str(), s.target.as_str()) > (r, t));
                if wanted {
                    if out.targets.len() < page_size {
                        out.targets.push(s);
                    } else {
                        more.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            };
            let mut last: Option<String> = from;
            loop {
                if !counting && more.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let records = self.records_page(&rule.id, "", last.as_deref()).await?;
                let Some((l, _)) = records.last() else { break };
                last = Some(l.clone());
                for (target, rec) in records {
                    while let Some((_, s)) = found.next_if(|(t, _)| *t < target) {
                        emit(s);
                    }
                    match found.next_if(|(t, _)| *t == target) {
                        Some((_, s)) => emit(s),
                        None => emit(recorded_status(rule, target, &rec)),
                    }
                }
            }
            for (_, s) in found {
                emit(s);
            }
            if !counting && more.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        if more.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(l) = out.targets.last()
        {
            out.next_page = format!("{}:{}", l.rule, l.target);
        }
        out.counts = counts
            .into_iter()
            .map(|((rule, target, state), count)| StateCount { rule, target, state, count })
            .collect();
        out.pending = self.journal_count(&q.rule).await?;
        out.calls = host.call_counts();
        out.calls.sort();
        Ok(out)
    }

    pub(crate) async fn journaled_paths(&self, rule: &str) -> Result<HashSet<String>> {
        Ok(self.journal_entries(rule).await?.into_iter().map(|e| e.path).collect())
    }

    /// How many journal entries there are: of one rule, or of every rule
    /// with `rule` empty.
    /// The journal's depth and ages, for the metrics: keys are listed (they
    /// sort by when they were written), and entries read only until every
    /// rule's oldest is known.
    pub async fn journal_gauge(&self) -> Result<crate::JournalGauge> {
        let mut g = crate::JournalGauge::default();
        let rules = self.barrier.list(crate::RULES, None, 10_000).await?.len();
        let mut start: Option<String> = None;
        while (g.depth as usize) < crate::JOURNAL_GAUGE_MAX {
            let keys = self.barrier.list(JOURNAL, start.as_deref(), JOURNAL_BATCH).await?;
            if keys.is_empty() {
                break;
            }
            for k in &keys {
                g.depth += 1;
                let at = k[JOURNAL.len()..].split('-').next().and_then(|t| t.parse::<u64>().ok());
                if g.oldest_ms.is_none() {
                    g.oldest_ms = at;
                }
                // Entries are read (decrypted) only at the front: a rule with
                // nothing waiting would otherwise make every scrape read
                // the whole journal.
                if g.oldest_by_rule.len() < rules
                    && g.depth <= JOURNAL_GAUGE_READS
                    && let Some(raw) = self.barrier.get(k).await?
                    && let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw)
                {
                    g.oldest_by_rule.entry(e.rule).or_insert(e.at_ms);
                }
            }
            start = keys.last().map(|k| format!("{k}\0"));
        }
        Ok(g)
    }

    async fn journal_count(&self, rule: &str) -> Result<u64> {
        let mut n = 0u64;
        self.each_journal_entry(rule, |_| n += 1).await?;
        Ok(n)
    }

    /// The journal's entries: of one rule, or of every rule with `rule` empty.
    async fn journal_entries(&self, rule: &str) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        self.each_journal_entry(rule, |e| out.push(e)).await?;
        Ok(out)
    }

    async fn each_journal_entry(&self, rule: &str, mut each: impl FnMut(JournalEntry)) -> Result<()> {
        let mut start: Option<String> = None;
        loop {
            let keys = self.barrier.list(JOURNAL, start.as_deref(), JOURNAL_BATCH).await?;
            if keys.is_empty() {
                return Ok(());
            }
            for k in &keys {
                if let Some(raw) = self.barrier.get(k).await?
                    && let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw)
                    && (rule.is_empty() || e.rule == rule)
                {
                    each(e);
                }
            }
            start = keys.last().map(|k| format!("{k}\0"));
        }
    }

    /// Asks for a scan of `rule` (every rule when empty) and, with `wait`,
    /// answers when it has run and nothing is pending (or at the timeout,
    /// with what is left). `deep: false` scans as the periodic quick scan.
    /// `resume` (the token of an earlier answer) waits for the scans that
    /// run asked for, deep as it asked, without asking for others; a token
    /// of another reconciler (the leader changed) asks again.
    pub async fn run(
        &self,
        host: &dyn Host,
        rule: &str,
        wait: bool,
        timeout: Duration,
        deep: bool,
        resume: &str,
    ) -> Result<SyncStatus> {
        let rules = self.rules(host).await?;
        if !rule.is_empty() && !rules.iter().any(|r| r.name == rule) {
            return Err(Error::NotFound(format!("no sync rule {rule:?}")));
        }
        // The worker scans (one scanner at a time, and no request holds a
        // long scan); a wait follows its progress.
        let names: Vec<String> =
            rules.iter().filter(|r| rule.is_empty() || r.name == rule).map(|r| r.name.clone()).collect();
        let resumed = if resume.is_empty() { None } else { Some(parse_resume(resume)?) };
        let before = {
            let mut asks = self.forced.lock().unwrap_or_else(|p| p.into_inner());
            let ask = |asks: &mut HashMap<String, bool>, name: &String, deep: bool| {
                *asks.entry(name.clone()).or_insert(deep) |= deep;
            };
            let digest = rules_digest(&names);
            match resumed {
                // This reconciler's, for these rules: wait for the scans that
                // run asked for. One neither running nor done (deep, if it
                // asked for deep) was taken by a scan that failed, stopped
                // half-way or was quick: asked again (merged into an ask
                // waiting, which it makes deep if it asked for deep).
                Some(r) if r.i == self.instance && r.r == digest => {
                    let scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
                    for n in &names {
                        if !scans.done_since(n, r.n, r.d) && !scans.running.contains(n) {
                            ask(&mut asks, n, r.d);
                        }
                    }
                    r
                }
                // A new run (or another leader's token): ask for a scan of
                // each rule; the next numbers are above this one.
                _ => {
                    for n in &names {
                        ask(&mut asks, n, deep);
                    }
                    let n = self.scans.lock().unwrap_or_else(|p| p.into_inner()).last;
                    Resume { i: self.instance, n, d: deep, r: digest }
                }
            }
        };
        self.notify.notify_one();
        let token = hex::encode(serde_json::to_vec(&before).unwrap_or_default());
        let deadline = Instant::now() + timeout;
        loop {
            // The worker makes the passes when it runs (no request holds a
            // long scan, or cuts one short); with none (an embedded core),
            // the waiting run does.
            if wait && self.workers.load(std::sync::atomic::Ordering::Acquire) == 0 {
                self.pass(host).await?;
            }
            let scanned = {
                let scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
                names.iter().all(|n| scans.done_since(n, before.n, before.d))
            };
            let settled = scanned && self.journal_count(rule).await? == 0;
            if !wait || settled || Instant::now() >= deadline {
                let mut status = self.status(host, &StatusQuery::of(rule)).await?;
                status.settled = settled && status.pending == 0;
                status.resume = token;
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ----- the worker -------------------------------------------------------------

    /// One pass: the journal, rotations, then due scans. Returns how long
    /// to sleep. The worker runs passes until the process ends; idle while
    /// sealed.
    pub async fn pass(&self, host: &dyn Host) -> Result<Duration> {
        host.unsealed()?;
        let _one = self.pass_lock.lock().await;
        let rules_seen = self.rules.ticket();
        let rules = self.rules(host).await?;
        let mut next = Duration::from_secs(1);
        // The journal, oldest first, grouped by rule and path (coalescing).
        let keys = self.barrier.list(JOURNAL, None, JOURNAL_BATCH).await?;
        let full_batch = keys.len() == JOURNAL_BATCH;
        let mut progressed = false;
        let mut groups: BTreeMap<(String, String), (u64, Vec<Entry>)> = BTreeMap::new();
        let mut orphans = WriteBatch::new();
        let mut orphaned = false;
        for k in keys {
            let (raw, stamp) = self.barrier.get_stamped(&k).await?;
            let Some(raw) = raw else { continue };
            let Ok(e) = serde_json::from_slice::<JournalEntry>(&raw) else {
                orphans.expect(k.clone(), &stamp).delete(k);
                orphaned = true;
                continue;
            };
            if !rules.iter().any(|r| r.name == e.rule) {
                orphans.expect(k.clone(), &stamp).delete(k);
                orphaned = true;
                continue;
            }
            let g = groups.entry((e.rule, e.path)).or_insert((e.at_ms, Vec::new()));
            g.0 = g.0.min(e.at_ms);
            g.1.push((k, stamp));
        }
        // As read: an entry touched since stays for the next pass (its
        // rule may be one this node does not know yet).
        if orphaned {
            match self.barrier.commit(orphans).await {
                Ok(()) | Err(keybridge_barrier::Error::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for ((rule_name, path), (first, keys)) in groups {
            let Some(rule) = rules.iter().find(|r| r.name == rule_name) else { continue };
            let due = first + rule.coalesce_ms;
            let now = now_ms();
            if due > now {
                next = next.min(Duration::from_millis(due - now));
                continue;
            }
            let retry_key = format!("{rule_name}\0{path}");
            if self.backoff(&retry_key) {
                next = next.min(Duration::from_millis(200));
                continue;
            }
            match self.replicate(host, rule, &path).await {
                Ok(true) => {
                    self.succeeded(&retry_key);
                    // Each entry as read: one touched since (its change
                    // landed after the read above) stays for the next pass.
                    for (k, stamp) in keys {
                        let mut batch = WriteBatch::new();
                        batch.expect(k.clone(), &stamp).delete(k);
                        match self.barrier.commit(batch).await {
                            Ok(()) | Err(keybridge_barrier::Error::Conflict) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    progressed = true;
                }
                Ok(false) => self.failed(&retry_key),
                Err(Error::Sealed) => return Err(Error::Sealed),
                Err(e) => {
                    tracing::warn!(rule = %rule_name, path = %path, error = %e, "sync: replication failed; will retry");
                    self.failed(&retry_key);
                }
            }
        }
        if full_batch && progressed {
            // More entries are waiting: come straight back.
            next = Duration::ZERO;
        }
        // Rotations in progress.
        if let Some(w) = self.rotations_pass(host).await? {
            next = next.min(w);
        }
        // Scans when due.
        for rule in rules.iter() {
            let due = {
                let last = self.last_scan.lock().unwrap_or_else(|p| p.into_inner());
                match last.get(&rule.name) {
                    None => Duration::ZERO,
                    Some(t) => Duration::from_secs(rule.scan_interval_secs).saturating_sub(t.elapsed()),
                }
            };
            // The ask is taken and the scan numbered together: a `Run` that
            // asks meanwhile either was taken by this scan or waits for the
            // next (its number is above the one it saw).
            let (forced, number) = {
                let mut asks = self.forced.lock().unwrap_or_else(|p| p.into_inner());
                let forced = asks.remove(&rule.name);
                let number = (due.is_zero() || forced.is_some()).then(|| self.number_scan(&rule.name));
                (forced, number)
            };
            if let Some(number) = number {
                let deep = forced.unwrap_or(false) || {
                    let last = self.last_deep_scan.lock().unwrap_or_else(|p| p.into_inner());
                    last.get(&rule.name).is_none_or(|t| t.elapsed() >= Duration::from_secs(rule.deep_interval()))
                };
                if let Err(e) = self.scan(host, rule, deep, number).await {
                    tracing::warn!(rule = %rule.name, error = %e, "sync: scan failed");
                }
                // The rules changed during this pass: this scan may have used
                // a rule's old settings, so the next pass scans it again.
                if self.rules.changed_since(rules_seen) {
                    self.last_scan.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
                    next = Duration::ZERO;
                }
            } else {
                next = next.min(due);
            }
        }
        Ok(next)
    }

    pub async fn fingerprint_key(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
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

    pub async fn record(&self, key: &str) -> Result<Option<Record>> {
        match self.barrier.get(key).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() }),
        }
    }

    /// Stores a record, stamped with the time.
    pub async fn save_record(&self, key: &str, r: &Record) -> Result<()> {
        let mut batch = WriteBatch::new();
        let r = Record { at: Timestamp::now(), ..r.clone() };
        batch.put(key.to_string(), encode_json(&r));
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
    pub(crate) async fn replicate(&self, host: &dyn Host, rule: &Rule, path: &str) -> Result<bool> {
        self.rule_routes_hold(host, rule)?;
        let src = host.route(path).await?;
        let (src_backend, src_rel) = (&src.store, src.rel.as_str());
        // One read gives the value, its number and the backend's version
        // id, which is the mark records keep of the source.
        let (source, mark) = match src_backend.read_current(src_rel).await? {
            Some(c) => (Some((c.value, c.number)), c.id),
            None => (None, String::new()),
        };
        let fp_key = self.fingerprint_key().await?;
        let mut all = true;
        let mut adopted = false;
        for target in &rule.targets {
            let Some(tpath) = rule.target_path(target, path) else { continue };
            let r =
                self.replicate_target(host, rule, path, &tpath, (source.as_ref(), &mark), &fp_key, &mut adopted).await;
            if let Err(e) = r {
                let v = source.as_ref().map_or(0, |s| s.1);
                self.set_status(rule, path, &tpath, "error", e.to_string(), v);
                all = false;
            }
        }
        Ok(all)
    }

    #[allow(clippy::too_many_arguments)]
    async fn replicate_target(
        &self,
        host: &dyn Host,
        rule: &Rule,
        path: &str,
        tpath: &str,
        (source, mark): (Option<&(SecretValue, u64)>, &str),
        fp_key: &[u8],
        adopted: &mut bool,
    ) -> Result<()> {
        let routed = host.route(tpath).await?;
        let (engine, rel) = (&routed.store, routed.rel.as_str());
        let _guard = host.path_lock(tpath).await;
        let key = state_key(&rule.id, tpath);
        let mut rec = self.record(&key).await?;
        let cur = engine.head(rel).await?;
        // A write sent before a crash: did it land?
        if let (Some(r), Some(c)) = (rec.as_mut(), cur.as_ref())
            && r.pending
        {
            if let Some(now) = engine.read_current(rel).await?
                && fingerprint(fp_key, &now.value) == r.fingerprint
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
                    self.publish(tpath, "deleted", 0, "");
                    self.drop_record(&key).await?;
                    self.in_sync(rule, tpath);
                    Ok(())
                }
                (OnDelete::Propagate, Some(_)) if cur.is_some() => {
                    self.set_status(
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
                    self.set_status(
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
        let fp = fingerprint(fp_key, value);
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
            self.set_status(
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
                ..Default::default()
            };
            self.save_record(key, &pending).await?;
            let (id, marker) = engine.write_replica(rel, value, &rule.id, cur.as_ref()).await?;
            self.publish(tpath, "replicated", id.parse().unwrap_or(0), &id);
            let done = Record { version_id: id, marker, pending: false, note: message, ..pending };
            self.save_record(key, &done).await?;
            self.in_sync(rule, tpath);
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
                    self.in_sync(rule, tpath);
                    Ok(())
                } else {
                    write(String::new()).await
                }
            }
            (Some(c), Some(r)) => {
                // Changed outside Keybridge (or only its metadata changed).
                let theirs = engine.read_current(rel).await?.map(|c| (c.value, c.number));
                let tfp = theirs.as_ref().map(|(v, _)| fingerprint(fp_key, v));
                if tfp.as_deref() == Some(fp.as_str()) {
                    let mut r = r.clone();
                    r.version_id = c.id.clone();
                    r.marker = c.marker.clone();
                    r.fingerprint = fp;
                    r.source_version = *sv;
                    r.source_mark = mark.to_string();
                    self.save_record(&key, &r).await?;
                    self.in_sync(rule, tpath);
                    return Ok(());
                }
                let what = format!("changed outside Keybridge (now version {})", c.id);
                match rule.on_conflict {
                    OnConflict::Overwrite => write(format!("{what}; restored from the source")).await,
                    OnConflict::Alert => {
                        self.set_status(rule, path, tpath, "conflict", format!("{what}; left as it is"), *sv);
                        Ok(())
                    }
                    OnConflict::Adopt if r.fingerprint != fp || *adopted => {
                        // The source moved too, or another target was adopted
                        // in this pass: the source wins.
                        write(format!("{what}, while the source changed too; the source won")).await?;
                        self.set_status(
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
                        let version = host.adopt(path, tpath, &theirs).await?;
                        let mut r = r.clone();
                        r.version_id = c.id.clone();
                        r.marker = c.marker.clone();
                        r.fingerprint = tfp;
                        r.source_version = version;
                        r.note = format!("{what}; adopted as source version {version}");
                        self.save_record(&key, &r).await?;
                        self.in_sync(rule, tpath);
                        Ok(())
                    }
                }
            }
            (None, Some(_)) => match rule.on_conflict {
                OnConflict::Alert => {
                    self.set_status(
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
}

/// A replica's status from its stored record alone (this process found
/// nothing wrong with it since it started): what was last written.
fn recorded_status(rule: &Rule, target: String, rec: &Record) -> TargetStatus {
    let (state, message) = if rec.stale {
        ("stale", "the source was deleted (as last recorded)")
    } else if rec.pending {
        ("pending", "a write was under way when the server stopped; the next pass checks it")
    } else if rec.foreign {
        ("conflict", "another tool's secret, left alone (as last recorded)")
    } else {
        ("in_sync", rec.note.as_str())
    };
    TargetStatus {
        rule: rule.name.clone(),
        source: rec.source.clone(),
        target,
        state,
        message: message.to_string(),
        // Unset in records written before the time was kept.
        updated: rec.at,
        source_version: rec.source_version,
    }
}

/// A resume token, read (whose it is, and for which rules, `run` checks).
fn parse_resume(token: &str) -> Result<Resume> {
    let bad = || {
        Error::InvalidArgument(
            "resume is not a token a Run answer gave for this rule: leave it empty to start a scan".into(),
        )
    };
    if token.len() > 1024 {
        return Err(bad());
    }
    let bytes = hex::decode(token).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}
