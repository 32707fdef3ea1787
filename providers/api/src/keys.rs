//! Key services for auto-unseal: a cloud's key management service wraps
//! the barrier's root key, so a node unseals at start without operators.
//!
//! An adapter encrypts and decrypts a short secret (the 32-byte root key)
//! with a key that never leaves the service. The blob it returns is opaque
//! to the gateway and is stored beside the seal configuration; only the
//! same service and key open it again.

use zeroize::Zeroizing;

use crate::store::Result;

/// One key in one cloud's key service, configured by a `seal` block.
#[async_trait::async_trait]
pub trait KeyService: Send + Sync {
    /// The seal type as configured: `awskms`, `azurekeyvault`, `gcpckms`.
    fn kind(&self) -> &'static str;
    /// The key as the configuration names it (an alias or ARN, a key URL,
    /// a key's resource name): no secret. It tells a migration's old key
    /// from its new one.
    fn key_id(&self) -> String;
    /// Encrypts `plaintext` (at most a few hundred bytes) under the key.
    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts what [`KeyService::encrypt`] returned. A blob the key
    /// cannot open is `InvalidArgument` or `PermissionDenied`; a service
    /// that cannot be reached is `Unavailable` (a retry can help).
    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>>;
}

/// Seal settings shared by every key service: `key=value` pairs from the
/// configuration file's `seal` block (never from an API caller, so a seal
/// may use the gateway's own ambient credentials).
pub type SealSettings = std::collections::BTreeMap<String, String>;
