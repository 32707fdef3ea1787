//! Two cores over one store, as two nodes sharing a PostgreSQL table: the
//! store records the keys each commit writes (as PostgreSQL's change feed
//! does) and the test tells the other core, which then drops or reloads
//! what it held. Before it is told, the other core still holds the old
//! state: that is what the feed is for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keybridge_barrier::{Barrier, Batch, Op, Physical, RedbStore};

use super::tests::{assert_err, field, fields};
use super::*;
use crate::coherence::Changed;
use crate::{Caller, TokenRequest};

/// A redb store that records the keys of every commit.
struct Recorded {
    inner: RedbStore,
    keys: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Physical for Recorded {
    fn kind(&self) -> &'static str {
        "recorded"
    }
    async fn get(&self, key: &str) -> keybridge_barrier::Result<Option<Vec<u8>>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str, start: Option<&str>, limit: usize) -> keybridge_barrier::Result<Vec<String>> {
        self.inner.list(prefix, start, limit).await
    }
    async fn commit(&self, batch: Batch) -> keybridge_barrier::Result<()> {
        let keys: Vec<String> = batch
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, .. } | Op::Delete { key } => key.clone(),
            })
            .collect();
        self.inner.commit(batch).await?;
        self.keys.lock().unwrap().extend(keys);
        Ok(())
    }
    fn export(
        &self,
        sink: &mut dyn FnMut(&str, &[u8]) -> keybridge_barrier::Result<()>,
    ) -> keybridge_barrier::Result<()> {
        self.inner.export(sink)
    }
    fn import(
        &self,
        entries: &mut dyn Iterator<Item = keybridge_barrier::Result<(String, Vec<u8>)>>,
    ) -> keybridge_barrier::Result<u64> {
        self.inner.import(entries)
    }
}

struct Nodes {
    store: Arc<Recorded>,
    a: Core,
    b: Core,
    root: String,
    key: String,
}

impl Nodes {
    async fn new() -> Nodes {
        Nodes::with_b(CoreConfig::default()).await
    }

    /// B built with `config`.
    async fn with_b(config: CoreConfig) -> Nodes {
        let store = Arc::new(Recorded { inner: RedbStore::in_memory().unwrap(), keys: Mutex::new(Vec::new()) });
        let a = Core::new(Barrier::new(store.clone()), CoreConfig::default());
        let init = a.init(1, 1, Some("root-t"), true).await.unwrap();
        let b = Core::new(Barrier::new(store.clone()), config);
        let key = init.keys[0].to_string();
        b.unseal(&key, false, false).await.unwrap();
        store.keys.lock().unwrap().clear();
        Nodes { store, a, b, root: init.root_token.to_string(), key }
    }

    /// Tells B what was committed since the last time (as its feed would).
    async fn tell_b(&self) {
        let mut keys = std::mem::take(&mut *self.store.keys.lock().unwrap());
        keys.sort();
        keys.dedup();
        self.b.changed_elsewhere(Changed::Keys(&keys)).await;
    }

    fn root(&self) -> Caller {
        Caller::token(Some(self.root.as_str()))
    }
}

async fn token(core: &Core, caller: &Caller, policy: &str) -> String {
    let req = TokenRequest { policies: vec![policy.into()], ttl_secs: 3600, ..Default::default() };
    core.create_token(caller, req).await.unwrap().0.to_string()
}

#[tokio::test]
async fn a_revoked_token_and_a_narrowed_policy_stop_working_once_told() {
    let n = Nodes::new().await;
    let r = &n.root();
    n.a.put(r, "secret/app", &fields(&[("pw", "1")]), None).await.unwrap();
    n.a.put_policy(r, "reader", "path \"secret/*\" { capabilities = [\"read\"] }").await.unwrap();
    let t = token(&n.a, r, "reader").await;
    let t = &Caller::token(Some(t.as_str()));
    n.tell_b().await;
    assert_eq!(field(&n.b.get(t, "secret/app", None).await.unwrap(), "pw"), "1"); // cached on B
    n.a.revoke_token(r, t.bearer().unwrap()).await.unwrap();
    assert!(n.b.get(t, "secret/app", None).await.is_ok(), "B was not caching the token: the test tests nothing");
    n.tell_b().await;
    assert_err!(n.b.get(t, "secret/app", None).await, Error::Unauthenticated);

    let t2 = token(&n.a, r, "reader").await;
    let t2 = &Caller::token(Some(t2.as_str()));
    n.tell_b().await;
    assert!(n.b.get(t2, "secret/app", None).await.is_ok());
    n.a.put_policy(r, "reader", "path \"other/*\" { capabilities = [\"read\"] }").await.unwrap();
    assert!(n.b.get(t2, "secret/app", None).await.is_ok(), "B was not caching the ACL");
    n.tell_b().await;
    assert_err!(n.b.get(t2, "secret/app", None).await, Error::PermissionDenied(_));
}

#[tokio::test]
async fn mounts_audit_devices_and_the_keyring_reach_the_other_node() {
    let n = Nodes::new().await;
    let r = &n.root();
    // A mount.
    n.a.enable_mount(r, "team/", "local", "", BTreeMap::new()).await.unwrap();
    assert!(n.b.put(r, "team/x", &fields(&[("k", "v")]), None).await.is_err());
    n.tell_b().await;
    n.b.put(r, "team/x", &fields(&[("k", "v")]), None).await.unwrap();
    // Tuned on A: B reads the new settings.
    n.a.tune_mount(r, "team/", None, BTreeMap::from([("max_versions".to_string(), "1".to_string())])).await.unwrap();
    n.tell_b().await;
    let m = n.b.list_mounts(r).await.unwrap().into_iter().find(|m| m.path == "team/").unwrap();
    assert_eq!(m.config.get("max_versions").map(String::as_str), Some("1"));
    // Removed on A: gone on B.
    n.a.disable_mount(r, "team/").await.unwrap();
    n.tell_b().await;
    assert!(n.b.list_mounts(r).await.unwrap().iter().all(|m| m.path != "team/"));
    // An audit device enabled on A records B's requests too.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let opts = BTreeMap::from([("file_path".to_string(), log.to_str().unwrap().to_string())]);
    n.a.enable_audit(r, "file", "file", "", opts).await.unwrap();
    n.tell_b().await;
    assert_eq!(n.b.list_audit(r).await.unwrap().len(), 1);
    n.a.disable_audit(r, "file").await.unwrap();
    n.tell_b().await;
    assert!(n.b.list_audit(r).await.unwrap().is_empty());
    // A rotation on A: B encrypts under the new term, A reads it.
    n.a.rotate(r).await.unwrap();
    n.tell_b().await;
    assert_eq!(n.b.key_status(r).await.unwrap().term, 2);
    n.b.put(r, "secret/after", &fields(&[("k", "b")]), None).await.unwrap();
    assert_eq!(field(&n.a.get(r, "secret/after", None).await.unwrap(), "k"), "b");
    // A rekey on A: B cannot open the keyring with its root key and seals.
    let keys = n.a.rekey(r, std::slice::from_ref(&n.key), 1, 1).await.unwrap();
    n.tell_b().await;
    assert!(n.b.seal_status().await.unwrap().sealed);
    n.b.unseal(&keys[0], false, false).await.unwrap();
    assert_eq!(field(&n.b.get(r, "secret/after", None).await.unwrap(), "k"), "b");
}

#[tokio::test]
async fn a_node_that_does_not_lead_runs_no_singleton_work() {
    let n = Nodes::new().await;
    let r = &n.root();
    n.b.set_leading(false);
    assert_err!(n.b.sync_run(r, "", false, std::time::Duration::ZERO).await, Error::Unavailable(m) if m.contains("leading node"));
    assert_err!(n.b.sync_status(r, &crate::StatusQuery::of("")).await, Error::Unavailable(_));
    assert!(n.a.sync_status(r, &crate::StatusQuery::of("")).await.is_ok());
    // The workers wait while the node does not lead.
    let b = Arc::new(n.b);
    let passes = tokio::spawn(b.clone().lease_worker());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!passes.is_finished());
    passes.abort();
}

/// A node that has not been told of another's change to a shared table
/// (audit devices, auth methods) does not overwrite it from its memory:
/// its change is conditioned on the stored table.
#[tokio::test]
async fn a_stale_node_does_not_overwrite_a_shared_table() {
    let n = Nodes::new().await;
    let r = &n.root();
    let dir = tempfile::tempdir().unwrap();
    let opts = |f: &str| BTreeMap::from([("file_path".to_string(), dir.path().join(f).to_str().unwrap().to_string())]);
    n.a.enable_audit(r, "one", "file", "", opts("one.log")).await.unwrap();
    // B, not told, enables another: it brings itself in line first.
    n.b.enable_audit(r, "two", "file", "", opts("two.log")).await.unwrap();
    n.tell_b().await;
    let names = |v: Vec<keybridge_audit::DeviceEntry>| v.into_iter().map(|d| d.path).collect::<Vec<_>>();
    assert_eq!(names(n.a.list_audit(r).await.unwrap()), ["one/"], "A not told yet");
    let stored: Vec<keybridge_audit::DeviceEntry> =
        serde_json::from_slice(&n.b.barrier.get(keybridge_audit::DEVICES_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(names(stored), ["one/", "two/"]);
    // A, not told of B's, disables its own: B's device stays in the table.
    n.a.disable_audit(r, "one").await.unwrap();
    n.tell_b().await;
    assert_eq!(names(n.b.list_audit(r).await.unwrap()), ["two/"]);

    // Auth methods: B, not told of A's, is refused and reads the table again.
    n.a.enable_auth(r, "k8s", "kubernetes", "").await.unwrap();
    assert_err!(n.b.enable_auth(r, "jwt", "jwt", "").await, Error::Contention(_));
    n.b.enable_auth(r, "jwt", "jwt", "").await.unwrap();
    let paths: Vec<String> = n.b.list_auth(r).await.unwrap().into_iter().map(|m| m.path).collect();
    assert_eq!(paths, ["k8s/", "jwt/"]);
}

/// A file device another node enabled starts here only inside this node's
/// own `audit_file_dir`; outside it, the device fails every record (fail
/// closed), so this node's requests are refused rather than unaudited.
#[tokio::test]
async fn a_device_enabled_elsewhere_keeps_to_this_nodes_audit_file_dir() {
    let (here, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = keybridge_audit::Node { file_dir: Some(here.path().to_path_buf()), ..Default::default() };
    let n = Nodes::with_b(CoreConfig { node, ..CoreConfig::default() }).await;
    let r = &n.root();
    let path = elsewhere.path().join("audit.log").to_str().unwrap().to_string();
    n.a.enable_audit(r, "file", "file", "", BTreeMap::from([("file_path".to_string(), path)])).await.unwrap();
    let before = std::fs::read_to_string(elsewhere.path().join("audit.log")).unwrap();
    n.tell_b().await;
    assert_err!(n.b.get(r, "secret/x", None).await, Error::AuditFailed(_));
    assert_err!(n.b.list_audit(r).await, Error::AuditFailed(_));
    // A's file got nothing from B.
    assert_eq!(std::fs::read_to_string(elsewhere.path().join("audit.log")).unwrap(), before);
}

/// Sync rules and a login method's config changed on one node reach the
/// other's caches (the rule list; the parsed config a login uses).
#[tokio::test]
async fn sync_rules_and_auth_configs_reach_the_other_node() {
    use keybridge_testservers::issuer::Issuer;
    const ISS: &str = "https://kubernetes.default.svc.cluster.local";
    let n = Nodes::new().await;
    let r = &n.root();
    // A rule created on A: B's cached list learns of it.
    n.a.enable_mount(r, "copy/", "local", "", BTreeMap::new()).await.unwrap();
    n.tell_b().await;
    assert!(n.b.list_sync_rules(r).await.unwrap().is_empty()); // cached on B now
    let spec = crate::RuleSpec {
        name: "c".into(),
        source: "secret/app/".into(),
        targets: vec!["copy/app/".into()],
        on_conflict: "overwrite".into(),
        scan_interval_secs: 3600,
        ..Default::default()
    };
    n.a.put_sync_rule(r, spec).await.unwrap();
    assert!(n.b.list_sync_rules(r).await.unwrap().is_empty(), "B was not caching the rules");
    n.tell_b().await;
    assert_eq!(n.b.list_sync_rules(r).await.unwrap().len(), 1);

    // A login method's signing key retired on A: B's parsed config follows.
    let (old, new) = (Issuer::new(ISS, "k1"), Issuer::new(ISS, "k2"));
    let config = |i: &Issuer| {
        BTreeMap::from([
            ("pem_keys".to_string(), i.public_pem()),
            ("issuer".to_string(), ISS.to_string()),
            ("audience".to_string(), "keybridge".to_string()),
        ])
    };
    n.a.enable_auth(r, "kubernetes", "kubernetes", "").await.unwrap();
    n.a.write_auth_config(r, "kubernetes", config(&old)).await.unwrap();
    let role = BTreeMap::from([
        ("bound_service_account_names".to_string(), "app-sa".to_string()),
        ("bound_service_account_namespaces".to_string(), "production".to_string()),
    ]);
    n.a.write_auth_role(r, "kubernetes", "app", role).await.unwrap();
    n.tell_b().await;
    let jwt = |i: &Issuer| i.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    let login = |jwt: String| {
        let b = &n.b;
        async move { b.login(&Caller::new(None, "login"), "kubernetes", "app", &jwt).await.map(|_| ()) }
    };
    login(jwt(&old)).await.unwrap(); // B parsed and kept the old config
    n.a.write_auth_config(r, "kubernetes", config(&new)).await.unwrap();
    login(jwt(&old)).await.unwrap(); // not told yet: the old key still works here
    n.tell_b().await;
    assert_err!(login(jwt(&old)).await, Error::LoginRefused(_));
    login(jwt(&new)).await.unwrap();
}
