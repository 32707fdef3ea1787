//! Audit devices against real files and sockets.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::Arc;

use keybridge_barrier::{Barrier, RedbStore};

use super::*;
use crate::audit::chain::verify_files;
use crate::{AuditValue, Caller};
use crate::{TokenRequest, value::SecretValue};

fn fields(pairs: &[(&str, &str)]) -> SecretValue {
    SecretValue::Fields(pairs.iter().map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string()))).collect())
}

async fn dev_core() -> (Core, String) {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    let init = core.init(1, 1, Some("root-t"), true).await.unwrap();
    (core, init.root_token.to_string())
}

fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A put as the gateway runs it: the operation, then the response record.
async fn put(core: &Core, token: &str, path: &str, password: &str) -> Result<u64> {
    let value = fields(&[("password", password)]);
    let caller = Caller::new(Some(token), "keybridge.v1.Secrets/Put")
        .with_request_id("req-1")
        .with_remote(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 5000))))
        .with_path(path)
        .with("value", value.audit_value());
    let r = core.put(&caller, path, &value, None).await.map(|(v, _)| v);
    core.finish(&caller, r, |v| vec![("version".into(), AuditValue::plain(*v))]).await
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn file_device_records_every_request_and_response_without_secrets() {
    let (core, root) = dev_core().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let r = &Caller::token(Some(&root));
    core.enable_audit(r, "file", "file", "", opts(&[("file_path", log.to_str().unwrap())])).await.unwrap();
    assert_eq!(put(&core, &root, "secret/app/db", "hunter2-very-secret").await.unwrap(), 1);
    // Denied and unauthenticated requests are recorded too.
    core.put_policy(r, "reader", "path \"secret/data/*\" { capabilities = [\"read\"] }").await.unwrap();
    let (reader, _) =
        core.create_token(r, TokenRequest { policies: vec!["reader".into()], ..Default::default() }).await.unwrap();
    assert!(matches!(put(&core, &reader, "secret/app/db", "x").await, Err(Error::PermissionDenied(_))));
    assert!(matches!(put(&core, "not-a-token", "secret/app/db", "x").await, Err(Error::Unauthenticated)));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("hunter2"), "a secret value reached the audit log");
    assert!(!text.contains(&root) && !text.contains(reader.as_str()), "a token reached the audit log");
    let recs = records(&log);
    let puts: Vec<&serde_json::Value> = recs.iter().filter(|r| r["operation"] == "keybridge.v1.Secrets/Put").collect();
    assert_eq!(puts.len(), 6, "three puts, each a request and a response");
    let (req, resp) = (puts[0], puts[1]);
    assert_eq!(req["type"], "request");
    assert_eq!(req["path"], "secret/data/app/db");
    assert_eq!(req["capability"], "create");
    assert_eq!(req["request_id"], "req-1");
    assert_eq!(req["remote_address"], "127.0.0.1:5000");
    assert_eq!(req["auth"]["display_name"], "root");
    assert_eq!(resp["status"], "OK");
    assert_eq!(resp["response"]["version"], 1);
    // An investigator who knows the value finds it by its HMAC.
    let h = core.audit_hash(r, "file/", b"hunter2-very-secret").await.unwrap();
    assert_eq!(req["request"]["value"]["password"], h.as_str());
    let t = core.audit_hash(r, "file", root.as_bytes()).await.unwrap();
    assert_eq!(req["auth"]["client_token"], t.as_str());
    assert_eq!(puts[2]["status"], "PERMISSION_DENIED");
    assert_eq!(puts[2]["auth"]["policies"], serde_json::json!(["default", "reader"]));
    assert_eq!(puts[3]["status"], "PERMISSION_DENIED");
    assert_eq!(puts[4]["status"], "UNAUTHENTICATED");
    assert!(puts[4]["reason"].as_str().unwrap().contains("token"));
    // Sequence numbers are dense and the chain verifies.
    for (i, rec) in recs.iter().enumerate() {
        assert_eq!(rec["seq"], i as u64 + 1);
    }
    let key = core.audit_verification_key(r, "file/").await.unwrap();
    let report =
        verify_files(&key.key_bytes().unwrap(), &[("audit.log".into(), text.into_bytes())], Some(&key.checkpoint()));
    assert_eq!(report.problem, None);
    assert_eq!(report.last_seq, key.checkpoint_seq);
}

#[tokio::test]
async fn the_chain_continues_across_seal_unseal_and_reopen() {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    let init = core.init(1, 1, None, false).await.unwrap();
    core.unseal(&init.keys[0], false, false).await.unwrap();
    let root = init.root_token.to_string();
    let r = &Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    core.enable_audit(r, "file", "file", "", opts(&[("file_path", log.to_str().unwrap())])).await.unwrap();
    put(&core, &root, "secret/a", "1").await.unwrap();
    core.seal(r).await.unwrap();
    core.unseal(&init.keys[0], false, false).await.unwrap();
    put(&core, &root, "secret/a", "2").await.unwrap();
    // logrotate: move the file away, reopen; the chain goes on in a new file.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert!(core.reopen_audit().await.is_empty());
    put(&core, &root, "secret/a", "3").await.unwrap();
    let key = core.audit_verification_key(r, "file").await.unwrap();
    let k = key.key_bytes().unwrap();
    let cp = key.checkpoint();
    let old = std::fs::read(&rotated).unwrap();
    let new = std::fs::read(&log).unwrap();
    let both = verify_files(&k, &[("audit.log.1".into(), old.clone()), ("audit.log".into(), new.clone())], Some(&cp));
    assert_eq!(both.problem, None, "{:?}", both.notes);
    assert_eq!(both.first_seq, 1);
    let current = verify_files(&k, &[("audit.log".into(), new)], Some(&cp));
    assert_eq!(current.problem, None);
    // Cutting the end of the current file shows against the checkpoint.
    let mut cut = std::fs::read(&log).unwrap();
    let last_line = cut[..cut.len() - 1].iter().rposition(|b| *b == b'\n').unwrap();
    cut.truncate(last_line + 1);
    let r2 = verify_files(&k, &[("audit.log".into(), cut)], Some(&cp));
    assert!(r2.problem.unwrap().contains("truncated"));
}

/// Many requests at once on a file device, while the device is reopened
/// and checkpointed over and over, on four threads: each request waits for
/// its lines (written with its thread's group by itself or by the request
/// that opened the group), and the file holds every request's and
/// response's record, in one unbroken chain up to the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_writes_and_keep_one_chain() {
    let (core, root) = dev_core().await;
    let core = Arc::new(core);
    let r = Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    core.enable_audit(&r, "file", "file", "", opts(&[("file_path", log.to_str().unwrap())])).await.unwrap();
    let before = records(&log).len();
    // The writer thread takes the sink meanwhile, again and again: the file
    // rotated away and reopened (a new segment in a new file), and a
    // checkpoint.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (core, stop, root, log, dir) =
            (core.clone(), stop.clone(), root.clone(), log.clone(), dir.path().to_owned());
        tokio::spawn(async move {
            let r = Caller::token(Some(&root));
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::fs::rename(&log, dir.join(format!("audit.log.{rounds:04}"))).unwrap();
                assert!(core.reopen_audit().await.is_empty());
                core.audit_verification_key(&r, "file").await.unwrap();
                rounds += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            rounds
        })
    };
    let mut tasks = Vec::new();
    for t in 0..48 {
        let (core, root) = (core.clone(), root.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                put(&core, &root, &format!("secret/c/{t}"), &format!("p{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rotations = churn.await.unwrap();
    assert!(rotations > 0);
    // Every file in order, the current one last.
    let mut files: Vec<(String, Vec<u8>)> = (0..rotations)
        .map(|i| {
            let name = format!("audit.log.{i:04}");
            let bytes = std::fs::read(dir.path().join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    files.push(("audit.log".into(), std::fs::read(&log).unwrap()));
    // Each file on its own verifies too: its first line starts a segment.
    for (name, bytes) in &files {
        let key = core.audit_verification_key(&r, "file").await.unwrap();
        let alone = verify_files(&key.key_bytes().unwrap(), &[(name.clone(), bytes.clone())], None);
        assert_eq!(alone.problem, None, "{name} alone");
    }
    let lines: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|(_, b)| {
            String::from_utf8_lossy(b).lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>()
        })
        .collect();
    let puts = |kind: &str| {
        lines[before..].iter().filter(|l| l["type"] == kind && l["operation"] == "keybridge.v1.Secrets/Put").count()
    };
    let (requests, responses) = (puts("request"), puts("response"));
    assert_eq!((requests, responses), (48 * 25, 48 * 25));
    let key = core.audit_verification_key(&r, "file").await.unwrap();
    files.pop();
    files.push(("audit.log".into(), std::fs::read(&log).unwrap()));
    let report = verify_files(&key.key_bytes().unwrap(), &files, Some(&key.checkpoint()));
    assert_eq!(report.problem, None, "{:?}", report.notes);
    let all: usize = files.iter().map(|(_, b)| String::from_utf8_lossy(b).lines().count()).sum();
    assert_eq!(report.records as usize, all);
}

/// A collector on a Unix socket that records what it is sent until told to
/// hang up.
struct Collector {
    path: std::path::PathBuf,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl Collector {
    fn start(path: std::path::PathBuf) -> Self {
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l2, s2, c2) = (lines.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if s2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn.try_clone() {
                    c2.lock().unwrap().push(c);
                }
                let (l3, s3) = (l2.clone(), s2.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        l3.lock().unwrap().push(line);
                        if s3.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                    }
                });
            }
        });
        Collector { path, lines, stop, conns }
    }

    /// Hangs up: the listener and every connection go away. Connections are
    /// shut down at once, so the gateway's next write fails (EPIPE) however
    /// busy the machine is.
    fn hang_up(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        std::fs::remove_file(&self.path).unwrap();
        // Wake the accept loop so it exits; the connection threads exit on
        // their next line.
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
    }
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn fail_closed_refuses_requests_no_device_can_record() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("collector.sock");
    let collector = Collector::start(sock.clone());
    core.enable_audit(r, "siem", "socket", "", opts(&[("address", sock.to_str().unwrap()), ("socket_type", "unix")]))
        .await
        .unwrap();
    // Respected: the collector takes the records, requests run.
    put(&core, &root, "secret/kept", "v").await.unwrap();
    wait_for(|| collector.lines.lock().unwrap().len() >= 2).await;
    // Exceeded: the collector is gone, nothing can record; the request is
    // refused before it runs.
    collector.hang_up();
    // The first write after the peer left may still be buffered by the
    // kernel; keep writing until the device reports the failure.
    let mut refused = None;
    for i in 0..50 {
        match put(&core, &root, &format!("secret/refused{i}"), "v").await {
            Err(e @ Error::AuditFailed(_)) => {
                refused = Some(i);
                assert!(e.to_string().contains("not carried out"));
                break;
            }
            Err(Error::AuditResponseFailed(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    let i = refused.expect("the dead collector was never noticed");
    let g = Caller::token(Some(&root));
    assert!(matches!(core.get(&g, &format!("secret/refused{i}"), None).await, Err(Error::AuditFailed(_))));
    // A new collector at the same address: the device reconnects.
    let collector2 = Collector::start(sock.clone());
    let g = Caller::token(Some(&root));
    let read = core.get(&g, &format!("secret/refused{i}"), None).await;
    assert!(matches!(read, Err(Error::NotFound(_))), "the refused write ran");
    wait_for(|| !collector2.lines.lock().unwrap().is_empty()).await;
    let first: serde_json::Value = serde_json::from_str(&collector2.lines.lock().unwrap()[0]).unwrap();
    assert!(first["prev"].is_string(), "a new connection starts a segment: {first}");
}

#[tokio::test]
async fn a_response_that_cannot_be_recorded_is_reported_after_the_write() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let collector = Collector::start(sock.clone());
    core.enable_audit(r, "siem", "socket", "", opts(&[("address", sock.to_str().unwrap()), ("socket_type", "unix")]))
        .await
        .unwrap();
    let value = fields(&[("password", "p")]);
    let caller = Caller::new(Some(&root), "keybridge.v1.Secrets/Put").with_path("secret/late");
    // The request is recorded and the write commits ...
    let result = core.put(&caller, "secret/late", &value, None).await.map(|(v, _)| v);
    assert!(result.is_ok());
    // ... then the only device dies before the response is recorded (its
    // connection shut down and its socket gone: the next write fails).
    collector.hang_up();
    match core.finish(&caller, result, |_| Vec::new()).await {
        Err(Error::AuditResponseFailed(m)) => assert!(m.contains("was carried out"), "{m}"),
        other => panic!("the response's failure must be reported as such, not {other:?}"),
    }
    // The write stands: once a collector listens again, it reads back.
    let _collector = Collector::start(sock.clone());
    let mut read = None;
    for _ in 0..100 {
        match core.get(&Caller::token(Some(&root)), "secret/late", None).await {
            Ok(r) => {
                read = Some(r);
                break;
            }
            Err(Error::AuditFailed(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let read = read.expect("the device reconnects");
    assert_eq!(read.version, 1);
    assert!(matches!(&read.value, SecretValue::Fields(f) if f["password"].as_str() == "p"));
}

#[tokio::test]
async fn a_full_disk_fails_closed_and_a_second_device_keeps_serving() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(&root));
    core.enable_audit(r, "full", "file", "", opts(&[("file_path", "/dev/full")])).await.unwrap();
    // Exceeded: the only device cannot write.
    assert!(matches!(put(&core, &root, "secret/x", "v").await, Err(Error::AuditFailed(_))));
    assert!(matches!(core.get(&Caller::token(Some(&root)), "secret/x", None).await, Err(Error::AuditFailed(_))));
    // Respected: with a working device next to it, requests run.
    let core2 = dev_core().await;
    let (core2, root2) = (core2.0, core2.1);
    let r2 = &Caller::token(Some(&root2));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    core2
        .enable_audit(r2, "file", "file", "", opts(&[("file_path", log.to_str().unwrap()), ("fsync", "true")]))
        .await
        .unwrap();
    core2.enable_audit(r2, "full", "file", "", opts(&[("file_path", "/dev/full")])).await.unwrap();
    put(&core2, &root2, "secret/x", "v").await.unwrap();
    assert_eq!(records(&log).iter().filter(|r| r["operation"] == "keybridge.v1.Secrets/Put").count(), 2);
    let key = core2.audit_verification_key(r2, "file").await.unwrap();
    assert_eq!(key.checkpoint_seq, records(&log).len() as u64, "fsync devices checkpoint every group");
}

#[tokio::test]
async fn device_management_validates_and_changes_nothing_on_error() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    let p = log.to_str().unwrap();
    let bad = [
        ("file", "file", opts(&[])),
        ("file", "file", opts(&[("file_path", "relative.log")])),
        ("file", "file", opts(&[("file_path", p), ("fsync", "yes")])),
        ("file", "file", opts(&[("file_path", p), ("colour", "red")])),
        ("file", "syslog9", opts(&[])),
        ("Bad Name", "file", opts(&[("file_path", p)])),
        ("sock", "socket", opts(&[("address", "127.0.0.1:1")])),
    ];
    for (path, kind, o) in bad {
        let e = core.enable_audit(r, path, kind, "", o).await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_) | Error::FailedPrecondition(_)), "{e:?}");
    }
    assert!(core.list_audit(r).await.unwrap().is_empty());
    std::fs::write(&log, "someone else's log\n").unwrap();
    let e = core.enable_audit(r, "file", "file", "", opts(&[("file_path", p)])).await.unwrap_err();
    assert!(e.to_string().contains("not empty"));
    std::fs::remove_file(&log).unwrap();
    core.enable_audit(r, "file", "file", "", opts(&[("file_path", p)])).await.unwrap();
    assert!(matches!(core.enable_audit(r, "file", "stream", "", opts(&[])).await, Err(Error::AlreadyExists(_))));
    // Non-sudo tokens cannot manage devices.
    core.put_policy(r, "ops", "path \"sys/audit/*\" { capabilities = [\"update\", \"read\"] }").await.unwrap();
    let (ops, _) =
        core.create_token(r, TokenRequest { policies: vec!["ops".into()], ..Default::default() }).await.unwrap();
    let o = &Caller::token(Some(&ops));
    assert!(matches!(core.disable_audit(o, "file").await, Err(Error::PermissionDenied(_))));
    assert!(matches!(core.audit_verification_key(o, "file").await, Err(Error::PermissionDenied(_))));
    core.disable_audit(r, "file").await.unwrap();
    assert!(core.list_audit(r).await.unwrap().is_empty());
    assert!(matches!(core.disable_audit(r, "file").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn stream_device_feeds_watchers_and_never_blocks_requests() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(&root));
    core.enable_audit(r, "siem", "stream", "", opts(&[])).await.unwrap();
    let mut rx = core.watch_audit(r, "siem").await.unwrap();
    put(&core, &root, "secret/s", "streamed-secret").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if line.contains("Secrets/Put") {
            seen.push(line);
        }
    }
    assert!(!seen.concat().contains("streamed-secret"));
    assert!(matches!(core.watch_audit(r, "nope").await, Err(Error::NotFound(_))));
}

/// Accessors reach records as HMACs (Vault's `hmac_accessor = true`); no
/// option turns an HMAC off.
#[tokio::test]
async fn accessors_are_hmaced_and_no_option_logs_raw_values() {
    let (core, root) = dev_core().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let r = &Caller::token(Some(&root));
    for bad in [("log_raw", "true"), ("hmac_accessor", "false")] {
        let e = core
            .enable_audit(r, "file", "file", "", opts(&[("file_path", log.to_str().unwrap()), bad]))
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("only as HMACs")), "{bad:?}: {e}");
    }
    assert!(core.list_audit(r).await.unwrap().is_empty());
    let with = opts(&[("file_path", log.to_str().unwrap()), ("hmac_accessor", "true")]);
    core.enable_audit(r, "file", "file", "", with).await.unwrap();
    let (t, entry) = core.create_token(r, TokenRequest::default()).await.unwrap();
    core.lookup_self(&Caller::token(Some(t.as_str()))).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&entry.accessor), "an accessor reached the audit log");
    let h = core.audit_hash(r, "file", entry.accessor.as_bytes()).await.unwrap();
    assert!(text.contains(h.as_str()), "the accessor's HMAC is there to match");
}

/// A file device's mode is never executable; its file is never opened
/// through a symbolic link; with `audit_file_dir` it stays in that directory.
#[tokio::test]
async fn file_devices_refuse_executable_modes_links_and_other_directories() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let config = CoreConfig { audit_file_dir: Some(logs.clone()), ..Default::default() };
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), config);
    core.init(1, 1, Some("root-t"), true).await.unwrap();
    let r = &Caller::token(Some("root-t"));
    let enable = |path: std::path::PathBuf, mode: &str| {
        let mut o = opts(&[("file_path", path.to_str().unwrap())]);
        if !mode.is_empty() {
            o.insert("mode".into(), mode.into());
        }
        core.enable_audit(r, "file", "file", "", o)
    };
    for mode in ["0755", "0700", "4600", "1600", "0601"] {
        // 0601: execute for others.
        let e = enable(logs.join("a.log"), mode).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("never executable")), "{mode}: {e}");
    }
    // Outside the directory, or leaving it through `..` or a link.
    let elsewhere = dir.path().join("elsewhere.log");
    let e = enable(elsewhere.clone(), "").await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("audit_file_dir")), "{e}");
    let e = enable(logs.join("../escaped.log"), "").await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "{e}");
    std::os::unix::fs::symlink(dir.path(), logs.join("up")).unwrap();
    let e = enable(logs.join("up").join("escaped.log"), "").await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "{e}");
    // A link as the file itself: not followed.
    let target = dir.path().join("target.log");
    std::fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, logs.join("link.log")).unwrap();
    let e = enable(logs.join("link.log"), "").await.unwrap_err();
    assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("cannot open")), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"", "the link's target was written");
    assert!(core.list_audit(r).await.unwrap().is_empty(), "a refused device was enabled");
    // A hard link to a file elsewhere: refused.
    let outside = dir.path().join("outside.log");
    std::fs::write(&outside, "").unwrap();
    std::fs::hard_link(&outside, logs.join("linked.log")).unwrap();
    let e = enable(logs.join("linked.log"), "").await.unwrap_err();
    assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("hard links")), "{e}");
    // An empty file already there with an executable, world-writable mode:
    // it gets the mode asked for.
    use std::os::unix::fs::PermissionsExt;
    let pre = logs.join("pre.log");
    std::fs::write(&pre, "").unwrap();
    std::fs::set_permissions(&pre, std::fs::Permissions::from_mode(0o777)).unwrap();
    enable(pre.clone(), "0600").await.unwrap();
    assert_eq!(std::fs::metadata(&pre).unwrap().permissions().mode() & 0o7777, 0o600);
    core.disable_audit(r, "file").await.unwrap();
    // In the directory, with a read/write mode: enabled.
    enable(logs.join("audit.log"), "0640").await.unwrap();
    assert_eq!(std::fs::metadata(logs.join("audit.log")).unwrap().permissions().mode() & 0o777, 0o640);
}
