//! Auto-unseal with an Azure Key Vault key: the `azurekeyvault` seal.
//!
//! The gateway's root key is wrapped by a Key Vault RSA key (wrapKey with
//! RSA-OAEP-256) when the gateway is initialised and unwrapped at each
//! start; the private key never leaves Key Vault (or its HSM).
//!
//! - Settings (a `seal "azurekeyvault"` block of the operator's
//!   configuration file, as Vault names them): `vault_url`, `key_name`,
//!   optional `key_version` (wrap with that version instead of the
//!   current one), and the credentials Azure mounts take (`tenant_id`,
//!   `client_id`, `client_secret`, `credentials`, `authority_host`,
//!   `ca_cert`); see [`SealConfig::parse`].
//! - The blob [`KeyService::encrypt`] returns records the key version that
//!   wrapped it, so [`KeyService::decrypt`] unwraps with that version after
//!   the key is rotated (Key Vault keeps old versions; disabling one makes
//!   its blobs unreadable until it is enabled again):
//!
//!   ```text
//!   "KBKV" | 0x01 | kid length (u16, big-endian) | kid (UTF-8)
//!          | wrapped length (u16, big-endian) | wrapped key
//!   ```
//!
//!   where `kid` is the versioned key id Key Vault answered
//!   (`https://<vault>/keys/<name>/<version>`) and format 1 means
//!   RSA-OAEP-256. The parser checks every length and takes nothing after
//!   the wrapped key.
//! - The client is `azure_security_keyvault_keys`' `KeyClient` over the same
//!   transport and credentials as the mounts' secrets client
//!   (`connect`): no SDK retries; the gateway retries `Unavailable`.
//! - Unlike a mount, a seal may use the gateway host's own identity
//!   (managed or workload identity) with a vault outside Azure's public
//!   domains (Azure Stack Hub's, under its own domain): its settings come
//!   from the operator's file, never from an API caller, so
//!   [`keybridge_provider_api::endpoints::refuse_ambient`] is not applied.
//!   The token's audience is still held to the vault's domain in that case
//!   (the SDK's challenge-resource check stays on for ambient credentials):
//!   a mistyped host can only ask for a token for its own parent domain,
//!   never for Key Vault's or Azure Resource Manager's audience. A vault
//!   reached through an alias whose challenge names another domain needs a
//!   client secret.

use azure_core::http::{RequestContent, Url};
use azure_security_keyvault_keys::models::{KeyClientWrapKeyOptions, KeyOperationParameters};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use base64::Engine as _;
use keybridge_provider_api::{Error, KeyService, Result, SealSettings};
use zeroize::Zeroizing;

/// The seal type as configured.
pub const KIND: &str = "azurekeyvault";
/// The key-wrapping algorithm of format 1 blobs.
pub const ALGORITHM: &str = "RSA-OAEP-256";
/// The longest plaintext RSA-OAEP-256 wraps with a 4096-bit key (512 bytes
/// less two SHA-256 digests and two bytes); smaller keys take less (190
/// bytes for 2048 bits), which Key Vault answers with `BadParameter`.
pub const MAX_PLAINTEXT: usize = 446;
/// The settings a seal takes.
pub const SEAL_KEYS: &[&str] = &[
    "vault_url",
    "key_name",
    "key_version",
    "tenant_id",
    "client_id",
    "client_secret",
    "credentials",
    "authority_host",
    "ca_cert",
];

const SEAL: &str = "Azure Key Vault seal";
const MAGIC: &[u8; 4] = b"KBKV";
const FORMAT: u8 = 1;
/// The longest kid a blob may hold (a vault URL, a name of 127, a version).
const MAX_KID: usize = 1024;
/// The longest wrapped key a blob may hold (a 4096-bit key's is 512 bytes).
const MAX_WRAPPED: usize = 1024;

/// A seal's settings, checked without IO.
#[derive(Clone)]
pub struct SealConfig {
    key_name: String,
    key_version: Option<String>,
    connection: crate::Settings,
}

impl std::fmt::Debug for SealConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealConfig")
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            // Settings' Debug names the kind of credentials, never a secret.
            .field("connection", &self.connection)
            .finish()
    }
}

/// 1-127 of `0-9a-zA-Z-`: a Key Vault object name.
fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A version id: Key Vault's are 32 hex digits; any 1-64 letters and
/// digits are taken, nothing that could change the request's path.
fn valid_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl SealConfig {
    /// Validates a seal block's `key=value` settings without IO: unknown
    /// keys (listing the accepted ones), `vault_url` (an https URL without
    /// a path), `key_name`, `key_version`, and the credentials as a mount
    /// checks them.
    pub fn parse(s: &SealSettings) -> Result<SealConfig> {
        // Every unknown key, `kb_*` included: those are a mount's.
        if let Some(k) = s.keys().find(|k| !SEAL_KEYS.contains(&k.as_str())) {
            return Err(Error::InvalidArgument(format!(
                "unknown {KIND} seal setting {k:?}; it takes {}",
                SEAL_KEYS.join(", ")
            )));
        }
        let connection = crate::Settings::parse_connection(s)?;
        let url = Url::parse(&connection.vault_url)
            .map_err(|e| Error::InvalidArgument(format!("vault_url is not a URL: {e}")))?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(Error::InvalidArgument(format!(
                "vault_url {:?} must be the vault's URL alone, such as https://my-vault.vault.azure.net",
                connection.vault_url
            )));
        }
        let get = |k: &str| s.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let key_name = get("key_name").ok_or_else(|| {
            Error::InvalidArgument(
                "key_name is required: the name of the Key Vault RSA key that wraps the root key".into(),
            )
        })?;
        if !valid_name(&key_name) {
            return Err(Error::InvalidArgument(format!(
                "key_name {key_name:?} is not a Key Vault key name (1-127 letters, digits and -)"
            )));
        }
        let key_version = get("key_version");
        if let Some(v) = &key_version
            && !valid_version(v)
        {
            return Err(Error::InvalidArgument(format!(
                "key_version {v:?} is not a key version id, such as 0123456789abcdef0123456789abcdef"
            )));
        }
        Ok(SealConfig { key_name, key_version, connection })
    }

    /// The vault's URL as configured.
    pub fn vault_url(&self) -> &str {
        &self.connection.vault_url
    }

    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The version wraps use; `None`: the key's current version.
    pub fn key_version(&self) -> Option<&str> {
        self.key_version.as_deref()
    }
}

/// A Key Vault RSA key that wraps and unwraps the root key.
pub struct AzureKeyVaultSeal {
    client: KeyClient,
    /// Without a trailing `/`.
    vault_url: String,
    key_name: String,
    key_version: Option<String>,
}

impl std::fmt::Debug for AzureKeyVaultSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyVaultSeal")
            .field("vault_url", &self.vault_url)
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

impl AzureKeyVaultSeal {
    /// Builds the credential and the SDK client. Reads the `ca_cert` file
    /// if given; makes no call to Azure.
    pub fn new(config: &SealConfig) -> Result<AzureKeyVaultSeal> {
        let settings = &config.connection;
        let crate::Connection { options, credential } = crate::connect(settings)?;
        let client = KeyClient::new(
            &settings.vault_url,
            credential,
            Some(KeyClientOptions {
                client_options: options,
                // Azure's vaults must name themselves in the challenge;
                // elsewhere only the gateway's own identity is held to it
                // (see the module's documentation).
                verify_challenge_resource: Some(settings.azure_host() || settings.ambient()),
                ..Default::default()
            }),
        )
        .map_err(|e| crate::setup("Key Vault keys client", e))?;
        Ok(AzureKeyVaultSeal {
            client,
            vault_url: settings.vault_url.trim_end_matches('/').to_string(),
            key_name: config.key_name.clone(),
            key_version: config.key_version.clone(),
        })
    }

    /// [`SealConfig::parse`], then [`AzureKeyVaultSeal::new`].
    pub fn from_settings(settings: &SealSettings) -> Result<AzureKeyVaultSeal> {
        AzureKeyVaultSeal::new(&SealConfig::parse(settings)?)
    }

    /// The versioned key id that wrapped `ciphertext` (a blob
    /// [`KeyService::encrypt`] returned), without IO.
    pub fn wrapped_by(ciphertext: &[u8]) -> Result<String> {
        Ok(Blob::parse(ciphertext)?.kid.to_string())
    }

    /// The operation and the key version, as errors name them:
    /// `UnwrapKey unseal/0123…`.
    fn what(&self, op: &str, version: Option<&str>) -> String {
        match version {
            Some(v) => format!("{op} {}/{v}", self.key_name),
            None => format!("{op} {}", self.key_name),
        }
    }

    /// Maps an SDK error to one line with a hint; the SDK's whole error is
    /// logged at debug level only (it never holds the plaintext: Key
    /// Vault's error answers do not repeat the request).
    fn map(&self, e: azure_core::Error, op: &str, version: Option<&str>) -> Error {
        use azure_core::error::ErrorKind;
        use keybridge_provider_api::messages::{one_line, root_cause};
        let what = self.what(op, version);
        tracing::debug!(operation = %what, error = ?e, "Azure Key Vault seal call failed");
        let credentials = "check tenant_id, client_id and client_secret (or the managed identity)";
        match e.kind() {
            ErrorKind::HttpResponse { status, error_code, .. } => {
                let code = error_code.as_deref().unwrap_or_default();
                let inner = crate::inner_code(&e);
                let message = e.to_string();
                let m = |hint: &str| one_line(SEAL, &what, code, &message, hint);
                match u16::from(*status) {
                    400 if message.contains("version") && message.contains("not recognized") => Error::InvalidArgument(
                        m("the vault does not implement the Key Vault API version Keybridge's Azure SDK sends"),
                    ),
                    400 if op == "UnwrapKey" => {
                        Error::InvalidArgument(m("the blob was not wrapped by this key version, or it is damaged"))
                    }
                    400 => Error::InvalidArgument(m("")),
                    401 => Error::Unauthenticated(m(credentials)),
                    403 if inner.as_deref() == Some("KeyDisabled") => Error::PermissionDenied(m(&format!(
                        "the key version is disabled: enable it (az keyvault key set-attributes --enabled true){}",
                        if version.is_none() { " or create a new version" } else { "" }
                    ))),
                    403 if inner.as_deref() == Some("KeyOperationForbidden") => Error::PermissionDenied(m(
                        "the key's permitted operations (key_ops) must include wrapKey and unwrapKey",
                    )),
                    403 => Error::PermissionDenied(m(
                        "give the seal's identity the Key Vault Crypto Service Encryption User role on the key \
                         (or the wrapKey and unwrapKey key permissions of an access policy)",
                    )),
                    404 if op == "UnwrapKey" => Error::NotFound(m(
                        "the key version that wrapped the root key is not in this vault: check vault_url and \
                         key_name (a deleted key can be recovered)",
                    )),
                    404 => Error::NotFound(m("check vault_url, key_name and key_version")),
                    429 => Error::Unavailable(m("Key Vault is throttling requests; retry later")),
                    s if s >= 500 => Error::Unavailable(m("retry later")),
                    _ => Error::Failed(m("")),
                }
            }
            ErrorKind::Credential => Error::Unauthenticated(one_line(
                SEAL,
                &what,
                "CredentialUnavailable",
                &format!("cannot get a token: {}", root_cause(&e)),
                credentials,
            )),
            ErrorKind::Connection | ErrorKind::Io => Error::Unavailable(one_line(
                &format!("{SEAL}: Key Vault cannot be reached"),
                &what,
                "",
                &root_cause(&e),
                "check vault_url and the network",
            )),
            _ => Error::Failed(one_line(SEAL, &what, "", &root_cause(&e), "")),
        }
    }

    /// An answer whose body does not read as a KeyOperationResult. The
    /// parser's message is left out: it could quote the body, which holds
    /// the plaintext on unwrap.
    fn unreadable(&self, op: &str, version: Option<&str>) -> Error {
        Error::Failed(format!("{SEAL} ({}): Key Vault's answer is not a key operation result", self.what(op, version)))
    }
}

/// `{"alg": "RSA-OAEP-256", "value": <base64url>}`, built without the SDK's
/// model so that the copies of `value` made here are wiped (the request's
/// own buffer belongs to the SDK and the HTTP client).
fn operation_body(value: &[u8]) -> RequestContent<KeyOperationParameters> {
    let encoded = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value));
    let mut json = Zeroizing::new(String::with_capacity(encoded.len().saturating_add(40)));
    json.push_str("{\"alg\":\"");
    json.push_str(ALGORITHM);
    json.push_str("\",\"value\":\"");
    json.push_str(&encoded);
    json.push_str("\"}");
    RequestContent::from(json.as_bytes().to_vec())
}

/// The key name and version of a versioned key id,
/// `https://<vault>/keys/<name>/<version>`.
fn parse_kid(kid: &str) -> Option<(String, String)> {
    let url = Url::parse(kid).ok()?;
    if url.scheme() != "https" || url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    let (name, version) = url.path().strip_prefix("/keys/")?.split_once('/')?;
    (valid_name(name) && valid_version(version)).then(|| (name.to_string(), version.to_string()))
}

/// A parsed blob: the versioned kid that wrapped it and the wrapped key.
struct Blob<'a> {
    kid: &'a str,
    name: String,
    version: String,
    wrapped: &'a [u8],
}

/// The next `n` bytes of `rest`, if it has them.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

fn take_u16(rest: &mut &[u8]) -> Option<usize> {
    let b = <[u8; 2]>::try_from(take(rest, 2)?).ok()?;
    Some(usize::from(u16::from_be_bytes(b)))
}

impl<'a> Blob<'a> {
    fn parse(blob: &'a [u8]) -> Result<Blob<'a>> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "{SEAL}: the sealed root key is not a blob this seal wrote ({why}); it may be damaged, \
                 or written by another seal type"
            ))
        };
        let mut rest = blob;
        if take(&mut rest, MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(bad("no KBKV header"));
        }
        match take(&mut rest, 1) {
            Some([FORMAT]) => {}
            Some([other]) => return Err(bad(&format!("format {other} is not known to this version of Keybridge"))),
            _ => return Err(bad("truncated")),
        }
        let kid_len = take_u16(&mut rest).ok_or_else(|| bad("truncated"))?;
        if kid_len == 0 || kid_len > MAX_KID {
            return Err(bad("the key id's length is out of range"));
        }
        let kid = take(&mut rest, kid_len).ok_or_else(|| bad("truncated"))?;
        let kid = std::str::from_utf8(kid).map_err(|_| bad("the key id is not text"))?;
        let (name, version) = parse_kid(kid).ok_or_else(|| bad("the key id is not a Key Vault key version's"))?;
        let wrapped_len = take_u16(&mut rest).ok_or_else(|| bad("truncated"))?;
        if wrapped_len == 0 || wrapped_len > MAX_WRAPPED {
            return Err(bad("the wrapped key's length is out of range"));
        }
        let wrapped = take(&mut rest, wrapped_len).ok_or_else(|| bad("truncated"))?;
        if !rest.is_empty() {
            return Err(bad("bytes follow the wrapped key"));
        }
        Ok(Blob { kid, name, version, wrapped })
    }

    /// The blob of `wrapped` by `kid`.
    fn write(kid: &str, wrapped: &[u8]) -> Option<Vec<u8>> {
        let kid_len = u16::try_from(kid.len()).ok().filter(|n| (1..=MAX_KID).contains(&usize::from(*n)))?;
        let wrapped_len = u16::try_from(wrapped.len()).ok().filter(|n| (1..=MAX_WRAPPED).contains(&usize::from(*n)))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 5 + kid.len() + wrapped.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&kid_len.to_be_bytes());
        out.extend_from_slice(kid.as_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(wrapped);
        Some(out)
    }
}

#[async_trait::async_trait]
impl KeyService for AzureKeyVaultSeal {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// `<vault_url>/keys/<key_name>`.
    fn key_id(&self) -> String {
        format!("{}/keys/{}", self.vault_url, self.key_name)
    }

    /// wrapKey (RSA-OAEP-256) with `key_version`, else the key's current
    /// version; the blob records the version Key Vault used.
    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::InvalidArgument(format!(
                "{SEAL}: wraps 1 to {MAX_PLAINTEXT} bytes, not {}",
                plaintext.len()
            )));
        }
        const OP: &str = "WrapKey";
        let pinned = self.key_version.as_deref();
        let options = KeyClientWrapKeyOptions { key_version: self.key_version.clone(), ..Default::default() };
        let result = self
            .client
            .wrap_key(&self.key_name, operation_body(plaintext), Some(options))
            .await
            .map_err(|e| self.map(e, OP, pinned))?
            .into_model()
            .map_err(|_| self.unreadable(OP, pinned))?;
        let kid = result.kid.as_deref().unwrap_or_default();
        let odd = |why: &str| Error::Failed(format!("{SEAL} ({}): Key Vault answered {why}", self.what(OP, pinned)));
        let Some((name, version)) = parse_kid(kid) else {
            return Err(odd(&format!("a key id that is not a key version's: {kid:?}")));
        };
        if !name.eq_ignore_ascii_case(&self.key_name) || pinned.is_some_and(|p| p != version.as_str()) {
            return Err(odd(&format!("for another key: {kid}")));
        }
        let wrapped = result.result.as_deref().unwrap_or_default();
        Blob::write(kid, wrapped)
            .ok_or_else(|| odd(&format!("a wrapped key of {} bytes, which no RSA key makes", wrapped.len())))
    }

    /// unwrapKey (RSA-OAEP-256) with the key version the blob names.
    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        const OP: &str = "UnwrapKey";
        let blob = Blob::parse(ciphertext)?;
        if !blob.name.eq_ignore_ascii_case(&self.key_name) {
            return Err(Error::InvalidArgument(format!(
                "{SEAL}: the root key was wrapped by {}, not by this seal's key {}; configure the seal with \
                 key_name {} (to move to another key, migrate the seal)",
                blob.kid,
                self.key_id(),
                blob.name
            )));
        }
        let version = Some(blob.version.as_str());
        let mut result = self
            .client
            .unwrap_key(&self.key_name, &blob.version, operation_body(blob.wrapped), None)
            .await
            .map_err(|e| self.map(e, OP, version))?
            .into_model()
            .map_err(|_| self.unreadable(OP, version))?;
        let plaintext = Zeroizing::new(result.result.take().unwrap_or_default());
        if plaintext.is_empty() {
            return Err(self.unreadable(OP, version));
        }
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "https://v.vault.azure.net/keys/unseal/0123456789abcdef0123456789abcdef";

    #[test]
    fn blobs_round_trip_and_garbage_is_refused_without_panics() {
        let blob = Blob::write(KID, &[9u8; 256]).unwrap();
        let parsed = Blob::parse(&blob).unwrap();
        assert_eq!(
            (parsed.kid, parsed.name.as_str(), parsed.version.as_str()),
            (KID, "unseal", "0123456789abcdef0123456789abcdef")
        );
        assert_eq!(parsed.wrapped, &[9u8; 256][..]);
        // Every prefix, every extension, every single-byte change of the
        // header and lengths: an error or (for the kid's and the wrapped
        // key's own bytes) another blob, never a panic.
        for n in 0..blob.len() {
            assert!(matches!(Blob::parse(&blob[..n]), Err(Error::InvalidArgument(_))), "prefix {n}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(matches!(Blob::parse(&longer), Err(Error::InvalidArgument(m)) if m.contains("follow")));
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut b = blob.clone();
                b[i] ^= 1 << bit;
                let _ = Blob::parse(&b);
            }
        }
        let header_len = MAGIC.len() + 1;
        let mut huge = blob.clone();
        huge[header_len..header_len + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(Blob::parse(&huge), Err(Error::InvalidArgument(m)) if m.contains("out of range")));
        let mut format = blob.clone();
        format[MAGIC.len()] = 2;
        assert!(matches!(Blob::parse(&format), Err(Error::InvalidArgument(m)) if m.contains("format 2")));
        assert!(Blob::write(KID, &[]).is_none());
        assert!(Blob::write(KID, &[0; MAX_WRAPPED + 1]).is_none());
        assert!(Blob::write("", &[1]).is_none());
    }

    #[test]
    fn only_versioned_key_ids_are_taken() {
        let kid = |name: &str, version: &str| Some((name.to_string(), version.to_string()));
        assert_eq!(parse_kid(KID), kid("unseal", "0123456789abcdef0123456789abcdef"));
        assert_eq!(parse_kid("https://127.0.0.1:8443/keys/k-1/abc"), kid("k-1", "abc"));
        for bad in [
            "http://v.vault.azure.net/keys/unseal/0123",
            "https://v.vault.azure.net/keys/unseal",
            "https://v.vault.azure.net/keys/unseal/",
            "https://v.vault.azure.net/secrets/unseal/0123",
            "https://v.vault.azure.net/keys/unseal/01/23",
            "https://v.vault.azure.net/keys/unseal/..",
            "https://v.vault.azure.net/keys/un%2Fseal/0123",
            "https://v.vault.azure.net/keys/unseal/0123?x=1",
            "https://v.vault.azure.net/x/keys/unseal/0123",
            "not a url",
        ] {
            assert_eq!(parse_kid(bad), None, "{bad}");
        }
    }

    /// The test vault's keys API as the SDK's own models read it: create,
    /// get, rotate and update (disable), then the seal meets the disabled
    /// version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_test_vaults_keys_answer_the_sdk() {
        use azure_security_keyvault_keys::models::{
            CreateKeyParameters, KeyAttributes, KeyClientGetKeyOptions, KeyClientUpdateKeyPropertiesOptions,
            KeyOperation, KeyType, UpdateKeyPropertiesParameters,
        };
        use keybridge_testservers::keyvault::{self, KeyVault};

        let kv = KeyVault::start().await;
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), &kv.ca_pem).unwrap();
        let settings: SealSettings = [
            ("vault_url", kv.url.as_str()),
            ("key_name", "unseal"),
            ("authority_host", kv.url.as_str()),
            ("tenant_id", kv.tenant.as_str()),
            ("client_id", keyvault::CLIENT_ID),
            ("client_secret", keyvault::CLIENT_SECRET),
            ("ca_cert", ca.path().to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let seal = AzureKeyVaultSeal::from_settings(&settings).unwrap();
        let c = &seal.client;

        let params = CreateKeyParameters {
            kty: Some(KeyType::Rsa),
            key_size: Some(2048),
            key_ops: Some(vec![KeyOperation::WrapKey, KeyOperation::UnwrapKey]),
            ..Default::default()
        };
        let created = c.create_key("unseal", params.try_into().unwrap(), None).await.unwrap().into_model().unwrap();
        let jwk = created.key.unwrap();
        let kid = jwk.kid.unwrap();
        let (name, v1) = parse_kid(&kid).unwrap();
        assert_eq!((name.as_str(), kid.starts_with(&kv.url)), ("unseal", true));
        assert_eq!((jwk.kty, jwk.n.map(|n| n.len()), jwk.e), (Some(KeyType::Rsa), Some(256), Some(vec![1, 0, 1])));
        assert_eq!(jwk.key_ops, Some(vec!["wrapKey".to_string(), "unwrapKey".to_string()]));
        assert!(jwk.d.is_none());
        let attributes = created.attributes.unwrap();
        assert_eq!(attributes.enabled, Some(true));
        assert!(attributes.created.is_some());

        let blob = seal.encrypt(b"root").await.unwrap();
        let rotated = c.rotate_key("unseal", None).await.unwrap().into_model().unwrap();
        let (_, v2) = parse_kid(rotated.key.and_then(|k| k.kid).as_deref().unwrap_or_default()).unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            parse_kid(&AzureKeyVaultSeal::wrapped_by(&seal.encrypt(b"root").await.unwrap()).unwrap()).unwrap().1,
            v2
        );

        let update = UpdateKeyPropertiesParameters {
            key_attributes: Some(KeyAttributes { enabled: Some(false), ..Default::default() }),
            ..Default::default()
        };
        let options = KeyClientUpdateKeyPropertiesOptions { key_version: Some(v1.clone()), ..Default::default() };
        let updated = c
            .update_key_properties("unseal", update.try_into().unwrap(), Some(options))
            .await
            .unwrap()
            .into_model()
            .unwrap();
        assert_eq!(updated.attributes.and_then(|a| a.enabled), Some(false));
        let options = KeyClientGetKeyOptions { key_version: Some(v1.clone()), ..Default::default() };
        let got = c.get_key("unseal", Some(options)).await.unwrap().into_model().unwrap();
        assert_eq!(got.attributes.and_then(|a| a.enabled), Some(false));
        assert!(matches!(seal.decrypt(&blob).await, Err(Error::PermissionDenied(m)) if m.contains("disabled")));
    }

    #[test]
    fn the_request_body_is_the_rest_contracts() {
        let body: azure_core::http::Body = operation_body(b"\xff\xfe root").into();
        let azure_core::http::Body::Bytes(bytes) = body else { panic!("bytes expected") };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, serde_json::json!({"alg": "RSA-OAEP-256", "value": "__4gcm9vdA"}));
    }
}
