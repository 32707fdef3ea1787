//! Replication rules: the model, the checks a new rule must pass (no
//! cycles, no shared targets), and their storage. The core authorizes the
//! rule operations and records the writer's authority in the rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_audit::Timestamp;
use keybridge_barrier::WriteBatch;

use crate::{Error, Host, RULES, Reconciler, Result, STATE, encode_json};

use serde::{Deserialize, Serialize};

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

/// What the reconciler asks of a rule: everything but name and paths is
/// optional.
#[derive(Clone, Debug, Default)]
pub struct RuleSpec {
    pub name: String,
    pub source: String,
    pub targets: Vec<String>,
    pub on_conflict: String,
    pub delete: String,
    pub take_over: bool,
    pub scan_interval_secs: u64,
    pub deep_scan_interval_secs: u64,
    pub coalesce_ms: u64,
}

impl Reconciler {
    /// Whether every folder of the rule still routes to the mount it did
    /// when the rule was written (rules from before this record: yes).
    pub fn rule_routes_hold(&self, host: &dyn Host, rule: &Rule) -> Result<()> {
        for (folder, id) in &rule.mounts {
            if host.mount_id(folder)?.as_ref() != Some(id) {
                return Err(Error::FailedPrecondition(format!(
                    "the mount serving {folder} changed since rule {:?} was written (disabled, or another mounted there); \
                     write the rule again to go on",
                    rule.name
                )));
            }
        }
        Ok(())
    }

    /// Stores a rule (its authority already recorded), or replaces the rule
    /// of the same name, keeping that rule's id so its records stay valid;
    /// refused if it would form a cycle or share a target with another
    /// rule. The caller serializes rule changes.
    pub async fn save_rule(&self, host: &dyn Host, mut rule: Rule) -> Result<Rule> {
        let rules = self.rules(host).await?;
        if let Some(old) = rules.iter().find(|r| r.name == rule.name) {
            rule.id = old.id.clone();
            rule.created = old.created;
        }
        check_rules(&rule, &rules)?;
        let mut batch = WriteBatch::new();
        batch.put(format!("{RULES}{}", rule.name), encode_json(&rule));
        self.barrier.commit(batch).await?;
        self.rules.clear();
        // A first scan soon: existing secrets replicate.
        self.last_scan.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
        self.notify.notify_one();
        Ok(rule)
    }

    /// The rule named `name`.
    pub async fn rule(&self, host: &dyn Host, name: &str) -> Result<Rule> {
        self.rules(host)
            .await?
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no sync rule {name:?}")))
    }

    /// Deletes a rule and its records; replicas stay where they are. The
    /// caller serializes rule changes.
    pub async fn delete_rule(&self, host: &dyn Host, name: &str) -> Result<()> {
        let rule = self.rule(host, name).await?;
        let mut batch = WriteBatch::new();
        batch.delete(format!("{RULES}{name}"));
        self.barrier.commit(batch).await?;
        self.rules.clear();
        let prefix = format!("{STATE}{}/", rule.id);
        loop {
            let keys = self.barrier.list(&prefix, None, 512).await?;
            if keys.is_empty() {
                break;
            }
            let mut batch = WriteBatch::new();
            for k in keys {
                batch.delete(k);
            }
            self.barrier.commit(batch).await?;
        }
        self.status.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| r != name);
        Ok(())
    }

    /// Every rule, from the cache or the barrier.
    pub async fn rules(&self, host: &dyn Host) -> Result<Arc<Vec<Rule>>> {
        let ticket = match self.rules.lookup(&()) {
            Ok(r) => return Ok(r),
            Err(ticket) => ticket,
        };
        let mut rules = Vec::new();
        for key in self.barrier.list(RULES, None, 10_000).await? {
            let raw = self
                .barrier
                .get(&key)
                .await?
                .ok_or_else(|| Error::Corrupt { key: key.clone(), reason: "vanished".into() })?;
            let rule: Rule =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?;
            rules.push(rule);
        }
        let rules = Arc::new(rules);
        host.loaded("rules").await;
        self.rules.fill(ticket, (), rules.clone());
        Ok(rules)
    }
}
