//! Login methods (`auth enable kubernetes`, `auth enable jwt`): their
//! table, configs and roles in the barrier, and login itself, which turns a
//! validated credential into a token with the role's policies and TTL.
//!
//! Storage: `core/auth` (the table), `auth/<id>/config`, `auth/<id>/role/<name>`,
//! and `auth/<id>/tokens/<hash>` for every token a method issued, so
//! disabling the method revokes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keybridge_auth::{Method, Settings};
use keybridge_barrier::WriteBatch;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::{AuditValue, Caller};
use crate::audit_devices::normalize_device_path as normalize_path;
use crate::core::{Capability, Core, Unsealed, encode_json};
use crate::policies::{DEFAULT_POLICY, ROOT_POLICY, normalize_name};
use crate::tokens::TokenEntry;
use crate::tokens::store::DEFAULT_TOKEN_TTL_SECS;
use crate::{Error, Result, Timestamp};

pub(crate) const AUTH_TABLE_KEY: &str = "core/auth";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthMount {
    /// `kubernetes/`: the method answers at `auth/kubernetes/...`.
    pub path: String,
    pub kind: String,
    pub description: String,
    pub id: String,
    pub created: Timestamp,
    /// Being disabled: no more logins; its tokens are being revoked.
    #[serde(default)]
    pub disabling: bool,
}

/// The methods in memory while unsealed, and their parsed configs.
#[derive(Default)]
pub(crate) struct AuthState {
    pub table: Vec<AuthMount>,
    /// The stamp `table` was read or written with: a change of the table
    /// and a login's token are conditioned on it, so neither acts on a
    /// table another node changed meanwhile.
    pub stamp: keybridge_barrier::Stamp,
    pub parsed: HashMap<String, Arc<Method>>,
    /// Bumped when another node's change drops parsed configs: a parse
    /// that read the store before it is not kept.
    pub dropped: u64,
}

impl AuthState {
    /// A table read from the store, with its stamp; parsed configs of
    /// methods no longer in it are dropped.
    pub(crate) fn install(&mut self, table: Vec<AuthMount>, stamp: keybridge_barrier::Stamp) {
        self.parsed.retain(|id, _| table.iter().any(|m| &m.id == id));
        (self.table, self.stamp) = (table, stamp);
    }
}

fn config_key(id: &str) -> String {
    format!("auth/{id}/config")
}

fn role_prefix(id: &str) -> String {
    format!("auth/{id}/role/")
}

fn tokens_prefix(id: &str) -> String {
    format!("auth/{id}/tokens/")
}

fn auth_error(e: keybridge_auth::Error) -> Error {
    match e {
        keybridge_auth::Error::Invalid(m) => Error::InvalidArgument(m),
        keybridge_auth::Error::Refused(m) => Error::LoginRefused(m),
        keybridge_auth::Error::Unavailable(m) => Error::FailedPrecondition(m),
    }
}

fn auth_table(loaded: &Unsealed) -> Vec<AuthMount> {
    loaded.auth.read().unwrap_or_else(|p| p.into_inner()).table.clone()
}

/// The auth methods' table as stored, with the stamp it was read with.
pub(crate) async fn load_table(core: &Core) -> Result<(Vec<AuthMount>, keybridge_barrier::Stamp)> {
    let (raw, stamp) = core.barrier.get_stamped(AUTH_TABLE_KEY).await?;
    let table = match raw {
        Some(raw) => serde_json::from_slice(&raw)
            .map_err(|e| Error::Corrupt { key: AUTH_TABLE_KEY.into(), reason: e.to_string() })?,
        None => Vec::new(),
    };
    Ok((table, stamp))
}

impl Core {
    pub(crate) fn auth_mount(&self, loaded: &Unsealed, path: &str) -> Result<AuthMount> {
        self.auth_mount_in(&loaded.auth.read().unwrap_or_else(|p| p.into_inner()).table, path)
    }

    fn auth_mount_in(&self, table: &[AuthMount], path: &str) -> Result<AuthMount> {
        let path = normalize_path(path)?;
        table
            .iter()
            .find(|m| m.path == path)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no auth method is enabled at auth/{path}")))
    }

    /// Writes the table, conditioned on the one in memory (callers hold
    /// `admin`). Another node's change in between refuses it, and the
    /// table is read again for the next try.
    async fn store_auth_table(&self, loaded: &Unsealed, table: Vec<AuthMount>, mut batch: WriteBatch) -> Result<()> {
        let stamp = loaded.auth.read().unwrap_or_else(|p| p.into_inner()).stamp.clone();
        batch.expect(AUTH_TABLE_KEY, &stamp).put(AUTH_TABLE_KEY, encode_json(&table));
        let refused = match self.barrier.commit(batch).await {
            Ok(()) => false,
            Err(keybridge_barrier::Error::Conflict) => true,
            Err(e) => return Err(e.into()),
        };
        // What is stored now, with the stamp read with it: after a commit
        // (another node may have written after it), and after a refusal
        // (another node wrote first; the next try starts from its table).
        let (stored, stamp) = load_table(self).await?;
        loaded.auth.write().unwrap_or_else(|p| p.into_inner()).install(stored, stamp);
        if refused {
            return Err(Error::Contention("another node changed the auth methods at the same time: try again".into()));
        }
        Ok(())
    }

    pub async fn enable_auth(&self, caller: &Caller, path: &str, kind: &str, description: &str) -> Result<AuthMount> {
        let id = self.authenticate(caller).await?;
        let path = normalize_path(path)?;
        self.authorize(caller, &id, &format!("sys/auth/{path}"), Capability::Sudo).await?;
        if !keybridge_auth::KINDS.contains(&kind) {
            return Err(Error::InvalidArgument(format!(
                "unknown auth method type {kind:?}: use {}",
                keybridge_auth::KINDS.join(" or ")
            )));
        }
        if path == "token/" {
            return Err(Error::InvalidArgument("auth/token/ is the token store; choose another path".into()));
        }
        let _guard = self.admin.lock().await;
        let loaded = self.unsealed()?;
        let mut table = auth_table(&loaded);
        if table.iter().any(|m| m.path == path) {
            return Err(Error::AlreadyExists(format!("an auth method is already enabled at auth/{path}")));
        }
        let mount = AuthMount {
            path,
            kind: kind.to_string(),
            description: description.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            created: Timestamp::now(),
            disabling: false,
        };
        table.push(mount.clone());
        self.store_auth_table(&loaded, table, WriteBatch::new()).await?;
        Ok(mount)
    }

    pub async fn list_auth(&self, caller: &Caller) -> Result<Vec<AuthMount>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/auth", Capability::Read).await?;
        Ok(auth_table(&*self.unsealed()?))
    }

    /// Disables a method: its config and roles are deleted and every token
    /// it issued is revoked.
    pub async fn disable_auth(&self, caller: &Caller, path: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        self.authorize(caller, &id, &format!("sys/auth/{norm}"), Capability::Sudo).await?;
        let loaded = self.unsealed()?;
        // 1. No more logins. If a later step fails, the method stays in the
        //    table marked as disabling, and disabling it again finishes.
        let mount = {
            let _guard = self.admin.lock().await;
            let mut mount = self.auth_mount(&loaded, &norm)?;
            mount.disabling = true;
            let table =
                auth_table(&loaded).into_iter().map(|m| if m.id == mount.id { mount.clone() } else { m }).collect();
            self.store_auth_table(&loaded, table, WriteBatch::new()).await?;
            mount
        };
        // 2. Revoke every token it issued.
        loop {
            let keys = self.barrier.list(&tokens_prefix(&mount.id), None, 256).await?;
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let hash = key.rsplit('/').next().unwrap_or_default().to_string();
                self.revoke_tree(&loaded, &hash).await?;
                let mut b = WriteBatch::new();
                b.delete(key);
                self.barrier.commit(b).await?;
            }
        }
        // 3. Remove it with its config and roles.
        let _guard = self.admin.lock().await;
        let mut batch = WriteBatch::new();
        batch.delete(config_key(&mount.id));
        for role in self.barrier.list(&role_prefix(&mount.id), None, usize::MAX).await? {
            batch.delete(role);
        }
        let table = auth_table(&loaded).into_iter().filter(|m| m.id != mount.id).collect();
        self.store_auth_table(&loaded, table, batch).await
    }

    pub async fn write_auth_config(&self, caller: &Caller, path: &str, settings: Settings) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        self.authorize(caller, &id, &format!("auth/{norm}config"), Capability::Update).await?;
        let loaded = self.unsealed()?;
        let mount = self.auth_mount(&loaded, &norm)?;
        let method = Method::parse(&mount.kind, &settings).map_err(auth_error)?;
        let mut batch = WriteBatch::new();
        batch.put(config_key(&mount.id), encode_json(&settings));
        self.barrier.commit(batch).await?;
        loaded.auth.write().unwrap_or_else(|p| p.into_inner()).parsed.insert(mount.id, Arc::new(method));
        Ok(())
    }

    /// The config as written, with secrets (the reviewer JWT) replaced.
    pub async fn read_auth_config(&self, caller: &Caller, path: &str) -> Result<BTreeMap<String, String>> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        self.authorize(caller, &id, &format!("auth/{norm}config"), Capability::Read).await?;
        let mount = self.auth_mount(&*self.unsealed()?, &norm)?;
        let settings = self.read_settings(&config_key(&mount.id)).await?.unwrap_or_default();
        Ok(Method::redact(&mount.kind, &settings))
    }

    async fn read_settings(&self, key: &str) -> Result<Option<Settings>> {
        match self.barrier.get(key).await? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| Error::Corrupt { key: key.to_string(), reason: e.to_string() }),
        }
    }

    pub async fn write_auth_role(&self, caller: &Caller, path: &str, role: &str, settings: Settings) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        let role = normalize_name(role)?;
        let loaded = self.unsealed()?;
        let mount = self.auth_mount(&loaded, &norm)?;
        let key = format!("{}{role}", role_prefix(&mount.id));
        let role_path = format!("auth/{norm}role/{role}");
        let cap = self
            .write_capability(caller, &id, &role_path, false, || async { Ok(self.barrier.get(&key).await?.is_some()) })
            .await?;
        self.authorize(caller, &id, &role_path, cap).await?;
        let terms = Method::validate_role(&mount.kind, &settings).map_err(auth_error)?;
        check_role_terms(&terms)?;
        self.check_role_grant(&id, &role_path, &terms.policies).await?;
        self.policy_check(&[keybridge_policy::rego::role_input(&mount.kind, &role, &settings)])?;
        let mut batch = WriteBatch::new();
        batch.put(key, encode_json(&settings));
        self.barrier.commit(batch).await?;
        Ok(())
    }

    /// A role may only grant what its writer could grant a child token:
    /// policies the writer holds, unless the writer has `sudo` on the role's
    /// path (or is root).
    async fn check_role_grant(&self, id: &crate::tokens::Identity, role_path: &str, policies: &[String]) -> Result<()> {
        if id.is_root() {
            return Ok(());
        }
        let missing: Vec<&str> = policies
            .iter()
            .filter(|p| p.as_str() != DEFAULT_POLICY && !id.policies.contains(p))
            .map(String::as_str)
            .collect();
        if missing.is_empty() || self.decide_with(id, role_path, Capability::Sudo, None).await.is_ok() {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "a role can only grant policies its writer holds (or with sudo on {role_path}); the caller does not hold {}",
            missing.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
        )))
    }

    pub async fn read_auth_role(&self, caller: &Caller, path: &str, role: &str) -> Result<Settings> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        let role = normalize_name(role)?;
        self.authorize(caller, &id, &format!("auth/{norm}role/{role}"), Capability::Read).await?;
        let mount = self.auth_mount(&*self.unsealed()?, &norm)?;
        self.read_settings(&format!("{}{role}", role_prefix(&mount.id)))
            .await?
            .ok_or_else(|| Error::NotFound(format!("no role {role:?} at auth/{norm}")))
    }

    pub async fn list_auth_roles(&self, caller: &Caller, path: &str) -> Result<Vec<String>> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        self.authorize(caller, &id, &format!("auth/{norm}role"), Capability::List).await?;
        let mount = self.auth_mount(&*self.unsealed()?, &norm)?;
        let prefix = role_prefix(&mount.id);
        Ok(self
            .barrier
            .list(&prefix, None, usize::MAX)
            .await?
            .into_iter()
            .map(|k| k.trim_start_matches(&prefix).to_string())
            .collect())
    }

    pub async fn delete_auth_role(&self, caller: &Caller, path: &str, role: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let norm = normalize_path(path)?;
        let role = normalize_name(role)?;
        self.authorize(caller, &id, &format!("auth/{norm}role/{role}"), Capability::Delete).await?;
        let mount = self.auth_mount(&*self.unsealed()?, &norm)?;
        let mut batch = WriteBatch::new();
        batch.delete(format!("{}{role}", role_prefix(&mount.id)));
        self.barrier.commit(batch).await?;
        Ok(())
    }

    async fn method(&self, loaded: &Unsealed, mount: &AuthMount) -> Result<Arc<Method>> {
        let dropped = {
            let st = loaded.auth.read().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = st.parsed.get(&mount.id) {
                return Ok(m.clone());
            }
            st.dropped
        };
        let settings = self.read_settings(&config_key(&mount.id)).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!("auth/{} is not configured yet: write its config first", mount.path))
        })?;
        let method = Arc::new(Method::parse(&mount.kind, &settings).map_err(auth_error)?);
        #[cfg(test)]
        self.load_hold("auth").await;
        // A config written since this read put its own method here after its
        // commit: keep that one, never the one parsed from what was read.
        let mut st = loaded.auth.write().unwrap_or_else(|p| p.into_inner());
        if st.dropped != dropped {
            return Ok(method); // used once, not kept: it may predate another node's change
        }
        Ok(st.parsed.entry(mount.id.clone()).or_insert(method).clone())
    }

    /// Logs in with `credential` (a service-account token or an OIDC JWT)
    /// as `role`. Needs no token. A refusal is audited with its reason and
    /// answered with one generic error.
    pub async fn login(
        &self,
        caller: &Caller,
        path: &str,
        role: &str,
        credential: &str,
    ) -> Result<(Zeroizing<String>, TokenEntry)> {
        let loaded = self.unsealed()?;
        let norm = normalize_path(path)?;
        {
            let mut st = caller.state();
            st.acl_path = Some(format!("auth/{norm}login"));
        }
        let result = self.check_login(&loaded, &norm, role, credential).await;
        // The label names an enabled method's mount, never a path a caller
        // made up (each would be a new series).
        let method = {
            let st = loaded.auth.read().unwrap_or_else(|p| p.into_inner());
            match self.auth_mount_in(&st.table, &norm) {
                Ok(m) => format!("auth/{}", m.path),
                Err(_) => "unknown_mount".to_string(),
            }
        };
        let (mount, grant, table_stamp) = match result {
            Ok(v) => v,
            Err(Error::LoginRefused(reason)) => {
                // One reason for every refusal, as the caller's answer is
                // one: the metrics must not tell a missing role apart.
                self.metrics.auth_failure(&method, "refused");
                caller.set_reason(reason);
                let e = Error::LoginRefused(String::new());
                self.audit_request(caller, Some(&e)).await;
                return Err(e);
            }
            Err(e) => {
                self.metrics.auth_failure(&method, &e.code().to_ascii_lowercase());
                self.audit_request(caller, Some(&e)).await;
                return Err(e);
            }
        };
        self.audit_request(caller, None).await;
        if caller.state().audit_failed {
            return Err(Error::AuditFailed(
                "no enabled audit device could record the login, so no token was issued".into(),
            ));
        }
        let mut policies = grant.policies.clone();
        if !policies.iter().any(|p| p == DEFAULT_POLICY) {
            policies.push(DEFAULT_POLICY.into());
        }
        policies.sort();
        // Roles written before TTLs were capped at write are capped here.
        let max_ttl = if grant.max_ttl_secs == 0 {
            DEFAULT_TOKEN_TTL_SECS
        } else {
            grant.max_ttl_secs.min(DEFAULT_TOKEN_TTL_SECS)
        };
        let ttl = if grant.ttl_secs == 0 { DEFAULT_TOKEN_TTL_SECS } else { grant.ttl_secs }.min(max_ttl);
        let now = Timestamp::now();
        let after = |secs: u64| now.plus_secs(secs);
        let mut meta = grant.metadata.clone();
        meta.insert("auth_path".into(), format!("auth/{}", mount.path));
        let entry = TokenEntry {
            hash: String::new(),
            policies,
            display_name: grant.display_name.clone(),
            created: now,
            expires: Some(after(ttl)),
            parent: None,
            ttl_secs: ttl,
            max_expires: Some(after(max_ttl)),
            renewable: true,
            num_uses: 0,
            accessor: String::new(),
            meta,
            revoking: false,
        };
        // Conditioned on the auth methods' table as it was when the method
        // was looked up: a method disabled (or changed) since, here or on
        // another node, mints no token its sweep could miss.
        self.store_new_token(&loaded, entry, vec![tokens_prefix(&mount.id)], Some((AUTH_TABLE_KEY, &table_stamp))).await
    }

    async fn check_login(
        &self,
        loaded: &Unsealed,
        path: &str,
        role: &str,
        credential: &str,
    ) -> Result<(AuthMount, keybridge_auth::Grant, keybridge_barrier::Stamp)> {
        // The method and the stamp of the table it came from, together.
        let (mount, stamp) = {
            let st = loaded.auth.read().unwrap_or_else(|p| p.into_inner());
            (self.auth_mount_in(&st.table, path)?, st.stamp.clone())
        };
        if mount.disabling {
            return Err(Error::FailedPrecondition(format!("auth/{} is being disabled", mount.path)));
        }
        if credential.is_empty() || credential.len() > 64 * 1024 {
            return Err(Error::InvalidArgument("give the credential (a JWT of at most 64 KiB)".into()));
        }
        let role = normalize_name(role)?;
        let method = self.method(loaded, &mount).await?;
        let settings = self
            .read_settings(&format!("{}{role}", role_prefix(&mount.id)))
            .await?
            .ok_or_else(|| Error::LoginRefused(format!("role {role:?} does not exist at auth/{}", mount.path)))?;
        let grant = method.login(&role, &settings, credential).await.map_err(auth_error)?;
        // Roles written before root was refused at write are refused here.
        if grant.policies.iter().any(|p| p == ROOT_POLICY) {
            return Err(Error::LoginRefused(format!(
                "role {role:?} at auth/{} names the root policy; auth methods cannot create root tokens",
                mount.path
            )));
        }
        Ok((mount, grant, stamp))
    }
}

/// What no role may grant, checked when it is written: the root policy
/// (auth methods cannot create root tokens, as in Vault) and lifetimes past
/// the server's maximum token TTL.
fn check_role_terms(terms: &keybridge_auth::RoleTerms) -> Result<()> {
    if terms.policies.iter().any(|p| p == ROOT_POLICY) {
        return Err(Error::InvalidArgument(
            "policies: a login role cannot grant the root policy (auth methods cannot create root tokens)".into(),
        ));
    }
    for (field, secs) in [("ttl", terms.ttl_secs), ("max_ttl", terms.max_ttl_secs)] {
        if secs > DEFAULT_TOKEN_TTL_SECS {
            return Err(Error::InvalidArgument(format!(
                "{field}: {secs}s is past the server's maximum token TTL of {DEFAULT_TOKEN_TTL_SECS}s (768h)"
            )));
        }
    }
    Ok(())
}

/// The audit data of a login request: the role, and the credential's HMAC.
pub fn login_audit(role: &str, credential: &str) -> crate::audit::AuditData {
    vec![
        ("role".into(), AuditValue::plain(role.to_string())),
        ("jwt".into(), AuditValue::secret(credential.as_bytes())),
    ]
}
