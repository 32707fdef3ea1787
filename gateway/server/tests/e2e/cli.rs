//! The CLI walkthrough from the README, with its exit codes.

use serde_json::Value;

use crate::harness::{Server, stderr, stdout};

fn json(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn walkthrough_and_exit_codes() {
    let s = Server::dev();
    assert_eq!(s.root_token.as_deref(), Some("root-e2e"), "dev mode prints the chosen root token");
    let t = s.root_token.as_deref();

    let o = s.cli(t, &["kv", "put", "secret/team/app", "username=alice", "password=s3cr3t"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = s.cli(t, &["kv", "get", "-o", "json", "secret/team/app"]);
    let v = json(&o);
    assert_eq!(v["data"]["password"], "s3cr3t");
    assert_eq!(v["metadata"]["version"], 1);

    let o = s.cli(t, &["kv", "get", "--field", "username", "secret/team/app"]);
    assert_eq!(stdout(&o).trim(), "alice");

    // Table output shows the data section.
    let o = s.cli(t, &["kv", "get", "secret/team/app"]);
    assert!(stdout(&o).contains("====== Data ======") && stdout(&o).contains("alice"));

    // Values from a file and from stdin.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-file").unwrap();
    let o = s.cli(t, &["kv", "put", "secret/team/app", &format!("password=@{}", f.display()), "user=-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli_stdin(t, &["kv", "put", "secret/team/json", "-"], r#"{"a": "1", "n": 2}"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/team/json"]))["data"]["n"], "2");

    // Check-and-set: a stale version exits with the conflict code.
    let o = s.cli(t, &["kv", "put", "--cas", "1", "secret/team/app", "password=x"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("current version is 2"));
    let o = s.cli(t, &["kv", "put", "--cas", "2", "secret/team/app", "password=three"]);
    assert!(o.status.success());

    let o = s.cli(t, &["kv", "get", "--version", "1", "-o", "json", "secret/team/app"]);
    assert_eq!(json(&o)["data"]["password"], "s3cr3t");

    let o = s.cli(t, &["kv", "list", "-o", "json", "secret/"]);
    assert_eq!(json(&o), serde_json::json!(["team/"]));
    let o = s.cli(t, &["kv", "list", "secret/team"]);
    assert!(stdout(&o).contains("app") && stdout(&o).contains("json"));

    let o = s.cli(t, &["kv", "delete", "secret/team/app"]);
    assert!(o.status.success());
    let o = s.cli(t, &["kv", "get", "secret/team/app"]);
    assert_eq!(o.status.code(), Some(3), "deleted reads as not found");
    let o = s.cli(t, &["kv", "undelete", "--versions", "3", "secret/team/app"]);
    assert!(o.status.success());
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/team/app"]))["data"]["password"], "three");
    let o = s.cli(t, &["kv", "destroy", "--versions", "1", "secret/team/app"]);
    assert!(o.status.success());
    let o = s.cli(t, &["kv", "metadata", "get", "-o", "json", "secret/team/app"]);
    let m = json(&o);
    assert_eq!(m["versions"]["1"]["destroyed"], true);
    assert_eq!(m["current_version"], 3);
    let o = s.cli(t, &["kv", "metadata", "put", "--custom-metadata", "owner=team-a", "secret/team/app"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&s.cli(t, &["kv", "get", "-o", "json", "secret/team/app"]))["metadata"]["custom_metadata"]["owner"],
        "team-a"
    );
    let o = s.cli(t, &["kv", "metadata", "delete", "secret/team/app"]);
    assert!(o.status.success());
    assert_eq!(s.cli(t, &["kv", "metadata", "get", "secret/team/app"]).status.code(), Some(3));

    // Binary values.
    let bin = dir.path().join("blob");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255]).unwrap();
    assert!(s.cli(t, &["kv", "put", "--binary-file", bin.to_str().unwrap(), "secret/blob"]).status.success());
    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/blob"]))["binary_b64"], "AJ+Slv8=");

    // Mounts.
    let o = s.cli(t, &["mount", "enable", "--type", "local", "--description", "team b", "team-b/", "max_versions=2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(t, &["mount", "list", "-o", "json"]);
    let paths: Vec<String> =
        json(&o).as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, ["secret/", "team-b/"]);
    let o = s.cli(t, &["mount", "enable", "--type", "local", "team-b/nested"]);
    assert_eq!(o.status.code(), Some(2), "nested mounts are refused: {}", stderr(&o));
    let o = s.cli(t, &["mount", "enable", "--type", "local", "team-b"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(s.cli(t, &["mount", "tune", "team-b/", "max_versions=4"]).status.success());
    assert!(s.cli(t, &["mount", "disable", "team-b/"]).status.success());

    // Exit codes: usage, not found, denied, unreachable.
    assert_eq!(s.cli(t, &["kv", "put", "secret/x"]).status.code(), Some(2));
    assert_eq!(s.cli(t, &["kv", "nonsense"]).status.code(), Some(2));
    assert_eq!(s.cli(t, &["kv", "put", "secret//x", "a=b"]).status.code(), Some(2));
    assert_eq!(s.cli(t, &["kv", "get", "nomount/x"]).status.code(), Some(3));
    assert_eq!(s.cli(Some("wrong"), &["kv", "get", "secret/blob"]).status.code(), Some(4));
    assert_eq!(s.cli(None, &["kv", "get", "secret/blob"]).status.code(), Some(4));
    let o = std::process::Command::new(crate::harness::BIN)
        .args(["kv", "get", "--address", "http://127.0.0.1:1", "secret/x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));

    // Status exits 0 unsealed; sealing needs the token, then status exits 5.
    assert_eq!(s.cli(None, &["operator", "status"]).status.code(), Some(0));
    assert_eq!(s.cli(None, &["operator", "seal"]).status.code(), Some(4));
    assert!(s.cli(t, &["operator", "seal"]).status.success());
    assert_eq!(s.cli(None, &["operator", "status"]).status.code(), Some(5));
    assert_eq!(s.cli(t, &["kv", "get", "secret/blob"]).status.code(), Some(5));
}

#[test]
fn policies_and_tokens_from_the_cli() {
    let s = Server::dev();
    let root = s.root_token.as_deref();
    assert!(s.cli(root, &["kv", "put", "secret/team/app", "password=s3cr3t"]).status.success());
    assert!(s.cli(root, &["kv", "put", "secret/other", "k=v"]).status.success());

    let policy = "path \"secret/data/team/*\" {\n  capabilities = [\"read\"]\n}\n";
    let o = s.cli_stdin(root, &["policy", "write", "team-read", "-"], policy);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&s.cli(root, &["policy", "read", "team-read"])), policy);
    assert_eq!(
        json(&s.cli(root, &["policy", "list", "-o", "json"])),
        serde_json::json!(["default", "root", "team-read"])
    );
    // Malformed HCL: usage error with line and column.
    let o = s.cli_stdin(root, &["policy", "write", "broken", "-"], "path \"a\" {\n capabilities = [\"read\"\n");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("line"), "{}", stderr(&o));

    let o =
        s.cli(root, &["token", "create", "--policy", "team-read", "--ttl", "1h", "--display-name", "ci", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let created = json(&o);
    let t = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["policies"], serde_json::json!(["default", "team-read"]));
    let t = Some(t.as_str());

    assert_eq!(json(&s.cli(t, &["kv", "get", "-o", "json", "secret/team/app"]))["data"]["password"], "s3cr3t");
    let o = s.cli(t, &["kv", "get", "secret/other"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("read on secret/data/other is not granted"), "{}", stderr(&o));
    assert_eq!(s.cli(t, &["kv", "put", "secret/team/app", "password=x"]).status.code(), Some(4));
    assert_eq!(s.cli(t, &["mount", "list"]).status.code(), Some(4));
    assert_eq!(s.cli(t, &["policy", "write", "team-read", "-"]).status.code(), Some(4));
    assert_eq!(s.cli(t, &["token", "create", "--policy", "root"]).status.code(), Some(4));
    assert_eq!(json(&s.cli(t, &["token", "lookup", "-o", "json"]))["display_name"], "ci");
    assert_eq!(stdout(&s.cli(t, &["token", "capabilities", "secret/data/team/app"])).trim(), "read");

    // Revocation: a child of the token goes with it.
    let o = s.cli(t, &["token", "create", "--policy", "team-read", "-o", "json"]);
    assert_eq!(o.status.code(), Some(4), "team-read does not grant auth/token/create: {}", stderr(&o));
    let o = s.cli(root, &["token", "create", "--policy", "team-read", "-o", "json"]);
    let other = json(&o)["token"].as_str().unwrap().to_string();
    assert!(s.cli_stdin(root, &["token", "revoke"], &format!("{other}\n")).status.success());
    assert_eq!(s.cli(Some(&other), &["token", "lookup"]).status.code(), Some(4));
    // The caller's own token (KEYBRIDGE_TOKEN) is not the one revoked.
    assert!(s.cli(root, &["token", "lookup"]).status.success());
    let o = s.cli(root, &["token", "create", "--policy", "team-read", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let me = json(&o)["token"].as_str().unwrap().to_string();
    assert!(s.cli(Some(&me), &["token", "revoke", "--self"]).status.success());
    assert_eq!(s.cli(Some(&me), &["token", "lookup"]).status.code(), Some(4));

    // Accessors: look up and revoke a token without holding it.
    let o = s.cli(root, &["token", "create", "--display-name", "svc", "-o", "json"]);
    let (svc, acc) =
        (json(&o)["token"].as_str().unwrap().to_string(), json(&o)["accessor"].as_str().unwrap().to_string());
    assert_eq!(json(&s.cli(root, &["token", "lookup", "--accessor", &acc, "-o", "json"]))["display_name"], "svc");
    assert_eq!(json(&s.cli(root, &["token", "lookup", &svc, "-o", "json"]))["accessor"], acc);
    assert!(s.cli(root, &["token", "revoke", "--accessor", &acc]).status.success());
    assert_eq!(s.cli(Some(&svc), &["token", "lookup"]).status.code(), Some(4));
    assert_eq!(s.cli(root, &["token", "lookup", "--accessor", &acc]).status.code(), Some(3));

    // Renewal and use limits.
    let o = s.cli(root, &["token", "create", "--ttl", "1m", "--max-ttl", "2m", "--use-limit", "3", "-o", "json"]);
    let limited = json(&o)["token"].as_str().unwrap().to_string();
    assert_eq!(json(&o)["num_uses"], 3);
    assert!(s.cli(Some(&limited), &["token", "renew", "--self", "--increment", "10m"]).status.success());
    assert_eq!(json(&s.cli(Some(&limited), &["token", "lookup", "-o", "json"]))["num_uses"], 1);
    assert_eq!(json(&s.cli(Some(&limited), &["token", "lookup", "-o", "json"]))["num_uses"], 0);
    assert_eq!(s.cli(Some(&limited), &["token", "lookup"]).status.code(), Some(4), "three uses, then gone");
    let o = s.cli(root, &["token", "create", "--renewable", "false", "-o", "json"]);
    let fixed = json(&o)["token"].as_str().unwrap().to_string();
    let o = s.cli(root, &["token", "renew", &fixed]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));

    assert!(s.cli(root, &["policy", "delete", "team-read"]).status.success());
    assert_eq!(s.cli(t, &["kv", "get", "secret/team/app"]).status.code(), Some(4));
    assert_eq!(s.cli(root, &["policy", "delete", "default"]).status.code(), Some(2));
}

#[test]
fn policy_lint_runs_offline_and_flags_the_pki_subtlety() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/corpus");
    let run = |args: &[&str]| {
        std::process::Command::new(crate::harness::BIN)
            .args(args)
            .env("KEYBRIDGE_ADDR", "http://127.0.0.1:1")
            .output()
            .unwrap()
    };
    let origin = corpus.join("origin.hcl");
    let o = run(&["policy", "lint", "-o", "json", origin.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let findings = json(&o);
    let paths: Vec<&str> = findings.as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["database/creds/app-readonly", "pki/issue/app-tls"]);
    let broken = corpus.join("truncated.hcl");
    let o = run(&["policy", "lint", broken.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("line 2, column 25"), "{}", stdout(&o));
}

/// The README shows this output for the origin document's module and policy.
pub const ORIGIN_LINT_OUTPUT: &str = r#"app-service.hcl:4 path "database/creds/app-readonly": warning: grants create without update: this path has no existence check, so every write to it is an update, and this rule grants no writes (Vault behaves the same)
app-service.hcl:7 path "pki/issue/app-tls": warning: grants create without update: this path has no existence check, so every write to it is an update, and this rule grants no writes (Vault behaves the same)
app-service.hcl:1 path "secret/data/database/*": deny: all dynamic secret roles must define a TTL
app-service.hcl:4 path "database/creds/app-readonly": deny: all dynamic secret roles must define a TTL
app-service.hcl:7 path "pki/issue/app-tls": deny: all dynamic secret roles must define a TTL
app-service.hcl:15 path "*": deny: all dynamic secret roles must define a TTL
app-service-role.json role "app-service": deny: all dynamic secret roles must define a TTL
"#;

#[test]
fn policy_lint_with_the_origin_rego_module() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(here.join("rego/origin.rego"), dir.path().join("rules.rego")).unwrap();
    std::fs::copy(here.join("corpus/origin.hcl"), dir.path().join("app-service.hcl")).unwrap();
    std::fs::write(
        dir.path().join("app-service-role.json"),
        r#"{"method": "kubernetes", "name": "app-service", "settings": {"bound_service_account_names": "app-sa", "bound_service_account_namespaces": "production", "policies": "app-service"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("with-ttl.json"),
        r#"{"method": "kubernetes", "name": "app-service", "settings": {"bound_service_account_names": "app-sa", "bound_service_account_namespaces": "production", "policies": "app-service", "ttl": "1h"}}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::harness::BIN).current_dir(dir.path()).args(args).output().unwrap()
    };
    let o =
        run(&["policy", "lint", "--rego", "rules.rego", "app-service.hcl", "app-service-role.json", "with-ttl.json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), ORIGIN_LINT_OUTPUT);
    // A v1 module scoped by kind passes the same files but the role.
    std::fs::copy(here.join("rego/scoped-v1.rego"), dir.path().join("scoped.rego")).unwrap();
    let o = run(&["policy", "lint", "--rego", "scoped.rego", "-o", "json", "app-service.hcl", "app-service-role.json"]);
    assert_eq!(o.status.code(), Some(1));
    let denies: Vec<Value> = json(&o).as_array().unwrap().iter().filter(|f| f["level"] == "deny").cloned().collect();
    assert_eq!(denies.len(), 1);
    assert_eq!(denies[0]["message"], "role app-service must define a TTL");
    // Malformed Rego: a usage error with line and column.
    std::fs::write(dir.path().join("broken.rego"), "package x\ndeny[msg] {\n  msg := \n}\n").unwrap();
    let o = run(&["policy", "lint", "--rego", "broken.rego", "app-service.hcl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("broken.rego:2:"), "{}", stderr(&o));
}

#[test]
fn the_server_enforces_a_configured_rego_check() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/rego/scoped-v1.rego");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_top(dir.path(), &format!("policy_check_rego = \"{}\"", here.display()));
    let (root, _) = crate::harness::init_unseal(&s);
    let t = Some(root.as_str());
    let f = dir.path().join("p.hcl");
    std::fs::write(&f, "path \"secret/*\" { capabilities = [\"read\", \"sudo\"] }").unwrap();
    let o = s.cli(t, &["policy", "write", "ops", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused by the configured policy check: path \"secret/*\": secret/*: sudo is prohibited"),
        "{}",
        stderr(&o)
    );
    assert_eq!(s.cli(t, &["policy", "read", "ops"]).status.code(), Some(3), "nothing was written");
    std::fs::write(&f, "path \"secret/*\" { capabilities = [\"read\"] }").unwrap();
    assert!(s.cli(t, &["policy", "write", "ops", f.to_str().unwrap()]).status.success());
    assert!(s.cli(t, &["auth", "enable", "kubernetes"]).status.success());
    let role = [
        "auth",
        "role",
        "write",
        "kubernetes",
        "r",
        "bound_service_account_names=a",
        "bound_service_account_namespaces=b",
        "policies=ops",
    ];
    let o = s.cli(t, &role);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("role r must define a TTL"), "{}", stderr(&o));
    let mut with_ttl = role.to_vec();
    with_ttl.push("ttl=1h");
    assert!(s.cli(t, &with_ttl).status.success());
}

/// `keybridge kv list --recursive secret/ | head -1`: the reader closes
/// the pipe after one line. The CLI ends quietly, killed by SIGPIPE as
/// other Unix tools are (the shell reports 141), with no panic and no
/// backtrace, in table and JSON output alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_cli_quietly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let s = Server::dev();
    let mut c = s.secrets().await;
    // Enough names (about 80 KB) to outgrow a pipe's 64 KiB buffer.
    for i in 0..2500 {
        let put = keybridge_proto::v1::PutRequest {
            path: format!("secret/pipe/{i:05}-{}", "x".repeat(24)),
            value: crate::harness::fields(&[("k", "v")]),
            cas: None,
        };
        c.put(crate::harness::authed("root-e2e", put)).await.unwrap();
    }
    for args in [&["kv", "list", "--recursive", "secret/"][..], &["kv", "list", "--recursive", "-o", "json", "secret/"]]
    {
        let mut child = std::process::Command::new(crate::harness::BIN)
            .args(args)
            .env("KEYBRIDGE_ADDR", &s.addr)
            .env("KEYBRIDGE_TOKEN", "root-e2e")
            .env_remove("KEYBRIDGE_CACERT")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(!first.is_empty(), "{args:?}: no output");
        drop(out);
        let o = crate::harness::blocking(|| child.wait_with_output().unwrap());
        assert_eq!(o.status.signal(), Some(libc::SIGPIPE), "{args:?}: {:?}, stderr: {}", o.status, stderr(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
}

/// A server the CLI cannot talk to is named by its likely cause, and every
/// such failure exits 5: nothing listening, an HTTP/1 server, TLS against a
/// plaintext listener. A refusal says "permission denied" once.
#[test]
fn transport_errors_name_the_cause_and_exit_5() {
    let s = Server::dev();
    let run = |addr: &str, args: &[&str]| {
        std::process::Command::new(crate::harness::BIN)
            .args(args)
            .env("KEYBRIDGE_ADDR", addr)
            .env("KEYBRIDGE_TOKEN", "root-e2e")
            .env_remove("KEYBRIDGE_CACERT")
            .output()
            .unwrap()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // An HTTP/1 server: answers anything with a 400, as web servers do to an HTTP/2 preface.
    let http1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http1_addr = http1.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in http1.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            // Lingers as servers do before closing.
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    let tls_to_plain = s.addr.replace("http://", "https://");
    let tls_dir = tempfile::tempdir().unwrap();
    let tls = Server::with_config(tls_dir.path(), true, 0);
    let plain_to_tls = tls.addr.replace("https://", "http://");
    // How a peer hangs up varies with timing (a reset, a broken pipe, or the
    // request cancelled as the connection closes); each way names the cause.
    for (addr, causes) in [
        (format!("http://127.0.0.1:{closed}"), &["connection refused: nothing listens there"][..]),
        (format!("http://{http1_addr}"), &["an HTTP/1 server or proxy answered", "is this the gateway's gRPC address"]),
        (tls_to_plain, &["the server answered without TLS; use http://"]),
        (plain_to_tls, &["TLS-only server: use https://", "for TLS use https://"]),
    ] {
        let o = run(&addr, &["kv", "get", "secret/x"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(5), "{addr}: {err}");
        assert!(causes.iter().any(|c| err.contains(c)), "{addr}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    let tok = s.cli(Some("root-e2e"), &["token", "create", "--policy", "default", "-o", "json"]);
    let tok: serde_json::Value = serde_json::from_slice(&tok.stdout).unwrap();
    let o = s.cli(tok["token"].as_str(), &["kv", "get", "secret/x"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(stderr(&o).trim_end(), "Error: permission denied: read on secret/data/x is not granted");
}

/// Vault habits work (`keybridge status`, `-format=json`, `-field=NAME`); a
/// binary secret is written back to a file (0600) or stdout byte for byte;
/// the completion script is valid bash.
#[test]
fn vault_habits_binary_files_and_completion() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::dev();
    let t = Some("root-e2e");
    let o = s.cli(t, &["status"]);
    assert!(o.status.success() && stdout(&o).contains("Sealed             false"), "{}{}", stdout(&o), stderr(&o));
    assert!(s.cli(t, &["kv", "put", "secret/app", "password=s3cr3t"]).status.success());
    let o = s.cli(t, &["kv", "get", "-field=password", "secret/app"]);
    assert_eq!(stdout(&o).trim(), "s3cr3t", "{}", stderr(&o));
    let o = s.cli(t, &["kv", "get", "-format=json", "secret/app"]);
    assert_eq!(json(&o)["data"]["password"], "s3cr3t");

    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0x0a]).collect();
    let src = dir.path().join("in.p12");
    std::fs::write(&src, &bytes).unwrap();
    assert!(s.cli(t, &["kv", "put", "--binary-file", src.to_str().unwrap(), "secret/ks"]).status.success());
    let out = dir.path().join("out.p12");
    let o = s.cli(t, &["kv", "get", "--binary-file", out.to_str().unwrap(), "secret/ks"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let o = s.cli(t, &["kv", "get", "--binary-file", "-", "secret/ks"]);
    assert_eq!(o.stdout, bytes);
    // An existing file readable by all, and a symlink planted at the name:
    // the secret goes to a new 0600 file in their place, never through them.
    let shared = dir.path().join("shared.p12");
    std::fs::write(&shared, b"old").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(s.cli(t, &["kv", "get", "--binary-file", shared.to_str().unwrap(), "secret/ks"]).status.success());
    assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777, 0o600);
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"untouched").unwrap();
    let link = dir.path().join("link.p12");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(s.cli(t, &["kv", "get", "--binary-file", link.to_str().unwrap(), "secret/ks"]).status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
    assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    // The JSON shape of a binary value (documented in docs/CLI.md).
    let j = json(&s.cli(t, &["kv", "get", "-o", "json", "secret/ks"]));
    assert!(j["data"].is_null() && j["binary_b64"].is_string() && j["metadata"]["version"] == 1, "{j}");
    let o = s.cli(t, &["kv", "get", "--binary-file", out.to_str().unwrap(), "secret/app"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("needs a binary secret"), "{}", stderr(&o));

    let o = s.cli(None, &["completion", "bash"]);
    assert!(o.status.success());
    let script = dir.path().join("kb.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(stdout(&o).contains("keybridge__subcmd__kv__subcmd__get"), "completes subcommands");
}

/// `kv metadata put` without `--custom-metadata` leaves the custom
/// metadata as it is; `--clear-custom-metadata` removes it.
#[test]
fn metadata_put_keeps_custom_metadata_unless_told() {
    let s = Server::dev();
    let t = Some("root-e2e");
    assert!(s.cli(t, &["kv", "put", "secret/app", "k=v"]).status.success());
    let put = |args: &[&str]| {
        let mut a = vec!["kv", "metadata", "put", "-o", "json"];
        a.extend_from_slice(args);
        a.push("secret/app");
        let o = s.cli(t, &a);
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let m = put(&["--custom-metadata", "owner=team-a"]);
    assert_eq!(m["custom_metadata"]["owner"], "team-a", "{m}");
    let m = put(&["--max-versions", "5"]);
    assert_eq!((m["custom_metadata"]["owner"].as_str(), m["max_versions"].as_u64()), (Some("team-a"), Some(5)), "{m}");
    let m = put(&["--clear-custom-metadata"]);
    assert_eq!(m["custom_metadata"], serde_json::json!({}), "{m}");
}
