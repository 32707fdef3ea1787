//! The Azure adapter through the official SDK (`azure_security_keyvault_secrets`
//! with `azure_identity`'s client-secret credential) against our Key Vault
//! test server (`tests/servers/src/keyvault.rs`), over HTTPS with a test CA:
//! no third-party Key Vault emulator runs here.

use std::collections::BTreeMap;
use std::time::Duration;

use keybridge_provider_api::limits::{Limited, Limits, Rate};
use keybridge_provider_api::testing::{Gaps, exercise};
use keybridge_provider_api::{Cloud, CloudValue, Deletion, Error, Precondition, SecretStore, Selector, VersionChange};
use keybridge_provider_azure::{AzureStore, BINARY_TYPE, NUMBER_TAG, Settings};
use keybridge_testservers::keyvault::{self, KeyVault};
use zeroize::Zeroizing;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn settings(kv: &KeyVault, client: &str, secret: &str, tenant: &str) -> Settings {
    let ca = std::env::temp_dir().join(format!("kb-kv-ca-{}-{}.pem", std::process::id(), kv.addr.port()));
    std::fs::write(&ca, &kv.ca_pem).unwrap();
    Settings::parse(&map(&[
        ("vault_url", &kv.url),
        ("authority_host", &kv.url),
        ("tenant_id", tenant),
        ("client_id", client),
        ("client_secret", secret),
        ("ca_cert", ca.to_str().unwrap()),
    ]))
    .unwrap()
}

fn store(kv: &KeyVault) -> AzureStore {
    AzureStore::new(&settings(kv, keyvault::CLIENT_ID, keyvault::CLIENT_SECRET, &kv.tenant)).unwrap()
}

fn text(s: &str) -> CloudValue {
    CloudValue::text(s)
}

#[test]
fn settings_are_validated_without_io() {
    let ok = map(&[
        ("vault_url", "https://my-vault.vault.azure.net"),
        ("tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("client_id", "11111111-2222-3333-4444-555555555555"),
        ("client_secret", "s"),
    ]);
    let s = Settings::parse(&ok).unwrap();
    assert!(!format!("{s:?}").contains("\"s\""), "the secret never prints: {s:?}");
    let bad = |pairs: &[(&str, &str)], text: &str| {
        let e = Settings::parse(&map(pairs)).unwrap_err().to_string();
        assert!(e.contains(text), "{e:?} should mention {text:?}");
    };
    bad(&[], "vault_url is required");
    bad(&[("vault_url", "http://my-vault.vault.azure.net")], "https://");
    bad(&[("vault_url", "https://v.vault.azure.net"), ("client_secret", "s")], "missing: tenant_id, client_id");
    bad(&[("vault_url", "https://v.vault.azure.net"), ("tenant_id", "nope"), ("client_id", "x")], "not a GUID");
    bad(&[("vault_url", "https://v.vault.azure.net"), ("credentials", "magic")], "credentials must be");
    bad(&[("vault_url", "https://v.vault.azure.net"), ("colour", "red")], "unknown azure setting");
    Settings::parse(&map(&[("vault_url", "https://v.vault.azure.net"), ("credentials", "managed_identity")])).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_contract_holds() {
    let kv = KeyVault::start().await;
    exercise(&store(&kv), Cloud::Azure.capabilities(), Gaps::default()).await;
}

/// How the adapter keeps what Key Vault has no place for: the number and
/// the secret's tags on each version, bytes as marked base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_tags_and_bytes_as_the_vault_holds_them() {
    let kv = KeyVault::start().await;
    let s = store(&kv);
    s.put("db", &text("one"), &Precondition::Absent, Some(&map(&[("owner", "team-a")]))).await.unwrap();
    s.put("db", &text("two"), &Precondition::CurrentNumber(1), None).await.unwrap();
    // Tags belong to a version: the owner tag was carried to version 2.
    let (_, _, tags) = kv.stored("db").unwrap();
    assert_eq!(tags.get("owner").map(String::as_str), Some("team-a"));
    assert_eq!(tags.get(NUMBER_TAG).map(String::as_str), Some("2"));

    // Binary: base64 with the marker in the vault, bytes through the adapter.
    let bytes = vec![0u8, 159, 146, 150, 255];
    s.put("blob", &CloudValue::Binary(Zeroizing::new(bytes.clone())), &Precondition::None, None).await.unwrap();
    let (raw, ct, _) = kv.stored("blob").unwrap();
    assert_eq!((raw.as_str(), ct.as_deref()), ("AJ+Slv8=", Some(BINARY_TYPE)));

    // A secret another tool wrote: no number, read as it is, by any case.
    kv.put_out_of_band("Legacy-Conn", "Server=db;Password=x", Some("text/plain"));
    let read = s.get("legacy-conn", &Selector::Current).await.unwrap();
    assert_eq!((read.value.as_str(), read.version.number), (Some("Server=db;Password=x"), None));
    // Expiry shows in the versions (advisory for secrets: reads succeed).
    kv.set_expiry("Legacy-Conn", 4_102_444_800);
    let info = s.describe("legacy-conn").await.unwrap();
    let exp = info.versions[0].expires.unwrap();
    assert_eq!(exp.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 4_102_444_800);
    // ... and a Keybridge write on top numbers from 1.
    assert_eq!(s.put("Legacy-Conn", &text("y"), &Precondition::None, None).await.unwrap().number, Some(1));
}

/// Key Vault's own answers: a disabled version, a name held by a deleted
/// secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_versions_and_deleted_names_say_so() {
    let kv = KeyVault::start().await;
    let s = store(&kv);
    let v1 = s.put("k0", &text("v"), &Precondition::None, None).await.unwrap();
    s.put("k0", &text("v2"), &Precondition::None, None).await.unwrap();
    s.change_version("k0", &v1.id, VersionChange::Disable).await.unwrap();
    assert!(matches!(s.get("k0", &Selector::Number(1)).await, Err(Error::NotFound(m)) if m.contains("disabled")));
    s.delete("k0", Deletion::Recoverable { days: 90 }).await.unwrap();
    assert!(matches!(s.get("k0", &Selector::Current).await, Err(Error::NotFound(_))));
    let e = s.put("k0", &text("again"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(&e, Error::Conflict(m) if m.contains("deleted but recoverable")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_permissions_are_told_apart() {
    let kv = KeyVault::start().await;
    let wrong = AzureStore::new(&settings(&kv, keyvault::CLIENT_ID, "wrong", &kv.tenant)).unwrap();
    let e = wrong.check().await.unwrap_err();
    assert!(matches!(&e, Error::Unauthenticated(m) if m.contains("AADSTS7000215")), "{e:?}");
    let tenant = AzureStore::new(&settings(
        &kv,
        keyvault::CLIENT_ID,
        keyvault::CLIENT_SECRET,
        "00000000-0000-0000-0000-000000000000",
    ))
    .unwrap();
    assert!(matches!(tenant.check().await.unwrap_err(), Error::Unauthenticated(m) if m.contains("AADSTS90002")));
    let reader = AzureStore::new(&settings(&kv, keyvault::READER_ID, keyvault::READER_SECRET, &kv.tenant)).unwrap();
    reader.check().await.unwrap();
    let e = reader.put("x", &text("v"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("secrets set permission")), "{e:?}");
    // Without the test CA, the vault's certificate is not trusted.
    let mut untrusted = map(&[
        ("vault_url", &kv.url),
        ("authority_host", &kv.url),
        ("tenant_id", &kv.tenant),
        ("client_id", keyvault::CLIENT_ID),
        ("client_secret", keyvault::CLIENT_SECRET),
    ]);
    let s = AzureStore::new(&Settings::parse(&untrusted).unwrap()).unwrap();
    assert!(matches!(s.check().await.unwrap_err(), Error::Unavailable(_) | Error::Unauthenticated(_)));
    untrusted.insert("ca_cert".into(), "/nonexistent/ca.pem".into());
    let e = AzureStore::new(&Settings::parse(&untrusted).unwrap()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_within_the_limit_and_reported_past_it() {
    let kv = KeyVault::start().await;
    store(&kv).put("hot", &text("v"), &Precondition::None, None).await.unwrap();
    let mut limits = Limits::published(Cloud::Azure);
    limits.read_attempts = 3;
    limits.read_value = Rate::per_second(1000);
    let limited = Limited::new(store(&kv), limits);
    limited.get("hot", &Selector::Current).await.unwrap();
    // Respected: two throttled answers, then the third attempt is served.
    kv.throttle_next(2);
    let before = kv.requests();
    assert_eq!(limited.get("hot", &Selector::Current).await.unwrap().value.as_str(), Some("v"));
    assert_eq!(kv.requests() - before, 3);
    // Exceeded: every attempt is throttled, and the answer says so.
    kv.throttle_next(3);
    let before = kv.requests();
    let e = limited.get("hot", &Selector::Current).await.unwrap_err();
    assert!(matches!(&e, Error::Throttled(m) if m.contains("too many requests")), "{e:?}");
    assert_eq!(kv.requests() - before, 3, "three attempts, no more");
    assert!(limited.get("hot", &Selector::Current).await.is_ok());

    // Writes: a throttled write was not carried out, so it is sent again.
    kv.throttle_next(1);
    let v = limited.put("hot", &text("w"), &Precondition::None, None).await.unwrap();
    assert_eq!(v.number, Some(2));
    kv.throttle_next(3);
    let e = limited.put("hot", &text("x"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(e, Error::Throttled(_)), "{e:?}");
    assert_eq!(limited.get("hot", &Selector::Current).await.unwrap().value.as_str(), Some("w"), "nothing written");
}

/// `ca_cert` names a file on the gateway's host: only a regular file of at
/// most 1 MiB is read (not /dev/zero, a FIFO or a directory).
#[test]
fn ca_cert_reads_only_a_small_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'a'; (1 << 20) + 1]).unwrap();
    for path in ["/dev/zero", dir.path().to_str().unwrap(), big.to_str().unwrap()] {
        let s = Settings::parse(&map(&[
            ("vault_url", "https://my-vault.vault.azure.net"),
            ("credentials", "managed_identity"),
            ("ca_cert", path),
        ]))
        .unwrap();
        let e = AzureStore::new(&s).err().expect("refused");
        assert!(e.to_string().contains("regular file") || e.to_string().contains("larger"), "{path}: {e}");
    }
}

/// An HTTPS client that trusts the test CA, for calls the SDK would not make.
fn raw_client(kv: &KeyVault) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(kv.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder().add_root_certificate(ca).build().unwrap()
}

/// A token from the Entra ID endpoint, as the client-credentials flow
/// answers it.
async fn raw_token(kv: &KeyVault, http: &reqwest::Client) -> serde_json::Value {
    let rsp = http
        .post(format!("{}/{}/oauth2/v2.0/token", kv.url, kv.tenant))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", keyvault::CLIENT_ID),
            ("client_secret", keyvault::CLIENT_SECRET),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    serde_json::from_slice(&rsp.bytes().await.unwrap()).unwrap()
}

/// A GET of the vault with `token`: (status, WWW-Authenticate, body).
async fn raw_get(http: &reqwest::Client, url: &str, token: &str) -> (u16, String, serde_json::Value) {
    let rsp = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = rsp.status().as_u16();
    let challenge = rsp.headers().get("www-authenticate").map(|h| h.to_str().unwrap().to_string()).unwrap_or_default();
    let body = serde_json::from_slice(&rsp.bytes().await.unwrap()).unwrap_or_default();
    (status, challenge, body)
}

/// Key Vault lists versions in an order of its own and stamps them to the
/// second: versions written back to back in one second are still told
/// apart by their numbers, for the current version, check-and-set, tags
/// and the listing; versions other tools wrote fall back to `created`, then
/// the version id, and Key Vault's read decides which is current when both
/// wrote within the last second. Also pages past 25 versions (`nextLink`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_written_within_one_second_keep_keybridge_order() {
    let kv = KeyVault::start().await;
    let s = store(&kv);
    let t0 = 1_800_000_000;
    kv.pin_clock(Some(t0));
    let name = "same-second";
    s.put(name, &text("v1"), &Precondition::Absent, None).await.unwrap();
    // Write until the vault's listing (by version id) has put the newest
    // version before an older one at least once: then the listed order and
    // `created` alone would have picked the wrong current version.
    let mut shuffled = false;
    let mut n = 1;
    while n < 4 || !shuffled {
        assert!(n < 40, "40 versions and the vault never listed a newer version before an older one");
        let written = s.put(name, &text(&format!("v{}", n + 1)), &Precondition::CurrentNumber(n), None).await;
        n += 1;
        assert_eq!(written.unwrap().number, Some(n), "check-and-set on version {} found it current", n - 1);
        let ids = kv.version_ids(name);
        shuffled |= ids.iter().max() != ids.last();
        let info = s.describe(name).await.unwrap();
        assert_eq!(info.versions.iter().map(|v| v.number.unwrap()).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        assert_eq!(info.versions.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), ids, "in the order written");
        let (head, _) = s.head(name).await.unwrap().unwrap();
        assert_eq!((head.number, &head.id), (Some(n), ids.last().unwrap()));
    }
    // What the vault lists: the same versions, not in the order written.
    let ids = kv.version_ids(name);
    let http = raw_client(&kv);
    let token = raw_token(&kv, &http).await;
    let url = format!("{}/secrets/{name}/versions?api-version=2025-07-01", kv.url);
    let (status, _, body) = raw_get(&http, &url, token["access_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<String> = body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    let (mut a, mut b) = (listed.clone(), ids.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same versions");
    assert_ne!(listed, ids, "the vault lists versions in an order other than the order written");
    // Check-and-set by id: the newest passes, any other is stale.
    let e = s.put(name, &text("stale"), &Precondition::CurrentIs(ids[ids.len() - 2].clone()), None).await;
    assert!(matches!(&e, Err(Error::Conflict(m)) if m.contains("check-and-set failed")), "{e:?}");
    let e = s.put(name, &text("stale"), &Precondition::CurrentNumber(n - 1), None).await;
    assert!(matches!(&e, Err(Error::Conflict(m)) if m.contains("check-and-set failed")), "{e:?}");
    let v = s.put(name, &text("on top"), &Precondition::CurrentIs(ids.last().unwrap().clone()), None).await.unwrap();
    n += 1;
    assert_eq!(v.number, Some(n));
    // Tags go on the current version, which is the one the vault reads.
    s.set_tags(name, &map(&[("owner", "team-z")])).await.unwrap();
    let (value, _, tags) = kv.stored(name).unwrap();
    assert_eq!((value.as_str(), tags.get("owner").map(String::as_str)), ("on top", Some("team-z")));
    assert_eq!(tags.get(NUMBER_TAG).map(String::as_str), Some(n.to_string().as_str()));
    // Past one page of 25 versions: all of them, in order.
    while n < 27 {
        n += 1;
        s.put_numbered(name, &text(&format!("v{n}")), n, Some(&map(&[("owner", "team-z")]))).await.unwrap();
    }
    let info = s.describe(name).await.unwrap();
    assert_eq!(info.versions.iter().map(|v| v.number.unwrap()).collect::<Vec<_>>(), (1..=27).collect::<Vec<_>>());
    assert_eq!(info.versions.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), kv.version_ids(name));
    assert_eq!(s.get(name, &Selector::Number(27)).await.unwrap().value.as_str(), Some("v27"));

    // Versions other tools wrote: by `created`, then by version id.
    kv.put_out_of_band("legacy", "a", None);
    kv.put_out_of_band("legacy", "b", None);
    kv.pin_clock(Some(t0 + 1));
    kv.put_out_of_band("legacy", "c", None);
    let ids = kv.version_ids("legacy");
    let mut first_second = ids[..2].to_vec();
    first_second.sort();
    let want: Vec<String> = first_second.into_iter().chain([ids[2].clone()]).collect();
    for _ in 0..2 {
        let info = s.describe("legacy").await.unwrap();
        assert_eq!(info.versions.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), want, "stable");
    }
    // Writes of Keybridge's and another tool's within one second: Key
    // Vault's read says which is current.
    let v = s.put("legacy", &text("d"), &Precondition::CurrentIs(ids[2].clone()), None).await.unwrap();
    assert_eq!(v.number, Some(1));
    let (head, _) = s.head("legacy").await.unwrap().unwrap();
    assert_eq!(head.id, v.id, "Keybridge's write after theirs within the same second is current");
    kv.put_out_of_band("legacy", "e", None);
    let theirs = kv.version_ids("legacy").last().unwrap().clone();
    let (head, _) = s.head("legacy").await.unwrap().unwrap();
    assert_eq!((&head.id, head.number), (&theirs, None), "theirs after Keybridge's within the same second is current");
    let e = s.put("legacy", &text("f"), &Precondition::CurrentNumber(1), None).await;
    assert!(matches!(&e, Err(Error::Conflict(m)) if m.contains("check-and-set failed")), "{e:?}");
    let v = s.put("legacy", &text("f"), &Precondition::CurrentIs(theirs), None).await.unwrap();
    assert_eq!(v.number, Some(2));
    assert_eq!(s.head("legacy").await.unwrap().unwrap().0.id, v.id);
}

/// Recover finishes in the background (the secret reads 404 until then),
/// and cannot start while the deletion is still under way (409
/// `ObjectIsBeingDeleted`): `restore` waits both out, so a read right
/// after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_then_read_at_once() {
    let kv = KeyVault::start().await;
    kv.set_operation_delay(Duration::from_millis(400));
    let s = store(&kv);
    s.put("back", &text("kept"), &Precondition::None, None).await.unwrap();
    s.delete("back", Deletion::Recoverable { days: 90 }).await.unwrap();
    assert_eq!(kv.state("back"), Some("deleting"));
    s.restore("back").await.unwrap();
    let read = s.get("back", &Selector::Current).await.unwrap();
    assert_eq!((read.value.as_str(), read.version.number), (Some("kept"), Some(1)));
    assert_eq!(kv.state("back"), Some("live"));
    // A write right after a delete waits for it, then hears that the name
    // is held while the secret is recoverable.
    s.delete("back", Deletion::Recoverable { days: 90 }).await.unwrap();
    let e = s.put("back", &text("again"), &Precondition::None, None).await.unwrap_err();
    assert!(matches!(&e, Error::Conflict(m) if m.contains("ObjectIsDeletedButRecoverable")), "{e:?}");
    // A write while a recover is under way (another caller's) waits for it,
    // then numbers on from the versions recovered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = store(&kv);
    let (r, _) = tokio::join!(other.restore("back"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(kv.state("back"), Some("recovering"));
        let v = s.put("back", &text("next"), &Precondition::None, None).await.unwrap();
        assert_eq!(v.number, Some(2));
    });
    r.unwrap();
    assert_eq!(s.get("back", &Selector::Current).await.unwrap().value.as_str(), Some("next"));
}

/// Purge right after delete: Key Vault answers 409 `ObjectIsBeingDeleted`
/// until the deletion is finished, then purges in the background, holding
/// the name until it has. The adapter retries the purge, a create waits for
/// the name, and the wait is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_right_after_delete_is_retried_until_it_succeeds() {
    let kv = KeyVault::start().await;
    kv.set_operation_delay(Duration::from_millis(400));
    let s = store(&kv);
    s.put("gone", &text("v"), &Precondition::None, None).await.unwrap();
    s.put("gone", &text("v2"), &Precondition::None, None).await.unwrap();
    let writes = || kv.requests_by_kind().get("write").copied().unwrap_or(0);
    let before = writes();
    s.delete("gone", Deletion::Purge).await.unwrap();
    assert!(writes() - before >= 3, "a delete, a refused purge and a purge: {} writes", writes() - before);
    assert_eq!(kv.state("gone"), Some("purging"));
    assert!(matches!(s.get("gone", &Selector::Current).await, Err(Error::NotFound(_))));
    let v = s.put("gone", &text("fresh"), &Precondition::Absent, None).await.unwrap();
    assert_eq!(v.number, Some(1), "a new secret once the purge is done");
    assert_eq!(kv.state("gone"), Some("live"));
    // A secret already deleted (recoverable) is purged too.
    s.delete("gone", Deletion::Recoverable { days: 90 }).await.unwrap();
    s.delete("gone", Deletion::Purge).await.unwrap();
    assert_eq!(kv.state("gone"), Some("purging"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kv.state("gone"), None);
    // Bounded: past the adapter's wait, the answer says to retry later.
    kv.set_operation_delay(Duration::from_secs(30));
    s.put("slow", &text("v"), &Precondition::None, None).await.unwrap();
    let impatient = store(&kv).with_pending_wait(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let e = impatient.delete("slow", Deletion::Purge).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("ObjectIsBeingDeleted") && m.contains("retry later")),
        "{e:?}"
    );
}

/// The looks a wait makes take slots of the mount's quotas, as any call
/// does: within the write quota a purge right after a delete goes through,
/// with each look counted; past it the purge is refused `Throttled` and the
/// secret stays deleted, not purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waits_looks_are_charged_to_the_mounts_quota() {
    let kv = KeyVault::start().await;
    kv.set_operation_delay(Duration::from_millis(400));
    store(&kv).put("a", &text("v"), &Precondition::None, None).await.unwrap();
    store(&kv).put("b", &text("v"), &Precondition::None, None).await.unwrap();
    // Respected: writes at 100/s.
    let mut limits = Limits::published(Cloud::Azure);
    limits.write = Rate::per_second(100);
    let limited = Limited::new(store(&kv), limits);
    let writes = || kv.requests_by_kind().get("write").copied().unwrap_or(0);
    let before = writes();
    limited.delete("a", Deletion::Purge).await.unwrap();
    let sent = writes() - before;
    assert!(sent >= 3, "a delete, a refused purge and a purge: {sent}");
    assert_eq!(limited.calls_by_kind()[3], ("write", sent), "every write the vault saw was counted");
    // Exceeded: one write a minute, no waiting for a slot: the delete takes
    // it, and the purge's first look finds none.
    let mut limits = Limits::published(Cloud::Azure);
    limits.write = Rate { count: 1, period: Duration::from_secs(60) };
    limits.max_wait = Duration::from_millis(50);
    let limited = Limited::new(store(&kv), limits);
    let before = writes();
    let e = limited.delete("b", Deletion::Purge).await.unwrap_err();
    assert!(matches!(&e, Error::Throttled(m) if m.contains("write rate limit")), "{e:?}");
    assert_eq!(writes() - before, 1, "only the delete reached the vault");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kv.state("b"), Some("deleted"), "deleted, not purged");
}

/// Tokens expire after their `expires_in`; the vault refuses an expired one
/// with 401 and its challenge, as Key Vault does. The adapter's credential
/// gets a new token before the old one expires and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_the_adapter_gets_new_ones() {
    let kv = KeyVault::start().await;
    kv.set_token_lifetime(Duration::from_secs(2));
    let http = raw_client(&kv);
    let token = raw_token(&kv, &http).await;
    assert_eq!((token["token_type"].as_str(), token["expires_in"].as_u64()), (Some("Bearer"), Some(2)), "{token}");
    assert_eq!(token["ext_expires_in"].as_u64(), Some(2), "{token}");
    let old = token["access_token"].as_str().unwrap().to_string();
    let list = format!("{}/secrets?api-version=2025-07-01", kv.url);
    assert_eq!(raw_get(&http, &list, &old).await.0, 200);

    let s = store(&kv);
    s.put("t", &text("v1"), &Precondition::None, None).await.unwrap();
    let tokens = || kv.requests_by_kind().get("token").copied().unwrap_or(0);
    let issued = tokens();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (status, challenge, body) = raw_get(&http, &list, &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        challenge,
        format!("Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"", kv.url, kv.tenant)
    );
    assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("TokenExpired"), "{body}");
    assert_eq!(kv.expired_token_refusals(), 1);

    // The adapter, whose token from before the pause has expired too.
    assert_eq!(s.get("t", &Selector::Current).await.unwrap().value.as_str(), Some("v1"));
    assert_eq!(s.put("t", &text("v2"), &Precondition::CurrentNumber(1), None).await.unwrap().number, Some(2));
    assert!(tokens() > issued, "new tokens were issued");
    assert_eq!(kv.expired_token_refusals(), 1, "the adapter never sent an expired token");
}

/// `api-version` must be one the vault implements: 400 `BadParameter` with
/// Key Vault's message otherwise; the SDK's version is one of them, and a
/// vault that does not know it (Azure Stack Hub's stops at 7.1) is named
/// as the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_are_checked() {
    let kv = KeyVault::start().await;
    let http = raw_client(&kv);
    let token = raw_token(&kv, &http).await;
    let token = token["access_token"].as_str().unwrap();
    let (status, _, body) = raw_get(&http, &format!("{}/secrets?api-version=7.9", kv.url), token).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "BadParameter", "message": "The specified version (7.9) is not recognized. Consider using the latest supported version (2025-07-01)."}})
    );
    let (status, _, body) = raw_get(&http, &format!("{}/secrets", kv.url), token).await;
    assert_eq!((status, &body["error"]["code"]), (400, &serde_json::json!("BadParameter")), "{body}");
    for v in ["7.4", "7.5", "2025-07-01"] {
        assert_eq!(raw_get(&http, &format!("{}/secrets?api-version={v}", kv.url), token).await.0, 200, "{v}");
    }

    let s = store(&kv);
    s.check().await.unwrap();
    s.put("x", &text("v"), &Precondition::None, None).await.unwrap();
    kv.set_api_versions(&["7.0", "7.1"]);
    let e = s.get("x", &Selector::Current).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("The specified version (2025-07-01) is not recognized")
            && m.contains("latest supported version (7.1)") && m.contains("API version")),
        "{e:?}"
    );
}
