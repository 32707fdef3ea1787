//! Plugins: the catalog of registered WASM components, and opening a plugin
//! mount's engine. [`contract`] is what every engine speaks; the Logical
//! API that reaches a mounted engine is [`crate::backend::plugin`].

mod contract;
pub use contract::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_barrier::WriteBatch;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::audit::Caller;
use crate::core::{Capability, Core, encode_json};
use crate::mounts::MountEntry;
use crate::tokens::Identity;
use crate::{Error, Result, Timestamp};

pub(crate) const CATALOG: &str = "core/plugins/";
const BLOBS: &str = "core/plugin-blobs/";
/// The largest component the catalog takes.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Config keys of a plugin mount the core reads.
pub const PLUGIN_KEYS: &[(&str, &str)] = &[
    ("plugin", "the registered plugin's name (required)"),
    ("sha256", "the registered version to run (default: the latest registered); changing it upgrades the mount"),
    ("default_lease_ttl", "lease TTL when the engine gives none (default 1h)"),
    ("max_lease_ttl", "the longest any lease of this mount may live (default 768h)"),
];
pub const MOUNT_KIND: &str = "plugin";

/// One registered version of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginVersion {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub registered: Timestamp,
    pub engine: String,
    pub engine_version: String,
    pub description: String,
    pub rotates: bool,
    pub paths: Vec<String>,
}

/// Checks a built-in engine mount's config: the core's lease keys, and the
/// engine's own.
pub(crate) fn validate_builtin_config(
    b: &dyn BuiltinEngines,
    kind: &str,
    config: &BTreeMap<String, String>,
) -> Result<()> {
    for k in ["default_lease_ttl", "max_lease_ttl"] {
        if let Some(v) = config.get(k)
            && parse_duration(v).is_none_or(|d| d == 0)
        {
            return Err(Error::InvalidArgument(format!("mount config {k}={v:?}: expected a duration such as 1h")));
        }
    }
    let own: BTreeMap<String, String> = config
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "default_lease_ttl" | "max_lease_ttl"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    b.validate(kind, &own).map_err(Error::InvalidArgument)
}

/// What a Logical request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineOp {
    Read,
    Write,
    Delete,
    List,
}

impl EngineOp {
    pub fn name(self) -> &'static str {
        match self {
            EngineOp::Read => "read",
            EngineOp::Write => "write",
            EngineOp::Delete => "delete",
            EngineOp::List => "list",
        }
    }
}

/// A lease as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub lease_id: String,
    pub ttl_secs: u64,
    pub renewable: bool,
    pub issued: Timestamp,
    pub expires: Timestamp,
    pub max_expires: Timestamp,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct EngineReply {
    pub data: Params,
    pub lease: Option<LeaseView>,
    pub warnings: Vec<String>,
}

/// An engine's description of a path, for `path-help`.
#[derive(Clone, Debug)]
pub struct PathHelp {
    pub mount: String,
    pub engine: EngineInfo,
    /// The pattern serving the path asked about; `None`: the whole engine.
    pub matched: Option<String>,
}

pub(crate) fn validate_plugin_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid plugin name {name:?}: 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn validate_digest(d: &str) -> Result<()> {
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid SHA-256 {d:?}: give 64 lowercase hex digits, as `sha256sum FILE` prints them"
        )))
    }
}

/// How an engine's failure reaches the caller.
pub(crate) fn engine_error(e: EngineError) -> Error {
    match e {
        EngineError::InvalidInput(m) => Error::InvalidArgument(m),
        EngineError::NotFound(m) => Error::NotFound(m),
        EngineError::Denied(m) => Error::PermissionDenied(m),
        EngineError::Unavailable(m) => Error::Unavailable(m),
        EngineError::Unsupported(m) => Error::Unimplemented(m),
        EngineError::Internal(m) => Error::Internal(format!("the engine failed: {m}")),
        e @ EngineError::Trapped(_) => Error::Internal(e.to_string()),
        EngineError::Deadline(m) => Error::DeadlineExceeded(m),
        EngineError::Exhausted(m) => Error::ResourceExhausted(m),
        EngineError::BadComponent(m) => Error::InvalidArgument(m),
    }
}

/// A mount's engine storage: keys under the mount's own prefix, through the
/// barrier.
pub(crate) struct MountStorage {
    barrier: Arc<keybridge_barrier::Barrier>,
    prefix: String,
}

const STORAGE_LIST_MAX: usize = 10_000;

#[async_trait::async_trait]
impl EngineStorage for MountStorage {
    async fn get(&self, key: &str) -> std::result::Result<Option<Zeroizing<Vec<u8>>>, String> {
        self.barrier.get(&format!("{}{key}", self.prefix)).await.map_err(|e| format!("storage: {e}"))
    }

    async fn put(&self, key: &str, value: &[u8]) -> std::result::Result<(), String> {
        let mut b = WriteBatch::new();
        b.put(format!("{}{key}", self.prefix), Zeroizing::new(value.to_vec()));
        self.barrier.commit(b).await.map_err(|e| format!("storage: {e}"))
    }

    async fn delete(&self, key: &str) -> std::result::Result<(), String> {
        let mut b = WriteBatch::new();
        b.delete(format!("{}{key}", self.prefix));
        self.barrier.commit(b).await.map_err(|e| format!("storage: {e}"))
    }

    async fn list(&self, prefix: &str) -> std::result::Result<Vec<String>, String> {
        let full = format!("{}{prefix}", self.prefix);
        let keys = self.barrier.list_all(&full, STORAGE_LIST_MAX).await.map_err(|e| format!("storage: {e}"))?;
        let mut out: Vec<String> = Vec::new();
        for k in &keys {
            let rest = &k[full.len()..];
            let child = match rest.find('/') {
                Some(i) => &rest[..=i],
                None => rest,
            };
            if out.last().map(String::as_str) != Some(child) {
                out.push(child.to_string());
            }
        }
        Ok(out)
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> std::result::Result<Vec<String>, String> {
        let full = format!("{}{prefix}", self.prefix);
        // The store's start is inclusive: begin just past `after`.
        let start = after.map(|a| format!("{full}{a}\0"));
        let keys = self
            .barrier
            .list(&full, start.as_deref(), limit.min(STORAGE_LIST_MAX))
            .await
            .map_err(|e| format!("storage: {e}"))?;
        Ok(keys.into_iter().filter_map(|k| k.strip_prefix(&full).map(str::to_string)).collect())
    }
}

impl Core {
    pub(crate) fn plugin_runtime(&self) -> Result<&Arc<dyn PluginRuntime>> {
        self.config.plugins.as_ref().ok_or_else(|| {
            Error::Unimplemented("this server was built without the WASM engine host (cargo feature wasm)".into())
        })
    }

    // ----- catalog -------------------------------------------------------------

    /// Stores a component under `name` after checking its digest and that it
    /// fits the contract. Registering the same bytes again changes nothing.
    pub async fn register_plugin(
        &self,
        caller: &Caller,
        name: &str,
        sha256: &str,
        component: &[u8],
    ) -> Result<PluginVersion> {
        self.authorize_register(caller, name).await?;
        validate_plugin_name(name)?;
        let sha256 = sha256.trim().to_ascii_lowercase();
        validate_digest(&sha256)?;
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the component is {} bytes; the catalog takes at most {MAX_COMPONENT_BYTES}",
                component.len()
            )));
        }
        let actual = hex::encode(sha2::Sha256::digest(component));
        if actual != sha256 {
            return Err(Error::InvalidArgument(format!(
                "the uploaded file's SHA-256 is {actual}, not the {sha256} given: refusing it (a changed or truncated file?)"
            )));
        }
        let info = self.plugin_runtime()?.inspect(&sha256, component).await.map_err(engine_error)?;
        let v = PluginVersion {
            name: name.to_string(),
            sha256: sha256.clone(),
            size: component.len() as u64,
            registered: Timestamp::now(),
            engine: info.name.clone(),
            engine_version: info.version.clone(),
            description: info.description.clone(),
            rotates: info.rotates,
            paths: info.paths.iter().map(|p| p.pattern.clone()).collect(),
        };
        let key = format!("{CATALOG}{name}/{sha256}");
        if let Some(raw) = self.barrier.get(&key).await? {
            return serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() });
        }
        let mut b = WriteBatch::new();
        b.put(key, encode_json(&v)).put(format!("{BLOBS}{sha256}"), Zeroizing::new(component.to_vec()));
        self.barrier.commit(b).await?;
        Ok(v)
    }

    /// Authenticates and authorizes a registration of `name` (audited once
    /// per call): the gateway calls it on an upload's first chunk, before it
    /// buffers any more of it, and [`Core::register_plugin`] again.
    pub async fn authorize_register(&self, caller: &Caller, name: &str) -> Result<crate::tokens::Identity> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/plugins/catalog/{name}"), Capability::Sudo).await?;
        Ok(id)
    }

    async fn catalog(&self, name: Option<&str>) -> Result<Vec<PluginVersion>> {
        let prefix = match name {
            Some(n) => format!("{CATALOG}{n}/"),
            None => CATALOG.to_string(),
        };
        let mut out = Vec::new();
        for key in self.barrier.list_all(&prefix, 100_000).await? {
            let Some(raw) = self.barrier.get(&key).await? else { continue };
            out.push(
                serde_json::from_slice::<PluginVersion>(&raw)
                    .map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?,
            );
        }
        out.sort_by(|a, b| (&a.name, a.registered).cmp(&(&b.name, b.registered)));
        Ok(out)
    }

    pub async fn list_plugins(&self, caller: &Caller, name: Option<&str>) -> Result<Vec<PluginVersion>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/plugins/catalog", Capability::Read).await?;
        if let Some(n) = name {
            validate_plugin_name(n)?;
        }
        self.catalog(name).await
    }

    /// Removes one version (or all) of a plugin that no mount runs.
    pub async fn delete_plugin(&self, caller: &Caller, name: &str, sha256: Option<&str>) -> Result<usize> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, &format!("sys/plugins/catalog/{name}"), Capability::Sudo).await?;
        validate_plugin_name(name)?;
        if let Some(d) = sha256 {
            validate_digest(d)?;
        }
        let _guard = self.admin.lock().await;
        let versions: Vec<PluginVersion> =
            self.catalog(Some(name)).await?.into_iter().filter(|v| sha256.is_none_or(|d| d == v.sha256)).collect();
        if versions.is_empty() {
            return Err(Error::NotFound(format!(
                "no registered plugin {name}{}",
                sha256.map(|d| format!(" with SHA-256 {d}")).unwrap_or_default()
            )));
        }
        let table = self.unsealed()?.table();
        let users: Vec<&str> = table
            .entries
            .iter()
            .filter(|m| m.kind == MOUNT_KIND && !m.deleting)
            .filter(|m| versions.iter().any(|v| m.config.get("sha256") == Some(&v.sha256)))
            .map(|m| m.path.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "plugin {name} is in use by mounts {}; disable them or tune them to another version first",
                users.join(", ")
            )));
        }
        let all = self.catalog(None).await?;
        let mut b = WriteBatch::new();
        for v in &versions {
            b.delete(format!("{CATALOG}{}/{}", v.name, v.sha256));
            // The bytes stay while another name registered the same digest.
            if !all.iter().any(|o| o.sha256 == v.sha256 && o.name != v.name) {
                b.delete(format!("{BLOBS}{}", v.sha256));
            }
        }
        self.barrier.commit(b).await?;
        Ok(versions.len())
    }

    // ----- plugin mounts ------------------------------------------------------------

    /// Checks a plugin mount's config without IO.
    pub(crate) fn validate_plugin_config(&self, config: &BTreeMap<String, String>) -> Result<()> {
        let rt = self.plugin_runtime()?;
        let name = config.get("plugin").ok_or_else(|| {
            Error::InvalidArgument("a plugin mount needs plugin=NAME (see `keybridge plugin list`)".into())
        })?;
        validate_plugin_name(name)?;
        if let Some(d) = config.get("sha256") {
            validate_digest(d)?;
        }
        for k in ["default_lease_ttl", "max_lease_ttl"] {
            if let Some(v) = config.get(k)
                && parse_duration(v).is_none_or(|d| d == 0)
            {
                return Err(Error::InvalidArgument(format!("mount config {k}={v:?}: expected a duration such as 1h")));
            }
        }
        rt.validate_host_config(config).map_err(Error::InvalidArgument)
    }

    /// Fills in `sha256` (the latest registered version) and checks the
    /// engine takes the remaining keys.
    pub(crate) async fn resolve_plugin_config(&self, config: &mut BTreeMap<String, String>) -> Result<()> {
        let name = config.get("plugin").cloned().unwrap_or_default();
        let versions = self.catalog(Some(&name)).await?;
        let v = match config.get("sha256") {
            Some(d) => versions.iter().find(|v| &v.sha256 == d).ok_or_else(|| {
                Error::NotFound(format!("plugin {name} has no registered version with SHA-256 {d}"))
            })?,
            None => versions.iter().max_by_key(|v| v.registered).ok_or_else(|| {
                Error::NotFound(format!(
                    "no plugin named {name} is registered; register it first: keybridge plugin register {name} --sha256 DIGEST FILE"
                ))
            })?,
        };
        config.insert("sha256".into(), v.sha256.clone());
        Ok(())
    }

    /// The engine's own part of a mount config.
    fn engine_config(&self, mount: &MountEntry) -> Vec<(String, String)> {
        let host: Vec<&str> =
            self.config.plugins.as_ref().map(|r| r.host_keys().iter().map(|(k, _)| *k).collect()).unwrap_or_default();
        mount
            .config
            .iter()
            .filter(|(k, _)| !PLUGIN_KEYS.iter().any(|(p, _)| p == k) && !host.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Builds a mount's engine from the catalog, and checks the engine
    /// accepts its config keys.
    pub(crate) async fn open_plugin(&self, mount: &MountEntry) -> Result<Arc<dyn PluginEngine>> {
        let rt = self.plugin_runtime()?;
        let digest = mount.config.get("sha256").cloned().unwrap_or_default();
        let blob = self.barrier.get(&format!("{BLOBS}{digest}")).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the component {digest} of mount {} is no longer in the catalog; register it again",
                mount.path
            ))
        })?;
        let engine_config: BTreeMap<String, String> = self.engine_config(mount).into_iter().collect();
        let host_config: BTreeMap<String, String> = mount
            .config
            .iter()
            .filter(|(k, _)| !PLUGIN_KEYS.iter().any(|(p, _)| p == k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let storage = Arc::new(MountStorage { barrier: self.barrier.clone(), prefix: mount.storage_prefix() });
        let backend = rt
            .open(PluginSpec { digest: &digest, component: &blob, config: &host_config, storage })
            .await
            .map_err(engine_error)?;
        let info = backend.info();
        let unknown: Vec<&str> = engine_config
            .keys()
            .filter(|k| !info.config_keys.iter().any(|f| &f.name == *k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let mut known: Vec<&str> = PLUGIN_KEYS.iter().map(|(k, _)| *k).collect();
            known.extend(rt.host_keys().iter().map(|(k, _)| *k));
            known.extend(info.config_keys.iter().map(|f| f.name.as_str()));
            return Err(Error::InvalidArgument(format!(
                "unknown config key(s) {} for a {} mount; known keys: {}",
                unknown.join(", "),
                info.name,
                known.join(", ")
            )));
        }
        for f in info.config_keys.iter().filter(|f| f.required) {
            if !engine_config.contains_key(&f.name) {
                return Err(Error::InvalidArgument(format!(
                    "the {} engine needs config {}=... ({})",
                    info.name, f.name, f.description
                )));
            }
        }
        Ok(backend)
    }

    /// The built-in engines serving `kind`, if any.
    pub(crate) fn builtin(&self, kind: &str) -> Option<&Arc<dyn BuiltinEngines>> {
        self.config.builtin_engines.as_ref().filter(|b| b.kinds().contains(&kind))
    }

    /// Whether a mount of `kind` is served by an engine (a WASM plugin or a
    /// built-in one): Logical paths, leases revoked before it goes.
    pub(crate) fn is_engine_kind(&self, kind: &str) -> bool {
        kind == MOUNT_KIND || self.builtin(kind).is_some()
    }

    /// Builds a mount's engine: a plugin from the catalog, or a built-in one.
    pub(crate) async fn open_engine(&self, mount: &MountEntry) -> Result<Arc<dyn PluginEngine>> {
        match self.builtin(&mount.kind) {
            Some(b) => {
                let storage = Arc::new(MountStorage { barrier: self.barrier.clone(), prefix: mount.storage_prefix() });
                let config: BTreeMap<String, String> = self.engine_config(mount).into_iter().collect();
                b.open(&mount.kind, &config, storage, self.password_policies()).await.map_err(engine_error)
            }
            None => self.open_plugin(mount).await,
        }
    }

    /// Runs built-in engines' periodic work (scheduled rotations), on the
    /// leading node, forever; started by the server.
    pub async fn engine_worker(self: Arc<Self>) {
        let never = tokio::sync::Notify::new();
        crate::core::run_passes(&self, "engines", &never, || self.engine_pass()).await
    }

    pub(crate) async fn engine_pass(&self) -> Result<std::time::Duration> {
        let table = self.unsealed()?.table();
        for mount in table.entries.iter().filter(|m| !m.deleting && self.builtin(&m.kind).is_some()) {
            let engine = match self.plugin_backend(mount).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(mount = %mount.path, error = %e, "engines: cannot open the mount's engine");
                    continue;
                }
            };
            let ctx = self.call_context(mount, "periodic", "engine worker");
            if let Err(e) = engine.periodic(&ctx).await {
                tracing::warn!(mount = %mount.path, error = %engine_error(e), "engines: periodic work failed; retried");
            }
        }
        Ok(PERIODIC_EVERY)
    }

    /// A mount's engine, built on first use after unseal.
    pub(crate) async fn plugin_backend(&self, mount: &MountEntry) -> Result<Arc<dyn PluginEngine>> {
        let loaded = self.unsealed()?;
        if let Some(b) = loaded.engines.read().unwrap_or_else(|p| p.into_inner()).get(&mount.id) {
            return Ok(b.clone());
        }
        let since = loaded.dropped.load(std::sync::atomic::Ordering::Acquire);
        let built = self.open_engine(mount).await?;
        let mut engines = loaded.engines.write().unwrap_or_else(|p| p.into_inner());
        if !loaded.keeps(mount, since) {
            return Ok(built);
        }
        Ok(engines.entry(mount.id.clone()).or_insert(built).clone())
    }

    pub(crate) fn call_context(&self, mount: &MountEntry, request_id: &str, who: &str) -> CallContext {
        CallContext {
            mount_path: mount.path.clone(),
            config: self.engine_config(mount),
            request_id: request_id.to_string(),
            caller: who.to_string(),
            lease_max_ttl_secs: crate::leases::mount_duration(mount, "max_lease_ttl", crate::leases::DEFAULT_MAX_TTL),
        }
    }

    /// Authorizes with request parameters, checked against the policy's
    /// parameter constraints.
    pub(crate) async fn authorize_params(
        &self,
        caller: &Caller,
        id: &Identity,
        path: &str,
        cap: Capability,
        params: &[keybridge_policy::Param<'_>],
    ) -> Result<()> {
        let decision = self.decide_with(id, path, cap, Some(params)).await;
        self.record_decision(caller, id, path, cap, decision).await
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    /// `list_page` walks every key under a prefix a page at a time, past
    /// `list`'s bound, each key once, in order, never one of a neighbour
    /// prefix or another mount's.
    #[tokio::test]
    async fn list_page_walks_every_key_under_a_prefix_once() {
        let core = Core::new(
            keybridge_barrier::Barrier::new(Arc::new(keybridge_barrier::RedbStore::in_memory().unwrap())),
            crate::CoreConfig::default(),
        );
        core.init(1, 1, Some("root-t"), true).await.unwrap();
        let barrier = core.barrier.clone();
        let storage = MountStorage { barrier: barrier.clone(), prefix: "logical/m1/".into() };
        let mut b = WriteBatch::new();
        let mut want = Vec::new();
        // More than `list` returns (STORAGE_LIST_MAX).
        for i in 0..12_000 {
            let k = format!("{i:05x}");
            b.put(format!("logical/m1/certs/{k}"), Zeroizing::new(b"x".to_vec()));
            want.push(k);
        }
        b.put("logical/m1/certsX", Zeroizing::new(b"x".to_vec()));
        b.put("logical/m1/certs0", Zeroizing::new(b"x".to_vec()));
        b.put("logical/m2/certs/zzzzz", Zeroizing::new(b"x".to_vec()));
        barrier.commit(b).await.unwrap();
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = storage.list_page("certs/", after.as_deref(), 512).await.unwrap();
            pages += 1;
            got.extend(page.iter().cloned());
            if page.len() < 512 {
                break;
            }
            after = page.last().cloned();
        }
        assert_eq!(pages, 24);
        assert_eq!(got, want);
        assert_eq!(storage.list("certs/").await.unwrap().len(), STORAGE_LIST_MAX);
    }
}
