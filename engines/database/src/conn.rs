//! Connections: a `config/<name>` record, and the pool built from it.
//!
//! The record holds the admin user's password (barrier-encrypted like every
//! engine entry; never returned). A pool is keyed by the connection's name
//! and a fingerprint of its record, so a change written on any node (a new
//! URL, a new password after a root rotation) makes every node build a new
//! pool at its next use.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::EngineError;

/// One connection's record.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub plugin_name: String,
    /// With `{{username}}` and `{{password}}` where the admin's go.
    pub connection_url: String,
    pub username: String,
    pub password: String,
    pub allowed_roles: Vec<String>,
    pub root_rotation_statements: String,
    pub max_open_connections: u32,
    /// rotate-root may rotate a superuser's password.
    #[serde(default)]
    pub allow_superuser_rotation: bool,
    /// Vault's `username_template` (Go template, see `username.rs`);
    /// empty: the engine's own `v-<caller>-<role>-<random>-<time>`. Left
    /// out of the record when empty, so an older binary still reads it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username_template: String,
    /// A password policy's name (`sys/policies/password/<name>`) new
    /// passwords come from; empty: 28 letters and digits. Left out of
    /// the record when empty, so an older binary still reads it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password_policy: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl Connection {
    /// Whether `role` may use this connection.
    pub fn allows(&self, role: &str) -> bool {
        self.allowed_roles.iter().any(|r| r == "*" || r == role)
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        for part in [&self.connection_url, &self.username, &self.password] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.update(self.max_open_connections.to_be_bytes());
        h.finalize().into()
    }
}

/// The URL's query: TLS settings taken out (rustls does TLS; the driver
/// gets `require` and a connector that checks the name), the rest kept.
struct Url {
    text: Zeroizing<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A connection URL the engine takes: the admin's credentials only
/// through the placeholders (never written into it, so a read of the
/// config shows none, and rotate-root changes the password in use), and
/// no query parameter that would send them elsewhere (`host`, a socket).
pub fn check_url(raw: &str) -> Result<(), EngineError> {
    let shape = "connection_url must be postgresql://{{username}}:{{password}}@host:5432/db?sslmode=verify-full&sslrootcert=/path/ca.pem";
    let rest = raw
        .strip_prefix("postgresql://")
        .or_else(|| raw.strip_prefix("postgres://"))
        .ok_or_else(|| EngineError::InvalidInput(shape.into()))?;
    let (userinfo, after) = rest.split_once('@').ok_or_else(|| EngineError::InvalidInput(shape.into()))?;
    if userinfo != "{{username}}:{{password}}" || after.contains("{{") {
        return Err(EngineError::InvalidInput(format!(
            "{shape}: the credentials go in as {{{{username}}}}:{{{{password}}}}, and only there"
        )));
    }
    let query = after.split_once('?').map_or("", |(_, q)| q);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !matches!(key, "sslmode" | "sslrootcert" | "application_name" | "connect_timeout" | "options") {
            return Err(EngineError::InvalidInput(format!(
                "connection_url: the query parameter {key:?} is not taken (sslmode, sslrootcert, application_name, connect_timeout, options)"
            )));
        }
    }
    Ok(())
}

/// The host a connection URL names (lower-case, without port or
/// brackets).
pub fn url_host(raw: &str) -> String {
    let after = raw.split_once('@').map_or("", |(_, a)| a);
    let authority = after.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The server a connection URL points at, `host:port` (port 5432 when the
/// URL has none): where the users it creates live (roles are
/// cluster-wide, so the database does not matter).
pub fn url_server(raw: &str) -> String {
    let after = raw.split_once('@').map_or("", |(_, a)| a);
    let authority = after.split(['/', '?']).next().unwrap_or_default();
    let port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').and_then(|(_, p)| p.strip_prefix(':')),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    let port = port.filter(|p| !p.is_empty()).unwrap_or("5432");
    format!("{}:{port}", url_host(raw))
}

/// The connection URL with the admin's credentials in it.
fn url(c: &Connection) -> Result<Url, EngineError> {
    let raw = &c.connection_url;
    check_url(raw)?;
    let filled =
        Zeroizing::new(raw.replace("{{username}}", &encode(&c.username)).replace("{{password}}", &encode(&c.password)));
    let (base, query) = filled.split_once('?').unwrap_or((filled.as_str(), ""));
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => sslmode = Some(v.to_string()),
            Some(("sslrootcert", v)) => {
                sslrootcert = Some(percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    Ok(Url { text: Zeroizing::new(format!("{base}{rest}")), sslmode, sslrootcert })
}

/// The most a CA file may hold: a connection's writer names the file, so
/// it must not make the gateway read a device or a huge file.
const MAX_CA_FILE: u64 = 1 << 20;

fn tls(ca_file: &str) -> Result<rustls::ClientConfig, EngineError> {
    use std::io::Read;

    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |m: String| EngineError::InvalidInput(format!("sslrootcert {ca_file}: {m}"));
    if !ca_file.starts_with('/') {
        return Err(bad("must be an absolute path".into()));
    }
    // Looked at before it is opened: opening a FIFO would block.
    let unreadable = || bad("must be a readable regular file of at most 1 MiB".into());
    let kind = std::fs::symlink_metadata(ca_file).map_err(|_| unreadable())?;
    if !kind.is_file() {
        return Err(unreadable());
    }
    let file = std::fs::File::open(ca_file).map_err(|_| unreadable())?;
    let meta = file.metadata().map_err(|_| unreadable())?;
    if !meta.is_file() || meta.len() > MAX_CA_FILE {
        return Err(unreadable());
    }
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE).read_to_end(&mut pem).map_err(|_| unreadable())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| bad("not PEM certificates".into()))?;
        roots.add(cert).map_err(|_| bad("not a CA certificate".into()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::Internal(format!("TLS: {e}")))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// How long the engine's statements wait for a lock, and run at most.
const LOCK_TIMEOUT_MS: u64 = 5_000;
const STATEMENT_TIMEOUT_MS: u64 = 30_000;

/// A pool for `c`, optionally on another database than the URL's.
pub fn pool(c: &Connection, database: Option<&str>) -> Result<Pool, EngineError> {
    let u = url(c)?;
    let mut config = tokio_postgres::Config::from_str(&u.text).map_err(|e| {
        EngineError::InvalidInput(format!("connection_url is not a PostgreSQL URL this client reads ({e})"))
    })?;
    if let Some(db) = database {
        config.dbname(db);
    }
    config.connect_timeout(Duration::from_secs(10));
    // Bounded waits: a database user holding a lock (its own role's row, the
    // engine's advisory lock) must not hold an issue, a revocation or the
    // lease pass forever.
    let options = format!(
        "{} -c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
        config.get_options().unwrap_or("")
    );
    config.options(options.trim_start());
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match u.sslmode.as_deref() {
        Some("verify-full") => {
            let ca = u.sslrootcert.ok_or_else(|| {
                EngineError::InvalidInput(
                    "sslmode=verify-full needs sslrootcert=/path/ca.pem in connection_url: the CA of the database's certificate"
                        .into(),
                )
            })?;
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Manager::from_config(config, tokio_postgres_rustls::MakeRustlsConnect::new(tls(&ca)?), manager_config)
        }
        Some("disable") => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        Some(other) => {
            return Err(EngineError::InvalidInput(format!(
                "sslmode={other} is not accepted: use verify-full (with sslrootcert) or disable"
            )));
        }
        None => {
            return Err(EngineError::InvalidInput(
                "connection_url must say sslmode=verify-full (with sslrootcert) or sslmode=disable".into(),
            ));
        }
    };
    Pool::builder(manager)
        .max_size(c.max_open_connections.clamp(1, 64) as usize)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| EngineError::Internal(format!("the connection pool: {e}")))
}

/// A pool's key: the connection's name, and the database when it is not
/// the URL's.
type PoolKey = (String, Option<String>);

/// Pools by connection name (and database), rebuilt when the record changes.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, ([u8; 32], Pool)>>,
}

impl Pools {
    pub fn get(&self, name: &str, c: &Connection, database: Option<&str>) -> Result<Pool, EngineError> {
        let fp = c.fingerprint();
        let key = (name.to_string(), database.map(str::to_string));
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, p)) = pools.get(&key)
            && *f == fp
        {
            return Ok(p.clone());
        }
        let p = pool(c, database)?;
        pools.insert(key, (fp, p.clone()));
        Ok(p)
    }

    /// Drops a connection's pools (the connection was deleted).
    pub fn forget(&self, name: &str) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, _), _| n != name);
    }
}

/// Whether `c`'s credentials log in now: `Ok(false)` when the database
/// refuses the password, an error when it cannot be reached.
pub async fn logs_in(c: &Connection) -> Result<bool, EngineError> {
    let p = pool(c, None)?;
    match p.get().await {
        Ok(client) => {
            client.simple_query("SELECT 1").await.map_err(|e| db_error("checking the connection", &e))?;
            Ok(true)
        }
        Err(deadpool_postgres::PoolError::Backend(e))
            if e.as_db_error().is_some_and(|d| {
                *d.code() == tokio_postgres::error::SqlState::INVALID_PASSWORD
                    || *d.code() == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }) =>
        {
            Ok(false)
        }
        Err(e) => Err(pool_error("checking the connection", e)),
    }
}

/// One line for a database error: its SQLSTATE and message, no statement
/// text (which may hold a password).
pub fn db_error(what: &str, e: &tokio_postgres::Error) -> EngineError {
    match e.as_db_error() {
        Some(d) => EngineError::Unavailable(format!("{what}: PostgreSQL said {} ({})", d.message(), d.code().code())),
        None => EngineError::Unavailable(format!("{what}: {}", e.to_string().lines().next().unwrap_or_default())),
    }
}

pub fn pool_error(what: &str, e: deadpool_postgres::PoolError) -> EngineError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(what, &e),
        e => EngineError::Unavailable(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod server_tests {
    #[test]
    fn servers_are_host_and_port() {
        let u = |rest: &str| format!("postgresql://{{{{username}}}}:{{{{password}}}}@{rest}");
        assert_eq!(super::url_server(&u("DB.internal:6432/app?sslmode=disable")), "db.internal:6432");
        assert_eq!(super::url_server(&u("db.internal/app")), "db.internal:5432");
        assert_eq!(super::url_server(&u("[::1]:7000/app")), "::1:7000");
        assert_eq!(super::url_server(&u("[::1]/app")), "::1:5432");
    }
}
