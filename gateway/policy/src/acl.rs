//! The ACL: a token's policies merged, and the decision for one request.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::{Capability, Pattern, Policy};

/// Rules for one pattern, merged across policies.
#[derive(Clone, Debug)]
struct Rule {
    pattern: Pattern,
    capabilities: BTreeSet<Capability>,
    allowed: Option<ParamMap>,
    denied: Option<ParamMap>,
    required: BTreeSet<String>,
}

type ParamMap = BTreeMap<String, Vec<String>>;

/// Merges parameter maps as Vault does (`vault/acl.go`): keys union; a key
/// in only one of the maps keeps that map's list; for a key in both, an
/// empty list (any value) absorbs the other, otherwise the lists union. A
/// rule without the map at all adds no constraint and removes none.
fn merge_params(a: Option<ParamMap>, b: &Option<ParamMap>) -> Option<ParamMap> {
    match (a, b) {
        (a, None) => a,
        (a, Some(b)) => {
            let mut into = a.unwrap_or_default();
            merge_into(&mut into, b);
            Some(into)
        }
    }
}

/// Adds `from`'s lists into `into`, by lowercased key (parameter names are
/// case-insensitive); lists are kept sorted, so the merge's result does not
/// depend on the order of policies.
fn merge_into(into: &mut ParamMap, from: &ParamMap) {
    use std::collections::btree_map::Entry;
    for (k, v) in from {
        match into.entry(k.to_lowercase()) {
            Entry::Vacant(slot) => {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                slot.insert(v);
            }
            Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if entry.is_empty() || v.is_empty() {
                    entry.clear();
                } else {
                    entry.extend(v.iter().cloned());
                    entry.sort();
                    entry.dedup();
                }
            }
        }
    }
}

/// How the engine behind a path reads a parameter. Denied values are
/// checked on the value the engine will use, not only on the string the
/// caller sent: a denied `768h` is denied as `32d` too, a denied `true` as
/// `1`. Allowed values are matched as the strings sent, as Vault matches
/// them (an allowed `24h` admits no `1440m`). Every item of a
/// comma-separated list is checked on its own, both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueKind {
    #[default]
    Text,
    Int,
    Bool,
    /// Seconds, or a duration with units (`90s`, `15m`, `1h30m`, `2d`).
    Duration,
    /// Comma-separated items, each checked on its own.
    List,
}

/// Seconds, or a duration with units (s, m, h, d, ...).
pub fn parse_duration(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    humantime::parse_duration(v).ok().map(|d| d.as_secs())
}

impl ValueKind {
    /// The value as the engine reads it (durations in seconds, booleans
    /// `true`/`false`, whole numbers without signs or padding); `None` if it
    /// does not parse as this kind. Text and lists are kept as they are.
    pub fn canonical(self, v: &str) -> Option<String> {
        match self {
            ValueKind::Text | ValueKind::List => Some(v.to_string()),
            ValueKind::Int => v.trim().parse::<i64>().ok().map(|n| n.to_string()),
            ValueKind::Bool => match v.trim() {
                "true" | "1" => Some("true".into()),
                "false" | "0" => Some("false".into()),
                _ => None,
            },
            ValueKind::Duration => parse_duration(v).map(|d| d.to_string()),
        }
    }

    /// The items a constraint is checked against.
    fn items(self, v: &str) -> Vec<String> {
        match self {
            ValueKind::List => {
                let items: Vec<String> =
                    v.split(',').map(str::trim).filter(|i| !i.is_empty()).map(str::to_string).collect();
                if items.is_empty() { vec![String::new()] } else { items }
            }
            ValueKind::Text => vec![v.to_string()],
            k => vec![k.canonical(v).unwrap_or_else(|| v.trim().to_string())],
        }
    }

    /// The items as sent, for allowed values: a list's items, anything
    /// else the whole string.
    fn sent_items(self, v: &str) -> Vec<String> {
        match self {
            ValueKind::List => ValueKind::List.items(v),
            _ => vec![v.to_string()],
        }
    }

    /// Whether a policy's list entry admits `item` (already canonical): a
    /// typed entry compares by value, anything else as Vault's glob.
    fn admits(self, entry: &str, item: &str) -> bool {
        match self {
            ValueKind::Text | ValueKind::List => value_matches(entry, item),
            k => match k.canonical(entry) {
                Some(c) => c == item,
                None => value_matches(entry, item),
            },
        }
    }
}

/// One request parameter, with how its engine reads it.
#[derive(Clone, Copy, Debug)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: &'a str,
    pub kind: ValueKind,
}

impl<'a> Param<'a> {
    pub fn text(name: &'a str, value: &'a str) -> Self {
        Param { name, value, kind: ValueKind::Text }
    }
}

/// What is asked: a capability on a path, with the request's parameters
/// (checked against parameter constraints only when `check_parameters`:
/// Vault skips them for KV).
pub struct Request<'a> {
    pub path: &'a str,
    pub capability: Capability,
    pub parameters: &'a [Param<'a>],
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

fn value_in(list: &[String], kind: ValueKind, item: &str) -> bool {
    list.is_empty() || list.iter().any(|a| kind.admits(a, item))
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

    /// Whether `cap` is granted on every path that starts with `prefix` (a
    /// folder, with its `/`): a rule ending in `*` covers the whole folder
    /// and grants `cap`, and so does every rule that may apply to some path
    /// below it and would outrank that one there. Parameter constraints are
    /// not consulted (the folders of replication rules are KV paths).
    pub fn grants_under(&self, prefix: &str, cap: Capability) -> bool {
        if self.root {
            return true;
        }
        let grants = |r: &Rule| !r.capabilities.contains(&Capability::Deny) && r.capabilities.contains(&cap);
        let covering = self
            .wildcard
            .iter()
            .filter(|r| r.pattern.is_glob() && r.pattern.matches(prefix))
            .reduce(|best, r| if r.pattern.outranks(&best.pattern) { r } else { best });
        let Some(covering) = covering else { return false };
        grants(covering)
            && self
                .exact
                .values()
                .chain(self.wildcard.iter())
                .filter(|r| r.pattern.outranks(&covering.pattern) && r.pattern.may_match_under(prefix))
                .all(grants)
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
        let params: Vec<(String, Vec<String>, ValueKind)> =
            req.parameters.iter().map(|p| (p.name.to_lowercase(), p.kind.items(p.value), p.kind)).collect();
        // Allowed values are matched as the strings sent, as Vault matches
        // them (`1440m` is not an allowed `24h`); denied ones by the value
        // the engine reads too (a denied `768h` is denied as `32d`). Both
        // are at least as strict as Vault, and comma lists item by item.
        let sent: Vec<(String, Vec<String>)> =
            req.parameters.iter().map(|p| (p.name.to_lowercase(), p.kind.sent_items(p.value))).collect();
        for r in &rule.required {
            if !params.iter().any(|(k, _, _)| k == r) {
                return denied(&format!(" without the required parameter {r:?}"));
            }
        }
        if let Some(denied_params) = rule.denied.as_ref().filter(|d| !d.is_empty()) {
            if denied_params.contains_key("*") {
                return denied(" with any parameters");
            }
            for (k, items, kind) in &params {
                if let Some(list) = denied_params.get(k)
                    && items.iter().any(|i| value_in(list, *kind, i))
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
            for (k, items) in &sent {
                match allowed.get(k) {
                    None if !allow_all => return denied(&format!(" with parameter {k:?}")),
                    None => {}
                    Some(list)
                        if !items.iter().all(|i| list.is_empty() || list.iter().any(|a| value_matches(a, i))) =>
                    {
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
        let params: Vec<Param<'_>> = params.iter().map(|(k, v)| Param::text(k, v)).collect();
        acl.decide(&Request { path, capability: cap, parameters: &params, check_parameters: true }) == Decision::Allowed
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
    #[test]
    fn a_key_in_only_one_policy_keeps_its_list_in_either_order() {
        // The issue's case: A constrains ttl, B common_name, on one path.
        let a = parse_policy(
            "a",
            "path \"pki/issue/app\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"ttl\" = [\"1h\"] }\n}",
        )
        .unwrap();
        let b = parse_policy(
            "b",
            "path \"pki/issue/app\" {\n capabilities = [\"update\"]\n allowed_parameters = { \"common_name\" = [\"*.app.internal\"] }\n}",
        )
        .unwrap();
        use Capability::*;
        for acl in [Acl::new(&[a.clone(), b.clone()]), Acl::new(&[b, a])] {
            assert!(ask(&acl, "pki/issue/app", Update, &[("common_name", "web.app.internal"), ("ttl", "1h")]));
            assert!(!ask(&acl, "pki/issue/app", Update, &[("common_name", "evil.com")]), "common_name stays bound");
            assert!(!ask(&acl, "pki/issue/app", Update, &[("ttl", "48h")]), "ttl stays bound");
        }
    }

    #[test]
    fn denied_and_required_parameters_merge_the_same_way() {
        let a = parse_policy(
            "a",
            "path \"e/x\" {\n capabilities = [\"update\"]\n denied_parameters = { \"ttl\" = [\"768h\"] }\n}",
        )
        .unwrap();
        let b = parse_policy(
            "b",
            "path \"e/x\" {\n capabilities = [\"update\"]\n denied_parameters = { \"admin\" = [\"true\"] }\n required_parameters = [\"name\"]\n}",
        )
        .unwrap();
        use Capability::*;
        for acl in [Acl::new(&[a.clone(), b.clone()]), Acl::new(&[b, a])] {
            assert!(ask(&acl, "e/x", Update, &[("name", "n")]));
            assert!(!ask(&acl, "e/x", Update, &[("name", "n"), ("ttl", "768h")]));
            assert!(!ask(&acl, "e/x", Update, &[("name", "n"), ("admin", "true")]));
            assert!(!ask(&acl, "e/x", Update, &[("ttl", "1h")]), "name is still required");
        }
    }

    fn ask_typed(acl: &Acl, path: &str, params: &[Param<'_>]) -> bool {
        acl.decide(&Request { path, capability: Capability::Update, parameters: params, check_parameters: true })
            == Decision::Allowed
    }

    #[test]
    fn constraints_apply_to_the_values_the_engine_reads() {
        let p = parse_policy(
            "p",
            r#"path "pki/issue/app" {
  capabilities = ["update"]
  allowed_parameters = { "alt_names" = ["*.app.internal"], "ttl" = [], "exportable" = [] }
  denied_parameters = { "ttl" = ["768h"], "exportable" = ["true"] }
}"#,
        )
        .unwrap();
        let acl = Acl::new(&[p]);
        let list = |v| Param { name: "alt_names", value: v, kind: ValueKind::List };
        let ttl = |v| Param { name: "ttl", value: v, kind: ValueKind::Duration };
        let flag = |v| Param { name: "exportable", value: v, kind: ValueKind::Bool };
        assert!(ask_typed(&acl, "pki/issue/app", &[list("a.app.internal, b.app.internal")]));
        assert!(!ask_typed(&acl, "pki/issue/app", &[list("evil.com,web.app.internal")]), "every item is checked");
        assert!(!ask_typed(&acl, "pki/issue/app", &[list("web.app.internal,evil.com")]));
        assert!(ask_typed(&acl, "pki/issue/app", &[ttl("24h")]));
        assert!(!ask_typed(&acl, "pki/issue/app", &[ttl("768h")]));
        assert!(!ask_typed(&acl, "pki/issue/app", &[ttl("32d")]), "the same duration in other units");
        assert!(!ask_typed(&acl, "pki/issue/app", &[ttl("2764800")]), "the same duration in seconds");
        assert!(ask_typed(&acl, "pki/issue/app", &[flag("false")]));
        assert!(!ask_typed(&acl, "pki/issue/app", &[flag("true")]));
        assert!(!ask_typed(&acl, "pki/issue/app", &[flag("1")]), "1 is true to the engine");
        // Untyped parameters compare as text, as before.
        assert!(ask_typed(&acl, "pki/issue/app", &[Param::text("ttl", "32d")]));
    }

    #[test]
    fn allowed_values_match_as_sent_as_in_vault() {
        let p = parse_policy(
            "origin",
            r#"path "pki/issue/app-tls" {
  capabilities = ["update"]
  allowed_parameters = { "common_name" = ["*.app.internal"], "ttl" = ["24h"], "alt_names" = ["*.app.internal"] }
}"#,
        )
        .unwrap();
        let acl = Acl::new(&[p]);
        let ttl = |v| Param { name: "ttl", value: v, kind: ValueKind::Duration };
        let list = |v| Param { name: "alt_names", value: v, kind: ValueKind::List };
        assert!(ask_typed(&acl, "pki/issue/app-tls", &[ttl("24h")]));
        assert!(!ask_typed(&acl, "pki/issue/app-tls", &[ttl("1440m")]), "the same duration, another string");
        assert!(!ask_typed(&acl, "pki/issue/app-tls", &[ttl("86400")]));
        assert!(ask_typed(&acl, "pki/issue/app-tls", &[list("a.app.internal,b.app.internal")]));
        assert!(!ask_typed(&acl, "pki/issue/app-tls", &[list("evil.com,web.app.internal")]), "item by item");
    }

    #[test]
    fn a_folder_is_granted_only_when_everything_below_it_is() {
        let p = parse_policy(
            "p",
            r#"
path "secret/data/*" { capabilities = ["read"] }
path "secret/data/team/*" { capabilities = ["read", "update"] }
path "secret/data/team/locked" { capabilities = ["deny"] }
path "secret/data/+/shared/*" { capabilities = ["read", "update"] }
path "kv/data/app/x" { capabilities = ["read"] }
"#,
        )
        .unwrap();
        let acl = Acl::new(&[p]);
        use Capability::*;
        // The deny on team/locked decides a path below secret/data/.
        assert!(!acl.grants_under("secret/data/", Read));
        assert!(acl.grants_under("secret/data/other/", Read));
        assert!(!acl.grants_under("secret/data/other/", Update));
        assert!(!acl.grants_under("secret/data/team/", Read));
        assert!(!acl.grants_under("secret/data/team/", Update));
        assert!(acl.grants_under("secret/data/team/sub/", Update));
        // `secret/data/*` outranks `secret/data/+/shared/*` (fewer `+`), so
        // the folder is read-only, as each path in it is.
        assert!(!acl.grants_under("secret/data/eng/shared/", Update));
        assert!(!ask(&acl, "secret/data/eng/shared/x", Update, &[]));
        // An exact rule covers no folder.
        assert!(!acl.grants_under("kv/data/app/", Read));
        assert!(Acl::root().grants_under("anything/", Sudo));
    }
}
