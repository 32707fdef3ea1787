//! The client's one error type.

/// What can go wrong: a setting, the connection, or the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong (an address that is not a URL, a token that
    /// cannot be sent); the message says which and how to fix it.
    #[error("{0}")]
    Config(String),
    /// A file named by a setting (the CA certificate) cannot be read.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The server cannot be reached.
    #[error("cannot reach {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
}

impl Error {
    /// The gRPC status code: the server's, or `Unavailable` when it could
    /// not be reached, `InvalidArgument` for a setting.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Connect { .. } => tonic::Code::Unavailable,
            Error::Config(_) | Error::Read { .. } => tonic::Code::InvalidArgument,
        }
    }
}

/// The code as gRPC spells it (`PERMISSION_DENIED`), for one-line messages.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}
