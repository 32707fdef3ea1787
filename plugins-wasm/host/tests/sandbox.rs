//! The sandbox, limit by limit: each hostile behaviour is stopped with a
//! clear error while well-behaved calls keep being served. The components
//! are built by the test setup (`tests/run-all.sh`, or
//! `cargo build --release --target wasm32-wasip2 -p keybridge-plugin-hostile`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybridge_core::plugins::{
    CallContext, EngineError, EngineRequest, EngineStorage, Operation, Params, PluginEngine, PluginRuntime, PluginSpec,
};
use keybridge_wasm_host::{HostConfig, WasmHost};
use zeroize::Zeroizing;

#[derive(Default)]
struct MemStorage(Mutex<BTreeMap<String, Vec<u8>>>);

#[async_trait::async_trait]
impl EngineStorage for MemStorage {
    async fn get(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned().map(Zeroizing::new))
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.into(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self.0.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
}

pub fn component(name: &str) -> Vec<u8> {
    let dir = std::env::var("KEYBRIDGE_PLUGINS_DIR")
        .unwrap_or_else(|_| format!("{}/../../target/wasm32-wasip2/release", env!("CARGO_MANIFEST_DIR")));
    let file = format!("{dir}/{name}.wasm");
    std::fs::read(&file).unwrap_or_else(|e| {
        panic!("{file}: {e}; build the plugins first: cargo build --release --target wasm32-wasip2 -p keybridge-plugin-hostile (tests/run-all.sh does)")
    })
}

fn digest(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
}

async fn mount(host: &WasmHost, config: &[(&str, &str)]) -> (Arc<dyn PluginEngine>, Arc<MemStorage>) {
    let bytes = component("keybridge_plugin_hostile");
    let storage = Arc::new(MemStorage::default());
    let config: BTreeMap<String, String> = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let d = digest(&bytes);
    let b = host
        .open(PluginSpec { digest: &d, component: &bytes, config: &config, storage: storage.clone() })
        .await
        .unwrap();
    (b, storage)
}

fn ctx() -> CallContext {
    CallContext {
        mount_path: "hostile/".into(),
        config: vec![],
        request_id: "r1".into(),
        caller: "test".into(),
        lease_max_ttl_secs: 0,
    }
}

async fn read(b: &dyn PluginEngine, path: &str) -> Result<Params, EngineError> {
    let m = keybridge_core::plugins::match_path(b.info(), path).expect("a served path");
    let params = keybridge_core::plugins::check_params(&m, Operation::Read, &BTreeMap::new()).unwrap();
    let req = EngineRequest { operation: Operation::Read, path: path.into(), pattern: m.info.pattern.clone(), params };
    b.handle(&ctx(), &req).await.map(|r| r.data.clone())
}

/// Runs the hostile call while well-behaved calls go on beside it; returns
/// its error and how many good calls completed meanwhile.
async fn hostile(b: Arc<dyn PluginEngine>, path: &str) -> (EngineError, usize) {
    let bad = {
        let b = b.clone();
        let path = path.to_string();
        tokio::spawn(async move { read(b.as_ref(), &path).await })
    };
    let mut served = 0;
    while !bad.is_finished() {
        let got = read(b.as_ref(), "ok").await.expect("a good call fails while a hostile one runs");
        assert_eq!(got.get("answer"), Some("42"));
        served += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = bad.await.unwrap().expect_err("the hostile call succeeded");
    (err, served)
}

fn host() -> WasmHost {
    WasmHost::new(HostConfig::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_hits_the_deadline() {
    let h = host();
    let (b, _) = mount(&h, &[("timeout", "300ms")]).await;
    let t = Instant::now();
    let (e, served) = hostile(b, "loop").await;
    assert!(matches!(e, EngineError::Deadline(_)), "{e:?}");
    assert!(e.to_string().contains("time limit of 300ms"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "stopped after {:?}", t.elapsed());
    assert!(served > 3, "only {served} good calls were served meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_within_fuel_is_respected_and_past_it_is_stopped() {
    let h = host();
    let (b, _) = mount(&h, &[("fuel", "50000000")]).await;
    // Respected: a normal call fits easily.
    assert_eq!(read(b.as_ref(), "ok").await.unwrap().get("answer"), Some("42"));
    let (e, _) = hostile(b, "loop").await;
    assert!(matches!(e, EngineError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("fuel"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_under_the_cap_is_granted_and_over_it_refused() {
    let h = host();
    let (b, _) = mount(&h, &[("max_memory_mb", "32")]).await;
    assert_eq!(read(b.as_ref(), "alloc/16").await.unwrap().get("allocated_mb"), Some("16"));
    let e = read(b.as_ref(), "alloc/40").await.unwrap_err();
    assert!(matches!(e, EngineError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("its limit is 32 MiB"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_within_the_deadline_finishes_and_past_it_is_stopped() {
    let h = host();
    let (b, _) = mount(&h, &[("timeout", "400ms")]).await;
    assert_eq!(read(b.as_ref(), "sleep/150").await.unwrap().get("slept"), Some("150"));
    let e = read(b.as_ref(), "sleep/1500").await.unwrap_err();
    assert!(matches!(e, EngineError::Deadline(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_memory_cap() {
    let h = host();
    let (b, _) = mount(&h, &[("max_memory_mb", "32")]).await;
    let (e, served) = hostile(b, "memory").await;
    assert!(matches!(e, EngineError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("its limit is 32 MiB"), "{e}");
    assert!(served >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_traps_on_the_stack_limit() {
    let h = host();
    let (b, _) = mount(&h, &[]).await;
    let (e, _) = hostile(b, "recurse").await;
    assert!(matches!(e, EngineError::Trapped(_)), "{e:?}");
    assert!(e.to_string().starts_with("plugin trapped: call stack exhausted"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_trap_of_that_call_only() {
    let h = host();
    let (b, _) = mount(&h, &[]).await;
    let (e, _) = hostile(b.clone(), "trap").await;
    assert!(matches!(e, EngineError::Trapped(_)), "{e:?}");
    assert!(e.to_string().starts_with("plugin trapped: "), "{e}");
    assert!(e.to_string().contains("the hostile plugin panics on purpose"), "{e}");
    // The next call gets a fresh instance.
    assert_eq!(read(b.as_ref(), "ok").await.unwrap().get("answer"), Some("42"));
}

/// Many mounts of one component opened at once (as every expiring lease of
/// a mount asks for its engine after an unseal) compile it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_asked_for_at_once_compiles_once() {
    let h = Arc::new(host());
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { mount(&h, &[]).await })
        })
        .collect();
    for o in opens {
        o.await.unwrap();
    }
    assert_eq!(h.compiles(), 1);
}

/// Every call runs in a fresh instance, although the pool resets a freed
/// slot in place for the next: what a call left in its globals, in low
/// memory and in memory it grew is gone for the next call.
/// Both ways of resetting a slot: in place (where nothing can be swapped)
/// and by handing it back to the kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_sees_what_an_earlier_one_left_in_memory() {
    for in_place in [true, false] {
        let h = WasmHost::new(HostConfig { reset_in_place: Some(in_place), ..HostConfig::default() }).unwrap();
        let (b, _) = mount(&h, &[]).await;
        for _ in 0..5 {
            let r = read(b.as_ref(), "remember").await.unwrap();
            assert_eq!((r.get("calls"), r.get("low"), r.get("high")), (Some("1"), Some("0"), Some("0,0")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_response_is_refused_and_a_raised_limit_admits_it() {
    let h = host();
    let (b, _) = mount(&h, &[]).await;
    let (e, _) = hostile(b, "huge").await;
    assert!(matches!(e, EngineError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("limit is 1048576"), "{e}");
    let (b, _) = mount(&h, &[("max_response_bytes", "9000000")]).await;
    assert_eq!(read(b.as_ref(), "huge").await.unwrap().get("blob").map(str::len), Some(8 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_on_the_allow_list_is_refused() {
    let h = host();
    let (b, _) = mount(&h, &[]).await;
    let (e, _) = hostile(b, "call/evil.example").await;
    assert!(matches!(e, EngineError::Denied(_)), "{e:?}");
    assert!(e.to_string().contains("request to evil.example:80 was refused"), "{e}");
}

/// An allowed name that resolves to the gateway's own host (DNS
/// rebinding; here `localhost`) is refused before any connection: only an
/// address on the list literally reaches loopback, link-local or metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_resolving_to_an_internal_address_is_refused() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = server.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    let h = host();
    let (b, _) = mount(&h, &[("allowed_hosts", &format!("localhost:{port}")), ("timeout", "2s")]).await;
    let r = read(b.as_ref(), &format!("call/localhost:{port}")).await;
    assert!(
        matches!(&r, Err(EngineError::Unavailable(m)) if m.contains("DestinationIpProhibited")),
        "the request went through: {r:?}"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "a connection reached the loopback server");
    // The same server by its literal address, on the list: reached.
    let (b, _) = mount(&h, &[("allowed_hosts", &format!("127.0.0.1:{port}")), ("timeout", "2s")]).await;
    let got = read(b.as_ref(), &format!("call/127.0.0.1:{port}")).await.unwrap();
    assert_eq!(got.get("status"), Some("204"));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_reached_and_one_that_never_answers_hits_the_deadline() {
    // A server that answers.
    let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ok_addr = ok.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = ok.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    let h = host();
    let allowed = format!("{ok_addr},{silent_addr}");
    let (b, _) = mount(&h, &[("allowed_hosts", &allowed), ("timeout", "500ms")]).await;
    let got = read(b.as_ref(), &format!("call/{ok_addr}")).await.unwrap();
    assert_eq!(got.get("status"), Some("204"));
    let t = Instant::now();
    let (e, served) = hostile(b, &format!("call/{silent_addr}")).await;
    // The host caps the request's timeouts at the time the call has left,
    // and a request cut off by them fails the call as out of time: one
    // outcome, whichever timer fires first.
    assert!(matches!(e, EngineError::Deadline(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(served > 3, "{served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_environment_are_not_there() {
    let h = host();
    let (b, _) = mount(&h, &[]).await;
    let (e, _) = hostile(b.clone(), "file").await;
    assert!(e.to_string().contains("could not open /etc/passwd"), "{e}");
    assert_eq!(read(b.as_ref(), "env").await.unwrap().get("vars"), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_is_the_mounts_own() {
    let h = host();
    let (a, sa) = mount(&h, &[]).await;
    let (_b, sb) = mount(&h, &[]).await;
    assert_eq!(read(a.as_ref(), "storage").await.unwrap().get("read_back"), Some("value"));
    assert_eq!(sa.0.lock().unwrap().get("probe").map(Vec::as_slice), Some(&b"value"[..]));
    assert!(sb.0.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_refused() {
    let h = host();
    let mut bytes = component("keybridge_plugin_hostile");
    let pinned = digest(&bytes);
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let storage = Arc::new(MemStorage::default());
    let config = BTreeMap::new();
    let e = h.open(PluginSpec { digest: &pinned, component: &bytes, config: &config, storage }).await.err().unwrap();
    assert!(matches!(e, EngineError::BadComponent(_)), "{e:?}");
    assert!(e.to_string().contains("refusing a changed file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_component_is_refused_clearly() {
    let h = host();
    let bytes = b"\0asm\x01\0\0\0".to_vec();
    let e = h.inspect(&digest(&bytes), &bytes).await.err().unwrap();
    assert!(e.to_string().contains("not a WebAssembly component"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_pool_admits_its_size_and_refuses_more() {
    let h = WasmHost::new(HostConfig { max_instances: 2, ..HostConfig::default() }).unwrap();
    let (b, _) = mount(&h, &[]).await;
    // Respected: two calls at once on a pool of two.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { read(b.as_ref(), "sleep/400").await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().get("slept"), Some("400"));
    }
    // Exceeded: a third while two run.
    let running: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { read(b.as_ref(), "sleep/600").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let e = read(b.as_ref(), "ok").await.unwrap_err();
    assert!(matches!(e, EngineError::Exhausted(_)), "{e:?}");
    assert!(e.to_string().contains("too many plugin calls at once"), "{e}");
    for c in running {
        c.await.unwrap().unwrap();
    }
    assert_eq!(read(b.as_ref(), "ok").await.unwrap().get("answer"), Some("42"));
}
