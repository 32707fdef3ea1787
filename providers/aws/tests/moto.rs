//! The AWS adapter through the real SDK against moto's server (PyPI
//! `moto[server]`), which `tests/run-all.sh` installs into a virtualenv and
//! names in `KEYBRIDGE_MOTO_SERVER`.

mod common;

use std::collections::BTreeMap;

use common::{moto, store, string_of, text};
use keybridge_provider_api::{CloudValue, Deletion, Error, Precondition, SecretStore, Selector};
use keybridge_provider_aws::{AwsStore, Settings};
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_stages_and_check_and_set() {
    let m = moto();
    let s = store(&m).await;
    s.check().await.unwrap();
    let tags: BTreeMap<String, String> = [("managed-by".to_string(), "keybridge".to_string())].into();
    let v1 = s.put("kb/app/db", &text("one"), &Precondition::Absent, Some(&tags)).await.unwrap();
    assert!(matches!(s.put("kb/app/db", &text("again"), &Precondition::Absent, None).await, Err(Error::Conflict(_))));
    let v2 = s.put("kb/app/db", &text("two"), &Precondition::CurrentIs(v1.id.clone()), None).await.unwrap();
    assert_ne!(v1.id, v2.id);
    assert!(matches!(
        s.put("kb/app/db", &text("stale"), &Precondition::CurrentIs(v1.id.clone()), None).await,
        Err(Error::Conflict(m)) if m.contains("check-and-set")
    ));
    let cur = s.get("kb/app/db", &Selector::Current).await.unwrap();
    assert_eq!((string_of(&cur.value), cur.version.id.clone()), ("two".to_string(), v2.id.clone()));
    assert!(cur.version.stages.contains(&"AWSCURRENT".to_string()));
    let prev = s.get("kb/app/db", &Selector::Stage("AWSPREVIOUS".into())).await.unwrap();
    assert_eq!(string_of(&prev.value), "one");
    assert_eq!(string_of(&s.get("kb/app/db", &Selector::Version(v1.id.clone())).await.unwrap().value), "one");
    let info = s.describe("kb/app/db").await.unwrap();
    assert_eq!(info.tags["managed-by"], "keybridge");
    assert_eq!(info.versions.len(), 2);
    // Put without a precondition creates or updates.
    s.put("kb/new", &text("n"), &Precondition::None, None).await.unwrap();
    s.put("kb/new", &text("n2"), &Precondition::None, None).await.unwrap();
    assert_eq!(string_of(&s.get("kb/new", &Selector::Current).await.unwrap().value), "n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_paging_delete_restore_and_not_found() {
    let m = moto();
    let s = store(&m).await;
    let bytes = vec![0u8, 159, 146, 150, 255];
    s.put("kb/bin", &CloudValue::Binary(Zeroizing::new(bytes.clone())), &Precondition::Absent, None).await.unwrap();
    match s.get("kb/bin", &Selector::Current).await.unwrap().value {
        CloudValue::Binary(b) => assert_eq!(*b, bytes),
        CloudValue::String(_) => panic!("binary expected"),
    }
    for i in 0..5 {
        s.put(&format!("kb/page/{i}"), &text("x"), &Precondition::Absent, None).await.unwrap();
    }
    let mut names = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = s.list(2, token.as_deref()).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().map(|l| l.name));
        pages += 1;
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(pages >= 3);

    assert!(matches!(s.get("kb/nope", &Selector::Current).await, Err(Error::NotFound(_))));
    assert!(matches!(s.describe("kb/nope").await, Err(Error::NotFound(_))));

    s.delete("kb/page/0", Deletion::Recoverable { days: 7 }).await.unwrap();
    assert!(s.describe("kb/page/0").await.unwrap().deletion.is_some());
    assert!(s.get("kb/page/0", &Selector::Current).await.is_err(), "a deleted secret cannot be read");
    s.restore("kb/page/0").await.unwrap();
    assert_eq!(string_of(&s.get("kb/page/0", &Selector::Current).await.unwrap().value), "x");
    s.delete("kb/page/1", Deletion::Purge).await.unwrap();
    assert!(matches!(s.get("kb/page/1", &Selector::Current).await, Err(Error::NotFound(_))));
    assert!(matches!(s.delete("kb/page/2", Deletion::Recoverable { days: 3 }).await, Err(Error::InvalidArgument(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s: BTreeMap<String, String> = [
        ("region", "us-east-1".to_string()),
        ("endpoint_url", format!("http://127.0.0.1:{port}")),
        ("access_key_id", "testing".to_string()),
        ("secret_access_key", "testing".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let store = AwsStore::new(&Settings::parse(&s).unwrap()).await;
    let e = store.check().await.unwrap_err();
    assert!(e.retryable(), "{e:?}");
    assert!(matches!(e, Error::Unavailable(_)));
}

#[test]
fn settings_are_validated_without_io() {
    let parse =
        |pairs: &[(&str, &str)]| Settings::parse(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    assert!(
        parse(&[
            ("region", "us-east-1"),
            ("endpoint_url", "http://127.0.0.1:5055"),
            ("access_key_id", "a"),
            ("secret_access_key", "b")
        ])
        .is_ok()
    );
    assert!(
        parse(&[("region", "us-east-1"), ("endpoint_url", "https://secretsmanager.us-east-1.amazonaws.com")]).is_ok()
    );
    for bad in [
        // The default credential chain goes to AWS's own hosts only.
        vec![("region", "us-east-1"), ("endpoint_url", "http://127.0.0.1:5055")],
        vec![("region", "US East")],
        vec![("endpoint_url", "127.0.0.1:5055")],
        vec![("access_key_id", "a")],
        vec![("access_key_id", "a"), ("secret_access_key", "b"), ("profile", "p")],
        vec![("colour", "red")],
    ] {
        assert!(matches!(parse(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
    let shown = format!("{:?}", parse(&[("access_key_id", "AKIA"), ("secret_access_key", "hunter2-secret")]).unwrap());
    assert!(!shown.contains("hunter2"), "{shown}");
}
