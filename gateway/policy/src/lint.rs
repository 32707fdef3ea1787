//! Built-in checks for policies that parse but probably do not mean what
//! their author thinks.

use crate::{Capability, Policy};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

/// KV version 2 paths (`<mount>/data/...`, `<mount>/metadata/...`) are the
/// only ones with an existence check, the one place `create` and `update`
/// differ. (Mounts nested deeper than one segment are not recognised.)
fn is_kv_path(path: &str) -> bool {
    let mut segs = path.split('/');
    segs.next();
    matches!(segs.next(), Some("data" | "metadata"))
}

pub fn lint(policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        let path = rule.pattern.as_str();
        let caps = &rule.capabilities;
        if caps.contains(&Capability::Create) && !caps.contains(&Capability::Update) && !is_kv_path(path) {
            out.push(Warning {
                path: path.to_string(),
                message: "grants create without update: this path has no existence check, so every write to it \
                          is an update, and this rule grants no writes (Vault behaves the same)"
                    .into(),
            });
        }
        let has_params = rule.allowed_parameters.is_some()
            || rule.denied_parameters.is_some()
            || !rule.required_parameters.is_empty();
        if has_params && is_kv_path(path) {
            out.push(Warning {
                path: path.to_string(),
                message: "parameter constraints do not apply to KV paths (as in Vault); they restrict nothing here"
                    .into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_policy;

    #[test]
    fn the_origin_policys_pki_and_database_rules_are_flagged() {
        let p = parse_policy("origin", include_str!("../tests/corpus/origin.hcl")).unwrap();
        let w = lint(&p);
        let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["database/creds/app-readonly", "pki/issue/app-tls"]);
        assert!(w[1].message.contains("no existence check"));
    }

    #[test]
    fn kv_rules_are_not_flagged_for_create_but_are_for_parameters() {
        let p = parse_policy(
            "kv",
            "path \"secret/data/x/*\" {\n capabilities = [\"create\"]\n required_parameters = [\"a\"]\n}\n",
        )
        .unwrap();
        let w = lint(&p);
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("do not apply to KV"));
    }
}
