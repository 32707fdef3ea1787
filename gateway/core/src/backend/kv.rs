//! The versioned secret engine of the local store (Vault KV v2 semantics).
//!
//! Under a mount's prefix `logical/<id>/`:
//! - `meta/<path>`: the record: [`SecretMeta`] (versions with their state,
//!   custom metadata, settings) and, inline, the value of the current
//!   version, so reading the latest version is one lookup and one decrypt.
//!   Layout: `[0x01][meta length u32 BE][meta, protobuf][encoded value or
//!   nothing]`. Binary metadata keeps records small (about 50 bytes of
//!   metadata instead of 280 as JSON), so more of them fit the page cache.
//! - `data/<path>\0<version>`: the value of every other kept version. A put
//!   moves the previous current value here in the same batch.
//!
//! Every change is one barrier batch conditioned on the metadata read
//! before it, so check-and-set is exact and a failed write leaves nothing.

use std::collections::BTreeMap;

use keybridge_barrier::{Barrier, Error as BarrierError, Stamp, WriteBatch};
use zeroize::Zeroizing;

use crate::mounts::LocalSettings;
use crate::value::SecretValue;
use crate::{Error, Result, Timestamp};

const MAX_RETRIES: usize = 16;
pub const MAX_CUSTOM_METADATA_KEYS: usize = 64;
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;

/// A request's page size: 0 means the default; over the maximum is refused.
pub fn page_size_of(n: usize) -> Result<usize> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => {
            Err(Error::InvalidArgument(format!("page_size {n} is over the maximum of {MAX_PAGE_SIZE}")))
        }
        n => Ok(n),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    pub created: Timestamp,
    pub deletion_time: Option<Timestamp>,
    pub destroyed: bool,
    /// Cloud mounts: the cloud's version id, and its stages or aliases.
    pub provider_id: String,
    pub stages: Vec<String>,
    /// Cloud mounts: when the cloud stops serving the version (Azure).
    pub expires: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMeta {
    pub created: Timestamp,
    pub updated: Timestamp,
    /// The last version written (0: none yet); check-and-set compares to it.
    pub current_version: u64,
    pub custom_metadata: BTreeMap<String, String>,
    /// 0: the mount's setting applies.
    pub max_versions: u32,
    pub cas_required: bool,
    /// Versions still kept; older ones were pruned by max_versions.
    pub versions: BTreeMap<u64, VersionMeta>,
    /// Cloud mounts: versions without a Keybridge number (written by other
    /// tools), oldest first; they are addressed by provider id.
    pub other_versions: Vec<VersionMeta>,
}

impl SecretMeta {
    fn new(now: Timestamp) -> Self {
        SecretMeta {
            created: now,
            updated: now,
            current_version: 0,
            custom_metadata: BTreeMap::new(),
            max_versions: 0,
            cas_required: false,
            versions: BTreeMap::new(),
            other_versions: Vec::new(),
        }
    }

    pub fn oldest_version(&self) -> u64 {
        self.versions.keys().next().copied().unwrap_or(0)
    }
}

/// What `meta/<path>` holds: the metadata and the current version's value.
struct Record {
    meta: SecretMeta,
    /// Encoded [`SecretValue`] of `meta.current_version`; `None` when there
    /// is no version yet or it was destroyed.
    latest: Option<Zeroizing<Vec<u8>>>,
}

const RECORD_FORMAT: u8 = 1;

impl Record {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let json = prost::Message::encode_to_vec(&StoredMeta::from(&self.meta));
        let value_len = self.latest.as_ref().map_or(0, |v| v.len());
        let mut out = Zeroizing::new(Vec::with_capacity(5 + json.len() + value_len));
        out.push(RECORD_FORMAT);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        if let Some(v) = &self.latest {
            out.extend_from_slice(v);
        }
        out
    }

    fn decode(raw: &[u8]) -> std::result::Result<Record, String> {
        let (&format, rest) = raw.split_first().ok_or("empty record")?;
        if format != RECORD_FORMAT || rest.len() < 4 {
            return Err(format!("unknown record format {format}"));
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let json = rest.get(4..4 + len).ok_or("truncated record")?;
        let stored: StoredMeta = prost::Message::decode(json).map_err(|e| e.to_string())?;
        let meta = SecretMeta::from(stored);
        let value = &rest[4 + len..];
        let latest = (!value.is_empty()).then(|| Zeroizing::new(value.to_vec()));
        Ok(Record { meta, latest })
    }
}

/// The stored (protobuf) form of [`SecretMeta`]. Holds no secret.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredMeta {
    #[prost(int64, tag = "1")]
    created_secs: i64,
    #[prost(uint32, tag = "2")]
    created_nanos: u32,
    #[prost(int64, tag = "3")]
    updated_secs: i64,
    #[prost(uint32, tag = "4")]
    updated_nanos: u32,
    #[prost(uint64, tag = "5")]
    current_version: u64,
    #[prost(btree_map = "string, string", tag = "6")]
    custom_metadata: BTreeMap<String, String>,
    #[prost(uint32, tag = "7")]
    max_versions: u32,
    #[prost(bool, tag = "8")]
    cas_required: bool,
    #[prost(message, repeated, tag = "9")]
    versions: Vec<StoredVersion>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredVersion {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(int64, tag = "2")]
    created_secs: i64,
    #[prost(uint32, tag = "3")]
    created_nanos: u32,
    #[prost(bool, tag = "4")]
    deleted: bool,
    #[prost(int64, tag = "5")]
    deletion_secs: i64,
    #[prost(uint32, tag = "6")]
    deletion_nanos: u32,
    #[prost(bool, tag = "7")]
    destroyed: bool,
}

impl From<&SecretMeta> for StoredMeta {
    fn from(m: &SecretMeta) -> Self {
        StoredMeta {
            created_secs: m.created.secs,
            created_nanos: m.created.nanos,
            updated_secs: m.updated.secs,
            updated_nanos: m.updated.nanos,
            current_version: m.current_version,
            custom_metadata: m.custom_metadata.clone(),
            max_versions: m.max_versions,
            cas_required: m.cas_required,
            versions: m
                .versions
                .iter()
                .map(|(v, vm)| {
                    let del = vm.deletion_time.unwrap_or_default();
                    StoredVersion {
                        version: *v,
                        created_secs: vm.created.secs,
                        created_nanos: vm.created.nanos,
                        deleted: vm.deletion_time.is_some(),
                        deletion_secs: del.secs,
                        deletion_nanos: del.nanos,
                        destroyed: vm.destroyed,
                    }
                })
                .collect(),
        }
    }
}

impl From<StoredMeta> for SecretMeta {
    fn from(m: StoredMeta) -> Self {
        SecretMeta {
            created: Timestamp { secs: m.created_secs, nanos: m.created_nanos },
            updated: Timestamp { secs: m.updated_secs, nanos: m.updated_nanos },
            current_version: m.current_version,
            custom_metadata: m.custom_metadata,
            max_versions: m.max_versions,
            cas_required: m.cas_required,
            versions: m
                .versions
                .into_iter()
                .map(|v| {
                    let vm = VersionMeta {
                        created: Timestamp { secs: v.created_secs, nanos: v.created_nanos },
                        deletion_time: v
                            .deleted
                            .then_some(Timestamp { secs: v.deletion_secs, nanos: v.deletion_nanos }),
                        destroyed: v.destroyed,
                        provider_id: String::new(),
                        stages: Vec::new(),
                        expires: None,
                    };
                    (v.version, vm)
                })
                .collect(),
            other_versions: Vec::new(),
        }
    }
}

pub struct ReadSecret {
    pub value: SecretValue,
    pub version: u64,
    pub meta: VersionMeta,
    pub custom_metadata: BTreeMap<String, String>,
}

/// Which versions a delete, undelete or destroy applies to.
pub enum VersionChange {
    SoftDelete,
    Undelete,
    Destroy,
}

pub struct Kv<'a> {
    pub barrier: &'a Barrier,
    /// `logical/<mount id>/`
    pub prefix: String,
    /// For messages: `secret/`.
    pub mount_path: String,
    pub settings: LocalSettings,
    /// The effective value cap for this mount.
    pub max_value_bytes: usize,
    /// Lock stripes shared by all mounts: writers to one secret queue here
    /// instead of failing each other's conditional commits.
    pub(crate) write_locks: &'a crate::core::Stripes,
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt { key: key.to_string(), reason: e.to_string() }
}

impl Kv<'_> {
    fn meta_key(&self, path: &str) -> String {
        format!("{}meta/{path}", self.prefix)
    }

    fn data_key(&self, path: &str, version: u64) -> String {
        format!("{}data/{path}\0{version}", self.prefix)
    }

    fn full(&self, path: &str) -> String {
        format!("{}{path}", self.mount_path)
    }

    async fn read_record(&self, path: &str) -> Result<(Option<Record>, Stamp)> {
        let key = self.meta_key(path);
        let (raw, stamp) = self.barrier.get_stamped(&key).await?;
        let record = raw.map(|r| Record::decode(&r).map_err(|e| corrupt(&key, e))).transpose()?;
        Ok((record, stamp))
    }

    /// The record without a stamp, for reads that write nothing.
    async fn read_record_only(&self, path: &str) -> Result<Option<Record>> {
        let key = self.meta_key(path);
        let raw = self.barrier.get(&key).await?;
        raw.map(|r| Record::decode(&r).map_err(|e| corrupt(&key, e))).transpose()
    }

    fn put_record(&self, batch: &mut WriteBatch, path: &str, record: &Record) {
        batch.put(self.meta_key(path), record.encode());
    }

    /// Drops versions beyond `max_versions`, oldest first, with their data.
    /// The current version is never pruned (the limit is at least 1).
    fn prune(&self, batch: &mut WriteBatch, path: &str, meta: &mut SecretMeta) {
        let max = if meta.max_versions > 0 { meta.max_versions } else { self.settings.max_versions };
        while max > 0 && meta.versions.len() > max as usize {
            let (old, _) = meta.versions.pop_first().expect("non-empty");
            batch.delete(self.data_key(path, old));
        }
    }

    /// Runs a read-modify-write under the secret's lock stripe, retrying
    /// while writers elsewhere (another node, in the future) invalidate its
    /// reads.
    async fn with_retries<T, F, Fut>(&self, path: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let _guard = self.write_locks.lock((&self.prefix, path)).await;
        for _ in 0..MAX_RETRIES {
            match attempt().await {
                Err(Error::Storage(BarrierError::Conflict)) => continue,
                other => return other,
            }
        }
        Err(Error::Contention(self.full(path)))
    }

    pub async fn describe(&self, path: &str) -> Result<SecretMeta> {
        Ok(self.read_record_only(path).await?.ok_or_else(|| self.not_found(path))?.meta)
    }

    fn not_found(&self, path: &str) -> Error {
        Error::NotFound(format!("no secret at {}", self.full(path)))
    }

    pub async fn put(&self, path: &str, value: &SecretValue, cas: Option<u64>) -> Result<(u64, VersionMeta)> {
        value.validate(self.max_value_bytes)?;
        let encoded = value.encode();
        self.with_retries(path, || async {
            let (record, stamp) = self.read_record(path).await?;
            let now = Timestamp::now();
            let Record { mut meta, latest } = record.unwrap_or_else(|| Record { meta: SecretMeta::new(now), latest: None });
            let cas_required = meta.cas_required || self.settings.cas_required;
            match cas {
                None if cas_required => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} requires check-and-set: pass cas={} (the current version)",
                        self.full(path),
                        meta.current_version
                    )));
                }
                Some(expected) if expected != meta.current_version => {
                    return Err(Error::FailedPrecondition(format!(
                        "check-and-set failed for {}: the request expected version {expected}, the current version is {}",
                        self.full(path),
                        meta.current_version
                    )));
                }
                _ => {}
            }
            let previous = meta.current_version;
            let version = previous + 1;
            let vmeta = VersionMeta {
                created: now,
                deletion_time: None,
                destroyed: false,
                provider_id: String::new(),
                stages: Vec::new(),
                expires: None,
            };
            meta.current_version = version;
            meta.updated = now;
            meta.versions.insert(version, vmeta.clone());

            let mut batch = WriteBatch::new();
            batch.expect(self.meta_key(path), &stamp);
            self.prune(&mut batch, path, &mut meta);
            // The previous current value moves out of the record.
            if let Some(old) = latest
                && meta.versions.contains_key(&previous)
            {
                batch.put(self.data_key(path, previous), old);
            }
            self.put_record(&mut batch, path, &Record { meta, latest: Some(encoded.clone()) });
            self.barrier.commit(batch).await?;
            Ok((version, vmeta))
        })
        .await
    }

    pub async fn get(&self, path: &str, version: Option<u64>) -> Result<ReadSecret> {
        let Record { meta, latest } = self.read_record_only(path).await?.ok_or_else(|| self.not_found(path))?;
        let v = version.unwrap_or(meta.current_version);
        // Names for error messages, built only when one is needed.
        let full = || self.full(path);
        let vmeta = match meta.versions.get(&v) {
            Some(m) => m.clone(),
            None if v == 0 || meta.current_version == 0 => {
                return Err(Error::NotFound(format!("{} has metadata but no version yet", full())));
            }
            None if v > meta.current_version => {
                return Err(Error::NotFound(format!(
                    "version {v} of {} does not exist; the current version is {}",
                    full(),
                    meta.current_version
                )));
            }
            None => {
                return Err(Error::NotFound(format!(
                    "version {v} of {} was pruned (max_versions); the oldest kept is {}",
                    full(),
                    meta.oldest_version()
                )));
            }
        };
        if vmeta.destroyed {
            return Err(Error::NotFound(format!("version {v} of {} was destroyed", full())));
        }
        if vmeta.deletion_time.is_some() {
            return Err(Error::NotFound(format!("version {v} of {} is deleted; undelete it to read it", full())));
        }
        let current = v == meta.current_version;
        let key = || if current { self.meta_key(path) } else { self.data_key(path, v) };
        let raw = if current {
            latest.ok_or_else(|| corrupt(&key(), "the current version's value is missing"))?
        } else {
            self.barrier.get(&key()).await?.ok_or_else(|| {
                // Destroyed or pruned between the two reads.
                Error::NotFound(format!("version {v} of {} is no longer available", full()))
            })?
        };
        let value = SecretValue::decode(&raw).map_err(|e| corrupt(&key(), e))?;
        Ok(ReadSecret { value, version: v, meta: vmeta, custom_metadata: meta.custom_metadata })
    }

    /// Applies a state change to the given versions (empty: the latest, for
    /// soft delete only). Unknown versions are refused before anything changes.
    pub async fn change_versions(&self, path: &str, versions: &[u64], change: VersionChange) -> Result<()> {
        if versions.is_empty() && !matches!(change, VersionChange::SoftDelete) {
            return Err(Error::InvalidArgument("give at least one version number".into()));
        }
        self.with_retries(path, || async {
            let (record, stamp) = self.read_record(path).await?;
            let Record { mut meta, mut latest } = record.ok_or_else(|| self.not_found(path))?;
            let targets: Vec<u64> = if versions.is_empty() { vec![meta.current_version] } else { versions.to_vec() };
            for v in &targets {
                if !meta.versions.contains_key(v) {
                    return Err(Error::InvalidArgument(format!(
                        "version {v} of {} does not exist; versions kept: {}",
                        self.full(path),
                        describe_range(&meta)
                    )));
                }
            }
            let now = Timestamp::now();
            let mut batch = WriteBatch::new();
            batch.expect(self.meta_key(path), &stamp);
            for v in targets {
                let vm = meta.versions.get_mut(&v).expect("checked above");
                match change {
                    VersionChange::SoftDelete => {
                        if vm.deletion_time.is_none() && !vm.destroyed {
                            vm.deletion_time = Some(now);
                        }
                    }
                    VersionChange::Undelete => {
                        if !vm.destroyed {
                            vm.deletion_time = None;
                        }
                    }
                    VersionChange::Destroy => {
                        vm.destroyed = true;
                        if v == meta.current_version {
                            latest = None;
                        } else {
                            batch.delete(self.data_key(path, v));
                        }
                    }
                }
            }
            meta.updated = now;
            self.put_record(&mut batch, path, &Record { meta, latest });
            self.barrier.commit(batch).await.map_err(Error::from)
        })
        .await
    }

    /// Removes the secret: every version and the metadata.
    pub async fn delete_all(&self, path: &str) -> Result<()> {
        self.with_retries(path, || async {
            let (record, stamp) = self.read_record(path).await?;
            let meta = record.ok_or_else(|| self.not_found(path))?.meta;
            let mut batch = WriteBatch::new();
            batch.expect(self.meta_key(path), &stamp);
            for v in meta.versions.keys().filter(|v| **v != meta.current_version) {
                batch.delete(self.data_key(path, *v));
            }
            batch.delete(self.meta_key(path));
            self.barrier.commit(batch).await.map_err(Error::from)
        })
        .await
    }

    pub async fn put_metadata(
        &self,
        path: &str,
        custom: Option<BTreeMap<String, String>>,
        max_versions: Option<u32>,
        cas_required: Option<bool>,
    ) -> Result<SecretMeta> {
        if let Some(c) = &custom {
            validate_custom_metadata(c)?;
        }
        self.with_retries(path, || async {
            let (record, stamp) = self.read_record(path).await?;
            let now = Timestamp::now();
            let Record { mut meta, latest } =
                record.unwrap_or_else(|| Record { meta: SecretMeta::new(now), latest: None });
            if let Some(c) = &custom {
                meta.custom_metadata = c.clone();
            }
            if let Some(m) = max_versions {
                meta.max_versions = m;
            }
            if let Some(c) = cas_required {
                meta.cas_required = c;
            }
            meta.updated = now;
            let mut batch = WriteBatch::new();
            batch.expect(self.meta_key(path), &stamp);
            self.prune(&mut batch, path, &mut meta);
            let result = meta.clone();
            self.put_record(&mut batch, path, &Record { meta, latest });
            self.barrier.commit(batch).await?;
            Ok(result)
        })
        .await
    }

    /// Lists under `folder` (`""` or ending in `/`, relative to the mount).
    /// Returns the keys (folders end with `/`) and the next page token.
    pub async fn list(
        &self,
        folder: &str,
        page_size: usize,
        page_token: &str,
        recursive: bool,
    ) -> Result<(Vec<String>, String)> {
        let page_size = page_size_of(page_size)?;
        if page_token.chars().any(|c| c == '\0') {
            return Err(Error::InvalidArgument("the page token is not one this server issued".into()));
        }
        let base = format!("{}meta/{folder}", self.prefix);
        let mut start = if page_token.is_empty() {
            base.clone()
        } else if let Some(dir) = page_token.strip_suffix('/').filter(|_| !recursive) {
            // Everything below `dir/` sorts before `dir0`.
            format!("{base}{dir}0")
        } else {
            format!("{base}{page_token}\0")
        };
        let mut out: Vec<String> = Vec::new();
        'scan: while out.len() <= page_size {
            let keys = self.barrier.list(&base, Some(&start), 256).await?;
            if keys.is_empty() {
                break;
            }
            for k in &keys {
                let rel = &k[base.len()..];
                match rel.find('/').filter(|_| !recursive) {
                    Some(i) => {
                        out.push(rel[..=i].to_string());
                        start = format!("{base}{}0", &rel[..i]);
                        continue 'scan;
                    }
                    None => {
                        out.push(rel.to_string());
                        start = format!("{k}\0");
                        if out.len() > page_size {
                            break 'scan;
                        }
                    }
                }
            }
        }
        let next = if out.len() > page_size {
            out.truncate(page_size);
            out.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }
}

fn describe_range(meta: &SecretMeta) -> String {
    match (meta.versions.keys().next(), meta.versions.keys().last()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => "none".into(),
    }
}

pub fn validate_custom_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    if m.len() > MAX_CUSTOM_METADATA_KEYS {
        return Err(Error::InvalidArgument(format!(
            "custom metadata has {} keys; at most {MAX_CUSTOM_METADATA_KEYS} are allowed",
            m.len()
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > 128 || k.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "custom metadata key {k:?} must be 1 to 128 bytes without control characters"
            )));
        }
        if v.len() > 512 || v.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "custom metadata value for {k:?} must be at most 512 bytes without control characters"
            )));
        }
    }
    Ok(())
}
