//! Both login methods against real signed tokens, and the Kubernetes
//! TokenReview call against the contract test server in tests/servers.

use keybridge_auth::{Error, Method, Settings};
use keybridge_testservers::issuer::{Issuer, now};
use keybridge_testservers::kubernetes::ApiServer;
use serde_json::json;

const ISS: &str = "https://kubernetes.default.svc.cluster.local";

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The origin document's role.
fn app_service() -> Settings {
    settings(&[
        ("bound_service_account_names", "app-sa"),
        ("bound_service_account_namespaces", "production"),
        ("policies", "app-service"),
        ("ttl", "1h"),
    ])
}

fn refused(r: Result<keybridge_auth::Grant, Error>) -> String {
    match r {
        Err(Error::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn kubernetes_login_with_pem_keys() {
    let cluster = Issuer::new(ISS, "k1");
    let method = Method::parse(
        "kubernetes",
        &settings(&[("pem_keys", &cluster.public_pem()), ("issuer", ISS), ("audience", "keybridge")]),
    )
    .unwrap();
    let role = app_service();
    let ok = cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    let g = method.login("app-service", &role, &ok).await.unwrap();
    assert_eq!(g.policies, vec!["app-service"]);
    assert_eq!(g.ttl_secs, 3600);
    assert_eq!(g.display_name, "kubernetes-production-app-sa");
    assert_eq!(g.metadata["service_account_uid"], "uid-1");

    let wrong_ns = cluster.service_account_token("staging", "app-sa", "uid-1", "keybridge", 600);
    assert!(refused(method.login("app-service", &role, &wrong_ns).await).contains("namespace \"staging\""));
    let wrong_sa = cluster.service_account_token("production", "other-sa", "uid-2", "keybridge", 600);
    assert!(refused(method.login("app-service", &role, &wrong_sa).await).contains("name \"other-sa\""));
    let expired = cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", -3600);
    assert!(refused(method.login("app-service", &role, &expired).await).contains("expired"));
    let forged = Issuer::new(ISS, "k1").service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    assert!(refused(method.login("app-service", &role, &forged).await).contains("signature"));
    let other_aud = cluster.service_account_token("production", "app-sa", "uid-1", "someone-else", 600);
    assert!(refused(method.login("app-service", &role, &other_aud).await).contains("audience"));
    let other_iss = Issuer::new("https://evil", "k1");
    let m2 = Method::parse(
        "kubernetes",
        &settings(&[("pem_keys", &other_iss.public_pem()), ("issuer", ISS), ("audience", "keybridge")]),
    )
    .unwrap();
    let t = other_iss.service_account_token("production", "app-sa", "u", "keybridge", 600);
    assert!(refused(m2.login("app-service", &role, &t).await).contains("issuer"));
    assert!(refused(method.login("app-service", &role, "not-a-jwt").await).contains("not a signed JWT"));
}

#[tokio::test]
async fn kubernetes_login_with_jwks_and_globs() {
    let cluster = Issuer::new(ISS, "key-2024");
    // Any audience, said explicitly; without an audience the config is refused.
    let e = Method::parse("kubernetes", &settings(&[("jwks", &cluster.jwks())])).err().unwrap();
    assert!(e.to_string().contains("audience is required"), "{e}");
    let method =
        Method::parse("kubernetes", &settings(&[("jwks", &cluster.jwks()), ("disable_audience_check", "true")]))
            .unwrap();
    let role = settings(&[
        ("bound_service_account_names", "ci-*"),
        ("bound_service_account_namespaces", "*"),
        ("policies", "ci"),
    ]);
    let t = cluster.service_account_token("build", "ci-runner", "u", "x", 600);
    assert_eq!(method.login("ci", &role, &t).await.unwrap().policies, vec!["ci"]);
    let t = cluster.service_account_token("build", "deployer", "u", "x", 600);
    assert!(refused(method.login("ci", &role, &t).await).contains("deployer"));
    // A token whose kid names another key finds no key.
    let other = Issuer::new(ISS, "key-2025");
    let t = other.service_account_token("build", "ci-runner", "u", "x", 600);
    assert!(refused(method.login("ci", &role, &t).await).contains("no configured key"));
}

#[tokio::test]
async fn token_review_refuses_tokens_of_deleted_service_accounts() {
    let cluster = Issuer::new(ISS, "k1");
    let api = ApiServer::start(&cluster.public_pem(), ISS, "reviewer-token").await;
    api.create_account("production", "app-sa", "uid-1");
    let config = settings(&[
        ("pem_keys", &cluster.public_pem()),
        ("token_review", "true"),
        ("kubernetes_host", &api.url()),
        ("token_reviewer_jwt", "reviewer-token"),
        ("audience", "keybridge"),
    ]);
    let method = Method::parse("kubernetes", &config).unwrap();
    let token = cluster.service_account_token("production", "app-sa", "uid-1", "keybridge", 600);
    method.login("app-service", &app_service(), &token).await.unwrap();
    assert_eq!(api.reviews(), 1);
    // The account is deleted: its still-unexpired token no longer works.
    let client = reqwest::Client::new();
    let r = client
        .delete(format!("{}/api/v1/namespaces/production/serviceaccounts/app-sa", api.url()))
        .bearer_auth("reviewer-token")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let why = refused(method.login("app-service", &app_service(), &token).await);
    assert!(why.contains("TokenReview") && why.contains("not found"), "{why}");
    // Review only (no keys): the names come from the review.
    api.create_account("production", "app-sa", "uid-1");
    let only = Method::parse(
        "kubernetes",
        &settings(&[
            ("token_review", "true"),
            ("kubernetes_host", &api.url()),
            ("token_reviewer_jwt", "reviewer-token"),
        ]),
    )
    .unwrap();
    // With no audience configured the review names none, and the API server
    // checks its own (the issuer): a token projected for keybridge is
    // refused there, one for the API server passes.
    let why = refused(only.login("app-service", &app_service(), &token).await);
    assert!(why.contains("did not authenticate") && why.contains("audiences"), "{why}");
    let for_api = cluster.service_account_token("production", "app-sa", "uid-1", ISS, 600);
    only.login("app-service", &app_service(), &for_api).await.unwrap();
    let forged = Issuer::new(ISS, "k1").service_account_token("production", "app-sa", "uid-1", ISS, 600);
    assert!(refused(only.login("app-service", &app_service(), &forged).await).contains("did not authenticate"));
    // A wrong reviewer token: the API refuses the review itself.
    let bad = Method::parse(
        "kubernetes",
        &settings(&[("token_review", "true"), ("kubernetes_host", &api.url()), ("token_reviewer_jwt", "nope")]),
    )
    .unwrap();
    assert!(
        matches!(bad.login("app-service", &app_service(), &token).await, Err(Error::Unavailable(m)) if m.contains("401"))
    );
}

#[tokio::test]
async fn jwt_login_binds_audience_subject_and_claims() {
    let ci = Issuer::new("https://token.actions.githubusercontent.com", "gh");
    let method = Method::parse(
        "jwt",
        &settings(&[("jwks", &ci.jwks()), ("bound_issuer", "https://token.actions.githubusercontent.com")]),
    )
    .unwrap();
    let role = settings(&[
        ("bound_audiences", "https://github.com/acme"),
        ("bound_claims", r#"{"repository": "acme/app", "ref": ["refs/heads/main", "refs/heads/release"]}"#),
        ("user_claim", "actor"),
        ("policies", "deploy"),
        ("ttl", "15m"),
    ]);
    let claims = |repo: &str, git_ref: &str, aud: &str| {
        json!({
            "iss": "https://token.actions.githubusercontent.com", "aud": aud,
            "sub": format!("repo:{repo}:ref:{git_ref}"), "repository": repo, "ref": git_ref,
            "actor": "octocat", "exp": now() + 300, "iat": now(),
        })
    };
    let ok = ci.sign(&claims("acme/app", "refs/heads/main", "https://github.com/acme"));
    let g = method.login("deploy", &role, &ok).await.unwrap();
    assert_eq!((g.display_name.as_str(), g.ttl_secs), ("jwt-octocat", 900));
    let t = ci.sign(&claims("acme/other", "refs/heads/main", "https://github.com/acme"));
    assert!(refused(method.login("deploy", &role, &t).await).contains("repository"));
    let t = ci.sign(&claims("acme/app", "refs/heads/feature", "https://github.com/acme"));
    assert!(refused(method.login("deploy", &role, &t).await).contains("ref"));
    let t = ci.sign(&claims("acme/app", "refs/heads/main", "https://example.com"));
    assert!(refused(method.login("deploy", &role, &t).await).contains("audience"));
    let mut c = claims("acme/app", "refs/heads/main", "https://github.com/acme");
    c.as_object_mut().unwrap().remove("actor");
    assert!(refused(method.login("deploy", &role, &ci.sign(&c)).await).contains("user_claim"));
    let glob = settings(&[
        ("bound_claims", r#"{"sub": "repo:acme/*"}"#),
        ("bound_claims_type", "glob"),
        ("bound_audiences", "https://github.com/acme"),
        ("policies", "ci"),
    ]);
    assert!(method.login("ci", &glob, &ok).await.is_ok());

    // bound_issuer: a token naming no issuer is refused.
    let mut c = claims("acme/app", "refs/heads/main", "https://github.com/acme");
    c.as_object_mut().unwrap().remove("iss");
    assert!(refused(method.login("deploy", &role, &ci.sign(&c)).await).contains("iss"));
    // GHSA-h395-gr6q-cpjc: `nbf` (or `exp`) as a string is not a time to
    // skip; jsonwebtoken 10 refuses the token.
    for (k, v) in [("nbf", json!((now() + 3600).to_string())), ("exp", json!("9999999999"))] {
        let mut c = claims("acme/app", "refs/heads/main", "https://github.com/acme");
        c[k] = v;
        let why = refused(method.login("deploy", &role, &ci.sign(&c)).await);
        assert!(why.contains("invalid") || why.contains("not valid yet") || why.contains("no exp"), "{k}: {why}");
    }
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let cases: &[(&str, Settings, &str)] = &[
        ("kubernetes", settings(&[]), "signing keys"),
        ("kubernetes", settings(&[("pem_keys", "nonsense")]), "no PEM block"),
        ("kubernetes", settings(&[("jwks", "{\"keys\": 3}")]), "JWK set"),
        ("kubernetes", settings(&[("token_review", "true")]), "kubernetes_host"),
        ("kubernetes", settings(&[("token_review", "maybe")]), "true or false"),
        ("kubernetes", settings(&[("colour", "red")]), "unknown kubernetes config setting"),
        ("jwt", settings(&[]), "signing keys"),
        ("ldap", settings(&[]), "unknown auth method type"),
    ];
    for (kind, s, want) in cases {
        match Method::parse(kind, s) {
            Err(Error::Invalid(m)) => assert!(m.contains(want), "{kind}: {m}"),
            Ok(_) => panic!("{kind} {s:?} was accepted"),
            Err(e) => panic!("{e:?}"),
        }
    }
    let roles: &[(&str, Settings, &str)] = &[
        ("kubernetes", settings(&[("policies", "a")]), "bound_service_account_names"),
        (
            "kubernetes",
            settings(&[
                ("bound_service_account_names", "a"),
                ("bound_service_account_namespaces", "b"),
                ("ttl", "2h"),
                ("max_ttl", "1h"),
            ]),
            "must not exceed",
        ),
        (
            "kubernetes",
            settings(&[
                ("bound_service_account_names", "a"),
                ("bound_service_account_namespaces", "b"),
                ("ttl", "soon"),
            ]),
            "duration",
        ),
        ("jwt", settings(&[("policies", "a")]), "must bind something"),
        ("jwt", settings(&[("bound_claims", "[1]"), ("policies", "a")]), "JSON object"),
    ];
    for (kind, s, want) in roles {
        match Method::validate_role(kind, s) {
            Err(Error::Invalid(m)) => assert!(m.contains(want), "{kind}: {m}"),
            other => panic!("{kind} {s:?}: {other:?}"),
        }
    }
}
