//! The ACL: a token's policies merged, and the decision for one request.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{Capability, Pattern, Policy};

/// Rules for one pattern, merged across policies.
#[derive(Clone, Debug)]
struct Rule {
    pattern: Pattern,
    capabilities: BTreeSet<Capability>,
    allowed: Option<BTreeMap<String, Vec<String>>>,
    denied: Option<BTreeMap<String, Vec<String>>>,
    required: BTreeSet<String>,
}

/// Merges parameter maps as Vault does: keys union; for a key in both, the
/// value lists union, and an empty list (any value) absorbs the other.
fn merge_params(
    a: Option<BTreeMap<String, Vec<String>>>,
    b: &Option<BTreeMap<String, Vec<String>>>,
) -> Option<BTreeMap<String, Vec<String>>> {
    match (a, b) {
        (None, None) => None,
        (Some(a), None) => Some(a),
        (None, Some(b)) => Some(lowercase_keys(b)),
        (Some(mut a), Some(b)) => {
            for (k, v) in lowercase_keys(b) {
                let entry = a.entry(k).or_default();
                if entry.is_empty() || v.is_empty() {
                    entry.clear();
                } else {
                    entry.extend(v);
                    entry.sort();
                    entry.dedup();
                }
            }
            Some(a)
        }
    }
}

fn lowercase_keys(m: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    m.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect()
}

/// What is asked: a capability on a path, with the request's parameters
/// (checked against parameter constraints only when `check_parameters`:
/// Vault skips them for KV).
pub struct Request<'a> {
    pub path: &'a str,
    pub capability: Capability,
    pub parameters: &'a [(&'a str, &'a str)],
    pub check_parameters: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Why, naming the path and capability (and a parameter if that was the
    /// reason), never the policy text.
    Denied(String),
}

/// A token's policies, merged, ready to answer requests.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, Rule>,
    wildcard: Vec<Rule>,
}

/// Vault's parameter value match: `*` at the start and/or end globs.
fn value_matches(allowed: &str, value: &str) -> bool {
    match (allowed.strip_prefix('*'), allowed.strip_suffix('*')) {
        _ if allowed == "*" => true,
        (Some(rest), _) if rest.ends_with('*') => value.contains(&rest[..rest.len() - 1]),
        (Some(suffix), _) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => value == allowed,
    }
}

fn value_in(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|a| value_matches(a, value))
}

impl Acl {
    /// The ACL of the built-in `root` policy: everything is allowed.
    pub fn root() -> Acl {
        Acl { root: true, ..Acl::default() }
    }

    /// Merges the policies. A policy named `root` makes the ACL root.
    pub fn new(policies: &[Policy]) -> Acl {
        if policies.iter().any(|p| p.name == "root") {
            return Acl::root();
        }
        let mut merged: BTreeMap<String, Rule> = BTreeMap::new();
        for policy in policies {
            for r in &policy.rules {
                let entry = merged.entry(r.pattern.as_str().to_string()).or_insert_with(|| Rule {
                    pattern: r.pattern.clone(),
                    capabilities: BTreeSet::new(),
                    allowed: None,
                    denied: None,
                    required: BTreeSet::new(),
                });
                entry.capabilities.extend(r.capabilities.iter().copied());
                if entry.capabilities.contains(&Capability::Deny) {
                    entry.capabilities = [Capability::Deny].into();
                }
                entry.allowed = merge_params(entry.allowed.take(), &r.allowed_parameters);
                entry.denied = merge_params(entry.denied.take(), &r.denied_parameters);
                entry.required.extend(r.required_parameters.iter().map(|p| p.to_lowercase()));
            }
        }
        let mut acl = Acl::default();
        for (raw, rule) in merged {
            if rule.pattern.is_glob() || raw.split('/').any(|s| s == "+") {
                acl.wildcard.push(rule);
            } else {
                acl.exact.insert(raw, rule);
            }
        }
        acl
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The most specific rule matching `path`.
    fn rule_for(&self, path: &str) -> Option<&Rule> {
        if let Some(r) = self.exact.get(path) {
            return Some(r);
        }
        self.wildcard
            .iter()
            .filter(|r| r.pattern.matches(path))
            .reduce(|best, r| if r.pattern.outranks(&best.pattern) { r } else { best })
    }

    /// The capabilities the ACL grants on `path` (`sudo` included; empty
    /// when denied), as Vault's `sys/capabilities-self` reports them.
    pub fn capabilities(&self, path: &str) -> BTreeSet<Capability> {
        if self.root {
            use Capability::*;
            return [Create, Read, Update, Patch, Delete, List, Sudo].into();
        }
        match self.rule_for(path) {
            Some(r) if !r.capabilities.contains(&Capability::Deny) => r.capabilities.clone(),
            _ => BTreeSet::new(),
        }
    }

    pub fn decide(&self, req: &Request<'_>) -> Decision {
        if self.root {
            return Decision::Allowed;
        }
        let denied = |extra: &str| {
            Decision::Denied(format!("{} on {}{extra} is not granted", req.capability.as_str(), req.path))
        };
        let Some(rule) = self.rule_for(req.path) else {
            return denied("");
        };
        if rule.capabilities.contains(&Capability::Deny) || !rule.capabilities.contains(&req.capability) {
            return denied("");
        }
        let param_op =
            matches!(req.capability, Capability::Create | Capability::Update | Capability::Patch | Capability::Read);
        if !req.check_parameters || !param_op {
            return Decision::Allowed;
        }
        let params: Vec<(String, &str)> = req.parameters.iter().map(|(k, v)| (k.to_lowercase(), *v)).collect();
        for r in &rule.required {
            if !params.iter().any(|(k, _)| k == r) {
                return denied(&format!(" without the required parameter {r:?}"));
            }
        }
        if let Some(denied_params) = rule.denied.as_ref().filter(|d| !d.is_empty()) {
            if denied_params.contains_key("*") {
                return denied(" with any parameters");
            }
            for (k, v) in &params {
                if let Some(list) = denied_params.get(k)
                    && value_in(list, v)
                {
                    return denied(&format!(" with parameter {k:?} set to that value"));
                }
            }
        }
        if let Some(allowed) = rule.allowed.as_ref().filter(|a| !a.is_empty()) {
            let allow_all = allowed.contains_key("*");
            if allow_all && allowed.len() == 1 {
                return Decision::Allowed;
            }
            for (k, v) in &params {
                match allowed.get(k) {
                    None if !allow_all => return denied(&format!(" with parameter {k:?}")),
                    None => {}
                    Some(list) if !value_in(list, v) => {
                        return denied(&format!(" with parameter {k:?} set to that value"));
                    }
                    Some(_) => {}
                }
            }
        }
        Decision::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_policy;

    /// The origin document's policy, kept once in the test corpus.
    const ORIGIN: &str = include_str!("../tests/corpus/origin.hcl");

    fn ask(acl: &Acl, path: &str, cap: Capability, params: &[(&str, &str)]) -> bool {
        acl.decide(&Request { path, capability: cap, parameters: params, check_parameters: true }) == Decision::Allowed
    }

    #[test]
    fn the_origin_policy_means_what_vault_makes_it_mean() {
        let acl = Acl::new(&[parse_policy("app-service", ORIGIN).unwrap()]);
        use Capability::*;
        assert!(ask(&acl, "secret/data/database/prod", Read, &[]));
        assert!(!ask(&acl, "secret/data/database/prod", Update, &[]));
        assert!(!ask(&acl, "secret/metadata/database/prod", List, &[]));
        assert!(!ask(&acl, "secret/data/other", Read, &[]));
        assert!(ask(&acl, "database/creds/app-readonly", Read, &[]));
        assert!(!ask(&acl, "database/creds/app-admin", Read, &[]));
        // pki/issue has no existence check: issuing is always an update,
        // which this rule does not grant.
        assert!(!ask(&acl, "pki/issue/app-tls", Update, &[("common_name", "web.app.internal"), ("ttl", "24h")]));
        // The parameter constraints still evaluate (for create).
        assert!(ask(&acl, "pki/issue/app-tls", Create, &[("common_name", "web.app.internal"), ("ttl", "24h")]));
        assert!(!ask(&acl, "pki/issue/app-tls", Create, &[("common_name", "evil.example.com")]));
        assert!(!ask(&acl, "pki/issue/app-tls", Create, &[("ttl", "48h")]));
        assert!(!ask(&acl, "pki/issue/app-tls", Create, &[("alt_names", "x")]));
        assert!(!ask(&acl, "sys/mounts", Read, &[]));
        let Decision::Denied(why) =
            acl.decide(&Request { path: "sys/seal", capability: Sudo, parameters: &[], check_parameters: true })
        else {
            panic!("denied expected")
        };
        assert_eq!(why, "sudo on sys/seal is not granted");
    }

    #[test]
    fn most_specific_rule_wins_and_deny_wins_within_it() {
        let p = parse_policy(
            "p",
            r#"
path "secret/*" { capabilities = ["read"] }
path "secret/data/team/*" { capabilities = ["read", "update"] }
path "secret/data/team/locked" { capabilities = ["deny"] }
path "secret/data/+/shared" { capabilities = ["list"] }
"#,
        )
        .unwrap();
        let acl = Acl::new(&[p]);
        use Capability::*;
        assert!(ask(&acl, "secret/data/team/x", Update, &[]));
        assert!(!ask(&acl, "secret/data/other/x", Update, &[]));
        assert!(ask(&acl, "secret/data/other/x", Read, &[]));
        assert!(!ask(&acl, "secret/data/team/locked", Read, &[]));
        // `secret/data/+/shared` ranks below `secret/data/team/*` (its
        // wildcard comes earlier), so team/shared follows the team rule.
        assert!(!ask(&acl, "secret/data/team/shared", List, &[]));
        assert!(ask(&acl, "secret/data/eng/shared", List, &[]));
        assert!(!ask(&acl, "secret/data/eng/shared", Read, &[]));
        assert!(!ask(&acl, "other/path", Read, &[]), "default deny");
    }

    #[test]
    fn policies_merge_as_in_vault() {
        let a = parse_policy("a", "path \"kv/x\" { capabilities = [\"read\"] }").unwrap();
        let b = parse_policy("b", "path \"kv/x\" { capabilities = [\"update\"] }").unwrap();
        let c = parse_policy("c", "path \"kv/x\" { capabilities = [\"deny\"] }").unwrap();
        use Capability::*;
        let ab = Acl::new(&[a.clone(), b.clone()]);
        assert!(ask(&ab, "kv/x", Read, &[]) && ask(&ab, "kv/x", Update, &[]));
        let abc = Acl::new(&[a, b, c]);
        assert!(!ask(&abc, "kv/x", Read, &[]));
        assert!(abc.capabilities("kv/x").is_empty());
        assert!(Acl::new(&[Policy { name: "root".into(), rules: vec![] }]).is_root());
    }

    #[test]
    fn parameter_constraints() {
        let p = parse_policy(
            "p",
            r#"
path "eng/role" {
  capabilities = ["update"]
  allowed_parameters = {
    "ttl" = []
    "name" = ["svc-*", "*-admin", "exact"]
  }
  denied_parameters = {
    "name" = ["svc-root"]
  }
  required_parameters = ["name"]
}
path "eng/any" {
  capabilities = ["update"]
  allowed_parameters = { "*" = [] }
  denied_parameters = { "secret" = [] }
}
path "eng/none" {
  capabilities = ["update"]
  denied_parameters = { "*" = [] }
}
"#,
        )
        .unwrap();
        let acl = Acl::new(&[p]);
        use Capability::*;
        assert!(ask(&acl, "eng/role", Update, &[("name", "svc-a"), ("ttl", "whatever")]));
        assert!(ask(&acl, "eng/role", Update, &[("NAME", "db-admin")]), "names are case-insensitive");
        assert!(ask(&acl, "eng/role", Update, &[("name", "exact")]));
        assert!(!ask(&acl, "eng/role", Update, &[("name", "other")]));
        assert!(!ask(&acl, "eng/role", Update, &[("name", "svc-root")]), "denied wins");
        assert!(!ask(&acl, "eng/role", Update, &[("ttl", "1h")]), "name is required");
        assert!(!ask(&acl, "eng/role", Update, &[("name", "svc-a"), ("extra", "1")]));
        assert!(ask(&acl, "eng/any", Update, &[("anything", "1")]));
        assert!(!ask(&acl, "eng/any", Update, &[("secret", "1")]));
        assert!(!ask(&acl, "eng/none", Update, &[]));
        // KV skips parameter checks, as Vault does.
        let kv = Request { path: "eng/role", capability: Update, parameters: &[], check_parameters: false };
        assert_eq!(acl.decide(&kv), Decision::Allowed);
    }

    #[test]
    fn value_globs() {
        assert!(value_matches("*.app.internal", "a.app.internal"));
        assert!(!value_matches("*.app.internal", "a.app.internal.evil"));
        assert!(value_matches("svc-*", "svc-1"));
        assert!(value_matches("*mid*", "a-mid-b"));
        assert!(value_matches("*", "x"));
        assert!(!value_matches("exact", "exact2"));
    }
}
