//! The database engine's objects, named as in hashicorp/vault with the
//! prefix changed so Vault users' configurations port:
//! `keybridge_database_secret_backend_connection`, `_role` and
//! `_static_role`, and the ephemeral `keybridge_database_credentials`, whose
//! close revokes its lease.
//!
//! They go through the gateway's Logical API (`<backend>/config/<name>`,
//! `<backend>/roles/<name>`, ...) with the provider's token, like
//! `keybridge write`. Statement lists are kept by the engine as one SQL text;
//! the provider joins them with one statement per line and reads the text
//! back as the configured list when it is unchanged.
//!
//! The connection's admin password is write-only on the gateway (it reads
//! back as `<redacted>`), so state keeps what the configuration said. It is
//! sent only when it changes (or `password_wo_version` does, or the URL or
//! user moves, which the engine takes a password again for): after
//! `rotate-root`, an update of another argument never sends the stale one
//! back.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keybridge_proto::v1 as pb;
use zeroize::Zeroizing;

use super::logical::{Data, delete_path, import_path, object_path, read_path, refuse_existing, write_path};
use super::{Caps, Ephemeral, Opened, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::Gateway;
use crate::schema::{Attr, Block, Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

/// The engine's defaults where the configuration leaves a setting out.
const DEFAULT_TTL: u64 = 3600;
const MAX_TTL: u64 = 86_400;
const MAX_OPEN_CONNECTIONS: u64 = 4;

fn data(pairs: Vec<(&str, String)>) -> Data {
    pairs.into_iter().map(|(k, v)| (k.to_string(), Zeroizing::new(v))).collect()
}

fn check_names(config: &Obj, diags: &mut Diags) {
    super::check_segment(config, "backend", "mount path", diags);
    super::check_segment(config, "name", "name", diags);
    if let Some(n) = config.get_str("name")
        && n.contains('/')
    {
        diags.push_error("Invalid name", "`name` is one path segment: no `/`.", Some(diag::path("name")));
    }
}

/// A statement list as the engine keeps it: one statement per line, each
/// ending in `;`.
fn join_statements(list: &[String]) -> String {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| if s.ends_with(';') { s.to_string() } else { format!("{s};") })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The engine's SQL text as a statement list, split at `;` outside quotes
/// (for showing drift); the prior list when the text is what it makes.
fn statements_val(remote: &str, prior: &Val) -> Val {
    if let Val::List(items) = prior {
        let strings: Vec<String> = items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        if join_statements(&strings) == remote.trim() {
            return prior.clone();
        }
    }
    if remote.trim().is_empty() {
        return if prior.is_null() { Val::Null } else { Val::List(vec![]) };
    }
    let (mut out, mut cur, mut quote) = (Vec::new(), String::new(), None::<char>);
    for c in remote.chars() {
        cur.push(c);
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => {}
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    Val::from_strings(out)
}

/// A remote setting that equals the engine's default reads as null while
/// the configuration leaves it out, so leaving it out shows no drift.
fn defaulted(prior: &Val, remote: Val, default: &Val) -> Val {
    if prior.is_null() && &remote == default { Val::Null } else { remote }
}

fn num(s: Option<&String>) -> Val {
    s.and_then(|s| s.parse::<f64>().ok()).map_or(Val::Null, Val::Num)
}

fn whole_seconds(config: &Obj, attr: &str, diags: &mut Diags) {
    if let Some(v) = config.get_num(attr)
        && (v < 0.0 || v.fract() != 0.0 || v > 1.0e12)
    {
        diags.push_error("Invalid number", format!("`{attr}` is a whole number of seconds."), Some(diag::path(attr)));
    }
}

fn list_or_empty(o: &Obj, attr: &str) -> Vec<String> {
    o.get_strings(attr).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// keybridge_database_secret_backend_connection

pub struct Connection;

fn pg_block(o: &Obj) -> Obj {
    match o.val("postgresql") {
        Val::List(items) => match items.first() {
            Some(Val::Map(m)) => m.clone(),
            _ => Obj::new(),
        },
        _ => Obj::new(),
    }
}

fn pg_attrs() -> Vec<Attr> {
    vec![
        attr(
            "connection_url",
            Ty::Str,
            Mode::Required,
            "`postgresql://{{username}}:{{password}}@host:5432/db?sslmode=verify-full&sslrootcert=/path/ca.pem`: \
             the credentials only as the two placeholders.",
        ),
        attr("username", Ty::Str, Mode::Required, "The admin user (CREATEROLE, or a superuser)."),
        attr(
            "password",
            Ty::Str,
            Mode::Optional,
            "The admin user's password, stored in state (sensitive). Prefer `password_wo`.",
        )
        .sensitive(),
        attr(
            "password_wo",
            Ty::Str,
            Mode::Optional,
            "The admin user's password, write-only (Terraform 1.11+): never stored in state or plan.",
        )
        .sensitive()
        .write_only(),
        attr("password_wo_version", Ty::Num, Mode::Optional, "Change it to send a new `password_wo`."),
        attr("max_open_connections", Ty::Num, Mode::Optional, "Connections the engine keeps open (default 4)."),
        attr(
            "username_template",
            Ty::Str,
            Mode::Optional,
            "A Go template naming issued users, as in Vault (`{{ printf \"v-%s-%s\" .RoleName (random 20) }}`).",
        ),
    ]
}

impl Connection {
    fn body(&self, planned: &Obj, config: &Obj, with_password: bool) -> Data {
        let pg = pg_block(planned);
        let mut d = data(vec![
            ("plugin_name", planned.get_str("plugin_name").unwrap_or("postgresql").to_string()),
            ("connection_url", pg.get_str("connection_url").unwrap_or_default().to_string()),
            ("username", pg.get_str("username").unwrap_or_default().to_string()),
            ("allowed_roles", super::join_list(&list_or_empty(planned, "allowed_roles"))),
            ("root_rotation_statements", join_statements(&list_or_empty(planned, "root_rotation_statements"))),
            (
                "max_open_connections",
                pg.get_num("max_open_connections").map_or(MAX_OPEN_CONNECTIONS, |n| n as u64).to_string(),
            ),
            ("verify_connection", planned.get_bool("verify_connection").unwrap_or(true).to_string()),
            ("allow_superuser_rotation", planned.get_bool("allow_superuser_rotation").unwrap_or(false).to_string()),
            ("username_template", pg.get_str("username_template").unwrap_or_default().to_string()),
            ("password_policy", planned.get_str("password_policy").unwrap_or_default().to_string()),
        ]);
        if with_password {
            // `password` from the plan, `password_wo` from the configuration
            // (write-only values are null in plans).
            let password = pg
                .get_str("password")
                .map(str::to_string)
                .or_else(|| pg_block(config).get_str("password_wo").map(str::to_string));
            if let Some(p) = password {
                d.insert("password".into(), Zeroizing::new(p));
            }
        }
        d
    }
}

#[async_trait]
impl Resource for Connection {
    fn name(&self) -> &'static str {
        "keybridge_database_secret_backend_connection"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A connection of a database engine mount (`database/config/<name>`): where the \
                          database is and the admin user that creates users. As \
                          `vault_database_secret_backend_connection`, with the `postgresql` block.",
            attrs: vec![
                attr("backend", Ty::Str, Mode::Required, "The database mount (`database`). Changing it replaces."),
                attr("name", Ty::Str, Mode::Required, "The connection's name. Changing it replaces."),
                attr(
                    "plugin_name",
                    Ty::Str,
                    Mode::OptionalComputed,
                    "`postgresql` (`postgresql-database-plugin` is read the same).",
                ),
                attr("verify_connection", Ty::Bool, Mode::Optional, "Connect before saving (default true)."),
                attr("allowed_roles", Ty::ListStr, Mode::Optional, "Roles that may use it (`*` for any)."),
                attr(
                    "root_rotation_statements",
                    Ty::ListStr,
                    Mode::Optional,
                    "SQL that `rotate-root` runs (`{{username}}`, `{{password}}`); default ALTER ROLE ... PASSWORD.",
                ),
                attr(
                    "password_policy",
                    Ty::Str,
                    Mode::Optional,
                    "The password policy (`sys/policies/password/<name>`) for the passwords it sets.",
                ),
                attr(
                    "allow_superuser_rotation",
                    Ty::Bool,
                    Mode::Optional,
                    "Let `rotate-root` rotate a superuser's password (default false).",
                ),
            ],
            blocks: vec![Block {
                name: "postgresql",
                description: "The PostgreSQL connection (required: the only plugin Keybridge serves).",
                attrs: pg_attrs(),
            }],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The database mount."), ("name", "The connection's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["backend", "name"]
    }

    fn validate(&self, config: &Obj, caps: Caps, diags: &mut Diags) {
        check_names(config, diags);
        let blocks = match config.val("postgresql") {
            Val::List(items) => items.len(),
            Val::Unknown => return,
            _ => 0,
        };
        if blocks != 1 {
            diags.push_error(
                "Missing postgresql block",
                "Give one `postgresql { connection_url = ..., username = ..., password_wo = ... }` block: \
                 PostgreSQL is the database Keybridge's engine serves.",
                Some(diag::path("postgresql")),
            );
            return;
        }
        let pg = pg_block(config);
        let at = |a: &str| Some(diag::path_in_block("postgresql", a));
        if !pg.val("password").is_null() && !pg.val("password_wo").is_null() {
            diags.push_error(
                "Conflicting passwords",
                "Set either `password` or `password_wo`, not both.",
                at("password_wo"),
            );
        }
        if !pg.val("password_wo").is_null() && !caps.write_only {
            diags.push_error(
                "Write-only attributes need Terraform 1.11 or later",
                "This Terraform cannot send write-only values; use `password` or upgrade Terraform.",
                at("password_wo"),
            );
        }
        if pg.val("password_wo").is_null() && !pg.val("password_wo_version").is_null() {
            diags.push_error(
                "password_wo_version without password_wo",
                "`password_wo_version` only says when to send `password_wo` again; set `password_wo` or remove it.",
                at("password_wo_version"),
            );
        }
        if let Some(url) = pg.get_str("connection_url")
            && !(url.contains("{{username}}") && url.contains("{{password}}"))
        {
            diags.push_error(
                "Invalid connection_url",
                "Write the admin's credentials only as `{{username}}:{{password}}@` in the URL; give them in \
                 `username` and `password_wo`.",
                at("connection_url"),
            );
        }
        if let Some(n) = pg.get_num("max_open_connections")
            && !(1.0..=1000.0).contains(&n)
        {
            diags.push_error("Invalid max_open_connections", "Give 1 to 1000.", at("max_open_connections"));
        }
        if let Some(p) = config.get_str("plugin_name")
            && !matches!(p, "postgresql" | "postgresql-database-plugin")
        {
            diags.push_error(
                "Unsupported plugin",
                "Keybridge's database engine serves `postgresql` (also read as `postgresql-database-plugin`).",
                Some(diag::path("plugin_name")),
            );
        }
    }

    fn check_update(&self, prior: &Obj, config: &Obj, diags: &mut Diags) {
        let (old, new) = (pg_block(prior), pg_block(config));
        let moved = ["connection_url", "username"].iter().any(|a| {
            let v = new.val(a);
            !v.is_unknown() && old.val(a) != v
        });
        let new_password = old.val("password") != new.val("password")
            || old.val("password_wo_version") != new.val("password_wo_version");
        if moved && !new_password {
            diags.push_error(
                "The connection moves: give its password again",
                "`connection_url` or `username` changed, and the gateway takes the password again for a new \
                 server or user. The password in state may be stale (after rotate-root only Keybridge knows the \
                 current one): change `password`, or bump `password_wo_version` with the new `password_wo`.",
                Some(diag::path("postgresql")),
            );
        }
    }

    fn import_id_help(&self) -> &'static str {
        "`<backend>/config/<name>`: `database/config/app`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        import_path(id, "config", self.import_id_help())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let Some(r) = read_path(gw, &object_path(prior, "config"), "database connection").await? else {
            return Ok(None);
        };
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let opt_str = |p: &Val, k: &str| defaulted(p, Val::str(get(k)), &Val::str(""));
        let ppg = pg_block(prior);
        let mut out = Obj::new();
        out.insert("backend".into(), prior.val("backend").clone());
        out.insert("name".into(), prior.val("name").clone());
        out.insert("plugin_name".into(), Val::str(get("plugin_name")));
        out.insert("verify_connection".into(), prior.val("verify_connection").clone());
        let roles = super::split_list(&get("allowed_roles"));
        out.insert(
            "allowed_roles".into(),
            defaulted(prior.val("allowed_roles"), Val::from_strings(roles), &Val::List(vec![])),
        );
        out.insert(
            "root_rotation_statements".into(),
            statements_val(&get("root_rotation_statements"), prior.val("root_rotation_statements")),
        );
        out.insert("password_policy".into(), opt_str(prior.val("password_policy"), "password_policy"));
        out.insert(
            "allow_superuser_rotation".into(),
            defaulted(
                prior.val("allow_superuser_rotation"),
                Val::Bool(get("allow_superuser_rotation") == "true"),
                &Val::Bool(false),
            ),
        );
        let mut pg = Obj::new();
        pg.insert("connection_url".into(), Val::str(get("connection_url")));
        pg.insert("username".into(), Val::str(get("username")));
        // The gateway never shows the password: state keeps what was sent.
        pg.insert("password".into(), ppg.val("password").clone());
        pg.insert("password_wo_version".into(), ppg.val("password_wo_version").clone());
        pg.insert(
            "max_open_connections".into(),
            defaulted(
                ppg.val("max_open_connections"),
                num(r.get("max_open_connections")),
                &Val::Num(MAX_OPEN_CONNECTIONS as f64),
            ),
        );
        pg.insert("username_template".into(), opt_str(ppg.val("username_template"), "username_template"));
        out.insert("postgresql".into(), Val::List(vec![Val::Map(pg)]));
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        let path = object_path(planned, "config");
        refuse_existing(gw, &path, "Database connection").await?;
        write_path(gw, &path, self.body(planned, config, true), "database connection").await?;
        Ok(Private::new())
    }

    async fn update(
        &self,
        gw: &Gateway,
        prior: &Obj,
        planned: &Obj,
        config: &Obj,
        _private: &Private,
    ) -> Result<Private, Diags> {
        let (old, new) = (pg_block(prior), pg_block(planned));
        let changed = |a: &str| old.val(a) != new.val(a);
        // The gateway may hold a password rotated since (rotate-root): the
        // configured one goes only when the configuration changed it, or
        // when the connection moves and the engine takes one again.
        let send_password =
            changed("password") || changed("password_wo_version") || changed("connection_url") || changed("username");
        let path = object_path(planned, "config");
        write_path(gw, &path, self.body(planned, config, send_password), "database connection").await?;
        Ok(Private::new())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        delete_path(gw, &object_path(prior, "config"), "database connection").await
    }
}

// ---------------------------------------------------------------------------
// keybridge_database_secret_backend_role

pub struct Role;

const ROLE_STATEMENTS: [&str; 4] =
    ["creation_statements", "revocation_statements", "renew_statements", "rollback_statements"];

#[async_trait]
impl Resource for Role {
    fn name(&self) -> &'static str {
        "keybridge_database_secret_backend_role"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A dynamic role of a database engine mount (`database/roles/<name>`): the SQL that \
                          creates, renews and revokes the users `database/creds/<name>` issues. As \
                          `vault_database_secret_backend_role`.",
            attrs: vec![
                attr("backend", Ty::Str, Mode::Required, "The database mount (`database`). Changing it replaces."),
                attr("name", Ty::Str, Mode::Required, "The role's name. Changing it replaces."),
                attr("db_name", Ty::Str, Mode::Required, "The connection its users are created on."),
                attr(
                    "creation_statements",
                    Ty::ListStr,
                    Mode::Required,
                    "SQL run in one transaction: `{{name}}`, `{{password}}` and `{{expiration}}` are filled in.",
                ),
                attr(
                    "revocation_statements",
                    Ty::ListStr,
                    Mode::Optional,
                    "SQL run before the engine's own cleanup (sessions, owned objects, grants, the user).",
                ),
                attr("renew_statements", Ty::ListStr, Mode::Optional, "SQL run on renewal."),
                attr("rollback_statements", Ty::ListStr, Mode::Optional, "SQL run when creation fails."),
                attr("default_ttl", Ty::Num, Mode::Optional, "A credential's lease in seconds (default 3600)."),
                attr("max_ttl", Ty::Num, Mode::Optional, "The most renewals extend it to, in seconds (default 86400)."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The database mount."), ("name", "The role's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["backend", "name"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        check_names(config, diags);
        whole_seconds(config, "default_ttl", diags);
        whole_seconds(config, "max_ttl", diags);
        if let (Some(d), Some(m)) = (config.get_num("default_ttl"), config.get_num("max_ttl"))
            && d > m
        {
            diags.push_error(
                "Invalid TTLs",
                "`default_ttl` must be at most `max_ttl`.",
                Some(diag::path("default_ttl")),
            );
        }
        if let Val::List(items) = config.val("creation_statements")
            && items.iter().all(|v| v.as_str().is_some_and(|s| s.trim().is_empty()))
        {
            diags.push_error(
                "Missing creation statements",
                "Give the SQL that creates the user `{{name}}` with `{{password}}`.",
                Some(diag::path("creation_statements")),
            );
        }
    }

    fn import_id_help(&self) -> &'static str {
        "`<backend>/roles/<name>`: `database/roles/app-readonly`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        import_path(id, "roles", self.import_id_help())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let Some(r) = read_path(gw, &object_path(prior, "roles"), "database role").await? else {
            return Ok(None);
        };
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let mut out = Obj::new();
        out.insert("backend".into(), prior.val("backend").clone());
        out.insert("name".into(), prior.val("name").clone());
        out.insert("db_name".into(), Val::str(get("db_name")));
        for a in ROLE_STATEMENTS {
            out.insert(a.into(), statements_val(&get(a), prior.val(a)));
        }
        out.insert(
            "default_ttl".into(),
            defaulted(prior.val("default_ttl"), num(r.get("default_ttl")), &Val::Num(DEFAULT_TTL as f64)),
        );
        out.insert("max_ttl".into(), defaulted(prior.val("max_ttl"), num(r.get("max_ttl")), &Val::Num(MAX_TTL as f64)));
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        let path = object_path(planned, "roles");
        refuse_existing(gw, &path, "Database role").await?;
        write_path(gw, &path, role_body(planned), "database role").await?;
        Ok(Private::new())
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, _: &Private) -> Result<Private, Diags> {
        write_path(gw, &object_path(planned, "roles"), role_body(planned), "database role").await?;
        Ok(Private::new())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        delete_path(gw, &object_path(prior, "roles"), "database role").await
    }
}

/// Every setting, defaults included, so an update also clears what the
/// configuration no longer sets.
fn role_body(planned: &Obj) -> Data {
    let mut pairs = vec![("db_name", planned.get_str("db_name").unwrap_or_default().to_string())];
    for a in ROLE_STATEMENTS {
        pairs.push((a, join_statements(&list_or_empty(planned, a))));
    }
    pairs.push(("default_ttl", planned.get_num("default_ttl").map_or(DEFAULT_TTL, |n| n as u64).to_string()));
    pairs.push(("max_ttl", planned.get_num("max_ttl").map_or(MAX_TTL, |n| n as u64).to_string()));
    data(pairs)
}

// ---------------------------------------------------------------------------
// keybridge_database_secret_backend_static_role

pub struct StaticRole;

#[async_trait]
impl Resource for StaticRole {
    fn name(&self) -> &'static str {
        "keybridge_database_secret_backend_static_role"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A static role of a database engine mount (`database/static-roles/<name>`): an existing \
                          user whose password Keybridge sets at once and rotates. As \
                          `vault_database_secret_backend_static_role`.",
            attrs: vec![
                attr("backend", Ty::Str, Mode::Required, "The database mount (`database`). Changing it replaces."),
                attr("name", Ty::Str, Mode::Required, "The static role's name. Changing it replaces."),
                attr("db_name", Ty::Str, Mode::Required, "The connection. Changing it replaces."),
                attr("username", Ty::Str, Mode::Required, "The existing database user. Changing it replaces."),
                attr("rotation_period", Ty::Num, Mode::Optional, "Seconds between rotations (at least 5)."),
                attr(
                    "rotation_schedule",
                    Ty::Str,
                    Mode::Optional,
                    "When to rotate instead: five-field cron, UTC (`0 3 * * SUN`).",
                ),
                attr(
                    "rotation_statements",
                    Ty::ListStr,
                    Mode::Optional,
                    "SQL setting the password (`{{name}}`, `{{password}}`); default ALTER ROLE ... PASSWORD.",
                ),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The database mount."), ("name", "The static role's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["backend", "name", "db_name", "username"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        check_names(config, diags);
        whole_seconds(config, "rotation_period", diags);
        let (period, schedule) = (config.val("rotation_period"), config.val("rotation_schedule"));
        if !period.is_null() && !schedule.is_null() && !period.is_unknown() && !schedule.is_unknown() {
            diags.push_error(
                "Conflicting rotation settings",
                "Set `rotation_period` or `rotation_schedule`, not both.",
                Some(diag::path("rotation_schedule")),
            );
        }
        if period.is_null() && schedule.is_null() {
            diags.push_error(
                "Missing rotation setting",
                "Set `rotation_period` (seconds, at least 5) or `rotation_schedule` (cron).",
                Some(diag::path("rotation_period")),
            );
        }
    }

    fn import_id_help(&self) -> &'static str {
        "`<backend>/static-roles/<name>`: `database/static-roles/app`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        import_path(id, "static-roles", self.import_id_help())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let Some(r) = read_path(gw, &object_path(prior, "static-roles"), "database static role").await? else {
            return Ok(None);
        };
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let mut out = Obj::new();
        out.insert("backend".into(), prior.val("backend").clone());
        out.insert("name".into(), prior.val("name").clone());
        out.insert("db_name".into(), Val::str(get("db_name")));
        out.insert("username".into(), Val::str(get("username")));
        out.insert(
            "rotation_period".into(),
            defaulted(prior.val("rotation_period"), num(r.get("rotation_period")), &Val::Num(0.0)),
        );
        out.insert(
            "rotation_schedule".into(),
            defaulted(prior.val("rotation_schedule"), Val::str(get("rotation_schedule")), &Val::str("")),
        );
        out.insert(
            "rotation_statements".into(),
            statements_val(&get("rotation_statements"), prior.val("rotation_statements")),
        );
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        let path = object_path(planned, "static-roles");
        refuse_existing(gw, &path, "Database static role").await?;
        write_path(gw, &path, static_body(planned), "database static role").await?;
        Ok(Private::new())
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, _: &Private) -> Result<Private, Diags> {
        write_path(gw, &object_path(planned, "static-roles"), static_body(planned), "database static role").await?;
        Ok(Private::new())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        delete_path(gw, &object_path(prior, "static-roles"), "database static role").await
    }
}

fn static_body(planned: &Obj) -> Data {
    let mut pairs = vec![
        ("db_name", planned.get_str("db_name").unwrap_or_default().to_string()),
        ("username", planned.get_str("username").unwrap_or_default().to_string()),
        ("rotation_statements", join_statements(&list_or_empty(planned, "rotation_statements"))),
    ];
    match (planned.get_num("rotation_period"), planned.get_str("rotation_schedule")) {
        (Some(p), _) => pairs.push(("rotation_period", (p as u64).to_string())),
        (None, Some(s)) => pairs.push(("rotation_schedule", s.to_string())),
        (None, None) => {}
    }
    data(pairs)
}

// ---------------------------------------------------------------------------
// ephemeral keybridge_database_credentials

pub struct Credentials;

const LEASE_ID: &str = "lease_id";

fn system_time(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// When to renew a lease of `ttl` that expires at `expire`: two thirds of
/// the way there, and never while the lease cannot be extended.
fn renew_at(lease: &pb::Lease) -> Option<SystemTime> {
    if !lease.renewable || lease.ttl_secs == 0 {
        return None;
    }
    let expire = system_time(lease.expire_time.as_ref())?;
    if let Some(max) = system_time(lease.max_expire_time.as_ref())
        && expire >= max
    {
        return None;
    }
    expire.checked_sub(Duration::from_secs(lease.ttl_secs / 3))
}

#[async_trait]
impl Ephemeral for Credentials {
    fn name(&self) -> &'static str {
        "keybridge_database_credentials"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A database user issued by a role (`<mount>/creds/<name>`) for one run: the lease is \
                          renewed while the run lasts and revoked when it ends, so the user is dropped.",
            attrs: vec![
                attr("mount", Ty::Str, Mode::Required, "The database mount (`database`)."),
                attr("name", Ty::Str, Mode::Required, "The role (`app-readonly`)."),
                attr("username", Ty::Str, Mode::Computed, "The issued user."),
                attr("password", Ty::Str, Mode::Computed, "Its password.").sensitive(),
                attr("lease_id", Ty::Str, Mode::Computed, "The lease, revoked when the run ends."),
                attr("lease_duration", Ty::Num, Mode::Computed, "The lease's TTL in seconds."),
                attr("lease_start_time", Ty::Str, Mode::Computed, "When it was issued (RFC 3339)."),
                attr("lease_renewable", Ty::Bool, Mode::Computed, "Whether the lease can be renewed."),
            ],
            blocks: vec![],
        }
    }

    fn about(&self) -> &'static str {
        "The provider's token needs `read` on `<mount>/creds/<name>` to open it and `update` on \
         `sys/leases/revoke` (and `sys/leases/renew`) to revoke it at the end of the run and renew it during a \
         long one; a lease it cannot revoke ends at its TTL."
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        super::check_segment(config, "mount", "mount path", diags);
        super::check_segment(config, "name", "role name", diags);
    }

    async fn open(&self, gw: &Gateway, config: &Obj) -> Result<Opened, Diags> {
        let mount = config.get_str("mount").unwrap_or_default().trim_matches('/').to_string();
        let role = config.get_str("name").unwrap_or_default();
        let req = pb::LogicalRequest { path: format!("{mount}/creds/{role}"), data: Default::default() };
        let r = gw
            .logical()
            .read(gw.req(req))
            .await
            .map_err(|s| diag::gateway("issue database credentials", &s, Some("name")))?
            .into_inner();
        let Some(lease) = r.lease else {
            return Err(Diags::error_at(
                "name",
                "No lease",
                format!("{mount}/creds/{role} gave no lease: is {mount} a database mount?"),
            ));
        };
        let mut private = Private::new();
        private.insert(LEASE_ID.into(), serde_json::Value::from(lease.lease_id.clone()));
        let start = system_time(lease.issue_time.as_ref())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        let mut out = Obj::new();
        out.insert("mount".into(), Val::str(mount.as_str()));
        out.insert("name".into(), Val::str(role));
        out.insert("username".into(), Val::str(r.data.get("username").cloned().unwrap_or_default()));
        out.insert("password".into(), Val::str(r.data.get("password").cloned().unwrap_or_default()));
        out.insert("lease_id".into(), Val::str(lease.lease_id.as_str()));
        out.insert("lease_duration".into(), Val::Num(lease.ttl_secs as f64));
        out.insert("lease_start_time".into(), Val::str(start));
        out.insert("lease_renewable".into(), Val::Bool(lease.renewable));
        Ok(Opened { result: out, private, renew_at: renew_at(&lease) })
    }

    async fn renew(&self, gw: &Gateway, private: &Private) -> Result<Option<SystemTime>, Diags> {
        let Some(id) = private.get(LEASE_ID).and_then(|v| v.as_str()) else { return Ok(None) };
        let req = pb::RenewLeaseRequest { lease_id: id.into(), increment_secs: 0 };
        let lease = gw
            .leases()
            .renew(gw.req(req))
            .await
            .map_err(|s| diag::gateway("renew the database credentials' lease", &s, None))?
            .into_inner();
        Ok(renew_at(&lease))
    }

    async fn close(&self, gw: &Gateway, private: &Private) -> Result<(), Diags> {
        let Some(id) = private.get(LEASE_ID).and_then(|v| v.as_str()) else { return Ok(()) };
        let req = pb::LeaseRef { lease_id: id.into() };
        super::deleted(gw.leases().revoke(gw.req(req)).await, "revoke the database credentials' lease")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_lists_round_trip_and_drift_reads_as_statements() {
        let list = vec![
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';".to_string(),
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\"".to_string(),
        ];
        let text = join_statements(&list);
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with("\"{{name}}\";"));
        let prior = Val::from_strings(list.clone());
        assert_eq!(statements_val(&text, &prior), prior);
        // Changed outside Terraform: split where statements end, not inside quotes.
        let drift = "CREATE ROLE \"a;b\" PASSWORD 'x;y'; GRANT x TO y";
        assert_eq!(
            statements_val(drift, &prior),
            Val::from_strings(["CREATE ROLE \"a;b\" PASSWORD 'x;y';".to_string(), "GRANT x TO y".to_string()])
        );
        assert_eq!(statements_val("", &Val::Null), Val::Null);
    }

    #[test]
    fn import_ids_name_the_mount_and_the_object() {
        let Ok(o) = import_path("db/prod/config/app", "config", "x") else { panic!("refused") };
        assert_eq!((o.get_str("backend"), o.get_str("name")), (Some("db/prod"), Some("app")));
        assert!(import_path("database/app", "config", "x").is_err());
        assert!(import_path("database/config/", "config", "x").is_err());
    }

    #[test]
    fn only_what_changed_sends_the_password() {
        let conn = |pw: &str, roles: &[&str]| -> Obj {
            let mut pg = Obj::new();
            pg.insert("connection_url".into(), Val::str("postgresql://{{username}}:{{password}}@h/db"));
            pg.insert("username".into(), Val::str("vault_admin"));
            pg.insert("password".into(), Val::str(pw));
            let mut o = Obj::new();
            o.insert("backend".into(), Val::str("database"));
            o.insert("name".into(), Val::str("app"));
            o.insert("allowed_roles".into(), Val::from_strings(roles.iter().map(|s| s.to_string())));
            o.insert("postgresql".into(), Val::List(vec![Val::Map(pg)]));
            o
        };
        let body = Connection.body(&conn("pw", &["a"]), &conn("pw", &["a"]), true);
        assert_eq!(body.get("password").map(|p| p.as_str()), Some("pw"));
        assert_eq!(body.get("allowed_roles").map(|p| p.as_str()), Some("a"));
        assert!(!Connection.body(&conn("pw", &["a", "b"]), &conn("pw", &["a", "b"]), false).contains_key("password"));
    }

    #[test]
    fn leases_renew_two_thirds_through_and_not_at_their_limit() {
        let at = |secs: i64| Some(prost_types::Timestamp { seconds: secs, nanos: 0 });
        let mut lease = pb::Lease {
            ttl_secs: 300,
            renewable: true,
            expire_time: at(1_000_300),
            max_expire_time: at(1_100_000),
            ..Default::default()
        };
        assert_eq!(renew_at(&lease), SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(1_000_200)));
        lease.max_expire_time = at(1_000_300);
        assert_eq!(renew_at(&lease), None);
        lease.renewable = false;
        assert_eq!(renew_at(&lease), None);
    }
}
