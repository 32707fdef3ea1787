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

use crate::error::Error;

/// The connections a serving thread receives.
pub type Connections = Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Counted>> + Send>>;
/// Resolves when the server shuts down.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection that counts itself among its thread's open ones until
/// dropped.
pub struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
}

/// Picks the worker with the fewest open connections; ties go to the
/// lowest index after `start`, so equal threads take turns.
fn pick(open: &[usize], start: usize) -> usize {
    let n = open.len();
    (0..n).map(|i| (start + i) % n).min_by_key(|&i| open[i]).unwrap_or(0)
}

/// An accept error that concerns one connection only (the next accept
/// may well succeed), as opposed to the process running out of something.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

/// Serves `incoming` on `threads` serving threads until `shutdown`
/// resolves, then lets every thread finish its requests (graceful
/// shutdown) before returning. `serve` runs on each thread: it serves the
/// connections it is given until its stop future resolves.
pub async fn serve<R, F, Fut>(
    router: R,
    serve: F,
    mut incoming: TcpIncoming,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    R: Clone + Send + 'static,
    F: Fn(R, Connections, Stop) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::transport::Error>>,
{
    let threads = threads.max(1);
    let (stop_tx, _) = watch::channel(false);
    let mut workers = Vec::with_capacity(threads);
    let mut done = Vec::with_capacity(threads);
    for i in 0..threads {
        // Built here so that a failure stops the start, not a thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("kb-serve-{i}"))
            .build()
            .map_err(|e| Error::Usage(format!("cannot start serving thread {i}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let open = Arc::new(AtomicUsize::new(0));
        let (router, serve, counter) = (router.clone(), serve.clone(), open.clone());
        let mut stop = stop_tx.subscribe();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("kb-serve-{i}"))
            .spawn(move || {
                let result = runtime.block_on(async move {
                    let conns = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |s| {
                        let c = TcpStream::from_std(s)?;
                        Ok(Counted { stream: c, open: counter.clone() })
                    });
                    let stop: Stop = Box::pin(async move {
                        let _ = stop.wait_for(|v| *v).await;
                    });
                    serve(router, Box::pin(conns), stop).await
                });
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::Usage(format!("cannot start serving thread {i}: {e}")))?;
        workers.push(Worker { tx, open });
        done.push(done_rx);
    }

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
            let i = pick(&open, turn);
            turn = turn.wrapping_add(1);
            workers[i].open.fetch_add(1, Ordering::Relaxed);
            if workers[i].tx.send(std).is_err() {
                // The thread ended (its result says why, below).
                return;
            }
        }
    };
    tokio::select! {
        _ = accept => {},
        _ = shutdown => {},
    }
    let _ = stop_tx.send(true);
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
    use super::pick;

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
