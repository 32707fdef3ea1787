//! `keybridge_secret` (resource, data source and ephemeral resource): a
//! secret's fields at a path under any mount.
//!
//! The resource takes the value either from `data` (sensitive, stored in
//! state like any attribute) or from `data_wo` (write-only: Terraform 1.11+
//! sends it during plan and apply and never stores it). A write-only value
//! is written when the resource is created, when `data_wo_version` changes,
//! and when someone wrote the secret outside Terraform (its version moved
//! past the one this provider wrote, which the provider keeps in private
//! state: a number, never a value).

use std::collections::BTreeMap;

use async_trait::async_trait;
use keybridge_proto::v1 as pb;
use zeroize::Zeroizing;

use super::{Caps, DataSource, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::{Gateway, not_found};
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

pub struct Secret;

const WRITTEN: &str = "written_version";

#[async_trait]
impl Resource for Secret {
    fn name(&self) -> &'static str {
        "keybridge_secret"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A secret: string fields at a path under a mount (`secret/app/db`). Give the fields as \
                          `data` (kept in state, marked sensitive) or, with Terraform 1.11 and later, as the \
                          write-only `data_wo` with `data_wo_version`, which never reaches state or plan files.",
            attrs: vec![
                attr(
                    "path",
                    Ty::Str,
                    Mode::Required,
                    "Full path, mount included: `secret/app/db`. Changing it replaces the secret.",
                ),
                attr("data", Ty::MapStr, Mode::Optional, "The secret's fields. Stored in state (sensitive).")
                    .sensitive(),
                attr(
                    "data_wo",
                    Ty::MapStr,
                    Mode::Optional,
                    "The secret's fields, write-only: never stored in state or plan.",
                )
                .sensitive()
                .write_only(),
                attr("data_wo_version", Ty::Num, Mode::Optional, "Change it to write a new `data_wo`."),
                attr("custom_metadata", Ty::MapStr, Mode::Optional, "Custom metadata: string keys and values."),
                attr("version", Ty::Num, Mode::Computed, "The secret's current version."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("path", "Full path of the secret, mount included.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["path"]
    }

    fn unknown_on_update(&self) -> &'static [&'static str] {
        &["version"]
    }

    fn validate(&self, config: &Obj, caps: Caps, diags: &mut Diags) {
        check_path(config, diags);
        let data = config.val("data");
        let wo = config.val("data_wo");
        if !data.is_null() && !wo.is_null() {
            diags.push_error(
                "Conflicting secret values",
                "Set either `data` or `data_wo`, not both.",
                Some(diag::path("data_wo")),
            );
        }
        if data.is_null() && wo.is_null() {
            diags.push_error(
                "Missing secret value",
                "Set `data` (stored in state) or `data_wo` (write-only, Terraform 1.11+).",
                Some(diag::path("data")),
            );
        }
        if !wo.is_null() && !caps.write_only {
            diags.push_error(
                "Write-only attributes need Terraform 1.11 or later",
                "This Terraform cannot send write-only values; use `data` or upgrade Terraform.",
                Some(diag::path("data_wo")),
            );
        }
        if wo.is_null() && !config.val("data_wo_version").is_null() {
            diags.push_error(
                "data_wo_version without data_wo",
                "`data_wo_version` only says when to write `data_wo` again; set `data_wo` or remove it.",
                Some(diag::path("data_wo_version")),
            );
        }
        for attr in ["data", "data_wo", "custom_metadata"] {
            if let Val::Map(m) = config.val(attr) {
                for key in m.keys() {
                    if key.is_empty() || key.chars().any(char::is_control) {
                        diags.push_error(
                            "Invalid key",
                            format!("Keys of `{attr}` must be non-empty and free of control characters."),
                            Some(diag::path_key(attr, key)),
                        );
                    }
                }
            }
        }
    }

    fn force_update(&self, prior: &Obj, config: &Obj, private: &Private) -> bool {
        let written = private.get(WRITTEN).and_then(serde_json::Value::as_f64);
        !config.val("data_wo").is_null() && written.is_some() && prior.get_num("version") != written
    }

    fn import_id_help(&self) -> &'static str {
        "the full path: `secret/database/app`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        // The value is not imported: state gets it (through `data`) only
        // once an apply confirms the configuration wants it there.
        Ok([("path".to_string(), Val::str(id.trim_end_matches('/')))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        let meta = match gw.secrets().describe(gw.req(pb::DescribeRequest { path: path.clone() })).await {
            Ok(r) => r.into_inner().metadata.unwrap_or_default(),
            Err(s) if not_found(&s) => return Ok(None),
            Err(s) => return Err(diag::gateway("read the secret's metadata", &s, None)),
        };
        let mut out = Obj::new();
        out.insert("path".into(), Val::str(path.clone()));
        out.insert("version".into(), Val::Num(meta.current_version as f64));
        out.insert("data_wo_version".into(), prior.val("data_wo_version").clone());
        let custom = if meta.custom_metadata.is_empty() && prior.val("custom_metadata").is_null() {
            Val::Null
        } else {
            Val::from_string_map(&meta.custom_metadata.into_iter().collect())
        };
        out.insert("custom_metadata".into(), custom);
        let data = if prior.val("data").is_null() {
            Val::Null
        } else {
            match current_fields(gw, &path).await? {
                Some(fields) => Val::Map(fields.iter().map(|(k, v)| (k.clone(), Val::str(v.as_str()))).collect()),
                None => Val::Null,
            }
        };
        out.insert("data".into(), data);
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        let path = planned.get_str("path").unwrap_or_default().to_string();
        let fields = desired_fields(planned, config);
        let put = pb::PutRequest { path: path.clone(), value: Some(fields_value(fields)), cas: Some(0) };
        let version = match gw.secrets().put(gw.req(put)).await {
            Ok(r) => r.into_inner().version.map(|v| v.version).unwrap_or_default(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                return Err(Diags::error_at(
                    "path",
                    "Secret already exists",
                    format!("{path} exists already; import it with `terraform import` to manage it ({})", s.message()),
                ));
            }
            Err(s) => return Err(diag::gateway("write the secret", &s, Some("path"))),
        };
        if let Some(custom) = planned.get_string_map("custom_metadata")
            && let Err(d) = put_metadata(gw, &path, custom).await
        {
            // No half-made secret: take the version back out.
            let del = pb::DeleteRequest { path, versions: vec![], all_versions: true, purge: true };
            let _ = gw.secrets().delete(gw.req(del)).await;
            return Err(d);
        }
        Ok(written(Private::new(), version))
    }

    async fn update(
        &self,
        gw: &Gateway,
        prior: &Obj,
        planned: &Obj,
        config: &Obj,
        private: &Private,
    ) -> Result<Private, Diags> {
        let path = planned.get_str("path").unwrap_or_default().to_string();
        let mut private = private.clone();
        let value_changed = planned.val("data") != prior.val("data")
            || planned.val("data_wo_version") != prior.val("data_wo_version")
            || self.force_update(prior, config, &private);
        if value_changed {
            let fields = desired_fields(planned, config);
            let current = current_fields(gw, &path).await?;
            // Unchanged fields (say, after an import) make no new version.
            if current.as_ref() != Some(&fields) {
                let cas = prior.get_num("version").map(|v| v as u64);
                let put = pb::PutRequest { path: path.clone(), value: Some(fields_value(fields)), cas };
                let version = match gw.secrets().put(gw.req(put)).await {
                    Ok(r) => r.into_inner().version.map(|v| v.version).unwrap_or_default(),
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        return Err(Diags::error(
                            "Secret changed during apply",
                            format!("{path} got a new version since the plan; run plan again ({})", s.message()),
                        ));
                    }
                    Err(s) => return Err(diag::gateway("write the secret", &s, None)),
                };
                private = written(private, version);
            } else if let Some(v) = prior.get_num("version") {
                private = written(private, v as u64);
            }
        }
        if planned.val("custom_metadata") != prior.val("custom_metadata") {
            put_metadata(gw, &path, planned.get_string_map("custom_metadata").unwrap_or_default()).await?;
        }
        Ok(private)
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let path = prior.get_str("path").unwrap_or_default().to_string();
        let req = pb::DeleteRequest { path, versions: vec![], all_versions: true, purge: false };
        super::deleted(gw.secrets().delete(gw.req(req)).await, "delete the secret")
    }
}

fn check_path(config: &Obj, diags: &mut Diags) {
    super::check_segment(config, "path", "secret path", diags);
    if let Some(p) = config.get_str("path")
        && (p.starts_with('/') || p.ends_with('/') || !p.contains('/'))
    {
        diags.push_error(
            "Invalid secret path",
            "`path` is the mount followed by the secret's path, without leading or trailing `/`: `secret/app/db`.",
            Some(diag::path("path")),
        );
    }
}

fn written(mut private: Private, version: u64) -> Private {
    private.insert(WRITTEN.into(), serde_json::Value::from(version));
    private
}

type Fields = BTreeMap<String, Zeroizing<String>>;

/// The fields the configuration wants: `data`, or `data_wo` from the
/// configuration (write-only values are null in plans).
fn desired_fields(planned: &Obj, config: &Obj) -> Fields {
    let m = planned.get_string_map("data").or_else(|| config.get_string_map("data_wo")).unwrap_or_default();
    m.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect()
}

fn fields_value(fields: Fields) -> pb::SecretValue {
    let fields = fields.into_iter().map(|(k, v)| (k, v.as_str().to_string())).collect();
    pb::SecretValue { kind: Some(pb::secret_value::Kind::Fields(pb::Fields { fields })) }
}

/// The latest version's fields; `None` if it is deleted or destroyed.
async fn current_fields(gw: &Gateway, path: &str) -> Result<Option<Fields>, Diags> {
    let req = pb::GetRequest { path: path.into(), ..Default::default() };
    match gw.secrets().get(gw.req(req)).await {
        Ok(r) => Ok(Some(value_fields(r.into_inner().value, "data")?)),
        Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Ok(None),
        Err(s) => Err(diag::gateway("read the secret", &s, None)),
    }
}

fn value_fields(value: Option<pb::SecretValue>, attr: &str) -> Result<Fields, Diags> {
    match value.and_then(|v| v.kind) {
        Some(pb::secret_value::Kind::Fields(f)) => {
            Ok(f.fields.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect())
        }
        Some(pb::secret_value::Kind::Text(t)) => Ok([("value".to_string(), Zeroizing::new(t))].into()),
        Some(pb::secret_value::Kind::Binary(_)) => Err(Diags::error_at(
            attr,
            "Binary secret",
            "The secret holds opaque bytes, not string fields; Terraform can only manage field maps.",
        )),
        None => Ok(Fields::new()),
    }
}

async fn put_metadata(gw: &Gateway, path: &str, custom: BTreeMap<String, String>) -> Result<(), Diags> {
    let req = pb::PutMetadataRequest {
        path: path.into(),
        custom_metadata: custom.into_iter().collect(),
        max_versions: None,
        cas_required: None,
        keep_custom_metadata: false,
    };
    gw.secrets()
        .put_metadata(gw.req(req))
        .await
        .map_err(|s| diag::gateway("write the secret's custom metadata", &s, Some("custom_metadata")))?;
    Ok(())
}

/// Data source and ephemeral resource `keybridge_secret`: reads a secret.
/// As a data source its fields land in state (sensitive); as an ephemeral
/// resource (Terraform 1.10+) they live only during the run.
pub struct SecretData;

#[async_trait]
impl DataSource for SecretData {
    fn name(&self) -> &'static str {
        "keybridge_secret"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "Reads a secret's fields. Prefer the ephemeral resource (Terraform 1.10+), whose values \
                          never reach state.",
            attrs: vec![
                attr("path", Ty::Str, Mode::Required, "Full path, mount included: `secret/app/db`."),
                attr("version", Ty::Num, Mode::OptionalComputed, "The version to read; the latest when unset."),
                attr("data", Ty::MapStr, Mode::Computed, "The secret's fields.").sensitive(),
                attr("custom_metadata", Ty::MapStr, Mode::Computed, "Custom metadata."),
            ],
            blocks: vec![],
        }
    }

    fn validate(&self, config: &Obj, diags: &mut Diags) {
        check_path(config, diags);
        if let Some(v) = config.get_num("version")
            && (v < 1.0 || v.fract() != 0.0)
        {
            diags.push_error("Invalid version", "`version` is a whole number from 1.", Some(diag::path("version")));
        }
    }

    async fn read(&self, gw: &Gateway, config: &Obj) -> Result<Obj, Diags> {
        let path = config.get_str("path").unwrap_or_default().to_string();
        let version = config.get_num("version").map(|v| v as u64).unwrap_or(0);
        let req = pb::GetRequest { path: path.clone(), version, ..Default::default() };
        let r = gw.secrets().get(gw.req(req)).await.map_err(|s| diag::gateway("read the secret", &s, Some("path")))?;
        let r = r.into_inner();
        let custom: BTreeMap<String, String> = r.custom_metadata.into_iter().collect();
        let version = r.version.as_ref().map(|v| v.version).unwrap_or_default();
        let fields = value_fields(r.value, "path")?;
        let mut out = Obj::new();
        out.insert("path".into(), Val::str(path));
        out.insert("version".into(), Val::Num(version as f64));
        out.insert("data".into(), Val::Map(fields.iter().map(|(k, v)| (k.clone(), Val::str(v.as_str()))).collect()));
        out.insert("custom_metadata".into(), Val::from_string_map(&custom));
        Ok(out)
    }
}
