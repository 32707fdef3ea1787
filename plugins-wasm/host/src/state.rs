//! A call's store: what the plugin's imports reach, and what the host
//! remembers of the call to explain a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keybridge_core::plugins::{EngineError, EngineStorage};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings;
use crate::bindings::keybridge::engine::host::Level;
use crate::limits::{Limiter, MountLimits};

/// Who the call is for, for logs.
pub struct CallInfo {
    pub what: &'static str,
    pub mount: String,
    pub request_id: String,
    pub storage: Option<Arc<dyn EngineStorage>>,
}

impl CallInfo {
    pub fn internal(what: &'static str, storage: Option<Arc<dyn EngineStorage>>) -> Self {
        CallInfo { what, mount: String::new(), request_id: String::new(), storage }
    }
}

pub const MAX_RANDOM: u32 = 65536;
const MAX_LOG_LINES: u32 = 200;
const MAX_LOG_BYTES: usize = 2048;
const MAX_KEY: usize = 512;
const MAX_VALUE: usize = 1 << 20;

pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Hooks,
    pub limiter: Limiter,
    info: CallInfo,
    logged: u32,
    /// The last `panicked at` line the plugin wrote through `log`, to explain
    /// a trap.
    panic: Option<String>,
}

/// What `wasi:http` requests may reach.
struct Hooks {
    limits: MountLimits,
    deadline: Instant,
    /// The first request refused by the allow-list.
    denied: Option<String>,
    /// An outbound request ran until the call's deadline (its timeout was
    /// the time the call had left): the call ran out of time, whatever the
    /// plugin made of the error.
    out_of_time: Arc<AtomicBool>,
}

impl State {
    pub fn new(limits: &MountLimits, info: CallInfo, deadline: Instant) -> State {
        // Nothing granted: no environment, arguments, directories or
        // sockets; stdio goes nowhere.
        let wasi = WasiCtxBuilder::new().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        State {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: Hooks { limits: limits.clone(), deadline, denied: None, out_of_time: Arc::default() },
            limiter: Limiter { max_memory: limits.max_memory_bytes, refused: None },
            info,
            logged: 0,
            panic: None,
        }
    }

    /// A limit the plugin ran into, which explains a failure better than the
    /// trap or error that followed.
    pub fn violation(&self) -> Option<EngineError> {
        if let Some(desired) = self.limiter.refused {
            return Some(EngineError::Exhausted(format!(
                "the plugin asked for {} MiB of memory; its limit is {} MiB (mount setting `max_memory_mb`)",
                desired >> 20,
                self.limiter.max_memory >> 20
            )));
        }
        None
    }

    /// Whether an outbound request was cut off by the call's deadline.
    pub fn out_of_time(&self) -> bool {
        self.hooks.out_of_time.load(Ordering::SeqCst)
    }

    /// The request the allow-list refused, if any.
    pub fn http_denied(&self) -> Option<&str> {
        self.hooks.denied.as_deref()
    }

    pub fn pool_full(&self, e: &wasmtime::Error) -> Option<String> {
        let msg = format!("{e:#}");
        msg.contains("concurrent").then(|| crate::slots::POOL_FULL.to_string())
    }

    pub fn last_panic(&self) -> Option<&str> {
        self.panic.as_deref()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
)>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if !self.limits.allows(&host, port) {
            tracing::warn!(host = %host, port, "wasm: outbound request refused by the mount's allowed_hosts");
            if self.denied.is_none() {
                self.denied = Some(format!("{host}:{port}"));
            }
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        // Never wait past the call's deadline (the outer timeout would stop
        // the call anyway; this gives the plugin a clean error first).
        let left = self.deadline.saturating_duration_since(Instant::now());
        let mut o = options.unwrap_or_default();
        // Which of the plugin's own timeouts the deadline overrode.
        let capped = |t: Option<Duration>| t.is_none_or(|d| d >= left);
        let (connect_capped, first_byte_capped) = (capped(o.connect_timeout), capped(o.first_byte_timeout));
        for t in [&mut o.connect_timeout, &mut o.first_byte_timeout, &mut o.between_bytes_timeout] {
            *t = Some(t.map_or(left, |d| d.min(left)));
        }
        let limits = self.limits.clone();
        let out_of_time = self.out_of_time.clone();
        Box::new(async move {
            // The name is resolved here and every address checked: a name on
            // the allow-list can resolve to the gateway's host or the cloud's
            // metadata service. Plain HTTP then connects to the address
            // checked (the Host header keeps the name); HTTPS verifies the
            // certificate against the name, which an address it was rebound
            // to cannot present, and is refused if any address is internal.
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let addrs: Vec<std::net::SocketAddr> =
                match tokio::time::timeout(left, tokio::net::lookup_host((bare.as_str(), port))).await {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(_)) => return Err(wasmtime_wasi_http::Error::DestinationNotFound),
                    Err(_) => {
                        out_of_time.store(true, Ordering::SeqCst);
                        return Err(wasmtime_wasi_http::Error::DnsTimeout);
                    }
                };
            let permitted: Vec<std::net::SocketAddr> =
                addrs.iter().copied().filter(|a| limits.address_allowed(&host, a.ip())).collect();
            let refused = permitted.is_empty() || (tls && permitted.len() != addrs.len());
            if refused {
                tracing::warn!(host = %host, port, "wasm: outbound request refused: the name resolves to an internal address");
                return Err(wasmtime_wasi_http::Error::DestinationIpProhibited);
            }
            let mut request = request;
            if !tls {
                let mut parts = request.uri().clone().into_parts();
                let pinned = permitted[0];
                parts.authority =
                    Some(pinned.to_string().parse().map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?);
                *request.uri_mut() =
                    http::Uri::from_parts(parts).map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
            }
            let inner: &mut dyn WasiHttpHooks = wasmtime_wasi_http::default_hooks();
            let sent = Box::into_pin(inner.send_request(request, Some(o), fut)).await;
            use wasmtime_wasi_http::Error as E;
            if let Err(e) = &sent
                && match e {
                    E::ConnectionTimeout => connect_capped,
                    E::ConnectionReadTimeout => first_byte_capped,
                    _ => false,
                }
            {
                out_of_time.store(true, Ordering::SeqCst);
            }
            sent
        })
    }
}

/// Adds everything a plugin may import to `linker`.
pub fn link(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::RotatingEngine::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    Ok(())
}

impl bindings::keybridge::engine::types::Host for State {}

impl bindings::keybridge::engine::host::Host for State {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if message.contains("panicked at") {
            self.panic = Some(truncate(&message, 300).to_string());
        }
        self.logged += 1;
        if self.logged > MAX_LOG_LINES {
            return Ok(());
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let (mount, rid, what) = (&self.info.mount, &self.info.request_id, self.info.what);
        match level {
            Level::Trace => tracing::trace!(mount = %mount, request_id = %rid, call = what, "plugin: {message}"),
            Level::Debug => tracing::debug!(mount = %mount, request_id = %rid, call = what, "plugin: {message}"),
            Level::Info => tracing::info!(mount = %mount, request_id = %rid, call = what, "plugin: {message}"),
            Level::Warn => tracing::warn!(mount = %mount, request_id = %rid, call = what, "plugin: {message}"),
            Level::Error => tracing::error!(mount = %mount, request_id = %rid, call = what, "plugin: {message}"),
        }
        Ok(())
    }

    async fn now_millis(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }

    async fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM {
            wasmtime::bail!("random-bytes asked for {len} bytes; at most {MAX_RANDOM} per call");
        }
        let mut v = vec![0u8; len as usize];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
        Ok(v)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty()
        || key.len() > MAX_KEY
        || key.starts_with('/')
        || !key.bytes().all(|b| (0x21..0x7f).contains(&b))
        || key.split('/').any(|s| s == ".." || s == ".")
    {
        return Err(format!(
            "invalid storage key {:?}: 1 to {MAX_KEY} printable ASCII characters without spaces, no leading '/', no '.' or '..' segments",
            truncate(key, 80)
        ));
    }
    Ok(())
}

impl State {
    fn storage(&self) -> Result<&Arc<dyn EngineStorage>, String> {
        self.info.storage.as_ref().ok_or_else(|| format!("storage is not available during {}", self.info.what))
    }
}

impl bindings::keybridge::engine::storage::Host for State {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let s = match self.storage() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(s.get(&key).await.map(|v| v.map(|z| z.to_vec())))
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        if value.len() > MAX_VALUE {
            return Ok(Err(format!("storage value of {} bytes is over the limit of {MAX_VALUE}", value.len())));
        }
        let s = match self.storage() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let r = s.put(&key, &value).await;
        zeroize::Zeroize::zeroize(&mut { value });
        Ok(r)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let s = match self.storage() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(s.delete(&key).await)
    }

    async fn list(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, String>> {
        if !prefix.is_empty() && (!prefix.ends_with('/') || check_key(prefix.trim_end_matches('/')).is_err()) {
            return Ok(Err(format!(
                "invalid storage prefix {:?}: empty, or a key ending in '/'",
                truncate(&prefix, 80)
            )));
        }
        let s = match self.storage() {
            Ok(s) => s.clone(),
            Err(e) => return Ok(Err(e)),
        };
        Ok(s.list(&prefix).await)
    }
}
