//! Policy as code: a Rego module (evaluated by regorus, a Rego interpreter
//! in Rust) judges each policy rule and each login role. Its `deny` rule
//! (a set of messages, in the module's package) lists what is wrong.
//!
//! Input documents, one per policy rule:
//!
//! ```json
//! {"kind": "policy_rule", "policy": "app-service", "file": "app-service.hcl",
//!  "line": 5, "path": "pki/issue/app-tls", "capabilities": ["create", "read"],
//!  "allowed_parameters": {"common_name": ["*.app.internal"]},
//!  "denied_parameters": {}, "required_parameters": []}
//! ```
//!
//! and one per role:
//!
//! ```json
//! {"kind": "role", "method": "kubernetes", "name": "app-service",
//!  "ttl": "1h", "ttl_seconds": 3600, "max_ttl": "24h", "policies": ["app-service"],
//!  "settings": {...every setting as written...}}
//! ```
//!
//! `ttl` is absent when the role sets none, so a module's `not input.ttl`
//! fires for it, and for every policy rule (rules have no TTL): authors scope
//! rules with `input.kind`.

use std::sync::Mutex;

use serde_json::{Value, json};

use crate::{Error, Policy};

/// A compiled module. Rego v1 syntax is tried first, then v0 (the syntax
/// before OPA 1.0: `deny[msg] { ... }`).
pub struct RegoModule {
    engine: Mutex<regorus::Engine>,
    rule: String,
    /// "v1" or "v0".
    pub syntax: &'static str,
}

impl std::fmt::Debug for RegoModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoModule").field("rule", &self.rule).field("syntax", &self.syntax).finish()
    }
}

fn compile(file: &str, text: &str, v0: bool) -> Result<(regorus::Engine, String), String> {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(v0);
    let package = engine.add_policy(file.to_string(), text.to_string()).map_err(|e| e.to_string())?;
    Ok((engine, package))
}

impl RegoModule {
    pub fn parse(file: &str, text: &str) -> Result<RegoModule, Error> {
        let (engine, package, syntax) = match compile(file, text, false) {
            Ok((e, p)) => (e, p, "v1"),
            Err(v1_error) => match compile(file, text, true) {
                Ok((e, p)) => (e, p, "v0"),
                // Report the v1 error unless the module declares v0 habits.
                Err(v0_error) => {
                    let msg = if text.contains(" if ") || text.contains("contains") { v1_error } else { v0_error };
                    return Err(Error::Rego(msg));
                }
            },
        };
        let package = package.trim_start_matches("data.").to_string();
        Ok(RegoModule { engine: Mutex::new(engine), rule: format!("data.{package}.deny"), syntax })
    }

    /// The module's `deny` messages for one input document.
    pub fn deny(&self, input: &Value) -> Result<Vec<String>, Error> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let value = regorus::Value::from_json_str(&input.to_string()).map_err(|e| Error::Rego(e.to_string()))?;
        engine.set_input(value);
        let result = engine.eval_rule(self.rule.clone()).map_err(|e| Error::Rego(e.to_string()))?;
        let mut out = Vec::new();
        let items: Vec<regorus::Value> = if let Ok(set) = result.as_set() {
            set.iter().cloned().collect()
        } else if let Ok(arr) = result.as_array() {
            arr.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for item in items {
            match item.as_string() {
                Ok(s) => out.push(s.to_string()),
                Err(_) => out.push(item.to_json_str().unwrap_or_default()),
            }
        }
        Ok(out)
    }
}

/// The line of the `path "<pattern>"` block in `text`, if it can be found.
pub fn rule_line(text: &str, pattern: &str) -> Option<usize> {
    let needle = format!("\"{pattern}\"");
    text.lines().position(|l| l.trim_start().starts_with("path") && l.contains(&needle)).map(|i| i + 1)
}

/// One input document per rule of `policy` (parsed from `text` in `file`).
pub fn rule_inputs(policy: &Policy, file: &str, text: &str) -> Vec<Value> {
    policy
        .rules
        .iter()
        .map(|r| {
            let path = r.pattern.as_str();
            json!({
                "kind": "policy_rule",
                "policy": policy.name,
                "file": file,
                "line": rule_line(text, path),
                "path": path,
                "capabilities": r.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "allowed_parameters": r.allowed_parameters.clone().unwrap_or_default(),
                "denied_parameters": r.denied_parameters.clone().unwrap_or_default(),
                "required_parameters": r.required_parameters,
            })
        })
        .collect()
}

/// The input document of a login role.
pub fn role_input(method: &str, name: &str, settings: &std::collections::BTreeMap<String, String>) -> Value {
    let mut doc = json!({
        "kind": "role",
        "method": method,
        "name": name,
        "settings": settings,
        "policies": settings
            .get("policies")
            .map(|p| p.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .unwrap_or_default(),
    });
    for (key, alias) in [("ttl", "token_ttl"), ("max_ttl", "token_max_ttl")] {
        if let Some(v) = settings.get(key).or_else(|| settings.get(alias)).filter(|v| !v.trim().is_empty()) {
            doc[key] = json!(v);
        }
    }
    doc
}
