//! The audit crate's errors; the core maps each to its own.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Stored state that cannot be decoded: a bug or corruption.
    #[error("corrupt entry at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("storage: {0}")]
    Storage(#[from] keybridge_barrier::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
