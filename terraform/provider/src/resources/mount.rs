//! `keybridge_mount`: a secrets mount of any type (local, aws, azure, gcp,
//! plugin) with its settings.
//!
//! Settings are split by sensitivity. `config` holds ordinary settings;
//! credentials (the gateway's sensitive settings, which it shows as
//! `<redacted>`) go in `config_sensitive` (kept in state, marked sensitive)
//! or in the write-only `config_wo` (never stored; sent again when
//! `config_wo_version` changes, and with every settings change).

use std::collections::BTreeMap;

use async_trait::async_trait;
use keybridge_proto::v1 as pb;

use super::{Caps, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::Gateway;
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

/// The gateway's credential settings (keybridge-core `SENSITIVE_SETTINGS`).
const CREDENTIAL_KEYS: &[&str] = &["secret_access_key", "session_token", "client_secret"];
const REDACTED: &str = "<redacted>";
/// Private state: the names (not values) of the write-only settings sent.
const WO_KEYS: &str = "config_wo_keys";

pub struct Mount;

#[async_trait]
impl Resource for Mount {
    fn name(&self) -> &'static str {
        "keybridge_mount"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A secrets mount: the local encrypted store, a cloud secret manager (aws, azure, gcp) or a \
                          WASM engine (plugin), at a path such as `secret`.",
            attrs: vec![
                attr("path", Ty::Str, Mode::Required, "Where the mount is (`secret`, `aws-prod`). Changing it replaces the mount (and its local data)."),
                attr("type", Ty::Str, Mode::Required, "`local`, `aws`, `azure`, `gcp`, `plugin`, or a built-in engine (`database`, `pki`). Changing it replaces the mount."),
                attr("description", Ty::Str, Mode::Optional, "A description."),
                attr("config", Ty::MapStr, Mode::Optional, "Settings that are not credentials (region, endpoint, prefix, plugin, ...)."),
                attr("config_sensitive", Ty::MapStr, Mode::Optional, "Credential settings (secret_access_key, session_token, client_secret). Stored in state (sensitive).")
                    .sensitive(),
                attr("config_wo", Ty::MapStr, Mode::Optional, "Credential settings, write-only: never stored in state or plan.")
                    .sensitive()
                    .write_only(),
                attr("config_wo_version", Ty::Num, Mode::Optional, "Change it to send `config_wo` again."),
                attr("mount_id", Ty::Str, Mode::Computed, "The mount's identity at the gateway."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("path", "Where the mount is.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["path", "type"]
    }

    fn validate(&self, config: &Obj, caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "path", "mount path", diags);
        if let Val::Map(m) = config.val("config") {
            for k in m.keys().filter(|k| CREDENTIAL_KEYS.contains(&k.as_str())) {
                diags.push_error(
                    "Credential in config",
                    format!("`{k}` is a credential: set it in `config_sensitive` or the write-only `config_wo`."),
                    Some(diag::path_key("config", k)),
                );
            }
        }
        for a in ["config_sensitive", "config_wo"] {
            if let Val::Map(m) = config.val(a) {
                // The gateway shows other settings in clear, so state would
                // see them in `config`: a permanent difference.
                for k in m.keys().filter(|k| !CREDENTIAL_KEYS.contains(&k.as_str())) {
                    diags.push_error(
                        "Not a credential",
                        format!(
                            "`{k}` is not a credential setting ({}); set it in `config`.",
                            CREDENTIAL_KEYS.join(", ")
                        ),
                        Some(diag::path_key(a, k)),
                    );
                }
            }
            if let (Val::Map(m), Val::Map(plain)) = (config.val(a), config.val("config")) {
                for k in m.keys().filter(|k| plain.contains_key(*k)) {
                    diags.push_error(
                        "Setting given twice",
                        format!("`{k}` is in both `config` and `{a}`."),
                        Some(diag::path_key(a, k)),
                    );
                }
            }
        }
        if !config.val("config_sensitive").is_null() && !config.val("config_wo").is_null() {
            diags.push_error(
                "Conflicting values",
                "Set `config_sensitive` or `config_wo`, not both.",
                Some(diag::path("config_wo")),
            );
        }
        if !config.val("config_wo").is_null() && !caps.write_only {
            diags.push_error(
                "Write-only attributes need Terraform 1.11 or later",
                "Use `config_sensitive` or upgrade Terraform.",
                Some(diag::path("config_wo")),
            );
        }
        if config.val("config_wo").is_null() && !config.val("config_wo_version").is_null() {
            diags.push_error(
                "config_wo_version without config_wo",
                "Set `config_wo` or remove `config_wo_version`.",
                Some(diag::path("config_wo_version")),
            );
        }
    }

    fn import_id_help(&self) -> &'static str {
        "the mount path: `secret`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        Ok([("path".to_string(), Val::str(id.trim_end_matches('/')))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        let list = gw
            .sys()
            .list_mounts(gw.req(pb::ListMountsRequest {}))
            .await
            .map_err(|s| diag::gateway("list mounts", &s, None))?;
        let Some(m) = list.into_inner().mounts.into_iter().find(|m| m.path == super::mount_path(&path)) else {
            return Ok(None);
        };
        let mut out = Obj::new();
        out.insert("path".into(), Val::str(path));
        out.insert("type".into(), Val::str(m.r#type.clone()));
        out.insert("mount_id".into(), Val::str(m.id));
        let desc = if m.description.is_empty() && prior.val("description").is_null() {
            Val::Null
        } else {
            Val::str(m.description)
        };
        out.insert("description".into(), desc);
        let prior_plain = prior.get_string_map("config").unwrap_or_default();
        let prior_sensitive = prior.get_string_map("config_sensitive");
        let mut plain = BTreeMap::new();
        let mut sensitive = BTreeMap::new();
        for (k, v) in m.config {
            if v == REDACTED || CREDENTIAL_KEYS.contains(&k.as_str()) {
                // Credentials cannot be read back: keep the state's value.
                if let Some(old) = prior_sensitive.as_ref().and_then(|p| p.get(&k)) {
                    sensitive.insert(k, old.clone());
                }
            } else if m.r#type == "plugin" && k == "sha256" && !prior_plain.contains_key("sha256") {
                // The gateway pins the plugin's digest when none is given.
            } else {
                plain.insert(k, v);
            }
        }
        let plain =
            if plain.is_empty() && prior.val("config").is_null() { Val::Null } else { Val::from_string_map(&plain) };
        out.insert("config".into(), plain);
        let sensitive = match prior_sensitive {
            None => Val::Null,
            Some(_) => Val::from_string_map(&sensitive),
        };
        out.insert("config_sensitive".into(), sensitive);
        out.insert("config_wo_version".into(), prior.val("config_wo_version").clone());
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        let mut settings = planned.get_string_map("config").unwrap_or_default();
        let credentials = credentials(planned, config);
        let wo_keys: Vec<String> = config.get_string_map("config_wo").unwrap_or_default().into_keys().collect();
        settings.extend(credentials);
        let req = pb::EnableMountRequest {
            path: planned.get_str("path").unwrap_or_default().into(),
            r#type: planned.get_str("type").unwrap_or_default().into(),
            description: planned.get_str("description").unwrap_or_default().into(),
            config: settings.into_iter().collect(),
        };
        gw.sys().enable_mount(gw.req(req)).await.map_err(|s| diag::gateway("enable the mount", &s, Some("config")))?;
        let mut private = Private::new();
        private.insert(WO_KEYS.into(), serde_json::Value::from(wo_keys));
        Ok(private)
    }

    async fn update(
        &self,
        gw: &Gateway,
        prior: &Obj,
        planned: &Obj,
        config: &Obj,
        private: &Private,
    ) -> Result<Private, Diags> {
        let old_plain = prior.get_string_map("config").unwrap_or_default();
        let old_sensitive = prior.get_string_map("config_sensitive").unwrap_or_default();
        let old_wo: Vec<String> = private
            .get(WO_KEYS)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut changes = planned.get_string_map("config").unwrap_or_default();
        changes.extend(credentials(planned, config));
        // Settings no longer configured are removed (an empty value).
        for k in old_plain.keys().chain(old_sensitive.keys()).chain(old_wo.iter()) {
            changes.entry(k.clone()).or_default();
        }
        let description = (planned.val("description") != prior.val("description"))
            .then(|| planned.get_str("description").unwrap_or_default().to_string());
        let req = pb::TuneMountRequest {
            path: planned.get_str("path").unwrap_or_default().into(),
            description,
            config: changes.into_iter().collect(),
        };
        gw.sys().tune_mount(gw.req(req)).await.map_err(|s| diag::gateway("tune the mount", &s, Some("config")))?;
        let mut private = private.clone();
        let wo_keys: Vec<String> = config.get_string_map("config_wo").unwrap_or_default().into_keys().collect();
        private.insert(WO_KEYS.into(), serde_json::Value::from(wo_keys));
        Ok(private)
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        super::deleted(gw.sys().disable_mount(gw.req(pb::DisableMountRequest { path })).await, "disable the mount")
    }
}

/// Credentials to send: from `config_sensitive`, or the write-only
/// `config_wo` (present in the configuration at apply, null in plans).
fn credentials(planned: &Obj, config: &Obj) -> BTreeMap<String, String> {
    planned.get_string_map("config_sensitive").or_else(|| config.get_string_map("config_wo")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_credential_settings_are_the_gateways() {
        assert_eq!(super::CREDENTIAL_KEYS, keybridge_core::provider::settings::SENSITIVE);
    }
}
