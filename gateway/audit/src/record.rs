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
    /// The part of a record that is the same in the request and the
    /// response record (request id, operation, address, and who: the
    /// token's HMACs), as rendered for each device, so the response record
    /// does not hash the token again. See [`render`].
    memo: Mutex<Vec<Memo>>,
}

/// One device's rendering of a caller's constant part, valid for the
/// principal it was rendered with.
struct Memo {
    device: u64,
    /// Held, so no other principal can take its address meanwhile.
    principal: Option<std::sync::Arc<dyn Principal>>,
    bytes: Vec<u8>,
}

impl Memo {
    fn is_for(&self, device: u64, principal: Option<&std::sync::Arc<dyn Principal>>) -> bool {
        self.device == device
            && match (&self.principal, principal) {
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
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
    /// Appends `,"request_id":...` through the `auth` object: the part of
    /// the caller's records that only the principal can change (the token
    /// it presented, its request id, operation and address are fixed when
    /// it is made). Copied from this device's earlier rendering when the
    /// principal is the same one.
    fn render_constant(&self, buf: &mut Vec<u8>, state: &CallState, device: u64, key: &MacKey) {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = memo.iter().find(|m| m.is_for(device, state.auth.as_ref())) {
            buf.extend_from_slice(&m.bytes);
            return;
        }
        let start = buf.len();
        // Never the first member: `type` and `time` come before it.
        let mut o = Obj { buf, first: false };
        o.field("request_id", &self.request_id);
        o.field("operation", self.operation);
        if let Some(r) = &self.remote {
            o.display("remote_address", r);
        }
        if state.auth.is_some() || self.token.is_some() {
            o.lit("auth");
            let mut a = Obj::open(o.buf);
            if let Some(auth) = &state.auth {
                a.field("display_name", auth.display_name());
                a.field("policies", auth.policies());
                // An accessor can look a token up and revoke it: HMACed, as
                // Vault's default `hmac_accessor = true`.
                a.hmac("accessor", key, auth.accessor().as_bytes());
            }
            if let Some(t) = &self.token {
                a.hmac("client_token", key, t.as_bytes());
            }
            a.close();
        }
        let (bytes, principal) = (buf[start..].to_vec(), state.auth.clone());
        match memo.iter_mut().find(|m| m.device == device) {
            Some(m) => *m = Memo { device, principal, bytes },
            None => memo.push(Memo { device, principal, bytes }),
        }
    }

    pub fn new(token: Option<&str>, operation: &'static str) -> Self {
        Caller {
            token: token.map(|t| Zeroizing::new(t.to_string())),
            request_id: String::new(),
            remote: None,
            operation,
            path: String::new(),
            data: Vec::new(),
            state: Mutex::new(CallState::default()),
            memo: Mutex::new(Vec::new()),
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

    /// The comma before every member but the first.
    fn next(&mut self) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
    }

    fn key(&mut self, k: &str) {
        self.next();
        let _ = serde_json::to_writer(&mut *self.buf, k);
        self.buf.push(b':');
    }

    /// A key the renderer names itself: a literal that needs no escaping.
    fn lit(&mut self, k: &'static str) {
        debug_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{k}");
        self.next();
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn field(&mut self, k: &'static str, v: &(impl Serialize + ?Sized)) {
        self.lit(k);
        let _ = serde_json::to_writer(&mut *self.buf, v);
    }

    /// A field whose value needs no JSON escaping (ASCII that `Display`
    /// writes without quotes or backslashes: times, addresses).
    fn display(&mut self, k: &'static str, v: impl std::fmt::Display) {
        use std::io::Write;
        self.lit(k);
        let _ = write!(self.buf, "\"{v}\"");
    }

    fn hmac(&mut self, k: &'static str, key: &MacKey, value: &[u8]) {
        self.lit(k);
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
/// `buf`. `device` names the device `key` belongs to (unique while the
/// process runs): the caller's constant part is rendered once per device
/// and principal, and the response record copies it from the request's.
#[allow(clippy::too_many_arguments)]
pub fn render(
    buf: &mut Vec<u8>,
    kind: Kind,
    caller: &Caller,
    state: &CallState,
    outcome: Option<(&str, Option<&str>)>,
    response: Option<&AuditData>,
    device: u64,
    key: &MacKey,
) {
    let mut o = Obj::open(buf);
    o.field("type", if kind == Kind::Request { "request" } else { "response" });
    o.display("time", humantime::format_rfc3339_micros(std::time::SystemTime::now()));
    caller.render_constant(o.buf, state, device, key);
    match &state.acl_path {
        Some(p) => o.field("path", p),
        None => o.field("path", &caller.path),
    }
    if let Some(c) = state.capability {
        o.field("capability", c);
    }
    if !caller.data.is_empty() {
        o.lit("request");
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
        o.lit("response");
        write_data(o.buf, data, key);
    }
    o.close();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    struct Who(&'static str, Vec<String>, &'static str);

    impl Principal for Who {
        fn display_name(&self) -> &str {
            self.0
        }
        fn policies(&self) -> &[String] {
            &self.1
        }
        fn accessor(&self) -> &str {
            self.2
        }
    }

    fn record(kind: Kind, caller: &Caller, state: &CallState, device: u64, key: &MacKey) -> serde_json::Value {
        let mut buf = Vec::new();
        render(&mut buf, kind, caller, state, Some(("OK", None)), None, device, key);
        serde_json::from_slice(&buf).expect("a record is one JSON object")
    }

    /// The response record copies the caller's part from the request
    /// record's rendering: only while it is the same principal, and only
    /// for the device (and so the key) it was rendered for.
    #[test]
    fn the_remembered_caller_part_follows_the_principal_and_the_device() {
        let caller = Caller::new(Some("kb.token"), "keybridge.v1.Secrets/Get")
            .with_request_id("r-1")
            .with_remote(Some("127.0.0.1:4000".parse().expect("an address")));
        let (k1, k2) = (MacKey::new(b"device one"), MacKey::new(b"device two"));
        let alice: Arc<dyn Principal> = Arc::new(Who("alice", vec!["reader".into()], "acc-a"));
        let bob: Arc<dyn Principal> = Arc::new(Who("bob", vec!["writer".into()], "acc-b"));
        let mut state = CallState { auth: Some(alice.clone()), ..Default::default() };

        let req = record(Kind::Request, &caller, &state, 1, &k1);
        let resp = record(Kind::Response, &caller, &state, 1, &k1);
        assert_eq!(req["auth"], resp["auth"]);
        assert_eq!(resp["auth"]["display_name"], "alice");
        assert_eq!(resp["auth"]["client_token"], hmac_hex(&k1, b"kb.token"));
        assert_eq!(resp["auth"]["accessor"], hmac_hex(&k1, b"acc-a"));
        for field in ["request_id", "operation", "remote_address"] {
            assert_eq!(req[field], resp[field], "{field}");
        }
        assert_eq!(resp["remote_address"], "127.0.0.1:4000");

        // Another device: its own key.
        let other = record(Kind::Response, &caller, &state, 2, &k2);
        assert_eq!(other["auth"]["client_token"], hmac_hex(&k2, b"kb.token"));
        assert_eq!(other["auth"]["accessor"], hmac_hex(&k2, b"acc-a"));

        // Another principal, and none.
        state.auth = Some(bob);
        let resp = record(Kind::Response, &caller, &state, 1, &k1);
        assert_eq!(resp["auth"]["display_name"], "bob");
        assert_eq!(resp["auth"]["policies"], serde_json::json!(["writer"]));
        assert_eq!(resp["auth"]["accessor"], hmac_hex(&k1, b"acc-b"));
        state.auth = None;
        let resp = record(Kind::Response, &caller, &state, 1, &k1);
        assert_eq!(resp["auth"], serde_json::json!({ "client_token": hmac_hex(&k1, b"kb.token") }));
        state.auth = Some(alice);
        assert_eq!(record(Kind::Response, &caller, &state, 1, &k1)["auth"]["display_name"], "alice");
    }

    /// Keys the renderer names are written as they are; data keys from
    /// elsewhere are escaped.
    #[test]
    fn field_names_from_request_data_are_escaped() {
        let caller = Caller::new(None, "op").with("a\"b\\c", AuditValue::plain("v"));
        let v = record(Kind::Request, &caller, &CallState::default(), 1, &MacKey::new(b"k"));
        assert_eq!(v["request"]["a\"b\\c"], "v");
        assert_eq!(v["type"], "request");
        assert!(v.get("auth").is_none());
    }
}
