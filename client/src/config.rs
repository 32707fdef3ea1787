//! Where the gateway is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::Error;

/// The address used when neither the caller nor `KEYBRIDGE_ADDR` gives one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8400";

/// Connection settings. [`Config::from_env`] reads the usual environment
/// variables; the builder methods override them.
#[derive(Clone)]
pub struct Config {
    pub(crate) address: String,
    pub(crate) token: Option<Zeroizing<String>>,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Retry,
    pub(crate) max_message_bytes: usize,
}

/// How calls that are safe to repeat are retried when the gateway answers
/// `UNAVAILABLE` or cannot be reached: up to `attempts` tries in all, with
/// exponential backoff from `initial_backoff` up to `max_backoff`, each
/// wait jittered by up to half of it. Writes are never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Retry {
    /// No retries: one try per call.
    pub const NEVER: Retry = Retry { attempts: 1, initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO };

    /// The wait before try `n + 1` (n counts from 1), jittered.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        let base = base.min(self.max_backoff);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.5);
        base.saturating_sub(jitter)
    }
}

impl Default for Retry {
    /// 4 tries, 100 ms doubling to at most 2 s.
    fn default() -> Self {
        Retry { attempts: 4, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2) }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl Config {
    /// Settings for `address` (`https://kb.internal:8400`; without a scheme,
    /// `http://` is assumed), no token, the defaults for the rest.
    pub fn new(address: impl Into<String>) -> Config {
        Config {
            address: address.into(),
            token: None,
            ca_cert: None,
            connect_timeout: Duration::from_secs(10),
            timeout: None,
            retry: Retry::default(),
            max_message_bytes: 64 << 20,
        }
    }

    /// Settings from the environment, as the `keybridge` CLI reads them:
    /// `KEYBRIDGE_ADDR` (default [`DEFAULT_ADDRESS`]), `KEYBRIDGE_TOKEN`
    /// and `KEYBRIDGE_CACERT` (a PEM file). Empty variables count as unset.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut c = Config::new(get("KEYBRIDGE_ADDR").unwrap_or_else(|| DEFAULT_ADDRESS.to_string()));
        if let Some(t) = get("KEYBRIDGE_TOKEN") {
            c = c.with_token(t.trim().to_string());
        }
        if let Some(ca) = get("KEYBRIDGE_CACERT") {
            c = c.with_ca_cert(ca);
        }
        Ok(c)
    }

    /// The token sent as `authorization: Bearer <token>` on every call.
    pub fn with_token(mut self, token: impl Into<String>) -> Config {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// A PEM file of the CA that signed the gateway's certificate, trusted
    /// besides the system's roots (https addresses only).
    pub fn with_ca_cert(mut self, path: impl Into<PathBuf>) -> Config {
        self.ca_cert = Some(path.into());
        self
    }

    /// How long to wait for a connection (default 10 s).
    pub fn with_connect_timeout(mut self, t: Duration) -> Config {
        self.connect_timeout = t;
        self
    }

    /// A deadline for every call until its answer starts (default none).
    pub fn with_timeout(mut self, t: Duration) -> Config {
        self.timeout = Some(t);
        self
    }

    /// The retry policy for calls that are safe to repeat.
    pub fn with_retry(mut self, r: Retry) -> Config {
        self.retry = r;
        self
    }

    /// The largest message accepted from the server (default 64 MiB).
    pub fn with_max_message_bytes(mut self, n: usize) -> Config {
        self.max_message_bytes = n;
        self
    }

    /// The address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The address with its scheme (`http://` added when it had none).
    pub(crate) fn url(&self) -> String {
        let a = self.address.trim();
        if a.contains("://") { a.to_string() } else { format!("http://{a}") }
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The CA file, if one is set.
    pub fn ca_cert(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn from_env_reads_the_three_variables() {
        let c = Config::from_lookup(env(&[
            ("KEYBRIDGE_ADDR", "https://kb.example:8400"),
            ("KEYBRIDGE_TOKEN", "kb.s.abc\n"),
            ("KEYBRIDGE_CACERT", "/etc/kb/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(c.address(), "https://kb.example:8400");
        assert_eq!(c.token.as_deref().map(String::as_str), Some("kb.s.abc"));
        assert_eq!(c.ca_cert(), Some(std::path::Path::new("/etc/kb/ca.pem")));
    }

    #[test]
    fn from_env_defaults_and_ignores_empty_values() {
        let c = Config::from_lookup(env(&[("KEYBRIDGE_ADDR", ""), ("KEYBRIDGE_TOKEN", "  ")])).unwrap();
        assert_eq!(c.address(), DEFAULT_ADDRESS);
        assert!(!c.has_token());
        assert_eq!(Config::new("127.0.0.1:1").url(), "http://127.0.0.1:1");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Config::new("http://x").with_token("kb.s.very-secret");
        let d = format!("{c:?}");
        assert!(!d.contains("very-secret") && d.contains("<redacted>"), "{d}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_never_overflows() {
        let r =
            Retry { attempts: 10, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1) };
        for (n, base) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000), (u32::MAX, 1000)] {
            let b = r.backoff(n);
            let base = Duration::from_millis(base);
            assert!(b <= base && b >= base / 2, "try {n}: {b:?} outside [{:?}, {base:?}]", base / 2);
        }
    }
}
