//! The `tfplugin6.Provider` service: schemas, validation, and the plan and
//! apply logic shared by every resource.

use std::collections::BTreeMap;
use std::sync::RwLock;

use tonic::{Request, Response, Status};

use crate::diag::{self, Diags};
use crate::gateway::{Gateway, Settings};
use crate::resources::{self, Caps, DataSource, Ephemeral, Private, Resource};
use crate::schema::{Mode, Schema, Ty, attr};
use crate::tfplugin6::{self as tf, provider_server};
use crate::value::{Obj, ObjExt, Val, decode_obj, encode_obj};

pub struct Provider {
    resources: BTreeMap<&'static str, Box<dyn Resource>>,
    data_sources: BTreeMap<&'static str, Box<dyn DataSource>>,
    ephemeral: BTreeMap<&'static str, Box<dyn Ephemeral>>,
    gateway: RwLock<Option<Gateway>>,
}

pub fn provider_schema() -> Schema {
    Schema {
        version: 0,
        description: "Keybridge, the multi-cloud secrets gateway. Talks to the gateway's gRPC API only.",
        attrs: vec![
            attr(
                "address",
                Ty::Str,
                Mode::Optional,
                "The gateway's address (`https://keybridge:8400`). Default: KEYBRIDGE_ADDR.",
            ),
            attr("token", Ty::Str, Mode::Optional, "A Keybridge token. Default: KEYBRIDGE_TOKEN.").sensitive(),
            attr(
                "ca_cert",
                Ty::Str,
                Mode::Optional,
                "Path of a PEM CA certificate for the gateway's TLS. Default: KEYBRIDGE_CACERT.",
            ),
        ],
        blocks: vec![],
    }
}

type Rpc<T> = Result<Response<T>, Status>;

fn bad_request(e: crate::error::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

fn private_of(bytes: &[u8]) -> Private {
    serde_json::from_slice(bytes).unwrap_or_default()
}

fn private_bytes(p: &Private) -> Vec<u8> {
    if p.is_empty() { Vec::new() } else { serde_json::to_vec(p).unwrap_or_default() }
}

fn caps_of(c: Option<&tf::ClientCapabilities>) -> Caps {
    Caps { write_only: c.is_some_and(|c| c.write_only_attributes_allowed) }
}

/// Planned values fill in with what the gateway reports where the plan
/// left them unknown; known planned values stay as planned.
fn fill_unknowns(schema: &Schema, planned: &Obj, remote: &Obj) -> Obj {
    let mut out = planned.clone();
    for a in &schema.attrs {
        if planned.val(a.name).is_unknown() {
            out.insert(a.name.into(), remote.val(a.name).clone());
        }
    }
    schema.stored(out)
}

impl Default for Provider {
    fn default() -> Provider {
        Provider::new()
    }
}

impl Provider {
    pub fn new() -> Provider {
        Provider {
            resources: resources::resources().into_iter().map(|r| (r.name(), r)).collect(),
            data_sources: resources::data_sources().into_iter().map(|r| (r.name(), r)).collect(),
            ephemeral: resources::ephemeral_resources().into_iter().map(|r| (r.name(), r)).collect(),
            gateway: RwLock::new(None),
        }
    }

    fn resource(&self, name: &str) -> Result<&dyn Resource, Status> {
        self.resources
            .get(name)
            .map(|r| r.as_ref())
            .ok_or_else(|| Status::not_found(format!("no resource type {name}")))
    }

    fn data_source(&self, name: &str) -> Result<&dyn DataSource, Status> {
        self.data_sources
            .get(name)
            .map(|r| r.as_ref())
            .ok_or_else(|| Status::not_found(format!("no data source type {name}")))
    }

    fn ephemeral(&self, name: &str) -> Result<&dyn Ephemeral, Status> {
        self.ephemeral
            .get(name)
            .map(|r| r.as_ref())
            .ok_or_else(|| Status::not_found(format!("no ephemeral resource type {name}")))
    }

    fn gateway(&self) -> Result<Gateway, Diags> {
        self.gateway.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            Diags::error("Provider not configured", "The keybridge provider was used before Terraform configured it.")
        })
    }

    async fn apply(
        &self,
        r: &dyn Resource,
        req: &tf::apply_resource_change::Request,
    ) -> Result<(Option<Obj>, Private, Diags), Status> {
        let schema = r.schema();
        let prior = decode_obj(req.prior_state.as_ref()).map_err(bad_request)?;
        let planned = decode_obj(req.planned_state.as_ref()).map_err(bad_request)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let private = private_of(&req.planned_private);
        let gw = match self.gateway() {
            Ok(g) => g,
            Err(d) => return Ok((prior, private, d)),
        };
        Ok(match (prior, planned) {
            (None, None) => (None, private, Diags::default()),
            (Some(prior), None) => match r.delete(&gw, &prior).await {
                Ok(()) => (None, Private::new(), Diags::default()),
                Err(d) => (Some(prior), private, d),
            },
            (None, Some(planned)) => match r.create(&gw, &planned, &config).await {
                Ok(p) => match r.read(&gw, &planned).await {
                    Ok(Some(remote)) => (Some(fill_unknowns(&schema, &planned, &remote)), p, Diags::default()),
                    Ok(None) => (
                        None,
                        p,
                        Diags::error(
                            "Created object vanished",
                            "The gateway does not show the object it just created.",
                        ),
                    ),
                    Err(d) => (Some(fill_unknowns(&schema, &planned, &Obj::new())), p, d),
                },
                Err(d) => (None, private, d),
            },
            (Some(prior), Some(planned)) => match r.update(&gw, &prior, &planned, &config, &private).await {
                Ok(p) => match r.read(&gw, &planned).await {
                    Ok(Some(remote)) => (Some(fill_unknowns(&schema, &planned, &remote)), p, Diags::default()),
                    Ok(None) => {
                        (None, p, Diags::error("Updated object vanished", "The gateway no longer shows the object."))
                    }
                    Err(d) => (Some(prior), p, d),
                },
                Err(d) => (Some(prior), private, d),
            },
        })
    }
}

#[tonic::async_trait]
impl provider_server::Provider for Provider {
    async fn get_metadata(&self, _: Request<tf::get_metadata::Request>) -> Rpc<tf::get_metadata::Response> {
        use tf::get_metadata as m;
        Ok(Response::new(m::Response {
            server_capabilities: Some(tf::ServerCapabilities::default()),
            diagnostics: vec![],
            resources: self.resources.keys().map(|n| m::ResourceMetadata { type_name: (*n).into() }).collect(),
            data_sources: self.data_sources.keys().map(|n| m::DataSourceMetadata { type_name: (*n).into() }).collect(),
            ephemeral_resources: self
                .ephemeral
                .keys()
                .map(|n| m::EphemeralMetadata { type_name: (*n).into() })
                .collect(),
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<tf::get_provider_schema::Request>,
    ) -> Rpc<tf::get_provider_schema::Response> {
        Ok(Response::new(tf::get_provider_schema::Response {
            provider: Some(provider_schema().to_proto()),
            resource_schemas: self.resources.iter().map(|(n, r)| ((*n).into(), r.schema().to_proto())).collect(),
            data_source_schemas: self.data_sources.iter().map(|(n, r)| ((*n).into(), r.schema().to_proto())).collect(),
            ephemeral_resource_schemas: self
                .ephemeral
                .iter()
                .map(|(n, r)| ((*n).into(), r.schema().to_proto()))
                .collect(),
            diagnostics: vec![],
            server_capabilities: Some(tf::ServerCapabilities::default()),
        }))
    }

    async fn validate_provider_config(
        &self,
        req: Request<tf::validate_provider_config::Request>,
    ) -> Rpc<tf::validate_provider_config::Response> {
        let config = decode_obj(req.get_ref().config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let mut diags = Diags::default();
        if let Some(a) = config.get_str("address")
            && a.contains("://")
            && !a.starts_with("http://")
            && !a.starts_with("https://")
        {
            diags.push_error(
                "Invalid Keybridge address",
                "`address` is host:port or an http:// or https:// URL.",
                Some(diag::path("address")),
            );
        }
        Ok(Response::new(tf::validate_provider_config::Response { diagnostics: diags.0 }))
    }

    async fn configure_provider(
        &self,
        req: Request<tf::configure_provider::Request>,
    ) -> Rpc<tf::configure_provider::Response> {
        let config = decode_obj(req.get_ref().config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        for a in ["address", "token", "ca_cert"] {
            if config.val(a).is_unknown() {
                let d = Diags::error_at(
                    a,
                    "Provider setting not known yet",
                    format!("`{a}` depends on a value known only after apply; the provider needs it to plan."),
                );
                return Ok(Response::new(tf::configure_provider::Response { diagnostics: d.0 }));
            }
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let settings = Settings {
            address: config.get_str("address").map(str::to_string).or_else(|| env("KEYBRIDGE_ADDR")),
            token: config
                .get_str("token")
                .map(str::to_string)
                .or_else(|| env("KEYBRIDGE_TOKEN"))
                .map(zeroize::Zeroizing::new),
            ca_cert: config.get_str("ca_cert").map(str::to_string).or_else(|| env("KEYBRIDGE_CACERT")),
        };
        let diags = match Gateway::new(settings) {
            Ok(gw) => {
                *self.gateway.write().unwrap_or_else(|p| p.into_inner()) = Some(gw);
                Diags::default()
            }
            Err(d) => d,
        };
        Ok(Response::new(tf::configure_provider::Response { diagnostics: diags.0 }))
    }

    async fn validate_resource_config(
        &self,
        req: Request<tf::validate_resource_config::Request>,
    ) -> Rpc<tf::validate_resource_config::Response> {
        let req = req.into_inner();
        let r = self.resource(&req.type_name)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let mut diags = Diags::default();
        r.validate(&config, caps_of(req.client_capabilities.as_ref()), &mut diags);
        Ok(Response::new(tf::validate_resource_config::Response { diagnostics: diags.0 }))
    }

    async fn validate_data_resource_config(
        &self,
        req: Request<tf::validate_data_resource_config::Request>,
    ) -> Rpc<tf::validate_data_resource_config::Response> {
        let req = req.into_inner();
        let r = self.data_source(&req.type_name)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let mut diags = Diags::default();
        r.validate(&config, &mut diags);
        Ok(Response::new(tf::validate_data_resource_config::Response { diagnostics: diags.0 }))
    }

    async fn upgrade_resource_state(
        &self,
        req: Request<tf::upgrade_resource_state::Request>,
    ) -> Rpc<tf::upgrade_resource_state::Response> {
        let req = req.into_inner();
        let schema = self.resource(&req.type_name)?.schema();
        let fail = |summary: &str, detail: String| {
            Ok(Response::new(tf::upgrade_resource_state::Response {
                upgraded_state: None,
                diagnostics: Diags::error(summary, detail).0,
            }))
        };
        if req.version > schema.version {
            return fail(
                "State from a newer provider",
                format!(
                    "The state has schema version {}; this provider knows up to {}. Upgrade the provider.",
                    req.version, schema.version
                ),
            );
        }
        let raw = req.raw_state.unwrap_or_default();
        if raw.json.is_empty() {
            return fail(
                "Unsupported state format",
                "The state is in the pre-0.12 flatmap format, which this provider never wrote.".into(),
            );
        }
        let obj = match serde_json::from_slice(&raw.json).map(Val::from_json) {
            Ok(Val::Map(m)) => m,
            _ => return fail("Unreadable state", "The stored state is not a JSON object.".into()),
        };
        let obj = schema.normalize(obj);
        Ok(Response::new(tf::upgrade_resource_state::Response {
            upgraded_state: Some(encode_obj(Some(&obj))),
            diagnostics: vec![],
        }))
    }

    async fn get_resource_identity_schemas(
        &self,
        _: Request<tf::get_resource_identity_schemas::Request>,
    ) -> Rpc<tf::get_resource_identity_schemas::Response> {
        Ok(Response::new(tf::get_resource_identity_schemas::Response {
            identity_schemas: self.resources.iter().map(|(n, r)| ((*n).into(), r.identity().to_proto())).collect(),
            diagnostics: vec![],
        }))
    }

    async fn upgrade_resource_identity(
        &self,
        req: Request<tf::upgrade_resource_identity::Request>,
    ) -> Rpc<tf::upgrade_resource_identity::Response> {
        let req = req.into_inner();
        let identity = self.resource(&req.type_name)?.identity();
        let obj = match serde_json::from_slice(&req.raw_identity).map(Val::from_json) {
            Ok(Val::Map(m)) => m,
            _ => {
                let d = Diags::error("Unreadable identity", "The stored resource identity is not a JSON object.");
                return Ok(Response::new(tf::upgrade_resource_identity::Response {
                    upgraded_identity: None,
                    diagnostics: d.0,
                }));
            }
        };
        let upgraded = identity.data(&obj);
        let diags = if upgraded.is_none() {
            Diags::error("Incomplete identity", "The stored identity lacks attributes.").0
        } else {
            vec![]
        };
        Ok(Response::new(tf::upgrade_resource_identity::Response { upgraded_identity: upgraded, diagnostics: diags }))
    }

    async fn read_resource(&self, req: Request<tf::read_resource::Request>) -> Rpc<tf::read_resource::Response> {
        let req = req.into_inner();
        let r = self.resource(&req.type_name)?;
        let schema = r.schema();
        let identity = r.identity();
        let Some(prior) = decode_obj(req.current_state.as_ref()).map_err(bad_request)? else {
            return Ok(Response::new(tf::read_resource::Response {
                new_state: req.current_state,
                private: req.private,
                ..Default::default()
            }));
        };
        let result = match self.gateway() {
            Ok(gw) => r.read(&gw, &prior).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(match result {
            Ok(Some(obj)) => {
                let obj = schema.stored(obj);
                tf::read_resource::Response {
                    new_identity: identity.data(&obj),
                    new_state: Some(encode_obj(Some(&obj))),
                    private: req.private,
                    ..Default::default()
                }
            }
            Ok(None) => tf::read_resource::Response { new_state: Some(encode_obj(None)), ..Default::default() },
            Err(d) => tf::read_resource::Response {
                new_state: req.current_state,
                private: req.private,
                diagnostics: d.0,
                new_identity: req.current_identity,
                ..Default::default()
            },
        }))
    }

    async fn plan_resource_change(
        &self,
        req: Request<tf::plan_resource_change::Request>,
    ) -> Rpc<tf::plan_resource_change::Response> {
        let req = req.into_inner();
        let r = self.resource(&req.type_name)?;
        let schema = r.schema();
        let prior = decode_obj(req.prior_state.as_ref()).map_err(bad_request)?;
        let Some(proposed) = decode_obj(req.proposed_new_state.as_ref()).map_err(bad_request)? else {
            // Destroy: nothing to plan.
            return Ok(Response::new(tf::plan_resource_change::Response {
                planned_state: req.proposed_new_state,
                planned_private: req.prior_private,
                ..Default::default()
            }));
        };
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let private = private_of(&req.prior_private);
        let mut planned = schema.stored(proposed);
        let mut requires_replace = Vec::new();
        match &prior {
            None => {
                for a in schema.attrs.iter().filter(|a| a.computed()) {
                    if planned.val(a.name).is_null() {
                        planned.insert(a.name.into(), Val::Unknown);
                    }
                }
            }
            Some(prior) => {
                let mut diags = Diags::default();
                r.check_update(prior, &config, &mut diags);
                if diags.has_errors() {
                    return Ok(Response::new(tf::plan_resource_change::Response {
                        diagnostics: diags.0,
                        ..Default::default()
                    }));
                }
                let changed = schema.stored(prior.clone()) != planned || r.force_update(prior, &config, &private);
                for a in r.replace_on() {
                    if prior.val(a) != planned.val(a) {
                        requires_replace.push(diag::path(a));
                    }
                }
                if changed {
                    for a in r.unknown_on_update() {
                        planned.insert((*a).into(), Val::Unknown);
                    }
                }
                if !requires_replace.is_empty() {
                    for a in schema.attrs.iter().filter(|a| a.mode == Mode::Computed) {
                        planned.insert(a.name.into(), Val::Unknown);
                    }
                }
            }
        }
        Ok(Response::new(tf::plan_resource_change::Response {
            planned_identity: r.identity().data(&planned),
            planned_state: Some(encode_obj(Some(&planned))),
            requires_replace,
            planned_private: req.prior_private,
            ..Default::default()
        }))
    }

    async fn apply_resource_change(
        &self,
        req: Request<tf::apply_resource_change::Request>,
    ) -> Rpc<tf::apply_resource_change::Response> {
        let req = req.into_inner();
        let r = self.resource(&req.type_name)?;
        let (state, private, diags) = self.apply(r, &req).await?;
        Ok(Response::new(tf::apply_resource_change::Response {
            new_identity: state.as_ref().and_then(|s| r.identity().data(s)),
            new_state: Some(encode_obj(state.as_ref())),
            private: private_bytes(&private),
            diagnostics: diags.0,
        }))
    }

    async fn import_resource_state(
        &self,
        req: Request<tf::import_resource_state::Request>,
    ) -> Rpc<tf::import_resource_state::Response> {
        let req = req.into_inner();
        let r = self.resource(&req.type_name)?;
        // An import block may name the object by identity instead of an id:
        // identity attributes are state attributes of the same names.
        let from_identity = req.identity.as_ref().and_then(|i| decode_obj(i.identity_data.as_ref()).ok().flatten());
        let state = match from_identity {
            Some(ident) if req.id.is_empty() => match r.identity().of(&ident) {
                Some(o) => Ok(o),
                None => Err(Diags::error(
                    "Incomplete identity",
                    "Every identity attribute must be set to import by identity.",
                )),
            },
            _ => r.import(req.id.trim()),
        };
        let schema = r.schema();
        Ok(Response::new(match state {
            Ok(obj) => {
                let obj = schema.normalize(obj);
                tf::import_resource_state::Response {
                    imported_resources: vec![tf::import_resource_state::ImportedResource {
                        type_name: req.type_name.clone(),
                        identity: r.identity().data(&obj),
                        state: Some(encode_obj(Some(&obj))),
                        private: Vec::new(),
                    }],
                    ..Default::default()
                }
            }
            Err(d) => tf::import_resource_state::Response { diagnostics: d.0, ..Default::default() },
        }))
    }

    async fn move_resource_state(
        &self,
        req: Request<tf::move_resource_state::Request>,
    ) -> Rpc<tf::move_resource_state::Response> {
        let d = Diags::error(
            "Moving state is not supported",
            format!(
                "keybridge resources cannot be moved from {}; remove and import instead.",
                req.get_ref().source_type_name
            ),
        );
        Ok(Response::new(tf::move_resource_state::Response { diagnostics: d.0, ..Default::default() }))
    }

    async fn read_data_source(
        &self,
        req: Request<tf::read_data_source::Request>,
    ) -> Rpc<tf::read_data_source::Response> {
        let req = req.into_inner();
        let r = self.data_source(&req.type_name)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let result = match self.gateway() {
            Ok(gw) => r.read(&gw, &config).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(match result {
            Ok(obj) => tf::read_data_source::Response {
                state: Some(encode_obj(Some(&r.schema().normalize(obj)))),
                ..Default::default()
            },
            Err(d) => tf::read_data_source::Response { diagnostics: d.0, ..Default::default() },
        }))
    }

    async fn validate_ephemeral_resource_config(
        &self,
        req: Request<tf::validate_ephemeral_resource_config::Request>,
    ) -> Rpc<tf::validate_ephemeral_resource_config::Response> {
        let req = req.into_inner();
        let r = self.ephemeral(&req.type_name)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let mut diags = Diags::default();
        r.validate(&config, &mut diags);
        Ok(Response::new(tf::validate_ephemeral_resource_config::Response { diagnostics: diags.0 }))
    }

    async fn open_ephemeral_resource(
        &self,
        req: Request<tf::open_ephemeral_resource::Request>,
    ) -> Rpc<tf::open_ephemeral_resource::Response> {
        let req = req.into_inner();
        let r = self.ephemeral(&req.type_name)?;
        let config = decode_obj(req.config.as_ref()).map_err(bad_request)?.unwrap_or_default();
        let result = match self.gateway() {
            Ok(gw) => r.open(&gw, &config).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(match result {
            Ok(o) => tf::open_ephemeral_resource::Response {
                result: Some(encode_obj(Some(&r.schema().normalize(o.result)))),
                private: (!o.private.is_empty()).then(|| private_bytes(&o.private)),
                renew_at: o.renew_at.map(prost_types::Timestamp::from),
                ..Default::default()
            },
            Err(d) => tf::open_ephemeral_resource::Response { diagnostics: d.0, ..Default::default() },
        }))
    }

    async fn renew_ephemeral_resource(
        &self,
        req: Request<tf::renew_ephemeral_resource::Request>,
    ) -> Rpc<tf::renew_ephemeral_resource::Response> {
        let req = req.into_inner();
        let r = self.ephemeral(&req.type_name)?;
        let private = private_of(req.private.as_deref().unwrap_or_default());
        let result = match self.gateway() {
            Ok(gw) => r.renew(&gw, &private).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(match result {
            Ok(at) => tf::renew_ephemeral_resource::Response {
                renew_at: at.map(prost_types::Timestamp::from),
                private: req.private,
                ..Default::default()
            },
            Err(d) => {
                tf::renew_ephemeral_resource::Response { diagnostics: d.0, private: req.private, ..Default::default() }
            }
        }))
    }

    async fn close_ephemeral_resource(
        &self,
        req: Request<tf::close_ephemeral_resource::Request>,
    ) -> Rpc<tf::close_ephemeral_resource::Response> {
        let req = req.into_inner();
        let r = self.ephemeral(&req.type_name)?;
        let private = private_of(req.private.as_deref().unwrap_or_default());
        let result = match self.gateway() {
            Ok(gw) => r.close(&gw, &private).await,
            Err(d) => Err(d),
        };
        Ok(Response::new(tf::close_ephemeral_resource::Response { diagnostics: result.err().unwrap_or_default().0 }))
    }

    async fn get_functions(&self, _: Request<tf::get_functions::Request>) -> Rpc<tf::get_functions::Response> {
        Ok(Response::new(tf::get_functions::Response::default()))
    }

    async fn stop_provider(&self, _: Request<tf::stop_provider::Request>) -> Rpc<tf::stop_provider::Response> {
        // Calls are bounded by the gateway deadline; nothing long to cancel.
        Ok(Response::new(tf::stop_provider::Response::default()))
    }
}

/// The protocol's logic without Terraform or a gateway: what Terraform
/// would send, and what it must get back.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::tfplugin6::provider_server::Provider as _;

    fn dv(o: &Obj) -> Option<tf::DynamicValue> {
        Some(encode_obj(Some(o)))
    }

    fn obj(pairs: &[(&str, Val)]) -> Obj {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn decode(v: Option<&tf::DynamicValue>) -> Obj {
        decode_obj(v).unwrap().unwrap()
    }

    fn secret_fields(pw: &str) -> Val {
        Val::Map([("password".to_string(), Val::str(pw))].into())
    }

    async fn plan(prior: Option<&Obj>, proposed: &Obj) -> tf::plan_resource_change::Response {
        let p = Provider::new();
        let req = tf::plan_resource_change::Request {
            type_name: "keybridge_secret".into(),
            prior_state: Some(encode_obj(prior)),
            proposed_new_state: dv(proposed),
            config: dv(proposed),
            ..Default::default()
        };
        p.plan_resource_change(Request::new(req)).await.unwrap().into_inner()
    }

    #[tokio::test]
    async fn a_create_plan_nulls_write_only_values_and_leaves_computed_ones_unknown() {
        let proposed = obj(&[
            ("path", Val::str("secret/a/b")),
            ("data_wo", secret_fields("hunter2")),
            ("data_wo_version", Val::Num(1.0)),
        ]);
        let r = plan(None, &proposed).await;
        let planned = decode(r.planned_state.as_ref());
        assert!(planned.val("data_wo").is_null());
        assert!(planned.val("version").is_unknown());
        assert!(r.requires_replace.is_empty());
        assert!(!String::from_utf8_lossy(&r.planned_state.as_ref().unwrap().msgpack).contains("hunter2"));
        let ident = decode(r.planned_identity.as_ref().and_then(|i| i.identity_data.as_ref()));
        assert_eq!(ident.get_str("path"), Some("secret/a/b"));
    }

    #[tokio::test]
    async fn an_unchanged_object_plans_no_change_and_a_new_path_replaces() {
        let prior =
            obj(&[("path", Val::str("secret/a/b")), ("data", secret_fields("one")), ("version", Val::Num(3.0))]);
        let same = plan(Some(&prior), &prior).await;
        assert_eq!(
            decode(same.planned_state.as_ref()),
            crate::resources::secret::Secret.schema().normalize(prior.clone())
        );

        let mut moved = prior.clone();
        moved.insert("path".into(), Val::str("secret/a/c"));
        let r = plan(Some(&prior), &moved).await;
        assert_eq!(r.requires_replace, vec![diag::path("path")]);
        assert!(decode(r.planned_state.as_ref()).val("version").is_unknown());

        let mut changed = prior.clone();
        changed.insert("data".into(), secret_fields("two"));
        let r = plan(Some(&prior), &changed).await;
        assert!(r.requires_replace.is_empty());
        assert!(decode(r.planned_state.as_ref()).val("version").is_unknown());
    }

    #[tokio::test]
    async fn state_upgrades_keep_the_schema_and_refuse_what_they_cannot_read() {
        let p = Provider::new();
        let upgrade = |json: &str, version: i64| tf::upgrade_resource_state::Request {
            type_name: "keybridge_policy".into(),
            version,
            raw_state: Some(tf::RawState { json: json.as_bytes().to_vec(), flatmap: Default::default() }),
        };
        let r =
            p.upgrade_resource_state(Request::new(upgrade(r#"{"name":"p","retired_attribute":1}"#, 0))).await.unwrap();
        let r = r.into_inner();
        assert!(r.diagnostics.is_empty());
        let state = decode(r.upgraded_state.as_ref());
        assert_eq!(state.keys().collect::<Vec<_>>(), ["name", "policy"]);
        assert!(state.val("policy").is_null());

        let r = p.upgrade_resource_state(Request::new(upgrade(r#"{"name":"p"}"#, 7))).await.unwrap().into_inner();
        assert!(r.diagnostics[0].summary.contains("newer provider"));
        let r = p.upgrade_resource_state(Request::new(upgrade("", 0))).await.unwrap().into_inner();
        assert!(r.diagnostics[0].summary.contains("Unsupported state format"));
    }

    #[tokio::test]
    async fn import_by_identity_and_identity_upgrades() {
        let p = Provider::new();
        let identity = obj(&[("backend", Val::str("kubernetes")), ("role_name", Val::str("app-service"))]);
        let req = tf::import_resource_state::Request {
            type_name: "keybridge_auth_kubernetes_role".into(),
            identity: Some(tf::ResourceIdentityData { identity_data: dv(&identity) }),
            ..Default::default()
        };
        let r = p.import_resource_state(Request::new(req)).await.unwrap().into_inner();
        let state = decode(r.imported_resources[0].state.as_ref());
        assert_eq!((state.get_str("backend"), state.get_str("role_name")), (Some("kubernetes"), Some("app-service")));

        let partial = obj(&[("backend", Val::str("kubernetes"))]);
        let req = tf::import_resource_state::Request {
            type_name: "keybridge_auth_kubernetes_role".into(),
            identity: Some(tf::ResourceIdentityData { identity_data: dv(&partial) }),
            ..Default::default()
        };
        let r = p.import_resource_state(Request::new(req)).await.unwrap().into_inner();
        assert!(r.imported_resources.is_empty() && r.diagnostics[0].summary.contains("Incomplete identity"));

        let req = tf::upgrade_resource_identity::Request {
            type_name: "keybridge_policy".into(),
            version: 0,
            raw_identity: br#"{"name":"app-service"}"#.to_vec(),
        };
        let r = p.upgrade_resource_identity(Request::new(req)).await.unwrap().into_inner();
        let ident = decode(r.upgraded_identity.as_ref().and_then(|i| i.identity_data.as_ref()));
        assert_eq!(ident.get_str("name"), Some("app-service"));
    }

    #[tokio::test]
    async fn write_only_arguments_need_a_terraform_that_can_send_them() {
        let p = Provider::new();
        let config = obj(&[("path", Val::str("secret/a/b")), ("data_wo", secret_fields("x"))]);
        let validate = |write_only| tf::validate_resource_config::Request {
            type_name: "keybridge_secret".into(),
            config: dv(&config),
            client_capabilities: Some(tf::ClientCapabilities {
                write_only_attributes_allowed: write_only,
                deferral_allowed: false,
            }),
        };
        let refused = p.validate_resource_config(Request::new(validate(false))).await.unwrap().into_inner();
        assert_eq!(refused.diagnostics.len(), 1);
        assert_eq!(refused.diagnostics[0].attribute, Some(diag::path("data_wo")));
        let accepted = p.validate_resource_config(Request::new(validate(true))).await.unwrap().into_inner();
        assert!(accepted.diagnostics.is_empty());

        let unknown =
            tf::validate_resource_config::Request { type_name: "keybridge_nothing".into(), ..Default::default() };
        assert_eq!(p.validate_resource_config(Request::new(unknown)).await.unwrap_err().code(), tonic::Code::NotFound);
    }
}
