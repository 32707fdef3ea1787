//! `keybridge_plugin`: a WASM engine component, uploaded and registered in
//! the gateway's catalog under a name and its SHA-256.

use async_trait::async_trait;
use keybridge_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::{Caps, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::Gateway;
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

/// The gateway's cap on a component's size.
const MAX_BYTES: u64 = 64 << 20;
const CHUNK: usize = 1 << 20;

pub struct Plugin;

fn read_file(path: &str) -> Result<Vec<u8>, Diags> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Diags::error_at("file", "Cannot read the plugin file", format!("{path}: {e}")))?;
    if meta.len() > MAX_BYTES {
        return Err(Diags::error_at(
            "file",
            "Plugin file too large",
            format!("{path} has {} bytes; the gateway takes at most 64 MiB.", meta.len()),
        ));
    }
    std::fs::read(path).map_err(|e| Diags::error_at("file", "Cannot read the plugin file", format!("{path}: {e}")))
}

#[async_trait]
impl Resource for Plugin {
    fn name(&self) -> &'static str {
        "keybridge_plugin"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A WASM secret engine (a WebAssembly component) registered in the plugin catalog. Mount it with \
                          `keybridge_mount` of type `plugin` and `config = { plugin = <name> }`.",
            attrs: vec![
                attr("name", Ty::Str, Mode::Required, "The plugin's catalog name. Changing it replaces the plugin."),
                attr(
                    "sha256",
                    Ty::Str,
                    Mode::Required,
                    "Hex SHA-256 of the component (`filesha256(file)`); the upload is refused if the file differs. Changing it registers the new version in place of the old.",
                ),
                attr("file", Ty::Str, Mode::Required, "Path of the `.wasm` component to upload."),
                attr("engine", Ty::Str, Mode::Computed, "The engine's name, as the component describes itself."),
                attr("engine_version", Ty::Str, Mode::Computed, "The engine's version."),
                attr("rotates", Ty::Bool, Mode::Computed, "Whether the engine can rotate credentials it issued."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("name", "The plugin's catalog name."), ("sha256", "The component's SHA-256.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["name", "sha256"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "name", "plugin name", diags);
        if let Some(d) = config.get_str("sha256")
            && (d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
        {
            diags.push_error(
                "Invalid digest",
                "`sha256` is 64 lowercase hex digits, as `filesha256()` gives.",
                Some(diag::path("sha256")),
            );
            return;
        }
        if let (Some(file), Some(digest)) = (config.get_str("file"), config.get_str("sha256")) {
            match read_file(file) {
                Ok(bytes) => {
                    let actual = hex::encode(Sha256::digest(&bytes));
                    if actual != digest {
                        diags.push_error(
                            "Digest does not match the file",
                            format!("{file} has SHA-256 {actual}; `sha256` says {digest}."),
                            Some(diag::path("sha256")),
                        );
                    }
                }
                Err(d) => diags.extend(d),
            }
        }
    }

    fn import_id_help(&self) -> &'static str {
        "`<name>@<sha256>`: `apikeys@3f2a…`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        let Some((name, sha)) = id.split_once('@') else {
            return Err(Diags::error("Invalid import id", "Import a plugin as `<name>@<sha256>`."));
        };
        Ok([("name".to_string(), Val::str(name)), ("sha256".to_string(), Val::str(sha))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let name = prior.get_str("name").unwrap_or_default().to_string();
        let sha = prior.get_str("sha256").unwrap_or_default().to_string();
        let list = gw.plugins().list(gw.req(pb::ListPluginsRequest { name: name.clone() })).await;
        let list = match list {
            Ok(l) => l.into_inner().plugins,
            Err(s) if crate::gateway::not_found(&s) => Vec::new(),
            Err(s) => return Err(diag::gateway("list plugins", &s, None)),
        };
        let Some(p) = list.into_iter().find(|p| p.name == name && p.sha256 == sha) else { return Ok(None) };
        let mut out = Obj::new();
        out.insert("name".into(), Val::str(p.name));
        out.insert("sha256".into(), Val::str(p.sha256));
        // The file is where the configuration took it from: not the gateway's.
        out.insert("file".into(), prior.val("file").clone());
        out.insert("engine".into(), Val::str(p.engine));
        out.insert("engine_version".into(), Val::str(p.engine_version));
        out.insert("rotates".into(), Val::Bool(p.rotates));
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        let name = planned.get_str("name").unwrap_or_default().to_string();
        let sha = planned.get_str("sha256").unwrap_or_default().to_string();
        let bytes = read_file(planned.get_str("file").unwrap_or_default())?;
        let mut chunks = vec![pb::RegisterPluginChunk { name, sha256: sha, data: Vec::new() }];
        chunks.extend(bytes.chunks(CHUNK).map(|c| pb::RegisterPluginChunk { data: c.to_vec(), ..Default::default() }));
        gw.plugins()
            .register(gw.req(tokio_stream::iter(chunks)))
            .await
            .map_err(|s| diag::gateway("register the plugin", &s, Some("file")))?;
        Ok(Private::new())
    }

    async fn update(&self, _: &Gateway, _: &Obj, _: &Obj, _: &Obj, private: &Private) -> Result<Private, Diags> {
        // Only `file` can change in place: same digest, same component.
        Ok(private.clone())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let req = pb::DeletePluginRequest {
            name: prior.get_str("name").unwrap_or_default().into(),
            sha256: prior.get_str("sha256").unwrap_or_default().into(),
        };
        super::deleted(gw.plugins().delete(gw.req(req)).await, "delete the plugin")
    }
}
