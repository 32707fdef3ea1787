//! Test servers and fixtures for Keybridge's tests.
//!
//! - [`cloudkms`]: a GCP Cloud KMS v1 REST server (key rings, symmetric
//!   keys and their versions, encrypt and decrypt with CRC32C checks), for
//!   the `gcpckms` seal.
//! - [`gateway`]: a Keybridge dev gateway as a child process, for the
//!   client crate's tests and documentation examples.
//! - [`issuer`]: a JWT issuer with a real ES256 key pair (PEM and JWKS), as
//!   a Kubernetes cluster's service-account issuer or a CI system's OIDC
//!   provider signs tokens.
//! - [`keyvault`]: an Azure Key Vault (secrets and keys APIs: RSA keys,
//!   wrapKey and unwrapKey) and Entra ID token
//!   endpoint over HTTPS with a test CA, following the REST contracts.
//! - [`kubernetes`]: a server that follows the Kubernetes TokenReview
//!   contract (`POST /apis/authentication.k8s.io/v1/tokenreviews`) and the
//!   service-account delete call, so tests can delete an account and see
//!   its tokens refused.
//! - [`secretmanager`]: a GCP Secret Manager v1 REST server that honours
//!   `pageSize`, keeps annotations and aliases, checks CRC32C, labels and
//!   annotations, and takes only credentials of its own service account,
//!   where drongo does not.
//! - [`oauth`]: that service account (an RSA key and its JSON key file),
//!   Google's OAuth 2.0 token endpoint (JWT-bearer grant) and the checks
//!   of bearer tokens (minted access tokens and self-signed JWTs).
//! - [`saas`]: a third-party service that creates and deletes API keys, for
//!   the example `saas` WASM engine.
//! - [`process`]: third-party test servers (moto, drongo) as child
//!   processes on free ports.
//! - [`postgres`]: a throwaway PostgreSQL cluster from the machine's
//!   binaries (password and TLS), for the PostgreSQL store's tests.
//! - [`tls`]: a throwaway CA and a loopback server certificate.

pub mod cloudkms;
pub mod gateway;
pub mod issuer;
pub mod keyvault;
pub mod kubernetes;
pub mod oauth;
pub mod postgres;
pub mod process;
pub mod saas;
pub mod secretmanager;
pub mod tls;
