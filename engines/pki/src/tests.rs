//! The engine through its `PluginEngine` interface, on storage in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

#[derive(Default)]
struct Memory(Mutex<BTreeMap<String, Vec<u8>>>);

impl Memory {
    fn keys(&self) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait::async_trait]
impl EngineStorage for Memory {
    async fn get(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
        Ok(self.0.lock().unwrap().get(key).map(|v| Zeroizing::new(v.clone())))
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.into(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut out: Vec<String> = Vec::new();
        // Bounded as the gateway's storage is: a walk over more must page.
        for k in self.0.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).take(LIST_BOUND) {
            let rest = &k[prefix.len()..];
            let child = match rest.find('/') {
                Some(i) => &rest[..=i],
                None => rest,
            };
            if out.last().map(String::as_str) != Some(child) {
                out.push(child.to_string());
            }
        }
        Ok(out)
    }
    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, String> {
        let keys = self.0.lock().unwrap();
        let rel = keys.keys().filter_map(|k| k.strip_prefix(prefix));
        Ok(rel.filter(|k| after.is_none_or(|a| *k > a)).take(limit).map(str::to_string).collect())
    }
}

const LIST_BOUND: usize = 10_000;

/// The lease the core records for a certificate `path` returned.
fn lease_info(path: &str, lease: &LeaseRequest) -> LeaseInfo {
    LeaseInfo { lease_id: "l".into(), path: path.into(), internal: lease.internal.clone(), issue_time: 0, increment: 0 }
}

struct Mount {
    engine: PkiEngine,
    storage: Arc<Memory>,
    ctx: CallContext,
}

fn mount(path: &str) -> Mount {
    let storage = Arc::new(Memory::default());
    let engine = PkiEngine { storage: storage.clone(), info: info(), writes: tokio::sync::Mutex::new(()) };
    let ctx = CallContext {
        mount_path: path.into(),
        config: vec![],
        request_id: "t".into(),
        caller: "test".into(),
        lease_max_ttl_secs: 0,
    };
    Mount { engine, storage, ctx }
}

impl Mount {
    /// A request as the core makes it: the path matched, parameters checked
    /// and defaults filled in.
    async fn call(&self, op: Operation, path: &str, given: &[(&str, &str)]) -> Result<EngineResponse, EngineError> {
        let m = keybridge_core::plugins::match_path(&self.engine.info, path).expect("a served path");
        let given: BTreeMap<String, String> = given.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let params = keybridge_core::plugins::check_params(&m, op, &given).map_err(EngineError::InvalidInput)?;
        let req = EngineRequest { operation: op, path: path.into(), pattern: m.info.pattern.clone(), params };
        self.engine.handle(&self.ctx, &req).await
    }

    async fn write(&self, path: &str, given: &[(&str, &str)]) -> Result<BTreeMap<String, String>, EngineError> {
        Ok(self.call(Operation::Update, path, given).await?.data.into_map())
    }

    async fn ok(&self, path: &str, given: &[(&str, &str)]) -> BTreeMap<String, String> {
        self.write(path, given).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn read(&self, path: &str) -> BTreeMap<String, String> {
        self.call(Operation::Read, path, &[]).await.unwrap_or_else(|e| panic!("{path}: {e}")).data.into_map()
    }

    async fn refused(&self, path: &str, given: &[(&str, &str)]) -> String {
        match self.write(path, given).await {
            Ok(_) => panic!("{path} {given:?} was allowed"),
            Err(e) => {
                let m = e.to_string();
                assert!(!m.contains('\n') && !m.contains("{ ") && !m.contains("Error("), "not one line: {m}");
                m
            }
        }
    }
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

/// Checks `leaf` was signed by `issuer` and names it as issuer.
fn assert_signed_by(leaf: &str, issuer: &str) {
    let (l, i) = (der_of(leaf), der_of(issuer));
    let (_, l) = X509Certificate::from_der(&l).unwrap();
    let (_, i) = X509Certificate::from_der(&i).unwrap();
    assert_eq!(l.issuer().as_raw(), i.subject().as_raw());
    l.verify_signature(Some(i.public_key())).expect("signed by the issuer");
}

async fn root(m: &Mount, key_type: &str) -> BTreeMap<String, String> {
    m.ok("root/generate/internal", &[("common_name", "Keybridge Test Root"), ("key_type", key_type), ("ttl", "87600h")])
        .await
}

async fn web_role(m: &Mount, extra: &[(&str, &str)]) {
    let mut p = vec![("allowed_domains", "app.internal"), ("allow_subdomains", "true"), ("max_ttl", "72h")];
    p.extend_from_slice(extra);
    m.ok("roles/web", &p).await;
}

#[tokio::test]
async fn every_key_type_issues_a_certificate_its_ca_signed() {
    for (ca_type, leaf_type, bits, spki_bits) in [
        ("ec", "ec", "256", 256),
        ("ec", "ec", "384", 384),
        ("ed25519", "ed25519", "0", 0),
        ("rsa", "rsa", "2048", 2048),
        ("ec", "rsa", "3072", 3072),
    ] {
        let m = mount("pki/");
        let r = root(&m, ca_type).await;
        web_role(&m, &[("key_type", leaf_type), ("key_bits", bits)]).await;
        let c = m.ok("issue/web", &[("common_name", "api.app.internal")]).await;
        assert_eq!(c["private_key_type"], leaf_type);
        assert!(c["private_key"].starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(c["issuing_ca"], r["certificate"]);
        assert_signed_by(&c["certificate"], &r["certificate"]);
        let der = der_of(&c["certificate"]);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let (kt, b) = keys::describe_spki(cert.public_key()).unwrap();
        assert_eq!((kt.name(), b), (leaf_type, spki_bits));
        assert_eq!(cert.subject().iter_common_name().next().unwrap().as_str().unwrap(), "api.app.internal");
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(format!("{:?}", san.value.general_names), "[DNSName(\"api.app.internal\")]");
        // The serial: Vault's format, 20 bytes, positive.
        assert_eq!(c["serial_number"], ca::serial_string(&ca::parse_serial(&c["serial_number"]).unwrap()));
        assert_eq!(cert.raw_serial().len(), 20);
        assert_eq!(ca::serial_string(cert.raw_serial()), c["serial_number"]);
        assert_eq!(c["expiration"], cert.validity().not_after.timestamp().to_string());
        // The key matches the certificate.
        let key = keys::from_pem(&c["private_key"]).unwrap();
        assert_eq!(rcgen::PublicKeyData::der_bytes(&*key), cert.public_key().subject_public_key.data.as_ref());
        // Stored, and read back.
        let stored = m.read(&format!("cert/{}", c["serial_number"])).await;
        assert_eq!(stored["certificate"], c["certificate"]);
        assert_eq!(stored["revocation_time"], "0");
    }
}

#[tokio::test]
async fn names_outside_the_role_are_refused_with_one_line() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[("allow_ip_sans", "false")]).await;
    for (given, want) in [
        (vec![("common_name", "evil.com")], "common name evil.com is not allowed by this role"),
        (
            vec![("common_name", "api.app.internal"), ("alt_names", "evil.com")],
            "subject alternative name evil.com is not allowed by this role",
        ),
        (vec![("common_name", "api.app.internal"), ("ip_sans", "10.0.0.1")], "allow_ip_sans"),
        (vec![("common_name", "*.app.internal"), ("alt_names", "x y")], "not a valid DNS name"),
        (vec![], "missing required parameter \"common_name\""),
        (vec![("common_name", "api.app.internal"), ("format", "der")], "only pem"),
        (vec![("common_name", "api.app.internal"), ("private_key_format", "der")], "PKCS#8"),
        (vec![("common_name", "api.app.internal"), ("ttl", "forever")], "parameter \"ttl\""),
    ] {
        let e = m.refused("issue/web", &given).await;
        assert!(e.contains(want), "{given:?}: {e}");
    }
    let e = m.refused("issue/nope", &[("common_name", "api.app.internal")]).await;
    assert!(e.contains("no role \"nope\""), "{e}");
    for (given, want) in [
        (vec![("key_type", "dsa")], "give rsa, ec or ed25519"),
        (vec![("key_type", "rsa"), ("key_bits", "1024")], "2048, 3072 or 4096"),
        (vec![("key_bits", "99999999999999999999999")], "parameter \"key_bits\""),
        (vec![("ttl", "10h"), ("max_ttl", "1h")], "must not be longer than max_ttl"),
        (vec![("organization", "a,b")], "give one value"),
        (vec![("organization", "Acme\u{202e}gnp.exe")], "organization holds U+202E"),
        (vec![("ou", "Ops\u{200b}")], "ou holds U+200B"),
        (vec![("organization", "Acme\u{3164}Corp")], "organization holds U+3164"),
        (vec![("ou", "Ops\u{fe0f}")], "ou holds U+FE0F"),
    ] {
        let e = m.refused("roles/bad", &given).await;
        assert!(e.contains(want), "{given:?}: {e}");
    }
    // A common name a reader would not see as written is refused (any-name
    // role, so the name rules do not refuse it first); letters of any script
    // are not.
    m.ok("roles/any", &[("allow_any_name", "true"), ("enforce_hostnames", "false")]).await;
    for (cn, c) in [
        ("admin\u{202e}moc.live", "U+202E"),
        ("pay\u{200d}pal", "U+200D"),
        ("soft\u{ad}hyphen", "U+00AD"),
        ("line\u{2028}break", "U+2028"),
        ("private\u{e000}use", "U+E000"),
        ("tab\there", "U+0009"),
        ("pay\u{3164}pal.example", "U+3164"),
        ("blank\u{2800}braille", "U+2800"),
        ("variation\u{fe0f}", "U+FE0F"),
        ("no\u{a0}break", "U+00A0"),
        ("unassigned\u{0378}", "U+0378"),
        ("xn--ab-g4t.example", "U+202E"),
    ] {
        let e = m.refused("issue/any", &[("common_name", cn)]).await;
        assert!(e.contains(&format!("common_name holds {c}")), "{cn:?}: {e}");
        let e = m.refused("root/generate/internal", &[("common_name", cn)]).await;
        assert!(e.contains(&format!("common_name holds {c}")), "{cn:?}: {e}");
    }
    for alt in ["a\u{202e}b.example", "pay\u{200d}pal.example", "soft\u{ad}hyphen.example", "xn--ab-g4t.example"] {
        let e = m.refused("issue/any", &[("common_name", "ok.example"), ("alt_names", alt)]).await;
        assert!(e.contains("alt_names") && e.contains("U+"), "{alt:?}: {e}");
    }
    // Punycode's decoding is quadratic: long names and labels are refused
    // by length before anything decodes them (this took minutes before).
    let started = std::time::Instant::now();
    let huge = format!("xn--{}@x.example", "a".repeat(200_000));
    let e = m.refused("issue/any", &[("common_name", "ok.example"), ("alt_names", &huge)]).await;
    assert!(e.contains("longer than 320 bytes"), "{e}");
    let long_label = format!("xn--{}.example", "a".repeat(1_000));
    let e = m.refused("issue/any", &[("common_name", &long_label)]).await;
    assert!(e.contains("longer than"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    let c = m.ok("issue/any", &[("common_name", "Zürich Ops Ωμέγα")]).await;
    assert!(c["certificate"].contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn the_ttl_is_the_roles_capped_at_max_ttl_and_refused_past_the_ca() {
    let now = 1_800_000_000;
    // The request's, else the role's, else 768h.
    assert_eq!(not_after(now, 3600, 7200, 0, i64::MAX).unwrap(), (now + 3600, vec![]));
    assert_eq!(not_after(now, 0, 7200, 0, i64::MAX).unwrap().0, now + 7200);
    assert_eq!(not_after(now, 0, 0, 0, i64::MAX).unwrap().0, now + 768 * 3600);
    // Over max_ttl: cut to it, with a warning.
    let (end, w) = not_after(now, 10 * 3600, 0, 3600, i64::MAX).unwrap();
    assert_eq!(end, now + 3600);
    assert!(w[0].contains("max_ttl"), "{w:?}");
    // Past the CA: refused, as Vault's default leaf_not_after_behavior.
    let e = not_after(now, 7200, 0, 0, now + 3600).unwrap_err();
    assert!(e.contains("after this CA's own certificate expires"), "{e}");
    assert!(not_after(i64::MAX - 5, 3600, 0, 0, i64::MAX).is_err(), "no overflow");

    // Through the engine: a root of 10 days, a role of 72h max.
    let m = mount("pki/");
    m.ok("root/generate/internal", &[("common_name", "Short Root"), ("ttl", "240h")]).await;
    web_role(&m, &[]).await;
    let r =
        m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal"), ("ttl", "100h")]).await.unwrap();
    let exp: i64 = r.data.get("expiration").unwrap().parse().unwrap();
    assert!((exp - now_secs() - 72 * 3600).abs() < 5, "capped at max_ttl");
    assert_eq!(r.warnings.len(), 1);
    m.ok("roles/long", &[("allow_any_name", "true"), ("max_ttl", "1000h")]).await;
    let e = m.refused("issue/long", &[("common_name", "a.b"), ("ttl", "500h")]).await;
    assert!(e.contains("after this CA's own certificate expires"), "{e}");
}

fn now_secs() -> i64 {
    now()
}

/// A CSR for `cn` with SANs `dns` and a key of `alg`.
fn csr_for(cn: &str, dns: &[&str], alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut p = rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn csrs_are_verified_and_their_names_and_keys_checked() {
    let m = mount("pki/");
    let r = root(&m, "ec").await;
    web_role(&m, &[]).await;
    let csr = csr_for("svc.app.internal", &["svc.app.internal", "alt.app.internal"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let c = m.ok("sign/web", &[("csr", &csr)]).await;
    assert!(!c.contains_key("private_key"));
    assert_signed_by(&c["certificate"], &r["certificate"]);
    let der = der_of(&c["certificate"]);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
    assert!(san.contains("svc.app.internal") && san.contains("alt.app.internal"), "{san}");

    // The CSR's names are the role's to check.
    let e = m.refused("sign/web", &[("csr", &csr_for("evil.com", &[], &rcgen::PKCS_ECDSA_P256_SHA256))]).await;
    assert!(e.contains("common name evil.com is not allowed"), "{e}");
    let e = m
        .refused("sign/web", &[("csr", &csr_for("a.app.internal", &["evil.com"], &rcgen::PKCS_ECDSA_P256_SHA256))])
        .await;
    assert!(e.contains("evil.com is not allowed"), "{e}");
    // Its key type and size.
    let e = m.refused("sign/web", &[("csr", &csr_for("a.app.internal", &[], &rcgen::PKCS_ED25519))]).await;
    assert!(e.contains("requires keys of type ec"), "{e}");
    m.ok("roles/big", &[("allow_any_name", "true"), ("key_bits", "384")]).await;
    let e = m.refused("sign/big", &[("csr", &csr)]).await;
    assert!(e.contains("at least a 384-bit key"), "{e}");
    m.ok("roles/anykey", &[("allow_any_name", "true"), ("key_type", "any")]).await;
    m.ok("sign/anykey", &[("csr", &csr_for("x.y", &[], &rcgen::PKCS_ED25519))]).await;
    let e = m.refused("issue/anykey", &[("common_name", "x.y")]).await;
    assert!(e.contains("only sign/<role> takes"), "{e}");
    // A CSR's punycode name that decodes to a bidi override, under a role
    // that checks neither host names nor domains.
    m.ok("roles/loose", &[("allow_any_name", "true"), ("enforce_hostnames", "false")]).await;
    let bidi = csr_for("ok.example", &["xn--ab-g4t.example"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let e = m.refused("sign/loose", &[("csr", &bidi)]).await;
    assert!(e.contains("U+202E"), "{e}");
    // Its signature: one byte changed in the signed part is refused.
    let mut der = der_of(&csr);
    let at = der.len() / 2;
    der[at] ^= 1;
    let tampered = ca::pem_encode("CERTIFICATE REQUEST", &der);
    let e = m.refused("sign/web", &[("csr", &tampered)]).await;
    assert!(e.contains("csr:"), "{e}");
    let e = m.refused("sign/web", &[("csr", "not pem")]).await;
    assert!(e.contains("CERTIFICATE REQUEST"), "{e}");
}

#[tokio::test]
async fn revocations_rebuild_a_signed_crl_with_a_new_number() {
    let m = mount("pki/");
    let r = root(&m, "ec").await;
    m.ok("config/crl", &[("expiry", "48h")]).await;
    web_role(&m, &[]).await;
    let a = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let b = m.ok("issue/web", &[("common_name", "b.app.internal")]).await;
    let first = m.read("crl").await;
    m.ok("revoke", &[("serial_number", &a["serial_number"])]).await;
    let again = m.ok("revoke", &[("serial_number", &a["serial_number"])]).await;
    assert_eq!(again["state"], "revoked", "revoking twice is the same revocation");
    m.ok("revoke", &[("certificate", &b["certificate"])]).await;
    let crl = m.read("crl").await;
    assert!(crl["crl_number"].parse::<u64>().unwrap() > first["crl_number"].parse::<u64>().unwrap());
    let der = base64::engine::general_purpose::STANDARD.decode(&crl["crl"]).unwrap();
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let ca_der = der_of(&r["certificate"]);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    parsed.verify_signature(ca_cert.public_key()).expect("signed by the CA");
    let listed: Vec<String> = parsed.iter_revoked_certificates().map(|c| ca::serial_string(c.raw_serial())).collect();
    assert_eq!(listed, vec![a["serial_number"].clone(), b["serial_number"].clone()]);
    assert_eq!(parsed.crl_number().unwrap().to_string(), crl["crl_number"]);
    let this = parsed.last_update().timestamp();
    assert_eq!(parsed.next_update().unwrap().timestamp() - this, 48 * 3600);
    let pem = m.read("crl/pem").await;
    assert!(pem["crl"].starts_with("-----BEGIN X509 CRL-----"));
    assert_ne!(m.read(&format!("cert/{}", a["serial_number"])).await["revocation_time"], "0");

    // What is not this CA's, or not known, is refused.
    let other = mount("other/");
    root(&other, "ec").await;
    web_role(&other, &[]).await;
    let foreign = other.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let e = m.refused("revoke", &[("certificate", &foreign["certificate"])]).await;
    assert!(e.contains("not issued by this mount's CA"), "{e}");
    let e = m.refused("revoke", &[("serial_number", "01:02")]).await;
    assert!(e.contains("no stored certificate"), "{e}");
    let e = m.refused("revoke", &[("serial_number", &r["serial_number"])]).await;
    assert!(e.contains("own CA certificate"), "{e}");
    let e = m.refused("revoke", &[]).await;
    assert!(e.contains("give serial_number"), "{e}");

    // Tidy drops entries (and certificates) expired past the buffer only.
    let t = m.ok("tidy", &[("tidy_cert_store", "true"), ("tidy_revoked_certs", "true")]).await;
    assert_eq!((t["cert_store_deleted_count"].as_str(), t["revoked_cert_deleted_count"].as_str()), ("0", "0"));
    let e = m.refused("tidy", &[]).await;
    assert!(e.contains("tidy_cert_store=true"), "{e}");
}

#[tokio::test]
async fn tidy_removes_what_expired_before_the_safety_buffer() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[]).await;
    let c = m.ok("issue/web", &[("common_name", "a.app.internal"), ("ttl", "1h")]).await;
    m.ok("revoke", &[("serial_number", &c["serial_number"])]).await;
    // Age the stored certificate and its CRL entry by hand.
    let serial = ca::parse_serial(&c["serial_number"]).unwrap();
    let key = ca::cert_key(&serial);
    let mut stored: StoredCert = m.engine.get_json(&key).await.unwrap().unwrap();
    stored.not_after = now() - 10 * 3600;
    m.engine.put_json(&key, &stored).await.unwrap();
    let mut state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    state.revoked[0].not_after = now() - 10 * 3600;
    let number = state.number;
    m.engine.put_json("crl", &state).await.unwrap();
    m.engine.put_json(&revoked_key(&serial), &state.revoked[0]).await.unwrap();
    let t =
        m.ok("tidy", &[("tidy_cert_store", "true"), ("tidy_revoked_certs", "true"), ("safety_buffer", "12h")]).await;
    assert_eq!(t["cert_store_deleted_count"], "0", "inside the buffer");
    let t = m.ok("tidy", &[("tidy_cert_store", "true"), ("tidy_revoked_certs", "true"), ("safety_buffer", "1h")]).await;
    assert_eq!(t["cert_store_deleted_count"], "1");
    assert_eq!(t["revoked_cert_deleted_count"], "1");
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert!(state.revoked.is_empty() && state.number > number, "rebuilt without it");
    assert!(m.storage.keys().iter().all(|k| !k.starts_with("revoked/")), "{:?}", m.storage.keys());

    // More certificates than `list` returns: every expired one goes, in one run.
    for i in 0..10_100u32 {
        let serial = i.to_be_bytes();
        let aged = StoredCert { certificate: String::new(), not_after: now() - 10 * 3600, ca_serial: None };
        m.engine.put_json(&ca::cert_key(&serial), &aged).await.unwrap();
    }
    for i in 0..50u32 {
        let serial = (20_000 + i).to_be_bytes();
        let live = StoredCert { certificate: String::new(), not_after: now() + 10 * 3600, ca_serial: None };
        m.engine.put_json(&ca::cert_key(&serial), &live).await.unwrap();
    }
    let t = m.ok("tidy", &[("tidy_cert_store", "true"), ("safety_buffer", "1h")]).await;
    assert_eq!(t["cert_store_deleted_count"], "10100");
    let left = m.storage.keys().iter().filter(|k| k.starts_with("certs/")).count();
    assert_eq!(left, 51, "the 50 live ones and the CA's own");
}

#[tokio::test]
async fn a_revocation_lost_to_another_nodes_crl_write_comes_back() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[]).await;
    let a = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let b = m.ok("issue/web", &[("common_name", "b.app.internal")]).await;
    m.ok("revoke", &[("serial_number", &a["serial_number"])]).await;
    let only_a: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    m.ok("revoke", &[("serial_number", &b["serial_number"])]).await;
    // Another node, having read the CRL before b's revocation, writes it
    // back with an entry of its own: b's entry is gone from `crl`.
    m.engine.put_json("crl", &only_a).await.unwrap();
    m.engine.periodic(&m.ctx).await.unwrap();
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    let serials: Vec<&str> = state.revoked.iter().map(|r| r.serial.as_str()).collect();
    assert!(serials.contains(&a["serial_number"].as_str()) && serials.contains(&b["serial_number"].as_str()));
    assert!(state.number > only_a.number);
    // Nothing to put back: the periodic pass changes nothing.
    m.engine.periodic(&m.ctx).await.unwrap();
    let again: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(again.number, state.number);
    // A deleted CA takes its revocations along.
    m.call(Operation::Delete, "root", &[]).await.unwrap();
    assert!(m.storage.keys().iter().all(|k| !k.starts_with("revoked/") && k != "crl"));
}

#[tokio::test]
async fn no_store_keeps_storage_flat_over_a_thousand_certificates() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[("no_store", "true")]).await;
    let before = m.storage.keys();
    let mut serials = std::collections::HashSet::new();
    for i in 0..1000 {
        let c = m.ok("issue/web", &[("common_name", &format!("n{i}.app.internal"))]).await;
        serials.insert(c["serial_number"].clone());
    }
    assert_eq!(serials.len(), 1000, "serials are unique");
    assert_eq!(m.storage.keys(), before, "no key per certificate");
    // Such a certificate is revoked with its PEM.
    let c = m.ok("issue/web", &[("common_name", "x.app.internal")]).await;
    let e = m.refused("revoke", &[("serial_number", &c["serial_number"])]).await;
    assert!(e.contains("certificate=@cert.pem"), "{e}");
    m.ok("revoke", &[("certificate", &c["certificate"])]).await;
}

#[tokio::test]
async fn a_two_level_chain_builds_with_urls_and_path_lengths() {
    let root_m = mount("pki/");
    let r = root(&root_m, "ec").await;
    root_m
        .ok(
            "config/urls",
            &[
                ("issuing_certificates", "http://ca.internal/v1/pki/ca"),
                ("crl_distribution_points", "http://ca.internal/v1/pki/crl"),
            ],
        )
        .await;
    let int = mount("pki_int/");
    let csr = int
        .ok("intermediate/generate/internal", &[("common_name", "Keybridge Intermediate"), ("key_type", "ed25519")])
        .await;
    assert!(!csr.contains_key("private_key"), "internal keeps the key");
    // Nothing is a CA yet on the intermediate.
    let e = int.refused("issue/web", &[("common_name", "a.app.internal")]).await;
    assert!(e.contains("no role"), "{e}");
    let signed = root_m.ok("root/sign-intermediate", &[("csr", &csr["csr"]), ("ttl", "43800h")]).await;
    assert_signed_by(&signed["certificate"], &r["certificate"]);
    let der = der_of(&signed["certificate"]);
    let (_, icert) = X509Certificate::from_der(&der).unwrap();
    assert!(icert.is_ca());
    let ext = format!("{:?}", icert.extensions());
    assert!(ext.contains("http://ca.internal/v1/pki/crl") && ext.contains("http://ca.internal/v1/pki/ca"), "{ext}");
    // A certificate that is not for the pending key is refused.
    let e = int.refused("intermediate/set-signed", &[("certificate", &r["certificate"])]).await;
    assert!(e.contains("pending intermediate key"), "{e}");
    let bundle = format!("{}{}", signed["certificate"], signed["ca_chain"]);
    int.ok("intermediate/set-signed", &[("certificate", &bundle)]).await;
    web_role(&int, &[]).await;
    let leaf = int.ok("issue/web", &[("common_name", "api.app.internal")]).await;
    assert_signed_by(&leaf["certificate"], &signed["certificate"]);
    assert_eq!(leaf["ca_chain"], format!("{}{}", signed["certificate"], r["certificate"]));
    // A second CA on a mount is refused until the first is deleted.
    let e = int.refused("root/generate/internal", &[("common_name", "again")]).await;
    assert!(e.contains("has a CA already"), "{e}");
    // Path length: a root of 0 signs no CA.
    let zero = mount("zero/");
    zero.ok("root/generate/exported", &[("common_name", "Zero"), ("max_path_length", "0")]).await;
    let e = zero.refused("root/sign-intermediate", &[("csr", &csr["csr"])]).await;
    assert!(e.contains("path length of 0"), "{e}");
}

#[tokio::test]
async fn exported_roots_return_their_key_once_and_imports_need_key_and_ca() {
    let a = mount("a/");
    let r = a.ok("root/generate/exported", &[("common_name", "Exported Root"), ("key_type", "rsa")]).await;
    assert_eq!(r["private_key_type"], "rsa");
    // The key is never read back.
    for path in ["ca", "ca/pem", "ca_chain", "crl", "crl/pem"] {
        let d = a.read(path).await;
        assert!(!d.values().any(|v| v.contains("PRIVATE KEY")), "{path}");
    }
    let der = base64::engine::general_purpose::STANDARD.decode(&a.read("ca").await["certificate"]).unwrap();
    assert_eq!(der, der_of(&r["certificate"]));
    // Imported elsewhere: certificate and key, PKCS#8.
    let b = mount("b/");
    let e = b.refused("config/ca", &[("pem_bundle", &r["certificate"])]).await;
    assert!(e.contains("private key"), "{e}");
    let bundle = format!("{}{}", r["certificate"], r["private_key"]);
    b.ok("config/ca", &[("pem_bundle", &bundle)]).await;
    web_role(&b, &[]).await;
    let leaf = b.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    assert_signed_by(&leaf["certificate"], &r["certificate"]);
    // A leaf (not a CA) with its key is refused.
    let c = mount("c/");
    let e = c.refused("config/ca", &[("pem_bundle", &format!("{}{}", leaf["certificate"], leaf["private_key"]))]).await;
    assert!(e.contains("not a CA certificate"), "{e}");
    // Deleting the root empties the mount's CA.
    a.call(Operation::Delete, "root", &[]).await.unwrap();
    assert!(matches!(a.call(Operation::Read, "ca/pem", &[]).await, Err(EngineError::NotFound(_))));
}

#[tokio::test]
async fn leases_revoke_their_certificate() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[("generate_lease", "true"), ("no_store", "true")]).await;
    let r = m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal")]).await.unwrap();
    let lease = r.lease.expect("a lease");
    assert!(!lease.terms.renewable);
    let serial = r.data.get("serial_number").unwrap().to_string();
    let info = lease_info("issue/web", &lease);
    m.engine.revoke(&m.ctx, &info).await.unwrap();
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(state.revoked[0].serial, serial);
}

/// A leased certificate ends with its lease: never past the mount's
/// max_lease_ttl, which would revoke it while still valid. Without a
/// lease, or under the limit, the role's max_ttl applies.
#[tokio::test]
async fn a_leased_certificate_never_outlives_the_mounts_longest_lease() {
    let mut m = mount("pki/");
    m.ctx.lease_max_ttl_secs = 3600;
    root(&m, "ec").await;
    web_role(&m, &[("generate_lease", "true"), ("no_store", "true"), ("max_ttl", "72h")]).await;
    let r = m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal"), ("ttl", "48h")]).await.unwrap();
    let lease = r.lease.expect("a lease");
    assert!(lease.terms.ttl_secs <= 3600, "{}", lease.terms.ttl_secs);
    assert!(r.warnings.iter().any(|w| w.contains("max_lease_ttl")), "{:?}", r.warnings);
    // Within the limit: as asked.
    let r = m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal"), ("ttl", "30m")]).await.unwrap();
    assert_eq!(r.lease.expect("a lease").terms.ttl_secs, 1800);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // No lease: the role's max_ttl.
    web_role(&m, &[("generate_lease", "false"), ("no_store", "true"), ("max_ttl", "72h")]).await;
    let r = m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal"), ("ttl", "48h")]).await.unwrap();
    let end: i64 = r.data.get("expiration").unwrap().parse().unwrap();
    assert!(end - now() > 47 * 3600, "{end}");
}

#[test]
fn nothing_holding_a_key_prints_it() {
    // Params (the responses' data) print no values; StoredCa and Pending
    // have no Debug at all.
    let p = Params(vec![("private_key".into(), "-----BEGIN PRIVATE KEY-----".into())]);
    assert!(!format!("{p:?}").contains("BEGIN"));
}

#[tokio::test]
async fn the_crl_value_at_its_bound_fits_under_the_write_limit() {
    let m = mount("pki/");
    root(&m, "ec").await;
    let stored: StoredCa = m.engine.get_json("ca").await.unwrap().unwrap();
    let ca = Ca::load(&stored).unwrap();
    let mut state = CrlState::default();
    for _ in 0..crl::MAX_REVOKED {
        let serial = ca::serial_string(&ca::new_serial());
        state.add(Revoked { serial, revoked_at: now(), not_after: now() + 3600 }).unwrap();
    }
    state.rebuild(&ca, now(), crl::DEFAULT_EXPIRY).unwrap();
    let size = serde_json::to_vec(&state).unwrap().len();
    assert!(size < crl::MAX_VALUE_BYTES, "{size}");
    assert!(size > 800_000 && size < 950_000, "docs/PKI.md says about 870 KB: {size}");
    assert!(state.der_bytes().unwrap().len() < 210_000);
    m.engine.put_crl(&state).await.unwrap();
    // One more is refused, saying what to do.
    let e = state.add(Revoked { serial: "01".into(), revoked_at: 1, not_after: 2 }).unwrap_err();
    assert!(e.to_string().contains("tidy_revoked_certs=true"), "{e}");
}

/// Ages a revoked certificate by hand: its stored certificate, its CRL
/// entry and its `revoked/` key all say it expired at `not_after`.
async fn age_revocation(m: &Mount, serial_text: &str, not_after: i64) {
    let serial = ca::parse_serial(serial_text).unwrap();
    let mut state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    let entry = state.revoked.iter_mut().find(|r| r.serial == serial_text).unwrap();
    entry.not_after = not_after;
    let entry = entry.clone();
    m.engine.put_json("crl", &state).await.unwrap();
    m.engine.put_json(&revoked_key(&serial), &entry).await.unwrap();
}

#[tokio::test]
async fn a_lease_ending_at_its_certificates_expiry_adds_no_crl_entry() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[("generate_lease", "true")]).await;
    let r = m.call(Operation::Update, "issue/web", &[("common_name", "a.app.internal"), ("ttl", "1h")]).await.unwrap();
    let lease = r.lease.expect("a lease");
    let serial_text = r.data.get("serial_number").unwrap().to_string();
    // The lease worker revokes at the lease's end, which is the notAfter:
    // by then (or within the skew of it) the certificate is expired.
    let serial = ca::parse_serial(&serial_text).unwrap();
    let key = ca::cert_key(&serial);
    for not_after in [now(), now() + 30, now() - 5] {
        let mut stored: StoredCert = m.engine.get_json(&key).await.unwrap().unwrap();
        stored.not_after = not_after;
        m.engine.put_json(&key, &stored).await.unwrap();
        let info = lease_info("issue/web", &lease);
        m.engine.revoke(&m.ctx, &info).await.unwrap();
        let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
        assert!(state.revoked.is_empty(), "notAfter {not_after}: {:?}", state.revoked);
        assert!(m.storage.keys().iter().all(|k| !k.starts_with("revoked/")));
    }
    // Explicitly, too: success, state expired, a warning, no entry.
    let res = m.call(Operation::Update, "revoke", &[("serial_number", &serial_text)]).await.unwrap();
    assert_eq!(res.data.get("state"), Some("expired"));
    assert!(res.warnings.iter().any(|w| w.contains("not added to the CRL")), "{:?}", res.warnings);
    // A certificate with more than the skew left is listed.
    let c = m.ok("issue/web", &[("common_name", "b.app.internal"), ("ttl", "1h")]).await;
    assert_eq!(m.ok("revoke", &[("serial_number", &c["serial_number"])]).await["state"], "revoked");
}

#[tokio::test]
async fn the_periodic_pass_drops_entries_expired_before_the_crl_was_signed() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[]).await;
    let a = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let b = m.ok("issue/web", &[("common_name", "b.app.internal")]).await;
    let c = m.ok("issue/web", &[("common_name", "c.app.internal")]).await;
    for x in [&a, &b, &c] {
        m.ok("revoke", &[("serial_number", &x["serial_number"])]).await;
    }
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    // a expired before the current CRL was signed (it was listed after its
    // expiry); b expired after it (not yet listed once past its expiry).
    age_revocation(&m, &a["serial_number"], state.this_update - 10).await;
    age_revocation(&m, &b["serial_number"], state.this_update).await;
    m.engine.periodic(&m.ctx).await.unwrap();
    let after: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    let serials: Vec<&str> = after.revoked.iter().map(|r| r.serial.as_str()).collect();
    assert_eq!(serials, vec![b["serial_number"].as_str(), c["serial_number"].as_str()]);
    assert!(after.number > state.number, "re-signed without a");
    let a_key = revoked_key(&ca::parse_serial(&a["serial_number"]).unwrap());
    assert!(!m.storage.keys().contains(&a_key), "its revoked/ key goes too, or the repair would put it back");
    let der = after.der_bytes().unwrap();
    let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 2);
    // Nothing expired left to drop: the next pass changes nothing.
    m.engine.periodic(&m.ctx).await.unwrap();
    let again: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(again.number, after.number);
    // A lost revocation whose certificate has expired is not put back.
    let c_serial = ca::parse_serial(&c["serial_number"]).unwrap();
    let mut lost = again.clone();
    lost.revoked.retain(|r| r.serial != c["serial_number"]);
    m.engine.put_json("crl", &lost).await.unwrap();
    let mut entry: Revoked = m.engine.get_json(&revoked_key(&c_serial)).await.unwrap().unwrap();
    entry.not_after = now() - 1;
    m.engine.put_json(&revoked_key(&c_serial), &entry).await.unwrap();
    m.engine.periodic(&m.ctx).await.unwrap();
    let last: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert!(last.find(&c["serial_number"]).is_none());
    assert!(!m.storage.keys().contains(&revoked_key(&c_serial)));
}

/// A CRL value of `n` unexpired entries (each also under `revoked/`), as
/// revocations at the limit would leave it.
async fn fill_crl(m: &Mount, n: usize) -> CrlState {
    let stored: StoredCa = m.engine.get_json("ca").await.unwrap().unwrap();
    let ca = Ca::load(&stored).unwrap();
    let mut state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    for _ in 0..n {
        let serial = ca::new_serial();
        let entry = Revoked { serial: ca::serial_string(&serial), revoked_at: now(), not_after: now() + 3600 };
        m.engine.put_json(&revoked_key(&serial), &entry).await.unwrap();
        state.add(entry).unwrap();
    }
    state.rebuild(&ca, now(), crl::DEFAULT_EXPIRY).unwrap();
    m.engine.put_crl(&state).await.unwrap();
    state
}

#[tokio::test]
async fn the_repair_pass_puts_back_accepted_revocations_past_the_entry_limit() {
    let m = mount("pki/");
    root(&m, "ec").await;
    let full = fill_crl(&m, crl::MAX_REVOKED).await;
    // Two revocations another node accepted at the limit, lost from `crl`.
    let mut extra = Vec::new();
    for _ in 0..2 {
        let serial = ca::new_serial();
        let entry = Revoked { serial: ca::serial_string(&serial), revoked_at: now(), not_after: now() + 3600 };
        m.engine.put_json(&revoked_key(&serial), &entry).await.unwrap();
        extra.push(entry.serial);
    }
    m.engine.periodic(&m.ctx).await.unwrap();
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(state.revoked.len(), crl::MAX_REVOKED + 2);
    assert!(extra.iter().all(|s| state.find(s).is_some()));
    assert!(state.number > full.number);
    // New revocations are still refused at the limit, saying to tidy.
    web_role(&m, &[]).await;
    let c = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let e = m.refused("revoke", &[("serial_number", &c["serial_number"])]).await;
    assert!(e.contains("tidy"), "{e}");
}

#[tokio::test]
async fn a_failed_repair_still_refreshes_the_crl() {
    let m = mount("pki/");
    root(&m, "ec").await;
    m.ok("config/crl", &[("expiry", "1h")]).await;
    // A CRL about to run out, and a revoked/ entry that does not read.
    let mut state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    state.next_update = now() + 10;
    m.engine.put_json("crl", &state).await.unwrap();
    m.storage.put("revoked/01-02", b"not json").await.unwrap();
    m.engine.periodic(&m.ctx).await.unwrap();
    let after: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert!(after.number > state.number, "re-signed");
    assert!(after.next_update >= now() + 3500, "a fresh window: {}", after.next_update);
}

#[tokio::test]
async fn crl_rotate_re_signs_at_most_once_a_minute() {
    let m = mount("pki/");
    root(&m, "ec").await;
    let first: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    // The CRL was signed just now (with the CA): a rotate returns it.
    for _ in 0..5 {
        let r = m.read("crl/rotate").await;
        assert_eq!((r["success"].as_str(), r["rebuilt"].as_str()), ("true", "false"));
        assert_eq!(r["crl_number"], first.number.to_string());
    }
    let same: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(same, first, "storage untouched");
    // A minute on, it is re-signed.
    let mut old = first.clone();
    old.this_update = now() - ROTATE_MIN_INTERVAL;
    m.engine.put_json("crl", &old).await.unwrap();
    let r = m.read("crl/rotate").await;
    assert_eq!(r["rebuilt"], "true");
    let rotated: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert_eq!(rotated.number, first.number + 1);
    assert_eq!(r["crl_number"], rotated.number.to_string());
}

#[tokio::test]
async fn cert_reads_its_revocation_from_its_own_key() {
    let m = mount("pki/");
    root(&m, "ec").await;
    web_role(&m, &[]).await;
    let c = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let path = format!("cert/{}", c["serial_number"]);
    assert_eq!(m.read(&path).await["revocation_time"], "0");
    let r = m.ok("revoke", &[("serial_number", &c["serial_number"])]).await;
    let read = m.read(&path).await;
    assert_eq!(read["revocation_time"], r["revocation_time"]);
    assert!(!read["revocation_time_rfc3339"].is_empty());
    // The CRL value is not read: unreadable, the certificate still reads.
    m.storage.put("crl", b"not json").await.unwrap();
    assert_eq!(m.read(&path).await["revocation_time"], r["revocation_time"]);
}

/// A PKCS#10 request for CN=Weak Intermediate with an RSA-1024 key
/// (openssl req -newkey rsa:1024): ring makes no such key.
const RSA_1024_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBWzCBxQIBADAcMRowGAYDVQQDDBFXZWFrIEludGVybWVkaWF0ZTCBnzANBgkq
hkiG9w0BAQEFAAOBjQAwgYkCgYEAsB/OCXYu1a99Tz4eZ3l1GGtcQLQDI/q9kk3c
Cl7uyZrj4RDFZDk6FQeA9icDIpTG+LYo/1LOoi2WlhgsToy6opbosfyiXTFJEjes
NL9Rfilxs4dR7Wwm3ihAP5R5spQg8MbUBi+yQdQNHKT8uBAgF2fzac2KoYFgelHN
/7FLEC8CAwEAAaAAMA0GCSqGSIb3DQEBCwUAA4GBABqL3QwHA69xXWTP47lfCOF6
Cte5MLpuRIgq4K3Wp4K8tCp80+Ek0kJgDG5ui1BNBGNX2HOTwJ9R7souObKW+MmF
ZWJScFLdyQaDjk5X62bZoViMyLnqf8tl3xOHeUyX5LKTB0YE4ZD9h1YVZn2FFm6Q
DcgQFYmA8wKDFuwDIn/C
-----END CERTIFICATE REQUEST-----
";

#[tokio::test]
async fn sign_intermediate_checks_the_csrs_key() {
    let m = mount("pki/");
    root(&m, "ec").await;
    // ring verifies no RSA signature under 2048 bits, so such a CSR is
    // refused at its signature already; the key check (as sign/<role>'s)
    // stands behind it should verification ever take one.
    let e = m.refused("root/sign-intermediate", &[("csr", RSA_1024_CSR)]).await;
    assert!(e.contains("2048") || e.contains("signature does not verify"), "{e}");
    assert!(keys::check_against_role((KeyType::Rsa, 1024), (KeyType::Any, 0)).unwrap_err().contains("2048"));
    // A supported key is signed.
    let int = mount("int/");
    let csr = int.ok("intermediate/generate/internal", &[("common_name", "Int"), ("key_type", "ec")]).await;
    m.ok("root/sign-intermediate", &[("csr", &csr["csr"])]).await;
}

#[tokio::test]
async fn a_previous_cas_certificate_is_not_revoked_against_the_current_one() {
    let m = mount("pki/");
    let first = root(&m, "ec").await;
    web_role(&m, &[]).await;
    let old = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    m.ok("roles/leased", &[("allow_any_name", "true"), ("generate_lease", "true"), ("no_store", "true")]).await;
    let leased = m.call(Operation::Update, "issue/leased", &[("common_name", "c.example")]).await.unwrap();
    let lease = leased.lease.expect("a lease");
    assert_eq!(lease.internal.get("ca_serial"), Some(first["serial_number"].as_str()));
    // A new CA on the mount; the old certificates stay under certs/.
    m.call(Operation::Delete, "root", &[]).await.unwrap();
    let second = root(&m, "ec").await;
    let e = m.refused("revoke", &[("serial_number", &old["serial_number"])]).await;
    assert!(e.contains("previous CA") && e.contains(&first["serial_number"]), "{e}");
    // Its lease ends quietly, adding nothing to the new CA's CRL.
    let info = lease_info("issue/leased", &lease);
    m.engine.revoke(&m.ctx, &info).await.unwrap();
    let state: CrlState = m.engine.get_json("crl").await.unwrap().unwrap();
    assert!(state.revoked.is_empty());
    // The current CA's certificates are revoked as before, stored with its serial.
    let new = m.ok("issue/web", &[("common_name", "a.app.internal")]).await;
    let stored: StoredCert =
        m.engine.get_json(&ca::cert_key(&ca::parse_serial(&new["serial_number"]).unwrap())).await.unwrap().unwrap();
    assert_eq!(stored.ca_serial.as_deref(), Some(second["serial_number"].as_str()));
    assert_eq!(m.ok("revoke", &[("serial_number", &new["serial_number"])]).await["state"], "revoked");
    // A certificate stored before the CA's serial was recorded is taken as the current CA's.
    let legacy = m.ok("issue/web", &[("common_name", "l.app.internal")]).await;
    let key = ca::cert_key(&ca::parse_serial(&legacy["serial_number"]).unwrap());
    let mut stored: StoredCert = m.engine.get_json(&key).await.unwrap().unwrap();
    stored.ca_serial = None;
    m.engine.put_json(&key, &stored).await.unwrap();
    assert_eq!(m.ok("revoke", &[("serial_number", &legacy["serial_number"])]).await["state"], "revoked");
}

/// An imported CA must have a positive serial (a negative one would read as
/// the positive number of the same bytes), and a CRL is signed only when
/// its issuer name is the CA's subject byte for byte.
#[tokio::test]
async fn imported_cas_need_a_positive_serial_and_a_subject_the_crl_reproduces() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "Old Root");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x7f, 0x11, 0x22, 0x33]));
    let good = p.self_signed(&key).unwrap().der().to_vec();
    assert!(ca::check_serial(&good).is_ok());
    // The same certificate with the serial's first byte 0x80: negative.
    let at = good.windows(6).position(|w| w == [0x02, 0x04, 0x7f, 0x11, 0x22, 0x33]).unwrap() + 2;
    let mut negative = good.clone();
    negative[at] = 0x80;
    let e = ca::check_serial(&negative).err().unwrap();
    assert!(e.contains("zero or negative"), "{e}");
    // A stored CA still loads (one installed before the check works on).
    assert!(ca::ca_facts(&negative).is_ok());
    let m = mount("neg/");
    let bundle = format!("{}{}", ca::pem_encode("CERTIFICATE", &negative), key.serialize_pem());
    let e = m.refused("config/ca", &[("pem_bundle", &bundle)]).await;
    assert!(e.contains("zero or negative"), "{e}");
    assert!(m.storage.keys().is_empty(), "{:?}", m.storage.keys());

    // A CRL whose issuer is not the CA's subject byte for byte is told apart.
    let m = mount("pki/");
    root(&m, "ec").await;
    let raw = m.storage.0.lock().unwrap().get("ca").cloned().unwrap();
    let stored: StoredCa = serde_json::from_slice(&raw).unwrap();
    let mut ca = Ca::load(&stored).unwrap();
    let mut state = CrlState::default();
    state.rebuild(&ca, 1_800_000_000, 3600).unwrap();
    assert!(state.issuer_matches(&ca));
    let last = ca.facts.subject_raw.len() - 1;
    ca.facts.subject_raw[last] ^= 0x01;
    assert!(!state.issuer_matches(&ca));
}
