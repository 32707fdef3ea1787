//! Audit devices: their table in the barrier, their writer threads and
//! sinks, checkpoints and recovery.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use keybridge_barrier::{Barrier, WriteBatch};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use zeroize::Zeroizing;

use super::chain::{self, ChainValue, Checkpoint, MacKey};
use super::{AuditData, CallState, Caller, Kind, StoredCheckpoint, VerificationKey, render};
use crate::{Error, Result, Timestamp};

pub(crate) const DEVICES_KEY: &str = "core/audit/devices";
const KEYS_PREFIX: &str = "core/audit/keys/";
const CHECKPOINT_PREFIX: &str = "core/audit/checkpoint/";
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const MAX_GROUP: usize = 1024;
/// Buffers a record is assembled in are kept for the next record unless a
/// large one (a big response) grew them past this.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Frees a reused buffer that a large record grew past [`SCRATCH_KEEP`].
fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP {
        *buf = Vec::new();
    }
}

thread_local! {
    /// Where a request renders its record for a device written inline.
    /// Records hold no secret (values and tokens are HMACs already).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device's name, e.g. `file/`.
    pub path: String,
    pub kind: String,
    pub description: String,
    pub options: BTreeMap<String, String>,
    pub id: String,
    pub created: Timestamp,
}

impl DeviceEntry {
    fn fsync(&self) -> bool {
        self.options.get("fsync").is_some_and(|v| v == "true")
    }

    /// Stream devices never count toward fail-closed.
    fn counts(&self) -> bool {
        self.kind != "stream"
    }
}

type Ack = oneshot::Sender<std::result::Result<(), String>>;

enum Msg {
    Record(Vec<u8>, Option<Ack>),
    Reopen(Ack),
    Checkpoint(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

struct Device {
    entry: DeviceEntry,
    hmac_key: MacKey,
    chain_key: Zeroizing<Vec<u8>>,
    chain_mac: MacKey,
    /// Files without fsync and streams are written inline by the request
    /// (an append to the page cache, or a channel send, costs less than a
    /// hand-off to a thread); sockets and `fsync=true` files go through
    /// the writer thread, which groups records.
    direct: Option<Arc<Mutex<Output>>>,
    tx: mpsc::Sender<Msg>,
    stream: Option<broadcast::Sender<Arc<str>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Device {
    async fn send_and_wait(&self, make: impl FnOnce(oneshot::Sender<()>) -> Msg) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn keys_key(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}")
}

fn checkpoint_key(id: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{id}")
}

/// The enabled devices. Lives while the core is unsealed.
pub struct Broker {
    barrier: Arc<Barrier>,
    devices: RwLock<Arc<Vec<Arc<Device>>>>,
    /// Where writer threads run their barrier commits (checkpoints).
    runtime: tokio::runtime::Handle,
}

impl Broker {
    /// Starts the devices in the barrier's device table.
    pub(crate) async fn load(barrier: Arc<Barrier>, runtime: tokio::runtime::Handle) -> Result<Broker> {
        let broker = Broker { barrier, devices: RwLock::new(Arc::new(Vec::new())), runtime };
        let entries: Vec<DeviceEntry> = match broker.barrier.get(DEVICES_KEY).await? {
            Some(raw) => serde_json::from_slice(&raw)
                .map_err(|e| Error::Corrupt { key: DEVICES_KEY.into(), reason: e.to_string() })?,
            None => Vec::new(),
        };
        let mut started = Vec::new();
        for entry in entries {
            let keys = broker
                .barrier
                .get(&keys_key(&entry.id))
                .await?
                .ok_or_else(|| Error::Corrupt { key: keys_key(&entry.id), reason: "missing".into() })?;
            match broker.start(entry.clone(), keys.clone(), false).await {
                Ok(d) => started.push(d),
                Err(e) => {
                    // A device that cannot start (a directory gone, a collector
                    // down) must not keep the server sealed. It is kept so the
                    // table stays as the operator wrote it, and it fails every
                    // record until it can write, which is what fail-closed asks.
                    tracing::error!(device = %entry.path, error = %e, "audit device failed to start");
                    started.push(broker.start_failed(entry, keys, e.to_string()));
                }
            }
        }
        *broker.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(started);
        Ok(broker)
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

    /// Records one event on every device. Fails when devices that count
    /// toward fail-closed are enabled and none accepted the record.
    pub(crate) async fn log(
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
                // device's lock, and written before the next device's turn.
                let r = SCRATCH.with_borrow_mut(|body| {
                    body.clear();
                    render(body, kind, caller, state, outcome, response, &d.hmac_key);
                    let r = out.lock().unwrap_or_else(|p| p.into_inner()).write(&d.chain_mac, false, &[body]);
                    release_if_large(body);
                    r
                });
                match r {
                    Ok(()) => ok |= d.entry.counts(),
                    Err(e) if d.entry.counts() => errors.push(format!("{}: {e}", d.entry.path)),
                    Err(_) => {}
                }
                continue;
            }
            let mut body = Vec::with_capacity(512);
            render(&mut body, kind, caller, state, outcome, response, &d.hmac_key);
            if d.entry.counts() {
                let (tx, rx) = oneshot::channel();
                if d.tx.send(Msg::Record(body, Some(tx))).is_ok() {
                    waits.push((d, rx));
                }
            } else {
                let _ = d.tx.send(Msg::Record(body, None));
            }
        }
        let counting = devices.iter().filter(|d| d.entry.counts()).count();
        if counting == 0 {
            return Ok(());
        }
        for (d, rx) in waits {
            match rx.await {
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
    pub(crate) async fn enable(&self, entry: DeviceEntry) -> Result<(Vec<DeviceEntry>, Zeroizing<Vec<u8>>)> {
        if self.current().iter().any(|d| d.entry.path == entry.path) {
            return Err(Error::AlreadyExists(format!("an audit device is already enabled at {:?}", entry.path)));
        }
        if entry.kind == "file" {
            let p = &entry.options["file_path"];
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
    pub(crate) async fn remove(&self, path: &str) -> Vec<DeviceEntry> {
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

    pub(crate) fn entry(&self, path: &str) -> Result<DeviceEntry> {
        Ok(self.find(path)?.entry.clone())
    }

    pub(crate) fn hash(&self, path: &str, input: &[u8]) -> Result<String> {
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
    pub(crate) async fn verification_key(&self, path: &str) -> Result<VerificationKey> {
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

    /// The verifier for a device's files, with the checkpoint to end on.
    pub(crate) async fn verify_parts(&self, path: &str) -> Result<(Zeroizing<Vec<u8>>, Checkpoint)> {
        let d = self.find(path)?;
        d.send_and_wait(Msg::Checkpoint).await;
        let cp = self.read_checkpoint(&d.entry.id).await?;
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

    async fn read_checkpoint(&self, id: &str) -> Result<StoredCheckpoint> {
        let key = checkpoint_key(id);
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
            "file" => (None, Box::new(FileSink::open(&entry)?)),
            "socket" => (None, Box::new(SocketSink::connect(&entry)?)),
            _ => {
                let cap = entry.options.get("buffer").and_then(|b| b.parse().ok()).unwrap_or(4096);
                let (tx, _) = broadcast::channel(cap);
                (Some(tx.clone()), Box::new(StreamSink(tx)))
            }
        };
        let state = sink.recover(&chain_key, &cp);
        let (hmac_key, chain_mac) = (MacKey::new(&hmac_key), MacKey::new(&chain_key));
        let output = Arc::new(Mutex::new(Output { sink, state, dirty: fresh, lines: Vec::new() }));
        let direct = (entry.kind == "stream" || (entry.kind == "file" && !entry.fsync())).then(|| output.clone());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            output,
            chain_key: chain_mac.clone(),
            fsync: entry.fsync(),
            barrier: self.barrier.clone(),
            handle: self.runtime.clone(),
            checkpoint_key: checkpoint_key(&entry.id),
            device: entry.path.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("audit-{}", entry.path.trim_end_matches('/')))
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the device's writer thread: {e}"))?;
        Ok(Arc::new(Device {
            entry,
            hmac_key,
            chain_key,
            chain_mac,
            direct,
            tx,
            stream,
            thread: Mutex::new(Some(thread)),
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
            hmac_key: MacKey::new(&hmac_key),
            chain_mac: MacKey::new(&chain_key),
            chain_key,
            direct: None,
            tx,
            stream: None,
            thread: Mutex::new(Some(thread)),
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

pub(crate) fn forget(batch: &mut WriteBatch, id: &str) {
    batch.delete(keys_key(id)).delete(checkpoint_key(id));
}

pub(crate) fn store_keys(batch: &mut WriteBatch, id: &str, keys: Zeroizing<Vec<u8>>) {
    batch.put(keys_key(id), keys);
}

// ----- chain state and the writer thread ----------------------------------

#[derive(Clone, Copy)]
struct ChainState {
    seq: u64,
    chain: ChainValue,
    segment_start: u64,
    /// The next record starts a new file segment (and carries `prev`).
    new_segment: bool,
}

/// A device's sink and chain position, behind one lock: the request path
/// (direct devices) and the writer thread (grouped devices, checkpoints,
/// reopening) both write through it.
struct Output {
    sink: Box<dyn Sink>,
    state: ChainState,
    /// The state moved since the last checkpoint.
    dirty: bool,
    /// The lines of a group are assembled here (kept between groups).
    lines: Vec<u8>,
}

impl Output {
    /// Chains and writes `bodies` as one group. On failure nothing of the
    /// group stays (the sink cuts its partial write back) and the chain
    /// position is unchanged.
    fn write(&mut self, chain_key: &MacKey, fsync: bool, bodies: &[&[u8]]) -> std::io::Result<()> {
        let saved = self.state;
        let result = (|| -> std::io::Result<()> {
            if self.sink.prepare()? {
                self.state.new_segment = true;
            }
            let buf = &mut self.lines;
            buf.clear();
            buf.reserve(bodies.iter().map(|b| b.len() + 160).sum());
            for body in bodies {
                let s = &mut self.state;
                s.seq += 1;
                let first = s.new_segment;
                s.chain = chain::seal_line(chain_key, &s.chain, s.seq, first, body, buf);
                if first {
                    s.segment_start = s.seq;
                    s.new_segment = false;
                }
            }
            self.sink.write(buf)?;
            if fsync {
                self.sink.sync()?;
            }
            Ok(())
        })();
        release_if_large(&mut self.lines);
        match result {
            Ok(()) => self.dirty = true,
            Err(_) => {
                self.sink.rollback();
                self.state = saved;
            }
        }
        result
    }
}

struct Writer {
    output: Arc<Mutex<Output>>,
    chain_key: MacKey,
    fsync: bool,
    barrier: Arc<Barrier>,
    handle: tokio::runtime::Handle,
    checkpoint_key: String,
    device: String,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self, rx: mpsc::Receiver<Msg>) {
        let mut last_checkpoint = Instant::now();
        loop {
            let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.checkpoint(false);
                    last_checkpoint = Instant::now();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.checkpoint(false);
                    return;
                }
            };
            let mut batch = Vec::new();
            let mut control = None;
            match first {
                Msg::Record(body, ack) => batch.push((body, ack)),
                other => control = Some(other),
            }
            while control.is_none() && batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(Msg::Record(body, ack)) => batch.push((body, ack)),
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write(batch);
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.checkpoint(false);
                last_checkpoint = Instant::now();
            }
            match control {
                None | Some(Msg::Record(..)) => {}
                Some(Msg::Reopen(ack)) => {
                    let mut out = self.lock();
                    let r = out.sink.reopen().map_err(|e| e.to_string());
                    if r.is_ok() {
                        out.state.new_segment = true;
                    }
                    drop(out);
                    let _ = ack.send(r);
                }
                Some(Msg::Checkpoint(done)) => {
                    self.checkpoint(true);
                    last_checkpoint = Instant::now();
                    let _ = done.send(());
                }
                Some(Msg::Shutdown(done)) => {
                    self.checkpoint(true);
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn write(&self, batch: Vec<(Vec<u8>, Option<Ack>)>) {
        let bodies: Vec<&[u8]> = batch.iter().map(|(b, _)| b.as_slice()).collect();
        let result = self.lock().write(&self.chain_key, self.fsync, &bodies);
        if result.is_ok() && self.fsync {
            // Group commit: the checkpoint covers the group before anyone
            // is told it was written, so truncation shows.
            self.checkpoint(true);
        }
        let result = result.map_err(|e| e.to_string());
        for (_, ack) in batch {
            if let Some(ack) = ack {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// Stores the chain position in the barrier (if it moved, or `force`).
    fn checkpoint(&self, force: bool) {
        let cp = {
            let mut out = self.lock();
            if !out.dirty && !force {
                return;
            }
            out.dirty = false;
            StoredCheckpoint {
                seq: out.state.seq,
                chain: hex::encode(out.state.chain),
                segment_start: out.state.segment_start,
                offset: out.sink.offset(),
            }
        };
        let mut batch = WriteBatch::new();
        batch.put(self.checkpoint_key.clone(), Zeroizing::new(serde_json::to_vec(&cp).unwrap_or_default()));
        if let Err(e) = self.handle.block_on(self.barrier.commit(batch)) {
            self.lock().dirty = true;
            tracing::warn!(device = %self.device, error = %e, "cannot checkpoint the audit chain");
        }
    }
}

// ----- sinks ----------------------------------------------------------------

trait Sink: Send {
    /// Makes the sink ready to write; true if it starts a new segment (a
    /// new connection).
    fn prepare(&mut self) -> std::io::Result<bool> {
        Ok(false)
    }
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Removes what a failed write left behind.
    fn rollback(&mut self) {}
    fn reopen(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn offset(&self) -> u64 {
        0
    }
    /// The chain state to continue from, given the last checkpoint.
    fn recover(&mut self, _key: &[u8], cp: &StoredCheckpoint) -> ChainState {
        ChainState { seq: cp.seq, chain: cp.chain_value(), segment_start: cp.segment_start, new_segment: true }
    }
}

struct FileSink {
    path: std::path::PathBuf,
    mode: u32,
    file: std::fs::File,
    offset: u64,
}

impl FileSink {
    /// Opens for appending, never through a symbolic link (`O_NOFOLLOW`):
    /// whoever can write the log's directory cannot point the chain at
    /// another file.
    fn open_file(path: &std::path::Path, mode: u32) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(path)
    }

    fn open(entry: &DeviceEntry) -> std::result::Result<Self, String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = std::path::PathBuf::from(&entry.options["file_path"]);
        let mode = entry.options.get("mode").and_then(|m| u32::from_str_radix(m, 8).ok()).unwrap_or(0o600);
        let file = Self::open_file(&path, mode).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // A file that was there already: one name only (a hard link would
        // put the chain somewhere else too), and the mode asked for.
        let meta = file.metadata().map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if meta.is_file() && meta.nlink() > 1 {
            return Err(format!("cannot open {}: it has other hard links; give a file of its own", path.display()));
        }
        if meta.is_file() && meta.permissions().mode() & 0o7777 != mode {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
        }
        let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FileSink { path, mode, file, offset })
    }
}

impl Sink for FileSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn rollback(&mut self) {
        // Only a regular file can be cut back to where this group began.
        if self.file.metadata().is_ok_and(|m| m.is_file() && m.len() > self.offset) {
            let _ = self.file.set_len(self.offset);
        }
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = Self::open_file(&self.path, self.mode)?;
        self.offset = self.file.metadata()?.len();
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.offset
    }

    /// Continues after the last record that verifies: the checkpoint, then
    /// any records written after it that chain on correctly (the server may
    /// have stopped before its next checkpoint).
    fn recover(&mut self, key: &[u8], cp: &StoredCheckpoint) -> ChainState {
        let mut state = ChainState {
            seq: cp.seq,
            chain: cp.chain_value(),
            segment_start: cp.segment_start,
            new_segment: cp.seq == 0,
        };
        if !self.file.metadata().is_ok_and(|m| m.is_file()) {
            // A device such as /dev/full or a FIFO: nothing to read back.
            state.new_segment = true;
            return state;
        }
        let len = self.offset;
        if len < cp.offset {
            tracing::warn!(file = %self.path.display(), "the audit file is shorter than its checkpoint: it was truncated or replaced; continuing the chain in a new segment");
            state.new_segment = true;
            return state;
        }
        let mut tail = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(cp.offset))?;
            f.read_to_end(&mut tail)
        });
        if read.is_err() {
            state.new_segment = true;
            return state;
        }
        let mut v = chain::Verifier::resume(key, cp.seq, cp.chain_value());
        let file = self.path.display().to_string();
        v.start_file(&file);
        v.feed(&tail);
        let (seq, chain_value, segment_start) = v.position();
        state.seq = seq;
        state.chain = chain_value;
        state.segment_start = segment_start.unwrap_or(state.segment_start);
        if seq > 0 && cp.seq == 0 {
            state.new_segment = false;
        }
        if v.failed() || v.torn() {
            tracing::warn!(file = %file, "the audit file has records after the last valid one; continuing the chain in a new segment");
            state.new_segment = true;
            if v.torn() {
                let _ = self.file.write_all(b"\n");
                self.offset += 1;
            }
        }
        state
    }
}

struct SocketSink {
    address: String,
    unix: bool,
    timeout: Duration,
    conn: Option<Box<dyn Write + Send>>,
}

impl SocketSink {
    fn connect(entry: &DeviceEntry) -> std::result::Result<Self, String> {
        let mut s = SocketSink {
            address: entry.options["address"].clone(),
            unix: entry.options.get("socket_type").is_some_and(|t| t == "unix"),
            timeout: entry
                .options
                .get("write_timeout")
                .and_then(|t| humantime::parse_duration(t).ok())
                .unwrap_or(Duration::from_secs(2)),
            conn: None,
        };
        s.dial().map_err(|e| format!("cannot connect to {}: {e}", s.address))?;
        Ok(s)
    }

    fn dial(&mut self) -> std::io::Result<()> {
        let conn: Box<dyn Write + Send> = if self.unix {
            let c = std::os::unix::net::UnixStream::connect(&self.address)?;
            c.set_write_timeout(Some(self.timeout))?;
            Box::new(c)
        } else {
            use std::net::ToSocketAddrs;
            let addr = self
                .address
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
            let c = std::net::TcpStream::connect_timeout(&addr, self.timeout)?;
            c.set_write_timeout(Some(self.timeout))?;
            c.set_nodelay(true)?;
            Box::new(c)
        };
        self.conn = Some(conn);
        Ok(())
    }
}

impl Sink for SocketSink {
    fn prepare(&mut self) -> std::io::Result<bool> {
        if self.conn.is_some() {
            return Ok(false);
        }
        self.dial()?;
        Ok(true)
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let conn = self.conn.as_mut().ok_or_else(|| std::io::Error::other("not connected"))?;
        let r = conn.write_all(buf).and_then(|_| conn.flush());
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        self.conn = None;
        Ok(())
    }
}

struct StreamSink(broadcast::Sender<Arc<str>>);

impl Sink for StreamSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let _ = self.0.send(Arc::from(String::from_utf8_lossy(line).as_ref()));
        }
        Ok(())
    }
}
