//! The GCP adapter through the official SDK (REST) against drongo (PyPI
//! `drongo`), which `tests/run-all.sh` installs and names in
//! `KEYBRIDGE_DRONGO`. drongo ignores `pageSize` and drops annotations
//! (it keeps labels only), so paging and custom metadata are left to a
//! Secret Manager test server of our own (issue 4, not yet written).

use std::collections::BTreeMap;

use keybridge_provider_api::{CloudValue, Deletion, Error, Precondition, SecretStore, Selector};
use keybridge_provider_gcp::{GcpStore, Settings};
use keybridge_testservers::process::Spawned;
use zeroize::Zeroizing;

fn drongo() -> Spawned {
    Spawned::start("KEYBRIDGE_DRONGO", |port| {
        vec!["server".into(), "--host".into(), "127.0.0.1".into(), "--port".into(), port.to_string()]
    })
}

fn settings(endpoint: &str) -> Settings {
    let s: BTreeMap<String, String> =
        [("project", "keybridge-test"), ("endpoint", endpoint), ("credentials", "anonymous")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    Settings::parse(&s).unwrap()
}

fn text(v: &str) -> CloudValue {
    CloudValue::text(v)
}

fn string_of(v: &CloudValue) -> String {
    v.as_str().expect("a string value").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_check_and_set_binary_and_deletion() {
    let d = drongo();
    let s = GcpStore::new(&settings(&d.url())).await.unwrap();
    s.check().await.unwrap();
    let tags: BTreeMap<String, String> = [("managed-by".to_string(), "Keybridge 1.0".to_string())].into();
    let v1 = s.put("kb_app__db", &text("one"), &Precondition::Absent, Some(&tags)).await.unwrap();
    assert_eq!(v1.id, "1");
    assert!(matches!(s.put("kb_app__db", &text("x"), &Precondition::Absent, None).await, Err(Error::Conflict(_))));
    let v2 = s.put("kb_app__db", &text("two"), &Precondition::CurrentIs("1".into()), None).await.unwrap();
    assert_eq!(v2.id, "2");
    assert!(matches!(
        s.put("kb_app__db", &text("stale"), &Precondition::CurrentIs("1".into()), None).await,
        Err(Error::Conflict(m)) if m.contains("check-and-set")
    ));
    assert_eq!(string_of(&s.get("kb_app__db", &Selector::Current).await.unwrap().value), "two");
    assert_eq!(string_of(&s.get("kb_app__db", &Selector::Version("1".into())).await.unwrap().value), "one");
    let info = s.describe("kb_app__db").await.unwrap();
    assert_eq!(info.versions.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["1", "2"]);

    let bytes = vec![0u8, 255, 128, 7];
    s.put("kb_bin", &CloudValue::Binary(Zeroizing::new(bytes.clone())), &Precondition::None, None).await.unwrap();
    match s.get("kb_bin", &Selector::Current).await.unwrap().value {
        CloudValue::Binary(b) => assert_eq!(*b, bytes),
        CloudValue::String(_) => panic!("binary expected"),
    }
    let names: Vec<String> = s.list(100, None).await.unwrap().items.into_iter().map(|l| l.name).collect();
    assert!(names.contains(&"kb_app__db".to_string()) && names.contains(&"kb_bin".to_string()), "{names:?}");

    assert!(matches!(s.get("kb_nope", &Selector::Current).await, Err(Error::NotFound(_))));
    assert!(matches!(
        s.delete("kb_bin", Deletion::Recoverable { days: 7 }).await,
        Err(Error::Unsupported { capability, .. }) if capability.contains("recoverably")
    ));
    assert!(matches!(s.restore("kb_bin").await, Err(Error::Unsupported { .. })));
    s.delete("kb_bin", Deletion::Purge).await.unwrap();
    assert!(matches!(s.get("kb_bin", &Selector::Current).await, Err(Error::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = GcpStore::new(&settings(&format!("http://127.0.0.1:{port}"))).await.unwrap();
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
}

#[test]
fn settings_are_validated_without_io() {
    let parse =
        |pairs: &[(&str, &str)]| Settings::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    assert!(parse(&[("project", "my-project-1")]).is_ok());
    for bad in [
        vec![],
        vec![("project", "X")],
        vec![("project", "my-project"), ("endpoint", "localhost:1")],
        vec![("project", "my-project"), ("credentials", "json")],
        vec![("project", "my-project"), ("zone", "x")],
    ] {
        assert!(matches!(parse(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
}
