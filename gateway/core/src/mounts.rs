//! The mount table: which backend serves which path prefix.
//!
//! A request goes to the mount whose path is the longest prefix of the
//! request path. Nested mounts (one mount path a prefix of another) are
//! refused. Each mount's data lives under `logical/<id>/`, keyed by the
//! mount's id, so a mount's path can change without moving its data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::path::normalize_mount_path;
use crate::{Error, Result, Timestamp};

/// The mount types this build can serve.
pub const MOUNT_TYPES: &[&str] = &["local"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    pub id: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub created: Timestamp,
    /// Being removed: invisible to the router while its data is purged.
    #[serde(default)]
    pub deleting: bool,
}

impl MountEntry {
    pub fn storage_prefix(&self) -> String {
        format!("logical/{}/", self.id)
    }
}

/// Settings of a `local` mount, parsed from its string config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSettings {
    /// Versions kept per secret (oldest pruned); 0 means unlimited.
    pub max_versions: u32,
    pub cas_required: bool,
    /// 0: the server's limit applies.
    pub max_value_bytes: usize,
}

pub const DEFAULT_MAX_VERSIONS: u32 = 10;
const LOCAL_KEYS: &[&str] = &["max_versions", "cas_required", "max_value_bytes"];

/// Parses and checks a mount's config for its type. Pure: no IO.
pub fn local_settings(config: &BTreeMap<String, String>) -> Result<LocalSettings> {
    let mut s = LocalSettings { max_versions: DEFAULT_MAX_VERSIONS, cas_required: false, max_value_bytes: 0 };
    for (k, v) in config {
        let bad = |what: &str| Error::InvalidArgument(format!("mount config {k}={v:?}: {what}"));
        match k.as_str() {
            "max_versions" => s.max_versions = v.parse().map_err(|_| bad("expected a whole number (0: unlimited)"))?,
            "cas_required" => s.cas_required = v.parse().map_err(|_| bad("expected true or false"))?,
            "max_value_bytes" => {
                s.max_value_bytes = v.parse().map_err(|_| bad("expected a number of bytes"))?;
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown config key {k:?} for a local mount; known keys: {}",
                    LOCAL_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(s)
}

pub fn validate_config(kind: &str, config: &BTreeMap<String, String>) -> Result<()> {
    match kind {
        "local" => local_settings(config).map(|_| ()),
        other => Err(Error::InvalidArgument(format!(
            "unknown mount type {other:?}; this server supports: {}",
            MOUNT_TYPES.join(", ")
        ))),
    }
}

/// The mounts, sorted by path.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MountTable {
    pub entries: Vec<MountEntry>,
}

impl MountTable {
    /// The mount serving `path` and the path relative to it. `path` may be
    /// the mount itself with or without its slash (`secret`, `secret/`).
    pub fn route<'a>(&'a self, path: &'a str) -> Option<(&'a MountEntry, &'a str)> {
        self.entries
            .iter()
            .filter(|m| !m.deleting)
            .filter_map(|m| {
                if let Some(rest) = path.strip_prefix(m.path.as_str()) {
                    Some((m, rest))
                } else if path.len() + 1 == m.path.len() && m.path.starts_with(path) {
                    Some((m, ""))
                } else {
                    None
                }
            })
            .max_by_key(|(m, _)| m.path.len())
    }

    pub fn get(&self, path: &str) -> Option<&MountEntry> {
        self.entries.iter().find(|m| m.path == path && !m.deleting)
    }

    /// The live mount at exactly `path`, for changing it.
    pub fn get_mut(&mut self, path: &str) -> Result<&mut MountEntry> {
        self.entries
            .iter_mut()
            .find(|m| m.path == path && !m.deleting)
            .ok_or_else(|| Error::NotFound(format!("no mount at {path}")))
    }

    /// Adds a mount after checking the path is free and not nested.
    pub fn add(&mut self, entry: MountEntry) -> Result<()> {
        let path = normalize_mount_path(&entry.path)?;
        if let Some(existing) = self.entries.iter().find(|m| m.path == path) {
            return Err(Error::AlreadyExists(format!(
                "a {} mount already exists at {}{}",
                existing.kind,
                path,
                if existing.deleting { " (being removed)" } else { "" }
            )));
        }
        if let Some(other) = self.entries.iter().find(|m| m.path.starts_with(&path) || path.starts_with(&m.path)) {
            return Err(Error::InvalidArgument(format!(
                "{path} would nest with the existing mount {}; mounts may not contain each other",
                other.path
            )));
        }
        self.entries.push(MountEntry { path, ..entry });
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> MountEntry {
        MountEntry {
            id: format!("id-{path}"),
            path: path.into(),
            kind: "local".into(),
            description: String::new(),
            config: BTreeMap::new(),
            created: Timestamp::default(),
            deleting: false,
        }
    }

    #[test]
    fn longest_prefix_wins_and_nesting_is_refused() {
        let mut t = MountTable::default();
        t.add(entry("secret/")).unwrap();
        t.add(entry("team/a/")).unwrap();
        t.add(entry("team/ab/")).unwrap();
        assert_eq!(t.route("secret/x/y").map(|(m, r)| (m.path.as_str(), r)), Some(("secret/", "x/y")));
        assert_eq!(t.route("team/ab/k").map(|(m, r)| (m.path.as_str(), r)), Some(("team/ab/", "k")));
        assert_eq!(t.route("secret").map(|(m, r)| (m.path.as_str(), r)), Some(("secret/", "")));
        assert!(t.route("secretx/a").is_none());
        assert!(t.route("team/abc").is_none());
        assert!(matches!(t.add(entry("secret/")), Err(Error::AlreadyExists(_))));
        assert!(t.add(entry("secret/inner/")).unwrap_err().to_string().contains("nest"));
        assert!(t.add(entry("team/")).unwrap_err().to_string().contains("nest"));
    }

    #[test]
    fn config_is_typed() {
        let ok: BTreeMap<_, _> = [("max_versions".to_string(), "3".to_string())].into();
        assert_eq!(local_settings(&ok).unwrap().max_versions, 3);
        let bad: BTreeMap<_, _> = [("max_versions".to_string(), "three".to_string())].into();
        assert!(validate_config("local", &bad).unwrap_err().to_string().contains("whole number"));
        let unknown: BTreeMap<_, _> = [("colour".to_string(), "red".to_string())].into();
        assert!(validate_config("local", &unknown).unwrap_err().to_string().contains("known keys"));
        assert!(validate_config("nope", &BTreeMap::new()).unwrap_err().to_string().contains("unknown mount type"));
    }
}
