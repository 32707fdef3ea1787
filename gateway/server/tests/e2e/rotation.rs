//! Coordinated rotation across AWS (moto), GCP (our Secret Manager server)
//! and Azure (our Key Vault server), with the gateway killed (abort) after
//! each step and restarted: every copy ends on the same new value.

use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use keybridge_testservers::keyvault::KeyVault;
use keybridge_testservers::process::Spawned;
use keybridge_testservers::secretmanager::SecretManager;
use serde_json::Value;

use crate::harness::{
    Server, authed, aws_settings, azure_settings, boto3, enable, field, gcp_settings, init_unseal, json, moto, stderr,
    stdout,
};

struct Clouds {
    moto: Spawned,
    sm: SecretManager,
    kv: KeyVault,
}

fn mount_all(s: &Server, t: &str, c: &Clouds) {
    enable(s, t, "aws", "aws/", &aws_settings(&c.moto));
    enable(s, t, "gcp", "gcp/", &gcp_settings(&c.sm));
    enable(s, t, "azure", "azure/", &azure_settings(&c.kv));
}

/// (AWSCURRENT, AWSPENDING) values of a secret in moto, read by boto3.
fn aws_stages(moto: &Spawned, name: &str) -> (String, String) {
    let out = boto3(
        moto,
        &format!(
            "print(c.get_secret_value(SecretId='{name}', VersionStage='AWSCURRENT')['SecretString'])\n\
             print(c.get_secret_value(SecretId='{name}', VersionStage='AWSPENDING')['SecretString'])\n"
        ),
    );
    let mut lines = out.lines();
    (lines.next().unwrap_or_default().to_string(), lines.next().unwrap_or_default().to_string())
}

async fn read(s: &Server, t: &str, path: &str, stage: &str) -> Option<String> {
    let mut c = s.secrets().await;
    let req = pb::GetRequest { path: path.into(), stage: stage.into(), ..Default::default() };
    c.get(authed(t, req)).await.ok().map(|r| field(r.get_ref(), "password"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the binary built with --features fault-injection (tests/run-all.sh builds it so)"
)]
async fn rotation_resumes_after_a_crash_at_every_step() {
    let kv = KeyVault::start().await;
    let clouds = Clouds { moto: moto(), sm: SecretManager::start("keybridge-test").await, kv };
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
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // SIGABRT: the fault hook, not some other way out.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit.signal(), Some(6), "{step}: {exit:?}");

        if step == "staged" {
            // Staged everywhere, promoted nowhere (the gateway is down, so
            // the clouds are asked directly): readers still get the old
            // value; AWS holds the new one as AWSPENDING, GCP and Azure in a
            // staging secret.
            let old = "{\"password\":\"old-password\",\"user\":\"app\"}";
            let aws = aws_stages(&clouds.moto, &format!("{folder}/db"));
            assert_eq!(aws.0, old, "AWSCURRENT while staged");
            assert!(aws.1.contains("password") && aws.1 != old, "AWSPENDING holds the new value");
            let gcp = clouds.sm.latest(&format!("{folder}__db")).unwrap();
            assert_eq!(String::from_utf8(gcp).unwrap(), old, "GCP latest while staged");
            assert!(clouds.sm.latest(&format!("{folder}__db_2ekb-pending")).is_some(), "GCP staging secret");
            let (az, _, _) = clouds.kv.stored(&format!("{folder}--db")).unwrap();
            assert_eq!(az, old, "Azure latest while staged");
            assert!(clouds.kv.stored(&format!("{folder}--db-2ekb-2dpending")).is_some(), "Azure staging secret");
        }
        let s = Server::with_config_env(dir.path(), &[]);
        let o = s.cli(None, &["operator", "unseal", &key]);
        assert!(o.status.success(), "{}", stderr(&o));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_verification_rolls_every_copy_back() {
    let kv = KeyVault::start().await;
    let clouds = Clouds { moto: moto(), sm: SecretManager::start("keybridge-test").await, kv };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify.sh");
    let allow = dir.path().join("allow");
    let seen = dir.path().join("seen.json");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {}\nif [ -f {} ]; then exit 0; fi\necho 'the database refused the new password' >&2\nexit 1\n",
            seen.display(),
            allow.display()
        ),
    )
    .unwrap();
    let top = format!("rotation_verify_command = [\"/bin/sh\", \"{}\"]", script.display());
    let s = Server::with_config_top(dir.path(), &top);
    let (root, _) = init_unseal(&s);
    let t = root.as_str();
    mount_all(&s, t, &clouds);
    let o = s.cli(
        Some(t),
        &[
            "sync",
            "rule",
            "create",
            "v",
            "--source",
            "secret/v/",
            "--target",
            "aws/v/",
            "--target",
            "gcp/v/",
            "--target",
            "azure/v/",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(Some(t), &["kv", "put", "secret/v/db", "password=old-password"]).status.success());
    json(&s.cli(Some(t), &["sync", "run", "--wait", "-o", "json"]));

    let o = s.cli(Some(t), &["rotate", "secret/v/db", "--wait", "-o", "json"]);
    assert!(!o.status.success(), "a refused rotation is an error: {}", stdout(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert!(r["error"].as_str().unwrap().contains("the database refused the new password"), "{r}");
    // The verifier was given the path and the staged fields.
    let seen_json: Value = serde_json::from_str(&std::fs::read_to_string(&seen).unwrap()).unwrap();
    assert_eq!(seen_json["path"], "secret/v/db");
    assert_ne!(seen_json["fields"]["password"], "old-password");
    // Nothing moved, nothing staged is left.
    for c in ["secret/v/db", "aws/v/db", "gcp/v/db", "azure/v/db"] {
        assert_eq!(read(&s, t, c, "").await.as_deref(), Some("old-password"), "{c}");
    }
    assert_eq!(read(&s, t, "aws/v/db", "AWSPENDING").await, None, "AWSPENDING removed");
    for m in ["gcp", "azure"] {
        let keys = json(&s.cli(Some(t), &["kv", "list", "-o", "json", &format!("{m}/v/")]));
        assert_eq!(keys, serde_json::json!(["db"]), "{m}: staging secret removed");
    }
    // Accepted: done.
    std::fs::write(&allow, "").unwrap();
    let o = s.cli(Some(t), &["rotate", "secret/v/db", "--wait", "-o", "json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let new = read(&s, t, "secret/v/db", "").await.unwrap();
    assert_ne!(new, "old-password");
    for c in ["aws/v/db", "gcp/v/db", "azure/v/db"] {
        assert_eq!(read(&s, t, c, "").await.as_deref(), Some(new.as_str()), "{c}");
    }
}
