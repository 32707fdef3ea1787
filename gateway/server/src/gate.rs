//! The token is checked before a request's body is read.
//!
//! tonic reads a whole gRPC message (up to `max_request_bytes`, 4 MiB for a
//! plugin chunk) before a handler runs, so without this layer a client with
//! no valid token could make the server hold megabytes per stream. Here a
//! request to a method that needs a token is authenticated from its headers
//! alone; an unknown, expired or revoked token is refused (and audited, as
//! the services would) before any of the body is read. Methods that need no
//! token (seal status, init, unseal, login, health, reflection) pass.

use std::sync::Arc;
use std::task::{Context, Poll};

use keybridge_core::{Caller, Core, Error as CoreError};

use crate::ratelimit::BoxFuture;

/// The methods served without a token.
const OPEN: &[&str] =
    &["keybridge.v1.Sys/SealStatus", "keybridge.v1.Sys/Init", "keybridge.v1.Sys/Unseal", "keybridge.v1.Auth/Login"];

/// The methods a node serves even when it has not followed its store's
/// change feed: they read or change only the node's own seal state.
const LIFECYCLE: &[&str] = &["keybridge.v1.Sys/SealStatus", "keybridge.v1.Sys/Init", "keybridge.v1.Sys/Unseal"];

/// Runs inside the audited layer, which has named the request's operation
/// from its route (`audited::operation`): the route is looked up once.
#[derive(Clone)]
pub struct AuthGateLayer {
    core: Arc<Core>,
}

impl AuthGateLayer {
    pub fn new(core: Arc<Core>) -> Self {
        AuthGateLayer { core }
    }
}

impl<S> tower::Layer<S> for AuthGateLayer {
    type Service = AuthGate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthGate { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct AuthGate<S> {
    inner: S,
    layer: AuthGateLayer,
}

impl<S, B> tower::Service<http::Request<B>> for AuthGate<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let op = crate::audited::operation(&req);
        // A node that shares a PostgreSQL table and has not followed its
        // change feed lately serves nothing (its caches, its auth methods
        // and audit devices may be stale), logins included: only what an
        // operator needs to see and unseal it.
        if op.is_some_and(|op| !LIFECYCLE.contains(&op))
            && let Err(why) = crate::server::serves()
        {
            let status = tonic::Status::unavailable(why);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let Some(op) = op.filter(|op| !OPEN.contains(op)) else {
            return Box::pin(self.inner.call(req));
        };
        // The ready service goes with this request; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let core = self.layer.core.clone();
        Box::pin(async move {
            let header = req.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().ok());
            let token = match header.map(crate::service::header_token) {
                None => None,
                Some(Ok(t)) => Some(t),
                // Malformed: the same answer the services give it.
                Some(Err(status)) => return Ok(status.into_http()),
            };
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let remote =
                req.extensions().get::<tonic::transport::server::TcpConnectInfo>().and_then(|i| i.remote_addr());
            // Audited here: refused calls are finished below.
            #[allow(clippy::disallowed_methods)]
            let caller = Caller::new(token, op).with_request_id(id.to_string()).with_remote(remote);
            match core.precheck(&caller).await {
                // Unknown, expired or revoked: refused before the body.
                Err(e @ CoreError::Unauthenticated) => {
                    let e = core.finish(&caller, Err::<(), _>(e), |_| Vec::new()).await.err();
                    let status = crate::service::status(e.unwrap_or(CoreError::Unauthenticated));
                    Ok(status.into_http())
                }
                // Anything else (a sealed server, a valid token): the service
                // answers as it always does.
                _ => inner.call(req).await,
            }
        })
    }
}
