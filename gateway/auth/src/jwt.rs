//! The `jwt` method: CI systems (GitHub Actions, GitLab) log in with the
//! OIDC token their job is given. A role binds audiences, the subject and
//! any claims; `user_claim` names the identity.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::keys::{self, Claims, Keys};
use crate::settings::{self, Settings};
use crate::{Error, Grant, Result};

pub struct Config {
    keys: Keys,
    issuer: Option<String>,
}

impl Config {
    pub fn parse(s: &Settings) -> Result<Config> {
        settings::only(s, "jwt config", &["pem_keys", "jwks", "bound_issuer", "jwt_validation_pubkeys"])?;
        let pem = s.get("pem_keys").or_else(|| s.get("jwt_validation_pubkeys")).map(String::as_str);
        let keys = Keys::parse(pem, s.get("jwks").map(String::as_str))?;
        if keys.is_empty() {
            return Err(Error::Invalid(
                "give the issuer's signing keys: pem_keys (PEM public keys) or jwks (a JWK set)".into(),
            ));
        }
        Ok(Config { keys, issuer: s.get("bound_issuer").filter(|i| !i.is_empty()).cloned() })
    }

    pub fn login(&self, role_name: &str, role: &Role, token: &str) -> Result<Grant> {
        let claims = self.keys.verify(token, self.issuer.as_deref())?;
        let aud = keys::audiences(&claims);
        if role.bound_audiences.is_empty() {
            if !aud.is_empty() {
                return Err(Error::Refused(format!(
                    "the token has an audience {aud:?} but role {role_name:?} binds none (set bound_audiences)"
                )));
            }
        } else if !role.bound_audiences.iter().any(|a| aud.contains(a)) {
            return Err(Error::Refused(format!(
                "the token's audience {aud:?} is not one of the role's bound_audiences {:?}",
                role.bound_audiences
            )));
        }
        if let Some(sub) = &role.bound_subject {
            let got = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
            if got != sub {
                return Err(Error::Refused(format!("the token's subject {got:?} is not the role's bound_subject")));
            }
        }
        for (claim, allowed) in &role.bound_claims {
            let values = claim_values(&claims, claim);
            let ok = values
                .iter()
                .any(|v| allowed.iter().any(|a| if role.glob { settings::glob_match(a, v) } else { a == v }));
            if !ok {
                return Err(Error::Refused(format!(
                    "claim {claim:?} ({values:?}) does not match the role's bound_claims {allowed:?}"
                )));
            }
        }
        let user = match claim_values(&claims, &role.user_claim).as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Error::Refused(format!(
                    "the token has no single string claim {:?} (the role's user_claim)",
                    role.user_claim
                )));
            }
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("role".into(), role_name.to_string());
        metadata.insert(role.user_claim.clone(), user.clone());
        Ok(Grant {
            display_name: format!("jwt-{user}"),
            policies: role.policies.clone(),
            ttl_secs: role.ttl_secs,
            max_ttl_secs: role.max_ttl_secs,
            metadata,
        })
    }
}

/// A claim's string values, by name or by JSON pointer (`/a/b`, as Vault).
fn claim_values(claims: &Claims, name: &str) -> Vec<String> {
    let v = if name.starts_with('/') {
        Value::Object(claims.clone()).pointer(name).cloned()
    } else {
        claims.get(name).cloned()
    };
    match v {
        Some(Value::String(s)) => vec![s],
        Some(Value::Bool(b)) => vec![b.to_string()],
        Some(Value::Number(n)) => vec![n.to_string()],
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

pub struct Role {
    bound_audiences: Vec<String>,
    bound_subject: Option<String>,
    bound_claims: BTreeMap<String, Vec<String>>,
    glob: bool,
    user_claim: String,
    policies: Vec<String>,
    ttl_secs: u64,
    max_ttl_secs: u64,
}

const ROLE_KEYS: &[&str] = &[
    "role_type",
    "bound_audiences",
    "bound_subject",
    "bound_claims",
    "bound_claims_type",
    "user_claim",
    "policies",
    "token_policies",
    "ttl",
    "token_ttl",
    "max_ttl",
    "token_max_ttl",
];

impl Role {
    pub fn parse(s: &Settings) -> Result<Role> {
        settings::only(s, "jwt role", ROLE_KEYS)?;
        if let Some(t) = s.get("role_type")
            && t != "jwt"
        {
            return Err(Error::Invalid(format!(
                "role_type must be jwt, not {t:?} (OIDC browser logins are not supported)"
            )));
        }
        let mut bound_claims = BTreeMap::new();
        if let Some(text) = s.get("bound_claims").filter(|t| !t.trim().is_empty()) {
            let v: Value = serde_json::from_str(text).map_err(|e| {
                Error::Invalid(format!(
                    "bound_claims must be a JSON object such as {{\"repository\": \"org/repo\"}}: {e}"
                ))
            })?;
            let obj = v.as_object().ok_or_else(|| Error::Invalid("bound_claims must be a JSON object".into()))?;
            for (k, v) in obj {
                let allowed: Vec<String> = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) if a.iter().all(Value::is_string) => {
                        a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()
                    }
                    _ => return Err(Error::Invalid(format!("bound_claims.{k} must be a string or a list of strings"))),
                };
                bound_claims.insert(k.clone(), allowed);
            }
        }
        let glob = match s.get("bound_claims_type").map(String::as_str) {
            None | Some("") | Some("string") => false,
            Some("glob") => true,
            Some(o) => return Err(Error::Invalid(format!("bound_claims_type must be string or glob, not {o:?}"))),
        };
        let bound_audiences = settings::list(s, "bound_audiences");
        let bound_subject = s.get("bound_subject").filter(|x| !x.is_empty()).cloned();
        if bound_audiences.is_empty() && bound_subject.is_none() && bound_claims.is_empty() {
            return Err(Error::Invalid(
                "a jwt role must bind something: bound_audiences, bound_subject or bound_claims".into(),
            ));
        }
        let (ttl_secs, max_ttl_secs) = crate::kubernetes::ttls(s)?;
        Ok(Role {
            bound_audiences,
            bound_subject,
            bound_claims,
            glob,
            user_claim: s.get("user_claim").filter(|c| !c.is_empty()).cloned().unwrap_or_else(|| "sub".into()),
            policies: settings::policies(s)?,
            ttl_secs,
            max_ttl_secs,
        })
    }
}
