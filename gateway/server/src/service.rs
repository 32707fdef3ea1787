//! The gRPC services. The only place that knows tonic on the server side:
//! it extracts the bearer token, converts messages, calls the core, and
//! maps `keybridge_core::Error` to a `tonic::Status`, one variant to one code.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use keybridge_core::kv::{SecretMeta, VersionMeta};
use keybridge_core::mounts::MountEntry;
use keybridge_core::value::SecretValue;
use keybridge_core::{Core, Error as CoreError, Timestamp};
use keybridge_proto::v1 as pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;
use zeroize::Zeroizing;

pub fn status(e: CoreError) -> Status {
    match e {
        CoreError::InvalidArgument(m) => Status::invalid_argument(m),
        CoreError::NotFound(m) => Status::not_found(m),
        CoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        CoreError::AlreadyExists(m) => Status::already_exists(m),
        CoreError::Unauthenticated => Status::unauthenticated(CoreError::Unauthenticated.to_string()),
        e @ CoreError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
        CoreError::Sealed => Status::unavailable("sealed"),
        e @ CoreError::Contention(_) => Status::aborted(e.to_string()),
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
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not ASCII; send 'Bearer <token>'"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("the authorization header must be 'Bearer <token>'"))?;
    Ok(Bearer(Some(Zeroizing::new(token.trim().to_string()))))
}

fn ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.secs, nanos: t.nanos as i32 }
}

fn version_pb(version: u64, m: &VersionMeta) -> pb::VersionMetadata {
    pb::VersionMetadata {
        version,
        created_time: Some(ts(m.created)),
        deletion_time: m.deletion_time.map(ts),
        destroyed: m.destroyed,
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
    }
}

fn mount_pb(m: &MountEntry) -> pb::Mount {
    pb::Mount {
        path: m.path.clone(),
        r#type: m.kind.clone(),
        description: m.description.clone(),
        id: m.id.clone(),
        config: m.config.clone().into_iter().collect(),
        created_time: Some(ts(m.created)),
    }
}

fn value_from_pb(v: Option<pb::SecretValue>) -> Result<SecretValue, Status> {
    match v.and_then(|v| v.kind) {
        Some(pb::secret_value::Kind::Fields(f)) => {
            Ok(SecretValue::Fields(f.fields.into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect()))
        }
        Some(pb::secret_value::Kind::Binary(b)) => Ok(SecretValue::Binary(Zeroizing::new(b))),
        None => Err(Status::invalid_argument("the value is missing: set value.fields or value.binary")),
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
    };
    pb::SecretValue { kind: Some(kind) }
}

fn versions_arg(v: &[u64]) -> Result<(), Status> {
    if v.contains(&0) {
        return Err(Status::invalid_argument("version numbers start at 1"));
    }
    Ok(())
}

pub struct SecretsService {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let value = value_from_pb(r.value)?;
        let (v, meta) = self.core.put(token.get(), &r.path, &value, r.cas).await.map_err(status)?;
        Ok(Response::new(pb::PutResponse { version: Some(version_pb(v, &meta)) }))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let version = (r.version > 0).then_some(r.version);
        let read = self.core.get(token.get(), &r.path, version).await.map_err(status)?;
        Ok(Response::new(pb::GetResponse {
            version: Some(version_pb(read.version, &read.meta)),
            custom_metadata: read.custom_metadata.into_iter().collect(),
            value: Some(value_pb(read.value)),
        }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        versions_arg(&r.versions)?;
        self.core.delete(token.get(), &r.path, &r.versions, r.all_versions).await.map_err(status)?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let (keys, next_page_token) = self
            .core
            .list(token.get(), &r.path, r.page_size as usize, &r.page_token, r.recursive)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListResponse { keys, next_page_token }))
    }

    async fn describe(&self, req: Request<pb::DescribeRequest>) -> Result<Response<pb::DescribeResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let meta = self.core.describe(token.get(), &r.path).await.map_err(status)?;
        Ok(Response::new(pb::DescribeResponse { metadata: Some(meta_pb(&r.path, &meta)) }))
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let meta = self.core.describe(token.get(), &r.path).await.map_err(status)?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: meta.versions.iter().map(|(v, m)| version_pb(*v, m)).collect(),
            current_version: meta.current_version,
        }))
    }

    async fn undelete(&self, req: Request<pb::UndeleteRequest>) -> Result<Response<pb::UndeleteResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        versions_arg(&r.versions)?;
        self.core.undelete(token.get(), &r.path, &r.versions).await.map_err(status)?;
        Ok(Response::new(pb::UndeleteResponse {}))
    }

    async fn destroy(&self, req: Request<pb::DestroyRequest>) -> Result<Response<pb::DestroyResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        versions_arg(&r.versions)?;
        self.core.destroy(token.get(), &r.path, &r.versions).await.map_err(status)?;
        Ok(Response::new(pb::DestroyResponse {}))
    }

    async fn put_metadata(
        &self,
        req: Request<pb::PutMetadataRequest>,
    ) -> Result<Response<pb::PutMetadataResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let custom: BTreeMap<String, String> = r.custom_metadata.into_iter().collect();
        let meta = self
            .core
            .put_metadata(token.get(), &r.path, Some(custom), r.max_versions, r.cas_required)
            .await
            .map_err(status)?;
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
    fn status_pb(&self, s: keybridge_core::SealStatus) -> pb::SealStatusResponse {
        pb::SealStatusResponse {
            initialized: s.initialized,
            sealed: s.sealed,
            key_shares: s.shares,
            key_threshold: s.threshold,
            progress: s.progress,
            version: self.version.to_string(),
            storage_type: s.storage_type.to_string(),
        }
    }

    /// Health follows the seal: NOT_SERVING while sealed.
    pub async fn sync_health(&self) {
        sync_health(&self.core, &self.health).await;
    }
}

pub async fn sync_health(core: &Core, health: &HealthReporter) {
    let serving = matches!(core.seal_status().await, Ok(s) if !s.sealed);
    for name in ["", "keybridge.v1.Secrets", "keybridge.v1.Sys", "keybridge.v1.Policies", "keybridge.v1.Tokens"] {
        let st = if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
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
        Ok(Response::new(self.status_pb(s)))
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let r = req.into_inner();
        let (shares, threshold) = match (r.key_shares, r.key_threshold) {
            (0, 0) => (5, 3),
            (s, t) => (s, t),
        };
        let init = self.core.init(shares, threshold, None, false).await.map_err(status)?;
        tracing::info!(shares, threshold, "initialized; the server is sealed");
        Ok(Response::new(pb::InitResponse {
            unseal_keys_b64: init.keys.iter().map(|k| k.to_string()).collect(),
            unseal_threshold: init.threshold,
            root_token: init.root_token.to_string(),
        }))
    }

    async fn unseal(&self, req: Request<pb::UnsealRequest>) -> Result<Response<pb::SealStatusResponse>, Status> {
        let r = req.into_inner();
        let key = Zeroizing::new(r.key);
        if key.trim().is_empty() && !r.reset {
            return Err(Status::invalid_argument("give an unseal key, or reset = true"));
        }
        let result = self.core.unseal(&key, r.reset).await;
        self.sync_health().await;
        let s = result.map_err(status)?;
        if !s.sealed {
            tracing::info!("unsealed");
        }
        Ok(Response::new(self.status_pb(s)))
    }

    async fn seal(&self, req: Request<pb::SealRequest>) -> Result<Response<pb::SealStatusResponse>, Status> {
        let token = token(&req)?;
        let s = self.core.seal(token.get()).await.map_err(status)?;
        self.sync_health().await;
        tracing::info!("sealed by request");
        Ok(Response::new(self.status_pb(s)))
    }

    async fn enable_mount(&self, req: Request<pb::EnableMountRequest>) -> Result<Response<pb::Mount>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let m = self
            .core
            .enable_mount(token.get(), &r.path, &r.r#type, &r.description, r.config.into_iter().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(mount_pb(&m)))
    }

    async fn list_mounts(
        &self,
        req: Request<pb::ListMountsRequest>,
    ) -> Result<Response<pb::ListMountsResponse>, Status> {
        let token = token(&req)?;
        let mounts = self.core.list_mounts(token.get()).await.map_err(status)?;
        Ok(Response::new(pb::ListMountsResponse { mounts: mounts.iter().map(mount_pb).collect() }))
    }

    async fn disable_mount(
        &self,
        req: Request<pb::DisableMountRequest>,
    ) -> Result<Response<pb::DisableMountResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        self.core.disable_mount(token.get(), &r.path).await.map_err(status)?;
        Ok(Response::new(pb::DisableMountResponse {}))
    }

    async fn tune_mount(&self, req: Request<pb::TuneMountRequest>) -> Result<Response<pb::Mount>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let m = self
            .core
            .tune_mount(token.get(), &r.path, r.description.as_deref(), r.config.into_iter().collect())
            .await
            .map_err(status)?;
        Ok(Response::new(mount_pb(&m)))
    }

    async fn rotate(&self, req: Request<pb::RotateRequest>) -> Result<Response<pb::KeyStatus>, Status> {
        let token = token(&req)?;
        let k = self.core.rotate(token.get()).await.map_err(status)?;
        tracing::info!(term = k.term, "encryption key rotated");
        Ok(Response::new(key_status_pb(k)))
    }

    async fn key_status(&self, req: Request<pb::KeyStatusRequest>) -> Result<Response<pb::KeyStatus>, Status> {
        let token = token(&req)?;
        let k = self.core.key_status(token.get()).await.map_err(status)?;
        Ok(Response::new(key_status_pb(k)))
    }

    async fn rekey(&self, req: Request<pb::RekeyRequest>) -> Result<Response<pb::RekeyResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let keys: Vec<String> = r.keys;
        let result = self.core.rekey(token.get(), &keys, r.key_shares, r.key_threshold).await;
        drop(keys.into_iter().map(Zeroizing::new).collect::<Vec<_>>());
        let shares = result.map_err(status)?;
        tracing::info!(shares = r.key_shares, threshold = r.key_threshold, "root key replaced (rekey)");
        Ok(Response::new(pb::RekeyResponse {
            unseal_keys_b64: shares.iter().map(|k| k.to_string()).collect(),
            unseal_threshold: r.key_threshold,
        }))
    }

    type SnapshotSaveStream = ChunkStream;

    async fn snapshot_save(
        &self,
        req: Request<pb::SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        let token = token(&req)?;
        self.core.authorize_snapshot(token.get()).await.map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let core = self.core.clone();
        tokio::spawn(async move {
            let writer = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            if let Err(e) = core.snapshot(token.get(), Box::new(writer)).await {
                let _ = tx.send(Err(status(e))).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn snapshot_restore(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotRestoreResponse>, Status> {
        let token = token(&req)?;
        let token = token.get();
        self.core.authorize_snapshot(token).await.map_err(status)?;
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
        let (entries, sealed) =
            self.core.restore(token, staged.path().to_path_buf(), force.unwrap_or(false)).await.map_err(status)?;
        self.sync_health().await;
        tracing::info!(entries, sealed, "snapshot restored");
        Ok(Response::new(pb::SnapshotRestoreResponse { entries, sealed }))
    }
}

fn key_status_pb(k: keybridge_barrier::KeyInfo) -> pb::KeyStatus {
    pb::KeyStatus {
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
        let token = token(&req)?;
        let r = req.into_inner();
        self.core.put_policy(token.get(), &r.name, &r.policy).await.map_err(status)?;
        Ok(Response::new(pb::PutPolicyResponse {}))
    }

    async fn get(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::PolicyDocument>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let policy = self.core.get_policy(token.get(), &r.name).await.map_err(status)?;
        Ok(Response::new(pb::PolicyDocument { name: r.name.trim().to_lowercase(), policy }))
    }

    async fn list(&self, req: Request<pb::ListPoliciesRequest>) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let token = token(&req)?;
        let names = self.core.list_policies(token.get()).await.map_err(status)?;
        Ok(Response::new(pb::ListPoliciesResponse { names }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        self.core.delete_policy(token.get(), &r.name).await.map_err(status)?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }
}

pub struct TokensService {
    pub core: Arc<Core>,
}

fn token_info(e: keybridge_core::token::Identity) -> pb::TokenInfo {
    pb::TokenInfo {
        policies: e.policies,
        display_name: e.display_name,
        created_time: Some(ts(e.created)),
        expire_time: e.expires.map(ts),
        renewable: e.renewable,
        num_uses: e.num_uses,
        accessor: e.accessor,
    }
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for TokensService {
    async fn create(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let (new_token, entry) = self
            .core
            .create_token(
                token.get(),
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
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: new_token.to_string(),
            info: Some(token_info(keybridge_core::token::Identity {
                hash: String::new(),
                accessor: entry.accessor,
                policies: entry.policies,
                display_name: entry.display_name,
                created: entry.created,
                expires: entry.expires,
                renewable: entry.renewable,
                num_uses: entry.num_uses,
            })),
        }))
    }

    async fn revoke(&self, req: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let target = Zeroizing::new(r.token);
        match (target.is_empty(), r.accessor.is_empty()) {
            (false, true) => self.core.revoke_token(token.get(), &target).await,
            (true, false) => self.core.revoke_accessor(token.get(), &r.accessor).await,
            _ => return Err(Status::invalid_argument("give exactly one of token and accessor")),
        }
        .map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn capabilities_self(
        &self,
        req: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let token = token(&req)?;
        let path = req.into_inner().path;
        let caps = self.core.capabilities_self(token.get(), &path).await.map_err(status)?;
        Ok(Response::new(pb::CapabilitiesResponse { capabilities: caps.into_iter().map(str::to_string).collect() }))
    }

    async fn lookup(&self, req: Request<pb::LookupTokenRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let token = token(&req)?;
        let target = match req.into_inner().target {
            Some(pb::lookup_token_request::Target::Token(t)) => Zeroizing::new(t),
            Some(pb::lookup_token_request::Target::Accessor(a)) => {
                let id = self
                    .core
                    .lookup_token(token.get(), keybridge_core::TokenRef::Accessor(&a))
                    .await
                    .map_err(status)?;
                return Ok(Response::new(token_info(id)));
            }
            None => return Err(Status::invalid_argument("give the token or its accessor")),
        };
        let id = self.core.lookup_token(token.get(), keybridge_core::TokenRef::Token(&target)).await.map_err(status)?;
        Ok(Response::new(token_info(id)))
    }

    async fn renew(&self, req: Request<pb::RenewTokenRequest>) -> Result<Response<pb::RenewTokenResponse>, Status> {
        let token = token(&req)?;
        let r = req.into_inner();
        let target = Zeroizing::new(r.token);
        let expires = if target.is_empty() {
            self.core.renew_self(token.get(), r.increment_seconds).await
        } else {
            self.core.renew_token(token.get(), &target, r.increment_seconds).await
        }
        .map_err(status)?;
        Ok(Response::new(pb::RenewTokenResponse { expire_time: expires.map(ts) }))
    }

    async fn revoke_self(
        &self,
        req: Request<pb::RevokeSelfRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let token = token(&req)?;
        self.core.revoke_self(token.get()).await.map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn lookup_self(&self, req: Request<pb::LookupSelfRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let token = token(&req)?;
        let id = self.core.lookup_self(token.get()).await.map_err(status)?;
        Ok(Response::new(token_info(id)))
    }
}
