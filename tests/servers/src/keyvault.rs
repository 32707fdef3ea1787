//! An Azure Key Vault (secrets, and RSA keys for wrapKey/unwrapKey) and
//! Microsoft Entra ID token endpoint that follow the published REST
//! contracts, over HTTPS with a test CA.
//!
//! No third-party Key Vault emulator runs here, so this server stands in
//! for one in Keybridge's tests. It is strict where the service is, because
//! that is where production bugs hide. What it implements, as documented in
//! the Key Vault REST API reference (api-version 2025-07-01, which
//! `azure_security_keyvault_secrets` 1.0 sends), Key Vault's soft-delete
//! and error documentation, and the Entra ID client-credentials flow:
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (form: `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `scope=https://vault.azure.net/.default`):
//!   `{token_type: "Bearer", expires_in, ext_expires_in, access_token}`, or
//!   Entra's error shape `{error, error_description, error_codes}` (400
//!   unknown tenant AADSTS90002, 401 bad secret AADSTS7000215, 400 bad
//!   scope). Tokens expire after their `expires_in` (3599 s unless
//!   [`KeyVault::set_token_lifetime`] says otherwise).
//! - Every vault request needs a bearer token: without one, 401 with
//!   `WWW-Authenticate: Bearer authorization="<authority>/<tenant>",
//!   resource="https://vault.azure.net"` (the challenge the SDK waits for
//!   before it sends a token); an unknown token is 401 `Unauthorized`
//!   (AKV10032), an expired one 401 `Unauthorized` "[TokenExpired] Error
//!   validating token: 'S2S12086'.", both with the challenge. Then
//!   `api-version`: missing, or not one of [`API_VERSIONS`], is 400
//!   `BadParameter` ("The specified version (x) is not recognized. Consider
//!   using the latest supported version (2025-07-01)."). Clients registered
//!   read-only get 403 `Forbidden` on writes.
//! - `PUT /secrets/{name}` (SetSecret: value, contentType, tags,
//!   attributes.enabled), `GET /secrets/{name}/{version?}` (GetSecret; a
//!   disabled version is 403 `Forbidden`, inner error `SecretDisabled`),
//!   `PATCH /secrets/{name}/{version?}` (UpdateSecret: contentType,
//!   attributes.enabled, tags), `GET /secrets` and
//!   `GET /secrets/{name}/versions` (`maxresults` 1..=25, `value` + `nextLink`
//!   with a `$skiptoken`), `DELETE /secrets/{name}` (soft delete: a
//!   DeletedSecretBundle with `recoveryId`, `deletedDate`,
//!   `scheduledPurgeDate`), `GET /deletedsecrets[/{name}]`,
//!   `POST /deletedsecrets/{name}/recover`, `DELETE /deletedsecrets/{name}`
//!   (purge, 204).
//! - Version ids are random 32-hex strings and a secret's versions are
//!   listed ordered by id: an order that is stable for the secret but not
//!   the order they were written in, as the service lists them. The
//!   current version is the one created last. Times are Unix seconds, so
//!   versions written within a second share `created`.
//! - Delete, recover and purge answer at once and finish in the background
//!   ([`KeyVault::set_operation_delay`], 200 ms by default). While a delete
//!   is under way the secret reads 404 and is not yet among the deleted
//!   secrets (`GET /deletedsecrets/{name}` 404); purging or recovering it is
//!   409 `Conflict` "Secret is currently being deleted." (inner error
//!   `ObjectIsBeingDeleted`). While a recover is under way the secret still
//!   reads 404 (`SecretNotFound`). While a purge is under way the secret is
//!   in neither list. Setting a name held by any of them is 409 `Conflict`
//!   ("Secret x is currently being deleted / being recovered and cannot be
//!   re-created; retry later.", inner errors `ObjectIsBeingDeleted`,
//!   `ObjectIsBeingRecovered`); a name that is deleted but recoverable is
//!   409 `Conflict` (inner error `ObjectIsDeletedButRecoverable`).
//! - Names: 1-127 of `0-9a-zA-Z-`, compared without regard to case; values
//!   at most 25 KiB; at most 15 tags. Errors are
//!   `{"error": {"code", "message", "innererror"?: {"code"}}}`.
//! - Keys (the Key Vault keys REST reference), behind the same token,
//!   api-version, throttling and [`KeyVault::set_down`] checks, in a
//!   namespace of their own (no soft delete):
//!   - `POST /keys/{name}/create` (CreateKey): `kty` `RSA` or `RSA-HSM`
//!     (required; other types are 400 `BadParameter`), `key_size` 2048,
//!     3072 or 4096 (default 2048), `public_exponent` 65537 only,
//!     `key_ops` (default the six RSA operations encrypt, decrypt, sign,
//!     verify, wrapKey, unwrapKey), `attributes.enabled`, `tags`. Creates a
//!     new version, which becomes current. `POST /keys/{name}/rotate`
//!     (RotateKey): a new version like the current one. Both answer a
//!     KeyBundle: `key` (`kid` `https://<host>/keys/<name>/<version>`,
//!     `kty`, `key_ops`, `n`, `e` base64url: the public part only),
//!     `attributes` (`enabled`, `created`, `updated`, `recoveryLevel`,
//!     `recoverableDays`), `tags`.
//!   - `GET /keys/{name}[/{version}]` (GetKey; a disabled version is
//!     still shown), `PATCH /keys/{name}[/{version}]` (UpdateKey:
//!     `attributes.enabled`, `key_ops`, `tags`), `GET /keys` and
//!     `GET /keys/{name}/versions` (paged as secrets are).
//!   - `POST /keys/{name}/{version}/wrapkey` and `/unwrapkey` (any case;
//!     an empty or missing version is the current one): `{alg, value}`
//!     with `alg` `RSA-OAEP-256`, `RSA-OAEP` or `RSA1_5` and a base64url
//!     `value`; answers `{kid, value}` with the versioned `kid` of the key
//!     that did it. Real RSA (the `rsa` crate; unwrapping is blinded).
//!     In Key Vault's order: an unknown key or version is 404
//!     `KeyNotFound`; a disabled version 403 `Forbidden` "Operation wrapKey
//!     is not allowed on a disabled key." (inner error `KeyDisabled`); an
//!     operation not in the version's `key_ops` 403 `Forbidden` (inner
//!     error `KeyOperationForbidden`); a missing or unknown `alg`, a
//!     `value` that is not base64url, too long to wrap, not the modulus'
//!     length or that does not unwrap: 400 `BadParameter`.
//!   - The read-only client gets 403 `Forbidden` (`ForbiddenByPolicy`,
//!     "does not have keys wrapKey permission") on create, rotate, update,
//!     wrapKey and unwrapKey.
//!   - Not implemented: other key types (EC, oct), import, delete and
//!     recover, backup and restore, encrypt/decrypt/sign/verify, release,
//!     rotation policies, `exp`/`nbf`.
//! - Test controls on [`KeyVault`]: the operation delay, the token
//!   lifetime, the api-versions accepted, a pinned clock, 429s and 503s on
//!   demand, revoked clients, writes and expiry set as another tool would,
//!   and what holds a name ([`KeyVault::state`]); keys created, enabled or
//!   disabled and restricted as `az keyvault key` would
//!   ([`KeyVault::create_key`], [`KeyVault::set_key_enabled`],
//!   [`KeyVault::set_key_ops`], [`KeyVault::key_version_ids`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde_json::{Value, json};

const MAX_VALUE: usize = 25 * 1024;
const PAGE_MAX: usize = 25;
const RECOVERABLE_DAYS: i64 = 90;

/// The api-versions whose secrets API this server implements, oldest
/// first; the last is the latest, which refusals name.
pub const API_VERSIONS: &[&str] = &["2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"];
/// How long a delete, recover or purge takes unless set otherwise: short,
/// but long enough that every test meets the operation under way.
pub const DEFAULT_OPERATION_DELAY: Duration = Duration::from_millis(200);
/// The lifetime of an access token unless set otherwise (Entra's
/// `expires_in` for client credentials).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

#[derive(Clone)]
struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: BTreeMap<String, String>,
    enabled: bool,
    /// `exp`: advisory for secrets (reads still succeed), as in Key Vault.
    expires: Option<i64>,
    created: i64,
    updated: i64,
}

#[derive(Clone)]
struct Secret {
    /// As first written (names compare without case).
    name: String,
    /// In the order they were written: the last is the current version.
    versions: Vec<Version>,
}

/// One version of a key: an RSA key pair whose private part never leaves
/// the vault.
#[derive(Clone)]
struct KeyVersion {
    id: String,
    /// `RSA` or `RSA-HSM`, as created.
    kty: String,
    /// The modulus size in bits.
    size: usize,
    private: Arc<rsa::RsaPrivateKey>,
    /// The JSON Web Key operations the version allows (`key_ops`).
    ops: Vec<String>,
    enabled: bool,
    created: i64,
    updated: i64,
    tags: BTreeMap<String, String>,
}

#[derive(Clone)]
struct Key {
    /// As first created (names compare without case).
    name: String,
    /// In the order they were created: the last is the current version.
    versions: Vec<KeyVersion>,
}

/// A key version to make: its RSA key pair is generated outside the vault's
/// lock (seconds for 4096 bits), then stored by [`insert_key`].
struct KeyJob {
    name: String,
    kty: String,
    size: usize,
    ops: Vec<String>,
    enabled: bool,
    tags: BTreeMap<String, String>,
}

/// The JSON Web Key operations Key Vault knows (`JsonWebKeyOperation`).
const KEY_OPS: &[&str] = &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"];
/// What an RSA key allows when it is created without `key_ops`.
const DEFAULT_RSA_OPS: &[&str] = &["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"];
/// The RSA key sizes Key Vault creates.
pub const KEY_SIZES: &[usize] = &[2048, 3072, 4096];
/// The key-wrapping algorithms of RSA keys.
pub const WRAP_ALGORITHMS: &[&str] = &["RSA-OAEP-256", "RSA-OAEP", "RSA1_5"];

/// A name held by soft deletion, or by a delete, recover or purge still
/// under way (`ready` is when it finishes).
enum Held {
    Deleting {
        secret: Secret,
        deleted: i64,
        ready: Instant,
    },
    /// Deleted but recoverable.
    Deleted {
        secret: Secret,
        deleted: i64,
    },
    Recovering {
        secret: Secret,
        ready: Instant,
    },
    Purging {
        ready: Instant,
    },
}

impl Held {
    fn ready(&self) -> Option<Instant> {
        match self {
            Held::Deleting { ready, .. } | Held::Recovering { ready, .. } | Held::Purging { ready } => Some(*ready),
            Held::Deleted { .. } => None,
        }
    }
}

struct Token {
    writer: bool,
    client: String,
    expires: Instant,
}

struct Vault {
    /// Live secrets by lower-case name (in the order lists give them); a
    /// name is here or in `held`, not both.
    secrets: BTreeMap<String, Secret>,
    /// Keys by lower-case name (a namespace of their own).
    keys: HashMap<String, Key>,
    held: HashMap<String, Held>,
    tokens: HashMap<String, Token>,
    /// Clients whose credentials were revoked.
    revoked: HashSet<String>,
    /// Requests to the vault (not the token endpoint), challenges included.
    requests: u64,
    /// Requests by kind: token, challenge, list, read, write, crypto.
    by_kind: BTreeMap<&'static str, u64>,
    /// Requests refused for an expired token.
    expired: u64,
    next: u64,
    /// Answer this many of the next vault requests with 429.
    throttle: u64,
    /// Answer every vault request with 503 (an outage).
    down: bool,
    operation_delay: Duration,
    token_lifetime: Duration,
    api_versions: Vec<String>,
    /// The Unix time new versions and deletions are stamped with, when pinned.
    clock: Option<i64>,
}

impl Vault {
    /// Finishes the deletes, recovers and purges whose time has come.
    fn settle(&mut self) {
        let now = Instant::now();
        let due: Vec<String> =
            self.held.iter().filter(|(_, h)| h.ready().is_some_and(|r| r <= now)).map(|(k, _)| k.clone()).collect();
        for key in due {
            match self.held.remove(&key) {
                Some(Held::Deleting { secret, deleted, .. }) => {
                    self.held.insert(key, Held::Deleted { secret, deleted });
                }
                Some(Held::Recovering { secret, .. }) => {
                    self.secrets.insert(key, secret);
                }
                Some(deleted @ Held::Deleted { .. }) => {
                    self.held.insert(key, deleted);
                }
                Some(Held::Purging { .. }) | None => {}
            }
        }
    }

    fn now(&self) -> i64 {
        self.clock.unwrap_or_else(now)
    }

    fn ready(&self) -> Instant {
        Instant::now() + self.operation_delay
    }
}

#[derive(Clone)]
struct Shared {
    vault: Arc<Mutex<Vault>>,
    tenant: String,
    /// client id -> (secret, may write)
    clients: Arc<HashMap<String, (String, bool)>>,
    base: String,
}

impl Shared {
    /// A fresh vault at `base` with the writer and the reader client.
    fn new(base: String) -> Shared {
        let clients: HashMap<String, (String, bool)> = [
            (CLIENT_ID.to_string(), (CLIENT_SECRET.to_string(), true)),
            (READER_ID.to_string(), (READER_SECRET.to_string(), false)),
        ]
        .into();
        let vault = Vault {
            secrets: BTreeMap::new(),
            keys: HashMap::new(),
            held: HashMap::new(),
            tokens: HashMap::new(),
            revoked: HashSet::new(),
            requests: 0,
            by_kind: BTreeMap::new(),
            expired: 0,
            next: 0,
            throttle: 0,
            down: false,
            operation_delay: DEFAULT_OPERATION_DELAY,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            api_versions: API_VERSIONS.iter().map(|v| v.to_string()).collect(),
            clock: None,
        };
        Shared {
            vault: Arc::new(Mutex::new(vault)),
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            clients: Arc::new(clients),
            base,
        }
    }
}

/// A running server; dropped with the test's runtime.
pub struct KeyVault {
    pub addr: SocketAddr,
    /// The vault URL (`https://127.0.0.1:PORT`), also the authority host.
    pub url: String,
    pub tenant: String,
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: String,
    shared: Shared,
}

pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "kv-test-client-secret";
pub const READER_ID: &str = "66666666-7777-8888-9999-000000000000";
pub const READER_SECRET: &str = "kv-test-reader-secret";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// An error with Key Vault's more specific `innererror.code`.
fn err_inner(status: StatusCode, code: &str, inner: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message, "innererror": { "code": inner } } })))
        .into_response()
}

fn being_deleted() -> Response {
    err_inner(StatusCode::CONFLICT, "Conflict", "ObjectIsBeingDeleted", "Secret is currently being deleted.")
}

fn being_recovered() -> Response {
    err_inner(StatusCode::CONFLICT, "Conflict", "ObjectIsBeingRecovered", "Secret is currently being recovered.")
}

impl KeyVault {
    /// Starts on 127.0.0.1 (a free port) with a fresh CA and certificate
    /// for 127.0.0.1 and localhost. One writer client and one read-only
    /// client are registered ([`CLIENT_ID`], [`READER_ID`]).
    pub async fn start() -> KeyVault {
        let pki = crate::tls::test_certs("keybridge key vault test CA");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = format!("https://127.0.0.1:{}", addr.port());
        let shared = Shared::new(url.clone());
        let app = axum::Router::new()
            .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
            .fallback(vault_api)
            .with_state(shared.clone());

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        use rustls::pki_types::pem::PemObject;
        let certs = vec![rustls::pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).expect("cert")];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("tls config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        KeyVault { addr, url, tenant: shared.tenant.clone(), ca_pem: pki.ca_pem, shared }
    }

    fn vault(&self) -> std::sync::MutexGuard<'_, Vault> {
        let mut v = self.shared.vault.lock().unwrap_or_else(|p| p.into_inner());
        v.settle();
        v
    }

    /// Requests the vault has answered (challenges included).
    pub fn requests(&self) -> u64 {
        self.vault().requests
    }

    /// Requests answered, by kind (token, challenge, list, read, write,
    /// crypto: wrapKey and unwrapKey).
    pub fn requests_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.vault().by_kind.clone()
    }

    /// Vault requests refused because their token had expired.
    pub fn expired_token_refusals(&self) -> u64 {
        self.vault().expired
    }

    /// Makes the next `n` authenticated vault requests answer 429, as Key
    /// Vault does past its service limits.
    pub fn throttle_next(&self, n: u64) {
        self.vault().throttle = n;
    }

    /// How long a delete, recover or purge takes from now on (0 finishes
    /// each by the next request).
    pub fn set_operation_delay(&self, delay: Duration) {
        self.vault().operation_delay = delay;
    }

    /// The lifetime of the access tokens issued from now on, in whole
    /// seconds (`expires_in` and `ext_expires_in` say it).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.vault().token_lifetime = Duration::from_secs(lifetime.as_secs());
    }

    /// The api-versions the vault accepts from now on, the latest last (an
    /// older vault, or Azure Stack Hub's, which stops at 7.1).
    pub fn set_api_versions(&self, versions: &[&str]) {
        self.vault().api_versions = versions.iter().map(|v| v.to_string()).collect();
    }

    /// Pins the Unix time that new versions and deletions are stamped with
    /// (`None`: the real clock again), so tests can write versions within
    /// one second of each other for sure.
    pub fn pin_clock(&self, unix_seconds: Option<i64>) {
        self.vault().clock = unix_seconds;
    }

    /// A secret's version ids in the order they were written.
    pub fn version_ids(&self, name: &str) -> Vec<String> {
        let v = self.vault();
        v.secrets
            .get(&name.to_ascii_lowercase())
            .map(|s| s.versions.iter().map(|x| x.id.clone()).collect())
            .unwrap_or_default()
    }

    /// What holds the name, if anything: "deleting", "deleted",
    /// "recovering", "purging"; "live" for a secret that can be read;
    /// `None` when the name is free.
    pub fn state(&self, name: &str) -> Option<&'static str> {
        let v = self.vault();
        let key = name.to_ascii_lowercase();
        if v.secrets.contains_key(&key) {
            return Some("live");
        }
        v.held.get(&key).map(|h| match h {
            Held::Deleting { .. } => "deleting",
            Held::Deleted { .. } => "deleted",
            Held::Recovering { .. } => "recovering",
            Held::Purging { .. } => "purging",
        })
    }

    /// The latest version as stored: (value, content type, tags).
    pub fn stored(&self, name: &str) -> Option<(String, Option<String>, BTreeMap<String, String>)> {
        let v = self.vault();
        let ver = v.secrets.get(&name.to_ascii_lowercase())?.versions.last()?.clone();
        Some((ver.value, ver.content_type, ver.tags))
    }

    /// An outage: every vault request answers 503 until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.vault().down = down;
    }

    /// Revokes a client's credentials: its tokens stop working and it gets
    /// no new ones (as when its client secret expires).
    pub fn revoke_client(&self, client_id: &str) {
        let mut v = self.vault();
        v.tokens.retain(|_, t| t.client != client_id);
        v.revoked.insert(client_id.to_string());
    }

    /// Sets the latest version's expiry (`exp`, Unix seconds), as
    /// `az keyvault secret set-attributes --expires` would.
    pub fn set_expiry(&self, name: &str, exp: i64) {
        if let Some(v) = self.vault().secrets.get_mut(&name.to_ascii_lowercase()).and_then(|s| s.versions.last_mut()) {
            v.expires = Some(exp);
        }
    }

    /// Writes a secret as another tool would (no Keybridge tags). Panics if
    /// a deletion holds the name, which the service would refuse (409).
    pub fn put_out_of_band(&self, name: &str, value: &str, content_type: Option<&str>) {
        let mut v = self.vault();
        let key = name.to_ascii_lowercase();
        assert!(!v.held.contains_key(&key), "{name} is held by a deletion: Key Vault would answer 409");
        let id = new_id(&mut v);
        let t = v.now();
        let version = Version {
            id,
            value: value.into(),
            content_type: content_type.map(str::to_string),
            tags: BTreeMap::new(),
            enabled: true,
            expires: None,
            created: t,
            updated: t,
        };
        v.secrets
            .entry(key)
            .or_insert_with(|| Secret { name: name.into(), versions: Vec::new() })
            .versions
            .push(version);
    }
}

impl KeyVault {
    /// Creates an RSA key of `bits` (or a new version of it, which becomes
    /// current) with every RSA operation allowed, as
    /// `az keyvault key create --kty RSA --size <bits>` would; returns the
    /// new version's id. Generates the key pair on the calling thread.
    pub fn create_key(&self, name: &str, bits: usize) -> String {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).expect("generate an RSA key");
        let job = KeyJob {
            name: name.to_string(),
            kty: "RSA".into(),
            size: bits,
            ops: DEFAULT_RSA_OPS.iter().map(|o| o.to_string()).collect(),
            enabled: true,
            tags: BTreeMap::new(),
        };
        insert_key(&mut self.vault(), job, private).1.id
    }

    /// A key's version ids in the order they were created (the last is
    /// the current version); empty for an unknown key.
    pub fn key_version_ids(&self, name: &str) -> Vec<String> {
        let v = self.vault();
        v.keys
            .get(&name.to_ascii_lowercase())
            .map(|k| k.versions.iter().map(|x| x.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Enables or disables one version of a key, as
    /// `az keyvault key set-attributes --enabled` would. Panics if there
    /// is no such version.
    pub fn set_key_enabled(&self, name: &str, version: &str, enabled: bool) {
        let mut v = self.vault();
        let ver = v
            .keys
            .get_mut(&name.to_ascii_lowercase())
            .and_then(|k| k.versions.iter_mut().find(|x| x.id == version))
            .unwrap_or_else(|| panic!("no key version {name}/{version}"));
        ver.enabled = enabled;
    }

    /// Sets the operations (`key_ops`) one version of a key allows.
    /// Panics if there is no such version.
    pub fn set_key_ops(&self, name: &str, version: &str, ops: &[&str]) {
        let mut v = self.vault();
        let ver = v
            .keys
            .get_mut(&name.to_ascii_lowercase())
            .and_then(|k| k.versions.iter_mut().find(|x| x.id == version))
            .unwrap_or_else(|| panic!("no key version {name}/{version}"));
        ver.ops = ops.iter().map(|o| o.to_string()).collect();
    }
}

fn new_id(v: &mut Vault) -> String {
    v.next += 1;
    let r: u128 = rand::random();
    format!("{:032x}", r ^ u128::from(v.next))
}

async fn token(
    State(s): State<Shared>,
    Path(tenant): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let entra = |status: StatusCode, error: &str, code: i32, description: &str| {
        (status, Json(json!({ "error": error, "error_description": description, "error_codes": [code] })))
            .into_response()
    };
    if tenant != s.tenant {
        return entra(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return entra(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    let client = f.get("client_id").cloned().unwrap_or_default();
    if s.vault.lock().unwrap_or_else(|p| p.into_inner()).revoked.contains(&client) {
        return entra(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            "AADSTS7000222: The provided client secret keys for app are expired.",
        );
    }
    let Some((secret, writer)) = s.clients.get(&client).cloned() else {
        return entra(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("AADSTS700016: Application with identifier '{client}' was not found in the directory."),
        );
    };
    if f.get("client_secret") != Some(&secret) {
        return entra(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    if f.get("scope").map(String::as_str) != Some("https://vault.azure.net/.default") {
        return entra(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let r: u128 = rand::random();
    let access = format!("kvtest.{r:032x}");
    let mut v = s.vault.lock().unwrap_or_else(|p| p.into_inner());
    *v.by_kind.entry("token").or_default() += 1;
    let lifetime = v.token_lifetime;
    v.tokens.insert(access.clone(), Token { writer, client, expires: Instant::now() + lifetime });
    let secs = lifetime.as_secs();
    Json(json!({ "token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": access }))
        .into_response()
}

fn attributes(v: &Version) -> Value {
    let mut a = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": RECOVERABLE_DAYS,
    });
    if let Some(e) = v.expires {
        a["exp"] = json!(e);
    }
    a
}

fn bundle(base: &str, s: &Secret, v: &Version, with_value: bool) -> Value {
    let mut b = json!({
        "id": format!("{base}/secrets/{}/{}", s.name, v.id),
        "attributes": attributes(v),
        "tags": v.tags,
    });
    if let Some(ct) = &v.content_type {
        b["contentType"] = json!(ct);
    }
    if with_value {
        b["value"] = json!(v.value);
    }
    b
}

fn item(base: &str, s: &Secret, v: &Version, with_version: bool) -> Value {
    let id =
        if with_version { format!("{base}/secrets/{}/{}", s.name, v.id) } else { format!("{base}/secrets/{}", s.name) };
    let mut i = json!({ "id": id, "attributes": attributes(v), "tags": v.tags });
    if let Some(ct) = &v.content_type {
        i["contentType"] = json!(ct);
    }
    i
}

fn deleted_bundle(base: &str, secret: &Secret, deleted: i64) -> Value {
    let latest = secret.versions.last();
    let mut b = latest.map(|v| bundle(base, secret, v, false)).unwrap_or_else(|| json!({}));
    b["recoveryId"] = json!(format!("{base}/deletedsecrets/{}", secret.name));
    b["deletedDate"] = json!(deleted);
    b["scheduledPurgeDate"] = json!(deleted + RECOVERABLE_DAYS * 86_400);
    b
}

fn not_found(name: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "SecretNotFound",
        &format!(
            "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command."
        ),
    )
}

fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One page of `items` from `skip`, with a nextLink when more remain.
fn page(base: &str, path: &str, api: &str, items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    page_of(base, path, api, &items, Value::clone, q)
}

/// As [`page`], rendering only the items of the page.
fn page_of<T>(
    base: &str,
    path: &str,
    api: &str,
    items: &[T],
    render: impl Fn(&T) -> Value,
    q: &HashMap<String, String>,
) -> Response {
    let max = match q.get("maxresults") {
        None => PAGE_MAX,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => n,
            _ => {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    &format!("Invalid maxresults value {m}: it must be between 1 and {PAGE_MAX}."),
                );
            }
        },
    };
    let skip: usize = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items.iter().skip(skip).take(max).map(render).collect();
    let next = (skip + max < total)
        .then(|| format!("{base}{path}?api-version={api}&$skiptoken={}&maxresults={max}", skip + max));
    Json(json!({ "value": value, "nextLink": next })).into_response()
}

async fn vault_api(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let mut job = None;
    let answer = dispatch(&s, &method, &uri, &headers, &q, &body, &mut job);
    match job {
        Some(job) => make_key(&s, job).await,
        None => answer,
    }
}

/// Answers one vault request under the vault's lock. A request that
/// creates a key version sets `job` instead (its answer is then unused):
/// the RSA key is generated outside the lock, by [`make_key`].
fn dispatch(
    s: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &[u8],
    job: &mut Option<KeyJob>,
) -> Response {
    let base = s.base.clone();
    let mut v = s.vault.lock().unwrap_or_else(|p| p.into_inner());
    v.settle();
    v.requests += 1;
    if v.down {
        return err(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The service is temporarily unavailable.");
    }
    // Authentication first, as Key Vault does: the challenge names the
    // authority and the resource the token must be for.
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string);
    let kind = match (method, uri.path()) {
        (_, _) if token.is_none() => "challenge",
        (&Method::GET, p)
            if ["/secrets", "/secrets/", "/deletedsecrets", "/keys", "/keys/"].contains(&p)
                || p.ends_with("/versions") =>
        {
            "list"
        }
        (&Method::GET, _) => "read",
        (&Method::POST, p) if p.starts_with("/keys/") && p.rsplit('/').next().and_then(key_operation).is_some() => {
            "crypto"
        }
        _ => "write",
    };
    *v.by_kind.entry(kind).or_default() += 1;
    let challenge = format!("Bearer authorization=\"{base}/{}\", resource=\"https://vault.azure.net\"", s.tenant);
    let unauthorized = |message: &str| {
        let mut r = err(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        r.headers_mut().insert("www-authenticate", HeaderValue::from_str(&challenge).expect("header"));
        r
    };
    let Some(token) = token else {
        return unauthorized("AKV10000: Request is missing a Bearer or PoP token.");
    };
    let writer = match v.tokens.get(&token) {
        None => {
            return unauthorized(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/..., found an unknown token.",
            );
        }
        Some(t) if t.expires <= Instant::now() => {
            v.expired += 1;
            return unauthorized("[TokenExpired] Error validating token: 'S2S12086'.");
        }
        Some(t) => t.writer,
    };
    let Some(api) = q.get("api-version").cloned() else {
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            "The request URI contains an invalid or missing api-version.",
        );
    };
    if !v.api_versions.contains(&api) {
        let latest = v.api_versions.last().cloned().unwrap_or_default();
        return err(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            &format!(
                "The specified version ({api}) is not recognized. Consider using the latest supported version ({latest})."
            ),
        );
    }
    if v.throttle > 0 {
        v.throttle -= 1;
        let mut r = err(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
        );
        r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        return r;
    }
    let forbidden = |op: &str| {
        err_inner(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "ForbiddenByPolicy",
            &format!("The user, group or application does not have secrets {op} permission on key vault."),
        )
    };
    let keys_forbidden = |op: &str| {
        err_inner(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "ForbiddenByPolicy",
            &format!("The user, group or application does not have keys {op} permission on key vault."),
        )
    };
    let json_body = || -> Result<Value, String> {
        serde_json::from_slice(body).map_err(|e| format!("The request body is not valid JSON: {e}"))
    };
    let segs: Vec<String> = uri.path().trim_start_matches('/').split('/').map(str::to_string).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method, segs.as_slice()) {
        (&Method::GET, ["secrets"]) | (&Method::GET, ["secrets", ""]) => {
            // In name order already; only the page asked for is rendered
            // (a list over 100,000 secrets costs one page, as in Azure).
            let live: Vec<&Secret> = v.secrets.values().filter(|sec| !sec.versions.is_empty()).collect();
            page_of(
                &base,
                "/secrets",
                &api,
                &live,
                |sec| item(&base, sec, sec.versions.last().expect("live"), false),
                q,
            )
        }
        (&Method::GET, ["secrets", name, "versions"]) => match v.secrets.get(&name.to_ascii_lowercase()) {
            Some(sec) => {
                // By id: stable for the secret, not the order of writing.
                let mut versions: Vec<&Version> = sec.versions.iter().collect();
                versions.sort_by(|a, b| a.id.cmp(&b.id));
                let items = versions.into_iter().map(|ver| item(&base, sec, ver, true)).collect();
                page(&base, &format!("/secrets/{name}/versions"), &api, items, q)
            }
            None => not_found(name),
        },
        (&Method::GET, ["secrets", name, rest @ ..]) if rest.len() <= 1 => {
            let version = rest.first().copied().unwrap_or("");
            let Some(sec) = v.secrets.get(&name.to_ascii_lowercase()) else { return not_found(name) };
            let ver =
                if version.is_empty() { sec.versions.last() } else { sec.versions.iter().find(|x| x.id == version) };
            match ver {
                Some(ver) if !ver.enabled => err_inner(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "SecretDisabled",
                    "Operation get is not allowed on a disabled secret.",
                ),
                Some(ver) => Json(bundle(&base, sec, ver, true)).into_response(),
                None => not_found(&format!("{name}/{version}")),
            }
        }
        (&Method::PUT, ["secrets", name]) => {
            if !writer {
                return forbidden("set");
            }
            if !valid_name(name) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    &format!(
                        "The request URI contains an invalid name: {name}. Secret names are 1-127 characters of 0-9, a-z, A-Z and -."
                    ),
                );
            }
            let key = name.to_ascii_lowercase();
            if let Some(held) = v.held.get(&key) {
                let (inner, message) = match held {
                    Held::Deleting { .. } | Held::Purging { .. } => (
                        "ObjectIsBeingDeleted",
                        format!("Secret {name} is currently being deleted and cannot be re-created; retry later."),
                    ),
                    Held::Recovering { .. } => (
                        "ObjectIsBeingRecovered",
                        format!("Secret {name} is currently being recovered and cannot be re-created; retry later."),
                    ),
                    Held::Deleted { .. } => (
                        "ObjectIsDeletedButRecoverable",
                        format!(
                            "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
                        ),
                    ),
                };
                return err_inner(StatusCode::CONFLICT, "Conflict", inner, &message);
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            let Some(value) = b["value"].as_str() else {
                return err(StatusCode::BAD_REQUEST, "BadParameter", "Property value is required.");
            };
            if value.len() > MAX_VALUE {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "The secret value exceeds the maximum size of 25 KB.",
                );
            }
            let tags: BTreeMap<String, String> = serde_json::from_value(b["tags"].clone()).unwrap_or_default();
            if tags.len() > 15 {
                return err(StatusCode::BAD_REQUEST, "BadParameter", "A secret may have at most 15 tags.");
            }
            let id = new_id(&mut v);
            let t = v.now();
            let ver = Version {
                id,
                value: value.to_string(),
                content_type: b["contentType"].as_str().map(str::to_string),
                tags,
                enabled: b["attributes"]["enabled"].as_bool().unwrap_or(true),
                expires: b["attributes"]["exp"].as_i64(),
                created: t,
                updated: t,
            };
            let sec = v.secrets.entry(key).or_insert_with(|| Secret { name: name.to_string(), versions: Vec::new() });
            sec.versions.push(ver.clone());
            let sec = sec.clone();
            Json(bundle(&base, &sec, &ver, true)).into_response()
        }
        (&Method::PATCH, ["secrets", name, rest @ ..]) if rest.len() <= 1 => {
            if !writer {
                return forbidden("set");
            }
            let version = rest.first().copied().unwrap_or("");
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            let t = v.now();
            let Some(sec) = v.secrets.get_mut(&name.to_ascii_lowercase()) else { return not_found(name) };
            let ver = if version.is_empty() {
                sec.versions.last_mut()
            } else {
                sec.versions.iter_mut().find(|x| x.id == version)
            };
            let Some(ver) = ver else { return not_found(&format!("{name}/{version}")) };
            if let Some(e) = b["attributes"]["enabled"].as_bool() {
                ver.enabled = e;
            }
            if let Some(e) = b["attributes"]["exp"].as_i64() {
                ver.expires = Some(e);
            }
            if let Some(ct) = b.get("contentType").and_then(Value::as_str) {
                ver.content_type = Some(ct.to_string());
            }
            if b.get("tags").is_some_and(|t| !t.is_null()) {
                ver.tags = serde_json::from_value(b["tags"].clone()).unwrap_or_default();
            }
            ver.updated = t;
            let (ver, sec) = (ver.clone(), sec.clone());
            Json(bundle(&base, &sec, &ver, false)).into_response()
        }
        (&Method::DELETE, ["secrets", name]) => {
            if !writer {
                return forbidden("delete");
            }
            let key = name.to_ascii_lowercase();
            if matches!(v.held.get(&key), Some(Held::Recovering { .. })) {
                return being_recovered();
            }
            let Some(secret) = v.secrets.remove(&key) else { return not_found(name) };
            let deleted = v.now();
            let out = deleted_bundle(&base, &secret, deleted);
            let ready = v.ready();
            v.held.insert(key, Held::Deleting { secret, deleted, ready });
            Json(out).into_response()
        }
        (&Method::GET, ["deletedsecrets"]) => {
            let mut all: Vec<(&Secret, i64)> = v
                .held
                .values()
                .filter_map(|h| match h {
                    Held::Deleted { secret, deleted } => Some((secret, *deleted)),
                    _ => None,
                })
                .collect();
            all.sort_by_key(|(s, _)| s.name.to_ascii_lowercase());
            let items = all.iter().map(|(s, d)| deleted_bundle(&base, s, *d)).collect();
            page(&base, "/deletedsecrets", &api, items, q)
        }
        (&Method::GET, ["deletedsecrets", name]) => match v.held.get(&name.to_ascii_lowercase()) {
            Some(Held::Deleted { secret, deleted }) => Json(deleted_bundle(&base, secret, *deleted)).into_response(),
            _ => not_found(name),
        },
        (&Method::POST, ["deletedsecrets", name, "recover"]) => {
            if !writer {
                return forbidden("recover");
            }
            let key = name.to_ascii_lowercase();
            match v.held.remove(&key) {
                Some(Held::Deleted { secret, .. }) => {
                    let out = secret.versions.last().map(|ver| bundle(&base, &secret, ver, false)).unwrap_or_default();
                    let ready = v.ready();
                    v.held.insert(key, Held::Recovering { secret, ready });
                    Json(out).into_response()
                }
                Some(h) => {
                    let busy = match &h {
                        Held::Deleting { .. } => Some(being_deleted()),
                        Held::Recovering { .. } => Some(being_recovered()),
                        _ => None,
                    };
                    v.held.insert(key, h);
                    busy.unwrap_or_else(|| not_found(name))
                }
                None => not_found(name),
            }
        }
        (&Method::DELETE, ["deletedsecrets", name]) => {
            if !writer {
                return forbidden("purge");
            }
            let key = name.to_ascii_lowercase();
            match v.held.get(&key) {
                Some(Held::Deleted { .. }) => {
                    let ready = v.ready();
                    v.held.insert(key, Held::Purging { ready });
                    StatusCode::NO_CONTENT.into_response()
                }
                Some(Held::Deleting { .. }) => being_deleted(),
                Some(Held::Recovering { .. }) => being_recovered(),
                Some(Held::Purging { .. }) | None => not_found(name),
            }
        }
        (&Method::GET, ["keys"]) | (&Method::GET, ["keys", ""]) => {
            let mut keys: Vec<&Key> = v.keys.values().collect();
            keys.sort_by_key(|k| k.name.to_ascii_lowercase());
            let items = keys
                .iter()
                .filter_map(|k| {
                    let ver = k.versions.last()?;
                    Some(json!({
                        "kid": format!("{base}/keys/{}", k.name),
                        "attributes": key_attributes(ver),
                        "tags": ver.tags,
                    }))
                })
                .collect();
            page(&base, "/keys", &api, items, q)
        }
        (&Method::GET, ["keys", name, "versions"]) => match v.keys.get(&name.to_ascii_lowercase()) {
            Some(key) => {
                let mut versions: Vec<&KeyVersion> = key.versions.iter().collect();
                versions.sort_by(|a, b| a.id.cmp(&b.id));
                let items = versions
                    .into_iter()
                    .map(|ver| json!({ "kid": kid(&base, key, ver), "attributes": key_attributes(ver), "tags": ver.tags }))
                    .collect();
                page(&base, &format!("/keys/{name}/versions"), &api, items, q)
            }
            None => key_not_found(name),
        },
        (&Method::POST, ["keys", name, "create"]) => {
            if !writer {
                return keys_forbidden("create");
            }
            if !valid_name(name) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    &format!(
                        "The request URI contains an invalid name: {name}. Key names are 1-127 characters of 0-9, a-z, A-Z and -."
                    ),
                );
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            match key_job(name, &b) {
                Ok(j) => {
                    *job = Some(j);
                    StatusCode::ACCEPTED.into_response()
                }
                Err(m) => err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            }
        }
        (&Method::POST, ["keys", name, "rotate"]) => {
            if !writer {
                return keys_forbidden("rotate");
            }
            let Some(key) = v.keys.get(&name.to_ascii_lowercase()) else { return key_not_found(name) };
            let Some(latest) = key.versions.last() else { return key_not_found(name) };
            *job = Some(KeyJob {
                name: key.name.clone(),
                kty: latest.kty.clone(),
                size: latest.size,
                ops: latest.ops.clone(),
                enabled: true,
                tags: latest.tags.clone(),
            });
            StatusCode::ACCEPTED.into_response()
        }
        (&Method::POST, ["keys", name, version, op]) if key_operation(op).is_some() => {
            let op = key_operation(op).unwrap_or_default();
            if !writer {
                return keys_forbidden(op);
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            run_key_operation(&v, &base, name, version, op, &b)
        }
        (&Method::POST, ["keys", name, op]) if key_operation(op).is_some() => {
            let op = key_operation(op).unwrap_or_default();
            if !writer {
                return keys_forbidden(op);
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            run_key_operation(&v, &base, name, "", op, &b)
        }
        (&Method::GET, ["keys", name, rest @ ..]) if rest.len() <= 1 => {
            let version = rest.first().copied().unwrap_or("");
            let Some(key) = v.keys.get(&name.to_ascii_lowercase()) else { return key_not_found(name) };
            match find_key_version(key, version) {
                // Key Vault hands out a disabled key's public part (only
                // the operations are refused).
                Some(ver) => Json(key_bundle(&base, key, ver)).into_response(),
                None => key_not_found(&format!("{name}/{version}")),
            }
        }
        (&Method::PATCH, ["keys", name, rest @ ..]) if rest.len() <= 1 => {
            if !writer {
                return keys_forbidden("update");
            }
            let version = rest.first().copied().unwrap_or("");
            let b = match json_body() {
                Ok(b) => b,
                Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
            };
            let ops = match b.get("key_ops").filter(|o| !o.is_null()) {
                Some(o) => match key_ops(o) {
                    Ok(ops) => Some(ops),
                    Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
                },
                None => None,
            };
            let tags = match b.get("tags").filter(|t| !t.is_null()) {
                Some(t) => match key_tags(t) {
                    Ok(tags) => Some(tags),
                    Err(m) => return err(StatusCode::BAD_REQUEST, "BadParameter", &m),
                },
                None => None,
            };
            let t = v.now();
            let Some(key) = v.keys.get_mut(&name.to_ascii_lowercase()) else { return key_not_found(name) };
            let found = if version.is_empty() {
                key.versions.last_mut()
            } else {
                key.versions.iter_mut().find(|x| x.id == version)
            };
            let Some(ver) = found else { return key_not_found(&format!("{name}/{version}")) };
            if let Some(e) = b["attributes"]["enabled"].as_bool() {
                ver.enabled = e;
            }
            if let Some(ops) = ops {
                ver.ops = ops;
            }
            if let Some(tags) = tags {
                ver.tags = tags;
            }
            ver.updated = t;
            let ver = ver.clone();
            Json(key_bundle(&base, key, &ver)).into_response()
        }
        _ => err(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{method} {} is not an operation of this vault", uri.path()),
        ),
    }
}

/// Stores a new version of `job`'s key (creating the key), the current one
/// from now on; the key and the version as stored.
fn insert_key(v: &mut Vault, job: KeyJob, private: rsa::RsaPrivateKey) -> (Key, KeyVersion) {
    let id = new_id(v);
    let t = v.now();
    let ver = KeyVersion {
        id,
        kty: job.kty,
        size: job.size,
        private: Arc::new(private),
        ops: job.ops,
        enabled: job.enabled,
        created: t,
        updated: t,
        tags: job.tags,
    };
    let key = v
        .keys
        .entry(job.name.to_ascii_lowercase())
        .or_insert_with(|| Key { name: job.name.clone(), versions: Vec::new() });
    key.versions.push(ver.clone());
    (key.clone(), ver)
}

/// Generates the key pair of a create or rotate request off the async
/// workers and outside the vault's lock, then stores it.
async fn make_key(s: &Shared, job: KeyJob) -> Response {
    let bits = job.size;
    let generated = tokio::task::spawn_blocking(move || rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits)).await;
    let Ok(Ok(private)) = generated else {
        return err(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "The key could not be generated.");
    };
    let mut v = s.vault.lock().unwrap_or_else(|p| p.into_inner());
    v.settle();
    let (key, ver) = insert_key(&mut v, job, private);
    Json(key_bundle(&s.base, &key, &ver)).into_response()
}

/// The operation a `/keys/{name}/{version}/{op}` path names (any case, as
/// SDKs send `wrapkey` or `wrapKey`).
fn key_operation(op: &str) -> Option<&'static str> {
    ["wrapKey", "unwrapKey"].into_iter().find(|o| o.eq_ignore_ascii_case(op))
}

/// Validates a CreateKey body: `kty`, `key_size`, `public_exponent`,
/// `key_ops`, `attributes.enabled`, `tags`; the message of a 400
/// `BadParameter` if it is not one.
fn key_job(name: &str, b: &Value) -> Result<KeyJob, String> {
    let bad = |m: &str| m.to_string();
    let kty = match b.get("kty").and_then(Value::as_str) {
        None => return Err(bad("Property kty is required.")),
        Some(k @ ("RSA" | "RSA-HSM")) => k.to_string(),
        Some(k) => {
            return Err(bad(&format!(
                "The key type {k} is not supported by this vault (it creates RSA and RSA-HSM keys)."
            )));
        }
    };
    let size = match b.get("key_size").filter(|s| !s.is_null()) {
        None => 2048,
        Some(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if KEY_SIZES.contains(&n) => n,
            _ => {
                return Err(bad(&format!("The key size {n} is not valid for key type {kty}: use 2048, 3072 or 4096.")));
            }
        },
    };
    if let Some(e) = b.get("public_exponent").filter(|e| !e.is_null())
        && e.as_u64() != Some(65537)
    {
        return Err(bad(&format!("The public exponent {e} is not supported: use 65537.")));
    }
    let ops = match b.get("key_ops").filter(|o| !o.is_null()) {
        None => DEFAULT_RSA_OPS.iter().map(|o| o.to_string()).collect(),
        Some(o) => key_ops(o)?,
    };
    let tags = match b.get("tags").filter(|t| !t.is_null()) {
        None => BTreeMap::new(),
        Some(t) => key_tags(t)?,
    };
    Ok(KeyJob {
        name: name.to_string(),
        kty,
        size,
        ops,
        enabled: b["attributes"]["enabled"].as_bool().unwrap_or(true),
        tags,
    })
}

/// `key_ops`: an array of JSON Web Key operations.
fn key_ops(o: &Value) -> Result<Vec<String>, String> {
    let bad = |m: &str| m.to_string();
    let Some(list) = o.as_array() else { return Err(bad("Property key_ops must be an array of key operations.")) };
    let mut ops = Vec::new();
    for op in list {
        match op.as_str() {
            Some(op) if KEY_OPS.contains(&op) => {
                if !ops.iter().any(|o: &String| o == op) {
                    ops.push(op.to_string());
                }
            }
            _ => {
                return Err(bad(&format!("Invalid key operation {op}: key_ops takes {}.", KEY_OPS.join(", "))));
            }
        }
    }
    Ok(ops)
}

/// `tags`: at most 15 string values.
fn key_tags(t: &Value) -> Result<BTreeMap<String, String>, String> {
    let bad = |m: &str| m.to_string();
    let tags: BTreeMap<String, String> =
        serde_json::from_value(t.clone()).map_err(|_| bad("Property tags must map names to strings."))?;
    if tags.len() > 15 {
        return Err(bad("A key may have at most 15 tags."));
    }
    Ok(tags)
}

/// The version `version` names: the current one when empty.
fn find_key_version<'a>(key: &'a Key, version: &str) -> Option<&'a KeyVersion> {
    if version.is_empty() { key.versions.last() } else { key.versions.iter().find(|x| x.id == version) }
}

/// wrapKey or unwrapKey with `{alg, value}` on a version (the current one
/// when `version` is empty): Key Vault's checks in its order, then the RSA
/// operation itself.
fn run_key_operation(v: &Vault, base: &str, name: &str, version: &str, op: &str, b: &Value) -> Response {
    use base64::Engine as _;
    let bad = |m: &str| err(StatusCode::BAD_REQUEST, "BadParameter", m);
    let Some(key) = v.keys.get(&name.to_ascii_lowercase()) else { return key_not_found(name) };
    let Some(ver) = find_key_version(key, version) else { return key_not_found(&format!("{name}/{version}")) };
    if !ver.enabled {
        return err_inner(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "KeyDisabled",
            &format!("Operation {op} is not allowed on a disabled key."),
        );
    }
    if !ver.ops.iter().any(|o| o == op) {
        return err_inner(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "KeyOperationForbidden",
            &format!("Operation {op} is not permitted on this key."),
        );
    }
    let alg = match b.get("alg").and_then(Value::as_str) {
        None => return bad("Property alg is required."),
        Some(a) if WRAP_ALGORITHMS.contains(&a) => a,
        Some(a) => {
            return bad(&format!("Invalid algorithm {a} for an RSA key: use {}.", WRAP_ALGORITHMS.join(", ")));
        }
    };
    let Some(value) = b.get("value").and_then(Value::as_str) else { return bad("Property value is required.") };
    let Ok(value) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')) else {
        return bad("Property value is not base64url.");
    };
    let modulus = ver.size / 8;
    let out = if op == "wrapKey" {
        match rsa_wrap(&ver.private, alg, &value) {
            Ok(w) => w,
            Err(_) => {
                return bad(&format!("The value is too long to wrap with {alg} and a {}-bit key.", ver.size));
            }
        }
    } else {
        if value.len() != modulus {
            return bad(&format!(
                "The value is {} bytes; a value wrapped by a {}-bit key is {modulus} bytes.",
                value.len(),
                ver.size
            ));
        }
        match rsa_unwrap(&ver.private, alg, &value) {
            Ok(p) => p,
            Err(_) => return bad(&format!("The value cannot be unwrapped with {alg} by this key version.")),
        }
    };
    Json(json!({
        "kid": kid(base, key, ver),
        "value": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out),
    }))
    .into_response()
}

/// Encrypts `value` under the version's public key with `alg`
/// (one of [`WRAP_ALGORITHMS`]).
fn rsa_wrap(private: &rsa::RsaPrivateKey, alg: &str, value: &[u8]) -> rsa::Result<Vec<u8>> {
    let public = private.to_public_key();
    let mut rng = rand::thread_rng();
    match alg {
        "RSA-OAEP-256" => public.encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), value),
        "RSA-OAEP" => public.encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), value),
        _ => public.encrypt(&mut rng, rsa::Pkcs1v15Encrypt, value),
    }
}

/// Decrypts `value` with the private key (blinded) and `alg`.
fn rsa_unwrap(private: &rsa::RsaPrivateKey, alg: &str, value: &[u8]) -> rsa::Result<Vec<u8>> {
    let mut rng = rand::thread_rng();
    match alg {
        "RSA-OAEP-256" => private.decrypt_blinded(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), value),
        "RSA-OAEP" => private.decrypt_blinded(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), value),
        _ => private.decrypt_blinded(&mut rng, rsa::Pkcs1v15Encrypt, value),
    }
}

/// `https://<host>/keys/<name>/<version>`.
fn kid(base: &str, key: &Key, ver: &KeyVersion) -> String {
    format!("{base}/keys/{}/{}", key.name, ver.id)
}

fn key_attributes(v: &KeyVersion) -> Value {
    json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": RECOVERABLE_DAYS,
    })
}

/// A KeyBundle: the JSON Web Key's public part, the attributes, the tags.
fn key_bundle(base: &str, key: &Key, ver: &KeyVersion) -> Value {
    use base64::Engine as _;
    use rsa::traits::PublicKeyParts as _;
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({
        "key": {
            "kid": kid(base, key, ver),
            "kty": ver.kty,
            "key_ops": ver.ops,
            "n": b64(ver.private.n().to_bytes_be()),
            "e": b64(ver.private.e().to_bytes_be()),
        },
        "attributes": key_attributes(ver),
        "tags": ver.tags,
    })
}

fn key_not_found(name: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        &format!(
            "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command."
        ),
    )
}

#[cfg(test)]
mod key_tests {
    use super::*;
    use axum::body::Bytes;
    use base64::Engine as _;

    const API: &str = "2025-07-01";
    const WRITER: &str = "writer-token";
    const READER: &str = "reader-token";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn unb64(v: &Value) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.as_str().expect("a string")).expect("base64url")
    }

    /// A vault with a token for the writer and one for the reader.
    fn vault() -> Shared {
        let s = Shared::new("https://127.0.0.1:1".into());
        let mut v = s.vault.lock().unwrap();
        let expires = Instant::now() + Duration::from_secs(3600);
        v.tokens.insert(WRITER.into(), Token { writer: true, client: CLIENT_ID.into(), expires });
        v.tokens.insert(READER.into(), Token { writer: false, client: READER_ID.into(), expires });
        drop(v);
        s
    }

    /// One request through the vault's handler (no TLS, no HTTP).
    async fn call(s: &Shared, token: Option<&str>, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let uri: Uri = format!("{path}?api-version={API}").parse().unwrap();
        let q = Query::<HashMap<String, String>>::try_from_uri(&uri).unwrap();
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let body = if body.is_null() { Bytes::new() } else { Bytes::from(serde_json::to_vec(&body).unwrap()) };
        let r = vault_api(State(s.clone()), method, uri, headers, q, body).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn writer(s: &Shared, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        call(s, Some(WRITER), method, path, body).await
    }

    /// The version at the end of a kid.
    fn version(kid: &Value) -> String {
        kid.as_str().unwrap().rsplit('/').next().unwrap().to_string()
    }

    fn code(body: &Value) -> (&str, &str) {
        (body["error"]["code"].as_str().unwrap_or(""), body["error"]["innererror"]["code"].as_str().unwrap_or(""))
    }

    #[tokio::test]
    async fn keys_are_created_read_rotated_and_listed() {
        let s = vault();
        let (st, b) = writer(&s, Method::POST, "/keys/Unseal/create", json!({"kty": "RSA"})).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let kid = b["key"]["kid"].as_str().unwrap().to_string();
        assert!(kid.starts_with("https://127.0.0.1:1/keys/Unseal/") && version(&b["key"]["kid"]).len() == 32, "{kid}");
        assert_eq!(b["key"]["kty"], "RSA");
        assert_eq!(unb64(&b["key"]["n"]).len(), 256, "2048 bits by default");
        assert_eq!(unb64(&b["key"]["e"]), vec![1, 0, 1]);
        assert_eq!(b["key"]["key_ops"], json!(DEFAULT_RSA_OPS));
        assert!(b["key"].get("d").is_none(), "never the private part");
        assert_eq!(b["attributes"]["enabled"], true);
        assert!(b["attributes"]["created"].as_i64().is_some());

        // Read by any case, with and without the version.
        let (st, got) = writer(&s, Method::GET, "/keys/unseal", Value::Null).await;
        assert_eq!((st, got["key"]["kid"].as_str()), (StatusCode::OK, Some(kid.as_str())));
        let (st, got) =
            writer(&s, Method::GET, &format!("/keys/unseal/{}", version(&b["key"]["kid"])), Value::Null).await;
        assert_eq!((st, got["key"]["n"].clone()), (StatusCode::OK, b["key"]["n"].clone()));

        // Rotate: a new current version like the old one.
        let (st, r) = writer(&s, Method::POST, "/keys/unseal/rotate", Value::Null).await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_ne!(r["key"]["kid"], b["key"]["kid"]);
        assert_ne!(r["key"]["n"], b["key"]["n"]);
        let (_, got) = writer(&s, Method::GET, "/keys/unseal", Value::Null).await;
        assert_eq!(got["key"]["kid"], r["key"]["kid"]);

        let (st, list) = writer(&s, Method::GET, "/keys/unseal/versions", Value::Null).await;
        assert_eq!((st, list["value"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)));
        let (_, list) = writer(&s, Method::GET, "/keys", Value::Null).await;
        assert_eq!(list["value"][0]["kid"], "https://127.0.0.1:1/keys/Unseal");

        // Sizes, types and operations as Key Vault takes them.
        let (st, b) = writer(
            &s,
            Method::POST,
            "/keys/big/create",
            json!({"kty": "RSA-HSM", "key_size": 3072, "key_ops": ["wrapKey", "unwrapKey"]}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{b}");
        assert_eq!((unb64(&b["key"]["n"]).len(), &b["key"]["key_ops"]), (384, &json!(["wrapKey", "unwrapKey"])));
        for (body, text) in [
            (json!({"kty": "RSA", "key_size": 1024}), "key size 1024"),
            (json!({"kty": "RSA", "key_size": "2048"}), "key size"),
            (json!({"kty": "EC"}), "key type EC"),
            (json!({"key_size": 2048}), "kty is required"),
            (json!({"kty": "RSA", "key_ops": ["fly"]}), "Invalid key operation"),
            (json!({"kty": "RSA", "public_exponent": 3}), "public exponent"),
        ] {
            let (st, e) = writer(&s, Method::POST, "/keys/k/create", body.clone()).await;
            assert_eq!((st, code(&e).0), (StatusCode::BAD_REQUEST, "BadParameter"), "{body}");
            assert!(e["error"]["message"].as_str().unwrap().contains(text), "{e}");
        }
        let (st, e) = writer(&s, Method::POST, "/keys/bad_name/create", json!({"kty": "RSA"})).await;
        assert_eq!((st, code(&e).0), (StatusCode::BAD_REQUEST, "BadParameter"));
        for path in ["/keys/nope", "/keys/unseal/0123456789abcdef0123456789abcdef", "/keys/nope/rotate"] {
            let method = if path.ends_with("rotate") { Method::POST } else { Method::GET };
            let (st, e) = writer(&s, method, path, Value::Null).await;
            assert_eq!((st, code(&e).0), (StatusCode::NOT_FOUND, "KeyNotFound"), "{path}");
        }
    }

    #[tokio::test]
    async fn wrap_and_unwrap_with_each_algorithm() {
        let s = vault();
        let (_, b) = writer(&s, Method::POST, "/keys/kek/create", json!({"kty": "RSA"})).await;
        let v1 = version(&b["key"]["kid"]);
        let secret = [7u8; 32];
        for alg in WRAP_ALGORITHMS {
            // No version: the current one; the SDK sends `//wrapkey`.
            let (st, w) =
                writer(&s, Method::POST, "/keys/kek//wrapkey", json!({"alg": alg, "value": b64(&secret)})).await;
            assert_eq!(st, StatusCode::OK, "{alg}: {w}");
            assert_eq!(w["kid"], b["key"]["kid"]);
            let wrapped = unb64(&w["value"]);
            assert_eq!(wrapped.len(), 256);
            let (st, u) = writer(
                &s,
                Method::POST,
                &format!("/keys/kek/{v1}/unwrapKey"),
                json!({"alg": alg, "value": w["value"]}),
            )
            .await;
            assert_eq!((st, unb64(&u["value"])), (StatusCode::OK, secret.to_vec()), "{alg}");
            assert_eq!(u["kid"], b["key"]["kid"]);
            // Tampered: refused as Key Vault does.
            let mut bad = wrapped.clone();
            bad[100] ^= 1;
            let (st, e) =
                writer(&s, Method::POST, &format!("/keys/kek/{v1}/unwrapkey"), json!({"alg": alg, "value": b64(&bad)}))
                    .await;
            if *alg == "RSA1_5" {
                // PKCS#1 v1.5 has no integrity: a flipped bit may still unwrap, to other bytes.
                assert!(st == StatusCode::BAD_REQUEST || unb64(&e["value"]) != secret.to_vec());
            } else {
                assert_eq!((st, code(&e).0), (StatusCode::BAD_REQUEST, "BadParameter"), "{alg}: {e}");
            }
        }

        // RSA-OAEP-256 as any JOSE library does it, with the key's public part.
        let public = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&unb64(&b["key"]["n"])),
            rsa::BigUint::from_bytes_be(&unb64(&b["key"]["e"])),
        )
        .unwrap();
        let wrapped =
            public.encrypt(&mut rand::thread_rng(), rsa::Oaep::new::<sha2::Sha256>(), b"root key bytes").unwrap();
        let (st, u) =
            writer(&s, Method::POST, "/keys/kek/unwrapkey", json!({"alg": "RSA-OAEP-256", "value": b64(&wrapped)}))
                .await;
        assert_eq!((st, unb64(&u["value"])), (StatusCode::OK, b"root key bytes".to_vec()));
        // ... but not with RSA-OAEP (SHA-1).
        let (st, _) =
            writer(&s, Method::POST, "/keys/kek/unwrapkey", json!({"alg": "RSA-OAEP", "value": b64(&wrapped)})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);

        for (path, body, text) in [
            ("/keys/kek//wrapkey", json!({"alg": "A256KW", "value": "AAAA"}), "Invalid algorithm"),
            ("/keys/kek//wrapkey", json!({"value": "AAAA"}), "alg is required"),
            ("/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256"}), "value is required"),
            ("/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256", "value": "!!"}), "not base64url"),
            ("/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256", "value": b64(&[1; 191])}), "too long"),
            ("/keys/kek//unwrapkey", json!({"alg": "RSA-OAEP-256", "value": b64(&[1; 255])}), "255 bytes"),
        ] {
            let (st, e) = writer(&s, Method::POST, path, body.clone()).await;
            assert_eq!((st, code(&e).0), (StatusCode::BAD_REQUEST, "BadParameter"), "{body}");
            assert!(e["error"]["message"].as_str().unwrap().contains(text), "{e}");
        }
        let (st, e) =
            writer(&s, Method::POST, "/keys/other//wrapkey", json!({"alg": "RSA-OAEP-256", "value": "AAAA"})).await;
        assert_eq!((st, code(&e).0), (StatusCode::NOT_FOUND, "KeyNotFound"));
        let (st, e) =
            writer(&s, Method::POST, "/keys/kek/0123/unwrapkey", json!({"alg": "RSA-OAEP-256", "value": "AAAA"})).await;
        assert_eq!((st, code(&e).0), (StatusCode::NOT_FOUND, "KeyNotFound"));
    }

    #[tokio::test]
    async fn disabled_versions_and_missing_operations_refuse() {
        let s = vault();
        let (_, b) = writer(&s, Method::POST, "/keys/kek/create", json!({"kty": "RSA"})).await;
        let v1 = version(&b["key"]["kid"]);
        let (_, w) =
            writer(&s, Method::POST, "/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256", "value": "AAAA"})).await;
        let (st, p) =
            writer(&s, Method::PATCH, &format!("/keys/kek/{v1}"), json!({"attributes": {"enabled": false}})).await;
        assert_eq!((st, &p["attributes"]["enabled"]), (StatusCode::OK, &json!(false)));
        // Still shown; its operations refused.
        let (st, _) = writer(&s, Method::GET, "/keys/kek", Value::Null).await;
        assert_eq!(st, StatusCode::OK);
        for op in ["wrapKey", "unwrapKey"] {
            let (st, e) = writer(
                &s,
                Method::POST,
                &format!("/keys/kek/{v1}/{}", op.to_lowercase()),
                json!({"alg": "RSA-OAEP-256", "value": w["value"]}),
            )
            .await;
            assert_eq!((st, code(&e)), (StatusCode::FORBIDDEN, ("Forbidden", "KeyDisabled")), "{op}");
            assert_eq!(e["error"]["message"], format!("Operation {op} is not allowed on a disabled key."));
        }
        // A new version is current and enabled; the old one stays disabled.
        let (_, b2) =
            writer(&s, Method::POST, "/keys/kek/create", json!({"kty": "RSA", "key_ops": ["encrypt", "decrypt"]}))
                .await;
        let v2 = version(&b2["key"]["kid"]);
        let (st, e) =
            writer(&s, Method::POST, "/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256", "value": "AAAA"})).await;
        assert_eq!((st, code(&e)), (StatusCode::FORBIDDEN, ("Forbidden", "KeyOperationForbidden")), "{e}");
        let (st, _) = writer(&s, Method::PATCH, &format!("/keys/kek/{v2}"), json!({"key_ops": ["wrapKey"]})).await;
        assert_eq!(st, StatusCode::OK);
        let (st, w2) =
            writer(&s, Method::POST, "/keys/kek//wrapkey", json!({"alg": "RSA-OAEP-256", "value": "AAAA"})).await;
        assert_eq!((st, version(&w2["kid"])), (StatusCode::OK, v2.clone()));
        let (st, e) = writer(
            &s,
            Method::POST,
            &format!("/keys/kek/{v2}/unwrapkey"),
            json!({"alg": "RSA-OAEP-256", "value": w2["value"]}),
        )
        .await;
        assert_eq!((st, code(&e).1), (StatusCode::FORBIDDEN, "KeyOperationForbidden"));
        // Enabled again: unwraps.
        writer(&s, Method::PATCH, &format!("/keys/kek/{v1}"), json!({"attributes": {"enabled": true}})).await;
        let (st, u) = writer(
            &s,
            Method::POST,
            &format!("/keys/kek/{v1}/unwrapkey"),
            json!({"alg": "RSA-OAEP-256", "value": w["value"]}),
        )
        .await;
        assert_eq!((st, unb64(&u["value"])), (StatusCode::OK, vec![0, 0, 0]));
    }

    #[tokio::test]
    async fn keys_share_the_vaults_checks() {
        let s = vault();
        let (_, b) = writer(&s, Method::POST, "/keys/kek/create", json!({"kty": "RSA"})).await;
        let body = json!({"alg": "RSA-OAEP-256", "value": "AAAA"});
        let (st, e) = call(&s, None, Method::POST, "/keys/kek//wrapkey", body.clone()).await;
        assert_eq!((st, code(&e).0), (StatusCode::UNAUTHORIZED, "Unauthorized"));
        for (method, path, perm) in [
            (Method::POST, "/keys/kek//wrapkey", "wrapKey"),
            (Method::POST, "/keys/kek/x/unwrapkey", "unwrapKey"),
            (Method::POST, "/keys/kek/create", "create"),
            (Method::POST, "/keys/kek/rotate", "rotate"),
            (Method::PATCH, "/keys/kek", "update"),
        ] {
            let (st, e) = call(&s, Some(READER), method, path, body.clone()).await;
            assert_eq!((st, code(&e).1), (StatusCode::FORBIDDEN, "ForbiddenByPolicy"), "{path}");
            assert!(e["error"]["message"].as_str().unwrap().contains(&format!("keys {perm} permission")), "{e}");
        }
        let (st, _) = call(&s, Some(READER), Method::GET, "/keys/kek", Value::Null).await;
        assert_eq!(st, StatusCode::OK);
        s.vault.lock().unwrap().throttle = 1;
        let (st, _) = writer(&s, Method::POST, "/keys/kek//wrapkey", body.clone()).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        s.vault.lock().unwrap().down = true;
        let (st, _) = writer(&s, Method::POST, "/keys/kek//wrapkey", body.clone()).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        s.vault.lock().unwrap().down = false;
        let (st, w) = writer(&s, Method::POST, "/keys/kek//wrapkey", body).await;
        assert_eq!((st, &w["kid"]), (StatusCode::OK, &b["key"]["kid"]));
        let kinds = s.vault.lock().unwrap().by_kind.clone();
        // The reader's two refusals, the throttled call and the served one:
        // not the challenge, nor the call the outage answered (before any
        // request is sorted).
        assert_eq!(kinds.get("crypto"), Some(&4), "{kinds:?}");
    }
}
