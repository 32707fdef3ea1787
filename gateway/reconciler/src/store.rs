//! What the reconciler asks of a mount, and what it asks of the host that
//! owns the mounts. The core implements both: [`Store`] for its backend
//! facade, [`Host`] for routing, locks, leases and audited writes.

use std::collections::BTreeMap;

use keybridge_value::SecretValue;
use serde::{Deserialize, Serialize};

use crate::Result;

/// What the reconciler branches on. The local store's are fixed; a cloud's
/// come from the provider capability table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    /// The listing's marker tells every version apart.
    pub exact_markers: bool,
    /// The backend stages a version readers of the current one do not get.
    pub stages_natively: bool,
}

/// A secret's current version, read with its value: everything the API and
/// the reconciler need from one call.
pub struct Current {
    pub value: SecretValue,
    /// Keybridge's version number (0 where a cloud's version has none).
    pub number: u64,
    /// The backend's id of the version: the cloud's version id, or the
    /// number on the local store.
    pub id: String,
}

/// A secret's current version without its value.
pub struct Head {
    pub id: String,
    /// Keybridge's number of the current version, when it has one.
    pub number: Option<u64>,
    /// The marker a listing shows for this version.
    pub marker: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// How a rotation staged a copy's new value (kept in the rotation's record
/// under these names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// Not staged yet.
    #[default]
    #[serde(rename = "")]
    Unstaged,
    /// Nothing staged: the new value is written at promotion (the local
    /// store, whose writes are atomic).
    Held,
    /// A version under a staging label the cloud keeps (AWS's AWSPENDING).
    Label,
    /// A secret beside the copy (`<name>.kb-pending`), on clouds without
    /// staging labels.
    Beside,
}

impl Staging {
    pub fn name(self) -> &'static str {
        match self {
            Staging::Unstaged => "",
            Staging::Held => "held",
            Staging::Label => "label",
            Staging::Beside => "beside",
        }
    }
}

/// A staged copy: how, the version it replaces and the staged version.
pub struct Staged {
    pub how: Staging,
    pub old_id: String,
    pub staged_id: String,
}

/// The name a staged value is kept under beside its secret.
pub const STAGING_SUFFIX: &str = ".kb-pending";

/// One mount, as the reconciler uses it. `rel` is a path within the mount;
/// `folder` a folder within it (`""` for the whole mount).
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    fn reach(&self) -> Reach;
    /// The current value with its number and id; `None` when there is none.
    async fn read_current(&self, rel: &str) -> Result<Option<Current>>;
    /// The current version's id, number, marker and tags, without its value.
    async fn head(&self, rel: &str) -> Result<Option<Head>>;
    /// Writes a replica and tags it as `rule_id`'s when it is not yet; its
    /// version id and listing marker.
    async fn write_replica(
        &self,
        rel: &str,
        value: &SecretValue,
        rule_id: &str,
        existing: Option<&Head>,
    ) -> Result<(String, Option<String>)>;
    /// Deletes a replica whose source was deleted.
    async fn delete_replica(&self, rel: &str) -> Result<()>;
    /// One page of the secrets below `folder` (relative to the mount), from
    /// `token` (empty: the first page). A scan reads listings a page at a
    /// time and keeps none of them whole.
    async fn list_page(&self, folder: &str, token: &str) -> Result<Listing>;
    /// Stages `value` so readers of the current version do not get it yet.
    /// `key` names the staging (the rotation's id); `path` is for messages.
    async fn stage(&self, rel: &str, value: &SecretValue, key: &str, path: &str) -> Result<Staged>;
    /// Makes the staged value current (idempotent: a copy whose current
    /// value `holds` already is left as it is); the new version's id and
    /// listing marker.
    async fn promote(
        &self,
        rel: &str,
        how: Staging,
        staged_id: &str,
        value: &SecretValue,
        holds: &(dyn for<'v> Fn(&'v SecretValue) -> bool + Send + Sync),
    ) -> Result<(String, Option<String>)>;
    /// Undoes a staging that was not promoted.
    async fn unstage(&self, rel: &str, how: Staging, staged_id: &str) -> Result<()>;
    /// Retires the version a promoted rotation replaced, where the backend
    /// keeps one apart (a cloud's previous version).
    async fn retire(&self, rel: &str, old_id: &str) -> Result<()>;
}

/// One page of a listing.
#[derive(Default)]
pub struct Listing {
    /// Secrets relative to the mount, each with the marker the listing
    /// shows for its current version (none where it shows none).
    pub names: Vec<(String, Option<String>)>,
    /// The listing shows markers at all (a cloud's does; the local store's
    /// does not, and its secrets are cheap to describe one by one).
    pub markers: bool,
    /// The next page's token; empty after the last page.
    pub next: String,
}

/// A path routed to its mount.
pub struct Routed<'a> {
    pub store: Box<dyn Store + 'a>,
    /// The mount's path (`secret/`).
    pub mount_path: String,
    /// The path within the mount.
    pub rel: String,
}

/// A credential an engine issued for a rotation.
pub struct Issued {
    /// The credential's fields.
    pub fields: Vec<(String, zeroize::Zeroizing<String>)>,
    /// Its lease (empty: none).
    pub lease: String,
}

/// What the reconciler needs of the gateway that runs it. Everything done
/// through the host is done with the authority of the rule or rotation
/// that the API checked when it was written; the host does not check again.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    /// `Err(Sealed)` while the gateway is sealed.
    fn unsealed(&self) -> Result<()>;
    /// The id of the mount serving `path`, if one does.
    fn mount_id(&self, path: &str) -> Result<Option<String>>;
    /// The mount serving a full path, opened.
    async fn route<'a>(&'a self, path: &str) -> Result<Routed<'a>>;
    /// The lock writers of `path` share (the API's writes take it too).
    async fn path_lock<'a>(&'a self, path: &str) -> tokio::sync::MutexGuard<'a, ()>;
    /// Writes a replica's value to the rule's source (an adopt), audited as
    /// such and refused if it cannot be audited; the source's new version.
    async fn adopt(&self, source: &str, from: &str, value: &SecretValue) -> Result<u64>;
    /// Has the engine at `engine_path` issue a new credential for a
    /// rotation, with a lease that lasts until a later rotation retires it.
    async fn issue(&self, engine_path: &str) -> Result<Issued>;
    /// Revokes a lease now (the host retries it if the engine fails).
    async fn revoke_lease(&self, lease: &str, why: &str) -> Result<()>;
    /// Cloud calls per mount and kind, and the time they took.
    fn call_counts(&self) -> Vec<crate::CallCount>;
    /// Called after a load from storage and before it is cached: a seam
    /// for tests that race a load against a change.
    async fn loaded(&self, _what: &'static str) {}
}
