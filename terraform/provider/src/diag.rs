//! Terraform diagnostics: errors and warnings, optionally pointing at an
//! attribute. Details carry what the gateway said (its messages never hold
//! secret values) and never a configured value.

use crate::tfplugin6::{self as tf, attribute_path::step::Selector};

#[derive(Default)]
pub struct Diags(pub Vec<tf::Diagnostic>);

pub fn path(attr: &str) -> tf::AttributePath {
    tf::AttributePath { steps: vec![step_attr(attr)] }
}

/// An element of a map attribute: `data["password"]`.
pub fn path_key(attr: &str, key: &str) -> tf::AttributePath {
    tf::AttributePath {
        steps: vec![
            step_attr(attr),
            tf::attribute_path::Step { selector: Some(Selector::ElementKeyString(key.into())) },
        ],
    }
}

/// An attribute of a nested block written once: `postgresql[0].username`.
pub fn path_in_block(block: &str, attr: &str) -> tf::AttributePath {
    tf::AttributePath {
        steps: vec![
            step_attr(block),
            tf::attribute_path::Step { selector: Some(Selector::ElementKeyInt(0)) },
            step_attr(attr),
        ],
    }
}

fn step_attr(attr: &str) -> tf::attribute_path::Step {
    tf::attribute_path::Step { selector: Some(Selector::AttributeName(attr.into())) }
}

impl Diags {
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diags {
        let mut d = Diags::default();
        d.push_error(summary, detail, None);
        d
    }

    pub fn error_at(attr: &str, summary: impl Into<String>, detail: impl Into<String>) -> Diags {
        let mut d = Diags::default();
        d.push_error(summary, detail, Some(path(attr)));
        d
    }

    pub fn push_error(&mut self, summary: impl Into<String>, detail: impl Into<String>, at: Option<tf::AttributePath>) {
        self.push(tf::diagnostic::Severity::Error, summary, detail, at);
    }

    pub fn push_warning(
        &mut self,
        summary: impl Into<String>,
        detail: impl Into<String>,
        at: Option<tf::AttributePath>,
    ) {
        self.push(tf::diagnostic::Severity::Warning, summary, detail, at);
    }

    fn push(
        &mut self,
        severity: tf::diagnostic::Severity,
        summary: impl Into<String>,
        detail: impl Into<String>,
        at: Option<tf::AttributePath>,
    ) {
        self.0.push(tf::Diagnostic {
            severity: severity as i32,
            summary: summary.into(),
            detail: detail.into(),
            attribute: at,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == tf::diagnostic::Severity::Error as i32)
    }

    pub fn extend(&mut self, other: Diags) {
        self.0.extend(other.0);
    }
}

impl From<crate::error::Error> for Diags {
    fn from(e: crate::error::Error) -> Diags {
        Diags::error("Keybridge provider error", e.to_string())
    }
}

/// A gateway call that failed: the operation and the gateway's own message.
pub fn gateway(op: &str, status: &tonic::Status, at: Option<&str>) -> Diags {
    let summary = match status.code() {
        tonic::Code::PermissionDenied => format!("Keybridge denied {op}"),
        tonic::Code::Unauthenticated => format!("Keybridge did not accept the token for {op}"),
        tonic::Code::Unavailable => format!("Keybridge is unavailable: could not {op}"),
        _ => format!("Keybridge could not {op}"),
    };
    let detail = format!("{} ({:?})", status.message(), status.code());
    let mut d = Diags::default();
    d.push_error(summary, detail, at.map(path));
    d
}
