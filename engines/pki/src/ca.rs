//! The mount's CA (its certificate, key and parents), building and signing
//! certificates, serial numbers, and reading certificates back.

use keybridge_core::plugins::EngineError;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::keys::{self, KeyType};
use crate::names::Requested;

/// Certificates may start this long before they are issued (clock skew
/// between the CA and whoever checks them), as Vault's `not_before_duration`.
pub const NOT_BEFORE_SKEW: i64 = 30;

/// The mount's CA as stored (`ca`): the certificate, its PKCS#8 key (zeroed
/// on drop) and the certificates above it, issuer first.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCa {
    pub certificate: String,
    pub private_key: String,
    pub chain: Vec<String>,
}

impl Drop for StoredCa {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private_key);
    }
}

/// A pending intermediate (`ca/pending`): the key `intermediate/generate`
/// made, waiting for `intermediate/set-signed`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub private_key: String,
    pub csr: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.private_key);
    }
}

/// How many CA certificates may follow a CA (its path length constraint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathLen {
    Unconstrained,
    Max(u32),
}

/// What a CA certificate says about itself, read once and checked.
#[derive(Clone, Debug)]
pub struct CaFacts {
    pub not_before: i64,
    pub not_after: i64,
    pub serial: Vec<u8>,
    pub path_len: PathLen,
    /// The subject name's DER, which every certificate it issues names as
    /// its issuer.
    pub subject_raw: Vec<u8>,
    /// The subject public key (the BIT STRING's bytes).
    pub public_key: Vec<u8>,
}

/// The CA, loaded to sign with. Holds the private key: no Debug.
pub struct Ca {
    pub certificate: String,
    pub der: Vec<u8>,
    pub chain: Vec<String>,
    pub key: keys::Key,
    pub facts: CaFacts,
}

impl Ca {
    pub fn load(stored: &StoredCa) -> Result<Ca, EngineError> {
        let der = pem_der(&stored.certificate, "CERTIFICATE")
            .map_err(|e| EngineError::Internal(format!("the stored CA certificate: {e}")))?;
        let facts = ca_facts(&der).map_err(|e| EngineError::Internal(format!("the stored CA certificate: {e}")))?;
        let key = keys::from_pem(&stored.private_key)?;
        Ok(Ca { certificate: stored.certificate.clone(), der, chain: stored.chain.clone(), key, facts })
    }

    /// The signer of everything this CA issues.
    pub fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, EngineError> {
        Issuer::from_ca_cert_der(&self.der.as_slice().into(), &*self.key)
            .map_err(|e| EngineError::Internal(format!("reading the CA certificate to sign with: {e}")))
    }

    /// The CA and its parents, as PEM, one after another (`ca_chain`).
    pub fn chain_pem(&self) -> String {
        let mut out = self.certificate.clone();
        for c in &self.chain {
            out.push_str(c);
        }
        out
    }
}

/// Checked when a CA is installed (not when a stored one is loaded, so a
/// CA installed before these checks keeps working): RFC 5280 4.1.2.2 asks
/// for a positive serial; a negative one would be written as the positive
/// number of the same bytes everywhere here.
pub fn check_serial(der: &[u8]) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "not a valid X.509 certificate".to_string())?;
    let raw = cert.raw_serial();
    if raw.first().is_none_or(|b| b & 0x80 != 0) || raw.iter().all(|b| *b == 0) {
        return Err("its serial number is zero or negative, which RFC 5280 does not allow".into());
    }
    Ok(())
}

/// Reads a CA certificate (an import, a signed intermediate) and checks it
/// can serve as this mount's CA: `cA` set, key usage (when present) with
/// keyCertSign and cRLSign, a subject this engine reproduces exactly as
/// the issuer of what it signs (one attribute per RDN, each type once),
/// and a supported key.
pub fn ca_facts(der: &[u8]) -> Result<CaFacts, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| "not a valid X.509 certificate".to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let bc = cert.basic_constraints().map_err(|_| "its basicConstraints extension is malformed".to_string())?;
    let path_len = match bc {
        Some(bc) if bc.value.ca => match bc.value.path_len_constraint {
            Some(n) => PathLen::Max(n),
            None => PathLen::Unconstrained,
        },
        _ => return Err("it is not a CA certificate (basicConstraints cA is not set)".into()),
    };
    if let Some(ku) = cert.key_usage().map_err(|_| "its keyUsage extension is malformed".to_string())? {
        if !ku.value.key_cert_sign() {
            return Err("its key usage does not allow signing certificates (keyCertSign)".into());
        }
        if !ku.value.crl_sign() {
            return Err("its key usage does not allow signing CRLs (cRLSign), which this engine publishes".into());
        }
    }
    let mut seen = Vec::new();
    for rdn in cert.subject().iter() {
        let attrs: Vec<_> = rdn.iter().collect();
        if attrs.len() != 1 {
            return Err("its subject has a multi-valued or empty RDN, which this engine cannot reproduce".into());
        }
        let oid = attrs[0].attr_type().to_id_string();
        if seen.contains(&oid) {
            return Err(format!("its subject has attribute {oid} twice, which this engine cannot reproduce"));
        }
        seen.push(oid);
    }
    if seen.is_empty() {
        return Err("its subject is empty".into());
    }
    keys::describe_spki(cert.public_key())?;
    let v = cert.validity();
    Ok(CaFacts {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
        serial: strip_zeros(cert.raw_serial()),
        path_len,
        subject_raw: cert.subject().as_raw().to_vec(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// What the engine keeps of a certificate it reads back: serial, expiry.
pub struct CertFacts {
    pub serial: Vec<u8>,
    pub not_after: i64,
}

/// Reads a certificate and checks this CA signed it.
pub fn issued_by(der: &[u8], ca: &Ca) -> Result<CertFacts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| "not a valid X.509 certificate".to_string())?;
    let (_, ca_cert) =
        X509Certificate::from_der(&ca.der).map_err(|_| "the CA certificate is unreadable".to_string())?;
    if cert.issuer().as_raw() != ca_cert.subject().as_raw()
        || cert.verify_signature(Some(ca_cert.public_key())).is_err()
    {
        return Err("the certificate was not issued by this mount's CA".into());
    }
    Ok(CertFacts { serial: strip_zeros(cert.raw_serial()), not_after: cert.validity().not_after.timestamp() })
}

/// The DER of the one PEM block labelled `label` in `text`.
pub fn pem_der(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let blocks = pem::parse_many(text).map_err(|_| "malformed PEM".to_string())?;
    let mut found = blocks.into_iter().filter(|b| b.tag() == label);
    match (found.next(), found.next()) {
        (Some(b), None) => Ok(b.into_contents()),
        (None, _) => Err(format!("no {label} PEM block")),
        (Some(_), Some(_)) => Err(format!("more than one {label} PEM block")),
    }
}

/// PEM text, lines ending in `\n`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A new serial number: 20 random bytes, the first in 0x01..=0x7f (a
/// positive INTEGER of exactly 20 bytes, RFC 5280's largest).
pub fn new_serial() -> [u8; 20] {
    let mut s = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s[0] = (s[0] & 0x7f).max(1);
    s
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len().saturating_sub(1));
    b[start..].to_vec()
}

/// Vault's serial format: lower-case hex bytes joined by colons.
pub fn serial_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// A serial number as given (`1a:2b:...` or Vault's storage form
/// `1a-2b-...`, any case).
pub fn parse_serial(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let bad =
        || format!("serial_number {s:?}: give hex bytes separated by colons, as issue returned it (e.g. 1a:2b:3c)");
    if s.is_empty() || s.len() > 128 {
        return Err(bad());
    }
    let mut out = Vec::new();
    for part in s.split([':', '-']) {
        if part.len() != 2 {
            return Err(bad());
        }
        out.push(u8::from_str_radix(part, 16).map_err(|_| bad())?);
    }
    let out = strip_zeros(&out);
    if out.len() > 20 {
        return Err(format!("serial_number {s:?} is longer than 20 bytes, which no certificate here has"));
    }
    Ok(out)
}

/// Where a certificate is stored: `certs/` and the serial with hyphens, as
/// Vault.
pub fn cert_key(serial: &[u8]) -> String {
    format!("certs/{}", serial_string(serial).replace(':', "-"))
}

/// Seconds since the epoch as rcgen's time.
pub fn time_at(secs: i64) -> Result<time::OffsetDateTime, EngineError> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| EngineError::InvalidInput(format!("{secs} is not a time a certificate can hold")))
}

/// AIA and CDP URLs put into issued certificates (`config/urls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Urls {
    pub issuing_certificates: Vec<String>,
    pub crl_distribution_points: Vec<String>,
    pub ocsp_servers: Vec<String>,
}

const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
const OID_AD_OCSP: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1];
const OID_AD_CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];

impl Urls {
    fn apply(&self, params: &mut CertificateParams) {
        if !self.crl_distribution_points.is_empty() {
            params.crl_distribution_points = vec![CrlDistributionPoint { uris: self.crl_distribution_points.clone() }];
        }
        if self.issuing_certificates.is_empty() && self.ocsp_servers.is_empty() {
            return;
        }
        // AuthorityInfoAccessSyntax ::= SEQUENCE OF AccessDescription
        // AccessDescription ::= SEQUENCE { accessMethod OID, accessLocation GeneralName }
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                let described = self
                    .ocsp_servers
                    .iter()
                    .map(|u| (OID_AD_OCSP, u))
                    .chain(self.issuing_certificates.iter().map(|u| (OID_AD_CA_ISSUERS, u)));
                for (method, uri) in described {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(method));
                        // uniformResourceIdentifier [6] IMPLICIT IA5String
                        w.next().write_tagged_implicit(yasna::Tag::context(6), |w| w.write_ia5_string(uri));
                    });
                }
            })
        });
        params.custom_extensions.push(CustomExtension::from_oid_content(OID_AIA, der));
    }
}

/// A subject name: `organization`, `ou`, then the common name.
pub fn subject(common_name: &str, organization: &[String], ou: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization.first() {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if let Some(u) = ou.first() {
        dn.push(DnType::OrganizationalUnitName, u.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn sans(names: &Requested) -> Result<Vec<SanType>, EngineError> {
    let ia5 = |s: &str| {
        rcgen::string::Ia5String::try_from(s)
            .map_err(|_| EngineError::InvalidInput(format!("{s:?} cannot be put in a certificate (not ASCII)")))
    };
    let mut out = Vec::new();
    for d in &names.dns {
        out.push(SanType::DnsName(ia5(d)?));
    }
    for e in &names.emails {
        out.push(SanType::Rfc822Name(ia5(e)?));
    }
    for ip in &names.ips {
        out.push(SanType::IpAddress(*ip));
    }
    Ok(out)
}

/// What a certificate to be signed holds besides its key.
pub struct Spec<'a> {
    pub names: &'a Requested,
    pub organization: &'a [String],
    pub ou: &'a [String],
    pub not_before: i64,
    pub not_after: i64,
    pub serial: &'a [u8],
    /// `None`: an end-entity certificate; `Some`: a CA with this constraint.
    pub ca: Option<PathLen>,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub ext_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// Added only to certificates another certificate signs.
    pub urls: Option<&'a Urls>,
}

impl Spec<'_> {
    pub fn params(&self) -> Result<CertificateParams, EngineError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = subject(&self.names.common_name, self.organization, self.ou);
        p.subject_alt_names = sans(self.names)?;
        p.not_before = time_at(self.not_before)?;
        p.not_after = time_at(self.not_after)?;
        p.serial_number = Some(SerialNumber::from_slice(self.serial));
        p.is_ca = match self.ca {
            None => IsCa::NoCa,
            Some(PathLen::Unconstrained) => IsCa::Ca(BasicConstraints::Unconstrained),
            Some(PathLen::Max(n)) => IsCa::Ca(BasicConstraints::Constrained(u8::try_from(n).unwrap_or(u8::MAX))),
        };
        p.key_usages = self.key_usages.clone();
        p.extended_key_usages = self.ext_key_usages.clone();
        if let Some(urls) = self.urls {
            p.use_authority_key_identifier_extension = true;
            urls.apply(&mut p);
        }
        Ok(p)
    }
}

/// Key usages of a CA certificate.
pub fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature]
}

/// Key usages of an end-entity certificate for a key of this type:
/// digitalSignature, with keyEncipherment for RSA and keyAgreement for EC.
pub fn leaf_key_usages(kt: KeyType) -> Vec<KeyUsagePurpose> {
    match kt {
        KeyType::Rsa => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
        KeyType::Ec => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement],
        _ => vec![KeyUsagePurpose::DigitalSignature],
    }
}

/// Signs `spec` for `public_key` with the CA, and checks the result names
/// the CA's subject exactly as its issuer (so chains build).
pub fn sign(spec: &Spec<'_>, public_key: &impl PublicKeyData, ca: &Ca) -> Result<Vec<u8>, EngineError> {
    let params = spec.params()?;
    let issuer = ca.issuer()?;
    let cert = params
        .signed_by(public_key, &issuer)
        .map_err(|e| EngineError::Internal(format!("signing the certificate: {e}")))?;
    let der = cert.der().to_vec();
    let (_, parsed) = X509Certificate::from_der(&der)
        .map_err(|_| EngineError::Internal("the signed certificate does not parse".into()))?;
    if parsed.issuer().as_raw() != ca.facts.subject_raw.as_slice() {
        return Err(EngineError::Internal("the signed certificate's issuer does not match the CA's subject".into()));
    }
    Ok(der)
}

/// A self-signed root for `spec` with `key`.
pub fn self_sign(spec: &Spec<'_>, key: &KeyPair) -> Result<Vec<u8>, EngineError> {
    let params = spec.params()?;
    let cert =
        params.self_signed(key).map_err(|e| EngineError::Internal(format!("signing the root certificate: {e}")))?;
    Ok(cert.der().to_vec())
}

/// A CSR for `spec`'s subject and names with `key` (an intermediate's).
pub fn csr(spec: &Spec<'_>, key: &KeyPair) -> Result<String, EngineError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&spec.names.common_name, spec.organization, spec.ou);
    params.subject_alt_names = sans(spec.names)?;
    let csr = params.serialize_request(key).map_err(|e| EngineError::Internal(format!("making the CSR: {e}")))?;
    Ok(pem_encode("CERTIFICATE REQUEST", csr.der()))
}

/// A parsed CSR: its signature verified, its names, its key.
pub struct Csr {
    pub common_name: String,
    pub dns: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub key: (KeyType, u32),
    pub public_key: rcgen::SubjectPublicKeyInfo,
    pub has_basic_constraints: bool,
}

/// Reads a PEM CSR: one `CERTIFICATE REQUEST` (or `NEW CERTIFICATE
/// REQUEST`) block whose self-signature verifies, with a supported key;
/// its subject's common name and its requested SANs (DNS, e-mail, IP;
/// others refused).
pub fn parse_csr(text: &str) -> Result<Csr, String> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let der = pem_der(text, "CERTIFICATE REQUEST")
        .or_else(|_| pem_der(text, "NEW CERTIFICATE REQUEST"))
        .map_err(|_| "csr: give one PEM CERTIFICATE REQUEST block (e.g. csr=@req.pem)".to_string())?;
    let (rest, req) =
        X509CertificationRequest::from_der(&der).map_err(|_| "csr: not a valid PKCS#10 request".to_string())?;
    if !rest.is_empty() {
        return Err("csr: trailing bytes after the request".into());
    }
    req.verify_signature()
        .map_err(|_| "csr: its signature does not verify (or uses an unsupported algorithm)".to_string())?;
    let info = &req.certification_request_info;
    let key = keys::describe_spki(&info.subject_pki).map_err(|e| format!("csr: {e}"))?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|_| "csr: its public key is not supported".to_string())?;
    let common_name = match info.subject.iter_common_name().next() {
        Some(cn) => cn.as_str().map_err(|_| "csr: its common name is not a readable string".to_string())?.to_string(),
        None => String::new(),
    };
    let mut csr = Csr {
        common_name,
        dns: Vec::new(),
        emails: Vec::new(),
        ips: Vec::new(),
        key,
        public_key,
        has_basic_constraints: false,
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => csr.dns.push(d.to_string()),
                        GeneralName::RFC822Name(e) => csr.emails.push(e.to_string()),
                        GeneralName::IPAddress(b) => csr.ips.push(match b.len() {
                            4 => {
                                std::net::IpAddr::from(<[u8; 4]>::try_from(*b).map_err(|_| "csr: bad IP".to_string())?)
                            }
                            16 => {
                                std::net::IpAddr::from(<[u8; 16]>::try_from(*b).map_err(|_| "csr: bad IP".to_string())?)
                            }
                            _ => return Err("csr: an IP address SAN is neither IPv4 nor IPv6".into()),
                        }),
                        other => {
                            return Err(format!(
                                "csr: it asks for a subject alternative name this engine does not issue ({other:?}); DNS names, e-mail and IP addresses are supported"
                            ));
                        }
                    }
                }
            }
            ParsedExtension::BasicConstraints(_) => csr.has_basic_constraints = true,
            _ => {}
        }
    }
    Ok(csr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_twenty_positive_bytes_in_vaults_format() {
        for _ in 0..200 {
            let s = new_serial();
            assert!(s[0] >= 1 && s[0] <= 0x7f, "positive, no leading zero byte");
            let text = serial_string(&s);
            assert_eq!(text.len(), 20 * 3 - 1);
            assert!(text.bytes().all(|b| b == b':' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text}");
            assert_eq!(parse_serial(&text).unwrap(), s.to_vec());
            assert_eq!(parse_serial(&text.replace(':', "-").to_uppercase()).unwrap(), s.to_vec());
        }
        assert_eq!(cert_key(&[0x1a, 0x2b]), "certs/1a-2b");
        for bad in ["", "1a2b", "1a:2", "zz:00", "1a::2b", &"aa:".repeat(21)] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_serial("00:1a").unwrap(), vec![0x1a], "leading zero bytes are not part of the number");
    }
}
