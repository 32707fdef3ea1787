//! Audit records: the caller and its request state, the values a record
//! holds (secrets only as HMACs) and rendering one record for one device.

use std::sync::Mutex;

use serde::Serialize;
use zeroize::Zeroizing;

use super::chain;

use super::chain::MacKey;

pub const HMAC_PREFIX: &str = "hmac-sha256:";

/// The HMAC of `value` under a device's key, as records show it.
pub fn hmac_hex(key: &MacKey, value: &[u8]) -> String {
    let mut out = Vec::with_capacity(HMAC_PREFIX.len() + 64);
    push_hmac(&mut out, key, value);
    // Cannot fail: the prefix and hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `hmac-sha256:<64 hex digits>` (no quotes).
fn push_hmac(buf: &mut Vec<u8>, key: &MacKey, value: &[u8]) {
    buf.extend_from_slice(HMAC_PREFIX.as_bytes());
    buf.extend_from_slice(&chain::hex32(&key.mac(&[value])));
}

/// A piece of request or response data. `Secret` never leaves the process:
/// each device writes its HMAC.
pub enum AuditValue {
    Plain(serde_json::Value),
    Secret(Zeroizing<Vec<u8>>),
    Map(AuditData),
}

impl std::fmt::Debug for AuditValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditValue::Plain(v) => write!(f, "{v}"),
            AuditValue::Secret(_) => f.write_str("<redacted>"),
            AuditValue::Map(m) => f.debug_map().entries(m.iter().map(|(k, v)| (k, v))).finish(),
        }
    }
}

impl AuditValue {
    pub fn plain(v: impl Into<serde_json::Value>) -> Self {
        AuditValue::Plain(v.into())
    }

    pub fn secret(bytes: &[u8]) -> Self {
        AuditValue::Secret(Zeroizing::new(bytes.to_vec()))
    }
}

/// Who made a request, as records show it: the token's display name and
/// policies, and its accessor (only as an HMAC). The core's token entries
/// implement it, so recording one copies nothing.
pub trait Principal: Send + Sync {
    fn display_name(&self) -> &str;
    fn policies(&self) -> &[String];
    fn accessor(&self) -> &str;
}

/// A field name of audited data: usually a literal, so naming it allocates
/// nothing.
pub type AuditKey = std::borrow::Cow<'static, str>;

pub type AuditData = Vec<(AuditKey, AuditValue)>;

/// One request as it passes through the core: who sent it and from where,
/// what it asked, and (once authorized) what it was authorized as. Built
/// by the transport; the core fills in the rest and audits it. One caller
/// per request: its request record is written once.
pub struct Caller {
    token: Option<Zeroizing<String>>,
    pub request_id: String,
    pub remote: Option<std::net::SocketAddr>,
    pub operation: &'static str,
    /// The path the request named, before routing.
    pub path: String,
    data: AuditData,
    state: Mutex<CallState>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("request_id", &self.request_id)
            .field("operation", &self.operation)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
pub struct CallState {
    /// Who made the request (records show its display name, policies and
    /// accessor, never the token).
    pub auth: Option<std::sync::Arc<dyn Principal>>,
    pub acl_path: Option<String>,
    pub capability: Option<&'static str>,
    /// The request record is written (or was attempted).
    pub requested: bool,
    pub responded: bool,
    /// No device could record the request.
    pub audit_failed: bool,
    /// Why a login or authentication failed, for the record only.
    pub reason: Option<String>,
}

impl Caller {
    pub fn new(token: Option<&str>, operation: &'static str) -> Self {
        Caller {
            token: token.map(|t| Zeroizing::new(t.to_string())),
            request_id: String::new(),
            remote: None,
            operation,
            path: String::new(),
            data: Vec::new(),
            state: Mutex::new(CallState::default()),
        }
    }

    /// A caller for in-process use (tests, examples): no request id or address.
    pub fn token(token: Option<&str>) -> Self {
        Self::new(token, "internal")
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub fn with_remote(mut self, remote: Option<std::net::SocketAddr>) -> Self {
        self.remote = remote;
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub fn with(mut self, key: impl Into<AuditKey>, value: AuditValue) -> Self {
        self.data.push((key.into(), value));
        self
    }

    /// Whether the response was finished: recorded (or its recording
    /// attempted), or finished with no device to record it on.
    pub fn response_recorded(&self) -> bool {
        self.state().responded
    }

    pub fn bearer(&self) -> Option<&str> {
        self.token.as_deref().map(|s| s.as_str())
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_reason(&self, reason: impl Into<String>) {
        self.state().reason = Some(reason.into());
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// Writes a JSON object field by field (records are rendered once per
/// device per request, so this avoids building a `serde_json::Map`).
struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(buf: &'a mut Vec<u8>) -> Obj<'a> {
        buf.push(b'{');
        Obj { buf, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        let _ = serde_json::to_writer(&mut *self.buf, k);
        self.buf.push(b':');
    }

    fn field(&mut self, k: &str, v: &(impl Serialize + ?Sized)) {
        self.key(k);
        let _ = serde_json::to_writer(&mut *self.buf, v);
    }

    /// A field whose value needs no JSON escaping (ASCII that `Display`
    /// writes without quotes or backslashes: times, addresses).
    fn display(&mut self, k: &str, v: impl std::fmt::Display) {
        use std::io::Write;
        self.key(k);
        let _ = write!(self.buf, "\"{v}\"");
    }

    fn hmac(&mut self, k: &str, key: &MacKey, value: &[u8]) {
        self.key(k);
        self.buf.push(b'"');
        push_hmac(self.buf, key, value);
        self.buf.push(b'"');
    }

    fn close(self) {
        self.buf.push(b'}');
    }
}

fn write_value(buf: &mut Vec<u8>, v: &AuditValue, key: &MacKey) {
    match v {
        AuditValue::Plain(p) => {
            let _ = serde_json::to_writer(&mut *buf, p);
        }
        AuditValue::Secret(s) => {
            buf.push(b'"');
            push_hmac(buf, key, s);
            buf.push(b'"');
        }
        AuditValue::Map(m) => write_data(buf, m, key),
    }
}

fn write_data(buf: &mut Vec<u8>, data: &[(AuditKey, AuditValue)], key: &MacKey) {
    let mut o = Obj::open(buf);
    for (k, v) in data {
        o.key(k);
        write_value(o.buf, v, key);
    }
    o.close();
}

/// Renders one record for one device (a JSON object without `seq`) into
/// `buf`.
pub fn render(
    buf: &mut Vec<u8>,
    kind: Kind,
    caller: &Caller,
    state: &CallState,
    outcome: Option<(&str, Option<&str>)>,
    response: Option<&AuditData>,
    key: &MacKey,
) {
    let mut o = Obj::open(buf);
    o.field("type", if kind == Kind::Request { "request" } else { "response" });
    o.display("time", humantime::format_rfc3339_micros(std::time::SystemTime::now()));
    o.field("request_id", &caller.request_id);
    o.field("operation", caller.operation);
    if let Some(r) = &caller.remote {
        o.display("remote_address", r);
    }
    if state.auth.is_some() || caller.token.is_some() {
        o.key("auth");
        let mut a = Obj::open(o.buf);
        if let Some(auth) = &state.auth {
            a.field("display_name", auth.display_name());
            a.field("policies", auth.policies());
            // An accessor can look a token up and revoke it: HMACed, as
            // Vault's default `hmac_accessor = true`.
            a.hmac("accessor", key, auth.accessor().as_bytes());
        }
        if let Some(t) = &caller.token {
            a.hmac("client_token", key, t.as_bytes());
        }
        a.close();
    }
    match &state.acl_path {
        Some(p) => o.field("path", p),
        None => o.field("path", &caller.path),
    }
    if let Some(c) = state.capability {
        o.field("capability", c);
    }
    if !caller.data.is_empty() {
        o.key("request");
        write_data(o.buf, &caller.data, key);
    }
    if let Some((status, error)) = outcome {
        o.field("status", status);
        if let Some(e) = error {
            o.field("error", e);
        }
    }
    if let Some(r) = &state.reason {
        o.field("reason", r);
    }
    if let Some(data) = response
        && !data.is_empty()
    {
        o.key("response");
        write_data(o.buf, data, key);
    }
    o.close();
}
