//! The AWS Secrets Manager adapter.
//!
//! - The client is built once per mount from typed settings (region,
//!   endpoint override, explicit credentials or a profile; otherwise the
//!   SDK's standard credential chain), validated without IO.
//! - Reads always name a stage or a version id (AWSCURRENT by default).
//! - Every write carries a fresh `ClientRequestToken`, so the SDK's retries
//!   of that write are idempotent.
//! - Check-and-set against a version id reads the current version first:
//!   AWS offers no conditional write, so a writer outside Keybridge can race
//!   it (documented in the capability table).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use aws_sdk_secretsmanager::types::Tag;
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore,
    Selector, VersionInfo,
};
use zeroize::Zeroizing;

pub const CURRENT: &str = "AWSCURRENT";

/// A mount's settings: `region`, `endpoint_url`, `access_key_id` with
/// `secret_access_key` (and `session_token`), or `profile`.
#[derive(Clone, Default)]
pub struct Settings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    credentials: Option<(String, Zeroizing<String>, Option<Zeroizing<String>>)>,
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
        let region = get("region");
        if let Some(r) = &region
            && !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(Error::InvalidArgument(format!("region {r:?} is not an AWS region name such as us-east-1")));
        }
        let endpoint_url = keybridge_provider_api::settings::url(s, "endpoint_url")?;
        let credentials = match (get("access_key_id"), get("secret_access_key")) {
            (Some(id), Some(secret)) => Some((id, Zeroizing::new(secret), get("session_token").map(Zeroizing::new))),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "give both access_key_id and secret_access_key, or neither (the standard credential chain)".into(),
                ));
            }
        };
        if credentials.is_some() && get("profile").is_some() {
            return Err(Error::InvalidArgument("give explicit credentials or a profile, not both".into()));
        }
        Ok(Settings { region, endpoint_url, profile: get("profile"), credentials })
    }
}

pub struct AwsStore {
    client: Client,
}

impl AwsStore {
    /// Builds the SDK client (once per mount). Loading the credential chain
    /// may read files and environment, but makes no call to AWS.
    pub async fn new(settings: &Settings) -> AwsStore {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(r) = &settings.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(u) = &settings.endpoint_url {
            loader = loader.endpoint_url(u.clone());
        }
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        if let Some((id, secret, token)) = &settings.credentials {
            loader = loader.credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                id.clone(),
                secret.to_string(),
                token.as_ref().map(|t| t.to_string()),
                None,
                "keybridge-mount",
            ));
        }
        let config = loader.load().await;
        AwsStore { client: Client::new(&config) }
    }
}

fn time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

/// Maps an SDK error by its AWS error code, keeping AWS's message.
fn map<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: aws_sdk_secretsmanager::error::SdkError<E>,
    what: &str,
) -> Error {
    use aws_sdk_secretsmanager::error::SdkError;
    let msg = |m: Option<&str>, fallback: &str| format!("AWS Secrets Manager: {}", m.unwrap_or(fallback));
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            return Error::Unavailable(format!("AWS Secrets Manager cannot be reached ({what}): {e}"));
        }
        SdkError::ResponseError(_) => return Error::Unavailable(format!("AWS Secrets Manager ({what}): {e}")),
        _ => {}
    }
    let code = e.code().unwrap_or_default().to_string();
    let m = msg(e.message(), &e.to_string());
    match code.as_str() {
        "ResourceNotFoundException" => Error::NotFound(format!("{what}: not found in AWS Secrets Manager")),
        "ResourceExistsException" => Error::AlreadyExists(m),
        "InvalidParameterException" | "ValidationException" | "LimitExceededException" => Error::InvalidArgument(m),
        "InvalidRequestException" => Error::Conflict(m),
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => Error::Throttled(m),
        "AccessDeniedException" | "AccessDenied" => Error::PermissionDenied(m),
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch" => Error::Unauthenticated(m),
        "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => Error::Unavailable(m),
        _ => Error::Failed(m),
    }
}

fn stages_of(map: Option<&std::collections::HashMap<String, Vec<String>>>, id: &str) -> Vec<String> {
    map.and_then(|m| m.get(id)).cloned().unwrap_or_default()
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
        };
        let out = req.send().await.map_err(|e| map(e, name))?;
        let value = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => CloudValue::String(Zeroizing::new(s.to_string())),
            (None, Some(b)) => CloudValue::Binary(Zeroizing::new(b.as_ref().to_vec())),
            (None, None) => CloudValue::String(Zeroizing::new(String::new())),
        };
        Ok(SecretRead {
            version: VersionInfo {
                id: out.version_id().unwrap_or_default().to_string(),
                stages: out.version_stages().to_vec(),
                created: time(out.created_date()),
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
        let token = uuid::Uuid::new_v4().to_string();
        let create = || async {
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
            let out = req.send().await.map_err(|e| map(e, name))?;
            Ok::<_, Error>(VersionInfo {
                id: out.version_id().unwrap_or_default().to_string(),
                stages: vec![CURRENT.to_string()],
                created: Some(SystemTime::now()),
            })
        };
        let update = || async {
            let mut req = self.client.put_secret_value().secret_id(name).client_request_token(&token);
            req = match value {
                CloudValue::String(s) => req.secret_string(s.as_str()),
                CloudValue::Binary(b) => req.secret_binary(Blob::new(b.to_vec())),
            };
            let out = req.send().await.map_err(|e| map(e, name))?;
            Ok::<_, Error>(VersionInfo {
                id: out.version_id().unwrap_or_default().to_string(),
                stages: out.version_stages().to_vec(),
                created: Some(SystemTime::now()),
            })
        };
        match pre {
            Precondition::Absent => create().await.map_err(|e| match e {
                Error::AlreadyExists(_) => Error::Conflict(format!("{name} already exists")),
                e => e,
            }),
            Precondition::CurrentIs(expected) => {
                let info = self.describe(name).await?;
                let current = info.versions.iter().find(|v| v.stages.iter().any(|s| s == CURRENT));
                match current {
                    Some(v) if &v.id == expected => update().await,
                    Some(v) => Err(Error::Conflict(format!(
                        "check-and-set failed: the current version of {name} is {}, not {expected}",
                        v.id
                    ))),
                    None => Err(Error::Conflict(format!("check-and-set failed: {name} has no current version"))),
                }
            }
            Precondition::None => match update().await {
                Err(Error::NotFound(_)) => create().await,
                other => other,
            },
        }
    }

    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        let out = self.client.describe_secret().secret_id(name).send().await.map_err(|e| map(e, name))?;
        let stages = out.version_ids_to_stages();
        let mut versions: Vec<VersionInfo> = stages
            .map(|m| {
                m.keys()
                    .map(|id| VersionInfo { id: id.clone(), stages: stages_of(Some(m), id), created: None })
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(SecretInfo {
            name: out.name().unwrap_or(name).to_string(),
            created: time(out.created_date()),
            updated: time(out.last_changed_date()),
            tags: out
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                .collect(),
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
                    name: e.name().unwrap_or_default().to_string(),
                    updated: time(e.last_changed_date()),
                    tags: e
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                        .collect(),
                })
                .collect(),
            next: out.next_token().map(str::to_string),
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
}
