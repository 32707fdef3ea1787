//! A GCP Cloud KMS (v1, REST/JSON) test server for symmetric keys, for the
//! `gcpckms` seal's tests: key rings, ENCRYPT_DECRYPT CryptoKeys and their
//! versions, and `Encrypt`/`Decrypt` under real AES-256-GCM, with the
//! CRC32C checks of Google's data-integrity guide.
//!
//! What it implements, as the Cloud KMS v1 REST reference describes:
//!
//! - `POST /v1/projects/{p}/locations/{l}/keyRings?keyRingId=`
//!   (CreateKeyRing; 409 `ALREADY_EXISTS`) and `GET` of a key ring.
//! - `POST /v1/{keyRing}/cryptoKeys?cryptoKeyId=` (CreateCryptoKey:
//!   `purpose` required and only `ENCRYPT_DECRYPT`; a `versionTemplate`, if
//!   given, only `GOOGLE_SYMMETRIC_ENCRYPTION` at `SOFTWARE`; version 1 is
//!   created, ENABLED, as the primary unless `skipInitialVersionCreation`
//!   is true; other fields are ignored), `GET` of a CryptoKey (with
//!   `primary`, its primary version, when it has one).
//! - `POST {cryptoKey}/cryptoKeyVersions` (CreateCryptoKeyVersion: the next
//!   id, ENABLED, not primary; the body is ignored), `GET` of a version,
//!   `PATCH` of a version with `updateMask=state` (only; the mask is
//!   required) to `ENABLED` or `DISABLED`, and
//!   `POST {cryptoKey}:updatePrimaryVersion` with `{"cryptoKeyVersionId"}`
//!   (the version must exist, 404, and be ENABLED, 400
//!   `FAILED_PRECONDITION`).
//! - `POST {cryptoKey}:encrypt` (or `{cryptoKeyVersion}:encrypt`, that
//!   version): `plaintext` (1 byte to 64 KiB) and optional
//!   `additionalAuthenticatedData` (at most 64 KiB), `plaintextCrc32c` and
//!   `additionalAuthenticatedDataCrc32c`; a checksum that does not match its
//!   field is 400 `INVALID_ARGUMENT`. Encrypts with the primary version (no
//!   primary, or one not ENABLED: 400 `FAILED_PRECONDITION`) and answers
//!   `name` (the version used), `ciphertext`, `ciphertextCrc32c`,
//!   `verifiedPlaintextCrc32c`, `verifiedAdditionalAuthenticatedDataCrc32c`
//!   (true when the checksum was given and checked) and `protectionLevel`.
//!   The ciphertext names its version (as Cloud KMS's does): a format byte,
//!   the version id (8 bytes, big-endian), a 12-byte nonce, and AES-256-GCM
//!   output under the version's own random key, authenticating the
//!   CryptoKey's name and the additional authenticated data.
//! - `POST {cryptoKey}:decrypt` (a version's name is 400
//!   `INVALID_ARGUMENT`): `ciphertext`, `additionalAuthenticatedData` and
//!   their checksums, checked as above; decrypts with the version the blob
//!   names, primary or not. A version that is not ENABLED is 400
//!   `FAILED_PRECONDITION`; a blob that does not open under this key (another
//!   key's, changed, other AAD) is 400 `INVALID_ARGUMENT` ("Decryption
//!   failed: verify that 'name' refers to the correct CryptoKey."). Answers
//!   `plaintext`, `plaintextCrc32c`, `usedPrimary` and `protectionLevel`.
//! - Resource names are checked: locations of 1-63 of `[a-z0-9-]` starting
//!   with a letter (any such location exists), key ring and CryptoKey ids of
//!   1-63 of `[a-zA-Z0-9_-]`, version ids decimal; another name is 400
//!   `INVALID_ARGUMENT`. The project is the configured id (or
//!   [`PROJECT_NUMBER`]); names in answers use the id. Another project is
//!   403 `PERMISSION_DENIED` ("or it may not exist"), as GCP answers.
//!   Missing resources are 404 `NOT_FOUND`.
//! - A body that is not a JSON object is 400 `INVALID_ARGUMENT`.
//!   Errors are `{"error": {"code", "message", "status"}}`; int64 fields are
//!   JSON strings (numbers are taken too); bytes are base64; times are
//!   RFC 3339. Enums are names, or numbers when the request asks with
//!   `$alt=json;enum-encoding=int` (as google-cloud-rust does); requests
//!   may give either.
//! - Credentials exactly as [`crate::secretmanager`] takes them
//!   ([`crate::oauth`]): an access token from the token endpoint at `/token`,
//!   or a self-signed JWT of the server's own service account (with this
//!   server's URL as `aud`, or the `cloud-platform` scope). Secret
//!   Manager's audience (`https://secretmanager.googleapis.com/`), which
//!   [`crate::oauth::Auth`] also takes, is refused here: Cloud KMS's would
//!   be `https://cloudkms.googleapis.com/`, which this server, not being
//!   Google's, does not take either.
//!
//! For tests: [`CloudKms::set_down`] (503 `UNAVAILABLE` to every request),
//! calls counted by method ([`CloudKms::calls`]), what the last
//! `Encrypt`/`Decrypt` carried ([`CloudKms::last_seen`]), answers corrupted
//! in transit ([`CloudKms::corrupt_next`]), and keys made directly
//! ([`CloudKms::create_key`], [`CloudKms::add_version`],
//! [`CloudKms::set_primary`], [`CloudKms::set_enabled`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};

use crate::oauth::{Auth, Refusal, SERVICE_AUDIENCE, ServiceAccount};

/// The largest plaintext (and additional authenticated data) of a SOFTWARE
/// key.
pub const MAX_DATA: usize = 65_536;
/// The project number the server also takes in place of the project id.
pub const PROJECT_NUMBER: &str = "123456789012";
/// The ciphertext's format byte.
const FORMAT: u8 = 1;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Format byte, version id, nonce.
const HEADER: usize = 1 + 8 + NONCE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VersionState {
    Enabled,
    Disabled,
}

impl VersionState {
    fn name(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
        }
    }

    fn number(self) -> i64 {
        match self {
            VersionState::Enabled => 1,
            VersionState::Disabled => 2,
        }
    }
}

struct Version {
    /// The version's AES-256 key (test material: not zeroized).
    key: [u8; 32],
    state: VersionState,
    created: SystemTime,
}

struct CryptoKey {
    created: SystemTime,
    versions: BTreeMap<u64, Version>,
    primary: Option<u64>,
}

impl CryptoKey {
    fn new(initial_version: bool) -> CryptoKey {
        let mut k = CryptoKey { created: SystemTime::now(), versions: BTreeMap::new(), primary: None };
        if initial_version {
            k.versions.insert(1, new_version());
            k.primary = Some(1);
        }
        k
    }

    /// Adds the next version (ENABLED) and returns its id.
    fn add_version(&mut self) -> Option<u64> {
        let id = self.versions.keys().next_back().copied().unwrap_or(0).checked_add(1)?;
        self.versions.insert(id, new_version());
        Some(id)
    }
}

fn new_version() -> Version {
    Version { key: rand::thread_rng().r#gen(), state: VersionState::Enabled, created: SystemTime::now() }
}

struct KeyRing {
    created: SystemTime,
    keys: BTreeMap<String, CryptoKey>,
}

/// Corrupts one answer as a fault in transit would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The next `Encrypt` answers a `ciphertextCrc32c` that does not match.
    CiphertextChecksum,
    /// The next `Encrypt` answers `verifiedPlaintextCrc32c: false`, as if
    /// the checksum had not arrived.
    PlaintextNotVerified,
    /// The next `Decrypt` answers a `plaintextCrc32c` that does not match.
    PlaintextChecksum,
}

/// What the last `Encrypt` or `Decrypt` request carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The CryptoKey (or version) named.
    pub name: String,
    /// A checksum came with the data (`plaintextCrc32c` or
    /// `ciphertextCrc32c`).
    pub data_checksum: bool,
    /// The additional authenticated data.
    pub aad: Vec<u8>,
    /// `additionalAuthenticatedDataCrc32c` came with it.
    pub aad_checksum: bool,
}

#[derive(Default)]
struct Store {
    /// By (location, key ring id).
    rings: BTreeMap<(String, String), KeyRing>,
    /// Requests by method (`Encrypt`, `GetCryptoKey`, ..., `Token`,
    /// `Unknown`).
    calls: BTreeMap<&'static str, u64>,
    down: bool,
    corrupt: Option<Corruption>,
    seen: BTreeMap<&'static str, Seen>,
    /// A refusal of this server's own (Secret Manager's audience), newer
    /// than [`Auth`]'s last one.
    refused_here: Option<Refusal>,
}

impl Store {
    fn key(&mut self, location: &str, ring: &str, key: &str) -> Option<&mut CryptoKey> {
        self.rings.get_mut(&(location.to_string(), ring.to_string()))?.keys.get_mut(key)
    }
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    project: String,
    auth: Arc<Auth>,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct CloudKms {
    pub addr: SocketAddr,
    pub project: String,
    shared: Shared,
    key_file: PathBuf,
}

impl Drop for CloudKms {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

impl CloudKms {
    /// Starts on 127.0.0.1 (a free port), serving `project`, with a new
    /// service account `keybridge-test@<project>.iam.gserviceaccount.com`
    /// whose JSON key file is at [`CloudKms::key_file`]: every API call
    /// needs a credential derived from that key.
    pub async fn start(project: &str) -> CloudKms {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (auth, key_file) = crate::oauth::service_account_for(project, addr, "kb-gcp-kms-sa").await;
        let shared = Shared { store: Arc::new(Mutex::new(Store::default())), project: project.to_string(), auth };
        let app =
            axum::Router::new().route("/token", axum::routing::post(token)).fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CloudKms { addr, project: project.to_string(), shared, key_file }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service account's JSON key file (mode 0600, removed on drop).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The service account's JSON key, as in [`CloudKms::key_file`].
    pub fn key_json(&self) -> Value {
        self.shared.auth.account.key_json(&self.shared.auth.token_uri)
    }

    /// The service account (to sign assertions and tokens in tests).
    pub fn account(&self) -> &ServiceAccount {
        &self.shared.auth.account
    }

    /// The OAuth token endpoint: `<url>/token`.
    pub fn token_uri(&self) -> &str {
        &self.shared.auth.token_uri
    }

    /// Why the last refused credential was refused.
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.shared.store().refused_here.or_else(|| self.shared.auth.last_refusal())
    }

    /// The claims of the last self-signed JWT an API call was accepted with.
    pub fn last_jwt_claims(&self) -> Option<Map<String, Value>> {
        self.shared.auth.last_jwt_claims()
    }

    /// While `down`, every request (the token endpoint's too) is answered
    /// 503 `UNAVAILABLE`.
    pub fn set_down(&self, down: bool) {
        self.shared.store().down = down;
    }

    /// Requests so far by method: `CreateKeyRing`, `GetKeyRing`,
    /// `CreateCryptoKey`, `GetCryptoKey`, `CreateCryptoKeyVersion`,
    /// `GetCryptoKeyVersion`, `UpdateCryptoKeyVersion`,
    /// `UpdateCryptoKeyPrimaryVersion`, `Encrypt`, `Decrypt`, `Token` (the
    /// token endpoint) and `Unknown`; refused ones included.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.shared.store().calls.clone()
    }

    /// Requests so far of one method (see [`CloudKms::calls`]).
    pub fn calls_of(&self, method: &str) -> u64 {
        self.shared.store().calls.get(method).copied().unwrap_or(0)
    }

    /// What the last accepted-for-processing `Encrypt` or `Decrypt` carried.
    pub fn last_seen(&self, method: &str) -> Option<Seen> {
        self.shared.store().seen.get(method).cloned()
    }

    /// Corrupts the next answer of the kind `c` names.
    pub fn corrupt_next(&self, c: Corruption) {
        self.shared.store().corrupt = Some(c);
    }

    /// Creates the key ring (if it does not exist) and an ENCRYPT_DECRYPT
    /// CryptoKey in it with version 1 as its primary, as `gcloud kms
    /// keyrings create` and `gcloud kms keys create --purpose=encryption`
    /// would; a CryptoKey that exists is left as it is. Returns the
    /// CryptoKey's resource name. Ids are not checked here.
    pub fn create_key(&self, location: &str, ring: &str, key: &str) -> String {
        let mut st = self.shared.store();
        let r = st
            .rings
            .entry((location.to_string(), ring.to_string()))
            .or_insert_with(|| KeyRing { created: SystemTime::now(), keys: BTreeMap::new() });
        r.keys.entry(key.to_string()).or_insert_with(|| CryptoKey::new(true));
        key_name(&self.project, location, ring, key)
    }

    /// Adds a version (ENABLED, not primary) to a CryptoKey named by its
    /// resource name; its id, or `None` if there is no such key.
    pub fn add_version(&self, key: &str) -> Option<u64> {
        let (l, r, k) = self.parse_key(key)?;
        self.shared.store().key(&l, &r, &k)?.add_version()
    }

    /// Makes an existing version the CryptoKey's primary (whatever its
    /// state); whether it exists.
    pub fn set_primary(&self, key: &str, version: u64) -> bool {
        let Some((l, r, k)) = self.parse_key(key) else { return false };
        let mut st = self.shared.store();
        match st.key(&l, &r, &k) {
            Some(c) if c.versions.contains_key(&version) => {
                c.primary = Some(version);
                true
            }
            _ => false,
        }
    }

    /// Enables or disables a version; whether it exists.
    pub fn set_enabled(&self, key: &str, version: u64, enabled: bool) -> bool {
        let Some((l, r, k)) = self.parse_key(key) else { return false };
        let mut st = self.shared.store();
        match st.key(&l, &r, &k).and_then(|c| c.versions.get_mut(&version)) {
            Some(v) => {
                v.state = if enabled { VersionState::Enabled } else { VersionState::Disabled };
                true
            }
            None => false,
        }
    }

    /// The primary version's id of a CryptoKey.
    pub fn primary(&self, key: &str) -> Option<u64> {
        let (l, r, k) = self.parse_key(key)?;
        self.shared.store().key(&l, &r, &k)?.primary
    }

    /// (location, key ring, CryptoKey) of a CryptoKey's resource name in
    /// this server's project.
    fn parse_key(&self, name: &str) -> Option<(String, String, String)> {
        match name.split('/').collect::<Vec<_>>().as_slice() {
            ["projects", p, "locations", l, "keyRings", r, "cryptoKeys", k]
                if *p == self.project || *p == PROJECT_NUMBER =>
            {
                Some((l.to_string(), r.to_string(), k.to_string()))
            }
            _ => None,
        }
    }
}

fn key_ring_name(project: &str, location: &str, ring: &str) -> String {
    format!("projects/{project}/locations/{location}/keyRings/{ring}")
}

fn key_name(project: &str, location: &str, ring: &str, key: &str) -> String {
    format!("{}/cryptoKeys/{key}", key_ring_name(project, location, ring))
}

fn version_name(project: &str, location: &str, ring: &str, key: &str, version: u64) -> String {
    format!("{}/cryptoKeyVersions/{version}", key_name(project, location, ring, key))
}

fn status_name(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

fn err(code: StatusCode, message: &str) -> Response {
    err_status(code, status_name(code), message)
}

fn err_status(code: StatusCode, status: &str, message: &str) -> Response {
    (code, Json(json!({ "error": { "code": code.as_u16(), "message": message, "status": status } }))).into_response()
}

fn bad(message: &str) -> Response {
    err(StatusCode::BAD_REQUEST, message)
}

fn precondition(message: &str) -> Response {
    err_status(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", message)
}

fn not_found(message: &str) -> Response {
    err(StatusCode::NOT_FOUND, message)
}

fn unavailable() -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, "The service is currently unavailable.")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn location_id(l: &str) -> bool {
    (1..=63).contains(&l.len())
        && l.starts_with(|c: char| c.is_ascii_lowercase())
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn resource_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn version_id(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// How the request wants enums: names, or numbers
/// (`$alt=json;enum-encoding=int`).
#[derive(Clone, Copy)]
struct Enums {
    ints: bool,
}

impl Enums {
    fn of(q: &HashMap<String, String>) -> Enums {
        Enums { ints: q.get("$alt").is_some_and(|a| a.split(';').any(|p| p.trim() == "enum-encoding=int")) }
    }

    fn value(self, name: &str, number: i64) -> Value {
        if self.ints { json!(number) } else { json!(name) }
    }
}

/// An enum field of a request: absent, its name, or its number.
fn enum_is(v: &Value, name: &str, number: i64) -> bool {
    v.as_str() == Some(name) || v.as_i64() == Some(number)
}

fn ring_json(project: &str, location: &str, ring: &str, r: &KeyRing) -> Value {
    json!({ "name": key_ring_name(project, location, ring), "createTime": rfc3339(r.created) })
}

fn version_json(e: Enums, name: String, v: &Version) -> Value {
    json!({
        "name": name,
        "state": e.value(v.state.name(), v.state.number()),
        "protectionLevel": e.value("SOFTWARE", 1),
        "algorithm": e.value("GOOGLE_SYMMETRIC_ENCRYPTION", 1),
        "createTime": rfc3339(v.created),
        "generateTime": rfc3339(v.created),
    })
}

fn key_json(e: Enums, project: &str, location: &str, ring: &str, key: &str, k: &CryptoKey) -> Value {
    let mut out = json!({
        "name": key_name(project, location, ring, key),
        "purpose": e.value("ENCRYPT_DECRYPT", 1),
        "createTime": rfc3339(k.created),
        "versionTemplate": {
            "protectionLevel": e.value("SOFTWARE", 1),
            "algorithm": e.value("GOOGLE_SYMMETRIC_ENCRYPTION", 1),
        },
        "destroyScheduledDuration": "2592000s",
    });
    if let Some(p) = k.primary
        && let Some(v) = k.versions.get(&p)
    {
        out["primary"] = version_json(e, version_name(project, location, ring, key, p), v);
    }
    out
}

/// A `bytes` field: absent or null is empty; base64, standard or URL-safe,
/// padded or not, as proto3 JSON takes.
fn bytes_field(b: &Value, field: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    match &b[field] {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => STANDARD
            .decode(s)
            .or_else(|_| STANDARD_NO_PAD.decode(s))
            .or_else(|_| URL_SAFE.decode(s))
            .or_else(|_| URL_SAFE_NO_PAD.decode(s))
            .map_err(|_| format!("Invalid value at '{field}' (TYPE_BYTES), Base64 decoding failed.")),
        _ => Err(format!("Invalid value at '{field}' (TYPE_BYTES): expected a base64 string.")),
    }
}

/// An `Int64Value` field: absent or null is `None`; a decimal string or a
/// number.
fn int64_field(b: &Value, field: &str) -> Result<Option<i64>, String> {
    match &b[field] {
        Value::Null => Ok(None),
        Value::String(s) => s.parse().map(Some).map_err(|_| format!("Invalid value at '{field}' (TYPE_INT64).")),
        Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| format!("Invalid value at '{field}' (TYPE_INT64).")),
        _ => Err(format!("Invalid value at '{field}' (TYPE_INT64).")),
    }
}

/// Checks an optional checksum of `data`: whether one was given (and so
/// verified), or the 400 message of a mismatch.
fn checksum(b: &Value, field: &str, data_field: &str, data: &[u8]) -> Result<bool, String> {
    match int64_field(b, field)? {
        None => Ok(false),
        Some(c) if c == i64::from(crc32c::crc32c(data)) => Ok(true),
        Some(_) => Err(format!(
            "The checksum in field {} did not match the data in field {}.",
            snake(field),
            snake(data_field)
        )),
    }
}

/// `plaintextCrc32c` as the proto names it: `plaintext_crc32c`.
fn snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 4);
    for c in field.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn crc(data: &[u8]) -> String {
    i64::from(crc32c::crc32c(data)).to_string()
}

/// What AES-GCM authenticates besides the data: the CryptoKey's name and
/// the caller's additional authenticated data.
fn gcm_aad(key_name: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key_name.len() + 1 + aad.len());
    out.extend_from_slice(key_name.as_bytes());
    out.push(0);
    out.extend_from_slice(aad);
    out
}

fn seal(v: &Version, id: u64, key_name: &str, plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; NONCE] = rand::thread_rng().r#gen();
    let cipher = Aes256Gcm::new(&v.key.into());
    let sealed =
        cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &gcm_aad(key_name, aad) }).ok()?;
    let mut out = Vec::with_capacity(HEADER + sealed.len());
    out.push(FORMAT);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Some(out)
}

/// The version a ciphertext names, if it is of this server's format.
fn blob_version(ciphertext: &[u8]) -> Option<u64> {
    if ciphertext.len() < HEADER + TAG || ciphertext.first() != Some(&FORMAT) {
        return None;
    }
    let id: [u8; 8] = ciphertext.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

fn open(v: &Version, key_name: &str, ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let nonce = ciphertext.get(9..HEADER)?;
    let sealed = ciphertext.get(HEADER..)?;
    let cipher = Aes256Gcm::new(&v.key.into());
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &gcm_aad(key_name, aad) }).ok()
}

/// The path after `/v1/`, by what it names.
enum Route<'a> {
    KeyRings,
    KeyRing(&'a str),
    CryptoKeys(&'a str),
    CryptoKey(&'a str, &'a str),
    Versions(&'a str, &'a str),
    Version(&'a str, &'a str, &'a str),
}

struct Target<'a> {
    project: &'a str,
    location: &'a str,
    route: Route<'a>,
}

fn route<'a>(segs: &[&'a str]) -> Option<Target<'a>> {
    let (project, location, rest) = match segs {
        ["projects", p, "locations", l, "keyRings", rest @ ..] => (*p, *l, rest),
        _ => return None,
    };
    let route = match rest {
        [] => Route::KeyRings,
        [r] => Route::KeyRing(r),
        [r, "cryptoKeys"] => Route::CryptoKeys(r),
        [r, "cryptoKeys", k] => Route::CryptoKey(r, k),
        [r, "cryptoKeys", k, "cryptoKeyVersions"] => Route::Versions(r, k),
        [r, "cryptoKeys", k, "cryptoKeyVersions", v] => Route::Version(r, k, v),
        _ => return None,
    };
    Some(Target { project, location, route })
}

/// The API method a request calls.
fn method_of(method: &Method, route: &Route<'_>, verb: Option<&str>) -> Option<&'static str> {
    Some(match (method, route, verb) {
        (&Method::POST, Route::KeyRings, None) => "CreateKeyRing",
        (&Method::GET, Route::KeyRing(_), None) => "GetKeyRing",
        (&Method::POST, Route::CryptoKeys(_), None) => "CreateCryptoKey",
        (&Method::GET, Route::CryptoKey(..), None) => "GetCryptoKey",
        (&Method::POST, Route::CryptoKey(..) | Route::Version(..), Some("encrypt")) => "Encrypt",
        (&Method::POST, Route::CryptoKey(..) | Route::Version(..), Some("decrypt")) => "Decrypt",
        (&Method::POST, Route::CryptoKey(..), Some("updatePrimaryVersion")) => "UpdateCryptoKeyPrimaryVersion",
        (&Method::POST, Route::Versions(..), None) => "CreateCryptoKeyVersion",
        (&Method::GET, Route::Version(..), None) => "GetCryptoKeyVersion",
        (&Method::PATCH, Route::Version(..), None) => "UpdateCryptoKeyVersion",
        _ => return None,
    })
}

/// The 401 (or 403, for scopes) Google's front end answers for a refused
/// credential; the reason is not told (`CloudKms::last_refusal` has it).
fn refused(r: Refusal) -> Response {
    let (code, message) = match r {
        Refusal::Scope => (StatusCode::FORBIDDEN, "Request had insufficient authentication scopes."),
        Refusal::Missing => (
            StatusCode::UNAUTHORIZED,
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ),
        _ => (
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ),
    };
    let mut resp = err(code, message);
    if code == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""));
    }
    resp
}

/// Whether a bearer token is a JWT addressed to Secret Manager (which
/// [`Auth`] takes for the Secret Manager server, and Cloud KMS would not).
/// Only the claims are looked at; [`Auth`] checks the signature.
fn for_secret_manager(authorization: Option<&str>) -> bool {
    let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
    else {
        return false;
    };
    let mut parts = token.trim().split('.');
    let claims = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(c), Some(_), None) => c,
        _ => return false,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()
        .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
        .is_some_and(|c| c["aud"].as_str() == Some(SERVICE_AUDIENCE))
}

/// `POST /token`: the OAuth 2.0 token endpoint (JWT-bearer grant).
async fn token(State(sh): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    {
        let mut st = sh.store();
        *st.calls.entry("Token").or_default() += 1;
        if st.down {
            return unavailable();
        }
    }
    let (code, body) = sh.auth.grant(&form);
    (StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST), Json(body)).into_response()
}

async fn handle(
    State(sh): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().to_string();
    let rest = path.strip_prefix("/v1/").unwrap_or_default();
    let (resource, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r, Some(v)),
        _ => (rest, None),
    };
    let segs: Vec<&str> = resource.split('/').collect();
    let target = route(&segs);
    let api = target.as_ref().and_then(|t| method_of(&method, &t.route, verb));
    let mut st = sh.store();
    *st.calls.entry(api.unwrap_or("Unknown")).or_default() += 1;
    if st.down {
        return unavailable();
    }
    let authorization = headers.get("authorization").and_then(|h| h.to_str().ok());
    if for_secret_manager(authorization) {
        st.refused_here = Some(Refusal::Audience);
        return refused(Refusal::Audience);
    }
    st.refused_here = None;
    // Not under the store's lock: the checks of a new JWT take a while.
    drop(st);
    if let Err(r) = sh.auth.authenticate(authorization) {
        return refused(r);
    }
    let (Some(t), Some(api)) = (target, api) else {
        return not_found(&format!("{method} {path} is not a method of this server."));
    };
    if t.project != sh.project && t.project != PROJECT_NUMBER {
        return err(
            StatusCode::FORBIDDEN,
            &format!(
                "Permission 'cloudkms.{}' denied on resource '{resource}' (or it may not exist).",
                permission(api)
            ),
        );
    }
    // Every id of the name, checked before anything is looked up.
    let (ring, key, version) = match t.route {
        Route::KeyRings => (None, None, None),
        Route::KeyRing(r) | Route::CryptoKeys(r) => (Some(r), None, None),
        Route::CryptoKey(r, k) | Route::Versions(r, k) => (Some(r), Some(k), None),
        Route::Version(r, k, v) => (Some(r), Some(k), Some(v)),
    };
    let bad_name = || bad(&format!("Resource name [{resource}] does not match any known resource name pattern."));
    let version = match version {
        None => None,
        Some(v) => match version_id(v) {
            Some(n) => Some(n),
            None => return bad_name(),
        },
    };
    if !(location_id(t.location) && ring.is_none_or(resource_id) && key.is_none_or(resource_id)) {
        return bad_name();
    }
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(b @ (Value::Object(_) | Value::Null)) => b,
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => Value::Null,
        _ => return bad("Invalid JSON payload received: the body must be a JSON object."),
    };
    let req = Request { sh: &sh, e: Enums::of(&q), q: &q, body, location: t.location };
    let mut st = sh.store();
    match (api, ring, key, version) {
        ("CreateKeyRing", _, _, _) => req.create_key_ring(&mut st),
        ("GetKeyRing", Some(r), _, _) => req.get_key_ring(&st, r),
        ("CreateCryptoKey", Some(r), _, _) => req.create_crypto_key(&mut st, r),
        ("GetCryptoKey", Some(r), Some(k), _) => req.get_crypto_key(&st, r, k),
        ("CreateCryptoKeyVersion", Some(r), Some(k), _) => req.create_version(&mut st, r, k),
        ("GetCryptoKeyVersion", Some(r), Some(k), Some(v)) => req.get_version(&mut st, r, k, v),
        ("UpdateCryptoKeyVersion", Some(r), Some(k), Some(v)) => req.update_version(&mut st, r, k, v),
        ("UpdateCryptoKeyPrimaryVersion", Some(r), Some(k), _) => req.update_primary(&mut st, r, k),
        ("Encrypt", Some(r), Some(k), v) => req.encrypt(&mut st, r, k, v),
        ("Decrypt", Some(r), Some(k), None) => req.decrypt(&mut st, r, k),
        ("Decrypt", _, _, Some(_)) => bad("Decrypt takes the name of a CryptoKey, not of a CryptoKeyVersion."),
        _ => not_found(&format!("{method} {path} is not a method of this server.")),
    }
}

/// The IAM permission a method needs, for the 403 of another project.
fn permission(api: &str) -> &'static str {
    match api {
        "CreateKeyRing" => "keyRings.create",
        "GetKeyRing" => "keyRings.get",
        "CreateCryptoKey" => "cryptoKeys.create",
        "GetCryptoKey" => "cryptoKeys.get",
        "UpdateCryptoKeyPrimaryVersion" => "cryptoKeys.update",
        "CreateCryptoKeyVersion" => "cryptoKeyVersions.create",
        "GetCryptoKeyVersion" => "cryptoKeyVersions.get",
        "UpdateCryptoKeyVersion" => "cryptoKeyVersions.update",
        "Encrypt" => "cryptoKeyVersions.useToEncrypt",
        _ => "cryptoKeyVersions.useToDecrypt",
    }
}

/// The data fields of an `Encrypt` or `Decrypt` request.
struct Data {
    data: Vec<u8>,
    data_checksum: bool,
    aad: Vec<u8>,
    aad_checksum: bool,
}

/// One API call, its store locked by the caller.
struct Request<'a> {
    sh: &'a Shared,
    e: Enums,
    q: &'a HashMap<String, String>,
    body: Value,
    location: &'a str,
}

impl Request<'_> {
    fn project(&self) -> &str {
        &self.sh.project
    }

    fn ring_name(&self, ring: &str) -> String {
        key_ring_name(self.project(), self.location, ring)
    }

    fn key_name(&self, ring: &str, key: &str) -> String {
        key_name(self.project(), self.location, ring, key)
    }

    fn version_name(&self, ring: &str, key: &str, v: u64) -> String {
        version_name(self.project(), self.location, ring, key, v)
    }

    fn ring_missing(&self, ring: &str) -> Response {
        not_found(&format!("KeyRing {} not found.", self.ring_name(ring)))
    }

    fn key_missing(&self, ring: &str, key: &str) -> Response {
        not_found(&format!("CryptoKey {} not found.", self.key_name(ring, key)))
    }

    fn version_missing(&self, ring: &str, key: &str, v: u64) -> Response {
        not_found(&format!("CryptoKeyVersion {} not found.", self.version_name(ring, key, v)))
    }

    /// The key, or the 404 of its ring or of itself.
    fn find<'s>(&self, st: &'s mut Store, ring: &str, key: &str) -> Result<&'s mut CryptoKey, Box<Response>> {
        let Some(r) = st.rings.get_mut(&(self.location.to_string(), ring.to_string())) else {
            return Err(Box::new(self.ring_missing(ring)));
        };
        r.keys.get_mut(key).ok_or_else(|| Box::new(self.key_missing(ring, key)))
    }

    fn create_key_ring(&self, st: &mut Store) -> Response {
        let id = self.q.get("keyRingId").map(String::as_str).unwrap_or_default();
        if !resource_id(id) {
            return bad(&format!("Invalid keyRingId {id:?}: 1-63 characters of letters, digits, '_' and '-'."));
        }
        let at = (self.location.to_string(), id.to_string());
        if st.rings.contains_key(&at) {
            return err(StatusCode::CONFLICT, &format!("KeyRing {} already exists.", self.ring_name(id)));
        }
        let r = KeyRing { created: SystemTime::now(), keys: BTreeMap::new() };
        let out = ring_json(self.project(), self.location, id, &r);
        st.rings.insert(at, r);
        Json(out).into_response()
    }

    fn get_key_ring(&self, st: &Store, ring: &str) -> Response {
        match st.rings.get(&(self.location.to_string(), ring.to_string())) {
            Some(r) => Json(ring_json(self.project(), self.location, ring, r)).into_response(),
            None => self.ring_missing(ring),
        }
    }

    fn create_crypto_key(&self, st: &mut Store, ring: &str) -> Response {
        let id = self.q.get("cryptoKeyId").map(String::as_str).unwrap_or_default();
        if !resource_id(id) {
            return bad(&format!("Invalid cryptoKeyId {id:?}: 1-63 characters of letters, digits, '_' and '-'."));
        }
        let b = &self.body;
        if b["purpose"].is_null() || enum_is(&b["purpose"], "CRYPTO_KEY_PURPOSE_UNSPECIFIED", 0) {
            return bad("CryptoKey.purpose is required.");
        }
        if !enum_is(&b["purpose"], "ENCRYPT_DECRYPT", 1) {
            return bad("This test server makes only ENCRYPT_DECRYPT keys.");
        }
        let t = &b["versionTemplate"];
        if !(t["algorithm"].is_null() || enum_is(&t["algorithm"], "GOOGLE_SYMMETRIC_ENCRYPTION", 1)) {
            return bad("The algorithm of an ENCRYPT_DECRYPT key must be GOOGLE_SYMMETRIC_ENCRYPTION.");
        }
        if !(t["protectionLevel"].is_null() || enum_is(&t["protectionLevel"], "SOFTWARE", 1)) {
            return bad("This test server makes only SOFTWARE keys.");
        }
        let skip = match self.q.get("skipInitialVersionCreation").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(o) => return bad(&format!("Invalid value {o:?} for skipInitialVersionCreation: true or false.")),
        };
        let project = self.project().to_string();
        let Some(r) = st.rings.get_mut(&(self.location.to_string(), ring.to_string())) else {
            return self.ring_missing(ring);
        };
        if r.keys.contains_key(id) {
            return err(StatusCode::CONFLICT, &format!("CryptoKey {} already exists.", self.key_name(ring, id)));
        }
        let k = CryptoKey::new(!skip);
        let out = key_json(self.e, &project, self.location, ring, id, &k);
        r.keys.insert(id.to_string(), k);
        Json(out).into_response()
    }

    fn get_crypto_key(&self, st: &Store, ring: &str, key: &str) -> Response {
        let Some(r) = st.rings.get(&(self.location.to_string(), ring.to_string())) else {
            return self.ring_missing(ring);
        };
        match r.keys.get(key) {
            Some(k) => Json(key_json(self.e, self.project(), self.location, ring, key, k)).into_response(),
            None => self.key_missing(ring, key),
        }
    }

    fn create_version(&self, st: &mut Store, ring: &str, key: &str) -> Response {
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let Some(id) = k.add_version() else {
            return precondition("The CryptoKey has as many versions as there can be.");
        };
        let Some(v) = k.versions.get(&id) else { return self.version_missing(ring, key, id) };
        Json(version_json(self.e, self.version_name(ring, key, id), v)).into_response()
    }

    fn get_version(&self, st: &mut Store, ring: &str, key: &str, id: u64) -> Response {
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        match k.versions.get(&id) {
            Some(v) => Json(version_json(self.e, self.version_name(ring, key, id), v)).into_response(),
            None => self.version_missing(ring, key, id),
        }
    }

    fn update_version(&self, st: &mut Store, ring: &str, key: &str, id: u64) -> Response {
        let Some(mask) = self.q.get("updateMask").filter(|m| !m.is_empty()) else {
            return bad("updateMask is required.");
        };
        if let Some(other) = mask.split(',').find(|p| *p != "state") {
            return bad(&format!("This test server updates only state, not {other:?}."));
        }
        let b = &self.body;
        let state = if enum_is(&b["state"], "ENABLED", 1) {
            VersionState::Enabled
        } else if enum_is(&b["state"], "DISABLED", 2) {
            VersionState::Disabled
        } else {
            return bad("CryptoKeyVersion.state can only be updated to ENABLED or DISABLED.");
        };
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let Some(v) = k.versions.get_mut(&id) else { return self.version_missing(ring, key, id) };
        v.state = state;
        Json(version_json(self.e, self.version_name(ring, key, id), v)).into_response()
    }

    fn update_primary(&self, st: &mut Store, ring: &str, key: &str) -> Response {
        let Some(id) = self.body["cryptoKeyVersionId"].as_str() else {
            return bad("cryptoKeyVersionId is required.");
        };
        let Some(id) = version_id(id) else {
            return bad(&format!("Invalid cryptoKeyVersionId {id:?}: a version's id (a number)."));
        };
        let (e, project) = (self.e, self.project().to_string());
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let Some(v) = k.versions.get(&id) else { return self.version_missing(ring, key, id) };
        if v.state != VersionState::Enabled {
            return precondition(&format!(
                "{} is not enabled, current state is: {}.",
                self.version_name(ring, key, id),
                v.state.name()
            ));
        }
        k.primary = Some(id);
        Json(key_json(e, &project, self.location, ring, key, k)).into_response()
    }

    /// The data fields of Encrypt or Decrypt, their sizes and checksums.
    fn data(&self, data_field: &str, max: usize) -> Result<Data, Box<Response>> {
        let b = &self.body;
        let data = bytes_field(b, data_field).map_err(|m| Box::new(bad(&m)))?;
        if data.is_empty() {
            return Err(Box::new(bad(&format!("{data_field} is required."))));
        }
        if data.len() > max {
            return Err(Box::new(bad(&format!("The {data_field} must be at most {max} bytes; it is {}.", data.len()))));
        }
        let aad = bytes_field(b, "additionalAuthenticatedData").map_err(|m| Box::new(bad(&m)))?;
        if aad.len() > MAX_DATA {
            return Err(Box::new(bad(&format!("The additionalAuthenticatedData must be at most {MAX_DATA} bytes."))));
        }
        let data_checksum =
            checksum(b, &format!("{data_field}Crc32c"), data_field, &data).map_err(|m| Box::new(bad(&m)))?;
        let aad_checksum = checksum(b, "additionalAuthenticatedDataCrc32c", "additionalAuthenticatedData", &aad)
            .map_err(|m| Box::new(bad(&m)))?;
        Ok(Data { data, data_checksum, aad, aad_checksum })
    }

    fn encrypt(&self, st: &mut Store, ring: &str, key: &str, version: Option<u64>) -> Response {
        let Data { data: plaintext, data_checksum, aad, aad_checksum } = match self.data("plaintext", MAX_DATA) {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let name = self.key_name(ring, key);
        let seen_name = version.map(|v| self.version_name(ring, key, v)).unwrap_or_else(|| name.clone());
        st.seen.insert("Encrypt", Seen { name: seen_name, data_checksum, aad: aad.clone(), aad_checksum });
        let corrupt = st.corrupt.take_if(|c| *c != Corruption::PlaintextChecksum);
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let id = match version.or(k.primary) {
            Some(id) => id,
            None => return precondition(&format!("CryptoKey {name} has no primary version.")),
        };
        let Some(v) = k.versions.get(&id) else { return self.version_missing(ring, key, id) };
        if v.state != VersionState::Enabled {
            return precondition(&format!(
                "{} is not enabled, current state is: {}.",
                self.version_name(ring, key, id),
                v.state.name()
            ));
        }
        let Some(ciphertext) = seal(v, id, &name, &plaintext, &aad) else {
            return err(StatusCode::INTERNAL_SERVER_ERROR, "Encryption failed.");
        };
        let mut sum = crc(&ciphertext);
        if corrupt == Some(Corruption::CiphertextChecksum) {
            sum = (i64::from(crc32c::crc32c(&ciphertext)) ^ 1).to_string();
        }
        Json(json!({
            "name": self.version_name(ring, key, id),
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(&ciphertext),
            "ciphertextCrc32c": sum,
            "verifiedPlaintextCrc32c": data_checksum && corrupt != Some(Corruption::PlaintextNotVerified),
            "verifiedAdditionalAuthenticatedDataCrc32c": aad_checksum,
            "protectionLevel": self.e.value("SOFTWARE", 1),
        }))
        .into_response()
    }

    fn decrypt(&self, st: &mut Store, ring: &str, key: &str) -> Response {
        // A ciphertext holds at most 64 KiB of plaintext and the overhead.
        let Data { data: ciphertext, data_checksum, aad, aad_checksum } =
            match self.data("ciphertext", MAX_DATA + HEADER + TAG) {
                Ok(x) => x,
                Err(r) => return *r,
            };
        let name = self.key_name(ring, key);
        st.seen.insert("Decrypt", Seen { name: name.clone(), data_checksum, aad: aad.clone(), aad_checksum });
        let corrupt = st.corrupt.take_if(|c| *c == Corruption::PlaintextChecksum).is_some();
        let k = match self.find(st, ring, key) {
            Ok(k) => k,
            Err(r) => return *r,
        };
        let failed = || bad("Decryption failed: verify that 'name' refers to the correct CryptoKey.");
        let Some(id) = blob_version(&ciphertext) else { return failed() };
        let Some(v) = k.versions.get(&id) else { return failed() };
        if v.state != VersionState::Enabled {
            return precondition(&format!(
                "{} is not enabled, current state is: {}.",
                self.version_name(ring, key, id),
                v.state.name()
            ));
        }
        let Some(plaintext) = open(v, &name, &ciphertext, &aad) else { return failed() };
        let mut sum = i64::from(crc32c::crc32c(&plaintext));
        if corrupt {
            sum ^= 1;
        }
        Json(json!({
            "plaintext": base64::engine::general_purpose::STANDARD.encode(&plaintext),
            "plaintextCrc32c": sum.to_string(),
            "usedPrimary": k.primary == Some(id),
            "protectionLevel": self.e.value("SOFTWARE", 1),
        }))
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> Version {
        new_version()
    }

    #[test]
    fn a_blob_names_its_version_and_opens_only_under_its_key_name_and_aad() {
        let v = version();
        let blob = seal(&v, 7, "projects/p/locations/global/keyRings/r/cryptoKeys/k", b"root key", b"aad").unwrap();
        assert_eq!(blob_version(&blob), Some(7));
        assert_eq!(blob.len(), HEADER + 8 + TAG);
        assert_eq!(
            open(&v, "projects/p/locations/global/keyRings/r/cryptoKeys/k", &blob, b"aad").unwrap(),
            b"root key"
        );
        assert!(open(&v, "projects/p/locations/global/keyRings/r/cryptoKeys/k2", &blob, b"aad").is_none());
        assert!(open(&v, "projects/p/locations/global/keyRings/r/cryptoKeys/k", &blob, b"other").is_none());
        assert!(open(&version(), "projects/p/locations/global/keyRings/r/cryptoKeys/k", &blob, b"aad").is_none());
        let mut changed = blob.clone();
        if let Some(b) = changed.last_mut() {
            *b ^= 1;
        }
        assert!(open(&v, "projects/p/locations/global/keyRings/r/cryptoKeys/k", &changed, b"aad").is_none());
        // Too short, or another format: no version.
        assert_eq!(blob_version(&blob[..HEADER + TAG - 1]), None);
        let mut other = blob.clone();
        other[0] = 2;
        assert_eq!(blob_version(&other), None);
    }

    #[test]
    fn names_and_fields_are_checked() {
        assert!(resource_id("a") && resource_id(&"A_-9".repeat(15)) && !resource_id(&"a".repeat(64)));
        assert!(!resource_id("") && !resource_id("a.b") && !resource_id("a%2Fb"));
        assert!(location_id("global") && location_id("us-east1") && !location_id("US") && !location_id("1a"));
        assert_eq!(version_id("12"), Some(12));
        assert_eq!(version_id("-1"), None);
        assert_eq!(version_id("99999999999999999999"), None);
        assert_eq!(snake("additionalAuthenticatedDataCrc32c"), "additional_authenticated_data_crc32c");
        let b = json!({"plaintext": "aGk", "plaintextCrc32c": 1, "x": "y"});
        assert_eq!(bytes_field(&b, "plaintext").unwrap(), b"hi");
        assert_eq!(int64_field(&b, "plaintextCrc32c").unwrap(), Some(1));
        assert!(int64_field(&b, "x").is_err());
        assert!(checksum(&b, "plaintextCrc32c", "plaintext", b"hi").unwrap_err().contains("plaintext_crc32c"));
        let ok = json!({ "plaintextCrc32c": crc(b"hi") });
        assert_eq!(checksum(&ok, "plaintextCrc32c", "plaintext", b"hi"), Ok(true));
        assert_eq!(checksum(&json!({}), "plaintextCrc32c", "plaintext", b"hi"), Ok(false));
    }

    #[test]
    fn jwts_for_secret_manager_are_told() {
        let claims = |aud: &str| {
            let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({ "aud": aud }).to_string());
            format!("Bearer e30.{c}.sig")
        };
        assert!(for_secret_manager(Some(&claims(SERVICE_AUDIENCE))));
        assert!(!for_secret_manager(Some(&claims("http://127.0.0.1:1/"))));
        assert!(!for_secret_manager(Some("Bearer ya29.token")));
        assert!(!for_secret_manager(None));
    }
}
