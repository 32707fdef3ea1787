//! The AWS adapter through the real SDK against moto's server (PyPI
//! `moto[server]`), which `tests/run-all.sh` installs into a virtualenv and
//! names in `KEYBRIDGE_MOTO_SERVER`: the provider contract suite, and what
//! is AWS's own.

mod common;

use common::{moto, store, string_of, text};
use keybridge_provider_api::testing::{Gaps, exercise};
use keybridge_provider_api::{Cloud, Deletion, Error, Precondition, SecretStore, Selector};
use keybridge_provider_aws::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_contract_holds() {
    let m = moto();
    // moto lets a secret scheduled for deletion take new versions.
    let gaps = Gaps { writes_while_deleted: true, ..Gaps::default() };
    exercise(&store(&m).await, Cloud::Aws.capabilities(), gaps).await;
}

/// AWS's own names, labels and recovery window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashed_names_labels_and_the_recovery_window() {
    let m = moto();
    let s = store(&m).await;
    // Names the codec makes on AWS keep the path's slashes.
    s.put("kb/app/db", &text("one"), &Precondition::Absent, None).await.unwrap();
    s.put("kb/app/db", &text("two"), &Precondition::CurrentNumber(1), None).await.unwrap();
    let cur = s.get("kb/app/db", &Selector::Current).await.unwrap();
    assert_eq!(string_of(&cur.value), "two");
    assert!(cur.version.stages.contains(&"AWSCURRENT".to_string()), "{cur:?}");
    assert_eq!(string_of(&s.get("kb/app/db", &Selector::Stage("AWSPREVIOUS".into())).await.unwrap().value), "one");
    // AWS keeps a deleted secret for 7 to 30 days, and describes it meanwhile.
    let e = s.delete("kb/app/db", Deletion::Recoverable { days: 3 }).await;
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    assert_eq!(string_of(&s.get("kb/app/db", &Selector::Current).await.unwrap().value), "two");
    s.delete("kb/app/db", Deletion::Recoverable { days: 7 }).await.unwrap();
    assert!(s.describe("kb/app/db").await.unwrap().deletion.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_unavailable() {
    let e = common::unreachable().await.check().await.unwrap_err();
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
