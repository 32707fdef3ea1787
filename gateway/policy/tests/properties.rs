//! The policy parser and the path matcher against a saved corpus and
//! bounded generated inputs (proptest, stable Rust): the parser never
//! panics, the matcher agrees with a regular-expression reference, and rule
//! priority is a strict order. Coverage-guided runs of the same properties:
//! gateway/policy/fuzz (cargo-fuzz, nightly).

use keybridge_policy::{Acl, Capability, Param, Pattern, Request, parse_policy};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[test]
fn corpus_never_panics_and_known_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let result = parse_policy("corpus", &text);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        match name.as_str() {
            "origin.hcl" | "legacy-and-params.hcl" => assert!(result.is_ok(), "{name}: {result:?}"),
            _ => assert!(result.is_err(), "{name} should be refused"),
        }
        seen += 1;
    }
    assert!(seen >= 7);
}

/// A reference matcher: the pattern as a regular expression.
fn reference(pattern: &str, path: &str) -> bool {
    let (body, glob) = match pattern.strip_suffix('*') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let mut re = String::from("^");
    for (i, seg) in body.split('/').enumerate() {
        if i > 0 {
            re.push('/');
        }
        if seg == "+" {
            re.push_str("[^/]+");
        } else {
            re.push_str(&regex::escape(seg));
        }
    }
    if glob {
        re.push_str(".*");
    }
    re.push('$');
    regex::Regex::new(&re).unwrap().is_match(path)
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "+", ""]), 1..5), any::<bool>()).prop_map(
        |(segs, glob)| {
            let mut p = segs.join("/");
            if glob {
                p.push('*');
            }
            p
        },
    )
}

/// Paths as Keybridge validates them: no empty segment.
fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "ba"]), 1..6).prop_map(|segs| segs.join("/"))
}

/// Parameter maps over a few keys and values (no globs), as policy text.
fn params_strategy() -> impl Strategy<Value = Option<BTreeMap<String, Vec<String>>>> {
    prop::option::of(prop::collection::btree_map(
        prop::sample::select(vec!["ttl", "name", "TTL"]).prop_map(str::to_string),
        prop::collection::vec(prop::sample::select(vec!["1h", "2h", "a"]).prop_map(str::to_string), 0..3),
        0..3,
    ))
}

fn hcl_map(m: &BTreeMap<String, Vec<String>>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            let vals: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
            format!("{k:?} = [{}]", vals.join(", "))
        })
        .collect();
    format!("{{ {} }}", items.join(", "))
}

fn policy_with(
    name: &str,
    allowed: &Option<BTreeMap<String, Vec<String>>>,
    denied: &Option<BTreeMap<String, Vec<String>>>,
) -> keybridge_policy::Policy {
    let mut text = String::from("path \"e/x\" {\n capabilities = [\"update\"]\n");
    if let Some(a) = allowed {
        text.push_str(&format!(" allowed_parameters = {}\n", hcl_map(a)));
    }
    if let Some(d) = denied {
        text.push_str(&format!(" denied_parameters = {}\n", hcl_map(d)));
    }
    text.push_str("}\n");
    parse_policy(name, &text).unwrap()
}

/// The merge as Vault's documentation states it, written plainly: per
/// lowercased key, a list present in one map is kept; in both, an empty
/// list absorbs, otherwise the lists union.
fn model_merge(maps: &[&Option<BTreeMap<String, Vec<String>>>]) -> Option<BTreeMap<String, Vec<String>>> {
    let mut out: Option<BTreeMap<String, Vec<String>>> = None;
    for m in maps.iter().filter_map(|m| m.as_ref()) {
        let o = out.get_or_insert_with(BTreeMap::new);
        for (k, v) in m {
            let k = k.to_lowercase();
            match o.get_mut(&k) {
                None => {
                    o.insert(k, v.clone());
                }
                Some(e) if e.is_empty() || v.is_empty() => e.clear(),
                Some(e) => e.extend(v.iter().cloned()),
            }
        }
    }
    out
}

/// The decision on one parameter set, from the merged maps.
fn model_allows(
    allowed: &Option<BTreeMap<String, Vec<String>>>,
    denied: &Option<BTreeMap<String, Vec<String>>>,
    params: &[(String, String)],
) -> bool {
    let within = |list: &Vec<String>, v: &str| list.is_empty() || list.iter().any(|x| x == v);
    if let Some(d) = denied.as_ref().filter(|d| !d.is_empty())
        && params.iter().any(|(k, v)| d.get(&k.to_lowercase()).is_some_and(|l| within(l, v)))
    {
        return false;
    }
    if let Some(a) = allowed.as_ref().filter(|a| !a.is_empty()) {
        return params.iter().all(|(k, v)| a.get(&k.to_lowercase()).is_some_and(|l| within(l, v)));
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(text in "\\PC{0,200}") {
        let _ = parse_policy("p", &text);
    }

    #[test]
    fn parser_never_panics_on_mangled_policies(cut in 0usize..400, flip in 0usize..400, byte in any::<u8>()) {
        let origin = include_str!("corpus/origin.hcl");
        let mut bytes = origin.as_bytes()[..cut.min(origin.len())].to_vec();
        if let Some(b) = bytes.get_mut(flip) {
            *b = byte;
        }
        let _ = parse_policy("p", &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn matcher_agrees_with_the_reference(pattern in pattern_strategy(), path in path_strategy()) {
        if let Ok(p) = Pattern::parse(&pattern) {
            prop_assert_eq!(p.matches(&path), reference(p.as_str(), &path), "pattern {:?} path {:?}", pattern, path);
        }
    }

    #[test]
    fn priority_is_a_strict_order(a in pattern_strategy(), b in pattern_strategy()) {
        if let (Ok(p), Ok(q)) = (Pattern::parse(&a), Pattern::parse(&b)) {
            if p != q {
                prop_assert!(p.outranks(&q) != q.outranks(&p), "{:?} vs {:?}", a, b);
            } else {
                prop_assert!(!p.outranks(&q));
            }
        }
    }

    #[test]
    fn decisions_never_panic(pattern in pattern_strategy(), path in "[ab/+*]{0,12}") {
        let text = format!("path \"{pattern}\" {{\n capabilities = [\"read\"]\n}}\n");
        if let Ok(policy) = parse_policy("p", &text) {
            let acl = Acl::new(&[policy]);
            let _ = acl.decide(&Request { path: &path, capability: Capability::Read, parameters: &[], check_parameters: true });
        }
    }

    #[test]
    fn merging_policies_is_commutative_and_matches_the_model(
        a_allowed in params_strategy(), a_denied in params_strategy(),
        b_allowed in params_strategy(), b_denied in params_strategy(),
        params in prop::collection::vec((prop::sample::select(vec!["ttl", "name", "other"]), prop::sample::select(vec!["1h", "2h", "a", "b"])), 0..3),
    ) {
        let a = policy_with("a", &a_allowed, &a_denied);
        let b = policy_with("b", &b_allowed, &b_denied);
        let ab = Acl::new(&[a.clone(), b.clone()]);
        let ba = Acl::new(&[b, a]);
        let pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let typed: Vec<Param<'_>> = pairs.iter().map(|(k, v)| Param::text(k, v)).collect();
        let req = Request { path: "e/x", capability: Capability::Update, parameters: &typed, check_parameters: true };
        let (x, y) = (ab.decide(&req), ba.decide(&req));
        prop_assert_eq!(&x, &y);
        let model = model_allows(&model_merge(&[&a_allowed, &b_allowed]), &model_merge(&[&a_denied, &b_denied]), &pairs);
        prop_assert_eq!(x == keybridge_policy::Decision::Allowed, model, "params {:?}", pairs);
    }

    #[test]
    fn a_granted_folder_grants_every_path_below_it(
        patterns in prop::collection::vec((pattern_strategy(), prop::sample::select(vec![r#""read""#, r#""read", "update""#, r#""deny""#])), 1..5),
        prefix in path_strategy(),
        suffixes in prop::collection::vec(path_strategy(), 1..6),
    ) {
        let mut text = String::new();
        for (p, caps) in &patterns {
            text.push_str(&format!("path \"{p}\" {{\n capabilities = [{caps}]\n}}\n"));
        }
        if let Ok(policy) = parse_policy("p", &text) {
            let acl = Acl::new(&[policy]);
            let folder = format!("{prefix}/");
            if acl.grants_under(&folder, Capability::Read) {
                for s in &suffixes {
                    let path = format!("{folder}{s}");
                    let req = Request { path: &path, capability: Capability::Read, parameters: &[], check_parameters: false };
                    prop_assert_eq!(acl.decide(&req), keybridge_policy::Decision::Allowed, "{} under {}\n{}", path, folder, text);
                }
            }
        }
    }
}
