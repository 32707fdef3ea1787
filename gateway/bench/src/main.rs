//! `keybridge-bench`: measures a real `keybridge` server on loopback.
//!
//! It starts the server from a config file (embedded file store, TLS on or
//! off) in a temporary directory, initialises and unseals it over gRPC, and
//! prints:
//! - `Get` and `Put` throughput with p50/p99 latency at concurrency 1 and
//!   32, for 1 KiB values spread over 10,000 keys and for one hot key;
//! - the server's RSS before and after loading 100,000 secrets;
//! - cold start: process start to serving, for dev mode and for a sealed
//!   restart over a store holding those 100,000 secrets (plus unseal).
//!
//! - `--parts sync`: the reconciler replicating 10,000 secrets to three
//!   clouds (see `sync.rs`).
//! - `--parts cloud`: the per-call overhead of a `Get` through the gateway
//!   on an AWS mount against a direct SDK call (GetSecretValue) to the same
//!   moto server, and the cloud calls 1,000 reads of one hot secret cost
//!   with the mount's read cache on.
//!
//! - `--parts database`: database credentials issued and revoked per
//!   second on a local PostgreSQL (src/database.rs).
//! - `--parts pki`: certificates issued per second per key type, and the
//!   store's growth over `--pki-issues` issues with and without `no_store`
//!   (src/pki.rs).
//! - `--parts wasm`: the per-call overhead of a WASM engine against a
//!   native one, instantiation time, throughput (see `wasm.rs`).
//!
//! Client and server share the machine, as users' benchmarks would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cluster;
mod database;
mod h2client;
mod leases;
mod pki;
mod sync;
mod wasm;

use clap::Parser;
use keybridge_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The load generator (`--client`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Client {
    Tonic,
    H2,
}

#[derive(Parser)]
#[command(about = "Benchmark a keybridge server on loopback")]
pub(crate) struct Args {
    /// The keybridge binary (build it with --release first).
    #[arg(long, default_value = "target/release/keybridge")]
    server_bin: PathBuf,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Secrets loaded for the RSS measurement.
    #[arg(long, default_value_t = 100_000)]
    load: usize,
    /// Which parts to run.
    #[arg(long, value_delimiter = ',', default_value = "throughput,rss,coldstart")]
    parts: Vec<String>,
    /// storage cache_size_bytes for the server, in MiB (0: the default).
    #[arg(long, default_value_t = 0)]
    cache_mib: usize,
    /// Run the server with disable_mlock = true.
    #[arg(long)]
    no_mlock: bool,
    /// The store of servers started from a config file: file (redb), or
    /// postgresql (a throwaway PostgreSQL from the machine's binaries, a
    /// new table per server, over loopback TCP without TLS).
    #[arg(long, default_value = "file")]
    storage: String,
    /// Set by `main` when `--storage postgresql`: the cluster's URL.
    #[arg(skip)]
    pg_url: Option<String>,
    /// The server's serving_threads (0: its default, two per CPU).
    #[arg(long, default_value_t = 0)]
    serving_threads: usize,
    /// Certificates issued for `--parts pki`'s storage growth, per arm.
    #[arg(long, default_value_t = 100_000)]
    pki_issues: usize,
    /// Runs of each throughput measurement; the median run is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Threads of the client's tokio runtime (1: a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// The load generator: `tonic` (tonic's generated client on a
    /// `Channel`, as applications call the gateway) or `h2` (unary gRPC
    /// calls written straight onto `h2` connections, as h2load or ghz do;
    /// the server's capacity with less of the machine spent on the client).
    #[arg(long, value_enum, default_value_t = Client::Tonic)]
    client: Client,
    /// HTTP/2 connections the client spreads its requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run Get and Put with a non-root token whose policy holds this many
    /// rules (0: the root token, which skips the ACL).
    #[arg(long, default_value_t = 0)]
    policy_rules: usize,
    /// Operations to measure throughput of: get, put, health (the gRPC
    /// health check, as the transport's floor).
    #[arg(long, value_delimiter = ',', default_value = "get,put")]
    ops: Vec<String>,
    /// TLS modes to measure throughput in.
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    tls: Vec<String>,
    /// Secrets replicated by `--parts sync`: one run per number
    /// (`1000,10000,100000`).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    sync_secrets: Vec<usize>,
    /// `--parts sync`: with the clouds' published quotas enforced (on) or
    /// lifted (off), or both.
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    sync_quotas: Vec<String>,
    /// Where the wasm32-wasip2 plugins are, for `--parts wasm`.
    #[arg(long, default_value = "target/wasm32-wasip2/release")]
    plugins_dir: PathBuf,
    /// moto's server, for `--parts cloud` (tests/run-all.sh installs it).
    #[arg(long, default_value = "target/test-venv/bin/moto_server")]
    moto: PathBuf,
    /// Audit modes: off, file (a file audit device), file-fsync (with
    /// fsync=true: group commit with an fdatasync per group).
    #[arg(long, value_delimiter = ',', default_value = "off")]
    audit: Vec<String>,
    /// Leases in the store for `--parts leases`.
    #[arg(long, default_value_t = 1_000_000)]
    leases: usize,
    /// Of those, how many are already due when the server starts.
    #[arg(long, default_value_t = 10_000)]
    leases_due: usize,
}

pub(crate) struct Server {
    pub(crate) child: Child,
    addr: String,
    ca: Option<Vec<u8>>,
}

/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(10);

impl Drop for Server {
    /// SIGTERM first, so the store closes cleanly and the next start needs
    /// no recovery; SIGKILL after [`STOP_WAIT`]. Blocks the thread: prefer
    /// [`Server::stop`] on the client's runtime.
    fn drop(&mut self) {
        if self.ended() {
            return;
        }
        self.terminate();
        let deadline = Instant::now() + STOP_WAIT;
        while !self.ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Server {
    /// As dropping, but waits without blocking the runtime, so that the
    /// client's connection tasks (on a current-thread runtime, the same
    /// thread) can answer the server's GOAWAY and it stops at once.
    pub(crate) async fn stop(mut self) {
        self.terminate();
        let deadline = Instant::now() + STOP_WAIT;
        while !self.ended() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
    }

    fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// SIGKILL unless it has ended; reaps it.
    pub(crate) fn kill(&mut self) {
        if !self.ended() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub(crate) async fn channel(&self) -> Channel {
        let mut ep = Endpoint::from_shared(self.addr.clone()).expect("address").tcp_nodelay(true);
        if let Some(ca) = &self.ca {
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost"))
                .expect("tls");
        }
        ep.connect().await.expect("connect")
    }
}

/// Spawns the server and returns once it prints its address, with the time
/// that took. The child belongs to the returned `Server` at once.
pub(crate) fn spawn(bin: &Path, args: &[&str]) -> (Server, Duration) {
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .env("KEYBRIDGE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (build it with cargo build --release)", bin.display()));
    let mut server = Server { child, addr: String::new(), ca: None };
    let mut reader = BufReader::new(server.child.stdout.take().expect("stdout"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read") == 0 {
            panic!("the server exited before listening");
        }
        if let Some(rest) = line.split("Listening on ").nth(1) {
            server.addr = rest.split_whitespace().next().expect("addr").to_string();
            std::thread::spawn(move || for _ in reader.lines() {});
            return (server, start.elapsed());
        }
    }
}

fn tls_files(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k, cert.pem().into_bytes())
}

pub(crate) fn start_config_server(bin: &Path, dir: &Path, tls: bool, args: &Args) -> (Server, Duration) {
    let (listener, ca) = if tls {
        let (c, k, ca) = tls_files(dir);
        (
            format!(
                "listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_cert_file = \"{}\"\n tls_key_file = \"{}\"\n}}",
                c.display(),
                k.display()
            ),
            Some(ca),
        )
    } else {
        ("listener \"tcp\" {\n address = \"127.0.0.1:0\"\n tls_disable = true\n}".to_string(), None)
    };
    let cache =
        if args.cache_mib > 0 { format!("\n cache_size_bytes = {}", args.cache_mib << 20) } else { String::new() };
    let threads =
        if args.serving_threads > 0 { format!("serving_threads = {}\n", args.serving_threads) } else { String::new() };
    let storage = match &args.pg_url {
        // A new table for each server: each starts uninitialized.
        Some(url) => {
            static TABLES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("storage \"postgresql\" {{\n connection_url = \"{url}\"\n table = \"bench_{n}\"{cache}\n}}")
        }
        None => format!("storage \"file\" {{\n path = \"{}\"{cache}\n}}", dir.join("data").display()),
    };
    let cfg = format!("{listener}\n{storage}\ndisable_mlock = {}\n{threads}", args.no_mlock);
    let file = dir.join("keybridge.hcl");
    std::fs::write(&file, cfg).expect("config");
    let (mut server, took) = spawn(bin, &["server", "--config", file.to_str().expect("utf-8 path")]);
    server.ca = ca;
    (server, took)
}

pub(crate) fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    r
}

pub(crate) fn value_1k(i: usize) -> Option<pb::SecretValue> {
    let pad: String = std::iter::repeat_n('x', 1000).collect();
    Some(pb::SecretValue {
        kind: Some(pb::secret_value::Kind::Fields(pb::Fields {
            fields: [("username".to_string(), format!("user{i:06}")), ("password".to_string(), pad)].into(),
        })),
    })
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Get,
    Put,
    /// The gRPC health check: no token, no storage; the transport's floor.
    Health,
    /// `Logical/Read` of `wasm/ok` (the hostile test plugin's trivial path).
    WasmOk,
    /// `Logical/Write` of `keys/issue/bench` (the apikeys example issuing a
    /// token: a storage write and a lease).
    Issue,
}

pub(crate) struct Stats {
    /// Throughput of the slowest and fastest of the repeated runs.
    range: (f64, f64),
    ops: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    errors: usize,
    /// CPU time per operation, in µs, of the server and of this client.
    cpu_us: Option<(f64, f64)>,
}

/// CPU time (ns) a process's threads have used: the sum of the first field
/// of `/proc/PID/task/*/schedstat`. Threads that ended are not counted, so
/// take it while the threads of interest are alive.
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// One benchmark task's way to the server: tonic's generated clients on a
/// `Channel`, or the lean `h2client` on an `h2` connection.
// One value per task, never moved in a hot loop: the size difference
// between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Caller {
    Tonic {
        secrets: pb::secrets_client::SecretsClient<Channel>,
        logical: pb::logical_client::LogicalClient<Channel>,
        health: HealthClient,
        token: Arc<str>,
    },
    Lean {
        send: h2::client::SendRequest<bytes::Bytes>,
        base: Arc<str>,
        bearer: http::HeaderValue,
    },
}

impl Caller {
    /// One `op` on key `bench/k{k}`; whether it succeeded.
    async fn call(&mut self, op: Op, k: usize) -> bool {
        let path = format!("secret/bench/k{k}");
        match self {
            Caller::Tonic { secrets, logical, health, token } => match op {
                Op::Get => {
                    secrets.get(authed(token, pb::GetRequest { path, version: 0, ..Default::default() })).await.is_ok()
                }
                Op::Put => {
                    secrets.put(authed(token, pb::PutRequest { path, value: value_1k(k), cas: None })).await.is_ok()
                }
                Op::Health => health.check(pb_health()).await.is_ok(),
                Op::WasmOk => logical
                    .read(authed(token, pb::LogicalRequest { path: "wasm/ok".into(), data: Default::default() }))
                    .await
                    .is_ok_and(|r| r.get_ref().data.get("answer").map(String::as_str) == Some("42")),
                Op::Issue => {
                    logical.write(authed(token, issue_request())).await.is_ok_and(|r| r.get_ref().lease.is_some())
                }
            },
            Caller::Lean { send, base, bearer } => match op {
                Op::Get => {
                    let req = pb::GetRequest { path, version: 0, ..Default::default() };
                    let method = "/keybridge.v1.Secrets/Get";
                    h2client::unary::<_, pb::GetResponse>(send, base, method, Some(bearer), &req)
                        .await
                        .is_ok_and(|r| r.value.is_some())
                }
                Op::Put => {
                    let req = pb::PutRequest { path, value: value_1k(k), cas: None };
                    let method = "/keybridge.v1.Secrets/Put";
                    h2client::unary::<_, pb::PutResponse>(send, base, method, Some(bearer), &req).await.is_ok()
                }
                Op::Health => {
                    let method = "/grpc.health.v1.Health/Check";
                    h2client::unary::<_, tonic_health::pb::HealthCheckResponse>(send, base, method, None, &pb_health())
                        .await
                        .is_ok()
                }
                Op::WasmOk => {
                    let req = pb::LogicalRequest { path: "wasm/ok".into(), data: Default::default() };
                    let method = "/keybridge.v1.Logical/Read";
                    h2client::unary::<_, pb::LogicalResponse>(send, base, method, Some(bearer), &req)
                        .await
                        .is_ok_and(|r| r.data.get("answer").map(String::as_str) == Some("42"))
                }
                Op::Issue => {
                    let method = "/keybridge.v1.Logical/Write";
                    h2client::unary::<_, pb::LogicalResponse>(send, base, method, Some(bearer), &issue_request())
                        .await
                        .is_ok_and(|r| r.lease.is_some())
                }
            },
        }
    }
}

/// Runs `op` from `concurrency` tasks for `--seconds` over up to
/// `--connections` connections with the `--client` load generator; keys
/// are `bench/k{0..keys}` (keys = 1: one hot key).
pub(crate) async fn run(args: &Args, server: &Server, token: &str, op: Op, concurrency: usize, keys: usize) -> Stats {
    let (secs, conns) = (args.seconds, concurrency.clamp(1, args.connections));
    let server_pid = server.child.id().to_string();
    let (server_cpu, client_cpu) = (cpu_ns(&server_pid), cpu_ns("self"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let token: Arc<str> = token.into();
    let mut callers = Vec::new();
    for _ in 0..conns {
        callers.push(if args.client == Client::H2 {
            Caller::Lean {
                send: h2client::connect(server).await,
                base: server.addr.as_str().into(),
                bearer: format!("Bearer {token}").parse().expect("ascii token"),
            }
        } else {
            let channel = server.channel().await;
            Caller::Tonic {
                secrets: pb::secrets_client::SecretsClient::new(channel.clone()),
                logical: pb::logical_client::LogicalClient::new(channel.clone()),
                health: HealthClient::new(channel),
                token: token.clone(),
            }
        });
    }
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut caller = callers[t % conns].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(200_000);
            let mut errors = 0;
            let mut i = t * 7919;
            while Instant::now() < deadline {
                i = i.wrapping_add(104_729);
                let k = i % keys;
                let start = Instant::now();
                // A failed call counts apart: never in ops/s or latency.
                if caller.call(op, k).await {
                    lat.push(start.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs as f64);
    let per_op = |ns: u64| ns as f64 / 1e3 / all.len().max(1) as f64;
    let cpu_us = Some((
        per_op(cpu_ns(&server_pid).saturating_sub(server_cpu)),
        per_op(cpu_ns("self").saturating_sub(client_cpu)),
    ));
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64 / 1e6
    };
    let per_sec = all.len() as f64 / elapsed;
    Stats {
        range: (per_sec, per_sec),
        ops: all.len(),
        per_sec,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        mean_ms: mean_ms(&all),
        errors,
        cpu_us,
    }
}

/// The mean of latencies in ns, in ms.
fn mean_ms(lat: &[u64]) -> f64 {
    lat.iter().map(|&n| n as f64).sum::<f64>() / lat.len().max(1) as f64 / 1e6
}

/// The apikeys example's issue call: a token of role `bench`.
fn issue_request() -> pb::LogicalRequest {
    pb::LogicalRequest { path: "keys/issue/bench".into(), data: Default::default() }
}

pub(crate) async fn init_unseal(server: &Server) -> String {
    let mut sys = pb::sys_client::SysClient::new(server.channel().await);
    let init = sys.init(pb::InitRequest { key_shares: 1, key_threshold: 1 }).await.expect("init").into_inner();
    sys.unseal(pb::UnsealRequest { key: init.unseal_keys_b64[0].clone(), reset: false, migrate: false })
        .await
        .expect("unseal");
    std::fs::write(std::env::temp_dir().join("kb-bench-unseal"), &init.unseal_keys_b64[0]).ok();
    init.root_token
}

/// A config server on its file store in `dir`, initialized and unsealed,
/// with a built-in engine of `kind` mounted at `mount`: the server, its
/// root token and a channel to it.
pub(crate) async fn engine_server(
    bin: &Path,
    dir: &Path,
    args: &Args,
    mount: &str,
    kind: &str,
) -> (Server, String, tonic::transport::Channel) {
    let (server, _) = start_config_server(bin, dir, false, args);
    let root = init_unseal(&server).await;
    let ch = server.channel().await;
    pb::sys_client::SysClient::new(ch.clone())
        .enable_mount(authed(
            &root,
            pb::EnableMountRequest { path: mount.into(), r#type: kind.into(), ..Default::default() },
        ))
        .await
        .unwrap_or_else(|e| panic!("mount {mount}: {e}"));
    (server, root, ch)
}

/// A `Logical.Write` that must succeed.
pub(crate) async fn logical_write(ch: &tonic::transport::Channel, token: &str, path: &str, data: &[(&str, String)]) {
    let req =
        pb::LogicalRequest { path: path.into(), data: data.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() };
    pb::logical_client::LogicalClient::new(ch.clone())
        .write(authed(token, req))
        .await
        .unwrap_or_else(|e| panic!("write {path}: {e}"));
}

async fn load(server: &Server, token: &str, from: usize, to: usize) {
    let conns = 4;
    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(server.channel().await);
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let token: Arc<str> = token.into();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut client = pb::secrets_client::SecretsClient::new(channels[t % conns].clone());
        let next = next.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let req =
                    pb::PutRequest { path: format!("secret/load/{:02}/k{i}", i % 64), value: value_1k(i), cas: None };
                client.put(authed(&token, req)).await.expect("load put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

/// Failed calls seen by any measurement; the run fails at the end if any.
pub(crate) static FAILED_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn print_stats(label: &str, s: &Stats) {
    FAILED_CALLS.fetch_add(s.errors, std::sync::atomic::Ordering::Relaxed);
    println!(
        "{label:<34} {:>7.0} ops/s [{:.0}..{:.0}]  mean {:>6.3} ms  p50 {:>6.3} ms  p99 {:>6.3} ms  ({} ops, {} errors)",
        s.per_sec, s.range.0, s.range.1, s.mean_ms, s.p50_ms, s.p99_ms, s.ops, s.errors
    );
    if let Some((server, client)) = s.cpu_us {
        println!("{:<34} CPU per op: server {server:.1} µs, client {client:.1} µs", "");
    }
}

/// `--parts audit`: audited `Get` against unaudited `Get` on one server,
/// the same token (a policy of `--policy-rules`, at least 20 rules), client
/// and concurrency (32, 10,000 keys), runs alternating (`--repeat`, at
/// least 3 of each): the file device (no fsync) is enabled for each
/// audited run, on a fresh file, and disabled after it.
async fn audit_ratio(args: &Args, bin: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_config_server(bin, dir.path(), false, args);
    let root = init_unseal(&server).await;
    load_bench_keys(&server, &root).await;
    let rules = args.policy_rules.max(20);
    let token = policy_token(&server, &root, rules).await;
    let mut audit = pb::audit_client::AuditClient::new(server.channel().await);
    println!(
        "\n== Audited Get against unaudited Get: c=32, 10k keys, a {rules}-rule policy token, runs alternating =="
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..args.repeat.max(3) {
        let s = run(args, &server, &token, Op::Get, 32, 10_000).await;
        print_stats(&format!("Get c=32, audit off (run {})", round + 1), &s);
        off.push(s.per_sec);
        let log = dir.path().join(format!("audit-{round}.log"));
        let mut options = std::collections::HashMap::new();
        options.insert("file_path".to_string(), log.display().to_string());
        let enable =
            pb::EnableAuditRequest { path: "file".into(), r#type: "file".into(), description: String::new(), options };
        audit.enable(authed(&root, enable)).await.expect("enable the audit device");
        let s = run(args, &server, &token, Op::Get, 32, 10_000).await;
        print_stats(&format!("Get c=32, file audit (run {})", round + 1), &s);
        on.push(s.per_sec);
        audit
            .disable(authed(&root, pb::DisableAuditRequest { path: "file".into() }))
            .await
            .expect("disable the audit device");
        // The run's lines are written back to the disk now, outside the
        // timed runs: left to the kernel, they would be written back 30 s
        // later (vm.dirty_expire_centisecs), during whichever run of either
        // arm comes then.
        let t = Instant::now();
        let size = std::fs::metadata(&log).map_or(0, |m| m.len());
        if let Ok(f) = std::fs::File::open(&log) {
            let _ = f.sync_all();
        }
        let _ = std::fs::remove_file(&log);
        println!("{:<34} audit file {} MiB, written back in {:.2} s", "", size >> 20, t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    let ratio = on / off;
    println!("median: audit off {off:.0}/s, file audit {on:.0}/s: {:.1}%", ratio * 100.0);
    target(
        "audited Get, c=32, file device (median of alternating runs)",
        format!("{on:.0}/s"),
        "≥ 75% of unaudited",
        format!("{:.1}% of unaudited ({off:.0}/s)", ratio * 100.0),
        Some(ratio >= 0.75),
    );
    server.stop().await;
}

/// One line of the closing table: a figure beside its target and its ratio
/// to the reference measured in the same run.
struct Target {
    figure: String,
    value: String,
    target: String,
    reference: String,
    met: Option<bool>,
}

static TARGETS: std::sync::Mutex<Vec<Target>> = std::sync::Mutex::new(Vec::new());

/// Records a figure for the closing table (`met`: `None` when the figure
/// has no target of its own, only a reference).
pub(crate) fn target(figure: &str, value: String, target: &str, reference: String, met: Option<bool>) {
    let t = Target { figure: figure.into(), value, target: target.into(), reference, met };
    TARGETS.lock().unwrap_or_else(|p| p.into_inner()).push(t);
}

fn print_targets() {
    let rows = TARGETS.lock().unwrap_or_else(|p| p.into_inner());
    if rows.is_empty() {
        return;
    }
    println!("\n== Figures beside their targets ==\n");
    println!("| figure | measured | target | against the reference, same run | met |");
    println!("|---|---|---|---|---|");
    for t in rows.iter() {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        println!("| {} | {} | {} | {} | {met} |", t.figure, t.value, t.target, t.reference);
    }
}

/// Repeats a measurement and returns the run with the median throughput,
/// with the range over all runs.
pub(crate) async fn median_of(args: &Args, server: &Server, token: &str, op: Op, c: usize, keys: usize) -> Stats {
    let mut runs = Vec::new();
    for _ in 0..args.repeat.max(1) {
        runs.push(run(args, server, token, op, c, keys).await);
    }
    median(runs)
}

/// The median run by throughput, with the range of all of them.
pub(crate) fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let range = (runs[0].per_sec, runs[runs.len() - 1].per_sec);
    let mut median = runs.swap_remove(runs.len() / 2);
    median.range = range;
    median
}

fn main() {
    let mut args = Args::parse();
    // Stopped and removed when dropped, at the end of main.
    let _pg = match args.storage.as_str() {
        "file" => None,
        "postgresql" => {
            let pg = keybridge_testservers::postgres::Postgres::start();
            args.pg_url = Some(pg.url("127.0.0.1", "disable"));
            Some(pg)
        }
        other => {
            eprintln!("keybridge-bench: --storage {other}: use file or postgresql");
            std::process::exit(2);
        }
    };
    let runtime = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads).enable_all().build()
    };
    runtime.expect("tokio runtime").block_on(bench(args));
    print_targets();
    let failed = FAILED_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        eprintln!(
            "keybridge-bench: {failed} call(s) failed; the figures above count only the calls that succeeded and are not valid"
        );
        std::process::exit(1);
    }
}

async fn bench(args: Args) {
    let bin = args.server_bin.clone();
    println!("keybridge-bench: server {}, {} s per measurement, {} cores", bin.display(), args.seconds, num_cpus());
    let wants = |p: &str| args.parts.iter().any(|x| x == p);

    if wants("throughput") {
        for tls in &args.tls {
            for audit in &args.audit {
                let tls_on = tls == "on";
                let dir = tempfile::tempdir().expect("tempdir");
                let (server, _) = start_config_server(&bin, dir.path(), tls_on, &args);
                let root = init_unseal(&server).await;
                load_bench_keys(&server, &root).await;
                let log = dir.path().join("audit.log");
                if audit != "off" {
                    let mut options = std::collections::HashMap::new();
                    options.insert("file_path".to_string(), log.display().to_string());
                    options.insert("fsync".to_string(), (audit == "file-fsync").to_string());
                    pb::audit_client::AuditClient::new(server.channel().await)
                        .enable(authed(
                            &root,
                            pb::EnableAuditRequest {
                                path: "file".into(),
                                r#type: "file".into(),
                                description: String::new(),
                                options,
                            },
                        ))
                        .await
                        .expect("enable the audit device");
                }
                let (token, who) = if args.policy_rules > 0 {
                    (
                        policy_token(&server, &root, args.policy_rules).await,
                        format!("token with {} policy rules", args.policy_rules),
                    )
                } else {
                    (root.clone(), "root token".to_string())
                };
                let store = match &args.pg_url {
                    Some(_) => "PostgreSQL store (the test cluster: fsync off)",
                    None => "file store, fsync on every commit",
                };
                println!("\n== TLS {tls}, audit {audit} ({store}, {who}) ==");
                for (op, name, label) in [(Op::Get, "get", "Get "), (Op::Put, "put", "Put ")] {
                    if !args.ops.iter().any(|o| o == name) {
                        continue;
                    }
                    for (keys, what) in [(10_000, "10k keys"), (1, "hot key")] {
                        for c in [1, 32] {
                            let s = median_of(&args, &server, &token, op, c, keys).await;
                            print_stats(&format!("{label} c={c:<2} 1 KiB, {what}"), &s);
                        }
                    }
                }
                if args.ops.iter().any(|o| o == "health") {
                    for c in [1, 32] {
                        let s = median_of(&args, &server, &token, Op::Health, c, 1).await;
                        print_stats(&format!("Health c={c:<2} (transport floor)"), &s);
                    }
                }
                if audit != "off" {
                    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                    println!("audit log: {} MiB", size >> 20);
                }
                server.stop().await;
            }
        }
    }

    if wants("cloud") {
        cloud(&args, &bin).await;
    }
    if wants("sync") {
        sync::run(&args, &bin).await;
    }
    if wants("sync-local") {
        sync::local(&args, &bin).await;
    }
    if wants("wasm") {
        wasm::run(&args, &bin).await;
    }
    if wants("audit") {
        audit_ratio(&args, &bin).await;
    }
    if wants("leases") {
        leases::run(&args, &bin).await;
    }
    if wants("cluster") {
        cluster::run(&args, &bin).await;
    }
    if wants("database") {
        database::run(&args, &bin).await;
    }
    if wants("pki") {
        pki::run(&args, &bin).await;
    }

    let rss_dir = tempfile::tempdir().expect("tempdir");
    if wants("rss") || wants("coldstart") {
        let (server, _) = start_config_server(&bin, rss_dir.path(), false, &args);
        let token = init_unseal(&server).await;
        let before = server.rss_kib();
        let steps = [args.load / 4, args.load / 2, args.load];
        let mut done = 0;
        let started = Instant::now();
        println!("\n== RSS while loading {} secrets of 1 KiB ==", args.load);
        println!("{:<44} {:>7} KiB", "after init (0 secrets)", before);
        for n in steps {
            load(&server, &token, done, n).await;
            done = n;
            println!("{:<44} {:>7} KiB", format!("after {n} secrets"), server.rss_kib());
        }
        println!(
            "load rate: {:.0} puts/s; store file: {} MiB",
            args.load as f64 / started.elapsed().as_secs_f64(),
            std::fs::metadata(rss_dir.path().join("data/keybridge.db")).map(|m| m.len() >> 20).unwrap_or(0)
        );
        // Reads over the whole loaded set.
        let mut c = pb::secrets_client::SecretsClient::new(server.channel().await);
        for i in (0..args.load).step_by(7) {
            let path = format!("secret/load/{:02}/k{i}", i % 64);
            c.get(authed(&token, pb::GetRequest { path, version: 0, ..Default::default() })).await.expect("get");
        }
        println!("{:<44} {:>7} KiB", "after reading 1 in 7 of them (cache full)", server.rss_kib());
        drop(c);
        server.stop().await;
    }

    if wants("coldstart") {
        println!("\n== Cold start ==");
        // Time from exec to a served request (spawn → health SERVING).
        let mut serving = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let (server, _) = spawn(&bin, &["server", "--dev", "--dev-listen-address", "127.0.0.1:0"]);
            let mut h = tonic_health_client(&server).await;
            let ok = h.check(pb_health()).await.is_ok();
            serving.push(t0.elapsed());
            assert!(ok);
            drop(h);
            server.stop().await;
        }
        serving.sort();
        println!(
            "{:<44} {:>9.1} ms (median of 5)",
            "dev mode: exec to first served request",
            serving[2].as_secs_f64() * 1e3
        );

        // Restart over the loaded store: sealed start, then unseal.
        let cfg = rss_dir.path().join("keybridge.hcl");
        let key = std::fs::read_to_string(std::env::temp_dir().join("kb-bench-unseal")).unwrap_or_default();
        let t0 = Instant::now();
        let (server, listening) = spawn(&bin, &["server", "--config", cfg.to_str().expect("utf-8")]);
        let mut sys = pb::sys_client::SysClient::new(server.channel().await);
        sys.unseal(pb::UnsealRequest { key, reset: false, migrate: false }).await.expect("unseal");
        let unsealed = t0.elapsed();
        println!(
            "{:<44} {:>9.1} ms to listening (sealed), {:.1} ms to unsealed",
            format!("file store with {} secrets: restart", args.load),
            listening.as_secs_f64() * 1e3,
            unsealed.as_secs_f64() * 1e3
        );
        println!("{:<44} {:>7} KiB", "RSS after restart and unseal", server.rss_kib());
        drop(sys);
        server.stop().await;
    }
}

/// A token whose one policy holds `rules` rules: the one that grants the
/// benchmark's paths, and others of every kind (exact, glob, `+`) that do
/// not match them, as a real policy would.
pub(crate) async fn policy_token(server: &Server, root: &str, rules: usize) -> String {
    let mut text =
        String::from("path \"secret/data/bench/*\" {\n  capabilities = [\"create\", \"read\", \"update\"]\n}\n");
    for i in 1..rules {
        let path = match i % 3 {
            0 => format!("secret/data/team-{i}/*"),
            1 => format!("secret/data/+/service-{i}"),
            _ => format!("kv-{i}/data/app/config"),
        };
        text.push_str(&format!("path \"{path}\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n"));
    }
    let channel = server.channel().await;
    pb::policies_client::PoliciesClient::new(channel.clone())
        .put(authed(root, pb::PutPolicyRequest { name: "bench".into(), policy: text }))
        .await
        .expect("policy");
    let created = pb::tokens_client::TokensClient::new(channel)
        .create(authed(
            root,
            pb::CreateTokenRequest { policies: vec!["bench".into()], ttl_seconds: 3600, ..Default::default() },
        ))
        .await
        .expect("token")
        .into_inner();
    created.token
}

pub(crate) async fn load_bench_keys(server: &Server, token: &str) {
    let mut c = pb::secrets_client::SecretsClient::new(server.channel().await);
    // 10,000 keys for the spread runs (written concurrently by `run`'s Put
    // would skew Get); write them once here, 32 at a time.
    let mut pending = Vec::new();
    for k in 0..10_000usize {
        let mut c2 = c.clone();
        let token = token.to_string();
        pending.push(tokio::spawn(async move {
            c2.put(authed(
                &token,
                pb::PutRequest { path: format!("secret/bench/k{k}"), value: value_1k(k), cas: None },
            ))
            .await
            .expect("seed put");
        }));
        if pending.len() == 32 {
            for p in pending.drain(..) {
                p.await.expect("seed");
            }
        }
    }
    for p in pending {
        p.await.expect("seed");
    }
    c.get(authed(token, pb::GetRequest { path: "secret/bench/k0".into(), version: 0, ..Default::default() }))
        .await
        .expect("seeded");
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

async fn tonic_health_client(server: &Server) -> HealthClient {
    HealthClient::new(server.channel().await)
}

fn pb_health() -> HealthCheckRequest {
    HealthCheckRequest { service: String::new() }
}

use tonic_health::pb::HealthCheckRequest;
type HealthClient = tonic_health::pb::health_client::HealthClient<Channel>;

/// A moto server on a free port, killed on drop.
pub(crate) struct Moto(Child, pub(crate) u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_moto(bin: &Path) -> Moto {
    start_moto_env(bin, &[])
}

/// moto with environment variables (e.g. its request recorder).
pub(crate) fn start_moto_env(bin: &Path, env: &[(&str, &str)]) -> Moto {
    start_moto_command(Command::new(bin), bin, env)
}

/// moto with its Secrets Manager lookups and list pages indexed (gateway/bench/moto_indexed.py,
/// run by the Python beside `bin`): what a client sees is unchanged, but a call no longer
/// costs moto a pass over every secret, which at 100,000 secrets was the whole scan's time.
pub(crate) fn start_moto_indexed(bin: &Path, env: &[(&str, &str)]) -> Moto {
    let script = std::env::temp_dir().join(format!("kb-bench-moto-indexed-{}.py", std::process::id()));
    std::fs::write(&script, include_str!("../moto_indexed.py")).expect("write moto_indexed.py");
    let python = bin.with_file_name("python");
    let mut command = Command::new(&python);
    command.arg(&script);
    start_moto_command(command, &python, env)
}

fn start_moto_command(mut command: Command, bin: &Path, env: &[(&str, &str)]) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let child = command
        .envs(env.iter().copied())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (run ./tests/run-all.sh once to install it)", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto(child, port)
}

/// Latencies of `calls` sequential-per-task calls from `concurrency` tasks.
pub(crate) async fn timed<F, Fut>(concurrency: usize, secs: u64, call: F) -> Stats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if call().await {
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("task");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    let per_sec = all.len() as f64 / secs as f64;
    Stats {
        range: (per_sec, per_sec),
        ops: all.len(),
        per_sec,
        p50_ms: pct(0.50) as f64 / 1e6,
        p99_ms: pct(0.99) as f64 / 1e6,
        mean_ms: mean_ms(&all),
        errors,
        cpu_us: None,
    }
}

async fn cloud(args: &Args, bin: &Path) {
    let moto = start_moto(&args.moto);
    let url = format!("http://127.0.0.1:{}", moto.1);
    let token = "root-bench";
    let (server, _) =
        spawn(bin, &["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", token]);
    let mut sys = pb::sys_client::SysClient::new(server.channel().await);
    let settings = |cache: bool| {
        let mut m = std::collections::HashMap::from([
            ("region".to_string(), "us-east-1".to_string()),
            ("endpoint_url".to_string(), url.clone()),
            ("access_key_id".to_string(), "testing".to_string()),
            ("secret_access_key".to_string(), "testing".to_string()),
        ]);
        if cache {
            m.insert("cache_ttl".into(), "10m".into());
        }
        m
    };
    for (path, cache) in [("aws/", false), ("aws-cached/", true)] {
        let req = pb::EnableMountRequest {
            path: path.into(),
            r#type: "aws".into(),
            description: String::new(),
            config: settings(cache),
        };
        sys.enable_mount(authed(token, req)).await.expect("enable the aws mount");
    }
    let mut c = pb::secrets_client::SecretsClient::new(server.channel().await);
    c.put(authed(token, pb::PutRequest { path: "aws/bench/hot".into(), value: value_1k(1), cas: None }))
        .await
        .expect("put");

    let s: std::collections::BTreeMap<String, String> = settings(false).into_iter().collect();
    let store =
        keybridge_provider_aws::AwsStore::new(&keybridge_provider_aws::Settings::parse(&s).expect("settings")).await;
    let sdk = store.client().clone();
    let secs = args.seconds;
    println!("\n== AWS mount (moto {url}): Get of one 1 KiB secret, {secs} s each ==");
    for conc in [1, 8] {
        let direct = {
            let sdk = sdk.clone();
            timed(conc, secs, move || {
                let sdk = sdk.clone();
                async move {
                    sdk.get_secret_value().secret_id("bench/hot").version_stage("AWSCURRENT").send().await.is_ok()
                }
            })
            .await
        };
        print_stats(&format!("direct SDK GetSecretValue c={conc}"), &direct);
        let channel = server.channel().await;
        let gateway = timed(conc, secs, move || {
            let mut c = pb::secrets_client::SecretsClient::new(channel.clone());
            async move {
                let req = pb::GetRequest { path: "aws/bench/hot".into(), ..Default::default() };
                c.get(authed(token, req)).await.is_ok()
            }
        })
        .await;
        print_stats(&format!("gateway Get (no cache) c={conc}"), &gateway);
        println!(
            "{:<34} p50 {:+.3} ms, p99 {:+.3} ms per call",
            format!("gateway overhead c={conc}"),
            gateway.p50_ms - direct.p50_ms,
            gateway.p99_ms - direct.p99_ms
        );
    }

    let calls = |mounts: &pb::ListMountsResponse| {
        let m = mounts.mounts.iter().find(|m| m.path == "aws-cached/").expect("mount");
        m.stats.expect("stats")
    };
    let before = calls(&sys.list_mounts(authed(token, pb::ListMountsRequest {})).await.expect("list").into_inner());
    let t = Instant::now();
    for _ in 0..1000 {
        let req = pb::GetRequest { path: "aws-cached/bench/hot".into(), ..Default::default() };
        c.get(authed(token, req)).await.expect("get");
    }
    let took = t.elapsed();
    let after = calls(&sys.list_mounts(authed(token, pb::ListMountsRequest {})).await.expect("list").into_inner());
    println!(
        "cache on: 1,000 Gets of one hot secret: {} upstream call(s), {} hits, {} misses, {:.3} ms per Get",
        after.upstream_calls - before.upstream_calls,
        after.cache_hits - before.cache_hits,
        after.cache_misses - before.cache_misses,
        took.as_secs_f64() * 1e3 / 1000.0
    );
    server.stop().await;
}
