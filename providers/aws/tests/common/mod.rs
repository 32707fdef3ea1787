//! Starts moto's server for a test, and builds the adapter against it (or
//! against a port where nothing listens).

use std::collections::BTreeMap;

use keybridge_provider_api::CloudValue;
use keybridge_provider_aws::{AwsStore, Settings};
use keybridge_testservers::process::Spawned;

pub fn moto() -> Spawned {
    Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()])
}

async fn at(endpoint_url: String) -> AwsStore {
    let s: BTreeMap<String, String> = [
        ("region", "us-east-1".to_string()),
        ("endpoint_url", endpoint_url),
        ("access_key_id", "testing".to_string()),
        ("secret_access_key", "testing".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    AwsStore::new(&Settings::parse(&s).unwrap()).await
}

pub async fn store(m: &Spawned) -> AwsStore {
    at(m.url()).await
}

/// The adapter against a loopback port where nothing listens.
pub async fn unreachable() -> AwsStore {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    at(format!("http://127.0.0.1:{port}")).await
}

pub fn text(v: &str) -> CloudValue {
    CloudValue::text(v)
}

pub fn string_of(v: &CloudValue) -> String {
    v.as_str().expect("a string value").to_string()
}
