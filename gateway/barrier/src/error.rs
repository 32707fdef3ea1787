/// Every failure of the storage layer.
///
/// No variant carries plaintext: keys named here are storage paths, which
/// are not secret, and no value or key material is ever formatted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store cannot be reached now (a networked store down, restarting
    /// or too slow): the operation did not happen, or its outcome is not
    /// known, and a retry may succeed.
    #[error("the store cannot be reached now ({0}); retry")]
    Unavailable(String),
    #[error("the write conflicted with a concurrent write; retry it")]
    Conflict,
    #[error("the barrier is sealed")]
    Sealed,
    /// The store is shared by several nodes and this one no longer leads
    /// (another took over at a later epoch, or it never led): it must not
    /// commit, and steps down.
    #[error("this node does not lead the store (its epoch {epoch} is not the leader's): it stepped down")]
    Fenced { epoch: u64 },
    #[error("the store is not initialized")]
    NotInitialized,
    #[error("the store is already initialized")]
    AlreadyInitialized,
    #[error("invalid seal configuration: {0}")]
    InvalidSealConfig(String),
    #[error("invalid unseal key: {0}")]
    InvalidKey(&'static str),
    #[error("the unseal keys given do not reconstruct the root key; progress was reset")]
    WrongKeys,
    #[error("cannot decrypt the entry at {key}: it is corrupt, or was written under another key or path")]
    Decrypt { key: String },
    #[error("the entry at {key} names key term {term}, which the keyring does not hold")]
    UnknownTerm { key: String, term: u32 },
    /// An auto seal's key service failed or refused (its message names
    /// the service and key, never key material).
    #[error("{message}")]
    KeyService { retryable: bool, message: String },
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A store's own failure (stores outside this crate wrap theirs too).
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Backend(Box::new(e))
    }
}
