//! The `gcpckms` seal (`GcpKms`) through the official Cloud KMS client
//! against our Cloud KMS test server (`tests/servers/src/cloudkms.rs`):
//! round trips with CRC32C both ways, blobs of older primary versions,
//! blobs of other keys, an unreachable or failing service, credentials the
//! server refuses, and the settings' validation. The last tests check the
//! test server's own contract by raw HTTP, so the adapter tests that pass
//! against it mean something.

use std::collections::BTreeMap;

use base64::Engine as _;
use keybridge_provider_api::{Error, KeyService};
use keybridge_provider_gcp::Credentials;
use keybridge_provider_gcp::kms::{GcpKms, GcpKmsSettings};
use keybridge_testservers::cloudkms::{CloudKms, Corruption};
use keybridge_testservers::oauth::{CLOUD_PLATFORM, Refusal, SERVICE_AUDIENCE, now};
use serde_json::{Value, json};

const PROJECT: &str = "keybridge-test";
const AAD: &[u8] = b"keybridge-use=barrier-root-key";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The seal block for `key` on `kms`, with `credentials`.
fn block(kms: &CloudKms, project: &str, key: &str, credentials: &str) -> BTreeMap<String, String> {
    map(&[
        ("project", project),
        ("region", "global"),
        ("key_ring", "keybridge"),
        ("crypto_key", key),
        ("endpoint", &kms.url()),
        ("credentials", credentials),
    ])
}

/// A seal on `kms` for `key` (in key ring `keybridge`, location `global`),
/// with the server's service-account key file.
async fn seal(kms: &CloudKms, key: &str) -> GcpKms {
    let s = GcpKms::parse(&block(kms, PROJECT, key, kms.key_file().to_str().unwrap())).unwrap();
    GcpKms::new(&s).await.unwrap()
}

/// A server with the CryptoKey `projects/keybridge-test/locations/global/
/// keyRings/keybridge/cryptoKeys/root`, and a seal for it.
async fn setup() -> (CloudKms, GcpKms) {
    let kms = CloudKms::start(PROJECT).await;
    kms.create_key("global", "keybridge", "root");
    let s = seal(&kms, "root").await;
    (kms, s)
}

fn root_key() -> Vec<u8> {
    (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect()
}

/// No error message may hold the plaintext, as bytes, hex or base64.
#[track_caller]
fn no_plaintext(e: &Error, plaintext: &[u8]) {
    let m = format!("{e} {e:?}");
    let hex: String = plaintext.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
    assert!(!m.contains(&hex) && !m.contains(&b64[..20]), "the plaintext is in: {m}");
    assert!(!m.contains('\n'), "not one line: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_makes_a_round_trip_with_checksums_both_ways() {
    let (kms, s) = setup().await;
    assert_eq!(s.kind(), "gcpckms");
    assert_eq!(s.key_id(), "projects/keybridge-test/locations/global/keyRings/keybridge/cryptoKeys/root");
    let key = root_key();
    let blob = s.encrypt(&key).await.unwrap();
    assert!(!blob.windows(key.len()).any(|w| w == key.as_slice()), "the blob holds the key in the clear");
    let again = s.encrypt(&key).await.unwrap();
    assert_ne!(blob, again, "a fresh nonce each time");
    assert_eq!(s.decrypt(&blob).await.unwrap().as_slice(), key.as_slice());
    assert_eq!(s.decrypt(&again).await.unwrap().as_slice(), key.as_slice());

    // Checksums and the blob's use went with both calls.
    let e = kms.last_seen("Encrypt").unwrap();
    assert!(e.data_checksum && e.aad_checksum && e.aad == AAD, "{e:?}");
    assert_eq!(e.name, s.key_id());
    let d = kms.last_seen("Decrypt").unwrap();
    assert!(d.data_checksum && d.aad_checksum && d.aad == AAD, "{d:?}");
    assert_eq!((kms.calls_of("Encrypt"), kms.calls_of("Decrypt")), (2, 2));
    // A key file: self-signed JWTs, no token endpoint call.
    assert_eq!(kms.calls_of("Token"), 0);
    assert_eq!(kms.last_jwt_claims().unwrap()["aud"], format!("{}/", kms.url()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_opens_after_the_primary_version_changed_until_its_version_is_disabled() {
    let (kms, s) = setup().await;
    let raw = Raw::new(&kms);
    let key = root_key();
    let old = s.encrypt(&key).await.unwrap();

    // Rotate through the API: a new version, made primary.
    let name = s.key_id();
    let (code, v) = raw.send(reqwest::Method::POST, &format!("{name}/cryptoKeyVersions"), &json!({})).await;
    assert_eq!((code, v["name"].as_str()), (200, Some(format!("{name}/cryptoKeyVersions/2").as_str())), "{v}");
    assert_eq!(v["state"], "ENABLED");
    let (code, k) = raw
        .send(reqwest::Method::POST, &format!("{name}:updatePrimaryVersion"), &json!({"cryptoKeyVersionId": "2"}))
        .await;
    assert_eq!((code, k["primary"]["name"].as_str()), (200, v["name"].as_str()), "{k}");

    let new = s.encrypt(&key).await.unwrap();
    assert_eq!(old[1..9], 1u64.to_be_bytes(), "the test server's blob names its version");
    assert_eq!(new[1..9], 2u64.to_be_bytes());
    assert_eq!(s.decrypt(&old).await.unwrap().as_slice(), key.as_slice());
    assert_eq!(s.decrypt(&new).await.unwrap().as_slice(), key.as_slice());

    // Version 1 disabled: its blob does not open, and the message says why.
    let (code, body) = raw
        .send(
            reqwest::Method::PATCH,
            &format!("{name}/cryptoKeyVersions/1?updateMask=state"),
            &json!({"state": "DISABLED"}),
        )
        .await;
    assert_eq!((code, body["state"].as_str()), (200, Some("DISABLED")), "{body}");
    let e = s.decrypt(&old).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("DISABLED") && m.contains("enable it")), "{e:?}");
    assert!(!e.retryable());
    no_plaintext(&e, &key);
    assert_eq!(s.decrypt(&new).await.unwrap().as_slice(), key.as_slice());
    assert!(kms.set_enabled(&name, 1, true));
    assert_eq!(s.decrypt(&old).await.unwrap().as_slice(), key.as_slice());

    // The primary disabled: nothing encrypts.
    assert!(kms.set_enabled(&name, 2, false));
    let e = s.encrypt(&key).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("not enabled")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_of_another_key_or_a_changed_one_is_refused() {
    let (kms, s) = setup().await;
    kms.create_key("global", "keybridge", "other");
    let other = seal(&kms, "other").await;
    let key = root_key();
    let theirs = other.encrypt(&key).await.unwrap();
    let e = s.decrypt(&theirs).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("Decryption failed") && m.contains("not encrypted by this key")),
        "{e:?}"
    );
    assert!(!e.retryable());
    no_plaintext(&e, &key);

    let mut changed = s.encrypt(&key).await.unwrap();
    if let Some(b) = changed.last_mut() {
        *b ^= 0x80;
    }
    let e = s.decrypt(&changed).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(_)), "{e:?}");
    for junk in [&b"not a blob"[..], &[0u8; 64][..]] {
        let e = s.decrypt(junk).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(_)), "{e:?}");
    }
    let e = s.decrypt(&[]).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("empty")), "{e:?}");
    // Plaintexts Cloud KMS would refuse are refused before any call.
    let before = kms.calls_of("Encrypt");
    for bad in [Vec::new(), vec![0u8; 64 * 1024 + 1]] {
        let e = s.encrypt(&bad).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("65536")), "{e:?}");
    }
    assert_eq!(kms.calls_of("Encrypt"), before);
    // 64 KiB is the most.
    let big = vec![7u8; 64 * 1024];
    assert_eq!(s.decrypt(&s.encrypt(&big).await.unwrap()).await.unwrap().as_slice(), big.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_is_down_or_unreachable_is_unavailable() {
    let (kms, s) = setup().await;
    let key = root_key();
    let blob = s.encrypt(&key).await.unwrap();
    kms.set_down(true);
    let e = s.encrypt(&key).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.to_lowercase().contains("unavailable")), "{e:?}");
    assert!(e.retryable());
    no_plaintext(&e, &key);
    let e = s.decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(_)), "{e:?}");
    kms.set_down(false);
    assert_eq!(s.decrypt(&blob).await.unwrap().as_slice(), key.as_slice());

    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut b = block(&kms, PROJECT, "root", kms.key_file().to_str().unwrap());
    b.insert("endpoint".into(), format!("http://127.0.0.1:{closed}"));
    let nowhere = GcpKms::new(&GcpKms::parse(&b).unwrap()).await.unwrap();
    let e = nowhere.decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("cannot be reached")), "{e:?}");
    no_plaintext(&e, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_corrupted_in_transit_are_refused_as_retryable() {
    let (kms, s) = setup().await;
    let key = root_key();
    let blob = s.encrypt(&key).await.unwrap();
    for c in [Corruption::CiphertextChecksum, Corruption::PlaintextNotVerified] {
        kms.corrupt_next(c);
        let e = s.encrypt(&key).await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("corrupted in transit") && m.contains("retry")),
            "{c:?}: {e:?}"
        );
    }
    kms.corrupt_next(Corruption::PlaintextChecksum);
    let e = s.decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("corrupted in transit")), "{e:?}");
    assert!(e.retryable());
    no_plaintext(&e, &key);
    // The next try goes through.
    assert_eq!(s.decrypt(&blob).await.unwrap().as_slice(), key.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_projects_and_keys_the_server_does_not_know_are_told_apart() {
    let (kms, _) = setup().await;
    let key = root_key();
    // Another server's key file: the same account's email, another key.
    let stranger = CloudKms::start(PROJECT).await;
    let s = GcpKms::new(&GcpKms::parse(&block(&kms, PROJECT, "root", stranger.key_file().to_str().unwrap())).unwrap())
        .await
        .unwrap();
    let e = s.encrypt(&key).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthenticated(m) if m.contains("invalid authentication credentials")
            && m.contains("seal's credentials")),
        "{e:?}"
    );
    assert_eq!(kms.last_refusal(), Some(Refusal::Signature));
    no_plaintext(&e, &key);

    let anonymous = GcpKms::new(&GcpKms::parse(&block(&kms, PROJECT, "root", "anonymous")).unwrap()).await.unwrap();
    let e = anonymous.encrypt(&key).await.unwrap_err();
    assert!(matches!(&e, Error::Unauthenticated(_)), "{e:?}");
    assert_eq!(kms.last_refusal(), Some(Refusal::Missing));

    let file = kms.key_file().to_str().unwrap().to_string();
    let other_project =
        GcpKms::new(&GcpKms::parse(&block(&kms, "other-project", "root", &file)).unwrap()).await.unwrap();
    let e = other_project.encrypt(&key).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("or it may not exist")
            && m.contains("roles/cloudkms.cryptoKeyEncrypterDecrypter")),
        "{e:?}"
    );

    let missing = seal(&kms, "missing").await;
    let e = missing.encrypt(&key).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("crypto_key")), "{e:?}");
    let e = missing.decrypt(&[1u8; 64]).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(_)), "{e:?}");
}

#[test]
fn settings_are_checked_without_io() {
    let good = map(&[
        ("project", "keybridge-test"),
        ("region", "us-east1"),
        ("key_ring", "ring_1"),
        ("crypto_key", "Root-Key"),
    ]);
    let s = GcpKms::parse(&good).unwrap();
    assert_eq!(
        s,
        GcpKmsSettings {
            project: "keybridge-test".into(),
            region: "us-east1".into(),
            key_ring: "ring_1".into(),
            crypto_key: "Root-Key".into(),
            endpoint: None,
            credentials: Credentials::Default,
        }
    );
    assert_eq!(s.key_name(), "projects/keybridge-test/locations/us-east1/keyRings/ring_1/cryptoKeys/Root-Key");
    let with = |k: &str, v: &str| {
        let mut m = good.clone();
        m.insert(k.into(), v.into());
        m
    };
    let without = |k: &str| {
        let mut m = good.clone();
        m.remove(k);
        m
    };
    let s = GcpKms::parse(&with("credentials", "/etc/keybridge/sa.json")).unwrap();
    assert_eq!(s.credentials, Credentials::KeyFile("/etc/keybridge/sa.json".into()));
    assert_eq!(GcpKms::parse(&with("region", "global")).unwrap().region, "global");
    assert_eq!(
        GcpKms::parse(&with("endpoint", "https://cloudkms.googleapis.com")).unwrap().endpoint.as_deref(),
        Some("https://cloudkms.googleapis.com")
    );

    let refused: Vec<(&str, BTreeMap<String, String>, &str)> = vec![
        ("no key_ring", without("key_ring"), "needs key_ring"),
        ("empty key_ring", with("key_ring", " "), "needs key_ring"),
        ("no crypto_key", without("crypto_key"), "needs crypto_key"),
        ("no region", without("region"), "needs region"),
        ("no project", without("project"), "project"),
        ("unknown key", with("kms_key_id", "x"), "project, region, key_ring, crypto_key, endpoint, credentials"),
        ("a mount's key", with("kb_cache", "x"), "unknown gcpckms seal setting \"kb_cache\""),
        ("bad endpoint", with("endpoint", "cloudkms.googleapis.com"), "http://"),
        ("endpoint with user info", with("endpoint", "https://user@evil.example"), "plain"),
        ("bad region", with("region", "US East"), "region"),
        ("bad key ring", with("key_ring", "a/b"), "key_ring"),
        ("long key", with("crypto_key", &"k".repeat(64)), "crypto_key"),
        ("bad credentials", with("credentials", "relative/path.json"), "credentials"),
    ];
    for (name, settings, why) in refused {
        let e = GcpKms::parse(&settings).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(why)), "{name}: {e:?}");
    }
    // A key pasted in place of its path is not quoted back.
    let pasted = "{\"type\": \"service_account\", \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIsecret\"}";
    let e = GcpKms::parse(&with("credentials", pasted)).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if !m.contains("MIIsecret")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_file_is_refused_when_the_seal_is_built() {
    let kms = CloudKms::start(PROJECT).await;
    let path = std::env::temp_dir().join(format!("kb-gcp-kms-bad-key-{}.json", std::process::id()));
    std::fs::write(&path, "{\"type\": \"authorized_user\"}").unwrap();
    let s = GcpKms::parse(&block(&kms, PROJECT, "root", path.to_str().unwrap())).unwrap();
    let e = GcpKms::new(&s).await.err().unwrap();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.starts_with("GCP Cloud KMS: the credentials key file")
            && m.contains("only service-account keys")),
        "{e:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

// The test server's own contract, by raw HTTP.

struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Raw {
    /// A client with a self-signed JWT of the server's account, with the
    /// server's URL as its audience.
    fn new(kms: &CloudKms) -> Raw {
        Raw { http: reqwest::Client::new(), base: kms.url(), token: kms.account().sign(&jwt_claims(kms, None)) }
    }

    async fn send(&self, method: reqwest::Method, path_and_query: &str, body: &Value) -> (u16, Value) {
        self.send_as(&self.token, method, path_and_query, body).await
    }

    async fn send_as(&self, token: &str, method: reqwest::Method, path_and_query: &str, body: &Value) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}/v1/{path_and_query}", self.base)).bearer_auth(token);
        if !body.is_null() {
            r = r.json(body);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }
}

fn jwt_claims(kms: &CloudKms, aud: Option<&str>) -> Value {
    let t = now();
    let email = &kms.account().client_email;
    let aud = aud.map(str::to_string).unwrap_or_else(|| format!("{}/", kms.url()));
    json!({ "iss": email, "sub": email, "aud": aud, "iat": t, "exp": t + 3600 })
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn crc(data: &[u8]) -> String {
    crc32c::crc32c(data).to_string()
}

#[track_caller]
fn refused((code, body): &(u16, Value), want_code: u16, status: &str) {
    assert_eq!((*code, body["error"]["status"].as_str()), (want_code, Some(status)), "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_creates_rings_keys_and_versions_as_published() {
    use reqwest::Method;
    let kms = CloudKms::start(PROJECT).await;
    let c = Raw::new(&kms);
    let loc = format!("projects/{PROJECT}/locations/us-east1");
    let ring = format!("{loc}/keyRings/r1");
    let (code, body) = c.send(Method::POST, &format!("{loc}/keyRings?keyRingId=r1"), &json!({})).await;
    assert_eq!((code, body["name"].as_str()), (200, Some(ring.as_str())), "{body}");
    refused(&c.send(Method::POST, &format!("{loc}/keyRings?keyRingId=r1"), &json!({})).await, 409, "ALREADY_EXISTS");
    for bad in ["", "a.b", &"a".repeat(64)] {
        let r = c.send(Method::POST, &format!("{loc}/keyRings?keyRingId={bad}"), &json!({})).await;
        refused(&r, 400, "INVALID_ARGUMENT");
    }
    assert_eq!(c.send(Method::GET, &ring, &Value::Null).await.0, 200);
    refused(&c.send(Method::GET, &format!("{loc}/keyRings/nope"), &Value::Null).await, 404, "NOT_FOUND");
    refused(&c.send(Method::GET, &format!("{loc}/keyRings/a.b"), &Value::Null).await, 400, "INVALID_ARGUMENT");
    refused(
        &c.send(Method::GET, &format!("projects/{PROJECT}/locations/US/keyRings/r1"), &Value::Null).await,
        400,
        "INVALID_ARGUMENT",
    );

    // CryptoKeys: purpose required, only ENCRYPT_DECRYPT.
    let purpose = json!({"purpose": "ENCRYPT_DECRYPT"});
    refused(
        &c.send(Method::POST, &format!("{ring}/cryptoKeys?cryptoKeyId=k"), &json!({})).await,
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        &c.send(Method::POST, &format!("{ring}/cryptoKeys?cryptoKeyId=k"), &json!({"purpose": "ASYMMETRIC_SIGN"}))
            .await,
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        &c.send(Method::POST, &format!("{loc}/keyRings/nope/cryptoKeys?cryptoKeyId=k"), &purpose).await,
        404,
        "NOT_FOUND",
    );
    let (code, k) = c.send(Method::POST, &format!("{ring}/cryptoKeys?cryptoKeyId=k"), &purpose).await;
    assert_eq!(code, 200, "{k}");
    let key = format!("{ring}/cryptoKeys/k");
    assert_eq!((k["name"].as_str(), k["purpose"].as_str()), (Some(key.as_str()), Some("ENCRYPT_DECRYPT")));
    assert_eq!(k["primary"]["name"], format!("{key}/cryptoKeyVersions/1"));
    assert_eq!(k["primary"]["state"], "ENABLED");
    refused(&c.send(Method::POST, &format!("{ring}/cryptoKeys?cryptoKeyId=k"), &purpose).await, 409, "ALREADY_EXISTS");
    // Without an initial version: no primary, nothing encrypts.
    let (code, bare) = c
        .send(Method::POST, &format!("{ring}/cryptoKeys?cryptoKeyId=bare&skipInitialVersionCreation=true"), &purpose)
        .await;
    assert_eq!(code, 200, "{bare}");
    assert!(bare.get("primary").is_none(), "{bare}");
    let pt = json!({"plaintext": b64(b"x")});
    refused(&c.send(Method::POST, &format!("{ring}/cryptoKeys/bare:encrypt"), &pt).await, 400, "FAILED_PRECONDITION");

    // Versions: created ENABLED, not primary; PATCH takes only state.
    let (code, v2) = c.send(Method::POST, &format!("{key}/cryptoKeyVersions"), &json!({})).await;
    assert_eq!((code, v2["name"].as_str()), (200, Some(format!("{key}/cryptoKeyVersions/2").as_str())), "{v2}");
    assert_eq!(kms.primary(&key), Some(1));
    let v1 = format!("{key}/cryptoKeyVersions/1");
    refused(&c.send(Method::PATCH, &v1, &json!({"state": "DISABLED"})).await, 400, "INVALID_ARGUMENT");
    refused(
        &c.send(Method::PATCH, &format!("{v1}?updateMask=state"), &json!({"state": "DESTROYED"})).await,
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        &c.send(Method::PATCH, &format!("{v1}?updateMask=labels"), &json!({"labels": {}})).await,
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        &c.send(Method::PATCH, &format!("{key}/cryptoKeyVersions/9?updateMask=state"), &json!({"state": "ENABLED"}))
            .await,
        404,
        "NOT_FOUND",
    );
    let (code, body) = c.send(Method::PATCH, &format!("{v1}?updateMask=state"), &json!({"state": "DISABLED"})).await;
    assert_eq!((code, body["state"].as_str()), (200, Some("DISABLED")), "{body}");
    assert_eq!(c.send(Method::GET, &v1, &Value::Null).await.1["state"], "DISABLED");
    // The primary disabled: Encrypt is FAILED_PRECONDITION.
    refused(&c.send(Method::POST, &format!("{key}:encrypt"), &pt).await, 400, "FAILED_PRECONDITION");
    // A disabled version cannot become primary; an absent one is 404.
    let primary = |id: &str| json!({ "cryptoKeyVersionId": id });
    refused(
        &c.send(Method::POST, &format!("{key}:updatePrimaryVersion"), &primary("1")).await,
        400,
        "FAILED_PRECONDITION",
    );
    refused(&c.send(Method::POST, &format!("{key}:updatePrimaryVersion"), &primary("7")).await, 404, "NOT_FOUND");
    let (code, body) = c.send(Method::POST, &format!("{key}:updatePrimaryVersion"), &primary("2")).await;
    assert_eq!((code, body["primary"]["name"].as_str()), (200, v2["name"].as_str()), "{body}");

    // Enums as numbers when asked, as google-cloud-rust asks.
    let (_, body) = c.send(Method::GET, &format!("{key}?%24alt=json%3Benum-encoding%3Dint"), &Value::Null).await;
    assert_eq!((body["purpose"].as_i64(), body["primary"]["state"].as_i64()), (Some(1), Some(1)), "{body}");
    let calls = kms.calls();
    assert_eq!(calls.get("CreateCryptoKey"), Some(&6), "{calls:?}");
    assert_eq!(calls.get("UpdateCryptoKeyVersion"), Some(&5), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_checks_checksums_and_blobs_as_published() {
    use reqwest::Method;
    let kms = CloudKms::start(PROJECT).await;
    let key = kms.create_key("global", "r", "k");
    let c = Raw::new(&kms);
    let enc = |extra: Value| {
        let mut b = json!({"plaintext": b64(b"secret"), "additionalAuthenticatedData": b64(b"aad")});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Without checksums: nothing verified; with them, both verified.
    let (code, r) = c.send(Method::POST, &format!("{key}:encrypt"), &enc(json!({}))).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["verifiedPlaintextCrc32c"].as_bool(), r["protectionLevel"].as_str()),
        (Some(false), Some("SOFTWARE"))
    );
    let sums = json!({"plaintextCrc32c": crc(b"secret"), "additionalAuthenticatedDataCrc32c": crc(b"aad")});
    let (code, r) = c.send(Method::POST, &format!("{key}:encrypt"), &enc(sums)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["name"], format!("{key}/cryptoKeyVersions/1"));
    assert_eq!(
        (r["verifiedPlaintextCrc32c"].as_bool(), r["verifiedAdditionalAuthenticatedDataCrc32c"].as_bool()),
        (Some(true), Some(true))
    );
    let blob = base64::engine::general_purpose::STANDARD.decode(r["ciphertext"].as_str().unwrap()).unwrap();
    assert_eq!(r["ciphertextCrc32c"], crc(&blob));
    // Mismatched checksums, empty or oversized plaintext: 400.
    for bad in [
        enc(json!({"plaintextCrc32c": "1"})),
        enc(json!({"additionalAuthenticatedDataCrc32c": crc(b"other")})),
        enc(json!({"plaintextCrc32c": "not a number"})),
        json!({}),
        json!({"plaintext": b64(&vec![0u8; 64 * 1024 + 1])}),
        json!({"plaintext": "!!"}),
        json!(["not an object"]),
    ] {
        refused(&c.send(Method::POST, &format!("{key}:encrypt"), &bad).await, 400, "INVALID_ARGUMENT");
    }

    let dec = |ct: &[u8], aad: &[u8]| {
        json!({
            "ciphertext": b64(ct), "ciphertextCrc32c": crc(ct),
            "additionalAuthenticatedData": b64(aad), "additionalAuthenticatedDataCrc32c": crc(aad),
        })
    };
    let (code, r) = c.send(Method::POST, &format!("{key}:decrypt"), &dec(&blob, b"aad")).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!((r["plaintext"].as_str(), r["usedPrimary"].as_bool()), (Some(b64(b"secret").as_str()), Some(true)));
    assert_eq!(r["plaintextCrc32c"], crc(b"secret"));
    // Other AAD, a changed blob, a checksum that does not match.
    refused(&c.send(Method::POST, &format!("{key}:decrypt"), &dec(&blob, b"other")).await, 400, "INVALID_ARGUMENT");
    let mut changed = blob.clone();
    changed[30] ^= 1;
    refused(&c.send(Method::POST, &format!("{key}:decrypt"), &dec(&changed, b"aad")).await, 400, "INVALID_ARGUMENT");
    let mut wrong_sum = dec(&blob, b"aad");
    wrong_sum["ciphertextCrc32c"] = json!(crc(&changed));
    let r = c.send(Method::POST, &format!("{key}:decrypt"), &wrong_sum).await;
    refused(&r, 400, "INVALID_ARGUMENT");
    assert!(r.1["error"]["message"].as_str().unwrap().contains("ciphertext_crc32c"), "{}", r.1);
    // Decrypt takes a CryptoKey, not a version.
    refused(
        &c.send(Method::POST, &format!("{key}/cryptoKeyVersions/1:decrypt"), &dec(&blob, b"aad")).await,
        400,
        "INVALID_ARGUMENT",
    );
    // After a rotation the old blob opens, not with the primary.
    let v2 = kms.add_version(&key).unwrap();
    assert!(kms.set_primary(&key, v2));
    let (code, r) = c.send(Method::POST, &format!("{key}:decrypt"), &dec(&blob, b"aad")).await;
    assert_eq!((code, r["usedPrimary"].as_bool()), (200, Some(false)), "{r}");
    // Its version disabled: FAILED_PRECONDITION.
    assert!(kms.set_enabled(&key, 1, false));
    refused(&c.send(Method::POST, &format!("{key}:decrypt"), &dec(&blob, b"aad")).await, 400, "FAILED_PRECONDITION");
    // Encrypt with a version named.
    let (code, r) = c.send(Method::POST, &format!("{key}/cryptoKeyVersions/2:encrypt"), &enc(json!({}))).await;
    assert_eq!((code, r["name"].as_str()), (200, Some(format!("{key}/cryptoKeyVersions/2").as_str())), "{r}");
    // A missing key is 404; another project 403.
    refused(
        &c.send(
            Method::POST,
            "projects/keybridge-test/locations/global/keyRings/r/cryptoKeys/none:encrypt",
            &enc(json!({})),
        )
        .await,
        404,
        "NOT_FOUND",
    );
    refused(
        &c.send(
            Method::POST,
            "projects/other-project/locations/global/keyRings/r/cryptoKeys/k:encrypt",
            &enc(json!({})),
        )
        .await,
        403,
        "PERMISSION_DENIED",
    );
    assert_eq!(kms.calls_of("Decrypt"), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_takes_only_its_own_credentials_and_can_be_down() {
    use reqwest::Method;
    let kms = CloudKms::start(PROJECT).await;
    let key = kms.create_key("global", "r", "k");
    let c = Raw::new(&kms);
    let t = now();
    let email = kms.account().client_email.clone();
    // The cloud-platform scope instead of an audience is taken.
    let scoped =
        kms.account().sign(&json!({"iss": email, "sub": email, "scope": CLOUD_PLATFORM, "iat": t, "exp": t + 3600}));
    assert_eq!(c.send_as(&scoped, Method::GET, &key, &Value::Null).await.0, 200);
    // Secret Manager's audience is not Cloud KMS's.
    let sm = kms.account().sign(&jwt_claims(&kms, Some(SERVICE_AUDIENCE)));
    refused(&c.send_as(&sm, Method::GET, &key, &Value::Null).await, 401, "UNAUTHENTICATED");
    assert_eq!(kms.last_refusal(), Some(Refusal::Audience));
    refused(&c.send_as("ya29.unknown", Method::GET, &key, &Value::Null).await, 401, "UNAUTHENTICATED");
    assert_eq!(kms.last_refusal(), Some(Refusal::Unknown));
    let stranger = CloudKms::start(PROJECT).await;
    let forged = stranger.account().sign(&jwt_claims(&kms, None));
    refused(&c.send_as(&forged, Method::GET, &key, &Value::Null).await, 401, "UNAUTHENTICATED");
    assert_eq!(kms.last_refusal(), Some(Refusal::Signature));

    kms.set_down(true);
    refused(&c.send(Method::GET, &key, &Value::Null).await, 503, "UNAVAILABLE");
    let resp = reqwest::Client::new().post(kms.token_uri()).form(&[("grant_type", "x")]).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    kms.set_down(false);
    assert_eq!(c.send(Method::GET, &key, &Value::Null).await.0, 200);
    assert_eq!((kms.calls_of("GetCryptoKey"), kms.calls_of("Token")), (6, 1));
}
