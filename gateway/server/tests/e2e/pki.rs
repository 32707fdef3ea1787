//! The built-in PKI engine end to end, through the CLI: a root at pki/, an
//! intermediate at pki_int/ that the root signs, a role, a certificate
//! for api.app.internal checked by OpenSSL and by rustls-webpki, used in a
//! real TLS handshake, revoked (and found in the CRL by OpenSSL and
//! webpki); a CSR made by `openssl req` signed; a name outside the role
//! refused.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use crate::harness::{Server, blocking, json, stderr};

/// The DER of each PEM block in `pem`.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b64 = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            b64.clear();
        } else if line.starts_with("-----END") {
            out.push(base64::engine::general_purpose::STANDARD.decode(&b64).unwrap());
        } else {
            b64.push_str(line.trim());
        }
    }
    out
}

fn der(pem: &str) -> Vec<u8> {
    ders(pem).remove(0)
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let o = blocking(|| Command::new("openssl").current_dir(dir).args(args).output().unwrap());
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A new P-256 key (`NAME.key`) and a CSR for it (`NAME.csr`) from
/// `openssl req`, with this subject and subjectAltName.
fn new_csr(dir: &Path, name: &str, subject: &str, sans: &str) {
    let (key, csr, san) = (format!("{name}.key"), format!("{name}.csr"), format!("subjectAltName={sans}"));
    let args = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", &key];
    let (good, out) = openssl(dir, &[&args[..], &["-out", &csr, "-subj", subject, "-addext", &san]].concat());
    assert!(good, "{out}");
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls-webpki's verdict on `leaf` (with `intermediates`) for `name`,
/// trusting `root`, with `crls` checked.
fn webpki_verdict(root: &str, intermediates: &[&str], leaf: &str, name: &str, crls: &[Vec<u8>]) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(root))).unwrap();
    let mut builder = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        // The intermediate's CRL: the leaf's status is checked (the
        // intermediate's would need the root's CRL).
        builder = builder
            .with_crls(crls.iter().map(|c| CertificateRevocationListDer::from(c.clone())))
            .only_check_end_entity_revocation();
    }
    let verifier = builder.build().unwrap();
    let inter: Vec<CertificateDer<'static>> = intermediates.iter().map(|p| CertificateDer::from(der(p))).collect();
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &CertificateDer::from(der(leaf)),
        &inter,
        &ServerName::try_from(name.to_string()).unwrap(),
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// A TLS handshake between a tokio-rustls server presenting `chain` with
/// `key` and a client trusting only `root`, asking for `name`; the bytes
/// exchanged, or the client's error.
async fn handshake(root: &str, chain: &[&str], key: &str, name: &str) -> Result<Vec<u8>, String> {
    let certs: Vec<CertificateDer<'static>> = chain.iter().map(|p| CertificateDer::from(der(p))).collect();
    let key = PrivateKeyDer::Pkcs8(der(key).into());
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
        let mut buf = [0u8; 5];
        if tls.read_exact(&mut buf).await.is_ok() && &buf == b"ping!" {
            let _ = tls.write_all(b"pong!").await;
            let _ = tls.shutdown().await;
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(root))).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let got = async {
        let mut tls =
            connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"ping!").await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(buf)
    }
    .await;
    let _ = served.await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_level_chain_issues_verifies_serves_tls_revokes_and_signs_csrs() {
    let s = Server::dev();
    let t = Some("root-e2e");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let file = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        format!("@{}", p.display())
    };

    // The root at pki/, the intermediate at pki_int/.
    ok(&["mount", "enable", "--type", "pki", "pki/"]);
    ok(&["mount", "enable", "--type", "pki", "pki_int/"]);
    let root = json(&ok(&[
        "write",
        "pki/root/generate/internal",
        "common_name=Keybridge Root CA",
        "ttl=87600h",
        "-o",
        "json",
    ]));
    let root_pem = root["data"]["certificate"].as_str().unwrap().to_string();
    assert!(root["data"].get("private_key").is_none(), "internal: the key stays");
    ok(&[
        "write",
        "pki/config/urls",
        "issuing_certificates=http://127.0.0.1:8200/v1/pki/ca",
        "crl_distribution_points=http://127.0.0.1:8200/v1/pki/crl",
    ]);
    let csr = json(&ok(&[
        "write",
        "pki_int/intermediate/generate/internal",
        "common_name=Keybridge Intermediate CA",
        "-o",
        "json",
    ]));
    let csr_arg = file("int.csr", csr["data"]["csr"].as_str().unwrap());
    let signed =
        json(&ok(&["write", "pki/root/sign-intermediate", &format!("csr={csr_arg}"), "ttl=43800h", "-o", "json"]));
    let int_pem = signed["data"]["certificate"].as_str().unwrap().to_string();
    let bundle = format!("{int_pem}{}", signed["data"]["ca_chain"].as_str().unwrap());
    let bundle_arg = file("int-bundle.pem", &bundle);
    ok(&["write", "pki_int/intermediate/set-signed", &format!("certificate={bundle_arg}")]);
    ok(&["write", "pki_int/roles/app", "allowed_domains=app.internal", "allow_subdomains=true", "max_ttl=72h"]);

    // A certificate for api.app.internal.
    let leaf = json(&ok(&["write", "pki_int/issue/app", "common_name=api.app.internal", "ttl=24h", "-o", "json"]));
    let data = &leaf["data"];
    let leaf_pem = data["certificate"].as_str().unwrap().to_string();
    let key_pem = data["private_key"].as_str().unwrap().to_string();
    let serial = data["serial_number"].as_str().unwrap().to_string();
    assert_eq!(data["private_key_type"], "ec", "{leaf}");
    assert_eq!(data["issuing_ca"].as_str().unwrap(), int_pem);
    assert_eq!(data["ca_chain"].as_str().unwrap(), format!("{int_pem}{root_pem}"));
    assert_eq!(serial.len(), 59, "20 bytes, colon-separated: {serial}");
    assert!(serial.bytes().all(|b| b == b':' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{serial}");
    let expiration: i64 = data["expiration"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((expiration - now - 24 * 3600).abs() < 60, "{expiration}");
    file("root.pem", &root_pem);
    file("int.pem", &int_pem);
    file("leaf.pem", &leaf_pem);

    // OpenSSL builds and checks the chain.
    let (good, out) = openssl(d, &["verify", "-CAfile", "root.pem", "-untrusted", "int.pem", "leaf.pem"]);
    assert!(good && out.contains("leaf.pem: OK"), "{out}");
    let (good, out) = openssl(d, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(!good, "not without the intermediate: {out}");
    let (_, text) = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(text.contains("DNS:api.app.internal"), "{text}");
    let (_, text) = openssl(d, &["x509", "-in", "int.pem", "-noout", "-text"]);
    assert!(text.contains("CA Issuers - URI:http://127.0.0.1:8200/v1/pki/ca"), "{text}");
    assert!(text.contains("URI:http://127.0.0.1:8200/v1/pki/crl"), "{text}");
    // So does rustls-webpki, for the name and no other.
    webpki_verdict(&root_pem, &[&int_pem], &leaf_pem, "api.app.internal", &[]).unwrap();
    let e = webpki_verdict(&root_pem, &[&int_pem], &leaf_pem, "evil.com", &[]).unwrap_err();
    assert!(e.contains("NotValidForName") || e.contains("not valid for"), "{e}");
    // A real handshake, the server presenting leaf and intermediate.
    let got = handshake(&root_pem, &[&leaf_pem, &int_pem], &key_pem, "api.app.internal").await.unwrap();
    assert_eq!(got, b"pong!");
    let e = handshake(&root_pem, &[&leaf_pem, &int_pem], &key_pem, "other.app.internal").await.unwrap_err();
    assert!(e.contains("not valid for") || e.contains("NotValidForName"), "{e}");

    // Names outside the role are refused, and nothing is issued.
    let o = s.cli(t, &["write", "pki_int/issue/app", "common_name=evil.com"]);
    assert!(
        !o.status.success() && stderr(&o).contains("common name evil.com is not allowed by this role"),
        "{}",
        stderr(&o)
    );
    let o = s.cli(t, &["write", "pki_int/issue/app", "common_name=api.app.internal", "alt_names=evil.com"]);
    assert!(!o.status.success() && stderr(&o).contains("evil.com is not allowed"), "{}", stderr(&o));

    // A CSR from `openssl req`, signed under the role.
    new_csr(d, "svc", "/CN=svc.app.internal", "DNS:svc.app.internal,DNS:svc2.app.internal");
    let svc = json(&ok(&["write", "pki_int/sign/app", &format!("csr=@{}", d.join("svc.csr").display()), "-o", "json"]));
    assert!(svc["data"].get("private_key").is_none());
    file("svc.pem", svc["data"]["certificate"].as_str().unwrap());
    let (good, out) = openssl(d, &["verify", "-CAfile", "root.pem", "-untrusted", "int.pem", "svc.pem"]);
    assert!(good && out.contains("svc.pem: OK"), "{out}");
    let (_, text) = openssl(d, &["x509", "-in", "svc.pem", "-noout", "-text"]);
    assert!(text.contains("DNS:svc2.app.internal"), "{text}");
    // The key in the certificate is the CSR's.
    let (_, from_cert) = openssl(d, &["x509", "-in", "svc.pem", "-noout", "-pubkey"]);
    let (_, from_key) = openssl(d, &["pkey", "-in", "svc.key", "-pubout"]);
    assert_eq!(from_cert, from_key);
    // A CSR for a name outside the role is refused.
    let (good, out) = openssl(d, &["req", "-new", "-key", "svc.key", "-out", "evil.csr", "-subj", "/CN=evil.com"]);
    assert!(good, "{out}");
    let o = s.cli(t, &["write", "pki_int/sign/app", &format!("csr=@{}", d.join("evil.csr").display())]);
    assert!(!o.status.success() && stderr(&o).contains("evil.com is not allowed"), "{}", stderr(&o));

    // Revoked: the CRL (rebuilt, its number up) lists it for OpenSSL and
    // for webpki.
    let before = json(&ok(&["read", "pki_int/crl", "-o", "json"]));
    let revoked = json(&ok(&["write", "pki_int/revoke", &format!("serial_number={serial}"), "-o", "json"]));
    assert_eq!(revoked["data"]["state"], "revoked", "{revoked}");
    let crl = json(&ok(&["read", "pki_int/crl", "-o", "json"]));
    let number = |v: &serde_json::Value| v["data"]["crl_number"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(number(&crl) > number(&before), "{crl}");
    let crl_der = base64::engine::general_purpose::STANDARD.decode(crl["data"]["crl"].as_str().unwrap()).unwrap();
    std::fs::write(d.join("crl.der"), &crl_der).unwrap();
    let (good, text) = openssl(d, &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"]);
    assert!(good, "{text}");
    let hex = serial.replace(':', "").to_uppercase();
    assert!(text.contains(&format!("Serial Number: {hex}")), "{hex} not in:\n{text}");
    assert!(text.contains("Keybridge Intermediate CA"), "{text}");
    let crl_pem = json(&ok(&["read", "pki_int/crl/pem", "-o", "json"]));
    assert_eq!(der(crl_pem["data"]["crl"].as_str().unwrap()), crl_der);
    let e = webpki_verdict(&root_pem, &[&int_pem], &leaf_pem, "api.app.internal", std::slice::from_ref(&crl_der))
        .unwrap_err();
    assert!(e.to_lowercase().contains("revoked"), "{e}");
    let svc_pem = svc["data"]["certificate"].as_str().unwrap();
    webpki_verdict(&root_pem, &[&int_pem], svc_pem, "svc.app.internal", std::slice::from_ref(&crl_der)).unwrap();
    file("crl.pem", crl_pem["data"]["crl"].as_str().unwrap());
    let (good, out) = openssl(
        d,
        &["verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "int.pem", "-CRLfile", "crl.pem", "leaf.pem"],
    );
    assert!(!good && out.contains("certificate revoked"), "{out}");
    let (good, out) = openssl(
        d,
        &["verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "int.pem", "-CRLfile", "crl.pem", "svc.pem"],
    );
    assert!(good, "another certificate of the CA is not revoked: {out}");
    // The stored certificate says when.
    let read = json(&ok(&["read", &format!("pki_int/cert/{serial}"), "-o", "json"]));
    assert_ne!(read["data"]["revocation_time"], "0", "{read}");
    let listed = json(&ok(&["list", "pki_int/certs", "-o", "json"]));
    assert!(listed["data"]["keys"].as_str().unwrap().contains(&serial), "{listed}");
}

/// The origin document's PKI rule: `pki/issue/app-tls` with
/// `allowed_parameters` (`common_name = ["*.app.internal"]`, `ttl =
/// ["24h"]`). Issuing is a write to a path without an existence check, so
/// it takes `update` (the document's `["create", "read"]` grants none, as
/// in Vault; `policy lint` says so). Values are matched as strings, as
/// Vault does: `1440m` is not `24h`. A comma list is checked item by item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_documents_policy_constrains_issuing() {
    let s = Server::dev();
    let root = Some("root-e2e");
    let ok = |t: Option<&str>, args: &[&str]| {
        let o = s.cli(t, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(root, &["mount", "enable", "--type", "pki", "pki/"]);
    ok(root, &["write", "pki/root/generate/internal", "common_name=Origin Root", "ttl=8760h"]);
    ok(root, &["write", "pki/roles/app-tls", "allowed_domains=app.internal", "allow_subdomains=true", "max_ttl=72h"]);
    let dir = tempfile::tempdir().unwrap();
    let policy = |name: &str, caps: &str, extra: &str| {
        let text = format!(
            "path \"pki/issue/app-tls\" {{\n  capabilities = {caps}\n  allowed_parameters = {{\n    \"common_name\" = [\"*.app.internal\"]\n    \"ttl\" = [\"24h\"]\n{extra}  }}\n}}\n"
        );
        let file = dir.path().join(format!("{name}.hcl"));
        std::fs::write(&file, text).unwrap();
        ok(root, &["policy", "write", name, file.to_str().unwrap()]);
        let t = json(&ok(root, &["token", "create", "--policy", name, "-o", "json"]));
        t["token"].as_str().or(t["client_token"].as_str()).unwrap().to_string()
    };
    let as_written = policy("origin", "[\"create\", \"read\"]", "");
    let fixed = policy("origin-update", "[\"update\"]", "");
    let with_alt = policy("origin-alt", "[\"update\"]", "    \"alt_names\" = [\"*.app.internal\"]\n");

    let issue = |t: &str, params: &[&str]| {
        let mut args = vec!["write", "pki/issue/app-tls"];
        args.extend_from_slice(params);
        s.cli(Some(t), &args)
    };
    let denied = |o: &std::process::Output| !o.status.success() && stderr(o).to_lowercase().contains("denied");

    // As written: no write is granted.
    let o = issue(&as_written, &["common_name=api.app.internal", "ttl=24h"]);
    assert!(denied(&o), "{}", stderr(&o));

    // With update: the allowed values issue, anything else is refused.
    let o = issue(&fixed, &["common_name=api.app.internal", "ttl=24h", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cert = json(&o);
    assert!(cert["data"]["certificate"].as_str().unwrap().contains("BEGIN CERTIFICATE"), "{cert}");
    for params in [
        &["common_name=evil.com", "ttl=24h"][..],
        &["common_name=api.app.internal", "ttl=48h"],
        &["common_name=api.app.internal", "ttl=1440m"],
        &["common_name=api.app.internal", "ttl=24h", "alt_names=web.app.internal"],
    ] {
        let o = issue(&fixed, params);
        assert!(denied(&o), "{params:?}: {}", stderr(&o));
    }

    // alt_names allowed too: each item must match, not the whole string
    // (`evil.com,web.app.internal` ends in `.app.internal`).
    let o = issue(&with_alt, &["common_name=api.app.internal", "ttl=24h", "alt_names=evil.com,web.app.internal"]);
    assert!(denied(&o), "{}", stderr(&o));
    let o =
        issue(&with_alt, &["common_name=api.app.internal", "ttl=24h", "alt_names=web.app.internal,db.app.internal"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Signing under the same constraints: a role that takes the name from
    // the request, not from the CSR, puts the policy's common_name rule on
    // the certificate whatever the CSR says.
    ok(
        root,
        &[
            "write",
            "pki/roles/app-sign",
            "allow_any_name=true",
            "use_csr_common_name=false",
            "use_csr_sans=false",
            "max_ttl=72h",
        ],
    );
    let text = "path \"pki/sign/app-sign\" {\n  capabilities = [\"update\"]\n  allowed_parameters = {\n    \"common_name\" = [\"*.app.internal\"]\n    \"ttl\" = [\"24h\"]\n    \"csr\" = []\n  }\n}\n";
    let file = dir.path().join("sign.hcl");
    std::fs::write(&file, text).unwrap();
    ok(root, &["policy", "write", "origin-sign", file.to_str().unwrap()]);
    let t = json(&ok(root, &["token", "create", "--policy", "origin-sign", "-o", "json"]));
    let signer = t["token"].as_str().or(t["client_token"].as_str()).unwrap().to_string();
    let d = dir.path();
    new_csr(d, "evil", "/CN=evil.com", "DNS:evil.com");
    let csr = format!("csr=@{}", d.join("evil.csr").display());
    let sign = |params: &[&str]| {
        let mut args = vec!["write", "pki/sign/app-sign", csr.as_str()];
        args.extend_from_slice(params);
        s.cli(Some(&signer), &args)
    };
    let o = sign(&["common_name=evil.com", "ttl=24h"]);
    assert!(denied(&o), "{}", stderr(&o));
    let o = sign(&["common_name=api.app.internal", "ttl=24h", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(d.join("signed.pem"), json(&o)["data"]["certificate"].as_str().unwrap()).unwrap();
    let (_, text) = openssl(d, &["x509", "-in", "signed.pem", "-noout", "-subject", "-ext", "subjectAltName"]);
    assert!(text.contains("CN=api.app.internal") || text.contains("CN = api.app.internal"), "{text}");
    assert!(text.contains("DNS:api.app.internal") && !text.contains("evil.com"), "{text}");
}

/// The CA certificates and the CRL are served without a token on the HTTP
/// listener, at the URLs `config/urls` writes into certificates: OpenSSL
/// downloads the CRL from a certificate's distribution point and finds it
/// revoked. Those reads are audited; every other path is refused alike,
/// naming no mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_and_crl_are_public_at_the_urls_in_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::with_config_top(d, "telemetry {\n address = \"127.0.0.1:0\"\n}\n");
    let base = s.telemetry.clone().expect("a telemetry listener");
    let (root, _) = crate::harness::init_unseal(&s);
    let ok = |args: &[&str]| {
        let o = s.cli(Some(&root), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let log = d.join("audit.log");
    ok(&["audit", "enable", "file", &format!("file_path={}", log.display())]);
    ok(&["mount", "enable", "--type", "pki", "pki/"]);
    let ca = json(&ok(&["write", "pki/root/generate/internal", "common_name=Public Root", "ttl=8760h", "-o", "json"]));
    let ca_pem = ca["data"]["certificate"].as_str().unwrap().to_string();
    ok(&[
        "write",
        "pki/config/urls",
        &format!("issuing_certificates={base}/v1/pki/ca"),
        &format!("crl_distribution_points={base}/v1/pki/crl"),
    ]);
    ok(&["write", "pki/roles/web", "allowed_domains=app.internal", "allow_subdomains=true"]);
    let leaf = json(&ok(&["write", "pki/issue/web", "common_name=api.app.internal", "-o", "json"]));
    let serial = leaf["data"]["serial_number"].as_str().unwrap().to_string();
    std::fs::write(d.join("root.pem"), &ca_pem).unwrap();
    std::fs::write(d.join("leaf.pem"), leaf["data"]["certificate"].as_str().unwrap()).unwrap();

    let get = |path: &str| {
        let url = format!("{base}/v1/{path}");
        async move {
            let r = reqwest::Client::new().get(url).send().await.unwrap();
            let code = r.status().as_u16();
            let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            (code, kind, r.bytes().await.unwrap().to_vec())
        }
    };
    let (code, kind, body) = get("pki/ca").await;
    assert_eq!((code, kind.as_str()), (200, "application/pkix-cert"));
    assert_eq!(body, der(&ca_pem));
    let (code, _, body) = get("pki/ca/pem").await;
    assert_eq!((code, String::from_utf8(body).unwrap()), (200, ca_pem.clone()));
    let (code, _, body) = get("pki/ca_chain").await;
    assert_eq!(code, 200);
    assert!(String::from_utf8(body).unwrap().starts_with(&ca_pem));

    // Not yet revoked: OpenSSL fetches the CRL from the certificate's URL.
    let verify = || openssl(d, &["verify", "-crl_check", "-crl_download", "-CAfile", "root.pem", "leaf.pem"]);
    let (good, out) = blocking(verify);
    assert!(good && out.contains("leaf.pem: OK"), "{out}");
    ok(&["write", "pki/revoke", &format!("serial_number={serial}")]);
    let (good, out) = blocking(verify);
    assert!(!good && out.contains("certificate revoked"), "{out}");
    let (code, kind, body) = get("pki/crl").await;
    assert_eq!((code, kind.as_str()), (200, "application/pkix-crl"));
    std::fs::write(d.join("crl.der"), &body).unwrap();
    let (good, text) = openssl(d, &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"]);
    assert!(good && text.to_lowercase().contains(&serial.replace(':', "").to_lowercase()), "{text}");
    let (code, _, body) = get("pki/crl/pem").await;
    assert!(code == 200 && String::from_utf8(body).unwrap().contains("BEGIN X509 CRL"));

    // Nothing else is public, and a refusal names no mount: one message,
    // whatever the path (a long one too), and no audit record (a caller
    // with no token cannot fill the log).
    ok(&["kv", "put", "secret/app", "password=hunter2"]);
    ok(&["mount", "enable", "--type", "pki", "empty/"]);
    let audited = std::fs::read_to_string(&log).unwrap().len();
    let long = format!("pki/{}", "a".repeat(60_000));
    let mut messages = Vec::new();
    for path in
        ["pki/roles/web", "pki/crl/rotate", "pki/cert/", "pki/issue/web", "secret/app", "nope/crl", "sys/mounts", &long]
    {
        let (code, _, body) = get(path).await;
        assert_eq!(code, 403, "{}", &path[..path.len().min(40)]);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        messages.push(body["errors"][0].as_str().unwrap().to_string());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(!messages[0].contains("secret") && !messages[0].contains("nope"), "{}", messages[0]);
    assert_eq!(std::fs::read_to_string(&log).unwrap().len(), audited, "refusals wrote audit records");
    // A PKI mount with no CA: not found, said without naming it.
    let (code, _, body) = get("empty/crl").await;
    let body = String::from_utf8(body).unwrap();
    assert!(code == 404 && !body.contains("empty") && !body.contains("generate"), "{code} {body}");
    // Public reads are audited, with no token and a request id of the server's.
    let audit = std::fs::read_to_string(&log).unwrap();
    let public: Vec<serde_json::Value> =
        audit.lines().filter(|l| l.contains("http/v1/read")).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(public.iter().any(|r| r["path"] == "pki/crl"), "{audit}");
    assert!(public.iter().all(|r| r["request_id"].as_str().is_some_and(|id| id.len() == 36)), "{audit}");
    assert!(public.iter().all(|r| r.get("auth").is_none()), "{audit}");
}

/// Reads without a token are limited per client address: within the
/// limit (a burst of twice the rate) they are answered, beyond it 429 with
/// Retry-After, and the bucket fills again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_reads_are_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with_config_top(
        dir.path(),
        "telemetry {\n address = \"127.0.0.1:0\"\n public_reads_per_second = 1\n}\n",
    );
    let base = s.telemetry.clone().expect("a telemetry listener");
    let (root, _) = crate::harness::init_unseal(&s);
    for args in
        [&["mount", "enable", "--type", "pki", "pki/"][..], &["write", "pki/root/generate/internal", "common_name=R"]]
    {
        let o = s.cli(Some(&root), args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let client = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = client.get(format!("{base}/v1/pki/ca/pem")).send().await.unwrap();
        let code = r.status().as_u16();
        if code == 429 {
            assert_eq!(r.headers().get("retry-after").unwrap(), "1");
            assert!(r.text().await.unwrap().contains("public_reads_per_second"));
        }
        codes.push(code);
    }
    // A burst of two; one more a second (allowing one refill on a slow machine).
    assert_eq!(&codes[..2], &[200; 2], "{codes:?}");
    assert!(codes[2..].iter().filter(|c| **c == 429).count() >= 5, "{codes:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = client.get(format!("{base}/v1/pki/ca/pem")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
