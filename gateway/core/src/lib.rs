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
//! - [`password_policies`]: Vault's password policies at
//!   `sys/policies/password/`, served by the core through the Logical API,
//!   and what built-in engines generate passwords from.
//! - [`reconciler`]: the API of replication rules and rotations, and the
//!   core's side of the reconciler's interface (crate `keybridge-reconciler`
//!   holds the rules, the journal, the worker, scans and rotation).
//! - `audit_devices`: the API that enables, lists and verifies audit
//!   devices (the devices, records and chain are crate `keybridge-audit`).
//! - [`path`], [`mounts`]: path checks, the mount table and its router.
//!   Secret values (which zero themselves and never print) are crate
//!   `keybridge-value`, re-exported as [`value`].

mod audit_devices;
mod auth_methods;
pub mod backend;
pub mod coherence;
mod core;
mod error;
mod leases;
pub mod metrics;
pub mod mounts;
pub mod password_policies;
pub mod path;
pub mod plugins;
mod policies;
pub mod reconciler;
mod secrets;
pub mod tokens;

pub use crate::auth_methods::{AuthMount, login_audit};
pub use crate::core::{Core, CoreConfig, InitResult, SealStatus};
pub use crate::plugins::{EngineOp, EngineReply, LeaseView, MAX_COMPONENT_BYTES, PathHelp, PluginVersion};
pub use crate::reconciler::{CopyState, RotateSpec, Rotation, RotationState, RotationVerifier, Schedule};
pub use crate::reconciler::{RuleSpec, StateCount, StatusQuery, SyncStatus};
pub use crate::tokens::store::{TokenRef, TokenRequest};
pub use audit::{AuditValue, Caller};
pub use error::Error;
/// Audit records and devices (crate `keybridge-audit`).
pub use keybridge_audit as audit;
pub use keybridge_audit::Timestamp;
pub use keybridge_provider_api as provider;
pub use keybridge_value as value;

pub type Result<T, E = Error> = std::result::Result<T, E>;
