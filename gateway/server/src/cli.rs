//! The `keybridge` command line: the server command and the client.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keybridge_client::Transport;
use keybridge_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

use crate::error::Error;

#[derive(Parser)]
#[command(name = "keybridge", version, about = "Keybridge: a multi-cloud secrets gateway (server and client)")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// Server address, e.g. https://kb.internal:8400.
    #[arg(
        long,
        global = true,
        env = "KEYBRIDGE_ADDR",
        default_value = "http://127.0.0.1:8400",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub address: String,
    /// Token to authenticate with.
    #[arg(long, global = true, env = "KEYBRIDGE_TOKEN", hide_env_values = true, help_heading = "Global options")]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (https only).
    #[arg(
        long = "ca-cert",
        global = true,
        env = "KEYBRIDGE_CACERT",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub ca_cert: Option<PathBuf>,
    /// Output format (`-format=json` is accepted too).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Global options"
    )]
    pub output: Output,
}

impl Global {
    /// The client flags' values when `keybridge server` was parsed alone
    /// (the server reads none of them).
    pub fn default_for_server() -> Global {
        Global { address: String::new(), token: None, ca_cert: None, output: Output::Table }
    }
}

/// `keybridge server`, parsed on its own so its help and usage show the
/// server's flags only (the client flags above belong to the other commands).
#[derive(Parser)]
#[command(name = "keybridge server", bin_name = "keybridge server", version, about = "Run the Keybridge server")]
pub struct ServerCli {
    #[command(flatten)]
    pub args: ServerArgs,
}

/// Vault habits, rewritten before parsing (exact spellings only, so no
/// existing flag changes meaning): `-format=json` -> `--output=json`,
/// `-field=NAME` -> `--field=NAME`, and `keybridge status` ->
/// `keybridge operator status`.
pub fn vault_habits(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    for a in args.iter_mut().skip(1) {
        // After `--` every argument is a value, never a flag.
        if a == "--" {
            break;
        }
        let Some(text) = a.to_str() else { continue };
        if let Some(v) = text.strip_prefix("-format=") {
            *a = format!("--output={v}").into();
        } else if let Some(v) = text.strip_prefix("-field=") {
            *a = format!("--field={v}").into();
        }
    }
    if args.get(1).is_some_and(|a| a == "status") {
        args.splice(1..2, ["operator".into(), "status".into()]);
    }
    args
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (`keybridge server --help` for its flags).
    Server(ServerArgs),
    /// Print a shell completion script: `source <(keybridge completion bash)`.
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command) into a directory.
    #[command(hide = true)]
    Man {
        /// The directory to write them in (docs/man in the repository).
        dir: PathBuf,
    },
    /// Read and write versioned secrets.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Manage mounts.
    #[command(subcommand)]
    Mount(MountCommand),
    /// Initialise, unseal, seal, rotate, rekey, snapshot.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Manage ACL policies (Vault's HCL syntax).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create and inspect tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Audit devices, HMACs of known values, log verification.
    #[command(subcommand)]
    Audit(crate::cli_audit::AuditCommand),
    /// Login methods (kubernetes, jwt): enable, config, roles.
    #[command(subcommand)]
    Auth(crate::cli_auth::AuthCommand),
    /// Replication rules between mounts, their status, runs.
    #[command(subcommand)]
    Sync(crate::cli_sync::SyncCommand),
    /// Rotate a secret and every replica of it: a new random password,
    /// staged everywhere, then promoted everywhere, the old one retired
    /// after the grace period.
    Rotate {
        /// The secret's full path, mount included: `secret/app/db`.
        path: String,
        /// The field to replace (a text secret is replaced whole).
        #[arg(long, default_value = "password")]
        field: String,
        /// Length of the new random password, 12 to 256 characters.
        #[arg(long, default_value_t = 32)]
        length: u32,
        /// How long the old value stays valid after every copy is promoted, e.g. `10m`.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Follow the rotation: `--wait` until every copy is promoted,
        /// `--wait=retired` also through the grace period until the old
        /// version is retired (or until it is rolled back).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "promoted", value_enum)]
        wait: Option<crate::cli_sync::WaitFor>,
        /// Bounds the whole command; a wait cut short exits 7 (still pending).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Rotate on a schedule instead (`--every 30d`; `--every 0s` stops).
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
        /// Let an engine issue the new credential: an engine path such as
        /// `saas/creds/app` (its plugin must target `rotating-engine`).
        #[arg(long, default_value = "")]
        engine: String,
    },
    /// Read an engine path: `read apikeys/issue/ci ttl=1h`.
    Read {
        /// The engine path, mount included: `apikeys/issue/ci`.
        path: String,
        /// key=value parameters (`@file` reads a file, `-` stdin).
        params: Vec<String>,
    },
    /// Write to an engine path: `write apikeys/roles/ci scopes=read,write`.
    Write {
        /// The engine path, mount included: `apikeys/roles/ci`.
        path: String,
        /// Parameters as key=value (`@file` reads a file, `-` stdin): `scopes=read,write`.
        params: Vec<String>,
    },
    /// Delete at an engine path.
    Delete {
        /// The engine path, mount included: `apikeys/roles/ci`.
        path: String,
    },
    /// List below an engine path.
    List {
        /// The engine path to list below, mount included: `apikeys/roles/`.
        path: String,
    },
    /// What the engine says about a path (or about itself, for its mount).
    PathHelp {
        /// An engine path (`apikeys/issue/ci`), or a mount (`apikeys/`) for the engine's own help.
        path: String,
    },
    /// Leases of engine-issued credentials: list, lookup, renew, revoke.
    #[command(subcommand)]
    Lease(crate::cli_logical::LeaseCommand),
    /// The plugin catalog: register, list, delete WebAssembly components.
    #[command(subcommand)]
    Plugin(crate::cli_logical::PluginCommand),
    /// Exchange a service-account token or OIDC JWT for a Keybridge token:
    /// `login kubernetes --role app-service --jwt @/var/run/secrets/kubernetes.io/serviceaccount/token`.
    Login {
        /// The method's path, e.g. kubernetes.
        path: String,
        /// The role to log in as, e.g. `app-service`.
        #[arg(long)]
        role: String,
        /// The credential: the JWT, @file, or - for stdin.
        #[arg(long)]
        jwt: String,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy from an HCL file (`-`: stdin).
    Write {
        /// The policy's name, e.g. `team-read`.
        name: String,
        /// The HCL policy file, or `-` to read it from stdin.
        file: PathBuf,
    },
    /// Print a policy's HCL text.
    Read {
        /// The policy's name, e.g. `team-read`.
        name: String,
    },
    /// List the names of every policy.
    List,
    /// Delete a policy (`default` can be edited, not deleted).
    Delete {
        /// The policy's name, e.g. `team-read`.
        name: String,
    },
    /// Check policy files offline: syntax (with line and column) and
    /// built-in warnings, such as create without update on a path that has
    /// no existence check. With --rego, a Rego module (v0 or v1 syntax)
    /// judges every rule, and every role in `.json` role files
    /// (`{"method": "kubernetes", "name": "...", "settings": {...}}`); each
    /// `deny` message is printed with its file and rule. Exits 2 if a file
    /// does not parse, 1 if the module denies anything.
    Lint {
        /// Policy files (`.hcl`) and role files (`.json`) to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A Rego module whose `deny` set lists what is wrong.
        #[arg(long)]
        rego: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; `-o json` prints it under `token`.
    Create {
        /// A policy for the token (repeat the flag for several).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Lifetime, e.g. 1h or 30m (default 768h).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
        /// Renewals never reach past creation + this (default 768h).
        #[arg(long)]
        max_ttl: Option<humantime::Duration>,
        /// Whether the token may be renewed.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        renewable: bool,
        /// Requests the token may make before it is revoked (0: unlimited).
        #[arg(long, default_value_t = 0)]
        use_limit: u32,
        /// A name for the token, shown by `token lookup` (default: `token`).
        #[arg(long, default_value = "")]
        display_name: String,
        /// Leave out the `default` policy (which lets a token look up, renew and revoke itself).
        #[arg(long)]
        no_default_policy: bool,
    },
    /// The capabilities the token in use has on a path.
    Capabilities {
        /// The path as policies name it, e.g. `secret/data/team/app`.
        path: String,
    },
    /// Renew a token (`--self`: the token in use) by its TTL or --increment.
    Renew {
        // Named `target`, not `token`: see `Revoke`.
        /// The token to renew (read from stdin if omitted).
        #[arg(value_name = "TOKEN")]
        target: Option<String>,
        /// Renew the token in use.
        #[arg(long = "self", conflicts_with = "target")]
        renew_self: bool,
        /// New lifetime from now, e.g. 1h (default: the token's TTL); never past its max TTL.
        #[arg(long)]
        increment: Option<humantime::Duration>,
    },
    /// Describe the token in use, or another by its token or --accessor.
    Lookup {
        // Named `target`, not `token`: see `Revoke`.
        /// The token to describe (default: the token in use).
        #[arg(value_name = "TOKEN")]
        target: Option<String>,
        /// Describe the token with this accessor instead.
        #[arg(long, conflicts_with = "target")]
        accessor: Option<String>,
    },
    /// Revoke a token (read from stdin if omitted) and every token it
    /// created; `--self` revokes the token in use.
    Revoke {
        // Named `target`, not `token`: that id belongs to the global
        // --token flag (and KEYBRIDGE_TOKEN), which clap would fill it from.
        /// The token to revoke (read from stdin if omitted).
        #[arg(value_name = "TOKEN")]
        target: Option<String>,
        /// Revoke the token in use (and every token it created).
        #[arg(long = "self", conflicts_with_all = ["target", "accessor"])]
        revoke_self: bool,
        /// Revoke the token with this accessor.
        #[arg(long, conflicts_with = "target")]
        accessor: Option<String>,
    },
}

#[derive(Args)]
pub struct ServerArgs {
    /// HCL config file (listener, storage, limits).
    #[arg(long, conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Dev mode: in-memory store, unsealed, plaintext, root token printed.
    #[arg(long)]
    pub dev: bool,
    /// Address the dev server listens on, as host:port.
    #[arg(long, default_value = "127.0.0.1:8400", requires = "dev")]
    pub dev_listen_address: String,
    /// Use this root token instead of a random one.
    #[arg(long, requires = "dev")]
    pub dev_root_token_id: Option<String>,
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Write a new version: `kv put secret/app username=alice password=@file`.
    Put {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// key=value, key=@file (the file's contents), key=- (stdin), or a
        /// single `-` for a JSON object on stdin.
        pairs: Vec<String>,
        /// Check-and-set: the version expected to be current (0: new secret).
        #[arg(long)]
        cas: Option<u64>,
        /// Store this file's bytes as an opaque binary value (`-`: stdin).
        #[arg(long, conflicts_with = "pairs")]
        binary_file: Option<PathBuf>,
    },
    /// Read the latest version, or `--version N`; on cloud mounts also
    /// `--version-id ID` or `--stage AWSPREVIOUS` (a GCP alias).
    Get {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// The version number to read (default: the latest).
        #[arg(long, conflicts_with_all = ["version_id", "stage"])]
        version: Option<u64>,
        /// Cloud mounts: the cloud's version id to read, e.g. `kbv1-0f5e...`.
        #[arg(long, conflicts_with = "stage")]
        version_id: Option<String>,
        /// Cloud mounts: an AWS staging label or a GCP alias to read, e.g. `AWSPREVIOUS`.
        #[arg(long)]
        stage: Option<String>,
        /// Print only this field's value.
        #[arg(long, conflicts_with = "binary_file")]
        field: Option<String>,
        /// Write a binary secret's bytes to this file (created 0600; `-`: stdout).
        #[arg(long)]
        binary_file: Option<PathBuf>,
    },
    /// List keys under a folder (every page).
    List {
        /// The folder to list, mount included: `secret/team/` (or a whole mount: `secret/`).
        path: String,
        /// Every key below the folder, not only the direct children.
        #[arg(long)]
        recursive: bool,
    },
    /// Soft-delete the latest version, or `--versions 1,2`.
    Delete {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// Versions to soft-delete, comma-separated (default: the latest).
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Restore soft-deleted versions, or (cloud mounts) `--secret`: a whole
    /// secret deleted while its cloud keeps it recoverable.
    Undelete {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// Soft-deleted versions to restore, comma-separated: `1,2`.
        #[arg(long, value_delimiter = ',', required_unless_present = "secret", conflicts_with = "secret")]
        versions: Vec<u64>,
        /// Cloud mounts: restore the whole secret, deleted while the cloud keeps it recoverable (AWS, Azure).
        #[arg(long)]
        secret: bool,
    },
    /// Permanently remove the data of versions.
    Destroy {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// Versions whose data to remove for good, comma-separated: `1,2`.
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Read or write a secret's metadata, or delete the secret entirely.
    #[command(subcommand)]
    Metadata(MetadataCommand),
}

#[derive(Subcommand)]
pub enum MetadataCommand {
    /// Show metadata and versions (never the value).
    Get {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
    },
    /// Set custom metadata (`--custom-metadata k=v`, repeatable; replaces
    /// the map), max versions, or cas_required.
    Put {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// A custom metadata entry as key=value (repeat the flag); together they replace the whole
        /// map. Without it the custom metadata stays as it is.
        #[arg(long = "custom-metadata", conflicts_with = "clear_custom_metadata")]
        custom_metadata: Vec<String>,
        /// Remove every custom metadata entry.
        #[arg(long)]
        clear_custom_metadata: bool,
        /// Versions to keep, the oldest pruned first (0: the mount's setting; local mounts only).
        #[arg(long)]
        max_versions: Option<u32>,
        /// Whether every write to the secret must give --cas: `true` or `false` (local mounts only).
        #[arg(long)]
        cas_required: Option<bool>,
    },
    /// Delete every version and the metadata. On cloud mounts the cloud keeps
    /// the secret recoverable unless `--purge`.
    Delete {
        /// The secret's full path, mount included: `secret/team/app`.
        path: String,
        /// Cloud mounts: delete for good at once, not recoverably (GCP deletes only this way).
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Subcommand)]
pub enum MountCommand {
    /// List the mounts: path, type, id and description.
    List,
    /// `mount enable --type local team/ max_versions=5`, or a cloud:
    /// `mount enable --type aws aws/ region=us-east-1`
    Enable {
        /// The path to mount at, e.g. `team-b/`.
        path: String,
        /// key=value mount settings.
        config: Vec<String>,
        /// The mount type: local, aws, gcp, azure or plugin.
        #[arg(long = "type")]
        kind: String,
        /// A free-text description of the mount.
        #[arg(long, default_value = "")]
        description: String,
        /// For --type plugin: the registered plugin to run (same as plugin=NAME).
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Disable a mount and delete its data in Keybridge (a cloud mount's secrets stay in the cloud).
    Disable {
        /// The mount's path, e.g. `team-b/`.
        path: String,
    },
    /// Change settings: key=value (empty value removes the key).
    Tune {
        /// The mount's path, e.g. `team-b/`.
        path: String,
        /// Settings to change as key=value, e.g. `max_versions=10` (`key=` removes the key).
        config: Vec<String>,
        /// A new description for the mount (default: unchanged).
        #[arg(long)]
        description: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Initialise a new server: prints the unseal keys (with an auto seal, the recovery keys)
    /// and the root token.
    Init {
        /// How many unseal key shares to split the root key into (with an auto seal: recovery
        /// key shares).
        #[arg(long, default_value_t = 5, alias = "recovery-shares")]
        key_shares: u32,
        /// How many of the shares it takes to unseal (at most --key-shares).
        #[arg(long, default_value_t = 3, alias = "recovery-threshold")]
        key_threshold: u32,
    },
    /// Enter one unseal key (from the argument, or stdin if omitted). With an auto seal and no
    /// key: ask the server to unseal with it now.
    Unseal {
        /// One unseal key (base64), as `operator init` printed it.
        key: Option<String>,
        /// Discard the keys entered so far and start over.
        #[arg(long)]
        reset: bool,
        /// The key goes towards the pending seal migration (`operator status` shows it): an
        /// unseal key when the store moves from Shamir keys, a recovery key when it moves from
        /// an auto seal.
        #[arg(long)]
        migrate: bool,
    },
    /// Seal the server: until it is unsealed again it serves only status and unseal.
    Seal,
    /// Seal status; exits 0 when unsealed, 5 when sealed.
    Status,
    /// Add a new encryption key term.
    Rotate,
    /// Show the active key term.
    KeyStatus,
    /// The nodes using this server's store: on a shared PostgreSQL table, every node seen in
    /// the last hour (leader or standby, and whether it is alive); otherwise this node.
    Members,
    /// Replace the root key with new shares; current keys from arguments or
    /// stdin (one per line).
    Rekey {
        /// Current unseal keys (with an auto seal, recovery keys), at least the threshold of them
        /// (read from stdin, one per line, if none).
        keys: Vec<String>,
        /// How many new unseal key shares to split the new root key into.
        #[arg(long, default_value_t = 5)]
        key_shares: u32,
        /// How many of the new shares it takes to unseal (at most --key-shares).
        #[arg(long, default_value_t = 3)]
        key_threshold: u32,
    },
    /// Save or restore a snapshot of the encrypted store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Copy the whole store, as ciphertext, from the storage of one server
    /// configuration to another's (redb to PostgreSQL or back), then verify
    /// the copy by its count and checksum. Runs without a server: stop the
    /// servers on both stores first.
    Migrate {
        /// The configuration file whose storage block is copied from.
        #[arg(long)]
        from: PathBuf,
        /// The configuration file whose storage block is copied to.
        #[arg(long)]
        to: PathBuf,
        /// Replace what the destination holds (by default it must be empty).
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent snapshot of the encrypted store.
    Save {
        /// The file to write the snapshot to (owner-only), e.g. `backup.snap`.
        file: PathBuf,
    },
    /// Replace the whole store with a snapshot.
    Restore {
        /// A snapshot file written by `operator snapshot save`.
        file: PathBuf,
        /// Accept a snapshot from another root key (the server seals).
        #[arg(long)]
        force: bool,
    },
}

// ----- connection -----------------------------------------------------------

/// The CLI's connection: the client crate's [`keybridge_client::Client`]
/// (token on every call, reads retried while the gateway is unavailable,
/// writes tried once) and the output format.
pub struct Client {
    inner: keybridge_client::Client,
    output: Output,
}

impl Client {
    pub async fn connect(g: &Global) -> Result<Client, Error> {
        let mut config = keybridge_client::Config::new(g.address.clone());
        if let Some(t) = &g.token {
            config = config.with_token(t.clone());
        }
        if let Some(ca) = &g.ca_cert {
            config = config.with_ca_cert(ca.clone());
        }
        let inner = keybridge_client::Client::connect(config).await.map_err(|e| match e {
            keybridge_client::Error::Connect { addr, reason } => Error::Connect { addr, reason },
            keybridge_client::Error::Read { path, source } => Error::Read { path, source },
            keybridge_client::Error::Config(m) => Error::Usage(m),
            keybridge_client::Error::Status(s) => Error::Status(s),
        })?;
        Ok(Client { inner, output: g.output })
    }

    /// A request for `msg`; the client's transport adds the token.
    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        tonic::Request::new(msg)
    }

    pub(crate) fn api(&self) -> &keybridge_client::Client {
        &self.inner
    }

    fn secrets(&self) -> pb::secrets_client::SecretsClient<Transport> {
        self.inner.secrets()
    }

    fn policies(&self) -> pb::policies_client::PoliciesClient<Transport> {
        self.inner.policies()
    }

    fn tokens(&self) -> pb::tokens_client::TokensClient<Transport> {
        self.inner.tokens()
    }

    pub(crate) fn auth(&self) -> pb::auth_client::AuthClient<Transport> {
        self.inner.auth()
    }

    pub(crate) fn sync(&self) -> pb::sync_client::SyncClient<Transport> {
        self.inner.sync()
    }

    pub(crate) fn audit(&self) -> pb::audit_client::AuditClient<Transport> {
        self.inner.audit()
    }

    pub(crate) fn json(&self) -> bool {
        self.output == Output::Json
    }

    fn sys(&self) -> pb::sys_client::SysClient<Transport> {
        self.inner.sys()
    }
}

// ----- output helpers ---------------------------------------------------------

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON value prints"));
}

pub(crate) fn print_table(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    println!("{:width$}    Value", "Key");
    println!("{:width$}    -----", "---");
    for (k, v) in rows {
        println!("{k:width$}    {v}");
    }
}

pub(crate) fn time(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        Some(t) => {
            let st = std::time::UNIX_EPOCH + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_nanos(st).to_string()
        }
        None => String::new(),
    }
}

fn version_json(v: &pb::VersionMetadata) -> Value {
    let mut out = json!({
        "version": v.version,
        "created_time": time(&v.created_time),
        "deletion_time": time(&v.deletion_time),
        "destroyed": v.destroyed,
    });
    if !v.provider_version_id.is_empty() {
        out["provider_version_id"] = json!(v.provider_version_id);
        out["stages"] = json!(v.stages);
    }
    if v.expires_time.is_some() {
        out["expires_time"] = json!(time(&v.expires_time));
    }
    out
}

fn map_text(m: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = m.iter().collect();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", inner.join(" "))
}

pub(crate) fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| Error::Usage(format!("{what} {p:?} is not key=value")))?;
        if k.is_empty() {
            return Err(Error::Usage(format!("{what} {p:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub(crate) fn read_stdin() -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut buf)?;
    Ok(buf)
}

fn read_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| Error::Read { path: path.display().to_string(), source: e })
}

fn utf8(bytes: Zeroizing<Vec<u8>>, what: &str) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Usage(format!("{what} is not UTF-8 text; use --binary-file for bytes")))
}

/// Builds the value for `kv put` from its arguments.
/// Writes a secret's bytes to `file` (`-`: stdout) as a new file readable
/// by its owner only: written under a fresh name in the same directory
/// (created exclusively, mode 0600) and renamed over `file`, so an existing
/// file's owner and mode, or a symlink planted there, never receive it.
fn write_secret_file(file: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    if file == std::path::Path::new("-") {
        let mut out = std::io::stdout().lock();
        return out.write_all(bytes).and_then(|()| out.flush()).map_err(Error::Io);
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".keybridge-").tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(file).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| Error::Usage(format!("cannot write {}: {e}", file.display())))
}

fn value_from_args(pairs: &[String], binary_file: &Option<PathBuf>) -> Result<pb::SecretValue, Error> {
    if let Some(f) = binary_file {
        let bytes = if f.as_os_str() == "-" { read_stdin()? } else { read_file(f)? };
        return Ok(pb::SecretValue { kind: Some(pb::secret_value::Kind::Binary(bytes.to_vec())) });
    }
    let mut fields = std::collections::HashMap::new();
    if pairs.len() == 1 && pairs[0] == "-" {
        let raw = read_stdin()?;
        let obj: BTreeMap<String, Value> = serde_json::from_slice(&raw)
            .map_err(|e| Error::Usage(format!("stdin is not a JSON object of fields: {e}")))?;
        for (k, v) in obj {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            fields.insert(k, s);
        }
    } else {
        if pairs.is_empty() {
            return Err(Error::Usage("give at least one key=value pair (or - to read JSON from stdin)".into()));
        }
        for p in pairs {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                Error::Usage(format!("argument {:?} is not key=value", p.split('=').next().unwrap_or_default()))
            })?;
            if k.is_empty() {
                return Err(Error::Usage("a field name is empty (argument starts with '=')".into()));
            }
            let v = if v == "-" {
                utf8(read_stdin()?, "stdin")?
            } else if let Some(file) = v.strip_prefix('@') {
                utf8(read_file(std::path::Path::new(file))?, file)?
            } else {
                v.to_string()
            };
            fields.insert(k.to_string(), v);
        }
    }
    Ok(pb::SecretValue { kind: Some(pb::secret_value::Kind::Fields(pb::Fields { fields })) })
}

// ----- commands ---------------------------------------------------------------

pub async fn kv(c: &Client, cmd: KvCommand) -> Result<(), Error> {
    let json = c.output == Output::Json;
    match cmd {
        KvCommand::Put { path, pairs, cas, binary_file } => {
            let value = value_from_args(&pairs, &binary_file)?;
            let r = c.secrets().put(c.req(pb::PutRequest { path, value: Some(value), cas })).await?.into_inner();
            let v = r.version.unwrap_or_default();
            if json {
                print_json(&version_json(&v));
            } else {
                print_table(&[
                    ("created_time".into(), time(&v.created_time)),
                    ("deletion_time".into(), "n/a".into()),
                    ("destroyed".into(), "false".into()),
                    ("version".into(), v.version.to_string()),
                ]);
            }
        }
        KvCommand::Get { path, version, version_id, stage, field, binary_file } => {
            let r = c
                .secrets()
                .get(c.req(pb::GetRequest {
                    path,
                    version: version.unwrap_or(0),
                    version_id: version_id.unwrap_or_default(),
                    stage: stage.unwrap_or_default(),
                }))
                .await?
                .into_inner();
            let v = r.version.unwrap_or_default();
            let value = r.value.and_then(|v| v.kind);
            if let Some(file) = binary_file {
                let Some(pb::secret_value::Kind::Binary(bytes)) = &value else {
                    return Err(Error::Usage(
                        "--binary-file needs a binary secret; this one has fields or text (read it with -o json)"
                            .into(),
                    ));
                };
                return write_secret_file(&file, bytes);
            }
            if let Some(name) = field {
                match &value {
                    Some(pb::secret_value::Kind::Fields(f)) => match f.fields.get(&name) {
                        Some(s) => println!("{s}"),
                        None => {
                            return Err(Error::Status(tonic::Status::not_found(format!(
                                "the secret has no field {name:?}"
                            ))));
                        }
                    },
                    _ => {
                        return Err(Error::Usage(
                            "--field needs a secret of fields; this one is text or binary".into(),
                        ));
                    }
                }
                return Ok(());
            }
            let mut meta = version_json(&v);
            meta["custom_metadata"] = json!(r.custom_metadata.iter().collect::<BTreeMap<_, _>>());
            if json {
                let out = match &value {
                    Some(pb::secret_value::Kind::Fields(f)) => {
                        json!({ "data": f.fields.iter().collect::<BTreeMap<_, _>>(), "metadata": meta })
                    }
                    Some(pb::secret_value::Kind::Binary(b)) => {
                        json!({ "data": null, "binary_b64": B64.encode(b), "metadata": meta })
                    }
                    Some(pb::secret_value::Kind::Text(t)) => json!({ "data": null, "text": t, "metadata": meta }),
                    None => json!({ "data": null, "metadata": meta }),
                };
                print_json(&out);
            } else {
                println!("====== Metadata ======");
                print_table(&[
                    ("created_time".into(), time(&v.created_time)),
                    ("custom_metadata".into(), map_text(&r.custom_metadata)),
                    ("deletion_time".into(), "n/a".into()),
                    ("destroyed".into(), v.destroyed.to_string()),
                    ("version".into(), v.version.to_string()),
                ]);
                println!();
                println!("====== Data ======");
                match value {
                    Some(pb::secret_value::Kind::Fields(f)) => {
                        let rows: BTreeMap<_, _> = f.fields.into_iter().collect();
                        print_table(&rows.into_iter().collect::<Vec<_>>());
                    }
                    Some(pb::secret_value::Kind::Binary(b)) => {
                        print_table(&[("binary_b64".into(), B64.encode(&b))]);
                    }
                    Some(pb::secret_value::Kind::Text(t)) => print_table(&[("text".into(), t)]),
                    None => {}
                }
            }
        }
        KvCommand::List { path, recursive } => {
            let mut keys = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .secrets()
                    .list(c.req(pb::ListRequest { path: path.clone(), page_size: 0, page_token, recursive }))
                    .await?
                    .into_inner();
                keys.extend(r.keys);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            if json {
                print_json(&json!(keys));
            } else if keys.is_empty() {
                println!("No keys under {path}");
            } else {
                println!("Keys\n----");
                for k in keys {
                    println!("{k}");
                }
            }
        }
        KvCommand::Delete { path, versions } => {
            c.secrets()
                .delete(c.req(pb::DeleteRequest { path: path.clone(), versions, all_versions: false, purge: false }))
                .await?;
            done(json, &format!("Success! Data deleted (if it existed) at: {path}"));
        }
        KvCommand::Undelete { path, versions, secret } => {
            c.secrets()
                .undelete(c.req(pb::UndeleteRequest { path: path.clone(), versions, restore_secret: secret }))
                .await?;
            done(json, &format!("Success! Data written to: {path}"));
        }
        KvCommand::Destroy { path, versions } => {
            c.secrets().destroy(c.req(pb::DestroyRequest { path: path.clone(), versions })).await?;
            done(json, &format!("Success! Data written to: {path}"));
        }
        KvCommand::Metadata(MetadataCommand::Get { path }) => {
            let r = c.secrets().describe(c.req(pb::DescribeRequest { path })).await?.into_inner();
            print_metadata(json, &r.metadata.unwrap_or_default());
        }
        KvCommand::Metadata(MetadataCommand::Put {
            path,
            custom_metadata,
            clear_custom_metadata,
            max_versions,
            cas_required,
        }) => {
            let keep_custom_metadata = custom_metadata.is_empty() && !clear_custom_metadata;
            let custom = parse_pairs(&custom_metadata, "--custom-metadata")?;
            let r = c
                .secrets()
                .put_metadata(c.req(pb::PutMetadataRequest {
                    path,
                    custom_metadata: custom.into_iter().collect(),
                    max_versions,
                    cas_required,
                    keep_custom_metadata,
                }))
                .await?
                .into_inner();
            print_metadata(json, &r.metadata.unwrap_or_default());
        }
        KvCommand::Metadata(MetadataCommand::Delete { path, purge }) => {
            c.secrets()
                .delete(c.req(pb::DeleteRequest { path: path.clone(), versions: vec![], all_versions: true, purge }))
                .await?;
            done(json, &format!("Success! Data deleted (if it existed) at: {path}"));
        }
    }
    Ok(())
}

pub(crate) fn done(json: bool, message: &str) {
    if json {
        print_json(&json!({ "ok": true }));
    } else {
        println!("{message}");
    }
}

fn print_metadata(json: bool, m: &pb::SecretMetadata) {
    if json {
        print_json(&json!({
            "path": m.path,
            "current_version": m.current_version,
            "oldest_version": m.oldest_version,
            "created_time": time(&m.created_time),
            "updated_time": time(&m.updated_time),
            "custom_metadata": m.custom_metadata.iter().collect::<BTreeMap<_, _>>(),
            "max_versions": m.max_versions,
            "cas_required": m.cas_required,
            "versions": m.versions.iter().map(|v| (v.version.to_string(), version_json(v))).collect::<serde_json::Map<_, _>>(),
            "other_versions": m.other_versions.iter().map(version_json).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("========== Metadata Path ==========");
    println!("{}", m.path);
    println!();
    println!("========== Metadata ==========");
    print_table(&[
        ("cas_required".into(), m.cas_required.to_string()),
        ("created_time".into(), time(&m.created_time)),
        ("current_version".into(), m.current_version.to_string()),
        ("custom_metadata".into(), map_text(&m.custom_metadata)),
        ("max_versions".into(), m.max_versions.to_string()),
        ("oldest_version".into(), m.oldest_version.to_string()),
        ("updated_time".into(), time(&m.updated_time)),
    ]);
    for v in m.versions.iter().chain(&m.other_versions) {
        println!();
        if v.version > 0 {
            println!("====== Version {} ======", v.version);
        } else {
            println!("====== Version {} (no number) ======", v.provider_version_id);
        }
        let deletion = if v.deletion_time.is_some() { time(&v.deletion_time) } else { "n/a".into() };
        let mut rows = vec![
            ("created_time".into(), time(&v.created_time)),
            ("deletion_time".into(), deletion),
            ("destroyed".into(), v.destroyed.to_string()),
        ];
        if !v.provider_version_id.is_empty() {
            rows.push(("provider_version_id".into(), v.provider_version_id.clone()));
            rows.push(("stages".into(), v.stages.join(",")));
        }
        print_table(&rows);
    }
}

fn mount_json(m: &pb::Mount) -> Value {
    json!({
        "path": m.path, "type": m.r#type, "description": m.description, "id": m.id,
        "config": m.config.iter().collect::<BTreeMap<_, _>>(), "created_time": time(&m.created_time),
        "stats": m.stats.as_ref().map(|s| json!({
            "upstream_calls": s.upstream_calls, "cache_hits": s.cache_hits, "cache_misses": s.cache_misses,
        })),
    })
}

pub async fn mount(c: &Client, cmd: MountCommand) -> Result<(), Error> {
    let json = c.output == Output::Json;
    match cmd {
        MountCommand::List => {
            let r = c.sys().list_mounts(c.req(pb::ListMountsRequest {})).await?.into_inner();
            if json {
                print_json(&json!(r.mounts.iter().map(mount_json).collect::<Vec<_>>()));
            } else {
                let w = r.mounts.iter().map(|m| m.path.len()).max().unwrap_or(4).max(4);
                println!("{:w$}    {:8}    {:36}    Description", "Path", "Type", "Id");
                println!("{:w$}    {:8}    {:36}    -----------", "----", "----", "--");
                for m in &r.mounts {
                    println!("{:w$}    {:8}    {:36}    {}", m.path, m.r#type, m.id, m.description);
                }
            }
        }
        MountCommand::Enable { path, config, kind, description, plugin } => {
            let mut config = parse_pairs(&config, "mount setting")?;
            if let Some(p) = plugin {
                config.insert("plugin".into(), p);
            }
            let m = c
                .sys()
                .enable_mount(c.req(pb::EnableMountRequest {
                    path,
                    r#type: kind,
                    description,
                    config: config.into_iter().collect(),
                }))
                .await?
                .into_inner();
            if json {
                print_json(&mount_json(&m));
            } else {
                println!("Success! Enabled the {} mount at: {}", m.r#type, m.path);
            }
        }
        MountCommand::Disable { path } => {
            c.sys().disable_mount(c.req(pb::DisableMountRequest { path: path.clone() })).await?;
            done(json, &format!("Success! Disabled the mount (if it existed) at: {path}"));
        }
        MountCommand::Tune { path, config, description } => {
            let config = parse_pairs(&config, "mount setting")?;
            let m = c
                .sys()
                .tune_mount(c.req(pb::TuneMountRequest { path, description, config: config.into_iter().collect() }))
                .await?
                .into_inner();
            if json {
                print_json(&mount_json(&m));
            } else {
                println!("Success! Tuned the mount at: {}", m.path);
            }
        }
    }
    Ok(())
}

fn seal_json(s: &pb::SealStatusResponse) -> Value {
    json!({
        "initialized": s.initialized, "sealed": s.sealed, "t": s.key_threshold, "n": s.key_shares,
        "progress": s.progress, "version": s.version, "storage_type": s.storage_type,
        "node_id": s.node_id, "leader": s.leader, "leader_address": s.leader_address, "epoch": s.epoch,
        "feed_lag_ms": s.feed_lag_ms, "feed_age_ms": s.feed_age_ms,
        "type": s.seal_type, "recovery_seal": s.recovery_seal, "migration": s.migration,
        "seal_message": s.seal_message,
    })
}

fn print_seal(json: bool, s: &pb::SealStatusResponse) {
    if json {
        print_json(&seal_json(s));
    } else {
        let (total, threshold) = if s.recovery_seal {
            ("Total Recovery Shares", "Recovery Threshold")
        } else {
            ("Total Shares", "Threshold")
        };
        let mut rows = vec![
            ("Seal Type".into(), if s.seal_type.is_empty() { "shamir".into() } else { s.seal_type.clone() }),
            ("Recovery Seal".into(), s.recovery_seal.to_string()),
            ("Initialized".into(), s.initialized.to_string()),
            ("Sealed".into(), s.sealed.to_string()),
            (total.into(), s.key_shares.to_string()),
            (threshold.into(), s.key_threshold.to_string()),
            ("Unseal Progress".into(), format!("{}/{}", s.progress, s.key_threshold)),
            ("Version".into(), s.version.clone()),
            ("Storage Type".into(), s.storage_type.clone()),
        ];
        if s.migration {
            rows.push(("Seal Migration in Progress".into(), "true".into()));
        }
        if !s.seal_message.is_empty() {
            rows.push(("Sealed Because".into(), s.seal_message.clone()));
        }
        print_table(&rows);
        if !s.node_id.is_empty() {
            print_table(&[
                ("Node".into(), s.node_id.clone()),
                ("Leader".into(), s.leader.to_string()),
                ("Leader Address".into(), s.leader_address.clone()),
                ("Epoch".into(), s.epoch.to_string()),
                ("Feed Lag".into(), format!("{} ms", s.feed_lag_ms)),
                (
                    "Feed Read".into(),
                    if s.feed_age_ms == u64::MAX { "never".into() } else { format!("{} ms ago", s.feed_age_ms) },
                ),
            ]);
        }
    }
}

fn print_keys(json: bool, keys: &[String], threshold: u32, root_token: Option<&str>, recovery: bool) {
    if json {
        let mut v = if recovery {
            json!({ "recovery_keys_b64": keys, "recovery_keys_shares": keys.len(), "recovery_keys_threshold": threshold })
        } else {
            json!({ "unseal_keys_b64": keys, "unseal_shares": keys.len(), "unseal_threshold": threshold })
        };
        if let Some(t) = root_token {
            v["root_token"] = json!(t);
        }
        print_json(&v);
        return;
    }
    let name = if recovery { "Recovery Key" } else { "Unseal Key" };
    for (i, k) in keys.iter().enumerate() {
        println!("{name} {}: {k}", i + 1);
    }
    println!();
    if let Some(t) = root_token {
        println!("Initial Root Token: {t}");
        println!();
    }
    if recovery {
        println!(
            "The server unseals with its auto seal. The recovery key is split into {} key shares; any\n\
             {threshold} of them authorise a rekey, a seal migration, or unsealing a node sealed by\n\
             request (through the key service). They decrypt nothing.\n\
             Keep them apart and safe: Keybridge does not store them.",
            keys.len()
        );
    } else {
        println!(
            "The root key is split into {} key shares; any {threshold} of them unseal the server.\n\
             Keep them apart and safe: Keybridge does not store them.",
            keys.len()
        );
    }
}

fn read_key_lines() -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let t = line.trim();
        if !t.is_empty() {
            keys.push(t.to_string());
        }
    }
    Ok(keys)
}

/// Runs an operator command; returns the exit code (status reports sealed
/// as 5).
pub async fn operator(c: &Client, cmd: OperatorCommand) -> Result<u8, Error> {
    let json = c.output == Output::Json;
    match cmd {
        OperatorCommand::Init { key_shares, key_threshold } => {
            let r = c.sys().init(c.req(pb::InitRequest { key_shares, key_threshold })).await?.into_inner();
            if r.recovery_keys_b64.is_empty() {
                print_keys(json, &r.unseal_keys_b64, r.unseal_threshold, Some(&r.root_token), false);
            } else {
                print_keys(json, &r.recovery_keys_b64, r.recovery_threshold, Some(&r.root_token), true);
            }
        }
        OperatorCommand::Unseal { key, reset, migrate } => {
            // An auto seal needs no key: an empty one asks for an attempt now
            // (a node sealed by request needs its recovery keys).
            let (auto, recovery) = match (&key, reset) {
                (None, false) => {
                    let s = c.sys().seal_status(c.req(pb::SealStatusRequest {})).await?.into_inner();
                    let held = s.seal_message.starts_with("sealed by request");
                    (s.recovery_seal && !s.migration && !migrate && !held, s.recovery_seal)
                }
                _ => (false, false),
            };
            let key = match (key, reset) {
                (_, true) => String::new(),
                _ if auto => String::new(),
                (Some(k), false) => k,
                (None, false) => {
                    if !json {
                        let name = if recovery { "Recovery Key" } else { "Unseal Key" };
                        eprint!("{name} (will be hidden from the process list): ");
                        std::io::stderr().flush()?;
                    }
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim().to_string()
                }
            };
            let key = Zeroizing::new(key);
            let s =
                c.sys().unseal(c.req(pb::UnsealRequest { key: key.to_string(), reset, migrate })).await?.into_inner();
            print_seal(json, &s);
        }
        OperatorCommand::Seal => {
            let s = c.sys().seal(c.req(pb::SealRequest {})).await?.into_inner();
            if json {
                print_json(&seal_json(&s));
            } else {
                println!("Success! Keybridge is sealed.");
            }
        }
        OperatorCommand::Status => {
            let s = c.sys().seal_status(c.req(pb::SealStatusRequest {})).await?.into_inner();
            print_seal(json, &s);
            if s.sealed {
                return Ok(crate::error::exit::UNAVAILABLE);
            }
        }
        OperatorCommand::Rotate => {
            let k = c.sys().rotate(c.req(pb::RotateRequest {})).await?.into_inner();
            print_key_status(json, &k);
        }
        OperatorCommand::KeyStatus => {
            let k = c.sys().key_status(c.req(pb::KeyStatusRequest {})).await?.into_inner();
            print_key_status(json, &k);
        }
        OperatorCommand::Members => {
            let m = c.sys().members(c.req(pb::MembersRequest {})).await?.into_inner().members;
            if json {
                print_json(&json!(
                    m.iter()
                        .map(|m| json!({
                            "node_id": m.node_id, "api_addr": m.api_addr, "state": m.state, "alive": m.alive,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                println!("{:<32}  {:<9}  {:<5}  API address", "Node", "State", "Alive");
                for m in &m {
                    println!("{:<32}  {:<9}  {:<5}  {}", m.node_id, m.state, m.alive, m.api_addr);
                }
            }
        }
        OperatorCommand::Rekey { keys, key_shares, key_threshold } => {
            let keys = if keys.is_empty() { read_key_lines()? } else { keys };
            let r = c.sys().rekey(c.req(pb::RekeyRequest { keys, key_shares, key_threshold })).await?.into_inner();
            print_keys(json, &r.unseal_keys_b64, r.unseal_threshold, None, r.recovery);
        }
        OperatorCommand::Migrate { .. } => return Err(Error::Usage("operator migrate runs without a server".into())),
        OperatorCommand::Snapshot(SnapshotCommand::Save { file }) => {
            let mut stream = c.sys().snapshot_save(c.req(pb::SnapshotSaveRequest {})).await?.into_inner();
            let tmp = file.with_extension("partial");
            // Owner-only: a snapshot is ciphertext, but still the whole store.
            let mut out = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| Error::Read { path: tmp.display().to_string(), source: e })?
            };
            let mut bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                };
                bytes += chunk.data.len() as u64;
                out.write_all(&chunk.data)?;
            }
            out.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            if json {
                print_json(&json!({ "file": file, "bytes": bytes }));
            } else {
                println!("Success! Snapshot of {bytes} bytes saved to {}", file.display());
            }
        }
        OperatorCommand::Snapshot(SnapshotCommand::Restore { file, force }) => {
            let data = std::fs::read(&file).map_err(|e| Error::Read { path: file.display().to_string(), source: e })?;
            let mut chunks: Vec<pb::SnapshotChunk> =
                data.chunks(1 << 20).map(|d| pb::SnapshotChunk { data: d.to_vec(), force }).collect();
            if chunks.is_empty() {
                chunks.push(pb::SnapshotChunk { data: vec![], force });
            }
            let r = c.sys().snapshot_restore(c.req(tokio_stream::iter(chunks))).await?.into_inner();
            if json {
                print_json(&json!({ "entries": r.entries, "sealed": r.sealed }));
            } else if r.sealed {
                println!(
                    "Success! Restored {} entries. The snapshot came from another root key: the server is sealed; unseal it with that snapshot's keys.",
                    r.entries
                );
            } else {
                println!("Success! Restored {} entries.", r.entries);
            }
        }
    }
    Ok(crate::error::exit::OK)
}

fn print_key_status(json: bool, k: &pb::KeyringStatus) {
    if json {
        print_json(&json!({ "term": k.term, "install_time": time(&k.install_time), "terms": k.terms }));
    } else {
        print_table(&[
            ("Key Term".into(), k.term.to_string()),
            ("Install Time".into(), time(&k.install_time)),
            ("Terms".into(), k.terms.to_string()),
        ]);
    }
}

pub async fn policy(c: &Client, cmd: PolicyCommand) -> Result<(), Error> {
    let json = c.output == Output::Json;
    match cmd {
        PolicyCommand::Write { name, file } => {
            let text = if file.as_os_str() == "-" { read_stdin()? } else { read_file(&file)? };
            let policy = utf8(text, "the policy file")?;
            c.policies().put(c.req(pb::PutPolicyRequest { name: name.clone(), policy })).await?;
            done(json, &format!("Success! Uploaded policy: {name}"));
        }
        PolicyCommand::Read { name } => {
            let p = c.policies().get(c.req(pb::GetPolicyRequest { name })).await?.into_inner();
            if json {
                print_json(&json!({ "name": p.name, "policy": p.policy }));
            } else {
                print!("{}", p.policy);
            }
        }
        PolicyCommand::List => {
            let r = c.policies().list(c.req(pb::ListPoliciesRequest {})).await?.into_inner();
            if json {
                print_json(&json!(r.names));
            } else {
                for n in r.names {
                    println!("{n}");
                }
            }
        }
        PolicyCommand::Delete { name } => {
            c.policies().delete(c.req(pb::DeletePolicyRequest { name: name.clone() })).await?;
            done(json, &format!("Success! Deleted policy: {name}"));
        }
        PolicyCommand::Lint { files, rego } => {
            policy_lint(&files, rego.as_ref(), c.output)?;
        }
    }
    Ok(())
}

fn token_info_rows(i: &pb::TokenInfo) -> Vec<(String, String)> {
    vec![
        ("display_name".into(), i.display_name.clone()),
        ("policies".into(), format!("[{}]", i.policies.join(" "))),
        ("created_time".into(), time(&i.created_time)),
        ("expire_time".into(), if i.expire_time.is_some() { time(&i.expire_time) } else { "never".into() }),
        ("renewable".into(), i.renewable.to_string()),
        ("num_uses".into(), i.num_uses.to_string()),
        ("accessor".into(), i.accessor.clone()),
    ]
}

fn token_info_json(i: &pb::TokenInfo) -> Value {
    json!({
        "display_name": i.display_name, "policies": i.policies,
        "created_time": time(&i.created_time), "expire_time": time(&i.expire_time),
        "renewable": i.renewable, "num_uses": i.num_uses, "accessor": i.accessor,
    })
}

pub async fn token(c: &Client, cmd: TokenCommand) -> Result<(), Error> {
    let json = c.output == Output::Json;
    match cmd {
        TokenCommand::Create { policies, ttl, max_ttl, renewable, use_limit, display_name, no_default_policy } => {
            let secs = |d: Option<humantime::Duration>| d.map_or(0, |d| std::time::Duration::from(d).as_secs());
            let r = c
                .tokens()
                .create(c.req(pb::CreateTokenRequest {
                    policies,
                    ttl_seconds: secs(ttl),
                    max_ttl_seconds: secs(max_ttl),
                    renewable: Some(renewable),
                    num_uses: use_limit,
                    display_name,
                    no_default_policy,
                }))
                .await?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if json {
                let mut v = token_info_json(&info);
                v["token"] = json!(r.token);
                print_json(&v);
            } else {
                let mut rows = vec![("token".to_string(), r.token.clone())];
                rows.extend(token_info_rows(&info));
                print_table(&rows);
            }
        }
        TokenCommand::Capabilities { path } => {
            let r = c.tokens().capabilities_self(c.req(pb::CapabilitiesRequest { path })).await?.into_inner();
            if json {
                print_json(&json!(r.capabilities));
            } else {
                println!("{}", r.capabilities.join(", "));
            }
        }
        TokenCommand::Renew { target, renew_self, increment } => {
            let target = match (target, renew_self) {
                (_, true) => Zeroizing::new(String::new()),
                (Some(t), false) => Zeroizing::new(t),
                (None, false) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    Zeroizing::new(line.trim().to_string())
                }
            };
            if target.is_empty() && !renew_self {
                return Err(Error::Usage("give a token to renew, or --self".into()));
            }
            let increment_seconds = increment.map_or(0, |d| std::time::Duration::from(d).as_secs());
            let r = c
                .tokens()
                .renew(c.req(pb::RenewTokenRequest { token: target.to_string(), increment_seconds }))
                .await?
                .into_inner();
            let until = if r.expire_time.is_some() { time(&r.expire_time) } else { "never".into() };
            if json {
                print_json(&json!({ "expire_time": until }));
            } else {
                println!("Success! The token now expires: {until}");
            }
        }
        TokenCommand::Revoke { target, revoke_self, accessor } => {
            if revoke_self {
                c.tokens().revoke_self(c.req(pb::RevokeSelfRequest {})).await?;
            } else if let Some(accessor) = accessor {
                c.tokens().revoke(c.req(pb::RevokeTokenRequest { token: String::new(), accessor })).await?;
            } else {
                let target = match target {
                    Some(t) => Zeroizing::new(t),
                    None => {
                        let mut line = String::new();
                        std::io::stdin().lock().read_line(&mut line)?;
                        Zeroizing::new(line.trim().to_string())
                    }
                };
                c.tokens()
                    .revoke(c.req(pb::RevokeTokenRequest { token: target.to_string(), accessor: String::new() }))
                    .await?;
            }
            done(json, "Success! Revoked the token (if it existed) and its children.");
        }
        TokenCommand::Lookup { target, accessor } => {
            use pb::lookup_token_request::Target;
            let info = match (target, accessor) {
                (Some(t), _) => {
                    c.tokens().lookup(c.req(pb::LookupTokenRequest { target: Some(Target::Token(t)) })).await?
                }
                (None, Some(a)) => {
                    c.tokens().lookup(c.req(pb::LookupTokenRequest { target: Some(Target::Accessor(a)) })).await?
                }
                (None, None) => c.tokens().lookup_self(c.req(pb::LookupSelfRequest {})).await?,
            }
            .into_inner();
            if json {
                print_json(&token_info_json(&info));
            } else {
                print_table(&token_info_rows(&info));
            }
        }
    }
    Ok(())
}

/// `policy lint`: runs without a server. Returns the exit code.
pub fn policy_lint(files: &[PathBuf], rego: Option<&PathBuf>, output: Output) -> Result<u8, Error> {
    use keybridge_policy::rego::{RegoModule, role_input, rule_inputs};
    let module = match rego {
        Some(path) => {
            let text = utf8(read_file(path)?, &path.display().to_string())?;
            Some(RegoModule::parse(&path.display().to_string(), &text).map_err(|e| Error::Usage(e.to_string()))?)
        }
        None => None,
    };
    let rego_err = |e: keybridge_policy::Error| Error::Usage(e.to_string());
    let mut findings = Vec::new();
    let mut broken = false;
    for file in files {
        let shown = file.display().to_string();
        let text = utf8(read_file(file)?, &shown)?;
        if file.extension().is_some_and(|e| e == "json") {
            // A role file.
            #[derive(serde::Deserialize)]
            struct RoleFile {
                method: String,
                name: String,
                #[serde(default)]
                settings: BTreeMap<String, String>,
            }
            let role: RoleFile = match serde_json::from_str(&text) {
                Ok(r) => r,
                Err(e) => {
                    broken = true;
                    findings.push(json!({ "file": shown, "level": "error", "message": format!("not a role file ({{\"method\", \"name\", \"settings\"}}): {e}") }));
                    continue;
                }
            };
            if let Err(e) = keybridge_auth::Method::validate_role(&role.method, &role.settings) {
                broken = true;
                findings.push(json!({ "file": shown, "role": role.name, "level": "error", "message": e.to_string() }));
                continue;
            }
            if let Some(m) = &module {
                for msg in m.deny(&role_input(&role.method, &role.name, &role.settings)).map_err(rego_err)? {
                    findings.push(json!({ "file": shown, "role": role.name, "level": "deny", "message": msg }));
                }
            }
            continue;
        }
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match keybridge_policy::parse_policy(&name, &text) {
            Ok(policy) => {
                for w in keybridge_policy::lint(&policy) {
                    let line = keybridge_policy::rego::rule_line(&text, &w.path);
                    findings.push(json!({ "file": shown, "line": line, "path": w.path, "level": "warning", "message": w.message }));
                }
                if let Some(m) = &module {
                    for input in rule_inputs(&policy, &shown, &text) {
                        for msg in m.deny(&input).map_err(rego_err)? {
                            findings.push(json!({
                                "file": shown, "line": input["line"], "path": input["path"],
                                "level": "deny", "message": msg,
                            }));
                        }
                    }
                }
            }
            Err(e) => {
                broken = true;
                findings.push(json!({ "file": shown, "level": "error", "message": e.to_string() }));
            }
        }
    }
    let denied = findings.iter().any(|f| f["level"] == "deny");
    if output == Output::Json {
        print_json(&json!(findings));
    } else {
        for f in &findings {
            let line = f["line"].as_u64().map(|l| format!(":{l}")).unwrap_or_default();
            let at = match (f["path"].as_str(), f["role"].as_str()) {
                (Some(p), _) => format!(" path \"{p}\""),
                (None, Some(r)) => format!(" role \"{r}\""),
                _ => String::new(),
            };
            println!(
                "{}{line}{at}: {}: {}",
                f["file"].as_str().unwrap_or_default(),
                f["level"].as_str().unwrap_or_default(),
                f["message"].as_str().unwrap_or_default()
            );
        }
        if findings.is_empty() {
            println!("No findings in {} file(s).", files.len());
        }
    }
    Ok(if broken {
        crate::error::exit::USAGE
    } else if denied {
        crate::error::exit::ERROR
    } else {
        crate::error::exit::OK
    })
}

/// Writes one man page per command (`keybridge.1`, `keybridge-kv-get.1`,
/// ...) into `dir`, replacing what was there.
pub fn write_man_pages(dir: &std::path::Path) -> Result<(), Error> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(Error::Io)?;
    // Only pages of ours go: `keybridge.1` and `keybridge-*.1`.
    for e in std::fs::read_dir(dir).map_err(Error::Io)? {
        let e = e.map_err(Error::Io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "keybridge.1" || (name.starts_with("keybridge-") && name.ends_with(".1")) {
            std::fs::remove_file(e.path()).map_err(Error::Io)?;
        }
    }
    // The server's page is rendered from its own parser, so it shows its
    // own flags only, as its help does.
    let cmd = Cli::command().mut_subcommand("server", |c| c.hide(true));
    clap_mangen::generate_to(cmd, dir).map_err(Error::Io)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(ServerCli::command().name("keybridge-server")).render(&mut page).map_err(Error::Io)?;
    std::fs::write(dir.join("keybridge-server.1"), page).map_err(Error::Io)
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Every subcommand, flag and argument says in one line what it is for.
    #[test]
    fn every_command_and_argument_has_a_description() {
        let mut missing = Vec::new();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sc in cmd.get_subcommands() {
                let p = format!("{path} {}", sc.get_name());
                if sc.get_name() != "help" && sc.get_about().is_none() {
                    missing.push(format!("{p}: no description"));
                }
                for a in sc.get_arguments() {
                    if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                        missing.push(format!("{p}: {} has no description", a.get_id()));
                    }
                }
                walk(sc, &p, missing);
            }
        }
        walk(&super::Cli::command(), "keybridge", &mut missing);
        assert!(missing.is_empty(), "{} missing:\n{}", missing.len(), missing.join("\n"));
    }

    /// The server's help names its own flags only; no usage line shows a
    /// connection flag as if it were required.
    #[test]
    fn server_and_client_flags_are_apart_and_usage_lines_are_honest() {
        let server = super::ServerCli::command().render_long_help().to_string();
        for client in ["--token", "--address", "--ca-cert", "--output"] {
            assert!(!server.contains(client), "server --help lists {client}:\n{server}");
        }
        assert!(server.contains("--dev") && server.contains("--config"), "{server}");
        fn walk(cmd: &mut clap::Command, bad: &mut Vec<String>) {
            let usage = cmd.render_usage().to_string();
            for g in ["--token", "--address", "--ca-cert", "--output"] {
                if usage.contains(g) {
                    bad.push(usage.clone());
                }
            }
            for sc in cmd.get_subcommands_mut() {
                walk(sc, bad);
            }
        }
        let mut bad = Vec::new();
        let mut cli = super::Cli::command();
        cli.build();
        walk(&mut cli, &mut bad);
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn vault_spellings_are_rewritten_and_nothing_else() {
        let args = |v: &[&str]| -> Vec<std::ffi::OsString> { v.iter().map(|s| s.into()).collect() };
        assert_eq!(
            super::vault_habits(args(&["keybridge", "kv", "get", "-format=json", "-field=password", "secret/a"])),
            args(&["keybridge", "kv", "get", "--output=json", "--field=password", "secret/a"])
        );
        assert_eq!(super::vault_habits(args(&["keybridge", "status"])), args(&["keybridge", "operator", "status"]));
        let same = args(&["keybridge", "kv", "put", "secret/a", "format=json", "-o", "json", "x=-field=y"]);
        assert_eq!(super::vault_habits(same.clone()), same);
        let values = args(&["keybridge", "kv", "put", "secret/a", "--", "-format=hunter2", "-field=pw"]);
        assert_eq!(super::vault_habits(values.clone()), values, "nothing after -- is rewritten");
    }

    /// docs/man holds the pages this CLI renders; regenerate them with
    /// `cargo run -p keybridge-server -- man docs/man` when this fails.
    #[test]
    fn the_man_pages_in_docs_are_current() {
        let dir = tempfile::tempdir().unwrap();
        super::write_man_pages(dir.path()).unwrap();
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/man");
        let mut stale = Vec::new();
        let names = |d: &std::path::Path| -> std::collections::BTreeSet<String> {
            std::fs::read_dir(d)
                .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        let (want, have) = (names(dir.path()), names(&docs));
        for n in want.symmetric_difference(&have) {
            stale.push(format!("{n}: only in {}", if want.contains(n) { "the CLI" } else { "docs/man" }));
        }
        for n in want.intersection(&have) {
            if std::fs::read(dir.path().join(n)).unwrap() != std::fs::read(docs.join(n)).unwrap() {
                stale.push(format!("{n}: differs"));
            }
        }
        assert!(
            stale.is_empty(),
            "docs/man is stale; run `cargo run -p keybridge-server -- man docs/man`:\n{}",
            stale.join("\n")
        );
    }
}
