use keybridge_barrier::Error as BarrierError;

/// Every failure of the core, by what the caller can do about it. The
/// gateway maps each variant to one gRPC status. Messages never contain
/// secret values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the current state refuses it
    /// (check-and-set mismatch, already initialized, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Missing, unknown, expired or revoked token: deliberately one message.
    #[error("missing or invalid token")]
    Unauthenticated,
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("sealed")]
    Sealed,
    /// Writers kept colliding; the operation changed nothing.
    #[error("too many concurrent writes to {0}; retry")]
    Contention(String),
    #[error("storage: {0}")]
    Storage(#[source] BarrierError),
    /// Stored state that cannot be decoded: a bug or corruption.
    #[error("corrupt entry at {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<BarrierError> for Error {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::Sealed => Error::Sealed,
            BarrierError::NotInitialized => {
                Error::FailedPrecondition("the server is not initialized; run `keybridge operator init`".into())
            }
            BarrierError::AlreadyInitialized => Error::FailedPrecondition("the server is already initialized".into()),
            BarrierError::InvalidSealConfig(m) => Error::InvalidArgument(m),
            BarrierError::InvalidKey(m) => Error::InvalidArgument(format!("invalid unseal key: {m}")),
            BarrierError::WrongKeys => Error::InvalidArgument(BarrierError::WrongKeys.to_string()),
            BarrierError::Snapshot(m) => Error::FailedPrecondition(format!("snapshot refused: {m}")),
            e => Error::Storage(e),
        }
    }
}
