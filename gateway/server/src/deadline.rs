//! The request deadline: `limits.request_timeout`, or the client's
//! `grpc-timeout` when that is sooner. A call that has not answered by then
//! is stopped (its future dropped, as when the client goes away) and
//! answered DEADLINE_EXCEEDED with a sentence saying whose deadline it was.
//! (tonic's own timeout answers CANCELLED "Timeout expired", which names
//! neither.) Only the wait for the answer's start is bounded: a stream, once
//! started, runs as long as it has something to send.

use std::task::{Context, Poll};
use std::time::Duration;

use crate::ratelimit::BoxFuture;

#[derive(Clone)]
pub struct DeadlineLayer {
    pub limit: Duration,
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, limit: self.limit }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let asked = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(grpc_timeout);
        let (wait, whose) = match asked {
            Some(a) if a < self.limit => (a, Whose::Client),
            _ => (self.limit, Whose::Server),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(wait, fut).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(whose.say(wait)).into_http()),
            }
        })
    }
}

enum Whose {
    Client,
    Server,
}

impl Whose {
    fn say(&self, wait: Duration) -> String {
        match self {
            Whose::Client => {
                format!("the call's own deadline ({wait:?}, its grpc-timeout) passed before the server answered")
            }
            Whose::Server => format!(
                "the server stopped the call after {wait:?} (limits.request_timeout): ask for less at once, or raise \
                 the limit"
            ),
        }
    }
}

/// A `grpc-timeout` header's value: at most 8 digits and a unit (H, M, S,
/// m, u, n), per the gRPC over HTTP/2 protocol. `None` when it is not one.
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "123456789S", "-1S", "1.5S", "5s", "5 S", "٣S", "5SS"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    async fn call(limit: Duration, takes: Duration, header: Option<&str>) -> http::Response<String> {
        let inner = tower::service_fn(move |_: http::Request<()>| async move {
            tokio::time::sleep(takes).await;
            Ok::<_, std::convert::Infallible>(http::Response::new("answer".to_string()))
        });
        let mut svc = DeadlineLayer { limit }.layer(inner);
        let mut req = http::Request::new(());
        if let Some(h) = header {
            req.headers_mut().insert("grpc-timeout", h.parse().unwrap());
        }
        svc.ready().await.unwrap().call(req).await.unwrap()
    }

    fn status(r: &http::Response<String>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(r.headers())
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test]
    async fn an_answer_within_the_limit_passes() {
        let r = call(MS(2_000), MS(20), None).await;
        assert!(status(&r).is_none());
        assert_eq!(r.body(), "answer");
        let r = call(MS(2_000), MS(20), Some("1500m")).await;
        assert_eq!(r.body(), "answer");
    }

    #[tokio::test]
    async fn past_the_limit_the_answer_is_deadline_exceeded_naming_whose() {
        let r = call(MS(200), MS(5_000), None).await;
        let s = status(&r).expect("a status");
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(s.message().contains("limits.request_timeout"), "{}", s.message());
        // The client's sooner deadline.
        let r = call(MS(5_000), MS(5_000), Some("200m")).await;
        let s = status(&r).expect("a status");
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(s.message().contains("grpc-timeout"), "{}", s.message());
        // A later one does not lift the server's limit.
        let r = call(MS(200), MS(5_000), Some("1H")).await;
        assert!(status(&r).expect("a status").message().contains("limits.request_timeout"));
    }
}
