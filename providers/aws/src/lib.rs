//! The AWS Secrets Manager adapter.
//!
//! - The client is built once per mount from typed settings (region,
//!   endpoint override, explicit credentials or a profile; otherwise the
//!   SDK's standard credential chain), validated without IO.
//! - Reads always name a stage or a version id (AWSCURRENT by default).
//! - Every write carries a fresh `ClientRequestToken`, so the SDK's retries
//!   of that write are idempotent.
//! - Version numbers: AWS version ids are opaque, so the version id of
//!   every version Keybridge writes carries its number: the write's
//!   `ClientRequestToken` (which becomes the version id) is
//!   `kbv<number>-<32 hex>`. The next number is one more than the highest
//!   among the secret's versions (deprecated ones included). Versions
//!   written by other tools have no number and are read by id or stage.
//! - Check-and-set reads the versions first: AWS offers no conditional
//!   write, so a writer outside Keybridge can race it (documented in the
//!   capability table).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use aws_sdk_secretsmanager::types::Tag;
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore,
    Selector, VersionChange, VersionInfo,
};
use zeroize::Zeroizing;

pub mod kms;

pub const CURRENT: &str = "AWSCURRENT";
pub const PENDING: &str = "AWSPENDING";
pub const PREVIOUS: &str = "AWSPREVIOUS";

/// A mount's settings: `region`, `endpoint_url`, `access_key_id` with
/// `secret_access_key` (and `session_token`), or `profile`.
#[derive(Clone, Default)]
pub struct Settings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    credentials: Option<ExplicitCredentials>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("profile", &self.profile)
            .field("credentials", &self.credentials.as_ref().map(|_| "<explicit>"))
            .finish()
    }
}

const KEYS: &[&str] = &["region", "endpoint_url", "profile", "access_key_id", "secret_access_key", "session_token"];

impl Settings {
    /// Validates `key=value` settings without IO.
    pub fn parse(s: &BTreeMap<String, String>) -> Result<Settings> {
        keybridge_provider_api::settings::only(s, "aws", KEYS)?;
        let get = |k: &str| s.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let region = region(get("region"))?;
        let endpoint_url = keybridge_provider_api::settings::url(s, "endpoint_url")?;
        let credentials = credentials(&get, ("access_key_id", "secret_access_key"))?;
        keybridge_provider_api::endpoints::refuse_ambient(
            keybridge_provider_api::Cloud::Aws,
            s,
            credentials.is_some(),
            "access_key_id and secret_access_key",
        )?;
        Ok(Settings { region, endpoint_url, profile: get("profile"), credentials })
    }
}

/// A region setting, checked to be a region's name.
pub(crate) fn region(r: Option<String>) -> Result<Option<String>> {
    if let Some(r) = &r
        && !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(Error::InvalidArgument(format!("region {r:?} is not an AWS region name such as us-east-1")));
    }
    Ok(r)
}

/// Explicit credentials (`keys`: the id's and the secret's setting names,
/// with `session_token`), or none for the standard chain; never with a
/// `profile` too.
pub(crate) type ExplicitCredentials = (String, Zeroizing<String>, Option<Zeroizing<String>>);

/// Explicit credentials as the SDK takes them (`source` names them in its
/// logs).
pub(crate) fn sdk_credentials(
    c: Option<&ExplicitCredentials>,
    source: &'static str,
) -> Option<aws_credential_types::Credentials> {
    c.map(|(id, secret, token)| {
        aws_credential_types::Credentials::new(
            id.clone(),
            secret.to_string(),
            token.as_ref().map(|t| t.to_string()),
            None,
            source,
        )
    })
}

pub(crate) fn credentials(
    get: &dyn Fn(&str) -> Option<String>,
    (id_key, secret_key): (&str, &str),
) -> Result<Option<ExplicitCredentials>> {
    let credentials = match (get(id_key), get(secret_key)) {
        (Some(id), Some(secret)) => Some((id, Zeroizing::new(secret), get("session_token").map(Zeroizing::new))),
        (None, None) => None,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "give both {id_key} and {secret_key}, or neither (the standard credential chain)"
            )));
        }
    };
    if credentials.is_some() && get("profile").is_some() {
        return Err(Error::InvalidArgument("give explicit credentials or a profile, not both".into()));
    }
    Ok(credentials)
}

pub struct AwsStore {
    client: Client,
}

impl AwsStore {
    /// Builds the SDK client (once per mount). Loading the credential chain
    /// may read files and environment, but makes no call to AWS.
    pub async fn new(settings: &Settings) -> AwsStore {
        let creds = sdk_credentials(settings.credentials.as_ref(), "keybridge-mount");
        let config = sdk_config(
            settings.region.as_deref(),
            settings.endpoint_url.as_deref(),
            settings.profile.as_deref(),
            creds,
        )
        .await;
        AwsStore { client: Client::new(&config) }
    }
}

impl AwsStore {
    /// The SDK client (for benchmarks comparing against direct SDK calls).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The SDK's configuration: rustls on ring, and the region, endpoint,
/// profile and credentials given (the standard chain for those not given).
/// Reads files and environment; makes no call to AWS.
pub(crate) async fn sdk_config(
    region: Option<&str>,
    endpoint: Option<&str>,
    profile: Option<&str>,
    credentials: Option<aws_credential_types::Credentials>,
) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    if let Some(u) = endpoint {
        loader = loader.endpoint_url(u);
    }
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(c) = credentials {
        loader = loader.credentials_provider(c);
    }
    loader.load().await
}

/// AWS tags as a map.
fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect()
}

fn time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

/// Maps an SDK error by its AWS error code to one line: the operation,
/// AWS's code and message, and a hint. The SDK's whole chain is logged at
/// debug level only.
fn map<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: aws_sdk_secretsmanager::error::SdkError<E>,
    what: &str,
) -> Error {
    use aws_sdk_secretsmanager::error::SdkError;
    use keybridge_provider_api::messages::{one_line, root_cause};
    // The API operation, from the error's type: `GetSecretValueError` -> `GetSecretValue`.
    let op = std::any::type_name::<E>().rsplit("::").next().unwrap_or_default().trim_end_matches("Error");
    let what = &if op.is_empty() { what.to_string() } else { format!("{op} {what}") };
    tracing::debug!(operation = what, error = %aws_sdk_secretsmanager::error::DisplayErrorContext(&e), "AWS call failed");
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            if no_credentials(&e) {
                return Error::Unauthenticated(one_line(
                    PROVIDER,
                    what,
                    "NoCredentials",
                    "no credentials found",
                    "set access_key_id and secret_access_key on the mount, or run where the SDK's default \
                     chain finds them (environment, profile, web identity, ECS, EC2 metadata)",
                ));
            }
            let why = if matches!(e, SdkError::TimeoutError(_)) { "timed out".to_string() } else { root_cause(&e) };
            return Error::Unavailable(one_line(
                &format!("{PROVIDER} cannot be reached"),
                what,
                "",
                &why,
                "check region, endpoint_url and the network",
            ));
        }
        SdkError::ResponseError(_) => {
            return Error::Unavailable(one_line(
                PROVIDER,
                what,
                "",
                &root_cause(&e),
                "an answer AWS's SDK could not read",
            ));
        }
        _ => {}
    }
    let code = e.code().unwrap_or_default().to_string();
    let message = e.message().map(str::to_string).unwrap_or_else(|| root_cause(&e));
    let name = what.split_once(' ').map_or(what.as_str(), |(_, n)| n);
    let m = |hint: &str| one_line(PROVIDER, what, &code, &message, hint);
    match code.as_str() {
        "ResourceNotFoundException" => Error::NotFound(format!("{name}: not found in {PROVIDER}")),
        "ResourceExistsException" => Error::AlreadyExists(m("")),
        "InvalidParameterException" | "ValidationException" | "LimitExceededException" => Error::InvalidArgument(m("")),
        "InvalidRequestException" => Error::Conflict(m("")),
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => Error::Throttled(m("")),
        "AccessDeniedException" | "AccessDenied" => {
            Error::PermissionDenied(m("the mount's AWS identity lacks this permission in IAM"))
        }
        "ExpiredTokenException" => Error::Unauthenticated(m("the session token expired: renew session_token")),
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch" => Error::Unauthenticated(m("check access_key_id and secret_access_key")),
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => Error::Unavailable(m("")),
        _ => Error::Failed(m("")),
    }
}

/// Whether the call failed because no credentials could be loaded.
pub(crate) fn no_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<aws_credential_types::provider::error::CredentialsError>().is_some() {
            return true;
        }
        cur = c.source();
    }
    false
}

#[async_trait::async_trait]
impl SecretStore for AwsStore {
    fn cloud(&self) -> Cloud {
        Cloud::Aws
    }

    async fn check(&self) -> Result<()> {
        self.client.list_secrets().max_results(1).send().await.map(|_| ()).map_err(|e| map(e, "health check"))
    }

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        let req = self.client.get_secret_value().secret_id(name);
        let req = match at {
            Selector::Current => req.version_stage(CURRENT),
            Selector::Stage(s) => req.version_stage(s),
            Selector::Version(v) => req.version_id(v),
            Selector::Number(n) => {
                let versions = self.versions(name).await?;
                match versions.iter().find(|v| v.number == Some(*n)) {
                    Some(v) => req.version_id(&v.id),
                    None => return Err(Error::NotFound(format!("{name}: version {n} not found in {PROVIDER}"))),
                }
            }
        };
        let out = req.send().await.map_err(|e| match map(e, name) {
            // GetSecretValue's InvalidRequestException means the secret is
            // in its recovery window: not there to read, as on every other
            // backend (restore it first).
            Error::Conflict(m) => Error::NotFound(m),
            e => e,
        })?;
        let value = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => CloudValue::String(Zeroizing::new(s.to_string())),
            (None, Some(b)) => CloudValue::Binary(Zeroizing::new(b.as_ref().to_vec())),
            (None, None) => CloudValue::String(Zeroizing::new(String::new())),
        };
        Ok(SecretRead {
            version: VersionInfo {
                id: out.version_id().unwrap_or_default().to_string(),
                number: number_of(out.version_id().unwrap_or_default()),
                stages: out.version_stages().to_vec(),
                created: time(out.created_date()),
                ..Default::default()
            },
            value,
        })
    }

    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        let create = || async {
            let token = token_for(1);
            let mut req = self.client.create_secret().name(name).client_request_token(&token);
            req = match value {
                CloudValue::String(s) => req.secret_string(s.as_str()),
                CloudValue::Binary(b) => req.secret_binary(Blob::new(b.to_vec())),
            };
            if let Some(tags) = tags {
                for (k, v) in tags {
                    req = req.tags(Tag::builder().key(k).value(v).build());
                }
            }
            let out = req.send().await.map_err(|e| match map(e, name) {
                Error::AlreadyExists(_) => Error::cas_exists(name, None),
                e => e,
            })?;
            let id = out.version_id().unwrap_or(&token).to_string();
            Ok::<_, Error>(VersionInfo {
                number: number_of(&id),
                id,
                stages: vec![CURRENT.to_string()],
                created: Some(SystemTime::now()),
                ..Default::default()
            })
        };
        if *pre == Precondition::Absent {
            // CreateSecret refuses a name that is taken: exact, not read-then-write.
            return create().await;
        }
        // DescribeSecret tells a missing secret apart reliably (moto answers
        // ListSecretVersionIds on a missing secret with a 500).
        match self.client.describe_secret().secret_id(name).send().await.map_err(|e| map(e, name)) {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                pre.check(name, None)?;
                return create().await;
            }
            Err(e) => return Err(e),
        }
        let versions = self.versions(name).await?;
        pre.check(name, versions.iter().find(|v| v.stages.iter().any(|s| s == CURRENT)))?;
        let next = keybridge_provider_api::store::next_number(name, versions.iter().filter_map(|v| v.number))?;
        self.put_value(name, &token_for(next), value, None).await
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        let out = self.client.describe_secret().secret_id(name).send().await.map_err(|e| map(e, name))?;
        let versions = self.versions(name).await?;
        Ok(SecretInfo {
            name: out.name().unwrap_or(name).to_string(),
            created: time(out.created_date()),
            updated: time(out.last_changed_date()),
            tags: tags_of(out.tags()),
            deletion: time(out.deleted_date()),
            versions,
        })
    }

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        let out = self
            .client
            .list_secrets()
            .max_results(page_size.clamp(1, 100) as i32)
            .set_next_token(page_token.map(str::to_string))
            .send()
            .await
            .map_err(|e| map(e, "list"))?;
        Ok(Page {
            items: out
                .secret_list()
                .iter()
                .map(|e| Listed {
                    marker: e.secret_versions_to_stages().and_then(|m| {
                        m.iter().find(|(_, st)| st.iter().any(|s| s == CURRENT)).map(|(id, _)| id.clone())
                    }),
                    name: e.name().unwrap_or_default().to_string(),
                    updated: time(e.last_changed_date()),
                    tags: tags_of(e.tags()),
                })
                .collect(),
            next: out.next_token().filter(|t| !t.is_empty()).map(str::to_string),
        })
    }

    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        let req = self.client.delete_secret().secret_id(name);
        let req = match how {
            Deletion::Recoverable { days } => {
                if !(7..=30).contains(&days) {
                    return Err(Error::InvalidArgument(format!(
                        "AWS keeps a deleted secret for 7 to 30 days; {days} is outside that"
                    )));
                }
                req.recovery_window_in_days(days as i64)
            }
            Deletion::Purge => req.force_delete_without_recovery(true),
        };
        req.send().await.map(|_| ()).map_err(|e| map(e, name))
    }

    async fn restore(&self, name: &str) -> Result<()> {
        self.client.restore_secret().secret_id(name).send().await.map(|_| ()).map_err(|e| map(e, name))
    }

    async fn change_version(&self, _name: &str, _id: &str, change: VersionChange) -> Result<()> {
        Err(Error::Unsupported {
            provider: PROVIDER,
            capability: match change {
                VersionChange::Disable | VersionChange::Enable => {
                    "soft-delete or undelete single versions (delete the whole secret with a recovery window instead)"
                }
                VersionChange::Destroy => "destroy single versions (AWS removes versions without a stage itself)",
            },
        })
    }

    fn marker(&self, v: &VersionInfo) -> Option<String> {
        Some(v.id.clone())
    }

    async fn head(&self, name: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        let out = match self.client.describe_secret().secret_id(name).send().await.map_err(|e| map(e, name)) {
            Ok(o) => o,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if out.deleted_date().is_some() {
            return Ok(None);
        }
        let cur = out
            .version_ids_to_stages()
            .and_then(|m| m.iter().find(|(_, st)| st.iter().any(|s| s == CURRENT)))
            .map(|(id, st)| VersionInfo {
                number: number_of(id),
                id: id.clone(),
                stages: st.clone(),
                ..Default::default()
            })
            .unwrap_or_default();
        let tags = tags_of(out.tags());
        Ok(Some((cur, tags)))
    }

    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        match self.put_value(name, &token_for(number.max(1)), value, None).await {
            Err(Error::NotFound(_)) => self.put(name, value, &Precondition::Absent, tags).await,
            other => other,
        }
    }

    async fn stage(&self, name: &str, value: &CloudValue, key: &str) -> Result<VersionInfo> {
        let versions = self.versions(name).await?;
        let suffix = format!("-{key}");
        if let Some(v) = versions.iter().find(|v| v.id.ends_with(&suffix)) {
            return Ok(v.clone());
        }
        let next = keybridge_provider_api::store::next_number(name, versions.iter().filter_map(|v| v.number))?;
        self.put_value(name, &format!("kbv{next}{suffix}"), value, Some(PENDING)).await
    }

    async fn promote(&self, name: &str, id: &str) -> Result<()> {
        let versions = self.versions(name).await?;
        let has = |v: &VersionInfo, stage: &str| v.stages.iter().any(|s| s == stage);
        let current = versions.iter().find(|v| has(v, CURRENT));
        if current.map(|c| c.id.as_str()) != Some(id) {
            self.client
                .update_secret_version_stage()
                .secret_id(name)
                .version_stage(CURRENT)
                .move_to_version_id(id)
                .set_remove_from_version_id(current.map(|c| c.id.clone()))
                .send()
                .await
                .map_err(|e| map(e, name))?;
        }
        if versions.iter().any(|v| v.id == id && has(v, PENDING)) {
            self.unstage(name, id).await?;
        }
        Ok(())
    }

    async fn unstage(&self, name: &str, id: &str) -> Result<()> {
        self.client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(PENDING)
            .remove_from_version_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map(e, name))
    }

    async fn retire(&self, name: &str, id: &str) -> Result<()> {
        let versions = self.versions(name).await?;
        if !versions.iter().any(|v| v.id == id && v.stages.iter().any(|s| s == PREVIOUS)) {
            return Ok(());
        }
        self.client
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(PREVIOUS)
            .remove_from_version_id(id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| map(e, name))
    }

    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        let out = self.client.describe_secret().secret_id(name).send().await.map_err(|e| map(e, name))?;
        let gone: Vec<String> =
            out.tags().iter().filter_map(|t| t.key()).filter(|k| !tags.contains_key(*k)).map(str::to_string).collect();
        if !gone.is_empty() {
            self.client
                .untag_resource()
                .secret_id(name)
                .set_tag_keys(Some(gone))
                .send()
                .await
                .map_err(|e| map(e, name))?;
        }
        if !tags.is_empty() {
            let mut req = self.client.tag_resource().secret_id(name);
            for (k, v) in tags {
                req = req.tags(Tag::builder().key(k).value(v).build());
            }
            req.send().await.map_err(|e| map(e, name))?;
        }
        Ok(())
    }
}

const PROVIDER: &str = "AWS Secrets Manager";

/// The client request token (and so the version id) of version `n`.
fn token_for(n: u64) -> String {
    format!("kbv{n}-{}", uuid::Uuid::new_v4().simple())
}

/// The Keybridge number in a version id `token_for` made.
pub fn number_of(id: &str) -> Option<u64> {
    let (n, rest) = id.strip_prefix("kbv")?.split_once('-')?;
    (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| n.parse().ok())
        .flatten()
        .filter(|n| *n > 0)
}

impl AwsStore {
    /// `PutSecretValue` with `token` as the new version's id, labelled
    /// `stage` instead of AWSCURRENT when given.
    async fn put_value(&self, name: &str, token: &str, value: &CloudValue, stage: Option<&str>) -> Result<VersionInfo> {
        let mut req = self
            .client
            .put_secret_value()
            .secret_id(name)
            .client_request_token(token)
            .set_version_stages(stage.map(|s| vec![s.to_string()]));
        req = match value {
            CloudValue::String(s) => req.secret_string(s.as_str()),
            CloudValue::Binary(b) => req.secret_binary(Blob::new(b.to_vec())),
        };
        let out = req.send().await.map_err(|e| map(e, name))?;
        let id = out.version_id().unwrap_or(token).to_string();
        Ok(VersionInfo {
            number: number_of(&id),
            id,
            stages: stage.map_or_else(|| out.version_stages().to_vec(), |s| vec![s.to_string()]),
            created: Some(SystemTime::now()),
            ..Default::default()
        })
    }

    /// Every version AWS still keeps, deprecated ones included, oldest first.
    async fn versions(&self, name: &str) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_secret_version_ids()
                .secret_id(name)
                .include_deprecated(true)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| map(e, name))?;
            for v in page.versions() {
                let id = v.version_id().unwrap_or_default().to_string();
                out.push(VersionInfo {
                    number: number_of(&id),
                    id,
                    stages: v.version_stages().to_vec(),
                    created: time(v.created_date()),
                    ..Default::default()
                });
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort_by_key(|v| (v.created, v.number));
        Ok(out)
    }
}
