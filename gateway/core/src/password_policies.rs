//! Password policies, as Vault's `sys/policies/password/<name>`: HCL text
//! (crate `keybridge-policy` parses it and draws passwords from it) kept in
//! the barrier under `core/password-policies/<name>`, served by the core
//! through the Logical API, and offered to built-in engines as
//! [`PasswordPolicies`].
//!
//! The paths are a system engine: [`Core::engine_route`] hands
//! `sys/policies/password[/...]` to it before the mount table is asked (no
//! mount may sit under `sys/`), so a request takes the Logical API's one
//! path: parameters checked against the fields below, `create` told from
//! `update` by an existence check, authorized on the request path with its
//! parameters, audited as any engine's request (the response's `data`, a
//! generated password included, is HMACed).
//!
//! - `sys/policies/password` (list): the policies' names.
//! - `sys/policies/password/<name>` (read, create, update, delete):
//!   `policy`, the HCL text; a write is parsed, checked (its passwords must
//!   have at least 64 bits of entropy, `length * log2(distinct
//!   characters)`: Keybridge's floor, see
//!   [`keybridge_policy::password::check_entropy`]), and must produce a
//!   password once before it is stored.
//! - `sys/policies/password/<name>/generate` (read): `password`, a new one.

use std::sync::{Arc, LazyLock};

use keybridge_barrier::{Barrier, WriteBatch};
use keybridge_policy::password::{PasswordPolicy, parse_password_policy};
use zeroize::Zeroizing;

use crate::Core;
use crate::mounts::MountEntry;
use crate::plugins::{
    CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, Field, FieldKind, GeneratedPassword,
    LeaseInfo, LeaseTerms, Operation, Params, PasswordPolicies, PathInfo, PluginEngine,
};

/// Where the policies are stored, by name.
pub(crate) const PREFIX: &str = "core/password-policies/";
/// Where the paths are served.
pub const MOUNT_PATH: &str = "sys/policies/password/";
/// The most policies a list returns.
const LIST_MAX: usize = 100_000;

/// The path below [`MOUNT_PATH`] when `path` is served here.
pub(crate) fn served(path: &str) -> Option<&str> {
    if path == MOUNT_PATH.trim_end_matches('/') { Some("") } else { path.strip_prefix(MOUNT_PATH) }
}

/// Policy names: 1 to 128 of `A-Z a-z 0-9 - _ .`, starting with a letter
/// or digit. Never normalised: the name checked by the ACL is the name
/// stored.
fn check_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidInput(format!(
            "invalid password policy name {name:?}: use 1 to 128 of A-Z, a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
        )))
    }
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn storage(e: keybridge_barrier::Error) -> EngineError {
    EngineError::Unavailable(format!("storage: {e}"))
}

fn invalid(e: keybridge_policy::Error) -> EngineError {
    EngineError::InvalidInput(e.to_string())
}

/// Runs `f` on tokio's blocking pool, off the async executor: parsing up
/// to 64 KiB of HCL, and drawing a password (up to 1,000 candidates of up
/// to 100 characters, each from the OS's CSPRNG) take milliseconds.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("a password policy's work did not finish: {e}")))?
}

/// The stored policy `name`, parsed; `None` when there is none.
async fn load(barrier: &Barrier, name: &str) -> Result<Option<PasswordPolicy>, EngineError> {
    check_name(name)?;
    let Some(raw) = barrier.get(&key(name)).await.map_err(storage)? else { return Ok(None) };
    let text = String::from_utf8(raw.to_vec())
        .map_err(|_| EngineError::Internal(format!("the stored password policy {name} is not UTF-8")))?;
    let name = name.to_string();
    blocking(move || {
        parse_password_policy(&text)
            .map(Some)
            .map_err(|e| EngineError::Internal(format!("the stored password policy {name} does not parse: {e}")))
    })
    .await
}

async fn must_load(barrier: &Barrier, name: &str) -> Result<PasswordPolicy, EngineError> {
    load(barrier, name).await?.ok_or_else(|| {
        EngineError::NotFound(format!("no password policy named {name:?}; write {MOUNT_PATH}{name} first"))
    })
}

fn draw(policy: &PasswordPolicy, name: &str) -> Result<Zeroizing<String>, EngineError> {
    policy.generate(&mut rand::rngs::OsRng).map_err(|e| EngineError::InvalidInput(format!("{MOUNT_PATH}{name}: {e}")))
}

/// A new password from `policy`, drawn off the async executor.
async fn generate(policy: PasswordPolicy, name: &str) -> Result<Zeroizing<String>, EngineError> {
    let name = name.to_string();
    blocking(move || draw(&policy, &name)).await
}

static INFO: LazyLock<EngineInfo> = LazyLock::new(|| {
    let path =
        |pattern: &str, synopsis: &str, operations: Vec<Operation>, fields: Vec<Field>, existence: bool| PathInfo {
            pattern: pattern.into(),
            synopsis: synopsis.into(),
            description: synopsis.into(),
            operations,
            fields,
            existence_check: existence,
        };
    let policy = Field {
        name: "policy".into(),
        kind: FieldKind::String,
        description:
            "the policy's HCL: length = N (4 to 100) and rule \"charset\" { charset = \"...\" min-chars = N } blocks"
                .into(),
        required: true,
        default: None,
    };
    use Operation::*;
    EngineInfo {
        name: "password-policies".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "Password policies: how engines generate passwords (served by the core)".into(),
        paths: vec![
            path("", "Lists password policies", vec![List], vec![], false),
            path("{name}", "A password policy", vec![Read, Create, Update, Delete], vec![policy], true),
            path("{name}/generate", "A new password from the policy", vec![Read], vec![], false),
        ],
        config_keys: Vec::new(),
        rotates: false,
    }
});

/// The system engine serving [`MOUNT_PATH`].
pub(crate) struct PasswordPolicyPaths {
    barrier: Arc<Barrier>,
}

#[async_trait::async_trait]
impl PluginEngine for PasswordPolicyPaths {
    fn info(&self) -> &EngineInfo {
        &INFO
    }

    async fn exists(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError> {
        let name = req.params.get("name").unwrap_or_default();
        check_name(name)?;
        Ok(self.barrier.get(&key(name)).await.map_err(storage)?.is_some())
    }

    async fn handle(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        let name = req.params.get("name").unwrap_or_default();
        let data = |pairs: Vec<(&str, String)>| EngineResponse {
            data: Params(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            ..Default::default()
        };
        match (req.pattern.as_str(), req.operation) {
            ("", Operation::List) => {
                let keys = self.barrier.list(PREFIX, None, LIST_MAX).await.map_err(storage)?;
                let names: Vec<&str> = keys.iter().filter_map(|k| k.strip_prefix(PREFIX)).collect();
                let names = serde_json::to_string(&names).map_err(|e| EngineError::Internal(e.to_string()))?;
                Ok(data(vec![("keys", names)]))
            }
            ("{name}", Operation::Create | Operation::Update) => {
                check_name(name)?;
                let text = req.params.get("policy").unwrap_or_default();
                let (owned, owned_name) = (text.to_string(), name.to_string());
                blocking(move || {
                    let policy = parse_password_policy(&owned).map_err(invalid)?;
                    // Keybridge's floor: 64 bits (length * log2(characters)).
                    policy.check_strength().map_err(invalid)?;
                    // A policy that is possible on paper but draws no
                    // password in practice is refused now, not at its
                    // first use.
                    drop(draw(&policy, &owned_name)?);
                    Ok(())
                })
                .await?;
                let mut b = WriteBatch::new();
                b.put(key(name), Zeroizing::new(text.as_bytes().to_vec()));
                self.barrier.commit(b).await.map_err(storage)?;
                Ok(EngineResponse::default())
            }
            ("{name}", Operation::Read) => {
                check_name(name)?;
                let raw = self
                    .barrier
                    .get(&key(name))
                    .await
                    .map_err(storage)?
                    .ok_or_else(|| EngineError::NotFound(format!("no password policy named {name:?}")))?;
                Ok(data(vec![("policy", String::from_utf8_lossy(&raw).into_owned())]))
            }
            ("{name}", Operation::Delete) => {
                check_name(name)?;
                let mut b = WriteBatch::new();
                b.delete(key(name));
                self.barrier.commit(b).await.map_err(storage)?;
                Ok(EngineResponse::default())
            }
            ("{name}/generate", Operation::Read) => {
                let policy = must_load(&self.barrier, name).await?;
                let password = generate(policy, name).await?;
                Ok(data(vec![("password", password.to_string())]))
            }
            (p, op) => Err(EngineError::Unsupported(format!("{} on {MOUNT_PATH}{p}", op.name()))),
        }
    }

    async fn renew(&self, _ctx: &CallContext, _lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        Err(EngineError::Unsupported("password policies issue no leases".into()))
    }

    async fn revoke(&self, _ctx: &CallContext, _lease: &LeaseInfo) -> Result<(), EngineError> {
        Err(EngineError::Unsupported("password policies issue no leases".into()))
    }

    async fn rotate(&self, _ctx: &CallContext, _path: &str, _params: &Params) -> Result<EngineResponse, EngineError> {
        Err(EngineError::Unsupported("password policies do not feed rotations".into()))
    }
}

/// The [`PasswordPolicies`] built-in engines get: stored policies, by name.
pub(crate) struct PolicyPasswords {
    barrier: Arc<Barrier>,
}

#[async_trait::async_trait]
impl PasswordPolicies for PolicyPasswords {
    async fn alphabet(&self, name: &str) -> Result<Vec<char>, EngineError> {
        Ok(must_load(&self.barrier, name).await?.alphabet().to_vec())
    }

    async fn generate(&self, name: &str) -> Result<GeneratedPassword, EngineError> {
        let policy = must_load(&self.barrier, name).await?;
        let alphabet = policy.alphabet().to_vec();
        let password = generate(policy, name).await?;
        Ok(GeneratedPassword { password, alphabet })
    }
}

impl Core {
    /// The system engine serving [`MOUNT_PATH`], as a route: a mount entry
    /// of its own (never in the table), the path below it, the engine.
    pub(crate) fn password_policy_route(&self, rel: &str) -> (MountEntry, String, Arc<dyn PluginEngine>) {
        let mount = MountEntry {
            id: "sys-password-policies".into(),
            path: MOUNT_PATH.into(),
            kind: "system".into(),
            description: INFO.description.clone(),
            config: Default::default(),
            created: Default::default(),
            deleting: false,
        };
        (mount, rel.to_string(), Arc::new(PasswordPolicyPaths { barrier: self.barrier.clone() }))
    }

    /// What built-in engines generate passwords through.
    pub(crate) fn password_policies(&self) -> Arc<dyn PasswordPolicies> {
        Arc::new(PolicyPasswords { barrier: self.barrier.clone() })
    }
}
