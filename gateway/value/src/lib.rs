//! Secret values. They zero their memory on drop, print as `[redacted]`,
//! and have no `Serialize`: the only way out is [`SecretValue::encode`]
//! (for the barrier) and explicit accessors.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use keybridge_audit::AuditValue;

/// A value that cannot be stored; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
}

/// Named string fields (`username`, `password`), opaque bytes, or one
/// plain string (as tools outside Keybridge often store in the clouds).
pub enum SecretValue {
    Fields(BTreeMap<String, Zeroizing<String>>),
    Binary(Zeroizing<Vec<u8>>),
    Text(Zeroizing<String>),
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Fields(m) => {
                write!(f, "SecretValue::Fields({} fields, [redacted])", m.len())
            }
            SecretValue::Binary(b) => {
                write!(f, "SecretValue::Binary({} bytes, [redacted])", b.len())
            }
            SecretValue::Text(t) => write!(f, "SecretValue::Text({} bytes, [redacted])", t.len()),
        }
    }
}

/// The stored form. prost is told to derive no `Debug` for it.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct Stored {
    #[prost(btree_map = "string, string", tag = "1")]
    fields: BTreeMap<String, String>,
    #[prost(bytes = "vec", tag = "2")]
    binary: Vec<u8>,
    #[prost(bool, tag = "3")]
    is_binary: bool,
    #[prost(string, tag = "4")]
    text: String,
    #[prost(bool, tag = "5")]
    is_text: bool,
}

impl Drop for Stored {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.binary.zeroize();
        self.text.zeroize();
        for v in self.fields.values_mut() {
            v.zeroize();
        }
    }
}

impl SecretValue {
    /// The value as audit records carry it: each field (or the bytes) HMACed.
    pub fn audit_value(&self) -> AuditValue {
        match self {
            SecretValue::Fields(m) => {
                AuditValue::Map(m.iter().map(|(k, v)| (k.clone().into(), AuditValue::secret(v.as_bytes()))).collect())
            }
            SecretValue::Binary(b) => AuditValue::secret(b),
            SecretValue::Text(t) => AuditValue::secret(t.as_bytes()),
        }
    }

    /// Bytes the value counts against the size cap: field names and values,
    /// or the opaque bytes.
    pub fn size(&self) -> usize {
        match self {
            SecretValue::Fields(m) => m.iter().map(|(k, v)| k.len() + v.len()).sum(),
            SecretValue::Binary(b) => b.len(),
            SecretValue::Text(t) => t.len(),
        }
    }

    /// Checks the value can be stored under a size cap of `max_bytes`.
    pub fn validate(&self, max_bytes: usize) -> Result<(), Error> {
        if let SecretValue::Fields(m) = self {
            if m.is_empty() {
                return Err(Error::Invalid(
                    "the value has no fields; give at least one field such as password=...".into(),
                ));
            }
            if let Some(k) = m.keys().find(|k| k.is_empty() || k.chars().any(char::is_control) || k.len() > 256) {
                return Err(Error::Invalid(format!(
                    "invalid field name {k:?}: field names are 1 to 256 bytes without control characters"
                )));
            }
        }
        let size = self.size();
        if size > max_bytes {
            return Err(Error::Invalid(format!(
                "the value is {size} bytes; this mount accepts at most {max_bytes} bytes"
            )));
        }
        Ok(())
    }

    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut stored = Stored::default();
        match self {
            SecretValue::Fields(m) => stored.fields = m.iter().map(|(k, v)| (k.clone(), String::clone(v))).collect(),
            SecretValue::Binary(b) => {
                stored.binary = b.to_vec();
                stored.is_binary = true;
            }
            SecretValue::Text(t) => {
                stored.text = String::clone(t);
                stored.is_text = true;
            }
        }
        Zeroizing::new(prost::Message::encode_to_vec(&stored))
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, prost::DecodeError> {
        let mut stored: Stored = prost::Message::decode(bytes)?;
        Ok(if stored.is_text {
            SecretValue::Text(Zeroizing::new(std::mem::take(&mut stored.text)))
        } else if stored.is_binary {
            SecretValue::Binary(Zeroizing::new(std::mem::take(&mut stored.binary)))
        } else {
            SecretValue::Fields(
                std::mem::take(&mut stored.fields).into_iter().map(|(k, v)| (k, Zeroizing::new(v))).collect(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let v = SecretValue::Fields([("password".to_string(), Zeroizing::new("hunter2".to_string()))].into());
        assert!(!format!("{v:?}").contains("hunter2"));
        let b = SecretValue::Binary(Zeroizing::new(b"hunter2".to_vec()));
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn encode_roundtrip_and_size_cap() {
        let v = SecretValue::Fields([("u".to_string(), Zeroizing::new("alice".to_string()))].into());
        match SecretValue::decode(&v.encode()).unwrap() {
            SecretValue::Fields(m) => assert_eq!(m["u"].as_str(), "alice"),
            _ => panic!("fields expected"),
        }
        let b = SecretValue::Binary(Zeroizing::new(vec![0, 1, 2]));
        assert!(matches!(SecretValue::decode(&b.encode()).unwrap(), SecretValue::Binary(x) if *x == [0, 1, 2]));
        assert!(b.validate(2).unwrap_err().to_string().contains("at most 2 bytes"));
        assert!(
            matches!(SecretValue::Fields(BTreeMap::new()).validate(10), Err(Error::Invalid(m)) if m.contains("no fields"))
        );
        let t = SecretValue::Text(Zeroizing::new("plain".into()));
        assert!(matches!(SecretValue::decode(&t.encode()).unwrap(), SecretValue::Text(x) if x.as_str() == "plain"));
        assert!(!format!("{t:?}").contains("plain"));
    }
}
