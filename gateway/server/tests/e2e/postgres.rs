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
    pg_block(pg, "kb_ha").replace(
        "max_connections = 4",
        "max_connections = 4\n leader_lease = \"2s\"\n feed_poll_interval = \"50ms\"\n feed_max_lag = \"1s\"",
    )
}

fn node_status(s: &Server) -> serde_json::Value {
    json(&s.cli(None, &["operator", "status", "-o", "json"]))
}

/// Polls `f` every 20 ms for up to `limit`: how long it took to hold.
fn within(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

fn put(s: &Server, token: &str, path: &str, value: &str) {
    let o = s.cli(Some(token), &["kv", "put", path, &format!("pw={value}")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Three nodes on one table: every node serves, exactly one leads. What one
/// node commits reaches the others' caches through the change feed within
/// the measured lag: a changed secret, a revoked token, a changed policy,
/// a new mount, a rotated keyring. (a) The leader is killed: another leads
/// within the lease plus 5 s, with every acknowledged write. (b) The new
/// leader is paused past its lease and a third takes over; resumed, it no
/// longer leads, never serves what changed while it slept, and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_one_leads_and_caches_follow_the_feed() {
    use std::time::{Duration, Instant};
    let pg = Postgres::start();
    let block = leased_block(&pg);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let on = |i: usize| Server::with_storage_on(dirs[i].path(), Server::free_port(), &block);
    let a = on(0);
    let (root, key) = init_unseal(&a);
    let (b, c) = (on(1), on(2));
    unseal(&b, &key);
    unseal(&c, &key);
    let leads = |s: &Server| node_status(s)["leader"].as_bool().unwrap_or(false);
    assert!(within(Duration::from_secs(5), || leads(&a)).is_some(), "the first node never led");
    assert!(!leads(&b) && !leads(&c), "two nodes lead");
    let states = member_states(&b, &root);
    assert_eq!(states.iter().filter(|s| s.1).count(), 3, "{states:?}");
    assert_eq!(states.iter().filter(|s| s.0 == "leader").count(), 1, "{states:?}");
    assert_eq!(states.iter().filter(|s| s.0 == "standby").count(), 2, "{states:?}");
    let st = node_status(&c);
    assert_eq!(st["leader_address"], node_status(&a)["leader_address"]);
    // The reconciler's status and runs, asked of a standby, are answered by
    // the leader (forwarded with the caller's token, which it checks).
    let o = c.cli(Some(&root), &["sync", "status", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = b.cli(Some(&root), &["sync", "run", "--wait", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = b.cli(Some("not-a-token"), &["sync", "status"]);
    assert!(!o.status.success(), "a bad token's status was answered");
    // A token without `read` on sys/sync/status is refused by the leader,
    // not served with the forwarding node's authority.
    let o = a.cli(Some(&root), &["token", "create", "-o", "json"]);
    let plain = json(&o)["token"].as_str().unwrap().to_string();
    let o = c.cli(Some(&plain), &["sync", "status"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(st["feed_age_ms"].as_u64().unwrap() < 1000, "{st}");

    // A write on any node reads back on every node.
    let nodes = [&a, &b, &c];
    for (i, w) in nodes.iter().enumerate() {
        put(w, &root, &format!("secret/ha/w{i}"), &format!("v{i}"));
    }
    for r in nodes {
        for i in 0..3 {
            assert_eq!(secret_value(r, &root, &format!("secret/ha/w{i}")), format!("v{i}"));
        }
    }
    let mut lags = Vec::new();
    // A value cached on B changes on C.
    put(&c, &root, "secret/ha/w1", "changed");
    let lag = within(Duration::from_secs(3), || secret_value(&b, &root, "secret/ha/w1") == "changed");
    lags.push(("secret", lag.expect("B kept serving the old value")));
    // A token revoked on A stops working on B and C.
    let o = a.cli_stdin(
        Some(&root),
        &["policy", "write", "reader", "-"],
        "path \"secret/*\" { capabilities = [\"read\"] }",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = |s: &Server| {
        let o = s.cli(Some(&root), &["token", "create", "--policy", "reader", "-o", "json"]);
        json(&o)["token"].as_str().unwrap().to_string()
    };
    let t = token(&a);
    let reads = |s: &Server, t: &str| s.cli(Some(t), &["kv", "get", "secret/ha/w0"]).status.success();
    assert!(reads(&b, &t) && reads(&c, &t), "the new token does not read on the other nodes");
    let o = a.cli(Some(&root), &["token", "revoke", &t]);
    assert!(o.status.success(), "{}", stderr(&o));
    let revoked = Instant::now();
    assert!(within(Duration::from_secs(3), || !reads(&b, &t)).is_some(), "B honours a revoked token");
    assert!(within(Duration::from_secs(3), || !reads(&c, &t)).is_some(), "C honours a revoked token");
    lags.push(("revoked token", revoked.elapsed()));
    // A policy narrowed on A stops granting on B.
    let t2 = token(&c);
    assert!(reads(&b, &t2));
    let o =
        a.cli_stdin(Some(&root), &["policy", "write", "reader", "-"], "path \"other/*\" { capabilities = [\"read\"] }");
    assert!(o.status.success(), "{}", stderr(&o));
    let lag = within(Duration::from_secs(3), || !reads(&b, &t2));
    lags.push(("policy", lag.expect("B kept granting a narrowed policy")));
    // A mount enabled on A is used on B and C.
    let o = a.cli(Some(&root), &["mount", "enable", "--type", "local", "other/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lag =
        within(Duration::from_secs(3), || b.cli(Some(&root), &["kv", "put", "other/x", "pw=on-b"]).status.success());
    lags.push(("mount", lag.expect("B never saw the new mount")));
    let on_c = within(Duration::from_secs(3), || c.cli(Some(&root), &["kv", "get", "other/x"]).status.success());
    assert!(on_c.is_some(), "C never saw the new mount");
    assert_eq!(secret_value(&c, &root, "other/x"), "on-b");
    // A keyring rotated on A: B writes under the new term, C reads it.
    let term = |s: &Server| json(&s.cli(Some(&root), &["operator", "key-status", "-o", "json"]))["term"].as_u64();
    let o = a.cli(Some(&root), &["operator", "rotate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lag = within(Duration::from_secs(3), || term(&b) == Some(2) && term(&c) == Some(2));
    lags.push(("keyring", lag.expect("the rotated keyring did not reach B and C")));
    put(&b, &root, "secret/ha/after-rotate", "r");
    assert_eq!(secret_value(&c, &root, "secret/ha/after-rotate"), "r");
    eprintln!("change feed, from a commit on one node to its effect on another (poll 50 ms): {lags:?}");

    // (a) The leader is killed; writes go on on B.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let took = within(Duration::from_secs(2 + 5), || leads(&b) || leads(&c));
    let took = took.expect("no node led within the lease plus 5 s");
    eprintln!("failover after SIGKILL: a new leader in {:?} (lease 2 s)", killed.elapsed().min(took));
    drop(a);
    for r in [&b, &c] {
        for i in 0..3 {
            let want = if i == 1 { "changed".to_string() } else { format!("v{i}") };
            assert_eq!(secret_value(r, &root, &format!("secret/ha/w{i}")), want);
        }
    }
    // (b) The leader is paused past its lease; the other takes over.
    let (paused, other) = if leads(&b) { (&b, &c) } else { (&c, &b) };
    assert_eq!(secret_value(paused, &root, "secret/ha/w2"), "v2"); // cached there
    let epoch = node_status(other)["epoch"].as_u64().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(paused.child.id() as i32, libc::SIGSTOP) };
    assert!(within(Duration::from_secs(2 + 5), || leads(other)).is_some(), "the other node never took over");
    assert!(node_status(other)["epoch"].as_u64().unwrap() > epoch);
    put(other, &root, "secret/ha/w2", "while-paused");
    // SAFETY: as above.
    unsafe { libc::kill(paused.child.id() as i32, libc::SIGCONT) };
    // Never the value from before the pause: refused until the node has
    // read the feed, then the new one.
    let mut served = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !served {
        let o = paused.cli(Some(&root), &["kv", "get", "-o", "json", "secret/ha/w2"]);
        if o.status.success() {
            assert_eq!(json(&o)["data"]["pw"], "while-paused", "a resumed node served a stale value");
            served = true;
        }
    }
    assert!(served, "the resumed node never served again");
    assert!(within(Duration::from_secs(3), || !leads(paused)).is_some(), "the resumed node still claims the lead");
    assert!(leads(other));
    put(paused, &root, "secret/ha/by-resumed", "ok");
    assert_eq!(secret_value(other, &root, "secret/ha/by-resumed"), "ok");

    // A node that cannot follow the feed past feed_max_lag (1 s) refuses
    // even what it has cached, and serves again once it can.
    pg.stop();
    let refused = within(Duration::from_secs(4), || {
        let o = other.cli(Some(&root), &["kv", "get", "secret/ha/by-resumed"]);
        !o.status.success() && stderr(&o).contains("change feed")
    });
    let refused = refused.expect("a node that cannot follow the feed went on serving");
    eprintln!("feed unreachable: requests refused after {refused:?} (feed_max_lag 1 s)");
    pg.start_again();
    assert!(
        within(Duration::from_secs(10), || secret_value(other, &root, "secret/ha/by-resumed") == "ok").is_some(),
        "the node did not serve again once PostgreSQL was back"
    );
}

/// Each node's audit devices keep their own chain: a file device enabled on
/// one node with `{node}` in its path writes one file per node, each
/// verifies against its own node's checkpoint (asked of any node with
/// `--node`), and not against another's. A second node with a node_id a
/// live node uses does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_keeps_its_own_audit_chain() {
    let pg = Postgres::start();
    let block = leased_block(&pg).replace("kb_ha", "kb_audit");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let logs = tempfile::tempdir().unwrap();
    let a = Server::with_storage(dirs[0].path(), &format!("node_id = \"kb-a\"\n{block}"));
    let (root, key) = init_unseal(&a);
    let b = Server::with_storage(dirs[1].path(), &format!("node_id = \"kb-b\"\n{block}"));
    unseal(&b, &key);
    let template = logs.path().join("audit-{node}.log");
    let o = a.cli(Some(&root), &["audit", "enable", "file", &format!("file_path={}", template.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (log_a, log_b) = (logs.path().join("audit-kb-a.log"), logs.path().join("audit-kb-b.log"));
    // B starts the device once the feed tells it, and records its own requests.
    let started = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        log_b.exists()
    });
    assert!(started, "B never started the device A enabled");
    for (i, s) in [&a, &b].iter().enumerate() {
        put(s, &root, &format!("secret/audited/{i}"), "v");
    }
    let on_b = std::fs::read_to_string(&log_b).unwrap();
    assert!(on_b.contains("secret/data/audited/1") && !on_b.contains("secret/data/audited/0"), "{on_b}");
    let verify = |via: &Server, file: &Path, node: Option<&str>| {
        let mut args = vec!["audit", "verify", "-o", "json", file.to_str().unwrap()];
        if let Some(n) = node {
            args.extend(["--node", n]);
        }
        via.cli(Some(&root), &args)
    };
    // Each file against its own node's chain, asked of either node (once
    // that node wrote a checkpoint: a verify through it writes one).
    for (via, file, node) in
        [(&a, &log_a, None), (&b, &log_a, Some("kb-a")), (&b, &log_b, None), (&a, &log_b, Some("kb-b"))]
    {
        let o = verify(via, file, node);
        assert!(o.status.success(), "{}: {} {}", file.display(), stdout(&o), stderr(&o));
        assert_eq!(json(&o)["intact"], true);
    }
    // Not against another node's.
    let o = verify(&b, &log_a, None);
    assert!(!o.status.success(), "A's file verified against B's chain: {}", stdout(&o));
    let o = verify(&b, &log_a, Some("kb-nobody"));
    assert!(!o.status.success() && stderr(&o).contains("kb-nobody"), "{}", stderr(&o));
    // A third node claiming B's id is refused.
    let mut dup = std::process::Command::new(BIN)
        .args(["server", "--config"])
        .arg({
            let path = dirs[2].path().join("dup.hcl");
            std::fs::write(
                &path,
                format!(
                    "node_id = \"kb-b\"\nlistener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_disable = true\n}}\n{block}\ndisable_mlock = true\n"
                ),
            )
            .unwrap();
            path
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = crate::harness::blocking(move || {
        let status = dup.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(dup.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    });
    assert!(!out.0.success() && out.1.contains("node_id \"kb-b\" is in use"), "{out:?}");
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
