//! `--parts database`: the built-in database engine's credentials issued
//! and revoked per second on a local PostgreSQL (a throwaway cluster from
//! the machine's binaries, fsync off, over loopback TLS), through a gateway
//! on its file store: `Logical.Read` of `database/creds/<role>` (one
//! transaction creating the user), then `Leases.Revoke` of each (sessions,
//! owned objects, the role dropped, the user checked gone).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use keybridge_proto::v1 as pb;

use crate::{Args, authed, engine_server, logical_write, print_stats, target, timed};

pub async fn run(args: &Args, bin: &std::path::Path) {
    let pg = keybridge_testservers::postgres::Postgres::start();
    pg.psql("CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'bench-admin-pw'");
    pg.psql("CREATE TABLE items (id int); ALTER TABLE items OWNER TO vault_admin");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, root, ch) = engine_server(bin, dir.path(), args, "database/", "database").await;
    let url = pg.url("localhost", "verify-full").replace(
        &format!("{}:{}@", keybridge_testservers::postgres::USER, keybridge_testservers::postgres::PASSWORD),
        "{{username}}:{{password}}@",
    );
    logical_write(
        &ch,
        &root,
        "database/config/app",
        &[
            ("plugin_name", "postgresql".into()),
            ("connection_url", format!("{url}&sslrootcert={}", pg.ca_file().display())),
            ("username", "vault_admin".into()),
            ("password", "bench-admin-pw".into()),
            ("allowed_roles", "r".into()),
            ("max_open_connections", "16".into()),
        ],
    )
    .await;
    logical_write(
        &ch,
        &root,
        "database/roles/r",
        &[
            ("db_name", "app".into()),
            (
                "creation_statements",
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; \
                 GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"
                    .into(),
            ),
        ],
    )
    .await;
    println!("\n== Database credentials: PostgreSQL on loopback TLS, gateway on its file store ==");
    for c in [1usize, 8] {
        let leases = Arc::new(Mutex::new(Vec::new()));
        let (ch, token, l) = (ch.clone(), root.clone(), leases.clone());
        let issued = timed(c, args.seconds, move || {
            let mut client = pb::logical_client::LogicalClient::new(ch.clone());
            let (root, l) = (token.clone(), l.clone());
            async move {
                let req = pb::LogicalRequest { path: "database/creds/r".into(), ..Default::default() };
                match client.read(authed(&root, req)).await {
                    Ok(r) => {
                        let id = r.into_inner().lease.map(|l| l.lease_id).unwrap_or_default();
                        l.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        print_stats(&format!("issue  c={c}"), &issued);
        let ids: Vec<String> = std::mem::take(&mut *leases.lock().unwrap_or_else(|p| p.into_inner()));
        let n = ids.len();
        let ids = Arc::new(Mutex::new(ids));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..c {
            let (ch, root, ids) = (server.channel().await, root.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = pb::leases_client::LeasesClient::new(ch);
                let mut failed = 0usize;
                loop {
                    let Some(id) = ids.lock().unwrap_or_else(|p| p.into_inner()).pop() else { break };
                    if client.revoke(authed(&root, pb::LeaseRef { lease_id: id })).await.is_err() {
                        failed += 1;
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        let revoked = (n - failed) as f64 / secs.max(1e-9);
        println!("revoke c={c}: {n} leases in {secs:.2} s, {revoked:.0}/s, {failed} failed");
        if failed > 0 {
            crate::FAILED_CALLS.fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
        }
        let left = pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'");
        println!("users left after revoking: {}", left.trim());
        target(
            &format!("database credentials issued, c={c}"),
            format!("{:.0}/s", issued.per_sec),
            "none set (issue 28 asks for the figure)",
            "–".into(),
            None,
        );
        target(
            &format!("database credentials revoked, c={c}"),
            format!("{revoked:.0}/s"),
            "none set (issue 28 asks for the figure)",
            format!("users left: {}", left.trim()),
            None,
        );
    }
}
