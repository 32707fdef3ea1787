//! The PKI engine's root CA and roles, named as in hashicorp/vault with the
//! prefix changed: `keybridge_pki_secret_backend_root_cert` and
//! `keybridge_pki_secret_backend_role`. Through the Logical API, like
//! `keybridge write pki/...`.
//!
//! A root's arguments all replace it (as in hashicorp/vault). Its private
//! key never reaches state: with `type = "exported"` the gateway returns the
//! key once, and the provider drops it, as hashicorp/vault's resource does;
//! take the key with `keybridge write pki/root/generate/exported` instead.

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::logical::{Data, backend, delete_path, import_path, object_path, read_path, refuse_existing, write_path};
use super::{Caps, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::Gateway;
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

/// A certificate's serial number as the engine writes it (colon-separated
/// lower-case hex), from its PEM.
fn serial_of(pem: &str) -> Option<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    Some(cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
}

fn put_str(d: &mut Data, o: &Obj, attr: &str) {
    if let Some(v) = o.get_str(attr) {
        d.insert(attr.into(), Zeroizing::new(v.to_string()));
    }
}

fn put_list(d: &mut Data, o: &Obj, attr: &str) {
    if let Some(v) = o.get_strings(attr) {
        d.insert(attr.into(), Zeroizing::new(super::join_list(&v)));
    }
}

fn put_num(d: &mut Data, o: &Obj, attr: &str) {
    if let Some(v) = o.get_num(attr) {
        d.insert(attr.into(), Zeroizing::new((v as u64).to_string()));
    }
}

fn put_bool(d: &mut Data, o: &Obj, attr: &str) {
    if let Some(v) = o.get_bool(attr) {
        d.insert(attr.into(), Zeroizing::new(v.to_string()));
    }
}

fn check_key(config: &Obj, diags: &mut Diags) {
    if let Some(t) = config.get_str("key_type")
        && !matches!(t, "ec" | "rsa" | "ed25519" | "any")
    {
        diags.push_error("Invalid key_type", "Give `ec`, `rsa` or `ed25519`.", Some(diag::path("key_type")));
    }
    if let Some(b) = config.get_num("key_bits")
        && (b < 0.0 || b.fract() != 0.0 || b > 8192.0)
    {
        diags.push_error(
            "Invalid key_bits",
            "Give 256 or 384 for `ec`, 2048, 3072 or 4096 for `rsa`, or 0 for the default.",
            Some(diag::path("key_bits")),
        );
    }
}

// ---------------------------------------------------------------------------
// keybridge_pki_secret_backend_root_cert

pub struct RootCert;

const ROOT_ARGS: &[&str] = &[
    "backend",
    "type",
    "common_name",
    "alt_names",
    "ip_sans",
    "ttl",
    "format",
    "private_key_format",
    "key_type",
    "key_bits",
    "max_path_length",
    "exclude_cn_from_sans",
    "ou",
    "organization",
];

#[async_trait]
impl Resource for RootCert {
    fn name(&self) -> &'static str {
        "keybridge_pki_secret_backend_root_cert"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "The root CA of a PKI mount (`pki/root/generate/<type>`): a self-signed certificate \
                          whose key stays in the gateway. Every argument replaces it. As \
                          `vault_pki_secret_backend_root_cert`; destroying it deletes the mount's CA \
                          (`DELETE pki/root`).",
            attrs: vec![
                attr("backend", Ty::Str, Mode::Required, "The PKI mount (`pki`)."),
                attr(
                    "type",
                    Ty::Str,
                    Mode::Required,
                    "`internal`, or `exported` (the gateway returns the key once; the provider keeps nothing \
                     of it).",
                ),
                attr("common_name", Ty::Str, Mode::Required, "The CA's common name."),
                attr("alt_names", Ty::ListStr, Mode::Optional, "DNS subject alternative names."),
                attr("ip_sans", Ty::ListStr, Mode::Optional, "IP subject alternative names."),
                attr("ttl", Ty::Str, Mode::Optional, "Its lifetime (`87600h`, or seconds; default 87600h)."),
                attr("format", Ty::Str, Mode::Optional, "`pem` (the only format)."),
                attr("private_key_format", Ty::Str, Mode::Optional, "`der` or `pkcs8` (for `exported`)."),
                attr("key_type", Ty::Str, Mode::Optional, "`ec` (default, P-256), `rsa` or `ed25519`."),
                attr("key_bits", Ty::Num, Mode::Optional, "256/384 (ec), 2048/3072/4096 (rsa); 0: the default."),
                attr("max_path_length", Ty::Num, Mode::Optional, "The CA's path length constraint (-1: none)."),
                attr("exclude_cn_from_sans", Ty::Bool, Mode::Optional, "Leave the common name out of the SANs."),
                attr("ou", Ty::Str, Mode::Optional, "The subject's organizational unit."),
                attr("organization", Ty::Str, Mode::Optional, "The subject's organization."),
                attr("certificate", Ty::Str, Mode::Computed, "The CA certificate (PEM)."),
                attr("issuing_ca", Ty::Str, Mode::Computed, "The issuing CA (PEM; itself)."),
                attr("serial_number", Ty::Str, Mode::Computed, "Its serial number (colon-separated hex)."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The PKI mount.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        ROOT_ARGS
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "backend", "mount path", diags);
        if let Some(t) = config.get_str("type")
            && !matches!(t, "internal" | "exported")
        {
            diags.push_error("Invalid type", "Give `internal` or `exported`.", Some(diag::path("type")));
        }
        if let Some(f) = config.get_str("format")
            && f != "pem"
        {
            diags.push_error("Unsupported format", "Keybridge returns PEM: give `pem`.", Some(diag::path("format")));
        }
        check_key(config, diags);
    }

    fn import_id_help(&self) -> &'static str {
        "not importable: a root's arguments are not all readable back; generate it with Terraform"
    }

    fn import(&self, _id: &str) -> Result<Obj, Diags> {
        Err(Diags::error(
            "keybridge_pki_secret_backend_root_cert cannot be imported",
            "Its arguments (TTL, key settings) cannot be read back from the certificate exactly; manage a CA \
             made outside Terraform with the CLI, or delete it and let Terraform generate one.",
        ))
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let Some(r) = read_path(gw, &format!("{}/ca/pem", backend(prior)), "CA certificate").await? else {
            return Ok(None);
        };
        let pem = r.get("certificate").cloned().unwrap_or_default();
        if pem.trim().is_empty() {
            return Ok(None);
        }
        // Another CA put in its place (outside Terraform) is not this one.
        let serial = serial_of(&pem);
        if let (Some(had), Some(now)) = (prior.get_str("serial_number"), serial.as_deref())
            && had != now
        {
            return Ok(None);
        }
        let mut out = prior.clone();
        out.insert("certificate".into(), Val::str(pem.as_str()));
        out.insert("issuing_ca".into(), Val::str(pem.as_str()));
        out.insert("serial_number".into(), serial.map_or(Val::Null, Val::str));
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        let b = backend(planned);
        if let Some(r) = read_path(gw, &format!("{b}/ca/pem"), "CA certificate").await?
            && r.get("certificate").is_some_and(|c| !c.trim().is_empty())
        {
            return Err(Diags::error_at(
                "backend",
                "The mount has a CA already",
                format!("{b} has a CA; delete it (`keybridge delete {b}/root`) to generate one with Terraform."),
            ));
        }
        let mut d = Data::new();
        put_str(&mut d, planned, "common_name");
        put_list(&mut d, planned, "alt_names");
        put_list(&mut d, planned, "ip_sans");
        put_str(&mut d, planned, "ttl");
        put_str(&mut d, planned, "format");
        put_str(&mut d, planned, "private_key_format");
        put_str(&mut d, planned, "key_type");
        put_num(&mut d, planned, "key_bits");
        if let Some(v) = planned.get_num("max_path_length") {
            d.insert("max_path_length".into(), Zeroizing::new((v as i64).to_string()));
        }
        put_bool(&mut d, planned, "exclude_cn_from_sans");
        put_str(&mut d, planned, "ou");
        put_str(&mut d, planned, "organization");
        let ty = planned.get_str("type").unwrap_or("internal");
        // The response of `exported` holds the private key: it is dropped
        // here, with the response.
        write_path(gw, &format!("{b}/root/generate/{ty}"), d, "root CA").await?;
        Ok(Private::new())
    }

    async fn update(&self, _: &Gateway, _: &Obj, _: &Obj, _: &Obj, _: &Private) -> Result<Private, Diags> {
        // Every argument replaces the CA: there is nothing to update.
        Ok(Private::new())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        delete_path(gw, &format!("{}/root", backend(prior)), "root CA").await
    }
}

// ---------------------------------------------------------------------------
// keybridge_pki_secret_backend_role

pub struct Role;

/// Flags with the engine's defaults: left out, they read back as the
/// engine has them (optional and computed).
const ROLE_FLAGS: &[(&str, &str)] = &[
    ("allow_localhost", "Allow `localhost` and `localdomain` (default true)."),
    ("allow_bare_domains", "Allow an allowed domain itself (default false)."),
    ("allow_subdomains", "Allow names under an allowed domain (default false)."),
    ("allow_glob_domains", "Allowed domains with `*` are globs (default false)."),
    ("allow_wildcard_certificates", "Allow wildcard names such as `*.example.com` (default true)."),
    ("allow_any_name", "Allow any name (default false)."),
    ("enforce_hostnames", "Names must be host names (default true)."),
    ("allow_ip_sans", "Allow IP SANs (default true)."),
    ("server_flag", "Extended key usage serverAuth (default true)."),
    ("client_flag", "Extended key usage clientAuth (default true)."),
    ("code_signing_flag", "Extended key usage codeSigning (default false)."),
    ("email_protection_flag", "Extended key usage emailProtection (default false)."),
    ("use_csr_common_name", "`sign` takes the CSR's common name (default true)."),
    ("use_csr_sans", "`sign` takes the CSR's SANs (default true)."),
    ("no_store", "Keep nothing per certificate (default false)."),
    ("generate_lease", "Put each certificate under a lease (default false)."),
];

#[async_trait]
impl Resource for Role {
    fn name(&self) -> &'static str {
        "keybridge_pki_secret_backend_role"
    }

    fn schema(&self) -> Schema {
        let mut attrs = vec![
            attr("backend", Ty::Str, Mode::Required, "The PKI mount (`pki`). Changing it replaces the role."),
            attr("name", Ty::Str, Mode::Required, "The role's name. Changing it replaces the role."),
            attr(
                "allowed_domains",
                Ty::ListStr,
                Mode::Optional,
                "Domains the names must match (see the `allow_*` flags).",
            ),
            attr("ttl", Ty::Str, Mode::OptionalComputed, "The certificates' TTL in seconds (default 768h)."),
            attr("max_ttl", Ty::Str, Mode::OptionalComputed, "The longest TTL a request may ask, in seconds."),
            attr("key_type", Ty::Str, Mode::OptionalComputed, "`ec` (default), `rsa`, `ed25519`, or `any` (sign)."),
            attr("key_bits", Ty::Num, Mode::OptionalComputed, "The key size; 0: the key type's default."),
            attr("organization", Ty::ListStr, Mode::Optional, "The certificates' organization."),
            attr("ou", Ty::ListStr, Mode::Optional, "The certificates' organizational unit."),
        ];
        attrs.extend(ROLE_FLAGS.iter().map(|(n, d)| attr(n, Ty::Bool, Mode::OptionalComputed, d)));
        Schema {
            version: 0,
            description: "A role of a PKI mount (`pki/roles/<name>`): which names, keys and lifetimes its \
                          certificates get, with Vault's name rules. As `vault_pki_secret_backend_role`.",
            attrs,
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("backend", "The PKI mount."), ("name", "The role's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["backend", "name"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "backend", "mount path", diags);
        super::check_segment(config, "name", "role name", diags);
        check_key(config, diags);
    }

    fn import_id_help(&self) -> &'static str {
        "`<backend>/roles/<name>`: `pki/roles/app-tls`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        import_path(id, "roles", self.import_id_help())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let Some(r) = read_path(gw, &object_path(prior, "roles"), "PKI role").await? else { return Ok(None) };
        let get = |k: &str| r.get(k).cloned().unwrap_or_default();
        let list = |k: &str| {
            let items = super::split_list(&get(k));
            if items.is_empty() && prior.val(k).is_null() { Val::Null } else { Val::from_strings(items) }
        };
        let mut out = Obj::new();
        out.insert("backend".into(), prior.val("backend").clone());
        out.insert("name".into(), prior.val("name").clone());
        for k in ["allowed_domains", "organization", "ou"] {
            out.insert(k.into(), list(k));
        }
        // TTLs are kept in the configuration's form when they mean the
        // same number of seconds.
        for k in ["ttl", "max_ttl"] {
            let remote = get(k);
            let same = prior.get_str(k).and_then(keybridge_policy::parse_duration).map(|s| s.to_string());
            out.insert(
                k.into(),
                if same.as_deref() == Some(remote.as_str()) { prior.val(k).clone() } else { Val::str(remote) },
            );
        }
        out.insert("key_type".into(), Val::str(get("key_type")));
        out.insert("key_bits".into(), get("key_bits").parse::<f64>().map_or(Val::Null, Val::Num));
        for (k, _) in ROLE_FLAGS {
            out.insert((*k).into(), Val::Bool(get(k) == "true"));
        }
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        let path = object_path(planned, "roles");
        refuse_existing(gw, &path, "PKI role").await?;
        write_path(gw, &path, role_body(planned), "PKI role").await?;
        Ok(Private::new())
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, _: &Private) -> Result<Private, Diags> {
        write_path(gw, &object_path(planned, "roles"), role_body(planned), "PKI role").await?;
        Ok(Private::new())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        delete_path(gw, &object_path(prior, "roles"), "PKI role").await
    }
}

/// The role's settings: lists always (an empty one clears), the rest when
/// known (left out, the engine keeps or defaults them).
fn role_body(planned: &Obj) -> Data {
    let mut d = Data::new();
    for k in ["allowed_domains", "organization", "ou"] {
        d.insert(k.into(), Zeroizing::new(super::join_list(&planned.get_strings(k).unwrap_or_default())));
    }
    put_str(&mut d, planned, "ttl");
    put_str(&mut d, planned, "max_ttl");
    put_str(&mut d, planned, "key_type");
    put_num(&mut d, planned, "key_bits");
    for (k, _) in ROLE_FLAGS {
        put_bool(&mut d, planned, k);
    }
    d
}

#[cfg(test)]
mod tests {
    #[test]
    fn import_ids_name_the_mount_and_the_role() {
        use super::Resource;
        let Ok(o) = super::Role.import("pki/int/roles/app-tls") else { panic!("refused") };
        use crate::value::ObjExt;
        assert_eq!((o.get_str("backend"), o.get_str("name")), (Some("pki/int"), Some("app-tls")));
        assert!(super::Role.import("pki/app-tls").is_err());
        assert!(super::RootCert.import("pki").is_err());
    }
}
