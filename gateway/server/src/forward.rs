//! Requests only the leading node can answer (the reconciler's status and
//! runs: a replica's drift, errors and conflicts live in the leading
//! reconciler's memory), sent on by another node sharing a PostgreSQL
//! table to the leader's `api_addr`, with the caller's own token: the
//! leader authenticates, authorizes and audits the call as if it had come
//! straight to it, and this node records it too. Never forwarded twice.

use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

use keybridge_core::Core;

/// Marks a forwarded request (its value: the forwarding node's id).
const FORWARDED: &str = "x-keybridge-forwarded-by";

/// The channel to the leader and the metadata to send, when this node does
/// not lead a shared table that another live node leads with an
/// `api_addr`; `None` otherwise (the core then answers as it would).
pub(crate) async fn to_leader<T>(core: &Core, req: &Request<T>) -> Result<Option<(Channel, MetadataMap)>, Status> {
    if core.is_leading() || req.metadata().get(FORWARDED).is_some() {
        return Ok(None);
    }
    #[cfg(feature = "postgres")]
    {
        let Some(shared) = crate::server::SHARED.get() else { return Ok(None) };
        let leader = shared
            .store
            .leader()
            .await
            .map_err(|e| Status::unavailable(format!("cannot find the leading node: {e}")))?;
        if !leader.live || leader.api_addr.is_empty() {
            return Ok(None);
        }
        let channel = channel(&leader.api_addr).await?;
        let mut md = MetadataMap::new();
        for key in ["authorization", "x-request-id"] {
            if let Some(v) = req.metadata().get(key) {
                md.insert(key, v.clone());
            }
        }
        if let Ok(v) = crate::server::node_id().parse() {
            md.insert(FORWARDED, v);
        }
        Ok(Some((channel, md)))
    }
    #[cfg(not(feature = "postgres"))]
    Ok(None)
}

/// A request carrying `md`.
pub(crate) fn request<T>(msg: T, md: MetadataMap) -> Request<T> {
    let mut r = Request::new(msg);
    *r.metadata_mut() = md;
    r
}

/// One channel per leader address, kept while the leader stays.
#[cfg(feature = "postgres")]
async fn channel(addr: &str) -> Result<Channel, Status> {
    static CACHED: std::sync::Mutex<Option<(String, Channel)>> = std::sync::Mutex::new(None);
    if let Some((a, c)) = CACHED.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        && a == addr
    {
        return Ok(c.clone());
    }
    let unreachable = |e: tonic::transport::Error| {
        Status::unavailable(format!("cannot reach the leading node at {addr} to forward the request: {e}"))
    };
    let mut ep = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|_| Status::unavailable(format!("the leading node's api_addr {addr:?} is not a URL")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    if addr.starts_with("https://") {
        // The certificate of the leader's listener must be one this
        // machine's trust store accepts.
        ep = ep.tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots()).map_err(unreachable)?;
    }
    let c = ep.connect().await.map_err(unreachable)?;
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = Some((addr.to_string(), c.clone()));
    Ok(c)
}
