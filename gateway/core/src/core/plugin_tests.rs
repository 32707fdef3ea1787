//! Engine mounts, Logical and leases, with a native engine standing in for
//! a plugin (the WASM host is tested in its own crate and end to end).

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keybridge_barrier::{Barrier, RedbStore};

use super::*;
use crate::TokenRequest;
use crate::backend::plugin::{ENGINE_CALLS_MAX, ENGINE_CALLS_PER_MOUNT};
use crate::plugins::*;
use crate::{Caller, EngineOp};

/// Issues `cred-N` at `creds/{name}` with a lease of `ttl` seconds; counts
/// revocations; fails the next `fail_revokes` of them.
#[derive(Default)]
struct Issuer {
    issued: AtomicU32,
    exists_calls: AtomicU32,
    revoked: StdMutex<Vec<String>>,
    fail_revokes: AtomicU32,
    /// Revocations running now, the most seen at once, and how long each
    /// takes (ms).
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    revoke_ms: AtomicU32,
}

struct IssuerEngine {
    info: EngineInfo,
    state: Arc<Issuer>,
}

fn issuer_info() -> EngineInfo {
    let f = |n: &str, k| Field { name: n.into(), kind: k, description: n.into(), required: false, default: None };
    EngineInfo {
        name: "issuer".into(),
        version: "1".into(),
        description: "test".into(),
        paths: vec![
            PathInfo {
                pattern: "creds/{name}".into(),
                synopsis: String::new(),
                description: String::new(),
                operations: vec![Operation::Read],
                fields: vec![
                    f("ttl", FieldKind::Duration),
                    f("max_ttl", FieldKind::Duration),
                    f("alt_names", FieldKind::CommaList),
                    f("exportable", FieldKind::Boolean),
                ],
                existence_check: false,
            },
            PathInfo {
                pattern: "roles/{name}".into(),
                synopsis: String::new(),
                description: String::new(),
                operations: vec![Operation::Create, Operation::Update, Operation::Read],
                fields: vec![f("level", FieldKind::Int)],
                existence_check: true,
            },
        ],
        config_keys: vec![f("flavour", FieldKind::String)],
        rotates: false,
    }
}

#[async_trait::async_trait]
impl PluginEngine for IssuerEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }
    async fn exists(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError> {
        self.state.exists_calls.fetch_add(1, Ordering::SeqCst);
        Ok(req.params.get("name") == Some("existing"))
    }
    async fn handle(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        if req.pattern == "roles/{name}" {
            return Ok(EngineResponse {
                data: Params(vec![("op".into(), req.operation.name().into())]),
                ..Default::default()
            });
        }
        let n = self.state.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let ttl = req.params.get("ttl").and_then(|t| t.parse().ok()).unwrap_or(60);
        let max = req.params.get("max_ttl").and_then(|t| t.parse().ok()).unwrap_or(0);
        Ok(EngineResponse {
            data: Params(vec![("secret".into(), format!("cred-{n}"))]),
            lease: Some(LeaseRequest {
                terms: LeaseTerms { ttl_secs: ttl, max_ttl_secs: max, renewable: true },
                internal: Params(vec![("id".into(), format!("cred-{n}"))]),
            }),
            warnings: vec![],
        })
    }
    async fn renew(&self, _ctx: &CallContext, lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        Ok(LeaseTerms { ttl_secs: lease.increment.max(10), max_ttl_secs: 0, renewable: true })
    }
    async fn revoke(&self, _ctx: &CallContext, lease: &LeaseInfo) -> Result<(), EngineError> {
        let now = self.state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let ms = self.state.revoke_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms.into())).await;
        }
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.state.fail_revokes.load(Ordering::SeqCst) > 0 {
            self.state.fail_revokes.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Unavailable("the service is down".into()));
        }
        self.state.revoked.lock().unwrap().push(lease.internal.get("id").unwrap_or_default().to_string());
        Ok(())
    }
    async fn rotate(&self, _ctx: &CallContext, _path: &str, _params: &Params) -> Result<EngineResponse, EngineError> {
        Err(EngineError::Unsupported("no".into()))
    }
}

struct NativeRuntime(Arc<Issuer>);

#[async_trait::async_trait]
impl PluginRuntime for NativeRuntime {
    async fn inspect(&self, _digest: &str, component: &[u8]) -> Result<EngineInfo, EngineError> {
        if component.starts_with(b"bad") {
            return Err(EngineError::BadComponent("not a WebAssembly component".into()));
        }
        Ok(issuer_info())
    }
    fn host_keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("timeout", "t")]
    }
    fn validate_host_config(&self, config: &BTreeMap<String, String>) -> Result<(), String> {
        match config.get("timeout") {
            Some(t) if t != "2s" => Err(format!("mount config timeout={t:?}: expected 2s")),
            _ => Ok(()),
        }
    }
    async fn open(&self, _spec: PluginSpec<'_>) -> Result<Arc<dyn PluginEngine>, EngineError> {
        Ok(Arc::new(IssuerEngine { info: issuer_info(), state: self.0.clone() }))
    }
}

const COMPONENT: &[u8] = b"component bytes";

fn digest(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
}

async fn core_with_issuer() -> (Core, Caller, Arc<Issuer>) {
    let (core, t, issuer, _) = core_with_key().await;
    (core, t, issuer)
}

async fn core_with_key() -> (Core, Caller, Arc<Issuer>, String) {
    let issuer = Arc::new(Issuer::default());
    let config = CoreConfig { plugins: Some(Arc::new(NativeRuntime(issuer.clone()))), ..Default::default() };
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), config);
    let init = core.init(1, 1, Some("root-t"), true).await.unwrap();
    let key = init.keys[0].to_string();
    let t = Caller::token(Some("root-t"));
    core.register_plugin(&t, "issuer", &digest(COMPONENT), COMPONENT).await.unwrap();
    let cfg = [("plugin".to_string(), "issuer".to_string())].into();
    core.enable_mount(&t, "creds/", "plugin", "", cfg).await.unwrap();
    (core, t, issuer, key)
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn the_catalog_checks_digests_and_components() {
    let (core, t, _) = core_with_issuer().await;
    let e = core.register_plugin(&t, "x", &digest(b"other"), COMPONENT).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("refusing it")), "{e}");
    let e = core.register_plugin(&t, "x", &digest(b"bad one"), b"bad one").await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("not a WebAssembly component")), "{e}");
    let e = core.register_plugin(&t, "Bad Name", &digest(COMPONENT), COMPONENT).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    assert!(core.list_plugins(&t, Some("x")).await.unwrap().is_empty(), "a refused upload left something behind");
    // The same bytes again: no new version.
    core.register_plugin(&t, "issuer", &digest(COMPONENT), COMPONENT).await.unwrap();
    let versions = core.list_plugins(&t, None).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].engine, "issuer");
    // In use: not deletable.
    let e = core.delete_plugin(&t, "issuer", None).await.unwrap_err();
    assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("creds/")), "{e}");
    // The mount pinned the digest.
    let mounts = core.list_mounts(&t).await.unwrap();
    let m = mounts.iter().find(|m| m.path == "creds/").unwrap();
    assert_eq!(m.config.get("sha256"), Some(&digest(COMPONENT)));
}

#[tokio::test]
async fn plugin_mount_configs_are_checked() {
    let (core, t, _) = core_with_issuer().await;
    let enable = |cfg: &[(&str, &str)]| {
        let cfg: BTreeMap<String, String> = cfg.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        core.enable_mount(&t, "other/", "plugin", "", cfg)
    };
    let e = enable(&[]).await.unwrap_err();
    assert!(e.to_string().contains("needs plugin=NAME"), "{e}");
    let e = enable(&[("plugin", "nope")]).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("register it first")), "{e}");
    let e = enable(&[("plugin", "issuer"), ("timeout", "9s")]).await.unwrap_err();
    assert!(e.to_string().contains("expected 2s"), "{e}");
    let e = enable(&[("plugin", "issuer"), ("colour", "red")]).await.unwrap_err();
    assert!(e.to_string().contains("unknown config key(s) colour") && e.to_string().contains("flavour"), "{e}");
    let e = enable(&[("plugin", "issuer"), ("sha256", &"0".repeat(64))]).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert!(!core.list_mounts(&t).await.unwrap().iter().any(|m| m.path == "other/"), "a refused mount was added");
    enable(&[("plugin", "issuer"), ("flavour", "mint"), ("timeout", "2s")]).await.unwrap();
}

#[tokio::test]
async fn logical_checks_paths_parameters_and_operations() {
    let (core, t, issuer) = core_with_issuer().await;
    let e = core.engine_request(&t, EngineOp::Read, "creds/nothing/here/x", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("creds/creds/{name}")), "{e}");
    let e = core.engine_request(&t, EngineOp::Write, "creds/creds/a", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::Unimplemented(m) if m.contains("supports: read")), "{e}");
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/a", data(&[("ttl", "soon")])).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("ttl")), "{e}");
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/a", data(&[("colour", "x")])).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("unknown parameter")), "{e}");
    assert_eq!(issuer.issued.load(Ordering::SeqCst), 0, "a refused request reached the engine");
    let e = core.engine_request(&t, EngineOp::Read, "secret/x", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("local mount")), "{e}");
    let e = core.get(&t, "creds/creds/a", None).await.err().unwrap();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("plugin mount")), "{e}");
    // The existence check picks create or update.
    let r = core.engine_request(&t, EngineOp::Write, "creds/roles/new", data(&[("level", "1")])).await.unwrap();
    assert_eq!(r.data.get("op"), Some("create"));
    let r = core.engine_request(&t, EngineOp::Write, "creds/roles/existing", data(&[("level", "1")])).await.unwrap();
    assert_eq!(r.data.get("op"), Some("update"));
}

#[tokio::test]
async fn policies_apply_to_engine_paths_with_parameter_constraints() {
    let (core, root, _) = core_with_issuer().await;
    let policy = r#"
path "creds/creds/app" {
  capabilities = ["read"]
  allowed_parameters = { "ttl" = ["30", "60"] }
}
path "creds/roles/*" {
  capabilities = ["update"]
}
"#;
    core.put_policy(&root, "issue-app", policy).await.unwrap();
    let tok = core
        .create_token(&root, TokenRequest { policies: vec!["issue-app".into()], ..Default::default() })
        .await
        .unwrap();
    let t = Caller::token(Some(tok.0.as_str()));
    core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "30")])).await.unwrap();
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "3600")])).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("ttl")), "{e}");
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/admin", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)));
    // Update is granted, create is not: the existence check decides.
    core.engine_request(&t, EngineOp::Write, "creds/roles/existing", BTreeMap::new()).await.unwrap();
    let e = core.engine_request(&t, EngineOp::Write, "creds/roles/new", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("create")), "{e}");
}

/// Constraints see the values the engine gets: a denied duration in other
/// units, a denied boolean as `1`, and every item of a comma list.
#[tokio::test]
async fn parameter_constraints_apply_to_converted_values_and_list_items() {
    let (core, root, issuer) = core_with_issuer().await;
    let policy = r#"
path "creds/creds/app" {
  capabilities = ["read"]
  allowed_parameters = { "alt_names" = ["*.app.internal"], "ttl" = [], "exportable" = [] }
  denied_parameters = { "ttl" = ["768h"], "exportable" = ["true"] }
}
"#;
    core.put_policy(&root, "typed", policy).await.unwrap();
    let (tok, _) =
        core.create_token(&root, TokenRequest { policies: vec!["typed".into()], ..Default::default() }).await.unwrap();
    let t = Caller::token(Some(tok.as_str()));
    let read = |pairs: &'static [(&'static str, &'static str)]| {
        core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(pairs))
    };
    read(&[("alt_names", "a.app.internal,b.app.internal"), ("ttl", "1h"), ("exportable", "false")]).await.unwrap();
    let issued = issuer.issued.load(Ordering::SeqCst);
    for bad in [
        &[("alt_names", "evil.com,web.app.internal")][..],
        &[("alt_names", "web.app.internal, evil.com")],
        &[("ttl", "32d")],
        &[("ttl", "2764800")],
        &[("exportable", "1")],
    ] {
        let e = read(bad).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{bad:?}: {e}");
    }
    assert_eq!(issuer.issued.load(Ordering::SeqCst), issued, "a refused request reached the engine");
}

/// An engine answering a renewal with `u64::MAX`, and a caller asking for
/// an increment of `u64::MAX`: the lease lives to its max TTL, not wrapped
/// into the past and revoked.
#[tokio::test]
async fn renewing_by_u64_max_saturates_at_the_lease_max() {
    let (core, t, issuer) = core_with_issuer().await;
    let r = core
        .engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "60"), ("max_ttl", "600")]))
        .await
        .unwrap();
    let lease = r.lease.unwrap();
    // The test engine answers with the increment as its TTL.
    let renewed = core.renew_lease(&t, &lease.lease_id, u64::MAX).await.unwrap();
    assert_eq!(renewed.expires, lease.max_expires);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(core.list_leases(&t, "", 0, "").await.unwrap().0.len(), 1, "the lease was revoked");
    assert!(issuer.revoked.lock().unwrap().is_empty());
    // A TTL of u64::MAX at issue is capped by the mount's max.
    let r = core
        .engine_request(&t, EngineOp::Read, "creds/creds/big", data(&[("ttl", "18446744073709551615")]))
        .await
        .unwrap();
    let big = r.lease.unwrap();
    assert!(big.expires > big.issued && big.expires <= big.max_expires);
}

/// A plugin's `exists` gets the caller's parameters: it runs only after the
/// request is recorded, so with no device able to record, it never runs.
#[tokio::test]
async fn a_plugins_existence_check_runs_only_after_the_request_is_recorded() {
    let (core, t, issuer) = core_with_issuer().await;
    core.engine_request(&t, EngineOp::Write, "creds/roles/one", data(&[("level", "1")])).await.unwrap();
    assert_eq!(issuer.exists_calls.load(Ordering::SeqCst), 1);
    let opts = [("file_path".to_string(), "/dev/full".to_string())].into();
    core.enable_audit(&t, "full", "file", "", opts).await.unwrap();
    let e = core.engine_request(&t, EngineOp::Write, "creds/roles/two", data(&[("level", "2")])).await.unwrap_err();
    assert!(matches!(e, Error::AuditFailed(_)), "{e}");
    assert_eq!(issuer.exists_calls.load(Ordering::SeqCst), 1, "exists ran before the request was recorded");
}

#[tokio::test]
async fn leases_are_recorded_renewed_and_revoked() {
    let (core, t, issuer) = core_with_issuer().await;
    let r = core
        .engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "60"), ("max_ttl", "120")]))
        .await
        .unwrap();
    assert_eq!(r.data.get("secret"), Some("cred-1"));
    let lease = r.lease.unwrap();
    assert!(lease.lease_id.starts_with("creds/creds/app/"), "{}", lease.lease_id);
    assert_eq!(lease.ttl_secs, 60);
    assert_eq!(lease.max_expires.secs - lease.issued.secs, 120);
    let listed = core.list_leases(&t, "creds/", 0, "").await.unwrap().0;
    assert_eq!(listed.len(), 1);
    let renewed = core.renew_lease(&t, &lease.lease_id, 100).await.unwrap();
    assert!(renewed.expires <= lease.max_expires, "renewed past the max TTL");
    assert!(renewed.expires.secs > lease.expires.secs);
    core.revoke_lease(&t, &lease.lease_id).await.unwrap();
    assert_eq!(*issuer.revoked.lock().unwrap(), vec!["cred-1".to_string()]);
    assert!(core.list_leases(&t, "", 0, "").await.unwrap().0.is_empty());
    let e = core.renew_lease(&t, &lease.lease_id, 10).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    let e = core.revoke_lease(&t, "../x").await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    // By prefix.
    for _ in 0..3 {
        core.engine_request(&t, EngineOp::Read, "creds/creds/batch", BTreeMap::new()).await.unwrap();
    }
    core.engine_request(&t, EngineOp::Read, "creds/creds/other", BTreeMap::new()).await.unwrap();
    assert_eq!(core.revoke_lease_prefix(&t, "creds/creds/batch").await.unwrap(), 3);
    assert_eq!(core.list_leases(&t, "", 0, "").await.unwrap().0.len(), 1);
}

#[tokio::test]
async fn expired_leases_are_revoked_with_retries_and_survive_a_reseal() {
    let (core, t, issuer, key) = core_with_key().await;
    issuer.fail_revokes.store(1, Ordering::SeqCst);
    let r = core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "1")])).await.unwrap();
    let id = r.lease.unwrap().lease_id;
    // Sealed and unsealed: the lease is read back from the store.
    core.seal(&t).await.unwrap();
    assert!(matches!(core.lease_pass().await, Err(Error::Sealed)));
    core.unseal(&key, false, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    core.lease_pass().await.unwrap();
    // The engine failed: the lease stays, with the error, for a retry.
    let l = core.lookup_lease(&t, &id).await.unwrap();
    assert_eq!(l.attempts, 1);
    assert!(l.last_error.as_deref().unwrap_or_default().contains("the service is down"), "{l:?}");
    assert!(issuer.revoked.lock().unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    core.lease_pass().await.unwrap();
    assert_eq!(*issuer.revoked.lock().unwrap(), vec!["cred-1".to_string()]);
    assert!(matches!(core.lookup_lease(&t, &id).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn a_lease_that_cannot_be_recorded_revokes_its_credential() {
    let (core, t, issuer) = core_with_issuer().await;
    core.leases.fail_record.store(true, Ordering::SeqCst);
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::Internal(m) if m.contains("the credential was revoked")), "{e}");
    assert_eq!(*issuer.revoked.lock().unwrap(), vec!["cred-1".to_string()]);
    core.leases.fail_record.store(false, Ordering::SeqCst);
    assert!(core.list_leases(&t, "", 0, "").await.unwrap().0.is_empty());
}

#[tokio::test]
async fn disabling_a_mount_revokes_its_leases_first() {
    let (core, t, issuer) = core_with_issuer().await;
    core.engine_request(&t, EngineOp::Read, "creds/creds/a", BTreeMap::new()).await.unwrap();
    core.engine_request(&t, EngineOp::Read, "creds/creds/b", BTreeMap::new()).await.unwrap();
    issuer.fail_revokes.store(1, Ordering::SeqCst);
    let e = core.disable_mount(&t, "creds/").await.unwrap_err();
    assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("leases must be revoked")), "{e}");
    assert!(core.list_mounts(&t).await.unwrap().iter().any(|m| m.path == "creds/"));
    core.disable_mount(&t, "creds/").await.unwrap();
    assert_eq!(issuer.revoked.lock().unwrap().len(), 2);
    assert!(core.list_leases(&t, "", 0, "").await.unwrap().0.is_empty());
}

/// `Leases/List` pages in id order; a token from elsewhere and a page
/// larger than the most allowed are refused.
#[tokio::test]
async fn lease_lists_page_in_id_order() {
    let (core, t, _) = core_with_issuer().await;
    for _ in 0..5 {
        core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap();
    }
    core.engine_request(&t, EngineOp::Read, "creds/creds/other", BTreeMap::new()).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (page, next) = core.list_leases(&t, "creds/creds/app", 2, &token).await.unwrap();
        pages += 1;
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|l| l.lease_id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(pages, 3, "5 leases in pages of 2");
    let (full, next) = core.list_leases(&t, "creds/creds/app", 5, "").await.unwrap();
    assert_eq!((full.len(), next.as_str()), (5, ""), "a full last page promises no next one");
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "not in id order: {seen:?}");
    assert!(seen.iter().all(|id| id.starts_with("creds/creds/app/")));
    let e = core.list_leases(&t, "creds/creds/app", 2, "creds/creds/other/x").await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("page_token")), "{e}");
    let e = core.list_leases(&t, "", crate::leases::LIST_PAGE_MAX + 1, "").await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("at most")), "{e}");
    let (all, next) = core.list_leases(&t, "", crate::leases::LIST_PAGE_MAX, "").await.unwrap();
    assert_eq!((all.len(), next.as_str()), (6, ""));
}

/// Expiry takes due leases from the store's time-ordered index and revokes
/// them in bulk, a bounded number at once per mount: with 40 due and each
/// revocation taking 50 ms, one pass revokes all 40, never more than the
/// bound at once, and well under 40 × 50 ms.
#[tokio::test]
async fn expiry_revokes_in_bulk_with_bounded_concurrency_per_mount() {
    let (core, t, issuer) = core_with_issuer().await;
    for _ in 0..40 {
        core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "1")])).await.unwrap();
    }
    // Not due: a lease renewed past the others.
    let kept = core.engine_request(&t, EngineOp::Read, "creds/creds/kept", data(&[("ttl", "1")])).await.unwrap();
    let kept = kept.lease.unwrap().lease_id;
    core.renew_lease(&t, &kept, 3600).await.unwrap();
    issuer.revoke_ms.store(50, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    core.lease_pass().await.unwrap();
    let took = started.elapsed();
    assert_eq!(issuer.revoked.lock().unwrap().len(), 40);
    let most = issuer.max_in_flight.load(Ordering::SeqCst) as usize;
    // Bounded, and concurrent (two leases on one lock stripe take turns,
    // so the bound itself is not always reached).
    assert!(most <= crate::leases::REVOKE_CONCURRENCY_PER_MOUNT, "{most} revocations at once");
    assert!(most >= crate::leases::REVOKE_CONCURRENCY_PER_MOUNT / 2, "only {most} revocations at once");
    assert!(took < Duration::from_millis(40 * 50 / 2), "one at a time? {took:?}");
    let (left, _) = core.list_leases(&t, "", 0, "").await.unwrap();
    assert_eq!(left.iter().map(|l| l.lease_id.as_str()).collect::<Vec<_>>(), vec![kept.as_str()]);
}

/// A store written before the due index existed: its leases get index
/// entries at the first unseal, and then expire.
#[tokio::test]
async fn leases_from_before_the_due_index_are_indexed_at_unseal() {
    let (core, t, issuer, key) = core_with_key().await;
    // More than one page of the migration (512).
    for _ in 0..600 {
        core.engine_request(&t, EngineOp::Read, "creds/creds/app", data(&[("ttl", "1")])).await.unwrap();
    }
    // As an older store: no index entries, no marker.
    let barrier = core.barrier.clone();
    let mut b = keybridge_barrier::WriteBatch::new();
    for k in barrier.list_all("core/lease-due/", usize::MAX).await.unwrap() {
        b.delete(k);
    }
    b.delete("core/lease-due-indexed");
    barrier.commit(b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    core.lease_pass().await.unwrap();
    assert!(issuer.revoked.lock().unwrap().is_empty(), "nothing indexed, nothing expires");
    core.seal(&t).await.unwrap();
    core.unseal(&key, false, false).await.unwrap();
    assert_eq!(barrier.list_all("core/lease-due/", usize::MAX).await.unwrap().len(), 600);
    core.lease_pass().await.unwrap();
    assert_eq!(issuer.revoked.lock().unwrap().len(), 600);
}

/// An engine request (by the root token) held just before its lease is
/// recorded, whose caller then went away: what lets the call go on.
async fn abandoned_at_lease_record(core: &Arc<Core>) -> tokio::sync::oneshot::Sender<()> {
    let (reached, release) = super::tests::hold_load(core, "record-lease");
    let c = core.clone();
    let request = tokio::spawn(async move {
        let _ =
            c.engine_request(&Caller::token(Some("root-t")), EngineOp::Read, "creds/creds/app", BTreeMap::new()).await;
    });
    reached.await.unwrap();
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    release
}

/// A request cancelled after the engine issued a credential and before its
/// lease was recorded: the engine call and the record go on in their own
/// task, so the credential is under a lease like any other, and nothing is
/// revoked (for PKI, a revocation is a CRL entry any caller could add by
/// hanging up).
#[tokio::test]
async fn a_credential_whose_request_goes_away_before_its_lease_is_recorded_is_still_leased() {
    let (core, _, issuer) = core_with_issuer().await;
    let core = Arc::new(core);
    let release = abandoned_at_lease_record(&core).await;
    release.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while core.leases.counts().await.unwrap().values().sum::<i64>() == 0 {
        assert!(std::time::Instant::now() < deadline, "the credential's lease was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(core.leases.counts().await.unwrap().values().sum::<i64>(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(issuer.revoked.lock().unwrap().is_empty(), "the credential was revoked");
}

/// Engine calls in progress are bounded per node and per mount: with every
/// slot but one taken, a call goes through; with all taken (one held by a
/// call whose caller went away), the next is refused, and goes through once
/// it ends.
#[tokio::test]
async fn engine_calls_in_progress_are_bounded() {
    for per_mount in [false, true] {
        engine_calls_are_bounded(per_mount).await;
    }
}

async fn engine_calls_are_bounded(per_mount: bool) {
    let (core, t, _) = core_with_issuer().await;
    let core = Arc::new(core);
    let (pool, max, what) = if per_mount {
        let mount_id = core.list_mounts(&t).await.unwrap().into_iter().find(|m| m.path == "creds/").unwrap().id;
        let share = Arc::new(tokio::sync::Semaphore::new(ENGINE_CALLS_PER_MOUNT));
        core.engine_calls_by_mount.lock().unwrap().insert(mount_id, share.clone());
        (share, ENGINE_CALLS_PER_MOUNT, "this mount has")
    } else {
        (core.engine_calls.clone(), ENGINE_CALLS_MAX, "this node has")
    };
    let others = pool.clone().acquire_many_owned((max - 1) as u32).await.unwrap();
    core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap();
    let release = abandoned_at_lease_record(&core).await;
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::ResourceExhausted(m) if m.contains(what)), "{e}");
    release.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.available_permits() == 0 {
        assert!(std::time::Instant::now() < deadline, "the detached call kept its slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap();
    drop(others);
}

/// Disabling an engine mount waits for its calls in progress (one whose
/// caller went away records its lease late), then revokes every lease:
/// none is left on a mount that is gone.
#[tokio::test]
async fn disabling_a_mount_waits_for_its_calls_in_progress() {
    let (core, t, issuer) = core_with_issuer().await;
    let core = Arc::new(core);
    let release = abandoned_at_lease_record(&core).await;
    let c = core.clone();
    let disable = tokio::spawn(async move { c.disable_mount(&Caller::token(Some("root-t")), "creds/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!disable.is_finished(), "the disable did not wait for the call in progress");
    // A new call meanwhile is refused: the mount's slots are held.
    let e = core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, Error::ResourceExhausted(_)), "{e}");
    release.send(()).unwrap();
    disable.await.unwrap().unwrap();
    assert_eq!(*issuer.revoked.lock().unwrap(), vec!["cred-1".to_string()], "the late lease was revoked");
    assert!(core.leases.counts().await.unwrap().values().all(|n| *n == 0), "a lease outlived its mount");
    assert!(core.engine_calls_by_mount.lock().unwrap().is_empty());
}

/// Leases are counted by mount in rows of this node's own, in the commit
/// that writes or deletes the lease; a second delete of the same lease
/// counts nothing; leases written before the counts existed are counted
/// once at unseal; and the metrics show the count by mount path.
#[tokio::test]
async fn leases_are_counted_by_mount_in_the_commits_that_change_them() {
    let (core, t, _, key) = core_with_key().await;
    let mount_id = core.list_mounts(&t).await.unwrap().into_iter().find(|m| m.path == "creds/").unwrap().id;
    async fn counted(core: &Core, id: &str) -> i64 {
        core.leases.counts().await.unwrap().get(id).copied().unwrap_or(0)
    }
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap();
        ids.push(r.lease.unwrap().lease_id);
    }
    assert_eq!(counted(&core, &mount_id).await, 20);
    // Several rows of this node's, none of any other.
    let rows = core.barrier.list_all("core/lease-counts/", usize::MAX).await.unwrap();
    assert!(rows.len() > 1 && rows.iter().all(|r| r.starts_with("core/lease-counts/local/")), "{rows:?}");
    core.revoke_lease(&t, &ids[0]).await.unwrap();
    assert_eq!(counted(&core, &mount_id).await, 19);
    // The record is gone: deleting it again (another node's revoke racing
    // this one) counts nothing.
    let gone = crate::leases::tests_record(&ids[0]);
    core.leases.delete_for_test(&gone).await.unwrap();
    assert_eq!(counted(&core, &mount_id).await, 19);
    assert_eq!(core.revoke_lease_prefix(&t, "creds/creds/app").await.unwrap(), 19);
    assert_eq!(counted(&core, &mount_id).await, 0);

    // A store from before the counts: rows and marker gone, five leases.
    for _ in 0..5 {
        core.engine_request(&t, EngineOp::Read, "creds/creds/app", BTreeMap::new()).await.unwrap();
    }
    let mut b = keybridge_barrier::WriteBatch::new();
    for k in core.barrier.list_all("core/lease-counts/", usize::MAX).await.unwrap() {
        b.delete(k);
    }
    b.delete("core/lease-counts-initialized");
    core.barrier.commit(b).await.unwrap();
    core.seal(&t).await.unwrap();
    core.unseal(&key, false, false).await.unwrap();
    assert_eq!(counted(&core, &mount_id).await, 5);
    let text = core.metrics_text(true).await;
    assert!(text.contains("keybridge_leases{mount=\"creds/\"} 5\n"), "{text}");
    assert!(text.contains("keybridge_leases{mount=\"secret/\"} 0\n"), "{text}");
}

/// Rules, rotations and schedules take local and cloud mounts only: a
/// plugin mount's paths are its engine's.
#[tokio::test]
async fn rules_rotations_and_schedules_refuse_plugin_mounts() {
    let (core, t, _) = core_with_issuer().await;
    core.enable_mount(&t, "kv/", "local", "", BTreeMap::new()).await.unwrap();
    for (source, target) in [("creds/", "kv/copy/"), ("kv/", "creds/copy/")] {
        let spec = crate::RuleSpec {
            name: "r".into(),
            source: source.into(),
            targets: vec![target.into()],
            ..Default::default()
        };
        let e = core.put_sync_rule(&t, spec).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("plugin mount")), "{e}");
    }
    let spec = || crate::RotateSpec { path: "creds/issue/app".into(), ..Default::default() };
    let e = core.rotate_secret(&t, spec()).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("plugin mount")), "{e}");
    let e = core.schedule_rotation(&t, spec(), 3600).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("plugin mount")), "{e}");
}
