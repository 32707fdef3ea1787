//! The signing keys a login method trusts, and JWT verification with them.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    family: Family,
}

/// Public keys from PEM (`-----BEGIN PUBLIC KEY-----`, RSA, EC or Ed25519)
/// and from a JWK set. Symmetric keys and algorithms are never accepted.
pub struct Keys {
    keys: Vec<Key>,
}

pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Clock skew tolerated on `exp` and `nbf`, as Vault's JWT default.
pub const LEEWAY_SECS: u64 = 60;

fn pem_blocks(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let label_end =
            after[11..].find("-----").ok_or_else(|| Error::Invalid("pem_keys: a BEGIN line is not closed".into()))?;
        let label = &after[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = after
            .find(&end_marker)
            .ok_or_else(|| Error::Invalid(format!("pem_keys: no {end_marker} after BEGIN {label}")))?;
        if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
            return Err(Error::Invalid(format!(
                "pem_keys: a {label} block was given; give public keys (BEGIN PUBLIC KEY)"
            )));
        }
        out.push(after[..end + end_marker.len()].to_string());
        rest = &after[end + end_marker.len()..];
    }
    if out.is_empty() && !text.trim().is_empty() {
        return Err(Error::Invalid("pem_keys holds no PEM block (-----BEGIN PUBLIC KEY-----)".into()));
    }
    Ok(out)
}

impl Keys {
    pub fn parse(pem: Option<&str>, jwks: Option<&str>) -> Result<Keys> {
        let mut keys = Vec::new();
        for (i, block) in pem_blocks(pem.unwrap_or(""))?.iter().enumerate() {
            let b = block.as_bytes();
            let parsed = DecodingKey::from_rsa_pem(b)
                .map(|k| (k, Family::Rsa))
                .or_else(|_| DecodingKey::from_ec_pem(b).map(|k| (k, Family::Ec)))
                .or_else(|_| DecodingKey::from_ed_pem(b).map(|k| (k, Family::Ed)))
                .map_err(|e| {
                    Error::Invalid(format!("pem_keys: key {} is not an RSA, EC or Ed25519 public key: {e}", i + 1))
                })?;
            keys.push(Key { kid: None, key: parsed.0, family: parsed.1 });
        }
        if let Some(text) = jwks.filter(|t| !t.trim().is_empty()) {
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| Error::Invalid(format!("jwks is not a JWK set ({{\"keys\": [...]}}): {e}")))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                    AlgorithmParameters::OctetKey(_) => {
                        return Err(Error::Invalid(format!(
                            "jwks: key {} is symmetric; only public keys are accepted",
                            i + 1
                        )));
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| Error::Invalid(format!("jwks: key {} cannot be used: {e}", i + 1)))?;
                keys.push(Key { kid: jwk.common.key_id.clone(), key, family });
            }
        }
        Ok(Keys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The token's claims if one of the keys signed it, it has not expired
    /// (`exp` is required), it is not used before `nbf`, and its issuer is
    /// `issuer` when one is set. Errors say why, for the audit log.
    pub fn verify(&self, token: &str, issuer: Option<&str>) -> Result<Claims> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::Refused("the credential is not a signed JWT".into()))?;
        let family = match header.alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Family::Rsa,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
            Algorithm::EdDSA => Family::Ed,
            a => {
                return Err(Error::Refused(format!(
                    "the token is signed with {a:?}; symmetric algorithms are not accepted"
                )));
            }
        };
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.family == family)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(Error::Refused(format!(
                "no configured key can verify the token (algorithm {:?}, key id {:?})",
                header.alg, header.kid
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(iss) = issuer {
            // A bound issuer is checked on a token that names one, and a
            // token that names none is refused.
            validation.set_issuer(&[iss]);
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => {
                    let why = match e.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                        ErrorKind::InvalidIssuer => format!("the token's issuer is not {:?}", issuer.unwrap_or("")),
                        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                        other => format!("the token is invalid: {other:?}"),
                    };
                    return Err(Error::Refused(why));
                }
            }
        }
        Err(Error::Refused("the token's signature does not verify with any configured key".into()))
    }
}

/// The claims of a JWT without verifying it: only to read names that a
/// TokenReview then confirms.
pub fn unverified_claims(token: &str) -> Result<Claims> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or_else(|| Error::Refused("the credential is not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Error::Refused("the credential is not a JWT".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| Error::Refused("the credential is not a JWT".into()))
}

/// `aud` as a list (a string or an array of strings).
pub fn audiences(claims: &Claims) -> Vec<String> {
    match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}
