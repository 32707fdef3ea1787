//! The reconciler: replication rules from a source folder to target
//! folders on other mounts (local or cloud), run on every write and by
//! periodic drift scans, and coordinated rotation of a secret and its
//! replicas.
//!
//! It reaches mounts only through [`Store`] and the gateway only through
//! [`Host`], both implemented by the core; it reads and writes its own
//! state in the barrier. It checks no token: the core authorizes each API
//! call and records, in each rule, the authority its writer was checked to
//! hold, before it hands the rule here.
//!
//! Stored in the barrier (so encrypted like everything else):
//! - `sync/rules/<name>`: a [`Rule`].
//! - `sync/journal/<time>-<uuid>`: a change to replicate, written before
//!   the source write it announces, removed once every target has it.
//! - `sync/state/<rule id>/<target path>`: a [`Record`] of what Keybridge
//!   last wrote there: the value's fingerprint (HMAC-SHA256 under
//!   `sync/fingerprint-key`, never the value), the cloud's version id, the
//!   marker the cloud's listing shows for that version, and a `pending`
//!   flag set before the write is sent, so a write retried after a crash
//!   first looks whether it already landed.
//!
//! Ownership: replicas carry the tag `keybridge-replica = <rule id>` (AWS
//! secret tags, GCP annotations, Azure version tags, local custom metadata)
//! besides the record; a target secret with neither is not overwritten
//! unless the rule says `take_over`.
//!
//! Drift: a target whose current version is not the one recorded was
//! changed outside Keybridge; the rule's `on_conflict` decides (overwrite,
//! adopt, alert). Tie-break for adopt: if the source changed too since the
//! last replication, the source wins and the target's change is reported as
//! a conflict; of two targets changed at once, the first in the rule's
//! target order is adopted and the others are overwritten and reported.
//!
//! Scans: the source side compares each source secret's version with the
//! records (free for local sources); the target side lists each target
//! mount once (AWS and Azure listings carry a marker of the current
//! version, so nothing else is called unless a marker changed); GCP's
//! listing carries none, so its scan describes each replica (two calls per
//! secret).

mod error;
mod journal;
mod rotation;
mod rules;
mod scan;
pub mod store;
mod worker;

pub use error::{Error, Result};
pub use journal::{Announced, JournalEntry};
pub use rotation::{CopyState, RotateSpec, Rotation, RotationState, RotationVerifier, Schedule};
pub use rules::{OnConflict, OnDelete, Rule, RuleSpec, check_name, check_rules};
pub use store::{Current, Head, Host, Issued, Listing, Reach, Routed, STAGING_SUFFIX, Staged, Staging, Store};
pub use worker::{CallCount, DEFAULT_PAGE, MAX_PAGE, STATES, StateCount, StatusQuery, SyncStatus};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::Mac;
use serde::{Deserialize, Serialize};

use keybridge_audit::Timestamp;
use keybridge_barrier::Barrier;
use keybridge_barrier::fill_cache::{FillCache, Ticket};
use keybridge_value::SecretValue;

/// The tag a replica carries: the id of the rule that keeps it.
pub const MARKER_TAG: &str = "keybridge-replica";
/// Where rules are stored, one entry each.
pub const RULES: &str = "sync/rules/";
const JOURNAL: &str = "sync/journal/";
const STATE: &str = "sync/state/";
const FP_KEY: &str = "sync/fingerprint-key";

/// What Keybridge last wrote to a replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub source: String,
    pub fingerprint: String,
    pub version_id: String,
    pub marker: Option<String>,
    pub source_version: u64,
    pub pending: bool,
    pub stale: bool,
    /// The target was someone else's when last looked at (left alone, not
    /// written); scans skip it until the source changes or the rule takes
    /// over.
    #[serde(default)]
    pub foreign: bool,
    /// The source's current version when this replica was last brought in
    /// line: its number on a local source, the cloud's version id on a
    /// cloud source (where other tools' versions have no number).
    #[serde(default)]
    pub source_mark: String,
    /// When Keybridge last wrote this record (unset in records older than
    /// the field).
    #[serde(default)]
    pub at: Timestamp,
    /// What that write did, when there is more to say than "in sync"
    /// (`deleted outside Keybridge; recreated from the source`).
    #[serde(default)]
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub rule: String,
    pub source: String,
    pub target: String,
    pub state: &'static str,
    pub message: String,
    pub updated: Timestamp,
    pub source_version: u64,
}

/// The reconciler: its state in the barrier and in memory (what it found
/// wrong, scan times, retry backoff, and the channel secret watchers listen
/// on).
pub struct Reconciler {
    barrier: Arc<Barrier>,
    verifier: Option<Arc<dyn RotationVerifier>>,
    notify: tokio::sync::Notify,
    /// Replicas found not in sync since the process started, by rule and
    /// target path (cleared when they are): memory grows with what is
    /// wrong, not with the number of replicas, whose records say the rest.
    status: Mutex<BTreeMap<(String, String), TargetStatus>>,
    last_scan: Mutex<HashMap<String, Instant>>,
    last_deep_scan: Mutex<HashMap<String, Instant>>,
    /// Journal key -> (next attempt, attempts so far).
    retry: Mutex<HashMap<String, (Instant, u32)>>,
    /// The rules, read from the store once and again after each change.
    rules: FillCache<(), Arc<Vec<Rule>>>,
    events: tokio::sync::broadcast::Sender<SecretEvent>,
    /// Scans asked for by `Run` (rule -> deep), done by the worker.
    forced: Mutex<HashMap<String, bool>>,
    /// Scan numbers: a `Run` waits for a scan numbered after it asked.
    /// Taken after `forced` when both are held.
    scans: Mutex<Scans>,
    /// This reconciler's, in the resume tokens of its `Run` answers: a
    /// token from another node's (or an earlier process's) counts nothing
    /// here.
    instance: u64,
    /// Workers running passes (`worker_running`): while one is, a waiting
    /// `Run` follows their scans instead of making passes itself.
    workers: std::sync::atomic::AtomicUsize,
    /// One pass at a time (the worker's, or a waiting `Run`'s).
    pass_lock: tokio::sync::Mutex<()>,
    /// Rotations this process started, finished and rolled back (metrics).
    rotation_counts: [std::sync::atomic::AtomicU64; 3],
}

/// Scans by number, one sequence for every rule: a scan numbered above
/// the number at the time a `Run` asked started after it.
#[derive(Default)]
pub(crate) struct Scans {
    /// The last number given.
    pub(crate) last: u64,
    /// Per rule: scans started, the number of the last that finished (and
    /// of the last deep one, in `done_deep`), and whether one runs now.
    pub(crate) started: HashMap<String, u64>,
    pub(crate) done: HashMap<String, u64>,
    /// The number of the last deep scan that finished, per rule.
    pub(crate) done_deep: HashMap<String, u64>,
    pub(crate) running: std::collections::HashSet<String>,
}

/// See [`Reconciler::worker_running`].
pub struct WorkerRunning<'a>(&'a Reconciler);

impl Drop for WorkerRunning<'_> {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The journal as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalGauge {
    /// Entries waiting (counted up to [`JOURNAL_GAUGE_MAX`]).
    pub depth: u64,
    /// When the oldest waiting entry was written, ms since the epoch.
    pub oldest_ms: Option<u64>,
    /// The oldest waiting entry of each rule (of the first 1024 entries).
    pub oldest_by_rule: BTreeMap<String, u64>,
}

/// The most journal entries a metrics scrape counts.
pub const JOURNAL_GAUGE_MAX: usize = 100_000;

impl Reconciler {
    /// `verifier` tries each rotation's new value before it is promoted.
    pub fn new(barrier: Arc<Barrier>, verifier: Option<Arc<dyn RotationVerifier>>) -> Self {
        Reconciler {
            barrier,
            verifier,
            notify: Default::default(),
            status: Default::default(),
            last_scan: Default::default(),
            last_deep_scan: Default::default(),
            retry: Default::default(),
            rules: FillCache::new(1),
            events: tokio::sync::broadcast::channel(1024).0,
            forced: Default::default(),
            scans: Default::default(),
            instance: rand::random(),
            workers: Default::default(),
            pass_lock: Default::default(),
            rotation_counts: Default::default(),
        }
    }

    /// Scans of `rule` this reconciler has started.
    pub fn scans_started(&self, rule: &str) -> u64 {
        self.scans.lock().unwrap_or_else(|p| p.into_inner()).started.get(rule).copied().unwrap_or(0)
    }

    /// Held by the worker while it runs passes: a waiting `Run` then
    /// leaves the passes to it, so no request holds (or cuts short) a long
    /// scan.
    pub fn worker_running(&self) -> WorkerRunning<'_> {
        self.workers.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        WorkerRunning(self)
    }

    /// Rotations this process started, finished and rolled back.
    pub fn rotation_counts(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.rotation_counts[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    fn count_rotation(&self, which: usize) {
        self.rotation_counts[which].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the worker waits on between passes.
    pub fn wakeup(&self) -> &tokio::sync::Notify {
        &self.notify
    }

    /// Changes to secrets, for watchers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SecretEvent> {
        self.events.subscribe()
    }

    /// The rules as stored now, for a later [`Reconciler::rules_changed_since`].
    pub fn rules_ticket(&self) -> Ticket {
        self.rules.ticket()
    }

    pub fn rules_changed_since(&self, ticket: Ticket) -> bool {
        self.rules.changed_since(ticket)
    }

    /// Forgets what it knows of the stored rules (after a restore or an
    /// unseal) and runs a pass.
    pub fn reload(&self) {
        self.rules.clear();
        self.notify.notify_one();
    }

    fn set_status(&self, rule: &Rule, source: &str, target: &str, state: &'static str, message: String, v: u64) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.insert(
            (rule.name.clone(), target.to_string()),
            TargetStatus {
                rule: rule.name.clone(),
                source: source.to_string(),
                target: target.to_string(),
                state,
                message,
                updated: Timestamp::now(),
                source_version: v,
            },
        );
    }

    /// A replica is in sync again: its record says the rest.
    fn in_sync(&self, rule: &Rule, target: &str) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).remove(&(rule.name.clone(), target.to_string()));
    }

    /// Tells watchers of `path` that it changed.
    pub fn publish(&self, path: &str, kind: &'static str, version: u64, provider_id: &str) {
        let _ = self.events.send(SecretEvent {
            path: path.to_string(),
            kind,
            version,
            provider_id: provider_id.to_string(),
            time: Timestamp::now(),
        });
    }

    fn backoff(&self, key: &str) -> bool {
        let r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        r.get(key).is_some_and(|(at, _)| *at > Instant::now())
    }

    fn failed(&self, key: &str) {
        let mut r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        let e = r.entry(key.to_string()).or_insert((Instant::now(), 0));
        e.1 = e.1.saturating_add(1);
        let delay = Duration::from_millis(200 * (1u64 << e.1.min(8))).min(Duration::from_secs(60));
        e.0 = Instant::now() + delay;
    }

    fn succeeded(&self, key: &str) {
        self.retry.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// HMAC-SHA256 of a value's canonical encoding, hex.
pub fn fingerprint(key: &[u8], v: &SecretValue) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    match v {
        SecretValue::Fields(m) => {
            mac.update(b"F");
            for (k, v) in m {
                mac.update(&(k.len() as u64).to_be_bytes());
                mac.update(k.as_bytes());
                mac.update(&(v.len() as u64).to_be_bytes());
                mac.update(v.as_bytes());
            }
        }
        SecretValue::Binary(b) => {
            mac.update(b"B");
            mac.update(b);
        }
        SecretValue::Text(t) => {
            mac.update(b"T");
            mac.update(t.as_bytes());
        }
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Where the record of a rule's replica at `target_path` is kept.
pub fn state_key(rule_id: &str, target_path: &str) -> String {
    format!("{STATE}{rule_id}/{target_path}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn encode_json<T: Serialize>(v: &T) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(serde_json::to_vec(v).expect("serializable"))
}

/// A change to one secret, for watchers (no value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEvent {
    pub path: String,
    pub kind: &'static str,
    pub version: u64,
    pub provider_id: String,
    pub time: Timestamp,
}
