//! Creates API keys at a third-party service (the "SaaS") and revokes them,
//! over HTTP to a host on the mount's `allowed_hosts`.
//!
//! - `config`: the service's URL and admin token (write; read shows the URL
//!   only). Kept in the engine's storage, not the mount config, because the
//!   token is a secret.
//! - `creds/{name}`: a new key named after the caller's request, under a
//!   renewable lease; renewing looks the key up at the service, revoking
//!   the lease deletes it there.
//!
//! The service's API: `POST /v1/keys {"name"}` → `{"id","secret"}`,
//! `GET /v1/keys/{id}`, `DELETE /v1/keys/{id}` (404: already gone),
//! bearer-token auth.
//!
//! As a rotating engine, `rotate("creds/{name}")` creates the new key while
//! the old one keeps working; the reconciler revokes the old one's lease
//! after the grace period.

use keybridge_plugin_sdk::*;
use serde_json::json;

struct Saas;

struct Conf {
    url: String,
    token: String,
    ttl: u64,
}

fn conf() -> Result<Conf, Error> {
    let v = storage::get_json("config")?
        .ok_or_else(|| Error::Unavailable("not configured: write SAAS_MOUNT/config url=... admin_token=...".into()))?;
    Ok(Conf {
        url: v["url"].as_str().unwrap_or_default().trim_end_matches('/').to_string(),
        token: v["admin_token"].as_str().unwrap_or_default().to_string(),
        ttl: v["ttl"].as_u64().unwrap_or(3600),
    })
}

fn create_key(name: &str) -> Result<Response, Error> {
    let c = conf()?;
    let auth = format!("Bearer {}", c.token);
    let body = json!({ "name": name }).to_string();
    let r = http::send(
        "POST",
        &format!("{}/v1/keys", c.url),
        &[("authorization", &auth), ("content-type", "application/json")],
        body.as_bytes(),
    )
    .map_err(|e| Error::Unavailable(format!("the service could not be reached: {e}")))?;
    if r.status != 201 && r.status != 200 {
        return Err(Error::Unavailable(format!("the service answered {} to creating a key", r.status)));
    }
    let v = r.json().map_err(Error::Internal)?;
    let (id, secret) = (v["id"].as_str().unwrap_or_default(), v["secret"].as_str().unwrap_or_default());
    if id.is_empty() || secret.is_empty() {
        return Err(Error::Internal("the service's answer has no id or secret".into()));
    }
    let resp = respond([("key_id", id), ("api_key", secret)]);
    Ok(with_lease(resp, c.ttl, 0, true, [("key_id", id)]))
}

impl Engine for Saas {
    fn describe() -> EngineInfo {
        info(
            "saas",
            "0.1.0",
            "API keys at a third-party service, created on read and deleted when their lease ends",
            vec![
                path(
                    "config",
                    "Where the service is and how to authenticate to it",
                    &[Operation::Read, Operation::Update],
                    vec![
                        required(field(
                            "url",
                            FieldKind::String,
                            "the service's base URL, e.g. https://api.example.com",
                        )),
                        required(field("admin_token", FieldKind::String, "a token allowed to create and delete keys")),
                        default(field("ttl", FieldKind::Duration, "the lease of each key"), "1h"),
                    ],
                ),
                path("creds/{name}", "A new API key at the service", &[Operation::Read], vec![]),
            ],
        )
    }

    fn handle(_ctx: Context, req: Request) -> Result<Response, Error> {
        match (req.pattern.as_str(), req.operation) {
            ("config", Operation::Update | Operation::Create) => {
                let url = param(&req, "url")?;
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(Error::InvalidInput("url must start with http:// or https://".into()));
                }
                let ttl = int_param(&req, "ttl")?.unwrap_or(3600);
                storage::put_json(
                    "config",
                    &json!({"url": url, "admin_token": param(&req, "admin_token")?, "ttl": ttl}),
                )?;
                Ok(respond::<&str, &str>([]))
            }
            ("config", Operation::Read) => {
                let c = conf()?;
                Ok(respond([("url", c.url), ("ttl", c.ttl.to_string())]))
            }
            ("creds/{name}", _) => create_key(param(&req, "name")?),
            (p, op) => Err(Error::Unsupported(format!("{p} does not support {op:?}"))),
        }
    }

    /// Extends a key's lease by the increment asked for (the configured
    /// `ttl` when none), if the key still exists at the service.
    fn renew(_ctx: Context, lease: LeaseInfo) -> Result<LeaseTerms, Error> {
        let (id, status, ttl) = key_call("GET", &lease)?;
        match status {
            200 => Ok(LeaseTerms {
                ttl: if lease.increment == 0 { ttl } else { lease.increment },
                max_ttl: 0,
                renewable: true,
            }),
            404 => Err(Error::NotFound(format!("key {id} no longer exists at the service"))),
            s => Err(Error::Unavailable(format!("the service answered {s} to looking up key {id}"))),
        }
    }

    fn revoke(_ctx: Context, lease: LeaseInfo) -> Result<(), Error> {
        match key_call("DELETE", &lease)? {
            (_, 200 | 204 | 404, _) => Ok(()),
            (id, s, _) => Err(Error::Unavailable(format!("the service answered {s} to deleting key {id}"))),
        }
    }
}

/// `method` on the lease's key at the service: the key's id, the status,
/// and the configured ttl.
fn key_call(method: &str, lease: &LeaseInfo) -> Result<(String, u16, u64), Error> {
    let id = lookup(&lease.internal, "key_id").ok_or_else(|| Error::Internal("the lease names no key".into()))?;
    let c = conf()?;
    let auth = format!("Bearer {}", c.token);
    let r = http::send(method, &format!("{}/v1/keys/{id}", c.url), &[("authorization", &auth)], b"")
        .map_err(|e| Error::Unavailable(format!("the service could not be reached: {e}")))?;
    Ok((id.to_string(), r.status, c.ttl))
}

impl Rotate for Saas {
    fn rotate(_ctx: Context, path: String, _params: Params) -> Result<Response, Error> {
        let name = path
            .strip_prefix("creds/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| Error::InvalidInput(format!("rotate takes creds/NAME, not {path:?}")))?;
        create_key(name)
    }
}

export_rotating_engine!(Saas);
