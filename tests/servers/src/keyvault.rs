//! An Azure Key Vault (secrets) and Microsoft Entra ID token endpoint that
//! follow the published REST contracts, over HTTPS with a test CA.
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
//! - Test controls on [`KeyVault`]: the operation delay, the token
//!   lifetime, the api-versions accepted, a pinned clock, 429s and 503s on
//!   demand, revoked clients, writes and expiry set as another tool would,
//!   and what holds a name ([`KeyVault::state`]).

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
    /// Live secrets by lower-case name; a name is here or in `held`, not both.
    secrets: HashMap<String, Secret>,
    held: HashMap<String, Held>,
    tokens: HashMap<String, Token>,
    /// Clients whose credentials were revoked.
    revoked: HashSet<String>,
    /// Requests to the vault (not the token endpoint), challenges included.
    requests: u64,
    /// Requests by kind: token, challenge, list, read, write.
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
        let clients: HashMap<String, (String, bool)> = [
            (CLIENT_ID.to_string(), (CLIENT_SECRET.to_string(), true)),
            (READER_ID.to_string(), (READER_SECRET.to_string(), false)),
        ]
        .into();
        let vault = Vault {
            secrets: HashMap::new(),
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
        let shared = Shared {
            vault: Arc::new(Mutex::new(vault)),
            tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            clients: Arc::new(clients),
            base: url.clone(),
        };
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

    /// Requests answered, by kind (token, challenge, list, read, write).
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
    let value: Vec<Value> = items.into_iter().skip(skip).take(max).collect();
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
    let kind = match (&method, uri.path()) {
        (_, _) if token.is_none() => "challenge",
        (&Method::GET, p)
            if p == "/secrets" || p == "/secrets/" || p.ends_with("/versions") || p == "/deletedsecrets" =>
        {
            "list"
        }
        (&Method::GET, _) => "read",
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
    let json_body = || -> Result<Value, String> {
        serde_json::from_slice(&body).map_err(|e| format!("The request body is not valid JSON: {e}"))
    };
    let segs: Vec<String> = uri.path().trim_start_matches('/').split('/').map(str::to_string).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["secrets"]) | (&Method::GET, ["secrets", ""]) => {
            let mut names: Vec<&Secret> = v.secrets.values().collect();
            names.sort_by_key(|s| s.name.to_ascii_lowercase());
            let items = names.iter().filter_map(|sec| Some(item(&base, sec, sec.versions.last()?, false))).collect();
            page(&base, "/secrets", &api, items, &q)
        }
        (&Method::GET, ["secrets", name, "versions"]) => match v.secrets.get(&name.to_ascii_lowercase()) {
            Some(sec) => {
                // By id: stable for the secret, not the order of writing.
                let mut versions: Vec<&Version> = sec.versions.iter().collect();
                versions.sort_by(|a, b| a.id.cmp(&b.id));
                let items = versions.into_iter().map(|ver| item(&base, sec, ver, true)).collect();
                page(&base, &format!("/secrets/{name}/versions"), &api, items, &q)
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
            page(&base, "/deletedsecrets", &api, items, &q)
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
        _ => err(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{method} {} is not an operation of this vault", uri.path()),
        ),
    }
}
