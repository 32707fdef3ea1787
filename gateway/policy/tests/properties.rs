//! The policy parser and the path matcher against a saved corpus and
//! bounded generated inputs (proptest, stable Rust): the parser never
//! panics, the matcher agrees with a regular-expression reference, and rule
//! priority is a strict order. Coverage-guided runs of the same properties:
//! gateway/policy/fuzz (cargo-fuzz, nightly).

use keybridge_policy::{Acl, Capability, Pattern, Request, parse_policy};
use proptest::prelude::*;

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
}
