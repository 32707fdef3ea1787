//! The built-in `pki` secrets engine: a CA per mount, roles, certificates
//! and a CRL, with Vault's paths (docs/PKI.md).
//!
//! - CA: `root/generate/{internal|exported}` (a self-signed root),
//!   `intermediate/generate/{internal|exported}` (a key and a CSR) then
//!   `intermediate/set-signed`, `config/ca` (import a PEM bundle),
//!   `root/sign-intermediate` (sign another CA's CSR), `root` (delete);
//!   read back at `ca` (DER, base64), `ca/pem`, `ca_chain`.
//! - `config/urls` (AIA and CDP URLs put into issued certificates),
//!   `config/crl` (the CRL's validity).
//! - `roles/<name>`: which names (Vault's rules, [`names`]), key type and
//!   size, TTLs, key usages, `no_store`, `generate_lease`.
//! - `issue/<role>` (a key and a certificate), `sign/<role>` (a CSR),
//!   `cert/<serial>`, `certs`.
//! - `revoke`, `crl` (DER, base64), `crl/pem`, `crl/rotate`, `tidy`.
//!
//! State, all through the mount's `EngineStorage`: `ca` (certificate, key,
//! parents), `ca-pending` (an intermediate's key before set-signed),
//! `config/urls`, `config/crl`, `roles/<name>`, `certs/<serial>` (each
//! issued certificate unless its role says `no_store`), `crl` (the
//! revoked list and the signed CRL: one value) and `revoked/<serial>`
//! (each revocation on its own, see [`crl`]).

mod ca;
mod crl;
mod keys;
mod names;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use keybridge_core::plugins::{
    BuiltinEngines, CallContext, EngineError, EngineInfo, EngineRequest, EngineResponse, EngineStorage, Field,
    FieldKind, LeaseInfo, LeaseRequest, LeaseTerms, Operation, Params, PasswordPolicies, PathInfo, PluginEngine,
    PublicRead,
};
use rcgen::ExtendedKeyUsagePurpose;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ca::{Ca, PathLen, Pending, Spec, StoredCa, Urls};
use crate::crl::{CrlConfig, CrlState, Revoked};
use crate::keys::KeyType;
use crate::names::{CsrNames, NameRules, Requested};

/// The mount type.
pub const KIND: &str = "pki";

/// A certificate's TTL when neither the request nor the role gives one,
/// and its longest TTL when the role gives no `max_ttl` (Vault's system
/// defaults, 32 days: the engine does not see the mount's lease TTLs).
pub const DEFAULT_TTL: u64 = 768 * 3600;
/// A root's TTL when `root/generate` gives none: ten years.
pub const ROOT_TTL: u64 = 87_600 * 3600;
/// An intermediate's TTL when `root/sign-intermediate` gives none: five years.
pub const INTERMEDIATE_TTL: u64 = 43_800 * 3600;
/// A certificate whose notAfter is at most this many seconds from now is
/// treated as expired when revoked: it gets no CRL entry. A leased
/// certificate's lease ends at its notAfter, and the revocation the lease
/// worker makes then must not fill the CRL.
const EXPIRY_SKEW: i64 = 60;
/// `crl/rotate` re-signs the CRL at most this often (seconds); within it
/// the call returns the current CRL unchanged.
const ROTATE_MIN_INTERVAL: i64 = 60;
/// The longest TTL anything takes (a hundred years).
const MAX_ANY_TTL: u64 = 876_000 * 3600;
/// The largest PEM input (a CSR, a bundle, a certificate).
const MAX_PEM_BYTES: usize = 64 * 1024;
/// At most this many alternative names (and IP SANs) per certificate.
const MAX_NAMES: usize = 100;
/// At most this many `allowed_domains` per role.
const MAX_ALLOWED_DOMAINS: usize = 1000;
/// At most this many URLs of each kind in `config/urls`.
const MAX_URLS: usize = 16;

/// The PKI engine this build has, as the core's [`BuiltinEngines`].
#[derive(Clone, Debug, Default)]
pub struct Builtins;

#[async_trait::async_trait]
impl BuiltinEngines for Builtins {
    fn kinds(&self) -> Vec<&'static str> {
        vec![KIND]
    }

    fn validate(&self, _kind: &str, config: &BTreeMap<String, String>) -> Result<(), String> {
        match config.keys().next() {
            Some(k) => Err(format!(
                "a pki mount takes no config key {k:?} (only default_lease_ttl and max_lease_ttl); configure it at <mount>/config/urls, <mount>/config/crl and <mount>/roles/<name>"
            )),
            None => Ok(()),
        }
    }

    async fn open(
        &self,
        _kind: &str,
        _config: &BTreeMap<String, String>,
        storage: Arc<dyn EngineStorage>,
        _passwords: Arc<dyn PasswordPolicies>,
    ) -> Result<Arc<dyn PluginEngine>, EngineError> {
        Ok(Arc::new(PkiEngine { storage, info: info(), writes: tokio::sync::Mutex::new(()) }))
    }
}

/// A role: which names, keys and lifetimes its certificates get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Role {
    rules: NameRules,
    allow_ip_sans: bool,
    server_flag: bool,
    client_flag: bool,
    code_signing_flag: bool,
    email_protection_flag: bool,
    key_type: KeyType,
    key_bits: u32,
    /// Seconds; 0: [`DEFAULT_TTL`].
    ttl: u64,
    /// Seconds; 0: [`DEFAULT_TTL`].
    max_ttl: u64,
    organization: Vec<String>,
    ou: Vec<String>,
    use_csr_common_name: bool,
    use_csr_sans: bool,
    no_store: bool,
    generate_lease: bool,
}

impl Role {
    fn ext_key_usages(&self) -> Vec<ExtendedKeyUsagePurpose> {
        let mut out = Vec::new();
        if self.server_flag {
            out.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if self.client_flag {
            out.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if self.code_signing_flag {
            out.push(ExtendedKeyUsagePurpose::CodeSigning);
        }
        if self.email_protection_flag {
            out.push(ExtendedKeyUsagePurpose::EmailProtection);
        }
        out
    }
}

/// An issued certificate as stored (`certs/<serial>`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCert {
    certificate: String,
    not_after: i64,
    /// The serial (colon hex) of the CA certificate that issued it; absent
    /// in certificates stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_serial: Option<String>,
}

pub struct PkiEngine {
    storage: Arc<dyn EngineStorage>,
    info: EngineInfo,
    /// Changes to the CA and the CRL, one at a time on this node.
    writes: tokio::sync::Mutex<()>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(m.into())
}

fn store_err(e: String) -> EngineError {
    EngineError::Unavailable(format!("engine storage: {e}"))
}

// ----- parameters ------------------------------------------------------------

fn text<'a>(p: &'a Params, k: &str) -> &'a str {
    p.get(k).unwrap_or_default()
}

fn flag(p: &Params, k: &str) -> bool {
    p.get(k) == Some("true")
}

/// A duration parameter (the core gives seconds).
fn secs(p: &Params, k: &str) -> Result<u64, EngineError> {
    match p.get(k) {
        None | Some("") => Ok(0),
        Some(v) => {
            let s: u64 = v.parse().map_err(|_| bad(format!("{k} must be a duration such as 72h")))?;
            if s > MAX_ANY_TTL {
                return Err(bad(format!("{k} is longer than 876000h (a hundred years)")));
            }
            Ok(s)
        }
    }
}

/// A comma list: trimmed, empty items dropped.
fn list(p: &Params, k: &str) -> Vec<String> {
    text(p, k).split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn list_at_most(p: &Params, k: &str, max: usize) -> Result<Vec<String>, EngineError> {
    let l = list(p, k);
    if l.len() > max {
        return Err(bad(format!("{k} has {} items; at most {max} are taken", l.len())));
    }
    Ok(l)
}

/// `max_path_length`: -1 (none) or 0..=255.
fn path_len_param(p: &Params) -> Result<Option<u32>, EngineError> {
    match text(p, "max_path_length").trim() {
        "" | "-1" => Ok(None),
        v => match v.parse::<u32>() {
            Ok(n) if n <= 255 => Ok(Some(n)),
            _ => Err(bad(format!("max_path_length {v:?}: give -1 (no limit) or 0 to 255"))),
        },
    }
}

fn pem_param<'a>(p: &'a Params, k: &str) -> Result<&'a str, EngineError> {
    let v = text(p, k);
    if v.trim().is_empty() {
        return Err(bad(format!("give {k} (PEM text, e.g. {k}=@file.pem)")));
    }
    if v.len() > MAX_PEM_BYTES {
        return Err(bad(format!("{k} is {} bytes; at most {MAX_PEM_BYTES} are taken", v.len())));
    }
    Ok(v)
}

/// `format` (pem only) and `private_key_format` (pkcs8 only).
fn check_formats(p: &Params) -> Result<(), EngineError> {
    match text(p, "format") {
        "" | "pem" => {}
        f => return Err(bad(format!("format {f:?}: only pem is supported"))),
    }
    match text(p, "private_key_format") {
        "" | "pkcs8" => Ok(()),
        f => Err(bad(format!(
            "private_key_format {f:?}: private keys are returned as PKCS#8 PEM only (private_key_format=pkcs8)"
        ))),
    }
}

/// When a certificate issued now ends, as Vault computes it: the request's
/// `ttl`, else the role's, else [`DEFAULT_TTL`]; over `max_ttl` (the
/// role's, else [`DEFAULT_TTL`]) it is cut to `max_ttl`, with a warning;
/// past the CA's own notAfter it is refused (Vault's default
/// `leaf_not_after_behavior`, `err`).
fn not_after(
    now: i64,
    requested: u64,
    role_ttl: u64,
    role_max: u64,
    ca_not_after: i64,
) -> Result<(i64, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut ttl = if requested > 0 { requested } else { role_ttl };
    if ttl == 0 {
        ttl = DEFAULT_TTL;
    }
    let max = if role_max > 0 { role_max } else { DEFAULT_TTL };
    if ttl > max {
        warnings.push(format!("TTL {ttl}s is longer than the role's max_ttl {max}s, so max_ttl is used"));
        ttl = max;
    }
    let end =
        i64::try_from(ttl).ok().and_then(|t| now.checked_add(t)).ok_or_else(|| "the TTL is too long".to_string())?;
    if end > ca_not_after {
        return Err(format!(
            "cannot satisfy the request: the TTL would end the certificate at {}, after this CA's own certificate expires ({}); ask for a shorter ttl",
            rfc3339(end),
            rfc3339(ca_not_after)
        ));
    }
    Ok((end, warnings))
}

// ----- paths ------------------------------------------------------------------

fn field(name: &str, kind: FieldKind, description: &str) -> Field {
    Field { name: name.into(), kind, description: description.into(), required: false, default: None }
}

fn default(mut f: Field, v: &str) -> Field {
    f.default = Some(v.into());
    f
}

fn required(mut f: Field) -> Field {
    f.required = true;
    f
}

fn path(pattern: &str, synopsis: &str, operations: &[Operation], fields: Vec<Field>, existence: bool) -> PathInfo {
    PathInfo {
        pattern: pattern.into(),
        synopsis: synopsis.into(),
        description: synopsis.into(),
        operations: operations.to_vec(),
        fields,
        existence_check: existence,
    }
}

fn info() -> EngineInfo {
    use FieldKind::*;
    use Operation::*;
    let b = |name: &str, d: &str, what: &str| default(field(name, Boolean, what), d);
    let cn = |what: &str| field("common_name", String, what);
    let alt = || field("alt_names", CommaList, "DNS names and e-mail addresses for the subject alternative names");
    let ips = || field("ip_sans", CommaList, "IP addresses for the subject alternative names");
    let ttl = |what: &str| field("ttl", Duration, what);
    let exclude = || b("exclude_cn_from_sans", "false", "keep the common name out of the subject alternative names");
    let format = || field("format", String, "pem (the only format)");
    let key_format = || field("private_key_format", String, "pkcs8 (private keys are PKCS#8 PEM)");
    let key_type = || field("key_type", String, "rsa, ec or ed25519 (default ec: P-256)");
    let key_bits = || field("key_bits", Int, "rsa: 2048, 3072, 4096; ec: 256, 384 (0: the type's default)");
    let org = || field("organization", CommaList, "the subject's O (one value)");
    let ou = || field("ou", CommaList, "the subject's OU (one value)");
    let max_path = || field("max_path_length", Int, "CA certificates that may follow this one (-1: no limit)");
    let csr = || required(field("csr", String, "the PEM certificate signing request"));
    EngineInfo {
        name: KIND.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "X.509 certificates from a CA per mount: roles, issue, sign, revoke, CRL".into(),
        paths: vec![
            path(
                "root/generate/{type}",
                "Generates a self-signed root CA (type internal, or exported to return its key once)",
                &[Update],
                vec![
                    required(cn("the root's common name")),
                    alt(),
                    ips(),
                    ttl("the root's lifetime (default 87600h)"),
                    key_type(),
                    key_bits(),
                    max_path(),
                    exclude(),
                    org(),
                    ou(),
                    format(),
                    key_format(),
                ],
                false,
            ),
            path(
                "root",
                "Deletes the mount's CA (its certificate, key, pending intermediate and CRL)",
                &[Delete],
                vec![],
                false,
            ),
            path(
                "root/sign-intermediate",
                "Signs another CA's CSR with this mount's CA",
                &[Update],
                vec![
                    csr(),
                    cn("the intermediate's common name (default: the CSR's)"),
                    alt(),
                    ips(),
                    ttl("the intermediate's lifetime (default 43800h)"),
                    max_path(),
                    exclude(),
                    org(),
                    ou(),
                    b("use_csr_values", "false", "take the subject and SANs from the CSR"),
                    format(),
                ],
                false,
            ),
            path(
                "intermediate/generate/{type}",
                "Generates an intermediate CA's key and CSR (type internal, or exported to return its key once)",
                &[Update],
                vec![
                    required(cn("the intermediate's common name")),
                    alt(),
                    ips(),
                    key_type(),
                    key_bits(),
                    exclude(),
                    org(),
                    ou(),
                    format(),
                    key_format(),
                ],
                false,
            ),
            path(
                "intermediate/set-signed",
                "Sets the signed intermediate certificate (and its parents) for the pending key",
                &[Update],
                vec![required(field(
                    "certificate",
                    String,
                    "PEM: the signed intermediate, optionally followed by its issuer's chain",
                ))],
                false,
            ),
            path(
                "config/ca",
                "Imports a CA: PEM certificate and private key (PKCS#8, or PKCS#1 RSA), and optionally its parents",
                &[Update],
                vec![required(field("pem_bundle", String, "the CA certificate and its private key, PEM"))],
                false,
            ),
            path("ca", "The CA certificate, DER in base64 (field certificate)", &[Read], vec![], false),
            path("ca/pem", "The CA certificate, PEM (field certificate)", &[Read], vec![], false),
            path("ca_chain", "The CA certificate and its parents, PEM (field ca_chain)", &[Read], vec![], false),
            path(
                "config/urls",
                "URLs put into issued certificates: AIA (issuing_certificates, ocsp_servers) and CRL distribution points",
                &[Read, Update],
                vec![
                    field("issuing_certificates", CommaList, "where the CA certificate can be fetched (AIA caIssuers)"),
                    field("crl_distribution_points", CommaList, "where the CRL can be fetched (CDP)"),
                    field("ocsp_servers", CommaList, "OCSP responders (AIA ocsp); none is served here"),
                ],
                false,
            ),
            path(
                "config/crl",
                "How long each CRL is valid",
                &[Read, Update],
                vec![default(field("expiry", Duration, "the CRL's validity (nextUpdate)"), "72h")],
                false,
            ),
            path(
                "roles/{name}",
                "A role: which names, keys and lifetimes its certificates get",
                &[Read, Create, Update, Delete],
                vec![
                    ttl("the certificates' TTL (default 768h)"),
                    field("max_ttl", Duration, "the longest TTL a request may ask (default 768h)"),
                    b("allow_localhost", "true", "allow localhost and localdomain"),
                    field("allowed_domains", CommaList, "domains the names must match (see the allow_* flags)"),
                    b("allow_bare_domains", "false", "allow an allowed domain itself"),
                    b("allow_subdomains", "false", "allow names under an allowed domain (and wildcards over it)"),
                    b("allow_glob_domains", "false", "allowed domains with * are globs over the whole name"),
                    b("allow_wildcard_certificates", "true", "allow wildcard names (*.example.com)"),
                    b("allow_any_name", "false", "allow any name"),
                    b("enforce_hostnames", "true", "names must be host names (RFC 1123 labels)"),
                    b("allow_ip_sans", "true", "allow IP subject alternative names"),
                    b("server_flag", "true", "extended key usage serverAuth"),
                    b("client_flag", "true", "extended key usage clientAuth"),
                    b("code_signing_flag", "false", "extended key usage codeSigning"),
                    b("email_protection_flag", "false", "extended key usage emailProtection"),
                    default(field("key_type", String, "rsa, ec, ed25519 or any (sign only)"), "ec"),
                    default(key_bits(), "0"),
                    org(),
                    ou(),
                    b("use_csr_common_name", "true", "sign: take the common name from the CSR"),
                    b("use_csr_sans", "true", "sign: take the SANs from the CSR"),
                    b(
                        "no_store",
                        "false",
                        "keep nothing per certificate (no cert/<serial>, revocation only with the PEM)",
                    ),
                    b("generate_lease", "false", "put each certificate under a lease whose revocation revokes it"),
                ],
                true,
            ),
            path("roles", "Lists roles", &[List], vec![], false),
            path(
                "issue/{role}",
                "A new key and a certificate for it, under the role",
                &[Update],
                vec![
                    required(cn("the certificate's common name")),
                    alt(),
                    ips(),
                    ttl("the certificate's TTL (default: the role's)"),
                    exclude(),
                    format(),
                    key_format(),
                ],
                false,
            ),
            path(
                "sign/{role}",
                "Signs a CSR under the role",
                &[Update],
                vec![
                    csr(),
                    cn("the common name, when the role does not take the CSR's"),
                    alt(),
                    ips(),
                    ttl("the certificate's TTL (default: the role's)"),
                    exclude(),
                    format(),
                ],
                false,
            ),
            path(
                "cert/{serial}",
                "A stored certificate (or ca, ca_chain, crl) and its revocation time",
                &[Read],
                vec![],
                false,
            ),
            path("certs", "Lists stored certificates' serial numbers", &[List], vec![], false),
            path(
                "revoke",
                "Revokes a certificate and rebuilds the CRL",
                &[Update],
                vec![
                    field("serial_number", String, "the certificate's serial number (1a:2b:...)"),
                    field("certificate", String, "the certificate, PEM (for one its role did not store)"),
                ],
                false,
            ),
            path("crl", "The CRL, DER in base64 (field crl)", &[Read], vec![], false),
            path("crl/pem", "The CRL, PEM (field crl)", &[Read], vec![], false),
            path("crl/rotate", "Rebuilds the CRL now (at most once a minute)", &[Read], vec![], false),
            path(
                "tidy",
                "Removes expired certificates and expired revocation entries",
                &[Update],
                vec![
                    b("tidy_cert_store", "false", "delete stored certificates expired for longer than safety_buffer"),
                    b(
                        "tidy_revoked_certs",
                        "false",
                        "drop CRL entries of certificates expired for longer than safety_buffer",
                    ),
                    default(field("safety_buffer", Duration, "how long past expiry before anything goes"), "72h"),
                ],
                false,
            ),
        ],
        config_keys: Vec::new(),
        rotates: false,
    }
}

/// The name rules CA certificates are made under: any name, no host-name
/// check (as Vault's root and intermediate generation).
fn ca_rules() -> NameRules {
    NameRules { allow_any_name: true, allow_wildcard_certificates: true, ..Default::default() }
}

/// The names of a CA certificate or CSR from the request.
fn ca_names(p: &Params, common_name: &str) -> Result<Requested, EngineError> {
    let alts = list_at_most(p, "alt_names", MAX_NAMES)?;
    let ips = list_at_most(p, "ip_sans", MAX_NAMES)?;
    names::requested(&ca_rules(), true, common_name, &alts, &ips, flag(p, "exclude_cn_from_sans"), None).map_err(bad)
}

fn one_value(p: &Params, k: &str) -> Result<Vec<String>, EngineError> {
    let v = list(p, k);
    if v.len() > 1 {
        return Err(bad(format!("{k}: give one value; a subject here holds one {k}")));
    }
    if v.iter().any(|s| s.len() > 64) {
        return Err(bad(format!("{k} is longer than 64 characters")));
    }
    if let Some(c) = v.iter().find_map(|s| names::unseen(s)) {
        return Err(bad(format!("{k} holds U+{:04X}, an invisible or control character", c as u32)));
    }
    Ok(v)
}

fn no_ca(ctx: &CallContext) -> EngineError {
    EngineError::NotFound(format!(
        "{m} has no CA yet: generate one (keybridge write {m}root/generate/internal common_name=...), import one ({m}config/ca) or set a signed intermediate ({m}intermediate/set-signed)",
        m = ctx.mount_path
    ))
}

/// Stored entries `tidy` reads per page (and holds the write lock for).
const TIDY_PAGE: usize = 512;

fn check_common_name(cn: &str) -> Result<(), EngineError> {
    if cn.trim().is_empty() {
        return Err(bad("give common_name"));
    }
    if cn.len() > 1024 {
        return Err(bad("common_name is longer than 1024 bytes"));
    }
    if let Some(c) = names::unseen_in_name(cn) {
        return Err(bad(format!("common_name holds U+{:04X}, an invisible or control character", c as u32)));
    }
    Ok(())
}

fn check_url(kind: &str, u: &str) -> Result<(), EngineError> {
    let scheme_ok = ["http://", "https://", "ldap://"].iter().any(|s| u.len() > s.len() && u.starts_with(s));
    if !scheme_ok || u.len() > 1024 || !u.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(format!("{kind}: {u:?} is not an http://, https:// or ldap:// URL (ASCII, no spaces)")));
    }
    Ok(())
}

impl PkiEngine {
    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, EngineError> {
        match self.storage.get(key).await.map_err(store_err)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| EngineError::Internal(format!("{key} is unreadable: {e}"))),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, v: &T) -> Result<(), EngineError> {
        let raw = Zeroizing::new(serde_json::to_vec(v).map_err(|e| EngineError::Internal(e.to_string()))?);
        self.storage.put(key, &raw).await.map_err(store_err)
    }

    async fn delete(&self, key: &str) -> Result<(), EngineError> {
        self.storage.delete(key).await.map_err(store_err)
    }

    async fn ca(&self, ctx: &CallContext) -> Result<Ca, EngineError> {
        match self.get_json::<StoredCa>("ca").await? {
            Some(s) => Ca::load(&s),
            None => Err(no_ca(ctx)),
        }
    }

    /// The CA's certificate and its parents (PEM), without loading its key.
    async fn ca_certificates(&self, ctx: &CallContext) -> Result<(String, Vec<String>), EngineError> {
        match self.get_json::<StoredCa>("ca").await? {
            Some(s) => Ok((s.certificate.clone(), s.chain.clone())),
            None => Err(no_ca(ctx)),
        }
    }

    async fn refuse_if_ca(&self, ctx: &CallContext) -> Result<(), EngineError> {
        if self.storage.get("ca").await.map_err(store_err)?.is_some() {
            return Err(bad(format!(
                "{m} has a CA already; delete it first (keybridge delete {m}root) to replace it",
                m = ctx.mount_path
            )));
        }
        Ok(())
    }

    async fn role(&self, name: &str) -> Result<Role, EngineError> {
        self.get_json(&format!("roles/{name}"))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no role {name:?}: write roles/{name} first")))
    }

    async fn crl_config(&self) -> Result<CrlConfig, EngineError> {
        Ok(self.get_json("config/crl").await?.unwrap_or_default())
    }

    async fn urls(&self) -> Result<Urls, EngineError> {
        Ok(self.get_json("config/urls").await?.unwrap_or_default())
    }

    /// Stores the CRL state, refusing a value past [`crl::MAX_VALUE_BYTES`].
    async fn put_crl(&self, state: &CrlState) -> Result<(), EngineError> {
        let raw = serde_json::to_vec(state).map_err(|e| EngineError::Internal(e.to_string()))?;
        if raw.len() > crl::MAX_VALUE_BYTES {
            return Err(EngineError::Exhausted(format!(
                "the CRL would take {} bytes of storage, over the {} this engine writes; run tidy with tidy_revoked_certs=true",
                raw.len(),
                crl::MAX_VALUE_BYTES
            )));
        }
        self.storage.put("crl", &raw).await.map_err(store_err)
    }

    /// Stores a new CA (and a first, empty CRL), forgetting any pending
    /// intermediate and the previous CA's CRL.
    async fn install_ca(&self, stored: StoredCa) -> Result<Ca, EngineError> {
        let ca = Ca::load(&stored)?;
        let mut state = CrlState::default();
        ca::check_serial(&ca.der).map_err(|e| bad(format!("this CA cannot serve the mount: {e}")))?;
        // The first CRL is signed before anything is stored: a CA this
        // engine cannot sign a matching CRL for is refused, not installed.
        state.rebuild(&ca, now(), self.crl_config().await?.expiry)?;
        if !state.issuer_matches(&ca) {
            return Err(bad(
                "this CA cannot serve the mount: its subject is encoded in a way this engine does not reproduce byte for byte as the issuer of its CRL and certificates",
            ));
        }
        self.put_json("ca", &stored).await?;
        self.delete("ca-pending").await?;
        self.put_crl(&state).await?;
        self.store_cert(&ca.facts.serial, &ca.certificate, ca.facts.not_after, &ca).await?;
        Ok(ca)
    }

    /// Stores a certificate `ca` issued (or `ca`'s own), with `ca`'s serial.
    async fn store_cert(&self, serial: &[u8], pem: &str, not_after: i64, ca: &Ca) -> Result<(), EngineError> {
        let stored = StoredCert {
            certificate: pem.to_string(),
            not_after,
            ca_serial: Some(ca::serial_string(&ca.facts.serial)),
        };
        self.put_json(&ca::cert_key(serial), &stored).await
    }

    // ----- CA ---------------------------------------------------------------------

    async fn generate_root(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let exported = export_type(p)?;
        check_formats(p)?;
        let cn = text(p, "common_name");
        check_common_name(cn)?;
        let names = ca_names(p, cn)?;
        let (kt, bits) = keys::parse(text(p, "key_type"), text(p, "key_bits"), false).map_err(bad)?;
        let ttl = match secs(p, "ttl")? {
            0 => ROOT_TTL,
            t => t,
        };
        let path_len = match path_len_param(p)? {
            None => PathLen::Unconstrained,
            Some(n) => PathLen::Max(n),
        };
        let (organization, ou) = (one_value(p, "organization")?, one_value(p, "ou")?);
        self.refuse_if_ca(ctx).await?;
        let (key, key_pem) = keys::generate(kt, bits).await?;
        let _w = self.writes.lock().await;
        self.refuse_if_ca(ctx).await?;
        let start = now();
        let serial = ca::new_serial();
        let end = start.checked_add(i64::try_from(ttl).unwrap_or(i64::MAX)).ok_or_else(|| bad("ttl is too long"))?;
        let spec = Spec {
            names: &names,
            organization: &organization,
            ou: &ou,
            not_before: start.saturating_sub(ca::NOT_BEFORE_SKEW),
            not_after: end,
            serial: &serial,
            ca: Some(path_len),
            key_usages: ca::ca_key_usages(),
            ext_key_usages: Vec::new(),
            urls: None,
        };
        let der = ca::self_sign(&spec, &key)?;
        let certificate = ca::pem_encode("CERTIFICATE", &der);
        let ca = self
            .install_ca(StoredCa {
                certificate: certificate.clone(),
                private_key: key_pem.to_string(),
                chain: Vec::new(),
            })
            .await?;
        let mut data = vec![
            ("certificate".to_string(), certificate.clone()),
            ("issuing_ca".to_string(), certificate),
            ("serial_number".to_string(), ca::serial_string(&ca.facts.serial)),
            ("expiration".to_string(), ca.facts.not_after.to_string()),
        ];
        if exported {
            data.push(("private_key".into(), key_pem.to_string()));
            data.push(("private_key_type".into(), kt.name().into()));
        }
        Ok(EngineResponse { data: Params(data), ..Default::default() })
    }

    async fn delete_root(&self) -> Result<EngineResponse, EngineError> {
        let _w = self.writes.lock().await;
        for k in ["ca", "ca-pending", "crl"] {
            self.delete(k).await?;
        }
        // The revocations were the old CA's.
        for k in self.storage.list("revoked/").await.map_err(store_err)? {
            self.delete(&format!("revoked/{k}")).await?;
        }
        Ok(EngineResponse::default())
    }

    /// Puts every revocation stored on its own (`revoked/<serial>`) into
    /// the CRL; a revocation lost to another node's simultaneous rewrite
    /// of `crl` comes back here. These revocations were accepted already,
    /// so they go back even past [`crl::MAX_REVOKED`] (two nodes revoking
    /// at the limit at once); only the byte bound of `put_crl` applies. An
    /// entry whose certificate has expired needs no CRL entry: its
    /// `revoked/` key is dropped instead. Returns whether the CRL was
    /// rebuilt.
    async fn reconcile_crl(&self, ctx: &CallContext, expiry: u64) -> Result<bool, EngineError> {
        let Some(mut state) = self.get_json::<CrlState>("crl").await? else { return Ok(false) };
        let at = now();
        let mut missing = Vec::new();
        for k in self.storage.list("revoked/").await.map_err(store_err)? {
            let key = format!("revoked/{k}");
            if state.find(&k.replace('-', ":")).is_none()
                && let Some(r) = self.get_json::<Revoked>(&key).await?
            {
                if r.not_after <= at {
                    self.delete(&key).await?;
                } else {
                    missing.push(r);
                }
            }
        }
        if missing.is_empty() {
            return Ok(false);
        }
        for r in missing {
            state.restore(r);
        }
        let ca = self.ca(ctx).await?;
        state.rebuild(&ca, at, expiry)?;
        self.put_crl(&state).await?;
        Ok(true)
    }

    async fn generate_intermediate(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let exported = export_type(p)?;
        check_formats(p)?;
        let cn = text(p, "common_name");
        check_common_name(cn)?;
        let names = ca_names(p, cn)?;
        let (kt, bits) = keys::parse(text(p, "key_type"), text(p, "key_bits"), false).map_err(bad)?;
        let (organization, ou) = (one_value(p, "organization")?, one_value(p, "ou")?);
        self.refuse_if_ca(ctx).await?;
        let (key, key_pem) = keys::generate(kt, bits).await?;
        let _w = self.writes.lock().await;
        self.refuse_if_ca(ctx).await?;
        let spec = Spec {
            names: &names,
            organization: &organization,
            ou: &ou,
            not_before: 0,
            not_after: 0,
            serial: &[1],
            ca: None,
            key_usages: Vec::new(),
            ext_key_usages: Vec::new(),
            urls: None,
        };
        let csr = ca::csr(&spec, &key)?;
        self.put_json("ca-pending", &Pending { private_key: key_pem.to_string(), csr: csr.clone() }).await?;
        let mut data = vec![("csr".to_string(), csr)];
        if exported {
            data.push(("private_key".into(), key_pem.to_string()));
            data.push(("private_key_type".into(), kt.name().into()));
        }
        Ok(EngineResponse { data: Params(data), ..Default::default() })
    }

    async fn set_signed(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let bundle = pem_param(p, "certificate")?;
        let _w = self.writes.lock().await;
        self.refuse_if_ca(ctx).await?;
        let pending: Pending = self.get_json("ca-pending").await?.ok_or_else(|| {
            bad(format!(
                "{m} has no pending intermediate key: run {m}intermediate/generate/internal first",
                m = ctx.mount_path
            ))
        })?;
        let key = keys::from_pem(&pending.private_key)?;
        let certs = certificates(bundle, "certificate")?;
        let public = rcgen::PublicKeyData::der_bytes(&*key).to_vec();
        let mut mine = None;
        let mut parents = Vec::new();
        for der in certs {
            let facts = ca::ca_facts(&der);
            match facts {
                Ok(f) if f.public_key == public && mine.is_none() => mine = Some((der, f)),
                _ => parents.push(der),
            }
        }
        let Some((der, facts)) = mine else {
            return Err(bad(
                "certificate: no CA certificate in it holds the pending intermediate key (from intermediate/generate); give the certificate root/sign-intermediate returned for this mount's CSR",
            ));
        };
        check_validity(&facts)?;
        if let Some(parent) = parents.first() {
            verify_signed_by(&der, parent)?;
        }
        let stored = StoredCa {
            certificate: ca::pem_encode("CERTIFICATE", &der),
            private_key: pending.private_key.clone(),
            chain: parents.iter().map(|d| ca::pem_encode("CERTIFICATE", d)).collect(),
        };
        let ca = self.install_ca(stored).await?;
        Ok(EngineResponse {
            data: Params(vec![
                ("serial_number".into(), ca::serial_string(&ca.facts.serial)),
                ("expiration".into(), ca.facts.not_after.to_string()),
            ]),
            ..Default::default()
        })
    }

    async fn config_ca(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let bundle = pem_param(p, "pem_bundle")?;
        let blocks = pem::parse_many(bundle).map_err(|_| bad("pem_bundle: malformed PEM"))?;
        let mut key = None;
        let mut certs = Vec::new();
        for b in blocks {
            if b.tag() == "CERTIFICATE" {
                certs.push(b.into_contents());
            } else if b.tag().ends_with("PRIVATE KEY") {
                if key.is_some() {
                    return Err(bad("pem_bundle: give one private key"));
                }
                let tag = b.tag().to_string();
                let der = Zeroizing::new(b.into_contents());
                key = Some(keys::import(&tag, &der).map_err(|e| bad(format!("pem_bundle: {e}")))?);
            } else {
                return Err(bad(format!("pem_bundle: a {} block is neither a certificate nor a private key", b.tag())));
            }
        }
        let Some((key, key_pem)) = key else {
            return Err(bad("pem_bundle: give the CA's private key (PEM PRIVATE KEY) with its certificate"));
        };
        let public = rcgen::PublicKeyData::der_bytes(&*key).to_vec();
        let mut mine = None;
        let mut parents = Vec::new();
        for der in certs {
            let facts = ca::ca_facts(&der);
            match facts {
                Ok(f) if f.public_key == public && mine.is_none() => mine = Some((der, f)),
                Err(e) if mine.is_none() && x509_key_matches(&der, &public) => {
                    return Err(bad(format!(
                        "pem_bundle: the certificate of the private key cannot be a CA here: {e}"
                    )));
                }
                _ => parents.push(der),
            }
        }
        let Some((der, facts)) = mine else {
            return Err(bad("pem_bundle: no certificate in it holds the given private key's public key"));
        };
        check_validity(&facts)?;
        if let Some(parent) = parents.first() {
            verify_signed_by(&der, parent)?;
        }
        let _w = self.writes.lock().await;
        self.refuse_if_ca(ctx).await?;
        let stored = StoredCa {
            certificate: ca::pem_encode("CERTIFICATE", &der),
            private_key: key_pem.to_string(),
            chain: parents.iter().map(|d| ca::pem_encode("CERTIFICATE", d)).collect(),
        };
        let ca = self.install_ca(stored).await?;
        Ok(EngineResponse {
            data: Params(vec![
                ("serial_number".into(), ca::serial_string(&ca.facts.serial)),
                ("expiration".into(), ca.facts.not_after.to_string()),
            ]),
            ..Default::default()
        })
    }

    async fn sign_intermediate(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        check_formats(p)?;
        let csr = ca::parse_csr(pem_param(p, "csr")?).map_err(bad)?;
        // The same key check as sign/<role>: RSA under 2048 bits and
        // unsupported curves are refused.
        keys::check_against_role(csr.key, (KeyType::Any, 0)).map_err(bad)?;
        let use_csr = flag(p, "use_csr_values");
        let cn = match text(p, "common_name") {
            "" => csr.common_name.clone(),
            _ if use_csr && !csr.common_name.is_empty() => csr.common_name.clone(),
            given => given.to_string(),
        };
        if cn.is_empty() {
            return Err(bad("give common_name: the CSR has none"));
        }
        check_common_name(&cn)?;
        let names = if use_csr {
            let csr_names = CsrNames { dns: &csr.dns, emails: &csr.emails, ips: &csr.ips };
            names::requested(&ca_rules(), true, &cn, &[], &[], flag(p, "exclude_cn_from_sans"), Some(csr_names))
                .map_err(bad)?
        } else {
            ca_names(p, &cn)?
        };
        let (organization, ou) = (one_value(p, "organization")?, one_value(p, "ou")?);
        let ca = self.ca(ctx).await?;
        let derived = match ca.facts.path_len {
            PathLen::Unconstrained => PathLen::Unconstrained,
            PathLen::Max(0) => {
                return Err(bad("this CA's certificate has a path length of 0: it cannot sign CA certificates"));
            }
            PathLen::Max(n) => PathLen::Max(n - 1),
        };
        let path_len = match (path_len_param(p)?, derived) {
            (None, d) => d,
            (Some(n), PathLen::Unconstrained) => PathLen::Max(n),
            (Some(n), PathLen::Max(d)) => PathLen::Max(n.min(d)),
        };
        let start = now();
        let ttl = match secs(p, "ttl")? {
            0 => INTERMEDIATE_TTL,
            t => t,
        };
        let (end, warnings) = not_after(start, ttl, 0, MAX_ANY_TTL, ca.facts.not_after).map_err(bad)?;
        let serial = ca::new_serial();
        let urls = self.urls().await?;
        let spec = Spec {
            names: &names,
            organization: &organization,
            ou: &ou,
            not_before: start.saturating_sub(ca::NOT_BEFORE_SKEW).max(ca.facts.not_before),
            not_after: end,
            serial: &serial,
            ca: Some(path_len),
            key_usages: ca::ca_key_usages(),
            ext_key_usages: Vec::new(),
            urls: Some(&urls),
        };
        let der = ca::sign(&spec, &csr.public_key, &ca)?;
        let certificate = ca::pem_encode("CERTIFICATE", &der);
        self.store_cert(&serial, &certificate, end, &ca).await?;
        Ok(EngineResponse {
            data: Params(vec![
                ("certificate".into(), certificate),
                ("issuing_ca".into(), ca.certificate.clone()),
                ("ca_chain".into(), ca.chain_pem()),
                ("serial_number".into(), ca::serial_string(&serial)),
                ("expiration".into(), end.to_string()),
            ]),
            lease: None,
            warnings,
        })
    }

    // ----- roles --------------------------------------------------------------------

    async fn write_role(&self, name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        let (key_type, key_bits) = keys::parse(text(p, "key_type"), text(p, "key_bits"), true).map_err(bad)?;
        let allowed_domains = list_at_most(p, "allowed_domains", MAX_ALLOWED_DOMAINS)?;
        if let Some(d) = allowed_domains.iter().find(|d| d.len() > 253) {
            return Err(bad(format!("allowed_domains: {d:?} is longer than 253 characters")));
        }
        let r = Role {
            rules: NameRules {
                allowed_domains,
                allow_bare_domains: flag(p, "allow_bare_domains"),
                allow_subdomains: flag(p, "allow_subdomains"),
                allow_glob_domains: flag(p, "allow_glob_domains"),
                allow_wildcard_certificates: flag(p, "allow_wildcard_certificates"),
                allow_localhost: flag(p, "allow_localhost"),
                allow_any_name: flag(p, "allow_any_name"),
                enforce_hostnames: flag(p, "enforce_hostnames"),
            },
            allow_ip_sans: flag(p, "allow_ip_sans"),
            server_flag: flag(p, "server_flag"),
            client_flag: flag(p, "client_flag"),
            code_signing_flag: flag(p, "code_signing_flag"),
            email_protection_flag: flag(p, "email_protection_flag"),
            key_type,
            key_bits,
            ttl: secs(p, "ttl")?,
            max_ttl: secs(p, "max_ttl")?,
            organization: one_value(p, "organization")?,
            ou: one_value(p, "ou")?,
            use_csr_common_name: flag(p, "use_csr_common_name"),
            use_csr_sans: flag(p, "use_csr_sans"),
            no_store: flag(p, "no_store"),
            generate_lease: flag(p, "generate_lease"),
        };
        if r.ttl > 0 && r.max_ttl > 0 && r.ttl > r.max_ttl {
            return Err(bad(format!("ttl ({}s) must not be longer than max_ttl ({}s)", r.ttl, r.max_ttl)));
        }
        self.put_json(&format!("roles/{name}"), &r).await?;
        Ok(EngineResponse::default())
    }

    fn read_role(r: &Role) -> EngineResponse {
        let b = |v: bool| v.to_string();
        EngineResponse {
            data: Params(vec![
                ("ttl".into(), r.ttl.to_string()),
                ("max_ttl".into(), r.max_ttl.to_string()),
                ("allow_localhost".into(), b(r.rules.allow_localhost)),
                ("allowed_domains".into(), r.rules.allowed_domains.join(",")),
                ("allow_bare_domains".into(), b(r.rules.allow_bare_domains)),
                ("allow_subdomains".into(), b(r.rules.allow_subdomains)),
                ("allow_glob_domains".into(), b(r.rules.allow_glob_domains)),
                ("allow_wildcard_certificates".into(), b(r.rules.allow_wildcard_certificates)),
                ("allow_any_name".into(), b(r.rules.allow_any_name)),
                ("enforce_hostnames".into(), b(r.rules.enforce_hostnames)),
                ("allow_ip_sans".into(), b(r.allow_ip_sans)),
                ("server_flag".into(), b(r.server_flag)),
                ("client_flag".into(), b(r.client_flag)),
                ("code_signing_flag".into(), b(r.code_signing_flag)),
                ("email_protection_flag".into(), b(r.email_protection_flag)),
                ("key_type".into(), r.key_type.name().into()),
                ("key_bits".into(), r.key_bits.to_string()),
                ("organization".into(), r.organization.join(",")),
                ("ou".into(), r.ou.join(",")),
                ("use_csr_common_name".into(), b(r.use_csr_common_name)),
                ("use_csr_sans".into(), b(r.use_csr_sans)),
                ("no_store".into(), b(r.no_store)),
                ("generate_lease".into(), b(r.generate_lease)),
            ]),
            ..Default::default()
        }
    }

    async fn list(&self, prefix: &str, colons: bool) -> Result<EngineResponse, EngineError> {
        let mut keys = self.storage.list(prefix).await.map_err(store_err)?;
        if colons {
            for k in &mut keys {
                *k = k.replace('-', ":");
            }
        }
        let keys = serde_json::to_string(&keys).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok(EngineResponse { data: Params(vec![("keys".into(), keys)]), ..Default::default() })
    }

    // ----- issuing --------------------------------------------------------------------

    /// Signs a certificate for `public_key` under the role and returns the
    /// response (the private key is added by the caller, for `issue`).
    async fn certify(
        &self,
        ca: &Ca,
        role: &Role,
        names: &Requested,
        key_type: KeyType,
        public_key: &impl rcgen::PublicKeyData,
        // The TTL asked for, and the mount's longest lease.
        (requested_ttl, lease_max): (u64, u64),
    ) -> Result<(Vec<(String, String)>, Option<LeaseRequest>, Vec<String>), EngineError> {
        let start = now();
        // A certificate under a lease ends with it: never after the
        // longest lease the mount records, which would revoke it early.
        let role_max = if role.max_ttl > 0 { role.max_ttl } else { DEFAULT_TTL };
        let capped = role.generate_lease && lease_max > 0 && lease_max < role_max;
        let max = if capped { lease_max } else { role.max_ttl };
        let (end, mut warnings) = not_after(start, requested_ttl, role.ttl, max, ca.facts.not_after).map_err(bad)?;
        if capped && u64::try_from(end.saturating_sub(start)).unwrap_or(0) >= lease_max {
            warnings.push(format!(
                "the certificate is under a lease, and the mount's max_lease_ttl ({lease_max}s) is shorter than the role's max_ttl ({role_max}s): it ends with the lease"
            ));
        }
        let serial = ca::new_serial();
        let urls = self.urls().await?;
        let spec = Spec {
            names,
            organization: &role.organization,
            ou: &role.ou,
            not_before: start.saturating_sub(ca::NOT_BEFORE_SKEW).max(ca.facts.not_before),
            not_after: end,
            serial: &serial,
            ca: None,
            key_usages: ca::leaf_key_usages(key_type),
            ext_key_usages: role.ext_key_usages(),
            urls: Some(&urls),
        };
        let der = ca::sign(&spec, public_key, ca)?;
        let certificate = ca::pem_encode("CERTIFICATE", &der);
        if !role.no_store {
            self.store_cert(&serial, &certificate, end, ca).await?;
        }
        let serial_text = ca::serial_string(&serial);
        let lease = role.generate_lease.then(|| {
            let ttl = u64::try_from(end.saturating_sub(start)).unwrap_or(0).max(1);
            LeaseRequest {
                terms: LeaseTerms { ttl_secs: ttl, max_ttl_secs: ttl, renewable: false },
                internal: Params(vec![
                    ("serial_number".into(), serial_text.clone()),
                    ("not_after".into(), end.to_string()),
                    ("ca_serial".into(), ca::serial_string(&ca.facts.serial)),
                ]),
            }
        });
        let data = vec![
            ("certificate".into(), certificate),
            ("issuing_ca".into(), ca.certificate.clone()),
            ("ca_chain".into(), ca.chain_pem()),
            ("serial_number".into(), serial_text),
            ("expiration".into(), end.to_string()),
        ];
        Ok((data, lease, warnings))
    }

    async fn issue(&self, ctx: &CallContext, role_name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        check_formats(p)?;
        let role = self.role(role_name).await?;
        if role.key_type == KeyType::Any {
            return Err(bad(format!(
                "role {role_name:?} has key_type any, which only sign/<role> takes; set the role's key_type to rsa, ec or ed25519 to issue"
            )));
        }
        let cn = text(p, "common_name");
        check_common_name(cn)?;
        let alts = list_at_most(p, "alt_names", MAX_NAMES)?;
        let ips = list_at_most(p, "ip_sans", MAX_NAMES)?;
        let names =
            names::requested(&role.rules, role.allow_ip_sans, cn, &alts, &ips, flag(p, "exclude_cn_from_sans"), None)
                .map_err(bad)?;
        let ttl = secs(p, "ttl")?;
        let ca = self.ca(ctx).await?;
        let (key, key_pem) = keys::generate(role.key_type, role.key_bits).await?;
        let (mut data, lease, warnings) =
            self.certify(&ca, &role, &names, role.key_type, &*key, (ttl, ctx.lease_max_ttl_secs)).await?;
        data.push(("private_key".into(), key_pem.to_string()));
        data.push(("private_key_type".into(), role.key_type.name().into()));
        Ok(EngineResponse { data: Params(data), lease, warnings })
    }

    async fn sign(&self, ctx: &CallContext, role_name: &str, p: &Params) -> Result<EngineResponse, EngineError> {
        check_formats(p)?;
        let role = self.role(role_name).await?;
        let csr = ca::parse_csr(pem_param(p, "csr")?).map_err(bad)?;
        keys::check_against_role(csr.key, (role.key_type, role.key_bits)).map_err(bad)?;
        let cn = if role.use_csr_common_name && !csr.common_name.is_empty() {
            csr.common_name.clone()
        } else {
            text(p, "common_name").to_string()
        };
        if cn.is_empty() {
            return Err(bad("give common_name: the CSR has none (or the role does not take it)"));
        }
        check_common_name(&cn)?;
        let names = if role.use_csr_sans {
            if csr.dns.len() + csr.emails.len() + csr.ips.len() > MAX_NAMES {
                return Err(bad(format!("the CSR asks for more than {MAX_NAMES} alternative names")));
            }
            let csr_names = CsrNames { dns: &csr.dns, emails: &csr.emails, ips: &csr.ips };
            names::requested(
                &role.rules,
                role.allow_ip_sans,
                &cn,
                &[],
                &[],
                flag(p, "exclude_cn_from_sans"),
                Some(csr_names),
            )
        } else {
            let alts = list_at_most(p, "alt_names", MAX_NAMES)?;
            let ips = list_at_most(p, "ip_sans", MAX_NAMES)?;
            names::requested(&role.rules, role.allow_ip_sans, &cn, &alts, &ips, flag(p, "exclude_cn_from_sans"), None)
        }
        .map_err(bad)?;
        let ca = self.ca(ctx).await?;
        let (data, lease, mut warnings) = self
            .certify(&ca, &role, &names, csr.key.0, &csr.public_key, (secs(p, "ttl")?, ctx.lease_max_ttl_secs))
            .await?;
        if csr.has_basic_constraints {
            warnings.push("the CSR's basic constraints extension was ignored".into());
        }
        Ok(EngineResponse { data: Params(data), lease, warnings })
    }

    // ----- reading -------------------------------------------------------------------

    async fn read_cert(&self, ctx: &CallContext, serial: &str) -> Result<EngineResponse, EngineError> {
        let pem_field =
            |v: String| EngineResponse { data: Params(vec![("certificate".into(), v)]), ..Default::default() };
        match serial {
            "ca" => return Ok(pem_field(self.ca(ctx).await?.certificate)),
            "ca_chain" => return Ok(pem_field(self.ca(ctx).await?.chain_pem())),
            "crl" => return Ok(pem_field(self.crl_pem(ctx).await?)),
            _ => {}
        }
        let bytes = ca::parse_serial(serial).map_err(bad)?;
        let stored: StoredCert = self.get_json(&ca::cert_key(&bytes)).await?.ok_or_else(|| {
            EngineError::NotFound(format!("no stored certificate with serial {serial} (its role may say no_store)"))
        })?;
        // The revocation's own key: one small read, not the whole CRL value.
        let revoked = self.get_json::<Revoked>(&revoked_key(&bytes)).await?.map(|r| r.revoked_at).unwrap_or(0);
        Ok(EngineResponse {
            data: Params(vec![
                ("certificate".into(), stored.certificate.clone()),
                ("serial_number".into(), ca::serial_string(&bytes)),
                ("expiration".into(), stored.not_after.to_string()),
                ("revocation_time".into(), revoked.to_string()),
                ("revocation_time_rfc3339".into(), if revoked == 0 { String::new() } else { rfc3339(revoked) }),
            ]),
            ..Default::default()
        })
    }

    async fn crl_state(&self, ctx: &CallContext) -> Result<CrlState, EngineError> {
        self.get_json("crl")
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("{} has no CRL yet: it has no CA", ctx.mount_path)))
    }

    async fn crl_pem(&self, ctx: &CallContext) -> Result<String, EngineError> {
        Ok(ca::pem_encode("X509 CRL", &self.crl_state(ctx).await?.der_bytes()?))
    }

    fn crl_response(state: &CrlState, crl: String) -> EngineResponse {
        EngineResponse {
            data: Params(vec![
                ("crl".into(), crl),
                ("crl_number".into(), state.number.to_string()),
                ("this_update".into(), state.this_update.to_string()),
                ("next_update".into(), state.next_update.to_string()),
                ("revoked".into(), state.revoked.len().to_string()),
            ]),
            ..Default::default()
        }
    }

    /// Re-signs the CRL, unless the current one is under
    /// [`ROTATE_MIN_INTERVAL`] old: this is a Read (as Vault's), and a
    /// read-only token looping it must not rewrite storage each call.
    async fn rotate_crl(&self, ctx: &CallContext) -> Result<EngineResponse, EngineError> {
        let _w = self.writes.lock().await;
        let ca = self.ca(ctx).await?;
        let mut state: CrlState = self.get_json("crl").await?.unwrap_or_default();
        let at = now();
        let fresh = state.number > 0 && at.saturating_sub(state.this_update) < ROTATE_MIN_INTERVAL;
        if !fresh {
            state.rebuild(&ca, at, self.crl_config().await?.expiry)?;
            self.put_crl(&state).await?;
        }
        Ok(EngineResponse {
            data: Params(vec![
                ("success".into(), "true".into()),
                ("rebuilt".into(), (!fresh).to_string()),
                ("crl_number".into(), state.number.to_string()),
                ("this_update".into(), state.this_update.to_string()),
            ]),
            ..Default::default()
        })
    }

    // ----- revocation -------------------------------------------------------------------

    async fn revoke_request(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let given_serial = match text(p, "serial_number") {
            "" => None,
            s => Some(ca::parse_serial(s).map_err(bad)?),
        };
        let pem = match text(p, "certificate") {
            "" => None,
            _ => Some(pem_param(p, "certificate")?),
        };
        let (serial, known_not_after) = match (given_serial, pem) {
            (None, None) => return Err(bad("give serial_number (or certificate, the PEM)")),
            (s, Some(pem)) => {
                let ca = self.ca(ctx).await?;
                let der = ca::pem_der(pem, "CERTIFICATE").map_err(|e| bad(format!("certificate: {e}")))?;
                let facts = ca::issued_by(&der, &ca).map_err(|e| bad(format!("certificate: {e}")))?;
                if s.as_ref().is_some_and(|s| *s != facts.serial) {
                    return Err(bad("serial_number and certificate name different certificates; give one"));
                }
                (facts.serial, Some(facts.not_after))
            }
            (Some(s), None) => (s, None),
        };
        self.revoke_serial(ctx, &serial, known_not_after, None).await
    }

    async fn revoke_serial(
        &self,
        ctx: &CallContext,
        serial: &[u8],
        known_not_after: Option<i64>,
        known_ca_serial: Option<String>,
    ) -> Result<EngineResponse, EngineError> {
        let serial_text = ca::serial_string(serial);
        let _w = self.writes.lock().await;
        let ca = self.ca(ctx).await?;
        if serial == ca.facts.serial.as_slice() {
            return Err(bad(
                "that is this mount's own CA certificate; delete the CA (root) instead of revoking it here",
            ));
        }
        let (not_after, issuer) = match self.get_json::<StoredCert>(&ca::cert_key(serial)).await? {
            Some(c) => (c.not_after, c.ca_serial),
            None => (
                known_not_after.ok_or_else(|| {
                    EngineError::NotFound(format!(
                        "no stored certificate with serial {serial_text} (its role may say no_store): give certificate=@cert.pem to revoke it"
                    ))
                })?,
                known_ca_serial,
            ),
        };
        // Only this CA's CRL is served: a certificate of a CA this mount had
        // before cannot be listed on it (NotFound: a lease of one ends quietly).
        let current = ca::serial_string(&ca.facts.serial);
        if let Some(issuer) = issuer.filter(|i| *i != current) {
            return Err(EngineError::NotFound(format!(
                "certificate {serial_text} was issued by a previous CA of this mount (CA serial {issuer}), not the current one ({current}); the current CA's CRL cannot revoke it"
            )));
        }
        let mut state: CrlState = self.get_json("crl").await?.unwrap_or_default();
        let mut warnings = Vec::new();
        let at = now();
        let revoked_at = if let Some(r) = state.find(&serial_text) {
            r.revoked_at
        } else if not_after <= at.saturating_add(EXPIRY_SKEW) {
            // Expired (or about to, as when its lease ends at its notAfter):
            // a CRL entry would protect nothing and only take a CRL slot.
            warnings
                .push("the certificate has expired (or expires within a minute); it is not added to the CRL".into());
            0
        } else {
            let entry = Revoked { serial: serial_text.clone(), revoked_at: at, not_after };
            state.add(entry.clone())?;
            state.rebuild(&ca, at, self.crl_config().await?.expiry)?;
            if !state.issuer_matches(&ca) {
                // A CA installed before the check at install: said, not refused.
                tracing::warn!(mount = %ctx.mount_path, "pki: the CRL's issuer name does not match the CA's subject byte for byte");
                warnings.push("this CA's subject is not reproduced byte for byte as the CRL's issuer: clients that match CRLs by those bytes (webpki) will not apply this CRL; replace the CA".into());
            }
            // The entry on its own first: a revocation another node writes
            // to `crl` at the same moment cannot lose it (the periodic pass
            // puts every entry back into the CRL).
            self.put_json(&revoked_key(serial), &entry).await?;
            self.put_crl(&state).await?;
            tracing::info!(mount = %ctx.mount_path, serial = %serial_text, "pki: certificate revoked");
            at
        };
        Ok(EngineResponse {
            data: Params(vec![
                ("revocation_time".into(), revoked_at.to_string()),
                ("revocation_time_rfc3339".into(), if revoked_at == 0 { String::new() } else { rfc3339(revoked_at) }),
                ("state".into(), if revoked_at == 0 { "expired".into() } else { "revoked".into() }),
            ]),
            lease: None,
            warnings,
        })
    }

    /// Deletes the entries under `prefix` whose stored value `expired`
    /// says so, a page at a time (the write lock held for one page), and
    /// counts them.
    async fn tidy_entries(&self, prefix: &str, expired: impl Fn(&[u8]) -> bool) -> Result<u64, EngineError> {
        let mut deleted = 0u64;
        let mut after: Option<String> = None;
        loop {
            let page = self.storage.list_page(prefix, after.as_deref(), TIDY_PAGE).await.map_err(store_err)?;
            let _w = self.writes.lock().await;
            for k in &page {
                let key = format!("{prefix}{k}");
                let gone = match self.storage.get(&key).await.map_err(store_err)? {
                    Some(raw) => expired(&raw),
                    None => false,
                };
                if gone {
                    self.delete(&key).await?;
                    deleted += 1;
                }
            }
            if page.len() < TIDY_PAGE {
                return Ok(deleted);
            }
            after = page.last().cloned();
        }
    }

    async fn tidy(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let (certs, revoked) = (flag(p, "tidy_cert_store"), flag(p, "tidy_revoked_certs"));
        if !certs && !revoked {
            return Err(bad("tidy: give tidy_cert_store=true and/or tidy_revoked_certs=true"));
        }
        let buffer = i64::try_from(secs(p, "safety_buffer")?).unwrap_or(i64::MAX);
        let cutoff = now().saturating_sub(buffer);
        // Every stored entry, a page at a time: the write lock is held for
        // one page, so issues and revocations go on between pages.
        let mut certs_deleted = 0u64;
        if certs {
            certs_deleted = self
                .tidy_entries("certs/", |raw| {
                    match serde_json::from_slice::<StoredCert>(raw) {
                        Ok(c) => c.not_after < cutoff,
                        // An entry that does not read is no certificate.
                        Err(_) => true,
                    }
                })
                .await?;
        }
        if revoked {
            self.tidy_entries("revoked/", |raw| {
                serde_json::from_slice::<Revoked>(raw).map_or(true, |r| r.not_after < cutoff)
            })
            .await?;
        }
        let _w = self.writes.lock().await;
        let mut revoked_deleted = 0u64;
        if revoked && let Some(mut state) = self.get_json::<CrlState>("crl").await? {
            let before = state.revoked.len();
            state.revoked.retain(|r| r.not_after >= cutoff);
            revoked_deleted = (before - state.revoked.len()) as u64;
            if revoked_deleted > 0 {
                let ca = self.ca(ctx).await?;
                state.rebuild(&ca, now(), self.crl_config().await?.expiry)?;
                self.put_crl(&state).await?;
            }
        }
        Ok(EngineResponse {
            data: Params(vec![
                ("cert_store_deleted_count".into(), certs_deleted.to_string()),
                ("revoked_cert_deleted_count".into(), revoked_deleted.to_string()),
            ]),
            ..Default::default()
        })
    }

    // ----- config ---------------------------------------------------------------------

    async fn write_urls(&self, p: &Params) -> Result<EngineResponse, EngineError> {
        let mut urls = self.urls().await?;
        for (k, slot) in [
            ("issuing_certificates", &mut urls.issuing_certificates),
            ("crl_distribution_points", &mut urls.crl_distribution_points),
            ("ocsp_servers", &mut urls.ocsp_servers),
        ] {
            if p.get(k).is_some() {
                let l = list_at_most(p, k, MAX_URLS)?;
                for u in &l {
                    check_url(k, u)?;
                }
                *slot = l;
            }
        }
        self.put_json("config/urls", &urls).await?;
        Ok(EngineResponse::default())
    }

    async fn write_crl_config(&self, ctx: &CallContext, p: &Params) -> Result<EngineResponse, EngineError> {
        let expiry = secs(p, "expiry")?;
        if expiry < 60 {
            return Err(bad("expiry must be at least 1m"));
        }
        let _w = self.writes.lock().await;
        self.put_json("config/crl", &CrlConfig { expiry }).await?;
        // The current CRL is rebuilt with the new window.
        if let Some(mut state) = self.get_json::<CrlState>("crl").await?
            && let Ok(ca) = self.ca(ctx).await
        {
            state.rebuild(&ca, now(), expiry)?;
            self.put_crl(&state).await?;
        }
        Ok(EngineResponse::default())
    }
}

/// Where a revocation is kept on its own: `revoked/` and the serial with
/// hyphens.
fn revoked_key(serial: &[u8]) -> String {
    format!("revoked/{}", ca::serial_string(serial).replace(':', "-"))
}

/// `internal` or `exported` (the path's `{type}`).
fn export_type(p: &Params) -> Result<bool, EngineError> {
    match text(p, "type") {
        "internal" => Ok(false),
        "exported" => Ok(true),
        t => Err(EngineError::NotFound(format!("{t:?}: the type is internal or exported"))),
    }
}

/// Every CERTIFICATE block of a PEM field, at least one.
fn certificates(text: &str, field: &str) -> Result<Vec<Vec<u8>>, EngineError> {
    let blocks = pem::parse_many(text).map_err(|_| bad(format!("{field}: malformed PEM")))?;
    let certs: Vec<Vec<u8>> =
        blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(pem::Pem::into_contents).collect();
    if certs.is_empty() {
        return Err(bad(format!("{field}: no PEM CERTIFICATE in it")));
    }
    Ok(certs)
}

fn x509_key_matches(der: &[u8], public: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.public_key().subject_public_key.data.as_ref() == public)
}

fn check_validity(f: &ca::CaFacts) -> Result<(), EngineError> {
    if f.not_after <= now() {
        return Err(bad(format!("the CA certificate expired at {}", rfc3339(f.not_after))));
    }
    Ok(())
}

/// Checks `child` is signed by `parent` (the next certificate in a bundle).
fn verify_signed_by(child: &[u8], parent: &[u8]) -> Result<(), EngineError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(child).map_err(|_| bad("a certificate in the bundle does not parse"))?;
    let (_, p) = X509Certificate::from_der(parent).map_err(|_| bad("a certificate in the bundle does not parse"))?;
    if c.issuer().as_raw() != p.subject().as_raw() || c.verify_signature(Some(p.public_key())).is_err() {
        return Err(bad(
            "the certificate after the CA's in the bundle is not its issuer; give the chain in order, issuer first",
        ));
    }
    Ok(())
}

#[async_trait::async_trait]
impl PluginEngine for PkiEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// As Vault: the CA certificates and the CRL are public (TLS clients
    /// fetch them from the URLs in `config/urls`, with no token).
    fn public_reads(&self) -> &'static [PublicRead] {
        const PUBLIC: &[PublicRead] = &[
            PublicRead { path: "ca", field: "certificate", base64: true, content_type: "application/pkix-cert" },
            PublicRead {
                path: "ca/pem",
                field: "certificate",
                base64: false,
                content_type: "application/pem-certificate-chain",
            },
            PublicRead {
                path: "ca_chain",
                field: "ca_chain",
                base64: false,
                content_type: "application/pem-certificate-chain",
            },
            PublicRead { path: "crl", field: "crl", base64: true, content_type: "application/pkix-crl" },
            PublicRead { path: "crl/pem", field: "crl", base64: false, content_type: "application/x-pem-file" },
        ];
        PUBLIC
    }

    async fn exists(&self, _ctx: &CallContext, req: &EngineRequest) -> Result<bool, EngineError> {
        match req.pattern.as_str() {
            "roles/{name}" => {
                let name = req.params.get("name").unwrap_or_default();
                Ok(self.storage.get(&format!("roles/{name}")).await.map_err(store_err)?.is_some())
            }
            _ => Ok(true),
        }
    }

    async fn handle(&self, ctx: &CallContext, req: &EngineRequest) -> Result<EngineResponse, EngineError> {
        let p = &req.params;
        let name = text(p, "name");
        let role = text(p, "role");
        match (req.pattern.as_str(), req.operation) {
            ("root/generate/{type}", _) => self.generate_root(ctx, p).await,
            ("root", Operation::Delete) => self.delete_root().await,
            ("root/sign-intermediate", _) => self.sign_intermediate(ctx, p).await,
            ("intermediate/generate/{type}", _) => self.generate_intermediate(ctx, p).await,
            ("intermediate/set-signed", _) => self.set_signed(ctx, p).await,
            ("config/ca", _) => self.config_ca(ctx, p).await,
            // Public paths: the certificates only, the key never loaded.
            ("ca", Operation::Read) => {
                let (certificate, _) = self.ca_certificates(ctx).await?;
                let der = ca::pem_der(&certificate, "CERTIFICATE").map_err(EngineError::Internal)?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                Ok(EngineResponse { data: Params(vec![("certificate".into(), b64)]), ..Default::default() })
            }
            ("ca/pem", Operation::Read) => Ok(EngineResponse {
                data: Params(vec![("certificate".into(), self.ca_certificates(ctx).await?.0)]),
                ..Default::default()
            }),
            ("ca_chain", Operation::Read) => {
                let (certificate, chain) = self.ca_certificates(ctx).await?;
                let pem = std::iter::once(certificate).chain(chain).collect::<String>();
                Ok(EngineResponse { data: Params(vec![("ca_chain".into(), pem)]), ..Default::default() })
            }
            ("config/urls", Operation::Read) => {
                let u = self.urls().await?;
                Ok(EngineResponse {
                    data: Params(vec![
                        ("issuing_certificates".into(), u.issuing_certificates.join(",")),
                        ("crl_distribution_points".into(), u.crl_distribution_points.join(",")),
                        ("ocsp_servers".into(), u.ocsp_servers.join(",")),
                    ]),
                    ..Default::default()
                })
            }
            ("config/urls", _) => self.write_urls(p).await,
            ("config/crl", Operation::Read) => Ok(EngineResponse {
                data: Params(vec![("expiry".into(), self.crl_config().await?.expiry.to_string())]),
                ..Default::default()
            }),
            ("config/crl", _) => self.write_crl_config(ctx, p).await,
            ("roles/{name}", Operation::Read) => Ok(Self::read_role(&self.role(name).await?)),
            ("roles/{name}", Operation::Delete) => {
                self.delete(&format!("roles/{name}")).await?;
                Ok(EngineResponse::default())
            }
            ("roles/{name}", _) => self.write_role(name, p).await,
            ("roles", Operation::List) => self.list("roles/", false).await,
            ("issue/{role}", _) => self.issue(ctx, role, p).await,
            ("sign/{role}", _) => self.sign(ctx, role, p).await,
            ("cert/{serial}", Operation::Read) => self.read_cert(ctx, text(p, "serial")).await,
            ("certs", Operation::List) => self.list("certs/", true).await,
            ("revoke", _) => self.revoke_request(ctx, p).await,
            ("crl", Operation::Read) => {
                let state = self.crl_state(ctx).await?;
                Ok(Self::crl_response(&state, state.der.clone()))
            }
            ("crl/pem", Operation::Read) => {
                let state = self.crl_state(ctx).await?;
                let pem = ca::pem_encode("X509 CRL", &state.der_bytes()?);
                Ok(Self::crl_response(&state, pem))
            }
            ("crl/rotate", Operation::Read) => self.rotate_crl(ctx).await,
            ("tidy", _) => self.tidy(ctx, p).await,
            (p, op) => Err(EngineError::Unsupported(format!("{} on {p}", op.name()))),
        }
    }

    async fn renew(&self, _ctx: &CallContext, _lease: &LeaseInfo) -> Result<LeaseTerms, EngineError> {
        Err(EngineError::Unsupported("a certificate's lease cannot be renewed; issue a new certificate".into()))
    }

    /// A certificate's lease (`generate_lease`) revoked: the certificate
    /// is revoked and the CRL rebuilt.
    async fn revoke(&self, ctx: &CallContext, lease: &LeaseInfo) -> Result<(), EngineError> {
        let serial = ca::parse_serial(lease.internal.get("serial_number").unwrap_or_default())
            .map_err(|e| EngineError::Internal(format!("the lease's serial number: {e}")))?;
        let not_after = lease.internal.get("not_after").and_then(|v| v.parse().ok());
        let ca_serial = lease.internal.get("ca_serial").map(str::to_string);
        match self.revoke_serial(ctx, &serial, not_after, ca_serial).await {
            Ok(_) => Ok(()),
            // The CA is gone (deleted), or the certificate is a previous
            // CA's: nothing is left to revoke it against.
            Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn rotate(&self, _ctx: &CallContext, path: &str, _params: &Params) -> Result<EngineResponse, EngineError> {
        Err(EngineError::Unsupported(format!("{path}: the pki engine does not feed coordinated rotations")))
    }

    /// Puts lost revocations back into the CRL, drops the entries of
    /// certificates that expired (once a CRL signed after their expiry
    /// listed them), and rebuilds the CRL before it runs out (within half
    /// its window, at most 12 hours ahead), so a CRL is always current
    /// without a revocation. A failed repair is logged and the refresh
    /// still runs: the CRL must not run out.
    async fn periodic(&self, ctx: &CallContext) -> Result<(), EngineError> {
        if self.storage.get("crl").await.map_err(store_err)?.is_none() {
            return Ok(());
        }
        let expiry = self.crl_config().await?.expiry;
        let grace = i64::try_from((expiry / 2).min(12 * 3600)).unwrap_or(0);
        let _w = self.writes.lock().await;
        if let Err(e) = self.reconcile_crl(ctx, expiry).await {
            tracing::warn!(mount = %ctx.mount_path, error = %e, "pki: putting lost revocations back into the CRL failed; refreshing the CRL without them");
        }
        let Some(mut state) = self.get_json::<CrlState>("crl").await? else { return Ok(()) };
        let gone = state.drop_expired();
        if gone.is_empty() && now().saturating_add(grace) < state.next_update {
            return Ok(());
        }
        let ca = self.ca(ctx).await?;
        state.rebuild(&ca, now(), expiry)?;
        self.put_crl(&state).await?;
        for serial in &gone {
            self.delete(&format!("revoked/{}", serial.replace(':', "-"))).await?;
        }
        if !gone.is_empty() {
            tracing::info!(mount = %ctx.mount_path, dropped = gone.len(), "pki: expired certificates dropped from the CRL");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
