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
    assert!(e.contains("must be 1-63 of a-z"), "{e}");
    let e = refused(Settings { max_connections: 0, ..settings(pg.url("localhost", "disable"), None) }).await;
    assert!(e.contains("max_connections"), "{e}");
    // A wrong password: the server's answer, and never the password.
    let url = pg.url("localhost", "disable").replace(PASSWORD, "wrong-password");
    let e = refused(settings(url, None)).await;
    assert!(e.contains("28P01") && !e.contains("wrong-password"), "{e}");
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
