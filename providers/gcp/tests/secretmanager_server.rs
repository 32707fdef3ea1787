//! The Secret Manager test server's own contract, by raw HTTP: what it
//! refuses, so the adapter tests that pass against it mean something. Its
//! OAuth token endpoint mints access tokens only for assertions signed with
//! the service account's key; API calls take only those tokens or JWTs the
//! key signed (expired, forged or misdirected ones are 401
//! `UNAUTHENTICATED`); labels and annotations follow the published rules.

use keybridge_testservers::oauth::{CLOUD_PLATFORM, JWT_BEARER, Refusal, SERVICE_AUDIENCE, ServiceAccount, now};
use keybridge_testservers::secretmanager::SecretManager;
use serde_json::{Value, json};

const PROJECT: &str = "keybridge-test";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(sm: &SecretManager) -> Client {
        Client { http: reqwest::Client::new(), base: sm.url() }
    }

    /// `GET /v1/projects/{PROJECT}/secrets` with `token` (if any).
    async fn list(&self, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(format!("{}/v1/projects/{PROJECT}/secrets", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path_and_query: &str, token: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}/v1/projects/{PROJECT}/{path_and_query}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    /// A JWT-bearer grant with `assertion`.
    async fn grant(&self, assertion: &str) -> (u16, Value) {
        self.token(&[("grant_type", JWT_BEARER), ("assertion", assertion)]).await
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self.http.post(format!("{}/token", self.base)).form(form).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

/// The claims of an assertion for the token endpoint, as Google documents.
fn assertion_claims(sm: &SecretManager) -> Value {
    let t = now();
    json!({
        "iss": sm.account().client_email, "sub": sm.account().client_email, "aud": sm.token_uri(),
        "scope": CLOUD_PLATFORM, "iat": t, "exp": t + 3600,
    })
}

/// The claims of a self-signed JWT (AIP-4111) with Secret Manager's audience.
fn jwt_claims(sm: &SecretManager) -> Value {
    let t = now();
    json!({
        "iss": sm.account().client_email, "sub": sm.account().client_email, "aud": SERVICE_AUDIENCE,
        "iat": t, "exp": t + 3600,
    })
}

fn with(mut v: Value, changes: Value) -> Value {
    for (k, x) in changes.as_object().unwrap() {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

#[track_caller]
fn unauthenticated((code, body): &(u16, Value)) {
    assert_eq!((*code, body["error"]["status"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_mints_tokens_only_for_the_key() {
    let sm = SecretManager::start(PROJECT).await;
    let c = Client::new(&sm);
    let key = sm.account();

    // The key file names this endpoint.
    assert_eq!(sm.key_json()["token_uri"], sm.token_uri());
    // Google's documented assertion header names no `kid`.
    let (code, body) = c.grant(&key.sign_with_kid(None, &assertion_claims(&sm))).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.grant(&key.sign(&assertion_claims(&sm))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["token_type"].as_str(), body["expires_in"].as_i64()), (Some("Bearer"), Some(3599)));
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(c.list(Some(&token)).await.0, 200);

    // Refusals, each with Google's error code.
    let forger = ServiceAccount::generate(PROJECT, "keybridge-test");
    let t = now();
    let cases: Vec<(&str, String, &str, Refusal)> = vec![
        ("forged", forger.sign(&assertion_claims(&sm)), "invalid_grant", Refusal::Signature),
        (
            "forged with the key's id",
            forger.sign_with_kid(Some(&key.private_key_id), &assertion_claims(&sm)),
            "invalid_grant",
            Refusal::Signature,
        ),
        (
            "forged without a kid",
            forger.sign_with_kid(None, &assertion_claims(&sm)),
            "invalid_grant",
            Refusal::Signature,
        ),
        (
            "other account",
            key.sign(&with(assertion_claims(&sm), json!({"iss": "x@y.iam.gserviceaccount.com"}))),
            "invalid_grant",
            Refusal::Account,
        ),
        (
            "delegation",
            key.sign(&with(assertion_claims(&sm), json!({"sub": "user@example.com"}))),
            "unauthorized_client",
            Refusal::Subject,
        ),
        (
            "Google's aud",
            key.sign(&with(assertion_claims(&sm), json!({"aud": "https://oauth2.googleapis.com/token"}))),
            "invalid_grant",
            Refusal::Audience,
        ),
        (
            "expired",
            key.sign(&with(assertion_claims(&sm), json!({"iat": t - 7200, "exp": t - 3600}))),
            "invalid_grant",
            Refusal::Expired,
        ),
        (
            "two hours",
            key.sign(&with(assertion_claims(&sm), json!({"exp": t + 7200}))),
            "invalid_grant",
            Refusal::Times,
        ),
        (
            "from the future",
            key.sign(&with(assertion_claims(&sm), json!({"iat": t + 600, "exp": t + 1200}))),
            "invalid_grant",
            Refusal::Times,
        ),
        ("no exp", key.sign(&with(assertion_claims(&sm), json!({"exp": null}))), "invalid_grant", Refusal::Times),
        ("no scope", key.sign(&with(assertion_claims(&sm), json!({"scope": null}))), "invalid_scope", Refusal::Scope),
        ("not a JWT", "not-a-jwt".to_string(), "invalid_grant", Refusal::Malformed),
    ];
    for (name, assertion, error, why) in cases {
        let (code, body) = c.grant(&assertion).await;
        assert_eq!((code, body["error"].as_str()), (400, Some(error)), "{name}: {body}");
        assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{name}: {body}");
        assert_eq!(sm.last_refusal(), Some(why), "{name}");
    }
    let (code, body) =
        c.token(&[("grant_type", "client_credentials"), ("assertion", &key.sign(&assertion_claims(&sm)))]).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("unsupported_grant_type")), "{body}");
    let (code, body) = c.token(&[("grant_type", JWT_BEARER)]).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_request")), "{body}");

    // A token for another scope is minted, but Secret Manager refuses it.
    let pubsub = with(assertion_claims(&sm), json!({"scope": "https://www.googleapis.com/auth/pubsub"}));
    let (_, body) = c.grant(&key.sign(&pubsub)).await;
    let (code, body) = c.list(body["access_token"].as_str()).await;
    assert_eq!((code, body["error"]["status"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
    assert_eq!(sm.last_refusal(), Some(Refusal::Scope));

    // An hour later the access token is refused.
    sm.expire_access_tokens();
    unauthenticated(&c.list(Some(&token)).await);
    assert_eq!(sm.last_refusal(), Some(Refusal::Expired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_take_only_tokens_from_the_key() {
    let sm = SecretManager::start(PROJECT).await;
    let c = Client::new(&sm);
    let key = sm.account();
    let t = now();

    // Self-signed JWTs: Secret Manager's audience, this server's own URL,
    // or the cloud-platform scope.
    for claims in [
        jwt_claims(&sm),
        with(jwt_claims(&sm), json!({"aud": format!("{}/", sm.url())})),
        with(jwt_claims(&sm), json!({"aud": null, "scope": CLOUD_PLATFORM})),
        // What google-cloud-auth sends: aud null, 10 s of skew each way.
        with(jwt_claims(&sm), json!({"aud": Value::Null, "scope": CLOUD_PLATFORM, "iat": t - 10, "exp": t + 3610})),
    ] {
        let r = c.list(Some(&key.sign(&claims))).await;
        assert_eq!(r.0, 200, "{claims}: {}", r.1);
    }
    // `with` drops null fields; google-cloud-auth sends "aud": null.
    let mut null_aud = with(jwt_claims(&sm), json!({"scope": CLOUD_PLATFORM}));
    null_aud["aud"] = Value::Null;
    assert_eq!(c.list(Some(&key.sign(&null_aud))).await.0, 200);

    let forger = ServiceAccount::generate(PROJECT, "keybridge-test");
    let good = key.sign(&jwt_claims(&sm));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    // Claims the server would take, under another token's signature.
    let other_claims = key.sign(&with(jwt_claims(&sm), json!({"aud": format!("{}/", sm.url())})));
    let tampered = format!("{head}.{}.{sig}", other_claims.split('.').nth(1).unwrap());
    // {"alg":"none","typ":"JWT"}
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", good.split('.').nth(1).unwrap());
    let cases: Vec<(&str, Option<String>, Refusal)> = vec![
        ("none", None, Refusal::Missing),
        ("unknown token", Some("ya29.not-minted-here".into()), Refusal::Unknown),
        ("forged", Some(forger.sign(&jwt_claims(&sm))), Refusal::Signature),
        (
            "forged with the key's id",
            Some(forger.sign_with_kid(Some(&key.private_key_id), &jwt_claims(&sm))),
            Refusal::Signature,
        ),
        ("forged without a kid", Some(forger.sign_with_kid(None, &jwt_claims(&sm))), Refusal::Signature),
        ("tampered", Some(tampered), Refusal::Signature),
        ("unsigned", Some(unsigned), Refusal::Malformed),
        ("expired", Some(key.sign(&with(jwt_claims(&sm), json!({"iat": t - 4000, "exp": t - 400})))), Refusal::Expired),
        ("two hours", Some(key.sign(&with(jwt_claims(&sm), json!({"exp": t + 7200})))), Refusal::Times),
        (
            "other account",
            Some(key.sign(&with(jwt_claims(&sm), json!({"iss": "x@y.iam.gserviceaccount.com"})))),
            Refusal::Account,
        ),
        ("other subject", Some(key.sign(&with(jwt_claims(&sm), json!({"sub": "user@example.com"})))), Refusal::Subject),
        (
            "other service",
            Some(key.sign(&with(jwt_claims(&sm), json!({"aud": "https://pubsub.googleapis.com/"})))),
            Refusal::Audience,
        ),
        ("an assertion", Some(key.sign(&assertion_claims(&sm))), Refusal::Audience),
        ("no audience", Some(key.sign(&with(jwt_claims(&sm), json!({"aud": null})))), Refusal::Audience),
    ];
    for (name, token, why) in cases {
        let (code, body) = c.list(token.as_deref()).await;
        assert_eq!((code, body["error"]["status"].as_str()), (401, Some("UNAUTHENTICATED")), "{name}: {body}");
        assert_eq!(sm.last_refusal(), Some(why), "{name}");
    }
    // A JWT scoped to another API: 403, insufficient scopes.
    let pubsub =
        key.sign(&with(jwt_claims(&sm), json!({"aud": null, "scope": "https://www.googleapis.com/auth/pubsub"})));
    let (code, body) = c.list(Some(&pubsub)).await;
    assert_eq!((code, body["error"]["status"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
    // Nothing was read or written for a refused call.
    assert!(sm.requests_by_kind().get("list").is_some_and(|n| *n == 5), "{:?}", sm.requests_by_kind());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_follow_the_published_rules() {
    let sm = SecretManager::start(PROJECT).await;
    let k63 = format!("a{}", "b".repeat(62));
    let many = |n: usize| Value::Object((0..n).map(|i| (format!("l{i}"), json!("v"))).collect());
    let cases: Vec<(Value, bool)> = vec![
        (json!({"env": "prod", "team": ""}), true),
        (json!({"k_1-x": "v_1-x", "a": "0-9_"}), true),
        (json!({"ключ": "значение", "日本": "東京"}), true),
        (json!({ k63.clone(): "b".repeat(63) }), true),
        (many(64), true),
        (json!({"": "v"}), false),
        (json!({"Env": "prod"}), false),
        (json!({"1a": "v"}), false),
        (json!({"_a": "v"}), false),
        (json!({"a.b": "v"}), false),
        (json!({"a": "Prod"}), false),
        (json!({"a": "x.y"}), false),
        (json!({"a": "x y"}), false),
        (json!({ format!("{k63}b"): "v" }), false),
        (json!({"a": "b".repeat(64)}), false),
        (many(65), false),
        (json!({"a": 1}), false),
        (json!(["a"]), false),
    ];
    map_rules_hold(&sm, "labels", "l", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_follow_the_published_rules() {
    let sm = SecretManager::start(PROJECT).await;
    let total = |n: usize| json!({ "k": "x".repeat(n - 1) });
    let cases: Vec<(Value, bool)> = vec![
        (json!({"owner": "any value: ünïcode, {json}"}), true),
        (json!({"A.b_c-9": "", "0": "x"}), true),
        (json!({ format!("a{}z", "-".repeat(61)): "v" }), true),
        (total(16 * 1024 - 1), true),
        (json!({"": "v"}), false),
        (json!({"-a": "v"}), false),
        (json!({"a.": "v"}), false),
        (json!({"a b": "v"}), false),
        (json!({"a/b": "v"}), false),
        (json!({"clé": "v"}), false),
        (json!({ "a".repeat(64): "v" }), false),
        (total(16 * 1024), false),
        (json!({"a": true}), false),
    ];
    map_rules_hold(&sm, "annotations", "a", cases).await;
}

/// Creates a secret with each map as its `field` (`labels` or
/// `annotations`): valid ones are kept as given; invalid ones are refused
/// 400 INVALID_ARGUMENT, on create and by UpdateSecret alike.
async fn map_rules_hold(sm: &SecretManager, field: &str, prefix: &str, cases: Vec<(Value, bool)>) {
    let c = Client::new(sm);
    let token = sm.account().sign(&jwt_claims(sm));
    let patched = format!("patched-{field}");
    c.send(
        reqwest::Method::POST,
        &format!("secrets?secretId={patched}"),
        &token,
        &json!({"replication": {"automatic": {}}}),
    )
    .await;
    for (i, (map, valid)) in cases.into_iter().enumerate() {
        let id = format!("{prefix}{i}");
        let body = json!({"replication": {"automatic": {}}, field: map});
        let (code, resp) = c.send(reqwest::Method::POST, &format!("secrets?secretId={id}"), &token, &body).await;
        assert_eq!(code, if valid { 200 } else { 400 }, "create with {field} {map}: {resp}");
        if !valid {
            assert_eq!(resp["error"]["status"], "INVALID_ARGUMENT", "{resp}");
            let (code, resp) = c
                .send(
                    reqwest::Method::PATCH,
                    &format!("secrets/{patched}?updateMask={field}"),
                    &token,
                    &json!({ field: map }),
                )
                .await;
            assert_eq!((code, resp["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{map}: {resp}");
        } else if field == "labels" {
            assert_eq!(serde_json::to_value(sm.labels(&id).unwrap()).unwrap(), map);
        }
    }
}
