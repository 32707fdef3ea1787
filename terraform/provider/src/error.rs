//! The provider's error type. Terraform sees errors as diagnostics
//! ([`crate::diag`]); this enum covers what fails below them.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot decode a value from Terraform: {0}")]
    Decode(String),
    #[error("plugin handshake: {0}")]
    Handshake(String),
    #[error("plugin TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}
