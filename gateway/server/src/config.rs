//! The server's HCL configuration, in the shape of Vault's:
//!
//! ```hcl
//! listener "tcp" {
//!   address       = "0.0.0.0:8400"
//!   tls_cert_file = "/etc/keybridge/tls/server.crt"
//!   tls_key_file  = "/etc/keybridge/tls/server.key"
//!   # tls_disable = true
//! }
//! storage "file" {
//!   path = "/var/lib/keybridge"
//! }
//! limits {
//!   max_value_bytes = 524288
//! }
//! disable_mlock = false
//! # serving_threads = 4
//! # policy_check_rego = "/etc/keybridge/rules.rego"
//! # rotation_verify_command = ["/usr/local/bin/try-credentials"]
//! # allowed_endpoint_hosts = ["vpce-0a1b.secretsmanager.us-east-1.vpce.amazonaws.com"]
//! # audit_file_dir = "/var/log/keybridge"
//! # seal "awskms" {
//! #   region     = "us-east-1"
//! #   kms_key_id = "alias/vault-unseal-key"
//! # }
//! # telemetry {
//! #   address = "0.0.0.0:8402"
//! # }
//! ```
//!
//! Parsing and validation are pure: nothing here opens a file it names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listener: BTreeMap<String, RawListener>,
    #[serde(default)]
    storage: BTreeMap<String, RawStorage>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    disable_mlock: bool,
    #[serde(default)]
    log_level: Option<String>,
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    log_format: Option<String>,
    /// The address clients reach this node at (shown as the leader's
    /// address on a shared PostgreSQL store).
    #[serde(default)]
    api_addr: Option<String>,
    /// This node's name among those sharing a store.
    #[serde(default)]
    node_id: Option<String>,
    /// The name the health endpoint reports (Vault's `cluster_name`).
    #[serde(default)]
    cluster_name: Option<String>,
    /// A Rego module every policy and login role must pass when written.
    #[serde(default)]
    policy_check_rego: Option<PathBuf>,
    /// A program (and its arguments) that tries a rotation's new value.
    #[serde(default)]
    rotation_verify_command: Option<Vec<String>>,
    /// Threads serving connections (default: two per CPU).
    #[serde(default)]
    serving_threads: Option<usize>,
    /// Hosts cloud mounts may be pointed at besides the clouds' own.
    #[serde(default)]
    allowed_endpoint_hosts: Option<Vec<String>>,
    /// The directory file audit devices must write in.
    #[serde(default)]
    audit_file_dir: Option<PathBuf>,
    /// Vault's: accepted so a Vault config loads; no effect yet.
    #[serde(default)]
    cluster_addr: Option<String>,
    /// Vault's: accepted; Keybridge has no web UI.
    #[serde(default)]
    ui: Option<bool>,
    /// Vault configs may carry one; refused (devices are enabled through
    /// the API, and never log raw).
    #[serde(default)]
    audit: Option<hcl::Value>,
    /// `seal "<type>" { ... }` blocks: at most one in use and one with
    /// `disabled = "true"` (the seal a migration moves away from).
    #[serde(default)]
    seal: BTreeMap<String, hcl::Value>,
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    address: String,
    #[serde(default)]
    unauthenticated_metrics_access: Option<bool>,
    #[serde(default)]
    public_reads_per_second: Option<u32>,
    /// Vault's: accepted; metrics are kept since start.
    #[serde(default)]
    prometheus_retention_time: Option<String>,
    /// Vault's: accepted; series carry no host name.
    #[serde(default)]
    disable_hostname: Option<bool>,
}

/// A `seal` block: the key service that encrypts the root key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealBlock {
    /// `awskms`, `azurekeyvault` or `gcpckms`.
    pub kind: String,
    /// The block's settings (`disabled` taken out), as text.
    pub settings: BTreeMap<String, String>,
    /// Only unwraps: the seal a migration moves the store away from.
    pub disabled: bool,
}

impl std::fmt::Debug for SealBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Settings may hold credentials (secret_key, client_secret).
        f.debug_struct("SealBlock")
            .field("kind", &self.kind)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The HTTP listener for load balancers' health checks and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telemetry {
    pub address: SocketAddr,
    /// `GET /metrics` without a token (default true); false: a token with
    /// `read` on `sys/metrics`.
    pub unauthenticated_metrics_access: bool,
    /// Reads without a token (a PKI mount's CA and CRL) per client address
    /// and second, a burst of twice that (default 20; 0: no limit).
    pub public_reads_per_second: u32,
}

/// The seal types this build knows.
pub const SEAL_TYPES: &[&str] = &["awskms", "azurekeyvault", "gcpckms"];

fn seal_blocks(raw: BTreeMap<String, hcl::Value>) -> Result<Vec<SealBlock>, String> {
    let mut out = Vec::new();
    for (kind, value) in raw {
        if !SEAL_TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "seal type {kind:?} is not supported; use {} (or no seal block for Shamir keys)",
                SEAL_TYPES.join(", ")
            ));
        }
        // Two blocks of one type (a migration between two keys) come as an array.
        let blocks = match value {
            hcl::Value::Array(a) => a,
            v => vec![v],
        };
        for block in blocks {
            let hcl::Value::Object(fields) = block else {
                return Err(format!("seal \"{kind}\" must be a block of settings"));
            };
            let mut settings = BTreeMap::new();
            let mut disabled = false;
            for (k, v) in fields {
                let text = match v {
                    hcl::Value::String(s) => s,
                    hcl::Value::Bool(b) => b.to_string(),
                    hcl::Value::Number(n) => n.to_string(),
                    _ => return Err(format!("seal \"{kind}\": {k} must be a string")),
                };
                if k == "disabled" {
                    disabled = match text.as_str() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(format!(
                                "seal \"{kind}\": disabled must be \"true\" or \"false\", not {other:?}"
                            ));
                        }
                    };
                } else {
                    settings.insert(k, text);
                }
            }
            out.push(SealBlock { kind: kind.clone(), settings, disabled });
        }
    }
    if out.iter().filter(|b| !b.disabled).count() > 1 {
        return Err("more than one seal block is in use: keep one, and mark the one a migration moves away from with disabled = \"true\"".into());
    }
    if out.iter().filter(|b| b.disabled).count() > 1 {
        return Err("more than one seal block is disabled: a migration moves away from one seal".into());
    }
    Ok(out)
}

/// Whether an HCL value sets `log_raw = true` anywhere inside it.
fn sets_log_raw(v: &hcl::Value) -> bool {
    match v {
        hcl::Value::Object(m) => {
            m.iter().any(|(k, v)| (k == "log_raw" && *v == hcl::Value::Bool(true)) || sets_log_raw(v))
        }
        hcl::Value::Array(a) => a.iter().any(sets_log_raw),
        _ => false,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    #[serde(default)]
    tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    tls_disable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    cache_size_bytes: Option<usize>,
    #[serde(default)]
    connection_url: Option<SecretSetting>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    leader_lease: Option<String>,
    #[serde(default)]
    feed_poll_interval: Option<String>,
    #[serde(default)]
    feed_max_lag: Option<String>,
}

/// `scheme://user:password@host` becomes `scheme://user:<redacted>@host`,
/// wherever a URL with a password appears in `text`.
fn redact_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first character a URL's authority
        // cannot hold; its user info at its last '@'.
        let end = tail.find(|c: char| c.is_whitespace() || c == '"' || c == '/' || c == '?').unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@').map(|at| (at, authority[..at].find(':'))) {
            Some((at, Some(colon))) => {
                out.push_str(&authority[..=colon]);
                out.push_str("<redacted>");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A setting that is a secret (a connection URL with its password):
/// compared, never shown, wiped when dropped.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(String);

impl SecretSetting {
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretSetting {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_value_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_concurrent_requests: Option<usize>,
    request_timeout: Option<String>,
    shutdown_grace: Option<String>,
    token_requests_per_second: Option<u32>,
    token_burst: Option<u32>,
    login_requests_per_second: Option<u32>,
    login_role_requests_per_second: Option<u32>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A redb file `keybridge.db` in this directory.
    File {
        dir: PathBuf,
        cache_bytes: usize,
    },
    InMemory,
    /// A table in PostgreSQL (or a database that speaks its protocol).
    Postgres(PostgresStorage),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresStorage {
    pub connection_url: SecretSetting,
    pub table: String,
    pub max_connections: usize,
    pub tls_ca_file: Option<PathBuf>,
    pub cache_bytes: usize,
    /// How long the lead lasts unrenewed: the longest a stopped node keeps
    /// another from taking over.
    pub leader_lease: std::time::Duration,
    /// How often the node reads the change feed.
    pub feed_poll_interval: std::time::Duration,
    /// How long the node may go without reading the change feed to its
    /// end before it refuses requests (it could serve a revoked token).
    pub feed_max_lag: std::time::Duration,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_value_bytes: usize,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    /// How long a stopping server (SIGTERM, Ctrl-C) waits for open
    /// connections to finish before closing them.
    pub shutdown_grace: Duration,
    /// Per-token request rate; 0: no limit.
    pub token_requests_per_second: u32,
    /// Requests a token may make at once before the rate applies
    /// (default: one second's worth).
    pub token_burst: u32,
    /// Logins per second from one remote address (burst: twice that); 0:
    /// no limit. Default 10.
    pub login_requests_per_second: u32,
    /// Logins per second to one role of one method (burst: twice that); 0:
    /// no limit. Default 50.
    pub login_role_requests_per_second: u32,
    /// Open connections at most; a connection past it is closed at once.
    pub max_connections: usize,
    /// Open connections from one remote address at most.
    pub max_connections_per_address: usize,
    /// HTTP/2 streams one connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 512 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 4096,
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            login_requests_per_second: 10,
            login_role_requests_per_second: 50,
            max_connections: 4096,
            max_connections_per_address: 256,
            max_concurrent_streams: 256,
            token_requests_per_second: 0,
            token_burst: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub address: SocketAddr,
    pub tls: Option<Tls>,
    pub storage: Storage,
    pub limits: Limits,
    pub disable_mlock: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    /// A Rego module (file) that judges every policy and role written.
    pub policy_check_rego: Option<PathBuf>,
    /// Tries each rotation's new value (JSON on stdin; exit 0 accepts).
    pub rotation_verify_command: Option<Vec<String>>,
    /// Threads serving connections, each owning the connections it is
    /// given (see serving.rs).
    pub serving_threads: usize,
    /// Hosts a cloud mount may be pointed at besides the cloud's own (none
    /// set: any, for holders of `sudo` on the mount's path).
    pub allowed_endpoint_hosts: Option<Vec<String>>,
    /// File audit devices write only in this directory (none set: anywhere).
    pub audit_file_dir: Option<PathBuf>,
    /// Where clients reach this node.
    pub api_addr: Option<String>,
    /// This node's name among the nodes sharing a store (default: the
    /// host's name and the process id).
    pub node_id: Option<String>,
    /// Settings accepted from a Vault config that have no effect here
    /// (yet): said once in the log at start.
    pub without_effect: Vec<&'static str>,
    /// The seal in use (none: Shamir keys) and the one a migration moves
    /// away from.
    pub seals: Vec<SealBlock>,
    pub telemetry: Option<Telemetry>,
    /// Reported by the health endpoint (default `keybridge`).
    pub cluster_name: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the
    /// message as `message`, and the event's fields.
    Json,
}

/// Two serving threads per CPU. A serving thread's requests block it in
/// the kernel for short spells (audit appends, storage reads, a device's
/// lock); with one thread per CPU that CPU idles meanwhile, with two the
/// other thread runs. Measured with a file audit device at c=32 on two
/// CPUs: 17% idle and 35,600 `Get`/s with two threads, 6% and 41,000/s
/// with four (docs/BENCHMARKS.md).
pub fn default_serving_threads() -> usize {
    2 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The largest config, certificate or key file the server reads.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a file that must be a regular file (symlinks to one are fine) of
/// at most `limit` bytes. Opened without blocking, so a FIFO or device put
/// in its place is refused instead of hanging the reader (a SIGHUP reload
/// runs this), and never read past the limit (`/dev/zero` included).
pub fn read_small_file(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes; the limit is {limit}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("more than {limit} bytes")));
    }
    Ok(bytes)
}

impl Config {
    /// Reads and parses the config file at `path` (a regular file of at
    /// most 1 MiB: see [`read_small_file`]).
    pub fn load(path: &std::path::Path) -> Result<Config, Error> {
        let bytes = read_small_file(path, MAX_FILE_BYTES)
            .map_err(|e| Error::Read { path: path.display().to_string(), source: e })?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Config {
            path: path.display().to_string(),
            reason: "the file is not UTF-8 text".into(),
        })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// The settings that differ between two configs, by their names in the
    /// file, split into those SIGHUP applies (log level, rate limits) and
    /// those that need a restart.
    pub fn changes(&self, new: &Config) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut live = Vec::new();
        let mut restart = Vec::new();
        let (a, b) = (&self.limits, &new.limits);
        let mut check = |changed: bool, name: &'static str, applies: bool| {
            if changed {
                if applies { live.push(name) } else { restart.push(name) }
            }
        };
        check(self.log_level != new.log_level, "log_level", true);
        check(a.token_requests_per_second != b.token_requests_per_second, "limits.token_requests_per_second", true);
        check(a.token_burst != b.token_burst, "limits.token_burst", true);
        check(a.login_requests_per_second != b.login_requests_per_second, "limits.login_requests_per_second", true);
        check(
            a.login_role_requests_per_second != b.login_role_requests_per_second,
            "limits.login_role_requests_per_second",
            true,
        );
        check(self.log_format != new.log_format, "log_format", false);
        check(self.address != new.address, "listener address", false);
        check(self.tls != new.tls, "listener TLS files", false);
        check(self.storage != new.storage, "storage", false);
        check(a.max_value_bytes != b.max_value_bytes, "limits.max_value_bytes", false);
        check(a.max_request_bytes != b.max_request_bytes, "limits.max_request_bytes", false);
        check(a.max_concurrent_requests != b.max_concurrent_requests, "limits.max_concurrent_requests", false);
        check(a.request_timeout != b.request_timeout, "limits.request_timeout", false);
        check(a.shutdown_grace != b.shutdown_grace, "limits.shutdown_grace", false);
        check(a.max_connections != b.max_connections, "limits.max_connections", false);
        check(
            a.max_connections_per_address != b.max_connections_per_address,
            "limits.max_connections_per_address",
            false,
        );
        check(a.max_concurrent_streams != b.max_concurrent_streams, "limits.max_concurrent_streams", false);
        check(self.disable_mlock != new.disable_mlock, "disable_mlock", false);
        check(self.policy_check_rego != new.policy_check_rego, "policy_check_rego", false);
        check(self.rotation_verify_command != new.rotation_verify_command, "rotation_verify_command", false);
        check(self.serving_threads != new.serving_threads, "serving_threads", false);
        check(self.allowed_endpoint_hosts != new.allowed_endpoint_hosts, "allowed_endpoint_hosts", false);
        check(self.audit_file_dir != new.audit_file_dir, "audit_file_dir", false);
        check(self.api_addr != new.api_addr, "api_addr", false);
        check(self.node_id != new.node_id, "node_id", false);
        check(self.seals != new.seals, "seal", false);
        check(self.telemetry != new.telemetry, "telemetry", false);
        check(self.cluster_name != new.cluster_name, "cluster_name", false);
        (live, restart)
    }

    pub fn parse(path: &str, text: &str) -> Result<Config, Error> {
        let bad = |reason: String| Error::Config { path: path.to_string(), reason };
        // A parse error may quote the line it failed on: never a password.
        let raw: RawConfig = hcl::from_str(text).map_err(|e| bad(redact_passwords(&e.to_string())))?;

        if let Some(audit) = &raw.audit {
            return Err(bad(if sets_log_raw(audit) {
                "audit: log_raw = true is refused: it would write tokens and secret values to the audit log in \
                 plaintext, where Keybridge writes only their HMACs; enable devices with `keybridge audit enable`"
                    .into()
            } else {
                "audit blocks are not read from the config: enable devices with `keybridge audit enable` (they \
                 are kept in the store)"
                    .into()
            }));
        }
        if raw.listener.len() != 1 {
            return Err(bad(format!("expected exactly one listener \"tcp\" block, found {}", raw.listener.len())));
        }
        let (kind, listener) = raw.listener.into_iter().next().expect("one listener");
        if kind != "tcp" {
            return Err(bad(format!("listener type {kind:?} is not supported; use listener \"tcp\"")));
        }
        let address: SocketAddr = listener.address.parse().map_err(|_| {
            bad(format!("listener address {:?} is not host:port (e.g. 0.0.0.0:8400)", listener.address))
        })?;
        let tls = match (listener.tls_disable, listener.tls_cert_file, listener.tls_key_file) {
            (true, None, None) => None,
            (true, _, _) => {
                return Err(bad("tls_disable = true conflicts with tls_cert_file/tls_key_file".into()));
            }
            (false, Some(cert_file), Some(key_file)) => Some(Tls { cert_file, key_file }),
            (false, _, _) => {
                return Err(bad(
                    "the listener needs tls_cert_file and tls_key_file, or tls_disable = true for plaintext".into(),
                ));
            }
        };

        if raw.storage.len() != 1 {
            return Err(bad(format!("expected exactly one storage block, found {}", raw.storage.len())));
        }
        let (kind, storage) = raw.storage.into_iter().next().expect("one storage");
        let postgres_only = storage.connection_url.is_some()
            || storage.table.is_some()
            || storage.max_connections.is_some()
            || storage.tls_ca_file.is_some()
            || storage.leader_lease.is_some()
            || storage.feed_poll_interval.is_some()
            || storage.feed_max_lag.is_some();
        let storage = match kind.as_str() {
            "file" if postgres_only => {
                return Err(bad("storage \"file\" takes path and cache_size_bytes only (connection_url, table, \
                     max_connections, tls_ca_file, leader_lease, feed_poll_interval and feed_max_lag are \
                     storage \"postgresql\"'s)"
                    .into()));
            }
            "file" => Storage::File {
                dir: storage.path.ok_or_else(|| bad("storage \"file\" needs path = \"/some/dir\"".into()))?,
                cache_bytes: storage.cache_size_bytes.unwrap_or(DEFAULT_CACHE_BYTES),
            },
            "inmem" => Storage::InMemory,
            "postgresql" if storage.path.is_some() => {
                return Err(bad("storage \"postgresql\" takes no path: it keeps everything in its table".into()));
            }
            "postgresql" => {
                let duration = |name: &str, v: Option<String>, default: u64, min: u64, max: u64| {
                    use std::time::Duration;
                    match v {
                        None => Ok(Duration::from_millis(default)),
                        Some(v) => humantime::parse_duration(&v)
                            .ok()
                            .filter(|d| (Duration::from_millis(min)..=Duration::from_millis(max)).contains(d))
                            .ok_or_else(|| {
                                bad(format!(
                                    "storage \"postgresql\": {name} {v:?} must be a duration from {} to {}",
                                    humantime::format_duration(Duration::from_millis(min)),
                                    humantime::format_duration(Duration::from_millis(max))
                                ))
                            }),
                    }
                };
                let feed_poll_interval = duration("feed_poll_interval", storage.feed_poll_interval, 50, 10, 5_000)?;
                let feed_max_lag = duration("feed_max_lag", storage.feed_max_lag, 5_000, 1_000, 600_000)?;
                if feed_max_lag < feed_poll_interval * 4 {
                    return Err(bad(format!(
                        "storage \"postgresql\": feed_max_lag ({}) must be at least four feed_poll_intervals ({})",
                        humantime::format_duration(feed_max_lag),
                        humantime::format_duration(feed_poll_interval * 4)
                    )));
                }
                Storage::Postgres(PostgresStorage {
                connection_url: storage.connection_url.ok_or_else(|| {
                    bad("storage \"postgresql\" needs connection_url = \"postgresql://user:password@host:5432/db?sslmode=verify-full\"".into())
                })?,
                table: storage.table.unwrap_or_else(|| "keybridge_store".into()),
                max_connections: storage.max_connections.unwrap_or(16),
                tls_ca_file: storage.tls_ca_file,
                cache_bytes: storage.cache_size_bytes.unwrap_or(DEFAULT_CACHE_BYTES),
                leader_lease: match storage.leader_lease {
                    None => std::time::Duration::from_secs(15),
                    Some(v) => humantime::parse_duration(&v)
                        .ok()
                        .filter(|d| (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600)).contains(d))
                        .ok_or_else(|| bad(format!("storage \"postgresql\": leader_lease {v:?} must be a duration from 1s to 10m")))?,
                },
                feed_poll_interval,
                feed_max_lag,
            })
            }
            other => {
                return Err(bad(format!(
                    "storage type {other:?} is not supported; use \"file\", \"postgresql\" or \"inmem\""
                )));
            }
        };

        let mut limits = Limits::default();
        if let Some(l) = raw.limits {
            if let Some(v) = l.max_value_bytes {
                limits.max_value_bytes = v;
            }
            if let Some(v) = l.max_request_bytes {
                limits.max_request_bytes = v;
            }
            if let Some(v) = l.max_concurrent_requests {
                limits.max_concurrent_requests = v;
            }
            if let Some(v) = l.token_requests_per_second {
                limits.token_requests_per_second = v;
            }
            if let Some(v) = l.token_burst {
                limits.token_burst = v;
            }
            if let Some(v) = l.login_requests_per_second {
                limits.login_requests_per_second = v;
            }
            if let Some(v) = l.login_role_requests_per_second {
                limits.login_role_requests_per_second = v;
            }
            if let Some(v) = l.max_connections {
                limits.max_connections = v;
            }
            if let Some(v) = l.max_connections_per_address {
                limits.max_connections_per_address = v;
            }
            if let Some(v) = l.max_concurrent_streams {
                limits.max_concurrent_streams = v;
            }
            if let Some(v) = l.request_timeout {
                limits.request_timeout = humantime::parse_duration(&v)
                    .map_err(|e| bad(format!("limits.request_timeout {v:?}: {e} (e.g. \"30s\")")))?;
                if limits.request_timeout < std::time::Duration::from_secs(1) {
                    return Err(bad(format!(
                        "limits.request_timeout {v:?}: give at least 1s (every call would be stopped at once)"
                    )));
                }
            }
            if let Some(v) = l.shutdown_grace {
                limits.shutdown_grace = humantime::parse_duration(&v)
                    .map_err(|e| bad(format!("limits.shutdown_grace {v:?}: {e} (e.g. \"5s\")")))?;
            }
        }
        if limits.max_value_bytes == 0
            || limits.max_request_bytes < 1024
            || limits.max_concurrent_requests == 0
            || limits.max_connections == 0
            || limits.max_connections_per_address == 0
            || limits.max_concurrent_streams == 0
        {
            return Err(bad("limits must be positive (max_request_bytes at least 1024)".into()));
        }
        if limits.max_request_bytes <= limits.max_value_bytes {
            return Err(bad(format!(
                "limits.max_request_bytes ({}) must be larger than limits.max_value_bytes ({})",
                limits.max_request_bytes, limits.max_value_bytes
            )));
        }
        let log_level = raw.log_level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(bad(format!("log_level {log_level:?} is not a level (trace, debug, info, warn, error)")));
        }
        let log_format = match raw.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(bad(format!("log_format {other:?} is not \"text\" or \"json\""))),
        };
        let serving_threads = match raw.serving_threads {
            None => default_serving_threads(),
            Some(n @ 1..=1024) => n,
            Some(n) => {
                return Err(bad(format!(
                    "serving_threads = {n}: give 1 to 1024 threads, or leave it out for two per CPU"
                )));
            }
        };
        Ok(Config {
            address,
            tls,
            storage,
            limits,
            disable_mlock: raw.disable_mlock,
            serving_threads,
            log_level,
            log_format,
            policy_check_rego: raw.policy_check_rego,
            api_addr: raw.api_addr,
            node_id: match raw.node_id {
                Some(id)
                    if (1..=64).contains(&id.len())
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
                {
                    Some(id)
                }
                Some(id) => {
                    return Err(bad(format!(
                        "node_id {id:?} must be 1-64 of A-Z, a-z, 0-9, '.', '_' and '-' (it names audit files)"
                    )));
                }
                None => None,
            },
            without_effect: {
                let mut notes = Vec::new();
                if raw.cluster_addr.is_some() {
                    notes.push("cluster_addr has no effect yet: nodes coordinate through the PostgreSQL store, not a cluster port");
                }
                if raw.ui.is_some() {
                    notes.push("ui has no effect: Keybridge has no web UI (use the CLI, the gRPC API or Terraform)");
                }
                if raw.telemetry.as_ref().is_some_and(|t| t.prometheus_retention_time.is_some()) {
                    notes.push("telemetry.prometheus_retention_time has no effect: metrics count from the start");
                }
                if raw.telemetry.as_ref().is_some_and(|t| t.disable_hostname.is_some()) {
                    notes.push(
                        "telemetry.disable_hostname has no effect: series carry no host name (node_id labels the node)",
                    );
                }
                notes
            },
            seals: seal_blocks(raw.seal).map_err(bad)?,
            cluster_name: match raw.cluster_name {
                None => "keybridge".into(),
                Some(n) if (1..=128).contains(&n.len()) && !n.chars().any(char::is_control) => n,
                Some(n) => return Err(bad(format!("cluster_name {n:?} must be 1 to 128 printable characters"))),
            },
            telemetry: match raw.telemetry {
                None => None,
                Some(t) => Some(Telemetry {
                    address: t.address.parse().map_err(|_| {
                        bad(format!("telemetry address {:?} is not host:port (e.g. 0.0.0.0:8402)", t.address))
                    })?,
                    unauthenticated_metrics_access: t.unauthenticated_metrics_access.unwrap_or(true),
                    public_reads_per_second: t.public_reads_per_second.unwrap_or(20),
                }),
            },
            audit_file_dir: match raw.audit_file_dir {
                Some(d) if !d.is_absolute() => {
                    return Err(bad(format!("audit_file_dir {} must be an absolute path", d.display())));
                }
                d => d,
            },
            allowed_endpoint_hosts: match raw.allowed_endpoint_hosts {
                Some(hosts) => Some(
                    hosts
                        .into_iter()
                        .map(|h| {
                            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                            if h.is_empty() || h.contains(['/', ':', ' ']) {
                                Err(bad(format!(
                                    "allowed_endpoint_hosts: {h:?} is not a host name or address (give hosts, not URLs)"
                                )))
                            } else {
                                Ok(h)
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                None => None,
            },
            rotation_verify_command: match raw.rotation_verify_command {
                Some(v) if v.is_empty() || v[0].is_empty() => {
                    return Err(bad("rotation_verify_command needs a program, e.g. [\"/usr/local/bin/check\"]".into()));
                }
                v => v,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "listener \"tcp\" {\n address = \"127.0.0.1:8400\"\n tls_disable = true\n}\nstorage \"inmem\" {}\n";

    #[test]
    fn the_origin_documents_seal_block_and_a_migrations_two_blocks_parse() {
        let c = Config::parse(
            "t.hcl",
            &format!(
                "{BASE}seal \"awskms\" {{\n  region = \"us-east-1\"\n  kms_key_id = \"alias/vault-unseal-key\"\n}}\n"
            ),
        )
        .unwrap();
        assert_eq!(c.seals.len(), 1);
        assert_eq!(c.seals[0].kind, "awskms");
        assert!(!c.seals[0].disabled);
        assert_eq!(c.seals[0].settings.get("kms_key_id").map(String::as_str), Some("alias/vault-unseal-key"));
        // One key to another of the same type: two blocks, one disabled.
        let c = Config::parse(
            "t.hcl",
            &format!(
                "{BASE}seal \"awskms\" {{\n kms_key_id = \"a\"\n disabled = \"true\"\n}}\nseal \"awskms\" {{\n kms_key_id = \"b\"\n}}\ntelemetry {{\n address = \"127.0.0.1:8402\"\n unauthenticated_metrics_access = false\n}}\n"
            ),
        )
        .unwrap();
        assert_eq!(c.seals.iter().filter(|b| b.disabled).count(), 1);
        assert_eq!(c.seals.iter().find(|b| !b.disabled).unwrap().settings["kms_key_id"], "b");
        let t = c.telemetry.unwrap();
        assert_eq!(t.address.port(), 8402);
        assert!(!t.unauthenticated_metrics_access);
        assert!(!format!("{:?}", c.seals).contains("kms_key_id\": \"b"), "Debug shows setting names only");
    }

    #[test]
    fn seal_blocks_that_cannot_work_are_refused_with_a_reason() {
        for (text, why) in [
            ("seal \"vaultkms\" { }", "not supported"),
            (
                "seal \"awskms\" { kms_key_id = \"a\" }\nseal \"gcpckms\" { project = \"p\" }",
                "more than one seal block is in use",
            ),
            (
                "seal \"awskms\" {\n disabled = \"true\"\n}\nseal \"gcpckms\" {\n disabled = true\n}",
                "more than one seal block is disabled",
            ),
            ("seal \"awskms\" { disabled = \"maybe\" }", "disabled must be"),
            ("telemetry { address = \"nowhere\" }", "telemetry address"),
        ] {
            let e = Config::parse("t.hcl", &format!("{BASE}{text}\n")).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn vault_shaped_config_parses() {
        let c = Config::parse(
            "t.hcl",
            r#"
            listener "tcp" {
              address       = "127.0.0.1:8400"
              tls_cert_file = "/tls/server.crt"
              tls_key_file  = "/tls/server.key"
            }
            storage "file" {
              path = "/data"
            }
            limits {
              max_value_bytes = 1024
              request_timeout = "5s"
              shutdown_grace = "2s"
            }
            api_addr = "https://kb.internal:8400"
            disable_mlock = true
            serving_threads = 3
            allowed_endpoint_hosts = ["Vault.Internal.", "127.0.0.1"]
            audit_file_dir = "/var/log/keybridge"
            "#,
        )
        .unwrap();
        assert_eq!(c.address.port(), 8400);
        assert!(c.tls.is_some());
        assert!(matches!(c.storage, Storage::File { .. }));
        assert_eq!(c.limits.max_value_bytes, 1024);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(2));
        assert!(c.disable_mlock);
        assert_eq!(c.serving_threads, 3);
        assert_eq!(c.allowed_endpoint_hosts, Some(vec!["vault.internal".to_string(), "127.0.0.1".to_string()]));
        assert_eq!(c.audit_file_dir, Some(PathBuf::from("/var/log/keybridge")));
    }

    /// A Vault server config with only its storage block replaced loads;
    /// what has no effect here says so; a raw audit log is refused.
    #[test]
    fn a_vault_config_loads_and_log_raw_is_refused() {
        let vault = "storage \"postgresql\" {\n connection_url = \"postgresql://kb:pw@db/kb?sslmode=verify-full\"\n}\n\
                     listener \"tcp\" {\n address = \"0.0.0.0:8200\"\n tls_cert_file = \"/etc/vault/tls.crt\"\n\
                     tls_key_file = \"/etc/vault/tls.key\"\n}\n\
                     api_addr = \"https://vault.example.com:8200\"\ncluster_addr = \"https://node1.example.com:8201\"\n\
                     ui = true\ndisable_mlock = true\n";
        let c = Config::parse("vault.hcl", vault).unwrap();
        assert!(c.disable_mlock);
        assert_eq!(c.api_addr.as_deref(), Some("https://vault.example.com:8200"));
        assert_eq!(c.without_effect.len(), 2);
        assert!(c.without_effect[0].starts_with("cluster_addr") && c.without_effect[1].starts_with("ui"));
        let raw = format!("{vault}audit {{\n file {{\n log_raw = true\n }}\n}}\n");
        let e = Config::parse("vault.hcl", &raw).unwrap_err().to_string();
        assert!(e.contains("log_raw = true is refused") && e.contains("plaintext"), "{e}");
        let other = format!("{vault}audit {{\n file {{\n path = \"/x\"\n }}\n}}\n");
        let e = Config::parse("vault.hcl", &other).unwrap_err().to_string();
        assert!(e.contains("keybridge audit enable"), "{e}");
    }

    #[test]
    fn parse_errors_never_quote_a_password() {
        assert_eq!(
            redact_passwords("at 2:5: connection_url = \"postgresql://kb:s3:cr@t@db:5432/kb?sslmode=disable\" oops"),
            "at 2:5: connection_url = \"postgresql://kb:<redacted>@db:5432/kb?sslmode=disable\" oops"
        );
        assert_eq!(
            redact_passwords("https://kb.internal:8400/x and http://user@h/"),
            "https://kb.internal:8400/x and http://user@h/"
        );
        let text = "storage \"postgresql\" {\n connection_url = \"postgresql://kb:hunter2@db/kb\" x\n}\n";
        let err = Config::parse("t.hcl", text).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_postgresql_block_has_defaults_and_never_shows_its_url() {
        let text = "listener \"tcp\" {\n address = \"127.0.0.1:1\"\n tls_disable = true\n}\n\
                    storage \"postgresql\" {\n connection_url = \"postgresql://kb:s3cret@db:5432/kb?sslmode=verify-full\"\n\
                    tls_ca_file = \"/etc/kb/ca.pem\"\n}\n";
        let c = Config::parse("t.hcl", text).unwrap();
        let Storage::Postgres(p) = &c.storage else { panic!("{:?}", c.storage) };
        assert_eq!((p.table.as_str(), p.max_connections), ("keybridge_store", 16));
        assert_eq!(p.tls_ca_file.as_deref(), Some(std::path::Path::new("/etc/kb/ca.pem")));
        assert!(p.connection_url.expose().contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn mistakes_are_named() {
        let listener = |body: &str| format!("listener \"tcp\" {{\n{body}\n}}\n");
        let file = "storage \"file\" {\n path = \"/d\"\n}\n";
        let cases = [
            (listener("address = \"x\"\ntls_disable = true") + file, "host:port"),
            (listener("address = \"127.0.0.1:1\"") + file, "tls_disable"),
            (
                listener("address = \"127.0.0.1:1\"\ntls_disable = true") + "storage \"raft\" {\n path = \"/d\"\n}\n",
                "not supported",
            ),
            (listener("address = \"127.0.0.1:1\"\ntls_disable = true\ncolour = 1") + file, "colour"),
            (file.to_string(), "listener"),
            (listener("address = \"127.0.0.1:1\"\ntls_disable = true") + file + "serving_threads = 0\n", "1 to 1024"),
            (
                listener("address = \"127.0.0.1:1\"\ntls_disable = true")
                    + file
                    + "limits {\n request_timeout = \"0s\"\n}\n",
                "at least 1s",
            ),
            (
                listener("address = \"127.0.0.1:1\"\ntls_disable = true")
                    + file
                    + "limits {\n shutdown_grace = \"soon\"\n}\n",
                "limits.shutdown_grace \"soon\"",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::parse("t.hcl", &text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
