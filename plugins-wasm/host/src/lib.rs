//! Keybridge's WASM host: secret engines compiled to WebAssembly components
//! (the `keybridge:engine` contract in `plugins-wasm/wit`), run by wasmtime.
//!
//! One [`WasmHost`] per server owns the wasmtime engine, with
//! - the pooling allocator (instances, memories and fiber stacks reserved up
//!   front, so instantiation is a few microseconds);
//! - epoch interruption (a thread ticks every [`EPOCH_TICK`] while calls run,
//!   and sleeps while none does): a call yields to the runtime at every tick
//!   and traps once past its deadline;
//! - fuel metering, always on, so a mount can set `fuel`;
//! - a linker holding our imports, WASI 0.2 with nothing granted (empty
//!   environment, no preopened directories, no sockets), and `wasi:http`
//!   whose requests reach only the mount's `allowed_hosts`.
//!
//! Each mount gets a [`WasmEngine`]: an `InstancePre` of its component. Every
//! call instantiates a fresh store (no state leaks between requests) under
//! the mount's memory cap, fuel and deadline; an outer timeout covers time
//! blocked in host calls too. A trap or a limit fails only that call.

mod limits;
mod slots;
mod state;
mod ticker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_core::plugins::{
    self as eng, CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, LeaseInfo, LeaseTerms, Params,
    PluginEngine, PluginRuntime, PluginSpec,
};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

pub use limits::MountLimits;
use slots::Slots;
use state::State;
use ticker::Ticker;

/// How much of a freed instance's linear memory is reset in place for the
/// next call (a Rust component's shadow stack and data sit in its first
/// megabyte or two); the rest is returned to the kernel.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the epoch advances: the granularity of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rotating-engine",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

mod plain {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "engine",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "keybridge:engine/types": crate::bindings::keybridge::engine::types,
            "keybridge:engine/host": crate::bindings::keybridge::engine::host,
            "keybridge:engine/storage": crate::bindings::keybridge::engine::storage,
        },
    });
}

use bindings::keybridge::engine::types as wit;

/// Errors of the host itself (not of a call).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the WASM engine could not be configured: {0}")]
    Config(String),
}

/// Limits shared by every mount; each mount's own may only be lower.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Instances that may run at once, across all mounts (the pool's size).
    pub max_instances: u32,
    /// The most linear memory any one instance may have.
    pub max_memory_bytes: usize,
    /// The WASM stack a call may use (deep recursion traps past it).
    pub max_wasm_stack: usize,
    /// Reset a freed slot's memory in place (only the pages a call dirtied,
    /// found with Linux's PAGEMAP_SCAN) rather than hand it back to the
    /// kernel. PAGEMAP_SCAN does not see a dirty page that was swapped
    /// out, which the next call in the slot would then read: so only where
    /// nothing can be swapped. `None`: decide at start (memory locked, or no swap).
    pub reset_in_place: Option<bool>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig { max_instances: 128, max_memory_bytes: 256 << 20, max_wasm_stack: 512 << 10, reset_in_place: None }
    }
}

/// Whether no page of this process can be swapped out: its memory is
/// locked (`mlockall`, which the server does unless `disable_mlock`) or
/// the machine has no swap.
fn in_place_is_safe() -> bool {
    let locked = std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
            .is_some_and(|kib| kib > 0)
    });
    // /proc/swaps: a header line, then one line per swap area.
    let no_swap = std::fs::read_to_string("/proc/swaps").ok().is_some_and(|s| s.lines().count() <= 1);
    locked || no_swap
}

/// What every call needs of the host; each mounted engine holds a copy.
#[derive(Clone)]
struct Shared {
    engine: Engine,
    ticker: Arc<Ticker>,
    slots: Arc<Slots>,
}

pub struct WasmHost {
    shared: Shared,
    linker: Linker<State>,
    config: HostConfig,
    /// Compiled components by digest: a component is compiled once however
    /// many mounts use it.
    compiled: Arc<Mutex<HashMap<String, Component>>>,
    /// Held while a component compiles: calls that find it missing at once
    /// (every lease of a mount expiring after an unseal) wait for one
    /// compile instead of each starting its own (16 at once took 2.6 s of
    /// CPU and left 170 MiB of heap behind).
    compiling: Arc<tokio::sync::Mutex<()>>,
    /// Compiles done (for tests).
    compiles: std::sync::atomic::AtomicUsize,
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        self.shared.ticker.stop();
    }
}

impl WasmHost {
    pub fn new(config: HostConfig) -> Result<WasmHost, Error> {
        let in_place = config.reset_in_place.unwrap_or_else(in_place_is_safe);
        // Without PAGEMAP_SCAN (Linux before 6.7) the in-place engine does
        // not configure: then slots go back to the kernel as before.
        let engine = match Self::engine(&config, in_place) {
            Ok(e) => e,
            Err(_) if in_place => Self::engine(&config, false)?,
            Err(e) => return Err(e),
        };
        let mut linker: Linker<State> = Linker::new(&engine);
        state::link(&mut linker).map_err(|e| Error::Config(format!("{e:#}")))?;
        let ticker =
            Ticker::start(&engine).map_err(|e| Error::Config(format!("the epoch thread did not start: {e}")))?;
        let slots = Slots::new(config.max_instances);
        Ok(WasmHost {
            shared: Shared { engine, ticker, slots },
            linker,
            config,
            compiled: Arc::new(Mutex::new(HashMap::new())),
            compiling: Arc::new(tokio::sync::Mutex::new(())),
            compiles: Default::default(),
        })
    }

    /// The compiled component: from the cache, or compiled on tokio's
    /// blocking pool (compiling takes up to seconds of CPU, which must not
    /// stall the serving thread and the other requests on it).
    async fn component(&self, digest: &str, bytes: &[u8]) -> Result<Component, EngineError> {
        let cached = || self.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned();
        if let Some(c) = cached() {
            return Ok(c);
        }
        let one_at_a_time = self.compiling.clone().lock_owned().await;
        if let Some(c) = cached() {
            return Ok(c);
        }
        self.compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (engine, cache) = (self.shared.engine.clone(), self.compiled.clone());
        let (digest, bytes) = (digest.to_string(), bytes.to_vec());
        // The compile and the cache insert run on their own, holding the
        // lock: a caller that is cancelled meanwhile (its request timed
        // out) neither wastes the compile nor lets the next caller start
        // another.
        tokio::task::spawn_blocking(move || {
            let _held = one_at_a_time;
            let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if actual != digest {
                return Err(EngineError::BadComponent(format!(
                    "the component's SHA-256 is {actual}, not the pinned {digest}: refusing a changed file"
                )));
            }
            let c = Component::new(&engine, &bytes).map_err(|e| {
                EngineError::BadComponent(format!("not a WebAssembly component this host can compile: {e:#}"))
            })?;
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= 64 {
                cache.clear();
            }
            cache.insert(digest, c.clone());
            Ok(c)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("compiling the component stopped: {e}")))?
    }

    fn engine(config: &HostConfig, in_place: bool) -> Result<Engine, Error> {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust component has a handful of core instances (the module and
        // WASI adapter shims); each needs a memory or table slot at most.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 8)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16);
        if in_place {
            // A freed slot is reset in place rather than handed back to the
            // kernel: `madvise(DONTNEED)` on every call cost a TLB shootdown
            // on every core (30-40% of the CPU at c=32, docs/BENCHMARKS.md)
            // and a page fault for every page the next call touched. Only
            // the pages the call dirtied are restored from the image.
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10);
        }
        let mut c = Config::new();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(config.max_wasm_stack)
            .async_stack_size(config.max_wasm_stack + (1 << 20))
            .wasm_component_model(true);
        Engine::new(&c).map_err(|e| Error::Config(format!("{e:#}")))
    }

    /// How many components this host has compiled.
    pub fn compiles(&self) -> usize {
        self.compiles.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Links a component and checks it against the contract.
    async fn prepare(&self, digest: &str, bytes: &[u8]) -> Result<Prepared, EngineError> {
        let component = self.component(digest, bytes).await?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            EngineError::BadComponent(format!(
                "the component imports something this host does not grant (only keybridge:engine/host, keybridge:engine/storage and WASI 0.2): {e:#}"
            ))
        })?;
        let rotating = bindings::RotatingEnginePre::new(pre.clone()).ok();
        let plain = plain::EnginePre::new(pre).map_err(|e| {
            EngineError::BadComponent(format!(
                "the component does not export keybridge:engine/logical@0.1.0 (world `engine` of plugins-wasm/wit): {e:#}"
            ))
        })?;
        Ok(Prepared { plain, rotating })
    }
}

/// One call into a component.
enum Call {
    Describe,
    Instantiate,
    Validate(wit::Params),
    Exists(wit::Context, wit::Request),
    Handle(wit::Context, wit::Request),
    Renew(wit::Context, wit::LeaseInfo),
    Revoke(wit::Context, wit::LeaseInfo),
    Rotate(wit::Context, String, wit::Params),
}

enum Answer {
    Info(wit::EngineInfo),
    Unit(Result<(), wit::Error>),
    Bool(Result<bool, wit::Error>),
    Response(Result<wit::Response, wit::Error>),
    Terms(Result<wit::LeaseTerms, wit::Error>),
}

impl Call {
    async fn invoke(self, p: &Prepared, store: &mut Store<State>) -> wasmtime::Result<Answer> {
        if let Call::Rotate(c, path, params) = &self {
            let Some(r) = &p.rotating else {
                return Ok(Answer::Response(Err(wit::Error::Unsupported("the component cannot rotate".into()))));
            };
            let i = r.instantiate_async(&mut *store).await?;
            return Ok(Answer::Response(i.keybridge_engine_rotation().call_rotate(store, c, path, params).await?));
        }
        let i = p.plain.instantiate_async(&mut *store).await?;
        let g = i.keybridge_engine_logical();
        Ok(match self {
            Call::Describe => Answer::Info(g.call_describe(store).await?),
            Call::Instantiate => Answer::Unit(Ok(())),
            Call::Validate(cfg) => Answer::Unit(g.call_validate_config(store, &cfg).await?),
            Call::Exists(c, r) => Answer::Bool(g.call_exists(store, &c, &r).await?),
            Call::Handle(c, r) => Answer::Response(g.call_handle(store, &c, &r).await?),
            Call::Renew(c, l) => Answer::Terms(g.call_renew(store, &c, &l).await?),
            Call::Revoke(c, l) => Answer::Unit(g.call_revoke(store, &c, &l).await?),
            Call::Rotate(..) => unreachable!("handled above"),
        })
    }
}

/// Instantiates a fresh store and makes one call under `limits`. Returns
/// the answer and the outbound request the allow-list refused, if any.
async fn run(
    host: &Shared,
    prepared: &Prepared,
    limits: &MountLimits,
    info: state::CallInfo,
    call: Call,
) -> Result<(Answer, Option<String>), EngineError> {
    let _busy = host.ticker.busy();
    let slot = host.slots.admit().ok_or_else(|| EngineError::Exhausted(slots::POOL_FULL.into()))?;
    let deadline = Instant::now() + limits.timeout;
    let mut store = Store::new(&host.engine, State::new(limits, info, deadline));
    store.limiter(|s| &mut s.limiter);
    store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).map_err(|e| EngineError::Internal(e.to_string()))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline { Ok(UpdateDeadline::Interrupt) } else { Ok(UpdateDeadline::Yield(1)) }
    });
    let timeout = limits.timeout;
    let fut = async {
        let r = call.invoke(prepared, &mut store).await;
        (r, store)
    };
    let out_of_time = || {
        EngineError::Deadline(format!(
            "the plugin did not finish within its time limit of {timeout:?} (mount setting `timeout`)"
        ))
    };
    // Cut off: the store went with the call's future, its slot goes now.
    let Ok((r, store)) = tokio::time::timeout(timeout, fut).await else {
        return Err(out_of_time());
    };
    let out = match r {
        // An outbound request ran into the deadline: the call ran out of
        // time, whatever answer the plugin made of the error.
        _ if store.data().out_of_time() => Err(out_of_time()),
        Ok(a) => Ok((a, store.data().http_denied().map(String::from))),
        Err(e) => Err(classify(e, store.data(), limits)),
    };
    host.slots.dispose(store, slot);
    out
}

/// Maps a failed call to what the caller is told: which limit, or the trap.
fn classify(e: wasmtime::Error, state: &State, limits: &MountLimits) -> EngineError {
    if let Some(v) = state.violation() {
        return v;
    }
    if let Some(msg) = state.pool_full(&e) {
        return EngineError::Exhausted(msg);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => EngineError::Deadline(format!(
            "the plugin did not finish within its time limit of {:?} (mount setting `timeout`)",
            limits.timeout
        )),
        Some(Trap::OutOfFuel) => EngineError::Exhausted(format!(
            "the plugin used up its fuel ({} units per call, mount setting `fuel`)",
            limits.fuel.unwrap_or(u64::MAX)
        )),
        Some(Trap::StackOverflow) => EngineError::Trapped("call stack exhausted (runaway recursion?)".into()),
        Some(t) => {
            EngineError::Trapped(format!("{t}{}", state.last_panic().map(|p| format!(" ({p})")).unwrap_or_default()))
        }
        None => EngineError::Trapped(format!("{e:#}")),
    }
}

struct Prepared {
    plain: plain::EnginePre<State>,
    /// When the component targets `rotating-engine`.
    rotating: Option<bindings::RotatingEnginePre<State>>,
}

#[async_trait::async_trait]
impl PluginRuntime for WasmHost {
    async fn inspect(&self, digest: &str, component: &[u8]) -> Result<EngineInfo, EngineError> {
        let prepared = self.prepare(digest, component).await?;
        let limits = MountLimits::default();
        describe(self, &prepared, &limits).await
    }

    fn host_keys(&self) -> &'static [(&'static str, &'static str)] {
        limits::HOST_KEYS
    }

    fn validate_host_config(&self, config: &BTreeMap<String, String>) -> Result<(), String> {
        MountLimits::parse(config, &self.config).map(|_| ())
    }

    async fn open(&self, spec: PluginSpec<'_>) -> Result<Arc<dyn PluginEngine>, EngineError> {
        Ok(Arc::new(self.open_engine(spec).await?))
    }
}

impl WasmHost {
    /// As [`PluginRuntime::open`], returning the engine itself (the
    /// benchmark times its instantiation).
    pub async fn open_engine(&self, spec: PluginSpec<'_>) -> Result<WasmEngine, EngineError> {
        let limits = MountLimits::parse(spec.config, &self.config).map_err(EngineError::InvalidInput)?;
        let prepared = self.prepare(spec.digest, spec.component).await?;
        let info = describe(self, &prepared, &limits).await?;
        let engine_config: Vec<(String, String)> =
            spec.config.iter().filter(|(k, _)| !limits::is_host_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let e = WasmEngine { shared: self.shared.clone(), prepared, limits, info, storage: spec.storage };
        // The engine checks its own keys.
        e.call_validate(&engine_config).await?;
        Ok(e)
    }
}

async fn describe(host: &WasmHost, prepared: &Prepared, limits: &MountLimits) -> Result<EngineInfo, EngineError> {
    let info = state::CallInfo::internal("describe", None);
    match run(&host.shared, prepared, limits, info, Call::Describe).await?.0 {
        Answer::Info(raw) => convert::info(raw, prepared.rotating.is_some()),
        _ => Err(EngineError::Internal("describe answered the wrong type".into())),
    }
}

/// A mounted plugin: its `InstancePre`, limits and storage.
pub struct WasmEngine {
    shared: Shared,
    prepared: Prepared,
    limits: MountLimits,
    info: EngineInfo,
    storage: Arc<dyn eng::EngineStorage>,
}

impl WasmEngine {
    async fn call(&self, what: &'static str, ctx: Option<&CallContext>, call: Call) -> Result<Answer, EngineError> {
        let mut info = state::CallInfo::internal(what, Some(self.storage.clone()));
        if let Some(c) = ctx {
            info.mount = c.mount_path.clone();
            info.request_id = c.request_id.clone();
        }
        let (answer, denied) = run(&self.shared, &self.prepared, &self.limits, info, call).await?;
        // The plugin's own error: explained by a refused request if any.
        let fail = |e: wit::Error| Err(convert::error(e, denied.clone()));
        match answer {
            Answer::Unit(Err(e)) | Answer::Bool(Err(e)) | Answer::Response(Err(e)) | Answer::Terms(Err(e)) => fail(e),
            a => Ok(a),
        }
    }

    async fn call_validate(&self, config: &[(String, String)]) -> Result<(), EngineError> {
        self.call("validate-config", None, Call::Validate(config.to_vec())).await.map(|_| ())
    }

    /// Instantiates the component without calling it (for the benchmark).
    pub async fn instantiate_only(&self) -> Result<(), EngineError> {
        self.call("instantiate", None, Call::Instantiate).await.map(|_| ())
    }

    pub fn limits(&self) -> &MountLimits {
        &self.limits
    }
}

fn wrong() -> EngineError {
    EngineError::Internal("the call answered the wrong type".into())
}

#[async_trait::async_trait]
impl PluginEngine for WasmEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    async fn exists(&self, ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError> {
        match self.call("exists", Some(ctx), Call::Exists(convert::context(ctx), convert::request(req))).await? {
            Answer::Bool(Ok(b)) => Ok(b),
            _ => Err(wrong()),
        }
    }

    async fn handle(&self, ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        match self.call("handle", Some(ctx), Call::Handle(convert::context(ctx), convert::request(req))).await? {
            Answer::Response(Ok(r)) => convert::response(r, self.limits.max_response_bytes),
            _ => Err(wrong()),
        }
    }

    async fn renew(&self, ctx: &CallContext, lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        match self.call("renew", Some(ctx), Call::Renew(convert::context(ctx), convert::lease(lease))).await? {
            Answer::Terms(Ok(t)) => Ok(convert::terms(t)),
            _ => Err(wrong()),
        }
    }

    async fn revoke(&self, ctx: &CallContext, lease: &LeaseInfo) -> Result<(), EngineError> {
        match self.call("revoke", Some(ctx), Call::Revoke(convert::context(ctx), convert::lease(lease))).await? {
            Answer::Unit(Ok(())) => Ok(()),
            _ => Err(wrong()),
        }
    }

    async fn rotate(&self, ctx: &CallContext, path: &str, params: &Params) -> Result<EngineResponse, EngineError> {
        if !self.info.rotates {
            return Err(EngineError::Unsupported(format!(
                "the {} engine cannot rotate: its component targets world `engine`, not `rotating-engine`",
                self.info.name
            )));
        }
        let call = Call::Rotate(convert::context(ctx), path.to_string(), params.0.clone());
        match self.call("rotate", Some(ctx), call).await? {
            Answer::Response(Ok(r)) => convert::response(r, self.limits.max_response_bytes),
            _ => Err(wrong()),
        }
    }
}

mod convert;
