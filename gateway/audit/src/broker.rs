//! The broker: the enabled devices, and recording each request and
//! response on all of them, failing closed.

use std::sync::{Arc, Mutex, RwLock, mpsc};

use keybridge_barrier::{Barrier, WriteBatch};
use rand::RngCore;
use tokio::sync::{broadcast, oneshot};
use zeroize::Zeroizing;

use super::chain::{Checkpoint, MacKey};
use super::device::*;
use super::{AuditData, CallState, Caller, Kind, StoredCheckpoint, VerificationKey, render};
use crate::{Error, Result};

/// The node a broker runs on.
#[derive(Clone, Debug)]
pub struct Node {
    /// Replaces `{node}` in a file device's `file_path`.
    pub id: String,
    /// The store is shared with other nodes: each node's devices keep their
    /// own chain, with a checkpoint of their own.
    pub shared: bool,
    /// The directory file devices must write in on this node (its
    /// `audit_file_dir`), checked again when a device another node enabled
    /// starts here.
    pub file_dir: Option<std::path::PathBuf>,
}

/// The enabled devices. Lives while the core is unsealed.
pub struct Broker {
    barrier: Arc<Barrier>,
    node: Node,
    devices: RwLock<Arc<Vec<Arc<Device>>>>,
    /// Where writer threads run their barrier commits (checkpoints).
    runtime: tokio::runtime::Handle,
}

impl Default for Node {
    /// A node with a store of its own.
    fn default() -> Self {
        Node { id: "local".into(), shared: false, file_dir: None }
    }
}

impl Broker {
    /// Starts the devices in the barrier's device table.
    pub async fn load(barrier: Arc<Barrier>, runtime: tokio::runtime::Handle, node: Node) -> Result<Broker> {
        let broker = Broker { barrier, node, devices: RwLock::new(Arc::new(Vec::new())), runtime };
        broker.refresh().await?;
        Ok(broker)
    }

    /// Brings the running devices in line with the barrier's device table
    /// (another node sharing the store changed it): starts those not
    /// running here, stops those no longer in it. The caller serialises it
    /// with `enable` and `remove`. Returns the stamp of the table it read,
    /// which a change of the table is conditioned on.
    pub async fn refresh(&self) -> Result<keybridge_barrier::Stamp> {
        let (raw, stamp) = self.barrier.get_stamped(DEVICES_KEY).await?;
        let entries: Vec<DeviceEntry> = match raw {
            Some(raw) => serde_json::from_slice(&raw)
                .map_err(|e| Error::Corrupt { key: DEVICES_KEY.into(), reason: e.to_string() })?,
            None => Vec::new(),
        };
        let running = self.current();
        let mut next = Vec::new();
        for entry in entries {
            if let Some(d) = running.iter().find(|d| d.entry.id == entry.id) {
                next.push(d.clone());
                continue;
            }
            let keys = self
                .barrier
                .get(&keys_key(&entry.id))
                .await?
                .ok_or_else(|| Error::Corrupt { key: keys_key(&entry.id), reason: "missing".into() })?;
            match self.start(entry.clone(), keys.clone(), false).await {
                Ok(d) => next.push(d),
                Err(e) => {
                    // A device that cannot start (a directory gone, a collector
                    // down) must not keep the server sealed. It is kept so the
                    // table stays as the operator wrote it, and it fails every
                    // record until it can write, which is what fail-closed asks.
                    tracing::error!(device = %entry.path, error = %e, "audit device failed to start");
                    next.push(self.start_failed(entry, keys, e.to_string()));
                }
            }
        }
        let gone: Vec<Arc<Device>> =
            running.iter().filter(|d| !next.iter().any(|n| Arc::ptr_eq(n, d))).cloned().collect();
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        for d in gone {
            stop(&d).await;
        }
        Ok(stamp)
    }

    fn current(&self) -> Arc<Vec<Arc<Device>>> {
        self.devices.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn list(&self) -> Vec<DeviceEntry> {
        self.current().iter().map(|d| d.entry.clone()).collect()
    }

    fn find(&self, path: &str) -> Result<Arc<Device>> {
        self.current()
            .iter()
            .find(|d| d.entry.path == path)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no audit device is enabled at {path:?}")))
    }

    /// Whether any device is enabled (requests are audited at all).
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// Each device's path with the records it wrote and failed to write
    /// since it started on this node.
    pub fn tallies(&self) -> Vec<(String, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.current().iter().map(|d| (d.entry.path.clone(), d.written.load(Relaxed), d.failed.load(Relaxed))).collect()
    }

    /// Records one event on every device. Fails when devices that count
    /// toward fail-closed are enabled and none accepted the record.
    pub async fn log(
        &self,
        kind: Kind,
        caller: &Caller,
        state: &CallState,
        outcome: Option<(&str, Option<&str>)>,
        response: Option<&AuditData>,
    ) -> std::result::Result<(), String> {
        let devices = self.current();
        if devices.is_empty() {
            return Ok(());
        }
        let mut waits = Vec::new();
        let mut ok = false;
        let mut errors = Vec::new();
        for d in devices.iter() {
            if let Some(out) = &d.direct {
                // Rendered into this thread's scratch buffer, outside the
                // device's lock, added to this thread's open group for the
                // device, and written (by this request, or with the group
                // by the one that opened it) before the next device's turn.
                let turn = SCRATCH.with_borrow_mut(|body| {
                    body.clear();
                    render(body, kind, caller, state, outcome, response, d.serial, &d.hmac_key);
                    let t = join(d.serial, out, &d.chain_mac, body);
                    release_if_large(body);
                    t
                });
                let r = match turn {
                    Turn::Lead(leading) => leading.write().await,
                    Turn::Wait(rx) => wait(rx).await,
                };
                d.tally(r.is_ok());
                match r {
                    Ok(()) => ok |= d.entry.counts(),
                    Err(e) if d.entry.counts() => errors.push(format!("{}: {e}", d.entry.path)),
                    Err(_) => {}
                }
                continue;
            }
            let mut body = Vec::with_capacity(512);
            render(&mut body, kind, caller, state, outcome, response, d.serial, &d.hmac_key);
            if d.entry.counts() {
                let (tx, rx) = oneshot::channel();
                if d.tx.send(Msg::Record(body, Some(tx))).is_ok() {
                    waits.push((d, rx));
                }
            } else {
                d.tally(d.tx.send(Msg::Record(body, None)).is_ok());
            }
        }
        let counting = devices.iter().filter(|d| d.entry.counts()).count();
        if counting == 0 {
            return Ok(());
        }
        for (d, rx) in waits {
            let r = rx.await;
            d.tally(matches!(r, Ok(Ok(()))));
            match r {
                Ok(Ok(())) => ok = true,
                Ok(Err(e)) => errors.push(format!("{}: {e}", d.entry.path)),
                Err(_) => errors.push(format!("{}: its writer stopped", d.entry.path)),
            }
        }
        if !errors.is_empty() {
            tracing::warn!(errors = %errors.join("; "), "audit device failed to write");
        }
        if ok {
            Ok(())
        } else if errors.is_empty() {
            Err("no audit device could be reached".into())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Checks a new device's options and reaches its sink (IO), then starts
    /// it. The caller stores the table.
    pub async fn enable(&self, entry: DeviceEntry) -> Result<(Vec<DeviceEntry>, Zeroizing<Vec<u8>>)> {
        if self.current().iter().any(|d| d.entry.path == entry.path) {
            return Err(Error::AlreadyExists(format!("an audit device is already enabled at {:?}", entry.path)));
        }
        if entry.kind == "file" {
            let p = &self.on_this_node(&entry).options["file_path"];
            if let Ok(m) = std::fs::metadata(p)
                && m.is_file()
                && m.len() > 0
            {
                return Err(Error::FailedPrecondition(format!(
                    "{p} exists and is not empty: each file holds one device's chain; move it away or choose another file_path"
                )));
            }
        }
        let mut keys = Zeroizing::new(vec![0u8; 64]);
        rand::rngs::OsRng.fill_bytes(&mut keys);
        let device = self.start(entry, keys.clone(), true).await.map_err(Error::FailedPrecondition)?;
        let mut list: Vec<Arc<Device>> = self.current().as_ref().clone();
        list.push(device);
        let entries = list.iter().map(|d| d.entry.clone()).collect();
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
        Ok((entries, keys))
    }

    /// Undoes `enable` when storing the table failed.
    pub async fn remove(&self, path: &str) -> Vec<DeviceEntry> {
        let mut list: Vec<Arc<Device>> = self.current().as_ref().clone();
        let gone: Vec<Arc<Device>> = list.iter().filter(|d| d.entry.path == path).cloned().collect();
        list.retain(|d| d.entry.path != path);
        let entries = list.iter().map(|d| d.entry.clone()).collect();
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
        for d in gone {
            stop(&d).await;
        }
        entries
    }

    pub fn entry(&self, path: &str) -> Result<DeviceEntry> {
        Ok(self.find(path)?.entry.clone())
    }

    pub fn hash(&self, path: &str, input: &[u8]) -> Result<String> {
        Ok(super::hmac_hex(&self.find(path)?.hmac_key, input))
    }

    pub fn subscribe(&self, path: &str) -> Result<broadcast::Receiver<Arc<str>>> {
        let d = self.find(path)?;
        d.stream.as_ref().map(|s| s.subscribe()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{path} is a {} device; watch a stream device (keybridge audit enable stream)",
                d.entry.kind
            ))
        })
    }

    /// The device's chain key and its checkpoint, taken now.
    pub async fn verification_key(&self, path: &str) -> Result<VerificationKey> {
        let d = self.find(path)?;
        d.send_and_wait(Msg::Checkpoint).await;
        let cp = self.read_checkpoint(&d.entry.id).await?;
        Ok(VerificationKey {
            device: d.entry.path.clone(),
            key: hex::encode(&*d.chain_key),
            checkpoint_seq: cp.seq,
            checkpoint_chain: cp.chain.clone(),
            segment_start: cp.segment_start,
        })
    }

    /// The verifier for a device's files, with the checkpoint to end on:
    /// this node's, or (on a shared store) another node's, as it last wrote
    /// it.
    pub async fn verify_parts(&self, path: &str, node: Option<&str>) -> Result<(Zeroizing<Vec<u8>>, Checkpoint)> {
        let d = self.find(path)?;
        let cp = match node.filter(|n| *n != self.node.id) {
            Some(other) if self.node.shared => {
                let key = node_checkpoint_key(&d.entry.id, other);
                if self.barrier.get(&key).await?.is_none() {
                    return Err(Error::NotFound(format!(
                        "node {other:?} has no checkpoint of {path}'s chain: verify through that node, or after its next \
                         checkpoint"
                    )));
                }
                self.read_checkpoint_at(key).await?
            }
            Some(other) => {
                return Err(Error::NotFound(format!(
                    "this server shares its store with no other node: there is no node {other:?}"
                )));
            }
            None => {
                d.send_and_wait(Msg::Checkpoint).await;
                self.read_checkpoint(&d.entry.id).await?
            }
        };
        Ok((
            d.chain_key.clone(),
            Checkpoint { seq: cp.seq, chain: Some(cp.chain_value()), segment_start: cp.segment_start.max(1) },
        ))
    }

    /// File devices reopen their files (after `logrotate` moved them); the
    /// chain continues in the new file.
    pub async fn reopen(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for d in self.current().iter() {
            let (tx, rx) = oneshot::channel();
            if d.tx.send(Msg::Reopen(tx)).is_ok()
                && let Ok(Err(e)) = rx.await
            {
                errors.push(format!("{}: {e}", d.entry.path));
            }
        }
        errors
    }

    /// Stops every device after a final checkpoint.
    pub async fn shutdown(&self) {
        let devices = std::mem::take(&mut *self.devices.write().unwrap_or_else(|p| p.into_inner()));
        for d in devices.iter() {
            stop(d).await;
        }
    }

    /// Where this node keeps the checkpoint of device `id`.
    fn checkpoint_key(&self, id: &str) -> String {
        match self.node.shared {
            true => node_checkpoint_key(id, &self.node.id),
            false => checkpoint_key(id),
        }
    }

    /// The entry as this node opens it: `{node}` in a file's path replaced
    /// by the node's id.
    fn on_this_node(&self, entry: &DeviceEntry) -> DeviceEntry {
        let mut e = entry.clone();
        if let Some(p) = e.options.get_mut("file_path") {
            *p = p.replace("{node}", &self.node.id);
        }
        e
    }

    /// A file device's path on this node is a file directly in this node's
    /// `audit_file_dir`, when it has one.
    fn in_file_dir(&self, file_path: &str) -> std::result::Result<(), String> {
        let Some(dir) = &self.node.file_dir else { return Ok(()) };
        let path = std::path::Path::new(file_path);
        let parent = path.parent().and_then(|p| p.canonicalize().ok());
        match (parent, dir.canonicalize()) {
            (Some(p), Ok(d)) if p == d && path.file_name().is_some() => Ok(()),
            _ => Err(format!("{file_path} is not a file in this node's audit_file_dir {}", dir.display())),
        }
    }

    async fn read_checkpoint(&self, id: &str) -> Result<StoredCheckpoint> {
        self.read_checkpoint_at(self.checkpoint_key(id)).await
    }

    async fn read_checkpoint_at(&self, key: String) -> Result<StoredCheckpoint> {
        Ok(match self.barrier.get(&key).await? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?,
            None => StoredCheckpoint::default(),
        })
    }

    fn split_keys(keys: &[u8]) -> (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>) {
        let (h, c) = keys.split_at(keys.len() / 2);
        (Zeroizing::new(h.to_vec()), Zeroizing::new(c.to_vec()))
    }

    async fn start(
        &self,
        entry: DeviceEntry,
        keys: Zeroizing<Vec<u8>>,
        fresh: bool,
    ) -> std::result::Result<Arc<Device>, String> {
        let (hmac_key, chain_key) = Self::split_keys(&keys);
        let cp = if fresh {
            StoredCheckpoint::default()
        } else {
            self.read_checkpoint(&entry.id).await.map_err(|e| e.to_string())?
        };
        let (stream, mut sink): (Option<broadcast::Sender<Arc<str>>>, Box<dyn Sink>) = match entry.kind.as_str() {
            "file" => {
                let here = self.on_this_node(&entry);
                self.in_file_dir(&here.options["file_path"])?;
                (None, Box::new(FileSink::open(&here)?))
            }
            "socket" => (None, Box::new(SocketSink::connect(&entry)?)),
            _ => {
                let cap = entry.options.get("buffer").and_then(|b| b.parse().ok()).unwrap_or(4096);
                let (tx, _) = broadcast::channel(cap);
                (Some(tx.clone()), Box::new(StreamSink(tx)))
            }
        };
        let state = sink.recover(&chain_key, &cp);
        let (hmac_key, chain_mac) = (MacKey::new(&hmac_key), MacKey::new(&chain_key));
        let output = Arc::new(Mutex::new(Output::new(sink, state, fresh)));
        let direct = (entry.kind == "stream" || (entry.kind == "file" && !entry.fsync())).then(|| output.clone());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            output,
            chain_key: chain_mac.clone(),
            fsync: entry.fsync(),
            barrier: self.barrier.clone(),
            handle: self.runtime.clone(),
            checkpoint_key: self.checkpoint_key(&entry.id),
            device: entry.path.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("audit-{}", entry.path.trim_end_matches('/')))
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the device's writer thread: {e}"))?;
        Ok(Arc::new(Device {
            entry,
            serial: next_serial(),
            hmac_key,
            chain_key,
            chain_mac,
            direct,
            tx,
            stream,
            thread: Mutex::new(Some(thread)),
            written: Default::default(),
            failed: Default::default(),
        }))
    }

    /// A device whose sink could not be opened: every record fails with the reason.
    fn start_failed(&self, entry: DeviceEntry, keys: Zeroizing<Vec<u8>>, reason: String) -> Arc<Device> {
        let (hmac_key, chain_key) = Self::split_keys(&keys);
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::spawn(move || {
            while let Ok(m) = rx.recv() {
                match m {
                    Msg::Record(_, Some(ack)) | Msg::Reopen(ack) => {
                        let _ = ack.send(Err(format!("the device did not start: {reason}")));
                    }
                    Msg::Record(_, None) => {}
                    Msg::Checkpoint(done) => {
                        let _ = done.send(());
                    }
                    Msg::Shutdown(done) => {
                        let _ = done.send(());
                        return;
                    }
                }
            }
        });
        Arc::new(Device {
            entry,
            serial: next_serial(),
            hmac_key: MacKey::new(&hmac_key),
            chain_mac: MacKey::new(&chain_key),
            chain_key,
            direct: None,
            tx,
            stream: None,
            thread: Mutex::new(Some(thread)),
            written: Default::default(),
            failed: Default::default(),
        })
    }
}

async fn stop(d: &Device) {
    d.send_and_wait(Msg::Shutdown).await;
    let thread = d.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = thread {
        // The thread has acknowledged its shutdown; joining is immediate.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// Deletes a device's keys and checkpoint; `node_checkpoints`: the
/// checkpoints of each node (listed under [`node_checkpoints`]).
pub fn forget(batch: &mut WriteBatch, id: &str, node_checkpoints: &[String]) {
    batch.delete(keys_key(id)).delete(checkpoint_key(id));
    for k in node_checkpoints {
        batch.delete(k.clone());
    }
}

/// Where the nodes sharing a store keep their checkpoints of device `id`.
pub fn node_checkpoints(id: &str) -> String {
    node_checkpoint_key(id, "")
}

pub fn store_keys(batch: &mut WriteBatch, id: &str, keys: Zeroizing<Vec<u8>>) {
    batch.put(keys_key(id), keys);
}
