//! `keybridge.v1.Logical`, `Leases` and `Plugins`: engine paths, their
//! leases, and the plugin catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use keybridge_core::plugins::{EngineInfo, Field};
use keybridge_core::{Core, EngineOp, EngineReply, LeaseView, PluginVersion};
use keybridge_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::service::{caller, field_map, none, plain, refuse, status, ts};

pub struct LogicalService {
    pub core: Arc<Core>,
}

pub struct LeasesService {
    pub core: Arc<Core>,
}

pub struct PluginsService {
    pub core: Arc<Core>,
    /// Uploads in flight per token (by a keyed hash of it).
    uploads: crate::slots::Slots<u64>,
    hasher: std::collections::hash_map::RandomState,
}

/// Uploads one token may have in flight at once: each may hold up to the
/// catalog's component limit in memory.
pub const MAX_UPLOADS_PER_TOKEN: usize = 2;

impl PluginsService {
    pub fn new(core: Arc<Core>) -> Self {
        PluginsService { core, uploads: Default::default(), hasher: Default::default() }
    }

    /// One of the token's upload slots, if it has one free.
    fn upload_slot(&self, token: &str) -> Option<crate::slots::Slot<u64>> {
        use std::hash::BuildHasher;
        self.uploads.take(self.hasher.hash_one(token), MAX_UPLOADS_PER_TOKEN)
    }
}

pub(crate) fn lease_pb(l: LeaseView) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id,
        ttl_secs: l.ttl_secs,
        renewable: l.renewable,
        issue_time: Some(ts(l.issued)),
        expire_time: Some(ts(l.expires)),
        max_expire_time: Some(ts(l.max_expires)),
        revoke_attempts: l.attempts,
        last_error: l.last_error.unwrap_or_default(),
    }
}

impl LogicalService {
    async fn op(
        &self,
        req: Request<pb::LogicalRequest>,
        op: EngineOp,
    ) -> Result<Response<pb::LogicalResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("data", field_map("keybridge.v1.LogicalRequest.data", &r.data));
        let data: BTreeMap<String, String> = r.data.into_iter().collect();
        let res = self.core.engine_request(&c, op, &r.path, data).await;
        let out: EngineReply = self
            .core
            .finish(&c, res, |o| {
                let mut a = vec![(
                    "data".into(),
                    field_map("keybridge.v1.LogicalResponse.data", o.data.0.iter().map(|(k, v)| (k, v))),
                )];
                if let Some(l) = &o.lease {
                    a.push(("lease_id".into(), plain(l.lease_id.clone())));
                    a.push(("lease_ttl".into(), plain(l.ttl_secs)));
                }
                a
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LogicalResponse {
            data: out.data.clone().into_map().into_iter().collect(),
            lease: out.lease.map(lease_pb),
            warnings: out.warnings,
        }))
    }
}

fn field_pb(f: &Field) -> pb::EngineField {
    pb::EngineField {
        name: f.name.clone(),
        kind: f.kind.name().into(),
        description: f.description.clone(),
        required: f.required,
        default_value: f.default.clone().unwrap_or_default(),
    }
}

fn help_pb(mount: String, info: EngineInfo, matched: Option<String>) -> pb::PathHelpResponse {
    pb::PathHelpResponse {
        mount,
        engine: info.name,
        engine_version: info.version,
        description: info.description,
        matched: matched.unwrap_or_default(),
        paths: info
            .paths
            .iter()
            .map(|p| pb::EnginePath {
                pattern: p.pattern.clone(),
                synopsis: p.synopsis.clone(),
                description: p.description.clone(),
                operations: p.operations.iter().map(|o| o.name().to_string()).collect(),
                fields: p.fields.iter().map(field_pb).collect(),
                existence_check: p.existence_check,
            })
            .collect(),
        config_keys: info.config_keys.iter().map(field_pb).collect(),
        rotates: info.rotates,
    }
}

#[tonic::async_trait]
impl pb::logical_server::Logical for LogicalService {
    async fn read(&self, req: Request<pb::LogicalRequest>) -> Result<Response<pb::LogicalResponse>, Status> {
        self.op(req, EngineOp::Read).await
    }

    async fn write(&self, req: Request<pb::LogicalRequest>) -> Result<Response<pb::LogicalResponse>, Status> {
        self.op(req, EngineOp::Write).await
    }

    async fn delete(&self, req: Request<pb::LogicalRequest>) -> Result<Response<pb::LogicalResponse>, Status> {
        self.op(req, EngineOp::Delete).await
    }

    async fn list(&self, req: Request<pb::LogicalRequest>) -> Result<Response<pb::LogicalResponse>, Status> {
        self.op(req, EngineOp::List).await
    }

    async fn path_help(&self, req: Request<pb::PathHelpRequest>) -> Result<Response<pb::PathHelpResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.path_help(&c, &r.path).await;
        let h = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(help_pb(h.mount, h.engine, h.matched)))
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for LeasesService {
    async fn lookup(&self, req: Request<pb::LeaseRef>) -> Result<Response<pb::Lease>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.lease_id);
        let res = self.core.lookup_lease(&c, &r.lease_id).await;
        Ok(Response::new(lease_pb(self.core.finish(&c, res, none).await.map_err(status)?)))
    }

    async fn list(&self, req: Request<pb::ListLeasesRequest>) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.prefix)
            .with("page_size", plain(r.page_size))
            .with("page_token", plain(r.page_token.clone()));
        let res = self.core.list_leases(&c, &r.prefix, r.page_size as usize, &r.page_token).await;
        let (leases, next_page_token) = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.into_iter().map(lease_pb).collect(),
            next_page_token,
        }))
    }

    async fn renew(&self, req: Request<pb::RenewLeaseRequest>) -> Result<Response<pb::Lease>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.lease_id).with("increment_secs", plain(r.increment_secs));
        let res = self.core.renew_lease(&c, &r.lease_id, r.increment_secs).await;
        Ok(Response::new(lease_pb(self.core.finish(&c, res, none).await.map_err(status)?)))
    }

    async fn revoke(&self, req: Request<pb::LeaseRef>) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.lease_id);
        let res = self.core.revoke_lease(&c, &r.lease_id).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::RevokeLeasesResponse { revoked: 1 }))
    }

    async fn revoke_prefix(
        &self,
        req: Request<pb::RevokePrefixRequest>,
    ) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.prefix);
        let res = self.core.revoke_lease_prefix(&c, &r.prefix).await;
        let n = self.core.finish(&c, res, |n| vec![("revoked".into(), plain(*n))]).await.map_err(status)?;
        Ok(Response::new(pb::RevokeLeasesResponse { revoked: n as u32 }))
    }
}

fn plugin_pb(v: PluginVersion) -> pb::PluginVersion {
    pb::PluginVersion {
        name: v.name,
        sha256: v.sha256,
        size: v.size,
        register_time: Some(ts(v.registered)),
        engine: v.engine,
        engine_version: v.engine_version,
        description: v.description,
        rotates: v.rotates,
        paths: v.paths,
    }
}

#[tonic::async_trait]
impl pb::plugins_server::Plugins for PluginsService {
    async fn register(
        &self,
        req: Request<Streaming<pb::RegisterPluginChunk>>,
    ) -> Result<Response<pb::PluginVersion>, Status> {
        let c = caller(&req)?;
        let mut stream = req.into_inner();
        let first = match stream.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => return Err(refuse(&self.core, &c, "the upload is empty: send the name and sha256 first").await),
        };
        let c = c.with_path(&first.name).with("sha256", plain(first.sha256.clone()));
        // Who may upload is settled on the first chunk, before any more of
        // the component is buffered; one token has a few uploads at a time.
        if let Err(e) = self.core.authorize_register(&c, &first.name).await {
            return Err(status(self.core.finish(&c, Err::<(), _>(e), none).await.unwrap_err()));
        }
        let _slot = match c.bearer().and_then(|t| self.upload_slot(t)) {
            Some(slot) => slot,
            None => {
                let msg = format!(
                    "this token already has {MAX_UPLOADS_PER_TOKEN} plugin uploads in flight; wait for one to finish"
                );
                let e = keybridge_core::Error::ResourceExhausted(msg);
                return Err(status(self.core.finish(&c, Err::<(), _>(e), none).await.unwrap_err()));
            }
        };
        let max = keybridge_core::MAX_COMPONENT_BYTES;
        let mut bytes = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.data.len() > max {
                let msg = format!("the component is larger than the catalog's limit of {max} bytes");
                return Err(refuse(&self.core, &c, &msg).await);
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let c = c.with("size", plain(bytes.len()));
        let res = self.core.register_plugin(&c, &first.name, &first.sha256, &bytes).await;
        let v = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(plugin_pb(v)))
    }

    async fn list(&self, req: Request<pb::ListPluginsRequest>) -> Result<Response<pb::ListPluginsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let name = Some(r.name.trim()).filter(|n| !n.is_empty());
        let res = self.core.list_plugins(&c, name).await;
        let v = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListPluginsResponse { plugins: v.into_iter().map(plugin_pb).collect() }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeletePluginRequest>,
    ) -> Result<Response<pb::DeletePluginResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name).with("sha256", plain(r.sha256.clone()));
        let digest = Some(r.sha256.trim()).filter(|d| !d.is_empty());
        let res = self.core.delete_plugin(&c, &r.name, digest).await;
        let n = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DeletePluginResponse { deleted: n as u32 }))
    }
}
