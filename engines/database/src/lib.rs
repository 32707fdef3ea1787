//! The built-in `database` secrets engine: dynamic PostgreSQL credentials
//! under leases, with Vault's paths.
//!
//! - `config/<name>`: a connection (`plugin_name = "postgresql"`, a
//!   `connection_url` with `{{username}}` and `{{password}}`, the admin's
//!   `username` and write-only `password`, `allowed_roles`,
//!   `username_template` (Vault's, see [`username`]), `password_policy`
//!   (a policy at `sys/policies/password/<name>` new passwords come from,
//!   see [`password`])). Verified by
//!   connecting before it is saved, unless `verify_connection = false`.
//! - `roles/<name>`: `db_name`, `creation_statements` (run in one
//!   transaction with `{{name}}`, `{{password}}` and `{{expiration}}`),
//!   `revocation_statements`, `renew_statements`, `rollback_statements`,
//!   `default_ttl`, `max_ttl`.
//! - `creds/<role>` (read): a new user and password, under a lease whose
//!   renewal moves `VALID UNTIL` (never past `max_ttl`) and whose
//!   revocation terminates the user's sessions, drops what it
//!   owns or was granted in every database, drops it, and checks it is gone.
//!
//! - `rotate-root/<name>`: a new password for the connection's admin user.
//!   A write-ahead record with the new password is stored before
//!   `ALTER ROLE` runs; after a crash at any step, the next use of the
//!   connection finds which password logs in and finishes (or drops the
//!   record), so the stored password always works. A superuser is rotated
//!   only with `allow_superuser_rotation = true`.
//!
//! - `static-roles/<name>`: an existing user (`username`) whose password
//!   Keybridge sets at once and again every `rotation_period` or on a
//!   `rotation_schedule` (five-field cron; the leading node's periodic pass), each rotation with a write-ahead record as
//!   above; `static-creds/<name>` reads it, `rotate-role/<name>` rotates it
//!   now. As a rotating engine, `creds/<role>` and `rotate-role/<name>`
//!   also feed the reconciler: `keybridge rotate secret/app/db --engine
//!   database/creds/app-readonly` puts a new credential in a secret that
//!   sync rules carry to the clouds.
//!
//! The engine reaches the database only with the connection's own
//! credentials; who may use which role is the core's policy check on the
//! request's path, and `allowed_roles` on the connection.

mod conn;
mod password;
mod pg;
mod username;

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_core::plugins::{
    BuiltinEngines, CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, EngineStorage, Field,
    FieldKind, LeaseInfo, LeaseRequest, LeaseTerms, Operation, Params, PasswordPolicies, PathInfo, PluginEngine,
};
use serde::{Deserialize, Serialize};

use crate::conn::{Connection, Pools};

/// The mount type.
pub const KIND: &str = "database";

/// The database engines this build has, as the core's [`BuiltinEngines`].
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// The server's `allowed_endpoint_hosts`: when set, the only hosts a
    /// connection may point at.
    pub allowed_hosts: Option<Vec<String>>,
}

#[async_trait::async_trait]
impl BuiltinEngines for Builtins {
    fn kinds(&self) -> Vec<&'static str> {
        vec![KIND]
    }

    fn validate(&self, _kind: &str, config: &BTreeMap<String, String>) -> Result<(), String> {
        match config.keys().next() {
            Some(k) => Err(format!(
                "a database mount takes no config key {k:?} (only default_lease_ttl and max_lease_ttl); connections are written to <mount>/config/<name>"
            )),
            None => Ok(()),
        }
    }

    async fn open(
        &self,
        _kind: &str,
        _config: &BTreeMap<String, String>,
        storage: Arc<dyn EngineStorage>,
        passwords: Arc<dyn PasswordPolicies>,
    ) -> Result<Arc<dyn PluginEngine>, EngineError> {
        Ok(Arc::new(DatabaseEngine {
            storage,
            passwords,
            info: info(),
            pools: Pools::default(),
            rotating: tokio::sync::Mutex::new(()),
            allowed_hosts: self.allowed_hosts.clone(),
            failing: std::sync::Mutex::new(BTreeMap::new()),
        }))
    }
}

/// A role: how its users are created, renewed and revoked.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    db_name: String,
    creation_statements: String,
    revocation_statements: String,
    renew_statements: String,
    rollback_statements: String,
    default_ttl: u64,
    max_ttl: u64,
}

pub struct DatabaseEngine {
    storage: Arc<dyn EngineStorage>,
    /// The password policies a connection's `password_policy` names.
    passwords: Arc<dyn PasswordPolicies>,
    info: EngineInfo,
    pools: Pools,
    /// One root rotation at a time on this node.
    rotating: tokio::sync::Mutex<()>,
    allowed_hosts: Option<Vec<String>>,
    /// Static roles whose scheduled rotation failed on this node: how many
    /// times in a row, and when the periodic pass tries again.
    failing: std::sync::Mutex<BTreeMap<String, Backoff>>,
}

/// A failing scheduled rotation's retry: 5 s, doubling, at most 5 minutes.
#[derive(Clone, Copy)]
struct Backoff {
    failures: u32,
    retry_at: u64,
}

impl Backoff {
    const FIRST_SECS: u64 = 5;
    const MAX_SECS: u64 = 300;

    fn after(prev: Option<Backoff>, now: u64) -> Backoff {
        let failures = prev.map_or(0, |b| b.failures).saturating_add(1);
        let delay = Self::FIRST_SECS.saturating_mul(1u64 << (failures - 1).min(16)).min(Self::MAX_SECS);
        Backoff { failures, retry_at: now.saturating_add(delay) }
    }
}

/// A root rotation's write-ahead record: the new password, stored before
/// the database is told.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationWal {
    new_password: String,
    /// Seconds since the epoch: a record younger than [`WAL_FRESH_SECS`]
    /// may belong to a rotation still running on another node.
    started: u64,
}

impl Drop for RotationWal {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.new_password);
    }
}

/// A static role: an existing user and its current password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticRole {
    db_name: String,
    username: String,
    /// Seconds between rotations; 0 with a `rotation_schedule`.
    rotation_period: u64,
    /// Five-field cron (UTC), instead of a period.
    #[serde(default)]
    rotation_schedule: String,
    rotation_statements: String,
    password: String,
    /// Seconds since the epoch.
    last_rotation: u64,
}

impl Drop for StaticRole {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl StaticRole {
    /// When the next rotation is due (seconds since the epoch).
    fn next_rotation(&self) -> u64 {
        if self.rotation_schedule.is_empty() {
            return self.last_rotation.saturating_add(self.rotation_period);
        }
        let Ok(cron) = self.rotation_schedule.parse::<croner::Cron>() else { return u64::MAX };
        let last = chrono::DateTime::from_timestamp(i64::try_from(self.last_rotation).unwrap_or(i64::MAX), 0)
            .unwrap_or_default();
        cron.find_next_occurrence(&last, false).ok().and_then(|t| u64::try_from(t.timestamp()).ok()).unwrap_or(u64::MAX)
    }
}

/// How long a rotation may take before its record counts as abandoned.
const WAL_FRESH_SECS: u64 = 60;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Fault injection for the crash tests (feature `fault-injection`): the
/// process dies right after the named step of a root rotation.
#[cfg(feature = "fault-injection")]
fn fault(step: &str) {
    if std::env::var("KEYBRIDGE_FAULT_ROOT_ROTATION").is_ok_and(|v| v == step) {
        eprintln!("keybridge: KEYBRIDGE_FAULT_ROOT_ROTATION={step}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault(_step: &str) {}

fn field(name: &str, kind: FieldKind, description: &str) -> Field {
    Field { name: name.into(), kind, description: description.into(), required: false, default: None }
}

fn default(mut f: Field, v: &str) -> Field {
    f.default = Some(v.into());
    f
}

fn path(pattern: &str, synopsis: &str, operations: &[Operation], fields: Vec<Field>, existence: bool) -> PathInfo {
    PathInfo {
        pattern: pattern.into(),
        synopsis: synopsis.into(),
        description: synopsis.into(),
        operations: operations.to_vec(),
        fields,
        existence_check: existence,
    }
}

fn info() -> EngineInfo {
    use Operation::*;
    let statements = |name: &str, what: &str| field(name, FieldKind::String, what);
    EngineInfo {
        name: KIND.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "Dynamic PostgreSQL credentials under leases".into(),
        paths: vec![
            path(
                "config/{name}",
                "A database connection: where it is, and the admin user roles create users with",
                &[Read, Create, Update, Delete],
                vec![
                    field("plugin_name", FieldKind::String, "postgresql (postgresql-database-plugin is read the same)"),
                    field(
                        "connection_url",
                        FieldKind::String,
                        "postgresql://{{username}}:{{password}}@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem",
                    ),
                    field("username", FieldKind::String, "the admin user (CREATEROLE, or a superuser)"),
                    field("password", FieldKind::String, "the admin user's password (write-only)"),
                    field("allowed_roles", FieldKind::CommaList, "roles that may use this connection (* for any)"),
                    default(
                        field("verify_connection", FieldKind::Boolean, "connect with the settings before saving them"),
                        "true",
                    ),
                    statements(
                        "root_rotation_statements",
                        "SQL rotate-root runs ({{username}}, {{password}}); default ALTER ROLE ... WITH PASSWORD",
                    ),
                    statements("rotation_statements", "the origin document's name for root_rotation_statements"),
                    field(
                        "username_template",
                        FieldKind::String,
                        "Vault's Go template for new users' names (.DisplayName, .RoleName; random, truncate, printf, ...); default v-<caller>-<role>-<random>-<unix time>",
                    ),
                    field(
                        "password_policy",
                        FieldKind::String,
                        "a password policy (sys/policies/password/<name>) new passwords come from; empty: 28 letters and digits",
                    ),
                    field(
                        "max_open_connections",
                        FieldKind::Int,
                        "connections the engine keeps open to it (default 4)",
                    ),
                    field(
                        "allow_superuser_rotation",
                        FieldKind::Boolean,
                        "let rotate-root rotate a superuser's password (default false)",
                    ),
                ],
                true,
            ),
            path("config", "Lists connections", &[List], vec![], false),
            path(
                "rotate-root/{name}",
                "Rotates the connection's admin password; the new one is known only to Keybridge",
                &[Update],
                vec![],
                false,
            ),
            path(
                "roles/{name}",
                "A dynamic role: the statements that create, renew and revoke its users",
                &[Read, Create, Update, Delete],
                vec![
                    field("db_name", FieldKind::String, "the connection (config/<db_name>)"),
                    statements(
                        "creation_statements",
                        "SQL run in one transaction; {{name}}, {{password}} and {{expiration}} are filled in",
                    ),
                    statements(
                        "revocation_statements",
                        "SQL run before the engine's own cleanup (sessions, owned objects, grants, the role)",
                    ),
                    statements("renew_statements", "SQL run on renewal (default: ALTER ROLE ... VALID UNTIL)"),
                    statements("rollback_statements", "SQL run when creation fails"),
                    default(field("default_ttl", FieldKind::Duration, "a credential's lease"), "1h"),
                    default(field("max_ttl", FieldKind::Duration, "the longest renewals may extend it"), "24h"),
                ],
                true,
            ),
            path("roles", "Lists roles", &[List], vec![], false),
            path("creds/{name}", "A new user and password of the role, under a lease", &[Read], vec![], false),
            path(
                "static-roles/{name}",
                "A static role: an existing user whose password Keybridge rotates",
                &[Read, Create, Update, Delete],
                vec![
                    field("db_name", FieldKind::String, "the connection (config/<db_name>)"),
                    field("username", FieldKind::String, "the existing database user"),
                    field("rotation_period", FieldKind::Duration, "how often the password is rotated"),
                    field(
                        "rotation_schedule",
                        FieldKind::String,
                        "when to rotate instead of a period: five-field cron, UTC (\"0 3 * * SUN\")",
                    ),
                    statements(
                        "rotation_statements",
                        "SQL setting the password ({{name}}, {{password}}); default ALTER ROLE ... WITH PASSWORD",
                    ),
                ],
                true,
            ),
            path("static-roles", "Lists static roles", &[List], vec![], false),
            path("static-creds/{name}", "The static role's current password", &[Read], vec![], false),
            path("rotate-role/{name}", "Rotates the static role's password now", &[Update], vec![], false),
        ],
        config_keys: Vec::new(),
        rotates: true,
    }
}

/// `e` with `secret` taken out of its message (a statement that quotes a
/// password wrongly makes PostgreSQL quote it back).
fn redacted(e: EngineError, secret: &str) -> EngineError {
    match e {
        EngineError::Unavailable(m) => EngineError::Unavailable(m.replace(secret, "<redacted>")),
        EngineError::InvalidInput(m) => EngineError::InvalidInput(m.replace(secret, "<redacted>")),
        other => other,
    }
}

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(m.into())
}

fn store_err(e: String) -> EngineError {
    EngineError::Unavailable(format!("engine storage: {e}"))
}

impl DatabaseEngine {
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, EngineError> {
        match self.storage.get(key).await.map_err(store_err)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| EngineError::Internal(format!("{key} is unreadable: {e}"))),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, v: &T) -> Result<(), EngineError> {
        let raw = zeroize::Zeroizing::new(serde_json::to_vec(v).map_err(|e| EngineError::Internal(e.to_string()))?);
        self.storage.put(key, &raw).await.map_err(store_err)
    }

    /// A connection's record, after finishing a root rotation a crash
    /// interrupted.
    async fn connection(&self, name: &str) -> Result<Connection, EngineError> {
        let c: Connection = self
            .get_json(&format!("config/{name}"))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no connection {name:?}: write config/{name} first")))?;
        self.recover(name, c).await
    }

    /// With a root rotation's record left: the new password logs in (the
    /// database took it), so it is stored; or the old one does (it never
    /// reached the database), so the record goes once it is abandoned.
    async fn recover(&self, name: &str, c: Connection) -> Result<Connection, EngineError> {
        let wal_key = format!("wal/rotate-root/{name}");
        let Some(wal) = self.get_json::<RotationWal>(&wal_key).await? else { return Ok(c) };
        let mut rotated = c.clone();
        rotated.password = wal.new_password.clone();
        if conn::logs_in(&rotated).await? {
            self.put_json(&format!("config/{name}"), &rotated).await?;
            self.storage.delete(&wal_key).await.map_err(store_err)?;
            tracing::info!(connection = name, "database: finished an interrupted root rotation");
            return Ok(rotated);
        }
        if conn::logs_in(&c).await? {
            if now_secs().saturating_sub(wal.started) >= WAL_FRESH_SECS {
                self.storage.delete(&wal_key).await.map_err(store_err)?;
                tracing::info!(connection = name, "database: dropped an abandoned root rotation");
            }
            return Ok(c);
        }
        Err(EngineError::Unavailable(format!(
            "connection {name}: a root rotation was interrupted, and neither the old nor the new password logs in now"
        )))
    }

    /// A static role's record, after finishing a rotation a crash
    /// interrupted: the record's password is set again as the admin (who
    /// can always set it) and stored, under the connection's rotation lock.
    async fn static_role(&self, name: &str) -> Result<StaticRole, EngineError> {
        let r: StaticRole = self
            .get_json(&format!("static-roles/{name}"))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no static role {name:?}")))?;
        let wal_key = format!("wal/static/{name}");
        if self.storage.get(&wal_key).await.map_err(store_err)?.is_none() {
            return Ok(r);
        }
        let c = self.connection(&r.db_name).await?;
        let pool = self.pools.get(&r.db_name, &c, None)?;
        let client = pool.get().await.map_err(|e| conn::pool_error("connecting to finish a rotation", e))?;
        let key = pg::lock(&client, &r.db_name).await?;
        let done = self.roll_forward(&client, name).await;
        pg::unlock(&client, key).await;
        done
    }

    /// Under the rotation lock: applies a static role's write-ahead
    /// password, if one is left, and stores it.
    async fn roll_forward(&self, client: &tokio_postgres::Client, name: &str) -> Result<StaticRole, EngineError> {
        let r: StaticRole = self
            .get_json(&format!("static-roles/{name}"))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no static role {name:?}")))?;
        let wal_key = format!("wal/static/{name}");
        let Some(wal) = self.get_json::<RotationWal>(&wal_key).await? else { return Ok(r) };
        let sql = pg::root_rotation_sql(&r.rotation_statements, &r.username, &wal.new_password);
        client.batch_execute(&sql).await.map_err(|e| {
            redacted(conn::db_error(&format!("setting the password of {}", r.username), &e), &wal.new_password)
        })?;
        let mut done = r.clone();
        done.password = wal.new_password.clone();
        done.last_rotation = now_secs();
        self.put_json(&format!("static-roles/{name}"), &done).await?;
        self.storage.delete(&wal_key).await.map_err(store_err)?;
        Ok(done)
    }

    /// Sets a new password for a static role's user: the write-ahead
    /// record first, then the database, then the role's record; under the
    /// connection's rotation lock (every node).
    async fn rotate_static(&self, name: &str) -> Result<StaticRole, EngineError> {
        let _one = self.rotating.lock().await;
        let r: StaticRole = self
            .get_json(&format!("static-roles/{name}"))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no static role {name:?}")))?;
        let c = self.connection(&r.db_name).await?;
        let pool = self.pools.get(&r.db_name, &c, None)?;
        let client = pool.get().await.map_err(|e| conn::pool_error("connecting to rotate the password", e))?;
        let key = pg::lock(&client, &r.db_name).await?;
        let done = async {
            // A rotation a crash left is finished first.
            self.roll_forward(&client, name).await?;
            let new = password::new_password(self.passwords.as_ref(), &r.db_name, &c).await?;
            self.put_json(
                &format!("wal/static/{name}"),
                &RotationWal { new_password: new.to_string(), started: now_secs() },
            )
            .await?;
            self.roll_forward(&client, name).await
        }
        .await;
        pg::unlock(&client, key).await;
        done
    }

    async fn write_static_role(&self, name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        let old: Option<StaticRole> = self.get_json(&format!("static-roles/{name}")).await?;
        let text = |k: &str, old: Option<&String>| p.get(k).map(str::to_string).or(old.cloned()).unwrap_or_default();
        let db_name = text("db_name", old.as_ref().map(|o| &o.db_name));
        let username = text("username", old.as_ref().map(|o| &o.username));
        if let Some(o) = &old
            && (o.username != username || o.db_name != db_name)
        {
            return Err(bad("a static role's username and db_name cannot change; delete the role and write it again"));
        }
        if username.len() > 63
            || !username.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
        {
            return Err(bad("username must be an existing user's name: at most 63 of a-z, A-Z, 0-9, _, - and ."));
        }
        let (rotation_period, rotation_schedule) = match (p.get("rotation_period"), p.get("rotation_schedule")) {
            (Some(_), Some(_)) => return Err(bad("give rotation_period or rotation_schedule, not both")),
            (Some(v), None) => {
                (v.parse::<u64>().map_err(|_| bad("rotation_period must be a duration"))?, String::new())
            }
            (None, Some(c)) => {
                let c = c.trim().to_string();
                if c.split_whitespace().count() != 5 {
                    return Err(bad(format!(
                        "rotation_schedule {c:?}: give five cron fields (minute hour day-of-month month day-of-week), e.g. \"0 3 * * SUN\""
                    )));
                }
                c.parse::<croner::Cron>().map_err(|e| bad(format!("rotation_schedule {c:?}: {e}")))?;
                (0, c)
            }
            (None, None) => {
                old.as_ref().map_or((0, String::new()), |o| (o.rotation_period, o.rotation_schedule.clone()))
            }
        };
        if db_name.is_empty() || username.is_empty() || (rotation_schedule.is_empty() && rotation_period < 5) {
            return Err(bad(
                "give db_name, username (an existing user) and rotation_period (at least 5s) or rotation_schedule",
            ));
        }
        let c = self.connection(&db_name).await?;
        if !c.allows(name) {
            return Err(EngineError::Denied(format!(
                "connection {db_name:?} does not list static role {name:?} in allowed_roles"
            )));
        }
        if old.is_none() {
            // Not the connection's own admin, and no superuser unless the
            // connection allows rotating one: a static role's writer would
            // otherwise take over (or lock out) those accounts.
            let pool = self.pools.get(&db_name, &c, None)?;
            let client = pool.get().await.map_err(|e| conn::pool_error("looking the user up", e))?;
            let row = client
                .query_opt(
                    "SELECT rolsuper, oid = (SELECT oid FROM pg_roles WHERE rolname = current_user) FROM pg_roles WHERE rolname = $1",
                    &[&username],
                )
                .await
                .map_err(|e| conn::db_error("looking the user up", &e))?
                .ok_or_else(|| bad(format!("no user {username:?} in the database: a static role takes an existing user")))?;
            let (superuser, is_admin): (bool, bool) = (row.get(0), row.get(1));
            if is_admin {
                return Err(EngineError::Denied(format!(
                    "{username} is connection {db_name}'s own admin: rotate it with rotate-root/{db_name}"
                )));
            }
            if superuser && !c.allow_superuser_rotation {
                return Err(EngineError::Denied(format!(
                    "{username} is a superuser: a static role takes it only with allow_superuser_rotation=true on config/{db_name}"
                )));
            }
        }
        let fresh = old.is_none();
        let role = StaticRole {
            db_name,
            username,
            rotation_period,
            rotation_schedule,
            rotation_statements: text("rotation_statements", old.as_ref().map(|o| &o.rotation_statements)),
            password: old.as_ref().map(|o| o.password.clone()).unwrap_or_default(),
            last_rotation: old.as_ref().map_or(0, |o| o.last_rotation),
        };
        self.put_json(&format!("static-roles/{name}"), &role).await?;
        // A new static role's password is Keybridge's from the start.
        if fresh && let Err(e) = self.rotate_static(name).await {
            self.storage.delete(&format!("static-roles/{name}")).await.map_err(store_err)?;
            self.storage.delete(&format!("wal/static/{name}")).await.map_err(store_err)?;
            return Err(e);
        }
        Ok(EngineResponse::default())
    }

    fn static_creds(r: &StaticRole) -> EngineResponse {
        let next = r.next_rotation();
        EngineResponse {
            data: Params(vec![
                ("username".into(), r.username.clone()),
                ("password".into(), r.password.clone()),
                (
                    "last_vault_rotation".into(),
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.last_rotation),
                    )
                    .to_string(),
                ),
                ("rotation_period".into(), r.rotation_period.to_string()),
                ("rotation_schedule".into(), r.rotation_schedule.clone()),
                ("ttl".into(), next.saturating_sub(now_secs()).to_string()),
            ]),
            ..Default::default()
        }
    }

    async fn rotate_root(&self, name: &str) -> Result<EngineResponse, EngineError> {
        let _one = self.rotating.lock().await;
        let c = self.connection(name).await?;
        let pool = self.pools.get(name, &c, None)?;
        let client = pool.get().await.map_err(|e| conn::pool_error("connecting to rotate the root password", e))?;
        // One rotation of this connection at a time on every node.
        let key = pg::lock(&client, name).await?;
        let r = async {
            // Read again under the lock: another node may have just rotated.
            let c = self.connection(name).await?;
            let superuser: bool = client
                .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
                .await
                .map_err(|e| conn::db_error("checking the admin user", &e))?
                .get(0);
            if superuser && !c.allow_superuser_rotation {
                return Err(EngineError::Denied(format!(
                    "{} is a superuser: rotating its password would lock out everyone else who uses it; use an admin with CREATEROLE, or set allow_superuser_rotation=true on config/{name}",
                    c.username
                )));
            }
            let wal_key = format!("wal/rotate-root/{name}");
            let new = password::new_password(self.passwords.as_ref(), name, &c).await?;
            self.put_json(&wal_key, &RotationWal { new_password: new.to_string(), started: now_secs() }).await?;
            fault("wal-written");
            let sql = pg::root_rotation_sql(&c.root_rotation_statements, &c.username, &new);
            if let Err(e) = client.batch_execute(&sql).await {
                // Whether the database took it is for the record to tell.
                let _ = self.recover(name, c).await;
                return Err(redacted(conn::db_error("rotating the root password", &e), &new));
            }
            fault("altered");
            let mut rotated = c.clone();
            rotated.password = new.to_string();
            // Statements that did not change this user's password must not
            // make the stored one wrong.
            if !conn::logs_in(&rotated).await? {
                self.storage.delete(&wal_key).await.map_err(store_err)?;
                return Err(EngineError::InvalidInput(format!(
                    "root_rotation_statements of {name} ran, but the new password does not log in as {}: the old one is kept",
                    c.username
                )));
            }
            self.put_json(&format!("config/{name}"), &rotated).await?;
            fault("config-written");
            self.storage.delete(&wal_key).await.map_err(store_err)?;
            Ok(EngineResponse::default())
        }
        .await;
        pg::unlock(&client, key).await;
        r
    }

    async fn role(&self, name: &str) -> Result<Role, EngineError> {
        self.get_json(&format!("roles/{name}")).await?.ok_or_else(|| EngineError::NotFound(format!("no role {name:?}")))
    }

    async fn write_config(&self, name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        let old: Option<Connection> = self.get_json(&format!("config/{name}")).await?;
        let pick = |k: &str, old: Option<&str>| p.get(k).map(str::to_string).or(old.map(str::to_string));
        let plugin_name = pick("plugin_name", old.as_ref().map(|o| o.plugin_name.as_str()))
            .ok_or_else(|| bad("give plugin_name = \"postgresql\""))?;
        if !matches!(plugin_name.as_str(), "postgresql" | "postgresql-database-plugin") {
            return Err(bad(format!("plugin_name {plugin_name:?}: this engine serves postgresql")));
        }
        let connection_url = pick("connection_url", old.as_ref().map(|o| o.connection_url.as_str()))
            .ok_or_else(|| bad("give connection_url"))?;
        let username =
            pick("username", old.as_ref().map(|o| o.username.as_str())).ok_or_else(|| bad("give username"))?;
        conn::check_url(&connection_url)?;
        if let Some(allowed) = &self.allowed_hosts {
            let host = conn::url_host(&connection_url);
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
                return Err(EngineError::Denied(format!(
                    "connection_url host {host:?} is not in the server's allowed_endpoint_hosts"
                )));
            }
        }
        // The stored password goes only where it went before: a new host or
        // user takes the password again.
        let moved = old.as_ref().is_some_and(|o| o.connection_url != connection_url || o.username != username);
        if moved && p.get("password").is_none_or(str::is_empty) {
            return Err(bad("connection_url or username changed: give the password again"));
        }
        let password = pick("password", old.as_ref().map(|o| o.password.as_str())).unwrap_or_default();
        let allowed_roles = match p.get("allowed_roles") {
            Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            None => old.as_ref().map(|o| o.allowed_roles.clone()).unwrap_or_default(),
        };
        let root_rotation_statements = p
            .get("root_rotation_statements")
            .or(p.get("rotation_statements"))
            .map(str::to_string)
            .or(old.as_ref().map(|o| o.root_rotation_statements.clone()))
            .unwrap_or_default();
        let allow_superuser_rotation = match p.get("allow_superuser_rotation") {
            Some(v) => v == "true",
            None => old.as_ref().is_some_and(|o| o.allow_superuser_rotation),
        };
        let username_template = match p.get("username_template") {
            Some(t) => {
                if !t.is_empty() {
                    username::validate(t)?;
                }
                t.to_string()
            }
            None => old.as_ref().map(|o| o.username_template.clone()).unwrap_or_default(),
        };
        // Named here, checked here: it exists, and none of its characters
        // could end the quoted literal a password is filled into.
        let password_policy = match p.get("password_policy") {
            Some(policy) => {
                if !policy.is_empty() {
                    password::check_policy(self.passwords.as_ref(), policy).await?;
                }
                policy.to_string()
            }
            None => old.as_ref().map(|o| o.password_policy.clone()).unwrap_or_default(),
        };
        let max_open_connections = match p.get("max_open_connections") {
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| bad("max_open_connections must be 1 to 64"))?,
            None => old.as_ref().map_or(4, |o| o.max_open_connections),
        };
        let c = Connection {
            plugin_name,
            connection_url,
            username,
            password,
            allowed_roles,
            root_rotation_statements,
            max_open_connections,
            allow_superuser_rotation,
            username_template,
            password_policy,
        };
        // Settings that cannot work are refused here, with or without the
        // check below.
        let probe = conn::pool(&c, None)?;
        if p.get("verify_connection") != Some("false") {
            let client = probe.get().await.map_err(|e| conn::pool_error("verifying the connection", e))?;
            client.simple_query("SELECT 1").await.map_err(|e| conn::db_error("verifying the connection", &e))?;
        }
        self.put_json(&format!("config/{name}"), &c).await?;
        Ok(EngineResponse::default())
    }

    fn read_config(name: &str, c: &Connection) -> EngineResponse {
        let _ = name;
        EngineResponse {
            data: Params(vec![
                ("plugin_name".into(), c.plugin_name.clone()),
                ("connection_url".into(), c.connection_url.clone()),
                ("username".into(), c.username.clone()),
                ("password".into(), if c.password.is_empty() { String::new() } else { "<redacted>".into() }),
                ("allowed_roles".into(), c.allowed_roles.join(",")),
                ("root_rotation_statements".into(), c.root_rotation_statements.clone()),
                ("max_open_connections".into(), c.max_open_connections.to_string()),
                ("allow_superuser_rotation".into(), c.allow_superuser_rotation.to_string()),
                ("username_template".into(), c.username_template.clone()),
                ("password_policy".into(), c.password_policy.clone()),
            ]),
            ..Default::default()
        }
    }

    async fn write_role(&self, name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        let old: Option<Role> = self.get_json(&format!("roles/{name}")).await?;
        let text = |k: &str, old: Option<&String>| p.get(k).map(str::to_string).or(old.cloned()).unwrap_or_default();
        let secs = |k: &str, old: Option<u64>| -> Result<u64, EngineError> {
            match p.get(k) {
                Some(v) => v.parse::<u64>().map_err(|_| bad(format!("{k} must be a duration"))),
                None => Ok(old.unwrap_or(0)),
            }
        };
        let r = Role {
            db_name: text("db_name", old.as_ref().map(|o| &o.db_name)),
            creation_statements: text("creation_statements", old.as_ref().map(|o| &o.creation_statements)),
            revocation_statements: text("revocation_statements", old.as_ref().map(|o| &o.revocation_statements)),
            renew_statements: text("renew_statements", old.as_ref().map(|o| &o.renew_statements)),
            rollback_statements: text("rollback_statements", old.as_ref().map(|o| &o.rollback_statements)),
            default_ttl: secs("default_ttl", old.as_ref().map(|o| o.default_ttl))?,
            max_ttl: secs("max_ttl", old.as_ref().map(|o| o.max_ttl))?,
        };
        if r.db_name.is_empty() {
            return Err(bad("give db_name: the connection (config/<db_name>) the role's users are created on"));
        }
        if r.creation_statements.trim().is_empty() {
            return Err(bad(
                "give creation_statements, e.g. CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            ));
        }
        if !r.creation_statements.contains("{{name}}") && !r.creation_statements.contains("{{username}}") {
            return Err(bad("creation_statements must create the user {{name}}"));
        }
        if r.default_ttl == 0 || r.max_ttl == 0 || r.default_ttl > r.max_ttl {
            return Err(bad("default_ttl and max_ttl must be more than 0, with default_ttl at most max_ttl"));
        }
        self.put_json(&format!("roles/{name}"), &r).await?;
        Ok(EngineResponse::default())
    }

    async fn list(&self, prefix: &str) -> Result<EngineResponse, EngineError> {
        let keys = self.storage.list(prefix).await.map_err(store_err)?;
        let keys = serde_json::to_string(&keys).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(EngineResponse { data: Params(vec![("keys".into(), keys)]), ..Default::default() })
    }

    async fn issue(&self, ctx: &CallContext, role_name: &str) -> Result<EngineResponse, EngineError> {
        let role = self.role(role_name).await?;
        let c = self.connection(&role.db_name).await?;
        if !c.allows(role_name) {
            return Err(EngineError::Denied(format!(
                "connection {:?} does not list role {role_name:?} in allowed_roles",
                role.db_name
            )));
        }
        let pool = self.pools.get(&role.db_name, &c, None)?;
        let (username, default_password) = pg::new_user(role_name, &ctx.caller);
        let password = match c.password_policy.as_str() {
            "" => default_password,
            _ => password::new_password(self.passwords.as_ref(), &role.db_name, &c).await?,
        };
        let username = match c.username_template.as_str() {
            "" => username,
            t => username::generate(&role.db_name, t, &ctx.caller, role_name)?,
        };
        let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(role.default_ttl);
        pg::create(&pool, &role.creation_statements, &role.rollback_statements, &username, &password, expires).await?;
        Ok(EngineResponse {
            data: Params(vec![("username".into(), username.clone()), ("password".into(), password.to_string())]),
            lease: Some(LeaseRequest {
                terms: LeaseTerms { ttl_secs: role.default_ttl, max_ttl_secs: role.max_ttl, renewable: true },
                internal: Params(vec![
                    ("db_name".into(), role.db_name.clone()),
                    ("role".into(), role_name.into()),
                    ("username".into(), username),
                    // Where the user lives: a revocation that finds the
                    // connection moved elsewhere must not count a user it
                    // cannot see there as gone.
                    ("server".into(), conn::url_server(&c.connection_url)),
                ]),
            }),
            warnings: Vec::new(),
        })
    }
}

#[async_trait::async_trait]
impl PluginEngine for DatabaseEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    async fn exists(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError> {
        let name = req.params.get("name").unwrap_or_default();
        let key = match req.pattern.as_str() {
            "config/{name}" => format!("config/{name}"),
            "roles/{name}" => format!("roles/{name}"),
            "static-roles/{name}" => format!("static-roles/{name}"),
            _ => return Ok(true),
        };
        Ok(self.storage.get(&key).await.map_err(store_err)?.is_some())
    }

    async fn handle(&self, ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        let name = req.params.get("name").unwrap_or_default().to_string();
        match (req.pattern.as_str(), req.operation) {
            ("config/{name}", Operation::Create | Operation::Update) => self.write_config(&name, &req.params).await,
            ("config/{name}", Operation::Read) => Ok(Self::read_config(&name, &self.connection(&name).await?)),
            ("config/{name}", Operation::Delete) => {
                self.storage.delete(&format!("config/{name}")).await.map_err(store_err)?;
                self.pools.forget(&name);
                Ok(EngineResponse::default())
            }
            ("config", Operation::List) => self.list("config/").await,
            ("rotate-root/{name}", Operation::Update | Operation::Create) => self.rotate_root(&name).await,
            ("roles/{name}", Operation::Create | Operation::Update) => self.write_role(&name, &req.params).await,
            ("roles/{name}", Operation::Read) => {
                let r = self.role(&name).await?;
                Ok(EngineResponse {
                    data: Params(vec![
                        ("db_name".into(), r.db_name.clone()),
                        ("creation_statements".into(), r.creation_statements.clone()),
                        ("revocation_statements".into(), r.revocation_statements.clone()),
                        ("renew_statements".into(), r.renew_statements.clone()),
                        ("rollback_statements".into(), r.rollback_statements.clone()),
                        ("default_ttl".into(), r.default_ttl.to_string()),
                        ("max_ttl".into(), r.max_ttl.to_string()),
                    ]),
                    ..Default::default()
                })
            }
            ("roles/{name}", Operation::Delete) => {
                self.storage.delete(&format!("roles/{name}")).await.map_err(store_err)?;
                Ok(EngineResponse::default())
            }
            ("roles", Operation::List) => self.list("roles/").await,
            ("creds/{name}", Operation::Read) => self.issue(ctx, &name).await,
            ("static-roles/{name}", Operation::Create | Operation::Update) => {
                self.write_static_role(&name, &req.params).await
            }
            ("static-roles/{name}", Operation::Read) => {
                let r = self.static_role(&name).await?;
                Ok(EngineResponse {
                    data: Params(vec![
                        ("db_name".into(), r.db_name.clone()),
                        ("username".into(), r.username.clone()),
                        ("rotation_period".into(), r.rotation_period.to_string()),
                        ("rotation_schedule".into(), r.rotation_schedule.clone()),
                        ("rotation_statements".into(), r.rotation_statements.clone()),
                    ]),
                    ..Default::default()
                })
            }
            ("static-roles/{name}", Operation::Delete) => {
                self.storage.delete(&format!("static-roles/{name}")).await.map_err(store_err)?;
                self.storage.delete(&format!("wal/static/{name}")).await.map_err(store_err)?;
                Ok(EngineResponse::default())
            }
            ("static-roles", Operation::List) => self.list("static-roles/").await,
            ("static-creds/{name}", Operation::Read) => Ok(Self::static_creds(&self.static_role(&name).await?)),
            ("rotate-role/{name}", Operation::Update | Operation::Create) => {
                self.rotate_static(&name).await?;
                Ok(EngineResponse::default())
            }
            (p, op) => Err(EngineError::Unsupported(format!("{} on {p}", op.name()))),
        }
    }

    async fn renew(&self, _ctx: &CallContext, lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        let get = |k: &str| lease.internal.get(k).unwrap_or_default().to_string();
        let (db_name, role_name, username) = (get("db_name"), get("role"), get("username"));
        let role = self.role(&role_name).await?;
        let c = self.connection(&db_name).await?;
        let pool = self.pools.get(&db_name, &c, None)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let increment = if lease.increment == 0 { role.default_ttl } else { lease.increment };
        let end = lease.issue_time.saturating_add(role.max_ttl).min(now.saturating_add(increment));
        let ttl = end.saturating_sub(now);
        let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(end);
        pg::renew(&pool, &role.renew_statements, &username, expires).await?;
        Ok(LeaseTerms { ttl_secs: ttl, max_ttl_secs: role.max_ttl, renewable: true })
    }

    async fn revoke(&self, _ctx: &CallContext, lease: &LeaseInfo) -> Result<(), EngineError> {
        let get = |k: &str| lease.internal.get(k).unwrap_or_default().to_string();
        let (db_name, role_name, username) = (get("db_name"), get("role"), get("username"));
        let c = self.connection(&db_name).await?;
        let (created_at, now_at) = (get("server"), conn::url_server(&c.connection_url));
        if !created_at.is_empty()
            && created_at != now_at
            && !pg::user_exists(&self.pools, &db_name, &c, &username).await?
        {
            return Err(EngineError::Unavailable(format!(
                "user {username} was created at {created_at}, but connection {db_name} now points at {now_at}, where it does not exist: point the connection back to revoke it (retried)"
            )));
        }
        // A role deleted since: its own revocation statements are gone, the
        // engine's cleanup still runs.
        let statements = match self.get_json::<Role>(&format!("roles/{role_name}")).await? {
            Some(r) => r.revocation_statements,
            None => String::new(),
        };
        pg::revoke(&self.pools, &db_name, &c, &statements, &username).await
    }

    /// A coordinated rotation's new credential (`keybridge rotate ...
    /// --engine database/...`): a new dynamic credential under a lease, or
    /// a static role's password rotated now.
    async fn rotate(&self, ctx: &CallContext, path: &str, _params: &Params) -> Result<EngineResponse, EngineError> {
        let path = path.trim_matches('/');
        if let Some(role) = path.strip_prefix("creds/").filter(|r| !r.is_empty() && !r.contains('/')) {
            return self.issue(ctx, role).await;
        }
        // At rotate-role/ (an update), never static-creds/: reading a static
        // role's password must not be enough to rotate it.
        if let Some(name) = path.strip_prefix("rotate-role/").filter(|r| !r.is_empty() && !r.contains('/')) {
            let r = self.rotate_static(name).await?;
            return Ok(Self::static_creds(&r));
        }
        Err(EngineError::Unsupported(format!(
            "{path}: the database engine issues rotated credentials at creds/<role> and rotate-role/<name>"
        )))
    }

    /// Rotates the static roles whose period has run out.
    /// Rotates the static roles that are due. One that fails is retried
    /// with backoff (5 s doubling to 5 minutes), so a role whose database
    /// is down is not tried on every pass, and never holds up the others
    /// for more than its statements' bounds.
    async fn periodic(&self, _ctx: &CallContext) -> Result<(), EngineError> {
        let names = self.storage.list("static-roles/").await.map_err(store_err)?;
        let now = now_secs();
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for name in &names {
            if failing.get(name).is_some_and(|b| b.retry_at > now) {
                continue;
            }
            let due = match self.get_json::<StaticRole>(&format!("static-roles/{name}")).await {
                Ok(Some(r)) => r.next_rotation() <= now,
                _ => false,
            };
            if !due {
                continue;
            }
            let result = self.rotate_static(name).await;
            let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(_) => {
                    failing.remove(name);
                }
                Err(e) => {
                    let b = Backoff::after(failing.get(name).copied(), now);
                    failing.insert(name.clone(), b);
                    tracing::warn!(static_role = %name, error = %e, failures = b.failures, retry_in_secs = b.retry_at.saturating_sub(now), "database: a scheduled rotation failed; retried with backoff");
                }
            }
        }
        // Roles deleted since are forgotten.
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| names.contains(k));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(period: u64, schedule: &str, last: u64) -> StaticRole {
        StaticRole {
            db_name: "app".into(),
            username: "u".into(),
            rotation_period: period,
            rotation_schedule: schedule.into(),
            rotation_statements: String::new(),
            password: String::new(),
            last_rotation: last,
        }
    }

    #[test]
    fn failing_rotations_back_off_from_5_seconds_to_5_minutes() {
        let mut b = None;
        let mut delays = Vec::new();
        for _ in 0..9 {
            let next = Backoff::after(b, 1000);
            delays.push(next.retry_at - 1000);
            b = Some(next);
        }
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        let far = Backoff { failures: u32::MAX, retry_at: 0 };
        assert_eq!(Backoff::after(Some(far), u64::MAX).retry_at, u64::MAX, "saturates");
    }

    #[test]
    fn the_next_rotation_follows_the_period_or_the_schedule() {
        // 2026-12-05 (a Saturday) 12:00:00 UTC.
        let last = 1_796_472_000;
        assert_eq!(role(3600, "", last).next_rotation(), last + 3600);
        // Sundays at 03:00 UTC: the next day, 15 hours on.
        assert_eq!(role(0, "0 3 * * SUN", last).next_rotation(), last + 15 * 3600);
        assert_eq!(role(0, "*/5 * * * *", last).next_rotation(), last + 300);
        assert_eq!(role(0, "not cron", last).next_rotation(), u64::MAX, "never, rather than always");
    }
}
