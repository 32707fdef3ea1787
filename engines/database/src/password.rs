//! Passwords: the engine's own (28 letters and digits), or, when the
//! connection names a `password_policy`, one from that policy
//! (`sys/policies/password/<name>`, through the core's
//! [`PasswordPolicies`]).
//!
//! The engine fills a password into SQL inside single quotes
//! (`PASSWORD '{{password}}'`), unescaped as Vault does: a policy whose
//! characters include a quote, a backslash or a control character could end
//! that literal and make the rest of the password SQL. Such a policy is
//! refused when a connection names it, and again, with the password it
//! gave, whenever one is generated (the policy may have changed since).

use keybridge_core::plugins::{EngineError, PasswordPolicies};
use zeroize::Zeroizing;

use crate::conn::Connection;

/// Whether `c` may not be in a password the engine puts in SQL.
fn unsafe_in_sql(c: char) -> bool {
    matches!(c, '\'' | '"' | '\\') || c.is_control()
}

fn refusal(policy: &str, c: char) -> String {
    format!(
        "password policy {policy:?} allows {c:?}, which the engine would put inside a quoted SQL literal: remove ' \" \\ and control characters from its charsets, or name another policy"
    )
}

/// Checks, when a connection is written, that `policy` exists and that
/// every password it can produce is safe in SQL.
pub async fn check_policy(passwords: &dyn PasswordPolicies, policy: &str) -> Result<(), EngineError> {
    let alphabet = passwords.alphabet(policy).await.map_err(|e| match e {
        EngineError::NotFound(_) => EngineError::InvalidInput(format!(
            "password_policy {policy:?}: no such password policy; write sys/policies/password/{policy} first"
        )),
        EngineError::InvalidInput(m) => EngineError::InvalidInput(format!("password_policy: {m}")),
        e => e,
    })?;
    match alphabet.into_iter().find(|c| unsafe_in_sql(*c)) {
        Some(c) => Err(EngineError::InvalidInput(refusal(policy, c))),
        None => Ok(()),
    }
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
    Ok(generated.password)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use keybridge_core::plugins::GeneratedPassword;

    use super::*;

    /// One policy, `p`, whose alphabet the test sets.
    struct OnePolicy(Mutex<Option<Vec<char>>>);

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
            let password = Zeroizing::new(alphabet.iter().cycle().take(12).collect());
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
        let policies = OnePolicy(Mutex::new(Some("abc123!#".chars().collect())));
        check_policy(&policies, "p").await.unwrap();
        let pw = new_password(&policies, "app", &connection("p")).await.unwrap();
        assert_eq!(pw.as_str(), "abc123!#abc1");
        // No policy named: the engine's own.
        let own = new_password(&policies, "app", &connection("")).await.unwrap();
        assert!(own.len() == 28 && own.chars().all(|c| c.is_ascii_alphanumeric()));

        let e = check_policy(&policies, "nope").await.unwrap_err();
        assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("no such password policy")), "{e}");
        for bad in ['\'', '"', '\\', '\n', '\u{0}'] {
            *policies.0.lock().unwrap() = Some(vec!['a', 'b', bad]);
            let e = check_policy(&policies, "p").await.unwrap_err();
            assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("quoted SQL literal")), "{bad:?}: {e}");
            // Changed after the connection was written: refused at use.
            let e = new_password(&policies, "app", &connection("p")).await.unwrap_err();
            assert!(matches!(&e, EngineError::InvalidInput(m) if m.contains("changed since")), "{bad:?}: {e}");
        }
        // Deleted after.
        *policies.0.lock().unwrap() = None;
        let e = new_password(&policies, "app", &connection("p")).await.unwrap_err();
        assert!(matches!(&e, EngineError::NotFound(m) if m.contains("does not exist")), "{e}");
    }
}
