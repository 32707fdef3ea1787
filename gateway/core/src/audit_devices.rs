//! Audit device management through the API: enable, list, disable, the
//! HMAC of a known value, verification, the stream, and file reopening.

use std::collections::BTreeMap;

use keybridge_barrier::WriteBatch;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use crate::audit::device::DEVICES_KEY;
use crate::audit::{Caller, DeviceEntry, VerificationKey, chain};
use crate::core::{Capability, Core, encode_json};
use crate::{Error, Result, Timestamp};

/// Device names: `file/`, `siem-1/`: 1 to 64 of `a-z 0-9 - _`, then `/`.
pub fn normalize_device_path(path: &str) -> Result<String> {
    let p = path.trim().trim_end_matches('/');
    if p.is_empty()
        || p.len() > 64
        || !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c))
    {
        return Err(Error::InvalidArgument(format!(
            "invalid audit device path {path:?}: use 1 to 64 characters from a-z, 0-9, '-' and '_', such as file/"
        )));
    }
    Ok(format!("{p}/"))
}

/// A change of the device table refused because another node changed it
/// first.
fn devices_changed(e: keybridge_barrier::Error) -> Error {
    match e {
        keybridge_barrier::Error::Conflict => {
            Error::Contention("another node changed the audit devices at the same time: try again".into())
        }
        e => e.into(),
    }
}

impl Core {
    pub async fn enable_audit(
        &self,
        caller: &Caller,
        path: &str,
        kind: &str,
        description: &str,
        options: BTreeMap<String, String>,
    ) -> Result<DeviceEntry> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        self.authorize(caller, &id, &format!("sys/audit/{path}"), Capability::Sudo).await?;
        crate::audit::validate_options(kind, &options)?;
        if kind == "file" {
            self.check_audit_file_dir(&options["file_path"])?;
        }
        let _guard = self.admin.lock().await;
        let loaded = self.unsealed()?;
        // In line with the stored table first (another node may have changed
        // it, and the feed not told this one yet); the change below is
        // conditioned on what was read.
        let stamp = loaded.audit.refresh().await?;
        let entry = DeviceEntry {
            path: path.clone(),
            kind: kind.to_string(),
            description: description.to_string(),
            options,
            id: uuid::Uuid::new_v4().to_string(),
            created: Timestamp::now(),
        };
        let (entries, keys) = loaded.audit.enable(entry.clone()).await?;
        let mut batch = WriteBatch::new();
        batch.expect(DEVICES_KEY, &stamp).put(DEVICES_KEY, encode_json(&entries));
        crate::audit::broker::store_keys(&mut batch, &entry.id, keys);
        if let Err(e) = self.barrier.commit(batch).await {
            loaded.audit.remove(&path).await;
            return Err(devices_changed(e));
        }
        tracing::info!(device = %path, kind, "audit device enabled");
        Ok(entry)
    }

    pub async fn list_audit(&self, caller: &Caller) -> Result<Vec<DeviceEntry>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "sys/audit", Capability::Sudo).await?;
        Ok(self.unsealed()?.audit.list())
    }

    /// Disables a device. Its keys and checkpoint are deleted with it:
    /// export the verification key first to verify its files later.
    pub async fn disable_audit(&self, caller: &Caller, path: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        self.authorize(caller, &id, &format!("sys/audit/{path}"), Capability::Sudo).await?;
        let _guard = self.admin.lock().await;
        let loaded = self.unsealed()?;
        // In line with the stored table first (another node may have changed
        // it, and the feed not told this one yet); the change below is
        // conditioned on what was read.
        let stamp = loaded.audit.refresh().await?;
        let entry = loaded.audit.entry(&path)?;
        let remaining: Vec<DeviceEntry> = loaded.audit.list().into_iter().filter(|d| d.path != path).collect();
        let mut batch = WriteBatch::new();
        batch.expect(DEVICES_KEY, &stamp).put(DEVICES_KEY, encode_json(&remaining));
        // Each node's checkpoint of it, on a shared store.
        let node_checkpoints =
            self.barrier.list_all(&crate::audit::broker::node_checkpoints(&entry.id), 100_000).await?;
        crate::audit::broker::forget(&mut batch, &entry.id, &node_checkpoints);
        // The response to this request is still recorded by this device.
        self.barrier.commit(batch).await.map_err(devices_changed)?;
        self.finish(caller, Ok(()), |_| Vec::new()).await?;
        loaded.audit.remove(&path).await;
        tracing::info!(device = %path, "audit device disabled");
        Ok(())
    }

    /// The HMAC a device writes for `input`, so an investigator can find a
    /// value they already know in the log.
    pub async fn audit_hash(&self, caller: &Caller, path: &str, input: &[u8]) -> Result<String> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        self.authorize(caller, &id, &format!("sys/audit-hash/{path}"), Capability::Update).await?;
        self.unsealed()?.audit.hash(&path, input).map_err(Error::from)
    }

    /// The device's chain key and checkpoint, to verify its files offline.
    /// Whoever holds it can also forge records: keep it like a root token.
    pub async fn audit_verification_key(&self, caller: &Caller, path: &str) -> Result<VerificationKey> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        self.authorize(caller, &id, &format!("sys/audit/{path}key"), Capability::Sudo).await?;
        self.unsealed()?.audit.verification_key(&path).await.map_err(Error::from)
    }

    /// What the server needs to verify a device's files it is sent: those
    /// this node wrote, or (on a shared store) those `node` wrote.
    pub async fn audit_verifier(
        &self,
        caller: &Caller,
        path: &str,
        node: Option<&str>,
    ) -> Result<(Zeroizing<Vec<u8>>, chain::Checkpoint)> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        self.authorize(caller, &id, &format!("sys/audit/{path}verify"), Capability::Sudo).await?;
        self.unsealed()?.audit.verify_parts(&path, node).await.map_err(Error::from)
    }

    /// The device's checkpoint now (this node's, or `node`'s as it last
    /// wrote it): its last sequence number.
    pub async fn audit_checkpoint(&self, caller: &Caller, path: &str, node: Option<&str>) -> Result<chain::Checkpoint> {
        Ok(self.audit_verifier(caller, path, node).await?.1)
    }

    /// With `audit_file_dir` configured, a file device's log must be a file
    /// directly in that directory (resolved, so no link leads out of it).
    fn check_audit_file_dir(&self, file_path: &str) -> Result<()> {
        let Some(dir) = &self.config.audit_file_dir else { return Ok(()) };
        let path = std::path::Path::new(file_path);
        let outside = || {
            Error::PermissionDenied(format!(
                "file_path {file_path:?} is not a file in the server's audit_file_dir {}",
                dir.display()
            ))
        };
        let (Some(parent), Some(_)) = (path.parent(), path.file_name()) else { return Err(outside()) };
        let parent = parent.canonicalize().map_err(|_| outside())?;
        let dir = dir.canonicalize().map_err(|e| {
            Error::FailedPrecondition(format!("the server's audit_file_dir {} cannot be used: {e}", dir.display()))
        })?;
        if parent != dir {
            return Err(outside());
        }
        Ok(())
    }

    /// Subscribes to a stream device's records.
    pub async fn watch_audit(&self, caller: &Caller, path: &str) -> Result<broadcast::Receiver<std::sync::Arc<str>>> {
        let id = self.authenticate(caller).await?;
        let path = normalize_device_path(path)?;
        // Every request's record, live: as much as reading the log itself.
        self.authorize(caller, &id, &format!("sys/audit/{path}watch"), Capability::Sudo).await?;
        self.unsealed()?.audit.subscribe(&path).map_err(Error::from)
    }

    /// Reopens the devices' files and connections (on SIGHUP, after a log
    /// rotation). Returns the devices that failed to reopen.
    pub async fn reopen_audit(&self) -> Vec<String> {
        match self.unsealed() {
            Ok(l) => l.audit.reopen().await,
            Err(_) => Vec::new(),
        }
    }
}
