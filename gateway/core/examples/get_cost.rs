//! The core's own cost of a `Get`, with no network: authenticate, route,
//! one record lookup, decrypt, decode. Run it with
//! `cargo run --release -p keybridge-core --example get_cost`.
//! The gRPC benchmark (keybridge-bench) measures the whole path.

use std::sync::Arc;
use std::time::Instant;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_core::value::SecretValue;
use keybridge_core::{Core, CoreConfig};
use zeroize::Zeroizing;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("kb.db"), 16 << 20).expect("store");
    let core = Core::new(Barrier::new(Arc::new(store)), CoreConfig::default());
    let init = core.init(1, 1, None, true).await.expect("init");
    let token = Some(init.root_token.as_str());
    let value = SecretValue::Fields([("password".to_string(), Zeroizing::new("x".repeat(1000)))].into());
    for k in 0..10_000 {
        core.put(token, &format!("secret/bench/k{k}"), &value, None).await.expect("put");
    }
    for (keys, what) in [(10_000usize, "10k keys"), (1, "hot key")] {
        let n = 200_000;
        let start = Instant::now();
        for i in 0..n {
            let k = (i * 7919) % keys;
            core.get(token, &format!("secret/bench/k{k}"), None).await.expect("get");
        }
        println!("core Get, 1 KiB, {what}: {:.2} µs per call", start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
}
