//! A mount's limits, parsed from its config, and the store's resource
//! limiter.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::HostConfig;

/// The config keys the host reads; everything else is the engine's.
pub const HOST_KEYS: &[(&str, &str)] = &[
    ("timeout", "the longest one call may run, WASM and host calls together (default 2s, at most 60s)"),
    ("max_memory_mb", "linear memory per call in MiB (default 64)"),
    ("fuel", "WASM instructions (roughly) per call; unset: no fuel limit"),
    ("max_response_bytes", "the most data a call may return (default 1048576)"),
    (
        "allowed_hosts",
        "comma-separated host[:port] the plugin may call over wasi:http, `*.example.com` for subdomains; a host without a port allows 80 and 443; empty: no network",
    ),
];

pub fn is_host_key(k: &str) -> bool {
    HOST_KEYS.iter().any(|(h, _)| *h == k)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lowercase; `*.` prefix for subdomains.
    pub host: String,
    pub port: Option<u16>,
}

impl AllowedHost {
    fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        };
        host_ok && self.port.map_or(port == 80 || port == 443, |p| p == port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountLimits {
    pub timeout: Duration,
    pub max_memory_bytes: usize,
    pub fuel: Option<u64>,
    pub max_response_bytes: usize,
    pub allowed_hosts: Vec<AllowedHost>,
}

impl Default for MountLimits {
    fn default() -> Self {
        MountLimits {
            timeout: Duration::from_secs(2),
            max_memory_bytes: 64 << 20,
            fuel: None,
            max_response_bytes: 1 << 20,
            allowed_hosts: Vec::new(),
        }
    }
}

const MAX_TIMEOUT: Duration = Duration::from_secs(60);

impl MountLimits {
    /// Parses the host's keys of a mount config; other keys are ignored.
    pub fn parse(config: &BTreeMap<String, String>, host: &HostConfig) -> Result<MountLimits, String> {
        let mut l = MountLimits::default();
        l.max_memory_bytes = l.max_memory_bytes.min(host.max_memory_bytes);
        for (k, v) in config {
            let bad = |what: &str| format!("mount config {k}={v:?}: {what}");
            match k.as_str() {
                "timeout" => {
                    let d = humantime::parse_duration(v)
                        .or_else(|_| v.parse::<u64>().map(Duration::from_secs))
                        .map_err(|_| bad("expected a duration such as 2s or 500ms"))?;
                    if d.is_zero() || d > MAX_TIMEOUT {
                        return Err(bad("must be more than 0 and at most 60s"));
                    }
                    l.timeout = d;
                }
                "max_memory_mb" => {
                    let mb: usize = v.parse().map_err(|_| bad("expected a whole number of MiB"))?;
                    let max = host.max_memory_bytes >> 20;
                    if mb == 0 || mb > max {
                        return Err(bad(&format!("must be between 1 and {max} (the server's limit)")));
                    }
                    l.max_memory_bytes = mb << 20;
                }
                "fuel" => {
                    let f: u64 = v.parse().map_err(|_| bad("expected a whole number"))?;
                    if f == 0 {
                        return Err(bad("must be more than 0 (leave it unset for no fuel limit)"));
                    }
                    l.fuel = Some(f);
                }
                "max_response_bytes" => {
                    let n: usize = v.parse().map_err(|_| bad("expected a number of bytes"))?;
                    if n == 0 || n > 16 << 20 {
                        return Err(bad("must be between 1 and 16777216"));
                    }
                    l.max_response_bytes = n;
                }
                "allowed_hosts" => {
                    l.allowed_hosts = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| parse_host(s).map_err(|e| bad(&e)))
                        .collect::<Result<_, _>>()?;
                }
                _ => {}
            }
        }
        Ok(l)
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts.iter().any(|a| a.matches(host, port))
    }

    /// Whether a connection for a request to `host` may go to `ip`. An
    /// address of the gateway's own host or its cloud (loopback, unspecified,
    /// link-local, the metadata service) only when the request names that
    /// very address and the allow-list has it literally: a name, even an
    /// allowed one, can be made to resolve there (DNS rebinding).
    pub fn address_allowed(&self, host: &str, ip: std::net::IpAddr) -> bool {
        if !internal(ip) {
            return true;
        }
        let literal = |s: &str| s.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
        literal(host) == Some(ip) && self.allowed_hosts.iter().any(|a| literal(&a.host) == Some(ip))
    }
}

/// Addresses that reach the gateway's own host or its cloud's metadata:
/// loopback, unspecified, link-local (169.254.0.0/16, fe80::/10, where the
/// clouds' metadata services answer) and AWS's IPv6 metadata address.
fn internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn parse_host(s: &str) -> Result<AllowedHost, String> {
    if s.contains("://") || s.contains('/') {
        return Err(format!("{s:?}: give host[:port], without a scheme or path"));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            (h, Some(p.parse::<u16>().map_err(|_| format!("{s:?}: the port is not a number from 1 to 65535"))?))
        }
        _ => (s, None),
    };
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if bare.is_empty() || bare.contains('*') || !bare.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)) {
        return Err(format!("{s:?}: not a host name or IPv4 address (a wildcard may only lead: *.example.com)"));
    }
    Ok(AllowedHost { host: host.to_ascii_lowercase(), port })
}

/// Caps a store's memories and tables, and remembers a refusal so the
/// caller is told which limit was hit rather than the trap that followed.
pub struct Limiter {
    pub max_memory: usize,
    pub refused: Option<usize>,
}

const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn hosts_match_exactly() {
        let l = MountLimits::parse(
            &cfg(&[("allowed_hosts", "api.example.com, *.corp.example:8443,127.0.0.1:9000")]),
            &HostConfig::default(),
        )
        .unwrap();
        assert!(l.allows("api.example.com", 443));
        assert!(l.allows("API.example.com", 80));
        assert!(!l.allows("api.example.com", 8080));
        assert!(!l.allows("evil-api.example.com", 443));
        assert!(l.allows("a.corp.example", 8443));
        assert!(!l.allows("corp.example", 8443));
        assert!(!l.allows("a.corp.example", 443));
        assert!(l.allows("127.0.0.1", 9000));
        assert!(!l.allows("127.0.0.1", 9001));
        assert!(!MountLimits::default().allows("api.example.com", 443));
    }

    #[test]
    fn bad_settings_are_refused() {
        let h = HostConfig::default();
        for (k, v) in [
            ("timeout", "0s"),
            ("timeout", "2m"),
            ("timeout", "soon"),
            ("max_memory_mb", "0"),
            ("max_memory_mb", "100000"),
            ("fuel", "0"),
            ("max_response_bytes", "x"),
            ("allowed_hosts", "https://api.example.com"),
            ("allowed_hosts", "api.*.com"),
            ("allowed_hosts", "api.example.com:99999"),
        ] {
            assert!(MountLimits::parse(&cfg(&[(k, v)]), &h).is_err(), "{k}={v}");
        }
        let l =
            MountLimits::parse(&cfg(&[("timeout", "500ms"), ("max_memory_mb", "16"), ("fuel", "1000")]), &h).unwrap();
        assert_eq!(l.timeout, Duration::from_millis(500));
        assert_eq!(l.max_memory_bytes, 16 << 20);
        assert_eq!(l.fuel, Some(1000));
    }

    #[test]
    fn internal_addresses_need_a_literal_entry() {
        let l =
            MountLimits::parse(&cfg(&[("allowed_hosts", "api.example.com,127.0.0.1:9000")]), &HostConfig::default())
                .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // A name resolving to loopback, link-local or metadata: refused.
        for bad in ["127.0.0.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1"] {
            assert!(!l.address_allowed("api.example.com", ip(bad)), "{bad}");
        }
        assert!(l.address_allowed("api.example.com", ip("93.184.216.34")));
        // The literal address, allowed literally: fine.
        assert!(l.address_allowed("127.0.0.1", ip("127.0.0.1")));
        assert!(!l.address_allowed("[::1]", ip("::1")), "not on the list literally");
        assert!(!l.address_allowed("169.254.169.254", ip("169.254.169.254")), "not on the list literally");
    }
}
