//! The `azurekeyvault` seal (`AzureKeyVaultSeal`: wrapKey and unwrapKey
//! with RSA-OAEP-256 through `azure_security_keyvault_keys`) against our Key
//! Vault test server (`tests/servers/src/keyvault.rs`), over HTTPS with a
//! test CA and a client secret: no third-party Key Vault emulator runs here.

use std::collections::BTreeMap;

use keybridge_provider_api::{Error, KeyService};
use keybridge_provider_azure::kms::{AzureKeyVaultSeal, SealConfig};
use keybridge_testservers::keyvault::{self, KeyVault};

const ROOT_KEY: [u8; 32] = [0x5a; 32];

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The test CA as a file, as `ca_cert` names it.
fn ca_file(kv: &KeyVault) -> String {
    let ca = std::env::temp_dir().join(format!("kb-kv-seal-ca-{}-{}.pem", std::process::id(), kv.addr.port()));
    std::fs::write(&ca, &kv.ca_pem).unwrap();
    ca.to_str().unwrap().to_string()
}

/// A seal block for `key_name` with the writer's client secret, plus `more`.
fn settings(kv: &KeyVault, key_name: &str, more: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut s = map(&[
        ("vault_url", &kv.url),
        ("key_name", key_name),
        ("authority_host", &kv.url),
        ("tenant_id", &kv.tenant),
        ("client_id", keyvault::CLIENT_ID),
        ("client_secret", keyvault::CLIENT_SECRET),
        ("ca_cert", &ca_file(kv)),
    ]);
    s.extend(map(more));
    s
}

fn seal(kv: &KeyVault, key_name: &str) -> AzureKeyVaultSeal {
    AzureKeyVaultSeal::from_settings(&settings(kv, key_name, &[])).unwrap()
}

/// The key version a blob records.
fn version_of(blob: &[u8]) -> String {
    AzureKeyVaultSeal::wrapped_by(blob).unwrap().rsplit('/').next().unwrap().to_string()
}

#[test]
fn settings_are_validated_without_io() {
    let ok = map(&[
        ("vault_url", "https://my-vault.vault.azure.net/"),
        ("key_name", "unseal-key"),
        ("key_version", "0123456789abcdef0123456789abcdef"),
        ("tenant_id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("client_id", "11111111-2222-3333-4444-555555555555"),
        ("client_secret", "very-secret-value"),
    ]);
    let config = SealConfig::parse(&ok).unwrap();
    assert_eq!((config.key_name(), config.key_version()), ("unseal-key", Some("0123456789abcdef0123456789abcdef")));
    let seal = AzureKeyVaultSeal::new(&config).unwrap();
    assert_eq!(seal.kind(), "azurekeyvault");
    assert_eq!(seal.key_id(), "https://my-vault.vault.azure.net/keys/unseal-key");
    for shown in [format!("{config:?}"), format!("{seal:?}")] {
        assert!(!shown.contains("very-secret-value"), "the secret never prints: {shown}");
    }

    let bad = |pairs: &[(&str, &str)], text: &str| {
        let e = SealConfig::parse(&map(pairs)).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(text)), "{e:?} should mention {text:?}");
    };
    let url = ("vault_url", "https://v.vault.azure.net");
    let mi = ("credentials", "managed_identity");
    bad(&[("key_name", "k"), mi], "vault_url is required");
    bad(&[url, mi], "key_name is required");
    bad(&[url, ("key_name", "un_seal"), mi], "not a Key Vault key name");
    bad(&[url, ("key_name", &"k".repeat(128)), mi], "not a Key Vault key name");
    bad(&[url, ("key_name", "k"), ("key_version", "../x"), mi], "not a key version id");
    bad(&[("vault_url", "http://v.vault.azure.net"), ("key_name", "k"), mi], "https://");
    bad(&[("vault_url", "https://v.vault.azure.net/keys/k"), ("key_name", "k"), mi], "vault's URL alone");
    bad(&[url, ("key_name", "k"), ("client_secret", "s")], "missing: tenant_id, client_id");
    bad(&[url, ("key_name", "k"), ("credentials", "magic")], "credentials must be");
    // Unknown keys, the mounts' kb_* keys too, with what it takes.
    for unknown in ["colour", "kb_ttl", "key_id"] {
        bad(&[url, ("key_name", "k"), mi, (unknown, "x")], "unknown azurekeyvault seal setting");
        bad(&[url, ("key_name", "k"), mi, (unknown, "x")], "vault_url, key_name, key_version, tenant_id");
    }

    // A seal is the operator's: the host's own identity may go with a
    // vault outside Azure's domains (a mount refuses that).
    let custom = map(&[("vault_url", "https://vault.local.azurestack.external"), ("key_name", "k"), mi]);
    SealConfig::parse(&custom).unwrap();
    let e = keybridge_provider_azure::Settings::parse(&map(&[
        ("vault_url", "https://vault.local.azurestack.external"),
        mi,
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("not one of the cloud's own hosts"), "{e}");
    // Garbage is refused without IO.
    for garbage in [&b""[..], b"KBKV", b"KBKV\x01\x00\x00", b"{\"not\": \"a blob\"}"] {
        assert!(matches!(AzureKeyVaultSeal::wrapped_by(garbage), Err(Error::InvalidArgument(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_key_round_trips() {
    let kv = KeyVault::start().await;
    let v1 = kv.create_key("unseal", 2048);
    let s = seal(&kv, "unseal");
    let blob = s.encrypt(&ROOT_KEY).await.unwrap();
    assert_eq!(AzureKeyVaultSeal::wrapped_by(&blob).unwrap(), format!("{}/keys/unseal/{v1}", kv.url));
    assert!(!blob.windows(ROOT_KEY.len()).any(|w| w == ROOT_KEY), "the blob does not hold the key in the clear");
    // Another node (or the next start) unwraps it.
    let other = seal(&kv, "UNSEAL");
    assert_eq!(other.decrypt(&blob).await.unwrap().as_slice(), &ROOT_KEY);
    // RSA-OAEP is randomised: wrapping again gives another blob.
    let again = s.encrypt(&ROOT_KEY).await.unwrap();
    assert_ne!(again, blob);
    assert_eq!(s.decrypt(&again).await.unwrap().as_slice(), &ROOT_KEY);
    // Too much or nothing is refused before any call.
    let calls = kv.requests();
    for wrong in [vec![], vec![1u8; 447]] {
        assert!(matches!(s.encrypt(&wrong).await, Err(Error::InvalidArgument(_))));
    }
    assert_eq!(kv.requests(), calls);
    // More than a 2048-bit key takes with RSA-OAEP-256: Key Vault says so.
    let e = s.encrypt(&[1u8; 191]).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("BadParameter") && m.contains("too long")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_blobs_unwrap_after_the_key_is_rotated() {
    let kv = KeyVault::start().await;
    let v1 = kv.create_key("unseal", 2048);
    let s = seal(&kv, "unseal");
    let old = s.encrypt(&ROOT_KEY).await.unwrap();
    assert_eq!(version_of(&old), v1);

    let v2 = kv.create_key("unseal", 3072);
    assert_eq!(kv.key_version_ids("unseal"), vec![v1.clone(), v2.clone()]);
    let new = s.encrypt(&ROOT_KEY).await.unwrap();
    assert_eq!(version_of(&new), v2, "new wraps use the current version");
    assert_eq!(s.decrypt(&old).await.unwrap().as_slice(), &ROOT_KEY, "the old blob names its version");
    assert_eq!(s.decrypt(&new).await.unwrap().as_slice(), &ROOT_KEY);

    // key_version pins the version wraps use; unwraps still follow the blob.
    let pinned = AzureKeyVaultSeal::from_settings(&settings(&kv, "unseal", &[("key_version", &v1)])).unwrap();
    let blob = pinned.encrypt(&ROOT_KEY).await.unwrap();
    assert_eq!(version_of(&blob), v1);
    assert_eq!(pinned.decrypt(&new).await.unwrap().as_slice(), &ROOT_KEY);

    // A blob of another key is refused before any call, naming both keys.
    kv.create_key("other", 2048);
    let other = seal(&kv, "other").encrypt(&ROOT_KEY).await.unwrap();
    let calls = kv.requests();
    let e = s.decrypt(&other).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("/keys/other/") && m.contains("key_name other")),
        "{e:?}"
    );
    assert_eq!(kv.requests(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_versions_refuse() {
    let kv = KeyVault::start().await;
    let v1 = kv.create_key("unseal", 2048);
    let s = seal(&kv, "unseal");
    let old = s.encrypt(&ROOT_KEY).await.unwrap();
    let v2 = kv.create_key("unseal", 2048);

    kv.set_key_enabled("unseal", &v1, false);
    let e = s.decrypt(&old).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("not allowed on a disabled key") && m.contains(&v1) && m.contains("enable it")),
        "{e:?}"
    );
    // The current version still wraps.
    let new = s.encrypt(&ROOT_KEY).await.unwrap();
    assert_eq!(version_of(&new), v2);
    kv.set_key_enabled("unseal", &v2, false);
    let e = s.encrypt(&ROOT_KEY).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("Operation wrapKey is not allowed on a disabled key")),
        "{e:?}"
    );
    // Enabled again: the old blob opens.
    kv.set_key_enabled("unseal", &v1, true);
    assert_eq!(s.decrypt(&old).await.unwrap().as_slice(), &ROOT_KEY);

    // A key that does not allow unwrapKey.
    kv.set_key_ops("unseal", &v1, &["encrypt", "decrypt"]);
    let e = s.decrypt(&old).await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("key_ops")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_throttling_are_unavailable() {
    let kv = KeyVault::start().await;
    kv.create_key("unseal", 2048);
    let s = seal(&kv, "unseal");
    let blob = s.encrypt(&ROOT_KEY).await.unwrap();

    kv.set_down(true);
    let e = s.encrypt(&ROOT_KEY).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("ServiceUnavailable")), "{e:?}");
    let e = s.decrypt(&blob).await.unwrap_err();
    assert!(e.retryable(), "{e:?}");
    // A fresh client (no token yet) meets the outage at the challenge.
    let e = seal(&kv, "unseal").decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(_)), "{e:?}");
    kv.set_down(false);
    assert_eq!(s.decrypt(&blob).await.unwrap().as_slice(), &ROOT_KEY);

    kv.throttle_next(1);
    let e = s.decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("Throttled")), "{e:?}");
    assert_eq!(s.decrypt(&blob).await.unwrap().as_slice(), &ROOT_KEY);

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let gone = AzureKeyVaultSeal::from_settings(&settings(&kv, "unseal", &[("vault_url", &url)])).unwrap();
    let e = gone.decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(m) if m.contains("cannot be reached")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_permissions_are_told_apart() {
    let kv = KeyVault::start().await;
    kv.create_key("unseal", 2048);
    let blob = seal(&kv, "unseal").encrypt(&ROOT_KEY).await.unwrap();

    let wrong = AzureKeyVaultSeal::from_settings(&settings(&kv, "unseal", &[("client_secret", "wrong")])).unwrap();
    let e = wrong.decrypt(&blob).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthenticated(m) if m.contains("AADSTS7000215") && m.contains("client_secret")),
        "{e:?}"
    );
    let e = wrong.encrypt(&ROOT_KEY).await.unwrap_err();
    assert!(matches!(&e, Error::Unauthenticated(_)), "{e:?}");

    let reader = AzureKeyVaultSeal::from_settings(&settings(
        &kv,
        "unseal",
        &[("client_id", keyvault::READER_ID), ("client_secret", keyvault::READER_SECRET)],
    ))
    .unwrap();
    let e = reader.decrypt(&blob).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("keys unwrapKey permission") && m.contains("Crypto Service Encryption User")),
        "{e:?}"
    );

    // Without the test CA, the vault's certificate is not trusted.
    let mut untrusted = settings(&kv, "unseal", &[]);
    untrusted.remove("ca_cert");
    let e = AzureKeyVaultSeal::from_settings(&untrusted).unwrap().decrypt(&blob).await.unwrap_err();
    assert!(matches!(&e, Error::Unavailable(_)), "{e:?}");
    untrusted.insert("ca_cert".into(), "/nonexistent/ca.pem".into());
    let e = AzureKeyVaultSeal::from_settings(&untrusted).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("/nonexistent/ca.pem")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_unknown_blobs_say_so() {
    let kv = KeyVault::start().await;
    let v1 = kv.create_key("unseal", 2048);
    let s = seal(&kv, "unseal");
    let blob = s.encrypt(&ROOT_KEY).await.unwrap();

    // A flipped bit in the wrapped key: Key Vault cannot unwrap it.
    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last - 10] ^= 0x40;
    let e = s.decrypt(&tampered).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("BadParameter") && m.contains("damaged")), "{e:?}");
    let mut messages = vec![e.to_string()];

    // Damaged framing, every prefix: refused here, without a call.
    let calls = kv.requests();
    for n in 0..blob.len() {
        let e = s.decrypt(&blob[..n]).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("not a blob this seal wrote")), "{n}: {e:?}");
    }
    let mut longer = blob.clone();
    longer.extend_from_slice(b"!!");
    assert!(matches!(s.decrypt(&longer).await, Err(Error::InvalidArgument(_))));
    assert_eq!(kv.requests(), calls);

    // A version the key does not have (the blob's kid rewritten), a key
    // the vault does not have.
    let gone = blob
        .windows(v1.len())
        .position(|w| w == v1.as_bytes())
        .map(|at| {
            let mut b = blob.clone();
            b[at..at + v1.len()].copy_from_slice(b"ffffffffffffffffffffffffffffffff");
            b
        })
        .unwrap();
    let e = s.decrypt(&gone).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("KeyNotFound") && m.contains("recovered")), "{e:?}");
    messages.push(e.to_string());
    let e = seal(&kv, "missing").encrypt(&ROOT_KEY).await.unwrap_err();
    assert!(matches!(&e, Error::NotFound(m) if m.contains("key_name")), "{e:?}");
    messages.push(e.to_string());

    // No message carries the root key (0x5a bytes: "Wlpa" in base64).
    for m in messages {
        assert!(!m.contains("WlpaWlpa") && !m.to_ascii_lowercase().contains("5a5a5a5a") && !m.contains('\n'), "{m}");
    }
}
