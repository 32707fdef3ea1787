//! Starts `keybridge` processes and talks to them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const BIN: &str = env!("CARGO_BIN_EXE_keybridge");

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The telemetry listener's base URL, when the config has one.
    pub telemetry: Option<String>,
    pub root_token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns the binary and waits for its "Listening on" line. The child is
/// owned by the returned `Server` at once, so a failed start kills it too.
fn spawn(args: &[&str]) -> Server {
    spawn_with(args, "warn", Stdio::inherit())
}

fn spawn_with(args: &[&str], log: &str, stderr: Stdio) -> Server {
    spawn_env(args, log, stderr, &[])
}

fn spawn_env(args: &[&str], log: &str, stderr: Stdio, env: &[(&str, &str)]) -> Server {
    let child = Command::new(BIN)
        .args(args)
        // Tests give cloud mounts their credentials explicitly; none come
        // from the machine running them.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .env("KEYBRIDGE_LOG", log)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn keybridge");
    let mut server = Server { child, addr: String::new(), telemetry: None, root_token: None, ca_pem: None };
    let stdout = server.child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "server did not start in time");
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "server exited before listening: {:?}", server.child.try_wait());
        if let Some(rest) = line.strip_prefix("Telemetry on ") {
            server.telemetry = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(t) = line.strip_prefix("Root Token: ") {
            server.root_token = Some(t.trim().to_string());
        }
        if let Some(rest) = line.split("Listening on ").nth(1) {
            server.addr = rest.split_whitespace().next().expect("address").to_string();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return server;
        }
    }
}

/// Reads a starting server's stdout until its "Listening on" line, then
/// keeps draining it (so the child never blocks on a full pipe). Panics if
/// the process ends first.
pub fn until_listening(stdout: std::process::ChildStdout) {
    let mut out = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).expect("read stdout") > 0, "exited before listening");
        if line.contains("Listening on") {
            std::thread::spawn(move || for _ in out.lines() {});
            return;
        }
    }
}

impl Server {
    pub fn dev() -> Server {
        spawn(&["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", "root-e2e"])
    }

    /// A dev server logging everything (trace level) to `log`.
    pub fn dev_logging_to(log: &Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        spawn_with(
            &["server", "--dev", "--dev-listen-address", "127.0.0.1:0", "--dev-root-token-id", "root-LOGCHECK-7f3e"],
            "trace",
            Stdio::from(file),
        )
    }

    /// A server from a config file in `dir` (storage in `dir/data`).
    pub fn with_config(dir: &Path, tls: bool, port: u16) -> Server {
        Self::with_config_limits(dir, tls, port, "")
    }

    /// As [`Server::with_config_limits`] (plain TCP), its log (warnings
    /// and errors) written to `log`.
    pub fn with_config_logging_to(dir: &Path, limits: &str, log: &Path) -> Server {
        let stderr = Stdio::from(std::fs::File::create(log).unwrap());
        Self::config_server_io(dir, false, 0, limits, "", &[], stderr, "")
    }

    /// A plain-TCP server from a config file in `dir` with this storage
    /// block; its config file's path is `dir/keybridge.hcl`.
    pub fn with_storage(dir: &Path, storage: &str) -> Server {
        Self::config_server_io(dir, false, 0, "", "", &[], Stdio::inherit(), storage)
    }

    /// As [`Server::with_storage`], listening on `port`, with `api_addr` its
    /// own address (so other nodes sharing the store can reach it).
    pub fn with_storage_on(dir: &Path, port: u16, storage: &str) -> Server {
        let top = format!("api_addr = \"http://127.0.0.1:{port}\"");
        Self::config_server_io(dir, false, port, "", &top, &[], Stdio::inherit(), storage)
    }

    /// A loopback port free now.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A plain-TCP server from a config file with `top` added at the top level.
    pub fn with_config_top(dir: &Path, top: &str) -> Server {
        Self::config_server(dir, false, 0, "", top)
    }

    /// As [`Server::with_config`], with more lines in the `limits` block.
    pub fn with_config_limits(dir: &Path, tls: bool, port: u16, limits: &str) -> Server {
        Self::config_server(dir, tls, port, limits, "")
    }

    /// A plain-TCP server from a config file with `top` added at the top
    /// level, and extra environment variables.
    pub fn with_config_top_env(dir: &Path, top: &str, env: &[(&str, &str)]) -> Server {
        Self::config_server_io(dir, false, 0, "", top, env, Stdio::inherit(), "")
    }

    /// As [`Server::with_config_top_env`] with this storage block.
    pub fn with_storage_top_env(dir: &Path, storage: &str, top: &str, env: &[(&str, &str)]) -> Server {
        Self::config_server_io(dir, false, 0, "", top, env, Stdio::inherit(), storage)
    }

    /// A plain-TCP config server with extra environment variables.
    pub fn with_config_env(dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::config_server_io(dir, false, 0, "", "", env, Stdio::inherit(), "")
    }

    fn config_server(dir: &Path, tls: bool, port: u16, limits: &str, top: &str) -> Server {
        Self::config_server_io(dir, tls, port, limits, top, &[], Stdio::inherit(), "")
    }

    /// `storage`: the storage block (empty: a file store in `dir/data`).
    #[allow(clippy::too_many_arguments)]
    fn config_server_io(
        dir: &Path,
        tls: bool,
        port: u16,
        limits: &str,
        top: &str,
        env: &[(&str, &str)],
        stderr: Stdio,
        storage: &str,
    ) -> Server {
        let data = dir.join("data");
        let storage = match storage {
            "" => format!("storage \"file\" {{\n path = \"{}\"\n}}", data.display()),
            s => s.to_string(),
        };
        let (listener, ca) = if tls {
            let (cert, key, ca) = tls_files(dir);
            (
                format!(
                    "listener \"tcp\" {{\n address = \"127.0.0.1:{port}\"\n tls_cert_file = \"{}\"\n tls_key_file = \"{}\"\n}}",
                    cert.display(),
                    key.display()
                ),
                Some(ca),
            )
        } else {
            (format!("listener \"tcp\" {{\n address = \"127.0.0.1:{port}\"\n tls_disable = true\n}}"), None)
        };
        let config = format!(
            "{listener}\n{storage}\nlimits {{\n max_value_bytes = 65536\n{limits}\n}}\ndisable_mlock = true\n{top}\n"
        );
        let file = dir.join("keybridge.hcl");
        std::fs::write(&file, config).unwrap();
        let mut server = spawn_env(&["server", "--config", file.to_str().unwrap()], "warn", stderr, env);
        server.ca_pem = ca;
        server
    }

    pub async fn channel(&self) -> Channel {
        let mut ep = Endpoint::from_shared(self.addr.clone()).unwrap();
        if let Some(ca) = &self.ca_pem {
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost"))
                .unwrap();
        }
        ep.connect().await.expect("connect")
    }

    pub async fn secrets(&self) -> pb::secrets_client::SecretsClient<Channel> {
        pb::secrets_client::SecretsClient::new(self.channel().await)
    }

    pub async fn sys(&self) -> pb::sys_client::SysClient<Channel> {
        pb::sys_client::SysClient::new(self.channel().await)
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, token: Option<&str>, args: &[&str]) -> Output {
        self.cli_stdin(token, args, "")
    }

    pub fn cli_stdin(&self, token: Option<&str>, args: &[&str], stdin: &str) -> Output {
        blocking(|| self.cli_stdin_now(token, args, stdin))
    }

    fn cli_stdin_now(&self, token: Option<&str>, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("KEYBRIDGE_ADDR", &self.addr).env_remove("KEYBRIDGE_TOKEN").env_remove("KEYBRIDGE_CACERT");
        if let Some(t) = token {
            cmd.env("KEYBRIDGE_TOKEN", t);
        }
        if self.ca_pem.is_some() {
            cmd.env("KEYBRIDGE_CACERT", self.ca_file());
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ca_file(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!("kb-e2e-ca-{}.pem", self.child.id()));
        std::fs::write(&path, self.ca_pem.as_ref().unwrap()).unwrap();
        path
    }
}

/// A CA and a server certificate for localhost/127.0.0.1, as PEM files.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let tls = keybridge_testservers::tls::test_certs("keybridge test CA");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, tls.cert_pem).unwrap();
    std::fs::write(&key_path, tls.key_pem).unwrap();
    (cert_path, key_path, tls.ca_pem.into_bytes())
}

/// Initialises (one share) and unseals a config server; the root token and key.
pub fn init_unseal(s: &Server) -> (String, String) {
    let o = s.cli(None, &["operator", "init", "--key-shares", "1", "--key-threshold", "1", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = v["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let o = s.cli(None, &["operator", "unseal", &key]);
    assert!(o.status.success(), "{}", stderr(&o));
    (v["root_token"].as_str().unwrap().to_string(), key)
}

pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub fn fields(pairs: &[(&str, &str)]) -> Option<pb::SecretValue> {
    Some(pb::SecretValue {
        kind: Some(pb::secret_value::Kind::Fields(pb::Fields {
            fields: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })),
    })
}

pub fn field(resp: &pb::GetResponse, name: &str) -> String {
    match resp.value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(pb::secret_value::Kind::Fields(f)) => f.fields[name].clone(),
        _ => panic!("fields expected"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// VmLck of a process, in KiB.
pub fn locked_kib(pid: u32) -> u64 {
    status_kib(pid, "VmLck:")
}

/// A field of a process's `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Runs blocking work (a CLI process, a sleep) without stalling the test's
/// runtime: on a multi-thread runtime the worker hands its tasks over first,
/// so test servers running in-process (Key Vault, Secret Manager) keep
/// answering the gateway meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

// ----- cloud test servers -------------------------------------------------------

/// A CLI call's JSON output, which must have succeeded.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// moto's server on a free port (installed by tests/run-all.sh).
pub fn moto() -> keybridge_testservers::process::Spawned {
    keybridge_testservers::process::Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| {
        vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
    })
}

/// Runs a boto3 script against moto (`c` is the Secrets Manager client): a
/// tool other than Keybridge writing secrets.
pub fn boto3(moto: &keybridge_testservers::process::Spawned, script: &str) -> String {
    let server = std::env::var("KEYBRIDGE_MOTO_SERVER").unwrap();
    let python = Path::new(&server).with_file_name("python");
    let prelude = format!(
        "import boto3\nc = boto3.client('secretsmanager', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing')\n",
        moto.url()
    );
    let o = blocking(|| Command::new(python).arg("-c").arg(prelude + script).output().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Mount settings of an AWS mount on moto.
pub fn aws_settings(moto: &keybridge_testservers::process::Spawned) -> Vec<String> {
    vec![
        "region=us-east-1".into(),
        format!("endpoint_url={}", moto.url()),
        "access_key_id=testing".into(),
        "secret_access_key=testing".into(),
    ]
}

/// Mount settings of a GCP mount on our Secret Manager test server, with
/// its service-account key file (the server takes no other credentials).
pub fn gcp_settings(sm: &keybridge_testservers::secretmanager::SecretManager) -> Vec<String> {
    vec![
        "project=keybridge-test".into(),
        format!("endpoint={}", sm.url()),
        format!("credentials={}", sm.key_file().display()),
    ]
}

/// The test Key Vault's CA, written to a file for the `ca_cert` setting.
pub fn kv_ca_file(kv: &keybridge_testservers::keyvault::KeyVault) -> PathBuf {
    let ca = std::env::temp_dir().join(format!("kb-e2e-kv-ca-{}-{}.pem", std::process::id(), kv.addr.port()));
    std::fs::write(&ca, &kv.ca_pem).unwrap();
    ca
}

/// Mount settings of an Azure mount on the test Key Vault.
pub fn azure_settings(kv: &keybridge_testservers::keyvault::KeyVault) -> Vec<String> {
    use keybridge_testservers::keyvault::{CLIENT_ID, CLIENT_SECRET};
    vec![
        format!("vault_url={}", kv.url),
        format!("authority_host={}", kv.url),
        format!("tenant_id={}", kv.tenant),
        format!("client_id={CLIENT_ID}"),
        format!("client_secret={CLIENT_SECRET}"),
        format!("ca_cert={}", kv_ca_file(kv).display()),
    ]
}

/// `mount enable --type KIND PATH settings...`, which must succeed.
pub fn enable(s: &Server, token: &str, kind: &str, path: &str, settings: &[String]) {
    let mut args = vec!["mount", "enable", "--type", kind, path];
    args.extend(settings.iter().map(String::as_str));
    let o = s.cli(Some(token), &args);
    assert!(o.status.success(), "{}", stderr(&o));
}
