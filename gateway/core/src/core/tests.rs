use std::sync::Arc;

use keybridge_barrier::{Barrier, RedbStore};

use super::*;
use crate::{Caller, TokenRef, TokenRequest};

/// Asserts that an operation failed with the error the pattern names.
macro_rules! assert_err {
    ($e:expr, $p:pat $(if $g:expr)?) => {
        match $e {
            Err($p) $(if $g)? => {}
            Err(e) => panic!("expected {}, got {e}", stringify!($p)),
            Ok(_) => panic!("expected {}, but it succeeded", stringify!($p)),
        }
    };
}
pub(crate) use assert_err;

use crate::{backend::kv::ReadSecret, value::SecretValue};

pub(super) fn fields(pairs: &[(&str, &str)]) -> SecretValue {
    SecretValue::Fields(pairs.iter().map(|(k, v)| (k.to_string(), Zeroizing::new(v.to_string()))).collect())
}

pub(super) fn field(r: &ReadSecret, name: &str) -> String {
    match &r.value {
        SecretValue::Fields(m) => m[name].to_string(),
        _ => panic!("fields expected"),
    }
}

/// Holds the next load of `what` (see `Core::load_holds`): returns the
/// signal that it has read the store, and the sender that lets it go on.
pub(super) fn hold_load(
    core: &Core,
    what: &'static str,
) -> (tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    core.load_holds.lock().unwrap().insert(what, (reached_tx, release_rx));
    (reached, release)
}

async fn dev_core() -> (Core, String) {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    let init = core.init(1, 1, Some("root-t"), true).await.unwrap();
    (core, init.root_token.to_string())
}

#[tokio::test]
async fn versions_cas_and_reads() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    let (v1, _) = core.put(t, "secret/app/db", &fields(&[("password", "one")]), Some(0)).await.unwrap();
    assert_eq!(v1, 1);
    let err = core.put(t, "secret/app/db", &fields(&[("password", "x")]), Some(0)).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(m) if m.contains("current version is 1")));
    core.put(t, "secret/app/db", &fields(&[("password", "two")]), Some(1)).await.unwrap();
    assert_eq!(field(&core.get(t, "secret/app/db", None).await.unwrap(), "password"), "two");
    assert_eq!(field(&core.get(t, "secret/app/db", Some(1)).await.unwrap(), "password"), "one");
    assert!(matches!(core.get(t, "secret/app/db", Some(9)).await, Err(Error::NotFound(_))));
    assert!(matches!(core.get(t, "secret/app/nope", None).await, Err(Error::NotFound(_))));
    let meta = core.describe(t, "secret/app/db").await.unwrap();
    assert_eq!(meta.current_version, 2);
    assert_eq!(meta.versions.len(), 2);
}

#[tokio::test]
async fn delete_undelete_destroy_and_delete_all() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    for p in ["a", "b", "c"] {
        core.put(t, "secret/x", &fields(&[("v", p)]), None).await.unwrap();
    }
    core.delete(t, "secret/x", &[], false).await.unwrap();
    assert!(matches!(core.get(t, "secret/x", None).await, Err(Error::NotFound(m)) if m.contains("deleted")));
    core.undelete(t, "secret/x", &[3]).await.unwrap();
    assert_eq!(field(&core.get(t, "secret/x", None).await.unwrap(), "v"), "c");
    core.destroy(t, "secret/x", &[1]).await.unwrap();
    assert!(matches!(core.get(t, "secret/x", Some(1)).await, Err(Error::NotFound(m)) if m.contains("destroyed")));
    core.undelete(t, "secret/x", &[1]).await.unwrap();
    assert_err!(core.get(t, "secret/x", Some(1)).await, Error::NotFound(m) if m.contains("destroyed"));
    // Unknown versions are refused and nothing changes.
    let before = core.describe(t, "secret/x").await.unwrap();
    assert!(matches!(core.delete(t, "secret/x", &[2, 7], false).await, Err(Error::InvalidArgument(_))));
    assert_eq!(core.describe(t, "secret/x").await.unwrap(), before);
    core.delete(t, "secret/x", &[], true).await.unwrap();
    assert!(matches!(core.describe(t, "secret/x").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn max_versions_prunes_oldest() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    core.put_metadata(t, "secret/p", None, Some(2), None).await.unwrap();
    for v in ["1", "2", "3"] {
        core.put(t, "secret/p", &fields(&[("v", v)]), None).await.unwrap();
    }
    let meta = core.describe(t, "secret/p").await.unwrap();
    assert_eq!(meta.versions.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    assert!(matches!(core.get(t, "secret/p", Some(1)).await, Err(Error::NotFound(m)) if m.contains("pruned")));
}

#[tokio::test]
async fn cas_required_by_mount_config() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    let cfg = [("cas_required".to_string(), "true".to_string())].into();
    core.enable_mount(t, "strict", "local", "", cfg).await.unwrap();
    let err = core.put(t, "strict/k", &fields(&[("a", "b")]), None).await.unwrap_err();
    assert!(err.to_string().contains("requires check-and-set"));
    core.put(t, "strict/k", &fields(&[("a", "b")]), Some(0)).await.unwrap();
}

#[tokio::test]
async fn listing_pages_folders_and_recursion() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    for p in ["a", "b/x", "b/y/z", "c", "d/e", "e"] {
        core.put(t, &format!("secret/{p}"), &fields(&[("k", "v")]), None).await.unwrap();
    }
    let (all, next) = core.list(t, "secret/", 0, "", false).await.unwrap();
    assert_eq!(all, ["a", "b/", "c", "d/", "e"]);
    assert!(next.is_empty());
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = core.list(t, "secret", 2, &token, false).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, all);
    let (rec, _) = core.list(t, "secret/b", 0, "", true).await.unwrap();
    assert_eq!(rec, ["x", "y/z"]);
    let (rec2, next) = core.list(t, "secret/b/", 1, "", true).await.unwrap();
    assert_eq!((rec2, next.as_str()), (vec!["x".to_string()], "x"));
    assert_err!(core.list(t, "secret/", 20_000, "", false).await, Error::InvalidArgument(_));
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    for p in ["secret//a", "secret/../a", "secret/a\0", "secret/", "nomount/a"] {
        let err = core.put(t, p, &fields(&[("k", "v")]), None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_) | Error::NotFound(_)), "{p}: {err:?}");
    }
    let big = SecretValue::Binary(Zeroizing::new(vec![0; 512 * 1024 + 1]));
    assert!(matches!(core.put(t, "secret/big", &big, None).await, Err(Error::InvalidArgument(_))));
    let (keys, _) = core.list(t, "secret/", 0, "", true).await.unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn tokens_are_checked() {
    let (core, _) = dev_core().await;
    for bad in [None, Some(""), Some("nope")] {
        assert!(matches!(core.get(&Caller::token(bad), "secret/a", None).await, Err(Error::Unauthenticated)));
    }
}

#[tokio::test]
async fn mounts_enable_tune_disable_and_route() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    core.enable_mount(t, "team/a", "local", "team a", Default::default()).await.unwrap();
    assert_err!(core.enable_mount(t, "team/a/b", "local", "", Default::default()).await, Error::InvalidArgument(_));
    assert_err!(core.enable_mount(t, "x", "nope", "", Default::default()).await, Error::InvalidArgument(_));
    core.put(t, "team/a/k", &fields(&[("v", "1")]), None).await.unwrap();
    let tuned = core
        .tune_mount(t, "team/a/", Some("tuned"), [("max_versions".to_string(), "5".to_string())].into())
        .await
        .unwrap();
    assert_eq!(tuned.config["max_versions"], "5");
    assert_err!(
        core.tune_mount(t, "team/a", None, [("max_versions".into(), "x".into())].into()).await,
        Error::InvalidArgument(_)
    );
    core.disable_mount(t, "team/a").await.unwrap();
    assert!(matches!(core.get(t, "team/a/k", None).await, Err(Error::NotFound(_))));
    let mounts = core.list_mounts(t).await.unwrap();
    assert_eq!(mounts.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(), ["secret/"]);
    // Re-enabling gives a new, empty mount: the old data was purged.
    core.enable_mount(t, "team/a", "local", "", Default::default()).await.unwrap();
    assert_err!(core.get(t, "team/a/k", None).await, Error::NotFound(_));
}

#[tokio::test]
async fn seal_unseal_cycle_with_shares() {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    let init = core.init(3, 2, None, false).await.unwrap();
    let t = init.root_token.to_string();
    assert!(matches!(core.get(&Caller::token(Some(&t)), "secret/a", None).await, Err(Error::Sealed)));
    assert!(core.seal_status().await.unwrap().sealed);
    assert_eq!(core.unseal(&init.keys[2], false, false).await.unwrap().progress, 1);
    let st = core.unseal(&init.keys[0], false, false).await.unwrap();
    assert!(!st.sealed);
    core.put(&Caller::token(Some(&t)), "secret/a", &fields(&[("k", "v")]), None).await.unwrap();
    core.seal(&Caller::token(Some(&t))).await.unwrap();
    assert!(matches!(core.get(&Caller::token(Some(&t)), "secret/a", None).await, Err(Error::Sealed)));
    assert!(matches!(core.init(1, 1, None, false).await, Err(Error::FailedPrecondition(_))));
}

#[tokio::test]
async fn no_plaintext_reaches_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kb.db");
    let root_token;
    {
        let store = RedbStore::open(&file, 1 << 20).unwrap();
        let core = Core::new(Barrier::new(Arc::new(store)), CoreConfig::default());
        let init = core.init(1, 1, None, true).await.unwrap();
        root_token = init.root_token.to_string();
        let t = &Caller::token(Some(root_token.as_str()));
        core.put(t, "secret/app", &fields(&[("password", "PLAINTEXT-MARKER-93b1")]), None).await.unwrap();
        let bin = SecretValue::Binary(Zeroizing::new(b"BINARY-MARKER-77c2".to_vec()));
        core.put(t, "secret/bin", &bin, None).await.unwrap();
        core.rotate(t).await.unwrap();
    }
    let bytes = std::fs::read(&file).unwrap();
    for needle in [b"PLAINTEXT-MARKER-93b1".as_slice(), b"BINARY-MARKER-77c2", root_token.as_bytes(), b"password"] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "found {:?}", String::from_utf8_lossy(needle));
    }
}

/// Every storage key under the `secret/` mount.
async fn stored_keys(core: &Core) -> Vec<String> {
    let table = core.unsealed().unwrap().table();
    let prefix = table.get("secret/").unwrap().storage_prefix();
    core.barrier.list(&prefix, None, 10_000).await.unwrap()
}

#[tokio::test]
async fn current_value_lives_in_the_record_and_moves_out_on_put() {
    let (core, t) = dev_core().await;
    let t = &Caller::token(Some(t.as_str()));
    for v in ["1", "2", "3"] {
        core.put(t, "secret/m", &fields(&[("v", v)]), None).await.unwrap();
    }
    // One record plus the two older versions.
    assert_eq!(stored_keys(&core).await.len(), 3);
    for v in 1..=3u64 {
        assert_eq!(field(&core.get(t, "secret/m", Some(v)).await.unwrap(), "v"), v.to_string());
    }
    core.destroy(t, "secret/m", &[3]).await.unwrap();
    assert_err!(core.get(t, "secret/m", None).await, Error::NotFound(_));
    core.put(t, "secret/m", &fields(&[("v", "4")]), None).await.unwrap();
    assert_eq!(field(&core.get(t, "secret/m", None).await.unwrap(), "v"), "4");
    assert_err!(core.get(t, "secret/m", Some(3)).await, Error::NotFound(_));
    assert_eq!(field(&core.get(t, "secret/m", Some(2)).await.unwrap(), "v"), "2");
    // Metadata writes keep the current value.
    core.put_metadata(t, "secret/m", Some([("o".into(), "x".into())].into()), None, None).await.unwrap();
    assert_eq!(field(&core.get(t, "secret/m", None).await.unwrap(), "v"), "4");
    // max_versions = 1 keeps only the record.
    core.put_metadata(t, "secret/m", None, Some(1), None).await.unwrap();
    core.put(t, "secret/m", &fields(&[("v", "5")]), None).await.unwrap();
    assert_eq!(stored_keys(&core).await.len(), 1);
    core.delete(t, "secret/m", &[], true).await.unwrap();
    assert!(stored_keys(&core).await.is_empty(), "delete_all leaves nothing behind");
}

#[tokio::test]
async fn policies_limit_non_root_tokens_as_vault_does() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(root.as_str()));
    core.put(r, "secret/app/db", &fields(&[("password", "p")]), None).await.unwrap();
    core.put(r, "secret/other", &fields(&[("k", "v")]), None).await.unwrap();
    let policy = r#"
path "secret/data/app/*" {
  capabilities = ["read", "update"]
}
path "secret/metadata/app/*" {
  capabilities = ["list"]
}
"#;
    core.put_policy(r, "app", policy).await.unwrap();
    assert!(
        matches!(core.put_policy(r, "bad", "path \"x\" {\n capabilities = [\"raed\"]\n}\n").await, Err(Error::InvalidArgument(m)) if m.contains("raed"))
    );
    assert!(matches!(core.put_policy(r, "root", policy).await, Err(Error::InvalidArgument(_))));
    assert_eq!(core.list_policies(r).await.unwrap(), ["app", "default", "root"]);

    let (t, entry) = core
        .create_token(
            r,
            TokenRequest {
                policies: vec!["app".into()],
                ttl_secs: 3600,
                display_name: "app".into(),
                no_default_policy: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(entry.policies, ["app", "default"]);
    let t = &Caller::token(Some(t.as_str()));
    assert_eq!(field(&core.get(t, "secret/app/db", None).await.unwrap(), "password"), "p");
    // Update on an existing secret is granted; creating a new one needs `create`.
    core.put(t, "secret/app/db", &fields(&[("password", "q")]), None).await.unwrap();
    let err = core.put(t, "secret/app/new", &fields(&[("k", "v")]), None).await.unwrap_err();
    assert!(
        matches!(&err, Error::PermissionDenied(m) if m == "create on secret/data/app/new is not granted"),
        "{err:?}"
    );
    assert!(matches!(core.get(t, "secret/other", None).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(core.list_mounts(t).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(core.seal(t).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(core.delete(t, "secret/app/db", &[], false).await, Err(Error::PermissionDenied(_))));
    assert_eq!(core.list(t, "secret/app", 0, "", false).await.unwrap().0, ["db"]);
    // The default policy lets a token look itself up and ask what it may do.
    assert_eq!(core.lookup_self(t).await.unwrap().display_name, "app");
    assert_eq!(core.capabilities_self(t, "secret/data/app/db").await.unwrap(), ["read", "update"]);
    assert_eq!(core.capabilities_self(t, "secret/data/other").await.unwrap(), ["deny"]);
    assert_eq!(core.capabilities_self(r, "anything").await.unwrap().len(), 7);
    // A child can only get what its parent holds.
    assert!(matches!(
        core.create_token(
            t,
            TokenRequest {
                policies: vec!["root".into()],
                ttl_secs: 0,
                display_name: String::new(),
                no_default_policy: false,
                ..Default::default()
            }
        )
        .await,
        Err(Error::PermissionDenied(_))
    ));

    // Policy changes apply at once.
    core.put_policy(r, "app", "path \"secret/data/app/*\" {\n capabilities = [\"deny\"]\n}\n").await.unwrap();
    assert!(matches!(core.get(t, "secret/app/db", None).await, Err(Error::PermissionDenied(_))));
    core.delete_policy(r, "app").await.unwrap();
    assert!(matches!(core.get(t, "secret/app/db", None).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(core.delete_policy(r, "default").await, Err(Error::InvalidArgument(_))));
}

#[tokio::test]
async fn created_tokens_expire() {
    let (core, root) = dev_core().await;
    let (t, _) = core
        .create_token(
            &Caller::token(Some(&root)),
            TokenRequest {
                policies: vec![],
                ttl_secs: 1,
                display_name: String::new(),
                no_default_policy: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(core.lookup_self(&Caller::token(Some(&t))).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(matches!(core.lookup_self(&Caller::token(Some(&t))).await, Err(Error::Unauthenticated)));
}

#[tokio::test]
async fn revoking_a_token_revokes_its_children_at_once() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(root.as_str()));
    core.put_policy(r, "p", "path \"auth/token/create\" {\n capabilities = [\"update\"]\n}\n").await.unwrap();
    let req = |p: &str| TokenRequest {
        policies: vec![p.into()],
        ttl_secs: 0,
        display_name: String::new(),
        no_default_policy: false,
        ..Default::default()
    };
    let (parent, _) = core.create_token(r, req("p")).await.unwrap();
    let (child, _) = core.create_token(&Caller::token(Some(&parent)), req("p")).await.unwrap();
    let (grandchild, _) = core.create_token(&Caller::token(Some(&child)), req("default")).await.unwrap();
    let (sibling, _) = core.create_token(r, req("default")).await.unwrap();
    for t in [&parent, &child, &grandchild, &sibling] {
        core.lookup_self(&Caller::token(Some(t))).await.unwrap(); // now cached
    }
    // A caller without auth/token/revoke cannot revoke others.
    assert!(matches!(
        core.revoke_token(&Caller::token(Some(&sibling)), &parent).await,
        Err(Error::PermissionDenied(_))
    ));
    core.revoke_token(r, &parent).await.unwrap();
    for t in [&parent, &child, &grandchild] {
        assert!(matches!(core.lookup_self(&Caller::token(Some(t))).await, Err(Error::Unauthenticated)));
    }
    assert!(core.lookup_self(&Caller::token(Some(&sibling))).await.is_ok());
    // Unknown tokens revoke quietly; a revoked token cannot create children.
    core.revoke_token(r, "kb.nope").await.unwrap();
    assert!(matches!(
        core.create_token(&Caller::token(Some(&child)), req("default")).await,
        Err(Error::Unauthenticated)
    ));
    // revoke-self is in the default policy.
    core.revoke_self(&Caller::token(Some(&sibling))).await.unwrap();
    assert!(matches!(core.lookup_self(&Caller::token(Some(&sibling))).await, Err(Error::Unauthenticated)));
    // Nothing is left of them in storage but the root token.
    // Entry, index and accessor of every revoked token are gone: only the
    // root token's entry and accessor remain.
    let left = core.barrier.list("auth/token/", None, 100).await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().any(|k| k.starts_with("auth/token/accessor/"))
            && left.iter().any(|k| k.starts_with("auth/token/id/"))
    );
}

#[tokio::test]
async fn renewal_is_capped_by_max_ttl_and_refused_when_not_renewable() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(root.as_str()));
    let (t, e) =
        core.create_token(r, TokenRequest { ttl_secs: 60, max_ttl_secs: 120, ..Default::default() }).await.unwrap();
    let max = e.max_expires.unwrap();
    let renewed = core.renew_self(&Caller::token(Some(&t)), 3600).await.unwrap().unwrap();
    assert_eq!(renewed, max, "renewal stops at the max TTL");
    let renewed = core.renew_token(r, &t, 30).await.unwrap().unwrap();
    assert!(renewed < max);
    let (fixed, _) =
        core.create_token(r, TokenRequest { ttl_secs: 60, renewable: false, ..Default::default() }).await.unwrap();
    assert!(matches!(core.renew_self(&Caller::token(Some(&fixed)), 0).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(core.renew_token(r, "kb.unknown", 0).await, Err(Error::NotFound(_))));
    assert!(matches!(
        core.create_token(r, TokenRequest { ttl_secs: 200, max_ttl_secs: 100, ..Default::default() }).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn use_limited_tokens_stop_after_their_last_use() {
    let (core, root) = dev_core().await;
    let (t, _) = core
        .create_token(&Caller::token(Some(&root)), TokenRequest { num_uses: 3, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(core.lookup_self(&Caller::token(Some(&t))).await.unwrap().num_uses, 2);
    assert_eq!(core.lookup_self(&Caller::token(Some(&t))).await.unwrap().num_uses, 1);
    assert_eq!(
        core.lookup_self(&Caller::token(Some(&t))).await.unwrap().num_uses,
        0,
        "the third use is allowed, then it is gone"
    );
    assert!(matches!(core.lookup_self(&Caller::token(Some(&t))).await, Err(Error::Unauthenticated)));
    // Concurrent uses cannot share one: exactly 5 of 20 succeed.
    let core = Arc::new(core);
    let (t, _) = core
        .create_token(&Caller::token(Some(&root)), TokenRequest { num_uses: 5, ..Default::default() })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (core, t) = (core.clone(), t.to_string());
        tasks.push(tokio::spawn(async move { core.lookup_self(&Caller::token(Some(&t))).await.is_ok() }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap());
    }
    assert_eq!(ok, 5);
}

#[tokio::test]
async fn accessors_look_up_and_revoke_without_the_token() {
    let (core, root) = dev_core().await;
    let r = &Caller::token(Some(root.as_str()));
    let (t, entry) =
        core.create_token(r, TokenRequest { display_name: "svc".into(), ..Default::default() }).await.unwrap();
    assert!(entry.accessor.starts_with("acc."));
    let by_accessor = core.lookup_token(r, TokenRef::Accessor(&entry.accessor)).await.unwrap();
    assert_eq!((by_accessor.display_name.as_str(), by_accessor.hash.as_str()), ("svc", entry.hash.as_str()));
    assert_eq!(core.lookup_token(r, TokenRef::Token(&t)).await.unwrap().accessor, entry.accessor);
    // The default policy does not allow looking up others.
    let (other, _) = core.create_token(r, TokenRequest::default()).await.unwrap();
    assert!(matches!(
        core.lookup_token(&Caller::token(Some(&other)), TokenRef::Accessor(&entry.accessor)).await,
        Err(Error::PermissionDenied(_))
    ));
    // An accessor cannot authenticate.
    assert!(matches!(core.lookup_self(&Caller::token(Some(&entry.accessor))).await, Err(Error::Unauthenticated)));
    core.revoke_accessor(r, &entry.accessor).await.unwrap();
    assert!(matches!(core.lookup_self(&Caller::token(Some(&t))).await, Err(Error::Unauthenticated)));
    assert!(matches!(core.lookup_token(r, TokenRef::Accessor(&entry.accessor)).await, Err(Error::NotFound(_))));
    assert!(matches!(core.lookup_token(r, TokenRef::Accessor("a/b")).await, Err(Error::InvalidArgument(_))));
}

/// A request that read a token's entry just before the token was revoked
/// must not leave it in the cache, where it would outlive the revocation.
#[tokio::test]
async fn a_token_revoked_while_a_request_loads_it_stays_revoked() {
    let (core, root) = dev_core().await;
    let core = Arc::new(core);
    let r = &Caller::token(Some(root.as_str()));
    let req = TokenRequest { policies: vec!["default".into()], ttl_secs: 3600, ..Default::default() };
    let (token, _) = core.create_token(r, req).await.unwrap();
    let (reached, release) = hold_load(&core, "token");
    let request = tokio::spawn({
        let (core, token) = (core.clone(), token.to_string());
        async move { core.lookup_self(&Caller::token(Some(token.as_str()))).await.map(|_| ()) }
    });
    // The request has read the entry; now the token is revoked...
    reached.await.unwrap();
    core.revoke_token(r, &token).await.unwrap();
    // ...and the request goes on (it began before the revocation, so either
    // answer is fair for it).
    release.send(()).unwrap();
    let _ = request.await.unwrap();
    let after = core.lookup_self(&Caller::token(Some(token.as_str()))).await;
    assert!(matches!(after, Err(Error::Unauthenticated)), "the revoked token still works: {:?}", after.map(|_| ()));
}
