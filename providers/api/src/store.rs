//! The `SecretStore` trait every cloud adapter implements, in the clouds'
//! own terms (version ids, stages); the gateway maps its API onto it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::names::Cloud;

/// A value as a cloud holds it: a string (Keybridge's field maps are a JSON
/// object string) or bytes. Cloned only into the read cache.
#[derive(Clone)]
pub enum CloudValue {
    String(Zeroizing<String>),
    Binary(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for CloudValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloudValue::String(s) => write!(f, "String(<{} bytes redacted>)", s.len()),
            CloudValue::Binary(b) => write!(f, "Binary(<{} bytes redacted>)", b.len()),
        }
    }
}

impl CloudValue {
    pub fn text(s: &str) -> CloudValue {
        CloudValue::String(Zeroizing::new(s.to_string()))
    }

    /// The value as text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            CloudValue::String(s) => Some(s.as_str()),
            CloudValue::Binary(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CloudValue::String(s) => s.len(),
            CloudValue::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which version to read. Always explicit: AWS reads without a stage are
/// not reliable on every implementation, so the adapter asks for a stage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The current version (AWSCURRENT, Azure's latest, GCP's `latest`).
    Current,
    /// Keybridge's version number (see [`VersionInfo::number`]).
    Number(u64),
    /// A provider version id.
    Version(String),
    /// A staging label (AWS) or an alias (GCP).
    Stage(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionInfo {
    /// The cloud's version id.
    pub id: String,
    /// Keybridge's version number: GCP's own numbers; on AWS and Azure the
    /// number Keybridge gave the version when it wrote it (in the version
    /// id on AWS, in a version tag on Azure). `None` for a version another
    /// tool wrote: it is addressed by its id.
    pub number: Option<u64>,
    /// AWS staging labels, GCP aliases.
    pub stages: Vec<String>,
    pub created: Option<SystemTime>,
    pub state: VersionState,
    /// When the cloud stops serving the version (Azure's `exp` attribute).
    pub expires: Option<SystemTime>,
}

/// A version's state, where the cloud has one (Azure's `enabled`
/// attribute, GCP's ENABLED/DISABLED/DESTROYED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VersionState {
    #[default]
    Enabled,
    /// Not readable until enabled again: Keybridge's soft delete.
    Disabled,
    /// Gone for good; the version's record stays.
    Destroyed,
}

/// A change to one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionChange {
    Disable,
    Enable,
    Destroy,
}

#[derive(Debug)]
pub struct SecretRead {
    pub version: VersionInfo,
    pub value: CloudValue,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub created: Option<SystemTime>,
    pub updated: Option<SystemTime>,
    pub tags: BTreeMap<String, String>,
    /// Scheduled for deletion (recoverable until then), if so.
    pub deletion: Option<SystemTime>,
    pub versions: Vec<VersionInfo>,
}

impl SecretInfo {
    /// The version reads without a selector get: the one labelled
    /// AWSCURRENT, else the newest (Azure's and GCP's convention).
    pub fn current(&self) -> Option<&VersionInfo> {
        self.versions.iter().find(|v| v.stages.iter().any(|s| s == "AWSCURRENT")).or_else(|| self.versions.last())
    }
}

/// What must hold for a write to go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// Create only.
    Absent,
    /// Only if the current version is this id.
    CurrentIs(String),
    /// Only if the current version has this Keybridge number.
    CurrentNumber(u64),
}

impl Precondition {
    /// Whether a write may go ahead, given the secret's current version
    /// (`None`: the secret does not exist, or has no current version). Every
    /// adapter decides and words a check-and-set conflict here.
    pub fn check(&self, name: &str, current: Option<&VersionInfo>) -> Result<()> {
        let held = match (self, current) {
            (Precondition::None, _) => true,
            (Precondition::Absent, c) => c.is_none(),
            (Precondition::CurrentIs(id), Some(c)) => &c.id == id,
            (Precondition::CurrentNumber(n), Some(c)) => c.number == Some(*n),
            (Precondition::CurrentIs(_) | Precondition::CurrentNumber(_), None) => false,
        };
        match (held, current) {
            (true, _) => Ok(()),
            (false, None) => Err(Error::cas_missing(name)),
            (false, Some(c)) if *self == Precondition::Absent => Err(Error::cas_exists(name, Some(c))),
            (false, Some(c)) => {
                let expected = match self {
                    Precondition::CurrentNumber(n) => format!("version {n}"),
                    Precondition::CurrentIs(id) => id.clone(),
                    Precondition::None | Precondition::Absent => String::new(),
                };
                Err(Error::Conflict(format!(
                    "check-and-set failed: the current version of {name} is {}, not {expected}",
                    shown(c)
                )))
            }
        }
    }
}

/// A version as a conflict names it: its number and id, or its id.
fn shown(v: &VersionInfo) -> String {
    match v.number {
        Some(n) if v.id == n.to_string() => format!("version {n}"),
        Some(n) => format!("version {n} ({})", v.id),
        None => v.id.clone(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub updated: Option<SystemTime>,
    pub tags: BTreeMap<String, String>,
    /// What the listing says of the current version, to notice a change
    /// without reading the value: AWS's current version id, Azure's update
    /// time of the current version; `None` where the listing says nothing
    /// (GCP). Compare with [`SecretStore::marker`] of a version.
    pub marker: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Listed>,
    pub next: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Recoverable: AWS's recovery window, Azure's soft delete.
    Recoverable { days: u32 },
    /// Gone at once.
    Purge,
}

/// Every failure, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A precondition (check-and-set) did not hold.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{provider} cannot {capability}")]
    Unsupported { provider: &'static str, capability: &'static str },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The cloud throttled the call; a retry after a pause can help.
    #[error("{0}")]
    Throttled(String),
    /// The cloud could not be reached or failed; a retry can help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The kind of failure as one word (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::Conflict(_) => "conflict",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Unsupported { .. } => "unsupported",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Throttled(_) => "throttled",
            Error::Unavailable(_) => "unavailable",
            Error::Failed(_) => "failed",
        }
    }

    /// A create-only write found the secret: from [`Precondition::check`],
    /// or when the cloud itself answers that the name is taken (AWS's
    /// `ResourceExistsException`, GCP's `ALREADY_EXISTS`; `current` unknown).
    pub fn cas_exists(name: &str, current: Option<&VersionInfo>) -> Error {
        Error::Conflict(match current {
            Some(c) => format!("check-and-set failed: {name} already exists; its current version is {}", shown(c)),
            None => format!("check-and-set failed: {name} already exists"),
        })
    }

    /// A write that expected a current version found no secret.
    pub fn cas_missing(name: &str) -> Error {
        Error::Conflict(format!("check-and-set failed: {name} does not exist"))
    }

    /// Whether trying the same call again can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Throttled(_) | Error::Unavailable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[async_trait::async_trait]
pub trait SecretStore: Send + Sync {
    fn cloud(&self) -> Cloud;

    /// Takes the mount's quotas, for calls the adapter makes beyond the one
    /// the rate limiter counts per operation (looks while the cloud
    /// finishes an earlier operation). [`crate::limits::Limited`] calls it
    /// once; adapters that make no such calls ignore it.
    fn attach_meter(&self, _meter: crate::limits::Meter) {}

    /// One cheap call that says whether the credentials and the target
    /// (account, vault, project) work.
    async fn check(&self) -> Result<()>;

    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead>;

    /// Writes a new version (creating the secret if needed), with `tags`
    /// on creation when given.
    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo>;

    async fn describe(&self, name: &str) -> Result<SecretInfo>;

    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page>;

    async fn delete(&self, name: &str, how: Deletion) -> Result<()>;

    /// Undoes a recoverable deletion.
    async fn restore(&self, name: &str) -> Result<()>;

    /// Disables, enables or destroys one version (by id).
    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()>;

    /// Replaces the secret's custom metadata (AWS tags, Azure tags of the
    /// current version, GCP annotations).
    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()>;

    /// The [`Listed::marker`] a listing shows while `v` is current.
    fn marker(&self, v: &VersionInfo) -> Option<String> {
        let _ = v;
        None
    }

    /// The current version and the secret's tags, with as few calls as the
    /// cloud allows (AWS: one `DescribeSecret`); `None` when the secret does
    /// not exist or is scheduled for deletion.
    async fn head(&self, name: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        match self.describe(name).await {
            Ok(info) if info.deletion.is_none() => {
                let cur = info.current().cloned().unwrap_or_default();
                Ok(Some((cur, info.tags)))
            }
            Ok(_) | Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a new version when the caller already knows its number (the
    /// current one plus one), sparing the lookups `put` makes; `tags` are
    /// the secret's on creation (and, on Azure, the new version's).
    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        let _ = number;
        self.put(name, value, &Precondition::None, tags).await
    }

    /// Writes `value` as a new version that readers of the current one do
    /// not get (AWS: labelled AWSPENDING). `key` (32 hex digits) makes a
    /// retried call find the version it already wrote.
    async fn stage(&self, name: &str, value: &CloudValue, key: &str) -> Result<VersionInfo> {
        let _ = (name, value, key);
        Err(Error::Unsupported { provider: self.cloud().name(), capability: "stage a version (no staging labels)" })
    }

    /// Makes a staged version current (AWS: AWSCURRENT moves to it and the
    /// old current becomes AWSPREVIOUS; its AWSPENDING label goes).
    async fn promote(&self, name: &str, id: &str) -> Result<()> {
        let _ = (name, id);
        Err(Error::Unsupported { provider: self.cloud().name(), capability: "promote a staged version" })
    }

    /// Drops a staged version's label (a rotation rolled back).
    async fn unstage(&self, name: &str, id: &str) -> Result<()> {
        let _ = (name, id);
        Err(Error::Unsupported { provider: self.cloud().name(), capability: "unstage a version" })
    }

    /// Retires a version that is no longer current: AWS removes its
    /// AWSPREVIOUS label; elsewhere it is disabled.
    async fn retire(&self, name: &str, id: &str) -> Result<()> {
        self.change_version(name, id, VersionChange::Disable).await
    }
}

/// A shared store is a store (the gateway keeps one per mount behind `Arc`).
#[async_trait::async_trait]
impl<T: SecretStore + ?Sized> SecretStore for std::sync::Arc<T> {
    fn cloud(&self) -> Cloud {
        (**self).cloud()
    }
    fn attach_meter(&self, meter: crate::limits::Meter) {
        (**self).attach_meter(meter)
    }
    async fn check(&self) -> Result<()> {
        (**self).check().await
    }
    async fn get(&self, name: &str, at: &Selector) -> Result<SecretRead> {
        (**self).get(name, at).await
    }
    async fn put(
        &self,
        name: &str,
        value: &CloudValue,
        pre: &Precondition,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        (**self).put(name, value, pre, tags).await
    }
    async fn describe(&self, name: &str) -> Result<SecretInfo> {
        (**self).describe(name).await
    }
    async fn list(&self, page_size: usize, page_token: Option<&str>) -> Result<Page> {
        (**self).list(page_size, page_token).await
    }
    async fn delete(&self, name: &str, how: Deletion) -> Result<()> {
        (**self).delete(name, how).await
    }
    async fn restore(&self, name: &str) -> Result<()> {
        (**self).restore(name).await
    }
    async fn change_version(&self, name: &str, id: &str, change: VersionChange) -> Result<()> {
        (**self).change_version(name, id, change).await
    }
    async fn set_tags(&self, name: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        (**self).set_tags(name, tags).await
    }
    fn marker(&self, v: &VersionInfo) -> Option<String> {
        (**self).marker(v)
    }
    async fn head(&self, name: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        (**self).head(name).await
    }
    async fn put_numbered(
        &self,
        name: &str,
        value: &CloudValue,
        number: u64,
        tags: Option<&BTreeMap<String, String>>,
    ) -> Result<VersionInfo> {
        (**self).put_numbered(name, value, number, tags).await
    }
    async fn stage(&self, name: &str, value: &CloudValue, key: &str) -> Result<VersionInfo> {
        (**self).stage(name, value, key).await
    }
    async fn promote(&self, name: &str, id: &str) -> Result<()> {
        (**self).promote(name, id).await
    }
    async fn unstage(&self, name: &str, id: &str) -> Result<()> {
        (**self).unstage(name, id).await
    }
    async fn retire(&self, name: &str, id: &str) -> Result<()> {
        (**self).retire(name, id).await
    }
}

/// The number after the highest of `numbers`: version numbers are read back
/// from the cloud (tags, version ids) where anyone with write access there
/// could have set `u64::MAX`.
pub fn next_number(name: &str, numbers: impl Iterator<Item = u64>) -> Result<u64> {
    numbers.max().unwrap_or(0).checked_add(1).ok_or_else(|| {
        Error::Failed(format!(
            "{name}: its highest version number is the largest there can be; no version can follow it"
        ))
    })
}

#[cfg(test)]
mod check_and_set_tests {
    use super::*;

    fn v(id: &str, number: Option<u64>) -> VersionInfo {
        VersionInfo { id: id.into(), number, ..Default::default() }
    }

    fn conflict(r: Result<()>) -> String {
        match r {
            Err(Error::Conflict(m)) if m.starts_with("check-and-set failed: ") => m,
            other => panic!("a check-and-set conflict expected, got {other:?}"),
        }
    }

    #[test]
    fn each_precondition_holds_or_names_what_is_there() {
        let cur = v("kbv2-abc", Some(2));
        for pre in [Precondition::None, Precondition::CurrentIs("kbv2-abc".into()), Precondition::CurrentNumber(2)] {
            pre.check("s", Some(&cur)).unwrap();
        }
        Precondition::None.check("s", None).unwrap();
        Precondition::Absent.check("s", None).unwrap();

        let m = conflict(Precondition::Absent.check("s", Some(&cur)));
        assert!(m.contains("s already exists") && m.contains("version 2 (kbv2-abc)"), "{m}");
        let m = conflict(Precondition::CurrentIs("kbv1-abc".into()).check("s", Some(&cur)));
        assert!(m.ends_with("the current version of s is version 2 (kbv2-abc), not kbv1-abc"), "{m}");
        let m = conflict(Precondition::CurrentNumber(1).check("s", Some(&v("7", Some(7)))));
        assert!(m.ends_with("the current version of s is version 7, not version 1"), "{m}");
        let m = conflict(Precondition::CurrentNumber(1).check("s", Some(&v("other-tool", None))));
        assert!(m.ends_with("is other-tool, not version 1"), "{m}");
        for pre in [Precondition::CurrentIs("x".into()), Precondition::CurrentNumber(1)] {
            assert_eq!(conflict(pre.check("s", None)), "check-and-set failed: s does not exist");
        }
        assert_eq!(conflict(Err(Error::cas_exists("s", None))), "check-and-set failed: s already exists");
    }
}

#[cfg(test)]
mod next_number_tests {
    use super::*;

    #[test]
    fn the_next_number_never_wraps() {
        assert_eq!(next_number("s", [1, 7, 3].into_iter()).unwrap(), 8);
        assert_eq!(next_number("s", std::iter::empty()).unwrap(), 1);
        let e = next_number("s", [u64::MAX].into_iter()).unwrap_err();
        assert!(matches!(e, Error::Failed(m) if m.contains("largest")));
    }
}
