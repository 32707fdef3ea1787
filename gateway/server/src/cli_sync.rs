//! `keybridge sync ...`: replication rules (flags or a declarative file),
//! status, and runs with a progress bar.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Subcommand;
use keybridge_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

use crate::cli::{Client, done, print_json, time};
use crate::cli_progress::Progress;
use crate::error::Error;

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Replication rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Create or update every rule of an HCL file (`rule "NAME" { source =
    /// ..., targets = [...], on_conflict = ..., scan_interval = "30s" }`).
    Apply {
        /// The HCL rule file, e.g. `rules.hcl`.
        file: std::path::PathBuf,
    },
    /// Per rule and target secret: in_sync, pending, drifted, conflict,
    /// error, stale; and the cloud calls made per mount and kind.
    Status {
        /// Only this rule (default: every rule).
        #[arg(long, default_value = "")]
        rule: String,
        /// Only replicas in this state (in_sync, pending, drifted, conflict, error, stale).
        #[arg(long, default_value = "")]
        state: String,
        /// Show at most this many replicas (0: every one, read a page at a time).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Continue after this replica (what the previous status printed to continue from).
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Show the rotation of a secret: its state and each copy's step.
    Rotation {
        /// The rotated secret's full path, mount included: `secret/app/db`.
        path: String,
    },
    /// Scan now; with --wait, show progress until nothing is pending.
    Run {
        /// Scan only this rule (default: every rule).
        #[arg(long, default_value = "")]
        rule: String,
        /// Wait, showing progress, until nothing is pending or --timeout passes.
        #[arg(long)]
        wait: bool,
        /// A quick scan, as the periodic ones (no describe per replica on
        /// clouds whose listing does not tell every version apart).
        #[arg(long)]
        quick: bool,
        /// Bounds the whole command; a wait cut short exits 7 (still pending).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// `sync rule create app --source secret/app/ --target aws/app/ --target gcp/app/`
    Create {
        /// The rule's name: 1 to 64 of a-z, 0-9, `-` and `_`.
        name: String,
        /// The folder to copy from, mount included: `secret/app/` (or a whole mount: `secret/`).
        #[arg(long)]
        source: String,
        /// A folder to copy to, mount included: `aws/app/` (repeat the flag for several).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// What to do with a replica edited outside Keybridge: `overwrite`, `adopt` or `alert`.
        #[arg(long, default_value = "overwrite")]
        on_conflict: String,
        /// What a deleted source does to its replicas: `retain` them or `propagate` the delete.
        #[arg(long, default_value = "retain")]
        delete: String,
        /// Overwrite target secrets Keybridge did not create (needs sudo on the rule).
        #[arg(long)]
        take_over: bool,
        /// Time between drift scans, e.g. `30s` (at least 1s).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        scan_interval: Duration,
        /// GCP targets: between scans that describe every replica (default:
        /// ten scan intervals).
        #[arg(long, value_parser = humantime::parse_duration)]
        deep_scan_interval: Option<Duration>,
        /// Writes to one secret within this window go out as one replication, e.g. `10m` (0s: each write).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        coalesce: Duration,
    },
    /// Show a rule (`-o json` adds the authorizations it carries and its writer).
    Get {
        /// The rule's name.
        name: String,
    },
    /// List every rule with its source and targets.
    List,
    /// Delete a rule; the replicas it made stay.
    Delete {
        /// The rule's name.
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
            "next_page_token": s.next_page_token,
            "counts": s.counts.iter().map(|c| json!({
                "rule": c.rule, "target": c.target, "state": c.state, "count": c.count,
            })).collect::<Vec<_>>(),
            "targets": s.targets.iter().map(|t| json!({
                "rule": t.rule, "source": t.source, "target": t.target, "state": t.state,
                "message": t.message, "updated_time": time(&t.updated_time), "source_version": t.source_version,
            })).collect::<Vec<_>>(),
            "calls": s.calls.iter().map(|c| json!({
                "mount": c.mount, "provider": c.provider, "kind": c.kind, "calls": c.calls, "seconds": c.seconds,
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
    let mut counts: Vec<String> = Vec::new();
    for c in &s.counts {
        counts.push(format!("{} {} {} {}", c.rule, c.target, c.state, c.count));
    }
    if !counts.is_empty() {
        println!("replicas: {}", counts.join(", "));
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
        SyncCommand::Status { rule, state, limit, after } => {
            // Pages of at most 1000 until `limit`: a hundred thousand
            // replicas are never one message.
            let mut all: Option<pb::SyncStatusResponse> = None;
            let mut page_token = after;
            loop {
                let have = all.as_ref().map_or(0, |a| a.targets.len());
                let want = if limit == 0 { 1000 } else { (limit - have).min(1000) };
                let req = pb::SyncStatusRequest {
                    rule: rule.clone(),
                    state: state.clone(),
                    page_size: want as u32,
                    page_token: page_token.clone(),
                };
                let s = c.sync().status(c.req(req)).await?.into_inner();
                page_token = s.next_page_token.clone();
                match &mut all {
                    None => all = Some(s),
                    Some(a) => {
                        a.targets.extend(s.targets);
                        a.next_page_token = s.next_page_token;
                    }
                }
                let have = all.as_ref().map_or(0, |a| a.targets.len());
                if page_token.is_empty() || (limit != 0 && have >= limit) {
                    break;
                }
            }
            if let Some(s) = all {
                print_status(json, &s);
                if !s.next_page_token.is_empty() {
                    eprintln!("More replicas follow: keybridge sync status --after {}", s.next_page_token);
                }
            }
        }
        SyncCommand::Rotation { path } => {
            let r = c.sync().get_rotation(c.req(pb::GetRotationRequest { path })).await?.into_inner();
            print_rotation(json, &r);
        }
        SyncCommand::Run { rule, wait, quick, timeout } => {
            let deadline = tokio::time::Instant::now() + timeout;
            if !wait {
                let req = pb::RunSyncRequest { rule, wait: false, timeout_secs: 0, quick, resume: String::new() };
                let s = bounded(deadline, timeout, c.sync().run(c.req(req))).await?.into_inner();
                print_status(json, &s);
                return Ok(());
            }
            // The first call asks the server to scan; it and the calls after
            // it wait (at most 20 s each) for that scan and the journal to
            // settle, each resuming the wait of the one before, so a long
            // scan is asked for once. Beside them, the status is polled for
            // the progress display. The deadline bounds the whole command.
            let run = async {
                let mut resume = String::new();
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().clamp(1, 20);
                    let req = pb::RunSyncRequest { rule: rule.clone(), wait: true, timeout_secs: left, quick, resume };
                    let s = c.sync().run(c.req(req)).await?.into_inner();
                    if s.settled {
                        return Ok::<_, Error>(s);
                    }
                    resume = s.resume;
                }
            };
            let mut progress = Progress::new(json, "sync");
            let mut last: Option<pb::SyncStatusResponse> = None;
            let poll = async {
                // The counts cost the server a read of every record: poll
                // no more than a fifth of the time.
                let mut pause = Duration::from_millis(250);
                loop {
                    tokio::time::sleep(pause).await;
                    let started = tokio::time::Instant::now();
                    let req = pb::SyncStatusRequest { rule: rule.clone(), ..Default::default() };
                    if let Ok(s) = c.sync().status(c.req(req)).await {
                        pause = (started.elapsed() * 4).max(Duration::from_millis(250));
                        let s = s.into_inner();
                        let (done, total, summary) = sync_summary(&s);
                        progress.update(done, total, &summary);
                        last = Some(s);
                    }
                }
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout_at(deadline, run) => r,
                never = poll => match never {},
            };
            progress.finish();
            match outcome {
                Ok(settled) => print_status(json, &settled?),
                Err(_) => {
                    if let Some(s) = &last {
                        print_status(json, s);
                    }
                    let pending = last.as_ref().map(|s| s.pending).unwrap_or(0);
                    return Err(Error::StillPending(format!(
                        "stopped waiting after {}: not settled yet ({pending} changes pending); the server goes \
                         on replicating: follow it with `keybridge sync status`",
                        humantime::format_duration(timeout)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// What `rotate --wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitFor {
    /// Every copy serves the new value (the old one may still be in its grace period).
    Promoted,
    /// The grace period is over and the old version is retired everywhere.
    Retired,
}

/// A call that must answer before `deadline` (`--timeout`).
async fn bounded<T>(
    deadline: tokio::time::Instant,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::StillPending(format!(
            "no answer within {}; the server may still carry out the request",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Replicas in sync of all, and counts per target folder:
/// `aws/app/ 3/5, gcp/app/ 5/5; 2 changes pending`.
fn sync_summary(s: &pb::SyncStatusResponse) -> (u64, u64, String) {
    let mut per: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
    for c in &s.counts {
        let e = per.entry(c.target.as_str()).or_default();
        e.1 += c.count;
        if c.state == "in_sync" {
            e.0 += c.count;
        }
    }
    let done = per.values().map(|v| v.0).sum();
    let total = per.values().map(|v| v.1).sum();
    let mounts: Vec<String> = per.iter().map(|(m, (d, n))| format!("{m} {d}/{n}")).collect();
    (done, total, format!("in sync ({}); {} changes pending", mounts.join(", "), s.pending))
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
    pub wait: Option<WaitFor>,
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
    let deadline = tokio::time::Instant::now() + timeout;
    let req = pb::RotateSecretRequest {
        path: path.clone(),
        field,
        length,
        grace_secs: grace.as_secs(),
        engine,
        ..Default::default()
    };
    let mut r = bounded(deadline, timeout, c.sync().rotate(c.req(req))).await?.into_inner();
    if let Some(goal) = wait {
        let mut progress = Progress::new(json, &format!("rotate {path}"));
        let reached = |r: &pb::RotationStatus| match goal {
            WaitFor::Promoted => {
                matches!(r.state.as_str(), "retiring" | "done" | "rolled_back")
                    && (r.state == "rolled_back" || r.copies.iter().all(|c| c.promoted))
            }
            WaitFor::Retired => matches!(r.state.as_str(), "done" | "rolled_back"),
        };
        let follow = async {
            loop {
                let promoted = r.copies.iter().filter(|c| c.promoted).count() as u64;
                let retired = r.copies.iter().filter(|c| c.retired).count();
                progress.update(promoted, r.copies.len() as u64, &format!("promoted, {retired} retired; {}", r.state));
                if reached(&r) {
                    return Ok::<_, Error>(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                r = c.sync().get_rotation(c.req(pb::GetRotationRequest { path: path.clone() })).await?.into_inner();
            }
        };
        let outcome = tokio::time::timeout_at(deadline, follow).await;
        progress.finish();
        match outcome {
            Ok(done) => done?,
            Err(_) => {
                print_rotation(json, &r);
                let goal = match goal {
                    WaitFor::Promoted => "every copy promoted",
                    WaitFor::Retired => "the old version retired everywhere",
                };
                return Err(Error::StillPending(format!(
                    "stopped waiting after {} before {goal}: the rotation is {} and goes on in the server; \
                     follow it with `keybridge sync rotation {path}`",
                    humantime::format_duration(timeout),
                    r.state
                )));
            }
        }
    }
    print_rotation(json, &r);
    if r.state == "rolled_back" {
        return Err(Error::Usage(format!("the rotation was rolled back: {}", r.error)));
    }
    Ok(())
}
