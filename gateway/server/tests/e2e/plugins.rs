//! WASM engines end to end: the example plugins (compiled to wasm32-wasip2
//! by the test setup) registered over the streamed RPC, mounted, reached
//! through the CLI and gRPC, under policies and audit, with leases that
//! expire, survive a restart and revoke credentials at a third-party
//! service; and the hostile plugin stopped while the gateway serves on.

use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use keybridge_testservers::saas::Saas;
use serde_json::Value;
use sha2::Digest;

use crate::harness::{Server, authed, blocking, init_unseal, json, stderr, stdout};

/// A plugin built by the test setup; its path and SHA-256.
pub fn plugin(name: &str) -> (String, String) {
    let dir = std::env::var("KEYBRIDGE_PLUGINS_DIR")
        .unwrap_or_else(|_| format!("{}/../../target/wasm32-wasip2/release", env!("CARGO_MANIFEST_DIR")));
    let file = format!("{dir}/keybridge_plugin_{name}.wasm");
    let bytes = std::fs::read(&file).unwrap_or_else(|e| {
        panic!("{file}: {e}; build the plugins first (tests/run-all.sh does: cargo build --release --target wasm32-wasip2 ...)")
    });
    (file, hex::encode(sha2::Sha256::digest(&bytes)))
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    stdout(o)
}

fn register(s: &Server, t: &str, name: &str, plugin_name: &str) -> String {
    let (file, sha) = plugin(plugin_name);
    ok(&s.cli(Some(t), &["plugin", "register", name, "--sha256", &sha, &file]));
    sha
}

fn mount(s: &Server, t: &str, name: &str, path: &str, settings: &[&str]) {
    let mut args = vec!["mount", "enable", "--type", "plugin", "--plugin", name, path];
    args.extend(settings);
    ok(&s.cli(Some(t), &args));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apikeys_engine_over_the_cli() {
    let s = Server::dev();
    let t = "root-e2e";
    let sha = register(&s, t, "apikeys", "apikeys");
    // A changed digest is refused by the CLI before upload, and by the
    // server for a direct upload.
    let (file, _) = plugin("apikeys");
    let o = s.cli(Some(t), &["plugin", "register", "apikeys", "--sha256", &"0".repeat(64), &file]);
    assert!(!o.status.success() && stderr(&o).contains("refusing to upload a changed file"), "{}", stderr(&o));
    let mut pc = pb::plugins_client::PluginsClient::new(s.channel().await);
    let msgs = vec![pb::RegisterPluginChunk { name: "x".into(), sha256: "a".repeat(64), data: b"\0asm".to_vec() }];
    let e = pc.register(authed(t, tokio_stream::iter(msgs))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("refusing it"), "{}", e.message());
    // Not a component at all.
    let junk = b"\0asm\x01\0\0\0".to_vec();
    let digest = hex::encode(sha2::Sha256::digest(&junk));
    let msgs = vec![pb::RegisterPluginChunk { name: "junk".into(), sha256: digest, data: junk }];
    let e = pc.register(authed(t, tokio_stream::iter(msgs))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("not a WebAssembly component"), "{}", e.message());

    let list = json(&s.cli(Some(t), &["plugin", "list", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["sha256"], sha.as_str());
    assert_eq!(list[0]["engine"], "apikeys");

    mount(&s, t, "apikeys", "apikeys/", &["issuer=e2e"]);
    let help = ok(&s.cli(Some(t), &["path-help", "apikeys/"]));
    assert!(help.contains("apikeys/issue/{role}") && help.contains("apikeys/verify"), "{help}");
    let help = ok(&s.cli(Some(t), &["path-help", "apikeys/issue/ci"]));
    assert!(help.contains("Issues a token of the role") && !help.contains("apikeys/verify"), "{help}");

    ok(&s.cli(Some(t), &["write", "apikeys/roles/ci", "scopes=read,write", "ttl=1h"]));
    let role = json(&s.cli(Some(t), &["read", "apikeys/roles/ci", "-o", "json"]));
    assert_eq!(role["data"]["scopes"], "read,write");
    assert_eq!(role["data"]["ttl"], "3600");
    let keys = ok(&s.cli(Some(t), &["list", "apikeys/roles"]));
    assert!(keys.contains("ci"), "{keys}");

    // Bad input: a clear error, nothing changed.
    let o = s.cli(Some(t), &["write", "apikeys/roles/ci", "scopes=read", "ttl=soon"]);
    assert!(!o.status.success() && stderr(&o).contains("parameter \"ttl\""), "{}", stderr(&o));
    let o = s.cli(Some(t), &["write", "apikeys/issue/ci", "scopes=admin"]);
    assert!(!o.status.success() && stderr(&o).contains("not granted by role ci"), "{}", stderr(&o));
    let o = s.cli(Some(t), &["read", "apikeys/nothing"]);
    assert!(!o.status.success() && stderr(&o).contains("serves no path"), "{}", stderr(&o));
    let o = s.cli(Some(t), &["kv", "get", "apikeys/roles/ci"]);
    assert!(!o.status.success() && stderr(&o).contains("plugin mount"), "{}", stderr(&o));
    assert_eq!(json(&s.cli(Some(t), &["lease", "list", "-o", "json"])), Value::Array(vec![]));

    let issued = json(&s.cli(Some(t), &["write", "apikeys/issue/ci", "scopes=read", "-o", "json"]));
    let token = issued["data"]["token"].as_str().unwrap().to_string();
    let lease = issued["lease_id"].as_str().unwrap().to_string();
    assert!(lease.starts_with("apikeys/issue/ci/"), "{lease}");
    // The time left when the answer was made: a second may have passed.
    let ttl = issued["lease_duration"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{ttl}");
    let verify = |tok: &str| json(&s.cli(Some(t), &["write", "apikeys/verify", &format!("token={tok}"), "-o", "json"]));
    assert_eq!(verify(&token)["data"]["valid"], "true");
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(verify(&forged)["data"]["valid"], "false");

    let leases = json(&s.cli(Some(t), &["lease", "list", "apikeys/", "-o", "json"]));
    assert_eq!(leases[0]["lease_id"], lease.as_str());
    let renewed = json(&s.cli(Some(t), &["lease", "renew", &lease, "--increment", "30m", "-o", "json"]));
    assert!(renewed["lease_duration"].as_u64().unwrap() <= 1800, "{renewed}");
    ok(&s.cli(Some(t), &["lease", "revoke", &lease]));
    assert_eq!(verify(&token)["data"]["reason"], "revoked");
    let o = s.cli(Some(t), &["lease", "lookup", &lease]);
    assert!(!o.status.success() && stderr(&o).contains("no lease"), "{}", stderr(&o));

    // Revoke by prefix.
    let a = json(&s.cli(Some(t), &["write", "apikeys/issue/ci", "-o", "json"]));
    let b = json(&s.cli(Some(t), &["write", "apikeys/issue/ci", "-o", "json"]));
    ok(&s.cli(Some(t), &["lease", "revoke", "--prefix", "apikeys/issue/ci"]));
    for x in [a, b] {
        assert_eq!(verify(x["data"]["token"].as_str().unwrap())["data"]["reason"], "revoked");
    }
    // The plugin cannot be deleted while mounted.
    let o = s.cli(Some(t), &["plugin", "delete", "apikeys"]);
    assert!(!o.status.success() && stderr(&o).contains("in use by mounts apikeys/"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_audit_apply_to_engine_paths() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev();
    let t = "root-e2e";
    let log = dir.path().join("audit.log");
    ok(&s.cli(Some(t), &["audit", "enable", "file", &format!("file_path={}", log.display())]));
    register(&s, t, "apikeys", "apikeys");
    mount(&s, t, "apikeys", "apikeys/", &[]);
    ok(&s.cli(Some(t), &["write", "apikeys/roles/ci", "scopes=read,write"]));
    let policy = dir.path().join("issuer.hcl");
    std::fs::write(
        &policy,
        r#"path "apikeys/issue/ci" {
  capabilities = ["update"]
  allowed_parameters = { "scopes" = ["read"], "ttl" = [] }
}
"#,
    )
    .unwrap();
    ok(&s.cli(Some(t), &["policy", "write", "issuer", policy.to_str().unwrap()]));
    let tok = json(&s.cli(Some(t), &["token", "create", "--policy", "issuer", "-o", "json"]));
    let tok = tok["token"].as_str().or(tok["auth"]["client_token"].as_str()).unwrap().to_string();
    let u = Some(tok.as_str());
    let issued = json(&s.cli(u, &["write", "apikeys/issue/ci", "scopes=read", "-o", "json"]));
    let secret = issued["data"]["token"].as_str().unwrap().to_string();
    let o = s.cli(u, &["write", "apikeys/issue/ci", "scopes=write"]);
    assert!(
        !o.status.success() && stderr(&o).contains("permission denied") && stderr(&o).contains("scopes"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(u, &["read", "apikeys/roles/ci"]);
    assert!(!o.status.success() && stderr(&o).contains("permission denied"), "{}", stderr(&o));
    let o = s.cli(u, &["lease", "list"]);
    assert!(!o.status.success() && stderr(&o).contains("permission denied"), "{}", stderr(&o));

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&secret), "an issued token reached the audit log");
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let write = records
        .iter()
        .find(|r| {
            r["type"] == "response"
                && r["operation"] == "keybridge.v1.Logical/Write"
                && r["status"] == "OK"
                && r["response"]["lease_id"].is_string()
        })
        .unwrap_or_else(|| panic!("no Logical/Write response record with a lease in {text}"));
    assert!(write["response"]["lease_id"].as_str().unwrap().starts_with("apikeys/issue/ci/"), "{write}");
    assert!(write["response"]["data"]["token"].as_str().unwrap().starts_with("hmac-sha256:"), "{write}");
    assert!(write["request"]["data"]["scopes"].as_str().unwrap().starts_with("hmac-sha256:"), "{write}");
    assert!(
        records.iter().any(|r| r["operation"] == "keybridge.v1.Logical/Write" && r["status"] == "PERMISSION_DENIED"),
        "the denied write was not audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_survive_a_restart_and_revoke_at_the_service() {
    let saas = Saas::start("admin-secret").await;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), false, 0);
    let (t, key) = blocking(|| init_unseal(&s));
    let t = t.as_str();
    register(&s, t, "saas", "saas");
    let allowed = format!("allowed_hosts={}", saas.addr);
    mount(&s, t, "saas", "saas/", &[&allowed]);
    // An hour: nothing expires before the restart, however slow the machine.
    ok(&s
        .cli(Some(t), &["write", "saas/config", &format!("url={}", saas.url()), "admin_token=admin-secret", "ttl=1h"]));
    let cfg = json(&s.cli(Some(t), &["read", "saas/config", "-o", "json"]));
    assert!(!cfg.to_string().contains("admin-secret"), "the admin token was read back");

    let issued = json(&s.cli(Some(t), &["read", "saas/creds/app", "-o", "json"]));
    let key_secret = issued["data"]["api_key"].as_str().unwrap().to_string();
    let lease = issued["lease_id"].as_str().unwrap().to_string();
    assert!(saas.valid(&key_secret));
    // Renewing looks the key up at the service and takes the increment.
    let renewed = json(&s.cli(Some(t), &["lease", "renew", &lease, "--increment", "30m", "-o", "json"]));
    assert!((1..=1800).contains(&renewed["lease_duration"].as_u64().unwrap()), "{renewed}");
    let short = json(&s.cli(Some(t), &["read", "saas/creds/short", "-o", "json"]));
    let short_secret = short["data"]["api_key"].as_str().unwrap().to_string();
    ok(&s.cli(Some(t), &["lease", "revoke", short["lease_id"].as_str().unwrap()]));
    assert!(!saas.valid(&short_secret), "revoking the lease left the key at the service");

    // The gateway stops with the lease live, and starts again two hours
    // later (a test clock: `KEYBRIDGE_FAULT_CLOCK_AHEAD`, compiled only
    // with the fault-injection feature). The lease expired while it was
    // down: the restarted gateway finds it among the leases it loads at
    // unseal and revokes the key at the service.
    drop(s);
    assert!(saas.valid(&key_secret), "the key was revoked before the restart");
    let s = Server::with_config_env(dir.path(), &[("KEYBRIDGE_FAULT_CLOCK_AHEAD", "7200")]);
    ok(&s.cli(None, &["operator", "unseal", &key]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while saas.valid(&key_secret) {
        assert!(Instant::now() < deadline, "the expired lease {lease} was not revoked after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(json(&s.cli(Some(t), &["lease", "list", "-o", "json"])), Value::Array(vec![]));

    // The service fails deletes: the lease stays, retried with backoff.
    saas.fail_deletes(true);
    let issued = json(&s.cli(Some(t), &["read", "saas/creds/flaky", "-o", "json"]));
    let flaky = issued["data"]["api_key"].as_str().unwrap().to_string();
    let o = s.cli(Some(t), &["lease", "revoke", issued["lease_id"].as_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("503"), "{}", stderr(&o));
    let l = json(&s.cli(Some(t), &["lease", "list", "-o", "json"]));
    assert!(l[0]["revoke_attempts"].as_u64().unwrap() >= 1, "{l}");
    assert!(saas.valid(&flaky));
    saas.fail_deletes(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while saas.valid(&flaky) {
        assert!(Instant::now() < deadline, "the failed revocation was not retried");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without the host on the allow-list, nothing leaves the sandbox.
    mount(&s, t, "saas", "closed/", &[]);
    ok(&s.cli(Some(t), &["write", "closed/config", &format!("url={}", saas.url()), "admin_token=admin-secret"]));
    let before = saas.live_keys();
    let o = s.cli(Some(t), &["read", "closed/creds/app"]);
    assert!(!o.status.success() && stderr(&o).contains("allowed_hosts"), "{}", stderr(&o));
    assert_eq!(saas.live_keys(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_alone_with_clear_statuses() {
    let s = Server::dev();
    let t = "root-e2e";
    register(&s, t, "hostile", "hostile");
    mount(&s, t, "hostile", "bad/", &["timeout=500ms", "max_memory_mb=32"]);
    let mut lc = pb::logical_client::LogicalClient::new(s.channel().await);
    let mut sc = s.secrets().await;
    sc.put(authed(
        t,
        pb::PutRequest { path: "secret/app".into(), value: crate::harness::fields(&[("k", "v")]), cas: None },
    ))
    .await
    .unwrap();
    for (path, code, text) in [
        ("bad/loop", tonic::Code::DeadlineExceeded, "time limit of 500ms"),
        ("bad/memory", tonic::Code::ResourceExhausted, "its limit is 32 MiB"),
        ("bad/trap", tonic::Code::Internal, "plugin trapped"),
        ("bad/recurse", tonic::Code::Internal, "call stack exhausted"),
        ("bad/huge", tonic::Code::ResourceExhausted, "max_response_bytes"),
        ("bad/call/evil.example", tonic::Code::PermissionDenied, "allowed_hosts"),
        ("bad/file", tonic::Code::PermissionDenied, "could not open /etc/passwd"),
    ] {
        let mut c = lc.clone();
        let p = path.to_string();
        let bad = tokio::spawn(async move {
            c.read(authed("root-e2e", pb::LogicalRequest { path: p, data: Default::default() })).await
        });
        // Other requests are served meanwhile (at least once after it,
        // however fast it fails: a trap now returns in microseconds).
        let mut served = 0;
        loop {
            sc.get(authed(t, pb::GetRequest { path: "secret/app".into(), ..Default::default() })).await.unwrap();
            let ok = lc
                .read(authed(t, pb::LogicalRequest { path: "bad/ok".into(), data: Default::default() }))
                .await
                .unwrap();
            assert_eq!(ok.get_ref().data["answer"], "42");
            served += 1;
            if bad.is_finished() {
                break;
            }
        }
        let e = bad.await.unwrap().unwrap_err();
        assert_eq!(e.code(), code, "{path}: {e:?}");
        assert!(e.message().contains(text), "{path}: {}", e.message());
        if path == "bad/loop" {
            // 500 ms of a spinning plugin: others in between (a loaded CI
            // machine may fit only one round trip of two calls).
            assert!(served >= 1, "{path}: no other call was served meanwhile");
        }
    }
    // And the server is fine.
    let o = s.cli(Some(t), &["read", "bad/ok"]);
    assert!(ok(&o).contains("42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_takes_effect_without_a_restart_and_calls_in_flight_finish() {
    let s = Server::dev();
    let t = "root-e2e";
    let v1 = register(&s, t, "eng", "hostile");
    // The call in flight waits, inside the plugin, on a request to this
    // server: its arrival says the call has started on v1, and it is
    // answered only after the upgrade.
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_addr = gate.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = gate.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).await;
        let _ = arrived_tx.send(());
        let _ = release_rx.await;
        let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    });
    mount(&s, t, "eng", "eng/", &["timeout=30s", &format!("allowed_hosts={gate_addr}")]);
    // The next version answers differently (another build registered as
    // `eng`), so the test sees which version serves a call.
    let v2 = register(&s, t, "eng", "passwords");
    let served_by_v2 = |r: Result<tonic::Response<pb::LogicalResponse>, tonic::Status>| match r {
        Err(e) => e.code() == tonic::Code::NotFound && e.message().contains("serves no path"),
        Ok(_) => false,
    };

    let mut lc = pb::logical_client::LogicalClient::new(s.channel().await);
    let mut c = lc.clone();
    let in_flight = tokio::spawn(async move {
        let path = format!("eng/call/{gate_addr}");
        c.read(authed("root-e2e", pb::LogicalRequest { path, data: Default::default() })).await
    });
    tokio::time::timeout(Duration::from_secs(20), arrived).await.expect("the call never reached the plugin").unwrap();
    ok(&s.cli(Some(t), &["mount", "tune", "eng/", &format!("sha256={v2}")]));
    // Upgraded while the call waits: new calls are served by v2 at once
    // (v1's `ok` path is gone, v2's `policies` is there).
    let r = lc.read(authed(t, pb::LogicalRequest { path: "eng/ok".into(), data: Default::default() })).await;
    assert!(served_by_v2(r), "v1 still serves new calls");
    let o = s.cli(Some(t), &["list", "eng/policies"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!in_flight.is_finished(), "the call in flight ended before it was released");
    release.send(()).unwrap();
    let r = in_flight.await.unwrap().expect("the call in flight failed across the upgrade");
    assert_eq!(r.get_ref().data["status"], "204");
    let mounts = json(&s.cli(Some(t), &["mount", "list", "-o", "json"]));
    let m = mounts.as_array().unwrap().iter().find(|m| m["path"] == "eng/").unwrap().clone();
    assert_eq!(m["config"]["sha256"], v2.as_str(), "{m}");
    // v1 is no longer in use; v2 is.
    let o = s.cli(Some(t), &["plugin", "delete", "eng", "--sha256", &v2]);
    assert!(!o.status.success(), "{}", stdout(&o));
    ok(&s.cli(Some(t), &["plugin", "delete", "eng", "--sha256", &v1]));
    let r = lc.read(authed(t, pb::LogicalRequest { path: "eng/ok".into(), data: Default::default() })).await;
    assert!(served_by_v2(r));
}

async fn kv_field(s: &Server, t: &str, path: &str, name: &str) -> String {
    let mut c = s.secrets().await;
    let r = c.get(authed(t, pb::GetRequest { path: path.into(), ..Default::default() })).await.unwrap();
    crate::harness::field(r.get_ref(), name)
}

async fn rotation_state(s: &Server, t: &str, path: &str) -> pb::RotationStatus {
    let mut c = pb::sync_client::SyncClient::new(s.channel().await);
    c.get_rotation(authed(t, pb::GetRotationRequest { path: path.into() })).await.unwrap().into_inner()
}

/// The reconciler's dual-credential rotation with an engine issuing the
/// credential: the new key is created while the old one works, goes to
/// every copy (a local mirror and GCP), and the old key is deleted at the
/// service only after every copy moved and the grace period passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_issued_credentials_rotate_across_every_copy() {
    let saas = Saas::start("admin-secret").await;
    let sm = keybridge_testservers::secretmanager::SecretManager::start("keybridge-test").await;
    let s = Server::dev();
    let t = "root-e2e";
    register(&s, t, "saas", "saas");
    register(&s, t, "passwords", "passwords");
    register(&s, t, "hostile", "hostile");
    mount(&s, t, "saas", "saas/", &[&format!("allowed_hosts={}", saas.addr)]);
    mount(&s, t, "passwords", "pw/", &[]);
    mount(&s, t, "hostile", "plain/", &[]);
    ok(&s.cli(Some(t), &["write", "saas/config", &format!("url={}", saas.url()), "admin_token=admin-secret"]));
    ok(&s.cli(Some(t), &["mount", "enable", "--type", "local", "mirror/"]));
    crate::harness::enable(&s, t, "gcp", "gcp/", &crate::harness::gcp_settings(&sm));
    ok(&s.cli(
        Some(t),
        &[
            "sync",
            "rule",
            "create",
            "app",
            "--source",
            "secret/app/",
            "--target",
            "mirror/app/",
            "--target",
            "gcp/app/",
        ],
    ));
    ok(&s.cli(Some(t), &["kv", "put", "secret/app/saas", "key_id=none", "api_key=initial"]));
    json(&s.cli(Some(t), &["sync", "run", "--wait", "-o", "json"]));

    // A plain engine cannot rotate; nothing starts.
    let o = s.cli(Some(t), &["rotate", "secret/app/saas", "--engine", "plain/ok"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot rotate"), "{}", stderr(&o));

    let r = json(
        &s.cli(Some(t), &["rotate", "secret/app/saas", "--engine", "saas/creds/app", "--wait=retired", "-o", "json"]),
    );
    assert_eq!(r["state"], "done", "{r}");
    let first = kv_field(&s, t, "secret/app/saas", "api_key").await;
    assert!(saas.valid(&first), "the rotated key is not live at the service");
    for c in ["mirror/app/saas", "gcp/app/saas"] {
        assert_eq!(kv_field(&s, t, c, "api_key").await, first, "{c}");
    }
    let first_lease = r["new_lease"].as_str().unwrap().to_string();
    assert!(first_lease.starts_with("saas/creds/app/"), "{r}");

    // The second rotation: the first key keeps working through the grace
    // period, and is deleted at the service once it is over.
    let r = json(
        &s.cli(Some(t), &["rotate", "secret/app/saas", "--engine", "saas/creds/app", "--grace", "3s", "-o", "json"]),
    );
    assert_eq!(r["old_lease"], first_lease.as_str(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = rotation_state(&s, t, "secret/app/saas").await;
        assert!(Instant::now() < deadline, "the rotation did not reach retiring: {st:?}");
        if st.state == "retiring" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = kv_field(&s, t, "secret/app/saas", "api_key").await;
    assert_ne!(second, first);
    for c in ["mirror/app/saas", "gcp/app/saas"] {
        assert_eq!(kv_field(&s, t, c, "api_key").await, second, "{c}");
    }
    assert!(saas.valid(&first) && saas.valid(&second), "both keys must work during the grace period");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rotation_state(&s, t, "secret/app/saas").await.state != "done" {
        assert!(Instant::now() < deadline, "the rotation did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!saas.valid(&first), "the old key outlived the rotation");
    assert!(saas.valid(&second));
    let leases = json(&s.cli(Some(t), &["lease", "list", "saas/", "-o", "json"]));
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    // The held credential's lease does not expire or renew.
    let o = s.cli(Some(t), &["lease", "renew", leases[0]["lease_id"].as_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("held by a rotation"), "{}", stderr(&o));

    // The password engine as the rotation generator.
    ok(&s.cli(Some(t), &["write", "pw/policies/db", "length=40", "min_symbols=-1"]));
    ok(&s.cli(Some(t), &["kv", "put", "secret/app/db", "user=app", "password=old"]));
    json(&s.cli(Some(t), &["sync", "run", "--wait", "-o", "json"]));
    // The password engine on its own: inline policies and passphrases.
    let g =
        json(&s.cli(Some(t), &["read", "pw/generate", "length=12", "min_digits=4", "min_symbols=-1", "-o", "json"]));
    let p = g["data"]["password"].as_str().unwrap();
    assert_eq!(p.len(), 12);
    assert!(p.chars().filter(char::is_ascii_digit).count() >= 4 && p.chars().all(|c| c.is_ascii_alphanumeric()), "{p}");
    let o = s.cli(Some(t), &["read", "pw/generate", "length=8", "min_lower=5", "min_upper=5"]);
    assert!(!o.status.success() && stderr(&o).contains("add up to more than the length"), "{}", stderr(&o));
    let ph = json(&s.cli(Some(t), &["read", "pw/passphrase", "words=5", "separator=.", "-o", "json"]));
    assert_eq!(ph["data"]["passphrase"].as_str().unwrap().split('.').count(), 5);
    assert!(ph["data"]["entropy_bits"].as_str().unwrap().parse::<u32>().unwrap() > 90, "{ph}");
    let r = json(
        &s.cli(Some(t), &["rotate", "secret/app/db", "--engine", "pw/generate/db", "--wait=retired", "-o", "json"]),
    );
    assert_eq!(r["state"], "done", "{r}");
    let pw = kv_field(&s, t, "secret/app/db", "password").await;
    assert_eq!(pw.len(), 40);
    assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()), "{pw}");
    assert_eq!(kv_field(&s, t, "secret/app/db", "user").await, "app");
    assert_eq!(kv_field(&s, t, "gcp/app/db", "password").await, pw);

    // A schedule rotates later, not now (through the engine too).
    let r = json(
        &s.cli(Some(t), &["rotate", "secret/app/db", "--engine", "pw/generate/db", "--every", "1h", "-o", "json"]),
    );
    assert_eq!(r["state"], "scheduled", "{r}");
    assert!(!r["next_rotation_time"].as_str().unwrap().is_empty(), "{r}");
    assert_eq!(kv_field(&s, t, "secret/app/db", "password").await, pw, "a schedule rotated at once");
    let r = json(&s.cli(Some(t), &["rotate", "secret/app/db", "--every", "0s", "-o", "json"]));
    assert_eq!(r["state"], "unscheduled", "{r}");
}

/// A graceful stop (SIGTERM), so the store closes cleanly for the fixture.
fn stop(mut s: Server) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let _ = s.child.wait();
}

fn rss_kib(pid: u32) -> u64 {
    crate::harness::status_kib(pid, "VmRSS:")
}

/// Writes `n` leases on `keys/` straight into a stopped server's store.
async fn lease_fixture(dir: &std::path::Path, key: &str, n: usize) {
    use keybridge_barrier::{Barrier, RedbStore};
    use keybridge_core::plugins::Params;
    let store = RedbStore::open(&dir.join("data/keybridge.db"), 8 << 20).unwrap();
    let core = keybridge_core::Core::new(Barrier::new(std::sync::Arc::new(store)), Default::default());
    core.unseal(key, false, false).await.unwrap();
    core.write_lease_fixture("keys/", n, 1000, |_| 30 * 86_400, |i| Params(vec![("jti".into(), format!("f{i}"))]))
        .await
        .unwrap();
}

/// What unsealing and serving leases (pages, lookups) add to the RSS of
/// the server just started on the store, sealed. (Opening the store costs
/// memory with the file's size, in redb, whatever it holds.)
async fn serving_rss(dir: &std::path::Path, key: &str, root: &str, expect: usize) -> i64 {
    let s = Server::with_config(dir, false, 0);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sealed = rss_kib(s.child.id());
    ok(&blocking(|| s.cli(None, &["operator", "unseal", key])));
    let mut leases = pb::leases_client::LeasesClient::new(s.channel().await);
    let page = |token: String| {
        authed(root, pb::ListLeasesRequest { prefix: "keys/".into(), page_size: 1000, page_token: token })
    };
    // One page (the same records either way: the store's cache holds what
    // is read, bounded by its size), then a page from the far end.
    let first = leases.list(page(String::new())).await.unwrap().into_inner();
    assert_eq!(first.leases.len(), 1000);
    assert_eq!(first.next_page_token.is_empty(), expect == 1000);
    let near_end = format!("keys/fixture/{:032x}", expect - 3);
    let last = leases.list(page(near_end)).await.unwrap().into_inner();
    assert_eq!(last.leases.len(), 2);
    for i in [0usize, 1, expect / 2, expect - 1] {
        let id = format!("keys/fixture/{i:032x}");
        leases.lookup(authed(root, pb::LeaseRef { lease_id: id })).await.unwrap();
    }
    let rss = rss_kib(s.child.id());
    drop(leases);
    stop(s);
    rss as i64 - sealed as i64
}

/// No lease is held in memory: a server with 10,000 leases in its store
/// unseals and serves them (pages, lookups) in the memory it takes with
/// 1,000. Loading them at unseal, as an in-memory index did, costs
/// megabytes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_memory_does_not_grow_with_the_number_of_leases() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config(dir.path(), false, 0);
    let (t, key) = blocking(|| init_unseal(&s));
    register(&s, &t, "apikeys", "apikeys");
    mount(&s, &t, "apikeys", "keys/", &[]);
    stop(s);
    lease_fixture(dir.path(), &key, 1_000).await;
    let small = serving_rss(dir.path(), &key, &t, 1_000).await;
    lease_fixture(dir.path(), &key, 10_000).await;
    let large = serving_rss(dir.path(), &key, &t, 10_000).await;
    eprintln!("RSS added by unsealing and serving 1,000 leases: {small} KiB; 10,000 leases: {large} KiB");
    assert!(
        large < small + 2 * 1024,
        "unsealing and serving took {small} KiB with 1,000 leases and {large} KiB with 10,000"
    );
}

/// A call that runs past the server's `limits.request_timeout` (a plugin
/// allowed longer than that) is stopped and answered DEADLINE_EXCEEDED
/// with a sentence naming the setting; the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_request_timeout_is_deadline_exceeded_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "request_timeout = \"1s\"");
    let (root, _) = crate::harness::blocking(|| crate::harness::init_unseal(&s));
    let t = root.as_str();
    register(&s, t, "hostile", "hostile");
    mount(&s, t, "hostile", "bad/", &["timeout=20s"]);
    let mut lc = pb::logical_client::LogicalClient::new(s.channel().await);
    let started = std::time::Instant::now();
    let e =
        lc.read(authed(t, pb::LogicalRequest { path: "bad/loop".into(), data: Default::default() })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("limits.request_timeout"), "{}", e.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopped at the limit: {:?}", started.elapsed());
    let ok = lc.read(authed(t, pb::LogicalRequest { path: "bad/ok".into(), data: Default::default() })).await.unwrap();
    assert_eq!(ok.get_ref().data["answer"], "42");
}
