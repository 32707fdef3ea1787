//! Keybridge's storage layer.
//!
//! - [`Physical`]: the small trait every physical store implements (get, list,
//!   an atomic batch with preconditions, consistent export and import), so a
//!   networked backend can be added without touching the barrier or engines.
//! - [`RedbStore`]: the embedded ACID implementation (a file or memory), with
//!   a bounded cache of entries in front of its reads.
//! - [`Barrier`]: the only place that encrypts. AES-256-GCM with a keyring of
//!   key terms; the storage key is bound in as associated data; the keyring is
//!   kept encrypted under a root key that is split into Shamir shares.

mod barrier;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
pub mod fill_cache;
mod keyring;
pub mod leader_work;
mod physical;
mod redb_store;
pub mod seal;
pub mod shamir;
pub mod snapshot;

pub use barrier::{Barrier, KEYRING_KEY, KeyInfo, SealConfig, SealState, Seals, Stamp, WriteBatch};
pub use error::Error;
pub use keyring::RootKey;
pub use physical::{Batch, Check, Op, Physical};
pub use redb_store::RedbStore;
pub use seal::{AutoSeal, SealError};

pub type Result<T, E = Error> = std::result::Result<T, E>;
