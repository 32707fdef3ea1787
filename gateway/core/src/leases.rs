//! The lease manager: credentials an engine issues with a TTL get a lease,
//! kept in the barrier (so leases survive restarts); renew extends it up to
//! its max TTL; revoke, expiry or revoke-by-prefix runs the engine's revoke,
//! retried with backoff until it succeeds.
//!
//! Storage: `core/leases/<lease id>` holds the record, `core/lease-data/<lease
//! id>` the engine's internal data (which may be secret), and
//! `core/lease-due/<due, 16 hex digits>/<lease id>` the time-ordered index the
//! expiry worker reads from its front; the three are written together. No
//! lease is held in memory: a million leases cost nothing at unseal, and
//! lists page through the store. Lease ids are `<mount path><request
//! path>/<32 hex>`, so a prefix of a path is a prefix of its leases' ids.
//!
//! Counts by mount (for the metrics) live in rows of each node's own,
//! `core/lease-counts/<node>/<stripe>` (a map from mount id to a signed
//! count), changed in the same commit as the lease: a node counts the
//! leases it creates and deletes, so no row is shared by nodes, and the
//! sum over every row is the count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keybridge_barrier::{Barrier, WriteBatch};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::Caller;
use crate::core::{Capability, Core, Stripes, encode_json};
use crate::mounts::MountEntry;
use crate::plugins::{CallContext, LeaseInfo, LeaseRequest, Params, PluginEngine};
use crate::plugins::{LeaseView, engine_error};
use crate::{Error, Result, Timestamp};

const LEASES: &str = "core/leases/";
const LEASE_DATA: &str = "core/lease-data/";
/// The due index: `<due as 16 hex digits>/<lease id>`, so key order is due
/// order.
const LEASE_DUE: &str = "core/lease-due/";
/// Present once every lease has its due-index entry (stores written before
/// the index existed get theirs at their first unseal).
const DUE_INDEXED: &str = "core/lease-due-indexed";
/// Per-node count rows: `<node>/<stripe>`.
const LEASE_COUNTS: &str = "core/lease-counts/";
/// Present once the leases written before the counts existed are counted.
const COUNTS_INITIALIZED: &str = "core/lease-counts-initialized";
/// Rows per node: lease writes on one node serialise per row.
const COUNT_STRIPES: usize = 8;
/// Due leases one expiry pass takes from the front of the index.
const PASS_MAX: usize = 1024;
/// Revocations an expiry pass runs at once against one mount's engine.
pub(crate) const REVOKE_CONCURRENCY_PER_MOUNT: usize = 16;
/// Lease ids one revoke-by-prefix or mount-disable reads per page.
const ID_PAGE: usize = 512;
const DEFAULT_TTL: u64 = 3600;
pub(crate) const DEFAULT_MAX_TTL: u64 = 768 * 3600;
/// Backoff between failed revocations: 1 s doubling to this.
const MAX_BACKOFF: u64 = 600;
/// `Leases/List` page sizes: the default, and the most one call returns.
pub const LIST_PAGE_DEFAULT: usize = 1000;
pub const LIST_PAGE_MAX: usize = 10_000;

/// A record of lease `id` on no mount, for tests.
#[cfg(test)]
pub(crate) fn tests_record(id: &str) -> LeaseRecord {
    LeaseRecord {
        id: id.into(),
        mount_id: "m".into(),
        mount_path: "creds/".into(),
        path: "creds/app".into(),
        issued: at(0),
        expires: at(0),
        max_expires: at(0),
        renewable: false,
        attempts: 0,
        last_error: None,
        retry_at: None,
        pinned: false,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseRecord {
    id: String,
    mount_id: String,
    mount_path: String,
    /// Relative to the mount.
    path: String,
    issued: Timestamp,
    expires: Timestamp,
    max_expires: Timestamp,
    renewable: bool,
    /// Revocation attempts that failed, and the last error.
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    last_error: Option<String>,
    /// When the worker tries next (set once due or revoking).
    #[serde(default)]
    retry_at: Option<Timestamp>,
    /// Held by a rotation: the credential is a secret's current value, so
    /// the lease does not expire; the next rotation revokes it.
    #[serde(default)]
    pinned: bool,
}

impl LeaseRecord {
    fn view(&self) -> LeaseView {
        let now = Timestamp::now().secs;
        LeaseView {
            lease_id: self.id.clone(),
            ttl_secs: (self.expires.secs - now).max(0) as u64,
            renewable: self.renewable,
            issued: self.issued,
            expires: self.expires,
            max_expires: self.max_expires,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
        }
    }

    /// When the worker should look at it next; `None`: never (pinned by a
    /// rotation, which revokes it itself).
    fn due(&self) -> Option<i64> {
        match self.retry_at {
            Some(t) => Some(t.secs),
            None if self.pinned => None,
            None => Some(self.expires.secs),
        }
    }
}

/// The due-index key of a lease due at `due` (before 1970 sorts as 1970).
fn due_key(due: i64, id: &str) -> String {
    format!("{LEASE_DUE}{:016x}/{id}", due.max(0))
}

/// A due-index key back into (due, lease id); `None` for a key not written
/// by [`due_key`].
fn parse_due_key(key: &str) -> Option<(i64, &str)> {
    let rest = key.strip_prefix(LEASE_DUE)?;
    let (hex, id) = rest.split_once('/')?;
    if hex.len() != 16 || id.is_empty() {
        return None;
    }
    Some((i64::from_str_radix(hex, 16).ok()?, id))
}

fn at(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

fn validate_lease_ref(s: &str, what: &str) -> Result<()> {
    if s.is_empty() || s.len() > 2048 || s.starts_with('/') || s.split('/').any(|p| p == ".." || p == ".") {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {s:?}: lease ids look like MOUNT/PATH/ID (see `keybridge lease list`)"
        )));
    }
    Ok(())
}

pub(crate) fn mount_duration(mount: &MountEntry, key: &str, default: u64) -> u64 {
    mount.config.get(key).and_then(|v| crate::plugins::parse_duration(v)).unwrap_or(default)
}

/// The leases' store, due index, locks and wake-up: what the lease
/// operations share, and nothing else of the core (as Vault's
/// `ExpirationManager`). The operations that need a caller's authority or a
/// mount's engine are the core's, below.
pub(crate) struct LeaseManager {
    barrier: Arc<Barrier>,
    /// Serialises renewals and revocations of one lease.
    locks: Stripes,
    /// Wakes the expiry worker when a lease is written.
    pub(crate) changed: tokio::sync::Notify,
    /// Leases revoked at their engine whose record could not be deleted
    /// (the store failed): the next attempt deletes the record only, so the
    /// engine is not asked twice while this process lives.
    revoked: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Test hook: recording a lease fails, as on a full disk.
    #[cfg(test)]
    pub(crate) fail_record: std::sync::atomic::AtomicBool,
    /// This node's count rows as last written (read at first use): only
    /// this node writes them, under the stripe's lock.
    counts: Vec<tokio::sync::Mutex<Option<BTreeMap<String, i64>>>>,
    node: String,
}

fn count_key(node: &str, stripe: usize) -> String {
    format!("{LEASE_COUNTS}{node}/{stripe}")
}

impl LeaseManager {
    pub(crate) fn new(barrier: Arc<Barrier>, stripes: usize, node: String) -> Self {
        LeaseManager {
            barrier,
            locks: Stripes::new(stripes),
            changed: tokio::sync::Notify::new(),
            revoked: Default::default(),
            #[cfg(test)]
            fail_record: Default::default(),
            counts: (0..COUNT_STRIPES).map(|_| tokio::sync::Mutex::new(None)).collect(),
            node,
        }
    }

    /// Commits `b` with `delta` added to `mount_id`'s count in one of this
    /// node's rows (chosen by the lease id), in the same commit.
    async fn commit_counted(&self, mut b: WriteBatch, lease_id: &str, mount_id: &str, delta: i64) -> Result<()> {
        let stripe = lease_id.bytes().fold(0usize, |h, c| h.wrapping_mul(31).wrapping_add(c as usize)) % COUNT_STRIPES;
        let key = count_key(&self.node, stripe);
        let mut row = self.counts[stripe].lock().await;
        let mut next = match row.as_ref() {
            Some(m) => m.clone(),
            None => self.read_counts(&key).await?,
        };
        let c = next.entry(mount_id.to_string()).or_insert(0);
        *c = c.saturating_add(delta);
        if *c == 0 {
            next.remove(mount_id);
        }
        b.put(key, encode_json(&next));
        self.barrier.commit(b).await?;
        *row = Some(next);
        Ok(())
    }

    async fn read_counts(&self, key: &str) -> Result<BTreeMap<String, i64>> {
        match self.barrier.get(key).await? {
            None => Ok(BTreeMap::new()),
            Some(raw) => {
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.into(), reason: e.to_string() })
            }
        }
    }

    /// [`LeaseManager::delete`], for tests.
    #[cfg(test)]
    pub(crate) async fn delete_for_test(&self, r: &LeaseRecord) -> Result<()> {
        self.delete(r).await
    }

    /// Leases by mount id: the sum of every node's rows.
    pub(crate) async fn counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut total: BTreeMap<String, i64> = BTreeMap::new();
        for key in self.barrier.list_all(LEASE_COUNTS, 100_000).await? {
            for (mount, n) in self.read_counts(&key).await? {
                let t = total.entry(mount).or_insert(0);
                *t = t.saturating_add(n);
            }
        }
        total.retain(|_, n| *n != 0);
        Ok(total)
    }

    /// Counts the leases a store held before counts were kept (once).
    async fn initialize_counts(&self) -> Result<()> {
        if self.barrier.get(COUNTS_INITIALIZED).await?.is_some() {
            return Ok(());
        }
        let mut by_mount: BTreeMap<String, i64> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let ids = self.ids_page("", after.as_deref(), ID_PAGE).await?;
            for id in &ids {
                if let Some(r) = self.record(id).await? {
                    *by_mount.entry(r.mount_id).or_insert(0) += 1;
                }
            }
            match ids.last() {
                Some(last) if ids.len() == ID_PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        let mut row = self.counts[0].lock().await;
        let key = count_key(&self.node, 0);
        let mut next = self.read_counts(&key).await?;
        for (m, n) in by_mount {
            *next.entry(m).or_insert(0) += n;
        }
        let mut b = WriteBatch::new();
        // Once: another node counting at the same time makes this a conflict.
        b.expect(COUNTS_INITIALIZED, &keybridge_barrier::Stamp::absent())
            .put(key, encode_json(&next))
            .put(COUNTS_INITIALIZED, Zeroizing::new(b"1".to_vec()));
        match self.barrier.commit(b).await {
            Ok(()) => *row = Some(next),
            Err(keybridge_barrier::Error::Conflict) => *row = None,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// At unseal: gives every lease of a store written before the due index
    /// existed its index entry (once; later unseals read nothing), and wakes
    /// the worker.
    pub(crate) async fn load(&self) -> Result<()> {
        if self.barrier.get(DUE_INDEXED).await?.is_none() {
            // Paged by the ids listed (a lease revoked meanwhile does not end
            // it early); the marker is written only after the last page, so
            // an interrupted run starts again (putting an entry twice is
            // harmless).
            let mut after: Option<String> = None;
            loop {
                let ids = self.ids_page("", after.as_deref(), ID_PAGE).await?;
                let mut b = WriteBatch::new();
                for id in &ids {
                    if let Some(r) = self.record(id).await?
                        && let Some(due) = r.due()
                    {
                        b.put(due_key(due, &r.id), Zeroizing::new(Vec::new()));
                    }
                }
                self.barrier.commit(b).await?;
                match ids.last() {
                    Some(last) if ids.len() == ID_PAGE => after = Some(last.clone()),
                    _ => break,
                }
            }
            let mut b = WriteBatch::new();
            b.put(DUE_INDEXED, Zeroizing::new(b"1".to_vec()));
            self.barrier.commit(b).await?;
        }
        self.initialize_counts().await?;
        // Another node may have written this node's rows under the same
        // node id before: read them again at first use.
        for row in &self.counts {
            *row.lock().await = None;
        }
        self.changed.notify_one();
        Ok(())
    }

    pub(crate) async fn lock(&self, lease_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks.lock(lease_id).await
    }

    /// Up to `limit` ids of the leases under `prefix`, after the id `after`.
    async fn ids_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        // `start` is inclusive: begin just past `after`.
        let start = after.map(|a| format!("{LEASES}{a}\0"));
        let keys = self.barrier.list(&format!("{LEASES}{prefix}"), start.as_deref(), limit).await?;
        Ok(keys.into_iter().map(|k| k[LEASES.len()..].to_string()).collect())
    }

    /// A lease's record alone (lists, lookups and index upkeep need no
    /// engine data, which may be secret).
    async fn record(&self, id: &str) -> Result<Option<LeaseRecord>> {
        let key = format!("{LEASES}{id}");
        let Some(raw) = self.barrier.get(&key).await? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?))
    }

    /// A lease's record and its engine data (to renew or revoke it).
    async fn read(&self, id: &str) -> Result<Option<(LeaseRecord, Params)>> {
        let Some(r) = self.record(id).await? else { return Ok(None) };
        let data = match self.barrier.get(&format!("{LEASE_DATA}{id}")).await? {
            Some(raw) => {
                let v: Zeroizing<Vec<(String, String)>> = Zeroizing::new(
                    serde_json::from_slice(&raw)
                        .map_err(|e| Error::Corrupt { key: format!("{LEASE_DATA}{id}"), reason: e.to_string() })?,
                );
                Params(v.to_vec())
            }
            None => Params::default(),
        };
        Ok(Some((r, data)))
    }

    /// Writes a lease's record (and its data, when given) with its due-index
    /// entry, moving the entry from `was_due` (the record's due before this
    /// change; `None` for a new lease), in one commit.
    async fn write(&self, r: &LeaseRecord, was_due: Option<i64>, data: Option<&Params>) -> Result<()> {
        #[cfg(test)]
        if self.fail_record.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Internal("injected: the lease store is failing".into()));
        }
        let mut b = WriteBatch::new();
        b.put(format!("{LEASES}{}", r.id), encode_json(r));
        if let Some(d) = data {
            b.put(format!("{LEASE_DATA}{}", r.id), Zeroizing::new(serde_json::to_vec(&d.0).unwrap_or_default()));
        }
        let due = r.due();
        if was_due != due {
            if let Some(old) = was_due {
                b.delete(due_key(old, &r.id));
            }
            if let Some(new) = due {
                b.put(due_key(new, &r.id), Zeroizing::new(Vec::new()));
            }
        }
        if data.is_some() {
            // A new lease: counted.
            self.commit_counted(b, &r.id, &r.mount_id, 1).await?;
        } else {
            self.barrier.commit(b).await?;
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Deletes a lease's record, data and due-index entry in one commit,
    /// if the record is still there (another node may have deleted it: it
    /// is counted off once).
    async fn delete(&self, r: &LeaseRecord) -> Result<()> {
        let key = format!("{LEASES}{}", r.id);
        for _ in 0..3 {
            let (current, stamp) = self.barrier.get_stamped(&key).await?;
            let Some(raw) = current else { return Ok(()) };
            let due = serde_json::from_slice::<LeaseRecord>(&raw).ok().and_then(|c| c.due()).or(r.due());
            let mut b = WriteBatch::new();
            b.expect(key.clone(), &stamp).delete(key.clone()).delete(format!("{LEASE_DATA}{}", r.id));
            if let Some(due) = due {
                b.delete(due_key(due, &r.id));
            }
            match self.commit_counted(b, &r.id, &r.mount_id, -1).await {
                Err(Error::Storage(keybridge_barrier::Error::Conflict)) => continue,
                other => return other,
            }
        }
        Err(Error::Unavailable(format!("lease {} kept changing while it was deleted; it is retried", r.id)))
    }

    /// Up to `max` entries from the front of the due index that are due by
    /// `now`: (due, lease id), in due order.
    async fn due(&self, now: i64, max: usize) -> Result<Vec<(i64, String)>> {
        let keys = self.barrier.list(LEASE_DUE, None, max).await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            let Some((due, id)) = parse_due_key(key) else {
                return Err(Error::Corrupt { key: key.clone(), reason: "not a lease due-index key".into() });
            };
            if due > now {
                break;
            }
            out.push((due, id.to_string()));
        }
        Ok(out)
    }

    /// When the next lease is due.
    async fn next_due(&self) -> Result<Option<i64>> {
        let keys = self.barrier.list(LEASE_DUE, None, 1).await?;
        Ok(keys.first().and_then(|k| parse_due_key(k)).map(|(due, _)| due))
    }

    /// Moves a due-index entry to `to` (the lease's record is unreadable).
    async fn postpone_due(&self, due: i64, id: &str, to: i64) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(due_key(due, id)).put(due_key(to, id), Zeroizing::new(Vec::new()));
        Ok(self.barrier.commit(b).await?)
    }

    /// Drops a due-index entry whose lease is gone or due at another time
    /// (left by nothing this module writes; kept from blocking the front).
    async fn drop_stale_due(&self, due: i64, id: &str) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(due_key(due, id));
        Ok(self.barrier.commit(b).await?)
    }
}

impl LeaseManager {
    /// Records the lease of a credential just issued. If it cannot be
    /// recorded, the credential is revoked at once: nothing would revoke it
    /// later.
    pub(crate) async fn record_issued(
        &self,
        mount: &MountEntry,
        rel: &str,
        ctx: &CallContext,
        backend: &dyn PluginEngine,
        lease: LeaseRequest,
        pinned: bool,
    ) -> Result<LeaseView> {
        let now = Timestamp::now().secs;
        let mount_max = mount_duration(mount, "max_lease_ttl", DEFAULT_MAX_TTL);
        let max = if lease.terms.max_ttl_secs == 0 { mount_max } else { lease.terms.max_ttl_secs.min(mount_max) };
        let ttl = if lease.terms.ttl_secs == 0 {
            mount_duration(mount, "default_lease_ttl", DEFAULT_TTL)
        } else {
            lease.terms.ttl_secs
        };
        let ttl = ttl.min(max);
        let id = format!("{}{}/{}", mount.path, rel.trim_end_matches('/'), uuid::Uuid::new_v4().simple());
        let r = LeaseRecord {
            id: id.clone(),
            mount_id: mount.id.clone(),
            mount_path: mount.path.clone(),
            path: rel.to_string(),
            issued: at(now),
            expires: at(now).plus_secs(ttl),
            max_expires: at(now).plus_secs(max),
            renewable: lease.terms.renewable,
            attempts: 0,
            last_error: None,
            retry_at: None,
            pinned,
        };
        if let Err(e) = self.write(&r, None, Some(&lease.internal)).await {
            tracing::error!(lease_id = %id, error = %e, "lease: could not record a lease; revoking the credential");
            let info = LeaseInfo {
                lease_id: id,
                path: rel.to_string(),
                internal: lease.internal,
                issue_time: now as u64,
                increment: 0,
            };
            let undone = backend.revoke(ctx, &info).await;
            return Err(Error::Internal(match undone {
                Ok(()) => {
                    format!("the credential's lease could not be recorded ({e}); the credential was revoked, try again")
                }
                Err(r) => format!(
                    "the credential's lease could not be recorded ({e}) and revoking the credential failed too ({r}); revoke it at its source"
                ),
            }));
        }
        Ok(r.view())
    }
}

impl Core {
    pub async fn lookup_lease(&self, caller: &Caller, lease_id: &str) -> Result<LeaseView> {
        let id = self.authenticate(caller).await?;
        validate_lease_ref(lease_id, "lease id")?;
        self.authorize(caller, &id, "sys/leases/lookup", Capability::Update).await?;
        let r = self.leases.record(lease_id).await?.ok_or_else(|| not_found(lease_id))?;
        Ok(r.view())
    }

    /// A page of the leases whose ids start with `prefix`, in id order
    /// (Vault: list on `sys/leases/lookup/PREFIX`, which needs sudo), and the
    /// token of the next page (empty after the last). `page_size` 0 is the
    /// default; `page_token` is a previous answer's.
    pub async fn list_leases(
        &self,
        caller: &Caller,
        prefix: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<LeaseView>, String)> {
        let id = self.authenticate(caller).await?;
        if !prefix.is_empty() {
            validate_lease_ref(prefix, "prefix")?;
        }
        if page_size > LIST_PAGE_MAX {
            return Err(Error::InvalidArgument(format!(
                "page_size {page_size} is too large: at most {LIST_PAGE_MAX} leases per page"
            )));
        }
        if !page_token.is_empty() && (!page_token.starts_with(prefix) || validate_lease_ref(page_token, "").is_err()) {
            return Err(Error::InvalidArgument(
                "invalid page_token: pass the next_page_token of the previous page of the same prefix".into(),
            ));
        }
        self.authorize(caller, &id, &format!("sys/leases/lookup/{prefix}"), Capability::Sudo).await?;
        let size = if page_size == 0 { LIST_PAGE_DEFAULT } else { page_size };
        let after = (!page_token.is_empty()).then_some(page_token);
        // One id more than the page: a next page is promised only if the
        // store lists one (paged by ids, so a lease revoked between the
        // listing and its read does not end the list early).
        let mut ids = self.leases.ids_page(prefix, after, size + 1).await?;
        let next = if ids.len() > size {
            ids.truncate(size);
            ids.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        let mut page = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(r) = self.leases.record(id).await? {
                page.push(r);
            }
        }
        Ok((page.iter().map(LeaseRecord::view).collect(), next))
    }

    /// Extends a lease by `increment` seconds (0: the engine's default), up
    /// to its max TTL.
    pub async fn renew_lease(&self, caller: &Caller, lease_id: &str, increment: u64) -> Result<LeaseView> {
        let id = self.authenticate(caller).await?;
        validate_lease_ref(lease_id, "lease id")?;
        self.authorize(caller, &id, "sys/leases/renew", Capability::Update).await?;
        let _g = self.leases.lock(lease_id).await;
        let (mut r, data) = self.leases.read(lease_id).await?.ok_or_else(|| not_found(lease_id))?;
        let now = Timestamp::now().secs;
        if r.pinned {
            return Err(Error::FailedPrecondition(format!(
                "lease {lease_id} is held by a rotation (its credential is a secret's current value) and does not expire"
            )));
        }
        if r.expires.secs <= now || r.retry_at.is_some() {
            return Err(Error::FailedPrecondition(format!("lease {lease_id} has expired or is being revoked")));
        }
        if !r.renewable {
            return Err(Error::FailedPrecondition(format!("lease {lease_id} is not renewable")));
        }
        if r.max_expires.secs <= now {
            return Err(Error::FailedPrecondition(format!("lease {lease_id} has reached its max TTL")));
        }
        let (mount, backend) = self.lease_backend(&r).await?;
        let ctx = self.call_context(&mount, &caller.request_id, &id.display_name);
        let info = LeaseInfo {
            lease_id: r.id.clone(),
            path: r.path.clone(),
            internal: data,
            issue_time: r.issued.secs as u64,
            increment,
        };
        let terms = backend.renew(&ctx, &info).await.map_err(engine_error)?;
        let was_due = r.due();
        let ttl = if terms.ttl_secs == 0 { increment.max(1) } else { terms.ttl_secs };
        // The engine's TTL and the caller's increment are numbers from
        // outside: saturating, then capped at the lease's max.
        r.expires = at(now).plus_secs(ttl).min(r.max_expires);
        r.renewable = terms.renewable;
        self.leases.write(&r, was_due, None).await?;
        Ok(r.view())
    }

    async fn lease_backend(&self, r: &LeaseRecord) -> Result<(MountEntry, Arc<dyn PluginEngine>)> {
        let table = self.unsealed()?.table();
        let mount = table.entries.iter().find(|m| m.id == r.mount_id).cloned().ok_or_else(|| {
            Error::FailedPrecondition(format!("the mount {} of lease {} is gone", r.mount_path, r.id))
        })?;
        let backend = self.plugin_backend(&mount).await?;
        Ok((mount, backend))
    }

    /// Revokes one lease now: the engine's revoke, then the record goes. A
    /// failed revoke keeps the lease, retried in the background.
    pub async fn revoke_lease(&self, caller: &Caller, lease_id: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        validate_lease_ref(lease_id, "lease id")?;
        self.authorize(caller, &id, "sys/leases/revoke", Capability::Update).await?;
        if self.leases.record(lease_id).await?.is_none() {
            return Err(not_found(lease_id));
        }
        self.revoke_now(lease_id, &caller.request_id, None).await.map(|_| ())
    }

    /// Revokes every lease under `prefix` (sudo, as in Vault). Returns how
    /// many were revoked; fails naming those that could not be.
    pub async fn revoke_lease_prefix(&self, caller: &Caller, prefix: &str) -> Result<usize> {
        let id = self.authenticate(caller).await?;
        validate_lease_ref(prefix, "prefix")?;
        self.authorize(caller, &id, &format!("sys/leases/revoke-prefix/{prefix}"), Capability::Sudo).await?;
        self.revoke_under(prefix, &caller.request_id).await
    }

    /// Revokes a lease for the system (a rotation retiring a credential).
    pub(crate) async fn revoke_lease_now(&self, lease_id: &str, request_id: &str) -> Result<()> {
        self.revoke_now(lease_id, request_id, None).await.map(|_| ())
    }

    /// Revokes every lease under `prefix`, a page of ids at a time.
    pub(crate) async fn revoke_under(&self, prefix: &str, request_id: &str) -> Result<usize> {
        let mut done = 0usize;
        let mut failed = 0usize;
        let mut named = Vec::new();
        // Failed leases stay in the store: page on past them.
        let mut after: Option<String> = None;
        loop {
            let ids = self.leases.ids_page(prefix, after.as_deref(), ID_PAGE).await?;
            for lease in &ids {
                match self.revoke_now(lease, request_id, None).await {
                    Ok(_) => done = done.saturating_add(1),
                    Err(e @ Error::Sealed) => return Err(e),
                    Err(e) => {
                        failed = failed.saturating_add(1);
                        if named.len() < 5 {
                            named.push(format!("{lease}: {e}"));
                        }
                    }
                }
            }
            match ids.last() {
                Some(last) if ids.len() == ID_PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        if failed == 0 {
            Ok(done)
        } else {
            let more =
                if failed > named.len() { format!("; and {} more", failed - named.len()) } else { String::new() };
            Err(Error::Unavailable(format!(
                "revoked {done} lease(s); {failed} could not be revoked and will be retried: {}{more}",
                named.join("; ")
            )))
        }
    }

    /// Runs the engine's revoke for a lease and deletes the lease; on
    /// failure schedules a retry with backoff. With `due_by`, only a lease
    /// due by then is revoked (the expiry worker: a renewal may have moved
    /// it since the index was read). Returns whether it was revoked.
    async fn revoke_now(&self, lease_id: &str, request_id: &str, due_by: Option<i64>) -> Result<bool> {
        let _g = self.leases.lock(lease_id).await;
        let Some((mut r, data)) = self.leases.read(lease_id).await? else {
            // Gone (another node deleted the record): nothing is pending here.
            self.leases.revoked.lock().unwrap_or_else(|p| p.into_inner()).remove(lease_id);
            return Ok(false);
        };
        if let Some(now) = due_by
            && r.due().is_none_or(|d| d > now)
        {
            return Ok(false);
        }
        let done_at_engine = self.leases.revoked.lock().unwrap_or_else(|p| p.into_inner()).contains(lease_id);
        let attempt = async {
            if done_at_engine {
                return Ok(());
            }
            let (mount, backend) = self.lease_backend(&r).await?;
            let ctx = self.call_context(&mount, request_id, "lease manager");
            // A deposed leader's expiry starts no revoke.
            keybridge_barrier::leader_work::check().await?;
            let info = LeaseInfo {
                lease_id: r.id.clone(),
                path: r.path.clone(),
                internal: data,
                issue_time: r.issued.secs as u64,
                increment: 0,
            };
            backend.revoke(&ctx, &info).await.map_err(engine_error)
        };
        match attempt.await {
            Ok(()) => {
                let mark = |revoked: bool| {
                    let mut set = self.leases.revoked.lock().unwrap_or_else(|p| p.into_inner());
                    match revoked {
                        true => set.insert(lease_id.to_string()),
                        false => set.remove(lease_id),
                    }
                };
                if let Err(e) = self.leases.delete(&r).await {
                    mark(true);
                    return Err(e);
                }
                mark(false);
                crate::metrics::Metrics::result(&self.metrics.lease_revocations, "success");
                tracing::info!(lease_id = %lease_id, "lease: revoked");
                Ok(true)
            }
            Err(e) => {
                crate::metrics::Metrics::result(&self.metrics.lease_revocations, "failure");
                let was_due = r.due();
                r.attempts = r.attempts.saturating_add(1);
                r.last_error = Some(e.to_string());
                let backoff = (1u64 << (r.attempts - 1).min(20)).min(MAX_BACKOFF);
                r.retry_at = Some(Timestamp::now().plus_secs(backoff));
                tracing::warn!(lease_id = %lease_id, attempts = r.attempts, error = %e, "lease: revoke failed; will retry");
                self.leases.write(&r, was_due, None).await?;
                Err(e)
            }
        }
    }

    /// Revokes leases as they expire, forever; started by the server.
    pub async fn lease_worker(self: Arc<Self>) {
        crate::core::run_passes(&self, "lease", &self.leases.changed, || self.lease_pass()).await
    }

    /// Revokes what is due, in bulk: up to [`PASS_MAX`] leases from the
    /// front of the due index, each mount's revoked
    /// [`REVOKE_CONCURRENCY_PER_MOUNT`] at a time (their deletions share
    /// the store's group commits). Returns how long until the next is due.
    pub(crate) async fn lease_pass(&self) -> Result<Duration> {
        use futures::StreamExt;
        self.unsealed()?;
        let now = Timestamp::now().secs;
        let due = self.leases.due(now, PASS_MAX).await?;
        // By mount: the longest mount path each id starts with.
        let table = self.unsealed()?.table();
        let mut by_mount: BTreeMap<&str, Vec<(i64, String)>> = BTreeMap::new();
        for (at, id) in due {
            let mount = table
                .entries
                .iter()
                .filter(|m| id.starts_with(m.path.as_str()))
                .max_by_key(|m| m.path.len())
                .map_or("", |m| m.path.as_str());
            by_mount.entry(mount).or_default().push((at, id));
        }
        let per_mount = by_mount.into_values().map(|leases| {
            futures::stream::iter(leases)
                .map(|(at, id)| self.expire(at, id, now))
                .buffer_unordered(REVOKE_CONCURRENCY_PER_MOUNT)
                .collect::<Vec<Result<()>>>()
        });
        let outcomes = futures::future::join_all(per_mount).await;
        if outcomes.iter().flatten().any(|r| matches!(r, Err(Error::Sealed))) {
            return Err(Error::Sealed);
        }
        let now = Timestamp::now().secs;
        Ok(match self.leases.next_due().await? {
            Some(t) if t <= now => Duration::from_millis(50),
            Some(t) => Duration::from_secs(t.saturating_sub(now).clamp(1, 60) as u64),
            None => Duration::from_secs(60),
        })
    }
}

#[cfg(feature = "fixtures")]
impl Core {
    /// Writes `count` leases on the plugin mount at `mount_path` straight to
    /// the store, as if its engine had issued them, `batch` to a commit:
    /// lease `i` expires `ttl(i)` seconds from now (negative: already due)
    /// and carries the engine data `data(i)`. For benchmarks and tests of
    /// many leases; the server never calls it.
    pub async fn write_lease_fixture(
        &self,
        mount_path: &str,
        count: usize,
        batch: usize,
        ttl: impl Fn(usize) -> i64,
        data: impl Fn(usize) -> Params,
    ) -> Result<()> {
        let table = self.unsealed()?.table();
        let mount = table
            .entries
            .iter()
            .find(|m| m.path == mount_path)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no mount at {mount_path}")))?;
        let now = Timestamp::now().secs;
        let mut b = WriteBatch::new();
        for i in 0..count {
            let id = format!("{}fixture/{:032x}", mount.path, i);
            let expires = now.saturating_add(ttl(i));
            let r = LeaseRecord {
                id: id.clone(),
                mount_id: mount.id.clone(),
                mount_path: mount.path.clone(),
                path: "fixture".into(),
                issued: at(now),
                expires: at(expires),
                max_expires: at(expires.max(now)),
                renewable: true,
                attempts: 0,
                last_error: None,
                retry_at: None,
                pinned: false,
            };
            b.put(format!("{LEASES}{id}"), encode_json(&r));
            b.put(format!("{LEASE_DATA}{id}"), Zeroizing::new(serde_json::to_vec(&data(i).0).unwrap_or_default()));
            b.put(due_key(expires, &id), Zeroizing::new(Vec::new()));
            if (i + 1) % batch.max(1) == 0 {
                self.barrier.commit(std::mem::take(&mut b)).await?;
            }
        }
        self.barrier.commit(b).await?;
        self.leases.changed.notify_one();
        Ok(())
    }
}

impl Core {
    /// Revokes one lease the due index lists at `at`, if it is still due
    /// by `now`; an index entry left behind (the lease gone, renewed or
    /// pinned since the index was read) is dropped. Only sealing is an
    /// error here: a failed revocation is retried by the lease itself.
    async fn expire(&self, at: i64, id: String, now: i64) -> Result<()> {
        match self.revoke_now(&id, "lease-expiry", Some(now)).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                if self.leases.record(&id).await?.is_none_or(|r| r.due() != Some(at)) {
                    self.leases.drop_stale_due(at, &id).await?;
                }
                Ok(())
            }
            Err(Error::Sealed) => Err(Error::Sealed),
            // A record that cannot be read cannot be revoked: looked at
            // again in an hour, not every pass (it would hold the front).
            Err(e @ Error::Corrupt { .. }) => {
                tracing::error!(lease_id = %id, error = %e, "lease: unreadable; expiry retried in an hour");
                self.leases.postpone_due(at, &id, now.saturating_add(3600)).await
            }
            Err(_) => Ok(()),
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no lease {id:?} (expired and revoked, or never issued)"))
}
