//! The SQL: creating a user in one transaction, renewing it, and a
//! revocation that leaves nothing behind.

use std::time::SystemTime;

use deadpool_postgres::Pool;
use rand::Rng;
use zeroize::Zeroizing;

use crate::EngineError;
use crate::conn::{Connection, Pools, db_error, pool_error};

/// A new password: 28 letters and digits (the engine's own, when the
/// connection names no password policy).
pub fn new_password() -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    Zeroizing::new((0..28).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect())
}

/// The root rotation's (or a static role's) statements (default: `ALTER
/// ROLE ... PASSWORD`) with `{{username}}`/`{{name}}` and `{{password}}`
/// filled in, in one pass as [`fill`] does: a user name or password that
/// holds a placeholder is never read as one.
pub fn root_rotation_sql(statements: &str, user: &str, password: &str) -> Zeroizing<String> {
    if statements.trim().is_empty() {
        Zeroizing::new(format!("ALTER ROLE {} WITH PASSWORD '{}'", ident(user), password.replace('\'', "''")))
    } else {
        substitute(statements, &[("{{name}}", user), ("{{username}}", user), ("{{password}}", password)])
    }
}

/// A new user name (`v-<caller>-<role>-<random>-<unix time>`, at most 63
/// bytes of `[a-z0-9_-]`) and password (28 letters and digits).
pub fn new_user(role: &str, caller: &str) -> (String, Zeroizing<String>) {
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .take(n)
            .collect()
    };
    let mut rng = rand::rngs::OsRng;
    let random: String =
        (0..20).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)])).collect();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut name = format!("v-{}-{}-{random}-{now}", clean(caller, 8), clean(role, 8));
    name.truncate(63);
    (name, new_password())
}

/// `expires` as PostgreSQL reads a timestamp with time zone.
fn timestamp(expires: SystemTime) -> String {
    humantime::format_rfc3339_seconds(expires).to_string()
}

/// The statements with `{{name}}` (or `{{username}}`), `{{password}}` and
/// `{{expiration}}` filled in. The values are the engine's own (a name of
/// `[a-z0-9_-]`, or from the connection's `username_template`: printable
/// ASCII with no `"`, `'`, `\` or `$`; a password of letters and digits,
/// or from a password policy with no `'`, `"`, `\`, `$` or control
/// character (`password.rs`); a timestamp), so none can end a quoted
/// literal, identifier or `$$` body early. One pass over the statements: a value is
/// never searched for placeholders again (a generated password holding
/// `{{expiration}}` stays as it is), and the only copy is the zeroized
/// result, allocated once.
fn fill(statements: &str, name: &str, password: &str, expires: SystemTime) -> Zeroizing<String> {
    let expiration = timestamp(expires);
    substitute(
        statements,
        &[("{{name}}", name), ("{{username}}", name), ("{{password}}", password), ("{{expiration}}", &expiration)],
    )
}

/// `statements` with each placeholder of `values` replaced by its value,
/// in one pass (what [`fill`] says).
fn substitute(statements: &str, values: &[(&str, &str)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(statements.len().saturating_mul(2).saturating_add(256)));
    let mut rest = statements;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match values.iter().find(|(k, _)| rest.starts_with(k)) {
            Some((k, v)) => {
                out.push_str(v);
                rest = &rest[k.len()..];
            }
            None => {
                out.push_str("{{");
                rest = &rest[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The advisory lock (per database) the engine's catalog changes take:
/// PostgreSQL refuses concurrent changes of one catalog row ("tuple
/// concurrently updated", e.g. two GRANTs on one table's ACL), so user
/// creation and cleanup run one at a time in each database, across nodes.
const CATALOG_LOCK: i64 = 0x6b62_6462_6c6f_636b; // "kbdblock"

/// Runs `sql` in a transaction holding [`CATALOG_LOCK`].
async fn locked(client: &mut tokio_postgres::Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CATALOG_LOCK]).await?;
    tx.batch_execute(sql).await?;
    tx.commit().await
}

/// How a creation failed.
enum Creation {
    /// A user of that name exists already: nothing ran, and nothing may be
    /// rolled back (the user is someone else's).
    Exists,
    /// The statements (or the transaction) failed.
    Failed(tokio_postgres::Error),
}

/// Runs the creation statements `sql` in a transaction holding
/// [`CATALOG_LOCK`], after checking, under the lock, that no user `name`
/// exists yet.
async fn create_locked(client: &mut tokio_postgres::Client, sql: &str, name: &str) -> Result<(), Creation> {
    let tx = client.transaction().await.map_err(Creation::Failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CATALOG_LOCK]).await.map_err(Creation::Failed)?;
    let taken = tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.map_err(Creation::Failed)?;
    if taken.is_some() {
        // Dropping the transaction rolls it back.
        return Err(Creation::Exists);
    }
    tx.batch_execute(sql).await.map_err(Creation::Failed)?;
    tx.commit().await.map_err(Creation::Failed)
}

/// Takes a rotation's hold on a connection, for every node: a
/// session-level advisory lock named after the connection (waits at most
/// `lock_timeout`). Give the key back to [`unlock`] on every path.
pub async fn lock(client: &tokio_postgres::Client, connection: &str) -> Result<i64, EngineError> {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("keybridge-rotation:{connection}"));
    let key = i64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| db_error(&format!("waiting for another rotation of connection {connection} (on any node)"), &e))?;
    Ok(key)
}

pub async fn unlock(client: &tokio_postgres::Client, key: i64) {
    if let Err(e) = client.execute("SELECT pg_advisory_unlock($1)", &[&key]).await {
        tracing::warn!(error = %db_error("releasing the rotation lock", &e), "database: the session's lock goes when it closes");
    }
}

pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs the creation statements in one transaction; on failure rolls back
/// and runs the rollback statements (best effort). A user of that name
/// that exists already is refused before any statement runs, and the
/// rollback statements do not run: they would act on someone else's user,
/// as the admin.
pub async fn create(
    pool: &Pool,
    creation: &str,
    rollback: &str,
    name: &str,
    password: &str,
    expires: SystemTime,
) -> Result<(), EngineError> {
    let mut client = pool.get().await.map_err(|e| pool_error("connecting to create the user", e))?;
    let sql = fill(creation, name, password, expires);
    let r = create_locked(&mut client, &sql, name).await;
    let e = match r {
        Ok(()) => return Ok(()),
        Err(Creation::Exists) => {
            return Err(EngineError::InvalidInput(format!(
                "user {name} exists already: the username_template must make unique names (add random, e.g. {{{{ random 20 }}}}); nothing was run"
            )));
        }
        Err(Creation::Failed(e)) => e,
    };
    if !rollback.trim().is_empty()
        && let Err(re) = client.batch_execute(&fill(rollback, name, password, expires)).await
    {
        let e = db_error("rollback statements", &re).to_string().replace(password, "<redacted>");
        tracing::warn!(user = name, error = %e, "database: the rollback statements failed too");
    }
    // A statement that quotes the password wrongly makes PostgreSQL quote
    // it back ("syntax error at or near ..."): never in an error.
    Err(match db_error("creating the user", &e) {
        EngineError::Unavailable(m) => EngineError::Unavailable(m.replace(password, "<redacted>")),
        other => other,
    })
}

/// Moves the user's `VALID UNTIL` to `expires` (or runs the role's renew
/// statements).
pub async fn renew(pool: &Pool, statements: &str, name: &str, expires: SystemTime) -> Result<(), EngineError> {
    let client = pool.get().await.map_err(|e| pool_error("connecting to renew the user", e))?;
    let sql = if statements.trim().is_empty() {
        Zeroizing::new(format!("ALTER ROLE {} VALID UNTIL '{}'", ident(name), timestamp(expires)))
    } else {
        fill(statements, name, "", expires)
    };
    client.batch_execute(&sql).await.map_err(|e| db_error("renewing the user", &e))
}

async fn terminate(client: &tokio_postgres::Client, name: &str) -> Result<(), EngineError> {
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .map(|_| ())
        .map_err(|e| db_error("ending the user's sessions", &e))
}

async fn exists(client: &tokio_postgres::Client, name: &str) -> Result<bool, EngineError> {
    client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map(|r| r.is_some())
        .map_err(|e| db_error("looking the user up", &e))
}

/// Whether user `name` exists where the connection points.
pub async fn user_exists(pools: &Pools, db_name: &str, c: &Connection, name: &str) -> Result<bool, EngineError> {
    let pool = pools.get(db_name, c, None)?;
    let client = pool.get().await.map_err(|e| pool_error("connecting to look the user up", e))?;
    exists(&client, name).await
}

/// Revokes a user for good. Idempotent: a user already gone is revoked.
///
/// 1. The role's revocation statements, if any.
/// 2. While the user exists: the admin takes membership in it (what
///    `DROP OWNED` and ending its sessions need from an admin with
///    CREATEROLE); its sessions are terminated, it is closed to new logins
///    (`NOLOGIN`), and its sessions terminated again; in every database
///    where it owns objects or holds grants (`pg_shdepend`), what it owns
///    is dropped and its grants revoked (`DROP OWNED`); then the user is
///    dropped. Every statement waits at most `lock_timeout`.
/// 3. It succeeds only once the user is gone.
pub async fn revoke(
    pools: &Pools,
    db_name: &str,
    c: &Connection,
    statements: &str,
    name: &str,
) -> Result<(), EngineError> {
    let pool = pools.get(db_name, c, None)?;
    let mut client = pool.get().await.map_err(|e| pool_error("connecting to revoke the user", e))?;
    if !exists(&client, name).await? {
        return Ok(());
    }
    if !statements.trim().is_empty() {
        client
            .batch_execute(&fill(statements, name, "", SystemTime::now()))
            .await
            .map_err(|e| db_error("the role's revocation statements", &e))?;
        if !exists(&client, name).await? {
            return Ok(());
        }
    }
    let q = ident(name);
    // Membership first (to end its sessions), sessions ended (one holding
    // a lock on its own role would block what follows), no new logins,
    // sessions ended again (any that started meanwhile).
    client
        .batch_execute(&format!("GRANT {q} TO CURRENT_USER"))
        .await
        .map_err(|e| db_error("taking membership in the user", &e))?;
    terminate(&client, name).await?;
    client
        .batch_execute(&format!("ALTER ROLE {q} NOLOGIN"))
        .await
        .map_err(|e| db_error("closing the user to new logins", &e))?;
    terminate(&client, name).await?;
    let rows = client
        .query(
            "SELECT DISTINCT d.datname FROM pg_shdepend s \
             JOIN pg_database d ON d.oid = s.dbid \
             JOIN pg_roles r ON r.oid = s.refobjid \
             WHERE r.rolname = $1 AND d.datallowconn",
            &[&name],
        )
        .await
        .map_err(|e| db_error("finding where the user owns objects or holds grants", &e))?;
    let here: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(|e| db_error("reading the current database", &e))?
        .get(0);
    // What the user owns goes with it: handing it to the admin would let a
    // short-lived credential leave behind a SECURITY DEFINER function or a
    // view that then runs with the admin's rights.
    let cleanup = format!("DROP OWNED BY {q}");
    for row in rows {
        let db: String = row.get(0);
        if db == here {
            locked(&mut client, &cleanup).await
        } else {
            // A pool of its own, dropped after: the databases a user owns
            // something in are the user's choice.
            let other = crate::conn::pool(c, Some(&db))?;
            let mut oc = other.get().await.map_err(|e| pool_error(&format!("connecting to database {db}"), e))?;
            locked(&mut oc, &cleanup).await
        }
        .map_err(|e| db_error(&format!("dropping what the user owns in database {db}"), &e))?;
    }
    // Grants in this database that pg_shdepend does not list (none are
    // expected; cheap to be sure), then the user.
    locked(&mut client, &format!("{cleanup}; DROP ROLE IF EXISTS {q}"))
        .await
        .map_err(|e| db_error("dropping what the user owns, and the user", &e))?;
    if exists(&client, name).await? {
        return Err(EngineError::Unavailable(format!("user {name} still exists after DROP ROLE; retried")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once_and_values_are_never_read_as_placeholders() {
        let at = SystemTime::UNIX_EPOCH;
        let sql = fill(
            "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; {{x}} {{",
            "u",
            "p{{expiration}}",
            at,
        );
        assert_eq!(
            sql.as_str(),
            "CREATE ROLE \"u\" PASSWORD 'p{{expiration}}' VALID UNTIL '1970-01-01T00:00:00Z'; {{x}} {{"
        );
        assert_eq!(fill("{{username}}/{{name}}", "n", "", at).as_str(), "n/n");
    }

    #[test]
    fn root_rotation_fills_in_one_pass() {
        // A password holding a placeholder stays as it is; so does a name.
        let sql = root_rotation_sql(
            "ALTER ROLE \"{{username}}\" PASSWORD '{{password}}'; -- {{name}} {{expiration}} {{",
            "u{{password}}",
            "p{{username}}{{name}}",
        );
        assert_eq!(
            sql.as_str(),
            "ALTER ROLE \"u{{password}}\" PASSWORD 'p{{username}}{{name}}'; -- u{{password}} {{expiration}} {{"
        );
        // The default quotes both.
        assert_eq!(root_rotation_sql(" ", "a\"b", "it's").as_str(), "ALTER ROLE \"a\"\"b\" WITH PASSWORD 'it''s'");
    }
}
