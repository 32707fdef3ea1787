//! The provider's connection to a Keybridge gateway: its public gRPC API,
//! nothing else.

use std::time::Duration;

use keybridge_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::diag::Diags;

/// Per-call deadline; the gateway's own limit is 60 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Gateway {
    channel: Channel,
    token: MetadataValue<Ascii>,
}

/// Settings from the provider block, with the environment's fallbacks.
pub struct Settings {
    pub address: Option<String>,
    pub token: Option<zeroize::Zeroizing<String>>,
    pub ca_cert: Option<String>,
}

impl Gateway {
    /// Checks the settings and prepares a lazy connection: nothing is dialled
    /// until the first call, so `plan` of an empty configuration works
    /// without a gateway.
    pub fn new(s: Settings) -> Result<Gateway, Diags> {
        let mut diags = Diags::default();
        let address = s.address.filter(|a| !a.trim().is_empty());
        if address.is_none() {
            diags.push_error(
                "Missing Keybridge address",
                "Set `address` in the provider block or the KEYBRIDGE_ADDR environment variable \
                 (for example https://keybridge.internal:8400).",
                Some(crate::diag::path("address")),
            );
        }
        let token = s.token.filter(|t| !t.trim().is_empty());
        if token.is_none() {
            diags.push_error(
                "Missing Keybridge token",
                "Set `token` in the provider block or the KEYBRIDGE_TOKEN environment variable.",
                Some(crate::diag::path("token")),
            );
        }
        let (Some(address), Some(token)) = (address, token) else { return Err(diags) };
        let addr = if address.contains("://") { address.clone() } else { format!("http://{address}") };
        let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(|e| {
            Diags::error_at("address", "Invalid Keybridge address", format!("{address:?} is not a URL: {e}"))
        })?;
        endpoint = endpoint.connect_timeout(Duration::from_secs(10)).timeout(CALL_TIMEOUT);
        if addr.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &s.ca_cert {
                let pem = std::fs::read(ca)
                    .map_err(|e| Diags::error_at("ca_cert", "Cannot read the CA certificate", format!("{ca}: {e}")))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Diags::error_at("ca_cert", "Invalid TLS settings", e.to_string()))?;
        } else if s.ca_cert.is_some() {
            return Err(Diags::error_at(
                "ca_cert",
                "CA certificate given for a plaintext address",
                "ca_cert only applies to https:// addresses; use https:// or drop ca_cert.",
            ));
        }
        let mut token: MetadataValue<Ascii> = format!("Bearer {}", token.as_str()).parse().map_err(|_| {
            Diags::error_at("token", "Invalid Keybridge token", "The token has characters that cannot be sent.")
        })?;
        token.set_sensitive(true);
        Ok(Gateway { channel: endpoint.connect_lazy(), token })
    }

    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    pub fn secrets(&self) -> pb::secrets_client::SecretsClient<Channel> {
        pb::secrets_client::SecretsClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    pub fn sys(&self) -> pb::sys_client::SysClient<Channel> {
        pb::sys_client::SysClient::new(self.channel.clone())
    }

    pub fn policies(&self) -> pb::policies_client::PoliciesClient<Channel> {
        pb::policies_client::PoliciesClient::new(self.channel.clone())
    }

    pub fn auth(&self) -> pb::auth_client::AuthClient<Channel> {
        pb::auth_client::AuthClient::new(self.channel.clone())
    }

    pub fn sync(&self) -> pb::sync_client::SyncClient<Channel> {
        pb::sync_client::SyncClient::new(self.channel.clone())
    }

    pub fn plugins(&self) -> pb::plugins_client::PluginsClient<Channel> {
        pb::plugins_client::PluginsClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
}

pub fn not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}
