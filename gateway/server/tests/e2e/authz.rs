//! The authorization table, checked against the running server.
//!
//! Every RPC the server serves (listed through its own reflection service,
//! methods read from the descriptors it returns) must have a row here, or
//! this test fails: an RPC added later without deciding who may call it
//! cannot slip through. A row names the paths and capabilities the RPC
//! needs, or says it needs no token. For each needed (path, capability):
//! a token holding everything else the row needs, and every other
//! capability on that path, is refused with PERMISSION_DENIED, and nothing
//! changes: the store's keys and values (but the audit checkpoints a denied
//! request writes by design: `core/audit/checkpoint/<device>`), the cloud
//! mount's upstream call count (moto), and so no lease, rule or mount
//! appears. Then a token holding exactly the row's capabilities is let
//! through. docs/API.md's RPC table is rendered from the same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use keybridge_proto::v1 as pb;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::harness::{Server, authed, json, moto, stderr};

const T: &str = "root-e2e";
/// A password policy the fixtures and the rows write.
const PASSWORD_POLICY: &str =
    "length = 16\nrule \"charset\" {\n  charset = \"abcdefghij0123456789\"\n  min-chars = 2\n}\n";
const ISS: &str = "https://kubernetes.default.svc.cluster.local";

/// What the calls need that only exists once the fixtures are made.
struct Fx {
    lease: String,
    lease2: String,
    victim: String,
    victim_accessor: String,
    doomed: String,
    doomed_accessor: String,
    passwords: Vec<u8>,
    passwords_sha: String,
    jwt: String,
    k8s_pem: String,
    moto_url: String,
    audit_dir: String,
    /// The database engine's PostgreSQL, kept running for the calls.
    _pg: keybridge_testservers::postgres::Postgres,
    /// A certificate the PKI engine at pki/ issued.
    pki_serial: String,
}

type Reply = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;
type Call = Box<dyn Fn(Channel, String, Arc<Fx>) -> Reply + Send + Sync>;

/// One RPC (or one form of it) and what it needs.
struct Row {
    /// `Service.Method`, as docs/API.md names it.
    rpc: &'static str,
    /// docs/API.md's wording of the path and capability.
    doc: (&'static str, &'static str),
    /// Every (policy path, capability) the call needs; empty: no token.
    needs: Vec<(&'static str, &'static str)>,
    call: Call,
}

macro_rules! call {
    ($m:ident :: $c:ident, $method:ident, |$fx:ident| $msg:expr) => {{
        let f: Call = Box::new(|ch: Channel, tok: String, $fx: Arc<Fx>| -> Reply {
            Box::pin(async move {
                let msg = $msg;
                let req = if tok.is_empty() { tonic::Request::new(msg) } else { authed(&tok, msg) };
                pb::$m::$c::new(ch).$method(req).await.map(|_| ())
            })
        });
        f
    }};
}

fn row(
    rpc: &'static str,
    doc: (&'static str, &'static str),
    needs: &[(&'static str, &'static str)],
    call: Call,
) -> Row {
    Row { rpc, doc, needs: needs.to_vec(), call }
}

fn one<T: Send + 'static>(m: T) -> tokio_stream::Iter<std::vec::IntoIter<T>> {
    tokio_stream::iter(vec![m])
}

fn kv(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn rows() -> Vec<Row> {
    let data = ("`<mount>/data/<path>`", "`read`");
    vec![
        // ----- Secrets: a local mount (secret/) and a cloud one (aws/ on moto).
        row(
            "Secrets.Put",
            ("`<mount>/data/<path>`", "`create` (new secret) or `update` (existing)"),
            &[("aws/data/app/new", "create")],
            call!(secrets_client::SecretsClient, put, |_fx| pb::PutRequest {
                path: "aws/app/new".into(),
                value: crate::harness::fields(&[("v", "1")]),
                cas: None
            }),
        ),
        row(
            "Secrets.Put",
            ("`<mount>/data/<path>`", "`create` (new secret) or `update` (existing)"),
            &[("secret/data/app/db", "update")],
            call!(secrets_client::SecretsClient, put, |_fx| pb::PutRequest {
                path: "secret/app/db".into(),
                value: crate::harness::fields(&[("password", "p3")]),
                cas: None
            }),
        ),
        row(
            "Secrets.Get",
            data,
            &[("aws/data/app/db", "read")],
            call!(secrets_client::SecretsClient, get, |_fx| pb::GetRequest {
                path: "aws/app/db".into(),
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Delete",
            ("`<mount>/data/<path>` (latest version)", "`delete`"),
            &[("secret/data/app/del1", "delete")],
            call!(secrets_client::SecretsClient, delete, |_fx| pb::DeleteRequest {
                path: "secret/app/del1".into(),
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Delete",
            ("`<mount>/delete/<path>` (given versions)", "`update`"),
            &[("secret/delete/app/del2", "update")],
            call!(secrets_client::SecretsClient, delete, |_fx| pb::DeleteRequest {
                path: "secret/app/del2".into(),
                versions: vec![1],
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Delete",
            ("`<mount>/metadata/<path>` (`all_versions`)", "`delete`"),
            &[("secret/metadata/app/del3", "delete")],
            call!(secrets_client::SecretsClient, delete, |_fx| pb::DeleteRequest {
                path: "secret/app/del3".into(),
                all_versions: true,
                ..Default::default()
            }),
        ),
        row(
            "Secrets.List",
            ("`<mount>/metadata/<folder>`", "`list`"),
            &[("secret/metadata/app/", "list")],
            call!(secrets_client::SecretsClient, list, |_fx| pb::ListRequest {
                path: "secret/app/".into(),
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Describe",
            ("`<mount>/metadata/<path>`", "`read`"),
            &[("aws/metadata/app/db", "read")],
            call!(secrets_client::SecretsClient, describe, |_fx| pb::DescribeRequest { path: "aws/app/db".into() }),
        ),
        row(
            "Secrets.ListVersions",
            ("`<mount>/metadata/<path>`", "`read`"),
            &[("secret/metadata/app/db", "read")],
            call!(secrets_client::SecretsClient, list_versions, |_fx| pb::ListVersionsRequest {
                path: "secret/app/db".into()
            }),
        ),
        row(
            "Secrets.Undelete",
            ("`<mount>/undelete/<path>`", "`update`"),
            &[("secret/undelete/app/db", "update")],
            call!(secrets_client::SecretsClient, undelete, |_fx| pb::UndeleteRequest {
                path: "secret/app/db".into(),
                versions: vec![1],
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Destroy",
            ("`<mount>/destroy/<path>`", "`update`"),
            &[("secret/destroy/app/old", "update")],
            call!(secrets_client::SecretsClient, destroy, |_fx| pb::DestroyRequest {
                path: "secret/app/old".into(),
                versions: vec![1]
            }),
        ),
        row(
            "Secrets.PutMetadata",
            ("`<mount>/metadata/<path>`", "`create` (new secret) or `update` (existing)"),
            &[("secret/metadata/app/db", "update")],
            call!(secrets_client::SecretsClient, put_metadata, |_fx| pb::PutMetadataRequest {
                path: "secret/app/db".into(),
                custom_metadata: kv(&[("owner", "x")]),
                ..Default::default()
            }),
        ),
        row(
            "Secrets.Watch",
            data,
            &[("secret/data/app/db", "read")],
            call!(secrets_client::SecretsClient, watch, |_fx| pb::WatchSecretRequest { path: "secret/app/db".into() }),
        ),
        // ----- Sys
        row(
            "Sys.SealStatus",
            ("none: served without a token, also while sealed", ""),
            &[],
            call!(sys_client::SysClient, seal_status, |_fx| pb::SealStatusRequest {}),
        ),
        row(
            "Sys.Init",
            ("none: served without a token, also while sealed", ""),
            &[],
            call!(sys_client::SysClient, init, |_fx| pb::InitRequest { key_shares: 1, key_threshold: 1 }),
        ),
        row(
            "Sys.Unseal",
            ("none: served without a token, also while sealed", ""),
            &[],
            call!(sys_client::SysClient, unseal, |_fx| pb::UnsealRequest {
                key: String::new(),
                reset: true,
                migrate: false
            }),
        ),
        row(
            "Sys.EnableMount",
            ("`sys/mounts/<path>`", "`update`; `sudo` with a custom cloud endpoint"),
            &[("sys/mounts/m1/", "update")],
            call!(sys_client::SysClient, enable_mount, |_fx| pb::EnableMountRequest {
                path: "m1/".into(),
                r#type: "local".into(),
                ..Default::default()
            }),
        ),
        row(
            "Sys.EnableMount",
            ("`sys/mounts/<path>`", "`update`; `sudo` with a custom cloud endpoint"),
            &[("sys/mounts/m4/", "sudo")],
            call!(sys_client::SysClient, enable_mount, |fx| pb::EnableMountRequest {
                path: "m4/".into(),
                r#type: "aws".into(),
                config: fx_aws(&fx),
                ..Default::default()
            }),
        ),
        row(
            "Sys.ListMounts",
            ("`sys/mounts`", "`read`"),
            &[("sys/mounts", "read")],
            call!(sys_client::SysClient, list_mounts, |_fx| pb::ListMountsRequest {}),
        ),
        row(
            "Sys.DisableMount",
            ("`sys/mounts/<path>`", "`delete`"),
            &[("sys/mounts/m2/", "delete")],
            call!(sys_client::SysClient, disable_mount, |_fx| pb::DisableMountRequest { path: "m2/".into() }),
        ),
        row(
            "Sys.TuneMount",
            ("`sys/mounts/<path>/tune`", "`update`; `sudo` on `sys/mounts/<path>` with a custom cloud endpoint"),
            &[("sys/mounts/m3/tune", "update")],
            call!(sys_client::SysClient, tune_mount, |_fx| pb::TuneMountRequest {
                path: "m3/".into(),
                description: Some("tuned".into()),
                ..Default::default()
            }),
        ),
        row(
            "Sys.TuneMount",
            ("`sys/mounts/<path>/tune`", "`update`; `sudo` on `sys/mounts/<path>` with a custom cloud endpoint"),
            &[("sys/mounts/aws/tune", "update"), ("sys/mounts/aws/", "sudo")],
            call!(sys_client::SysClient, tune_mount, |_fx| pb::TuneMountRequest {
                path: "aws/".into(),
                description: Some("tuned".into()),
                ..Default::default()
            }),
        ),
        row(
            "Sys.Rotate",
            ("`sys/rotate`", "`sudo`"),
            &[("sys/rotate", "sudo")],
            call!(sys_client::SysClient, rotate, |_fx| pb::RotateRequest {}),
        ),
        row(
            "Sys.KeyStatus",
            ("`sys/key-status`", "`read`"),
            &[("sys/key-status", "read")],
            call!(sys_client::SysClient, key_status, |_fx| pb::KeyStatusRequest {}),
        ),
        row(
            "Sys.Members",
            ("`sys/members`", "`read`"),
            &[("sys/members", "read")],
            call!(sys_client::SysClient, members, |_fx| pb::MembersRequest {}),
        ),
        row(
            "Sys.Rekey",
            ("`sys/rekey`", "`sudo`"),
            &[("sys/rekey", "sudo")],
            call!(sys_client::SysClient, rekey, |_fx| pb::RekeyRequest {
                keys: vec![],
                key_shares: 1,
                key_threshold: 1
            }),
        ),
        row(
            "Sys.SnapshotSave",
            ("`sys/storage/snapshot`", "`sudo`"),
            &[("sys/storage/snapshot", "sudo")],
            call!(sys_client::SysClient, snapshot_save, |_fx| pb::SnapshotSaveRequest {}),
        ),
        row(
            "Sys.SnapshotRestore",
            ("`sys/storage/snapshot`", "`sudo`"),
            &[("sys/storage/snapshot", "sudo")],
            call!(sys_client::SysClient, snapshot_restore, |_fx| one(pb::SnapshotChunk {
                data: b"not a snapshot".to_vec(),
                force: false
            })),
        ),
        // ----- Policies
        row(
            "Policies.Put",
            ("`sys/policies/acl/<name>`", "`update`"),
            &[("sys/policies/acl/x1", "update")],
            call!(policies_client::PoliciesClient, put, |_fx| pb::PutPolicyRequest {
                name: "x1".into(),
                policy: "path \"x/*\" { capabilities = [\"read\"] }".into()
            }),
        ),
        row(
            "Policies.Get",
            ("`sys/policies/acl/<name>`", "`read`"),
            &[("sys/policies/acl/p1", "read")],
            call!(policies_client::PoliciesClient, get, |_fx| pb::GetPolicyRequest { name: "p1".into() }),
        ),
        row(
            "Policies.List",
            ("`sys/policies/acl`", "`list`"),
            &[("sys/policies/acl", "list")],
            call!(policies_client::PoliciesClient, list, |_fx| pb::ListPoliciesRequest {}),
        ),
        row(
            "Policies.Delete",
            ("`sys/policies/acl/<name>`", "`delete`"),
            &[("sys/policies/acl/x2", "delete")],
            call!(policies_client::PoliciesClient, delete, |_fx| pb::DeletePolicyRequest { name: "x2".into() }),
        ),
        // ----- Tokens
        row(
            "Tokens.Create",
            ("`auth/token/create`", "`update`"),
            &[("auth/token/create", "update")],
            call!(tokens_client::TokensClient, create, |_fx| pb::CreateTokenRequest {
                policies: vec!["default".into()],
                ..Default::default()
            }),
        ),
        row(
            "Tokens.LookupSelf",
            ("`auth/token/lookup-self`", "`read`"),
            &[("auth/token/lookup-self", "read")],
            call!(tokens_client::TokensClient, lookup_self, |_fx| pb::LookupSelfRequest {}),
        ),
        row(
            "Tokens.Revoke",
            ("`auth/token/revoke`", "`update`"),
            &[("auth/token/revoke", "update")],
            call!(tokens_client::TokensClient, revoke, |fx| pb::RevokeTokenRequest {
                token: fx.doomed.clone(),
                accessor: String::new()
            }),
        ),
        row(
            "Tokens.Revoke",
            ("`auth/token/revoke-accessor` (by accessor)", "`update`"),
            &[("auth/token/revoke-accessor", "update")],
            call!(tokens_client::TokensClient, revoke, |fx| pb::RevokeTokenRequest {
                token: String::new(),
                accessor: fx.doomed_accessor.clone()
            }),
        ),
        row(
            "Tokens.RevokeSelf",
            ("`auth/token/revoke-self`", "`update`"),
            &[("auth/token/revoke-self", "update")],
            call!(tokens_client::TokensClient, revoke_self, |_fx| pb::RevokeSelfRequest {}),
        ),
        row(
            "Tokens.Renew",
            ("`auth/token/renew`", "`update`"),
            &[("auth/token/renew", "update")],
            call!(tokens_client::TokensClient, renew, |fx| pb::RenewTokenRequest {
                token: fx.victim.clone(),
                increment_seconds: 60
            }),
        ),
        row(
            "Tokens.Renew",
            ("`auth/token/renew-self` (the caller)", "`update`"),
            &[("auth/token/renew-self", "update")],
            call!(tokens_client::TokensClient, renew, |_fx| pb::RenewTokenRequest {
                token: String::new(),
                increment_seconds: 60
            }),
        ),
        row(
            "Tokens.Lookup",
            ("`auth/token/lookup`", "`update`"),
            &[("auth/token/lookup", "update")],
            call!(tokens_client::TokensClient, lookup, |fx| pb::LookupTokenRequest {
                target: Some(pb::lookup_token_request::Target::Token(fx.victim.clone()))
            }),
        ),
        row(
            "Tokens.Lookup",
            ("`auth/token/lookup-accessor` (by accessor)", "`update`"),
            &[("auth/token/lookup-accessor", "update")],
            call!(tokens_client::TokensClient, lookup, |fx| pb::LookupTokenRequest {
                target: Some(pb::lookup_token_request::Target::Accessor(fx.victim_accessor.clone()))
            }),
        ),
        row(
            "Tokens.CapabilitiesSelf",
            ("`sys/capabilities-self`", "`update`"),
            &[("sys/capabilities-self", "update")],
            call!(tokens_client::TokensClient, capabilities_self, |_fx| pb::CapabilitiesRequest {
                path: "secret/data/app/db".into()
            }),
        ),
        // ----- Auth
        row(
            "Auth.Enable",
            ("`sys/auth/<path>`", "`sudo`"),
            &[("sys/auth/jwt2/", "sudo")],
            call!(auth_client::AuthClient, enable, |_fx| pb::EnableAuthRequest {
                path: "jwt2".into(),
                r#type: "jwt".into(),
                ..Default::default()
            }),
        ),
        row(
            "Auth.List",
            ("`sys/auth`", "`read`"),
            &[("sys/auth", "read")],
            call!(auth_client::AuthClient, list, |_fx| pb::ListAuthRequest {}),
        ),
        row(
            "Auth.Disable",
            ("`sys/auth/<path>`", "`sudo`"),
            &[("sys/auth/gone/", "sudo")],
            call!(auth_client::AuthClient, disable, |_fx| pb::DisableAuthRequest { path: "gone".into() }),
        ),
        row(
            "Auth.WriteConfig",
            ("`auth/<path>/config`", "`update`"),
            &[("auth/kubernetes/config", "update")],
            call!(auth_client::AuthClient, write_config, |fx| pb::WriteAuthConfigRequest {
                path: "kubernetes".into(),
                settings: k8s_config(&fx)
            }),
        ),
        row(
            "Auth.ReadConfig",
            ("`auth/<path>/config`", "`read`"),
            &[("auth/kubernetes/config", "read")],
            call!(auth_client::AuthClient, read_config, |_fx| pb::ReadAuthConfigRequest { path: "kubernetes".into() }),
        ),
        row(
            "Auth.WriteRole",
            ("`auth/<path>/role/<name>`", "`create` (new) or `update`; holding each policy it grants, or `sudo`"),
            &[("auth/kubernetes/role/new", "create")],
            call!(auth_client::AuthClient, write_role, |_fx| pb::WriteAuthRoleRequest {
                path: "kubernetes".into(),
                role: "new".into(),
                settings: k8s_role("default")
            }),
        ),
        row(
            "Auth.WriteRole",
            ("`auth/<path>/role/<name>`", "`create` (new) or `update`; holding each policy it grants, or `sudo`"),
            &[("auth/kubernetes/role/big", "create"), ("auth/kubernetes/role/big", "sudo")],
            call!(auth_client::AuthClient, write_role, |_fx| pb::WriteAuthRoleRequest {
                path: "kubernetes".into(),
                role: "big".into(),
                settings: k8s_role("p1")
            }),
        ),
        row(
            "Auth.ReadRole",
            ("`auth/<path>/role/<name>`", "`read`"),
            &[("auth/kubernetes/role/app", "read")],
            call!(auth_client::AuthClient, read_role, |_fx| pb::ReadAuthRoleRequest {
                path: "kubernetes".into(),
                role: "app".into()
            }),
        ),
        row(
            "Auth.ListRoles",
            ("`auth/<path>/role`", "`list`"),
            &[("auth/kubernetes/role", "list")],
            call!(auth_client::AuthClient, list_roles, |_fx| pb::ListAuthRolesRequest { path: "kubernetes".into() }),
        ),
        row(
            "Auth.DeleteRole",
            ("`auth/<path>/role/<name>`", "`delete`"),
            &[("auth/kubernetes/role/gone", "delete")],
            call!(auth_client::AuthClient, delete_role, |_fx| pb::DeleteAuthRoleRequest {
                path: "kubernetes".into(),
                role: "gone".into()
            }),
        ),
        row(
            "Auth.Login",
            ("none: the credential is the authentication", ""),
            &[],
            call!(auth_client::AuthClient, login, |fx| pb::LoginRequest {
                path: "kubernetes".into(),
                role: "app".into(),
                jwt: fx.jwt.clone()
            }),
        ),
        // ----- Audit
        row(
            "Audit.Enable",
            ("`sys/audit/<path>`", "`sudo`"),
            &[("sys/audit/file2/", "sudo")],
            call!(audit_client::AuditClient, enable, |fx| pb::EnableAuditRequest {
                path: "file2".into(),
                r#type: "file".into(),
                options: kv(&[("file_path", &format!("{}/file2.log", fx.audit_dir))]),
                ..Default::default()
            }),
        ),
        row(
            "Audit.List",
            ("`sys/audit`", "`sudo`"),
            &[("sys/audit", "sudo")],
            call!(audit_client::AuditClient, list, |_fx| pb::ListAuditRequest {}),
        ),
        row(
            "Audit.Disable",
            ("`sys/audit/<path>`", "`sudo`"),
            &[("sys/audit/spare/", "sudo")],
            call!(audit_client::AuditClient, disable, |_fx| pb::DisableAuditRequest { path: "spare".into() }),
        ),
        row(
            "Audit.Hash",
            ("`sys/audit-hash/<path>`", "`update`"),
            &[("sys/audit-hash/file/", "update")],
            call!(audit_client::AuditClient, hash, |_fx| pb::AuditHashRequest {
                path: "file".into(),
                input: b"x".to_vec()
            }),
        ),
        row(
            "Audit.ExportKey",
            ("`sys/audit/<path>/key`", "`sudo`"),
            &[("sys/audit/file/key", "sudo")],
            call!(audit_client::AuditClient, export_key, |_fx| pb::ExportAuditKeyRequest { path: "file".into() }),
        ),
        row(
            "Audit.Verify",
            ("`sys/audit/<path>/verify`", "`sudo`"),
            &[("sys/audit/file/verify", "sudo")],
            call!(audit_client::AuditClient, verify, |_fx| one(pb::VerifyAuditChunk {
                device: "file".into(),
                ..Default::default()
            })),
        ),
        row(
            "Audit.Checkpoint",
            ("`sys/audit/<path>/verify`", "`sudo`"),
            &[("sys/audit/file/verify", "sudo")],
            call!(audit_client::AuditClient, checkpoint, |_fx| pb::AuditCheckpointRequest {
                path: "file".into(),
                ..Default::default()
            }),
        ),
        row(
            "Audit.Watch",
            ("`sys/audit/<path>/watch`", "`sudo`"),
            &[("sys/audit/stream/watch", "sudo")],
            call!(audit_client::AuditClient, watch, |_fx| pb::WatchAuditRequest { path: "stream".into() }),
        ),
        // ----- Logical (the apikeys engine at apikeys/)
        row(
            "Logical.Read",
            ("`<mount>/<path>`", "`read`"),
            &[("apikeys/roles/ci", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "apikeys/roles/ci".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("apikeys/issue/ci", "update")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "apikeys/issue/ci".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("apikeys/roles/new", "create")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "apikeys/roles/new".into(),
                data: kv(&[("scopes", "read")])
            }),
        ),
        row(
            "Logical.Delete",
            ("`<mount>/<path>`", "`delete`"),
            &[("apikeys/roles/gone", "delete")],
            call!(logical_client::LogicalClient, delete, |_fx| pb::LogicalRequest {
                path: "apikeys/roles/gone".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.List",
            ("`<mount>/<path>`", "`list`"),
            &[("apikeys/roles", "list")],
            call!(logical_client::LogicalClient, list, |_fx| pb::LogicalRequest {
                path: "apikeys/roles".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.PathHelp",
            ("`<mount>/<path>`", "`read`"),
            &[("apikeys/roles/ci", "read")],
            call!(logical_client::LogicalClient, path_help, |_fx| pb::PathHelpRequest {
                path: "apikeys/roles/ci".into()
            }),
        ),
        // ----- Logical (the built-in database engine at database/)
        row(
            "Logical.Read",
            ("`<mount>/<path>`", "`read`"),
            &[("database/creds/r", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "database/creds/r".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("database/roles/new", "create")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "database/roles/new".into(),
                data: kv(&[("db_name", "app"), ("creation_statements", "CREATE ROLE \"{{name}}\" LOGIN;")])
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("database/static-roles/new", "create")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "database/static-roles/new".into(),
                data: kv(&[("db_name", "app"), ("username", "static_user"), ("rotation_period", "1h")])
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("database/rotate-root/app", "update")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "database/rotate-root/app".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Delete",
            ("`<mount>/<path>`", "`delete`"),
            &[("database/roles/gone", "delete")],
            call!(logical_client::LogicalClient, delete, |_fx| pb::LogicalRequest {
                path: "database/roles/gone".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.List",
            ("`<mount>/<path>`", "`list`"),
            &[("database/roles", "list")],
            call!(logical_client::LogicalClient, list, |_fx| pb::LogicalRequest {
                path: "database/roles".into(),
                ..Default::default()
            }),
        ),
        // ----- Logical (the built-in pki engine at pki/)
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("pki/issue/r", "update")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "pki/issue/r".into(),
                data: kv(&[("common_name", "b.app.internal")])
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("pki/roles/new", "create")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "pki/roles/new".into(),
                data: kv(&[("allowed_domains", "app.internal"), ("allow_subdomains", "true")])
            }),
        ),
        row(
            "Logical.Write",
            ("`<mount>/<path>`", "`create` (new, on paths with an existence check) or `update`"),
            &[("pki/revoke", "update")],
            call!(logical_client::LogicalClient, write, |fx| pb::LogicalRequest {
                path: "pki/revoke".into(),
                data: kv(&[("serial_number", fx.pki_serial.as_str())])
            }),
        ),
        row(
            "Logical.Read",
            ("`<mount>/<path>`", "`read`"),
            &[("pki/ca/pem", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "pki/ca/pem".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Read",
            ("`<mount>/<path>`", "`read`"),
            &[("pki/crl", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "pki/crl".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.List",
            ("`<mount>/<path>`", "`list`"),
            &[("pki/certs", "list")],
            call!(logical_client::LogicalClient, list, |_fx| pb::LogicalRequest {
                path: "pki/certs".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Delete",
            ("`<mount>/<path>`", "`delete`"),
            &[("pki/roles/gone", "delete")],
            call!(logical_client::LogicalClient, delete, |_fx| pb::LogicalRequest {
                path: "pki/roles/gone".into(),
                ..Default::default()
            }),
        ),
        // ----- Logical (password policies, served by the core)
        row(
            "Logical.Write",
            ("`sys/policies/password/<name>`", "`create` (new) or `update`"),
            &[("sys/policies/password/pw-new", "create")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "sys/policies/password/pw-new".into(),
                data: kv(&[("policy", PASSWORD_POLICY)])
            }),
        ),
        row(
            "Logical.Write",
            ("`sys/policies/password/<name>`", "`create` (new) or `update`"),
            &[("sys/policies/password/pw1", "update")],
            call!(logical_client::LogicalClient, write, |_fx| pb::LogicalRequest {
                path: "sys/policies/password/pw1".into(),
                data: kv(&[("policy", PASSWORD_POLICY)])
            }),
        ),
        row(
            "Logical.Read",
            ("`sys/policies/password/<name>`", "`read`"),
            &[("sys/policies/password/pw1", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "sys/policies/password/pw1".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Read",
            ("`sys/policies/password/<name>/generate`", "`read`"),
            &[("sys/policies/password/pw1/generate", "read")],
            call!(logical_client::LogicalClient, read, |_fx| pb::LogicalRequest {
                path: "sys/policies/password/pw1/generate".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.List",
            ("`sys/policies/password`", "`list`"),
            &[("sys/policies/password", "list")],
            call!(logical_client::LogicalClient, list, |_fx| pb::LogicalRequest {
                path: "sys/policies/password".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.Delete",
            ("`sys/policies/password/<name>`", "`delete`"),
            &[("sys/policies/password/pw-gone", "delete")],
            call!(logical_client::LogicalClient, delete, |_fx| pb::LogicalRequest {
                path: "sys/policies/password/pw-gone".into(),
                ..Default::default()
            }),
        ),
        row(
            "Logical.PathHelp",
            ("`<mount>/<path>`", "`read`"),
            &[("sys/policies/password/pw1/generate", "read")],
            call!(logical_client::LogicalClient, path_help, |_fx| pb::PathHelpRequest {
                path: "sys/policies/password/pw1/generate".into()
            }),
        ),
        // ----- Leases
        row(
            "Leases.Lookup",
            ("`sys/leases/lookup`", "`update`"),
            &[("sys/leases/lookup", "update")],
            call!(leases_client::LeasesClient, lookup, |fx| pb::LeaseRef { lease_id: fx.lease.clone() }),
        ),
        row(
            "Leases.List",
            ("`sys/leases/lookup/<prefix>`", "`sudo`"),
            &[("sys/leases/lookup/apikeys/", "sudo")],
            call!(leases_client::LeasesClient, list, |_fx| pb::ListLeasesRequest {
                prefix: "apikeys/".into(),
                ..Default::default()
            }),
        ),
        row(
            "Leases.Renew",
            ("`sys/leases/renew`", "`update`"),
            &[("sys/leases/renew", "update")],
            call!(leases_client::LeasesClient, renew, |fx| pb::RenewLeaseRequest {
                lease_id: fx.lease.clone(),
                increment_secs: 60
            }),
        ),
        row(
            "Leases.Revoke",
            ("`sys/leases/revoke`", "`update`"),
            &[("sys/leases/revoke", "update")],
            call!(leases_client::LeasesClient, revoke, |fx| pb::LeaseRef { lease_id: fx.lease2.clone() }),
        ),
        row(
            "Leases.RevokePrefix",
            ("`sys/leases/revoke-prefix/<prefix>`", "`sudo`"),
            &[("sys/leases/revoke-prefix/apikeys/issue/other", "sudo")],
            call!(leases_client::LeasesClient, revoke_prefix, |_fx| pb::RevokePrefixRequest {
                prefix: "apikeys/issue/other".into()
            }),
        ),
        // ----- Plugins
        row(
            "Plugins.Register",
            ("`sys/plugins/catalog/<name>`", "`sudo`"),
            &[("sys/plugins/catalog/pw", "sudo")],
            call!(plugins_client::PluginsClient, register, |fx| one(pb::RegisterPluginChunk {
                name: "pw".into(),
                sha256: fx.passwords_sha.clone(),
                data: fx.passwords.clone()
            })),
        ),
        row(
            "Plugins.List",
            ("`sys/plugins/catalog`", "`read`"),
            &[("sys/plugins/catalog", "read")],
            call!(plugins_client::PluginsClient, list, |_fx| pb::ListPluginsRequest { name: String::new() }),
        ),
        row(
            "Plugins.Delete",
            ("`sys/plugins/catalog/<name>`", "`sudo`"),
            &[("sys/plugins/catalog/unused", "sudo")],
            call!(plugins_client::PluginsClient, delete, |_fx| pb::DeletePluginRequest {
                name: "unused".into(),
                sha256: String::new()
            }),
        ),
        // ----- Sync
        row(
            "Sync.CreateRule",
            ("`sys/sync/rules/<name>`", "`update`; and the writer's own rights on the source and targets (see Sync)"),
            &[
                ("sys/sync/rules/r2", "update"),
                ("secret/data/other/*", "read"),
                ("secret/metadata/other/*", "list"),
                ("team/data/other/*", "create"),
                ("team/data/other/*", "update"),
            ],
            call!(sync_client::SyncClient, create_rule, |_fx| pb::SyncRule {
                name: "r2".into(),
                source: "secret/other/".into(),
                targets: vec!["team/other/".into()],
                scan_interval_secs: 3600,
                ..Default::default()
            }),
        ),
        row(
            "Sync.CreateRule",
            ("`sys/sync/rules/<name>`", "`update`; and the writer's own rights on the source and targets (see Sync)"),
            &[
                ("sys/sync/rules/r4", "update"),
                ("sys/sync/rules/r4", "sudo"),
                ("secret/data/fourth/*", "read"),
                ("secret/metadata/fourth/*", "list"),
                ("team/data/fourth/*", "create"),
                ("team/data/fourth/*", "update"),
                ("team/metadata/fourth/*", "delete"),
            ],
            call!(sync_client::SyncClient, create_rule, |_fx| pb::SyncRule {
                name: "r4".into(),
                source: "secret/fourth/".into(),
                targets: vec!["team/fourth/".into()],
                delete: "propagate".into(),
                scan_interval_secs: 3600,
                ..Default::default()
            }),
        ),
        row(
            "Sync.GetRule",
            ("`sys/sync/rules/<name>`", "`read`"),
            &[("sys/sync/rules/r1", "read")],
            call!(sync_client::SyncClient, get_rule, |_fx| pb::GetSyncRuleRequest { name: "r1".into() }),
        ),
        row(
            "Sync.ListRules",
            ("`sys/sync/rules`", "`list`"),
            &[("sys/sync/rules", "list")],
            call!(sync_client::SyncClient, list_rules, |_fx| pb::ListSyncRulesRequest {}),
        ),
        row(
            "Sync.DeleteRule",
            ("`sys/sync/rules/<name>`", "`delete`"),
            &[("sys/sync/rules/r3", "delete")],
            call!(sync_client::SyncClient, delete_rule, |_fx| pb::DeleteSyncRuleRequest { name: "r3".into() }),
        ),
        row(
            "Sync.Status",
            ("`sys/sync/status`", "`read`"),
            &[("sys/sync/status", "read")],
            call!(sync_client::SyncClient, status, |_fx| pb::SyncStatusRequest {
                rule: String::new(),
                ..Default::default()
            }),
        ),
        row(
            "Sync.Run",
            ("`sys/sync/run`", "`update`"),
            &[("sys/sync/run", "update")],
            call!(sync_client::SyncClient, run, |_fx| pb::RunSyncRequest { rule: "r1".into(), ..Default::default() }),
        ),
        row(
            "Sync.Rotate",
            ("`sys/sync/rotate/<path>`", "`update`, and `update` on the secret's `<mount>/data/<path>`"),
            &[("sys/sync/rotate/secret/app/rot", "update"), ("secret/data/app/rot", "update")],
            call!(sync_client::SyncClient, rotate, |_fx| pb::RotateSecretRequest {
                path: "secret/app/rot".into(),
                length: 24,
                grace_secs: 3600,
                ..Default::default()
            }),
        ),
        row(
            "Sync.Rotate",
            ("`sys/sync/rotate/<path>`", "`update`, and `update` on the secret's `<mount>/data/<path>`"),
            &[("sys/sync/rotate/secret/app/sched", "update"), ("secret/data/app/sched", "update")],
            call!(sync_client::SyncClient, rotate, |_fx| pb::RotateSecretRequest {
                path: "secret/app/sched".into(),
                every_secs: 86400,
                ..Default::default()
            }),
        ),
        row(
            "Sync.GetRotation",
            ("`sys/sync/rotate/<path>`", "`read`"),
            &[("sys/sync/rotate/secret/app/rot", "read")],
            call!(sync_client::SyncClient, get_rotation, |_fx| pb::GetRotationRequest {
                path: "secret/app/rot".into()
            }),
        ),
        // ----- Health and reflection: no token.
        row(
            "grpc.health.v1.Health.Check",
            ("none", ""),
            &[],
            Box::new(|ch, _tok, _fx| -> Reply {
                Box::pin(async move {
                    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
                    c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map(|_| ())
                })
            }),
        ),
        row(
            "grpc.health.v1.Health.Watch",
            ("none", ""),
            &[],
            Box::new(|ch, _tok, _fx| -> Reply {
                Box::pin(async move {
                    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
                    c.watch(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map(|_| ())
                })
            }),
        ),
        row(
            "grpc.reflection.v1.ServerReflection.ServerReflectionInfo",
            ("none", ""),
            &[],
            Box::new(|ch, _tok, _fx| -> Reply {
                Box::pin(async move { reflect(ch, vec![list_services()]).await.map(|_| ()) })
            }),
        ),
        row(
            "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo",
            ("none", ""),
            &[],
            Box::new(|ch, _tok, _fx| -> Reply {
                Box::pin(async move {
                    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
                    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
                    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(MessageRequest::ListServices(String::new())),
                    };
                    let mut stream = ServerReflectionClient::new(ch)
                        .server_reflection_info(tokio_stream::iter([req]))
                        .await?
                        .into_inner();
                    stream.next().await.ok_or_else(|| Status::internal("the reflection stream ended"))?.map(|_| ())
                })
            }),
        ),
        // Sys.Seal last: the token allowed to seal does seal the server.
        row(
            "Sys.Seal",
            ("`sys/seal`", "`sudo`"),
            &[("sys/seal", "sudo")],
            call!(sys_client::SysClient, seal, |_fx| pb::SealRequest {}),
        ),
    ]
}

/// An AWS mount on moto: a custom endpoint, so enabling it takes sudo.
fn fx_aws(fx: &Fx) -> std::collections::HashMap<String, String> {
    kv(&[
        ("region", "us-east-1"),
        ("endpoint_url", &fx.moto_url),
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
    ])
}

fn k8s_config(fx: &Fx) -> std::collections::HashMap<String, String> {
    kv(&[("pem_keys", &fx.k8s_pem), ("issuer", ISS), ("audience", "keybridge")])
}

fn k8s_role(policies: &str) -> std::collections::HashMap<String, String> {
    kv(&[
        ("bound_service_account_names", "app-sa"),
        ("bound_service_account_namespaces", "production"),
        ("policies", policies),
    ])
}

fn list_services() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }
}

async fn reflect(
    ch: Channel,
    reqs: Vec<tonic_reflection::pb::v1::ServerReflectionRequest>,
) -> Result<Vec<tonic_reflection::pb::v1::server_reflection_response::MessageResponse>, Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let n = reqs.len();
    let mut stream =
        ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter(reqs)).await?.into_inner();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = stream.next().await.ok_or_else(|| Status::internal("the reflection stream ended"))??;
        out.extend(r.message_response);
    }
    Ok(out)
}

/// Every method the server serves, as `package.Service.Method`, from its
/// reflection service and the descriptors it returns.
async fn served_methods(ch: Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let listed = reflect(ch.clone(), vec![list_services()]).await.unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.into_iter().next() else {
        panic!("no service list")
    };
    let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    let reqs = services
        .iter()
        .map(|s| tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(s.clone())),
        })
        .collect();
    let mut methods = BTreeSet::new();
    for (service, resp) in services.iter().zip(reflect(ch, reqs).await.unwrap()) {
        let MessageResponse::FileDescriptorResponse(fds) = resp else { panic!("no descriptor for {service}") };
        for bytes in fds.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            for s in &file.service {
                let full = format!("{}.{}", file.package(), s.name());
                if &full == service {
                    methods.extend(s.method.iter().map(|m| format!("{full}.{}", m.name())));
                }
            }
        }
    }
    methods
}

/// docs/API.md's spelling: `Secrets.Put` for keybridge.v1, the full name
/// for others.
fn readme_name(method: &str) -> String {
    method.strip_prefix("keybridge.v1.").map(str::to_string).unwrap_or_else(|| method.to_string())
}

/// The store as a key -> stored bytes map, without the audit checkpoints
/// that every audited request (a denied one too, and the snapshot call
/// itself) advances by design.
async fn store(s: &Server) -> BTreeMap<String, Vec<u8>> {
    let mut stream = s.sys().await.snapshot_save(authed(T, pb::SnapshotSaveRequest {})).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk.unwrap().data);
    }
    keybridge_barrier::snapshot::Reader::new(bytes.as_slice())
        .map(|e| e.unwrap())
        .filter(|(k, _)| !k.starts_with("core/audit/checkpoint/"))
        .collect()
}

/// The store once background work (a rotation an earlier row started, the
/// reconciler) has come to rest: two reads 100 ms apart agree.
async fn settled(s: &Server) -> BTreeMap<String, Vec<u8>> {
    let mut last = store(s).await;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = store(s).await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the store never came to rest");
}

fn upstream_calls(s: &Server) -> u64 {
    let mounts = json(&s.cli(Some(T), &["mount", "list", "-o", "json"]));
    let aws = mounts.as_array().unwrap().iter().find(|m| m["path"] == "aws/").unwrap().clone();
    // No stats: the mount's client is not loaded (since a restore), so no calls.
    aws["stats"]["upstream_calls"].as_u64().unwrap_or(0)
}

const ALL: [&str; 6] = ["create", "read", "update", "delete", "list", "sudo"];

/// A token whose only policy grants `grants` (no default policy).
async fn token(s: &Server, name: &str, grants: &BTreeMap<&str, BTreeSet<&str>>) -> String {
    let mut text = String::new();
    for (path, caps) in grants {
        let caps: Vec<String> = caps.iter().map(|c| format!("{c:?}")).collect();
        text.push_str(&format!("path \"{path}\" {{\n  capabilities = [{}]\n}}\n", caps.join(", ")));
    }
    let ch = s.channel().await;
    let put = pb::PutPolicyRequest { name: name.into(), policy: text };
    pb::policies_client::PoliciesClient::new(ch.clone()).put(authed(T, put)).await.unwrap();
    let req = pb::CreateTokenRequest { policies: vec![name.into()], no_default_policy: true, ..Default::default() };
    pb::tokens_client::TokensClient::new(ch).create(authed(T, req)).await.unwrap().into_inner().token
}

fn grants_of(needs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut g: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (p, c) in needs {
        g.entry(p).or_default().insert(c);
        if *c == "sudo" {
            // Operations that need sudo need update there too.
            g.entry(p).or_default().insert("update");
        }
    }
    g
}

async fn fixtures(s: &Server, moto_url: &str, dir: &std::path::Path) -> Fx {
    let t = Some(T);
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let audit_dir = dir.to_str().unwrap().to_string();
    ok(&["audit", "enable", "file", &format!("file_path={audit_dir}/audit.log")]);
    ok(&["audit", "enable", "--path", "spare", "file", &format!("file_path={audit_dir}/spare.log")]);
    ok(&["audit", "enable", "stream"]);
    for m in ["team/", "m2/", "m3/"] {
        ok(&["mount", "enable", "--type", "local", m]);
    }
    let mut aws = vec!["mount", "enable", "--type", "aws", "aws/"];
    let settings = [
        "region=us-east-1".to_string(),
        format!("endpoint_url={moto_url}"),
        "access_key_id=testing".into(),
        "secret_access_key=testing".into(),
        "prefix=kb-".into(),
    ];
    aws.extend(settings.iter().map(String::as_str));
    ok(&aws);
    for (p, v) in [
        ("secret/app/db", "password=p1"),
        ("secret/app/db", "password=p2"),
        ("secret/app/del1", "v=1"),
        ("secret/app/del2", "v=1"),
        ("secret/app/del3", "v=1"),
        ("secret/app/old", "v=1"),
        ("secret/app/rot", "password=initial-password"),
        ("secret/app/sched", "password=initial-password"),
        ("secret/other/x", "v=1"),
        ("secret/fourth/x", "v=1"),
        ("aws/app/db", "v=1"),
    ] {
        ok(&["kv", "put", p, v]);
    }
    ok(&["kv", "delete", "--versions", "1", "secret/app/db"]);
    let policy = dir.join("p1.hcl");
    std::fs::write(&policy, "path \"secret/data/app/*\" { capabilities = [\"read\"] }\n").unwrap();
    for p in ["p1", "x2"] {
        ok(&["policy", "write", p, policy.to_str().unwrap()]);
    }
    let victim = json(&ok(&["token", "create", "--policy", "default", "-o", "json"]));
    let doomed = json(&ok(&["token", "create", "--policy", "default", "-o", "json"]));
    let doomed2 = json(&ok(&["token", "create", "--policy", "default", "-o", "json"]));
    // Login: kubernetes at kubernetes/ with role app; jwt at gone/.
    let cluster = keybridge_testservers::issuer::Issuer::new(ISS, "k1");
    std::fs::write(dir.join("k8s.pem"), cluster.public_pem()).unwrap();
    ok(&["auth", "enable", "kubernetes"]);
    ok(&["auth", "enable", "--path", "gone", "jwt"]);
    ok(&[
        "auth",
        "config",
        "write",
        "kubernetes",
        &format!("pem_keys=@{}", dir.join("k8s.pem").display()),
        &format!("issuer={ISS}"),
        "audience=keybridge",
    ]);
    for r in ["app", "gone"] {
        ok(&[
            "auth",
            "role",
            "write",
            "kubernetes",
            r,
            "bound_service_account_names=app-sa",
            "bound_service_account_namespaces=production",
            "policies=default",
        ]);
    }
    // Plugins: apikeys mounted with a role and two leases; passwords
    // registered as `unused`.
    let (file, sha) = crate::plugins::plugin("apikeys");
    ok(&["plugin", "register", "apikeys", "--sha256", &sha, &file]);
    let (pw_file, pw_sha) = crate::plugins::plugin("passwords");
    ok(&["plugin", "register", "unused", "--sha256", &pw_sha, &pw_file]);
    ok(&["mount", "enable", "--type", "plugin", "--plugin", "apikeys", "apikeys/", "issuer=e2e"]);
    for r in ["ci", "gone", "other"] {
        ok(&["write", &format!("apikeys/roles/{r}"), "scopes=read"]);
    }
    let lease = json(&ok(&["write", "apikeys/issue/ci", "-o", "json"]))["lease_id"].as_str().unwrap().to_string();
    let lease2 = json(&ok(&["write", "apikeys/issue/ci", "-o", "json"]))["lease_id"].as_str().unwrap().to_string();
    ok(&["write", "apikeys/issue/other"]);
    // The database engine at database/: connection app (an admin with
    // CREATEROLE), roles r and gone.
    let pg = keybridge_testservers::postgres::Postgres::start();
    pg.psql("CREATE ROLE vault_admin WITH LOGIN CREATEROLE PASSWORD 'admin-pw-1'");
    pg.psql("CREATE ROLE static_user WITH LOGIN PASSWORD 'static-pw-1'");
    ok(&["mount", "enable", "--type", "database", "database/"]);
    let url = pg.url("localhost", "verify-full").replace(
        &format!("{}:{}@", keybridge_testservers::postgres::USER, keybridge_testservers::postgres::PASSWORD),
        "{{username}}:{{password}}@",
    );
    ok(&[
        "write",
        "database/config/app",
        "plugin_name=postgresql",
        &format!("connection_url={url}&sslrootcert={}", pg.ca_file().display()),
        "username=vault_admin",
        "password=admin-pw-1",
        "allowed_roles=*",
    ]);
    for r in ["r", "gone"] {
        ok(&[
            "write",
            &format!("database/roles/{r}"),
            "db_name=app",
            "creation_statements=CREATE ROLE \"{{name}}\" LOGIN;",
        ]);
    }
    // The PKI engine at pki/: a root, roles r and gone, one certificate.
    ok(&["mount", "enable", "--type", "pki", "pki/"]);
    ok(&["write", "pki/root/generate/internal", "common_name=Authz Root"]);
    for r in ["r", "gone"] {
        ok(&["write", &format!("pki/roles/{r}"), "allowed_domains=app.internal", "allow_subdomains=true"]);
    }
    let pki_cert = json(&ok(&["write", "pki/issue/r", "common_name=a.app.internal", "-o", "json"]));
    // Password policies pw1 and pw-gone.
    let pw = dir.join("pw.hcl");
    std::fs::write(&pw, PASSWORD_POLICY).unwrap();
    for name in ["pw1", "pw-gone"] {
        ok(&["write", &format!("sys/policies/password/{name}"), &format!("policy=@{}", pw.display())]);
    }
    // Sync: r1 (secret/app/ -> team/app/) and r3, settled.
    ok(&["sync", "rule", "create", "r1", "--source", "secret/app/", "--target", "team/app/", "--scan-interval", "1h"]);
    ok(&[
        "sync",
        "rule",
        "create",
        "r3",
        "--source",
        "secret/third/",
        "--target",
        "team/third/",
        "--scan-interval",
        "1h",
    ]);
    ok(&["sync", "run", "--wait", "--timeout", "30s"]);
    Fx {
        lease,
        lease2,
        victim: victim["token"].as_str().unwrap().to_string(),
        victim_accessor: victim["accessor"].as_str().unwrap().to_string(),
        doomed: doomed["token"].as_str().unwrap().to_string(),
        doomed_accessor: doomed2["accessor"].as_str().unwrap().to_string(),
        passwords: std::fs::read(&pw_file).unwrap(),
        passwords_sha: pw_sha,
        jwt: cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 3600),
        k8s_pem: cluster.public_pem(),
        moto_url: moto_url.to_string(),
        audit_dir,
        _pg: pg,
        pki_serial: pki_cert["data"]["serial_number"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_refused_without_its_capability_and_allowed_with_it() {
    let m = moto();
    let s = Server::dev();
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();

    // Every served method has a row, and every row a served method.
    let served = served_methods(s.channel().await).await;
    let named: BTreeSet<String> = rows.iter().map(|r| r.rpc.to_string()).collect();
    let missing: Vec<String> = served.iter().map(|m| readme_name(m)).filter(|m| !named.contains(m)).collect();
    assert!(missing.is_empty(), "RPCs without a row in the authorization table: {missing:?}");
    let unknown: Vec<&String> = named.iter().filter(|n| !served.iter().any(|m| &readme_name(m) == *n)).collect();
    assert!(unknown.is_empty(), "rows for RPCs the server does not serve: {unknown:?}");

    // docs/API.md's table is this table.
    let api = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let rendered = render(&rows);
    assert!(
        api.contains(&rendered),
        "docs/API.md's RPC table differs from the tested one; it should read:\n{rendered}"
    );

    let fx = Arc::new(fixtures(&s, &m.url(), dir.path()).await);
    for (i, r) in rows.iter().enumerate() {
        if r.needs.is_empty() {
            let got = (r.call)(s.channel().await, String::new(), fx.clone()).await;
            if let Err(e) = &got {
                assert!(
                    !matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied),
                    "{} needs no token but was refused: {e:?}",
                    r.rpc
                );
            }
            continue;
        }
        let full = grants_of(&r.needs);
        // For each needed capability: everything else, and it is refused.
        for (j, (path, cap)) in r.needs.iter().enumerate() {
            let mut without = full.clone();
            let others: BTreeSet<&str> = ALL.iter().copied().filter(|c| c != cap).collect();
            without.insert(path, others);
            let held = without.get_mut(path).unwrap();
            if *cap == "update" {
                // Without update, sudo cannot stand in for it.
                held.remove("sudo");
            }
            if *cap == "create" {
                // A caller holding update is owed the existence check that
                // tells create from update (one describe on a cloud mount);
                // one holding neither is refused before it.
                held.remove("update");
                held.remove("sudo");
            }
            let tok = token(&s, &format!("without-{i}-{j}"), &without).await;
            let before = settled(&s).await;
            let calls = upstream_calls(&s);
            let got = (r.call)(s.channel().await, tok, fx.clone()).await;
            let e = got.err().unwrap_or_else(|| panic!("{} ({path} {cap} withheld) was allowed", r.rpc));
            assert_eq!(e.code(), Code::PermissionDenied, "{} ({path} {cap} withheld): {e:?}", r.rpc);
            let after = store(&s).await;
            let changed: Vec<&String> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert!(changed.is_empty(), "{} ({path} {cap} withheld) changed the store: {changed:?}", r.rpc);
            assert_eq!(upstream_calls(&s), calls, "{} ({path} {cap} withheld) called the cloud", r.rpc);
        }
        // Exactly what the row names: let through.
        let tok = token(&s, &format!("with-{i}"), &full).await;
        match (r.call)(s.channel().await, tok, fx.clone()).await {
            Ok(()) => {}
            // These fail after authorization by design: a rekey without the
            // current keys, a restore of bytes that are not a snapshot.
            Err(e) if ["Sys.Rekey", "Sys.SnapshotRestore"].contains(&r.rpc) => assert!(
                matches!(e.code(), Code::InvalidArgument | Code::FailedPrecondition),
                "{} with {:?}: {e:?}",
                r.rpc,
                r.needs
            ),
            Err(e) => panic!("{} with {:?} failed: {e:?}", r.rpc, r.needs),
        }
    }
}

/// The docs/API.md table: one line per row, in the rows' order, deduplicated.
fn render(rows: &[Row]) -> String {
    let mut out = String::from("| RPC | path | capability |\n|---|---|---|\n");
    let mut seen = BTreeSet::new();
    for r in rows {
        let line = format!("| `{}` | {} | {} |\n", r.rpc, r.doc.0, r.doc.1);
        if seen.insert(line.clone()) {
            out.push_str(&line);
        }
    }
    out
}
