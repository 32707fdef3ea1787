//! Outbound HTTP through `wasi:http/outgoing-handler`. The host sends only
//! to the mount's `allowed_hosts`; anything else fails with
//! `HttpRequestDenied`, and the call's time limit bounds every request.

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the response is not JSON: {e}"))
    }
}

/// The most response body read.
pub const MAX_BODY: usize = 1 << 20;

/// Sends `method url` with `headers` and `body`; `url` is
/// `http[s]://host[:port]/path?query`.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(format!("unsupported URL {url:?}: use http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (k, v) in headers {
        fields.append(k, v.as_bytes()).map_err(|e| format!("header {k:?}: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    req.set_method(&m).map_err(|_| "bad method".to_string())?;
    req.set_scheme(Some(&scheme)).map_err(|_| "bad scheme".to_string())?;
    req.set_authority(Some(authority)).map_err(|_| format!("bad host {authority:?}"))?;
    req.set_path_with_query(Some(path)).map_err(|_| format!("bad path {path:?}"))?;
    let out = req.body().map_err(|_| "request body taken".to_string())?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = out.write().map_err(|_| "request body stream taken".to_string())?;
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("sending the body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(out, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) | None => return Err("no response".into()),
    };
    let status = resp.status();
    let incoming = resp.consume().map_err(|_| "response body taken".to_string())?;
    let stream = incoming.stream().map_err(|_| "response body stream taken".to_string())?;
    let mut buf = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > MAX_BODY {
                    return Err(format!("the response body is over {MAX_BODY} bytes"));
                }
            }
            Err(StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the response: {e:?}")),
        }
    }
    Ok(HttpResponse { status, body: buf })
}
