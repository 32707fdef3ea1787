//! Starts moto's server for a test, and builds the adapter against it.

use std::collections::BTreeMap;

use keybridge_provider_api::CloudValue;
use keybridge_provider_aws::{AwsStore, Settings};
use keybridge_testservers::process::Spawned;

pub fn moto() -> Spawned {
    Spawned::start("KEYBRIDGE_MOTO_SERVER", |port| vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()])
}

pub async fn store(m: &Spawned) -> AwsStore {
    let s: BTreeMap<String, String> = [
        ("region", "us-east-1".to_string()),
        ("endpoint_url", m.url()),
        ("access_key_id", "testing".to_string()),
        ("secret_access_key", "testing".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    AwsStore::new(&Settings::parse(&s).unwrap()).await
}

pub fn text(v: &str) -> CloudValue {
    CloudValue::text(v)
}

pub fn string_of(v: &CloudValue) -> String {
    v.as_str().expect("a string value").to_string()
}
