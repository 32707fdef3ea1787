//! The lease manager: credentials an engine issues with a TTL get a lease,
//! kept in the barrier (so leases survive restarts); renew extends it up to
//! its max TTL; revoke, expiry or revoke-by-prefix runs the engine's revoke,
//! retried with backoff until it succeeds.
//!
//! Storage: `core/leases/<lease id>` holds the record, `core/lease-data/<lease
//! id>` the engine's internal data (which may be secret), written together.
//! Lease ids are `<mount path><request path>/<32 hex>`, so a prefix of a path
//! is a prefix of its leases' ids.

use std::collections::{BTreeMap, BTreeSet};
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
const DEFAULT_TTL: u64 = 3600;
const DEFAULT_MAX_TTL: u64 = 768 * 3600;
/// Backoff between failed revocations: 1 s doubling to this.
const MAX_BACKOFF: u64 = 600;
/// The most lease records one `Leases/List` call returns.
const LIST_MAX: usize = 100_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRecord {
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

    /// When the worker should look at it next.
    fn due(&self) -> i64 {
        match self.retry_at {
            Some(t) => t.secs,
            None if self.pinned => i64::MAX,
            None => self.expires.secs,
        }
    }
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

fn mount_duration(mount: &MountEntry, key: &str, default: u64) -> u64 {
    mount.config.get(key).and_then(|v| crate::plugins::parse_duration(v)).unwrap_or(default)
}

/// The in-memory due index: (due unix seconds, lease id).
#[derive(Default)]
pub(crate) struct LeaseIndex {
    pub(crate) due: BTreeSet<(i64, String)>,
    pub(crate) by_id: BTreeMap<String, i64>,
}

impl LeaseIndex {
    fn set(&mut self, id: &str, due: i64) {
        if let Some(old) = self.by_id.insert(id.to_string(), due) {
            self.due.remove(&(old, id.to_string()));
        }
        self.due.insert((due, id.to_string()));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.due.remove(&(old, id.to_string()));
        }
    }
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
    changed: tokio::sync::Notify,
    /// Leases by when they are due; emptied on seal.
    index: std::sync::Mutex<LeaseIndex>,
    /// Test hook: recording a lease fails, as on a full disk.
    #[cfg(test)]
    pub(crate) fail_record: std::sync::atomic::AtomicBool,
}

impl LeaseManager {
    pub(crate) fn new(barrier: Arc<Barrier>, stripes: usize) -> Self {
        LeaseManager {
            barrier,
            locks: Stripes::new(stripes),
            changed: tokio::sync::Notify::new(),
            index: Default::default(),
            #[cfg(test)]
            fail_record: Default::default(),
        }
    }

    /// Reads every lease into the due index (at unseal) and wakes the worker.
    pub(crate) async fn load(&self) -> Result<()> {
        let mut index = LeaseIndex::default();
        for r in self.records("", usize::MAX).await? {
            index.set(&r.id, r.due());
        }
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = index;
        self.changed.notify_one();
        Ok(())
    }

    /// Forgets the due index (at seal).
    pub(crate) fn unload(&self) {
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = LeaseIndex::default();
    }

    pub(crate) async fn lock(&self, lease_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks.lock(lease_id).await
    }

    /// The lease records whose ids start with `prefix` (at most `max`).
    async fn records(&self, prefix: &str, max: usize) -> Result<Vec<LeaseRecord>> {
        let mut out = Vec::new();
        for key in self.barrier.list_all(&format!("{LEASES}{prefix}"), max).await? {
            let Some(raw) = self.barrier.get(&key).await? else { continue };
            out.push(serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?);
        }
        Ok(out)
    }

    /// The ids of the leases under `prefix`.
    async fn ids(&self, prefix: &str) -> Result<Vec<String>> {
        let keys = self.barrier.list_all(&format!("{LEASES}{prefix}"), usize::MAX).await?;
        Ok(keys.into_iter().map(|k| k[LEASES.len()..].to_string()).collect())
    }

    async fn read(&self, id: &str) -> Result<Option<(LeaseRecord, Params)>> {
        let key = format!("{LEASES}{id}");
        let Some(raw) = self.barrier.get(&key).await? else { return Ok(None) };
        let r: LeaseRecord = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?;
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

    async fn write(&self, r: &LeaseRecord, data: Option<&Params>) -> Result<()> {
        #[cfg(test)]
        if self.fail_record.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Internal("injected: the lease store is failing".into()));
        }
        let mut b = WriteBatch::new();
        b.put(format!("{LEASES}{}", r.id), encode_json(r));
        if let Some(d) = data {
            b.put(format!("{LEASE_DATA}{}", r.id), Zeroizing::new(serde_json::to_vec(&d.0).unwrap_or_default()));
        }
        self.barrier.commit(b).await?;
        self.index.lock().unwrap_or_else(|p| p.into_inner()).set(&r.id, r.due());
        self.changed.notify_one();
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(format!("{LEASES}{id}")).delete(format!("{LEASE_DATA}{id}"));
        self.barrier.commit(b).await?;
        self.index.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    /// Up to `max` leases due by `now`.
    fn due(&self, now: i64, max: usize) -> Vec<String> {
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.due.iter().take_while(|(t, _)| *t <= now).take(max).map(|(_, id)| id.clone()).collect()
    }

    /// When the next lease is due.
    fn next_due(&self) -> Option<i64> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).due.iter().next().map(|(t, _)| *t)
    }
}

impl Core {
    /// Records the lease of a credential just issued. If it cannot be
    /// recorded, the credential is revoked at once: nothing would revoke it
    /// later.
    pub(crate) async fn record_lease(
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
        if let Err(e) = self.leases.write(&r, Some(&lease.internal)).await {
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

    pub async fn lookup_lease(&self, caller: &Caller, lease_id: &str) -> Result<LeaseView> {
        let id = self.authenticate(caller).await?;
        validate_lease_ref(lease_id, "lease id")?;
        self.authorize(caller, &id, "sys/leases/lookup", Capability::Update).await?;
        let (r, _) = self.leases.read(lease_id).await?.ok_or_else(|| not_found(lease_id))?;
        Ok(r.view())
    }

    /// Leases whose ids start with `prefix` (Vault: list on
    /// `sys/leases/lookup/PREFIX`, which needs sudo).
    pub async fn list_leases(&self, caller: &Caller, prefix: &str) -> Result<Vec<LeaseView>> {
        let id = self.authenticate(caller).await?;
        if !prefix.is_empty() {
            validate_lease_ref(prefix, "prefix")?;
        }
        self.authorize(caller, &id, &format!("sys/leases/lookup/{prefix}"), Capability::Sudo).await?;
        Ok(self.leases.records(prefix, LIST_MAX).await?.iter().map(LeaseRecord::view).collect())
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
        let ttl = if terms.ttl_secs == 0 { increment.max(1) } else { terms.ttl_secs };
        // The engine's TTL and the caller's increment are numbers from
        // outside: saturating, then capped at the lease's max.
        r.expires = at(now).plus_secs(ttl).min(r.max_expires);
        r.renewable = terms.renewable;
        self.leases.write(&r, None).await?;
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
        if self.leases.read(lease_id).await?.is_none() {
            return Err(not_found(lease_id));
        }
        self.revoke_now(lease_id, &caller.request_id).await
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
        self.revoke_now(lease_id, request_id).await
    }

    pub(crate) async fn revoke_under(&self, prefix: &str, request_id: &str) -> Result<usize> {
        let ids = self.leases.ids(prefix).await?;
        let mut done = 0;
        let mut failed = Vec::new();
        for lease in &ids {
            match self.revoke_now(lease, request_id).await {
                Ok(()) => done += 1,
                Err(e) => failed.push(format!("{lease}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(Error::Unavailable(format!(
                "revoked {done} lease(s); {} could not be revoked and will be retried: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    }

    /// Runs the engine's revoke for a lease and deletes the lease; on
    /// failure schedules a retry with backoff.
    async fn revoke_now(&self, lease_id: &str, request_id: &str) -> Result<()> {
        let _g = self.leases.lock(lease_id).await;
        let Some((mut r, data)) = self.leases.read(lease_id).await? else { return Ok(()) };
        let attempt = async {
            let (mount, backend) = self.lease_backend(&r).await?;
            let ctx = self.call_context(&mount, request_id, "lease manager");
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
                self.leases.delete(lease_id).await?;
                tracing::info!(lease_id = %lease_id, "lease: revoked");
                Ok(())
            }
            Err(e) => {
                r.attempts += 1;
                r.last_error = Some(e.to_string());
                let backoff = (1u64 << (r.attempts - 1).min(20)).min(MAX_BACKOFF);
                r.retry_at = Some(Timestamp::now().plus_secs(backoff));
                tracing::warn!(lease_id = %lease_id, attempts = r.attempts, error = %e, "lease: revoke failed; will retry");
                self.leases.write(&r, None).await?;
                Err(e)
            }
        }
    }

    /// Revokes leases as they expire, forever; started by the server.
    pub async fn lease_worker(self: Arc<Self>) {
        crate::core::run_passes("lease", &self.leases.changed, || self.lease_pass()).await
    }

    /// Revokes what is due; returns how long until the next is.
    pub(crate) async fn lease_pass(&self) -> Result<Duration> {
        self.unsealed()?;
        for id in &self.leases.due(Timestamp::now().secs, 64) {
            if let Err(e) = self.revoke_now(id, "lease-expiry").await
                && matches!(e, Error::Sealed)
            {
                return Err(e);
            }
        }
        Ok(match self.leases.next_due() {
            Some(t) if t <= Timestamp::now().secs => Duration::from_millis(50),
            Some(t) => Duration::from_secs((t - Timestamp::now().secs).clamp(1, 60) as u64),
            None => Duration::from_secs(60),
        })
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no lease {id:?} (expired and revoked, or never issued)"))
}
