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
//! - Throughput at concurrency 1 and 32 of both, of the apikeys example
//!   issuing a token (a storage write and a lease), and of both through the
//!   real server over gRPC (`--client`), beside `Get` on the same server.

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

use crate::{Args, Op, Stats, authed, print_stats, timed};

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

pub(crate) fn digest(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn run(args: &Args, bin: &Path) {
    let load = |name: &str| {
        let file = args.plugins_dir.join(format!("keybridge_plugin_{name}.wasm"));
        std::fs::read(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it: cargo build --release --target wasm32-wasip2 -p keybridge-plugin-{name}",
                file.display()
            )
        })
    };
    let component = load("hostile");
    let apikeys = load("apikeys");
    let host = WasmHost::new(HostConfig::default()).expect("wasm host");
    let core = Arc::new(Core::new(
        Barrier::new(Arc::new(RedbStore::in_memory().expect("store"))),
        CoreConfig { plugins: Some(Arc::new(Both(host))), ..Default::default() },
    ));
    core.init(1, 1, Some("root-bench"), true).await.expect("init");
    let t = Caller::token(Some("root-bench"));
    for (name, bytes, path) in
        [("native", NATIVE, "native/"), ("hostile", component.as_slice(), "wasm/"), ("apikeys", &apikeys, "keys/")]
    {
        core.register_plugin(&t, name, &digest(bytes), bytes).await.expect("register");
        let cfg = [("plugin".to_string(), name.to_string())].into();
        core.enable_mount(&t, path, "plugin", "", cfg).await.expect("mount");
    }
    let role: BTreeMap<String, String> = [("scopes".to_string(), "read".to_string())].into();
    core.engine_request(&t, EngineOp::Write, "keys/roles/bench", role.clone()).await.expect("role");
    println!("\n== WASM engines (in-process core: authenticate, route, check, authorize, call)");
    let in_process =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut p50 = Vec::new();
    let mut in_process_c32 = 0.0;
    for (label, path, op) in [
        ("native engine", "native/ok", EngineOp::Read),
        ("WASM engine", "wasm/ok", EngineOp::Read),
        ("apikeys issue (write, lease)", "keys/issue/bench", EngineOp::Write),
    ] {
        for c in [1, 32] {
            let core = core.clone();
            let secs = args.seconds;
            // On a runtime of two workers whatever `--client-threads` says:
            // in process, the calls have the machine to themselves.
            let s: Stats = in_process
                .spawn(timed(c, secs, move || {
                    let core = core.clone();
                    async move {
                        let t = Caller::token(Some("root-bench"));
                        core.engine_request(&t, op, path, BTreeMap::new()).await.is_ok_and(|r| {
                            if op == EngineOp::Write { r.lease.is_some() } else { r.data.get("answer") == Some("42") }
                        })
                    }
                }))
                .await
                .expect("in-process run");
            print_stats(&format!("{label} Logical c={c}"), &s);
            if c == 1 && op == EngineOp::Read {
                p50.push(s.p50_ms);
            }
            if c == 32 && path == "wasm/ok" {
                in_process_c32 = s.per_sec;
                crate::target(
                    "WASM trivial call, in process, c=32",
                    format!("{:.0}/s", s.per_sec),
                    "≥ 40,000/s",
                    "–".into(),
                    Some(s.per_sec >= 40_000.0),
                );
            }
            if c == 32 && op == EngineOp::Write {
                crate::target(
                    "apikeys issue (storage write, lease), in process, c=32",
                    format!("{:.0}/s", s.per_sec),
                    "measured, no target",
                    format!("{:.0}% of the trivial call", 100.0 * s.per_sec / in_process_c32.max(1.0)),
                    None,
                );
            }
        }
    }
    in_process.shutdown_background();
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

    // Through the real server over gRPC (the file store, as `throughput`),
    // with `Get` on the same server and client as the reference.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = crate::start_config_server(bin, dir.path(), false, args);
    let root = crate::init_unseal(&server).await;
    crate::load_bench_keys(&server, &root).await;
    let ch = server.channel().await;
    let mut pc = pb::plugins_client::PluginsClient::new(ch.clone());
    let mut sys = pb::sys_client::SysClient::new(ch.clone());
    for (name, bytes, path) in [("hostile", &component, "wasm/"), ("apikeys", &apikeys, "keys/")] {
        let msgs = vec![
            pb::RegisterPluginChunk { name: name.into(), sha256: digest(bytes), data: Vec::new() },
            pb::RegisterPluginChunk { data: bytes.clone(), ..Default::default() },
        ];
        pc.register(authed(&root, tokio_stream::iter(msgs))).await.expect("register over gRPC");
        sys.enable_mount(authed(
            &root,
            pb::EnableMountRequest {
                path: path.into(),
                r#type: "plugin".into(),
                config: [("plugin".to_string(), name.to_string())].into(),
                ..Default::default()
            },
        ))
        .await
        .expect("mount over gRPC");
    }
    pb::logical_client::LogicalClient::new(ch.clone())
        .write(authed(&root, pb::LogicalRequest { path: "keys/roles/bench".into(), data: role.into_iter().collect() }))
        .await
        .expect("role over gRPC");
    // c=1: `Get` and the WASM call in alternating runs, as the audit
    // ratio is measured, so that the machine's drift from one run to the
    // next falls on both alike.
    let (mut get1, mut wasm1) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        get1.push(crate::run(args, &server, &root, Op::Get, 1, 1).await);
        wasm1.push(crate::run(args, &server, &root, Op::WasmOk, 1, 1).await);
    }
    let (get1, wasm1) = (crate::median(get1), crate::median(wasm1));
    print_stats("gRPC Get (reference) c=1", &get1);
    print_stats("gRPC Logical/Read WASM c=1", &wasm1);
    let over = (wasm1.mean_ms - get1.mean_ms) * 1000.0;
    crate::target(
        "WASM trivial call over gRPC, c=1, mean (alternating runs)",
        format!("{:.0} µs", wasm1.mean_ms * 1000.0),
        "within 40 µs of Get's",
        format!("Get {:.0} µs: {over:+.0} µs", get1.mean_ms * 1000.0),
        Some(over <= 40.0),
    );
    let s = crate::median_of(args, &server, &root, Op::Get, 32, 1).await;
    print_stats("gRPC Get (reference) c=32", &s);
    let s = crate::median_of(args, &server, &root, Op::WasmOk, 32, 1).await;
    print_stats("gRPC Logical/Read WASM c=32", &s);
    let ratio = s.per_sec / in_process_c32.max(1.0);
    crate::target(
        "WASM trivial call over gRPC, c=32",
        format!("{:.0}/s", s.per_sec),
        "≥ 80% of in process",
        format!("{:.0}% of in process ({in_process_c32:.0}/s)", ratio * 100.0),
        Some(ratio >= 0.8),
    );
    for c in [1, 32] {
        let s = crate::median_of(args, &server, &root, Op::Issue, c, 1).await;
        print_stats(&format!("gRPC apikeys issue c={c}"), &s);
        if c == 32 {
            crate::target(
                "apikeys issue over gRPC, c=32 (fsync'd store)",
                format!("{:.0}/s", s.per_sec),
                "measured, no target",
                "–".into(),
                None,
            );
        }
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
