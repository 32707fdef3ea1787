//! A GCP service account with its own RSA key, and the ways Google lets it
//! authenticate, for the Secret Manager test server
//! ([`crate::secretmanager`]): only credentials derived from this key are
//! accepted.
//!
//! - [`ServiceAccount::generate`] makes a 2048-bit RSA key pair;
//!   [`ServiceAccount::key_json`] is the JSON key file as IAM hands it out
//!   (`type`, `project_id`, `private_key_id`, `private_key` as PKCS#8 PEM,
//!   `client_email`, `client_id`, `auth_uri`, `token_uri`, the certificate
//!   URLs, `universe_domain`).
//! - Google's OAuth 2.0 token endpoint for service accounts (the JWT-bearer
//!   grant of "Using OAuth 2.0 for Server to Server Applications"):
//!   `POST {token_uri}` with the form
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`
//!   answers `{"access_token", "expires_in", "token_type": "Bearer"}`. The
//!   assertion must be RS256 and verify with the account's public key (a
//!   `kid`, if given, must be the key's id), `iss` the account's email,
//!   `sub` absent or the same email (no domain-wide delegation), `aud` the
//!   token URI, `iat` and `exp` present, `exp` in the future, `iat` at most
//!   [`SKEW_SECS`] ahead, `exp - iat` at most an hour (plus the skew), and a
//!   `scope` of Google OAuth scopes. Refusals are 400
//!   `{"error", "error_description"}`: `unsupported_grant_type`,
//!   `invalid_request` (no assertion), `invalid_grant` (signature, account,
//!   audience, times), `unauthorized_client` (another `sub`),
//!   `invalid_scope`.
//! - Bearer tokens on API calls ([`Auth::authenticate`]): an access token
//!   the endpoint minted (until it expires), or a self-signed JWT (AIP-4111:
//!   what `google-cloud-auth` 1.x sends for a service-account key, never
//!   calling the token endpoint) with the same signature, `iss`/`sub` and
//!   time checks and exactly one of `aud` (the service's `https://` name or
//!   the test server's own URL, with the trailing `/`) and `scope`. A token
//!   whose scopes lack `cloud-platform` is 403 `PERMISSION_DENIED`
//!   (insufficient scopes), as Secret Manager answers; any other refusal is
//!   401 `UNAUTHENTICATED`.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng as _;
use serde_json::{Map, Value, json};

/// The one OAuth scope Secret Manager takes.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The JWT-bearer grant type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Secret Manager's audience for self-signed JWTs (AIP-4111).
pub const SERVICE_AUDIENCE: &str = "https://secretmanager.googleapis.com/";
/// The longest lifetime of an assertion or self-signed JWT (`exp - iat`).
pub const MAX_LIFETIME_SECS: i64 = 3600;
/// The clock skew allowed on `iat` and on the lifetime.
pub const SKEW_SECS: i64 = 60;
/// The lifetime of a minted access token.
pub const ACCESS_TOKEN_SECS: i64 = 3599;

pub fn now() -> i64 {
    crate::issuer::now()
}

/// A service account and its one key.
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub client_id: String,
    pub private_key_id: String,
    private_key_pem: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// JWTs whose signature already checked out, with their claims: a
    /// client sends the same self-signed JWT for up to an hour, and RSA
    /// verification in pure Rust would otherwise bound the tests' and
    /// benchmarks' request rate. Times are still checked on every use.
    verified: Mutex<HashMap<String, Map<String, Value>>>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServiceAccount {
    /// A new account `name@project.iam.gserviceaccount.com` with a fresh
    /// 2048-bit RSA key.
    pub fn generate(project: &str, name: &str) -> ServiceAccount {
        use rsa::pkcs8::EncodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let mut rng = rand::thread_rng();
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generate an RSA key");
        let private_key_pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).expect("PKCS#8 PEM").to_string();
        let decoding = DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
        let encoding = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).expect("RSA PEM");
        ServiceAccount {
            project_id: project.to_string(),
            client_email: format!("{name}@{project}.iam.gserviceaccount.com"),
            client_id: format!("1{:020}", rng.gen_range(0..10u128.pow(20))),
            private_key_id: hex(&rng.r#gen::<[u8; 20]>()),
            private_key_pem,
            encoding,
            decoding,
            verified: Mutex::default(),
        }
    }

    /// The JSON key file, with `token_uri`.
    pub fn key_json(&self, token_uri: &str) -> Value {
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!(
                "https://www.googleapis.com/robot/v1/metadata/x509/{}",
                self.client_email.replace('@', "%40")
            ),
            "universe_domain": "googleapis.com",
        })
    }

    /// Signs `claims` with this key (RS256, `kid` the key's id), as a client
    /// holding the key file would.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(Some(&self.private_key_id), claims)
    }

    /// Signs `claims` with this key, naming `kid` (any key's id: a forger
    /// can copy it from a token it saw) or none, as Google's documented
    /// assertion header has none.
    pub fn sign_with_kid(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// Checks a JWT signed by this key: RS256, the key's `kid` if one is
    /// named, the signature, `iss` (and `sub` if given) the account's email,
    /// and the times. Returns the claims.
    fn verify(&self, jwt: &str, now: i64) -> Result<Map<String, Value>, Refusal> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| Refusal::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::Signature);
        }
        if header.kid.as_ref().is_some_and(|k| *k != self.private_key_id) {
            return Err(Refusal::Signature);
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let known = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(jwt).cloned();
        let c = match known {
            Some(c) => c,
            None => {
                let data = jsonwebtoken::decode::<Map<String, Value>>(jwt, &self.decoding, &v).map_err(|e| match e
                    .kind()
                {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => Refusal::Signature,
                    _ => Refusal::Malformed,
                })?;
                let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= 1024 {
                    cache.clear();
                }
                cache.insert(jwt.to_string(), data.claims.clone());
                data.claims
            }
        };
        if c.get("iss").and_then(Value::as_str) != Some(self.client_email.as_str()) {
            return Err(Refusal::Account);
        }
        if c.get("sub").is_some_and(|s| s.as_str() != Some(self.client_email.as_str())) {
            return Err(Refusal::Subject);
        }
        let (Some(iat), Some(exp)) = (c.get("iat").and_then(Value::as_i64), c.get("exp").and_then(Value::as_i64))
        else {
            return Err(Refusal::Times);
        };
        if exp <= now {
            return Err(Refusal::Expired);
        }
        if iat > now + SKEW_SECS || exp <= iat || exp - iat > MAX_LIFETIME_SECS + SKEW_SECS {
            return Err(Refusal::Times);
        }
        Ok(c)
    }
}

/// Why a credential was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a JWT, nor an access token this server minted.
    Unknown,
    /// Not a compact RS256 JWS with JSON claims.
    Malformed,
    /// Not signed by the account's key (or another algorithm or `kid`).
    Signature,
    /// `iss` is not the account.
    Account,
    /// `sub` names someone other than the account.
    Subject,
    /// `aud` is not the token URI (assertions) or the service (bearer JWTs),
    /// or a bearer JWT has both or neither of `aud` and `scope`.
    Audience,
    /// `iat`/`exp` missing, `iat` in the future, or a lifetime over an hour.
    Times,
    /// Expired (`exp`, or a minted token's lifetime).
    Expired,
    /// The token's scopes do not include `cloud-platform` (403).
    Scope,
}

struct Minted {
    expires: i64,
    scopes: Vec<String>,
}

/// The token endpoint and the bearer checks of one server.
pub struct Auth {
    pub account: ServiceAccount,
    pub token_uri: String,
    /// The `aud` values a self-signed JWT may name.
    audiences: Vec<String>,
    state: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    minted: HashMap<String, Minted>,
    last_refusal: Option<Refusal>,
    last_jwt_claims: Option<Map<String, Value>>,
}

fn scopes(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_str).map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default()
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).and_then(|mut f| f.write_all(text.as_bytes())).expect("write the key file");
}

/// A new service account `keybridge-test@<project>.iam.gserviceaccount.com`
/// for a test server at `addr`, its checks, and its JSON key file (mode
/// 0600) in the temporary directory, named after `file_prefix` and the port.
pub async fn service_account_for(
    project: &str,
    addr: std::net::SocketAddr,
    file_prefix: &str,
) -> (std::sync::Arc<Auth>, std::path::PathBuf) {
    let p = project.to_string();
    let account = tokio::task::spawn_blocking(move || ServiceAccount::generate(&p, "keybridge-test"))
        .await
        .expect("generate the service account");
    let auth = std::sync::Arc::new(Auth::new(account, &format!("http://{addr}")));
    let key_file = std::env::temp_dir().join(format!("{file_prefix}-{}-{}.json", std::process::id(), addr.port()));
    write_private(&key_file, &auth.account.key_json(&auth.token_uri).to_string());
    (auth, key_file)
}

impl Auth {
    /// `base_url` is the server's own URL (`http://127.0.0.1:port`).
    pub fn new(account: ServiceAccount, base_url: &str) -> Auth {
        Auth {
            account,
            token_uri: format!("{base_url}/token"),
            audiences: vec![SERVICE_AUDIENCE.to_string(), format!("{base_url}/")],
            state: Mutex::new(AuthState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reason the last refused credential was refused.
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.state().last_refusal
    }

    /// Ages every minted access token past its expiry, as an hour passing
    /// would.
    pub fn expire_access_tokens(&self) {
        for m in self.state().minted.values_mut() {
            m.expires = now() - 1;
        }
    }

    /// The claims of the last self-signed JWT accepted on an API call.
    pub fn last_jwt_claims(&self) -> Option<Map<String, Value>> {
        self.state().last_jwt_claims.clone()
    }

    /// Answers a token request (its form fields): the HTTP status and body.
    pub fn grant(&self, form: &HashMap<String, String>) -> (u16, Value) {
        let refuse = |r: Refusal, error: &str, description: &str| {
            self.state().last_refusal = Some(r);
            (400, json!({ "error": error, "error_description": description }))
        };
        let grant_type = form.get("grant_type").map(String::as_str).unwrap_or_default();
        if grant_type != JWT_BEARER {
            return refuse(Refusal::Malformed, "unsupported_grant_type", &format!("Invalid grant_type: {grant_type}"));
        }
        let Some(assertion) = form.get("assertion").filter(|a| !a.is_empty()) else {
            return refuse(Refusal::Missing, "invalid_request", "Missing required parameter: assertion");
        };
        let claims = match self.account.verify(assertion, now()) {
            Ok(c) => c,
            Err(r) => {
                let (error, description) = match r {
                    Refusal::Signature => ("invalid_grant", "Invalid JWT Signature."),
                    Refusal::Account => ("invalid_grant", "Invalid grant: account not found"),
                    Refusal::Subject => (
                        "unauthorized_client",
                        "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
                    ),
                    Refusal::Expired | Refusal::Times => (
                        "invalid_grant",
                        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
                    ),
                    _ => ("invalid_grant", "Invalid JWT: the assertion is not a signed JWT."),
                };
                return refuse(r, error, description);
            }
        };
        if claims.get("aud").and_then(Value::as_str) != Some(self.token_uri.as_str()) {
            return refuse(
                Refusal::Audience,
                "invalid_grant",
                &format!("Invalid JWT: Failed audience check. The right audience is {}", self.token_uri),
            );
        }
        let scopes = scopes(claims.get("scope"));
        if scopes.is_empty() || scopes.iter().any(|s| !s.starts_with("https://www.googleapis.com/auth/")) {
            return refuse(Refusal::Scope, "invalid_scope", "Invalid OAuth scope or ID token audience provided.");
        }
        let token = format!(
            "ya29.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::thread_rng().r#gen::<[u8; 32]>())
        );
        self.state().minted.insert(token.clone(), Minted { expires: now() + ACCESS_TOKEN_SECS, scopes });
        (200, json!({ "access_token": token, "expires_in": ACCESS_TOKEN_SECS, "token_type": "Bearer" }))
    }

    /// Checks the `Authorization` header of an API call.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let r = self.authenticate_inner(authorization);
        if let Err(e) = r {
            self.state().last_refusal = Some(e);
        }
        r
    }

    fn authenticate_inner(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let now = now();
        if let Some(m) = self.state().minted.get(token) {
            if m.expires <= now {
                return Err(Refusal::Expired);
            }
            return if m.scopes.iter().any(|s| s == CLOUD_PLATFORM) { Ok(()) } else { Err(Refusal::Scope) };
        }
        if token.split('.').count() != 3 {
            return Err(Refusal::Unknown);
        }
        let claims = self.account.verify(token, now)?;
        let aud = claims.get("aud").filter(|a| !a.is_null());
        let scope = claims.get("scope").filter(|s| !s.is_null());
        match (aud, scope) {
            (Some(a), None) => {
                if !a.as_str().is_some_and(|a| self.audiences.iter().any(|x| x == a)) {
                    return Err(Refusal::Audience);
                }
            }
            (None, Some(s)) => {
                if !scopes(Some(s)).iter().any(|s| s == CLOUD_PLATFORM) {
                    return Err(Refusal::Scope);
                }
            }
            _ => return Err(Refusal::Audience),
        }
        self.state().last_jwt_claims = Some(claims);
        Ok(())
    }
}
