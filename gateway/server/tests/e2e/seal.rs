//! Auto-unseal and seal migration against real key services: moto's KMS
//! (and the project's Cloud KMS and Key Vault test servers, see
//! tests/servers). The node unseals by itself at start, hands out recovery
//! keys, stays sealed with a clear status while its key service does not
//! answer and unseals when it does, and moves between Shamir keys and key
//! services without losing data, on one node and on several.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keybridge_testservers::process::Spawned;
use serde_json::Value;

use crate::harness::{Server, blocking, json, moto, stderr, stdout};

/// Runs a boto3 script against moto with a KMS client `k`; its stdout.
fn kms(m: &Spawned, script: &str) -> String {
    let server = std::env::var("KEYBRIDGE_MOTO_SERVER").unwrap();
    let python = Path::new(&server).with_file_name("python");
    let prelude = format!(
        "import boto3\nk = boto3.client('kms', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='testing', aws_secret_access_key='testing')\n",
        m.url()
    );
    let o = blocking(|| Command::new(python).arg("-c").arg(prelude + script).output().unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A new symmetric key in moto's KMS under `alias`; its key id.
fn kms_key(m: &Spawned, alias: &str) -> String {
    kms(
        m,
        &format!(
            "i = k.create_key(Description='keybridge unseal')['KeyMetadata']['KeyId']\n\
             k.create_alias(AliasName='{alias}', TargetKeyId=i)\nprint(i)"
        ),
    )
}

/// The environment that points the AWS SDK at moto (so the seal block can
/// be the origin document's, as written).
fn moto_env(m: &Spawned) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", m.url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
}

fn awskms(alias: &str, disabled: bool) -> String {
    let d = if disabled { "\n  disabled = \"true\"" } else { "" };
    format!("seal \"awskms\" {{\n  region = \"us-east-1\"\n  kms_key_id = \"{alias}\"{d}\n}}\n")
}

fn start(dir: &Path, m: &Spawned, top: &str) -> Server {
    let env = moto_env(m);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::with_config_top_env(dir, top, &env)
}

fn status(s: &Server) -> Value {
    let o = s.cli(None, &["operator", "status", "-o", "json"]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)))
}

/// Polls the status until `ok` holds (panics after `secs`).
fn wait_for(s: &Server, secs: u64, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(s);
        if ok(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s; status {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unsealed(st: &Value) -> bool {
    st["sealed"] == false
}

fn put(s: &Server, token: &str, path: &str, value: &str) {
    let o = s.cli(Some(token), &["kv", "put", path, &format!("pw={value}")]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn get(s: &Server, token: &str, path: &str) -> String {
    let o = s.cli(Some(token), &["kv", "get", "-o", "json", path]);
    json(&o)["data"]["pw"].as_str().unwrap_or_default().to_string()
}

fn keys(v: &Value, field: &str) -> Vec<String> {
    v[field].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

fn stop(mut s: Server) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let _ = s.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awskms_unseals_at_start_hands_out_recovery_keys_and_outlasts_an_outage() {
    let m = moto();
    kms_key(&m, "alias/vault-unseal-key");
    let dir = tempfile::tempdir().unwrap();
    // The origin document's block, as written.
    let block = "seal \"awskms\" {\n  region = \"us-east-1\"\n  kms_key_id = \"alias/vault-unseal-key\"\n}\n";
    let s = start(dir.path(), &m, block);
    let st = status(&s);
    assert_eq!((st["initialized"].as_bool(), st["type"].as_str()), (Some(false), Some("awskms")), "{st}");

    let init =
        json(&s.cli(None, &["operator", "init", "--recovery-shares", "3", "--recovery-threshold", "2", "-o", "json"]));
    let recovery = keys(&init, "recovery_keys_b64");
    assert!(stdout(&s.cli(None, &["operator", "status"])).contains("awskms"));
    assert_eq!(recovery.len(), 3, "{init}");
    assert!(init.get("unseal_keys_b64").is_none(), "{init}");
    let root = init["root_token"].as_str().unwrap().to_string();
    // Unsealed at once: the key service holds the root key.
    let st = status(&s);
    assert!(unsealed(&st) && st["recovery_seal"] == true && st["n"] == 3 && st["t"] == 2, "{st}");
    put(&s, &root, "secret/app", "before-restart");
    let text = stdout(&s.cli(None, &["operator", "status"]));
    assert!(text.contains("awskms") && text.contains("Recovery Threshold"), "{text}");

    // A restart unseals by itself.
    stop(s);
    let s = start(dir.path(), &m, block);
    wait_for(&s, 20, "auto-unseal after a restart", unsealed);
    assert_eq!(get(&s, &root, "secret/app"), "before-restart");

    // Rekey takes recovery keys and hands out new ones; the old are spent.
    let o = s.cli_stdin(
        Some(&root),
        &["operator", "rekey", "--key-shares", "4", "--key-threshold", "2", "-o", "json"],
        &recovery[..2].join("\n"),
    );
    let fresh = keys(&json(&o), "recovery_keys_b64");
    assert_eq!(fresh.len(), 4);
    let o = s.cli_stdin(Some(&root), &["operator", "rekey", "-o", "json"], &recovery[1..].join("\n"));
    assert!(!o.status.success() && stderr(&o).contains("do not reconstruct"), "{}", stderr(&o));

    // Sealed by request, it stays sealed until asked.
    assert!(s.cli(Some(&root), &["operator", "seal"]).status.success());
    std::thread::sleep(Duration::from_secs(3));
    let st = status(&s);
    assert!(st["sealed"] == true && st["seal_message"].as_str().unwrap().contains("sealed by request"), "{st}");
    // Asking without keys does not undo a seal by request: no token is
    // needed to ask. The recovery keys do.
    let o = s.cli(None, &["operator", "unseal", "-o", "json"]);
    assert!(!o.status.success() && stderr(&o).contains("recovery keys"), "{}", stderr(&o));
    let o = s.cli(None, &["operator", "unseal", &recovery[0]]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(None, &["operator", "unseal", &recovery[1]]);
    assert!(!o.status.success() && stderr(&o).contains("do not reconstruct"), "spent keys: {}", stderr(&o));
    assert_eq!(status(&s)["sealed"], true);
    for k in &fresh[..2] {
        let o = s.cli(None, &["operator", "unseal", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_for(&s, 20, "unsealed by the recovery keys", unsealed);
    // Not held: anyone may ask for an attempt now (it changes nothing here).
    assert!(s.cli(None, &["operator", "unseal"]).status.success());

    // The key service stops answering: a restarted node starts sealed,
    // says why, and unseals once the service is back.
    stop(s);
    m.pause();
    let s = start(dir.path(), &m, block);
    let st = wait_for(&s, 40, "a status naming the failure", |st| {
        st["sealed"] == true && st["seal_message"].as_str().is_some_and(|m| m.contains("auto-unseal failed"))
    });
    assert!(st["seal_message"].as_str().unwrap().contains("AWS KMS"), "{st}");
    let o = s.cli(Some(&root), &["kv", "get", "secret/app"]);
    assert!(!o.status.success(), "a sealed node serves nothing");
    m.resume();
    let st = wait_for(&s, 60, "auto-unseal after the outage", unsealed);
    assert_eq!(st["seal_message"], "", "{st}");
    assert_eq!(get(&s, &root, "secret/app"), "before-restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seals_migrate_from_shamir_to_awskms_to_another_key_and_back_without_losing_data() {
    let m = moto();
    kms_key(&m, "alias/first");
    kms_key(&m, "alias/second");
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &m, "");
    let init = json(&s.cli(None, &["operator", "init", "--key-shares", "3", "--key-threshold", "2", "-o", "json"]));
    let shares = keys(&init, "unseal_keys_b64");
    let root = init["root_token"].as_str().unwrap().to_string();
    for k in &shares[..2] {
        assert!(s.cli(None, &["operator", "unseal", k]).status.success());
    }
    put(&s, &root, "secret/app", "kept");
    stop(s);

    // Shamir to KMS: the node waits for the unseal keys, given with --migrate.
    let s = start(dir.path(), &m, &awskms("alias/first", false));
    let st = status(&s);
    assert!(st["sealed"] == true && st["migration"] == true, "{st}");
    let o = s.cli(None, &["operator", "unseal", &shares[0]]);
    assert!(!o.status.success() && stderr(&o).contains("--migrate"), "{}", stderr(&o));
    for k in &shares[..2] {
        let o = s.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let st = status(&s);
    assert!(unsealed(&st) && st["type"] == "awskms" && st["recovery_seal"] == true && st["migration"] == false, "{st}");
    assert_eq!(get(&s, &root, "secret/app"), "kept");
    stop(s);
    let s = start(dir.path(), &m, &awskms("alias/first", false));
    wait_for(&s, 20, "auto-unseal after migrating", unsealed);
    stop(s);

    // One KMS key to another: the old block stays, disabled; the unseal
    // keys are now the recovery keys.
    let both = format!("{}{}", awskms("alias/first", true), awskms("alias/second", false));
    let s = start(dir.path(), &m, &both);
    assert_eq!(status(&s)["migration"], true);
    for k in &shares[1..] {
        let o = s.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_for(&s, 5, "unsealed by the migration", unsealed);
    put(&s, &root, "secret/app2", "added");
    stop(s);
    // The first key no longer opens it; the second does.
    kms(&m, "i = k.describe_key(KeyId='alias/first')['KeyMetadata']['KeyId']\nk.disable_key(KeyId=i)");
    let s = start(dir.path(), &m, &awskms("alias/second", false));
    wait_for(&s, 20, "auto-unseal with the second key", unsealed);
    assert_eq!(get(&s, &root, "secret/app"), "kept");
    stop(s);

    // KMS back to Shamir: the recovery keys become the unseal keys.
    let s = start(dir.path(), &m, &awskms("alias/second", true));
    let st = status(&s);
    assert!(st["migration"] == true && st["seal_message"].as_str().unwrap().contains("recovery"), "{st}");
    for k in [&shares[0], &shares[2]] {
        let o = s.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_for(&s, 5, "unsealed by the migration", unsealed);
    stop(s);
    let s = start(dir.path(), &m, "");
    let st = status(&s);
    assert!(st["sealed"] == true && st["type"] == "shamir" && st["recovery_seal"] == false, "{st}");
    for k in &shares[..2] {
        assert!(s.cli(None, &["operator", "unseal", k]).status.success());
    }
    assert_eq!(get(&s, &root, "secret/app"), "kept");
    assert_eq!(get(&s, &root, "secret/app2"), "added");
    // A node whose configuration names no seal for an auto-sealed store
    // says so rather than waiting silently.
    stop(s);
}

/// Two nodes on one PostgreSQL table: the health endpoint tells the leader
/// from the standby, and a seal migration made on one node is followed by
/// the other (to KMS: it unseals by itself; back to Shamir: with the keys,
/// which are the same ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_follows_a_seal_migration_on_postgresql() {
    let pg = keybridge_testservers::postgres::Postgres::start();
    let m = moto();
    kms_key(&m, "alias/kb-cluster");
    let storage = format!(
        "storage \"postgresql\" {{\n connection_url = \"{}\"\n table = \"kb_seal\"\n max_connections = 4\n tls_ca_file = \"{}\"\n}}",
        pg.url("localhost", "verify-full"),
        pg.ca_file().display()
    );
    let env = moto_env(&m);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = |dir: &Path, id: &str, seal: &str| {
        let top = format!("node_id = \"{id}\"\ntelemetry {{\n address = \"127.0.0.1:0\"\n}}\n{seal}");
        Server::with_storage_top_env(dir, &storage, &top, &env)
    };
    let a = node(da.path(), "node-a", "");
    let init = json(&a.cli(None, &["operator", "init", "--key-shares", "3", "--key-threshold", "2", "-o", "json"]));
    let shares = keys(&init, "unseal_keys_b64");
    let root = init["root_token"].as_str().unwrap().to_string();
    for k in &shares[..2] {
        assert!(a.cli(None, &["operator", "unseal", k]).status.success());
    }
    let b = node(db.path(), "node-b", "");
    for k in &shares[..2] {
        assert!(b.cli(None, &["operator", "unseal", k]).status.success());
    }
    put(&a, &root, "secret/app", "shared");
    wait_for(&b, 20, "b serves", unsealed);

    // Health: 200 on the leader, 429 on the standby unless standbyok.
    let health = |s: &Server, q: &str| {
        let url = format!("{}/v1/sys/health{q}", s.telemetry.as_ref().unwrap());
        blocking(move || {
            let out =
                Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, standby) = loop {
        let (ha, hb) = (health(&a, ""), health(&b, ""));
        match (ha.as_str(), hb.as_str()) {
            ("200", "429") => break (&a, &b),
            ("429", "200") => break (&b, &a),
            _ => assert!(Instant::now() < deadline, "no leader and standby: {ha} {hb}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(health(standby, "?standbyok=true"), "200");
    assert_eq!(health(standby, "?standbycode=503"), "503");
    assert_eq!(health(leader, "?standbyok=true"), "200");
    // The metrics say the same: leadership, the lease's epoch, the feed.
    let metrics = |s: &Server| {
        let url = format!("{}/metrics", s.telemetry.as_ref().unwrap());
        blocking(move || {
            String::from_utf8_lossy(&Command::new("curl").args(["-s", &url]).output().unwrap().stdout).to_string()
        })
    };
    let (lm, sm) = (metrics(leader), metrics(standby));
    assert!(lm.contains("keybridge_leader 1\n") && sm.contains("keybridge_leader 0\n"), "{lm}\n{sm}");
    for m in [&lm, &sm] {
        let epoch = m.lines().find_map(|l| l.strip_prefix("keybridge_leader_epoch ")).unwrap_or("0");
        assert!(epoch.parse::<i64>().unwrap() >= 1, "{m}");
        assert!(m.contains("keybridge_feed_lag_seconds "), "{m}");
    }

    // Shamir to KMS: both restart with the seal block; the migration is
    // made on one, and the other unseals by itself.
    let block = awskms("alias/kb-cluster", false);
    stop(a);
    stop(b);
    let b = node(db.path(), "node-b", &block);
    let a = node(da.path(), "node-a", &block);
    assert_eq!(status(&b)["migration"], true);
    for k in &shares[..2] {
        let o = a.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let st = wait_for(&b, 30, "the other node follows the migration", unsealed);
    assert_eq!((st["type"].as_str(), st["recovery_seal"].as_bool()), (Some("awskms"), Some(true)), "{st}");
    assert_eq!(get(&b, &root, "secret/app"), "shared");

    // Back to Shamir: the recovery keys (the old unseal keys) migrate it on
    // one node and unseal the other.
    stop(a);
    stop(b);
    let back = awskms("alias/kb-cluster", true);
    let b = node(db.path(), "node-b", &back);
    let a = node(da.path(), "node-a", &back);
    for k in &shares[1..] {
        let o = a.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_for(&a, 10, "migrated back", unsealed);
    let st = wait_for(&b, 10, "the other node sees Shamir keys", |st| st["type"] == "shamir");
    assert!(st["sealed"] == true && st["migration"] == false, "{st}");
    for k in &shares[..2] {
        assert!(b.cli(None, &["operator", "unseal", k]).status.success());
    }
    assert_eq!(get(&b, &root, "secret/app"), "shared");
}

fn gcpckms(kms: &keybridge_testservers::cloudkms::CloudKms, disabled: bool) -> String {
    let d = if disabled { "\n  disabled = \"true\"" } else { "" };
    format!(
        "seal \"gcpckms\" {{\n  project = \"kb-seal-test\"\n  region = \"global\"\n  key_ring = \"keybridge\"\n  crypto_key = \"root\"\n  endpoint = \"{}\"\n  credentials = \"{}\"{d}\n}}\n",
        kms.url(),
        kms.key_file().display()
    )
}

fn azurekeyvault(kv: &keybridge_testservers::keyvault::KeyVault, ca: &Path) -> String {
    use keybridge_testservers::keyvault::{CLIENT_ID, CLIENT_SECRET};
    format!(
        "seal \"azurekeyvault\" {{\n  vault_url = \"{url}\"\n  key_name = \"unseal\"\n  tenant_id = \"{}\"\n  client_id = \"{CLIENT_ID}\"\n  client_secret = \"{CLIENT_SECRET}\"\n  authority_host = \"{url}\"\n  ca_cert = \"{}\"\n}}\n",
        kv.tenant,
        ca.display(),
        url = kv.url
    )
}

/// GCP Cloud KMS and Azure Key Vault seals against the project's test
/// servers (tests/servers): Shamir to gcpckms, gcpckms to azurekeyvault,
/// and a Key Vault outage at start that the node outlasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcpckms_and_azurekeyvault_seal_unseal_and_migrate_between_clouds() {
    let gcp = keybridge_testservers::cloudkms::CloudKms::start("kb-seal-test").await;
    gcp.create_key("global", "keybridge", "root");
    let kv = keybridge_testservers::keyvault::KeyVault::start().await;
    kv.create_key("unseal", 2048);
    let ca = crate::harness::kv_ca_file(&kv);
    let m = moto();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &m, "");
    let init = json(&s.cli(None, &["operator", "init", "--key-shares", "3", "--key-threshold", "2", "-o", "json"]));
    let shares = keys(&init, "unseal_keys_b64");
    let root = init["root_token"].as_str().unwrap().to_string();
    for k in &shares[..2] {
        assert!(s.cli(None, &["operator", "unseal", k]).status.success());
    }
    put(&s, &root, "secret/app", "crossing-clouds");
    stop(s);

    // Shamir to GCP Cloud KMS.
    let s = start(dir.path(), &m, &gcpckms(&gcp, false));
    for k in &shares[..2] {
        let o = s.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(status(&s)["type"], "gcpckms");
    stop(s);
    let s = start(dir.path(), &m, &gcpckms(&gcp, false));
    wait_for(&s, 20, "auto-unseal with Cloud KMS", unsealed);
    assert!(gcp.calls_of("Decrypt") >= 1);
    stop(s);

    // GCP Cloud KMS to Azure Key Vault: the GCP block stays, disabled.
    let both = format!("{}{}", gcpckms(&gcp, true), azurekeyvault(&kv, &ca));
    let s = start(dir.path(), &m, &both);
    assert_eq!(status(&s)["migration"], true);
    for k in &shares[1..] {
        let o = s.cli(None, &["operator", "unseal", "--migrate", k]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(status(&s)["type"], "azurekeyvault");
    stop(s);

    // Key Vault down at start: sealed, with the reason, until it is back.
    kv.set_down(true);
    let s = start(dir.path(), &m, &azurekeyvault(&kv, &ca));
    let st = wait_for(&s, 40, "a status naming Key Vault", |st| {
        st["sealed"] == true && st["seal_message"].as_str().is_some_and(|m| m.contains("auto-unseal failed"))
    });
    assert!(!st["seal_message"].as_str().unwrap().contains(keybridge_testservers::keyvault::CLIENT_SECRET), "{st}");
    kv.set_down(false);
    wait_for(&s, 60, "auto-unseal once Key Vault answers", unsealed);
    assert_eq!(get(&s, &root, "secret/app"), "crossing-clouds");
    // Cloud KMS no longer opens it.
    stop(s);
    let s = start(dir.path(), &m, &gcpckms(&gcp, false));
    let st =
        wait_for(&s, 20, "a refusal from the old key", |st| st["seal_message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(st["sealed"], true, "{st}");
}
