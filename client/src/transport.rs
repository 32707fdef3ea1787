//! The channel under every stub: it adds the token to each call and
//! retries the calls that are safe to repeat when the gateway is
//! unavailable. Which calls those are is decided here, by method, once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::config::Retry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The methods a client may repeat when the gateway answers `UNAVAILABLE`
/// or cannot be reached: reads, lookups and lists, whose repetition changes
/// nothing (a token with a use limit spends one use per try). Every other
/// method, a check-and-set `Put` included, is tried once. `Logical.Read`
/// and `Logical.List` are not here: an engine's read can mint a credential.
pub const SAFE_TO_RETRY: &[&str] = &[
    "/keybridge.v1.Secrets/Get",
    "/keybridge.v1.Secrets/List",
    "/keybridge.v1.Secrets/Describe",
    "/keybridge.v1.Secrets/ListVersions",
    "/keybridge.v1.Secrets/Watch",
    "/keybridge.v1.Sys/SealStatus",
    "/keybridge.v1.Sys/ListMounts",
    "/keybridge.v1.Sys/KeyStatus",
    "/keybridge.v1.Policies/Get",
    "/keybridge.v1.Policies/List",
    "/keybridge.v1.Tokens/LookupSelf",
    "/keybridge.v1.Tokens/Lookup",
    "/keybridge.v1.Tokens/CapabilitiesSelf",
    "/keybridge.v1.Audit/List",
    "/keybridge.v1.Audit/Hash",
    "/keybridge.v1.Audit/ExportKey",
    "/keybridge.v1.Audit/Watch",
    "/keybridge.v1.Auth/List",
    "/keybridge.v1.Auth/ReadConfig",
    "/keybridge.v1.Auth/ReadRole",
    "/keybridge.v1.Auth/ListRoles",
    "/keybridge.v1.Sync/GetRule",
    "/keybridge.v1.Sync/ListRules",
    "/keybridge.v1.Sync/Status",
    "/keybridge.v1.Sync/GetRotation",
    "/keybridge.v1.Logical/PathHelp",
    "/keybridge.v1.Leases/Lookup",
    "/keybridge.v1.Leases/List",
    "/keybridge.v1.Plugins/List",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Whether the method at this HTTP path (`/keybridge.v1.Secrets/Get`) may
/// be retried.
pub fn safe_to_retry(path: &str) -> bool {
    SAFE_TO_RETRY.contains(&path)
}

/// A [`Channel`] that authenticates and retries; the `T` of every stub.
#[derive(Clone)]
pub struct Transport {
    channel: Channel,
    token: Option<http::HeaderValue>,
    retry: Retry,
    /// The gateway's URL, for naming the likely cause of a failure.
    url: std::sync::Arc<str>,
}

impl Transport {
    pub(crate) fn new(channel: Channel, token: Option<http::HeaderValue>, retry: Retry, url: String) -> Transport {
        Transport { channel, token, retry, url: url.into() }
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn with_token(&self, token: Option<http::HeaderValue>) -> Transport {
        Transport { channel: self.channel.clone(), token, retry: self.retry, url: self.url.clone() }
    }
}

/// The gRPC status an error from the channel stands for (`UNAVAILABLE`
/// for a failed connection, `CANCELLED` for a timeout). A failure to talk
/// to the gateway at all is `UNAVAILABLE`, with its likely cause named.
fn status_of(url: &str, e: BoxError) -> tonic::Status {
    match crate::error::diagnose(url, &*e) {
        Some(why) => tonic::Status::unavailable(format!("cannot reach the gateway at {url}: {why}")),
        None => tonic::Status::from_error(e),
    }
}

/// The status of a trailers-only answer (how a server reports an error
/// before any message), if this is one.
fn header_status(resp: &http::Response<Body>) -> Option<tonic::Code> {
    let v = resp.headers().get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(v))
}

impl Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(t) = &self.token {
            // A token set on the request itself wins.
            if !req.headers().contains_key(http::header::AUTHORIZATION) {
                req.headers_mut().insert(http::header::AUTHORIZATION, t.clone());
            }
        }
        // The channel polled ready takes this call; a clone takes its place.
        let clone = self.channel.clone();
        let mut ready = std::mem::replace(&mut self.channel, clone);
        let retry = self.retry;
        let url = self.url.clone();
        if retry.attempts <= 1 || !safe_to_retry(req.uri().path()) {
            return Box::pin(async move {
                ready.call(req).await.map_err(|e| Box::new(status_of(&url, e.into())) as BoxError)
            });
        }
        Box::pin(async move {
            // A safe method's request is one small message: keep it to send again.
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
            let mut attempt = 1u32;
            loop {
                let mut again = http::Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
                *again.method_mut() = parts.method.clone();
                *again.uri_mut() = parts.uri.clone();
                *again.version_mut() = parts.version;
                *again.headers_mut() = parts.headers.clone();
                *again.extensions_mut() = parts.extensions.clone();
                if attempt > 1 {
                    ready.ready().await.map_err(Into::<BoxError>::into)?;
                }
                let (unavailable, result) = match ready.call(again).await {
                    Ok(resp) => (header_status(&resp) == Some(tonic::Code::Unavailable), Ok(resp)),
                    Err(e) => {
                        let status = status_of(&url, e.into());
                        (status.code() == tonic::Code::Unavailable, Err(Box::new(status) as BoxError))
                    }
                };
                if !unavailable || attempt >= retry.attempts {
                    return result;
                }
                tokio::time::sleep(retry.backoff(attempt)).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    /// Every method of the API is classified: new RPCs are tried once until
    /// someone decides they are safe to repeat, and no listed method is
    /// missing from the API or takes a request stream (which cannot be
    /// kept to send again).
    #[test]
    fn every_listed_method_exists_and_takes_one_message() {
        let mut fds = prost_types::FileDescriptorSet::decode(keybridge_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
        fds.file.extend(prost_types::FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET).unwrap().file);
        let mut methods = std::collections::BTreeMap::new();
        for f in &fds.file {
            for s in &f.service {
                for m in &s.method {
                    methods.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()), m.client_streaming());
                }
            }
        }
        for safe in super::SAFE_TO_RETRY {
            let streaming = methods.get(*safe).unwrap_or_else(|| panic!("{safe} is not a method of the API"));
            assert!(!streaming, "{safe} takes a request stream");
        }
        for never in [
            "/keybridge.v1.Secrets/Put",
            "/keybridge.v1.Logical/Read",
            "/keybridge.v1.Logical/List",
            "/keybridge.v1.Auth/Login",
            "/keybridge.v1.Leases/Renew",
            "/keybridge.v1.Sys/Unseal",
        ] {
            assert!(methods.contains_key(never) && !super::safe_to_retry(never), "{never}");
        }
    }
}
