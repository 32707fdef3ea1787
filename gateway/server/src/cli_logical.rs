//! `keybridge read|write|delete|list|path-help` (engine paths, as Vault's
//! CLI), `keybridge lease ...` and `keybridge plugin ...`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use clap::Subcommand;
use keybridge_client::Transport;
use keybridge_proto::v1 as pb;
use serde_json::{Value, json};
use sha2::Digest;

use crate::cli::{Client, done, print_json, print_table, time};
use crate::error::Error;

#[derive(Subcommand)]
pub enum LeaseCommand {
    /// Leases whose ids start with PREFIX (e.g. `apikeys/issue/`).
    List {
        /// The start of the lease ids to list, e.g. `apikeys/issue/` (default: every lease).
        #[arg(default_value = "")]
        prefix: String,
        /// Show at most this many (0: every one, read a page at a time).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Continue after this lease id (what the previous list printed to
        /// continue from).
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Show a lease: its TTL, whether it is renewable, and when it was issued and expires.
    Lookup {
        /// The lease id, e.g. `apikeys/issue/ci/<id>`.
        lease_id: String,
    },
    /// Extend a lease (`--increment 1h`; default: the engine's).
    Renew {
        /// The lease id, e.g. `apikeys/issue/ci/<id>`.
        lease_id: String,
        /// How much longer the lease should live, e.g. `1h`; never past its max TTL.
        #[arg(long, value_parser = humantime::parse_duration)]
        increment: Option<std::time::Duration>,
    },
    /// Revoke a lease now, or with --prefix every lease under a path.
    Revoke {
        /// The lease id (`apikeys/issue/ci/<id>`), or with --prefix a path: `apikeys/issue/`.
        lease_id: String,
        /// Revoke every lease whose id starts with LEASE_ID.
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Upload a WebAssembly component to the catalog:
    /// `plugin register apikeys --sha256 $(sha256sum f.wasm | cut -d' ' -f1) f.wasm`.
    Register {
        /// The plugin's name in the catalog, e.g. `apikeys`.
        name: String,
        /// The file's SHA-256 in hex; a file that does not match is not uploaded.
        #[arg(long)]
        sha256: String,
        /// The WebAssembly component file, e.g. `apikeys.wasm`.
        file: PathBuf,
    },
    /// Registered plugins (one name, or all).
    List {
        /// Only this plugin's versions (default: every plugin).
        #[arg(default_value = "")]
        name: String,
    },
    /// Remove a plugin's versions (one with --sha256) that no mount runs.
    Delete {
        /// The plugin's name, e.g. `apikeys`.
        name: String,
        /// Only the version with this SHA-256, in hex (default: every version).
        #[arg(long, default_value = "")]
        sha256: String,
    },
}

fn logical(c: &Client) -> pb::logical_client::LogicalClient<Transport> {
    c.api().logical()
}

fn leases(c: &Client) -> pb::leases_client::LeasesClient<Transport> {
    c.api().leases()
}

fn plugins(c: &Client) -> pb::plugins_client::PluginsClient<Transport> {
    c.api().plugins()
}

/// `k=v` pairs; `k=@file` reads the file, `k=-` reads stdin.
fn params(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = crate::cli::parse_pairs(pairs, "parameter")?;
    for v in out.values_mut() {
        if let Some(file) = v.strip_prefix('@') {
            *v = std::fs::read_to_string(file).map_err(|e| Error::Read { path: file.to_string(), source: e })?;
        } else if v == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            *v = s.trim_end_matches('\n').to_string();
        }
    }
    Ok(out)
}

pub(crate) fn lease_json(l: &pb::Lease) -> Value {
    json!({
        "lease_id": l.lease_id,
        "lease_duration": l.ttl_secs,
        "renewable": l.renewable,
        "issue_time": time(&l.issue_time),
        "expire_time": time(&l.expire_time),
        "max_expire_time": time(&l.max_expire_time),
        "revoke_attempts": l.revoke_attempts,
        "last_error": l.last_error,
    })
}

fn print_response(json_out: bool, r: pb::LogicalResponse, list: bool) {
    let data: BTreeMap<String, String> = r.data.into_iter().collect();
    if json_out {
        let mut out = json!({ "data": data });
        if let Some(l) = &r.lease {
            out["lease_id"] = json!(l.lease_id);
            out["lease_duration"] = json!(l.ttl_secs);
            out["renewable"] = json!(l.renewable);
        }
        out["warnings"] = json!(r.warnings);
        print_json(&out);
        return;
    }
    for w in &r.warnings {
        eprintln!("WARNING! {w}");
    }
    if list && let Some(keys) = data.get("keys").and_then(|k| serde_json::from_str::<Vec<String>>(k).ok()) {
        println!("Keys\n----");
        for k in keys {
            println!("{k}");
        }
        return;
    }
    let mut rows = Vec::new();
    if let Some(l) = &r.lease {
        rows.push(("lease_id".to_string(), l.lease_id.clone()));
        rows.push((
            "lease_duration".to_string(),
            humantime::format_duration(std::time::Duration::from_secs(l.ttl_secs)).to_string(),
        ));
        rows.push(("lease_renewable".to_string(), l.renewable.to_string()));
    }
    rows.extend(data);
    if rows.is_empty() {
        println!("Success! Data written to the path (no data returned).");
    } else {
        print_table(&rows);
    }
}

pub async fn read(c: &Client, path: String, pairs: Vec<String>) -> Result<(), Error> {
    let r = logical(c).read(c.req(pb::LogicalRequest { path, data: params(&pairs)?.into_iter().collect() })).await?;
    print_response(c.json(), r.into_inner(), false);
    Ok(())
}

pub async fn write(c: &Client, path: String, pairs: Vec<String>) -> Result<(), Error> {
    let r = logical(c).write(c.req(pb::LogicalRequest { path, data: params(&pairs)?.into_iter().collect() })).await?;
    print_response(c.json(), r.into_inner(), false);
    Ok(())
}

pub async fn delete(c: &Client, path: String) -> Result<(), Error> {
    let r = logical(c).delete(c.req(pb::LogicalRequest { path: path.clone(), data: Default::default() })).await?;
    let r = r.into_inner();
    if c.json() || !r.data.is_empty() {
        print_response(c.json(), r, false);
    } else {
        done(false, &format!("Success! Data deleted (if it existed) at: {path}"));
    }
    Ok(())
}

pub async fn list(c: &Client, path: String) -> Result<(), Error> {
    let r = logical(c).list(c.req(pb::LogicalRequest { path, data: Default::default() })).await?;
    print_response(c.json(), r.into_inner(), true);
    Ok(())
}

pub async fn path_help(c: &Client, path: String) -> Result<(), Error> {
    let h = logical(c).path_help(c.req(pb::PathHelpRequest { path })).await?.into_inner();
    let field_json = |f: &pb::EngineField| json!({"name": f.name, "type": f.kind, "description": f.description, "required": f.required, "default": f.default_value});
    if c.json() {
        print_json(&json!({
            "mount": h.mount, "engine": h.engine, "version": h.engine_version, "description": h.description,
            "matched": h.matched, "rotates": h.rotates,
            "paths": h.paths.iter().map(|p| json!({
                "pattern": p.pattern, "synopsis": p.synopsis, "description": p.description,
                "operations": p.operations, "existence_check": p.existence_check,
                "fields": p.fields.iter().map(field_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "config_keys": h.config_keys.iter().map(field_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let show: Vec<&pb::EnginePath> = if h.matched.is_empty() {
        h.paths.iter().collect()
    } else {
        h.paths.iter().filter(|p| p.pattern == h.matched).collect()
    };
    if h.matched.is_empty() {
        println!("## ENGINE\n\n{} {} at {}\n\n{}\n", h.engine, h.engine_version, h.mount, h.description);
        if !h.config_keys.is_empty() {
            println!("## CONFIG\n");
            for f in &h.config_keys {
                println!(
                    "    {} ({}){}\n        {}",
                    f.name,
                    f.kind,
                    if f.required { ", required" } else { "" },
                    f.description
                );
            }
            println!();
        }
        println!("## PATHS\n");
    }
    for p in show {
        println!("{}{}  [{}]", h.mount, p.pattern, p.operations.join(", "));
        if !p.synopsis.is_empty() {
            println!("    {}", p.synopsis);
        }
        if !p.description.is_empty() {
            println!("\n    {}", p.description.replace('\n', "\n    "));
        }
        for f in &p.fields {
            let default =
                if f.default_value.is_empty() { String::new() } else { format!(", default {}", f.default_value) };
            println!(
                "    {} ({}{}{})\n        {}",
                f.name,
                f.kind,
                if f.required { ", required" } else { "" },
                default,
                f.description
            );
        }
        println!();
    }
    Ok(())
}

pub async fn lease(c: &Client, cmd: LeaseCommand) -> Result<(), Error> {
    let json_out = c.json();
    match cmd {
        LeaseCommand::List { prefix, limit, after } => {
            // Pages of at most 1000 until `limit`: a million leases are
            // never one message, nor held by the server for one call.
            let mut found: Vec<pb::Lease> = Vec::new();
            let mut page_token = after;
            let more = loop {
                let want = if limit == 0 { 1000 } else { (limit - found.len()).min(1000) };
                let r = leases(c)
                    .list(c.req(pb::ListLeasesRequest {
                        prefix: prefix.clone(),
                        page_size: want as u32,
                        page_token: page_token.clone(),
                    }))
                    .await?
                    .into_inner();
                found.extend(r.leases);
                if r.next_page_token.is_empty() {
                    break None;
                }
                page_token = r.next_page_token;
                if limit != 0 && found.len() >= limit {
                    break Some(page_token);
                }
            };
            if json_out {
                print_json(&Value::Array(found.iter().map(lease_json).collect()));
            } else if found.is_empty() {
                println!("No leases.");
            } else {
                println!("{:<64}  {:>10}  {:<9}  Expires", "Lease", "TTL (s)", "Renewable");
                for l in &found {
                    let note = if l.revoke_attempts > 0 {
                        format!("  (revocation failed {}x: {})", l.revoke_attempts, l.last_error)
                    } else {
                        String::new()
                    };
                    println!(
                        "{:<64}  {:>10}  {:<9}  {}{note}",
                        l.lease_id,
                        l.ttl_secs,
                        l.renewable,
                        time(&l.expire_time)
                    );
                }
            }
            if let Some(token) = more {
                eprintln!("More leases follow: keybridge lease list {prefix} --after {token}");
            }
        }
        LeaseCommand::Lookup { lease_id } => {
            let l = leases(c).lookup(c.req(pb::LeaseRef { lease_id })).await?.into_inner();
            print_lease(json_out, &l);
        }
        LeaseCommand::Renew { lease_id, increment } => {
            let increment_secs = increment.map_or(0, |d| d.as_secs());
            let l = leases(c).renew(c.req(pb::RenewLeaseRequest { lease_id, increment_secs })).await?.into_inner();
            print_lease(json_out, &l);
        }
        LeaseCommand::Revoke { lease_id, prefix } => {
            let n = if prefix {
                leases(c).revoke_prefix(c.req(pb::RevokePrefixRequest { prefix: lease_id.clone() })).await?.into_inner()
            } else {
                leases(c).revoke(c.req(pb::LeaseRef { lease_id: lease_id.clone() })).await?.into_inner()
            };
            if json_out {
                print_json(&json!({ "revoked": n.revoked }));
            } else {
                println!("Success! Revoked {} lease(s) at {lease_id}", n.revoked);
            }
        }
    }
    Ok(())
}

fn print_lease(json_out: bool, l: &pb::Lease) {
    if json_out {
        print_json(&lease_json(l));
    } else {
        print_table(&[
            ("lease_id".into(), l.lease_id.clone()),
            ("ttl".into(), humantime::format_duration(std::time::Duration::from_secs(l.ttl_secs)).to_string()),
            ("renewable".into(), l.renewable.to_string()),
            ("issue_time".into(), time(&l.issue_time)),
            ("expire_time".into(), time(&l.expire_time)),
            ("max_expire_time".into(), time(&l.max_expire_time)),
        ]);
    }
}

fn plugin_json(p: &pb::PluginVersion) -> Value {
    json!({
        "name": p.name, "sha256": p.sha256, "size": p.size, "registered": time(&p.register_time),
        "engine": p.engine, "engine_version": p.engine_version, "description": p.description,
        "rotates": p.rotates, "paths": p.paths,
    })
}

/// Bytes per upload message: well under gRPC's default 4 MiB.
const CHUNK: usize = 1 << 20;

pub async fn plugin(c: &Client, cmd: PluginCommand) -> Result<(), Error> {
    let json_out = c.json();
    match cmd {
        PluginCommand::Register { name, sha256, file } => {
            let bytes =
                std::fs::read(&file).map_err(|e| Error::Read { path: file.display().to_string(), source: e })?;
            let actual = hex_digest(&bytes);
            if !actual.eq_ignore_ascii_case(sha256.trim()) {
                return Err(Error::Usage(format!(
                    "{} has SHA-256 {actual}, not the {sha256} given; refusing to upload a changed file",
                    file.display()
                )));
            }
            let mut msgs = vec![pb::RegisterPluginChunk { name, sha256, data: Vec::new() }];
            msgs.extend(
                bytes.chunks(CHUNK).map(|b| pb::RegisterPluginChunk { data: b.to_vec(), ..Default::default() }),
            );
            let v = plugins(c).register(c.req(tokio_stream::iter(msgs))).await?.into_inner();
            if json_out {
                print_json(&plugin_json(&v));
            } else {
                println!(
                    "Success! Registered plugin {} ({} {}, {} bytes, sha256 {})",
                    v.name, v.engine, v.engine_version, v.size, v.sha256
                );
            }
        }
        PluginCommand::List { name } => {
            let r = plugins(c).list(c.req(pb::ListPluginsRequest { name })).await?.into_inner();
            if json_out {
                print_json(&Value::Array(r.plugins.iter().map(plugin_json).collect()));
            } else if r.plugins.is_empty() {
                println!("No plugins registered.");
            } else {
                println!("{:<20}  {:<16}  {:<64}  Registered", "Name", "Engine", "SHA-256");
                for p in &r.plugins {
                    println!(
                        "{:<20}  {:<16}  {:<64}  {}",
                        p.name,
                        format!("{} {}", p.engine, p.engine_version),
                        p.sha256,
                        time(&p.register_time)
                    );
                }
            }
        }
        PluginCommand::Delete { name, sha256 } => {
            let r =
                plugins(c).delete(c.req(pb::DeletePluginRequest { name: name.clone(), sha256 })).await?.into_inner();
            done(json_out, &format!("Success! Deleted {} version(s) of plugin {name}", r.deleted));
        }
    }
    Ok(())
}

fn hex_digest(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}
