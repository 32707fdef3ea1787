//! The GCP adapter through the official SDK against our Secret Manager test
//! server (`tests/servers/src/secretmanager.rs`), for what drongo does not
//! do: the provider contract suite with `pageSize` paging and annotations,
//! aliases set outside Keybridge, and CRC32C checksums.

use std::collections::BTreeMap;

use keybridge_provider_api::testing::{Gaps, exercise};
use keybridge_provider_api::{Cloud, CloudValue, Deletion, Error, Precondition, SecretStore, Selector};
use keybridge_provider_gcp::{GcpStore, Settings};
use keybridge_testservers::secretmanager::SecretManager;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn store(sm: &SecretManager, project: &str) -> GcpStore {
    let s = map(&[("project", project), ("endpoint", &sm.url()), ("credentials", "anonymous")]);
    GcpStore::new(&Settings::parse(&s).unwrap()).await.unwrap()
}

fn text(s: &str) -> CloudValue {
    CloudValue::text(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_contract_holds() {
    let sm = SecretManager::start("keybridge-test", false).await;
    exercise(&store(&sm, "keybridge-test").await, Cloud::Gcp.capabilities(), Gaps::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_aliases_and_final_deletion() {
    let sm = SecretManager::start("keybridge-test", false).await;
    let s = store(&sm, "keybridge-test").await;
    s.put("k0", &text("v"), &Precondition::None, Some(&map(&[("owner", "team-a")]))).await.unwrap();
    // Custom metadata is the secret's annotations.
    assert_eq!(sm.annotations("k0").unwrap(), map(&[("owner", "team-a")]));
    // GCP's annotation keys have rules; a bad key is refused with the reason.
    let e = s.set_tags("k0", &map(&[("-bad", "x")])).await.unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("Annotation key")), "{e:?}");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_sent_and_checked() {
    let sm = SecretManager::start("keybridge-test", false).await;
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
    let strict = SecretManager::start("keybridge-test", true).await;
    let e = store(&strict, "keybridge-test").await.check().await.unwrap_err();
    assert!(matches!(&e, Error::Unauthenticated(m) if m.contains("authentication credentials")), "{e:?}");
    let open = SecretManager::start("keybridge-test", false).await;
    let e = store(&open, "other-project").await.check().await.unwrap_err();
    assert!(matches!(&e, Error::PermissionDenied(m) if m.contains("or it may not exist")), "{e:?}");
}
