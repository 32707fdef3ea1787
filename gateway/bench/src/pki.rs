//! `--parts pki`: the built-in PKI engine's certificates issued per second
//! per key type (a root CA of EC P-256 on the gateway's file store, a new
//! key per certificate), and the store's growth over `--pki-issues`
//! certificates with and without `no_store`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use keybridge_proto::v1 as pb;

use crate::{Args, authed, engine_server, logical_write, print_stats, target, timed};

pub async fn run(args: &Args, bin: &std::path::Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, root, ch) = engine_server(bin, dir.path(), args, "pki/", "pki").await;
    logical_write(
        &ch,
        &root,
        "pki/root/generate/internal",
        &[("common_name", "Bench Root".into()), ("ttl", "87600h".into()), ("key_type", "ec".into())],
    )
    .await;
    let kinds = [("ec", 256u32), ("ec", 384), ("ed25519", 0), ("rsa", 2048)];
    for (kt, bits) in kinds {
        for no_store in [true, false] {
            logical_write(
                &ch,
                &root,
                &format!("pki/roles/{kt}-{bits}-{no_store}"),
                &[
                    ("allowed_domains", "bench.internal".into()),
                    ("allow_subdomains", "true".into()),
                    ("key_type", kt.into()),
                    ("key_bits", bits.to_string()),
                    ("no_store", no_store.to_string()),
                    ("ttl", "24h".into()),
                ],
            )
            .await;
        }
    }
    let issue = move |ch: tonic::transport::Channel, token: String, role: String| async move {
        let mut c = pb::logical_client::LogicalClient::new(ch);
        let req = pb::LogicalRequest {
            path: format!("pki/issue/{role}"),
            data: [("common_name".to_string(), "svc.bench.internal".to_string())].into(),
        };
        c.write(authed(&token, req)).await.is_ok()
    };

    println!("\n== PKI: certificates issued (a new key each), root EC P-256, gateway on its file store ==");
    for (kt, bits) in kinds {
        for c in [1usize, 8] {
            let (ch, token, role) = (ch.clone(), root.clone(), format!("{kt}-{bits}-true"));
            let s = timed(c, args.seconds, move || issue(ch.clone(), token.clone(), role.clone())).await;
            let label = if bits == 0 { format!("issue {kt} c={c}") } else { format!("issue {kt}-{bits} c={c}") };
            print_stats(&label, &s);
            target(&format!("PKI {label} (no_store)"), format!("{:.0}/s", s.per_sec), "–", "–".into(), None);
        }
    }

    // Storage growth: the store file before and after N certificates.
    let store = dir.path().join("data/keybridge.db");
    let size = || std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
    let n = args.pki_issues;
    println!("\n== PKI: the store's growth over {n} certificates (ec-256, c=8) ==");
    for no_store in [true, false] {
        let before = size();
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (ch, token, done, failed) = (server.channel().await, root.clone(), done.clone(), failed.clone());
            let role = format!("ec-256-{no_store}");
            tasks.push(tokio::spawn(async move {
                while done.fetch_add(1, Ordering::Relaxed) < n {
                    if !issue(ch.clone(), token.clone(), role.clone()).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            crate::FAILED_CALLS.fetch_add(failed, Ordering::Relaxed);
        }
        let grown = size().saturating_sub(before);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "no_store={no_store:<5}: {n} issued in {secs:.1} s ({:.0}/s, {failed} failed); store file +{:.1} MiB ({:.0} bytes per certificate)",
            n as f64 / secs.max(1e-9),
            grown as f64 / (1u64 << 20) as f64,
            grown as f64 / n.max(1) as f64,
        );
        target(
            &format!("PKI store growth over {n} issues, no_store={no_store}"),
            format!("+{:.1} MiB", grown as f64 / (1u64 << 20) as f64),
            if no_store { "flat" } else { "–" },
            "–".into(),
            no_store.then_some(grown < (1 << 20)),
        );
    }
    server.stop().await;
}
