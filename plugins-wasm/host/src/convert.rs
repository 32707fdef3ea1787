//! Between the generated WIT types and the core's engine vocabulary.

use keybridge_core::plugins::{
    CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, Field, FieldKind, LeaseInfo, LeaseRequest,
    LeaseTerms, Operation, Params, PathInfo,
};

use crate::wit;

const MAX_PATHS: usize = 256;
const MAX_TEXT: usize = 16 << 10;

fn op(o: wit::Operation) -> Operation {
    match o {
        wit::Operation::Read => Operation::Read,
        wit::Operation::Create => Operation::Create,
        wit::Operation::Update => Operation::Update,
        wit::Operation::Delete => Operation::Delete,
        wit::Operation::List => Operation::List,
    }
}

fn wit_op(o: Operation) -> wit::Operation {
    match o {
        Operation::Read => wit::Operation::Read,
        Operation::Create => wit::Operation::Create,
        Operation::Update => wit::Operation::Update,
        Operation::Delete => wit::Operation::Delete,
        Operation::List => wit::Operation::List,
    }
}

fn field(f: wit::Field) -> Field {
    Field {
        name: f.name,
        kind: match f.kind {
            wit::FieldKind::String => FieldKind::String,
            wit::FieldKind::Int => FieldKind::Int,
            wit::FieldKind::Boolean => FieldKind::Boolean,
            wit::FieldKind::Duration => FieldKind::Duration,
            wit::FieldKind::CommaList => FieldKind::CommaList,
        },
        description: f.description,
        required: f.required,
        default: f.default_value,
    }
}

/// The engine's `describe`, checked: the core relies on patterns being
/// well-formed and field names unique.
pub fn info(i: wit::EngineInfo, rotates: bool) -> Result<EngineInfo, EngineError> {
    let bad = |m: String| EngineError::BadComponent(format!("the engine's describe is not valid: {m}"));
    if i.name.is_empty() || i.name.len() > 64 {
        return Err(bad("the name must be 1 to 64 characters".into()));
    }
    if i.paths.is_empty() || i.paths.len() > MAX_PATHS {
        return Err(bad(format!("it must serve 1 to {MAX_PATHS} paths")));
    }
    let mut paths = Vec::new();
    for p in i.paths {
        let pat = p.pattern.trim_matches('/').to_string();
        let segs: Vec<&str> = pat.split('/').collect();
        for (n, s) in segs.iter().enumerate() {
            let ok = match s.strip_prefix('{') {
                Some(rest) => {
                    let name = rest.strip_suffix("*}").filter(|_| n + 1 == segs.len()).or(rest.strip_suffix('}'));
                    name.is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                }
                None => !s.is_empty() && !s.contains(['{', '}', '*']),
            };
            if !ok && !pat.is_empty() {
                return Err(bad(format!("path pattern {:?} has a bad segment {s:?}", p.pattern)));
            }
        }
        if p.operations.is_empty() {
            return Err(bad(format!("path {pat:?} lists no operations")));
        }
        let fields: Vec<Field> = p.fields.into_iter().map(field).collect();
        for (n, f) in fields.iter().enumerate() {
            if f.name.is_empty() || fields[..n].iter().any(|g| g.name == f.name) {
                return Err(bad(format!("path {pat:?} has an empty or repeated field name {:?}", f.name)));
            }
        }
        paths.push(PathInfo {
            pattern: pat,
            synopsis: clip(p.synopsis),
            description: clip(p.description),
            operations: p.operations.into_iter().map(op).collect(),
            fields,
            existence_check: p.existence_check,
        });
    }
    Ok(EngineInfo {
        name: i.name,
        version: clip(i.version),
        description: clip(i.description),
        paths,
        config_keys: i.config_keys.into_iter().map(field).collect(),
        rotates,
    })
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub fn context(c: &CallContext) -> wit::Context {
    wit::Context {
        mount_path: c.mount_path.clone(),
        config: c.config.clone(),
        request_id: c.request_id.clone(),
        caller: c.caller.clone(),
    }
}

pub fn request(r: &EngineRequest) -> wit::Request {
    wit::Request {
        operation: wit_op(r.operation),
        path: r.path.clone(),
        pattern: r.pattern.clone(),
        params: r.params.0.clone(),
    }
}

pub fn lease(l: &LeaseInfo) -> wit::LeaseInfo {
    wit::LeaseInfo {
        lease_id: l.lease_id.clone(),
        path: l.path.clone(),
        internal: l.internal.0.clone(),
        issue_time: l.issue_time,
        increment: l.increment,
    }
}

pub fn terms(t: wit::LeaseTerms) -> LeaseTerms {
    LeaseTerms { ttl_secs: t.ttl, max_ttl_secs: t.max_ttl, renewable: t.renewable }
}

pub fn response(r: wit::Response, max: usize) -> Result<EngineResponse, EngineError> {
    let data = Params(r.data);
    let internal = r.lease.as_ref().map_or(0, |l| l.internal.iter().map(|(k, v)| k.len() + v.len()).sum());
    let size = data.byte_len() + internal + r.warnings.iter().map(String::len).sum::<usize>();
    if size > max {
        return Err(EngineError::Exhausted(format!(
            "the plugin returned {size} bytes; the limit is {max} (mount setting `max_response_bytes`)"
        )));
    }
    Ok(EngineResponse {
        data,
        lease: r.lease.map(|l| LeaseRequest { terms: terms(l.terms), internal: Params(l.internal) }),
        warnings: r.warnings,
    })
}

/// The engine's own error; `denied` names an outbound request the
/// allow-list refused during the call, which is then the reason given.
pub fn error(e: wit::Error, denied: Option<String>) -> EngineError {
    if let Some(target) = denied {
        let said = match &e {
            wit::Error::InvalidInput(m)
            | wit::Error::NotFound(m)
            | wit::Error::Denied(m)
            | wit::Error::Unavailable(m)
            | wit::Error::Unsupported(m)
            | wit::Error::Internal(m) => m.clone(),
        };
        return EngineError::Denied(format!(
            "the plugin's outbound request to {target} was refused: that host is not in the mount's allowed_hosts (the plugin then said: {})",
            clip(said)
        ));
    }
    match e {
        wit::Error::InvalidInput(m) => EngineError::InvalidInput(clip(m)),
        wit::Error::NotFound(m) => EngineError::NotFound(clip(m)),
        wit::Error::Denied(m) => EngineError::Denied(clip(m)),
        wit::Error::Unavailable(m) => EngineError::Unavailable(clip(m)),
        wit::Error::Unsupported(m) => EngineError::Unsupported(clip(m)),
        wit::Error::Internal(m) => EngineError::Internal(clip(m)),
    }
}
