//! TLS for the listener, terminated by the serving threads with rustls, and
//! a certificate that SIGHUP can replace: handshakes after a reload use the
//! new pair, connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::error::Error;

/// The certificate and key the next handshake presents.
#[derive(Debug)]
pub struct Reloadable {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Reads a PEM certificate chain and private key into a signing pair.
fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Error> {
    let bad = |p: &Path, why: String| Error::Tls(format!("{}: {why}", p.display()));
    let read =
        |p: &Path| crate::config::read_small_file(p, crate::config::MAX_FILE_BYTES).map_err(|e| bad(p, e.to_string()));
    let cert_pem = read(cert_file)?;
    let key_pem = zeroize::Zeroizing::new(read(key_file)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(key_file, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| bad(key_file, e.to_string()))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match().map_err(|e| bad(key_file, format!("the key does not match the certificate ({e})")))?;
    Ok(pair)
}

impl Reloadable {
    /// Reads the pair; an unreadable or mismatched pair stops the start.
    pub fn open(cert_file: &Path, key_file: &Path) -> Result<Arc<Reloadable>, Error> {
        let pair = load(cert_file, key_file)?;
        Ok(Arc::new(Reloadable {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// Reads the files again; on any error the running pair stays.
    pub fn reload(&self) -> Result<(), Error> {
        let pair = load(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// The acceptor the serving threads use: TLS 1.2 and 1.3, HTTP/2 by ALPN.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}
