//! The reconciler: replication rules from a source folder to target
//! folders on other mounts (local or cloud), run on every write and by
//! periodic drift scans.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::Mac;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditValue, Caller};
use crate::value::SecretValue;
use crate::{Error, Result, Timestamp};
use keybridge_barrier::fill_cache::FillCache;

pub const MARKER_TAG: &str = "keybridge-replica";
pub(crate) const RULES: &str = "sync/rules/";
pub(crate) const JOURNAL: &str = "sync/journal/";
pub(crate) const STATE: &str = "sync/state/";
pub(crate) const FP_KEY: &str = "sync/fingerprint-key";

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    #[default]
    Overwrite,
    Adopt,
    Alert,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    #[default]
    Retain,
    Propagate,
}

impl OnConflict {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "overwrite" => Ok(OnConflict::Overwrite),
            "adopt" => Ok(OnConflict::Adopt),
            "alert" => Ok(OnConflict::Alert),
            o => Err(Error::InvalidArgument(format!("on_conflict must be overwrite, adopt or alert, not {o:?}"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OnConflict::Overwrite => "overwrite",
            OnConflict::Adopt => "adopt",
            OnConflict::Alert => "alert",
        }
    }
}

impl OnDelete {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "" | "retain" => Ok(OnDelete::Retain),
            "propagate" => Ok(OnDelete::Propagate),
            o => Err(Error::InvalidArgument(format!("delete must be retain or propagate, not {o:?}"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            OnDelete::Retain => "retain",
            OnDelete::Propagate => "propagate",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub id: String,
    /// A full folder path with its trailing `/` (`secret/app/`).
    pub source: String,
    pub targets: Vec<String>,
    pub on_conflict: OnConflict,
    pub delete: OnDelete,
    pub take_over: bool,
    pub scan_interval_secs: u64,
    /// For clouds whose listing shows no versions (GCP): seconds between
    /// scans that describe every replica (0: ten scan intervals).
    #[serde(default)]
    pub deep_scan_interval_secs: u64,
    pub coalesce_ms: u64,
    pub created: Timestamp,
    /// What the writer was checked to hold when the rule was written, one
    /// line each (`read on secret/data/app/*`): the authority it runs with.
    #[serde(default)]
    pub authorizations: Vec<String>,
    /// The writer's token: accessor and display name.
    #[serde(default)]
    pub written_by: String,
    /// The id of the mount each folder (source and targets) routed to when
    /// the rule was written: the authority was checked against those. If
    /// the mount table changes under a folder, the rule stops there.
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
}

impl Rule {
    /// The replica of `source_path` in `target`.
    pub fn target_path(&self, target: &str, source_path: &str) -> Option<String> {
        source_path.strip_prefix(&self.source).filter(|r| !r.is_empty()).map(|rest| format!("{target}{rest}"))
    }

    pub fn deep_interval(&self) -> u64 {
        if self.deep_scan_interval_secs == 0 {
            self.scan_interval_secs.saturating_mul(10)
        } else {
            self.deep_scan_interval_secs
        }
    }

    pub fn covers(&self, path: &str) -> bool {
        path.starts_with(&self.source) && path.len() > self.source.len()
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Checks a new rule against the others: no target inside its own source
/// (or the reverse), no cycle through other rules, no target shared with
/// another rule.
pub fn check_rules(new: &Rule, others: &[Rule]) -> Result<()> {
    if new.targets.is_empty() {
        return Err(Error::InvalidArgument("give at least one target".into()));
    }
    for (i, t) in new.targets.iter().enumerate() {
        if overlaps(t, &new.source) {
            return Err(Error::InvalidArgument(format!(
                "target {t} overlaps the source {}; a rule cannot replicate into itself",
                new.source
            )));
        }
        if let Some(u) = new.targets[i + 1..].iter().find(|u| overlaps(t, u)) {
            return Err(Error::InvalidArgument(format!("targets {t} and {u} overlap")));
        }
        for o in others.iter().filter(|o| o.name != new.name) {
            if let Some(u) = o.targets.iter().find(|u| overlaps(t, u)) {
                return Err(Error::InvalidArgument(format!(
                    "target {t} overlaps {u}, a target of rule {:?}; two rules may not write the same secret",
                    o.name
                )));
            }
        }
    }
    // Cycles: rule a feeds rule b when a target of a overlaps b's source.
    let mut all: Vec<&Rule> = others.iter().filter(|o| o.name != new.name).collect();
    all.push(new);
    let feeds = |a: &Rule, b: &Rule| a.targets.iter().any(|t| overlaps(t, &b.source));
    // Depth-first from the new rule: reaching it again is a cycle.
    let mut stack: Vec<(&Rule, Vec<String>)> = vec![(new, vec![new.name.clone()])];
    let mut seen = std::collections::HashSet::new();
    while let Some((r, path)) = stack.pop() {
        for n in all.iter().filter(|n| feeds(r, n)) {
            if n.name == new.name {
                let mut chain = path.clone();
                chain.push(new.name.clone());
                return Err(Error::InvalidArgument(format!(
                    "the rule would form a replication cycle: {}",
                    chain.join(" -> ")
                )));
            }
            if seen.insert(n.name.clone()) {
                let mut p = path.clone();
                p.push(n.name.clone());
                stack.push((n, p));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    pub rule: String,
    pub path: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record {
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

/// The reconciler's in-memory state: status, scan times, retry backoff,
/// and the channel secret watchers listen on.
pub(crate) struct Runtime {
    pub notify: tokio::sync::Notify,
    pub status: Mutex<BTreeMap<(String, String), TargetStatus>>,
    pub last_scan: Mutex<HashMap<String, Instant>>,
    pub last_deep_scan: Mutex<HashMap<String, Instant>>,
    /// Journal key -> (next attempt, attempts so far).
    pub retry: Mutex<HashMap<String, (Instant, u32)>>,
    /// The rules, read from the store once and again after each change.
    pub rules: FillCache<(), Arc<Vec<Rule>>>,
    pub events: tokio::sync::broadcast::Sender<SecretEvent>,
    /// Scans asked for by `Run` (rule -> deep), done by the worker.
    pub forced: Mutex<HashMap<String, bool>>,
    /// Scans finished per rule, for `Run --wait`.
    pub scans_done: Mutex<HashMap<String, u64>>,
    /// One pass at a time (the worker's, or a waiting `Run`'s).
    pub pass_lock: tokio::sync::Mutex<()>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            notify: Default::default(),
            status: Default::default(),
            last_scan: Default::default(),
            last_deep_scan: Default::default(),
            retry: Default::default(),
            rules: FillCache::new(1),
            events: tokio::sync::broadcast::channel(1024).0,
            forced: Default::default(),
            scans_done: Default::default(),
            pass_lock: Default::default(),
        }
    }
}

impl Runtime {
    pub fn set_status(&self, rule: &Rule, source: &str, target: &str, state: &'static str, message: String, v: u64) {
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

    pub fn publish(&self, path: &str, kind: &'static str, version: u64, provider_id: &str) {
        let _ = self.events.send(SecretEvent {
            path: path.to_string(),
            kind,
            version,
            provider_id: provider_id.to_string(),
            time: Timestamp::now(),
        });
    }

    pub fn backoff(&self, key: &str) -> bool {
        let r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        r.get(key).is_some_and(|(at, _)| *at > Instant::now())
    }

    pub fn failed(&self, key: &str) {
        let mut r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        let e = r.entry(key.to_string()).or_insert((Instant::now(), 0));
        e.1 += 1;
        let delay = Duration::from_millis(200 * (1u64 << e.1.min(8))).min(Duration::from_secs(60));
        e.0 = Instant::now() + delay;
    }

    pub fn succeeded(&self, key: &str) {
        self.retry.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// HMAC-SHA256 of a value's canonical encoding, hex.
pub(crate) fn fingerprint(key: &[u8], v: &SecretValue) -> String {
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

pub(crate) fn state_key(rule_id: &str, target_path: &str) -> String {
    format!("{STATE}{rule_id}/{target_path}")
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Validates a rule name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("rule name {name:?} must be 1-64 of a-z, 0-9, - and _")))
    }
}

/// The audit record of an adopt: the target's value pushed to the source.
pub(crate) fn adopt_caller(source: &str, target: &str, value: &SecretValue) -> Caller {
    Caller::new(None, "keybridge.v1.Sync/Adopt")
        .with_path(source)
        .with("adopted_from", AuditValue::plain(target.to_string()))
        .with("value", AuditValue::of_value(value))
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
