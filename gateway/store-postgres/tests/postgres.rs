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

/// Runs `f` as leader work on `store`.
async fn lw<F: std::future::Future>(store: &Arc<dyn Physical>, f: F) -> F::Output {
    keybridge_barrier::leader_work::scope(store.clone(), f).await
}

fn put(key: &str) -> Batch {
    Batch { checks: vec![], ops: vec![Op::Put { key: key.into(), value: b"v".to_vec() }] }
}

/// One node leads at a time; a standby's leader work cannot commit (its
/// requests can); a leader that stops renewing (as one paused past its
/// lease) loses the lead to another at a higher epoch, and its next leader
/// commit, or check before an external call, is refused as fenced, after
/// which it knows it no longer leads; a node that steps down hands over at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_leads_and_a_deposed_leader_is_fenced() {
    use std::time::Duration;
    let pg = Postgres::start();
    let url = pg.url("localhost", "disable");
    let a = Arc::new(PostgresStore::connect(&settings(url.clone(), None)).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&settings(url, None)).await.unwrap());
    let (pa, pb): (Arc<dyn Physical>, Arc<dyn Physical>) = (a.clone(), b.clone());
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
    lw(&pa, a.commit(put("by-a"))).await.unwrap();
    lw(&pa, keybridge_barrier::leader_work::check()).await.unwrap();
    // A standby never commits leader work, nor starts an external call...
    assert!(matches!(lw(&pb, b.commit(put("by-b"))).await, Err(keybridge_barrier::Error::Fenced { epoch: 0 })));
    assert!(matches!(
        lw(&pb, keybridge_barrier::leader_work::check()).await,
        Err(keybridge_barrier::Error::Fenced { epoch: 0 })
    ));
    assert!(b.get("by-b").await.unwrap().is_none());
    // ...but serves requests.
    b.commit(put("request-on-b")).await.unwrap();
    b.fence_check().await.unwrap();
    // Renewals keep the lead past the lease time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.try_lead(ttl).await.unwrap(), Some(1));
        assert_eq!(b.try_lead(ttl).await.unwrap(), None);
    }
    // A stops renewing; once its lease expired, B takes over at epoch 2.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(b.try_lead(ttl).await.unwrap(), Some(2));
    lw(&pb, b.commit(put("by-b"))).await.unwrap();
    // A, resumed, still believes it leads; its leader commit is fenced and
    // it steps down.
    assert_eq!(a.epoch(), Some(1));
    let e = lw(&pa, a.commit(put("late-by-a"))).await.unwrap_err();
    assert!(matches!(e, keybridge_barrier::Error::Fenced { epoch: 1 }), "{e}");
    assert!(e.to_string().contains("stepped down"), "{e}");
    assert_eq!(a.epoch(), None);
    assert!(a.get("late-by-a").await.unwrap().is_none());
    assert_eq!(a.try_lead(ttl).await.unwrap(), None);
    assert!(matches!(
        lw(&pa, keybridge_barrier::leader_work::check()).await,
        Err(keybridge_barrier::Error::Fenced { epoch: 0 })
    ));
    lw(&pb, keybridge_barrier::leader_work::check()).await.unwrap();
    // Stepping down hands over without waiting for the lease.
    b.step_down().await.unwrap();
    assert!(matches!(
        lw(&pb, keybridge_barrier::leader_work::check()).await,
        Err(keybridge_barrier::Error::Fenced { .. })
    ));
    assert_eq!(a.try_lead(ttl).await.unwrap(), Some(3));
    assert_eq!(b.epoch(), None);
}

/// Every commit reaches a following node: another node's keys are dropped
/// from its cache, and every key (its own too) is handed to the caches
/// above before the feed counts as followed; an import drops everything;
/// what the caches above could not apply is applied again, as everything,
/// and until it is the feed does not count as followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_drops_what_another_node_changed() {
    use keybridge_store_postgres::Change;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let pg = Postgres::start();
    let url = pg.url("localhost", "disable");
    let a = Arc::new(PostgresStore::connect(&settings(url.clone(), None)).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&settings(url, None)).await.unwrap());
    a.commit(put("k")).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..])); // cached on b now
    // Not following yet: b's cache is stale, but its leader work reads the
    // database.
    a.commit(Batch { checks: vec![], ops: vec![Op::Put { key: "k".into(), value: b"u".to_vec() }] }).await.unwrap();
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]), "b was not caching: the test tests nothing");
    let pb: Arc<dyn Physical> = b.clone();
    assert_eq!(lw(&pb, b.get("k")).await.unwrap().as_deref(), Some(&b"u"[..]), "leader work read the cache");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let failing = Arc::new(AtomicBool::new(false));
    let f2 = failing.clone();
    let follower = tokio::spawn(b.clone().follow(Duration::from_millis(20), move |c| {
        let (tx, failing) = (tx.clone(), f2.clone());
        async move {
            let ok = !failing.load(Ordering::SeqCst);
            let _ = tx.send((c, ok));
            ok
        }
    }));
    // The next change that satisfies `want`.
    let mut next = async |want: &dyn Fn(&Change) -> bool| loop {
        let (c, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if want(&c) {
            return c;
        }
    };
    let has = |c: &Change, k: &str| matches!(c, Change::Keys(keys) | Change::Own(keys) if keys.iter().any(|x| x == k));
    while b.feed_age().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B's own commits reach its caches above too.
    b.commit(put("own")).await.unwrap();
    next(&|c| matches!(c, Change::Own(k) if k.iter().any(|x| x == "own"))).await;
    a.commit(Batch { checks: vec![], ops: vec![Op::Put { key: "k".into(), value: b"w".to_vec() }] }).await.unwrap();
    next(&|c| has(c, "k")).await;
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"w"[..]), "b served its stale cache");
    assert!(b.feed_age().unwrap() < Duration::from_secs(2));
    assert!(b.feed_lag() < Duration::from_secs(5));
    // The caches above fail to apply a change: the feed stops counting as
    // followed, and everything is applied again until it goes through.
    failing.store(true, Ordering::SeqCst);
    a.commit(put("k2")).await.unwrap();
    next(&|c| has(c, "k2")).await;
    next(&|c| *c == Change::Everything).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.feed_age().unwrap() >= Duration::from_millis(250), "the feed counted as followed while failing");
    failing.store(false, Ordering::SeqCst);
    next(&|c| *c == Change::Everything).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b.feed_age().unwrap() < Duration::from_millis(100));
    // An import replaces the table: everything.
    let a2 = a.clone();
    tokio::task::spawn_blocking(move || a2.import(&mut vec![Ok(("x".to_string(), b"1".to_vec()))].into_iter()))
        .await
        .unwrap()
        .unwrap();
    next(&|c| *c == Change::Everything).await;
    assert!(b.get("k").await.unwrap().is_none());
    follower.abort();
}

/// Gap safety against PostgreSQL's own ordering: a transaction takes its
/// feed number, another takes the next and commits first; the follower
/// sees the second, then the first once it commits. Then many writers on
/// two nodes commit at once (with a pause before each COMMIT, so numbers
/// commit out of order) while a third node follows: it is told every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_misses_no_commit_that_lands_out_of_order() {
    use keybridge_store_postgres::Change;
    use std::collections::BTreeSet;
    use std::time::Duration;
    let pg = Postgres::start();
    let url = pg.url("localhost", "disable");
    let follower = Arc::new(PostgresStore::connect(&settings(url.clone(), None)).await.unwrap());
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let s2 = seen.clone();
    let task = tokio::spawn(follower.clone().follow(Duration::from_millis(5), move |c| {
        let seen = s2.clone();
        async move {
            match c {
                Change::Keys(k) | Change::Own(k) => seen.lock().unwrap().extend(k),
                Change::Everything => panic!("nothing here asks for everything"),
            }
            true
        }
    }));
    while follower.feed_age().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two raw transactions writing feed rows as a commit does.
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    let (mut c1, mut c2) = (connect().await, connect().await);
    let insert = format!("INSERT INTO \"{DEFAULT_TABLE}_changes\" (origin, keys) VALUES (1, $1)");
    let t1 = c1.transaction().await.unwrap();
    t1.execute(&insert, &[&vec![b"first".to_vec()]]).await.unwrap();
    let t2 = c2.transaction().await.unwrap();
    t2.execute(&insert, &[&vec![b"second".to_vec()]]).await.unwrap();
    t2.commit().await.unwrap();
    let wait_for = |key: &'static str| {
        let seen = seen.clone();
        async move {
            for _ in 0..500 {
                if seen.lock().unwrap().contains(key) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(wait_for("second").await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!seen.lock().unwrap().contains("first"));
    t1.commit().await.unwrap();
    assert!(wait_for("first").await, "the number committed late was skipped");

    // Many writers, out of order.
    let mut writers = Vec::new();
    for node in 0..2 {
        let store = Arc::new(PostgresStore::connect(&settings(url.clone(), None)).await.unwrap());
        for w in 0..6 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..60 {
                    let key = format!("n{node}/w{w}/{i}");
                    store.commit(put(&key)).await.unwrap();
                }
            }));
        }
    }
    // Raw writers that hold their number for a while before committing.
    for w in 0..4 {
        let url = url.clone();
        let insert = insert.clone();
        writers.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            for i in 0..20 {
                let t = c.transaction().await.unwrap();
                t.execute(&insert, &[&vec![format!("slow{w}/{i}").into_bytes()]]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(7 * (w + 1))).await;
                t.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for node in 0..2 {
        for w in 0..6 {
            for i in 0..60 {
                expected.insert(format!("n{node}/w{w}/{i}"));
            }
        }
    }
    for w in 0..4 {
        for i in 0..20 {
            expected.insert(format!("slow{w}/{i}"));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<String> = expected.difference(&seen.lock().unwrap()).cloned().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never told of {} keys, e.g. {:?}",
            missing.len(),
            &missing[..3.min(missing.len())]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
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
