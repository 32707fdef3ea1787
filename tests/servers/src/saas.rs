//! A third-party service that hands out API keys, for the example `saas`
//! engine: `POST /v1/keys {"name"}` → 201 `{"id","secret"}`,
//! `GET /v1/keys/{id}` → 200 `{"id","name"}` (404 if unknown),
//! `DELETE /v1/keys/{id}` → 204 (404 if unknown), all with
//! `Authorization: Bearer <admin token>` (401 otherwise). `GET /v1/whoami`
//! with `Authorization: Bearer <key secret>` answers 200 for a live key, 401
//! otherwise: what a client of the service would see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

#[derive(Clone)]
struct Shared {
    admin: String,
    /// id -> (name, secret)
    keys: Arc<Mutex<HashMap<String, (String, String)>>>,
    next: Arc<AtomicU64>,
    deletes_fail: Arc<AtomicBool>,
    deletes: Arc<AtomicU64>,
}

pub struct Saas {
    pub addr: SocketAddr,
    shared: Shared,
}

impl Saas {
    pub async fn start(admin_token: &str) -> Saas {
        let shared = Shared {
            admin: admin_token.into(),
            keys: Default::default(),
            next: Arc::new(AtomicU64::new(1)),
            deletes_fail: Default::default(),
            deletes: Default::default(),
        };
        let app = axum::Router::new()
            .route("/v1/keys", post(create))
            .route("/v1/keys/{id}", delete(remove).get(show))
            .route("/v1/whoami", get(whoami))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Saas { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether a key secret is live.
    pub fn valid(&self, secret: &str) -> bool {
        self.shared.keys.lock().unwrap().values().any(|(_, s)| s == secret)
    }

    pub fn live_keys(&self) -> usize {
        self.shared.keys.lock().unwrap().len()
    }

    /// Makes deletes answer 503 (true) or work again (false).
    pub fn fail_deletes(&self, fail: bool) {
        self.shared.deletes_fail.store(fail, Ordering::SeqCst);
    }

    /// Keys created (whether or not the gateway handed them out).
    pub fn created(&self) -> u64 {
        self.shared.next.load(Ordering::SeqCst).saturating_sub(1)
    }

    /// Delete calls received (failed ones included).
    pub fn deletes(&self) -> u64 {
        self.shared.deletes.load(Ordering::SeqCst)
    }
}

fn admin_ok(s: &Shared, h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", s.admin))
}

async fn create(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if !admin_ok(&s, &h) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad admin token"})));
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let id = format!("key-{}", s.next.fetch_add(1, Ordering::SeqCst));
    let secret: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
    s.keys.lock().unwrap().insert(id.clone(), (name, secret.clone()));
    (StatusCode::CREATED, Json(json!({"id": id, "secret": secret})))
}

async fn show(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    if !admin_ok(&s, &h) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad admin token"})));
    }
    match s.keys.lock().unwrap().get(&id) {
        Some((name, _)) => (StatusCode::OK, Json(json!({"id": id, "name": name}))),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "no such key"}))),
    }
}

async fn remove(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> StatusCode {
    s.deletes.fetch_add(1, Ordering::SeqCst);
    if !admin_ok(&s, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    if s.deletes_fail.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match s.keys.lock().unwrap().remove(&id) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

async fn whoami(State(s): State<Shared>, h: HeaderMap) -> StatusCode {
    let secret = h.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match secret {
        Some(sec) if s.keys.lock().unwrap().values().any(|(_, k)| k == sec) => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}
