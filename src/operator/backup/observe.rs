//! What the operator's caches show of a backup's pods and Jobs: their
//! finished reports, which dumps already have an upload, which dumps are
//! running, and which pods cannot start.

use super::reports::{self, PodReport};
use crate::api::{DatabaseBackup, NotifyEvent};
use crate::jobresult::{Outcome, Step};
use crate::operator::apiserver::labelled_owner;
use crate::operator::conditions::Observed;
use crate::operator::notify::Notice;
use crate::operator::{Context, results};
use crate::{names, reasons};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::time::Duration;

/// Finished pods and failed Jobs of this backup, from the operator's caches,
/// and the UIDs of all of them that still exist.
pub(super) fn reports(
    db: &DatabaseBackup,
    ctx: &Context,
    tz: chrono_tz::Tz,
) -> (Vec<PodReport>, Vec<String>) {
    let key = Some(ObjectRef::from_obj(db));
    let pods: Vec<_> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| labelled_owner(&**p, names::LABEL_BACKUP) == key)
        .collect();
    let jobs: Vec<_> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| labelled_owner(&**j, names::LABEL_BACKUP) == key)
        .collect();
    let present = pods
        .iter()
        .filter_map(|p| p.uid())
        .chain(jobs.iter().filter_map(|j| j.uid()))
        .collect();
    // A pod stopped because its Job ran out of time reports the deadline, not
    // the signal that stopped it.
    let deadline_exceeded: HashMap<String, String> = jobs
        .iter()
        .filter(|j| results::deadline_exceeded(j))
        .filter_map(|j| {
            let seconds = j.spec.as_ref()?.active_deadline_seconds?;
            Some((
                j.uid()?,
                format!("job failed: DeadlineExceeded (activeDeadlineSeconds {seconds})"),
            ))
        })
        .collect();
    let reports = pods
        .iter()
        .filter_map(|p| reports::pod_report(p, tz))
        .map(|mut r| {
            let cause = r.job.as_ref().and_then(|j| deadline_exceeded.get(j));
            if let (Some(cause), false) = (cause, r.result.outcome == Outcome::Succeeded) {
                r.result = results::failure(r.step, &r.finished, tz, cause);
                r.result.reason = Some(reasons::DEADLINE_EXCEEDED.into());
            }
            r
        })
        .chain(jobs.iter().filter_map(|j| reports::job_report(j, tz)))
        .collect();
    (reports, present)
}

/// Whether an upload pod of this backup started after the dump pod `dump`
/// ended: it took whatever dump was staged, so that dump needs no upload of
/// its own (a dump finished while the operator was down, then an upload).
/// Both times come from the kubelet of the dump's node, so only upload pods
/// on that node count, and only strictly later seconds: when in doubt, chain.
pub(super) fn upload_started_since(
    db: &DatabaseBackup,
    ctx: &Context,
    dump: &str,
    ended: &Time,
) -> bool {
    let key = Some(ObjectRef::from_obj(db));
    let pods = ctx.pods.state();
    let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
    let Some(dump_node) = pods
        .iter()
        .find(|p| p.uid().as_deref() == Some(dump))
        .and_then(|p| node(p))
    else {
        return false;
    };
    let started = |p: &Pod| {
        let state = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .as_ref()?;
        state
            .running
            .as_ref()
            .and_then(|r| r.started_at.clone())
            .or_else(|| state.terminated.as_ref()?.started_at.clone())
    };
    pods.iter().any(|p| {
        labelled_owner(&**p, names::LABEL_BACKUP) == key
            && p.labels().get(names::LABEL_STEP).map(String::as_str) == Some(Step::Upload.as_str())
            && node(p).as_ref() == Some(&dump_node)
            && started(p).is_some_and(|t| t.0.as_second() > ended.0.as_second())
    })
}

/// A notice for each dump pod of this backup that has not finished: the
/// "start" ping. Its creation is always seen, unlike a Running phase a short
/// dump may pass through between two reconciles; a start after the end would
/// read as a run that never finished, so a finished pod gets none.
pub(super) fn started_dumps(db: &DatabaseBackup, ctx: &Context) -> Vec<Notice> {
    if !db.spec.notify.iter().any(|t| t.wants(NotifyEvent::Start)) {
        return vec![];
    }
    let key = Some(ObjectRef::from_obj(db));
    let dump = Some(Step::Dump.as_str());
    ctx.pods
        .state()
        .iter()
        .filter(|p| labelled_owner(&***p, names::LABEL_BACKUP) == key)
        .filter(|p| p.labels().get(names::LABEL_STEP).map(String::as_str) == dump)
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            p.metadata.deletion_timestamp.is_none()
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| {
            Some(Notice {
                event: NotifyEvent::Start,
                id: format!("{}:start", p.uid()?),
                reason: reasons::DUMP_STARTED.into(),
                message: format!("database dump started (pod {})", p.name_any()),
                key: None,
                time: p.metadata.creation_timestamp.clone()?,
            })
        })
        .collect()
}

/// How long a dump runs before an upload follows it: a short dump's upload
/// after it costs little, and a dump that fails at once (credentials, an
/// unreachable server) gets no upload saying there is nothing to send.
pub(super) const FOLLOW_AFTER: Duration = Duration::from_secs(15);

/// The runs of this backup's dumps whose tool has run for `FOLLOW_AFTER`:
/// each gets an upload that follows its file as it is written
/// (`jobs::follow`), named as the upload chained to its success would be, so
/// it is made once. Also when the next running dump comes due.
pub(super) fn running_dumps(
    db: &DatabaseBackup,
    ctx: &Context,
) -> (Vec<(String, String)>, Option<Duration>) {
    let key = Some(ObjectRef::from_obj(db));
    let dump = Some(Step::Dump.as_str());
    let now = chrono::Utc::now();
    let mut due = None;
    let runs = ctx
        .pods
        .state()
        .iter()
        .filter(|p| labelled_owner(&***p, names::LABEL_BACKUP) == key)
        .filter(|p| p.labels().get(names::LABEL_STEP).map(String::as_str) == dump)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let Some(since) = running_since(p) else {
                return false;
            };
            let ran = (now - since).to_std().unwrap_or_default();
            let left = FOLLOW_AFTER.saturating_sub(ran);
            if !left.is_zero() {
                due = Some(due.map_or(left, |d: Duration| d.min(left)));
            }
            left.is_zero()
        })
        .filter_map(|p| Some((run_of(p)?, p.uid()?)))
        .collect();
    (runs, due.map(|d| d + Duration::from_secs(1)))
}

/// The run a dump pod belongs to: its run-now id, else its Job's.
fn run_of(pod: &Pod) -> Option<String> {
    let job = pod.owner_references().iter().find(|o| o.kind == "Job");
    let run = pod.labels().get(names::RUN_NOW).cloned();
    run.or_else(|| Some(names::run_now_id(&job?.uid)))
}

/// The upload Job that followed the dump pod `dump` of `run`, if any.
pub(super) fn follower(
    db: &DatabaseBackup,
    ctx: &Context,
    run: &str,
    dump: &str,
) -> Option<std::sync::Arc<k8s_openapi::api::batch::v1::Job>> {
    let name = names::run_job_name(
        &names::upload_cronjob_name(&db.name_any()),
        &names::follower_id(run, dump),
    );
    ctx.jobs
        .get(&ObjectRef::new(&name).within(&db.namespace().unwrap_or_default()))
}

/// Since when the pod's step container runs (its init containers done).
fn running_since(pod: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(results::to_chrono)
}

/// Pods of this backup that cannot start, and Jobs that cannot create
/// theirs, as the conditions of their steps.
pub(super) fn stuck_steps(db: &DatabaseBackup, ctx: &Context) -> Vec<(&'static str, Observed)> {
    let key = Some(ObjectRef::from_obj(db));
    let all_pods = ctx.pods.state();
    let pods: Vec<&Pod> = all_pods
        .iter()
        .map(|p| &**p)
        .filter(|p| labelled_owner(*p, names::LABEL_BACKUP) == key)
        .collect();
    let stuck = pods.iter().filter_map(|p| reports::stuck(p));
    let events = ctx.refusals.state();
    let jobs = ctx.jobs.state();
    let refused = jobs
        .iter()
        .filter(|j| labelled_owner(&***j, names::LABEL_BACKUP) == key)
        .filter_map(|j| reports::refused(j, events.iter().map(|e| &**e), pods.iter().copied()));
    stuck.chain(refused).collect()
}
