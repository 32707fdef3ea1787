//! Following a secret, across reconnections.

use std::pin::Pin;
use std::task::{Context, Poll};

use keybridge_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use crate::{Client, Error};

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// A change that reached the secret.
    Event(pb::SecretEvent),
    /// The stream broke (the gateway restarted or was unreachable) and was
    /// opened again. Changes made meanwhile have no event: read the secret.
    Resubscribed,
}

/// The stream from [`Client::watch`]. It ends after an error it cannot get
/// past (denied, not found, or the gateway unreachable through every
/// retry), which it yields first; dropping it closes the stream.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchItem, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Watch {
    type Item = Result<WatchItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A stream error that another subscription can get past: the gateway
/// unavailable, this watcher behind (`DATA_LOSS`), or the connection
/// broken under the stream: an `UNKNOWN` status the client made from a
/// transport error (it has a cause; a status the gateway sent has none).
fn reconnectable(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DataLoss => true,
        tonic::Code::Unknown => std::error::Error::source(s).is_some(),
        _ => false,
    }
}

impl Client {
    /// Follows one secret: an event for every new version, delete or
    /// rotation step that reaches it. Needs `read` on its data path. When
    /// the stream breaks with `UNAVAILABLE` or a broken connection, or ends
    /// because the gateway is stopping, or this watcher fell behind
    /// (`DATA_LOSS`), it is opened again (with the retry policy's backoff, its
    /// tries counted afresh after each success) and
    /// [`WatchItem::Resubscribed`] says so. The returned stream is open:
    /// a write made after this returns has its event.
    ///
    /// ```
    /// # keybridge_testservers::gateway::doc_example(|address, token| async move {
    /// use keybridge_client::{Client, Config, WatchItem, fields};
    /// use tokio_stream::StreamExt;
    /// let client = Client::connect(Config::new(address).with_token(token)).await?;
    /// let mut events = client.watch("secret/app/flag").await?;
    /// client.kv_put("secret/app/flag", fields([("on", "true")]), None).await?;
    /// match events.next().await.expect("an event")? {
    ///     WatchItem::Event(e) => assert_eq!((e.kind.as_str(), e.version), ("put", 1)),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), keybridge_client::Error>(())
    /// # });
    /// ```
    pub async fn watch(&self, path: &str) -> Result<Watch, Error> {
        let first = self.open_watch(path).await?;
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let path = path.to_string();
        let task = tokio::spawn(async move { client.follow(path, first, tx).await });
        Ok(Watch { rx, task })
    }

    async fn open_watch(&self, path: &str) -> Result<tonic::Streaming<pb::SecretEvent>, Error> {
        let req = pb::WatchSecretRequest { path: path.to_string() };
        Ok(self.secrets().watch(req).await?.into_inner())
    }

    async fn follow(
        self,
        path: String,
        mut stream: tonic::Streaming<pb::SecretEvent>,
        tx: mpsc::Sender<Result<WatchItem, Error>>,
    ) {
        loop {
            // Forward events until the stream breaks or the reader leaves.
            let broke = loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tx.closed() => return,
                };
                match next {
                    Some(Ok(ev)) => {
                        if tx.send(Ok(WatchItem::Event(ev))).await.is_err() {
                            return;
                        }
                    }
                    // DATA_LOSS: this watcher fell behind and missed events.
                    Some(Err(s)) if reconnectable(&s) => break s.into(),
                    Some(Err(s)) => {
                        let _ = tx.send(Err(s.into())).await;
                        return;
                    }
                    None => break Error::Status(tonic::Status::unavailable("the watch stream ended")),
                }
            };
            // Open it again, backing off; the transport retries each open too.
            let mut attempt = 1u32;
            let mut last = broke;
            stream = loop {
                if attempt >= self.retry().attempts.max(1) {
                    let _ = tx.send(Err(last)).await;
                    return;
                }
                tokio::select! {
                    _ = crate::backoff(self.retry(), attempt) => {}
                    _ = tx.closed() => return,
                }
                attempt = attempt.saturating_add(1);
                match self.open_watch(&path).await {
                    Ok(s) => break s,
                    Err(e) if e.code() == tonic::Code::Unavailable => last = e,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            };
            if tx.send(Ok(WatchItem::Resubscribed)).await.is_err() {
                return;
            }
        }
    }
}
