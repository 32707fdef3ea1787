//! Auto-unseal with GCP Cloud KMS: `seal "gcpckms" { ... }` in the server's
//! configuration, with Vault's settings: `project`, `region` (the key's
//! location: `global`, `us-east1`, ...), `key_ring`, `crypto_key`, and
//! optionally `endpoint` and `credentials` (as the gcp mount's: `default`
//! for Application Default Credentials, `anonymous`, or the path of a
//! service-account JSON key file).
//!
//! - The root key is encrypted with `Encrypt` on the CryptoKey (Cloud KMS
//!   uses its primary version and names that version in the ciphertext, so
//!   `Decrypt` still opens a blob after the primary version changed). The
//!   additional authenticated data names the blob's use, so a blob made
//!   for anything else does not decrypt as a root key.
//! - CRC32C checksums go both ways, as Google's data-integrity guide says:
//!   `plaintextCrc32c` and `additionalAuthenticatedDataCrc32c` are sent and
//!   must come back verified, and `ciphertextCrc32c` must match the
//!   ciphertext; `Decrypt` sends `ciphertextCrc32c` and checks the
//!   answer's `plaintextCrc32c`. A mismatch is `Unavailable` (corrupted in
//!   transit; a retry can help).
//! - Seal settings come from the configuration file, not from API callers:
//!   Application Default Credentials may go to any `endpoint` given there.
//!   With a key file and an endpoint that is not Google's, tokens name that
//!   endpoint as their audience (as the Secret Manager adapter does).

use std::collections::BTreeMap;

use google_cloud_kms_v1::client::KeyManagementService;
use keybridge_provider_api::messages::one_line;
use keybridge_provider_api::{Error, KeyService, Result};
use zeroize::{Zeroize as _, Zeroizing};

use crate::{Credentials, Service};

const SERVICE: Service = Service {
    name: "GCP Cloud KMS",
    permission_hint: "give the seal's service account roles/cloudkms.cryptoKeyEncrypterDecrypter on the key",
    holder: "seal",
};

/// The additional authenticated data of every blob: its use.
const AAD: &[u8] = b"keybridge-use=barrier-root-key";

/// The largest plaintext Cloud KMS encrypts with a software key (64 KiB).
pub const MAX_PLAINTEXT: usize = 64 * 1024;

const KEYS: &[&str] = &["project", "region", "key_ring", "crypto_key", "endpoint", "credentials"];

/// The `gcpckms` seal block's settings, validated without IO. No secret:
/// a key file is named by its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcpKmsSettings {
    pub project: String,
    /// The key ring's location.
    pub region: String,
    pub key_ring: String,
    pub crypto_key: String,
    pub endpoint: Option<String>,
    pub credentials: Credentials,
}

impl GcpKmsSettings {
    /// The CryptoKey's resource name:
    /// `projects/P/locations/L/keyRings/R/cryptoKeys/K`.
    pub fn key_name(&self) -> String {
        format!(
            "projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}",
            self.project, self.region, self.key_ring, self.crypto_key
        )
    }

    /// The endpoint, when it is not one of Cloud KMS's own hosts
    /// (`https://cloudkms.googleapis.com`, or a locational
    /// `https://cloudkms.<location>.rep.googleapis.com`, on the default port).
    fn custom_endpoint(&self) -> Option<&str> {
        let e = self.endpoint.as_deref()?;
        let host = e.strip_prefix("https://").map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        let own = host.map(|h| h.trim_end_matches('.').to_ascii_lowercase()).is_some_and(|h| {
            let labels: Vec<&str> = h.split('.').collect();
            match labels.as_slice() {
                ["cloudkms", "googleapis", "com"] => true,
                ["cloudkms", location, "rep", "googleapis", "com"] => location_id(location),
                _ => false,
            }
        });
        (!own).then_some(e)
    }
}

/// A Cloud KMS location id: `global`, `us-east1`, `europe`, `nam-eur-asia1`.
fn location_id(l: &str) -> bool {
    (1..=63).contains(&l.len())
        && l.starts_with(|c: char| c.is_ascii_lowercase())
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A key ring's or CryptoKey's id: 1 to 63 of `[a-zA-Z0-9_-]`.
fn resource_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One Cloud KMS CryptoKey that encrypts the barrier's root key.
pub struct GcpKms {
    client: KeyManagementService,
    key: String,
}

impl GcpKms {
    /// Validates the seal block's settings without IO.
    pub fn parse(s: &BTreeMap<String, String>) -> Result<GcpKmsSettings> {
        // Every key of the block is the seal's: none is let through.
        if let Some(k) = s.keys().find(|k| !KEYS.contains(&k.as_str())) {
            let shown: String = k.chars().take(64).collect();
            return Err(Error::InvalidArgument(format!(
                "unknown gcpckms seal setting {shown:?}; it takes {}",
                KEYS.join(", ")
            )));
        }
        let get = |k: &str| s.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let project = crate::project(s)?;
        let region = get("region").ok_or_else(|| {
            Error::InvalidArgument(
                "the gcpckms seal needs region: the key ring's Cloud KMS location, such as global or us-east1".into(),
            )
        })?;
        if !location_id(&region) {
            return Err(Error::InvalidArgument(format!(
                "region {region:?} is not a Cloud KMS location such as global or us-east1 (a-z, 0-9 and -)"
            )));
        }
        let id = |k: &str, what: &str| -> Result<String> {
            let v = get(k).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the gcpckms seal needs {k}: the {what}'s id (1 to 63 of a-z, A-Z, 0-9, _ and -)"
                ))
            })?;
            if !resource_id(&v) {
                let shown: String = v.chars().take(64).collect();
                return Err(Error::InvalidArgument(format!(
                    "{k} {shown:?} is not a Cloud KMS {what} id (1 to 63 of a-z, A-Z, 0-9, _ and -)"
                )));
            }
            Ok(v)
        };
        let key_ring = id("key_ring", "key ring")?;
        let crypto_key = id("crypto_key", "CryptoKey")?;
        let endpoint = keybridge_provider_api::settings::url(s, "endpoint")?;
        let credentials = crate::credentials(s)?;
        Ok(GcpKmsSettings { project, region, key_ring, crypto_key, endpoint, credentials })
    }

    /// Builds the client (and reads a key file); makes no call to GCP.
    pub async fn new(settings: &GcpKmsSettings) -> Result<GcpKms> {
        let b = crate::configure(
            &SERVICE,
            KeyManagementService::builder(),
            settings.endpoint.as_deref(),
            settings.custom_endpoint(),
            &settings.credentials,
        )?;
        let client = b.build().await.map_err(|e| {
            Error::Unauthenticated(one_line(SERVICE.name, "", "", &format!("cannot set up the client: {e}"), ""))
        })?;
        Ok(GcpKms { client, key: settings.key_name() })
    }

    /// A failed call, with hints for what Cloud KMS's codes mean here.
    fn map(&self, e: google_cloud_gax::error::Error, op: &str) -> Error {
        match crate::map_error(&SERVICE, e, op, &self.key) {
            Error::NotFound(m) => Error::NotFound(format!(
                "{m}; check project, region, key_ring and crypto_key (the CryptoKey must exist and be ENCRYPT_DECRYPT)"
            )),
            // FAILED_PRECONDITION: the version (the primary one for
            // Encrypt, the blob's for Decrypt) is disabled or destroyed.
            Error::Conflict(m) => Error::PermissionDenied(format!(
                "{m}; the key version is not enabled: enable it (gcloud kms keys versions enable)"
            )),
            Error::InvalidArgument(m) if op == "Decrypt" => Error::InvalidArgument(format!(
                "{m}; the stored root key was not encrypted by this key (or was changed)"
            )),
            e => e,
        }
    }

    /// An answer that does not hold together: corrupted in transit (a retry
    /// can help).
    fn corrupted(&self, op: &str, what: &str) -> Error {
        Error::Unavailable(one_line(
            SERVICE.name,
            &format!("{op} {}", self.key),
            "",
            &format!("{what} (corrupted in transit)"),
            "retry",
        ))
    }

    /// An answer Cloud KMS would not give.
    fn odd(&self, op: &str, what: &str) -> Error {
        Error::Failed(one_line(
            SERVICE.name,
            &format!("{op} {}", self.key),
            "",
            what,
            "check that endpoint is a Cloud KMS service",
        ))
    }
}

/// Whether `name` is a version of the CryptoKey `key`; the project may be
/// named by its id or its number.
fn version_of(key: &str, name: &str) -> bool {
    let after_project = |n: &str| n.strip_prefix("projects/")?.split_once('/').map(|(_, rest)| rest.to_string());
    match (after_project(key), after_project(name)) {
        (Some(k), Some(n)) => n
            .strip_prefix(k.as_str())
            .and_then(|v| v.strip_prefix("/cryptoKeyVersions/"))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

fn crc(data: &[u8]) -> i64 {
    i64::from(crc32c::crc32c(data))
}

/// Overwrites a buffer's bytes if no one else holds it.
fn wipe(b: bytes::Bytes) {
    if let Ok(mut m) = b.try_into_mut() {
        m.as_mut().zeroize();
    }
}

#[async_trait::async_trait]
impl KeyService for GcpKms {
    fn kind(&self) -> &'static str {
        "gcpckms"
    }

    fn key_id(&self) -> String {
        self.key.clone()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::InvalidArgument(format!(
                "{}: Cloud KMS encrypts 1 to {MAX_PLAINTEXT} bytes, not {}",
                SERVICE.name,
                plaintext.len()
            )));
        }
        // Kept to wipe once the SDK has let go of it.
        let buf = bytes::Bytes::from(plaintext.to_vec());
        let r = self
            .client
            .encrypt()
            .set_name(&self.key)
            .set_plaintext(buf.clone())
            .set_plaintext_crc32c(crc(plaintext))
            .set_additional_authenticated_data(bytes::Bytes::from_static(AAD))
            .set_additional_authenticated_data_crc32c(crc(AAD))
            .send()
            .await;
        wipe(buf);
        let r = r.map_err(|e| self.map(e, "Encrypt"))?;
        if !r.verified_plaintext_crc32c || !r.verified_additional_authenticated_data_crc32c {
            return Err(self.corrupted("Encrypt", "Cloud KMS did not verify the checksums sent with the plaintext"));
        }
        match r.ciphertext_crc32c {
            None => return Err(self.odd("Encrypt", "the answer has no ciphertextCrc32c")),
            Some(c) if c != crc(&r.ciphertext) => {
                return Err(self.corrupted("Encrypt", "the ciphertext does not match its CRC32C checksum"));
            }
            Some(_) => {}
        }
        if !version_of(&self.key, &r.name) {
            return Err(self.odd("Encrypt", &format!("the answer names {:?}, not a version of the key", r.name)));
        }
        if r.ciphertext.is_empty() {
            return Err(self.odd("Encrypt", "the answer has no ciphertext"));
        }
        Ok(r.ciphertext.to_vec())
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if ciphertext.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: the stored root key blob is empty; it was not made by Cloud KMS",
                SERVICE.name
            )));
        }
        let r = self
            .client
            .decrypt()
            .set_name(&self.key)
            .set_ciphertext(bytes::Bytes::copy_from_slice(ciphertext))
            .set_ciphertext_crc32c(crc(ciphertext))
            .set_additional_authenticated_data(bytes::Bytes::from_static(AAD))
            .set_additional_authenticated_data_crc32c(crc(AAD))
            .send()
            .await
            .map_err(|e| self.map(e, "Decrypt"))?;
        let sum = r.plaintext_crc32c;
        let buf = r.plaintext;
        let plaintext = Zeroizing::new(buf.to_vec());
        wipe(buf);
        match sum {
            None => Err(self.odd("Decrypt", "the answer has no plaintextCrc32c")),
            Some(c) if c != crc(&plaintext) => {
                Err(self.corrupted("Decrypt", "the plaintext does not match its CRC32C checksum"))
            }
            Some(_) => Ok(plaintext),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(e: &str) -> GcpKmsSettings {
        GcpKmsSettings {
            project: "keybridge-test".into(),
            region: "global".into(),
            key_ring: "r".into(),
            crypto_key: "k".into(),
            endpoint: Some(e.into()),
            credentials: Credentials::Anonymous,
        }
    }

    #[test]
    fn only_cloud_kms_hosts_are_googles() {
        for own in [
            "https://cloudkms.googleapis.com",
            "https://cloudkms.googleapis.com/",
            "https://CloudKMS.googleapis.com.",
            "https://cloudkms.us-east1.rep.googleapis.com",
        ] {
            assert_eq!(with_endpoint(own).custom_endpoint(), None, "{own}");
        }
        for other in [
            "http://cloudkms.googleapis.com",
            "https://cloudkms.googleapis.com:8443",
            "https://secretmanager.googleapis.com",
            "https://cloudkms.googleapis.com.evil.example",
            "https://evil.rep.googleapis.com",
            "https://cloudkms.a.b.rep.googleapis.com",
            "http://127.0.0.1:8080",
        ] {
            assert_eq!(with_endpoint(other).custom_endpoint(), Some(other), "{other}");
        }
    }

    #[test]
    fn an_answer_must_name_a_version_of_the_key() {
        let key = "projects/keybridge-test/locations/global/keyRings/r/cryptoKeys/k";
        assert!(version_of(key, &format!("{key}/cryptoKeyVersions/3")));
        assert!(version_of(key, "projects/123456789012/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"));
        for other in [
            key.to_string(),
            format!("{key}/cryptoKeyVersions/"),
            format!("{key}/cryptoKeyVersions/1/x"),
            format!("{key}2/cryptoKeyVersions/1"),
            "projects/keybridge-test/locations/us/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1".to_string(),
            "cryptoKeyVersions/1".to_string(),
        ] {
            assert!(!version_of(key, &other), "{other}");
        }
    }

    #[test]
    fn the_key_name_is_the_resource_name() {
        assert_eq!(
            with_endpoint("https://cloudkms.googleapis.com").key_name(),
            "projects/keybridge-test/locations/global/keyRings/r/cryptoKeys/k"
        );
    }
}
