use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// `secs` seconds later, saturating: a number from a request, an engine
    /// or a cloud can never wrap a time into the past.
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp { secs: self.secs.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)), nanos: self.nanos }
    }

    /// The wall clock (in builds with the `fault-injection` feature,
    /// `KEYBRIDGE_FAULT_CLOCK_AHEAD` seconds ahead of it: the tests' way to
    /// start a gateway later than it stopped).
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: (d.as_secs() as i64).saturating_add(clock_ahead()), nanos: d.subsec_nanos() }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
    }
}

#[cfg(feature = "fault-injection")]
fn clock_ahead() -> i64 {
    static AHEAD: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| std::env::var("KEYBRIDGE_FAULT_CLOCK_AHEAD").ok().and_then(|v| v.parse().ok()).unwrap_or(0))
}

#[cfg(not(feature = "fault-injection"))]
fn clock_ahead() -> i64 {
    0
}
