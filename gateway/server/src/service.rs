//! The gRPC services. The only place that knows tonic on the server side:
//! it extracts the bearer token, converts messages, calls the core, and
//! maps `keybridge_core::Error` to a `tonic::Status`, one variant to one code.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use keybridge_core::backend::kv::{SecretMeta, VersionMeta};
use keybridge_core::mounts::MountEntry;
use keybridge_core::provider::Selector;
use keybridge_core::value::SecretValue;
use keybridge_core::{AuditValue, Caller, Core, Error as CoreError, Timestamp};
use keybridge_proto::v1 as pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use zeroize::Zeroizing;

use crate::audited::Call;
use keybridge_proto::audit::Audit;

pub fn status(e: CoreError) -> Status {
    match e {
        CoreError::InvalidArgument(m) => Status::invalid_argument(m),
        CoreError::NotFound(m) => Status::not_found(m),
        CoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        CoreError::AlreadyExists(m) => Status::already_exists(m),
        CoreError::Unauthenticated => Status::unauthenticated(CoreError::Unauthenticated.to_string()),
        e @ CoreError::LoginRefused(_) => Status::unauthenticated(e.to_string()),
        e @ CoreError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
        CoreError::Sealed => Status::unavailable("sealed"),
        e @ CoreError::AuditFailed(_) => Status::unavailable(e.to_string()),
        e @ CoreError::AuditResponseFailed(_) => Status::internal(e.to_string()),
        e @ CoreError::Contention(_) => Status::aborted(e.to_string()),
        CoreError::Unimplemented(m) => Status::unimplemented(m),
        CoreError::Unavailable(m) => Status::unavailable(m),
        CoreError::ResourceExhausted(m) => Status::resource_exhausted(m),
        CoreError::CloudUnauthenticated(m) => Status::unauthenticated(m),
        CoreError::CloudFailed(m) => Status::internal(m),
        CoreError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        CoreError::Internal(m) => Status::internal(m),
        e @ (CoreError::Storage(_) | CoreError::Corrupt { .. }) => {
            tracing::error!(error = %e, "internal error");
            Status::internal(format!("internal error: {e}"))
        }
    }
}

/// The bearer token of a request, zeroed on drop.
struct Bearer(Option<Zeroizing<String>>);

impl Bearer {
    fn get(&self) -> Option<&str> {
        self.0.as_deref().map(|s| s.as_str())
    }
}

/// The bearer token from `authorization`, if any. A malformed header is an
/// error of its own; a missing one is left to the core (UNAUTHENTICATED).
fn token<T>(req: &Request<T>) -> Result<Bearer, Status> {
    let Some(value) = req.metadata().get("authorization") else {
        return Ok(Bearer(None));
    };
    let token = header_token(value.to_str().ok())?;
    Ok(Bearer(Some(Zeroizing::new(token.to_string()))))
}

/// The token of an `authorization` header (`None`: not ASCII), or the
/// status a malformed one gets.
pub(crate) fn header_token(text: Option<&str>) -> Result<&str, Status> {
    let text =
        text.ok_or_else(|| Status::unauthenticated("the authorization header is not ASCII; send 'Bearer <token>'"))?;
    bearer(text).ok_or_else(|| Status::unauthenticated("the authorization header must be 'Bearer <token>'"))
}

/// The token of an `authorization: Bearer <token>` header value: the scheme
/// in any case, spaces around the token dropped. The one reading of the
/// header, for the services and the per-token rate limiter alike (so the
/// same token is the same bucket however it is written).
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// The request as the core sees it: token, request id (set by the
/// request-id layer), remote address, and the operation its route names
/// (set by [`crate::audited::AuditedLayer`]). The only way a handler makes a
/// `Caller`: the layer writes the response record of any call whose
/// handler did not.
#[allow(clippy::disallowed_methods)] // the one place
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Call, Status> {
    let bearer = token(req)?;
    let id = req.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Call::new(req, |op| Caller::new(bearer.get(), op).with_request_id(id).with_remote(req.remote_addr()))
        .ok_or_else(|| Status::internal("the request reached a handler without its route; this is a bug"))
}

/// A field of the API as the audit log shows it: secret or plain as
/// `keybridge_proto::audit` declares (`package.Message.field`). An
/// undeclared field is shown as an HMAC (and is a bug: debug builds stop).
pub(crate) fn field(name: &'static str, v: impl AsRef<[u8]>) -> AuditValue {
    match declared(name) {
        Audit::Plain => plain(String::from_utf8_lossy(v.as_ref()).into_owned()),
        Audit::Secret | Audit::SecretKeys(_) => AuditValue::secret(v.as_ref()),
    }
}

/// A repeated field, item by item (the index as the key).
pub(crate) fn field_list(name: &'static str, items: &[impl AsRef<[u8]>]) -> AuditValue {
    AuditValue::Map(items.iter().enumerate().map(|(i, v)| (i.to_string().into(), field(name, v))).collect())
}

/// A `map<string, string>` field, entry by entry.
pub(crate) fn field_map<'a>(name: &'static str, m: impl IntoIterator<Item = (&'a String, &'a String)>) -> AuditValue {
    let how = declared(name);
    AuditValue::Map(
        m.into_iter()
            .map(|(k, v)| {
                let secret = match how {
                    Audit::Secret => true,
                    Audit::Plain => false,
                    Audit::SecretKeys(keys) => keys.contains(&k.as_str()),
                };
                (k.clone().into(), if secret { AuditValue::secret(v.as_bytes()) } else { plain(v.clone()) })
            })
            .collect(),
    )
}

/// A secret value field (`PutRequest.value`, `GetResponse.value`).
pub(crate) fn field_value(name: &'static str, v: &SecretValue) -> AuditValue {
    debug_assert_eq!(declared(name), Audit::Secret, "{name} holds a SecretValue");
    v.audit_value()
}

fn declared(name: &'static str) -> Audit {
    let how = keybridge_proto::audit::audit(name);
    debug_assert!(how.is_some(), "{name} is not declared in keybridge_proto::audit::FIELDS");
    how.unwrap_or(Audit::Secret)
}

pub(crate) fn plain(v: impl Into<serde_json::Value>) -> AuditValue {
    AuditValue::plain(v)
}

/// Audits a request the gateway refuses before the core sees it.
pub(crate) async fn refuse(core: &Core, c: &Caller, msg: &str) -> Status {
    let r: Result<(), CoreError> = Err(CoreError::InvalidArgument(msg.to_string()));
    match core.finish(c, r, |_| Vec::new()).await {
        Err(e) => status(e),
        Ok(()) => Status::invalid_argument(msg),
    }
}

pub(crate) fn none<T>(_: &T) -> keybridge_core::audit::AuditData {
    Vec::new()
}

pub(crate) fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.secs, nanos: t.nanos as i32 }
}

fn version_pb(version: u64, m: &VersionMeta) -> pb::VersionMetadata {
    pb::VersionMetadata {
        version,
        created_time: Some(ts(m.created)),
        deletion_time: m.deletion_time.map(ts),
        destroyed: m.destroyed,
        provider_version_id: m.provider_id.clone(),
        stages: m.stages.clone(),
        expires_time: m.expires.map(ts),
    }
}

fn meta_pb(path: &str, m: &SecretMeta) -> pb::SecretMetadata {
    pb::SecretMetadata {
        path: path.to_string(),
        current_version: m.current_version,
        oldest_version: m.oldest_version(),
        created_time: Some(ts(m.created)),
        updated_time: Some(ts(m.updated)),
        custom_metadata: m.custom_metadata.clone().into_iter().collect(),
        max_versions: m.max_versions,
        cas_required: m.cas_required,
        versions: m.versions.iter().map(|(v, vm)| version_pb(*v, vm)).collect(),
        other_versions: m.other_versions.iter().map(|vm| version_pb(0, vm)).collect(),
    }
}

fn mount_pb(m: &MountEntry, stats: Option<&keybridge_core::backend::cloud::MountStats>) -> pb::Mount {
    pb::Mount {
        stats: stats.map(|s| pb::MountStats {
            upstream_calls: s.upstream_calls,
            cache_hits: s.cache_hits,
            cache_misses: s.cache_misses,
        }),
        path: m.path.clone(),
        r#type: m.kind.clone(),
        description: m.description.clone(),
        id: m.id.clone(),
        config: m
            .config
            .iter()
            .map(|(k, v)| {
                let v =
                    if keybridge_core::provider::settings::is_sensitive(k) { "<redacted>".into() } else { v.clone() };
                (k.clone(), v)
            })
            .collect(),
        created_time: Some(ts(m.created)),
    }
}

fn value_from_pb(v: Option<pb::SecretValue>) -> Result<SecretValue, Status> {
    match v.and_then(|v| v.kind) {
        Some(pb::secret_value::Kind::Fields(f)) => {
            Ok(SecretValue::Fields(f.fields.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect()))
        }
        Some(pb::secret_value::Kind::Binary(b)) => Ok(SecretValue::Binary(Zeroizing::new(b))),
        Some(pb::secret_value::Kind::Text(t)) => Ok(SecretValue::Text(Zeroizing::new(t))),
        None => Err(Status::invalid_argument("the value is missing: set value.fields, value.binary or value.text")),
    }
}

fn value_pb(v: SecretValue) -> pb::SecretValue {
    let kind = match v {
        SecretValue::Fields(m) => pb::secret_value::Kind::Fields(pb::Fields {
            // Moves each buffer into the reply rather than copying it; the
            // emptied `Zeroizing` shells have nothing left to wipe.
            fields: m.into_iter().map(|(k, mut v)| (k, std::mem::take(&mut *v))).collect(),
        }),
        SecretValue::Binary(mut b) => pb::secret_value::Kind::Binary(std::mem::take(&mut *b)),
        SecretValue::Text(mut t) => pb::secret_value::Kind::Text(std::mem::take(&mut *t)),
    };
    pb::SecretValue { kind: Some(kind) }
}

fn versions_arg(v: &[u64]) -> Result<(), Status> {
    if v.contains(&0) {
        return Err(Status::invalid_argument("version numbers start at 1"));
    }
    Ok(())
}

/// Turns true when the server begins to stop (SIGTERM, Ctrl-C).
pub type Stopping = tokio::sync::watch::Receiver<bool>;

/// Ends a long-lived response stream (a watch) when the server begins to
/// stop: the watcher sees its stream end and can reconnect, instead of
/// holding the graceful shutdown for the whole `limits.shutdown_grace`.
fn until_stopping<T: Send + 'static>(
    stream: impl Stream<Item = T> + Send + 'static,
    stopping: &Stopping,
) -> impl Stream<Item = T> + Send + 'static {
    let stop = tokio_stream::wrappers::WatchStream::new(stopping.clone()).filter(|s| *s).map(|_| None);
    stream.map(Some).merge(stop).map_while(|item| item)
}

pub struct SecretsService {
    pub core: Arc<Core>,
    pub stopping: Stopping,
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let mut c = c.with_path(&r.path);
        if let Some(cas) = r.cas {
            c = c.with("cas", plain(cas));
        }
        let value = match value_from_pb(r.value) {
            Ok(v) => v,
            Err(e) => return Err(refuse(&self.core, &c, e.message()).await),
        };
        let c = c.with("value", field_value("keybridge.v1.PutRequest.value", &value));
        let res = self.core.put(&c, &r.path, &value, r.cas).await;
        let (v, meta) =
            self.core.finish(&c, res, |(v, _)| vec![("version".into(), plain(*v))]).await.map_err(status)?;
        Ok(Response::new(pb::PutResponse { version: Some(version_pb(v, &meta)) }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let mut c = c.with_path(&r.path).with("version", plain(r.version));
        if !r.version_id.is_empty() {
            c = c.with("version_id", plain(r.version_id.clone()));
        }
        if !r.stage.is_empty() {
            c = c.with("stage", plain(r.stage.clone()));
        }
        let at = match (r.version, r.version_id.trim(), r.stage.trim()) {
            (0, "", "") => Selector::Current,
            (n, "", "") => Selector::Number(n),
            (0, id, "") => Selector::Version(id.to_string()),
            (0, "", stage) => Selector::Stage(stage.to_string()),
            _ => return Err(refuse(&self.core, &c, "give at most one of version, version_id and stage").await),
        };
        let res = self.core.get_at(&c, &r.path, &at).await;
        let read = self
            .core
            .finish(&c, res, |read| {
                vec![
                    ("version".into(), plain(read.version)),
                    ("value".into(), field_value("keybridge.v1.GetResponse.value", &read.value)),
                ]
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetResponse {
            version: Some(version_pb(read.version, &read.meta)),
            custom_metadata: read.custom_metadata.into_iter().collect(),
            value: Some(value_pb(read.value)),
        }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("versions", plain(r.versions.clone()))
            .with("all_versions", plain(r.all_versions))
            .with("purge", plain(r.purge));
        if let Err(e) = versions_arg(&r.versions) {
            return Err(refuse(&self.core, &c, e.message()).await);
        }
        let res = self.core.delete_opts(&c, &r.path, &r.versions, r.all_versions, r.purge).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("recursive", plain(r.recursive));
        let res = self.core.list(&c, &r.path, r.page_size as usize, &r.page_token, r.recursive).await;
        let (keys, next_page_token) =
            self.core.finish(&c, res, |(k, _)| vec![("keys".into(), plain(k.len()))]).await.map_err(status)?;
        Ok(Response::new(pb::ListResponse { keys, next_page_token }))
    }

    async fn describe(&self, req: Request<pb::DescribeRequest>) -> Result<Response<pb::DescribeResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.describe(&c, &r.path).await;
        let meta = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DescribeResponse { metadata: Some(meta_pb(&r.path, &meta)) }))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.describe(&c, &r.path).await;
        let meta = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: meta.versions.iter().map(|(v, m)| version_pb(*v, m)).collect(),
            current_version: meta.current_version,
        }))
    }

    async fn undelete(&self, req: Request<pb::UndeleteRequest>) -> Result<Response<pb::UndeleteResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("versions", plain(r.versions.clone()))
            .with("restore_secret", plain(r.restore_secret));
        if let Err(e) = versions_arg(&r.versions) {
            return Err(refuse(&self.core, &c, e.message()).await);
        }
        let res = if r.restore_secret {
            if !r.versions.is_empty() {
                return Err(refuse(&self.core, &c, "give either versions or restore_secret, not both").await);
            }
            self.core.restore_secret(&c, &r.path).await
        } else {
            self.core.undelete(&c, &r.path, &r.versions).await
        };
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::UndeleteResponse {}))
    }

    async fn destroy(&self, req: Request<pb::DestroyRequest>) -> Result<Response<pb::DestroyResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("versions", plain(r.versions.clone()));
        if let Err(e) = versions_arg(&r.versions) {
            return Err(refuse(&self.core, &c, e.message()).await);
        }
        let res = self.core.destroy(&c, &r.path, &r.versions).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DestroyResponse {}))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::SecretEvent, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchSecretRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.watch_secret(&c, &r.path).await;
        let rx = self.core.finish(&c, res, none).await.map_err(status)?;
        let path = r.path;
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |item| match item {
            Ok(e) if e.path == path => Some(Ok(pb::SecretEvent {
                path: e.path,
                kind: e.kind.into(),
                version: e.version,
                provider_version_id: e.provider_id,
                time: Some(ts(e.time)),
            })),
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(
                format!("this watcher fell behind and missed {n} events; read the secret and reconnect"),
            ))),
        });
        Ok(Response::new(Box::pin(until_stopping(stream, &self.stopping))))
    }

    async fn put_metadata(
        &self,
        req: Request<pb::PutMetadataRequest>,
    ) -> Result<Response<pb::PutMetadataResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let custom: BTreeMap<String, String> = r.custom_metadata.into_iter().collect();
        let c = c
            .with_path(&r.path)
            .with("custom_metadata", plain(serde_json::to_value(&custom).unwrap_or_default()))
            .with("max_versions", plain(r.max_versions))
            .with("cas_required", plain(r.cas_required))
            .with("keep_custom_metadata", plain(r.keep_custom_metadata));
        let res = match (r.keep_custom_metadata, custom.is_empty()) {
            (true, false) => Err(CoreError::InvalidArgument(
                "custom_metadata: give entries or keep_custom_metadata, not both".into(),
            )),
            (true, true) => self.core.put_metadata(&c, &r.path, None, r.max_versions, r.cas_required).await,
            (false, _) => self.core.put_metadata(&c, &r.path, Some(custom), r.max_versions, r.cas_required).await,
        };
        let meta = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::PutMetadataResponse { metadata: Some(meta_pb(&r.path, &meta)) }))
    }
}

pub struct SysService {
    pub core: Arc<Core>,
    pub health: HealthReporter,
    pub version: &'static str,
    /// Where restore uploads are staged before they are applied.
    pub staging_dir: std::path::PathBuf,
}

impl SysService {
    async fn status_pb(&self, s: keybridge_core::SealStatus) -> pb::SealStatusResponse {
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut out = pb::SealStatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            key_shares: s.shares,
            key_threshold: s.threshold,
            progress: s.progress,
            version: self.version.to_string(),
            storage_type: s.storage_type.to_string(),
            seal_type: s.seal_type,
            recovery_seal: s.recovery,
            migration: s.migration,
            seal_message: s.message,
            ..Default::default()
        };
        #[cfg(feature = "postgres")]
        if let Some(shared) = crate::server::SHARED.get() {
            out.node_id = crate::server::node_id().to_string();
            out.leader = self.core.is_leading();
            // Who leads, as the lease row says (empty when the database
            // cannot be reached).
            if let Ok(l) = shared.store.leader().await
                && l.live
            {
                out.leader_address = l.api_addr;
                out.epoch = l.epoch;
            }
            fn ms(d: std::time::Duration) -> u64 {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            }
            out.feed_lag_ms = ms(shared.store.feed_lag());
            out.feed_age_ms = shared.store.feed_age().map_or(u64::MAX, ms);
        }
        out
    }

    /// Health follows the seal: NOT_SERVING while sealed.
    pub async fn sync_health(&self) {
        sync_health(&self.core, &self.health).await;
    }
}

/// Every service of the API by its full name (`keybridge.v1.Secrets`, ...),
/// read from the API's own descriptors, so a service added later is listed.
fn api_services() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = crate::audited::api_methods()
            .values()
            .filter_map(|op| op.split_once('/').map(|(service, _)| service.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    })
}

/// The health of the server ("") and of every API service: serving while
/// unsealed, not serving while sealed.
pub async fn sync_health(core: &Core, health: &HealthReporter) {
    let serving = matches!(core.seal_status().await, Ok(s) if !s.sealed);
    let st = if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
    health.set_service_status("", st).await;
    for name in api_services() {
        health.set_service_status(name, st).await;
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// Sends what it is given as snapshot chunks of up to 256 KiB.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<pb::SnapshotChunk, Status>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(pb::SnapshotChunk { data, force: false }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[tonic::async_trait]
impl pb::sys_server::Sys for SysService {
    async fn seal_status(
        &self,
        _req: Request<pb::SealStatusRequest>,
    ) -> Result<Response<pb::SealStatusResponse>, Status> {
        let s = self.core.seal_status().await.map_err(status)?;
        Ok(Response::new(self.status_pb(s).await))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let r = req.into_inner();
        let (shares, threshold) = match (r.key_shares, r.key_threshold) {
            (0, 0) => (5, 3),
            (s, t) => (s, t),
        };
        let init = self.core.init(shares, threshold, None, false).await.map_err(status)?;
        let keys: Vec<String> = init.keys.iter().map(|k| k.to_string()).collect();
        if init.recovery {
            self.sync_health().await;
            tracing::info!(shares, threshold, "initialized with an auto seal; the server is unsealed");
            Ok(Response::new(pb::InitResponse {
                recovery_keys_b64: keys,
                recovery_threshold: init.threshold,
                root_token: init.root_token.to_string(),
                ..Default::default()
            }))
        } else {
            tracing::info!(shares, threshold, "initialized; the server is sealed");
            Ok(Response::new(pb::InitResponse {
                unseal_keys_b64: keys,
                unseal_threshold: init.threshold,
                root_token: init.root_token.to_string(),
                ..Default::default()
            }))
        }
    }

    async fn unseal(&self, req: Request<pb::UnsealRequest>) -> Result<Response<pb::SealStatusResponse>, Status> {
        let r = req.into_inner();
        let key = Zeroizing::new(r.key);
        if key.trim().is_empty() && r.migrate {
            return Err(Status::invalid_argument("give a key to enter towards the seal migration"));
        }
        let result = self.core.unseal(&key, r.reset, r.migrate).await;
        self.sync_health().await;
        let s = result.map_err(status)?;
        if !s.sealed {
            tracing::info!(migrate = r.migrate, "unsealed");
        }
        Ok(Response::new(self.status_pb(s).await))
    }

    async fn seal(&self, req: Request<pb::SealRequest>) -> Result<Response<pb::SealStatusResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.seal(&c).await;
        let s = self.core.finish(&c, res, none).await.map_err(status)?;
        self.sync_health().await;
        tracing::info!("sealed by request");
        Ok(Response::new(self.status_pb(s).await))
    }

    async fn enable_mount(&self, req: Request<pb::EnableMountRequest>) -> Result<Response<pb::Mount>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("type", plain(r.r#type.clone()))
            .with("config", field_map("keybridge.v1.EnableMountRequest.config", &r.config));
        let res = self.core.enable_mount(&c, &r.path, &r.r#type, &r.description, r.config.into_iter().collect()).await;
        let m = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(mount_pb(&m, None)))
    }

    async fn list_mounts(
        &self,
        req: Request<pb::ListMountsRequest>,
    ) -> Result<Response<pb::ListMountsResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.list_mounts(&c).await;
        let mounts = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListMountsResponse {
            mounts: {
                let stats = self.core.mount_stats();
                mounts.iter().map(|m| mount_pb(m, stats.get(&m.path))).collect()
            },
        }))
    }

    async fn disable_mount(
        &self,
        req: Request<pb::DisableMountRequest>,
    ) -> Result<Response<pb::DisableMountResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.disable_mount(&c, &r.path).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DisableMountResponse {}))
    }

    async fn tune_mount(&self, req: Request<pb::TuneMountRequest>) -> Result<Response<pb::Mount>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("config", field_map("keybridge.v1.TuneMountRequest.config", &r.config));
        let res = self.core.tune_mount(&c, &r.path, r.description.as_deref(), r.config.into_iter().collect()).await;
        let m = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(mount_pb(&m, None)))
    }

    async fn rotate(&self, req: Request<pb::RotateRequest>) -> Result<Response<pb::KeyringStatus>, Status> {
        let c = caller(&req)?;
        let res = self.core.rotate(&c).await;
        let k = self.core.finish(&c, res, |k| vec![("term".into(), plain(k.term))]).await.map_err(status)?;
        tracing::info!(term = k.term, "encryption key rotated");
        Ok(Response::new(key_status_pb(k)))
    }

    async fn members(&self, req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let c = caller(&req)?;
        let res = match self.core.members_access(&c).await {
            Ok(()) => list_members().await,
            Err(e) => Err(e),
        };
        let members = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::MembersResponse { members }))
    }

    async fn key_status(&self, req: Request<pb::KeyStatusRequest>) -> Result<Response<pb::KeyringStatus>, Status> {
        let c = caller(&req)?;
        let res = self.core.key_status(&c).await;
        let k = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(key_status_pb(k)))
    }

    async fn rekey(&self, req: Request<pb::RekeyRequest>) -> Result<Response<pb::RekeyResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let keys: Vec<String> = r.keys;
        let c = c
            .with("keys", field_list("keybridge.v1.RekeyRequest.keys", &keys))
            .with("key_shares", plain(r.key_shares))
            .with("key_threshold", plain(r.key_threshold));
        let result = self.core.rekey(&c, &keys, r.key_shares, r.key_threshold).await;
        drop(keys.into_iter().map(Zeroizing::new).collect::<Vec<_>>());
        let shares = self
            .core
            .finish(&c, result, |shares| {
                vec![("unseal_keys".into(), field_list("keybridge.v1.RekeyResponse.unseal_keys_b64", shares))]
            })
            .await
            .map_err(status)?;
        let recovery = self.core.seal_status().await.is_ok_and(|s| s.recovery);
        tracing::info!(shares = r.key_shares, threshold = r.key_threshold, recovery, "root key replaced (rekey)");
        Ok(Response::new(pb::RekeyResponse {
            unseal_keys_b64: shares.iter().map(|k| k.to_string()).collect(),
            unseal_threshold: r.key_threshold,
            recovery,
        }))
    }

    type SnapshotSaveStream = ChunkStream;

    async fn snapshot_save(
        &self,
        req: Request<pb::SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        let c = caller(&req)?;
        if let Err(e) = self.core.authorize_snapshot(&c).await {
            return Err(status(self.core.finish(&c, Err::<(), _>(e), none).await.unwrap_err()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let core = self.core.clone();
        tokio::spawn(async move {
            let writer = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let res = core.snapshot(&c, Box::new(writer)).await;
            if let Err(e) = core.finish(&c, res, |n| vec![("entries".into(), plain(*n))]).await {
                let _ = tx.send(Err(status(e))).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn snapshot_restore(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotRestoreResponse>, Status> {
        let c = caller(&req)?;
        if let Err(e) = self.core.authorize_snapshot(&c).await {
            return Err(status(self.core.finish(&c, Err::<(), _>(e), none).await.unwrap_err()));
        }
        let mut stream = req.into_inner();
        let staged =
            tempfile_in(&self.staging_dir).map_err(|e| Status::internal(format!("cannot stage the upload: {e}")))?;
        let mut file = tokio::fs::File::from_std(
            staged.reopen().map_err(|e| Status::internal(format!("cannot stage the upload: {e}")))?,
        );
        let mut force = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            force.get_or_insert(chunk.force);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk.data)
                .await
                .map_err(|e| Status::internal(format!("cannot stage the upload: {e}")))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| Status::internal(e.to_string()))?;
        let c = c.with("force", plain(force.unwrap_or(false)));
        let res = self.core.restore(&c, staged.path().to_path_buf(), force.unwrap_or(false)).await;
        let (entries, sealed) = self
            .core
            .finish(&c, res, |(n, s)| vec![("entries".into(), plain(*n)), ("sealed".into(), plain(*s))])
            .await
            .map_err(status)?;
        self.sync_health().await;
        tracing::info!(entries, sealed, "snapshot restored");
        Ok(Response::new(pb::SnapshotRestoreResponse { entries, sealed }))
    }
}

/// The nodes using the store: the shared table's members, or this node.
async fn list_members() -> Result<Vec<pb::Member>, CoreError> {
    #[cfg(feature = "postgres")]
    if let Some(shared) = crate::server::SHARED.get() {
        let members = shared.store.members(shared.lease).await.map_err(CoreError::from)?;
        return Ok(members
            .into_iter()
            .map(|m| pb::Member { node_id: m.node, api_addr: m.api_addr, state: m.state, alive: m.alive })
            .collect());
    }
    Ok(vec![pb::Member {
        node_id: crate::server::node_id().to_string(),
        api_addr: String::new(),
        state: "standalone".into(),
        alive: true,
    }])
}

fn key_status_pb(k: keybridge_barrier::KeyInfo) -> pb::KeyringStatus {
    pb::KeyringStatus {
        term: k.term,
        install_time: Some(prost_types::Timestamp { seconds: k.installed_unix as i64, nanos: 0 }),
        terms: k.terms,
    }
}

/// A named temporary file, removed when dropped.
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new().prefix(".restore-").tempfile_in(dir)
}

pub struct PoliciesService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::policies_server::Policies for PoliciesService {
    async fn put(&self, req: Request<pb::PutPolicyRequest>) -> Result<Response<pb::PutPolicyResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name).with("policy", plain(r.policy.clone()));
        let res = self.core.put_policy(&c, &r.name, &r.policy).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::PutPolicyResponse {}))
    }

    async fn get(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::PolicyDocument>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name);
        let res = self.core.get_policy(&c, &r.name).await;
        let policy = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::PolicyDocument { name: r.name.trim().to_lowercase(), policy }))
    }

    async fn list(&self, req: Request<pb::ListPoliciesRequest>) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.list_policies(&c).await;
        let names = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListPoliciesResponse { names }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name);
        let res = self.core.delete_policy(&c, &r.name).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }
}

pub struct TokensService {
    pub core: Arc<Core>,
}

fn token_info(e: &keybridge_core::tokens::Identity) -> pb::TokenInfo {
    pb::TokenInfo { num_uses: e.num_uses, ..entry_info(e) }
}

/// The info of a token just issued (created or logged in).
fn entry_info(e: &keybridge_core::tokens::TokenEntry) -> pb::TokenInfo {
    pb::TokenInfo {
        policies: e.policies.clone(),
        display_name: e.display_name.clone(),
        created_time: Some(ts(e.created)),
        expire_time: e.expires.map(ts),
        renewable: e.renewable,
        num_uses: e.num_uses,
        accessor: e.accessor.clone(),
        metadata: e.meta.clone().into_iter().collect(),
    }
}

/// The response data audited for a token just issued: the token as its HMAC.
fn issued_audit(t: &Zeroizing<String>, e: &keybridge_core::tokens::TokenEntry) -> keybridge_core::audit::AuditData {
    vec![
        ("token".into(), field("keybridge.v1.CreateTokenResponse.token", t.as_bytes())),
        ("accessor".into(), field("keybridge.v1.TokenInfo.accessor", &e.accessor)),
        ("policies".into(), plain(e.policies.clone())),
        ("display_name".into(), plain(e.display_name.clone())),
        ("metadata".into(), plain(serde_json::to_value(&e.meta).unwrap_or_default())),
    ]
}

fn token_audit(id: &keybridge_core::tokens::Identity) -> keybridge_core::audit::AuditData {
    vec![
        ("accessor".into(), field("keybridge.v1.TokenInfo.accessor", &id.accessor)),
        ("policies".into(), plain(id.policies.clone())),
        ("display_name".into(), plain(id.display_name.clone())),
    ]
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for TokensService {
    async fn create(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with("policies", plain(r.policies.clone()))
            .with("ttl_seconds", plain(r.ttl_seconds))
            .with("max_ttl_seconds", plain(r.max_ttl_seconds))
            .with("num_uses", plain(r.num_uses))
            .with("display_name", plain(r.display_name.clone()));
        let res = self
            .core
            .create_token(
                &c,
                keybridge_core::TokenRequest {
                    policies: r.policies,
                    ttl_secs: r.ttl_seconds,
                    max_ttl_secs: r.max_ttl_seconds,
                    renewable: r.renewable.unwrap_or(true),
                    num_uses: r.num_uses,
                    display_name: r.display_name,
                    no_default_policy: r.no_default_policy,
                },
            )
            .await;
        let (new_token, entry) = self.core.finish(&c, res, |(t, e)| issued_audit(t, e)).await.map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse { token: new_token.to_string(), info: Some(entry_info(&entry)) }))
    }

    async fn revoke(&self, req: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let target = Zeroizing::new(r.token);
        let res = match (target.is_empty(), r.accessor.is_empty()) {
            (false, true) => {
                let c = c.with("token", field("keybridge.v1.RevokeTokenRequest.token", target.as_bytes()));
                let res = self.core.revoke_token(&c, &target).await;
                self.core.finish(&c, res, none).await
            }
            (true, false) => {
                let c = c.with("accessor", field("keybridge.v1.RevokeTokenRequest.accessor", &r.accessor));
                let res = self.core.revoke_accessor(&c, &r.accessor).await;
                self.core.finish(&c, res, none).await
            }
            _ => return Err(refuse(&self.core, &c, "give exactly one of token and accessor").await),
        };
        res.map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn capabilities_self(
        &self,
        req: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let c = caller(&req)?;
        let path = req.into_inner().path;
        let c = c.with_path(&path);
        let res = self.core.capabilities_self(&c, &path).await;
        let caps =
            self.core.finish(&c, res, |c| vec![("capabilities".into(), plain(c.clone()))]).await.map_err(status)?;
        Ok(Response::new(pb::CapabilitiesResponse { capabilities: caps.into_iter().map(str::to_string).collect() }))
    }

    async fn lookup(&self, req: Request<pb::LookupTokenRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let c = caller(&req)?;
        let id = match req.into_inner().target {
            Some(pb::lookup_token_request::Target::Token(t)) => {
                let target = Zeroizing::new(t);
                let c = c.with("token", field("keybridge.v1.LookupTokenRequest.token", target.as_bytes()));
                let res = self.core.lookup_token(&c, keybridge_core::TokenRef::Token(&target)).await;
                self.core.finish(&c, res, token_audit).await
            }
            Some(pb::lookup_token_request::Target::Accessor(a)) => {
                let c = c.with("accessor", field("keybridge.v1.LookupTokenRequest.accessor", &a));
                let res = self.core.lookup_token(&c, keybridge_core::TokenRef::Accessor(&a)).await;
                self.core.finish(&c, res, token_audit).await
            }
            None => return Err(refuse(&self.core, &c, "give the token or its accessor").await),
        };
        Ok(Response::new(token_info(&id.map_err(status)?)))
    }

    async fn renew(&self, req: Request<pb::RenewTokenRequest>) -> Result<Response<pb::RenewTokenResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let target = Zeroizing::new(r.token);
        let c = c.with("increment_seconds", plain(r.increment_seconds));
        let expires = if target.is_empty() {
            let res = self.core.renew_self(&c, r.increment_seconds).await;
            self.core.finish(&c, res, none).await
        } else {
            let c = c.with("token", field("keybridge.v1.RenewTokenRequest.token", target.as_bytes()));
            let res = self.core.renew_token(&c, &target, r.increment_seconds).await;
            self.core.finish(&c, res, none).await
        }
        .map_err(status)?;
        Ok(Response::new(pb::RenewTokenResponse { expire_time: expires.map(ts) }))
    }

    async fn revoke_self(
        &self,
        req: Request<pb::RevokeSelfRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.revoke_self(&c).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn lookup_self(&self, req: Request<pb::LookupSelfRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let c = caller(&req)?;
        let res = self.core.lookup_self(&c).await;
        let id = self.core.finish(&c, res, token_audit).await.map_err(status)?;
        Ok(Response::new(token_info(&id)))
    }
}

pub struct AuditService {
    pub core: Arc<Core>,
    pub stopping: Stopping,
}

fn device_pb(d: keybridge_core::audit::DeviceEntry) -> pb::AuditDevice {
    pb::AuditDevice {
        path: d.path,
        r#type: d.kind,
        description: d.description,
        options: d.options.into_iter().collect(),
        created_time: Some(ts(d.created)),
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn enable(&self, req: Request<pb::EnableAuditRequest>) -> Result<Response<pb::AuditDevice>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("type", plain(r.r#type.clone()))
            .with("options", plain(serde_json::to_value(&r.options).unwrap_or_default()));
        let res = self.core.enable_audit(&c, &r.path, &r.r#type, &r.description, r.options.into_iter().collect()).await;
        let d = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(device_pb(d)))
    }

    async fn list(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.list_audit(&c).await;
        let devices = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse { devices: devices.into_iter().map(device_pb).collect() }))
    }

    async fn disable(
        &self,
        req: Request<pb::DisableAuditRequest>,
    ) -> Result<Response<pb::DisableAuditResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.disable_audit(&c, &r.path).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DisableAuditResponse {}))
    }

    async fn hash(&self, req: Request<pb::AuditHashRequest>) -> Result<Response<pb::AuditHashResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let input = Zeroizing::new(r.input);
        let c = c.with_path(&r.path).with("input", field("keybridge.v1.AuditHashRequest.input", &input));
        let res = self.core.audit_hash(&c, &r.path, &input).await;
        let hash = self.core.finish(&c, res, |h| vec![("hash".into(), plain(h.clone()))]).await.map_err(status)?;
        Ok(Response::new(pb::AuditHashResponse { hash }))
    }

    async fn export_key(
        &self,
        req: Request<pb::ExportAuditKeyRequest>,
    ) -> Result<Response<pb::AuditVerificationKey>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.audit_verification_key(&c, &r.path).await;
        let k = self
            .core
            .finish(&c, res, |k| vec![("checkpoint_seq".into(), plain(k.checkpoint_seq))])
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AuditVerificationKey {
            device: k.device.clone(),
            key: k.key.clone(),
            checkpoint_seq: k.checkpoint_seq,
            checkpoint_chain: k.checkpoint_chain.clone(),
            segment_start: k.segment_start,
        }))
    }

    async fn verify(
        &self,
        req: Request<Streaming<pb::VerifyAuditChunk>>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let c = caller(&req)?;
        let mut stream = req.into_inner();
        let first = match stream.next().await {
            Some(chunk) => chunk?,
            None => return Err(refuse(&self.core, &c, "send the device and the file's contents").await),
        };
        let c = c.with_path(&first.device);
        let node = Some(first.node_id.as_str()).filter(|n| !n.is_empty());
        let res = self.core.audit_verifier(&c, &first.device, node).await;
        let (key, checkpoint) = match res {
            Ok(k) => k,
            Err(e) => return Err(status(self.core.finish(&c, Err::<(), _>(e), none).await.unwrap_err())),
        };
        let first_seen = first.checkpoint_seq;
        let mut v = keybridge_core::audit::chain::Verifier::new(&key);
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match stream.next().await {
                    Some(c) => c?,
                    None => break,
                },
            };
            if !chunk.file_name.is_empty() {
                v.start_file(&chunk.file_name);
            }
            v.feed(&chunk.data);
        }
        let seen = (first_seen > 0).then_some(first_seen);
        let report = v.finish_at(&checkpoint, seen);
        let out = pb::VerifyAuditResponse {
            intact: report.problem.is_none(),
            records: report.records,
            first_seq: report.first_seq,
            last_seq: report.last_seq,
            problem: report.problem.unwrap_or_default(),
            notes: report.notes,
            checkpoint_seq: seen.unwrap_or(checkpoint.seq).min(checkpoint.seq),
        };
        let res: Result<(), CoreError> = Ok(());
        self.core
            .finish(&c, res, |_| vec![("intact".into(), plain(out.intact)), ("records".into(), plain(out.records))])
            .await
            .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn checkpoint(
        &self,
        req: Request<pb::AuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.audit_checkpoint(&c, &r.path, Some(r.node_id.as_str()).filter(|n| !n.is_empty())).await;
        let cp = self.core.finish(&c, res, |cp| vec![("seq".into(), plain(cp.seq))]).await.map_err(status)?;
        Ok(Response::new(pb::AuditCheckpoint { seq: cp.seq, segment_start: cp.segment_start }))
    }

    type WatchStream = RecordStream;

    async fn watch(&self, req: Request<pb::WatchAuditRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.watch_audit(&c, &r.path).await;
        let rx = self.core.finish(&c, res, none).await.map_err(status)?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).map(|item| match item {
            Ok(line) => Ok(pb::AuditRecord { line: line.to_string() }),
            // A slow watcher missed records; the gap in `seq` shows it too.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Err(Status::data_loss(format!("this watcher fell behind and missed {n} records; reconnect")))
            }
        });
        Ok(Response::new(Box::pin(until_stopping(stream, &self.stopping))))
    }
}

pub struct AuthService {
    pub core: Arc<Core>,
    pub login_limits: crate::ratelimit::LoginLimits,
}

fn method_pb(m: keybridge_core::AuthMount) -> pb::AuthMethod {
    pb::AuthMethod { path: m.path, r#type: m.kind, description: m.description, created_time: Some(ts(m.created)) }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn enable(&self, req: Request<pb::EnableAuthRequest>) -> Result<Response<pb::AuthMethod>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("type", plain(r.r#type.clone()));
        let res = self.core.enable_auth(&c, &r.path, &r.r#type, &r.description).await;
        let m = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(method_pb(m)))
    }

    async fn list(&self, req: Request<pb::ListAuthRequest>) -> Result<Response<pb::ListAuthResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.list_auth(&c).await;
        let methods = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListAuthResponse { methods: methods.into_iter().map(method_pb).collect() }))
    }

    async fn disable(&self, req: Request<pb::DisableAuthRequest>) -> Result<Response<pb::DisableAuthResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.disable_auth(&c, &r.path).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DisableAuthResponse {}))
    }

    async fn write_config(
        &self,
        req: Request<pb::WriteAuthConfigRequest>,
    ) -> Result<Response<pb::WriteAuthConfigResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("settings", field_map("keybridge.v1.WriteAuthConfigRequest.settings", &r.settings));
        let res = self.core.write_auth_config(&c, &r.path, r.settings.into_iter().collect()).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::WriteAuthConfigResponse {}))
    }

    async fn read_config(&self, req: Request<pb::ReadAuthConfigRequest>) -> Result<Response<pb::AuthSettings>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.read_auth_config(&c, &r.path).await;
        let s = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::AuthSettings { settings: s.into_iter().collect() }))
    }

    async fn write_role(
        &self,
        req: Request<pb::WriteAuthRoleRequest>,
    ) -> Result<Response<pb::WriteAuthRoleResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("role", plain(r.role.clone()))
            .with("settings", field_map("keybridge.v1.WriteAuthRoleRequest.settings", &r.settings));
        let res = self.core.write_auth_role(&c, &r.path, &r.role, r.settings.into_iter().collect()).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::WriteAuthRoleResponse {}))
    }

    async fn read_role(&self, req: Request<pb::ReadAuthRoleRequest>) -> Result<Response<pb::AuthSettings>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("role", plain(r.role.clone()));
        let res = self.core.read_auth_role(&c, &r.path, &r.role).await;
        let s = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::AuthSettings { settings: s.into_iter().collect() }))
    }

    async fn list_roles(
        &self,
        req: Request<pb::ListAuthRolesRequest>,
    ) -> Result<Response<pb::ListAuthRolesResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.list_auth_roles(&c, &r.path).await;
        let roles = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListAuthRolesResponse { roles }))
    }

    async fn delete_role(
        &self,
        req: Request<pb::DeleteAuthRoleRequest>,
    ) -> Result<Response<pb::DeleteAuthRoleResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path).with("role", plain(r.role.clone()));
        let res = self.core.delete_auth_role(&c, &r.path, &r.role).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DeleteAuthRoleResponse {}))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        // Refused by the login rate limits before anything is recorded, so
        // a flood of logins cannot fill the audit log.
        let remote = req.remote_addr().map(|a| a.ip());
        let (path, role) = (&req.get_ref().path, &req.get_ref().role);
        self.login_limits.check(remote, path, role).map_err(Status::resource_exhausted)?;
        let c = caller(&req)?;
        let r = req.into_inner();
        let jwt = Zeroizing::new(r.jwt);
        let mut c = c.with_path(&r.path);
        for (k, v) in keybridge_core::login_audit(&r.role, &jwt) {
            c = c.with(k, v);
        }
        let res = self.core.login(&c, &r.path, &r.role, &jwt).await;
        let (token, entry) = self.core.finish(&c, res, |(t, e)| issued_audit(t, e)).await.map_err(status)?;
        Ok(Response::new(pb::LoginResponse { token: token.to_string(), info: Some(entry_info(&entry)) }))
    }
}
