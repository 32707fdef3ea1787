//! A Kubernetes API server that implements, as the published API does:
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: the caller's
//!   bearer token must be the configured reviewer token (401 `Status`
//!   otherwise). The reviewed token is checked as the API server checks a
//!   service-account token: signed by the cluster's issuer key, not expired,
//!   its audiences (those the review names, or when it names none the API
//!   server's own, `--api-audiences`, which default to the issuer) and, for
//!   bound tokens, that the
//!   service account still exists with the same uid. The answer is a
//!   `TokenReview` with `status.authenticated`, `status.user` (username
//!   `system:serviceaccount:<ns>:<name>`, uid, groups) and `status.audiences`,
//!   or `status.error`.
//! - `DELETE /api/v1/namespaces/{ns}/serviceaccounts/{name}`: deletes the
//!   account (its tokens stop passing review).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

#[derive(Clone)]
struct Cluster {
    issuer_pem: String,
    issuer: String,
    reviewer_token: String,
    /// (namespace, name) -> uid of the service accounts that exist.
    accounts: Arc<Mutex<HashMap<(String, String), String>>>,
    reviews: Arc<Mutex<u64>>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    cluster: Cluster,
}

impl ApiServer {
    /// Starts on 127.0.0.1 (a free port) with the issuer's public key.
    pub async fn start(issuer_pem: &str, issuer: &str, reviewer_token: &str) -> ApiServer {
        let cluster = Cluster {
            issuer_pem: issuer_pem.to_string(),
            issuer: issuer.to_string(),
            reviewer_token: reviewer_token.to_string(),
            accounts: Arc::new(Mutex::new(HashMap::new())),
            reviews: Arc::new(Mutex::new(0)),
        };
        let app = axum::Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
            .route("/api/v1/namespaces/{ns}/serviceaccounts/{name}", delete(delete_account))
            .with_state(cluster.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiServer { addr, cluster }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn create_account(&self, namespace: &str, name: &str, uid: &str) {
        self.cluster.accounts.lock().unwrap().insert((namespace.into(), name.into()), uid.into());
    }

    pub fn reviews(&self) -> u64 {
        *self.cluster.reviews.lock().unwrap()
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Json<Value>) {
    (
        code,
        Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn review(State(c): State<Cluster>, headers: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if bearer(&headers) != Some(c.reviewer_token.as_str()) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if body["kind"] != "TokenReview" || body["apiVersion"] != "authentication.k8s.io/v1" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body must be an authentication.k8s.io/v1 TokenReview",
        );
    }
    *c.reviews.lock().unwrap() += 1;
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let answer = |status: Value| {
        (
            StatusCode::CREATED,
            Json(json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": { "creationTimestamp": null },
                "spec": body["spec"].clone(),
                "status": status,
            })),
        )
    };
    let fail = |why: &str| answer(json!({ "user": {}, "error": why }));
    let Ok(key) = DecodingKey::from_ec_pem(c.issuer_pem.as_bytes()) else {
        return fail("[invalid bearer token, the issuer key is broken]");
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[c.issuer.as_str()]);
    v.validate_aud = false;
    v.leeway = 0;
    let claims = match jsonwebtoken::decode::<Value>(token, &key, &v) {
        Ok(d) => d.claims,
        Err(e) => return fail(&format!("[invalid bearer token, {e}]")),
    };
    let aud: Vec<String> = claims["aud"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    // As the API server: a review that names no audiences is checked
    // against the server's own; the answer lists the audiences the token
    // is good for, of those asked.
    let asked: Vec<String> = if wanted.is_empty() { vec![c.issuer.clone()] } else { wanted.clone() };
    let audiences: Vec<String> = asked.iter().filter(|a| aud.contains(a)).cloned().collect();
    if audiences.is_empty() {
        return fail("[invalid bearer token, token audiences don't match the requested audiences]");
    }
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or_default().to_string();
    let name = k["serviceaccount"]["name"].as_str().unwrap_or_default().to_string();
    let uid = k["serviceaccount"]["uid"].as_str().unwrap_or_default().to_string();
    match c.accounts.lock().unwrap().get(&(ns.clone(), name.clone())) {
        None => return fail(&format!("[invalid bearer token, serviceaccounts \"{name}\" not found]")),
        Some(existing) if *existing != uid => {
            return fail(&format!(
                "[invalid bearer token, service account UID ({uid}) does not match claim ({existing})]"
            ));
        }
        Some(_) => {}
    }
    answer(json!({
        "authenticated": true,
        "user": {
            "username": format!("system:serviceaccount:{ns}:{name}"),
            "uid": uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
        },
        "audiences": audiences,
    }))
}

async fn delete_account(
    State(c): State<Cluster>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    if bearer(&headers) != Some(c.reviewer_token.as_str()) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    match c.accounts.lock().unwrap().remove(&(ns.clone(), name.clone())) {
        Some(_) => (
            StatusCode::OK,
            Json(
                json!({ "kind": "ServiceAccount", "apiVersion": "v1", "metadata": { "name": name, "namespace": ns } }),
            ),
        ),
        None => status(StatusCode::NOT_FOUND, "NotFound", &format!("serviceaccounts \"{name}\" not found")),
    }
}
