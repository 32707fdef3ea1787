//! The GCP adapter through the official SDK against our Secret Manager test
//! server (`tests/servers/src/secretmanager.rs`), for what drongo does not
//! do: the provider contract suite with `pageSize` paging and annotations,
//! aliases set outside Keybridge, CRC32C checksums, and credentials: the
//! server takes only tokens signed with its service account's key, which
//! the adapter reads from the key file named by `credentials`.

use std::collections::BTreeMap;

use keybridge_provider_api::testing::{Gaps, exercise};
use keybridge_provider_api::{Cloud, CloudValue, Deletion, Error, Precondition, SecretStore, Selector};
use keybridge_provider_gcp::{Credentials, GcpStore, Settings};
use keybridge_testservers::oauth::{MAX_LIFETIME_SECS, Refusal, SKEW_SECS};
use keybridge_testservers::secretmanager::SecretManager;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn settings(sm: &SecretManager, project: &str, credentials: &str) -> Settings {
    Settings::parse(&map(&[("project", project), ("endpoint", &sm.url()), ("credentials", credentials)])).unwrap()
}

/// A store on `sm` with the server's service-account key file.
async fn store(sm: &SecretManager, project: &str) -> GcpStore {
    GcpStore::new(&settings(sm, project, sm.key_file().to_str().unwrap())).await.unwrap()
}

fn text(s: &str) -> CloudValue {
    CloudValue::text(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_contract_holds() {
    let sm = SecretManager::start("keybridge-test").await;
    exercise(&store(&sm, "keybridge-test").await, Cloud::Gcp.capabilities(), Gaps::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_aliases_and_final_deletion() {
    let sm = SecretManager::start("keybridge-test").await;
    let s = store(&sm, "keybridge-test").await;
    s.put("k0", &text("v"), &Precondition::None, Some(&map(&[("owner", "team-a")]))).await.unwrap();
    // Custom metadata is the secret's annotations.
    assert_eq!(sm.annotations("k0").unwrap(), map(&[("owner", "team-a")]));
    // GCP's annotation keys have rules; a bad key is refused with the reason.
    let e = s.set_tags("k0", &map(&[("-bad", "x")])).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("annotation key \"-bad\"")), "{e:?}");

    // An alias set outside Keybridge selects its version as a stage.
    s.put("k0", &text("v2"), &Precondition::CurrentNumber(1), None).await.unwrap();
    sm.set_alias("k0", "stable", 1);
    let read = s.get("k0", &Selector::Stage("stable".into())).await.unwrap();
    assert_eq!((read.value.as_str(), read.version.number), (Some("v"), Some(1)));
    let info = s.describe("k0").await.unwrap();
    assert_eq!(info.versions[0].stages, vec!["stable".to_string()]);
    assert_eq!(s.get("k0", &Selector::Current).await.unwrap().value.as_str(), Some("v2"));

    // Deletion is final, and the refusal says so.
    let e = s.delete("k0", Deletion::Recoverable { days: 7 }).await;
    assert!(matches!(&e, Err(Error::Unsupported { capability, .. }) if capability.contains("recoverably")), "{e:?}");
}

/// The adapter sends only annotations GCP takes: what the published rule
/// refuses is refused before any call (the server, which follows the same
/// rule, sees no request), and what it takes the server stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_sends_only_annotations_gcp_takes() {
    let sm = SecretManager::start("keybridge-test").await;
    let s = store(&sm, "keybridge-test").await;
    s.put("a", &text("v"), &Precondition::None, None).await.unwrap();
    let k63 = format!("a{}z", "-".repeat(61));
    let k64 = format!("a{}z", "b".repeat(62));
    let big = |n: usize| map(&[("k", &"x".repeat(n - 1))]);
    let cases: Vec<(BTreeMap<String, String>, bool)> = vec![
        (map(&[("owner", "team-a")]), true),
        (map(&[("A.b_c-9", "any value: ünïcode, spaces, {json}")]), true),
        (map(&[("0", "")]), true),
        (map(&[(&k63, "v")]), true),
        (big(16 * 1024 - 1), true),
        (map(&[("", "v")]), false),
        (map(&[("-a", "v")]), false),
        (map(&[("a-", "v")]), false),
        (map(&[(".a", "v")]), false),
        (map(&[("a b", "v")]), false),
        (map(&[("a/b", "v")]), false),
        (map(&[("clé", "v")]), false),
        (map(&[(&k64, "v")]), false),
        (big(16 * 1024), false),
    ];
    for (tags, valid) in cases {
        let before = sm.requests();
        let r = s.set_tags("a", &tags).await;
        let shown: Vec<(usize, usize)> = tags.iter().map(|(k, v)| (k.len(), v.len())).collect();
        if valid {
            assert!(r.is_ok(), "{shown:?}: {r:?}");
            assert_eq!(sm.annotations("a").unwrap(), tags);
        } else {
            assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("annotation")), "{shown:?}: {r:?}");
            assert_eq!(sm.requests(), before, "{shown:?}: the adapter sent annotations GCP refuses");
            // A new secret with them is not created, nor half-created.
            let r = s.put("b", &text("v"), &Precondition::Absent, Some(&tags)).await;
            assert!(matches!(&r, Err(Error::InvalidArgument(_))), "{r:?}");
            assert_eq!(sm.requests(), before, "{shown:?}: the adapter sent annotations GCP refuses");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_sent_and_checked() {
    let sm = SecretManager::start("keybridge-test").await;
    let s = store(&sm, "keybridge-test").await;
    // The server refuses a payload whose dataCrc32c does not match, so an
    // accepted write with a checksum shows the adapter sent the right one.
    s.put("c", &text("checked"), &Precondition::None, None).await.unwrap();
    assert_eq!(sm.checksum_given("c"), Some(true));
    assert_eq!(s.get("c", &Selector::Current).await.unwrap().value.as_str(), Some("checked"));
    // A payload corrupted in transit is refused, and says a retry can help.
    sm.corrupt_next_access();
    let e = s.get("c", &Selector::Current).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("CRC32C")), "{e:?}");
    assert!(e.retryable());
    assert_eq!(s.get("c", &Selector::Current).await.unwrap().value.as_str(), Some("checked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_unknown_projects_are_told_apart() {
    let sm = SecretManager::start("keybridge-test").await;
    let anonymous = GcpStore::new(&settings(&sm, "keybridge-test", "anonymous")).await.unwrap();
    let e = anonymous.check().await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthenticated(m) if m.contains("missing required authentication credential")),
        "{e:?}"
    );
    assert_eq!(sm.last_refusal(), Some(Refusal::Missing));
    let e = store(&sm, "other-project").await.check().await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("or it may not exist")), "{e:?}");
}

/// A key the server did not issue (another account's, with the same email)
/// signs tokens the server refuses: a clear `Unauthenticated` that points at
/// the mount's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_did_not_issue_is_refused() {
    let sm = SecretManager::start("keybridge-test").await;
    let other = SecretManager::start("keybridge-test").await;
    assert_eq!(sm.account().client_email, other.account().client_email);
    let s = GcpStore::new(&settings(&sm, "keybridge-test", other.key_file().to_str().unwrap())).await.unwrap();
    let e = s.check().await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthenticated(m) if m.contains("invalid authentication credentials")
            && m.contains("service-account key file")),
        "{e:?}"
    );
    assert_eq!(sm.last_refusal(), Some(Refusal::Signature));
    // The right key works, and the token it signed is the account's.
    store(&sm, "keybridge-test").await.check().await.unwrap();
}

/// With an endpoint that is not Google's, the token the key signs names that
/// endpoint as its audience (and carries no scope), so the host it is sent
/// to cannot use it at Google.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_for_another_endpoint_name_it() {
    let sm = SecretManager::start("keybridge-test").await;
    store(&sm, "keybridge-test").await.check().await.unwrap();
    let c = sm.last_jwt_claims().expect("a self-signed JWT");
    assert_eq!(c["aud"], format!("{}/", sm.url()), "{c:?}");
    assert!(c.get("scope").is_none(), "{c:?}");
    assert_eq!(c["iss"], sm.account().client_email.as_str());
    assert_eq!(c["sub"], sm.account().client_email.as_str());
    let life = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert!(life > 0 && life <= MAX_LIFETIME_SECS + SKEW_SECS, "{life}");
}

/// Key files that are not service-account keys are refused when the mount
/// is loaded, with the reason and the path, and never quote the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_files_are_refused_without_quoting_them() {
    let sm = SecretManager::start("keybridge-test").await;
    let key = sm.key_json();
    let pem = key["private_key"].as_str().unwrap().to_string();
    // A line of the key's base64, which no message may hold.
    let secret_line = pem.lines().nth(3).unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("kb-gcp-bad-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut k = key.clone();
        f(&mut k);
        k.to_string()
    };
    let full = key.to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("truncated", full[..full.len() / 2].to_string(), "not JSON"),
        ("user", with(&|k| k["type"] = "authorized_user".into()), "only service-account keys"),
        ("untyped", with(&|k| k["type"] = serde_json::Value::Null), "not a service-account key"),
        ("no-email", with(&|k| k["client_email"] = serde_json::Value::Null), "client_email is missing"),
        ("no-key", with(&|k| k["private_key"] = "".into()), "private_key is missing"),
        (
            "pkcs1",
            with(&|k| k["private_key"] = pem.replace("PRIVATE KEY", "RSA PRIVATE KEY").into()),
            "not a PEM-encoded PKCS#8",
        ),
        (
            "garbage",
            with(&|k| k["private_key"] = pem.replace(&secret_line, &"A".repeat(secret_line.len())).into()),
            "not an RSA key",
        ),
        ("universe", with(&|k| k["universe_domain"] = "example.com".into()), "universe_domain"),
    ];
    for (name, content, why) in cases {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, &content).unwrap();
        let s = settings(&sm, "keybridge-test", path.to_str().unwrap());
        assert_eq!(s.credentials, Credentials::KeyFile(path.clone()));
        let e = GcpStore::new(&s).await.err().expect(name);
        let m = format!("{e} {e:?}");
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains(why) && m.contains(path.to_str().unwrap())),
            "{name}: {m}"
        );
        assert!(!m.contains(&secret_line) && !m.contains("BEGIN"), "{name} quotes the key: {m}");
    }
    for path in [dir.clone(), dir.join("absent.json")] {
        let e = GcpStore::new(&settings(&sm, "keybridge-test", path.to_str().unwrap())).await.err().unwrap();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("key file")), "{e:?}");
    }
    // A key pasted in place of its path is refused without quoting it.
    let e = Settings::parse(&map(&[("project", "keybridge-test"), ("credentials", &full)])).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if !m.contains(&secret_line) && m.contains("path")), "{e:?}");
    // Settings and the store keep only the path.
    let good = settings(&sm, "keybridge-test", sm.key_file().to_str().unwrap());
    assert!(!format!("{good:?}").contains(&secret_line));
    std::fs::remove_dir_all(&dir).unwrap();
}
