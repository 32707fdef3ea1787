//! Cloud mounts: the gateway's secrets API over a provider adapter.
//!
//! A mount of type `aws`, `azure` or `gcp` holds one [`CloudMount`], built
//! once (its SDK client included) when the mount is enabled or first used
//! after unseal: the adapter, wrapped in the mount's rate limits and, when
//! configured, a read-through cache. The adapter crates live behind
//! [`Providers`], which the binary supplies (one cargo feature per cloud),
//! so the core builds without any cloud SDK.
//!
//! Mapping of the API onto a cloud:
//! - Paths become cloud names by [`NameCodec`] with the mount's `prefix`;
//!   `_raw/<name>` addresses a name Keybridge's encoding did not make, and
//!   the mount's listing shows such names under `_raw/`.
//! - Field maps are stored as a JSON object string; a string that is a JSON
//!   object of strings reads back as fields, any other string as text, bytes
//!   as bytes.
//! - Version numbers are the adapter's ([`VersionInfo::number`]); versions
//!   another tool wrote have none and are read by provider id or stage.
//! - Check-and-set, single-version delete/undelete/destroy, restore and
//!   purge follow the cloud's capability table; what a cloud cannot do
//!   answers UNIMPLEMENTED naming the provider and the capability.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keybridge_provider_api::cache::{CacheConfig, Cached};
use keybridge_provider_api::limits::{Limited, Limits};
use keybridge_provider_api::{
    Cloud, CloudValue, Deletion, NameCodec, Precondition, SecretInfo, SecretStore, Selector, VersionChange,
    VersionInfo, VersionState,
};
use zeroize::Zeroizing;

use super::Listing;

use crate::backend::kv::{ReadSecret, SecretMeta, VersionMeta};
use crate::value::SecretValue;
use crate::{Error, Result, Timestamp};

/// The cloud adapters this build has. The binary implements it over the
/// adapter crates it was built with.
#[async_trait::async_trait]
pub trait Providers: Send + Sync {
    /// Mount types served besides `local`, e.g. `aws`.
    fn kinds(&self) -> Vec<&'static str>;

    /// Checks an adapter's settings without IO.
    fn validate(&self, kind: &str, settings: &BTreeMap<String, String>) -> keybridge_provider_api::Result<()>;

    /// Builds the adapter and its SDK client; makes no call to the cloud.
    async fn open(
        &self,
        kind: &str,
        settings: &BTreeMap<String, String>,
    ) -> keybridge_provider_api::Result<Arc<dyn SecretStore>>;
}

/// The mount settings the gateway keeps for itself; the rest go to the
/// adapter.
const GATEWAY_KEYS: &[&str] = &[
    "prefix",
    "cache_ttl",
    "cache_max_entries",
    "rate_read",
    "rate_meta",
    "rate_list",
    "rate_write",
    "rate_max_wait_ms",
    "recovery_window_days",
];

/// Where names another tool made are listed and addressed.
pub const RAW_FOLDER: &str = "_raw/";

#[derive(Clone, Debug)]
struct GatewaySettings {
    codec: NameCodec,
    cache: Option<CacheConfig>,
    limits: Limits,
    recovery_days: u32,
}

fn split(config: &BTreeMap<String, String>) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    config.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| GATEWAY_KEYS.contains(&k.as_str()))
}

fn gateway_settings(cloud: Cloud, s: &BTreeMap<String, String>) -> Result<GatewaySettings> {
    let codec = NameCodec::new(cloud, s.get("prefix").map(String::as_str).unwrap_or(""))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let cache = match s.get("cache_ttl") {
        None => None,
        Some(t) => {
            let ttl: Duration = humantime::parse_duration(t.trim())
                .map_err(|_| Error::InvalidArgument(format!("cache_ttl {t:?} is not a duration such as 30s or 5m")))?;
            let max_entries = match s.get("cache_max_entries") {
                None => 10_000,
                Some(n) => n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Error::InvalidArgument(format!("cache_max_entries must be a positive number, not {n:?}"))
                })?,
            };
            (!ttl.is_zero()).then_some(CacheConfig { ttl, max_entries })
        }
    };
    if cache.is_none() && s.contains_key("cache_max_entries") {
        return Err(Error::InvalidArgument("cache_max_entries needs cache_ttl (the cache is off without it)".into()));
    }
    let limits = Limits::published(cloud).with_settings(s)?;
    let recovery_days = match s.get("recovery_window_days") {
        None => 30,
        Some(d) => d.trim().parse().ok().filter(|d| (7..=90).contains(d)).ok_or_else(|| {
            Error::InvalidArgument(format!("recovery_window_days must be a number of days (7 to 30 on AWS), not {d:?}"))
        })?,
    };
    Ok(GatewaySettings { codec, cache, limits, recovery_days })
}

/// A cloud mount's endpoint settings that point elsewhere than the cloud's
/// own hosts (none for other mount types).
pub fn custom_endpoints(
    kind: &str,
    config: &BTreeMap<String, String>,
) -> Vec<keybridge_provider_api::endpoints::CustomEndpoint> {
    Cloud::from_kind(kind).map(|c| keybridge_provider_api::endpoints::custom_endpoints(c, config)).unwrap_or_default()
}

/// Whether writing this cloud mount config takes `sudo` on its mount path:
/// it points at a host other than the cloud's own, or uses what belongs to
/// the gateway's host (its cloud identity, a file on it).
pub fn needs_sudo(kind: &str, config: &BTreeMap<String, String>) -> bool {
    Cloud::from_kind(kind).is_some_and(|c| {
        !keybridge_provider_api::endpoints::custom_endpoints(c, config).is_empty()
            || keybridge_provider_api::endpoints::privileged_setting(c, config).is_some()
    })
}

/// Checks a cloud mount's whole config without IO.
pub fn validate(providers: &dyn Providers, kind: &str, config: &BTreeMap<String, String>) -> Result<()> {
    let cloud =
        Cloud::from_kind(kind).ok_or_else(|| Error::InvalidArgument(format!("{kind:?} is not a cloud mount type")))?;
    let (gateway, adapter) = split(config);
    gateway_settings(cloud, &gateway)?;
    providers.validate(kind, &adapter).map_err(Error::from)
}

/// Counters of one cloud mount since it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountStats {
    pub upstream_calls: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Calls by kind: read_value, read_meta, list, write.
    pub by_kind: [(&'static str, u64); 4],
    /// The time those calls took, by kind.
    pub time_by_kind: [std::time::Duration; 4],
}

type LimitedStore = Arc<Limited<Arc<dyn SecretStore>>>;

/// In leader work (a replication, a rotation): a deposed leader starts no
/// cloud write (see `keybridge_barrier::leader_work`). A request passes.
async fn leader_check() -> Result<()> {
    Ok(keybridge_barrier::leader_work::check().await?)
}

pub struct CloudMount {
    cloud: Cloud,
    settings: GatewaySettings,
    limited: LimitedStore,
    cached: Option<Arc<Cached<LimitedStore>>>,
    /// The stack calls go through: the cache if any, then the limits.
    store: Arc<dyn SecretStore>,
}

impl CloudMount {
    /// Builds the mount's client and runs the health check when asked.
    pub async fn open(
        providers: &dyn Providers,
        kind: &str,
        config: &BTreeMap<String, String>,
        check: bool,
        observer: Arc<dyn keybridge_provider_api::limits::CallObserver>,
    ) -> Result<CloudMount> {
        let cloud = Cloud::from_kind(kind)
            .ok_or_else(|| Error::InvalidArgument(format!("{kind:?} is not a cloud mount type")))?;
        let (gateway, adapter) = split(config);
        let settings = gateway_settings(cloud, &gateway)?;
        let raw = providers.open(kind, &adapter).await?;
        let limited: LimitedStore = Arc::new(Limited::new(raw, settings.limits).observed(observer));
        let (cached, store): (_, Arc<dyn SecretStore>) = match settings.cache {
            Some(c) => {
                let cached = Arc::new(Cached::new(limited.clone(), c));
                (Some(cached.clone()), cached)
            }
            None => (None, limited.clone()),
        };
        let mount = CloudMount { cloud, settings, limited, cached, store };
        if check {
            mount.store.check().await.map_err(|e| health(cloud, e))?;
        }
        Ok(mount)
    }

    pub fn stats(&self) -> MountStats {
        let (cache_hits, cache_misses) = self.cached.as_ref().map(|c| c.counters()).unwrap_or_default();
        MountStats {
            upstream_calls: self.limited.calls(),
            cache_hits,
            cache_misses,
            by_kind: self.limited.calls_by_kind(),
            time_by_kind: self.limited.call_time_by_kind(),
        }
    }

    fn provider(&self) -> &'static str {
        self.cloud.name()
    }

    /// The cloud name of a path below the mount. A `_raw/` name must be one
    /// the cloud would take as a name and carry the mount's prefix.
    pub fn name(&self, rel: &str) -> Result<String> {
        if let Some(raw) = rel.strip_prefix(RAW_FOLDER) {
            if raw.is_empty() {
                return Err(Error::InvalidArgument(format!("give a name after {RAW_FOLDER}")));
            }
            self.settings.codec.check_raw(raw).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            return Ok(raw.to_string());
        }
        self.settings.codec.encode(rel).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// The path below the mount that a request on `rel` is authorized as: a
    /// `_raw/` name that decodes to a Keybridge path is that path (so a
    /// policy's rules on it hold whichever way it is named); one that does
    /// not stays under `_raw/`, where a policy can address it.
    pub fn acl_rel<'a>(&self, rel: &'a str) -> Result<std::borrow::Cow<'a, str>> {
        let Some(raw) = rel.strip_prefix(RAW_FOLDER) else { return Ok(rel.into()) };
        self.name(rel)?;
        Ok(match self.settings.codec.decode(raw) {
            Some(p) if !p.starts_with(RAW_FOLDER) => p.into(),
            _ => rel.into(),
        })
    }

    /// Whether the secret exists (for Vault's create/update distinction).
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.describe(&self.name(rel)?).await {
            Ok(_) => Ok(true),
            Err(keybridge_provider_api::Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses a value over the cloud's limit (as the cloud will store it).
    pub fn check_value(&self, value: &SecretValue) -> Result<()> {
        self.cloud_value(value).map(|_| ())
    }

    fn cloud_value(&self, value: &SecretValue) -> Result<CloudValue> {
        let value = to_cloud(value)?;
        let binary = matches!(value, CloudValue::Binary(_));
        let stored = self.cloud.stored_len(value.len(), binary);
        if stored > self.cloud.max_value_bytes() {
            return Err(Error::InvalidArgument(format!(
                "the value takes {stored} bytes in {}{}; its limit is {} bytes",
                self.provider(),
                if binary && stored != value.len() { " (as base64)" } else { "" },
                self.cloud.max_value_bytes()
            )));
        }
        Ok(value)
    }

    pub async fn put(&self, rel: &str, value: &SecretValue, cas: Option<u64>) -> Result<(u64, VersionMeta)> {
        leader_check().await?;
        let name = self.name(rel)?;
        let value = self.cloud_value(value)?;
        let pre = match cas {
            None => Precondition::None,
            Some(0) => Precondition::Absent,
            Some(n) => Precondition::CurrentNumber(n),
        };
        let v = self.store.put(&name, &value, &pre, None).await?;
        Ok((v.number.unwrap_or(0), version_meta(&v)))
    }

    /// What the cloud can do, from the provider capability table.
    pub fn capabilities(&self) -> keybridge_provider_api::capabilities::Capabilities {
        self.cloud.capabilities()
    }

    /// The current version (with its number, if Keybridge's) and the tags.
    pub async fn head(&self, rel: &str) -> Result<Option<(VersionInfo, BTreeMap<String, String>)>> {
        self.store.head(&self.name(rel)?).await.map_err(Error::from)
    }

    /// Writes a replica (tagged as `rule_id`'s when created, or tagged
    /// afterwards when it was someone else's); its version id and marker.
    pub async fn write_replica(
        &self,
        rel: &str,
        value: &SecretValue,
        rule_id: &str,
        existing: Option<&BTreeMap<String, String>>,
        current_number: Option<u64>,
    ) -> Result<(String, Option<String>)> {
        leader_check().await?;
        let name = self.name(rel)?;
        let value = self.cloud_value(value)?;
        let mut tags = existing.cloned().unwrap_or_default();
        let tagged = tags.get(crate::reconciler::MARKER_TAG).map(String::as_str) == Some(rule_id);
        tags.insert(crate::reconciler::MARKER_TAG.to_string(), rule_id.to_string());
        let v = match (existing, current_number) {
            // The current version is numbered: the next number is known.
            (Some(_), Some(n)) => {
                let next = keybridge_provider_api::store::next_number(&name, std::iter::once(n))?;
                self.store.put_numbered(&name, &value, next, Some(&tags)).await?
            }
            (None, _) => self.store.put(&name, &value, &Precondition::None, Some(&tags)).await?,
            (Some(_), None) => self.store.put(&name, &value, &Precondition::None, None).await?,
        };
        if existing.is_some() && !tagged {
            self.store.set_tags(&name, &tags).await?;
        }
        Ok((v.id.clone(), self.store.marker(&v)))
    }

    /// The listing marker of a version.
    pub fn marker(&self, v: &VersionInfo) -> Option<String> {
        self.store.marker(v)
    }

    /// Stages `value` as a version readers of the current one do not get.
    pub async fn stage(&self, rel: &str, value: &SecretValue, key: &str) -> Result<String> {
        leader_check().await?;
        let value = self.cloud_value(value)?;
        Ok(self.store.stage(&self.name(rel)?, &value, key).await?.id)
    }

    pub async fn promote(&self, rel: &str, id: &str) -> Result<()> {
        leader_check().await?;
        self.store.promote(&self.name(rel)?, id).await.map_err(Error::from)
    }

    pub async fn unstage(&self, rel: &str, id: &str) -> Result<()> {
        leader_check().await?;
        self.store.unstage(&self.name(rel)?, id).await.map_err(Error::from)
    }

    pub async fn retire(&self, rel: &str, id: &str) -> Result<()> {
        leader_check().await?;
        self.store.retire(&self.name(rel)?, id).await.map_err(Error::from)
    }

    /// One page of the cloud's listing: the Keybridge-named secrets on it
    /// below `folder`, each with its listing marker. A page may hold none
    /// of them and still have a next one.
    pub async fn list_page(&self, folder: &str, token: &str) -> Result<Listing> {
        let page = self.store.list(100, (!token.is_empty()).then_some(token)).await?;
        let names = page
            .items
            .into_iter()
            .filter_map(|item| {
                let p = self.settings.codec.decode(&item.name)?;
                p.starts_with(folder).then_some((p, item.marker))
            })
            .collect();
        Ok(Listing { names, markers: true, next: page.next.unwrap_or_default() })
    }

    pub async fn get(&self, rel: &str, at: &Selector) -> Result<ReadSecret> {
        let name = self.name(rel)?;
        let read = self.store.get(&name, at).await?;
        Ok(ReadSecret {
            version: read.version.number.unwrap_or(0),
            meta: version_meta(&read.version),
            custom_metadata: BTreeMap::new(),
            value: from_cloud(read.value),
        })
    }

    pub async fn describe(&self, rel: &str) -> Result<SecretMeta> {
        let info = self.store.describe(&self.name(rel)?).await?;
        Ok(secret_meta(&info))
    }

    /// Deletes the whole secret: recoverably (AWS's recovery window,
    /// Azure's soft delete) unless `purge`.
    pub async fn delete_all(&self, rel: &str, purge: bool) -> Result<()> {
        leader_check().await?;
        let name = self.name(rel)?;
        let how = if purge { Deletion::Purge } else { Deletion::Recoverable { days: self.settings.recovery_days } };
        self.store.delete(&name, how).await.map_err(|e| match e {
            keybridge_provider_api::Error::Unsupported { provider, capability } => Error::Unimplemented(format!(
                "{provider} cannot {capability}; delete with purge to remove the secret for good"
            )),
            e => e.into(),
        })
    }

    pub async fn restore(&self, rel: &str) -> Result<()> {
        leader_check().await?;
        self.store.restore(&self.name(rel)?).await.map_err(Error::from)
    }

    /// Soft-deletes, undeletes or destroys versions by number (the current
    /// one when `versions` is empty). All numbers are resolved before any
    /// change; if a change fails, the ones already made are undone where
    /// the cloud allows.
    pub async fn change_versions(&self, rel: &str, versions: &[u64], change: VersionChange) -> Result<()> {
        leader_check().await?;
        let caps = self.cloud.capabilities();
        let able = match change {
            VersionChange::Destroy => caps.version_destroy,
            _ => caps.version_soft_delete,
        };
        if !able {
            let what = match change {
                VersionChange::Destroy => "destroy single versions",
                VersionChange::Disable => {
                    "soft-delete single versions (delete the whole secret, which the cloud keeps recoverable)"
                }
                VersionChange::Enable => "undelete single versions (restore a deleted secret instead)",
            };
            return Err(Error::Unimplemented(format!("{} cannot {what}", self.provider())));
        }
        let name = self.name(rel)?;
        let info = self.store.describe(&name).await?;
        let ids: Vec<(u64, String)> = if versions.is_empty() {
            let cur = info
                .current()
                .ok_or_else(|| Error::FailedPrecondition(format!("{rel} has no current version to delete")))?;
            vec![(cur.number.unwrap_or(0), cur.id.clone())]
        } else {
            let mut ids = Vec::new();
            for n in versions {
                let v = info
                    .versions
                    .iter()
                    .find(|v| v.number == Some(*n))
                    .ok_or_else(|| Error::NotFound(format!("{rel} has no version {n} in {}", self.provider())))?;
                ids.push((*n, v.id.clone()));
            }
            ids
        };
        let undo = match change {
            VersionChange::Disable => Some(VersionChange::Enable),
            VersionChange::Enable => Some(VersionChange::Disable),
            VersionChange::Destroy => None,
        };
        for (i, (_, id)) in ids.iter().enumerate() {
            if let Err(e) = self.store.change_version(&name, id, change).await {
                if let Some(undo) = undo {
                    for (_, done) in &ids[..i] {
                        let _ = self.store.change_version(&name, done, undo).await;
                    }
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    pub async fn put_metadata(
        &self,
        rel: &str,
        custom: Option<BTreeMap<String, String>>,
        max_versions: Option<u32>,
        cas_required: Option<bool>,
    ) -> Result<SecretMeta> {
        leader_check().await?;
        if max_versions.is_some() || cas_required.is_some() {
            return Err(Error::Unimplemented(format!(
                "{} keeps its own version retention and has no per-secret check-and-set setting; \
                 max_versions and cas_required apply to local mounts only",
                self.provider()
            )));
        }
        let name = self.name(rel)?;
        if let Some(tags) = custom {
            self.store.set_tags(&name, &tags).await?;
        }
        Ok(secret_meta(&self.store.describe(&name).await?))
    }

    /// The names under `folder` (relative to the mount, with its `/`, or
    /// empty): Keybridge's decoded, others under `_raw/`. The cloud is listed
    /// in full (it has no folders); pages are cut here, the token being the
    /// last key of the previous page.
    pub async fn list(
        &self,
        folder: &str,
        page_size: usize,
        page_token: &str,
        recursive: bool,
    ) -> Result<(Vec<String>, String)> {
        let page_size = crate::backend::kv::page_size_of(page_size)?;
        let mut paths = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.store.list(100, token.as_deref()).await?;
            // Names outside the mount's prefix are other mounts' or the
            // account's: not this mount's to show.
            for item in page.items.into_iter().filter(|i| self.settings.codec.owns(&i.name)) {
                match self.settings.codec.decode(&item.name) {
                    Some(p) if !p.starts_with(RAW_FOLDER) => paths.push(p),
                    _ => paths.push(format!("{RAW_FOLDER}{}", item.name)),
                }
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        let mut keys: Vec<String> = paths
            .iter()
            .filter_map(|p| p.strip_prefix(folder))
            .map(|rest| {
                // Raw names are flat: `/` inside them is not a folder.
                let flat = folder.starts_with(RAW_FOLDER);
                match rest.find('/').filter(|_| !recursive && !flat) {
                    Some(i) => rest[..=i].to_string(),
                    None => rest.to_string(),
                }
            })
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        keys.dedup();
        let start = if page_token.is_empty() { 0 } else { keys.partition_point(|k| k.as_str() <= page_token) };
        let mut out: Vec<String> = keys.into_iter().skip(start).take(page_size + 1).collect();
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }
}

fn health(cloud: Cloud, e: keybridge_provider_api::Error) -> Error {
    use keybridge_provider_api::Error as P;
    let hint = match &e {
        P::Unauthenticated(m) if m.contains("; ") => "",
        P::Unauthenticated(_) => " (the cloud refused the mount's credentials)",
        P::PermissionDenied(m) if m.contains("; ") => "",
        P::PermissionDenied(_) => " (the mount's credentials may not list secrets)",
        P::NotFound(_) => " (the cloud does not know the vault, project or account)",
        _ => "",
    };
    let unavailable = matches!(e, P::Unavailable(_) | P::Throttled(_));
    let msg = e.to_string();
    let msg = if msg.contains(cloud.name()) { msg } else { format!("{}: {msg}", cloud.name()) };
    let msg = format!("the mount was not enabled: {msg}{hint}");
    // A cloud that cannot be reached is unavailable (exit 5), not a conflict.
    if unavailable { Error::Unavailable(msg) } else { Error::FailedPrecondition(msg) }
}

fn time(t: Option<SystemTime>) -> Timestamp {
    t.map(Timestamp::from).unwrap_or_default()
}

fn version_meta(v: &VersionInfo) -> VersionMeta {
    VersionMeta {
        created: time(v.created),
        deletion_time: (v.state != VersionState::Enabled).then(|| time(v.created)),
        destroyed: v.state == VersionState::Destroyed,
        provider_id: v.id.clone(),
        stages: v.stages.clone(),
        expires: v.expires.map(Timestamp::from),
    }
}

fn secret_meta(info: &SecretInfo) -> SecretMeta {
    let cur = info.current();
    // A secret the cloud keeps for recovery (AWS's recovery window): every
    // version reads as deleted, at the time it was deleted.
    let meta = |v: &VersionInfo| {
        let mut m = version_meta(v);
        if let Some(d) = info.deletion {
            m.deletion_time.get_or_insert(Timestamp::from(d));
        }
        m
    };
    SecretMeta {
        created: time(info.created),
        updated: time(info.updated.or(cur.and_then(|c| c.created))),
        current_version: cur.and_then(|c| c.number).unwrap_or(0),
        custom_metadata: info.tags.clone(),
        max_versions: 0,
        cas_required: false,
        versions: info.versions.iter().filter_map(|v| Some((v.number?, meta(v)))).collect(),
        other_versions: info.versions.iter().filter(|v| v.number.is_none()).map(meta).collect(),
    }
}

/// Field maps as a JSON object string; text as it is; bytes as bytes.
fn to_cloud(v: &SecretValue) -> Result<CloudValue> {
    Ok(match v {
        SecretValue::Fields(m) => {
            let plain: BTreeMap<&str, &str> = m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let json = serde_json::to_string(&plain)
                .map_err(|_| Error::InvalidArgument("the fields cannot be encoded as JSON".into()))?;
            CloudValue::String(Zeroizing::new(json))
        }
        SecretValue::Text(t) => CloudValue::String(t.clone()),
        SecretValue::Binary(b) => CloudValue::Binary(b.clone()),
    })
}

/// A JSON object of strings reads as fields, any other string as text.
fn from_cloud(v: CloudValue) -> SecretValue {
    match v {
        CloudValue::Binary(b) => SecretValue::Binary(b),
        CloudValue::String(s) => {
            let trimmed = s.trim_start();
            if trimmed.starts_with('{')
                && let Ok(m) = serde_json::from_str::<BTreeMap<String, String>>(&s)
            {
                return SecretValue::Fields(m.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect());
            }
            SecretValue::Text(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_map_both_ways() {
        let f = SecretValue::Fields([("password".to_string(), Zeroizing::new("p\"w".to_string()))].into());
        let c = to_cloud(&f).unwrap();
        assert_eq!(c.as_str(), Some(r#"{"password":"p\"w"}"#));
        assert!(matches!(from_cloud(c), SecretValue::Fields(m) if m["password"].as_str() == "p\"w"));
        // Anything else stays exactly as it is.
        for text in ["plain", r#"{"n": 1}"#, "[1,2]", ""] {
            assert!(matches!(from_cloud(CloudValue::text(text)), SecretValue::Text(t) if t.as_str() == text));
        }
        let b = from_cloud(CloudValue::Binary(Zeroizing::new(vec![0xff, 0])));
        assert!(matches!(b, SecretValue::Binary(b) if *b == [0xff, 0]));
    }

    #[test]
    fn gateway_settings_are_checked() {
        let s = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(gateway_settings(Cloud::Aws, &s(&[("cache_ttl", "30s")])).unwrap().cache.is_some());
        assert!(gateway_settings(Cloud::Aws, &s(&[])).unwrap().cache.is_none());
        let bad = gateway_settings(Cloud::Aws, &s(&[("cache_ttl", "soon")])).unwrap_err().to_string();
        assert!(bad.contains("cache_ttl"), "{bad}");
        let bad = gateway_settings(Cloud::Azure, &s(&[("prefix", "Kb_")])).unwrap_err().to_string();
        assert!(bad.contains("prefix"), "{bad}");
        let bad = gateway_settings(Cloud::Aws, &s(&[("cache_max_entries", "5")])).unwrap_err().to_string();
        assert!(bad.contains("needs cache_ttl"), "{bad}");
        let (g, a) = split(&s(&[("prefix", "kb-"), ("region", "us-east-1")]));
        assert_eq!((g.len(), a.len()), (1, 1));
    }
}
