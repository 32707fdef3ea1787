//! Tokens. A token is never stored: its entry is kept under the HMAC-SHA256
//! of the token with a per-server salt (which lives inside the barrier), and
//! the hash read back is compared in constant time.

pub mod store;

use hmac::{Hmac, Mac};
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{Error, Result, Timestamp};

pub const SALT_KEY: &str = "core/token-salt";
pub const ENTRY_PREFIX: &str = "auth/token/id/";
/// `auth/token/parent/<parent hash>/<child hash>`: the index that lets a
/// revocation find every child.
pub const PARENT_PREFIX: &str = "auth/token/parent/";
/// `auth/token/accessor/<accessor>` holds the token's hash.
pub const ACCESSOR_PREFIX: &str = "auth/token/accessor/";

/// `acc.` and 24 alphanumerics.
pub fn generate_accessor() -> String {
    let body: String = rand::rngs::OsRng.sample_iter(&Alphanumeric).take(24).map(char::from).collect();
    format!("acc.{body}")
}
pub const ROOT_POLICY: &str = "root";

/// A stored token entry: what the token may do. No secret inside.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Hex HMAC of the token; equal to the storage key's suffix.
    pub hash: String,
    pub policies: Vec<String>,
    pub display_name: String,
    pub created: Timestamp,
    /// `None`: never expires (root tokens).
    pub expires: Option<Timestamp>,
    /// The creator's hash: revoking the creator revokes this token.
    #[serde(default)]
    pub parent: Option<String>,
    /// The lifetime a renewal grants by default.
    #[serde(default)]
    pub ttl_secs: u64,
    /// No renewal reaches past this (creation + max TTL, capped by the
    /// creator's expiry).
    #[serde(default)]
    pub max_expires: Option<Timestamp>,
    #[serde(default)]
    pub renewable: bool,
    /// Requests left before the token is revoked; 0: unlimited.
    #[serde(default)]
    pub num_uses: u32,
    /// A public handle for the token: it can look the token up or revoke
    /// it, but not authenticate.
    #[serde(default)]
    pub accessor: String,
    /// What a login method recorded (role, service account, subject).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Being revoked with its tree: it no longer authenticates, and no
    /// child can be created under it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoking: bool,
}

/// Who is calling, once authenticated: the token's entry (its hash, never
/// the token), shared with the token cache so that authenticating a request
/// copies nothing, and the uses the token has left after this request. The
/// entry's fields read through `Deref`; `num_uses` is the identity's own.
#[derive(Clone, Debug)]
pub struct Identity {
    entry: Arc<TokenEntry>,
    /// Uses left after this request; 0: unlimited.
    pub num_uses: u32,
}

impl Identity {
    pub fn new(entry: Arc<TokenEntry>) -> Self {
        let num_uses = entry.num_uses;
        Identity { entry, num_uses }
    }

    /// The token's entry, shared.
    pub fn entry(&self) -> Arc<TokenEntry> {
        self.entry.clone()
    }

    /// The same identity with `num_uses` uses left.
    pub fn with_uses(self, num_uses: u32) -> Self {
        Identity { num_uses, ..self }
    }

    pub fn is_root(&self) -> bool {
        self.entry.policies.iter().any(|p| p == ROOT_POLICY)
    }
}

impl std::ops::Deref for Identity {
    type Target = TokenEntry;

    fn deref(&self) -> &TokenEntry {
        &self.entry
    }
}

/// The HMAC key. Zeroed on drop; no `Debug`.
pub struct Salt(Zeroizing<Vec<u8>>);

impl Salt {
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; 32];
        rand::rngs::OsRng.fill(bytes.as_mut_slice());
        Salt(Zeroizing::new(bytes))
    }

    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Salt(bytes)
    }

    pub fn bytes(&self) -> Zeroizing<Vec<u8>> {
        self.0.clone()
    }

    pub fn hash(&self, token: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn entry_key(&self, token: &str) -> (String, String) {
        let hash = self.hash(token);
        (entry_key_of(&hash), hash)
    }
}

/// The storage key of the entry of the token with this hash.
pub fn entry_key_of(hash: &str) -> String {
    format!("{ENTRY_PREFIX}{hash}")
}

/// `kb.` and 32 alphanumerics (about 190 bits).
pub fn generate_token() -> Zeroizing<String> {
    let body: String = rand::rngs::OsRng.sample_iter(&Alphanumeric).take(32).map(char::from).collect();
    Zeroizing::new(format!("kb.{body}"))
}

/// Checks a caller-chosen token id (dev mode's `--dev-root-token-id`).
pub fn validate_token_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidArgument(
            "a token id must be 1 to 256 characters without spaces or control characters".into(),
        ));
    }
    Ok(())
}

/// Checks an entry read under `hash` against that hash (constant time) and
/// its expiry. Every failure is the same `Unauthenticated`.
pub fn verify(entry: Arc<TokenEntry>, hash: &str, now: Timestamp) -> Result<Identity> {
    let same: bool = entry.hash.as_bytes().ct_eq(hash.as_bytes()).into();
    if !same || entry.revoking || entry.expires.is_some_and(|e| e <= now) {
        return Err(Error::Unauthenticated);
    }
    Ok(Identity::new(entry))
}

impl keybridge_audit::Principal for TokenEntry {
    fn display_name(&self) -> &str {
        &self.display_name
    }
    fn policies(&self) -> &[String] {
        &self.policies
    }
    fn accessor(&self) -> &str {
        &self.accessor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_tokens_unique() {
        let a = Salt::generate();
        let b = Salt::generate();
        assert_ne!(a.hash("t"), b.hash("t"));
        assert_eq!(a.hash("t"), a.hash("t"));
        assert_ne!(*generate_token(), *generate_token());
        assert!(generate_token().starts_with("kb."));
    }

    #[test]
    fn verify_rejects_expired_and_mismatched() {
        let e = TokenEntry {
            hash: "ab".into(),
            policies: vec!["root".into()],
            display_name: "root".into(),
            created: Timestamp::default(),
            expires: Some(Timestamp { secs: 10, nanos: 0 }),
            parent: None,
            ttl_secs: 10,
            max_expires: None,
            renewable: false,
            num_uses: 0,
            accessor: String::new(),
            meta: BTreeMap::new(),
            revoking: false,
        };
        let e = Arc::new(e);
        assert!(verify(e.clone(), "ab", Timestamp { secs: 5, nanos: 0 }).unwrap().is_root());
        assert!(matches!(verify(e.clone(), "ab", Timestamp { secs: 10, nanos: 0 }), Err(Error::Unauthenticated)));
        assert!(matches!(verify(e, "ac", Timestamp { secs: 5, nanos: 0 }), Err(Error::Unauthenticated)));
    }
}
