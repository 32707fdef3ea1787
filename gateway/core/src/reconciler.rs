//! The reconciler's API and its host. The reconciler itself (rules, the
//! journal, the worker, scans and rotation) is crate `keybridge-reconciler`;
//! here each of its operations is authenticated and authorized, a rule is
//! checked against its writer's authority before it is stored, and the core
//! implements the [`Host`] and [`Store`] the reconciler works through.

use std::sync::Arc;
use std::time::Duration;

pub use keybridge_reconciler::{
    CopyState, Current, Head, Host, Issued, Listing, MARKER_TAG, OnConflict, OnDelete, Reach, Reconciler, Record,
    RotateSpec, Rotation, RotationState, RotationVerifier, Routed, Rule, RuleSpec, Schedule, SecretEvent, Staged,
    Staging, StateCount, StatusQuery, Store, SyncStatus, TargetStatus, check_name, check_rules, fingerprint, state_key,
};

use crate::audit::{AuditValue, Caller};
use crate::backend::Backend;
use crate::core::{Capability, Core};
use crate::path::{validate_folder_path, validate_secret_path};
use crate::value::SecretValue;
use crate::{Error, Result, Timestamp};

impl Core {
    // ----- rules --------------------------------------------------------------

    fn rule_from(&self, spec: RuleSpec) -> Result<Rule> {
        check_name(&spec.name)?;
        let table = self.unsealed()?.table();
        let folder = |p: &str, what: &str| -> Result<String> {
            let f = validate_folder_path(p.trim())?;
            let Some((mount, rel)) = table.route(&f) else {
                return Err(Error::InvalidArgument(format!("{what} {f}: no mount serves it")));
            };
            if self.is_engine_kind(&mount.kind) {
                return Err(Error::InvalidArgument(format!(
                    "{what} {f}: {} is a plugin mount; rules replicate secrets between local and cloud mounts",
                    mount.path
                )));
            }
            // Raw cloud names are flat and authorized by what they decode
            // to, which a folder does not say: rules take Keybridge paths.
            if keybridge_provider_api::Cloud::from_kind(&mount.kind).is_some()
                && rel.starts_with(crate::backend::cloud::RAW_FOLDER)
            {
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
            on_conflict: OnConflict::parse(&spec.on_conflict)?,
            delete: OnDelete::parse(&spec.delete)?,
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

    /// A rule acts later on its writer's behalf, so the writer must hold now
    /// what the rule will do: read and list everything below the source,
    /// create and update everything below each target; `adopt` also update
    /// on the source and read on the targets; `propagate` delete on the
    /// targets; `take_over`, `adopt` and `propagate` sudo on the rule's own
    /// path. Returns the checks made, one line each.
    async fn rule_authority(&self, id: &crate::tokens::Identity, rule: &Rule) -> Result<Vec<String>> {
        use Capability::*;
        let table = self.unsealed()?.table();
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
            if rule.on_conflict == OnConflict::Adopt {
                wanted.push((folder(t, "data")?, Read));
            }
            if rule.delete == OnDelete::Propagate {
                wanted.push((folder(t, "metadata")?, Delete));
            }
        }
        if rule.on_conflict == OnConflict::Adopt {
            wanted.push((folder(&rule.source, "data")?, Update));
        }
        let mut made = Vec::new();
        for (prefix, cap) in wanted {
            self.decide_under(id, &prefix, cap).await?;
            made.push(format!("{} on {prefix}*", cap.name()));
        }
        if rule.take_over || rule.on_conflict == OnConflict::Adopt || rule.delete == OnDelete::Propagate {
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
        check_name(&spec.name)?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{}", spec.name), Capability::Update).await?;
        let _guard = self.admin.lock().await;
        let mut rule = self.rule_from(spec)?;
        rule.authorizations = self.rule_authority(&id, &rule).await?;
        rule.written_by = format!("{} ({})", id.accessor, id.display_name);
        Ok(self.sync.save_rule(self, rule).await?)
    }

    pub async fn get_sync_rule(&self, caller: &Caller, name: &str) -> Result<Rule> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{name}"), Capability::Read).await?;
        Ok(self.sync.rule(self, name).await?)
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
        Ok(self.sync.delete_rule(self, name).await?)
    }

    pub(crate) async fn sync_rules(&self) -> Result<Arc<Vec<Rule>>> {
        Ok(self.sync.rules(self).await?)
    }

    // ----- status and runs ------------------------------------------------------

    pub async fn sync_status(&self, caller: &Caller, q: &StatusQuery) -> Result<SyncStatus> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/status", Capability::Read).await?;
        // The status of replicas lives in the memory of the node whose
        // reconciler made them.
        self.leader_only("the reconciler's status")?;
        Ok(self.sync.status(self, q).await?)
    }

    /// Scans now and, with `wait`, answers when nothing is pending (or at
    /// the timeout, with what is left).
    pub async fn sync_run(&self, caller: &Caller, rule: &str, wait: bool, timeout: Duration) -> Result<SyncStatus> {
        self.sync_run_scan(caller, rule, wait, timeout, true, "").await
    }

    /// As [`Core::sync_run`]; `deep: false` scans as the periodic quick
    /// scan; `resume` (from an earlier answer) waits for the scan that run
    /// asked for instead of asking for another.
    pub async fn sync_run_scan(
        &self,
        caller: &Caller,
        rule: &str,
        wait: bool,
        timeout: Duration,
        deep: bool,
        resume: &str,
    ) -> Result<SyncStatus> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/run", Capability::Update).await?;
        self.leader_only("a reconciler run")?;
        Ok(self.barrier.leader_work(self.sync.run(self, rule, wait, timeout, deep, resume)).await?)
    }

    /// Runs the reconciler until the process ends: replays the journal,
    /// replicates, rotates, scans when due. Idle while sealed.
    pub async fn sync_worker(self: Arc<Self>) {
        let _running = self.sync.worker_running();
        crate::core::run_passes(&self, "sync", self.sync.wakeup(), || self.sync_pass()).await
    }

    pub(crate) async fn sync_pass(&self) -> Result<Duration> {
        self.finish_purges().await?;
        Ok(self.sync.pass(self).await?)
    }

    /// Finishes removing mounts whose removal stopped half-way (the node
    /// removing it crashed): those seen being removed for a minute, so as
    /// not to race a removal another node is still making.
    async fn finish_purges(&self) -> Result<()> {
        let table = self.unsealed()?.table();
        let now = std::time::Instant::now();
        let due: Vec<String> = {
            let mut seen = self.pending_purges.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|id, _| table.entries.iter().any(|m| m.deleting && &m.id == id));
            for m in table.entries.iter().filter(|m| m.deleting) {
                seen.entry(m.id.clone()).or_insert(now);
            }
            seen.iter().filter(|(_, at)| now.duration_since(**at) >= PURGE_AFTER).map(|(id, _)| id.clone()).collect()
        };
        for id in due {
            let _admin = self.admin.lock().await;
            let entry = self.unsealed()?.table().entries.iter().find(|m| m.deleting && m.id == id).cloned();
            if let Some(m) = entry {
                tracing::info!(mount = %m.path, "finishing the removal of a mount that stopped half-way");
                self.purge_mount(&m).await?;
            }
        }
        Ok(())
    }

    // ----- the journal ------------------------------------------------------------

    /// Records, before a write to `path`, that the rules covering it must
    /// replicate it.
    pub(crate) async fn sync_announce(&self, path: &str) -> Result<keybridge_reconciler::Announced> {
        Ok(self.sync.announce(self, path).await?)
    }

    /// After the change announced: see [`keybridge_reconciler::Reconciler::touch`].
    /// A failure is logged (the next scan finds the change).
    pub(crate) async fn sync_touch(&self, path: &str, announced: &keybridge_reconciler::Announced) {
        if let Err(e) = self.sync.touch(announced).await {
            tracing::warn!(path, error = %e, "sync: cannot mark the journal after a write; the next scan finds it");
        }
    }

    pub(crate) fn sync_wake(&self) {
        self.sync.wake();
    }

    /// Runs a change other than a put with the rules covering `path`
    /// journaled before it (see [`Reconciler::journaled`]).
    pub(crate) async fn journaled<T>(
        &self,
        path: &str,
        change: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.sync.journaled(self, path, change).await
    }

    // ----- rotation ---------------------------------------------------------------

    /// Starts a rotation of `spec.path` and every replica of it; the worker
    /// carries it out. One rotation per secret at a time.
    pub async fn rotate_secret(&self, caller: &Caller, spec: RotateSpec) -> Result<Rotation> {
        let id = self.authenticate(caller).await?;
        validate_secret_path(&spec.path)?;
        self.authorize(caller, &id, &format!("sys/sync/rotate/{}", spec.path), Capability::Update).await?;
        self.check_rotation_authority(caller, &id, &spec).await?;
        Ok(self.sync.start_rotation(self, spec).await?)
    }

    /// A rotation (or a schedule, which starts them later) writes the secret
    /// on the caller's behalf: the caller needs `update` on the secret
    /// itself, and through an engine the capability the engine's path asks
    /// of a caller (the reconciler has the engine issue a credential there).
    async fn check_rotation_authority(
        &self,
        caller: &Caller,
        id: &crate::tokens::Identity,
        spec: &RotateSpec,
    ) -> Result<()> {
        let secret = self.secret_acl_path(&spec.path, "data").await?;
        self.decide_with(id, &secret, Capability::Update, None).await.map_err(|e| match e {
            Error::PermissionDenied(m) => Error::PermissionDenied(format!("{m}: a rotation writes the secret itself")),
            e => e,
        })?;
        if spec.engine.is_empty() {
            return Ok(());
        }
        let (mount, rel, backend) = self.engine_route(&spec.engine).await?;
        let ops =
            crate::plugins::match_path(backend.info(), &rel).map(|m| m.info.operations.clone()).unwrap_or_default();
        use crate::plugins::Operation;
        let cap = if ops.contains(&Operation::Update) {
            Capability::Update
        } else if ops.contains(&Operation::Create) {
            Capability::Create
        } else if ops.contains(&Operation::Read) {
            Capability::Read
        } else {
            Capability::Update
        };
        self.authorize_params(caller, id, spec.engine.trim_end_matches('/'), cap, &[]).await?;
        if !backend.info().rotates {
            return Err(Error::FailedPrecondition(format!(
                "the {} engine at {} cannot rotate: its component targets world `engine`, not `rotating-engine`",
                backend.info().name,
                mount.path
            )));
        }
        Ok(())
    }

    /// Sets (or with `every_secs = 0` removes) a rotation schedule: the
    /// secret rotates every `every_secs`, the first time one period from now.
    pub async fn schedule_rotation(
        &self,
        caller: &Caller,
        spec: RotateSpec,
        every_secs: u64,
    ) -> Result<Option<Schedule>> {
        let id = self.authenticate(caller).await?;
        validate_secret_path(&spec.path)?;
        self.authorize(caller, &id, &format!("sys/sync/rotate/{}", spec.path), Capability::Update).await?;
        self.check_rotation_authority(caller, &id, &spec).await?;
        Ok(self.sync.schedule(spec, every_secs).await?)
    }

    pub async fn get_rotation(&self, caller: &Caller, path: &str) -> Result<Rotation> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rotate/{path}"), Capability::Read).await?;
        self.sync.rotation(path).await?.ok_or_else(|| Error::NotFound(format!("no rotation of {path}")))
    }
}

/// The audit record of an adopt: the target's value pushed to the source.
fn adopt_caller(source: &str, target: &str, value: &SecretValue) -> Caller {
    Caller::new(None, "keybridge.v1.Sync/Adopt")
        .with_path(source)
        .with("adopted_from", AuditValue::plain(target.to_string()))
        .with("value", value.audit_value())
}

#[async_trait::async_trait]
impl Host for Core {
    fn unsealed(&self) -> keybridge_reconciler::Result<()> {
        Core::unsealed(self)?;
        Ok(())
    }

    fn mount_id(&self, path: &str) -> keybridge_reconciler::Result<Option<String>> {
        Ok(Core::unsealed(self)?.table().route(path).map(|(m, _)| m.id.clone()))
    }

    async fn route<'a>(&'a self, path: &str) -> keybridge_reconciler::Result<Routed<'a>> {
        let table = Core::unsealed(self)?.table();
        let (backend, mount, rel) = Core::route(self, &table, path).await?;
        Ok(Routed { store: Box::new(backend), mount_path: mount.path.clone(), rel: rel.to_string() })
    }

    async fn path_lock<'a>(&'a self, path: &str) -> tokio::sync::MutexGuard<'a, ()> {
        Core::path_lock(self, path).await
    }

    /// Audited (fail-closed) and announced for replication everywhere.
    async fn adopt(&self, source: &str, from: &str, value: &SecretValue) -> keybridge_reconciler::Result<u64> {
        let caller = adopt_caller(source, from, value);
        self.audit_request(&caller, None).await;
        if caller.state().audit_failed {
            return Err(
                Error::AuditFailed("no audit device could record the adopt; it was not carried out".into()).into()
            );
        }
        let res = async {
            let table = Core::unsealed(self)?.table();
            let (backend, _, rel) = Core::route(self, &table, source).await?;
            let announced = self.sync_announce(source).await?;
            let v = backend.write(rel, value, None).await?.0;
            self.sync_touch(source, &announced).await;
            self.sync_wake();
            Ok(v)
        }
        .await;
        Ok(self.finish(&caller, res, |v| vec![("version".into(), AuditValue::plain(*v))]).await?)
    }

    async fn issue(&self, engine_path: &str) -> keybridge_reconciler::Result<Issued> {
        let (mount, rel, backend) = self.engine_route(engine_path).await?;
        let ctx = self.call_context(&mount, "rotation", "reconciler");
        // A deposed leader's scheduled rotation issues nothing.
        keybridge_barrier::leader_work::check().await?;
        let resp = backend
            .rotate(&ctx, &rel, &crate::plugins::Params::default())
            .await
            .map_err(crate::plugins::engine_error)?;
        let lease = match resp.lease {
            Some(l) => self.leases.record_issued(&mount, &rel, &ctx, backend.as_ref(), l, true).await?.lease_id,
            None => String::new(),
        };
        let fields = resp.data.0.iter().map(|(k, v)| (k.clone(), zeroize::Zeroizing::new(v.clone()))).collect();
        Ok(Issued { fields, lease })
    }

    async fn revoke_lease(&self, lease: &str, why: &str) -> keybridge_reconciler::Result<()> {
        Ok(self.revoke_lease_now(lease, why).await?)
    }

    fn call_counts(&self) -> Vec<keybridge_reconciler::CallCount> {
        let Ok(unsealed) = Core::unsealed(self) else { return Vec::new() };
        let table = unsealed.table();
        let mut calls = Vec::new();
        for (path, stats) in self.mount_stats() {
            let kind = table.get(&path).map(|m| m.kind.clone()).unwrap_or_default();
            for ((k, n), time) in stats.by_kind.into_iter().zip(stats.time_by_kind) {
                calls.push(keybridge_reconciler::CallCount {
                    mount: path.clone(),
                    provider: kind.clone(),
                    kind: k,
                    calls: n,
                    time,
                });
            }
        }
        calls
    }

    #[cfg(test)]
    async fn loaded(&self, what: &'static str) {
        self.load_hold(what).await;
    }
}

/// How long a mount is seen half-removed before the leader finishes it.
const PURGE_AFTER: Duration = Duration::from_secs(60);

#[async_trait::async_trait]
impl Store for Backend<'_> {
    fn reach(&self) -> Reach {
        Backend::reach(self)
    }

    async fn read_current(&self, rel: &str) -> keybridge_reconciler::Result<Option<Current>> {
        Ok(Backend::read_current(self, rel).await?)
    }

    async fn head(&self, rel: &str) -> keybridge_reconciler::Result<Option<Head>> {
        Ok(Backend::head(self, rel).await?)
    }

    async fn write_replica(
        &self,
        rel: &str,
        value: &SecretValue,
        rule_id: &str,
        existing: Option<&Head>,
    ) -> keybridge_reconciler::Result<(String, Option<String>)> {
        Ok(Backend::write_replica(self, rel, value, rule_id, existing).await?)
    }

    async fn delete_replica(&self, rel: &str) -> keybridge_reconciler::Result<()> {
        Ok(Backend::delete_replica(self, rel).await?)
    }

    async fn list_page(&self, folder: &str, token: &str) -> keybridge_reconciler::Result<Listing> {
        Ok(Backend::list_page(self, folder, token).await?)
    }

    async fn stage(
        &self,
        rel: &str,
        value: &SecretValue,
        key: &str,
        path: &str,
    ) -> keybridge_reconciler::Result<Staged> {
        Ok(Backend::stage(self, rel, value, key, path).await?)
    }

    async fn promote(
        &self,
        rel: &str,
        how: Staging,
        staged_id: &str,
        value: &SecretValue,
        holds: &(dyn for<'v> Fn(&'v SecretValue) -> bool + Send + Sync),
    ) -> keybridge_reconciler::Result<(String, Option<String>)> {
        Ok(Backend::promote(self, rel, how, staged_id, value, holds).await?)
    }

    async fn unstage(&self, rel: &str, how: Staging, staged_id: &str) -> keybridge_reconciler::Result<()> {
        Ok(Backend::unstage(self, rel, how, staged_id).await?)
    }

    async fn retire(&self, rel: &str, old_id: &str) -> keybridge_reconciler::Result<()> {
        Ok(Backend::retire(self, rel, old_id).await?)
    }
}
