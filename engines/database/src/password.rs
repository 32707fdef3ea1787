//! Passwords: the engine's own (28 letters and digits), or, when the
//! connection names a `password_policy`, one from that policy
//! (`sys/policies/password/<name>`, through the core's
//! [`PasswordPolicies`]).
//!
//! The engine fills a password into SQL inside single quotes
//! (`PASSWORD '{{password}}'`), unescaped as Vault does, and statements
//! may wrap that in dollar quoting (`DO $$ ... PASSWORD '{{password}}' ...
//! $$`): a policy whose characters include a quote, a backslash, a dollar
//! sign or a control character could end that literal (or the `$$` body)
//! and make the rest of the password SQL. Such a policy is refused when a
//! connection names it, and again, with the password it gave, whenever one
//! is generated (the policy may have changed since).
//!
//! So is a weak one: its passwords must have at least 64 bits of entropy,
//! `length * log2(distinct characters)` (Keybridge's floor, the same one a
//! policy's write is held to; see `keybridge_policy::password`).

use keybridge_core::plugins::{EngineError, PasswordPolicies};
use zeroize::Zeroizing;

use crate::conn::Connection;

/// Whether `c` may not be in a password the engine puts in SQL: it could
/// end a quoted literal (`'`, `"`, `\\`), a dollar-quoted body (`$`), or
/// the statement's text (control characters).
fn unsafe_in_sql(c: char) -> bool {
    matches!(c, '\'' | '"' | '\\' | '$') || c.is_control()
}

fn refusal(policy: &str, c: char) -> String {
    format!(
        "password policy {policy:?} allows {c:?}, which the engine would put inside a quoted SQL literal (or a $$-quoted body): remove ' \" \\ $ and control characters from its charsets, or name another policy"
    )
}

/// The policy's passwords reach the entropy floor: `length` (the
/// password's characters) times log2 of the alphabet's size.
fn check_strength(policy: &str, length: usize, alphabet: &[char]) -> Result<(), String> {
    keybridge_policy::password::check_entropy(length, alphabet.len()).map_err(|e| {
        let m = match e {
            keybridge_policy::Error::Password(m) => m,
            e => e.to_string(),
        };
        format!("password policy {policy:?} is too weak for database passwords: {m}")
    })
}

/// Checks, when a connection is written, that `policy` exists, that every
/// password it can produce is safe in SQL, and that its passwords reach
/// the entropy floor.
pub async fn check_policy(passwords: &dyn PasswordPolicies, policy: &str) -> Result<(), EngineError> {
    let generated = passwords.generate(policy).await.map_err(|e| match e {
        EngineError::NotFound(_) => EngineError::InvalidInput(format!(
            "password_policy {policy:?}: no such password policy; write sys/policies/password/{policy} first"
        )),
        EngineError::InvalidInput(m) => EngineError::InvalidInput(format!("password_policy: {m}")),
        e => e,
    })?;
    if let Some(c) = generated.alphabet.iter().copied().find(|c| unsafe_in_sql(*c)) {
        return Err(EngineError::InvalidInput(refusal(policy, c)));
    }
    check_strength(policy, generated.password.chars().count(), &generated.alphabet).map_err(EngineError::InvalidInput)
}

/// A new password for a user of connection `db_name`: from its policy, or
/// the engine's own.
pub async fn new_password(
    passwords: &dyn PasswordPolicies,
    db_name: &str,
    c: &Connection,
) -> Result<Zeroizing<String>, EngineError> {
    let policy = c.password_policy.as_str();
    if policy.is_empty() {
        return Ok(crate::pg::new_password());
    }
    let generated = passwords.generate(policy).await.map_err(|e| match e {
        EngineError::NotFound(_) => EngineError::NotFound(format!(
            "connection {db_name:?} names password policy {policy:?}, which does not exist (deleted since?): write sys/policies/password/{policy}, or change password_policy on config/{db_name}"
        )),
        e => e,
    })?;
    // The alphabet read with the password: a policy changed since the
    // connection was written is refused whether or not this password
    // happens to hold the character.
    let unsafe_char = generated
        .alphabet
        .iter()
        .copied()
        .find(|c| unsafe_in_sql(*c))
        .or(generated.password.chars().find(|c| unsafe_in_sql(*c)));
    if let Some(c) = unsafe_char {
        return Err(EngineError::InvalidInput(format!(
            "connection {db_name:?}: {} (it changed since the connection was written)",
            refusal(policy, c)
        )));
    }
    check_strength(policy, generated.password.chars().count(), &generated.alphabet).map_err(|m| {
        EngineError::InvalidInput(format!("connection {db_name:?}: {m} (it changed since the connection was written)"))
    })?;
    Ok(generated.password)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use keybridge_core::plugins::GeneratedPassword;

    use super::*;

    /// One policy, `p`, whose alphabet the test sets; its passwords are
    /// 24 characters, or as many as the second field says.
    struct OnePolicy(Mutex<Option<Vec<char>>>, Mutex<usize>);

    impl OnePolicy {
        fn new(alphabet: &str) -> OnePolicy {
            OnePolicy(Mutex::new(Some(alphabet.chars().collect())), Mutex::new(24))
        }
    }

    #[async_trait::async_trait]
    impl PasswordPolicies for OnePolicy {
        async fn alphabet(&self, name: &str) -> Result<Vec<char>, EngineError> {
            match (name, self.0.lock().unwrap().clone()) {
                ("p", Some(a)) => Ok(a),
                _ => Err(EngineError::NotFound(format!("no password policy named {name:?}"))),
            }
        }
        async fn generate(&self, name: &str) -> Result<GeneratedPassword, EngineError> {
            let alphabet = self.alphabet(name).await?;
            let length = *self.1.lock().unwrap();
            let password = Zeroizing::new(alphabet.iter().cycle().take(length).collect());
            Ok(GeneratedPassword { password, alphabet })
        }
    }

    fn connection(policy: &str) -> Connection {
        serde_json::from_value(serde_json::json!({
            "plugin_name": "postgresql",
            "connection_url": "",
            "username": "admin",
            "password": "",
            "allowed_roles": [],
            "root_rotation_statements": "",
            "max_open_connections": 4,
            "password_policy": policy,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_policy_is_checked_when_named_and_when_used() {
        let policies = OnePolicy::new("abc123!#");
        check_policy(&policies, "p").await.unwrap();
        let pw = new_password(&policies, "app", &connection("p")).await.unwrap();
        assert_eq!(pw.as_str(), "abc123!#abc123!#abc123!#");
        // No policy named: the engine's own.
        let own = new_password(&policies, "app", &connection("")).await.unwrap();
        assert!(own.len() == 28 && own.chars().all(|c| c.is_ascii_alphanumeric()));

        let e = check_policy(&policies, "nope").await.unwrap_err();
        assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("no such password policy")), "{e}");
        // $ too: a password holding $$ would end a DO $$ ... $$ body.
        for bad in ['\'', '"', '\\', '$', '\n', '\u{0}'] {
            *policies.0.lock().unwrap() = Some(vec!['a', 'b', bad]);
            let e = check_policy(&policies, "p").await.unwrap_err();
            assert!(
                matches!(&e, EngineError::InvalidInput(m) if m.contains("quoted SQL literal") && m.contains("' \" \\ $")),
                "{bad:?}: {e}"
            );
            // Changed after the connection was written: refused at use.
            let e = new_password(&policies, "app", &connection("p")).await.unwrap_err();
            assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("changed since")), "{bad:?}: {e}");
        }
        // The entropy floor, 64 bits: respected at 64 of 2 characters and
        // 11 of 62; one bit short refused when named, and at use.
        let alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for (alphabet, length, fine) in
            [("ab", 64, true), ("ab", 63, false), (alnum, 11, true), (alnum, 10, false), ("a", 100, false)]
        {
            *policies.0.lock().unwrap() = Some(alphabet.chars().collect());
            *policies.1.lock().unwrap() = length;
            let named = check_policy(&policies, "p").await;
            let used = new_password(&policies, "app", &connection("p")).await;
            if fine {
                named.unwrap();
                assert_eq!(used.unwrap().chars().count(), length);
                continue;
            }
            let e = named.unwrap_err();
            assert!(
                matches!(&e, EngineError::InvalidInput(m) if m.contains("too weak for database passwords") && m.contains("bits of entropy, under the floor of 64") && !m.contains("password policy: ")),
                "{alphabet} {length}: {e}"
            );
            let e = used.err().unwrap();
            assert!(
                matches!(&e, EngineError::InvalidInput(m) if m.contains("too weak") && m.contains("changed since")),
                "{e}"
            );
        }
        *policies.1.lock().unwrap() = 24;
        // Deleted after.
        *policies.0.lock().unwrap() = None;
        let e = new_password(&policies, "app", &connection("p")).await.unwrap_err();
        assert!(matches!(&e, EngineError::NotFound(m) if m.contains("does not exist")), "{e}");
    }
}
