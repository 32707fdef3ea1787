/// Failures of the server process itself: configuration, start-up, I/O.
/// (Request failures are `keybridge_core::Error`, mapped to gRPC statuses
/// in `service.rs`.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("storage: {0}")]
    Storage(#[from] keybridge_barrier::Error),
    #[error("{0}")]
    Core(#[from] keybridge_core::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot reach the server at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// An error status from the server, shown with its message.
    #[error("{}", status_line(.0))]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A wait (`--wait`) ended at its `--timeout` before its goal; the
    /// operation goes on in the server.
    #[error("{0}")]
    StillPending(String),
    #[error(
        "cannot lock memory (mlockall: {0}), so keys could be swapped to disk: raise RLIMIT_MEMLOCK \
         (e.g. LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK, or set disable_mlock = true where locking is not possible"
    )]
    Mlock(std::io::Error),
}

/// `permission denied: read on ... is not granted`: the code's name, then
/// the server's message, without saying the name twice when the message
/// already starts with it.
fn status_line(s: &tonic::Status) -> String {
    let name = code_name(s.code());
    let msg = s.message().trim();
    if msg.is_empty() {
        name.to_string()
    } else if msg.get(..name.len()).is_some_and(|p| p.eq_ignore_ascii_case(name)) {
        msg.to_string()
    } else {
        format!("{name}: {msg}")
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::Unimplemented => "unimplemented",
        _ => "error",
    }
}

impl Error {
    /// The CLI's exit code for this failure (see the table in docs/CLI.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config { .. } => exit::USAGE,
            Error::Core(e) => match e {
                keybridge_core::Error::InvalidArgument(_) => exit::USAGE,
                keybridge_core::Error::NotFound(_) => exit::NOT_FOUND,
                keybridge_core::Error::Unauthenticated | keybridge_core::Error::PermissionDenied(_) => exit::DENIED,
                keybridge_core::Error::Sealed => exit::UNAVAILABLE,
                keybridge_core::Error::FailedPrecondition(_) | keybridge_core::Error::AlreadyExists(_) => {
                    exit::CONFLICT
                }
                _ => exit::ERROR,
            },
            Error::Status(s) => match s.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => exit::USAGE,
                tonic::Code::NotFound => exit::NOT_FOUND,
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => exit::DENIED,
                tonic::Code::Unavailable => exit::UNAVAILABLE,
                tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => exit::CONFLICT,
                _ => exit::ERROR,
            },
            Error::Connect { .. } => exit::UNAVAILABLE,
            Error::StillPending(_) => exit::STILL_PENDING,
            _ => exit::ERROR,
        }
    }
}

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const DENIED: u8 = 4;
    /// Sealed, or the server cannot be reached.
    pub const UNAVAILABLE: u8 = 5;
    /// Check-and-set mismatch, already exists, or another state conflict.
    pub const CONFLICT: u8 = 6;
    /// A wait timed out with the operation still under way in the server.
    pub const STILL_PENDING: u8 = 7;
}
