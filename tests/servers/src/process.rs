//! Third-party test servers run as child processes (moto, drongo).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process on a free loopback port, killed when dropped.
pub struct Spawned {
    child: Child,
    pub port: u16,
}

impl Spawned {
    /// Runs the program named by the environment variable `env` (set by
    /// `tests/run-all.sh`) with the arguments `args(port)`, and waits until
    /// the port accepts connections.
    pub fn start(env: &str, args: impl Fn(u16) -> Vec<String>) -> Spawned {
        let bin = std::env::var(env).unwrap_or_else(|_| {
            panic!("{env} is not set: run ./tests/run-all.sh, which installs the server and sets it")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let child = Command::new(&bin)
            .args(args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let spawned = Spawned { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{bin} did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        spawned
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the process (SIGSTOP): connections are accepted by the kernel
    /// but never answered, as a hung service does; [`Spawned::resume`]
    /// continues it with its state.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(sig).arg(self.child.id().to_string()).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", self.child.id());
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
