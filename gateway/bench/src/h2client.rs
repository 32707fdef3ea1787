//! A lean gRPC load generator: unary calls written straight onto an `h2`
//! client connection, the way h2load or ghz drive a server, instead of
//! tonic's `Channel` (a tower buffer with its own task, reconnect logic and
//! hyper's client dispatch in front of the same `h2` connection).
//!
//! It does all a gRPC client must: sends the length-prefixed protobuf
//! message with `content-type: application/grpc` and `te: trailers`, reads
//! the whole response body, returns flow-control capacity, takes
//! `grpc-status` from the trailers (or from the headers of a trailers-only
//! answer) and decodes the reply. What it leaves out is what a load
//! generator does not need: reconnects, load balancing, deadlines.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use tokio::net::TcpStream;

use crate::Server;

/// What went wrong with a call, for a person (the benchmark counts them).
pub(crate) type CallError = String;

/// One HTTP/2 connection to the server; clone the handle per task.
pub(crate) async fn connect(server: &Server) -> SendRequest<Bytes> {
    let hostport = server.addr.split_once("://").map(|(_, h)| h).unwrap_or(&server.addr).to_string();
    let tcp = TcpStream::connect(&hostport).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    match &server.ca {
        None => handshake(tcp).await,
        Some(ca) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
                roots.add(cert.expect("CA PEM")).expect("CA certificate");
            }
            let mut config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
            let tls =
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
            handshake(tls).await
        }
    }
}

/// The HTTP/2 handshake on `io`; the connection runs in a task of its own.
async fn handshake<T>(io: T) -> SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new().handshake::<_, Bytes>(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A unary call: `base` is the server's `http(s)://host:port`, `path`
/// `/package.Service/Method`.
pub(crate) async fn unary<Req: Message, Resp: Message + Default>(
    send: &mut SendRequest<Bytes>,
    base: &str,
    path: &str,
    bearer: Option<&http::HeaderValue>,
    msg: &Req,
) -> Result<Resp, CallError> {
    let len = msg.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(len as u32);
    msg.encode(&mut frame).map_err(|e| e.to_string())?;

    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("{base}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(b) = bearer {
        req = req.header(http::header::AUTHORIZATION, b.clone());
    }
    let req = req.body(()).map_err(|e| e.to_string())?;

    std::future::poll_fn(|cx| send.poll_ready(cx)).await.map_err(|e| e.to_string())?;
    let (response, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
    stream.send_data(frame.freeze(), true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP {}", head.status));
    }
    if let Some(status) = head.headers.get("grpc-status") {
        // Trailers-only: the answer is an error (or an empty OK).
        return Err(format!("grpc-status {status:?}"));
    }
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
        Some(s) if s == "0" => {}
        other => return Err(format!("grpc-status {other:?}")),
    }
    if data.len() < 5 || data[0] != 0 {
        return Err("short or compressed gRPC frame".into());
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let message = data.get(5..5 + len).ok_or_else(|| CallError::from("truncated gRPC frame"))?;
    Resp::decode(message).map_err(|e| e.to_string())
}
