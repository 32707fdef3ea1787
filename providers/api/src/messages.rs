//! One-line error messages for cloud failures: the cloud, the operation,
//! the cloud's error code and message, and a hint a person can act on. The
//! SDK's full error chain never goes here (adapters log it at debug level).

/// The longest cloud message kept; the rest is cut at a character boundary.
const MAX_MESSAGE: usize = 300;

/// `{cloud} ({what}): {code}: {message}; {hint}`, each part optional but the
/// cloud, on one line.
pub fn one_line(cloud: &str, what: &str, code: &str, message: &str, hint: &str) -> String {
    let mut s = cloud.to_string();
    if !what.is_empty() {
        s.push_str(&format!(" ({what})"));
    }
    let message = clean(message);
    let code = clean(code);
    match (code.is_empty(), message.is_empty()) {
        (false, false) if !message.starts_with(&code) => s.push_str(&format!(": {code}: {message}")),
        (_, false) => s.push_str(&format!(": {message}")),
        (false, true) => s.push_str(&format!(": {code}")),
        (true, true) => {}
    }
    if !hint.is_empty() {
        s.push_str("; ");
        s.push_str(hint);
    }
    s
}

/// The innermost cause of an error chain, as the operating system or the
/// protocol said it ("Connection refused (os error 111)").
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    clean(&cur.to_string())
}

/// The first line, control characters turned into spaces, runs of spaces
/// collapsed, cut to [`MAX_MESSAGE`] characters.
fn clean(text: &str) -> String {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(first.len().min(MAX_MESSAGE + 3));
    let mut space = false;
    for c in first.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' {
            if space {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        if out.chars().count() >= MAX_MESSAGE {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_join_on_one_line() {
        assert_eq!(
            one_line("AWS Secrets Manager", "get", "AccessDeniedException", "User: x is not authorized", "grant it"),
            "AWS Secrets Manager (get): AccessDeniedException: User: x is not authorized; grant it"
        );
        assert_eq!(one_line("GCP Secret Manager", "", "", "boom", ""), "GCP Secret Manager: boom");
    }

    #[test]
    fn messages_are_cut_to_one_clean_line() {
        let long = format!("first\tline {}\nsecond line", "x".repeat(1000));
        let s = one_line("Azure Key Vault", "put", "", &long, "");
        assert!(!s.contains('\n') && !s.contains('\t') && !s.contains("second"), "{s}");
        assert!(s.chars().count() < 350, "{}", s.len());
        assert!(s.ends_with("..."));
        // Cut at a character boundary.
        let wide = "é".repeat(400);
        assert!(one_line("c", "", "", &wide, "").ends_with("..."));
    }

    #[test]
    fn the_root_cause_is_the_innermost_error() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "dispatch failure")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(root_cause(&e), "Connection refused");
    }
}
