//! The examples in terraform/examples, applied as a user would, checked
//! through the gRPC API, planned again without changes, and destroyed.

mod harness;

use std::time::{Duration, Instant};

use harness::{Gateway, Tf, rt};
use keybridge_proto::v1 as pb;

/// The examples are in Terraform's canonical format.
#[test]
fn examples_are_formatted() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    tf.ok(&["fmt", "-check", "-recursive", "-diff", dir]);
}

#[test]
fn minimal_example() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    tf.example("minimal");
    tf.init();
    let vars = ["-var", "api_key=Minimal-Api-Key-6060"];
    tf.ok(&[&["apply", "-auto-approve", "-no-color"][..], &vars].concat());
    assert_eq!(gw.fields("secret/app/api").unwrap()["key"], "Minimal-Api-Key-6060");
    assert!(!tf.state().contains("Minimal-Api-Key-6060"));
    let r = tf.run(&[&["plan", "-detailed-exitcode", "-no-color"][..], &vars].concat());
    assert_eq!(r.code, 0, "{}", r.all());
    tf.ok(&[&["destroy", "-auto-approve", "-no-color"][..], &vars].concat());
    assert_eq!(gw.fields("secret/app/api"), None);
}

#[test]
fn origin_document_example() {
    let moto = keybridge_testservers::process::Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| {
        vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
    });
    let gw = Gateway::dev();
    let key = rcgen::KeyPair::generate().unwrap();
    let tf = Tf::new(&gw);
    tf.example("origin-document");
    tf.init();
    let endpoint = format!("aws_endpoint_url={}", moto.url());
    let pem = format!("k8s_signing_keys_pem={}", key.public_key_pem());
    let vars = [
        "-var",
        &endpoint,
        "-var",
        "aws_access_key_id=testing",
        "-var",
        "aws_secret_access_key=Origin-Aws-Key-4141",
        "-var",
        "db_password=Origin-Db-Pw-2323",
        "-var",
        &pem,
    ];
    tf.ok(&[&["apply", "-auto-approve", "-no-color"][..], &vars].concat());

    let state = tf.state();
    assert!(!state.contains("Origin-Aws-Key-4141") && !state.contains("Origin-Db-Pw-2323"));
    let policy = rt()
        .block_on(gw.policies().get(gw.req(pb::GetPolicyRequest { name: "app-service".into() })))
        .unwrap()
        .into_inner();
    assert!(policy.policy.contains("pki/issue/app-tls"));
    let role = rt()
        .block_on(
            gw.auth()
                .read_role(gw.req(pb::ReadAuthRoleRequest { path: "kubernetes".into(), role: "app-service".into() })),
        )
        .unwrap()
        .into_inner()
        .settings;
    assert_eq!(
        (
            role["bound_service_account_names"].as_str(),
            role["bound_service_account_namespaces"].as_str(),
            role["ttl"].as_str(),
            role["policies"].as_str()
        ),
        ("app-sa", "production", "1h", "app-service")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.fields("aws/database/app").is_none_or(|f| f["password"] != "Origin-Db-Pw-2323") {
        assert!(Instant::now() < deadline, "the database secret did not reach AWS");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = tf.run(&[&["plan", "-detailed-exitcode", "-no-color"][..], &vars].concat());
    assert_eq!(r.code, 0, "{}", r.all());

    tf.ok(&[&["destroy", "-auto-approve", "-no-color"][..], &vars].concat());
    let gone = rt().block_on(gw.policies().get(gw.req(pb::GetPolicyRequest { name: "app-service".into() })));
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
}

/// terraform/install.sh lays the provider out as a filesystem mirror that
/// a plain `terraform init` installs from (no dev_overrides).
#[test]
fn installed_from_a_filesystem_mirror() {
    let gw = Gateway::dev();
    let mirror = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../install.sh");
    let o = std::process::Command::new("bash")
        .arg(script)
        .arg(mirror.path())
        .env("KEYBRIDGE_PROVIDER_BIN", env!("CARGO_BIN_EXE_terraform-provider-keybridge"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli = format!(
        "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"keybridge/keybridge\"]\n  }}\n}}\n",
        mirror.path().display()
    );
    let env = vec![
        ("KEYBRIDGE_ADDR".to_string(), gw.addr.clone()),
        ("KEYBRIDGE_TOKEN".to_string(), harness::TOKEN.to_string()),
    ];
    let tf = Tf::with_cli(env, &cli);
    tf.config("resource \"keybridge_policy\" \"p\" {\n  name   = \"mirrored\"\n  policy = \"path \\\"a/*\\\" { capabilities = [\\\"read\\\"] }\"\n}\n");
    let r = tf.ok(&["init", "-no-color"]);
    assert!(r.stdout.contains("Installed keybridge/keybridge v0.1.0"), "{}", r.stdout);
    assert!(tf.work().join(".terraform.lock.hcl").exists());
    tf.apply();
    assert!(rt().block_on(gw.policies().get(gw.req(pb::GetPolicyRequest { name: "mirrored".into() }))).is_ok());
    tf.destroy();
}
