//! The telemetry listener (`telemetry { address = ... }`): plain HTTP for
//! load balancers and Prometheus, beside the gRPC API.
//!
//! - `GET`/`HEAD /v1/sys/health`, with Vault's codes and query options:
//!   200 on the leader, 429 on another serving node (`standbyok` makes it
//!   200), 501 before init, 503 sealed; `activecode`, `standbycode`,
//!   `sealedcode` and `uninitcode` replace them. The JSON body says
//!   `initialized`, `sealed`, `standby`, `version`, `cluster_name`,
//!   `node_id` and `leader_address`.
//! - `GET /metrics` (and Vault's `/v1/sys/metrics`): the Prometheus
//!   exposition. Without a token unless `unauthenticated_metrics_access =
//!   false`, which takes a token (`X-Vault-Token` or `Authorization:
//!   Bearer`) with `read` on `sys/metrics`.
//! - `GET /v1/<mount>/<path>` for an engine's public paths, without a token
//!   (as Vault): a PKI mount's `ca` and `crl` (DER), `ca/pem`, `ca_chain`
//!   and `crl/pem`, the URLs `config/urls` writes into certificates.
//!   Audited; every other path is refused alike, with no record; at most
//!   `public_reads_per_second` per client address (429 beyond).
//! - [`Measured`]: the gRPC layer that counts requests and times them by
//!   RPC and status code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keybridge_core::{Caller, Core};
use serde_json::json;

use crate::error::Error;

/// What the handlers share.
pub struct Telemetry {
    pub core: Arc<Core>,
    pub version: &'static str,
    pub cluster_name: String,
    pub api_addr: String,
    pub unauthenticated_metrics_access: bool,
    /// Reads without a token, per client address.
    pub public_reads: crate::ratelimit::AddressLimit,
}

/// Connections the listener serves at once; one more is closed at once.
const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the listener and serves it until the process ends: HTTP/1.1,
/// at most [`MAX_CONNECTIONS`] connections, each given [`HEADER_TIMEOUT`]
/// for a request's headers (a slow client cannot hold descriptors the
/// gRPC listener, the store and the audit devices need).
pub async fn start(address: SocketAddr, t: Telemetry) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Listen { addr: address.to_string(), source: e })?;
    let local = listener.local_addr().map_err(|e| Error::Listen { addr: address.to_string(), source: e })?;
    let app = axum::Router::new()
        .route("/v1/sys/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .route("/v1/sys/metrics", axum::routing::get(metrics))
        .route("/v1/{*path}", axum::routing::get(public_read))
        .with_state(Arc::new(t));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                drop(slot);
            });
        }
    });
    Ok(local)
}

/// Who leads, as this node sees it: (standby, the leader's address).
async fn leadership(t: &Telemetry) -> (bool, String) {
    #[cfg(feature = "postgres")]
    if let Some(shared) = crate::server::SHARED.get() {
        let standby = !t.core.is_leading();
        let leader = tokio::time::timeout(std::time::Duration::from_secs(2), shared.store.leader()).await;
        let address = match leader {
            Ok(Ok(l)) if l.live => l.api_addr,
            _ => String::new(),
        };
        return (standby, address);
    }
    (false, t.api_addr.clone())
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "errors": [message] }))).into_response()
}

/// A query option that is a flag: present with no value, `true` or `1`.
fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match q.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(other) => Err(format!("{name}={other:?} is not true or false")),
    }
}

/// A status code option: an integer from 200 to 599.
fn code(q: &HashMap<String, String>, name: &str, default: u16) -> Result<StatusCode, String> {
    let n = match q.get(name) {
        None => default,
        Some(v) => v.parse::<u16>().map_err(|_| format!("{name}={v:?} is not an HTTP status code"))?,
    };
    StatusCode::from_u16(n)
        .ok()
        .filter(|c| (200..=599).contains(&c.as_u16()))
        .ok_or_else(|| format!("{name}={n} is not an HTTP status code from 200 to 599"))
}

async fn health(State(t): State<Arc<Telemetry>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let options = (|| {
        Ok::<_, String>((
            flag(&q, "standbyok")?,
            code(&q, "activecode", 200)?,
            code(&q, "standbycode", 429)?,
            code(&q, "sealedcode", 503)?,
            code(&q, "uninitcode", 501)?,
        ))
    })();
    let (standby_ok, active, standby_code, sealed_code, uninit) = match options {
        Ok(o) => o,
        Err(m) => return bad_request(m),
    };
    let status = match t.core.seal_status().await {
        Ok(s) => s,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({ "errors": [e.to_string()] })))
                .into_response();
        }
    };
    let (standby, leader) = leadership(&t).await;
    let code = if !status.initialized {
        uninit
    } else if status.sealed {
        sealed_code
    } else if standby && !standby_ok {
        standby_code
    } else {
        active
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let body = json!({
        "initialized": status.initialized,
        "sealed": status.sealed,
        "standby": standby,
        "performance_standby": false,
        "server_time_utc": now,
        "version": t.version,
        "cluster_name": t.cluster_name,
        "node_id": crate::server::node_id(),
        "leader_address": leader,
        "seal_type": status.seal_type,
    });
    let mut resp = (code, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// The token of a request: `X-Vault-Token`, or `Authorization: Bearer`.
fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?;
    crate::service::bearer(auth).map(str::to_string)
}

async fn metrics(
    State(t): State<Arc<Telemetry>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    set_leadership_gauges(&t.core).await;
    // OpenMetrics for scrapers that ask for it (Prometheus does), the
    // classic text format for everything else.
    let open = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = if t.unauthenticated_metrics_access {
        t.core.metrics_text(!open).await
    } else {
        let token = zeroize::Zeroizing::new(token(&headers).unwrap_or_default());
        // The HTTP listener's one call that needs a token; audited as the
        // gRPC API's calls are.
        #[allow(clippy::disallowed_methods)]
        let caller = Caller::new(Some(token.as_str()).filter(|t| !t.is_empty()), "http/v1/sys/metrics")
            .with_path("sys/metrics")
            .with_remote(Some(peer));
        match t.core.metrics_for(&caller, !open).await {
            Ok(text) => text,
            Err(e) => return http_error(e),
        }
    };
    let content_type = if open {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// A core error as the HTTP listener answers it: the gRPC status's code
/// as the nearest HTTP one, its message in Vault's `errors` list.
fn http_error(e: keybridge_core::Error) -> Response {
    let s = crate::service::status(e);
    let code = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, axum::Json(json!({ "errors": [s.message()] }))).into_response()
}

/// An engine's public path (a CA certificate, a CRL), with no token.
async fn public_read(
    State(t): State<Arc<Telemetry>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    if let Err(spent) = t.public_reads.check(peer.ip()) {
        let why = match spent {
            crate::ratelimit::Spent::Address => {
                "too many reads from this address; retry in a second (telemetry.public_reads_per_second)"
            }
            crate::ratelimit::Spent::Node => {
                "too many reads on this node; retry in a second (telemetry.public_reads_per_second, ten times it for the node)"
            }
        };
        return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], axum::Json(json!({ "errors": [why] })))
            .into_response();
    }
    // No token is read or needed: these paths are public. The request id
    // is always the server's own (a caller with no token names nothing in
    // the audit log).
    #[allow(clippy::disallowed_methods)]
    let caller = Caller::new(None, "http/v1/read")
        .with_request_id(uuid::Uuid::new_v4().to_string())
        .with_path(&path)
        .with_remote(Some(peer));
    match t.core.public_read(&caller, &path).await {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => http_error(e),
    }
}

/// Leadership, the lease's epoch and the feed's lag, on a shared store.
async fn set_leadership_gauges(core: &Core) {
    let m = core.metrics();
    m.leader.set(i64::from(core.is_leading()));
    #[cfg(feature = "postgres")]
    if let Some(shared) = crate::server::SHARED.get() {
        if let Ok(Ok(l)) = tokio::time::timeout(std::time::Duration::from_secs(2), shared.store.leader()).await {
            m.epoch.set(i64::try_from(l.epoch).unwrap_or(i64::MAX));
        }
        m.feed_lag_seconds.set(shared.store.feed_lag().as_secs_f64());
    }
}

/// Counts and times every API call by RPC and status code. Outside the
/// rate limiter, so refusals for rate are counted too; a path that is not
/// one of the API's methods counts as `other` (no label a client makes up).
#[derive(Clone)]
pub struct MeasuredLayer {
    pub core: Arc<Core>,
}

impl<S> tower::Layer<S> for MeasuredLayer {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner, core: self.core.clone() }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    core: Arc<Core>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = crate::audited::api_methods().get(req.uri().path()).copied().unwrap_or("other");
        let started = std::time::Instant::now();
        let core = self.core.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            // A trailers-only answer (an error) carries its status in the
            // headers; one with a body succeeded as far as its start goes.
            let code = match &resp {
                Ok(r) => tonic::Status::from_header_map(r.headers()).map_or(tonic::Code::Ok, |s| s.code()),
                Err(_) => tonic::Code::Unknown,
            };
            core.metrics().request(rpc, keybridge_client::code_name(code), started.elapsed().as_secs_f64());
            resp
        })
    }
}
