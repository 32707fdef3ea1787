//! Scans: what the journal did not announce (changes made outside
//! Keybridge, missed writes), found with as few cloud calls as each
//! backend's listing allows.
//!
//! Memory: a scan holds no listing, record or value whole. It reads the
//! source's listing, the records and each target's listing a page at a
//! time, and keeps of them only 64-bit digests of names (and markers)
//! under a key drawn for the scan: about 8 bytes per source secret and 16
//! per replica on a cloud target while that target is compared, plus the
//! paths found to need work.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use futures::FutureExt;

use crate::{Error, Host, Listing, Reconciler, Record, Result, Rule, STATE, Store, state_key};

/// Secrets described at once on one mount (each mount's quota still paces
/// them).
const DESCRIBE_AT_ONCE: usize = 16;
/// Records read from the barrier at once.
const RECORDS_PAGE: usize = 512;

/// Digests of names and markers under a key drawn for one scan. Two names
/// with one digest (odds about n²/2⁶⁵) can hide a drift from that scan
/// only: the next draws another key.
struct Digest(RandomState);

impl Digest {
    fn of(&self, s: &str) -> u64 {
        self.0.hash_one(s)
    }
}

/// What one target's side of a scan found.
#[derive(Default)]
struct Drift {
    /// Replicas deleted or changed outside Keybridge: target path, record, why.
    drifted: Vec<(String, Record, &'static str)>,
    /// Sources whose replicas have records but which are gone.
    gone: Vec<String>,
}

/// One page of a listing; a folder that does not exist lists nothing.
async fn page(engine: &dyn Store, folder: &str, token: &str) -> Result<Listing> {
    match engine.list_page(folder, token).await {
        Err(Error::NotFound(_)) => Ok(Listing::default()),
        r => r,
    }
}

/// Describes one replica: whether it drifted from what Keybridge wrote.
async fn replica_drift(engine: &dyn Store, rel: &str, r: &Record) -> Result<Option<&'static str>> {
    let now = engine.head(rel).await?;
    if now.as_ref().map(|c| &c.id) == Some(&r.version_id) {
        return Ok(None);
    }
    Ok(Some(if now.is_none() { "deleted outside Keybridge" } else { "changed since Keybridge wrote it" }))
}

impl Reconciler {
    /// One page of the stored records of a rule's replicas whose target
    /// path starts with `folder`, after the target path `after`; empty at
    /// the end.
    pub(crate) async fn records_page(
        &self,
        rule_id: &str,
        folder: &str,
        after: Option<&str>,
    ) -> Result<Vec<(String, Record)>> {
        let base = format!("{STATE}{rule_id}/");
        let prefix = format!("{base}{folder}");
        let start = after.map(|a| format!("{base}{a}\0"));
        let keys = self.barrier.list(&prefix, start.as_deref(), RECORDS_PAGE).await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(r) = self.record(&k).await? {
                out.push((k[base.len()..].to_string(), r));
            }
        }
        Ok(out)
    }

    /// The replicas on target `t` that drifted (deleted or changed outside
    /// Keybridge), found by one listing where it carries markers (or on a
    /// quick scan), else by a describe of each, a few at a time; and the
    /// sources of its records that are gone.
    async fn target_drift(
        &self,
        host: &dyn Host,
        rule: &Rule,
        t: &str,
        deep: bool,
        sources: &HashSet<u64>,
        d: &Digest,
    ) -> Result<Drift> {
        let mut out = Drift::default();
        let mut records = self.records_page(&rule.id, t, None).await?;
        if records.is_empty() {
            return Ok(out);
        }
        let routed = host.route(t).await?;
        let (engine, mount, rel) = (routed.store.as_ref(), routed.mount_path.as_str(), routed.rel.as_str());
        // The listing's digests: name -> marker (none where it shows none).
        let mut listed: Option<HashMap<u64, Option<u64>>> = None;
        if engine.reach().exact_markers || !deep {
            let mut names = HashMap::new();
            let mut token = String::new();
            loop {
                let p = page(engine, rel, &token).await?;
                if !p.markers {
                    break;
                }
                for (n, m) in &p.names {
                    names.insert(d.of(n), m.as_deref().map(|m| d.of(m)));
                }
                if p.next.is_empty() {
                    listed = Some(names);
                    break;
                }
                token = p.next;
            }
        }
        loop {
            let mut described = Vec::new();
            for (tp, r) in &records {
                if r.foreign {
                    continue;
                }
                if !r.stale && !sources.contains(&d.of(&r.source)) {
                    out.gone.push(r.source.clone());
                }
                let Some(listed) = &listed else {
                    described.push((tp, r));
                    continue;
                };
                let why = match listed.get(&d.of(&tp[mount.len()..])) {
                    None => Some("deleted outside Keybridge"),
                    Some(Some(m)) if Some(*m) != r.marker.as_deref().map(|m| d.of(m)) => {
                        Some("changed since Keybridge wrote it")
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    out.drifted.push((tp.clone(), r.clone(), why));
                }
            }
            for chunk in described.chunks(DESCRIBE_AT_ONCE) {
                let heads: Vec<_> =
                    chunk.iter().map(|&(tp, r)| replica_drift(engine, &tp[mount.len()..], r).boxed()).collect();
                for ((tp, r), why) in chunk.iter().zip(futures::future::join_all(heads).await) {
                    if let Some(why) = why? {
                        out.drifted.push(((*tp).clone(), (*r).clone(), why));
                    }
                }
            }
            let Some((last, _)) = records.last() else { break };
            let last = last.clone();
            records = self.records_page(&rule.id, t, Some(&last)).await?;
            if records.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Looks for changes the journal did not announce: source versions not
    /// replicated yet, sources deleted, replicas changed or deleted outside
    /// Keybridge.
    /// `deep`: also describe each replica on clouds whose listing does not
    /// tell every version apart (GCP shows none, Azure an update time in
    /// seconds); quick scans only list them.
    /// `number`: the scan's, from [`Reconciler::number_scan`]; the rule is
    /// marked running until this ends (or is dropped half-way, its caller
    /// gone), and done with this number when it succeeds.
    pub(crate) async fn scan(&self, host: &dyn Host, rule: &Rule, deep: bool, number: u64) -> Result<()> {
        struct Running<'a>(&'a Reconciler, &'a str);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.scans.lock().unwrap_or_else(|p| p.into_inner()).running.remove(self.1);
            }
        }
        let _running = Running(self, &rule.name);
        host.loaded("scan").await;
        self.scan_once(host, rule, deep).await?;
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        let done = scans.done.entry(rule.name.clone()).or_insert(0);
        *done = (*done).max(number);
        if deep {
            let done = scans.done_deep.entry(rule.name.clone()).or_insert(0);
            *done = (*done).max(number);
        }
        Ok(())
    }

    /// Takes the next scan number for `rule`, marked running. Called under
    /// the `forced` lock, with the ask it answers taken out.
    pub(crate) fn number_scan(&self, rule: &str) -> u64 {
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        scans.last += 1;
        let n = scans.last;
        *scans.started.entry(rule.to_string()).or_insert(0) += 1;
        scans.running.insert(rule.to_string());
        n
    }

    async fn scan_once(&self, host: &dyn Host, rule: &Rule, deep: bool) -> Result<()> {
        self.last_scan.lock().unwrap_or_else(|p| p.into_inner()).insert(rule.name.clone(), Instant::now());
        self.rule_routes_hold(host, rule)?;
        if deep {
            self.last_deep_scan.lock().unwrap_or_else(|p| p.into_inner()).insert(rule.name.clone(), Instant::now());
        }
        let d = Digest(RandomState::new());
        // Source paths to replicate again.
        let mut todo: BTreeSet<String> = BTreeSet::new();
        // Source side, a page of the listing at a time: each source's
        // current version against its replicas' records. A cloud source
        // whose listing shows AWS's version id is not described; other
        // sources are, a few at a time (free on the local store).
        let mut sources: HashSet<u64> = HashSet::new();
        let src = host.route(&rule.source).await?;
        let (src_engine, src_mount, src_rel) = (src.store.as_ref(), src.mount_path.as_str(), src.rel.as_str());
        let exact = src_engine.reach().exact_markers;
        let mut token = String::new();
        loop {
            let p = page(src_engine, src_rel, &token).await?;
            let mut marks = Vec::with_capacity(p.names.len());
            if exact && p.markers {
                marks.extend(p.names.iter().map(|(_, m)| m.clone().unwrap_or_default()));
            } else {
                for chunk in p.names.chunks(DESCRIBE_AT_ONCE) {
                    let heads = chunk.iter().map(|(rel, _)| src_engine.head(rel));
                    for h in futures::future::join_all(heads).await {
                        marks.push(h?.map(|h| h.id).unwrap_or_default());
                    }
                }
            }
            for ((rel, _), mark) in p.names.iter().zip(marks) {
                let s = format!("{src_mount}{rel}");
                sources.insert(d.of(&s));
                for t in &rule.targets {
                    let Some(tp) = rule.target_path(t, &s) else { continue };
                    let fine = match self.record(&state_key(&rule.id, &tp)).await? {
                        Some(r) if r.foreign => r.source_mark == mark && !rule.take_over,
                        Some(r) => r.source_mark == mark && !r.pending && !r.stale,
                        None => false,
                    };
                    if !fine {
                        todo.insert(s.clone());
                        break;
                    }
                }
            }
            if p.next.is_empty() {
                break;
            }
            token = p.next;
        }
        // Target side: one listing per target where the cloud's listing
        // carries markers, else a describe per replica (a few at a time).
        // The targets are looked at together: a scan takes about as long as
        // its slowest target's calls, not the sum of every target's.
        // Boxed: the futures are Send for every lifetime only once erased
        // (a known limit of the compiler's reasoning about closures).
        let per_target: Vec<_> =
            rule.targets.iter().map(|t| self.target_drift(host, rule, t, deep, &sources, &d).boxed()).collect();
        for drift in futures::future::join_all(per_target).await {
            let drift = drift?;
            for (tp, r, why) in drift.drifted {
                self.set_status(rule, &r.source, &tp, "drifted", why.into(), r.source_version);
                todo.insert(r.source);
            }
            todo.extend(drift.gone);
        }
        drop(sources);
        // Changes the journal holds are the journal's (and its coalescing
        // window's) to replicate.
        let journaled = self.journaled_paths(&rule.name).await?;
        let paths: Vec<&String> = todo.iter().filter(|p| !journaled.contains(*p)).collect();
        // A few secrets at a time (each one's targets in turn).
        for chunk in paths.chunks(crate::worker::PARALLEL) {
            let runs = chunk.iter().map(|path| async move {
                let retry_key = format!("{}\0{path}", rule.name);
                match self.replicate(host, rule, path).await {
                    Ok(true) => self.succeeded(&retry_key),
                    Ok(false) => self.failed(&retry_key),
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, path = %path, error = %e, "sync: scan replication failed");
                        self.failed(&retry_key);
                    }
                }
            });
            futures::future::join_all(runs).await;
        }
        Ok(())
    }
}
