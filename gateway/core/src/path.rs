//! Path rules, shared by every mount type.
//!
//! A secret path is `seg/seg/...`: no empty segment, no `.` or `..`, no
//! control character (NUL included), at most [`MAX_PATH_BYTES`] bytes in
//! full (mount included). A mount path is the same with a trailing `/`.

use crate::{Error, Result};

pub const MAX_PATH_BYTES: usize = 1024;
const RESERVED_MOUNTS: &[&str] = &["sys/", "auth/"];

fn check_segments(what: &str, path: &str) -> Result<()> {
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{what} contains the control character U+{:04X}; paths may not contain control characters",
            c as u32
        )));
    }
    if path.starts_with('/') {
        return Err(Error::InvalidArgument(format!("{what} {path:?} starts with '/'; remove the leading slash")));
    }
    for seg in path.split('/') {
        match seg {
            "" => {
                return Err(Error::InvalidArgument(format!(
                    "{what} {path:?} has an empty segment ('//' or a trailing '/'); remove it"
                )));
            }
            "." | ".." => {
                return Err(Error::InvalidArgument(format!(
                    "{what} {path:?} contains a '{seg}' segment, which is not allowed"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a full request path such as `secret/team/app/db`.
pub fn validate_secret_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::InvalidArgument("the path is empty; give one such as secret/team/app".into()));
    }
    check_segments("the path", path)
}

/// Checks a path of the Logical API (`mount/engine/path`, a trailing `/`
/// for listing), whose segments are the engine's to interpret.
pub fn validate_engine_path(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > 1024 || path.starts_with('/') || path.split('/').any(|s| s == "." || s == "..") {
        return Err(Error::InvalidArgument(format!(
            "invalid path {path:?}: give MOUNT/PATH, without a leading '/' or '.' segments, at most 1024 bytes"
        )));
    }
    Ok(())
}

/// Checks a folder path for listing: a mount (`secret/`), a folder
/// (`secret/team/`, the trailing slash optional).
pub fn validate_folder_path(path: &str) -> Result<String> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    validate_secret_path(trimmed)?;
    Ok(format!("{trimmed}/"))
}

/// Normalizes and checks a mount path: `secret` and `secret/` both give
/// `secret/`.
pub fn normalize_mount_path(path: &str) -> Result<String> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err(Error::InvalidArgument("the mount path is empty; give one such as secret/".into()));
    }
    check_segments("the mount path", trimmed)?;
    if trimmed.len() > 128 {
        return Err(Error::InvalidArgument("the mount path is longer than 128 bytes".into()));
    }
    let normalized = format!("{trimmed}/");
    if let Some(r) = RESERVED_MOUNTS.iter().find(|r| normalized.starts_with(**r)) {
        return Err(Error::InvalidArgument(format!(
            "the mount path {normalized:?} is under the reserved prefix {r:?}"
        )));
    }
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths() {
        for p in ["secret/a", "secret/team/app/db", "s/ü-ñ/x y", "a/b.c/..d"] {
            validate_secret_path(p).unwrap();
        }
        assert_eq!(normalize_mount_path("secret").unwrap(), "secret/");
        assert_eq!(normalize_mount_path("a/b/").unwrap(), "a/b/");
        assert_eq!(validate_folder_path("secret/team").unwrap(), "secret/team/");
    }

    #[test]
    fn bad_paths_name_the_problem() {
        let cases = [
            ("", "empty"),
            ("secret//a", "empty segment"),
            ("secret/a/", "empty segment"),
            ("/secret/a", "leading slash"),
            ("secret/./a", "'.'"),
            ("secret/../a", "'..'"),
            ("secret/a\0b", "U+0000"),
            ("secret/a\nb", "U+000A"),
        ];
        for (p, needle) in cases {
            let msg = validate_secret_path(p).unwrap_err().to_string();
            assert!(msg.contains(needle), "{p:?}: {msg}");
        }
        let long = format!("secret/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(validate_secret_path(&long).unwrap_err().to_string().contains("limit is 1024"));
        for (p, why) in [
            ("sys/x", "reserved prefix \"sys/\""),
            ("auth/", "reserved prefix \"auth/\""),
            ("/", "mount path is empty"),
        ] {
            assert!(matches!(normalize_mount_path(p), Err(Error::InvalidArgument(m)) if m.contains(why)), "{p}");
        }
    }
}
