//! Init, seal, unseal, restart, TLS, key management, snapshots, crashes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybridge_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{Server, authed, field, fields, stderr, stdout};

async fn health(s: &Server) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(s.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status
}

async fn unseal_all(s: &Server, keys: &[String]) -> pb::SealStatusResponse {
    let mut sys = s.sys().await;
    let mut last = None;
    for k in keys {
        last = Some(
            sys.unseal(pb::UnsealRequest { key: k.clone(), reset: false, migrate: false }).await.unwrap().into_inner(),
        );
    }
    last.unwrap()
}

/// Initialises `s` with one key share and unseals it.
async fn init_unsealed(s: &Server) -> pb::InitResponse {
    let init = s.sys().await.init(pb::InitRequest { key_shares: 1, key_threshold: 1 }).await.unwrap().into_inner();
    unseal_all(s, &init.unseal_keys_b64).await;
    init
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn init_unseal_restart_over_tls_with_file_storage() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), true, 0);
    assert!(s.addr.starts_with("https://"), "{}", s.addr);

    // Uninitialised: sealed, health NOT_SERVING, data calls UNAVAILABLE.
    let o = s.cli(None, &["operator", "status", "-o", "json"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["initialized"], false);
    assert_eq!(health(&s).await, ServingStatus::NotServing as i32);
    let err = s
        .secrets()
        .await
        .get(authed("x", pb::GetRequest { path: "secret/a".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::Unavailable, "sealed"));
    let err = s.sys().await.list_mounts(authed("x", pb::ListMountsRequest {})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // Bad init parameters change nothing.
    let o = s.cli(None, &["operator", "init", "--key-shares", "3", "--key-threshold", "4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let o = s.cli(None, &["operator", "init", "--key-shares", "3", "--key-threshold", "2", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let init: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys: Vec<String> =
        init["unseal_keys_b64"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    let root = init["root_token"].as_str().unwrap().to_string();
    assert_eq!((keys.len(), init["unseal_threshold"].as_u64()), (3, Some(2)));
    assert_eq!(s.cli(None, &["operator", "init"]).status.code(), Some(6), "init twice is refused");

    // Still sealed after init; one key is progress, two unseal.
    assert_eq!(s.cli(None, &["operator", "status"]).status.code(), Some(5));
    let o = s.cli_stdin(None, &["operator", "unseal", "-o", "json"], &format!("{}\n", keys[2]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["progress"], 1);
    let o = s.cli(None, &["operator", "unseal", &keys[0]]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Sealed             false"), "{}", stdout(&o));
    assert_eq!(health(&s).await, ServingStatus::Serving as i32);

    let o = s.cli(Some(&root), &["kv", "put", "secret/db", "password=VALUE-ON-DISK-5f3a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The configured value cap (64 KiB here) applies.
    let big = "x".repeat(70_000);
    let o = s.cli(Some(&root), &["kv", "put", "secret/big", &format!("v={big}")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // Rotation adds a term; old data stays readable.
    let o = s.cli(Some(&root), &["operator", "rotate", "-o", "json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["term"], 2);
    assert!(s.cli(Some(&root), &["kv", "put", "secret/after", "k=v"]).status.success());

    // Rekey: the old keys stop working, the new ones unseal.
    let o = s.cli_stdin(
        Some(&root),
        &["operator", "rekey", "--key-shares", "2", "--key-threshold", "2", "-o", "json"],
        &format!("{}\n{}\n", keys[1], keys[2]),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rekey: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let new_keys: Vec<String> =
        rekey["unseal_keys_b64"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(new_keys.len(), 2);

    // Restart: comes back sealed, with everything.
    drop(s);
    let s = Server::with_config(dir.path(), true, 0);
    let err = s
        .secrets()
        .await
        .get(authed(&root, pb::GetRequest { path: "secret/db".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let mut sys = s.sys().await;
    sys.unseal(pb::UnsealRequest { key: keys[0].clone(), reset: false, migrate: false }).await.unwrap();
    let err = sys.unseal(pb::UnsealRequest { key: keys[1].clone(), reset: false, migrate: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "old keys no longer unseal: {err:?}");
    assert!(!unseal_all(&s, &new_keys).await.sealed);
    let got = s
        .secrets()
        .await
        .get(authed(&root, pb::GetRequest { path: "secret/db".into(), version: 0, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(field(&got, "password"), "VALUE-ON-DISK-5f3a");
    let o = s.cli(Some(&root), &["kv", "get", "-o", "json", "secret/after"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Nothing secret is on disk in plaintext.
    drop(s);
    let db = std::fs::read(dir.path().join("data/keybridge.db")).unwrap();
    assert!(!contains(&db, b"VALUE-ON-DISK-5f3a"));
    assert!(!contains(&db, root.as_bytes()));
    for k in keys.iter().chain(&new_keys) {
        assert!(!contains(&db, k.as_bytes()));
    }
}

#[tokio::test]
async fn snapshot_save_and_restore_while_serving() {
    let s = Server::dev();
    let t = "root-e2e";
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("kb.snap");
    let mut c = s.secrets().await;
    c.put(authed(t, pb::PutRequest { path: "secret/a".into(), value: fields(&[("v", "before")]), cas: None }))
        .await
        .unwrap();

    let o = s.cli(Some(t), &["operator", "snapshot", "save", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!contains(&std::fs::read(&snap).unwrap(), b"before"), "the snapshot holds ciphertext only");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777, 0o600);

    c.put(authed(t, pb::PutRequest { path: "secret/a".into(), value: fields(&[("v", "after")]), cas: None }))
        .await
        .unwrap();
    c.put(authed(t, pb::PutRequest { path: "secret/b".into(), value: fields(&[("v", "new")]), cas: None }))
        .await
        .unwrap();
    assert!(s.cli(Some(t), &["operator", "rotate"]).status.success());

    // A damaged snapshot is refused and changes nothing.
    let mut bad = std::fs::read(&snap).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let bad_file = dir.path().join("bad.snap");
    std::fs::write(&bad_file, bad).unwrap();
    let o = s.cli(Some(t), &["operator", "snapshot", "restore", bad_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let got = c
        .get(authed(t, pb::GetRequest { path: "secret/a".into(), version: 0, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(field(&got, "v"), "after");

    let o = s.cli(Some(t), &["operator", "snapshot", "restore", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = c
        .get(authed(t, pb::GetRequest { path: "secret/a".into(), version: 0, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(field(&got, "v"), "before");
    let err = c
        .get(authed(t, pb::GetRequest { path: "secret/b".into(), version: 0, ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Another server's snapshot needs --force and seals this one.
    let other = Server::dev();
    let o = other.cli(Some(t), &["operator", "snapshot", "restore", snap.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let o = other.cli(Some(t), &["operator", "snapshot", "restore", "--force", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(other.cli(None, &["operator", "status"]).status.code(), Some(5));
}

#[tokio::test]
async fn sigkill_during_writes_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), false, 0);
    let init = init_unsealed(&s).await;
    let root = init.root_token.clone();

    const WRITERS: usize = 16;
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = s.secrets().await;
        let acked = acked.clone();
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            for v in 1u64.. {
                let n = v.to_string();
                let req = pb::PutRequest {
                    path: format!("secret/w{w}"),
                    value: fields(&[("n", &n), ("pad", &"p".repeat(512))]),
                    cas: Some(v - 1),
                };
                if c.put(authed(&root, req)).await.is_err() {
                    return;
                }
                acked[w].store(v, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(total > 0, "no write was acknowledged before the kill");
    eprintln!("{total} writes acknowledged before SIGKILL");

    let log = dir.path().join("restart.log");
    let s = Server::with_config_logging_to(dir.path(), "", &log);
    unseal_all(&s, &init.unseal_keys_b64).await;
    // The kill left the file open: the restart says it repaired it.
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("not closed cleanly"), "{said}");
    let mut c = s.secrets().await;
    for w in 0..WRITERS {
        let acked = acked[w].load(Ordering::SeqCst);
        let path = format!("secret/w{w}");
        let meta = match c.describe(authed(&root, pb::DescribeRequest { path: path.clone() })).await {
            Ok(r) => r.into_inner().metadata.unwrap(),
            Err(e) => {
                assert_eq!((e.code(), acked), (Code::NotFound, 0), "{path}");
                continue;
            }
        };
        // Every acknowledged write survived; at most the one in flight more.
        assert!(
            meta.current_version >= acked && meta.current_version <= acked + 1,
            "{path}: {} vs {acked}",
            meta.current_version
        );
        for v in &meta.versions {
            let got = c
                .get(authed(&root, pb::GetRequest { path: path.clone(), version: v.version, ..Default::default() }))
                .await
                .unwrap_or_else(|e| panic!("{path} v{}: {e:?}", v.version))
                .into_inner();
            assert_eq!(field(&got, "n"), v.version.to_string(), "{path}: version and value agree");
        }
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::with_config(dir.path(), false, 0);
    let init = init_unsealed(&s).await;
    s.secrets()
        .await
        .put(authed(
            &init.root_token,
            pb::PutRequest { path: "secret/a".into(), value: fields(&[("k", "v")]), cas: None },
        ))
        .await
        .unwrap();
    let (status, took) = terminate(&mut s).await;
    assert!(status.success(), "{status:?}");
    // Its clients answer the GOAWAY: nothing waits for the grace period.
    assert!(took < Duration::from_secs(4), "{took:?}");
    // It comes back with the data, from a store it closed cleanly (no
    // repair pass, which takes time proportional to the file's size).
    let log = dir.path().join("restart.log");
    let s = Server::with_config_logging_to(dir.path(), "", &log);
    unseal_all(&s, &init.unseal_keys_b64).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("not closed cleanly"), "{said}");
    let got = s
        .secrets()
        .await
        .get(authed(&init.root_token, pb::GetRequest { path: "secret/a".into(), version: 0, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(field(&got, "k"), "v");
}

/// Sends SIGTERM and waits (up to 10 s) for the process to end.
async fn terminate(s: &mut Server) -> (std::process::ExitStatus, Duration) {
    let started = std::time::Instant::now();
    let term = std::process::Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            return (st, started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that stops answering (it never reads, so it acknowledges
/// neither HTTP/2's GOAWAY nor its PING) holds a stopping server for
/// `limits.shutdown_grace` only; the store is still closed cleanly.
#[tokio::test]
async fn sigterm_closes_connections_still_open_after_the_grace_period() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut s = Server::with_config_logging_to(dir.path(), "shutdown_grace = \"1s\"", &log);
    let init = init_unsealed(&s).await;
    let put = pb::PutRequest { path: "secret/a".into(), value: fields(&[("k", "v")]), cas: None };
    s.secrets().await.put(authed(&init.root_token, put)).await.unwrap();

    // The HTTP/2 preface and an empty SETTINGS frame, then silence.
    let mut silent = std::net::TcpStream::connect(s.addr.trim_start_matches("http://")).unwrap();
    silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, took) = terminate(&mut s).await;
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}: the connection was not given its grace");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("connections still open after the shutdown grace period"), "{said}");
    drop(silent);

    let log = dir.path().join("restart.log");
    let s = Server::with_config_logging_to(dir.path(), "", &log);
    unseal_all(&s, &init.unseal_keys_b64).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!said.contains("not closed cleanly"), "{said}");
    let get = pb::GetRequest { path: "secret/a".into(), version: 0, ..Default::default() };
    let got = s.secrets().await.get(authed(&init.root_token, get)).await.unwrap().into_inner();
    assert_eq!(field(&got, "k"), "v");
}

/// Watch streams end when a stop begins, so a watcher neither holds the
/// server for its shutdown grace nor keeps waiting on a server that is gone.
#[tokio::test]
async fn sigterm_ends_watch_streams_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::with_config(dir.path(), false, 0);
    let init = init_unsealed(&s).await;
    let watch = pb::WatchSecretRequest { path: "secret/watched".into() };
    let mut events = s.secrets().await.watch(authed(&init.root_token, watch)).await.unwrap().into_inner();
    let ended = tokio::spawn(async move {
        let started = std::time::Instant::now();
        while let Ok(Some(_)) = events.message().await {}
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, took) = terminate(&mut s).await;
    assert!(status.success(), "{status:?}");
    // The default grace is 5 s: the open stream did not wait for it.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let open_for = tokio::time::timeout(Duration::from_secs(5), ended).await.expect("the stream ended").unwrap();
    assert!(open_for < Duration::from_secs(4), "{open_for:?}");
}

/// The serving threads of a server process and their voluntary context
/// switches (each wait for the next request on a connection is one).
fn serving_threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
        if !comm.starts_with("kb-serve-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((comm, switches));
    }
    out.sort();
    out
}

#[tokio::test]
async fn connections_are_spread_over_the_configured_serving_threads() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_top(dir.path(), "serving_threads = 3");
    // The threads start right after the "Listening" line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut threads = serving_threads(s.child.id());
    while threads.len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        threads = serving_threads(s.child.id());
    }
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kb-serve-0", "kb-serve-1", "kb-serve-2"], "{threads:?}");
    // Three connections: one per thread (the least loaded takes the next).
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(s.sys().await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = serving_threads(s.child.id());
    for _ in 0..40 {
        for c in clients.iter_mut() {
            let st = c.seal_status(pb::SealStatusRequest {}).await.unwrap().into_inner();
            assert!(st.sealed);
        }
    }
    let after = serving_threads(s.child.id());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(a - b >= 20, "{name} served no connection: {b} -> {a} wake-ups; all: {before:?} -> {after:?}");
    }
}

/// A server whose stdout and stderr pipes were closed by the reader (a
/// supervisor that went away) still stops on SIGTERM and on SIGINT: the
/// log lines it can no longer write do not stop the stop.
#[tokio::test]
async fn signals_stop_a_server_whose_output_pipes_are_closed() {
    for signal in ["-TERM", "-INT"] {
        let mut child = std::process::Command::new(crate::harness::BIN)
            .args(["server", "--dev", "--dev-listen-address", "127.0.0.1:0"])
            .env("KEYBRIDGE_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        // Read up to "Listening on", then close the pipe (no drain thread).
        let mut line = String::new();
        while !line.contains("Listening on") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "exited before listening");
        }
        drop(out);
        drop(child.stderr.take());
        let kill = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("the server ignored {signal} with its output pipes closed");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{signal}: {status:?}");
    }
}

/// SIGHUP reads the config file again: the log level and the rate limits
/// apply at once, the log says so and names a changed setting that needs
/// a restart; a file that no longer parses changes nothing. The log is JSON
/// lines with `log_format = "json"`.
#[tokio::test]
async fn sighup_reloads_log_level_and_rate_limits_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let file = dir.path().join("keybridge.hcl");
    let config = |level: &str, rate: u32, max_value: u32| {
        format!(
            "listener \"tcp\" {{\n address = \"127.0.0.1:{port}\"\n tls_disable = true\n}}\nstorage \"file\" {{\n path = \"{}\"\n}}\n\
             limits {{\n max_value_bytes = {max_value}\n token_requests_per_second = {rate}\n token_burst = {rate}\n}}\n\
             disable_mlock = true\nlog_level = \"{level}\"\nlog_format = \"json\"\n",
            dir.path().join("data").display()
        )
    };
    std::fs::write(&file, config("warn", 0, 65536)).unwrap();
    let log = dir.path().join("server.log");
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["server", "--config", file.to_str().unwrap()])
        .env_remove("KEYBRIDGE_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    crate::harness::until_listening(child.stdout.take().unwrap());
    let s = Server { child, addr: format!("http://127.0.0.1:{port}"), telemetry: None, root_token: None, ca_pem: None };
    let init = init_unsealed(&s).await;
    let hup = |s: &Server| {
        assert!(
            std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap().success()
        );
    };
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap();
            if text.contains(needle) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let get = |s: &Server| {
        let s_addr = s.addr.clone();
        let token = init.root_token.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(s_addr).unwrap().connect().await.unwrap();
            let mut c = pb::secrets_client::SecretsClient::new(ch);
            let mut codes = Vec::new();
            for _ in 0..5 {
                let r =
                    c.get(authed(&token, pb::GetRequest { path: "secret/none".into(), ..Default::default() })).await;
                codes.push(r.err().map(|e| e.code()));
            }
            codes
        }
    };
    assert!(!get(&s).await.contains(&Some(Code::ResourceExhausted)), "no limit yet");

    // A rate limit of 1/s and the info level; max_value_bytes needs a restart.
    std::fs::write(&file, config("info", 1, 1024)).unwrap();
    hup(&s);
    let text = wait_for("changed settings need a restart");
    assert!(text.contains("limits.token_requests_per_second") && text.contains("log_level"), "{text}");
    assert!(text.contains("\"not_applied\":\"limits.max_value_bytes\""), "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    // At warn, the INFO line of the audit reopening (before the reload) was
    // left out; the reload's own INFO line, after it, shows.
    assert!(!text.contains("audit devices reopened"), "{text}");
    assert!(text.contains("\"level\":\"INFO\",\"message\":\"config reloaded\""), "{text}");
    assert!(get(&s).await.contains(&Some(Code::ResourceExhausted)), "the new limit applies");

    // A broken file changes nothing.
    std::fs::write(&file, "listener {").unwrap();
    hup(&s);
    wait_for("config not reloaded; the running settings stay");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let codes = get(&s).await;
    assert_eq!(codes[0], Some(Code::NotFound), "{codes:?}");
    assert!(codes.contains(&Some(Code::ResourceExhausted)), "still limited: {codes:?}");
}

/// SIGHUP replaces the TLS certificate and key: a connection made after
/// the reload is served the new pair (trusted only through the new CA), a
/// connection already open keeps working, and a broken pair on disk leaves
/// the running one in place.
#[tokio::test]
async fn sighup_reloads_the_tls_certificate_for_new_connections() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), true, 0);
    let connect = |ca: Vec<u8>| {
        let addr = s.addr.clone();
        async move {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
            Endpoint::from_shared(addr).unwrap().tls_config(tls).unwrap().connect().await
        }
    };
    let status = |ch: tonic::transport::Channel| async move {
        pb::sys_client::SysClient::new(ch).seal_status(pb::SealStatusRequest {}).await.map(|_| ())
    };
    let old_ca = s.ca_pem.clone().unwrap();
    let old = connect(old_ca.clone()).await.expect("the first pair is served");

    let new = keybridge_testservers::tls::test_certs("second test CA");
    std::fs::write(dir.path().join("server.crt"), &new.cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &new.key_pem).unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        if let Ok(ch) = connect(new.ca_pem.clone().into_bytes()).await {
            break ch;
        }
        assert!(std::time::Instant::now() < deadline, "the new pair was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    status(fresh).await.unwrap();
    // Refused for its certificate (issued by a CA the client no longer
    // trusts), not for any other reason a connection can fail.
    let refused = connect(old_ca).await.expect_err("a new connection still got the old certificate");
    let mut chain = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(e) = source {
        chain.push_str(&format!(": {e}"));
        source = e.source();
    }
    assert!(chain.contains("invalid peer certificate") && chain.contains("UnknownIssuer"), "{chain}");
    status(old).await.expect("the connection made before the reload goes on");

    // A key that does not match, a FIFO and an endless device in the key's
    // place: each reload is refused at once, the running pair stays, and
    // the reload task is not stuck (the next good pair still loads).
    let key = dir.path().join("server.key");
    let hup = || {
        assert!(
            std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap().success()
        )
    };
    let other = keybridge_testservers::tls::test_certs("third test CA");
    std::fs::write(&key, &other.key_pem).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&key).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&key).status().unwrap().success());
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    status(connect(new.ca_pem.clone().into_bytes()).await.expect("still the second pair")).await.unwrap();
    std::fs::remove_file(&key).unwrap();
    let third = keybridge_testservers::tls::test_certs("fourth test CA");
    std::fs::write(dir.path().join("server.crt"), &third.cert_pem).unwrap();
    std::fs::write(&key, &third.key_pem).unwrap();
    hup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while connect(third.ca_pem.clone().into_bytes()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the reload task is stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = s;
    let (st, _) = terminate(&mut s).await;
    assert!(st.success(), "{st:?}");
}

/// A client that opens a TLS connection and never finishes the handshake
/// is dropped after the handshake timeout (10 s), and holds no connection
/// slot after that; one that finishes it in time is served (the test above).
#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_dropped() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), true, 0);
    let addr = s.addr.trim_start_matches("https://").to_string();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), idle.read(&mut buf)).await.expect("dropped in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "dropped before the timeout: {took:?}");
}

/// A client that connects (or finishes its TLS handshake) and then sends
/// nothing is dropped after the preface timeout (10 s), so idle sockets
/// cannot hold connection slots for good.
#[tokio::test]
async fn a_connection_that_never_sends_its_preface_is_dropped() {
    use tokio::io::AsyncReadExt;
    let s = Server::dev();
    let addr = s.addr.trim_start_matches("http://").to_string();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // The server speaks first in HTTP/2 (its SETTINGS), then closes.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "not dropped within 30 s");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "dropped before the timeout: {took:?}");
    // A client that speaks in time is served as usual.
    s.secrets()
        .await
        .get(authed("root-e2e", pb::GetRequest { path: "secret/x".into(), ..Default::default() }))
        .await
        .unwrap_err();
}
