//! The PKI resources under a real Terraform against a dev gateway: a PKI
//! mount, its root CA and the origin document's `app-tls` role; the role
//! issues for `*.app.internal` only; updates in place, drift (a CA deleted
//! outside Terraform), an exported root whose key never reaches state,
//! import of the role, destroy.

mod harness;

use harness::{Gateway, Tf, rt};
use keybridge_proto::v1 as pb;

fn logical(gw: &Gateway) -> pb::logical_client::LogicalClient<tonic::transport::Channel> {
    pb::logical_client::LogicalClient::new(gw.channel())
}

fn call(gw: &Gateway, write: bool, path: &str, data: &[(&str, &str)]) -> Result<pb::LogicalResponse, tonic::Status> {
    let data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let req = gw.req(pb::LogicalRequest { path: path.into(), data });
    let mut c = logical(gw);
    rt().block_on(async move { if write { c.write(req).await } else { c.read(req).await } }).map(|r| r.into_inner())
}

fn config(root_type: &str, bare: bool) -> String {
    format!(
        r#"resource "keybridge_mount" "pki" {{
  path = "pki"
  type = "pki"
}}

resource "keybridge_pki_secret_backend_root_cert" "root" {{
  backend     = keybridge_mount.pki.path
  type        = "{root_type}"
  common_name = "Origin Root"
  ttl         = "87600h"
  key_type    = "ec"
}}

resource "keybridge_pki_secret_backend_role" "app_tls" {{
  backend            = keybridge_mount.pki.path
  name               = "app-tls"
  allowed_domains    = ["app.internal"]
  allow_subdomains   = true
  allow_bare_domains = {bare}
  max_ttl            = "72h"
  depends_on         = [keybridge_pki_secret_backend_root_cert.root]
}}
"#
    )
}

#[test]
fn root_and_role_lifecycle_drift_import_and_destroy() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    tf.config(&config("internal", false));
    tf.init();
    tf.apply();
    let ca = call(&gw, false, "pki/ca/pem", &[]).expect("a CA").data["certificate"].clone();
    let state = tf.attrs("keybridge_pki_secret_backend_root_cert.root");
    assert_eq!(state["certificate"], ca.as_str());
    assert!(state["serial_number"].as_str().unwrap().contains(':'));
    let issued = call(&gw, true, "pki/issue/app-tls", &[("common_name", "api.app.internal"), ("ttl", "24h")])
        .expect("issued under the role");
    assert_eq!(issued.data["issuing_ca"], ca);
    let e = call(&gw, true, "pki/issue/app-tls", &[("common_name", "evil.com")]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = call(&gw, true, "pki/issue/app-tls", &[("common_name", "app.internal")]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "bare domain refused: {e}");
    tf.assert_no_changes();

    // A role change is an update in place.
    tf.config(&config("internal", true));
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("update in-place"), "{}", plan.stdout);
    tf.apply();
    assert_eq!(call(&gw, false, "pki/roles/app-tls", &[]).unwrap().data["allow_bare_domains"], "true");
    call(&gw, true, "pki/issue/app-tls", &[("common_name", "app.internal")]).expect("bare domain allowed now");
    tf.assert_no_changes();

    // The CA deleted outside Terraform: planned for creation again.
    let req = gw.req(pb::LogicalRequest { path: "pki/root".into(), data: Default::default() });
    rt().block_on(logical(&gw).delete(req)).unwrap();
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("will be created"), "{}", plan.stdout);
    tf.apply();
    assert_ne!(call(&gw, false, "pki/ca/pem", &[]).unwrap().data["certificate"], ca, "a new CA");

    // Import of the role; a root is not importable.
    tf.ok(&["state", "rm", "keybridge_pki_secret_backend_role.app_tls"]);
    tf.ok(&["import", "-no-color", "keybridge_pki_secret_backend_role.app_tls", "pki/roles/app-tls"]);
    // The gateway gives TTLs in seconds: the configuration's `72h` is
    // written once more, and then nothing changes.
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("\"259200\" -> \"72h\""), "{}", plan.stdout);
    tf.apply();
    tf.assert_no_changes();

    // An exported root: the gateway returns its key once; state keeps none.
    tf.config(&config("exported", true));
    let (changes, plan) = tf.plan_has_changes();
    assert!(changes && plan.stdout.contains("must be replaced"), "{}", plan.stdout);
    tf.apply();
    assert!(!tf.state().contains("PRIVATE KEY"));

    tf.destroy();
    assert_eq!(call(&gw, false, "pki/roles/app-tls", &[]).unwrap_err().code(), tonic::Code::NotFound);
}
