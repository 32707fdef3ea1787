//! Audit devices through the real binary: records, HMAC lookup, tamper
//! evidence (through the server and offline), rotation on SIGHUP, and
//! fail-closed.

use serde_json::Value;

use crate::harness::{Server, stderr, stdout};

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn audit_log_records_verifies_and_fails_closed() {
    let s = Server::dev();
    let t = s.root_token.as_deref();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let log_s = log.to_str().unwrap();

    let o = s.cli(t, &["audit", "enable", "file", &format!("file_path={log_s}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Enabled the file audit device at: file/"));
    let o = s.cli(t, &["audit", "list"]);
    assert!(stdout(&o).contains("file/") && stdout(&o).contains(log_s));

    assert!(s.cli(t, &["kv", "put", "secret/app/db", "password=topsecret-AUDIT"]).status.success());
    assert!(s.cli(t, &["kv", "get", "secret/app/db"]).status.success());
    assert_eq!(s.cli(Some("wrong-token"), &["kv", "get", "secret/app/db"]).status.code(), Some(4));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("topsecret-AUDIT"), "a secret value reached the audit log");
    assert!(!text.contains("root-e2e"), "a token reached the audit log");
    let recs = records(&log);
    let gets: Vec<&Value> = recs.iter().filter(|r| r["operation"] == "keybridge.v1.Secrets/Get").collect();
    assert_eq!(gets.len(), 4);
    assert_eq!(gets[0]["type"], "request");
    assert_eq!(gets[0]["capability"], "read");
    assert!(gets[0]["remote_address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let rid = gets[0]["request_id"].as_str().unwrap();
    assert_eq!(rid.len(), 36, "the request id of the request-id layer");
    assert_eq!(gets[1]["request_id"], rid, "request and response share the id");
    assert_eq!(gets[3]["status"], "UNAUTHENTICATED");
    // The HMAC API finds the known value in the response record.
    let o = s.cli(t, &["audit", "hash", "file/", "topsecret-AUDIT"]);
    let h = stdout(&o).trim().to_string();
    assert!(h.starts_with("hmac-sha256:"));
    assert_eq!(gets[1]["response"]["value"]["password"], h.as_str());

    // Intact through the server.
    let o = s.cli(t, &["audit", "verify", log_s]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Intact"));

    // Edited, verified offline with the exported key.
    let key = dir.path().join("key.json");
    let o = s.cli(t, &["audit", "export-key", "file/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(&key, &o.stdout).unwrap();
    let edited = dir.path().join("edited.log");
    std::fs::write(&edited, text.replacen("\"read\"", "\"list\"", 1)).unwrap();
    let o = s.cli(None, &["audit", "verify", "--key", key.to_str().unwrap(), edited.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("TAMPERED") && stdout(&o).contains("was edited"), "{}", stdout(&o));
    let o = s.cli(None, &["audit", "verify", "--key", key.to_str().unwrap(), log_s]);
    assert!(o.status.success(), "{}", stdout(&o));

    // Truncated, through the server (the checkpoint is in the barrier).
    let cut = dir.path().join("cut.log");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&cut, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let o = s.cli(t, &["audit", "verify", "-o", "json", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["problem"].as_str().unwrap().contains("truncated"), "{v}");

    // logrotate: move the file, SIGHUP, the chain continues in the new file.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !log.exists() {
        assert!(std::time::Instant::now() < deadline, "the device did not reopen its file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(s.cli(t, &["kv", "get", "secret/app/db"]).status.success());
    let o = s.cli(t, &["audit", "verify", rotated.to_str().unwrap(), log_s]);
    assert!(o.status.success(), "{}", stdout(&o));

    // Fail closed: the only device left cannot write (a full disk).
    let o = s.cli(t, &["audit", "enable", "--path", "full", "file", "file_path=/dev/full"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(t, &["audit", "disable", "file/"]).status.success());
    let o = s.cli(t, &["kv", "put", "secret/app/refused", "a=b"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("no enabled audit device could record the request"), "{}", stderr(&o));
}

/// `audit watch` streams a stream device's records over a real gRPC
/// server stream, as a SIEM collector would read them.
#[test]
fn audit_watch_streams_records_over_grpc() {
    use std::io::{BufRead, BufReader};
    let s = Server::dev();
    let t = s.root_token.as_deref();
    let o = s.cli(t, &["audit", "enable", "--path", "siem", "stream"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut watcher = std::process::Command::new(crate::harness::BIN)
        .args(["audit", "watch", "siem/"])
        .env("KEYBRIDGE_ADDR", &s.addr)
        .env("KEYBRIDGE_TOKEN", t.unwrap())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    // The watch's own response record shows it is subscribed.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["operation"], "keybridge.v1.Audit/Watch");
    assert!(s.cli(t, &["kv", "put", "secret/watched", "password=streamed-VALUE"]).status.success());
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = lines.next().unwrap().unwrap();
        assert!(!line.contains("streamed-VALUE"));
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["operation"] == "keybridge.v1.Secrets/Put" {
            seen.push(v);
        }
    }
    assert_eq!((seen[0]["type"].as_str(), seen[1]["type"].as_str()), (Some("request"), Some("response")));
    assert!(seen[1]["response"]["version"] == 1);
    let _ = watcher.kill();
    let _ = watcher.wait();
    // A file device cannot be watched.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    assert!(s.cli(t, &["audit", "enable", "file", &format!("file_path={}", log.display())]).status.success());
    let o = s.cli(t, &["audit", "watch", "file/"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("watch a stream device"), "{}", stderr(&o));
}

/// Accessors (which can look a token up and revoke it) reach the log only
/// as HMACs: in the issuing response, in lookups and revocations by accessor.
#[test]
fn accessors_reach_the_audit_log_only_as_hmacs() {
    let s = Server::dev();
    let t = s.root_token.as_deref();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["audit", "enable", "file", &format!("file_path={}", log.display())]);
    let created: Value = serde_json::from_str(&stdout(&ok(&["token", "create", "-o", "json"]))).unwrap();
    let accessor = created["accessor"].as_str().unwrap().to_string();
    ok(&["token", "lookup", "--accessor", &accessor]);
    ok(&["token", "revoke", "--accessor", &accessor]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&accessor), "an accessor reached the audit log in the clear");
    assert!(records(&log).len() >= 6, "create, lookup and revoke were recorded");
}
