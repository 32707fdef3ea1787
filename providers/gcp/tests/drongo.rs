//! The GCP adapter through the official SDK (REST) against drongo (PyPI
//! `drongo`), which `tests/run-all.sh` installs and names in
//! `KEYBRIDGE_DRONGO`: the provider contract suite, but for paging and
//! custom metadata (drongo ignores `pageSize` and drops annotations), which
//! `secretmanager.rs` checks against our own Secret Manager test server.

use std::collections::BTreeMap;

use keybridge_provider_api::testing::{Gaps, exercise};
use keybridge_provider_api::{Cloud, Error, SecretStore};
use keybridge_provider_gcp::{GcpStore, Settings};
use keybridge_testservers::process::Spawned;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_contract_holds() {
    let d = drongo();
    let s = GcpStore::new(&settings(&d.url())).await.unwrap();
    exercise(&s, Cloud::Gcp.capabilities(), Gaps { page_size: true, tags: true, ..Gaps::default() }).await;
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
    // A key file is named by its absolute path, read only when the mount is
    // loaded; it is credentials given with the mount, as anonymous is.
    for creds in ["anonymous", "/etc/keybridge/absent-key.json"] {
        assert!(
            parse(&[("project", "my-project"), ("endpoint", "http://127.0.0.1:1"), ("credentials", creds)]).is_ok()
        );
    }
    for bad in [
        vec![],
        vec![("project", "X")],
        vec![("project", "my-project"), ("endpoint", "localhost:1")],
        vec![("project", "my-project"), ("credentials", "json")],
        vec![("project", "my-project"), ("credentials", "key.json")],
        vec![("project", "my-project"), ("endpoint", "http://127.0.0.1:1")],
        vec![("project", "my-project"), ("zone", "x")],
    ] {
        assert!(matches!(parse(&bad), Err(Error::InvalidArgument(_))), "{bad:?}");
    }
}
