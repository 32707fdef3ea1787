//! The gateway on PostgreSQL (a throwaway server from the machine's
//! binaries): serving and restarting on `storage "postgresql"` over TLS,
//! its settings checked at start, and `operator migrate` from PostgreSQL
//! to redb and back, verified by reading the secrets through a gateway.

use std::path::Path;
use std::process::Command;

use keybridge_testservers::postgres::Postgres;

use crate::harness::{BIN, Server, init_unseal, json, stderr, stdout};

fn stop(mut s: Server) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let _ = s.child.wait();
}

fn pg_block(pg: &Postgres, table: &str) -> String {
    format!(
        "storage \"postgresql\" {{\n connection_url = \"{}\"\n table = \"{table}\"\n max_connections = 4\n tls_ca_file = \"{}\"\n}}",
        pg.url("localhost", "verify-full"),
        pg.ca_file().display()
    )
}

fn file_block(dir: &Path) -> String {
    format!("storage \"file\" {{\n path = \"{}\"\n}}", dir.join("data").display())
}

/// A config file in `dir` with this storage block (what `operator migrate`
/// reads; a server started there later writes its own).
fn config_with(dir: &Path, storage: &str) {
    let config = format!("listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_disable = true\n}}\n{storage}\n");
    std::fs::write(dir.join("keybridge.hcl"), config).unwrap();
}

fn unseal(s: &Server, key: &str) {
    let o = s.cli(None, &["operator", "unseal", key]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn secret_value(s: &Server, token: &str, path: &str) -> String {
    let o = s.cli(Some(token), &["kv", "get", "-o", "json", path]);
    json(&o)["data"]["pw"].as_str().unwrap_or_default().to_string()
}

fn migrate(from: &Path, to: &Path, extra: &[&str]) -> std::process::Output {
    let (from, to) = (from.join("keybridge.hcl"), to.join("keybridge.hcl"));
    Command::new(BIN)
        .args(["operator", "migrate", "--from", from.to_str().unwrap(), "--to", to.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_restarts_and_migrates_on_postgresql() {
    let pg = Postgres::start();
    let on_pg = tempfile::tempdir().unwrap();
    let s = Server::with_storage(on_pg.path(), &pg_block(&pg, "kb_main"));
    let (root, key) = init_unseal(&s);
    for i in 0..20 {
        let o = s.cli(Some(&root), &["kv", "put", &format!("secret/app/s{i}"), &format!("pw=value-{i}")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let status = json(&s.cli(None, &["operator", "status", "-o", "json"]));
    assert_eq!(status["storage_type"], "postgresql", "{status}");
    assert!(status["node_id"].as_str().is_some_and(|n| !n.is_empty()), "{status}");
    assert_eq!((status["leader"].as_bool(), status["epoch"].as_u64()), (Some(true), Some(1)), "{status}");
    // What PostgreSQL holds is ciphertext: no value appears in the table.
    let dump = pg.psql("SELECT encode(value, 'escape') FROM kb_main");
    assert!(!dump.contains("value-7"), "a secret in plaintext in the table");
    // Not while a server uses the store, and not from a store that is not there.
    let elsewhere = tempfile::tempdir().unwrap();
    config_with(elsewhere.path(), &file_block(elsewhere.path()));
    let o = migrate(on_pg.path(), elsewhere.path(), &[]);
    assert!(!o.status.success() && stderr(&o).contains("leads the source table: stop it first"), "{}", stderr(&o));
    let o = migrate(elsewhere.path(), on_pg.path(), &["--overwrite"]);
    assert!(!o.status.success() && stderr(&o).contains("holds no store"), "{}", stderr(&o));
    assert!(!elsewhere.path().join("data").exists(), "migrate created the missing source");
    stop(s);
    // A restart: sealed, unsealed with the same key, everything there.
    let s = Server::with_storage(on_pg.path(), &pg_block(&pg, "kb_main"));
    unseal(&s, &key);
    assert_eq!(secret_value(&s, &root, "secret/app/s7"), "value-7");
    stop(s);

    // PostgreSQL to redb: verified by count and checksum, then served.
    let on_file = tempfile::tempdir().unwrap();
    config_with(on_file.path(), &file_block(on_file.path()));
    let o = migrate(on_pg.path(), on_file.path(), &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Copied ") && stdout(&o).contains("the destination holds the same"), "{}", stdout(&o));
    let s = Server::with_storage(on_file.path(), &file_block(on_file.path()));
    unseal(&s, &key);
    assert_eq!(secret_value(&s, &root, "secret/app/s19"), "value-19");
    let o = s.cli(Some(&root), &["kv", "put", "secret/app/after", "pw=written-on-redb"]);
    assert!(o.status.success(), "{}", stderr(&o));
    stop(s);

    // And back, into a new table; a destination that holds entries is
    // refused unless asked to replace them.
    let back = tempfile::tempdir().unwrap();
    config_with(back.path(), &pg_block(&pg, "kb_back"));
    let o = migrate(on_file.path(), back.path(), &["-o", "json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let report = json(&o);
    assert_eq!(report["verified"], true, "{report}");
    let entries = report["entries"].as_u64().unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM kb_back").trim(), entries.to_string());
    let o = migrate(on_file.path(), back.path(), &[]);
    assert!(!o.status.success() && stderr(&o).contains("is not empty"), "{}", stderr(&o));
    let o = migrate(on_file.path(), on_file.path(), &[]);
    assert!(!o.status.success() && stderr(&o).contains("the same store"), "{}", stderr(&o));
    let s = Server::with_storage(back.path(), &pg_block(&pg, "kb_back"));
    unseal(&s, &key);
    assert_eq!(secret_value(&s, &root, "secret/app/after"), "written-on-redb");
    assert_eq!(secret_value(&s, &root, "secret/app/s3"), "value-3");
    stop(s);
}

#[test]
fn postgresql_settings_are_checked_at_start() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let start = |storage: &str| {
        let file = dir.path().join("bad.hcl");
        let config = format!("listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_disable = true\n}}\n{storage}\n");
        std::fs::write(&file, config).unwrap();
        let o = Command::new(BIN).args(["server", "--config", file.to_str().unwrap()]).output().unwrap();
        assert!(!o.status.success(), "started with {storage}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("pg-test-password"), "the password in an error: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        err
    };
    let url = pg.url("localhost", "require");
    let e = start(&format!("storage \"postgresql\" {{\n connection_url = \"{url}\"\n}}"));
    assert!(e.contains("sslmode=require is not accepted"), "{e}");
    let e = start("storage \"postgresql\" {\n table = \"t\"\n}");
    assert!(e.contains("needs connection_url"), "{e}");
    let e = start(&format!("storage \"postgresql\" {{\n connection_url = \"{url}\"\n path = \"/x\"\n}}"));
    assert!(e.contains("takes no path"), "{e}");
    let e = start(&format!("storage \"file\" {{\n path = \"/x\"\n connection_url = \"{url}\"\n}}"));
    assert!(e.contains("takes path and cache_size_bytes only"), "{e}");
    let wrong = pg.url("localhost", "disable").replace("pg-test-password", "not-it");
    let e = start(&format!("storage \"postgresql\" {{\n connection_url = \"{wrong}\"\n}}"));
    assert!(e.contains("28P01") && !e.contains("not-it"), "{e}");
}

/// `operator members`: each node's state and whether it is alive.
fn member_states(s: &Server, token: &str) -> Vec<(String, bool)> {
    let members = json(&s.cli(Some(token), &["operator", "members", "-o", "json"]));
    let list = members.as_array().unwrap_or_else(|| panic!("{members}"));
    list.iter().map(|m| (m["state"].as_str().unwrap().to_string(), m["alive"].as_bool().unwrap())).collect()
}

fn leased_block(pg: &Postgres) -> String {
    pg_block(pg, "kb_ha").replace("max_connections = 4", "max_connections = 4\n leader_lease = \"2s\"")
}

/// One node serves a table at a time. A second node waits, not listening,
/// and takes over when the first is killed (within the lease plus 5 s),
/// with every write the first acknowledged. A leader paused past its lease
/// (SIGSTOP), whose place another took, neither commits nor goes on
/// serving once resumed: it exits with code 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_node_takes_over_and_a_paused_leader_stops() {
    use std::time::{Duration, Instant};
    let pg = Postgres::start();
    let block = leased_block(&pg);
    let (dir_a, dir_b, dir_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::with_storage(dir_a.path(), &block);
    let (root, key) = init_unseal(&a);
    for i in 0..10 {
        let o = a.cli(Some(&root), &["kv", "put", &format!("secret/ha/s{i}"), &format!("pw=v{i}")]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let waiting =
        |dir: std::path::PathBuf, block: String| std::thread::spawn(move || Server::with_storage(&dir, &block));
    let b = waiting(dir_b.path().to_path_buf(), block.clone());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!b.is_finished(), "a second node served the table beside the leader");
    // The leader lists both nodes: itself leading, the other waiting.
    let states = member_states(&a, &root);
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(states.contains(&("leader".into(), true)) && states.contains(&("waiting".into(), true)), "{states:?}");
    // (a) The leader is killed: the waiting node takes over.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let b = crate::harness::blocking(|| b.join().unwrap());
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2 + 5), "the next node took {took:?} to serve");
    eprintln!("failover after SIGKILL: serving in {took:?} (lease 2 s)");
    unseal(&b, &key);
    for i in 0..10 {
        assert_eq!(secret_value(&b, &root, &format!("secret/ha/s{i}")), format!("v{i}"));
    }
    // The killed node is no longer alive; the new leader is.
    let states = member_states(&b, &root);
    assert!(states.contains(&("leader".into(), true)) && states.iter().filter(|(_, a)| *a).count() == 1, "{states:?}");
    drop(a);
    // (b) The new leader is paused past its lease; a third node takes over.
    let c = waiting(dir_c.path().to_path_buf(), block.clone());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: as above.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGSTOP) };
    let c = crate::harness::blocking(|| c.join().unwrap());
    unseal(&c, &key);
    let o = c.cli(Some(&root), &["kv", "put", "secret/ha/by-c", "pw=c"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Resumed, the old leader takes no write and stops.
    // SAFETY: as above.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGCONT) };
    let o = b.cli(Some(&root), &["kv", "put", "secret/ha/late-by-b", "pw=b"]);
    assert!(!o.status.success(), "a deposed leader acknowledged a write: {}", stdout(&o));
    let mut b = b;
    let status = crate::harness::blocking(|| b.child.wait().unwrap());
    assert_eq!(status.code(), Some(8), "{status:?}");
    let o = c.cli(Some(&root), &["kv", "get", "secret/ha/late-by-b"]);
    assert!(!o.status.success(), "the deposed leader's write landed");
    assert_eq!(secret_value(&c, &root, "secret/ha/s3"), "v3");
    assert_eq!(secret_value(&c, &root, "secret/ha/by-c"), "c");
}

/// (c) PostgreSQL restarts in the middle of writes: writes during the
/// outage fail with a clear error (none is acknowledged that did not
/// land), the gateway serves again once the database is back, without a
/// restart of its own, and every acknowledged write reads back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_postgresql_restart() {
    use std::time::{Duration, Instant};
    let pg = std::sync::Arc::new(Postgres::start());
    let dir = tempfile::tempdir().unwrap();
    // The default lease (15 s) outlasts the restart: the node keeps the lead.
    let s = Server::with_storage(dir.path(), &pg_block(&pg, "kb_restart"));
    let (root, _key) = init_unseal(&s);
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    // PostgreSQL stops (as a crash) and starts again while the writes go on.
    let restart = {
        let pg = pg.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            pg.stop();
            std::thread::sleep(Duration::from_secs(1));
            pg.start_again();
        })
    };
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(10) || !restart.is_finished() {
        let path = format!("secret/restart/s{i}");
        let o = s.cli(Some(&root), &["kv", "put", &path, &format!("pw=v{i}")]);
        if o.status.success() {
            acknowledged.push(i);
        } else {
            refused += 1;
            let err = stderr(&o);
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(!err.contains("pg-test-password"), "{err}");
        }
        i += 1;
    }
    restart.join().unwrap();
    eprintln!("{} writes acknowledged, {refused} refused while PostgreSQL restarted", acknowledged.len());
    assert!(refused > 0, "no write met the outage: the test did not test it");
    // The gateway serves again by itself: the last writes went through.
    assert!(acknowledged.last() == Some(&(i - 1)), "the last write after the restart failed");
    for n in &acknowledged {
        assert_eq!(secret_value(&s, &root, &format!("secret/restart/s{n}")), format!("v{n}"), "s{n}");
    }
    stop(s);
}
