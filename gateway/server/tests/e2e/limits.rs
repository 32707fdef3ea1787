//! Memory and connections an unauthenticated client, or one token, can hold:
//! each limit respected and exceeded, while real requests keep being served.

use std::time::{Duration, Instant};

use keybridge_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::harness::{Server, authed};

const T: &str = "root-e2e";

/// An upload that sends its first chunk and then stays open, as a client
/// that means to hold the server's memory would. Dropping the sender ends it.
fn held_upload(
    s: &Server,
    token: Option<&str>,
    name: &str,
) -> (mpsc::Sender<pb::RegisterPluginChunk>, tokio::task::JoinHandle<Result<pb::PluginVersion, tonic::Status>>) {
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(pb::RegisterPluginChunk { name: name.into(), sha256: "0".repeat(64), data: vec![0u8; 64 * 1024] })
        .unwrap();
    let token = token.map(str::to_string);
    let addr = s.addr.clone();
    let call = tokio::spawn(async move {
        let ch = tonic::transport::Endpoint::from_shared(addr.clone()).unwrap().connect().await.unwrap();
        let mut c = pb::plugins_client::PluginsClient::new(ch);
        let req = match &token {
            Some(t) => authed(t, ReceiverStream::new(rx)),
            None => tonic::Request::new(ReceiverStream::new(rx)),
        };
        c.register(req).await.map(|r| r.into_inner())
    });
    (tx, call)
}

async fn get_works(s: &Server) {
    let mut c = s.secrets().await;
    let r = c.get(authed(T, pb::GetRequest { path: "secret/x".into(), ..Default::default() })).await;
    assert_eq!(r.unwrap_err().code(), Code::NotFound, "a real request was not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_uploads_are_refused_on_their_first_chunk() {
    let s = Server::dev();
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..30 {
        held.push(held_upload(&s, None, &format!("flood{i}")));
    }
    get_works(&s).await;
    for (tx, call) in held {
        // Answered while the client still holds its stream open.
        let r =
            tokio::time::timeout(Duration::from_secs(10), call).await.expect("the upload was buffered, not refused");
        assert_eq!(r.unwrap().unwrap_err().code(), Code::Unauthenticated);
        drop(tx);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    get_works(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_has_two_uploads_in_flight_at_most() {
    let s = Server::dev();
    // Respected: two held uploads of one token are both still running.
    let (tx1, call1) = held_upload(&s, Some(T), "one");
    let (tx2, call2) = held_upload(&s, Some(T), "two");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call1.is_finished() && !call2.is_finished(), "an upload within the limit was cut off");
    // Exceeded: a third is refused at once.
    let (_tx3, call3) = held_upload(&s, Some(T), "three");
    let e = tokio::time::timeout(Duration::from_secs(10), call3).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("uploads in flight"), "{e:?}");
    get_works(&s).await;
    // One ends (its digest does not match: refused after the upload), and
    // the token may start another.
    drop(tx1);
    let e = call1.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (tx4, call4) = held_upload(&s, Some(T), "four");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call4.is_finished(), "a slot freed by a finished upload was not given back");
    drop((tx2, tx4));
}

/// Past `max_connections`, a new connection is closed unserved; the ones
/// already open are served on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_open_ones_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "max_connections = 20");
    let (root, _) = crate::harness::init_unseal(&s);
    let mut real = s.secrets().await;
    let get = pb::GetRequest { path: "secret/x".into(), ..Default::default() };
    assert_eq!(real.get(authed(&root, get.clone())).await.unwrap_err().code(), Code::NotFound);
    // Respected: up to the limit, connections are served.
    let addr = s.addr.clone();
    let hostport = addr.trim_start_matches("http://").to_string();
    let mut flood = Vec::new();
    for _ in 0..18 {
        flood.push(std::net::TcpStream::connect(&hostport).unwrap());
    }
    let ch = tonic::transport::Endpoint::from_shared(addr.clone()).unwrap().connect().await.unwrap();
    let mut within = pb::secrets_client::SecretsClient::new(ch);
    assert_eq!(within.get(authed(&root, get.clone())).await.unwrap_err().code(), Code::NotFound);
    // Exceeded: more connections are closed at once, unserved.
    for _ in 0..30 {
        flood.push(std::net::TcpStream::connect(&hostport).unwrap());
    }
    let over =
        tonic::transport::Endpoint::from_shared(addr.clone()).unwrap().timeout(Duration::from_secs(2)).connect().await;
    let refused = match over {
        Err(_) => true,
        Ok(ch) => pb::secrets_client::SecretsClient::new(ch)
            .get(authed(&root, get.clone()))
            .await
            .is_err_and(|e| e.code() == Code::Unavailable || e.code() == Code::Unknown || e.code() == Code::Cancelled),
    };
    assert!(refused, "a connection past max_connections was served");
    // The open ones are served on.
    assert_eq!(real.get(authed(&root, get.clone())).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(within.get(authed(&root, get.clone())).await.unwrap_err().code(), Code::NotFound);
    // Once the flood is gone, new connections are served again.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ch = tonic::transport::Endpoint::from_shared(addr.clone()).unwrap().connect().await.unwrap();
    let mut after = pb::secrets_client::SecretsClient::new(ch);
    assert_eq!(after.get(authed(&root, get)).await.unwrap_err().code(), Code::NotFound);
}

/// A connection opens at most `max_concurrent_streams` streams: past it, its
/// calls wait (HTTP/2 flow), while other connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_wait_and_other_connections_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "max_concurrent_streams = 8");
    let (root, _) = crate::harness::init_unseal(&s);
    let put = pb::PutRequest { path: "secret/w".into(), value: crate::harness::fields(&[("v", "1")]), cas: None };
    s.secrets().await.put(authed(&root, put)).await.unwrap();
    let a = s.channel().await;
    // Respected: eight open streams (watches that stay open) on one connection.
    let mut watches = Vec::new();
    for _ in 0..8 {
        let mut c = pb::secrets_client::SecretsClient::new(a.clone());
        watches.push(c.watch(authed(&root, pb::WatchSecretRequest { path: "secret/w".into() })).await.unwrap());
    }
    // Exceeded: a ninth call on that connection waits for a stream...
    let get = pb::GetRequest { path: "secret/w".into(), ..Default::default() };
    let mut on_a = pb::secrets_client::SecretsClient::new(a.clone());
    let waiting = tokio::spawn({
        let (root, get) = (root.clone(), get.clone());
        async move { on_a.get(authed(&root, get)).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a stream past max_concurrent_streams was served");
    // ...while another connection is served at once.
    let started = Instant::now();
    s.secrets().await.get(authed(&root, get)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // One stream closes: the waiting call goes through.
    drop(watches.pop());
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the waiting call never ran").unwrap().unwrap();
}

/// One remote address has a share of the connections: past
/// `max_connections_per_address` its new connections are closed, while
/// another address is still accepted and open connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_limits(dir.path(), false, 0, "max_connections = 40\nmax_connections_per_address = 10");
    let (root, _) = crate::harness::init_unseal(&s);
    let mut real = s.secrets().await;
    let get = pb::GetRequest { path: "secret/x".into(), ..Default::default() };
    let hostport: std::net::SocketAddr = s.addr.trim_start_matches("http://").parse().unwrap();
    // The real client's connection is one of 127.0.0.1's ten.
    let mut flood = Vec::new();
    for _ in 0..9 {
        flood.push(tokio::net::TcpStream::connect(hostport).await.unwrap());
    }
    let from = |ip: [u8; 4]| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
        sock.connect(hostport).await.unwrap()
    };
    // Exceeded: 127.0.0.1's eleventh connection is closed unserved.
    let mut over = from([127, 0, 0, 1]).await;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "a connection past the per-address limit was kept: {r:?}");
    // Respected: another address is accepted (the server sends its HTTP/2
    // SETTINGS, or waits, instead of closing it)...
    let mut other = from([127, 0, 0, 2]).await;
    let r = tokio::time::timeout(Duration::from_millis(500), other.read(&mut buf)).await;
    assert!(matches!(r, Err(_) | Ok(Ok(1..))), "a connection from another address was closed: {r:?}");
    // ...and the open connections are served.
    assert_eq!(real.get(authed(&root, get)).await.unwrap_err().code(), Code::NotFound);
    drop(flood);
}

/// A request with an unknown token is refused from its headers: the server
/// does not wait for (or read) a body that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_refused_before_the_body_is_read() {
    let s = Server::dev();
    for token in [Some("kb.not-a-token"), None] {
        let (tx, rx) = mpsc::channel::<pb::RegisterPluginChunk>(1);
        let mut c = pb::plugins_client::PluginsClient::new(s.channel().await);
        let req = match token {
            Some(t) => authed(t, ReceiverStream::new(rx)),
            None => tonic::Request::new(ReceiverStream::new(rx)),
        };
        let r =
            tokio::time::timeout(Duration::from_secs(5), c.register(req)).await.expect("the server waited for a body");
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
        drop(tx);
    }
    get_works(&s).await;
}
