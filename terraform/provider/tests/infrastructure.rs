//! Mounts (local and AWS on moto), replication rules, auth backends with
//! Kubernetes roles, and WASM plugins under a real Terraform: create, no
//! changes, modify, drift, import, destroy, checked through the gRPC API.

mod harness;

use std::time::{Duration, Instant};

use harness::{Gateway, Tf, rt};
use keybridge_proto::v1 as pb;

fn mount(gw: &Gateway, path: &str) -> Option<pb::Mount> {
    let mounts = rt().block_on(gw.sys().list_mounts(gw.req(pb::ListMountsRequest {}))).unwrap().into_inner().mounts;
    mounts.into_iter().find(|m| m.path == path)
}

fn tune(gw: &Gateway, path: &str, key: &str, value: &str) {
    let req = pb::TuneMountRequest {
        path: path.into(),
        description: None,
        config: [(key.to_string(), value.to_string())].into(),
    };
    rt().block_on(gw.sys().tune_mount(gw.req(req))).unwrap();
}

#[test]
fn local_mount_lifecycle_drift_and_import() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let config = |desc: &str, max: &str| {
        format!(
            "resource \"keybridge_mount\" \"kv\" {{\n  path        = \"team-kv\"\n  type        = \"local\"\n  description = \"{desc}\"\n  config      = {{ max_versions = \"{max}\" }}\n}}\n"
        )
    };
    tf.config(&config("team secrets", "5"));
    tf.init();
    tf.apply();
    let m = mount(&gw, "team-kv/").expect("mounted");
    assert_eq!(
        (m.r#type.as_str(), m.description.as_str(), m.config["max_versions"].as_str()),
        ("local", "team secrets", "5")
    );
    assert_eq!(tf.attrs("keybridge_mount.kv")["mount_id"], m.id);
    tf.assert_no_changes();

    tf.config(&config("the team's secrets", "7"));
    tf.apply();
    let m2 = mount(&gw, "team-kv/").unwrap();
    assert_eq!((m2.description.as_str(), m2.config["max_versions"].as_str()), ("the team's secrets", "7"));
    assert_eq!(m2.id, m.id, "an update must not recreate the mount");
    tf.assert_no_changes();

    tune(&gw, "team-kv/", "max_versions", "9");
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("\"9\" -> \"7\""), "{}", plan.stdout);
    tf.apply();
    assert_eq!(mount(&gw, "team-kv/").unwrap().config["max_versions"], "7");

    // A new type replaces the mount.
    tf.ok(&["state", "rm", "keybridge_mount.kv"]);
    tf.ok(&["import", "-no-color", "keybridge_mount.kv", "team-kv"]);
    tf.assert_no_changes();

    tf.destroy();
    assert!(mount(&gw, "team-kv/").is_none());
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn aws_mount_with_write_only_credentials_and_a_replication_rule() {
    let moto = keybridge_testservers::process::Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| {
        vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
    });
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let config = |on_conflict: &str, key_version: u32| {
        format!(
            r#"
resource "keybridge_mount" "aws" {{
  path              = "aws"
  type              = "aws"
  config            = {{ region = "us-east-1", endpoint_url = "{url}", access_key_id = "testing" }}
  config_wo         = {{ secret_access_key = "Moto-Secret-Key-8812" }}
  config_wo_version = {key_version}
}}

resource "keybridge_secret" "db" {{
  path            = "secret/database/app"
  data_wo         = {{ username = "app", password = "Replicated-Pw-3391" }}
  data_wo_version = 1
}}

resource "keybridge_replication_rule" "db" {{
  name        = "database-to-aws"
  source      = "secret/database/"
  targets     = ["aws/database/"]
  on_conflict = "{on_conflict}"
  depends_on  = [keybridge_mount.aws]
}}
"#,
            url = moto.url()
        )
    };
    tf.config(&config("overwrite", 1));
    tf.init();
    tf.apply();
    let m = mount(&gw, "aws/").expect("aws mounted");
    assert_eq!(m.config["secret_access_key"], "<redacted>");
    let state = tf.state();
    assert!(
        !state.contains("Moto-Secret-Key-8812") && !state.contains("Replicated-Pw-3391"),
        "a write-only value in state"
    );
    wait_for("the replica in AWS", || {
        gw.fields("aws/database/app").is_some_and(|f| f["password"] == "Replicated-Pw-3391")
    });
    let rule = rt()
        .block_on(gw.sync().get_rule(gw.req(pb::GetSyncRuleRequest { name: "database-to-aws".into() })))
        .unwrap()
        .into_inner();
    assert_eq!(
        (rule.source.as_str(), rule.targets.clone(), rule.on_conflict.as_str()),
        ("secret/database/", vec!["aws/database/".to_string()], "overwrite")
    );
    tf.assert_no_changes();

    // Modify the rule; rotate the credential by bumping its version.
    tf.config(&config("alert", 2));
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && !plan.all().contains("Moto-Secret-Key-8812"), "{}", plan.stdout);
    tf.apply();
    let rule2 = rt()
        .block_on(gw.sync().get_rule(gw.req(pb::GetSyncRuleRequest { name: "database-to-aws".into() })))
        .unwrap()
        .into_inner();
    assert_eq!((rule2.on_conflict.as_str(), rule2.id.as_str()), ("alert", rule.id.as_str()));
    tf.assert_no_changes();

    // Drift on the rule: a configured setting changed elsewhere is put
    // back; one the configuration leaves to the gateway is accepted.
    let mut changed = rule2.clone();
    changed.on_conflict = "adopt".into();
    changed.scan_interval_secs = 5;
    rt().block_on(gw.sync().create_rule(gw.req(changed))).unwrap();
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("\"adopt\" -> \"alert\""), "{}", plan.stdout);
    tf.apply();
    let rule3 = rt()
        .block_on(gw.sync().get_rule(gw.req(pb::GetSyncRuleRequest { name: "database-to-aws".into() })))
        .unwrap()
        .into_inner();
    assert_eq!((rule3.on_conflict.as_str(), rule3.scan_interval_secs), ("alert", 5));

    // Import both into a fresh state.
    for (addr, id) in [("keybridge_replication_rule.db", "database-to-aws"), ("keybridge_mount.aws", "aws")] {
        tf.ok(&["state", "rm", addr]);
        tf.ok(&["import", "-no-color", addr, id]);
    }
    assert!(!tf.state().contains("Moto-Secret-Key-8812"));
    // The imported mount's write-only credential is sent once more.
    tf.apply();
    tf.assert_no_changes();

    tf.destroy();
    assert!(mount(&gw, "aws/").is_none());
    assert!(
        rt().block_on(gw.sync().get_rule(gw.req(pb::GetSyncRuleRequest { name: "database-to-aws".into() }))).is_err()
    );
}

#[test]
fn kubernetes_auth_backend_and_role() {
    let gw = Gateway::dev();
    let key = rcgen::KeyPair::generate().unwrap();
    let pem_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pem_file.path(), key.public_key_pem()).unwrap();
    let tf = Tf::new(&gw);
    let config = |ttl: &str| {
        let audience = if ttl == "1h" { "keybridge" } else { "keybridge-prod" };
        format!(
            r#"
resource "keybridge_auth_backend" "k8s" {{
  path     = "kubernetes"
  type     = "kubernetes"
  pem_keys = file("{pem}")
  issuer   = "https://kubernetes.default.svc.cluster.local"
  audience = "{audience}"
}}

resource "keybridge_auth_kubernetes_role" "app" {{
  backend                          = keybridge_auth_backend.k8s.path
  role_name                        = "app-service"
  bound_service_account_names      = ["app-sa"]
  bound_service_account_namespaces = ["production"]
  policies                         = ["app-service"]
  ttl                              = "{ttl}"
}}
"#,
            pem = pem_file.path().display()
        )
    };
    let role = |gw: &Gateway| {
        rt().block_on(
            gw.auth()
                .read_role(gw.req(pb::ReadAuthRoleRequest { path: "kubernetes".into(), role: "app-service".into() })),
        )
        .map(|r| r.into_inner().settings)
    };
    tf.config(&config("1h"));
    tf.init();
    tf.apply();
    let s = role(&gw).expect("role written");
    assert_eq!(
        (
            s["bound_service_account_names"].as_str(),
            s["bound_service_account_namespaces"].as_str(),
            s["policies"].as_str(),
            s["ttl"].as_str()
        ),
        ("app-sa", "production", "app-service", "1h")
    );
    let cfg = rt()
        .block_on(gw.auth().read_config(gw.req(pb::ReadAuthConfigRequest { path: "kubernetes".into() })))
        .unwrap()
        .into_inner()
        .settings;
    assert_eq!(
        (cfg["issuer"].as_str(), cfg["audience"].as_str()),
        ("https://kubernetes.default.svc.cluster.local", "keybridge")
    );
    tf.assert_no_changes();

    // Modify both: the backend's audience and the role's TTL.
    tf.config(&config("2h"));
    tf.apply();
    assert_eq!(role(&gw).unwrap()["ttl"], "2h");
    let cfg = rt()
        .block_on(gw.auth().read_config(gw.req(pb::ReadAuthConfigRequest { path: "kubernetes".into() })))
        .unwrap()
        .into_inner()
        .settings;
    assert_eq!(cfg["audience"], "keybridge-prod");
    tf.assert_no_changes();

    // Drift: the role bound to another namespace outside Terraform.
    let mut changed = role(&gw).unwrap();
    changed.insert("bound_service_account_namespaces".into(), "staging".into());
    rt().block_on(gw.auth().write_role(gw.req(pb::WriteAuthRoleRequest {
        path: "kubernetes".into(),
        role: "app-service".into(),
        settings: changed,
    })))
    .unwrap();
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("staging"), "{}", plan.stdout);
    tf.apply();
    assert_eq!(role(&gw).unwrap()["bound_service_account_namespaces"], "production");

    for (addr, id) in [
        ("keybridge_auth_kubernetes_role.app", "kubernetes/role/app-service"),
        ("keybridge_auth_backend.k8s", "kubernetes"),
    ] {
        tf.ok(&["state", "rm", addr]);
        tf.ok(&["import", "-no-color", addr, id]);
    }
    tf.assert_no_changes();

    // A malformed import id is explained.
    tf.ok(&["state", "rm", "keybridge_auth_kubernetes_role.app"]);
    let r = tf.run(&["import", "-no-color", "keybridge_auth_kubernetes_role.app", "app-service"]);
    assert!(r.code != 0 && harness::flat(&r.stderr).contains("<backend>/role/<name>"), "{}", r.stderr);
    tf.ok(&["import", "-no-color", "keybridge_auth_kubernetes_role.app", "kubernetes/role/app-service"]);

    tf.destroy();
    assert_eq!(role(&gw).unwrap_err().code(), tonic::Code::NotFound);
    let methods = rt().block_on(gw.auth().list(gw.req(pb::ListAuthRequest {}))).unwrap().into_inner().methods;
    assert!(methods.iter().all(|m| !m.path.starts_with("kubernetes")), "{methods:?}");
}

fn plugin_file(name: &str) -> String {
    let dir = std::env::var("KEYBRIDGE_PLUGINS_DIR")
        .unwrap_or_else(|_| format!("{}/../../target/wasm32-wasip2/release", env!("CARGO_MANIFEST_DIR")));
    let file = format!("{dir}/keybridge_plugin_{name}.wasm");
    assert!(std::path::Path::new(&file).exists(), "{file} missing: run ./tests/run-all.sh, which builds the plugins");
    file
}

#[test]
fn wasm_plugin_registered_and_mounted() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let apikeys = plugin_file("apikeys");
    let moved = tf.dir.path().join("apikeys-copy.wasm");
    std::fs::copy(&apikeys, &moved).unwrap();
    let config = |file: &str| {
        format!(
            r#"
resource "keybridge_plugin" "apikeys" {{
  name   = "apikeys"
  file   = "{file}"
  sha256 = filesha256("{file}")
  # A new digest registers the new version before the old one goes, and
  # the mount (which pins the digest) moves to it in between.
  lifecycle {{
    create_before_destroy = true
  }}
}}

resource "keybridge_mount" "keys" {{
  path   = "keys"
  type   = "plugin"
  config = {{
    plugin            = keybridge_plugin.apikeys.name
    sha256            = keybridge_plugin.apikeys.sha256
    default_lease_ttl = "1h"
  }}
}}
"#
        )
    };
    let versions = |gw: &Gateway| {
        rt().block_on(gw.plugins().list(gw.req(pb::ListPluginsRequest { name: "apikeys".into() })))
            .unwrap()
            .into_inner()
            .plugins
    };
    tf.config(&config(&apikeys));
    tf.init();
    tf.apply();
    let v = versions(&gw);
    assert_eq!(v.len(), 1);
    assert_eq!(tf.attrs("keybridge_plugin.apikeys")["sha256"], v[0].sha256);
    assert_eq!(tf.attrs("keybridge_plugin.apikeys")["engine"], v[0].engine);
    assert_eq!(mount(&gw, "keys/").unwrap().r#type, "plugin");
    tf.assert_no_changes();

    // The same component from another file: nothing to upload again.
    tf.config(&config(&moved.display().to_string()));
    tf.apply();
    assert_eq!(versions(&gw).len(), 1);
    tf.assert_no_changes();

    // A new digest (another component under the same name stands in for a
    // new version): registered, the mount tuned to it, the old one deleted.
    let upgrade = plugin_file("passwords");
    tf.config(&config(&upgrade));
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("create replacement and then destroy"), "{}", plan.stdout);
    tf.apply();
    let after = versions(&gw);
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].sha256, v[0].sha256);
    assert_eq!(mount(&gw, "keys/").unwrap().config["sha256"], after[0].sha256);
    tf.assert_no_changes();
    tf.config(&config(&apikeys));
    tf.apply();

    // A digest that does not match the file is caught at plan, at `sha256`.
    let wrong = format!(
        "resource \"keybridge_plugin\" \"other\" {{\n  name   = \"other\"\n  file   = \"{apikeys}\"\n  sha256 = \"{}\"\n}}\n",
        "0".repeat(64)
    );
    let tf2 = Tf::new(&gw);
    tf2.config(&wrong);
    tf2.init();
    let r = tf2.run(&["plan", "-no-color"]);
    assert!(
        r.code != 0 && r.stderr.contains("Digest does not match the file") && r.stderr.contains("sha256 ="),
        "{}",
        r.stderr
    );

    let sha = v[0].sha256.clone();
    for (addr, id) in
        [("keybridge_mount.keys", "keys".to_string()), ("keybridge_plugin.apikeys", format!("apikeys@{sha}"))]
    {
        tf.ok(&["state", "rm", addr]);
        tf.ok(&["import", "-no-color", addr, &id]);
    }
    // The imported plugin learns its file from the configuration.
    tf.apply();
    tf.assert_no_changes();

    tf.destroy();
    assert!(mount(&gw, "keys/").is_none());
    assert!(versions(&gw).is_empty());
}
