//! The cloud adapters compiled into this build (cargo features `aws`,
//! `gcp`, `azure`), offered to the core as its [`Providers`]: validate a
//! mount's adapter settings without IO, and build its client.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_core::backend::cloud::Providers;
use keybridge_provider_api::{Error, Result, SecretStore};

#[derive(Clone, Copy, Debug, Default)]
pub struct Built;

#[async_trait::async_trait]
impl Providers for Built {
    fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        if cfg!(feature = "aws") {
            k.push("aws");
        }
        if cfg!(feature = "azure") {
            k.push("azure");
        }
        if cfg!(feature = "gcp") {
            k.push("gcp");
        }
        k
    }

    fn validate(&self, kind: &str, settings: &BTreeMap<String, String>) -> Result<()> {
        // Built without any cloud, no arm reads the settings.
        let _ = settings;
        match kind {
            #[cfg(feature = "aws")]
            "aws" => keybridge_provider_aws::Settings::parse(settings).map(|_| ()),
            #[cfg(feature = "azure")]
            "azure" => keybridge_provider_azure::Settings::parse(settings).map(|_| ()),
            #[cfg(feature = "gcp")]
            "gcp" => keybridge_provider_gcp::Settings::parse(settings).map(|_| ()),
            other => Err(unbuilt(other)),
        }
    }

    async fn open(&self, kind: &str, settings: &BTreeMap<String, String>) -> Result<Arc<dyn SecretStore>> {
        let _ = settings;
        match kind {
            #[cfg(feature = "aws")]
            "aws" => {
                let s = keybridge_provider_aws::Settings::parse(settings)?;
                Ok(Arc::new(keybridge_provider_aws::AwsStore::new(&s).await))
            }
            #[cfg(feature = "azure")]
            "azure" => {
                let s = keybridge_provider_azure::Settings::parse(settings)?;
                Ok(Arc::new(keybridge_provider_azure::AzureStore::new(&s)?))
            }
            #[cfg(feature = "gcp")]
            "gcp" => {
                let s = keybridge_provider_gcp::Settings::parse(settings)?;
                Ok(Arc::new(keybridge_provider_gcp::GcpStore::new(&s).await?))
            }
            other => Err(unbuilt(other)),
        }
    }
}

fn unbuilt(kind: &str) -> Error {
    Error::InvalidArgument(format!("this build has no {kind} provider"))
}

/// Auto-unseal: the key service a `seal "<type>"` block names.
pub mod seals {
    use super::*;
    use keybridge_provider_api::KeyService;

    /// Validates a seal block's settings without IO.
    pub fn validate(kind: &str, settings: &BTreeMap<String, String>) -> Result<()> {
        let _ = settings;
        match kind {
            #[cfg(feature = "aws")]
            "awskms" => keybridge_provider_aws::kms::KmsSettings::parse(settings).map(|_| ()),
            #[cfg(feature = "gcp")]
            "gcpckms" => keybridge_provider_gcp::kms::GcpKms::parse(settings).map(|_| ()),
            #[cfg(feature = "azure")]
            "azurekeyvault" => keybridge_provider_azure::kms::SealConfig::parse(settings).map(|_| ()),
            other => Err(unbuilt_seal(other)),
        }
    }

    /// Builds the seal's client; makes no call to the key service.
    pub async fn open(kind: &str, settings: &BTreeMap<String, String>) -> Result<Arc<dyn KeyService>> {
        let _ = settings;
        match kind {
            #[cfg(feature = "aws")]
            "awskms" => {
                let s = keybridge_provider_aws::kms::KmsSettings::parse(settings)?;
                Ok(Arc::new(keybridge_provider_aws::kms::AwsKms::new(&s).await))
            }
            #[cfg(feature = "azure")]
            "azurekeyvault" => Ok(Arc::new(keybridge_provider_azure::kms::AzureKeyVaultSeal::from_settings(settings)?)),
            #[cfg(feature = "gcp")]
            "gcpckms" => {
                let s = keybridge_provider_gcp::kms::GcpKms::parse(settings)?;
                Ok(Arc::new(keybridge_provider_gcp::kms::GcpKms::new(&s).await?))
            }
            other => Err(unbuilt_seal(other)),
        }
    }

    fn unbuilt_seal(kind: &str) -> Error {
        Error::InvalidArgument(format!("this build has no {kind} seal (its cloud's cargo feature is off)"))
    }
}
