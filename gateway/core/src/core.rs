//! The core: lifecycle and every operation. Each public operation runs
//! authenticate → authorize → route, in that order, and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use keybridge_barrier::{Barrier, KeyInfo, Stamp, WriteBatch};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::audit::{self, AuditData, Caller};
use crate::backend::cloud::{self, CloudMount, MountStats, Providers};
use crate::mounts::{self, MountEntry, MountTable};
use crate::path::normalize_mount_path;
use crate::tokens::{self as token, Identity, Salt, TokenEntry};
use crate::{Error, Result, Timestamp};
use keybridge_barrier::fill_cache::FillCache;

pub(crate) const MOUNTS_KEY: &str = "core/mounts";
const PURGE_CHUNK: usize = 512;

pub struct CoreConfig {
    /// The largest value a secret may hold, unless a mount sets less.
    pub max_value_bytes: usize,
    /// A Rego module every policy and login role must pass when written.
    pub policy_check: Option<Arc<keybridge_policy::rego::RegoModule>>,
    /// The cloud adapters this build has (none: local mounts only).
    pub providers: Option<Arc<dyn Providers>>,
    /// Tries a rotation's new value between staging and promotion.
    pub rotation_verify: Option<Arc<dyn crate::reconciler::RotationVerifier>>,
    /// Runs plugin engines (none: plugin mounts are refused).
    pub plugins: Option<Arc<dyn crate::plugins::PluginRuntime>>,
    /// Engines built into the binary, by mount type (`database`).
    pub builtin_engines: Option<Arc<dyn crate::plugins::BuiltinEngines>>,
    /// Hosts a cloud mount may be pointed at besides the cloud's own (none:
    /// any, for holders of `sudo` on the mount's path).
    pub allowed_endpoint_hosts: Option<Vec<String>>,
    /// The directory file audit devices must write in (none: anywhere).
    pub audit_file_dir: Option<std::path::PathBuf>,
    /// This node: its id (for `{node}` in audit file paths) and whether
    /// other nodes share its store (each then keeps its own audit chains).
    pub node: keybridge_audit::Node,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_value_bytes: 512 * 1024,
            policy_check: None,
            providers: None,
            rotation_verify: None,
            plugins: None,
            builtin_engines: None,
            allowed_endpoint_hosts: None,
            audit_file_dir: None,
            node: keybridge_audit::Node::default(),
        }
    }
}

impl Core {
    /// Runs the configured Rego check over `inputs`; its `deny` messages
    /// refuse the write.
    pub(crate) fn policy_check(&self, inputs: &[serde_json::Value]) -> Result<()> {
        let Some(module) = &self.config.policy_check else { return Ok(()) };
        let mut denied = Vec::new();
        for input in inputs {
            let msgs =
                module.deny(input).map_err(|e| Error::FailedPrecondition(format!("the policy check failed: {e}")))?;
            for m in msgs {
                let at = input["path"].as_str().map(|p| format!("path {p:?}: ")).unwrap_or_default();
                denied.push(format!("{at}{m}"));
            }
        }
        if denied.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!("refused by the configured policy check: {}", denied.join("; "))))
        }
    }
}

/// An auth failure's reason for the metrics: no token, or one not honoured.
fn token_failure(caller: &Caller) -> &'static str {
    if caller.bearer().is_none_or(|t| t.is_empty()) { "missing_token" } else { "invalid_token" }
}

pub struct InitResult {
    /// Unseal keys, or with an auto seal (`recovery`) recovery keys.
    pub keys: Vec<Zeroizing<String>>,
    pub threshold: u32,
    pub root_token: Zeroizing<String>,
    pub recovery: bool,
}

#[derive(Clone, Debug)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    /// The keys operators hold: unseal keys, or recovery keys (`recovery`).
    pub shares: u32,
    pub threshold: u32,
    pub progress: u32,
    pub storage_type: &'static str,
    /// `shamir`, `awskms`, `azurekeyvault` or `gcpckms`.
    pub seal_type: String,
    pub recovery: bool,
    /// A seal migration waits for the held keys, entered with `migrate`.
    pub migration: bool,
    /// Why a sealed node stays sealed (an auto-unseal's failure, a seal
    /// configuration that does not match the store's); empty otherwise.
    pub message: String,
}

/// What an operation needs on its path, as in Vault's ACL vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    Create,
    Read,
    Update,
    Delete,
    List,
    Sudo,
}

impl Capability {
    pub fn name(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
        }
    }
}

pub(crate) struct Unsealed {
    /// The mount table and the stamp it was read or written with.
    pub(crate) mounts: RwLock<(Arc<MountTable>, Stamp)>,
    pub(crate) salt: Salt,
    /// Token entries by hash, so a request does not read and decrypt its
    /// token's entry every time. An operation that revokes or changes a
    /// token removes it here after its commit. Gone with the rest of this
    /// state on seal.
    pub(crate) tokens: FillCache<String, Arc<TokenEntry>>,
    /// Merged ACLs by sorted policy names; cleared when a policy changes.
    pub(crate) acls: FillCache<Vec<String>, Arc<keybridge_policy::Acl>>,
    pub(crate) audit: audit::Broker,
    pub(crate) auth: RwLock<crate::auth_methods::AuthState>,
    /// Cloud mounts' clients by mount id, built on first use.
    pub(crate) clouds: RwLock<HashMap<String, Arc<CloudMount>>>,
    /// Plugin mounts' engines by mount id, built on first use. Replaced on
    /// tune (an upgrade): calls in flight keep the engine they started on.
    pub(crate) engines: RwLock<HashMap<String, Arc<dyn crate::plugins::PluginEngine>>>,
    /// Bumped when another node's change drops clients or engines: one
    /// built from what was read before is used once, not kept.
    pub(crate) dropped: std::sync::atomic::AtomicU64,
}

const TOKEN_CACHE_MAX: usize = 8192;
const ACL_CACHE_MAX: usize = 1024;

impl Unsealed {
    pub(crate) fn table(&self) -> Arc<MountTable> {
        self.mounts.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Whether a client or engine built from `mount`, begun when `dropped`
    /// read `since`, may be kept: nothing was dropped meanwhile and the
    /// mount is still as it was.
    pub(crate) fn keeps(&self, mount: &MountEntry, since: u64) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Acquire) == since
            && self.table().entries.iter().any(|m| m == mount)
    }
}

/// How long disabling an engine mount waits for its calls in progress.
const MOUNT_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Core {
    pub(crate) barrier: Arc<Barrier>,
    pub(crate) config: CoreConfig,
    pub(crate) unsealed: RwLock<Option<Arc<Unsealed>>>,
    /// Serialises lifecycle and mount-table changes.
    pub(crate) admin: Mutex<()>,
    /// Lock stripes of the local engine's writes (innermost: taken last).
    pub(crate) write_locks: Stripes,
    /// Lock stripes of whole-secret operations (cloud writes, replica and
    /// rotation steps), which may run a local write while held: a stripe set
    /// of their own, so a hash collision can never make a task wait for a
    /// lock it holds.
    pub(crate) path_locks: Stripes,
    /// Leases: their store, due index and locks (taken while a path lock
    /// may be held).
    pub(crate) leases: Arc<crate::leases::LeaseManager>,
    /// Slots of engine calls in progress (see `engine_request`).
    pub(crate) engine_calls: Arc<tokio::sync::Semaphore>,
    /// Each mount's share of them, by mount id (an entry per mount ever
    /// called since start: a few bytes each).
    pub(crate) engine_calls_by_mount: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// The reconciler's in-memory state.
    pub(crate) sync: keybridge_reconciler::Reconciler,
    /// Whether this node runs the singleton work (the reconciler's passes,
    /// lease expiry, purges): always on a store no other node shares; on a
    /// shared one, while the server holds the store's leader lease.
    pub(crate) leading: tokio::sync::watch::Sender<bool>,
    /// How many times other nodes' changes were told (see
    /// `Core::changed_elsewhere`).
    pub(crate) remote_changes: std::sync::atomic::AtomicU64,
    /// Sealed by request: the auto seal does not unseal until asked.
    auto_unseal_held: std::sync::atomic::AtomicBool,
    /// The node's Prometheus series.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// When an unseal attempt was last asked for without a key.
    last_asked_unseal: std::sync::Mutex<Option<std::time::Instant>>,
    /// Mounts seen half-removed, by id, and since when.
    pub(crate) pending_purges: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// The runtime the core was built on, which lives as long as the
    /// process: threads of the core's own (audit writers) run their async
    /// steps on it, never on the runtime of the request that started them
    /// (a serving thread's, which stops first at shutdown).
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Test hook: the next load of a cache ("token", "rules", "auth") signals once it
    /// has read the store, then waits to be released before it fills.
    #[cfg(test)]
    pub(crate) load_holds: Arc<std::sync::Mutex<HashMap<&'static str, LoadHold>>>,
}

/// See `Core::load_holds`; for a task that holds the map, not the core.
#[cfg(test)]
pub(crate) async fn load_hold(holds: &std::sync::Mutex<HashMap<&'static str, LoadHold>>, what: &str) {
    let hold = holds.lock().unwrap_or_else(|p| p.into_inner()).remove(what);
    if let Some((reached, release)) = hold {
        let _ = reached.send(());
        let _ = release.await;
    }
}

#[cfg(test)]
pub(crate) type LoadHold = (tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>);

const WRITE_LOCK_STRIPES: usize = 256;

/// A fixed set of locks; a key takes the one its hash picks, so tasks on
/// one key queue while most others do not meet.
pub struct Stripes(Vec<Mutex<()>>);

impl Stripes {
    pub(crate) fn new(n: usize) -> Stripes {
        Stripes((0..n).map(|_| Mutex::new(())).collect())
    }

    pub(crate) async fn lock(&self, key: impl std::hash::Hash) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        self.0[(h.finish() % self.0.len() as u64) as usize].lock().await
    }
}

/// Runs a background pass forever: again after the pause it asks for, at
/// once when `wake` fires, every 500 ms while sealed, after 1 s when it
/// failed (logged as `what`).
///
/// A pass is leader work (`keybridge_barrier::leader_work`): it runs only
/// while this node leads (always, on a store no other node shares), and
/// its commits and external calls are fenced on the epoch it leads at.
pub(crate) async fn run_passes<F, Fut>(core: &Core, what: &str, wake: &tokio::sync::Notify, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::time::Duration>>,
{
    use std::time::Duration;
    let mut leading = core.leading.subscribe();
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        let wait = match core.barrier.leader_work(pass()).await {
            Ok(d) => d,
            Err(Error::Sealed) => Duration::from_millis(500),
            Err(Error::Unavailable(m)) if !*leading.borrow() => {
                tracing::info!("{what}: stopped: this node no longer leads ({m})");
                Duration::ZERO
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what}: a pass failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

pub(crate) fn encode_json<T: serde::Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(v).expect("plain data serializes"))
}

impl Core {
    pub fn new(barrier: Barrier, config: CoreConfig) -> Self {
        let barrier = Arc::new(barrier);
        Core {
            engine_calls: Arc::new(tokio::sync::Semaphore::new(crate::backend::plugin::ENGINE_CALLS_MAX)),
            engine_calls_by_mount: Default::default(),
            leases: Arc::new(crate::leases::LeaseManager::new(
                barrier.clone(),
                WRITE_LOCK_STRIPES,
                config.node.id.clone(),
            )),
            sync: keybridge_reconciler::Reconciler::new(barrier.clone(), config.rotation_verify.clone()),
            barrier,
            config,
            unsealed: RwLock::new(None),
            admin: Mutex::new(()),
            write_locks: Stripes::new(WRITE_LOCK_STRIPES),
            path_locks: Stripes::new(WRITE_LOCK_STRIPES),
            leading: tokio::sync::watch::Sender::new(true),
            pending_purges: Default::default(),
            remote_changes: Default::default(),
            auto_unseal_held: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            last_asked_unseal: Default::default(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            #[cfg(test)]
            load_holds: Default::default(),
        }
    }

    /// Says whether this node leads the singleton work (the server, from
    /// the shared store's leader lease).
    pub fn set_leading(&self, on: bool) {
        self.leading.send_if_modified(|cur| std::mem::replace(cur, on) != on);
    }

    /// Whether the node is unsealed now (memory only; `seal_status` reads
    /// the store).
    pub fn is_unsealed(&self) -> bool {
        self.unsealed().is_ok()
    }

    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Refuses an operation that only the leading node can answer.
    pub(crate) fn leader_only(&self, what: &str) -> Result<()> {
        if self.is_leading() {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "{what} runs on the leading node only: send it there (`keybridge operator status` shows its address)"
        )))
    }

    pub(crate) fn unsealed(&self) -> Result<Arc<Unsealed>> {
        self.unsealed.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(Error::Sealed)
    }

    fn set_unsealed(&self, l: Option<Unsealed>) {
        *self.unsealed.write().unwrap_or_else(|p| p.into_inner()) = l.map(Arc::new);
    }

    /// Drops the unsealed state, after the audit devices wrote their last
    /// checkpoint.
    pub(crate) async fn unload(&self) {
        let old = self.unsealed.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(l) = old {
            l.audit.shutdown().await;
        }
    }

    /// Stops cleanly (the server is exiting): audit devices checkpoint.
    pub async fn shutdown(&self) {
        let _guard = self.admin.lock().await;
        self.unload().await;
    }

    // ----- lifecycle -------------------------------------------------------

    pub async fn seal_status(&self) -> Result<SealStatus> {
        let s = self.barrier.state().await?;
        let sealed = s.sealed || self.unsealed().is_err();
        let mut message = s.message;
        if sealed && message.is_empty() && self.auto_unseal_held.load(std::sync::atomic::Ordering::Acquire) {
            message = "sealed by request: the auto seal waits for the recovery keys or a restart".into();
        }
        Ok(SealStatus {
            initialized: s.initialized,
            sealed,
            shares: s.shares,
            threshold: s.threshold,
            progress: s.progress,
            storage_type: self.barrier.storage_kind(),
            seal_type: s.kind,
            recovery: s.recovery,
            migration: s.migration,
            message,
        })
    }

    /// Creates the root key (split into `shares`), the default `secret/`
    /// mount and a root token, in one atomic write. The server stays sealed
    /// afterwards, unless `stay_unsealed` (dev mode).
    pub async fn init(
        &self,
        shares: u32,
        threshold: u32,
        root_token_id: Option<&str>,
        stay_unsealed: bool,
    ) -> Result<InitResult> {
        let _guard = self.admin.lock().await;
        if let Some(id) = root_token_id {
            token::validate_token_id(id)?;
        }
        let root_token = root_token_id.map_or_else(token::generate_token, |id| Zeroizing::new(id.to_string()));
        let salt = Salt::generate();
        let (entry_key, hash) = salt.entry_key(&root_token);
        let now = Timestamp::now();
        let entry = TokenEntry {
            hash,
            policies: vec![token::ROOT_POLICY.into()],
            display_name: "root".into(),
            created: now,
            expires: None,
            parent: None,
            ttl_secs: 0,
            max_expires: None,
            renewable: false,
            num_uses: 0,
            accessor: token::generate_accessor(),
            meta: BTreeMap::new(),
            revoking: false,
        };
        let mut table = MountTable::default();
        table.add(MountEntry {
            id: uuid::Uuid::new_v4().to_string(),
            path: "secret/".into(),
            kind: "local".into(),
            description: "key/value secret storage".into(),
            config: BTreeMap::new(),
            created: now,
            deleting: false,
        })?;
        let initial = vec![
            (MOUNTS_KEY.to_string(), encode_json(&table)),
            (token::SALT_KEY.to_string(), salt.bytes()),
            (format!("{}{}", token::ACCESSOR_PREFIX, entry.accessor), Zeroizing::new(entry.hash.clone().into_bytes())),
            (entry_key, encode_json(&entry)),
            (
                crate::policies::policy_key(crate::policies::DEFAULT_POLICY),
                Zeroizing::new(crate::policies::DEFAULT_POLICY_TEXT.as_bytes().to_vec()),
            ),
        ];
        let recovery = self.barrier.has_auto_seal();
        let keys = self.barrier.initialize(shares, threshold, initial).await?;
        // With an auto seal the node unseals by itself: it stays unsealed.
        if stay_unsealed || recovery {
            if let Err(e) = self.load().await {
                self.barrier.seal();
                return Err(e);
            }
        } else {
            self.barrier.seal();
        }
        Ok(InitResult { keys, threshold, root_token, recovery })
    }

    /// Reads the state the core keeps in memory while unsealed.
    pub(crate) async fn load(&self) -> Result<()> {
        let told = self.remote_changes.load(std::sync::atomic::Ordering::Acquire);
        let (mounts, mounts_stamp) = self.read_mounts().await?;
        let salt = self
            .barrier
            .get(token::SALT_KEY)
            .await?
            .ok_or_else(|| Error::Corrupt { key: token::SALT_KEY.into(), reason: "missing".into() })?;
        let pending: Vec<MountEntry> = mounts.entries.iter().filter(|m| m.deleting).cloned().collect();
        let runtime = self.runtime.clone().unwrap_or_else(tokio::runtime::Handle::current);
        let audit = audit::Broker::load(self.barrier.clone(), runtime, self.config.node.clone()).await?;
        let (auth_table, auth_stamp) = crate::auth_methods::load_table(self).await?;
        self.set_unsealed(Some(Unsealed {
            mounts: RwLock::new((Arc::new(mounts), mounts_stamp)),
            salt: Salt::from_bytes(salt),
            tokens: FillCache::new(TOKEN_CACHE_MAX),
            acls: FillCache::new(ACL_CACHE_MAX),
            audit,
            auth: RwLock::new(crate::auth_methods::AuthState {
                table: auth_table,
                stamp: auth_stamp,
                parsed: HashMap::new(),
                dropped: 0,
            }),
            clouds: RwLock::new(HashMap::new()),
            engines: RwLock::new(HashMap::new()),
            dropped: Default::default(),
        }));
        self.leases.load().await?;
        self.sync.reload();
        // Another node changed something while this state was being read
        // (and this node, sealed, could not apply it): read it all again.
        if self.remote_changes.load(std::sync::atomic::Ordering::Acquire) != told
            && !Box::pin(self.apply_changes(crate::coherence::Changed::Everything)).await
        {
            return Err(Error::Unavailable(
                "another node changed the store while this one read it, and reading it again failed: unseal again"
                    .into(),
            ));
        }
        // Finish removing mounts a crash interrupted (the leading node's
        // reconciler pass does it on a shared store).
        if self.is_leading() {
            for m in pending {
                self.barrier.leader_work(self.purge_mount(&m)).await?;
            }
        }
        Ok(())
    }

    /// Enters one share of the keys operators hold: an unseal key, with an
    /// auto seal a recovery key (the threshold of them has the key service
    /// unseal the node, even one sealed by request), or with `migrate` a
    /// share towards a pending seal migration. With an auto seal and no key:
    /// an unseal attempt now, unless the node was sealed by request.
    pub async fn unseal(&self, key: &str, reset: bool, migrate: bool) -> Result<SealStatus> {
        let _guard = self.admin.lock().await;
        if reset {
            self.barrier.reset_progress();
            return self.seal_status().await;
        }
        if self.unsealed().is_ok() && !migrate {
            return self.seal_status().await;
        }
        if key.trim().is_empty() {
            if !self.barrier.has_auto_seal() {
                return Err(Error::InvalidArgument("give an unseal key, or reset = true".into()));
            }
            // Anyone may ask for an attempt now (after an outage); only the
            // recovery keys, or a restart, lift a seal by request.
            if self.auto_unseal_held.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::FailedPrecondition(
                    "this node was sealed by request: enter the recovery keys to unseal it, or restart it".into(),
                ));
            }
            // Asking needs no token: at most one attempt a second reaches
            // the key service (the retry task makes its own).
            let now = std::time::Instant::now();
            let recent = {
                let mut last = self.last_asked_unseal.lock().unwrap_or_else(|p| p.into_inner());
                let recent = last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1));
                if !recent {
                    *last = Some(now);
                }
                recent
            };
            if !recent {
                self.auto_unseal_locked().await?;
            }
            return self.seal_status().await;
        }
        let state = self.barrier.enter_share(key, migrate).await?;
        if !state.sealed {
            self.auto_unseal_held.store(false, std::sync::atomic::Ordering::Release);
        }
        if !state.sealed
            && let Err(e) = self.load().await
        {
            self.barrier.seal();
            self.set_unsealed(None);
            return Err(e);
        }
        self.seal_status().await
    }

    /// Unseals with the node's auto seal, unless it was sealed by request.
    /// `Ok(true)`: it unsealed now.
    pub async fn auto_unseal(&self) -> Result<bool> {
        if self.auto_unseal_held.load(std::sync::atomic::Ordering::Acquire) || self.unsealed().is_ok() {
            return Ok(false);
        }
        let _guard = self.admin.lock().await;
        // Again under the lock: a Seal may have finished meanwhile.
        if self.auto_unseal_held.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        self.auto_unseal_locked().await
    }

    async fn auto_unseal_locked(&self) -> Result<bool> {
        if self.unsealed().is_ok() || !self.barrier.auto_unseal().await? {
            return Ok(false);
        }
        if let Err(e) = self.load().await {
            self.barrier.seal();
            self.set_unsealed(None);
            return Err(e);
        }
        Ok(true)
    }

    pub async fn seal(&self, caller: &Caller) -> Result<SealStatus> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/seal", Capability::Sudo).await?;
        let _guard = self.admin.lock().await;
        // The response is recorded while the devices still run.
        self.finish(caller, Ok(()), |_| Vec::new()).await?;
        // A node sealed by request stays sealed: its auto seal waits.
        self.auto_unseal_held.store(true, std::sync::atomic::Ordering::Release);
        self.unload().await;
        self.barrier.seal();
        self.seal_status().await
    }

    // ----- authentication and authorization ---------------------------------

    /// See `load_holds`.
    #[cfg(test)]
    pub(crate) async fn load_hold(&self, what: &str) {
        load_hold(&self.load_holds, what).await
    }

    /// Who is calling. A failure is audited here (the request will not
    /// reach `authorize`) and answered with one generic error.
    pub async fn authenticate(&self, caller: &Caller) -> Result<Identity> {
        match self.identify(caller.bearer()).await {
            Ok(id) => Ok(id),
            Err(e) => {
                if matches!(e, Error::Unauthenticated) {
                    self.metrics.auth_failure("token", token_failure(caller));
                    if caller.state().reason.is_none() {
                        caller.set_reason("missing, unknown, expired or revoked token");
                    }
                }
                self.audit_request(caller, Some(&e)).await;
                Err(e)
            }
        }
    }

    /// Whether the caller's token is one the server knows and that has not
    /// expired or been revoked, without spending a use of a use-limited one:
    /// the gateway's check before it reads a request's body. A refusal is
    /// audited as [`Core::authenticate`] audits it.
    pub async fn precheck(&self, caller: &Caller) -> Result<()> {
        let r = async {
            let loaded = self.unsealed()?;
            let token = caller.bearer().filter(|t| !t.is_empty() && t.len() <= 1024).ok_or(Error::Unauthenticated)?;
            let hash = loaded.salt.hash(token);
            if let Ok(entry) = loaded.tokens.lookup(hash.as_str()) {
                return token::verify(entry, &hash, Timestamp::now()).map(|_| ());
            }
            let key = token::entry_key_of(&hash);
            let raw = self.barrier.get(&key).await?.ok_or(Error::Unauthenticated)?;
            let entry: TokenEntry =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?;
            token::verify(Arc::new(entry), &hash, Timestamp::now()).map(|_| ())
        }
        .await;
        if let Err(e @ Error::Unauthenticated) = &r {
            self.metrics.auth_failure("token", token_failure(caller));
            if caller.state().reason.is_none() {
                caller.set_reason("missing, unknown, expired or revoked token");
            }
            self.audit_request(caller, Some(e)).await;
        }
        r
    }

    pub(crate) async fn identify(&self, token: Option<&str>) -> Result<Identity> {
        let loaded = self.unsealed()?;
        let token = token.filter(|t| !t.is_empty()).ok_or(Error::Unauthenticated)?;
        if token.len() > 1024 {
            return Err(Error::Unauthenticated);
        }
        let hash = loaded.salt.hash(token);
        let entry = match loaded.tokens.lookup(hash.as_str()) {
            Ok(e) => e,
            Err(ticket) => {
                let key = token::entry_key_of(&hash);
                let raw = self.barrier.get(&key).await?.ok_or(Error::Unauthenticated)?;
                let entry: Arc<TokenEntry> = Arc::new(
                    serde_json::from_slice(&raw)
                        .map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?,
                );
                if entry.num_uses > 0 {
                    // Use-limited tokens are never cached: each use is a write.
                    token::verify(entry, &hash, Timestamp::now())?;
                    return self.consume_use(&loaded, &key, &hash).await;
                }
                #[cfg(test)]
                self.load_hold("token").await;
                loaded.tokens.fill(ticket, hash.clone(), entry.clone());
                entry
            }
        };
        token::verify(entry, &hash, Timestamp::now())
    }

    /// Deny by default: the token's policies, merged into an ACL, must grant
    /// `cap` on `path`. Operations that need `sudo` need `update` there too,
    /// as in Vault. The root policy grants everything. Then the request is
    /// audited, allowed or not; an allowed request that no audit device
    /// could record is refused (fail closed).
    pub async fn authorize(&self, caller: &Caller, id: &Identity, path: &str, cap: Capability) -> Result<()> {
        let decision = self.decide(id, path, cap).await;
        self.record_decision(caller, id, path, cap, decision).await
    }

    /// Audits an authorization decision (the request record) and passes it
    /// on; fails closed when no device could record an allowed request.
    pub(crate) async fn record_decision(
        &self,
        caller: &Caller,
        id: &Identity,
        path: &str,
        cap: Capability,
        decision: Result<()>,
    ) -> Result<()> {
        if !self.auditing() {
            return decision;
        }
        {
            let mut st = caller.state();
            st.auth = Some(id.entry());
            st.acl_path = Some(path.to_string());
            st.capability = Some(cap.name());
        }
        self.audit_request(caller, decision.as_ref().err()).await;
        decision?;
        if caller.state().audit_failed {
            return Err(Error::AuditFailed(
                "no enabled audit device could record the request, so it was not carried out".into(),
            ));
        }
        Ok(())
    }

    /// The capability a write needs on `path`: `create` when `exists` says
    /// the target is new, `update` otherwise. A caller holding neither is
    /// refused (and audited) before `exists` runs, with one message for both.
    pub(crate) async fn write_capability<F, Fut>(
        &self,
        caller: &Caller,
        id: &Identity,
        path: &str,
        record_first: bool,
        exists: F,
    ) -> Result<Capability>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let update = id.is_root() || self.decide(id, path, Capability::Update).await.is_ok();
        let create = id.is_root() || self.decide(id, path, Capability::Create).await.is_ok();
        if !create && !update {
            let refused = Err(Error::PermissionDenied(format!("create or update on {path} is not granted")));
            return self
                .record_decision(caller, id, path, Capability::Update, refused)
                .await
                .map(|_| Capability::Update);
        }
        // A check that runs the caller's data (a plugin's `exists` gets the
        // request's parameters) runs only once the request is recorded,
        // naming a capability the caller holds; the response says the rest.
        // Other checks (a stored entry, a cloud's describe) run first, so the
        // record names the capability the write used.
        if record_first {
            let held = if update { Capability::Update } else { Capability::Create };
            self.record_decision(caller, id, path, held, Ok(())).await?;
        }
        Ok(if exists().await? { Capability::Update } else { Capability::Create })
    }

    /// Whether the token holds `cap` on every path below the folder `prefix`
    /// (an ACL path ending in `/`), as a rule acting there on its behalf
    /// later would need; see [`keybridge_policy::Acl::grants_under`].
    pub(crate) async fn decide_under(&self, id: &Identity, prefix: &str, cap: Capability) -> Result<()> {
        if id.is_root() {
            return Ok(());
        }
        let loaded = self.unsealed()?;
        let acl = self.acl_for(&loaded, &id.policies).await?;
        let mut ok = acl.grants_under(prefix, Self::policy_capability(cap));
        if cap == Capability::Sudo {
            ok = ok && acl.grants_under(prefix, keybridge_policy::Capability::Update);
        }
        if ok {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} on {prefix}* (everything below {prefix}) is not granted",
                cap.name()
            )))
        }
    }

    pub(crate) async fn decide(&self, id: &Identity, path: &str, cap: Capability) -> Result<()> {
        self.decide_with(id, path, cap, None).await
    }

    /// The ACL's decision; with `params`, checked against the rules'
    /// parameter constraints too (engine paths; Vault skips them for KV).
    pub(crate) async fn decide_with(
        &self,
        id: &Identity,
        path: &str,
        cap: Capability,
        params: Option<&[keybridge_policy::Param<'_>]>,
    ) -> Result<()> {
        use keybridge_policy::{Decision, Request};
        if id.is_root() {
            return Ok(());
        }
        let loaded = self.unsealed()?;
        let acl = self.acl_for(&loaded, &id.policies).await?;
        let (parameters, check_parameters) = (params.unwrap_or(&[]), params.is_some());
        let ask = |c| acl.decide(&Request { path, capability: c, parameters, check_parameters });
        let mut decision = ask(Self::policy_capability(cap));
        if cap == Capability::Sudo && decision == Decision::Allowed {
            decision = ask(keybridge_policy::Capability::Update);
        }
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Denied(why) => Err(Error::PermissionDenied(why)),
        }
    }

    // ----- audit ------------------------------------------------------------

    /// Writes the request record once. Remembers whether it failed.
    /// Whether any audit device is enabled (otherwise requests run
    /// unaudited and skip the bookkeeping).
    pub(crate) fn auditing(&self) -> bool {
        self.unsealed().is_ok_and(|l| !l.audit.is_empty())
    }

    pub(crate) async fn audit_request(&self, caller: &Caller, error: Option<&Error>) {
        let Ok(loaded) = self.unsealed() else { return };
        if loaded.audit.is_empty() {
            return;
        }
        let snapshot = {
            let mut st = caller.state();
            if st.requested {
                return;
            }
            st.requested = true;
            std::mem::take(&mut *st)
        };
        let outcome = error.map(|e| (e.code(), Some(e.to_string())));
        let r = loaded
            .audit
            .log(audit::Kind::Request, caller, &snapshot, outcome.as_ref().map(|(c, m)| (*c, m.as_deref())), None)
            .await;
        let mut st = caller.state();
        let failed = r.is_err();
        *st = audit::CallState { requested: true, audit_failed: failed, ..snapshot };
        if let Err(e) = r {
            tracing::error!(request_id = %caller.request_id, error = %e, "audit: the request could not be recorded");
        }
    }

    /// Audits the response to `caller`'s request and passes the result on.
    /// A request that failed before it was authorized gets its request
    /// record here. If the response cannot be recorded after the operation
    /// succeeded, the caller is told that explicitly: the change stands.
    pub async fn finish<T>(
        &self,
        caller: &Caller,
        result: Result<T>,
        response: impl FnOnce(&T) -> AuditData,
    ) -> Result<T> {
        // Finished once, whether or not there is a device to record it on.
        let Ok(loaded) = self.unsealed() else {
            caller.state().responded = true;
            return result;
        };
        {
            let mut st = caller.state();
            if st.responded || loaded.audit.is_empty() {
                st.responded = true;
                return result;
            }
        }
        self.audit_request(caller, result.as_ref().err()).await;
        let data = result.as_ref().map(response).ok();
        let (code, msg) = match &result {
            Ok(_) => ("OK", None),
            Err(e) => (e.code(), Some(e.to_string())),
        };
        let snapshot = std::mem::take(&mut *caller.state());
        let r = loaded
            .audit
            .log(audit::Kind::Response, caller, &snapshot, Some((code, msg.as_deref())), data.as_ref())
            .await;
        *caller.state() = audit::CallState { responded: true, ..snapshot };
        match (r, result) {
            (Ok(()), result) => result,
            (Err(e), Ok(_)) => {
                tracing::error!(request_id = %caller.request_id, error = %e, "audit: the response could not be recorded");
                Err(Error::AuditResponseFailed(
                    "the operation was carried out, but its response could not be recorded by any audit device; check the devices before retrying".into(),
                ))
            }
            (Err(_), Err(e)) => Err(e),
        }
    }

    // ----- mounts -----------------------------------------------------------

    pub async fn list_mounts(&self, caller: &Caller) -> Result<Vec<MountEntry>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/mounts", Capability::Read).await?;
        Ok(self.unsealed()?.table().entries.iter().filter(|m| !m.deleting).cloned().collect())
    }

    /// The mount table as stored, with the stamp it was read with.
    pub(crate) async fn read_mounts(&self) -> Result<(MountTable, keybridge_barrier::Stamp)> {
        let (raw, stamp) = self.barrier.get_stamped(MOUNTS_KEY).await?;
        let raw = raw.ok_or_else(|| Error::Corrupt { key: MOUNTS_KEY.into(), reason: "missing".into() })?;
        let table = serde_json::from_slice(&raw)
            .map_err(|e| Error::Corrupt { key: MOUNTS_KEY.into(), reason: e.to_string() })?;
        Ok((table, stamp))
    }

    /// Writes a new mount table conditioned on the one in memory. Callers
    /// hold `admin`, so the table cannot change in between.
    pub(crate) async fn store_mounts(&self, table: MountTable) -> Result<()> {
        let loaded = self.unsealed()?;
        let stamp = loaded.mounts.read().unwrap_or_else(|p| p.into_inner()).1.clone();
        let mut batch = WriteBatch::new();
        batch.expect(MOUNTS_KEY, &stamp).put(MOUNTS_KEY, encode_json(&table));
        let committed = self.barrier.commit(batch).await;
        // What is stored now, with the stamp read with it: after a commit
        // (another node may have written after it), and after a refusal
        // (another node wrote first; the next try starts from its table).
        let (stored, stamp) = self.read_mounts().await?;
        self.install_mounts(&loaded, stored, stamp);
        match committed {
            Ok(()) => Ok(()),
            Err(keybridge_barrier::Error::Conflict) => {
                Err(Error::Contention("another node changed the mount table at the same time: try again".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn enable_mount(
        &self,
        caller: &Caller,
        path: &str,
        kind: &str,
        description: &str,
        config: BTreeMap<String, String>,
    ) -> Result<MountEntry> {
        let id = self.authenticate(caller).await?;
        let path = normalize_mount_path(path)?;
        // Vault: sys paths have no existence check, so enabling is an update;
        // pointing a cloud mount at a host of one's choosing takes sudo.
        let custom = cloud::custom_endpoints(kind, &config);
        let cap = if cloud::needs_sudo(kind, &config) { Capability::Sudo } else { Capability::Update };
        self.authorize(caller, &id, &format!("sys/mounts/{path}"), cap).await?;
        self.check_endpoint_hosts(&custom)?;
        if kind.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the mount type is missing; one of: {}",
                mounts::MOUNT_TYPES.join(", ")
            )));
        }
        self.validate_mount(kind, &config)?;
        let _guard = self.admin.lock().await;
        let mut config = config;
        if kind == crate::plugins::MOUNT_KIND {
            self.resolve_plugin_config(&mut config).await?;
        }
        let mut table = (*self.unsealed()?.table()).clone();
        let entry = MountEntry {
            id: uuid::Uuid::new_v4().to_string(),
            path: path.clone(),
            kind: kind.to_string(),
            description: description.to_string(),
            config,
            created: Timestamp::now(),
            deleting: false,
        };
        // Path checks first, then the cloud's health check, then the write.
        table.add(entry.clone())?;
        let opened = self.open_cloud(kind, &entry.config, true).await?;
        let engine = if self.is_engine_kind(kind) { Some(self.open_engine(&entry).await?) } else { None };
        self.store_mounts(table).await?;
        if let Some(c) = opened {
            self.unsealed()?.clouds.write().unwrap_or_else(|p| p.into_inner()).insert(entry.id.clone(), Arc::new(c));
        }
        if let Some(e) = engine {
            self.unsealed()?.engines.write().unwrap_or_else(|p| p.into_inner()).insert(entry.id.clone(), e);
        }
        Ok(entry)
    }

    /// With `allowed_endpoint_hosts` configured, a cloud mount may point
    /// only at the cloud's own hosts and those.
    pub(crate) fn check_endpoint_hosts(
        &self,
        custom: &[keybridge_provider_api::endpoints::CustomEndpoint],
    ) -> Result<()> {
        let Some(allowed) = &self.config.allowed_endpoint_hosts else { return Ok(()) };
        match custom.iter().find(|c| !allowed.iter().any(|a| a.eq_ignore_ascii_case(&c.host))) {
            Some(c) => Err(Error::PermissionDenied(format!(
                "{} host {:?} is not in the server's allowed_endpoint_hosts",
                c.setting, c.host
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn validate_mount(&self, kind: &str, config: &BTreeMap<String, String>) -> Result<()> {
        if kind == crate::plugins::MOUNT_KIND {
            return self.validate_plugin_config(config);
        }
        if let Some(b) = self.builtin(kind) {
            return crate::plugins::validate_builtin_config(b.as_ref(), kind, config);
        }
        if keybridge_provider_api::Cloud::from_kind(kind).is_none() {
            return mounts::validate_config(kind, config).map_err(|e| match e {
                Error::InvalidArgument(m) if m.starts_with("unknown mount type") => {
                    Error::InvalidArgument(format!("unknown mount type {kind:?}; this server supports: {}", {
                        let mut k = vec!["local"];
                        k.extend(self.config.providers.as_ref().map(|p| p.kinds()).unwrap_or_default());
                        if self.config.plugins.is_some() {
                            k.push(crate::plugins::MOUNT_KIND);
                        }
                        k.extend(self.config.builtin_engines.as_ref().map(|b| b.kinds()).unwrap_or_default());
                        k.join(", ")
                    }))
                }
                e => e,
            });
        }
        let providers = self.providers(kind)?;
        cloud::validate(providers.as_ref(), kind, config)
    }

    pub(crate) fn providers(&self, kind: &str) -> Result<&Arc<dyn Providers>> {
        match &self.config.providers {
            Some(p) if p.kinds().contains(&kind) => Ok(p),
            _ => Err(Error::Unimplemented(format!(
                "this server was built without the {kind} provider (cargo feature {kind} of keybridge-server)"
            ))),
        }
    }

    /// Builds a cloud mount's client (and checks it when asked); `None` for
    /// a local mount.
    pub(crate) async fn open_cloud(
        &self,
        kind: &str,
        config: &BTreeMap<String, String>,
        check: bool,
    ) -> Result<Option<CloudMount>> {
        if keybridge_provider_api::Cloud::from_kind(kind).is_none() {
            return Ok(None);
        }
        let providers = self.providers(kind)?;
        Ok(Some(CloudMount::open(providers.as_ref(), kind, config, check, self.metrics.clone()).await?))
    }

    /// The loaded client of a cloud mount, built on first use.
    pub(crate) async fn cloud_mount(&self, mount: &MountEntry) -> Result<Arc<CloudMount>> {
        let loaded = self.unsealed()?;
        if let Some(c) = loaded.clouds.read().unwrap_or_else(|p| p.into_inner()).get(&mount.id) {
            return Ok(c.clone());
        }
        let since = loaded.dropped.load(std::sync::atomic::Ordering::Acquire);
        // Opened on first use, before the request is authorized: what went
        // wrong (which may name the mount's files or settings) goes to the
        // log, and the caller learns only that the mount cannot serve now.
        let built = match self.open_cloud(&mount.kind, &mount.config, false).await {
            Ok(Some(c)) => Arc::new(c),
            Ok(None) => return Err(Error::InvalidArgument(format!("{} is not a cloud mount", mount.path))),
            Err(e) => {
                tracing::warn!(mount = %mount.path, error = %e, "a cloud mount could not be opened");
                return Err(Error::Unavailable(
                    "the cloud mount serving this path cannot be opened now; the server's log says why".into(),
                ));
            }
        };
        let mut clouds = loaded.clouds.write().unwrap_or_else(|p| p.into_inner());
        if !loaded.keeps(mount, since) {
            return Ok(built);
        }
        Ok(clouds.entry(mount.id.clone()).or_insert(built).clone())
    }

    /// Counters of the cloud mounts loaded since unseal, by mount path.
    pub fn mount_stats(&self) -> HashMap<String, MountStats> {
        let Ok(loaded) = self.unsealed() else { return HashMap::new() };
        let table = loaded.table();
        let clouds = loaded.clouds.read().unwrap_or_else(|p| p.into_inner());
        table.entries.iter().filter_map(|m| Some((m.path.clone(), clouds.get(&m.id)?.stats()))).collect()
    }

    pub async fn tune_mount(
        &self,
        caller: &Caller,
        path: &str,
        description: Option<&str>,
        changes: BTreeMap<String, String>,
    ) -> Result<MountEntry> {
        let id = self.authenticate(caller).await?;
        let path = normalize_mount_path(path)?;
        // `sys/mounts/secret/tune`, as Vault spells it (the path without its
        // trailing `/`, which would give `secret//tune`).
        self.authorize(caller, &id, &format!("sys/mounts/{}/tune", path.trim_end_matches('/')), Capability::Update)
            .await?;
        let _guard = self.admin.lock().await;
        let mut table = (*self.unsealed()?.table()).clone();
        let entry = table.get_mut(&path)?;
        let mut config = entry.config.clone();
        for (k, v) in &changes {
            if v.is_empty() {
                config.remove(k);
            } else {
                config.insert(k.clone(), v.clone());
            }
        }
        if let Some(c) = keybridge_provider_api::Cloud::from_kind(&entry.kind) {
            // Credentials stored for one host are not sent to another.
            keybridge_provider_api::endpoints::drop_stale_credentials(c, &entry.config, &changes, &mut config);
            let custom = cloud::custom_endpoints(&entry.kind, &config);
            // Before or after: a tune may not take a mount off the host's
            // identity or a custom endpoint (dropping what made it need
            // sudo) any more than put it there.
            if cloud::needs_sudo(&entry.kind, &entry.config) || cloud::needs_sudo(&entry.kind, &config) {
                self.decide(&id, &format!("sys/mounts/{path}"), Capability::Sudo).await.map_err(|e| match e {
                    Error::PermissionDenied(m) => Error::PermissionDenied(format!(
                        "{m}: a cloud mount that uses the gateway host's identity or files, or a host other than \
                         the cloud's own, needs it"
                    )),
                    e => e,
                })?;
                self.check_endpoint_hosts(&custom)?;
            }
        }
        self.validate_mount(&entry.kind, &config)?;
        if entry.kind == crate::plugins::MOUNT_KIND {
            if config.get("plugin") != entry.config.get("plugin") {
                return Err(Error::InvalidArgument(
                    "a mount's plugin cannot change; tune sha256 to upgrade it, or mount the other plugin elsewhere"
                        .into(),
                ));
            }
            self.resolve_plugin_config(&mut config).await?;
        }
        let reopened = self.open_cloud(&entry.kind, &config, true).await?;
        let engine = if self.is_engine_kind(&entry.kind) {
            let probe = MountEntry { config: config.clone(), ..entry.clone() };
            Some(self.open_engine(&probe).await?)
        } else {
            None
        };
        entry.config = config;
        if let Some(d) = description {
            entry.description = d.to_string();
        }
        let updated = entry.clone();
        self.store_mounts(table).await?;
        if let Some(c) = reopened {
            self.unsealed()?.clouds.write().unwrap_or_else(|p| p.into_inner()).insert(updated.id.clone(), Arc::new(c));
        }
        if let Some(e) = engine {
            self.unsealed()?.engines.write().unwrap_or_else(|p| p.into_inner()).insert(updated.id.clone(), e);
        }
        Ok(updated)
    }

    /// Removes the mount from routing at once, then deletes its data.
    pub async fn disable_mount(&self, caller: &Caller, path: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let path = normalize_mount_path(path)?;
        self.authorize(caller, &id, &format!("sys/mounts/{path}"), Capability::Delete).await?;
        let _guard = self.admin.lock().await;
        let mut table = (*self.unsealed()?.table()).clone();
        // An engine mount's calls in progress on this node end first (one
        // whose caller went away may still record a lease), and no new one
        // starts: every slot of its share is held until it is gone.
        let mut drained = None;
        if let Some(m) = table.get(&path).filter(|m| self.is_engine_kind(&m.kind)) {
            let share = self.mount_call_share(&m.id);
            let all = u32::try_from(crate::backend::plugin::ENGINE_CALLS_PER_MOUNT).unwrap_or(u32::MAX);
            match tokio::time::timeout(MOUNT_DRAIN_WAIT, share.acquire_many_owned(all)).await {
                Ok(Ok(permits)) => drained = Some((m.id.clone(), permits)),
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "{path} was not disabled: calls to it are still in progress after {}s; try again",
                        MOUNT_DRAIN_WAIT.as_secs()
                    )));
                }
            }
        }
        if drained.is_some() {
            // As in Vault: a mount's credentials are revoked before it goes.
            self.revoke_under(&path, &caller.request_id).await.map_err(|e| {
                Error::FailedPrecondition(format!("{path} was not disabled: its leases must be revoked first: {e}"))
            })?;
        }
        let entry = table.get_mut(&path)?;
        entry.deleting = true;
        let entry = entry.clone();
        self.store_mounts(table).await?;
        // A cloud mount's secrets stay in the cloud; only the client goes.
        self.unsealed()?.clouds.write().unwrap_or_else(|p| p.into_inner()).remove(&entry.id);
        self.unsealed()?.engines.write().unwrap_or_else(|p| p.into_inner()).remove(&entry.id);
        self.purge_mount(&entry).await?;
        if let Some((id, _permits)) = drained {
            self.engine_calls_by_mount.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        Ok(())
    }

    /// Deletes every key under `prefix`, a chunk per batch.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        loop {
            let keys = self.barrier.list(prefix, None, PURGE_CHUNK).await?;
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::new();
            for k in keys {
                batch.delete(k);
            }
            self.barrier.commit(batch).await?;
        }
    }

    pub(crate) async fn purge_mount(&self, entry: &MountEntry) -> Result<()> {
        self.delete_prefix(&entry.storage_prefix()).await?;
        let mut table = (*self.unsealed()?.table()).clone();
        table.entries.retain(|m| m.id != entry.id);
        self.store_mounts(table).await
    }

    // ----- keys and snapshots -------------------------------------------------

    /// Whether the caller may list the nodes using the store (read on
    /// `sys/members`); the server lists them, as only it knows the store.
    pub async fn members_access(&self, caller: &Caller) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/members", Capability::Read).await
    }

    pub async fn key_status(&self, caller: &Caller) -> Result<KeyInfo> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/key-status", Capability::Read).await?;
        Ok(self.barrier.key_info()?)
    }

    pub async fn rotate(&self, caller: &Caller) -> Result<KeyInfo> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/rotate", Capability::Sudo).await?;
        let _guard = self.admin.lock().await;
        Ok(self.barrier.rotate().await?)
    }

    pub async fn rekey(
        &self,
        caller: &Caller,
        keys: &[String],
        shares: u32,
        threshold: u32,
    ) -> Result<Vec<Zeroizing<String>>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/rekey", Capability::Sudo).await?;
        let _guard = self.admin.lock().await;
        Ok(self.barrier.rekey(keys, shares, threshold).await?)
    }

    /// Checks that the token may save and restore snapshots, so a
    /// streaming call can fail before it starts.
    pub async fn authorize_snapshot(&self, caller: &Caller) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/storage/snapshot", Capability::Sudo).await
    }

    /// Writes a consistent snapshot of the encrypted store to `out`.
    pub async fn snapshot(&self, caller: &Caller, mut out: Box<dyn std::io::Write + Send>) -> Result<u64> {
        self.authorize_snapshot(caller).await?;
        let barrier = self.barrier.clone();
        tokio::task::spawn_blocking(move || barrier.snapshot(&mut out))
            .await
            .map_err(|e| Error::Storage(keybridge_barrier::Error::Io(std::io::Error::other(e.to_string()))))?
            .map_err(Error::from)
    }

    /// Replaces the store with the snapshot in `file`; see
    /// [`Barrier::restore`]. Returns (entries, sealed afterwards).
    pub async fn restore(&self, caller: &Caller, file: std::path::PathBuf, force: bool) -> Result<(u64, bool)> {
        self.authorize_snapshot(caller).await?;
        let _guard = self.admin.lock().await;
        // Requests see the server as sealed while the store is replaced, so
        // none runs against a mix of old state in memory and new data. The
        // response is recorded by the devices of the restored store.
        self.unload().await;
        let barrier = self.barrier.clone();
        let restored = tokio::task::spawn_blocking(move || barrier.restore(&file, force))
            .await
            .map_err(|e| Error::Storage(keybridge_barrier::Error::Io(std::io::Error::other(e.to_string()))))
            .and_then(|r| r.map_err(Error::from));
        // Whether the snapshot was applied or refused, reload what the
        // (possibly new) store holds, unless the barrier is sealed now.
        if !self.barrier.is_sealed()
            && let Err(e) = self.load().await
        {
            self.barrier.seal();
            return Err(e);
        }
        let (count, sealed) = restored?;
        Ok((count, sealed))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod audit_tests;

#[cfg(test)]
mod auth_tests;

#[cfg(test)]
mod reconciler_tests;

#[cfg(test)]
mod plugin_tests;

#[cfg(test)]
mod coherence_tests;
#[cfg(test)]
mod escalation_tests;
#[cfg(test)]
mod password_policy_tests;
