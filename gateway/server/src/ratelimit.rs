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

type Limiter = Option<Arc<DefaultKeyedRateLimiter<u64>>>;

/// The per-token limit in force (none: unlimited); SIGHUP replaces it.
#[derive(Clone)]
pub struct TokenRateLimitLayer {
    limiter: Arc<std::sync::RwLock<Limiter>>,
    hasher: std::collections::hash_map::RandomState,
}

impl TokenRateLimitLayer {
    /// `per_second` requests per token (0: no limit), `burst` at once (0:
    /// one second's worth).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let layer = TokenRateLimitLayer {
            limiter: Arc::new(std::sync::RwLock::new(None)),
            hasher: std::collections::hash_map::RandomState::new(),
        };
        layer.set(per_second, burst);
        layer
    }

    /// Puts a new limit in force; every token starts with a full bucket.
    pub fn set(&self, per_second: u32, burst: u32) {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            keyed_limiter(Quota::per_second(rate).allow_burst(burst))
        });
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
    }

    fn current(&self) -> Limiter {
        self.limiter.read().unwrap_or_else(|p| p.into_inner()).clone()
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

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

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
        if let (Some(auth), Some(limiter)) = (req.headers().get(http::header::AUTHORIZATION), self.layer.current()) {
            let key = self.layer.key(auth.as_bytes());
            if limiter.check_key(&key).is_err() {
                let status = tonic::Status::resource_exhausted(
                    "rate limit exceeded for this token; slow down and retry (limits.token_requests_per_second)",
                );
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// Logins are refused early when one remote address, or one role, asks too
/// often: a credential guessed or replayed at speed meets the limit, not
/// the verifier. Keys are keyed hashes, so no role name or address is held.
#[derive(Clone, Default)]
pub struct LoginLimits {
    limiters: Arc<std::sync::RwLock<(Limiter, Limiter)>>,
    hasher: std::collections::hash_map::RandomState,
}

/// A keyed limiter whose idle keys are forgotten now and then, so memory
/// follows the number of active keys, not every key ever seen.
fn keyed_limiter(quota: Quota) -> Arc<DefaultKeyedRateLimiter<u64>> {
    let limiter = Arc::new(RateLimiter::keyed(quota));
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
    limiter
}

/// `per_second` with a burst of twice that; none for 0.
fn keyed(per_second: u32) -> Option<Arc<DefaultKeyedRateLimiter<u64>>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 > 0"));
    Some(keyed_limiter(Quota::per_second(rate).allow_burst(burst)))
}

impl LoginLimits {
    pub fn new(per_address: u32, per_role: u32) -> Self {
        let l = LoginLimits::default();
        l.set(per_address, per_role);
        l
    }

    /// Puts new limits in force (SIGHUP); every bucket starts full.
    pub fn set(&self, per_address: u32, per_role: u32) {
        *self.limiters.write().unwrap_or_else(|p| p.into_inner()) = (keyed(per_address), keyed(per_role));
    }

    /// Takes one login from `remote`'s and the role's buckets, or says which
    /// is spent. The role is keyed as the core reads it (path without its
    /// slashes, name trimmed and lowercased).
    pub fn check(&self, remote: Option<std::net::IpAddr>, path: &str, role: &str) -> Result<(), &'static str> {
        let (by_address, by_role) = self.limiters.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(l), Some(ip)) = (&by_address, remote)
            && l.check_key(&self.hasher.hash_one(ip)).is_err()
        {
            return Err("too many logins from this address; wait and retry (limits.login_requests_per_second)");
        }
        if let Some(l) = &by_role {
            let key = (path.trim().trim_matches('/').to_lowercase(), role.trim().to_lowercase());
            if l.check_key(&self.hasher.hash_one(key)).is_err() {
                return Err("too many logins to this role; wait and retry (limits.login_role_requests_per_second)");
            }
        }
        Ok(())
    }
}

/// Reads without a token on the HTTP listener (a PKI mount's CA and CRL):
/// a bucket per client address (an IPv6 address by its /48, which one
/// party can hold whole), `per_second` with a burst of twice that, and one
/// for the node, ten times that.
pub struct AddressLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<u64>>>,
    node: Option<governor::DefaultDirectRateLimiter>,
    hasher: std::collections::hash_map::RandomState,
}

/// Which bucket of [`AddressLimit`] is spent.
#[derive(Debug, PartialEq, Eq)]
pub enum Spent {
    Address,
    Node,
}

impl AddressLimit {
    /// `per_second` reads per address (0: no limit).
    pub fn new(per_second: u32) -> Self {
        let two = NonZeroU32::new(2).expect("2 > 0");
        let node = NonZeroU32::new(per_second.saturating_mul(10))
            .map(|rate| RateLimiter::direct(Quota::per_second(rate).allow_burst(rate.saturating_mul(two))));
        AddressLimit { limiter: keyed(per_second), node, hasher: std::collections::hash_map::RandomState::new() }
    }

    /// Takes one read from `ip`'s bucket and the node's, or says which is
    /// spent.
    pub fn check(&self, ip: std::net::IpAddr) -> Result<(), Spent> {
        let Some(l) = &self.limiter else { return Ok(()) };
        let key = match ip {
            std::net::IpAddr::V4(v4) => self.hasher.hash_one(v4),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.hasher.hash_one(v4),
                None => self.hasher.hash_one(&v6.octets()[..6]),
            },
        };
        l.check_key(&key).map_err(|_| Spent::Address)?;
        match &self.node {
            Some(n) => n.check().map_err(|_| Spent::Node),
            None => Ok(()),
        }
    }
}

impl TokenRateLimitLayer {
    /// The bucket of a header: the keyed hash of its token as the services
    /// read it (any case of `Bearer`, any spaces), or of the header itself
    /// when it holds no token (the service refuses it anyway).
    fn key(&self, header: &[u8]) -> u64 {
        let token = std::str::from_utf8(header).ok().and_then(crate::service::bearer);
        self.hasher.hash_one(token.map_or(header, str::as_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_token_is_one_bucket_however_it_is_written() {
        let layer = TokenRateLimitLayer::new(1, 1);
        let k = layer.key(b"Bearer kb.abc");
        for same in ["bearer kb.abc", "BEARER kb.abc", "Bearer   kb.abc  ", "  Bearer kb.abc"] {
            assert_eq!(layer.key(same.as_bytes()), k, "{same:?}");
        }
        assert_ne!(layer.key(b"Bearer kb.abd"), k);
        assert_eq!(crate::service::bearer("Bearer "), None);
        assert_eq!(crate::service::bearer("Basic kb.abc"), None);
    }

    #[tokio::test]
    async fn logins_are_limited_per_address_and_per_role() {
        let ip = |n: u8| Some(std::net::IpAddr::from([10, 0, 0, n]));
        // Per address: 1/s, a burst of 2, whatever the role.
        let l = LoginLimits::new(1, 0);
        assert!(l.check(ip(1), "kubernetes", "a").is_ok());
        assert!(l.check(ip(1), "kubernetes", "b").is_ok());
        let e = l.check(ip(1), "kubernetes", "c").unwrap_err();
        assert!(e.contains("address"), "{e}");
        assert!(l.check(ip(2), "kubernetes", "a").is_ok(), "another address has its own bucket");
        // Per role: 1/s, a burst of 2, whatever the address; spelled any way.
        let l = LoginLimits::new(0, 1);
        assert!(l.check(ip(1), "kubernetes/", "app").is_ok());
        assert!(l.check(ip(2), "/kubernetes", " APP ").is_ok());
        let e = l.check(ip(3), "kubernetes", "app").unwrap_err();
        assert!(e.contains("role"), "{e}");
        assert!(l.check(ip(3), "kubernetes", "other").is_ok(), "another role has its own bucket");
        assert!(LoginLimits::new(0, 0).check(ip(1), "k", "r").is_ok());
        // A reload puts new limits in force.
        let l = LoginLimits::new(0, 0);
        l.set(1, 0);
        assert!(l.check(ip(1), "k", "a").is_ok() && l.check(ip(1), "k", "b").is_ok());
        assert!(l.check(ip(1), "k", "c").unwrap_err().contains("address"));
        l.set(0, 0);
        assert!(l.check(ip(1), "k", "d").is_ok());
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    /// A burst of twice the rate per address (an IPv6 address by its /48),
    /// then refused; addresses do not share a bucket, but all share the
    /// node's.
    #[tokio::test]
    async fn reads_without_a_token_are_limited_per_address() {
        let l = AddressLimit::new(1);
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let got: Vec<bool> = (0..4).map(|_| l.check(a).is_ok()).collect();
        assert_eq!(got, [true, true, false, false]);
        assert_eq!(l.check(a), Err(Spent::Address));
        assert!(l.check(b).is_ok());
        let v6a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: std::net::IpAddr = "2001:db8:0:ffff::2".parse().unwrap();
        assert!(l.check(v6a).is_ok() && l.check(v6b).is_ok());
        assert!(l.check(v6a).is_err(), "one /48, one bucket");
        assert!((0..100).all(|_| AddressLimit::new(0).check(a).is_ok()), "0: no limit");
        // The node's bucket: ten times the rate, a burst of twice that (20
        // at 1/s); 5 spent above. Many addresses cannot pass it.
        let passed = (0..100u8).filter(|i| l.check(std::net::IpAddr::from([198, 51, 100, *i])).is_ok()).count();
        assert_eq!(passed, 15);
        assert_eq!(l.check(std::net::IpAddr::from([203, 0, 113, 1])), Err(Spent::Node));
    }
}
