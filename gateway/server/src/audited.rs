//! The one audited entry path of the API.
//!
//! Every request passes [`AuditedLayer`] (inside the rate limit, outside the
//! token gate, which reads the route it found): it names the
//! request's operation from its route (`keybridge.v1.Secrets/Put`, never a
//! name typed in a handler) and gives the handler a slot for its [`Call`].
//! A handler's `Call` (from [`crate::service::caller`], the only way a
//! handler makes a `Caller`) goes back into the slot when the handler ends;
//! the layer then writes the response record itself if the handler has not
//! (`Core::finish`, which also writes a missing request record). So a
//! handler that forgets its response record is still audited, and a
//! response that cannot be recorded is answered as such.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use keybridge_core::{AuditValue, Caller, Core, Error as CoreError};
use keybridge_proto::v1 as pb;

use crate::ratelimit::BoxFuture;

/// What the layer hands a handler (one request extension): the operation
/// its route names (`package.Service/Method`), and the slot its `Call`
/// goes to when the handler ends.
#[derive(Clone)]
struct Slot {
    op: &'static str,
    inner: Arc<SlotInner>,
}

struct SlotInner {
    caller: Mutex<Option<Caller>>,
    core: Arc<Core>,
}

impl Slot {
    fn new(op: &'static str, core: Arc<Core>) -> Self {
        Slot { op, inner: Arc::new(SlotInner { caller: Mutex::new(None), core }) }
    }

    fn put(&self, c: Caller) {
        *self.inner.caller.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    fn take(&self) -> Option<Caller> {
        self.inner.caller.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for SlotInner {
    /// The layer never saw this call end: a deadline passed (the request
    /// deadline, deadline.rs, wraps this layer) or the client cancelled, and
    /// the request was dropped, or a streaming handler's task ended after
    /// its answer began.
    /// Its response is recorded here unless the handler recorded it.
    fn drop(&mut self) {
        let caller = self.caller.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let Some(caller) = caller.filter(|c| !c.response_recorded()) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let core = self.core.clone();
        rt.spawn(async move {
            let ended = CoreError::DeadlineExceeded(
                "the call ended before its answer was sent (a deadline passed: the client's, or the server's \
                 limits.request_timeout; or the client cancelled); the operation may have taken effect"
                    .into(),
            );
            let _ = core.finish(&caller, Err::<(), _>(ended), |_| Vec::new()).await;
        });
    }
}

/// Every method of the API by its HTTP/2 path (`/package.Service/Method`),
/// with its operation name: from the API's descriptors, leaked once.
pub fn api_methods() -> &'static HashMap<String, &'static str> {
    static METHODS: std::sync::OnceLock<HashMap<String, &'static str>> = std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        let fds =
            <prost_types::FileDescriptorSet as prost::Message>::decode(pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let mut out = HashMap::new();
        for file in &fds.file {
            for svc in &file.service {
                for m in &svc.method {
                    let op = format!("{}.{}/{}", file.package(), svc.name(), m.name());
                    out.insert(format!("/{op}"), &*Box::leak(op.into_boxed_str()));
                }
            }
        }
        out
    })
}

/// The operation a request's route names, once the layer has seen it (for
/// the layers inside it: the token gate).
pub fn operation<B>(req: &http::Request<B>) -> Option<&'static str> {
    req.extensions().get::<Slot>().map(|s| s.op)
}

/// A handler's caller: the `Caller` the core sees, which returns to the
/// layer's slot when the handler is done with it.
pub struct Call {
    caller: Option<Caller>,
    slot: Slot,
}

impl Call {
    pub(crate) fn new<T>(req: &tonic::Request<T>, caller: impl FnOnce(&'static str) -> Caller) -> Option<Call> {
        let slot = req.extensions().get::<Slot>()?.clone();
        Some(Call { caller: Some(caller(slot.op)), slot })
    }

    fn map(mut self, f: impl FnOnce(Caller) -> Caller) -> Self {
        self.caller = self.caller.take().map(f);
        self
    }

    pub fn with_path(self, path: impl Into<String>) -> Self {
        self.map(|c| c.with_path(path))
    }

    pub fn with(self, key: impl Into<keybridge_core::audit::AuditKey>, value: AuditValue) -> Self {
        self.map(|c| c.with(key, value))
    }
}

impl std::ops::Deref for Call {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        // Taken only by `map` (which puts it back) and by `drop`.
        self.caller.as_ref().expect("a call holds its caller until dropped")
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(c) = self.caller.take() {
            self.slot.put(c);
        }
    }
}

#[derive(Clone)]
pub struct AuditedLayer {
    core: Arc<Core>,
}

impl AuditedLayer {
    pub fn new(core: Arc<Core>) -> Self {
        AuditedLayer { core }
    }
}

impl<S> tower::Layer<S> for AuditedLayer {
    type Service = Audited<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Audited { inner, core: self.core.clone() }
    }
}

#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    core: Arc<Core>,
}

/// The outcome an answer carries in its headers (a trailers-only error
/// response has `grpc-status` there; a success has it in the trailers), as
/// the core's error of the same status.
fn outcome<B>(resp: &http::Response<B>) -> Result<(), CoreError> {
    use tonic::Code;
    let Some(s) = tonic::Status::from_header_map(resp.headers()).filter(|s| s.code() != Code::Ok) else {
        return Ok(());
    };
    let m = s.message().to_string();
    Err(match s.code() {
        Code::InvalidArgument => CoreError::InvalidArgument(m),
        Code::NotFound => CoreError::NotFound(m),
        Code::FailedPrecondition => CoreError::FailedPrecondition(m),
        Code::AlreadyExists => CoreError::AlreadyExists(m),
        Code::PermissionDenied => CoreError::PermissionDenied(m),
        Code::Unauthenticated => CoreError::Unauthenticated,
        Code::Unimplemented => CoreError::Unimplemented(m),
        Code::Unavailable => CoreError::Unavailable(m),
        Code::ResourceExhausted => CoreError::ResourceExhausted(m),
        Code::DeadlineExceeded => CoreError::DeadlineExceeded(m),
        _ => CoreError::Internal(m),
    })
}

impl<S, B> tower::Service<http::Request<B>> for Audited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(op) = api_methods().get(req.uri().path()).copied() else {
            // Not the API's (health, reflection, an unknown path).
            return Box::pin(self.inner.call(req));
        };
        let slot = Slot::new(op, self.core.clone());
        req.extensions_mut().insert(slot.clone());
        let fut = self.inner.call(req);
        let core = self.core.clone();
        Box::pin(async move {
            let resp = fut.await?;
            let caller = slot.take();
            let Some(caller) = caller.filter(|c| !c.response_recorded()) else { return Ok(resp) };
            tracing::warn!(operation = op, "audit: the handler wrote no response record; the gateway writes it");
            match core.finish(&caller, outcome(&resp), |_| Vec::new()).await {
                Err(e @ CoreError::AuditResponseFailed(_)) => Ok(crate::service::status(e).into_http()),
                _ => Ok(resp),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::collections::BTreeMap;

    use keybridge_barrier::{Barrier, RedbStore};
    use keybridge_core::CoreConfig;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    async fn core_with_file_device() -> (Arc<Core>, String, tempfile::TempDir) {
        let core = Arc::new(Core::new(Barrier::new(Arc::new(RedbStore::in_memory().unwrap())), CoreConfig::default()));
        let root = core.init(1, 1, Some("root-t"), true).await.unwrap().root_token.to_string();
        let dir = tempfile::tempdir().unwrap();
        let opts: BTreeMap<String, String> =
            [("file_path".to_string(), dir.path().join("audit.log").to_string_lossy().into_owned())].into();
        core.enable_audit(&Caller::token(Some(&root)), "file", "file", "", opts).await.unwrap();
        (core, root, dir)
    }

    type Body = tonic::body::Body;
    type Resp = http::Response<Body>;

    /// A handler that runs `f` with the core and its call.
    fn handler<F, Fut>(
        core: Arc<Core>,
        f: F,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = Resp,
        Error = std::convert::Infallible,
        Future = BoxFuture<Resp, std::convert::Infallible>,
    > + Clone
    where
        F: Fn(Arc<Core>, Call) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Resp> + Send + 'static,
    {
        tower::service_fn(move |req: http::Request<Body>| {
            let (core, f) = (core.clone(), f.clone());
            Box::pin(async move {
                let c = crate::service::caller(&tonic::Request::from_http(req)).unwrap();
                Ok(f(core, c).await)
            }) as BoxFuture<_, _>
        })
    }

    /// A handler as a careless one would be: it reads the secret (which
    /// writes the request record) and answers without a response record.
    async fn forgetful(core: Arc<Core>, c: Call, ok: bool) -> Resp {
        let c = c.with_path("secret/app");
        let read = core.get(&c, "secret/app", None).await;
        assert_eq!(read.is_ok(), ok);
        drop(c);
        match read {
            Ok(_) => http::Response::new(Body::empty()),
            Err(e) => crate::service::status(e).into_http(),
        }
    }

    fn request(token: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri("/keybridge.v1.Secrets/Get")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    }

    fn records(dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_handler_that_forgets_its_response_record_is_still_audited() {
        let (core, root, dir) = core_with_file_device().await;
        let value = keybridge_core::value::SecretValue::Text(zeroize::Zeroizing::new("v".into()));
        let r = Caller::token(Some(&root));
        core.put(&r, "secret/app", &value, None).await.unwrap();
        let before = records(&dir).len();
        // Allowed, and refused (an unknown token).
        for (token, ok) in [(root.as_str(), true), ("not-a-token", false)] {
            let h = handler(core.clone(), move |core, c| forgetful(core, c, ok));
            let mut svc = AuditedLayer::new(core.clone()).layer(h);
            let resp = svc.ready().await.unwrap().call(request(token)).await.unwrap();
            assert_eq!(outcome(&resp).is_ok(), ok);
        }
        let new: Vec<serde_json::Value> = records(&dir).split_off(before);
        let kinds: Vec<(&str, &str)> =
            new.iter().map(|r| (r["type"].as_str().unwrap_or(""), r["operation"].as_str().unwrap_or(""))).collect();
        let op = "keybridge.v1.Secrets/Get";
        assert_eq!(kinds, vec![("request", op), ("response", op), ("request", op), ("response", op)], "{new:?}");
        assert_eq!(new[1]["status"], "OK", "{:?}", new[1]);
        assert_eq!(new[3]["status"], "UNAUTHENTICATED", "{:?}", new[3]);
    }

    #[tokio::test]
    async fn a_handler_that_records_its_response_gets_no_second_record() {
        let (core, root, dir) = core_with_file_device().await;
        let handler = handler(core.clone(), |core, c| async move {
            let res = core.list_mounts(&c).await;
            core.finish(&c, res, |_| Vec::new()).await.unwrap();
            http::Response::new(Body::empty())
        });
        let before = records(&dir).len();
        let mut svc = AuditedLayer::new(core.clone()).layer(handler);
        let mut req = request(&root);
        *req.uri_mut() = "/keybridge.v1.Sys/ListMounts".parse().unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(records(&dir).len() - before, 2, "one request and one response record");
    }

    #[test]
    fn every_api_method_has_a_route() {
        let m = api_methods();
        assert_eq!(m.get("/keybridge.v1.Secrets/Put"), Some(&"keybridge.v1.Secrets/Put"));
        assert!(m.len() >= 70, "{} methods", m.len());
        assert!(m.iter().all(|(path, op)| path.strip_prefix('/') == Some(*op)));
    }

    #[test]
    fn mount_credentials_are_the_adapters_sensitive_settings() {
        assert_eq!(keybridge_proto::audit::MOUNT_CREDENTIALS, keybridge_core::provider::settings::SENSITIVE);
    }

    /// Every field a handler audits through `service::field*` is declared
    /// in `keybridge_proto::audit::FIELDS`.
    #[test]
    fn every_audited_field_is_declared() {
        let sources = [include_str!("service.rs"), include_str!("service_logical.rs"), include_str!("service_sync.rs")];
        let mut seen = 0;
        for src in sources {
            for (i, _) in src.match_indices("field") {
                let rest = &src[i + "field".len()..];
                let rest = ["_list(", "_map(", "_value(", "("].iter().find_map(|p| rest.strip_prefix(p));
                let Some(name) = rest.and_then(|r| r.strip_prefix('"')).and_then(|r| r.split('"').next()) else {
                    continue;
                };
                assert!(keybridge_proto::audit::audit(name).is_some(), "{name} is audited but not declared");
                seen += 1;
            }
        }
        assert!(seen >= 15, "{seen} audited fields found");
    }

    /// The client's deadline drops the whole request, this layer included:
    /// the slot records the response when it goes.
    #[tokio::test]
    async fn a_call_cut_short_by_a_deadline_is_still_audited() {
        let (core, root, dir) = core_with_file_device().await;
        let handler = handler(core.clone(), |core, c| async move {
            let _ = core.list_mounts(&c).await;
            // The answer never comes before the deadline.
            std::future::pending::<()>().await;
            drop(c);
            http::Response::new(Body::empty())
        });
        let before = records(&dir).len();
        let mut svc = AuditedLayer::new(core.clone()).layer(handler);
        let mut req = request(&root);
        *req.uri_mut() = "/keybridge.v1.Sys/ListMounts".parse().unwrap();
        let call = svc.ready().await.unwrap().call(req);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(200), call).await.is_err());
        let mut new = Vec::new();
        for _ in 0..100 {
            new = records(&dir).split_off(before);
            if new.len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let kinds: Vec<&str> = new.iter().map(|r| r["type"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["request", "response"], "{new:?}");
        assert_eq!(new[1]["status"], "DEADLINE_EXCEEDED", "{:?}", new[1]);
    }
}
