//! Builds and runs the gRPC server: services, health, reflection, TLS,
//! limits, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use keybridge_barrier::{Barrier, Physical, RedbStore};
use keybridge_core::{Core, CoreConfig};
use keybridge_proto::v1 as pb;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::{Config, Storage};
use crate::error::Error;
use crate::hygiene;
use crate::service::{
    AuditService, AuthService, PoliciesService, SecretsService, SysService, TokensService, sync_health,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct DevOptions {
    pub root_token_id: Option<String>,
}

/// An opened store: the store, the directory snapshots are staged in, and
/// (on PostgreSQL) the store itself, for its leader lease.
pub(crate) struct Opened {
    pub physical: Arc<dyn Physical>,
    pub staging_dir: PathBuf,
    #[cfg(feature = "postgres")]
    pub postgres: Option<Arc<keybridge_store_postgres::PostgresStore>>,
}

/// Opens the configured store.
pub(crate) async fn open_store(storage: &Storage) -> Result<Opened, Error> {
    let own = |physical: Arc<dyn Physical>, staging_dir: PathBuf| Opened {
        physical,
        staging_dir,
        #[cfg(feature = "postgres")]
        postgres: None,
    };
    match storage {
        #[cfg(feature = "postgres")]
        Storage::Postgres(p) => {
            let settings = keybridge_store_postgres::Settings {
                connection_url: zeroize::Zeroizing::new(p.connection_url.expose().to_string()),
                table: p.table.clone(),
                max_connections: p.max_connections,
                tls_ca_file: p.tls_ca_file.clone(),
                cache_bytes: p.cache_bytes,
            };
            let store = Arc::new(
                keybridge_store_postgres::PostgresStore::connect(&settings)
                    .await
                    .map_err(|e| Error::Usage(e.to_string()))?,
            );
            Ok(Opened { physical: store.clone(), staging_dir: std::env::temp_dir(), postgres: Some(store) })
        }
        #[cfg(not(feature = "postgres"))]
        Storage::Postgres(_) => Err(Error::Usage(
            "storage \"postgresql\": this build has no PostgreSQL store (build with the postgres feature)".into(),
        )),
        Storage::InMemory => Ok(own(Arc::new(RedbStore::in_memory()?), std::env::temp_dir())),
        Storage::File { dir, cache_bytes } => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Read { path: dir.display().to_string(), source: e })?;
            restrict_dir(dir);
            let file = dir.join("keybridge.db");
            let store = RedbStore::open(&file, *cache_bytes)?;
            if let Some(took) = store.repaired() {
                tracing::warn!(
                    file = %file.display(),
                    took = ?took,
                    "the store was not closed cleanly (the server was killed or crashed); redb checked and repaired it"
                );
            }
            Ok(own(Arc::new(store), dir.clone()))
        }
    }
}

/// This node on a PostgreSQL table that several nodes share: every node
/// serves; the one holding the table's leader lease runs the singleton
/// work. Two tasks run until the process ends:
/// - the lease: taken when free and renewed every quarter of it; the core
///   runs the singleton work while it holds (a lost or fenced lease stops
///   it, and the node goes on serving as a standby);
/// - the change feed: what other nodes commit is dropped from this node's
///   caches (`Core::changed_elsewhere`); a node that has not followed the
///   feed within `feed_max_lag` refuses requests (see [`serves`]).
#[cfg(feature = "postgres")]
fn join(
    store: &Arc<keybridge_store_postgres::PostgresStore>,
    core: &Arc<Core>,
    api_addr: &str,
    p: &crate::config::PostgresStorage,
) -> Vec<tokio::task::JoinHandle<()>> {
    let node = node_id().to_string();
    store.lead_as(&node, api_addr);
    core.set_leading(false);
    let _ = SHARED.set(Shared { store: store.clone(), lease: p.leader_lease, feed_max_lag: p.feed_max_lag });
    let lease = p.leader_lease;
    let leadership = {
        let (store, core) = (store.clone(), core.clone());
        tokio::spawn(async move {
            let mut held: Option<u64> = None;
            let mut said_waiting = false;
            loop {
                // A node resumed after a pause stops its singleton work at
                // once, before it learns whether another took over.
                if held.is_some() && !lease_holds() {
                    core.set_leading(false);
                }
                let sent = Instant::now();
                match tokio::time::timeout(lease / 4, store.try_lead(lease)).await {
                    Ok(Ok(Some(epoch))) => {
                        lease_renewed(sent, lease);
                        if held != Some(epoch) {
                            tracing::info!(node = %node_id(), epoch, "this node leads the PostgreSQL table");
                            held = Some(epoch);
                        }
                        core.set_leading(true);
                        beat(&store, "leader").await;
                    }
                    Ok(Ok(None)) => {
                        core.set_leading(false);
                        if let Some(epoch) = held.take() {
                            tracing::warn!(
                                epoch,
                                "another node leads the PostgreSQL table now; this node serves as a standby"
                            );
                        } else if !said_waiting {
                            let leader = store.leader().await.ok();
                            tracing::info!(
                                leader = leader.as_ref().map_or("", |l| l.node.as_str()),
                                leader_address = leader.as_ref().map_or("", |l| l.api_addr.as_str()),
                                "another node leads this PostgreSQL table; this node serves as a standby"
                            );
                            said_waiting = true;
                        }
                        beat(&store, "standby").await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot reach PostgreSQL for the leader lease; trying again")
                    }
                    Err(_) => tracing::warn!("renewing the leader lease took over a quarter of it; trying again"),
                }
                if held.is_some() && !lease_holds() {
                    core.set_leading(false);
                }
                tokio::time::sleep(lease / 4).await;
            }
        })
    };
    let feed = {
        let core = core.clone();
        tokio::spawn(store.clone().follow(p.feed_poll_interval, move |change| {
            let core = core.clone();
            async move {
                use keybridge_core::coherence::Changed;
                match change {
                    keybridge_store_postgres::Change::Keys(keys) => core.changed_elsewhere(Changed::Keys(&keys)).await,
                    keybridge_store_postgres::Change::Everything => core.changed_elsewhere(Changed::Everything).await,
                    keybridge_store_postgres::Change::Own(keys) => core.changed_here(&keys),
                }
            }
        }))
    };
    vec![leadership, feed]
}

static NODE_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This node's id: `node_id` from the configuration, else its hostname and
/// process id.
pub(crate) fn node_id() -> &'static str {
    NODE_ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Refuses a node id another live node uses (two nodes would share audit
/// files and checkpoints, and one members row). A node restarted after a
/// crash finds its own last heartbeat: it waits up to a lease for it to
/// age.
#[cfg(feature = "postgres")]
async fn unique_node(store: &keybridge_store_postgres::PostgresStore, lease: std::time::Duration) -> Result<(), Error> {
    let deadline = Instant::now() + lease + lease / 4;
    loop {
        let members = store.members(lease).await.map_err(|e| Error::Usage(format!("storage \"postgresql\": {e}")))?;
        if !members.iter().any(|m| m.alive && m.node == node_id()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Usage(format!(
                "node_id {:?} is in use by a live node on this PostgreSQL table: give each node its own node_id",
                node_id()
            )));
        }
        tracing::info!(node = %node_id(), "a node with this node_id was seen within the lease; waiting for it to age");
        tokio::time::sleep(lease / 4).await;
    }
}

/// This node on a shared PostgreSQL table: for the gate, `operator
/// status` and `Sys/Members`.
#[cfg(feature = "postgres")]
pub(crate) struct Shared {
    pub store: Arc<keybridge_store_postgres::PostgresStore>,
    pub lease: std::time::Duration,
    pub feed_max_lag: std::time::Duration,
}

#[cfg(feature = "postgres")]
pub(crate) static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();

/// Until when (milliseconds since [`since_start`]'s origin) this node may
/// run singleton work without a newer renewal: four fifths of the lease
/// after the last renewal that went through was sent (the lease runs from
/// when the database ran it, which is later).
#[cfg(feature = "postgres")]
static LEASE_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "postgres")]
fn since_start(at: Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX - 1)
}

#[cfg(feature = "postgres")]
fn lease_renewed(sent: Instant, lease: std::time::Duration) {
    let until = since_start(sent).saturating_add(u64::try_from((lease * 4 / 5).as_millis()).unwrap_or(0));
    LEASE_UNTIL.store(until, std::sync::atomic::Ordering::Release);
}

#[cfg(feature = "postgres")]
fn lease_holds() -> bool {
    since_start(Instant::now()) < LEASE_UNTIL.load(std::sync::atomic::Ordering::Acquire)
}

/// Whether this node may serve requests: always, but on a shared
/// PostgreSQL table while it has not followed the change feed within
/// `feed_max_lag` (it could honour a token or a policy another node
/// changed). The reason, when it may not.
pub(crate) fn serves() -> Result<(), String> {
    #[cfg(feature = "postgres")]
    if let Some(shared) = SHARED.get() {
        let age = shared.store.feed_age();
        if age.is_none_or(|a| a > shared.feed_max_lag) {
            return Err(format!(
                "this node has not followed the store's change feed {} (PostgreSQL unreachable or slow), so it could \
                 honour a revoked token: retry on another node",
                match age {
                    Some(a) => format!("for {}s", a.as_secs()),
                    None => "yet".into(),
                }
            ));
        }
    }
    Ok(())
}

/// Records this node in the members table (a failure is only logged: the
/// lease, not the heartbeat, decides who leads).
#[cfg(feature = "postgres")]
async fn beat(store: &keybridge_store_postgres::PostgresStore, state: &str) {
    if let Err(e) = store.heartbeat(state).await {
        tracing::warn!(error = %e, "cannot record this node in the members table");
    }
}

fn restrict_dir(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict the storage directory to its owner");
    }
}

pub async fn run(
    config: Config,
    dev: Option<DevOptions>,
    config_path: Option<PathBuf>,
    log: LogControl,
) -> Result<(), Error> {
    let started = Instant::now();
    for note in &config.without_effect {
        tracing::info!("{note}");
    }
    if let Some(id) = &config.node_id {
        let _ = NODE_ID.set(id.clone());
    }
    let signals = Box::pin(stop_signals()?);
    // SIGHUP too, at once: one that arrives while the store opens waits for
    // the reload task instead of killing the process (its default action).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Usage(format!("cannot handle SIGHUP: {e}")))?;
    if let Err(e) = hygiene::disable_core_dumps() {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    hygiene::quiet_panics();
    // Connections, store and audit files are descriptors: room for
    // max_connections of them plus the server's own (a margin of 256).
    let open_files = hygiene::raise_open_files();
    let needed = (config.limits.max_connections as u64).saturating_add(256);
    if open_files > 0 && open_files < needed {
        tracing::warn!(
            open_files,
            max_connections = config.limits.max_connections,
            "the open-file limit is below max_connections + 256: raise it (LimitNOFILE) or lower max_connections, or accepts will fail with EMFILE"
        );
    }
    if config.disable_mlock {
        tracing::info!("memory locking disabled by configuration (disable_mlock = true)");
    } else if let Err(e) = hygiene::lock_memory() {
        // As Vault: a server that cannot keep keys out of swap does not
        // start, unless told to; a throwaway dev server only warns.
        if dev.is_none() {
            return Err(Error::Mlock(e));
        }
        tracing::warn!(error = %e, "dev server: cannot lock memory (mlockall); keys could be swapped to disk");
    }

    let Opened {
        physical,
        staging_dir,
        #[cfg(feature = "postgres")]
        postgres,
    } = open_store(&config.storage).await?;
    #[cfg(feature = "wasm")]
    fn plugin_runtime() -> Result<Option<Arc<dyn keybridge_core::plugins::PluginRuntime>>, Error> {
        let host = keybridge_wasm_host::WasmHost::new(keybridge_wasm_host::HostConfig::default())
            .map_err(|e| Error::Usage(e.to_string()))?;
        Ok(Some(Arc::new(host)))
    }
    #[cfg(not(feature = "wasm"))]
    fn plugin_runtime() -> Result<Option<Arc<dyn keybridge_core::plugins::PluginRuntime>>, Error> {
        Ok(None)
    }
    /// The built-in engines this build has (features `database`, `pki`),
    /// handed to the core as one `BuiltinEngines`.
    #[allow(unused_mut, clippy::vec_init_then_push)]
    fn builtin_engines(config: &Config) -> Option<Arc<dyn keybridge_core::plugins::BuiltinEngines>> {
        let mut all: Vec<Arc<dyn keybridge_core::plugins::BuiltinEngines>> = Vec::new();
        #[cfg(feature = "database")]
        all.push(Arc::new(keybridge_engine_database::Builtins {
            allowed_hosts: config.allowed_endpoint_hosts.clone(),
        }));
        #[cfg(feature = "pki")]
        all.push(Arc::new(keybridge_engine_pki::Builtins));
        let _ = config;
        Builtins::of(all)
    }
    let policy_check = match &config.policy_check_rego {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Read { path: path.display().to_string(), source: e })?;
            let module = keybridge_policy::rego::RegoModule::parse(&path.display().to_string(), &text)
                .map_err(|e| Error::Usage(format!("policy_check_rego: {e}")))?;
            Some(Arc::new(module))
        }
        None => None,
    };
    let barrier = Barrier::new(physical);
    let seals = crate::seal::build(&config.seals).await?;
    let auto_seal = seals.current.is_some() || seals.previous.is_some();
    if dev.is_some() && auto_seal {
        return Err(Error::Usage("dev mode has no seal blocks".into()));
    }
    barrier.set_seals(seals);
    let core = Arc::new(Core::new(
        barrier,
        CoreConfig {
            max_value_bytes: config.limits.max_value_bytes,
            policy_check,
            providers: Some(Arc::new(keybridge_providers::Built)),
            rotation_verify: config.rotation_verify_command.clone().map(|argv| {
                Arc::new(crate::verify::CommandVerifier { argv }) as Arc<dyn keybridge_core::RotationVerifier>
            }),
            plugins: plugin_runtime()?,
            builtin_engines: builtin_engines(&config),
            allowed_endpoint_hosts: config.allowed_endpoint_hosts.clone(),
            audit_file_dir: config.audit_file_dir.clone(),
            node: keybridge_core::audit::Node {
                id: node_id().to_string(),
                shared: matches!(config.storage, Storage::Postgres(_)),
                file_dir: config.audit_file_dir.clone(),
            },
        },
    ));

    let dev_init = match &dev {
        Some(d) => Some(core.init(1, 1, d.root_token_id.as_deref(), true).await?),
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    sync_health(&core, &health).await;
    // Both reflection versions: v1, and v1alpha for the clients that speak
    // only it (grpcio's reflection client, grpcui, several IDE plugins).
    // Each lists every service served, the other reflection version too.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Usage(format!("reflection setup: {e}")))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| Error::Usage(format!("reflection setup: {e}")))?;

    let max = config.limits.max_request_bytes;
    // Set when a stop begins (SIGTERM, Ctrl-C): the serving threads stop
    // accepting and drain, and watch streams end (see `until_stopping`).
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let secrets =
        pb::secrets_server::SecretsServer::new(SecretsService { core: core.clone(), stopping: stopping.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let sys = pb::sys_server::SysServer::new(SysService {
        core: core.clone(),
        health: health.clone(),
        version: VERSION,
        staging_dir,
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let policies = pb::policies_server::PoliciesServer::new(PoliciesService { core: core.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let tokens = pb::tokens_server::TokensServer::new(TokensService { core: core.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let login_limits = crate::ratelimit::LoginLimits::new(
        config.limits.login_requests_per_second,
        config.limits.login_role_requests_per_second,
    );
    let auth = pb::auth_server::AuthServer::new(AuthService { core: core.clone(), login_limits: login_limits.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let audit = pb::audit_server::AuditServer::new(AuditService { core: core.clone(), stopping })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let sync = pb::sync_server::SyncServer::new(crate::service_sync::SyncService {
        core: core.clone(),
        request_timeout: config.limits.request_timeout,
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    // On a shared PostgreSQL table: the lease and the change feed.
    #[cfg(feature = "postgres")]
    let shared_tasks = match (&postgres, &config.storage) {
        (Some(store), Storage::Postgres(p)) => {
            unique_node(store, p.leader_lease).await?;
            join(store, &core, config.api_addr.as_deref().unwrap_or(""), p)
        }
        _ => Vec::new(),
    };
    // The auto seal unseals the node now and whenever it finds itself
    // sealed; the health service follows the seal state.
    if auto_seal {
        let (core, health) = (core.clone(), health.clone());
        tokio::spawn(async move {
            let c = core.clone();
            crate::seal::keep_unsealed(core, move || {
                let (c, health) = (c.clone(), health.clone());
                async move { sync_health(&c, &health).await }
            })
            .await
        });
    }
    // Health checks and metrics over plain HTTP, when configured.
    if let Some(t) = &config.telemetry {
        let local = crate::telemetry::start(
            t.address,
            crate::telemetry::Telemetry {
                core: core.clone(),
                version: VERSION,
                cluster_name: config.cluster_name.clone(),
                api_addr: config.api_addr.clone().unwrap_or_default(),
                unauthenticated_metrics_access: t.unauthenticated_metrics_access,
                public_reads: crate::ratelimit::AddressLimit::new(t.public_reads_per_second),
            },
        )
        .await?;
        println!("Telemetry on http://{local} (/v1/sys/health, /metrics, public reads under /v1/)");
    }
    // The reconciler: idle while sealed, replicating and scanning otherwise.
    tokio::spawn(core.clone().sync_worker());
    tokio::spawn(core.clone().lease_worker());
    tokio::spawn(core.clone().engine_worker());
    let logical = pb::logical_server::LogicalServer::new(crate::service_logical::LogicalService { core: core.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max.max(16 << 20));
    let leases = pb::leases_server::LeasesServer::new(crate::service_logical::LeasesService { core: core.clone() })
        .max_decoding_message_size(max);
    // Components arrive in chunks; each message stays under the usual limit.
    let plugins = pb::plugins_server::PluginsServer::new(crate::service_logical::PluginsService::new(core.clone()))
        .max_decoding_message_size(max.max(4 << 20));

    // HTTP/2 limits, set here rather than left to defaults (docs:
    // docs/CONFIGURATION.md):
    // - streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS), and
    //   requests in flight per connection behind them;
    // - a 16 KiB header list (a token and a request id need a few hundred
    //   bytes);
    // - keepalive PINGs every 60 s, a connection that does not answer in
    //   20 s is closed;
    // - rapid reset (CVE-2023-44487): h2 0.4 counts streams a client resets
    //   before the server accepted them; past 20 pending, the connection is
    //   closed with GOAWAY; and streams the server itself resets for errors
    //   are capped too (256).
    let builder = Server::builder()
        .concurrency_limit_per_connection(config.limits.max_concurrent_requests)
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .http2_max_header_list_size(16 * 1024)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(256));

    let listener = TcpListener::bind(config.address)
        .await
        .map_err(|e| Error::Listen { addr: config.address.to_string(), source: e })?;
    let local: SocketAddr =
        listener.local_addr().map_err(|e| Error::Listen { addr: config.address.to_string(), source: e })?;
    // Accepted connections get TCP_NODELAY: small gRPC frames must not wait
    // for delayed ACKs (Nagle), which costs ~40 ms per request.
    let rate_limit =
        crate::ratelimit::TokenRateLimitLayer::new(config.limits.token_requests_per_second, config.limits.token_burst);
    // TLS is terminated by the serving threads with a certificate SIGHUP can replace.
    let certs = match &config.tls {
        Some(tls) => Some(crate::tls::Reloadable::open(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
    let acceptor = certs.as_ref().map(|c| c.acceptor()).transpose()?;

    // SIGHUP: audit devices reopen their files (after logrotate moved them),
    // and the config file is read again: the log level and rate limits
    // apply at once, every other change is named as needing a restart.
    {
        let mut hup = hangup;
        let core = core.clone();
        let reload = Reload {
            path: config_path,
            current: config.clone(),
            log,
            rate_limit: rate_limit.clone(),
            login_limits,
            certs: certs.clone(),
        };
        tokio::spawn(async move {
            let mut reload = reload;
            while hup.recv().await.is_some() {
                let failed = core.reopen_audit().await;
                if failed.is_empty() {
                    tracing::info!("audit devices reopened");
                } else {
                    tracing::error!(failed = %failed.join("; "), "audit devices failed to reopen");
                }
                reload.apply();
            }
        });
    }
    let incoming =
        TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(std::time::Duration::from_secs(60)));
    let scheme = if config.tls.is_some() { "https" } else { "http" };

    // It holds the dev root token and unseal key: wiped when dropped.
    let mut banner = zeroize::Zeroizing::new(String::new());
    if let Some(init) = &dev_init {
        banner.push_str("WARNING: dev mode. The store lives in memory, the server starts unsealed,\n");
        banner.push_str("and the root token is printed below. Do not run dev mode in production.\n\n");
        banner.push_str(&format!("    export KEYBRIDGE_ADDR='{scheme}://{local}'\n"));
        banner.push_str(&format!("    export KEYBRIDGE_TOKEN='{}'\n\n", init.root_token.as_str()));
        banner.push_str(&format!("Unseal Key: {}\n", init.keys[0].as_str()));
        banner.push_str(&format!("Root Token: {}\n\n", init.root_token.as_str()));
    }
    banner.push_str(&format!(
        "==> Keybridge server started! Listening on {scheme}://{local} (in {:?})\n",
        started.elapsed()
    ));
    // Written, not println!'d: a closed stdout loses the banner but must not
    // stop the server.
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, banner.as_bytes()).and_then(|()| std::io::Write::flush(&mut out));
    drop((out, banner));
    tracing::info!(address = %local, tls = config.tls.is_some(), storage = core.seal_status().await?.storage_type, "serving");

    // The tower layers every request passes, outermost first:
    // 1. `authorization` is marked sensitive, before anything can log it;
    // 2. a request id: the client's `x-request-id`, or a new UUID;
    // 3. a tracing span per request carrying that id and the gRPC method
    //    (debug level: `KEYBRIDGE_LOG=tower_http=debug`);
    // 4. the request id is copied onto the response;
    // 5. the per-token rate limit (when configured);
    // 6. the audited layer (audited.rs): the operation named from the route,
    //    and the response record of any call whose handler wrote none;
    // 7. the token checked from the headers alone, before any of the body
    //    is read (gate.rs), for every method that needs one;
    // then the services, which authenticate, authorize and route (tonic's
    // per-connection concurrency limit is outside all of these, its wait
    // for a slot not bounded by the deadline). Between the metrics and the rate
    // limit, the request deadline (deadline.rs: `limits.request_timeout`, or
    // the client's sooner `grpc-timeout`): a call it cuts short drops the
    // audited layer's slot, which then records the response itself, and is
    // answered DEADLINE_EXCEEDED, counted in the metrics as such.
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let layers = tower::ServiceBuilder::new()
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([http::header::AUTHORIZATION]))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            tower_http::trace::TraceLayer::new_for_grpc()
                .make_span_with(|req: &http::Request<_>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::debug_span!("request", id = %id, method = %req.uri().path())
                })
                // A NOT_FOUND or PERMISSION_DENIED is an answer, not a server
                // failure; internal errors are logged where they happen.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(crate::telemetry::MeasuredLayer { core: core.clone() })
        .layer(crate::deadline::DeadlineLayer { limit: config.limits.request_timeout })
        .layer(rate_limit.clone())
        .layer(crate::audited::AuditedLayer::new(core.clone()))
        .layer(crate::gate::AuthGateLayer::new(core.clone()));
    let router = builder
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(secrets)
        .add_service(sys)
        .add_service(policies)
        .add_service(tokens)
        .add_service(audit)
        .add_service(auth)
        .add_service(sync)
        .add_service(logical)
        .add_service(leases)
        .add_service(plugins);
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signals.await;
        // Stop first, then say so: nothing said can keep the server up.
        on_signal.send_replace(true);
        tracing::info!("shutting down");
    });
    crate::serving::serve(
        router,
        |router, conns, stop| router.serve_with_incoming_shutdown(conns, stop),
        incoming,
        crate::serving::Settings {
            threads: config.serving_threads,
            grace: config.limits.shutdown_grace,
            max_connections: config.limits.max_connections,
            max_connections_per_address: config.limits.max_connections_per_address,
            tls: acceptor,
        },
        stop,
    )
    .await?;
    // Audit devices write their last checkpoint.
    core.shutdown().await;
    // The next node need not wait for the lease to run out (the renewals
    // stop first, so none runs after the release).
    #[cfg(feature = "postgres")]
    if let Some(store) = &postgres {
        core.set_leading(false);
        for t in shared_tasks {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = store.step_down().await {
            tracing::warn!(error = %e, "could not give up the lead of the PostgreSQL table");
        }
        let _ = store.forget_me().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Several built-in engines as the core's one `BuiltinEngines`: each mount
/// type goes to the engine that serves it.
struct Builtins(Vec<Arc<dyn keybridge_core::plugins::BuiltinEngines>>);

impl Builtins {
    /// `None` when the build has no built-in engine.
    fn of(
        all: Vec<Arc<dyn keybridge_core::plugins::BuiltinEngines>>,
    ) -> Option<Arc<dyn keybridge_core::plugins::BuiltinEngines>> {
        if all.is_empty() { None } else { Some(Arc::new(Builtins(all))) }
    }

    fn serving(&self, kind: &str) -> Option<&Arc<dyn keybridge_core::plugins::BuiltinEngines>> {
        self.0.iter().find(|b| b.kinds().contains(&kind))
    }
}

#[async_trait::async_trait]
impl keybridge_core::plugins::BuiltinEngines for Builtins {
    fn kinds(&self) -> Vec<&'static str> {
        self.0.iter().flat_map(|b| b.kinds()).collect()
    }

    fn validate(&self, kind: &str, config: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
        match self.serving(kind) {
            Some(b) => b.validate(kind, config),
            None => Err(format!("no built-in engine serves mount type {kind:?}")),
        }
    }

    async fn open(
        &self,
        kind: &str,
        config: &std::collections::BTreeMap<String, String>,
        storage: Arc<dyn keybridge_core::plugins::EngineStorage>,
        passwords: Arc<dyn keybridge_core::plugins::PasswordPolicies>,
    ) -> Result<Arc<dyn keybridge_core::plugins::PluginEngine>, keybridge_core::plugins::EngineError> {
        match self.serving(kind) {
            Some(b) => b.open(kind, config, storage, passwords).await,
            None => Err(keybridge_core::plugins::EngineError::Unsupported(format!(
                "no built-in engine serves mount type {kind:?}"
            ))),
        }
    }
}

/// SIGTERM and SIGINT, registered at once: a signal that arrives before
/// the server is serving still stops it (instead of killing it with the
/// default action, store left unclosed).
fn stop_signals() -> Result<impl std::future::Future<Output = ()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Usage(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Usage(format!("cannot handle SIGINT: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// The log filter for a level from the config: that level for Keybridge,
/// warnings and up for the HTTP/2 stack.
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("{level},h2=warn,tower=warn,hyper=warn"))
}

/// Changes the log level of the running process.
pub struct LogControl {
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    /// `KEYBRIDGE_LOG` was set: it wins over `log_level`.
    from_env: bool,
}

impl LogControl {
    pub fn new(
        handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
        from_env: bool,
    ) -> LogControl {
        LogControl { handle, from_env }
    }
}

/// What SIGHUP reloads.
struct Reload {
    path: Option<PathBuf>,
    current: Config,
    log: LogControl,
    rate_limit: crate::ratelimit::TokenRateLimitLayer,
    login_limits: crate::ratelimit::LoginLimits,
    certs: Option<Arc<crate::tls::Reloadable>>,
}

impl Reload {
    /// Reads the config file again and applies what can change while
    /// running; says what changed, what was applied and what needs a
    /// restart. A file that does not parse changes nothing.
    fn apply(&mut self) {
        let Some(path) = &self.path else {
            tracing::info!("dev mode: no config file to reload");
            return;
        };
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config not reloaded; the running settings stay");
                return;
            }
        };
        let (live, restart) = self.current.changes(&new);
        let mut applied = Vec::new();
        for name in &live {
            match *name {
                "log_level" if self.log.from_env => {
                    tracing::warn!("log_level changed, but KEYBRIDGE_LOG is set and wins; the log level stays");
                    continue;
                }
                "log_level" => {
                    if let Err(e) = self.log.handle.reload(log_filter(&new.log_level)) {
                        tracing::error!(error = %e, "log level not changed");
                        continue;
                    }
                }
                "limits.token_requests_per_second" | "limits.token_burst" => {
                    self.rate_limit.set(new.limits.token_requests_per_second, new.limits.token_burst);
                }
                _ => self
                    .login_limits
                    .set(new.limits.login_requests_per_second, new.limits.login_role_requests_per_second),
            }
            applied.push(*name);
        }
        if let Some(certs) = &self.certs {
            match certs.reload() {
                Ok(()) => tracing::info!(
                    cert_file = %certs.cert_file().display(),
                    key_file = %certs.key_file().display(),
                    "TLS certificate and key reloaded from their files; new connections use them"
                ),
                Err(e) => tracing::error!(error = %e, "TLS certificate and key not reloaded; the running pair stays"),
            }
        }
        if applied.is_empty() && restart.is_empty() {
            tracing::info!(file = %path.display(), "config reloaded: no change");
        }
        if !applied.is_empty() {
            tracing::info!(file = %path.display(), applied = %applied.join(", "), "config reloaded");
        }
        if !restart.is_empty() {
            tracing::warn!(
                file = %path.display(),
                not_applied = %restart.join(", "),
                "changed settings need a restart to apply; the running values stay"
            );
        }
        // What runs now: the live settings from the new file (the four rate
        // limits are always in force as read; unchanged ones are equal), the
        // log level if it applied, the rest as before.
        if applied.contains(&"log_level") {
            self.current.log_level = new.log_level.clone();
        }
        let (now, read) = (&mut self.current.limits, &new.limits);
        now.token_requests_per_second = read.token_requests_per_second;
        now.token_burst = read.token_burst;
        now.login_requests_per_second = read.login_requests_per_second;
        now.login_role_requests_per_second = read.login_role_requests_per_second;
    }
}
