//! Gateway paths (`team/app/db`) as cloud secret names, and back.
//!
//! Each cloud allows a different alphabet. A path is encoded byte by byte:
//! bytes the cloud allows pass unchanged (but the escape character), `/`
//! gets a short form, and every other byte becomes the escape character and
//! two hex digits. Every encoded name starts with the mount's prefix.
//!
//! | cloud | allowed in names | max | escape | `/` | other bytes |
//! |---|---|---|---|---|---|
//! | AWS | `A-Z a-z 0-9 / _ + = . @ -` | 512 | `=` | `/` (allowed) | `=XX` (upper hex) |
//! | Azure | `0-9 a-z A-Z -`, compared without case | 127 | `-` | `--` | `-xx` (lower hex), upper-case letters too |
//! | GCP | `A-Z a-z 0-9 _ -` | 255 | `_` | `__` | `_xx` (lower hex) |
//!
//! The codes are prefix-free, so decoding is unambiguous, and `decode`
//! accepts only names that `encode` produces (it re-encodes and compares),
//! so the mapping is a bijection between paths and Keybridge's names. On
//! Azure, which compares names without regard to case, encoded names hold no
//! upper-case letters, so two paths never land on names Azure considers the
//! same. A name `decode` refuses was created by another tool: adapters list
//! and address it by its raw name.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
}

impl Cloud {
    /// Every cloud an adapter exists for.
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Azure, Cloud::Gcp];

    /// The cloud of a mount type (`aws`, `azure`, `gcp`); `None` for the
    /// gateway's own kinds.
    pub fn from_kind(kind: &str) -> Option<Cloud> {
        Cloud::ALL.into_iter().find(|c| c.kind() == kind)
    }

    /// The mount type of the cloud's mounts.
    pub fn kind(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
            Cloud::Gcp => "gcp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS Secrets Manager",
            Cloud::Azure => "Azure Key Vault",
            Cloud::Gcp => "GCP Secret Manager",
        }
    }

    /// The longest secret name the cloud accepts.
    pub fn max_name_len(self) -> usize {
        match self {
            Cloud::Aws => 512,
            Cloud::Azure => 127,
            Cloud::Gcp => 255,
        }
    }

    /// The largest secret value the cloud accepts, in bytes.
    pub fn max_value_bytes(self) -> usize {
        match self {
            Cloud::Aws => 65_536,
            Cloud::Azure => 25_600,
            Cloud::Gcp => 65_536,
        }
    }

    fn escape(self) -> u8 {
        match self {
            Cloud::Aws => b'=',
            Cloud::Azure => b'-',
            Cloud::Gcp => b'_',
        }
    }

    /// Bytes that stand for themselves in an encoded name.
    fn passes(self, b: u8) -> bool {
        match self {
            Cloud::Aws => b.is_ascii_alphanumeric() || b"/_+.@-".contains(&b),
            Cloud::Azure => b.is_ascii_lowercase() || b.is_ascii_digit(),
            Cloud::Gcp => b.is_ascii_alphanumeric() || b == b'-',
        }
    }

    /// Whether `b` may appear in a name of this cloud at all.
    fn allowed(self, b: u8) -> bool {
        match self {
            Cloud::Aws => b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b),
            Cloud::Azure => b.is_ascii_alphanumeric() || b == b'-',
            Cloud::Gcp => b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "{name:?} is not a {cloud} secret name (only the characters the cloud allows in a name, within its length)"
    )]
    BadRaw { cloud: &'static str, name: String },
    #[error("{name:?} is outside this mount's prefix {prefix:?}; a mount reaches only the names that carry its prefix")]
    OutsidePrefix { name: String, prefix: String },
    #[error("{cloud}: the prefix {prefix:?} may only hold {allowed}")]
    BadPrefix { cloud: &'static str, prefix: String, allowed: &'static str },
    #[error(
        "{cloud} names are at most {max} characters; {path:?} encodes to {len} (with the mount's prefix): use a shorter path"
    )]
    TooLong { cloud: &'static str, path: String, len: usize, max: usize },
}

/// A mount's mapping: its cloud and the prefix its names carry.
#[derive(Clone, Debug)]
pub struct NameCodec {
    cloud: Cloud,
    prefix: String,
}

impl NameCodec {
    /// `prefix` (may be empty) must use only characters the cloud allows.
    pub fn new(cloud: Cloud, prefix: &str) -> Result<NameCodec, NameError> {
        let allowed = match cloud {
            Cloud::Aws => "letters, digits and / _ + = . @ -",
            Cloud::Azure => "lower-case letters, digits and -",
            Cloud::Gcp => "letters, digits, _ and -",
        };
        let ok = prefix.bytes().all(|b| cloud.allowed(b) && !(cloud == Cloud::Azure && b.is_ascii_uppercase()))
            && prefix.len() < cloud.max_name_len() / 2;
        if !ok {
            return Err(NameError::BadPrefix { cloud: cloud.name(), prefix: prefix.to_string(), allowed });
        }
        Ok(NameCodec { cloud, prefix: prefix.to_string() })
    }

    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    /// Whether `name` carries this mount's prefix (on Azure, whose names
    /// are case-insensitive, in any case): the names a mount may address.
    pub fn owns(&self, name: &str) -> bool {
        let head = name.get(..self.prefix.len());
        match head {
            Some(h) if self.cloud == Cloud::Azure => h.eq_ignore_ascii_case(&self.prefix),
            Some(h) => h == self.prefix,
            None => false,
        }
    }

    /// Checks a name given as it is in the cloud (`_raw/<name>`): only the
    /// characters the cloud allows in a name (so no ARN, resource path or
    /// other project), within its length, and carrying the mount's prefix.
    pub fn check_raw(&self, name: &str) -> Result<(), NameError> {
        let c = self.cloud;
        if name.is_empty() || name.len() > c.max_name_len() || !name.bytes().all(|b| c.allowed(b)) {
            return Err(NameError::BadRaw { cloud: c.name(), name: name.to_string() });
        }
        if !self.owns(name) {
            return Err(NameError::OutsidePrefix { name: name.to_string(), prefix: self.prefix.clone() });
        }
        Ok(())
    }

    /// The cloud name of a gateway path (relative to the mount).
    pub fn encode(&self, path: &str) -> Result<String, NameError> {
        let c = self.cloud;
        let mut out = String::with_capacity(self.prefix.len() + path.len() + 8);
        out.push_str(&self.prefix);
        for b in path.bytes() {
            if b == b'/' && c != Cloud::Aws {
                out.push(c.escape() as char);
                out.push(c.escape() as char);
            } else if c.passes(b) {
                out.push(b as char);
            } else if c == Cloud::Aws {
                let _ = write!(out, "={b:02X}");
            } else {
                let _ = write!(out, "{}{b:02x}", c.escape() as char);
            }
        }
        if out.len() > c.max_name_len() {
            return Err(NameError::TooLong {
                cloud: c.name(),
                path: path.to_string(),
                len: out.len(),
                max: c.max_name_len(),
            });
        }
        Ok(out)
    }

    /// The gateway path of a cloud name, if `encode` made it; `None` for a
    /// name another tool created (or one outside this mount's prefix).
    pub fn decode(&self, name: &str) -> Option<String> {
        let c = self.cloud;
        let lowered;
        let name = if c == Cloud::Azure {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        let rest = name.strip_prefix(self.prefix.as_str())?;
        let bytes = rest.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == c.escape() {
                if c != Cloud::Aws && bytes.get(i + 1) == Some(&c.escape()) {
                    out.push(b'/');
                    i += 2;
                    continue;
                }
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else if c.allowed(b) {
                out.push(b);
                i += 1;
            } else {
                return None;
            }
        }
        let path = String::from_utf8(out).ok()?;
        // Only canonical names: exactly what `encode` gives for the path.
        (self.encode(&path).ok()?.eq(name)).then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn codecs() -> Vec<NameCodec> {
        vec![
            NameCodec::new(Cloud::Aws, "kb/").unwrap(),
            NameCodec::new(Cloud::Azure, "kb-").unwrap(),
            NameCodec::new(Cloud::Gcp, "kb_").unwrap(),
            NameCodec::new(Cloud::Gcp, "").unwrap(),
        ]
    }

    #[test]
    fn examples() {
        let aws = NameCodec::new(Cloud::Aws, "kb/").unwrap();
        assert_eq!(aws.encode("team/app/db").unwrap(), "kb/team/app/db");
        assert_eq!(aws.encode("a b=c").unwrap(), "kb/a=20b=3Dc");
        let az = NameCodec::new(Cloud::Azure, "kb-").unwrap();
        // `/` is `--`, `A` is `-41`, `-` is `-2d`.
        assert_eq!(az.encode("team/App-db").unwrap(), "kb-team---41pp-2ddb");
        assert_eq!(az.decode("KB-TEAM--DB").as_deref(), Some("team/db"), "Azure compares without case");
        let gcp = NameCodec::new(Cloud::Gcp, "kb_").unwrap();
        assert_eq!(gcp.encode("team/app_db").unwrap(), "kb_team__app_5fdb");
        // Names other tools made are not ours.
        assert_eq!(gcp.decode("prod-db"), None);
        assert_eq!(gcp.decode("kb_x_zz"), None);
        assert_eq!(aws.decode("kb/a=3d"), None, "lower-case hex is not canonical");
        assert_eq!(az.decode("kb-a-"), None);
        // Limits, before any call is made.
        let long = "x".repeat(200);
        assert!(matches!(az.encode(&long), Err(NameError::TooLong { max: 127, .. })));
        assert!(matches!(
            NameCodec::new(Cloud::Azure, "KB-"),
            Err(NameError::BadPrefix { cloud: "Azure Key Vault", .. })
        ));
        assert!(matches!(
            NameCodec::new(Cloud::Gcp, "kb/"),
            Err(NameError::BadPrefix { cloud: "GCP Secret Manager", .. })
        ));
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_uses_only_allowed_characters(path in "[a-zA-Z0-9/_=+.@ -]{1,40}|\\PC{1,20}") {
            for codec in codecs() {
                let Ok(name) = codec.encode(&path) else { continue };
                let c = codec.cloud();
                prop_assert!(name.bytes().all(|b| c.allowed(b)), "{name}");
                if c == Cloud::Azure {
                    prop_assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
                }
                prop_assert_eq!(codec.decode(&name), Some(path.clone()));
            }
        }

        #[test]
        fn distinct_paths_never_share_a_name(a in "[a-zA-Z0-9/_-]{1,12}", b in "[a-zA-Z0-9/_-]{1,12}") {
            prop_assume!(a != b);
            for codec in codecs() {
                let (x, y) = (codec.encode(&a).unwrap(), codec.encode(&b).unwrap());
                if codec.cloud() == Cloud::Azure {
                    prop_assert_ne!(x.to_ascii_lowercase(), y.to_ascii_lowercase());
                } else {
                    prop_assert_ne!(x, y);
                }
            }
        }

        #[test]
        fn decode_accepts_only_what_encode_produces(name in "[a-zA-Z0-9/_=+.@-]{1,30}") {
            for codec in codecs() {
                if let Some(path) = codec.decode(&name) {
                    let again = codec.encode(&path).unwrap();
                    if codec.cloud() == Cloud::Azure {
                        prop_assert_eq!(again, name.to_ascii_lowercase());
                    } else {
                        prop_assert_eq!(again, name.clone());
                    }
                }
            }
        }
    }
}
