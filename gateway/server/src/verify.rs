//! The rotation verification hook: a program the operator configures
//! (`rotation_verify_command`) that tries a staged value before every copy
//! is promoted. It gets `{"path": ..., "fields": {...}}` (or `"text"`) on
//! stdin; exit status 0 accepts, anything else refuses with the first line
//! of its stderr as the reason. It runs at most 30 s.

use std::time::Duration;

use keybridge_core::RotationVerifier;
use keybridge_core::value::SecretValue;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

pub struct CommandVerifier {
    pub argv: Vec<String>,
}

#[async_trait::async_trait]
impl RotationVerifier for CommandVerifier {
    async fn verify(&self, path: &str, value: &SecretValue) -> Result<(), String> {
        let input = Zeroizing::new(
            match value {
                SecretValue::Fields(m) => serde_json::json!({
                    "path": path,
                    "fields": m.iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                        .collect::<serde_json::Map<_, _>>(),
                }),
                SecretValue::Text(t) => serde_json::json!({ "path": path, "text": t.to_string() }),
                SecretValue::Binary(_) => return Err("binary values are not verified".into()),
            }
            .to_string(),
        );
        let mut child = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.argv[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await.map_err(|e| format!("cannot write to the verifier: {e}"))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| "the verifier ran longer than 30 s".to_string())?
            .map_err(|e| format!("the verifier failed: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let why =
            String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("").chars().take(200).collect::<String>();
        Err(format!("{} ({})", if why.is_empty() { "no reason given" } else { why.as_str() }, out.status))
    }
}
