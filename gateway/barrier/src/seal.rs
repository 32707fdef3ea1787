//! Seals: what unlocks the root key. The Shamir seal splits it into shares
//! operators hold; an auto seal has a key service (a cloud KMS) encrypt it,
//! and operators hold shares of a separate recovery key, which authorises
//! rekeys and seal migrations but never decrypts anything.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A key service failure, as the seal's adapter reports it. The message is
/// one line and holds no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealError {
    /// A retry can help (the service is unreachable, throttled or failing).
    pub retryable: bool,
    pub message: String,
}

/// A key in a key service that encrypts the root key (auto-unseal).
#[async_trait::async_trait]
pub trait AutoSeal: Send + Sync {
    /// The seal type: `awskms`, `azurekeyvault`, `gcpckms`.
    fn kind(&self) -> &'static str;
    /// The key as configured (no secret).
    fn key_id(&self) -> String;
    async fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    async fn unwrap(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// What the store says of an auto seal (beside the seal configuration,
/// plaintext: it holds the root key only as the key service encrypted it).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AutoSealRecord {
    pub key_id: String,
    /// The root key as the key service encrypted it, base64.
    pub wrapped_root: String,
    pub recovery_shares: u32,
    pub recovery_threshold: u32,
    /// SHA-256 of a domain tag and the recovery key, hex: checks recovery
    /// shares without decrypting anything (the recovery key is 32 random
    /// bytes, so its hash gives nothing away).
    pub recovery_check: String,
}

const RECOVERY_TAG: &[u8] = b"keybridge recovery key check v1\0";

pub(crate) fn recovery_check(key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(RECOVERY_TAG);
    h.update(key);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `key` is the recovery key `record` was made with (constant time).
pub(crate) fn recovery_matches(record: &AutoSealRecord, key: &[u8]) -> bool {
    let want = record.recovery_check.as_bytes();
    let got = recovery_check(key);
    want.len() == got.len() && bool::from(want.ct_eq(got.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_tells_the_recovery_key_from_any_other() {
        let rec = AutoSealRecord {
            key_id: "k".into(),
            wrapped_root: String::new(),
            recovery_shares: 1,
            recovery_threshold: 1,
            recovery_check: recovery_check(&[7u8; 32]),
        };
        assert!(recovery_matches(&rec, &[7u8; 32]));
        assert!(!recovery_matches(&rec, &[8u8; 32]));
        assert!(!recovery_matches(&rec, &[7u8; 31]));
    }
}
