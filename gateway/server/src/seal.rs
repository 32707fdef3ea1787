//! Auto-unseal: the configuration's `seal` blocks as the barrier's seals,
//! and the task that unseals the node with its key service at start, and
//! again whenever it finds itself sealed (another node's rekey or seal
//! migration), retrying with backoff while the service does not answer.

use std::sync::Arc;
use std::time::Duration;

use keybridge_barrier::{AutoSeal, SealError, Seals};
use keybridge_core::Core;
use keybridge_provider_api::{Error as ProviderError, KeyService};
use zeroize::Zeroizing;

use crate::config::SealBlock;
use crate::error::Error;

/// A cloud key service as the barrier's seal.
struct Adapter(Arc<dyn KeyService>);

fn failed(e: ProviderError) -> SealError {
    SealError {
        retryable: matches!(e, ProviderError::Unavailable(_) | ProviderError::Throttled(_)),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl AutoSeal for Adapter {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn key_id(&self) -> String {
        self.0.key_id()
    }
    async fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0.encrypt(plaintext).await.map_err(failed)
    }
    async fn unwrap(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.0.decrypt(blob).await.map_err(failed)
    }
}

/// The seals the configuration names, validated and built (no call to any
/// key service yet).
pub async fn build(blocks: &[SealBlock]) -> Result<Seals, Error> {
    let mut seals = Seals::default();
    for b in blocks {
        let bad = |e: ProviderError| Error::Usage(format!("seal \"{}\": {e}", b.kind));
        for key in ["endpoint", "vault_url"] {
            if let Some(url) = b.settings.get(key)
                && !plaintext_allowed(url)
            {
                return Err(Error::Usage(format!(
                    "seal \"{}\": {key} {url:?} is plain http to a host other than this one's loopback: the root key would cross the network in the clear; use https",
                    b.kind
                )));
            }
        }
        keybridge_providers::seals::validate(&b.kind, &b.settings).map_err(bad)?;
        let service = keybridge_providers::seals::open(&b.kind, &b.settings).await.map_err(bad)?;
        let seal: Arc<dyn AutoSeal> = Arc::new(Adapter(service));
        if b.disabled {
            seals.previous = Some(seal);
        } else {
            seals.current = Some(seal);
        }
    }
    Ok(seals)
}

/// Whether a key service URL may carry the root key: https, or plain
/// http to a loopback address (a local emulator or proxy).
fn plaintext_allowed(url: &str) -> bool {
    let Some(rest) = url.trim().strip_prefix("http://") else { return true };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a sealed node that has nothing to try looks again (a pending
/// migration made by another node, a store initialized elsewhere), and how
/// often an unsealed one checks it still is.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// Keeps the node unsealed with its auto seal; `changed` runs after every
/// change of the seal state this task sees (the health service follows).
pub async fn keep_unsealed<F, Fut>(core: Arc<Core>, changed: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut was_sealed: Option<bool> = None;
    loop {
        let mut wait = LOOK_AGAIN;
        match core.auto_unseal().await {
            Ok(true) => {
                tracing::info!("unsealed with the auto seal");
                backoff = FIRST_BACKOFF;
            }
            Ok(false) => backoff = FIRST_BACKOFF,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "auto-unseal failed; the node stays sealed");
                wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        let sealed = !core.is_unsealed();
        if was_sealed != Some(sealed) {
            was_sealed = Some(sealed);
            changed().await;
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_key_crosses_the_network_only_over_https() {
        for ok in ["https://kms.example", "http://127.0.0.1:5000", "http://localhost:9/x", "http://[::1]:80"] {
            assert!(super::plaintext_allowed(ok), "{ok}");
        }
        for bad in ["http://kms.internal", "http://10.0.0.1:80", "http://127.0.0.1.example.com/", "http://[fe80::1]/"] {
            assert!(!super::plaintext_allowed(bad), "{bad}");
        }
    }
}
