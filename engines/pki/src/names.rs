//! Which names a role lets into a certificate: Vault's rules
//! (`builtin/logical/pki`, `ValidateNames` and the creation bundle's name
//! handling), reimplemented and tested against a table.
//!
//! For each name (the common name, each DNS and e-mail alternative name):
//! - `user@domain` is an e-mail address; the checks below act on its domain.
//! - A `*` makes it a wildcard name: refused unless
//!   `allow_wildcard_certificates`; exactly one `*`, in the left-most label
//!   (`*.example.com`, `foo*.example.com`); the rest is the "reduced" name.
//!   An e-mail address with a wildcard is refused.
//! - `enforce_hostnames`: the reduced name (IDNA-converted) with the
//!   wildcard label put back must be a host name (RFC 1123 labels of
//!   letters, digits and inner hyphens; a wildcard label of `*`, `*x`, `x*`
//!   or `x*y`).
//! - `allow_any_name`: any name (that passed the two checks above).
//! - `allow_localhost`: `localhost`, `localdomain` (and with
//!   `allow_subdomains` their subdomains and wildcards over them).
//! - `allowed_domains`, each by one of: `allow_bare_domains` (the whole name,
//!   or an e-mail's domain, equals it, ignoring case); `allow_subdomains`
//!   (the reduced name ends with `.` + it, case-sensitively as Vault, or a
//!   wildcard's reduced name equals it: `*.example.com` under
//!   `example.com`); `allow_glob_domains` (an allowed domain with `*` is a
//!   glob over the whole name, lower-cased; `*` spans dots).

use serde::{Deserialize, Serialize};

/// A role's name rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRules {
    pub allowed_domains: Vec<String>,
    pub allow_bare_domains: bool,
    pub allow_subdomains: bool,
    pub allow_glob_domains: bool,
    pub allow_wildcard_certificates: bool,
    pub allow_localhost: bool,
    pub allow_any_name: bool,
    pub enforce_hostnames: bool,
}

/// The first character of `s` a person reading a certificate would not see
/// as written: controls, format characters (bidi overrides, zero-width
/// joiners, soft hyphens), surrogates, private-use and unassigned code
/// points, every space but U+0020, line and paragraph separators, and the
/// rest of Unicode's default-ignorable code points (Hangul fillers,
/// variation selectors) and the blank Braille pattern, which render as
/// nothing or as a blank. Refused in every name and subject field (Vault
/// lets them through).
pub fn unseen(s: &str) -> Option<char> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    s.chars().find(|&c| {
        let hidden_category = match c.general_category() {
            G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
            | G::LineSeparator
            | G::ParagraphSeparator => true,
            G::SpaceSeparator => c != ' ',
            _ => false,
        };
        hidden_category || c == '\u{2800}' || DEFAULT_IGNORABLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
    })
}

/// The longest name (host name or e-mail address) any check looks into:
/// an e-mail address's 320 (RFC 3696; a host name is at most 253).
pub const NAME_MAX_BYTES: usize = 320;

/// Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt,
/// Unicode 15.1), most of which the categories above already cover.
const DEFAULT_IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// As [`unseen`], also in what each `xn--` label of a dotted name decodes
/// to; a label that does not decode is left to the name rules.
pub fn unseen_in_name(s: &str) -> Option<char> {
    unseen(s).or_else(|| {
        s.split(['.', '@'])
            // A label longer than DNS allows is not decoded (punycode's
            // coding takes time in the square of its length); the name
            // rules refuse it as a host name.
            .filter(|label| label.len() <= 63)
            .filter_map(punycode_body)
            .filter_map(idna::punycode::decode_to_string)
            .find_map(|decoded| unseen(&decoded))
    })
}

/// What follows `xn--` (any case) in a punycode label.
fn punycode_body(label: &str) -> Option<&str> {
    label.get(4..).filter(|_| label[..4].eq_ignore_ascii_case("xn--"))
}

/// Vault's IDNA step (`ToASCII` with DNS length checks and no mapping):
/// non-ASCII labels become punycode (`xn--`), `xn--` labels must decode,
/// no empty label but a final root dot, labels at most 63 bytes, the name
/// at most 253. ASCII characters are not otherwise checked (as in Vault,
/// where that is the host-name pattern's job).
pub fn to_ascii(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an empty name".into());
    }
    // Bounds first: punycode's coding takes time in the square of a
    // label's length.
    if name.len() > NAME_MAX_BYTES {
        return Err(format!("a name is longer than {NAME_MAX_BYTES} bytes"));
    }
    let body = name.strip_suffix('.').unwrap_or(name);
    let mut labels = Vec::new();
    for label in body.split('.') {
        if label.is_empty() {
            return Err(format!("{name:?} has an empty label"));
        }
        if label.chars().count() > 63 {
            return Err(format!("{name:?}: a label is longer than 63 characters"));
        }
        let ascii = if label.is_ascii() {
            if let Some(encoded) = punycode_body(label) {
                let Some(decoded) = idna::punycode::decode_to_string(encoded) else {
                    return Err(format!("{name:?}: the label {label:?} is not valid punycode"));
                };
                if let Some(c) = unseen(&decoded) {
                    return Err(format!(
                        "{name:?}: the label {label:?} decodes to U+{:04X}, an invisible character",
                        c as u32
                    ));
                }
            }
            label.to_string()
        } else {
            if let Some(c) = unseen(label) {
                return Err(format!("{name:?} holds U+{:04X}, an invisible or control character", c as u32));
            }
            match idna::punycode::encode_str(label) {
                Some(p) => format!("xn--{p}"),
                None => return Err(format!("{name:?}: the label {label:?} cannot be converted to ASCII")),
            }
        };
        if ascii.len() > 63 {
            return Err(format!("{name:?}: a label is longer than 63 bytes"));
        }
        labels.push(ascii);
    }
    let mut out = labels.join(".");
    if out.len() > 253 {
        return Err(format!("{name:?} is longer than 253 bytes"));
    }
    if body.len() != name.len() {
        out.push('.');
    }
    Ok(out)
}

/// One host-name label: a letter or digit, or letters, digits and hyphens
/// starting and ending with a letter or digit.
fn is_label(l: &str) -> bool {
    let b = l.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(e)) => {
            f.is_ascii_alphanumeric()
                && e.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// A wildcard label: `*`, `*x`, `x*` or `x*y` with `x`, `y` labels.
fn is_wild_label(l: &str) -> bool {
    match l.split_once('*') {
        Some((pre, post)) => (pre.is_empty() || is_label(pre)) && (post.is_empty() || is_label(post)),
        None => false,
    }
}

/// Vault's host-name pattern: an optional wildcard label, then at least
/// one label, and an optional root dot.
pub fn is_hostname(name: &str) -> bool {
    let body = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = body.split('.').collect();
    match labels.split_first() {
        Some((first, rest)) if !rest.is_empty() && first.contains('*') => {
            is_wild_label(first) && rest.iter().all(|l| is_label(l))
        }
        _ => labels.iter().all(|l| is_label(l)),
    }
}

/// Glob matching as Vault's (`github.com/ryanuber/go-glob`): `*` matches any
/// run of characters, dots included; parts between stars match in order.
pub fn glob(pattern: &str, subject: &str) -> bool {
    if pattern.is_empty() {
        return subject.is_empty();
    }
    if pattern == "*" {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return subject == pattern;
    }
    let leading = pattern.starts_with('*');
    let trailing = pattern.ends_with('*');
    let last = parts.len() - 1;
    let mut rest = subject;
    for (i, part) in parts[..last].iter().enumerate() {
        match rest.find(part) {
            Some(idx) if i > 0 || leading || idx == 0 => rest = &rest[idx + part.len()..],
            _ => return false,
        }
    }
    trailing || rest.ends_with(parts[last])
}

/// Whether the role lets `name` (a DNS name or an e-mail address) into a
/// certificate.
pub fn allowed(rules: &NameRules, name: &str) -> bool {
    let mut reduced = name;
    let mut email_domain = name;
    let mut is_email = false;
    if name.contains('@') {
        let parts: Vec<&str> = name.split('@').collect();
        if parts.len() != 2 {
            return false;
        }
        reduced = parts[1];
        email_domain = parts[1];
        is_email = true;
    }
    let mut wildcard_label = "";
    let is_wildcard = reduced.contains('*');
    if is_wildcard {
        if !rules.allow_wildcard_certificates || reduced.matches('*').count() > 1 {
            return false;
        }
        match reduced.split_once('.') {
            None => {
                wildcard_label = reduced;
                reduced = "";
            }
            Some((label, rest)) => {
                if rest.contains('*') {
                    return false;
                }
                wildcard_label = label;
                reduced = rest;
            }
        }
    }
    if is_email && is_wildcard {
        return false;
    }
    if rules.enforce_hostnames && !reduced.is_empty() {
        let Ok(mut converted) = to_ascii(reduced) else { return false };
        if is_wildcard {
            converted = format!("{wildcard_label}.{converted}");
        }
        if !is_hostname(&converted) {
            return false;
        }
    }
    if rules.allow_any_name {
        return true;
    }
    if rules.allow_localhost {
        for local in ["localhost", "localdomain"] {
            if reduced == local || (is_email && email_domain == local) {
                return true;
            }
            if rules.allow_subdomains && (reduced.ends_with(&format!(".{local}")) || (is_wildcard && reduced == local))
            {
                return true;
            }
        }
    }
    for domain in rules.allowed_domains.iter().filter(|d| !d.is_empty()) {
        if rules.allow_bare_domains
            && (name.eq_ignore_ascii_case(domain) || (is_email && email_domain.eq_ignore_ascii_case(domain)))
        {
            return true;
        }
        if rules.allow_subdomains
            && (reduced.ends_with(&format!(".{domain}")) || (is_wildcard && reduced.eq_ignore_ascii_case(domain)))
        {
            return true;
        }
        if rules.allow_glob_domains && domain.contains('*') && glob(&domain.to_lowercase(), &name.to_lowercase()) {
            return true;
        }
    }
    false
}

/// The names a request asks for, sorted into the certificate's fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub common_name: String,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

/// Names a CSR asks for (`sign` with the role's `use_csr_sans`).
pub struct CsrNames<'a> {
    pub dns: &'a [String],
    pub emails: &'a [String],
    pub ips: &'a [std::net::IpAddr],
}

/// Vault's handling of a request's names: the common name goes into the
/// DNS (or e-mail) alternative names unless `exclude_cn_from_sans` (a CN
/// that is no host name stays in the subject only); every `alt_names`
/// entry must be an e-mail address or a host name (a CSR's names, with
/// `csr`, are taken as they are); then the common name, the DNS names and
/// the e-mail addresses are checked against the role, and IP addresses
/// need `allow_ip_sans`.
pub fn requested(
    rules: &NameRules,
    allow_ip_sans: bool,
    common_name: &str,
    alt_names: &[String],
    ip_sans: &[String],
    exclude_cn_from_sans: bool,
    csr: Option<CsrNames<'_>>,
) -> Result<Requested, String> {
    let mut r = Requested { common_name: common_name.to_string(), ..Default::default() };
    if !common_name.is_empty() && !exclude_cn_from_sans {
        if common_name.contains('@') {
            r.emails.push(common_name.to_string());
        } else {
            let converted = to_ascii(common_name).map_err(|e| format!("common_name: {e}"))?;
            if is_hostname(&converted) {
                r.dns.push(converted);
            }
        }
    }
    match &csr {
        Some(c) => {
            r.dns.extend(c.dns.iter().cloned());
            r.emails.extend(c.emails.iter().cloned());
        }
        None => {
            let mut alts: Vec<&str> = alt_names.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
            alts.sort_unstable();
            alts.dedup();
            for alt in alts {
                if alt.len() > NAME_MAX_BYTES {
                    return Err(format!("alt_names: a name is longer than {NAME_MAX_BYTES} bytes"));
                }
                if alt.contains('@') {
                    r.emails.push(alt.to_string());
                    continue;
                }
                let converted = to_ascii(alt).map_err(|e| format!("alt_names: {e}"))?;
                if !is_hostname(&converted) {
                    return Err(format!(
                        "alt_names: {alt:?} is not a valid DNS name and cannot be a subject alternative name"
                    ));
                }
                r.dns.push(converted);
            }
        }
    }
    // Whatever the role's flags, no name a reader would not see as written
    // (a CSR's names are ASCII, but punycode may decode to a bidi override).
    for n in r.dns.iter().chain(r.emails.iter()) {
        if n.len() > NAME_MAX_BYTES {
            return Err(format!("a name is longer than {NAME_MAX_BYTES} bytes"));
        }
        if let Some(c) = unseen_in_name(n) {
            return Err(format!("the name {n:?} holds U+{:04X}, an invisible or control character", c as u32));
        }
        let domain = n.rsplit_once('@').map_or(n.as_str(), |(_, d)| d);
        to_ascii(domain).map_err(|e| format!("subject alternative name: {e}"))?;
    }
    if !common_name.is_empty() && !allowed(rules, common_name) {
        return Err(format!("common name {common_name} is not allowed by this role"));
    }
    if let Some(bad) = r.dns.iter().find(|n| !allowed(rules, n)) {
        return Err(format!("subject alternative name {bad} is not allowed by this role"));
    }
    if let Some(bad) = r.emails.iter().find(|n| !allowed(rules, n)) {
        return Err(format!("email address {bad} is not allowed by this role"));
    }
    match &csr {
        Some(c) => {
            if !c.ips.is_empty() && !allow_ip_sans {
                return Err(
                    "IP subject alternative names are not allowed by this role (allow_ip_sans=false), but the CSR asks for some"
                        .into(),
                );
            }
            r.ips.extend(c.ips.iter().copied());
        }
        None => {
            let ips: Vec<&str> = ip_sans.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
            if !ips.is_empty() && !allow_ip_sans {
                return Err(format!(
                    "IP subject alternative names are not allowed by this role (allow_ip_sans=false), but {} was given",
                    ips.join(",")
                ));
            }
            for ip in ips {
                r.ips.push(ip.parse().map_err(|_| format!("ip_sans: {ip:?} is not an IP address"))?);
            }
        }
    }
    dedup_keep_order(&mut r.dns);
    dedup_keep_order(&mut r.emails);
    dedup_keep_order(&mut r.ips);
    Ok(r)
}

fn dedup_keep_order<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.drain(..) {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A role with the flags named in `flags` on (the rest off, as written
    /// out in each row), over `domains`.
    fn role(domains: &[&str], flags: &str) -> NameRules {
        let on = |f: &str| flags.split_whitespace().any(|x| x == f);
        NameRules {
            allowed_domains: domains.iter().map(|d| d.to_string()).collect(),
            allow_bare_domains: on("bare"),
            allow_subdomains: on("sub"),
            allow_glob_domains: on("glob"),
            allow_wildcard_certificates: on("wild"),
            allow_localhost: on("localhost"),
            allow_any_name: on("any"),
            enforce_hostnames: on("hostnames"),
        }
    }

    #[test]
    fn the_role_flags_admit_and_refuse_names_as_vault() {
        // (allowed domains, flags on, name, allowed?)
        let table: &[(&[&str], &str, &str, bool)] = &[
            // allow_subdomains
            (&["app.internal"], "sub hostnames wild", "api.app.internal", true),
            (&["app.internal"], "sub hostnames wild", "a.b.app.internal", true),
            (&["app.internal"], "sub hostnames wild", "app.internal", false),
            (&["app.internal"], "sub hostnames wild", "evil.com", false),
            (&["app.internal"], "sub hostnames wild", "evilapp.internal", false),
            (&["app.internal"], "sub hostnames wild", "api.app.internal.evil.com", false),
            (&["app.internal"], "hostnames wild", "api.app.internal", false),
            // Vault compares subdomain suffixes case-sensitively.
            (&["app.internal"], "sub hostnames wild", "api.APP.internal", false),
            // allow_bare_domains
            (&["app.internal"], "bare hostnames wild", "app.internal", true),
            (&["app.internal"], "bare hostnames wild", "APP.Internal", true),
            (&["app.internal"], "bare hostnames wild", "api.app.internal", false),
            (&["app.internal"], "bare sub hostnames wild", "app.internal", true),
            // wildcard common names
            (&["app.internal"], "sub hostnames wild", "*.app.internal", true),
            (&["internal"], "sub hostnames wild", "*.app.internal", true),
            (&["app.internal"], "sub hostnames", "*.app.internal", false),
            (&["app.internal"], "bare hostnames wild", "*.app.internal", false),
            (&["app.internal"], "sub hostnames wild", "foo*.app.internal", true),
            (&["app.internal"], "sub hostnames wild", "*.*.app.internal", false),
            (&["app.internal"], "sub hostnames wild", "a.*.app.internal", false),
            (&["app.internal"], "sub hostnames wild", "f*o*.app.internal", false),
            (&["app.internal"], "sub hostnames wild", "-*.app.internal", false),
            (&["app.internal"], "sub wild", "-*.app.internal", true),
            // allow_glob_domains
            (&["*.app.internal"], "glob hostnames wild", "api.app.internal", true),
            (&["*.app.internal"], "glob hostnames wild", "a.b.app.internal", true),
            (&["*.app.internal"], "glob hostnames wild", "*.app.internal", true),
            (&["*.app.internal"], "glob hostnames wild", "API.App.Internal", true),
            (&["*.app.internal"], "glob hostnames wild", "app.internal", false),
            (&["*.app.internal"], "hostnames wild", "api.app.internal", false),
            (&["api-*.app.internal"], "glob hostnames wild", "api-1.app.internal", true),
            (&["api-*.app.internal"], "glob hostnames wild", "web-1.app.internal", false),
            (&["app.internal"], "glob hostnames wild", "api.app.internal", false),
            // allow_localhost
            (&[], "localhost hostnames wild", "localhost", true),
            (&[], "localhost hostnames wild", "localdomain", true),
            (&[], "hostnames wild", "localhost", false),
            (&[], "localhost hostnames wild", "a.localhost", false),
            (&[], "localhost sub hostnames wild", "a.localhost", true),
            (&[], "localhost sub hostnames wild", "*.localhost", true),
            (&[], "localhost hostnames wild", "me@localhost", true),
            // allow_any_name
            (&[], "any hostnames wild", "evil.com", true),
            (&[], "any hostnames wild", "under_score.example.com", false),
            (&[], "any wild", "under_score.example.com", true),
            (&[], "any hostnames", "*.example.com", false),
            (&[], "any hostnames wild", "-bad.example.com", false),
            (&[], "any hostnames wild", "bad-.example.com", false),
            (&[], "any hostnames wild", "a..example.com", false),
            (&[], "any hostnames wild", "example.com.", true),
            (&[], "any hostnames wild", &"a".repeat(64), false),
            // enforce_hostnames with subdomains
            (&["app.internal"], "sub hostnames wild", "under_score.app.internal", false),
            (&["app.internal"], "sub wild", "under_score.app.internal", true),
            (&["app.internal"], "sub hostnames wild", "münchen.app.internal", true),
            // e-mail addresses
            (&["app.internal"], "bare hostnames wild", "ops@app.internal", true),
            (&["app.internal"], "sub hostnames wild", "ops@mail.app.internal", true),
            (&["app.internal"], "sub hostnames wild", "ops@app.internal", false),
            (&["app.internal"], "bare sub hostnames wild", "a@b@app.internal", false),
            (&[], "any hostnames wild", "ops@*.app.internal", false),
            // no flags: nothing
            (&["app.internal"], "hostnames wild", "app.internal", false),
            (&[""], "bare sub hostnames wild", "app.internal", false),
        ];
        assert!(table.len() >= 30);
        let mut wrong = Vec::new();
        for (i, (domains, flags, name, want)) in table.iter().enumerate() {
            if allowed(&role(domains, flags), name) != *want {
                wrong.push(format!("row {i}: {name:?} with {domains:?} [{flags}]: expected {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn ip_sans_need_allow_ip_sans_and_alt_names_must_be_host_names() {
        let r = role(&["app.internal"], "sub hostnames wild");
        let ok = requested(&r, true, "api.app.internal", &["b.app.internal".into()], &["10.0.0.1".into()], false, None)
            .unwrap();
        assert_eq!(ok.dns, vec!["api.app.internal", "b.app.internal"]);
        assert_eq!(ok.ips, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
        let e = requested(&r, false, "api.app.internal", &[], &["10.0.0.1".into()], false, None).unwrap_err();
        assert!(e.contains("allow_ip_sans"), "{e}");
        let e = requested(&r, true, "api.app.internal", &[], &["10.0.0.300".into()], false, None).unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
        let e =
            requested(&r, true, "api.app.internal", &["bad name.app.internal".into()], &[], false, None).unwrap_err();
        assert!(e.contains("not a valid DNS name"), "{e}");
        let e = requested(&r, true, "evil.com", &[], &[], false, None).unwrap_err();
        assert_eq!(e, "common name evil.com is not allowed by this role");
        let e = requested(&r, true, "api.app.internal", &["evil.com".into()], &[], false, None).unwrap_err();
        assert_eq!(e, "subject alternative name evil.com is not allowed by this role");
        // A common name that is no host name stays out of the SANs.
        let any = role(&[], "any wild");
        let r2 = requested(&any, true, "My Service", &[], &[], false, None).unwrap();
        assert!(r2.dns.is_empty());
        let r3 = requested(&r, true, "api.app.internal", &[], &[], true, None).unwrap();
        assert!(r3.dns.is_empty(), "exclude_cn_from_sans");
        // Punycode for IDNs, as Vault.
        let r4 = requested(&r, true, "münchen.app.internal", &[], &[], false, None).unwrap();
        assert_eq!(r4.dns, vec!["xn--mnchen-3ya.app.internal"]);
    }

    #[test]
    fn glob_matches_as_go_glob() {
        assert!(glob("*", "anything"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("a*c", "abc"));
        assert!(!glob("a*c", "abd"));
        assert!(glob("a*", "a"));
        assert!(!glob("b*", "ab"));
        assert!(glob("*b*", "abc"));
        assert!(glob("", ""));
        assert!(!glob("", "a"));
    }
}
