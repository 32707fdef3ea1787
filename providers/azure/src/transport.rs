//! The HTTP transport handed to the Azure SDK: reqwest 0.12 with rustls on
//! ring and the system's roots, plus an optional extra CA.

use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Method, Request};

#[derive(Debug)]
pub struct ReqwestTransport(pub reqwest::Client);

/// The client: no redirects (as the SDK's own), 20 s to connect, 60 s per
/// request.
pub fn client(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(20))
        .timeout(std::time::Duration::from_secs(60));
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("the CA file is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("the CA file holds no certificate".into());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl HttpClient for ReqwestTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::{ErrorKind, ResultExt as _};
        let method = match request.method() {
            Method::Delete => reqwest::Method::DELETE,
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Patch => reqwest::Method::PATCH,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            other => {
                return Err(azure_core::Error::with_message(ErrorKind::Other, format!("unsupported method {other:?}")));
            }
        };
        let mut req = self.0.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = match request.body() {
            Body::Bytes(bytes) => req.body(bytes.to_vec()),
            Body::SeekableStream(_) => {
                return Err(azure_core::Error::with_message(
                    ErrorKind::Other,
                    "streaming request bodies are not used by the Key Vault secrets client",
                ));
            }
        };
        let rsp = req.send().await.map_err(|e| {
            let kind = if e.is_connect() || e.is_timeout() { ErrorKind::Connection } else { ErrorKind::Io };
            azure_core::Error::with_message(
                kind,
                format!("cannot reach {}: {e}", request.url().host_str().unwrap_or("")),
            )
        })?;
        let status = rsp.status().as_u16();
        let headers: std::collections::HashMap<HeaderName, HeaderValue> = rsp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((HeaderName::from(k.as_str().to_owned()), HeaderValue::from(v.to_str().ok()?.to_owned())))
            })
            .collect();
        let body = rsp.bytes().await.with_context(ErrorKind::Io, "cannot read the response")?;
        Ok(AsyncRawResponse::from_bytes(status.into(), Headers::from(headers), body))
    }
}
