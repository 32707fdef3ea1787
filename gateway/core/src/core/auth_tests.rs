//! Login methods through the core: config, roles, login, audit of refusals,
//! revocation on disable.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_testservers::issuer::Issuer;

use super::tests::hold_load;
use super::*;
use crate::Caller;

fn s(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

#[tokio::test]
async fn kubernetes_login_issues_role_tokens_and_audits_refusals() {
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default());
    let root = core.init(1, 1, Some("root-t"), true).await.unwrap().root_token.to_string();
    let r = &Caller::token(Some(&root));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    core.enable_audit(r, "file", "file", "", s(&[("file_path", log.to_str().unwrap())])).await.unwrap();
    let cluster = Issuer::new(ISS, "k1");
    core.enable_auth(r, "kubernetes", "kubernetes", "").await.unwrap();
    // Not configured yet: a clear precondition error.
    let sa = cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    let c = Caller::new(None, "login");
    assert!(matches!(core.login(&c, "kubernetes", "app-service", &sa).await, Err(Error::FailedPrecondition(_))));
    core.write_auth_config(
        r,
        "kubernetes",
        s(&[("pem_keys", &cluster.public_pem()), ("issuer", ISS), ("audience", "keybridge")]),
    )
    .await
    .unwrap();
    core.put_policy(r, "app-service", "path \"secret/data/database/*\" { capabilities = [\"read\"] }").await.unwrap();
    core.write_auth_role(
        r,
        "kubernetes",
        "app-service",
        s(&[
            ("bound_service_account_names", "app-sa"),
            ("bound_service_account_namespaces", "production"),
            ("policies", "app-service"),
            ("ttl", "1h"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(core.list_auth_roles(r, "kubernetes").await.unwrap(), vec!["app-service"]);

    let c = Caller::new(None, "login").with("jwt", crate::AuditValue::secret(sa.as_bytes()));
    let (token, entry) = core.login(&c, "kubernetes/", "app-service", &sa).await.unwrap();
    assert_eq!(entry.policies, vec!["app-service", "default"]);
    assert_eq!(entry.meta["service_account_name"], "app-sa");
    let ttl = entry.expires.unwrap().secs - entry.created.secs;
    assert_eq!(ttl, 3600);
    let t = &Caller::token(Some(&token));
    let me = core.lookup_self(t).await.unwrap();
    assert_eq!(me.display_name, "kubernetes-production-app-sa");
    core.put(r, "secret/database/main", &crate::value::SecretValue::Binary(Zeroizing::new(b"x".to_vec())), None)
        .await
        .unwrap();
    core.get(t, "secret/database/main", None).await.unwrap();
    assert!(matches!(core.get(t, "secret/other", None).await, Err(Error::PermissionDenied(_))));

    // Refusals: generic to the caller, the reason in the audit log.
    let wrong_ns = cluster.service_account_token("staging", "app-sa", "uid-1", "keybridge", 600);
    let c = Caller::new(None, "keybridge.v1.Auth/Login");
    let e = core.login(&c, "kubernetes", "app-service", &wrong_ns).await.unwrap_err();
    assert!(matches!(e, Error::LoginRefused(_)));
    assert!(!e.to_string().contains("staging"), "the caller learns nothing: {e}");
    let c = Caller::new(None, "keybridge.v1.Auth/Login");
    assert!(matches!(core.login(&c, "kubernetes", "nope", &sa).await, Err(Error::LoginRefused(_))));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("service account namespace \\\"staging\\\" is not bound to role \\\"app-service\\\""),
        "{text}"
    );
    assert!(text.contains("role \\\"nope\\\" does not exist"));
    assert!(!text.contains(&sa), "a credential reached the audit log");

    // Disabling the method revokes what it issued.
    core.disable_auth(r, "kubernetes").await.unwrap();
    assert!(matches!(core.lookup_self(t).await, Err(Error::Unauthenticated)));
    assert!(core.list_auth(r).await.unwrap().is_empty());
}

/// A core (root token `root-t`) with a kubernetes method trusting
/// `issuer` and a role `app`, sealed and unsealed again, so that the next
/// login parses the config (and passes the `auth` load hold).
async fn kubernetes_login_core(issuer: &Issuer) -> Arc<Core> {
    let core = Arc::new(Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default()));
    let init = core.init(1, 1, Some("root-t"), true).await.unwrap();
    let r = &Caller::token(Some("root-t"));
    core.enable_auth(r, "kubernetes", "kubernetes", "").await.unwrap();
    let config = s(&[("pem_keys", &issuer.public_pem()), ("issuer", ISS), ("audience", "keybridge")]);
    core.write_auth_config(r, "kubernetes", config).await.unwrap();
    let role = s(&[("bound_service_account_names", "app-sa"), ("bound_service_account_namespaces", "production")]);
    core.write_auth_role(r, "kubernetes", "app", role).await.unwrap();
    core.seal(r).await.unwrap();
    core.unseal(&init.keys[0], false, false).await.unwrap();
    core
}

/// A login that read the method's config just before an operator replaced
/// it (say, to retire a signing key) must not put the old config back in
/// the cache.
#[tokio::test]
async fn a_login_racing_a_config_change_does_not_bring_the_old_config_back() {
    let (old, new) = (Issuer::new(ISS, "k1"), Issuer::new(ISS, "k2"));
    let core = kubernetes_login_core(&old).await;
    let r = &Caller::token(Some("root-t"));

    let (reached, release) = hold_load(&core, "auth");
    let login = tokio::spawn({
        let core = core.clone();
        let jwt = old.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
        async move { core.login(&Caller::new(None, "login"), "kubernetes", "app", &jwt).await.map(|_| ()) }
    });
    reached.await.unwrap();
    // The old key is retired while that login has the old config in hand.
    core.write_auth_config(
        r,
        "kubernetes",
        s(&[("pem_keys", &new.public_pem()), ("issuer", ISS), ("audience", "keybridge")]),
    )
    .await
    .unwrap();
    release.send(()).unwrap();
    let _ = login.await.unwrap();

    let with_old = old.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    let e = core.login(&Caller::new(None, "login"), "kubernetes", "app", &with_old).await.map(|_| ());
    assert!(matches!(e, Err(Error::LoginRefused(_))), "the retired key still logs in: {e:?}");
    let with_new = new.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    core.login(&Caller::new(None, "login"), "kubernetes", "app", &with_new).await.unwrap();
}

/// A login that found its method before the method was disabled (here, or
/// on another node sharing the store) mints no token: its token is
/// conditioned on the auth table as it was when the method was looked up,
/// so the disable's sweep cannot miss it.
#[tokio::test]
async fn a_login_racing_a_disable_mints_no_token() {
    let issuer = Issuer::new(ISS, "k1");
    let core = kubernetes_login_core(&issuer).await;

    let (reached, release) = hold_load(&core, "auth");
    let login = tokio::spawn({
        let core = core.clone();
        let jwt = issuer.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
        async move { core.login(&Caller::new(None, "login"), "kubernetes", "app", &jwt).await.map(|_| ()) }
    });
    reached.await.unwrap();
    // Another node begins disabling the method while the login has it in
    // hand, and the feed tells this node.
    let (table, _) = crate::auth_methods::load_table(&core).await.unwrap();
    let table: Vec<crate::AuthMount> = table.into_iter().map(|m| crate::AuthMount { disabling: true, ..m }).collect();
    let mut batch = keybridge_barrier::WriteBatch::new();
    batch.put(crate::auth_methods::AUTH_TABLE_KEY, crate::core::encode_json(&table));
    core.barrier.commit(batch).await.unwrap();
    let told = [crate::auth_methods::AUTH_TABLE_KEY.to_string()];
    assert!(core.changed_elsewhere(crate::coherence::Changed::Keys(&told)).await);
    release.send(()).unwrap();
    let e = login.await.unwrap();
    assert!(matches!(e, Err(Error::Unavailable(_))), "a login under a method being disabled went through: {e:?}");
    let tokens = core.barrier.list("auth/", None, 1000).await.unwrap();
    assert!(tokens.iter().all(|k| !k.contains("/tokens/")), "{tokens:?}");
}
