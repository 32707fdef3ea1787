//! The telemetry listener: Vault's health endpoint with its codes and
//! options, and the Prometheus exposition, checked by `promtool`, scraped
//! by a real Prometheus (Debian's, run here), and read by the Grafana
//! dashboard in deploy/ (every series its queries name is exported).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Server, blocking, init_unseal, json, stderr, stdout};

fn start(dir: &Path, telemetry: &str, top: &str) -> Server {
    let s = Server::with_config_top(
        dir,
        &format!("telemetry {{\n address = \"127.0.0.1:0\"\n{telemetry}\n}}\ncluster_name = \"kb-e2e\"\n{top}"),
    );
    assert!(s.telemetry.is_some(), "no telemetry listener announced");
    s
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

async fn health(s: &Server, query: &str) -> (u16, Value) {
    let (code, body) = get(&format!("{}/v1/sys/health{query}", s.telemetry.as_ref().unwrap()), &[]).await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn tool(env: &str, name: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| {
        panic!("{env} is not set: run ./tests/run-all.sh, which installs Debian's prometheus and sets it ({name})")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_with_vaults_codes_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "", "api_addr = \"https://kb.example:8400\"");
    let (code, body) = health(&s, "").await;
    assert_eq!(code, 501, "{body}");
    assert_eq!(body["initialized"], false);
    assert_eq!(health(&s, "?uninitcode=204").await.0, 204);
    let head =
        reqwest::Client::new().head(format!("{}/v1/sys/health", s.telemetry.as_ref().unwrap())).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 501);
    assert!(head.text().await.unwrap().is_empty(), "HEAD has no body");

    let o = s.cli(None, &["operator", "init", "--key-shares", "1", "--key-threshold", "1", "-o", "json"]);
    let key = json(&o)["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let (code, body) = health(&s, "").await;
    assert_eq!((code, &body["sealed"]), (503, &Value::Bool(true)), "{body}");
    assert_eq!(health(&s, "?sealedcode=299").await.0, 299);
    assert!(s.cli(None, &["operator", "unseal", &key]).status.success());

    let (code, body) = health(&s, "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["initialized"], true);
    assert_eq!(body["sealed"], false);
    assert_eq!(body["standby"], false);
    assert_eq!(body["cluster_name"], "kb-e2e");
    assert_eq!(body["leader_address"], "https://kb.example:8400");
    assert!(body["version"].as_str().is_some_and(|v| !v.is_empty()), "{body}");
    assert!(body["node_id"].as_str().is_some_and(|v| !v.is_empty()), "{body}");
    assert_eq!(health(&s, "?activecode=203&standbyok=true").await.0, 203);
    // Options that are not codes are refused, with a reason.
    for q in ["?activecode=abc", "?sealedcode=99", "?standbyok=maybe"] {
        let (code, body) = health(&s, q).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body["errors"][0].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
}

/// Waits for Prometheus' query API to answer `query` with a sample.
async fn prometheus_value(base: &str, query: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = format!("{base}/api/v1/query?query={}", urlencode(query));
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(v) = r.json::<Value>().await
            && let Some(x) = v["data"]["result"][0]["value"][1].as_str()
        {
            return x.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "Prometheus never had {query}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_reach_prometheus_and_feed_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "", "");
    let (root, _) = init_unseal(&s);
    let t = Some(root.as_str());
    let log = dir.path().join("audit.log");
    assert!(s.cli(t, &["audit", "enable", "file", &format!("file_path={}", log.display())]).status.success());
    // A cloud mount (moto) a rule replicates to: cloud calls, cache and
    // replication series.
    let m = crate::harness::moto();
    crate::harness::enable(&s, &root, "aws", "aws/", &crate::harness::aws_settings(&m));
    let o = s.cli(t, &["sync", "rule", "create", "app", "--source", "secret/app/", "--target", "aws/app/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(t, &["kv", "put", "secret/app/db-password-7c1e", "pw=hunter2-value"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(t, &["kv", "get", "secret/app/db-password-7c1e"]).status.success());
    assert!(!s.cli(t, &["kv", "get", "secret/app/missing-4f2a"]).status.success());
    assert!(!s.cli(Some("not-a-token-91d3"), &["kv", "get", "secret/app/x"]).status.success());
    let o = s.cli(t, &["sync", "run", "--wait", "--timeout", "60s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.cli(t, &["kv", "get", "aws/app/db-password-7c1e"]).status.success());

    let base = s.telemetry.clone().unwrap();
    let (code, text) = get(&format!("{base}/metrics"), &[]).await;
    assert_eq!(code, 200, "{text}");
    for series in [
        "keybridge_requests_total{rpc=\"keybridge.v1.Secrets/Put\",code=\"OK\"} 1",
        "keybridge_requests_total{rpc=\"keybridge.v1.Secrets/Get\",code=\"NOT_FOUND\"} 1",
        "keybridge_request_duration_seconds_bucket{",
        "keybridge_auth_failures_total{method=\"token\",reason=\"invalid_token\"} 1",
        "keybridge_leases{mount=\"secret/\"} 0",
        "keybridge_audit_records_total{device=\"file/\"}",
        "keybridge_rotations_total{result=\"started\"} 0",
        "keybridge_sealed 0",
        "keybridge_initialized 1",
        "keybridge_leader 1",
        "keybridge_sync_journal_depth 0",
        "keybridge_sync_replication_lag_seconds{mount=\"aws/\"} 0",
        "keybridge_cloud_calls_total{provider=\"aws\",operation=\"put",
        "keybridge_cache_hits_total{mount=\"aws/\"}",
        "keybridge_leases{mount=\"aws/\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    // Labels name RPCs and mounts: never a secret's path, value or a token.
    for leak in ["db-password-7c1e", "missing-4f2a", "hunter2", "not-a-token-91d3", &root] {
        assert!(!text.contains(leak), "{leak} appears in the metrics");
    }

    // promtool's own check of the exposition.
    let promtool = tool("KEYBRIDGE_PROMTOOL", "promtool");
    let checked = blocking(|| {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(checked.status.success(), "promtool check metrics: {}{}", stdout(&checked), stderr(&checked));

    // Every series the dashboard's queries name is one the node exports.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/keybridge.json")).unwrap(),
    )
    .unwrap();
    let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut named = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("keybridge_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                let family = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .find_map(|sfx| name.strip_suffix(sfx).filter(|f| families.contains(f)))
                    .unwrap_or(&name);
                assert!(families.contains(&family), "the dashboard's {name:?} (in {expr:?}) is not exported");
                named += 1;
            }
        }
    }
    assert!(named >= 10, "the dashboard names only {named} series");
    let titles: Vec<&str> =
        dashboard["panels"].as_array().unwrap().iter().filter_map(|p| p["title"].as_str()).collect();
    for t in ["Lease count", "Auth failures", "Rotation success rate", "Sync lag", "Request latency"] {
        assert!(titles.contains(&t), "no {t} panel");
    }

    // A real Prometheus scrapes the node, and its query API reads back.
    let prom = tool("KEYBRIDGE_PROMETHEUS", "prometheus");
    let port = Server::free_port();
    let target = base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keybridge\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(prom)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(std::mem::replace(&mut child, Command::new("true").spawn().unwrap()));
    let prom = format!("http://127.0.0.1:{port}");
    assert_eq!(prometheus_value(&prom, "up{job=\"keybridge\"}").await, 1.0);
    assert_eq!(prometheus_value(&prom, "keybridge_sealed").await, 0.0);
    let puts = prometheus_value(&prom, "sum(keybridge_requests_total{rpc=\"keybridge.v1.Secrets/Put\"})").await;
    assert!(puts >= 1.0, "{puts}");
    let failures = prometheus_value(&prom, "sum(keybridge_auth_failures_total)").await;
    assert!(failures >= 1.0, "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_take_a_token_with_read_on_sys_metrics_when_unauthenticated_access_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), " unauthenticated_metrics_access = false", "");
    let (root, _) = init_unseal(&s);
    let ok = |args: &[&str]| {
        let o = s.cli(Some(&root), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let policy = dir.path().join("metrics.hcl");
    std::fs::write(&policy, "path \"sys/metrics\" { capabilities = [\"read\"] }\n").unwrap();
    ok(&["policy", "write", "metrics", policy.to_str().unwrap()]);
    let reader =
        json(&ok(&["token", "create", "--policy", "metrics", "-o", "json"]))["token"].as_str().unwrap().to_string();
    let other =
        json(&ok(&["token", "create", "--policy", "default", "-o", "json"]))["token"].as_str().unwrap().to_string();
    let url = format!("{}/metrics", s.telemetry.as_ref().unwrap());
    let (code, body) = get(&url, &[]).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&url, &[("authorization", "Bearer not-a-token")]).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = get(&url, &[("x-vault-token", &other)]).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("keybridge_"), "{body}");
    let (code, body) = get(&url, &[("x-vault-token", &reader)]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("keybridge_sealed 0"), "{body}");
    let (code, _) = get(&url, &[("authorization", &format!("Bearer {reader}"))]).await;
    assert_eq!(code, 200);
    // Health needs no token either way.
    assert_eq!(health(&s, "").await.0, 200);
}
