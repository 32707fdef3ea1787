//! Login methods. Each turns a credential someone else issued (a
//! Kubernetes service-account token, a CI system's OIDC token) into the
//! policies and lifetime of a Keybridge token, as a configured role says.
//!
//! - [`keys`]: the signing keys a method trusts (PEM public keys, JWKS) and
//!   JWT signature, expiry, issuer checks.
//! - [`kubernetes`]: service-account roles, optional TokenReview.
//! - [`jwt`]: roles with bound audiences, subject and claims.
//!
//! Settings come as `key=value` maps (the API's and CLI's form, as in
//! Vault) and are validated here without IO. A refused login carries its
//! reason for the audit log; callers only ever get a generic answer.

pub mod jwt;
pub mod keys;
pub mod kubernetes;
mod settings;

use std::collections::BTreeMap;

pub use settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config or role setting is wrong; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// The login is refused. The reason is for the audit log only.
    #[error("{0}")]
    Refused(String),
    /// A service the method depends on (the Kubernetes API) failed.
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a successful login grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub display_name: String,
    pub policies: Vec<String>,
    /// 0: the default.
    pub ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// Recorded on the token (role, service account, subject, ...).
    pub metadata: BTreeMap<String, String>,
}

/// What a role grants at login, whatever the method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleTerms {
    pub policies: Vec<String>,
    /// 0: the default.
    pub ttl_secs: u64,
    pub max_ttl_secs: u64,
}

/// The method types there are.
pub const KINDS: &[&str] = &["kubernetes", "jwt"];

/// A configured method, parsed once and kept while its config is unchanged.
pub enum Method {
    Kubernetes(kubernetes::Config),
    Jwt(jwt::Config),
}

impl Method {
    pub fn parse(kind: &str, settings: &Settings) -> Result<Method> {
        match kind {
            "kubernetes" => Ok(Method::Kubernetes(kubernetes::Config::parse(settings)?)),
            "jwt" => Ok(Method::Jwt(jwt::Config::parse(settings)?)),
            other => Err(Error::Invalid(format!("unknown auth method type {other:?}: use {}", KINDS.join(" or ")))),
        }
    }

    /// Checks a role's settings for this method type; returns what a login
    /// with it would grant, for the writer's authority to be checked.
    pub fn validate_role(kind: &str, settings: &Settings) -> Result<RoleTerms> {
        match kind {
            "kubernetes" => kubernetes::Role::parse(settings).map(|_| ()),
            "jwt" => jwt::Role::parse(settings).map(|_| ()),
            other => Err(Error::Invalid(format!("unknown auth method type {other:?}"))),
        }?;
        let (ttl_secs, max_ttl_secs) = kubernetes::ttls(settings)?;
        Ok(RoleTerms { policies: settings::policies(settings)?, ttl_secs, max_ttl_secs })
    }

    /// Validates `token` for the role `role_name` with `role` settings.
    pub async fn login(&self, role_name: &str, role: &Settings, token: &str) -> Result<Grant> {
        match self {
            Method::Kubernetes(c) => c.login(role_name, &kubernetes::Role::parse(role)?, token).await,
            Method::Jwt(c) => c.login(role_name, &jwt::Role::parse(role)?, token),
        }
    }

    /// The settings that may be shown back (secrets replaced).
    pub fn redact(kind: &str, settings: &Settings) -> BTreeMap<String, String> {
        let secret: &[&str] = if kind == "kubernetes" { &["token_reviewer_jwt"] } else { &[] };
        settings
            .iter()
            .map(|(k, v)| (k.clone(), if secret.contains(&k.as_str()) { "<set>".to_string() } else { v.clone() }))
            .collect()
    }
}
