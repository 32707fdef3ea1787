//! A typed, async client for [Keybridge](https://github.com/keybridge/keybridge)'s
//! gRPC API (package `keybridge.v1`).
//!
//! - [`Client`] holds one HTTP/2 connection and hands out the generated
//!   stubs ([`Client::secrets`], [`Client::sys`], ...), each sending the
//!   token on every call.
//! - [`Config::from_env`] reads `KEYBRIDGE_ADDR`, `KEYBRIDGE_TOKEN` and
//!   `KEYBRIDGE_CACERT`, as the `keybridge` CLI does.
//! - Calls that are safe to repeat (reads, lookups, lists: [`SAFE_TO_RETRY`])
//!   are retried when the gateway answers `UNAVAILABLE` or cannot be
//!   reached; writes, a check-and-set `Put` too, are tried once.
//! - Helpers for the common flows: [`Client::kv_get`], [`Client::kv_put`]
//!   and [`Client::kv_update`] (check-and-set), [`Client::watch`],
//!   [`Client::login`], and [`Renewer`] for leases and tokens.
//!
//! ```
//! # keybridge_testservers::gateway::doc_example(|address, token| async move {
//! use keybridge_client::{Client, Config, fields};
//!
//! // In a service: Config::from_env()?, from KEYBRIDGE_ADDR and KEYBRIDGE_TOKEN.
//! let config = Config::new(address).with_token(token);
//! let client = Client::connect(config).await?;
//! let written = client.kv_put("secret/app/db", fields([("user", "app")]), None).await?;
//! let read = client.kv_get("secret/app/db").await?.expect("just written");
//! assert_eq!(read.version.map(|v| v.version), Some(written.version));
//! # Ok::<(), keybridge_client::Error>(())
//! # });
//! ```

mod config;
mod error;
mod kv;
mod renew;
mod transport;
mod watch;

use std::time::Duration;

pub use keybridge_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use config::{Config, DEFAULT_ADDRESS, Retry};
pub use error::{Error, code_name};
pub use kv::fields;
pub use renew::{Renewal, Renewer};
pub use transport::{SAFE_TO_RETRY, Transport, safe_to_retry};
pub use watch::{Watch, WatchItem};

/// A connection to one gateway with one token. Cheap to clone: clones
/// share the connection.
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    address: String,
    retry: Retry,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("address", &self.address).finish_non_exhaustive()
    }
}

fn bearer(token: &str) -> Result<http::HeaderValue, Error> {
    let mut v = http::HeaderValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
        Error::Config("the token has characters that cannot be sent in a header; check KEYBRIDGE_TOKEN".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Client {
    /// Connects now: an unreachable gateway is an [`Error::Connect`] here.
    pub async fn connect(config: Config) -> Result<Client, Error> {
        let (endpoint, url) = endpoint(&config)?;
        let channel = endpoint.connect().await.map_err(|e| {
            let reason = error::diagnose(&url, &e).unwrap_or_else(|| error::chain(&e));
            Error::Connect { addr: url.clone(), reason }
        })?;
        Client::over(channel, &config)
    }

    /// Connects on the first call, so a client can be made before the
    /// gateway is up; until then calls fail with `UNAVAILABLE` (and reads
    /// are retried).
    pub fn connect_lazy(config: Config) -> Result<Client, Error> {
        let (endpoint, _) = endpoint(&config)?;
        Client::over(endpoint.connect_lazy(), &config)
    }

    fn over(channel: Channel, config: &Config) -> Result<Client, Error> {
        let token = config.token.as_deref().map(|t| bearer(t)).transpose()?;
        Ok(Client {
            transport: Transport::new(channel, token, config.retry, config.url()),
            address: config.url(),
            retry: config.retry,
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// The same connection with another token (for example one from
    /// [`Client::login`]).
    pub fn with_token(&self, token: &str) -> Result<Client, Error> {
        let mut c = self.clone();
        c.transport = self.transport.with_token(Some(bearer(token)?));
        Ok(c)
    }

    /// The same connection without a token, for the calls that need none
    /// (seal status, init, unseal, login, health).
    pub fn without_token(&self) -> Client {
        let mut c = self.clone();
        c.transport = self.transport.with_token(None);
        c
    }

    /// The gateway's address, with its scheme.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bare channel: no token, no retries.
    pub fn channel(&self) -> Channel {
        self.transport.channel().clone()
    }

    /// The authenticating, retrying transport, for stubs this crate does
    /// not wrap.
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    pub(crate) fn retry(&self) -> Retry {
        self.retry
    }
}

macro_rules! stubs {
    ($($(#[$doc:meta])* $name:ident => $path:ident::$client:ident),* $(,)?) => {
        impl Client {$(
            $(#[$doc])*
            pub fn $name(&self) -> $path::$client<Transport> {
                $path::$client::new(self.transport.clone())
                    .max_decoding_message_size(self.max_message_bytes)
                    .max_encoding_message_size(self.max_message_bytes)
            }
        )*}
    };
}

use keybridge_proto::v1::{
    audit_client, auth_client, leases_client, logical_client, plugins_client, policies_client, secrets_client,
    sync_client, sys_client, tokens_client,
};
use tonic_health::pb::health_client;

stubs! {
    /// Versioned secrets: put, get, list, watch (`keybridge.v1.Secrets`).
    secrets => secrets_client::SecretsClient,
    /// Seal, mounts, keys, snapshots (`keybridge.v1.Sys`).
    sys => sys_client::SysClient,
    /// ACL policies (`keybridge.v1.Policies`).
    policies => policies_client::PoliciesClient,
    /// Tokens (`keybridge.v1.Tokens`).
    tokens => tokens_client::TokensClient,
    /// Audit devices and the audit chain (`keybridge.v1.Audit`).
    audit => audit_client::AuditClient,
    /// Login methods and roles (`keybridge.v1.Auth`).
    auth => auth_client::AuthClient,
    /// Replication rules and rotations (`keybridge.v1.Sync`).
    sync => sync_client::SyncClient,
    /// Engine paths (`keybridge.v1.Logical`).
    logical => logical_client::LogicalClient,
    /// Leases (`keybridge.v1.Leases`).
    leases => leases_client::LeasesClient,
    /// WASM engine plugins (`keybridge.v1.Plugins`).
    plugins => plugins_client::PluginsClient,
    /// The standard gRPC health service.
    health => health_client::HealthClient,
}

fn endpoint(config: &Config) -> Result<(Endpoint, String), Error> {
    let url = config.url();
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
        Error::Config(format!("{:?} is not a gateway address ({e}); write it as https://host:port", config.address))
    })?;
    endpoint = endpoint.connect_timeout(config.connect_timeout).tcp_nodelay(true);
    if let Some(t) = config.timeout {
        endpoint = endpoint.timeout(t);
    }
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| Error::Read { path: ca.display().to_string(), source: e })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint =
            endpoint.tls_config(tls).map_err(|e| Error::Config(format!("TLS settings: {}", error::chain(&e))))?;
    } else if config.ca_cert.is_some() {
        return Err(Error::Config(format!(
            "a CA certificate is set but {url} is not https://; use an https:// address or drop the CA certificate"
        )));
    }
    Ok((endpoint, url))
}

/// Sleeps the backoff before try `attempt + 1`.
pub(crate) async fn backoff(retry: Retry, attempt: u32) {
    tokio::time::sleep(retry.backoff(attempt).max(Duration::from_millis(1))).await;
}

impl Client {
    /// Logs in with a Kubernetes service-account token or an OIDC/JWT at
    /// the login method mounted at `auth_path` (`kubernetes`, `jwt`, ...)
    /// under `role`, and returns a client on the same connection carrying
    /// the new token, with the gateway's answer (the token and what it
    /// grants). Never retried: each login makes a token.
    pub async fn login(&self, auth_path: &str, role: &str, jwt: &str) -> Result<(Client, pb::LoginResponse), Error> {
        let req = pb::LoginRequest { path: auth_path.to_string(), role: role.to_string(), jwt: jwt.to_string() };
        let resp = self.without_token().auth().login(req).await?.into_inner();
        Ok((self.with_token(&resp.token)?, resp))
    }
}
