//! Vault-compatible path policies: the HCL language and the ACL built from
//! a token's policies. Pure: no IO, no async, nothing to fail on but input.
//!
//! Semantics follow Vault's (`vault/policy.go`, `vault/acl.go`):
//! - A rule's path is exact, ends in `*` (prefix glob), and/or contains `+`
//!   segments (one path segment each).
//! - The most specific matching rule applies, by Vault's priority order
//!   (see [`Pattern::outranks`]); `deny` there refuses everything.
//! - Rules for the same path from several policies merge: capabilities
//!   union, `deny` wins; parameter lists union.
//! - No matching rule: denied.
//!
//! And Vault's password policies ([`password`]): how engines generate
//! passwords, parsed here and drawn with the caller's CSPRNG.

mod acl;
mod lint;
mod parse;
pub mod password;
mod pattern;
#[cfg(feature = "rego")]
pub mod rego;

pub use acl::{Acl, Decision, Param, Request, ValueKind, parse_duration};
pub use lint::{Warning, lint};
pub use parse::{Capability, PathRule, Policy, parse_policy};
pub use password::{PasswordPolicy, parse_password_policy};
pub use pattern::Pattern;

/// Every failure of this crate: a policy that does not parse or mean
/// anything. Messages say where and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("policy syntax error: {0}")]
    Syntax(String),
    #[error("policy rule for path {path:?}: {reason}")]
    Rule { path: String, reason: String },
    #[error("policy: {0}")]
    Structure(String),
    /// A Rego module that does not parse or evaluate (with file:line:col).
    #[error("rego: {0}")]
    Rego(String),
    /// A password policy that does not parse, cannot be met, or produced
    /// no password in its attempts.
    #[error("password policy: {0}")]
    Password(String),
}
