//! Audit: every request and every response is recorded on every enabled
//! device before the request runs and before its answer leaves.
//!
//! Entry points: [`Caller`] (one request as it passes through the core),
//! [`Broker`] (the enabled devices; `log` writes a record on all of them),
//! [`chain`] (the record chain and its verifier, pure, shared with the CLI).
//! The core decides when to record; this crate knows how. It never depends
//! on the core, a transport or a config format.
//!
//! - A device is a writer thread with a sink (a file, a socket, or an
//!   in-process stream for `WatchAudit`). Requests hand it a rendered record
//!   and wait for its acknowledgement; the thread takes every record that is
//!   waiting, chains them ([`chain`]), writes them with one call (and one
//!   `fdatasync` with `fsync=true`), then acknowledges them all.
//! - Fail closed: when devices other than streams are enabled and none of
//!   them accepted a record, the broker says so and the request is refused.
//!   With no device, requests run unaudited, as in Vault.
//! - Secret values and tokens are HMAC-SHA256'd with each device's own key
//!   before they leave the process ([`AuditValue::Secret`]).
//! - Each device's chain state is checkpointed into the barrier (its last
//!   sequence number, chain value and file offset): every second, after each
//!   group with `fsync=true`, and when the server seals or stops.

pub mod broker;
pub mod chain;
pub mod device;
mod error;
mod record;
mod time;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use broker::{Broker, Node};
pub use chain::MacKey;
pub use device::{DEVICES_KEY, DeviceEntry};
pub use error::{Error, Result};
pub use record::*;
pub use time::Timestamp;

/// A device's position, kept in the barrier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub seq: u64,
    pub chain: String,
    pub segment_start: u64,
    /// For files: the file's length after the record `seq`.
    pub offset: u64,
}

impl StoredCheckpoint {
    pub fn chain_value(&self) -> chain::ChainValue {
        let mut v = [0u8; chain::CHAIN_LEN];
        if hex::decode_to_slice(&self.chain, &mut v).is_err() {
            v = [0u8; chain::CHAIN_LEN];
        }
        v
    }
}

/// What an operator exports to verify a device's files offline.
#[derive(Serialize, Deserialize)]
pub struct VerificationKey {
    pub device: String,
    pub key: String,
    pub checkpoint_seq: u64,
    pub checkpoint_chain: String,
    pub segment_start: u64,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey").field("device", &self.device).finish_non_exhaustive()
    }
}

impl VerificationKey {
    pub fn checkpoint(&self) -> chain::Checkpoint {
        let cp = StoredCheckpoint {
            seq: self.checkpoint_seq,
            chain: self.checkpoint_chain.clone(),
            segment_start: self.segment_start,
            offset: 0,
        };
        chain::Checkpoint { seq: cp.seq, chain: Some(cp.chain_value()), segment_start: cp.segment_start.max(1) }
    }

    pub fn key_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        hex::decode(&self.key).ok().map(Zeroizing::new)
    }
}

/// Options of a device type, validated without IO.
pub fn validate_options(kind: &str, options: &BTreeMap<String, String>) -> crate::Result<()> {
    use crate::Error::InvalidArgument;
    for k in ["log_raw", "hmac_accessor"] {
        match options.get(k).map(String::as_str) {
            None => {}
            Some("true") if k == "hmac_accessor" => {}
            Some(_) => {
                return Err(InvalidArgument(format!(
                    "{k} is not offered: audit records carry secret values, tokens and accessors only as HMACs \
                     under the device's key, so that reading the log never reveals them; \
                     `keybridge audit hash` finds a known value's HMAC"
                )));
            }
        }
    }
    let allowed: &[&str] = match kind {
        "file" => &["file_path", "fsync", "mode", "hmac_accessor"],
        "socket" => &["address", "socket_type", "write_timeout", "hmac_accessor"],
        "stream" => &["buffer", "hmac_accessor"],
        other => {
            return Err(InvalidArgument(format!("unknown audit device type {other:?}: use file, socket or stream")));
        }
    };
    for k in options.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(InvalidArgument(format!(
                "unknown option {k:?} for a {kind} audit device; it takes {}",
                allowed.join(", ")
            )));
        }
    }
    if let Some(v) = options.get("fsync")
        && v.parse::<bool>().is_err()
    {
        return Err(InvalidArgument(format!("fsync must be true or false, not {v:?}")));
    }
    match kind {
        "file" => {
            let p = options
                .get("file_path")
                .ok_or_else(|| InvalidArgument("a file audit device needs file_path=/absolute/path".into()))?;
            if !std::path::Path::new(p).is_absolute() {
                return Err(InvalidArgument(format!("file_path must be an absolute path, not {p:?}")));
            }
            if std::path::Path::new(p).parent().is_some_and(|d| d.to_string_lossy().contains("{node}")) {
                return Err(InvalidArgument(format!(
                    "file_path {p:?}: {{node}} may appear in the file's name only, not in its directory"
                )));
            }
            if let Some(m) = options.get("mode") {
                match u32::from_str_radix(m, 8) {
                    Ok(bits) if !m.is_empty() && bits & !0o666 == 0 => {}
                    Ok(_) if !m.is_empty() => {
                        return Err(InvalidArgument(format!(
                            "mode {m}: an audit log is never executable, setuid, setgid or sticky; use read/write bits such as 0600 or 0640"
                        )));
                    }
                    _ => {
                        return Err(InvalidArgument(format!(
                            "mode must be octal file permissions such as 0600, not {m:?}"
                        )));
                    }
                }
            }
        }
        "socket" => {
            let a = options.get("address").ok_or_else(|| {
                InvalidArgument("a socket audit device needs address=HOST:PORT (tcp) or a socket path (unix)".into())
            })?;
            match options.get("socket_type").map(String::as_str).unwrap_or("tcp") {
                "tcp" => {
                    if a.parse::<std::net::SocketAddr>().is_err() && !a.contains(':') {
                        return Err(InvalidArgument(format!("address must be HOST:PORT for tcp, not {a:?}")));
                    }
                }
                "unix" => {}
                other => return Err(InvalidArgument(format!("socket_type must be tcp or unix, not {other:?}"))),
            }
            if let Some(t) = options.get("write_timeout")
                && humantime::parse_duration(t).is_err()
            {
                return Err(InvalidArgument(format!("write_timeout must be a duration such as 2s, not {t:?}")));
            }
        }
        _ => {
            if let Some(b) = options.get("buffer")
                && !matches!(b.parse::<usize>(), Ok(1..=1_000_000))
            {
                return Err(InvalidArgument(format!(
                    "buffer must be a number of records from 1 to 1000000, not {b:?}"
                )));
            }
        }
    }
    Ok(())
}
