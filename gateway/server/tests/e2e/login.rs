//! Kubernetes and JWT login through the real binary, with a TokenReview
//! test server (tests/servers) standing in for the Kubernetes API.

use keybridge_testservers::issuer::{Issuer, now};
use keybridge_testservers::kubernetes::ApiServer;
use serde_json::Value;

use crate::harness::{Server, stderr, stdout};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// The origin document's policy, as the policy crate's corpus keeps it.
const ORIGIN_POLICY: &str = include_str!("../../../policy/tests/corpus/origin.hcl");

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", stdout(o), stderr(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_as_in_the_origin_document() {
    let s = Server::dev();
    let t = s.root_token.as_deref();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Issuer::new(ISS, "k1");
    let api = ApiServer::start(&cluster.public_pem(), ISS, "reviewer-jwt").await;
    api.create_account("production", "app-sa", "uid-1");
    let pem = dir.path().join("sa.pub");
    std::fs::write(&pem, cluster.public_pem()).unwrap();
    let policy = dir.path().join("app-service.hcl");
    std::fs::write(&policy, ORIGIN_POLICY).unwrap();
    let log = dir.path().join("audit.log");

    let ok = |o: std::process::Output| assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    ok(s.cli(t, &["audit", "enable", "file", &format!("file_path={}", log.display())]));
    ok(s.cli(t, &["policy", "write", "app-service", policy.to_str().unwrap()]));
    ok(s.cli(t, &["auth", "enable", "kubernetes"]));
    ok(s.cli(
        t,
        &[
            "auth",
            "config",
            "write",
            "kubernetes",
            &format!("pem_keys=@{}", pem.display()),
            &format!("issuer={ISS}"),
            "audience=keybridge",
        ],
    ));
    let role = [
        "bound_service_account_names=app-sa",
        "bound_service_account_namespaces=production",
        "policies=app-service",
        "ttl=1h",
    ];
    let mut args = vec!["auth", "role", "write", "kubernetes", "app-service"];
    args.extend(role);
    ok(s.cli(t, &args));
    ok(s.cli(t, &["kv", "put", "secret/database/main", "password=db-pass"]));

    let jwt = dir.path().join("token");
    std::fs::write(&jwt, cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 600)).unwrap();
    let jwt_arg = format!("@{}", jwt.display());
    let o = s.cli(None, &["login", "kubernetes", "--role", "app-service", "--jwt", &jwt_arg, "-o", "json"]);
    let v = json(&o);
    let app = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["policies"], serde_json::json!(["app-service", "default"]));
    assert_eq!(v["metadata"]["service_account_namespace"], "production");
    let o = s.cli(Some(&app), &["kv", "get", "-o", "json", "secret/database/main"]);
    assert_eq!(json(&o)["data"]["password"], "db-pass");
    assert_eq!(s.cli(Some(&app), &["kv", "put", "secret/database/main", "password=x"]).status.code(), Some(4));
    let o = s.cli(Some(&app), &["token", "lookup", "-o", "json"]);
    let exp = humantime::parse_rfc3339(json(&o)["expire_time"].as_str().unwrap()).unwrap();
    let left = exp.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((3500..=3600).contains(&left), "the role's 1h TTL, got {left}s");

    // Refusals: one generic answer, the reason in the audit log.
    let cases = [
        (
            "wrong-ns",
            cluster.service_account_token("staging", "app-sa", "uid-1", "keybridge", 600),
            "namespace \\\"staging\\\"",
        ),
        (
            "wrong-sa",
            cluster.service_account_token("production", "web-sa", "uid-2", "keybridge", 600),
            "name \\\"web-sa\\\"",
        ),
        (
            "forged",
            Issuer::new(ISS, "k1").service_account_token("production", "app-sa", "uid-1", "keybridge", 600),
            "signature",
        ),
        ("expired", cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", -7200), "expired"),
    ];
    for (name, token, reason) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, token).unwrap();
        let o = s.cli(None, &["login", "kubernetes", "--role", "app-service", "--jwt", &format!("@{}", f.display())]);
        assert_eq!(o.status.code(), Some(4), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("login refused"), "{name}: {}", stderr(&o));
        assert!(!stderr(&o).contains("staging") && !stderr(&o).contains("expired"), "{name} leaks: {}", stderr(&o));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(reason), "{name}: no reason {reason} in the audit log");
    }

    // TokenReview: a deleted service account's token stops working.
    ok(s.cli(t, &["auth", "enable", "--path", "k8s-review", "kubernetes"]));
    ok(s.cli(
        t,
        &[
            "auth",
            "config",
            "write",
            "k8s-review",
            &format!("pem_keys=@{}", pem.display()),
            "token_review=true",
            &format!("kubernetes_host={}", api.url()),
            "token_reviewer_jwt=reviewer-jwt",
            "audience=keybridge",
        ],
    ));
    let mut args = vec!["auth", "role", "write", "k8s-review", "app-service"];
    args.extend(role);
    ok(s.cli(t, &args));
    let o = s.cli(t, &["auth", "config", "read", "-o", "json", "k8s-review"]);
    assert_eq!(json(&o)["token_reviewer_jwt"], "<set>", "the reviewer token is never shown");
    ok(s.cli(None, &["login", "k8s-review", "--role", "app-service", "--jwt", &jwt_arg]));
    let status = reqwest_delete(&format!("{}/api/v1/namespaces/production/serviceaccounts/app-sa", api.url())).await;
    assert_eq!(status, 200);
    let o = s.cli(None, &["login", "k8s-review", "--role", "app-service", "--jwt", &jwt_arg]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&log).unwrap().contains("serviceaccounts \\\"app-sa\\\" not found"));

    // Disabling the method revokes the tokens it issued.
    ok(s.cli(t, &["auth", "disable", "kubernetes"]));
    assert_eq!(s.cli(Some(&app), &["token", "lookup"]).status.code(), Some(4));
}

/// A DELETE with the reviewer's bearer token, over a plain TCP socket.
async fn reqwest_delete(url: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer reviewer-jwt\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn jwt_login_for_ci_tokens() {
    let s = Server::dev();
    let t = s.root_token.as_deref();
    let dir = tempfile::tempdir().unwrap();
    let ci = Issuer::new("https://token.actions.githubusercontent.com", "gh-1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, ci.jwks()).unwrap();
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    ok(s.cli(t, &["auth", "enable", "jwt", "--path", "github"]));
    ok(s.cli(
        t,
        &[
            "auth",
            "config",
            "write",
            "github",
            &format!("jwks=@{}", jwks.display()),
            "bound_issuer=https://token.actions.githubusercontent.com",
        ],
    ));
    ok(s.cli(
        t,
        &[
            "auth",
            "role",
            "write",
            "github",
            "deploy",
            "bound_audiences=https://github.com/acme",
            r#"bound_claims={"repository": "acme/app", "ref": "refs/heads/main"}"#,
            "user_claim=actor",
            "policies=deploy",
            "ttl=15m",
        ],
    ));
    let claims = |git_ref: &str| {
        serde_json::json!({
            "iss": "https://token.actions.githubusercontent.com", "aud": "https://github.com/acme",
            "sub": "repo:acme/app:ref:refs/heads/main", "repository": "acme/app", "ref": git_ref,
            "actor": "octocat", "iat": now(), "exp": now() + 300,
        })
    };
    let o = s.cli_stdin(
        None,
        &["login", "github", "--role", "deploy", "--jwt", "-", "-o", "json"],
        &ci.sign(&claims("refs/heads/main")),
    );
    let v = json(&o);
    assert_eq!(v["display_name"], "jwt-octocat");
    assert_eq!(v["policies"], serde_json::json!(["default", "deploy"]));
    let o =
        s.cli_stdin(None, &["login", "github", "--role", "deploy", "--jwt", "-"], &ci.sign(&claims("refs/heads/dev")));
    assert_eq!(o.status.code(), Some(4));
    // Bad settings: a clear error, nothing written.
    let o = s.cli(t, &["auth", "role", "write", "github", "broken", "bound_claims=[1]", "policies=x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("JSON object"), "{}", stderr(&o));
    assert_eq!(s.cli(t, &["auth", "role", "read", "github", "broken"]).status.code(), Some(3));
}
