//! Password policies at `sys/policies/password/`: stored in the barrier,
//! served through the Logical API, authorized by path, and what a built-in
//! engine reaches through its [`PasswordPolicies`].

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;

use keybridge_barrier::{Barrier, RedbStore};

use super::*;
use crate::plugins::*;
use crate::{Caller, EngineOp, TokenRequest};

const POLICY: &str = r#"
length = 20
rule "charset" {
  charset = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 1
}
rule "charset" {
  charset = "0123456789"
  min-chars = 1
}
"#;

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A built-in engine kind `hooked` whose `open` keeps the password
/// policies it was handed.
#[derive(Default)]
struct Hooked(StdMutex<Option<Arc<dyn PasswordPolicies>>>);

struct Inert(EngineInfo);

#[async_trait::async_trait]
impl PluginEngine for Inert {
    fn info(&self) -> &EngineInfo {
        &self.0
    }
    async fn exists(&self, _ctx: &CallContext, _req: &EngineRequest) -> Result<bool, EngineError> {
        Ok(false)
    }
    async fn handle(&self, _ctx: &CallContext, _req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        Ok(EngineResponse::default())
    }
    async fn renew(&self, _ctx: &CallContext, _lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        Err(EngineError::Unsupported("no".into()))
    }
    async fn revoke(&self, _ctx: &CallContext, _lease: &LeaseInfo) -> Result<(), EngineError> {
        Ok(())
    }
    async fn rotate(&self, _ctx: &CallContext, _path: &str, _params: &Params) -> Result<EngineResponse, EngineError> {
        Err(EngineError::Unsupported("no".into()))
    }
}

#[async_trait::async_trait]
impl BuiltinEngines for Hooked {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["hooked"]
    }
    fn validate(&self, _kind: &str, _config: &BTreeMap<String, String>) -> Result<(), String> {
        Ok(())
    }
    async fn open(
        &self,
        _kind: &str,
        _config: &BTreeMap<String, String>,
        _storage: Arc<dyn EngineStorage>,
        passwords: Arc<dyn PasswordPolicies>,
    ) -> Result<Arc<dyn PluginEngine>, EngineError> {
        *self.0.lock().unwrap() = Some(passwords);
        let info = EngineInfo {
            name: "hooked".into(),
            version: "1".into(),
            description: String::new(),
            paths: vec![],
            config_keys: vec![],
            rotates: false,
        };
        Ok(Arc::new(Inert(info)))
    }
}

async fn dev_core() -> (Core, Caller, Arc<Hooked>) {
    let hooked = Arc::new(Hooked::default());
    let config = CoreConfig { builtin_engines: Some(hooked.clone()), ..Default::default() };
    let core = Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), config);
    core.init(1, 1, Some("root-t"), true).await.unwrap();
    (core, Caller::token(Some("root-t")), hooked)
}

async fn token_with(core: &Core, root: &Caller, name: &str, policy: &str) -> Caller {
    core.put_policy(root, name, policy).await.unwrap();
    let req = TokenRequest { policies: vec![name.into()], no_default_policy: true, ..Default::default() };
    let (t, _) = core.create_token(root, req).await.unwrap();
    Caller::token(Some(t.as_str()))
}

async fn write(core: &Core, t: &Caller, name: &str, text: &str) -> Result<EngineReply> {
    core.engine_request(t, EngineOp::Write, &format!("sys/policies/password/{name}"), data(&[("policy", text)])).await
}

async fn read(core: &Core, t: &Caller, name: &str) -> Result<EngineReply> {
    core.engine_request(t, EngineOp::Read, &format!("sys/policies/password/{name}"), BTreeMap::new()).await
}

async fn generate(core: &Core, t: &Caller, name: &str) -> Result<String> {
    let r = core
        .engine_request(t, EngineOp::Read, &format!("sys/policies/password/{name}/generate"), BTreeMap::new())
        .await?;
    Ok(r.data.get("password").unwrap().to_string())
}

#[tokio::test]
async fn policies_are_stored_read_listed_generated_and_deleted() {
    let (core, root, _) = dev_core().await;
    let r = write(&core, &root, "db", POLICY).await.unwrap();
    assert!(r.data.0.is_empty() && r.lease.is_none());
    // In the barrier, as written.
    let stored = core.barrier.get("core/password-policies/db").await.unwrap().unwrap();
    assert_eq!(stored.as_slice(), POLICY.as_bytes());

    let read = core.engine_request(&root, EngineOp::Read, "sys/policies/password/db", BTreeMap::new()).await.unwrap();
    assert_eq!(read.data.get("policy"), Some(POLICY));
    write(&core, &root, "other", POLICY).await.unwrap();
    for path in ["sys/policies/password", "sys/policies/password/"] {
        let list = core.engine_request(&root, EngineOp::List, path, BTreeMap::new()).await.unwrap();
        assert_eq!(list.data.get("keys"), Some(r#"["db","other"]"#), "{path}");
    }
    let parsed = keybridge_policy::parse_password_policy(POLICY).unwrap();
    let a = generate(&core, &root, "db").await.unwrap();
    let b = generate(&core, &root, "db").await.unwrap();
    assert!(parsed.allows(&a) && parsed.allows(&b) && a != b, "{a} {b}");
    let help = core.path_help(&root, "sys/policies/password/db/generate").await.unwrap();
    assert_eq!((help.mount.as_str(), help.matched.as_deref()), ("sys/policies/password/", Some("{name}/generate")));

    core.engine_request(&root, EngineOp::Delete, "sys/policies/password/db", BTreeMap::new()).await.unwrap();
    assert!(core.barrier.get("core/password-policies/db").await.unwrap().is_none());
    let e = core.engine_request(&root, EngineOp::Read, "sys/policies/password/db", BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("no password policy named \"db\"")), "{e}");
    let e = generate(&core, &root, "db").await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(_)), "{e}");
    // Operations the paths do not take.
    let e = core.engine_request(&root, EngineOp::Write, "sys/policies/password/x/generate", BTreeMap::new()).await;
    assert!(matches!(&e, Err(Error::Unimplemented(m)) if m.contains("supports: read")), "{e:?}");
    let e = core.engine_request(&root, EngineOp::Read, "sys/policies/password/a/b/c", BTreeMap::new()).await;
    assert!(matches!(&e, Err(Error::NotFound(m)) if m.contains("serves no path")), "{e:?}");
}

#[tokio::test]
async fn bad_policies_and_names_are_refused_and_nothing_is_stored() {
    let (core, root, _) = dev_core().await;
    let cases: Vec<(String, &str, &str)> = vec![
        ("db".into(), "length = 20", "no rules"),
        ("db".into(), "length = 3\nrule \"charset\" { charset = \"ab\" }", "must be 4 to 100"),
        ("db".into(), "length = 4\nrule \"charset\" {\n charset = \"ab\"\n min-chars = 5\n}", "add up to 5"),
        ("db".into(), "length = 8\nrule \"charset\" { charset = \"a\tb\" }", "non-printable"),
        ("db".into(), "length = 8\nrule \"charset\" { charset = \"\" }", "empty"),
        ("db".into(), "length = 8\nrule \"charset\" {", "syntax error"),
        ("Bad name!".into(), POLICY, "invalid password policy name"),
        ("-x".into(), POLICY, "invalid password policy name"),
        ("x".repeat(129), POLICY, "invalid password policy name"),
    ];
    for (name, text, why) in &cases {
        let e = write(&core, &root, name, text).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains(why) && !m.contains('\n')),
            "{name} {text:?}: {e}"
        );
    }
    // Keybridge's entropy floor: 64 bits, length * log2(characters).
    let weak = [
        ("length = 4\nrule \"charset\" { charset = \"a\" }", "0.0 bits of entropy", "add characters"),
        ("length = 63\nrule \"charset\" { charset = \"xy\" }", "63.0 bits of entropy", "raise length to at least 64"),
        (
            "length = 10\nrule \"charset\" { charset = \"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\" }",
            "59.5 bits of entropy",
            "raise length to at least 11",
        ),
    ];
    for (text, bits, fix) in weak {
        let e = write(&core, &root, "weak", text).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains(bits) && m.contains("under the floor of 64") && m.contains(fix) && !m.contains('\n')),
            "{text:?}: {e}"
        );
    }
    // Possible on paper, never in practice: refused when written, since it
    // cannot draw a password.
    let all: String = (b'!'..=b'~').map(char::from).filter(|c| !"a\"\\".contains(*c)).collect();
    let hopeless = format!(
        "length = 12\nrule \"charset\" {{\n charset = \"a\"\n min-chars = 12\n}}\nrule \"charset\" {{ charset = \"{all}\" }}\n"
    );
    let e = write(&core, &root, "db", &hopeless).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("in 1000 tries")), "{e}");
    // The parameters are the path's.
    let path = "sys/policies/password/db";
    let e = core.engine_request(&root, EngineOp::Write, path, BTreeMap::new()).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("missing required parameter \"policy\"")), "{e}");
    let e = core.engine_request(&root, EngineOp::Write, path, data(&[("policy", POLICY), ("x", "1")])).await;
    assert!(matches!(&e, Err(Error::InvalidArgument(m)) if m.contains("unknown parameter \"x\"")), "{e:?}");
    assert!(core.barrier.list_all("core/password-policies/", 10).await.unwrap().is_empty(), "a refused write stored");

    // The size bound, through the API: 64 KiB taken, a byte more refused.
    let padded = |n: usize| format!("{POLICY}#{}\n", "x".repeat(n - POLICY.len() - 2));
    write(&core, &root, "big", &padded(64 * 1024)).await.unwrap();
    let e = write(&core, &root, "bigger", &padded(64 * 1024 + 1)).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("the limit is 65536")), "{e}");
}

#[tokio::test]
async fn each_path_needs_its_own_capability() {
    let (core, root, _) = dev_core().await;
    write(&core, &root, "db", POLICY).await.unwrap();
    let denied = |r: Result<EngineReply>| matches!(r, Err(Error::PermissionDenied(_)));

    // Generating is not reading the policy, and neither is writing it.
    let gen_only =
        token_with(&core, &root, "gen", "path \"sys/policies/password/db/generate\" { capabilities = [\"read\"] }")
            .await;
    generate(&core, &gen_only, "db").await.unwrap();
    assert!(denied(read(&core, &gen_only, "db").await));
    assert!(denied(write(&core, &gen_only, "db", POLICY).await));
    assert!(denied(core.engine_request(&gen_only, EngineOp::List, "sys/policies/password", BTreeMap::new()).await));
    assert!(matches!(generate(&core, &gen_only, "other").await, Err(Error::PermissionDenied(_))));

    // Reading the policy does not generate from it.
    let reader =
        token_with(&core, &root, "reader", "path \"sys/policies/password/*\" { capabilities = [\"read\"] }").await;
    read(&core, &reader, "db").await.unwrap();
    // (`*` covers .../generate too: a read rule for the policies only is
    // `sys/policies/password/+`.)
    let strict =
        token_with(&core, &root, "strict", "path \"sys/policies/password/+\" { capabilities = [\"read\"] }").await;
    read(&core, &strict, "db").await.unwrap();
    assert!(matches!(generate(&core, &strict, "db").await, Err(Error::PermissionDenied(_))));

    // Create makes new policies only; update changes existing ones only.
    let creator =
        token_with(&core, &root, "creator", "path \"sys/policies/password/*\" { capabilities = [\"create\"] }").await;
    write(&core, &creator, "new", POLICY).await.unwrap();
    assert!(denied(write(&core, &creator, "db", POLICY).await));
    let updater =
        token_with(&core, &root, "updater", "path \"sys/policies/password/db\" { capabilities = [\"update\"] }").await;
    write(&core, &updater, "db", &POLICY.replace("20", "24")).await.unwrap();
    assert!(denied(write(&core, &updater, "fresh", POLICY).await));
    assert!(core.barrier.get("core/password-policies/fresh").await.unwrap().is_none());

    // Listing and deleting, each on its own path.
    let lister =
        token_with(&core, &root, "lister", "path \"sys/policies/password\" { capabilities = [\"list\"] }").await;
    core.engine_request(&lister, EngineOp::List, "sys/policies/password/", BTreeMap::new()).await.unwrap();
    assert!(denied(core.engine_request(&lister, EngineOp::Delete, "sys/policies/password/db", BTreeMap::new()).await));
    let deleter =
        token_with(&core, &root, "deleter", "path \"sys/policies/password/new\" { capabilities = [\"delete\"] }").await;
    assert!(denied(core.engine_request(&deleter, EngineOp::Delete, "sys/policies/password/db", BTreeMap::new()).await));
    core.engine_request(&deleter, EngineOp::Delete, "sys/policies/password/new", BTreeMap::new()).await.unwrap();
    assert!(core.barrier.get("core/password-policies/db").await.unwrap().is_some());

    // A parameter constraint applies as on any engine path.
    let pinned = token_with(
        &core,
        &root,
        "pinned",
        "path \"sys/policies/password/*\" {\n capabilities = [\"create\", \"update\"]\n allowed_parameters = { \"policy\" = [\"length = 8*\"] }\n}",
    )
    .await;
    assert!(denied(write(&core, &pinned, "db", POLICY).await));
    write(&core, &pinned, "db", "length = 80\nrule \"charset\" { charset = \"ab\" }\n").await.unwrap();
}

#[tokio::test]
async fn a_builtin_engine_generates_from_named_policies_and_reaches_nothing_else() {
    let (core, root, hooked) = dev_core().await;
    write(&core, &root, "db", POLICY).await.unwrap();
    core.enable_mount(&root, "hooked/", "hooked", "", BTreeMap::new()).await.unwrap();
    let passwords = hooked.0.lock().unwrap().clone().expect("open was handed the password policies");

    let parsed = keybridge_policy::parse_password_policy(POLICY).unwrap();
    let g = passwords.generate("db").await.unwrap();
    assert!(parsed.allows(&g.password));
    assert_eq!(g.alphabet, parsed.alphabet());
    assert!(!format!("{g:?}").contains(g.password.as_str()), "Debug printed the password");
    assert_eq!(passwords.alphabet("db").await.unwrap().len(), 36);

    // An ACL policy of the same name is not a password policy; names are
    // names, never keys.
    assert!(matches!(passwords.generate("default").await, Err(EngineError::NotFound(_))));
    // At the floor, taken: 11 of 62 characters (65.5 bits).
    let eleven = "length = 11\nrule \"charset\" { charset = \"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\" }";
    write(&core, &root, "eleven", eleven).await.unwrap();
    assert_eq!(passwords.generate("eleven").await.unwrap().password.chars().count(), 11);
    for name in ["../policies/default", "db/../../policies/default", "", "a/b", "db\0"] {
        let e = passwords.alphabet(name).await.unwrap_err();
        assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("invalid password policy name")), "{name:?}");
    }
    // A change is seen at the next use.
    write(&core, &root, "db", "length = 64\nrule \"charset\" { charset = \"xy\" }\n").await.unwrap();
    assert_eq!(passwords.alphabet("db").await.unwrap(), ['x', 'y']);
    core.engine_request(&root, EngineOp::Delete, "sys/policies/password/db", BTreeMap::new()).await.unwrap();
    assert!(matches!(passwords.generate("db").await, Err(EngineError::NotFound(_))));
}
