//! Auto-unseal with AWS KMS: `seal "awskms" { ... }` in the server's
//! configuration, with Vault's settings: `kms_key_id` (a key id, key ARN,
//! alias name or alias ARN), `region`, `endpoint`, and `access_key` with
//! `secret_key` (and `session_token`) or a `profile`; without them, the
//! SDK's standard credential chain. The root key is encrypted with
//! `Encrypt` under an encryption context that names its use, so a blob
//! made for anything else does not decrypt as a root key.

use std::collections::BTreeMap;

use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use keybridge_provider_api::messages::{one_line, root_cause};
use keybridge_provider_api::{Error, KeyService, Result};
use zeroize::Zeroizing;

const SERVICE: &str = "AWS KMS";
const CONTEXT: (&str, &str) = ("keybridge-use", "barrier-root-key");
const KEYS: &[&str] = &["kms_key_id", "region", "endpoint", "access_key", "secret_key", "session_token", "profile"];

/// The `awskms` seal block's settings, validated without IO.
#[derive(Clone)]
pub struct KmsSettings {
    pub kms_key_id: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
    credentials: Option<crate::ExplicitCredentials>,
}

impl std::fmt::Debug for KmsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSettings")
            .field("kms_key_id", &self.kms_key_id)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("credentials", &self.credentials.as_ref().map(|_| "<explicit>"))
            .finish()
    }
}

impl KmsSettings {
    pub fn parse(s: &BTreeMap<String, String>) -> Result<KmsSettings> {
        keybridge_provider_api::settings::only(s, "awskms seal", KEYS)?;
        let get = |k: &str| s.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let kms_key_id = get("kms_key_id").ok_or_else(|| {
            Error::InvalidArgument(
                "the awskms seal needs kms_key_id: a key id, key ARN, alias name (alias/...) or alias ARN".into(),
            )
        })?;
        if kms_key_id.len() > 2048 || kms_key_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidArgument(format!("kms_key_id {kms_key_id:?} is not a KMS key id, ARN or alias")));
        }
        let region = crate::region(get("region"))?;
        let endpoint = keybridge_provider_api::settings::url(s, "endpoint")?;
        let credentials = crate::credentials(&get, ("access_key", "secret_key"))?;
        Ok(KmsSettings { kms_key_id, region, endpoint, profile: get("profile"), credentials })
    }
}

/// One KMS key that encrypts the barrier's root key.
pub struct AwsKms {
    client: Client,
    key_id: String,
}

impl AwsKms {
    /// Builds the client; makes no call to AWS.
    pub async fn new(settings: &KmsSettings) -> AwsKms {
        let creds = crate::sdk_credentials(settings.credentials.as_ref(), "keybridge-seal");
        let config = crate::sdk_config(
            settings.region.as_deref(),
            settings.endpoint.as_deref(),
            settings.profile.as_deref(),
            creds,
        )
        .await;
        // Bounded calls: a key service that accepts connections but does not
        // answer must fail the unseal attempt (retried with backoff), not
        // hang it. The SDK's standard retries run inside these bounds.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .operation_attempt_timeout(std::time::Duration::from_secs(5))
            .operation_timeout(std::time::Duration::from_secs(12))
            .build();
        let kms = aws_sdk_kms::config::Builder::from(&config).timeout_config(timeouts).build();
        AwsKms { client: Client::from_conf(kms), key_id: settings.kms_key_id.clone() }
    }
}

#[async_trait::async_trait]
impl KeyService for AwsKms {
    fn kind(&self) -> &'static str {
        "awskms"
    }

    fn key_id(&self) -> String {
        self.key_id.clone()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(plaintext))
            .encryption_context(CONTEXT.0, CONTEXT.1)
            .send()
            .await
            .map_err(|e| map(e, "Encrypt", &self.key_id))?;
        out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| {
            Error::Unavailable(format!("{SERVICE} Encrypt with key {} answered without a ciphertext", self.key_id))
        })
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .encryption_context(CONTEXT.0, CONTEXT.1)
            .send()
            .await
            .map_err(|e| map(e, "Decrypt", &self.key_id))?;
        out.plaintext.map(|b| Zeroizing::new(b.into_inner())).ok_or_else(|| {
            Error::Unavailable(format!("{SERVICE} Decrypt with key {} answered without a plaintext", self.key_id))
        })
    }
}

/// One line per failure: the operation, AWS's code and message, a hint.
fn map<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E>,
    op: &str,
    key: &str,
) -> Error {
    tracing::debug!(operation = op, error = %aws_sdk_kms::error::DisplayErrorContext(&e), "AWS KMS call failed");
    let what = format!("{op} with key {key}");
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            if crate::no_credentials(&e) {
                return Error::Unauthenticated(one_line(
                    SERVICE,
                    &what,
                    "NoCredentials",
                    "no credentials found",
                    "set access_key and secret_key in the seal block, or run where the SDK's default chain finds them",
                ));
            }
            let why = if matches!(e, SdkError::TimeoutError(_)) { "timed out".to_string() } else { root_cause(&e) };
            return Error::Unavailable(one_line(
                &format!("{SERVICE} cannot be reached"),
                &what,
                "",
                &why,
                "check region, endpoint and the network",
            ));
        }
        SdkError::ResponseError(_) => {
            return Error::Unavailable(one_line(
                SERVICE,
                &what,
                "",
                &root_cause(&e),
                "an answer the SDK could not read",
            ));
        }
        _ => {}
    }
    let code = e.code().unwrap_or_default().to_string();
    let message = e.message().map(str::to_string).unwrap_or_else(|| root_cause(&e));
    let m = |hint: &str| one_line(SERVICE, &what, &code, &message, hint);
    match code.as_str() {
        "NotFoundException" => Error::NotFound(m("check kms_key_id and region")),
        "DisabledException" | "KMSInvalidStateException" => {
            Error::PermissionDenied(m("the key is disabled or pending deletion: enable it"))
        }
        "InvalidCiphertextException" | "IncorrectKeyException" | "InvalidKeyUsageException" => {
            Error::InvalidArgument(m("the stored root key was not encrypted by this key"))
        }
        "AccessDeniedException" => {
            Error::PermissionDenied(m("the seal's AWS identity needs kms:Encrypt and kms:Decrypt on the key"))
        }
        "UnrecognizedClientException" | "InvalidSignatureException" | "InvalidClientTokenId" => {
            Error::Unauthenticated(m("check access_key and secret_key"))
        }
        "ExpiredTokenException" => Error::Unauthenticated(m("the session token expired")),
        "ThrottlingException" | "LimitExceededException" => Error::Throttled(m("")),
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "InternalFailure"
        | "ServiceUnavailable" => Error::Unavailable(m("")),
        _ => Error::Failed(m("")),
    }
}
