//! The argument reference (terraform/docs/reference.md), rendered from the
//! schemas the provider serves, so the docs cannot drift from the code. A
//! test compares the file with this rendering; `KEYBRIDGE_UPDATE_DOCS=1
//! cargo test -p terraform-provider-keybridge docs` rewrites it.

use std::fmt::Write;

use crate::resources::{self, Resource};
use crate::schema::{Attr, Mode, Schema, Ty};

fn ty(t: Ty) -> &'static str {
    match t {
        Ty::Str => "string",
        Ty::Bool => "bool",
        Ty::Num => "number",
        Ty::MapStr => "map(string)",
        Ty::ListStr => "list(string)",
    }
}

fn flags(a: &Attr, replaces: bool) -> String {
    let mut f = vec![match a.mode {
        Mode::Required => "required",
        Mode::Optional => "optional",
        Mode::Computed => "read-only",
        Mode::OptionalComputed => "optional (gateway default)",
    }];
    if a.sensitive {
        f.push("sensitive");
    }
    if a.write_only {
        f.push("**write-only** (never in state or plan)");
    }
    if replaces {
        f.push("forces replacement");
    }
    f.join(", ")
}

fn table(out: &mut String, schema: &Schema, replace_on: &[&str]) {
    rows(out, &schema.attrs, replace_on);
    for b in &schema.blocks {
        let _ = writeln!(out, "Block `{}` (at most one): {}\n", b.name, b.description);
        rows(out, &b.attrs, &[]);
    }
}

fn rows(out: &mut String, attrs: &[Attr], replace_on: &[&str]) {
    out.push_str("| Argument | Type | | Description |\n|---|---|---|---|\n");
    for a in attrs {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            a.name,
            ty(a.ty),
            flags(a, replace_on.contains(&a.name)),
            a.description.replace('|', "\\|")
        );
    }
    out.push('\n');
}

fn resource(out: &mut String, r: &dyn Resource) {
    let schema = r.schema();
    let _ = writeln!(out, "## Resource `{}`\n\n{}\n", r.name(), schema.description);
    table(out, &schema, r.replace_on());
    let identity: Vec<String> = r.identity().attrs.iter().map(|(n, _)| format!("{n} = \"…\"")).collect();
    let _ = writeln!(
        out,
        "Import: `terraform import {}.NAME ID`, where ID is {}; or an `import` block with `identity = {{ {} }}` (Terraform 1.12+).\n",
        r.name(),
        r.import_id_help(),
        identity.join(", ")
    );
}

pub fn reference() -> String {
    let mut out = String::from(
        "# Keybridge Terraform provider: argument reference\n\n\
         Generated from the provider's schemas (`terraform/provider/src/docs.rs`); do not edit by hand.\n\n",
    );
    out.push_str("## Provider `keybridge`\n\n");
    table(&mut out, &crate::provider::provider_schema(), &[]);
    for r in resources::resources() {
        resource(&mut out, r.as_ref());
    }
    for d in resources::data_sources() {
        let schema = d.schema();
        let _ = writeln!(out, "## Data source `{}`\n\n{}\n", d.name(), schema.description);
        table(&mut out, &schema, &[]);
    }
    for e in resources::ephemeral_resources() {
        let schema = e.schema();
        let _ = writeln!(
            out,
            "## Ephemeral resource `{}` (Terraform 1.10+)\n\n{}\n\n{}\n",
            e.name(),
            schema.description,
            e.about()
        );
        table(&mut out, &schema, &[]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference.md");
        let want = super::reference();
        if std::env::var_os("KEYBRIDGE_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: run KEYBRIDGE_UPDATE_DOCS=1 cargo test -p terraform-provider-keybridge docs"
        );
    }
}
