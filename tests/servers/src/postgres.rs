//! A throwaway PostgreSQL server from the machine's own binaries: a new
//! cluster in a temporary directory (initdb refuses root, so as root it
//! runs as the `postgres` user), on a free loopback port, with password
//! authentication and TLS under a test CA; stopped and removed when
//! dropped.
//!
//! The binaries: `KEYBRIDGE_PG_BINDIR` (set by `tests/run-all.sh`), else
//! the newest `/usr/lib/postgresql/<version>/bin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::tls::{TestCerts, test_certs};

/// The superuser the cluster is made with, and its password.
pub const USER: &str = "keybridge";
pub const PASSWORD: &str = "pg-test-password";

pub struct Postgres {
    dir: PathBuf,
    bindir: PathBuf,
    /// The server's options (port, TLS files), for starting it again.
    options: String,
    pub port: u16,
    /// The CA that signed the server's certificate (valid for `localhost`
    /// and `127.0.0.1`).
    pub certs: TestCerts,
}

fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("KEYBRIDGE_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries: run ./tests/run-all.sh, which installs Debian's postgresql")
    })
}

fn as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs one of the server's programs, as `postgres` when we are root.
fn pg(bindir: &Path, program: &str, args: &[&str]) -> Output {
    let exe = bindir.join(program);
    let out = if as_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
    } else {
        Command::new(&exe).args(args).output()
    };
    out.unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn check(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Postgres {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Postgres {
        let bindir = bindir();
        let dir = std::env::temp_dir().join(format!(
            "kb-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let certs = test_certs("keybridge-test-postgres");
        std::fs::write(dir.join("pw"), PASSWORD).expect("password file");
        std::fs::write(dir.join("server.crt"), &certs.cert_pem).expect("cert");
        std::fs::write(dir.join("server.key"), &certs.key_pem).expect("key");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        if as_root() {
            check("chown", &Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).output().expect("chown"));
        }
        let data = dir.join("data");
        let (data_s, pw) = (data.to_str().expect("utf-8"), dir.join("pw"));
        let pw = format!("--pwfile={}", pw.to_str().expect("utf-8"));
        check(
            "initdb",
            &pg(&bindir, "initdb", &["-D", data_s, "-U", USER, &pw, "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"]),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let d = dir.to_str().expect("utf-8");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {d} -c ssl=on -c ssl_cert_file={d}/server.crt \
             -c ssl_key_file={d}/server.key -c fsync=off -c max_connections=100"
        );
        let pg = Postgres { dir, bindir, options, port, certs };
        pg.start_again();
        pg
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        check(
            "pg_ctl stop",
            &pg(&self.bindir, "pg_ctl", &["-D", data.to_str().expect("utf-8"), "-m", "immediate", "-w", "stop"]),
        );
    }

    /// Starts the stopped server.
    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let (data, log) = (data.to_str().expect("utf-8"), log.to_str().expect("utf-8"));
        check(
            "pg_ctl start",
            &pg(&self.bindir, "pg_ctl", &["-D", data, "-o", &self.options, "-l", log, "-w", "start"]),
        );
    }

    /// A connection URL for `database` (`postgres` always exists) with
    /// `sslmode` (`disable`, `verify-full`).
    pub fn url(&self, host: &str, sslmode: &str) -> String {
        format!("postgresql://{USER}:{PASSWORD}@{host}:{}/postgres?sslmode={sslmode}", self.port)
    }

    /// Where the test CA's certificate is, as a file.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        if !path.exists() {
            std::fs::write(&path, &self.certs.ca_pem).expect("ca file");
        }
        path
    }

    /// Runs SQL with psql as the superuser (over the socket); its output.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let d = self.dir.to_str().expect("utf-8");
        let o = Command::new("psql")
            .env("PGPASSWORD", PASSWORD)
            .args(["-h", d, "-p", &port, "-U", USER, "-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        check(&format!("psql {sql:?}"), &o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Stops the server at once (as a crash would) and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Some(d) = data.to_str() {
            let _ = pg(&self.bindir, "pg_ctl", &["-D", d, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
