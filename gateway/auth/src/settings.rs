//! `key=value` settings with typed accessors and clear errors.

use std::collections::BTreeMap;

use crate::{Error, Result};

pub type Settings = BTreeMap<String, String>;

/// Refuses keys a config or role does not take.
pub fn only(settings: &Settings, what: &str, allowed: &[&str]) -> Result<()> {
    for k in settings.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::Invalid(format!("unknown {what} setting {k:?}; it takes {}", allowed.join(", "))));
        }
    }
    Ok(())
}

/// A comma-separated list, trimmed, without empty items.
pub fn list(settings: &Settings, key: &str) -> Vec<String> {
    settings
        .get(key)
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// A duration such as `1h` or `90m` (or plain seconds); 0 if absent.
pub fn duration_secs(settings: &Settings, key: &str) -> Result<u64> {
    match settings.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(0),
        Some(v) => {
            if let Ok(n) = v.parse::<u64>() {
                return Ok(n);
            }
            humantime::parse_duration(v)
                .map(|d| d.as_secs())
                .map_err(|e| Error::Invalid(format!("{key} must be a duration such as 1h or 30m, not {v:?}: {e}")))
        }
    }
}

pub fn boolean(settings: &Settings, key: &str) -> Result<bool> {
    match settings.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(Error::Invalid(format!("{key} must be true or false, not {v:?}"))),
    }
}

/// Policy names as the policy store takes them.
pub fn policies(settings: &Settings) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in list(settings, "policies").into_iter().chain(list(settings, "token_policies")) {
        let n = p.to_lowercase();
        if n.len() > 128 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Invalid(format!("invalid policy name {p:?} in policies")));
        }
        out.push(n);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `name` matches `pattern`: exact, `*`, or a `prefix*` glob (Vault's
/// binding rules for service-account names and namespaces).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}
