//! The `kubernetes` method: a pod logs in with its service-account token.
//!
//! The token is verified against the configured signing keys (the
//! cluster's service-account issuer keys, as PEM or JWKS), with expiry,
//! issuer and audience checks. With `token_review=true` the Kubernetes API
//! also reviews every token (TokenReview), so tokens of deleted service
//! accounts stop working; with review only and no keys, the names come
//! from the review's answer, never from the unverified token.

use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::keys::{self, Claims, Keys};
use crate::settings::{self, Settings};
use crate::{Error, Grant, Result};

pub struct Config {
    keys: Keys,
    issuer: Option<String>,
    audiences: Vec<String>,
    review: Option<Review>,
}

struct Review {
    host: String,
    reviewer_jwt: Option<Zeroizing<String>>,
    client: reqwest::Client,
}

const CONFIG_KEYS: &[&str] = &[
    "pem_keys",
    "jwks",
    "issuer",
    "audience",
    "disable_audience_check",
    "token_review",
    "kubernetes_host",
    "kubernetes_ca_cert",
    "token_reviewer_jwt",
];

impl Config {
    pub fn parse(s: &Settings) -> Result<Config> {
        settings::only(s, "kubernetes config", CONFIG_KEYS)?;
        let keys = Keys::parse(s.get("pem_keys").map(String::as_str), s.get("jwks").map(String::as_str))?;
        let review = if settings::boolean(s, "token_review")? {
            let host = s
                .get("kubernetes_host")
                .map(|h| h.trim().trim_end_matches('/').to_string())
                .filter(|h| h.starts_with("https://") || h.starts_with("http://"))
                .ok_or_else(|| Error::Invalid("token_review=true needs kubernetes_host=https://<api server>".into()))?;
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5)).use_rustls_tls();
            if let Some(ca) = s.get("kubernetes_ca_cert").filter(|c| !c.trim().is_empty()) {
                let cert = reqwest::Certificate::from_pem(ca.as_bytes())
                    .map_err(|e| Error::Invalid(format!("kubernetes_ca_cert is not a PEM certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            let client =
                builder.build().map_err(|e| Error::Invalid(format!("cannot set up the Kubernetes API client: {e}")))?;
            let reviewer_jwt = s.get("token_reviewer_jwt").filter(|t| !t.is_empty()).map(|t| Zeroizing::new(t.clone()));
            Some(Review { host, reviewer_jwt, client })
        } else {
            for k in ["kubernetes_host", "kubernetes_ca_cert", "token_reviewer_jwt"] {
                if s.contains_key(k) {
                    return Err(Error::Invalid(format!("{k} is only used with token_review=true")));
                }
            }
            None
        };
        if keys.is_empty() && review.is_none() {
            return Err(Error::Invalid(
                "give the signing keys (pem_keys or jwks), or token_review=true with kubernetes_host".into(),
            ));
        }
        // A token verified here must be meant for Keybridge: without an
        // audience, any token the cluster signs for anything would do. (A
        // TokenReview checks the API server's own audiences.)
        let audiences = settings::list(s, "audience");
        if !keys.is_empty() && audiences.is_empty() && !settings::boolean(s, "disable_audience_check")? {
            return Err(Error::Invalid(
                "audience is required: the audience your service-account tokens are issued for (a projected \
                 token's `audience`, e.g. keybridge), or disable_audience_check=true to accept any"
                    .into(),
            ));
        }
        Ok(Config { keys, issuer: s.get("issuer").filter(|i| !i.is_empty()).cloned(), audiences, review })
    }

    pub async fn login(&self, role_name: &str, role: &Role, token: &str) -> Result<Grant> {
        let account = if self.keys.is_empty() {
            // Review only: read the names to check the role's bounds; the
            // review below must confirm exactly these names.
            ServiceAccount::from_claims(&keys::unverified_claims(token)?)?
        } else {
            let claims = self.keys.verify(token, self.issuer.as_deref())?;
            let aud = keys::audiences(&claims);
            if !self.audiences.is_empty() && !self.audiences.iter().any(|a| aud.contains(a)) {
                return Err(Error::Refused(format!(
                    "the token's audience {aud:?} does not include one of {:?}",
                    self.audiences
                )));
            }
            if let Some(want) = &role.audience
                && !aud.contains(want)
            {
                return Err(Error::Refused(format!(
                    "the token's audience {aud:?} does not include the role's audience {want:?}"
                )));
            }
            ServiceAccount::from_claims(&claims)?
        };
        if !role.namespaces.iter().any(|p| settings::glob_match(p, &account.namespace)) {
            return Err(Error::Refused(format!(
                "service account namespace {:?} is not bound to role {role_name:?}",
                account.namespace
            )));
        }
        if !role.names.iter().any(|p| settings::glob_match(p, &account.name)) {
            return Err(Error::Refused(format!(
                "service account name {:?} is not bound to role {role_name:?}",
                account.name
            )));
        }
        let mut uid = account.uid.clone();
        if let Some(review) = &self.review {
            // The audiences the token is meant for: the role's, else the
            // config's; with none, the API server checks its own (a token
            // projected for another audience then fails its review).
            let audiences: Vec<&str> = match &role.audience {
                Some(a) => vec![a.as_str()],
                None => self.audiences.iter().map(String::as_str).collect(),
            };
            uid = review.review(token, &account, &audiences).await?;
        }
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("role".into(), role_name.to_string());
        metadata.insert("service_account_namespace".into(), account.namespace.clone());
        metadata.insert("service_account_name".into(), account.name.clone());
        if !uid.is_empty() {
            metadata.insert("service_account_uid".into(), uid);
        }
        Ok(Grant {
            display_name: format!("kubernetes-{}-{}", account.namespace, account.name),
            policies: role.policies.clone(),
            ttl_secs: role.ttl_secs,
            max_ttl_secs: role.max_ttl_secs,
            metadata,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceAccount {
    namespace: String,
    name: String,
    uid: String,
}

impl ServiceAccount {
    /// From a projected token (`kubernetes.io` claim) or a legacy secret
    /// token (`kubernetes.io/serviceaccount/...` claims).
    fn from_claims(c: &Claims) -> Result<ServiceAccount> {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let (namespace, name, uid) = match c.get("kubernetes.io") {
            Some(k) => (
                s(k.get("namespace")),
                s(k.get("serviceaccount").and_then(|a| a.get("name"))),
                s(k.get("serviceaccount").and_then(|a| a.get("uid"))),
            ),
            None => (
                s(c.get("kubernetes.io/serviceaccount/namespace")),
                s(c.get("kubernetes.io/serviceaccount/service-account.name")),
                s(c.get("kubernetes.io/serviceaccount/service-account.uid")),
            ),
        };
        if namespace.is_empty() || name.is_empty() {
            return Err(Error::Refused("the token is not a Kubernetes service-account token".into()));
        }
        Ok(ServiceAccount { namespace, name, uid })
    }
}

impl Review {
    /// Asks the API server (POST /apis/authentication.k8s.io/v1/tokenreviews)
    /// whether `token` is valid now. Returns the account's uid.
    async fn review(&self, token: &str, account: &ServiceAccount, audiences: &[&str]) -> Result<String> {
        let mut spec = json!({ "token": token });
        if !audiences.is_empty() {
            spec["audiences"] = json!(audiences);
        }
        let body = json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec });
        // Without a reviewer token the pod's own token authorizes the
        // review, as Vault does (it needs the system:auth-delegator role).
        let bearer = self.reviewer_jwt.as_deref().map(String::as_str).unwrap_or(token);
        let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", self.host);
        let resp =
            self.client.post(&url).bearer_auth(bearer).json(&body).send().await.map_err(|e| {
                Error::Unavailable(format!("the Kubernetes API at {} cannot be reached: {e}", self.host))
            })?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        match status.as_u16() {
            200 | 201 => {}
            401 | 403 => {
                return Err(Error::Unavailable(format!(
                    "the Kubernetes API refused the TokenReview ({status}): check token_reviewer_jwt and its system:auth-delegator binding"
                )));
            }
            _ => {
                return Err(Error::Unavailable(format!(
                    "the Kubernetes API answered the TokenReview with {status}: {}",
                    answer.get("message").and_then(Value::as_str).unwrap_or("")
                )));
            }
        }
        let st = &answer["status"];
        if st["authenticated"].as_bool() != Some(true) {
            return Err(Error::Refused(format!(
                "the Kubernetes TokenReview did not authenticate the token: {}",
                st["error"].as_str().unwrap_or("no reason given")
            )));
        }
        let username = st["user"]["username"].as_str().unwrap_or_default();
        let expected = format!("system:serviceaccount:{}:{}", account.namespace, account.name);
        if username != expected {
            return Err(Error::Refused(format!(
                "the TokenReview authenticated {username:?}, not the token's service account {expected:?}"
            )));
        }
        let uid = st["user"]["uid"].as_str().unwrap_or_default().to_string();
        if !account.uid.is_empty() && !uid.is_empty() && uid != account.uid {
            return Err(Error::Refused("the service account was recreated: its uid changed".into()));
        }
        Ok(uid)
    }
}

pub struct Role {
    names: Vec<String>,
    namespaces: Vec<String>,
    audience: Option<String>,
    policies: Vec<String>,
    ttl_secs: u64,
    max_ttl_secs: u64,
}

const ROLE_KEYS: &[&str] = &[
    "bound_service_account_names",
    "bound_service_account_namespaces",
    "audience",
    "policies",
    "token_policies",
    "ttl",
    "token_ttl",
    "max_ttl",
    "token_max_ttl",
];

/// TTL settings shared by both methods: `ttl`/`token_ttl`, `max_ttl`/`token_max_ttl`.
pub(crate) fn ttls(s: &Settings) -> Result<(u64, u64)> {
    let ttl = settings::duration_secs(s, "ttl")?.max(settings::duration_secs(s, "token_ttl")?);
    let max = settings::duration_secs(s, "max_ttl")?.max(settings::duration_secs(s, "token_max_ttl")?);
    if max > 0 && ttl > max {
        return Err(Error::Invalid(format!("ttl ({ttl}s) must not exceed max_ttl ({max}s)")));
    }
    Ok((ttl, max))
}

impl Role {
    pub fn parse(s: &Settings) -> Result<Role> {
        settings::only(s, "kubernetes role", ROLE_KEYS)?;
        let names = settings::list(s, "bound_service_account_names");
        let namespaces = settings::list(s, "bound_service_account_namespaces");
        if names.is_empty() || namespaces.is_empty() {
            return Err(Error::Invalid(
                "a kubernetes role needs bound_service_account_names and bound_service_account_namespaces (\"*\" allows any)"
                    .into(),
            ));
        }
        let (ttl_secs, max_ttl_secs) = ttls(s)?;
        Ok(Role {
            names,
            namespaces,
            audience: s.get("audience").filter(|a| !a.is_empty()).cloned(),
            policies: settings::policies(s)?,
            ttl_secs,
            max_ttl_secs,
        })
    }
}
