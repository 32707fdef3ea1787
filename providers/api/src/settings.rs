//! Checks shared by the adapters' `key=value` mount settings (no IO).

use std::collections::BTreeMap;

use crate::store::{Error, Result};

/// Adapter settings that hold credentials: the gateway keeps them in the
/// barrier like every mount setting, but shows them as `<redacted>` and
/// audits them as HMACs.
pub const SENSITIVE: &[&str] = &["secret_access_key", "session_token", "client_secret"];

pub fn is_sensitive(key: &str) -> bool {
    SENSITIVE.contains(&key)
}

/// Refuses keys the adapter does not take (`kb_*` keys belong to the
/// gateway's own mount settings).
pub fn only(s: &BTreeMap<String, String>, provider: &str, keys: &[&str]) -> Result<()> {
    match s.keys().find(|k| !keys.contains(&k.as_str()) && !k.starts_with("kb_")) {
        Some(k) => {
            Err(Error::InvalidArgument(format!("unknown {provider} setting {k:?}; it takes {}", keys.join(", "))))
        }
        None => Ok(()),
    }
}

/// An optional `http://` or `https://` URL setting, trimmed.
pub fn url(s: &BTreeMap<String, String>, key: &str) -> Result<Option<String>> {
    let v = s.get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    match v {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            Err(Error::InvalidArgument(format!("{key} {u:?} must start with http:// or https://")))
        }
        Some(u) => crate::endpoints::check_url(key, &u).map(|()| Some(u)),
        None => Ok(None),
    }
}
