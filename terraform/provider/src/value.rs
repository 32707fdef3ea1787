//! Terraform values as they cross the wire: MessagePack (cty's encoding)
//! and JSON (state being upgraded), decoded into [`Val`].
//!
//! Unknown values ("known after apply") are MessagePack extension type 0
//! (or 12, an unknown with refinements, which this provider reads as a plain
//! unknown). Objects and maps are both MessagePack maps; lists and sets are
//! arrays.
//!
//! Strings may be secret values: they are held in zeroizing buffers, never
//! printed by `Debug`, and encoded straight into the outgoing buffer (no
//! intermediate copy), which [`crate::tfplugin6::DynamicValue`] wipes when
//! dropped.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::error::Error;

/// One value. Strings may be secret: `Debug` prints the shape only.
#[derive(Clone, PartialEq, Default)]
pub enum Val {
    #[default]
    Null,
    Unknown,
    Bool(bool),
    Num(f64),
    Str(Zeroizing<String>),
    List(Vec<Val>),
    Map(BTreeMap<String, Val>),
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Null => f.write_str("null"),
            Val::Unknown => f.write_str("(unknown)"),
            Val::Bool(_) | Val::Num(_) | Val::Str(_) => f.write_str("(value)"),
            Val::List(v) => f.debug_list().entries(v).finish(),
            Val::Map(m) => f.debug_map().entries(m.iter()).finish(),
        }
    }
}

/// An object: attribute name to value.
pub type Obj = BTreeMap<String, Val>;

const UNKNOWN_EXT: i8 = 0;
const UNKNOWN_REFINED_EXT: i8 = 12;

impl Val {
    pub fn str(s: impl Into<String>) -> Val {
        Val::Str(Zeroizing::new(s.into()))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Val::Unknown)
    }

    /// True when no unknown value is anywhere inside.
    pub fn is_wholly_known(&self) -> bool {
        match self {
            Val::Unknown => false,
            Val::List(v) => v.iter().all(Val::is_wholly_known),
            Val::Map(m) => m.values().all(Val::is_wholly_known),
            _ => true,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn as_num(&self) -> Option<f64> {
        match self {
            Val::Num(n) => Some(*n),
            // cty sends numbers it cannot hold exactly as strings.
            Val::Str(s) => s.as_str().parse().ok(),
            _ => None,
        }
    }

    pub fn from_string_map(m: &BTreeMap<String, String>) -> Val {
        Val::Map(m.iter().map(|(k, v)| (k.clone(), Val::str(v.as_str()))).collect())
    }

    pub fn from_strings<I: IntoIterator<Item = String>>(items: I) -> Val {
        Val::List(items.into_iter().map(Val::str).collect())
    }

    pub fn decode_msgpack(bytes: &[u8]) -> Result<Val, Error> {
        let mut cursor = bytes;
        let v = rmpv::decode::read_value(&mut cursor).map_err(|e| Error::Decode(e.to_string()))?;
        Val::from_rmpv(v)
    }

    fn from_rmpv(v: rmpv::Value) -> Result<Val, Error> {
        Ok(match v {
            rmpv::Value::Nil => Val::Null,
            rmpv::Value::Boolean(b) => Val::Bool(b),
            rmpv::Value::Integer(i) => Val::Num(i.as_f64().unwrap_or(f64::NAN)),
            rmpv::Value::F32(f) => Val::Num(f64::from(f)),
            rmpv::Value::F64(f) => Val::Num(f),
            rmpv::Value::String(s) => {
                // Moved, not copied, into the zeroizing buffer.
                Val::Str(Zeroizing::new(
                    s.into_str().ok_or_else(|| Error::Decode("a string is not valid UTF-8".into()))?,
                ))
            }
            rmpv::Value::Binary(_) => return Err(Error::Decode("unexpected binary value".into())),
            rmpv::Value::Array(items) => Val::List(items.into_iter().map(Val::from_rmpv).collect::<Result<_, _>>()?),
            rmpv::Value::Map(entries) => {
                let mut m = BTreeMap::new();
                for (k, v) in entries {
                    let k = match k {
                        rmpv::Value::String(s) => {
                            s.into_str().ok_or_else(|| Error::Decode("a key is not valid UTF-8".into()))?
                        }
                        _ => return Err(Error::Decode("a map key is not a string".into())),
                    };
                    m.insert(k, Val::from_rmpv(v)?);
                }
                Val::Map(m)
            }
            rmpv::Value::Ext(UNKNOWN_EXT | UNKNOWN_REFINED_EXT, _) => Val::Unknown,
            rmpv::Value::Ext(t, _) => return Err(Error::Decode(format!("unexpected extension type {t}"))),
        })
    }

    /// Writes the value as MessagePack. Writing into a Vec cannot fail.
    fn write(&self, out: &mut Vec<u8>) {
        use rmp::encode as enc;
        let _ = match self {
            Val::Null => enc::write_nil(out).map_err(|_| ()),
            Val::Unknown => enc::write_ext_meta(out, 1, UNKNOWN_EXT).map(|_| out.push(0)).map_err(|_| ()),
            Val::Bool(b) => enc::write_bool(out, *b).map_err(|_| ()),
            Val::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                enc::write_sint(out, *n as i64).map(|_| ()).map_err(|_| ())
            }
            Val::Num(n) => enc::write_f64(out, *n).map_err(|_| ()),
            Val::Str(s) => enc::write_str(out, s).map_err(|_| ()),
            Val::List(v) => {
                let _ = enc::write_array_len(out, v.len() as u32);
                v.iter().for_each(|x| x.write(out));
                Ok(())
            }
            Val::Map(m) => {
                let _ = enc::write_map_len(out, m.len() as u32);
                for (k, v) in m {
                    let _ = enc::write_str(out, k);
                    v.write(out);
                }
                Ok(())
            }
        };
    }

    /// Bytes the encoding takes at most, so the buffer never reallocates
    /// (a reallocation would leave a copy of secret bytes behind).
    fn size_bound(&self) -> usize {
        match self {
            Val::Str(s) => s.len() + 5,
            Val::List(v) => 5 + v.iter().map(Val::size_bound).sum::<usize>(),
            Val::Map(m) => 5 + m.iter().map(|(k, v)| k.len() + 5 + v.size_bound()).sum::<usize>(),
            _ => 9,
        }
    }

    pub fn encode_msgpack(&self) -> Vec<u8> {
        let bound = self.size_bound();
        let mut out = Vec::with_capacity(bound);
        self.write(&mut out);
        debug_assert!(out.len() <= bound, "msgpack size bound too small");
        out
    }

    pub fn from_json(v: serde_json::Value) -> Val {
        match v {
            serde_json::Value::Null => Val::Null,
            serde_json::Value::Bool(b) => Val::Bool(b),
            serde_json::Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Val::str(s),
            serde_json::Value::Array(items) => Val::List(items.into_iter().map(Val::from_json).collect()),
            serde_json::Value::Object(m) => Val::Map(m.into_iter().map(|(k, v)| (k, Val::from_json(v))).collect()),
        }
    }
}

/// Typed reads of an object's attributes; null and unknown read as `None`.
pub trait ObjExt {
    fn val(&self, name: &str) -> &Val;
    fn get_str(&self, name: &str) -> Option<&str>;
    fn get_num(&self, name: &str) -> Option<f64>;
    fn get_bool(&self, name: &str) -> Option<bool>;
    fn get_string_map(&self, name: &str) -> Option<BTreeMap<String, String>>;
    fn get_strings(&self, name: &str) -> Option<Vec<String>>;
}

static NULL: Val = Val::Null;

impl ObjExt for Obj {
    fn val(&self, name: &str) -> &Val {
        self.get(name).unwrap_or(&NULL)
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        self.val(name).as_str()
    }

    fn get_num(&self, name: &str) -> Option<f64> {
        self.val(name).as_num()
    }

    fn get_bool(&self, name: &str) -> Option<bool> {
        match self.val(name) {
            Val::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn get_string_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        match self.val(name) {
            Val::Map(m) => Some(m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()),
            _ => None,
        }
    }

    fn get_strings(&self, name: &str) -> Option<Vec<String>> {
        match self.val(name) {
            Val::List(v) => Some(v.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            _ => None,
        }
    }
}

/// Decodes a DynamicValue that should hold an object (or null).
pub fn decode_obj(dv: Option<&crate::tfplugin6::DynamicValue>) -> Result<Option<Obj>, Error> {
    let Some(dv) = dv else { return Ok(None) };
    let val = if !dv.msgpack.is_empty() {
        Val::decode_msgpack(&dv.msgpack)?
    } else if !dv.json.is_empty() {
        Val::from_json(serde_json::from_slice(&dv.json).map_err(|e| Error::Decode(e.to_string()))?)
    } else {
        Val::Null
    };
    match val {
        Val::Null => Ok(None),
        Val::Map(m) => Ok(Some(m)),
        Val::Unknown => Err(Error::Decode("the whole object is unknown".into())),
        _ => Err(Error::Decode("expected an object".into())),
    }
}

pub fn encode_obj(obj: Option<&Obj>) -> crate::tfplugin6::DynamicValue {
    let v = match obj {
        Some(o) => Val::Map(o.clone()),
        None => Val::Null,
    };
    crate::tfplugin6::DynamicValue { msgpack: v.encode_msgpack(), json: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_msgpack() {
        let mut o = Obj::new();
        o.insert("s".into(), Val::str("x"));
        o.insert("n".into(), Val::Num(3.0));
        o.insert("f".into(), Val::Num(1.5));
        o.insert("u".into(), Val::Unknown);
        o.insert("z".into(), Val::Null);
        o.insert("l".into(), Val::from_strings(["a".to_string()]));
        let v = Val::Map(o);
        assert_eq!(Val::decode_msgpack(&v.encode_msgpack()).unwrap(), v);
    }

    #[test]
    fn the_size_bound_covers_every_encoding() {
        for len in [0, 31, 32, 255, 256, 65_535, 65_536, 200_000] {
            let big = "x".repeat(len);
            let v = Val::Map(
                [
                    ("s".to_string(), Val::str(big.as_str())),
                    ("n".to_string(), Val::Num(-1.0e15)),
                    ("f".to_string(), Val::Num(0.1)),
                    ("l".to_string(), Val::List(vec![Val::Unknown, Val::Bool(true), Val::str(big.as_str())])),
                ]
                .into(),
            );
            let out = v.encode_msgpack();
            assert!(out.len() <= v.size_bound(), "{len}");
            assert_eq!(Val::decode_msgpack(&out).unwrap(), v);
        }
    }

    #[test]
    fn debug_never_prints_strings() {
        let v = Val::Map([("password".to_string(), Val::str("hunter2"))].into());
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn refined_unknowns_read_as_unknown() {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &rmpv::Value::Ext(12, vec![1, 2])).unwrap();
        assert_eq!(Val::decode_msgpack(&buf).unwrap(), Val::Unknown);
    }
}
