//! The reconciler between local mounts (the cloud targets are covered by
//! the server's end-to-end tests against moto, drongo and our servers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keybridge_barrier::{Barrier, RedbStore};

use super::tests::{field, fields, hold_load};
use super::*;
use crate::Caller;
use crate::TokenRequest;
use crate::reconciler::{RuleSpec, StatusQuery};

async fn core_with_mounts(store: Arc<RedbStore>) -> (Arc<Core>, Caller) {
    let (core, t, _) = core_with_key(store).await;
    (core, t)
}

async fn core_with_key(store: Arc<RedbStore>) -> (Arc<Core>, Caller, String) {
    let core = Arc::new(Core::new(Barrier::new(store), CoreConfig::default()));
    let init = core.init(1, 1, Some("root-t"), true).await.unwrap();
    let t = Caller::token(Some("root-t"));
    for m in ["team-b/", "team-c/"] {
        core.enable_mount(&t, m, "local", "", Default::default()).await.unwrap();
    }
    (core, t, init.keys[0].to_string())
}

fn spec(name: &str, source: &str, targets: &[&str], on_conflict: &str) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        source: source.into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        on_conflict: on_conflict.into(),
        scan_interval_secs: 3600,
        ..Default::default()
    }
}

async fn state(core: &Core, target: &str) -> (String, String) {
    let st = core.sync.status(core, &StatusQuery::of("")).await.unwrap().targets;
    let s = st.iter().find(|s| s.target == target).unwrap_or_else(|| panic!("no status for {target}: {st:?}"));
    (s.state.to_string(), s.message.clone())
}

#[tokio::test]
async fn rules_are_checked_when_created() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    let bad = |s: RuleSpec, text: &'static str| {
        let core = core.clone();
        let t = Caller::token(Some("root-t"));
        async move {
            let e = core.put_sync_rule(&t, s).await.unwrap_err().to_string();
            assert!(e.contains(text), "{e:?} should mention {text:?}");
        }
    };
    bad(spec("ba", "team-b/app/", &["secret/app/"], ""), "cycle").await;
    bad(spec("ca", "team-c/", &["team-b/app/x/"], ""), "two rules may not write the same secret").await;
    bad(spec("self", "secret/", &["secret/app/"], ""), "overlaps the source").await;
    bad(spec("nomount", "secret/x/", &["nowhere/x/"], ""), "no mount serves it").await;
    bad(spec("Bad Name", "secret/x/", &["team-c/x/"], ""), "rule name").await;
    bad(spec("conf", "secret/x/", &["team-c/x/"], "sometimes"), "on_conflict").await;
    // A chain is fine: secret/app/ -> team-b/app/ -> team-c/app/.
    core.put_sync_rule(&t, spec("bc", "team-b/app/", &["team-c/app/"], "")).await.unwrap();
    // ... but closing it is a cycle.
    bad(spec("ca2", "team-c/app/", &["secret/app/"], ""), "ab -> bc").await;
    assert_eq!(core.list_sync_rules(&t).await.unwrap().len(), 2);
}

#[tokio::test]
async fn writes_replicate_and_conflicts_follow_the_rule() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    // A target secret someone else wrote.
    core.put(&t, "team-b/app/theirs", &fields(&[("v", "theirs")]), None).await.unwrap();
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "overwrite")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
    core.put(&t, "secret/app/theirs", &fields(&[("v", "ours")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "pw"), "one");
    let meta = core.describe(&t, "team-b/app/db").await.unwrap();
    assert!(meta.custom_metadata.contains_key(crate::reconciler::MARKER_TAG), "replicas are tagged");
    assert_eq!(state(&core, "team-b/app/db").await.0, "in_sync");
    // Not ours: left alone, reported.
    assert_eq!(field(&core.get(&t, "team-b/app/theirs", None).await.unwrap(), "v"), "theirs");
    let (st, msg) = state(&core, "team-b/app/theirs").await;
    assert_eq!(st, "conflict");
    assert!(msg.contains("take_over"), "{msg}");

    // Overwrite: an edit at the target is restored by the scan.
    core.put(&t, "team-b/app/db", &fields(&[("pw", "edited")]), None).await.unwrap();
    core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "pw"), "one");
    assert!(state(&core, "team-b/app/db").await.1.contains("restored"));

    // Alert: the edit stays and is reported.
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "alert")).await.unwrap();
    core.put(&t, "team-b/app/db", &fields(&[("pw", "edited")]), None).await.unwrap();
    core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "pw"), "edited");
    assert_eq!(state(&core, "team-b/app/db").await.0, "conflict");

    // Adopt: the target's value becomes a new source version.
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "adopt")).await.unwrap();
    core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(field(&core.get(&t, "secret/app/db", None).await.unwrap(), "pw"), "edited");
    assert_eq!(core.describe(&t, "secret/app/db").await.unwrap().current_version, 2);

    // Take over: the foreign secret is replaced once the rule says so.
    let mut s = spec("ab", "secret/app/", &["team-b/app/"], "overwrite");
    s.take_over = true;
    core.put_sync_rule(&t, s).await.unwrap();
    core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/theirs", None).await.unwrap(), "v"), "ours");
}

#[tokio::test]
async fn deletes_are_retained_or_propagated() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/a", &fields(&[("v", "1")]), None).await.unwrap();
    core.put(&t, "secret/app/b", &fields(&[("v", "1")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    core.delete(&t, "secret/app/a", &[], true).await.unwrap();
    core.sync_pass().await.unwrap();
    assert!(core.get(&t, "team-b/app/a", None).await.is_ok(), "retain keeps the replica");
    assert_eq!(state(&core, "team-b/app/a").await.0, "stale");
    let mut s = spec("ab", "secret/app/", &["team-b/app/"], "");
    s.delete = "propagate".into();
    core.put_sync_rule(&t, s).await.unwrap();
    core.delete(&t, "secret/app/b", &[], true).await.unwrap();
    core.sync_pass().await.unwrap();
    assert!(matches!(core.get(&t, "team-b/app/b", None).await, Err(Error::NotFound(_))));
}

/// A core on a store file at `path` with the rule `ab` (secret/app/ to
/// team-b/app/ and team-c/app/), and its unseal key: the first life of a
/// server that the test restarts.
async fn first_life(path: &std::path::Path) -> (Arc<Core>, Caller, String) {
    let (core, t, key) = core_with_key(Arc::new(RedbStore::open(path, 0).unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/", "team-c/app/"], "")).await.unwrap();
    (core, t, key)
}

/// The same store file opened again, sealed.
fn restarted(path: &std::path::Path) -> Arc<Core> {
    Arc::new(Core::new(Barrier::new(Arc::new(RedbStore::open(path, 0).unwrap())), CoreConfig::default()))
}

#[tokio::test]
async fn the_journal_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.db");
    let key = {
        let (core, t, key) = first_life(&path).await;
        // Written and journaled, never replicated: the process stops here.
        core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
        assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 1);
        core.shutdown().await;
        key
    };
    let core = restarted(&path);
    let t = Caller::token(Some("root-t"));
    assert!(matches!(core.sync_pass().await, Err(Error::Sealed)), "nothing runs while sealed");
    core.unseal(&key, false, false).await.unwrap();
    core.sync_pass().await.unwrap();
    for target in ["team-b/app/db", "team-c/app/db"] {
        assert_eq!(field(&core.get(&t, target, None).await.unwrap(), "pw"), "one", "{target}");
    }
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 0);
}

/// After a restart, before any write or scan, `sync status` lists every
/// replica from its stored record, saying it is as last recorded.
#[tokio::test]
async fn status_after_a_restart_lists_every_target_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.db");
    let key = {
        let (core, t, key) = first_life(&path).await;
        core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
        core.put(&t, "secret/app/api", &fields(&[("k", "v")]), None).await.unwrap();
        core.sync_pass().await.unwrap();
        assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().targets.len(), 4);
        core.shutdown().await;
        key
    };
    let core = restarted(&path);
    let t = Caller::token(Some("root-t"));
    core.unseal(&key, false, false).await.unwrap();
    let status = core.sync_status(&t, &StatusQuery::of("ab")).await.unwrap();
    let mut seen: Vec<(String, &str)> = status.targets.iter().map(|s| (s.target.clone(), s.state)).collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("team-b/app/api".to_string(), "in_sync"),
            ("team-b/app/db".to_string(), "in_sync"),
            ("team-c/app/api".to_string(), "in_sync"),
            ("team-c/app/db".to_string(), "in_sync"),
        ]
    );
    let db = status.targets.iter().find(|s| s.target == "team-b/app/db").unwrap();
    assert_eq!((db.source.as_str(), db.source_version), ("secret/app/db", 1));
    // In sync, as of the time its record was written.
    assert!(db.updated != crate::Timestamp::default() && db.message.is_empty(), "{db:?}");
    let written = db.updated;
    // Once this process replicates a target again, the new record says so.
    core.put(&t, "secret/app/db", &fields(&[("pw", "two")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    let status = core.sync_status(&t, &StatusQuery::of("ab")).await.unwrap();
    let db = status.targets.iter().find(|s| s.target == "team-b/app/db").unwrap();
    assert_eq!((db.state, db.source_version), ("in_sync", 2));
    assert!(db.message.is_empty() && db.updated > written, "{db:?}");
    assert_eq!(status.targets.len(), 4);
}

#[tokio::test]
async fn a_write_already_landed_is_not_written_twice() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "two")]), None).await.unwrap();
    // A crash after the write reached the target but before it was recorded:
    // the record still says pending, the target already has the value.
    let rule = core.sync_rules().await.unwrap()[0].clone();
    let key = crate::reconciler::state_key(&rule.id, "team-b/app/db");
    let mut rec = core.sync.record(&key).await.unwrap().unwrap();
    rec.pending = true;
    rec.fingerprint =
        crate::reconciler::fingerprint(&core.sync.fingerprint_key().await.unwrap(), &fields(&[("pw", "two")]));
    core.sync.save_record(&key, &rec).await.unwrap();
    core.put(&Caller::token(Some("root-t")), "team-b/app/db", &fields(&[("pw", "two")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    let meta = core.describe(&t, "team-b/app/db").await.unwrap();
    assert_eq!(meta.current_version, 2, "no second copy of version two");
    assert_eq!(state(&core, "team-b/app/db").await.0, "in_sync");
}

#[tokio::test]
async fn writes_within_the_window_go_out_as_one() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    let mut s = spec("ab", "secret/app/", &["team-b/app/"], "");
    s.coalesce_ms = 300;
    core.put_sync_rule(&t, s).await.unwrap();
    for v in ["1", "2", "3"] {
        core.put(&t, "secret/app/db", &fields(&[("v", v)]), None).await.unwrap();
    }
    let wait = core.sync_pass().await.unwrap();
    assert!(wait <= Duration::from_millis(300), "the pass asks to come back when the window closes: {wait:?}");
    // Nothing before the window closes.
    super::tests::assert_err!(core.get(&t, "team-b/app/db", None).await, Error::NotFound(_));
    tokio::time::sleep(Duration::from_millis(350)).await;
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "v"), "3");
    assert_eq!(core.describe(&t, "team-b/app/db").await.unwrap().current_version, 1, "one write for three");
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 0);
}

#[tokio::test]
async fn rotation_reaches_the_source_and_every_replica() {
    use crate::{RotateSpec, RotationState};
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/", "team-c/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("user", "app"), ("password", "old-password")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    let rotate = |field: &str, grace: u64| RotateSpec {
        path: "secret/app/db".into(),
        field: field.into(),
        length: 24,
        grace_secs: grace,
        engine: String::new(),
    };
    let e = core.rotate_secret(&t, rotate("pin", 0)).await.unwrap_err();
    assert!(e.to_string().contains("no field \"pin\""), "{e}");
    let r = core.rotate_secret(&t, rotate("", 3600)).await.unwrap();
    assert_eq!(r.copies.len(), 3);
    let e = core.rotate_secret(&t, rotate("", 0)).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "one rotation at a time: {e}");
    core.sync_pass().await.unwrap();
    let r = core.get_rotation(&t, "secret/app/db").await.unwrap();
    assert_eq!(r.state, RotationState::Retiring, "promoted, waiting out the grace period: {r:?}");
    let new = field(&core.get(&t, "secret/app/db", None).await.unwrap(), "password");
    assert_ne!(new, "old-password");
    assert_eq!(new.len(), 24);
    assert_eq!(field(&core.get(&t, "secret/app/db", None).await.unwrap(), "user"), "app");
    for replica in ["team-b/app/db", "team-c/app/db"] {
        assert_eq!(field(&core.get(&t, replica, None).await.unwrap(), "password"), new, "{replica}");
    }
    // The reconciler agrees: a full run writes nothing more.
    core.sync_run(&t, "", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(core.describe(&t, "team-b/app/db").await.unwrap().current_version, 2);
    assert_eq!(core.describe(&t, "secret/app/db").await.unwrap().current_version, 2);
}

#[tokio::test]
async fn scheduled_rotations_start_when_due() {
    use crate::{RotateSpec, RotationState};
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put(&t, "secret/app/db", &fields(&[("password", "old-password")]), None).await.unwrap();
    let spec = RotateSpec {
        path: "secret/app/db".into(),
        field: String::new(),
        length: 0,
        grace_secs: 0,
        engine: String::new(),
    };
    let e = core.schedule_rotation(&t, spec.clone(), 5).await.unwrap_err();
    assert!(e.to_string().contains("at least one minute"), "{e}");
    let s = core.schedule_rotation(&t, spec, 3600).await.unwrap().unwrap();
    assert!(s.next.secs > Timestamp::now().secs + 3500);
    core.sync_pass().await.unwrap();
    // Not due yet.
    super::tests::assert_err!(core.get_rotation(&t, "secret/app/db").await, Error::NotFound(_));
    // Make it due, as an hour passing would.
    let key = format!("sync/rotation-schedules/{}", s.path);
    let due = crate::Schedule { next: Timestamp::now(), ..s };
    let mut batch = keybridge_barrier::WriteBatch::new();
    batch.put(key, encode_json(&due));
    core.barrier.commit(batch).await.unwrap();
    core.sync_pass().await.unwrap();
    core.sync_pass().await.unwrap();
    let r = core.get_rotation(&t, "secret/app/db").await.unwrap();
    assert_eq!(r.state, RotationState::Done, "{r:?}");
    assert_ne!(field(&core.get(&t, "secret/app/db", None).await.unwrap(), "password"), "old-password");
}

/// A reconciler pass that listed the rules just before a new rule was
/// committed must not cache the old list: the new rule's secrets would
/// never be journaled or scanned.
#[tokio::test]
async fn a_rule_created_while_the_rules_load_is_not_lost() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    let (reached, release) = hold_load(&core, "rules");
    let pass = tokio::spawn({
        let core = core.clone();
        async move { core.sync_rules().await.map(|r| r.len()) }
    });
    reached.await.unwrap();
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    release.send(()).unwrap();
    // The pass began before the rule: it may or may not see it.
    pass.await.unwrap().unwrap();
    assert_eq!(core.sync_rules().await.unwrap().len(), 1, "the new rule was cached away");
    // And a write under it is journaled and replicated.
    core.put(&t, "secret/app/db", &fields(&[("password", "p")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "password"), "p");
}

/// A rule replaced (here: a second target) while a pass that loaded its old
/// settings is scanning gets its first scan with the new settings, not only
/// after its scan interval.
#[tokio::test]
async fn a_rule_changed_during_a_pass_is_scanned_again() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("password", "p")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "password"), "p");

    core.sync.reload();
    let (reached, release) = hold_load(&core, "rules");
    let pass = tokio::spawn({
        let core = core.clone();
        async move { core.sync_pass().await.map(|_| ()) }
    });
    // The pass holds the old rule; the rule gains a target meanwhile.
    reached.await.unwrap();
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/", "team-c/app/"], "")).await.unwrap();
    release.send(()).unwrap();
    pass.await.unwrap().unwrap();
    core.sync_pass().await.unwrap();
    let copy = core.get(&t, "team-c/app/db", None).await;
    assert!(copy.is_ok(), "the new target was not scanned: {:?}", copy.map(|_| ()).unwrap_err());
}

async fn token_with(core: &Core, root: &Caller, name: &str, policy: &str) -> String {
    core.put_policy(root, name, policy).await.unwrap();
    let req = TokenRequest { policies: vec![name.into()], ..Default::default() };
    core.create_token(root, req).await.unwrap().0.to_string()
}

/// A rule acts later with the authority its writer was checked for: a
/// writer who cannot read a folder cannot have the reconciler copy it.
#[tokio::test]
async fn a_rule_carries_only_its_writers_authority() {
    let (core, root) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put(&root, "secret/prod/db", &fields(&[("pw", "prod")]), None).await.unwrap();
    core.put(&root, "secret/app/db", &fields(&[("pw", "app")]), None).await.unwrap();
    let policy = r#"
path "secret/data/app/*" { capabilities = ["read"] }
path "secret/metadata/app/*" { capabilities = ["list"] }
path "team-b/data/*" { capabilities = ["create", "update", "read"] }
path "team-b/metadata/*" { capabilities = ["list"] }
path "sys/sync/rules/*" { capabilities = ["update", "read"] }
"#;
    let tok = token_with(&core, &root, "rule-writer", policy).await;
    let w = Caller::token(Some(tok.as_str()));

    let denied = |s: RuleSpec, why: &'static str| {
        let (core, tok) = (core.clone(), tok.clone());
        async move {
            let e = core.put_sync_rule(&Caller::token(Some(tok.as_str())), s).await.unwrap_err();
            assert!(matches!(&e, Error::PermissionDenied(m) if m.contains(why)), "{e} should name {why:?}");
        }
    };
    // The source: read and list on everything below it.
    denied(spec("steal", "secret/prod/", &["team-b/prod/"], ""), "read on secret/data/prod/*").await;
    denied(spec("steal", "secret/", &["team-b/all/"], ""), "read on secret/data/*").await;
    // The targets: create and update below each.
    denied(spec("spray", "secret/app/", &["team-c/app/"], ""), "create on team-c/data/app/*").await;
    // adopt, take_over, propagate: more, and sudo on the rule.
    denied(spec("adopt", "secret/app/", &["team-b/app/"], "adopt"), "update on secret/data/app/*").await;
    let mut take = spec("take", "secret/app/", &["team-b/app/"], "");
    take.take_over = true;
    denied(take, "sudo on sys/sync/rules/take").await;
    let mut prop = spec("prop", "secret/app/", &["team-b/app/"], "");
    prop.delete = "propagate".into();
    denied(prop, "delete on team-b/metadata/app/*").await;
    assert!(core.list_sync_rules(&root).await.unwrap().is_empty(), "a refused rule was stored");
    core.sync_pass().await.unwrap();
    assert!(matches!(core.get(&root, "team-b/prod/db", None).await, Err(Error::NotFound(_))), "values were copied");

    // What the writer holds: allowed, and the rule says what was checked.
    let rule = core.put_sync_rule(&w, spec("ok", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    assert_eq!(
        rule.authorizations,
        vec![
            "read on secret/data/app/*",
            "list on secret/metadata/app/*",
            "create on team-b/data/app/*",
            "update on team-b/data/app/*"
        ]
    );
    assert!(rule.written_by.starts_with("acc."), "{}", rule.written_by);
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&root, "team-b/app/db", None).await.unwrap(), "pw"), "app");

    // A deny on one secret below the source folder refuses the folder.
    core.put_policy(
        &root,
        "rule-writer",
        &format!("{policy}\npath \"secret/data/app/locked\" {{ capabilities = [\"deny\"] }}\n"),
    )
    .await
    .unwrap();
    denied(spec("ok", "secret/app/", &["team-b/app/"], ""), "read on secret/data/app/*").await;
}

/// A rotation writes the secret: `update` on `sys/sync/rotate/<path>` is not
/// enough without `update` on the secret itself; the same for schedules.
#[tokio::test]
async fn rotations_need_update_on_the_secret_itself() {
    use crate::RotateSpec;
    let (core, root) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put(&root, "secret/app/db", &fields(&[("password", "old-password")]), None).await.unwrap();
    let policy = r#"
path "sys/sync/rotate/*" { capabilities = ["update", "read"] }
path "secret/data/app/*" { capabilities = ["read"] }
"#;
    let tok = token_with(&core, &root, "rotator", policy).await;
    let w = Caller::token(Some(tok.as_str()));
    let rotate = || RotateSpec {
        path: "secret/app/db".into(),
        field: String::new(),
        length: 24,
        grace_secs: 0,
        engine: String::new(),
    };
    let e = core.rotate_secret(&w, rotate()).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("update on secret/data/app/db")), "{e}");
    let e = core.schedule_rotation(&w, rotate(), 3600).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("update on secret/data/app/db")), "{e}");
    assert!(matches!(core.get_rotation(&root, "secret/app/db").await, Err(Error::NotFound(_))));
    assert_eq!(field(&core.get(&root, "secret/app/db", None).await.unwrap(), "password"), "old-password");
    core.put_policy(
        &root,
        "rotator",
        &format!("{policy}\npath \"secret/data/app/db\" {{ capabilities = [\"update\"] }}\n"),
    )
    .await
    .unwrap();
    core.rotate_secret(&w, rotate()).await.unwrap();
}

/// A rotation reaches the replicas the rule owns, never a secret at a target
/// that the rule left alone as someone else's (that would be a take-over
/// without `take_over`, by anyone who may rotate the source).
#[tokio::test]
async fn a_rotation_leaves_a_foreign_target_alone() {
    use crate::RotateSpec;
    let (core, root) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put(&root, "team-b/app/db", &fields(&[("password", "theirs"), ("owner", "dba")]), None).await.unwrap();
    core.put(&root, "secret/app/db", &fields(&[("password", "app-password")]), None).await.unwrap();
    core.put_sync_rule(&root, spec("ab", "secret/app/", &["team-b/app/", "team-c/app/"], "")).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(state(&core, "team-b/app/db").await.0, "conflict");
    let r = core
        .rotate_secret(&root, RotateSpec { path: "secret/app/db".into(), length: 24, ..Default::default() })
        .await
        .unwrap();
    let paths: Vec<&str> = r.copies.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, vec!["secret/app/db", "team-c/app/db"], "only the source and the owned replica");
    core.sync_pass().await.unwrap();
    let theirs = core.get(&root, "team-b/app/db", None).await.unwrap();
    assert_eq!(field(&theirs, "password"), "theirs");
    assert_eq!(field(&theirs, "owner"), "dba");
    let new = field(&core.get(&root, "secret/app/db", None).await.unwrap(), "password");
    assert_eq!(field(&core.get(&root, "team-c/app/db", None).await.unwrap(), "password"), new);
}

/// A rule's authority was checked against the mounts its folders routed to
/// then: after the mount table changes under a folder, the rule stops there
/// instead of writing into (or reading from) whatever is mounted now.
#[tokio::test]
async fn a_rule_stops_when_the_mount_under_its_folder_changes() {
    let (core, root) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&root, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&root, "secret/app/db", &fields(&[("password", "one")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(field(&core.get(&root, "team-b/app/db", None).await.unwrap(), "password"), "one");
    // Another mount at the same path.
    core.disable_mount(&root, "team-b/").await.unwrap();
    core.enable_mount(&root, "team-b/", "local", "", Default::default()).await.unwrap();
    core.put(&root, "secret/app/db", &fields(&[("password", "two")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    core.sync_run(&root, "", true, Duration::from_secs(2)).await.ok();
    assert!(
        matches!(core.get(&root, "team-b/app/db", None).await, Err(Error::NotFound(_))),
        "written into the new mount"
    );
    let e = core.sync.rule_routes_hold(&*core, &core.get_sync_rule(&root, "ab").await.unwrap()).unwrap_err();
    assert!(e.to_string().contains("write the rule again"), "{e}");
    // Written again (and checked again): it goes on.
    core.put_sync_rule(&root, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.sync_run(&root, "", true, Duration::from_secs(5)).await.unwrap();
    assert_eq!(field(&core.get(&root, "team-b/app/db", None).await.unwrap(), "password"), "two");
}

/// Deletes, undeletes and destroys are journaled before they run, as puts
/// are: a change that then fails leaves an entry (which the reconciler
/// finds nothing to do for), so a crash between a change and its journal
/// entry cannot happen.
#[tokio::test]
async fn changes_other_than_puts_are_journaled_first() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 0);
    // Version 9 does not exist: the destroy fails, after its journal entry.
    super::tests::assert_err!(core.destroy(&t, "secret/app/db", &[9]).await, Error::InvalidArgument(_));
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 1, "journaled before the change");
    core.sync_pass().await.unwrap();
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 0);
    assert_eq!(field(&core.get(&t, "team-b/app/db", None).await.unwrap(), "pw"), "one", "the replica is unchanged");
    // A change that works is replicated as before.
    core.delete(&t, "secret/app/db", &[], false).await.unwrap();
    core.sync_pass().await.unwrap();
    assert_eq!(core.sync_status(&t, &StatusQuery::of("")).await.unwrap().pending, 0);
}

/// `sync status` pages through the replicas by rule and target path, each
/// once, counts every one by target and state whatever the page, filters
/// by state, and refuses a page size, state or token it cannot use.
#[tokio::test]
async fn status_pages_counts_and_filters_replicas() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/", "team-c/app/"], "alert")).await.unwrap();
    for i in 0..5 {
        core.put(&t, &format!("secret/app/s{i}"), &fields(&[("pw", "one")]), None).await.unwrap();
    }
    core.sync_pass().await.unwrap();
    // One replica changed outside Keybridge: a conflict this process keeps in
    // memory, which replaces the record's status in its place in the order.
    core.put(&t, "team-b/app/s2", &fields(&[("pw", "theirs")]), None).await.unwrap();
    core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap();
    let mut seen = Vec::new();
    let mut q = StatusQuery { page_size: 3, ..StatusQuery::of("") };
    loop {
        let s = core.sync_status(&t, &q).await.unwrap();
        assert!(s.targets.len() <= 3);
        let counted: Vec<(String, &str, u64)> = s.counts.iter().map(|c| (c.target.clone(), c.state, c.count)).collect();
        // Counted on the first page only: later ones read just what they list.
        if q.after.is_empty() {
            assert_eq!(
                counted,
                vec![
                    ("team-b/app/".to_string(), "conflict", 1),
                    ("team-b/app/".to_string(), "in_sync", 4),
                    ("team-c/app/".to_string(), "in_sync", 5)
                ]
            );
        } else {
            assert!(counted.is_empty(), "{counted:?}");
        }
        seen.extend(s.targets.into_iter().map(|s| (s.target, s.state)));
        if s.next_page.is_empty() {
            break;
        }
        q.after = s.next_page;
    }
    let mut expected: Vec<(String, &str)> = Vec::new();
    for m in ["team-b", "team-c"] {
        for i in 0..5 {
            let state = if m == "team-b" && i == 2 { "conflict" } else { "in_sync" };
            expected.push((format!("{m}/app/s{i}"), state));
        }
    }
    assert_eq!(seen, expected);
    let only = core.sync_status(&t, &StatusQuery { state: "conflict".into(), ..StatusQuery::of("ab") }).await.unwrap();
    assert_eq!(only.targets.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(), ["team-b/app/s2"]);
    assert!(only.next_page.is_empty());
    for (q, text) in [
        (StatusQuery { page_size: 10_001, ..StatusQuery::of("") }, "page_size"),
        (StatusQuery { state: "lost".into(), ..StatusQuery::of("") }, "no replica state"),
        (StatusQuery { after: "no-colon".into(), ..StatusQuery::of("") }, "page token"),
        (StatusQuery::of("nope"), "no sync rule"),
    ] {
        let e = core.sync_status(&t, &q).await.unwrap_err();
        assert!(e.to_string().contains(text), "{e}");
    }
}

/// A run that resumes an earlier one's wait asks for no other scan; a
/// token of another reconciler asks again; a token that is not one is
/// refused, and a run without one asks for a scan of its own.
#[tokio::test]
async fn a_resumed_run_waits_for_the_scan_it_asked_for() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
    core.sync_pass().await.unwrap();
    let started = core.sync.scans_started("ab");
    let asked = core.sync_run_scan(&t, "ab", false, Duration::ZERO, true, "").await.unwrap();
    assert!(!asked.settled && !asked.resume.is_empty());
    let done = core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), true, &asked.resume).await.unwrap();
    assert!(done.settled);
    assert_eq!(core.sync.scans_started("ab"), started + 1, "the scan asked for, once");
    let again = core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), true, &asked.resume).await.unwrap();
    assert!(again.settled);
    assert_eq!(core.sync.scans_started("ab"), started + 1, "resuming asks for no other scan");
    // Another reconciler's token (another leader's): a scan of its own.
    let other = hex::encode(br#"{"i":0,"n":0,"d":true,"r":"00"}"#);
    assert!(core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), true, &other).await.unwrap().settled);
    assert_eq!(core.sync.scans_started("ab"), started + 2);
    assert!(core.sync_run(&t, "ab", true, Duration::from_secs(5)).await.unwrap().settled);
    assert_eq!(core.sync.scans_started("ab"), started + 3);
    for bad in ["zz", "00", &hex::encode(b"{}"), &"0".repeat(200_000)] {
        let e = core.sync_run_scan(&t, "ab", true, Duration::from_secs(1), true, bad).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("resume")), "{e:?}");
    }
    assert_eq!(core.sync.scans_started("ab"), started + 3, "a refused token asks for nothing");

    // The scan asked for stops half-way (the waiting call making it went
    // away): the resumed wait asks for it again and sees it made.
    let (reached, _release) = hold_load(&core, "scan");
    let asked = core.sync_run_scan(&t, "ab", false, Duration::ZERO, true, "").await.unwrap();
    let waiting = {
        let (core, t, token) = (core.clone(), Caller::token(Some("root-t")), asked.resume.clone());
        tokio::spawn(async move { core.sync_run_scan(&t, "ab", true, Duration::from_secs(30), true, &token).await })
    };
    reached.await.unwrap();
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(core.sync.scans_started("ab"), started + 4);
    let done = core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), true, &asked.resume).await.unwrap();
    assert!(done.settled, "the stopped scan is made again");
    assert_eq!(core.sync.scans_started("ab"), started + 5);
}

/// A resumed wait for a deep scan is not satisfied by a quick one: the
/// deep scan is asked for again.
#[tokio::test]
async fn a_resumed_deep_wait_needs_a_deep_scan() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.sync_pass().await.unwrap();
    // A quick scan asked for and made.
    let quick = core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), false, "").await.unwrap();
    assert!(quick.settled);
    let started = core.sync.scans_started("ab");
    // The same token, as if its run had asked for a deep scan (whose ask a
    // failed scan took): the quick scan does not count.
    let mut token: serde_json::Value = serde_json::from_slice(&hex::decode(&quick.resume).unwrap()).unwrap();
    token["d"] = true.into();
    let deep = hex::encode(serde_json::to_vec(&token).unwrap());
    assert!(core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), false, &deep).await.unwrap().settled);
    assert_eq!(core.sync.scans_started("ab"), started + 1, "a deep scan was asked for and made");
    // The quick token itself is satisfied: nothing more.
    assert!(core.sync_run_scan(&t, "ab", true, Duration::from_secs(5), false, &quick.resume).await.unwrap().settled);
    assert_eq!(core.sync.scans_started("ab"), started + 1);
    // A token for other rules waits for nothing of theirs: a new run.
    core.put_sync_rule(&t, spec("cd", "secret/other/", &["team-c/other/"], "")).await.unwrap();
    assert!(core.sync_run_scan(&t, "", true, Duration::from_secs(5), false, &quick.resume).await.unwrap().settled);
    assert_eq!(core.sync.scans_started("ab"), started + 2, "asked again, for every rule");
}

/// While the worker runs, a waiting run follows its scans and makes no
/// pass itself: its answer comes at its time, however long the scan.
#[tokio::test]
async fn a_waiting_run_leaves_the_scans_to_the_worker() {
    let (core, t) = core_with_mounts(Arc::new(RedbStore::in_memory().unwrap())).await;
    core.put_sync_rule(&t, spec("ab", "secret/app/", &["team-b/app/"], "")).await.unwrap();
    core.put(&t, "secret/app/db", &fields(&[("pw", "one")]), None).await.unwrap();
    // The worker's first scan is held.
    let (reached, release) = hold_load(&core, "scan");
    let worker = tokio::spawn(core.clone().sync_worker());
    reached.await.unwrap();
    let started = Instant::now();
    let st = core.sync_run_scan(&t, "ab", true, Duration::from_millis(500), true, "").await.unwrap();
    assert!(!st.settled, "the worker's scan is held");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at its time: {:?}", started.elapsed());
    release.send(()).unwrap();
    let done = core.sync_run_scan(&t, "ab", true, Duration::from_secs(10), true, &st.resume).await.unwrap();
    assert!(done.settled, "the held scan finished, and the wait saw it");
    worker.abort();
}
