//! The Azure Key Vault adapter.
//!
//! - The client is built once per mount from typed settings: `vault_url`
//!   (https), and credentials: a client secret (`tenant_id`, `client_id`,
//!   `client_secret`), or `credentials=managed_identity` (optionally with
//!   `client_id` of a user-assigned identity), `workload_identity` (AKS),
//!   `developer_tools` (the Azure CLI). Without any, workload identity when
//!   the pod has a federated token (`AZURE_FEDERATED_TOKEN_FILE`), managed
//!   identity otherwise. `authority_host` selects another Entra ID cloud;
//!   `ca_cert` adds a trusted CA (private endpoints behind TLS inspection,
//!   and tests).
//! - The SDK's transport is reqwest 0.12 with rustls on ring; the SDK's own
//!   retries are off (the mount's `Limited` wrapper retries reads).
//! - Version numbers: every version Keybridge writes carries a
//!   `keybridge-version` tag. Tags belong to a version in Key Vault, so the
//!   secret's custom metadata is the current version's tags, carried to each
//!   new version (and at most 14 of them: Key Vault allows 15 tags).
//! - Version order: Key Vault lists a secret's versions in an order of its
//!   own (not the order they were written in) and stamps them to the
//!   second, so the adapter orders them itself ([`keybridge_order`]): by
//!   number, versions written elsewhere by `created` then version id, and
//!   asks Key Vault which is current when another tool wrote in the same
//!   second as the latest. The last is the current version for
//!   check-and-set and the tags.
//! - Binary values are stored base64-encoded with the content type
//!   `application/vnd.keybridge.binary+base64` and come back as bytes.
//! - Deletion is Key Vault's soft delete (the vault's retention applies),
//!   restore is recover, purge is delete then purge. Soft-deleting one
//!   version sets its `enabled` attribute to false.
//! - Key Vault finishes deletes, recovers and purges in the background and
//!   refuses what would race them with 409 `ObjectIsBeingDeleted` or
//!   `ObjectIsBeingRecovered`; a recovered secret reads 404 until it is
//!   back. The adapter waits those out (250 ms doubling to 4 s, at most
//!   [`PENDING_WAIT`], well inside the gateway's request timeout; each look
//!   takes a slot of the mount's quotas through the [`Meter`] the rate
//!   limiter attaches): purge
//!   after delete, recover after a delete, writes to a name being deleted,
//!   purged or recovered, and `restore` returns once the secret reads.
//! - [`kms`]: the `azurekeyvault` seal (auto-unseal): the root key wrapped
//!   by a Key Vault RSA key (wrapKey/unwrapKey, RSA-OAEP-256) through
//!   `azure_security_keyvault_keys`, over the same transport and credentials
//!   (`connect`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::pager::{PagerContinuation, PagerOptions};
use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_security_keyvault_secrets::models::{
    SecretAttributes, SecretClientGetSecretOptions, SecretClientListSecretPropertiesOptions,
    SecretClientListSecretPropertiesVersionsOptions, SecretClientUpdateSecretPropertiesOptions, SecretProperties,
    SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use base64::Engine as _;
use futures::TryStreamExt as _;
use keybridge_provider_api::limits::{CallClass, Meter};
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore,
    Selector, VersionChange, VersionInfo, VersionState,
};
use zeroize::Zeroizing;

pub mod kms;
mod transport;

const PROVIDER: &str = "Azure Key Vault";
/// The tag holding Keybridge's number of a version.
pub const NUMBER_TAG: &str = "keybridge-version";
/// The content type marking a base64-encoded binary value.
pub const BINARY_TYPE: &str = "application/vnd.keybridge.binary+base64";
/// Key Vault allows 15 tags; one is Keybridge's number.
pub const MAX_CUSTOM_TAGS: usize = 14;
/// The longest the adapter waits for a delete, recover or purge that Key
/// Vault is finishing in the background (a third of the gateway's default
/// request timeout of 60 s).
pub const PENDING_WAIT: Duration = Duration::from_secs(20);
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(4);

#[derive(Clone)]
enum Credentials {
    ClientSecret { tenant_id: String, client_id: String, secret: Zeroizing<String> },
    ManagedIdentity { client_id: Option<String> },
    WorkloadIdentity,
    DeveloperTools,
}

/// A mount's settings.
#[derive(Clone)]
pub struct Settings {
    pub vault_url: String,
    pub authority_host: Option<String>,
    pub ca_cert: Option<String>,
    credentials: Credentials,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let creds = match &self.credentials {
            Credentials::ClientSecret { .. } => "client_secret",
            Credentials::ManagedIdentity { .. } => "managed_identity",
            Credentials::WorkloadIdentity => "workload_identity",
            Credentials::DeveloperTools => "developer_tools",
        };
        f.debug_struct("Settings")
            .field("vault_url", &self.vault_url)
            .field("authority_host", &self.authority_host)
            .field("ca_cert", &self.ca_cert)
            .field("credentials", &creds)
            .finish()
    }
}

const KEYS: &[&str] =
    &["vault_url", "tenant_id", "client_id", "client_secret", "credentials", "authority_host", "ca_cert"];

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl Settings {
    /// Validates `key=value` settings without IO.
    pub fn parse(s: &BTreeMap<String, String>) -> Result<Settings> {
        keybridge_provider_api::settings::only(s, "azure", KEYS)?;
        let settings = Settings::parse_connection(s)?;
        keybridge_provider_api::endpoints::refuse_ambient(
            keybridge_provider_api::Cloud::Azure,
            s,
            !settings.ambient(),
            "tenant_id, client_id and client_secret",
        )?;
        Ok(settings)
    }

    /// What a mount and a seal ([`kms`]) share: `vault_url`, the
    /// credentials, `authority_host` and `ca_cert`, checked without IO.
    /// Neither refuses unknown keys nor ambient credentials on a custom
    /// endpoint: each caller decides.
    pub(crate) fn parse_connection(s: &BTreeMap<String, String>) -> Result<Settings> {
        let get = |k: &str| s.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let vault_url = get("vault_url").ok_or_else(|| {
            Error::InvalidArgument("vault_url is required, such as https://my-vault.vault.azure.net".into())
        })?;
        let parsed = Url::parse(&vault_url)
            .map_err(|e| Error::InvalidArgument(format!("vault_url {vault_url:?} is not a URL: {e}")))?;
        if parsed.scheme() != "https" || parsed.host_str().is_none() {
            return Err(Error::InvalidArgument(format!(
                "vault_url {vault_url:?} must be an https:// URL (Key Vault accepts tokens over HTTPS only)"
            )));
        }
        keybridge_provider_api::endpoints::check_url("vault_url", &vault_url)?;
        let authority_host = get("authority_host");
        if let Some(a) = &authority_host {
            keybridge_provider_api::endpoints::check_url("authority_host", a)?;
        }
        if let Some(a) = &authority_host
            && !a.starts_with("https://")
        {
            return Err(Error::InvalidArgument(format!("authority_host {a:?} must be an https:// URL")));
        }
        let guid = |k: &str| -> Result<Option<String>> {
            match get(k) {
                Some(v) if !is_guid(&v) => Err(Error::InvalidArgument(format!(
                    "{k} {v:?} is not a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47"
                ))),
                v => Ok(v),
            }
        };
        let (tenant_id, client_id) = (guid("tenant_id")?, guid("client_id")?);
        let secret = get("client_secret");
        let kind = get("credentials");
        let credentials = match (kind.as_deref(), tenant_id, client_id, secret) {
            (None | Some("client_secret"), Some(tenant_id), Some(client_id), Some(secret)) => {
                Credentials::ClientSecret { tenant_id, client_id, secret: Zeroizing::new(secret) }
            }
            (None | Some("client_secret"), t, c, Some(_)) | (Some("client_secret"), t, c, None) => {
                let missing: Vec<&str> = [("tenant_id", t.is_none()), ("client_id", c.is_none())]
                    .into_iter()
                    .filter_map(|(k, m)| m.then_some(k))
                    .chain(kind.as_deref().filter(|_| s.get("client_secret").is_none()).map(|_| "client_secret"))
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "client secret credentials need tenant_id, client_id and client_secret; missing: {}",
                    missing.join(", ")
                )));
            }
            (Some("managed_identity"), None, c, None) => Credentials::ManagedIdentity { client_id: c },
            (Some("workload_identity"), None, None, None) => Credentials::WorkloadIdentity,
            (Some("developer_tools"), None, None, None) => Credentials::DeveloperTools,
            (None, None, c, None) => {
                if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() && c.is_none() {
                    Credentials::WorkloadIdentity
                } else {
                    Credentials::ManagedIdentity { client_id: c }
                }
            }
            (Some(k @ ("managed_identity" | "workload_identity" | "developer_tools")), ..) => {
                return Err(Error::InvalidArgument(format!(
                    "credentials={k} takes no tenant_id or client_secret{}",
                    if k == "managed_identity" { "" } else { " or client_id" }
                )));
            }
            (Some(other), ..) => {
                return Err(Error::InvalidArgument(format!(
                    "credentials must be client_secret, managed_identity, workload_identity or developer_tools, not {other:?}"
                )));
            }
            (None, Some(_), _, None) => {
                return Err(Error::InvalidArgument("tenant_id was given without client_id and client_secret".into()));
            }
        };
        Ok(Settings { vault_url, authority_host, ca_cert: get("ca_cert"), credentials })
    }

    /// Whether the credentials are the gateway host's own (managed,
    /// workload or developer identity) rather than given with the settings.
    pub(crate) fn ambient(&self) -> bool {
        !matches!(self.credentials, Credentials::ClientSecret { .. })
    }

    /// Whether the vault is one of Azure's, whose challenges must name it.
    pub(crate) fn azure_host(&self) -> bool {
        let host = Url::parse(&self.vault_url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        [".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net", ".managedhsm.azure.net"]
            .iter()
            .any(|d| host.ends_with(d))
    }
}

/// The largest `ca_cert` file read: a CA bundle is kilobytes.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Reads the `ca_cert` file: a regular file (not a device or a FIFO that
/// would block or never end) of at most [`MAX_CA_BYTES`].
fn read_ca(path: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| setup("CA", format!("{path}: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_CA_BYTES {
        return Err(setup("CA", format!("{path} is not a regular file of at most {MAX_CA_BYTES} bytes")));
    }
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_end(&mut out))
        .map_err(|e| setup("CA", format!("{path}: {e}")))?;
    if out.len() as u64 > MAX_CA_BYTES {
        return Err(setup("CA", format!("{path} is larger than {MAX_CA_BYTES} bytes")));
    }
    Ok(out)
}

pub struct AzureStore {
    client: SecretClient,
    /// How long to wait out a delete, recover or purge under way.
    pending_wait: Duration,
    /// The mount's quotas, for the looks a wait makes.
    meter: std::sync::OnceLock<Meter>,
}

pub(crate) fn setup(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{PROVIDER}: cannot set up the {what}: {e}"))
}

/// What an SDK client of the vault needs: the client options (our
/// transport, which trusts `ca_cert`; no SDK retries; the Entra ID cloud of
/// `authority_host`) and the credential.
pub(crate) struct Connection {
    pub options: ClientOptions,
    pub credential: Arc<dyn TokenCredential>,
}

/// Builds the transport and the credential of `settings`, for the secrets
/// client of a mount and the keys client of a seal. Reads the `ca_cert`
/// file if given; makes no call to Azure.
pub(crate) fn connect(settings: &Settings) -> Result<Connection> {
    let ca = match &settings.ca_cert {
        Some(path) => Some(read_ca(path)?),
        None => None,
    };
    let http = transport::client(ca.as_deref()).map_err(|e| setup("HTTPS client", e))?;
    let mut options = ClientOptions {
        transport: Some(Transport::new(Arc::new(transport::ReqwestTransport(http)))),
        retry: RetryOptions::none(),
        ..Default::default()
    };
    if let Some(a) = &settings.authority_host {
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = a.clone();
        options.cloud = Some(Arc::new(custom.into()));
    }
    let credential: Arc<dyn TokenCredential> = match &settings.credentials {
        Credentials::ClientSecret { tenant_id, client_id, secret } => azure_identity::ClientSecretCredential::new(
            tenant_id,
            client_id.clone(),
            azure_core::credentials::Secret::new(secret.to_string()),
            Some(azure_identity::ClientSecretCredentialOptions { client_options: options.clone() }),
        )
        .map_err(|e| setup("client secret credential", e))?,
        Credentials::ManagedIdentity { client_id } => {
            azure_identity::ManagedIdentityCredential::new(Some(azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(azure_identity::UserAssignedId::ClientId),
                client_options: options.clone(),
            }))
            .map_err(|e| setup("managed identity credential", e))?
        }
        Credentials::WorkloadIdentity => azure_identity::WorkloadIdentityCredential::new(None)
            .map_err(|e| setup("workload identity credential", e))?,
        Credentials::DeveloperTools => {
            azure_identity::DeveloperToolsCredential::new(None).map_err(|e| setup("developer tools credential", e))?
        }
    };
    Ok(Connection { options, credential })
}

impl AzureStore {
    /// Builds the credential and the SDK client (once per mount). Reads the
    /// `ca_cert` file if given; makes no call to Azure.
    pub fn new(settings: &Settings) -> Result<AzureStore> {
        let Connection { options, credential } = connect(settings)?;
        let client = SecretClient::new(
            &settings.vault_url,
            credential,
            Some(SecretClientOptions {
                client_options: options,
                verify_challenge_resource: Some(settings.azure_host()),
                ..Default::default()
            }),
        )
        .map_err(|e| setup("Key Vault client", e))?;
        Ok(AzureStore { client, pending_wait: PENDING_WAIT, meter: std::sync::OnceLock::new() })
    }

    /// Waits at most `wait` (instead of [`PENDING_WAIT`]) for a delete,
    /// recover or purge that Key Vault is finishing.
    pub fn with_pending_wait(mut self, wait: Duration) -> AzureStore {
        self.pending_wait = wait;
        self
    }
}

/// The HTTP status of a failed call, if the vault answered.
fn status(e: &azure_core::Error) -> Option<u16> {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, .. } => Some(u16::from(*status)),
        _ => None,
    }
}

/// Key Vault's more specific `error.innererror.code` (`ObjectIsBeingDeleted`,
/// `SecretDisabled`, ...), when the answer has one.
pub(crate) fn inner_code(e: &azure_core::Error) -> Option<String> {
    let azure_core::error::ErrorKind::HttpResponse { raw_response: Some(raw), .. } = e.kind() else {
        return None;
    };
    let body: serde_json::Value = serde_json::from_slice(raw.body()).ok()?;
    body["error"]["innererror"]["code"].as_str().map(str::to_string)
}

/// A 409 for a delete, recover or purge of the name still under way: the
/// call was refused (nothing was done) and can be made again once it is
/// finished.
fn in_progress(e: &azure_core::Error) -> bool {
    status(e) == Some(409)
        && matches!(inner_code(e).as_deref(), Some("ObjectIsBeingDeleted" | "ObjectIsBeingRecovered"))
}

/// What an attempt came to: done, or refused until an operation under way
/// finishes (the error to answer if the wait runs out).
enum Step<T> {
    Done(T),
    Wait(Error),
}

/// The answer when Key Vault is still finishing an operation after the
/// adapter's wait: `Unavailable`, since trying again later can succeed.
fn still_pending(e: azure_core::Error, op: &str, name: &str) -> Error {
    match map(e, op, name) {
        Error::Conflict(m) | Error::NotFound(m) => Error::Unavailable(format!(
            "{m}; Key Vault is still finishing a delete, recover or purge of {name}: retry later"
        )),
        other => other,
    }
}

/// Maps an SDK error by HTTP status and Key Vault's error code to one line
/// with a hint; the SDK's whole error is logged at debug level only.
fn map(e: azure_core::Error, op: &str, name: &str) -> Error {
    use azure_core::error::ErrorKind;
    // The API operation and the name: `GetSecret app-db`.
    let what = &format!("{op} {name}");
    use keybridge_provider_api::messages::{one_line, root_cause};
    tracing::debug!(operation = what, error = ?e, "Azure call failed");
    let full = e.to_string();
    let inner = inner_code(&e);
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code, .. } => {
            let code = error_code.as_deref().unwrap_or_default();
            // The SDK's message is Key Vault's own `error.message`.
            let message = full.clone();
            let m = |hint: &str| one_line(PROVIDER, what, code, &message, hint);
            match u16::from(*status) {
                404 => Error::NotFound(format!("{name}: not found in {PROVIDER}")),
                403 if code == "Forbidden"
                    && (inner.as_deref() == Some("SecretDisabled") || full.contains("SecretDisabled")) =>
                {
                    Error::NotFound(format!("{name}: the version is disabled (soft-deleted) in {PROVIDER}"))
                }
                // The inner code says which conflict: ObjectIsBeingDeleted,
                // ObjectIsDeletedButRecoverable, ...
                409 => Error::Conflict(one_line(PROVIDER, what, inner.as_deref().unwrap_or(code), &message, "")),
                400 if code == "BadParameter" && full.contains("version") && full.contains("not recognized") => {
                    Error::InvalidArgument(m(
                        "the vault does not implement the Key Vault API version Keybridge's Azure SDK sends",
                    ))
                }
                400 => Error::InvalidArgument(m("")),
                401 => Error::Unauthenticated(m("check tenant_id, client_id and client_secret")),
                403 => Error::PermissionDenied(m(
                    "give the mount's identity a Key Vault secrets role (or access policy) on this vault",
                )),
                429 => Error::Throttled(m("")),
                s if s >= 500 => Error::Unavailable(m("")),
                _ => Error::Failed(m("")),
            }
        }
        ErrorKind::Credential => Error::Unauthenticated(one_line(
            PROVIDER,
            what,
            "CredentialUnavailable",
            &format!("cannot get a token: {}", root_cause(&e)),
            "check tenant_id, client_id and client_secret (or the managed identity)",
        )),
        ErrorKind::Connection | ErrorKind::Io => Error::Unavailable(one_line(
            &format!("{PROVIDER} cannot be reached"),
            what,
            "",
            &root_cause(&e),
            "check vault_url and the network",
        )),
        _ => Error::Failed(one_line(PROVIDER, what, "", &root_cause(&e), "")),
    }
}

fn time(t: Option<time::OffsetDateTime>) -> Option<SystemTime> {
    t.map(SystemTime::from)
}

/// The version id at the end of `https://vault/secrets/{name}/{version}`.
fn version_of(id: Option<&str>) -> String {
    id.and_then(|i| i.trim_end_matches('/').rsplit('/').next()).unwrap_or_default().to_string()
}

/// The name in `https://vault/secrets/{name}[/{version}]`.
fn name_of(id: Option<&str>) -> String {
    let id = id.unwrap_or_default();
    id.split("/secrets/").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_string()
}

fn number_of(tags: Option<&HashMap<String, String>>) -> Option<u64> {
    tags?.get(NUMBER_TAG)?.parse().ok().filter(|n| *n > 0)
}

fn custom_tags(tags: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    tags.map(|t| t.iter().filter(|(k, _)| *k != NUMBER_TAG).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn info(id: Option<&str>, attrs: Option<&SecretAttributes>, tags: Option<&HashMap<String, String>>) -> VersionInfo {
    VersionInfo {
        id: version_of(id),
        number: number_of(tags),
        stages: Vec::new(),
        created: time(attrs.and_then(|a| a.created)),
        state: if attrs.and_then(|a| a.enabled) == Some(false) {
            VersionState::Disabled
        } else {
            VersionState::Enabled
        },
        expires: time(attrs.and_then(|a| a.expires)),
    }
}

fn from_props(p: &SecretProperties) -> VersionInfo {
    info(p.id.as_deref(), p.attributes.as_ref(), p.tags.as_ref())
}

/// A version and its custom tags.
type Tagged = (VersionInfo, BTreeMap<String, String>);

/// Whether the last second of `versions` (in [`keybridge_order`]) holds
/// more than one version and one of them was written elsewhere: then
/// neither the numbers nor `created` say which is current, and only Key
/// Vault's read without a version does (one more call, only then).
fn ambiguous(versions: &[Tagged]) -> bool {
    let Some((last, _)) = versions.last() else { return false };
    let tied: Vec<&VersionInfo> = versions.iter().map(|(v, _)| v).filter(|v| v.created == last.created).collect();
    tied.len() > 1 && tied.iter().any(|v| v.number.is_none())
}

/// Puts a secret's versions in Keybridge's order, oldest first, so the
/// last is the current one. Key Vault lists versions in an order of its
/// own, not the order of writing, and `created` is in whole seconds, so
/// neither the listed order nor `created` alone tells versions written in
/// the same second apart. The rule:
///
/// 1. Versions Keybridge wrote (with a [`NUMBER_TAG`]) in number order
///    (then `created`, then version id, should two carry one number).
/// 2. Versions written elsewhere (no number) by `created`, then by version
///    id: a stable rule, not the order of writing within a second, which
///    the listing does not tell.
/// 3. The two merged by `created`; within one second, the versions written
///    elsewhere after Keybridge's (when unsure, another tool's change is
///    noticed and check-and-set refuses, rather than the other way round).
///
/// When the last second holds more than one version and one of them was
/// written elsewhere, `versions` asks Key Vault which is current (see
/// [`ambiguous`]) and puts that one last.
pub fn keybridge_order(versions: Vec<Tagged>) -> Vec<Tagged> {
    let (mut ours, mut others): (Vec<Tagged>, Vec<Tagged>) =
        versions.into_iter().partition(|(v, _)| v.number.is_some());
    ours.sort_by(|(a, _), (b, _)| (a.number, a.created, &a.id).cmp(&(b.number, b.created, &b.id)));
    others.sort_by(|(a, _), (b, _)| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let mut out = Vec::with_capacity(ours.len() + others.len());
    let (mut ours, mut others) = (ours.into_iter().peekable(), others.into_iter().peekable());
    loop {
        let next = match (ours.peek(), others.peek()) {
            (Some((a, _)), Some((b, _))) if b.created < a.created => others.next(),
            (Some(_), _) => ours.next(),
            (None, _) => others.next(),
        };
        match next {
            Some(v) => out.push(v),
            None => return out,
        }
    }
}

impl AzureStore {
    /// Every version in [`keybridge_order`] (the current one last), with
    /// its tags.
    async fn versions(&self, name: &str) -> Result<Vec<Tagged>> {
        let mut pages = self
            .client
            .list_secret_properties_versions(
                name,
                Some(SecretClientListSecretPropertiesVersionsOptions { maxresults: Some(25), ..Default::default() }),
            )
            .map_err(|e| map(e, "ListSecretPropertiesVersions", name))?
            .into_pages();
        let mut out = Vec::new();
        while let Some(page) = pages.try_next().await.map_err(|e| map(e, "ListSecretPropertiesVersions", name))? {
            let page = page.into_model().map_err(|e| map(e, "ListSecretPropertiesVersions", name))?;
            out.extend(page.value.iter().map(|p| (from_props(p), custom_tags(p.tags.as_ref()))));
        }
        if out.is_empty() {
            return Err(Error::NotFound(format!("{name}: not found in {PROVIDER}")));
        }
        let mut out = keybridge_order(out);
        if ambiguous(&out)
            && let Some(id) = self.current_id(name).await
            && let Some(i) = out.iter().position(|(v, _)| v.id == id)
        {
            let current = out.remove(i);
            out.push(current);
        }
        Ok(out)
    }

    /// The current version's id, as Key Vault's read without a version
    /// answers it (the value is wiped at once); `None` if it cannot say (a
    /// disabled current version, a failed call).
    async fn current_id(&self, name: &str) -> Option<String> {
        use zeroize::Zeroize as _;
        let mut secret = self.client.get_secret(name, None).await.ok()?.into_model().ok()?;
        if let Some(v) = secret.value.as_mut() {
            v.zeroize();
        }
        Some(version_of(secret.id.as_deref()))
    }

    /// Runs `attempt` until it is done, waiting out a delete, recover or
    /// purge that Key Vault is finishing (pauses of 100 ms doubling to 1 s,
    /// at most `pending_wait` in all; then the attempt's own error).
    ///
    /// Each attempt but one the mount's rate limiter already counted
    /// (`counted`: the first, when it is the operation's own call) takes a
    /// slot of `class` from the mount's quotas, as any call would.
    async fn settled<T, F, Fut>(&self, class: CallClass, counted: bool, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Step<T>>>,
    {
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        let mut pause = FIRST_PAUSE;
        let mut first = true;
        loop {
            if !(first && counted)
                && let Some(meter) = self.meter.get()
            {
                meter.slot(class).await?;
            }
            first = false;
            match attempt().await? {
                Step::Done(v) => return Ok(v),
                Step::Wait(e) if tokio::time::Instant::now() + pause > deadline => return Err(e),
                Step::Wait(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// SetSecret; a name held by a delete, recover or purge under way is
    /// [`Step::Wait`].
    async fn set(&self, name: &str, value: &CloudValue, tags: HashMap<String, String>) -> Result<Step<VersionInfo>> {
        let (value, content_type) = match value {
            CloudValue::String(s) => (Zeroizing::new(s.to_string()), None),
            CloudValue::Binary(b) => {
                (Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(b)), Some(BINARY_TYPE.to_string()))
            }
        };
        let params = SetSecretParameters {
            value: Some(value.to_string()),
            content_type,
            tags: Some(tags),
            ..Default::default()
        };
        let body = params.try_into().map_err(|e| map(e, "SetSecret", name))?;
        let secret = match self.client.set_secret(name, body, None).await {
            Ok(r) => r.into_model().map_err(|e| map(e, "SetSecret", name))?,
            Err(e) if in_progress(&e) => return Ok(Step::Wait(still_pending(e, "SetSecret", name))),
            Err(e) => return Err(map(e, "SetSecret", name)),
        };
        Ok(Step::Done(info(secret.id.as_deref(), secret.attributes.as_ref(), secret.tags.as_ref())))
    }

    /// One try of `put`: the versions, the precondition, the write. A name
    /// held by a delete or recover under way is tried again from the top
    /// once it is finished (a recovered secret has versions again).
    async fn put_once(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<Step<VersionInfo>> {
        let given = tags.cloned().unwrap_or_default();
        let versions = match self.versions(name).await {
            Ok(v) => Some(v),
            Err(Error::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let Some(versions) = versions else {
            pre.check(name, None)?;
            return self.set(name, value, with_number(given, 1)).await;
        };
        let current = versions.last().map(|(v, t)| (v, t.clone()));
        pre.check(name, current.as_ref().map(|(v, _)| *v))?;
        // Tags belong to a version: carry the secret's metadata forward.
        let carried = if tags.is_some() { given } else { current.map(|(_, t)| t).unwrap_or_default() };
        let next = keybridge_provider_api::store::next_number(name, versions.iter().filter_map(|(v, _)| v.number))?;
        self.set(name, value, with_number(carried, next)).await
    }

    async fn update(&self, name: &str, version: &str, params: UpdateSecretPropertiesParameters) -> Result<()> {
        let body = params.try_into().map_err(|e| map(e, "UpdateSecretProperties", name))?;
        self.client
            .update_secret_properties(
                name,
                body,
                Some(SecretClientUpdateSecretPropertiesOptions {
                    secret_version: Some(version.to_string()),
                    ..Default::default()
                }),
            )
            .await
            .map(|_| ())
            .map_err(|e| map(e, "UpdateSecretProperties", name))
    }
}

fn with_number(mut tags: BTreeMap<String, String>, n: u64) -> HashMap<String, String> {
    tags.insert(NUMBER_TAG.to_string(), n.to_string());
    tags.into_iter().collect()
}

#[async_trait::async_trait]
impl SecretStore for AzureStore {
    fn cloud(&self) -> Cloud {
        Cloud::Azure
    }

    fn attach_meter(&self, meter: Meter) {
        let _ = self.meter.set(meter);
    }

    async fn check(&self) -> Result<()> {
        let mut pages = self
            .client
            .list_secret_properties(Some(SecretClientListSecretPropertiesOptions {
                maxresults: Some(1),
                ..Default::default()
            }))
            .map_err(|e| map(e, "ListSecretProperties", "health check"))?
            .into_pages();
        pages.try_next().await.map(|_| ()).map_err(|e| map(e, "ListSecretProperties", "health check"))
    }

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        let version = match at {
            Selector::Current => None,
            Selector::Version(v) => Some(v.clone()),
            Selector::Number(n) => {
                let versions = self.versions(name).await?;
                match versions.iter().find(|(v, _)| v.number == Some(*n)) {
                    Some((v, _)) => Some(v.id.clone()),
                    None => return Err(Error::NotFound(format!("{name}: version {n} not found in {PROVIDER}"))),
                }
            }
            Selector::Stage(_) => {
                return Err(Error::Unsupported {
                    provider: PROVIDER,
                    capability: "select versions by stage or alias (Key Vault has none; use a version id)",
                });
            }
        };
        let secret = self
            .client
            .get_secret(name, Some(SecretClientGetSecretOptions { secret_version: version, ..Default::default() }))
            .await
            .map_err(|e| map(e, "GetSecret", name))?
            .into_model()
            .map_err(|e| map(e, "GetSecret", name))?;
        let raw = Zeroizing::new(secret.value.clone().unwrap_or_default());
        let value = if secret.content_type.as_deref() == Some(BINARY_TYPE) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(raw.as_bytes()).map_err(|_| {
                Error::Failed(format!("{name}: marked binary ({BINARY_TYPE}) but its value is not base64"))
            })?;
            CloudValue::Binary(Zeroizing::new(bytes))
        } else {
            CloudValue::String(raw)
        };
        Ok(SecretRead { version: info(secret.id.as_deref(), secret.attributes.as_ref(), secret.tags.as_ref()), value })
    }

    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        if tags.is_some_and(|t| t.len() > MAX_CUSTOM_TAGS) {
            return Err(Error::InvalidArgument(format!(
                "{PROVIDER} keeps at most {MAX_CUSTOM_TAGS} custom metadata entries per secret"
            )));
        }
        self.settled(CallClass::Write, true, || self.put_once(name, value, pre, tags)).await
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        let versions = self.versions(name).await?;
        let tags = versions.last().map(|(_, t)| t.clone()).unwrap_or_default();
        let versions: Vec<VersionInfo> = versions.into_iter().map(|(v, _)| v).collect();
        Ok(SecretInfo {
            name: name.to_string(),
            created: versions.first().and_then(|v| v.created),
            updated: versions.last().and_then(|v| v.created),
            tags,
            deletion: None,
            versions,
        })
    }

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        let continuation = match page_token {
            Some(t) => Some(PagerContinuation::Link(
                Url::parse(t)
                    .map_err(|_| Error::InvalidArgument("the page token is not one this mount issued".into()))?,
            )),
            None => None,
        };
        let options = SecretClientListSecretPropertiesOptions {
            maxresults: Some(page_size.clamp(1, 25) as i32),
            method_options: PagerOptions { continuation, context: Default::default() },
        };
        let mut pages = self
            .client
            .list_secret_properties(Some(options))
            .map_err(|e| map(e, "ListSecretProperties", "list"))?
            .into_pages();
        let Some(page) = pages.try_next().await.map_err(|e| map(e, "ListSecretProperties", "list"))? else {
            return Ok(Page::default());
        };
        let page = page.into_model().map_err(|e| map(e, "ListSecretProperties", "list"))?;
        Ok(Page {
            items: page
                .value
                .iter()
                .map(|p| Listed {
                    marker: p.attributes.as_ref().and_then(|a| a.updated).map(|t| t.unix_timestamp().to_string()),
                    name: name_of(p.id.as_deref()),
                    updated: time(p.attributes.as_ref().and_then(|a| a.updated)),
                    tags: custom_tags(p.tags.as_ref()),
                })
                .collect(),
            next: page.next_link.filter(|l| !l.is_empty()),
        })
    }

    /// Soft delete; purge deletes, then purges once Key Vault has finished
    /// the deletion (it answers 409 `ObjectIsBeingDeleted` until then). A
    /// secret already deleted (but recoverable) is purged.
    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        let purge = how == Deletion::Purge;
        self.settled(CallClass::Write, true, || async move {
            match self.client.delete_secret(name, None).await {
                Ok(_) => Ok(Step::Done(())),
                Err(e) if in_progress(&e) => Ok(Step::Wait(still_pending(e, "DeleteSecret", name))),
                Err(e) if purge && status(&e) == Some(404) => Ok(Step::Done(())),
                Err(e) => Err(map(e, "DeleteSecret", name)),
            }
        })
        .await?;
        if !purge {
            return Ok(());
        }
        self.settled(CallClass::Write, false, || async move {
            match self.client.purge_deleted_secret(name, None).await {
                Ok(_) => Ok(Step::Done(())),
                Err(e) if in_progress(&e) => Ok(Step::Wait(still_pending(e, "PurgeDeletedSecret", name))),
                Err(e) => Err(map(e, "PurgeDeletedSecret", name)),
            }
        })
        .await
    }

    /// Recovers the deleted secret (waiting out a deletion Key Vault is
    /// still finishing), then waits until the secret reads again: Key Vault
    /// recovers in the background and answers 404 until it has. A recover
    /// already under way (a retried call) is waited for the same way.
    async fn restore(&self, name: &str) -> Result<()> {
        self.settled(CallClass::Write, true, || async move {
            match self.client.recover_deleted_secret(name, None).await {
                Ok(_) => Ok(Step::Done(())),
                Err(e) if in_progress(&e) && inner_code(&e).as_deref() == Some("ObjectIsBeingRecovered") => {
                    Ok(Step::Done(()))
                }
                Err(e) if in_progress(&e) => Ok(Step::Wait(still_pending(e, "RecoverDeletedSecret", name))),
                Err(e) => Err(map(e, "RecoverDeletedSecret", name)),
            }
        })
        .await?;
        self.settled(CallClass::ReadValue, false, || async move {
            match self.client.get_secret(name, None).await {
                Ok(_) => Ok(Step::Done(())),
                Err(e) if status(&e) == Some(404) => Ok(Step::Wait(still_pending(e, "GetSecret", name))),
                // Back, with its current version disabled.
                Err(e) if status(&e) == Some(403) && inner_code(&e).as_deref() == Some("SecretDisabled") => {
                    Ok(Step::Done(()))
                }
                Err(e) => Err(map(e, "GetSecret", name)),
            }
        })
        .await
    }

    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()> {
        let enabled = match change {
            VersionChange::Disable => false,
            VersionChange::Enable => true,
            VersionChange::Destroy => {
                return Err(Error::Unsupported {
                    provider: PROVIDER,
                    capability: "destroy single versions (purge deletes the whole secret)",
                });
            }
        };
        let params = UpdateSecretPropertiesParameters {
            secret_attributes: Some(SecretAttributes { enabled: Some(enabled), ..Default::default() }),
            ..Default::default()
        };
        self.update(name, id, params).await
    }

    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        // Tags belong to the version: without them, `put` carries the
        // current ones forward (one more call).
        match tags {
            Some(t) if t.len() <= MAX_CUSTOM_TAGS && !t.contains_key(NUMBER_TAG) => {
                self.settled(CallClass::Write, true, || self.set(name, value, with_number(t.clone(), number.max(1))))
                    .await
            }
            _ => self.put(name, value, &Precondition::None, tags).await,
        }
    }

    /// Key Vault's listing shows the current version's update time; a
    /// version Keybridge just wrote was last updated when it was created.
    fn marker(&self, v: &VersionInfo) -> Option<String> {
        let secs = v.created?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
        Some(secs.to_string())
    }

    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        if tags.len() > MAX_CUSTOM_TAGS {
            return Err(Error::InvalidArgument(format!(
                "{PROVIDER} keeps at most {MAX_CUSTOM_TAGS} custom metadata entries per secret"
            )));
        }
        if tags.contains_key(NUMBER_TAG) {
            return Err(Error::InvalidArgument(format!("the tag {NUMBER_TAG} is Keybridge's own")));
        }
        let versions = self.versions(name).await?;
        let Some((current, _)) = versions.last() else {
            return Err(Error::NotFound(format!("{name}: not found in {PROVIDER}")));
        };
        let mut all: HashMap<String, String> = tags.clone().into_iter().collect();
        if let Some(n) = current.number {
            all.insert(NUMBER_TAG.to_string(), n.to_string());
        }
        let params = UpdateSecretPropertiesParameters { tags: Some(all), ..Default::default() };
        self.update(name, &current.id, params).await
    }
}
