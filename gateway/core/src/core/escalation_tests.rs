//! Issue 19's escalations through the core: login roles, token trees and
//! numbers from outside. (Parameter constraints on engine paths: in
//! engine_tests; sync rules and rotations: in sync_tests.)

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_testservers::issuer::Issuer;

use super::tests::hold_load;
use super::*;
use crate::Caller;
use crate::TokenRequest;

fn s(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

async fn dev_core() -> (Arc<Core>, Caller) {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    core.init(1, 1, Some("root-t"), true).await.unwrap();
    (Arc::new(core), Caller::token(Some("root-t")))
}

async fn token_with(core: &Core, root: &Caller, name: &str, policy: &str) -> Caller {
    core.put_policy(root, name, policy).await.unwrap();
    let req = TokenRequest { policies: vec![name.into()], ..Default::default() };
    let (t, _) = core.create_token(root, req).await.unwrap();
    Caller::token(Some(t.as_str()))
}

fn role(policies: &str) -> BTreeMap<String, String> {
    s(&[
        ("bound_service_account_names", "app-sa"),
        ("bound_service_account_namespaces", "production"),
        ("policies", policies),
    ])
}

#[tokio::test]
async fn a_role_writer_cannot_grant_policies_it_does_not_hold() {
    let (core, root) = dev_core().await;
    core.put_policy(&root, "admin", "path \"*\" { capabilities = [\"sudo\", \"read\", \"update\"] }").await.unwrap();
    core.put_policy(&root, "app", "path \"secret/data/app/*\" { capabilities = [\"read\"] }").await.unwrap();
    core.enable_auth(&root, "kubernetes", "kubernetes", "").await.unwrap();
    let writer_policy = "path \"auth/kubernetes/role/*\" { capabilities = [\"create\", \"update\", \"read\"] }";
    core.put_policy(&root, "role-writer", writer_policy).await.unwrap();
    let req = TokenRequest { policies: vec!["role-writer".into(), "app".into()], ..Default::default() };
    let (t, _) = core.create_token(&root, req).await.unwrap();
    let writer = Caller::token(Some(t.as_str()));

    let e = core.write_auth_role(&writer, "kubernetes", "r", role("admin")).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("\"admin\"")), "{e}");
    let e = core.write_auth_role(&writer, "kubernetes", "r", role("app,admin")).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(_)), "{e}");
    assert!(matches!(core.read_auth_role(&root, "kubernetes", "r").await, Err(Error::NotFound(_))), "nothing written");
    // Policies the writer holds (and default) are fine.
    core.write_auth_role(&writer, "kubernetes", "r", role("app,default")).await.unwrap();

    // root: refused at write for everyone, naming the field.
    for who in [&writer, &root] {
        let e = core.write_auth_role(who, "kubernetes", "r", role("root")).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.starts_with("policies:")), "{e}");
    }
    // TTLs past the server's maximum.
    for (k, v) in [("ttl", "769h"), ("max_ttl", "100000h")] {
        let mut r = role("app");
        r.insert(k.into(), v.into());
        let e = core.write_auth_role(&root, "kubernetes", "r", r).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.starts_with(&format!("{k}:"))), "{e}");
    }
    assert_eq!(core.read_auth_role(&root, "kubernetes", "r").await.unwrap()["policies"], "app,default");

    // sudo on the role path lets a writer grant what it does not hold.
    let sudo = token_with(
        &core,
        &root,
        "role-admin",
        "path \"auth/kubernetes/role/*\" { capabilities = [\"create\", \"update\", \"sudo\"] }",
    )
    .await;
    core.write_auth_role(&sudo, "kubernetes", "r", role("admin")).await.unwrap();
}

#[tokio::test]
async fn a_login_never_returns_a_root_token_or_a_lifetime_past_the_maximum() {
    let (core, root) = dev_core().await;
    let cluster = Issuer::new(ISS, "k1");
    core.enable_auth(&root, "kubernetes", "kubernetes", "").await.unwrap();
    core.write_auth_config(
        &root,
        "kubernetes",
        s(&[("pem_keys", &cluster.public_pem()), ("issuer", ISS), ("audience", "keybridge")]),
    )
    .await
    .unwrap();
    // Roles written before the checks existed: stored directly.
    let mount = core.auth_mount(&core.unsealed().unwrap(), "kubernetes").unwrap();
    let mut stored = role("root");
    stored.insert("ttl".into(), "100000h".into());
    let mut batch = WriteBatch::new();
    batch.put(format!("auth/{}/role/old-root", mount.id), encode_json(&stored));
    let mut long = role("default");
    long.insert("max_ttl".into(), "100000h".into());
    long.insert("ttl".into(), "100000h".into());
    batch.put(format!("auth/{}/role/old-long", mount.id), encode_json(&long));
    core.barrier.commit(batch).await.unwrap();

    let sa = cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    let c = Caller::new(None, "login");
    let e = core.login(&c, "kubernetes", "old-root", &sa).await.unwrap_err();
    assert!(matches!(e, Error::LoginRefused(_)), "{e}");
    let (_, entry) = core.login(&Caller::new(None, "login"), "kubernetes", "old-long", &sa).await.unwrap();
    let max = crate::tokens::store::DEFAULT_TOKEN_TTL_SECS as i64;
    assert_eq!(entry.max_expires.unwrap().secs - entry.created.secs, max);
    assert!(entry.expires.unwrap().secs - entry.created.secs <= max);
}

#[tokio::test]
async fn a_use_limited_token_cannot_create_children() {
    let (core, root) = dev_core().await;
    core.put_policy(&root, "creator", "path \"auth/token/create\" { capabilities = [\"update\"] }").await.unwrap();
    let req = TokenRequest { policies: vec!["creator".into()], num_uses: 5, ..Default::default() };
    let (t, _) = core.create_token(&root, req).await.unwrap();
    let limited = Caller::token(Some(t.as_str()));
    let e = core.create_token(&limited, TokenRequest::default()).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("use-limited")), "{e}");
    // Only the limited token's own marker under root.
    assert_eq!(core.barrier.list(crate::tokens::PARENT_PREFIX, None, 100).await.unwrap().len(), 1);
}

/// A child created while its parent's tree is being revoked cannot survive:
/// the revocation is held after marking the parent, a creator tries, then
/// the revocation finishes.
#[tokio::test]
async fn a_child_created_during_its_parents_revocation_does_not_survive() {
    let (core, root) = dev_core().await;
    core.put_policy(&root, "creator", "path \"auth/token/create\" { capabilities = [\"update\"] }").await.unwrap();
    let req = TokenRequest { policies: vec!["creator".into()], ..Default::default() };
    let (parent, _) = core.create_token(&root, req).await.unwrap();
    let p = Caller::token(Some(parent.as_str()));
    let req = || TokenRequest { policies: vec!["creator".into()], ..Default::default() };
    let (child, _) = core.create_token(&p, req()).await.unwrap();

    let (reached, release) = hold_load(&core, "revoke");
    let revocation = tokio::spawn({
        let (core, parent) = (core.clone(), parent.to_string());
        async move { core.revoke_token(&Caller::token(Some("root-t")), &parent).await }
    });
    reached.await.unwrap();
    // The parent is marked: it cannot create, and its child cannot either
    // once marked; any child that did get written must be gone afterwards.
    let during = core.create_token(&p, req()).await;
    let grandchild = core.create_token(&Caller::token(Some(child.as_str())), req()).await;
    release.send(()).unwrap();
    revocation.await.unwrap().unwrap();
    // A parent being revoked is no longer a valid token.
    super::tests::assert_err!(during, Error::Unauthenticated);
    for t in [Some(parent.to_string()), Some(child.to_string()), grandchild.ok().map(|g| g.0.to_string())]
        .into_iter()
        .flatten()
    {
        let r = core.lookup_self(&Caller::token(Some(t.as_str()))).await;
        assert!(matches!(r, Err(Error::Unauthenticated)), "a token of the revoked tree still works");
    }
    assert!(core.barrier.list(crate::tokens::PARENT_PREFIX, None, 100).await.unwrap().is_empty());
}

/// Many creators racing one revocation: every token they got is dead after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creators_leave_nothing_alive_under_a_revoked_token() {
    let (core, root) = dev_core().await;
    core.put_policy(&root, "creator", "path \"auth/token/create\" { capabilities = [\"update\"] }").await.unwrap();
    let req = || TokenRequest { policies: vec!["creator".into()], ..Default::default() };
    let (parent, _) = core.create_token(&root, req()).await.unwrap();
    let mut creators = Vec::new();
    for _ in 0..4 {
        let (core, parent) = (core.clone(), parent.to_string());
        creators.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut from = parent;
            for _ in 0..40 {
                match core.create_token(&Caller::token(Some(from.as_str())), req()).await {
                    Ok((t, _)) => {
                        got.push(t.to_string());
                        from = t.to_string();
                    }
                    Err(_) => break,
                }
            }
            got
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    core.revoke_token(&root, &parent).await.unwrap();
    let mut all = Vec::new();
    for c in creators {
        all.extend(c.await.unwrap());
    }
    for t in &all {
        let r = core.lookup_self(&Caller::token(Some(t.as_str()))).await;
        assert!(matches!(r, Err(Error::Unauthenticated)), "a token created under the revoked one survived");
    }
}

#[tokio::test]
async fn a_token_renewed_by_u64_max_keeps_living_until_its_max() {
    let (core, root) = dev_core().await;
    let req = TokenRequest { policies: vec!["default".into()], ttl_secs: 60, max_ttl_secs: 3600, ..Default::default() };
    let (t, entry) = core.create_token(&root, req).await.unwrap();
    let c = Caller::token(Some(t.as_str()));
    let expires = core.renew_self(&c, u64::MAX).await.unwrap().unwrap();
    assert_eq!(expires, entry.max_expires.unwrap());
    core.lookup_self(&c).await.unwrap();
    let expires = core.renew_token(&root, &t, u64::MAX).await.unwrap().unwrap();
    assert_eq!(expires, entry.max_expires.unwrap());
}

#[test]
fn times_saturate() {
    let t = Timestamp { secs: 100, nanos: 5 };
    assert_eq!(t.plus_secs(u64::MAX).secs, i64::MAX);
    assert_eq!(t.plus_secs(10), Timestamp { secs: 110, nanos: 5 });
}

/// A recursive listing shows only what listing each folder would.
#[tokio::test]
async fn a_recursive_list_drops_what_a_folder_denies() {
    let (core, root) = dev_core().await;
    for p in
        ["secret/team/ok/x", "secret/team/hidden/db", "secret/team/hidden/deeper/y", "secret/other/z", "secret/top"]
    {
        core.put(&root, p, &crate::value::SecretValue::Text(zeroize::Zeroizing::new("v".into())), None).await.unwrap();
    }
    let lister = token_with(
        &core,
        &root,
        "lister",
        r#"
path "secret/metadata/" { capabilities = ["list"] }
path "secret/metadata/team/*" { capabilities = ["list"] }
path "secret/metadata/team/hidden/*" { capabilities = ["deny"] }
"#,
    )
    .await;
    let (keys, _) = core.list(&lister, "secret/", 100, "", true).await.unwrap();
    assert_eq!(keys, vec!["team/ok/x", "top"], "other/ is not listable, team/hidden/ is denied");
    let (keys, _) = core.list(&root, "secret/", 100, "", true).await.unwrap();
    assert_eq!(keys.len(), 5);
    // Page by page: the same names, and no page token is a hidden name.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let (keys, next) = core.list(&lister, "secret/", 1, &token, true).await.unwrap();
        assert!(next.is_empty() || keys.last() == Some(&next), "the token {next:?} is not the last name shown");
        seen.extend(keys);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, vec!["team/ok/x", "top"]);
    let Err(e) = core.get(&lister, "nowhere/x", None).await else { panic!("no mount serves nowhere/") };
    assert!(matches!(&e, Error::NotFound(m) if !m.contains("secret/")), "the mounts were named: {e}");
}

/// A write by a token holding neither create nor update is refused before
/// any existence check, with one message whether the secret exists or not.
#[tokio::test]
async fn a_refused_write_does_not_tell_whether_the_secret_exists() {
    let (core, root) = dev_core().await;
    let v = || crate::value::SecretValue::Text(zeroize::Zeroizing::new("v".into()));
    core.put(&root, "secret/app/there", &v(), None).await.unwrap();
    let reader = token_with(&core, &root, "reader", "path \"secret/data/*\" { capabilities = [\"read\"] }").await;
    let Err(there) = core.put(&reader, "secret/app/there", &v(), None).await else { panic!("allowed") };
    let Err(absent) = core.put(&reader, "secret/app/absent", &v(), None).await else { panic!("allowed") };
    let msg = |e: &Error, p: &str| e.to_string().replace(p, "PATH");
    assert_eq!(msg(&there, "there"), msg(&absent, "absent"), "the refusal tells the two apart");
    assert!(there.to_string().contains("create or update"), "{there}");
}

/// Writing the metadata of a secret that does not exist yet needs `create`
/// on its metadata path, as writing its data does: `update` alone changes
/// only existing metadata (Vault's existence check).
#[tokio::test]
async fn metadata_of_a_new_secret_needs_create() {
    let (core, root) = dev_core().await;
    let t = token_with(&core, &root, "meta-update", r#"path "secret/metadata/*" { capabilities = ["update"] }"#).await;
    let e = core.put_metadata(&t, "secret/new", None, Some(3), Some(true)).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("create")), "{e:?}");
    super::tests::assert_err!(core.describe(&root, "secret/new").await, Error::NotFound(_));
    core.put(&root, "secret/old", &super::tests::fields(&[("k", "v")]), None).await.unwrap();
    let meta = core.put_metadata(&t, "secret/old", None, Some(3), None).await.unwrap();
    assert_eq!(meta.max_versions, 3);
    let c = token_with(&core, &root, "meta-create", r#"path "secret/metadata/*" { capabilities = ["create"] }"#).await;
    core.put_metadata(&c, "secret/new", None, Some(3), None).await.unwrap();
}
