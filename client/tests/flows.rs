//! The client against a real dev gateway over a real socket: retries only
//! where a call is safe to repeat, watch resubscription, login, renewal.

use std::collections::HashMap;
use std::time::Duration;

use keybridge_client::{Client, Config, Renewal, Renewer, Retry, WatchItem, fields, pb};
use keybridge_testservers::gateway::DevGateway;
use keybridge_testservers::issuer::{Issuer, now};
use tokio_stream::StreamExt;

/// Patient enough to outlast a gateway that comes back within seconds.
const PATIENT: Retry =
    Retry { attempts: 40, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(200) };

async fn root(gw: &DevGateway) -> Client {
    Client::connect(Config::new(gw.address.clone()).with_token(gw.root_token.clone()).with_retry(PATIENT))
        .await
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A sealed gateway answers UNAVAILABLE. A read waits through it; a write
/// is tried once and fails, and (as the read afterwards shows) never
/// happens, though a retrying client would have got it in after the unseal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_outlasts_a_sealed_gateway_and_a_write_is_tried_once() {
    let gw = DevGateway::start();
    let c = root(&gw).await;
    c.kv_put("secret/app/db", fields([("user", "app")]), None).await.unwrap();
    c.sys().seal(pb::SealRequest {}).await.unwrap();

    let key = gw.unseal_key.clone();
    let unsealer = c.without_token();
    let (unsealed_tx, unsealed) = tokio::sync::oneshot::channel();
    let unseal = tokio::spawn(async move {
        let _ = unsealed.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        unsealer.sys().unseal(pb::UnsealRequest { key, reset: false, migrate: false }).await.unwrap();
    });

    let put = c.kv_put("secret/app/other", fields([("k", "v")]), None).await;
    let err = put.expect_err("a write to a sealed gateway");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(!unseal.is_finished(), "the write returned after the unseal: it was retried");
    unsealed_tx.send(()).unwrap();

    let read = c.kv_get("secret/app/db").await.unwrap().expect("the secret, once unsealed");
    assert_eq!(read.version.unwrap().version, 1);
    unseal.await.unwrap();
    assert!(c.kv_get("secret/app/other").await.unwrap().is_none(), "the refused write happened");
}

/// Nothing listens yet: a check-and-set write fails at once with
/// UNAVAILABLE; a read made before the gateway starts waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_for_a_gateway_that_is_starting_and_a_write_does_not() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let c = Client::connect_lazy(Config::new(address.clone()).with_token("root-unknown").with_retry(PATIENT)).unwrap();
    let put = c.kv_put("secret/a", fields([("k", "v")]), Some(0)).await;
    assert_eq!(put.unwrap_err().code(), tonic::Code::Unavailable);

    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        DevGateway::start_on(&address)
    });
    // The gateway's root token differs: the read, once through, is refused,
    // which shows it reached the gateway that started after it was made.
    let read = c.kv_get("secret/a").await;
    let gw = starter.join().unwrap();
    assert_eq!(read.unwrap_err().code(), tonic::Code::Unauthenticated);
    let c = c.with_token(&gw.root_token).unwrap();
    assert!(c.kv_get("secret/a").await.unwrap().is_none());
}

/// A gateway that dies (SIGKILL: the connection breaks mid-stream) or
/// stops (SIGTERM: it ends its watch streams); each time the watch opens
/// again on the gateway that replaces it, says so, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resubscribes_across_a_restart() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let gw = DevGateway::start_on(&address);
    let c = root(&gw).await;
    let mut w = c.watch("secret/app/flag").await.unwrap();
    c.kv_put("secret/app/flag", fields([("on", "1")]), None).await.unwrap();
    let Some(Ok(WatchItem::Event(e))) = w.next().await else { panic!("no first event") };
    assert_eq!((e.kind.as_str(), e.version), ("put", 1));

    let mut gw = gw;
    for graceful in [false, true] {
        if graceful {
            gw.terminate();
        }
        drop(gw);
        // The same root token: DevGateway derives it from the test process.
        gw = DevGateway::start_on(&address);
        let item = tokio::time::timeout(Duration::from_secs(30), w.next()).await.expect("resubscribed in time");
        assert!(matches!(item, Some(Ok(WatchItem::Resubscribed))), "graceful {graceful}: {item:?}");
        c.kv_put("secret/app/flag", fields([("on", "2")]), None).await.unwrap();
        let Some(Ok(WatchItem::Event(e))) = w.next().await else { panic!("no event after the restart") };
        assert_eq!((e.kind.as_str(), e.version), ("put", 1), "the new gateway's first version");
    }
}

/// A watch on a path the token may not read ends with PERMISSION_DENIED
/// at once, and is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_watch_fails_at_once() {
    let gw = DevGateway::start();
    let c = root(&gw).await;
    let req = pb::CreateTokenRequest { policies: vec!["default".into()], ..Default::default() };
    let limited = c.tokens().create(req).await.unwrap().into_inner().token;
    let err = c.with_token(&limited).unwrap().watch("secret/app/flag").await.err().expect("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
}

/// Login through a JWT method gives a client carrying the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_a_client_with_the_new_token() {
    let gw = DevGateway::start();
    let c = root(&gw).await;
    let iss = Issuer::new("https://ci.example", "ci-1");
    let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    c.auth()
        .enable(pb::EnableAuthRequest { path: "ci".into(), r#type: "jwt".into(), ..Default::default() })
        .await
        .unwrap();
    let config = map(&[("pem_keys", &iss.public_pem()), ("bound_issuer", "https://ci.example")]);
    c.auth().write_config(pb::WriteAuthConfigRequest { path: "ci".into(), settings: config }).await.unwrap();
    let policy = r#"path "secret/data/deploy/*" { capabilities = ["read"] }"#;
    c.policies().put(pb::PutPolicyRequest { name: "deploy".into(), policy: policy.into() }).await.unwrap();
    let role = map(&[("bound_audiences", "keybridge"), ("user_claim", "sub"), ("policies", "deploy"), ("ttl", "10m")]);
    c.auth()
        .write_role(pb::WriteAuthRoleRequest { path: "ci".into(), role: "deploy".into(), settings: role })
        .await
        .unwrap();
    c.kv_put("secret/deploy/key", fields([("k", "v")]), None).await.unwrap();

    let jwt = iss.sign(&serde_json::json!({
        "iss": "https://ci.example", "aud": "keybridge", "sub": "pipeline-7", "iat": now(), "exp": now() + 300,
    }));
    let (deploy, resp) = c.login("ci", "deploy", &jwt).await.unwrap();
    assert!(resp.info.unwrap().policies.contains(&"deploy".to_string()));
    assert!(deploy.kv_get("secret/deploy/key").await.unwrap().is_some());
    let denied = deploy.kv_put("secret/deploy/key", fields([("k", "w")]), None).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let bad = c.login("ci", "deploy", "not-a-jwt").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated, "{bad}");
    assert!(bad.to_string().starts_with("UNAUTHENTICATED: login refused"), "{bad}");
}

/// A token renewed in the background lives past its TTL, and the renewer
/// stops, saying so, when the maximum lifetime is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_renewed_until_its_max_ttl() {
    let gw = DevGateway::start();
    let c = root(&gw).await;
    let req = pb::CreateTokenRequest { ttl_seconds: 2, max_ttl_seconds: 5, ..Default::default() };
    let made = c.tokens().create(req).await.unwrap().into_inner();
    let user = c.with_token(&made.token).unwrap();
    let mut renewer = Renewer::token(user.clone(), None);
    let mut renewals = 0;
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(20), renewer.changed()).await.expect("a status in time") {
            Renewal::Renewed { .. } => renewals += 1,
            other => break other,
        }
    };
    assert!(matches!(last, Renewal::MaxReached { .. }), "{last:?}");
    assert!(renewals >= 2, "renewed {renewals} times");
    // Past its 2 s TTL by renewals, and still alive until its max.
    user.tokens().lookup_self(pb::LookupSelfRequest {}).await.unwrap();
}

/// A renewer for a lease that does not exist stops with the gateway's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_an_unknown_lease_fails_and_stops() {
    let gw = DevGateway::start();
    let c = root(&gw).await;
    let mut renewer = Renewer::lease(c, "passwords/creds/nobody/123", None);
    let status = tokio::time::timeout(Duration::from_secs(10), renewer.changed()).await.unwrap();
    let Renewal::Failed(msg) = status else { panic!("{status:?}") };
    assert!(msg.starts_with("NOT_FOUND") || msg.starts_with("INVALID_ARGUMENT"), "{msg}");
}

/// Bad settings are one-line errors before any connection.
#[tokio::test]
async fn bad_settings_are_clear_errors() {
    let e = Client::connect_lazy(Config::new("http://[::1")).unwrap_err();
    assert!(e.to_string().contains("not a gateway address"), "{e}");
    let e = Client::connect_lazy(Config::new("http://127.0.0.1:1").with_ca_cert("/nonexistent.pem")).unwrap_err();
    assert!(e.to_string().contains("not https://"), "{e}");
    let e = Client::connect_lazy(Config::new("https://127.0.0.1:1").with_ca_cert("/nonexistent.pem")).unwrap_err();
    assert!(e.to_string().starts_with("cannot read /nonexistent.pem"), "{e}");
    let e = Client::connect_lazy(Config::new("http://127.0.0.1:1").with_token("bad\ntoken")).unwrap_err();
    assert!(e.to_string().contains("cannot be sent"), "{e}");
    assert!(!format!("{e:?}").contains("bad\ntoken"));
    let e = Client::connect(Config::new("http://127.0.0.1:1").with_connect_timeout(Duration::from_secs(2))).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::Unavailable);
}
