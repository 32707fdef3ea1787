//! Rule paths: exact, `*`-suffixed prefix globs, and `+` segment wildcards.

use crate::Error;

/// A parsed rule path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: String,
    /// Segments of the part before a trailing `*` (split on `/`).
    segments: Vec<String>,
    /// Ends in `*`: matches any continuation.
    glob: bool,
}

impl Pattern {
    pub fn parse(raw: &str) -> Result<Pattern, Error> {
        let bad = |reason: &str| Error::Rule { path: raw.to_string(), reason: reason.to_string() };
        if raw.chars().any(char::is_control) {
            return Err(bad("the path contains a control character"));
        }
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        let (body, glob) = match trimmed.strip_suffix('*') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        if body.contains('*') {
            return Err(bad("'*' is only allowed at the end of a path"));
        }
        let segments: Vec<String> = body.split('/').map(str::to_string).collect();
        for s in &segments {
            if s.contains('+') && s != "+" {
                return Err(bad("'+' must be a whole path segment, such as secret/+/config"));
            }
        }
        Ok(Pattern { raw: trimmed.to_string(), segments, glob })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn is_glob(&self) -> bool {
        self.glob
    }

    fn plus_count(&self) -> usize {
        self.segments.iter().filter(|s| *s == "+").count()
    }

    /// Byte offset of the first `+` or `*`, if any.
    fn first_wildcard(&self) -> Option<usize> {
        self.raw.find(['+', '*'])
    }

    /// Whether `path` (no leading slash) matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.plus_count() == 0 {
            let prefix = &self.raw[..self.raw.len() - usize::from(self.glob)];
            return if self.glob { path.starts_with(prefix) } else { path == prefix };
        }
        // Walk segment by segment; the last pattern segment may be a
        // partial prefix when the pattern is a glob.
        let mut rest = path;
        let n = self.segments.len();
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == n;
            let (head, tail) = match rest.find('/') {
                Some(j) => (&rest[..j], Some(&rest[j + 1..])),
                None => (rest, None),
            };
            if last {
                return match (seg.as_str(), self.glob) {
                    ("+", false) => tail.is_none() && !head.is_empty(),
                    ("+", true) => !head.is_empty() || tail.is_some(),
                    (s, false) => tail.is_none() && head == s,
                    (s, true) => rest.starts_with(s),
                };
            }
            // `+` stands for one non-empty segment (Keybridge paths have no
            // empty segments anyway).
            if seg == "+" {
                if head.is_empty() {
                    return false;
                }
            } else if head != seg {
                return false;
            }
            match tail {
                Some(t) => rest = t,
                None => return false,
            }
        }
        false
    }

    /// Whether some path starting with `prefix` may match. Errs towards
    /// `true`: a caller uses it to find every rule that could decide a path
    /// below a folder.
    pub fn may_match_under(&self, prefix: &str) -> bool {
        let pre: Vec<&str> = prefix.split('/').collect();
        let n = self.segments.len();
        for (i, x) in pre.iter().enumerate() {
            let partial = i + 1 == pre.len();
            let Some(ps) = self.segments.get(i) else { return false };
            let last = i + 1 == n;
            if last && self.glob {
                if ps == "+" {
                    return true;
                }
                let rest = pre[i..].join("/");
                return ps.starts_with(&rest) || rest.starts_with(ps.as_str());
            }
            if partial {
                // The path goes on from here: the pattern's segment must be
                // able to continue what the prefix has begun.
                return ps == "+" || ps.starts_with(x);
            }
            if last {
                // An exact pattern ends here, but the prefix goes on.
                return false;
            }
            let ok = if ps == "+" { !x.is_empty() } else { ps == x };
            if !ok {
                return false;
            }
        }
        false
    }

    /// Vault's priority between two patterns that both match a path: is
    /// `self` more specific than `other`?
    ///
    /// P1 ranks lower when (in order): its first wildcard comes earlier; it
    /// ends in `*` and the other does not; it has more `+` segments; it is
    /// shorter; it is lexicographically smaller.
    pub fn outranks(&self, other: &Pattern) -> bool {
        let first = |p: &Pattern| p.first_wildcard().unwrap_or(usize::MAX);
        if first(self) != first(other) {
            return first(self) > first(other);
        }
        if self.glob != other.glob {
            return !self.glob;
        }
        if self.plus_count() != other.plus_count() {
            return self.plus_count() < other.plus_count();
        }
        if self.raw.len() != other.raw.len() {
            return self.raw.len() > other.raw.len();
        }
        self.raw > other.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn exact_glob_and_plus() {
        assert!(p("secret/data/a").matches("secret/data/a"));
        assert!(!p("secret/data/a").matches("secret/data/ab"));
        assert!(p("secret/data/a*").matches("secret/data/ab/c"));
        assert!(p("secret/*").matches("secret/"));
        assert!(!p("secret/*").matches("secret"));
        assert!(p("*").matches("anything/at/all"));
        assert!(p("secret/+/config").matches("secret/app/config"));
        assert!(!p("secret/+/config").matches("secret/a/b/config"));
        assert!(!p("secret/+/config").matches("secret//config"));
        assert!(p("secret/+/*").matches("secret/app/x/y"));
        assert!(p("secret/+").matches("secret/app"));
        assert!(!p("secret/+").matches("secret/app/x"));
        assert!(p("+/data/*").matches("kv/data/x"));
        assert!(p("secret/+/con*").matches("secret/a/config"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for (raw, why) in [
            ("secret/*/x", "'*' is only allowed at the end"),
            ("secret/a+b", "'+' must be a whole path segment"),
            ("secret/\n", "control character"),
        ] {
            assert!(
                matches!(Pattern::parse(raw), Err(Error::Rule { path, reason }) if path == raw && reason.contains(why))
            );
        }
    }

    #[test]
    fn vault_priority_order() {
        // The first wildcard later wins.
        assert!(p("secret/data/+/x").outranks(&p("secret/+/data/x")));
        // No trailing glob beats a trailing glob at the same position.
        assert!(p("secret/+").outranks(&p("secret/*")));
        // Fewer + segments win.
        assert!(p("a/+/c/*").outranks(&p("a/+/+/*")));
        // Longer wins, then lexicographically larger.
        assert!(p("secret/data/app*").outranks(&p("secret/data/a*")));
        assert!(p("secret/b*").outranks(&p("secret/a*")));
        // Exact paths outrank any wildcard.
        assert!(p("secret/data/x").outranks(&p("secret/data/*")));
    }
}
