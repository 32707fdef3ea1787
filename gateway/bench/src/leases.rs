//! `--parts leases`: a million leases without loading them.
//!
//! A server from a config file (file store) gets the apikeys example at
//! `keys/` and stops. The store then gets `--leases` leases written straight
//! into it (`Core::write_lease_fixture`, as if the engine had issued them),
//! `--leases-due` of them already expired. Then:
//! - start and unseal: exec to the first served request after unseal;
//! - RSS after serving (lease pages, lookups), against 128 MiB;
//! - expiry: the due leases revoked in bulk by the worker (each a WASM
//!   revoke call and a store delete), timed until the last is gone;
//! - listing: pages of 1,000 through the first 100,000 leases, and RSS
//!   after.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_core::plugins::Params;
use keybridge_core::{Core, CoreConfig};
use keybridge_proto::v1 as pb;

use crate::{Args, authed};

const RSS_TARGET_MIB: f64 = 128.0;
const UNSEAL_TARGET: Duration = Duration::from_secs(5);

pub async fn run(args: &Args, bin: &Path) {
    let (n, due) = (args.leases, args.leases_due.min(args.leases));
    println!("\n== {n} leases in the store ({due} of them due), none loaded ==");
    let apikeys = std::fs::read(args.plugins_dir.join("keybridge_plugin_apikeys.wasm"))
        .expect("the apikeys example: cargo build --release --target wasm32-wasip2 -p keybridge-plugin-apikeys");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = crate::start_config_server(bin, dir.path(), false, args);
    let root = crate::init_unseal(&server).await;
    let key = std::fs::read_to_string(std::env::temp_dir().join("kb-bench-unseal")).expect("unseal key");
    let ch = server.channel().await;
    let sha = crate::wasm::digest(&apikeys);
    let msgs = vec![
        pb::RegisterPluginChunk { name: "apikeys".into(), sha256: sha, data: Vec::new() },
        pb::RegisterPluginChunk { data: apikeys, ..Default::default() },
    ];
    pb::plugins_client::PluginsClient::new(ch.clone())
        .register(authed(&root, tokio_stream::iter(msgs)))
        .await
        .expect("register");
    pb::sys_client::SysClient::new(ch.clone())
        .enable_mount(authed(
            &root,
            pb::EnableMountRequest {
                path: "keys/".into(),
                r#type: "plugin".into(),
                config: [("plugin".to_string(), "apikeys".to_string())].into(),
                ..Default::default()
            },
        ))
        .await
        .expect("mount");
    drop(ch);
    server.stop().await;

    // The fixture, written by a core of this process over the same file.
    let t0 = Instant::now();
    {
        let store = RedbStore::open(&dir.path().join("data/keybridge.db"), 64 << 20).expect("open the store");
        let core = Core::new(Barrier::new(Arc::new(store)), CoreConfig::default());
        core.unseal(&key, false, false).await.expect("unseal the fixture's core");
        core.write_lease_fixture(
            "keys/",
            n,
            10_000,
            |i| if i < due { -60 } else { 30 * 86_400 },
            |i| Params(vec![("jti".into(), format!("fixture-{i}"))]),
        )
        .await
        .expect("write the leases");
    }
    let size = std::fs::metadata(dir.path().join("data/keybridge.db")).map(|m| m.len() >> 20).unwrap_or(0);
    println!("fixture: {n} leases written in {:.1} s; store file {size} MiB", t0.elapsed().as_secs_f64());

    // Start, unseal, serve. The expiry worker starts at unseal and works
    // meanwhile.
    let cfg = dir.path().join("keybridge.hcl");
    let t0 = Instant::now();
    let (server, _) = crate::spawn(bin, &["server", "--config", cfg.to_str().expect("utf-8")]);
    let sealed_rss = server.rss_kib() as f64 / 1024.0;
    let ch = server.channel().await;
    pb::sys_client::SysClient::new(ch.clone())
        .unseal(pb::UnsealRequest { key, reset: false, migrate: false })
        .await
        .expect("unseal");
    let mut leases = pb::leases_client::LeasesClient::new(ch.clone());
    let page = |token: String, size: u32| {
        authed(&root, pb::ListLeasesRequest { prefix: "keys/".into(), page_size: size, page_token: token })
    };
    leases.list(page(String::new(), 100)).await.expect("first page");
    let serving = t0.elapsed();
    println!("{:<44} {:>9.0} ms", "exec, unseal, first lease page served", serving.as_secs_f64() * 1e3);
    let serving_rss = server.rss_kib() as f64 / 1024.0;
    println!("{:<44} {:>9.1} MiB sealed, {serving_rss:.1} MiB serving", "RSS at start", sealed_rss);
    crate::target(
        &format!("start and unseal with {n} leases to serving"),
        format!("{:.2} s", serving.as_secs_f64()),
        "< 5 s",
        "–".into(),
        Some(serving < UNSEAL_TARGET),
    );

    // Expiry: the due ones are the lowest ids; the last is gone last.
    let last_due = format!("keys/fixture/{:032x}", due.saturating_sub(1));
    let t1 = Instant::now();
    let deadline = t1 + Duration::from_secs(600);
    while due > 0 && Instant::now() < deadline {
        let gone = leases
            .lookup(authed(&root, pb::LeaseRef { lease_id: last_due.clone() }))
            .await
            .is_err_and(|s| s.code() == tonic::Code::NotFound);
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expiry = t0.elapsed() - serving;
    let left = count(&mut leases, &root, due).await;
    let rate = due as f64 / expiry.as_secs_f64().max(1e-3);
    println!(
        "{:<44} {:>9.1} s ({rate:.0} revocations/s; {left} of the first {due} left)",
        format!("expiry of {due} due leases"),
        expiry.as_secs_f64()
    );
    crate::target(
        &format!("expiry of {due} due leases (WASM revoke + delete each)"),
        format!("{rate:.0}/s"),
        "in bulk, bounded per mount",
        format!("{left} left"),
        Some(left == 0),
    );
    let rss = server.rss_kib() as f64 / 1024.0;
    println!("{:<44} {:>9.1} MiB", "RSS after unseal and expiry", rss);

    // Pages through 100,000.
    let t2 = Instant::now();
    let mut token = String::new();
    let mut listed = 0usize;
    while listed < 100_000 {
        let r = leases.list(page(token, 1000)).await.expect("page").into_inner();
        listed += r.leases.len();
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let rss_after = server.rss_kib() as f64 / 1024.0;
    println!(
        "{:<44} {:>9.1} s (RSS after: {rss_after:.1} MiB)",
        format!("{listed} leases listed in pages of 1,000"),
        t2.elapsed().as_secs_f64()
    );
    let peak = rss.max(rss_after);
    crate::target(
        &format!("RSS with {n} leases (after unseal, expiry, 100 pages)"),
        format!("{peak:.1} MiB"),
        "< 128 MiB",
        format!("{:.0}% of the target", 100.0 * peak / RSS_TARGET_MIB),
        Some(peak < RSS_TARGET_MIB),
    );
    drop(leases);
    drop(ch);
    server.stop().await;
}

/// How many of the first `due` fixture leases are still listed.
async fn count(
    leases: &mut pb::leases_client::LeasesClient<tonic::transport::Channel>,
    root: &str,
    due: usize,
) -> usize {
    let end = format!("keys/fixture/{:032x}", due);
    let r = leases
        .list(authed(
            root,
            pb::ListLeasesRequest { prefix: "keys/fixture/".into(), page_size: 1000, page_token: String::new() },
        ))
        .await
        .expect("list")
        .into_inner();
    r.leases.iter().filter(|l| l.lease_id < end).count()
}
