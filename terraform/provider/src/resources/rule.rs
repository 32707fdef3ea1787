//! `keybridge_replication_rule`: a sync rule copying a folder or mount to
//! other mounts (clouds).

use async_trait::async_trait;
use keybridge_proto::v1 as pb;

use super::{Caps, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::{Gateway, not_found};
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

pub struct ReplicationRule;

#[async_trait]
impl Resource for ReplicationRule {
    fn name(&self) -> &'static str {
        "keybridge_replication_rule"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "A replication rule: the reconciler keeps every secret under `source` copied to each target.",
            attrs: vec![
                attr("name", Ty::Str, Mode::Required, "1-64 of a-z, 0-9, `-` and `_`. Changing it replaces the rule."),
                attr("source", Ty::Str, Mode::Required, "A folder (`secret/app/`) or a mount (`secret/`)."),
                attr("targets", Ty::ListStr, Mode::Required, "Folders or mounts to copy to (`aws/app/`)."),
                attr(
                    "on_conflict",
                    Ty::Str,
                    Mode::OptionalComputed,
                    "`overwrite` (default), `adopt` or `alert`: what a replica changed elsewhere gets.",
                ),
                attr(
                    "delete",
                    Ty::Str,
                    Mode::OptionalComputed,
                    "`retain` (default) or `propagate`: what a source delete does to replicas.",
                ),
                attr(
                    "take_over",
                    Ty::Bool,
                    Mode::OptionalComputed,
                    "Overwrite target secrets Keybridge did not create (default false).",
                ),
                attr(
                    "scan_interval_secs",
                    Ty::Num,
                    Mode::OptionalComputed,
                    "Seconds between drift scans (default 60).",
                ),
                attr(
                    "coalesce_ms",
                    Ty::Num,
                    Mode::OptionalComputed,
                    "Writes to one secret within this many ms go out as one.",
                ),
                attr(
                    "deep_scan_interval_secs",
                    Ty::Num,
                    Mode::OptionalComputed,
                    "Seconds between deep scans for clouds whose listing shows no versions.",
                ),
                attr("rule_id", Ty::Str, Mode::Computed, "The rule's identity at the gateway."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("name", "The rule's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["name"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        if let Some(n) = config.get_str("name")
            && (n.is_empty()
                || n.len() > 64
                || !n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
        {
            diags.push_error("Invalid rule name", "`name` is 1-64 of a-z, 0-9, `-` and `_`.", Some(diag::path("name")));
        }
        if let Some(v) = config.get_str("on_conflict")
            && !["overwrite", "adopt", "alert"].contains(&v)
        {
            diags.push_error(
                "Invalid on_conflict",
                format!("{v:?} is not overwrite, adopt or alert."),
                Some(diag::path("on_conflict")),
            );
        }
        if let Some(v) = config.get_str("delete")
            && !["retain", "propagate"].contains(&v)
        {
            diags.push_error(
                "Invalid delete",
                format!("{v:?} is not retain or propagate."),
                Some(diag::path("delete")),
            );
        }
        if let Some(t) = config.get_strings("targets")
            && t.is_empty()
            && config.val("targets").is_wholly_known()
        {
            diags.push_error("No targets", "A rule needs at least one target.", Some(diag::path("targets")));
        }
        for a in ["scan_interval_secs", "coalesce_ms", "deep_scan_interval_secs"] {
            if let Some(n) = config.get_num(a)
                && (n < 0.0 || n.fract() != 0.0)
            {
                diags.push_error("Invalid number", format!("`{a}` is a whole number, 0 or more."), Some(diag::path(a)));
            }
        }
    }

    fn import_id_help(&self) -> &'static str {
        "the rule name: `database-to-aws`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        Ok([("name".to_string(), Val::str(id))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let name = prior.get_str("name").unwrap_or_default().to_string();
        let rule = match gw.sync().get_rule(gw.req(pb::GetSyncRuleRequest { name })).await {
            Ok(r) => r.into_inner(),
            Err(s) if not_found(&s) => return Ok(None),
            Err(s) => return Err(diag::gateway("read the rule", &s, None)),
        };
        let mut out = Obj::new();
        out.insert("name".into(), Val::str(rule.name));
        out.insert("rule_id".into(), Val::str(rule.id));
        out.insert("source".into(), Val::str(rule.source));
        out.insert("targets".into(), Val::from_strings(rule.targets));
        out.insert("on_conflict".into(), Val::str(rule.on_conflict));
        out.insert("delete".into(), Val::str(rule.delete));
        out.insert("take_over".into(), Val::Bool(rule.take_over));
        out.insert("scan_interval_secs".into(), Val::Num(rule.scan_interval_secs as f64));
        out.insert("coalesce_ms".into(), Val::Num(rule.coalesce_ms as f64));
        out.insert("deep_scan_interval_secs".into(), Val::Num(rule.deep_scan_interval_secs as f64));
        Ok(Some(out))
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, config: &Obj) -> Result<Private, Diags> {
        if self.read(gw, planned).await?.is_some() {
            return Err(super::already_exists("name", "Rule"));
        }
        self.update(gw, planned, planned, config, &Private::new()).await
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, private: &Private) -> Result<Private, Diags> {
        let num = |a: &str| planned.get_num(a).map(|n| n as u64).unwrap_or_default();
        let rule = pb::SyncRule {
            name: planned.get_str("name").unwrap_or_default().into(),
            source: planned.get_str("source").unwrap_or_default().into(),
            targets: planned.get_strings("targets").unwrap_or_default(),
            on_conflict: planned.get_str("on_conflict").unwrap_or_default().into(),
            delete: planned.get_str("delete").unwrap_or_default().into(),
            take_over: planned.get_bool("take_over").unwrap_or_default(),
            scan_interval_secs: num("scan_interval_secs"),
            coalesce_ms: num("coalesce_ms"),
            deep_scan_interval_secs: num("deep_scan_interval_secs"),
            ..Default::default()
        };
        gw.sync().create_rule(gw.req(rule)).await.map_err(|s| diag::gateway("write the rule", &s, None))?;
        Ok(private.clone())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let name = prior.get_str("name").unwrap_or_default().to_string();
        super::deleted(gw.sync().delete_rule(gw.req(pb::DeleteSyncRuleRequest { name })).await, "delete the rule")
    }
}
