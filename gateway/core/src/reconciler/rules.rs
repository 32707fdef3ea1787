//! Replication rules: the model, the checks a new rule must pass (no
//! cycles, no shared targets), and the rule operations, authorized like
//! every other operation and checked against the writer's authority.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_barrier::WriteBatch;

use crate::audit::Caller;
use crate::core::{Capability, Core, encode_json};
use crate::path::validate_folder_path;
use crate::reconciler::{self as sync, RULES, STATE};
use crate::{Error, Result, Timestamp};

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

impl Core {
    // ----- rules --------------------------------------------------------------

    fn rule_from(&self, spec: RuleSpec) -> Result<Rule> {
        sync::check_name(&spec.name)?;
        let table = self.unsealed()?.table();
        let folder = |p: &str, what: &str| -> Result<String> {
            let f = validate_folder_path(p.trim())?;
            let Some((mount, rel)) = table.route(&f) else {
                return Err(Error::InvalidArgument(format!("{what} {f}: no mount serves it")));
            };
            if mount.kind == crate::plugins::MOUNT_KIND {
                return Err(Error::InvalidArgument(format!(
                    "{what} {f}: {} is a plugin mount; rules replicate secrets between local and cloud mounts",
                    mount.path
                )));
            }
            // Raw cloud names are flat and authorized by what they decode
            // to, which a folder does not say: rules take Keybridge paths.
            if keybridge_provider_api::Cloud::from_kind(&mount.kind).is_some()
                && rel.starts_with(crate::backend::cloud::RAW_FOLDER)
            {
                return Err(Error::InvalidArgument(format!(
                    "{what} {f}: a rule replicates Keybridge paths, not a cloud's raw names under _raw/"
                )));
            }
            Ok(f)
        };
        let source = folder(&spec.source, "the source")?;
        let targets = spec.targets.iter().map(|t| folder(t, "the target")).collect::<Result<Vec<_>>>()?;
        let mounts = std::iter::once(&source)
            .chain(&targets)
            .filter_map(|f| Some((f.clone(), table.route(f)?.0.id.clone())))
            .collect();
        if spec.scan_interval_secs > 7 * 86_400 {
            return Err(Error::InvalidArgument("scan_interval may be at most 7 days".into()));
        }
        if spec.coalesce_ms > 3_600_000 {
            return Err(Error::InvalidArgument("the coalescing window may be at most one hour".into()));
        }
        Ok(Rule {
            name: spec.name,
            id: uuid::Uuid::new_v4().to_string(),
            source,
            targets,
            on_conflict: sync::OnConflict::parse(&spec.on_conflict)?,
            delete: sync::OnDelete::parse(&spec.delete)?,
            take_over: spec.take_over,
            scan_interval_secs: if spec.scan_interval_secs == 0 { 60 } else { spec.scan_interval_secs },
            deep_scan_interval_secs: spec.deep_scan_interval_secs,
            coalesce_ms: spec.coalesce_ms,
            created: Timestamp::now(),
            authorizations: Vec::new(),
            written_by: String::new(),
            mounts,
        })
    }

    /// Whether every folder of the rule still routes to the mount it did
    /// when the rule was written (rules from before this record: yes).
    pub(crate) fn rule_routes_hold(&self, rule: &Rule) -> Result<()> {
        let table = self.unsealed()?.table();
        for (folder, id) in &rule.mounts {
            if table.route(folder).map(|(m, _)| &m.id) != Some(id) {
                return Err(Error::FailedPrecondition(format!(
                    "the mount serving {folder} changed since rule {:?} was written (disabled, or another mounted there); \
                     write the rule again to go on",
                    rule.name
                )));
            }
        }
        Ok(())
    }

    /// A rule acts later on its writer's behalf, so the writer must hold now
    /// what the rule will do: read and list everything below the source,
    /// create and update everything below each target; `adopt` also update
    /// on the source and read on the targets; `propagate` delete on the
    /// targets; `take_over`, `adopt` and `propagate` sudo on the rule's own
    /// path. Returns the checks made, one line each.
    async fn rule_authority(&self, id: &crate::tokens::Identity, rule: &Rule) -> Result<Vec<String>> {
        use Capability::*;
        let table = self.unsealed()?.table();
        let folder = |p: &str, area: &str| -> Result<String> {
            let (mount, rel) =
                table.route(p).ok_or_else(|| Error::InvalidArgument(format!("{p}: no mount serves it")))?;
            Ok(format!("{}{area}/{rel}", mount.path))
        };
        let mut wanted: Vec<(String, Capability)> =
            vec![(folder(&rule.source, "data")?, Read), (folder(&rule.source, "metadata")?, List)];
        for t in &rule.targets {
            wanted.push((folder(t, "data")?, Create));
            wanted.push((folder(t, "data")?, Update));
            if rule.on_conflict == sync::OnConflict::Adopt {
                wanted.push((folder(t, "data")?, Read));
            }
            if rule.delete == sync::OnDelete::Propagate {
                wanted.push((folder(t, "metadata")?, Delete));
            }
        }
        if rule.on_conflict == sync::OnConflict::Adopt {
            wanted.push((folder(&rule.source, "data")?, Update));
        }
        let mut made = Vec::new();
        for (prefix, cap) in wanted {
            self.decide_under(id, &prefix, cap).await?;
            made.push(format!("{} on {prefix}*", cap.name()));
        }
        if rule.take_over || rule.on_conflict == sync::OnConflict::Adopt || rule.delete == sync::OnDelete::Propagate {
            let path = format!("sys/sync/rules/{}", rule.name);
            self.decide_with(id, &path, Sudo, None).await.map_err(|e| match e {
                Error::PermissionDenied(m) => {
                    Error::PermissionDenied(format!("{m} (take_over, on_conflict=adopt and delete=propagate need it)"))
                }
                e => e,
            })?;
            made.push(format!("sudo on {path}"));
        }
        Ok(made)
    }

    /// Creates or replaces a rule; refused if it would form a cycle or share
    /// a target with another rule.
    pub async fn put_sync_rule(&self, caller: &Caller, spec: RuleSpec) -> Result<Rule> {
        let id = self.authenticate(caller).await?;
        sync::check_name(&spec.name)?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{}", spec.name), Capability::Update).await?;
        let _guard = self.admin.lock().await;
        let mut rule = self.rule_from(spec)?;
        rule.authorizations = self.rule_authority(&id, &rule).await?;
        rule.written_by = format!("{} ({})", id.accessor, id.display_name);
        let rules = self.sync_rules().await?;
        if let Some(old) = rules.iter().find(|r| r.name == rule.name) {
            // Same rule, new settings: keep its id, so its records stay valid.
            rule.id = old.id.clone();
            rule.created = old.created;
        }
        sync::check_rules(&rule, &rules)?;
        let mut batch = WriteBatch::new();
        batch.put(format!("{RULES}{}", rule.name), encode_json(&rule));
        self.barrier.commit(batch).await?;
        self.sync.rules.clear();
        // A first scan soon: existing secrets replicate.
        self.sync.last_scan.lock().unwrap_or_else(|p| p.into_inner()).remove(&rule.name);
        self.sync.notify.notify_one();
        Ok(rule)
    }

    pub async fn get_sync_rule(&self, caller: &Caller, name: &str) -> Result<Rule> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{name}"), Capability::Read).await?;
        self.sync_rules()
            .await?
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no sync rule {name:?}")))
    }

    pub async fn list_sync_rules(&self, caller: &Caller) -> Result<Vec<Rule>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/sync/rules", Capability::List).await?;
        Ok(self.sync_rules().await?.as_ref().clone())
    }

    /// Deletes a rule and its records; replicas stay where they are.
    pub async fn delete_sync_rule(&self, caller: &Caller, name: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/sync/rules/{name}"), Capability::Delete).await?;
        let _guard = self.admin.lock().await;
        let rules = self.sync_rules().await?;
        let Some(rule) = rules.iter().find(|r| r.name == name) else {
            return Err(Error::NotFound(format!("no sync rule {name:?}")));
        };
        let mut batch = WriteBatch::new();
        batch.delete(format!("{RULES}{name}"));
        self.barrier.commit(batch).await?;
        self.sync.rules.clear();
        self.delete_prefix(&format!("{STATE}{}/", rule.id)).await?;
        self.sync.status.lock().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| r != name);
        Ok(())
    }

    pub(crate) async fn sync_rules(&self) -> Result<Arc<Vec<Rule>>> {
        let ticket = match self.sync.rules.lookup(&()) {
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
        #[cfg(test)]
        self.load_hold("rules").await;
        self.sync.rules.fill(ticket, (), rules.clone());
        Ok(rules)
    }
}
