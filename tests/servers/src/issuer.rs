//! A JWT issuer with its own ES256 key pair.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub struct Issuer {
    key: rcgen::KeyPair,
    pub kid: String,
    pub iss: String,
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

impl Issuer {
    pub fn new(iss: &str, kid: &str) -> Issuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a P-256 key");
        Issuer { key, kid: kid.to_string(), iss: iss.to_string() }
    }

    /// The public key, `-----BEGIN PUBLIC KEY-----`.
    pub fn public_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// The public key as a JWK set (`{"keys": [...]}`), with `kid`.
    pub fn jwks(&self) -> String {
        let raw = self.key.public_key_raw();
        let (x, y) = (&raw[1..33], &raw[33..65]);
        json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    }

    /// Signs `claims` (ES256, with this issuer's `kid`).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).expect("PKCS#8 EC key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// A projected service-account token, as the kubelet mounts it.
    pub fn service_account_token(&self, namespace: &str, name: &str, uid: &str, aud: &str, ttl_secs: i64) -> String {
        let now = now();
        self.sign(&json!({
            "iss": self.iss,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": [aud],
            "iat": now, "nbf": now, "exp": now + ttl_secs,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": { "name": format!("{name}-pod"), "uid": "pod-uid-1" },
                "serviceaccount": { "name": name, "uid": uid },
            },
        }))
    }
}
