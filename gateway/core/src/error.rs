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
    /// A login was refused. The reason goes to the audit log only.
    #[error("login refused: the credential is not accepted for this role")]
    LoginRefused(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("sealed")]
    Sealed,
    /// Writers kept colliding; the operation changed nothing.
    #[error("too many concurrent writes to {0}; retry")]
    Contention(String),
    #[error("storage: {0}")]
    Storage(#[source] BarrierError),
    /// Audit devices are enabled and none could record the request: it was
    /// refused before it ran.
    #[error("audit: {0}")]
    AuditFailed(String),
    /// The operation ran, but its response could not be audited.
    #[error("audit: {0}")]
    AuditResponseFailed(String),
    /// The mount's provider cannot do this (the capability table says so).
    #[error("{0}")]
    Unimplemented(String),
    /// A cloud behind a mount cannot be reached or is failing; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A cloud (or the mount's own rate limit) throttled the call.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A cloud refused the mount's credentials.
    #[error("{0}")]
    CloudUnauthenticated(String),
    /// A cloud failed in a way Keybridge does not know.
    #[error("{0}")]
    CloudFailed(String),
    /// Ran past a time limit (a plugin's `timeout`).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something failed inside the gateway or an engine; the message says
    /// what (never secret values).
    #[error("{0}")]
    Internal(String),
    /// Stored state that cannot be decoded: a bug or corruption.
    #[error("corrupt entry at {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl Error {
    /// The gRPC code name the gateway answers this error with, for audit
    /// records (the gateway's mapping in `service::status` agrees).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::Unauthenticated | Error::LoginRefused(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::Sealed | Error::AuditFailed(_) | Error::Unavailable(_) => "UNAVAILABLE",
            Error::Unimplemented(_) => "UNIMPLEMENTED",
            Error::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
            Error::CloudUnauthenticated(_) => "UNAUTHENTICATED",
            Error::CloudFailed(_) => "INTERNAL",
            Error::Contention(_) => "ABORTED",
            Error::AuditResponseFailed(_) | Error::Storage(_) | Error::Corrupt { .. } => "INTERNAL",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::Internal(_) => "INTERNAL",
        }
    }
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
            e @ BarrierError::Fenced { .. } => Error::Unavailable(format!("{e}; another node leads now")),
            e @ BarrierError::Unavailable(_) => Error::Unavailable(e.to_string()),
            BarrierError::KeyService { retryable: true, message } => Error::Unavailable(message),
            BarrierError::KeyService { retryable: false, message } => Error::FailedPrecondition(message),
            e => Error::Storage(e),
        }
    }
}

impl From<keybridge_provider_api::Error> for Error {
    fn from(e: keybridge_provider_api::Error) -> Self {
        use keybridge_provider_api::Error as P;
        match e {
            P::NotFound(m) => Error::NotFound(m),
            P::AlreadyExists(m) => Error::AlreadyExists(m),
            P::Conflict(m) => Error::FailedPrecondition(m),
            P::InvalidArgument(m) => Error::InvalidArgument(m),
            e @ P::Unsupported { .. } => Error::Unimplemented(e.to_string()),
            P::Unauthenticated(m) => Error::CloudUnauthenticated(m),
            P::PermissionDenied(m) => Error::PermissionDenied(m),
            P::Throttled(m) => Error::ResourceExhausted(m),
            P::Unavailable(m) => Error::Unavailable(m),
            P::Failed(m) => Error::CloudFailed(m),
        }
    }
}

impl From<keybridge_audit::Error> for Error {
    fn from(e: keybridge_audit::Error) -> Self {
        use keybridge_audit::Error as A;
        match e {
            A::InvalidArgument(m) => Error::InvalidArgument(m),
            A::NotFound(m) => Error::NotFound(m),
            A::AlreadyExists(m) => Error::AlreadyExists(m),
            A::FailedPrecondition(m) => Error::FailedPrecondition(m),
            A::Corrupt { key, reason } => Error::Corrupt { key, reason },
            A::Storage(e) => e.into(),
        }
    }
}

impl From<keybridge_value::Error> for Error {
    fn from(e: keybridge_value::Error) -> Self {
        match e {
            keybridge_value::Error::Invalid(m) => Error::InvalidArgument(m),
        }
    }
}

/// An error on its way into the reconciler: the kinds it acts on by name,
/// the rest kept whole so they come back out unchanged.
impl From<Error> for keybridge_reconciler::Error {
    fn from(e: Error) -> Self {
        use keybridge_reconciler::Error as R;
        match e {
            Error::InvalidArgument(m) => R::InvalidArgument(m),
            Error::NotFound(m) => R::NotFound(m),
            Error::FailedPrecondition(m) => R::FailedPrecondition(m),
            Error::Sealed => R::Sealed,
            Error::Corrupt { key, reason } => R::Corrupt { key, reason },
            e => R::Host(Box::new(e)),
        }
    }
}

impl From<keybridge_reconciler::Error> for Error {
    fn from(e: keybridge_reconciler::Error) -> Self {
        use keybridge_reconciler::Error as R;
        match e {
            R::InvalidArgument(m) => Error::InvalidArgument(m),
            R::NotFound(m) => Error::NotFound(m),
            R::FailedPrecondition(m) => Error::FailedPrecondition(m),
            R::Sealed => Error::Sealed,
            R::Storage(e) => e.into(),
            R::Corrupt { key, reason } => Error::Corrupt { key, reason },
            R::Host(e) => match e.downcast::<Error>() {
                Ok(e) => *e,
                Err(e) => Error::Internal(e.to_string()),
            },
        }
    }
}
