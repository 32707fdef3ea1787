//! The reconciler through the binary: a rule from the local store to AWS
//! (moto), GCP (our Secret Manager server) and Azure (our Key Vault
//! server); replication on write, a foreign target left alone, an
//! out-of-band value-only edit restored, a target down then back, and the
//! cost of a steady-state scan.

use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use keybridge_testservers::keyvault::KeyVault;
use keybridge_testservers::secretmanager::SecretManager;
use serde_json::Value;

use crate::harness::{
    Server, authed, aws_settings, azure_settings, boto3, enable, field, fields, gcp_settings, json, moto, stderr,
    stdout,
};

const T: &str = "root-e2e";

fn calls(status: &Value, mount: &str, kind: &str) -> u64 {
    status["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["mount"] == mount && c["kind"] == kind)
        .map_or(0, |c| c["calls"].as_u64().unwrap())
}

fn state_of(status: &Value, target: &str) -> (String, String) {
    let t = status["targets"].as_array().unwrap().iter().find(|t| t["target"] == target);
    let t = t.unwrap_or_else(|| panic!("no status for {target}: {status}"));
    (t["state"].as_str().unwrap().to_string(), t["message"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_to_three_clouds_with_drift_and_an_outage() {
    let m = moto();
    let sm = SecretManager::start("keybridge-test").await;
    let kv = KeyVault::start().await;
    let s = Server::dev();
    enable(&s, T, "aws", "aws/", &aws_settings(&m));
    enable(&s, T, "gcp", "gcp/", &gcp_settings(&sm));
    enable(&s, T, "azure", "azure/", &azure_settings(&kv));
    // A secret at a target that Keybridge did not write.
    boto3(&m, "c.create_secret(Name='app/foreign', SecretString='theirs')\n");

    let t = Some(T);
    let o = s.cli(
        t,
        &[
            "sync",
            "rule",
            "create",
            "app",
            "--source",
            "secret/app/",
            "--target",
            "aws/app/",
            "--target",
            "gcp/app/",
            "--target",
            "azure/app/",
            "--scan-interval",
            "1h",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Refused: a second rule writing the same targets, and a cycle.
    let o = s.cli(t, &["sync", "rule", "create", "other", "--source", "secret/x/", "--target", "aws/app/sub/"]);
    assert!(stderr(&o).contains("two rules may not write the same secret"), "{}", stderr(&o));
    let o = s.cli(t, &["sync", "rule", "create", "back", "--source", "aws/app/", "--target", "secret/app/"]);
    assert!(stderr(&o).contains("cycle"), "{}", stderr(&o));

    // A write reaches every target quickly.
    let mut c = s.secrets().await;
    let put =
        |path: &str, value: &str| pb::PutRequest { path: path.into(), value: fields(&[("pw", value)]), cas: None };
    c.put(authed(T, put("secret/app/foreign", "ours"))).await.unwrap();
    let started = Instant::now();
    c.put(authed(T, put("secret/app/db", "one"))).await.unwrap();
    for target in ["aws/app/db", "gcp/app/db", "azure/app/db"] {
        loop {
            let r = c.get(authed(T, pb::GetRequest { path: target.into(), ..Default::default() })).await;
            if r.as_ref().is_ok_and(|r| field(r.get_ref(), "pw") == "one") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{target} did not get the value: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let status = json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    for target in ["aws/app/db", "gcp/app/db", "azure/app/db"] {
        assert_eq!(state_of(&status, target).0, "in_sync", "{status}");
    }
    // The foreign secret is left alone and reported.
    let (st, msg) = state_of(&status, "aws/app/foreign");
    assert_eq!(st, "conflict", "{msg}");
    let r = c.get(authed(T, pb::GetRequest { path: "aws/app/foreign".into(), ..Default::default() })).await.unwrap();
    assert!(
        matches!(r.get_ref().value.as_ref().and_then(|v| v.kind.as_ref()), Some(pb::secret_value::Kind::Text(t)) if t == "theirs")
    );

    // A steady-state (quick) scan: AWS and Azure list, nothing else.
    let before = json(&s.cli(t, &["sync", "status", "-o", "json"]));
    let after = json(&s.cli(t, &["sync", "run", "--wait", "--quick", "-o", "json"]));
    for mnt in ["aws/", "azure/"] {
        for kind in ["read_value", "read_meta", "write"] {
            assert_eq!(calls(&after, mnt, kind), calls(&before, mnt, kind), "{mnt} {kind}: {after}");
        }
        assert_eq!(calls(&after, mnt, "list") - calls(&before, mnt, "list"), 1, "{mnt}: one list call");
    }
    // GCP's listing shows no versions: a quick scan lists only.
    for kind in ["read_value", "read_meta", "write"] {
        assert_eq!(calls(&after, "gcp/", kind), calls(&before, "gcp/", kind), "gcp {kind}: {after}");
    }

    // A value-only change made outside Keybridge is caught and restored.
    boto3(&m, "c.put_secret_value(SecretId='app/db', SecretString='{\"pw\": \"tampered\"}')\n");
    let status = json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    let (st, msg) = state_of(&status, "aws/app/db");
    assert_eq!(st, "in_sync", "{msg}");
    assert!(msg.contains("restored"), "{msg}");
    let r = c.get(authed(T, pb::GetRequest { path: "aws/app/db".into(), ..Default::default() })).await.unwrap();
    assert_eq!(field(r.get_ref(), "pw"), "one");

    // A target that is down delays its change, and gets it when back.
    kv.set_down(true);
    c.put(authed(T, put("secret/app/db", "two"))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = json(&s.cli(t, &["sync", "status", "-o", "json"]));
        if state_of(&st, "azure/app/db").0 == "error" {
            assert!(st["pending"].as_u64().unwrap() >= 1, "{st}");
            assert!(state_of(&st, "azure/app/db").1.contains("Azure Key Vault"), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no error reported for the azure target: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.get(authed(T, pb::GetRequest { path: "aws/app/db".into(), ..Default::default() })).await.unwrap();
    assert_eq!(field(r.get_ref(), "pw"), "two", "the other targets did not wait");
    kv.set_down(false);
    let status = json(&s.cli(t, &["sync", "run", "--wait", "--timeout", "30s", "-o", "json"]));
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(state_of(&status, "azure/app/db").0, "in_sync", "{status}");
    let r = c.get(authed(T, pb::GetRequest { path: "azure/app/db".into(), ..Default::default() })).await.unwrap();
    assert_eq!(field(r.get_ref(), "pw"), "two");
    let versions =
        c.list_versions(authed(T, pb::ListVersionsRequest { path: "azure/app/db".into() })).await.unwrap().into_inner();
    assert_eq!(versions.versions.len(), 2, "no duplicate versions: {versions:?}");

    // The table form.
    let o = s.cli(t, &["sync", "status"]);
    assert!(stdout(&o).contains("azure/app/db") && stdout(&o).contains("in_sync"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_from_a_file() {
    let s = Server::dev();
    let t = Some(T);
    assert!(s.cli(t, &["mount", "enable", "--type", "local", "copy/"]).status.success());
    let file = std::env::temp_dir().join(format!("kb-e2e-rules-{}.hcl", std::process::id()));
    std::fs::write(
        &file,
        r#"
rule "copy" {
  source = "secret/app/"
  targets = ["copy/app/"]
  on_conflict = "alert"
  delete = "propagate"
  scan_interval = "30s"
}
"#,
    )
    .unwrap();
    let o = s.cli(t, &["sync", "apply", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rules = json(&s.cli(t, &["sync", "rule", "list", "-o", "json"]));
    assert_eq!(rules[0]["on_conflict"], "alert");
    assert_eq!(rules[0]["delete"], "propagate");
    assert_eq!(rules[0]["scan_interval_secs"], 30);
    std::fs::write(&file, "rule \"bad\" {\n  source = \"secret/\"\n  targets = [\"copy/\"]\n  colour = \"red\"\n}\n")
        .unwrap();
    let o = s.cli(t, &["sync", "apply", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("colour"), "{}", stderr(&o));
    assert!(s.cli(t, &["kv", "put", "secret/app/k", "v=1"]).status.success());
    let st = json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    assert_eq!(st["pending"], 0);
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "copy/app/k"]))["data"]["v"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_learn_of_replicas_and_rotations_at_once() {
    use tokio_stream::StreamExt;
    let s = Server::dev();
    let t = Some(T);
    assert!(s.cli(t, &["mount", "enable", "--type", "local", "copy/"]).status.success());
    let o = s.cli(t, &["sync", "rule", "create", "copy", "--source", "secret/app/", "--target", "copy/app/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut c = s.secrets().await;
    let mut events =
        c.watch(authed(T, pb::WatchSecretRequest { path: "copy/app/k".into() })).await.unwrap().into_inner();
    let started = Instant::now();
    c.put(authed(T, pb::PutRequest { path: "secret/app/k".into(), value: fields(&[("password", "one")]), cas: None }))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((e.kind.as_str(), e.version), ("replicated", 1), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let o = s.cli(t, &["rotate", "secret/app/k", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((e.kind.as_str(), e.version), ("rotated", 2), "{e:?}");
    // Watching needs read on the secret.
    let tok = json(&s.cli(t, &["token", "create", "--policy", "default", "-o", "json"]));
    let other = tok["token"].as_str().unwrap();
    let e = c.watch(authed(other, pb::WatchSecretRequest { path: "copy/app/k".into() })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_source_replicates_to_the_local_store_and_its_outside_edits_are_seen() {
    let m = moto();
    let s = Server::dev();
    let t = Some(T);
    enable(&s, T, "aws", "aws/", &aws_settings(&m));
    boto3(&m, "c.create_secret(Name='src/db', SecretString='{\"pw\": \"one\"}')\n");
    let o = s.cli(t, &["sync", "rule", "create", "back", "--source", "aws/src/", "--target", "secret/copy/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/copy/db"]))["data"]["pw"], "one");
    // Written in AWS by another tool (no Keybridge version number): the
    // scan sees the new AWSCURRENT id in the listing and replicates it.
    boto3(&m, "c.put_secret_value(SecretId='src/db', SecretString='{\"pw\": \"two\"}')\n");
    json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/copy/db"]))["data"]["pw"], "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_and_adopt_on_an_azure_replica() {
    let kv = KeyVault::start().await;
    let s = Server::dev();
    let t = Some(T);
    enable(&s, T, "azure", "azure/", &azure_settings(&kv));
    let create = |policy: &str| {
        let o = s.cli(
            t,
            &["sync", "rule", "create", "p", "--source", "secret/p/", "--target", "azure/p/", "--on-conflict", policy],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    };
    create("alert");
    assert!(s.cli(t, &["kv", "put", "secret/p/db", "pw=one"]).status.success());
    json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    // Someone edits the replica in the vault (the portal, az CLI).
    kv.put_out_of_band("p--db", "{\"pw\":\"portal\"}", None);
    let st = json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    let (state, msg) = state_of(&st, "azure/p/db");
    assert_eq!(state, "conflict", "{msg}");
    assert!(msg.contains("changed outside Keybridge"), "{msg}");
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "azure/p/db"]))["data"]["pw"], "portal");
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/p/db"]))["data"]["pw"], "one");
    // Adopt: the portal's value becomes the source's next version, and the
    // audit log says so.
    let log = std::env::temp_dir().join(format!("kb-e2e-adopt-{}-{}.log", std::process::id(), kv.addr.port()));
    let o = s.cli(t, &["audit", "enable", "file", &format!("file_path={}", log.display())]);
    assert!(o.status.success(), "{}", stderr(&o));
    create("adopt");
    let st = json(&s.cli(t, &["sync", "run", "--wait", "-o", "json"]));
    let (state, msg) = state_of(&st, "azure/p/db");
    assert_eq!(state, "in_sync", "{msg}");
    let src = json(&s.cli(t, &["kv", "get", "-o", "json", "secret/p/db"]));
    assert_eq!(src["data"]["pw"], "portal");
    assert_eq!(src["metadata"]["version"], 2);
    let audit = std::fs::read_to_string(&log).unwrap();
    let adopt = audit.lines().find(|l| l.contains("keybridge.v1.Sync/Adopt")).expect("an adopt record");
    assert!(adopt.contains("azure/p/db") && adopt.contains("secret/p/db"), "{adopt}");
    assert!(!adopt.contains("portal"), "the value appears only as an HMAC: {adopt}");
}

/// `sync run --wait --timeout 2s` against a target that cannot be reached
/// (moto gone): the timeout bounds the whole command, which says it
/// stopped waiting and exits 7 (still pending); without a terminal its
/// progress is one line per change, never a carriage return.
#[test]
fn a_sync_wait_that_times_out_says_so_and_exits_7() {
    let s = Server::dev();
    let t = Some(T);
    let m = moto();
    enable(&s, T, "aws", "aws/", &aws_settings(&m));
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ok(&["mount", "enable", "--type", "local", "mirror/"]);
    ok(&[
        "sync",
        "rule",
        "create",
        "app",
        "--source",
        "secret/app/",
        "--target",
        "aws/app/",
        "--target",
        "mirror/app/",
    ]);
    ok(&["kv", "put", "secret/app/db", "pw=one"]);
    let o = s.cli(t, &["sync", "run", "--wait", "--timeout", "30s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(m);
    ok(&["kv", "put", "secret/app/db", "pw=two"]);
    let started = Instant::now();
    let o = s.cli(t, &["sync", "run", "--wait", "--timeout", "2s"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(7), "{}{}", stdout(&o), stderr(&o));
    assert!(took < Duration::from_secs(6), "--timeout 2s took {took:?}");
    let err = stderr(&o);
    assert!(err.contains("stopped waiting after 2s: not settled yet"), "{err}");
    assert!(!err.contains('\r'), "carriage returns without a terminal: {err:?}");
    // Progress lines count per target folder.
    assert!(
        err.lines().any(|l| l.starts_with("sync: ") && l.contains("aws/app/ 0/1") && l.contains("mirror/app/ ")),
        "{err}"
    );
}

/// A `Run` that asks to wait longer than the server's request timeout
/// gives up in time and says so (`settled: false`), instead of being cut
/// off by the server with CANCELLED and no status.
#[tokio::test]
async fn a_sync_wait_longer_than_the_request_timeout_answers_not_settled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "request_timeout = \"3s\"");
    let (root, _) = crate::harness::blocking(|| crate::harness::init_unseal(&s));
    let m = moto();
    enable(&s, &root, "aws", "aws/", &aws_settings(&m));
    let mut sync = pb::sync_client::SyncClient::new(s.channel().await);
    let rule = pb::SyncRule {
        name: "app".into(),
        source: "secret/app/".into(),
        targets: vec!["aws/app/".into()],
        ..Default::default()
    };
    sync.create_rule(authed(&root, rule)).await.unwrap();
    let mut c = s.secrets().await;
    let put = |v: &str| pb::PutRequest { path: "secret/app/db".into(), value: fields(&[("pw", v)]), cas: None };
    c.put(authed(&root, put("one"))).await.unwrap();
    let run = |timeout_secs| pb::RunSyncRequest { rule: "app".into(), wait: true, timeout_secs, ..Default::default() };
    assert!(sync.run(authed(&root, run(2))).await.unwrap().into_inner().settled);
    drop(m);
    c.put(authed(&root, put("two"))).await.unwrap();
    let started = Instant::now();
    let st = sync.run(authed(&root, run(30))).await.expect("an answer, not the request timeout").into_inner();
    let took = started.elapsed();
    assert!(!st.settled, "moto is gone: {st:?}");
    // It waited nine tenths of the request timeout (2.7 s), then answered.
    assert!(took >= Duration::from_millis(2500), "waited {took:?}");
}

/// `rotate --grace 10m --wait` returns once every copy is promoted (the old
/// version still in its grace period); `--wait=retired` waits through the
/// grace period, so with a short timeout it stops, says so, and exits 7.
#[test]
fn rotate_waits_for_promotion_or_retirement() {
    let s = Server::dev();
    let t = Some(T);
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["mount", "enable", "--type", "local", "mirror/"]);
    ok(&["sync", "rule", "create", "app", "--source", "secret/app/", "--target", "mirror/app/"]);
    ok(&["kv", "put", "secret/app/db", "password=old"]);
    ok(&["kv", "put", "secret/app/api", "password=old"]);
    ok(&["sync", "run", "--wait", "--timeout", "30s"]);

    let o = ok(&["rotate", "secret/app/db", "--grace", "10m", "--wait", "--timeout", "60s", "-o", "json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"], "retiring", "{r}");
    assert!(r["copies"].as_array().unwrap().iter().all(|c| c["promoted"] == true), "{r}");
    let shown = json(&ok(&["sync", "rotation", "secret/app/db", "-o", "json"]));
    assert_eq!(shown["id"], r["id"]);

    let o = s.cli(t, &["rotate", "secret/app/api", "--grace", "10m", "--wait=retired", "--timeout", "2s"]);
    assert_eq!(o.status.code(), Some(7), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("before the old version retired everywhere"), "{err}");
    assert!(err.contains("keybridge sync rotation secret/app/api"), "{err}");
    assert!(!err.contains('\r'), "{err:?}");
}

/// `sync status` pages through 10,000 replicas, each page a bounded
/// answer, and counts every one; the CLI takes a limit, where to go on
/// from, and a state. (What a scan holds in memory is measured in the
/// core's `scan_memory` test, where the heap can be counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_pages_through_ten_thousand_replicas() {
    let s = Server::dev();
    enable(&s, T, "local", "replica/", &[]);
    let mut sync = pb::sync_client::SyncClient::new(s.channel().await);
    let rule = pb::SyncRule {
        name: "m".into(),
        source: "secret/m/".into(),
        targets: vec!["replica/m/".into()],
        scan_interval_secs: 3600,
        ..Default::default()
    };
    sync.create_rule(authed(T, rule)).await.unwrap();
    let n = 10_000;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = s.secrets().await;
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let req = pb::PutRequest { path: format!("secret/m/k{i:05}"), value: fields(&[("v", "x")]), cas: None };
                c.put(authed(T, req)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let run = pb::RunSyncRequest { rule: "m".into(), wait: true, timeout_secs: 300, ..Default::default() };
    let st = sync.run(authed(T, run)).await.unwrap().into_inner();
    assert!(st.settled);
    // A run answers with the first page (1,000 by default) and the counts.
    assert_eq!((st.targets.len(), st.next_page_token.as_str()), (1000, "m:replica/m/k00999"));
    // The replicas a page at a time, each once, with every one counted.
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let req = pb::SyncStatusRequest { rule: "m".into(), page_size: 4000, page_token: token, ..Default::default() };
        let st = sync.status(authed(T, req)).await.unwrap().into_inner();
        assert!(st.targets.len() <= 4000);
        let counts: Vec<(&str, u64)> = st.counts.iter().map(|c| (c.state.as_str(), c.count)).collect();
        if seen == 0 {
            assert_eq!(counts, [("in_sync", 10_000)]);
        } else {
            assert!(counts.is_empty(), "counted again on a later page: {counts:?}");
        }
        if let (Some(first), 0) = (st.targets.first(), seen) {
            assert_eq!(first.target, "replica/m/k00000");
        }
        seen += st.targets.len();
        if st.next_page_token.is_empty() {
            break;
        }
        token = st.next_page_token;
    }
    assert_eq!(seen, 10_000);
    // The CLI: a limit, where to go on from, a state filter, and the counts.
    let o = s.cli(Some(T), &["sync", "status", "--rule", "m", "--limit", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().filter(|l| l.contains("replica/m/k")).count(), 5, "{}", stdout(&o));
    assert!(stdout(&o).contains("replicas: m replica/m/ in_sync 10000"), "{}", stdout(&o));
    assert!(stderr(&o).contains("keybridge sync status --after m:replica/m/k00004"), "{}", stderr(&o));
    let o = s.cli(Some(T), &["sync", "status", "--rule", "m", "--limit", "2", "--after", "m:replica/m/k00004"]);
    assert!(stdout(&o).contains("replica/m/k00005") && stdout(&o).contains("replica/m/k00006"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("replica/m/k00004"), "{}", stdout(&o));
    let o = s.cli(Some(T), &["sync", "status", "--rule", "m", "--state", "drifted"]);
    assert!(o.status.success() && !stdout(&o).contains("replica/m/k"), "{}", stdout(&o));
    let o = s.cli(Some(T), &["sync", "status", "--state", "lost"]);
    assert!(!o.status.success() && stderr(&o).contains("no replica state \"lost\""), "{}", stderr(&o));
}
