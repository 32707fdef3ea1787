//! Managed resources, data sources and ephemeral resources.
//!
//! A managed resource says what it stores ([`Schema`]), which attributes
//! force a new object, how to read it back from the gateway and how to
//! create, update and delete it. The plan and apply logic shared by all of
//! them lives in [`crate::provider`].

use async_trait::async_trait;

use crate::diag::Diags;
use crate::gateway::Gateway;
use crate::schema::{Identity, Schema};
use crate::value::Obj;

pub mod auth;
pub mod database;
mod logical;
pub mod mount;
pub mod pki;
pub mod plugin;
pub mod policy;
pub mod rule;
pub mod secret;

/// State the provider keeps beside a resource's attributes (Terraform's
/// "private" bytes): bookkeeping only, never a secret value.
pub type Private = serde_json::Map<String, serde_json::Value>;

/// What Terraform told the provider it can handle.
#[derive(Clone, Copy, Default)]
pub struct Caps {
    pub write_only: bool,
}

#[async_trait]
pub trait Resource: Send + Sync {
    fn name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn identity(&self) -> Identity;
    /// Attributes whose change replaces the object.
    fn replace_on(&self) -> &'static [&'static str] {
        &[]
    }
    /// Computed attributes that any update changes.
    fn unknown_on_update(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks a configuration; unknown values are skipped.
    fn validate(&self, _config: &Obj, _caps: Caps, _diags: &mut Diags) {}
    /// An update is needed though the stored attributes match the
    /// configuration: drift that state cannot show (a write-only value).
    fn force_update(&self, _prior: &Obj, _config: &Obj, _private: &Private) -> bool {
        false
    }
    /// Checks an update against the prior state at plan time (a change the
    /// gateway would take only with another argument changed too).
    fn check_update(&self, _prior: &Obj, _config: &Obj, _diags: &mut Diags) {}
    /// The id `terraform import` takes, for the docs (`<path>`).
    fn import_id_help(&self) -> &'static str;
    /// The state that `terraform import <addr> <id>` starts from; Terraform
    /// reads the rest with [`Resource::read`].
    fn import(&self, id: &str) -> Result<Obj, Diags>;
    /// The object as the gateway has it now, or `None` if it is gone.
    /// `prior` says what the state holds (to keep its form).
    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags>;
    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags>;
    async fn update(
        &self,
        gw: &Gateway,
        prior: &Obj,
        planned: &Obj,
        config: &Obj,
        private: &Private,
    ) -> Result<Private, Diags>;
    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags>;
}

#[async_trait]
pub trait DataSource: Send + Sync {
    fn name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    fn validate(&self, _config: &Obj, _diags: &mut Diags) {}
    async fn read(&self, gw: &Gateway, config: &Obj) -> Result<Obj, Diags>;
}

/// An ephemeral resource (Terraform 1.10+): opened once per run, its result
/// never stored; what it holds open (a lease) is renewed while the run
/// lasts and closed at its end.
#[async_trait]
pub trait Ephemeral: Send + Sync {
    fn name(&self) -> &'static str;
    fn schema(&self) -> Schema;
    /// What the reference says of it beyond the schema's description.
    fn about(&self) -> &'static str;
    fn validate(&self, _config: &Obj, _diags: &mut Diags) {}
    async fn open(&self, gw: &Gateway, config: &Obj) -> Result<Opened, Diags>;
    /// Extends what `open` holds; the next renewal time, if any.
    async fn renew(&self, _gw: &Gateway, _private: &Private) -> Result<Option<std::time::SystemTime>, Diags> {
        Ok(None)
    }
    async fn close(&self, _gw: &Gateway, _private: &Private) -> Result<(), Diags> {
        Ok(())
    }
}

/// An opened ephemeral resource: its values, the provider's bookkeeping for
/// renew and close (never a secret value), and when to renew.
pub struct Opened {
    pub result: Obj,
    pub private: Private,
    pub renew_at: Option<std::time::SystemTime>,
}

/// A data source read once as an ephemeral resource: nothing to renew or
/// close.
pub struct ReadOnce<D>(pub D);

#[async_trait]
impl<D: DataSource> Ephemeral for ReadOnce<D> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn schema(&self) -> Schema {
        self.0.schema()
    }
    fn about(&self) -> &'static str {
        "The same arguments as the data source; its values live only during the run and never reach state or \
         plan files. Use them in write-only arguments (`data_wo`, `config_wo`) or provider blocks."
    }
    fn validate(&self, config: &Obj, diags: &mut Diags) {
        self.0.validate(config, diags)
    }
    async fn open(&self, gw: &Gateway, config: &Obj) -> Result<Opened, Diags> {
        Ok(Opened { result: self.0.read(gw, config).await?, private: Private::new(), renew_at: None })
    }
}

pub fn resources() -> Vec<Box<dyn Resource>> {
    vec![
        Box::new(database::Connection),
        Box::new(database::Role),
        Box::new(database::StaticRole),
        Box::new(pki::RootCert),
        Box::new(pki::Role),
        Box::new(mount::Mount),
        Box::new(policy::Policy),
        Box::new(secret::Secret),
        Box::new(rule::ReplicationRule),
        Box::new(auth::AuthBackend),
        Box::new(auth::KubernetesRole),
        Box::new(plugin::Plugin),
    ]
}

pub fn data_sources() -> Vec<Box<dyn DataSource>> {
    vec![Box::new(secret::SecretData)]
}

pub fn ephemeral_resources() -> Vec<Box<dyn Ephemeral>> {
    vec![Box::new(ReadOnce(secret::SecretData)), Box::new(database::Credentials)]
}

/// Checks a name-like attribute that the gateway will use in a path.
pub fn check_segment(config: &Obj, attr: &str, what: &str, diags: &mut Diags) {
    use crate::value::ObjExt;
    if let Some(v) = config.get_str(attr) {
        let bad = v.is_empty()
            || v.len() > 256
            || v.split('/').any(|s| s == "." || s == "..")
            || v.chars().any(|c| c.is_control() || c.is_whitespace());
        if bad {
            diags.push_error(
                format!("Invalid {what}"),
                format!("`{attr}` must be 1-256 characters without spaces, control characters or `.`/`..` segments."),
                Some(crate::diag::path(attr)),
            );
        }
    }
}

/// The gateway's form of a mount path (`secret/`); `secret` and `secret/`
/// name the same mount, and state keeps the configuration's form.
pub fn mount_path(p: &str) -> String {
    format!("{}/", p.trim_end_matches('/'))
}

/// A string list attribute kept as the gateway's comma-separated setting.
pub fn join_list(v: &[String]) -> String {
    v.join(",")
}

pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// A delete's result: an object already gone counts as deleted.
pub fn deleted<T>(r: Result<T, tonic::Status>, op: &str) -> Result<(), Diags> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if crate::gateway::not_found(&s) => Ok(()),
        Err(s) => Err(crate::diag::gateway(op, &s, None)),
    }
}

/// Creating what exists already is refused, never an overwrite.
pub fn already_exists(attr: &str, what: &str) -> Diags {
    Diags::error_at(
        attr,
        format!("{what} already exists"),
        format!(
            "A {} of this name exists already; import it with `terraform import` to manage it.",
            what.to_lowercase()
        ),
    )
}
