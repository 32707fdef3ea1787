//! A GCP Secret Manager (v1, REST/JSON) test server that follows the
//! published contract where drongo, the third-party emulator the other
//! tests use, does not: it honours `pageSize` with `nextPageToken`, keeps
//! annotations and aliases, checks CRC32C checksums, labels and
//! annotations, and takes only credentials of its own service account.
//!
//! What it implements, as the Secret Manager v1 REST reference describes:
//!
//! - `POST /v1/projects/{p}/secrets?secretId=` (CreateSecret: `replication`
//!   required, `labels`, `annotations`, `versionAliases`; ids of 1-255 of
//!   `[A-Za-z0-9_-]`; 409 `ALREADY_EXISTS`), `GET /v1/projects/{p}/secrets/{s}`,
//!   `PATCH` of the same with a required `updateMask` (`labels`,
//!   `annotations`, `versionAliases`), `DELETE` (with an optional `etag`
//!   that must match: 400 `FAILED_PRECONDITION` otherwise) and
//!   `GET /v1/projects/{p}/secrets` (`pageSize` 0 = the server's choice of
//!   25,000, capped there; an opaque `pageToken`; `filter` is refused, as
//!   this server does not evaluate it).
//! - `POST /v1/projects/{p}/secrets/{s}:addVersion` (payload at most
//!   64 KiB; a `dataCrc32c` that does not match the data is 400
//!   `INVALID_ARGUMENT`), `GET .../versions/{v}` and `.../versions/{v}:access`
//!   (`v` a number, `latest` or an alias; a disabled or destroyed version
//!   cannot be accessed: 400 `FAILED_PRECONDITION`; the payload carries
//!   `dataCrc32c`), `GET .../versions` (newest first, paged), and
//!   `POST .../versions/{v}:disable|:enable|:destroy`.
//! - Resource names use the project number (`projects/{number}/...`), as GCP
//!   answers. Errors are `{"error": {"code", "message", "status"}}`; int64
//!   fields are JSON strings; times are RFC 3339.
//! - Labels (CreateSecret, and PATCH with `labels` in the mask): at most 64;
//!   keys match `[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}`, values
//!   `[\p{Ll}\p{Lo}\p{N}_-]{0,63}`, each at most 128 bytes of UTF-8.
//!   Annotations: keys of 1-63 characters (at most 128 bytes) that begin and
//!   end with `[a-zA-Z0-9]` with `-`, `_`, `.` and alphanumerics between;
//!   keys and values together less than 16 KiB. A map that is not one of
//!   strings, or breaks a rule, is 400 `INVALID_ARGUMENT` (the rules of the
//!   v1 reference's `Secret.labels` and `Secret.annotations`).
//! - Every API call needs a credential of the server's own service account
//!   ([`crate::oauth`]): an access token from the token endpoint it serves
//!   at `/token` (the key file's `token_uri`), or a self-signed JWT signed
//!   with the account's key, as `google-cloud-auth` sends. Without one, or
//!   with any other, 401 `UNAUTHENTICATED`; with a token lacking the
//!   `cloud-platform` scope, 403 `PERMISSION_DENIED`. A project other than
//!   the configured one is 403 `PERMISSION_DENIED` ("or it may not exist"),
//!   as GCP answers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::oauth::{Auth, Refusal, ServiceAccount};

const MAX_PAYLOAD: usize = 65_536;
const MAX_PAGE: usize = 25_000;
pub const PROJECT_NUMBER: &str = "123456789012";

#[derive(Clone)]
struct Version {
    number: u64,
    data: Vec<u8>,
    created: SystemTime,
    state: &'static str,
    destroyed: Option<SystemTime>,
    checksum_given: bool,
}

#[derive(Clone)]
struct Secret {
    id: String,
    created: SystemTime,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    aliases: BTreeMap<String, u64>,
    replication: Value,
    versions: Vec<Version>,
    etag: u64,
}

#[derive(Default)]
struct Store {
    secrets: BTreeMap<String, Secret>,
    requests: u64,
    /// Requests by kind: list, read_meta, read_value, write.
    by_kind: BTreeMap<&'static str, u64>,
    corrupt_next_access: bool,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    project: String,
    auth: Arc<Auth>,
}

pub struct SecretManager {
    pub addr: SocketAddr,
    pub project: String,
    shared: Shared,
    key_file: PathBuf,
}

impl Drop for SecretManager {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.key_file);
    }
}

fn status_name(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        _ => "INTERNAL",
    }
}

fn err(code: StatusCode, message: &str) -> Response {
    err_status(code, status_name(code), message)
}

fn err_status(code: StatusCode, status: &str, message: &str) -> Response {
    (code, Json(json!({ "error": { "code": code.as_u16(), "message": message, "status": status } }))).into_response()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

impl SecretManager {
    /// Starts on 127.0.0.1 (a free port), serving `project`, with a new
    /// service account `keybridge-test@<project>.iam.gserviceaccount.com`
    /// whose JSON key file is at [`SecretManager::key_file`]: every API call
    /// needs a credential derived from that key.
    pub async fn start(project: &str) -> SecretManager {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (auth, key_file) = crate::oauth::service_account_for(project, addr, "kb-gcp-sa").await;
        let shared = Shared { store: Arc::new(Mutex::new(Store::default())), project: project.to_string(), auth };
        let app =
            axum::Router::new().route("/token", axum::routing::post(token)).fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SecretManager { addr, project: project.to_string(), shared, key_file }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The service account's JSON key file (mode 0600, removed on drop).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The service account's JSON key, as in [`SecretManager::key_file`].
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
        self.shared.auth.last_refusal()
    }

    /// The claims of the last self-signed JWT an API call was accepted with.
    pub fn last_jwt_claims(&self) -> Option<Map<String, Value>> {
        self.shared.auth.last_jwt_claims()
    }

    /// Ages every access token the endpoint minted past its expiry.
    pub fn expire_access_tokens(&self) {
        self.shared.auth.expire_access_tokens();
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.store().requests
    }

    /// Requests answered, by kind (list, read_meta, read_value, write).
    pub fn requests_by_kind(&self) -> BTreeMap<&'static str, u64> {
        self.store().by_kind.clone()
    }

    /// Points an alias at a version, as `gcloud secrets update
    /// --update-version-aliases` would.
    pub fn set_alias(&self, secret: &str, alias: &str, version: u64) {
        if let Some(s) = self.store().secrets.get_mut(secret) {
            s.aliases.insert(alias.to_string(), version);
        }
    }

    /// The labels of a secret as stored.
    pub fn labels(&self, secret: &str) -> Option<BTreeMap<String, String>> {
        self.store().secrets.get(secret).map(|s| s.labels.clone())
    }

    /// The annotations of a secret as stored.
    pub fn annotations(&self, secret: &str) -> Option<BTreeMap<String, String>> {
        self.store().secrets.get(secret).map(|s| s.annotations.clone())
    }

    /// The payload of the highest-numbered version, as stored.
    pub fn latest(&self, secret: &str) -> Option<Vec<u8>> {
        self.store().secrets.get(secret)?.versions.last().map(|v| v.data.clone())
    }

    /// Whether the latest version's payload came with a `dataCrc32c`.
    pub fn checksum_given(&self, secret: &str) -> Option<bool> {
        self.store().secrets.get(secret)?.versions.last().map(|v| v.checksum_given)
    }

    /// Makes the next access answer a payload whose checksum does not match
    /// (as a corruption in transit would).
    pub fn corrupt_next_access(&self) {
        self.store().corrupt_next_access = true;
    }
}

fn secret_json(project: &str, s: &Secret) -> Value {
    let _ = project;
    json!({
        "name": format!("projects/{PROJECT_NUMBER}/secrets/{}", s.id),
        "replication": s.replication,
        "createTime": rfc3339(s.created),
        "labels": s.labels,
        "annotations": s.annotations,
        "versionAliases": s.aliases.iter().map(|(k, v)| (k.clone(), v.to_string())).collect::<BTreeMap<_, _>>(),
        "etag": format!("\"{}\"", s.etag),
    })
}

fn version_json(s: &Secret, v: &Version) -> Value {
    let mut out = json!({
        "name": format!("projects/{PROJECT_NUMBER}/secrets/{}/versions/{}", s.id, v.number),
        "createTime": rfc3339(v.created),
        "state": v.state,
        "etag": format!("\"{}\"", v.number),
        "clientSpecifiedPayloadChecksum": v.checksum_given,
    });
    if let Some(d) = v.destroyed {
        out["destroyTime"] = json!(rfc3339(d));
    }
    out
}

fn valid_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_annotation_key(k: &str) -> bool {
    static KEY: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new("^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$").expect("regex"));
    k.len() <= 128 && KEY.is_match(k)
}

/// A refusal: the message of a 400 `INVALID_ARGUMENT`.
type Refusal400 = String;

/// A `map<string, string>` field of the request body (absent or null is
/// empty), or the refusal for anything else.
fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, Refusal400> {
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_value(v.clone())
        .map_err(|_| format!("Invalid value at 'secret.{field}': expected a map of strings to strings."))
}

fn check_annotations(a: &BTreeMap<String, String>) -> Result<(), Refusal400> {
    if let Some(k) = a.keys().find(|k| !valid_annotation_key(k)) {
        return Err(format!(
            "Annotation key {k:?} is invalid: keys are 1-63 characters, begin and end with an alphanumeric character ([a-z0-9A-Z]), and contain only alphanumerics, '-', '_' and '.'."
        ));
    }
    if a.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() >= 16 * 1024 {
        return Err("The total size of annotation keys and values must be less than 16KiB.".to_string());
    }
    Ok(())
}

fn check_labels(l: &BTreeMap<String, String>) -> Result<(), Refusal400> {
    static KEY: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"^[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}$").expect("regex"));
    static VALUE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"^[\p{Ll}\p{Lo}\p{N}_-]{0,63}$").expect("regex"));
    if l.len() > 64 {
        return Err(format!("No more than 64 labels can be assigned to a secret; {} were given.", l.len()));
    }
    if let Some(k) = l.keys().find(|k| k.len() > 128 || !KEY.is_match(k)) {
        return Err(format!(
            "Label key {k:?} is invalid: keys are 1-63 characters (at most 128 bytes) of lowercase letters, digits, '_' and '-', starting with a lowercase letter."
        ));
    }
    if let Some((k, v)) = l.iter().find(|(_, v)| v.len() > 128 || !VALUE.is_match(v)) {
        return Err(format!(
            "Label value {v:?} of key {k:?} is invalid: values are 0-63 characters (at most 128 bytes) of lowercase letters, digits, '_' and '-'."
        ));
    }
    Ok(())
}

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<(Vec<T>, String), Refusal400> {
    let size = match q.get("pageSize").map(|s| s.parse::<i64>()) {
        None => MAX_PAGE,
        Some(Ok(0)) => MAX_PAGE,
        Some(Ok(n)) if n > 0 => (n as usize).min(MAX_PAGE),
        _ => return Err("Invalid pageSize: it must be a non-negative integer.".to_string()),
    };
    let start = match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
            .ok_or_else(|| "Invalid pageToken.".to_string())?,
    };
    let out: Vec<T> = items.iter().skip(start).take(size).cloned().collect();
    let next = if start + size < items.len() {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{}", start + size))
    } else {
        String::new()
    };
    Ok((out, next))
}

/// The version a name segment selects: a number, `latest` or an alias.
fn select<'a>(s: &'a Secret, v: &str) -> Option<&'a Version> {
    let n = if v == "latest" {
        s.versions.iter().map(|v| v.number).max()?
    } else if let Ok(n) = v.parse::<u64>() {
        n
    } else {
        *s.aliases.get(v)?
    };
    s.versions.iter().find(|x| x.number == n)
}

/// The 401 (or 403, for scopes) Google's front end answers for a refused
/// credential; the reason is not told (`SecretManager::last_refusal` has it).
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

/// `POST /token`: the OAuth 2.0 token endpoint (JWT-bearer grant).
async fn token(State(sh): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
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
    let mut st = sh.store.lock().unwrap_or_else(|p| p.into_inner());
    st.requests += 1;
    if let Err(r) = sh.auth.authenticate(headers.get("authorization").and_then(|h| h.to_str().ok())) {
        return refused(r);
    }
    let path = uri.path().to_string();
    let Some(rest) = path.strip_prefix("/v1/projects/") else {
        return err(StatusCode::NOT_FOUND, &format!("The requested URL {path} was not found on this server."));
    };
    let (resource, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r.to_string(), Some(v.to_string())),
        _ => (rest.to_string(), None),
    };
    let segs: Vec<&str> = resource.split('/').collect();
    let kind = match (&method, verb.as_deref()) {
        (&Method::GET, Some("access")) => "read_value",
        (&Method::GET, _) if segs.last().is_some_and(|l| *l == "secrets" || *l == "versions") => "list",
        (&Method::GET, _) => "read_meta",
        _ => "write",
    };
    *st.by_kind.entry(kind).or_default() += 1;
    let project = segs[0];
    if project != sh.project && project != PROJECT_NUMBER {
        return err(
            StatusCode::FORBIDDEN,
            &format!(
                "Permission 'secretmanager.secrets.list' denied for resource 'projects/{project}' (or it may not exist)."
            ),
        );
    }
    let json_body = || serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    let not_found = |what: &str| err(StatusCode::NOT_FOUND, &format!("{what} not found or has no versions."));
    let secret_name = |id: &str| format!("Secret [projects/{PROJECT_NUMBER}/secrets/{id}]");
    match (&method, &segs[1..], verb.as_deref()) {
        (&Method::GET, ["secrets"], None) => {
            if q.get("filter").is_some_and(|f| !f.is_empty()) {
                return err(StatusCode::BAD_REQUEST, "This test server does not evaluate filters.");
            }
            // Only the page is rendered: a scan of 100,000 secrets costs the server its pages.
            let all: Vec<&Secret> = st.secrets.values().collect();
            match page(&all, &q) {
                Ok((secrets, next)) => {
                    let secrets: Vec<Value> = secrets.into_iter().map(|s| secret_json(&sh.project, s)).collect();
                    Json(json!({ "secrets": secrets, "nextPageToken": next, "totalSize": all.len() })).into_response()
                }
                Err(m) => err(StatusCode::BAD_REQUEST, &m),
            }
        }
        (&Method::POST, ["secrets"], None) => {
            let id = q.get("secretId").cloned().unwrap_or_default();
            if !valid_id(&id) {
                return err(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid secretId {id:?}: 1-255 characters of letters, digits, '_' and '-'."),
                );
            }
            if st.secrets.contains_key(&id) {
                return err(StatusCode::CONFLICT, &format!("{} already exists.", secret_name(&id)));
            }
            let b = json_body();
            if b["replication"].is_null() {
                return err(StatusCode::BAD_REQUEST, "Secret.replication is required.");
            }
            let checked = string_map(&b["annotations"], "annotations")
                .and_then(|a| check_annotations(&a).map(|()| a))
                .and_then(|a| string_map(&b["labels"], "labels").map(|l| (a, l)))
                .and_then(|(a, l)| check_labels(&l).map(|()| (a, l)));
            let (annotations, labels) = match checked {
                Ok(x) => x,
                Err(m) => return err(StatusCode::BAD_REQUEST, &m),
            };
            let s = Secret {
                id: id.clone(),
                created: SystemTime::now(),
                labels,
                annotations,
                aliases: BTreeMap::new(),
                replication: b["replication"].clone(),
                versions: Vec::new(),
                etag: 1,
            };
            let out = secret_json(&sh.project, &s);
            st.secrets.insert(id, s);
            Json(out).into_response()
        }
        (&Method::GET, ["secrets", id], None) => match st.secrets.get(*id) {
            Some(s) => Json(secret_json(&sh.project, s)).into_response(),
            None => not_found(&secret_name(id)),
        },
        (&Method::PATCH, ["secrets", id], None) => {
            let Some(mask) = q.get("updateMask").filter(|m| !m.is_empty()).cloned() else {
                return err(StatusCode::BAD_REQUEST, "updateMask is required.");
            };
            let b = json_body();
            let Some(s) = st.secrets.get_mut(*id) else { return not_found(&secret_name(id)) };
            for field in mask.split(',') {
                match field {
                    "annotations" => {
                        match string_map(&b["annotations"], "annotations")
                            .and_then(|a| check_annotations(&a).map(|()| a))
                        {
                            Ok(a) => s.annotations = a,
                            Err(m) => return err(StatusCode::BAD_REQUEST, &m),
                        }
                    }
                    "labels" => match string_map(&b["labels"], "labels").and_then(|l| check_labels(&l).map(|()| l)) {
                        Ok(l) => s.labels = l,
                        Err(m) => return err(StatusCode::BAD_REQUEST, &m),
                    },
                    "versionAliases" => {
                        let a: BTreeMap<String, String> =
                            serde_json::from_value(b["versionAliases"].clone()).unwrap_or_default();
                        s.aliases = a.into_iter().filter_map(|(k, v)| Some((k, v.parse().ok()?))).collect();
                    }
                    other => return err(StatusCode::BAD_REQUEST, &format!("Invalid update mask path {other:?}.")),
                }
            }
            s.etag += 1;
            let out = secret_json(&sh.project, s);
            Json(out).into_response()
        }
        (&Method::DELETE, ["secrets", id], None) => {
            let Some(s) = st.secrets.get(*id) else { return not_found(&secret_name(id)) };
            if let Some(etag) = q.get("etag").filter(|e| !e.is_empty())
                && etag.trim_matches('"') != s.etag.to_string()
            {
                return err_status(
                    StatusCode::BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    "The etag does not match the secret's current etag.",
                );
            }
            st.secrets.remove(*id);
            Json(json!({})).into_response()
        }
        (&Method::POST, ["secrets", id], Some("addVersion")) => {
            let b = json_body();
            let Some(s) = st.secrets.get_mut(*id) else { return not_found(&secret_name(id)) };
            let data =
                match base64::engine::general_purpose::STANDARD.decode(b["payload"]["data"].as_str().unwrap_or("")) {
                    Ok(d) => d,
                    Err(_) => return err(StatusCode::BAD_REQUEST, "payload.data is not base64."),
                };
            if data.len() > MAX_PAYLOAD {
                return err(StatusCode::BAD_REQUEST, "Secret payload data must be at most 65536 bytes.");
            }
            let given = b["payload"]["dataCrc32c"].as_str().and_then(|c| c.parse::<i64>().ok());
            if let Some(c) = given
                && c != i64::from(crc32c::crc32c(&data))
            {
                return err(StatusCode::BAD_REQUEST, "Checksum mismatch: payload.data_crc32c does not match the data.");
            }
            let number = s.versions.iter().map(|v| v.number).max().unwrap_or(0) + 1;
            let v = Version {
                number,
                data,
                created: SystemTime::now(),
                state: "ENABLED",
                destroyed: None,
                checksum_given: given.is_some(),
            };
            s.versions.push(v.clone());
            let out = version_json(s, &v);
            Json(out).into_response()
        }
        (&Method::GET, ["secrets", id, "versions"], None) => {
            let Some(s) = st.secrets.get(*id) else { return not_found(&secret_name(id)) };
            let mut all: Vec<Value> = s.versions.iter().map(|v| version_json(s, v)).collect();
            all.reverse();
            match page(&all, &q) {
                Ok((versions, next)) => {
                    Json(json!({ "versions": versions, "nextPageToken": next, "totalSize": all.len() })).into_response()
                }
                Err(m) => err(StatusCode::BAD_REQUEST, &m),
            }
        }
        (&Method::GET, ["secrets", id, "versions", v], verb @ (None | Some("access"))) => {
            let corrupt = std::mem::take(&mut st.corrupt_next_access);
            let Some(s) = st.secrets.get(*id) else { return not_found(&secret_name(id)) };
            let Some(ver) = select(s, v) else {
                return not_found(&format!("Secret Version [projects/{PROJECT_NUMBER}/secrets/{id}/versions/{v}]"));
            };
            if verb.is_none() {
                return Json(version_json(s, ver)).into_response();
            }
            if ver.state != "ENABLED" {
                return err_status(
                    StatusCode::BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    &format!(
                        "Secret Version [projects/{PROJECT_NUMBER}/secrets/{id}/versions/{}] is in {} state.",
                        ver.number, ver.state
                    ),
                );
            }
            let mut sum = i64::from(crc32c::crc32c(&ver.data));
            if corrupt {
                sum ^= 1;
            }
            Json(json!({
                "name": format!("projects/{PROJECT_NUMBER}/secrets/{id}/versions/{}", ver.number),
                "payload": {
                    "data": base64::engine::general_purpose::STANDARD.encode(&ver.data),
                    "dataCrc32c": sum.to_string(),
                },
            }))
            .into_response()
        }
        (&Method::POST, ["secrets", id, "versions", v], Some(action @ ("disable" | "enable" | "destroy"))) => {
            let Some(s) = st.secrets.get_mut(*id) else { return not_found(&secret_name(id)) };
            let Some(n) = select(s, v).map(|x| x.number) else {
                return not_found(&format!("Secret Version [projects/{PROJECT_NUMBER}/secrets/{id}/versions/{v}]"));
            };
            let Some(ver) = s.versions.iter_mut().find(|x| x.number == n) else {
                return not_found(&format!("Secret Version [projects/{PROJECT_NUMBER}/secrets/{id}/versions/{v}]"));
            };
            if ver.state == "DESTROYED" {
                return err_status(
                    StatusCode::BAD_REQUEST,
                    "FAILED_PRECONDITION",
                    &format!(
                        "Secret Version [projects/{PROJECT_NUMBER}/secrets/{id}/versions/{n}] is in DESTROYED state."
                    ),
                );
            }
            match action {
                "disable" => ver.state = "DISABLED",
                "enable" => ver.state = "ENABLED",
                _ => {
                    ver.state = "DESTROYED";
                    ver.data.clear();
                    ver.destroyed = Some(SystemTime::now());
                }
            }
            let ver = ver.clone();
            Json(version_json(s, &ver)).into_response()
        }
        _ => err(StatusCode::NOT_FOUND, &format!("{method} {path} is not a method of this server.")),
    }
}
