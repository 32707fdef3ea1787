//! Plugin mounts through the Logical API: a request is routed like any
//! other, matched against the engine's path patterns, its parameters
//! checked against the engine's fields and authorized (with the parameters,
//! for policies' parameter constraints), then handed to the engine; a lease
//! the engine returns is recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::audit::Caller;
use crate::backend::Backend;
use crate::core::{Capability, Core};
use crate::mounts::MountEntry;
use crate::plugins::{
    self as engine, EngineOp, EngineReply, EngineRequest, Operation, PathHelp, PluginEngine, engine_error,
};
use crate::{Error, Result};

/// The one answer to a read without a token of a path that is not public.
const PUBLIC_REFUSAL: &str = "this path is not served without a token; only public paths are (a PKI mount's ca, ca/pem, ca_chain, crl and crl/pem): use the API with a token";

/// The longest path a read without a token may name.
const PUBLIC_PATH_MAX: usize = 256;

/// Engine calls (and lease records) in progress on a node at once.
pub(crate) const ENGINE_CALLS_MAX: usize = 1024;

/// Of those, calls of one mount.
pub(crate) const ENGINE_CALLS_PER_MOUNT: usize = 256;

impl Core {
    /// Routes `path` to its plugin mount, or to the core's own password
    /// policies (`sys/policies/password/`, never a mount's).
    pub(crate) async fn engine_route(&self, path: &str) -> Result<(MountEntry, String, Arc<dyn PluginEngine>)> {
        crate::path::validate_engine_path(path)?;
        if let Some(rel) = crate::password_policies::served(path) {
            return Ok(self.password_policy_route(rel));
        }
        let table = self.unsealed()?.table();
        let (backend, mount, rel) = self.route(&table, path).await?;
        match backend {
            Backend::Plugin(engine) => Ok((mount.clone(), rel.to_string(), engine)),
            Backend::Kv(_) | Backend::Cloud(_) => Err(Error::InvalidArgument(format!(
                "{} is a {} mount, which `read`/`write` do not serve; use `keybridge kv` (keybridge.v1.Secrets) for it",
                mount.path, mount.kind
            ))),
        }
    }

    /// A Logical request: authenticate, route, check the parameters against
    /// the engine's fields, authorize (with the parameters, for policies'
    /// parameter constraints), call the engine, record a lease.
    pub async fn engine_request(
        &self,
        caller: &Caller,
        op: EngineOp,
        path: &str,
        data: BTreeMap<String, String>,
    ) -> Result<EngineReply> {
        let id = self.authenticate(caller).await?;
        let (mount, rel, backend) = self.engine_route(path).await?;
        let info = backend.info();
        let m = engine::match_path(info, &rel).ok_or_else(|| {
            let pats: Vec<String> = info.paths.iter().map(|p| format!("{}{}", mount.path, p.pattern)).collect();
            Error::NotFound(format!("the {} engine serves no path {path:?}; its paths: {}", info.name, pats.join(", ")))
        })?;
        let wants: &[Operation] = match op {
            EngineOp::Read => &[Operation::Read],
            EngineOp::Write => &[Operation::Create, Operation::Update],
            EngineOp::Delete => &[Operation::Delete],
            EngineOp::List => &[Operation::List],
        };
        if !m.info.operations.iter().any(|o| wants.contains(o)) {
            let has: Vec<&str> = m.info.operations.iter().map(|o| o.name()).collect();
            return Err(Error::Unimplemented(format!(
                "{}{} does not support {}; it supports: {}",
                mount.path,
                m.info.pattern,
                op.name(),
                has.join(", ")
            )));
        }
        let mut operation = wants[0];
        let params = engine::check_params(&m, operation, &data).map_err(Error::InvalidArgument)?;
        let ctx = self.call_context(&mount, &caller.request_id, &id.display_name);
        let mut req = EngineRequest { operation, path: rel.clone(), pattern: m.info.pattern.clone(), params };
        if op == EngineOp::Write {
            let can = |o| m.info.operations.contains(&o);
            operation = if m.info.existence_check {
                // Refused before the engine's `exists` runs with the
                // caller's parameters, unless the caller may write at all.
                let acl_path = path.trim_end_matches('/');
                match self
                    .write_capability(caller, &id, acl_path, true, || async {
                        backend.exists(&ctx, &req).await.map_err(engine_error)
                    })
                    .await?
                {
                    Capability::Update => Operation::Update,
                    _ => Operation::Create,
                }
            } else if can(Operation::Update) {
                Operation::Update
            } else {
                Operation::Create
            };
            if !can(operation) {
                return Err(Error::Unimplemented(format!(
                    "{}{} does not support {} (the path {})",
                    mount.path,
                    m.info.pattern,
                    operation.name(),
                    if operation == Operation::Create { "does not exist yet" } else { "exists already" }
                )));
            }
            req.operation = operation;
        }
        let cap = match operation {
            Operation::Read => Capability::Read,
            Operation::Create => Capability::Create,
            Operation::Update => Capability::Update,
            Operation::Delete => Capability::Delete,
            Operation::List => Capability::List,
        };
        // The policy's parameter constraints get the values as sent, with
        // the kind the engine reads them as: allowed values match the
        // strings sent (as Vault), denied ones also what the engine will
        // get (a duration in seconds, a boolean as true/false); each item
        // of a list on its own.
        let typed: Vec<keybridge_policy::Param<'_>> = data
            .iter()
            .filter_map(|(k, sent)| {
                let got = req.params.get(k)?;
                // A path capture wins over a parameter of its name: the
                // value checked is the one the engine gets.
                let value = if m.captures.iter().any(|(c, _)| c == k) { got } else { sent.as_str() };
                let kind =
                    m.info.fields.iter().find(|f| &f.name == k).map_or(Default::default(), |f| f.kind.value_kind());
                Some(keybridge_policy::Param { name: k, value, kind })
            })
            .collect();
        self.authorize_params(caller, &id, path.trim_end_matches('/'), cap, &typed).await?;
        // The engine call and the record of its lease run in a task of
        // their own: a caller that goes away (a cancelled request drops
        // this future) stops neither half-way. A credential issued is
        // recorded under its lease like any other, and an engine's
        // multi-step work (a database user and its grants) is not cut
        // short. Revoking it instead would let any caller that can issue
        // grow a PKI mount's revocation list by hanging up.
        // Bounded per mount and per node: a caller that hangs up at once
        // frees its connection's slot while its call goes on, so the calls
        // in progress need a bound of their own; a mount whose calls are
        // slow (RSA keys, a database that stalls) fills its own share only.
        let permits = self.engine_call_permits(&mount.id)?;
        let leases = self.leases.clone();
        #[cfg(test)]
        let holds = self.load_holds.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request_id = caller.request_id.clone();
        let call = async move {
            let _permits = permits;
            let result = async {
                let resp = backend.handle(&ctx, &req).await.map_err(engine_error)?;
                let lease = match resp.lease {
                    None => None,
                    Some(l) => {
                        #[cfg(test)]
                        crate::core::load_hold(&holds, "record-lease").await;
                        Some(leases.record_issued(&mount, &rel, &ctx, backend.as_ref(), l, false).await?)
                    }
                };
                Ok(EngineReply { data: resp.data, lease, warnings: resp.warnings })
            }
            .await;
            if let Err(Ok(EngineReply { lease: Some(l), .. })) = tx.send(result) {
                // No audit record will name this lease: the log does.
                tracing::warn!(request_id = %request_id, lease_id = %l.lease_id, "engine: the caller went away; what was issued is under this lease");
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(call));
        rx.await.unwrap_or_else(|_| {
            Err(Error::Internal(format!("the engine call for {path} stopped before it finished; see the server log")))
        })
    }

    /// The slots of a mount's calls on this node.
    pub(crate) fn mount_call_share(&self, mount_id: &str) -> Arc<tokio::sync::Semaphore> {
        let mut by_mount = self.engine_calls_by_mount.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) = by_mount.get(mount_id) {
            return share.clone();
        }
        let share = Arc::new(tokio::sync::Semaphore::new(ENGINE_CALLS_PER_MOUNT));
        by_mount.insert(mount_id.to_string(), share.clone());
        share
    }

    /// A slot of the mount's share and one of the node's, or why not.
    fn engine_call_permits(
        &self,
        mount_id: &str,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit)> {
        let mine = self.mount_call_share(mount_id).try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "this mount has {ENGINE_CALLS_PER_MOUNT} calls in progress on this node; try again shortly"
            ))
        })?;
        let node = self.engine_calls.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "this node has {ENGINE_CALLS_MAX} engine calls in progress; try again shortly"
            ))
        })?;
        Ok((mine, node))
    }

    /// A read of one of an engine's public paths (a PKI mount's CA
    /// certificate and CRL), made without a token: the body's media type
    /// and bytes. A path that is not one is refused before anything else,
    /// with one answer that names no mount; it opens nothing and writes no
    /// audit record (it reaches nothing, and a caller with no token must
    /// not be able to fill the audit log). A public read is audited like
    /// any request; the engine's failures are not passed on word for word.
    pub async fn public_read(&self, caller: &Caller, path: &str) -> Result<(&'static str, Vec<u8>)> {
        let refused = || Error::PermissionDenied(PUBLIC_REFUSAL.into());
        if path.len() > PUBLIC_PATH_MAX || crate::path::validate_engine_path(path).is_err() {
            return Err(refused());
        }
        let table = self.unsealed()?.table();
        let (mount, rel) = table.route(path).ok_or_else(refused)?;
        // Only built-in engines declare public paths: no cloud client,
        // plugin or local store is opened for a caller with no token.
        if self.builtin(&mount.kind).is_none() {
            return Err(refused());
        }
        let backend = self.plugin_backend(mount).await.map_err(|_| refused())?;
        let Some(public) = backend.public_reads().iter().find(|p| p.path == rel).copied() else {
            return Err(refused());
        };
        let result = async {
            {
                let mut st = caller.state();
                st.acl_path = Some(path.to_string());
                st.capability = Some(Capability::Read.name());
            }
            self.audit_request(caller, None).await;
            if caller.state().audit_failed {
                return Err(Error::AuditFailed(
                    "no enabled audit device could record the request, so it was not carried out".into(),
                ));
            }
            let info = backend.info();
            let m = engine::match_path(info, rel).ok_or_else(refused)?;
            let params = engine::check_params(&m, Operation::Read, &BTreeMap::new()).map_err(Error::InvalidArgument)?;
            let req = EngineRequest {
                operation: Operation::Read,
                path: rel.to_string(),
                pattern: m.info.pattern.clone(),
                params,
            };
            let ctx = self.call_context(mount, &caller.request_id, "unauthenticated");
            let failed = |e: String| {
                tracing::warn!(mount = %mount.path, path = %rel, error = %e, "public read failed");
                Error::Internal("the public read failed; see the server log".into())
            };
            let resp = match backend.handle(&ctx, &req).await {
                Ok(r) => r,
                // A mount with no CA yet: said without naming the mount or
                // what to do about it.
                Err(crate::plugins::EngineError::NotFound(_)) => {
                    return Err(Error::NotFound("nothing is published at this path yet".into()));
                }
                Err(e) => return Err(failed(e.to_string())),
            };
            let text = resp.data.get(public.field).ok_or_else(|| failed(format!("no {} field", public.field)))?;
            let body = if public.base64 {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| failed(format!("the {} field is not base64", public.field)))?
            } else {
                text.as_bytes().to_vec()
            };
            Ok((public.content_type, body))
        }
        .await;
        self.finish(caller, result, |_| Vec::new()).await
    }

    /// What the engine behind `path` says about it (or about itself, for the
    /// mount's own path).
    pub async fn path_help(&self, caller: &Caller, path: &str) -> Result<PathHelp> {
        let id = self.authenticate(caller).await?;
        let (mount, rel, backend) = self.engine_route(path).await?;
        // Vault: help needs any capability on the path; read is the one here.
        self.authorize(caller, &id, path.trim_end_matches('/'), Capability::Read).await?;
        let info = backend.info().clone();
        let matched = if rel.is_empty() {
            None
        } else {
            Some(
                engine::match_path(&info, &rel)
                    .ok_or_else(|| Error::NotFound(format!("the {} engine serves no path {path:?}", info.name)))?
                    .info
                    .pattern
                    .clone(),
            )
        };
        Ok(PathHelp { mount: mount.path, engine: info, matched })
    }
}
