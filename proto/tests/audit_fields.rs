//! Every field named like a secret is declared secret or plain in
//! `keybridge_proto::audit::FIELDS`, and every declared field exists.

use keybridge_proto::audit::{Audit, FIELDS, audit, named_like_a_secret};
use keybridge_proto::v1 as pb;
use prost::Message;
use prost_types::DescriptorProto;

fn walk(prefix: &str, m: &DescriptorProto, out: &mut Vec<(String, String, bool)>) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        let is_map = f.type_name().ends_with("Entry")
            && m.nested_type.iter().any(|n| n.options.as_ref().is_some_and(|o| o.map_entry()));
        out.push((format!("{name}.{}", f.name()), f.name().to_string(), is_map));
    }
    for n in m.nested_type.iter().filter(|n| !n.options.as_ref().is_some_and(|o| o.map_entry())) {
        walk(&name, n, out);
    }
}

fn fields() -> Vec<(String, String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for file in &set.file {
        for m in &file.message_type {
            walk(file.package(), m, &mut out);
        }
    }
    out
}

#[test]
fn every_field_named_like_a_secret_is_declared() {
    let all = fields();
    assert!(all.len() > 200, "{} fields", all.len());
    let undeclared: Vec<&String> = all
        .iter()
        .filter(|(full, short, _)| named_like_a_secret(short) && audit(full).is_none())
        .map(|f| &f.0)
        .collect();
    assert!(undeclared.is_empty(), "declare these in proto/src/audit.rs, secret or plain: {undeclared:?}");
}

#[test]
fn every_declared_field_exists_and_only_maps_have_secret_keys() {
    let all = fields();
    for (field, how) in FIELDS {
        let found = all.iter().find(|(full, _, _)| full == field);
        let Some((_, _, is_map)) = found else { panic!("{field} is declared but is not a field of the API") };
        if let Audit::SecretKeys(_) = how {
            assert!(is_map, "{field} has secret keys but is not a map");
        }
    }
}

#[test]
fn the_secret_words_are_matched_as_words() {
    for yes in ["token", "root_token", "keys", "unseal_keys_b64", "default_value", "private_key", "credentials"] {
        assert!(named_like_a_secret(yes), "{yes}");
    }
    for no in ["monkey", "path", "tokenizer", "valued", "turnkey"] {
        assert!(!named_like_a_secret(no), "{no}");
    }
}
