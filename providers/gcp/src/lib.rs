//! The GCP Secret Manager adapter.
//!
//! - The client is built once per mount: `project` (required), an
//!   `endpoint` override, and credentials: Application Default Credentials
//!   (`credentials=default`, or none given), a service-account JSON key file
//!   on the gateway's host (`credentials=/path/to/key.json`, as
//!   `gcloud iam service-accounts keys create` writes it), or none
//!   (`credentials=anonymous`, for emulators). With a key the Google auth
//!   library signs a JWT per hour with the key (AIP-4111, no token endpoint
//!   call): scoped to `cloud-platform` for Google's own endpoints, and with
//!   the endpoint itself as its audience for any other, so a token sent
//!   there is not one Google would take.
//! - Versions are GCP's numbered versions; stages are GCP's aliases.
//! - Custom metadata lives in annotations (labels only take short
//!   lower-case values). Annotations GCP would refuse (keys of 1-63 of
//!   `[a-zA-Z0-9._-]` beginning and ending with an alphanumeric; keys and
//!   values together under 16 KiB) are refused here, before any call.
//! - Payloads carry CRC32C checksums both ways: `AddSecretVersion` sends
//!   `dataCrc32c` (GCP refuses a payload that does not match it), and an
//!   accessed payload whose checksum does not match is refused as corrupt
//!   in transit (retryable).
//! - GCP deletes a secret for good: there is no recoverable deletion and no
//!   restore; those answer `Unsupported`. Check-and-set reads the latest
//!   version first: GCP has no conditional `AddSecretVersion`.
//!
//! [`kms`] is the `gcpckms` seal (auto-unseal with Cloud KMS); it builds its
//! client and maps errors with the same code.

pub mod kms;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model;
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore,
    Selector, VersionChange, VersionInfo, VersionState,
};
use zeroize::Zeroizing;

const PROVIDER: &str = "GCP Secret Manager";

/// Whose credentials the mount uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Application Default Credentials: the gateway's own, for Google's
    /// endpoints only.
    #[default]
    Default,
    /// None (emulators).
    Anonymous,
    /// A service-account JSON key file on the gateway's host, read when the
    /// mount is loaded. Only the path is kept here.
    KeyFile(PathBuf),
}

#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub project: String,
    pub endpoint: Option<String>,
    pub credentials: Credentials,
}

const KEYS: &[&str] = &["project", "endpoint", "credentials"];

impl Settings {
    /// Validates `key=value` settings without IO.
    pub fn parse(s: &BTreeMap<String, String>) -> Result<Settings> {
        keybridge_provider_api::settings::only(s, "gcp", KEYS)?;
        let project = project(s)?;
        let endpoint = keybridge_provider_api::settings::url(s, "endpoint")?;
        let credentials = credentials(s)?;
        // Application Default Credentials are the gateway's and go only to
        // Google; anonymous or a key file are given with the mount.
        keybridge_provider_api::endpoints::refuse_ambient(
            keybridge_provider_api::Cloud::Gcp,
            s,
            credentials != Credentials::Default,
            "credentials=anonymous or credentials=<service-account key file>",
        )?;
        Ok(Settings { project, endpoint, credentials })
    }

    /// The endpoint, when it is not one of Google's own hosts.
    fn custom_endpoint(&self) -> Option<&str> {
        let e = self.endpoint.as_deref()?;
        let s = BTreeMap::from([("endpoint".to_string(), e.to_string())]);
        (!keybridge_provider_api::endpoints::custom_endpoints(Cloud::Gcp, &s).is_empty()).then_some(e)
    }
}

/// The `project` setting: a GCP project id.
pub(crate) fn project(s: &BTreeMap<String, String>) -> Result<String> {
    let project = s.get("project").map(|p| p.trim().to_string()).unwrap_or_default();
    let valid = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "project must be a GCP project id (6 to 30 of a-z, 0-9 and -, starting with a letter), not {project:?}"
        )));
    }
    Ok(project)
}

/// The `credentials` setting: `default` (or none), `anonymous`, or the
/// absolute path of a service-account JSON key file.
pub(crate) fn credentials(s: &BTreeMap<String, String>) -> Result<Credentials> {
    Ok(match s.get("credentials").map(|c| c.trim()) {
        None | Some("") | Some("default") => Credentials::Default,
        Some("anonymous") => Credentials::Anonymous,
        Some(p) if p.starts_with('/') => Credentials::KeyFile(PathBuf::from(p)),
        Some(o) => {
            // Never echo what may be a key pasted in place of its path.
            let shown = if o.len() <= 100 && !o.contains(['{', '\n']) && !o.contains("PRIVATE") {
                format!("{o:?}")
            } else {
                format!("a value of {} characters (a key goes in a file; give its path)", o.len())
            };
            return Err(Error::InvalidArgument(format!(
                "credentials must be default (Application Default Credentials), anonymous, or the absolute path \
                 of a service-account JSON key file, not {shown}"
            )));
        }
    })
}

/// The largest key file read: a service-account key is about 2.3 KB.
const MAX_KEY_BYTES: u64 = 64 * 1024;

fn key_error(service: &str, path: &Path, what: &str) -> Error {
    Error::InvalidArgument(format!("{service}: the credentials key file {}: {what}", path.display()))
}

/// Reads a service-account JSON key file and checks it as far as it can
/// without a call: a regular file of at most [`MAX_KEY_BYTES`], JSON of
/// `type` `service_account` with `client_email`, `private_key_id`,
/// `project_id` and a PKCS#8 RSA `private_key`. No error quotes the file.
fn read_key(service: &str, path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let key_error = |path: &Path, what: &str| key_error(service, path, what);
    let meta = std::fs::metadata(path).map_err(|e| key_error(path, &e.kind().to_string()))?;
    if !meta.is_file() || meta.len() > MAX_KEY_BYTES {
        return Err(key_error(path, &format!("not a regular file of at most {MAX_KEY_BYTES} bytes")));
    }
    let mut text = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_BYTES + 1).read_to_end(&mut text))
        .map_err(|e| key_error(path, &e.kind().to_string()))?;
    // serde's messages may quote the input: give only where it failed.
    let key: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        key_error(path, &format!("not JSON (a {:?} error at line {} column {})", e.classify(), e.line(), e.column()))
    })?;
    let field = |k: &str| key.get(k).and_then(serde_json::Value::as_str).filter(|v| !v.is_empty());
    match field("type") {
        Some("service_account") => {}
        Some(_) => return Err(key_error(path, "its type is not service_account; only service-account keys are taken")),
        _ => return Err(key_error(path, "not a service-account key (no \"type\": \"service_account\")")),
    }
    for k in ["client_email", "private_key_id", "project_id", "private_key"] {
        if field(k).is_none() {
            return Err(key_error(path, &format!("{k} is missing")));
        }
    }
    if key.get("universe_domain").and_then(serde_json::Value::as_str).is_some_and(|u| u != "googleapis.com") {
        return Err(key_error(path, "its universe_domain is not googleapis.com"));
    }
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject as _;
    let pem = field("private_key").unwrap_or_default();
    let der = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(d @ PrivateKeyDer::Pkcs8(_)) => d,
        _ => return Err(key_error(path, "private_key is not a PEM-encoded PKCS#8 private key")),
    };
    let rsa = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .ok()
        .and_then(|k| k.choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256]))
        .is_some();
    if !rsa {
        return Err(key_error(path, "private_key is not an RSA key (of at least 2048 bits) that can sign RS256"));
    }
    Ok(key)
}

pub struct GcpStore {
    client: SecretManagerService,
    project: String,
}

/// A Google API the adapters call, as error messages name it.
pub(crate) struct Service {
    /// `GCP Secret Manager`, `GCP Cloud KMS`.
    pub name: &'static str,
    /// What to do about `PERMISSION_DENIED`.
    pub permission_hint: &'static str,
    /// What the settings belong to: `mount`, `seal`.
    pub holder: &'static str,
}

const SECRET_MANAGER: Service = Service {
    name: PROVIDER,
    holder: "mount",
    permission_hint: "give the mount's service account a Secret Manager role (roles/secretmanager.admin) on the project",
};

/// Maps a Secret Manager client error; see [`map_error`].
fn map(e: google_cloud_gax::error::Error, op: &str, name: &str) -> Error {
    map_error(&SECRET_MANAGER, e, op, name)
}

/// Maps a client error by its gRPC/HTTP status to one line with a hint; the
/// whole error is logged at debug level only.
pub(crate) fn map_error(service: &Service, e: google_cloud_gax::error::Error, op: &str, name: &str) -> Error {
    use google_cloud_gax::error::rpc::Code;
    let provider = service.name;
    // The API operation and the name: `GetSecret app-db`.
    let what = &format!("{op} {name}");
    use keybridge_provider_api::messages::{one_line, root_cause};
    tracing::debug!(operation = what, error = ?e, "GCP call failed");
    if let Some(st) = e.status() {
        let code = format!("{:?}", st.code);
        let m = |hint: &str| one_line(provider, what, &code, &st.message, hint);
        return match st.code {
            Code::NotFound => Error::NotFound(format!("{name}: not found in {provider}")),
            Code::AlreadyExists => Error::AlreadyExists(m("")),
            Code::FailedPrecondition | Code::Aborted => Error::Conflict(m("")),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m("")),
            Code::PermissionDenied => Error::PermissionDenied(m(service.permission_hint)),
            Code::Unauthenticated => Error::Unauthenticated(m(&format!(
                "check the {}'s credentials (the service-account key file, or the gateway's Application Default \
                 Credentials)",
                service.holder
            ))),
            Code::ResourceExhausted => Error::Throttled(m("")),
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal => Error::Unavailable(m("")),
            _ => Error::Failed(m("")),
        };
    }
    if e.is_authentication() {
        return Error::Unauthenticated(one_line(
            provider,
            what,
            "NoCredentials",
            &format!("cannot get credentials: {}", root_cause(&e)),
            &format!(
                "set credentials=<service-account key file> on the {}, or run where Application Default Credentials \
                 are found",
                service.holder
            ),
        ));
    }
    if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted() {
        return Error::Unavailable(one_line(
            &format!("{provider} cannot be reached"),
            what,
            "",
            &root_cause(&e),
            "check the endpoint setting and the network",
        ));
    }
    let code = e.http_status_code().map(|c| format!("HTTP {c}")).unwrap_or_default();
    let m = one_line(provider, what, &code, &root_cause(&e), "");
    match e.http_status_code() {
        Some(404) => Error::NotFound(format!("{name}: not found in {provider}")),
        Some(429) => Error::Throttled(m),
        Some(c) if c >= 500 => Error::Unavailable(m),
        _ => Error::Failed(m),
    }
}

/// The size GCP takes of annotation keys and values together: less than
/// 16 KiB.
const MAX_ANNOTATION_BYTES: usize = 16 * 1024;

/// Refuses custom metadata GCP would refuse as annotations (the v1
/// reference's `Secret.annotations`): keys of 1-63 characters that begin and
/// end with `[a-zA-Z0-9]` and hold only those, `-`, `_` and `.`; keys and
/// values together less than 16 KiB.
fn check_annotations(name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
    let valid = |k: &str| {
        let b = k.as_bytes();
        (1..=63).contains(&b.len())
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    };
    if let Some(k) = tags.keys().find(|k| !valid(k)) {
        let shown: String = k.chars().take(64).collect();
        return Err(Error::InvalidArgument(format!(
            "{name}: {PROVIDER} takes no annotation key {shown:?}{}: keys are 1 to 63 of a-z, A-Z, 0-9, '-', '_' \
             and '.', beginning and ending with a letter or digit",
            if shown.len() < k.len() { "..." } else { "" }
        )));
    }
    let size: usize = tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size >= MAX_ANNOTATION_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{name}: the metadata is {size} bytes of keys and values; {PROVIDER} takes less than \
             {MAX_ANNOTATION_BYTES} (16 KiB) of annotations"
        )));
    }
    Ok(())
}

fn time(t: Option<&google_cloud_wkt::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(t.nanos()).ok()?))
}

fn last_segment(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_string()
}

/// A client builder of the google-cloud-rust family (every service's
/// `ClientBuilder` is this type with its own factory).
pub(crate) type Builder<F> =
    google_cloud_gax::client_builder::ClientBuilder<F, google_cloud_auth::credentials::Credentials>;

/// Sets up a client builder the way every GCP client here is built: the
/// ring rustls provider, a few quick retries of what AIP-194 says is safe
/// to retry, the `endpoint` override, and the credentials. `custom_endpoint`
/// is the endpoint when it is not one of Google's own hosts for the service:
/// a key file then signs tokens with that endpoint as their audience. No
/// call is made; a key file is read and checked.
pub(crate) fn configure<F>(
    service: &Service,
    mut b: Builder<F>,
    endpoint: Option<&str>,
    custom_endpoint: Option<&str>,
    credentials: &Credentials,
) -> Result<Builder<F>> {
    // The SDK's HTTPS client takes the process's rustls provider; make
    // it ring (as the rest of the gateway) unless one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
    // A few quick retries of what AIP-194 says is safe to retry; longer
    // waits are the caller's (the mount's rate limiter, the seal's unseal
    // loop) to decide.
    b = b.with_retry_policy(Aip194Strict.with_attempt_limit(3));
    if let Some(e) = endpoint {
        b = b.with_endpoint(e);
    }
    match credentials {
        Credentials::Default => {}
        Credentials::Anonymous => {
            b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        Credentials::KeyFile(path) => {
            use google_cloud_auth::credentials::service_account;
            let mut k = service_account::Builder::new(read_key(service.name, path)?);
            // A token for another host names that host: Google would
            // not take it.
            if let Some(e) = custom_endpoint {
                k = k.with_access_specifier(service_account::AccessSpecifier::from_audience(format!(
                    "{}/",
                    e.trim_end_matches('/')
                )));
            }
            // The builder's error may quote the key: say only which file.
            let creds = k
                .build()
                .map_err(|_| key_error(service.name, path, "the Google auth library does not take it as a key"))?;
            b = b.with_credentials(creds);
        }
    }
    Ok(b)
}

impl GcpStore {
    pub async fn new(settings: &Settings) -> Result<GcpStore> {
        let b = configure(
            &SECRET_MANAGER,
            SecretManagerService::builder(),
            settings.endpoint.as_deref(),
            settings.custom_endpoint(),
            &settings.credentials,
        )?;
        let client = b
            .build()
            .await
            .map_err(|e| Error::Unauthenticated(format!("{PROVIDER}: cannot set up the client: {e}")))?;
        Ok(GcpStore { client, project: settings.project.clone() })
    }

    fn secret(&self, name: &str) -> String {
        format!("projects/{}/secrets/{name}", self.project)
    }

    async fn add_version(&self, name: &str, value: &CloudValue) -> Result<VersionInfo> {
        let data: Vec<u8> = match value {
            CloudValue::String(s) => s.as_bytes().to_vec(),
            CloudValue::Binary(b) => b.to_vec(),
        };
        let data = Zeroizing::new(data);
        let v = self
            .client
            .add_secret_version()
            .set_parent(self.secret(name))
            .set_payload(
                model::SecretPayload::new()
                    .set_data(bytes::Bytes::copy_from_slice(&data))
                    .set_data_crc32c(i64::from(crc32c::crc32c(&data))),
            )
            .send()
            .await
            .map_err(|e| map(e, "AddSecretVersion", name))?;
        Ok(version_info(&v, &[]))
    }

    async fn create(&self, name: &str, tags: Option<&BTreeMap<String, String>>) -> Result<()> {
        let mut secret = model::Secret::new()
            .set_replication(model::Replication::new().set_automatic(model::replication::Automatic::new()));
        if let Some(t) = tags {
            secret = secret.set_annotations(t.clone());
        }
        self.client
            .create_secret()
            .set_parent(format!("projects/{}", self.project))
            .set_secret_id(name)
            .set_secret(secret)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map(e, "CreateSecret", name))
    }

    /// Creates the secret and its first version; if the version cannot be
    /// added, the empty secret is removed again.
    async fn create_with(
        &self,
        name: &str,
        value: &CloudValue,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        self.create(name, tags).await?;
        match self.add_version(name, value).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.client.delete_secret().set_name(self.secret(name)).send().await;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl SecretStore for GcpStore {
    fn cloud(&self) -> Cloud {
        Cloud::Gcp
    }

    async fn check(&self) -> Result<()> {
        self.client
            .list_secrets()
            .set_parent(format!("projects/{}", self.project))
            .set_page_size(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map(e, "ListSecrets", "health check"))
    }

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        let version = match at {
            Selector::Current => "latest".to_string(),
            Selector::Number(n) => n.to_string(),
            Selector::Version(v) | Selector::Stage(v) => v.clone(),
        };
        let r = self
            .client
            .access_secret_version()
            .set_name(format!("{}/versions/{version}", self.secret(name)))
            .send()
            .await
            .map_err(|e| match map(e, "AccessSecretVersion", name) {
                // AccessSecretVersion's FAILED_PRECONDITION means the version
                // is disabled or destroyed: not there to read, as on every
                // other backend.
                Error::Conflict(m) => Error::NotFound(m),
                e => e,
            })?;
        let payload = r.payload.unwrap_or_default();
        if let Some(sum) = payload.data_crc32c
            && sum != i64::from(crc32c::crc32c(&payload.data))
        {
            return Err(Error::Unavailable(format!(
                "{PROVIDER}: the payload of {name} does not match its CRC32C checksum (corrupted in transit); retry"
            )));
        }
        let data = payload.data.to_vec();
        let value = match String::from_utf8(data) {
            Ok(s) => CloudValue::String(Zeroizing::new(s)),
            Err(e) => CloudValue::Binary(Zeroizing::new(e.into_bytes())),
        };
        let stages = if matches!(at, Selector::Stage(_)) { vec![version] } else { Vec::new() };
        let id = last_segment(&r.name);
        Ok(SecretRead { version: VersionInfo { number: id.parse().ok(), id, stages, ..Default::default() }, value })
    }

    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        if let Some(t) = tags {
            check_annotations(name, t)?;
        }
        match pre {
            Precondition::Absent => self.create_with(name, value, tags).await.map_err(|e| match e {
                Error::AlreadyExists(_) => Error::cas_exists(name, None),
                e => e,
            }),
            Precondition::CurrentIs(_) | Precondition::CurrentNumber(_) => {
                let latest = self
                    .client
                    .get_secret_version()
                    .set_name(format!("{}/versions/latest", self.secret(name)))
                    .send()
                    .await
                    .map(|v| version_info(&v, &[]));
                let current = match latest.map_err(|e| map(e, "GetSecretVersion", name)) {
                    Ok(v) => Some(v),
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                pre.check(name, current.as_ref())?;
                self.add_version(name, value).await
            }
            Precondition::None => match self.add_version(name, value).await {
                Err(Error::NotFound(_)) => self.create_with(name, value, tags).await,
                other => other,
            },
        }
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        let s =
            self.client.get_secret().set_name(self.secret(name)).send().await.map_err(|e| map(e, "GetSecret", name))?;
        let mut versions = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .list_secret_versions()
                .set_parent(self.secret(name))
                .set_page_size(1000)
                .set_page_token(token)
                .send()
                .await
                .map_err(|e| map(e, "ListSecretVersions", name))?;
            let aliases: Vec<(String, String)> =
                s.version_aliases.iter().map(|(a, n)| (a.clone(), n.to_string())).collect();
            versions.extend(page.versions.iter().map(|v| version_info(v, &aliases)));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        versions.sort_by_key(|v| v.number.unwrap_or(0));
        Ok(SecretInfo {
            name: last_segment(&s.name),
            created: time(s.create_time.as_ref()),
            updated: versions.last().and_then(|v| v.created),
            tags: s.annotations.into_iter().collect(),
            deletion: None,
            versions,
        })
    }

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        let r = self
            .client
            .list_secrets()
            .set_parent(format!("projects/{}", self.project))
            .set_page_size(page_size.clamp(1, 25_000) as i32)
            .set_page_token(page_token.unwrap_or_default())
            .send()
            .await
            .map_err(|e| map(e, "ListSecrets", "list"))?;
        Ok(Page {
            items: r
                .secrets
                .into_iter()
                .map(|s| Listed {
                    marker: None,
                    name: last_segment(&s.name),
                    updated: time(s.create_time.as_ref()),
                    tags: s.annotations.into_iter().collect(),
                })
                .collect(),
            next: Some(r.next_page_token).filter(|t| !t.is_empty()),
        })
    }

    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        match how {
            Deletion::Recoverable { .. } => Err(Error::Unsupported {
                provider: PROVIDER,
                capability: "delete a secret recoverably (deletion is final)",
            }),
            Deletion::Purge => self
                .client
                .delete_secret()
                .set_name(self.secret(name))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| map(e, "DeleteSecret", name)),
        }
    }

    async fn restore(&self, _name: &str) -> Result<()> {
        Err(Error::Unsupported { provider: PROVIDER, capability: "restore a deleted secret" })
    }

    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        _number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        if let Some(t) = tags {
            check_annotations(name, t)?;
        }
        // GCP numbers versions itself.
        match self.add_version(name, value).await {
            Err(Error::NotFound(_)) => self.create_with(name, value, tags).await,
            other => other,
        }
    }

    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()> {
        let v = format!("{}/versions/{id}", self.secret(name));
        let r = match change {
            VersionChange::Disable => self.client.disable_secret_version().set_name(v).send().await,
            VersionChange::Enable => self.client.enable_secret_version().set_name(v).send().await,
            VersionChange::Destroy => self.client.destroy_secret_version().set_name(v).send().await,
        };
        r.map(|_| ()).map_err(|e| map(e, "DestroySecretVersion", name))
    }

    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        check_annotations(name, tags)?;
        self.client
            .update_secret()
            .set_secret(model::Secret::new().set_name(self.secret(name)).set_annotations(tags.clone()))
            .set_update_mask(google_cloud_wkt::FieldMask::default().set_paths(["annotations"]))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map(e, "UpdateSecret", name))
    }
}

fn version_info(v: &model::SecretVersion, aliases: &[(String, String)]) -> VersionInfo {
    let id = last_segment(&v.name);
    VersionInfo {
        number: id.parse().ok(),
        stages: aliases.iter().filter(|(_, n)| *n == id).map(|(a, _)| a.clone()).collect(),
        created: time(v.create_time.as_ref()),
        state: match v.state {
            model::secret_version::State::Disabled => VersionState::Disabled,
            model::secret_version::State::Destroyed => VersionState::Destroyed,
            _ => VersionState::Enabled,
        },
        expires: None,
        id,
    }
}
