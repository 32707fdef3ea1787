//! Checks on the documentation that a reader relies on: the README stays
//! short, every relative link resolves, the API reference names every
//! service and RPC the API defines, and the configuration reference names
//! every mount type.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string(), "ARCHITECTURE.md".into(), "terraform/README.md".into()];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    files
}

#[test]
fn the_readme_is_short() {
    let lines = read("README.md").lines().count();
    assert!(lines <= 260, "README.md has {lines} lines; reference material belongs in docs/");
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        let dir = root().join(&file).parent().unwrap().to_path_buf();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            if !dir.join(target).exists() {
                broken.push(format!("{file}: {target}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_api_reference_names_every_service_and_rpc() {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(keybridge_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let api = read("docs/API.md");
    let mut missing = Vec::new();
    for f in &fds.file {
        for s in &f.service {
            let service = format!("keybridge.v1.{}", s.name());
            if !api.contains(&format!("`{service}`")) {
                missing.push(service);
            }
            for m in &s.method {
                let rpc = format!("`{}.{}`", s.name(), m.name());
                if !api.contains(&rpc) {
                    missing.push(rpc);
                }
            }
        }
    }
    assert!(missing.is_empty(), "docs/API.md does not name: {missing:?}");
}

#[test]
fn the_configuration_reference_names_every_mount_type() {
    let config = read("docs/CONFIGURATION.md");
    for kind in ["local", "aws", "azure", "gcp", "plugin"] {
        assert!(config.contains(&format!("| `{kind}` |")), "docs/CONFIGURATION.md has no row for mount type {kind}");
    }
}
