//! go-plugin's automatic mutual TLS.
//!
//! Terraform puts a fresh client certificate in `PLUGIN_CLIENT_CERT` (PEM,
//! ECDSA P-521, self-signed) and reads the provider's own certificate from
//! the handshake line. The provider accepts exactly that client
//! certificate: the connection is pinned to the Terraform process that
//! started it. ring, rustls' crypto here, has no P-521, so its signatures
//! are checked with the RustCrypto `p521` crate.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};

use crate::error::Error;

pub struct ServerIdentity {
    pub config: Arc<rustls::ServerConfig>,
    /// The certificate, DER, for the handshake line.
    pub cert_der: Vec<u8>,
}

/// A server certificate for `localhost` and a TLS config that requires the
/// given client certificate.
pub fn server(client_cert_pem: &str) -> Result<ServerIdentity, Error> {
    let client = rustls_pem_cert(client_cert_pem)?;
    let key = rcgen::KeyPair::generate().map_err(|e| Error::Tls(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| Error::Tls(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.self_signed(&key).map_err(|e| Error::Tls(e.to_string()))?;
    let cert_der = cert.der().to_vec();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedClient { cert: client, algorithms: provider.signature_verification_algorithms });
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert_der.clone())], key_der)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerIdentity { config: Arc::new(config), cert_der })
}

fn rustls_pem_cert(pem: &str) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| Error::Tls(format!("PLUGIN_CLIENT_CERT is not a PEM certificate: {e}")))
}

#[derive(Debug)]
struct PinnedClient {
    cert: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClient {
    fn verify(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if cert.as_ref() != self.cert.as_slice() {
            return Err(rustls::Error::General("the client certificate is not the one Terraform announced".into()));
        }
        if dss.scheme == SignatureScheme::ECDSA_NISTP521_SHA512 {
            return verify_p521(message, cert, dss.signature());
        }
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }
    }
}

fn verify_p521(
    message: &[u8],
    cert: &CertificateDer<'_>,
    signature: &[u8],
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use p521::ecdsa::signature::Verifier;
    let bad = |what: &str| rustls::Error::General(format!("client P-521 signature: {what}"));
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad("unreadable certificate"))?;
    let point = &parsed.tbs_certificate.subject_pki.subject_public_key.data;
    let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad("not a P-521 key"))?;
    let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| bad("malformed signature"))?;
    key.verify(message, &sig).map_err(|_| bad("does not verify"))?;
    Ok(HandshakeSignatureValid::assertion())
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_slice() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the client certificate is not the one Terraform announced".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut schemes = self.algorithms.supported_schemes();
        schemes.push(SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}
