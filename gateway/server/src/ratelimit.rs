//! Per-token rate limits, as a tower layer in front of every service.
//!
//! Requests are keyed by a keyed hash (SipHash with a per-process random
//! key) of their `authorization` header, so the limiter never holds a
//! token. Requests without one are not limited here: they are refused as
//! unauthenticated anyway. Over the limit: RESOURCE_EXHAUSTED, and the
//! request never reaches the core.

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

#[derive(Clone)]
pub struct TokenRateLimitLayer {
    limiter: Arc<DefaultKeyedRateLimiter<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenRateLimitLayer {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let limiter = Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)));
        // Forget idle tokens' state now and then, so memory follows the
        // number of active tokens, not every token ever seen.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.retain_recent();
                l.shrink_to_fit();
            }
        });
        TokenRateLimitLayer { limiter, hasher: std::collections::hash_map::RandomState::new() }
    }
}

impl<S> tower::Layer<S> for TokenRateLimitLayer {
    type Service = TokenRateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TokenRateLimit { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct TokenRateLimit<S> {
    inner: S,
    layer: TokenRateLimitLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for TokenRateLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(auth) = req.headers().get(http::header::AUTHORIZATION) {
            let key = self.layer.hasher.hash_one(auth.as_bytes());
            if self.layer.limiter.check_key(&key).is_err() {
                let status = tonic::Status::resource_exhausted(
                    "rate limit exceeded for this token; slow down and retry (limits.token_requests_per_second)",
                );
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}
