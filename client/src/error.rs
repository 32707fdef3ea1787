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

/// The likely cause of a failure to talk to the gateway at `url`, said so a
/// person can act on it, from the error's chain: nothing listening, TLS
/// against a plaintext listener (or the reverse), an HTTP/1 server, an
/// untrusted certificate, a name that does not resolve. `None` when the
/// chain matches none of these.
pub(crate) fn diagnose(url: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut text = String::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        text.push_str(&c.to_string());
        text.push_str(" | ");
        text.push_str(&format!("{c:?}"));
        text.push_str(" || ");
        cur = c.source();
    }
    let tls = url.starts_with("https://");
    let has = |needle: &str| text.contains(needle);
    if has("ConnectionRefused") || has("Connection refused") {
        return Some(
            "connection refused: nothing listens there; is the gateway running, and is the address right?".into(),
        );
    }
    if has("failed to lookup address") || has("dns error") || has("Name or service not known") {
        return Some("the host name does not resolve; check the address".into());
    }
    if tls && (has("InvalidContentType") || has("corrupt message")) {
        return Some("the server answered without TLS; use http:// for a plaintext listener".into());
    }
    if tls && has("invalid peer certificate") {
        let why = text
            .split("invalid peer certificate: ")
            .nth(1)
            .and_then(|r| r.split(['|', '\n']).next())
            .map(str::trim)
            .unwrap_or("not trusted");
        return Some(format!(
            "the server's certificate is not trusted ({why}); give the CA that signed it with --ca-cert or \
             KEYBRIDGE_CACERT, and use the name the certificate is for"
        ));
    }
    if !tls && (has("FRAME_SIZE_ERROR") || has("frame with invalid size") || has("PROTOCOL_ERROR")) {
        return Some(
            "the server does not speak gRPC (HTTP/2): an HTTP/1 server or proxy answered; use the gateway's \
             gRPC address"
                .into(),
        );
    }
    if !tls
        && (has("ConnectionReset")
            || has("connection reset")
            || has("BrokenPipe")
            || has("connection closed before message completed"))
    {
        return Some(
            "the connection was reset or closed (at the HTTP/2 handshake that means a TLS-only server: use https://)"
                .into(),
        );
    }
    if !tls && has("operation was canceled") {
        return Some(
            "the server closed the connection without answering: is this the gateway's gRPC address, and is it \
             plaintext (for TLS use https://)?"
                .into(),
        );
    }
    if has("deadline has elapsed") || has("timed out") {
        return Some("no answer in time; is the address right, and the network open?".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::diagnose;

    fn io(kind: std::io::ErrorKind, msg: &str) -> std::io::Error {
        std::io::Error::new(kind, msg.to_string())
    }

    #[test]
    fn causes_are_named() {
        let refused = io(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        assert!(diagnose("http://x:1", &refused).unwrap().starts_with("connection refused"));
        let reset = io(std::io::ErrorKind::ConnectionReset, "connection reset");
        assert!(diagnose("http://x:1", &reset).unwrap().contains("use https://"));
        let pipe = io(std::io::ErrorKind::BrokenPipe, "stream closed because of a broken pipe");
        assert!(diagnose("http://x:1", &pipe).unwrap().contains("use https://"), "plaintext to a TLS listener");
        assert_eq!(diagnose("https://x:1", &reset), None, "a reset under TLS says nothing about the scheme");
        let plain = io(std::io::ErrorKind::InvalidData, "received corrupt message of type InvalidContentType");
        assert!(diagnose("https://x:1", &plain).unwrap().contains("use http://"));
        let h1 = io(std::io::ErrorKind::Other, "connection error detected: frame with invalid size");
        assert!(diagnose("http://x:1", &h1).unwrap().contains("HTTP/1"));
        let cert = io(std::io::ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer");
        let d = diagnose("https://x:1", &cert).unwrap();
        assert!(d.contains("(UnknownIssuer)") && d.contains("--ca-cert"), "{d}");
        assert_eq!(diagnose("http://x:1", &io(std::io::ErrorKind::Other, "something else")), None);
    }
}
