//! The Secrets API: every operation on a secret path, routed to its
//! mount's [`Backend`]. Each authenticates, validates the path, authorizes
//! on `<mount><area>/<rel>` and then calls the backend; writes and deletes
//! are journaled for the reconciler first.

use std::collections::{BTreeMap, HashMap};

use keybridge_provider_api::Selector;

use crate::audit::Caller;
use crate::backend::kv::{ReadSecret, SecretMeta, VersionMeta};
use crate::backend::{Backend, Change};
use crate::core::{Capability, Core};
use crate::mounts::MountTable;
use crate::path::{validate_folder_path, validate_secret_path};
use crate::tokens::Identity;
use crate::value::SecretValue;
use crate::{Error, Result};

impl Core {
    /// The ACL path of a secret operation: `<mount><area>/<rel>`, with a
    /// cloud's `_raw/` name as the path it decodes to.
    pub(crate) async fn secret_acl_path(&self, path: &str, area: &str) -> Result<String> {
        let table = self.unsealed()?.table();
        let (backend, mount, rel) = self.route(&table, path).await?;
        backend.secrets_api(&mount.path)?;
        Ok(format!("{}{area}/{}", mount.path, backend.acl_rel(rel)?))
    }

    /// Authenticates, validates the path, routes it to a secret (not the
    /// mount itself) and authorizes `cap` on `<mount><area>/<rel>`.
    async fn secret_op<'a>(
        &'a self,
        table: &'a MountTable,
        caller: &Caller,
        path: &'a str,
        area: &str,
        cap: Capability,
        value: Option<&SecretValue>,
    ) -> Result<(Backend<'a>, &'a str, Identity)> {
        let id = self.authenticate(caller).await?;
        validate_secret_path(path)?;
        let (engine, mount, rel) = self.route(table, path).await?;
        engine.secrets_api(&mount.path)?;
        if rel.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{path:?} is the mount {} itself; give a secret path below it, such as {}app/db",
                mount.path, mount.path
            )));
        }
        // A cloud's name and size limits are checked before any call to it;
        // a `_raw/` name is authorized as the path it decodes to.
        let acl_rel = engine.acl_rel(rel)?;
        if let Some(v) = value {
            engine.check_value(v, self.config.max_value_bytes)?;
        }
        let acl_path = format!("{}{area}/{acl_rel}", mount.path);
        // Vault's existence check: writing a secret (or the metadata of one)
        // that does not exist yet needs `create`, not `update` (checked for
        // root too, so the audit record names the capability the write
        // used). A caller that holds neither is refused before the check, so
        // a refusal tells nothing about whether the secret exists.
        let cap = if cap == Capability::Update && (area == "data" || area == "metadata") {
            self.write_capability(caller, &id, &acl_path, false, || engine.exists(rel)).await?
        } else {
            cap
        };
        self.authorize(caller, &id, &acl_path, cap).await?;
        Ok((engine, rel, id))
    }

    pub async fn put(
        &self,
        caller: &Caller,
        path: &str,
        value: &SecretValue,
        cas: Option<u64>,
    ) -> Result<(u64, VersionMeta)> {
        let table = self.unsealed()?.table();
        let (engine, rel, _) = self.secret_op(&table, caller, path, "data", Capability::Update, Some(value)).await?;
        // Replication is journaled before the write it announces.
        let rules_seen = self.sync.rules_ticket();
        let mut announced = self.sync_announce(path).await?;
        let r = match engine {
            // The local store serialises its own writes.
            Backend::Kv(_) => engine.write(rel, value, cas).await,
            _ => {
                // One writer per secret at a time through this gateway, so
                // check-and-set and version numbers hold among its callers.
                let _guard = self.path_lock(path).await;
                engine.write(rel, value, cas).await
            }
        };
        // A rule created while this write ran may have scanned before the
        // write landed: announce again, so the new rule sees it.
        if r.is_ok() && !announced.any() && self.sync.rules_changed_since(rules_seen) {
            announced.extend(self.sync_announce(path).await.unwrap_or_default());
        }
        self.sync_touch(path, &announced).await;
        if announced.any() {
            self.sync_wake();
        }
        if let Ok((v, meta)) = &r {
            self.sync.publish(path, "put", *v, &meta.provider_id);
        }
        r
    }

    pub(crate) async fn path_lock(&self, path: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.path_locks.lock(path).await
    }

    pub async fn get(&self, caller: &Caller, path: &str, version: Option<u64>) -> Result<ReadSecret> {
        let at = version.map_or(Selector::Current, Selector::Number);
        self.get_at(caller, path, &at).await
    }

    /// Reads a version by number, or on cloud mounts by provider version id
    /// or stage/alias.
    pub async fn get_at(&self, caller: &Caller, path: &str, at: &Selector) -> Result<ReadSecret> {
        let table = self.unsealed()?.table();
        let (backend, rel, _) = self.secret_op(&table, caller, path, "data", Capability::Read, None).await?;
        backend.read(rel, at).await
    }

    pub async fn describe(&self, caller: &Caller, path: &str) -> Result<SecretMeta> {
        let table = self.unsealed()?.table();
        let (backend, rel, _) = self.secret_op(&table, caller, path, "metadata", Capability::Read, None).await?;
        backend.describe(rel).await
    }

    pub async fn delete(&self, caller: &Caller, path: &str, versions: &[u64], all: bool) -> Result<()> {
        self.delete_opts(caller, path, versions, all, false).await
    }

    /// Subscribes to the events of one secret (needs `read` on it).
    pub async fn watch_secret(
        &self,
        caller: &Caller,
        path: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<keybridge_reconciler::SecretEvent>> {
        let table = self.unsealed()?.table();
        self.secret_op(&table, caller, path, "data", Capability::Read, None).await?;
        Ok(self.sync.subscribe())
    }

    /// `all`: every version and the metadata; on cloud mounts recoverable
    /// (AWS's recovery window, Azure's soft delete) unless `purge`.
    pub async fn delete_opts(
        &self,
        caller: &Caller,
        path: &str,
        versions: &[u64],
        all: bool,
        purge: bool,
    ) -> Result<()> {
        let table = self.unsealed()?.table();
        if purge && !all {
            return Err(Error::InvalidArgument("purge applies to deleting all versions; set all_versions too".into()));
        }
        if all {
            if !versions.is_empty() {
                return Err(Error::InvalidArgument("give either versions or all_versions, not both".into()));
            }
            let (backend, rel, _) = self.secret_op(&table, caller, path, "metadata", Capability::Delete, None).await?;
            return self.journaled(path, backend.delete_all(rel, purge)).await;
        }
        let (area, cap) =
            if versions.is_empty() { ("data", Capability::Delete) } else { ("delete", Capability::Update) };
        let (backend, rel, _) = self.secret_op(&table, caller, path, area, cap, None).await?;
        self.journaled(path, backend.change_versions(rel, versions, Change::SoftDelete)).await
    }

    pub async fn undelete(&self, caller: &Caller, path: &str, versions: &[u64]) -> Result<()> {
        self.versions_change(caller, path, versions, "undelete", Change::Undelete).await
    }

    /// Undoes or destroys versions (`area` names the operation and its
    /// policy path). Journaled first.
    async fn versions_change(
        &self,
        caller: &Caller,
        path: &str,
        versions: &[u64],
        area: &str,
        change: Change,
    ) -> Result<()> {
        let table = self.unsealed()?.table();
        let (backend, rel, _) = self.secret_op(&table, caller, path, area, Capability::Update, None).await?;
        // Refused before anything is journaled.
        backend.check_versions_change(versions, change)?;
        self.journaled(path, backend.change_versions(rel, versions, change)).await
    }

    /// Restores a whole secret deleted recoverably on a cloud mount.
    pub async fn restore_secret(&self, caller: &Caller, path: &str) -> Result<()> {
        let table = self.unsealed()?.table();
        let (backend, rel, _) = self.secret_op(&table, caller, path, "undelete", Capability::Update, None).await?;
        if let Backend::Kv(_) = backend {
            // Refused before anything is journaled.
            return backend.restore(rel).await;
        }
        self.journaled(path, backend.restore(rel)).await
    }

    pub async fn destroy(&self, caller: &Caller, path: &str, versions: &[u64]) -> Result<()> {
        self.versions_change(caller, path, versions, "destroy", Change::Destroy).await
    }

    pub async fn put_metadata(
        &self,
        caller: &Caller,
        path: &str,
        custom: Option<BTreeMap<String, String>>,
        max_versions: Option<u32>,
        cas_required: Option<bool>,
    ) -> Result<SecretMeta> {
        let table = self.unsealed()?.table();
        let (backend, rel, _) = self.secret_op(&table, caller, path, "metadata", Capability::Update, None).await?;
        backend.put_metadata(rel, custom, max_versions, cas_required).await
    }

    pub async fn list(
        &self,
        caller: &Caller,
        path: &str,
        page_size: usize,
        page_token: &str,
        recursive: bool,
    ) -> Result<(Vec<String>, String)> {
        let id = self.authenticate(caller).await?;
        let folder = validate_folder_path(path)?;
        let table = self.unsealed()?.table();
        let (engine, mount, rel) = self.route(&table, &folder).await?;
        engine.secrets_api(&mount.path)?;
        self.authorize(caller, &id, &format!("{}metadata/{rel}", mount.path), Capability::List).await?;
        let list = |token: String| {
            let engine = &engine;
            async move { engine.list(rel, page_size, &token, recursive).await }
        };
        // Raw cloud names are flat: `_raw/` has no folders below it.
        if !recursive || id.is_root() || rel.starts_with(crate::backend::cloud::RAW_FOLDER) {
            return list(page_token.to_string()).await;
        }
        // A recursive listing shows what listing each folder would: a name
        // stays only if `list` is granted on every folder between the one
        // asked for and it. Pages are filled from as many of the engine's
        // pages as it takes, and the next page's token is the last name
        // shown: never a name the caller may not see.
        let page = crate::backend::kv::page_size_of(page_size)?;
        let mut granted: HashMap<String, bool> = HashMap::new();
        let mut kept: Vec<String> = Vec::new();
        let mut token = page_token.to_string();
        loop {
            let (keys, next) = list(token).await?;
            'keys: for k in keys {
                let raw = k.starts_with(crate::backend::cloud::RAW_FOLDER);
                for (i, _) in k.match_indices('/') {
                    if raw && i + 1 > crate::backend::cloud::RAW_FOLDER.len() {
                        break;
                    }
                    let sub = format!("{}metadata/{rel}{}", mount.path, &k[..=i]);
                    let ok = match granted.get(&sub) {
                        Some(ok) => *ok,
                        None => {
                            let ok = self.decide(&id, &sub, Capability::List).await.is_ok();
                            granted.insert(sub, ok);
                            ok
                        }
                    };
                    if !ok {
                        continue 'keys;
                    }
                }
                kept.push(k);
            }
            if kept.len() >= page || next.is_empty() {
                let more = kept.len() > page || !next.is_empty();
                kept.truncate(page);
                let next = if more { kept.last().cloned().unwrap_or_default() } else { String::new() };
                return Ok((kept, next));
            }
            token = next;
        }
    }
}
