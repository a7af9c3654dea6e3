//! The DatabaseBackup reconciler: check the spec and its references, apply
//! the children, start what was asked for, fold the finished pods into the
//! status, judge staleness, and publish what changed.

mod children;
mod drill;
mod reports;
mod status;
#[cfg(test)]
mod tests;

pub use children::{
    dump_cronjob, job_from_cronjob, key_prefix, labels, staging_pvc, upload_cronjob,
};
pub use reports::{PodReport, job_report, pod_report, stuck};
pub use status::{LOG_LINES_KEPT, record_reports, staleness};

use super::apiserver::{apply, backoff_after, create_job, labelled_owner, write_status};
use super::conditions::{self, NOTIFIED, Note, Observed, READY, STALE};
use super::notify::Notice;
use super::{Context, Error, checks, results};
use crate::api::{DatabaseBackup, DatabaseBackupStatus, NotifyEvent};
use crate::jobresult::{Outcome, Step};
use crate::{names, reasons};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a healthy resource is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(15 * 60);

pub async fn reconcile(db: Arc<DatabaseBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let mut applied = check_and_apply(&db, &ctx).await;
    let old = db.status.clone().unwrap_or_default();
    let mut pass = Pass::new(&db, &old, ready(&applied));
    let (reports, present) = reports(&db, &ctx, pass.tz);
    let chained = uploads_to_chain(&db, &ctx, &reports, &pass.status);
    publish_steps(&db, &ctx, &reports, &old);
    pass.record(reports, &present);
    if let Ok(children) = &mut applied {
        if pass.status.last_verified_key != old.last_verified_key {
            children.upload = apply_upload(&db, &ctx, &pass.status).await?;
        }
        run_now(&db, &ctx, &children.dump, &mut pass).await?;
        for run in &chained {
            create_job(&ctx, &job_from_cronjob(&children.upload, run), "job").await?;
        }
    }
    let mut next_drill = None;
    if applied.is_ok() {
        next_drill = start_drill(&db, &ctx, &mut pass).await?;
    }
    pass.record_stuck(stuck_pods(&db, &ctx));
    pass.notices.extend(started_dumps(&db, &ctx));
    publish_verification(&db, &ctx, &pass.status);
    publish_upload(&db, &ctx, &pass.status);
    let recheck = pass.judge_staleness(&db, &ctx, &old);
    let recheck = next_drill.map_or(recheck, |due| recheck.min(due));
    let urls = pass.judge_notifications(&db, &ctx).await;
    let notices = std::mem::take(&mut pass.notices);
    publish(&db, &ctx, &old, pass).await?;
    // Only once the status that records them is written: a failed write
    // finds them again in the next pass, and nothing goes out twice.
    ctx.notifier
        .send(&ObjectRef::from_obj(&*db), &db.spec.notify, &urls, &notices);
    applied?;
    ctx.failures
        .lock()
        .unwrap()
        .remove(&ObjectRef::from_obj(&*db));
    Ok(Action::requeue(recheck))
}

pub fn error_policy(db: Arc<DatabaseBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&*db, error, &ctx, &ctx.failures)
}

/// The applied CronJobs, as the apiserver returned them.
struct Children {
    dump: CronJob,
    upload: CronJob,
}

async fn check_and_apply(db: &DatabaseBackup, ctx: &Context) -> Result<Children, Error> {
    checks::validate_spec(db)?;
    checks::check_references(db, &ctx.client).await?;
    let ns = db.namespace().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    apply(pvcs, &staging_pvc(db), &ctx.pvcs, false).await?;
    let dump = dump_cronjob(db, &ctx.settings);
    let upload = upload_cronjob(db, &ctx.settings);
    Ok(Children {
        dump: apply(cronjobs.clone(), &dump, &ctx.cronjobs, true).await?,
        upload: apply(cronjobs, &upload, &ctx.cronjobs, true).await?,
    })
}

fn ready(applied: &Result<Children, Error>) -> Observed {
    match applied {
        Ok(_) => Observed::new(READY, true, reasons::RECONCILED, "children are up to date"),
        Err(Error::Invalid(p)) => Observed::new(READY, false, p.reason, p.message.clone()),
        Err(e) => Observed::new(READY, false, e.reason(), e.to_string()),
    }
}

/// One reconcile's view of the status it is computing, and the Events to
/// publish once that status is written.
struct Pass {
    status: DatabaseBackupStatus,
    notes: Vec<Note>,
    /// What the notification targets hear of, once the status is written.
    notices: Vec<Notice>,
    ready: Observed,
    generation: Option<i64>,
    now: Time,
    tz: chrono_tz::Tz,
}

impl Pass {
    fn new(db: &DatabaseBackup, old: &DatabaseBackupStatus, ready: Observed) -> Pass {
        let generation = db.metadata.generation;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut status = old.clone();
        status.observed_generation = generation;
        conditions::set_condition(&mut status.conditions, &ready, generation, &now);
        Pass {
            status,
            notes: vec![],
            notices: vec![],
            ready,
            generation,
            now,
            tz: db.spec.time_zone.parse().unwrap_or(chrono_tz::UTC),
        }
    }

    fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.notes.push(Note {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn record(&mut self, reports: Vec<PodReport>, present: &[String]) {
        let (notes, notices) = record_reports(
            &mut self.status,
            reports,
            present,
            self.generation,
            &self.now,
        );
        self.notes.extend(notes);
        self.notices.extend(notices);
    }

    /// Hands the notifier the targets and their URLs, and sets Notified from
    /// how their deliveries went (an Event when that turns). Returns the URLs.
    async fn judge_notifications(
        &mut self,
        db: &DatabaseBackup,
        ctx: &Context,
    ) -> HashMap<String, Result<String, String>> {
        let key = ObjectRef::from_obj(db);
        let urls = match db.spec.notify.is_empty() {
            true => HashMap::new(),
            false => checks::notify_urls(db, &ctx.client).await,
        };
        ctx.notifier.configure(&key, &db.spec.notify, &urls);
        let Some(notified) = ctx.notifier.condition(&key) else {
            self.status.conditions.retain(|c| c.type_ != NOTIFIED);
            return urls;
        };
        let was = conditions::find(&self.status.conditions, NOTIFIED)
            .map(|c| (c.status == "True", c.message.clone()));
        let turned = match &was {
            None => !notified.status,
            Some((status, message)) => {
                *status != notified.status || (!notified.status && *message != notified.message)
            }
        };
        if turned {
            self.note(!notified.status, &notified.reason, notified.message.clone());
        }
        conditions::set_condition(
            &mut self.status.conditions,
            &notified,
            self.generation,
            &self.now,
        );
        urls
    }

    /// Pods that cannot start, each said once (not at every kubelet retry).
    fn record_stuck(&mut self, stuck: Vec<(&'static str, Observed)>) {
        for (reason, stuck) in stuck {
            let known = conditions::find(&self.status.conditions, stuck.type_)
                .is_some_and(|c| conditions::says_stuck(c, &stuck));
            if !known {
                self.note(true, reason, stuck.message.clone());
                conditions::set_condition(
                    &mut self.status.conditions,
                    &stuck,
                    self.generation,
                    &self.now,
                );
            }
        }
    }

    /// Sets Stale and its metric; returns when to look again, at the latest
    /// when the next scheduled upload becomes overdue.
    fn judge_staleness(
        &mut self,
        db: &DatabaseBackup,
        ctx: &Context,
        old: &DatabaseBackupStatus,
    ) -> Duration {
        let Ok(schedule) = checks::parse_schedule(&db.spec.schedule) else {
            return RESYNC;
        };
        let jobs = &db.spec.jobs;
        let max_run = chrono::Duration::seconds(
            jobs.starting_deadline_seconds + 2 * jobs.active_deadline_seconds,
        );
        let was_suspended = conditions::find(&old.conditions, STALE)
            .is_some_and(|c| c.reason == reasons::SUSPENDED);
        if was_suspended && !db.spec.suspend {
            self.status.resumed_time = Some(self.now.clone());
        }
        let (stale, due) = match db.spec.suspend {
            true => (status::suspended(), None),
            false => staleness(
                &schedule,
                self.tz,
                max_run,
                self.status.last_upload_time.as_ref(),
                (
                    db.metadata.creation_timestamp.as_ref(),
                    self.status.resumed_time.as_ref(),
                ),
                chrono::Utc::now(),
            ),
        };
        let was_stale =
            conditions::find(&old.conditions, STALE).is_some_and(|c| c.status == "True");
        if stale.status && !was_stale {
            self.note(true, reasons::BACKUP_STALE, stale.message.clone());
            self.notices.push(Notice {
                event: NotifyEvent::Stale,
                // The message names the missed run: one notice per episode.
                id: format!("stale:{}", stale.message),
                reason: reasons::NO_RECENT_UPLOAD.into(),
                message: stale.message.clone(),
                key: None,
                time: self.now.clone(),
            });
        }
        conditions::set_condition(
            &mut self.status.conditions,
            &stale,
            self.generation,
            &self.now,
        );
        ctx.metrics.set_stale(
            &db.namespace().unwrap_or_default(),
            &db.name_any(),
            stale.status,
        );
        due.map_or(RESYNC, |due| RESYNC.min(due + Duration::from_secs(1)))
    }
}

/// A new "back up now" token starts one dump Job, once.
async fn run_now(
    db: &DatabaseBackup,
    ctx: &Context,
    dump: &CronJob,
    pass: &mut Pass,
) -> Result<(), Error> {
    let Some(token) = db
        .annotations()
        .get(names::RUN_NOW)
        .filter(|t| pass.status.last_run_now.as_ref() != Some(*t))
    else {
        return Ok(());
    };
    create_job(
        ctx,
        &job_from_cronjob(dump, &names::run_now_id(token)),
        "job",
    )
    .await?;
    pass.status.last_run_now = Some(token.clone());
    pass.note(
        false,
        reasons::BACKUP_REQUESTED,
        format!("started a dump for run-now request {token:?}"),
    );
    Ok(())
}

/// No dump waits for the upload schedule: each success starts its upload
/// (one per Job, even if the Job ran a second pod). The upload CronJob stays
/// as the retry and the original pipeline's poller. Returns the runs to
/// start an upload Job for.
fn uploads_to_chain(
    db: &DatabaseBackup,
    ctx: &Context,
    reports: &[PodReport],
    status: &DatabaseBackupStatus,
) -> Vec<String> {
    reports
        .iter()
        .filter(|r| {
            r.step == Step::Dump
                && r.result.outcome == Outcome::Succeeded
                && !status.processed_pods.contains(&r.uid)
                && !upload_started_since(db, ctx, &r.uid, &r.finished)
        })
        .map(|r| {
            r.run_now
                .clone()
                .unwrap_or_else(|| names::run_now_id(r.job.as_deref().unwrap_or(&r.uid)))
        })
        .collect()
}

/// The upload CronJob again, from the status this pass computed: a drill
/// that just passed is protected from retention (`--keep-verified`) by the
/// next upload at once. Status writes start no reconcile of their own, so
/// waiting for one would leave the newly verified dump prunable meanwhile.
async fn apply_upload(
    db: &DatabaseBackup,
    ctx: &Context,
    status: &DatabaseBackupStatus,
) -> Result<CronJob, Error> {
    let mut now = db.clone();
    now.status = Some(status.clone());
    let cronjobs: Api<CronJob> =
        Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    apply(
        cronjobs,
        &upload_cronjob(&now, &ctx.settings),
        &ctx.cronjobs,
        true,
    )
    .await
}

/// Drills the newest upload: once after its upload (`afterUpload`), and
/// again whenever `schedule` comes due. One drill of a backup runs at a time:
/// a newer upload, or a due schedule, waits for the running one. Returns when
/// the schedule is next due.
async fn start_drill(
    db: &DatabaseBackup,
    ctx: &Context,
    pass: &mut Pass,
) -> Result<Option<Duration>, Error> {
    let Some(verify) = &db.spec.verify else {
        return Ok(None);
    };
    let status = &pass.status;
    let (due, next) = match verify.schedule.as_deref().map(checks::parse_schedule) {
        Some(Ok(schedule)) => {
            let since = status
                .last_scheduled_drill
                .as_ref()
                .or(db.metadata.creation_timestamp.as_ref());
            drill_due(&schedule, pass.tz, since, chrono::Utc::now())
        }
        _ => (false, None),
    };
    let Some(key) = status.last_upload_key.clone() else {
        return Ok(next);
    };
    let drilled = status
        .last_verification
        .as_ref()
        .and_then(|v| v.key.as_ref());
    let after_upload = verify.after_upload && drilled != Some(&key);
    if !(after_upload || due) || drill_running(db, ctx) {
        return Ok(next);
    }
    // A scheduled drill of a dump drilled before needs a Job name of its own.
    let run = match due {
        true => format!("{key}@{}", chrono::Utc::now().timestamp()),
        false => key.clone(),
    };
    if let Some(job) = drill::verify_job(db, &ctx.settings, &key, &run) {
        create_job(ctx, &job, "restore drill").await?;
    }
    if due {
        pass.status.last_scheduled_drill = Some(pass.now.clone());
    }
    Ok(next)
}

/// Whether the drill schedule came due since `since`, and how long until it
/// is due next.
fn drill_due(
    schedule: &croner::Cron,
    tz: chrono_tz::Tz,
    since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: chrono::DateTime<chrono::Utc>,
) -> (bool, Option<Duration>) {
    let since = since.map(results::to_chrono).unwrap_or(now);
    let Ok(run) = schedule.find_next_occurrence(&since.with_timezone(&tz), false) else {
        return (false, None);
    };
    let run = run.with_timezone(&chrono::Utc);
    if run <= now {
        let next = schedule
            .find_next_occurrence(&now.with_timezone(&tz), false)
            .ok()
            .and_then(|n| (n.with_timezone(&chrono::Utc) - now).to_std().ok());
        return (true, next.map(|d| d + Duration::from_secs(1)));
    }
    (
        false,
        (run - now)
            .to_std()
            .ok()
            .map(|d| d + Duration::from_secs(1)),
    )
}

/// Whether a drill Job of this backup has not finished yet.
fn drill_running(db: &DatabaseBackup, ctx: &Context) -> bool {
    let key = Some(ObjectRef::from_obj(db));
    ctx.jobs.state().iter().any(|j| {
        labelled_owner(&**j, names::LABEL_BACKUP) == key
            && j.labels().get(names::LABEL_STEP).map(String::as_str) == Some(Step::Verify.as_str())
            && j.status
                .as_ref()
                .is_none_or(|s| s.completion_time.is_none() && s.failed.unwrap_or(0) == 0)
    })
}

/// The last drill's metrics, from the status that records it.
/// The metrics of pods this status has not reflected yet: each step's last
/// duration, and its failures.
fn publish_steps(
    db: &DatabaseBackup,
    ctx: &Context,
    reports: &[PodReport],
    old: &DatabaseBackupStatus,
) {
    let new = reports
        .iter()
        .filter(|r| !old.processed_pods.contains(&r.uid));
    for r in new {
        if r.step == Step::Upload && r.result.outcome == Outcome::Nothing {
            continue;
        }
        let seconds = r
            .started
            .as_ref()
            .map(|s| r.finished.0.as_second() - s.0.as_second());
        ctx.metrics.step_finished(
            &db.namespace().unwrap_or_default(),
            &db.name_any(),
            r.step.as_str(),
            seconds,
            r.result.outcome == Outcome::Failed,
        );
    }
}

/// The last confirmed upload, from the status (absent before the first).
fn publish_upload(db: &DatabaseBackup, ctx: &Context, status: &DatabaseBackupStatus) {
    if let Some(at) = &status.last_upload_time {
        ctx.metrics.set_last_upload(
            &db.namespace().unwrap_or_default(),
            &db.name_any(),
            at.0.as_second(),
            status.last_upload_size,
        );
    }
}

fn publish_verification(db: &DatabaseBackup, ctx: &Context, status: &DatabaseBackupStatus) {
    let Some(last) = &status.last_verification else {
        return;
    };
    ctx.metrics.set_verification(
        &db.namespace().unwrap_or_default(),
        &db.name_any(),
        last.passed,
        last.duration_seconds,
        status.last_verified_time.as_ref().map(|t| t.0.as_second()),
    );
}

/// Writes the status if it changed, then its Events: a Ready change, and
/// what this pass noted.
async fn publish(
    db: &DatabaseBackup,
    ctx: &Context,
    old: &DatabaseBackupStatus,
    mut pass: Pass,
) -> Result<(), Error> {
    if pass.status == *old {
        return Ok(());
    }
    write_status(db, ctx, &pass.status).await?;
    let ready = pass.ready.clone();
    let was = conditions::find(&old.conditions, READY);
    if was.is_none_or(|c| c.reason != ready.reason || (c.status == "True") != ready.status) {
        let message = match ready.status {
            true => ready.message.clone(),
            false => format!("{}: {}", ready.reason, ready.message),
        };
        pass.note(!ready.status, &ready.reason, message);
    }
    for note in &pass.notes {
        let type_ = match note.warning {
            true => EventType::Warning,
            false => EventType::Normal,
        };
        ctx.publish(db, type_, &note.reason, &note.message).await;
    }
    Ok(())
}

/// Finished pods and failed Jobs of this backup, from the operator's caches,
/// and the UIDs of all of them that still exist.
fn reports(db: &DatabaseBackup, ctx: &Context, tz: chrono_tz::Tz) -> (Vec<PodReport>, Vec<String>) {
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
fn upload_started_since(db: &DatabaseBackup, ctx: &Context, dump: &str, ended: &Time) -> bool {
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
fn started_dumps(db: &DatabaseBackup, ctx: &Context) -> Vec<Notice> {
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

/// Pods of this backup that cannot start, as the conditions of their steps.
fn stuck_pods(db: &DatabaseBackup, ctx: &Context) -> Vec<(&'static str, Observed)> {
    let key = Some(ObjectRef::from_obj(db));
    ctx.pods
        .state()
        .iter()
        .filter(|p| labelled_owner(&***p, names::LABEL_BACKUP) == key)
        .filter_map(|p| reports::stuck(p))
        .collect()
}
