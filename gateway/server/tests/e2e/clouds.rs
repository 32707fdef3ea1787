//! Cloud mounts through the binary and the CLI: settings checked without
//! IO, the health check, credentials never shown, secrets other tools
//! wrote (by boto3, into moto), the read cache's counters, and policies on
//! a cloud mount.

use keybridge_proto::v1 as pb;
use serde_json::Value;

use crate::harness::{Server, authed, boto3, json, moto, stderr, stdout};

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
    assert_eq!(o.status.code(), Some(5), "unreachable is unavailable: {}", stderr(&o));
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
    stats_of(s, "aws/")
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
    assert!(stderr(&o).contains("; check tenant_id, client_id and client_secret"), "{}", stderr(&o));
    assert!(stderr(&o).contains("Azure Key Vault (ListSecretProperties health check)"), "{}", stderr(&o));
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

/// `_raw/` names: one that decodes to a Keybridge path is authorized as that
/// path, others under `_raw/`; names outside the mount's prefix (or that the
/// cloud would take as an ARN) are refused, and listings drop them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_names_follow_path_policies_and_the_mount_prefix() {
    let m = moto();
    let s = Server::dev();
    let t = Some(T);
    let mut settings = crate::harness::aws_settings(&m);
    settings.push("prefix=kb-".into());
    crate::harness::enable(&s, T, "aws", "aws/", &settings);
    for (p, v) in [("aws/prod/db", "password=prod-secret"), ("aws/app/x", "v=1")] {
        assert!(s.cli(t, &["kv", "put", p, v]).status.success());
    }
    // Another team's secret in the same account, and one another tool made
    // under this mount's prefix.
    boto3(
        &m,
        "c.create_secret(Name='team2-db', SecretString='theirs')\nc.create_secret(Name='kb-legacy=1', SecretString='old')\n",
    );

    let policy = std::env::temp_dir().join(format!("kb-raw-policy-{}.hcl", std::process::id()));
    std::fs::write(
        &policy,
        "path \"aws/data/*\" { capabilities = [\"read\", \"create\", \"update\", \"delete\"] }\n\
         path \"aws/data/prod/*\" { capabilities = [\"deny\"] }\n\
         path \"aws/metadata/*\" { capabilities = [\"list\", \"read\", \"update\", \"delete\"] }\n\
         path \"aws/metadata/prod/*\" { capabilities = [\"deny\"] }\n",
    )
    .unwrap();
    assert!(s.cli(t, &["policy", "write", "no-prod", policy.to_str().unwrap()]).status.success());
    let tok = json(&s.cli(t, &["token", "create", "--policy", "no-prod", "-o", "json"]));
    let user = tok["token"].as_str().unwrap().to_string();
    let u = Some(user.as_str());

    // The denied secret, by its cloud name: denied as aws/data/prod/db.
    let calls = stats_of(&s, "aws/")["upstream_calls"].as_u64().unwrap();
    for args in [
        &["kv", "get", "aws/_raw/kb-prod/db"][..],
        &["kv", "put", "aws/_raw/kb-prod/db", "password=mine"],
        &["kv", "delete", "aws/_raw/kb-prod/db"],
        &["kv", "metadata", "get", "aws/_raw/kb-prod/db"],
    ] {
        let o = s.cli(u, args);
        assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("prod/db"), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(stats_of(&s, "aws/")["upstream_calls"].as_u64().unwrap(), calls, "a denied request reached the cloud");
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "aws/prod/db"]))["data"]["password"], "prod-secret");
    // An allowed one works by either name; a raw name that does not decode
    // is authorized under _raw/.
    assert_eq!(json(&s.cli(u, &["kv", "get", "-o", "json", "aws/_raw/kb-app/x"]))["data"]["v"], "1");
    assert_eq!(json(&s.cli(u, &["kv", "get", "-o", "json", "aws/_raw/kb-legacy=1"]))["text"], "old");

    // Outside the prefix, or not a name at all: refused, for root too.
    for name in ["aws/_raw/team2-db", "aws/_raw/arn:aws:secretsmanager:us-east-1:123456789012:secret:kb-prod/db"] {
        for who in [t, u] {
            let o = s.cli(who, &["kv", "get", name]);
            assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
            assert!(!stdout(&o).contains("theirs") && !stdout(&o).contains("prod-secret"), "{name}");
        }
    }
    let o = s.cli(t, &["kv", "get", "aws/_raw/team2-db"]);
    assert!(stderr(&o).contains("outside this mount's prefix"), "{}", stderr(&o));
    // A rule cannot name raw cloud names as a folder (it would be checked
    // as aws/data/_raw/..., not as the paths they decode to).
    let o = s.cli(t, &["sync", "rule", "create", "plant", "--source", "secret/mine/", "--target", "aws/_raw/kb-prod/"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("raw names"), "{}", stderr(&o));
    // Listings show only this mount's names.
    let listed = json(&s.cli(t, &["kv", "list", "-o", "json", "--recursive", "aws/"]));
    assert_eq!(listed, serde_json::json!(["_raw/kb-legacy=1", "app/x", "prod/db"]), "{listed}");

    // A version number written in the cloud by someone else: the largest
    // there is. The next write is refused, without wrapping to 0 or panicking.
    boto3(
        &m,
        r#"c.put_secret_value(SecretId='kb-app/x', SecretString='{"v": "2"}', ClientRequestToken='kbv18446744073709551615-' + '0' * 32)"#,
    );
    let o = s.cli(t, &["kv", "put", "aws/app/x", "v=3"]);
    assert!(!o.status.success() && stderr(&o).contains("largest"), "{}", stderr(&o));
    assert!(s.cli(t, &["kv", "get", "aws/app/x"]).status.success(), "the server is still serving");
}

fn stats_of(s: &Server, path: &str) -> Value {
    stats_mount(s, path)["stats"].clone()
}

/// The gateway's own cloud credentials never go to a host a mount writer
/// chose: a custom endpoint needs credentials given with it and `sudo` on
/// the mount's path; moving an endpoint drops the stored credentials; the
/// server may allow-list endpoint hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_endpoints_need_their_own_credentials_and_sudo() {
    let m = moto();
    // A host that records whether anything connects to it.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let s = Server::dev();
    let t = Some(T);

    // Ambient credentials to a custom endpoint: refused before any call.
    for (kind, settings) in [
        ("aws", vec!["region=us-east-1".to_string(), format!("endpoint_url={trap_url}")]),
        ("aws", vec!["region=us-east-1".into(), format!("endpoint_url={trap_url}"), "profile=default".into()]),
        ("gcp", vec!["project=keybridge-test".into(), format!("endpoint={trap_url}")]),
        (
            "azure",
            vec![format!("vault_url=https://{}", trap.local_addr().unwrap()), "credentials=managed_identity".into()],
        ),
        (
            "azure",
            vec![
                "vault_url=https://v.vault.azure.net".into(),
                format!("authority_host=https://{}", trap.local_addr().unwrap()),
            ],
        ),
    ] {
        let mut args = vec!["mount", "enable", "--type", kind, "x/"];
        args.extend(settings.iter().map(String::as_str));
        let o = s.cli(t, &args);
        assert_eq!(o.status.code(), Some(2), "{kind} {settings:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("not one of the cloud's own hosts"), "{}", stderr(&o));
    }
    assert!(trap.accept().is_err(), "something connected to the custom endpoint");
    let mounts = json(&s.cli(t, &["mount", "list", "-o", "json"]));
    assert!(mounts.as_array().unwrap().iter().all(|m| m["path"] != "x/"), "{mounts}");

    // A custom endpoint needs sudo on sys/mounts/<path>; update is not enough.
    let policy = std::env::temp_dir().join(format!("kb-endpoint-policy-{}.hcl", std::process::id()));
    std::fs::write(&policy, "path \"sys/mounts/*\" { capabilities = [\"update\", \"read\"] }\n").unwrap();
    assert!(s.cli(t, &["policy", "write", "mounter", policy.to_str().unwrap()]).status.success());
    let tok = json(&s.cli(t, &["token", "create", "--policy", "mounter", "-o", "json"]));
    let mounter = tok["token"].as_str().unwrap().to_string();
    let settings = crate::harness::aws_settings(&m);
    let mut args = vec!["mount", "enable", "--type", "aws", "aws/"];
    args.extend(settings.iter().map(String::as_str));
    let o = s.cli(Some(&mounter), &args);
    assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("sudo"), "{}", stderr(&o));
    assert!(s.cli(t, &args).status.success());
    let o = s.cli(Some(&mounter), &["mount", "tune", "aws/", "cache_ttl=1m"]);
    assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("sudo"), "{}", stderr(&o));
    // Azure's ca_cert (a file on the gateway's host, a CA for the mount's
    // HTTPS) decides as much as an endpoint: sudo too.
    let o = s.cli(
        Some(&mounter),
        &[
            "mount",
            "enable",
            "--type",
            "azure",
            "az/",
            "vault_url=https://x.vault.azure.net",
            "credentials=managed_identity",
            "ca_cert=/dev/zero",
        ],
    );
    assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("sudo"), "{}", stderr(&o));
    // So does anything of the gateway's host: a GCP key file's path, or
    // the host's own identity (GCP's default credentials, AWS's default
    // chain or a profile, an Azure managed identity).
    for (kind, settings) in [
        ("gcp", &["project=p", "credentials=/etc/keybridge/gcp-key.json"][..]),
        ("gcp", &["project=p", "credentials=default"][..]),
        ("gcp", &["project=p"][..]),
        ("aws", &["region=us-east-1"][..]),
        ("aws", &["region=us-east-1", "profile=prod"][..]),
    ] {
        let mut args = vec!["mount", "enable", "--type", kind, "h/"];
        args.extend(settings);
        let o = s.cli(Some(&mounter), &args);
        assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("sudo"), "{args:?}: {}", stderr(&o));
    }
    // A tune may not take a mount off a custom endpoint (which drops the
    // credentials given for it, leaving the host's) without sudo either.
    let o = s.cli(Some(&mounter), &["mount", "tune", "aws/", "endpoint_url="]);
    assert!(stderr(&o).contains("permission denied") && stderr(&o).contains("sudo"), "{}", stderr(&o));
    assert_eq!(stats_mount(&s, "aws/")["config"]["endpoint_url"], m.url());

    // Moving the endpoint drops the stored credentials: they must be given
    // again, and until then nothing changes.
    let localhost = m.url().replace("127.0.0.1", "localhost");
    let o = s.cli(t, &["mount", "tune", "aws/", &format!("endpoint_url={localhost}")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("access_key_id and secret_access_key"), "{}", stderr(&o));
    let aws = stats_mount(&s, "aws/");
    assert_eq!(aws["config"]["endpoint_url"], m.url(), "{aws}");
    assert_eq!(aws["config"]["secret_access_key"], "<redacted>", "{aws}");
    let o = s.cli(
        t,
        &[
            "mount",
            "tune",
            "aws/",
            &format!("endpoint_url={localhost}"),
            "access_key_id=testing",
            "secret_access_key=testing",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(t, &["kv", "put", "aws/x", "v=1"]).status.success());

    // An allow-list in the server config.
    let dir = tempfile::tempdir().unwrap();
    let s2 = Server::with_config_top(dir.path(), "allowed_endpoint_hosts = [\"localhost\"]");
    let (root, _) = crate::harness::init_unseal(&s2);
    let o = s2.cli(Some(&root), &args);
    assert!(stderr(&o).contains("allowed_endpoint_hosts"), "{}", stderr(&o));
    let mut allowed = vec!["mount", "enable", "--type", "aws", "aws/"];
    let settings: Vec<String> = settings.iter().map(|x| x.replace("127.0.0.1", "localhost")).collect();
    allowed.extend(settings.iter().map(String::as_str));
    let o = s2.cli(Some(&root), &allowed);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn stats_mount(s: &Server, path: &str) -> Value {
    let mounts = json(&s.cli(Some(T), &["mount", "list", "-o", "json"]));
    mounts.as_array().unwrap().iter().find(|m| m["path"] == path).unwrap().clone()
}

/// A cloud error is one line: the cloud, the operation, the cloud's code
/// and message, and a hint; never the SDK's structures. An unreachable
/// cloud exits 5 (unavailable), and `sync status` says the same.
#[test]
fn cloud_errors_are_one_line_with_a_hint() {
    let s = Server::dev();
    let t = Some(T);
    // No credentials anywhere (the harness clears the AWS environment).
    let o = s.cli(t, &["mount", "enable", "--type", "aws", "aws/", "region=us-east-1"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(
        err.contains(
            "AWS Secrets Manager (ListSecrets health check): NoCredentials: no credentials found; set access_key_id"
        ),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("ProviderChainError") && !err.contains("{ "), "no SDK Debug text: {err}");

    // Nothing listens at the endpoint: unavailable, exit 5.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("endpoint_url=http://127.0.0.1:{closed}");
    let args =
        ["mount", "enable", "--type", "aws", "aws/", "region=us-east-1", "access_key_id=k", "secret_access_key=s"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(&endpoint);
    let o = s.cli(t, &args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("AWS Secrets Manager cannot be reached (ListSecrets health check): Connection refused"),
        "{err}"
    );
    assert!(err.contains("check region, endpoint_url and the network"), "{err}");

    // A mount whose cloud goes away after it was enabled: reads exit 5, and
    // sync status carries the same one line.
    let m = moto();
    crate::harness::enable(&s, T, "aws", "aws/", &crate::harness::aws_settings(&m));
    let ok = |args: &[&str]| assert!(s.cli(t, args).status.success(), "{args:?}");
    ok(&["sync", "rule", "create", "app", "--source", "secret/app/", "--target", "aws/app/"]);
    drop(m);
    ok(&["kv", "put", "secret/app/db", "pw=one"]);
    let o = s.cli(t, &["kv", "get", "aws/app/db"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("AWS Secrets Manager cannot be reached (GetSecretValue app/db)"), "{}", stderr(&o));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = json(&s.cli(t, &["sync", "status", "-o", "json"]));
        let target = st["targets"].as_array().unwrap().iter().find(|x| x["target"] == "aws/app/db").cloned();
        if let Some(x) = target.filter(|x| x["state"] == "error") {
            let msg = x["message"].as_str().unwrap();
            assert!(msg.contains("AWS Secrets Manager cannot be reached") && !msg.contains('\n'), "{msg}");
            assert!(!msg.contains("DispatchFailure"), "{msg}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no error state: {st}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A cloud mount is opened on first use, before the request is authorized:
/// one that cannot be opened (here its key file went bad while the gateway
/// was down) tells callers only that, whoever they are; the reason, which
/// names the mount's file, goes to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_that_cannot_open_names_nothing_of_its_settings() {
    let sm = keybridge_testservers::secretmanager::SecretManager::start("keybridge-test").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa-key.json");
    std::fs::copy(sm.key_file(), &key).unwrap();
    let s = Server::with_config(dir.path(), false, 0);
    let (t, unseal) = crate::harness::blocking(|| crate::harness::init_unseal(&s));
    let t = t.as_str();
    let (endpoint, creds) = (format!("endpoint={}", sm.url()), format!("credentials={}", key.display()));
    let o = s.cli(Some(t), &["mount", "enable", "--type", "gcp", "gcp/", "project=keybridge-test", &endpoint, &creds]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(Some(t), &["kv", "put", "gcp/x", "v=1"]).status.success());
    drop(s);
    std::fs::write(&key, r#"{"type":"SECRET-CONTENT","universe_domain":"SECRET-CONTENT"}"#).unwrap();
    let s = Server::with_config(dir.path(), false, 0);
    assert!(s.cli(None, &["operator", "unseal", &unseal]).status.success());
    let tok = json(&s.cli(Some(t), &["token", "create", "--policy", "default", "-o", "json"]));
    let nobody = tok["token"].as_str().unwrap().to_string();
    for who in [nobody.as_str(), t] {
        for args in [&["kv", "get", "gcp/x"][..], &["kv", "list", "gcp/"][..]] {
            let o = s.cli(Some(who), args);
            let e = stderr(&o);
            assert!(!o.status.success(), "{args:?}");
            assert!(!e.contains("SECRET-CONTENT") && !e.contains("sa-key"), "{args:?}: {e}");
        }
    }
    let o = s.cli(Some(t), &["kv", "get", "gcp/x"]);
    assert!(stderr(&o).contains("cannot be opened now"), "{}", stderr(&o));
}
