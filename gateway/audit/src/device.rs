//! Audit devices: their table in the barrier, their writer threads and
//! sinks, checkpoints and recovery.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use keybridge_barrier::{Barrier, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};
use zeroize::Zeroizing;

use super::StoredCheckpoint;
use super::chain::{self, ChainValue, MacKey};
use crate::Timestamp;

pub const DEVICES_KEY: &str = "core/audit/devices";
pub(super) const KEYS_PREFIX: &str = "core/audit/keys/";
pub(super) const CHECKPOINT_PREFIX: &str = "core/audit/checkpoint/";
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Records written with one `write`, at most (the writer thread's batches
/// and a serving thread's groups): bounds the buffer and how long a write
/// holds the device's lock.
pub(super) const MAX_GROUP: usize = 1024;
/// Buffers a record is assembled in are kept for the next record unless a
/// large one (a big response) grew them past this.
pub(super) const SCRATCH_KEEP: usize = 64 * 1024;

/// Frees a reused buffer that a large record grew past [`SCRATCH_KEEP`].
pub(super) fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP {
        *buf = Vec::new();
    }
}

thread_local! {
    /// Where a request renders its record for a device written inline.
    /// Records hold no secret (values and tokens are HMACs already).
    pub(super) static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    pub(super) fn fsync(&self) -> bool {
        self.options.get("fsync").is_some_and(|v| v == "true")
    }

    /// Stream devices never count toward fail-closed.
    pub(super) fn counts(&self) -> bool {
        self.kind != "stream"
    }
}

type Ack = oneshot::Sender<std::result::Result<(), String>>;

pub(super) enum Msg {
    Record(Vec<u8>, Option<Ack>),
    Reopen(Ack),
    Checkpoint(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Device {
    pub(super) entry: DeviceEntry,
    /// Unique among the devices this process started (a caller's records
    /// keep each device's rendering of its constant part under it).
    pub(super) serial: u64,
    pub(super) hmac_key: MacKey,
    pub(super) chain_key: Zeroizing<Vec<u8>>,
    pub(super) chain_mac: MacKey,
    /// Files without fsync and streams are written inline by the request
    /// (an append to the page cache, or a channel send, costs less than a
    /// hand-off to a thread); sockets and `fsync=true` files go through
    /// the writer thread, which groups records.
    pub(super) direct: Option<Arc<Mutex<Output>>>,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) stream: Option<broadcast::Sender<Arc<str>>>,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records written and records that failed, since the device started
    /// on this node (metrics).
    pub(super) written: std::sync::atomic::AtomicU64,
    pub(super) failed: std::sync::atomic::AtomicU64,
}

/// The next [`Device::serial`].
pub(super) fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Device {
    pub(super) fn tally(&self, ok: bool) {
        let c = if ok { &self.written } else { &self.failed };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) async fn send_and_wait(&self, make: impl FnOnce(oneshot::Sender<()>) -> Msg) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(make(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

pub(super) fn keys_key(id: &str) -> String {
    format!("{KEYS_PREFIX}{id}")
}

/// A node's checkpoint of the device's chain, on a store several nodes
/// share (each keeps its own chain).
pub(super) fn node_checkpoint_key(id: &str, node: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{id}/{node}")
}

pub(super) fn checkpoint_key(id: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{id}")
}

// ----- chain state and the writer thread ----------------------------------

#[derive(Clone, Copy)]
pub(super) struct ChainState {
    pub(super) seq: u64,
    pub(super) chain: ChainValue,
    pub(super) segment_start: u64,
    /// The next record starts a new file segment (and carries `prev`).
    pub(super) new_segment: bool,
}

/// A device's sink and chain position, behind one lock: the request path
/// (direct devices) and the writer thread (grouped devices, checkpoints,
/// reopening) both chain and write through it, so while it is not held the
/// state is what the sink holds.
pub(super) struct Output {
    pub(super) sink: Box<dyn Sink>,
    pub(super) state: ChainState,
    /// The state moved since the last checkpoint.
    pub(super) dirty: bool,
    /// The lines of a group are assembled here (kept between groups).
    pub(super) lines: Vec<u8>,
}

impl Output {
    pub(super) fn new(sink: Box<dyn Sink>, state: ChainState, dirty: bool) -> Output {
        Output { sink, state, dirty, lines: Vec::new() }
    }

    /// Chains and writes `bodies` as one group. On failure nothing of the
    /// group stays (the sink cuts its partial write back) and the chain
    /// position is unchanged.
    pub(super) fn write(&mut self, chain_key: &MacKey, fsync: bool, bodies: &[&[u8]]) -> std::io::Result<()> {
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

// ----- direct devices: a serving thread's requests write in groups --------

/// What a request in a group hears: its group was written, or why not.
type Outcome = std::result::Result<(), String>;

/// The records one thread's requests rendered for one direct device while
/// the first of them (the group's leader) yielded once. The leader chains
/// and writes them with one `write`, under the device's lock, and tells the
/// others. A group belongs to the thread it was opened on, so the requests
/// waiting for it are woken there, by a task of their own thread: no
/// request waits for another thread's writing, which cost an `eventfd`
/// wake-up and a context switch per request and left threads idle while a
/// preempted thread held everyone's lines.
#[derive(Default)]
pub(super) struct Group {
    /// The leader took the lines: whoever comes next opens a new group.
    closed: bool,
    /// The bodies, one after another, and where each ends.
    bodies: Vec<u8>,
    ends: Vec<usize>,
    waiters: Vec<oneshot::Sender<Outcome>>,
}

impl Group {
    fn add(&mut self, body: &[u8]) {
        self.bodies.extend_from_slice(body);
        self.ends.push(self.bodies.len());
    }
}

type SharedGroup = Arc<Mutex<Group>>;

fn lock_group(g: &Mutex<Group>) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// The group open on this thread, per device (by [`Device::serial`]).
    static OPEN: std::cell::RefCell<Vec<(u64, SharedGroup)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a request whose record was rendered does next.
pub(super) enum Turn<'a> {
    /// It opened its thread's group: it writes it.
    Lead(Leading<'a>),
    /// It joined the open group: it waits for the leader.
    Wait(oneshot::Receiver<Outcome>),
}

/// Adds `body` to this thread's open group for the device, or opens one.
pub(super) fn join<'a>(serial: u64, output: &'a Mutex<Output>, chain_key: &'a MacKey, body: &[u8]) -> Turn<'a> {
    OPEN.with_borrow_mut(|open| {
        if let Some((_, group)) = open.iter().find(|(s, _)| *s == serial) {
            let mut g = lock_group(group);
            // A full group is left to its leader; this record opens the next.
            if !g.closed && g.ends.len() < MAX_GROUP {
                g.add(body);
                let (tx, rx) = oneshot::channel();
                g.waiters.push(tx);
                return Turn::Wait(rx);
            }
        }
        // This device's previous group (closed, or full and written by
        // its leader still), and groups closed since, go.
        open.retain(|(s, g)| *s != serial && !lock_group(g).closed);
        let mut first = Group::default();
        first.add(body);
        let group = Arc::new(Mutex::new(first));
        open.push((serial, group.clone()));
        Turn::Lead(Leading { group, output, chain_key, wrote: false })
    })
}

/// The request that opened a group. It yields once, so that the requests
/// running beside it on its thread add their records, then closes the
/// group and writes it; dropped before it wrote (its request was
/// cancelled), it writes then, so the others never wait for a request that
/// is gone.
///
/// The device's lock is a plain mutex, taken and released inside one poll:
/// a write holds it for a few microseconds, and an async lock, whose
/// holder wakes the next leader's task from another thread, served about
/// 5% fewer audited `Get`s in alternating runs (with or without spinning
/// for it first). The price: a sink that blocks (a FIFO whose reader
/// stopped, a hung network mount) blocks every serving thread whose group
/// reaches the lock, and with them the gRPC health service (the telemetry
/// port's health answers from another runtime); with the device-wide list
/// before, only the writing thread blocked and the other threads' audited
/// requests waited without holding theirs.
pub(super) struct Leading<'a> {
    group: SharedGroup,
    output: &'a Mutex<Output>,
    chain_key: &'a MacKey,
    wrote: bool,
}

impl Leading<'_> {
    pub(super) async fn write(mut self) -> Outcome {
        tokio::task::yield_now().await;
        self.write_now()
    }

    fn write_now(&mut self) -> Outcome {
        self.wrote = true;
        let (bodies, ends, waiters) = {
            let mut g = lock_group(&self.group);
            g.closed = true;
            (std::mem::take(&mut g.bodies), std::mem::take(&mut g.ends), std::mem::take(&mut g.waiters))
        };
        let mut start = 0;
        let lines: Vec<&[u8]> = ends
            .iter()
            .map(|&end| {
                let line = &bodies[start..end];
                start = end;
                line
            })
            .collect();
        let r = self.output.lock().unwrap_or_else(|p| p.into_inner()).write(self.chain_key, false, &lines);
        let r = r.map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(r.clone());
        }
        r
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.wrote {
            let _ = self.write_now();
        }
    }
}

/// A request waiting for its group's leader.
pub(super) async fn wait(rx: oneshot::Receiver<Outcome>) -> Outcome {
    rx.await.unwrap_or_else(|_| Err("the request writing its group stopped".into()))
}

pub(super) struct Writer {
    pub(super) output: Arc<Mutex<Output>>,
    pub(super) chain_key: MacKey,
    pub(super) fsync: bool,
    pub(super) barrier: Arc<Barrier>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) checkpoint_key: String,
    pub(super) device: String,
}

impl Writer {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn run(self, rx: mpsc::Receiver<Msg>) {
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
                        // The new file's first line starts a segment.
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
                    // Requests still in flight (their records rendered for
                    // this device before it was disabled or the core sealed)
                    // fail from now on, closed, instead of appending to a
                    // file that a device started again may already continue
                    // (two chains in one file). A group written before this
                    // and after the checkpoint chains on, and a restart
                    // recovers it.
                    self.lock().sink = Box::new(Stopped);
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    pub(super) fn write(&self, batch: Vec<(Vec<u8>, Option<Ack>)>) {
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
    pub(super) fn checkpoint(&self, force: bool) {
        let cp = {
            let mut out = self.lock();
            if !out.dirty && !force {
                return;
            }
            out.dirty = false;
            // What the file holds: lines are chained and written under
            // this lock.
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

/// A stopped device's sink: every write fails.
struct Stopped;

impl Sink for Stopped {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("the audit device was stopped"))
    }
}

pub(super) trait Sink: Send {
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

pub(super) struct FileSink {
    pub(super) path: std::path::PathBuf,
    pub(super) mode: u32,
    pub(super) file: std::fs::File,
    pub(super) offset: u64,
}

impl FileSink {
    /// Opens for appending, never through a symbolic link (`O_NOFOLLOW`):
    /// whoever can write the log's directory cannot point the chain at
    /// another file.
    pub(super) fn open_file(path: &std::path::Path, mode: u32) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(path)
    }

    pub(super) fn open(entry: &DeviceEntry) -> std::result::Result<Self, String> {
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

pub(super) struct SocketSink {
    pub(super) address: String,
    pub(super) unix: bool,
    pub(super) timeout: Duration,
    pub(super) conn: Option<Box<dyn Write + Send>>,
}

impl SocketSink {
    pub(super) fn connect(entry: &DeviceEntry) -> std::result::Result<Self, String> {
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

    pub(super) fn dial(&mut self) -> std::io::Result<()> {
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

pub(super) struct StreamSink(pub(super) broadcast::Sender<Arc<str>>);

impl Sink for StreamSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let _ = self.0.send(Arc::from(String::from_utf8_lossy(line).as_ref()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// A sink in memory that fails its writes while `fail` is set.
    #[derive(Clone, Default)]
    struct Memory {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for Memory {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("no space left on device"));
            }
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(())
        }
    }

    fn output(sink: &Memory) -> Mutex<Output> {
        let state = ChainState { seq: 0, chain: [0; chain::CHAIN_LEN], segment_start: 0, new_segment: true };
        Mutex::new(Output::new(Box::new(sink.clone()), state, false))
    }

    fn lines(sink: &Memory) -> Vec<u64> {
        let bytes = sink.bytes.lock().unwrap().clone();
        let report = chain::verify_files(KEY, &[("memory".into(), bytes.clone())], None);
        assert_eq!(report.problem, None);
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
            .collect()
    }

    fn lead<'a>(t: Turn<'a>) -> Leading<'a> {
        match t {
            Turn::Lead(l) => l,
            Turn::Wait(_) => panic!("expected to open the group"),
        }
    }

    /// What a waiting request hears, or a failure after 5 s (a request
    /// left waiting fails the test instead of hanging it).
    async fn heard(rx: oneshot::Receiver<Outcome>) -> Outcome {
        tokio::time::timeout(Duration::from_secs(5), wait(rx))
            .await
            .unwrap_or_else(|_| Err("not told within 5 s".into()))
    }

    fn waiting(t: Turn<'_>) -> oneshot::Receiver<Outcome> {
        match t {
            Turn::Wait(rx) => rx,
            Turn::Lead(_) => panic!("expected to join the open group"),
        }
    }

    /// Records rendered on one thread while the first one's request yields
    /// go out in one write, in the order they came, and the next record
    /// opens a new group; a leader whose request is cancelled before it
    /// wrote still writes the group, so the others are not left waiting.
    #[tokio::test]
    async fn a_threads_records_go_out_together_even_when_the_leader_is_cancelled() {
        let (sink, key, serial) = (Memory::default(), MacKey::new(KEY), next_serial());
        let out = output(&sink);
        let first = lead(join(serial, &out, &key, br#"{"n":1}"#));
        let second = waiting(join(serial, &out, &key, br#"{"n":2}"#));
        let third = waiting(join(serial, &out, &key, br#"{"n":3}"#));
        assert!(lines(&sink).is_empty(), "nothing is written before the leader's turn");
        drop(first);
        assert_eq!(heard(second).await, Ok(()));
        assert_eq!(heard(third).await, Ok(()));
        assert_eq!(lines(&sink), [1, 2, 3]);
        assert_eq!(sink.writes.load(std::sync::atomic::Ordering::SeqCst), 1);

        let fourth = lead(join(serial, &out, &key, br#"{"n":4}"#));
        let fifth = waiting(join(serial, &out, &key, br#"{"n":5}"#));
        assert_eq!(fourth.write().await, Ok(()));
        assert_eq!(heard(fifth).await, Ok(()));
        assert_eq!(lines(&sink), [1, 2, 3, 4, 5]);
        assert_eq!(sink.writes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A group that cannot be written fails for every request in it, and
    /// the chain goes on from the last line written: the next group
    /// verifies.
    #[tokio::test]
    async fn a_failed_group_fails_each_request_in_it_and_the_chain_goes_on() {
        let (sink, key, serial) = (Memory::default(), MacKey::new(KEY), next_serial());
        let out = output(&sink);
        assert_eq!(lead(join(serial, &out, &key, br#"{"n":1}"#)).write().await, Ok(()));
        sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let leader = lead(join(serial, &out, &key, br#"{"n":2}"#));
        let other = waiting(join(serial, &out, &key, br#"{"n":3}"#));
        assert_eq!(leader.write().await, Err("no space left on device".into()));
        assert_eq!(heard(other).await, Err("no space left on device".into()));
        sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(lead(join(serial, &out, &key, br#"{"n":4}"#)).write().await, Ok(()));
        assert_eq!(lines(&sink), [1, 4]);
        assert_eq!(out.lock().unwrap().state.seq, 2);
    }

    /// A group takes up to `MAX_GROUP` records; the next opens a group of
    /// its own, which may be written first: each group is chained when it
    /// is written, so the file stays one chain either way.
    #[tokio::test]
    async fn a_full_group_leaves_the_next_record_to_a_new_one() {
        let (sink, key, serial) = (Memory::default(), MacKey::new(KEY), next_serial());
        let out = output(&sink);
        let first = lead(join(serial, &out, &key, br#"{"n":0}"#));
        let mut full = Vec::new();
        for n in 1..MAX_GROUP {
            full.push(waiting(join(serial, &out, &key, format!(r#"{{"n":{n}}}"#).as_bytes())));
        }
        let next = lead(join(serial, &out, &key, br#"{"n":9999}"#));
        let after = waiting(join(serial, &out, &key, br#"{"n":10000}"#));
        assert_eq!(next.write().await, Ok(()));
        assert_eq!(heard(after).await, Ok(()));
        assert_eq!(first.write().await, Ok(()));
        for w in full {
            assert_eq!(heard(w).await, Ok(()));
        }
        let mut expected = vec![9999, 10000];
        expected.extend(0..MAX_GROUP as u64);
        assert_eq!(lines(&sink), expected);
        assert_eq!(sink.writes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A record still in flight when its device stops (disabled, or the
    /// core sealed) is refused, not appended after the final checkpoint.
    #[test]
    fn a_stopped_device_refuses_records_still_in_flight() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sink, key, serial) = (Memory::default(), MacKey::new(KEY), next_serial());
        let out = Arc::new(output(&sink));
        let store = keybridge_barrier::RedbStore::in_memory().unwrap();
        let writer = Writer {
            output: out.clone(),
            chain_key: key.clone(),
            fsync: false,
            barrier: Arc::new(Barrier::new(Arc::new(store))),
            handle: runtime.handle().clone(),
            checkpoint_key: checkpoint_key("test"),
            device: "test/".into(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(rx));
        runtime.block_on(async {
            assert_eq!(lead(join(serial, &out, &key, br#"{"n":1}"#)).write().await, Ok(()));
            let late = lead(join(serial, &out, &key, br#"{"n":2}"#));
            let (done, stopped) = oneshot::channel();
            tx.send(Msg::Shutdown(done)).unwrap();
            stopped.await.unwrap();
            assert_eq!(late.write().await, Err("the audit device was stopped".into()));
        });
        thread.join().unwrap();
        assert_eq!(lines(&sink), [1]);
    }

    /// Each device has its own group on a thread, and a group that is
    /// closed is not joined.
    #[tokio::test]
    async fn devices_have_groups_of_their_own() {
        let (a, b, key) = (Memory::default(), Memory::default(), MacKey::new(KEY));
        let (out_a, out_b) = (output(&a), output(&b));
        let (sa, sb) = (next_serial(), next_serial());
        let la = lead(join(sa, &out_a, &key, br#"{"n":1}"#));
        let lb = lead(join(sb, &out_b, &key, br#"{"n":2}"#));
        let wa = waiting(join(sa, &out_a, &key, br#"{"n":3}"#));
        assert_eq!(lb.write().await, Ok(()));
        assert_eq!(la.write().await, Ok(()));
        assert_eq!(heard(wa).await, Ok(()));
        assert_eq!((lines(&a), lines(&b)), (vec![1, 3], vec![2]));
        OPEN.with_borrow(|open| assert!(open.iter().all(|(_, g)| g.lock().unwrap().closed)));
        lead(join(sa, &out_a, &key, br#"{"n":4}"#)).write().await.unwrap();
        OPEN.with_borrow(|open| assert_eq!(open.len(), 1, "closed groups are dropped when one opens"));
        assert_eq!(lines(&a), [1, 3, 4]);
    }
}
