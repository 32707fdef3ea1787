//! The core's own cost of a `Get`, with no network: authenticate, route,
//! one record lookup, decrypt, decode. Run it with
//! `cargo run --release -p keybridge-core --example get_cost`.
//! The gRPC benchmark (keybridge-bench) measures the whole path.

use std::sync::Arc;
use std::time::Instant;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_core::value::SecretValue;
use keybridge_core::{Caller, Core, CoreConfig, TokenRequest};
use zeroize::Zeroizing;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("kb.db"), 16 << 20).expect("store");
    let core = Core::new(Barrier::new(Arc::new(store)), CoreConfig::default());
    let init = core.init(1, 1, None, true).await.expect("init");
    let token = &Caller::token(Some(init.root_token.as_str()));
    let value = SecretValue::Fields([("password".to_string(), Zeroizing::new("x".repeat(1000)))].into());
    for k in 0..10_000 {
        core.put(token, &format!("secret/bench/k{k}"), &value, None).await.expect("put");
    }
    // A non-root token whose policy holds 20 rules of every kind.
    let mut policy = String::from("path \"secret/data/bench/*\" {\n  capabilities = [\"read\"]\n}\n");
    for i in 1..20 {
        let path = match i % 3 {
            0 => format!("secret/data/team-{i}/*"),
            1 => format!("secret/data/+/service-{i}"),
            _ => format!("kv-{i}/data/app/config"),
        };
        policy.push_str(&format!("path \"{path}\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n"));
    }
    core.put_policy(token, "bench", &policy).await.expect("policy");
    let request = TokenRequest {
        policies: vec!["bench".into()],
        ttl_secs: 3600,
        display_name: String::new(),
        no_default_policy: false,
        ..Default::default()
    };
    let (limited, _) = core.create_token(token, request).await.expect("token");
    for (who, t) in [("root token", token), ("token with 20 policy rules", &Caller::token(Some(limited.as_str())))] {
        for (keys, what) in [(10_000usize, "10k keys"), (1, "hot key")] {
            let n = 200_000;
            let start = Instant::now();
            for i in 0..n {
                let k = (i * 7919) % keys;
                core.get(t, &format!("secret/bench/k{k}"), None).await.expect("get");
            }
            println!(
                "core Get, 1 KiB, {what}, {who}: {:.2} µs per call",
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
