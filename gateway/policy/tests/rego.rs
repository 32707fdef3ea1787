//! The origin document's Rego module, unchanged, against the origin
//! policy and against roles; v1 modules; malformed modules.

use std::collections::BTreeMap;

use keybridge_policy::parse_policy;
use keybridge_policy::rego::{RegoModule, role_input, rule_inputs};

const ORIGIN_REGO: &str = include_str!("rego/origin.rego");
const ORIGIN_HCL: &str = include_str!("corpus/origin.hcl");

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_origin_module_runs_unchanged_as_opa_evaluates_it() {
    let m = RegoModule::parse("origin.rego", ORIGIN_REGO).unwrap();
    assert_eq!(m.syntax, "v0");
    let policy = parse_policy("app-service", ORIGIN_HCL).unwrap();
    let inputs = rule_inputs(&policy, "app-service.hcl", ORIGIN_HCL);
    assert_eq!(inputs.len(), 4);
    assert_eq!(inputs[2]["line"], 7);
    assert_eq!(inputs[3]["path"], "*");
    // Policy rules carry no ttl, so the TTL rule reports each of them; the
    // `*` rule denies, so the wildcard rule does not fire; no sudo anywhere.
    for input in &inputs {
        assert_eq!(m.deny(input).unwrap(), vec!["all dynamic secret roles must define a TTL"]);
    }
    // A role with a TTL passes; one without is reported.
    let with_ttl = role_input("kubernetes", "app-service", &settings(&[("ttl", "1h"), ("policies", "app-service")]));
    assert!(m.deny(&with_ttl).unwrap().is_empty());
    let without = role_input("kubernetes", "app-service", &settings(&[("policies", "app-service")]));
    assert_eq!(m.deny(&without).unwrap(), vec!["all dynamic secret roles must define a TTL"]);
    // Sudo and an open wildcard are caught.
    let bad = parse_policy("bad", "path \"*\" { capabilities = [\"read\", \"sudo\"] }").unwrap();
    let mut msgs = m.deny(&rule_inputs(&bad, "bad.hcl", "")[0]).unwrap();
    msgs.sort();
    assert_eq!(
        msgs,
        vec![
            "all dynamic secret roles must define a TTL",
            "sudo capabilities are prohibited in production policies",
            "wildcard paths must explicitly deny access",
        ]
    );
}

#[test]
fn v1_modules_scope_rules_by_kind() {
    let m = RegoModule::parse("scoped.rego", include_str!("rego/scoped-v1.rego")).unwrap();
    assert_eq!(m.syntax, "v1");
    let policy = parse_policy("p", ORIGIN_HCL).unwrap();
    for input in rule_inputs(&policy, "p.hcl", ORIGIN_HCL) {
        assert!(m.deny(&input).unwrap().is_empty());
    }
    let role = role_input("jwt", "deploy", &settings(&[("policies", "deploy")]));
    assert_eq!(m.deny(&role).unwrap(), vec!["role deploy must define a TTL"]);
}

#[test]
fn malformed_modules_say_where() {
    let e = RegoModule::parse("broken.rego", "package x\ndeny[msg] {\n  msg := \n}\n").unwrap_err().to_string();
    let at = e.split("broken.rego:").nth(1).unwrap_or_else(|| panic!("no file:line:col in {e}"));
    let line: String = at.chars().take_while(char::is_ascii_digit).collect();
    let col: String = at[line.len() + 1..].chars().take_while(char::is_ascii_digit).collect();
    assert!(!line.is_empty() && !col.is_empty() && at[line.len()..].starts_with(':'), "{e}");
}
