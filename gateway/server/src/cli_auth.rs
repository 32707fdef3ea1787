//! `keybridge auth ...` (login methods, their config and roles) and
//! `keybridge login`.

use std::collections::BTreeMap;

use clap::Subcommand;
use keybridge_proto::v1 as pb;
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::{Client, done, print_json, print_table, read_stdin, time};
use crate::error::Error;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// `auth enable kubernetes`, `auth enable jwt --path github`.
    Enable {
        /// The method type: `kubernetes` or `jwt`.
        kind: String,
        /// Where it answers (default: the type): `auth/<path>/...`.
        #[arg(long)]
        path: Option<String>,
        /// A free-text description of the method.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the enabled login methods and their types.
    List,
    /// Disable a method and revoke every token it issued.
    Disable {
        /// The method's path, e.g. `kubernetes` or `github`.
        path: String,
    },
    /// Configure a method: key=value, key=@file, key=- (stdin), e.g.
    /// `auth config write kubernetes pem_keys=@sa.pub issuer=https://kubernetes.default.svc`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Roles: `auth role write kubernetes app-service bound_service_account_names=app-sa ...`.
    #[command(subcommand)]
    Role(RoleCommand),
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Write a method's config, replacing the one it had.
    Write {
        /// The method's path, e.g. `kubernetes`.
        path: String,
        /// Settings as key=value, key=@file or key=- (stdin): `pem_keys=@sa.pub`.
        settings: Vec<String>,
    },
    /// Show a method's config (secrets redacted).
    Read {
        /// The method's path, e.g. `kubernetes`.
        path: String,
    },
}

#[derive(Subcommand)]
pub enum RoleCommand {
    /// Create a role, or replace its settings.
    Write {
        /// The method's path, e.g. `kubernetes`.
        path: String,
        /// The role's name, e.g. `app-service`.
        role: String,
        /// Settings as key=value, key=@file or key=- (stdin): `policies=app-service`.
        settings: Vec<String>,
    },
    /// Show a role's settings.
    Read {
        /// The method's path, e.g. `kubernetes`.
        path: String,
        /// The role's name, e.g. `app-service`.
        role: String,
    },
    /// List the names of a method's roles.
    List {
        /// The method's path, e.g. `kubernetes`.
        path: String,
    },
    /// Delete a role.
    Delete {
        /// The method's path, e.g. `kubernetes`.
        path: String,
        /// The role's name, e.g. `app-service`.
        role: String,
    },
}

/// `key=value` pairs where a value of `@file` is read from the file and
/// `-` from stdin (PEM keys, JWK sets, reviewer tokens).
fn settings(pairs: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| Error::Usage(format!("setting {p:?} is not key=value")))?;
        if k.is_empty() {
            return Err(Error::Usage(format!("setting {p:?} has an empty key")));
        }
        let v = if let Some(file) = v.strip_prefix('@') {
            std::fs::read_to_string(file).map_err(|e| Error::Read { path: file.to_string(), source: e })?
        } else if v == "-" {
            String::from_utf8(read_stdin()?.to_vec())
                .map_err(|_| Error::Usage(format!("stdin for {k} is not UTF-8")))?
        } else {
            v.to_string()
        };
        out.insert(k.to_string(), v.trim_end_matches('\n').to_string());
    }
    Ok(out)
}

fn print_settings(json: bool, s: &std::collections::HashMap<String, String>) {
    let sorted: BTreeMap<&String, &String> = s.iter().collect();
    if json {
        print_json(&json!(sorted));
    } else {
        let rows: Vec<(String, String)> = sorted
            .iter()
            .map(|(k, v)| {
                (k.to_string(), if v.contains('\n') { format!("<{} lines>", v.lines().count()) } else { v.to_string() })
            })
            .collect();
        print_table(&rows);
    }
}

pub async fn auth(c: &Client, cmd: AuthCommand) -> Result<(), Error> {
    let json = c.json();
    match cmd {
        AuthCommand::Enable { kind, path, description } => {
            let path = path.unwrap_or_else(|| kind.clone());
            let m =
                c.auth().enable(c.req(pb::EnableAuthRequest { path, r#type: kind, description })).await?.into_inner();
            if json {
                print_json(&json!({ "path": m.path, "type": m.r#type }));
            } else {
                println!("Success! Enabled the {} auth method at: auth/{}", m.r#type, m.path);
            }
        }
        AuthCommand::List => {
            let r = c.auth().list(c.req(pb::ListAuthRequest {})).await?.into_inner();
            if json {
                print_json(&json!(r
                    .methods
                    .iter()
                    .map(|m| json!({ "path": m.path, "type": m.r#type, "description": m.description, "created_time": time(&m.created_time) }))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<(String, String)> =
                    r.methods.iter().map(|m| (format!("auth/{}", m.path), m.r#type.clone())).collect();
                print_table(&rows);
            }
        }
        AuthCommand::Disable { path } => {
            c.auth().disable(c.req(pb::DisableAuthRequest { path: path.clone() })).await?;
            done(json, &format!("Success! Disabled the auth method at: auth/{path} (its tokens are revoked)"));
        }
        AuthCommand::Config(ConfigCommand::Write { path, settings: pairs }) => {
            let s = settings(&pairs)?;
            c.auth()
                .write_config(
                    c.req(pb::WriteAuthConfigRequest { path: path.clone(), settings: s.into_iter().collect() }),
                )
                .await?;
            done(json, &format!("Success! Configured auth/{path}"));
        }
        AuthCommand::Config(ConfigCommand::Read { path }) => {
            let r = c.auth().read_config(c.req(pb::ReadAuthConfigRequest { path })).await?.into_inner();
            print_settings(json, &r.settings);
        }
        AuthCommand::Role(RoleCommand::Write { path, role, settings: pairs }) => {
            let s = settings(&pairs)?;
            c.auth()
                .write_role(c.req(pb::WriteAuthRoleRequest {
                    path: path.clone(),
                    role: role.clone(),
                    settings: s.into_iter().collect(),
                }))
                .await?;
            done(json, &format!("Success! Wrote role {role} at auth/{path}"));
        }
        AuthCommand::Role(RoleCommand::Read { path, role }) => {
            let r = c.auth().read_role(c.req(pb::ReadAuthRoleRequest { path, role })).await?.into_inner();
            print_settings(json, &r.settings);
        }
        AuthCommand::Role(RoleCommand::List { path }) => {
            let r = c.auth().list_roles(c.req(pb::ListAuthRolesRequest { path })).await?.into_inner();
            if json {
                print_json(&json!(r.roles));
            } else {
                for role in r.roles {
                    println!("{role}");
                }
            }
        }
        AuthCommand::Role(RoleCommand::Delete { path, role }) => {
            c.auth().delete_role(c.req(pb::DeleteAuthRoleRequest { path, role: role.clone() })).await?;
            done(json, &format!("Success! Deleted role {role}"));
        }
    }
    Ok(())
}

/// `keybridge login PATH --role ROLE --jwt TOKEN|@file|-`.
pub async fn login(c: &Client, path: String, role: String, jwt: String) -> Result<(), Error> {
    let jwt = Zeroizing::new(if let Some(file) = jwt.strip_prefix('@') {
        std::fs::read_to_string(file).map_err(|e| Error::Read { path: file.to_string(), source: e })?
    } else if jwt == "-" {
        String::from_utf8(read_stdin()?.to_vec()).map_err(|_| Error::Usage("the JWT on stdin is not UTF-8".into()))?
    } else {
        jwt
    });
    let r = c
        .auth()
        .login(tonic::Request::new(pb::LoginRequest { path, role, jwt: jwt.trim().to_string() }))
        .await?
        .into_inner();
    let info = r.info.unwrap_or_default();
    if c.json() {
        print_json(&json!({
            "token": r.token,
            "accessor": info.accessor,
            "policies": info.policies,
            "display_name": info.display_name,
            "expire_time": time(&info.expire_time),
            "metadata": info.metadata.iter().collect::<BTreeMap<_, _>>(),
        }));
    } else {
        print_table(&[
            ("token".into(), r.token.clone()),
            ("token_accessor".into(), info.accessor.clone()),
            ("token_policies".into(), format!("{:?}", info.policies)),
            ("display_name".into(), info.display_name.clone()),
            ("expire_time".into(), time(&info.expire_time)),
        ]);
    }
    Ok(())
}
