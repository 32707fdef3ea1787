//! `--parts cluster`: gateway nodes sharing one PostgreSQL table (issue 26
//! part 7). `Get` with a policy token and a file audit device on one node
//! over redb, then one, two and three nodes over PostgreSQL, the load spread
//! over the nodes, with each node's CPU per request; `Put` on PostgreSQL;
//! failover (the leader killed ten times: until another leads); and the
//! change feed's lag (a write on one node until another serves it).

use std::path::Path;
use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use tonic::transport::Channel;

use crate::{Args, Server, authed, spawn, target, value_1k};

/// The lease the failover measurement runs with.
const FAILOVER_LEASE: Duration = Duration::from_secs(2);
const CONCURRENCY: usize = 32;

struct Cluster {
    nodes: Vec<Server>,
    root: String,
    key: String,
    _dirs: Vec<tempfile::TempDir>,
}

fn config(args: &Args, dir: &Path, storage: &str, node: &str) -> std::path::PathBuf {
    let threads =
        if args.serving_threads > 0 { format!("serving_threads = {}\n", args.serving_threads) } else { String::new() };
    let cfg = format!(
        "listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_disable = true\n}}\n{storage}\nnode_id = \"{node}\"\n\
         disable_mlock = {}\n{threads}",
        args.no_mlock
    );
    let file = dir.join("keybridge.hcl");
    std::fs::write(&file, cfg).expect("config");
    file
}

fn pg_storage(url: &str, table: &str, lease: Duration) -> String {
    format!(
        "storage \"postgresql\" {{\n connection_url = \"{url}\"\n table = \"{table}\"\n max_connections = 16\n \
         leader_lease = \"{}ms\"\n}}",
        lease.as_millis()
    )
}

async fn status(s: &Server) -> Option<pb::SealStatusResponse> {
    let mut c = pb::sys_client::SysClient::new(s.channel().await);
    c.seal_status(pb::SealStatusRequest {}).await.ok().map(|r| r.into_inner())
}

async fn unseal(s: &Server, key: &str) {
    pb::sys_client::SysClient::new(s.channel().await)
        .unseal(pb::UnsealRequest { key: key.into(), reset: false, migrate: false })
        .await
        .expect("unseal");
}

/// `n` nodes on `storage` (a file store when `n` is 1 and it says so),
/// initialized through the first and unsealed.
async fn start(args: &Args, bin: &Path, storage: &dyn Fn(&Path) -> String, n: usize, tag: &str) -> Cluster {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config(args, dir.path(), &storage(dir.path()), &format!("{tag}-{i}"));
        nodes.push(spawn(bin, &["server", "--config", file.to_str().expect("utf-8")]).0);
        dirs.push(dir);
    }
    let mut sys = pb::sys_client::SysClient::new(nodes[0].channel().await);
    let init = sys.init(pb::InitRequest { key_shares: 1, key_threshold: 1 }).await.expect("init").into_inner();
    let key = init.unseal_keys_b64[0].clone();
    for s in &nodes {
        unseal(s, &key).await;
    }
    Cluster { nodes, root: init.root_token, key, _dirs: dirs }
}

/// Busy CPU time of a process so far (user and system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

/// `CONCURRENCY` callers spread over the nodes, for `seconds`: calls per
/// node.
async fn load(args: &Args, nodes: &[Server], token: &str, put: bool) -> Vec<u64> {
    let mut channels: Vec<Channel> = Vec::new();
    for s in nodes {
        for _ in 0..2 {
            channels.push(s.channel().await);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let node = i % nodes.len();
        let mut c = pb::secrets_client::SecretsClient::new(channels[node * 2 + i / nodes.len() % 2].clone());
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut k = i * 7919;
            while Instant::now() < deadline {
                k = (k + 104_729) % 10_000;
                let path = format!("secret/bench/k{k}");
                let ok = if put {
                    c.put(authed(&token, pb::PutRequest { path, value: value_1k(k), cas: None })).await.is_ok()
                } else {
                    c.get(authed(&token, pb::GetRequest { path, ..Default::default() })).await.is_ok()
                };
                if ok {
                    n += 1;
                } else {
                    crate::FAILED_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            (node, n)
        }));
    }
    let mut per_node = vec![0u64; nodes.len()];
    for t in tasks {
        let (node, n) = t.await.expect("load task");
        per_node[node] += n;
    }
    per_node
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) async fn run(args: &Args, bin: &Path) {
    // Its own PostgreSQL unless the run has one (`--storage postgresql`).
    let own = args.pg_url.is_none().then(keybridge_testservers::postgres::Postgres::start);
    let url = args.pg_url.clone().unwrap_or_else(|| own.as_ref().expect("postgres").url("127.0.0.1", "disable"));

    println!("\n== Several nodes on one PostgreSQL table (Get and Put spread over the nodes, c={CONCURRENCY}) ==\n");
    println!("Get and Put with a policy token (10 rules) and a file audit device on every node; CPU per");
    println!("request is each node's own (user + system), not PostgreSQL's.\n");
    println!("| setup | Get/s | Get CPU per request, each node | Put/s |");
    println!("|---|---|---|---|");
    let mut one_node_get = 0.0;
    for (label, n, pg) in [
        ("1 node, redb", 1, false),
        ("1 node, PostgreSQL", 1, true),
        ("2 nodes, PostgreSQL", 2, true),
        ("3 nodes, PostgreSQL", 3, true),
    ] {
        let table = format!("bench_cluster_{n}_{}", u8::from(pg));
        let storage = |dir: &Path| match pg {
            true => pg_storage(&url, &table, Duration::from_secs(15)),
            false => format!("storage \"file\" {{\n path = \"{}\"\n}}", dir.join("data").display()),
        };
        let c = start(args, bin, &storage, n, "bench").await;
        crate::load_bench_keys(&c.nodes[0], &c.root).await;
        let log = c._dirs[0].path().join("audit-{node}.log");
        pb::audit_client::AuditClient::new(c.nodes[0].channel().await)
            .enable(authed(
                &c.root,
                pb::EnableAuditRequest {
                    path: "file".into(),
                    r#type: "file".into(),
                    description: String::new(),
                    options: [("file_path".to_string(), log.display().to_string())].into(),
                },
            ))
            .await
            .expect("enable the audit device");
        let token = crate::policy_token(&c.nodes[0], &c.root, 10).await;
        // Every node knows the token, the policy and the device.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: Vec<Duration> = c.nodes.iter().map(|s| cpu(s.child.id())).collect();
        let gets = load(args, &c.nodes, &token, false).await;
        let used: Vec<Duration> =
            c.nodes.iter().zip(&before).map(|(s, b)| cpu(s.child.id()).saturating_sub(*b)).collect();
        let puts = load(args, &c.nodes, &token, true).await;
        let total: u64 = gets.iter().sum();
        let per_sec = total as f64 / args.seconds as f64;
        let cost: Vec<String> = gets
            .iter()
            .zip(&used)
            .map(|(g, u)| format!("{:.0} µs", u.as_micros() as f64 / (*g).max(1) as f64))
            .collect();
        let put_per_sec = puts.iter().sum::<u64>() as f64 / args.seconds as f64;
        println!("| {label} | {per_sec:.0} | {} | {put_per_sec:.0} |", cost.join(", "));
        if n == 1 && !pg {
            one_node_get = per_sec;
        }
        if n == 3 {
            target(
                "Get with policy and audit, 3 nodes on PostgreSQL",
                format!("{per_sec:.0}/s"),
                "reported (2 cores shared by the nodes, PostgreSQL and the client)",
                format!("1 node on redb: {one_node_get:.0}/s"),
                None,
            );
        }
        for s in c.nodes {
            s.stop().await;
        }
    }

    // Failover: three nodes, the leader killed ten times.
    let table = "bench_failover".to_string();
    let storage = |_: &Path| pg_storage(&url, &table, FAILOVER_LEASE);
    let mut c = start(args, bin, &storage, 3, "fo").await;
    let mut took = Vec::new();
    for next in 3..13 {
        let mut leader = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while leader.is_none() && Instant::now() < deadline {
            for (i, s) in c.nodes.iter().enumerate() {
                if status(s).await.is_some_and(|st| st.leader) {
                    leader = Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let leader = leader.expect("no leader");
        let mut dead = c.nodes.remove(leader);
        dead.kill();
        let killed = Instant::now();
        'wait: loop {
            for s in &c.nodes {
                if status(s).await.is_some_and(|st| st.leader) {
                    break 'wait;
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no node took over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(killed.elapsed());
        // A replacement, so that three nodes run again.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = config(args, dir.path(), &storage(dir.path()), &format!("fo-{next}"));
        let s = spawn(bin, &["server", "--config", file.to_str().expect("utf-8")]).0;
        unseal(&s, &c.key).await;
        c.nodes.push(s);
        c._dirs.push(dir);
    }
    took.sort();
    let (p50, max) = (percentile(&took, 0.5), took[took.len() - 1]);
    println!("\n== Failover: the leader killed (SIGKILL) 10 times, 3 nodes, leader_lease 2 s ==\n");
    println!("| kills | p50 | max | target |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.2} s | {:.2} s | within the lease + 5 s (7 s) |",
        took.len(),
        p50.as_secs_f64(),
        max.as_secs_f64()
    );
    target(
        "failover after SIGKILL, max of 10 (lease 2 s)",
        format!("{:.2} s (p50 {:.2} s)", max.as_secs_f64(), p50.as_secs_f64()),
        "≤ lease + 5 s = 7 s",
        "–".into(),
        Some(max <= FAILOVER_LEASE + Duration::from_secs(5)),
    );

    // Feed lag: a write on one node until another serves it.
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let (mut ca, mut cb) = (
        pb::secrets_client::SecretsClient::new(a.channel().await),
        pb::secrets_client::SecretsClient::new(b.channel().await),
    );
    let root = c.root.clone();
    let mut lags = Vec::new();
    for i in 0..200usize {
        // At a random point of the follower's poll interval, not right
        // after its last poll (which the previous sample ended on).
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 60)).await;
        let path = "secret/bench/lag".to_string();
        let put = pb::PutRequest { path: path.clone(), value: value_1k(i), cas: None };
        ca.put(authed(&root, put)).await.expect("put");
        let written = Instant::now();
        let want = format!("user{i:06}");
        loop {
            let got = cb.get(authed(&root, pb::GetRequest { path: path.clone(), ..Default::default() })).await;
            let seen = got.ok().and_then(|r| r.into_inner().value).and_then(|v| match v.kind {
                Some(pb::secret_value::Kind::Fields(f)) => f.fields.get("username").cloned(),
                _ => None,
            });
            if seen.as_deref() == Some(want.as_str()) {
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(10), "node B never served the write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(written.elapsed());
    }
    lags.sort();
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    println!(
        "\n== Change feed lag: a Put acknowledged by one node until another serves it (feed_poll_interval 50 ms) ==\n"
    );
    println!("| writes | p50 | p99 | max | target (p99) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.1} ms | {:.1} ms | {:.1} ms | ≤ 200 ms (four poll intervals) |",
        lags.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lags[lags.len() - 1].as_secs_f64() * 1e3
    );
    target(
        "change feed lag, p99 of 200 writes",
        format!("{:.1} ms (p50 {:.1} ms)", p99.as_secs_f64() * 1e3, p50.as_secs_f64() * 1e3),
        "≤ 200 ms",
        "–".into(),
        Some(p99 <= Duration::from_millis(200)),
    );
    for s in c.nodes {
        s.stop().await;
    }
}
