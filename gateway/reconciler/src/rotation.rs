//! Coordinated rotation of a secret and every replica the sync rules keep
//! of it: the dual-credential pattern as a journaled state machine.
//!
//! 1. **Staging**: the new value goes to every copy without changing what
//!    readers of the current value get. AWS stages natively (AWSPENDING);
//!    GCP and Azure, whose newest version is what readers get, get a
//!    staging secret beside the replica (`<path>.kb-pending`); local copies
//!    (the source included) hold it in the rotation record, in the barrier.
//!    A copy that cannot be staged rolls every copy back.
//! 2. **Promoting**: the source first, then each replica (AWS: AWSCURRENT
//!    moves, the old version stays AWSPREVIOUS; GCP/Azure: the value is
//!    written as the new latest version and the staging secret deleted).
//!    Failures from here on are retried until every copy has moved.
//!    Between staging and promoting, the server's verification command (if
//!    configured) tries the new value; a refusal rolls every copy back.
//! 3. **Retiring**, once every copy is promoted and the grace period has
//!    passed: AWS removes the AWSPREVIOUS label, GCP and Azure disable the
//!    old version. Until then both values are valid.
//!
//! The record (`sync/rotations/<path>`) is written after every step of
//! every copy, and the worker resumes it after a restart; each step is
//! idempotent (AWS staging finds its version again by the rotation id in
//! the version id).

use std::time::Duration;

use keybridge_barrier::WriteBatch;
use rand::Rng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use keybridge_audit::Timestamp;
use keybridge_value::SecretValue;

use crate::store::{Staged, Staging};
use crate::{Error, Host, Reconciler, Record, Result, encode_json, fingerprint, state_key};

const ROTATIONS: &str = "sync/rotations/";
const VALUES: &str = "sync/rotation-values/";
const SCHEDULES: &str = "sync/rotation-schedules/";

/// A secret that rotates on its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Schedule {
    pub path: String,
    pub field: String,
    pub length: usize,
    pub grace_secs: u64,
    pub every_secs: u64,
    pub next: Timestamp,
    /// An engine path whose `rotate` makes the new value (empty: a random
    /// password).
    #[serde(default)]
    pub engine: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RotationState {
    Staging,
    Promoting,
    Retiring,
    Done,
    RolledBack,
}

impl RotationState {
    pub fn name(self) -> &'static str {
        match self {
            RotationState::Staging => "staging",
            RotationState::Promoting => "promoting",
            RotationState::Retiring => "retiring",
            RotationState::Done => "done",
            RotationState::RolledBack => "rolled_back",
        }
    }

    fn active(self) -> bool {
        matches!(self, RotationState::Staging | RotationState::Promoting | RotationState::Retiring)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyState {
    pub path: String,
    /// The rule that keeps this replica (empty for the source).
    pub rule_id: String,
    /// How the new value was staged on this copy.
    pub how: Staging,
    pub old_id: String,
    pub staged_id: String,
    pub staged: bool,
    pub promoted: bool,
    pub retired: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rotation {
    /// 32 hex digits.
    pub id: String,
    pub path: String,
    pub field: String,
    pub state: RotationState,
    pub copies: Vec<CopyState>,
    pub grace_secs: u64,
    pub old_version: u64,
    pub new_version: u64,
    /// The source's version id after promotion (its number on a local
    /// source), as replication records it.
    #[serde(default)]
    pub new_mark: String,
    pub started: Timestamp,
    pub promoted: Option<Timestamp>,
    pub finished: Option<Timestamp>,
    pub error: String,
    /// The engine path that issued the new value (empty: a random password).
    #[serde(default)]
    pub engine: String,
    /// The lease of the credential this rotation put in place, and of the
    /// one it replaces (revoked once every copy moved and the grace period
    /// passed).
    #[serde(default)]
    pub new_lease: String,
    #[serde(default)]
    pub old_lease: String,
}

/// The lease of the engine-issued credential a secret holds now.
const HELD_LEASES: &str = "sync/rotation-leases/";

/// How the new value is made.
#[derive(Clone, Debug, Default)]
pub struct RotateSpec {
    pub path: String,
    /// The field replaced in a secret of fields (default `password`).
    pub field: String,
    /// Characters of the new password (default 32, 12 to 256).
    pub length: usize,
    pub grace_secs: u64,
    /// An engine path (`saas/creds/app`) whose engine issues the new
    /// credential while the current one stays valid; empty: a random
    /// password of `length`.
    pub engine: String,
}

/// Tries a staged value before it is promoted (the server's
/// `rotation_verify_command`); `Err` carries the reason it was refused.
#[async_trait::async_trait]
pub trait RotationVerifier: Send + Sync {
    async fn verify(&self, path: &str, value: &SecretValue) -> std::result::Result<(), String>;
}

const CHARSET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.+=";

/// A random password of `length` from [`CHARSET`], with at least one upper-
/// case letter, lower-case letter, digit and symbol.
fn generate(length: usize) -> Zeroizing<String> {
    let mut rng = rand::rngs::OsRng;
    loop {
        let s: String = (0..length).map(|_| CHARSET[rng.gen_range(0..CHARSET.len())] as char).collect();
        let classes = [
            s.bytes().any(|b| b.is_ascii_uppercase()),
            s.bytes().any(|b| b.is_ascii_lowercase()),
            s.bytes().any(|b| b.is_ascii_digit()),
            s.bytes().any(|b| !b.is_ascii_alphanumeric()),
        ];
        if classes.iter().all(|c| *c) {
            return Zeroizing::new(s);
        }
    }
}

/// The longest rotation period: ten years.
const MAX_ROTATION_PERIOD_SECS: u64 = 10 * 365 * 86_400;

/// Fault injection for the crash tests, compiled only with the
/// `fault-injection` feature: the process dies right after the named step
/// (`KEYBRIDGE_FAULT_ROTATION`) was recorded. Release builds have no hook.
#[cfg(feature = "fault-injection")]
fn fault(step: &str) {
    if std::env::var("KEYBRIDGE_FAULT_ROTATION").is_ok_and(|v| v == step) {
        eprintln!("keybridge: KEYBRIDGE_FAULT_ROTATION={step}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault(_step: &str) {}

impl Reconciler {
    /// Sets (or with `every_secs = 0` removes) a rotation schedule: the
    /// secret rotates every `every_secs`, the first time one period from now.
    /// The caller has checked the writer holds what the rotations will do.
    pub async fn schedule(&self, spec: RotateSpec, every_secs: u64) -> Result<Option<Schedule>> {
        let key = format!("{SCHEDULES}{}", spec.path);
        let mut batch = WriteBatch::new();
        if every_secs == 0 {
            batch.delete(key);
            self.barrier.commit(batch).await?;
            return Ok(None);
        }
        if !(60..=MAX_ROTATION_PERIOD_SECS).contains(&every_secs) {
            return Err(Error::InvalidArgument(
                "a rotation period is at least one minute and at most ten years (87600h)".into(),
            ));
        }
        let length = if spec.length == 0 { 32 } else { spec.length };
        if !(12..=256).contains(&length) {
            return Err(Error::InvalidArgument(format!("length {length} is outside 12 to 256")));
        }
        let s = Schedule {
            path: spec.path.clone(),
            field: spec.field.clone(),
            length,
            grace_secs: spec.grace_secs,
            every_secs,
            next: Timestamp { nanos: 0, ..Timestamp::now().plus_secs(every_secs) },
            engine: spec.engine.clone(),
        };
        batch.put(key, encode_json(&s));
        self.barrier.commit(batch).await?;
        self.wake();
        Ok(Some(s))
    }

    /// Starts the rotations whose schedule is due.
    async fn scheduled_pass(&self, host: &dyn Host) -> Result<()> {
        let now = Timestamp::now();
        for key in self.barrier.list(SCHEDULES, None, 10_000).await? {
            let Some(raw) = self.barrier.get(&key).await? else { continue };
            let Ok(mut s) = serde_json::from_slice::<Schedule>(&raw) else { continue };
            if s.next > now {
                continue;
            }
            let spec = RotateSpec {
                path: s.path.clone(),
                field: s.field.clone(),
                length: s.length,
                grace_secs: s.grace_secs,
                engine: s.engine.clone(),
            };
            match self.start_rotation(host, spec).await {
                Ok(_) | Err(Error::FailedPrecondition(_)) => {}
                Err(e) => tracing::warn!(path = %s.path, error = %e, "sync: a scheduled rotation could not start"),
            }
            s.next = Timestamp { nanos: 0, ..now.plus_secs(s.every_secs) };
            let mut batch = WriteBatch::new();
            batch.put(key, encode_json(&s));
            self.barrier.commit(batch).await?;
        }
        Ok(())
    }

    /// Starts a rotation of `spec.path` and every replica the rules own;
    /// the worker carries it out. One rotation per secret at a time. The
    /// caller has checked the writer holds what the rotation will do.
    pub async fn start_rotation(&self, host: &dyn Host, spec: RotateSpec) -> Result<Rotation> {
        let length = if spec.length == 0 { 32 } else { spec.length };
        if !(12..=256).contains(&length) {
            return Err(Error::InvalidArgument(format!("length {length} is outside 12 to 256")));
        }
        let field = if spec.field.is_empty() { "password".to_string() } else { spec.field.clone() };
        let key = format!("{ROTATIONS}{}", spec.path);
        let _guard = host.path_lock(&spec.path).await;
        // The record is written conditioned on this read: the path lock is
        // this node's, and another node may start a rotation of the same
        // secret at the same time.
        let (_, record_stamp) = self.barrier.get_stamped(&key).await?;
        if let Some(r) = self.rotation(&spec.path).await?
            && r.state.active()
        {
            return Err(Error::FailedPrecondition(format!(
                "a rotation of {} is {} (started {}s ago); wait for it",
                spec.path,
                r.state.name(),
                Timestamp::now().secs - r.started.secs
            )));
        }
        let routed = host.route(&spec.path).await?;
        let Some(crate::Current { value: current, number: version, .. }) =
            routed.store.read_current(&routed.rel).await?
        else {
            return Err(Error::NotFound(format!("{} has no current version to rotate", spec.path)));
        };
        let mut new_lease = String::new();
        let new = if !spec.engine.is_empty() {
            let (v, lease) = self.engine_value(host, &spec, current).await?;
            new_lease = lease;
            v
        } else {
            match current {
                SecretValue::Fields(mut m) => {
                    if !m.contains_key(&field) {
                        return Err(Error::InvalidArgument(format!(
                            "{} has no field {field:?} to rotate; name the field with --field",
                            spec.path
                        )));
                    }
                    m.insert(field.clone(), generate(length));
                    SecretValue::Fields(m)
                }
                SecretValue::Text(_) => SecretValue::Text(generate(length)),
                SecretValue::Binary(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "{} holds bytes; only fields or text rotate",
                        spec.path
                    )));
                }
            }
        };
        let old_lease = match self.barrier.get(&format!("{HELD_LEASES}{}", spec.path)).await? {
            Some(raw) => String::from_utf8_lossy(&raw).into_owned(),
            None => String::new(),
        };
        let mut copies = vec![CopyState {
            path: spec.path.clone(),
            rule_id: String::new(),
            how: Staging::Unstaged,
            old_id: String::new(),
            staged_id: String::new(),
            staged: false,
            promoted: false,
            retired: false,
        }];
        for rule in
            self.rules(host).await?.iter().filter(|r| r.covers(&spec.path) && self.rule_routes_hold(host, r).is_ok())
        {
            for t in &rule.targets {
                let Some(tp) = rule.target_path(t, &spec.path) else { continue };
                // Only replicas the rule owns rotate with the source: one it
                // wrote (a record, not marked foreign), or any under a rule
                // that takes over. Someone else's secret at the target stays
                // theirs; a target not written yet gets the new value when
                // the rule next replicates.
                let owned = match self.record(&state_key(&rule.id, &tp)).await? {
                    Some(r) => !r.foreign || rule.take_over,
                    None => false,
                };
                if owned {
                    copies.push(CopyState { path: tp, rule_id: rule.id.clone(), ..copies[0].clone() });
                }
            }
        }
        let rot = Rotation {
            id: format!("{:032x}", rand::rngs::OsRng.r#gen::<u128>()),
            path: spec.path.clone(),
            field,
            state: RotationState::Staging,
            copies,
            grace_secs: spec.grace_secs,
            old_version: version,
            new_version: 0,
            new_mark: String::new(),
            started: Timestamp::now(),
            promoted: None,
            finished: None,
            error: String::new(),
            engine: spec.engine.clone(),
            new_lease,
            old_lease,
        };
        let mut batch = WriteBatch::new();
        batch
            .expect(key.clone(), &record_stamp)
            .put(key, encode_json(&rot))
            .put(format!("{VALUES}{}", spec.path), new.encode());
        if let Err(e) = self.barrier.commit(batch).await {
            // Revoked only once the record is known not to be there: a
            // commit whose answer was lost (the database restarting) may
            // have landed, and the worker would promote a revoked value.
            let landed = match e {
                keybridge_barrier::Error::Conflict => Some(false),
                _ => self.landed(&spec.path, &rot.id).await,
            };
            match landed {
                Some(true) => {
                    self.count_rotation(0);
                    self.wake();
                    return Ok(rot);
                }
                // Nothing will ever use the credential just issued.
                Some(false) => self.end_rotation_lease(host, &rot.new_lease, &rot.id).await,
                None => tracing::warn!(
                    path = %spec.path,
                    "rotation: cannot tell whether the rotation was recorded; its credential's lease is kept"
                ),
            }
            return Err(match e {
                keybridge_barrier::Error::Conflict => Error::FailedPrecondition(format!(
                    "a rotation of {} was started elsewhere at the same time; wait for it",
                    spec.path
                )),
                e => e.into(),
            });
        }
        self.count_rotation(0);
        self.wake();
        Ok(rot)
    }

    /// Asks the engine at `spec.engine` for a new credential and puts its
    /// fields into the secret's value; returns the value and the id of the
    /// credential's lease (pinned: it lasts until a later rotation retires
    /// it).
    async fn engine_value(
        &self,
        host: &dyn Host,
        spec: &RotateSpec,
        current: SecretValue,
    ) -> Result<(SecretValue, String)> {
        let issued = host.issue(&spec.engine).await?;
        let (fields, lease) = (issued.fields, issued.lease);
        let built = match current {
            SecretValue::Fields(mut m) => {
                if fields.is_empty() {
                    Err(Error::FailedPrecondition(format!("the engine at {} returned no fields", spec.engine)))
                } else {
                    m.extend(fields);
                    Ok(SecretValue::Fields(m))
                }
            }
            SecretValue::Text(_) => match <[_; 1]>::try_from(fields) {
                Ok([(_, v)]) => Ok(SecretValue::Text(v)),
                Err(fields) => Err(Error::FailedPrecondition(format!(
                    "{} is a text secret, but the engine at {} returned {} fields; a text secret takes exactly one",
                    spec.path,
                    spec.engine,
                    fields.len()
                ))),
            },
            SecretValue::Binary(_) => {
                Err(Error::InvalidArgument(format!("{} holds bytes; only fields or text rotate", spec.path)))
            }
        };
        match built {
            Ok(v) => Ok((v, lease)),
            Err(e) => {
                self.end_rotation_lease(host, &lease, "refused").await;
                Err(e)
            }
        }
    }

    /// Revokes a rotation's lease (retried by the lease manager if the
    /// engine fails now).
    async fn end_rotation_lease(&self, host: &dyn Host, lease: &str, why: &str) {
        if lease.is_empty() {
            return;
        }
        if let Err(e) = host.revoke_lease(lease, why).await {
            tracing::warn!(lease_id = %lease, error = %e, "rotation: revoking a credential failed; the lease manager retries");
        }
    }

    /// The rotation of `path`, running or last finished.
    /// Whether the rotation `id` of `path` is recorded, asked a few times
    /// over a few seconds; `None` if the store does not answer.
    async fn landed(&self, path: &str, id: &str) -> Option<bool> {
        for attempt in 0..5u64 {
            match self.rotation(path).await {
                Ok(r) => return Some(r.is_some_and(|r| r.id == id)),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await,
            }
        }
        None
    }

    pub async fn rotation(&self, path: &str) -> Result<Option<Rotation>> {
        let key = format!("{ROTATIONS}{path}");
        match self.barrier.get(&key).await? {
            None => Ok(None),
            Some(raw) => {
                serde_json::from_slice(&raw).map(Some).map_err(|e| Error::Corrupt { key, reason: e.to_string() })
            }
        }
    }

    async fn save_rotation(&self, r: &Rotation) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(format!("{ROTATIONS}{}", r.path), encode_json(r));
        if !r.state.active() {
            batch.delete(format!("{VALUES}{}", r.path));
        }
        self.barrier.commit(batch).await.map_err(Error::from)
    }

    /// Advances every active rotation as far as it can go now.
    pub(crate) async fn rotations_pass(&self, host: &dyn Host) -> Result<Option<Duration>> {
        self.scheduled_pass(host).await?;
        let mut next = None;
        for key in self.barrier.list(ROTATIONS, None, 10_000).await? {
            let path = key[ROTATIONS.len()..].to_string();
            let Some(mut r) = self.rotation(&path).await? else { continue };
            if !r.state.active() {
                continue;
            }
            if let Some(wait) = self.advance(host, &mut r).await? {
                next = Some(next.map_or(wait, |n: Duration| n.min(wait)));
            }
        }
        Ok(next)
    }

    /// Runs the state machine; `Some(wait)` when it must come back later.
    async fn advance(&self, host: &dyn Host, r: &mut Rotation) -> Result<Option<Duration>> {
        let raw = self
            .barrier
            .get(&format!("{VALUES}{}", r.path))
            .await?
            .ok_or_else(|| Error::Corrupt { key: format!("{VALUES}{}", r.path), reason: "missing".into() })?;
        let value = SecretValue::decode(&raw)
            .map_err(|e| Error::Corrupt { key: format!("{VALUES}{}", r.path), reason: e.to_string() })?;
        if r.state == RotationState::Staging {
            for i in 0..r.copies.len() {
                if r.copies[i].staged {
                    continue;
                }
                match self.stage_copy(host, &r.id, &r.copies[i], &value).await {
                    Ok(s) => {
                        let c = &mut r.copies[i];
                        (c.how, c.old_id, c.staged_id, c.staged) = (s.how, s.old_id, s.staged_id, true);
                        self.save_rotation(r).await?;
                    }
                    Err(e) => {
                        let why = format!("staging {} failed: {e}; every copy was rolled back", r.copies[i].path);
                        return self.abandon(host, r, why).await;
                    }
                }
            }
            if let Some(v) = &self.verifier
                && let Err(reason) = v.verify(&r.path, &value).await
            {
                let why = format!("the verification refused the new value ({reason}); every copy was rolled back");
                return self.abandon(host, r, why).await;
            }
            r.state = RotationState::Promoting;
            self.save_rotation(r).await?;
            fault("staged");
        }
        if r.state == RotationState::Promoting {
            let fp_key = self.fingerprint_key().await?;
            for i in 0..r.copies.len() {
                if r.copies[i].promoted {
                    continue;
                }
                match self.promote_copy(host, r, i, &value, &fp_key).await {
                    Ok(()) => {
                        r.copies[i].promoted = true;
                        r.error.clear();
                        self.save_rotation(r).await?;
                        if i == 0 {
                            fault("promoted-source");
                        }
                    }
                    Err(e) => {
                        // Past the point of no return: retried until done.
                        r.error = format!("promoting {} failed (will retry): {e}", r.copies[i].path);
                        self.save_rotation(r).await?;
                        return Ok(Some(Duration::from_secs(1)));
                    }
                }
            }
            r.state = RotationState::Retiring;
            r.promoted = Some(Timestamp::now());
            self.save_rotation(r).await?;
            fault("promoted");
        }
        if r.state == RotationState::Retiring {
            let since = Timestamp::now().secs - r.promoted.map_or(0, |p| p.secs);
            let left = i64::try_from(r.grace_secs).unwrap_or(i64::MAX).saturating_sub(since);
            if left > 0 {
                return Ok(Some(Duration::from_secs(left as u64)));
            }
            for i in 0..r.copies.len() {
                if r.copies[i].retired {
                    continue;
                }
                match self.retire_copy(host, &r.copies[i]).await {
                    Ok(()) => {
                        r.copies[i].retired = true;
                        self.save_rotation(r).await?;
                    }
                    Err(e) => {
                        r.error = format!("retiring the old version of {} failed (will retry): {e}", r.copies[i].path);
                        self.save_rotation(r).await?;
                        return Ok(Some(Duration::from_secs(1)));
                    }
                }
            }
            // Every copy holds the new credential and the grace period is
            // over: the old credential goes, the new one is the secret's.
            self.end_rotation_lease(host, &r.old_lease, &r.id).await;
            let mut batch = WriteBatch::new();
            let held = format!("{HELD_LEASES}{}", r.path);
            if r.new_lease.is_empty() {
                batch.delete(held);
            } else {
                batch.put(held, Zeroizing::new(r.new_lease.clone().into_bytes()));
            }
            self.barrier.commit(batch).await?;
            r.state = RotationState::Done;
            r.error.clear();
            r.finished = Some(Timestamp::now());
            self.save_rotation(r).await?;
            self.count_rotation(1);
            fault("retired");
        }
        Ok(None)
    }

    async fn stage_copy(&self, host: &dyn Host, rot_id: &str, c: &CopyState, value: &SecretValue) -> Result<Staged> {
        let routed = host.route(&c.path).await?;
        let _guard = if c.rule_id.is_empty() { None } else { Some(host.path_lock(&c.path).await) };
        routed.store.stage(&routed.rel, value, rot_id, &c.path).await
    }

    async fn promote_copy(
        &self,
        host: &dyn Host,
        r: &mut Rotation,
        i: usize,
        value: &SecretValue,
        fp_key: &[u8],
    ) -> Result<()> {
        let c = r.copies[i].clone();
        let routed = host.route(&c.path).await?;
        let _guard = host.path_lock(&c.path).await;
        // Idempotent: a copy that already holds the new value has moved.
        let fp = fingerprint(fp_key, value);
        let holds = |now: &SecretValue| fingerprint(fp_key, now) == fp;
        let (id, marker) = routed.store.promote(&routed.rel, c.how, &c.staged_id, value, &holds).await?;
        self.publish(&c.path, "rotated", id.parse().unwrap_or(0), &id);
        if i == 0 {
            r.new_version = id.parse().unwrap_or(0);
            r.new_mark = id.clone();
        } else {
            // The reconciler's record: this replica holds what it would write.
            let key = state_key(&c.rule_id, &c.path);
            let rec = Record {
                source: r.path.clone(),
                fingerprint: fp,
                version_id: id,
                marker,
                source_version: r.new_version,
                source_mark: r.new_mark.clone(),
                ..Default::default()
            };
            self.save_record(&key, &rec).await?;
        }
        Ok(())
    }

    async fn retire_copy(&self, host: &dyn Host, c: &CopyState) -> Result<()> {
        if c.how == Staging::Held || c.old_id.is_empty() {
            return Ok(());
        }
        let routed = host.route(&c.path).await?;
        routed.store.retire(&routed.rel, &c.old_id).await
    }

    /// Ends a rotation before promotion: unstages every copy, ends the new
    /// credential's lease, and records why.
    async fn abandon(&self, host: &dyn Host, r: &mut Rotation, why: String) -> Result<Option<Duration>> {
        r.error = why;
        self.roll_back(host, r).await;
        self.end_rotation_lease(host, &r.new_lease, &r.id).await;
        r.state = RotationState::RolledBack;
        r.finished = Some(Timestamp::now());
        self.save_rotation(r).await?;
        self.count_rotation(2);
        Ok(None)
    }

    /// Undoes staging everywhere it happened (best effort: what cannot be
    /// undone is named in the rotation's error).
    async fn roll_back(&self, host: &dyn Host, r: &mut Rotation) {
        if host.unsealed().is_err() {
            return;
        }
        for c in r.copies.iter_mut().filter(|c| c.staged) {
            let undone = async {
                let routed = host.route(&c.path).await?;
                routed.store.unstage(&routed.rel, c.how, &c.staged_id).await
            }
            .await;
            match undone {
                Ok(()) => c.staged = false,
                Err(e) => r.error.push_str(&format!("; could not unstage {}: {e}", c.path)),
            }
        }
    }
}
