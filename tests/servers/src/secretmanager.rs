//! A GCP Secret Manager (v1, REST/JSON) test server that follows the
//! published contract where drongo, the third-party emulator the other
//! tests use, does not: it honours `pageSize` with `nextPageToken`, keeps
//! annotations and aliases, and checks CRC32C checksums.
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
//! - With `require_token`, requests without a bearer token get 401
//!   `UNAUTHENTICATED`. A project other than the configured one is 403
//!   `PERMISSION_DENIED` ("or it may not exist"), as GCP answers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

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
    require_token: bool,
}

pub struct SecretManager {
    pub addr: SocketAddr,
    pub project: String,
    shared: Shared,
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
    /// Starts on 127.0.0.1 (a free port), serving `project`.
    pub async fn start(project: &str, require_token: bool) -> SecretManager {
        let shared =
            Shared { store: Arc::new(Mutex::new(Store::default())), project: project.to_string(), require_token };
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SecretManager { addr, project: project.to_string(), shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
    let b = k.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// A refusal: the message of a 400 `INVALID_ARGUMENT`.
type Refusal = String;

fn check_annotations(a: &BTreeMap<String, String>) -> Result<(), Refusal> {
    if let Some(k) = a.keys().find(|k| !valid_annotation_key(k)) {
        return Err(format!(
            "Annotation key {k:?} is invalid: keys are 1-63 characters, begin and end with an alphanumeric character, and contain only alphanumerics, '-', '_' and '.'."
        ));
    }
    if a.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 16 * 1024 {
        return Err("The total size of annotations must be less than 16KiB.".to_string());
    }
    Ok(())
}

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<(Vec<T>, String), Refusal> {
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
    if sh.require_token
        && !headers.get("authorization").and_then(|h| h.to_str().ok()).is_some_and(|h| h.starts_with("Bearer "))
    {
        return err(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
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
            let all: Vec<Value> = st.secrets.values().map(|s| secret_json(&sh.project, s)).collect();
            match page(&all, &q) {
                Ok((secrets, next)) => {
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
            let annotations: BTreeMap<String, String> =
                serde_json::from_value(b["annotations"].clone()).unwrap_or_default();
            if let Err(m) = check_annotations(&annotations) {
                return err(StatusCode::BAD_REQUEST, &m);
            }
            let s = Secret {
                id: id.clone(),
                created: SystemTime::now(),
                labels: serde_json::from_value(b["labels"].clone()).unwrap_or_default(),
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
                        let a: BTreeMap<String, String> =
                            serde_json::from_value(b["annotations"].clone()).unwrap_or_default();
                        if let Err(m) = check_annotations(&a) {
                            return err(StatusCode::BAD_REQUEST, &m);
                        }
                        s.annotations = a;
                    }
                    "labels" => s.labels = serde_json::from_value(b["labels"].clone()).unwrap_or_default(),
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
