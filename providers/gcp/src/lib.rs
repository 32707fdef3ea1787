//! The GCP Secret Manager adapter.
//!
//! - The client is built once per mount: `project` (required), an
//!   `endpoint` override, and credentials from Application Default
//!   Credentials unless `credentials=anonymous` (emulators) is given.
//! - Versions are GCP's numbered versions; stages are GCP's aliases.
//! - Custom metadata lives in annotations (labels only take short
//!   lower-case values).
//! - Payloads carry CRC32C checksums both ways: `AddSecretVersion` sends
//!   `dataCrc32c` (GCP refuses a payload that does not match it), and an
//!   accessed payload whose checksum does not match is refused as corrupt
//!   in transit (retryable).
//! - GCP deletes a secret for good: there is no recoverable deletion and no
//!   restore; those answer `Unsupported`. Check-and-set reads the latest
//!   version first: GCP has no conditional `AddSecretVersion`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use google_cloud_secretmanager_v1::client::SecretManagerService;
use google_cloud_secretmanager_v1::model;
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore,
    Selector, VersionChange, VersionInfo, VersionState,
};
use zeroize::Zeroizing;

const PROVIDER: &str = "GCP Secret Manager";

#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub project: String,
    pub endpoint: Option<String>,
    pub anonymous: bool,
}

const KEYS: &[&str] = &["project", "endpoint", "credentials"];

impl Settings {
    /// Validates `key=value` settings without IO.
    pub fn parse(s: &BTreeMap<String, String>) -> Result<Settings> {
        keybridge_provider_api::settings::only(s, "gcp", KEYS)?;
        let project = s.get("project").map(|p| p.trim().to_string()).unwrap_or_default();
        let valid = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "project must be a GCP project id (6 to 30 of a-z, 0-9 and -, starting with a letter), not {project:?}"
            )));
        }
        let endpoint = keybridge_provider_api::settings::url(s, "endpoint")?;
        let anonymous = match s.get("credentials").map(String::as_str) {
            None | Some("") | Some("default") => false,
            Some("anonymous") => true,
            Some(o) => {
                return Err(Error::InvalidArgument(format!(
                    "credentials must be default (Application Default Credentials) or anonymous, not {o:?}"
                )));
            }
        };
        // Only `anonymous` is a choice of credentials here: Application
        // Default Credentials are the gateway's and go only to Google.
        keybridge_provider_api::endpoints::refuse_ambient(
            keybridge_provider_api::Cloud::Gcp,
            s,
            anonymous,
            "credentials=anonymous",
        )?;
        Ok(Settings { project, endpoint, anonymous })
    }
}

pub struct GcpStore {
    client: SecretManagerService,
    project: String,
}

/// Maps a client error by its gRPC/HTTP status to one line with a hint; the
/// whole error is logged at debug level only.
fn map(e: google_cloud_gax::error::Error, op: &str, name: &str) -> Error {
    use google_cloud_gax::error::rpc::Code;
    // The API operation and the name: `GetSecret app-db`.
    let what = &format!("{op} {name}");
    use keybridge_provider_api::messages::{one_line, root_cause};
    tracing::debug!(operation = what, error = ?e, "GCP call failed");
    if let Some(st) = e.status() {
        let code = format!("{:?}", st.code);
        let m = |hint: &str| one_line(PROVIDER, what, &code, &st.message, hint);
        return match st.code {
            Code::NotFound => Error::NotFound(format!("{name}: not found in {PROVIDER}")),
            Code::AlreadyExists => Error::AlreadyExists(m("")),
            Code::FailedPrecondition | Code::Aborted => Error::Conflict(m("")),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m("")),
            Code::PermissionDenied => Error::PermissionDenied(m(
                "give the mount's service account a Secret Manager role (roles/secretmanager.admin) on the project",
            )),
            Code::Unauthenticated => Error::Unauthenticated(m("check credentials_json (or the workload identity)")),
            Code::ResourceExhausted => Error::Throttled(m("")),
            Code::Unavailable | Code::DeadlineExceeded | Code::Internal => Error::Unavailable(m("")),
            _ => Error::Failed(m("")),
        };
    }
    if e.is_authentication() {
        return Error::Unauthenticated(one_line(
            PROVIDER,
            what,
            "NoCredentials",
            &format!("cannot get credentials: {}", root_cause(&e)),
            "set credentials_json on the mount, or run where Application Default Credentials are found",
        ));
    }
    if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted() {
        return Error::Unavailable(one_line(
            &format!("{PROVIDER} cannot be reached"),
            what,
            "",
            &root_cause(&e),
            "check endpoint_url and the network",
        ));
    }
    let code = e.http_status_code().map(|c| format!("HTTP {c}")).unwrap_or_default();
    let m = one_line(PROVIDER, what, &code, &root_cause(&e), "");
    match e.http_status_code() {
        Some(404) => Error::NotFound(format!("{name}: not found in {PROVIDER}")),
        Some(429) => Error::Throttled(m),
        Some(c) if c >= 500 => Error::Unavailable(m),
        _ => Error::Failed(m),
    }
}

fn time(t: Option<&google_cloud_wkt::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(t.nanos()).ok()?))
}

fn last_segment(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_string()
}

impl GcpStore {
    pub async fn new(settings: &Settings) -> Result<GcpStore> {
        // The SDK's HTTPS client takes the process's rustls provider; make
        // it ring (as the rest of the gateway) unless one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
        // A few quick retries of what AIP-194 says is safe to retry; longer
        // waits are the caller's (the mount's rate limiter) to decide.
        let mut b = SecretManagerService::builder().with_retry_policy(Aip194Strict.with_attempt_limit(3));
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e.clone());
        }
        if settings.anonymous {
            b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
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
