//! Login methods through the core: config, roles, login, audit of refusals,
//! revocation on disable.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_barrier::{Barrier, RedbStore};
use keybridge_testservers::issuer::Issuer;

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
    core.write_auth_config(r, "kubernetes", s(&[("pem_keys", &cluster.public_pem()), ("issuer", ISS)])).await.unwrap();
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
