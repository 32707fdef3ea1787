//! `keybridge.v1.Sync`: replication rules, status and runs.

use std::sync::Arc;
use std::time::Duration;

use keybridge_core::reconciler::Rule;
use keybridge_core::{Core, RotateSpec, Rotation, RuleSpec, StatusQuery, SyncStatus};
use keybridge_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::service::{caller, none, plain, status, ts};

pub struct SyncService {
    pub core: Arc<Core>,
    /// The server's `limits.request_timeout`: a `Run` that waits gives up
    /// before it (answering `settled: false`), instead of being cut off
    /// with no answer.
    pub request_timeout: Duration,
}

/// How long a `Run` with `wait` waits: what the caller asked (60 s when
/// not, at most an hour), and never past nine tenths of the server's
/// request timeout, so the answer (`settled: false` when it gave up) gets
/// back before the server would cut the call off.
fn run_wait(asked_secs: u64, request_timeout: Duration) -> Duration {
    let asked = Duration::from_secs(if asked_secs == 0 { 60 } else { asked_secs.min(3600) });
    asked.min(request_timeout / 10 * 9)
}

fn rule_pb(r: Rule) -> pb::SyncRule {
    pb::SyncRule {
        name: r.name,
        id: r.id,
        source: r.source,
        targets: r.targets,
        on_conflict: r.on_conflict.name().into(),
        delete: r.delete.name().into(),
        take_over: r.take_over,
        scan_interval_secs: r.scan_interval_secs,
        deep_scan_interval_secs: r.deep_scan_interval_secs,
        coalesce_ms: r.coalesce_ms,
        created_time: Some(ts(r.created)),
        authorizations: r.authorizations,
        written_by: r.written_by,
    }
}

fn status_pb(s: SyncStatus) -> pb::SyncStatusResponse {
    pb::SyncStatusResponse {
        targets: s
            .targets
            .into_iter()
            .map(|t| pb::SyncTargetStatus {
                rule: t.rule,
                source: t.source,
                target: t.target,
                state: t.state.into(),
                message: t.message,
                updated_time: (t.updated != keybridge_core::Timestamp::default()).then(|| ts(t.updated)),
                source_version: t.source_version,
            })
            .collect(),
        next_page_token: s.next_page,
        counts: s
            .counts
            .into_iter()
            .map(|c| pb::SyncStateCount { rule: c.rule, target: c.target, state: c.state.into(), count: c.count })
            .collect(),
        pending: s.pending,
        settled: s.settled,
        resume: s.resume,
        calls: s
            .calls
            .into_iter()
            .map(|c| pb::SyncCallCount {
                mount: c.mount,
                provider: c.provider,
                kind: c.kind.into(),
                calls: c.calls,
                seconds: c.time.as_secs_f64(),
            })
            .collect(),
    }
}

fn rotation_pb(r: Rotation) -> pb::RotationStatus {
    pb::RotationStatus {
        id: r.id,
        path: r.path,
        state: r.state.name().into(),
        copies: r
            .copies
            .into_iter()
            .map(|c| pb::RotationCopy {
                path: c.path,
                how: c.how.name().to_string(),
                staged: c.staged,
                promoted: c.promoted,
                retired: c.retired,
            })
            .collect(),
        error: r.error,
        old_version: r.old_version,
        new_version: r.new_version,
        started_time: Some(ts(r.started)),
        finished_time: r.finished.map(ts),
        next_rotation_time: None,
        engine: r.engine,
        new_lease: r.new_lease,
        old_lease: r.old_lease,
    }
}

#[tonic::async_trait]
impl pb::sync_server::Sync for SyncService {
    async fn rotate(&self, req: Request<pb::RotateSecretRequest>) -> Result<Response<pb::RotationStatus>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.path)
            .with("field", plain(r.field.clone()))
            .with("length", plain(r.length))
            .with("grace_secs", plain(r.grace_secs))
            .with("engine", plain(r.engine.clone()))
            .with("every_secs", plain(r.every_secs))
            .with("remove_schedule", plain(r.remove_schedule));
        let spec = RotateSpec {
            path: r.path.clone(),
            field: r.field,
            length: r.length as usize,
            grace_secs: r.grace_secs,
            engine: r.engine,
        };
        if r.every_secs > 0 || r.remove_schedule {
            let every = if r.remove_schedule { 0 } else { r.every_secs };
            let res = self.core.schedule_rotation(&c, spec, every).await;
            let sched = self.core.finish(&c, res, none).await.map_err(status)?;
            return Ok(Response::new(pb::RotationStatus {
                path: r.path,
                state: if sched.is_some() { "scheduled".into() } else { "unscheduled".into() },
                next_rotation_time: sched.map(|s| ts(s.next)),
                ..Default::default()
            }));
        }
        let res = self.core.rotate_secret(&c, spec).await;
        let rot = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(rotation_pb(rot)))
    }

    async fn get_rotation(&self, req: Request<pb::GetRotationRequest>) -> Result<Response<pb::RotationStatus>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.path);
        let res = self.core.get_rotation(&c, &r.path).await;
        let rot = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(rotation_pb(rot)))
    }

    async fn create_rule(&self, req: Request<pb::SyncRule>) -> Result<Response<pb::SyncRule>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c
            .with_path(&r.name)
            .with("source", plain(r.source.clone()))
            .with("targets", plain(r.targets.clone()))
            .with("on_conflict", plain(r.on_conflict.clone()))
            .with("delete", plain(r.delete.clone()))
            .with("take_over", plain(r.take_over));
        let spec = RuleSpec {
            name: r.name,
            source: r.source,
            targets: r.targets,
            on_conflict: r.on_conflict,
            delete: r.delete,
            take_over: r.take_over,
            scan_interval_secs: r.scan_interval_secs,
            deep_scan_interval_secs: r.deep_scan_interval_secs,
            coalesce_ms: r.coalesce_ms,
        };
        let res = self.core.put_sync_rule(&c, spec).await;
        let rule = self
            .core
            .finish(&c, res, |r| vec![("authorizations".into(), plain(r.authorizations.clone()))])
            .await
            .map_err(status)?;
        Ok(Response::new(rule_pb(rule)))
    }

    async fn get_rule(&self, req: Request<pb::GetSyncRuleRequest>) -> Result<Response<pb::SyncRule>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name);
        let res = self.core.get_sync_rule(&c, &r.name).await;
        let rule = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(rule_pb(rule)))
    }

    async fn list_rules(
        &self,
        req: Request<pb::ListSyncRulesRequest>,
    ) -> Result<Response<pb::ListSyncRulesResponse>, Status> {
        let c = caller(&req)?;
        let res = self.core.list_sync_rules(&c).await;
        let rules = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::ListSyncRulesResponse { rules: rules.into_iter().map(rule_pb).collect() }))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteSyncRuleRequest>,
    ) -> Result<Response<pb::DeleteSyncRuleResponse>, Status> {
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.name);
        let res = self.core.delete_sync_rule(&c, &r.name).await;
        self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(pb::DeleteSyncRuleResponse {}))
    }

    async fn status(&self, req: Request<pb::SyncStatusRequest>) -> Result<Response<pb::SyncStatusResponse>, Status> {
        if let Some((channel, md)) = crate::forward::to_leader(&self.core, &req).await? {
            let msg = req.into_inner();
            return pb::sync_client::SyncClient::new(channel).status(crate::forward::request(msg, md)).await;
        }
        let c = caller(&req)?;
        let r = req.into_inner();
        let c = c.with_path(&r.rule);
        let q = StatusQuery { rule: r.rule, state: r.state, page_size: r.page_size, after: r.page_token };
        let res = self.core.sync_status(&c, &q).await;
        let s = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(status_pb(s)))
    }

    async fn run(&self, req: Request<pb::RunSyncRequest>) -> Result<Response<pb::SyncStatusResponse>, Status> {
        if let Some((channel, md)) = crate::forward::to_leader(&self.core, &req).await? {
            let mut msg = req.into_inner();
            // Within this node's request timeout too: the leader's answer
            // must get back through it (a second off for the hop).
            let here = run_wait(msg.timeout_secs, self.request_timeout).as_secs().saturating_sub(1).max(1);
            msg.timeout_secs = here;
            return pb::sync_client::SyncClient::new(channel).run(crate::forward::request(msg, md)).await;
        }
        let c = caller(&req)?;
        let r = req.into_inner();
        // The token is not secret, but a caller can make it long: the record
        // says whether the run resumed one.
        let c = c.with_path(&r.rule).with("wait", plain(r.wait)).with("resume", plain(!r.resume.is_empty()));
        let timeout = run_wait(r.timeout_secs, self.request_timeout);
        let res = self.core.sync_run_scan(&c, &r.rule, r.wait, timeout, !r.quick, &r.resume).await;
        let s = self.core.finish(&c, res, none).await.map_err(status)?;
        Ok(Response::new(status_pb(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_waits_what_was_asked_within_the_request_timeout() {
        let minute = Duration::from_secs(60);
        assert_eq!(run_wait(0, Duration::from_secs(3600)), minute);
        assert_eq!(run_wait(20, minute), Duration::from_secs(20));
        assert_eq!(run_wait(u64::MAX, Duration::from_secs(7200)), Duration::from_secs(3600));
        // Past the request timeout: nine tenths of it, so the answer gets back.
        assert_eq!(run_wait(1000, minute), Duration::from_secs(54));
        assert_eq!(run_wait(0, minute), Duration::from_secs(54));
        assert_eq!(run_wait(30, Duration::from_secs(3)), Duration::from_millis(2700));
    }
}
