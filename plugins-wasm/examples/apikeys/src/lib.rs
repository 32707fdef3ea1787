//! Issues signed API tokens under leases.
//!
//! - `roles/{name}`: a role's scopes and TTLs (write, read, delete);
//!   `roles`: list them.
//! - `issue/{role}`: a new token (`kbt.<payload>.<signature>`, HMAC-SHA256
//!   with a key the engine creates in its storage), with a lease. Revoking
//!   the lease deletes the token's record; renewing it extends the record.
//! - `verify`: whether a token is genuine, unexpired and unrevoked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use keybridge_plugin_sdk::*;
use serde_json::{Value, json};
use sha2::Sha256;

struct ApiKeys;

fn bad(m: impl Into<String>) -> Error {
    Error::InvalidInput(m.into())
}

fn signing_key() -> Result<Vec<u8>, Error> {
    if let Some(k) = storage::get("key")? {
        return Ok(k);
    }
    let k = random_bytes(32);
    storage::put("key", &k)?;
    Ok(k)
}

fn sign(key: &[u8], payload: &str) -> Result<String, Error> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| Error::Internal(e.to_string()))?;
    mac.update(payload.as_bytes());
    Ok(B64.encode(mac.finalize().into_bytes()))
}

fn role(name: &str) -> Result<Value, Error> {
    storage::get_json(&format!("roles/{name}"))?.ok_or_else(|| Error::NotFound(format!("no role {name:?}")))
}

fn scopes_of(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

impl Engine for ApiKeys {
    fn describe() -> EngineInfo {
        let ttl = |d: &str| default(field("ttl", FieldKind::Duration, "how long a token is valid"), d);
        let mut roles = path(
            "roles/{name}",
            "A role: which scopes its tokens carry and how long they live",
            &[Operation::Read, Operation::Create, Operation::Update, Operation::Delete],
            vec![
                required(field("scopes", FieldKind::CommaList, "scopes tokens of this role carry")),
                ttl("1h"),
                default(field("max_ttl", FieldKind::Duration, "the longest renewals may extend a token"), "24h"),
            ],
        );
        roles.existence_check = true;
        let mut e = info(
            "apikeys",
            "0.1.0",
            "Issues signed API tokens under leases; revoking the lease revokes the token",
            vec![
                roles,
                path("roles", "Lists roles", &[Operation::List], vec![]),
                path(
                    "issue/{role}",
                    "Issues a token of the role",
                    &[Operation::Update],
                    vec![
                        field("ttl", FieldKind::Duration, "shorter than the role's ttl, if wanted"),
                        field("scopes", FieldKind::CommaList, "a subset of the role's scopes"),
                    ],
                ),
                path(
                    "verify",
                    "Checks a token: genuine, unexpired, not revoked",
                    &[Operation::Update],
                    vec![required(field("token", FieldKind::String, "the token to check"))],
                ),
            ],
        );
        e.config_keys = vec![default(field("issuer", FieldKind::String, "the iss claim of tokens"), "keybridge")];
        e
    }

    fn exists(_ctx: Context, req: Request) -> Result<bool, Error> {
        Ok(storage::get(&format!("roles/{}", param(&req, "name")?))?.is_some())
    }

    fn handle(ctx: Context, req: Request) -> Result<Response, Error> {
        match (req.pattern.as_str(), req.operation) {
            ("roles/{name}", Operation::Create | Operation::Update) => {
                let name = param(&req, "name")?;
                let ttl = int_param(&req, "ttl")?.unwrap_or(3600);
                let max_ttl = int_param(&req, "max_ttl")?.unwrap_or(86400);
                if ttl == 0 || ttl > max_ttl {
                    return Err(bad("ttl must be more than 0 and at most max_ttl"));
                }
                let scopes = scopes_of(param(&req, "scopes")?);
                if scopes.is_empty() {
                    return Err(bad("give at least one scope"));
                }
                storage::put_json(
                    &format!("roles/{name}"),
                    &json!({"scopes": scopes, "ttl": ttl, "max_ttl": max_ttl}),
                )?;
                Ok(respond::<&str, &str>([]))
            }
            ("roles/{name}", Operation::Read) => {
                let r = role(param(&req, "name")?)?;
                Ok(respond([
                    (
                        "scopes",
                        r["scopes"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                    ),
                    ("ttl", r["ttl"].to_string()),
                    ("max_ttl", r["max_ttl"].to_string()),
                ]))
            }
            ("roles/{name}", Operation::Delete) => {
                storage::delete(&format!("roles/{}", param(&req, "name")?))?;
                Ok(respond::<&str, &str>([]))
            }
            ("roles", Operation::List) => Ok(list_response(storage::list("roles/")?)),
            ("issue/{role}", _) => {
                let role_name = param(&req, "role")?;
                let r = role(role_name)?;
                let role_scopes: Vec<String> = r["scopes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let scopes = match opt_param(&req, "scopes") {
                    Some(s) => {
                        let asked = scopes_of(s);
                        if let Some(x) = asked.iter().find(|s| !role_scopes.contains(s)) {
                            return Err(Error::Denied(format!("scope {x:?} is not granted by role {role_name}")));
                        }
                        asked
                    }
                    None => role_scopes,
                };
                let role_ttl = r["ttl"].as_u64().unwrap_or(3600);
                let max_ttl = r["max_ttl"].as_u64().unwrap_or(86400);
                let ttl = int_param(&req, "ttl")?.unwrap_or(role_ttl).min(role_ttl);
                let now = now_secs();
                let jti: String = random_bytes(16).iter().map(|b| format!("{b:02x}")).collect();
                let issuer = lookup(&ctx.config, "issuer").unwrap_or("keybridge");
                let payload = B64.encode(
                    json!({"iss": issuer, "jti": jti, "role": role_name, "scopes": scopes, "iat": now, "exp": now + ttl})
                        .to_string(),
                );
                let token = format!("kbt.{payload}.{}", sign(&signing_key()?, &payload)?);
                storage::put_json(
                    &format!("tokens/{jti}"),
                    &json!({"role": role_name, "scopes": scopes, "exp": now + ttl, "max_exp": now + max_ttl}),
                )?;
                let resp = respond([("token", token), ("token_id", jti.clone()), ("scopes", scopes.join(","))]);
                Ok(with_lease(resp, ttl, max_ttl, true, [("jti", jti)]))
            }
            ("verify", _) => {
                let token = param(&req, "token")?;
                let verdict =
                    |valid: bool, why: &str| respond([("valid", valid.to_string()), ("reason", why.to_string())]);
                let mut parts = token.split('.');
                let (Some("kbt"), Some(payload), Some(sig), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Ok(verdict(false, "malformed"));
                };
                let expected = sign(&signing_key()?, payload)?;
                if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), sig.as_bytes())) {
                    return Ok(verdict(false, "bad signature"));
                }
                let claims: Value = B64
                    .decode(payload)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| bad("the token's payload is not JSON"))?;
                let jti = claims["jti"].as_str().unwrap_or_default();
                let Some(rec) = storage::get_json(&format!("tokens/{jti}"))? else {
                    return Ok(verdict(false, "revoked"));
                };
                if rec["exp"].as_u64().unwrap_or(0) < now_secs() {
                    return Ok(verdict(false, "expired"));
                }
                let mut r = verdict(true, "ok");
                r.data.push(("role".into(), claims["role"].as_str().unwrap_or_default().into()));
                Ok(r)
            }
            (p, op) => Err(Error::Unsupported(format!("{p} does not support {op:?}"))),
        }
    }

    fn renew(_ctx: Context, lease: LeaseInfo) -> Result<LeaseTerms, Error> {
        let jti = lookup(&lease.internal, "jti").ok_or_else(|| Error::Internal("the lease names no token".into()))?;
        let key = format!("tokens/{jti}");
        let mut rec = storage::get_json(&key)?.ok_or_else(|| Error::NotFound("the token was revoked".into()))?;
        let role_ttl = storage::get_json(&format!("roles/{}", rec["role"].as_str().unwrap_or_default()))?
            .and_then(|r| r["ttl"].as_u64())
            .unwrap_or(3600);
        let inc = if lease.increment == 0 { role_ttl } else { lease.increment };
        let now = now_secs();
        let max = rec["max_exp"].as_u64().unwrap_or(now);
        let exp = (now + inc).min(max);
        rec["exp"] = json!(exp);
        storage::put_json(&key, &rec)?;
        Ok(LeaseTerms { ttl: exp.saturating_sub(now), max_ttl: 0, renewable: exp < max })
    }

    fn revoke(_ctx: Context, lease: LeaseInfo) -> Result<(), Error> {
        if let Some(jti) = lookup(&lease.internal, "jti") {
            storage::delete(&format!("tokens/{jti}"))?;
            log(Level::Info, &format!("revoked token {jti}"));
        }
        Ok(())
    }
}

export_engine!(ApiKeys);
