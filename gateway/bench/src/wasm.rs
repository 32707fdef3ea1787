//! `--parts wasm`: what running an engine as a WASM component costs.
//!
//! - Per-call overhead: the same trivial engine call (`ok` → `answer=42`)
//!   through the core's Logical path (authenticate, route, check
//!   parameters, authorize, call) on a plugin mount running the hostile
//!   test plugin's `ok` path, against a native engine mount answering the
//!   same; the difference of the medians is the WASM overhead (a fresh
//!   instance per call, arguments and results through the canonical ABI,
//!   limits and the epoch deadline).
//! - Instantiation from `InstancePre` (pooling allocator), alone.
//! - Throughput at concurrency 1 and 32 of both, and of the WASM mount
//!   through the real server over gRPC.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_core::plugins::{
    CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, LeaseInfo, LeaseTerms, Operation, Params,
    PathInfo, PluginEngine, PluginRuntime, PluginSpec,
};
use keybridge_core::{Caller, Core, CoreConfig, EngineOp};
use keybridge_proto::v1 as pb;
use keybridge_wasm_host::{HostConfig, WasmHost};
use sha2::Digest;

use crate::{Args, Stats, authed, print_stats, spawn, timed};

const NATIVE: &[u8] = b"native engine";

/// Answers `ok` with `answer=42`, as the plugin does.
struct Native(EngineInfo);

#[async_trait::async_trait]
impl PluginEngine for Native {
    fn info(&self) -> &EngineInfo {
        &self.0
    }
    async fn exists(&self, _: &CallContext, _: &EngineRequest) -> Result<bool, EngineError> {
        Ok(false)
    }
    async fn handle(&self, _: &CallContext, _: &EngineRequest) -> Result<EngineResponse, EngineError> {
        Ok(EngineResponse { data: Params(vec![("answer".into(), "42".into())]), ..Default::default() })
    }
    async fn renew(&self, _: &CallContext, _: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        Err(EngineError::Unsupported("no".into()))
    }
    async fn revoke(&self, _: &CallContext, _: &LeaseInfo) -> Result<(), EngineError> {
        Ok(())
    }
    async fn rotate(&self, _: &CallContext, _: &str, _: &Params) -> Result<EngineResponse, EngineError> {
        Err(EngineError::Unsupported("no".into()))
    }
}

fn native_info() -> EngineInfo {
    EngineInfo {
        name: "native".into(),
        version: "1".into(),
        description: String::new(),
        paths: vec![PathInfo {
            pattern: "ok".into(),
            synopsis: String::new(),
            description: String::new(),
            operations: vec![Operation::Read],
            fields: vec![],
            existence_check: false,
        }],
        config_keys: vec![],
        rotates: false,
    }
}

/// The WASM host, plus a native engine for the NATIVE "component".
struct Both(WasmHost);

#[async_trait::async_trait]
impl PluginRuntime for Both {
    async fn inspect(&self, digest: &str, component: &[u8]) -> Result<EngineInfo, EngineError> {
        if component == NATIVE { Ok(native_info()) } else { self.0.inspect(digest, component).await }
    }
    fn host_keys(&self) -> &'static [(&'static str, &'static str)] {
        self.0.host_keys()
    }
    fn validate_host_config(&self, config: &BTreeMap<String, String>) -> Result<(), String> {
        self.0.validate_host_config(config)
    }
    async fn open(&self, spec: PluginSpec<'_>) -> Result<Arc<dyn PluginEngine>, EngineError> {
        if spec.component == NATIVE { Ok(Arc::new(Native(native_info()))) } else { self.0.open(spec).await }
    }
}

fn digest(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn run(args: &Args, bin: &Path) {
    let file = args.plugins_dir.join("keybridge_plugin_hostile.wasm");
    let component = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it: cargo build --release --target wasm32-wasip2 -p keybridge-plugin-hostile",
            file.display()
        )
    });
    let host = WasmHost::new(HostConfig::default()).expect("wasm host");
    let core = Arc::new(Core::new(
        Barrier::new(Arc::new(RedbStore::in_memory().expect("store"))),
        CoreConfig { plugins: Some(Arc::new(Both(host))), ..Default::default() },
    ));
    core.init(1, 1, Some("root-bench"), true).await.expect("init");
    let t = Caller::token(Some("root-bench"));
    for (name, bytes, path) in [("native", NATIVE, "native/"), ("hostile", component.as_slice(), "wasm/")] {
        core.register_plugin(&t, name, &digest(bytes), bytes).await.expect("register");
        let cfg = [("plugin".to_string(), name.to_string())].into();
        core.enable_mount(&t, path, "plugin", "", cfg).await.expect("mount");
    }
    println!("\n== WASM engines (in-process core: authenticate, route, check, authorize, call)");
    let mut p50 = Vec::new();
    for (label, path) in [("native engine", "native/ok"), ("WASM engine", "wasm/ok")] {
        for c in [1, 32] {
            let core = core.clone();
            let s: Stats = timed(c, args.seconds, move || {
                let core = core.clone();
                async move {
                    let t = Caller::token(Some("root-bench"));
                    core.engine_request(&t, EngineOp::Read, path, BTreeMap::new())
                        .await
                        .is_ok_and(|r| r.data.get("answer") == Some("42"))
                }
            })
            .await;
            print_stats(&format!("{label} Logical read c={c}"), &s);
            if c == 1 {
                p50.push(s.p50_ms);
            }
        }
    }
    println!("per-call overhead of WASM (median, c=1): {:.1} µs", (p50[1] - p50[0]) * 1000.0);

    // Instantiation alone.
    let host = WasmHost::new(HostConfig::default()).expect("wasm host");
    let storage = Arc::new(NoStorage);
    let config = BTreeMap::new();
    let d = digest(&component);
    let engine = host
        .open_engine(PluginSpec { digest: &d, component: &component, config: &config, storage })
        .await
        .expect("open");
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        let t0 = Instant::now();
        engine.instantiate_only().await.expect("instantiate");
        lat.push(t0.elapsed());
    }
    lat.sort_unstable();
    println!(
        "instantiate from InstancePre (pooling): p50 {:.1} µs  p99 {:.1} µs  ({} runs)",
        lat[lat.len() / 2].as_secs_f64() * 1e6,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e6,
        lat.len()
    );

    // Through the real server over gRPC.
    let (server, _) =
        spawn(bin, &["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", "root-bench"]);
    let ch = server.channel().await;
    let mut pc = pb::plugins_client::PluginsClient::new(ch.clone());
    let msgs = vec![
        pb::RegisterPluginChunk { name: "hostile".into(), sha256: d.clone(), data: Vec::new() },
        pb::RegisterPluginChunk { data: component.clone(), ..Default::default() },
    ];
    pc.register(authed("root-bench", tokio_stream::iter(msgs))).await.expect("register over gRPC");
    let mut sys = pb::sys_client::SysClient::new(ch.clone());
    sys.enable_mount(authed(
        "root-bench",
        pb::EnableMountRequest {
            path: "wasm/".into(),
            r#type: "plugin".into(),
            config: [("plugin".to_string(), "hostile".to_string())].into(),
            ..Default::default()
        },
    ))
    .await
    .expect("mount over gRPC");
    for c in [1, 32] {
        let ch = ch.clone();
        let s = timed(c, args.seconds, move || {
            let mut lc = pb::logical_client::LogicalClient::new(ch.clone());
            async move {
                let req = pb::LogicalRequest { path: "wasm/ok".into(), data: Default::default() };
                lc.read(authed("root-bench", req)).await.is_ok()
            }
        })
        .await;
        print_stats(&format!("gRPC Logical/Read WASM c={c}"), &s);
    }
    server.stop().await;
}

struct NoStorage;

#[async_trait::async_trait]
impl keybridge_core::plugins::EngineStorage for NoStorage {
    async fn get(&self, _: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, String> {
        Ok(None)
    }
    async fn put(&self, _: &str, _: &[u8]) -> Result<(), String> {
        Err("read-only".into())
    }
    async fn delete(&self, _: &str) -> Result<(), String> {
        Err("read-only".into())
    }
    async fn list(&self, _: &str) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
}
