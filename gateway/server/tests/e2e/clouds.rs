//! Cloud mounts through the binary and the CLI: settings checked without
//! IO, the health check, credentials never shown, secrets other tools
//! wrote (by boto3, into moto), the read cache's counters, and policies on
//! a cloud mount.

use keybridge_proto::v1 as pb;
use serde_json::Value;

use crate::harness::{Server, authed, boto3, json, moto, stderr};

const T: &str = "root-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_mount_settings_health_out_of_band_cache_and_policies() {
    let m = moto();
    let s = Server::dev();
    let t = Some(T);
    let endpoint = format!("endpoint_url={}", m.url());
    let base = ["mount", "enable", "--type", "aws", "aws/", "region=us-east-1", &endpoint, "access_key_id=testing"];

    // Settings are checked before any call; nothing is mounted on failure.
    let o = s.cli(t, &[&base[..], &["secret_access_key=testing", "colour=red"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unknown aws setting \"colour\""), "{}", stderr(&o));
    let o = s.cli(t, &base);
    assert!(stderr(&o).contains("access_key_id and secret_access_key"), "{}", stderr(&o));
    let o = s.cli(t, &[&base[..], &["secret_access_key=testing", "cache_ttl=soon"]].concat());
    assert!(stderr(&o).contains("cache_ttl"), "{}", stderr(&o));
    // The health check: a cloud that cannot be reached is not mounted.
    let o = s.cli(
        t,
        &[
            "mount",
            "enable",
            "--type",
            "aws",
            "aws/",
            "region=us-east-1",
            "endpoint_url=http://127.0.0.1:1",
            "access_key_id=testing",
            "secret_access_key=testing",
        ],
    );
    assert!(stderr(&o).contains("failed precondition"), "{}", stderr(&o));
    assert!(stderr(&o).contains("AWS Secrets Manager cannot be reached"), "{}", stderr(&o));
    let mounts = json(&s.cli(t, &["mount", "list", "-o", "json"]));
    assert!(mounts.as_array().unwrap().iter().all(|m| m["path"] != "aws/"), "{mounts}");

    let o = s.cli(t, &[&base[..], &["secret_access_key=testing", "cache_ttl=10m"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let mounts = json(&s.cli(t, &["mount", "list", "-o", "json"]));
    let aws = mounts.as_array().unwrap().iter().find(|m| m["path"] == "aws/").unwrap().clone();
    assert_eq!(aws["config"]["secret_access_key"], "<redacted>", "{aws}");
    assert_eq!(aws["type"], "aws");

    // Secrets another tool wrote: a name outside Keybridge's encoding, a
    // plain string, a JSON object with a second version, bytes.
    boto3(
        &m,
        "c.create_secret(Name='legacy=db', SecretString='hunter2')\n\
         c.create_secret(Name='app/json', SecretString='{\"user\": \"bob\"}')\n\
         c.put_secret_value(SecretId='app/json', SecretString='{\"user\": \"bob2\"}')\n\
         c.create_secret(Name='app/bin', SecretBinary=bytes([0, 1, 254]))\n",
    );
    assert_eq!(json(&s.cli(t, &["kv", "list", "-o", "json", "aws/"])), serde_json::json!(["_raw/", "app/"]));
    assert_eq!(json(&s.cli(t, &["kv", "list", "-o", "json", "aws/_raw/"])), serde_json::json!(["legacy=db"]));
    let raw = json(&s.cli(t, &["kv", "get", "-o", "json", "aws/_raw/legacy=db"]));
    assert_eq!(raw["text"], "hunter2", "{raw}");
    let obj = json(&s.cli(t, &["kv", "get", "-o", "json", "aws/app/json"]));
    assert_eq!(obj["data"]["user"], "bob2", "{obj}");
    assert_eq!(obj["metadata"]["version"], 0, "other tools' versions have no number: {obj}");
    let bin = json(&s.cli(t, &["kv", "get", "-o", "json", "aws/app/bin"]));
    assert_eq!(bin["binary_b64"], "AAH+", "{bin}");
    let meta = json(&s.cli(t, &["kv", "metadata", "get", "-o", "json", "aws/app/json"]));
    assert_eq!(meta["other_versions"].as_array().unwrap().len(), 2, "{meta}");
    let previous = json(&s.cli(t, &["kv", "get", "-o", "json", "--stage", "AWSPREVIOUS", "aws/app/json"]));
    assert_eq!(previous["data"]["user"], "bob", "{previous}");
    // A Keybridge write on top numbers past what is there.
    let o = s.cli(t, &["kv", "put", "-o", "json", "aws/app/json", "user=carol"]);
    assert_eq!(json(&o)["version"], 1);
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "aws/app/json"]))["data"]["user"], "carol");

    // The read cache: hot reads reach the cloud once; writes invalidate.
    let mut c = s.secrets().await;
    c.put(authed(
        T,
        pb::PutRequest { path: "aws/hot".into(), value: crate::harness::fields(&[("v", "1")]), cas: None },
    ))
    .await
    .unwrap();
    let before = stats(&s);
    for _ in 0..200 {
        let r = c.get(authed(T, pb::GetRequest { path: "aws/hot".into(), ..Default::default() })).await.unwrap();
        assert_eq!(crate::harness::field(&r.into_inner(), "v"), "1");
    }
    let after = stats(&s);
    assert_eq!(after["upstream_calls"].as_u64().unwrap() - before["upstream_calls"].as_u64().unwrap(), 1, "{after}");
    assert!(after["cache_hits"].as_u64().unwrap() >= 199, "{after}");
    assert!(s.cli(t, &["kv", "put", "aws/hot", "v=2"]).status.success());
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "aws/hot"]))["data"]["v"], "2");

    // Policies apply to cloud paths as to local ones.
    let policy = std::env::temp_dir().join(format!("kb-aws-policy-{}.hcl", std::process::id()));
    std::fs::write(&policy, "path \"aws/data/app/*\" { capabilities = [\"read\"] }\n").unwrap();
    assert!(s.cli(t, &["policy", "write", "aws-reader", policy.to_str().unwrap()]).status.success());
    let tok = json(&s.cli(t, &["token", "create", "--policy", "aws-reader", "-o", "json"]));
    let reader = tok["token"].as_str().unwrap().to_string();
    let o = s.cli(Some(&reader), &["kv", "get", "-o", "json", "aws/app/json"]);
    assert_eq!(json(&o)["data"]["user"], "carol");
    let o = s.cli(Some(&reader), &["kv", "put", "aws/app/json", "user=mallory"]);
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    let o = s.cli(Some(&reader), &["kv", "get", "aws/hot"]);
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "aws/app/json"]))["data"]["user"], "carol");
}

fn stats(s: &Server) -> Value {
    let mounts = json(&s.cli(Some(T), &["mount", "list", "-o", "json"]));
    mounts.as_array().unwrap().iter().find(|m| m["path"] == "aws/").unwrap()["stats"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_mount_health_check_names_the_problem() {
    use keybridge_testservers::keyvault::{self, KeyVault};
    let kv = KeyVault::start().await;
    let s = Server::dev();
    let t = Some(T);
    let ca = crate::harness::kv_ca_file(&kv);
    let settings = |secret: &str, tenant: &str| {
        vec![
            format!("vault_url={}", kv.url),
            format!("authority_host={}", kv.url),
            format!("tenant_id={tenant}"),
            format!("client_id={}", keyvault::CLIENT_ID),
            format!("client_secret={secret}"),
            format!("ca_cert={}", ca.display()),
        ]
    };
    let enable = |extra: Vec<String>| {
        let mut args = vec!["mount".to_string(), "enable".into(), "--type".into(), "azure".into(), "azure/".into()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.cli(t, &args)
    };
    let o = enable(settings("wrong", &kv.tenant));
    assert!(stderr(&o).contains("AADSTS7000215"), "{}", stderr(&o));
    assert!(stderr(&o).contains("refused the mount's credentials"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("wrong"), "the secret is not echoed: {}", stderr(&o));
    let o = enable(settings(keyvault::CLIENT_SECRET, "00000000-0000-0000-0000-000000000000"));
    assert!(stderr(&o).contains("AADSTS90002"), "{}", stderr(&o));
    let mut no_ca = settings(keyvault::CLIENT_SECRET, &kv.tenant);
    no_ca.pop();
    let o = enable(no_ca);
    assert!(stderr(&o).contains("the mount was not enabled"), "{}", stderr(&o));

    let o = enable(settings(keyvault::CLIENT_SECRET, &kv.tenant));
    assert!(o.status.success(), "{}", stderr(&o));
    let mounts = json(&s.cli(t, &["mount", "list", "-o", "json"]));
    let az = mounts.as_array().unwrap().iter().find(|m| m["path"] == "azure/").unwrap().clone();
    assert_eq!(az["config"]["client_secret"], "<redacted>", "{az}");
    let bin = std::env::temp_dir().join(format!("kb-e2e-az-bin-{}", std::process::id()));
    std::fs::write(&bin, [0u8, 1, 254]).unwrap();
    assert!(s.cli(t, &["kv", "put", "--binary-file", bin.to_str().unwrap(), "azure/Team/Blob"]).status.success());
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "azure/Team/Blob"]))["binary_b64"], "AAH+");
    // Case-safe names: Team/Blob and team/blob are two secrets.
    assert!(s.cli(t, &["kv", "put", "azure/team/blob", "k=v"]).status.success());
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "azure/Team/Blob"]))["binary_b64"], "AAH+");
    assert_eq!(json(&s.cli(t, &["kv", "list", "-o", "json", "azure/"])), serde_json::json!(["Team/", "team/"]));

    // Credentials revoked after mounting: UNAUTHENTICATED with Azure's reason.
    kv.revoke_client(keyvault::CLIENT_ID);
    let mut c = s.secrets().await;
    let e =
        c.get(authed(T, pb::GetRequest { path: "azure/team/blob".into(), ..Default::default() })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("Azure Key Vault"), "{e:?}");
}
