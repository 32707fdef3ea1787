//! Seals: what unlocks the root key. The Shamir seal splits it into shares
//! operators hold; an auto seal has a key service (a cloud KMS) encrypt it,
//! and operators hold shares of a separate recovery key, which authorises
//! rekeys and seal migrations but never decrypts anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;
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
    /// HMAC-SHA256 of a domain tag and the recovery key under the root
    /// key, hex: checks recovery shares once the key service has given the
    /// root key back. Keyed by the root, so whoever can write the store but
    /// not decrypt the root cannot plant a recovery key of their own.
    pub recovery_check: String,
}

const RECOVERY_TAG: &[u8] = b"keybridge recovery key check v1\0";

pub(crate) fn recovery_check(root: &[u8], key: &[u8]) -> String {
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(root).expect("HMAC takes any key length");
    h.update(RECOVERY_TAG);
    h.update(key);
    h.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `key` is the recovery key `record` was made with under `root`
/// (constant time).
pub(crate) fn recovery_matches(record: &AutoSealRecord, root: &[u8], key: &[u8]) -> bool {
    let want = record.recovery_check.as_bytes();
    let got = recovery_check(root, key);
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
            recovery_check: recovery_check(&[1u8; 32], &[7u8; 32]),
        };
        assert!(recovery_matches(&rec, &[1u8; 32], &[7u8; 32]));
        assert!(!recovery_matches(&rec, &[1u8; 32], &[8u8; 32]));
        assert!(!recovery_matches(&rec, &[1u8; 32], &[7u8; 31]));
        // A check made under another root (planted by whoever can write the
        // store but not decrypt its root) matches nothing.
        assert!(!recovery_matches(&rec, &[2u8; 32], &[7u8; 32]));
    }
}
