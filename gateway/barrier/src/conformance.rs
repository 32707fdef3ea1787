//! The scenarios every [`Physical`] store must pass, run by each store's
//! tests against the real thing (redb here, PostgreSQL in its crate). Each
//! takes an empty store; [`run`] runs them all on one, in an order that
//! leaves each one's keys apart, `import` last.
//!
//! A failed expectation panics: these are test helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::physical::{Batch, Check, Op, Physical};
use crate::{Error, Result};

fn put(k: &str, v: &[u8]) -> Op {
    Op::Put { key: k.into(), value: v.to_vec() }
}

async fn commit(store: &dyn Physical, checks: Vec<Check>, ops: Vec<Op>) -> Result<()> {
    store.commit(Batch { checks, ops }).await
}

/// Every scenario, one after another, on one empty store.
pub async fn run(store: Arc<dyn Physical>) {
    batch_applies_whole_or_not_at_all(store.as_ref()).await;
    concurrent_checked_writers_see_one_winner(store.clone()).await;
    list_respects_prefix_start_limit_and_byte_order(store.as_ref()).await;
    reads_after_a_write_never_see_an_old_value(store.as_ref()).await;
    concurrent_readers_never_go_back_past_a_finished_commit(store.clone()).await;
    export_is_ordered_and_import_replaces_everything_or_nothing(store).await;
}

/// A batch is applied whole or not at all; a check of absence holds only
/// while the key is absent.
pub async fn batch_applies_whole_or_not_at_all(store: &dyn Physical) {
    commit(store, vec![], vec![put("batch/a", b"1")]).await.unwrap();
    let err = commit(
        store,
        vec![Check { key: "batch/a".into(), value: Some(b"2".to_vec()) }],
        vec![put("batch/b", b"x"), put("batch/a", b"3")],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Conflict), "{err}");
    assert_eq!(store.get("batch/a").await.unwrap().unwrap(), b"1");
    assert!(store.get("batch/b").await.unwrap().is_none());
    commit(store, vec![Check { key: "batch/b".into(), value: None }], vec![put("batch/b", b"x")]).await.unwrap();
    assert_eq!(store.get("batch/b").await.unwrap().unwrap(), b"x");
    let absent = Check { key: "batch/b".into(), value: None };
    assert!(matches!(commit(store, vec![absent], vec![put("batch/b", b"y")]).await, Err(Error::Conflict)));
    // Several checks and ops, a delete among them.
    commit(
        store,
        vec![
            Check { key: "batch/a".into(), value: Some(b"1".to_vec()) },
            Check { key: "batch/b".into(), value: Some(b"x".to_vec()) },
        ],
        vec![Op::Delete { key: "batch/a".into() }, put("batch/c", b"")],
    )
    .await
    .unwrap();
    assert!(store.get("batch/a").await.unwrap().is_none());
    assert_eq!(store.get("batch/c").await.unwrap().unwrap(), b"");
}

/// Of 32 writers that each require a key to be absent, one wins.
pub async fn concurrent_checked_writers_see_one_winner(store: Arc<dyn Physical>) {
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .commit(Batch { checks: vec![Check { key: "race".into(), value: None }], ops: vec![put("race", &[i])] })
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => wins += 1,
            Err(Error::Conflict) => {}
            Err(e) => panic!("a losing writer got {e}, not a conflict"),
        }
    }
    assert_eq!(wins, 1);
}

/// Listing: by prefix, from an inclusive start, up to a limit, in byte
/// order (which is not every collation's order).
pub async fn list_respects_prefix_start_limit_and_byte_order(store: &dyn Physical) {
    let keys = ["p/a", "p/b", "p/c", "q/a", "o", "p/B", "p/é", "p/\u{7f}", "p/z/1", "p0"];
    commit(store, vec![], keys.iter().map(|k| put(k, b"")).collect()).await.unwrap();
    assert_eq!(store.list("p/", None, 100).await.unwrap(), ["p/B", "p/a", "p/b", "p/c", "p/z/1", "p/\u{7f}", "p/é"]);
    assert_eq!(store.list("p/", Some("p/b"), 100).await.unwrap(), ["p/b", "p/c", "p/z/1", "p/\u{7f}", "p/é"]);
    assert_eq!(store.list("p/", None, 2).await.unwrap(), ["p/B", "p/a"]);
    assert_eq!(store.list("p/z/", None, 10).await.unwrap(), ["p/z/1"]);
    assert!(store.list("nothing/", None, 10).await.unwrap().is_empty());
    // A start past the prefix's keys lists nothing.
    assert!(store.list("p/", Some("p/\u{10ffff}"), 10).await.unwrap().is_empty());
}

/// A read after a commit returned sees it, cached or not; a batch whose
/// check fails changes nothing.
pub async fn reads_after_a_write_never_see_an_old_value(store: &dyn Physical) {
    commit(store, vec![], vec![put("rw", b"1")]).await.unwrap();
    for round in 0..3u8 {
        // Twice: the first read may fill a cache, the second may hit it.
        assert_eq!(store.get("rw").await.unwrap().as_deref(), Some(&[b'1' + round][..]));
        assert_eq!(store.get("rw").await.unwrap().as_deref(), Some(&[b'1' + round][..]));
        commit(store, vec![], vec![put("rw", &[b'2' + round])]).await.unwrap();
    }
    commit(store, vec![], vec![Op::Delete { key: "rw".into() }]).await.unwrap();
    assert!(store.get("rw").await.unwrap().is_none());
    commit(store, vec![], vec![put("rw", b"x")]).await.unwrap();
    assert_eq!(store.get("rw").await.unwrap().as_deref(), Some(&b"x"[..]));
    let stale = Check { key: "rw".into(), value: Some(b"other".to_vec()) };
    assert!(matches!(commit(store, vec![stale], vec![put("rw", b"y")]).await, Err(Error::Conflict)));
    assert_eq!(store.get("rw").await.unwrap().as_deref(), Some(&b"x"[..]));
}

/// Readers racing a writer never read a value older than the last commit
/// that returned before their read began (fails if a cache keeps what a
/// read that raced a commit found).
pub async fn concurrent_readers_never_go_back_past_a_finished_commit(store: Arc<dyn Physical>) {
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    commit(store.as_ref(), vec![], vec![put("k", &0u64.to_be_bytes())]).await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, committed, stop) = (store.clone(), committed.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) {
                let floor = committed.load(Ordering::Acquire);
                let v = store.get("k").await.unwrap().unwrap();
                let v = u64::from_be_bytes(v.as_slice().try_into().unwrap());
                assert!(v >= floor, "read {v} after commit {floor} had returned");
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for i in 1..=300u64 {
        commit(store.as_ref(), vec![], vec![put("k", &i.to_be_bytes())]).await.unwrap();
        committed.store(i, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
}

/// Export gives every entry in key order; an import that meets an error
/// changes nothing, one that ends replaces everything. (Both block: they
/// run on tokio's blocking pool, as the server runs them.)
pub async fn export_is_ordered_and_import_replaces_everything_or_nothing(store: Arc<dyn Physical>) {
    commit(store.as_ref(), vec![], vec![put("old", b"1")]).await.unwrap();
    let exported = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
            store
                .export(&mut |k, v| {
                    seen.push((k.to_string(), v.to_vec()));
                    Ok(())
                })
                .map(|()| seen)
        })
        .await
        .unwrap()
        .unwrap()
    };
    let keys: Vec<&str> = exported.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(keys.contains(&"old") && keys.contains(&"batch/b"));
    let (s, failed) = (store.clone(), Error::Snapshot("truncated".into()));
    let r = tokio::task::spawn_blocking(move || {
        let mut failing = vec![Ok(("new".to_string(), b"2".to_vec())), Err(failed)].into_iter();
        s.import(&mut failing)
    })
    .await
    .unwrap();
    assert!(matches!(r, Err(Error::Snapshot(m)) if m == "truncated"));
    assert!(store.get("old").await.unwrap().is_some());
    assert!(store.get("new").await.unwrap().is_none());
    let s = store.clone();
    let n = tokio::task::spawn_blocking(move || {
        let mut good = (0..1500).map(|i| Ok((format!("new/{i:04}"), vec![i as u8; 3])));
        s.import(&mut good)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 1500);
    assert!(store.get("old").await.unwrap().is_none());
    assert_eq!(store.get("new/0007").await.unwrap().unwrap(), [7, 7, 7]);
    assert_eq!(store.list("", None, 5000).await.unwrap().len(), 1500);
}
