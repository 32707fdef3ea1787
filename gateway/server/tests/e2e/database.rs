//! The built-in database engine against a real PostgreSQL (a throwaway
//! cluster from the machine's binaries, TLS with a test CA): the origin
//! document's role as written, an admin that is not a superuser (CREATEROLE,
//! as the document's `vault_admin`), and a revocation that leaves nothing
//! behind: the user's session ended, a grant made out of band and a table
//! it owns in a second database dropped, the user gone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keybridge_testservers::postgres::{PASSWORD, Postgres, USER};
use serde_json::Value;

use crate::harness::{Server, blocking, json, stderr};

/// Runs `sql` in `db` as `user` over TCP; the output, or the error text.
fn sql(pg: &Postgres, db: &str, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let port = pg_port(pg);
    let o = Command::new("psql")
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "require")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", user, "-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn pg_port(pg: &Postgres) -> String {
    pg.url("h", "disable").split(':').nth(3).unwrap().split('/').next().unwrap().to_string()
}

fn admin(pg: &Postgres, db: &str, statement: &str) -> String {
    sql(pg, db, USER, PASSWORD, statement).unwrap_or_else(|e| panic!("{statement}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_credentials_log_in_read_only_and_revoke_without_leaving_anything() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    admin(&pg, "postgres", "CREATE DATABASE app");
    admin(&pg, "postgres", "CREATE DATABASE other");
    admin(
        &pg,
        "app",
        "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2); ALTER TABLE items OWNER TO vault_admin",
    );

    let s = Server::dev();
    let t = Some("root-e2e");
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["mount", "enable", "--type", "database", "database/"]);
    let url = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
        pg_port(&pg),
        pg.ca_file().display()
    );
    // A wrong password is refused before anything is saved.
    let o = s.cli(
        t,
        &[
            "write",
            "database/config/app",
            "plugin_name=postgresql",
            &url,
            "username=vault_admin",
            "password=wrong",
            "allowed_roles=app-readonly",
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("password authentication failed"), "{}", stderr(&o));
    assert!(!s.cli(t, &["read", "database/config/app"]).status.success(), "nothing saved");
    // The CA file is read with a bound: a device or a huge file is refused.
    let zero = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/app?sslmode=verify-full&sslrootcert=/dev/zero",
        pg_port(&pg)
    );
    let o = s
        .cli(t, &["write", "database/config/z", "plugin_name=postgresql", &zero, "username=vault_admin", "password=x"]);
    assert!(!o.status.success() && stderr(&o).contains("regular file"), "{}", stderr(&o));
    // Credentials only through the placeholders, and no host parameters.
    let literal =
        format!("connection_url=postgresql://vault_admin:admin-pw-1@localhost:{}/app?sslmode=disable", pg_port(&pg));
    let hosted = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/app?sslmode=disable&host=/tmp",
        pg_port(&pg)
    );
    for (u, why) in [(&literal, "only there"), (&hosted, "\"host\" is not taken")] {
        let o = s.cli(
            t,
            &["write", "database/config/x", "plugin_name=postgresql", u, "username=vault_admin", "password=admin-pw-1"],
        );
        assert!(!o.status.success() && stderr(&o).contains(why), "{}", stderr(&o));
    }
    ok(&[
        "write",
        "database/config/app",
        "plugin_name=postgresql",
        &url,
        "username=vault_admin",
        "password=admin-pw-1",
        "allowed_roles=app-readonly",
    ]);
    // The stored password goes only where it went: a new URL takes it again.
    let elsewhere = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/app?sslmode=disable",
        pg_port(&pg)
    );
    let o = s.cli(t, &["write", "database/config/app", &elsewhere]);
    assert!(!o.status.success() && stderr(&o).contains("give the password again"), "{}", stderr(&o));
    let config = json(&ok(&["read", "database/config/app", "-o", "json"]));
    assert_eq!(config["data"]["password"], "<redacted>", "{config}");
    assert!(!config.to_string().contains("admin-pw-1"));

    // The origin document's role, as written.
    ok(&[
        "write",
        "database/roles/app-readonly",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
        "default_ttl=24h",
        "max_ttl=72h",
    ]);
    let creds = json(&ok(&["read", "database/creds/app-readonly", "-o", "json"]));
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let password = creds["data"]["password"].as_str().unwrap().to_string();
    let lease = creds["lease_id"].as_str().unwrap().to_string();
    // The time left when the answer was made: a second may have passed.
    let ttl = creds["lease_duration"].as_u64().unwrap_or(0);
    assert!((86_390..=86_400).contains(&ttl), "{creds}");
    assert_eq!(sql(&pg, "app", &user, &password, "SELECT count(*) FROM items").unwrap(), "2");
    let e = sql(&pg, "app", &user, &password, "INSERT INTO items VALUES (3)").unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    let valid = admin(
        &pg,
        "postgres",
        &format!("SELECT rolvaliduntil > now() + interval '23 hours' FROM pg_roles WHERE rolname = '{user}'"),
    );
    assert_eq!(valid, "t");
    // Renewal moves VALID UNTIL, never past max_ttl.
    let renewed = json(&ok(&["lease", "renew", &lease, "--increment", "100h", "-o", "json"]));
    assert!(renewed["lease_duration"].as_u64().unwrap() <= 72 * 3600, "{renewed}");
    let valid = admin(
        &pg,
        "postgres",
        &format!(
            "SELECT rolvaliduntil > now() + interval '71 hours' AND rolvaliduntil <= now() + interval '72 hours' FROM pg_roles WHERE rolname = '{user}'"
        ),
    );
    assert_eq!(valid, "t");

    // Out of band: an extra grant, and a table the user owns in another
    // database.
    admin(&pg, "app", &format!("GRANT INSERT ON items TO \"{user}\""));
    admin(&pg, "other", &format!("CREATE TABLE owned (x int); ALTER TABLE owned OWNER TO \"{user}\""));
    // A session that is open when the lease is revoked.
    let port = pg_port(&pg);
    let mut session = Command::new("psql")
        .env("PGPASSWORD", &password)
        .env("PGSSLMODE", "require")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", &user, "-d", "app", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")) != "1" {
        assert!(Instant::now() < deadline, "the session did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    ok(&["lease", "revoke", &lease]);
    let ended = blocking(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = session.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = session.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(ended.is_some_and(|s| !s.success()), "the open session survived the revocation");
    assert_eq!(admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'")), "0");
    // What it owned went with it (handed to the admin, a function it left
    // could run with the admin's rights).
    assert_eq!(admin(&pg, "other", "SELECT count(*) FROM pg_tables WHERE tablename = 'owned'"), "0");
    let e = sql(&pg, "app", &user, &password, "SELECT 1").unwrap_err();
    assert!(e.contains("password authentication failed") || e.contains("does not exist"), "{e}");
    // Revoked once: nothing is left to revoke, and the lease is gone.
    assert!(!s.cli(t, &["lease", "lookup", &lease]).status.success());

    // A role whose statement quotes the password wrongly fails without
    // showing it: PostgreSQL's error quotes the token, the gateway does not.
    ok(&["write", "database/config/app", "allowed_roles=app-readonly,broken"]);
    ok(&[
        "write",
        "database/roles/broken",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD {{password}};",
    ]);
    let o = s.cli(t, &["read", "database/creds/broken"]);
    let e = stderr(&o);
    // (A password that starts with a digit is "trailing junk after numeric
    // literal" to PostgreSQL 15, not a syntax error.)
    assert!(
        !o.status.success() && (e.contains("syntax error") || e.contains("trailing junk")) && e.contains("<redacted>"),
        "{e}"
    );
    assert_eq!(admin(&pg, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%broken%'"), "0");

    // A role the connection does not allow is refused.
    ok(&["write", "database/roles/other-role", "db_name=app", "creation_statements=CREATE ROLE \"{{name}}\" LOGIN;"]);
    let o = s.cli(t, &["read", "database/creds/other-role"]);
    assert!(!o.status.success() && stderr(&o).contains("allowed_roles"), "{}", stderr(&o));
    let listed: Value = json(&ok(&["list", "database/roles", "-o", "json"]));
    assert!(listed.to_string().contains("app-readonly"), "{listed}");

    // Expiry revokes as revoke does: a credential of a short role is gone
    // once its lease runs out, without anyone asking.
    ok(&["write", "database/config/app", "allowed_roles=app-readonly,short,broken"]);
    ok(&[
        "write",
        "database/roles/short",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        "default_ttl=2s",
        "max_ttl=4s",
    ]);
    let creds = json(&ok(&["read", "database/creds/short", "-o", "json"]));
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    assert_eq!(admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'")), "1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'")) != "0" {
        assert!(Instant::now() < deadline, "the expired credential's user is still there");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A prefix revoke takes every credential of a role.
    let mut users = Vec::new();
    for _ in 0..3 {
        let c = json(&ok(&["read", "database/creds/app-readonly", "-o", "json"]));
        users.push(c["data"]["username"].as_str().unwrap().to_string());
    }
    ok(&["lease", "revoke", "--prefix", "database/creds/app-readonly"]);
    for u in &users {
        assert_eq!(admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{u}'")), "0", "{u}");
    }
}

/// rotate-root with the process killed after each step: after a restart
/// the stored password works (the rotation is finished, or it never reached
/// the database), and a superuser is rotated only when allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_survives_a_crash_at_every_step() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_env(dir.path(), &[]);
    let (root, key) = crate::harness::init_unseal(&s);
    let t = Some(root.as_str());
    let ok = |s: &Server, args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&s, &["mount", "enable", "--type", "database", "database/"]);
    let url = |user_part: &str| {
        format!(
            "connection_url=postgresql://{user_part}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg_port(&pg),
            pg.ca_file().display()
        )
    };
    let templated = url("{{username}}:{{password}}");
    ok(
        &s,
        &[
            "write",
            "database/config/app",
            "plugin_name=postgresql",
            &templated,
            "username=vault_admin",
            "password=admin-pw-1",
            "allowed_roles=*",
        ],
    );
    ok(
        &s,
        &[
            "write",
            "database/roles/r",
            "db_name=app",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';",
        ],
    );
    drop(s);

    for (step, reaches_db) in [("wal-written", false), ("altered", true), ("config-written", true)] {
        let s = Server::with_config_env(dir.path(), &[("KEYBRIDGE_FAULT_ROOT_ROTATION", step)]);
        assert!(s.cli(None, &["operator", "unseal", &key]).status.success());
        // A password known here before the step.
        let known = format!("known-before-{step}");
        admin(&pg, "postgres", &format!("ALTER ROLE vault_admin PASSWORD '{known}'"));
        ok(&s, &["write", "database/config/app", &format!("password={known}")]);
        let o = s.cli(t, &["write", "database/rotate-root/app"]);
        assert!(!o.status.success(), "{step}: the fault did not stop the server");
        drop(s);
        let s = Server::with_config_env(dir.path(), &[]);
        assert!(s.cli(None, &["operator", "unseal", &key]).status.success());
        // The stored password works: a credential can be issued.
        let creds = json(&ok(&s, &["read", "database/creds/r", "-o", "json"]));
        assert!(creds["data"]["username"].as_str().is_some(), "{step}: {creds}");
        let known_works = sql(&pg, "postgres", "vault_admin", &known, "SELECT 1").is_ok();
        assert_eq!(known_works, !reaches_db, "{step}: the password from before works: {known_works}");
        // The next rotation runs from wherever this one stopped.
        ok(&s, &["write", "database/rotate-root/app"]);
        assert!(sql(&pg, "postgres", "vault_admin", &known, "SELECT 1").is_err(), "{step}: rotated, the old one works");
        ok(&s, &["read", "database/creds/r"]);
        drop(s);
    }

    // A superuser is not rotated unless allowed.
    let s = Server::with_config_env(dir.path(), &[]);
    assert!(s.cli(None, &["operator", "unseal", &key]).status.success());
    ok(
        &s,
        &[
            "write",
            "database/config/su",
            "plugin_name=postgresql",
            &templated,
            &format!("username={USER}"),
            &format!("password={PASSWORD}"),
            "allowed_roles=*",
        ],
    );
    let o = s.cli(t, &["write", "database/rotate-root/su"]);
    assert!(!o.status.success() && stderr(&o).contains("allow_superuser_rotation"), "{}", stderr(&o));
    assert!(sql(&pg, "postgres", USER, PASSWORD, "SELECT 1").is_ok(), "the superuser's password was not changed");
}

/// Static roles: the existing user's password is Keybridge's from the
/// start, rotates on request and on its period; and both kinds of
/// credential feed a coordinated rotation of a secret (`rotate --engine`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_roles_rotate_on_request_and_on_their_period_and_feed_the_reconciler() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    admin(&pg, "postgres", "CREATE ROLE app_static WITH LOGIN PASSWORD 'initial-pw'");
    admin(&pg, "postgres", "CREATE ROLE app_sched WITH LOGIN PASSWORD 'initial-pw'");
    let s = Server::dev();
    let t = Some("root-e2e");
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["mount", "enable", "--type", "database", "database/"]);
    let url = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg_port(&pg),
        pg.ca_file().display()
    );
    ok(&[
        "write",
        "database/config/app",
        "plugin_name=postgresql",
        &url,
        "username=vault_admin",
        "password=admin-pw-1",
        "allowed_roles=static1,static2,dyn",
    ]);
    // Not the connection's own admin, nor a superuser: a static role's
    // writer would take those accounts over.
    for (user, why) in [("vault_admin", "own admin"), ("keybridge", "superuser"), ("nobody", "no user")] {
        let o = s.cli(
            t,
            &[
                "write",
                "database/static-roles/static1",
                "db_name=app",
                &format!("username={user}"),
                "rotation_period=1h",
            ],
        );
        assert!(!o.status.success() && stderr(&o).contains(why), "{user}: {}", stderr(&o));
    }
    assert!(sql(&pg, "postgres", "vault_admin", "admin-pw-1", "SELECT 1").is_ok());
    // `update` alone tunes an existing static role; making one takes
    // `create` (the existence check covers static roles).
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("tune.hcl");
    std::fs::write(&policy, "path \"database/static-roles/*\" { capabilities = [\"update\"] }\n").unwrap();
    ok(&["policy", "write", "tune", policy.to_str().unwrap()]);
    let tuner =
        json(&ok(&["token", "create", "--policy", "tune", "-o", "json"]))["token"].as_str().unwrap().to_string();
    let o = s.cli(
        Some(&tuner),
        &["write", "database/static-roles/static1", "db_name=app", "username=app_static", "rotation_period=6s"],
    );
    assert!(!o.status.success() && stderr(&o).contains("permission denied"), "{}", stderr(&o));
    ok(&["write", "database/static-roles/static1", "db_name=app", "username=app_static", "rotation_period=6s"]);
    let o = s.cli(Some(&tuner), &["write", "database/static-roles/static1", "rotation_period=6s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for bad in ["rotation_schedule=every day", "rotation_schedule=61 * * * *"] {
        let o = s.cli(t, &["write", "database/static-roles/static2", "db_name=app", "username=app_sched", bad]);
        assert!(!o.status.success() && stderr(&o).contains("rotation_schedule"), "{bad}: {}", stderr(&o));
    }
    let o = s.cli(
        t,
        &[
            "write",
            "database/static-roles/static2",
            "db_name=app",
            "username=app_sched",
            "rotation_period=1h",
            "rotation_schedule=0 3 * * SUN",
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("not both"), "{}", stderr(&o));
    ok(&[
        "write",
        "database/static-roles/static2",
        "db_name=app",
        "username=app_sched",
        "rotation_schedule=*/5 * * * *",
    ]);
    let sched = json(&ok(&["read", "database/static-creds/static2", "-o", "json"]));
    assert_eq!(sched["data"]["rotation_schedule"], "*/5 * * * *", "{sched}");
    assert!(sched["data"]["ttl"].as_str().unwrap().parse::<u64>().unwrap() <= 300, "{sched}");
    assert!(sql(&pg, "postgres", "app_sched", sched["data"]["password"].as_str().unwrap(), "SELECT 1").is_ok());
    assert!(sql(&pg, "postgres", "app_static", "initial-pw", "SELECT 1").is_err(), "the initial password still works");
    let read = || json(&ok(&["read", "database/static-creds/static1", "-o", "json"]));
    let p1 = read()["data"]["password"].as_str().unwrap().to_string();
    assert!(sql(&pg, "postgres", "app_static", &p1, "SELECT 1").is_ok());
    ok(&["write", "database/rotate-role/static1"]);
    let p2 = read()["data"]["password"].as_str().unwrap().to_string();
    assert_ne!(p1, p2);
    assert!(sql(&pg, "postgres", "app_static", &p2, "SELECT 1").is_ok());
    assert!(sql(&pg, "postgres", "app_static", &p1, "SELECT 1").is_err());
    // On its period, with nobody asking.
    let deadline = Instant::now() + Duration::from_secs(30);
    let p3 = loop {
        let p = read()["data"]["password"].as_str().unwrap().to_string();
        if p != p2 {
            break p;
        }
        assert!(Instant::now() < deadline, "the period passed and the password did not rotate");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(sql(&pg, "postgres", "app_static", &p3, "SELECT 1").is_ok());

    // A coordinated rotation of a secret whose new value the engine issues:
    // a static role's password, and a dynamic credential.
    ok(&["kv", "put", "secret/app/db", "username=x", "password=y"]);
    let o =
        s.cli(t, &["rotate", "secret/app/db", "--engine", "database/static-creds/static1", "--grace", "0s", "--wait"]);
    assert!(!o.status.success(), "reading a static role's password must not be enough to rotate it");
    ok(&["rotate", "secret/app/db", "--engine", "database/rotate-role/static1", "--grace", "0s", "--wait"]);
    let v = json(&ok(&["kv", "get", "-o", "json", "secret/app/db"]));
    let p4 = v["data"]["password"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["username"], "app_static", "{v}");
    assert!(sql(&pg, "postgres", "app_static", &p4, "SELECT 1").is_ok());
    ok(&[
        "write",
        "database/roles/dyn",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';",
    ]);
    ok(&["rotate", "secret/app/db", "--engine", "database/creds/dyn", "--grace", "0s", "--wait"]);
    let v = json(&ok(&["kv", "get", "-o", "json", "secret/app/db"]));
    let (u, p) =
        (v["data"]["username"].as_str().unwrap().to_string(), v["data"]["password"].as_str().unwrap().to_string());
    assert!(u.starts_with("v-"), "{v}");
    assert!(sql(&pg, "postgres", &u, &p, "SELECT 1").is_ok(), "the rotated-in credential logs in");
}

/// With `allowed_endpoint_hosts`, a connection points only at those hosts
/// (the gateway would otherwise connect wherever a config writer says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_point_only_at_allowed_endpoint_hosts() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_top(dir.path(), "allowed_endpoint_hosts = [\"localhost\"]");
    let (root, _) = crate::harness::init_unseal(&s);
    let t = Some(root.as_str());
    assert!(s.cli(t, &["mount", "enable", "--type", "database", "database/"]).status.success());
    let url = |host: &str| {
        format!(
            "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg_port(&pg),
            pg.ca_file().display()
        )
    };
    let o = s.cli(
        t,
        &[
            "write",
            "database/config/app",
            "plugin_name=postgresql",
            &url("127.0.0.1"),
            "username=vault_admin",
            "password=admin-pw-1",
        ],
    );
    assert!(!o.status.success() && stderr(&o).contains("allowed_endpoint_hosts"), "{}", stderr(&o));
    let o = s.cli(
        t,
        &[
            "write",
            "database/config/app",
            "plugin_name=postgresql",
            &url("LocalHost"),
            "username=vault_admin",
            "password=admin-pw-1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `username_template` (Vault's Go template): a template that does not
/// parse is refused when written; the issued user has the template's
/// shape and logs in; clearing it brings back the engine's own names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_template_names_the_issued_users() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    let s = Server::dev();
    let t = Some("root-e2e");
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["mount", "enable", "--type", "database", "database/"]);
    let url = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg_port(&pg),
        pg.ca_file().display()
    );
    let config = |template: &str| {
        s.cli(
            t,
            &[
                "write",
                "database/config/app",
                "plugin_name=postgresql",
                &url,
                "username=vault_admin",
                "password=admin-pw-1",
                "allowed_roles=*",
                &format!("username_template={template}"),
            ],
        )
    };
    let o = config("{{ nope }}");
    assert!(
        !o.status.success() && stderr(&o).contains("username_template: ") && stderr(&o).contains("nope"),
        "{}",
        stderr(&o)
    );
    let template = r#"{{ printf "kb_%s_%s_%s" (.DisplayName | truncate 4) (.RoleName | replace "-" "_") (random 12 | lowercase) }}"#;
    let o = config(template);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = json(&ok(&["read", "database/config/app", "-o", "json"]));
    assert_eq!(read["data"]["username_template"], template, "{read}");
    ok(&[
        "write",
        "database/roles/app-ro",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    ]);
    let creds = json(&ok(&["read", "database/creds/app-ro", "-o", "json"]));
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let password = creds["data"]["password"].as_str().unwrap().to_string();
    // The dev root token's display name is "root".
    let random = user.strip_prefix("kb_root_app_ro_").unwrap_or_else(|| panic!("{user}"));
    assert!(random.len() == 12 && random.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{user}");
    assert_eq!(sql(&pg, "postgres", &user, &password, "SELECT current_user").unwrap(), user);
    ok(&["lease", "revoke", creds["lease_id"].as_str().unwrap()]);
    assert_eq!(admin(&pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'")), "0");

    // A template that gives one name every time is refused when written.
    let o = config("{{ .RoleName }}");
    assert!(!o.status.success() && stderr(&o).contains("gives the same name"), "{}", stderr(&o));
    // One that gets past that check (random for the sample caller only)
    // and names a user that exists: refused before any statement runs, and
    // the rollback statements never touch the existing user.
    admin(&pg, "postgres", "CREATE ROLE kb_victim WITH LOGIN PASSWORD 'victim-pw-1'");
    let o = config(r#"{{ if eq .DisplayName "token" }}{{ random 8 }}{{ else }}kb_victim{{ end }}"#);
    assert!(o.status.success(), "{}", stderr(&o));
    ok(&["write", "database/roles/app-ro", "rollback_statements=DROP ROLE IF EXISTS \"{{name}}\";"]);
    let o = s.cli(t, &["read", "database/creds/app-ro"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("user kb_victim exists already")
            && stderr(&o).contains("must make unique names"),
        "{}",
        stderr(&o)
    );
    assert_eq!(sql(&pg, "postgres", "kb_victim", "victim-pw-1", "SELECT current_user").unwrap(), "kb_victim");

    ok(&["write", "database/config/app", "username_template="]);
    let creds = json(&ok(&["read", "database/creds/app-ro", "-o", "json"]));
    let user = creds["data"]["username"].as_str().unwrap();
    assert!(user.starts_with("v-root-app_ro-"), "{creds}");
}

/// `password_policy`: a policy at `sys/policies/password/<name>` that the
/// passwords of dynamic credentials and static roles come from; one that
/// does not exist or allows a quote is refused when named, and refused at
/// issue if it changed since. Generated passwords reach the audit log only
/// as HMACs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_policy_makes_the_passwords_and_never_breaks_the_sql() {
    let pg = Postgres::start();
    admin(&pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    admin(&pg, "postgres", "CREATE ROLE static_user WITH LOGIN PASSWORD 'static-pw-1'");
    let s = Server::dev();
    let t = Some("root-e2e");
    let dir = tempfile::tempdir().unwrap();
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let log = dir.path().join("audit.log");
    ok(&["audit", "enable", "file", &format!("file_path={}", log.display())]);

    // Upper, lower, digits, and symbols that are harmless in a quoted
    // literal; at least two of each.
    const SYMBOLS: &str = "!#%*+-.:=?@^_~";
    let policy = format!(
        "length = 24\n{}",
        ["ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789", SYMBOLS]
            .iter()
            .map(|c| format!("rule \"charset\" {{\n  charset = \"{c}\"\n  min-chars = 2\n}}\n"))
            .collect::<String>()
    );
    let file = dir.path().join("db.hcl");
    std::fs::write(&file, &policy).unwrap();
    let policy_arg = format!("policy=@{}", file.display());
    ok(&["write", "sys/policies/password/db", &policy_arg]);
    let read = json(&ok(&["read", "sys/policies/password/db", "-o", "json"]));
    assert_eq!(read["data"]["policy"], policy.as_str());
    let fits = |pw: &str| {
        pw.chars().count() == 24
            && pw.chars().all(|c| c.is_ascii_alphanumeric() || SYMBOLS.contains(c))
            && [
                |c: char| c.is_ascii_uppercase(),
                |c: char| c.is_ascii_lowercase(),
                |c: char| c.is_ascii_digit(),
                |c: char| SYMBOLS.contains(c),
            ]
            .iter()
            .all(|class| pw.chars().filter(|c| class(*c)).count() >= 2)
    };
    let generated = json(&ok(&["read", "sys/policies/password/db/generate", "-o", "json"]));
    let sample = generated["data"]["password"].as_str().unwrap().to_string();
    assert!(fits(&sample), "{sample}");
    // Valid as policies (Vault takes them), but not for SQL literals: a
    // quote ends one, and $ ends a DO $$ ... $$ body.
    let lower = "abcdefghijklmnopqrstuvwxyz";
    ok(&[
        "write",
        "sys/policies/password/quoted",
        &format!("policy=length = 20\nrule \"charset\" {{ charset = \"{lower}'\" }}"),
    ]);
    ok(&[
        "write",
        "sys/policies/password/dollar",
        &format!("policy=length = 20\nrule \"charset\" {{ charset = \"{lower}$\" }}"),
    ]);
    let o =
        s.cli(t, &["write", "sys/policies/password/bad", "policy=length = 3\nrule \"charset\" { charset = \"ab\" }"]);
    assert!(o.status.code() == Some(2) && stderr(&o).contains("must be 4 to 100"), "{}", stderr(&o));
    // Keybridge's entropy floor: every password "aaaa" is refused.
    let o =
        s.cli(t, &["write", "sys/policies/password/bad", "policy=length = 4\nrule \"charset\" { charset = \"a\" }"]);
    assert!(o.status.code() == Some(2) && stderr(&o).contains("under the floor of 64"), "{}", stderr(&o));

    ok(&["mount", "enable", "--type", "database", "database/"]);
    let url = format!(
        "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg_port(&pg),
        pg.ca_file().display()
    );
    let config = |policy: &str| {
        s.cli(
            t,
            &[
                "write",
                "database/config/app",
                "plugin_name=postgresql",
                &url,
                "username=vault_admin",
                "password=admin-pw-1",
                "allowed_roles=*",
                &format!("password_policy={policy}"),
            ],
        )
    };
    for (policy, why) in
        [("missing", "no such password policy"), ("quoted", "quoted SQL literal"), ("dollar", "allows '$'")]
    {
        let o = config(policy);
        assert!(o.status.code() == Some(2) && stderr(&o).contains(why), "{policy}: {}", stderr(&o));
    }
    assert!(!s.cli(t, &["read", "database/config/app"]).status.success(), "a refused connection was saved");
    let o = config("db");
    assert!(o.status.success(), "{}", stderr(&o));
    let read = json(&ok(&["read", "database/config/app", "-o", "json"]));
    assert_eq!(read["data"]["password_policy"], "db", "{read}");
    ok(&[
        "write",
        "database/roles/app-ro",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    ]);
    let creds = json(&ok(&["read", "database/creds/app-ro", "-o", "json"]));
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    let password = creds["data"]["password"].as_str().unwrap().to_string();
    assert!(fits(&password), "{password}");
    assert_eq!(sql(&pg, "postgres", &user, &password, "SELECT current_user").unwrap(), user);

    // A static role's password comes from the policy too.
    ok(&["write", "database/static-roles/st", "db_name=app", "username=static_user", "rotation_period=1h"]);
    let st = json(&ok(&["read", "database/static-creds/st", "-o", "json"]));
    let st_password = st["data"]["password"].as_str().unwrap().to_string();
    assert!(fits(&st_password), "{st_password}");
    assert_eq!(sql(&pg, "postgres", "static_user", &st_password, "SELECT 1").unwrap(), "1");

    // The policy changed since the connection named it: refused at issue,
    // before the database is asked.
    let users = || admin(&pg, "postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'");
    let before = users();
    let quoted = policy.replace("0123456789", "0123456789'");
    std::fs::write(&file, &quoted).unwrap();
    ok(&["write", "sys/policies/password/db", &policy_arg]);
    let o = s.cli(t, &["read", "database/creds/app-ro"]);
    assert!(
        o.status.code() == Some(2) && stderr(&o).contains("changed since") && stderr(&o).contains("'\\''"),
        "{}",
        stderr(&o)
    );
    assert!(!s.cli(t, &["write", "database/rotate-role/st"]).status.success());
    // Deleted: refused too.
    ok(&["delete", "sys/policies/password/db"]);
    let o = s.cli(t, &["read", "database/creds/app-ro"]);
    assert!(o.status.code() == Some(3) && stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert_eq!(users(), before, "a refused issue created a user");
    // The static role still logs in with what it had.
    assert_eq!(sql(&pg, "postgres", "static_user", &st_password, "SELECT 1").unwrap(), "1");
    ok(&["lease", "revoke", creds["lease_id"].as_str().unwrap()]);

    // Every generated password reached the audit log only as an HMAC.
    let audit = std::fs::read_to_string(&log).unwrap();
    assert!(audit.contains("sys/policies/password/db/generate") && audit.contains("hmac-sha256:"));
    for secret in [&sample, &password, &st_password] {
        assert!(!audit.contains(secret.as_str()), "a generated password is in the audit log");
    }
}

/// A connection pointed at another server while a credential is out: the
/// credential's revocation does not count a user it cannot see there as
/// gone. It fails, saying where the user lives, and keeps the lease; with
/// the connection pointed back, it drops the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_connection_never_revokes_a_user_it_cannot_see() {
    let (a, b) = (Postgres::start(), Postgres::start());
    for pg in [&a, &b] {
        admin(pg, "postgres", "CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    }
    let s = Server::dev();
    let t = Some("root-e2e");
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&["mount", "enable", "--type", "database", "database/"]);
    let point = |pg: &Postgres| {
        let url = format!(
            "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg_port(pg),
            pg.ca_file().display()
        );
        ok(&[
            "write",
            "database/config/app",
            "plugin_name=postgresql",
            &url,
            "username=vault_admin",
            "password=admin-pw-1",
            "allowed_roles=*",
        ]);
    };
    point(&a);
    ok(&[
        "write",
        "database/roles/ro",
        "db_name=app",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    ]);
    let creds = json(&ok(&["read", "database/creds/ro", "-o", "json"]));
    let (user, lease) = (creds["data"]["username"].as_str().unwrap(), creds["lease_id"].as_str().unwrap());
    let count =
        |pg: &Postgres| admin(pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'"));
    assert_eq!(count(&a), "1");

    point(&b);
    let o = s.cli(t, &["lease", "revoke", lease]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("point the connection back"), "{err}");
    assert!(err.contains(&format!("localhost:{}", pg_port(&a))), "{err}");
    assert_eq!(count(&a), "1", "the user is still there");
    let looked = json(&ok(&["lease", "lookup", lease, "-o", "json"]));
    assert!(looked.to_string().contains("point the connection back"), "{looked}");

    point(&a);
    ok(&["lease", "revoke", lease]);
    assert_eq!(count(&a), "0");
}
