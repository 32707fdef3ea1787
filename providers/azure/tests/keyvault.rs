//! The Azure adapter through the official SDK (`azure_security_keyvault_secrets`
//! with `azure_identity`'s client-secret credential) against our Key Vault
//! test server (`tests/servers/src/keyvault.rs`), over HTTPS with a test CA:
//! no third-party Key Vault emulator runs here.

use std::collections::BTreeMap;

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
