//! Starts moto's server for a test, and builds the adapter against it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keybridge_provider_aws::{AwsStore, Settings};

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn moto() -> Moto {
    let bin = std::env::var("KEYBRIDGE_MOTO_SERVER").unwrap_or_else(|_| {
        panic!("KEYBRIDGE_MOTO_SERVER is not set: run ./tests/run-all.sh, which installs moto[server] and sets it")
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Moto { child, url: format!("http://127.0.0.1:{port}") }
}

pub async fn store(m: &Moto) -> AwsStore {
    let s: BTreeMap<String, String> = [
        ("region", "us-east-1"),
        ("endpoint_url", m.url.as_str()),
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    AwsStore::new(&Settings::parse(&s).unwrap()).await
}
