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
/// reopening) both write through it.
pub(super) struct Output {
    pub(super) sink: Box<dyn Sink>,
    pub(super) state: ChainState,
    /// The state moved since the last checkpoint.
    pub(super) dirty: bool,
    /// The lines of a group are assembled here (kept between groups).
    pub(super) lines: Vec<u8>,
    /// Direct devices: lines sealed and not yet handed to the sink, the
    /// state after the last line the sink took, whether a request is
    /// writing now (it has lent the sink out of the lock), and the requests
    /// waiting for their line to be written, by sequence number.
    pub(super) pending: Vec<u8>,
    pub(super) committed: ChainState,
    pub(super) flushing: bool,
    pub(super) waiters: Vec<(u64, oneshot::Sender<Written>)>,
    /// The writer thread wants the sink (a checkpoint, a reopen): the
    /// request writing stops after its round and no other takes over; lines
    /// sealed meanwhile wait for the thread to write them
    /// ([`Output::settled`]).
    pub(super) want_sink: bool,
}

/// What a waiting request hears: its line was written, or was not (why),
/// or the writing request handed it the writing (its line is pending).
pub(super) enum Written {
    Yes,
    No(String),
    YourTurn,
}

/// What a request whose line was sealed does next: write the pending lines
/// itself (no one else is), or wait for the request that is writing.
pub(super) enum Turn {
    Write,
    Wait(oneshot::Receiver<Written>),
}

/// Rounds one request writes before it hands the writing to a waiting one
/// (its own answer is not held back behind everyone else's lines).
const MAX_ROUNDS: usize = 4;

/// Stands in for a sink lent to a writing request.
struct Lent;

impl Sink for Lent {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("the sink is in use by another write"))
    }
}

impl Output {
    pub(super) fn new(sink: Box<dyn Sink>, state: ChainState, dirty: bool) -> Output {
        Output {
            sink,
            state,
            dirty,
            lines: Vec::new(),
            pending: Vec::new(),
            committed: state,
            flushing: false,
            waiters: Vec::new(),
            want_sink: false,
        }
    }

    /// Direct devices: seals `body` onto the pending lines. The first
    /// request in writes them (and any sealed meanwhile) with one `write`
    /// each round, outside the lock ([`write_pending`]); the others wait
    /// for it without holding a thread. A request's line is written before
    /// its turn ends, in chain order, as it was when each wrote its own.
    pub(super) fn seal(&mut self, chain_key: &MacKey, body: &[u8]) -> Turn {
        let s = &mut self.state;
        s.seq += 1;
        let first = s.new_segment;
        s.chain = chain::seal_line(chain_key, &s.chain, s.seq, first, body, &mut self.pending);
        if first {
            s.segment_start = s.seq;
            s.new_segment = false;
        }
        if self.flushing || self.want_sink {
            let (tx, rx) = oneshot::channel();
            self.waiters.push((s.seq, tx));
            Turn::Wait(rx)
        } else {
            self.flushing = true;
            Turn::Write
        }
    }

    /// Takes the sink for the writer thread (off the request path): asks
    /// the request writing to stop after its round, waits for it, and
    /// writes what it left, so the sink is at hand and the state is what
    /// the file holds.
    pub(super) fn settled(output: &Mutex<Output>) -> Settled<'_> {
        let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
        out.want_sink = true;
        loop {
            if out.flushing {
                drop(out);
                std::thread::sleep(std::time::Duration::from_micros(100));
            } else if !out.pending.is_empty() {
                // Lines the stopped request left: written now, to the sink
                // they were sealed for (a reopen must not carry them into
                // the next file, which starts a new segment).
                out.flushing = true;
                drop(out);
                let _ = write_pending(output);
            } else {
                // Held until dropped: nothing is sealed meanwhile.
                return Settled(out);
            }
            out = output.lock().unwrap_or_else(|p| p.into_inner());
        }
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
            Ok(()) => {
                self.dirty = true;
                self.committed = self.state;
            }
            Err(_) => {
                self.sink.rollback();
                self.state = saved;
            }
        }
        result
    }
}

/// Direct devices: the request whose [`Output::seal`] said
/// [`Turn::Write`] writes the pending lines, round after round, until none
/// are left; each round is one `write`, made with the sink lent out of the
/// lock so others can seal meanwhile. Returns the outcome of the first
/// round, which holds the caller's own line. A failed round is cut back
/// from the file, and the chain returns to the last line written: the
/// lines sealed on top of the failed ones are dropped and their requests
/// told, so none is reported written that is not.
pub(super) fn write_pending(output: &Mutex<Output>) -> std::result::Result<(), String> {
    let lock = || output.lock().unwrap_or_else(|p| p.into_inner());
    let mut mine = None;
    let mut spare = Vec::new();
    // Told when the writing is over, not round by round: waking a request
    // on another serving thread lets the kernel run that thread in this
    // one's place, and a writer descheduled between rounds holds up every
    // line sealed meanwhile (perf: a third of the serving threads'
    // preemptions in here were at such a wake-up).
    let mut acks = Vec::new();
    for round in 0.. {
        let (lines, upto, mut sink) = {
            let mut out = lock();
            if out.pending.is_empty() {
                out.flushing = false;
                out.pending = spare;
                break;
            }
            if round > 0 && out.want_sink {
                // The writer thread writes the rest ([`Settled`]).
                out.flushing = false;
                break;
            }
            if round >= MAX_ROUNDS && hand_over(&mut out) {
                break;
            }
            let lines = std::mem::replace(&mut out.pending, spare);
            let upto = out.state;
            (lines, upto, std::mem::replace(&mut out.sink, Box::new(Lent)))
        };
        let r = sink.write(&lines);
        let mut out = lock();
        if r.is_err() {
            sink.rollback();
        }
        out.sink = sink;
        let r = r.map_err(|e| e.to_string());
        match &r {
            Ok(()) => {
                out.committed = upto;
                out.dirty = true;
                let (done, wait): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut out.waiters).into_iter().partition(|(seq, _)| *seq <= upto.seq);
                out.waiters = wait;
                acks.extend(done.into_iter().map(|(_, ack)| (ack, Written::Yes)));
            }
            Err(e) => {
                out.state = out.committed;
                out.pending.clear();
                acks.extend(std::mem::take(&mut out.waiters).into_iter().map(|(_, ack)| (ack, Written::No(e.clone()))));
            }
        }
        mine.get_or_insert(r);
        spare = lines;
        spare.clear();
        release_if_large(&mut spare);
    }
    for (ack, written) in acks {
        let _ = ack.send(written);
    }
    mine.unwrap_or(Ok(()))
}

/// The sink in the writer thread's hands ([`Output::settled`]): the lock
/// is held throughout, so nothing is sealed meanwhile and nothing is left
/// to write when it is given back.
pub(super) struct Settled<'a>(std::sync::MutexGuard<'a, Output>);

impl std::ops::Deref for Settled<'_> {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.0
    }
}

impl std::ops::DerefMut for Settled<'_> {
    fn deref_mut(&mut self) -> &mut Output {
        &mut self.0
    }
}

impl Drop for Settled<'_> {
    /// Gives the sink back: requests write their own lines again.
    fn drop(&mut self) {
        self.0.want_sink = false;
    }
}

/// Hands the writing to the longest-waiting request that still waits
/// (every waiter's line is pending). False if none does.
fn hand_over(out: &mut Output) -> bool {
    while !out.waiters.is_empty() {
        let (_, next) = out.waiters.remove(0);
        if next.send(Written::YourTurn).is_ok() {
            return true;
        }
    }
    false
}

/// The request that writes the pending lines. It yields once first, so
/// requests running beside it seal their lines into the same `write`
/// (yielding twice made groups a line larger, but each yield is another
/// poll of the thread's IO driver, and no gain showed over the noise of
/// alternating runs); dropped before it wrote (its request was cancelled),
/// it writes then, so the pending lines never wait for a request that is
/// gone.
pub(super) struct Leading<'a> {
    output: &'a Mutex<Output>,
    wrote: bool,
}

impl<'a> Leading<'a> {
    pub(super) fn new(output: &'a Mutex<Output>) -> Self {
        Leading { output, wrote: false }
    }

    pub(super) async fn write(mut self) -> std::result::Result<(), String> {
        tokio::task::yield_now().await;
        self.wrote = true;
        write_pending(self.output)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.wrote {
            let _ = write_pending(self.output);
        }
    }
}

/// A request waiting for its line. Dropped before it heard (its request
/// was cancelled), it still writes if the writing was handed to it, so
/// the pending lines never wait for a request that is gone.
pub(super) struct Waiting<'a> {
    pub(super) rx: oneshot::Receiver<Written>,
    pub(super) output: &'a Mutex<Output>,
}

impl Waiting<'_> {
    pub(super) async fn outcome(mut self) -> std::result::Result<(), String> {
        let r = (&mut self.rx).await;
        match r {
            Ok(Written::Yes) => Ok(()),
            Ok(Written::No(e)) => Err(e),
            Ok(Written::YourTurn) => write_pending(self.output),
            Err(_) => Err("its writer stopped".into()),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Closed first: a hand-over sent after this fails and goes to the
        // next waiter; one sent before is still read here.
        self.rx.close();
        if let Ok(Written::YourTurn) = self.rx.try_recv() {
            let _ = write_pending(self.output);
        }
    }
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
                    let mut out = Output::settled(&self.output);
                    let r = out.sink.reopen().map_err(|e| e.to_string());
                    if r.is_ok() {
                        // In both: a failed write returns the state to
                        // `committed`, and the new file's first line must
                        // still start a segment.
                        out.state.new_segment = true;
                        out.committed.new_segment = true;
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
            let mut out = Output::settled(&self.output);
            if !out.dirty && !force {
                return;
            }
            out.dirty = false;
            // What the file holds: lines sealed but not yet written (a
            // request stopped for this checkpoint) are not in it.
            StoredCheckpoint {
                seq: out.committed.seq,
                chain: hex::encode(out.committed.chain),
                segment_start: out.committed.segment_start,
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
