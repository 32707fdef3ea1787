//! `keybridge sync ...`: replication rules (flags or a declarative file),
//! status, and runs with a progress bar.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use clap::Subcommand;
use keybridge_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

use crate::cli::{Client, done, print_json, time};
use crate::error::Error;

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Replication rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Create or update every rule of an HCL file (`rule "NAME" { source =
    /// ..., targets = [...], on_conflict = ..., scan_interval = "30s" }`).
    Apply { file: std::path::PathBuf },
    /// Per rule and target secret: in_sync, pending, drifted, conflict,
    /// error, stale; and the cloud calls made per mount and kind.
    Status {
        #[arg(long, default_value = "")]
        rule: String,
    },
    /// Scan now; with --wait, show progress until nothing is pending.
    Run {
        #[arg(long, default_value = "")]
        rule: String,
        #[arg(long)]
        wait: bool,
        /// A quick scan, as the periodic ones (no describe per replica on
        /// clouds whose listing does not tell every version apart).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// `sync rule create app --source secret/app/ --target aws/app/ --target gcp/app/`
    Create {
        name: String,
        #[arg(long)]
        source: String,
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// overwrite, adopt or alert.
        #[arg(long, default_value = "overwrite")]
        on_conflict: String,
        /// retain or propagate.
        #[arg(long, default_value = "retain")]
        delete: String,
        #[arg(long)]
        take_over: bool,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        scan_interval: Duration,
        /// GCP targets: between scans that describe every replica (default:
        /// ten scan intervals).
        #[arg(long, value_parser = humantime::parse_duration)]
        deep_scan_interval: Option<Duration>,
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        coalesce: Duration,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
}

/// A rule in a rule file: the CLI flags' names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    source: String,
    targets: Vec<String>,
    #[serde(default)]
    on_conflict: String,
    #[serde(default)]
    delete: String,
    #[serde(default)]
    take_over: bool,
    #[serde(default)]
    scan_interval: Option<String>,
    #[serde(default)]
    deep_scan_interval: Option<String>,
    #[serde(default)]
    coalesce: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: BTreeMap<String, FileRule>,
}

fn duration(what: &str, v: Option<&str>) -> Result<Duration, Error> {
    match v {
        None => Ok(Duration::ZERO),
        Some(s) => humantime::parse_duration(s)
            .map_err(|_| Error::Usage(format!("{what} {s:?} is not a duration such as 30s or 5m"))),
    }
}

fn rule_json(r: &pb::SyncRule) -> serde_json::Value {
    json!({
        "name": r.name, "id": r.id, "source": r.source, "targets": r.targets,
        "on_conflict": r.on_conflict, "delete": r.delete, "take_over": r.take_over,
        "scan_interval_secs": r.scan_interval_secs, "deep_scan_interval_secs": r.deep_scan_interval_secs,
        "coalesce_ms": r.coalesce_ms,
        "created_time": time(&r.created_time),
        "authorizations": r.authorizations, "written_by": r.written_by,
    })
}

fn print_rule(json: bool, r: &pb::SyncRule) {
    if json {
        print_json(&rule_json(r));
    } else {
        println!("{}: {} -> {}", r.name, r.source, r.targets.join(", "));
        println!(
            "  on_conflict={} delete={} take_over={} scan_interval={}s coalesce={}ms",
            r.on_conflict, r.delete, r.take_over, r.scan_interval_secs, r.coalesce_ms
        );
    }
}

fn print_status(json: bool, s: &pb::SyncStatusResponse) {
    if json {
        print_json(&json!({
            "pending": s.pending,
            "targets": s.targets.iter().map(|t| json!({
                "rule": t.rule, "source": t.source, "target": t.target, "state": t.state,
                "message": t.message, "updated_time": time(&t.updated_time), "source_version": t.source_version,
            })).collect::<Vec<_>>(),
            "calls": s.calls.iter().map(|c| json!({
                "mount": c.mount, "provider": c.provider, "kind": c.kind, "calls": c.calls,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    let rows: Vec<[String; 4]> =
        s.targets.iter().map(|t| [t.rule.clone(), t.target.clone(), t.state.clone(), t.message.clone()]).collect();
    let header = ["RULE".to_string(), "TARGET".into(), "STATE".into(), "MESSAGE".into()];
    let width = |i: usize| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for r in std::iter::once(&header).chain(rows.iter()) {
        println!("{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
    }
    println!("pending changes: {}", s.pending);
    let calls: Vec<String> =
        s.calls.iter().filter(|c| c.calls > 0).map(|c| format!("{} {} {}", c.mount, c.kind, c.calls)).collect();
    if !calls.is_empty() {
        println!("cloud calls since unseal: {}", calls.join(", "));
    }
}

pub async fn sync(c: &Client, cmd: SyncCommand) -> Result<(), Error> {
    let json = c.json();
    match cmd {
        SyncCommand::Rule(RuleCommand::Create {
            name,
            source,
            targets,
            on_conflict,
            delete,
            take_over,
            scan_interval,
            deep_scan_interval,
            coalesce,
        }) => {
            let r = c
                .sync()
                .create_rule(c.req(pb::SyncRule {
                    name,
                    source,
                    targets,
                    on_conflict,
                    delete,
                    take_over,
                    scan_interval_secs: scan_interval.as_secs().max(1),
                    deep_scan_interval_secs: deep_scan_interval.map_or(0, |d| d.as_secs().max(1)),
                    coalesce_ms: coalesce.as_millis() as u64,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            print_rule(json, &r);
        }
        SyncCommand::Rule(RuleCommand::Get { name }) => {
            let r = c.sync().get_rule(c.req(pb::GetSyncRuleRequest { name })).await?.into_inner();
            print_rule(json, &r);
        }
        SyncCommand::Rule(RuleCommand::List) => {
            let r = c.sync().list_rules(c.req(pb::ListSyncRulesRequest {})).await?.into_inner();
            if json {
                print_json(&json!(r.rules.iter().map(rule_json).collect::<Vec<_>>()));
            } else if r.rules.is_empty() {
                println!("No sync rules");
            } else {
                for rule in &r.rules {
                    print_rule(false, rule);
                }
            }
        }
        SyncCommand::Rule(RuleCommand::Delete { name }) => {
            c.sync().delete_rule(c.req(pb::DeleteSyncRuleRequest { name: name.clone() })).await?;
            done(json, &format!("Success! Deleted the sync rule {name} (its replicas stay)"));
        }
        SyncCommand::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::Read { path: file.display().to_string(), source: e })?;
            let parsed: RuleFile =
                hcl::from_str(&text).map_err(|e| Error::Usage(format!("{}: not a rule file: {e}", file.display())))?;
            if parsed.rule.is_empty() {
                return Err(Error::Usage(format!("{}: no rule blocks", file.display())));
            }
            let mut applied = Vec::new();
            for (name, r) in parsed.rule {
                let scan = duration("scan_interval", r.scan_interval.as_deref())?;
                let coalesce = duration("coalesce", r.coalesce.as_deref())?;
                let deep = duration("deep_scan_interval", r.deep_scan_interval.as_deref())?;
                let rule = c
                    .sync()
                    .create_rule(c.req(pb::SyncRule {
                        name,
                        source: r.source,
                        targets: r.targets,
                        on_conflict: r.on_conflict,
                        delete: r.delete,
                        take_over: r.take_over,
                        scan_interval_secs: scan.as_secs(),
                        deep_scan_interval_secs: deep.as_secs(),
                        coalesce_ms: coalesce.as_millis() as u64,
                        ..Default::default()
                    }))
                    .await?
                    .into_inner();
                applied.push(rule);
            }
            if json {
                print_json(&json!(applied.iter().map(rule_json).collect::<Vec<_>>()));
            } else {
                for r in &applied {
                    println!("Applied {}", r.name);
                }
            }
        }
        SyncCommand::Status { rule } => {
            let s = c.sync().status(c.req(pb::SyncStatusRequest { rule })).await?.into_inner();
            print_status(json, &s);
        }
        SyncCommand::Run { rule, wait, quick, timeout } => {
            // Each call asks for a scan and waits (at most 20 s, under the
            // server's request timeout) for it and the journal to settle.
            let deadline = Instant::now() + timeout;
            let mut s;
            loop {
                let left = deadline.saturating_duration_since(Instant::now()).as_secs().clamp(1, 20);
                s = c
                    .sync()
                    .run(c.req(pb::RunSyncRequest { rule: rule.clone(), wait, timeout_secs: left, quick }))
                    .await?
                    .into_inner();
                if !wait || s.settled || Instant::now() >= deadline {
                    break;
                }
                if !json {
                    let done = s.targets.iter().filter(|t| t.state == "in_sync").count();
                    let total = s.targets.len().max(1);
                    let bar = done * 30 / total;
                    eprint!(
                        "\r[{}{}] {done}/{total} in sync, {} pending",
                        "#".repeat(bar),
                        ".".repeat(30 - bar),
                        s.pending
                    );
                    let _ = std::io::stderr().flush();
                }
            }
            if wait && !json {
                eprintln!();
            }
            print_status(json, &s);
            if wait && !s.settled {
                return Err(Error::Usage(format!("not settled after {timeout:?}: {} changes pending", s.pending)));
            }
        }
    }
    Ok(())
}

fn print_rotation(json: bool, r: &pb::RotationStatus) {
    if json {
        print_json(&json!({
            "id": r.id, "path": r.path, "state": r.state, "error": r.error,
            "old_version": r.old_version, "new_version": r.new_version,
            "started_time": time(&r.started_time), "finished_time": time(&r.finished_time),
            "engine": r.engine, "new_lease": r.new_lease, "old_lease": r.old_lease,
            "copies": r.copies.iter().map(|c| json!({
                "path": c.path, "how": c.how, "staged": c.staged, "promoted": c.promoted, "retired": c.retired,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!("rotation {} of {}: {}", r.id, r.path, r.state);
    for c in &r.copies {
        let step = if c.retired {
            "retired the old version"
        } else if c.promoted {
            "promoted"
        } else if c.staged {
            "staged"
        } else {
            "waiting"
        };
        println!("  {:<40} {:<7} {step}", c.path, c.how);
    }
    if !r.error.is_empty() {
        println!("  error: {}", r.error);
    }
}

/// The arguments of `keybridge rotate`.
pub struct RotateArgs {
    pub path: String,
    pub field: String,
    pub length: u32,
    pub grace: Duration,
    pub wait: bool,
    pub timeout: Duration,
    pub every: Option<Duration>,
    pub engine: String,
}

/// `keybridge rotate PATH`: starts a rotation, and with --wait follows it;
/// with --every sets a schedule instead.
pub async fn rotate(c: &Client, a: RotateArgs) -> Result<(), Error> {
    let RotateArgs { path, field, length, grace, wait, timeout, every, engine } = a;
    let json = c.json();
    if let Some(every) = every {
        let r = c
            .sync()
            .rotate(c.req(pb::RotateSecretRequest {
                path: path.clone(),
                field,
                length,
                grace_secs: grace.as_secs(),
                every_secs: every.as_secs(),
                remove_schedule: every.is_zero(),
                engine: engine.clone(),
            }))
            .await?
            .into_inner();
        if json {
            print_json(&json!({ "path": r.path, "state": r.state, "next_rotation_time": time(&r.next_rotation_time) }));
        } else if r.state == "scheduled" {
            println!(
                "{path} rotates every {}; next at {}",
                humantime::format_duration(every),
                time(&r.next_rotation_time)
            );
        } else {
            println!("{path} no longer rotates on a schedule");
        }
        return Ok(());
    }
    let mut r = c
        .sync()
        .rotate(c.req(pb::RotateSecretRequest {
            path: path.clone(),
            field,
            length,
            grace_secs: grace.as_secs(),
            engine,
            ..Default::default()
        }))
        .await?
        .into_inner();
    if wait {
        let deadline = Instant::now() + timeout;
        while !matches!(r.state.as_str(), "done" | "rolled_back") && Instant::now() < deadline {
            if !json {
                let moved = r.copies.iter().filter(|c| c.promoted).count();
                eprint!("\r{}: {moved}/{} copies promoted", r.state, r.copies.len());
                let _ = std::io::stderr().flush();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            r = c.sync().get_rotation(c.req(pb::GetRotationRequest { path: path.clone() })).await?.into_inner();
        }
        if !json {
            eprintln!();
        }
    }
    print_rotation(json, &r);
    if r.state == "rolled_back" {
        return Err(Error::Usage(format!("the rotation was rolled back: {}", r.error)));
    }
    Ok(())
}
