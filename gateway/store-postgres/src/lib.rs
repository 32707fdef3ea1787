//! The PostgreSQL physical store: the barrier's entries (ciphertext, and
//! the plaintext seal configuration) in one table of `key BYTEA PRIMARY
//! KEY, value BYTEA`, ordered bytewise as the [`Physical`] trait asks.
//!
//! - A batch is one `SERIALIZABLE` transaction: its checks read the keys
//!   (`FOR UPDATE`), its ops upsert or delete them; a serialization
//!   failure is retried, a check that does not hold rolls back and answers
//!   [`keybridge_barrier::Error::Conflict`].
//! - Reads go through a bounded entry cache (the barrier's `FillCache`, as
//!   the redb store's): a cached `get` issues no SQL statement. A commit
//!   drops the keys it wrote, whether or not it went through. The cache
//!   knows only this process's commits: one node per table, until the
//!   change feed of issue 26 lands.
//! - Only SQL that CockroachDB and YugabyteDB also accept: no advisory
//!   locks, no LISTEN/NOTIFY, no collations (keys are bytes), upserts with
//!   `ON CONFLICT`, arrays through `UNNEST`.
//! - Leadership (for singleton work across nodes): a row in `<table>_leader`
//!   with the leading node, its address and an epoch, and a lease whose
//!   expiry is judged by the database's clock. Once a node asks to lead
//!   ([`PostgresStore::lead_as`]), every commit it makes re-reads that row
//!   in the same transaction and is refused with
//!   [`keybridge_barrier::Error::Fenced`] unless the node still holds the
//!   epoch it was granted: a leader paused past its lease, whose place was
//!   taken, cannot commit, and steps down.
//! - TLS: `sslmode=verify-full` (rustls, the server's name checked against
//!   its certificate, the CA from `tls_ca_file` or `sslrootcert`) or
//!   `sslmode=disable`; the modes that encrypt without verifying are
//!   refused.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use keybridge_barrier::fill_cache::{FillCache, Weighted};
use keybridge_barrier::{Batch, Op, Physical};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

mod feed;

/// What goes wrong before the store serves: its settings, or reaching the
/// database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage \"postgresql\": {0}")]
    Config(String),
    #[error("storage \"postgresql\": {0}")]
    Database(String),
}

/// The `storage "postgresql"` block.
pub struct Settings {
    /// `postgresql://user:password@host:port/database?sslmode=verify-full`
    /// (a secret: it is never logged or shown, and wiped when dropped).
    pub connection_url: zeroize::Zeroizing<String>,
    pub table: String,
    pub max_connections: usize,
    /// The CA that signed the server's certificate (PEM), for
    /// `sslmode=verify-full`.
    pub tls_ca_file: Option<PathBuf>,
    /// Memory for the entry cache, in bytes.
    pub cache_bytes: usize,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("connection_url", &"<redacted>")
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_TABLE: &str = "keybridge_store";
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Rows an export reads, and an import writes, per statement.
const PAGE: usize = 1000;
/// Attempts of a batch that keeps meeting serialization failures.
const ATTEMPTS: u32 = 30;
/// The longest a statement may run on the store's connections (an export
/// or import lifts it for itself).
const STATEMENT_TIMEOUT_MS: u64 = 10_000;
/// The longest a transaction may sit idle between statements (a node
/// paused mid-commit): a commit of leader work holds the leader row `FOR
/// SHARE`, which a takeover waits for, so this bounds how long a paused
/// leader's open transaction delays the next.
const IDLE_TIMEOUT_MS: u64 = 2_000;
/// How long a gap in the change feed's sequence is waited for: a commit's
/// number is taken in its last statement, and the commit is decided within
/// that statement's timeout, the idle time before the COMMIT and the
/// COMMIT's own timeout, so a number still missing after this (with a
/// margin) was rolled back.
pub const FEED_GAP_BOUND: Duration = Duration::from_millis(2 * STATEMENT_TIMEOUT_MS + IDLE_TIMEOUT_MS + 15_000);
/// How long the change feed keeps a row.
pub const FEED_RETENTION: Duration = Duration::from_secs(600);
/// Rows a poll of the feed reads at most.
const FEED_PAGE: i64 = 1000;
/// Gaps tracked at most; past it a node drops every cache instead.
const FEED_MAX_GAPS: usize = 100_000;

type EntryCache = FillCache<String, Arc<[u8]>, Weighted>;

/// The statements, with the table's name in them (checked to be a plain
/// identifier, so nothing else can be).
struct Sql {
    get: String,
    list: String,
    list_to_end: String,
    check: String,
    check_shared: String,
    put: String,
    delete: String,
    export_page: String,
    clear: String,
    import: String,
    leader_read: String,
    fence_read: String,
    leader_acquire: String,
    leader_renew: String,
    leader_release: String,
    member_beat: String,
    member_list: String,
    member_forget: String,
    member_prune: String,
    change_insert: String,
    change_poll: String,
    change_gaps: String,
    change_head: String,
    change_prune: String,
}

impl Sql {
    fn new(table: &str) -> Sql {
        // Quoted: a name that is a keyword (`user`) is a name too.
        let t = format!("\"{table}\"");
        let leader = format!("\"{table}_leader\"");
        let members = format!("\"{table}_members\"");
        let changes = format!("\"{table}_changes\"");
        Sql {
            get: format!("SELECT value FROM {t} WHERE key = $1"),
            // Two statements, so that the upper bound is always an index
            // bound (a generic plan of `$2 IS NULL OR key < $2` may filter).
            list: format!("SELECT key FROM {t} WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3"),
            list_to_end: format!("SELECT key FROM {t} WHERE key >= $1 ORDER BY key LIMIT $2"),
            check: format!("SELECT value FROM {t} WHERE key = $1 FOR UPDATE"),
            // A key the batch only checks (it writes it not): readers of
            // it do not queue on each other, and a writer of it still
            // waits for them.
            check_shared: format!("SELECT value FROM {t} WHERE key = $1 FOR SHARE"),
            put: format!(
                "INSERT INTO {t} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1"),
            export_page: format!(
                "SELECT key, value FROM {t} WHERE ($1::BYTEA IS NULL OR key > $1::BYTEA) ORDER BY key LIMIT $2"
            ),
            clear: format!("DELETE FROM {t}"),
            import: format!("INSERT INTO {t} (key, value) SELECT * FROM UNNEST($1::BYTEA[], $2::BYTEA[])"),
            leader_read: format!("SELECT node, api_addr, epoch, expires_at > now() FROM {leader} WHERE id = 1"),
            // In a commit: shared, so a takeover (which updates the row)
            // waits for commits in flight, and a commit after it sees it.
            fence_read: format!("SELECT node, epoch FROM {leader} WHERE id = 1 FOR SHARE"),
            leader_acquire: format!(
                "UPDATE {leader} SET node = $1, api_addr = $2, epoch = epoch + 1, \
                 expires_at = now() + ($3::BIGINT * INTERVAL '1 millisecond') \
                 WHERE id = 1 AND expires_at <= now() RETURNING epoch"
            ),
            leader_renew: format!(
                "UPDATE {leader} SET expires_at = now() + ($3::BIGINT * INTERVAL '1 millisecond') \
                 WHERE id = 1 AND node = $1 AND epoch = $2 RETURNING epoch"
            ),
            leader_release: format!(
                "UPDATE {leader} SET expires_at = now() - INTERVAL '1 second' WHERE id = 1 AND node = $1 AND epoch = $2"
            ),
            member_beat: format!(
                "INSERT INTO {members} (node, api_addr, state, last_seen) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (node) DO UPDATE SET api_addr = excluded.api_addr, state = excluded.state, \
                 last_seen = excluded.last_seen"
            ),
            member_list: format!(
                "SELECT node, api_addr, state, last_seen > now() - ($1::BIGINT * INTERVAL '1 millisecond') \
                 FROM {members} ORDER BY node"
            ),
            member_forget: format!("DELETE FROM {members} WHERE node = $1"),
            member_prune: format!("DELETE FROM {members} WHERE last_seen < now() - INTERVAL '1 hour'"),
            // The last statement of a commit: its sequence number is taken
            // as late as the transaction allows (see `follow`).
            change_insert: format!("INSERT INTO {changes} (origin, keys) VALUES ($1, $2)"),
            // Two statements, each an index scan (a generic plan of `seq > $1
            // OR seq = ANY($2)` may scan the whole table every poll).
            change_poll: format!(
                "SELECT seq, origin, keys, (EXTRACT(EPOCH FROM (clock_timestamp() - at)) * 1000)::BIGINT \
                 FROM {changes} WHERE seq > $1 ORDER BY seq LIMIT $2"
            ),
            change_gaps: format!(
                "SELECT seq, origin, keys, (EXTRACT(EPOCH FROM (clock_timestamp() - at)) * 1000)::BIGINT \
                 FROM {changes} WHERE seq = ANY($1) ORDER BY seq"
            ),
            change_head: format!("SELECT COALESCE(MAX(seq), 0) FROM {changes}"),
            change_prune: format!("DELETE FROM {changes} WHERE at < now() - ($1::BIGINT * INTERVAL '1 millisecond')"),
        }
    }
}

/// Who leads the store, as its leader row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Empty when no node ever led.
    pub node: String,
    pub api_addr: String,
    pub epoch: u64,
    /// The lease has not expired (by the database's clock).
    pub live: bool,
}

/// A node that uses the table, as its last heartbeat said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    pub api_addr: String,
    /// `leader` or `waiting`.
    pub state: String,
    /// Its last heartbeat is more recent than the lease (by the database's
    /// clock).
    pub alive: bool,
}

/// This node's side of leadership, once it asked to lead.
struct Fence {
    node: String,
    api_addr: String,
    /// The epoch this node was granted; 0 while it does not lead.
    epoch: std::sync::atomic::AtomicU64,
}

pub struct PostgresStore {
    pool: Pool,
    sql: Sql,
    fence: std::sync::OnceLock<Fence>,
    cache: Arc<EntryCache>,
    /// Where `export` and `import` (which block) run their queries.
    runtime: tokio::runtime::Handle,
    /// This process's mark on its change-feed rows (it skips its own).
    origin: i64,
    /// Following the feed (see [`PostgresStore::follow`]).
    feed: FeedState,
}

#[derive(Default)]
struct FeedState {
    /// When the poll began that last read the feed to its end and applied
    /// it: every commit acknowledged before then is reflected here.
    caught_up: std::sync::Mutex<Option<feed::Instant>>,
    /// From a change's commit to its application here, for the newest
    /// change of another node applied (milliseconds, by the database's
    /// clock).
    lag_ms: std::sync::atomic::AtomicU64,
}

/// What changed, as the change feed tells it.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// These keys, by another process.
    Keys(Vec<String>),
    /// These keys, by this process only (told again in case a commit
    /// landed while its caller saw an error).
    Own(Vec<String>),
    /// Anything: the table was replaced (an import), or this node could not
    /// tell what it missed.
    Everything,
}

/// A plain SQL identifier (quoted in statements), with room for the
/// `_leader`, `_members` and `_changes` tables beside it.
fn check_table(t: &str) -> Result<(), Error> {
    let ok = (1..=55).contains(&t.len())
        && t.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(Error::Config(format!("table {t:?} must be 1-55 of a-z, 0-9 and _, not starting with a digit")));
    }
    if t.ends_with("_leader") || t.ends_with("_members") || t.ends_with("_changes") {
        return Err(Error::Config(format!(
            "table {t:?} may not end in _leader, _members or _changes: the store keeps its lease, its nodes and \
             its change feed in those"
        )));
    }
    Ok(())
}

/// The connection settings without the `sslmode` and `sslrootcert`
/// parameters (which this store handles), and their values.
fn split_url(url: &str) -> Result<(String, Option<String>, Option<String>), Error> {
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(Error::Config(
            "connection_url must be a URL: postgresql://user:password@host:port/database?sslmode=verify-full".into(),
        ));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(v.to_string()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
    Ok((format!("{base}{rest}"), mode, root))
}

fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let shown = ca_file.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| Error::Config(format!("tls_ca_file {shown}: cannot read it: {e}")))?;
    for cert in certs {
        let cert = cert.map_err(|e| Error::Config(format!("tls_ca_file {shown}: not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| Error::Config(format!("tls_ca_file {shown}: not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!("tls_ca_file {shown} holds no certificate")));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// The smallest byte string above every key that starts with `prefix`
/// (none when there is none: the prefix is empty or all 0xFF).
fn upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

fn db(e: tokio_postgres::Error) -> keybridge_barrier::Error {
    if unreachable(&e) {
        return keybridge_barrier::Error::Unavailable(describe(&e));
    }
    keybridge_barrier::Error::backend(std::io::Error::other(describe(&e)))
}

/// The database could not be reached or stopped the statement (a lost
/// connection, a shutdown or restart, a statement timeout): the outcome is
/// the database's to tell, and a retry may succeed.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // Class 08 (connection exception), 57 (operator intervention:
        // query canceled, admin or crash shutdown, cannot connect now).
        Some(d) => d.code().code().starts_with("08") || d.code().code().starts_with("57"),
        None => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// A database error in one line: its SQLSTATE and message when the server
/// sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("PostgreSQL {}: {}", d.code().code(), d.message()),
        None => format!("PostgreSQL: {e}"),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> keybridge_barrier::Error {
    let unreachable = match &e {
        deadpool_postgres::PoolError::Backend(e) => unreachable(e),
        deadpool_postgres::PoolError::Timeout(_) => true,
        _ => false,
    };
    match unreachable {
        true => keybridge_barrier::Error::Unavailable(pool_reason(e)),
        false => keybridge_barrier::Error::backend(std::io::Error::other(pool_reason(e))),
    }
}

fn utf8_key(raw: Vec<u8>) -> keybridge_barrier::Result<String> {
    String::from_utf8(raw)
        .map_err(|_| keybridge_barrier::Error::backend(std::io::Error::other("a key in the table is not UTF-8")))
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

impl PostgresStore {
    /// Connects (at most `max_connections` at once), creates the table if
    /// it is not there, and serves.
    pub async fn connect(s: &Settings) -> Result<Self, Error> {
        check_table(&s.table)?;
        if s.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        let (url, mode, root) = split_url(&s.connection_url)?;
        let url = zeroize::Zeroizing::new(url);
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| Error::Config(format!("connection_url: not a PostgreSQL URL this client reads ({e})")))?;
        // Bounds on every statement and on a transaction left idle (a node
        // paused mid-commit): the change feed's gap bound rests on them.
        let options = format!(
            "{} -c statement_timeout={STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout={IDLE_TIMEOUT_MS}",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim_start());
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match mode.as_deref() {
            Some("verify-full") => {
                let ca = s.tls_ca_file.clone().or(root.map(PathBuf::from)).ok_or_else(|| {
                    Error::Config(
                        "sslmode=verify-full needs tls_ca_file (or sslrootcert): the CA that signed the server's \
                         certificate"
                            .into(),
                    )
                })?;
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&ca)?);
                Manager::from_config(config, tls, manager_config)
            }
            Some("disable") => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            Some(other) => {
                return Err(Error::Config(format!(
                    "sslmode={other} is not accepted: use verify-full (the server's certificate and name checked) \
                     or disable"
                )));
            }
            None => {
                return Err(Error::Config(
                    "connection_url must say sslmode=verify-full (with tls_ca_file) or sslmode=disable".into(),
                ));
            }
        };
        let pool = Pool::builder(manager)
            .max_size(s.max_connections)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Config(format!("the connection pool: {e}")))?;
        let client = pool.get().await.map_err(|e| Error::Database(format!("cannot connect: {}", pool_reason(e))))?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS \"{t}\" (key BYTEA PRIMARY KEY, value BYTEA NOT NULL); \
             CREATE TABLE IF NOT EXISTS \"{t}_leader\" (id INT PRIMARY KEY, node TEXT NOT NULL, api_addr TEXT NOT NULL, \
             epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL); \
             INSERT INTO \"{t}_leader\" (id, node, api_addr, epoch, expires_at) \
             VALUES (1, '', '', 0, TIMESTAMPTZ '1970-01-01 00:00:00+00') ON CONFLICT (id) DO NOTHING; \
             CREATE TABLE IF NOT EXISTS \"{t}_members\" (node TEXT PRIMARY KEY, api_addr TEXT NOT NULL, \
             state TEXT NOT NULL, last_seen TIMESTAMPTZ NOT NULL); \
             CREATE TABLE IF NOT EXISTS \"{t}_changes\" (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             origin BIGINT NOT NULL, keys BYTEA[], at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
            t = s.table
        );
        // Nodes starting together race to create the tables, and
        // PostgreSQL's IF NOT EXISTS does not settle that race (the loser
        // gets a duplicate error): once the winner committed, try again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute(&create).await {
                Ok(()) => break,
                Err(e)
                    if attempt < 10
                        && e.code().is_some_and(|c| {
                            // The loser of the race may also meet the
                            // table's row type or the feed's sequence.
                            *c == SqlState::UNIQUE_VIOLATION
                                || *c == SqlState::DUPLICATE_TABLE
                                || *c == SqlState::DUPLICATE_OBJECT
                        }) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => {
                    return Err(Error::Database(format!("cannot create table {}: {}", s.table, describe(&e))));
                }
            }
        }
        drop(client);
        Ok(PostgresStore {
            pool,
            sql: Sql::new(&s.table),
            fence: std::sync::OnceLock::new(),
            cache: Arc::new(EntryCache::weighted(s.cache_bytes)),
            runtime: tokio::runtime::Handle::current(),
            origin: rand::random::<i64>(),
            feed: FeedState::default(),
        })
    }

    /// From now on this store commits only while `node` leads it: each
    /// commit checks, in its transaction, that the leader row still names
    /// this node at the epoch it was granted. Until [`PostgresStore::try_lead`]
    /// grants one, every commit is refused as fenced.
    pub fn lead_as(&self, node: &str, api_addr: &str) {
        let _ = self.fence.set(Fence {
            node: node.to_string(),
            api_addr: api_addr.to_string(),
            epoch: std::sync::atomic::AtomicU64::new(0),
        });
    }

    /// The epoch this node leads at, if it does (as far as it knows: a
    /// commit or a renewal finds out otherwise).
    pub fn epoch(&self) -> Option<u64> {
        let e = self.fence.get()?.epoch.load(std::sync::atomic::Ordering::Acquire);
        (e != 0).then_some(e)
    }

    /// Renews this node's lease for `ttl`, or takes the lead if the lease
    /// expired (by the database's clock); the epoch it leads at, or `None`
    /// while another node holds a live lease.
    pub async fn try_lead(&self, ttl: Duration) -> keybridge_barrier::Result<Option<u64>> {
        use std::sync::atomic::Ordering;
        let fence = self
            .fence
            .get()
            .ok_or_else(|| keybridge_barrier::Error::backend(std::io::Error::other("try_lead before lead_as")))?;
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let held = fence.epoch.load(Ordering::Acquire);
        if held != 0 {
            let stmt = client.prepare_cached(&self.sql.leader_renew).await.map_err(db)?;
            let renewed = client.query_opt(&stmt, &[&fence.node, &(held as i64), &ms]).await.map_err(db)?;
            if renewed.is_some() {
                return Ok(Some(held));
            }
            // Another node took over: this one steps down.
            tracing::warn!(epoch = held, "postgresql: the lease was lost; stepping down");
            let _ = fence.epoch.compare_exchange(held, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        let stmt = client.prepare_cached(&self.sql.leader_acquire).await.map_err(db)?;
        match client.query_opt(&stmt, &[&fence.node, &fence.api_addr, &ms]).await.map_err(db)? {
            Some(row) => {
                let epoch = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                fence.epoch.store(epoch, Ordering::Release);
                Ok(Some(epoch).filter(|e| *e != 0))
            }
            None => Ok(None),
        }
    }

    /// Gives the lead up (the lease ends now), so another node need not
    /// wait for it to expire.
    pub async fn step_down(&self) -> keybridge_barrier::Result<()> {
        let Some(fence) = self.fence.get() else { return Ok(()) };
        let held = fence.epoch.swap(0, std::sync::atomic::Ordering::AcqRel);
        if held == 0 {
            return Ok(());
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.leader_release).await.map_err(db)?;
        client.execute(&stmt, &[&fence.node, &(held as i64)]).await.map_err(db)?;
        Ok(())
    }

    /// Records that this node (as it asked to lead) uses the table, in
    /// `state` (`leader`, `waiting`); rows unseen for an hour go.
    pub async fn heartbeat(&self, state: &str) -> keybridge_barrier::Result<()> {
        let Some(fence) = self.fence.get() else { return Ok(()) };
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.member_beat).await.map_err(db)?;
        client.execute(&stmt, &[&fence.node, &fence.api_addr, &state]).await.map_err(db)?;
        let prune = client.prepare_cached(&self.sql.member_prune).await.map_err(db)?;
        client.execute(&prune, &[]).await.map_err(db)?;
        Ok(())
    }

    /// This node no longer uses the table (a clean stop).
    pub async fn forget_me(&self) -> keybridge_barrier::Result<()> {
        let Some(fence) = self.fence.get() else { return Ok(()) };
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.member_forget).await.map_err(db)?;
        client.execute(&stmt, &[&fence.node]).await.map_err(db)?;
        Ok(())
    }

    /// The nodes that used the table in the last hour; `alive` when seen
    /// within `lease`.
    pub async fn members(&self, lease: Duration) -> keybridge_barrier::Result<Vec<Member>> {
        let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.member_list).await.map_err(db)?;
        let rows = client.query(&stmt, &[&ms]).await.map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|r| Member { node: r.get(0), api_addr: r.get(1), state: r.get(2), alive: r.get(3) })
            .collect())
    }

    /// Who leads, as the leader row says.
    pub async fn leader(&self) -> keybridge_barrier::Result<LeaderInfo> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.leader_read).await.map_err(db)?;
        let row = client.query_one(&stmt, &[]).await.map_err(db)?;
        Ok(LeaderInfo {
            node: row.get(0),
            api_addr: row.get(1),
            epoch: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            live: row.get(3),
        })
    }

    /// In a transaction of leader work on a node that asked to lead:
    /// `Some(the epoch it holds)` when the leader row no longer names it at
    /// that epoch (0: it does not lead).
    async fn fenced_out<C: deadpool_postgres::GenericClient>(
        &self,
        tx: &C,
    ) -> Result<Option<u64>, tokio_postgres::Error> {
        if !keybridge_barrier::leader_work::active() {
            return Ok(None);
        }
        let Some(fence) = self.fence.get() else { return Ok(None) };
        let held = fence.epoch.load(std::sync::atomic::Ordering::Acquire);
        let stmt = tx.prepare_cached(&self.sql.fence_read).await?;
        let row = tx.query_one(&stmt, &[]).await?;
        let (node, epoch): (String, i64) = (row.get(0), row.get(1));
        let ours = held != 0 && node == fence.node && u64::try_from(epoch).ok() == Some(held);
        Ok((!ours).then_some(held))
    }

    /// Steps down from `epoch` (a commit or a check found another leader):
    /// whatever this node led is another's now.
    fn lost_epoch(&self, epoch: u64) {
        use std::sync::atomic::Ordering;
        if let Some(f) = self.fence.get() {
            let _ = f.epoch.compare_exchange(epoch, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A key's value as the table holds it now (no cache).
    async fn read(&self, key: &str) -> keybridge_barrier::Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.get).await.map_err(db)?;
        let row = client.query_opt(&stmt, &[&key.as_bytes()]).await.map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn client(&self) -> keybridge_barrier::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// One attempt at a batch.
    async fn try_commit(&self, batch: &Batch) -> Result<Attempt, Failure> {
        let mut client = self.client().await.map_err(Failure::Other)?;
        Ok(self.try_commit_on(&mut client, batch).await?)
    }

    async fn try_commit_on(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &Batch,
    ) -> Result<Attempt, tokio_postgres::Error> {
        let tx = client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await?;
        if let Some(held) = self.fenced_out(&tx).await? {
            tx.rollback().await?;
            return Ok(Attempt::Fenced(held));
        }
        if !batch.checks.is_empty() {
            let check = tx.prepare_cached(&self.sql.check).await?;
            let check_shared = tx.prepare_cached(&self.sql.check_shared).await?;
            for c in &batch.checks {
                let writes = batch.ops.iter().any(|op| op_key(op) == c.key);
                let stmt = if writes { &check } else { &check_shared };
                let row = tx.query_opt(stmt, &[&c.key.as_bytes()]).await?;
                let current: Option<Vec<u8>> = row.map(|r| r.get(0));
                if current.as_deref() != c.value.as_deref() {
                    tx.rollback().await?;
                    return Ok(Attempt::CheckFailed);
                }
            }
        }
        let put = tx.prepare_cached(&self.sql.put).await?;
        let delete = tx.prepare_cached(&self.sql.delete).await?;
        for op in &batch.ops {
            match op {
                Op::Put { key, value } => tx.execute(&put, &[&key.as_bytes(), &value.as_slice()]).await?,
                Op::Delete { key } => tx.execute(&delete, &[&key.as_bytes()]).await?,
            };
        }
        if !batch.ops.is_empty() {
            let keys: Vec<&[u8]> = batch.ops.iter().map(|op| op_key(op).as_bytes()).collect();
            let change = tx.prepare_cached(&self.sql.change_insert).await?;
            tx.execute(&change, &[&self.origin, &keys]).await?;
        }
        tx.commit().await?;
        Ok(Attempt::Committed)
    }
}

/// How an attempt at a batch ended, when the database answered.
enum Attempt {
    Committed,
    CheckFailed,
    /// This node does not hold the leader's epoch (the one it held).
    Fenced(u64),
}

/// Why an attempt at a batch failed.
enum Failure {
    /// The database said so: retried when it was a serialization failure.
    Db(tokio_postgres::Error),
    /// No connection.
    Other(keybridge_barrier::Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

/// Why the pool gave no connection, in one line.
fn pool_reason(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(&e),
        deadpool_postgres::PoolError::Timeout(_) => "PostgreSQL: no connection within the pool's timeout".into(),
        other => format!("PostgreSQL: {other}"),
    }
}

#[async_trait]
impl Physical for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    async fn get(&self, key: &str) -> keybridge_barrier::Result<Option<Vec<u8>>> {
        // Leader work reads the database, never the cache: the cache may
        // not yet know a commit another node made (the change feed's lag),
        // and the reconciler, reading a journal entry straight from the
        // table, must then read the change it announces.
        if keybridge_barrier::leader_work::active() {
            return self.read(key).await;
        }
        let ticket = match self.cache.lookup(key) {
            Ok(hit) => return Ok(Some(hit.to_vec())),
            Err(ticket) => ticket,
        };
        let value = self.read(key).await?;
        if let Some(v) = &value {
            self.cache.fill(ticket, key.to_owned(), v.as_slice().into());
        }
        Ok(value)
    }

    async fn list(&self, prefix: &str, start: Option<&str>, limit: usize) -> keybridge_barrier::Result<Vec<String>> {
        let from = match start {
            Some(s) if s >= prefix => s,
            _ => prefix,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = match upper_bound(prefix.as_bytes()) {
            Some(upper) => {
                let stmt = client.prepare_cached(&self.sql.list).await.map_err(db)?;
                client.query(&stmt, &[&from.as_bytes(), &upper, &limit]).await.map_err(db)?
            }
            None => {
                let stmt = client.prepare_cached(&self.sql.list_to_end).await.map_err(db)?;
                client.query(&stmt, &[&from.as_bytes(), &limit]).await.map_err(db)?
            }
        };
        rows.into_iter().map(|r| utf8_key(r.get(0))).collect()
    }

    async fn commit(&self, batch: Batch) -> keybridge_barrier::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.try_commit(&batch).await {
                Err(Failure::Db(e)) if retryable(&e) && attempt < ATTEMPTS => {
                    // Another transaction touched the same keys: again,
                    // after a pause that grows and differs between writers.
                    let jitter = rand::random::<u64>() % 4;
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) + jitter)).await;
                }
                Err(Failure::Db(e)) if retryable(&e) => break Err(keybridge_barrier::Error::Conflict),
                Err(Failure::Db(e)) => break Err(db(e)),
                Err(Failure::Other(e)) => break Err(e),
                Ok(Attempt::Committed) => break Ok(()),
                Ok(Attempt::CheckFailed) => break Err(keybridge_barrier::Error::Conflict),
                Ok(Attempt::Fenced(epoch)) => {
                    self.lost_epoch(epoch);
                    break Err(keybridge_barrier::Error::Fenced { epoch });
                }
            }
        };
        // Whether or not it went through, nothing cached for these keys may
        // outlive the attempt (removing is always safe).
        self.cache.remove(batch.ops.iter().map(op_key));
        outcome
    }

    async fn fence_check(&self) -> keybridge_barrier::Result<()> {
        if !keybridge_barrier::leader_work::active() || self.fence.get().is_none() {
            return Ok(());
        }
        let client = self.client().await?;
        match self.fenced_out(&client).await.map_err(db)? {
            None => Ok(()),
            Some(epoch) => {
                self.lost_epoch(epoch);
                Err(keybridge_barrier::Error::Fenced { epoch })
            }
        }
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(&str, &[u8]) -> keybridge_barrier::Result<()>,
    ) -> keybridge_barrier::Result<()> {
        self.runtime.block_on(async {
            let mut client = self.client().await?;
            // One snapshot for the whole export, while writes go on.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db)?;
            // The sink may take its time between pages.
            tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0")
                .await
                .map_err(db)?;
            let stmt = tx.prepare_cached(&self.sql.export_page).await.map_err(db)?;
            let mut after: Option<Vec<u8>> = None;
            let page = PAGE as i64;
            loop {
                let rows = tx.query(&stmt, &[&after, &page]).await.map_err(db)?;
                let full = rows.len() == PAGE;
                for row in rows {
                    let (key, value): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
                    let key = utf8_key(key)?;
                    sink(&key, &value)?;
                    after = Some(key.into_bytes());
                }
                if !full {
                    break;
                }
            }
            tx.commit().await.map_err(db)
        })
    }

    fn import(
        &self,
        entries: &mut dyn Iterator<Item = keybridge_barrier::Result<(String, Vec<u8>)>>,
    ) -> keybridge_barrier::Result<u64> {
        let result = self.runtime.block_on(async {
            let mut client = self.client().await?;
            let tx =
                client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await.map_err(db)?;
            tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0")
                .await
                .map_err(db)?;
            // Fenced as a commit is, and told to every node as a change of
            // everything.
            if let Some(held) = self.fenced_out(&tx).await.map_err(db)? {
                return Err(keybridge_barrier::Error::Fenced { epoch: held });
            }
            tx.execute(&self.sql.clear, &[]).await.map_err(db)?;
            let stmt = tx.prepare_cached(&self.sql.import).await.map_err(db)?;
            let (mut keys, mut values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
            let mut count = 0u64;
            // An error returns before the commit: the transaction is rolled
            // back and nothing changes.
            for entry in entries {
                let (k, v) = entry?;
                keys.push(k.into_bytes());
                values.push(v);
                count += 1;
                if keys.len() == PAGE {
                    tx.execute(&stmt, &[&keys, &values]).await.map_err(db)?;
                    keys.clear();
                    values.clear();
                }
            }
            if !keys.is_empty() {
                tx.execute(&stmt, &[&keys, &values]).await.map_err(db)?;
            }
            // Its number taken last, as a commit's is (the feed's gap bound
            // counts from it), under the usual timeouts again.
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}; \
                 SET LOCAL idle_in_transaction_session_timeout = {IDLE_TIMEOUT_MS}"
            ))
            .await
            .map_err(db)?;
            let everything: Option<Vec<Vec<u8>>> = None;
            tx.execute(&self.sql.change_insert, &[&self.origin, &everything]).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(count)
        });
        self.cache.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds_cover_exactly_the_prefix() {
        assert_eq!(upper_bound(b"p/"), Some(b"p0".to_vec()));
        assert_eq!(upper_bound(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(upper_bound(b"\xff\xff"), None);
        assert_eq!(upper_bound(b""), None);
    }

    #[test]
    fn urls_keep_every_parameter_but_the_tls_ones() {
        let (url, mode, root) =
            split_url("postgresql://u:p@h:5/db?application_name=kb&sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(url, "postgresql://u:p@h:5/db?application_name=kb");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/ca.pem")));
        assert!(split_url("host=h user=u").is_err());
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(check_table("keybridge_store").is_ok() && check_table("user").is_ok());
        for bad in ["", "1t", "t; drop table x", "T", "a-b", "kb_leader", "kb_members", "kb_changes", &"t".repeat(56)] {
            assert!(check_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_never_show_the_url() {
        let s = Settings {
            connection_url: zeroize::Zeroizing::new("postgresql://u:hunter2@h/db".into()),
            table: DEFAULT_TABLE.into(),
            max_connections: 1,
            tls_ca_file: None,
            cache_bytes: 0,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
