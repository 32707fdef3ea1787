//! The PostgreSQL store against a real PostgreSQL (the machine's server
//! binaries, started by the test): the physical store conformance suite
//! over TLS, the TLS and settings checks, and the entry cache.

use std::sync::Arc;

use keybridge_barrier::{Batch, Op, Physical};
use keybridge_store_postgres::{DEFAULT_TABLE, PostgresStore, Settings};
use keybridge_testservers::postgres::{PASSWORD, Postgres};

fn settings(url: String, ca: Option<std::path::PathBuf>) -> Settings {
    Settings {
        connection_url: url.into(),
        table: DEFAULT_TABLE.into(),
        max_connections: 8,
        tls_ca_file: ca,
        cache_bytes: 1 << 20,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_physical_store_conformance_suite_passes_over_tls() {
    let pg = Postgres::start();
    let store =
        PostgresStore::connect(&settings(pg.url("localhost", "verify-full"), Some(pg.ca_file()))).await.unwrap();
    assert_eq!(store.kind(), "postgresql");
    let store = Arc::new(store);
    keybridge_barrier::conformance::run(store.clone()).await;
    // The store's connections (open while it lives) are TLS.
    let ssl = pg.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    assert!(ssl.trim().parse::<u32>().unwrap() >= 1, "{ssl}");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_settings_are_checked_before_serving() {
    let pg = Postgres::start();
    let refused = |s: Settings| async move {
        match PostgresStore::connect(&s).await {
            Ok(_) => panic!("connected with settings that should be refused"),
            Err(e) => e.to_string(),
        }
    };
    // A CA that did not sign the server's certificate.
    let other = std::env::temp_dir().join(format!("kb-other-ca-{}.pem", std::process::id()));
    std::fs::write(&other, keybridge_testservers::tls::test_certs("someone-else").ca_pem).unwrap();
    let e = refused(settings(pg.url("localhost", "verify-full"), Some(other.clone()))).await;
    assert!(e.contains("cannot connect"), "{e}");
    std::fs::remove_file(&other).ok();
    let e = refused(settings(pg.url("localhost", "verify-full"), None)).await;
    assert!(e.contains("needs tls_ca_file"), "{e}");
    for mode in ["require", "prefer", "verify-ca"] {
        let e = refused(settings(pg.url("localhost", mode), Some(pg.ca_file()))).await;
        assert!(e.contains(&format!("sslmode={mode} is not accepted")), "{e}");
    }
    let e = refused(settings(pg.url("localhost", "verify-full").replace("?sslmode=verify-full", ""), None)).await;
    assert!(e.contains("must say sslmode"), "{e}");
    let e =
        refused(Settings { table: "x; drop table y".into(), ..settings(pg.url("localhost", "disable"), None) }).await;
    assert!(e.contains("must be 1-55 of a-z"), "{e}");
    let e = refused(Settings { max_connections: 0, ..settings(pg.url("localhost", "disable"), None) }).await;
    assert!(e.contains("max_connections"), "{e}");
    // A wrong password: the server's answer, and never the password.
    let url = pg.url("localhost", "disable").replace(PASSWORD, "wrong-password");
    let e = refused(settings(url, None)).await;
    assert!(e.contains("28P01") && !e.contains("wrong-password"), "{e}");
    // A table named like a keyword is a table too.
    let s = Settings { table: "user".into(), ..settings(pg.url("127.0.0.1", "disable"), None) };
    let store = PostgresStore::connect(&s).await.unwrap();
    store.commit(Batch { checks: vec![], ops: vec![Op::Put { key: "k".into(), value: b"v".to_vec() }] }).await.unwrap();
    assert_eq!(store.list("", None, 10).await.unwrap(), ["k"]);
    // Plaintext where asked for, and the table where named.
    let s = Settings { table: "other_table".into(), ..settings(pg.url("127.0.0.1", "disable"), None) };
    let store = PostgresStore::connect(&s).await.unwrap();
    store.commit(Batch { checks: vec![], ops: vec![Op::Put { key: "k".into(), value: b"v".to_vec() }] }).await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM other_table").trim(), "1");
}

/// A cached read issues no SQL statement: with the database stopped, a key
/// read before still answers, one never read fails; and once the database
/// is back, the store serves again (the pool replaces dead connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_need_no_database_and_the_store_reconnects() {
    let pg = Postgres::start();
    let store = PostgresStore::connect(&settings(pg.url("localhost", "disable"), None)).await.unwrap();
    let ops =
        vec![Op::Put { key: "hot".into(), value: b"1".to_vec() }, Op::Put { key: "cold".into(), value: b"2".to_vec() }];
    store.commit(Batch { checks: vec![], ops }).await.unwrap();
    assert_eq!(store.get("hot").await.unwrap().unwrap(), b"1");
    pg.stop();
    assert_eq!(store.get("hot").await.unwrap().unwrap(), b"1");
    let e = store.get("cold").await.unwrap_err().to_string();
    assert!(e.contains("PostgreSQL"), "{e}");
    pg.start_again();
    let mut served = false;
    for _ in 0..50 {
        if let Ok(Some(v)) = store.get("cold").await {
            assert_eq!(v, b"2");
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "the store did not serve again after the database came back");
}

fn put(key: &str) -> Batch {
    Batch { checks: vec![], ops: vec![Op::Put { key: key.into(), value: b"v".to_vec() }] }
}

/// One node leads at a time; a standby cannot commit; a leader that stops
/// renewing (as one paused past its lease) loses the lead to another at a
/// higher epoch, and its next commit is refused as fenced, after which it
/// knows it no longer leads; a node that steps down hands over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_and_a_deposed_leader_is_fenced() {
    use std::time::Duration;
    let pg = Postgres::start();
    let url = pg.url("localhost", "disable");
    let a = PostgresStore::connect(&settings(url.clone(), None)).await.unwrap();
    let b = PostgresStore::connect(&settings(url, None)).await.unwrap();
    a.lead_as("node-a", "https://a:8200");
    b.lead_as("node-b", "https://b:8200");
    let ttl = Duration::from_millis(800);
    assert_eq!(a.try_lead(ttl).await.unwrap(), Some(1));
    assert_eq!(b.try_lead(ttl).await.unwrap(), None);
    let info = b.leader().await.unwrap();
    assert_eq!(
        (info.node.as_str(), info.api_addr.as_str(), info.epoch, info.live),
        ("node-a", "https://a:8200", 1, true)
    );
    a.commit(put("by-a")).await.unwrap();
    // A standby never commits.
    assert!(matches!(b.commit(put("by-b")).await, Err(keybridge_barrier::Error::Fenced { epoch: 0 })));
    assert!(b.get("by-b").await.unwrap().is_none());
    // Renewals keep the lead past the lease time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.try_lead(ttl).await.unwrap(), Some(1));
        assert_eq!(b.try_lead(ttl).await.unwrap(), None);
    }
    // A stops renewing; once its lease expired, B takes over at epoch 2.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(b.try_lead(ttl).await.unwrap(), Some(2));
    b.commit(put("by-b")).await.unwrap();
    // A, resumed, still believes it leads; its commit is fenced and it
    // steps down.
    assert_eq!(a.epoch(), Some(1));
    let e = a.commit(put("late-by-a")).await.unwrap_err();
    assert!(matches!(e, keybridge_barrier::Error::Fenced { epoch: 1 }), "{e}");
    assert!(e.to_string().contains("stepped down"), "{e}");
    assert_eq!(a.epoch(), None);
    assert!(a.get("late-by-a").await.unwrap().is_none());
    assert_eq!(a.try_lead(ttl).await.unwrap(), None);
    // Stepping down hands over without waiting for the lease.
    b.step_down().await.unwrap();
    assert_eq!(a.try_lead(ttl).await.unwrap(), Some(3));
    assert_eq!(b.epoch(), None);
}

/// Of eight nodes racing for an expired lease, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_nodes_elect_exactly_one() {
    let pg = Postgres::start();
    let url = pg.url("localhost", "disable");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let s = PostgresStore::connect(&Settings { max_connections: 1, ..settings(url, None) }).await.unwrap();
            s.lead_as(&format!("node-{i}"), "");
            s.try_lead(std::time::Duration::from_secs(30)).await.unwrap()
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(e) = t.await.unwrap() {
            won.push(e);
        }
    }
    assert_eq!(won, [1]);
}
