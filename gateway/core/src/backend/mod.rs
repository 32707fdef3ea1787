//! One interface for every mount: the local versioned store ([`kv`]), a
//! cloud's secret manager ([`cloud`]) and a plugin engine ([`plugin`]).
//! [`Core::route`](crate::Core) finds a path's mount and opens its
//! [`Backend`]; the Secrets API, the reconciler and rotations then call the
//! methods here and never look at which kind of mount it is. A new kind of
//! mount (a built-in engine) is a variant here and nowhere else.

pub mod cloud;
pub mod kv;
pub(crate) mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_provider_api::Selector;
use keybridge_provider_api::capabilities::Capabilities;

use crate::plugins::PluginEngine;
use crate::value::SecretValue;
use crate::{Error, Result};
use cloud::CloudMount;
use keybridge_reconciler::MARKER_TAG;
pub use keybridge_reconciler::{Current, Head, Listing, Reach, STAGING_SUFFIX, Staged, Staging};
use kv::{Kv, ReadSecret, SecretMeta, VersionMeta};

/// Where a secret path leads.
pub(crate) enum Backend<'a> {
    /// The local versioned store, behind the barrier.
    Kv(Kv<'a>),
    /// A cloud's secret manager, through its adapter.
    Cloud(Arc<CloudMount>),
    /// A plugin engine, reached by path through the Logical API.
    Plugin(Arc<dyn PluginEngine>),
}

fn not_found_ok(r: Result<()>) -> Result<()> {
    match r {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Backend<'_> {
    /// Refuses a plugin mount for the Secrets API (its paths are the
    /// engine's, reached through the Logical API).
    pub fn secrets_api(&self, mount_path: &str) -> Result<()> {
        match self {
            Backend::Plugin(_) => Err(Error::InvalidArgument(format!(
                "{mount_path} is a plugin mount: reach it with `keybridge read|write|delete|list` (keybridge.v1.Logical), not the KV API"
            ))),
            Backend::Kv(_) | Backend::Cloud(_) => Ok(()),
        }
    }

    fn plugin_refused(&self) -> Error {
        Error::InvalidArgument(
            "the path is on a plugin mount, whose paths are its engine's (the Logical API): \
             secrets, rules and rotations take local or cloud mounts only"
                .into(),
        )
    }

    pub fn reach(&self) -> Reach {
        match self {
            Backend::Cloud(c) => {
                let caps: Capabilities = c.capabilities();
                Reach { exact_markers: caps.exact_markers, stages_natively: caps.stages_natively }
            }
            Backend::Kv(_) | Backend::Plugin(_) => Reach { exact_markers: false, stages_natively: false },
        }
    }

    /// The ACL path below the mount that `rel` is authorized as (a cloud's
    /// `_raw/` name as the path it decodes to).
    pub fn acl_rel<'r>(&self, rel: &'r str) -> Result<std::borrow::Cow<'r, str>> {
        match self {
            Backend::Cloud(c) => c.acl_rel(rel),
            Backend::Kv(_) | Backend::Plugin(_) => Ok(std::borrow::Cow::Borrowed(rel)),
        }
    }

    /// Checks a value against the backend's own limits before any call.
    pub fn check_value(&self, value: &SecretValue, gateway_max: usize) -> Result<()> {
        match self {
            Backend::Cloud(c) => {
                value.validate(gateway_max)?;
                c.check_value(value)
            }
            // The local store checks against the mount's limit as it writes.
            Backend::Kv(_) | Backend::Plugin(_) => Ok(()),
        }
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Backend::Kv(kv) => Ok(kv.describe(rel).await.is_ok()),
            Backend::Cloud(c) => c.exists(rel).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Reads a version by number, or on clouds by version id or stage.
    pub async fn read(&self, rel: &str, at: &Selector) -> Result<ReadSecret> {
        match self {
            Backend::Kv(kv) => match at {
                Selector::Current => kv.get(rel, None).await,
                Selector::Number(n) => kv.get(rel, Some(*n)).await,
                Selector::Version(_) | Selector::Stage(_) => Err(Error::InvalidArgument(
                    "the local store has no provider version ids or stages; select a version by number".into(),
                )),
            },
            Backend::Cloud(c) => c.get(rel, at).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// The current value with its number and id, or `None` when there is
    /// none: one call on every backend.
    pub async fn read_current(&self, rel: &str) -> Result<Option<Current>> {
        match self.read(rel, &Selector::Current).await {
            Ok(r) => {
                let id = match self {
                    Backend::Cloud(_) => r.meta.provider_id.clone(),
                    _ => r.version.to_string(),
                };
                Ok(Some(Current { number: r.version, id, value: r.value }))
            }
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The current version's id, number, marker and tags, without its value.
    pub async fn head(&self, rel: &str) -> Result<Option<Head>> {
        match self {
            Backend::Kv(kv) => match kv.describe(rel).await {
                Ok(m) => {
                    let id = m.current_version.to_string();
                    Ok(Some(Head {
                        marker: Some(id.clone()),
                        id,
                        number: Some(m.current_version),
                        tags: m.custom_metadata,
                    }))
                }
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            Backend::Cloud(c) => {
                Ok(c.head(rel).await?.map(|(v, tags)| Head { marker: c.marker(&v), number: v.number, id: v.id, tags }))
            }
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    pub async fn write(&self, rel: &str, value: &SecretValue, cas: Option<u64>) -> Result<(u64, VersionMeta)> {
        match self {
            Backend::Kv(kv) => kv.put(rel, value, cas).await,
            Backend::Cloud(c) => c.put(rel, value, cas).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Writes a replica and tags it as `rule_id`'s when it is not yet; its
    /// version id and listing marker.
    pub async fn write_replica(
        &self,
        rel: &str,
        value: &SecretValue,
        rule_id: &str,
        existing: Option<&Head>,
    ) -> Result<(String, Option<String>)> {
        let (tags, number) = (existing.map(|c| &c.tags), existing.and_then(|c| c.number));
        match self {
            Backend::Kv(kv) => {
                let (n, _) = kv.put(rel, value, None).await?;
                if tags.and_then(|t| t.get(MARKER_TAG)).map(String::as_str) != Some(rule_id) {
                    let mut tags = tags.cloned().unwrap_or_default();
                    tags.insert(MARKER_TAG.to_string(), rule_id.to_string());
                    kv.put_metadata(rel, Some(tags), None, None).await?;
                }
                Ok((n.to_string(), Some(n.to_string())))
            }
            Backend::Cloud(c) => c.write_replica(rel, value, rule_id, tags, number).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    pub async fn describe(&self, rel: &str) -> Result<SecretMeta> {
        match self {
            Backend::Kv(kv) => kv.describe(rel).await,
            Backend::Cloud(c) => c.describe(rel).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Deletes every version and the metadata; on clouds recoverably unless
    /// `purge` (the local store deletes for good).
    pub async fn delete_all(&self, rel: &str, purge: bool) -> Result<()> {
        match self {
            Backend::Kv(kv) => kv.delete_all(rel).await,
            Backend::Cloud(c) => c.delete_all(rel, purge).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Deletes a replica: recoverably where the backend can, else for good.
    pub async fn delete_replica(&self, rel: &str) -> Result<()> {
        match self.delete_all(rel, false).await {
            Err(Error::Unimplemented(_)) => self.delete_all(rel, true).await,
            other => other,
        }
    }

    /// What a cloud mount needs of a version change: the versions named,
    /// unless it is a soft delete (of the current version). Checked before
    /// the change is journaled.
    pub fn check_versions_change(&self, versions: &[u64], change: Change) -> Result<()> {
        if let Backend::Cloud(_) = self
            && versions.is_empty()
            && change != Change::SoftDelete
        {
            let what = if change == Change::Undelete { "undelete" } else { "destroy" };
            return Err(Error::InvalidArgument(format!("give the versions to {what}")));
        }
        Ok(())
    }

    /// Soft-deletes, undeletes or destroys versions by number. A cloud
    /// mount needs the numbers given (the current version, when `versions`
    /// is empty, only for a soft delete).
    pub async fn change_versions(&self, rel: &str, versions: &[u64], change: Change) -> Result<()> {
        use keybridge_provider_api::VersionChange as C;
        match self {
            Backend::Kv(kv) => {
                let local = match change {
                    Change::SoftDelete => kv::VersionChange::SoftDelete,
                    Change::Undelete => kv::VersionChange::Undelete,
                    Change::Destroy => kv::VersionChange::Destroy,
                };
                kv.change_versions(rel, versions, local).await
            }
            Backend::Cloud(c) => {
                self.check_versions_change(versions, change)?;
                let cloud = match change {
                    Change::SoftDelete => C::Disable,
                    Change::Undelete => C::Enable,
                    Change::Destroy => C::Destroy,
                };
                c.change_versions(rel, versions, cloud).await
            }
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Restores a whole secret deleted recoverably.
    pub async fn restore(&self, rel: &str) -> Result<()> {
        match self {
            Backend::Kv(_) => Err(Error::Unimplemented(
                "the local store deletes all versions of a secret for good; there is nothing to restore".into(),
            )),
            Backend::Cloud(c) => c.restore(rel).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    pub async fn put_metadata(
        &self,
        rel: &str,
        custom: Option<BTreeMap<String, String>>,
        max_versions: Option<u32>,
        cas_required: Option<bool>,
    ) -> Result<SecretMeta> {
        match self {
            Backend::Kv(kv) => kv.put_metadata(rel, custom, max_versions, cas_required).await,
            Backend::Cloud(c) => c.put_metadata(rel, custom, max_versions, cas_required).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// One page of the names below `folder`; the next page's token.
    pub async fn list(
        &self,
        folder: &str,
        page_size: usize,
        page_token: &str,
        recursive: bool,
    ) -> Result<(Vec<String>, String)> {
        match self {
            Backend::Kv(kv) => kv.list(folder, page_size, page_token, recursive).await,
            Backend::Cloud(c) => c.list(folder, page_size, page_token, recursive).await,
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// One page of the secrets below `folder` (relative, with its `/`),
    /// recursively, with the markers a cloud's listing shows.
    pub async fn list_page(&self, folder: &str, token: &str) -> Result<Listing> {
        match self {
            Backend::Cloud(c) => c.list_page(folder, token).await,
            _ => {
                let (keys, next) = self.list(folder, kv::MAX_PAGE_SIZE, token, true).await?;
                let names = keys.into_iter().map(|k| (format!("{folder}{k}"), None)).collect();
                Ok(Listing { names, markers: false, next })
            }
        }
    }

    // ----- rotation ---------------------------------------------------------

    /// Stages `value` so readers of the current version do not get it yet.
    /// `key` names the staging (the rotation's id).
    pub async fn stage(&self, rel: &str, value: &SecretValue, key: &str, path: &str) -> Result<Staged> {
        match self {
            Backend::Kv(kv) => {
                let old = kv.describe(rel).await.map(|m| m.current_version.to_string()).unwrap_or_default();
                Ok(Staged { how: Staging::Held, old_id: old, staged_id: String::new() })
            }
            Backend::Cloud(c) => {
                let old = self.head(rel).await?.map(|h| h.id).ok_or_else(|| {
                    Error::FailedPrecondition(format!("{path} does not exist yet; let it replicate first"))
                })?;
                if self.reach().stages_natively {
                    let id = c.stage(rel, value, key).await?;
                    Ok(Staged { how: Staging::Label, old_id: old, staged_id: id })
                } else {
                    let (_, meta) = c.put(&format!("{rel}{STAGING_SUFFIX}"), value, None).await?;
                    Ok(Staged { how: Staging::Beside, old_id: old, staged_id: meta.provider_id })
                }
            }
            Backend::Plugin(_) => Err(self.plugin_refused()),
        }
    }

    /// Makes the staged value current (idempotent: a copy whose current
    /// value `holds` already is left as it is); the new version's id and
    /// listing marker.
    pub async fn promote(
        &self,
        rel: &str,
        how: Staging,
        staged_id: &str,
        value: &SecretValue,
        holds: impl Fn(&SecretValue) -> bool,
    ) -> Result<(String, Option<String>)> {
        match (self, how) {
            (Backend::Cloud(c), Staging::Label) => c.promote(rel, staged_id).await?,
            (Backend::Kv(_), _) => {
                let n = match self.read_current(rel).await? {
                    Some(now) if holds(&now.value) => now.number,
                    _ => self.write(rel, value, None).await?.0,
                };
                return Ok((n.to_string(), Some(n.to_string())));
            }
            (Backend::Cloud(_), _) => {
                if !self.read_current(rel).await?.is_some_and(|now| holds(&now.value)) {
                    self.write(rel, value, None).await?;
                }
                not_found_ok(self.delete_all(&format!("{rel}{STAGING_SUFFIX}"), true).await)?;
            }
            (Backend::Plugin(_), _) => return Err(self.plugin_refused()),
        }
        let head = self.head(rel).await?;
        Ok(head.map(|h| (h.id, h.marker)).unwrap_or_default())
    }

    /// Undoes a staging that was not promoted.
    pub async fn unstage(&self, rel: &str, how: Staging, staged_id: &str) -> Result<()> {
        match (self, how) {
            (Backend::Cloud(c), Staging::Label) => c.unstage(rel, staged_id).await,
            (Backend::Cloud(_), Staging::Beside) => {
                not_found_ok(self.delete_all(&format!("{rel}{STAGING_SUFFIX}"), true).await)
            }
            _ => Ok(()),
        }
    }

    /// Retires the version a promoted rotation replaced, where the backend
    /// keeps one apart (a cloud's previous version).
    pub async fn retire(&self, rel: &str, old_id: &str) -> Result<()> {
        match self {
            Backend::Cloud(c) => not_found_ok(c.retire(rel, old_id).await),
            Backend::Kv(_) | Backend::Plugin(_) => Ok(()),
        }
    }
}

/// A change to single versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    SoftDelete,
    Undelete,
    Destroy,
}

impl crate::Core {
    /// Finds the mount serving a full path and opens its backend; the path
    /// relative to the mount. The one router of every API: the Secrets API,
    /// the Logical API, the reconciler and rotations.
    pub(crate) async fn route<'a, 't>(
        &'a self,
        table: &'t crate::mounts::MountTable,
        path: &'t str,
    ) -> Result<(Backend<'a>, &'t crate::mounts::MountEntry, &'t str)> {
        // Not naming the mounts: `sys/mounts` read is what lists them.
        let (mount, rel) = table.route(path).ok_or_else(|| {
            Error::NotFound(format!("no mount serves {path:?}; `keybridge mount list` shows the mounts"))
        })?;
        Ok((self.open_backend(mount).await?, mount, rel))
    }

    /// A mount's backend: cloud clients and plugin engines are built on
    /// first use after unseal and kept.
    async fn open_backend<'a>(&'a self, mount: &crate::mounts::MountEntry) -> Result<Backend<'a>> {
        if keybridge_provider_api::Cloud::from_kind(&mount.kind).is_some() {
            return Ok(Backend::Cloud(self.cloud_mount(mount).await?));
        }
        if self.is_engine_kind(&mount.kind) {
            return Ok(Backend::Plugin(self.plugin_backend(mount).await?));
        }
        let settings = crate::mounts::local_settings(&mount.config)?;
        let cap = if settings.max_value_bytes > 0 {
            settings.max_value_bytes.min(self.config.max_value_bytes)
        } else {
            self.config.max_value_bytes
        };
        Ok(Backend::Kv(Kv {
            barrier: &self.barrier,
            prefix: mount.storage_prefix(),
            mount_path: mount.path.clone(),
            settings,
            max_value_bytes: cap,
            write_locks: &self.write_locks,
        }))
    }
}
