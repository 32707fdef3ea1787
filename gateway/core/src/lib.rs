//! Keybridge's core: everything between an authenticated request and the
//! barrier. It knows no transport (no gRPC, no config format) and names no
//! cloud: clouds are the provider adapters' business.
//!
//! - [`Core`] (`core.rs`): the lifecycle (init, unseal, seal),
//!   authentication and authorization, the audited response, the mount
//!   table's operations. Every public operation authenticates and
//!   authorizes before it routes.
//! - [`secrets`](crate::Core::get): the Secrets API over any mount.
//! - [`backend`]: the one interface every mount is reached through: the
//!   local versioned store ([`backend::kv`]), a cloud ([`backend::cloud`]),
//!   a plugin engine (`backend::plugin`, the Logical API).
//! - [`tokens`], `policies`, `auth_methods`, `leases`: Vault's security
//!   model: the token store, ACL policies, login methods, leases.
//! - [`plugins`]: the catalog of WASM components and the contract engines
//!   speak.
//! - [`reconciler`]: replication rules, the journal, the worker, scans and
//!   coordinated rotation.
//! - [`audit`]: audit records, devices, the broker and the record chain;
//!   `audit_devices` is the API that enables and verifies them.
//! - [`path`], [`value`], [`mounts`]: path checks, secret values (which
//!   zero themselves and never print), the mount table and its router.

pub mod audit;
mod audit_devices;
mod auth_methods;
pub mod backend;
mod core;
mod error;
mod leases;
pub mod mounts;
pub mod path;
pub mod plugins;
mod policies;
pub mod reconciler;
mod secrets;
mod time;
pub mod tokens;
pub mod value;

pub use crate::auth_methods::{AuthMount, login_audit};
pub use crate::core::{Core, CoreConfig, InitResult, SealStatus};
pub use crate::plugins::{LeaseView, LogicalOp, LogicalResponse, MAX_COMPONENT_BYTES, PathHelp, PluginVersion};
pub use crate::reconciler::{CopyState, RotateSpec, Rotation, RotationState, RotationVerifier, Schedule};
pub use crate::reconciler::{RuleSpec, SyncStatus};
pub use crate::tokens::store::{TokenRef, TokenRequest};
pub use audit::{AuditValue, Caller};
pub use error::Error;
pub use keybridge_provider_api as provider;
pub use time::Timestamp;

pub type Result<T, E = Error> = std::result::Result<T, E>;
