//! `keybridge_auth_backend` (an auth method with its configuration) and
//! `keybridge_auth_kubernetes_role`.
//!
//! Both map typed attributes onto the gateway's settings maps: lists are
//! comma-separated, booleans `true`/`false`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use keybridge_proto::v1 as pb;

use super::{Caps, Private, Resource, join_list, split_list};
use crate::diag::{self, Diags};
use crate::gateway::{Gateway, not_found};
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

/// (attribute, setting key, type) of settings carried as attributes.
type Mapping = &'static [(&'static str, &'static str, Ty)];

const BACKEND_SETTINGS: Mapping = &[
    ("pem_keys", "pem_keys", Ty::Str),
    ("jwks", "jwks", Ty::Str),
    ("issuer", "issuer", Ty::Str),
    ("audience", "audience", Ty::Str),
    ("disable_audience_check", "disable_audience_check", Ty::Bool),
    ("token_review", "token_review", Ty::Bool),
    ("kubernetes_host", "kubernetes_host", Ty::Str),
    ("kubernetes_ca_cert", "kubernetes_ca_cert", Ty::Str),
    ("bound_issuer", "bound_issuer", Ty::Str),
];

const ROLE_SETTINGS: Mapping = &[
    ("bound_service_account_names", "bound_service_account_names", Ty::ListStr),
    ("bound_service_account_namespaces", "bound_service_account_namespaces", Ty::ListStr),
    ("audience", "audience", Ty::Str),
    ("policies", "policies", Ty::ListStr),
    ("ttl", "ttl", Ty::Str),
    ("max_ttl", "max_ttl", Ty::Str),
];

fn to_settings(obj: &Obj, mapping: Mapping) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (attr, key, ty) in mapping {
        let v = match (ty, obj.val(attr)) {
            (_, Val::Null | Val::Unknown) => continue,
            (Ty::ListStr, _) => join_list(&obj.get_strings(attr).unwrap_or_default()),
            (Ty::Bool, Val::Bool(b)) => b.to_string(),
            (_, Val::Str(s)) => s.to_string(),
            _ => continue,
        };
        out.insert((*key).to_string(), v);
    }
    out
}

/// Settings back to attributes; an empty setting stays null when the prior
/// state had it null.
fn from_settings(settings: &BTreeMap<String, String>, prior: &Obj, mapping: Mapping, out: &mut Obj) {
    for (attr, key, ty) in mapping {
        let v = match settings.get(*key) {
            None => Val::Null,
            Some(s) => match ty {
                Ty::ListStr => Val::from_strings(split_list(s)),
                Ty::Bool => Val::Bool(s.trim() == "true"),
                _ => Val::str(s.as_str()),
            },
        };
        let keep_null = prior.val(attr).is_null()
            && match &v {
                Val::Str(s) => s.is_empty(),
                Val::List(l) => l.is_empty(),
                Val::Bool(b) => !b,
                _ => false,
            };
        out.insert((*attr).to_string(), if keep_null { Val::Null } else { v });
    }
}

pub struct AuthBackend;

#[async_trait]
impl Resource for AuthBackend {
    fn name(&self) -> &'static str {
        "keybridge_auth_backend"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "An auth method (`kubernetes` or `jwt`) mounted under `auth/<path>`, with its configuration.",
            attrs: vec![
                attr(
                    "path",
                    Ty::Str,
                    Mode::Required,
                    "Where the method is mounted (`kubernetes`). Changing it replaces the method.",
                ),
                attr("type", Ty::Str, Mode::Required, "`kubernetes` or `jwt`. Changing it replaces the method."),
                attr("description", Ty::Str, Mode::Optional, "A description. Changing it replaces the method."),
                attr(
                    "pem_keys",
                    Ty::Str,
                    Mode::Optional,
                    "PEM public keys that sign the tokens (service-account signing keys).",
                ),
                attr(
                    "jwks",
                    Ty::Str,
                    Mode::Optional,
                    "A JWKS document with the signing keys, instead of or beside `pem_keys`.",
                ),
                attr("issuer", Ty::Str, Mode::Optional, "kubernetes: the issuer the tokens must name."),
                attr(
                    "audience",
                    Ty::Str,
                    Mode::Optional,
                    "kubernetes: the audience the tokens must name (required with `pem_keys` or `jwks`, unless `disable_audience_check`).",
                ),
                attr(
                    "disable_audience_check",
                    Ty::Bool,
                    Mode::Optional,
                    "kubernetes: accept tokens whatever their audience (not recommended).",
                ),
                attr(
                    "token_review",
                    Ty::Bool,
                    Mode::Optional,
                    "kubernetes: ask the Kubernetes API (TokenReview) about every login.",
                ),
                attr("kubernetes_host", Ty::Str, Mode::Optional, "kubernetes: the API server's URL, for TokenReview."),
                attr("kubernetes_ca_cert", Ty::Str, Mode::Optional, "kubernetes: PEM CA of the API server."),
                attr(
                    "token_reviewer_jwt",
                    Ty::Str,
                    Mode::Optional,
                    "kubernetes: the token TokenReview calls use. Stored in state (sensitive).",
                )
                .sensitive(),
                attr(
                    "token_reviewer_jwt_wo",
                    Ty::Str,
                    Mode::Optional,
                    "Write-only form of `token_reviewer_jwt`: never stored.",
                )
                .sensitive()
                .write_only(),
                attr(
                    "token_reviewer_jwt_wo_version",
                    Ty::Num,
                    Mode::Optional,
                    "Change it to send `token_reviewer_jwt_wo` again.",
                ),
                attr("bound_issuer", Ty::Str, Mode::Optional, "jwt: the issuer the tokens must name."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("path", "Where the auth method is mounted.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["path", "type", "description"]
    }

    fn validate(&self, config: &Obj, caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "path", "auth path", diags);
        let kind = config.get_str("type");
        if let Some(k) = kind
            && k != "kubernetes"
            && k != "jwt"
        {
            diags.push_error(
                "Unknown auth type",
                format!("{k:?} is not `kubernetes` or `jwt`."),
                Some(diag::path("type")),
            );
        }
        if kind == Some("jwt") {
            for a in [
                "issuer",
                "audience",
                "token_review",
                "kubernetes_host",
                "kubernetes_ca_cert",
                "token_reviewer_jwt",
                "token_reviewer_jwt_wo",
            ] {
                if !config.val(a).is_null() {
                    diags.push_error(
                        "Not a jwt setting",
                        format!("`{a}` applies to type kubernetes only."),
                        Some(diag::path(a)),
                    );
                }
            }
        }
        if kind == Some("kubernetes") && !config.val("bound_issuer").is_null() {
            diags.push_error(
                "Not a kubernetes setting",
                "`bound_issuer` applies to type jwt; kubernetes uses `issuer`.",
                Some(diag::path("bound_issuer")),
            );
        }
        if !config.val("token_reviewer_jwt").is_null() && !config.val("token_reviewer_jwt_wo").is_null() {
            diags.push_error(
                "Conflicting values",
                "Set `token_reviewer_jwt` or `token_reviewer_jwt_wo`, not both.",
                Some(diag::path("token_reviewer_jwt_wo")),
            );
        }
        if !config.val("token_reviewer_jwt_wo").is_null() && !caps.write_only {
            diags.push_error(
                "Write-only attributes need Terraform 1.11 or later",
                "Use `token_reviewer_jwt` or upgrade Terraform.",
                Some(diag::path("token_reviewer_jwt_wo")),
            );
        }
    }

    fn import_id_help(&self) -> &'static str {
        "the auth path: `kubernetes`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        Ok([("path".to_string(), Val::str(id.trim_start_matches("auth/")))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        let list = gw
            .auth()
            .list(gw.req(pb::ListAuthRequest {}))
            .await
            .map_err(|s| diag::gateway("list auth methods", &s, None))?;
        let Some(m) =
            list.into_inner().methods.into_iter().find(|m| super::mount_path(&m.path) == super::mount_path(&path))
        else {
            return Ok(None);
        };
        let settings = match gw.auth().read_config(gw.req(pb::ReadAuthConfigRequest { path: m.path.clone() })).await {
            Ok(s) => s.into_inner().settings.into_iter().collect(),
            Err(s) if not_found(&s) => BTreeMap::new(),
            Err(s) => return Err(diag::gateway("read the auth method's config", &s, None)),
        };
        let mut out = Obj::new();
        out.insert("path".into(), Val::str(path));
        out.insert("type".into(), Val::str(m.r#type));
        let desc = if m.description.is_empty() && prior.val("description").is_null() {
            Val::Null
        } else {
            Val::str(m.description)
        };
        out.insert("description".into(), desc);
        from_settings(&settings, prior, BACKEND_SETTINGS, &mut out);
        // The gateway shows the reviewer token as "<set>": keep what state had.
        let jwt = if settings.contains_key("token_reviewer_jwt") {
            prior.val("token_reviewer_jwt").clone()
        } else {
            Val::Null
        };
        out.insert("token_reviewer_jwt".into(), jwt);
        out.insert("token_reviewer_jwt_wo_version".into(), prior.val("token_reviewer_jwt_wo_version").clone());
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        let path = planned.get_str("path").unwrap_or_default().to_string();
        let req = pb::EnableAuthRequest {
            path: path.clone(),
            r#type: planned.get_str("type").unwrap_or_default().into(),
            description: planned.get_str("description").unwrap_or_default().into(),
        };
        gw.auth().enable(gw.req(req)).await.map_err(|s| diag::gateway("enable the auth method", &s, Some("path")))?;
        if let Err(d) = self.write_config(gw, planned, config).await {
            // No half-configured method left behind.
            let _ = gw.auth().disable(gw.req(pb::DisableAuthRequest { path })).await;
            return Err(d);
        }
        Ok(Private::new())
    }

    async fn update(
        &self,
        gw: &Gateway,
        _: &Obj,
        planned: &Obj,
        config: &Obj,
        private: &Private,
    ) -> Result<Private, Diags> {
        self.write_config(gw, planned, config).await?;
        Ok(private.clone())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        super::deleted(gw.auth().disable(gw.req(pb::DisableAuthRequest { path })).await, "disable the auth method")
    }
}

impl AuthBackend {
    /// Writes the whole configuration (the gateway replaces it). The
    /// write-only reviewer token comes from the configuration, which
    /// Terraform always sends in full at apply.
    async fn write_config(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<(), Diags> {
        let mut settings = to_settings(planned, BACKEND_SETTINGS);
        if let Some(jwt) = planned.get_str("token_reviewer_jwt").or_else(|| config.get_str("token_reviewer_jwt_wo")) {
            settings.insert("token_reviewer_jwt".into(), jwt.to_string());
        }
        if settings.is_empty() {
            return Ok(());
        }
        let req = pb::WriteAuthConfigRequest {
            path: planned.get_str("path").unwrap_or_default().into(),
            settings: settings.into_iter().collect(),
        };
        gw.auth().write_config(gw.req(req)).await.map_err(|s| diag::gateway("configure the auth method", &s, None))?;
        Ok(())
    }
}

pub struct KubernetesRole;

#[async_trait]
impl Resource for KubernetesRole {
    fn name(&self) -> &'static str {
        "keybridge_auth_kubernetes_role"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A role of a Kubernetes auth method: which service accounts may log in and with which policies.",
            attrs: vec![
                attr(
                    "backend",
                    Ty::Str,
                    Mode::Required,
                    "The auth method's path (`kubernetes`). Changing it replaces the role.",
                ),
                attr("role_name", Ty::Str, Mode::Required, "The role's name. Changing it replaces the role."),
                attr(
                    "bound_service_account_names",
                    Ty::ListStr,
                    Mode::Required,
                    "Service accounts that may log in (`*` for any).",
                ),
                attr(
                    "bound_service_account_namespaces",
                    Ty::ListStr,
                    Mode::Required,
                    "Their namespaces (`*` for any).",
                ),
                attr("audience", Ty::Str, Mode::Optional, "The audience the token must name."),
                attr("policies", Ty::ListStr, Mode::Optional, "Policies of the tokens the role gives."),
                attr("ttl", Ty::Str, Mode::Optional, "Token TTL, such as `1h`."),
                attr("max_ttl", Ty::Str, Mode::Optional, "Longest TTL after renewals, such as `24h`."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The auth method's path."), ("role_name", "The role's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["backend", "role_name"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "backend", "auth path", diags);
        super::check_segment(config, "role_name", "role name", diags);
        for a in ["ttl", "max_ttl"] {
            if let Some(t) = config.get_str(a)
                && t.trim().parse::<u64>().is_err()
                && humantime::parse_duration(t.trim()).is_err()
            {
                diags.push_error(
                    "Invalid duration",
                    format!("`{a}` is a duration such as 30m or 1h, or seconds."),
                    Some(diag::path(a)),
                );
            }
        }
        for a in ["bound_service_account_names", "bound_service_account_namespaces"] {
            if let Some(v) = config.get_strings(a)
                && (v.is_empty() || v.iter().any(|s| s.contains(',') || s.trim().is_empty()))
            {
                diags.push_error(
                    "Invalid list",
                    format!("`{a}` needs at least one non-empty name without commas."),
                    Some(diag::path(a)),
                );
            }
        }
    }

    fn import_id_help(&self) -> &'static str {
        "`<backend>/role/<name>`: `kubernetes/role/app-service`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        let id = id.trim_start_matches("auth/");
        let Some((backend, role)) = id.rsplit_once("/role/") else {
            return Err(Diags::error(
                "Invalid import id",
                "Import a role as `<backend>/role/<name>`, e.g. `kubernetes/role/app-service`.",
            ));
        };
        Ok([("backend".to_string(), Val::str(backend)), ("role_name".to_string(), Val::str(role))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let backend = prior.get_str("backend").unwrap_or_default().to_string();
        let role = prior.get_str("role_name").unwrap_or_default().to_string();
        let req = pb::ReadAuthRoleRequest { path: backend.clone(), role: role.clone() };
        let settings: BTreeMap<String, String> = match gw.auth().read_role(gw.req(req)).await {
            Ok(s) => s.into_inner().settings.into_iter().collect(),
            Err(s) if not_found(&s) => return Ok(None),
            Err(s) => return Err(diag::gateway("read the role", &s, None)),
        };
        let mut out = Obj::new();
        out.insert("backend".into(), Val::str(backend));
        out.insert("role_name".into(), Val::str(role));
        from_settings(&settings, prior, ROLE_SETTINGS, &mut out);
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        if self.read(gw, planned).await?.is_some() {
            return Err(super::already_exists("role_name", "Role"));
        }
        self.update(gw, planned, planned, config, &Private::new()).await
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, private: &Private) -> Result<Private, Diags> {
        let req = pb::WriteAuthRoleRequest {
            path: planned.get_str("backend").unwrap_or_default().into(),
            role: planned.get_str("role_name").unwrap_or_default().into(),
            settings: to_settings(planned, ROLE_SETTINGS).into_iter().collect(),
        };
        gw.auth().write_role(gw.req(req)).await.map_err(|s| diag::gateway("write the role", &s, None))?;
        Ok(private.clone())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let req = pb::DeleteAuthRoleRequest {
            path: prior.get_str("backend").unwrap_or_default().into(),
            role: prior.get_str("role_name").unwrap_or_default().into(),
        };
        super::deleted(gw.auth().delete_role(gw.req(req)).await, "delete the role")
    }
}
