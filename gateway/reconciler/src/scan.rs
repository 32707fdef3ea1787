//! Scans: what the journal did not announce (changes made outside
//! Keybridge, missed writes), found with as few cloud calls as each
//! backend's listing allows.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use crate::{Error, Host, Reconciler, Record, Result, Rule, Store};

/// Replicas a deep scan describes at once on one target (each mount's
/// quota still paces them).
const DESCRIBE_AT_ONCE: usize = 16;

/// The replicas on target `t` that drifted: deleted or changed outside
/// Keybridge, found by one listing where it carries markers (or on a
/// quick scan), else by a describe of each, a few at a time.
async fn target_drift<'a>(
    host: &'a dyn Host,
    t: &'a str,
    records: &'a BTreeMap<String, Record>,
    deep: bool,
) -> Result<Vec<(&'a String, &'a Record, &'static str)>> {
    let routed = host.route(t).await?;
    let (engine, mount, rel) = (routed.store.as_ref(), routed.mount_path.as_str(), routed.rel.as_str());
    // The target's records are one range of the ordered map.
    let mine: Vec<(&String, &Record)> = records
        .range::<str, _>((std::ops::Bound::Included(t), std::ops::Bound::Unbounded))
        .take_while(|(p, _)| p.starts_with(t))
        .filter(|(_, r)| !r.foreign)
        .collect();
    let mut drifted = Vec::new();
    if mine.is_empty() {
        return Ok(drifted);
    }
    let listed = if engine.reach().exact_markers || !deep { engine.list_markers(rel).await? } else { None };
    match listed {
        Some(listed) => {
            for (tp, r) in mine {
                let why = match listed.get(&tp[mount.len()..]) {
                    None => Some("deleted outside Keybridge"),
                    Some(m) if m.is_some() && *m != r.marker => Some("changed since Keybridge wrote it"),
                    Some(_) => None,
                };
                if let Some(why) = why {
                    drifted.push((tp, r, why));
                }
            }
        }
        None => {
            use futures::FutureExt;
            for chunk in mine.chunks(DESCRIBE_AT_ONCE) {
                let heads: Vec<_> = chunk.iter().map(|&(tp, r)| replica_drift(engine, mount, tp, r).boxed()).collect();
                for d in futures::future::join_all(heads).await {
                    if let Some(d) = d? {
                        drifted.push(d);
                    }
                }
            }
        }
    }
    Ok(drifted)
}

/// Describes one replica: whether it drifted from what Keybridge wrote.
async fn replica_drift<'r>(
    engine: &dyn Store,
    mount: &str,
    tp: &'r String,
    r: &'r Record,
) -> Result<Option<(&'r String, &'r Record, &'static str)>> {
    let now = engine.head(&tp[mount.len()..]).await?;
    if now.as_ref().map(|c| &c.id) == Some(&r.version_id) {
        return Ok(None);
    }
    let why = if now.is_none() { "deleted outside Keybridge" } else { "changed since Keybridge wrote it" };
    Ok(Some((tp, r, why)))
}

impl Reconciler {
    /// Looks for changes the journal did not announce: source versions not
    /// replicated yet, sources deleted, replicas changed or deleted outside
    /// Keybridge.
    /// `deep`: also describe each replica on clouds whose listing does not
    /// tell every version apart (GCP shows none, Azure an update time in
    /// seconds); quick scans only list them.
    pub(crate) async fn scan(&self, host: &dyn Host, rule: &Rule, deep: bool) -> Result<()> {
        self.last_scan.lock().unwrap_or_else(|p| p.into_inner()).insert(rule.name.clone(), Instant::now());
        self.rule_routes_hold(host, rule)?;
        if deep {
            self.last_deep_scan.lock().unwrap_or_else(|p| p.into_inner()).insert(rule.name.clone(), Instant::now());
        }
        let mut todo: BTreeMap<String, ()> = BTreeMap::new();
        let records = self.records_of(rule).await?;
        // Source side.
        let src = host.route(&rule.source).await?;
        let (src_engine, src_mount, src_rel) = (&src.store, &src.mount_path, src.rel.as_str());
        let sources: HashSet<String> = match src_engine.list_all(src_rel).await {
            Ok(v) => v.into_iter().map(|r| format!("{src_mount}{r}")).collect(),
            Err(Error::NotFound(_)) => HashSet::new(),
            Err(e) => return Err(e),
        };
        // A cloud source's listing shows AWS's current version id; other
        // clouds' sources are described one by one.
        let listed_marks =
            if src_engine.reach().exact_markers { src_engine.list_markers(src_rel).await? } else { None };
        for s in &sources {
            let rel = &s[src_mount.len()..];
            let mark = match &listed_marks {
                Some(m) => m.get(rel).cloned().flatten().unwrap_or_default(),
                None => src_engine.head(rel).await?.map(|h| h.id).unwrap_or_default(),
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
        // carries markers, else a describe per replica (a few at a time).
        // The targets are looked at together: a scan takes about as long as
        // its slowest target's calls, not the sum of every target's.
        // Boxed: the futures are Send for every lifetime only once erased
        // (a known limit of the compiler's reasoning about closures).
        use futures::FutureExt;
        let per_target: Vec<_> = rule.targets.iter().map(|t| target_drift(host, t, &records, deep).boxed()).collect();
        for drifted in futures::future::join_all(per_target).await {
            for (tp, r, why) in drifted? {
                self.set_status(rule, &r.source, tp, "drifted", why.into(), r.source_version);
                todo.insert(r.source.clone(), ());
            }
        }
        // Changes the journal holds are the journal's (and its coalescing
        // window's) to replicate.
        let journaled = self.journaled_paths(&rule.name).await?;
        let paths: Vec<&String> = todo.keys().filter(|p| !journaled.contains(*p)).collect();
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
        *self.scans_done.lock().unwrap_or_else(|p| p.into_inner()).entry(rule.name.clone()).or_insert(0) += 1;
        Ok(())
    }
}
