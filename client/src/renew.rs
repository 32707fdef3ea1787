//! Keeping a lease or a token alive in the background.

use std::time::{Duration, SystemTime};

use keybridge_proto::v1 as pb;
use tokio::sync::watch;

use crate::{Client, Error};

/// Where a [`Renewer`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Not renewed yet.
    Starting,
    /// Renewed; it now expires at this time.
    Renewed { expires: SystemTime },
    /// Renewals stopped: the lease or token reached its maximum lifetime and
    /// expires at this time. Get a new one before then.
    MaxReached { expires: SystemTime },
    /// It never expires: there is nothing to renew.
    NoExpiry,
    /// Renewals stopped on an error (revoked, denied, not renewable, or
    /// the gateway unreachable until the lease ran out).
    Failed(String),
}

/// Renews a lease or a token before it expires, in a background task,
/// until it reaches its maximum lifetime, fails, or the `Renewer` is
/// dropped. Each renewal happens when two thirds of the time left has
/// passed; a renewal the gateway could not take (`UNAVAILABLE`) is tried
/// again with backoff while time is left (renewing twice extends once).
///
/// ```
/// # keybridge_testservers::gateway::doc_example(|address, token| async move {
/// use keybridge_client::{Client, Config, Renewal, Renewer, pb};
/// let root = Client::connect(Config::new(address).with_token(token)).await?;
/// // A renewable token that lives 30 s unless renewed, at most 1 h.
/// let req = pb::CreateTokenRequest { ttl_seconds: 30, max_ttl_seconds: 3600, ..Default::default() };
/// let made = root.tokens().create(req).await?.into_inner();
/// let client = root.with_token(&made.token)?;
/// let mut renewer = Renewer::token(client, None);
/// let status = renewer.changed().await;
/// assert!(matches!(status, Renewal::Renewed { .. }), "{status:?}");
/// # Ok::<(), keybridge_client::Error>(())
/// # });
/// ```
pub struct Renewer {
    status: watch::Receiver<Renewal>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Target {
    Lease(String),
    Token,
}

impl Renewer {
    /// Renews the lease `lease_id` (from an engine's answer), asking for
    /// `increment` each time (`None`: the engine's default).
    pub fn lease(client: Client, lease_id: impl Into<String>, increment: Option<Duration>) -> Renewer {
        Renewer::start(client, Target::Lease(lease_id.into()), increment)
    }

    /// Renews the client's own token, asking for `increment` each time
    /// (`None`: its TTL).
    pub fn token(client: Client, increment: Option<Duration>) -> Renewer {
        Renewer::start(client, Target::Token, increment)
    }

    fn start(client: Client, target: Target, increment: Option<Duration>) -> Renewer {
        let (tx, status) = watch::channel(Renewal::Starting);
        let task = tokio::spawn(run(client, target, increment.map(|d| d.as_secs()).unwrap_or(0), tx));
        Renewer { status, task }
    }

    /// The latest status.
    pub fn status(&self) -> Renewal {
        self.status.borrow().clone()
    }

    /// Waits for the next change of status and returns it (the current
    /// one if the task has ended).
    pub async fn changed(&mut self) -> Renewal {
        let _ = self.status.changed().await;
        self.status.borrow_and_update().clone()
    }
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999)))
}

/// One renewal: the new expiry, and the latest the lease may reach (if known).
async fn renew_once(client: &Client, target: &Target, increment: u64) -> Result<Option<SystemTime>, Error> {
    match target {
        Target::Lease(id) => {
            let req = pb::RenewLeaseRequest { lease_id: id.clone(), increment_secs: increment };
            Ok(time(client.leases().renew(req).await?.into_inner().expire_time))
        }
        Target::Token => {
            let req = pb::RenewTokenRequest { token: String::new(), increment_seconds: increment };
            Ok(time(client.tokens().renew(req).await?.into_inner().expire_time))
        }
    }
}

async fn run(client: Client, target: Target, increment: u64, tx: watch::Sender<Renewal>) {
    let mut last: Option<SystemTime> = None;
    let mut attempt = 1u32;
    loop {
        match renew_once(&client, &target, increment).await {
            Ok(None) => {
                tx.send_replace(Renewal::NoExpiry);
                return;
            }
            Ok(Some(expires)) => {
                attempt = 1;
                // A renewal that no longer moves the expiry: the maximum is reached.
                if last.is_some_and(|l| expires <= l) {
                    tx.send_replace(Renewal::MaxReached { expires });
                    return;
                }
                last = Some(expires);
                tx.send_replace(Renewal::Renewed { expires });
                let left = expires.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep((left * 2 / 3).max(Duration::from_millis(200))).await;
            }
            Err(e) if e.code() == tonic::Code::Unavailable => {
                let time_left = last.map(|l| l.duration_since(SystemTime::now()).unwrap_or_default());
                if time_left.is_some_and(|t| t.is_zero()) || attempt >= client.retry().attempts.max(1) && last.is_none()
                {
                    tx.send_replace(Renewal::Failed(e.to_string()));
                    return;
                }
                crate::backoff(client.retry(), attempt).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => {
                tx.send_replace(Renewal::Failed(e.to_string()));
                return;
            }
        }
    }
}
