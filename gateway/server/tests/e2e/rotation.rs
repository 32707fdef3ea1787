//! Coordinated rotation across AWS (moto), GCP (our Secret Manager server)
//! and Azure (our Key Vault server), with the gateway killed (abort) after
//! each step and restarted: every copy ends on the same new value.

use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use keybridge_testservers::keyvault::{self, KeyVault};
use keybridge_testservers::process::Spawned;
use keybridge_testservers::secretmanager::SecretManager;
use serde_json::Value;

use crate::harness::{Server, authed, field, init_unseal, stderr, stdout};

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn moto() -> Spawned {
    Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()])
}

struct Clouds {
    moto: Spawned,
    sm: SecretManager,
    kv: KeyVault,
    ca: std::path::PathBuf,
}

fn mount_all(s: &Server, t: &str, c: &Clouds) {
    let mounts: Vec<Vec<String>> = vec![
        vec![
            "aws".into(),
            "aws/".into(),
            "region=us-east-1".into(),
            format!("endpoint_url={}", c.moto.url()),
            "access_key_id=testing".into(),
            "secret_access_key=testing".into(),
        ],
        vec![
            "gcp".into(),
            "gcp/".into(),
            "project=keybridge-test".into(),
            format!("endpoint={}", c.sm.url()),
            "credentials=anonymous".into(),
        ],
        vec![
            "azure".into(),
            "azure/".into(),
            format!("vault_url={}", c.kv.url),
            format!("authority_host={}", c.kv.url),
            format!("tenant_id={}", c.kv.tenant),
            format!("client_id={}", keyvault::CLIENT_ID),
            format!("client_secret={}", keyvault::CLIENT_SECRET),
            format!("ca_cert={}", c.ca.display()),
        ],
    ];
    for m in mounts {
        let mut args = vec!["mount".to_string(), "enable".into(), "--type".into()];
        args.extend(m);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = s.cli(Some(t), &a);
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

async fn read(s: &Server, t: &str, path: &str, stage: &str) -> Option<String> {
    let mut c = s.secrets().await;
    let req = pb::GetRequest { path: path.into(), stage: stage.into(), ..Default::default() };
    c.get(authed(t, req)).await.ok().map(|r| field(r.get_ref(), "password"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_resumes_after_a_crash_at_every_step() {
    let kv = KeyVault::start().await;
    let ca = std::env::temp_dir().join(format!("kb-e2e-rot-ca-{}-{}.pem", std::process::id(), kv.addr.port()));
    std::fs::write(&ca, &kv.ca_pem).unwrap();
    let clouds = Clouds { moto: moto(), sm: SecretManager::start("keybridge-test", false).await, kv, ca };
    for step in ["staged", "promoted-source", "promoted", "retired"] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::with_config_env(dir.path(), &[("KEYBRIDGE_FAULT_ROTATION", step)]);
        let (root, key) = init_unseal(&s);
        let t = root.as_str();
        mount_all(&s, t, &clouds);
        let folder = step.replace('-', "");
        let src = format!("secret/{folder}/db");
        let o = s.cli(
            Some(t),
            &[
                "sync",
                "rule",
                "create",
                &folder,
                "--source",
                &format!("secret/{folder}/"),
                "--target",
                &format!("aws/{folder}/"),
                "--target",
                &format!("gcp/{folder}/"),
                "--target",
                &format!("azure/{folder}/"),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(s.cli(Some(t), &["kv", "put", &src, "user=app", "password=old-password"]).status.success());
        let st = json(&s.cli(Some(t), &["sync", "run", "--wait", "-o", "json"]));
        assert_eq!(st["pending"], 0, "{st}");
        let copies = [format!("aws/{folder}/db"), format!("gcp/{folder}/db"), format!("azure/{folder}/db")];
        for c in &copies {
            assert_eq!(read(&s, t, c, "").await.as_deref(), Some("old-password"), "{c} before");
        }

        // Rotate; the gateway dies right after `step`.
        let o = s.cli(Some(t), &["rotate", &src, "--grace", "0s"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut s = s;
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the gateway did not stop at {step}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // SIGABRT: the fault hook, not some other way out.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit.signal(), Some(6), "{step}: {exit:?}");

        let s = Server::with_config_env(dir.path(), &[]);
        let o = s.cli(None, &["operator", "unseal", &key]);
        assert!(o.status.success(), "{}", stderr(&o));
        if step == "staged" {
            // Staged everywhere, promoted nowhere: readers still get the
            // old value; AWS holds the new one as AWSPENDING.
            for c in &copies {
                assert_eq!(read(&s, t, c, "").await.as_deref(), Some("old-password"), "{c} while staged");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let rot = loop {
            let mut sc = pb::sync_client::SyncClient::new(s.channel().await);
            let r =
                sc.get_rotation(authed(t, pb::GetRotationRequest { path: src.clone() })).await.unwrap().into_inner();
            if r.state == "done" || r.state == "rolled_back" {
                break r;
            }
            assert!(Instant::now() < deadline, "{step}: the rotation did not finish: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(rot.state, "done", "{step}: {rot:?}");
        let new = read(&s, t, &src, "").await.unwrap();
        assert_ne!(new, "old-password", "{step}");
        for c in &copies {
            assert_eq!(read(&s, t, c, "").await.as_deref(), Some(new.as_str()), "{step}: {c} after");
        }
        // Retired: AWS dropped AWSPREVIOUS; no staging secrets are left.
        assert_eq!(read(&s, t, &copies[0], "AWSPREVIOUS").await, None, "{step}: AWSPREVIOUS retired");
        for m in ["gcp", "azure"] {
            let keys = json(&s.cli(Some(t), &["kv", "list", "-o", "json", &format!("{m}/{folder}/")]));
            assert_eq!(keys, serde_json::json!(["db"]), "{step}: {m} staging secret removed");
        }
        // The old GCP and Azure versions are disabled.
        for c in &copies[1..] {
            let meta = json(&s.cli(Some(t), &["kv", "metadata", "get", "-o", "json", c]));
            let versions = meta["versions"].as_object().unwrap();
            let old = &versions["1"];
            assert!(!old["deletion_time"].is_null(), "{step}: {c} old version disabled: {meta}");
        }
    }
}
