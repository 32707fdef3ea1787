//! Secret engines behind `Logical` paths: the vocabulary every engine speaks
//! (WASM plugins through `keybridge-wasm-host`, built-in ones natively), the
//! traits the core calls them through, and the checks the core applies to a
//! request before an engine sees it.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroize;

/// Logical operations, as in Vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Read,
    Create,
    Update,
    Delete,
    List,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::List => "list",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Int,
    Boolean,
    Duration,
    CommaList,
}

impl FieldKind {
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::String => "string",
            FieldKind::Int => "int",
            FieldKind::Boolean => "bool",
            FieldKind::Duration => "duration",
            FieldKind::CommaList => "comma-separated list",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    pub description: String,
    pub required: bool,
    pub default: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub pattern: String,
    pub synopsis: String,
    pub description: String,
    pub operations: Vec<Operation>,
    pub fields: Vec<Field>,
    pub existence_check: bool,
}

/// What an engine serves, from its `describe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub paths: Vec<PathInfo>,
    pub config_keys: Vec<Field>,
    /// The engine exports `rotation` (the `rotating-engine` world).
    pub rotates: bool,
}

/// Parameters or response data: string pairs that may hold secrets. Values
/// are zeroed on drop and never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    pub fn into_map(mut self) -> BTreeMap<String, String> {
        std::mem::take(&mut self.0).into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Params {
    fn from(m: BTreeMap<String, String>) -> Self {
        Params(m.into_iter().collect())
    }
}

impl Drop for Params {
    fn drop(&mut self) {
        for (_, v) in &mut self.0 {
            v.zeroize();
        }
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, _)| (k, "<redacted>"))).finish()
    }
}

/// What the engine is told about the request besides its parameters.
#[derive(Clone, Debug)]
pub struct CallContext {
    pub mount_path: String,
    /// The mount's config, minus the host's own keys (not secret by contract:
    /// mount configs are listed by `mount list`).
    pub config: Vec<(String, String)>,
    pub request_id: String,
    pub caller: String,
    /// The longest lease the mount records (its `max_lease_ttl`): a lease
    /// asked for longer is cut to it, so an engine whose credential ends
    /// with its lease (a certificate) keeps the credential within it.
    pub lease_max_ttl_secs: u64,
}

#[derive(Clone, Debug)]
pub struct EngineRequest {
    pub operation: Operation,
    pub path: String,
    pub pattern: String,
    pub params: Params,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    pub ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub renewable: bool,
}

#[derive(Clone, Debug)]
pub struct LeaseRequest {
    pub terms: LeaseTerms,
    pub internal: Params,
}

#[derive(Clone, Debug, Default)]
pub struct EngineResponse {
    pub data: Params,
    pub lease: Option<LeaseRequest>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub lease_id: String,
    pub path: String,
    pub internal: Params,
    pub issue_time: u64,
    pub increment: u64,
}

/// How an engine call failed. The first six are the engine's own answers;
/// the rest are the host stopping it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
    /// A trap: the plugin's code failed (panic, unreachable, stack overflow).
    #[error("plugin trapped: {0}")]
    Trapped(String),
    /// Ran past the mount's time limit (in WASM code or blocked in a host call).
    #[error("{0}")]
    Deadline(String),
    /// Hit the memory, fuel or response-size limit.
    #[error("{0}")]
    Exhausted(String),
    /// The component does not fit the contract or cannot be compiled.
    #[error("{0}")]
    BadComponent(String),
}

/// The storage a mount's engine gets: its own keys only.
#[async_trait::async_trait]
pub trait EngineStorage: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, String>;
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), String>;
    async fn delete(&self, key: &str) -> Result<(), String>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>, String>;
    /// Up to `limit` keys under `prefix` (relative to it, whole keys, not
    /// children), in byte order, after `after` when given: a walk over more
    /// keys than `list` returns. A store that cannot page says so.
    async fn list_page(&self, _prefix: &str, _after: Option<&str>, _limit: usize) -> Result<Vec<String>, String> {
        Err("this storage cannot list keys a page at a time".into())
    }
}

/// A path an engine serves to anyone, without a token (Vault's
/// unauthenticated paths): public material only, such as a CA's
/// certificate and its CRL, which TLS clients fetch from the URLs written
/// into certificates.
#[derive(Clone, Copy, Debug)]
pub struct PublicRead {
    /// The path under the mount, exactly.
    pub path: &'static str,
    /// The response field that is the body.
    pub field: &'static str,
    /// The field holds the body's bytes in base64.
    pub base64: bool,
    pub content_type: &'static str,
}

/// One mounted engine.
#[async_trait::async_trait]
pub trait PluginEngine: Send + Sync {
    fn info(&self) -> &EngineInfo;
    /// Paths anyone may read without a token (none unless the engine
    /// says so; WASM engines never do).
    fn public_reads(&self) -> &'static [PublicRead] {
        &[]
    }
    async fn exists(&self, ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError>;
    async fn handle(&self, ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError>;
    async fn renew(&self, ctx: &CallContext, lease: &LeaseInfo) -> Result<LeaseTerms, EngineError>;
    async fn revoke(&self, ctx: &CallContext, lease: &LeaseInfo) -> Result<(), EngineError>;
    async fn rotate(&self, ctx: &CallContext, path: &str, params: &Params) -> Result<EngineResponse, EngineError>;
    /// Work of the engine's own that falls due (a built-in engine's
    /// scheduled rotations), run by the leading node about every
    /// [`PERIODIC_EVERY`]. WASM engines have none.
    async fn periodic(&self, _ctx: &CallContext) -> Result<(), EngineError> {
        Ok(())
    }
}

/// How often the leading node runs engines' periodic work.
pub const PERIODIC_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a plugin mount is built from.
pub struct PluginSpec<'a> {
    /// Hex SHA-256 of the component, as registered.
    pub digest: &'a str,
    pub component: &'a [u8],
    /// The mount's whole config (host keys such as `allowed_hosts` included).
    pub config: &'a BTreeMap<String, String>,
    pub storage: Arc<dyn EngineStorage>,
}

/// Runs plugin components. The server wires the WASM host in; a build
/// without it refuses plugin mounts.
#[async_trait::async_trait]
pub trait PluginRuntime: Send + Sync {
    /// Compiles a component and checks it against the contract; returns its
    /// `describe`.
    async fn inspect(&self, digest: &str, component: &[u8]) -> Result<EngineInfo, EngineError>;
    /// Config keys the host itself reads (limits, allow-list), with help.
    fn host_keys(&self) -> &'static [(&'static str, &'static str)];
    /// Checks the host's keys in a mount config, without IO.
    fn validate_host_config(&self, config: &BTreeMap<String, String>) -> Result<(), String>;
    /// Builds a mount's engine.
    async fn open(&self, spec: PluginSpec<'_>) -> Result<Arc<dyn PluginEngine>, EngineError>;
}

/// Engines built into the binary (mount types of their own, such as
/// `database`), reached through the same [`PluginEngine`] interface as
/// WASM plugins: the binary hands them in; the core names none.
#[async_trait::async_trait]
pub trait BuiltinEngines: Send + Sync {
    /// The mount types served.
    fn kinds(&self) -> Vec<&'static str>;
    /// Checks a mount config's engine keys, without IO.
    fn validate(&self, kind: &str, config: &BTreeMap<String, String>) -> Result<(), String>;
    /// Builds a mount's engine over its storage, with the password
    /// policies it may generate passwords from.
    async fn open(
        &self,
        kind: &str,
        config: &BTreeMap<String, String>,
        storage: Arc<dyn EngineStorage>,
        passwords: Arc<dyn PasswordPolicies>,
    ) -> Result<Arc<dyn PluginEngine>, EngineError>;
}

/// What a built-in engine may ask of the password policies stored at
/// `sys/policies/password/<name>`, besides its own storage: the characters
/// a named policy draws from, and a new password from it. Nothing else of
/// the core is reachable through it (a name is one policy name, checked;
/// never a key), and the policies' text never comes back.
#[async_trait::async_trait]
pub trait PasswordPolicies: Send + Sync {
    /// The characters policy `name` draws passwords from (its rules'
    /// charsets, each character once). `NotFound` when there is no such
    /// policy, `InvalidInput` for a name no policy could have.
    async fn alphabet(&self, name: &str) -> Result<Vec<char>, EngineError>;
    /// A new password from policy `name` (the OS's CSPRNG), with the
    /// alphabet it was drawn from, read at the same time.
    async fn generate(&self, name: &str) -> Result<GeneratedPassword, EngineError>;
}

/// A password a policy produced, and the characters the policy allowed
/// when it did. The password is zeroed on drop and never printed.
pub struct GeneratedPassword {
    pub password: zeroize::Zeroizing<String>,
    pub alphabet: Vec<char>,
}

impl std::fmt::Debug for GeneratedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedPassword").field("password", &"<redacted>").field("alphabet", &self.alphabet).finish()
    }
}

/// A request path matched against an engine's patterns.
pub struct Matched<'a> {
    pub info: &'a PathInfo,
    /// `{name}` segments.
    pub captures: Vec<(String, String)>,
}

/// Finds the path pattern serving `rel`: literal segments must match, `{x}`
/// matches one non-empty segment, a final `{x*}` the (non-empty) rest. The
/// most literal segments wins.
pub fn match_path<'a>(info: &'a EngineInfo, rel: &str) -> Option<Matched<'a>> {
    let rel = rel.trim_end_matches('/');
    let segs: Vec<&str> = if rel.is_empty() { Vec::new() } else { rel.split('/').collect() };
    let mut best: Option<(usize, Matched<'a>)> = None;
    'paths: for p in &info.paths {
        let pat = p.pattern.trim_matches('/');
        let psegs: Vec<&str> = if pat.is_empty() { Vec::new() } else { pat.split('/').collect() };
        let mut captures = Vec::new();
        let mut literal = 0;
        let mut i = 0;
        for (pi, ps) in psegs.iter().enumerate() {
            if let Some(name) = ps.strip_prefix('{').and_then(|s| s.strip_suffix("*}")) {
                if pi + 1 != psegs.len() || i >= segs.len() {
                    continue 'paths;
                }
                captures.push((name.to_string(), segs[i..].join("/")));
                i = segs.len();
                break;
            }
            let Some(seg) = segs.get(i) else { continue 'paths };
            if let Some(name) = ps.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if seg.is_empty() {
                    continue 'paths;
                }
                captures.push((name.to_string(), seg.to_string()));
            } else if ps != seg {
                continue 'paths;
            } else {
                literal += 1;
            }
            i += 1;
        }
        if i != segs.len() {
            continue;
        }
        if best.as_ref().is_none_or(|(l, _)| literal > *l) {
            best = Some((literal, Matched { info: p, captures }));
        }
    }
    best.map(|(_, m)| m)
}

/// Checks `given` against the path's fields: unknown names refused,
/// required ones present, kinds parsed (durations normalised to seconds),
/// defaults filled in. Captures are added last and win.
pub fn check_params(m: &Matched<'_>, op: Operation, given: &BTreeMap<String, String>) -> Result<Params, String> {
    let fields = &m.info.fields;
    for k in given.keys() {
        if !fields.iter().any(|f| &f.name == k) && !m.captures.iter().any(|(c, _)| c == k) {
            let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "unknown parameter {k:?} for {}; it takes: {}",
                m.info.pattern,
                if known.is_empty() { "no parameters".to_string() } else { known.join(", ") }
            ));
        }
    }
    let writes = matches!(op, Operation::Create | Operation::Update);
    let mut out = Vec::new();
    for f in fields {
        let v = match given.get(&f.name) {
            Some(v) => v.clone(),
            None => match &f.default {
                Some(d) => d.clone(),
                None if f.required && writes => {
                    return Err(format!("missing required parameter {:?} ({})", f.name, f.description));
                }
                None => continue,
            },
        };
        let v = coerce(f, v)?;
        out.push((f.name.clone(), v));
    }
    for (k, v) in &m.captures {
        out.retain(|(n, _)| n != k);
        out.push((k.clone(), v.clone()));
    }
    Ok(Params(out))
}

impl FieldKind {
    /// How the policy's parameter constraints read a value of this kind.
    pub fn value_kind(self) -> keybridge_policy::ValueKind {
        use keybridge_policy::ValueKind;
        match self {
            FieldKind::String => ValueKind::Text,
            FieldKind::Int => ValueKind::Int,
            FieldKind::Boolean => ValueKind::Bool,
            FieldKind::Duration => ValueKind::Duration,
            FieldKind::CommaList => ValueKind::List,
        }
    }
}

/// A value as the engine gets it: the canonical form the policy's
/// constraints were checked against.
fn coerce(f: &Field, v: String) -> Result<String, String> {
    let bad = |what: &str| format!("parameter {:?}: {what}", f.name);
    match f.kind {
        FieldKind::String | FieldKind::CommaList => Ok(v),
        kind => kind.value_kind().canonical(&v).ok_or_else(|| {
            bad(match kind {
                FieldKind::Int => "expected a whole number",
                FieldKind::Boolean => "expected true or false",
                _ => "expected seconds or a duration such as 90s, 15m, 1h30m",
            })
        }),
    }
}

/// Seconds, or a duration with units (s, m, h, d).
pub fn parse_duration(v: &str) -> Option<u64> {
    keybridge_policy::parse_duration(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, fields: Vec<Field>) -> PathInfo {
        PathInfo {
            pattern: p.into(),
            synopsis: String::new(),
            description: String::new(),
            operations: vec![Operation::Read],
            fields,
            existence_check: false,
        }
    }

    fn info(paths: Vec<PathInfo>) -> EngineInfo {
        EngineInfo {
            name: "t".into(),
            version: "1".into(),
            description: String::new(),
            paths,
            config_keys: vec![],
            rotates: false,
        }
    }

    #[test]
    fn patterns_prefer_literal_segments() {
        let i = info(vec![path("roles/{name}", vec![]), path("roles/default", vec![]), path("files/{rest*}", vec![])]);
        let m = match_path(&i, "roles/default").unwrap();
        assert_eq!(m.info.pattern, "roles/default");
        let m = match_path(&i, "roles/ci").unwrap();
        assert_eq!(m.captures, vec![("name".to_string(), "ci".to_string())]);
        let m = match_path(&i, "files/a/b/c").unwrap();
        assert_eq!(m.captures, vec![("rest".to_string(), "a/b/c".to_string())]);
        assert!(match_path(&i, "roles").is_none());
        assert!(match_path(&i, "roles/a/b").is_none());
        assert!(match_path(&i, "files").is_none());
    }

    #[test]
    fn parameters_are_checked_and_coerced() {
        let f = |name: &str, kind, required, default: Option<&str>| Field {
            name: name.into(),
            kind,
            description: format!("the {name}"),
            required,
            default: default.map(String::from),
        };
        let i = info(vec![path(
            "creds/{role}",
            vec![
                f("ttl", FieldKind::Duration, false, Some("1h")),
                f("count", FieldKind::Int, true, None),
                f("admin", FieldKind::Boolean, false, None),
            ],
        )]);
        let m = match_path(&i, "creds/ci").unwrap();
        let given = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let p = check_params(&m, Operation::Update, &given(&[("count", "3"), ("admin", "1")])).unwrap();
        assert_eq!(p.get("ttl"), Some("3600"));
        assert_eq!(p.get("admin"), Some("true"));
        assert_eq!(p.get("role"), Some("ci"));
        let e = check_params(&m, Operation::Update, &given(&[])).unwrap_err();
        assert!(e.contains("missing required parameter \"count\""), "{e}");
        let e = check_params(&m, Operation::Update, &given(&[("count", "x")])).unwrap_err();
        assert!(e.contains("expected a whole number"), "{e}");
        let e = check_params(&m, Operation::Update, &given(&[("count", "1"), ("bogus", "1")])).unwrap_err();
        assert!(e.contains("unknown parameter \"bogus\"") && e.contains("ttl, count, admin"), "{e}");
        // Reads do not need required write parameters.
        assert!(check_params(&m, Operation::Read, &given(&[])).is_ok());
    }

    #[test]
    fn params_never_print_values() {
        let p = Params(vec![("password".into(), "hunter2".into())]);
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
