use keybridge_barrier::Error as BarrierError;

/// The reconciler's failures. An error the host (the core) raised passes
/// through as [`Error::Host`] and comes back out unchanged, so the caller
/// sees the status the host meant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("sealed")]
    Sealed,
    #[error("storage: {0}")]
    Storage(#[source] BarrierError),
    /// Stored state that cannot be decoded: a bug or corruption.
    #[error("corrupt entry at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Raised by the host or a store; kept whole for the host to take back.
    #[error("{0}")]
    Host(Box<dyn std::error::Error + Send + Sync>),
}

impl From<BarrierError> for Error {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::Sealed => Error::Sealed,
            e => Error::Storage(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
