//! The encryption barrier: everything below it is ciphertext.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keyring::{Keyring, RootKey};
use crate::physical::{Batch, Check, Op, Physical};
use crate::seal::{AutoSeal, AutoSealRecord, SealError};
use crate::{Error, Result, seal, shamir, snapshot};

/// Plaintext on purpose: it must be readable while sealed, and holds no secret.
const SEAL_CONFIG_KEY: &str = "core/seal-config";
/// Where the keyring lives (encrypted under the root key).
pub const KEYRING_KEY: &str = "core/keyring";
/// How many encryptions have been reserved under the active key term.
const USAGE_KEY: &str = "core/keyring-usage";

/// Encryptions one AES-GCM key term may make before the barrier rotates to
/// a new one: Vault's `max_operations` default (about 2^31.85, keeping the
/// chance of a random 96-bit nonce repeating under one key below 2^-32).
pub const DEFAULT_MAX_OPERATIONS: u64 = 3_865_470_566;

/// Encryptions reserved in the store at a time: a crash forgets at most this
/// many (they are counted as spent), and a second node reserves its own.
const RESERVE: u64 = 1 << 20;

/// The stored reservation: encryptions under `term` stay below `reserved`.
#[derive(Serialize, Deserialize)]
struct UsageRecord {
    term: u32,
    reserved: u64,
}

/// This process's share of the active term's count: positions `pos..limit`
/// of a range it reserved in the store.
#[derive(Default)]
struct Usage {
    pos: u64,
    limit: u64,
}

/// The seal configuration, stored in plaintext at `core/seal-config`: the
/// seal's type, and for an auto seal the root key as its key service
/// encrypted it with the recovery key's check.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    /// `shamir`, or an auto seal's type (`awskms`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Shamir: the unseal key shares. Auto seals: 1 and 1 (unused).
    pub secret_shares: u32,
    pub secret_threshold: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoSealRecord>,
}

const SHAMIR: &str = "shamir";

impl SealConfig {
    fn shamir(shares: u32, threshold: u32) -> SealConfig {
        SealConfig { kind: SHAMIR.into(), secret_shares: shares, secret_threshold: threshold, auto: None }
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct")
    }

    /// The key shares operators hold: unseal keys, or an auto seal's
    /// recovery keys.
    fn held_shares(&self) -> (u32, u32) {
        match &self.auto {
            Some(a) => (a.recovery_shares, a.recovery_threshold),
            None => (self.secret_shares, self.secret_threshold),
        }
    }

    fn describe(&self) -> String {
        match &self.auto {
            Some(a) => format!("{} key {}", self.kind, a.key_id),
            None => "Shamir unseal keys".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealState {
    pub initialized: bool,
    pub sealed: bool,
    /// The key shares operators hold: unseal keys or, with `recovery`,
    /// an auto seal's recovery keys.
    pub shares: u32,
    pub threshold: u32,
    pub progress: u32,
    /// The stored seal's type (`shamir`, `awskms`, ...); before init, the
    /// one this node would initialize with.
    pub kind: String,
    pub recovery: bool,
    /// A seal migration is pending: the keys operators hold are entered
    /// with `migrate`.
    pub migration: bool,
    /// Why a sealed node is still sealed, when it is not waiting for keys:
    /// an auto-unseal's last failure, or a seal configuration that does not
    /// match the store's. Empty otherwise.
    pub message: String,
}

/// The seals this node's configuration names: the one it uses, and a
/// disabled one it only unwraps with, to migrate away from it.
#[derive(Clone, Default)]
pub struct Seals {
    pub current: Option<Arc<dyn AutoSeal>>,
    pub previous: Option<Arc<dyn AutoSeal>>,
}

/// What unseals the store, given its seal configuration and this node's.
enum Plan {
    /// Shamir unseal keys.
    Shamir,
    /// This node's auto seal.
    Auto(Arc<dyn AutoSeal>),
    /// The held keys of the stored seal, entered with `migrate`, move the
    /// store from its seal (`from`, or Shamir) to this node's (`to`, or
    /// Shamir).
    Migrate { from: Option<Arc<dyn AutoSeal>>, to: Option<Arc<dyn AutoSeal>> },
    /// The store's seal is not one this node is configured for.
    Mismatch(String),
}

fn seal_failed(e: SealError) -> Error {
    Error::KeyService { retryable: e.retryable, message: e.message }
}

fn parse_config(raw: &[u8]) -> Result<SealConfig> {
    let unreadable =
        |why: String| Error::backend(std::io::Error::other(format!("seal configuration unreadable: {why}")));
    let c: SealConfig = serde_json::from_slice(raw).map_err(|e| unreadable(e.to_string()))?;
    if (c.kind == SHAMIR) != c.auto.is_none() {
        return Err(unreadable(format!("type {} does not match its fields", c.kind)));
    }
    Ok(c)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub term: u32,
    pub installed_unix: u64,
    pub terms: u32,
}

/// What a key held when it was read: a precondition for a later write
/// ([`WriteBatch::expect`]). It is the stored ciphertext, never plaintext.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stamp(Option<Vec<u8>>);

impl Stamp {
    pub fn absent() -> Self {
        Stamp(None)
    }
    pub fn exists(&self) -> bool {
        self.0.is_some()
    }
}

/// Plaintext writes, encrypted by [`Barrier::commit`] and applied atomically.
#[derive(Default)]
pub struct WriteBatch {
    checks: Vec<Check>,
    puts: Vec<(String, Zeroizing<Vec<u8>>)>,
    deletes: Vec<String>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    /// The commit fails with [`Error::Conflict`] unless `key` still holds
    /// what it held when `stamp` was read.
    pub fn expect(&mut self, key: impl Into<String>, stamp: &Stamp) -> &mut Self {
        self.checks.push(Check { key: key.into(), value: stamp.0.clone() });
        self
    }
    pub fn put(&mut self, key: impl Into<String>, value: Zeroizing<Vec<u8>>) -> &mut Self {
        self.puts.push((key.into(), value));
        self
    }
    pub fn delete(&mut self, key: impl Into<String>) -> &mut Self {
        self.deletes.push(key.into());
        self
    }
}

struct Unsealed {
    root: RootKey,
    keyring: Keyring,
    /// The stored ciphertext of the keyring: a precondition for rotate/rekey.
    keyring_ct: Vec<u8>,
    /// Encryptions under the active term this process may still make.
    usage: Mutex<Usage>,
}

impl Unsealed {
    fn new(root: RootKey, keyring: Keyring, keyring_ct: Vec<u8>) -> Unsealed {
        Unsealed { root, keyring, keyring_ct, usage: Mutex::new(Usage::default()) }
    }
}

pub struct Barrier {
    physical: Arc<dyn Physical>,
    unsealed: RwLock<Option<Arc<Unsealed>>>,
    progress: Mutex<Vec<Zeroizing<Vec<u8>>>>,
    /// Encryptions per key term before an automatic rotation.
    max_operations: std::sync::atomic::AtomicU64,
    /// Serialises reservations and rotations.
    wear: tokio::sync::Mutex<()>,
    seals: RwLock<Seals>,
    /// The last auto-unseal's failure, for the seal status.
    auto_error: Mutex<Option<String>>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn reserved(key: &str) -> bool {
    key == SEAL_CONFIG_KEY || key == KEYRING_KEY || key == USAGE_KEY
}

impl Barrier {
    pub fn new(physical: Arc<dyn Physical>) -> Self {
        Barrier {
            physical,
            unsealed: RwLock::new(None),
            progress: Mutex::new(Vec::new()),
            max_operations: std::sync::atomic::AtomicU64::new(DEFAULT_MAX_OPERATIONS),
            wear: tokio::sync::Mutex::new(()),
            seals: RwLock::new(Seals::default()),
            auto_error: Mutex::new(None),
        }
    }

    /// Sets the seals this node's configuration names (before init or
    /// unseal).
    pub fn set_seals(&self, seals: Seals) {
        *self.seals.write().unwrap_or_else(|p| p.into_inner()) = seals;
    }

    fn seals(&self) -> Seals {
        self.seals.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this node has an auto seal to unseal with.
    pub fn has_auto_seal(&self) -> bool {
        self.seals().current.is_some()
    }

    fn plan(&self, config: &SealConfig) -> Plan {
        let Seals { current, previous } = self.seals();
        let Some(rec) = &config.auto else {
            return match current {
                None => Plan::Shamir,
                Some(to) => Plan::Migrate { from: None, to: Some(to) },
            };
        };
        let same = |s: &Option<Arc<dyn AutoSeal>>| s.clone().filter(|s| s.kind() == config.kind);
        match (same(&current), same(&previous)) {
            (Some(c), None) => Plan::Auto(c),
            // Both of the store's type: the key ids tell a migration that is
            // still to be made from one already made.
            (Some(c), Some(p)) => {
                if c.key_id() == rec.key_id || p.key_id() != rec.key_id {
                    Plan::Auto(c)
                } else {
                    Plan::Migrate { from: Some(p), to: Some(c) }
                }
            }
            (None, Some(p)) => Plan::Migrate { from: Some(p), to: current },
            (None, None) => Plan::Mismatch(match current {
                None => format!(
                    "the store is sealed by {}, and this node's configuration has no seal block for it: add seal \"{}\" (with disabled = \"true\" to migrate to Shamir keys)",
                    config.describe(),
                    config.kind
                ),
                Some(c) => format!(
                    "the store is sealed by {}, and this node's seal is {} key {}: to migrate to it, add the store's seal block with disabled = \"true\" and enter the recovery keys with migrate",
                    config.describe(),
                    c.kind(),
                    c.key_id()
                ),
            }),
        }
    }

    fn set_auto_error(&self, e: Option<String>) {
        *self.auto_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// Sets how many encryptions a key term makes before the barrier
    /// rotates to a new one (default [`DEFAULT_MAX_OPERATIONS`]).
    pub fn set_max_operations(&self, n: u64) {
        self.max_operations.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts `n` encryptions about to be made under the active term. The
    /// count lives in the store in reserved ranges, so a restart (or another
    /// node) never counts from zero again; past `max_operations` the term is
    /// rotated first, and the encryptions go under the new one.
    async fn spend(&self, n: u64) -> Result<()> {
        use std::sync::atomic::Ordering;
        loop {
            let cur = self.current()?;
            let max = self.max_operations.load(Ordering::Relaxed);
            let spent = {
                let mut u = cur.usage.lock().unwrap_or_else(|p| p.into_inner());
                if u.pos.saturating_add(n) <= u.limit && u.pos < max {
                    u.pos += n;
                    true
                } else {
                    false
                }
            };
            if spent {
                return Ok(());
            }
            let _one = self.wear.lock().await;
            let cur = self.current()?;
            {
                let u = cur.usage.lock().unwrap_or_else(|p| p.into_inner());
                if u.pos.saturating_add(n) <= u.limit && u.pos < max {
                    continue;
                }
            }
            let (term, _) = cur.keyring.active_term();
            let stored = self.physical.get(USAGE_KEY).await?;
            let record = match &stored {
                Some(ct) => serde_json::from_slice::<UsageRecord>(&cur.keyring.decrypt(USAGE_KEY, ct)?)
                    .ok()
                    .filter(|r| r.term == term),
                None => None,
            };
            // Never below what this process reserved already (a restored
            // snapshot may carry an older reservation).
            let local = cur.usage.lock().unwrap_or_else(|p| p.into_inner()).limit;
            let start = record.map_or(0, |r| r.reserved).max(local);
            if start >= max {
                // This term has made its share of encryptions: a new term.
                drop(_one);
                self.rotate_from(term).await?;
                continue;
            }
            let end = start.saturating_add(RESERVE.min(max / 4).max(n));
            let next = serde_json::to_vec(&UsageRecord { term, reserved: end }).expect("plain struct");
            let batch = Batch {
                checks: vec![Check { key: USAGE_KEY.into(), value: stored }],
                ops: vec![Op::Put { key: USAGE_KEY.into(), value: cur.keyring.encrypt(USAGE_KEY, &next)? }],
            };
            match self.physical.commit(batch).await {
                Ok(()) => {}
                // Another node reserved at the same time: read again.
                Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
            let mut u = cur.usage.lock().unwrap_or_else(|p| p.into_inner());
            *u = Usage { pos: start, limit: end };
        }
    }

    /// Rotates unless the active term is no longer `term` (another caller
    /// rotated already).
    async fn rotate_from(&self, term: u32) -> Result<()> {
        let _one = self.wear.lock().await;
        if self.current()?.keyring.active_term().0 != term {
            return Ok(());
        }
        tracing::info!(term, "barrier: the key term reached max_operations; rotating to a new term");
        self.rotate_locked().await.map(|_| ())
    }

    /// Runs `work` as leader work on this barrier's store (see
    /// [`crate::leader_work`]).
    pub async fn leader_work<F: std::future::Future>(&self, work: F) -> F::Output {
        crate::leader_work::scope(self.physical.clone(), work).await
    }

    /// Another node changed the keyring: reads it again. A keyring this
    /// node's root key opens (a rotation) replaces the one in memory and
    /// `true` is returned; one it cannot open (a rekey replaced the root
    /// key) is left alone and `false` is returned: the caller seals, and
    /// the node is unsealed again with the new keys.
    pub async fn reload_keyring(&self) -> Result<bool> {
        // Under the lock rotations take, so a rotation of this node's own
        // is never replaced by an older keyring read before it.
        let _one = self.wear.lock().await;
        let cur = self.current()?;
        let Some(keyring_ct) = self.physical.get(KEYRING_KEY).await? else {
            return Ok(false);
        };
        if keyring_ct == cur.keyring_ct {
            return Ok(true);
        }
        match cur.root.open_keyring(&keyring_ct, KEYRING_KEY) {
            Ok(keyring) => {
                let root = RootKey::from_bytes(cur.root.as_bytes())?;
                self.set_current(Some(Unsealed::new(root, keyring, keyring_ct)));
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    pub fn storage_kind(&self) -> &'static str {
        self.physical.kind()
    }

    fn current(&self) -> Result<Arc<Unsealed>> {
        self.unsealed.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(Error::Sealed)
    }

    fn set_current(&self, state: Option<Unsealed>) {
        *self.unsealed.write().unwrap_or_else(|p| p.into_inner()) = state.map(Arc::new);
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Vec<Zeroizing<Vec<u8>>>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_sealed(&self) -> bool {
        self.current().is_err()
    }

    pub async fn seal_config(&self) -> Result<Option<SealConfig>> {
        match self.physical.get(SEAL_CONFIG_KEY).await? {
            None => Ok(None),
            Some(raw) => parse_config(&raw).map(Some),
        }
    }

    /// The seal configuration and its stored bytes (a write's precondition).
    async fn seal_config_raw(&self) -> Result<(SealConfig, Vec<u8>)> {
        let raw = self.physical.get(SEAL_CONFIG_KEY).await?.ok_or(Error::NotInitialized)?;
        Ok((parse_config(&raw)?, raw))
    }

    pub async fn state(&self) -> Result<SealState> {
        let config = self.seal_config().await?;
        let sealed = self.is_sealed();
        let (shares, threshold) = config.as_ref().map_or((0, 0), |c| c.held_shares());
        let (migration, mut message) = match config.as_ref().map(|c| self.plan(c)) {
            Some(Plan::Migrate { from, to }) => (
                true,
                format!(
                    "a seal migration from {} to {} is pending: enter the {} keys with migrate",
                    from.as_ref().map_or("Shamir keys".into(), |f| format!("{} key {}", f.kind(), f.key_id())),
                    to.as_ref().map_or("Shamir keys".into(), |t| format!("{} key {}", t.kind(), t.key_id())),
                    if from.is_some() { "recovery" } else { "unseal" }
                ),
            ),
            Some(Plan::Mismatch(m)) => (false, m),
            _ => (false, String::new()),
        };
        if let Some(e) = self.auto_error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            message = e;
        }
        let kind = match &config {
            Some(c) => c.kind.clone(),
            None => self.seals().current.map_or(SHAMIR.to_string(), |c| c.kind().to_string()),
        };
        Ok(SealState {
            initialized: config.is_some(),
            sealed,
            shares,
            threshold,
            progress: self.progress().len() as u32,
            recovery: config.as_ref().is_some_and(|c| c.auto.is_some()),
            kind,
            migration,
            message: if sealed { message } else { String::new() },
        })
    }

    /// Creates the root key and the first keyring term, and returns the root
    /// key's shares. The barrier is left unsealed so the caller can write its
    /// initial state; it seals it afterwards if it wants.
    ///
    /// `initial` entries are encrypted and written in the same atomic batch,
    /// so a crash can never leave an initialized store without them.
    pub async fn initialize(
        &self,
        shares: u32,
        threshold: u32,
        initial: Vec<(String, Zeroizing<Vec<u8>>)>,
    ) -> Result<Vec<Zeroizing<String>>> {
        shamir::validate(shares, threshold)?;
        if self.seal_config().await?.is_some() {
            return Err(Error::AlreadyInitialized);
        }
        let seals = self.seals();
        if seals.previous.is_some() {
            return Err(Error::InvalidSealConfig(
                "a disabled seal block is for migrating an initialized store away from it; remove it to initialize"
                    .into(),
            ));
        }
        let root = RootKey::generate();
        let keyring = Keyring::new(now_unix());
        let keyring_ct = root.seal_keyring(&keyring, KEYRING_KEY)?;
        let (config, split) = match &seals.current {
            None => (SealConfig::shamir(shares, threshold), shamir::split(root.as_bytes(), shares, threshold)?),
            Some(auto) => {
                // The shares handed out are of a recovery key: the key
                // service holds the root key.
                let recovery = RootKey::generate();
                let split = shamir::split(recovery.as_bytes(), shares, threshold)?;
                (self.auto_config(auto.as_ref(), &root, recovery.as_bytes(), shares, threshold).await?, split)
            }
        };
        let mut ops = vec![
            Op::Put { key: SEAL_CONFIG_KEY.into(), value: config.encode() },
            Op::Put { key: KEYRING_KEY.into(), value: keyring_ct.clone() },
        ];
        for (key, plain) in &initial {
            if reserved(key) {
                return Err(Error::InvalidKey("reserved storage key"));
            }
            ops.push(Op::Put { key: key.clone(), value: keyring.encrypt(key, plain)? });
        }
        let batch = Batch { checks: vec![Check { key: SEAL_CONFIG_KEY.into(), value: None }], ops };
        self.physical.commit(batch).await.map_err(|e| match e {
            Error::Conflict => Error::AlreadyInitialized,
            e => e,
        })?;
        self.set_current(Some(Unsealed::new(root, keyring, keyring_ct)));
        Ok(split)
    }

    /// Adds one share towards the threshold; unseals when it is reached.
    pub async fn unseal(&self, share: &str) -> Result<SealState> {
        self.enter_share(share, false).await
    }

    /// Adds one share of the keys operators hold; with `migrate`, towards a
    /// pending seal migration, made when the threshold is reached.
    pub async fn enter_share(&self, share: &str, migrate: bool) -> Result<SealState> {
        let config = self.seal_config().await?.ok_or(Error::NotInitialized)?;
        if !self.is_sealed() {
            if migrate {
                return Err(Error::InvalidSealConfig(
                    "the node is unsealed; a seal migration is made while it is sealed, after a restart with the new seal configuration".into(),
                ));
            }
            return self.state().await;
        }
        let plan = self.plan(&config);
        match (&plan, migrate) {
            // With an auto seal, the recovery keys authorise an unseal by
            // the key service (the one way to lift a seal by request).
            (Plan::Shamir, false) | (Plan::Migrate { .. }, true) | (Plan::Auto(_), false) => {}
            (Plan::Mismatch(m), _) => return Err(Error::InvalidSealConfig(m.clone())),
            (Plan::Migrate { .. }, false) => {
                return Err(Error::InvalidSealConfig(
                    "a seal migration is pending: enter the keys with migrate (`keybridge operator unseal --migrate`)"
                        .into(),
                ));
            }
            (_, true) => {
                return Err(Error::InvalidSealConfig(
                    "no seal migration is pending: this node's seal configuration matches the store's".into(),
                ));
            }
        }
        let (total, needed) = config.held_shares();
        let decoded = shamir::decode_share(share)?;
        let complete = {
            let mut progress = self.progress();
            if progress.iter().any(|p| p.as_slice() == decoded.as_slice()) {
                return Err(Error::InvalidKey("this unseal key was already entered"));
            }
            progress.push(decoded);
            if progress.len() < needed as usize { None } else { Some(std::mem::take(&mut *progress)) }
        };
        if let Some(shares) = complete {
            let secret = shamir::combine(&shares, total, needed)?;
            match plan {
                Plan::Migrate { from, to } => self.migrate(&secret, from, to).await?,
                Plan::Auto(seal) => {
                    let rec = config.auto.as_ref().ok_or(Error::NotInitialized)?;
                    let root = self.unwrap_root(seal.as_ref(), rec).await?;
                    if !seal::recovery_matches(rec, root.as_bytes(), &secret) {
                        return Err(Error::WrongKeys);
                    }
                    self.unseal_with_root(root).await?;
                    self.set_auto_error(None);
                }
                _ => {
                    let root = RootKey::from_bytes(&secret).map_err(|_| Error::WrongKeys)?;
                    self.unseal_with_root(root).await?;
                }
            }
        }
        self.state().await
    }

    /// The seal configuration of an auto seal: `root` encrypted by the key
    /// service, and the check of `recovery`.
    async fn auto_config(
        &self,
        seal: &dyn AutoSeal,
        root: &RootKey,
        recovery: &[u8],
        shares: u32,
        threshold: u32,
    ) -> Result<SealConfig> {
        let blob = seal.wrap(root.as_bytes()).await.map_err(seal_failed)?;
        // What the service gave back must give the root key back, before it
        // is the only copy: a key that encrypts but may not decrypt (an
        // access policy), or a service answering wrongly, fails here.
        let back = seal.unwrap(&blob).await.map_err(seal_failed)?;
        if back.len() != root.as_bytes().len()
            || !bool::from(subtle::ConstantTimeEq::ct_eq(back.as_slice(), root.as_bytes()))
        {
            return Err(Error::KeyService {
                retryable: false,
                message: format!(
                    "{} key {} did not give back what it encrypted; nothing was changed",
                    seal.kind(),
                    seal.key_id()
                ),
            });
        }
        use base64::Engine as _;
        Ok(SealConfig {
            kind: seal.kind().into(),
            secret_shares: 1,
            secret_threshold: 1,
            auto: Some(AutoSealRecord {
                key_id: seal.key_id(),
                wrapped_root: b64().encode(blob),
                recovery_shares: shares,
                recovery_threshold: threshold,
                recovery_check: seal::recovery_check(root.as_bytes(), recovery),
            }),
        })
    }

    /// The root key an auto seal's record holds, opened by `seal`.
    async fn unwrap_root(&self, seal: &dyn AutoSeal, rec: &AutoSealRecord) -> Result<RootKey> {
        use base64::Engine as _;
        let blob = b64()
            .decode(&rec.wrapped_root)
            .map_err(|_| Error::backend(std::io::Error::other("seal configuration unreadable: wrapped root key")))?;
        let plain = seal.unwrap(&blob).await.map_err(seal_failed)?;
        RootKey::from_bytes(&plain).map_err(|_| Error::KeyService {
            retryable: false,
            message: format!("{} key {} did not give back a root key", seal.kind(), seal.key_id()),
        })
    }

    /// Unseals with this node's auto seal. `Ok(false)`: nothing to do (not
    /// initialized, unsealed already, or the store's seal is not this
    /// node's auto seal: the state says why). A failure is kept for the
    /// seal status until the next attempt.
    pub async fn auto_unseal(&self) -> Result<bool> {
        let Some(config) = self.seal_config().await? else { return Ok(false) };
        if !self.is_sealed() {
            return Ok(false);
        }
        let (Plan::Auto(seal), Some(rec)) = (self.plan(&config), &config.auto) else {
            self.set_auto_error(None);
            return Ok(false);
        };
        let r = async {
            let root = self.unwrap_root(seal.as_ref(), rec).await?;
            self.unseal_with_root(root).await.map_err(|e| match e {
                Error::WrongKeys => Error::KeyService {
                    retryable: false,
                    message: format!(
                        "{} key {} opened a root key that does not open this store's keyring",
                        seal.kind(),
                        seal.key_id()
                    ),
                },
                e => e,
            })
        }
        .await;
        self.set_auto_error(r.as_ref().err().map(|e| format!("auto-unseal failed: {e}")));
        r.map(|()| true)
    }

    /// Moves the store to this node's seal. `secret` is what the held keys
    /// combined to: the root key (from Shamir) or the recovery key.
    ///
    /// - Shamir to an auto seal: a new root key, encrypted by the key
    ///   service, replaces the old one (the old unseal keys no longer open
    ///   the store), and the old unseal keys become the recovery keys.
    /// - An auto seal to Shamir: the recovery key becomes the root key, so
    ///   the recovery keys become the unseal keys.
    /// - One auto seal to another: a new root key, encrypted by the new
    ///   key (the old key no longer opens the store); the recovery keys stay.
    ///
    /// Every migration adds a key term, so data written afterwards is out of
    /// reach of the old seal's material.
    ///
    /// One atomic write of the seal configuration and the keyring, checked
    /// against both as read; the node is unsealed afterwards.
    async fn migrate(
        &self,
        secret: &[u8],
        from: Option<Arc<dyn AutoSeal>>,
        to: Option<Arc<dyn AutoSeal>>,
    ) -> Result<()> {
        let _one = self.wear.lock().await;
        let (config, config_raw) = self.seal_config_raw().await?;
        let keyring_ct = self.physical.get(KEYRING_KEY).await?.ok_or(Error::NotInitialized)?;
        let (old_root, recovery) = match (&from, &config.auto) {
            (None, None) => (RootKey::from_bytes(secret).map_err(|_| Error::WrongKeys)?, None),
            (Some(f), Some(rec)) => {
                let root = self.unwrap_root(f.as_ref(), rec).await?;
                if !seal::recovery_matches(rec, root.as_bytes(), secret) {
                    return Err(Error::WrongKeys);
                }
                (root, Some(rec.clone()))
            }
            _ => return Err(Error::InvalidSealConfig("the store's seal changed; enter the keys again".into())),
        };
        // A new key term too: what is written from now on is out of reach of
        // the old seal's material and of any copy of the old keyring.
        let keyring = old_root.open_keyring(&keyring_ct, KEYRING_KEY)?.rotated(now_unix());
        let (shares, threshold) = config.held_shares();
        let (root, new_config) = match (&to, recovery) {
            // To a key service: a new root key, which only it holds.
            (Some(t), _) => {
                let root = RootKey::generate();
                let c = self.auto_config(t.as_ref(), &root, secret, shares, threshold).await?;
                (root, c)
            }
            (None, Some(_)) => (RootKey::from_bytes(secret)?, SealConfig::shamir(shares, threshold)),
            (None, None) => return Err(Error::InvalidSealConfig("no seal migration is pending".into())),
        };
        let new_ct = root.seal_keyring(&keyring, KEYRING_KEY)?;
        let batch = Batch {
            checks: vec![
                Check { key: SEAL_CONFIG_KEY.into(), value: Some(config_raw) },
                Check { key: KEYRING_KEY.into(), value: Some(keyring_ct) },
            ],
            ops: vec![
                Op::Put { key: SEAL_CONFIG_KEY.into(), value: new_config.encode() },
                Op::Put { key: KEYRING_KEY.into(), value: new_ct.clone() },
            ],
        };
        self.physical.commit(batch).await?;
        tracing::info!(from = %config.describe(), to = %new_config.describe(), "seal migrated");
        self.set_auto_error(None);
        self.set_current(Some(Unsealed::new(root, keyring, new_ct)));
        Ok(())
    }

    pub fn reset_progress(&self) {
        self.progress().clear();
    }

    pub async fn unseal_with_root(&self, root: RootKey) -> Result<()> {
        let keyring_ct = self.physical.get(KEYRING_KEY).await?.ok_or(Error::NotInitialized)?;
        let keyring = root.open_keyring(&keyring_ct, KEYRING_KEY)?;
        self.set_current(Some(Unsealed::new(root, keyring, keyring_ct)));
        Ok(())
    }

    /// Forgets every key; the store stays encrypted on disk.
    pub fn seal(&self) {
        self.set_current(None);
        self.reset_progress();
    }

    pub fn key_info(&self) -> Result<KeyInfo> {
        let cur = self.current()?;
        let (term, installed_unix) = cur.keyring.active_term();
        Ok(KeyInfo { term, installed_unix, terms: cur.keyring.term_count() as u32 })
    }

    /// Adds a key term: new writes use it, old entries stay readable.
    pub async fn rotate(&self) -> Result<KeyInfo> {
        let _one = self.wear.lock().await;
        self.rotate_locked().await
    }

    async fn rotate_locked(&self) -> Result<KeyInfo> {
        let cur = self.current()?;
        let keyring = cur.keyring.rotated(now_unix());
        let keyring_ct = cur.root.seal_keyring(&keyring, KEYRING_KEY)?;
        let batch = Batch {
            checks: vec![Check { key: KEYRING_KEY.into(), value: Some(cur.keyring_ct.clone()) }],
            ops: vec![Op::Put { key: KEYRING_KEY.into(), value: keyring_ct.clone() }],
        };
        self.physical.commit(batch).await?;
        let root = RootKey::from_bytes(cur.root.as_bytes())?;
        self.set_current(Some(Unsealed::new(root, keyring, keyring_ct)));
        self.key_info()
    }

    /// Replaces the root key by a new one split into new shares. At least
    /// the current threshold of current shares must be given.
    pub async fn rekey(
        &self,
        current_shares: &[String],
        shares: u32,
        threshold: u32,
    ) -> Result<Vec<Zeroizing<String>>> {
        shamir::validate(shares, threshold)?;
        let cur = self.current()?;
        let (config, config_raw) = self.seal_config_raw().await?;
        let (held, needed) = config.held_shares();
        let which = if config.auto.is_some() { "recovery" } else { "unseal" };
        if (current_shares.len() as u32) < needed {
            return Err(Error::InvalidSealConfig(format!(
                "rekey needs at least {needed} of the current {which} keys, got {}",
                current_shares.len()
            )));
        }
        let decoded = current_shares.iter().map(|s| shamir::decode_share(s)).collect::<Result<Vec<_>>>()?;
        let given = shamir::combine(&decoded, held, needed)?;
        let root = RootKey::generate();
        let (new_config, split) = match &config.auto {
            None => {
                // The shares prove knowledge of the root key: it must open
                // the keyring.
                let given = RootKey::from_bytes(&given).map_err(|_| Error::WrongKeys)?;
                given.open_keyring(&cur.keyring_ct, KEYRING_KEY)?;
                (SealConfig::shamir(shares, threshold), shamir::split(root.as_bytes(), shares, threshold)?)
            }
            Some(rec) => {
                // Recovery keys: a new recovery key, and a new root key
                // encrypted by this node's seal.
                if !seal::recovery_matches(rec, cur.root.as_bytes(), &given) {
                    return Err(Error::WrongKeys);
                }
                let Plan::Auto(seal) = self.plan(&config) else {
                    return Err(Error::InvalidSealConfig(
                        "this node's seal configuration does not match the store's; finish the seal migration first"
                            .into(),
                    ));
                };
                // Only with the store's own key: a node still configured
                // for a key the store migrated away from must not put the
                // root key back under it.
                if seal.key_id() != rec.key_id {
                    return Err(Error::InvalidSealConfig(format!(
                        "this node's seal names {} key {}, the store's is {}: configure the store's key to rekey",
                        seal.kind(),
                        seal.key_id(),
                        rec.key_id
                    )));
                }
                let recovery = RootKey::generate();
                let split = shamir::split(recovery.as_bytes(), shares, threshold)?;
                (self.auto_config(seal.as_ref(), &root, recovery.as_bytes(), shares, threshold).await?, split)
            }
        };
        let keyring_ct = root.seal_keyring(&cur.keyring, KEYRING_KEY)?;
        let batch = Batch {
            checks: vec![
                Check { key: KEYRING_KEY.into(), value: Some(cur.keyring_ct.clone()) },
                Check { key: SEAL_CONFIG_KEY.into(), value: Some(config_raw) },
            ],
            ops: vec![
                Op::Put { key: SEAL_CONFIG_KEY.into(), value: new_config.encode() },
                Op::Put { key: KEYRING_KEY.into(), value: keyring_ct.clone() },
            ],
        };
        self.physical.commit(batch).await?;
        let keyring = root.open_keyring(&keyring_ct, KEYRING_KEY)?;
        self.set_current(Some(Unsealed::new(root, keyring, keyring_ct)));
        Ok(split)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let cur = self.current()?;
        if reserved(key) {
            return Ok(None);
        }
        match self.physical.get(key).await? {
            None => Ok(None),
            Some(ct) => Ok(Some(cur.keyring.decrypt_owned(key, ct)?)),
        }
    }

    /// The plaintext at `key` and a stamp to make a later write conditional.
    pub async fn get_stamped(&self, key: &str) -> Result<(Option<Zeroizing<Vec<u8>>>, Stamp)> {
        let cur = self.current()?;
        if reserved(key) {
            return Ok((None, Stamp(None)));
        }
        match self.physical.get(key).await? {
            None => Ok((None, Stamp(None))),
            Some(ct) => {
                let plain = cur.keyring.decrypt(key, &ct)?;
                Ok((Some(plain), Stamp(Some(ct))))
            }
        }
    }

    pub async fn list(&self, prefix: &str, start: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.current()?;
        let mut keys = self.physical.list(prefix, start, limit).await?;
        keys.retain(|k| !reserved(k));
        Ok(keys)
    }

    /// Every key under `prefix` (at most `max`), read a page at a time.
    pub async fn list_all(&self, prefix: &str, max: usize) -> Result<Vec<String>> {
        const PAGE: usize = 512;
        let mut out: Vec<String> = Vec::new();
        loop {
            // `start` is inclusive: begin just past the last key seen.
            let start = out.last().map(|k| format!("{k}\0"));
            let keys = self.list(prefix, start.as_deref(), PAGE.min(max - out.len())).await?;
            let full = keys.len() == PAGE;
            out.extend(keys);
            if !full || out.len() >= max {
                return Ok(out);
            }
        }
    }

    pub async fn commit(&self, batch: WriteBatch) -> Result<()> {
        if !batch.puts.is_empty() {
            self.spend(batch.puts.len() as u64).await?;
        }
        let cur = self.current()?;
        let mut ops = Vec::with_capacity(batch.puts.len() + batch.deletes.len());
        for (key, plain) in &batch.puts {
            if reserved(key) {
                return Err(Error::InvalidKey("reserved storage key"));
            }
            ops.push(Op::Put { key: key.clone(), value: cur.keyring.encrypt(key, plain)? });
        }
        for key in batch.deletes {
            if reserved(&key) {
                return Err(Error::InvalidKey("reserved storage key"));
            }
            ops.push(Op::Delete { key });
        }
        self.physical.commit(Batch { checks: batch.checks, ops }).await
    }

    /// Streams a consistent snapshot into `out` (blocking; run it on a
    /// blocking thread). Works while the store serves requests.
    pub fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        self.current()?;
        snapshot::write(self.physical.as_ref(), out)
    }

    /// Replaces the whole store with the snapshot in `file` (blocking).
    ///
    /// The snapshot is verified in full first. If it was made under another
    /// root key it is refused unless `force`; when forced, the barrier seals
    /// and the snapshot's unseal keys are needed. Returns (entries, sealed).
    pub fn restore(&self, file: &Path, force: bool) -> Result<(u64, bool)> {
        let cur = self.current()?;
        let open = || std::fs::File::open(file).map(std::io::BufReader::new);
        let mut keyring_ct = None;
        let mut has_config = false;
        for entry in snapshot::Reader::new(open()?) {
            let (k, v) = entry?;
            if k == KEYRING_KEY {
                keyring_ct = Some(v);
            } else if k == SEAL_CONFIG_KEY {
                has_config = true;
            }
        }
        let keyring_ct = keyring_ct
            .filter(|_| has_config)
            .ok_or_else(|| Error::Snapshot("it holds no keyring or seal configuration".into()))?;
        let same_root = cur.root.open_keyring(&keyring_ct, KEYRING_KEY);
        if same_root.is_err() && !force {
            return Err(Error::Snapshot(
                "it was made under another root key; restore it with force, then unseal with that snapshot's keys"
                    .into(),
            ));
        }
        let count = self.physical.import(&mut snapshot::Reader::new(open()?))?;
        match same_root {
            Ok(keyring) => {
                let root = RootKey::from_bytes(cur.root.as_bytes())?;
                // The snapshot's reservation may be older than what this
                // process has used under the same term: keep counting on.
                let same_term = keyring.active_term().0 == cur.keyring.active_term().0;
                let next = Unsealed::new(root, keyring, keyring_ct);
                if same_term {
                    let u = cur.usage.lock().unwrap_or_else(|p| p.into_inner());
                    *next.usage.lock().unwrap_or_else(|p| p.into_inner()) = Usage { pos: u.pos, limit: u.limit };
                }
                self.set_current(Some(next));
                Ok((count, false))
            }
            Err(_) => {
                self.seal();
                Ok((count, true))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedbStore;

    fn barrier() -> Barrier {
        Barrier::new(Arc::new(RedbStore::in_memory().unwrap()))
    }

    #[tokio::test]
    async fn init_unseal_with_threshold_and_seal() {
        let b = barrier();
        assert!(!b.state().await.unwrap().initialized);
        let shares = b.initialize(5, 3, vec![]).await.unwrap();
        let mut batch = WriteBatch::new();
        batch.put("x", Zeroizing::new(b"plain".to_vec()));
        b.commit(batch).await.unwrap();
        b.seal();
        assert!(matches!(b.get("x").await, Err(Error::Sealed)));
        assert_eq!(b.unseal(&shares[0]).await.unwrap().progress, 1);
        assert!(matches!(b.unseal(&shares[0]).await, Err(Error::InvalidKey(_))));
        assert_eq!(b.unseal(&shares[3]).await.unwrap().progress, 2);
        let st = b.unseal(&shares[4]).await.unwrap();
        assert!(!st.sealed);
        assert_eq!(st.progress, 0);
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"plain");
        assert!(matches!(b.initialize(1, 1, vec![]).await, Err(Error::AlreadyInitialized)));
    }

    /// A key service in memory for the barrier's own tests: AES-256-GCM
    /// under a key it holds, with a switch to make it unreachable. (The
    /// server's tests use the clouds' services: moto's KMS and the test
    /// servers.)
    struct LocalSeal {
        id: &'static str,
        key: [u8; 32],
        down: std::sync::atomic::AtomicBool,
        /// Encrypts but may not decrypt (an access policy).
        no_decrypt: std::sync::atomic::AtomicBool,
    }

    impl LocalSeal {
        fn new(id: &'static str, k: u8) -> Arc<LocalSeal> {
            Arc::new(LocalSeal { id, key: [k; 32], down: false.into(), no_decrypt: false.into() })
        }
    }

    #[async_trait::async_trait]
    impl AutoSeal for LocalSeal {
        fn kind(&self) -> &'static str {
            "testkms"
        }
        fn key_id(&self) -> String {
            self.id.into()
        }
        async fn wrap(&self, plain: &[u8]) -> std::result::Result<Vec<u8>, SealError> {
            use aes_gcm::aead::{Aead, KeyInit};
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SealError { retryable: true, message: "testkms is down".into() });
            }
            let c = aes_gcm::Aes256Gcm::new_from_slice(&self.key).unwrap();
            Ok(c.encrypt(&[0u8; 12].into(), plain).unwrap())
        }
        async fn unwrap(&self, blob: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, SealError> {
            use aes_gcm::aead::{Aead, KeyInit};
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SealError { retryable: true, message: "testkms is down".into() });
            }
            if self.no_decrypt.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(SealError { retryable: false, message: "testkms: decrypt is not allowed".into() });
            }
            let c = aes_gcm::Aes256Gcm::new_from_slice(&self.key).unwrap();
            c.decrypt(&[0u8; 12].into(), blob)
                .map(Zeroizing::new)
                .map_err(|_| SealError { retryable: false, message: format!("{} cannot decrypt it", self.id) })
        }
    }

    fn seals(current: Option<&Arc<LocalSeal>>, previous: Option<&Arc<LocalSeal>>) -> Seals {
        let dynamic = |s: Option<&Arc<LocalSeal>>| s.map(|s| s.clone() as Arc<dyn AutoSeal>);
        Seals { current: dynamic(current), previous: dynamic(previous) }
    }

    async fn put_and_check(b: &Barrier, key: &str, value: &[u8]) {
        let mut w = WriteBatch::new();
        w.put(key, Zeroizing::new(value.to_vec()));
        b.commit(w).await.unwrap();
        assert_eq!(b.get(key).await.unwrap().unwrap().as_slice(), value);
    }

    #[tokio::test]
    async fn an_auto_seal_unseals_without_keys_and_hands_out_recovery_keys() {
        let b = barrier();
        let kms = LocalSeal::new("a", 1);
        b.set_seals(seals(Some(&kms), None));
        let recovery = b.initialize(5, 3, vec![]).await.unwrap();
        put_and_check(&b, "x", b"1").await;
        b.seal();
        let st = b.state().await.unwrap();
        assert!(st.recovery && st.sealed && !st.migration);
        assert_eq!((st.kind.as_str(), st.shares, st.threshold), ("testkms", 5, 3));
        // Recovery keys authorise an unseal by the key service; others do not.
        let foreign = barrier().initialize(5, 3, vec![]).await.unwrap();
        for k in &foreign[..2] {
            b.unseal(k).await.unwrap();
        }
        assert!(matches!(b.unseal(&foreign[2]).await, Err(Error::WrongKeys)));
        assert!(b.is_sealed());
        for k in &recovery[..2] {
            assert!(b.unseal(k).await.unwrap().sealed);
        }
        assert!(!b.unseal(&recovery[2]).await.unwrap().sealed);
        b.seal();

        // The key service down: sealed, with the reason in the status.
        kms.down.store(true, std::sync::atomic::Ordering::SeqCst);
        match b.auto_unseal().await {
            Err(Error::KeyService { retryable: true, .. }) => {}
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        let st = b.state().await.unwrap();
        assert!(st.sealed);
        assert!(st.message.contains("testkms is down"), "{}", st.message);
        kms.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(b.auto_unseal().await.unwrap());
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"1");
        assert!(b.state().await.unwrap().message.is_empty());
        assert!(!b.auto_unseal().await.unwrap(), "nothing to do once unsealed");

        // Another key cannot open it.
        b.seal();
        b.set_seals(seals(Some(&LocalSeal::new("a", 2)), None));
        assert!(matches!(b.auto_unseal().await, Err(Error::KeyService { retryable: false, .. })));
        assert!(b.is_sealed());
    }

    /// A key that encrypts but may not decrypt never becomes the only copy
    /// of the root key: init and migration fail, and nothing changes.
    #[tokio::test]
    async fn a_wrapped_root_key_is_unwrapped_before_it_is_stored() {
        let b = barrier();
        let kms = LocalSeal::new("a", 1);
        kms.no_decrypt.store(true, std::sync::atomic::Ordering::SeqCst);
        b.set_seals(seals(Some(&kms), None));
        assert!(matches!(b.initialize(3, 2, vec![]).await, Err(Error::KeyService { retryable: false, .. })));
        assert!(b.seal_config().await.unwrap().is_none(), "nothing stored");
        // Shamir to that key: refused, the store keeps its Shamir seal.
        b.set_seals(Seals::default());
        let shares = b.initialize(3, 2, vec![]).await.unwrap();
        b.seal();
        b.set_seals(seals(Some(&kms), None));
        b.enter_share(&shares[0], true).await.unwrap();
        assert!(b.enter_share(&shares[1], true).await.is_err());
        assert_eq!(b.seal_config().await.unwrap().unwrap().kind, "shamir");
        b.set_seals(Seals::default());
        b.unseal(&shares[0]).await.unwrap();
        assert!(!b.unseal(&shares[1]).await.unwrap().sealed, "the old keys still open it");
    }

    /// A node still configured for a key the store moved away from cannot
    /// rekey (it would put the root key back under the old key).
    #[tokio::test]
    async fn rekey_takes_the_stores_own_key_only() {
        let b = barrier();
        let a = LocalSeal::new("a", 1);
        b.set_seals(seals(Some(&a), None));
        let recovery = b.initialize(3, 2, vec![]).await.unwrap();
        let given: Vec<String> = recovery[..2].iter().map(|s| s.to_string()).collect();
        // The same key service under another name (an alias of it).
        b.set_seals(seals(Some(&LocalSeal::new("alias-of-a", 1)), None));
        match b.rekey(&given, 3, 2).await {
            Err(Error::InvalidSealConfig(m)) => assert!(m.contains("the store's is a"), "{m}"),
            other => panic!("{:?}", other.map(|_| ()).map_err(|e| e.to_string())),
        }
        b.set_seals(seals(Some(&a), None));
        assert_eq!(b.rekey(&given, 3, 2).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn rekey_under_an_auto_seal_takes_and_replaces_the_recovery_keys() {
        let b = barrier();
        let kms = LocalSeal::new("a", 1);
        b.set_seals(seals(Some(&kms), None));
        let recovery = b.initialize(3, 2, vec![]).await.unwrap();
        put_and_check(&b, "x", b"1").await;
        let wrong = barrier().initialize(3, 2, vec![]).await.unwrap();
        let given = |k: &[Zeroizing<String>]| k[..2].iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(b.rekey(&given(&wrong), 3, 2).await, Err(Error::WrongKeys)));
        assert!(matches!(b.rekey(&given(&recovery)[..1], 3, 2).await, Err(Error::InvalidSealConfig(_))));
        let fresh = b.rekey(&given(&recovery), 4, 2).await.unwrap();
        assert_eq!(fresh.len(), 4);
        assert!(matches!(b.rekey(&given(&recovery), 3, 2).await, Err(Error::WrongKeys)), "old keys are spent");
        b.seal();
        assert!(b.auto_unseal().await.unwrap());
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"1");
        assert_eq!(b.state().await.unwrap().shares, 4);
    }

    /// Shamir to an auto seal, to another, and back to Shamir, keeping the
    /// data; the keys operators hold change role, never get lost.
    #[tokio::test]
    async fn seals_migrate_both_ways_and_between_keys_without_losing_data() {
        let b = barrier();
        let unseal = b.initialize(3, 2, vec![]).await.unwrap();
        put_and_check(&b, "x", b"1").await;
        b.seal();

        // Shamir to KMS a.
        let a = LocalSeal::new("a", 1);
        b.set_seals(seals(Some(&a), None));
        let st = b.state().await.unwrap();
        assert!(st.migration && st.message.contains("migration"), "{}", st.message);
        assert!(matches!(b.unseal(&unseal[0]).await, Err(Error::InvalidSealConfig(_))), "needs migrate");
        assert!(matches!(b.auto_unseal().await, Ok(false)));
        // Wrong keys change nothing.
        let foreign = barrier().initialize(3, 2, vec![]).await.unwrap();
        b.enter_share(&foreign[0], true).await.unwrap();
        assert!(matches!(b.enter_share(&foreign[1], true).await, Err(Error::WrongKeys)));
        assert_eq!(b.seal_config().await.unwrap().unwrap().kind, "shamir");
        b.enter_share(&unseal[0], true).await.unwrap();
        let st = b.enter_share(&unseal[1], true).await.unwrap();
        assert!(!st.sealed && st.recovery && !st.migration);
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"1");
        b.seal();
        assert!(b.auto_unseal().await.unwrap());
        b.seal();
        // The old unseal keys are now recovery keys, and open nothing.
        b.set_seals(Seals::default());
        assert!(b.state().await.unwrap().message.contains("no seal block"));
        assert!(matches!(b.unseal(&unseal[0]).await, Err(Error::InvalidSealConfig(_))));

        // KMS a to KMS b: a still decrypts, b encrypts from now on.
        let bk = LocalSeal::new("b", 2);
        b.set_seals(seals(Some(&bk), Some(&a)));
        assert!(b.state().await.unwrap().migration);
        b.enter_share(&unseal[2], true).await.unwrap();
        assert!(!b.enter_share(&unseal[0], true).await.unwrap().sealed);
        b.seal();
        b.set_seals(seals(Some(&bk), None));
        assert!(b.auto_unseal().await.unwrap());
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"1");
        b.seal();
        b.set_seals(seals(Some(&a), None));
        assert!(b.auto_unseal().await.is_err(), "a no longer opens it");
        // A node still naming both after the migration unseals with b.
        b.set_seals(seals(Some(&bk), Some(&a)));
        assert!(!b.state().await.unwrap().migration);
        assert!(b.auto_unseal().await.unwrap());
        b.seal();

        // KMS b back to Shamir: the recovery keys become unseal keys.
        b.set_seals(seals(None, Some(&bk)));
        b.enter_share(&unseal[1], true).await.unwrap();
        assert!(!b.enter_share(&unseal[2], true).await.unwrap().sealed);
        b.seal();
        b.set_seals(Seals::default());
        let st = b.state().await.unwrap();
        assert!(!st.recovery && !st.migration && st.kind == "shamir");
        b.unseal(&unseal[0]).await.unwrap();
        assert!(!b.unseal(&unseal[1]).await.unwrap().sealed);
        assert_eq!(b.get("x").await.unwrap().unwrap().as_slice(), b"1");
        assert!(matches!(b.enter_share(&unseal[0], true).await, Err(Error::InvalidSealConfig(_))));
    }

    #[tokio::test]
    async fn wrong_shares_reset_progress() {
        let b = barrier();
        let _ = b.initialize(3, 2, vec![]).await.unwrap();
        b.seal();
        let other = barrier();
        let foreign = other.initialize(3, 2, vec![]).await.unwrap();
        b.unseal(&foreign[0]).await.unwrap();
        assert!(matches!(b.unseal(&foreign[1]).await, Err(Error::WrongKeys)));
        assert_eq!(b.state().await.unwrap().progress, 0);
        assert!(b.is_sealed());
    }

    #[tokio::test]
    async fn rotate_then_rekey_keep_data_readable() {
        let b = barrier();
        let shares = b.initialize(3, 2, vec![]).await.unwrap();
        let mut w = WriteBatch::new();
        w.put("old", Zeroizing::new(b"1".to_vec()));
        b.commit(w).await.unwrap();
        assert_eq!(b.rotate().await.unwrap().term, 2);
        let mut w = WriteBatch::new();
        w.put("new", Zeroizing::new(b"2".to_vec()));
        b.commit(w).await.unwrap();

        let given: Vec<String> = shares[..2].iter().map(|s| s.to_string()).collect();
        let new_shares = b.rekey(&given, 5, 3).await.unwrap();
        assert_eq!(new_shares.len(), 5);
        b.seal();
        // The old shares no longer open the store.
        b.unseal(&shares[0]).await.unwrap();
        b.unseal(&shares[1]).await.unwrap();
        assert!(matches!(b.unseal(&shares[2]).await, Err(Error::WrongKeys)));
        for s in &new_shares[2..5] {
            b.unseal(s).await.unwrap();
        }
        assert!(!b.is_sealed());
        assert_eq!(b.get("old").await.unwrap().unwrap().as_slice(), b"1");
        assert_eq!(b.get("new").await.unwrap().unwrap().as_slice(), b"2");
        assert_eq!(b.key_info().unwrap().terms, 2);
    }

    #[tokio::test]
    async fn list_all_pages_through_every_key_up_to_max() {
        let b = barrier();
        b.initialize(1, 1, vec![]).await.unwrap();
        let mut w = WriteBatch::new();
        for i in 0..1300 {
            w.put(format!("p/{i:05}"), Zeroizing::new(vec![1]));
        }
        w.put("q/0", Zeroizing::new(vec![1]));
        b.commit(w).await.unwrap();
        let all = b.list_all("p/", usize::MAX).await.unwrap();
        assert_eq!(all.len(), 1300);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert_eq!(b.list_all("p/", 700).await.unwrap().len(), 700);
        assert!(b.list_all("r/", usize::MAX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stamps_make_writes_conditional() {
        let b = barrier();
        b.initialize(1, 1, vec![]).await.unwrap();
        let (_, stamp) = b.get_stamped("k").await.unwrap();
        let mut w = WriteBatch::new();
        w.expect("k", &stamp).put("k", Zeroizing::new(b"a".to_vec()));
        b.commit(w).await.unwrap();
        let mut w = WriteBatch::new();
        w.expect("k", &stamp).put("k", Zeroizing::new(b"b".to_vec()));
        assert!(matches!(b.commit(w).await, Err(Error::Conflict)));
        assert_eq!(b.get("k").await.unwrap().unwrap().as_slice(), b"a");
    }

    #[tokio::test]
    async fn snapshot_restore_same_and_foreign_root() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("s.snap");
        let b = barrier();
        b.initialize(1, 1, vec![]).await.unwrap();
        let mut w = WriteBatch::new();
        w.put("a", Zeroizing::new(b"1".to_vec()));
        b.commit(w).await.unwrap();
        b.snapshot(&mut std::fs::File::create(&snap).unwrap()).unwrap();
        let mut w = WriteBatch::new();
        w.put("a", Zeroizing::new(b"2".to_vec())).put("b", Zeroizing::new(b"3".to_vec()));
        b.commit(w).await.unwrap();
        let (n, sealed) = b.restore(&snap, false).unwrap();
        // The seal configuration, the keyring, the key term's usage, `a`.
        assert_eq!(n, 4);
        assert!(!sealed);
        assert_eq!(b.get("a").await.unwrap().unwrap().as_slice(), b"1");
        assert!(b.get("b").await.unwrap().is_none());

        // A damaged snapshot changes nothing.
        let mut bytes = std::fs::read(&snap).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let bad = dir.path().join("bad.snap");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(matches!(b.restore(&bad, true), Err(Error::Snapshot(_))));
        assert_eq!(b.get("a").await.unwrap().unwrap().as_slice(), b"1");

        // Another cluster's snapshot needs force, then its own keys.
        let other = barrier();
        let other_keys = other.initialize(1, 1, vec![]).await.unwrap();
        assert!(matches!(other.restore(&snap, false), Err(Error::Snapshot(_))));
        let (_, sealed) = other.restore(&snap, true).unwrap();
        assert!(sealed);
        assert!(matches!(other.unseal(&other_keys[0]).await, Err(Error::WrongKeys)));
    }

    /// Key wear: past `max_operations` encryptions a term is rotated, and
    /// the count survives a restart (it lives in the store, in reserved
    /// ranges), so a restarted server does not count from zero again.
    #[tokio::test]
    async fn a_term_is_rotated_before_its_operations_run_out_across_restarts() {
        let store: Arc<dyn Physical> = Arc::new(crate::RedbStore::in_memory().unwrap());
        let b = Barrier::new(store.clone());
        let keys = b.initialize(1, 1, vec![]).await.unwrap();
        b.unseal(&keys[0]).await.unwrap();
        b.set_max_operations(10);
        let put = |i: usize| {
            let mut w = WriteBatch::new();
            w.put(format!("k/{i}"), Zeroizing::new(vec![i as u8]));
            w
        };
        // Respected: nine encryptions stay on the first term.
        for i in 0..9 {
            b.commit(put(i)).await.unwrap();
        }
        assert_eq!(b.key_info().unwrap().term, 1);
        // Exceeded: the tenth and later go under a new term.
        for i in 9..12 {
            b.commit(put(i)).await.unwrap();
        }
        assert_eq!(b.key_info().unwrap().term, 2);
        for i in 0..12 {
            assert_eq!(b.get(&format!("k/{i}")).await.unwrap().unwrap().as_slice(), &[i as u8], "old terms still read");
        }
        // Six more under term 2, then a restart: the count goes on from the
        // stored reservation, so four more reach the limit.
        for i in 12..18 {
            b.commit(put(i)).await.unwrap();
        }
        b.seal();
        let b = Barrier::new(store);
        b.unseal(&keys[0]).await.unwrap();
        b.set_max_operations(10);
        for i in 18..22 {
            b.commit(put(i)).await.unwrap();
        }
        assert_eq!(b.key_info().unwrap().term, 3, "the restart counted from zero again");
    }
}
