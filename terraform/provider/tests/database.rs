//! The database resources under a real Terraform against a dev gateway and
//! a real PostgreSQL (a throwaway cluster serving TLS under a test CA; the
//! connection URL keeps `sslmode=verify-full` with `sslrootcert`):
//!
//! - the origin document's two resources (terraform/examples/database)
//!   apply, issue working read-only credentials, and plan no changes;
//! - after `rotate-root`, an update of an unrelated argument does not send
//!   the stale password back;
//! - the ephemeral `keybridge_database_credentials` issues a user for the
//!   run and its close revokes the lease: the user is dropped;
//! - `password_wo`, static roles, import and destroy.

mod harness;

use std::process::Command;

use harness::{Gateway, Tf, rt};
use keybridge_proto::v1 as pb;
use keybridge_testservers::postgres::{PASSWORD, Postgres, USER};

const ADMIN_PW: &str = "Admin-Pw-7171";

fn port(pg: &Postgres) -> u16 {
    pg.port
}

/// Runs `sql` in database `db` as `user` over TCP with TLS; the output or
/// the error text.
fn sql(pg: &Postgres, db: &str, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "require")
        .args(["-h", "127.0.0.1", "-p", &port(pg).to_string(), "-U", user, "-d", db, "-At", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", sql])
        .output()
        .expect("psql");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn superuser(pg: &Postgres, db: &str, statement: &str) -> String {
    sql(pg, db, USER, PASSWORD, statement).unwrap_or_else(|e| panic!("{statement}: {e}"))
}

/// A cluster with the origin document's admin (CREATEROLE, not a superuser)
/// and an `app` database with a table the admin owns.
fn database() -> Postgres {
    let pg = Postgres::start();
    superuser(&pg, "postgres", &format!("CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD '{ADMIN_PW}'"));
    superuser(&pg, "postgres", "CREATE DATABASE app");
    superuser(
        &pg,
        "app",
        "CREATE TABLE items (id int); INSERT INTO items VALUES (1); ALTER TABLE items OWNER TO vault_admin",
    );
    superuser(&pg, "postgres", "CREATE ROLE app_static WITH LOGIN PASSWORD 'Static-Start-1'");
    pg
}

fn mount_database(gw: &Gateway) {
    let req = pb::EnableMountRequest { path: "database/".into(), r#type: "database".into(), ..Default::default() };
    rt().block_on(gw.sys().enable_mount(gw.req(req))).expect("enable database/");
}

fn logical(gw: &Gateway) -> pb::logical_client::LogicalClient<tonic::transport::Channel> {
    pb::logical_client::LogicalClient::new(gw.channel())
}

fn read(gw: &Gateway, path: &str) -> Result<pb::LogicalResponse, tonic::Status> {
    let req = pb::LogicalRequest { path: path.into(), data: Default::default() };
    rt().block_on(logical(gw).read(gw.req(req))).map(|r| r.into_inner())
}

fn write(gw: &Gateway, path: &str, data: &[(&str, &str)]) {
    let data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let req = pb::LogicalRequest { path: path.into(), data };
    rt().block_on(logical(gw).write(gw.req(req))).unwrap_or_else(|s| panic!("write {path}: {s}"));
}

fn role_exists(pg: &Postgres, name: &str) -> bool {
    superuser(pg, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'")) == "1"
}

fn vars(pg: &Postgres) -> Vec<String> {
    vec![
        "-var".into(),
        format!("db_address=localhost:{}", port(pg)),
        "-var".into(),
        format!("db_ca_file={}", pg.ca_file().display()),
        "-var".into(),
        format!("db_password={ADMIN_PW}"),
    ]
}

fn with<'a>(args: &[&'a str], vars: &'a [String]) -> Vec<&'a str> {
    args.iter().copied().chain(vars.iter().map(String::as_str)).collect()
}

#[test]
fn origin_document_resources_issue_read_only_users_and_survive_a_root_rotation() {
    let pg = database();
    let gw = Gateway::dev();
    mount_database(&gw);
    let tf = Tf::new(&gw);
    tf.example("database");
    tf.init();
    let v = vars(&pg);
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &v));

    let conn = read(&gw, "database/config/app").expect("connection").data;
    assert_eq!((conn["username"].as_str(), conn["allowed_roles"].as_str()), ("vault_admin", "app-readonly"));
    assert!(conn["connection_url"].contains("sslmode=verify-full&sslrootcert="), "{}", conn["connection_url"]);
    let role = read(&gw, "database/roles/app-readonly").expect("role").data;
    assert_eq!((role["default_ttl"].as_str(), role["max_ttl"].as_str()), ("86400", "259200"));

    // The role's users log in and can SELECT but not INSERT.
    let creds = read(&gw, "database/creds/app-readonly").expect("creds");
    let (user, pw) = (&creds.data["username"], &creds.data["password"]);
    assert_eq!(creds.lease.as_ref().map(|l| l.ttl_secs), Some(86_400));
    assert_eq!(sql(&pg, "app", user, pw, "SELECT count(*) FROM items").as_deref(), Ok("1"));
    let e = sql(&pg, "app", user, pw, "INSERT INTO items VALUES (2)").unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    tf.ok(&with(&["plan", "-detailed-exitcode", "-no-color"], &v));

    // rotate-root: only Keybridge knows the admin's password now; the
    // configuration's is stale. Changing an unrelated argument must not
    // send it back (the engine would verify it and fail, or store it).
    write(&gw, "database/rotate-root/app", &[]);
    assert!(sql(&pg, "app", "vault_admin", ADMIN_PW, "SELECT 1").is_err(), "the old admin password is gone");
    let plan = tf.run(&with(&["plan", "-detailed-exitcode", "-no-color"], &v));
    assert_eq!(plan.code, 0, "a root rotation is no drift:\n{}", plan.all());
    let main = std::fs::read_to_string(tf.work().join("main.tf")).unwrap();
    std::fs::write(
        tf.work().join("main.tf"),
        main.replace("allowed_roles = [\"app-readonly\"]", "allowed_roles = [\"app-readonly\", \"reporting\"]"),
    )
    .unwrap();
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &v));
    assert_eq!(read(&gw, "database/config/app").unwrap().data["allowed_roles"], "app-readonly,reporting");
    let creds = read(&gw, "database/creds/app-readonly").expect("the rotated password still works");
    assert!(sql(&pg, "app", &creds.data["username"], &creds.data["password"], "SELECT 1").is_ok());
    assert!(!tf.state().contains(&creds.data["password"]));

    // Moving the connection takes the password again: with only the
    // stale one in state, the plan stops and says so.
    let v_moved: Vec<String> =
        v.iter().map(|a| a.replace(&format!("localhost:{}", port(&pg)), &format!("127.0.0.1:{}", port(&pg)))).collect();
    let r = tf.run(&with(&["plan", "-no-color"], &v_moved));
    assert!(r.code != 0 && harness::flat(&r.stderr).contains("give its password again"), "{}", r.all());

    // Destroy: both gone from the gateway.
    tf.ok(&with(&["destroy", "-auto-approve", "-no-color"], &v));
    assert_eq!(read(&gw, "database/roles/app-readonly").unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(read(&gw, "database/config/app").unwrap_err().code(), tonic::Code::NotFound);
}

#[test]
fn write_only_password_static_role_ephemeral_credentials_and_import() {
    let pg = database();
    let gw = Gateway::dev();
    mount_database(&gw);
    let tf = Tf::new(&gw);
    let url = format!(
        "postgresql://{{{{username}}}}:{{{{password}}}}@localhost:{}/app?sslmode=verify-full&sslrootcert={}",
        port(&pg),
        pg.ca_file().display()
    );
    let config = |version: u32, extra: &str| {
        format!(
            r#"variable "admin_password" {{
  type      = string
  sensitive = true
  ephemeral = true
}}

resource "keybridge_database_secret_backend_connection" "app" {{
  backend         = "database"
  name            = "app"
  allowed_roles   = ["readonly", "static"]
  password_policy = "db"
  postgresql {{
    connection_url      = "{url}"
    username            = "vault_admin"
    password_wo         = var.admin_password
    password_wo_version = {version}
    username_template   = "tf-{{{{.RoleName}}}}-{{{{random 8 | lowercase}}}}"
  }}
}}

resource "keybridge_database_secret_backend_role" "readonly" {{
  backend             = "database"
  name                = "readonly"
  db_name             = keybridge_database_secret_backend_connection.app.name
  creation_statements = ["CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}';", "GRANT SELECT ON items TO \"{{{{name}}}}\";"]
}}

resource "keybridge_database_secret_backend_static_role" "static" {{
  backend         = "database"
  name            = "static"
  db_name         = keybridge_database_secret_backend_connection.app.name
  username        = "app_static"
  rotation_period = 3600
}}
{extra}"#
        )
    };
    let pw = |p: &str| vec!["-var".to_string(), format!("admin_password={p}")];
    let policy = "length = 24\nrule \"charset\" {\n  charset = \"abcdef0123456789\"\n}\n";
    write(&gw, "sys/policies/password/db", &[("policy", policy)]);
    tf.config(&config(1, ""));
    tf.init();
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &pw(ADMIN_PW)));
    assert!(!tf.state().contains(ADMIN_PW), "a write-only password never reaches state");
    // The static role took the user over: its first password is Keybridge's.
    let stat = read(&gw, "database/static-creds/static").expect("static creds").data;
    assert_eq!(stat["username"], "app_static");
    assert!(sql(&pg, "app", "app_static", "Static-Start-1", "SELECT 1").is_err());
    assert!(sql(&pg, "app", "app_static", &stat["password"], "SELECT 1").is_ok());
    assert_eq!(read(&gw, "database/static-roles/static").unwrap().data["rotation_period"], "3600");
    tf.ok(&with(&["plan", "-detailed-exitcode", "-no-color"], &pw(ADMIN_PW)));

    // A new write-only password goes when its version changes, not before.
    superuser(&pg, "postgres", "ALTER ROLE vault_admin PASSWORD 'Admin-Pw-8282'");
    tf.ok(&with(&["plan", "-detailed-exitcode", "-no-color"], &pw("Admin-Pw-8282")));
    tf.config(&config(2, ""));
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &pw("Admin-Pw-8282")));
    let creds = read(&gw, "database/creds/readonly").expect("issued with the new admin password");
    let (user, password) = (&creds.data["username"], &creds.data["password"]);
    assert!(user.starts_with("tf-readonly-") && user.len() == "tf-readonly-".len() + 8, "{user}");
    assert!(password.len() == 24 && password.chars().all(|c| "abcdef0123456789".contains(c)), "the policy's");
    assert!(stat["password"].len() == 24, "the static role's password comes from the policy too");
    assert!(sql(&pg, "app", &creds.data["username"], &creds.data["password"], "SELECT count(*) FROM items").is_ok());

    // A static role's schedule changes in place; its user cannot.
    let sched = config(2, "").replace("rotation_period = 3600", "rotation_schedule = \"0 3 * * SUN\"");
    tf.config(&sched);
    let (changes, plan) = tf.plan_has_changes_with(&pw("Admin-Pw-8282"));
    assert!(changes && plan.stdout.contains("update in-place"), "{}", plan.stdout);
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &pw("Admin-Pw-8282")));
    let r = read(&gw, "database/static-roles/static").unwrap().data;
    assert_eq!((r["rotation_schedule"].as_str(), r["rotation_period"].as_str()), ("0 3 * * SUN", "0"));

    // Ephemeral credentials: issued for the run, written where only a
    // write-only argument takes them, revoked when the run ends.
    let eph = r#"
ephemeral "keybridge_database_credentials" "db" {
  mount = "database"
  name  = keybridge_database_secret_backend_role.readonly.name
}

resource "keybridge_secret" "seen" {
  path            = "secret/seen"
  data_wo         = { username = ephemeral.keybridge_database_credentials.db.username }
  data_wo_version = 1
}
"#;
    tf.config(&format!("{sched}{eph}"));
    tf.ok(&with(&["apply", "-auto-approve", "-no-color"], &pw("Admin-Pw-8282")));
    let issued = gw.fields("secret/seen").expect("written")["username"].clone();
    assert!(issued.starts_with("tf-readonly-"), "{issued}");
    assert!(!role_exists(&pg, &issued), "closing the ephemeral resource revoked the lease and dropped {issued}");
    let leases = rt()
        .block_on(
            pb::leases_client::LeasesClient::new(gw.channel()).list(
                gw.req(pb::ListLeasesRequest { prefix: "database/creds/readonly/".into(), ..Default::default() }),
            ),
        )
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "only the lease read through gRPC above is left");

    // Import into a fresh state: no changes but the password, which the
    // gateway never shows.
    for (addr, id) in [
        ("keybridge_database_secret_backend_role.readonly", "database/roles/readonly"),
        ("keybridge_database_secret_backend_static_role.static", "database/static-roles/static"),
    ] {
        tf.ok(&["state", "rm", addr]);
        let vars = pw("Admin-Pw-8282");
        tf.ok(&[&["import", "-no-color"][..], &[vars[0].as_str(), vars[1].as_str()], &[addr, id]].concat());
    }
    tf.ok(&with(&["plan", "-detailed-exitcode", "-no-color"], &pw("Admin-Pw-8282")));
    tf.ok(&["state", "rm", "keybridge_database_secret_backend_role.readonly"]);
    let r = tf.run(&[
        "import",
        "-no-color",
        "-var",
        "admin_password=x",
        "keybridge_database_secret_backend_role.readonly",
        "database/readonly",
    ]);
    assert!(r.code != 0 && harness::flat(&r.stderr).contains("Invalid import ID"), "{}", r.all());
    tf.ok(&[
        "import",
        "-no-color",
        "-var",
        "admin_password=x",
        "keybridge_database_secret_backend_role.readonly",
        "database/roles/readonly",
    ]);

    // Creating what exists is refused, never an overwrite.
    let dup = format!(
        "{sched}\nresource \"keybridge_database_secret_backend_role\" \"dup\" {{\n  backend = \"database\"\n  name = \"readonly\"\n  db_name = \"app\"\n  creation_statements = [\"CREATE ROLE \\\"{{{{name}}}}\\\"\"]\n}}\n"
    );
    tf.config(&dup);
    let r = tf.run(&with(&["apply", "-auto-approve", "-no-color"], &pw("Admin-Pw-8282")));
    assert!(r.code != 0 && harness::flat(&r.stderr).contains("already exists"), "{}", r.all());

    tf.config(&sched);
    tf.ok(&with(&["destroy", "-auto-approve", "-no-color"], &pw("Admin-Pw-8282")));
    assert_eq!(read(&gw, "database/static-roles/static").unwrap_err().code(), tonic::Code::NotFound);
}

#[test]
fn bad_configurations_are_refused_at_plan() {
    let gw = Gateway::dev();
    let tf = Tf::new(&gw);
    tf.config(
        r#"resource "keybridge_database_secret_backend_connection" "a" {
  backend = "database"
  name    = "a"
}

resource "keybridge_database_secret_backend_connection" "b" {
  backend = "database"
  name    = "b"
  postgresql {
    connection_url = "postgresql://admin:pw@db:5432/app"
    username       = "admin"
    password       = "x"
    password_wo    = "y"
  }
}

resource "keybridge_database_secret_backend_static_role" "s" {
  backend  = "database"
  name     = "s"
  db_name  = "a"
  username = "u"
}
"#,
    );
    tf.init();
    let r = tf.run(&["plan", "-no-color"]);
    assert_ne!(r.code, 0);
    let err = harness::flat(&r.stderr);
    for want in
        ["Missing postgresql block", "Conflicting passwords", "Invalid connection_url", "Missing rotation setting"]
    {
        assert!(err.contains(want), "{want}: {err}");
    }
}
