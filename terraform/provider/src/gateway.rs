//! The provider's connection to a Keybridge gateway: its public gRPC API
//! through the client crate, nothing else.

use std::time::Duration;

use keybridge_client::{Client, Config, Transport};
use keybridge_proto::v1 as pb;

use crate::diag::Diags;

/// Per-call deadline; the gateway's own limit is 60 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Gateway {
    client: Client,
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
    /// without a gateway. Reads are retried while the gateway is
    /// unavailable; writes are tried once (the client crate decides which).
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
        let mut config = Config::new(address.clone())
            .with_token(token.as_str())
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(CALL_TIMEOUT);
        if let Some(ca) = &s.ca_cert {
            config = config.with_ca_cert(ca);
        }
        let client = Client::connect_lazy(config).map_err(|e| match e {
            keybridge_client::Error::Read { path, source } => {
                Diags::error_at("ca_cert", "Cannot read the CA certificate", format!("{path}: {source}"))
            }
            keybridge_client::Error::Config(m) if s.ca_cert.is_some() && m.contains("CA certificate") => {
                Diags::error_at("ca_cert", "CA certificate given for a plaintext address", m)
            }
            keybridge_client::Error::Config(m) if m.contains("token") => {
                Diags::error_at("token", "Invalid Keybridge token", m)
            }
            other => Diags::error_at("address", "Invalid Keybridge address", other.to_string()),
        })?;
        Ok(Gateway { client })
    }

    /// A request for `msg`; the client's transport adds the token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        tonic::Request::new(msg)
    }

    pub fn secrets(&self) -> pb::secrets_client::SecretsClient<Transport> {
        self.client.secrets()
    }

    pub fn sys(&self) -> pb::sys_client::SysClient<Transport> {
        self.client.sys()
    }

    pub fn policies(&self) -> pb::policies_client::PoliciesClient<Transport> {
        self.client.policies()
    }

    pub fn auth(&self) -> pb::auth_client::AuthClient<Transport> {
        self.client.auth()
    }

    pub fn sync(&self) -> pb::sync_client::SyncClient<Transport> {
        self.client.sync()
    }

    pub fn plugins(&self) -> pb::plugins_client::PluginsClient<Transport> {
        self.client.plugins()
    }

    pub fn logical(&self) -> pb::logical_client::LogicalClient<Transport> {
        self.client.logical()
    }

    pub fn leases(&self) -> pb::leases_client::LeasesClient<Transport> {
        self.client.leases()
    }
}

pub fn not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}
