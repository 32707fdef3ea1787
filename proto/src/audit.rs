//! Which fields of the API's messages are secret. The audit log carries a
//! secret field only as an HMAC under each device's key; a map field may be
//! secret in some of its keys only. Declared here once, beside the generated
//! messages: the gateway's handlers ask [`audit`] and do not decide for
//! themselves. `tests/audit_fields.rs` fails when a field named like a
//! secret (password, token, secret, key, value, private_key, credential) is
//! declared neither way, or when a declared field no longer exists.

/// How the audit log shows a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audit {
    /// As an HMAC (every field of a message or entry of a list or map).
    Secret,
    /// As it is.
    Plain,
    /// A `map<string, string>` whose entries under these keys are secret.
    SecretKeys(&'static [&'static str]),
}

/// Settings of cloud mounts that hold credentials (the provider adapters'
/// `settings::SENSITIVE`; a test in the server keeps the two equal).
pub const MOUNT_CREDENTIALS: &[&str] = &["secret_access_key", "session_token", "client_secret"];

use Audit::{Plain, Secret, SecretKeys};

/// Every field of the API that is secret, or named like a secret and plain,
/// by its full name (`package.Message.field`).
pub const FIELDS: &[(&str, Audit)] = &[
    // Secrets
    ("keybridge.v1.PutRequest.value", Secret),
    ("keybridge.v1.GetResponse.value", Secret),
    ("keybridge.v1.ListRequest.page_token", Plain),
    ("keybridge.v1.ListResponse.keys", Plain),
    ("keybridge.v1.ListResponse.next_page_token", Plain),
    // Lease ids (which the list shows anyway), not credentials.
    ("keybridge.v1.ListLeasesRequest.page_token", Plain),
    ("keybridge.v1.ListLeasesResponse.next_page_token", Plain),
    // A rule name and a target path, which the page lists anyway.
    ("keybridge.v1.SyncStatusRequest.page_token", Plain),
    ("keybridge.v1.SyncStatusResponse.next_page_token", Plain),
    ("keybridge.v1.UndeleteRequest.restore_secret", Plain),
    // Sys
    ("keybridge.v1.SealStatusResponse.key_shares", Plain),
    ("keybridge.v1.SealStatusResponse.key_threshold", Plain),
    ("keybridge.v1.InitRequest.key_shares", Plain),
    ("keybridge.v1.InitRequest.key_threshold", Plain),
    ("keybridge.v1.InitResponse.unseal_keys_b64", Secret),
    ("keybridge.v1.InitResponse.root_token", Secret),
    ("keybridge.v1.InitResponse.recovery_keys_b64", Secret),
    ("keybridge.v1.UnsealRequest.key", Secret),
    ("keybridge.v1.RekeyRequest.keys", Secret),
    ("keybridge.v1.RekeyRequest.key_shares", Plain),
    ("keybridge.v1.RekeyRequest.key_threshold", Plain),
    ("keybridge.v1.RekeyResponse.unseal_keys_b64", Secret),
    ("keybridge.v1.SnapshotChunk.data", Secret),
    ("keybridge.v1.EnableMountRequest.config", SecretKeys(MOUNT_CREDENTIALS)),
    ("keybridge.v1.TuneMountRequest.config", SecretKeys(MOUNT_CREDENTIALS)),
    // Tokens
    ("keybridge.v1.CreateTokenResponse.token", Secret),
    ("keybridge.v1.TokenInfo.accessor", Secret),
    ("keybridge.v1.LookupTokenRequest.token", Secret),
    ("keybridge.v1.LookupTokenRequest.accessor", Secret),
    ("keybridge.v1.RenewTokenRequest.token", Secret),
    ("keybridge.v1.RevokeTokenRequest.token", Secret),
    ("keybridge.v1.RevokeTokenRequest.accessor", Secret),
    // Auth
    ("keybridge.v1.LoginRequest.jwt", Secret),
    ("keybridge.v1.LoginResponse.token", Secret),
    ("keybridge.v1.WriteAuthConfigRequest.settings", SecretKeys(&["token_reviewer_jwt"])),
    ("keybridge.v1.WriteAuthRoleRequest.settings", Plain),
    // Audit
    ("keybridge.v1.AuditHashRequest.input", Secret),
    ("keybridge.v1.AuditVerificationKey.key", Secret),
    ("keybridge.v1.VerifyAuditChunk.data", Plain),
    // Logical and plugins
    ("keybridge.v1.LogicalRequest.data", Secret),
    ("keybridge.v1.LogicalResponse.data", Secret),
    ("keybridge.v1.PathHelpResponse.config_keys", Plain),
    ("keybridge.v1.EngineField.default_value", Plain),
    ("keybridge.v1.RegisterPluginChunk.data", Plain),
];

/// How the audit log shows a field (`package.Message.field`); `None` for a
/// field this table does not name (plain unless named like a secret, which
/// the test forbids).
pub fn audit(field: &str) -> Option<Audit> {
    FIELDS.iter().find(|(f, _)| *f == field).map(|(_, a)| *a)
}

/// The words that make a field name look like a secret's.
pub const SECRET_WORDS: &[&str] = &["password", "token", "secret", "key", "value", "private_key", "credential"];

/// Whether a field's name contains one of [`SECRET_WORDS`] as a word
/// (`root_token`, `keys`, `default_value`; not `monkey`).
pub fn named_like_a_secret(name: &str) -> bool {
    let words: Vec<&str> = name.split('_').collect();
    SECRET_WORDS.iter().any(|w| {
        let parts: Vec<&str> = w.split('_').collect();
        words
            .windows(parts.len())
            .any(|win| win.iter().zip(&parts).all(|(a, b)| a == b || a.strip_suffix('s') == Some(b)))
    })
}
