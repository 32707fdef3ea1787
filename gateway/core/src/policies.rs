//! ACL policies: stored as HCL text inside the barrier under
//! `core/policies/<name>`, parsed and merged into ACLs on use (cached per
//! set of policy names, dropped whenever a policy changes).

use std::sync::Arc;

use keybridge_barrier::WriteBatch;
use keybridge_policy::{Acl, Policy, parse_policy};
use zeroize::Zeroizing;

use crate::audit::Caller;
use crate::core::{Capability, Core, Unsealed};
use crate::{Error, Result};

pub(crate) const POLICY_PREFIX: &str = "core/policies/";
pub const ROOT_POLICY: &str = "root";
pub const DEFAULT_POLICY: &str = "default";

/// Vault's `default` policy, reduced to the paths Keybridge serves: a token
/// may look itself up and learn its own capabilities.
pub const DEFAULT_POLICY_TEXT: &str = r#"# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
  capabilities = ["update"]
}
"#;

pub fn policy_key(name: &str) -> String {
    format!("{POLICY_PREFIX}{name}")
}

/// Policy names: 1 to 128 of `a-z 0-9 - _ .`, as Vault lowercases them.
pub fn normalize_name(name: &str) -> Result<String> {
    let n = name.trim().to_lowercase();
    if n.is_empty() || n.len() > 128 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "invalid policy name {name:?}: use 1 to 128 characters from a-z, 0-9, '-', '_' and '.'"
        )));
    }
    Ok(n)
}

fn invalid(e: keybridge_policy::Error) -> Error {
    Error::InvalidArgument(e.to_string())
}

impl Core {
    pub(crate) fn policy_capability(cap: Capability) -> keybridge_policy::Capability {
        use keybridge_policy::Capability as P;
        match cap {
            Capability::Create => P::Create,
            Capability::Read => P::Read,
            Capability::Update => P::Update,
            Capability::Delete => P::Delete,
            Capability::List => P::List,
            Capability::Sudo => P::Sudo,
        }
    }

    /// The merged ACL of a set of policy names; unknown names contribute
    /// nothing (deny by default), as in Vault.
    pub(crate) async fn acl_for(&self, loaded: &Unsealed, names: &[String]) -> Result<Arc<Acl>> {
        // Looked up by the names as the token holds them (sorted at
        // creation), so the hot path allocates nothing.
        let ticket = match loaded.acls.lookup(names) {
            Ok(acl) => return Ok(acl),
            Err(ticket) => ticket,
        };
        let mut unique: Vec<&String> = names.iter().collect();
        unique.sort();
        unique.dedup();
        let mut policies: Vec<Policy> = Vec::new();
        for name in unique {
            if name == ROOT_POLICY {
                policies.push(Policy { name: ROOT_POLICY.into(), rules: vec![] });
                continue;
            }
            if let Some(text) = self.barrier.get(&policy_key(name)).await? {
                let text = String::from_utf8_lossy(&text).into_owned();
                policies.push(
                    parse_policy(name, &text)
                        .map_err(|e| Error::Corrupt { key: policy_key(name), reason: e.to_string() })?,
                );
            }
        }
        let acl = Arc::new(Acl::new(&policies));
        loaded.acls.fill(ticket, names.to_vec(), acl.clone());
        Ok(acl)
    }

    /// Creates or replaces a policy after parsing it.
    pub async fn put_policy(&self, caller: &Caller, name: &str, text: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let name = normalize_name(name)?;
        self.authorize(caller, &id, &format!("sys/policies/acl/{name}"), Capability::Update).await?;
        if name == ROOT_POLICY {
            return Err(Error::InvalidArgument("the root policy is built in and cannot be changed".into()));
        }
        let policy = parse_policy(&name, text).map_err(invalid)?;
        self.policy_check(&keybridge_policy::rego::rule_inputs(&policy, &name, text))?;
        let _guard = self.admin.lock().await;
        let mut batch = WriteBatch::new();
        batch.put(policy_key(&name), Zeroizing::new(text.as_bytes().to_vec()));
        self.barrier.commit(batch).await?;
        self.unsealed()?.acls.clear();
        Ok(())
    }

    pub async fn get_policy(&self, caller: &Caller, name: &str) -> Result<String> {
        let id = self.authenticate(caller).await?;
        let name = normalize_name(name)?;
        self.authorize(caller, &id, &format!("sys/policies/acl/{name}"), Capability::Read).await?;
        if name == ROOT_POLICY {
            return Ok(String::new());
        }
        let text = self
            .barrier
            .get(&policy_key(&name))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no policy named {name:?}")))?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    pub async fn list_policies(&self, caller: &Caller) -> Result<Vec<String>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/policies/acl", Capability::List).await?;
        let keys = self.barrier.list(POLICY_PREFIX, None, 100_000).await?;
        let mut names: Vec<String> = keys.iter().map(|k| k[POLICY_PREFIX.len()..].to_string()).collect();
        names.push(ROOT_POLICY.into());
        names.sort();
        Ok(names)
    }

    pub async fn delete_policy(&self, caller: &Caller, name: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let name = normalize_name(name)?;
        self.authorize(caller, &id, &format!("sys/policies/acl/{name}"), Capability::Delete).await?;
        if name == ROOT_POLICY || name == DEFAULT_POLICY {
            return Err(Error::InvalidArgument(format!("the {name} policy is built in and cannot be deleted")));
        }
        let _guard = self.admin.lock().await;
        let (existing, stamp) = self.barrier.get_stamped(&policy_key(&name)).await?;
        if existing.is_none() {
            return Err(Error::NotFound(format!("no policy named {name:?}")));
        }
        let mut batch = WriteBatch::new();
        batch.expect(policy_key(&name), &stamp).delete(policy_key(&name));
        self.barrier.commit(batch).await?;
        self.unsealed()?.acls.clear();
        Ok(())
    }
}

impl Core {
    /// The capabilities the calling token has on `path`
    /// (`sys/capabilities-self`, in the default policy).
    pub async fn capabilities_self(&self, caller: &Caller, path: &str) -> Result<Vec<&'static str>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/capabilities-self", Capability::Update).await?;
        crate::path::validate_secret_path(path)?;
        let loaded = self.unsealed()?;
        let acl = self.acl_for(&loaded, &id.policies).await?;
        let caps = acl.capabilities(path);
        Ok(if caps.is_empty() { vec!["deny"] } else { caps.into_iter().map(|c| c.as_str()).collect() })
    }
}
