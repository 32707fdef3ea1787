//! Serving threads: each runs a single-threaded tokio runtime that owns the
//! connections handed to it, with their HTTP/2 state and every request on
//! them. The main runtime accepts and hands each new connection to the
//! thread with the fewest open ones.
//!
//! Why not one work-stealing pool: on this workload (many small requests)
//! the pool moved a request's tasks between threads, and every such move
//! is a cross-thread wake-up and a cache miss; keeping a connection on one
//! thread served 15-20% more `Get`s on two cores (docs/BENCHMARKS.md). The
//! price: one connection is served by one thread, so a client that wants
//! several cores opens several connections (gRPC clients commonly pool).
//! Nothing in a request handler blocks its thread for long: storage reads
//! take microseconds, commits wait on the store's thread, plugin calls
//! yield, and compiling a plugin runs on the blocking pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use zeroize::Zeroize;

use crate::error::Error;

/// The connections a serving thread receives.
pub type Connections = Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Io>> + Send>>;

/// A served connection: plaintext, or TLS terminated on the serving thread
/// (over the same coalescing `Conn`, so ciphertext leaves in few writes).
/// Until its first bytes arrive (the HTTP/2 preface), it has a deadline: a
/// client that connects and says nothing loses its connection slot after
/// [`PREFACE_TIMEOUT`] instead of holding it for good.
pub struct Io {
    kind: IoKind,
    preface: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum IoKind {
    Plain(Conn),
    Tls(Box<tokio_rustls::server::TlsStream<Conn>>),
}

/// How long a connection has to send its first bytes (the HTTP/2 preface)
/// once accepted (after its TLS handshake, with TLS).
pub const PREFACE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Io {
    fn new(kind: IoKind) -> Io {
        Io { kind, preface: Some(Box::pin(tokio::time::sleep(PREFACE_TIMEOUT))) }
    }
}

impl Connected for Io {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        match &self.kind {
            IoKind::Plain(c) => c.connect_info(),
            IoKind::Tls(t) => t.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut me.kind {
            IoKind::Plain(c) => Pin::new(c).poll_read(cx, buf),
            IoKind::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                me.preface = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = me.preface.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the preface timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(c) => Pin::new(c).poll_write(cx, buf),
            IoKind::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(c) => Pin::new(c).poll_write_vectored(cx, bufs),
            IoKind::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.kind {
            IoKind::Plain(c) => c.is_write_vectored(),
            IoKind::Tls(t) => t.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(c) => Pin::new(c).poll_flush(cx),
            IoKind::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(c) => Pin::new(c).poll_shutdown(cx),
            IoKind::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connections for tonic: as accepted, or once their TLS handshake is
/// done. Each handshake runs in a task of its own on this thread, so a
/// slow client delays no other; a failed one is dropped (logged at debug).
fn with_tls(
    conns: impl tokio_stream::Stream<Item = std::io::Result<Conn>> + Send + 'static,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Connections {
    let Some(acceptor) = tls else {
        return Box::pin(conns.map(|c| c.map(|c| Io::new(IoKind::Plain(c)))));
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut conns = std::pin::pin!(conns);
        while let Some(conn) = conns.next().await {
            let Ok(conn) = conn else { continue };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Io::new(IoKind::Tls(Box::new(tls)))));
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}
/// Resolves when the server shuts down.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection that counts itself among its thread's open ones until
/// dropped, and coalesces what is written to it within one turn of its
/// thread's scheduler into one `write` (see its `AsyncWrite` impl).
pub struct Conn {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
    /// The connection's place in its remote address's count.
    _slot: Option<AddrSlot>,
    /// Bytes accepted from HTTP/2 (or TLS) and not yet written; `sent` of
    /// them are written.
    out: Vec<u8>,
    sent: usize,
    /// A flush found bytes to write and gave way once; the next one writes.
    deferred: bool,
}

/// Written bytes held back for coalescing at most; a write that would pass
/// it first drains what is held.
const COALESCE_MAX: usize = 64 * 1024;
/// Buffer capacity kept by an idle connection; more is freed after a drain.
const KEEP_CAPACITY: usize = 16 * 1024;

impl Conn {
    fn new(stream: TcpStream, open: Arc<AtomicUsize>, slot: Option<AddrSlot>) -> Self {
        Conn { stream, open, _slot: slot, out: Vec::new(), sent: 0, deferred: false }
    }

    /// Writes what is held until all of it is written or the socket is
    /// full (`Pending`). Written bytes are zeroed: without TLS they are
    /// response bodies in plaintext.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.out.len() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.as_mut_slice().zeroize();
        self.out.clear();
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `len` bytes into the buffer, draining it first if they would
    /// not fit; `Pending` while the socket is full.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<std::io::Result<()>> {
        if self.out.len() + len > COALESCE_MAX {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Connections open per remote address, so that one client cannot take
/// every connection the server will serve.
type AddrSlot = crate::slots::Slot<std::net::IpAddr>;

impl Drop for Conn {
    fn drop(&mut self) {
        self.out.zeroize();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

/// Writes are taken into a buffer and written at the next flush; a flush
/// that finds bytes to write first gives way once (it wakes its task and
/// answers `Pending`), so that every task the same turn made ready runs
/// before the bytes go out.
///
/// Why: HTTP/2 writes a unary response in two flushes. hyper sends the
/// HEADERS and DATA frames, then waits for the stream's send capacity,
/// which h2 returns once the frames are queued for the socket; only then
/// does it send the trailers (`grpc-status`). Written straight through,
/// that is two `writev`s per response, and a client woken by the first
/// has to sleep again until the second. Giving way once lets the trailers
/// join the same write; under load, the responses of every stream the
/// turn completed leave in one write.
impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        std::task::ready!(me.poll_reserve(cx, buf.len()))?;
        if buf.len() > COALESCE_MAX {
            return Pin::new(&mut me.stream).poll_write(cx, buf);
        }
        me.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        std::task::ready!(me.poll_reserve(cx, len))?;
        if len > COALESCE_MAX {
            return Pin::new(&mut me.stream).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            me.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.sent < me.out.len() && !me.deferred {
            me.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(me.poll_drain(cx))?;
        me.deferred = false;
        Pin::new(&mut me.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        std::task::ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.stream).poll_shutdown(cx)
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, Option<AddrSlot>)>,
    open: Arc<AtomicUsize>,
}

/// Picks the worker with the fewest open connections; ties go to the
/// lowest index after `start`, so equal threads take turns.
fn pick(open: &[usize], start: usize) -> usize {
    let n = open.len();
    (0..n).map(|i| (start + i) % n).min_by_key(|&i| open[i]).unwrap_or(0)
}

/// The key of a remote address's connection count: the address itself
/// for IPv4, its /64 for IPv6 (one host is commonly given a whole /64, so
/// counting single IPv6 addresses would not bound one client).
fn address_group(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// An accept error that concerns one connection only (the next accept
/// may well succeed), as opposed to the process running out of something.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

/// Serves `incoming` on `threads` serving threads until `stop` is set
/// (by whoever holds a clone of it: the signal handler), then lets every
/// thread finish its requests (graceful shutdown) before returning.
/// `serve` runs on each thread: it serves the connections it is given
/// until its stop future resolves. Connections
/// still open `grace` after the stop (a request still running, or a client
/// that does not answer HTTP/2's GOAWAY and PING) are closed, so that the
/// process ends and closes its store cleanly before a supervisor kills it.
/// How connections are served.
pub struct Settings {
    /// Serving threads.
    pub threads: usize,
    /// How long open connections get to finish at shutdown.
    pub grace: std::time::Duration,
    /// Open connections at most: one accepted past it is closed at once.
    pub max_connections: usize,
    /// Open connections from one remote address at most.
    pub max_connections_per_address: usize,
    /// TLS, terminated on the serving threads (none: plaintext).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub async fn serve<R, F, Fut>(
    router: R,
    serve: F,
    mut incoming: TcpIncoming,
    settings: Settings,
    stop_tx: watch::Sender<bool>,
) -> Result<(), Error>
where
    R: Clone + Send + 'static,
    F: Fn(R, Connections, Stop) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::transport::Error>>,
{
    let (threads, grace) = (settings.threads.max(1), settings.grace);
    let mut stopping = stop_tx.subscribe();
    let mut workers = Vec::with_capacity(threads);
    let mut done = Vec::with_capacity(threads);
    for i in 0..threads {
        // Built here so that a failure stops the start, not a thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("kb-serve-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start serving thread {i}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel::<(std::net::TcpStream, Option<AddrSlot>)>();
        let open = Arc::new(AtomicUsize::new(0));
        let (router, serve, counter, still_open) = (router.clone(), serve.clone(), open.clone(), open.clone());
        let tls = settings.tls.clone();
        let mut stop = stop_tx.subscribe();
        let mut stopped = stop_tx.subscribe();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("kb-serve-{i}"))
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let conns = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |(s, slot)| {
                        let c = TcpStream::from_std(s)?;
                        Ok(Conn::new(c, counter.clone(), slot))
                    });
                    let conns = with_tls(conns, tls);
                    let stop: Stop = Box::pin(async move {
                        let _ = stop.wait_for(|v| *v).await;
                    });
                    let serving = serve(router, conns, stop);
                    let overdue = async move {
                        let _ = stopped.wait_for(|v| *v).await;
                        tokio::time::sleep(grace).await;
                    };
                    tokio::select! {
                        r = serving => r,
                        _ = overdue => {
                            tracing::warn!(
                                thread = i,
                                connections = still_open.load(Ordering::Relaxed),
                                grace = ?grace,
                                "connections still open after the shutdown grace period; closing them"
                            );
                            Ok(())
                        }
                    }
                });
                // The runtime's tasks hold the services, and through them
                // the store: they are dropped before the main thread is
                // told this thread is done, so that the store is closed
                // cleanly before the process exits.
                drop(runtime);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Usage(format!("cannot start serving thread {i}: {e}")))?;
        workers.push(Worker { tx, open });
        done.push(done_rx);
    }

    let per_address: crate::slots::Slots<std::net::IpAddr> = Default::default();
    let accept = async {
        let mut turn = 0usize;
        while let Some(conn) = incoming.next().await {
            let conn = match conn {
                Ok(c) => c,
                Err(e) if per_connection(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors or memory: retrying at once would
                    // spin; connections wait in the backlog meanwhile.
                    tracing::warn!(error = %e, "cannot accept connections; retrying in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let std = match conn.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a connection to a serving thread");
                    continue;
                }
            };
            let open: Vec<usize> = workers.iter().map(|w| w.open.load(Ordering::Relaxed)).collect();
            if open.iter().sum::<usize>() >= settings.max_connections {
                // Closed unserved: the connections already open keep being
                // served, and a client retries later.
                tracing::debug!(max = settings.max_connections, "connection limit reached; closing a new connection");
                drop(std);
                continue;
            }
            // One address has a share of the connections, not all of them.
            let slot = match std.peer_addr() {
                Ok(peer) => match per_address.take(address_group(peer.ip()), settings.max_connections_per_address) {
                    Some(slot) => Some(slot),
                    None => {
                        tracing::debug!(remote = %peer.ip(), "per-address connection limit reached; closing a new connection");
                        drop(std);
                        continue;
                    }
                },
                Err(_) => None,
            };
            let i = pick(&open, turn);
            turn = turn.wrapping_add(1);
            workers[i].open.fetch_add(1, Ordering::Relaxed);
            if workers[i].tx.send((std, slot)).is_err() {
                // The thread ended (its result says why, below).
                return;
            }
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = stopping.wait_for(|v| *v) => {},
    }
    stop_tx.send_replace(true);
    drop(workers);
    let mut first_error = None;
    for (i, d) in done.into_iter().enumerate() {
        match d.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(Error::Transport(e));
            }
            Err(_) => {
                first_error.get_or_insert(Error::Usage(format!("serving thread {i} stopped unexpectedly")));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::{COALESCE_MAX, Conn, pick};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the server side wrapped in `Conn`, and the peer.
    async fn pair(open: Arc<AtomicUsize>) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        open.fetch_add(1, Ordering::Relaxed);
        (Conn::new(server, open, None), peer)
    }

    /// Reads what arrives within 100 ms.
    async fn arrived(peer: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_millis(100), peer.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn writes_wait_for_a_flush_that_gives_way_once_then_leave_together() {
        let (mut conn, mut peer) = pair(Arc::new(AtomicUsize::new(0))).await;
        conn.write_all(b"HEADERS+DATA").await.unwrap();
        conn.write_all(b"TRAILERS").await.unwrap();
        assert!(arrived(&mut peer).await.is_empty(), "nothing is written before a flush");

        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut conn).poll_flush(&mut cx).is_pending(), "the first flush gives way");
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "and wakes its task so that it is polled again");
        assert!(arrived(&mut peer).await.is_empty());
        assert!(matches!(std::pin::Pin::new(&mut conn).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(arrived(&mut peer).await, b"HEADERS+DATATRAILERS");

        // Nothing held: a flush does not give way.
        assert!(matches!(std::pin::Pin::new(&mut conn).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn writes_past_the_coalescing_limit_go_out_in_order_and_whole() {
        let (mut conn, mut peer) = pair(Arc::new(AtomicUsize::new(0))).await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let small = vec![1u8; 1000];
        let large: Vec<u8> = (0..3 * COALESCE_MAX).map(|i| (i % 251) as u8).collect();
        conn.write_all(&small).await.unwrap();
        // Passes the limit: what is held goes first, then the large write.
        conn.write_all(&large).await.unwrap();
        conn.write_all(&small).await.unwrap();
        // Shutdown writes what is still held.
        conn.shutdown().await.unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), 2 * small.len() + large.len());
        assert_eq!(&all[..1000], &small[..]);
        assert_eq!(&all[1000..1000 + large.len()], &large[..]);
        assert_eq!(&all[1000 + large.len()..], &small[..]);
    }

    #[tokio::test]
    async fn a_closed_connection_leaves_its_threads_count() {
        let open = Arc::new(AtomicUsize::new(0));
        let (conn, _peer) = pair(open.clone()).await;
        assert_eq!(open.load(Ordering::Relaxed), 1);
        drop(conn);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        use super::address_group;
        assert_eq!(address_group(a), address_group(b));
        assert_ne!(address_group(a), address_group(c));
        let mapped: std::net::IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(address_group(mapped), "10.0.0.7".parse::<std::net::IpAddr>().unwrap());
        let v4: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(address_group(v4), v4);
    }

    #[test]
    fn a_new_connection_goes_to_the_least_loaded_thread() {
        assert_eq!(pick(&[3, 1, 2], 0), 1);
        assert_eq!(pick(&[0, 5], 1), 0);
        assert_eq!(pick(&[4], 7), 0);
    }

    #[test]
    fn running_out_of_descriptors_is_not_a_per_connection_error() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(!super::per_connection(&emfile));
        assert!(super::per_connection(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)));
    }

    #[test]
    fn equally_loaded_threads_take_turns() {
        let picks: Vec<usize> = (0..4).map(|turn| pick(&[2, 2, 2], turn)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
    }
}
