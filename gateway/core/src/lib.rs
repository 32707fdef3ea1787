//! Keybridge's core: everything between an authenticated request and the
//! barrier. It knows no transport (no gRPC, no config format).
//!
//! - [`path`]: validation of mount and secret paths.
//! - [`value`]: secret values, which zero themselves and never print.
//! - [`mounts`]: the mount table and the longest-prefix router.
//! - [`kv`]: the versioned secret engine of the local store.
//! - [`token`]: tokens, stored only as keyed hashes.
//! - [`audit`]: audit devices, the record chain and its verification.
//! - [`Core`]: the lifecycle (init, unseal, seal) and every operation,
//!   each of which authenticates and authorizes before it routes.

pub mod audit;
pub mod cloud;
mod core;
pub mod engine;
mod error;
pub mod kv;
pub mod mounts;
pub mod path;
pub mod sync;
mod time;
pub mod token;
pub mod value;

pub use crate::core::engine_ops::{
    LeaseView, LogicalOp, LogicalResponse, MAX_COMPONENT_BYTES, PathHelp, PluginVersion,
};
pub use crate::core::rotation_ops::{CopyState, RotateSpec, Rotation, RotationState, RotationVerifier, Schedule};
pub use crate::core::sync_ops::{RuleSpec, SyncStatus};
pub use crate::core::{AuthMount, Core, CoreConfig, InitResult, SealStatus, TokenRef, TokenRequest, login_audit};
pub use audit::{AuditValue, Caller};
pub use error::Error;
pub use keybridge_provider_api as provider;
pub use time::Timestamp;

pub type Result<T, E = Error> = std::result::Result<T, E>;
