//! A Keybridge gateway in dev mode (in-memory store, unsealed, a known
//! root token) on a loopback port, for the client crate's tests and doc
//! examples. The binary is `$KEYBRIDGE_BIN`, or target/debug/keybridge.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running dev gateway, killed when dropped.
pub struct DevGateway {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub root_token: String,
    /// The dev server's one unseal key.
    pub unseal_key: String,
}

impl Drop for DevGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let bin = std::env::var_os("KEYBRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/keybridge"));
    assert!(
        bin.is_file(),
        "no keybridge binary at {}: build it (cargo build -p keybridge-server) or set KEYBRIDGE_BIN",
        bin.display()
    );
    bin
}

impl DevGateway {
    /// Stops it as an operator would (SIGTERM: streams end, connections
    /// drain) and waits for it to exit.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }

    /// Starts one on a free port.
    pub fn start() -> DevGateway {
        DevGateway::start_on("127.0.0.1:0")
    }

    /// Starts one listening on `address` (`127.0.0.1:<port>`).
    pub fn start_on(address: &str) -> DevGateway {
        let token = format!("root-doc-{}", std::process::id());
        let mut child = Command::new(binary())
            .args(["server", "--dev", "--dev-listen-address", address, "--dev-root-token-id", &token])
            .env("KEYBRIDGE_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keybridge");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut gw = DevGateway { child, address: String::new(), root_token: token, unseal_key: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the gateway did not start in time");
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read the gateway's stdout");
            assert!(n > 0, "the gateway exited before listening");
            if let Some(k) = line.strip_prefix("Unseal Key: ") {
                gw.unseal_key = k.trim().to_string();
            }
            if let Some(rest) = line.split("Listening on ").nth(1) {
                gw.address = rest.split_whitespace().next().expect("an address").to_string();
                // Keep draining stdout so the child never blocks on a full pipe.
                std::thread::spawn(move || for _ in reader.lines() {});
                return gw;
            }
        }
    }
}

/// Runs a documentation example against a fresh dev gateway: `example`
/// gets its address and root token. Panics with the example's error.
pub fn doc_example<F, Fut, E>(example: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let gw = DevGateway::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    if let Err(e) = rt.block_on(example(gw.address.clone(), gw.root_token.clone())) {
        panic!("the example failed: {e}");
    }
}
