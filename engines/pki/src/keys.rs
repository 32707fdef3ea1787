//! Key types, key generation, and reading keys back (a CA's stored key, an
//! imported PEM bundle's key, a CSR's public key).
//!
//! EC (P-256, P-384) and Ed25519 keys come from ring through rcgen. ring
//! cannot generate RSA keys: those come from the `rsa` crate (generation
//! only, encoded to PKCS#8), on a blocking thread, at most
//! [`RSA_AT_ONCE`] at a time; every signature, RSA included, is ring's.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use keybridge_core::plugins::EngineError;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Key types, as Vault names them (`any`: a role's `sign` takes any
/// supported key; issuing needs a concrete type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Rsa,
    Ec,
    Ed25519,
    Any,
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "rsa",
            KeyType::Ec => "ec",
            KeyType::Ed25519 => "ed25519",
            KeyType::Any => "any",
        }
    }
}

/// Keybridge's default key type and size: EC P-256 (Vault's is RSA-2048).
/// A P-256 key is generated in well under a millisecond (an RSA-2048 one
/// takes up to seconds), its certificates and handshakes are smaller, and
/// every current TLS stack and browser takes it.
pub const DEFAULT_KEY_TYPE: KeyType = KeyType::Ec;

/// RSA keys generated at once on this node; more wait (up to
/// [`RSA_WAIT`]) rather than take every core.
pub const RSA_AT_ONCE: usize = 2;
const RSA_WAIT: Duration = Duration::from_secs(60);
/// The slots: a permit is moved into the blocking generation and released
/// when the generation ends, not when the request's future is dropped (a
/// client giving up would otherwise leave its generation running outside
/// the bound).
static RSA_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(RSA_AT_ONCE)));

/// Reads `key_type` and `key_bits` (0: the type's default) into a checked
/// pair: rsa 2048, 3072 or 4096 (default 2048); ec 256 or 384 (default
/// 256); ed25519 (bits 0); `any` only where `allow_any` (bits 0).
pub fn parse(key_type: &str, key_bits: &str, allow_any: bool) -> Result<(KeyType, u32), String> {
    let bits: u32 = match key_bits.trim() {
        "" => 0,
        b => b.parse().map_err(|_| format!("key_bits {b:?}: give a number of bits such as 2048 or 256"))?,
    };
    let kt = match key_type.trim() {
        "" => DEFAULT_KEY_TYPE,
        "rsa" => KeyType::Rsa,
        "ec" => KeyType::Ec,
        "ed25519" => KeyType::Ed25519,
        "any" if allow_any => KeyType::Any,
        "any" => return Err("key_type \"any\" is only for roles (signing CSRs); give rsa, ec or ed25519".into()),
        other => return Err(format!("key_type {other:?}: give rsa, ec or ed25519")),
    };
    let bits = match (kt, bits) {
        (KeyType::Rsa, 0) => 2048,
        (KeyType::Rsa, b @ (2048 | 3072 | 4096)) => b,
        (KeyType::Rsa, b) => return Err(format!("key_bits {b} for rsa: give 2048, 3072 or 4096")),
        (KeyType::Ec, 0) => 256,
        (KeyType::Ec, b @ (256 | 384)) => b,
        (KeyType::Ec, b) => {
            return Err(format!(
                "key_bits {b} for ec: give 256 (P-256) or 384 (P-384); P-224 and P-521 are not supported"
            ));
        }
        (KeyType::Ed25519 | KeyType::Any, 0) => 0,
        (KeyType::Ed25519, b) => return Err(format!("key_bits {b} for ed25519: leave it out (or 0)")),
        (KeyType::Any, b) => return Err(format!("key_bits {b} with key_type any: leave it out (or 0)")),
    };
    Ok((kt, bits))
}

/// A new key pair of `kt`/`bits` and its PKCS#8 PEM (zeroed on drop).
/// A key pair whose PKCS#8 bytes are zeroed on drop.
pub type Key = Zeroizing<KeyPair>;

pub async fn generate(kt: KeyType, bits: u32) -> Result<(Key, Zeroizing<String>), EngineError> {
    let key = match kt {
        KeyType::Ec if bits == 384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
        KeyType::Ec => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyType::Ed25519 => KeyPair::generate_for(&PKCS_ED25519),
        KeyType::Rsa => {
            let der = generate_rsa(bits).await?;
            KeyPair::try_from(der.as_slice())
        }
        KeyType::Any => return Err(EngineError::Internal("no key type to generate".into())),
    }
    .map_err(|e| EngineError::Internal(format!("generating a {} key: {e}", kt.name())))?;
    let pem = Zeroizing::new(key.serialize_pem());
    Ok((Zeroizing::new(key), pem))
}

/// An RSA key in PKCS#8 DER, generated on a blocking thread.
async fn generate_rsa(bits: u32) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    generate_rsa_in(&RSA_SLOTS, bits).await
}

/// [`generate_rsa`] with its slots given: waits up to [`RSA_WAIT`] for a
/// permit, which the blocking generation holds until it ends.
async fn generate_rsa_in(slots: &Arc<Semaphore>, bits: u32) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    let bits = usize::try_from(bits).map_err(|_| EngineError::InvalidInput("key_bits is too large".into()))?;
    let slot = tokio::time::timeout(RSA_WAIT, slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            EngineError::Unavailable(format!(
                "{RSA_AT_ONCE} RSA keys are being generated on this node already; try again shortly, or use key_type=ec"
            ))
        })?
        .map_err(|_| EngineError::Unavailable("RSA key generation is shutting down".into()))?;
    tokio::task::spawn_blocking(move || {
        use rsa::pkcs8::EncodePrivateKey;
        // Held until the generation ends, even if the request is dropped.
        let _slot = slot;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
            .map_err(|e| EngineError::Internal(format!("generating an RSA key: {e}")))?;
        let doc = key.to_pkcs8_der().map_err(|e| EngineError::Internal(format!("encoding an RSA key: {e}")))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    })
    .await
    .map_err(|e| EngineError::Internal(format!("RSA key generation stopped: {e}")))?
}

/// A key pair from PKCS#8 PEM (a CA's stored key).
pub fn from_pem(pem: &str) -> Result<Key, EngineError> {
    let parsed = pem::parse(pem).map_err(|_| EngineError::Internal("the stored CA key is unreadable".into()))?;
    let der = Zeroizing::new(parsed.into_contents());
    KeyPair::try_from(der.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| EngineError::Internal("the stored CA key is unreadable".into()))
}

/// A private key from an imported PEM block: PKCS#8 (`PRIVATE KEY`: RSA, EC
/// P-256/P-384, Ed25519) or PKCS#1 RSA (`RSA PRIVATE KEY`, converted to
/// PKCS#8). Returns the key and its PKCS#8 PEM.
pub fn import(label: &str, der: &[u8]) -> Result<(Key, Zeroizing<String>), String> {
    let pkcs8: Zeroizing<Vec<u8>> = match label {
        "PRIVATE KEY" => Zeroizing::new(der.to_vec()),
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(der)
                .map_err(|_| "the RSA PRIVATE KEY block is not a valid PKCS#1 key".to_string())?;
            let doc = key.to_pkcs8_der().map_err(|_| "the RSA key cannot be re-encoded".to_string())?;
            Zeroizing::new(doc.as_bytes().to_vec())
        }
        "EC PRIVATE KEY" => {
            return Err(
                "EC PRIVATE KEY (SEC1) is not read; convert it to PKCS#8 first: openssl pkcs8 -topk8 -nocrypt -in key.pem"
                    .into(),
            );
        }
        "ENCRYPTED PRIVATE KEY" => return Err("the private key is encrypted; give it unencrypted (PKCS#8)".into()),
        other => return Err(format!("a {other} block is not a private key")),
    };
    let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|_| {
        "the private key is not an RSA (2048 bits or more), EC P-256/P-384 or Ed25519 key in PKCS#8".to_string()
    })?;
    let pem = Zeroizing::new(key.serialize_pem());
    Ok((Zeroizing::new(key), pem))
}

/// What a public key is: its type and size in bits (0 for Ed25519).
pub fn describe_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(KeyType, u32), String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("the RSA public key is malformed".into());
        };
        let modulus: &[u8] = {
            let start = rsa.modulus.iter().position(|b| *b != 0).unwrap_or(rsa.modulus.len());
            &rsa.modulus[start..]
        };
        let bits = match modulus.first() {
            Some(first) => modulus.len().saturating_mul(8).saturating_sub(first.leading_zeros() as usize),
            None => 0,
        };
        return Ok((KeyType::Rsa, u32::try_from(bits).unwrap_or(u32::MAX)));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok((KeyType::Ec, 256)),
            Some(c) if c == OID_NIST_EC_P384 => Ok((KeyType::Ec, 384)),
            Some(c) => Err(format!("the EC curve {c} is not supported (P-256 and P-384 are)")),
            None => Err("the EC public key names no curve".into()),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok((KeyType::Ed25519, 0));
    }
    Err(format!("the public key algorithm {alg} is not supported (RSA, EC P-256/P-384 and Ed25519 are)"))
}

/// Checks a CSR's key against a role's `key_type`/`key_bits`, as Vault:
/// the type must be the role's (unless `any`); RSA and EC keys at least
/// the role's bits; RSA at least 2048 bits.
pub fn check_against_role(actual: (KeyType, u32), role: (KeyType, u32)) -> Result<(), String> {
    let (at, ab) = actual;
    let (rt, rb) = role;
    if rt != KeyType::Any && rt != at {
        return Err(format!("the role requires keys of type {}, but the CSR's key is {}", rt.name(), at.name()));
    }
    let min = if rt == KeyType::Any { 0 } else { rb };
    if matches!(at, KeyType::Rsa | KeyType::Ec) && ab < min {
        return Err(format!("the role requires at least a {min}-bit key, but the CSR's key is {ab} bits"));
    }
    if at == KeyType::Rsa && ab < 2048 {
        return Err(format!("RSA keys under 2048 bits are refused; the CSR's key is {ab} bits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_and_bits_are_checked() {
        assert_eq!(parse("", "", false).unwrap(), (KeyType::Ec, 256), "the default: EC P-256");
        assert_eq!(parse("rsa", "0", false).unwrap(), (KeyType::Rsa, 2048));
        assert_eq!(parse("rsa", "4096", false).unwrap(), (KeyType::Rsa, 4096));
        assert_eq!(parse("ec", "384", false).unwrap(), (KeyType::Ec, 384));
        assert_eq!(parse("ed25519", "", false).unwrap(), (KeyType::Ed25519, 0));
        assert_eq!(parse("any", "", true).unwrap(), (KeyType::Any, 0));
        for (t, b, want) in [
            ("rsa", "1024", "give 2048, 3072 or 4096"),
            ("rsa", "8192", "give 2048, 3072 or 4096"),
            ("ec", "521", "P-521 are not supported"),
            ("ed25519", "256", "leave it out"),
            ("dsa", "", "give rsa, ec or ed25519"),
            ("rsa", "-1", "give a number of bits"),
            ("rsa", "99999999999999999999", "give a number of bits"),
        ] {
            let e = parse(t, b, false).unwrap_err();
            assert!(e.contains(want), "{t}/{b}: {e}");
        }
        assert!(parse("any", "", false).unwrap_err().contains("only for roles"));
    }

    #[test]
    fn csr_keys_are_checked_against_the_role() {
        assert!(check_against_role((KeyType::Ec, 256), (KeyType::Ec, 256)).is_ok());
        assert!(check_against_role((KeyType::Ec, 384), (KeyType::Ec, 256)).is_ok());
        assert!(check_against_role((KeyType::Ec, 256), (KeyType::Ec, 384)).unwrap_err().contains("at least a 384"));
        assert!(check_against_role((KeyType::Rsa, 2048), (KeyType::Ec, 256)).unwrap_err().contains("type ec"));
        assert!(check_against_role((KeyType::Rsa, 1024), (KeyType::Any, 0)).unwrap_err().contains("under 2048"));
        assert!(check_against_role((KeyType::Ed25519, 0), (KeyType::Any, 0)).is_ok());
    }

    #[tokio::test]
    async fn an_abandoned_rsa_generation_keeps_its_slot_until_it_ends() {
        let slots = Arc::new(Semaphore::new(1));
        // The request gives up (its future is dropped) while the key is
        // being generated: the slot stays taken.
        let abandoned = tokio::time::timeout(Duration::from_millis(1), generate_rsa_in(&slots, 2048)).await;
        assert!(abandoned.is_err(), "an RSA-2048 key takes longer than a millisecond");
        assert_eq!(slots.available_permits(), 0, "the running generation still holds its slot");
        // A second request waits for it rather than starting alongside.
        let start = std::time::Instant::now();
        let key = generate_rsa_in(&slots, 2048).await.unwrap();
        assert!(!key.is_empty());
        assert_eq!(slots.available_permits(), 1, "released when the generation ends");
        assert!(start.elapsed() < RSA_WAIT);
    }

    #[tokio::test]
    async fn every_key_type_generates_and_reads_back() {
        for (kt, bits) in [(KeyType::Ec, 256), (KeyType::Ec, 384), (KeyType::Ed25519, 0), (KeyType::Rsa, 2048)] {
            let (key, pem) = generate(kt, bits).await.unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let again = from_pem(&pem).unwrap();
            assert_eq!(rcgen::PublicKeyData::der_bytes(&*again), rcgen::PublicKeyData::der_bytes(&*key));
        }
    }
}
