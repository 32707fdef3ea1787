//! `--parts sync`: the reconciler at scale. N secrets (default 10,000) in
//! the local store replicated to AWS (moto), GCP (our Secret Manager test
//! server) and Azure (our Key Vault test server): time to initial
//! convergence, cloud calls by target and kind (counted by the gateway's
//! mounts; our two servers count the requests they answer too), the calls
//! of a quick and a deep steady-state scan, the calls to replicate a 1 %
//! change, and write-to-replica latency. Run with the clouds' published
//! quotas enforced client-side, and with them lifted.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use keybridge_testservers::keyvault::{self, KeyVault};
use keybridge_testservers::secretmanager::SecretManager;
use tokio_stream::StreamExt;

use crate::{Args, authed, spawn, start_moto_indexed, value_1k};

const TOKEN: &str = "root-bench";

/// (mount, kind) → (calls, seconds they took).
type Calls = BTreeMap<(String, String), (u64, f64)>;
/// A mount to enable: path, type, settings.
type MountSpec = (&'static str, &'static str, Vec<(String, String)>);

async fn calls(c: &mut pb::sync_client::SyncClient<tonic::transport::Channel>) -> Calls {
    let req = pb::SyncStatusRequest { page_size: 1, ..Default::default() };
    let s = c.status(authed(TOKEN, req)).await.expect("status").into_inner();
    s.calls.into_iter().map(|c| ((c.mount, c.kind), (c.calls, c.seconds))).collect()
}

/// Seconds the calls of `kinds` took between two counts: summed over the
/// mounts, and the largest on one mount (targets are scanned together).
fn call_seconds(before: &Calls, after: &Calls, kinds: &[&str]) -> (f64, f64) {
    let mut per_mount: BTreeMap<&str, f64> = BTreeMap::new();
    for ((mount, kind), (_, secs)) in after {
        if kinds.contains(&kind.as_str()) {
            let was = before.get(&(mount.clone(), kind.clone())).map_or(0.0, |b| b.1);
            *per_mount.entry(mount).or_default() += secs - was;
        }
    }
    (per_mount.values().sum(), per_mount.values().copied().fold(0.0, f64::max))
}

fn print_delta(label: &str, before: &Calls, after: &Calls) {
    println!("{label}:");
    for mount in ["aws/", "gcp/", "azure/"] {
        let row: Vec<String> = ["list", "read_meta", "read_value", "write"]
            .iter()
            .map(|k| {
                let key = (mount.to_string(), k.to_string());
                let (a, b) =
                    (after.get(&key).copied().unwrap_or_default(), before.get(&key).copied().unwrap_or_default());
                format!("{k} {} ({:.2} s)", a.0 - b.0, a.1 - b.1)
            })
            .collect();
        println!("  {mount:<7} {}", row.join(", "));
    }
}

pub async fn run(args: &Args, bin: &std::path::Path) {
    for &n in &args.sync_secrets {
        for quotas in &args.sync_quotas {
            one(args, bin, n, quotas == "on").await;
        }
    }
}

async fn one(args: &Args, bin: &std::path::Path, n: usize, quotas: bool) {
    // moto records every request it answers (headers included) to a file;
    // AWS calls are counted there, by X-Amz-Target. Above 20,000 secrets
    // the recording grows past what moto answers well (at 100,000 it
    // answered with error pages): AWS calls are then the gateway's own
    // counts (`adapter calls`) only.
    let rec_dir = tempfile::tempdir().expect("tempdir");
    let rec = rec_dir.path().join("moto-recording.jsonl");
    let recording = n <= 20_000;
    let env: &[(&str, &str)] = if recording {
        &[("MOTO_ENABLE_RECORDING", "True"), ("MOTO_RECORDER_FILEPATH", rec.to_str().expect("utf-8"))]
    } else {
        println!("(moto's request recorder is off above 20,000 secrets: AWS calls are the gateway's counts)");
        &[]
    };
    let moto = start_moto_indexed(&args.moto, env);
    let sm = SecretManager::start("keybridge-bench").await;
    let kv = KeyVault::start().await;
    let ca = std::env::temp_dir().join(format!("kb-bench-kv-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &kv.ca_pem).expect("ca");
    let emulators = |label: &str, from: &mut Counted| {
        let now = Counted::take(&rec, &sm, &kv);
        println!("  {label}, HTTP requests answered by the emulators:");
        for (cloud, a, b) in
            [("aws", &from.aws, &now.aws), ("gcp", &from.gcp, &now.gcp), ("azure", &from.azure, &now.azure)]
        {
            let row: Vec<String> = b
                .iter()
                .map(|(k, v)| (k, v - a.get(k).unwrap_or(&0)))
                .filter(|(_, d)| *d > 0)
                .map(|(k, d)| format!("{k} {d}"))
                .collect();
            println!("    {cloud:<6} {}", if row.is_empty() { "none".to_string() } else { row.join(", ") });
        }
        *from = now;
    };
    let (server, _) =
        spawn(bin, &["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", TOKEN]);
    let mut sys = pb::sys_client::SysClient::new(server.channel().await);
    let lifted: Vec<(String, String)> = if quotas {
        Vec::new()
    } else {
        ["rate_read", "rate_meta", "rate_list", "rate_write"]
            .iter()
            .map(|k| (k.to_string(), "1000000".into()))
            .collect()
    };
    let mounts: Vec<MountSpec> = vec![
        (
            "aws/",
            "aws",
            vec![
                ("region".into(), "us-east-1".into()),
                ("endpoint_url".into(), format!("http://127.0.0.1:{}", moto.1)),
                ("access_key_id".into(), "testing".into()),
                ("secret_access_key".into(), "testing".into()),
            ],
        ),
        (
            "gcp/",
            "gcp",
            vec![
                ("project".into(), "keybridge-bench".into()),
                ("endpoint".into(), sm.url()),
                ("credentials".into(), sm.key_file().display().to_string()),
            ],
        ),
        (
            "azure/",
            "azure",
            vec![
                ("vault_url".into(), kv.url.clone()),
                ("authority_host".into(), kv.url.clone()),
                ("tenant_id".into(), kv.tenant.clone()),
                ("client_id".into(), keyvault::CLIENT_ID.into()),
                ("client_secret".into(), keyvault::CLIENT_SECRET.into()),
                ("ca_cert".into(), ca.display().to_string()),
            ],
        ),
    ];
    for (path, kind, mut config) in mounts {
        config.extend(lifted.iter().cloned());
        let req = pb::EnableMountRequest {
            path: path.into(),
            r#type: kind.into(),
            description: String::new(),
            config: config.into_iter().collect::<HashMap<_, _>>(),
        };
        sys.enable_mount(authed(TOKEN, req)).await.expect("mount");
    }
    println!(
        "\n== Sync: {n} secrets of 1 KiB to AWS (moto), GCP and Azure (our servers); quotas {} ==",
        if quotas { "enforced client-side (published)" } else { "lifted" }
    );
    SETTLE_SECS.store((n as u64 / 100).max(50), std::sync::atomic::Ordering::Relaxed);
    load_source(&server, n).await;
    let mut sync = pb::sync_client::SyncClient::new(server.channel().await);
    let mut counted = Counted::take(&rec, &sm, &kv);
    let before = calls(&mut sync).await;
    let started = Instant::now();
    sync.create_rule(authed(
        TOKEN,
        pb::SyncRule {
            name: "bench".into(),
            source: "secret/bench/".into(),
            targets: vec!["aws/bench/".into(), "gcp/bench/".into(), "azure/bench/".into()],
            scan_interval_secs: 3600,
            ..Default::default()
        },
    ))
    .await
    .expect("rule");
    // The rule's first scan replicates what is there; follow the status.
    // Counting reads every record: poll no more than a fifth of the time.
    let st = loop {
        let asked = Instant::now();
        let req = pb::SyncStatusRequest { rule: "bench".into(), page_size: 1, ..Default::default() };
        let st = sync.status(authed(TOKEN, req)).await.expect("status").into_inner();
        let in_sync = in_sync(&st);
        if in_sync >= 3 * n || started.elapsed() > Duration::from_secs(7200) {
            break st;
        }
        tokio::time::sleep((asked.elapsed() * 4).max(Duration::from_millis(200))).await;
    };
    let took = started.elapsed();
    let in_sync = in_sync(&st);
    if in_sync < 3 * n {
        not_settled("initial convergence");
        println!("initial convergence: did not converge in 2 h ({in_sync} of {} replicas in sync)", 3 * n);
    } else {
        println!(
            "initial convergence: {:.1} s ({in_sync} of {} replicas in sync, {} pending)",
            took.as_secs_f64(),
            3 * n,
            st.pending
        );
    }
    let after = calls(&mut sync).await;
    print_delta("  adapter calls for the initial replication", &before, &after);
    emulators("initial replication", &mut counted);

    for (label, quick) in [("quick scan, nothing changed", true), ("deep scan, nothing changed", false)] {
        if quotas && !quick {
            // GCP's published admin quota (600 requests a minute) makes a
            // deep scan of N replicas take at least 2N/10 s.
            println!("  {label}: skipped with quotas on (at least {} s at GCP's 600 requests a minute)", 2 * n / 10);
            continue;
        }
        let before = calls(&mut sync).await;
        let t = Instant::now();
        let took = run_settled(&mut sync, quick, label).await.map(|()| t.elapsed().as_secs_f64());
        let after = calls(&mut sync).await;
        let time = took.map_or("did not settle".to_string(), |s| format!("{s:.2} s"));
        print_delta(&format!("  {label} ({time}), adapter calls"), &before, &after);
        emulators(label, &mut counted);
        // The bound: the scan's cloud calls (lists; a deep scan's describes
        // too) plus 1 s of the gateway's own work.
        let kinds: &[&str] = if quick { &["list"] } else { &["list", "read_meta"] };
        let (sum, max) = call_seconds(&before, &after, kinds);
        if let Some(t) = took {
            println!(
                "  {label}: {t:.2} s; its {} took {sum:.2} s in all, {max:.2} s on the slowest target",
                if quick { "list calls" } else { "list and describe calls" }
            );
            crate::target(
                &format!("{label} ({n} secrets × 3 clouds, quotas {})", if quotas { "on" } else { "off" }),
                format!("{t:.2} s"),
                "≤ its cloud calls' time + 1 s",
                format!("calls {sum:.2} s in all ({max:.2} s slowest target): {:+.2} s", t - sum),
                Some(t <= sum + 1.0),
            );
        }
    }

    // 1 % changed through the gateway.
    let changed = (n / 100).max(1);
    let before = calls(&mut sync).await;
    let t = Instant::now();
    let mut c = pb::secrets_client::SecretsClient::new(server.channel().await);
    for i in 0..changed {
        let k = i * 100 % n;
        let req = pb::PutRequest { path: format!("secret/bench/k{k:05}"), value: value_1k(k + n), cas: None };
        c.put(authed(TOKEN, req)).await.expect("change");
    }
    let took = run_settled(&mut sync, true, "1 % changed").await.map(|()| t.elapsed().as_secs_f64());
    let after = calls(&mut sync).await;
    let time = took.map_or("did not settle".to_string(), |s| format!("replicated in {s:.2} s"));
    print_delta(
        &format!("  {changed} secrets changed (1 %), {time}, with one quick scan; adapter calls"),
        &before,
        &after,
    );
    emulators("1 % changed", &mut counted);

    // Write-to-replica latency: every target holding the new version.
    let samples = 50;
    let mut lat = Vec::new();
    for i in 0..samples {
        let k = (i * 37 + 11) % n;
        let mut streams = Vec::new();
        for m in ["aws", "gcp", "azure"] {
            let mut w = pb::secrets_client::SecretsClient::new(server.channel().await);
            let s = w
                .watch(authed(TOKEN, pb::WatchSecretRequest { path: format!("{m}/bench/k{k:05}") }))
                .await
                .expect("watch")
                .into_inner();
            streams.push(s);
        }
        let t = Instant::now();
        let req = pb::PutRequest { path: format!("secret/bench/k{k:05}"), value: value_1k(k + 2 * n + i), cas: None };
        c.put(authed(TOKEN, req)).await.expect("put");
        for s in &mut streams {
            loop {
                let e = tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("event in time");
                if e.expect("stream").expect("event").kind == "replicated" {
                    break;
                }
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "write to every replica ({samples} writes): p50 {:.1} ms, p99 {:.1} ms",
        lat[samples / 2].as_secs_f64() * 1e3,
        lat[samples * 99 / 100].as_secs_f64() * 1e3
    );
    server.stop().await;
}

/// `--parts sync-local`: the reconciler with a local target, for N = 1k,
/// 10k and 100k secrets: initial convergence, and a quick and a deep scan
/// with nothing changed. (What a scan holds in memory is measured by the
/// core's `scan_memory` test, which counts the heap: from outside, the
/// allocator's reuse of freed memory hides it from the RSS.)
pub async fn local(_args: &Args, bin: &std::path::Path) {
    println!("\n== Sync to a local target (dev server, in-memory store) ==");
    for n in [1_000usize, 10_000, 100_000] {
        let (server, _) =
            spawn(bin, &["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", TOKEN]);
        let mut sys = pb::sys_client::SysClient::new(server.channel().await);
        let req = pb::EnableMountRequest { path: "replica/".into(), r#type: "local".into(), ..Default::default() };
        sys.enable_mount(authed(TOKEN, req)).await.expect("mount");
        SETTLE_SECS.store((n as u64 / 100).max(50), std::sync::atomic::Ordering::Relaxed);
        load_source(&server, n).await;
        let mut sync = pb::sync_client::SyncClient::new(server.channel().await);
        let started = Instant::now();
        let rule = pb::SyncRule {
            name: "bench".into(),
            source: "secret/bench/".into(),
            targets: vec!["replica/bench/".into()],
            scan_interval_secs: 3600,
            ..Default::default()
        };
        sync.create_rule(authed(TOKEN, rule)).await.expect("rule");
        let initial = run_settled_within(&mut sync, false, "initial convergence", 600).await;
        let initial = initial.map(|()| started.elapsed().as_secs_f64());
        let mut times = Vec::new();
        for quick in [true, false] {
            let t = Instant::now();
            let r = run_settled_within(&mut sync, quick, if quick { "quick scan" } else { "deep scan" }, 600).await;
            times.push(r.map(|()| t.elapsed().as_secs_f64()));
        }
        let show = |t: Option<f64>| t.map_or("did not settle".to_string(), |s| format!("{s:.2} s"));
        println!(
            "{n:>7} secrets: initial {}, quick scan {}, deep scan {}",
            show(initial),
            show(times[0]),
            show(times[1]),
        );
        crate::target(
            &format!("sync to a local target, {n} secrets: quick / deep scan"),
            format!("{} / {}", show(times[0]), show(times[1])),
            "measured (the cloud bound is in `--parts sync`)",
            format!("initial convergence {}", show(initial)),
            None,
        );
        server.stop().await;
    }
}

/// Writes `secret/bench/k{00000..n}` (1 KiB each), 32 at a time.
async fn load_source(server: &crate::Server, n: usize) {
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.channel().await);
    }
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut c = pb::secrets_client::SecretsClient::new(channels[t % 4].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let req = pb::PutRequest { path: format!("secret/bench/k{i:05}"), value: value_1k(i), cas: None };
                c.put(authed(TOKEN, req)).await.expect("load");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// Requests the emulators answered, by kind.
struct Counted {
    aws: BTreeMap<String, u64>,
    gcp: BTreeMap<String, u64>,
    azure: BTreeMap<String, u64>,
}

impl Counted {
    fn take(rec: &std::path::Path, sm: &SecretManager, kv: &KeyVault) -> Counted {
        let mut aws = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(rec) {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let target = v["headers"]["X-Amz-Target"].as_str().or(v["headers"]["x-amz-target"].as_str());
                let op = target.and_then(|t| t.rsplit('.').next()).unwrap_or("other").to_string();
                *aws.entry(op).or_insert(0) += 1;
            }
        }
        let conv = |m: BTreeMap<&'static str, u64>| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Counted { aws, gcp: conv(sm.requests_by_kind()), azure: conv(kv.requests_by_kind()) }
    }
}

/// A sync run that waits for the rule to settle; `None` when it did not
/// within its timeout (reported, and the run fails at the end).
async fn run_settled(
    sync: &mut pb::sync_client::SyncClient<tonic::transport::Channel>,
    quick: bool,
    what: &str,
) -> Option<()> {
    run_settled_within(sync, quick, what, SETTLE_SECS.load(std::sync::atomic::Ordering::Relaxed)).await
}

/// How long a scan may take to settle: 50 s, more for 100,000 secrets
/// (whose scans make thousands of calls to the emulators).
static SETTLE_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(50);

async fn run_settled_within(
    sync: &mut pb::sync_client::SyncClient<tonic::transport::Channel>,
    quick: bool,
    what: &str,
    timeout_secs: u64,
) -> Option<()> {
    // The first call asks for the scan; each call waits at most 50 s (the
    // server gives up before its request timeout), and the next resumes
    // the wait for the same scan.
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut resume = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).as_secs().clamp(1, 50);
        let req = pb::RunSyncRequest { rule: "bench".into(), wait: true, timeout_secs: left, quick, resume };
        let st = sync.run(authed(TOKEN, req)).await.expect("sync run").into_inner();
        resume = st.resume;
        if st.settled {
            return Some(());
        }
        if Instant::now() >= deadline {
            not_settled(what);
            return None;
        }
    }
}

/// Replicas in sync, from a status's counts.
fn in_sync(st: &pb::SyncStatusResponse) -> usize {
    st.counts.iter().filter(|c| c.state == "in_sync").map(|c| c.count as usize).sum()
}

/// A measurement that never finished is a failure of the run, not a time.
fn not_settled(what: &str) {
    eprintln!("keybridge-bench: {what}: the rule did not settle");
    crate::FAILED_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
