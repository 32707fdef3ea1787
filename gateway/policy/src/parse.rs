//! The HCL policy language, as Vault writes it.

use std::collections::{BTreeMap, BTreeSet};

use hcl::{Block, BlockLabel, Body, Expression, ObjectKey};

use crate::{Error, Pattern};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
}

pub const CAPABILITY_NAMES: &[&str] = &["create", "read", "update", "patch", "delete", "list", "sudo", "deny"];

impl Capability {
    pub fn parse(s: &str) -> Option<Capability> {
        Some(match s {
            "create" => Capability::Create,
            "read" => Capability::Read,
            "update" => Capability::Update,
            "patch" => Capability::Patch,
            "delete" => Capability::Delete,
            "list" => Capability::List,
            "sudo" => Capability::Sudo,
            "deny" => Capability::Deny,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        CAPABILITY_NAMES[self as usize]
    }
}

/// One `path "..." { ... }` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub pattern: Pattern,
    pub capabilities: BTreeSet<Capability>,
    /// `None`: no constraint. Values may start or end with `*`; an empty
    /// list allows any value; the key `*` allows any parameter.
    pub allowed_parameters: Option<BTreeMap<String, Vec<String>>>,
    pub denied_parameters: Option<BTreeMap<String, Vec<String>>>,
    pub required_parameters: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<PathRule>,
}

fn rule_err(path: &str, reason: impl Into<String>) -> Error {
    Error::Rule { path: path.to_string(), reason: reason.into() }
}

fn strings(path: &str, key: &str, e: &Expression) -> Result<Vec<String>, Error> {
    match e {
        Expression::Array(items) => items
            .iter()
            .map(|i| match i {
                Expression::String(s) => Ok(s.clone()),
                Expression::Number(n) => Ok(n.to_string()),
                Expression::Bool(b) => Ok(b.to_string()),
                _ => Err(rule_err(path, format!("{key} must be a list of strings"))),
            })
            .collect(),
        _ => Err(rule_err(path, format!("{key} must be a list, such as [\"read\"]"))),
    }
}

fn parameters(path: &str, key: &str, e: &Expression) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let Expression::Object(obj) = e else {
        return Err(rule_err(path, format!("{key} must be a map of parameter names to lists of values")));
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let name = match k {
            ObjectKey::Identifier(id) => id.to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.clone(),
            _ => return Err(rule_err(path, format!("{key}: parameter names must be strings"))),
        };
        out.insert(name.clone(), strings(path, &format!("{key}.{name}"), v)?);
    }
    Ok(out)
}

/// Vault's pre-0.9 `policy = "..."` shorthand.
fn legacy(path: &str, s: &str) -> Result<Vec<Capability>, Error> {
    use Capability::*;
    Ok(match s {
        "deny" => vec![Deny],
        "read" => vec![Read, List],
        "write" => vec![Create, Read, Update, Delete, List],
        "sudo" => vec![Create, Read, Update, Delete, List, Sudo],
        other => {
            return Err(rule_err(
                path,
                format!("policy = {other:?}: use deny, read, write or sudo, or capabilities = [...]"),
            ));
        }
    })
}

fn path_rule(block: &Block) -> Result<PathRule, Error> {
    let path = match block.labels() {
        [BlockLabel::String(p)] => p.clone(),
        [BlockLabel::Identifier(p)] => p.to_string(),
        _ => {
            return Err(Error::Structure(
                "a path block takes exactly one label: path \"secret/data/*\" { ... }".into(),
            ));
        }
    };
    let pattern = Pattern::parse(&path)?;
    let mut rule = PathRule {
        pattern,
        capabilities: BTreeSet::new(),
        allowed_parameters: None,
        denied_parameters: None,
        required_parameters: Vec::new(),
    };
    if let Some(inner) = block.body().blocks().next() {
        return Err(rule_err(&path, format!("unexpected block {:?} inside a path rule", inner.identifier())));
    }
    let mut seen_caps = false;
    for attr in block.body().attributes() {
        match attr.key() {
            "capabilities" => {
                seen_caps = true;
                for c in strings(&path, "capabilities", attr.expr())? {
                    let cap = Capability::parse(&c).ok_or_else(|| {
                        rule_err(&path, format!("unknown capability {c:?}; valid: {}", CAPABILITY_NAMES.join(", ")))
                    })?;
                    rule.capabilities.insert(cap);
                }
            }
            "policy" => {
                seen_caps = true;
                let Expression::String(s) = attr.expr() else {
                    return Err(rule_err(&path, "policy must be a string"));
                };
                rule.capabilities.extend(legacy(&path, s)?);
            }
            "allowed_parameters" => {
                rule.allowed_parameters = Some(parameters(&path, "allowed_parameters", attr.expr())?)
            }
            "denied_parameters" => rule.denied_parameters = Some(parameters(&path, "denied_parameters", attr.expr())?),
            "required_parameters" => rule.required_parameters = strings(&path, "required_parameters", attr.expr())?,
            // Accepted as Vault accepts them; response wrapping and control
            // groups are not features of Keybridge.
            "min_wrapping_ttl" | "max_wrapping_ttl" => {}
            other => return Err(rule_err(&path, format!("unknown key {other:?}"))),
        }
    }
    if !seen_caps {
        return Err(rule_err(&path, "no capabilities; add capabilities = [\"read\"] (or [\"deny\"])"));
    }
    if rule.capabilities.contains(&Capability::Deny) {
        rule.capabilities = [Capability::Deny].into();
    }
    Ok(rule)
}

/// Parses a policy's HCL text. Syntax errors carry line and column.
pub fn parse_policy(name: &str, text: &str) -> Result<Policy, Error> {
    let body: Body = hcl::parse(text).map_err(|e| Error::Syntax(e.to_string()))?;
    if let Some(attr) = body.attributes().next() {
        return Err(Error::Structure(format!("unexpected top-level key {:?}; a policy holds path blocks", attr.key())));
    }
    let mut rules = Vec::new();
    for block in body.blocks() {
        if block.identifier() != "path" {
            return Err(Error::Structure(format!(
                "unexpected block {:?}; a policy holds path blocks",
                block.identifier()
            )));
        }
        rules.push(path_rule(block)?);
    }
    Ok(Policy { name: name.to_string(), rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The origin document's policy, kept once in the test corpus.
    const ORIGIN: &str = include_str!("../tests/corpus/origin.hcl");

    #[test]
    fn the_origin_policy_parses_unchanged() {
        let p = parse_policy("app-service", ORIGIN).unwrap();
        assert_eq!(p.rules.len(), 4);
        let pki = &p.rules[2];
        assert_eq!(pki.pattern.as_str(), "pki/issue/app-tls");
        let allowed = pki.allowed_parameters.as_ref().unwrap();
        assert_eq!(allowed["common_name"], ["*.app.internal"]);
        assert_eq!(allowed["ttl"], ["24h"]);
        assert_eq!(p.rules[3].capabilities, [Capability::Deny].into());
    }

    #[test]
    fn legacy_policy_shorthand() {
        let p = parse_policy("l", "path \"a/*\" {\n policy = \"write\"\n}\n").unwrap();
        assert!(p.rules[0].capabilities.contains(&Capability::Update));
        assert!(!p.rules[0].capabilities.contains(&Capability::Sudo));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse_policy("x", "path \"a\" {\n capabilities = [\"read\"\n").unwrap_err().to_string();
        assert!(e.contains("line") && e.contains("column"), "{e}");
        let e = parse_policy("x", "path \"a\" {\n capabilities = [\"raed\"]\n}\n").unwrap_err().to_string();
        assert!(e.contains("unknown capability \"raed\"") && e.contains("\"a\""), "{e}");
        let e =
            parse_policy("x", "path \"a\" {\n capabilities = [\"read\"]\n colour = 1\n}\n").unwrap_err().to_string();
        assert!(e.contains("unknown key \"colour\""), "{e}");
        let e = parse_policy("x", "path \"a\" {\n}\n").unwrap_err().to_string();
        assert!(e.contains("no capabilities"), "{e}");
        let e = parse_policy("x", "path \"a\" {\n capabilities = \"read\"\n}\n").unwrap_err().to_string();
        assert!(e.contains("must be a list"), "{e}");
        let e = parse_policy("x", "rule \"a\" {\n capabilities = [\"read\"]\n}\n").unwrap_err().to_string();
        assert!(e.contains("unexpected block"), "{e}");
    }
}
